import Communication
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

/// The data-parallel training loop over a ``Recipe``: on every rank in lockstep, read this
/// rank's batch, ``TrainStep`` (the recipe's forward/loss/backward, one gradient all-reduce — a
/// sum — and the update), the recipe's after-update hook, metrics, checkpoints, the stop signal.
///
/// Three layers, as in torchtitan: ``train(stopAfter:)`` (the outer loop, checkpoints,
/// metrics), ``TrainStep/run(learningRate:clock:_:)`` (one optimiser step) and
/// ``Recipe/forwardBackward(_:step:communicator:clock:)`` (the model's own forward and loss).
///
/// One process runs exactly this code with a ``SingleProcessCommunicator``; the in-process
/// tests with a ``ThreadCommunicator``; `mpirun` with an ``MPICommunicator``.
public final class Trainer<R: Recipe> {
    public let recipe: R
    public var configuration: RunConfiguration<R.Settings> { recipe.configuration }
    public var communicator: any Communicator { recipe.communicator }
    public let runDirectory: String
    public let optimizer: any Optimizer<Float>
    public let checkpoints: any CheckpointStorage
    public let totalSteps: Int
    private let schedule: LearningRateSchedule
    private let trainStep: TrainStep<Float>
    /// `communicator`, timed: the training step's collectives go through it.
    private let collectives: TimedCommunicator
    private let log: (String) -> Void
    private let codeVersion: String
    /// Steps completed (the next step to run).
    public private(set) var step = 0
    private var lastCheckpoint: String?

    /// Wraps a built recipe in the engine.
    ///
    /// - Parameters:
    ///   - recipe: the model, its data and its loss, built on every rank from the config.
    ///   - runDirectory: where the resolved config, metrics and checkpoints go.
    ///   - checkpoints: the checkpoint storage (default: HDF5 files in `runDirectory/checkpoints`).
    ///   - log: prints a line (rank 0 only: others pass a no-op).
    public init(recipe: R, runDirectory: String, checkpoints: (any CheckpointStorage)? = nil,
                codeVersion: String = AntiCollapseVersion.current, log: @escaping (String) -> Void = { print($0) }) throws {
        self.recipe = recipe
        self.runDirectory = runDirectory
        self.codeVersion = codeVersion
        let communicator = recipe.communicator
        self.log = communicator.isRoot ? log : { _ in }
        let configuration = recipe.configuration
        let schedule = configuration.schedule
        totalSteps = schedule.steps > 0 ? schedule.steps : schedule.epochs * recipe.stepsPerEpoch
        optimizer = try configuration.optimizer.makeOptimizer(parameters: recipe.parameters)
        let peak = scaledLearningRate(base: configuration.optimizer.learningRate, globalBatchSize: schedule.globalBatchSize,
                                      scaleByBatch: configuration.optimizer.scaleByBatch)
        self.schedule = try LearningRateSchedule.warmupCosine(
            base: peak,
            warmupSteps: min(Int((schedule.warmupEpochs * Double(recipe.stepsPerEpoch)).rounded()), totalSteps - 1),
            totalSteps: totalSteps, finalFraction: schedule.finalLearningRateFraction).validated()
        collectives = TimedCommunicator(communicator)
        trainStep = TrainStep(parameters: recipe.parameters, optimizer: optimizer, communicator: collectives,
                              clipGradientNorm: configuration.optimizer.clipGradientNorm)
        self.checkpoints = checkpoints ?? HDF5CheckpointDirectory(directory: (runDirectory as NSString).appendingPathComponent("checkpoints"))
    }

    /// The model's state group (parameters, buffers and the run's optimizer) and the recipe's others.
    public var stateGroups: [StateGroup] {
        [StateGroup(name: Checkpoint.modelGroup, parameters: recipe.parameters, buffers: recipe.buffers, optimizer: optimizer)]
            + recipe.extraStateGroups
    }

    // MARK: Resume

    /// Restores the state of `checkpoint`: every state group (parameters, running statistics,
    /// optimizer state) and the step (hence the data position, augmentation and learning rate).
    ///
    /// A format-1 checkpoint (model only) restores the model and leaves the other groups as new.
    ///
    /// - Throws: ``TrainingError`` listing the config keys that differ when the checkpoint was
    ///   written by an incompatible config (model, optimizer, seed, global batch, dataset), or
    ///   naming a tensor whose shape differs.
    public func restore(_ checkpoint: Checkpoint, from path: String) throws {
        let stored = try RunConfiguration<R.Settings>.load(yaml: checkpoint.config, source: path)
        let differences = RunConfiguration<R.Settings>.incompatibleKeys(stored, configuration)
        guard differences.isEmpty else {
            throw TrainingError("checkpoint \(path) was written by an incompatible config; keys that differ: \(differences.joined(separator: ", "))")
        }
        for group in stateGroups {
            guard let tensors = checkpoint.groups[group.name] else {
                if group.name == Checkpoint.modelGroup || checkpoint.formatVersion >= 2 {
                    throw TrainingError("checkpoint \(path) has no state group \(group.name)")
                }
                continue
            }
            let stepCount = group.name == Checkpoint.modelGroup ? checkpoint.optimizerStepCount : checkpoint.groupStepCounts[group.name]
            try group.load(tensors, stepCount: stepCount, from: path)
        }
        step = checkpoint.step
        lastCheckpoint = path
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
        let position = recipe.position(ofStep: step)
        var groups: [String: StateDict] = [:], counts: [String: Int] = [:]
        for group in stateGroups {
            groups[group.name] = group.stateDict
            if group.name != Checkpoint.modelGroup, let optimizer = group.optimizer { counts[group.name] = optimizer.stepCount }
        }
        return Checkpoint(step: step, epoch: position.epoch, stepInEpoch: position.stepInEpoch, seed: configuration.seed,
                          globalBatchSize: configuration.schedule.globalBatchSize, worldSize: communicator.size,
                          optimizerName: configuration.optimizer.name.rawValue, optimizerStepCount: optimizer.stepCount,
                          config: try configuration.yaml(), codeVersion: codeVersion, groups: groups, groupStepCounts: counts)
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

    /// FNV-1a over the bit patterns of every parameter and buffer of every state group.
    private func parameterFingerprint() -> UInt64 {
        var hash = FNV1a()
        for group in stateGroups {
            for store in [group.parameters, group.buffers].compactMap({ $0 }) {
                store.values.withUnsafeBufferPointer { hash.mixBitPatterns($0) }
            }
        }
        return hash.value
    }

    // MARK: The loop

    /// Trains from the current step to the last (or `stopAfter` more steps), writing metrics and
    /// checkpoints; a SIGTERM/SIGINT ends it early with a checkpoint.
    public func train(stopAfter: Int? = nil) throws -> TrainingSummary {
        let batches = try recipe.makeBatchSource(startStep: step)
        defer { batches.stop() }
        let metrics = try MetricsWriter(runDirectory: runDirectory, enabled: communicator.isRoot, startStep: step)
        let tensorBoard = communicator.isRoot ? try TensorBoardWriter(directory: runDirectory) : nil
        let progress = ProgressPrinter(log: log, enabled: communicator.isRoot, startStep: step)
        let lastStep = min(totalSteps, stopAfter.map { step + $0 } ?? totalSteps)
        let clock = PhaseClock()
        let samplesPerStep = configuration.schedule.globalBatchSize
        var outcome = TrainStep<Float>.Outcome(loss: StepLoss(loss: .nan), gradientNorm: .nan)
        var stoppedBySignal = false
        var trainingSeconds = 0.0, samples = 0
        // Since the last record: step time, time waiting for the loader.
        var windowSeconds = 0.0, windowDataWait = 0.0
        collectives.reset()
        let everyCheckpoint = configuration.checkpoint.everySteps
        log("training \(recipe.summary): steps \(step)..<\(lastStep) of \(totalSteps), global batch \(samplesPerStep) over \(communicator.size) rank(s), \(recipe.parameters.count) parameters")

        while step < lastStep {
            let started = Date()
            let batch = try batches.next()
            windowDataWait += Date().timeIntervalSince(started)
            let learningRate = schedule.learningRate(at: step)
            do {
                outcome = try trainStep.run(learningRate: learningRate) {
                    try recipe.forwardBackward(batch, step: step, communicator: collectives, clock: clock)
                }
            } catch let failure as TrainStep<Float>.Failure {
                throw TrainingError("\(failure) at step \(step); the last good checkpoint is \(lastCheckpoint ?? "none")")
            }
            step += 1
            let seconds = Date().timeIntervalSince(started)
            trainingSeconds += seconds
            windowSeconds += seconds
            samples += samplesPerStep

            // Lockstep decisions: a signal on any rank stops every rank after this step.
            var stop = [StopSignal.requested ? Int64(1) : 0]
            try communicator.allReduce(&stop, .max)
            let logging = step % configuration.logging.everySteps == 0 || step == lastStep || stop[0] != 0
            let extra = try recipe.afterUpdate(batch, step: step, record: logging, isLastStep: step == lastStep)
            if logging || !extra.isEmpty {
                let rate = Double(samples) / max(trainingSeconds, 1e-9)
                let record = MetricsRecord(step: step, epoch: recipe.position(ofStep: step - 1).epoch, loss: outcome.loss.loss,
                                           terms: outcome.loss.terms, learningRate: learningRate, samplesPerSecond: rate,
                                           gradientNorm: outcome.gradientNorm,
                                           communicatedBytes: outcome.loss.communicatedBytes + trainStep.gradientBytes,
                                           dataWaitFraction: windowDataWait / max(windowSeconds, 1e-9),
                                           collectiveFraction: collectives.seconds / max(windowSeconds, 1e-9), extra: extra)
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
        return TrainingSummary(step: step, totalSteps: totalSteps, stoppedBySignal: stoppedBySignal, loss: outcome.loss.loss,
                               terms: outcome.loss.terms, checkpoint: lastCheckpoint, seconds: trainingSeconds,
                               samplesPerSecond: Double(samples) / max(trainingSeconds, 1e-9))
    }
}

/// The version of this code, written into checkpoints.
public enum AntiCollapseVersion {
    public static let current = "0.2.0"
}
