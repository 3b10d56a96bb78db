import Communication
import Layers
import Objectives
import Tensor
import WorldModel

/// A tiny world model (in `Double`) on a fixed global batch of 7 clips, for the checks that N
/// ranks reproduce one process: each rank takes a contiguous, uneven part of the clips, runs
/// ``WorldModelStep`` and all-reduces (sums) the parameter gradients as the trainer does.
///
/// Frames are flat 12-value vectors (an MLP encoder), `H` = 2 history frames and 1 predicted,
/// action blocks of 2 steps × 2 values; the projector and the prediction projector have
/// synchronised batch norm; SIGReg takes 16 random directions from (seed, step).
public enum WorldModelFixture {
    public static let clips = 7
    public static let history = 2, predicted = 1
    public static var frames: Int { history + predicted }
    public static let frameWidth = 12, blockWidth = 4
    public static let seed: UInt64 = 11, step = 3

    /// The predictor kinds the fixture covers.
    public static let predictors = ["transformer", "mlp"]

    public static func description(predictor: String) -> WorldModelDescription {
        var predictorDescription = PredictorDescription.transformer(TransformerPredictorDescription())
        if predictor == "mlp" {
            var mlp = MLPPredictorDescription()
            mlp.hidden = [9]
            mlp.batchNorm = true
            predictorDescription = .mlp(mlp)
        } else {
            var t = TransformerPredictorDescription()
            t.depth = 1
            t.heads = 2
            t.mlpRatio = 2
            predictorDescription = .transformer(t)
        }
        return WorldModelDescription(
            encoder: .mlp(widths: [frameWidth, 10, 8], activation: .gelu),
            projector: .mlp(widths: [8, 10, 6], activation: .gelu),
            actionEncoder: .mlp(widths: [blockWidth, 5], batchNorm: false, activation: .gelu),
            predictor: predictorDescription,
            predictionProjector: .mlp(widths: [6, 7, 6], activation: .gelu))
    }

    /// The network with its parameters perturbed away from their initial values (AdaLN-zero
    /// starts with zero gates, which would hide the attention's gradients).
    public static func network(predictor: String) -> WorldModelNetwork<Double> {
        let network = WorldModelNetwork<Double>(description(predictor: predictor), historyFrames: history,
                                                predictedFrames: predicted, seed: seed)
        let noise = randomTensor([network.parameters.count], seed: 5, as: Double.self)
        network.parameters.values.add(noise, scaledBy: 0.2)
        return network
    }

    /// The global batch: frames `(clips·T, 12)` and action blocks `(clips·T, 4)`.
    public static func inputs() -> (frames: Tensor<Double>, actions: Tensor<Double>) {
        (randomTensor([clips * frames, frameWidth], seed: 7, as: Double.self),
         randomTensor([clips * frames, blockWidth], seed: 8, as: Double.self))
    }

    /// The clips of `rank` of `size`: contiguous, the first `clips mod size` ranks one more.
    public static func rows(rank: Int, size: Int) -> Range<Int> {
        let base = clips / size, extra = clips % size
        let start = rank * base + min(rank, extra)
        return start ..< start + base + (rank < extra ? 1 : 0)
    }

    /// The step on this rank's clips; returns the loss, its terms, the all-reduced parameter
    /// gradient and the running statistics (keys `<predictor>.<reduction>.loss`, …).
    public static func run(on communicator: any Communicator) throws -> [String: JSONValue] {
        var values: [String: JSONValue] = [:]
        let (frames, actions) = inputs()
        let mine = rows(rank: communicator.rank, size: communicator.size)
        let t = Self.frames
        let localFrames = frames.rows(mine.lowerBound * t ..< mine.upperBound * t).copy()
        let localActions = actions.rows(mine.lowerBound * t ..< mine.upperBound * t).copy()
        let counts = (0..<communicator.size).map { rows(rank: $0, size: communicator.size).count }
        for predictor in predictors {
            for reduction in [StatisticsReduction.statistics, .gather] {
                let network = network(predictor: predictor)
                let step = WorldModelStep(network: network, sigregWeight: 0.5, directions: .random(count: 16), seed: seed)
                step.reduction = reduction
                network.parameters.zeroGradients()
                let loss = try step.forwardBackward(frames: localFrames, actions: localActions, clips: mine.count, step: Self.step,
                                                    communicator: communicator, globalClipOffset: mine.lowerBound, rowCounts: counts)
                var gradient = network.parameters.gradients.scalars
                try communicator.allReduce(&gradient, .sum)
                let key = "\(predictor).\(reduction.rawValue)"
                values["\(key).loss"] = JSONValue([loss.loss])
                values["\(key).terms"] = JSONValue(loss.terms.map(\.value))
                values["\(key).gradient"] = JSONValue(gradient)
                values["\(key).buffers"] = JSONValue(network.buffers.values.scalars)
            }
        }
        return values
    }
}
