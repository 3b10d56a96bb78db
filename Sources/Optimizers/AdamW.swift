import Tensor
import Layers

/// Adam with decoupled weight decay and bias correction: PyTorch's `torch.optim.AdamW`
/// (`amsgrad=False`, `maximize=False`).
///
/// For each parameter `p` with gradient `g`, first moment `m` (slot `exp_avg`) and second moment
/// `v` (slot `exp_avg_sq`), both zero-initialised, at step `t = stepCount` (1 on the first step):
///
///     p = p · (1 − learningRate · weightDecay)            (decoupled weight decay)
///     m = beta1 · m + (1 − beta1) · g
///     v = beta2 · v + (1 − beta2) · g²
///     p = p − (learningRate / (1 − beta1ᵗ)) · m / (√v / √(1 − beta2ᵗ) + eps)
///
/// The step size and the bias corrections are computed in `Double` (PyTorch computes them in
/// Python floats), the element-wise terms in `Scalar`, in PyTorch's order of operations.
///
/// Weight decay applies to every parameter, as in PyTorch with one parameter group; with
/// `excludeBiasAndNormalization` it applies to weights only. The gradient is never written.
public final class AdamW<Scalar: TensorScalar>: Optimizer {
    /// The state of one parameter: its views of the two moment estimates.
    public struct State {
        /// PyTorch `exp_avg`.
        public let expAvg: Tensor<Scalar>
        /// PyTorch `exp_avg_sq`.
        public let expAvgSq: Tensor<Scalar>
    }

    public let parameters: ParameterStore<Scalar>
    /// PyTorch `lr`.
    public var learningRate: Double
    /// PyTorch `betas[0]`: the decay of the first-moment estimate.
    public var beta1: Double
    /// PyTorch `betas[1]`: the decay of the second-moment estimate.
    public var beta2: Double
    /// PyTorch `eps`: added to the bias-corrected √v.
    public var epsilon: Double
    /// PyTorch `weight_decay`: each step shrinks `p` by the factor `1 − lr · weightDecay`.
    public var weightDecay: Double
    /// Whether biases and normalisation parameters (role ≠ `.weight`) are left undecayed.
    public var excludeBiasAndNormalization: Bool
    /// The step `t` of the bias corrections `1 − betaᵗ`; must be restored with the slots.
    public var stepCount = 0
    /// The first-moment estimates of every parameter, flat (PyTorch `exp_avg`).
    public let expAvg: Tensor<Scalar>
    /// The second-moment estimates of every parameter, flat (PyTorch `exp_avg_sq`).
    public let expAvgSq: Tensor<Scalar>
    public private(set) var targets: [OptimizerTarget<Scalar, State>] = []

    /// Creates the optimizer with zero moment estimates, at step 0.
    ///
    /// - Parameters:
    ///   - learningRate: PyTorch's default is 1e-3; the schedule sets it every step.
    ///   - beta1, beta2: 0.9 and 0.999, PyTorch's defaults.
    ///   - epsilon: 1e-8, PyTorch's default.
    ///   - weightDecay: 0.01, PyTorch's default for `AdamW`.
    ///   - excludeBiasAndNormalization: decay weights only; `false` (decay everything) by default.
    /// - Throws: ``OptimizerConfigurationError`` for a negative learning rate, epsilon or weight
    ///   decay, or a beta outside `[0, 1)`.
    public init(parameters: ParameterStore<Scalar>, learningRate: Double = 1e-3, beta1: Double = 0.9,
                beta2: Double = 0.999, epsilon: Double = 1e-8, weightDecay: Double = 0.01,
                excludeBiasAndNormalization: Bool = false) throws {
        try OptimizerConfigurationError.check("AdamW", "learning rate", learningRate, learningRate >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("AdamW", "beta parameter at index 0", beta1, beta1 >= 0 && beta1 < 1,
                                              expected: "in [0, 1)")
        try OptimizerConfigurationError.check("AdamW", "beta parameter at index 1", beta2, beta2 >= 0 && beta2 < 1,
                                              expected: "in [0, 1)")
        try OptimizerConfigurationError.check("AdamW", "epsilon", epsilon, epsilon >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("AdamW", "weight decay", weightDecay, weightDecay >= 0, expected: "≥ 0")
        self.parameters = parameters
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.excludeBiasAndNormalization = excludeBiasAndNormalization
        expAvg = Tensor(zeros: [parameters.count])
        expAvgSq = Tensor(zeros: [parameters.count])
        targets = OptimizerTarget.all(of: parameters, state: self.state)
    }

    public func state(_ view: (Tensor<Scalar>) -> Tensor<Scalar>) -> State {
        State(expAvg: view(expAvg), expAvgSq: view(expAvgSq))
    }

    public var slotNames: [String] { ["exp_avg", "exp_avg_sq"] }

    public func slot(_ name: String) -> Tensor<Scalar> {
        switch name {
        case "exp_avg": return expAvg
        case "exp_avg_sq": return expAvgSq
        default: missingSlot(name, in: "AdamW", names: slotNames)
        }
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func applySingle(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state: State, role: ParameterRole) {
        precondition(stepCount > 0, "AdamW.applySingle before step(): bias correction needs stepCount ≥ 1")
        let t = Double(stepCount)
        let decay = excludeBiasAndNormalization && role != .weight ? 0 : weightDecay
        let shrink = Scalar(1 - learningRate * decay)
        let b1 = Scalar(beta1), oneMinusB1 = Scalar(1 - beta1), lerpWeightIsSmall = 1 - beta1 < 0.5
        let b2 = Scalar(beta2), oneMinusB2 = Scalar(1 - beta2)
        let stepSize = Scalar(learningRate / (1 - Double.pow(beta1, t)))
        let biasCorrection2Sqrt = Scalar((1 - Double.pow(beta2, t)).squareRoot())
        let eps = Scalar(epsilon)
        parameter.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                state.expAvg.withUnsafeMutableBufferPointer { m in
                    state.expAvgSq.withUnsafeMutableBufferPointer { v in
                        for i in 0..<p.count {
                            if decay != 0 { p[i] *= shrink }
                            // PyTorch `exp_avg.lerp_(grad, 1 - beta1)`, in lerp's order of operations.
                            m[i] = lerpWeightIsSmall ? m[i] + oneMinusB1 * (g[i] - m[i])
                                                     : g[i] - (g[i] - m[i]) * b1
                            v[i] = b2 * v[i] + oneMinusB2 * g[i] * g[i]
                            let denominator = v[i].squareRoot() / biasCorrection2Sqrt + eps
                            p[i] -= stepSize * m[i] / denominator
                        }
                    }
                }
            }
        }
    }
}
