import Tensor

/// Average pooling of NCHW images over `kernelSize × kernelSize` windows every `stride`
/// positions, no padding, rounding the output size down (PyTorch's `nn.AvgPool2d(k, s)`).
public final class AvgPool2d<Scalar: LayerScalar>: ParameterFreeLayer {
    public let kernelSize: Int
    public let stride: Int

    private final class Cache {
        var inputShape: [Int] = []
        var output: Tensor<Scalar>?         // (B, C, OH, OW)
        var inputGradient: Tensor<Scalar>?  // (B, C, H, W)
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameter stride: defaults to `kernelSize` (non-overlapping windows), like PyTorch.
    public init(kernelSize: Int, stride: Int? = nil) {
        precondition(kernelSize > 0 && (stride ?? 1) > 0, "AvgPool2d(\(kernelSize), stride \(stride ?? kernelSize))")
        self.kernelSize = kernelSize
        self.stride = stride ?? kernelSize
    }


    /// `(B, C, H, W) → (B, C, OH, OW)`, `OH = (H − K) / S + 1`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.pooling, since: started) }
        guard input.rank == 4, input.shape[2] >= kernelSize, input.shape[3] >= kernelSize else {
            throw LayerError.shapeMismatch(layer: "AvgPool2d(\(kernelSize))", expected: "(B, C, H ≥ \(kernelSize), W ≥ \(kernelSize))",
                                           got: input.shape)
        }
        let (B, C, H, W) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3])
        let (K, OH, OW) = (kernelSize, (H - kernelSize) / stride + 1, (W - kernelSize) / stride + 1)
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: [B, C, OH, OW])
        cache.inputShape = input.shape
        let scale = 1 / Scalar(K * K)
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                for plane in 0..<(B * C) {
                    let source = x.baseAddress! + plane * H * W, target = y.baseAddress! + plane * OH * OW
                    for oh in 0..<OH {
                        for ow in 0..<OW {
                            var sum: Scalar = 0
                            for ki in 0..<K { for kj in 0..<K { sum += source[(oh * stride + ki) * W + ow * stride + kj] } }
                            target[oh * OW + ow] = sum * scale
                        }
                    }
                }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.pooling, since: started) }
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count
        else { throw LayerError.noForward(layer: "AvgPool2d", slot: context.slot) }
        let (B, C, H, W) = (cache.inputShape[0], cache.inputShape[1], cache.inputShape[2], cache.inputShape[3])
        let (K, OH, OW) = (kernelSize, output.shape[2], output.shape[3])
        let inputGradient = reuse(&cache.inputGradient, shape: cache.inputShape)
        inputGradient.fill(0)
        let scale = 1 / Scalar(K * K)
        // dx[window] += dy / K²
        outputGradient.withUnsafeBufferPointer { dy in
            inputGradient.withUnsafeMutableBufferPointer { dx in
                for plane in 0..<(B * C) {
                    let source = dy.baseAddress! + plane * OH * OW, target = dx.baseAddress! + plane * H * W
                    for oh in 0..<OH {
                        for ow in 0..<OW {
                            let g = source[oh * OW + ow] * scale
                            for ki in 0..<K { for kj in 0..<K { target[(oh * stride + ki) * W + ow * stride + kj] += g } }
                        }
                    }
                }
            }
        }
        return inputGradient
    }
}

/// The mean of each channel over all positions, `(B, C, H, W) → (B, C)` (PyTorch's
/// `nn.AdaptiveAvgPool2d(1)` followed by `nn.Flatten()`), the end of a ResNet trunk.
public final class GlobalAvgPool2d<Scalar: LayerScalar>: ParameterFreeLayer {
    private final class Cache {
        var inputShape: [Int] = []
        var output: Tensor<Scalar>?         // (B, C)
        var inputGradient: Tensor<Scalar>?  // (B, C, H, W)
    }
    private var caches = SlotCaches<Cache>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.pooling, since: started) }
        guard input.rank == 4, input.shape[2] * input.shape[3] > 0 else {
            throw LayerError.shapeMismatch(layer: "GlobalAvgPool2d", expected: "(B, C, H, W)", got: input.shape)
        }
        let (B, C, S) = (input.shape[0], input.shape[1], input.shape[2] * input.shape[3])
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: [B, C])
        cache.inputShape = input.shape
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                for plane in 0..<(B * C) {
                    var sum = 0.0
                    for s in 0..<S { sum += Double(x[plane * S + s]) }
                    y[plane] = Scalar(sum / Double(S))
                }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.pooling, since: started) }
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count
        else { throw LayerError.noForward(layer: "GlobalAvgPool2d", slot: context.slot) }
        let S = cache.inputShape[2] * cache.inputShape[3]
        let inputGradient = reuse(&cache.inputGradient, shape: cache.inputShape)
        // dx[b, c, :, :] = dy[b, c] / (H·W)
        outputGradient.withUnsafeBufferPointer { dy in
            inputGradient.withUnsafeMutableBufferPointer { dx in
                for plane in 0..<dy.count {
                    let g = dy[plane] / Scalar(S)
                    for s in 0..<S { dx[plane * S + s] = g }
                }
            }
        }
        return inputGradient
    }
}

/// `(B, d1, d2, …) → (B, d1·d2·…)`, a view of the same elements (PyTorch's `nn.Flatten()`).
public final class Flatten<Scalar: LayerScalar>: ParameterFreeLayer {
    private final class Cache { var inputShape: [Int] = [] }
    private var caches = SlotCaches<Cache>()

    public init() {}

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank >= 1 else {
            throw LayerError.shapeMismatch(layer: "Flatten", expected: "(B, …)", got: input.shape)
        }
        caches.cache(context.slot, make: Cache.init).inputShape = input.shape
        return input.reshaped([input.rowCount, input.columnCount])
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), outputGradient.count == cache.inputShape.reduce(1, *)
        else { throw LayerError.noForward(layer: "Flatten", slot: context.slot) }
        return outputGradient.reshaped(cache.inputShape)
    }
}
