import Communication
import Engine
import Layers
import Optimizers
import Tensor

/// A linear classifier trained alongside the self-supervised model on the *detached*
/// representations of the training batches (as in solo-learn's online linear evaluation):
/// an early, cheap signal of what the representation is worth. It never sends gradients into
/// the encoder.
///
/// Like everything in the trainer it sees the global batch: its loss is the mean cross-entropy
/// over all ranks' rows, its gradient is all-reduced with a sum, its accuracy counts every rank's
/// rows. Its parameters and optimizer state are the checkpoint's state group `probe`.
final class OnlineProbe: StateScalars {
    private let parameters: ParameterStore<Float>
    private let linear: Linear<Float>
    private let optimizer: AdamW<Float>
    private let trainStep: TrainStep<Float>
    private let communicator: any Communicator
    private var logitsGradient = Tensor<Float>(zeros: [0])
    private var probabilities = Tensor<Float>(zeros: [0])
    /// Loss, correct rows and rows since the last `take()`, over all ranks.
    private var window = (loss: 0.0, correct: 0, rows: 0)

    init(features: Int, classes: Int, seed: UInt64, communicator: any Communicator) throws {
        linear = Linear(inFeatures: features, outFeatures: classes)
        parameters = ParameterStore(specs: linear.parameterSpecs().map { $0.prefixed("probe") }, seed: seed)
        linear.bind(parameters: parameters, buffers: ParameterStore(specs: [], seed: seed), prefix: "probe")
        optimizer = try AdamW(parameters: parameters, learningRate: 1e-3, weightDecay: 1e-4)
        trainStep = TrainStep(parameters: parameters, optimizer: optimizer, communicator: communicator,
                              checksFiniteness: false, measuresGradientNorm: false)
        self.communicator = communicator
    }

    /// The probe's parameters and optimizer, as a checkpoint saves them.
    var stateGroup: StateGroup { StateGroup(name: "probe", parameters: parameters, optimizer: optimizer, scalars: self) }

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
        let context = LayerContext(training: true, communicator: communicator)
        try trainStep.run(learningRate: optimizer.learningRate) {
            let logits = try linear.forward(representation, context: context)
            if probabilities.shape != logits.shape {
                probabilities = Tensor(zeros: logits.shape)
                logitsGradient = Tensor(zeros: logits.shape)
            }
            let rows = labels.map(Int.init)
            let loss = SoftmaxCrossEntropy.forward(logits: logits, labels: rows, probabilities: probabilities)
            var correct = 0
            probabilities.withUnsafeBufferPointer { p in
                let c = logits.columnCount
                for i in rows.indices {
                    var best = 0
                    for j in 1..<c where p[i * c + j] > p[i * c + best] { best = j }
                    if best == rows[i] { correct += 1 }
                }
            }
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

    /// The mean loss and the accuracy since the last call (nil when no rows were seen).
    func take() -> (loss: Double, accuracy: Double)? {
        defer { window = (0, 0, 0) }
        guard window.rows > 0 else { return nil }
        return (window.loss / Double(window.rows), Double(window.correct) / Double(window.rows))
    }
}
