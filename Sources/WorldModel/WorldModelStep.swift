import Communication
import Engine
import Layers
import Objectives
import Tensor

/// The world model's loss on this rank's clips of a global batch, forward and backward:
///
/// ```
/// z = projector(encoder(frames))                     (B, T, D)   T = H + P frames a clip
/// u = action_encoder(action blocks)                  (B, H, A)
/// ẑ = pred_proj(predictor(z[:, :H], u))              (B, Q, D)   teacher forcing
/// loss = mean over the global batch of ‖ẑ_q − z_{target(q)}‖² / D      (prediction)
///      + λ · 1/T Σ_t SIGReg(z[:, t] over the global batch)            (sigreg)
/// ```
///
/// No stop-gradient and no EMA: the targets are the same embeddings, and their gradient flows
/// into the encoder. What is all-reduced: the squared error and the clip count (one all-reduce
/// of two numbers), SIGReg's characteristic-function sums of every time step (one all-reduce,
/// or an all-gather of the embeddings when the cost model prefers it), and — inside the layers —
/// the batch-norm moments. The loss and the gradients are those of one process on the global
/// batch; the trainer then sums the parameter gradients over the ranks.
public final class WorldModelStep<Scalar: LayerScalar> {
    public let network: WorldModelNetwork<Scalar>
    /// λ of SIGReg.
    public var sigregWeight: Double
    /// SIGReg's directions (random: drawn from `(seed, step)`).
    public var directions: SlicingDirections<Scalar>
    public var seed: UInt64
    public var reduction: StatisticsReduction = .automatic
    private let workspace = Workspace()
    private var contextEmbeddings: Tensor<Scalar>?      // (B, H, D)
    private var actionBlocks: Tensor<Scalar>?           // (B·H, F·a)
    private var predictionGradient: Tensor<Scalar>?     // (B, Q, D)
    private var embeddingGradient: Tensor<Scalar>?      // (B·T, D)
    private var views: [Tensor<Scalar>] = []            // T × (B, D)
    private var viewGradients: [Tensor<Scalar>] = []    // T × (B, D)
    /// The last step's embeddings `(B·T, D)` (a view of the projector's buffer).
    public private(set) var embeddings: Tensor<Scalar>?

    public init(network: WorldModelNetwork<Scalar>, sigregWeight: Double, directions: SlicingDirections<Scalar>, seed: UInt64) {
        self.network = network
        self.sigregWeight = sigregWeight
        self.directions = directions
        self.seed = seed
    }

    /// Forward, loss and backward of this rank's clips; accumulates the parameter gradients
    /// (zeroed by the caller). A non-finite loss returns before the backward pass.
    ///
    /// - Parameters:
    ///   - frames: `(B·T, C, S, S)` (or `(B·T, C·S·S)`), clip by clip, frame by frame.
    ///   - actions: `(B·T, F·a)`: each frame's block of actions (only the first `H` are used).
    ///   - clips: `B`, this rank's clips.
    ///   - globalClipOffset: the global index of this rank's first clip (keys per-row randomness).
    ///   - rowCounts: the clips of every rank, when known (saves SIGReg an all-gather).
    public func forwardBackward(frames: Tensor<Scalar>, actions: Tensor<Scalar>, clips b: Int, step: Int,
                                communicator: any Communicator, globalClipOffset: Int = 0, rowCounts: [Int]? = nil,
                                clock: PhaseClock = PhaseClock()) throws -> StepLoss {
        let h = network.historyFrames, t = h + network.predictedFrames, q = network.predictedPositions
        let d = network.embeddingWidth
        guard frames.rowCount == b * t || frames.count == 0 && b == 0 else {
            throw LayerError.shapeMismatch(layer: "WorldModelStep", expected: "frames (\(b)·\(t), …)", got: frames.shape)
        }
        let blockWidth = b == 0 ? 0 : actions.count / (b * t)
        guard actions.count == b * t * blockWidth else {
            throw LayerError.shapeMismatch(layer: "WorldModelStep", expected: "actions (\(b)·\(t), F·a)", got: actions.shape)
        }
        let context = LayerContext(training: true, communicator: communicator, needsInputGradient: false,
                                   globalRowOffset: globalClipOffset * t, seed: seed, step: step)

        // Forward: embeddings of every frame, action embeddings of the history, predictions.
        let z = try network.encode(frames, context: context)                                  // (B·T, D)
        embeddings = z
        let blocks = reuse(&actionBlocks, [b * h, blockWidth])
        let context3 = reuse(&contextEmbeddings, [b, h, d])
        z.withUnsafeBufferPointer { z in
            context3.withUnsafeMutableBufferPointer { c in
                for i in 0..<b { for k in 0..<h { for j in 0..<d { c[(i * h + k) * d + j] = z[(i * t + k) * d + j] } } }
            }
        }
        actions.withUnsafeBufferPointer { a in
            blocks.withUnsafeMutableBufferPointer { u in
                for i in 0..<b { for k in 0..<h { for j in 0..<blockWidth { u[(i * h + k) * blockWidth + j] = a[(i * t + k) * blockWidth + j] } } }
            }
        }
        let u = try network.encodeActions(blocks, context: context)                            // (B·H, A)
        let prediction = try network.predict(context3, actions: u, context: context)          // (B, Q, D)
        clock.mark("forward")

        // Prediction loss: the squared error and the clip count, made global.
        let dPrediction = reuse(&predictionGradient, [b, q, d])
        var squaredError = 0.0
        prediction.withUnsafeBufferPointer { p in
            z.withUnsafeBufferPointer { z in
                dPrediction.withUnsafeMutableBufferPointer { g in
                    for i in 0..<b {
                        for k in 0..<q {
                            let target = (i * t + network.targetFrame(ofPosition: k)) * d
                            for j in 0..<d {
                                let e = p[(i * q + k) * d + j] - z[target + j]
                                g[(i * q + k) * d + j] = e
                                squaredError += Double(e) * Double(e)
                            }
                        }
                    }
                }
            }
        }
        var sums = [squaredError, Double(b)]
        try communicator.allReduce(&sums, .sum)
        let globalClips = sums[1]
        guard globalClips >= 1 else { throw LayerError.batchTooSmall(layer: "WorldModelStep", count: 0) }
        let elements = globalClips * Double(q * d)
        let predictionLoss = sums[0] / elements
        dPrediction.scale(by: Scalar(2 / elements))

        // SIGReg of each time step's embeddings over the global batch.
        if views.count != t || views.first?.shape != [b, d] {
            views = (0..<t).map { _ in Tensor(zeros: [b, d]) }
            viewGradients = (0..<t).map { _ in Tensor(zeros: [b, d]) }
        }
        z.withUnsafeBufferPointer { z in
            for k in 0..<t {
                views[k].withUnsafeMutableBufferPointer { v in
                    for i in 0..<b { for j in 0..<d { v[i * d + j] = z[(i * t + k) * d + j] } }
                }
            }
        }
        let sigreg = try SIGReg<Scalar>(directions: directions).evaluate(
            views: views, gradients: viewGradients,
            context: ObjectiveContext(communicator: communicator, step: step, seed: seed, reduction: reduction,
                                      rowCounts: rowCounts, workspace: workspace))
        let sigregLoss = sigreg.loss
        let loss = predictionLoss + sigregWeight * sigregLoss
        clock.mark("objective")
        let terms = [ObjectiveTerm("prediction", predictionLoss), ObjectiveTerm("sigreg", sigregLoss)]
        let bytes = 2 * MemoryLayout<Double>.size + sigreg.communicatedBytes
        guard loss.isFinite else { return StepLoss(loss: loss, terms: terms, communicatedBytes: bytes) }

        // Backward: predictor, then the embeddings' gradient from all three paths, then the encoders.
        let (dContext, dActions) = try network.predictBackward(dPrediction, context: context)
        try network.encodeActionsBackward(dActions.reshaped([b * h, network.actionEmbeddingWidth]), context: context)
        let dz = reuse(&embeddingGradient, [b * t, d])
        let lambda = Scalar(sigregWeight)
        dz.withUnsafeMutableBufferPointer { g in
            for k in 0..<t {
                viewGradients[k].withUnsafeBufferPointer { s in
                    for i in 0..<b { for j in 0..<d { g[(i * t + k) * d + j] = lambda * s[i * d + j] } }
                }
            }
            dContext.withUnsafeBufferPointer { c in
                for i in 0..<b { for k in 0..<h { for j in 0..<d { g[(i * t + k) * d + j] += c[(i * h + k) * d + j] } } }
            }
            dPrediction.withUnsafeBufferPointer { p in
                for i in 0..<b {
                    for k in 0..<q {
                        let target = (i * t + network.targetFrame(ofPosition: k)) * d
                        for j in 0..<d { g[target + j] -= p[(i * q + k) * d + j] }
                    }
                }
            }
        }
        try network.encodeBackward(dz, context: context)
        clock.mark("backward")
        return StepLoss(loss: loss, terms: terms, communicatedBytes: bytes)
    }
}
