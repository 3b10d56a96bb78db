import Communication
import Datasets
import Engine
import Foundation
import Layers
import Optimizers
import Tensor

// MARK: - Softmax cross-entropy


// MARK: - Standardisation

/// Per-feature standardisation `(x − mean) / std` with the statistics of the training features.
public struct Standardization: Sendable, Equatable {
    public var mean: [Double]
    /// The population standard deviation; a constant feature gets 1 (it becomes 0).
    public var standardDeviation: [Double]

    /// The statistics of the columns of `features`.
    public init(fitting features: Tensor<Float>) {
        let n = features.rowCount, d = features.columnCount
        var mean = [Double](repeating: 0, count: d), squares = [Double](repeating: 0, count: d)
        features.withUnsafeBufferPointer { x in
            for i in 0..<n { for j in 0..<d { mean[j] += Double(x[i * d + j]) } }
            for j in 0..<d { mean[j] /= Double(max(n, 1)) }
            for i in 0..<n { for j in 0..<d { let v = Double(x[i * d + j]) - mean[j]; squares[j] += v * v } }
        }
        self.mean = mean
        standardDeviation = squares.map { s in
            let std = (s / Double(max(n, 1))).squareRoot()
            return std > 1e-8 ? std : 1
        }
    }

    /// The standardised features, in a new tensor.
    public func apply(_ features: Tensor<Float>) -> Tensor<Float> {
        let d = features.columnCount
        precondition(d == mean.count, "standardising \(d) features with statistics of \(mean.count)")
        let result = features.copy()
        let scale = standardDeviation.map { Float(1 / $0) }, shift = mean.map { Float($0) }
        result.withUnsafeMutableBufferPointer { x in
            for i in 0..<features.rowCount { for j in 0..<d { x[i * d + j] = (x[i * d + j] - shift[j]) * scale[j] } }
        }
        return result
    }
}

// MARK: - Linear probe

/// Multinomial logistic regression on frozen, standardised features: the linear evaluation of
/// self-supervised representations.
///
/// A ``Linear`` layer (`D → classes`, PyTorch's initialisation) and the softmax cross-entropy,
/// trained with ``AdamW`` (weight decay on the weights only) for a fixed number of epochs of
/// mini-batches, the learning rate following a cosine from its base to 0. The features are
/// standardised with the training features' mean and standard deviation. Every epoch visits
/// the rows in a permutation drawn from `(seed, epoch)`, so training is deterministic.
public final class LinearProbe {
    /// How the probe is trained.
    public struct Settings: Codable, Sendable, Equatable {
        public var epochs = 100
        /// The base learning rate of AdamW, decayed by a cosine to 0 over the run.
        public var learningRate = 1e-3
        /// AdamW's decoupled weight decay (weights only).
        public var weightDecay = 1e-4
        /// Rows a step (the last step of an epoch takes the rest).
        public var batchSize = 256
        /// Keys the initial weights and the row order.
        public var seed: UInt64 = 0

        public init(epochs: Int = 100, learningRate: Double = 1e-3, weightDecay: Double = 1e-4, batchSize: Int = 256,
                    seed: UInt64 = 0) {
            self.epochs = epochs; self.learningRate = learningRate; self.weightDecay = weightDecay
            self.batchSize = batchSize; self.seed = seed
        }

        /// One line for logs.
        public var summary: String {
            "epochs \(epochs), AdamW lr \(learningRate) (cosine to 0), weight decay \(weightDecay), batch \(batchSize), seed \(seed)"
        }

        /// - Throws: ``EvaluationError`` naming the setting that cannot work.
        public func validate() throws {
            if epochs < 1 { throw EvaluationError("linear probe: epochs must be at least 1, got \(epochs)") }
            if !(learningRate > 0) { throw EvaluationError("linear probe: the learning rate must be positive, got \(learningRate)") }
            if !(weightDecay >= 0) { throw EvaluationError("linear probe: the weight decay must not be negative, got \(weightDecay)") }
            if batchSize < 1 { throw EvaluationError("linear probe: the batch size must be at least 1, got \(batchSize)") }
        }
    }

    public let settings: Settings
    public let classCount: Int
    /// The training features' statistics, applied to every input.
    public let standardization: Standardization
    /// The mean training loss of every epoch.
    public private(set) var epochLosses: [Double] = []
    private let layer: Linear<Float>
    private let parameters: ParameterStore<Float>

    /// Trains a probe on `features` with `labels` in `0 ..< classCount`.
    ///
    /// - Throws: ``EvaluationError`` for invalid settings, labels out of range or a label count
    ///   that is not one a row.
    public init(training features: Tensor<Float>, labels: [Int64], classCount: Int, settings: Settings = Settings()) throws {
        try settings.validate()
        let n = features.rowCount, d = features.columnCount
        guard n > 0, d > 0 else { throw EvaluationError("linear probe: no training features (\(features.shape))") }
        guard labels.count == n else { throw EvaluationError("linear probe: \(n) rows but \(labels.count) labels") }
        guard classCount >= 2 else { throw EvaluationError("linear probe: needs at least 2 classes, got \(classCount)") }
        if let bad = labels.first(where: { $0 < 0 || $0 >= classCount }) {
            throw EvaluationError("linear probe: label \(bad) is outside 0..<\(classCount)")
        }
        self.settings = settings
        self.classCount = classCount
        standardization = Standardization(fitting: features)
        layer = Linear<Float>(inFeatures: d, outFeatures: classCount)
        parameters = ParameterStore(specs: layer.parameterSpecs(), seed: settings.seed)
        layer.bind(parameters: parameters, buffers: BufferStore.empty, prefix: "")
        try train(standardization.apply(features), labels: labels.map { Int($0) })
    }

    private func train(_ x: Tensor<Float>, labels: [Int]) throws {
        let n = x.rowCount, d = x.columnCount, batch = min(settings.batchSize, n)
        let optimizer = try AdamW(parameters: parameters, learningRate: settings.learningRate,
                                  weightDecay: settings.weightDecay, excludeBiasAndNormalization: true)
        // One process: the features are already global (the caller gathered them).
        let trainStep = TrainStep(parameters: parameters, optimizer: optimizer, communicator: SingleProcessCommunicator(),
                                  checksFiniteness: false, measuresGradientNorm: false)
        let order = try GlobalBatchSampler(rowCount: n, globalBatchSize: batch, seed: settings.seed)
        let stepsPerEpoch = (n + batch - 1) / batch, totalSteps = settings.epochs * stepsPerEpoch
        let context = LayerContext(training: true)
        let inputs = Tensor<Float>(zeros: [batch, d])
        let probabilities = Tensor<Float>(zeros: [batch, classCount]), gradient = Tensor<Float>(zeros: [batch, classCount])
        var step = 0
        for epoch in 0..<settings.epochs {
            let permutation = order.permutation(epoch: epoch)
            var epochLoss = 0.0
            for start in stride(from: 0, to: n, by: batch) {
                let rows = permutation[start..<min(start + batch, n)]
                let b = rows.count
                let input = inputs.rows(0..<b)
                input.withUnsafeMutableBufferPointer { target in
                    x.withUnsafeBufferPointer { source in
                        for (i, row) in rows.enumerated() {
                            (target.baseAddress! + i * d).update(from: source.baseAddress! + row * d, count: d)
                        }
                    }
                }
                let batchLabels = rows.map { labels[$0] }
                let learningRate = settings.learningRate * 0.5 * (1 + cos(Double.pi * Double(step) / Double(totalSteps)))
                try trainStep.run(learningRate: learningRate) {
                    let logits = try layer.forward(input, context: context)
                    let p = probabilities.rows(0..<b), g = gradient.rows(0..<b)
                    let loss = SoftmaxCrossEntropy.forward(logits: logits, labels: batchLabels, probabilities: p)
                    epochLoss += loss * Double(b)
                    SoftmaxCrossEntropy.backward(probabilities: p, labels: batchLabels, into: g)
                    _ = try layer.backward(g, context: context)
                    return StepLoss(loss: loss)
                }
                step += 1
            }
            epochLosses.append(epochLoss / Double(n))
        }
    }

    /// The logits `(rows, classes)` of raw (unstandardised) features.
    public func logits(_ features: Tensor<Float>) throws -> Tensor<Float> {
        guard features.columnCount == standardization.mean.count else {
            throw EvaluationError("linear probe: features of width \(features.columnCount), trained on \(standardization.mean.count)")
        }
        let x = standardization.apply(features)
        let result = Tensor<Float>(zeros: [features.rowCount, classCount])
        let context = LayerContext(training: false, slot: 1)
        let chunk = 1024
        for start in stride(from: 0, to: features.rowCount, by: chunk) {
            let range = start..<min(start + chunk, features.rowCount)
            result.rows(range).copy(from: try layer.forward(x.rows(range), context: context))
        }
        return result
    }

    /// The predicted class of every row (the largest logit; the lowest class on a tie).
    public func predict(_ features: Tensor<Float>) throws -> [Int64] {
        let z = try logits(features)
        return (0..<z.rowCount).map { Int64(z.argmax(ofRow: $0)) }
    }

    /// The top-1 accuracy on `features` with `labels`.
    public func accuracy(_ features: Tensor<Float>, labels: [Int64]) throws -> Double {
        guard labels.count == features.rowCount, !labels.isEmpty else {
            throw EvaluationError("linear probe: \(features.rowCount) rows but \(labels.count) labels")
        }
        let predicted = try predict(features)
        return Double(zip(predicted, labels).filter { $0 == $1 }.count) / Double(labels.count)
    }
}
