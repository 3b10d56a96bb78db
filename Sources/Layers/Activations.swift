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
    private final class Cache {
        var input: Tensor<Scalar>?          // (B, …), the caller's
        var output: Tensor<Scalar>?         // (B, …)
        var inputGradient: Tensor<Scalar>?  // (B, …)
    }
    private var caches = SlotCaches<Cache>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: input.shape)
        cache.input = input
        let inverseSqrt2 = 1 / Scalar.sqrt(2)
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                for i in x.indices { y[i] = x[i] / 2 * (1 + Scalar.erf(x[i] * inverseSqrt2)) }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let input = cache.input, input.count == outputGradient.count
        else { throw LayerError.noForward(layer: "GELU", slot: context.slot) }
        let inputGradient = reuse(&cache.inputGradient, shape: input.shape)
        let inverseSqrt2 = 1 / Scalar.sqrt(2)
        let inverseSqrt2Pi = 1 / Scalar.sqrt(2 * Scalar.pi)
        // dx = dy · (Φ(x) + x φ(x)),  φ(x) = exp(−x²/2) / √(2π)
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    for i in x.indices {
                        let cdf = (1 + Scalar.erf(x[i] * inverseSqrt2)) / 2
                        let pdf = Scalar.exp(-x[i] * x[i] / 2) * inverseSqrt2Pi
                        dx[i] = dy[i] * (cdf + x[i] * pdf)
                    }
                }
            }
        }
        return inputGradient
    }
}

/// The sigmoid linear unit, `y = x σ(x)`, element-wise on any shape (PyTorch's `nn.SiLU`; the
/// activation before an AdaLN modulation).
public final class SiLU<Scalar: LayerScalar>: ParameterFreeLayer {
    private final class Cache {
        var input: Tensor<Scalar>?          // (B, …), the caller's
        var output: Tensor<Scalar>?         // (B, …)
        var inputGradient: Tensor<Scalar>?  // (B, …)
    }
    private var caches = SlotCaches<Cache>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: input.shape)
        cache.input = input
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                for i in x.indices { y[i] = x[i] / (1 + Scalar.exp(-x[i])) }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let input = cache.input, input.count == outputGradient.count
        else { throw LayerError.noForward(layer: "SiLU", slot: context.slot) }
        let inputGradient = reuse(&cache.inputGradient, shape: input.shape)
        // dx = dy · σ(x) (1 + x (1 − σ(x)))
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    for i in x.indices {
                        let sigmoid = 1 / (1 + Scalar.exp(-x[i]))
                        dx[i] = dy[i] * sigmoid * (1 + x[i] * (1 - sigmoid))
                    }
                }
            }
        }
        return inputGradient
    }
}
