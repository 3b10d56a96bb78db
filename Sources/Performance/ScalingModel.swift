import Communication
import Engine
import Foundation
import Layers
import Objectives

extension Benchmarks {
    /// The statistics plan of objective `name` on two views of `dimension` features, as the
    /// objective builds it in its evaluation (the objectives' static `plan` functions, in `Float`).
    public static func statisticsPlan(_ name: ObjectiveName, dimension: Int, directions: Int) throws -> StatisticsPlan {
        try name.defaultSettings(directions: directions).plan(dimension: dimension)
    }
}

/// A model of the data-parallel training step at any world size, for the MLP models of
/// ``Benchmarks/StepOptions``: what every rank computes, what it moves, and how long that
/// takes, from a few machine numbers (``Machine``). See `docs/SCALING.md`.
///
/// A step of the slowest rank (the one with the most rows, `n`) is, with nothing overlapped
/// (the trainer overlaps nothing):
///
///     compute     model GEMMs of 2 views × n rows / flopRate  +  overhead
///     objective   on the path taken: its collectives (CollectiveModel) + plan FLOPs / objectiveFlopRate
///     batch norm  per BN layer and view: all-reduce of (1 + 2C) Doubles forward, 2C backward
///     gradient    one all-reduce of every parameter's gradient (parameters × 4 bytes)
///
/// With a sharded update (``Benchmarks/StepOptions/shardedUpdate`` decides, as the trainer's
/// `optimizer.sharded_update` does) the gradient's all-reduce becomes a reduce-scatter of the
/// gradient and an all-gather of the parameters (the same bytes), plus the all-reduces of the
/// global norm (one `Double`) and, with LARS, of its per-parameter norms (two `Double`s a
/// parameter tensor); and each rank takes `1/P` of the overhead (norm and update). When the
/// whole world fits on one node (``Machine/ranksPerNode``) the sharded step goes through shared
/// memory instead: two barriers and this rank's sum of its share from every rank's segment,
/// `(1 + 1/P)·4|θ|` bytes read and written at ``Machine/memoryBandwidth``.
///
/// The objective's sizes and FLOPs are its ``StatisticsPlan`` (the one its evaluation builds)
/// and the path is the one ``ReductionCostModel/choose(plan:worldSize:globalBatchSize:largestRankCount:scalarBytes:)``
/// takes — with the trainer's cost model (``trainerCostModel``, the default
/// ``ReductionCostModel``, which the trainer always uses) for the step time, and with one
/// made of the machine's numbers for comparison (``ScalingPrediction/machinePath``).
public struct ScalingModel: Sendable {
    /// The per-rank numbers the model needs.
    public struct Machine: Sendable, Codable, Equatable {
        /// α, seconds of one message step of a collective.
        public var latency: Double
        /// β, bytes a second through one rank's link (the bus bandwidth of `bench comm`).
        public var bandwidth: Double
        /// Floating-point operations a second of one rank on the model's matrix products.
        public var flopRate: Double
        /// Floating-point operations a second of one rank on the objective's statistics plan
        /// (``StatisticsPlan/flops(on:worldSize:globalBatchSize:largestRankCount:)``): the
        /// objectives also run element-wise loops (Barlow Twins' `D × D` loss, the
        /// characteristic functions of SIGReg) that the plan counts at no cost.
        public var objectiveFlopRate: Double
        /// Seconds a step of each rank that do not depend on the batch (the optimizer update,
        /// the gradient norm).
        public var overhead: Double
        /// β_mem, bytes a second one rank reads and writes summing its share of the gradient from
        /// the node's shared memory (the fit of `bench comm --shared-memory`).
        public var memoryBandwidth: Double
        /// Ranks on a node: a world of at most this many ranks takes the shared-memory sharded
        /// update (1, the default, never does).
        public var ranksPerNode: Int

        /// - Parameter objectiveFlopRate: `flopRate` when nil.
        public init(latency: Double, bandwidth: Double, flopRate: Double, objectiveFlopRate: Double? = nil,
                    overhead: Double = 0, memoryBandwidth: Double = 16e9, ranksPerNode: Int = 1) {
            self.latency = latency
            self.bandwidth = bandwidth
            self.flopRate = flopRate
            self.objectiveFlopRate = objectiveFlopRate ?? flopRate
            self.overhead = overhead
            self.memoryBandwidth = memoryBandwidth
            self.ranksPerNode = ranksPerNode
        }

        /// The collective model of `latency` and `bandwidth`.
        public var collectives: CollectiveModel { CollectiveModel(latency: latency, bandwidth: bandwidth) }

        /// A ``ReductionCostModel`` of the same numbers (its rate is the objective's).
        public var costModel: ReductionCostModel {
            ReductionCostModel(latency: latency, bandwidth: bandwidth, flopRate: objectiveFlopRate)
        }

        /// The compute numbers of a one-process `bench step` report: the rate of its model
        /// products over the forward and backward phases; the rate of `plan`'s FLOPs on one
        /// rank with the report's batch over the objective phase; and the gradient-norm and
        /// update phases as the overhead. The other numbers as given.
        public static func calibrated(from report: Benchmarks.StepReport, plan: StatisticsPlan, latency: Double,
                                      bandwidth: Double, memoryBandwidth: Double = 16e9, ranksPerNode: Int = 1) -> Machine {
            let passes = (report.phases.forward + report.phases.backward) / 1e3
            let objectiveFLOPs = plan.flops(on: .statistics, worldSize: 1, globalBatchSize: report.batch,
                                            largestRankCount: report.batch)
            return Machine(latency: latency, bandwidth: bandwidth, flopRate: report.modelGFLOP * 1e9 / max(passes, 1e-9),
                           objectiveFlopRate: objectiveFLOPs / max(report.phases.objective / 1e3, 1e-9),
                           overhead: (report.phases.allReduce + report.phases.update) / 1e3,
                           memoryBandwidth: memoryBandwidth, ranksPerNode: ranksPerNode)
        }
    }

    /// How the global batch grows with the ranks.
    public enum Batch: Sendable, Equatable, Codable {
        /// Weak scaling: every rank holds this many rows of each view; the global batch is `P` times it.
        case perRank(Int)
        /// Strong scaling: this global batch, split over the ranks as the trainer's sampler does.
        case global(Int)
    }

    /// A question the model cannot answer.
    public struct ModelError: Error, CustomStringConvertible, Equatable {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// The model, the objective and its directions (`batch`, `steps`, `warmup` are not used).
    public let options: Benchmarks.StepOptions
    public let machine: Machine
    /// The cost model whose choice the trainer follows (`objective.reduction: automatic`).
    public let trainerCostModel: ReductionCostModel
    /// The objective's statistics plan (``Benchmarks/statisticsPlan(_:dimension:directions:)``).
    public let plan: StatisticsPlan
    /// The model's trainable parameters, whose `Float` gradients are all-reduced every step.
    public let parameterCount: Int
    /// The features of every synchronised batch norm of the model, in forward order.
    public let batchNormFeatures: [Int]
    /// The model's parameter tensors (LARS all-reduces two norms of each in a sharded update).
    public let parameterTensorCount: Int

    /// The scalar type of the embeddings, gradients and statistics: `Float`.
    static let scalarBytes = MemoryLayout<Float>.stride

    /// - Throws: ``ModelDescriptionError`` when the widths do not make a model.
    public init(options: Benchmarks.StepOptions, machine: Machine,
                trainerCostModel: ReductionCostModel = ReductionCostModel()) throws {
        try options.model.validate()
        self.options = options
        self.machine = machine
        self.trainerCostModel = trainerCostModel
        plan = try Benchmarks.statisticsPlan(options.objective, dimension: options.embeddingWidth,
                                         directions: options.directions)
        let description = options.model
        let parts: [Sequential<Float>] = [description.encoder.makeNetwork(Float.self),
                                          description.projector?.makeNetwork(Float.self),
                                          description.predictor?.makeNetwork(Float.self)].compactMap { $0 }
        let specs = parts.flatMap { $0.parameterSpecs() }
        parameterCount = specs.reduce(0) { $0 + $1.shape.reduce(1, *) }
        parameterTensorCount = specs.count
        batchNormFeatures = parts.flatMap { ScalingModel.batchNormFeatures(of: $0) }
    }

    /// The features of every batch norm in `layer`, depth first.
    private static func batchNormFeatures(of layer: any Layer<Float>) -> [Int] {
        switch layer {
        case let norm as BatchNorm<Float>: return [norm.features]
        case let sequence as Sequential<Float>: return sequence.layers.flatMap { batchNormFeatures(of: $0) }
        case let block as Residual<Float>:
            return batchNormFeatures(of: block.body) + (block.shortcut.map { batchNormFeatures(of: $0) } ?? [])
        default: return []
        }
    }

    /// The rows of the largest rank and the global batch for `batch` on `worldSize` ranks.
    public static func rows(_ batch: Batch, worldSize: Int) throws -> (largestRank: Int, global: Int) {
        guard worldSize >= 1 else { throw ModelError("the world size must be at least 1, got \(worldSize)") }
        switch batch {
        case .perRank(let rows):
            guard rows >= 1 else { throw ModelError("the rows per rank must be at least 1, got \(rows)") }
            return (rows, rows * worldSize)
        case .global(let rows):
            guard rows >= worldSize else {
                throw ModelError("a global batch of \(rows) rows leaves ranks of \(worldSize) without rows")
            }
            return ((rows + worldSize - 1) / worldSize, rows)
        }
    }

    /// How the trainer combines the objective's moments on the statistics path on `worldSize`
    /// ranks: its cost model's choice (``ReductionCostModel/combination(plan:worldSize:scalarBytes:)``).
    public func momentCombination(worldSize p: Int) -> MomentCombination {
        trainerCostModel.combination(plan: plan, worldSize: p, scalarBytes: ScalingModel.scalarBytes)
    }

    /// What the objective costs the slowest rank on `path` (the statistics path in the
    /// trainer's ``momentCombination(worldSize:)``).
    public func objectiveCost(on path: StatisticsReduction, worldSize p: Int, globalBatchSize n: Int,
                              largestRankCount nMax: Int) -> ScalingPrediction.PathCost {
        let s = ScalingModel.scalarBytes
        let combination = path == .statistics ? momentCombination(worldSize: p) : .perRankMeans
        let split = trainerCostModel.splitsGram(plan: plan, worldSize: p, globalBatchSize: n, largestRankCount: nMax,
                                                scalarBytes: s)
        let count = plan.collectiveCount(on: path, worldSize: p, globalBatchSize: n, combination: combination,
                                         splitsGram: split)
        let bytes = plan.communicatedBytes(on: path, worldSize: p, globalBatchSize: n, largestRankCount: nMax,
                                           scalarBytes: s, combination: combination, splitsGram: split)
        let seconds = plan.communicationSeconds(on: path, worldSize: p, globalBatchSize: n, largestRankCount: nMax,
                                                scalarBytes: s, collectives: machine.collectives, combination: combination,
                                                splitsGram: split)
        let flops = plan.flops(on: path, worldSize: p, globalBatchSize: n, largestRankCount: nMax, splitsGram: split)
        return ScalingPrediction.PathCost(
            collectives: count, communicatedBytes: bytes,
            sentBytes: plan.sentBytes(on: path, worldSize: p, globalBatchSize: n, largestRankCount: nMax, scalarBytes: s,
                                      combination: combination, splitsGram: split),
            communicationSeconds: seconds, flops: flops, seconds: seconds + flops / machine.objectiveFlopRate)
    }

    /// The predicted step on `worldSize` ranks.
    /// - Throws: ``ModelError`` for a world size below 1, an empty batch, or a global batch
    ///   smaller than the world size.
    public func predict(worldSize: Int, batch: Batch) throws -> ScalingPrediction {
        var prediction = try step(worldSize: worldSize, batch: batch)
        let single = worldSize == 1 ? prediction : try step(worldSize: 1, batch: batch)
        prediction.efficiency = prediction.samplesPerSecond / (Double(worldSize) * single.samplesPerSecond)
        return prediction
    }

    /// The prediction without the efficiency (which needs the one-rank step).
    private func step(worldSize p: Int, batch: Batch) throws -> ScalingPrediction {
        let (nMax, n) = try ScalingModel.rows(batch, worldSize: p)
        let scalarBytes = ScalingModel.scalarBytes, collectives = machine.collectives
        let path = trainerCostModel.choose(plan: plan, worldSize: p, globalBatchSize: n, largestRankCount: nMax,
                                           scalarBytes: scalarBytes)
        let machinePath = machine.costModel.choose(plan: plan, worldSize: p, globalBatchSize: n, largestRankCount: nMax,
                                                   scalarBytes: scalarBytes)
        let statistics = objectiveCost(on: .statistics, worldSize: p, globalBatchSize: n, largestRankCount: nMax)
        let gather = objectiveCost(on: .gather, worldSize: p, globalBatchSize: n, largestRankCount: nMax)

        var options = self.options
        options.batch = nMax
        let modelFLOPs = Benchmarks.modelGEMMs(options).reduce(0) { $0 + $1.flops }

        let gradientBytes = parameterCount * scalarBytes
        let factor = p > 1 ? 2 * Double(p - 1) / Double(p) : 0
        // Batch norm: per layer and view, (1 + 2C) Doubles forward and 2C backward.
        let double = MemoryLayout<Double>.stride
        let normMessages = batchNormFeatures.flatMap { c in [(1 + 2 * c) * double, 2 * c * double] }
        let views = 2
        let normSeconds = Double(views) * normMessages.reduce(0) { $0 + collectives.allReduce(bytes: Double($1), worldSize: p) }

        let objective = path == .gather ? gather : statistics
        let sharded = options.shardedUpdate.shards(worldSize: p, parameterCount: parameterCount)
        let compute = modelFLOPs / machine.flopRate + (sharded ? machine.overhead / Double(p) : machine.overhead)
        let gradientSeconds: Double
        let sharedMemory = sharded && p <= machine.ranksPerNode
        if sharded {
            let sums = options.optimizer == .lars ? 2 * parameterTensorCount * double : 0
            let norms = collectives.allReduce(bytes: Double(double), worldSize: p)
                + (sums > 0 ? collectives.allReduce(bytes: Double(sums), worldSize: p) : 0)
            if sharedMemory {
                // Two barriers (each taken as long as the all-reduce of one Double) and the sum of
                // this rank's share from every segment.
                let barrier = collectives.allReduce(bytes: Double(double), worldSize: p)
                gradientSeconds = 2 * barrier + Double(gradientBytes) * (1 + 1 / Double(p)) / machine.memoryBandwidth + norms
            } else {
                gradientSeconds = collectives.reduceScatter(bytes: Double(gradientBytes), worldSize: p)
                    + collectives.allGather(bytesPerRank: Double(gradientBytes) / Double(p), worldSize: p) + norms
            }
        } else {
            gradientSeconds = collectives.allReduce(bytes: Double(gradientBytes), worldSize: p)
        }
        let stepSeconds = compute + objective.seconds + normSeconds + gradientSeconds
        return ScalingPrediction(
            worldSize: p, globalBatch: n, rowsPerRank: nMax, path: path, machinePath: machinePath,
            momentCombination: path == .statistics && p > 1 && plan.meanElements > 0 ? momentCombination(worldSize: p) : nil,
            gramForm: plan.takesGramForm(on: path, worldSize: p, globalBatchSize: n),
            statistics: statistics, gather: gather, shardedUpdate: sharded, sharedMemory: sharedMemory,
            gradientBytes: p > 1 ? gradientBytes : 0, gradientSentBytes: sharedMemory ? 0 : factor * Double(gradientBytes),
            gradientSeconds: gradientSeconds,
            batchNormAllReduces: p > 1 ? views * normMessages.count : 0,
            batchNormBytes: p > 1 ? views * normMessages.reduce(0, +) : 0, batchNormSeconds: normSeconds,
            modelFLOPs: modelFLOPs, computeSeconds: compute, objectiveSeconds: objective.seconds,
            stepSeconds: stepSeconds, samplesPerSecond: Double(n) / stepSeconds, efficiency: 1)
    }

    /// The predictions at each world size, skipping none: every size must fit `batch`.
    public func predict(worldSizes: [Int], batch: Batch) throws -> [ScalingPrediction] {
        try worldSizes.map { try predict(worldSize: $0, batch: batch) }
    }

    /// The predictions as an aligned table with a header naming the model, the machine and the
    /// batch.
    public func table(_ predictions: [ScalingPrediction], batch: Batch) -> String {
        func f(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
        let widths = [options.encoder, options.projector].filter { !$0.isEmpty }
            .map { $0.map(String.init).joined(separator: "-") }.joined(separator: " + ")
        let scaling: String
        switch batch {
        case .perRank(let rows): scaling = "weak scaling, \(rows) rows per rank and view"
        case .global(let rows): scaling = "strong scaling, global batch \(rows) rows per view"
        }
        let trainer = trainerCostModel
        var lines = [
            "# \(options.objective.rawValue), MLP \(widths) (D \(options.embeddingWidth), \(f(Double(parameterCount) / 1e6, 2))M parameters, \(batchNormFeatures.count) batch norms), \(scaling)",
            "# machine: α \(f(machine.latency * 1e6, 2)) µs, β \(f(machine.bandwidth / 1e9, 2)) GB/s, \(f(machine.flopRate / 1e9)) GFLOP/s a rank (objective \(f(machine.objectiveFlopRate / 1e9))), overhead \(f(machine.overhead * 1e3)) ms; "
                + "path: the trainer's cost model (\(f(trainer.latency * 1e6)) µs, \(f(trainer.bandwidth / 1e9)) GB/s, \(f(trainer.flopRate / 1e9)) GFLOP/s), * where the machine's would take the other",
            "# MB sent: per rank and step, with bandwidth-optimal collectives",
        ]
        let header: [(String, Int)] = [("ranks", 6), ("N", 7), ("rows", 5), ("path", 18), ("stats MB", 9), ("gather MB", 9),
                                       ("obj ms", 8), ("BN ms", 7), ("grad MB", 8), ("grad ms", 8), ("update", 8), ("compute ms", 10),
                                       ("step ms", 9), ("samples/s", 10), ("eff", 5)]
        lines.append(header.map { String(repeating: " ", count: max(0, $0.1 - $0.0.count)) + $0.0 }.joined(separator: " "))
        for prediction in predictions {
            let path = prediction.path.rawValue + (prediction.gramForm ? "+Gram" : "")
                + (prediction.momentCombination == .sharedMean ? "+shared" : "")
                + (prediction.machinePath == prediction.path ? "" : "*")
            let cells: [(String, Int)] = [
                ("\(prediction.worldSize)", 6), ("\(prediction.globalBatch)", 7), ("\(prediction.rowsPerRank)", 5),
                (prediction.worldSize == 1 ? "—" : path, 18),
                (f(prediction.statistics.sentBytes / 1e6, 2), 9), (f(prediction.gather.sentBytes / 1e6, 2), 9),
                (f(prediction.objectiveSeconds * 1e3), 8), (f(prediction.batchNormSeconds * 1e3, 2), 7),
                (f(prediction.gradientSentBytes / 1e6), 8), (f(prediction.gradientSeconds * 1e3), 8),
                (prediction.sharedMemory ? "shm" : prediction.shardedUpdate ? "sharded" : "all", 8),
                (f(prediction.computeSeconds * 1e3), 10), (f(prediction.stepSeconds * 1e3), 9),
                (f(prediction.samplesPerSecond, 0), 10), (f(prediction.efficiency, 2), 5),
            ]
            lines.append(cells.map { String(repeating: " ", count: max(0, $0.1 - $0.0.count)) + $0.0 }.joined(separator: " "))
        }
        return lines.joined(separator: "\n")
    }
}

/// One world size of ``ScalingModel``: times in seconds, bytes per step of the slowest rank.
public struct ScalingPrediction: Sendable, Codable, Equatable {
    /// What the objective costs on one path.
    public struct PathCost: Sendable, Codable, Equatable {
        /// Collective calls (none on one rank).
        public var collectives: Int
        /// Bytes handed to collectives, as ``ObjectiveResult/communicatedBytes`` reports them.
        public var communicatedBytes: Int
        /// Bytes this rank sends with bandwidth-optimal collectives.
        public var sentBytes: Double
        /// Seconds of the collectives (``CollectiveModel``).
        public var communicationSeconds: Double
        /// The plan's FLOPs on this path (``StatisticsPlan/flops(on:worldSize:globalBatchSize:largestRankCount:)``).
        public var flops: Double
        /// Collectives plus FLOPs at the machine's objective rate.
        public var seconds: Double
    }

    public var worldSize: Int
    /// Rows of each view over all ranks.
    public var globalBatch: Int
    /// Rows of each view on the largest rank.
    public var rowsPerRank: Int
    /// The path the trainer takes (its default cost model; `.statistics` on one rank).
    public var path: StatisticsReduction
    /// The path a cost model of the machine's numbers would take.
    public var machinePath: StatisticsReduction
    /// How the objective's moments are combined on ``path`` (nil when no moments are
    /// combined over ranks: one rank, the gather path, an objective without moments).
    public var momentCombination: MomentCombination?
    /// Whether the objective takes its Gram form on ``path``.
    public var gramForm: Bool
    /// The objective on each path.
    public var statistics: PathCost, gather: PathCost
    /// Whether the update is sharded over the ranks (the gradient reduce-scattered, the
    /// parameters all-gathered, `1/P` of the overhead a rank).
    public var shardedUpdate: Bool
    /// Whether the sharded update goes through the node's shared memory (the whole world on
    /// one node): nothing is sent, each rank reads its share from every segment.
    public var sharedMemory: Bool
    /// The gradient all-reduce (sharded: the reduce-scatter, the parameters' all-gather and the
    /// norms' all-reduces): bytes handed to the gradient's collective, bytes a rank sends, seconds.
    public var gradientBytes: Int, gradientSentBytes: Double, gradientSeconds: Double
    /// Batch norm's all-reduces a step (forward and backward, both views), their bytes and seconds.
    public var batchNormAllReduces: Int, batchNormBytes: Int, batchNormSeconds: Double
    /// The model's matrix products on the largest rank, both views.
    public var modelFLOPs: Double
    /// The model's products at the machine's rate plus the overhead.
    public var computeSeconds: Double
    /// The objective on ``path``.
    public var objectiveSeconds: Double
    /// Compute, objective, batch norm and gradient all-reduce, one after the other.
    public var stepSeconds: Double
    /// Rows of each view a second, over all ranks.
    public var samplesPerSecond: Double
    /// `samplesPerSecond` over `P` times the one-rank figure of the same batch mode.
    public var efficiency: Double
}
