import Tensor

// MARK: - Layers with a second input

/// A layer of two inputs: tokens `x` and a condition (AdaLN's conditioning vector, the keys
/// and values of cross-attention), `y = f(x, condition)` — mlx-swift's split between
/// `UnaryLayer` and `MultiHeadAttention(queries, keys, values)`. Unary layers stay ``Layer``.
///
/// The life cycle and conventions are those of ``Layer`` (parameters named relative to the
/// layer, one cache per ``LayerContext/slot``, returned tensors are views of the layer's own
/// buffers, parameter gradients accumulate), with a backward pass that returns the gradients
/// with respect to both inputs.
public protocol ConditionedLayer<Scalar>: AnyObject {
    associatedtype Scalar: LayerScalar

    /// The trainable parameters, named relative to the layer.
    func parameterSpecs() -> [ParameterSpec]
    /// The non-trainable state (empty for most layers).
    func bufferSpecs() -> [ParameterSpec]
    /// Takes the views of this layer's parameters, gradients and buffers, named `prefix.name`.
    func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String)
    /// The output for `input` under `condition`; keeps references to both for the backward pass.
    func forward(_ input: Tensor<Scalar>, condition: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar>
    /// The gradients with respect to the input and the condition of the last forward on the
    /// slot; accumulates the parameter gradients.
    func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws
        -> (input: Tensor<Scalar>, condition: Tensor<Scalar>)
}

extension ConditionedLayer {
    public func bufferSpecs() -> [ParameterSpec] { [] }
}

// MARK: - Feed-forward

/// The MLP of a transformer block (timm's `Mlp`): `fc2(GELU(fc1(x)))`, `(…, C) → (…, C)` through
/// a hidden width. Parameters: `fc1.weight` `(hidden, C)`, `fc1.bias`, `fc2.weight` `(C, hidden)`,
/// `fc2.bias`.
public final class FeedForward<Scalar: LayerScalar>: NamedSequentialLayer {
    public let features: Int
    public let hiddenFeatures: Int
    public let sequence: NamedSequential<Scalar>

    public init(features: Int, hiddenFeatures: Int) {
        self.features = features
        self.hiddenFeatures = hiddenFeatures
        sequence = NamedSequential([("fc1", Linear<Scalar>(inFeatures: features, outFeatures: hiddenFeatures)),
                                    ("act", GELU<Scalar>()),
                                    ("fc2", Linear<Scalar>(inFeatures: hiddenFeatures, outFeatures: features))])
    }

    /// The MLP of `round(features · mlpRatio)` (at least 1) hidden features.
    public convenience init(features: Int, mlpRatio: Double) {
        self.init(features: features, hiddenFeatures: max(1, Int((Double(features) * mlpRatio).rounded())))
    }
}

// MARK: - Pre-norm block

/// A pre-norm transformer block (timm's ViT `Block`):
///
/// ```
/// h = x + drop(attn(norm1(x)))       (B, T, C)
/// y = h + drop(mlp(norm2(h)))        (B, T, C)
/// ```
///
/// Parameters: `norm1.{weight,bias}`, `attn.qkv.{weight,bias}`, `attn.proj.{weight,bias}`,
/// `norm2.{weight,bias}`, `mlp.fc1.{weight,bias}`, `mlp.fc2.{weight,bias}`. The layer norms use
/// ε = 1e-6 (timm's ViT).
public final class TransformerBlock<Scalar: LayerScalar>: Layer {
    public let features: Int
    public let norm1: LayerNorm<Scalar>
    public let attn: MultiHeadAttention<Scalar>
    public let norm2: LayerNorm<Scalar>
    public let mlp: FeedForward<Scalar>
    private let attentionDropout: Dropout<Scalar>
    private let mlpDropout: Dropout<Scalar>
    private let sublayers: NamedSequential<Scalar>   // for names only

    private final class Cache {
        var hidden: Tensor<Scalar>?            // (B, T, C) h
        var output: Tensor<Scalar>?            // (B, T, C) y
        var hiddenGradient: Tensor<Scalar>?    // (B, T, C) dh
        var inputGradient: Tensor<Scalar>?     // (B, T, C) dx
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameters:
    ///   - features: the token width `C`.
    ///   - heads: attention heads (`C / heads` each).
    ///   - mlpRatio: the MLP's hidden width over `C` (default 4).
    ///   - qkvBias: a bias in the fused QKV projection (default true).
    ///   - causal: causal attention (default false).
    ///   - dropout: the probability of the dropout after attention and after the MLP (default 0, off).
    public init(features: Int, heads: Int, mlpRatio: Double = 4, qkvBias: Bool = true, causal: Bool = false,
                dropout: Double = 0) {
        self.features = features
        norm1 = LayerNorm(features: features, epsilon: 1e-6)
        attn = MultiHeadAttention(features: features, heads: heads, qkvBias: qkvBias, causal: causal)
        norm2 = LayerNorm(features: features, epsilon: 1e-6)
        mlp = FeedForward(features: features, mlpRatio: mlpRatio)
        attentionDropout = Dropout(probability: dropout)
        mlpDropout = Dropout(probability: dropout)
        sublayers = NamedSequential([("norm1", norm1), ("attn", attn), ("attn_drop", attentionDropout),
                                     ("norm2", norm2), ("mlp", mlp), ("mlp_drop", mlpDropout)])
    }

    public func parameterSpecs() -> [ParameterSpec] { sublayers.parameterSpecs() }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        sublayers.bind(parameters: parameters, buffers: buffers, prefix: prefix)
    }

    /// `(B, T, C) → (B, T, C)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank == 3, input.shape[2] == features else {
            throw LayerError.shapeMismatch(layer: "TransformerBlock(\(features))", expected: "(B, T, \(features))", got: input.shape)
        }
        let cache = caches.cache(context.slot, make: Cache.init)
        let hidden = reuse(&cache.hidden, shape: input.shape)
        let output = reuse(&cache.output, shape: input.shape)
        // h = x + drop(attn(norm1(x)))
        let attended = try attentionDropout.forward(attn.forward(norm1.forward(input, context: context), context: context),
                                                    context: context)
        sum(input, attended, into: hidden)
        // y = h + drop(mlp(norm2(h)))
        let transformed = try mlpDropout.forward(mlp.forward(norm2.forward(hidden, context: context), context: context),
                                                 context: context)
        sum(hidden, transformed, into: output)
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count
        else { throw LayerError.noForward(layer: "TransformerBlock(\(features))", slot: context.slot) }
        let inner = context.needingInputGradient(true)
        let hiddenGradient = reuse(&cache.hiddenGradient, shape: output.shape)
        let inputGradient = reuse(&cache.inputGradient, shape: output.shape)
        // dh = dy + norm2ᵀ mlpᵀ dropᵀ dy
        let throughMLP = try norm2.backward(mlp.backward(mlpDropout.backward(outputGradient, context: inner), context: inner),
                                            context: inner)
        sum(outputGradient, throughMLP, into: hiddenGradient)
        // dx = dh + norm1ᵀ attnᵀ dropᵀ dh
        let throughAttention = try norm1.backward(
            attn.backward(attentionDropout.backward(hiddenGradient, context: inner), context: inner), context: inner)
        sum(hiddenGradient, throughAttention, into: inputGradient)
        return inputGradient
    }
}

// MARK: - AdaLN-zero block

/// A transformer block conditioned by adaptive layer norm with zero-initialised gates (DiT's
/// `DiTBlock`): a condition `c` (one vector per token) gives, through `SiLU` and a linear map,
/// a shift, a scale and a gate for each sub-layer:
///
/// ```
/// shift₁, scale₁, gate₁, shift₂, scale₂, gate₂ = split(Linear(SiLU(c)))     (B, T, 6·C)
/// h = x + gate₁ ⊙ attn(norm1(x) ⊙ (1 + scale₁) + shift₁)                     (B, T, C)
/// y = h + gate₂ ⊙ mlp(norm2(h) ⊙ (1 + scale₂) + shift₂)                      (B, T, C)
/// ```
///
/// The modulation's weight and bias start at zero, so every gate is 0 and the block starts as
/// the identity. The layer norms have no affine parameters (ε = 1e-6), as in DiT.
///
/// Parameters: `attn.qkv.*`, `attn.proj.*`, `mlp.fc1.*`, `mlp.fc2.*`,
/// `adaLN_modulation.1.weight` `(6·C, A)`, `adaLN_modulation.1.bias` `(6·C)` (index 1 of DiT's
/// `Sequential(SiLU, Linear)`).
public final class AdaLNZeroBlock<Scalar: LayerScalar>: ConditionedLayer {
    public let features: Int
    public let conditionFeatures: Int
    public let norm1: LayerNorm<Scalar>
    public let attn: MultiHeadAttention<Scalar>
    public let norm2: LayerNorm<Scalar>
    public let mlp: FeedForward<Scalar>
    private let modulation: NamedSequential<Scalar>

    private final class Cache {
        var modulation: Tensor<Scalar>?         // (B, T, 6C), the modulation Linear's buffer
        var normalized1: Tensor<Scalar>?        // (B, T, C) norm1(x), norm1's buffer
        var normalized2: Tensor<Scalar>?        // (B, T, C) norm2(h), norm2's buffer
        var attended: Tensor<Scalar>?           // (B, T, C) attn(·), attn's buffer
        var transformed: Tensor<Scalar>?        // (B, T, C) mlp(·), mlp's buffer
        var modulated1: Tensor<Scalar>?         // (B, T, C) attention input
        var modulated2: Tensor<Scalar>?         // (B, T, C) MLP input
        var hidden: Tensor<Scalar>?             // (B, T, C) h
        var output: Tensor<Scalar>?             // (B, T, C) y
        var branchGradient: Tensor<Scalar>?     // (B, T, C) gradient into a branch, then into a norm
        var hiddenGradient: Tensor<Scalar>?     // (B, T, C) dh
        var inputGradient: Tensor<Scalar>?      // (B, T, C) dx
        var modulationGradient: Tensor<Scalar>? // (B, T, 6C)
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameters:
    ///   - features: the token width `C`.
    ///   - conditionFeatures: the condition width `A`.
    ///   - heads: attention heads (`C / heads` each).
    ///   - mlpRatio: the MLP's hidden width over `C` (default 4).
    ///   - causal: causal attention (default false).
    public init(features: Int, conditionFeatures: Int, heads: Int, mlpRatio: Double = 4, qkvBias: Bool = true,
                causal: Bool = false) {
        precondition(conditionFeatures > 0, "AdaLNZeroBlock: condition width \(conditionFeatures)")
        self.features = features
        self.conditionFeatures = conditionFeatures
        norm1 = LayerNorm(features: features, elementwiseAffine: false, epsilon: 1e-6)
        attn = MultiHeadAttention(features: features, heads: heads, qkvBias: qkvBias, causal: causal)
        norm2 = LayerNorm(features: features, elementwiseAffine: false, epsilon: 1e-6)
        mlp = FeedForward(features: features, mlpRatio: mlpRatio)
        modulation = NamedSequential([("0", SiLU<Scalar>()),
                                  ("1", Linear<Scalar>(inFeatures: conditionFeatures, outFeatures: 6 * features,
                                                       initializer: .zeros))])
    }

    private var name: String { "AdaLNZeroBlock(\(features), condition \(conditionFeatures))" }

    public func parameterSpecs() -> [ParameterSpec] {
        NamedSequential([("attn", attn), ("mlp", mlp)]).parameterSpecs() + modulation.parameterSpecs().map { $0.prefixed("adaLN_modulation") }
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        NamedSequential([("norm1", norm1), ("attn", attn), ("norm2", norm2), ("mlp", mlp)])
            .bind(parameters: parameters, buffers: buffers, prefix: prefix)
        modulation.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "adaLN_modulation"))
    }

    /// `(B, T, C)` tokens and `(B, T, A)` conditions (any leading shape with the tokens' rows)
    /// `→ (B, T, C)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, condition: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank == 3, input.shape[2] == features else {
            throw LayerError.shapeMismatch(layer: name, expected: "input (B, T, \(features))", got: input.shape)
        }
        guard condition.rank == 3, condition.shape[2] == conditionFeatures, condition.shape[0] == input.shape[0],
              condition.shape[1] == input.shape[1] else {
            throw LayerError.shapeMismatch(layer: name, expected: "condition (\(input.shape[0]), \(input.shape[1]), \(conditionFeatures))",
                                           got: condition.shape)
        }
        let cache = caches.cache(context.slot, make: Cache.init)
        let modulation = try self.modulation.forward(condition, context: context)                 // (B, T, 6C)
        let modulated1 = reuse(&cache.modulated1, shape: input.shape)
        let modulated2 = reuse(&cache.modulated2, shape: input.shape)
        let hidden = reuse(&cache.hidden, shape: input.shape)
        let output = reuse(&cache.output, shape: input.shape)
        cache.modulation = modulation
        // h = x + gate₁ ⊙ attn(norm1(x) ⊙ (1 + scale₁) + shift₁)
        let (normalized1, attended) = try branchForward(input, norm: norm1, sublayer: attn, modulation: modulation, chunk: 0,
                                                        modulated: modulated1, into: hidden, context: context)
        // y = h + gate₂ ⊙ mlp(norm2(h) ⊙ (1 + scale₂) + shift₂)
        let (normalized2, transformed) = try branchForward(hidden, norm: norm2, sublayer: mlp, modulation: modulation, chunk: 3,
                                                           modulated: modulated2, into: output, context: context)
        (cache.normalized1, cache.normalized2, cache.attended, cache.transformed) = (normalized1, normalized2, attended, transformed)
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws
        -> (input: Tensor<Scalar>, condition: Tensor<Scalar>) {
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count,
              let modulation = cache.modulation, let normalized1 = cache.normalized1, let normalized2 = cache.normalized2,
              let attended = cache.attended, let transformed = cache.transformed
        else { throw LayerError.noForward(layer: name, slot: context.slot) }
        let inner = context.needingInputGradient(true)
        let branchGradient = reuse(&cache.branchGradient, shape: output.shape)
        let hiddenGradient = reuse(&cache.hiddenGradient, shape: output.shape)
        let inputGradient = reuse(&cache.inputGradient, shape: output.shape)
        let modulationGradient = reuse(&cache.modulationGradient, shape: modulation.shape)
        // dh = dy + (the MLP branch)ᵀ dy
        sum(outputGradient, try branchBackward(outputGradient, norm: norm2, normalized: normalized2, sublayer: mlp,
                                               output: transformed, modulation: modulation, chunk: 3, branch: branchGradient,
                                               modulationGradient: modulationGradient, context: inner),
            into: hiddenGradient)
        // dx = dh + (the attention branch)ᵀ dh
        sum(hiddenGradient, try branchBackward(hiddenGradient, norm: norm1, normalized: normalized1, sublayer: attn,
                                               output: attended, modulation: modulation, chunk: 0, branch: branchGradient,
                                               modulationGradient: modulationGradient, context: inner),
            into: inputGradient)
        // dc = SiLUᵀ Linearᵀ dm
        let conditionGradient = try self.modulation.backward(modulationGradient, context: inner)
        return (inputGradient, conditionGradient)
    }

    // MARK: Branches

    /// One gated branch, `y = x + gate ⊙ sublayer(norm(x) ⊙ (1 + scale) + shift)` with shift,
    /// scale, gate the chunks `chunk`, `chunk + 1`, `chunk + 2` of the modulation; returns
    /// `norm(x)` and `sublayer(·)` for the backward pass.
    private func branchForward(_ x: Tensor<Scalar>, norm: LayerNorm<Scalar>, sublayer: any Layer<Scalar>,
                               modulation: Tensor<Scalar>, chunk: Int, modulated: Tensor<Scalar>, into output: Tensor<Scalar>,
                               context: LayerContext) throws -> (normalized: Tensor<Scalar>, branch: Tensor<Scalar>) {
        let rows = x.count / features
        let normalized = try norm.forward(x, context: context)
        Self.modulate(normalized, modulation, chunk: chunk, into: modulated, rows: rows, features: features)
        let branch = try sublayer.forward(modulated, context: context)
        Self.gatedResidual(x, branch, modulation, chunk: chunk + 2, into: output, rows: rows, features: features)
        return (normalized, branch)
    }

    /// The backward of ``branchForward`` without its identity path: writes the branch's shift,
    /// scale and gate gradients into `modulationGradient` and returns `normᵀ(…)`, the branch's
    /// share of `dx`. `branch` is scratch.
    private func branchBackward(_ dy: Tensor<Scalar>, norm: LayerNorm<Scalar>, normalized: Tensor<Scalar>,
                                sublayer: any Layer<Scalar>, output: Tensor<Scalar>, modulation: Tensor<Scalar>, chunk: Int,
                                branch: Tensor<Scalar>, modulationGradient: Tensor<Scalar>,
                                context: LayerContext) throws -> Tensor<Scalar> {
        let rows = dy.count / features
        // dgate = dy ⊙ f, df = dy ⊙ gate
        Self.gateBackward(dy, output, modulation, chunk: chunk + 2, branch: branch, modulationGradient: modulationGradient,
                          rows: rows, features: features)
        let modulatedGradient = try sublayer.backward(branch, context: context)
        // dshift = du, dscale = du ⊙ n, dn = du ⊙ (1 + scale)
        Self.modulateBackward(modulatedGradient, normalized, modulation, chunk: chunk, normGradient: branch,
                              modulationGradient: modulationGradient, rows: rows, features: features)
        return try norm.backward(branch, context: context)
    }

    // MARK: Modulation kernels (rows × C tokens, rows × 6C modulation)

    /// `u = n ⊙ (1 + scale) + shift` with shift, scale the chunks `chunk`, `chunk + 1` of `m`.
    private static func modulate(_ normalized: Tensor<Scalar>, _ m: Tensor<Scalar>, chunk: Int, into modulated: Tensor<Scalar>,
                                 rows: Int, features C: Int) {
        normalized.withUnsafeBufferPointer { n in
            m.withUnsafeBufferPointer { m in
                modulated.withUnsafeMutableBufferPointer { u in
                    for r in 0..<rows {
                        let shift = m.baseAddress! + r * 6 * C + chunk * C, scale = shift + C
                        for j in 0..<C { u[r * C + j] = n[r * C + j] * (1 + scale[j]) + shift[j] }
                    }
                }
            }
        }
    }

    /// `y = x + gate ⊙ f` with gate the chunk `chunk` of `m`.
    private static func gatedResidual(_ x: Tensor<Scalar>, _ f: Tensor<Scalar>, _ m: Tensor<Scalar>, chunk: Int,
                                      into output: Tensor<Scalar>, rows: Int, features C: Int) {
        x.withUnsafeBufferPointer { x in
            f.withUnsafeBufferPointer { f in
                m.withUnsafeBufferPointer { m in
                    output.withUnsafeMutableBufferPointer { y in
                        for r in 0..<rows {
                            let gate = m.baseAddress! + r * 6 * C + chunk * C
                            for j in 0..<C { y[r * C + j] = x[r * C + j] + gate[j] * f[r * C + j] }
                        }
                    }
                }
            }
        }
    }

    /// The backward of `y = x + gate ⊙ f` into the branch: `df = dy ⊙ gate`, `dgate = dy ⊙ f`.
    private static func gateBackward(_ dy: Tensor<Scalar>, _ f: Tensor<Scalar>, _ m: Tensor<Scalar>, chunk: Int,
                                     branch: Tensor<Scalar>, modulationGradient: Tensor<Scalar>, rows: Int, features C: Int) {
        dy.withUnsafeBufferPointer { dy in
            f.withUnsafeBufferPointer { f in
                m.withUnsafeBufferPointer { m in
                    branch.withUnsafeMutableBufferPointer { df in
                        modulationGradient.withUnsafeMutableBufferPointer { dm in
                            for r in 0..<rows {
                                let gate = m.baseAddress! + r * 6 * C + chunk * C
                                let dGate = dm.baseAddress! + r * 6 * C + chunk * C
                                for j in 0..<C {
                                    df[r * C + j] = dy[r * C + j] * gate[j]
                                    dGate[j] = dy[r * C + j] * f[r * C + j]
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The backward of `u = n ⊙ (1 + scale) + shift`: `dshift = du`, `dscale = du ⊙ n`,
    /// `dn = du ⊙ (1 + scale)`.
    private static func modulateBackward(_ du: Tensor<Scalar>, _ normalized: Tensor<Scalar>, _ m: Tensor<Scalar>, chunk: Int,
                                         normGradient: Tensor<Scalar>, modulationGradient: Tensor<Scalar>,
                                         rows: Int, features C: Int) {
        du.withUnsafeBufferPointer { du in
            normalized.withUnsafeBufferPointer { n in
                m.withUnsafeBufferPointer { m in
                    normGradient.withUnsafeMutableBufferPointer { dn in
                        modulationGradient.withUnsafeMutableBufferPointer { dm in
                            for r in 0..<rows {
                                let scale = m.baseAddress! + r * 6 * C + (chunk + 1) * C
                                let dShift = dm.baseAddress! + r * 6 * C + chunk * C, dScale = dShift + C
                                for j in 0..<C {
                                    let g = du[r * C + j]
                                    dShift[j] = g
                                    dScale[j] = g * n[r * C + j]
                                    dn[r * C + j] = g * (1 + scale[j])
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
