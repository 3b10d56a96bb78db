// `anticollapse train`: the data-parallel training job, under mpirun or as one process.
import ArgumentParser
import Communication
import Foundation
import Layers
import Tensor
import Engine
import JointEmbedding
import WorldModel

/// Trains a model with a self-supervised objective, checkpointing to HDF5 and resuming.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model (one process, or every rank under mpirun / srun).",
        discussion: """
            The config is YAML; every key has a default (see the README and configs/;             `anticollapse config show` prints them all). Override keys with             --set optimizer.learning_rate=0.2 --set schedule.epochs=10.

            The run directory receives config.yaml (the resolved config), metrics.jsonl and             checkpoints/ckpt-<step>.h5, and is locked while the job runs. By default a run resumes             from the newest valid checkpoint in its run directory (--resume auto).

            SIGTERM, SIGINT or SIGUSR1: every rank finishes its step, a checkpoint is written and             the job exits 0. Under mpirun, signal launch/run-graceful (see the README), not mpirun.
            """)

    @Option(name: .long, help: "The YAML config file (default: built-in defaults, VICReg on datasets/mnist5k).")
    var config: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key (dotted snake_case), e.g. schedule.epochs=5.",
                                                         valueName: "key=value"))
    var overrides: [String] = []

    @Option(name: .long, help: "auto (the newest valid checkpoint in the run directory, if any), none, or a checkpoint path.")
    var resume = "auto"

    @Flag(name: .long, help: "With --resume none: delete the run directory's checkpoints and start over (refused without it).")
    var overwrite = false

    @Option(name: .customLong("run-dir"), help: "Where config, metrics and checkpoints go (default: runs/<config name>).")
    var runDirectory: String?

    @Option(name: .customLong("blas-threads"), help: "OpenBLAS threads per rank (default: cores ÷ ranks on the node).")
    var blasThreads: Int?

    @Option(name: .customLong("stop-after"), help: "Stop (with a checkpoint) after this many steps of this invocation.")
    var stopAfter: Int?

    func validate() throws {
        if let blasThreads, blasThreads < 1 { throw ValidationError("--blas-threads must be at least 1") }
        if let stopAfter, stopAfter < 1 { throw ValidationError("--stop-after must be at least 1") }
        if overwrite && ResumeMode(argument: resume) != .none {
            throw ValidationError("--overwrite goes with --resume none (it deletes the run directory's checkpoints)")
        }
    }

    func run() throws {
        try runJob { communicator in
            let text = try config.map { file -> String in
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    throw ConfigurationError("\(file): cannot read the config file")
                }
                return text
            } ?? ""
            switch recipeName(ofConfig: text) {
            case WorldModelSettings.recipeName:
                // Dataset paths made absolute: the saved config and checkpoints work from anywhere.
                let configuration = try WorldModelConfiguration.load(file: config, overrides: overrides).resolvingPaths()
                try train(configuration, communicator: communicator) {
                    try Trainer(configuration: configuration, communicator: communicator, runDirectory: $0)
                }
            case JointEmbeddingSettings.recipeName:
                let configuration = try TrainingConfiguration.load(file: config, overrides: overrides).resolvingPaths()
                try train(configuration, communicator: communicator) {
                    try Trainer(configuration: configuration, communicator: communicator, runDirectory: $0)
                }
            case let other:
                throw ConfigurationError("\(config ?? "config"): recipe: \"\(other)\" is not a recipe; valid: \(JointEmbeddingSettings.recipeName), \(WorldModelSettings.recipeName)")
            }
        }
    }

    /// Trains any recipe: run directory, resolved config, resume, the loop, the summary line.
    private func train<R: Recipe>(_ configuration: RunConfiguration<R.Settings>, communicator: any Communicator,
                                  makeTrainer: (String) throws -> Trainer<R>) throws {
        let threads = configuration.schedule.blasThreads > 0 ? configuration.schedule.blasThreads : blasThreads
        let blas = BLASThreads.configure(override: threads, communicator: communicator)
        let directory = runDirectory ?? "runs/" + (config.map { (($0 as NSString).lastPathComponent as NSString).deletingPathExtension } ?? "default")
        StopSignal.install()
        // Checked and locked before any work: a second job in the same directory stops here.
        let run = try RunDirectory.prepare(directory, communicator: communicator)
        defer { withExtendedLifetime(run) {} }   // the lock is held until the job ends
        let trainer = try makeTrainer(directory)
        if let path = try trainer.resume(ResumeMode(argument: resume), overwrite: overwrite), communicator.isRoot {
            print("resumed from \(path) at step \(trainer.step)")
        }
        if communicator.isRoot {
            try run.write(try configuration.yaml(), to: "config.yaml")
            print("run directory \(directory); \(communicator.size) rank(s) × \(blas) BLAS thread(s)")
        }
        guard trainer.step < trainer.totalSteps else {
            if communicator.isRoot { print("the run is complete: step \(trainer.step) of \(trainer.totalSteps); nothing to train") }
            return
        }
        let summary = try trainer.train(stopAfter: stopAfter)
        if communicator.isRoot {
            let terms = summary.terms.map { "\($0.name) \($0.value)" }.joined(separator: ", ")
            print("done: step \(summary.step)/\(summary.totalSteps), loss \(summary.loss) (\(terms)), "
                  + "\(Int(summary.samplesPerSecond)) samples/s over \(String(format: "%.1f", summary.seconds)) s of steps"
                  + (summary.checkpoint.map { "; checkpoint \($0)" } ?? ""))
        }
    }
}
