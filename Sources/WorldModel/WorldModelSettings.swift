import Engine
import Layers

/// The world-model recipe's part of a config: the trajectory data and the clips cut from them,
/// the networks, and the loss (see ``WorldModelRecipe``).
///
/// ```yaml
/// recipe: world_model
/// data: {train: data/two_room, history_frames: 3, predicted_frames: 1, frameskip: 5, image_size: 64}
/// model:
///   encoder: {type: convnet, input_channels: 3, image_size: 64, channels: [16, 32, 64, 64]}
///   projector: {type: mlp, widths: [64, 256, 64]}
///   action_encoder: {type: mlp, widths: [10, 64, 64], batch_norm: false, activation: gelu}
///   predictor: {type: transformer, depth: 2, heads: 4}
///   prediction_projector: {type: mlp, widths: [64, 256, 64]}
/// loss: {sigreg_weight: 0.09, directions: 1024}
/// ```
public struct WorldModelSettings: RecipeSettings {
    public static let recipeName = "world_model"
    public static let resumeKeys = ["model", "data.train", "data.history_frames", "data.predicted_frames", "data.frameskip",
                                    "data.image_size", "data.channels", "data.validation_fraction", "loss"]

    public var data = WorldModelData()
    public var model = WorldModelDescription()
    public var loss = WorldModelLossSettings()

    public init() {}

    public func resolvingPaths(relativeTo directory: String) -> WorldModelSettings {
        var resolved = self
        resolved.data.train = absolutePath(data.train, relativeTo: directory)
        return resolved
    }

    public func validate(run: EngineSettings) throws {
        if data.train.isEmpty { throw ConfigurationError.key("data.train", "names no trajectory dataset") }
        if data.historyFrames < 1 { throw ConfigurationError.key("data.history_frames", "must be at least 1, got \(data.historyFrames)") }
        if data.predictedFrames < 1 {
            throw ConfigurationError.key("data.predicted_frames", "must be at least 1, got \(data.predictedFrames)")
        }
        if data.frameskip < 1 { throw ConfigurationError.key("data.frameskip", "must be at least 1, got \(data.frameskip)") }
        if data.imageSize < 1 { throw ConfigurationError.key("data.image_size", "must be at least 1, got \(data.imageSize)") }
        if data.channels != 1 && data.channels != 3 { throw ConfigurationError.key("data.channels", "must be 1 or 3, got \(data.channels)") }
        if !(0..<1).contains(data.validationFraction) {
            throw ConfigurationError.key("data.validation_fraction", "must be in [0, 1), got \(data.validationFraction)")
        }
        if data.prefetch < 0 { throw ConfigurationError.key("data.prefetch", "must not be negative") }
        if data.loaderThreads < 1 { throw ConfigurationError.key("data.loader_threads", "must be at least 1") }
        if !(loss.sigregWeight >= 0) { throw ConfigurationError.key("loss.sigreg_weight", "must not be negative, got \(loss.sigregWeight)") }
        if loss.directions < 1 { throw ConfigurationError.key("loss.directions", "must be at least 1, got \(loss.directions)") }
        do {
            try model.validate(historyFrames: data.historyFrames, predictedFrames: data.predictedFrames,
                               actionBlockWidth: data.frameskip * data.actionDimension)
        } catch let error as ModelDescriptionError {
            throw ConfigurationError.key("model.\(ConfigurationTree.snakeCase(error.key))", error.problem)
        }
        let inputShape = model.encoder.inputShape
        if inputShape != [data.channels, data.imageSize, data.imageSize] && inputShape != [data.channels * data.imageSize * data.imageSize] {
            throw ConfigurationError.key("model.encoder", "takes inputs of shape \(inputShape), but the clips' frames are \(data.channels)×\(data.imageSize)×\(data.imageSize) (data.channels, data.image_size)")
        }
    }
}

/// A world-model run's configuration.
public typealias WorldModelConfiguration = RunConfiguration<WorldModelSettings>

/// Which clips the model learns from.
public struct WorldModelData: Codable, Equatable, Sendable {
    /// The trajectory dataset: a shard directory, a manifest or one `.h5` file.
    public var train = "data/two_room"
    /// Context frames `H` the predictor sees.
    public var historyFrames = 3
    /// How far ahead the predictor predicts, in frames (1: the next frame).
    public var predictedFrames = 1
    /// Environment steps between frames `F`; each frame comes with its block of `F` actions.
    public var frameskip = 5
    /// Frames are `channels × image_size × image_size`, rendered from the states (or read from
    /// stored pixels of that size).
    public var imageSize = 64
    public var channels = 3
    /// `rendered` (from the states; any size) or `stored` (the shards' `/pixels`).
    public var frames = "rendered"
    /// The share of episodes held out (never trained on; the closed-loop evaluation's episodes).
    public var validationFraction = 0.1
    /// Values in one action (2 for TwoRoom); the action encoder takes `frameskip · action_dimension`.
    public var actionDimension = 2
    /// Batches the background loader keeps ready, and the threads making one batch.
    public var prefetch = 2
    public var loaderThreads = 1

    public init() {}
}

/// `loss = MSE(predicted, next embedding) + sigreg_weight · SIGReg`.
public struct WorldModelLossSettings: Codable, Equatable, Sendable {
    /// λ (LeWM: 0.09).
    public var sigregWeight = 0.09
    /// SIGReg's random 1-D projections a step (LeWM: 1024).
    public var directions = 1024

    public init() {}
}
