import Tensor
import Layers

/// Layer-wise adaptive rate scaling (You et al., 2017) exactly as in the VICReg and Barlow Twins
/// reference code: the `LARS` class of facebookresearch/vicreg (`main_vicreg.py`) and of
/// facebookresearch/barlowtwins (`main.py`).
///
/// For each parameter `p` with gradient `g` and momentum buffer `mu` (slot `mu`,
/// zero-initialised), with norms over the whole parameter (one tensor, e.g. one layer's weight):
///
///     d = g + weightDecay · p                                  (weights only)
///     q = ‖p‖ > 0 ? (‖d‖ > 0 ? eta · ‖p‖ / ‖d‖ : 1) : 1        (trust ratio; weights only)
///     d = d · q
///     mu = momentum · mu + d
///     p = p − learningRate · mu
///
/// Biases and normalisation parameters (role ≠ `.weight`) are excluded from both weight decay
/// and adaptation (their `d = g`, `q = 1`), as the reference code does with
/// `weight_decay_filter = lars_adaptation_filter = exclude_bias_and_norm` (which tests
/// `p.ndim == 1`; here the store's role says it). They still get momentum and the learning rate.
///
/// Barlow Twins additionally gives the excluded parameters their own learning rate
/// (`learning_rate_biases` 0.0048 vs `learning_rate_weights` 0.2, both times the schedule's
/// factor): set `excludedLearningRateFactor` to 0.0048 / 0.2 = 0.024 for it; VICReg uses one
/// learning rate (factor 1, the default).
///
/// Norms are accumulated in `Double`; `d` is formed in `Scalar` in both passes (recomputed, so
/// no scratch buffer), and `q` is rounded to `Scalar` before it scales `d`. The gradient is never
/// written.
public final class LARS<Scalar: TensorScalar>: Optimizer {
    /// The state of one parameter: its view of the momentum buffer.
    public typealias State = Tensor<Scalar>

    public let parameters: ParameterStore<Scalar>
    /// PyTorch `lr`, applied to weights (and, times `excludedLearningRateFactor`, to the rest).
    public var learningRate: Double
    /// `weight_decay`, applied to weights only.
    public var weightDecay: Double
    /// `momentum`.
    public var momentum: Double
    /// `eta`, the trust coefficient.
    public var eta: Double
    /// The learning rate of biases and normalisation parameters relative to `learningRate`.
    public var excludedLearningRateFactor: Double
    public var stepCount = 0
    /// The momentum buffers of every parameter, flat (the reference code's `mu`).
    public let mu: Tensor<Scalar>
    public private(set) var targets: [OptimizerTarget<Scalar, State>] = []

    /// Creates the optimizer with zero momentum buffers.
    ///
    /// - Parameters:
    ///   - learningRate: 0 by default, as the reference code constructs it: the schedule sets
    ///     it before every step.
    ///   - weightDecay: 0 by default as in the reference class; VICReg trains with 1e-6,
    ///     Barlow Twins with 1.5e-6.
    ///   - momentum: 0.9, the reference default.
    ///   - eta: 0.001, the reference default.
    ///   - excludedLearningRateFactor: 1 (VICReg); 0.024 reproduces Barlow Twins' bias group.
    /// - Throws: ``OptimizerConfigurationError`` for a negative learning rate, weight decay, eta or
    ///   factor, or a momentum outside `[0, 1)`.
    public init(parameters: ParameterStore<Scalar>, learningRate: Double = 0, weightDecay: Double = 0,
                momentum: Double = 0.9, eta: Double = 0.001, excludedLearningRateFactor: Double = 1) throws {
        try OptimizerConfigurationError.check("LARS", "learning rate", learningRate, learningRate >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("LARS", "weight decay", weightDecay, weightDecay >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("LARS", "momentum", momentum, momentum >= 0 && momentum < 1,
                                              expected: "in [0, 1)")
        try OptimizerConfigurationError.check("LARS", "eta", eta, eta >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("LARS", "excluded learning rate factor", excludedLearningRateFactor,
                                              excludedLearningRateFactor >= 0, expected: "≥ 0")
        self.parameters = parameters
        self.learningRate = learningRate
        self.weightDecay = weightDecay
        self.momentum = momentum
        self.eta = eta
        self.excludedLearningRateFactor = excludedLearningRateFactor
        mu = Tensor(zeros: [parameters.count])
        targets = OptimizerTarget.all(of: parameters, state: self.state)
    }

    public func state(_ view: (Tensor<Scalar>) -> Tensor<Scalar>) -> Tensor<Scalar> { view(mu) }

    public var slotNames: [String] { ["mu"] }

    public func slot(_ name: String) -> Tensor<Scalar> {
        guard name == "mu" else { missingSlot(name, in: "LARS", names: slotNames) }
        return mu
    }

    /// Whether a parameter of `role` is decayed and adapted (the reference `exclude_bias_and_norm`
    /// filter, negated): weights only.
    public static func isAdapted(_ role: ParameterRole) -> Bool { role == .weight }

    /// ‖p‖² and ‖g + λp‖²: the trust ratio's norms, summed piece by piece in the sharded step.
    public var sumsPerParameter: Int { 2 }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func applySingle(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state buffer: Tensor<Scalar>,
                            role: ParameterRole) {
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2) { sums in
            sums.initialize(repeating: 0)
            accumulateSums(gradient: gradient, parameter: parameter, role: role, into: sums)
            applyPiece(gradient: gradient, parameter: parameter, state: buffer, role: role,
                       sums: UnsafeBufferPointer(sums))
        }
    }

    /// Adds `‖p‖²` and `‖g + λp‖²` of the piece to `sums[0]`, `sums[1]` (weights only: the
    /// others are not adapted).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func accumulateSums(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, role: ParameterRole,
                               into sums: UnsafeMutableBufferPointer<Double>) {
        guard LARS.isAdapted(role) else { return }
        let decay = Scalar(weightDecay)
        parameter.withUnsafeBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                // ‖p‖² and ‖g + λp‖² in one pass over p and g, four lanes each (see
                // `Tensor.laneSum`): the update is memory-bound.
                var ps = SIMD4<Double>(), us = SIMD4<Double>()
                var i = 0
                while i + 4 <= p.count {
                    let x = SIMD4<Double>(Double(p[i]), Double(p[i + 1]), Double(p[i + 2]), Double(p[i + 3]))
                    let d = SIMD4<Double>(Double(g[i] + decay * p[i]), Double(g[i + 1] + decay * p[i + 1]),
                                          Double(g[i + 2] + decay * p[i + 2]), Double(g[i + 3] + decay * p[i + 3]))
                    ps += x * x
                    us += d * d
                    i += 4
                }
                var parameterSquares = ps.sum(), updateSquares = us.sum()
                while i < p.count {
                    let d = Double(g[i] + decay * p[i])
                    parameterSquares += Double(p[i]) * Double(p[i])
                    updateSquares += d * d
                    i += 1
                }
                sums[0] += parameterSquares
                sums[1] += updateSquares
            }
        }
    }

    /// The update of the piece with the trust ratio of the whole parameter's norms.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func applyPiece(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state buffer: Tensor<Scalar>,
                           role: ParameterRole, sums: UnsafeBufferPointer<Double>) {
        let adapted = LARS.isAdapted(role)
        let decay = Scalar(adapted ? weightDecay : 0)
        let m = Scalar(momentum)
        let lr = Scalar(adapted ? learningRate : learningRate * excludedLearningRateFactor)
        var trustRatio: Scalar = 1
        if adapted {
            let parameterNorm = sums[0].squareRoot(), updateNorm = sums[1].squareRoot()
            if parameterNorm > 0 && updateNorm > 0 {
                trustRatio = Scalar(eta * parameterNorm / updateNorm)
            }
        }
        parameter.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                buffer.withUnsafeMutableBufferPointer { b in
                    for i in 0..<p.count {
                        let d = (g[i] + decay * p[i]) * trustRatio
                        b[i] = m * b[i] + d
                        p[i] -= lr * b[i]
                    }
                }
            }
        }
    }
}
