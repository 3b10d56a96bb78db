import Communication
import Datasets
import Engine
import Environments
import Foundation
import Layers
import Objectives
import Optimizers
import Tensor

/// An action-conditioned world model trained end to end with two loss terms (LeWorldModel,
/// arXiv 2603.19312): JEPA says what to predict — the next frame's embedding, never pixels —
/// and SIGReg keeps the embeddings from collapsing.
///
/// - **Batch:** this rank's clips of the global batch: `H + P` frames `F` steps apart, each
///   with its block of `F` actions (``ClipLoader``; the same global batch on any world size,
///   split by episode into training and held-out episodes).
/// - **Forward:** every frame through the encoder and the projector (batch norm synchronised
///   over the ranks), the first `H` action blocks through the action encoder, the predictor
///   (a causal AdaLN-zero transformer, or an MLP) and the prediction projector.
/// - **Loss:** ``WorldModelStep``: mean squared error of the predicted vs the actual next
///   embeddings (teacher forcing, no stop-gradient) + λ · SIGReg of each time step's
///   embeddings over the global batch.
/// - **Logged:** the loss, `prediction` and `sigreg`; every `logging.diagnostics_every` steps the
///   collapse diagnostics of the embeddings.
public final class WorldModelRecipe: Recipe {
    public typealias Settings = WorldModelSettings
    public typealias Batch = ClipBatch

    public let configuration: WorldModelConfiguration
    public let communicator: any Communicator
    public let dataset: TrajectoryDataset
    /// Training and held-out episodes (global indices).
    public let trainingEpisodes: [Int]
    public let heldOutEpisodes: [Int]
    public let sampler: ClipSampler
    public let modelStep: WorldModelStep<Float>
    private let rowCounts: [Int]

    /// Builds the networks (the same on every rank, from the seed) and opens the data.
    ///
    /// - Throws: ``ConfigurationError`` naming the key when the run cannot work (a global batch
    ///   smaller than the world, actions of another width than the action encoder takes), or
    ///   the dataset's error naming the file.
    public init(configuration: WorldModelConfiguration, communicator: any Communicator) throws {
        self.configuration = configuration
        self.communicator = communicator
        let schedule = configuration.schedule, data = configuration.data
        guard schedule.globalBatchSize >= communicator.size else {
            throw ConfigurationError("schedule.global_batch_size: \(schedule.globalBatchSize) clips cannot be split over \(communicator.size) ranks (fewer than one clip a rank)")
        }
        dataset = try TrajectoryDataset(data.train)
        guard dataset.actionDimension == data.actionDimension else {
            throw ConfigurationError("data.action_dimension: \(data.train) has actions of \(dataset.actionDimension) values, the config says \(data.actionDimension)")
        }
        if data.frames == "stored" {
            guard let shape = dataset.frameShape else {
                throw ConfigurationError("data.frames: stored, but \(data.train) stores no pixels (collect with --pixels, or use rendered)")
            }
            guard shape == [data.imageSize, data.imageSize, data.channels] else {
                throw ConfigurationError("data.frames: \(data.train) stores frames of \(shape), the config asks for \(data.imageSize)×\(data.imageSize)×\(data.channels)")
            }
        } else if data.frames != "rendered" {
            throw ConfigurationError("data.frames: \"\(data.frames)\" is not rendered or stored")
        } else if dataset.environment != TwoRoom.name {
            throw ConfigurationError("data.frames: rendered frames need a known environment; \(data.train) is from \"\(dataset.environment)\"")
        }
        (trainingEpisodes, heldOutEpisodes) = try Self.split(episodeCount: dataset.episodes.count, data: data, seed: configuration.seed)
        let shape = try ClipShape(historyFrames: data.historyFrames, predictedFrames: data.predictedFrames, frameskip: data.frameskip)
        do {
            sampler = try ClipSampler(episodeLengths: dataset.episodes.map(\.length), episodes: trainingEpisodes, shape: shape,
                                      globalBatchSize: schedule.globalBatchSize, seed: configuration.seed)
        } catch let error as DatasetError {
            throw ConfigurationError("schedule.global_batch_size: \(error) in \(data.train)")
        }
        let network = WorldModelNetwork<Float>(configuration.model, historyFrames: data.historyFrames,
                                               predictedFrames: data.predictedFrames, seed: configuration.seed)
        modelStep = WorldModelStep(network: network, sigregWeight: configuration.loss.sigregWeight,
                                   directions: .random(count: configuration.loss.directions), seed: configuration.seed)
        let sampler = self.sampler
        rowCounts = (0..<communicator.size).map { sampler.sampler.rankRange(rank: $0, worldSize: communicator.size).count }
    }

    /// The seeded split of episodes into training and held-out ones (by episode, never by clip).
    public static func split(episodeCount: Int, data: WorldModelData, seed: UInt64) throws -> (train: [Int], heldOut: [Int]) {
        guard data.validationFraction > 0 else { return (Array(0..<episodeCount), []) }
        let split = try ClipSampler.split(episodeCount: episodeCount, validationFraction: data.validationFraction, seed: seed)
        return (split.train, split.validation)
    }

    public var network: WorldModelNetwork<Float> { modelStep.network }
    public var parameters: ParameterStore<Float> { network.parameters }
    public var buffers: BufferStore<Float> { network.buffers }
    public var stepsPerEpoch: Int { sampler.sampler.stepsPerEpoch }
    public func position(ofStep step: Int) -> (epoch: Int, stepInEpoch: Int) { sampler.sampler.position(ofStep: step) }
    public var summary: String {
        "world model (\(configuration.data.historyFrames)+\(configuration.data.predictedFrames) frames, frameskip \(configuration.data.frameskip)) on \(dataset.location) (\(trainingEpisodes.count) episodes, \(sampler.clipCount) clips; \(heldOutEpisodes.count) held out)"
    }

    /// What a clip's frames are: rendered from the states at the config's size, or stored.
    public static func frames(for data: WorldModelData) throws -> ClipFrames {
        if data.frames == "stored" { return .stored }
        let format = try ObservationFormat(size: data.imageSize, channels: data.channels)
        return .rendered(shape: format.shape, render: format.renderer(for: TwoRoom()))
    }

    public func makeBatchSource(startStep: Int) throws -> any BatchSource<Batch> {
        let data = configuration.data
        return try ClipLoader(dataset: dataset, sampler: sampler, rank: communicator.rank, worldSize: communicator.size,
                              frames: Self.frames(for: data), startStep: startStep, prefetchDepth: data.prefetch,
                              threads: data.loaderThreads)
    }

    public func forwardBackward(_ batch: Batch, step: Int, communicator: any Communicator, clock: PhaseClock) throws -> StepLoss {
        let b = batch.clips.count, t = batch.frameCount
        let frames = Tensor(shape: [b * t] + batch.frameShape, scalars: batch.observations)
        let actions = Tensor(shape: [b * t, batch.actions.count / max(1, b * t)], scalars: batch.actions)
        return try modelStep.forwardBackward(frames: frames, actions: actions, clips: b, step: step, communicator: communicator,
                                             globalClipOffset: rowCounts.prefix(self.communicator.rank).reduce(0, +),
                                             rowCounts: rowCounts, clock: clock)
    }

    public func afterUpdate(_ batch: Batch, step: Int, record: Bool, isLastStep: Bool) throws -> [MetricsField] {
        let every = configuration.logging.diagnosticsEvery
        guard every > 0, step % every == 0 || isLastStep, let embeddings = modelStep.embeddings else { return [] }
        let diagnostics = try CollapseDiagnostics.measure(embeddings, communicator: communicator, step: step, seed: configuration.seed)
        return MetricsField.diagnostics(diagnostics)
    }
}

extension ClipLoader: BatchSource {}

extension Trainer where R == WorldModelRecipe {
    /// Builds a world-model run: the recipe from `configuration`, then the engine.
    public convenience init(configuration: WorldModelConfiguration, communicator: any Communicator, runDirectory: String,
                            checkpoints: (any CheckpointStorage)? = nil, codeVersion: String = AntiCollapseVersion.current,
                            log: @escaping (String) -> Void = { print($0) }) throws {
        try self.init(recipe: WorldModelRecipe(configuration: configuration, communicator: communicator),
                      runDirectory: runDirectory, checkpoints: checkpoints, codeVersion: codeVersion, log: log)
    }
}
