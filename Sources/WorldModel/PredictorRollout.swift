import Dispatch
import Engine
import Foundation
import Layers
import Tensor

/// The transformer predictor rolled out for planning, token by token with a key/value cache —
/// the inference-only twin of ``WorldModelNetwork/predict(_:actions:context:)`` on growing and
/// sliding windows of at most `H` frames, giving the same predictions (a test compares them).
///
/// A rollout of `K` blocks from one embedding, for `S` candidates at once:
///
/// ```
/// u = action_encoder(block), modulation_b = Linear_b(SiLU(u))   once per (candidate, action block)
/// step s < H:   the window grows: token s at position s attends to the cached keys/values of 0…s−1
/// step s ≥ H:   the window slides: its H tokens are recomputed at positions 0…H−1 (each
///               token's position changes, so nothing of the previous window is reusable);
///               in the last block only the keys/values of all but the newest token are needed
/// ```
///
/// Every linear map is one `sgemm` over a lane's candidates; attention over at most `H` cached
/// tokens, layer norm, modulation and GELU are SIMD loops over the rows. With `threads > 1` the
/// candidates are split into that many lanes, each on its own thread with its own buffers (and
/// one-threaded BLAS). The prediction projector runs in each lane too, as ``ProjectorStage``s:
/// in evaluation its batch norm is an affine map, folded into the linear map before it. Buffers
/// are made once; a rollout allocates nothing.
final class PredictorRollout: @unchecked Sendable {
    /// The weights, shared read-only by the lanes.
    fileprivate struct Weights {
        struct Block {
            let qkvWeight: Tensor<Float>, qkvBias: Tensor<Float>      // (3C, C), (3C): rows [q | k | v]
            let projWeight: Tensor<Float>, projBias: Tensor<Float>    // (C, C)
            let fc1Weight: Tensor<Float>, fc1Bias: Tensor<Float>      // (F, C)
            let fc2Weight: Tensor<Float>, fc2Bias: Tensor<Float>      // (C, F)
            let modulationWeight: Tensor<Float>, modulationBias: Tensor<Float>   // (6C, A)
        }
        /// The action encoder's linear maps (GELU between them), when it is such an MLP.
        let actionLayers: [(weight: Tensor<Float>, bias: Tensor<Float>)]
        let blocks: [Block]
        let position: Tensor<Float>                                   // (H, C)
        let normWeight: Tensor<Float>, normBias: Tensor<Float>
        let headWeight: Tensor<Float>, headBias: Tensor<Float>        // (D, C)
        /// The prediction projector (none: the head's output is the prediction).
        let projector: [ProjectorStage]
        let features: Int, heads: Int, hidden: Int, conditionFeatures: Int, history: Int, horizon: Int, blockWidth: Int
    }

    let samples: Int, horizon: Int
    /// The lanes, one a thread.
    var threads: Int { lanes.count }
    private let weights: Weights
    private let lanes: [Lane]
    private let network: WorldModelNetwork<Float>
    private let context: LayerContext

    /// - Parameters:
    ///   - network: a world model with the transformer predictor.
    ///   - samples, horizon: `S` candidates of `K` action blocks of `blockWidth` values.
    ///   - threads: lanes run in parallel (1 with an action encoder that is not an MLP of
    ///     linear maps and GELU).
    ///   - context: the evaluation context whose slots the network's own layers use.
    init(network: WorldModelNetwork<Float>, samples: Int, horizon: Int, blockWidth: Int, threads: Int,
         context: LayerContext) throws {
        guard let transformer = network.transformer else { preconditionFailure("PredictorRollout: the predictor is not a transformer") }
        let c = transformer.features, h = network.historyFrames
        let parameters = network.parameters
        func value(_ name: String) -> Tensor<Float> { parameters.value(name) }
        var actionLayers: [(weight: Tensor<Float>, bias: Tensor<Float>)] = []
        if case let .mlp(mlp) = network.description.actionEncoder, !mlp.batchNorm, mlp.activation == .gelu {
            actionLayers = (0..<(mlp.widths.count - 1)).map { i in
                (value("action_encoder.\(2 * i).weight"), value("action_encoder.\(2 * i).bias"))
            }
        }
        weights = Weights(
            actionLayers: actionLayers,
            blocks: transformer.blocks.indices.map { i in
                let p = "predictor.blocks.\(i)."
                return Weights.Block(qkvWeight: value(p + "attn.qkv.weight"), qkvBias: value(p + "attn.qkv.bias"),
                                     projWeight: value(p + "attn.proj.weight"), projBias: value(p + "attn.proj.bias"),
                                     fc1Weight: value(p + "mlp.fc1.weight"), fc1Bias: value(p + "mlp.fc1.bias"),
                                     fc2Weight: value(p + "mlp.fc2.weight"), fc2Bias: value(p + "mlp.fc2.bias"),
                                     modulationWeight: value(p + "adaLN_modulation.1.weight"),
                                     modulationBias: value(p + "adaLN_modulation.1.bias"))
            },
            position: value("predictor.pos_embed").reshaped([h, c]),
            normWeight: value("predictor.norm.weight"), normBias: value("predictor.norm.bias"),
            headWeight: value("predictor.head.weight"), headBias: value("predictor.head.bias"),
            projector: try network.predictionProjector.map { try ProjectorStage.folding($0, context: context.slot(context.slot + 2)) } ?? [],
            features: c, heads: transformer.blocks[0].attn.heads, hidden: transformer.blocks[0].mlp.hiddenFeatures,
            conditionFeatures: transformer.conditionFeatures, history: h, horizon: horizon, blockWidth: blockWidth)
        self.samples = samples
        self.horizon = horizon
        self.network = network
        self.context = context
        let count = actionLayers.isEmpty ? 1 : max(1, min(threads, samples))
        let shared = weights
        lanes = (0..<count).map { i in
            Lane(weights: shared, rows: (i * samples / count)..<((i + 1) * samples / count))
        }
    }

    /// Rolls the candidates out: `candidates` `(S·K, W)` are the action blocks (candidate-major),
    /// `rollout` `(S, K + 1, D)` holds the start embedding at step 0 of every candidate and
    /// receives the predictions at steps 1…K.
    func run(candidates: Tensor<Float>, rollout: Tensor<Float>) throws {
        precondition(candidates.count == samples * horizon * weights.blockWidth && rollout.count == samples * (horizon + 1) * weights.features)
        if weights.actionLayers.isEmpty {
            let u = try network.encodeActions(candidates, context: context.slot(context.slot + 1))
            lanes[0].embedded.copy(from: u)
        }
        guard lanes.count > 1 else {
            lanes[0].run(candidates: candidates, rollout: rollout, encodesActions: !weights.actionLayers.isEmpty)
            return
        }
        DispatchQueue.concurrentPerform(iterations: lanes.count) { i in
            lanes[i].run(candidates: candidates, rollout: rollout, encodesActions: true)
        }
    }
}

/// One thread's share of the candidates (`rows`), with its own buffers.
private final class Lane: @unchecked Sendable {
    let weights: PredictorRollout.Weights
    let rows: Range<Int>
    /// The action embeddings `(rows·K, A)` (filled by the caller when the lane does not encode them).
    let embedded: Tensor<Float>
    private let actionHidden: [Tensor<Float>]                  // the action encoder's hidden layers
    private let silu: Tensor<Float>                            // (rows·K, A)
    private let modulation: [Tensor<Float>]                    // per block (rows·K, 6C)
    private let keysValues: [Tensor<Float>]                    // per block (rows, H, 2C): [k | v] per position
    private let x: Tensor<Float>, modulated: Tensor<Float>, fused: Tensor<Float>, attended: Tensor<Float>
    private let branch: Tensor<Float>, wide: Tensor<Float>, output: Tensor<Float>
    private let projected: [Tensor<Float>]                     // per projector stage (rows, width)

    init(weights: PredictorRollout.Weights, rows: Range<Int>) {
        let n = rows.count, k = weights.horizon, c = weights.features
        self.weights = weights
        self.rows = rows
        actionHidden = weights.actionLayers.dropLast().map { Tensor(zeros: [n * k, $0.weight.shape[0]]) }
        embedded = Tensor(zeros: [n * k, weights.conditionFeatures])
        silu = Tensor(zeros: [n * k, weights.conditionFeatures])
        modulation = weights.blocks.map { _ in Tensor(zeros: [n * k, 6 * c]) }
        keysValues = weights.blocks.map { _ in Tensor(zeros: [n, weights.history, 2 * c]) }
        x = Tensor(zeros: [n, c])
        modulated = Tensor(zeros: [n, c])
        fused = Tensor(zeros: [n, 3 * c])
        attended = Tensor(zeros: [n, c])
        branch = Tensor(zeros: [n, c])
        wide = Tensor(zeros: [n, weights.hidden])
        output = Tensor(zeros: [n, weights.headWeight.shape[0]])
        projected = weights.projector.map { Tensor(zeros: [n, $0.weight.shape[0]]) }
    }

    /// The rollout of this lane's candidates.
    func run(candidates: Tensor<Float>, rollout: Tensor<Float>, encodesActions: Bool) {
        let (n, k, h, c, w) = (rows.count, weights.horizon, weights.history, weights.features, weights.blockWidth)
        let d = (projected.last ?? output).columnCount
        if encodesActions {
            // u = Linear(GELU(Linear(…)))
            var input = candidates.withUnsafeBufferPointer { UnsafePointer($0.baseAddress! + rows.lowerBound * k * w) }
            var inputWidth = w
            for (i, layer) in weights.actionLayers.enumerated() {
                let target = i < actionHidden.count ? actionHidden[i] : embedded
                linear(input, inputWidth, layer.weight, layer.bias, into: target, rows: n * k)
                if i < actionHidden.count {
                    target.withUnsafeMutableBufferPointer { Float.activation(.gelu, $0.baseAddress!, into: $0.baseAddress!, count: $0.count) }
                }
                input = target.withUnsafeBufferPointer { UnsafePointer($0.baseAddress!) }
                inputWidth = target.columnCount
            }
        }
        // The AdaLN modulation of every (candidate, block), once: Linear(SiLU(u)).
        embedded.withUnsafeBufferPointer { u in
            silu.withUnsafeMutableBufferPointer { y in Float.activation(.silu, u.baseAddress!, into: y.baseAddress!, count: u.count) }
        }
        for (block, m) in zip(weights.blocks, modulation) {
            linear(silu, block.modulationWeight, block.modulationBias, into: m, rows: n * k)
        }
        for step in 0..<k {
            // Step s < H appends token s; later steps recompute the window s − H + 1 … s.
            let first = step < h ? step : step + 1 - h
            for frame in first...step {
                let slot = step < h ? frame : frame - first
                rollout.withUnsafeBufferPointer { e in
                    weights.position.withUnsafeBufferPointer { pos in
                        x.withUnsafeMutableBufferPointer { t in
                            for r in 0..<n {
                                let source = ((rows.lowerBound + r) * (k + 1) + frame) * d
                                for j in 0..<c { t[r * c + j] = e[source + j] + pos[slot * c + j] }
                            }
                        }
                    }
                }
                token(at: slot, actionBlock: frame, needsOutput: frame == step)
            }
            // The prediction of the newest token: head(norm(x)) (then the prediction projector).
            layerNorm(x, into: modulated, weight: weights.normWeight, bias: weights.normBias)
            linear(modulated, weights.headWeight, weights.headBias, into: output, rows: n)
            var predicted = output
            for (stage, target) in zip(weights.projector, projected) {
                linear(predicted, stage.weight, stage.bias, into: target, rows: n)
                target.withUnsafeMutableBufferPointer { y in
                    switch stage.activation {
                    case .none: break
                    case .relu: for i in y.indices { y[i] = Swift.max(y[i], 0) }
                    case .gelu: Float.activation(.gelu, y.baseAddress!, into: y.baseAddress!, count: y.count)
                    }
                }
                predicted = target
            }
            predicted.withUnsafeBufferPointer { p in
                rollout.withUnsafeMutableBufferPointer { e in
                    for r in 0..<n {
                        let target = ((rows.lowerBound + r) * (k + 1) + step + 1) * d
                        for j in 0..<d { e[target + j] = p[r * d + j] }
                    }
                }
            }
        }
    }

    /// One token of every candidate (in `x`) at window position `slot` through the blocks,
    /// conditioned on action block `actionBlock`; leaves the last block's output in `x`, or
    /// (without `needsOutput`) only the last block's keys and values in its cache.
    private func token(at slot: Int, actionBlock: Int, needsOutput: Bool) {
        let (n, c) = (rows.count, weights.features)
        for (index, block) in weights.blocks.enumerated() {
            let (m, cache) = (modulation[index], keysValues[index])
            // u = norm1(x) ⊙ (1 + scale₁) + shift₁
            normalizeAndModulate(m, chunk: 0, actionBlock: actionBlock)
            if index == weights.blocks.count - 1 && !needsOutput {
                // Only this token's keys and values: the rows C…3C of the fused projection.
                linear(modulated, block.qkvWeight, block.qkvBias, into: fused, rows: n, outputOffset: c, outputs: 2 * c)
                storeKeysValues(cache, slot: slot)
                return
            }
            linear(modulated, block.qkvWeight, block.qkvBias, into: fused, rows: n)
            storeKeysValues(cache, slot: slot)
            attend(cache, slot: slot)
            linear(attended, block.projWeight, block.projBias, into: branch, rows: n)
            gatedResidual(branch, m, chunk: 2, actionBlock: actionBlock)
            // x += gate₂ ⊙ mlp(norm2(x) ⊙ (1 + scale₂) + shift₂)
            normalizeAndModulate(m, chunk: 3, actionBlock: actionBlock)
            linear(modulated, block.fc1Weight, block.fc1Bias, into: wide, rows: n)
            wide.withUnsafeMutableBufferPointer { Float.activation(.gelu, $0.baseAddress!, into: $0.baseAddress!, count: $0.count) }
            linear(wide, block.fc2Weight, block.fc2Bias, into: branch, rows: n)
            gatedResidual(branch, m, chunk: 5, actionBlock: actionBlock)
        }
    }

    // MARK: Kernels over the lane's rows

    /// `y[:, offset ..< offset + n] = x Wᵀ + b` with `W`'s rows `offset ..< offset + n` (default all).
    private func linear(_ x: Tensor<Float>, _ weight: Tensor<Float>, _ bias: Tensor<Float>, into y: Tensor<Float>, rows: Int,
                        outputOffset: Int = 0, outputs: Int? = nil) {
        x.withUnsafeBufferPointer { a in
            linear(a.baseAddress!, x.columnCount, weight, bias, into: y, rows: rows, outputOffset: outputOffset, outputs: outputs)
        }
    }

    private func linear(_ a: UnsafePointer<Float>, _ inputs: Int, _ weight: Tensor<Float>, _ bias: Tensor<Float>, into y: Tensor<Float>,
                        rows: Int, outputOffset: Int = 0, outputs: Int? = nil) {
        let n = outputs ?? weight.shape[0], stride = y.columnCount
        weight.withUnsafeBufferPointer { w in
            bias.withUnsafeBufferPointer { b in
                y.withUnsafeMutableBufferPointer { out in
                    let c = out.baseAddress! + outputOffset
                    for r in 0..<rows { (c + r * stride).update(from: b.baseAddress! + outputOffset, count: n) }
                    Float.gemm(transposeA: false, transposeB: true, m: rows, n: n, k: inputs, alpha: 1, a: a, lda: inputs,
                               b: w.baseAddress! + outputOffset * inputs, ldb: inputs, beta: 1, c: c, ldc: stride)
                }
            }
        }
    }

    /// Row-wise layer norm of `x` (biased variance, ε = 1e-6 as the predictor's) with its affine
    /// map into `y`.
    private func layerNorm(_ x: Tensor<Float>, into y: Tensor<Float>, weight: Tensor<Float>, bias: Tensor<Float>) {
        let c = weights.features
        x.withUnsafeBufferPointer { x in
            y.withUnsafeMutableBufferPointer { y in
                weight.withUnsafeBufferPointer { g in
                    bias.withUnsafeBufferPointer { b in
                        for r in 0..<rows.count {
                            let row = x.baseAddress! + r * c, out = y.baseAddress! + r * c
                            let (mean, inverse) = SIMDRows.meanAndInverseDeviation(row, c)
                            for j in 0..<c { out[j] = (row[j] - mean) * inverse * g[j] + b[j] }
                        }
                    }
                }
            }
        }
    }

    /// `modulated = norm(x) ⊙ (1 + scale) + shift` in one pass over the rows (layer norm without
    /// affine map, as in the blocks), with shift, scale the chunks `chunk`, `chunk + 1` of each
    /// candidate's modulation row of `actionBlock`.
    private func normalizeAndModulate(_ modulation: Tensor<Float>, chunk: Int, actionBlock: Int) {
        let c = weights.features, k = weights.horizon
        modulation.withUnsafeBufferPointer { m in
            x.withUnsafeBufferPointer { x in
                modulated.withUnsafeMutableBufferPointer { u in
                    for r in 0..<rows.count {
                        let row = x.baseAddress! + r * c, out = u.baseAddress! + r * c
                        let (mean, inverse) = SIMDRows.meanAndInverseDeviation(row, c)
                        let shift = m.baseAddress! + (r * k + actionBlock) * 6 * c + chunk * c, scale = shift + c
                        for j in 0..<c { out[j] = (row[j] - mean) * inverse * (1 + scale[j]) + shift[j] }
                    }
                }
            }
        }
    }

    /// `x += gate ⊙ f` with gate the chunk `chunk` of each candidate's modulation row.
    private func gatedResidual(_ f: Tensor<Float>, _ modulation: Tensor<Float>, chunk: Int, actionBlock: Int) {
        let c = weights.features, k = weights.horizon
        modulation.withUnsafeBufferPointer { m in
            f.withUnsafeBufferPointer { f in
                x.withUnsafeMutableBufferPointer { x in
                    for r in 0..<rows.count {
                        let gate = m.baseAddress! + (r * k + actionBlock) * 6 * c + chunk * c
                        for j in 0..<c { x[r * c + j] += gate[j] * f[r * c + j] }
                    }
                }
            }
        }
    }

    /// Copies the keys and values of `fused` (columns C…3C) into the cache at `slot`.
    private func storeKeysValues(_ cache: Tensor<Float>, slot: Int) {
        let c = weights.features, h = weights.history
        fused.withUnsafeBufferPointer { f in
            cache.withUnsafeMutableBufferPointer { kv in
                for r in 0..<rows.count {
                    (kv.baseAddress! + (r * h + slot) * 2 * c).update(from: f.baseAddress! + r * 3 * c + c, count: 2 * c)
                }
            }
        }
    }

    /// Causal attention of the query in `fused` (the token at `slot`) to the cached tokens
    /// `0…slot`, every head, into `attended`.
    private func attend(_ cache: Tensor<Float>, slot: Int) {
        let (c, h, heads) = (weights.features, weights.history, weights.heads)
        let d = c / heads, scale = 1 / Float(d).squareRoot()
        fused.withUnsafeBufferPointer { f in
            cache.withUnsafeBufferPointer { kv in
                attended.withUnsafeMutableBufferPointer { o in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: h) { p in
                        for r in 0..<rows.count {
                            let q = f.baseAddress! + r * 3 * c, keys = kv.baseAddress! + r * h * 2 * c
                            for head in 0..<heads {
                                var maximum = -Float.infinity
                                for t in 0...slot {
                                    p[t] = SIMDRows.dot(q + head * d, keys + t * 2 * c + head * d, d) * scale
                                    maximum = max(maximum, p[t])
                                }
                                var sum: Float = 0
                                for t in 0...slot { p[t] = Float.activationExp(p[t] - maximum); sum += p[t] }
                                let out = o.baseAddress! + r * c + head * d
                                for j in 0..<d { out[j] = 0 }
                                for t in 0...slot {
                                    let weight = p[t] / sum, value = keys + t * 2 * c + c + head * d
                                    for j in 0..<d { out[j] += weight * value[j] }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reductions over a row in 8-wide SIMD (a scalar `Float` sum is not reassociated, so not
/// vectorised).
enum SIMDRows {
    @inline(__always) static func sum(_ row: UnsafePointer<Float>, _ count: Int) -> Float {
        var accumulator = SIMD8<Float>(), j = 0
        while j + 8 <= count { accumulator += UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self); j += 8 }
        var total = accumulator.sum()
        while j < count { total += row[j]; j += 1 }
        return total
    }

    /// A row's mean and `1/√(σ² + ε)` (biased variance, ε = 1e-6 as the predictor's layer norms).
    @inline(__always) static func meanAndInverseDeviation(_ row: UnsafePointer<Float>, _ count: Int) -> (mean: Float, inverse: Float) {
        let mean = sum(row, count) / Float(count)
        return (mean, 1 / (squaredDeviations(row, count, mean) / Float(count) + 1e-6).squareRoot())
    }

    @inline(__always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ count: Int) -> Float {
        var accumulator = SIMD8<Float>(), j = 0
        while j + 8 <= count {
            accumulator += UnsafeRawPointer(a + j).loadUnaligned(as: SIMD8<Float>.self)
                * UnsafeRawPointer(b + j).loadUnaligned(as: SIMD8<Float>.self)
            j += 8
        }
        var total = accumulator.sum()
        while j < count { total += a[j] * b[j]; j += 1 }
        return total
    }

    @inline(__always) static func squaredDeviations(_ row: UnsafePointer<Float>, _ count: Int, _ mean: Float) -> Float {
        var accumulator = SIMD8<Float>(), j = 0
        while j + 8 <= count {
            let v = UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self) - mean
            accumulator += v * v
            j += 8
        }
        var total = accumulator.sum()
        while j < count { total += (row[j] - mean) * (row[j] - mean); j += 1 }
        return total
    }
}

/// One stage of the prediction projector in evaluation: `y = act(x Wᵀ + b)`, where `W`, `b` are
/// a `Linear` and the batch norm after it (running statistics: `γ (z − μ) / √(σ² + ε) + β`, an
/// affine map of each feature) in one.
struct ProjectorStage {
    enum Activation { case none, relu, gelu }
    let weight: Tensor<Float>   // (out, in)
    let bias: Tensor<Float>     // (out)
    let activation: Activation

    /// The stages of `projector` (an MLP: `Linear`, optional `BatchNorm`, then `ReLU` or `GELU`
    /// except after the last), each folded by running its own layers in evaluation mode on the
    /// zero vector and the unit vectors: `b` is the zero vector's output, column `i` of `W` the
    /// `i`-th unit vector's minus it — whatever the layers' parameters and running statistics.
    static func folding(_ projector: Sequential<Float>, context: LayerContext) throws -> [ProjectorStage] {
        var stages: [ProjectorStage] = [], pending: [any Layer<Float>] = []
        func close(_ activation: Activation) throws {
            guard let linear = pending.first as? Linear<Float> else {
                throw ConfigurationError("prediction projector: a stage must start with a linear layer, not \(pending.map { type(of: $0) })")
            }
            let (inputs, outputs) = (linear.inFeatures, linear.outFeatures)
            var probe = Tensor<Float>(zeros: [inputs + 1, inputs])
            for i in 0..<inputs { probe[flat: (i + 1) * inputs + i] = 1 }
            for layer in pending { probe = try layer.forward(probe, context: context) }
            let weight = Tensor<Float>(zeros: [outputs, inputs]), bias = Tensor<Float>(zeros: [outputs])
            for o in 0..<outputs {
                bias[flat: o] = probe[flat: o]
                for i in 0..<inputs { weight[flat: o * inputs + i] = probe[flat: (i + 1) * outputs + o] - probe[flat: o] }
            }
            stages.append(ProjectorStage(weight: weight, bias: bias, activation: activation))
            pending = []
        }
        for layer in projector.layers {
            switch layer {
            case is ReLU<Float>: try close(.relu)
            case is GELU<Float>: try close(.gelu)
            case is Linear<Float> where !pending.isEmpty: try close(.none); pending = [layer]
            default: pending.append(layer)
            }
        }
        if !pending.isEmpty { try close(.none) }
        return stages
    }
}
