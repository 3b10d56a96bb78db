import Tensor

/// The patch embedding of a vision transformer (timm's `PatchEmbed`): non-overlapping
/// `P × P` patches of NCHW images, each mapped linearly to a token of width `E` — a stride-`P`
/// convolution, computed as unfold + one GEMM over all patches of the batch.
///
/// Parameters (timm's names under `patch_embed`): `proj.weight` `(E, C, P, P)` (the
/// convolution's weight: row `e` of the GEMM is the flattened `(C, P, P)` filter),
/// `proj.bias` `(E)`; PyTorch's default initialisation (uniform in ±1/√(C·P·P)).
public final class PatchEmbedding<Scalar: LayerScalar>: Layer {
    public let inChannels: Int
    public let patchSize: Int
    public let embedDimension: Int

    private var weight: Tensor<Scalar>?, weightGradient: Tensor<Scalar>?   // (E, C, P, P)
    private var bias: Tensor<Scalar>?, biasGradient: Tensor<Scalar>?       // (E)
    private var biasSums: [Double]                                          // (E) scratch

    private final class Cache {
        var inputShape: [Int] = []
        var patches: Tensor<Scalar>?         // (B·N, C·P·P) unfolded input
        var output: Tensor<Scalar>?          // (B, N, E)
        var patchGradient: Tensor<Scalar>?   // (B·N, C·P·P)
        var inputGradient: Tensor<Scalar>?   // (B, C, H, W)
    }
    private var caches = SlotCaches<Cache>()

    public init(inChannels: Int, patchSize: Int, embedDimension: Int) {
        precondition(inChannels > 0 && patchSize > 0 && embedDimension > 0,
                     "PatchEmbedding(\(inChannels) channels, patch \(patchSize), width \(embedDimension))")
        self.inChannels = inChannels
        self.patchSize = patchSize
        self.embedDimension = embedDimension
        biasSums = [Double](repeating: 0, count: embedDimension)
    }

    private var name: String { "PatchEmbedding(\(inChannels), patch \(patchSize), width \(embedDimension))" }

    public func parameterSpecs() -> [ParameterSpec] {
        let fanIn = inChannels * patchSize * patchSize
        return [ParameterSpec(name: "proj.weight", shape: [embedDimension, inChannels, patchSize, patchSize], role: .weight,
                              initializer: .pytorchDefault(fanIn: fanIn)),
                ParameterSpec(name: "proj.bias", shape: [embedDimension], role: .bias, initializer: .pytorchDefault(fanIn: fanIn))]
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        (weight, weightGradient) = parameters.bound(prefix, "proj.weight")
        (bias, biasGradient) = parameters.bound(prefix, "proj.bias")
    }

    /// `(B, C, H, W) → (B, N, E)`, `N = (H/P)·(W/P)` patches in row-major order.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight, let bias else { throw LayerError.unbound(layer: name) }
        let P = patchSize
        guard input.rank == 4, input.shape[1] == inChannels, input.shape[2] >= P, input.shape[2] % P == 0,
              input.shape[3] >= P, input.shape[3] % P == 0 else {
            throw LayerError.shapeMismatch(layer: name, expected: "(B, \(inChannels), H, W) with H, W multiples of \(P)",
                                           got: input.shape)
        }
        let (B, N) = (input.shape[0], (input.shape[2] / P) * (input.shape[3] / P))
        let cache = caches.cache(context.slot, make: Cache.init)
        let patches = reuse(&cache.patches, shape: [B * N, inChannels * P * P])
        let output = reuse(&cache.output, shape: [B, N, embedDimension])
        cache.inputShape = input.shape
        unfold(input, into: patches)
        // y = patches Wᵀ + b                                 (B·N, E) = (B·N, CPP) (E, CPP)ᵀ
        let outputMatrix = output.reshaped([B * N, embedDimension])
        Tensor.gemm(patches, weight.reshaped([embedDimension, inChannels * P * P]), transposeB: true, into: outputMatrix)
        outputMatrix.addToEachRow(bias)
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight, let weightGradient, let biasGradient else { throw LayerError.unbound(layer: name) }
        guard let cache = caches.existing(context.slot), let patches = cache.patches, let output = cache.output,
              outputGradient.count == output.count
        else { throw LayerError.noForward(layer: name, slot: context.slot) }
        let (rows, CPP) = (patches.rowCount, patches.columnCount)
        let gradientMatrix = outputGradient.reshaped([rows, embedDimension])
        let weightMatrix = weight.reshaped([embedDimension, CPP])
        // dW += dyᵀ patches                                  (E, CPP) += (B·N, E)ᵀ (B·N, CPP)
        Tensor.gemm(gradientMatrix, transposeA: true, patches, into: weightGradient.reshaped([embedDimension, CPP]), beta: 1)
        // db += Σ_rows dy                                    (E)
        for j in biasSums.indices { biasSums[j] = 0 }
        gradientMatrix.addColumnSums(into: &biasSums)
        accumulate(biasSums, into: biasGradient)
        guard context.needsInputGradient else { return reuse(&cache.patchGradient, shape: [0]) }
        // dpatches = dy W                                    (B·N, CPP) = (B·N, E) (E, CPP)
        let patchGradient = reuse(&cache.patchGradient, shape: patches.shape)
        Tensor.gemm(gradientMatrix, weightMatrix, into: patchGradient)
        let inputGradient = reuse(&cache.inputGradient, shape: cache.inputShape)
        fold(patchGradient, into: inputGradient)
        return inputGradient
    }

    /// Copies each patch of `(B, C, H, W)` into a row `(c, i, j)` of `(B·N, C·P·P)`.
    private func unfold(_ images: Tensor<Scalar>, into patches: Tensor<Scalar>) {
        images.withUnsafeBufferPointer { x in
            patches.withUnsafeMutableBufferPointer { p in
                movePatches(imageShape: images.shape) { image, patch, count in
                    (p.baseAddress! + patch).update(from: x.baseAddress! + image, count: count)
                }
            }
        }
    }

    /// The inverse of `unfold` (patches do not overlap, so it is a permutation).
    private func fold(_ patches: Tensor<Scalar>, into images: Tensor<Scalar>) {
        patches.withUnsafeBufferPointer { p in
            images.withUnsafeMutableBufferPointer { x in
                movePatches(imageShape: images.shape) { image, patch, count in
                    (x.baseAddress! + image).update(from: p.baseAddress! + patch, count: count)
                }
            }
        }
    }

    /// Calls `move(imageOffset, patchOffset, P)` for every run of `P` pixels of every patch.
    @inline(__always)
    private func movePatches(imageShape shape: [Int], _ move: (Int, Int, Int) -> Void) {
        let (B, C, H, W, P) = (shape[0], shape[1], shape[2], shape[3], patchSize)
        let (rowsOfPatches, columnsOfPatches) = (H / P, W / P)
        var patch = 0
        for b in 0..<B {
            for pi in 0..<rowsOfPatches {
                for pj in 0..<columnsOfPatches {
                    for c in 0..<C {
                        for i in 0..<P {
                            move(((b * C + c) * H + pi * P + i) * W + pj * P, patch, P)
                            patch += P
                        }
                    }
                }
            }
        }
    }
}

/// Learned positional embeddings, optionally after a learned class token (timm's ViT
/// `cls_token` and `pos_embed`): `(B, N, E) → (B, N + 1, E)` = `[cls; x] + pos_embed`, or
/// `(B, T, E) → (B, T, E)` = `x + pos_embed[:T]` without a class token (any `T ≤ tokens`, for
/// sequences shorter than the longest).
///
/// Parameters: `cls_token` `(1, 1, E)` (with `classToken`), `pos_embed` `(1, tokens (+1), E)`,
/// both normal with std 0.02 (timm draws a truncated normal). Both have the role `.bias`: added
/// to the tokens like a bias, they are excluded from weight decay and LARS adaptation, as timm's
/// `no_weight_decay()` excludes them.
public final class PositionEmbedding<Scalar: LayerScalar>: Layer {
    /// The largest number of input tokens (patches) `N`.
    public let tokens: Int
    public let embedDimension: Int
    public let classToken: Bool

    private var position: Tensor<Scalar>?, positionGradient: Tensor<Scalar>?       // (1, N (+1), E)
    private var classValue: Tensor<Scalar>?, classGradient: Tensor<Scalar>?        // (1, 1, E)
    private var sums: [Double]                                                      // (N (+1), E) scratch

    private final class Cache {
        var output: Tensor<Scalar>?          // (B, T (+1), E)
        var inputGradient: Tensor<Scalar>?   // (B, T, E)
    }
    private var caches = SlotCaches<Cache>()

    public init(tokens: Int, embedDimension: Int, classToken: Bool) {
        precondition(tokens > 0 && embedDimension > 0, "PositionEmbedding(\(tokens) tokens, width \(embedDimension))")
        self.tokens = tokens
        self.embedDimension = embedDimension
        self.classToken = classToken
        sums = [Double](repeating: 0, count: (tokens + (classToken ? 1 : 0)) * embedDimension)
    }

    private var name: String { "PositionEmbedding(\(tokens) tokens, width \(embedDimension)\(classToken ? ", class token" : ""))" }
    private var prefixTokens: Int { classToken ? 1 : 0 }

    public func parameterSpecs() -> [ParameterSpec] {
        var specs: [ParameterSpec] = []
        if classToken {
            specs.append(ParameterSpec(name: "cls_token", shape: [1, 1, embedDimension], role: .bias, initializer: .normal(std: 0.02)))
        }
        specs.append(ParameterSpec(name: "pos_embed", shape: [1, tokens + prefixTokens, embedDimension], role: .bias,
                                   initializer: .normal(std: 0.02)))
        return specs
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        (position, positionGradient) = parameters.bound(prefix, "pos_embed")
        if classToken { (classValue, classGradient) = parameters.bound(prefix, "cls_token") }
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let position else { throw LayerError.unbound(layer: name) }
        guard input.rank == 3, input.shape[1] >= 1, input.shape[1] <= tokens, input.shape[2] == embedDimension else {
            throw LayerError.shapeMismatch(layer: name, expected: "(B, T ≤ \(tokens), \(embedDimension))", got: input.shape)
        }
        let (B, T, E, K) = (input.shape[0], input.shape[1], embedDimension, prefixTokens)
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: [B, T + K, E])
        input.withUnsafeBufferPointer { x in
            position.withUnsafeBufferPointer { pos in
                output.withUnsafeMutableBufferPointer { y in
                    for b in 0..<B {
                        let row = y.baseAddress! + b * (T + K) * E
                        // y[b, 0] = cls + pos[0];  y[b, K + t] = x[b, t] + pos[K + t]
                        if let classValue { for e in 0..<E { row[e] = classValue[flat: e] + pos[e] } }
                        let source = x.baseAddress! + b * T * E
                        for i in 0..<(T * E) { row[K * E + i] = source[i] + pos[K * E + i] }
                    }
                }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let positionGradient else { throw LayerError.unbound(layer: name) }
        guard let cache = caches.existing(context.slot), let output = cache.output, outputGradient.count == output.count
        else { throw LayerError.noForward(layer: name, slot: context.slot) }
        let (B, K, E) = (output.shape[0], prefixTokens, embedDimension)
        let T = output.shape[1] - K
        let inputGradient = reuse(&cache.inputGradient, shape: [B, T, E])
        for i in sums.indices { sums[i] = 0 }
        outputGradient.withUnsafeBufferPointer { dy in
            inputGradient.withUnsafeMutableBufferPointer { dx in
                for b in 0..<B {
                    let row = dy.baseAddress! + b * (T + K) * E
                    // dpos += Σ_b dy[b];  dcls += Σ_b dy[b, 0];  dx[b] = dy[b, K…]
                    for i in 0..<((T + K) * E) { sums[i] += Double(row[i]) }
                    (dx.baseAddress! + b * T * E).update(from: row + K * E, count: T * E)
                }
            }
        }
        positionGradient.withUnsafeMutableBufferPointer { g in
            for i in 0..<((T + K) * E) { g[i] += Scalar(sums[i]) }
        }
        if let classGradient {
            classGradient.withUnsafeMutableBufferPointer { g in for e in 0..<E { g[e] += Scalar(sums[e]) } }
        }
        return inputGradient
    }
}

/// How a vision transformer turns its tokens into one vector per image.
public enum TokenPoolingMode: String, ConfigurationChoice {
    /// The class token (token 0).
    case cls
    /// The mean of the tokens after the first `prefixTokens`.
    case mean
}

/// `(B, T, E) → (B, E)`: the class token, or the mean of the tokens that follow `prefixTokens`
/// (timm's `global_pool='token'` or `'avg'`).
public final class TokenPooling<Scalar: LayerScalar>: ParameterFreeLayer {
    public let mode: TokenPoolingMode
    /// Tokens the mean skips (the class token).
    public let prefixTokens: Int

    private final class Cache {
        var inputShape: [Int] = []
        var output: Tensor<Scalar>?          // (B, E)
        var inputGradient: Tensor<Scalar>?   // (B, T, E)
    }
    private var caches = SlotCaches<Cache>()

    public init(_ mode: TokenPoolingMode, prefixTokens: Int = 0) {
        precondition(prefixTokens >= 0, "TokenPooling: \(prefixTokens) prefix tokens")
        self.mode = mode
        self.prefixTokens = prefixTokens
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank == 3, input.shape[1] > (mode == .mean ? prefixTokens : 0) else {
            throw LayerError.shapeMismatch(layer: "TokenPooling(\(mode.rawValue))",
                                           expected: "(B, T > \(mode == .mean ? prefixTokens : 0), E)", got: input.shape)
        }
        let (B, T, E) = (input.shape[0], input.shape[1], input.shape[2])
        let cache = caches.cache(context.slot, make: Cache.init)
        let output = reuse(&cache.output, shape: [B, E])
        cache.inputShape = input.shape
        let first = mode == .cls ? 0 : prefixTokens, last = mode == .cls ? 1 : T
        let scale = 1 / Scalar(last - first)
        input.withUnsafeBufferPointer { x in
            output.withUnsafeMutableBufferPointer { y in
                // y[b] = mean_{first ≤ t < last} x[b, t]
                for b in 0..<B {
                    let target = y.baseAddress! + b * E
                    target.update(repeating: 0, count: E)
                    for t in first..<last {
                        let source = x.baseAddress! + (b * T + t) * E
                        for e in 0..<E { target[e] += source[e] }
                    }
                    for e in 0..<E { target[e] *= scale }
                }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let output = cache.output, outputGradient.count == output.count
        else { throw LayerError.noForward(layer: "TokenPooling(\(mode.rawValue))", slot: context.slot) }
        let (B, T, E) = (cache.inputShape[0], cache.inputShape[1], cache.inputShape[2])
        let inputGradient = reuse(&cache.inputGradient, shape: cache.inputShape)
        let first = mode == .cls ? 0 : prefixTokens, last = mode == .cls ? 1 : T
        let scale = 1 / Scalar(last - first)
        outputGradient.withUnsafeBufferPointer { dy in
            inputGradient.withUnsafeMutableBufferPointer { dx in
                // dx[b, t] = dy[b] / count for pooled tokens, 0 elsewhere
                for b in 0..<B {
                    for t in 0..<T {
                        let target = dx.baseAddress! + (b * T + t) * E
                        if t >= first && t < last {
                            for e in 0..<E { target[e] = dy[b * E + e] * scale }
                        } else {
                            target.update(repeating: 0, count: E)
                        }
                    }
                }
            }
        }
        return inputGradient
    }
}
