import XCTest
import Datasets
import Engine
import JointEmbedding
import _TestSupport

/// Training runs inside XCTest on a small synthetic set: one process, in-process ranks, resume.
final class TrainerTests: XCTestCase {
    /// A labelled synthetic vector set of 96 rows, 16 features, in 3 shards.
    func makeDataset() throws -> String {
        let directory = try temporaryDirectory(for: self).appendingPathComponent("data").path
        try SyntheticData(kind: .vectors, rows: 96, testRows: 32, classes: 4, features: 16, seed: 3)
            .write(to: directory, trainShards: 3)
        return directory + "/train"
    }

    /// A small recipe: MLP 16-32-16, projector 16-32-32, global batch 13 (uneven over 2 and 3 ranks).
    func configuration(_ objective: String, dataset: String, steps: Int = 20, extra: [String] = []) throws -> TrainingConfiguration {
        var overrides = [
            "data.train=\(dataset)", "data.test=", "data.prefetch=1",
            "model.encoder={type: mlp, widths: [16, 32, 16]}",
            "model.projector={type: mlp, widths: [16, 32, 32], last_bias: false}",
            "objective.name=\(objective)", "objective.sigreg.directions=64", "objective.lejepa.directions=64",
            "schedule.global_batch_size=13", "schedule.steps=\(steps)", "schedule.warmup_epochs=0.5",
            "optimizer.learning_rate=0.2", "logging.every_steps=100", "logging.diagnostics_every=10",
            "checkpoint.every_steps=5", "checkpoint.keep=10",
        ]
        if objective == "lejepa" { overrides += ["data.global_views=2", "data.local_views=1"] }
        // W-MSE whitens: it needs more rows than embedding features.
        if objective == "wmse" { overrides += ["model.projector={type: mlp, widths: [16, 32, 8], last_bias: false}"] }
        return try TrainingConfiguration.load(yaml: "", overrides: overrides + extra)
    }

    /// Trains `steps` (or to the end) on `worldSize` in-process ranks, optionally resuming;
    /// returns rank 0's parameters, running statistics and optimizer state.
    func train(_ configuration: TrainingConfiguration, worldSize: Int, runDirectory: String,
               resume: ResumeMode = .none, stopAfter: Int? = nil) throws -> (state: [String: [Float]], summary: TrainingSummary) {
        let results = try ThreadCommunicator.run(worldSize: worldSize) { communicator in
            let trainer = try Trainer(configuration: configuration, communicator: communicator, runDirectory: runDirectory,
                                      log: { _ in })
            try trainer.resume(resume)
            let summary = try trainer.train(stopAfter: stopAfter)
            let checkpoint = try trainer.makeCheckpoint()
            return (checkpoint.tensors.mapValues(\.values), summary)
        }
        // Every rank ends with the same state, bit for bit.
        for other in results.dropFirst() { XCTAssertEqual(other.0, results[0].0, "ranks drifted apart") }
        return (results[0].0, results[0].1)
    }

    func assertStatesClose(_ a: [String: [Float]], _ b: [String: [Float]], tolerance: Double, _ message: String,
                           file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted(), message, file: file, line: line)
        for key in a.keys.sorted() where key.hasPrefix("params/") {
            guard let x = a[key], let y = b[key] else { continue }
            let error = relativeNormError(x, y)
            XCTAssertLessThanOrEqual(error, tolerance, "\(message): \(key) differs by \(error)", file: file, line: line)
        }
    }

    func testCompleteRunWritesMetricsConfigAndCheckpoints() throws {
        let dataset = try makeDataset()
        let run = try temporaryDirectory(for: self).appendingPathComponent("run").path
        let (_, summary) = try train(try configuration("vicreg", dataset: dataset), worldSize: 1, runDirectory: run)
        XCTAssertEqual(summary.step, 20)
        XCTAssertTrue(summary.loss.isFinite)
        XCTAssertEqual(summary.terms.map(\.name), ["invariance", "variance", "covariance"])
        let checkpoints = try HDF5CheckpointDirectory(directory: run + "/checkpoints").list()
        XCTAssertEqual(checkpoints.map { ($0 as NSString).lastPathComponent },
                       ["ckpt-00000005.h5", "ckpt-00000010.h5", "ckpt-00000015.h5", "ckpt-00000020.h5"])
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(metrics.count, 2)   // diagnostics at steps 10 and 20; 20 is also the last step
        let last = try JSONSerialization.jsonObject(with: Data(metrics.last!.utf8)) as? [String: Any]
        XCTAssertEqual(last?["step"] as? Int, 20)
        XCTAssertNotNil(last?["effective_rank"])
        XCTAssertNotNil(last?["invariance"])
        // The online probe on the labelled training rows reports an accuracy.
        let accuracy = try XCTUnwrap(last?["probe_accuracy"] as? Double)
        XCTAssertTrue((0...1).contains(accuracy), "\(accuracy)")
    }

    /// N ranks reproduce one process: parameters after 20 steps with 1, 2 and 3 ranks, every objective.
    func testEveryObjectiveTrainsTheSameOnOneTwoAndThreeRanks() throws {
        let dataset = try makeDataset()
        for objective in ["vicreg", "barlow_twins", "wmse", "sigreg", "lejepa"] {
            let configuration = try configuration(objective, dataset: dataset)
            let root = try temporaryDirectory(for: self).path
            let single = try train(configuration, worldSize: 1, runDirectory: root + "/\(objective)-1")
            XCTAssertTrue(single.summary.loss.isFinite, objective)
            for worldSize in [2, 3] {
                let split = try train(configuration, worldSize: worldSize, runDirectory: root + "/\(objective)-\(worldSize)")
                assertClose(split.summary.loss, single.summary.loss, rtol: 1e-3, "\(objective) loss on \(worldSize) ranks")
                assertStatesClose(split.state, single.state, tolerance: 1e-3, "\(objective) on \(worldSize) ranks")
            }
        }
    }

    /// K steps, a resume from the checkpoint, K more steps: bit for bit the run of 2K steps.
    func testResumeIsExactAtTheSameWorldSize() throws {
        let dataset = try makeDataset()
        for worldSize in [1, 2] {
            let configuration = try configuration("vicreg", dataset: dataset)
            let root = try temporaryDirectory(for: self).path
            let straight = try train(configuration, worldSize: worldSize, runDirectory: root + "/straight")
            let interrupted = root + "/interrupted"
            let first = try train(configuration, worldSize: worldSize, runDirectory: interrupted, stopAfter: 10)
            XCTAssertEqual(first.summary.step, 10)
            let resumed = try train(configuration, worldSize: worldSize, runDirectory: interrupted, resume: .automatic)
            XCTAssertEqual(resumed.summary.step, 20)
            XCTAssertEqual(resumed.state, straight.state, "resumed state differs on \(worldSize) rank(s)")
        }
    }

    /// A checkpoint written by 2 ranks resumes on 1 and on 3 within tolerance.
    func testElasticResumeAcrossWorldSizes() throws {
        let dataset = try makeDataset()
        let configuration = try configuration("vicreg", dataset: dataset)
        let root = try temporaryDirectory(for: self).path
        let straight = try train(configuration, worldSize: 2, runDirectory: root + "/straight")
        _ = try train(configuration, worldSize: 2, runDirectory: root + "/written", stopAfter: 10)
        let checkpoint = root + "/written/checkpoints/ckpt-00000010.h5"
        for worldSize in [1, 3] {
            let resumed = try train(configuration, worldSize: worldSize, runDirectory: root + "/resumed-\(worldSize)",
                                    resume: .path(checkpoint))
            XCTAssertEqual(resumed.summary.step, 20)
            assertStatesClose(resumed.state, straight.state, tolerance: 1e-3, "elastic resume on \(worldSize) rank(s)")
        }
    }

    /// The sharded update (`optimizer.sharded_update=always`) on 2 and 3 ranks trains as the
    /// replicated one on as many ranks (only sums are ordered otherwise); its checkpoints hold
    /// the whole optimizer state, the same on every rank (`train` checks), which resumes
    /// exactly on as many ranks and elastically on one.
    func testShardedUpdateTrainsAsTheReplicatedOneAndResumesAcrossWorldSizes() throws {
        let dataset = try makeDataset()
        let replicated = try configuration("vicreg", dataset: dataset, extra: ["optimizer.sharded_update=never"])
        let sharded = try configuration("vicreg", dataset: dataset, extra: ["optimizer.sharded_update=always"])
        let root = try temporaryDirectory(for: self).path
        for worldSize in [2, 3] {
            let expected = try train(replicated, worldSize: worldSize, runDirectory: root + "/replicated-\(worldSize)")
            let split = try train(sharded, worldSize: worldSize, runDirectory: root + "/sharded-\(worldSize)")
            XCTAssertEqual(expected.state.keys.sorted(), split.state.keys.sorted())
            XCTAssertTrue(split.state.keys.contains { $0.hasPrefix("optimizer/") })
            for key in expected.state.keys.sorted() {
                let error = relativeNormError(split.state[key]!, expected.state[key]!)
                XCTAssertLessThanOrEqual(error, 1e-5, "\(key) on \(worldSize) ranks differs by \(error)")
            }
        }
        // Whether the trainer shards: always on 2 ranks; automatic not for this small model; never on one rank.
        let cases = [(sharded, 2), (sharded, 1), (try configuration("vicreg", dataset: dataset), 2)]
        let shards = try cases.enumerated().map { index, item in
            let (configuration, ranks) = item
            return try ThreadCommunicator.run(worldSize: ranks) { communicator in
                try Trainer(configuration: configuration, communicator: communicator, runDirectory: root + "/built-\(index)",
                            log: { _ in }).shardsUpdate
            }[0]
        }
        XCTAssertEqual(shards, [true, false, false])

        let straight = try train(sharded, worldSize: 2, runDirectory: root + "/straight")
        let interrupted = root + "/interrupted"
        _ = try train(sharded, worldSize: 2, runDirectory: interrupted, stopAfter: 10)
        let resumed = try train(sharded, worldSize: 2, runDirectory: interrupted, resume: .automatic)
        XCTAssertEqual(resumed.state, straight.state, "resumed sharded state differs")
        let elastic = try train(sharded, worldSize: 1, runDirectory: root + "/elastic",
                                resume: .path(interrupted + "/checkpoints/ckpt-00000010.h5"))
        XCTAssertEqual(elastic.summary.step, 20)
        assertStatesClose(elastic.state, straight.state, tolerance: 1e-3, "sharded checkpoint resumed on 1 rank")
    }

    func testCorruptNewestCheckpointFallsBackToThePreviousOne() throws {
        let dataset = try makeDataset()
        let configuration = try configuration("vicreg", dataset: dataset)
        let run = try temporaryDirectory(for: self).appendingPathComponent("run").path
        _ = try train(configuration, worldSize: 1, runDirectory: run, stopAfter: 10)
        let newest = run + "/checkpoints/ckpt-00000010.h5"
        // Truncate the newest checkpoint: its checksum (or HDF5 itself) rejects it.
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: newest))
        try handle.truncate(atOffset: 4096)
        try handle.close()
        var warnings: [String] = []
        let storage = HDF5CheckpointDirectory(directory: run + "/checkpoints")
        let chosen = try storage.newestValid { warnings.append($0) }
        XCTAssertEqual(chosen?.checkpoint.step, 5)
        XCTAssertEqual(chosen?.path, run + "/checkpoints/ckpt-00000005.h5")
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings[0].contains("ckpt-00000010.h5"), warnings.joined())
        let resumed = try train(configuration, worldSize: 1, runDirectory: run, resume: .automatic)
        XCTAssertEqual(resumed.summary.step, 20)
    }

    func testCheckpointFromAnIncompatibleConfigListsTheKeys() throws {
        let dataset = try makeDataset()
        let run = try temporaryDirectory(for: self).appendingPathComponent("run").path
        _ = try train(try configuration("vicreg", dataset: dataset), worldSize: 1, runDirectory: run, stopAfter: 5)
        let other = try configuration("vicreg", dataset: dataset,
                                      extra: ["model.projector={type: mlp, widths: [16, 64, 32]}", "seed=9"])
        XCTAssertThrowsError(try train(other, worldSize: 1, runDirectory: run, resume: .automatic)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("incompatible config"), text)
            XCTAssertTrue(text.contains("model.projector.widths"), text)
            XCTAssertTrue(text.contains("seed"), text)
        }
    }

    func testDivergenceStopsWithTheStepAndKeepsTheLastGoodCheckpoint() throws {
        let dataset = try makeDataset()
        let run = try temporaryDirectory(for: self).appendingPathComponent("run").path
        let configuration = try configuration("vicreg", dataset: dataset,
                                              extra: ["optimizer.name=sgd", "optimizer.learning_rate=1e30", "schedule.warmup_epochs=0"])
        XCTAssertThrowsError(try train(configuration, worldSize: 2, runDirectory: run)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("at step"), text)
            XCTAssertTrue(text.contains("not finite") || text.contains("loss is"), text)
        }
    }

    func testWhiteningBatchNotLargerThanTheEmbeddingIsAnError() throws {
        let dataset = try makeDataset()
        let configuration = try configuration("wmse", dataset: dataset,
                                              extra: ["model.projector={type: mlp, widths: [16, 32, 32]}"])
        XCTAssertThrowsError(try train(configuration, worldSize: 1, runDirectory: try temporaryDirectory(for: self).path)) { error in
            XCTAssertTrue("\(error)".contains("objective.wmse"), "\(error)")
        }
    }

    func testGlobalBatchSmallerThanTheWorldIsAnError() throws {
        let dataset = try makeDataset()
        let configuration = try configuration("vicreg", dataset: dataset, extra: ["schedule.global_batch_size=2"])
        XCTAssertThrowsError(try train(configuration, worldSize: 3, runDirectory: try temporaryDirectory(for: self).path)) { error in
            XCTAssertTrue("\(error)".contains("cannot be split over 3 ranks"), "\(error)")
        }
    }
}

/// A ViT encoder with dropout trains the same on one process and on 2 in-process ranks: the
/// trainer keys dropout by the global row, the seed and the step.
final class ViTTrainingTests: XCTestCase {
    func testViTWithDropoutTrainsTheSameOnOneAndTwoRanks() throws {
        let data = try temporaryDirectory(for: self).appendingPathComponent("data").path
        try SyntheticData(kind: .images, rows: 48, classes: 3, size: 8, seed: 6).write(to: data, trainShards: 2)
        let configuration = try TrainingConfiguration.load(yaml: "", overrides: [
            "data.train=\(data)/train", "data.test=", "data.prefetch=0",
            "model.encoder={type: vit, input_channels: 1, image_size: 8, patch_size: 4, width: 16, depth: 2, heads: 2, dropout: 0.2}",
            "model.projector={type: mlp, widths: [16, 32, 16], last_bias: false}",
            "schedule.global_batch_size=12", "schedule.steps=4", "schedule.warmup_epochs=0",
            "optimizer.name=sgd", "optimizer.learning_rate=0.05", "checkpoint.every_steps=0", "logging.online_probe=false",
        ])
        func train(_ ranks: Int) throws -> [String: [Float]] {
            let run = try temporaryDirectory(for: self).appendingPathComponent("run\(ranks)").path
            return try ThreadCommunicator.run(worldSize: ranks) { communicator in
                let trainer = try Trainer(configuration: configuration, communicator: communicator, runDirectory: run,
                                          log: { _ in })
                XCTAssertTrue(try trainer.train().loss.isFinite)
                return try trainer.makeCheckpoint().tensors.mapValues(\.values)
            }[0]
        }
        let one = try train(1), two = try train(2)
        XCTAssertNotNil(one["params/encoder.0.blocks.1.attn.qkv.weight"])
        for key in one.keys.sorted() where key.hasPrefix("params/") {
            // The final norm's bias feeds the projector's batch norm, which removes any shift:
            // its gradient is zero up to rounding, so it is compared absolutely.
            let largest = zip(one[key]!, two[key]!).map { abs($0 - $1) }.max() ?? 0
            XCTAssertTrue(relativeNormError(one[key]!, two[key]!) <= 1e-4 || largest <= 1e-6,
                          "\(key): relative \(relativeNormError(one[key]!, two[key]!)), largest difference \(largest)")
        }
    }
}
