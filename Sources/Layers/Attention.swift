import Tensor

/// Multi-head scaled-dot-product self-attention over token sequences (timm's `Attention`,
/// PyTorch's `nn.MultiheadAttention` with a fused input projection):
///
/// ```
/// q, k, v = split(x Wqkvᵀ + bqkv)            (B, T, 3·H·D) → 3 × (B, H, T, D)
/// P = softmax(q kᵀ / √D [+ causal mask])     (B, H, T, T)
/// y = concat_h(P v) Wprojᵀ + bproj           (B, T, C)
/// ```
///
/// The attention matrices are computed with one GEMM per (sample, head) on strided views of
/// the fused `qkv` buffer (no copies into per-head tensors, no loops over tokens for matrix
/// work); the softmax is the numerically stable one (the row maximum subtracted before `exp`).
/// With `causal`, token `t` attends to tokens `0…t` only.
///
/// Parameters (timm's names): `qkv.weight` `(3·H·D, C)`, `qkv.bias` `(3·H·D)` (optional),
/// `proj.weight` `(C, H·D)`, `proj.bias` `(C)`. The rows of `qkv.weight` are `[q | k | v]`, each
/// head-major, as in timm's `reshape(B, T, 3, H, D)`.
public final class MultiHeadAttention<Scalar: LayerScalar>: Layer {
    /// The model width `C` of input and output tokens.
    public let features: Int
    /// The number of heads `H`.
    public let heads: Int
    /// The width `D` of one head (default `C / H`).
    public let headDimension: Int
    /// Whether token `t` attends only to tokens `≤ t`.
    public let causal: Bool
    /// The fused query/key/value projection `C → 3·H·D`.
    public let qkv: Linear<Scalar>
    /// The output projection `H·D → C`.
    public let proj: Linear<Scalar>

    private final class Cache {
        var qkv: Tensor<Scalar>?             // (B, T, 3·H·D), qkv's output buffer
        var probabilities: Tensor<Scalar>?   // (B, H, T, T)
        var attended: Tensor<Scalar>?        // (B, T, H·D) concat_h(P v)
        var qkvGradient: Tensor<Scalar>?     // (B, T, 3·H·D)
    }
    private var caches = SlotCaches<Cache>()
    private var scoreGradient: Tensor<Scalar>?   // (parts, T, T) scratch of the backward pass, shared by the slots

    /// - Parameters:
    ///   - features: the token width `C`.
    ///   - heads: the number of heads `H`.
    ///   - headDimension: `D`; defaults to `C / H` (which must then divide evenly).
    ///   - qkvBias: a bias in the fused projection (default true, timm's `qkv_bias=True`).
    ///   - causal: mask attention to later tokens (default false).
    public init(features: Int, heads: Int, headDimension: Int? = nil, qkvBias: Bool = true, causal: Bool = false) {
        precondition(features > 0 && heads > 0, "MultiHeadAttention(features \(features), heads \(heads))")
        precondition(headDimension != nil || features % heads == 0,
                     "MultiHeadAttention: \(heads) heads do not divide \(features) features; give headDimension")
        let headDimension = headDimension ?? features / heads
        precondition(headDimension > 0, "MultiHeadAttention: head dimension \(headDimension)")
        self.features = features
        self.heads = heads
        self.headDimension = headDimension
        self.causal = causal
        qkv = Linear(inFeatures: features, outFeatures: 3 * heads * headDimension, bias: qkvBias)
        proj = Linear(inFeatures: heads * headDimension, outFeatures: features)
    }

    private var name: String { "MultiHeadAttention(\(features), heads \(heads)×\(headDimension)\(causal ? ", causal" : ""))" }

    public func parameterSpecs() -> [ParameterSpec] {
        qkv.parameterSpecs().map { $0.prefixed("qkv") } + proj.parameterSpecs().map { $0.prefixed("proj") }
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        qkv.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "qkv"))
        proj.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "proj"))
    }

    /// `(B, T, C) → (B, T, C)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank == 3, input.shape[2] == features, input.shape[1] > 0 else {
            throw LayerError.shapeMismatch(layer: name, expected: "(B, T ≥ 1, \(features))", got: input.shape)
        }
        let (B, T, H, D) = (input.shape[0], input.shape[1], heads, headDimension)
        let cache = caches.cache(context.slot, make: Cache.init)
        let fused = try qkv.forward(input, context: context)                              // (B, T, 3HD)
        let probabilities = reuse(&cache.probabilities, shape: [B, H, T, T])
        let attended = reuse(&cache.attended, shape: [B, T, H * D])
        cache.qkv = fused
        let (rowStride, outputStride) = (3 * H * D, H * D)
        let started = LayerProfile.shared.now()
        fused.withUnsafeBufferPointer { qkvBuffer in
            probabilities.withUnsafeMutableBufferPointer { pBuffer in
                attended.withUnsafeMutableBufferPointer { oBuffer in
                    ScaledDotProductAttention.forEachPair(samples: B, heads: H, queryCount: T, keyCount: T, headDimension: D) { _, b, h in
                        let q = qkvBuffer.baseAddress! + b * T * rowStride + h * D     // (T, D), stride 3HD
                        ScaledDotProductAttention.forward(
                            queries: q, keys: q + H * D, values: q + 2 * H * D, strides: (rowStride, rowStride, rowStride),
                            probabilities: pBuffer.baseAddress! + (b * H + h) * T * T,
                            output: oBuffer.baseAddress! + b * T * outputStride + h * D, outputStride: outputStride,
                            queryCount: T, keyCount: T, headDimension: D, causal: causal)
                    }
                }
            }
        }
        LayerProfile.shared.add(.attention, since: started)
        return try proj.forward(attended, context: context)                               // (B, T, C)
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let fused = cache.qkv, let probabilities = cache.probabilities,
              let attended = cache.attended, outputGradient.count == attended.count / (heads * headDimension) * features
        else { throw LayerError.noForward(layer: name, slot: context.slot) }
        let (B, T, H, D) = (fused.shape[0], fused.shape[1], heads, headDimension)
        let attendedGradient = try proj.backward(outputGradient, context: context.needingInputGradient(true))  // (B, T, HD)
        let qkvGradient = reuse(&cache.qkvGradient, shape: fused.shape)
        let parts = ScaledDotProductAttention.partCount(samples: B, heads: H, queryCount: T, keyCount: T, headDimension: D)
        let dS = reuse(&scoreGradient, shape: [parts, T, T])
        let (rowStride, outputStride) = (3 * H * D, H * D)
        let started = LayerProfile.shared.now()
        fused.withUnsafeBufferPointer { qkvBuffer in
            probabilities.withUnsafeBufferPointer { pBuffer in
                attendedGradient.withUnsafeBufferPointer { dOBuffer in
                    qkvGradient.withUnsafeMutableBufferPointer { dQKVBuffer in
                        dS.withUnsafeMutableBufferPointer { dSBuffer in
                            ScaledDotProductAttention.forEachPair(samples: B, heads: H, queryCount: T, keyCount: T,
                                                                  headDimension: D) { part, b, h in
                                let offset = b * T * rowStride + h * D
                                let q = qkvBuffer.baseAddress! + offset, dq = dQKVBuffer.baseAddress! + offset
                                ScaledDotProductAttention.backward(
                                    queries: q, keys: q + H * D, values: q + 2 * H * D, strides: (rowStride, rowStride, rowStride),
                                    probabilities: pBuffer.baseAddress! + (b * H + h) * T * T,
                                    outputGradient: dOBuffer.baseAddress! + b * T * outputStride + h * D, outputStride: outputStride,
                                    scoreGradient: dSBuffer.baseAddress! + part * T * T,
                                    queryGradient: dq, keyGradient: dq + H * D, valueGradient: dq + 2 * H * D,
                                    gradientStrides: (rowStride, rowStride, rowStride),
                                    queryCount: T, keyCount: T, headDimension: D)
                            }
                        }
                    }
                }
            }
        }
        LayerProfile.shared.add(.attention, since: started)
        return try qkv.backward(qkvGradient, context: context)                            // (B, T, C)
    }
}

/// Multi-head cross-attention: queries from the tokens `x` `(B, T, C)`, keys and values from a
/// second sequence, the condition `memory` `(B, S, M)` (a ``ConditionedLayer``; mlx-swift's
/// `MultiHeadAttention(queries, keys, values)` with keys and values from one source):
///
/// ```
/// q = x Wqᵀ + bq                              (B, T, H·D) → (B, H, T, D)
/// k, v = split(memory Wkvᵀ + bkv)             (B, S, 2·H·D) → 2 × (B, H, S, D)
/// y = concat_h(softmax(q kᵀ / √D) v) Wprojᵀ + bproj      (B, T, C)
/// ```
///
/// Parameters: `q.weight` `(H·D, C)`, `q.bias`, `kv.weight` `(2·H·D, M)` (rows `[k | v]`),
/// `kv.bias`, `proj.weight` `(C, H·D)`, `proj.bias`. The backward pass returns the gradients of
/// the tokens and of the memory.
public final class CrossAttention<Scalar: LayerScalar>: ConditionedLayer {
    public let features: Int
    public let memoryFeatures: Int
    public let heads: Int
    public let headDimension: Int
    public let q: Linear<Scalar>
    public let kv: Linear<Scalar>
    public let proj: Linear<Scalar>

    private final class Cache {
        var queries: Tensor<Scalar>?          // (B, T, HD), q's buffer
        var keysValues: Tensor<Scalar>?       // (B, S, 2HD), kv's buffer
        var probabilities: Tensor<Scalar>?    // (B, H, T, S)
        var attended: Tensor<Scalar>?         // (B, T, HD)
        var queryGradient: Tensor<Scalar>?    // (B, T, HD)
        var keyValueGradient: Tensor<Scalar>? // (B, S, 2HD)
        var scoreGradient: Tensor<Scalar>?    // (parts, T, S)
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameters:
    ///   - features: the token width `C`.
    ///   - memoryFeatures: the memory width `M` (default `C`).
    ///   - heads: the number of heads `H`; `headDimension` defaults to `C / H`.
    ///   - bias: biases in the `q` and `kv` projections (default true).
    public init(features: Int, memoryFeatures: Int? = nil, heads: Int, headDimension: Int? = nil, bias: Bool = true) {
        precondition(features > 0 && heads > 0 && (headDimension != nil || features % heads == 0),
                     "CrossAttention(features \(features), heads \(heads)): give a headDimension when heads do not divide features")
        let headDimension = headDimension ?? features / heads
        self.features = features
        self.memoryFeatures = memoryFeatures ?? features
        self.heads = heads
        self.headDimension = headDimension
        q = Linear(inFeatures: features, outFeatures: heads * headDimension, bias: bias)
        kv = Linear(inFeatures: memoryFeatures ?? features, outFeatures: 2 * heads * headDimension, bias: bias)
        proj = Linear(inFeatures: heads * headDimension, outFeatures: features)
    }

    private var name: String { "CrossAttention(\(features), memory \(memoryFeatures), heads \(heads)×\(headDimension))" }
    private var projections: NamedSequential<Scalar> { NamedSequential([("q", q), ("kv", kv), ("proj", proj)]) }

    public func parameterSpecs() -> [ParameterSpec] { projections.parameterSpecs() }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        projections.bind(parameters: parameters, buffers: buffers, prefix: prefix)
    }

    /// `(B, T, C)` tokens attending to `(B, S, M)` memory `→ (B, T, C)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, condition memory: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank == 3, input.shape[2] == features, input.shape[1] > 0 else {
            throw LayerError.shapeMismatch(layer: name, expected: "input (B, T ≥ 1, \(features))", got: input.shape)
        }
        guard memory.rank == 3, memory.shape[0] == input.shape[0], memory.shape[1] > 0, memory.shape[2] == memoryFeatures else {
            throw LayerError.shapeMismatch(layer: name, expected: "memory (\(input.shape[0]), S ≥ 1, \(memoryFeatures))",
                                           got: memory.shape)
        }
        let (B, T, S, H, D) = (input.shape[0], input.shape[1], memory.shape[1], heads, headDimension)
        let cache = caches.cache(context.slot, make: Cache.init)
        let queries = try q.forward(input, context: context)                                   // (B, T, HD)
        let keysValues = try kv.forward(memory, context: context)                              // (B, S, 2HD)
        let probabilities = reuse(&cache.probabilities, shape: [B, H, T, S])
        let attended = reuse(&cache.attended, shape: [B, T, H * D])
        (cache.queries, cache.keysValues) = (queries, keysValues)
        let started = LayerProfile.shared.now()
        queries.withUnsafeBufferPointer { qBuffer in
            keysValues.withUnsafeBufferPointer { kvBuffer in
                probabilities.withUnsafeMutableBufferPointer { pBuffer in
                    attended.withUnsafeMutableBufferPointer { oBuffer in
                        ScaledDotProductAttention.forEachPair(samples: B, heads: H, queryCount: T, keyCount: S, headDimension: D) { _, b, h in
                            let k = kvBuffer.baseAddress! + b * S * 2 * H * D + h * D
                            ScaledDotProductAttention.forward(
                                queries: qBuffer.baseAddress! + b * T * H * D + h * D, keys: k, values: k + H * D,
                                strides: (H * D, 2 * H * D, 2 * H * D), probabilities: pBuffer.baseAddress! + (b * H + h) * T * S,
                                output: oBuffer.baseAddress! + b * T * H * D + h * D, outputStride: H * D,
                                queryCount: T, keyCount: S, headDimension: D, causal: false)
                        }
                    }
                }
            }
        }
        LayerProfile.shared.add(.attention, since: started)
        return try proj.forward(attended, context: context)                                    // (B, T, C)
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws
        -> (input: Tensor<Scalar>, condition: Tensor<Scalar>) {
        guard let cache = caches.existing(context.slot), let queries = cache.queries, let keysValues = cache.keysValues,
              let probabilities = cache.probabilities, outputGradient.count == queries.count / (heads * headDimension) * features
        else { throw LayerError.noForward(layer: name, slot: context.slot) }
        let (B, T, S, H, D) = (queries.shape[0], queries.shape[1], keysValues.shape[1], heads, headDimension)
        let inner = context.needingInputGradient(true)
        let attendedGradient = try proj.backward(outputGradient, context: inner)                 // (B, T, HD)
        let queryGradient = reuse(&cache.queryGradient, shape: queries.shape)
        let keyValueGradient = reuse(&cache.keyValueGradient, shape: keysValues.shape)
        let parts = ScaledDotProductAttention.partCount(samples: B, heads: H, queryCount: T, keyCount: S, headDimension: D)
        let dS = reuse(&cache.scoreGradient, shape: [parts, T, S])
        let started = LayerProfile.shared.now()
        queries.withUnsafeBufferPointer { qBuffer in
            keysValues.withUnsafeBufferPointer { kvBuffer in
                probabilities.withUnsafeBufferPointer { pBuffer in
                    attendedGradient.withUnsafeBufferPointer { dOBuffer in
                        queryGradient.withUnsafeMutableBufferPointer { dqBuffer in
                            keyValueGradient.withUnsafeMutableBufferPointer { dkvBuffer in
                                dS.withUnsafeMutableBufferPointer { dSBuffer in
                                    ScaledDotProductAttention.forEachPair(samples: B, heads: H, queryCount: T, keyCount: S,
                                                                          headDimension: D) { part, b, h in
                                        let (queryOffset, keyOffset) = (b * T * H * D + h * D, b * S * 2 * H * D + h * D)
                                        let k = kvBuffer.baseAddress! + keyOffset, dk = dkvBuffer.baseAddress! + keyOffset
                                        ScaledDotProductAttention.backward(
                                            queries: qBuffer.baseAddress! + queryOffset, keys: k, values: k + H * D,
                                            strides: (H * D, 2 * H * D, 2 * H * D),
                                            probabilities: pBuffer.baseAddress! + (b * H + h) * T * S,
                                            outputGradient: dOBuffer.baseAddress! + queryOffset, outputStride: H * D,
                                            scoreGradient: dSBuffer.baseAddress! + part * T * S,
                                            queryGradient: dqBuffer.baseAddress! + queryOffset, keyGradient: dk,
                                            valueGradient: dk + H * D, gradientStrides: (H * D, 2 * H * D, 2 * H * D),
                                            queryCount: T, keyCount: S, headDimension: D)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        LayerProfile.shared.add(.attention, since: started)
        let inputGradient = try q.backward(queryGradient, context: context)                      // (B, T, C)
        let memoryGradient = try kv.backward(keyValueGradient, context: inner)                   // (B, S, M)
        return (inputGradient, memoryGradient)
    }
}

// MARK: - The kernel

/// Scaled-dot-product attention of one (sample, head) on strided row-major views: queries
/// `(Tq, D)`, keys and values `(Tk, D)`, each with its own row stride (the fused `qkv` buffer
/// has stride `3·H·D`), by three BLAS products forward and four backward.
enum ScaledDotProductAttention {
    /// The most multiply-adds (`Tq·Tk·D`) of one product for which the (sample, head) pairs
    /// are split over the BLAS threads: OpenBLAS runs a product of at most `4 · 65,536`
    /// multiply-adds (its `GEMM_MULTITHREAD_THRESHOLD` of 4) on the calling thread alone, so a
    /// ViT's 50 × 50 × 64 products one after another use one core of two. Larger products
    /// run one pair at a time on all the BLAS threads.
    static let largestSplitProduct = 4 * 65_536

    /// The parts ``forEachPair(samples:heads:queryCount:keyCount:headDimension:_:)`` uses
    /// (scratch buffers per part).
    static func partCount(samples: Int, heads: Int, queryCount: Int, keyCount: Int, headDimension: Int) -> Int {
        queryCount * keyCount * headDimension <= largestSplitProduct ? parallelPartCount(samples * heads) : 1
    }

    /// Calls `body(part, b, h)` for every (sample, head) pair, split into contiguous parts over
    /// the BLAS threads when the products are small (see ``largestSplitProduct``). Each pair
    /// writes only its own outputs, so the result does not depend on the split.
    @inline(__always)
    static func forEachPair(samples: Int, heads: Int, queryCount: Int, keyCount: Int, headDimension: Int,
                            _ body: (_ part: Int, _ sample: Int, _ head: Int) -> Void) {
        let pairs = samples * heads
        let parts = partCount(samples: samples, heads: heads, queryCount: queryCount, keyCount: keyCount,
                              headDimension: headDimension)
        if parts == 1 {
            for pair in 0..<pairs { body(0, pair / heads, pair % heads) }
            return
        }
        parallelParts(pairs) { part, range in
            for pair in range { body(part, pair / heads, pair % heads) }
        }
    }

    /// `P = softmax(q kᵀ / √D [+ causal mask])` into `probabilities` `(Tq, Tk)` (kept for the
    /// backward pass) and `O = P v` into `output` `(Tq, D)` of row stride `outputStride`.
    /// Causal: query `t` attends to keys `0…t`.
    @inline(__always)
    static func forward<Scalar: LayerScalar>(
        queries q: UnsafePointer<Scalar>, keys k: UnsafePointer<Scalar>, values v: UnsafePointer<Scalar>,
        strides: (queries: Int, keys: Int, values: Int), probabilities p: UnsafeMutablePointer<Scalar>,
        output: UnsafeMutablePointer<Scalar>, outputStride: Int, queryCount Tq: Int, keyCount Tk: Int, headDimension D: Int,
        causal: Bool
    ) {
        // S = q kᵀ / √D                                       (Tq, Tk) = (Tq, D) (Tk, D)ᵀ
        Scalar.gemm(transposeA: false, transposeB: true, m: Tq, n: Tk, k: D, alpha: 1 / Scalar(D).squareRoot(),
                    a: q, lda: strides.queries, b: k, ldb: strides.keys, beta: 0, c: p, ldc: Tk)
        // P = softmax(S) row by row, the row maximum subtracted; masked entries exact zeros
        for t in 0..<Tq {
            let row = p + t * Tk
            let limit = causal ? min(t + 1, Tk) : Tk
            var maximum = row[0]
            for j in 1..<max(limit, 1) { maximum = max(maximum, row[j]) }
            var sum: Scalar = 0
            for j in 0..<limit { let e = Scalar.activationExp(row[j] - maximum); row[j] = e; sum += e }
            let inverse = 1 / sum
            for j in 0..<limit { row[j] *= inverse }
            for j in limit..<Tk { row[j] = 0 }
        }
        // O = P v                                              (Tq, D) = (Tq, Tk) (Tk, D)
        Scalar.gemm(transposeA: false, transposeB: false, m: Tq, n: D, k: Tk, alpha: 1, a: UnsafePointer(p), lda: Tk,
                    b: v, ldb: strides.values, beta: 0, c: output, ldc: outputStride)
    }

    /// The gradients of `q`, `k`, `v` (overwritten) from `dO` `(Tq, D)` and the forward's `P`;
    /// `scoreGradient` is `(Tq, Tk)` scratch.
    @inline(__always)
    static func backward<Scalar: LayerScalar>(
        queries q: UnsafePointer<Scalar>, keys k: UnsafePointer<Scalar>, values v: UnsafePointer<Scalar>,
        strides: (queries: Int, keys: Int, values: Int), probabilities p: UnsafePointer<Scalar>,
        outputGradient dO: UnsafePointer<Scalar>, outputStride: Int, scoreGradient ds: UnsafeMutablePointer<Scalar>,
        queryGradient dq: UnsafeMutablePointer<Scalar>, keyGradient dk: UnsafeMutablePointer<Scalar>,
        valueGradient dv: UnsafeMutablePointer<Scalar>, gradientStrides: (queries: Int, keys: Int, values: Int),
        queryCount Tq: Int, keyCount Tk: Int, headDimension D: Int
    ) {
        let scale = 1 / Scalar(D).squareRoot()
        // dP = dO vᵀ                                           (Tq, Tk) = (Tq, D) (Tk, D)ᵀ
        Scalar.gemm(transposeA: false, transposeB: true, m: Tq, n: Tk, k: D, alpha: 1,
                    a: dO, lda: outputStride, b: v, ldb: strides.values, beta: 0, c: ds, ldc: Tk)
        // dv = Pᵀ dO                                           (Tk, D) = (Tq, Tk)ᵀ (Tq, D)
        Scalar.gemm(transposeA: true, transposeB: false, m: Tk, n: D, k: Tq, alpha: 1,
                    a: p, lda: Tk, b: dO, ldb: outputStride, beta: 0, c: dv, ldc: gradientStrides.values)
        // dS = P ⊙ (dP − Σ_j dP P)                             (Tq, Tk); masked entries have P = 0
        for t in 0..<Tq {
            let pRow = p + t * Tk, dRow = ds + t * Tk
            var dot: Scalar = 0
            for j in 0..<Tk { dot += pRow[j] * dRow[j] }
            for j in 0..<Tk { dRow[j] = pRow[j] * (dRow[j] - dot) }
        }
        // dq = dS k / √D                                       (Tq, D) = (Tq, Tk) (Tk, D)
        Scalar.gemm(transposeA: false, transposeB: false, m: Tq, n: D, k: Tk, alpha: scale,
                    a: UnsafePointer(ds), lda: Tk, b: k, ldb: strides.keys, beta: 0, c: dq, ldc: gradientStrides.queries)
        // dk = dSᵀ q / √D                                      (Tk, D) = (Tq, Tk)ᵀ (Tq, D)
        Scalar.gemm(transposeA: true, transposeB: false, m: Tk, n: D, k: Tq, alpha: scale,
                    a: UnsafePointer(ds), lda: Tk, b: q, ldb: strides.queries, beta: 0, c: dk, ldc: gradientStrides.keys)
    }
}
