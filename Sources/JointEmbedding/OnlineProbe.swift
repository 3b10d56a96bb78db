import Communication
import Datasets
import Engine
import Layers
import Optimizers
import Tensor

/// A linear classifier trained alongside the self-supervised model on the *detached*
/// representations of the training batches (as in solo-learn's online linear evaluation):
/// an early, cheap signal of what the representation is worth. It never sends gradients into
/// the encoder.
///
/// Its inputs are standardised by a batch norm without affine parameters (as linear-evaluation
/// heads commonly are): the representation's scale drifts as the encoder trains, and a fixed
/// learning rate on raw features lags far behind the offline probe.
///
/// Like everything in the trainer it sees the global batch: the batch norm's statistics and the
/// loss (the mean cross-entropy) are over all ranks' rows, its gradient is all-reduced with a
/// sum, its accuracy counts every rank's rows. Its parameters, batch-norm buffers and optimizer
/// state are the checkpoint's state group `probe`.
final class OnlineProbe: StateScalars {
    private let parameters: ParameterStore<Float>
    private let buffers: BufferStore<Float>
    private let normalization: BatchNorm<Float>
    private let linear: Linear<Float>
    private let optimizer: AdamW<Float>
    private let trainStep: TrainStep<Float>
    private let communicator: any Communicator
    private var logitsGradient = Tensor<Float>(zeros: [0])
    private var probabilities = Tensor<Float>(zeros: [0])
    /// Loss, correct rows and rows since the last `take()`, over all ranks.
    private var window = (loss: 0.0, correct: 0, rows: 0)

    init(features: Int, classes: Int, learningRate: Double, seed: UInt64, communicator: any Communicator) throws {
        normalization = BatchNorm(features: features, affine: false)
        linear = Linear(inFeatures: features, outFeatures: classes)
        parameters = ParameterStore(specs: linear.parameterSpecs().map { $0.prefixed("probe") }, seed: seed)
        buffers = BufferStore(specs: normalization.bufferSpecs().map { $0.prefixed("probe_norm") }, seed: seed)
        linear.bind(parameters: parameters, buffers: buffers, prefix: "probe")
        normalization.bind(parameters: parameters, buffers: buffers, prefix: "probe_norm")
        optimizer = try AdamW(parameters: parameters, learningRate: learningRate, weightDecay: 1e-4)
        trainStep = TrainStep(parameters: parameters, optimizer: optimizer, communicator: communicator,
                              checksFiniteness: false, measuresGradientNorm: false)
        self.communicator = communicator
    }

    /// The probe's parameters and optimizer, as a checkpoint saves them.
    var stateGroup: StateGroup { StateGroup(name: "probe", parameters: parameters, buffers: buffers, optimizer: optimizer, scalars: self) }

    /// The metrics window since the last record: a run resumed between two records reports
    /// what the uninterrupted run does.
    var scalarState: [String: Double] {
        get { ["window_loss_sum": window.loss, "window_correct": Double(window.correct), "window_rows": Double(window.rows)] }
        set {
            window = (newValue["window_loss_sum"] ?? 0, Int(newValue["window_correct"] ?? 0), Int(newValue["window_rows"] ?? 0))
        }
    }

    /// One AdamW step on this rank's `representation` rows `(n_r, D)` and their labels.
    func step(representation: Tensor<Float>, labels: [Int64], globalBatchSize: Int) throws {
        let context = LayerContext(training: true, communicator: communicator, needsInputGradient: false)
        try trainStep.run(learningRate: optimizer.learningRate) {
            let logits = try linear.forward(try normalization.forward(representation, context: context), context: context)
            if probabilities.shape != logits.shape {
                probabilities = Tensor(zeros: logits.shape)
                logitsGradient = Tensor(zeros: logits.shape)
            }
            let rows = labels.map(Int.init)
            let loss = SoftmaxCrossEntropy.forward(logits: logits, labels: rows, probabilities: probabilities)
            var correct = 0
            for i in rows.indices where probabilities.argmax(ofRow: i) == rows[i] { correct += 1 }
            var totals = [loss * Double(rows.count), Double(correct)]
            try communicator.allReduce(&totals, .sum)
            window.loss += totals[0]
            window.correct += Int(totals[1])
            window.rows += globalBatchSize
            SoftmaxCrossEntropy.backward(probabilities: probabilities, labels: rows, into: logitsGradient,
                                         batchSize: globalBatchSize)
            _ = try linear.backward(logitsGradient, context: context)
            return StepLoss(loss: totals[0] / Double(globalBatchSize))
        }
    }

    /// The accuracy on held-out rows (the test split), clean: the frozen encoder and the probe's
    /// batch norm in evaluation mode on un-augmented rows, as `eval` measures it. Each rank
    /// takes a contiguous part of the rows, in chunks of 256, and the correct counts are summed.
    ///
    /// - Parameter slot: activation slot of the layers, apart from the training step's.
    func heldOutAccuracy(encoder: Sequential<Float>, inputShape: [Int], loader: BatchLoader, rowCount: Int,
                         slot: Int) throws -> Double {
        let parts = GlobalBatchSampler.split(rowCount, rank: communicator.rank, parts: communicator.size)
        let context = LayerContext(training: false, communicator: communicator, slot: slot, needsInputGradient: false)
        var correct = 0.0, start = parts.lowerBound
        while start < parts.upperBound {
            let end = min(start + 256, parts.upperBound)
            let (input, labels) = try loader.readNormalized(rows: Array(start..<end))
            let representation = try encoder.forward(input.reshaped([end - start] + inputShape), context: context)
            let logits = try linear.forward(try normalization.forward(representation, context: context), context: context)
            for i in 0..<(end - start) where Int64(logits.argmax(ofRow: i)) == labels?[i] { correct += 1 }
            start = end
        }
        return try communicator.allReduce(correct, .sum) / Double(max(rowCount, 1))
    }

    /// The mean loss and the accuracy since the last call (nil when no rows were seen).
    func take() -> (loss: Double, accuracy: Double)? {
        defer { window = (0, 0, 0) }
        guard window.rows > 0 else { return nil }
        return (window.loss / Double(window.rows), Double(window.correct) / Double(window.rows))
    }
}
