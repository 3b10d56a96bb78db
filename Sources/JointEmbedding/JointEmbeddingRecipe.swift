import Communication
import Datasets
import Engine
import Foundation
import Imaging
import Layers
import Objectives
import Optimizers
import Tensor

/// Joint-embedding self-supervised learning (VICReg, Barlow Twins, W-MSE, SIGReg, LeJEPA).
///
/// - **Batch:** this rank's rows of the global batch, as several augmented views (and labels,
///   when the dataset has them, for the online probe only).
/// - **Forward:** every view through the encoder and the projector (views of one shape stacked,
///   batch norm synchronised over the ranks, each view normalised by its own statistics).
/// - **Loss:** the objective of the config on the views' embeddings, whose batch statistics
///   are made global with one fused all-reduce (or one all-gather); it also returns the
///   gradient with respect to this rank's rows.
/// - **Backward:** through the projector and the encoder, into the model's gradients.
/// - **Logged:** the loss and its terms; after the update, the online probe's accuracy (a
///   linear classifier on the detached representations) and the collapse diagnostics of the
///   embeddings (std, effective rank, off-diagonal energy, Epps–Pulley).
public final class JointEmbeddingRecipe: Recipe {
    public typealias Settings = JointEmbeddingSettings

    public let configuration: TrainingConfiguration
    public let communicator: any Communicator
    public let dataset: ShardedDataset
    public let sampler: GlobalBatchSampler
    /// The model, the objective and the view passes.
    public let modelStep: JointEmbeddingStep
    private let probe: OnlineProbe?
    /// The labelled test split the probe is evaluated on at every diagnostics step, if any.
    private let heldOut: (loader: BatchLoader, rows: Int)?

    /// Builds the model (the same on every rank, from the seed), the objective and the data.
    ///
    /// - Throws: ``ConfigurationError`` naming the key when the run cannot work (a global
    ///   batch smaller than the world, inputs of another shape than the encoder's, an objective
    ///   that does not fit the run), or the dataset's error.
    public init(configuration: TrainingConfiguration, communicator: any Communicator) throws {
        self.configuration = configuration
        self.communicator = communicator
        let schedule = configuration.schedule
        guard schedule.globalBatchSize >= communicator.size else {
            throw ConfigurationError("schedule.global_batch_size: \(schedule.globalBatchSize) rows cannot be split over \(communicator.size) ranks (fewer than one row a rank)")
        }
        dataset = try ShardedDataset(configuration.data.train)
        let inputShape = configuration.model.encoder.inputShape
        guard dataset.featureCount == inputShape.reduce(1, *) else {
            throw ConfigurationError("model.encoder: takes inputs of shape \(inputShape), but \(configuration.data.train) has rows of shape \(dataset.featureShape)")
        }
        let sampler = try GlobalBatchSampler(rowCount: dataset.rowCount, globalBatchSize: schedule.globalBatchSize,
                                             seed: configuration.seed)
        self.sampler = sampler
        let context = configuration.recipe.objectiveContext(globalBatchSize: schedule.globalBatchSize)
        do { try configuration.objective.validate(in: context) } catch let error as ObjectiveSettingsError {
            throw ConfigurationError("objective.\(error.key): \(error.problem)")
        }
        let model = try Model<Float>(configuration.model, seed: configuration.seed)
        modelStep = JointEmbeddingStep(
            model: model, objective: configuration.objective.makeObjective(in: context), seed: configuration.seed,
            reduction: StatisticsReduction(rawValue: configuration.objective.reduction) ?? .automatic,
            costModel: configuration.objective.costModel.model,
            rowCounts: (0..<communicator.size).map { sampler.rankRange(rank: $0, worldSize: communicator.size).count })
        let dataset = self.dataset
        probe = configuration.logging.onlineProbe && dataset.hasLabels && dataset.classCount > 1
            ? try OnlineProbe(features: configuration.model.encoder.outputFeatures, classes: dataset.classCount,
                              learningRate: configuration.logging.onlineProbeLearningRate, seed: configuration.seed,
                              communicator: communicator)
            : nil
        if probe != nil, !configuration.data.test.isEmpty, configuration.logging.diagnosticsEvery > 0 {
            let test = try ShardedDataset(configuration.data.test)
            guard test.featureShape == dataset.featureShape else {
                throw ConfigurationError("data.test: \(configuration.data.test) has rows of shape \(test.featureShape), but data.train has \(dataset.featureShape)")
            }
            heldOut = test.hasLabels && test.classCount <= dataset.classCount
                ? (try BatchLoader(dataset: test, sampler: GlobalBatchSampler(rowCount: test.rowCount, globalBatchSize: 1, seed: 0),
                                   prefetchDepth: 0), test.rowCount)
                : nil
        } else {
            heldOut = nil
        }
    }

    public var model: Model<Float> { modelStep.model }
    public var objective: any Objective<Float> { modelStep.objective }

    public var parameters: ParameterStore<Float> { model.parameters }
    public var buffers: BufferStore<Float> { model.buffers }
    public var stepsPerEpoch: Int { sampler.stepsPerEpoch }
    public func position(ofStep step: Int) -> (epoch: Int, stepInEpoch: Int) { sampler.position(ofStep: step) }
    public var summary: String {
        "\(configuration.objective.name.rawValue) on \(dataset.location) (\(dataset.rowCount) rows)"
    }

    public var extraStateGroups: [StateGroup] { probe.map { [$0.stateGroup] } ?? [] }

    public func makeBatchSource(startStep: Int) throws -> any BatchSource<Batch> {
        let data = configuration.data
        let plan = ViewPlan(globalCount: data.globalViews, globalAugmentation: data.augmentation,
                            localCount: data.localViews, localAugmentation: data.localAugmentation)
        return try BatchLoader(dataset: dataset, sampler: sampler, rank: communicator.rank, worldSize: communicator.size,
                               plan: plan, augmentationSeed: configuration.seed, startStep: startStep,
                               prefetchDepth: data.prefetch)
    }

    public func forwardBackward(_ batch: Batch, step: Int, communicator: any Communicator, clock: PhaseClock) throws -> StepLoss {
        try modelStep.forwardBackward(views: batch.views, step: step, communicator: communicator, clock: clock) { representation in
            if let probe, let labels = batch.labels {
                try probe.step(representation: representation, labels: labels,
                               globalBatchSize: configuration.schedule.globalBatchSize)
            }
        }
    }

    public func afterUpdate(_ batch: Batch, step: Int, record: Bool, isLastStep: Bool) throws -> [MetricsField] {
        let every = configuration.logging.diagnosticsEvery
        var diagnostics: CollapseDiagnostics?
        if every > 0, let embeddings = modelStep.embeddings.first, step % every == 0 || isLastStep {
            diagnostics = try CollapseDiagnostics.measure(embeddings, communicator: communicator, step: step,
                                                          seed: configuration.seed, pictures: true)
        }
        guard record || diagnostics != nil else { return [] }
        var heldOutAccuracy: [MetricsField] = []
        if diagnostics != nil, let probe, let heldOut {
            // Slot 7: apart from the training views' activations.
            let accuracy = try probe.heldOutAccuracy(encoder: model.encoder, inputShape: configuration.model.encoder.inputShape,
                                                     loader: heldOut.loader, rowCount: heldOut.rows, slot: 7)
            heldOutAccuracy = [MetricsField("probe_test_accuracy", accuracy, tag: "probe/test_accuracy")]
        }
        let pictures = communicator.isRoot ? try diagnostics?.pictures.map(Self.tensorBoardFields) ?? [] : []
        return MetricsField.onlineProbe(probe?.take()) + heldOutAccuracy + MetricsField.diagnostics(diagnostics) + pictures
    }
}

extension JointEmbeddingRecipe {
    /// The diagnostics' pictures as TensorBoard fields: histograms of the standardised
    /// projections on random directions (beside the standard normal's bell they should hug)
    /// and of the per-feature standard deviations, and the |correlation| map as an image.
    static func tensorBoardFields(_ pictures: CollapseDiagnostics.Pictures) throws -> [MetricsField] {
        var fields: [MetricsField] = []
        for (k, counts) in pictures.projectionCounts.enumerated() {
            let limits = pictures.projectionEdges.map { $0.isFinite ? $0 : Double.greatestFiniteMagnitude }
            let total = counts.reduce(0, +)
            let centres = zip([-4.25] + pictures.projectionEdges.dropLast(), pictures.projectionEdges.dropLast() + [4.25])
                .map { ($0 + $1) / 2 }
            let sum = zip(centres, counts).reduce(0) { $0 + $1.0 * $1.1 }
            let squares = zip(centres, counts).reduce(0) { $0 + $1.0 * $1.0 * $1.1 }
            fields.append(MetricsField(tag: "embeddings/projection_\(k)", .histogram(MetricsHistogram(
                minimum: -4.25, maximum: 4.25, count: total, sum: sum, sumOfSquares: squares,
                bucketLimits: limits, bucketCounts: counts))))
        }
        fields.append(MetricsField(tag: "embeddings/feature_std", .histogram(MetricsHistogram(pictures.standardDeviations))))
        // The map, 4 pixels a cell, gray = |correlation| (white diagonal).
        let side = pictures.correlationSide, zoom = max(1, 256 / side), width = side * zoom
        var pixels = [UInt8](repeating: 0, count: width * width)
        for y in 0..<width {
            for x in 0..<width {
                pixels[y * width + x] = UInt8(max(0, min(255, (pictures.correlationMap[(y / zoom) * side + x / zoom] * 255).rounded())))
            }
        }
        let png = try PNGEncoder.encode(try Image8(width: width, height: width, channels: 1, pixels: pixels))
        fields.append(MetricsField(tag: "embeddings/correlation", .image(MetricsImage(width: width, height: width, channels: 1,
                                                                                     png: png))))
        return fields
    }
}

extension BatchLoader: BatchSource {}

extension Trainer where R == JointEmbeddingRecipe {
    /// Builds a joint-embedding run: the recipe from `configuration`, then the engine.
    ///
    /// - Parameters:
    ///   - configuration: the validated config.
    ///   - communicator: the ranks of the job.
    ///   - runDirectory: where the resolved config, metrics and checkpoints go.
    ///   - checkpoints: the checkpoint storage (default: HDF5 files in the run directory).
    ///   - log: prints a line (rank 0 only: others pass a no-op).
    public convenience init(configuration: TrainingConfiguration, communicator: any Communicator, runDirectory: String,
                            checkpoints: (any CheckpointStorage)? = nil, codeVersion: String = AntiCollapseVersion.current,
                            log: @escaping (String) -> Void = { print($0) }) throws {
        try self.init(recipe: JointEmbeddingRecipe(configuration: configuration, communicator: communicator),
                      runDirectory: runDirectory, checkpoints: checkpoints, codeVersion: codeVersion, log: log)
    }

    /// The model being trained.
    public var model: Model<Float> { recipe.model }
    /// The training data.
    public var dataset: ShardedDataset { recipe.dataset }
}
