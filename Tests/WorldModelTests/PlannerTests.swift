import Communication
import Environments
import Layers
import Tensor
import WorldModel
import XCTest
import _TestSupport

/// The latent planner and the closed-loop protocol's pieces.
final class PlannerTests: XCTestCase {
    /// A tiny TwoRoom world model on 16 × 16 grey frames (untrained: the planner's mechanics only).
    private func network(predictor: PredictorDescription) -> WorldModelNetwork<Float> {
        WorldModelNetwork<Float>(WorldModelDescription(
            encoder: .convnet(ConvNetDescription(inputChannels: 1, imageSize: 16, channels: [4, 8])),
            projector: .mlp(widths: [8, 16, 8]),
            actionEncoder: .mlp(widths: [10, 8], batchNorm: false),
            predictor: predictor,
            predictionProjector: .mlp(widths: [8, 16, 8])), historyFrames: 3, predictedFrames: 1, seed: 2)
    }

    func testPlansAreActionsInRangeAndASteadySolveAllocatesNoTensors() throws {
        var small = PlannerSettings()
        small.samples = 40; small.elites = 5; small.iterations = 4
        var transformer = TransformerPredictorDescription()
        transformer.depth = 1; transformer.heads = 2
        for predictor in [PredictorDescription.transformer(transformer), .mlp(MLPPredictorDescription())] {
            for solver in PlannerSolver.allCases {
                small.solver = solver
                let planner = try LatentPlanner(network: network(predictor: predictor), frameskip: 5, actionDimension: 2, settings: small)
                var policy = PlannerPolicy(planner: planner, format: try ObservationFormat(size: 16, channels: 1))
                let start = try policy.embed([60, 60]), goal = try policy.embed([180, 150])
                let first = try planner.plan(current: start, goal: goal)
                XCTAssertEqual(first.actions.count, small.receding * 5 * 2)
                XCTAssertTrue(first.actions.allSatisfy { (-1...1).contains($0) }, "\(solver)")
                XCTAssertTrue(first.cost.isFinite)
                let before = TensorAllocations.snapshot.count
                _ = try planner.plan(current: start, goal: goal)
                XCTAssertEqual(TensorAllocations.snapshot.count - before, 0, "\(solver): a steady solve allocated tensor storage")
            }
        }
    }

    /// The same seed gives the same plan; warm start changes the next solve's start.
    func testSolvesAreReproducible() throws {
        var settings = PlannerSettings()
        settings.samples = 30; settings.elites = 4; settings.iterations = 3
        var transformer = TransformerPredictorDescription()
        transformer.depth = 1; transformer.heads = 2
        let plans = try (0..<2).map { _ -> [Float] in
            let planner = try LatentPlanner(network: network(predictor: .transformer(transformer)), frameskip: 5, actionDimension: 2,
                                            settings: settings)
            let z = [Float](repeating: 0.1, count: 8), g = [Float](repeating: -0.2, count: 8)
            return try planner.plan(current: z, goal: g).actions
        }
        XCTAssertEqual(plans[0], plans[1])
    }

    /// The key/value-cached rollout predicts what recomputing every window predicts: growing
    /// (steps < H) and sliding windows, 1 and 2 blocks, with and without a prediction projector,
    /// on random weights (the AdaLN modulation is not left at its zero start).
    func testCachedRolloutMatchesFullRecompute() throws {
        // Width 8 and 16 in 2 heads: 4 and 8 values a head (the shipped model's 32 in 4 heads: 8).
        for (depth, projector, width) in [(1, false, 8), (2, true, 8), (2, true, 16)] {
            var transformer = TransformerPredictorDescription()
            transformer.depth = depth; transformer.heads = 2
            let network = WorldModelNetwork<Float>(WorldModelDescription(
                encoder: .mlp(widths: [4, width]), projector: nil,
                actionEncoder: .mlp(widths: [10, width], batchNorm: false, activation: .gelu),
                predictor: .transformer(transformer), predictionProjector: projector ? .mlp(widths: [width, 16, width]) : nil),
                historyFrames: 3, predictedFrames: 1, seed: 4)
            CounterRandom(seed: 5, stream: UInt64(depth)).fillNormal(network.parameters.values, standardDeviation: 0.5)
            var settings = PlannerSettings()
            settings.samples = 9; settings.elites = 3; settings.iterations = 3; settings.horizon = 5
            // Cached on one thread, cached on two (lanes of candidates), the full recompute.
            let planners = try [(true, 1), (true, 2), (false, 1)].map { cached, threads -> LatentPlanner in
                settings.keyValueCache = cached
                settings.threads = threads
                return try LatentPlanner(network: network, frameskip: 5, actionDimension: 2, settings: settings)
            }
            var random = CounterRandom(seed: 6, streamName: "rollout").sequence()
            func uniform() -> Float { Float(Double(random.next() >> 11) * 0x1p-53) * 2 - 1 }
            let start = (0..<width).map { _ in uniform() }, goal = (0..<width).map { _ in uniform() }
            for _ in 0..<3 {
                let actions = (0..<50).map { _ in uniform() }
                let full = try planners[2].predictedEmbeddings(current: start, actions: actions)
                XCTAssertGreaterThan(zip(full[5], start).map { abs($0 - $1) }.max()!, 0.01, "the rollout moves")
                for planner in planners.prefix(2) {
                    let cached = try planner.predictedEmbeddings(current: start, actions: actions)
                    for step in 0...5 {
                        assertClose(cached[step], full[step], rtol: 1e-5, atol: 1e-5,
                                    "width \(width), depth \(depth), \(planner.settings.threads) thread(s), step \(step)")
                    }
                }
            }
            // Whole solves (9 different candidates an iteration) choose the same plan.
            let full = try planners[2].plan(current: start, goal: goal)
            for planner in planners.prefix(2) {
                let cached = try planner.plan(current: start, goal: goal)
                assertClose(cached.actions, full.actions, rtol: 1e-4, atol: 1e-4, "depth \(depth), \(planner.settings.threads) thread(s)")
                assertClose(cached.cost, full.cost, rtol: 1e-4, atol: 1e-5)
            }
        }
    }

    func testBadPlannerSettingsNameTheOption() {
        var s = PlannerSettings()
        s.elites = 400
        assertThrowsError(try s.validate(), containing: "--elites")
        s = PlannerSettings(); s.receding = 6
        assertThrowsError(try s.validate(), containing: "--receding")
    }

    func testWilsonInterval() {
        // statsmodels' proportion_confint(87, 100, method="wilson").
        let (low, high) = ClosedLoop.wilson(successes: 87, of: 100)
        assertClose(low, 0.790196, rtol: 1e-5)
        assertClose(high, 0.922428, rtol: 1e-5)
        XCTAssertEqual(ClosedLoop.wilson(successes: 0, of: 500).low, 0)
        assertClose(ClosedLoop.wilson(successes: 0, of: 500).high, 0.0076243, rtol: 1e-4)
    }

    /// The expert reaches every task; tasks are where the protocol says.
    func testProtocolTasksAndBaselines() throws {
        let cross = ClosedLoop.crossRoomTasks(count: 20, seed: 3)
        for task in cross {
            XCTAssertTrue((task.start.x < 100) != (task.goal.x < 100), "\(task)")
            XCTAssertTrue(task.start.x < 100 || task.start.x > 124)
            XCTAssertEqual(task.budget, 100)
        }
        var expert = ExpertClosedLoopPolicy()
        var random = RandomPolicy(seed: 1)
        var expertSuccesses = 0, randomSuccesses = 0
        for task in cross {
            let outcome = try ClosedLoop.run(&expert, on: task)
            XCTAssertEqual(outcome.path.count, outcome.steps + 1)
            if outcome.success { expertSuccesses += 1 }
            if try ClosedLoop.run(&random, on: task).success { randomSuccesses += 1 }
        }
        XCTAssertEqual(expertSuccesses, 20)
        XCTAssertLessThanOrEqual(randomSuccesses, 2)
    }
}
