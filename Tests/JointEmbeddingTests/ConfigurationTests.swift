import XCTest
import Objectives
import Engine
import JointEmbedding
import _TestSupport

final class ConfigurationTests: XCTestCase {
    func testDefaultsAreTheReferenceRecipe() throws {
        let configuration = try TrainingConfiguration.load(yaml: "")
        XCTAssertEqual(configuration.objective.name, .vicreg)
        XCTAssertEqual(configuration.schedule.globalBatchSize, 256)
        XCTAssertEqual(configuration.schedule.epochs, 30)
        XCTAssertEqual(configuration.model.encoder.inputShape, [784])
        XCTAssertEqual(configuration.model.projector?.outputFeatures, 2048)
        XCTAssertEqual(configuration.data.train, "datasets/mnist5k/train")
    }

    func testFileValuesAndOverridesApplyInOrder() throws {
        let yaml = """
            seed: 7
            objective:
              name: barlow_twins
              barlow_twins: {lambda: 0.01}
            optimizer:
              weight_decay: 1e-6
            model:
              encoder: {type: mlp, widths: [784, 512]}
              projector: {type: mlp, widths: [512, 256, 256]}
            """
        let configuration = try TrainingConfiguration.load(
            yaml: yaml, overrides: ["schedule.epochs=5", "optimizer.learning_rate=0.1", "schedule.epochs=6"])
        XCTAssertEqual(configuration.seed, 7)
        XCTAssertEqual(configuration.objective.name, .barlowTwins)
        XCTAssertEqual(configuration.objective.barlowTwins.lambda, 0.01)
        XCTAssertEqual(configuration.optimizer.weightDecay, 1e-6)   // "1e-6" is a number, not a string
        XCTAssertEqual(configuration.optimizer.learningRate, 0.1)
        XCTAssertEqual(configuration.schedule.epochs, 6)
        XCTAssertEqual(configuration.model.encoder.outputFeatures, 512)
        XCTAssertEqual(configuration.objective.costModel.model, ReductionCostModel())
        let measured = try TrainingConfiguration.load(yaml: "objective: {cost_model: {latency_microseconds: 2, bandwidth_gigabytes_per_second: 1.5, gigaflops: 90}}")
        XCTAssertEqual(measured.objective.costModel.model, ReductionCostModel(latency: 2e-6, bandwidth: 1.5e9, flopRate: 90e9))
        // The resolved config round-trips through its YAML.
        XCTAssertEqual(try TrainingConfiguration.load(yaml: try configuration.yaml()), configuration)
    }

    func testBadConfigsNameTheKeyAndTheChoices() {
        let cases: [(yaml: String, overrides: [String], expected: [String])] = [
            ("optimiser: {learning_rate: 1}", [], ["unknown key \"optimiser\"", "optimizer", "schedule"]),
            ("optimizer: {learnig_rate: 1}", [], ["unknown key \"optimizer.learnig_rate\"", "learning_rate"]),
            ("objective: {name: vicrge}", [], ["objective.name", "unknown \"vicrge\"", "barlow_twins", "lejepa"]),
            ("schedule: {global_batch_size: many}", [], ["schedule.global_batch_size", "whole number"]),
            ("", ["schedule.global_batch_size=1"], ["schedule.global_batch_size", "at least 2"]),
            ("", ["optimizer.learning_rate=-1"], ["optimizer.learning_rate", "positive"]),
            ("", ["objective.reduction=all"], ["objective.reduction", "statistics", "gather"]),
            ("", ["objective.cost_model.latency_microseconds=0"], ["objective.cost_model.latency_microseconds", "positive"]),
            ("objective: {cost_model: {bandwidth: 3}}", [], ["unknown key \"objective.cost_model.bandwidth\"",
                                                            "bandwidth_gigabytes_per_second"]),
            ("", ["objective.name=vicreg", "data.global_views=3"], ["data.global_views", "exactly 2 views"]),
            ("model: {projector: {type: mlp, widths: [999, 10]}}", [], ["model.projector.widths[0]", "1024"]),
            ("- a list", [], ["top level must be a mapping"]),
            ("", ["nonsense"], ["expected key=value"]),
            // Each named its key, what was wrong and what would be right (issue 13, defect 7).
            ("", ["seed=-1"], ["seed", "0 or more", "-1"]),
            ("", ["schedule.steps=3.5"], ["schedule.steps", "whole number", "3.5"]),
            ("", ["schedule.steps=1e30"], ["schedule.steps", "too large"]),
            ("", ["optimizer.learning_rate=.nan"], ["optimizer.learning_rate", "finite number", "nan"]),
            ("", ["optimizer.learning_rate=.inf"], ["optimizer.learning_rate", "finite number"]),
            ("", ["model.encoder.type=transformer"], ["model.encoder.type", "unknown \"transformer\"", "mlp, convnet, resnet, vit"]),
            ("", ["model.encoder.activation=swish"], ["model.encoder.activation", "unknown \"swish\"", "relu"]),
            ("", ["schedule..steps=3"], ["schedule..steps", "empty part"]),
            ("", ["model.encoder={type:mlp}"], ["model.encoder.type:mlp", "space follows each colon"]),
            ("", ["model.encoder=mlp"], ["model.encoder", "expected a mapping", "space follows each colon"]),
        ]
        for (yaml, overrides, expected) in cases {
            do {
                _ = try TrainingConfiguration.load(yaml: yaml, overrides: overrides, source: "bad.yaml")
                XCTFail("accepted \(yaml) \(overrides)")
            } catch {
                let text = "\(error)"
                for piece in expected { XCTAssertTrue(text.contains(piece), "\(yaml) \(overrides): \(text) lacks \(piece)") }
            }
        }
    }

    /// Every shipped config loads and validates (the repository's configs/ folder).
    func testShippedConfigsLoad() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("configs")
        let enumerator = try XCTUnwrap(FileManager.default.enumerator(atPath: folder.path))
        let files = (enumerator.allObjects as? [String] ?? []).filter { $0.hasSuffix(".yaml") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 8)
        for file in files {
            // Other recipes' configs are their tests' (WorldModelTests loads the world-model one).
            let text = try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8)
            guard recipeName(ofConfig: text) == JointEmbeddingSettings.recipeName else { continue }
            let configuration = try TrainingConfiguration.load(file: folder.appendingPathComponent(file).path)
            XCTAssertEqual(configuration.data.train, "datasets/mnist5k/train", file)
        }
        let lejepa = try TrainingConfiguration.load(file: folder.appendingPathComponent("lejepa-mnist5k.yaml").path)
        XCTAssertEqual(lejepa.data.localAugmentation.cropScale, 0.1...0.4)
        XCTAssertEqual(lejepa.data.localAugmentation.rotationDegrees, 15)   // merged with the defaults
        let ablation = try TrainingConfiguration.load(file: folder.appendingPathComponent("ablation/vicreg-no-variance.yaml").path)
        XCTAssertEqual(ablation.objective.vicreg.variance, 0)
        XCTAssertEqual(ablation.objective.vicreg.invariance, 25)
    }
}
