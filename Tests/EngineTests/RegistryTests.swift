import Communication
import Datasets
import Engine
import Foundation
import JointEmbedding
import Objectives
import Tensor
import XCTest
import _TestSupport

/// A test-only objective, registered from this test target without editing the library: the
/// squared norm of each view's global mean, times a weight — enough to show that a new
/// objective is one file and one registry line, and that the engine makes it exact over ranks.
struct MeanPull: Objective {
    typealias Scalar = Float
    var weight: Double
    var name: String { MeanPullSettings.name }

    func evaluate(views: [Tensor<Float>], gradients: [Tensor<Float>], context: ObjectiveContext) throws -> ObjectiveResult {
        let d = views[0].columnCount
        // The one all-reduce: every view's column sums and the row count.
        var sums = [Double](repeating: 0, count: views.count * d + 1)
        for (v, view) in views.enumerated() {
            view.withUnsafeBufferPointer { x in
                for i in 0..<view.rowCount { for j in 0..<d { sums[v * d + j] += Double(x[i * d + j]) } }
            }
        }
        sums[views.count * d] = Double(views[0].rowCount)
        try context.communicator.allReduce(&sums, .sum)
        let n = sums[views.count * d]
        var loss = 0.0
        for v in views.indices {
            let mean = (0..<d).map { sums[v * d + $0] / n }
            loss += weight * mean.reduce(0) { $0 + $1 * $1 }
            gradients[v].withUnsafeMutableBufferPointer { g in
                for i in 0..<views[v].rowCount { for j in 0..<d { g[i * d + j] = Float(2 * weight * mean[j] / n) } }
            }
        }
        return ObjectiveResult(loss: loss, terms: [ObjectiveTerm("mean_norm", loss / weight)],
                               communicatedBytes: sums.count * 8, reduction: .statistics)
    }
}

struct MeanPullSettings: ObjectiveSettings {
    static let name = "mean_pull"
    static let summary = "test only: the squared norm of each view's mean"
    var weight = 1.0

    func validate() throws {
        if weight <= 0 { throw ObjectiveSettingsError(key: "weight", "must be positive, got \(weight)") }
    }

    func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> { MeanPull(weight: weight) }

    func plan(dimension: Int) -> StatisticsPlan { VICRegSettings().plan(dimension: dimension) }
}

final class RegistryTests: XCTestCase {
    override func setUp() {
        ObjectiveRegistry.register(MeanPullSettings.self)
    }

    func testEveryBuiltInObjectiveHasOneSpelling() throws {
        XCTAssertEqual(Array(ObjectiveRegistry.names.prefix(5)), ["vicreg", "barlow_twins", "wmse", "sigreg", "lejepa"])
        for name in ObjectiveRegistry.names {
            XCTAssertEqual(try ObjectiveName(rawValue: name).settingsType().name, name)
        }
        // The config's key, the saved YAML and the objective's own name agree.
        let configuration = try TrainingConfiguration.load(yaml: "objective: {name: barlow_twins, barlow_twins: {lambda: 0.01}}")
        XCTAssertEqual(configuration.objective.barlowTwins.lambda, 0.01)
        XCTAssertTrue(try configuration.yaml().contains("barlow_twins:"))
        XCTAssertEqual(configuration.objective.makeObjective(in: ObjectiveBuildContext()).name, "barlow_twins")
    }

    func testARegisteredObjectiveLoadsValidatesAndRoundTrips() throws {
        let configuration = try TrainingConfiguration.load(yaml: "objective: {name: mean_pull, mean_pull: {weight: 3}}")
        XCTAssertEqual(configuration.objective.name.rawValue, "mean_pull")
        XCTAssertEqual(configuration.objective[MeanPullSettings.self].weight, 3)
        let reloaded = try TrainingConfiguration.load(yaml: try configuration.yaml())
        XCTAssertEqual(reloaded, configuration)
        XCTAssertThrowsError(try TrainingConfiguration.load(yaml: "objective: {name: mean_pull, mean_pull: {weight: -1}}")) { error in
            XCTAssertTrue("\(error)".contains("objective.mean_pull.weight: must be positive"), "\(error)")
        }
        XCTAssertThrowsError(try TrainingConfiguration.load(yaml: "objective: {name: mean_push}")) { error in
            XCTAssertTrue("\(error)".contains("mean_pull"), "the valid names include the registered one: \(error)")
        }
    }

    func testARegisteredObjectiveTrainsTheSameOnOneAndThreeRanks() throws {
        let data = try temporaryDirectory(for: self).appendingPathComponent("data").path
        try SyntheticData(kind: .vectors, rows: 64, classes: 4, features: 12, seed: 4).write(to: data, trainShards: 2)
        let configuration = try TrainingConfiguration.load(yaml: "", overrides: [
            "data.train=\(data)/train", "data.test=", "data.prefetch=0",
            "model.encoder={type: mlp, widths: [12, 16, 8]}", "model.projector={type: mlp, widths: [8, 16, 8]}",
            "objective.name=mean_pull", "schedule.global_batch_size=11", "schedule.steps=6",
            "optimizer.name=sgd", "optimizer.learning_rate=0.05", "checkpoint.every_steps=0", "logging.online_probe=false",
        ])
        func train(_ ranks: Int) throws -> [String: [Float]] {
            let run = try temporaryDirectory(for: self).appendingPathComponent("run\(ranks)").path
            return try ThreadCommunicator.run(worldSize: ranks) { communicator in
                let trainer = try Trainer(configuration: configuration, communicator: communicator, runDirectory: run,
                                          log: { _ in })
                let summary = try trainer.train()
                XCTAssertEqual(summary.terms.map(\.name), ["mean_norm"])
                return try trainer.makeCheckpoint().tensors.mapValues(\.values)
            }[0]
        }
        let one = try train(1), three = try train(3)
        for key in one.keys.sorted() where key.hasPrefix("params/") {
            XCTAssertLessThanOrEqual(relativeNormError(one[key]!, three[key]!), 1e-5, key)
        }
    }
}
