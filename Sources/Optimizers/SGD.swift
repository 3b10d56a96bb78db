import Tensor
import Layers

/// Stochastic gradient descent with momentum, optionally Nesterov, and coupled weight decay:
/// PyTorch's `torch.optim.SGD` with `dampening=0`.
///
/// For each parameter `p` with gradient `g` and momentum buffer `b` (slot `momentum_buffer`,
/// zero-initialised):
///
///     d = g + weightDecay · p            (coupled weight decay, the L2 penalty's gradient)
///     b = momentum · b + d
///     d = nesterov ? d + momentum · b : b
///     p = p − learningRate · d
///
/// PyTorch creates the buffer as a copy of `d` on the first step; with `dampening=0` that equals
/// `momentum · 0 + d`, so a zero-initialised buffer gives the same numbers. With `momentum = 0`
/// this is plain SGD.
///
/// Weight decay applies to every parameter, as in PyTorch with one parameter group; with
/// `excludeBiasAndNormalization` it applies to weights only (PyTorch: a second parameter group
/// with `weight_decay=0` for biases and normalisation parameters). The gradient is never written.
public final class SGD<Scalar: TensorScalar>: Optimizer {
    /// The state of one parameter: its view of the momentum buffer.
    public typealias State = Tensor<Scalar>

    public let parameters: ParameterStore<Scalar>
    /// PyTorch `lr`.
    public var learningRate: Double
    /// PyTorch `momentum`, in `[0, 1)`.
    public var momentum: Double
    /// PyTorch `weight_decay`: the coefficient of the L2 penalty added to the gradient.
    public var weightDecay: Double
    /// PyTorch `nesterov`.
    public let nesterov: Bool
    /// Whether biases and normalisation parameters (role ≠ `.weight`) are left undecayed.
    public var excludeBiasAndNormalization: Bool
    public var stepCount = 0
    /// The momentum buffers of every parameter, flat (PyTorch `momentum_buffer`).
    public let momentumBuffer: Tensor<Scalar>
    public private(set) var targets: [OptimizerTarget<Scalar, State>] = []

    /// Creates the optimizer with zero momentum buffers.
    ///
    /// - Parameters:
    ///   - learningRate: the first step's learning rate; the schedule sets it every step.
    ///   - momentum: 0 (plain SGD) by default, like PyTorch; 0.9 is usual.
    ///   - weightDecay: 0 by default, like PyTorch.
    ///   - nesterov: Nesterov momentum (requires `momentum > 0`, as in PyTorch).
    ///   - excludeBiasAndNormalization: decay weights only; `false` (decay everything) by default.
    /// - Throws: ``OptimizerConfigurationError`` for a negative learning rate or weight decay,
    ///   a momentum outside `[0, 1)`, or Nesterov without momentum.
    public init(parameters: ParameterStore<Scalar>, learningRate: Double, momentum: Double = 0,
                weightDecay: Double = 0, nesterov: Bool = false, excludeBiasAndNormalization: Bool = false) throws {
        try OptimizerConfigurationError.check("SGD", "learning rate", learningRate, learningRate >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("SGD", "momentum", momentum, momentum >= 0 && momentum < 1,
                                              expected: "in [0, 1)")
        try OptimizerConfigurationError.check("SGD", "weight decay", weightDecay, weightDecay >= 0, expected: "≥ 0")
        try OptimizerConfigurationError.check("SGD", "momentum (Nesterov momentum requires a momentum)", momentum,
                                              !nesterov || momentum > 0, expected: "> 0 with nesterov")
        self.parameters = parameters
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        self.excludeBiasAndNormalization = excludeBiasAndNormalization
        momentumBuffer = Tensor(zeros: [parameters.count])
        targets = OptimizerTarget.all(of: parameters, state: self.state)
    }

    public func state(_ view: (Tensor<Scalar>) -> Tensor<Scalar>) -> Tensor<Scalar> { view(momentumBuffer) }

    public var slotNames: [String] { ["momentum_buffer"] }

    public func slot(_ name: String) -> Tensor<Scalar> {
        guard name == "momentum_buffer" else { missingSlot(name, in: "SGD", names: slotNames) }
        return momentumBuffer
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func applySingle(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state buffer: Tensor<Scalar>,
                            role: ParameterRole) {
        let decay = Scalar(excludeBiasAndNormalization && role != .weight ? 0 : weightDecay)
        let mu = Scalar(momentum), lr = Scalar(learningRate), nesterov = nesterov
        parameter.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
                buffer.withUnsafeMutableBufferPointer { b in
                    for i in 0..<p.count {
                        var d = g[i]
                        if decay != 0 { d += decay * p[i] }
                        b[i] = mu * b[i] + d
                        d = nesterov ? d + mu * b[i] : b[i]
                        p[i] -= lr * d
                    }
                }
            }
        }
    }
}
