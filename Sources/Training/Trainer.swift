import Communication
import Datasets
import Foundation
import Layers
import Objectives
import Optimizers
import Synchronization
import Tensor

/// How a run starts.
public enum ResumeMode: Equatable, Sendable {
    /// From scratch.
    case none
    /// From the newest valid checkpoint in the run directory, if any (skipping corrupt ones).
    case automatic
    /// From this checkpoint file.
    case path(String)

    /// `auto`, `none` or a path, as given to `--resume`.
    public init(argument: String) {
        switch argument {
        case "auto": self = .automatic
        case "none", "": self = .none
        default: self = .path(argument)
        }
    }
}

/// What a finished (or stopped) run reports.
public struct TrainingSummary: Sendable {
    /// Steps completed, over the whole run (including before a resume).
    public var step: Int
    public var totalSteps: Int
    /// Whether a SIGTERM/SIGINT stopped the run early (after writing a checkpoint).
    public var stoppedBySignal: Bool
    /// The last step's loss and terms.
    public var loss: Double
    public var terms: [ObjectiveTerm]
    /// The last checkpoint written or resumed from.
    public var checkpoint: String?
    /// Seconds spent in training steps, and samples a second over them.
    public var seconds: Double
    public var samplesPerSecond: Double
}

/// A fault that stops training: a non-finite loss or gradient, a drifted rank, a bad checkpoint.
public struct TrainingError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// SIGTERM and SIGINT ask a run to finish its step, write a checkpoint and exit 0 (how Slurm
/// preempts a job).
public enum StopSignal {
    private static let flag = Atomic<Int32>(0)

    /// Installs the handlers (idempotent).
    public static func install() {
        signal(SIGTERM) { _ in StopSignal.flag.store(1, ordering: .relaxed) }
        signal(SIGINT) { _ in StopSignal.flag.store(1, ordering: .relaxed) }
    }

    /// Whether a signal has arrived.
    public static var requested: Bool { flag.load(ordering: .relaxed) != 0 }

    /// Forgets a signal (tests).
    public static func reset() { flag.store(0, ordering: .relaxed) }
}

/// The data-parallel training loop: read this rank's rows, make the views, forward
/// (synchronised batch norm), the objective (one fused statistics all-reduce), backward, one
/// gradient all-reduce (a sum), update — on every rank in lockstep.
///
/// One process runs exactly this code with a ``SingleProcessCommunicator``; the in-process
/// tests with a ``ThreadCommunicator``; `mpirun` with an ``MPICommunicator``.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let communicator: any Communicator
    public let runDirectory: String
    public let model: Model<Float>
    public let optimizer: TrainingOptimizer
    public let objective: any Objective<Float>
    public let checkpoints: any CheckpointStorage
    public let dataset: ShardedDataset
    public let sampler: GlobalBatchSampler
    public let totalSteps: Int
    private let schedule: LearningRateSchedule
    private let synchronizer: GradientSynchronizer<Float>
    /// `communicator`, timed: the training step's collectives go through it.
    private let collectives: TimedCommunicator
    private let log: (String) -> Void
    private let codeVersion: String
    /// Steps completed (the next step to run).
    public private(set) var step = 0
    private var lastCheckpoint: String?

    /// Builds everything a run needs; every rank builds the same model from the seed.
    ///
    /// - Parameters:
    ///   - configuration: the validated config.
    ///   - communicator: the ranks of the job.
    ///   - runDirectory: where the resolved config, metrics and checkpoints go.
    ///   - checkpoints: the checkpoint storage (default: HDF5 files in the run directory).
    ///   - log: prints a line (rank 0 only: others pass a no-op).
    public init(configuration: TrainingConfiguration, communicator: any Communicator, runDirectory: String,
                checkpoints: (any CheckpointStorage)? = nil, codeVersion: String = AntiCollapseVersion.current,
                log: @escaping (String) -> Void = { print($0) }) throws {
        self.configuration = configuration
        self.communicator = communicator
        self.runDirectory = runDirectory
        self.codeVersion = codeVersion
        self.log = communicator.isRoot ? log : { _ in }
        let schedule = configuration.schedule
        guard schedule.globalBatchSize >= communicator.size else {
            throw ConfigurationError("schedule.global_batch_size: \(schedule.globalBatchSize) rows cannot be split over \(communicator.size) ranks (fewer than one row a rank)")
        }
        dataset = try ShardedDataset(configuration.data.train)
        let inputShape = configuration.model.encoder.inputShape
        guard dataset.featureCount == inputShape.reduce(1, *) else {
            throw ConfigurationError("model.encoder: takes inputs of shape \(inputShape), but \(configuration.data.train) has rows of shape \(dataset.featureShape)")
        }
        sampler = try GlobalBatchSampler(rowCount: dataset.rowCount, globalBatchSize: schedule.globalBatchSize,
                                         seed: configuration.seed)
        totalSteps = schedule.steps > 0 ? schedule.steps : schedule.epochs * sampler.stepsPerEpoch
        let embeddingWidth = configuration.model.projector?.outputFeatures ?? configuration.model.encoder.outputFeatures
        if configuration.objective.name == .wmse {
            let whitened = configuration.objective.wmse.subBatchSize > 0 ? configuration.objective.wmse.subBatchSize : schedule.globalBatchSize
            guard whitened > embeddingWidth else {
                throw ConfigurationError("objective.wmse: whitening needs more rows than embedding features, but a whitened batch has \(whitened) rows (objective.wmse.sub_batch_size or schedule.global_batch_size) for \(embeddingWidth) features")
            }
            if configuration.objective.wmse.subBatchSize > 0 && schedule.globalBatchSize % whitened != 0 {
                throw ConfigurationError("objective.wmse.sub_batch_size: \(whitened) does not divide schedule.global_batch_size \(schedule.globalBatchSize)")
            }
        }
        model = try Model<Float>(configuration.model, seed: configuration.seed)
        optimizer = try TrainingOptimizer(configuration.optimizer, parameters: model.parameters)
        objective = Trainer.makeObjective(configuration)
        let peak = scaledLearningRate(base: configuration.optimizer.learningRate, globalBatchSize: schedule.globalBatchSize,
                                      scaleByBatch: configuration.optimizer.scaleByBatch)
        self.schedule = try LearningRateSchedule.warmupCosine(
            base: peak, warmupSteps: min(Int((schedule.warmupEpochs * Double(sampler.stepsPerEpoch)).rounded()), totalSteps - 1),
            totalSteps: totalSteps, finalFraction: schedule.finalLearningRateFraction).validated()
        collectives = TimedCommunicator(communicator)
        synchronizer = GradientSynchronizer(parameters: model.parameters, communicator: collectives)
        self.checkpoints = checkpoints ?? HDF5CheckpointDirectory(directory: (runDirectory as NSString).appendingPathComponent("checkpoints"))
    }

    static func makeObjective(_ configuration: TrainingConfiguration) -> any Objective<Float> {
        let objective = configuration.objective
        switch objective.name {
        case .vicreg:
            return VICReg<Float>(invarianceWeight: objective.vicreg.invariance, varianceWeight: objective.vicreg.variance,
                                 covarianceWeight: objective.vicreg.covariance)
        case .barlowTwins:
            return BarlowTwins<Float>(offDiagonalWeight: objective.barlowTwins.lambda)
        case .wmse:
            return WMSE<Float>(shrinkage: objective.wmse.shrinkage,
                               whiteningSize: objective.wmse.subBatchSize > 0 ? objective.wmse.subBatchSize : nil)
        case .sigreg:
            return SIGReg<Float>(directions: .random(count: objective.sigreg.directions))
        case .lejepa:
            return LeJEPA<Float>(globalViewCount: configuration.data.globalViews, sigregWeight: objective.lejepa.lambda,
                                 directions: .random(count: objective.lejepa.directions))
        }
    }

    // MARK: Resume

    /// Restores the state of `checkpoint`: parameters, running statistics, optimizer state and
    /// the step (hence the data position, augmentation and learning rate).
    ///
    /// - Throws: ``TrainingError`` listing the config keys that differ when the checkpoint was
    ///   written by an incompatible config (model, optimizer, seed, global batch, dataset), or
    ///   naming a tensor whose shape differs.
    public func restore(_ checkpoint: Checkpoint, from path: String) throws {
        let stored = try TrainingConfiguration.load(yaml: checkpoint.config, source: path)
        let differences = Trainer.incompatibleKeys(stored, configuration)
        guard differences.isEmpty else {
            throw TrainingError("checkpoint \(path) was written by an incompatible config; keys that differ: \(differences.joined(separator: ", "))")
        }
        for (prefix, store) in [("params", model.parameters), ("buffers", model.buffers)] {
            for entry in store.entries {
                try copy(checkpoint, "\(prefix)/\(entry.name)", into: store.view(of: store.values, entry), path: path)
            }
        }
        for slot in optimizer.slotNames {
            let buffer = optimizer.slot(slot)
            for entry in model.parameters.entries {
                try copy(checkpoint, "optimizer/\(entry.name)/\(slot)", into: model.parameters.view(of: buffer, entry), path: path)
            }
        }
        optimizer.stepCount = checkpoint.optimizerStepCount
        step = checkpoint.step
        lastCheckpoint = path
    }

    private func copy(_ checkpoint: Checkpoint, _ name: String, into target: Tensor<Float>, path: String) throws {
        guard let (shape, values) = checkpoint.tensors[name] else { throw TrainingError("checkpoint \(path) has no tensor /\(name)") }
        guard shape == target.shape else {
            throw TrainingError("checkpoint \(path): /\(name) has shape \(shape), the model expects \(target.shape)")
        }
        target.copy(from: Tensor(shape: shape, scalars: values))
    }

    /// The keys whose values must agree for a checkpoint to resume a run.
    static func incompatibleKeys(_ a: TrainingConfiguration, _ b: TrainingConfiguration) -> [String] {
        guard let left = try? ConfigurationTree.encode(a), let right = try? ConfigurationTree.encode(b) else { return ["(config)"] }
        let fixed = ["model", "seed", "optimizer.name", "schedule.global_batch_size", "data.train", "data.global_views",
                     "data.local_views", "objective.name"]
        func flatten(_ tree: [String: Any], _ prefix: String = "") -> [String: String] {
            var result: [String: String] = [:]
            for (key, value) in tree {
                let path = prefix.isEmpty ? key : "\(prefix).\(key)"
                if let inner = value as? [String: Any] { result.merge(flatten(inner, path)) { $1 } } else { result[path] = "\(value)" }
            }
            return result
        }
        let l = flatten(left), r = flatten(right)
        return Set(l.keys).union(r.keys).filter { key in
            fixed.contains { key == $0 || key.hasPrefix($0 + ".") } && l[key] != r[key]
        }.sorted()
    }

    /// Restores according to `mode`; returns the checkpoint used.
    @discardableResult
    public func resume(_ mode: ResumeMode) throws -> String? {
        switch mode {
        case .none:
            return nil
        case .automatic:
            // Rank 0 picks (and has read) the newest valid checkpoint; the others read the same file.
            let newest = communicator.isRoot ? try checkpoints.newestValid(warn: { log("warning: \($0)") }) : nil
            var stepBox = [Int64(newest?.checkpoint.step ?? -1)]
            try communicator.broadcast(&stepBox, root: 0)
            guard stepBox[0] >= 0 else {
                log("no checkpoint in \(runDirectory): starting from scratch")
                return nil
            }
            let path = newest?.path ?? checkpoints.path(step: Int(stepBox[0]))
            try restore(try newest?.checkpoint ?? checkpoints.read(path), from: path)
            return path
        case let .path(path):
            try restore(try checkpoints.read(path), from: path)
            return path
        }
    }

    // MARK: Checkpoints

    /// The state to save now.
    public func makeCheckpoint() throws -> Checkpoint {
        let tensors = Checkpoint.tensors(of: model, optimizerSlots: optimizer.slotNames.map { ($0, optimizer.slot($0)) })
        let position = sampler.position(ofStep: step)
        return Checkpoint(step: step, epoch: position.epoch, stepInEpoch: position.stepInEpoch, seed: configuration.seed,
                          globalBatchSize: configuration.schedule.globalBatchSize, worldSize: communicator.size,
                          optimizerName: configuration.optimizer.name.rawValue, optimizerStepCount: optimizer.stepCount,
                          config: try configuration.yaml(), codeVersion: codeVersion, tensors: tensors)
    }

    /// Checks that every rank holds the same parameters, then rank 0 writes a checkpoint and
    /// prunes old ones. Every rank must call it.
    @discardableResult
    public func writeCheckpoint() throws -> String? {
        let all = try communicator.allGather([Int64(bitPattern: parameterFingerprint())])
        if Set(all).count > 1 {
            throw TrainingError("ranks hold different parameters at step \(step) (fingerprints \(all.map { String(UInt64(bitPattern: $0), radix: 16) })): they drifted apart")
        }
        var path: String?
        if communicator.isRoot {
            path = try checkpoints.write(try makeCheckpoint())
            try checkpoints.prune(keep: configuration.checkpoint.keep)
        }
        try communicator.barrier()
        lastCheckpoint = path ?? lastCheckpoint
        return path
    }

    private func parameterFingerprint() -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for store in [model.parameters, model.buffers] {
            store.values.withUnsafeBufferPointer { values in
                for value in values { hash = (hash ^ UInt64(value.bitPattern)) &* 0x0000_0100_0000_01b3 }
            }
        }
        return hash
    }

    // MARK: The loop

    /// Trains from the current step to the last (or `stopAfter` more steps), writing metrics and
    /// checkpoints; a SIGTERM/SIGINT ends it early with a checkpoint.
    public func train(stopAfter: Int? = nil) throws -> TrainingSummary {
        let plan = ViewPlan(globalCount: configuration.data.globalViews, globalAugmentation: configuration.data.augmentation,
                            localCount: configuration.data.localViews, localAugmentation: configuration.data.localAugmentation)
        let loader = try BatchLoader(dataset: dataset, sampler: sampler, rank: communicator.rank, worldSize: communicator.size,
                                     plan: plan, augmentationSeed: configuration.seed, startStep: step,
                                     prefetchDepth: configuration.data.prefetch)
        defer { loader.stop() }
        let metrics = try MetricsWriter(runDirectory: runDirectory, enabled: communicator.isRoot, startStep: step)
        let tensorBoard = communicator.isRoot ? try TensorBoardWriter(directory: runDirectory) : nil
        let progress = ProgressPrinter(log: log, enabled: communicator.isRoot, startStep: step)
        let probe = configuration.logging.onlineProbe && dataset.hasLabels && dataset.classCount > 1
            ? try OnlineProbe(features: configuration.model.encoder.outputFeatures, classes: dataset.classCount,
                              seed: configuration.seed, communicator: communicator)
            : nil
        let rowCounts = (0..<communicator.size).map { sampler.rankRange(rank: $0, worldSize: communicator.size).count }
        let reduction = StatisticsReduction(rawValue: configuration.objective.reduction) ?? .automatic
        let lastStep = min(totalSteps, stopAfter.map { step + $0 } ?? totalSteps)
        let passes = ViewPasses()
        var result = ObjectiveResult(loss: .nan, terms: [], communicatedBytes: 0, reduction: reduction)
        var stoppedBySignal = false
        var trainingSeconds = 0.0, samples = 0
        // Since the last record: step time, time waiting for the loader.
        var windowSeconds = 0.0, windowDataWait = 0.0
        collectives.reset()
        let everyCheckpoint = configuration.checkpoint.everySteps
        log("training \(configuration.objective.name.rawValue) on \(dataset.location) (\(dataset.rowCount) rows): steps \(step)..<\(lastStep) of \(totalSteps), global batch \(configuration.schedule.globalBatchSize) over \(communicator.size) rank(s), \(model.parameters.count) parameters")

        while step < lastStep {
            let started = Date()
            let batch = try loader.next()
            windowDataWait += Date().timeIntervalSince(started)
            let learningRate = schedule.learningRate(at: step)
            optimizer.learningRate = learningRate
            model.parameters.zeroGradients()
            let context = LayerContext(training: true, communicator: collectives, needsInputGradient: false)
            let (embeddings, representation) = try passes.forward(batch.views, model: model, context: context)
            if let probe, let labels = batch.labels {
                try probe.step(representation: representation, labels: labels,
                               globalBatchSize: configuration.schedule.globalBatchSize)
            }
            result = try objective.evaluate(views: embeddings, gradients: passes.gradients,
                                            context: ObjectiveContext(communicator: collectives, step: step, seed: configuration.seed,
                                                                      reduction: reduction,
                                                                      costModel: configuration.objective.costModel.model,
                                                                      rowCounts: rowCounts))
            guard result.loss.isFinite else {
                let bad = result.terms.filter { !$0.value.isFinite }.map(\.name)
                throw TrainingError("the loss is \(result.loss) at step \(step)\(bad.isEmpty ? "" : " (non-finite terms: \(bad.joined(separator: ", ")))"); the last good checkpoint is \(lastCheckpoint ?? "none")")
            }
            try passes.backward(model: model, context: context)
            try synchronizer.allReduceGradients()
            let gradientNorm = model.parameters.gradientNorm()
            guard gradientNorm.isFinite else {
                throw TrainingError("a gradient is not finite at step \(step) (global norm \(gradientNorm)); the last good checkpoint is \(lastCheckpoint ?? "none")")
            }
            if configuration.optimizer.clipGradientNorm > 0 { model.parameters.clipGradientNorm(maxNorm: configuration.optimizer.clipGradientNorm) }
            optimizer.step()
            step += 1
            let seconds = Date().timeIntervalSince(started)
            trainingSeconds += seconds
            windowSeconds += seconds
            samples += configuration.schedule.globalBatchSize

            // Lockstep decisions: a signal on any rank stops every rank after this step.
            var stop = [StopSignal.requested ? Int64(1) : 0]
            try communicator.allReduce(&stop, .max)
            let logging = step % configuration.logging.everySteps == 0 || step == lastStep || stop[0] != 0
            var diagnostics: CollapseDiagnostics?
            if configuration.logging.diagnosticsEvery > 0 && (step % configuration.logging.diagnosticsEvery == 0 || step == lastStep) {
                diagnostics = try CollapseDiagnostics.measure(embeddings[0], communicator: communicator, step: step,
                                                              seed: configuration.seed)
            }
            if logging || diagnostics != nil {
                let rate = Double(samples) / max(trainingSeconds, 1e-9)
                let record = MetricsRecord(step: step, epoch: batch.epoch, loss: result.loss, terms: result.terms,
                                           learningRate: learningRate, samplesPerSecond: rate, gradientNorm: gradientNorm,
                                           communicatedBytes: result.communicatedBytes + synchronizer.bytesPerStep,
                                           diagnostics: diagnostics, onlineProbe: probe?.take(),
                                           dataWaitFraction: windowDataWait / max(windowSeconds, 1e-9),
                                           collectiveFraction: collectives.seconds / max(windowSeconds, 1e-9))
                try metrics.write(record)
                try tensorBoard?.write(record)
                if logging { progress.show(record, totalSteps: totalSteps, lastStep: lastStep) }
                windowSeconds = 0
                windowDataWait = 0
                collectives.reset()
            }
            if stop[0] != 0 {
                log("stop requested (SIGTERM/SIGINT): writing a checkpoint at step \(step)")
                stoppedBySignal = true
                break
            }
            if everyCheckpoint > 0 && step % everyCheckpoint == 0 && step < lastStep { try writeCheckpoint() }
        }
        progress.finish()
        if step > 0 && (stoppedBySignal || step == lastStep) && lastCheckpoint != checkpoints.path(step: step) {
            try writeCheckpoint()
        }
        return TrainingSummary(step: step, totalSteps: totalSteps, stoppedBySignal: stoppedBySignal, loss: result.loss,
                               terms: result.terms, checkpoint: lastCheckpoint, seconds: trainingSeconds,
                               samplesPerSecond: Double(samples) / max(trainingSeconds, 1e-9))
    }
}

/// The optimizer of a run, whichever it is, with the operations the trainer needs.
public final class TrainingOptimizer {
    public let name: String
    private let setLearningRate: (Double) -> Void
    private let takeStep: () -> Void
    private let getStepCount: () -> Int
    private let setStepCount: (Int) -> Void
    public let slotNames: [String]
    private let slots: (String) -> Tensor<Float>

    public convenience init(_ configuration: OptimizerConfiguration, parameters: ParameterStore<Float>) throws {
        switch configuration.name {
        case .lars:
            self.init(try LARS(parameters: parameters, learningRate: configuration.learningRate, weightDecay: configuration.weightDecay,
                               momentum: configuration.momentum, eta: configuration.eta), name: "lars")
        case .adamw:
            self.init(try AdamW(parameters: parameters, learningRate: configuration.learningRate, beta1: configuration.beta1,
                                beta2: configuration.beta2, epsilon: configuration.epsilon, weightDecay: configuration.weightDecay,
                                excludeBiasAndNormalization: true), name: "adamw")
        case .sgd:
            self.init(try SGD(parameters: parameters, learningRate: configuration.learningRate, momentum: configuration.momentum,
                              weightDecay: configuration.weightDecay, nesterov: configuration.nesterov,
                              excludeBiasAndNormalization: true), name: "sgd")
        }
    }

    init<O: Optimizer>(_ optimizer: O, name: String) where O.Scalar == Float {
        self.name = name
        setLearningRate = { optimizer.learningRate = $0 }
        takeStep = { optimizer.step() }
        getStepCount = { optimizer.stepCount }
        setStepCount = { optimizer.stepCount = $0 }
        slotNames = optimizer.slotNames
        slots = { optimizer.slot($0) }
    }

    /// The learning rate of the next step.
    public var learningRate: Double = 0 {
        didSet { setLearningRate(learningRate) }
    }
    public var stepCount: Int {
        get { getStepCount() }
        set { setStepCount(newValue) }
    }
    public func step() { takeStep() }
    public func slot(_ name: String) -> Tensor<Float> { slots(name) }
}

/// The version of this code, written into checkpoints.
public enum AntiCollapseVersion {
    public static let current = "0.1.0"
}
