import Communication
import Foundation
#if canImport(Glibc)
import Glibc
#endif
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

/// SIGTERM, SIGINT and SIGUSR1 ask a run to finish its step, write a checkpoint and exit 0
/// (how Slurm preempts a job). SIGUSR1 is the one `mpirun` forwards to every rank without
/// killing them a second later: the launch scripts turn a SIGTERM or Ctrl-C into it.
public enum StopSignal {
    private static let flag = Atomic<Int32>(0)

    /// Installs the handlers (idempotent).
    public static func install() {
        signal(SIGTERM) { _ in StopSignal.flag.store(1, ordering: .relaxed) }
        signal(SIGINT) { _ in StopSignal.flag.store(1, ordering: .relaxed) }
        signal(SIGUSR1) { _ in StopSignal.flag.store(1, ordering: .relaxed) }
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
    /// Whether the steps shard the optimizer update over the ranks (`optimizer.sharded_update`).
    public var shardsUpdate: Bool { trainStep.sharded != nil }
    /// `communicator`, timed: the training step's collectives go through it.
    private let collectives: TimedCommunicator
    private let log: (String) -> Void
    private let codeVersion: String
    /// Steps completed (the next step to run).
    public private(set) var step = 0
    /// The newest checkpoint written or resumed from, the same path on every rank.
    public private(set) var lastCheckpoint: String?
    /// The newest checkpoint known good: its parameters then gave a finite loss on the next
    /// step (the newest one may hold weights that are finite but already diverged). Pruning
    /// keeps it; a failure names it.
    public private(set) var lastGoodCheckpoint: String?
    /// The step of ``lastCheckpoint``.
    private var lastCheckpointStep: Int?
    /// Faults to inject, for the fault-injection tests (default: from `ANTICOLLAPSE_FAULTS`).
    public var faults = FaultInjection.fromEnvironment

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
                              clipGradientNorm: configuration.optimizer.clipGradientNorm,
                              shardedUpdate: configuration.optimizer.shardedUpdate,
                              sharedMemory: configuration.optimizer.sharedMemory)
        self.checkpoints = checkpoints ?? HDF5CheckpointDirectory(directory: RunDirectory.checkpointsPath(of: runDirectory))
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
        // Paths compared absolute: a checkpoint of an older build may hold relative ones.
        let stored = try RunConfiguration<R.Settings>.load(yaml: checkpoint.config, source: path).resolvingPaths()
        let differences = RunConfiguration<R.Settings>.incompatibleKeys(stored, configuration.resolvingPaths())
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
            if let scalars = group.scalars, let values = checkpoint.groupScalars[group.name] { scalars.scalarState = values }
        }
        step = checkpoint.step
        lastCheckpoint = path
        lastCheckpointStep = checkpoint.step
        lastGoodCheckpoint = nil
    }

    /// Restores according to `mode`; returns the checkpoint used. Rank 0 chooses the file and
    /// broadcasts its path; every rank reads it and the ranks compare checksums, so they never
    /// resume different files (a run directory that is not shared, or changed under them).
    ///
    /// - Parameter overwrite: with `.none`, start over in a directory that holds checkpoints,
    ///   removing them; without it, that is refused (their steps would mix with the new run's).
    /// - Throws: ``TrainingError`` when `.automatic` finds checkpoints but none usable (it
    ///   lists each and why: starting over silently would throw the run away), when `.none`
    ///   finds checkpoints and `overwrite` is false, or when the ranks read different files.
    @discardableResult
    public func resume(_ mode: ResumeMode, overwrite: Bool = false) throws -> String? {
        switch mode {
        case .none:
            try communicator.together {
                guard communicator.isRoot else { return }
                let existing = try checkpoints.list().filter { (try? checkpoints.peek($0)) != nil }
                guard !existing.isEmpty else { return }
                guard overwrite else {
                    throw TrainingError("--resume none: \(runDirectory) already holds \(existing.count) checkpoint(s) "
                                        + "(newest \(existing.last!)); resume them with --resume auto, choose another --run-dir, "
                                        + "or pass --overwrite to delete them and start over")
                }
                for path in existing { try checkpoints.remove(path) }
                log("--overwrite: removed \(existing.count) checkpoint(s) of an earlier run from \(runDirectory)")
            }
            return nil
        case .automatic:
            var chosen: Checkpoint?
            let path = try communicator.broadcast(text: try communicator.together { () -> String in
                guard communicator.isRoot else { return "" }
                let (newest, unusable) = try checkpoints.newestUsable(warn: { log("warning: \($0)") })
                if newest == nil && !unusable.isEmpty {
                    throw TrainingError("--resume auto: no usable checkpoint in \(runDirectory); not starting over on top of:\n"
                                        + unusable.map { "  \($0.path): \($0.problem)" }.joined(separator: "\n")
                                        + "\nmove them away, or start from scratch with --resume none --overwrite")
                }
                chosen = newest?.checkpoint
                return newest?.path ?? ""
            })
            guard !path.isEmpty else {
                log("no checkpoint in \(runDirectory): starting from scratch")
                return nil
            }
            try restoreOnEveryRank(path, readByRoot: chosen)
            return path
        case let .path(path):
            try restoreOnEveryRank(path, readByRoot: nil)
            return path
        }
    }

    /// Every rank reads `path` (rank 0 may have already), checks that all read the same bytes,
    /// and restores it.
    private func restoreOnEveryRank(_ path: String, readByRoot: Checkpoint?) throws {
        let checkpoint = try communicator.together { try readByRoot ?? checkpoints.read(path) }
        let checksum = UInt64(checkpoint.checksum, radix: 16) ?? 0
        let checksums = try communicator.allGather([Int64(bitPattern: checksum)])
        if Set(checksums).count > 1 {
            let list = checksums.enumerated().map { "rank \($0.offset): \(String(UInt64(bitPattern: $0.element), radix: 16))" }
            throw TrainingError("the ranks read different contents at \(path) (\(list.joined(separator: ", "))): "
                                + "the run directory must be one file system that every rank sees")
        }
        try communicator.together { try restore(checkpoint, from: path) }
    }

    // MARK: Checkpoints

    /// The state to save now. With a sharded update (``shardsUpdate``) the optimizer's slots are
    /// whole only after ``writeCheckpoint(final:)``, which gathers them and which every run ends with.
    public func makeCheckpoint() throws -> Checkpoint {
        let position = recipe.position(ofStep: step)
        var groups: [String: StateDict] = [:], counts: [String: Int] = [:], scalars: [String: [String: Double]] = [:]
        for group in stateGroups {
            groups[group.name] = group.stateDict
            if group.name != Checkpoint.modelGroup, let optimizer = group.optimizer { counts[group.name] = optimizer.stepCount }
            if let values = group.scalars?.scalarState, !values.isEmpty { scalars[group.name] = values }
        }
        var checkpoint = Checkpoint(step: step, epoch: position.epoch, stepInEpoch: position.stepInEpoch, seed: configuration.seed,
                                    globalBatchSize: configuration.schedule.globalBatchSize, worldSize: communicator.size,
                                    optimizerName: configuration.optimizer.name.rawValue, optimizerStepCount: optimizer.stepCount,
                                    config: try configuration.yaml(), codeVersion: codeVersion, groups: groups, groupStepCounts: counts)
        checkpoint.groupScalars = scalars
        return checkpoint
    }

    /// Checks that every rank holds the same, finite, parameters, then rank 0 writes a
    /// checkpoint and prunes old ones; a failure on rank 0 (a full disk) fails every rank.
    /// Every rank must call it.
    ///
    /// - Throws: ``TrainingError`` when the ranks' parameters differ, or when any tensor of the
    ///   state holds NaN or infinity — a diverged state is never written, and the message names
    ///   the last good checkpoint (the same on every rank).
    ///
    /// - Parameter final: the run's (or this invocation's) last checkpoint: pruning then keeps
    ///   exactly `checkpoint.keep`. While training it also keeps the last checkpoint known good
    ///   (see ``lastGoodCheckpoint``), so there may be one file more.
    @discardableResult
    public func writeCheckpoint(final: Bool = false) throws -> String? {
        let all = try communicator.allGather([Int64(bitPattern: parameterFingerprint())])
        if Set(all).count > 1 {
            throw TrainingError("ranks hold different parameters at step \(step) (fingerprints \(all.map { String(UInt64(bitPattern: $0), radix: 16) })): they drifted apart")
        }
        if let tensor = firstNonFiniteTensor() {
            throw TrainingError("\(tensor) holds NaN or infinity after step \(step): the run diverged; no checkpoint is written "
                                + "(lower optimizer.learning_rate, or set optimizer.clip_gradient_norm); "
                                + "the last good checkpoint is \(lastGoodCheckpoint ?? "none")")
        }
        // A sharded update leaves each rank's slots current on its share only.
        try trainStep.gatherOptimizerState()
        let path = checkpoints.path(step: step)
        try communicator.together {
            guard communicator.isRoot else { return }
            let kill = faults.killDuringCheckpointWrite.map { $0 == 0 || $0 == step } ?? false
            let written = try checkpoints.write(try makeCheckpoint(), beforeRename: kill ? { Glibc.kill(getpid(), SIGKILL) } : nil)
            try checkpoints.prune(keep: configuration.checkpoint.keep, written: written, protecting: final ? nil : lastGoodCheckpoint)
        }
        lastCheckpoint = path
        lastCheckpointStep = step
        return path
    }

    /// The first parameter or buffer (by state group and name) holding NaN or infinity.
    private func firstNonFiniteTensor() -> String? {
        for group in stateGroups {
            for (kind, store) in group.stores {
                let finite = store.values.withUnsafeBufferPointer { $0.allSatisfy(\.isFinite) }
                if finite { continue }
                for entry in store.entries where !store.view(of: store.values, entry).scalars.allSatisfy(\.isFinite) {
                    return "\(group.name == Checkpoint.modelGroup ? "" : group.name + "/")\(kind)/\(entry.name)"
                }
            }
        }
        return nil
    }

    /// FNV-1a over the bit patterns of every parameter and buffer of every state group.
    private func parameterFingerprint() -> UInt64 {
        var hash = FNV1a()
        for group in stateGroups {
            for (_, store) in group.stores {
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
        let tensorBoard = communicator.isRoot ? try TensorBoardWriter(directory: runDirectory, resumingAfter: step) : nil
        // The resolved config on TensorBoard's text dashboard (indented: shown as code).
        try tensorBoard?.write(text: try configuration.yaml().split(separator: "\n", omittingEmptySubsequences: false)
            .map { "    " + $0 }.joined(separator: "\n"), tag: "config", step: step)
        // The flattened config on the HParams dashboard, to compare runs by their last metrics.
        try tensorBoard?.write(hyperparameters: ConfigurationTree.hyperparameters(ConfigurationTree.encode(configuration)),
                               metrics: TensorBoardWriter.comparedMetrics)
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
                throw TrainingError("\(failure) at step \(step); the last good checkpoint is \(lastGoodCheckpoint ?? "none")"
                                    + (lastCheckpoint != lastGoodCheckpoint && lastCheckpoint != nil
                                       ? " (\(lastCheckpoint!) holds the weights that gave it)" : ""))
            }
            // The weights this step started from gave a finite loss: their checkpoint is good.
            if lastCheckpointStep == step { lastGoodCheckpoint = lastCheckpoint }
            step += 1
            if faults.stepSeconds > 0 { Thread.sleep(forTimeInterval: faults.stepSeconds) }
            let seconds = Date().timeIntervalSince(started)
            trainingSeconds += seconds
            windowSeconds += seconds
            samples += samplesPerStep

            // Lockstep decisions: a signal on any rank stops every rank after this step.
            var stop = [StopSignal.requested ? Int64(1) : 0]
            try communicator.allReduce(&stop, .max)
            // Records fall on a schedule of the run, not of this invocation, so a run stopped
            // and resumed writes the records of an uninterrupted one; the last step of an
            // invocation is only shown.
            let logging = step % configuration.logging.everySteps == 0 || step == totalSteps
            let showing = logging || step == lastStep || stop[0] != 0
            let extra = try recipe.afterUpdate(batch, step: step, record: logging, isLastStep: step == totalSteps)
            if logging || showing || !extra.isEmpty {
                let rate = Double(samples) / max(trainingSeconds, 1e-9)
                let record = MetricsRecord(step: step, epoch: recipe.position(ofStep: step - 1).epoch, loss: outcome.loss.loss,
                                           terms: outcome.loss.terms, learningRate: learningRate, samplesPerSecond: rate,
                                           gradientNorm: outcome.gradientNorm,
                                           communicatedBytes: outcome.loss.communicatedBytes + trainStep.gradientBytes,
                                           dataWaitFraction: windowDataWait / max(windowSeconds, 1e-9),
                                           collectiveFraction: collectives.seconds / max(windowSeconds, 1e-9), extra: extra)
                if logging || !extra.isEmpty {
                    try metrics.write(record)
                    try tensorBoard?.write(record)
                    windowSeconds = 0
                    windowDataWait = 0
                    collectives.reset()
                }
                if showing { progress.show(record, totalSteps: totalSteps, lastStep: lastStep) }
            }
            if stop[0] != 0 {
                progress.print(permanent: "stop requested (SIGTERM/SIGINT/SIGUSR1): writing a checkpoint at step \(step)")
                stoppedBySignal = true
                break
            }
            if everyCheckpoint > 0 && step % everyCheckpoint == 0 && step < lastStep { try writeCheckpoint() }
        }
        progress.finish()
        if step > 0 && (stoppedBySignal || step == lastStep) && lastCheckpoint != checkpoints.path(step: step) {
            try writeCheckpoint(final: true)
        }
        return TrainingSummary(step: step, totalSteps: totalSteps, stoppedBySignal: stoppedBySignal, loss: outcome.loss.loss,
                               terms: outcome.loss.terms, checkpoint: lastCheckpoint, seconds: trainingSeconds,
                               samplesPerSecond: Double(samples) / max(trainingSeconds, 1e-9))
    }
}

/// Faults a test injects into a real run (a process, or every rank under mpirun), set by the
/// environment variable `ANTICOLLAPSE_FAULTS`, a comma-separated list of:
/// - `step_seconds=S`: every training step takes S seconds longer (a slow step);
/// - `kill_during_checkpoint_write[=STEP]`: rank 0 kills itself (SIGKILL) when its checkpoint
///   file (of step STEP, or any) is written and flushed but not yet renamed into place.
public struct FaultInjection: Sendable, Equatable {
    public var stepSeconds = 0.0
    /// The step whose checkpoint write is killed (0: the first one).
    public var killDuringCheckpointWrite: Int?

    public init() {}

    /// The faults `ANTICOLLAPSE_FAULTS` asks for (none when unset).
    public static var fromEnvironment: FaultInjection {
        var faults = FaultInjection()
        for item in (ProcessInfo.processInfo.environment["ANTICOLLAPSE_FAULTS"] ?? "").split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            switch parts[0] {
            case "step_seconds": faults.stepSeconds = parts.count > 1 ? Double(parts[1]) ?? 0 : 0
            case "kill_during_checkpoint_write": faults.killDuringCheckpointWrite = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            default: break
            }
        }
        return faults
    }
}

/// The version of this code, written into checkpoints.
public enum AntiCollapseVersion {
    public static let current = "0.2.0"
}
