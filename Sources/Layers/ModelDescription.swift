import Tensor

/// The architecture of a ``Model`` as written in a run's configuration: an encoder, an optional
/// projector and an optional predictor, each a ``NetworkDescription``.
///
/// JSON form (absent keys take the defaults of the description types):
/// ```json
/// {"encoder":   {"type": "resnet", "inputChannels": 3, "imageSize": 64, "stageChannels": [16, 32, 64]},
///  "projector": {"type": "mlp", "widths": [64, 256, 256], "lastBias": false}}
/// ```
public struct ModelDescription: Codable, Sendable, Equatable {
    public var encoder: NetworkDescription
    public var projector: NetworkDescription?
    public var predictor: NetworkDescription?

    public init(encoder: NetworkDescription, projector: NetworkDescription? = nil, predictor: NetworkDescription? = nil) {
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
    }

    /// Checks that every part is well formed and that each part's input width is the previous
    /// part's output width.
    /// - Throws: ``ModelDescriptionError`` naming the key that is wrong.
    public func validate() throws {
        try encoder.validate(key: "encoder")
        var width = encoder.outputFeatures
        for (key, part) in [("projector", projector), ("predictor", predictor)] {
            guard let part else { continue }
            try part.validate(key: key)
            guard case let .mlp(mlp) = part, mlp.widths[0] == width else {
                throw ModelDescriptionError(key: "\(key).widths[0]",
                                            problem: "the \(key) is an MLP whose first width is the previous part's output width \(width)")
            }
            width = part.outputFeatures
        }
    }

    /// Builds the model; parameters are drawn from streams named by the parameters' names.
    public func build<Scalar: LayerScalar>(as _: Scalar.Type = Scalar.self, seed: UInt64) throws -> Model<Scalar> {
        try Model(self, seed: seed)
    }
}

/// A description that does not make a network, with the configuration key at fault.
public struct ModelDescriptionError: Error, CustomStringConvertible, Equatable {
    /// The key in the configuration, e.g. `projector.widths[0]`.
    public var key: String
    /// What is wrong and what would be right.
    public var problem: String
    public var description: String { "model description: \(key): \(problem)" }

    public init(key: String, problem: String) {
        self.key = key
        self.problem = problem
    }
}

/// One network of a model.
public enum NetworkDescription: Sendable, Equatable {
    /// Linear layers with batch norm and an activation between them.
    case mlp(MLPDescription)
    /// Conv–BN–ReLU blocks with average pooling between them, then global average pooling.
    case convnet(ConvNetDescription)
    /// A small ResNet of basic blocks, then global average pooling.
    case resnet(ResNetDescription)
    /// A vision transformer: patch embedding, pre-norm transformer blocks, final layer norm,
    /// class-token or mean pooling.
    case vit(ViTDescription)

    /// An MLP by widths; see ``MLPDescription``.
    public static func mlp(widths: [Int], batchNorm: Bool = true, bias: Bool = true, activation: Activation = .relu,
                           lastBias: Bool = true, lastBatchNorm: Bool = false, lastBatchNormAffine: Bool = false) -> Self {
        .mlp(MLPDescription(widths: widths, batchNorm: batchNorm, bias: bias, activation: activation, lastBias: lastBias,
                            lastBatchNorm: lastBatchNorm, lastBatchNormAffine: lastBatchNormAffine))
    }

    /// The shape of one input sample: `[widths[0]]` or `[C, H, W]`.
    public var inputShape: [Int] {
        switch self {
        case let .mlp(d): return [d.widths.first ?? 0]
        case let .convnet(d): return [d.inputChannels, d.imageSize, d.imageSize]
        case let .resnet(d): return [d.inputChannels, d.imageSize, d.imageSize]
        case let .vit(d): return [d.inputChannels, d.imageSize, d.imageSize]
        }
    }

    /// The width of one output row.
    public var outputFeatures: Int {
        switch self {
        case let .mlp(d): return d.widths.last ?? 0
        case let .convnet(d): return d.channels.last ?? d.inputChannels
        case let .resnet(d): return d.stageChannels.last ?? d.stemChannels
        case let .vit(d): return d.width
        }
    }

    func validate(key: String) throws {
        func positive(_ values: [Int], _ name: String) throws {
            if values.isEmpty || values.contains(where: { $0 <= 0 }) {
                throw ModelDescriptionError(key: "\(key).\(name)", problem: "needs at least one value, all positive; got \(values)")
            }
        }
        switch self {
        case let .mlp(d):
            try positive(d.widths, "widths")
        case let .convnet(d):
            try positive([d.inputChannels, d.imageSize, d.kernelSize, d.poolSize], "inputChannels/imageSize/kernelSize/poolSize")
            try positive(d.channels, "channels")
            var size = d.imageSize
            for i in 0..<(d.channels.count - 1) {
                size /= d.poolSize
                if size < 1 {
                    throw ModelDescriptionError(key: "\(key).imageSize",
                                                problem: "\(d.imageSize) pixels vanish after \(i + 1) pools of \(d.poolSize)")
                }
            }
        case let .resnet(d):
            try positive([d.inputChannels, d.imageSize, d.stemChannels, d.stemStride, d.blocksPerStage],
                         "inputChannels/imageSize/stemChannels/stemStride/blocksPerStage")
            try positive(d.stageChannels, "stageChannels")
        case let .vit(d):
            try positive([d.inputChannels, d.imageSize, d.patchSize, d.width, d.depth, d.heads],
                         "inputChannels/imageSize/patchSize/width/depth/heads")
            if d.imageSize % d.patchSize != 0 {
                throw ModelDescriptionError(key: "\(key).patchSize",
                                            problem: "must divide imageSize \(d.imageSize); got \(d.patchSize)")
            }
            if d.width % d.heads != 0 {
                throw ModelDescriptionError(key: "\(key).heads", problem: "must divide width \(d.width); got \(d.heads)")
            }
            if !(d.mlpRatio > 0) || Int((Double(d.width) * d.mlpRatio).rounded()) < 1 {
                throw ModelDescriptionError(key: "\(key).mlpRatio", problem: "must be positive; got \(d.mlpRatio)")
            }
            if !(d.dropout >= 0 && d.dropout < 1) {
                throw ModelDescriptionError(key: "\(key).dropout", problem: "must be in [0, 1); got \(d.dropout)")
            }
        }
    }
}

/// The activation between hidden layers of an MLP.
public enum Activation: String, ConfigurationChoice {
    case relu, gelu
}

/// `Linear(w0, w1) [BN(w1)] act Linear(w1, w2) [BN] act … Linear(w_{n−1}, w_n) [BN(affine: false)]`.
///
/// `widths = [in, hidden…, out]`; a single width is the identity (no layers). The VICReg
/// projector is `widths: [2048, 8192, 8192, 8192], lastBias: false`; Barlow Twins' is
/// `bias: false, lastBias: false, lastBatchNorm: true` (its `bn` on the embedding).
public struct MLPDescription: Codable, Sendable, Equatable {
    /// `[in, hidden…, out]` features.
    public var widths: [Int]
    /// Batch norm after each hidden linear layer (default true).
    public var batchNorm: Bool
    /// Bias in the hidden linear layers (default true, PyTorch's default).
    public var bias: Bool
    /// The hidden activation (default ReLU).
    public var activation: Activation
    /// Bias in the last linear layer (default true).
    public var lastBias: Bool
    /// Batch norm after the last linear layer (default false).
    public var lastBatchNorm: Bool
    /// Whether that last batch norm learns γ, β (default false, as Barlow Twins).
    public var lastBatchNormAffine: Bool

    public init(widths: [Int], batchNorm: Bool = true, bias: Bool = true, activation: Activation = .relu,
                lastBias: Bool = true, lastBatchNorm: Bool = false, lastBatchNormAffine: Bool = false) {
        self.widths = widths
        self.batchNorm = batchNorm
        self.bias = bias
        self.activation = activation
        self.lastBias = lastBias
        self.lastBatchNorm = lastBatchNorm
        self.lastBatchNormAffine = lastBatchNormAffine
    }

    /// Decodes `widths` and overwrites the initializer's defaults with the keys present.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(widths: try c.decode([Int].self, forKey: .widths))
        try c.overwrite(&batchNorm, .batchNorm)
        try c.overwrite(&bias, .bias)
        try c.overwrite(&activation, .activation)
        try c.overwrite(&lastBias, .lastBias)
        try c.overwrite(&lastBatchNorm, .lastBatchNorm)
        try c.overwrite(&lastBatchNormAffine, .lastBatchNormAffine)
    }
}

/// `[Conv(k, pad k/2, no bias) BN ReLU] AvgPool2d(p) [Conv BN ReLU] AvgPool2d(p) … [Conv BN ReLU] GlobalAvgPool2d`:
/// one block per entry of `channels`, pooling between blocks; output `(B, channels.last)`.
public struct ConvNetDescription: Codable, Sendable, Equatable {
    public var inputChannels: Int
    /// Height and width of the (square) input images, e.g. 28 or 64.
    public var imageSize: Int
    /// The output channels of each block.
    public var channels: [Int]
    /// The kernel size of each convolution (default 3, padding 1 keeps the size).
    public var kernelSize: Int
    /// The average-pooling window and stride between blocks (default 2).
    public var poolSize: Int
    /// Batch norm after each convolution (default true; without it convolutions have a bias).
    public var batchNorm: Bool

    public init(inputChannels: Int, imageSize: Int, channels: [Int], kernelSize: Int = 3, poolSize: Int = 2,
                batchNorm: Bool = true) {
        self.inputChannels = inputChannels
        self.imageSize = imageSize
        self.channels = channels
        self.kernelSize = kernelSize
        self.poolSize = poolSize
        self.batchNorm = batchNorm
    }

    /// Decodes the required keys and overwrites the initializer's defaults with the keys present.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(inputChannels: try c.decode(Int.self, forKey: .inputChannels),
                  imageSize: try c.decode(Int.self, forKey: .imageSize),
                  channels: try c.decode([Int].self, forKey: .channels))
        try c.overwrite(&kernelSize, .kernelSize)
        try c.overwrite(&poolSize, .poolSize)
        try c.overwrite(&batchNorm, .batchNorm)
    }
}

/// A ResNet of basic blocks for small images:
/// stem `Conv3×3(stemStride) BN ReLU`, then for each stage `blocksPerStage` blocks
/// `Residual(body: Conv3×3(s) BN ReLU Conv3×3 BN, shortcut: Conv1×1(s) BN when the shape changes) ReLU`
/// (the first block of every stage after the first has stride 2), then `GlobalAvgPool2d`;
/// output `(B, stageChannels.last)`. Convolutions have no bias and Kaiming-normal (fan-out)
/// weights, like torchvision.
public struct ResNetDescription: Codable, Sendable, Equatable {
    public var inputChannels: Int
    /// Height and width of the (square) input images.
    public var imageSize: Int
    /// The stem's output channels (default 16).
    public var stemChannels: Int
    /// The stem's stride (default 1; 2 for 64×64 images to save work).
    public var stemStride: Int
    /// The channels of each stage (default `[16, 32, 64]`).
    public var stageChannels: [Int]
    /// Basic blocks per stage (default 1).
    public var blocksPerStage: Int

    public init(inputChannels: Int, imageSize: Int, stemChannels: Int = 16, stemStride: Int = 1,
                stageChannels: [Int] = [16, 32, 64], blocksPerStage: Int = 1) {
        self.inputChannels = inputChannels
        self.imageSize = imageSize
        self.stemChannels = stemChannels
        self.stemStride = stemStride
        self.stageChannels = stageChannels
        self.blocksPerStage = blocksPerStage
    }

    /// Decodes the required keys and overwrites the initializer's defaults with the keys present.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(inputChannels: try c.decode(Int.self, forKey: .inputChannels),
                  imageSize: try c.decode(Int.self, forKey: .imageSize))
        try c.overwrite(&stemChannels, .stemChannels)
        try c.overwrite(&stemStride, .stemStride)
        try c.overwrite(&stageChannels, .stageChannels)
        try c.overwrite(&blocksPerStage, .blocksPerStage)
    }
}

/// A vision transformer encoder (see ``VisionTransformer``): `(B, C, S, S) → (B, width)`.
///
/// `(S/patchSize)²` patch tokens of `width` features (plus a class token with `cls` pooling),
/// `depth` pre-norm blocks of `heads` heads and an MLP of `mlpRatio · width` hidden features,
/// a final layer norm, then the class token or the mean of the patch tokens.
public struct ViTDescription: Codable, Sendable, Equatable {
    public var inputChannels: Int
    /// Height and width of the (square) input images; a multiple of `patchSize`.
    public var imageSize: Int
    /// The side of the square patches (default 4: 49 tokens for 28×28 MNIST).
    public var patchSize: Int
    /// The token width (default 64).
    public var width: Int
    /// The number of transformer blocks (default 4).
    public var depth: Int
    /// Attention heads a block (default 4); must divide `width`.
    public var heads: Int
    /// The MLP's hidden width over `width` (default 4).
    public var mlpRatio: Double
    /// `cls` (a class token; default) or `mean` (the mean of the patch tokens, no class token).
    public var pooling: TokenPoolingMode
    /// A bias in the fused QKV projections (default true).
    public var qkvBias: Bool
    /// Dropout after each attention and MLP (default 0, off).
    public var dropout: Double

    public init(inputChannels: Int, imageSize: Int, patchSize: Int = 4, width: Int = 64, depth: Int = 4, heads: Int = 4,
                mlpRatio: Double = 4, pooling: TokenPoolingMode = .cls, qkvBias: Bool = true, dropout: Double = 0) {
        self.inputChannels = inputChannels
        self.imageSize = imageSize
        self.patchSize = patchSize
        self.width = width
        self.depth = depth
        self.heads = heads
        self.mlpRatio = mlpRatio
        self.pooling = pooling
        self.qkvBias = qkvBias
        self.dropout = dropout
    }

    /// Decodes the required keys and overwrites the initializer's defaults with the keys present.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(inputChannels: try c.decode(Int.self, forKey: .inputChannels),
                  imageSize: try c.decode(Int.self, forKey: .imageSize))
        try c.overwrite(&patchSize, .patchSize)
        try c.overwrite(&width, .width)
        try c.overwrite(&depth, .depth)
        try c.overwrite(&heads, .heads)
        try c.overwrite(&mlpRatio, .mlpRatio)
        try c.overwrite(&pooling, .pooling)
        try c.overwrite(&qkvBias, .qkvBias)
        try c.overwrite(&dropout, .dropout)
    }
}

extension KeyedDecodingContainer {
    /// Replaces `value` (a default) by the value of `key` when the key is present and not null:
    /// the one place a description's decoder meets its defaults, which live in its initializer.
    func overwrite<Value: Decodable>(_ value: inout Value, _ key: Key) throws {
        if let decoded = try decodeIfPresent(Value.self, forKey: key) { value = decoded }
    }
}

// MARK: - Coding: {"type": "mlp", …fields}

extension NetworkDescription: Codable {
    private enum TypeKey: String, CodingKey { case type }
    private enum Kind: String, ConfigurationChoice { case mlp, convnet, resnet, vit }

    public init(from decoder: any Decoder) throws {
        let kind = try decoder.container(keyedBy: TypeKey.self).decode(Kind.self, forKey: .type)
        switch kind {
        case .mlp: self = .mlp(try MLPDescription(from: decoder))
        case .convnet: self = .convnet(try ConvNetDescription(from: decoder))
        case .resnet: self = .resnet(try ResNetDescription(from: decoder))
        case .vit: self = .vit(try ViTDescription(from: decoder))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: TypeKey.self)
        switch self {
        case let .mlp(d): try container.encode(Kind.mlp, forKey: .type); try d.encode(to: encoder)
        case let .convnet(d): try container.encode(Kind.convnet, forKey: .type); try d.encode(to: encoder)
        case let .resnet(d): try container.encode(Kind.resnet, forKey: .type); try d.encode(to: encoder)
        case let .vit(d): try container.encode(Kind.vit, forKey: .type); try d.encode(to: encoder)
        }
    }
}

// MARK: - Builders

extension NetworkDescription {
    /// The layers of this network (parameters not yet allocated).
    public func makeNetwork<Scalar: LayerScalar>(_: Scalar.Type = Scalar.self) -> Sequential<Scalar> {
        switch self {
        case let .mlp(d): return Sequential(d.makeLayers())
        case let .convnet(d): return Sequential(d.makeLayers())
        case let .resnet(d): return Sequential(d.makeLayers())
        case let .vit(d): return Sequential([VisionTransformer<Scalar>(d)])
        }
    }
}

extension MLPDescription {
    func makeLayers<Scalar: LayerScalar>() -> [any Layer<Scalar>] {
        var layers: [any Layer<Scalar>] = []
        for i in 0..<max(widths.count - 1, 0) {
            let last = i == widths.count - 2
            layers.append(Linear<Scalar>(inFeatures: widths[i], outFeatures: widths[i + 1], bias: last ? lastBias : bias))
            if last {
                if lastBatchNorm { layers.append(BatchNorm<Scalar>(features: widths[i + 1], affine: lastBatchNormAffine)) }
            } else {
                if batchNorm { layers.append(BatchNorm<Scalar>(features: widths[i + 1])) }
                switch activation {
                case .relu: layers.append(ReLU<Scalar>())
                case .gelu: layers.append(GELU<Scalar>())
                }
            }
        }
        return layers
    }
}

extension ConvNetDescription {
    func makeLayers<Scalar: LayerScalar>() -> [any Layer<Scalar>] {
        var layers: [any Layer<Scalar>] = []
        var inChannels = inputChannels
        for (i, outChannels) in channels.enumerated() {
            if i > 0 { layers.append(AvgPool2d<Scalar>(kernelSize: poolSize)) }
            layers.append(Conv2d<Scalar>(inChannels: inChannels, outChannels: outChannels, kernelSize: kernelSize,
                                         padding: kernelSize / 2, bias: !batchNorm))
            if batchNorm { layers.append(BatchNorm<Scalar>(features: outChannels)) }
            layers.append(ReLU<Scalar>())
            inChannels = outChannels
        }
        layers.append(GlobalAvgPool2d<Scalar>())
        return layers
    }
}

extension ResNetDescription {
    func makeLayers<Scalar: LayerScalar>() -> [any Layer<Scalar>] {
        /// A bias-free convolution with torchvision's Kaiming-normal (fan-out) weights.
        func conv(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int) -> Conv2d<Scalar> {
            Conv2d(inChannels: inChannels, outChannels: outChannels, kernelSize: kernelSize, stride: stride,
                   padding: kernelSize / 2, bias: false,
                   weightInitializer: .kaimingNormal(fanIn: outChannels * kernelSize * kernelSize))
        }
        var layers: [any Layer<Scalar>] = [
            conv(inputChannels, stemChannels, kernelSize: 3, stride: stemStride),
            BatchNorm<Scalar>(features: stemChannels),
            ReLU<Scalar>(),
        ]
        var inChannels = stemChannels
        for (stage, outChannels) in stageChannels.enumerated() {
            for block in 0..<blocksPerStage {
                let stride = stage > 0 && block == 0 ? 2 : 1
                let body = Sequential<Scalar>([
                    conv(inChannels, outChannels, kernelSize: 3, stride: stride),
                    BatchNorm<Scalar>(features: outChannels),
                    ReLU<Scalar>(),
                    conv(outChannels, outChannels, kernelSize: 3, stride: 1),
                    BatchNorm<Scalar>(features: outChannels),
                ])
                let shortcut = stride != 1 || inChannels != outChannels
                    ? Sequential<Scalar>([conv(inChannels, outChannels, kernelSize: 1, stride: stride),
                                          BatchNorm<Scalar>(features: outChannels)])
                    : nil
                layers.append(Residual(body: body, shortcut: shortcut))
                layers.append(ReLU<Scalar>())
                inChannels = outChannels
            }
        }
        layers.append(GlobalAvgPool2d<Scalar>())
        return layers
    }
}
