import Communication
import Engine
import Foundation
import Layers
import Tensor

/// The solver of a ``LatentPlanner``.
public enum PlannerSolver: String, Sendable, CaseIterable {
    /// Cross-entropy method: sample, keep the elites, refit a diagonal Gaussian.
    case cem
    /// Model-predictive path integral: every sample weighted by `exp(−cost / temperature)`.
    case mppi
}

/// How a ``LatentPlanner`` searches; the defaults are LeWorldModel's CEM on TwoRoom.
public struct PlannerSettings: Sendable, Equatable {
    public var solver = PlannerSolver.cem
    /// Candidate action sequences an iteration (300).
    public var samples = 300
    /// CEM: the best candidates the Gaussian is refitted to (30).
    public var elites = 30
    /// Refinements a solve (30).
    public var iterations = 30
    /// Action blocks planned (5 blocks of `frameskip` steps).
    public var horizon = 5
    /// Blocks executed before replanning (5: the whole plan).
    public var receding = 5
    /// The initial standard deviation of every action value (1).
    public var initialStd = 1.0
    /// Start the next solve from the rest of the previous plan (shifted by `receding` blocks).
    public var warmStart = true
    /// MPPI's temperature, relative to the spread of an iteration's costs.
    public var temperature = 0.5
    /// Keys the candidates' noise with (seed, solve, iteration).
    public var seed: UInt64 = 0
    /// Roll the transformer predictor out token by token with a key/value cache (the same
    /// predictions); false: recompute every window in full (the reference).
    public var keyValueCache = true
    /// Threads a rollout splits the candidates over (with the key/value cache; the caller
    /// gives BLAS one thread then).
    public var threads = 1

    public init() {}

    /// - Throws: ``ConfigurationError`` naming the option that is out of range.
    public func validate() throws {
        if samples < 2 { throw ConfigurationError("--samples: must be at least 2, got \(samples)") }
        if solver == .cem && !(1...samples).contains(elites) { throw ConfigurationError("--elites: must be in 1…samples (\(samples)), got \(elites)") }
        if iterations < 1 { throw ConfigurationError("--iterations: must be at least 1, got \(iterations)") }
        if horizon < 1 { throw ConfigurationError("--horizon: must be at least 1, got \(horizon)") }
        if !(1...horizon).contains(receding) { throw ConfigurationError("--receding: must be in 1…horizon (\(horizon)), got \(receding)") }
        if !(initialStd > 0) { throw ConfigurationError("--std: must be positive, got \(initialStd)") }
        if !(temperature > 0) { throw ConfigurationError("--temperature: must be positive, got \(temperature)") }
        if threads < 1 { throw ConfigurationError("--threads: must be at least 1, got \(threads)") }
    }
}

/// Plans action sequences in the world model's latent space: from the current frame's
/// embedding, roll every candidate sequence of action blocks through the predictor — all
/// candidates as one batch, so each predictor layer is one matrix product a step — and score
/// it by the squared distance between the last predicted embedding and the goal's embedding.
///
/// The context of a rollout is the current frame alone; the predicted embeddings join it as
/// the rollout goes (the last `H` frames, as in training). Batch norm uses its running
/// statistics. Buffers are made on the first solve; iterations allocate no tensor storage
/// (each context length has its own activation slot).
public final class LatentPlanner {
    public let network: WorldModelNetwork<Float>
    public let settings: PlannerSettings
    public let frameskip: Int
    public let actionDimension: Int
    /// Values of one action block (`frameskip · actionDimension`).
    public var blockWidth: Int { frameskip * actionDimension }

    /// The whole plan of the last solve (`horizon · frameskip` actions, flattened, clipped):
    /// the receding part is what ``plan(current:goal:)`` returned.
    public private(set) var lastPlan: [Float] = []
    private var mean: [Float], std: [Float]
    private var solves: UInt64 = 0
    private let candidates: Tensor<Float>          // (S·K, W)
    private let noise: Tensor<Float>               // (S·K·W)
    private let rollout: Tensor<Float>             // (S, K + 1, D)
    private var contexts: [Tensor<Float>] = []     // L = 1…H: (S, L, D)
    private var actionContexts: [Tensor<Float>] = []  // (S, L, A)
    private var costs: [Float]
    private var order: [Int]
    private var weights: [Double]
    private let evaluation: LayerContext
    private let incremental: PredictorRollout?

    /// - Parameters:
    ///   - network: a trained world model (its batch norm in evaluation mode).
    ///   - frameskip, actionDimension: the shape of an action block, as in training.
    public init(network: WorldModelNetwork<Float>, frameskip: Int, actionDimension: Int, settings: PlannerSettings = PlannerSettings()) throws {
        try settings.validate()
        self.network = network
        self.settings = settings
        self.frameskip = frameskip
        self.actionDimension = actionDimension
        let s = settings.samples, k = settings.horizon, w = frameskip * actionDimension, d = network.embeddingWidth
        mean = [Float](repeating: 0, count: k * w)
        std = [Float](repeating: Float(settings.initialStd), count: k * w)
        candidates = Tensor(zeros: [s * k, w])
        noise = Tensor(zeros: [s * k * w])
        rollout = Tensor(zeros: [s, k + 1, d])
        for l in 1...network.historyFrames {
            contexts.append(Tensor(zeros: [s, l, d]))
            actionContexts.append(Tensor(zeros: [s, l, network.actionEmbeddingWidth]))
        }
        costs = [Float](repeating: 0, count: s)
        order = Array(0..<s)
        weights = [Double](repeating: 0, count: s)
        evaluation = LayerContext(training: false, communicator: SingleProcessCommunicator(), needsInputGradient: false)
        incremental = settings.keyValueCache && network.transformer != nil
            ? try PredictorRollout(network: network, samples: s, horizon: k, blockWidth: w, threads: settings.threads,
                               context: evaluation.slot(network.historyFrames + 3)) : nil
    }

    /// The threads a rollout runs on (1 without the key/value cache, or with an action
    /// encoder other than a GELU MLP).
    public var rolloutThreads: Int { incremental?.threads ?? 1 }

    /// Forgets the previous plan (the next solve starts from mean 0).
    public func reset() {
        for i in mean.indices { mean[i] = 0 }
    }

    /// The embeddings `(N, D)` of frames `(N, C, S, S)` scaled to [−1, 1], as training saw them.
    public func embed(_ frames: Tensor<Float>) throws -> Tensor<Float> {
        try network.encode(frames, context: evaluation.slot(network.historyFrames + 1)).copy()
    }

    /// The best action sequence from `current` to `goal` (embeddings of `D` values): the
    /// first `receding` blocks, `receding · frameskip` actions of `actionDimension` values,
    /// flattened; and the cost of the final plan's mean.
    public func plan(current: [Float], goal: [Float]) throws -> (actions: [Float], cost: Float) {
        let s = settings.samples, k = settings.horizon, w = blockWidth, d = network.embeddingWidth
        precondition(current.count == d && goal.count == d, "embeddings of \(d) values")
        if !settings.warmStart { reset() }
        for i in std.indices { std[i] = Float(settings.initialStd) }
        solves += 1
        for iteration in 0..<settings.iterations {
            // Candidates: the mean plus Gaussian noise, clipped to the action range; candidate 0 is the mean.
            CounterRandom(seed: settings.seed, stream: solves &* 1_000_003 &+ UInt64(iteration)).fillNormal(noise)
            noise.withUnsafeBufferPointer { z in
                candidates.withUnsafeMutableBufferPointer { c in
                    for sample in 0..<s {
                        for j in 0..<(k * w) {
                            let value = sample == 0 ? mean[j] : mean[j] + std[j] * z[sample * k * w + j]
                            c[sample * k * w + j] = min(1, max(-1, value))
                        }
                    }
                }
            }
            try score(current: current, goal: goal)
            refit()
        }
        // The plan's own cost.
        candidates.withUnsafeMutableBufferPointer { c in for j in 0..<(k * w) { c[j] = min(1, max(-1, mean[j])) } }
        try score(current: current, goal: goal)
        let cost = costs[0]
        lastPlan = (0..<(k * w)).map { min(1, max(-1, mean[$0])) }
        let actions = Array(lastPlan.prefix(settings.receding * w))
        // Warm start: the rest of the plan moves to the front; new blocks start at 0.
        let shift = settings.receding * w
        for j in 0..<(k * w) { mean[j] = j + shift < k * w ? mean[j + shift] : 0 }
        _ = s
        return (actions, cost)
    }

    /// The predicted embeddings `(K + 1, D)` of the plan's mean from `current` (for pictures).
    public func predictedEmbeddings(current: [Float], actions: [Float]) throws -> [[Float]] {
        let k = settings.horizon, w = blockWidth, d = network.embeddingWidth
        candidates.withUnsafeMutableBufferPointer { c in
            for sample in 0..<settings.samples { for j in 0..<(k * w) { c[sample * k * w + j] = j < actions.count ? actions[j] : 0 } }
        }
        try score(current: current, goal: current)
        return (0...k).map { step in (0..<d).map { rollout[0, step, $0] } }
    }

    /// Rolls every candidate out and writes `costs`.
    private func score(current: [Float], goal: [Float]) throws {
        let s = settings.samples, k = settings.horizon, d = network.embeddingWidth
        rollout.withUnsafeMutableBufferPointer { e in
            for sample in 0..<s { for j in 0..<d { e[sample * (k + 1) * d + j] = current[j] } }
        }
        if let incremental {
            try incremental.run(candidates: candidates, rollout: rollout)
        } else {
            try recompute()
        }
        rollout.withUnsafeBufferPointer { e in
            for sample in 0..<s {
                var cost: Float = 0
                let last = (sample * (k + 1) + k) * d
                for j in 0..<d { let x = e[last + j] - goal[j]; cost += x * x }
                costs[sample] = cost.isFinite ? cost : .infinity
            }
        }
    }

    /// The rollout recomputing every window in full through ``WorldModelNetwork/predict(_:actions:context:)``.
    private func recompute() throws {
        let s = settings.samples, k = settings.horizon, d = network.embeddingWidth, h = network.historyFrames
        let a = network.actionEmbeddingWidth
        let u = try network.encodeActions(candidates, context: evaluation.slot(h + 2))        // (S·K, A)
        for step in 0..<k {
            // The transformer takes the frames so far (up to H); the MLP exactly H, the first
            // frame and its action block repeated before the start.
            let l = network.transformer != nil ? min(step + 1, h) : h, first = step + 1 - l
            let context = contexts[l - 1], actions = actionContexts[l - 1]
            rollout.withUnsafeBufferPointer { e in
                context.withUnsafeMutableBufferPointer { c in
                    for sample in 0..<s {
                        for t in 0..<l {
                            let source = (sample * (k + 1) + max(0, first + t)) * d, target = (sample * l + t) * d
                            for j in 0..<d { c[target + j] = e[source + j] }
                        }
                    }
                }
            }
            u.withUnsafeBufferPointer { u in
                actions.withUnsafeMutableBufferPointer { c in
                    for sample in 0..<s {
                        for t in 0..<l {
                            let source = (sample * k + max(0, first + t)) * a, target = (sample * l + t) * a
                            for j in 0..<a { c[target + j] = u[source + j] }
                        }
                    }
                }
            }
            let prediction = try network.predict(context, actions: actions, context: evaluation.slot(l - 1))   // (S, Q, D)
            let q = prediction.shape[1]
            prediction.withUnsafeBufferPointer { p in
                rollout.withUnsafeMutableBufferPointer { e in
                    for sample in 0..<s {
                        let source = (sample * q + q - 1) * d, target = (sample * (k + 1) + step + 1) * d
                        for j in 0..<d { e[target + j] = p[source + j] }
                    }
                }
            }
        }
    }

    /// Refits the mean and standard deviation of the candidates to this iteration's scores.
    private func refit() {
        let s = settings.samples, n = settings.horizon * blockWidth
        switch settings.solver {
        case .cem:
            // The elites: a partial selection sort of the indices by cost (no allocation).
            let m = settings.elites
            for i in 0..<s { order[i] = i }
            for i in 0..<m {
                var best = i
                for j in (i + 1)..<s where costs[order[j]] < costs[order[best]] { best = j }
                order.swapAt(i, best)
            }
            for i in 0..<s { weights[i] = 0 }
            for i in 0..<m { weights[order[i]] = 1 / Double(m) }
        case .mppi:
            var low = Float.infinity, high = -Float.infinity
            for c in costs where c.isFinite { low = min(low, c); high = max(high, c) }
            let scale = Double(max(high - low, 1e-12)) * settings.temperature
            var total = 0.0
            for i in 0..<s {
                weights[i] = costs[i].isFinite ? Foundation.exp(-Double(costs[i] - low) / scale) : 0
                total += weights[i]
            }
            for i in 0..<s { weights[i] /= total }
        }
        candidates.withUnsafeBufferPointer { c in
            for j in 0..<n {
                var mu = 0.0
                for i in 0..<s where weights[i] > 0 { mu += weights[i] * Double(c[i * n + j]) }
                var variance = 0.0
                for i in 0..<s where weights[i] > 0 { let x = Double(c[i * n + j]) - mu; variance += weights[i] * x * x }
                mean[j] = Float(mu)
                std[j] = Float(max(variance.squareRoot(), 1e-3))
            }
        }
    }
}

/// A trained world model read back from a checkpoint.
public struct WorldModelCheckpoint {
    public let path: String
    public let configuration: WorldModelConfiguration
    public let network: WorldModelNetwork<Float>
    public let step: Int

    /// Reads `path` (any checkpoint of a `world_model` run) and builds its network.
    /// - Throws: an error naming the file when it is not readable, not a world model, or its
    ///   tensors do not fit the model its config describes.
    public init(path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let checkpoint = try HDF5CheckpointDirectory(directory: directory.isEmpty ? "." : directory).read(path)
        let name = recipeName(ofConfig: checkpoint.config)
        guard name == WorldModelSettings.recipeName else {
            throw ConfigurationError("\(path): a checkpoint of recipe \"\(name)\", not \(WorldModelSettings.recipeName)")
        }
        var configuration = try WorldModelConfiguration.load(yaml: checkpoint.config, source: path)
        guard let tensors = checkpoint.groups[Checkpoint.modelGroup] else { throw ConfigurationError("\(path): no model state") }
        // A config saved before a null part was written back names none, so the default part
        // would come back: the tensors tell whether the optional projectors exist.
        // (Tensor names are `params/…`, `buffers/…`.)
        func has(_ part: String) -> Bool { tensors.keys.contains { $0.split(separator: "/").last?.hasPrefix(part + ".") == true } }
        if !has("projector") { configuration.model.projector = nil }
        if !has("pred_proj") { configuration.model.predictionProjector = nil }
        self.configuration = configuration
        network = WorldModelNetwork<Float>(configuration.model, historyFrames: configuration.data.historyFrames,
                                           predictedFrames: configuration.data.predictedFrames, seed: configuration.seed)
        try StateGroup(name: Checkpoint.modelGroup, parameters: network.parameters, buffers: network.buffers)
            .load(tensors, stepCount: nil, from: path)
        self.path = path
        step = checkpoint.step
    }
}
