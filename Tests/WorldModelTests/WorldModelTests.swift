import Communication
import Datasets
import Engine
import Environments
import Foundation
import Layers
import Objectives
import Tensor
import WorldModel
import XCTest
import _TestSupport

/// The world model's loss and gradients: finite differences in Double, N ranks vs one process
/// (in-process and under mpirun), and training through the engine with exact resume.
final class WorldModelTests: XCTestCase {
    // MARK: Gradients

    /// Central differences of the loss (prediction + λ·SIGReg, batch norm in training mode)
    /// against the backward pass, for every parameter, with both predictors.
    func testGradientsMatchFiniteDifferences() throws {
        let (frames, actions) = WorldModelFixture.inputs()
        let communicator = SingleProcessCommunicator()
        for predictor in WorldModelFixture.predictors {
            let network = WorldModelFixture.network(predictor: predictor)
            let step = WorldModelStep(network: network, sigregWeight: 0.5, directions: .random(count: 16), seed: 3)
            func loss() throws -> Double {
                try step.forwardBackward(frames: frames, actions: actions, clips: WorldModelFixture.clips, step: 1,
                                         communicator: communicator).loss
            }
            network.parameters.zeroGradients()
            let value = try loss()
            XCTAssertTrue(value.isFinite)
            let analytic = network.parameters.gradients.scalars
            var numeric = [Double](repeating: 0, count: analytic.count)
            let epsilon = 1e-6
            for i in 0..<analytic.count {
                let original = network.parameters.values[flat: i]
                network.parameters.values[flat: i] = original + epsilon
                let plus = try loss()
                network.parameters.values[flat: i] = original - epsilon
                let minus = try loss()
                network.parameters.values[flat: i] = original
                numeric[i] = (plus - minus) / (2 * epsilon)
            }
            XCTAssertGreaterThan(analytic.map(abs).max() ?? 0, 1e-3, "\(predictor): the gradient is not trivial")
            assertRelativeNormError(analytic, numeric, below: 1e-6, "\(predictor): the whole gradient")
            // Each part of the model, on its own.
            for part in ["encoder", "projector", "action_encoder", "predictor", "pred_proj"] {
                let indices = network.parameters.entries.filter { $0.name.hasPrefix(part + ".") }
                    .flatMap { $0.offset ..< $0.offset + $0.count }
                XCTAssertFalse(indices.isEmpty, part)
                assertRelativeNormError(indices.map { analytic[$0] }, indices.map { numeric[$0] }, below: 1e-5,
                                        "\(predictor): \(part)")
            }
        }
    }

    /// The prediction term alone is the mean squared error of the predicted vs the target
    /// embeddings, and SIGReg's weight scales only its own term.
    func testLossTermsAreThePredictionErrorAndSIGReg() throws {
        let (frames, actions) = WorldModelFixture.inputs()
        let network = WorldModelFixture.network(predictor: "transformer")
        let step = WorldModelStep(network: network, sigregWeight: 0, directions: .random(count: 16), seed: 3)
        let without = try step.forwardBackward(frames: frames, actions: actions, clips: WorldModelFixture.clips, step: 1,
                                               communicator: SingleProcessCommunicator())
        step.sigregWeight = 2
        let with = try step.forwardBackward(frames: frames, actions: actions, clips: WorldModelFixture.clips, step: 1,
                                            communicator: SingleProcessCommunicator())
        XCTAssertEqual(without.terms.map(\.name), ["prediction", "sigreg"])
        XCTAssertEqual(without.loss, without.terms[0].value)
        assertClose(with.loss, with.terms[0].value + 2 * with.terms[1].value, rtol: 1e-14)
        XCTAssertGreaterThan(with.terms[1].value, 0)
        // Recompute the prediction error from the network's own passes.
        let context = LayerContext(training: true)
        let t = WorldModelFixture.frames, h = WorldModelFixture.history, d = network.embeddingWidth
        let z = try network.encode(frames, context: context).copy()
        let blocks = Tensor<Double>(zeros: [WorldModelFixture.clips * h, WorldModelFixture.blockWidth])
        let history = Tensor<Double>(zeros: [WorldModelFixture.clips, h, d])
        for i in 0..<WorldModelFixture.clips {
            for k in 0..<h {
                blocks.rows(i * h + k ..< i * h + k + 1).copy(from: actions.rows(i * t + k ..< i * t + k + 1))
                history.reshaped([WorldModelFixture.clips * h, d]).rows(i * h + k ..< i * h + k + 1)
                    .copy(from: z.rows(i * t + k ..< i * t + k + 1))
            }
        }
        let prediction = try network.predict(history, actions: network.encodeActions(blocks, context: context), context: context)
        var error = 0.0
        for i in 0..<WorldModelFixture.clips {
            for k in 0..<h {   // position k predicts frame k + 1
                for j in 0..<d { let e = prediction[i, k, j] - z[i * t + k + 1, j]; error += e * e }
            }
        }
        assertClose(without.terms[0].value, error / Double(WorldModelFixture.clips * h * d), rtol: 1e-12)
    }

    // MARK: Ranks

    private func reference() throws -> [String: [Double]] {
        try RankReport(rank: 0, size: 1, scenario: "worldmodel", values: WorldModelFixture.run(on: SingleProcessCommunicator()))
            .doublesByKey()
    }

    private func assertMatchesOneProcess(_ ranks: [[String: [Double]]], _ label: String) throws {
        let reference = try reference()
        XCTAssertFalse(reference.isEmpty)
        for (key, expected) in reference {
            for (rank, values) in ranks.enumerated() {
                let actual = try XCTUnwrap(values[key], "\(label): rank \(rank) has no \(key)")
                assertClose(actual, expected, rtol: 1e-10, atol: 1e-12, "\(label): \(key) of rank \(rank)")
            }
        }
    }

    func testInProcessRanksMatchOneProcess() throws {
        for worldSize in [1, 2, 3] {
            let reports = try runRanks(worldSize) { communicator in
                try RankReport(rank: communicator.rank, size: communicator.size, scenario: "worldmodel",
                               values: WorldModelFixture.run(on: communicator)).doublesByKey()
            }
            try assertMatchesOneProcess(reports, "\(worldSize) in-process ranks")
        }
    }

    func testMPIRanksMatchOneProcess() throws {
        try MPIRun.requireAvailable()
        for ranks in [2, 3] {
            let reports = try MPIRun.launch(executable: "MPIHarness", ranks: ranks, arguments: ["worldmodel"], timeout: 120)
            try assertMatchesOneProcess(try reports.map { try $0.doublesByKey() }, "mpirun -np \(ranks)")
        }
    }

    // MARK: Training through the engine

    /// 40 TwoRoom episodes, states and actions only (frames are rendered).
    private func makeTrajectories() throws -> String {
        let directory = try temporaryDirectory(for: self).appendingPathComponent("two_room").path
        try TrajectoryCollector(maxSteps: 60, seed: 4).collect(episodes: 40, shardCount: 2, to: directory, threads: 1)
        return directory
    }

    private func configuration(data: String, extra: [String] = []) throws -> WorldModelConfiguration {
        try WorldModelConfiguration.load(yaml: "recipe: world_model", overrides: [
            "data.train=\(data)", "data.image_size=16", "data.channels=1", "data.prefetch=1", "data.validation_fraction=0.2",
            "model.encoder={type: convnet, input_channels: 1, image_size: 16, channels: [4, 8]}",
            "model.projector={type: mlp, widths: [8, 16, 8]}",
            "model.action_encoder={type: mlp, widths: [10, 8], batch_norm: false}",
            "model.predictor={type: transformer, depth: 1, heads: 2}",
            "model.prediction_projector={type: mlp, widths: [8, 16, 8]}",
            "loss.directions=32", "schedule.global_batch_size=8", "schedule.steps=4", "schedule.warmup_epochs=0",
            "optimizer.name=adamw", "optimizer.learning_rate=0.001", "logging.every_steps=1", "logging.diagnostics_every=2",
            "checkpoint.every_steps=2", "checkpoint.keep=5",
        ] + extra)
    }

    private func train(_ configuration: WorldModelConfiguration, worldSize: Int, run: String, resume: ResumeMode = .none,
                       stopAfter: Int? = nil) throws -> [String: [Float]] {
        let states = try runRanks(worldSize) { communicator in
            let trainer = try Trainer(configuration: configuration, communicator: communicator, runDirectory: run, log: { _ in })
            try trainer.resume(resume)
            _ = try trainer.train(stopAfter: stopAfter)
            return try trainer.makeCheckpoint().tensors.mapValues(\.values)
        }
        for other in states.dropFirst() { XCTAssertEqual(other, states[0], "ranks drifted apart") }
        return states[0]
    }

    /// A checkpoint of a model without a prediction projector reads back as that model (its
    /// saved config keeps the null; the planner loads it).
    func testCheckpointWithoutPredictionProjectorReadsBack() throws {
        var configuration = try configuration(data: try makeTrajectories())
        configuration.model.predictionProjector = nil
        let run = try temporaryDirectory(for: self).appendingPathComponent("run").path
        _ = try train(configuration, worldSize: 1, run: run)
        let checkpoint = try WorldModelCheckpoint(path: run + "/checkpoints/ckpt-00000004.h5")
        XCTAssertNil(checkpoint.network.predictionProjector)
        XCTAssertNotNil(checkpoint.network.projector)
        XCTAssertEqual(checkpoint.configuration.model, configuration.model)
    }

    /// A run stopped after 2 steps and resumed ends bit for bit where an uninterrupted run
    /// ends; 2 ranks end within rounding of 1; the metrics hold both loss terms and the
    /// collapse diagnostics.
    func testTrainingResumesExactlyAndRanksAgree() throws {
        let data = try makeTrajectories()
        let configuration = try configuration(data: data)
        let base = try temporaryDirectory(for: self)
        let whole = try train(configuration, worldSize: 1, run: base.appendingPathComponent("whole").path)
        let resumedRun = base.appendingPathComponent("resumed").path
        _ = try train(configuration, worldSize: 1, run: resumedRun, stopAfter: 2)
        let resumed = try train(configuration, worldSize: 1, run: resumedRun, resume: .automatic)
        XCTAssertEqual(whole.keys.sorted(), resumed.keys.sorted())
        for key in whole.keys.sorted() { XCTAssertEqual(whole[key], resumed[key], "\(key) differs after resume") }
        XCTAssertNotNil(whole["params/predictor.blocks.0.adaLN_modulation.1.weight"])
        XCTAssertNotNil(whole["params/action_encoder.0.weight"])
        XCTAssertNotNil(whole["buffers/projector.1.running_mean"])

        // 1 vs 2 ranks with SGD: AdamW normalises the rounding noise of gradients that are zero
        // in exact arithmetic (biases just before a batch norm, which removes them) into full
        // steps, so the ranks' parameters would differ there by design of the optimizer.
        let sgd = try self.configuration(data: data, extra: ["optimizer.name=sgd", "optimizer.learning_rate=0.05"])
        let one = try train(sgd, worldSize: 1, run: base.appendingPathComponent("one-sgd").path)
        let two = try train(sgd, worldSize: 2, run: base.appendingPathComponent("two-sgd").path)
        // (Parameters whose exact gradient is zero carry only rounding noise, so the check is
        // absolute per tensor and relative over the whole model.)
        let keys = one.keys.sorted().filter { $0.hasPrefix("params/") }
        for key in keys {
            let difference = zip(two[key]!, one[key]!).map { abs(Double($0) - Double($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(difference, 1e-5, "\(key): 2 ranks differ from 1 by up to \(difference)")
        }
        let error = relativeNormError(keys.flatMap { two[$0]! }, keys.flatMap { one[$0]! })
        XCTAssertLessThanOrEqual(error, 1e-6, "2 ranks differ from 1 by \(error) (relative norm)")


        let lines = try String(contentsOfFile: base.appendingPathComponent("whole/metrics.jsonl").path, encoding: .utf8)
            .split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        let records = try lines.map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        for record in records {
            let prediction = try XCTUnwrap(record["prediction"] as? Double), sigreg = try XCTUnwrap(record["sigreg"] as? Double)
            let loss = try XCTUnwrap(record["loss"] as? Double)
            assertClose(loss, prediction + 0.09 * sigreg, rtol: 1e-9)
        }
        XCTAssertNotNil(records[1]["effective_rank"])
        XCTAssertNil(records[0]["effective_rank"])
    }

    func testShippedConfigLoads() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("configs/world-model-two-room.yaml").path
        let configuration = try WorldModelConfiguration.load(file: file)
        XCTAssertEqual(configuration.data.train, "data/two_room")
        XCTAssertEqual(configuration.loss.sigregWeight, 0.09)
        guard case .transformer = configuration.model.predictor else { return XCTFail("the shipped predictor is the transformer") }
    }

    /// `prediction_projector: null` loads as no projector, and the saved config (as a
    /// checkpoint keeps it) reloads without one.
    func testNullPartsSurviveTheSavedConfig() throws {
        let configuration = try WorldModelConfiguration.load(yaml: "recipe: world_model\nmodel:\n  prediction_projector: null\n")
        XCTAssertNil(configuration.model.predictionProjector)
        XCTAssertNotNil(configuration.model.projector)
        let saved = try WorldModelConfiguration.load(yaml: configuration.yaml())
        XCTAssertNil(saved.model.predictionProjector)
        XCTAssertEqual(saved.model, configuration.model)
    }

    // MARK: Bad input

    func testBadConfigurationsNameTheKey() throws {
        assertThrowsError(try WorldModelConfiguration.load(yaml: "recipe: world_model", overrides: ["model.predictor={type: transformer, heads: 5}"]),
                          containing: "model.predictor.heads")
        assertThrowsError(try WorldModelConfiguration.load(yaml: "recipe: world_model", overrides: ["model.action_encoder={type: mlp, widths: [7, 8]}"]),
                          containing: "model.action_encoder.widths[0]", "10")
        assertThrowsError(try WorldModelConfiguration.load(yaml: "recipe: world_model", overrides: ["data.image_size=32"]),
                          containing: "model.encoder", "data.image_size")
        assertThrowsError(try WorldModelConfiguration.load(yaml: "recipe: world_model", overrides: ["model.predictor={type: lstm}"]),
                          containing: "lstm", "mlp, transformer")
        assertThrowsError(try WorldModelConfiguration.load(yaml: "recipe: joint_embedding"), containing: "world_model")
        let missing = try temporaryDirectory(for: self).appendingPathComponent("nothing-here").path
        let configuration = try WorldModelConfiguration.load(yaml: "recipe: world_model", overrides: ["data.train=\(missing)"])
        assertThrowsError(try WorldModelRecipe(configuration: configuration, communicator: SingleProcessCommunicator()),
                          containing: "nothing-here")
    }
}

extension RankReport {
    /// Every value as an array of `Double`s.
    func doublesByKey() throws -> [String: [Double]] {
        var result: [String: [Double]] = [:]
        for key in values.keys { result[key] = try doubles(key) }
        return result
    }
}
