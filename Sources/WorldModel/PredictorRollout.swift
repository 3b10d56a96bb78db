import Dispatch
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
/// one-threaded BLAS); a prediction projector (a network of its own, with batch norm) keeps one
/// lane. Buffers are made once; a rollout allocates nothing.
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
        let features: Int, heads: Int, hidden: Int, conditionFeatures: Int, history: Int, horizon: Int, blockWidth: Int
    }

    let samples: Int, horizon: Int
    /// The lanes, one a thread.
    var threads: Int { lanes.count }
    private let weights: Weights
    private let lanes: [Lane]
    private let network: WorldModelNetwork<Float>
    private let projector: Sequential<Float>?
    private let context: LayerContext

    /// - Parameters:
    ///   - network: a world model with the transformer predictor.
    ///   - samples, horizon: `S` candidates of `K` action blocks of `blockWidth` values.
    ///   - threads: lanes run in parallel (1 with a prediction projector, or an action encoder
    ///     that is not an MLP of linear maps and GELU).
    ///   - context: the evaluation context whose slots the network's own layers use.
    init(network: WorldModelNetwork<Float>, samples: Int, horizon: Int, blockWidth: Int, threads: Int, context: LayerContext) {
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
            features: c, heads: transformer.blocks[0].attn.heads, hidden: transformer.blocks[0].mlp.hiddenFeatures,
            conditionFeatures: transformer.conditionFeatures, history: h, horizon: horizon, blockWidth: blockWidth)
        self.samples = samples
        self.horizon = horizon
        self.network = network
        projector = network.predictionProjector
        self.context = context
        let count = network.predictionProjector == nil && !actionLayers.isEmpty ? max(1, min(threads, samples)) : 1
        let shared = weights, width = network.embeddingWidth
        lanes = (0..<count).map { i in
            Lane(weights: shared, rows: (i * samples / count)..<((i + 1) * samples / count), embeddingWidth: width)
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
            try lanes[0].run(candidates: candidates, rollout: rollout, encodesActions: !weights.actionLayers.isEmpty) { output in
                try self.projector?.forward(output, context: self.context) ?? output
            }
            return
        }
        nonisolated(unsafe) let (candidates, rollout) = (candidates, rollout)
        DispatchQueue.concurrentPerform(iterations: lanes.count) { i in
            // Without a projector nothing throws.
            try? lanes[i].run(candidates: candidates, rollout: rollout, encodesActions: true) { $0 }
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

    init(weights: PredictorRollout.Weights, rows: Range<Int>, embeddingWidth: Int) {
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
        output = Tensor(zeros: [n, embeddingWidth])
    }

    /// The rollout of this lane's candidates; `project` maps the head's output `(rows, D)` to
    /// the predicted embeddings (the prediction projector, or the identity).
    func run(candidates: Tensor<Float>, rollout: Tensor<Float>, encodesActions: Bool,
             project: (Tensor<Float>) throws -> Tensor<Float>) throws {
        let (n, k, h, c, w) = (rows.count, weights.horizon, weights.history, weights.features, weights.blockWidth)
        let d = output.columnCount
        if encodesActions {
            // u = Linear(GELU(Linear(…)))
            var input = candidates.withUnsafeBufferPointer { UnsafePointer($0.baseAddress! + rows.lowerBound * k * w) }
            var inputWidth = w
            for (i, layer) in weights.actionLayers.enumerated() {
                let target = i < actionHidden.count ? actionHidden[i] : embedded
                linear(input, inputWidth, layer.weight, layer.bias, into: target, rows: n * k)
                if i < actionHidden.count {
                    target.withUnsafeMutableBufferPointer { FastGELU.apply($0.baseAddress!, count: $0.count) }
                }
                input = target.withUnsafeBufferPointer { UnsafePointer($0.baseAddress!) }
                inputWidth = target.columnCount
            }
        }
        // The AdaLN modulation of every (candidate, block), once: Linear(SiLU(u)).
        embedded.withUnsafeBufferPointer { u in
            silu.withUnsafeMutableBufferPointer { y in
                for i in 0..<u.count { let v = u[i]; y[i] = v / (1 + Foundation.exp(-v)) }
            }
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
            let predicted = try project(output)
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
            layerNorm(x, into: modulated, weight: nil, bias: nil)
            modulate(modulated, m, chunk: 0, actionBlock: actionBlock)
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
            layerNorm(x, into: modulated, weight: nil, bias: nil)
            modulate(modulated, m, chunk: 3, actionBlock: actionBlock)
            linear(modulated, block.fc1Weight, block.fc1Bias, into: wide, rows: n)
            wide.withUnsafeMutableBufferPointer { FastGELU.apply($0.baseAddress!, count: $0.count) }
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

    /// Row-wise layer norm of `x` (biased variance, ε = 1e-6 as the predictor's) into `y`,
    /// with an optional affine map.
    private func layerNorm(_ x: Tensor<Float>, into y: Tensor<Float>, weight: Tensor<Float>?, bias: Tensor<Float>?) {
        let c = weights.features
        x.withUnsafeBufferPointer { x in
            y.withUnsafeMutableBufferPointer { y in
                for r in 0..<rows.count {
                    let row = x.baseAddress! + r * c, out = y.baseAddress! + r * c
                    let mean = SIMDRows.sum(row, c) / Float(c)
                    let inverse = 1 / (SIMDRows.squaredDeviations(row, c, mean) / Float(c) + 1e-6).squareRoot()
                    for j in 0..<c { out[j] = (row[j] - mean) * inverse }
                }
            }
        }
        guard let weight, let bias else { return }
        weight.withUnsafeBufferPointer { g in
            bias.withUnsafeBufferPointer { b in
                y.withUnsafeMutableBufferPointer { y in
                    for r in 0..<rows.count { for j in 0..<c { y[r * c + j] = y[r * c + j] * g[j] + b[j] } }
                }
            }
        }
    }

    /// `u = u ⊙ (1 + scale) + shift` with shift, scale the chunks `chunk`, `chunk + 1` of each
    /// candidate's modulation row of `actionBlock`.
    private func modulate(_ u: Tensor<Float>, _ modulation: Tensor<Float>, chunk: Int, actionBlock: Int) {
        let c = weights.features, k = weights.horizon
        modulation.withUnsafeBufferPointer { m in
            u.withUnsafeMutableBufferPointer { u in
                for r in 0..<rows.count {
                    let shift = m.baseAddress! + (r * k + actionBlock) * 6 * c + chunk * c, scale = shift + c
                    for j in 0..<c { u[r * c + j] = u[r * c + j] * (1 + scale[j]) + shift[j] }
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
                                    var dot: Float = 0
                                    let key = keys + t * 2 * c + head * d
                                    for j in 0..<d { dot += q[head * d + j] * key[j] }
                                    p[t] = dot * scale
                                    maximum = max(maximum, p[t])
                                }
                                var sum: Float = 0
                                for t in 0...slot { p[t] = Foundation.exp(p[t] - maximum); sum += p[t] }
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
    static func sum(_ row: UnsafePointer<Float>, _ count: Int) -> Float {
        var accumulator = SIMD8<Float>(), j = 0
        while j + 8 <= count { accumulator += UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self); j += 8 }
        var total = accumulator.sum()
        while j < count { total += row[j]; j += 1 }
        return total
    }

    static func squaredDeviations(_ row: UnsafePointer<Float>, _ count: Int, _ mean: Float) -> Float {
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

/// GELU with a rational approximation of `erf` (Eigen's single-precision one, |error| < 1e-7
/// on the clamped range [−4, 4]); `Float.erf` is a libm call per element, this is 15
/// multiply-adds and a division.
enum FastGELU {
    @inline(__always)
    static func erf(_ value: Float) -> Float {
        let x = Swift.min(4, Swift.max(-4, value)), x2 = x * x
        var p: Float = -2.72614225801306e-10
        p = p * x2 + 2.77068142495902e-08
        p = p * x2 - 2.10102402082508e-06
        p = p * x2 - 5.69250639462346e-05
        p = p * x2 - 7.34990630326855e-04
        p = p * x2 - 2.95459980854025e-03
        p = p * x2 - 1.60960333262415e-02
        var q: Float = -1.45660718464996e-05
        q = q * x2 - 2.13374055278905e-04
        q = q * x2 - 1.68282697438203e-03
        q = q * x2 - 7.37332916720468e-03
        q = q * x2 - 1.42647390514189e-02
        return x * p / q
    }

    /// `y = y / 2 · (1 + erf(y / √2))` in place.
    static func apply(_ y: UnsafeMutablePointer<Float>, count: Int) {
        let inverseSqrt2: Float = 0.70710678118654752
        for i in 0..<count { let v = y[i]; y[i] = v / 2 * (1 + erf(v * inverseSqrt2)) }
    }
}
