// The Evaluation module: how good are the representations a run learned?
//
// - `TrainedModel` restores a `Model<Float>` from a checkpoint (its config and its tensors).
// - `FeatureExtractor` runs the frozen encoder (evaluation mode: batch norm uses its running
//   statistics) over every row of a dataset, the rows split across ranks and all-gathered, so
//   every rank ends with the features of every row.
// - `NearestNeighborClassifier` is the weighted k-NN of DINO and solo-learn.
// - `LinearProbe` is multinomial logistic regression on standardised features.
// - `RunReport` writes a self-contained HTML report of a run directory.
import Communication
import Datasets
import Foundation
import Layers
import Tensor
import Engine
import JointEmbedding

/// A problem met while evaluating, naming the file or setting at fault.
public struct EvaluationError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

// MARK: - Restoring a model

/// A model with the parameters and running statistics of a checkpoint, and the config that
/// trained it.
public struct TrainedModel {
    /// The checkpoint file.
    public let path: String
    /// The training step the checkpoint was written at.
    public let step: Int
    /// The run's resolved config, from the checkpoint's `config` attribute.
    public let configuration: TrainingConfiguration
    /// The model, with `/params` and `/buffers` of the checkpoint copied in.
    public let model: Model<Float>
    /// The model optimizer's steps (PyTorch's batch-norm `num_batches_tracked` on export).
    public let optimizerStepCount: Int

    /// Reads and verifies the checkpoint file `path` and restores its model.
    ///
    /// - Throws: ``CheckpointError`` for a file that cannot be read or fails its checksum;
    ///   ``EvaluationError`` naming the file for a config that does not load or a tensor that
    ///   is missing or has the wrong shape.
    public init(checkpoint path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let checkpoint = try HDF5CheckpointDirectory(directory: directory.isEmpty ? "." : directory).read(path)
        try self.init(checkpoint, path: path)
    }

    /// The model of `configuration` as training started: the weights its seed draws, no
    /// checkpoint needed (step 0).
    public init(initialOf configuration: TrainingConfiguration) throws {
        path = "(initial weights)"
        step = 0
        optimizerStepCount = 0
        self.configuration = configuration
        model = try Model<Float>(configuration.model, seed: configuration.seed)
    }

    /// Restores the model of a checkpoint already read from `path`.
    public init(_ checkpoint: Checkpoint, path: String) throws {
        let configuration: TrainingConfiguration
        do {
            configuration = try TrainingConfiguration.load(yaml: checkpoint.config, source: "\(path) (config attribute)")
        } catch {
            throw EvaluationError("checkpoint \(path): its config does not load: \(error)")
        }
        let model = try Model<Float>(configuration.model, seed: configuration.seed)
        do {
            try StateGroup(name: Checkpoint.modelGroup, parameters: model.parameters, buffers: model.buffers)
                .load(checkpoint.tensors, stepCount: nil, from: path)
        } catch let error as TrainingError {
            throw EvaluationError(error.description)
        }
        self.path = path
        self.step = checkpoint.step
        self.optimizerStepCount = checkpoint.optimizerStepCount
        self.configuration = configuration
        self.model = model
    }

    /// The newest checkpoint file in `runDirectory/checkpoints`, or nil when there is none.
    public static func newestCheckpoint(inRun runDirectory: String) throws -> String? {
        try HDF5CheckpointDirectory(directory: RunDirectory.checkpointsPath(of: runDirectory)).list().last
    }
}

// MARK: - Feature extraction

/// Representations of every row of a dataset, and the rows' labels.
public struct Features: Sendable {
    /// `rows × width`, row `i` of the dataset in row `i`.
    public var values: Tensor<Float>
    /// The dataset's labels, one a row (nil when it has none).
    public var labels: [Int64]?

    public init(values: Tensor<Float>, labels: [Int64]?) {
        self.values = values
        self.labels = labels
    }

    /// The number of rows.
    public var rowCount: Int { values.rowCount }
    /// The width of a row.
    public var width: Int { values.columnCount }
}

/// Runs a frozen model over a whole dataset, un-augmented, in evaluation mode.
///
/// The rows go through the model in chunks of ``chunkSize`` rows whose boundaries do not depend
/// on the world size: under several ranks each rank takes a contiguous run of whole chunks (the
/// first `chunks mod ranks` ranks one more, as ``GlobalBatchSampler/split(_:rank:parts:)``), and
/// an all-gather (of parts padded to equal counts) gives every rank all rows, in dataset order.
/// Every matrix product therefore has the same rows as in one process — BLAS kernels may round
/// a row differently in a product of another height — and the result is that of one process,
/// bit for bit.
public struct FeatureExtractor {
    /// Which output of the model becomes the features.
    public enum Output: String, Sendable {
        /// The encoder's output: the representation that probes and k-NN evaluate.
        case representation
        /// The projector's output: the embedding the objective sees.
        case embedding
    }

    /// The frozen model.
    public let model: Model<Float>
    /// Rows a forward pass (default 256): bounds the memory of the activations.
    public var chunkSize: Int
    public var output: Output

    /// - Parameters:
    ///   - model: the model; its parameters are read, never changed.
    ///   - output: the encoder's representation (default) or the projector's embedding.
    ///   - chunkSize: rows a forward pass (default 256).
    public init(model: Model<Float>, output: Output = .representation, chunkSize: Int = 256) {
        self.model = model
        self.output = output
        self.chunkSize = max(1, chunkSize)
    }

    /// The width of a feature row.
    public var width: Int {
        switch output {
        case .representation: return model.description.encoder.outputFeatures
        case .embedding: return (model.description.projector ?? model.description.encoder).outputFeatures
        }
    }

    /// The features of `rows` (default: every row) of `dataset`; every rank must call it and
    /// every rank receives all of them.
    ///
    /// - Throws: ``EvaluationError`` naming the dataset when its rows do not fit the encoder;
    ///   the dataset's errors (naming the shard) when a row cannot be read.
    public func extract(_ dataset: ShardedDataset, rows: [Int]? = nil,
                        communicator: any Communicator = SingleProcessCommunicator()) throws -> Features {
        let inputShape = model.description.encoder.inputShape
        guard dataset.featureCount == inputShape.reduce(1, *) else {
            throw EvaluationError("\(dataset.location) has rows of shape \(dataset.featureShape), but the encoder takes \(inputShape)")
        }
        let allRows = rows ?? Array(0..<dataset.rowCount)
        let total = allRows.count, width = self.width
        let chunkCount = (total + chunkSize - 1) / chunkSize
        // The rows of `rank`: its whole chunks.
        func part(_ rank: Int) -> Range<Int> {
            let chunks = GlobalBatchSampler.split(chunkCount, rank: rank, parts: communicator.size)
            return min(chunks.lowerBound * chunkSize, total)..<min(chunks.upperBound * chunkSize, total)
        }
        let mine = part(communicator.rank)
        let padded = max(1, (0..<communicator.size).map { part($0).count }.max() ?? 0)
        // This rank's part, padded to `padded` rows.
        let local = Tensor<Float>(zeros: [padded, width])
        var localLabels = [Int64](repeating: -1, count: padded)
        let loader = try BatchLoader(dataset: dataset, sampler: GlobalBatchSampler(rowCount: dataset.rowCount, globalBatchSize: 1, seed: 0),
                                     prefetchDepth: 0)
        let context = LayerContext(training: false, communicator: communicator)
        var start = mine.lowerBound
        while start < mine.upperBound {
            let end = min(start + chunkSize, mine.upperBound)
            let (input, labels) = try loader.readNormalized(rows: Array(allRows[start..<end]))
            let images = input.reshaped([end - start] + inputShape)
            let result: Tensor<Float>
            switch output {
            case .representation: result = try model.encoder.forward(images, context: context)
            case .embedding: result = try model.forward(images, context: context).embedding
            }
            let offset = start - mine.lowerBound
            local.rows(offset..<(offset + end - start)).copy(from: result)
            if let labels { for (i, label) in labels.enumerated() { localLabels[offset + i] = label } }
            start = end
        }
        // Every rank's padded part, in rank order; then the padding dropped.
        let gathered = Tensor<Float>(zeros: [padded * communicator.size, width])
        try local.withUnsafeBufferPointer { send in
            try gathered.withUnsafeMutableBufferPointer { try communicator.allGather(send, into: $0) }
        }
        let gatheredLabels = dataset.hasLabels ? try communicator.allGather(localLabels) : []
        let values = Tensor<Float>(zeros: [total, width])
        var labels: [Int64]? = dataset.hasLabels ? [] : nil
        for rank in 0..<communicator.size {
            let rows = part(rank)
            guard !rows.isEmpty else { continue }
            values.rows(rows).copy(from: gathered.rows((rank * padded)..<(rank * padded + rows.count)))
            labels?.append(contentsOf: gatheredLabels[(rank * padded)..<(rank * padded + rows.count)])
        }
        return Features(values: values, labels: labels)
    }
}
