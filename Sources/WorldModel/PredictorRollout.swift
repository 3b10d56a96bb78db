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
/// modulation_b = Linear_b(SiLU(u))          once per (candidate, action block) and block b
/// step s < H:   the window grows: token s at position s attends to the cached keys/values of 0…s−1
/// step s ≥ H:   the window slides: its H tokens are recomputed at positions 0…H−1 (each
///               token's position changes, so nothing of the previous window is reusable);
///               in the last block only the keys/values of all but the newest token are needed
/// ```
///
/// Every linear map is one `sgemm` over the `S` candidates (`S × C` by `C × ·`); attention over
/// at most `H` cached tokens, layer norm, modulation and GELU are loops over the rows. Buffers
/// are made once; a rollout allocates nothing.
final class PredictorRollout {
    private struct Block {
        let qkvWeight: Tensor<Float>, qkvBias: Tensor<Float>      // (3C, C), (3C): rows [q | k | v]
        let projWeight: Tensor<Float>, projBias: Tensor<Float>    // (C, C)
        let fc1Weight: Tensor<Float>, fc1Bias: Tensor<Float>      // (F, C)
        let fc2Weight: Tensor<Float>, fc2Bias: Tensor<Float>      // (C, F)
        let modulationWeight: Tensor<Float>, modulationBias: Tensor<Float>   // (6C, A)
        let modulation: Tensor<Float>                             // (S·K, 6C) of this rollout's actions
        let keysValues: Tensor<Float>                             // (S, H, 2C) the cache: [k | v] per position
    }

    let samples: Int, horizon: Int, history: Int
    private let features: Int, heads: Int, hidden: Int, conditionFeatures: Int
    private let blocks: [Block]
    private let position: Tensor<Float>                           // (H, C)
    private let normWeight: Tensor<Float>, normBias: Tensor<Float>
    private let headWeight: Tensor<Float>, headBias: Tensor<Float>   // (D, C)
    private let projector: Sequential<Float>?
    private let context: LayerContext
    // Scratch of one token of every candidate: (S, ·).
    private let x: Tensor<Float>, modulated: Tensor<Float>, fused: Tensor<Float>, attended: Tensor<Float>
    private let branch: Tensor<Float>, wide: Tensor<Float>, output: Tensor<Float>, silu: Tensor<Float>

    /// - Parameters:
    ///   - network: a world model with the transformer predictor.
    ///   - samples, horizon: `S` candidates of `K` action blocks.
    ///   - context: the evaluation context (its slot) the prediction projector runs in.
    init(network: WorldModelNetwork<Float>, samples: Int, horizon: Int, context: LayerContext) {
        guard let transformer = network.transformer else { preconditionFailure("PredictorRollout: the predictor is not a transformer") }
        let c = transformer.features, a = transformer.conditionFeatures, h = network.historyFrames
        let hidden = transformer.blocks[0].mlp.hiddenFeatures
        self.samples = samples
        self.horizon = horizon
        history = h
        features = c
        heads = transformer.blocks[0].attn.heads
        self.hidden = hidden
        conditionFeatures = a
        let parameters = network.parameters
        func value(_ name: String) -> Tensor<Float> { parameters.value("predictor." + name) }
        blocks = transformer.blocks.indices.map { i in
            let p = "blocks.\(i)."
            return Block(qkvWeight: value(p + "attn.qkv.weight"), qkvBias: value(p + "attn.qkv.bias"),
                         projWeight: value(p + "attn.proj.weight"), projBias: value(p + "attn.proj.bias"),
                         fc1Weight: value(p + "mlp.fc1.weight"), fc1Bias: value(p + "mlp.fc1.bias"),
                         fc2Weight: value(p + "mlp.fc2.weight"), fc2Bias: value(p + "mlp.fc2.bias"),
                         modulationWeight: value(p + "adaLN_modulation.1.weight"),
                         modulationBias: value(p + "adaLN_modulation.1.bias"),
                         modulation: Tensor(zeros: [samples * horizon, 6 * c]), keysValues: Tensor(zeros: [samples, h, 2 * c]))
        }
        position = value("pos_embed").reshaped([h, c])
        normWeight = value("norm.weight")
        normBias = value("norm.bias")
        headWeight = value("head.weight")
        headBias = value("head.bias")
        projector = network.predictionProjector
        self.context = context
        x = Tensor(zeros: [samples, c])
        modulated = Tensor(zeros: [samples, c])
        fused = Tensor(zeros: [samples, 3 * c])
        attended = Tensor(zeros: [samples, c])
        branch = Tensor(zeros: [samples, c])
        wide = Tensor(zeros: [samples, hidden])
        output = Tensor(zeros: [samples, network.embeddingWidth])
        silu = Tensor(zeros: [samples * horizon, a])
    }

    /// Rolls the candidates out: `actions` `(S·K, A)` are the action embeddings (candidate-major),
    /// `rollout` `(S, K + 1, D)` holds the start embedding at step 0 of every candidate and
    /// receives the predictions at steps 1…K.
    func run(actions: Tensor<Float>, rollout: Tensor<Float>) throws {
        let (s, k, h, c) = (samples, horizon, history, features)
        precondition(actions.count == s * k * conditionFeatures && rollout.count == s * (k + 1) * output.columnCount)
        // The AdaLN modulation of every (candidate, block), once: Linear(SiLU(u)).
        actions.withUnsafeBufferPointer { u in
            silu.withUnsafeMutableBufferPointer { y in
                for i in 0..<u.count { let v = u[i]; y[i] = v / (1 + Foundation.exp(-v)) }
            }
        }
        for block in blocks { linear(silu, block.modulationWeight, block.modulationBias, into: block.modulation, rows: s * k) }
        let d = output.columnCount
        for step in 0..<k {
            // Step s < H appends token s; later steps recompute the window s − H + 1 … s.
            let first = step < h ? step : step + 1 - h
            for frame in first...step {
                let slot = step < h ? frame : frame - first
                rollout.withUnsafeBufferPointer { e in
                    position.withUnsafeBufferPointer { pos in
                        x.withUnsafeMutableBufferPointer { t in
                            for sample in 0..<s {
                                let source = (sample * (k + 1) + frame) * d
                                for j in 0..<c { t[sample * c + j] = e[source + j] + pos[slot * c + j] }
                            }
                        }
                    }
                }
                try token(at: slot, actionBlock: frame, needsOutput: frame == step)
            }
            // The prediction of the newest token: head(norm(x)) (then the prediction projector).
            layerNorm(x, into: modulated, weight: normWeight, bias: normBias, epsilon: 1e-6)
            linear(modulated, headWeight, headBias, into: output, rows: s)
            let predicted = try projector?.forward(output, context: context) ?? output
            predicted.withUnsafeBufferPointer { p in
                rollout.withUnsafeMutableBufferPointer { e in
                    for sample in 0..<s {
                        let target = (sample * (k + 1) + step + 1) * d
                        for j in 0..<d { e[target + j] = p[sample * d + j] }
                    }
                }
            }
        }
    }

    /// One token of every candidate (in `x`) at window position `slot` through the blocks,
    /// conditioned on action block `actionBlock`; leaves the last block's output in `x`, or
    /// (without `needsOutput`) only the last block's keys and values in its cache.
    private func token(at slot: Int, actionBlock: Int, needsOutput: Bool) throws {
        let (s, c) = (samples, features)
        for (index, block) in blocks.enumerated() {
            let last = index == blocks.count - 1
            // u = norm1(x) ⊙ (1 + scale₁) + shift₁
            layerNorm(x, into: modulated, weight: nil, bias: nil, epsilon: 1e-6)
            modulate(modulated, block.modulation, chunk: 0, actionBlock: actionBlock)
            if last && !needsOutput {
                // Only this token's keys and values: the rows C…3C of the fused projection.
                linear(modulated, block.qkvWeight, block.qkvBias, into: fused, rows: s, outputOffset: c, outputs: 2 * c)
                storeKeysValues(block.keysValues, slot: slot)
                return
            }
            linear(modulated, block.qkvWeight, block.qkvBias, into: fused, rows: s)
            storeKeysValues(block.keysValues, slot: slot)
            attend(block.keysValues, slot: slot)
            linear(attended, block.projWeight, block.projBias, into: branch, rows: s)
            gatedResidual(branch, block.modulation, chunk: 2, actionBlock: actionBlock)
            // x += gate₂ ⊙ mlp(norm2(x) ⊙ (1 + scale₂) + shift₂)
            layerNorm(x, into: modulated, weight: nil, bias: nil, epsilon: 1e-6)
            modulate(modulated, block.modulation, chunk: 3, actionBlock: actionBlock)
            linear(modulated, block.fc1Weight, block.fc1Bias, into: wide, rows: s)
            wide.withUnsafeMutableBufferPointer { y in FastGELU.apply(y.baseAddress!, count: y.count) }
            linear(wide, block.fc2Weight, block.fc2Bias, into: branch, rows: s)
            gatedResidual(branch, block.modulation, chunk: 5, actionBlock: actionBlock)
        }
    }

    // MARK: Kernels over the S rows

    /// `y[:, offset ..< offset + n] = x Wᵀ + b` with `W`'s rows `offset ..< offset + n` (default all).
    private func linear(_ x: Tensor<Float>, _ weight: Tensor<Float>, _ bias: Tensor<Float>, into y: Tensor<Float>, rows: Int,
                        outputOffset: Int = 0, outputs: Int? = nil) {
        let n = outputs ?? weight.shape[0], inputs = weight.shape[1], stride = y.columnCount
        x.withUnsafeBufferPointer { a in
            weight.withUnsafeBufferPointer { w in
                bias.withUnsafeBufferPointer { b in
                    y.withUnsafeMutableBufferPointer { out in
                        let c = out.baseAddress! + outputOffset
                        for r in 0..<rows { for j in 0..<n { c[r * stride + j] = b[outputOffset + j] } }
                        Float.gemm(transposeA: false, transposeB: true, m: rows, n: n, k: inputs, alpha: 1, a: a.baseAddress!, lda: inputs,
                                   b: w.baseAddress! + outputOffset * inputs, ldb: inputs, beta: 1, c: c, ldc: stride)
                    }
                }
            }
        }
    }

    /// Row-wise layer norm of `x` (biased variance) into `y`, with an optional affine map.
    private func layerNorm(_ x: Tensor<Float>, into y: Tensor<Float>, weight: Tensor<Float>?, bias: Tensor<Float>?, epsilon: Float) {
        let c = features
        x.withUnsafeBufferPointer { x in
            y.withUnsafeMutableBufferPointer { y in
                for r in 0..<samples {
                    let row = x.baseAddress! + r * c, out = y.baseAddress! + r * c
                    var sum: Float = 0
                    for j in 0..<c { sum += row[j] }
                    let mean = sum / Float(c)
                    var squares: Float = 0
                    for j in 0..<c { let v = row[j] - mean; squares += v * v }
                    let inverse = 1 / (squares / Float(c) + epsilon).squareRoot()
                    for j in 0..<c { out[j] = (row[j] - mean) * inverse }
                }
            }
        }
        guard let weight, let bias else { return }
        weight.withUnsafeBufferPointer { g in
            bias.withUnsafeBufferPointer { b in
                y.withUnsafeMutableBufferPointer { y in
                    for r in 0..<samples { for j in 0..<c { y[r * c + j] = y[r * c + j] * g[j] + b[j] } }
                }
            }
        }
    }

    /// `u = u ⊙ (1 + scale) + shift` with shift, scale the chunks `chunk`, `chunk + 1` of each
    /// candidate's modulation row of `actionBlock`.
    private func modulate(_ u: Tensor<Float>, _ modulation: Tensor<Float>, chunk: Int, actionBlock: Int) {
        let c = features, k = horizon
        modulation.withUnsafeBufferPointer { m in
            u.withUnsafeMutableBufferPointer { u in
                for r in 0..<samples {
                    let shift = m.baseAddress! + (r * k + actionBlock) * 6 * c + chunk * c, scale = shift + c
                    for j in 0..<c { u[r * c + j] = u[r * c + j] * (1 + scale[j]) + shift[j] }
                }
            }
        }
    }

    /// `x += gate ⊙ f` with gate the chunk `chunk` of each candidate's modulation row.
    private func gatedResidual(_ f: Tensor<Float>, _ modulation: Tensor<Float>, chunk: Int, actionBlock: Int) {
        let c = features, k = horizon
        modulation.withUnsafeBufferPointer { m in
            f.withUnsafeBufferPointer { f in
                x.withUnsafeMutableBufferPointer { x in
                    for r in 0..<samples {
                        let gate = m.baseAddress! + (r * k + actionBlock) * 6 * c + chunk * c
                        for j in 0..<c { x[r * c + j] += gate[j] * f[r * c + j] }
                    }
                }
            }
        }
    }

    /// Copies the keys and values of `fused` (columns C…3C) into the cache at `slot`.
    private func storeKeysValues(_ cache: Tensor<Float>, slot: Int) {
        let c = features, h = history
        fused.withUnsafeBufferPointer { f in
            cache.withUnsafeMutableBufferPointer { kv in
                for r in 0..<samples {
                    let source = f.baseAddress! + r * 3 * c + c, target = kv.baseAddress! + (r * h + slot) * 2 * c
                    for j in 0..<(2 * c) { target[j] = source[j] }
                }
            }
        }
    }

    /// Causal attention of the query in `fused` (the token at `slot`) to the cached tokens
    /// `0…slot`, every head, into `attended`.
    private func attend(_ cache: Tensor<Float>, slot: Int) {
        let c = features, h = history, d = features / heads
        let scale = 1 / Float(d).squareRoot()
        fused.withUnsafeBufferPointer { f in
            cache.withUnsafeBufferPointer { kv in
                attended.withUnsafeMutableBufferPointer { o in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: h) { p in
                        for r in 0..<samples {
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

/// GELU with a rational approximation of `erf` (Eigen's single-precision one, |error| < 1e-7
/// on the clamped range [−4, 4]), in a loop the compiler vectorises; `Float.erf` is a libm call
/// per element.
enum FastGELU {
    @inline(__always)
    static func erf(_ value: Float) -> Float {
        let x = min(4, max(-4, value)), x2 = x * x
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
