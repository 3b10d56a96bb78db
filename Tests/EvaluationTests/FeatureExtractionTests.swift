import Datasets
import Evaluation
import Foundation
import Layers
import Engine
import JointEmbedding
import XCTest
import _TestSupport

/// Restoring a model from a checkpoint, and feature extraction over several in-process ranks.
final class FeatureExtractionTests: XCTestCase {
    /// A checkpoint of an MLP model with random parameters and running statistics (so that
    /// evaluation-mode batch norm does something), and a 2-shard labelled vector dataset.
    private func fixture() throws -> (checkpoint: Checkpoint, dataset: String) {
        let directory = try temporaryDirectory(for: self, prefix: "eval-features").path
        try SyntheticData(kind: .vectors, rows: 53, classes: 3, features: 12, seed: 4).write(to: directory, trainShards: 2)
        var configuration = TrainingConfiguration()
        configuration.seed = 9
        configuration.model = ModelDescription(encoder: .mlp(widths: [12, 20, 16]),
                                               projector: .mlp(widths: [16, 24, 10], lastBias: false))
        let model = try Model<Float>(configuration.model, seed: 9)
        CounterRandom(seed: 5).fillUniform(model.buffers.values, low: 0.5, high: 1.5)
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for (prefix, store) in [("params", model.parameters), ("buffers", model.buffers)] as [(String, any NamedTensorStore<Float>)] {
            for entry in store.entries { tensors["\(prefix)/\(entry.name)"] = (entry.shape, store.view(of: store.values, entry).scalars) }
        }
        let checkpoint = Checkpoint(step: 7, epoch: 0, stepInEpoch: 7, seed: 9, globalBatchSize: 256, worldSize: 1,
                                    optimizerName: "lars", optimizerStepCount: 7, config: try configuration.yaml(),
                                    codeVersion: "test", tensors: tensors)
        return (checkpoint, (directory as NSString).appendingPathComponent("train"))
    }

    func testRestoredModelHoldsTheCheckpointTensors() throws {
        let (checkpoint, _) = try fixture()
        let directory = try temporaryDirectory(for: self, prefix: "eval-ckpt").path
        let path = try HDF5CheckpointDirectory(directory: directory).write(checkpoint)
        let trained = try TrainedModel(checkpoint: path)
        XCTAssertEqual(trained.step, 7)
        for entry in trained.model.buffers.entries {
            XCTAssertEqual(trained.model.buffers.view(of: trained.model.buffers.values, entry).scalars,
                           checkpoint.tensors["buffers/\(entry.name)"]?.values)
        }
        for entry in trained.model.parameters.entries {
            XCTAssertEqual(trained.model.parameters.view(of: trained.model.parameters.values, entry).scalars,
                           checkpoint.tensors["params/\(entry.name)"]?.values)
        }
        var broken = checkpoint
        broken.tensors["params/encoder.0.weight"] = nil
        assertThrowsError(try TrainedModel(broken, path: "x.h5"), containing: "x.h5", "/params/encoder.0.weight")
    }

    func testExtractionOverRanksEqualsOneProcess() throws {
        let (checkpoint, location) = try fixture()
        let dataset = try ShardedDataset(location)
        XCTAssertEqual(dataset.shards.count, 2)
        for output in [FeatureExtractor.Output.representation, .embedding] {
            let one = try FeatureExtractor(model: TrainedModel(checkpoint, path: "one").model, output: output, chunkSize: 8)
                .extract(dataset)
            XCTAssertEqual(one.values.shape, [53, output == .representation ? 16 : 10])
            XCTAssertEqual(one.labels?.count, 53)
            // Evaluation mode: each row's features depend on that row alone.
            let alone = try FeatureExtractor(model: TrainedModel(checkpoint, path: "one").model, output: output)
                .extract(dataset, rows: [30])
            assertClose(alone.values.scalars, one.values.rows(30..<31).scalars, rtol: 1e-5, atol: 1e-6)
            for worldSize in [2, 3] {
                let results = try runRanks(worldSize) { communicator in
                    try FeatureExtractor(model: TrainedModel(checkpoint, path: "rank").model, output: output, chunkSize: 5)
                        .extract(dataset, communicator: communicator)
                }
                for (rank, result) in results.enumerated() {
                    XCTAssertEqual(result.labels, one.labels, "rank \(rank) of \(worldSize)")
                    assertClose(result.values.scalars, one.values.scalars, rtol: 1e-5, atol: 1e-6, "rank \(rank) of \(worldSize)")
                }
            }
        }
    }

    func testExtractionNamesADatasetOfTheWrongShape() throws {
        let (checkpoint, _) = try fixture()
        let directory = try temporaryDirectory(for: self, prefix: "eval-shape").path
        try SyntheticData(kind: .vectors, rows: 10, features: 5).write(to: directory, trainShards: 1)
        let dataset = try ShardedDataset((directory as NSString).appendingPathComponent("train"))
        assertThrowsError(try FeatureExtractor(model: TrainedModel(checkpoint, path: "c").model).extract(dataset),
                          containing: dataset.location, "[5]", "[12]")
    }
}
