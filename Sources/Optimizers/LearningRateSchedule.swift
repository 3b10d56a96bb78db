import Tensor  // Double.cos, from swift-numerics' RealModule

/// The learning rate of every optimisation step, set on the optimizer before each `step()`:
/// `optimizer.learningRate = schedule.learningRate(at: step)`.
///
/// A schedule is a pure function of the step index, so a resumed run needs to save only the
/// step, and every rank computes the same value.
public enum LearningRateSchedule: Sendable, Equatable {
    /// The same learning rate at every step.
    case constant(Double)
    /// Linear warm-up from 0 to `base` over `warmupSteps`, then a half cosine from `base` to
    /// `finalFraction · base` at `totalSteps`: the `adjust_learning_rate` of the VICReg and
    /// Barlow Twins reference code (which use 10 warm-up epochs and `finalFraction` 0.001).
    case warmupCosine(base: Double, warmupSteps: Int, totalSteps: Int, finalFraction: Double)

    /// Checks the schedule's numbers.
    ///
    /// - Throws: ``LearningRateScheduleError`` naming the bad value: a negative or non-finite
    ///   rate, negative warm-up, `totalSteps ≤ warmupSteps`, or a final fraction outside `[0, 1]`.
    public func validated() throws -> LearningRateSchedule {
        func fail(_ text: String) -> LearningRateScheduleError { LearningRateScheduleError(description: text) }
        switch self {
        case let .constant(rate):
            guard rate >= 0, rate.isFinite else { throw fail("constant learning rate \(rate) must be finite and ≥ 0") }
        case let .warmupCosine(base, warmupSteps, totalSteps, finalFraction):
            guard base >= 0, base.isFinite else { throw fail("base learning rate \(base) must be finite and ≥ 0") }
            guard warmupSteps >= 0 else { throw fail("warmupSteps \(warmupSteps) must be ≥ 0") }
            guard totalSteps > warmupSteps else {
                throw fail("totalSteps \(totalSteps) must exceed warmupSteps \(warmupSteps)")
            }
            guard (0...1).contains(finalFraction) else {
                throw fail("finalFraction \(finalFraction) must be in [0, 1] (0.001 in VICReg and Barlow Twins)")
            }
        }
        return self
    }

    /// The learning rate of step `step` (0-based; the first step is 0).
    ///
    /// For `warmupCosine`, with `w = warmupSteps`, `T = totalSteps`, `end = finalFraction · base`:
    ///
    ///     step < w:  base · step / w
    ///     else:      q = ½ (1 + cos(π (step − w) / (T − w)))
    ///                base · q + end · (1 − q)
    ///
    /// so the rate is 0 at step 0, `base` at step `w`, halfway between `base` and `end` at
    /// `(w + T) / 2`, and `end` at step `T` (and after, where it stays).
    public func learningRate(at step: Int) -> Double {
        precondition(step >= 0, "learning rate of negative step \(step)")
        switch self {
        case let .constant(rate):
            return rate
        case let .warmupCosine(base, warmupSteps, totalSteps, finalFraction):
            precondition(totalSteps > warmupSteps, "schedule with totalSteps \(totalSteps) ≤ warmupSteps \(warmupSteps)")
            if step < warmupSteps { return base * Double(step) / Double(warmupSteps) }
            let progress = min(Double(step - warmupSteps) / Double(totalSteps - warmupSteps), 1)
            let q = 0.5 * (1 + Double.cos(Double.pi * progress))
            let end = base * finalFraction
            return base * q + end * (1 - q)
        }
    }
}

/// A learning-rate schedule with a value out of range.
public struct LearningRateScheduleError: Error, CustomStringConvertible, Equatable {
    public let description: String
}

/// The base learning rate, optionally scaled linearly with the global batch: `base · B / 256`
/// (Goyal et al., 2017), as VICReg (`base_lr * batch_size / 256`) and Barlow Twins do.
///
/// - Parameters:
///   - base: the learning rate for a global batch of 256.
///   - globalBatchSize: the rows of one step over all ranks (not the per-rank batch).
///   - scaleByBatch: whether to scale; `false` returns `base`.
public func scaledLearningRate(base: Double, globalBatchSize: Int, scaleByBatch: Bool) -> Double {
    precondition(globalBatchSize > 0, "global batch size \(globalBatchSize) must be positive")
    return scaleByBatch ? base * Double(globalBatchSize) / 256 : base
}
