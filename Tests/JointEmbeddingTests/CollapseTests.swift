import XCTest
import Datasets
import Layers
import Objectives
import Engine
import JointEmbedding
import _TestSupport

/// The seed's "break each term": without its variance and covariance terms VICReg collapses;
/// with them it does not; SIGReg alone keeps random projections near a standard normal.
final class CollapseTests: XCTestCase {
    func train(_ overrides: [String], steps: Int = 400, untrained: Bool = false) throws -> (embeddings: Tensor<Float>, trainer: Trainer<JointEmbeddingRecipe>) {
        let data = try temporaryDirectory(for: self).appendingPathComponent("data").path
        try SyntheticData(kind: .vectors, rows: 512, classes: 8, features: 32, seed: 11).write(to: data, trainShards: 1)
        let configuration = try TrainingConfiguration.load(yaml: "", overrides: [
            "data.train=\(data)/train", "data.test=", "model.encoder={type: mlp, widths: [32, 64, 32]}",
            "model.projector={type: mlp, widths: [32, 64, 16], last_bias: false}", "schedule.global_batch_size=64",
            "schedule.steps=\(steps)", "schedule.warmup_epochs=1", "logging.every_steps=1000", "logging.diagnostics_every=0",
            "checkpoint.every_steps=0", "optimizer.name=adamw", "optimizer.learning_rate=3e-3", "optimizer.scale_by_batch=false",
            "optimizer.weight_decay=0",
        ] + overrides)
        let trainer = try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(),
                                  runDirectory: try temporaryDirectory(for: self).appendingPathComponent("run").path, log: { _ in })
        if !untrained { _ = try trainer.train() }
        // The embeddings of all 512 rows (one view), batch norm on the whole set.
        let all = try GlobalBatchSampler(rowCount: 512, globalBatchSize: 512, seed: 0)
        let loader = try BatchLoader(dataset: trainer.dataset, sampler: all, prefetchDepth: 0)
        let batch = try loader.batch(step: 0)
        let output = try trainer.model.forward(batch.views[0], context: LayerContext(training: true))
        return (output.embedding.copy(), trainer)
    }

    func diagnostics(_ embeddings: Tensor<Float>) throws -> CollapseDiagnostics {
        try CollapseDiagnostics.measure(embeddings, communicator: SingleProcessCommunicator(), step: 1, seed: 99)
    }

    func testVICRegWithoutVarianceAndCovarianceCollapses() throws {
        let collapsed = try diagnostics(train(["objective.vicreg.variance=0", "objective.vicreg.covariance=0"]).embeddings)
        XCTAssertLessThan(collapsed.meanStandardDeviation, 0.05, "invariance alone should collapse")
        let healthy = try diagnostics(train([]).embeddings)
        XCTAssertGreaterThan(healthy.meanStandardDeviation, 0.5, "full VICReg keeps the embeddings spread")
    }

    func testSIGRegKeepsProjectionsNearAStandardNormal() throws {
        let overrides = ["objective.name=sigreg", "objective.sigreg.directions=256"]
        let before = try diagnostics(train(overrides, untrained: true).embeddings)
        let (embeddings, _) = try train(overrides, steps: 700)
        let after = try diagnostics(embeddings)
        // The Epps–Pulley statistic (× N = 512) on fresh directions falls well below the untrained model's.
        XCTAssertLessThan(after.eppsPulley, 0.5 * before.eppsPulley, "before \(before.eppsPulley), after \(after.eppsPulley)")
        XCTAssertEqual(after.meanStandardDeviation, 1, accuracy: 0.15)
        // Random unit directions: the projected values look like N(0, 1).
        let d = embeddings.columnCount, n = embeddings.rowCount
        let directions = Tensor<Float>(zeros: [d, 8])
        CounterRandom(seed: 5, stream: 1).fillNormal(directions)
        for j in 0..<8 {
            var norm: Float = 0
            for i in 0..<d { norm += directions[i, j] * directions[i, j] }
            for i in 0..<d { directions[i, j] /= norm.squareRoot() }
        }
        let projections = Tensor.matmul(embeddings, directions)
        for j in 0..<8 {
            let values = (0..<n).map { Double(projections[$0, j]) }
            let mean = values.reduce(0, +) / Double(n)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n)
            let withinOne = Double(values.filter { abs($0) < 1 }.count) / Double(n)
            XCTAssertLessThan(abs(mean), 0.3, "projection \(j) mean")
            XCTAssertEqual(variance, 1, accuracy: 0.4, "projection \(j) variance")
            XCTAssertEqual(withinOne, 0.683, accuracy: 0.12, "projection \(j): share within ±1")
        }
    }
}
