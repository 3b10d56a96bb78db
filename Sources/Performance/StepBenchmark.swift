import Communication
import Engine
import JointEmbedding
import Foundation
import Layers
import Objectives
import Optimizers
import Tensor

/// Timing of training steps and objectives on random inputs (no data loading), with the FLOPs
/// they count and the machine's BLAS `sgemm` rate measured in the same run as a yardstick:
/// what `anticollapse bench` prints.
///
/// A step is what ``Trainer`` does between two batches: zero the gradients, forward both views
/// (stacked into one batch of two row groups), the objective, backward, the gradient all-reduce
/// (single process: the identity, through the same ``GradientSynchronizer``), the gradient
/// norm, and the LARS update — sharded over the ranks as the trainer's `optimizer.sharded_update`
/// decides (``StepOptions/shardedUpdate``).
public enum Benchmarks {
    /// The objectives a benchmark can run: every registered one (``ObjectiveRegistry``).
    public typealias ObjectiveName = Objectives.ObjectiveName

    /// One matrix product `m × k` by `k × n`: `2·m·n·k` FLOPs.
    public struct GEMMShape: Sendable, Equatable, Codable, CustomStringConvertible {
        public var m: Int, n: Int, k: Int
        public init(m: Int, n: Int, k: Int) { self.m = m; self.n = n; self.k = k }
        public var flops: Double { 2 * Double(m) * Double(n) * Double(k) }
        public var description: String { "\(m)×\(n)×\(k)" }
    }

    /// The optimizer a step benchmark updates with.
    public enum StepOptimizer: String, Sendable, Codable, CaseIterable {
        /// LARS as the VICReg reference (lr 0.2, weight decay 1e-6, momentum 0.9, η 0.001).
        case lars
        /// SGD with momentum 0.9 and weight decay 5e-4 on every parameter (PyTorch's
        /// `torch.optim.SGD` defaults for the rest), lr 0.05.
        case sgd
    }

    /// What a step benchmark builds and runs.
    public struct StepOptions: Sendable {
        /// MLP widths of the encoder, `[input, hidden…, output]`; unused when ``network`` or
        /// ``configuredModel`` is set.
        public var encoder: [Int]
        /// MLP widths of the projector, `[encoder output, hidden…, embedding]`; empty for none.
        public var projector: [Int]
        /// An encoder of any kind (convnet, resnet, vit) instead of the MLP of ``encoder``;
        /// its input shape is that of the random images.
        public var network: NetworkDescription?
        /// A whole model (a run config's `model`), instead of ``encoder``, ``network`` and
        /// ``projector``.
        public var configuredModel: ModelDescription?
        /// Rows (images) of each view.
        public var batch: Int
        public var objective: ObjectiveName
        public var optimizer: StepOptimizer
        /// Timed steps, after `warmup` untimed ones.
        public var steps: Int
        public var warmup: Int
        /// SIGReg / LeJEPA projection directions.
        public var directions: Int
        public var seed: UInt64
        /// When the update is sharded over the ranks (the trainer's default: `automatic`).
        public var shardedUpdate: ShardedUpdate
        /// Let the sharded update go through the node's shared memory (as the trainer's
        /// `optimizer.shared_memory`, true by default).
        public var sharedMemory = true

        public init(encoder: [Int] = [784, 1024, 1024], projector: [Int] = [1024, 2048, 2048], network: NetworkDescription? = nil,
                    configuredModel: ModelDescription? = nil, batch: Int = 256,
                    objective: ObjectiveName = .vicreg, optimizer: StepOptimizer = .lars, steps: Int = 20, warmup: Int = 3,
                    directions: Int = 1024, seed: UInt64 = 0, shardedUpdate: ShardedUpdate = .automatic) {
            self.encoder = encoder
            self.projector = projector
            self.network = network
            self.configuredModel = configuredModel
            self.batch = batch
            self.objective = objective
            self.optimizer = optimizer
            self.steps = steps
            self.warmup = warmup
            self.directions = directions
            self.seed = seed
            self.shardedUpdate = shardedUpdate
        }

        /// The model the trainer would build (VICReg's projector: without a last bias).
        public var model: ModelDescription {
            if let configuredModel { return configuredModel }
            return ModelDescription(encoder: network ?? .mlp(widths: encoder),
                                    projector: projector.isEmpty ? nil : .mlp(widths: projector, lastBias: false))
        }

        /// The shape of one input row: `[width]` or `[C, H, W]`.
        public var inputShape: [Int] { model.encoder.inputShape }

        /// The embedding width the objective sees.
        public var embeddingWidth: Int {
            let model = self.model
            return (model.predictor ?? model.projector ?? model.encoder).outputFeatures
        }

        /// The encoder in a line: `[784, 1024, 1024]` for an MLP, else its description.
        public var encoderSummary: String {
            switch model.encoder {
            case let .mlp(d): return "\(d.widths)"
            case let .convnet(d):
                return "convnet \(d.inputChannels)×\(d.imageSize)×\(d.imageSize), channels \(d.channels), kernel \(d.kernelSize)"
            case let .resnet(d):
                return "resnet \(d.inputChannels)×\(d.imageSize)×\(d.imageSize), stem \(d.stemChannels) stride \(d.stemStride), "
                    + "stages \(d.stageChannels) × \(d.blocksPerStage) blocks"
            case let .vit(d):
                return "vit \(d.inputChannels)×\(d.imageSize)×\(d.imageSize), patch \(d.patchSize), width \(d.width), depth \(d.depth), heads \(d.heads)"
            }
        }
    }

    // MARK: FLOP counting

    /// Every matrix product of one view's forward and backward pass through an MLP network:
    /// per linear layer `B×out×in` forward, `B×in×out` for the input gradient and `out×in×B` for
    /// the weight gradient — except the first layer's input gradient when `firstInputGradient`
    /// is false (the network's input: the trainer does not form it).
    public static func mlpGEMMs(widths: [Int], batch: Int, firstInputGradient: Bool = true) -> [GEMMShape] {
        guard widths.count >= 2 else { return [] }
        var shapes: [GEMMShape] = []
        for (layer, (input, output)) in zip(widths, widths.dropFirst()).enumerated() {
            shapes.append(GEMMShape(m: batch, n: output, k: input))   // y = x Wᵀ
            if layer > 0 || firstInputGradient {
                shapes.append(GEMMShape(m: batch, n: input, k: output))   // dx = dy W
            }
            shapes.append(GEMMShape(m: output, n: input, k: batch))   // dW += dyᵀ x
        }
        return shapes
    }

    /// The matrix products of a vision transformer's forward and backward pass on `batch`
    /// images: the patch embedding (a product over the unfolded patches), each block's QKV,
    /// output and MLP projections over all tokens, and attention's per-(sample, head) products
    /// — scores `q kᵀ` and `P v` forward; `dO vᵀ`, `Pᵀ dO`, `dS k` and `dSᵀ q` backward —
    /// written as one product of `B·H` times the rows with the same FLOPs.
    public static func vitGEMMs(_ d: ViTDescription, batch: Int, firstInputGradient: Bool) -> [GEMMShape] {
        let patches = (d.imageSize / d.patchSize) * (d.imageSize / d.patchSize)
        let tokens = patches + (d.pooling == .cls ? 1 : 0)
        let (width, hidden) = (d.width, Int(Double(d.width) * d.mlpRatio))
        let (pairs, headWidth) = (batch * d.heads, d.width / d.heads)
        var shapes = mlpGEMMs(widths: [d.inputChannels * d.patchSize * d.patchSize, width], batch: batch * patches,
                              firstInputGradient: firstInputGradient)
        let attention = [GEMMShape(m: pairs * tokens, n: tokens, k: headWidth),   // S = q kᵀ; dP = dO vᵀ
                         GEMMShape(m: pairs * tokens, n: headWidth, k: tokens)]   // O = P v; dv, dq, dk
        for _ in 0..<d.depth {
            shapes += mlpGEMMs(widths: [width, 3 * width], batch: batch * tokens)
            shapes += [attention[0], attention[1], attention[0], attention[1], attention[1], attention[1]]
            shapes += mlpGEMMs(widths: [width, width], batch: batch * tokens)
            shapes += mlpGEMMs(widths: [width, hidden, width], batch: batch * tokens)
        }
        return shapes
    }

    /// The matrix products of the model for `views` views of `batch` rows: those of its
    /// ``Linear`` and ``Conv2d`` layers (a convolution as the one product of its im2col over
    /// the batch) and of a vision transformer (``vitGEMMs(_:batch:firstInputGradient:)``).
    public static func modelGEMMs(_ options: StepOptions, views: Int = 2) -> [GEMMShape] {
        let model = options.model
        var shape = model.encoder.inputShape, first = true
        var one = layerGEMMs(model.encoder.makeNetwork(Float.self), shape: &shape, batch: options.batch, first: &first)
        for part in [model.projector, model.predictor].compactMap({ $0 }) {
            one += layerGEMMs(part.makeNetwork(Float.self), shape: &shape, batch: options.batch, first: &first)
        }
        return Array((0..<views).map { _ in one }.joined())
    }

    /// The products of `layer` on `batch` inputs of `shape` (without the batch; updated to the
    /// output's); `first` is true until the network's first product, whose input gradient the
    /// trainer does not form.
    static func layerGEMMs(_ layer: any Layer<Float>, shape: inout [Int], batch: Int, first: inout Bool) -> [GEMMShape] {
        switch layer {
        case let sequence as Sequential<Float>:
            return sequence.layers.flatMap { layerGEMMs($0, shape: &shape, batch: batch, first: &first) }
        case let named as NamedSequential<Float>:
            return named.children.flatMap { layerGEMMs($0.layer, shape: &shape, batch: batch, first: &first) }
        case let vit as VisionTransformer<Float>:
            defer { first = false; shape = [vit.description.width] }
            return vitGEMMs(vit.description, batch: batch, firstInputGradient: !first)
        case let residual as Residual<Float>:
            let input = shape
            var shapes = layerGEMMs(residual.body, shape: &shape, batch: batch, first: &first)
            if let shortcut = residual.shortcut {
                var skip = input
                shapes += layerGEMMs(shortcut, shape: &skip, batch: batch, first: &first)
            }
            return shapes
        case let linear as Linear<Float>:
            let rows = batch * shape.dropLast().reduce(1, *)
            shape = shape.dropLast() + [linear.outFeatures]
            defer { first = false }
            return mlpGEMMs(widths: [linear.inFeatures, linear.outFeatures], batch: rows, firstInputGradient: !first)
        case let conv as Conv2d<Float>:
            guard shape.count == 3 else { return [] }
            let (oh, ow) = (conv.outputSize(shape[1]), conv.outputSize(shape[2]))
            let (oc, ckk, columns) = (conv.outChannels, conv.inChannels * conv.kernelSize * conv.kernelSize, batch * oh * ow)
            shape = [oc, oh, ow]
            defer { first = false }
            return [GEMMShape(m: oc, n: columns, k: ckk),                                  // y = W · col
                    GEMMShape(m: oc, n: ckk, k: columns)]                                  // dW += dy · colᵀ
                + (first ? [] : [GEMMShape(m: ckk, n: columns, k: oc)])                    // dcol = Wᵀ · dy
        case let pool as AvgPool2d<Float>:
            if shape.count == 3 {
                shape = [shape[0], (shape[1] - pool.kernelSize) / pool.stride + 1, (shape[2] - pool.kernelSize) / pool.stride + 1]
            }
            return []
        case is GlobalAvgPool2d<Float>:
            shape = [shape.first ?? 0]
            return []
        case is Flatten<Float>:
            shape = [shape.reduce(1, *)]
            return []
        default:
            return []
        }
    }

    /// The FLOPs of one evaluation of the objective on `batch` rows per rank and view on
    /// `ranks` ranks, on `path`: what its ``StatisticsPlan`` counts (the plan the objective's
    /// own cost model uses), with the Gram form split by features as the trainer's cost model
    /// decides.
    public static func objectiveFLOPs(_ objective: ObjectiveName, batch: Int, dimension: Int, directions: Int,
                                      ranks: Int = 1, path: StatisticsReduction = .statistics) throws -> Double {
        let plan = try statisticsPlan(objective, dimension: dimension, directions: directions)
        let split = ReductionCostModel().splitsGram(plan: plan, worldSize: ranks, globalBatchSize: batch * ranks,
                                                    largestRankCount: batch, scalarBytes: MemoryLayout<Float>.stride)
        return plan.flops(on: path, worldSize: ranks, globalBatchSize: batch * ranks, largestRankCount: batch,
                          splitsGram: split)
    }

    // MARK: The BLAS yardstick

    /// The best and median GFLOP/s of `sgemm` on `shape` over `repeats` calls (after one
    /// untimed call), with the current BLAS thread count.
    public static func sgemmRate(_ shape: GEMMShape, repeats: Int = 10) -> (best: Double, median: Double) {
        let a = Tensor<Float>(zeros: [shape.m, shape.k]), b = Tensor<Float>(zeros: [shape.k, shape.n])
        let c = Tensor<Float>(zeros: [shape.m, shape.n])
        let random = CounterRandom(seed: 1, streamName: "bench.sgemm")
        random.fillUniform(a, low: -1, high: 1)
        random.fillUniform(b, low: -1, high: 1, start: UInt64(a.count))
        Tensor.gemm(a, b, into: c)
        var seconds: [Double] = []
        for _ in 0..<max(1, repeats) {
            let start = DispatchTime.now().uptimeNanoseconds
            Tensor.gemm(a, b, into: c)
            seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
        }
        let rates = seconds.map { shape.flops / $0 / 1e9 }
        return (rates.max() ?? 0, median(rates))
    }

    // MARK: Step

    /// Milliseconds of each part of a step, median over the timed steps.
    public struct Phases: Sendable, Codable, Equatable {
        public var forward = 0.0, objective = 0.0, backward = 0.0, allReduce = 0.0, update = 0.0
        /// Inside forward and backward, by kind of layer work (``LayerPhase``; median ms a
        /// step, keyed by ``LayerPhase/name``); what is left of forward + backward is the
        /// linear layers, the rest of the layers and the view stacking.
        public var layers: [String: Double] = [:]
    }

    /// What a step benchmark measured.
    public struct StepReport: Sendable, Encodable {
        public var objective: String
        public var encoder: [Int], projector: [Int], batch: Int
        /// The encoder in a line (``StepOptions/encoderSummary``) and one input's shape.
        public var encoderSummary: String, inputShape: [Int]
        public var optimizer: String
        /// The objective's path on the last step (`statistics`, `gather`, `gather+Gram`), with
        /// the moments' combination over ranks when there was one (`statistics, shared mean`).
        public var reduction: String
        /// How the update was taken: `replicated` (every rank updates everything) or
        /// `sharded over P ranks` (`, through shared memory` on one node).
        public var update: String
        public var blasThreads: Int
        /// The ranks that ran the step, each on `batch` rows per view.
        public var ranks: Int
        public var steps: Int
        /// Milliseconds a step, median and minimum.
        public var medianMilliseconds: Double, minimumMilliseconds: Double
        public var phases: Phases
        /// Milliseconds a step spends in collectives (median over steps; batch norm's, the
        /// objective's and the gradients', waits for the slowest rank included), and the bytes
        /// a step hands them (the last step's).
        public var collectiveMilliseconds: Double, collectiveBytes: Int
        /// `collectiveMilliseconds` over the median step time.
        public var collectiveFraction: Double { medianMilliseconds > 0 ? collectiveMilliseconds / medianMilliseconds : 0 }
        /// Rows a second (both views of `batch` rows are one sample each).
        public var samplesPerSecond: Double
        /// The GFLOP counted per step: the model's matrix products (forward and backward of
        /// both views) and the objective's.
        public var modelGFLOP: Double, objectiveGFLOP: Double
        public var gflopPerStep: Double { modelGFLOP + objectiveGFLOP }
        /// `gflopPerStep` over the median step time.
        public var achievedGFLOPS: Double
        /// `sgemm` on 1024³ and on the model's largest product, best of the repeats, measured
        /// in this run.
        public var sgemmGFLOPS: Double, sgemmLargestGFLOPS: Double
        public var largestGEMM: String
        /// `achievedGFLOPS / sgemmGFLOPS`.
        public var fractionOfSGEMM: Double
        /// The last step's loss.
        public var loss: Double

        enum CodingKeys: String, CodingKey {
            case objective, encoder, projector, batch, encoderSummary, inputShape, optimizer, reduction, update, blasThreads, ranks, steps, medianMilliseconds, minimumMilliseconds,
                 phases, collectiveMilliseconds, collectiveBytes, collectiveFraction, samplesPerSecond, modelGFLOP, objectiveGFLOP, gflopPerStep, achievedGFLOPS, sgemmGFLOPS,
                 sgemmLargestGFLOPS, largestGEMM, fractionOfSGEMM, loss
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(objective, forKey: .objective)
            try c.encode(self.encoder, forKey: .encoder)
            try c.encode(projector, forKey: .projector)
            try c.encode(batch, forKey: .batch)
            try c.encode(encoderSummary, forKey: .encoderSummary)
            try c.encode(inputShape, forKey: .inputShape)
            try c.encode(optimizer, forKey: .optimizer)
            try c.encode(reduction, forKey: .reduction)
            try c.encode(update, forKey: .update)
            try c.encode(blasThreads, forKey: .blasThreads)
            try c.encode(ranks, forKey: .ranks)
            try c.encode(steps, forKey: .steps)
            try c.encode(medianMilliseconds, forKey: .medianMilliseconds)
            try c.encode(minimumMilliseconds, forKey: .minimumMilliseconds)
            try c.encode(phases, forKey: .phases)
            try c.encode(collectiveMilliseconds, forKey: .collectiveMilliseconds)
            try c.encode(collectiveBytes, forKey: .collectiveBytes)
            try c.encode(collectiveFraction, forKey: .collectiveFraction)
            try c.encode(samplesPerSecond, forKey: .samplesPerSecond)
            try c.encode(modelGFLOP, forKey: .modelGFLOP)
            try c.encode(objectiveGFLOP, forKey: .objectiveGFLOP)
            try c.encode(gflopPerStep, forKey: .gflopPerStep)
            try c.encode(achievedGFLOPS, forKey: .achievedGFLOPS)
            try c.encode(sgemmGFLOPS, forKey: .sgemmGFLOPS)
            try c.encode(sgemmLargestGFLOPS, forKey: .sgemmLargestGFLOPS)
            try c.encode(largestGEMM, forKey: .largestGEMM)
            try c.encode(fractionOfSGEMM, forKey: .fractionOfSGEMM)
            try c.encode(loss, forKey: .loss)
        }

        /// The report as aligned `name  value` lines.
        public var table: String {
            func f(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
            let rows: [(String, String)] = [
                ("objective", objective),
                ("model", "encoder \(encoderSummary) projector \(projector), \(batch) rows \(inputShape) × 2 views"
                    + (ranks > 1 ? " on each of \(ranks) ranks" : "") + ", \(optimizer)"),
                ("BLAS threads", ranks > 1 ? "\(blasThreads) per rank" : "\(blasThreads)"),
                ("objective path", reduction),
                ("update", update),
                ("ms/step", "median \(f(medianMilliseconds)), min \(f(minimumMilliseconds)) over \(steps) steps"),
                ("  phases (median ms)", "forward \(f(phases.forward)), objective \(f(phases.objective)), backward \(f(phases.backward)), all-reduce \(f(phases.allReduce)), update \(f(phases.update))"),
                ("  layers (median ms)", LayerPhase.allCases.compactMap { phase in
                    phases.layers[phase.name].flatMap { $0 > 0 ? "\(phase.name) \(f($0))" : nil } }.joined(separator: ", ")),
                ("in collectives", "\(f(collectiveMilliseconds, 2)) ms/step (\(f(100 * collectiveFraction)) %), "
                    + "\(f(Double(collectiveBytes) / 1e6)) MB handed to them"),
                ("samples/s", f(samplesPerSecond, 0)),
                ("GFLOP/step", "\(f(gflopPerStep, 2)) (model \(f(modelGFLOP, 2)), objective \(f(objectiveGFLOP, 2)))"),
                ("achieved GFLOP/s", f(achievedGFLOPS)),
                ("sgemm GFLOP/s", "\(f(sgemmGFLOPS)) (1024³), \(f(sgemmLargestGFLOPS)) (\(largestGEMM))"),
                ("achieved / sgemm", f(fractionOfSGEMM, 2)),
                ("loss", "\(loss)"),
            ]
            let width = rows.map(\.0.count).max() ?? 0
            return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }
                .joined(separator: "\n")
        }
    }

    /// The objective of `name` in `Float`, with its default settings and `directions` random
    /// projections (for those that slice).
    public static func makeObjective(_ name: ObjectiveName, directions: Int) throws -> any Objective<Float> {
        try name.defaultSettings(directions: directions).makeObjective(in: ObjectiveBuildContext())
    }

    /// Runs `options.warmup + options.steps` training steps on random inputs and reports the
    /// timed ones, with the `sgemm` yardstick measured just before.
    ///
    /// On several ranks (under `mpirun`) every rank runs `options.batch` rows of its own per view
    /// — weak scaling, as data-parallel training adds ranks: the global batch is
    /// `worldSize · batch`, the objective's statistics and the gradients are all-reduced, and
    /// `samplesPerSecond` counts the rows of every rank. Each step starts at a barrier, so the
    /// figures are those of the slowest rank; the report is the calling rank's.
    public static func step(_ options: StepOptions,
                            communicator job: any Communicator = SingleProcessCommunicator()) throws -> StepReport {
        precondition(options.batch >= 2 && options.steps >= 1, "bench step needs a batch ≥ 2 and steps ≥ 1")
        // Every collective of the step (batch norm, the objective's, the gradients') is timed.
        let communicator = TimedCommunicator(job)
        let model = try Model<Float>(options.model, seed: options.seed)
        let optimizer: any Optimizer<Float>
        let learningRate: Double
        switch options.optimizer {
        case .lars:
            learningRate = 0.2
            optimizer = try LARS(parameters: model.parameters, learningRate: learningRate, weightDecay: 1e-6)
        case .sgd:
            learningRate = 0.05
            optimizer = try SGD(parameters: model.parameters, learningRate: learningRate, momentum: 0.9, weightDecay: 5e-4)
        }
        let trainStep = TrainStep(parameters: model.parameters, optimizer: optimizer, communicator: communicator,
                                  checksFiniteness: false, shardedUpdate: options.shardedUpdate,
                                  sharedMemory: options.sharedMemory)
        let modelStep = JointEmbeddingStep(model: model, objective: try makeObjective(options.objective, directions: options.directions),
                                           seed: options.seed, rowCounts: [Int](repeating: options.batch, count: communicator.size))
        let inputs = (0..<2).map { v in
            let x = Tensor<Float>(zeros: [options.batch] + options.inputShape)
            CounterRandom(seed: options.seed, streamName: "bench.input.\(v)")
                .fillNormal(x, start: UInt64(communicator.rank * x.count))
            return x
        }

        let gemms = modelGEMMs(options)
        let largest = gemms.max { $0.flops < $1.flops } ?? GEMMShape(m: 1024, n: 1024, k: 1024)
        let yardstick = sgemmRate(GEMMShape(m: 1024, n: 1024, k: 1024))
        let largestRate = sgemmRate(largest)

        var totals: [Double] = [], phases: [[Double]] = [], layerPhases: [[Double]] = [], communicatedBytes = 0
        var loss = Double.nan
        let clock = PhaseClock(enabled: true)
        let profile = LayerProfile.shared
        profile.enabled = true
        defer { profile.enabled = false }
        for step in 0..<(options.warmup + options.steps) {
            if job.size > 1 { try job.barrier() }
            communicator.reset()
            profile.reset()
            clock.start()
            loss = try trainStep.run(learningRate: learningRate, clock: clock) {
                try modelStep.forwardBackward(views: inputs, step: step, communicator: communicator, clock: clock)
            }.loss.loss
            guard step >= options.warmup else { continue }
            let marks = clock.phases
            totals.append(marks.reduce(0) { $0 + $1.milliseconds })
            phases.append(marks.map(\.milliseconds) + [communicator.seconds * 1e3])
            layerPhases.append(LayerPhase.allCases.map { profile.milliseconds($0) })
            communicatedBytes = communicator.bytes
        }
        let path = modelStep.lastReduction
        let plan = try statisticsPlan(options.objective, dimension: options.embeddingWidth, directions: options.directions)
        let gram = plan.takesGramForm(on: path, worldSize: communicator.size, globalBatchSize: options.batch * communicator.size)
        let split = gram && ReductionCostModel().splitsGram(plan: plan, worldSize: communicator.size,
                                                            globalBatchSize: options.batch * communicator.size,
                                                            largestRankCount: options.batch,
                                                            scalarBytes: MemoryLayout<Float>.stride)
        let reduction = path.rawValue + (gram ? (split ? "+Gram split by features" : "+Gram") : "")
            + (modelStep.lastMomentCombination.map { $0 == .sharedMean ? ", shared mean" : ", per-rank means" } ?? "")
        let medianMs = median(totals)
        let phase = { (i: Int) in median(phases.map { $0[i] }) }
        let modelGFLOP = gemms.reduce(0) { $0 + $1.flops } / 1e9
        let objectiveGFLOP = try objectiveFLOPs(options.objective, batch: options.batch, dimension: options.embeddingWidth,
                                                directions: options.directions, ranks: communicator.size, path: path) / 1e9
        let achieved = (modelGFLOP + objectiveGFLOP) / (medianMs / 1e3)
        var stepPhases = Phases(forward: phase(0), objective: phase(1), backward: phase(2), allReduce: phase(3), update: phase(4))
        for (i, layerPhase) in LayerPhase.allCases.enumerated() {
            stepPhases.layers[layerPhase.name] = median(layerPhases.map { $0[i] })
        }
        let description = options.model
        return StepReport(objective: options.objective.rawValue,
                          encoder: { if case let .mlp(d) = description.encoder { return d.widths } else { return [] } }(),
                          projector: { if case let .mlp(d)? = description.projector { return d.widths } else { return [] } }(),
                          batch: options.batch, encoderSummary: options.encoderSummary, inputShape: options.inputShape,
                          optimizer: options.optimizer.rawValue, reduction: reduction,
                          update: trainStep.sharded.map { "sharded over \(communicator.size) ranks"
                              + ($0.usesSharedMemory ? ", through shared memory" : "") } ?? "replicated",
                          blasThreads: BLASThreads.count, ranks: communicator.size,
                          steps: options.steps,
                          medianMilliseconds: medianMs, minimumMilliseconds: totals.min() ?? 0,
                          phases: stepPhases,
                          collectiveMilliseconds: phase(5), collectiveBytes: communicatedBytes,
                          samplesPerSecond: Double(options.batch * communicator.size) / (medianMs / 1e3),
                          modelGFLOP: modelGFLOP, objectiveGFLOP: objectiveGFLOP, achievedGFLOPS: achieved,
                          sgemmGFLOPS: yardstick.best, sgemmLargestGFLOPS: largestRate.best,
                          largestGEMM: largest.description, fractionOfSGEMM: achieved / max(yardstick.best, 1e-9),
                          loss: loss)
    }

    // MARK: Objective alone

    /// What an objective benchmark measured.
    public struct ObjectiveReport: Sendable, Codable {
        public var objective: String
        public var batch: Int, dimension: Int
        public var medianMilliseconds: Double, minimumMilliseconds: Double
        public var gflop: Double
        public var achievedGFLOPS: Double
        public var sgemmGFLOPS: Double
        public var loss: Double

        public var table: String {
            func f(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
            return "\(objective.padding(toLength: 13, withPad: " ", startingAt: 0)) \(batch)×\(dimension)  "
                + "median \(f(medianMilliseconds, 2)) ms, min \(f(minimumMilliseconds, 2)) ms, \(f(gflop, 2)) GFLOP, "
                + "\(f(achievedGFLOPS)) GFLOP/s (sgemm \(f(sgemmGFLOPS))), loss \(loss)"
        }
    }

    /// Times the statistics, the (single-process) all-reduce and the gradient of `name` alone
    /// on two random views of `batch × dimension`.
    public static func objective(_ name: ObjectiveName, batch: Int, dimension: Int, steps: Int = 20, warmup: Int = 3,
                                 directions: Int = 1024, seed: UInt64 = 0,
                                 sgemm: Double? = nil) throws -> ObjectiveReport {
        let communicator = SingleProcessCommunicator()
        let objective = try makeObjective(name, directions: directions)
        let views = (0..<2).map { v in
            let x = Tensor<Float>(zeros: [batch, dimension])
            CounterRandom(seed: seed, streamName: "bench.embedding.\(v)").fillNormal(x)
            return x
        }
        let gradients = views.map { Tensor<Float>(zeros: $0.shape) }
        let yardstick = sgemm ?? sgemmRate(GEMMShape(m: 1024, n: 1024, k: 1024)).best
        var times: [Double] = []
        var loss = Double.nan
        for step in 0..<(warmup + steps) {
            let start = DispatchTime.now().uptimeNanoseconds
            loss = try objective.evaluate(views: views, gradients: gradients,
                                          context: ObjectiveContext(communicator: communicator, step: step, seed: seed,
                                                                    reduction: .statistics, rowCounts: [batch])).loss
            if step >= warmup { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-6) }
        }
        let gflop = try objectiveFLOPs(name, batch: batch, dimension: dimension, directions: directions) / 1e9
        let medianMs = median(times)
        return ObjectiveReport(objective: name.rawValue, batch: batch, dimension: dimension, medianMilliseconds: medianMs,
                               minimumMilliseconds: times.min() ?? 0, gflop: gflop,
                               achievedGFLOPS: gflop / (medianMs / 1e3), sgemmGFLOPS: yardstick, loss: loss)
    }

    /// The median of `values` (0 when empty).
    public static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
