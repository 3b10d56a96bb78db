import Communication
import Datasets
import Engine
import Foundation
import Tensor

/// What `anticollapse eval` measured, as written to its JSON file (snake_case keys).
public struct EvaluationResult: Codable, Sendable, Equatable {
    public var checkpoint: String
    /// The training step of the checkpoint.
    public var step: Int
    public var trainDataset: String
    public var testDataset: String
    public var trainRows: Int
    public var testRows: Int
    /// The width of the encoder's representation.
    public var featureDimension: Int
    public var classCount: Int
    /// Top-1 accuracy of the linear probe on the test rows, in [0, 1].
    public var linearProbeTop1: Double
    /// Top-1 accuracy of the linear probe on its own training rows.
    public var linearProbeTrainTop1: Double
    /// Top-1 accuracy of the weighted k-NN on the test rows, in [0, 1].
    public var knnTop1: Double
    public var knnK: Int
    public var knnTemperature: Double
    public var probe: LinearProbe.Settings
    /// The probe's mean training loss in its last epoch.
    public var probeFinalLoss: Double
    /// Wall-clock seconds of feature extraction, k-NN, probe and all.
    public var extractionSeconds: Double
    public var knnSeconds: Double
    public var probeSeconds: Double
    public var seconds: Double
    public var worldSize: Int

    /// The result as pretty-printed JSON with snake_case keys.
    /// The run directory of ``checkpoint`` when it lies in a run's `checkpoints/` folder
    /// (`RUN_DIR/checkpoints/ckpt-….h5`), else nil.
    public var runDirectory: String? { RunDirectory.containing(checkpoint: checkpoint) }

    /// Writes the accuracies as TensorBoard scalars at the checkpoint's step, in a new event
    /// file of `directory` (TensorBoard shows it as part of that run): `eval/linear_probe_top1`,
    /// `eval/linear_probe_train_top1` and `eval/knn_top1`.
    /// - Returns: the event file's path.
    @discardableResult
    public func writeTensorBoard(to directory: String) throws -> String {
        let writer = try TensorBoardWriter(directory: directory)
        try writer.write(step: step, scalars: [("eval/linear_probe_top1", linearProbeTop1),
                                               ("eval/linear_probe_train_top1", linearProbeTrainTop1),
                                               ("eval/knn_top1", knnTop1)])
        return writer.path
    }

    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// Reads a result written by ``json()``.
    public static func load(_ path: String) throws -> EvaluationResult {
        guard let data = FileManager.default.contents(atPath: path) else { throw EvaluationError("\(path): cannot read the file") }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do { return try decoder.decode(EvaluationResult.self, from: data) } catch {
            throw EvaluationError("\(path): not an evaluation result: \(error)")
        }
    }

    /// The summary table printed by `anticollapse eval`.
    public var table: String {
        func percent(_ x: Double) -> String { String(format: "%.2f %%", 100 * x) }
        let rows: [(String, String)] = [
            ("checkpoint", "\(checkpoint) (step \(step))"),
            ("train / test rows", "\(trainRows) / \(testRows) (\(classCount) classes)"),
            ("feature dim", "\(featureDimension)"),
            ("linear probe top-1", percent(linearProbeTop1) + " (train \(percent(linearProbeTrainTop1)))"),
            ("k-NN top-1", percent(knnTop1) + " (k \(knnK), T \(knnTemperature))"),
            ("seconds", String(format: "%.2f (features %.2f, k-NN %.2f, probe %.2f) on %d rank(s)", seconds,
                               extractionSeconds, knnSeconds, probeSeconds, worldSize)),
        ]
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
    }
}

/// The evaluation of a checkpoint: features of both datasets from the frozen encoder, a
/// weighted k-NN and a linear probe.
public struct CheckpointEvaluation: Sendable {
    public var checkpoint: String
    public var trainDataset: String
    public var testDataset: String
    public var knn: NearestNeighborClassifier
    public var probe: LinearProbe.Settings
    /// Rows a forward pass of the encoder.
    public var chunkSize = 256

    public init(checkpoint: String, trainDataset: String, testDataset: String,
                knn: NearestNeighborClassifier, probe: LinearProbe.Settings = LinearProbe.Settings()) {
        self.checkpoint = checkpoint
        self.trainDataset = trainDataset
        self.testDataset = testDataset
        self.knn = knn
        self.probe = probe
    }

    /// Runs the evaluation; every rank must call it and every rank returns the same result.
    ///
    /// Feature extraction and k-NN are split across the ranks; the probe is trained on rank 0
    /// and its accuracies are broadcast (so the numbers are those of one process).
    ///
    /// - Parameter log: progress lines (pass a no-op on ranks other than 0).
    public func run(communicator: any Communicator = SingleProcessCommunicator(),
                    log: (String) -> Void = { _ in }) throws -> EvaluationResult {
        let started = Date()
        try probe.validate()
        let trained = try TrainedModel(checkpoint: checkpoint)
        let train = try ShardedDataset(trainDataset), test = try ShardedDataset(testDataset)
        for dataset in [train, test] where !dataset.hasLabels {
            throw EvaluationError("\(dataset.location) has no labels (/y): k-NN and the linear probe need them")
        }
        let extractor = FeatureExtractor(model: trained.model, chunkSize: chunkSize)
        log("extracting \(extractor.width)-dimensional features of \(train.rowCount) + \(test.rowCount) rows on \(communicator.size) rank(s)")
        let trainFeatures = try extractor.extract(train, communicator: communicator)
        let testFeatures = try extractor.extract(test, communicator: communicator)
        let extracted = Date()
        let trainLabels = trainFeatures.labels ?? [], testLabels = testFeatures.labels ?? []
        let classCount = max(train.classCount, test.classCount,
                             Int((trainLabels + testLabels).max() ?? 0) + 1)
        if let bad = (trainLabels + testLabels).first(where: { $0 < 0 }) {
            throw EvaluationError("negative label \(bad) in \(trainDataset) or \(testDataset)")
        }

        log("k-NN: k \(knn.k), temperature \(knn.temperature), cosine similarity")
        let knnTop1 = try knn.accuracy(queries: testFeatures.values, queryLabels: testLabels, bank: trainFeatures.values,
                                       bankLabels: trainLabels, classCount: classCount, communicator: communicator)
        let knnDone = Date()

        log("linear probe: \(probe.summary)")
        var probeNumbers = [Double](repeating: 0, count: 3)
        if communicator.isRoot {
            let linear = try LinearProbe(training: trainFeatures.values, labels: trainLabels, classCount: classCount, settings: probe)
            probeNumbers = [try linear.accuracy(testFeatures.values, labels: testLabels),
                            try linear.accuracy(trainFeatures.values, labels: trainLabels),
                            linear.epochLosses.last ?? .nan]
        }
        try communicator.broadcast(&probeNumbers, root: 0)
        let finished = Date()
        return EvaluationResult(
            checkpoint: checkpoint, step: trained.step, trainDataset: trainDataset, testDataset: testDataset,
            trainRows: train.rowCount, testRows: test.rowCount, featureDimension: extractor.width, classCount: classCount,
            linearProbeTop1: probeNumbers[0], linearProbeTrainTop1: probeNumbers[1], knnTop1: knnTop1, knnK: knn.k,
            knnTemperature: knn.temperature, probe: probe, probeFinalLoss: probeNumbers[2],
            extractionSeconds: extracted.timeIntervalSince(started), knnSeconds: knnDone.timeIntervalSince(extracted),
            probeSeconds: finished.timeIntervalSince(knnDone), seconds: finished.timeIntervalSince(started),
            worldSize: communicator.size)
    }
}
