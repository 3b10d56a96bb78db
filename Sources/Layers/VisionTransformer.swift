import Tensor

/// A vision transformer encoder (Dosovitskiy et al. 2021; timm's `VisionTransformer` without
/// its head): `(B, C, H, W) → (B, width)`, the ``NamedSequential`` of
///
/// ```
/// patch_embed: (B, C, H, W) → (B, N, E)          N = (H/P)·(W/P)
/// [cls_token;] + pos_embed → (B, N (+1), E)
/// blocks.0 … blocks.{depth−1}: pre-norm TransformerBlock
/// norm: LayerNorm(E, ε = 1e-6)
/// pooling: the class token (cls) or the mean of the patch tokens (mean) → (B, E)
/// ```
///
/// Parameter names follow timm's state dict: `patch_embed.proj.weight` `(E, C, P, P)`,
/// `patch_embed.proj.bias`, `cls_token` `(1, 1, E)` (cls pooling only), `pos_embed`
/// `(1, N (+1), E)`, `blocks.i.norm1.weight`, `blocks.i.attn.qkv.weight`, …, `norm.weight`,
/// `norm.bias`. Unlike timm's `global_pool='avg'`, mean pooling follows the final `norm`
/// (timm moves it to an `fc_norm` after pooling); there is no class token then.
public final class VisionTransformer<Scalar: LayerScalar>: NamedSequentialLayer {
    public let description: ViTDescription
    public let sequence: NamedSequential<Scalar>

    public init(_ description: ViTDescription) {
        self.description = description
        let d = description
        let patches = (d.imageSize / d.patchSize) * (d.imageSize / d.patchSize)
        var children: [(String, any Layer<Scalar>)] = [
            ("patch_embed", PatchEmbedding<Scalar>(inChannels: d.inputChannels, patchSize: d.patchSize, embedDimension: d.width)),
            ("", PositionEmbedding<Scalar>(tokens: patches, embedDimension: d.width, classToken: d.pooling == .cls)),
        ]
        for i in 0..<d.depth {
            children.append(("blocks.\(i)", TransformerBlock<Scalar>(features: d.width, heads: d.heads, mlpRatio: d.mlpRatio,
                                                                     qkvBias: d.qkvBias, dropout: d.dropout)))
        }
        children.append(("norm", LayerNorm<Scalar>(features: d.width, epsilon: 1e-6)))
        children.append(("pool", TokenPooling<Scalar>(d.pooling, prefixTokens: d.pooling == .cls ? 1 : 0)))
        sequence = NamedSequential(children)
    }
}

/// A conditioned transformer over token sequences — the predictor of a world model: tokens
/// `(B, T, C)` (state embeddings) and per-token conditions `(B, T, A)` (action embeddings) give
/// `(B, T, O)` (the predicted next embeddings):
///
/// ```
/// x = tokens + pos_embed[:T]                             (B, T, C)
/// x = blocks.i(x, conditions), i = 0 … depth − 1        AdaLN-zero blocks, causal attention
/// y = head(norm(x))                                      (B, T, O)
/// ```
///
/// With causal attention (the default), the output at `t` depends on tokens and conditions at
/// `≤ t` only. Parameters: `pos_embed` `(1, maxTokens, C)`, `blocks.i.attn.*`, `blocks.i.mlp.*`,
/// `blocks.i.adaLN_modulation.1.*` (zero at initialisation: every block starts as the
/// identity), `norm.weight`, `norm.bias`, `head.weight` `(O, C)`, `head.bias`.
public final class ConditionedTransformer<Scalar: LayerScalar>: ConditionedLayer {
    public let features: Int
    public let conditionFeatures: Int
    public let outputFeatures: Int
    public let maxTokens: Int
    public let position: PositionEmbedding<Scalar>
    public let blocks: [AdaLNZeroBlock<Scalar>]
    public let norm: LayerNorm<Scalar>
    public let head: Linear<Scalar>

    private final class Cache {
        var conditionGradient: Tensor<Scalar>?   // (B, T, A) Σ over blocks
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameters:
    ///   - features: the token width `C`.
    ///   - conditionFeatures: the condition width `A`.
    ///   - outputFeatures: the output width `O` (default `C`).
    ///   - maxTokens: the longest sequence `T` (the rows of `pos_embed`).
    ///   - depth: the number of blocks (at least 1).
    ///   - heads: attention heads (`C / heads` each).
    ///   - mlpRatio: the MLPs' hidden width over `C` (default 4).
    ///   - causal: causal attention (default true).
    public init(features: Int, conditionFeatures: Int, outputFeatures: Int? = nil, maxTokens: Int, depth: Int, heads: Int,
                mlpRatio: Double = 4, causal: Bool = true) {
        precondition(depth >= 1, "ConditionedTransformer: depth \(depth), needs at least one block")
        self.features = features
        self.conditionFeatures = conditionFeatures
        self.outputFeatures = outputFeatures ?? features
        self.maxTokens = maxTokens
        position = PositionEmbedding(tokens: maxTokens, embedDimension: features, classToken: false)
        blocks = (0..<depth).map { _ in
            AdaLNZeroBlock(features: features, conditionFeatures: conditionFeatures, heads: heads, mlpRatio: mlpRatio,
                           causal: causal)
        }
        norm = LayerNorm(features: features, epsilon: 1e-6)
        head = Linear(inFeatures: features, outFeatures: outputFeatures ?? features)
    }

    public func parameterSpecs() -> [ParameterSpec] {
        position.parameterSpecs()
            + blocks.enumerated().flatMap { i, block in block.parameterSpecs().map { $0.prefixed("blocks.\(i)") } }
            + norm.parameterSpecs().map { $0.prefixed("norm") } + head.parameterSpecs().map { $0.prefixed("head") }
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        position.bind(parameters: parameters, buffers: buffers, prefix: prefix)
        for (i, block) in blocks.enumerated() {
            block.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "blocks.\(i)"))
        }
        norm.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "norm"))
        head.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "head"))
    }

    /// `(B, T, C)` tokens, `(B, T, A)` conditions `→ (B, T, O)`, `T ≤ maxTokens`.
    public func forward(_ input: Tensor<Scalar>, condition: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        var x = try position.forward(input, context: context)
        for block in blocks { x = try block.forward(x, condition: condition, context: context) }
        return try head.forward(norm.forward(x, context: context), context: context)
    }

    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws
        -> (input: Tensor<Scalar>, condition: Tensor<Scalar>) {
        let inner = context.needingInputGradient(true)
        var gradient = try norm.backward(head.backward(outputGradient, context: inner), context: inner)
        let cache = caches.cache(context.slot, make: Cache.init)
        var conditionGradient: Tensor<Scalar>?
        for block in blocks.reversed() {
            let (input, condition) = try block.backward(gradient, context: inner)
            gradient = input
            // dc = Σ_blocks dcᵢ
            if let conditionGradient { conditionGradient.add(condition); continue }
            let sum = reuse(&cache.conditionGradient, shape: condition.shape)
            sum.copy(from: condition)
            conditionGradient = sum
        }
        let inputGradient = try position.backward(gradient, context: context)
        return (inputGradient, conditionGradient!)   // depth ≥ 1
    }
}
