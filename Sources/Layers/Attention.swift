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
    private var scoreGradient: Tensor<Scalar>?   // (T, T) scratch of the backward pass, shared by the slots

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

    public func bind(parameters: ParameterStore<Scalar>, buffers: ParameterStore<Scalar>, prefix: String) {
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
        let scale = 1 / Scalar(D).squareRoot()
        let (rowStride, outputStride) = (3 * H * D, H * D)
        fused.withUnsafeBufferPointer { qkvBuffer in
            probabilities.withUnsafeMutableBufferPointer { pBuffer in
                attended.withUnsafeMutableBufferPointer { oBuffer in
                    for b in 0..<B {
                        for h in 0..<H {
                            let q = qkvBuffer.baseAddress! + b * T * rowStride + h * D     // (T, D), stride 3HD
                            let k = q + H * D, v = q + 2 * H * D
                            let p = pBuffer.baseAddress! + (b * H + h) * T * T          // (T, T)
                            // S = q kᵀ / √D                       (T, T) = (T, D) (T, D)ᵀ
                            Scalar.gemm(transposeA: false, transposeB: true, m: T, n: T, k: D, alpha: scale,
                                        a: q, lda: rowStride, b: k, ldb: rowStride, beta: 0, c: p, ldc: T)
                            softmaxRows(p, count: T)
                            // O = P v                             (T, D) = (T, T) (T, D)
                            Scalar.gemm(transposeA: false, transposeB: false, m: T, n: D, k: T, alpha: 1,
                                        a: UnsafePointer(p), lda: T, b: v, ldb: rowStride, beta: 0,
                                        c: oBuffer.baseAddress! + b * T * outputStride + h * D, ldc: outputStride)
                        }
                    }
                }
            }
        }
        return try proj.forward(attended, context: context)                               // (B, T, C)
    }

    /// Row-wise stable softmax of a `T × T` score matrix in place; with `causal`, row `t` keeps
    /// columns `0…t` and the rest become exact zeros.
    @inline(__always)
    private func softmaxRows(_ p: UnsafeMutablePointer<Scalar>, count T: Int) {
        for t in 0..<T {
            let row = p + t * T
            let limit = causal ? t + 1 : T
            var maximum = row[0]
            for j in 1..<max(limit, 1) { maximum = max(maximum, row[j]) }
            var sum: Scalar = 0
            for j in 0..<limit { let e = Scalar.exp(row[j] - maximum); row[j] = e; sum += e }
            let inverse = 1 / sum
            for j in 0..<limit { row[j] *= inverse }
            for j in limit..<T { row[j] = 0 }
        }
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
        let dS = reuse(&scoreGradient, shape: [T, T])
        let scale = 1 / Scalar(D).squareRoot()
        let (rowStride, outputStride) = (3 * H * D, H * D)
        fused.withUnsafeBufferPointer { qkvBuffer in
            probabilities.withUnsafeBufferPointer { pBuffer in
                attendedGradient.withUnsafeBufferPointer { dOBuffer in
                    qkvGradient.withUnsafeMutableBufferPointer { dQKVBuffer in
                        dS.withUnsafeMutableBufferPointer { dSBuffer in
                            let ds = dSBuffer.baseAddress!
                            for b in 0..<B {
                                for h in 0..<H {
                                    let offset = b * T * rowStride + h * D
                                    let q = qkvBuffer.baseAddress! + offset, k = q + H * D, v = q + 2 * H * D
                                    let dq = dQKVBuffer.baseAddress! + offset, dk = dq + H * D, dv = dq + 2 * H * D
                                    let p = pBuffer.baseAddress! + (b * H + h) * T * T
                                    let dO = dOBuffer.baseAddress! + b * T * outputStride + h * D
                                    // dP = dO vᵀ                  (T, T) = (T, D) (T, D)ᵀ
                                    Scalar.gemm(transposeA: false, transposeB: true, m: T, n: T, k: D, alpha: 1,
                                                a: dO, lda: outputStride, b: v, ldb: rowStride, beta: 0, c: ds, ldc: T)
                                    // dv = Pᵀ dO                  (T, D) = (T, T)ᵀ (T, D)
                                    Scalar.gemm(transposeA: true, transposeB: false, m: T, n: D, k: T, alpha: 1,
                                                a: p, lda: T, b: dO, ldb: outputStride, beta: 0, c: dv, ldc: rowStride)
                                    // dS = P ⊙ (dP − Σ_j dP P)    (T, T); masked entries have P = 0
                                    for t in 0..<T {
                                        let pRow = p + t * T, dRow = ds + t * T
                                        var dot: Scalar = 0
                                        for j in 0..<T { dot += pRow[j] * dRow[j] }
                                        for j in 0..<T { dRow[j] = pRow[j] * (dRow[j] - dot) }
                                    }
                                    // dq = dS k / √D              (T, D) = (T, T) (T, D)
                                    Scalar.gemm(transposeA: false, transposeB: false, m: T, n: D, k: T, alpha: scale,
                                                a: UnsafePointer(ds), lda: T, b: k, ldb: rowStride, beta: 0, c: dq, ldc: rowStride)
                                    // dk = dSᵀ q / √D             (T, D) = (T, T)ᵀ (T, D)
                                    Scalar.gemm(transposeA: true, transposeB: false, m: T, n: D, k: T, alpha: scale,
                                                a: UnsafePointer(ds), lda: T, b: q, ldb: rowStride, beta: 0, c: dk, ldc: rowStride)
                                }
                            }
                        }
                    }
                }
            }
        }
        return try qkv.backward(qkvGradient, context: context)                            // (B, T, C)
    }
}
