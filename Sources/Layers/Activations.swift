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
/// element-wise on any shape (PyTorch's `nn.GELU()` with `approximate='none'`).
public final class GELU<Scalar: LayerScalar>: ParameterFreeLayer {
    private var pointwise = PointwiseActivation<Scalar>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let inverseSqrt2 = 1 / Scalar.sqrt(2)
        return pointwise.forward(input, context: context) { x in x / 2 * (1 + Scalar.erf(x * inverseSqrt2)) }
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let inverseSqrt2 = 1 / Scalar.sqrt(2)
        let inverseSqrt2Pi = 1 / Scalar.sqrt(2 * Scalar.pi)
        // dy/dx = Φ(x) + x φ(x),  φ(x) = exp(−x²/2) / √(2π)
        return try pointwise.backward(outputGradient, context: context, layer: "GELU") { x in
            (1 + Scalar.erf(x * inverseSqrt2)) / 2 + x * (Scalar.exp(-x * x / 2) * inverseSqrt2Pi)
        }
    }
}

/// The sigmoid linear unit, `y = x σ(x)`, element-wise on any shape (PyTorch's `nn.SiLU`; the
/// activation before an AdaLN modulation).
public final class SiLU<Scalar: LayerScalar>: ParameterFreeLayer {
    private var pointwise = PointwiseActivation<Scalar>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        pointwise.forward(input, context: context) { x in x / (1 + Scalar.exp(-x)) }
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        // dy/dx = σ(x) (1 + x (1 − σ(x)))
        try pointwise.backward(outputGradient, context: context, layer: "SiLU") { x in
            let sigmoid = 1 / (1 + Scalar.exp(-x))
            return sigmoid * (1 + x * (1 - sigmoid))
        }
    }
}

/// The buffers and loops of an element-wise activation `y = f(x)` whose backward needs `x`:
/// `dx = dy · f′(x)`.
struct PointwiseActivation<Scalar: LayerScalar> {
    private final class Cache {
        var input: Tensor<Scalar>?          // (B, …), the caller's
        var output: Tensor<Scalar>?         // (B, …)
        var inputGradient: Tensor<Scalar>?  // (B, …)
    }
    private var caches = SlotCaches<Cache>()

    /// `y = f(x)` into the slot's output buffer; keeps `x` for the backward pass.
    @inline(__always)
    mutating func forward(_ input: Tensor<Scalar>, context: LayerContext, _ f: (Scalar) -> Scalar) -> Tensor<Scalar> {
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: input.shape)
        cache.input = input
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                for i in x.indices { y[i] = f(x[i]) }
            }
        }
        return output
    }

    /// `dx = dy · f′(x)` into the slot's input-gradient buffer.
    @inline(__always)
    func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext, layer: String,
                  _ derivative: (Scalar) -> Scalar) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let input = cache.input, input.count == outputGradient.count
        else { throw LayerError.noForward(layer: layer, slot: context.slot) }
        let inputGradient = reuse(&cache.inputGradient, shape: input.shape)
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    for i in x.indices { dx[i] = dy[i] * derivative(x[i]) }
                }
            }
        }
        return inputGradient
    }
}
