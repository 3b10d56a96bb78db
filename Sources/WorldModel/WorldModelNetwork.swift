import Layers
import Tensor

// MARK: - Description

/// The networks of a world model as written in a config's `model` key (LeWorldModel's parts):
/// an encoder of frames, a projector (MLP + batch norm) giving the embedding, an action
/// encoder (an MLP over each block of `F` actions), a predictor from the last `H` embeddings
/// and action blocks to the next embedding, and a prediction projector.
public struct WorldModelDescription: Codable, Sendable, Equatable {
    /// Frames `(C, S, S)` → representation: `convnet`, `resnet`, `vit` (or `mlp` on flat frames).
    public var encoder: NetworkDescription
    /// Representation → embedding `D` (an MLP whose hidden layers have batch norm; null: none).
    public var projector: NetworkDescription?
    /// A block of `F` actions (`F · action_dimension` values) → action embedding `A` (an MLP).
    public var actionEncoder: NetworkDescription
    /// `H` embeddings and action embeddings → the next embedding(s).
    public var predictor: PredictorDescription
    /// The predictor's output → predicted embedding `D` (an MLP with batch norm; null: none).
    public var predictionProjector: NetworkDescription?

    public init(encoder: NetworkDescription = .convnet(ConvNetDescription(inputChannels: 3, imageSize: 64, channels: [16, 32, 64, 64])),
                projector: NetworkDescription? = .mlp(widths: [64, 256, 64]),
                actionEncoder: NetworkDescription = .mlp(widths: [10, 64, 64], batchNorm: false, activation: .gelu),
                predictor: PredictorDescription = .transformer(TransformerPredictorDescription()),
                predictionProjector: NetworkDescription? = .mlp(widths: [64, 256, 64])) {
        self.encoder = encoder
        self.projector = projector
        self.actionEncoder = actionEncoder
        self.predictor = predictor
        self.predictionProjector = predictionProjector
    }

    private enum CodingKeys: String, CodingKey { case encoder, projector, actionEncoder, predictor, predictionProjector }

    /// Writes the optional parts as null when absent, so that a saved config reloads without
    /// them (a missing key takes the default part).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.encoder, forKey: .encoder)
        try c.encode(projector, forKey: .projector)
        try c.encode(actionEncoder, forKey: .actionEncoder)
        try c.encode(predictor, forKey: .predictor)
        try c.encode(predictionProjector, forKey: .predictionProjector)
    }

    /// The embedding width `D` (the projector's output, or the encoder's).
    public var embeddingWidth: Int { projector?.outputFeatures ?? encoder.outputFeatures }
    /// The action embedding width `A`.
    public var actionEmbeddingWidth: Int { actionEncoder.outputFeatures }

    /// Checks each part and that the widths chain.
    /// - Throws: ``ModelDescriptionError`` naming the key (`projector.widths[0]`, …).
    public func validate(historyFrames: Int, predictedFrames: Int, actionBlockWidth: Int) throws {
        func check(_ part: NetworkDescription, _ key: String) throws {
            do { try ModelDescription(encoder: part).validate() } catch let error as ModelDescriptionError {
                throw ModelDescriptionError(key: key + error.key.dropFirst("encoder".count), problem: error.problem)
            }
        }
        try ModelDescription(encoder: encoder, projector: projector).validate()
        try check(actionEncoder, "actionEncoder")
        guard case let .mlp(actions) = actionEncoder, actions.widths.first == actionBlockWidth else {
            throw ModelDescriptionError(key: "actionEncoder.widths[0]",
                                        problem: "the action encoder is an MLP whose first width is frameskip · action_dimension = \(actionBlockWidth)")
        }
        let d = embeddingWidth
        switch predictor {
        case let .mlp(mlp):
            if mlp.hidden.contains(where: { $0 < 1 }) {
                throw ModelDescriptionError(key: "predictor.hidden", problem: "widths must be positive; got \(mlp.hidden)")
            }
        case let .transformer(t):
            if t.depth < 1 { throw ModelDescriptionError(key: "predictor.depth", problem: "must be at least 1; got \(t.depth)") }
            if t.heads < 1 || d % t.heads != 0 {
                throw ModelDescriptionError(key: "predictor.heads", problem: "must divide the embedding width \(d); got \(t.heads)")
            }
            if !(t.mlpRatio > 0) { throw ModelDescriptionError(key: "predictor.mlpRatio", problem: "must be positive; got \(t.mlpRatio)") }
        }
        if let predictionProjector {
            try check(predictionProjector, "predictionProjector")
            guard case let .mlp(p) = predictionProjector, p.widths.first == d, p.widths.last == d else {
                throw ModelDescriptionError(key: "predictionProjector.widths",
                                            problem: "the prediction projector is an MLP from and to the embedding width \(d)")
            }
        }
    }
}

/// The predictor of a world model.
public enum PredictorDescription: Sendable, Equatable {
    /// An MLP on the concatenated `H` embeddings and action embeddings → the embedding `P`
    /// frames after the last.
    case mlp(MLPPredictorDescription)
    /// A causal transformer over the `H` embeddings, each token conditioned on its action
    /// embedding by AdaLN-zero; token `t` predicts the embedding of frame `t + P`.
    case transformer(TransformerPredictorDescription)
}

/// `{type: mlp, hidden: [512, 512], activation: gelu, batch_norm: false}`.
public struct MLPPredictorDescription: Codable, Sendable, Equatable {
    public var hidden = [512, 512]
    public var activation = Activation.gelu
    public var batchNorm = false
    public init() {}
}

/// `{type: transformer, depth: 2, heads: 4, mlp_ratio: 4}` (token width = the embedding width;
/// LeWM: depth 6, 16 heads).
public struct TransformerPredictorDescription: Codable, Sendable, Equatable {
    public var depth = 2
    public var heads = 4
    public var mlpRatio = 4.0
    public init() {}
}

extension PredictorDescription: Codable {
    private enum Keys: String, CodingKey { case type, hidden, activation, batchNorm, depth, heads, mlpRatio }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        switch try c.decode(String.self, forKey: .type) {
        case "mlp":
            var d = MLPPredictorDescription()
            if let v = try c.decodeIfPresent([Int].self, forKey: .hidden) { d.hidden = v }
            if let v = try c.decodeIfPresent(Activation.self, forKey: .activation) { d.activation = v }
            if let v = try c.decodeIfPresent(Bool.self, forKey: .batchNorm) { d.batchNorm = v }
            self = .mlp(d)
        case "transformer":
            var d = TransformerPredictorDescription()
            if let v = try c.decodeIfPresent(Int.self, forKey: .depth) { d.depth = v }
            if let v = try c.decodeIfPresent(Int.self, forKey: .heads) { d.heads = v }
            if let v = try c.decodeIfPresent(Double.self, forKey: .mlpRatio) { d.mlpRatio = v }
            self = .transformer(d)
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .type, in: c,
                                                   debugDescription: "unknown predictor type \"\(other)\"; valid: mlp, transformer")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        switch self {
        case let .mlp(d):
            try c.encode("mlp", forKey: .type)
            try c.encode(d.hidden, forKey: .hidden)
            try c.encode(d.activation, forKey: .activation)
            try c.encode(d.batchNorm, forKey: .batchNorm)
        case let .transformer(d):
            try c.encode("transformer", forKey: .type)
            try c.encode(d.depth, forKey: .depth)
            try c.encode(d.heads, forKey: .heads)
            try c.encode(d.mlpRatio, forKey: .mlpRatio)
        }
    }
}

// MARK: - Network

/// The world model's networks with all parameters in one ``ParameterStore`` (named like
/// LeWM's state dict: `encoder.…`, `projector.…`, `action_encoder.…`, `predictor.…`,
/// `pred_proj.…`) and all batch-norm statistics in another.
///
/// Shapes: `N` frames, `B` clips, `H` history frames, `Q` predicted positions (`H` for the
/// transformer, 1 for the MLP), `D` the embedding width, `A` the action embedding width.
/// Each part keeps its activations per ``LayerContext/slot``: training uses slot 0, planning
/// (evaluation mode) slot 1, so a planner never disturbs a pending backward pass.
public final class WorldModelNetwork<Scalar: LayerScalar> {
    public let description: WorldModelDescription
    public let historyFrames: Int
    public let predictedFrames: Int
    public let encoder: Sequential<Scalar>
    public let projector: Sequential<Scalar>?
    public let actionEncoder: Sequential<Scalar>
    public let transformer: ConditionedTransformer<Scalar>?
    public let mlpPredictor: Sequential<Scalar>?
    public let predictionProjector: Sequential<Scalar>?
    public let parameters: ParameterStore<Scalar>
    public let buffers: BufferStore<Scalar>

    private final class Cache {
        var predictorInput: Tensor<Scalar>?          // (B, H·(D + A)) the MLP predictor's input
        var contextGradient: Tensor<Scalar>?         // (B, H, D)
        var actionGradient: Tensor<Scalar>?          // (B, H, A)
    }
    private var caches: [Int: Cache] = [:]
    private func cache(_ slot: Int) -> Cache {
        if let cache = caches[slot] { return cache }
        let cache = Cache()
        caches[slot] = cache
        return cache
    }

    /// Builds the networks with parameters drawn from `seed` (the same on every rank).
    public init(_ description: WorldModelDescription, historyFrames: Int, predictedFrames: Int, seed: UInt64) {
        self.description = description
        self.historyFrames = historyFrames
        self.predictedFrames = predictedFrames
        let d = description.embeddingWidth, a = description.actionEmbeddingWidth
        encoder = description.encoder.makeNetwork()
        projector = description.projector?.makeNetwork()
        actionEncoder = description.actionEncoder.makeNetwork()
        switch description.predictor {
        case let .transformer(t):
            transformer = ConditionedTransformer(features: d, conditionFeatures: a, outputFeatures: d, maxTokens: historyFrames,
                                                 depth: t.depth, heads: t.heads, mlpRatio: t.mlpRatio, causal: true)
            mlpPredictor = nil
        case let .mlp(m):
            transformer = nil
            mlpPredictor = NetworkDescription.mlp(widths: [historyFrames * (d + a)] + m.hidden + [d], batchNorm: m.batchNorm,
                                                  activation: m.activation).makeNetwork()
        }
        predictionProjector = description.predictionProjector?.makeNetwork()
        var specs: [ParameterSpec] = [], bufferSpecs: [ParameterSpec] = []
        func add(_ name: String, _ layer: (any Layer<Scalar>)?) {
            guard let layer else { return }
            specs += layer.parameterSpecs().map { $0.prefixed(name) }
            bufferSpecs += layer.bufferSpecs().map { $0.prefixed(name) }
        }
        add("encoder", encoder)
        add("projector", projector)
        add("action_encoder", actionEncoder)
        if let transformer {
            specs += transformer.parameterSpecs().map { $0.prefixed("predictor") }
            bufferSpecs += transformer.bufferSpecs().map { $0.prefixed("predictor") }
        }
        add("predictor", mlpPredictor)
        add("pred_proj", predictionProjector)
        parameters = ParameterStore(specs: specs, seed: seed)
        buffers = BufferStore(specs: bufferSpecs, seed: seed)
        encoder.bind(parameters: parameters, buffers: buffers, prefix: "encoder")
        projector?.bind(parameters: parameters, buffers: buffers, prefix: "projector")
        actionEncoder.bind(parameters: parameters, buffers: buffers, prefix: "action_encoder")
        transformer?.bind(parameters: parameters, buffers: buffers, prefix: "predictor")
        mlpPredictor?.bind(parameters: parameters, buffers: buffers, prefix: "predictor")
        predictionProjector?.bind(parameters: parameters, buffers: buffers, prefix: "pred_proj")
    }

    public var embeddingWidth: Int { description.embeddingWidth }
    public var actionEmbeddingWidth: Int { description.actionEmbeddingWidth }
    /// Predicted positions of one clip: `H` (transformer, teacher forcing at every position) or 1 (MLP).
    public var predictedPositions: Int { transformer != nil ? historyFrames : 1 }
    /// The clip frame that predicted position `q` is compared with.
    public func targetFrame(ofPosition q: Int) -> Int { historyFrames - predictedPositions + q + predictedFrames }

    // MARK: Forward

    /// Frames → embeddings: `(N, C, S, S)` (or flat `(N, C·S·S)`) → `(N, D)`.
    public func encode(_ frames: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let shape = description.encoder.inputShape
        guard frames.rank >= 1, frames.columnCount == shape.reduce(1, *) else {
            throw LayerError.shapeMismatch(layer: "WorldModel.encoder", expected: "(N, \(shape))", got: frames.shape)
        }
        let input = Array(frames.shape.dropFirst()) == shape ? frames : frames.reshaped([frames.rowCount] + shape)
        let representation = try encoder.forward(input, context: context)
        return try projector?.forward(representation, context: context) ?? representation
    }

    /// Action blocks → action embeddings: `(N, F·a)` → `(N, A)`.
    public func encodeActions(_ blocks: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        try actionEncoder.forward(blocks, context: context)
    }

    /// `(B, H, D)` embeddings and `(B, H, A)` action embeddings → `(B, Q, D)` predictions.
    public func predict(_ embeddings: Tensor<Scalar>, actions: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let d = embeddingWidth, a = actionEmbeddingWidth, history = historyFrames
        // The transformer takes any context of 1…H frames (a planner's first steps); the MLP exactly H.
        guard embeddings.rank == 3, embeddings.shape[2] == d,
              embeddings.shape[1] == history || transformer != nil && (1...history).contains(embeddings.shape[1]) else {
            throw LayerError.shapeMismatch(layer: "WorldModel.predictor", expected: "embeddings (B, \(history), \(d))", got: embeddings.shape)
        }
        let b = embeddings.shape[0], h = embeddings.shape[1]
        guard actions.count == b * h * a else {
            throw LayerError.shapeMismatch(layer: "WorldModel.predictor", expected: "action embeddings (\(b), \(h), \(a))", got: actions.shape)
        }
        var output: Tensor<Scalar>
        if let transformer {
            output = try transformer.forward(embeddings, condition: actions.reshaped([b, h, a]), context: context)
        } else {
            let slotCache = cache(context.slot)
            let input = reuse(&slotCache.predictorInput, [b, h * (d + a)])
            embeddings.withUnsafeBufferPointer { e in
                actions.withUnsafeBufferPointer { u in
                    input.withUnsafeMutableBufferPointer { x in
                        for i in 0..<b {
                            for t in 0..<h {
                                let row = x.baseAddress! + i * h * (d + a) + t * (d + a)
                                for j in 0..<d { row[j] = e[(i * h + t) * d + j] }
                                for j in 0..<a { row[d + j] = u[(i * h + t) * a + j] }
                            }
                        }
                    }
                }
            }
            output = try mlpPredictor!.forward(input, context: context)
        }
        let q = transformer != nil ? h : 1
        output = output.reshaped([b * q, d])
        if let predictionProjector { output = try predictionProjector.forward(output, context: context) }
        return output.reshaped([b, q, d])
    }

    // MARK: Backward

    /// The backward of ``predict(_:actions:context:)``: `(B, Q, D)` → gradients of the
    /// embeddings `(B, H, D)` and of the action embeddings `(B, H, A)`; accumulates the
    /// predictor's and the prediction projector's parameter gradients.
    public func predictBackward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws
        -> (embeddings: Tensor<Scalar>, actions: Tensor<Scalar>) {
        let d = embeddingWidth, a = actionEmbeddingWidth, h = historyFrames, q = predictedPositions
        let b = outputGradient.count / (q * d)
        let inner = context.needingInputGradient(true)
        var gradient = outputGradient.reshaped([b * q, d])
        if let predictionProjector { gradient = try predictionProjector.backward(gradient, context: inner) }
        if let transformer {
            let (input, condition) = try transformer.backward(gradient.reshaped([b, h, d]), context: inner)
            return (input, condition)
        }
        let inputGradient = try mlpPredictor!.backward(gradient, context: inner)   // (B, H·(D + A))
        let cache = cache(context.slot)
        let de = reuse(&cache.contextGradient, [b, h, d]), da = reuse(&cache.actionGradient, [b, h, a])
        inputGradient.withUnsafeBufferPointer { x in
            de.withUnsafeMutableBufferPointer { e in
                da.withUnsafeMutableBufferPointer { u in
                    for i in 0..<b {
                        for t in 0..<h {
                            let row = x.baseAddress! + i * h * (d + a) + t * (d + a)
                            for j in 0..<d { e[(i * h + t) * d + j] = row[j] }
                            for j in 0..<a { u[(i * h + t) * a + j] = row[d + j] }
                        }
                    }
                }
            }
        }
        return (de, da)
    }

    /// The backward of ``encodeActions(_:context:)``; accumulates the action encoder's gradients.
    @discardableResult
    public func encodeActionsBackward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        try actionEncoder.backward(outputGradient, context: context)
    }

    /// The backward of ``encode(_:context:)``; accumulates the projector's and encoder's gradients.
    @discardableResult
    public func encodeBackward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let inner = context.needingInputGradient(true)
        let gradient = try projector?.backward(outputGradient, context: inner) ?? outputGradient
        return try encoder.backward(gradient, context: context)
    }
}

/// `buffer` if it has `shape`, else a new zero tensor kept in `buffer`.
@inline(__always)
func reuse<Scalar: TensorScalar>(_ buffer: inout Tensor<Scalar>?, _ shape: [Int]) -> Tensor<Scalar> {
    if let existing = buffer, existing.shape == shape { return existing }
    let fresh = Tensor<Scalar>(zeros: shape)
    buffer = fresh
    return fresh
}
