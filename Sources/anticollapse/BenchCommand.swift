// `anticollapse bench`: training-step and objective timings on random inputs, with the BLAS
// sgemm rate of the same run as a yardstick; all-reduce latency and bandwidth (under mpirun),
// loader throughput and checkpoint write/read rates.
import ArgumentParser
import Communication
import Foundation
import Objectives
import Tensor
import Engine
import JointEmbedding
import Layers
import Optimizers
import Performance

/// The benchmark suite: step, objective, comm, data and checkpoint (step and comm also run on
/// several ranks under mpirun).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time training steps, objectives, all-reduce, data loading and checkpoints.",
        subcommands: [StepBench.self, ObjectiveBench.self, CommBench.self, DataBench.self, ClipsBench.self, CheckpointBench.self,
                      ScalingBench.self])
}

extension ObjectiveName: ExpressibleByArgument {
    public init?(argument: String) {
        guard ObjectiveRegistry.settingsType(named: argument) != nil else { return nil }
        self.init(rawValue: argument)
    }

    public static var allValueStrings: [String] { ObjectiveRegistry.names }
}

// MARK: - Option groups shared by the benchmarks

/// `--encoder` and `--projector`: the MLP model of a benchmark.
struct ModelWidthOptions: ParsableArguments {
    @Option(help: "Encoder MLP widths (bench step also takes convnet, resnet or vit).") var encoder = "784,1024,1024"
    @Option(help: "Projector MLP widths (none for no projector).") var projector = "1024,2048,2048"

    var encoderWidths: [Int] { get throws { try widths(encoder, option: "--encoder") } }
    var projectorWidths: [Int] { get throws { try widths(projector, option: "--projector") } }
}

/// `--objective` and `--directions`.
struct ObjectiveOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The objective: \(ObjectiveRegistry.helpList).")) var objective = ObjectiveName.vicreg
    @Option(help: "Random projection directions of the objectives that slice (SIGReg, LeJEPA).") var directions = 1024

    func validate() throws {
        guard directions >= 1 else { throw ValidationError("--directions must be at least 1, got \(directions)") }
    }
}

/// `--threads`.
struct ThreadOptions: ParsableArguments {
    @Option(help: "OpenBLAS threads (default: the trainer's policy).") var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }
}

/// `--json`.
struct JSONOptions: ParsableArguments {
    @Flag(help: "Print the report as JSON too.") var json = false

    func print<T: Encodable>(_ value: T) throws { if json { try printJSON(value) } }
}

/// Parses `784,1024,1024`.
func widths(_ text: String, option: String) throws -> [Int] {
    if text.isEmpty || text == "none" { return [] }
    return try positiveIntegers(text, option: option, expected: "positive comma-separated widths such as 784,1024,1024")
}

/// Parses comma-separated positive integers, or names `option` and what was `expected`.
private func positiveIntegers(_ text: String, option: String, expected: String) throws -> [Int] {
    let values = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) > 0 }) else {
        throw ValidationError("\(option): expected \(expected), got \(text)")
    }
    return values.map { $0! }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

struct StepBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step",
        abstract: "Time forward + backward (2 views) + gradient all-reduce + optimizer update of a model on random inputs.",
        discussion: """
            The encoder is an MLP (--encoder 784,1024,1024) or a convolutional or transformer encoder of the model \
            description (--encoder convnet|resnet|vit) on random images of --image C,H,W; --config FILE takes a run \
            config's whole model instead. The issue-17 ResNet step: --encoder resnet --image 3,32,32 --stem-channels 32 \
            --stages 32,64,128,256 --blocks 2 --projector 256,1024,1024 --batch 128 --optimizer sgd. \
            Under mpirun every rank runs --batch rows per view (weak scaling) and rank 0 prints.
            """)

    @OptionGroup var model: ModelWidthOptions
    @OptionGroup var network: EncoderOptions
    @Option(help: "Rows (images) per view.") var batch = 256
    @OptionGroup var objective: ObjectiveOptions
    @Option(help: "The optimizer: lars (the VICReg reference's) or sgd (momentum 0.9, weight decay 5e-4).")
    var optimizer = Benchmarks.StepOptimizer.lars
    @Option(help: "Shard the update over the ranks (ZeRO-1): automatic (as the trainer: 2 ranks or more, a large enough model), always, never.")
    var shardedUpdate = ShardedUpdate.automatic
    @Flag(inversion: .prefixedNo, help: "On one node, take the sharded update through shared memory (as the trainer's optimizer.shared_memory); --no-shared-memory keeps to MPI's collectives.")
    var sharedMemory = true
    @Option(help: "Timed steps.") var steps = 20
    @Option(help: "Untimed steps first.") var warmup = 3
    @OptionGroup var threads: ThreadOptions
    @OptionGroup var output: JSONOptions

    func validate() throws {
        guard batch >= 2 else { throw ValidationError("--batch must be at least 2") }
        guard steps >= 1, warmup >= 0 else { throw ValidationError("--steps must be ≥ 1 and --warmup ≥ 0") }
    }

    func run() throws {
        BLASThreads.configure(override: threads.threads)
        var options = Benchmarks.StepOptions(projector: try model.projectorWidths, batch: batch,
                                             objective: objective.objective, optimizer: optimizer, steps: steps,
                                             warmup: warmup, directions: objective.directions, shardedUpdate: shardedUpdate)
        options.sharedMemory = sharedMemory
        if let config = network.config {
            options.configuredModel = try TrainingConfiguration.load(file: config).model
        } else if let description = try network.description(kind: model.encoder) {
            options.network = description
        } else {
            options.encoder = try model.encoderWidths
        }
        do { try options.model.validate() } catch { throw ValidationError("\(error)") }
        try runJob { communicator in
            let report = try Benchmarks.step(options, communicator: communicator)
            guard communicator.isRoot else { return }
            print(report.table)
            try output.print(report)
        }
    }
}

extension Benchmarks.StepOptimizer: ExpressibleByArgument {}
extension ShardedUpdate: ExpressibleByArgument {}

/// The options of `bench step` that describe a convolutional or transformer encoder
/// (`--encoder convnet|resnet|vit`); unset ones take the description's defaults.
struct EncoderOptions: ParsableArguments {
    @Option(help: "A run config whose model to time (instead of --encoder and --projector).") var config: String?
    @Option(help: "Image shape C,H,W of a convnet/resnet/vit encoder (H = W).") var image = "3,32,32"
    @Option(help: "convnet: the channels of each block.") var channels: String?
    @Option(help: "convnet: the kernel size.") var kernelSize: Int?
    @Option(help: "resnet: the stem's output channels.") var stemChannels: Int?
    @Option(help: "resnet: the stem's stride (2 for 64×64 images).") var stemStride: Int?
    @Option(help: "resnet: the channels of each stage.") var stages: String?
    @Option(help: "resnet: basic blocks a stage.") var blocks: Int?
    @Option(help: "vit: patch size.") var patchSize: Int?
    @Option(help: "vit: token width.") var width: Int?
    @Option(help: "vit: blocks.") var depth: Int?
    @Option(help: "vit: attention heads.") var heads: Int?

    /// The encoder `kind` names (`convnet`, `resnet`, `vit`), or nil for MLP widths.
    func description(kind: String) throws -> NetworkDescription? {
        guard ["convnet", "resnet", "vit"].contains(kind) else { return nil }
        let shape = try positiveIntegers(image, option: "--image", expected: "C,H,W such as 3,32,32")
        guard shape.count == 3, shape[1] == shape[2] else {
            throw ValidationError("--image: expected C,H,W with H = W (square images), got \(image)")
        }
        switch kind {
        case "convnet":
            var d = ConvNetDescription(inputChannels: shape[0], imageSize: shape[1],
                                       channels: try channels.map { try positiveIntegers($0, option: "--channels", expected: "channels such as 32,64") } ?? [32, 64])
            if let kernelSize { d.kernelSize = kernelSize }
            return .convnet(d)
        case "resnet":
            var d = ResNetDescription(inputChannels: shape[0], imageSize: shape[1])
            if let stemChannels { d.stemChannels = stemChannels }
            if let stemStride { d.stemStride = stemStride }
            if let stages { d.stageChannels = try positiveIntegers(stages, option: "--stages", expected: "channels such as 32,64,128,256") }
            if let blocks { d.blocksPerStage = blocks }
            return .resnet(d)
        default:
            var d = ViTDescription(inputChannels: shape[0], imageSize: shape[1])
            if let patchSize { d.patchSize = patchSize }
            if let width { d.width = width }
            if let depth { d.depth = depth }
            if let heads { d.heads = heads }
            return .vit(d)
        }
    }
}

struct ObjectiveBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "objective",
        abstract: "Time the statistics, all-reduce and gradient of each objective alone (one process).")

    @Option(help: "Rows per view.") var batch = 256
    @Option(help: "Embedding width.") var dimension = 2048
    @Option(help: ArgumentHelp("Objectives to run (default: all of \(ObjectiveRegistry.helpList)).")) var objective: [ObjectiveName] = []
    @Option(help: "Timed evaluations.") var steps = 20
    @Option(help: "Untimed evaluations first.") var warmup = 3
    @OptionGroup var threads: ThreadOptions
    @Option(help: "Random projection directions of the objectives that slice (SIGReg, LeJEPA).") var directions = 1024
    @OptionGroup var output: JSONOptions

    func run() throws {
        let blas = BLASThreads.configure(override: threads.threads)
        let sgemm = Benchmarks.sgemmRate(Benchmarks.GEMMShape(m: 1024, n: 1024, k: 1024)).best
        print("BLAS threads \(blas); sgemm 1024³ \(String(format: "%.1f", sgemm)) GFLOP/s")
        var reports: [Benchmarks.ObjectiveReport] = []
        for name in objective.isEmpty ? Benchmarks.ObjectiveName.allCases : objective {
            do {
                let report = try Benchmarks.objective(name, batch: batch, dimension: dimension, steps: steps,
                                                      warmup: warmup, directions: directions, sgemm: sgemm)
                print(report.table)
                reports.append(report)
            } catch {
                print("\(name.rawValue.padding(toLength: 13, withPad: " ", startingAt: 0)) \(batch)×\(dimension)  skipped: \(error)")
            }
        }
        try output.print(reports)
    }
}

struct CommBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "comm",
        abstract: "Time all-reduce (sum, Float) from --min-bytes to --max-bytes, doubling, like osu_allreduce.",
        discussion: "Run under mpirun (e.g. mpirun -np 2 anticollapse bench comm); one process times the identity. Rank 0 prints mean and minimum µs a call (slowest rank), algorithm bandwidth bytes/time and bus bandwidth 2(p−1)/p·bytes/time, then the fit t = α + 2(p−1)/p·bytes/β (docs/SCALING.md).")

    @Option(help: "Smallest message in bytes.") var minBytes = 4096
    @Option(help: "Largest message in bytes.") var maxBytes = 64 << 20
    @Option(help: "Timed calls a size up to 1 MiB (a tenth, at least 5, above).") var iterations = 100
    @Flag(help: "Also time the sharded update's reduction through the node's shared memory (a barrier and this rank's sum of its share from every rank's segment), and fit its bandwidth.")
    var sharedMemory = false
    @OptionGroup var output: JSONOptions

    func validate() throws {
        guard minBytes >= 4 else { throw ValidationError("--min-bytes must be at least 4 (one Float), got \(minBytes)") }
        guard maxBytes >= minBytes else { throw ValidationError("--max-bytes (\(maxBytes)) must be at least --min-bytes (\(minBytes))") }
        guard iterations >= 1 else { throw ValidationError("--iterations must be at least 1") }
    }

    func run() throws {
        try runJob { communicator in
            let rows = try Benchmarks.allReduce(communicator: communicator,
                                                sizes: Benchmarks.doublingSizes(from: minBytes, to: maxBytes),
                                                iterations: iterations)
            let shared = sharedMemory
                ? try Benchmarks.sharedMemoryReduction(communicator: communicator,
                                                       sizes: Benchmarks.doublingSizes(from: minBytes, to: maxBytes),
                                                       iterations: iterations) : nil
            guard communicator.isRoot else { return }
            let report = Benchmarks.AllReduceReport(worldSize: communicator.size, rows: rows)
            print(report.table)
            if sharedMemory { print(Benchmarks.sharedMemoryTable(shared, worldSize: communicator.size)) }
            try output.print(report)
        }
    }
}

struct DataBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Measure the loader's rows/s and MB/s, with and without augmentation (as dataset bench).")

    @OptionGroup var bench: Dataset.Bench

    func run() throws { try bench.run() }
}

struct ClipsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clips",
        abstract: "Measure the clip loader's clips/s on a trajectory dataset, and TwoRoom's render rate (as env bench-data).")

    @OptionGroup var bench: Env.BenchData

    func run() throws { try bench.run() }
}

struct CheckpointBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Write and read back the HDF5 checkpoint of an MLP model and its LARS state (one process).")

    @OptionGroup var model: ModelWidthOptions
    @Option(help: "Writes and reads timed (rates are their medians).") var repeats = 3
    @OptionGroup var output: JSONOptions

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
    }

    func run() throws {
        let report = try Benchmarks.checkpoint(encoder: try model.encoderWidths, projector: try model.projectorWidths,
                                               repeats: repeats)
        print(report.table)
        try output.print(report)
    }
}

struct ScalingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scaling",
        abstract: "Predict step time, bytes moved and the reduction path at many world sizes (the scaling model).",
        discussion: """
            Weak scaling (--batch rows per rank) or strong scaling (--global-batch rows split over the ranks). \
            α and β come from `mpirun -np 2 anticollapse bench comm` (its fit line); the compute rate from --gflops \
            or, with --calibrate, from a short one-process `bench step` of the same shape. See docs/SCALING.md.
            """)

    @OptionGroup var model: ModelWidthOptions
    @OptionGroup var objective: ObjectiveOptions
    @Option(help: "Rows per rank and view (weak scaling; the default unless --global-batch).") var batch: Int?
    @Option(help: "Rows per view over all ranks (strong scaling).") var globalBatch: Int?
    @Option(help: "World sizes, comma-separated.") var ranks = "1,2,8,16,64,256,1024"
    @Option(help: "α: latency of one message step, µs.") var latencyUs = 20.0
    @Option(help: "β: bus bandwidth of a rank's link, GB/s.") var bandwidthGbs = 10.0
    @Option(help: "Matrix-product GFLOP/s of one rank (ignored with --calibrate).") var gflops = 50.0
    @Option(help: "GFLOP/s of one rank on the objective's counted FLOPs (default: --gflops; ignored with --calibrate).")
    var objectiveGflops: Double?
    @Option(help: "Milliseconds a step of each rank independent of the batch: gradient norm, update (ignored with --calibrate).")
    var overheadMs = 0.0
    @Flag(help: "Measure --gflops, --objective-gflops and --overhead-ms with a short one-process bench step of this shape first.")
    var calibrate = false
    @Option(help: "Shard the update over the ranks: automatic (the trainer's default), always, never.")
    var shardedUpdate = ShardedUpdate.automatic
    @Option(help: "Ranks on a node: worlds of at most this many take the sharded update through shared memory.")
    var ranksPerNode = 1
    @Option(help: "β_mem: GB/s a rank reads and writes summing its share from shared memory (fit of bench comm --shared-memory).")
    var memoryGbs = 16.0
    @OptionGroup var threads: ThreadOptions
    @OptionGroup var output: JSONOptions

    func validate() throws {
        guard ranksPerNode >= 1 else { throw ValidationError("--ranks-per-node must be at least 1, got \(ranksPerNode)") }
        guard memoryGbs > 0, memoryGbs.isFinite else { throw ValidationError("--memory-gbs must be positive, got \(memoryGbs)") }
        if batch != nil && globalBatch != nil {
            throw ValidationError("give --batch (rows per rank, weak scaling) or --global-batch (strong scaling), not both")
        }
        if let batch, batch < 2 { throw ValidationError("--batch must be at least 2, got \(batch)") }
        if let globalBatch, globalBatch < 2 { throw ValidationError("--global-batch must be at least 2, got \(globalBatch)") }
        guard latencyUs >= 0, latencyUs.isFinite else { throw ValidationError("--latency-us must be ≥ 0, got \(latencyUs)") }
        guard bandwidthGbs > 0, bandwidthGbs.isFinite else { throw ValidationError("--bandwidth-gbs must be positive, got \(bandwidthGbs)") }
        guard gflops > 0, gflops.isFinite else { throw ValidationError("--gflops must be positive, got \(gflops)") }
        if let objectiveGflops, !(objectiveGflops > 0 && objectiveGflops.isFinite) {
            throw ValidationError("--objective-gflops must be positive, got \(objectiveGflops)")
        }
        guard overheadMs >= 0, overheadMs.isFinite else { throw ValidationError("--overhead-ms must be ≥ 0, got \(overheadMs)") }
        let sizes = try worldSizes()
        if let globalBatch, let largest = sizes.max(), largest > globalBatch {
            throw ValidationError("--ranks: \(largest) ranks would leave ranks without rows of a global batch of \(globalBatch)")
        }
    }

    /// Parses `--ranks 1,2,8`.
    func worldSizes() throws -> [Int] {
        try positiveIntegers(ranks, option: "--ranks", expected: "world sizes ≥ 1 separated by commas such as 1,2,8,64")
    }

    func run() throws {
        var options = Benchmarks.StepOptions(encoder: try model.encoderWidths, projector: try model.projectorWidths,
                                             batch: batch ?? 256, objective: objective.objective,
                                             directions: objective.directions, shardedUpdate: shardedUpdate)
        var machine = ScalingModel.Machine(latency: latencyUs * 1e-6, bandwidth: bandwidthGbs * 1e9, flopRate: gflops * 1e9,
                                           objectiveFlopRate: objectiveGflops.map { $0 * 1e9 }, overhead: overheadMs * 1e-3,
                                           memoryBandwidth: memoryGbs * 1e9, ranksPerNode: ranksPerNode)
        if calibrate {
            BLASThreads.configure(override: threads.threads)
            options.steps = 5
            options.warmup = 1
            let report = try Benchmarks.step(options)
            let plan = try Benchmarks.statisticsPlan(objective.objective, dimension: options.embeddingWidth,
                                                     directions: objective.directions)
            machine = .calibrated(from: report, plan: plan, latency: machine.latency, bandwidth: machine.bandwidth,
                                  memoryBandwidth: machine.memoryBandwidth, ranksPerNode: ranksPerNode)
            print(String(format: "# calibrated on one process, %d BLAS thread(s), %d rows: %.1f ms/step (forward %.1f, objective %.1f, backward %.1f, norm + update %.1f ms) → %.1f GFLOP/s, objective %.1f GFLOP/s, overhead %.1f ms",
                         report.blasThreads, report.batch, report.medianMilliseconds, report.phases.forward,
                         report.phases.objective, report.phases.backward,
                         report.phases.allReduce + report.phases.update, machine.flopRate / 1e9,
                         machine.objectiveFlopRate / 1e9, machine.overhead * 1e3))
        }
        let scaling: ScalingModel.Batch = globalBatch.map { .global($0) } ?? .perRank(batch ?? 256)
        let scalingModel = try ScalingModel(options: options, machine: machine)
        let predictions = try scalingModel.predict(worldSizes: try worldSizes(), batch: scaling)
        print(scalingModel.table(predictions, batch: scaling))
        try output.print(predictions)
    }
}
