import Datasets
import Engine
import Layers
import Objectives

/// The joint-embedding recipe's part of a config: the data and their views, the model, the
/// objective (see ``JointEmbeddingRecipe``).
public struct JointEmbeddingSettings: RecipeSettings {
    public static let recipeName = "joint_embedding"
    public static let resumeKeys = ["model", "data.train", "data.global_views", "data.local_views", "objective.name"]

    public var data = DataConfiguration()
    public var model = ModelDescription(encoder: .mlp(widths: [784, 1024, 1024]),
                                        projector: .mlp(widths: [1024, 2048, 2048], lastBias: false))
    public var objective = ObjectiveConfiguration()

    public init() {}

    public func resolvingPaths(relativeTo directory: String) -> JointEmbeddingSettings {
        var resolved = self
        resolved.data.train = absolutePath(data.train, relativeTo: directory)
        resolved.data.test = absolutePath(data.test, relativeTo: directory)
        return resolved
    }

    /// What the objective is built for in a run with these settings.
    public func objectiveContext(globalBatchSize: Int) -> ObjectiveBuildContext {
        ObjectiveBuildContext(globalViews: data.globalViews, localViews: data.localViews, globalBatchSize: globalBatchSize,
                              embeddingWidth: model.projector?.outputFeatures ?? model.encoder.outputFeatures)
    }

    public func validate(run: EngineSettings) throws {
        if data.globalViews < 1 { throw ConfigurationError.key("data.global_views", "must be at least 1") }
        if data.localViews < 0 { throw ConfigurationError.key("data.local_views", "must not be negative") }
        if data.prefetch < 0 { throw ConfigurationError.key("data.prefetch", "must not be negative") }
        if data.train.isEmpty { throw ConfigurationError.key("data.train", "names no dataset") }
        let views = ObjectiveRegistry.settingsType(named: objective.name.rawValue)?.viewCount ?? 1...Int.max
        if !views.contains(data.globalViews + data.localViews) {
            let expected = views.lowerBound == views.upperBound
                ? "exactly \(views.lowerBound) views (global_views: \(views.lowerBound), local_views: 0)"
                : "\(views.lowerBound) to \(views.upperBound) views"
            throw ConfigurationError.key("data.global_views", "\(objective.name.rawValue) compares \(expected)")
        }
        if views.lowerBound == views.upperBound && data.localViews != 0 {
            throw ConfigurationError.key("data.global_views", "\(objective.name.rawValue) compares exactly \(views.lowerBound) views (global_views: \(views.lowerBound), local_views: 0)")
        }
        do { try objective.validate() } catch let error as ObjectiveSettingsError {
            throw ConfigurationError.key("objective.\(error.key)", error.problem)
        }
        do { try model.validate() } catch let error as ModelDescriptionError {
            throw ConfigurationError.key("model.\(ConfigurationTree.snakeCase(error.key))", error.problem)
        }
    }
}

/// A joint-embedding run's configuration (the default recipe).
public typealias TrainingConfiguration = RunConfiguration<JointEmbeddingSettings>

/// Where the data come from and how views are made.
public struct DataConfiguration: Codable, Equatable, Sendable {
    /// The training dataset: a shard directory, a manifest or one `.h5` file.
    public var train = "datasets/mnist5k/train"
    /// A labelled test dataset for the online probe and the final evaluation ("" for none).
    public var test = "datasets/mnist5k/test"
    /// Views made with `augmentation` (2 for VICReg, Barlow Twins, W-MSE; LeJEPA's global views).
    public var globalViews = 2
    /// Extra views made with `local_augmentation` (LeJEPA's local views).
    public var localViews = 0
    public var augmentation = Augmentation()
    /// The augmentation of local views: smaller crops.
    public var localAugmentation: Augmentation = {
        var local = Augmentation()
        local.cropScale = 0.1...0.4
        return local
    }()
    /// Batches read ahead by the background loader.
    public var prefetch = 2
}

