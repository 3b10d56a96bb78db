import Tensor

/// The rectified linear unit, `y = max(x, 0)`, element-wise on any shape (PyTorch's `nn.ReLU`).
public final class ReLU<Scalar: LayerScalar>: ParameterFreeLayer {
    private final class Cache {
        var output: Tensor<Scalar>?         // (B, …)
        var inputGradient: Tensor<Scalar>?  // (B, …)
    }
    private var caches = SlotCaches<Cache>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.elementwise, since: started) }
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: input.shape)
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                for i in x.indices { y[i] = x[i] > 0 ? x[i] : 0 }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.elementwise, since: started) }
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count
        else { throw LayerError.noForward(layer: "ReLU", slot: context.slot) }
        let inputGradient = reuse(&cache.inputGradient, shape: output.shape)
        // dx = dy · [y > 0]
        output.withUnsafeBufferPointer { y in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    // Both operands loaded unconditionally: a select, which vectorises (a
                    // conditional load compiles to an unpredictable branch).
                    for i in y.indices { let g = dy[i]; dx[i] = y[i] > 0 ? g : 0 }
                }
            }
        }
        return inputGradient
    }
}

/// The Gaussian error linear unit in its exact form, `y = x Φ(x) = x/2 · (1 + erf(x/√2))`,
/// element-wise on any shape (PyTorch's `nn.GELU()` with `approximate='none'`). `erf` is
/// ``LayerScalar/activationErf(_:)``: libm's in `Double`, a rational approximation in `Float`.
public final class GELU<Scalar: LayerScalar>: ParameterFreeLayer {
    private var pointwise = PointwiseActivation<Scalar>(.gelu)

    public init() {}

    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        pointwise.forward(input, context: context)
    }

    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        try pointwise.backward(outputGradient, context: context)
    }
}

/// The sigmoid linear unit, `y = x σ(x)`, element-wise on any shape (PyTorch's `nn.SiLU`; the
/// activation before an AdaLN modulation).
public final class SiLU<Scalar: LayerScalar>: ParameterFreeLayer {
    private var pointwise = PointwiseActivation<Scalar>(.silu)

    public init() {}

    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        pointwise.forward(input, context: context)
    }

    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        try pointwise.backward(outputGradient, context: context)
    }
}

/// A smooth element-wise activation whose backward pass needs its input.
public enum SmoothActivation: Sendable {
    /// `x Φ(x)`; `dy/dx = Φ(x) + x φ(x)`, `φ(x) = exp(−x²/2) / √(2π)`.
    case gelu
    /// `x σ(x)`; `dy/dx = σ(x) (1 + x (1 − σ(x)))`.
    case silu

    var name: String { self == .gelu ? "GELU" : "SiLU" }

    /// `y[i] = f(x[i])` for `i < count`. Written once for both scalar types and inlined into
    /// each type's ``LayerScalar/activation(_:_:into:count:)``: a loop over concrete `Float` or
    /// `Double` that the compiler vectorises (through a generic closure every element paid
    /// a call and protocol-witness arithmetic: GELU took a third of a ViT step).
    @inline(__always)
    static func forward<S: LayerScalar>(_ kind: SmoothActivation, _ x: UnsafePointer<S>, into y: UnsafeMutablePointer<S>,
                                        count: Int) {
        switch kind {
        case .gelu:
            let inverseSqrt2 = 1 / S.sqrt(2)
            for i in 0..<count { let v = x[i]; y[i] = v / 2 * (1 + S.activationErf(v * inverseSqrt2)) }
        case .silu:
            for i in 0..<count { let v = x[i]; y[i] = v / (1 + S.activationExp(-v)) }
        }
    }

    /// `dx[i] = dy[i] · f′(x[i])` for `i < count`.
    @inline(__always)
    static func backward<S: LayerScalar>(_ kind: SmoothActivation, _ x: UnsafePointer<S>, _ dy: UnsafePointer<S>,
                                         into dx: UnsafeMutablePointer<S>, count: Int) {
        switch kind {
        case .gelu:
            let inverseSqrt2 = 1 / S.sqrt(2), inverseSqrt2Pi = 1 / S.sqrt(2 * S.pi)
            for i in 0..<count {
                let v = x[i]
                dx[i] = dy[i] * ((1 + S.activationErf(v * inverseSqrt2)) / 2 + v * (S.activationExp(-v * v / 2) * inverseSqrt2Pi))
            }
        case .silu:
            for i in 0..<count {
                let v = x[i], sigmoid = 1 / (1 + S.activationExp(-v))
                dx[i] = dy[i] * (sigmoid * (1 + v * (1 - sigmoid)))
            }
        }
    }
}

/// The buffers and loops of a ``SmoothActivation`` `y = f(x)`: `dx = dy · f′(x)`.
struct PointwiseActivation<Scalar: LayerScalar> {
    private final class Cache {
        var input: Tensor<Scalar>?          // (B, …), the caller's
        var output: Tensor<Scalar>?         // (B, …)
        var inputGradient: Tensor<Scalar>?  // (B, …)
    }
    private var caches = SlotCaches<Cache>()
    let kind: SmoothActivation

    init(_ kind: SmoothActivation) { self.kind = kind }

    /// The fewest elements given to one BLAS thread: below it, waking a thread costs more
    /// than the part.
    static var smallestPart: Int { 16_384 }

    /// `y = f(x)` into the slot's output buffer; keeps `x` for the backward pass.
    mutating func forward(_ input: Tensor<Scalar>, context: LayerContext) -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.smoothActivation, since: started) }
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: input.shape)
        cache.input = input
        let kind = kind
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                let (x, y) = (x.baseAddress!, y.baseAddress!)
                parallelRanges(input.count, minimumPerPart: Self.smallestPart) { part in
                    Scalar.activation(kind, x + part.lowerBound, into: y + part.lowerBound, count: part.count)
                }
            }
        }
        return output
    }

    /// `dx = dy · f′(x)` into the slot's input-gradient buffer.
    func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let input = cache.input, input.count == outputGradient.count
        else { throw LayerError.noForward(layer: kind.name, slot: context.slot) }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.smoothActivation, since: started) }
        let inputGradient = reuse(&cache.inputGradient, shape: input.shape)
        let kind = kind
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    let (x, dy, dx) = (x.baseAddress!, dy.baseAddress!, dx.baseAddress!)
                    parallelRanges(input.count, minimumPerPart: Self.smallestPart) { part in
                        let i = part.lowerBound
                        Scalar.activationGradient(kind, x + i, dy + i, into: dx + i, count: part.count)
                    }
                }
            }
        }
        return inputGradient
    }
}
