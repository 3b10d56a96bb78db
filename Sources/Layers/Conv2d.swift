import Tensor

/// A 2-D convolution of NCHW images (PyTorch's `nn.Conv2d` with square kernel, stride and
/// zero padding, no dilation or groups), computed image by image as im2col and one BLAS gemm.
///
/// Parameters: `weight` `(OC, C, K, K)`, `bias` `(OC)` (optional; off before batch norm). The
/// default initialisation is PyTorch's (uniform in ±1/√(C·K·K)); ResNets use Kaiming normal in
/// fan-out mode like torchvision.
public final class Conv2d<Scalar: LayerScalar>: Layer {
    public let inChannels: Int
    public let outChannels: Int
    public let kernelSize: Int
    public let stride: Int
    public let padding: Int
    public let hasBias: Bool
    public let weightInitializer: ParameterInitializer

    private var weight: Tensor<Scalar>?, weightGradient: Tensor<Scalar>?   // (OC, C, K, K)
    private var bias: Tensor<Scalar>?, biasGradient: Tensor<Scalar>?       // (OC)
    private var biasSums: [Double]                                          // (OC) scratch

    private final class Cache {
        var input: Tensor<Scalar>?          // (B, C, H, W), the caller's
        var columns: Tensor<Scalar>?        // (C·K·K, OH·OW) one image's im2col
        var output: Tensor<Scalar>?         // (B, OC, OH, OW)
        var inputGradient: Tensor<Scalar>?  // (B, C, H, W)
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameter weightInitializer: defaults to PyTorch's `.pytorchDefault(fanIn: C·K·K)`.
    public init(inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
                bias: Bool = true, weightInitializer: ParameterInitializer? = nil) {
        precondition(inChannels > 0 && outChannels > 0 && kernelSize > 0 && stride > 0 && padding >= 0,
                     "Conv2d(\(inChannels), \(outChannels), kernel \(kernelSize), stride \(stride), padding \(padding))")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        hasBias = bias
        self.weightInitializer = weightInitializer ?? .pytorchDefault(fanIn: inChannels * kernelSize * kernelSize)
        biasSums = [Double](repeating: 0, count: outChannels)
    }

    /// The output height or width for an input height or width.
    public func outputSize(_ inputSize: Int) -> Int { (inputSize + 2 * padding - kernelSize) / stride + 1 }

    public func parameterSpecs() -> [ParameterSpec] {
        var specs = [ParameterSpec(name: "weight", shape: [outChannels, inChannels, kernelSize, kernelSize],
                                   role: .weight, initializer: weightInitializer)]
        if hasBias {
            specs.append(ParameterSpec(name: "bias", shape: [outChannels], role: .bias,
                                       initializer: .pytorchDefault(fanIn: inChannels * kernelSize * kernelSize)))
        }
        return specs
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: ParameterStore<Scalar>, prefix: String) {
        (weight, weightGradient) = parameters.bound(prefix, "weight")
        if hasBias {
            (bias, biasGradient) = parameters.bound(prefix, "bias")
        }
    }

    /// `(B, C, H, W) → (B, OC, OH, OW)`, `OH = (H + 2P − K) / S + 1`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight else { throw LayerError.unbound(layer: "Conv2d") }
        guard input.rank == 4, input.shape[1] == inChannels,
              input.shape[2] + 2 * padding >= kernelSize, input.shape[3] + 2 * padding >= kernelSize else {
            throw LayerError.shapeMismatch(layer: "Conv2d(\(inChannels), \(outChannels), \(kernelSize))",
                                           expected: "(B, \(inChannels), H ≥ \(kernelSize - 2 * padding), W)", got: input.shape)
        }
        let (B, H, W) = (input.shape[0], input.shape[2], input.shape[3])
        let (OC, OH, OW) = (outChannels, outputSize(H), outputSize(W))
        let (CKK, L) = (inChannels * kernelSize * kernelSize, OH * OW)
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: [B, OC, OH, OW])
        let columns = reuse(&cache.columns, shape: [CKK, L])
        cache.input = input
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                columns.withUnsafeMutableBufferPointer { col in
                    weight.withUnsafeBufferPointer { w in
                        for b in 0..<B {
                            im2col(x.baseAddress! + b * inChannels * H * W, height: H, width: W, into: col.baseAddress!)
                            // y[b] = W · col                         (OC, L) = (OC, CKK) (CKK, L)
                            Scalar.gemm(transposeA: false, transposeB: false, m: OC, n: L, k: CKK,
                                        alpha: 1, a: w.baseAddress!, lda: CKK, b: UnsafePointer(col.baseAddress!), ldb: L,
                                        beta: 0, c: y.baseAddress! + b * OC * L, ldc: L)
                            if let bias {
                                for o in 0..<OC {
                                    let value = bias[flat: o]
                                    let row = y.baseAddress! + (b * OC + o) * L
                                    for l in 0..<L { row[l] += value }
                                }
                            }
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
        guard let weight, let weightGradient else { throw LayerError.unbound(layer: "Conv2d") }
        guard let cache = caches.existing(context.slot), let input = cache.input, let output = cache.output,
              let columns = cache.columns, outputGradient.count == output.count
        else { throw LayerError.noForward(layer: "Conv2d", slot: context.slot) }
        let (B, H, W) = (input.shape[0], input.shape[2], input.shape[3])
        let (OC, L) = (outChannels, output.shape[2] * output.shape[3])
        let CKK = inChannels * kernelSize * kernelSize
        let needsInputGradient = context.needsInputGradient
        let inputGradient = reuse(&cache.inputGradient, shape: needsInputGradient ? input.shape : [0])
        inputGradient.fill(0)
        for o in 0..<OC { biasSums[o] = 0 }
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    columns.withUnsafeMutableBufferPointer { col in
                        weight.withUnsafeBufferPointer { w in
                            weightGradient.withUnsafeMutableBufferPointer { dw in
                                for b in 0..<B {
                                    let dyImage = dy.baseAddress! + b * OC * L
                                    // dW += dy[b] · colᵀ             (OC, CKK) += (OC, L) (CKK, L)ᵀ
                                    im2col(x.baseAddress! + b * inChannels * H * W, height: H, width: W,
                                           into: col.baseAddress!)
                                    Scalar.gemm(transposeA: false, transposeB: true, m: OC, n: CKK, k: L,
                                                alpha: 1, a: dyImage, lda: L, b: UnsafePointer(col.baseAddress!), ldb: L,
                                                beta: 1, c: dw.baseAddress!, ldc: CKK)
                                    if needsInputGradient {
                                        // dcol = Wᵀ · dy[b]          (CKK, L) = (OC, CKK)ᵀ (OC, L)
                                        Scalar.gemm(transposeA: true, transposeB: false, m: CKK, n: L, k: OC,
                                                    alpha: 1, a: w.baseAddress!, lda: CKK, b: dyImage, ldb: L,
                                                    beta: 0, c: col.baseAddress!, ldc: L)
                                        // dx[b] += col2im(dcol)      (C, H, W)
                                        col2im(UnsafePointer(col.baseAddress!), height: H, width: W,
                                               adding: dx.baseAddress! + b * inChannels * H * W)
                                    }
                                    // db += Σ_l dy[b]                (OC)
                                    for o in 0..<OC {
                                        var sum = 0.0
                                        for l in 0..<L { sum += Double(dyImage[o * L + l]) }
                                        biasSums[o] += sum
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let biasGradient { accumulate(biasSums, into: biasGradient) }
        return inputGradient
    }

    // MARK: im2col

    /// Unfolds one image `(C, H, W)` into `(C·K·K, OH·OW)`: row `(c, ki, kj)` holds, for every
    /// output position, the input element under kernel tap `(ki, kj)` (0 in the padding).
    private func im2col(_ image: UnsafePointer<Scalar>, height H: Int, width W: Int,
                        into columns: UnsafeMutablePointer<Scalar>) {
        let (K, OH, OW) = (kernelSize, outputSize(H), outputSize(W))
        var row = columns
        for c in 0..<inChannels {
            for ki in 0..<K {
                for kj in 0..<K {
                    for oh in 0..<OH {
                        let ih = oh * stride - padding + ki
                        let target = row + oh * OW
                        guard ih >= 0 && ih < H else { target.update(repeating: 0, count: OW); continue }
                        let source = image + (c * H + ih) * W
                        for ow in 0..<OW {
                            let iw = ow * stride - padding + kj
                            target[ow] = iw >= 0 && iw < W ? source[iw] : 0
                        }
                    }
                    row += OH * OW
                }
            }
        }
    }

    /// The adjoint of `im2col`: adds each column entry back onto the input element it came from.
    private func col2im(_ columns: UnsafePointer<Scalar>, height H: Int, width W: Int,
                        adding image: UnsafeMutablePointer<Scalar>) {
        let (K, OH, OW) = (kernelSize, outputSize(H), outputSize(W))
        var row = columns
        for c in 0..<inChannels {
            for ki in 0..<K {
                for kj in 0..<K {
                    for oh in 0..<OH {
                        let ih = oh * stride - padding + ki
                        guard ih >= 0 && ih < H else { continue }
                        let source = row + oh * OW
                        let target = image + (c * H + ih) * W
                        for ow in 0..<OW {
                            let iw = ow * stride - padding + kj
                            if iw >= 0 && iw < W { target[iw] += source[ow] }
                        }
                    }
                    row += OH * OW
                }
            }
        }
    }
}
