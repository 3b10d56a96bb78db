import Communication
import Foundation
import Layers
import Objectives
import Engine
import JointEmbedding
import Optimizers
import Performance
import XCTest
import _TestSupport

/// The scaling model of `bench scaling` and its collective model.
final class ScalingModelTests: XCTestCase {
    // MARK: Collectives

    func testCollectiveModel() {
        let model = CollectiveModel(latency: 10e-6, bandwidth: 1e9)
        XCTAssertEqual([1, 2, 3, 4, 5, 8, 9, 1024, 1025].map { CollectiveModel.steps(worldSize: $0) }, [0, 1, 2, 2, 3, 3, 4, 10, 11])
        XCTAssertEqual(model.allReduce(bytes: 1e6, worldSize: 1), 0)
        // Two ranks: α + m/β whatever the size.
        XCTAssertEqual(model.allReduce(bytes: 1e6, worldSize: 2), 10e-6 + 1e-3, accuracy: 1e-15)
        XCTAssertEqual(model.allReduce(bytes: 100, worldSize: 2), 10e-6 + 1e-7, accuracy: 1e-15)
        // Eight ranks: recursive doubling for a small message, halving + ring volume for a large one.
        XCTAssertEqual(model.allReduce(bytes: 100, worldSize: 8), 3 * (10e-6 + 1e-7), accuracy: 1e-15)
        XCTAssertEqual(model.allReduce(bytes: 1e6, worldSize: 8), 6 * 10e-6 + 1.75e-3, accuracy: 1e-15)
        XCTAssertEqual(model.allGather(bytesPerRank: 1e3, worldSize: 4), 2 * 10e-6 + 3e-6, accuracy: 1e-15)
        XCTAssertEqual(model.allGather(bytesPerRank: 1e3, worldSize: 1), 0)
    }

    // MARK: The model against the objectives

    /// Tiny models: the bytes the model predicts on each path are what the objectives report on
    /// thread ranks, and the automatic path they take is the predicted one.
    func testPredictedObjectiveBytesAndPathAreWhatTheObjectivesDo() throws {
        let machine = ScalingModel.Machine(latency: 5e-6, bandwidth: 1e9, flopRate: 1e10)
        var seen = Set<StatisticsReduction>()
        for (dimension, batch) in [(4, ScalingModel.Batch.perRank(5)), (4, .global(13)), (24, .perRank(3)), (24, .global(7))] {
            for name in ObjectiveRegistry.builtIn.map({ ObjectiveName(rawValue: $0.name) }) where !(name == .wmse && dimension > 4) {
                let options = Benchmarks.StepOptions(encoder: [6, 8], projector: [8, 16, dimension], objective: name,
                                                     directions: 3)
                let model = try ScalingModel(options: options, machine: machine)
                for ranks in 1...3 {
                    let prediction = try model.predict(worldSize: ranks, batch: batch)
                    let n = prediction.globalBatch
                    let counts = (0..<ranks).map { n / ranks + ($0 < n % ranks ? 1 : 0) }
                    XCTAssertEqual(counts.max(), prediction.rowsPerRank)
                    for reduction in [StatisticsReduction.automatic, .statistics, .gather] {
                        let results = try evaluate(name, dimension: dimension, counts: counts, reduction: reduction)
                        let label = "\(name) D \(dimension) ranks \(counts) \(reduction)"
                        let path = reduction == .automatic ? prediction.path : reduction
                        let expected = path == .gather ? prediction.gather : prediction.statistics
                        XCTAssertEqual(results.map(\.communicatedBytes), [Int](repeating: expected.communicatedBytes, count: ranks), label)
                        XCTAssertEqual(Set(results.map(\.reduction)), [ranks == 1 ? .statistics : path], label)
                        if reduction == .automatic && ranks > 1 { seen.insert(path) }
                    }
                }
            }
        }
        XCTAssertEqual(seen, [.statistics, .gather], "both paths are exercised")
    }

    /// One evaluation of the bench's objective on thread ranks with `counts` rows (known to the objective).
    func evaluate(_ name: Benchmarks.ObjectiveName, dimension: Int, counts: [Int],
                  reduction: StatisticsReduction) throws -> [ObjectiveResult] {
        try runRanks(counts.count) { communicator in
            let objective = try Benchmarks.makeObjective(name, directions: 3)
            let views = (0..<2).map { v in
                randomTensor([counts[communicator.rank], dimension], seed: 3, stream: UInt64(10 * communicator.rank + v),
                             as: Float.self)
            }
            let gradients = views.map { Tensor<Float>(zeros: $0.shape) }
            return try objective.evaluate(views: views, gradients: gradients,
                                          context: ObjectiveContext(communicator: communicator, step: 1, seed: 2,
                                                                    reduction: reduction, rowCounts: counts))
        }
    }

    // MARK: The step

    func testDefaultModelsParametersAndBatchNorms() throws {
        let options = Benchmarks.StepOptions()
        let model = try ScalingModel(options: options, machine: .init(latency: 1e-6, bandwidth: 1e9, flopRate: 1e10))
        XCTAssertEqual(model.parameterCount, try Model<Float>(options.model, seed: 0).parameters.count)
        XCTAssertEqual(model.batchNormFeatures, [1024, 2048])
        XCTAssertEqual(model.plan, VICReg<Float>.plan(dimension: 2048))
        XCTAssertThrowsError(try ScalingModel(options: Benchmarks.StepOptions(projector: [512, 2048]),
                                              machine: .init(latency: 1e-6, bandwidth: 1e9, flopRate: 1e10)))
    }

    /// The step is the sum of its parts, each by its formula, on two ranks by hand.
    func testStepOnTwoRanksByHand() throws {
        let (alpha, beta, rate, objectiveRate, overhead) = (7e-6, 2e9, 4e10, 1.5e10, 3e-3)
        let options = Benchmarks.StepOptions(encoder: [20, 32, 32], projector: [32, 64, 48], objective: .barlowTwins)
        let model = try ScalingModel(options: options, machine: .init(latency: alpha, bandwidth: beta, flopRate: rate,
                                                                      objectiveFlopRate: objectiveRate, overhead: overhead))
        let prediction = try model.predict(worldSize: 2, batch: .perRank(16))
        XCTAssertEqual(prediction.globalBatch, 32)
        XCTAssertEqual(prediction.rowsPerRank, 16)
        // Model products: per view and linear layer forward, input gradient (not the first
        // layer's) and weight gradient.
        let layers = [(20, 32), (32, 32), (32, 64), (64, 48)]
        let perView = layers.enumerated().reduce(0.0) { total, item in
            let (input, output) = item.element
            return total + 2 * 16 * Double(input * output) * (item.offset == 0 ? 2 : 3)
        }
        XCTAssertEqual(prediction.modelFLOPs, 2 * perView)
        XCTAssertEqual(prediction.computeSeconds, 2 * perView / rate + overhead, accuracy: 1e-15)
        // Parameters: weights and biases of the four linear layers (the projector's last without
        // bias), γ and β of the two hidden batch norms (one a network).
        let parameters = 20 * 32 + 32 + 2 * 32 + 32 * 32 + 32 + 32 * 64 + 64 + 2 * 64 + 64 * 48
        XCTAssertEqual(model.parameterCount, parameters)
        XCTAssertEqual(prediction.gradientBytes, 4 * parameters)
        XCTAssertEqual(prediction.gradientSeconds, alpha + Double(4 * parameters) / beta, accuracy: 1e-15)
        // Batch norm: 2 layers × 2 views × (forward 1 + 2C, backward 2C Doubles).
        XCTAssertEqual(model.batchNormFeatures, [32, 64])
        XCTAssertEqual(prediction.batchNormAllReduces, 8)
        let normBytes = [32, 64].reduce(0) { $0 + 2 * 8 * ((1 + 2 * $1) + 2 * $1) }
        XCTAssertEqual(prediction.batchNormBytes, normBytes)
        XCTAssertEqual(prediction.batchNormSeconds, 8 * alpha + Double(normBytes) / beta, accuracy: 1e-15)
        // Barlow Twins on the statistics path: one all-reduce of its plan's elements.
        let plan = BarlowTwins<Float>.plan(dimension: 48)
        XCTAssertEqual(prediction.path, ReductionCostModel().choose(plan: plan, worldSize: 2, globalBatchSize: 32,
                                                                    largestRankCount: 16, scalarBytes: 4))
        XCTAssertEqual(model.machine.costModel, ReductionCostModel(latency: alpha, bandwidth: beta, flopRate: objectiveRate))
        XCTAssertEqual(prediction.machinePath, model.machine.costModel.choose(plan: plan, worldSize: 2, globalBatchSize: 32,
                                                                              largestRankCount: 16, scalarBytes: 4))
        let statisticsBytes = plan.elementCount(partitions: 2) * 4
        XCTAssertEqual(prediction.statistics.communicatedBytes, statisticsBytes)
        XCTAssertEqual(prediction.statistics.communicationSeconds, alpha + Double(statisticsBytes) / beta, accuracy: 1e-15)
        XCTAssertEqual(prediction.statistics.seconds,
                       prediction.statistics.communicationSeconds + 16 * (plan.flopsPerRow + plan.gradientFlopsPerRow) / objectiveRate,
                       accuracy: 1e-15)
        XCTAssertEqual(prediction.gather.communicatedBytes, 2 * 16 * 2 * 48 * 4)
        XCTAssertEqual(prediction.gather.communicationSeconds, alpha + Double(16 * 2 * 48 * 4) / beta, accuracy: 1e-15)
        let objective = prediction.path == .gather ? prediction.gather : prediction.statistics
        XCTAssertEqual(prediction.objectiveSeconds, objective.seconds)
        XCTAssertEqual(prediction.stepSeconds, prediction.computeSeconds + objective.seconds + prediction.batchNormSeconds
                       + prediction.gradientSeconds, accuracy: 1e-15)
        XCTAssertEqual(prediction.samplesPerSecond, 32 / prediction.stepSeconds, accuracy: 1e-9)
    }

    /// The sharded update on two ranks by hand: a reduce-scatter of the gradient, an all-gather
    /// of the parameters, the all-reduces of the norm and of LARS' two norms a parameter tensor,
    /// and half the overhead; the same bytes on the wire as the all-reduce.
    func testShardedUpdateOnTwoRanksByHand() throws {
        let (alpha, beta, rate, overhead) = (7e-6, 2e9, 4e10, 3e-3)
        let machine = ScalingModel.Machine(latency: alpha, bandwidth: beta, flopRate: rate, overhead: overhead)
        var options = Benchmarks.StepOptions(encoder: [20, 32, 32], projector: [32, 64, 48], objective: .barlowTwins,
                                             shardedUpdate: .always)
        let sharded = try ScalingModel(options: options, machine: machine).predict(worldSize: 2, batch: .perRank(16))
        options.shardedUpdate = .never
        let replicated = try ScalingModel(options: options, machine: machine).predict(worldSize: 2, batch: .perRank(16))
        let model = try ScalingModel(options: options, machine: machine)
        XCTAssertTrue(sharded.shardedUpdate)
        XCTAssertFalse(replicated.shardedUpdate)
        // Weights and biases of 4 linear layers (the last without bias), γ and β of 2 batch norms.
        XCTAssertEqual(model.parameterTensorCount, 11)
        let bytes = Double(4 * model.parameterCount)
        XCTAssertEqual(sharded.gradientSeconds, (alpha + bytes / 2 / beta) + (alpha + bytes / 2 / beta)
                       + (alpha + 8 / beta) + (alpha + 2 * 11 * 8 / beta), accuracy: 1e-15)
        XCTAssertEqual(replicated.gradientSeconds, alpha + bytes / beta, accuracy: 1e-15)
        XCTAssertEqual(sharded.gradientSentBytes, replicated.gradientSentBytes)
        XCTAssertEqual(replicated.computeSeconds - sharded.computeSeconds, overhead / 2, accuracy: 1e-15)
        // The trainer's default shards from 131,072 parameters on: the reference model, not this one.
        XCTAssertFalse(try ScalingModel(options: Benchmarks.StepOptions(encoder: [20, 32, 32], projector: [32, 64, 48]),
                                        machine: machine).predict(worldSize: 2, batch: .perRank(16)).shardedUpdate)
        XCTAssertTrue(try ScalingModel(options: Benchmarks.StepOptions(), machine: machine)
            .predict(worldSize: 2, batch: .perRank(16)).shardedUpdate)
        XCTAssertFalse(try ScalingModel(options: Benchmarks.StepOptions(), machine: machine)
            .predict(worldSize: 1, batch: .perRank(16)).shardedUpdate)
        let collectives = CollectiveModel(latency: alpha, bandwidth: beta)
        XCTAssertEqual(collectives.reduceScatter(bytes: 1e6, worldSize: 4), 2 * alpha + 0.75e6 / beta, accuracy: 1e-15)
        XCTAssertEqual(collectives.reduceScatter(bytes: 1e6, worldSize: 1), 0)
    }

    /// The sharded update of a world on one node by hand: two barriers (each a one-Double
    /// all-reduce), the sum of this rank's share read and written at β_mem, the norms'
    /// all-reduces; nothing sent. A world larger than a node takes the collectives.
    func testShardedUpdateThroughSharedMemoryByHand() throws {
        let (alpha, beta, memory) = (3e-6, 2e9, 12e9)
        let machine = ScalingModel.Machine(latency: alpha, bandwidth: beta, flopRate: 4e10, overhead: 2e-3,
                                           memoryBandwidth: memory, ranksPerNode: 2)
        let options = Benchmarks.StepOptions(encoder: [20, 32, 32], projector: [32, 64, 48], objective: .barlowTwins,
                                             shardedUpdate: .always)
        let model = try ScalingModel(options: options, machine: machine)
        let onNode = try model.predict(worldSize: 2, batch: .perRank(16))
        let bytes = Double(4 * model.parameterCount)
        XCTAssertTrue(onNode.sharedMemory)
        XCTAssertEqual(onNode.gradientSentBytes, 0)
        XCTAssertEqual(onNode.gradientSeconds, 2 * (alpha + 8 / beta) + 1.5 * bytes / memory
                       + (alpha + 8 / beta) + (alpha + 2 * 11 * 8 / beta), accuracy: 1e-15)
        let beyond = try model.predict(worldSize: 4, batch: .perRank(16))
        XCTAssertFalse(beyond.sharedMemory)
        XCTAssertGreaterThan(beyond.gradientSentBytes, 0)
        XCTAssertTrue(model.table([onNode, beyond], batch: .perRank(16)).contains("shm"))
    }

    /// With the trainer's cost model the statistics of VICReg at D = 2048 take per-rank means
    /// on few ranks and a shared mean on many, whose bytes no longer grow with the world size.
    func testStatisticsStopGrowingWithTheWorldOnceTheMeanIsShared() throws {
        let model = try ScalingModel(options: Benchmarks.StepOptions(),
                                     machine: .init(latency: 20e-6, bandwidth: 10e9, flopRate: 50e9))
        let plan = VICReg<Float>.plan(dimension: 2048)
        let predictions = try model.predict(worldSizes: [2, 64, 256, 1024], batch: .perRank(256))
        XCTAssertEqual(predictions[0].momentCombination, nil, "2 ranks of 256 rows gather (Gram form)")
        let large = predictions.dropFirst()
        XCTAssertEqual(large.map(\.path), [.statistics, .statistics, .statistics])
        XCTAssertEqual(large.map(\.momentCombination), [.sharedMean, .sharedMean, .sharedMean])
        XCTAssertEqual(Set(large.map(\.statistics.communicatedBytes)), [plan.fixedElements * 4 + plan.meanElements * 8])
        XCTAssertEqual(large.map(\.statistics.collectives), [2, 2, 2])
        XCTAssertLessThan(predictions[3].statistics.communicatedBytes, plan.elementCount(partitions: 1024) * 4 / 2)
    }

    func testOneRankMovesNothingAndEfficiencyFalls() throws {
        let model = try ScalingModel(options: Benchmarks.StepOptions(objective: .barlowTwins),
                                     machine: .init(latency: 20e-6, bandwidth: 10e9, flopRate: 50e9))
        let single = try model.predict(worldSize: 1, batch: .perRank(256))
        XCTAssertEqual(single.efficiency, 1)
        XCTAssertEqual(single.gradientSeconds + single.batchNormSeconds + single.statistics.communicationSeconds, 0)
        XCTAssertEqual(single.gradientBytes + single.batchNormBytes + single.statistics.communicatedBytes, 0)
        let ranks = [1, 2, 8, 64, 1024]
        let weak = try model.predict(worldSizes: ranks, batch: .perRank(256))
        for (a, b) in zip(weak, weak.dropFirst()) {
            XCTAssertLessThanOrEqual(a.stepSeconds, b.stepSeconds, "more ranks never make a weak-scaling step faster")
            XCTAssertGreaterThanOrEqual(a.efficiency, b.efficiency)
        }
        XCTAssertEqual(weak.map(\.globalBatch), ranks.map { 256 * $0 })
        // Strong scaling: the efficiency is the one-rank time over P times the step.
        let strong = try model.predict(worldSize: 8, batch: .global(256))
        let strongSingle = try model.predict(worldSize: 1, batch: .global(256))
        XCTAssertEqual(strong.rowsPerRank, 32)
        assertClose(strong.efficiency, strongSingle.stepSeconds / (8 * strong.stepSeconds), rtol: 1e-12)
        XCTAssertThrowsError(try model.predict(worldSize: 512, batch: .global(256))) {
            XCTAssertTrue("\($0)".contains("without rows"), "\($0)")
        }
        XCTAssertThrowsError(try model.predict(worldSize: 0, batch: .perRank(256)))
        let table = model.table(weak, batch: .perRank(256))
        XCTAssertTrue(table.contains("weak scaling, 256 rows per rank"), table)
        XCTAssertEqual(table.split(separator: "\n").count, 4 + ranks.count)
    }

    func testCalibrationFromAStepReport() throws {
        let options = Benchmarks.StepOptions(encoder: [16, 32, 32], projector: [32, 64, 64], batch: 16, steps: 2, warmup: 1)
        let report = try Benchmarks.step(options)
        let plan = VICReg<Float>.plan(dimension: 64)
        let machine = ScalingModel.Machine.calibrated(from: report, plan: plan, latency: 1e-6, bandwidth: 1e9)
        assertClose(machine.flopRate * (report.phases.forward + report.phases.backward) / 1e3, report.modelGFLOP * 1e9,
                    rtol: 1e-9)
        // One rank with 16 rows of 64 features (2N < D): VICReg's Gram form, 3·V·N²·D.
        assertClose(machine.objectiveFlopRate * report.phases.objective / 1e3, 3 * 2 * 16 * 16 * 64, rtol: 1e-9)
        assertClose(machine.overhead, (report.phases.allReduce + report.phases.update) / 1e3, rtol: 1e-9)
        XCTAssertEqual(machine.latency, 1e-6)
    }
}
