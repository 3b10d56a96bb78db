import Tensor

/// A 2-D convolution of NCHW images (PyTorch's `nn.Conv2d` with square kernel, stride and
/// zero padding, no dilation or groups), computed as im2col and one BLAS gemm per chunk of
/// images (see ``forward(_:context:)``), or — for 3×3 kernels with stride 1 and padding 1 — by
/// Winograd's F(4×4, 3×3) (``Winograd``, ``usesWinograd``) for the output and both gradients.
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
        var output: Tensor<Scalar>?         // (B, OC, OH, OW)
        var inputGradient: Tensor<Scalar>?  // (B, C, H, W)
    }
    private var caches = SlotCaches<Cache>()
    /// Scratch shared by the slots: one chunk of images' im2col `(C·K·K, n)` and their output
    /// (or output gradient) `(OC, n)`, `n = images · OH·OW`, image after image along the columns.
    private var columns: Tensor<Scalar>?, product: Tensor<Scalar>?
    /// Winograd scratch: transformed filters `(36, OC, C)` (forward) and `(36, C, OC)` (input
    /// gradient), transformed tiles `V` and products `M` of a chunk.
    private var filterTransform: Tensor<Scalar>?, flippedFilterTransform: Tensor<Scalar>?
    private var tileTransform: Tensor<Scalar>?, tileProduct: Tensor<Scalar>?
    /// The filter gradient in the Winograd domain `(36, OC, C)`.
    private var filterGradientTransform: Tensor<Scalar>?

    /// The elements of im2col a chunk of images aims at (default 2²⁰, 4 MiB of `Float`): large
    /// enough that each matrix product has thousands of columns (one BLAS call, both threads
    /// busy, instead of one small call per image), small enough that the columns stay in the
    /// L3 cache between im2col and the product. Tests set it small to run several chunks.
    public var chunkElements = 1 << 20
    /// The elements of each of Winograd's scratch `V` and `M` a chunk of images aims at
    /// (default ``Winograd/chunkElements``, 4 MiB of `Float`).
    public var winogradChunkElements = Winograd.chunkElements
    /// Whether the output, the input gradient and the weight gradient take Winograd's
    /// F(4×4, 3×3) (``Winograd``) instead of im2col: by default for 3×3 kernels with stride 1
    /// and padding 1. Tests turn it off to compare the two.
    public var usesWinograd: Bool

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
        usesWinograd = kernelSize == 3 && stride == 1 && padding == 1
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

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        (weight, weightGradient) = parameters.bound(prefix, "weight")
        if hasBias {
            (bias, biasGradient) = parameters.bound(prefix, "bias")
        }
    }

    /// Images per chunk for a layer whose im2col has `rows` rows and `positions` columns an image.
    private func chunkImages(batch: Int, rows: Int, positions: Int) -> Int {
        max(1, min(batch, chunkElements / max(rows * positions, 1)))
    }

    /// `(B, C, H, W) → (B, OC, OH, OW)`, `OH = (H + 2P − K) / S + 1`.
    ///
    /// The batch goes through in chunks of images: im2col of every image of the chunk side by
    /// side `(C·K·K, n)`, one product `(OC, n) = W · col`, then each image's `(OC, OH·OW)`
    /// block copied to its place in the NCHW output.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight else { throw LayerError.unbound(layer: "Conv2d") }
        guard input.rank == 4, input.shape[1] == inChannels,
              input.shape[2] + 2 * padding >= kernelSize, input.shape[3] + 2 * padding >= kernelSize else {
            throw LayerError.shapeMismatch(layer: "Conv2d(\(inChannels), \(outChannels), \(kernelSize))",
                                           expected: "(B, \(inChannels), H ≥ \(kernelSize - 2 * padding), W)", got: input.shape)
        }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.convForward, since: started) }
        let (B, H, W) = (input.shape[0], input.shape[2], input.shape[3])
        let (OC, OH, OW) = (outChannels, outputSize(H), outputSize(W))
        let (CKK, L, imageSize) = (inChannels * kernelSize * kernelSize, OH * OW, inChannels * H * W)
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: [B, OC, OH, OW])
        cache.input = input
        if usesWinograd {
            winograd(input, filters: weight, flipped: false, inChannels: inChannels, outChannels: OC, into: output)
            if let bias {
                output.withUnsafeMutableBufferPointer { y in
                    for plane in 0..<(B * OC) {
                        let value = bias[flat: plane % OC]
                        for l in 0..<L { y[plane * L + l] += value }
                    }
                }
            }
            return output
        }
        let chunk = chunkImages(batch: B, rows: CKK, positions: L), n = chunk * L
        let columns = reuse(&columns, shape: [CKK, n]), product = reuse(&product, shape: [OC, n])
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                columns.withUnsafeMutableBufferPointer { col in
                    product.withUnsafeMutableBufferPointer { yChunk in
                        weight.withUnsafeBufferPointer { w in
                            for first in Swift.stride(from: 0, to: B, by: chunk) {
                                let images = min(chunk, B - first)
                                parallelRanges(images) { part in
                                    for j in part {
                                        im2col(x.baseAddress! + (first + j) * imageSize, height: H, width: W,
                                               into: col.baseAddress! + j * L, rowStride: n)
                                    }
                                }
                                // yChunk = W · col                  (OC, images·L) = (OC, CKK) (CKK, images·L)
                                Scalar.gemm(transposeA: false, transposeB: false, m: OC, n: images * L, k: CKK,
                                            alpha: 1, a: w.baseAddress!, lda: CKK, b: UnsafePointer(col.baseAddress!), ldb: n,
                                            beta: 0, c: yChunk.baseAddress!, ldc: n)
                                // y[first + j, o] = yChunk[o, j·L ..< (j+1)·L] (+ b[o])
                                for j in 0..<images {
                                    for o in 0..<OC {
                                        let source = yChunk.baseAddress! + o * n + j * L
                                        let target = y.baseAddress! + ((first + j) * OC + o) * L
                                        if let bias {
                                            let value = bias[flat: o]
                                            for l in 0..<L { target[l] = source[l] + value }
                                        } else {
                                            target.update(from: source, count: L)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return output
    }

    /// Accumulates `dW` (and `db`) and returns `dX`, chunk by chunk as the forward pass: the
    /// chunk's output gradient gathered into `(OC, n)`, im2col again, `dW += dY · colᵀ`, then
    /// `dcol = Wᵀ · dY` and col2im into each image's input gradient.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight, let weightGradient else { throw LayerError.unbound(layer: "Conv2d") }
        guard let cache = caches.existing(context.slot), let input = cache.input, let output = cache.output,
              outputGradient.count == output.count
        else { throw LayerError.noForward(layer: "Conv2d", slot: context.slot) }
        let profile = LayerProfile.shared
        let (B, H, W) = (input.shape[0], input.shape[2], input.shape[3])
        let (OC, L) = (outChannels, output.shape[2] * output.shape[3])
        let (CKK, imageSize) = (inChannels * kernelSize * kernelSize, inChannels * H * W)
        let needsInputGradient = context.needsInputGradient
        let inputGradient = reuse(&cache.inputGradient, shape: needsInputGradient ? input.shape : [0])
        let chunk = chunkImages(batch: B, rows: CKK, positions: L), n = chunk * L
        let columns = reuse(&columns, shape: [CKK, n]), product = reuse(&product, shape: [OC, n])
        for o in 0..<OC { biasSums[o] = 0 }
        let hasBias = biasGradient != nil
        if usesWinograd {
            var started = profile.now()
            winogradFilterGradient(input, outputGradient: outputGradient.reshaped(output.shape), weightGradient: weightGradient)
            if let biasGradient {
                // db += Σ_{b, positions} dy                              (OC)
                outputGradient.withUnsafeBufferPointer { dy in
                    for b in 0..<B {
                        for o in 0..<OC {
                            let row = dy.baseAddress! + (b * OC + o) * L
                            biasSums[o] += Tensor<Scalar>.laneSum(L) { Double(row[$0]) }
                        }
                    }
                }
                accumulate(biasSums, into: biasGradient)
            }
            profile.add(.convWeightGradient, since: started)
            guard needsInputGradient else { return inputGradient }
            started = profile.now()
            // dX = conv3×3(dY) with the filters rotated by 180° and the channels swapped
            winograd(outputGradient.reshaped(output.shape), filters: weight, flipped: true, inChannels: OC,
                     outChannels: inChannels, into: inputGradient)
            profile.add(.convInputGradient, since: started)
            return inputGradient
        }
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    columns.withUnsafeMutableBufferPointer { col in
                        product.withUnsafeMutableBufferPointer { dyChunk in
                            weight.withUnsafeBufferPointer { w in
                                weightGradient.withUnsafeMutableBufferPointer { dw in
                                    for first in Swift.stride(from: 0, to: B, by: chunk) {
                                        var started = profile.now()
                                        let images = min(chunk, B - first)
                                        // dyChunk[o, j·L ..< (j+1)·L] = dy[first + j, o]
                                        parallelRanges(images) { part in
                                            for j in part {
                                                for o in 0..<OC {
                                                    (dyChunk.baseAddress! + o * n + j * L)
                                                        .update(from: dy.baseAddress! + ((first + j) * OC + o) * L, count: L)
                                                }
                                                im2col(x.baseAddress! + (first + j) * imageSize, height: H, width: W,
                                                       into: col.baseAddress! + j * L, rowStride: n)
                                            }
                                        }
                                        // dW += dyChunk · colᵀ             (OC, CKK) += (OC, images·L) (CKK, images·L)ᵀ
                                        Scalar.gemm(transposeA: false, transposeB: true, m: OC, n: CKK, k: images * L,
                                                    alpha: 1, a: UnsafePointer(dyChunk.baseAddress!), lda: n,
                                                    b: UnsafePointer(col.baseAddress!), ldb: n,
                                                    beta: 1, c: dw.baseAddress!, ldc: CKK)
                                        // db += Σ_columns dyChunk          (OC)
                                        if hasBias {
                                            for o in 0..<OC {
                                                let row = dyChunk.baseAddress! + o * n
                                                biasSums[o] += Tensor<Scalar>.laneSum(images * L) { Double(row[$0]) }
                                            }
                                        }
                                        profile.add(.convWeightGradient, since: started)
                                        guard needsInputGradient && !usesWinograd else { continue }
                                        started = profile.now()
                                        // dcol = Wᵀ · dyChunk              (CKK, images·L) = (OC, CKK)ᵀ (OC, images·L)
                                        Scalar.gemm(transposeA: true, transposeB: false, m: CKK, n: images * L, k: OC,
                                                    alpha: 1, a: w.baseAddress!, lda: CKK, b: UnsafePointer(dyChunk.baseAddress!), ldb: n,
                                                    beta: 0, c: col.baseAddress!, ldc: n)
                                        // dx[first + j] = col2im(dcol[:, j·L ..< (j+1)·L])   (C, H, W)
                                        for j in 0..<images {
                                            let image = dx.baseAddress! + (first + j) * imageSize
                                            image.update(repeating: 0, count: imageSize)
                                            col2im(UnsafePointer(col.baseAddress! + j * L), rowStride: n, height: H, width: W,
                                                   adding: image)
                                        }
                                        profile.add(.convInputGradient, since: started)
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

    /// `dW += ∂/∂W ⟨dY, conv3×3(x)⟩` by ``Winograd/filterGradient(_:outputGradient:batch:inChannels:outChannels:height:width:adding:v:m:du:imagesPerChunk:)``.
    private func winogradFilterGradient(_ input: Tensor<Scalar>, outputGradient: Tensor<Scalar>,
                                        weightGradient: Tensor<Scalar>) {
        let (B, H, W) = (input.shape[0], input.shape[2], input.shape[3])
        let (C, OC) = (inChannels, outChannels)
        let (images, columns) = Winograd.chunk(batch: B, inChannels: C, outChannels: OC, height: H, width: W,
                                               chunkElements: winogradChunkElements)
        let v = reuse(&tileTransform, shape: [Winograd.scratchCount(channels: max(C, OC), columns: columns)])
        let m = reuse(&tileProduct, shape: [Winograd.scratchCount(channels: max(C, OC), columns: columns)])
        let du = reuse(&filterGradientTransform, shape: [Winograd.positions, OC, C])
        input.withUnsafeBufferPointer { x in
            outputGradient.withUnsafeBufferPointer { dy in
                weightGradient.withUnsafeMutableBufferPointer { dw in
                    v.withUnsafeMutableBufferPointer { v in
                        m.withUnsafeMutableBufferPointer { m in
                            du.withUnsafeMutableBufferPointer { du in
                                Winograd.filterGradient(x.baseAddress!, outputGradient: dy.baseAddress!, batch: B,
                                                        inChannels: C, outChannels: OC, height: H, width: W,
                                                        adding: dw.baseAddress!, v: v.baseAddress!, m: m.baseAddress!,
                                                        du: du.baseAddress!, imagesPerChunk: images)
                            }
                        }
                    }
                }
            }
        }
    }

    /// `output = conv3×3(input)` (stride 1, padding 1) by ``Winograd``, with this layer's
    /// filters (`flipped`: rotated and transposed, for the input gradient).
    private func winograd(_ input: Tensor<Scalar>, filters weight: Tensor<Scalar>, flipped: Bool, inChannels C: Int,
                          outChannels OC: Int, into output: Tensor<Scalar>) {
        let (B, H, W) = (input.shape[0], input.shape[2], input.shape[3])
        let filters = flipped ? reuse(&flippedFilterTransform, shape: [Winograd.positions, OC, C]) : reuse(&filterTransform, shape: [Winograd.positions, OC, C])
        let (images, columns) = Winograd.chunk(batch: B, inChannels: C, outChannels: OC, height: H, width: W,
                                               chunkElements: winogradChunkElements)
        let v = reuse(&tileTransform, shape: [Winograd.scratchCount(channels: max(C, OC), columns: columns)])
        let m = reuse(&tileProduct, shape: [Winograd.scratchCount(channels: max(C, OC), columns: columns)])
        weight.withUnsafeBufferPointer { w in
            filters.withUnsafeMutableBufferPointer { u in
                Winograd.transformFilters(w.baseAddress!, outChannels: outChannels, inChannels: inChannels, flipped: flipped,
                                          into: u.baseAddress!)
            }
        }
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                filters.withUnsafeBufferPointer { u in
                    v.withUnsafeMutableBufferPointer { v in
                        m.withUnsafeMutableBufferPointer { m in
                            Winograd.convolve(x.baseAddress!, batch: B, inChannels: C, outChannels: OC, height: H, width: W,
                                              filters: u.baseAddress!, output: y.baseAddress!, v: v.baseAddress!,
                                              m: m.baseAddress!, imagesPerChunk: images)
                        }
                    }
                }
            }
        }
    }

    // MARK: im2col

    /// The output columns `ow` whose input column `ow·S − P + kj` lies inside `0 ..< W`.
    @inline(__always)
    private func validColumns(kj: Int, width W: Int, outputWidth OW: Int) -> Range<Int> {
        let (S, P) = (stride, padding)
        let low = P > kj ? (P - kj + S - 1) / S : 0
        let high = W - 1 + P - kj >= 0 ? min(OW, (W - 1 + P - kj) / S + 1) : 0
        return low < high ? low ..< high : 0 ..< 0
    }

    /// Unfolds one image `(C, H, W)` into `(C·K·K, OH·OW)` whose rows are `rowStride` apart:
    /// row `(c, ki, kj)` holds, for every output position, the input element under kernel tap
    /// `(ki, kj)` (0 in the padding).
    @inline(__always)
    private func im2col(_ image: UnsafePointer<Scalar>, height H: Int, width W: Int,
                        into columns: UnsafeMutablePointer<Scalar>, rowStride: Int) {
        let (K, S, P, OH, OW) = (kernelSize, stride, padding, outputSize(H), outputSize(W))
        var row = columns
        for c in 0..<inChannels {
            for ki in 0..<K {
                for kj in 0..<K {
                    let valid = validColumns(kj: kj, width: W, outputWidth: OW)
                    for oh in 0..<OH {
                        let ih = oh * S - P + ki
                        let target = row + oh * OW
                        guard ih >= 0 && ih < H, !valid.isEmpty else { target.update(repeating: 0, count: OW); continue }
                        // target[ow] = image[c, ih, ow·S − P + kj]
                        let source = image + (c * H + ih) * W + (valid.lowerBound * S + kj - P)
                        if valid.lowerBound > 0 { target.update(repeating: 0, count: valid.lowerBound) }
                        if S == 1 {
                            (target + valid.lowerBound).update(from: source, count: valid.count)
                        } else if S == 2 {
                            // eight at a time: the even half of sixteen loaded, while they lie in the row
                            let (t, available) = (target + valid.lowerBound, W - (valid.lowerBound * S + kj - P))
                            var i = 0
                            while i + 8 <= valid.count && 2 * i + 16 <= available {
                                let pair = UnsafeRawPointer(source + 2 * i).loadUnaligned(as: SIMD16<Scalar>.self)
                                UnsafeMutableRawPointer(t + i).storeBytes(of: pair.evenHalf, as: SIMD8<Scalar>.self)
                                i += 8
                            }
                            while i < valid.count { t[i] = source[2 * i]; i += 1 }
                        } else {
                            for i in 0..<valid.count { target[valid.lowerBound + i] = source[i * S] }
                        }
                        if valid.upperBound < OW { (target + valid.upperBound).update(repeating: 0, count: OW - valid.upperBound) }
                    }
                    row += rowStride
                }
            }
        }
    }

    /// The adjoint of `im2col`: adds each column entry back onto the input element it came from.
    @inline(__always)
    private func col2im(_ columns: UnsafePointer<Scalar>, rowStride: Int, height H: Int, width W: Int,
                        adding image: UnsafeMutablePointer<Scalar>) {
        let (K, S, P, OH, OW) = (kernelSize, stride, padding, outputSize(H), outputSize(W))
        var row = columns
        for c in 0..<inChannels {
            for ki in 0..<K {
                for kj in 0..<K {
                    let valid = validColumns(kj: kj, width: W, outputWidth: OW)
                    for oh in 0..<OH {
                        let ih = oh * S - P + ki
                        guard ih >= 0 && ih < H else { continue }
                        let source = row + oh * OW + valid.lowerBound
                        let target = image + (c * H + ih) * W + (valid.lowerBound * S + kj - P)
                        if S == 1 {
                            for i in 0..<valid.count { target[i] += source[i] }
                        } else {
                            for i in 0..<valid.count { target[i * S] += source[i] }
                        }
                    }
                    row += rowStride
                }
            }
        }
    }
}
