import Objectives
import XCTest
import _TestSupport

/// Each objective's static `plan`, the one its evaluation builds, against what the evaluation
/// does: the bytes it reports on each path and the path the automatic choice takes.
final class StatisticsPlanTests: XCTestCase {
    func inputs(_ count: Int, n: Int, d: Int) -> [[Double]] {
        (0..<count).map { v in (randomTensor([n, d], seed: 4, stream: UInt64(v)) as Tensor<Double>).scalars.map { $0 + 3 } }
    }

    /// The objectives on `d` features with their plans (SIGReg and LeJEPA on 3 directions).
    func objectives<Scalar: TensorScalar & CommunicableScalar>(dimension d: Int, as _: Scalar.Type)
        -> [(objective: any Objective<Scalar>, plan: StatisticsPlan, views: Int)] {
        var list: [(any Objective<Scalar>, StatisticsPlan, Int)] = [
            (VICReg<Scalar>(), VICReg<Scalar>.plan(dimension: d), 2),
            (BarlowTwins<Scalar>(), BarlowTwins<Scalar>.plan(dimension: d), 2),
            (SIGReg<Scalar>(directions: .random(count: 3)), SIGReg<Scalar>.plan(dimension: d, viewCount: 1, directionCount: 3), 1),
            (LeJEPA<Scalar>(globalViewCount: 2, directions: .random(count: 3)),
             LeJEPA<Scalar>.plan(dimension: d, viewCount: 3, directionCount: 3), 3),
        ]
        // W-MSE whitens: it needs more rows than features.
        if d < 8 { list.append((WMSE<Scalar>(), WMSE<Scalar>.plan(dimension: d), 2)) }
        return list
    }

    func assertBytesMatchThePlan<Scalar: TensorScalar & CommunicableScalar>(as type: Scalar.Type, dimension d: Int,
                                                                            splits: [[Int]],
                                                                            costModel: ReductionCostModel = ReductionCostModel()) throws {
        let scalarBytes = MemoryLayout<Scalar>.stride
        for (objective, plan, viewCount) in objectives(dimension: d, as: type) {
            for counts in splits {
                let n = counts.reduce(0, +)
                let data = inputs(viewCount, n: n, d: d)
                for path in [StatisticsReduction.statistics, .gather] {
                    let evaluation = try evaluateSplit(objective, inputs: data, dimension: d, counts: counts,
                                                       reduction: path, knownRowCounts: true, costModel: costModel)
                    let split = costModel.splitsGram(plan: plan, worldSize: counts.count, globalBatchSize: n,
                                                     largestRankCount: counts.max() ?? 0, scalarBytes: scalarBytes)
                    let combination = path == .statistics
                        ? costModel.combination(plan: plan, worldSize: counts.count, scalarBytes: scalarBytes) : .perRankMeans
                    let expected = plan.communicatedBytes(on: path, worldSize: counts.count, globalBatchSize: n,
                                                          largestRankCount: counts.max() ?? 0, scalarBytes: scalarBytes,
                                                          combination: combination, splitsGram: split)
                    let label = "\(objective.name) \(Scalar.self) D \(d) ranks \(counts) \(path)"
                    XCTAssertEqual(evaluation.results.map(\.communicatedBytes),
                                   [Int](repeating: expected, count: counts.count), label)
                    XCTAssertEqual(Set(evaluation.results.map(\.reduction)), [counts.count == 1 ? .statistics : path], label)
                    if counts.count > 1 { XCTAssertGreaterThan(expected, 0, label) }
                }
            }
        }
    }

    /// Narrow embeddings (no Gram form) on 1, 2 and 3 ranks, one of them empty, in Float (means
    /// stored as two Floats) and Double.
    func testCommunicatedBytesAreThePlansOnEveryPath() throws {
        let splits = [[10], [3, 7], [4, 0, 6]]
        try assertBytesMatchThePlan(as: Float.self, dimension: 4, splits: splits)
        try assertBytesMatchThePlan(as: Double.self, dimension: 4, splits: splits)
    }

    /// Wide embeddings, `2N < D`: VICReg's gather path takes the Gram form, with the all-reduce
    /// of the two block norms and the invariance's sum (24 bytes), and split by features a
    /// reduce-scatter of each view's `N × N` Gram matrix before it.
    func testCommunicatedBytesOfTheGramForm() throws {
        let (d, counts) = (24, [2, 3, 4])
        let plan = VICReg<Float>.plan(dimension: d)
        XCTAssertTrue(plan.usesGramForm(globalBatchSize: 9))
        XCTAssertEqual(plan.collectiveCount(on: .gather, worldSize: 3, globalBatchSize: 9), 2)
        XCTAssertEqual(plan.collectiveCount(on: .gather, worldSize: 3, globalBatchSize: 9, splitsGram: true), 4)
        XCTAssertEqual(plan.collectiveCount(on: .statistics, worldSize: 3, globalBatchSize: 9), 1)
        XCTAssertEqual(plan.collectiveCount(on: .gather, worldSize: 1, globalBatchSize: 9), 0)
        XCTAssertEqual(plan.communicatedBytes(on: .gather, worldSize: 3, globalBatchSize: 9, largestRankCount: 4, scalarBytes: 4),
                       3 * 4 * 2 * d * 4 + 24)
        XCTAssertEqual(plan.communicatedBytes(on: .gather, worldSize: 3, globalBatchSize: 9, largestRankCount: 4, scalarBytes: 4,
                                              splitsGram: true),
                       3 * 4 * 2 * d * 4 + 2 * 9 * 9 * 4 + 24)
        try assertBytesMatchThePlan(as: Float.self, dimension: d, splits: [counts, [5, 4]])
        try assertBytesMatchThePlan(as: Float.self, dimension: d, splits: [counts, [5, 4]],
                                    costModel: ReductionCostModel(latency: 0, bandwidth: 1e18, flopRate: 1e9))
    }

    /// The split by features pays where the work it saves outweighs its reduce-scatter: on 2
    /// ranks of 256 rows at D = 2048, not on 256 ranks of one row.
    func testGramSplitsByFeaturesWhereItPays() {
        let plan = VICReg<Float>.plan(dimension: 2048), model = ReductionCostModel()
        XCTAssertTrue(model.splitsGram(plan: plan, worldSize: 2, globalBatchSize: 512, largestRankCount: 256, scalarBytes: 4))
        XCTAssertTrue(model.splitsGram(plan: plan, worldSize: 2, globalBatchSize: 256, largestRankCount: 128, scalarBytes: 4))
        XCTAssertFalse(model.splitsGram(plan: plan, worldSize: 256, globalBatchSize: 256, largestRankCount: 1, scalarBytes: 4))
        XCTAssertFalse(model.splitsGram(plan: plan, worldSize: 1, globalBatchSize: 256, largestRankCount: 256, scalarBytes: 4))
        XCTAssertFalse(model.splitsGram(plan: plan, worldSize: 2, globalBatchSize: 1024, largestRankCount: 512, scalarBytes: 4),
                       "2N ≥ D: no Gram form")
        // The FLOPs: half the block's on 2 ranks.
        XCTAssertEqual(plan.flops(on: .gather, worldSize: 2, globalBatchSize: 512, largestRankCount: 256),
                       4 * 2 * 256 * 512 * 2048)
        XCTAssertEqual(plan.flops(on: .gather, worldSize: 2, globalBatchSize: 512, largestRankCount: 256, splitsGram: true),
                       2 * (512 * 512 * 1024 + 2 * 256 * 512 * 2048))
    }

    /// The automatic choice of every objective is ``ReductionCostModel/choose`` on its plan,
    /// and both paths occur among the cases.
    func testAutomaticPathIsTheCostModelsChoiceOnThePlan() throws {
        var seen = Set<StatisticsReduction>()
        for (n, d) in [(6, 24), (12, 40), (300, 3), (60, 5)] {
            let counts = rowSplit(n, ranks: 3, uneven: true)
            for (objective, plan, viewCount) in objectives(dimension: d, as: Float.self) where d < n || !(objective is WMSE<Float>) {
                let expected = ReductionCostModel().choose(plan: plan, worldSize: 3, globalBatchSize: n,
                                                           largestRankCount: counts.max() ?? 0, scalarBytes: 4)
                let evaluation = try evaluateSplit(objective, inputs: inputs(viewCount, n: n, d: d), dimension: d,
                                                   counts: counts, reduction: .automatic, knownRowCounts: true)
                XCTAssertEqual(Set(evaluation.results.map(\.reduction)), [expected], "\(objective.name) N \(n) D \(d)")
                seen.insert(expected)
            }
        }
        XCTAssertEqual(seen, [.statistics, .gather])
    }

    /// The cost is the plan's collectives, bytes and FLOPs; the FLOPs split or repeat the
    /// statistics as the path does.
    func testCostIsMadeOfThePlansTerms() {
        let plan = BarlowTwins<Float>.plan(dimension: 64)
        let model = ReductionCostModel(latency: 3e-6, bandwidth: 2e9, flopRate: 1e10)
        let (p, n, nMax) = (4, 40, 10)
        XCTAssertEqual(plan.flops(on: .statistics, worldSize: p, globalBatchSize: n, largestRankCount: nMax),
                       Double(nMax) * (plan.flopsPerRow + plan.gradientFlopsPerRow))
        XCTAssertEqual(plan.flops(on: .gather, worldSize: p, globalBatchSize: n, largestRankCount: nMax),
                       Double(n) * plan.flopsPerRow + Double(nMax) * plan.gradientFlopsPerRow)
        XCTAssertEqual(plan.sentBytes(on: .statistics, worldSize: p, globalBatchSize: n, largestRankCount: nMax, scalarBytes: 4),
                       1.5 * Double(plan.elementCount(partitions: p) * 4))
        XCTAssertEqual(plan.sentBytes(on: .gather, worldSize: p, globalBatchSize: n, largestRankCount: nMax, scalarBytes: 4),
                       Double(3 * nMax * 2 * 64 * 4))
        // One all-reduce of m bytes on 4 ranks (CollectiveModel): the cheaper of recursive
        // doubling, 2·(α + m/β), and reduce-scatter + all-gather, 2·2·α + 1.5·m/β.
        let m = Double(plan.elementCount(partitions: p) * 4)
        let statistics = min(2 * (3e-6 + m / 2e9), 4 * 3e-6 + 1.5 * m / 2e9)
            + Double(nMax) * (plan.flopsPerRow + plan.gradientFlopsPerRow) / 1e10
        XCTAssertEqual(model.cost(of: .statistics, plan: plan, worldSize: p, globalBatchSize: n, largestRankCount: nMax,
                                  scalarBytes: 4), statistics, accuracy: 1e-15)
        // W-MSE's factorisations are the same on both paths.
        let wmse = WMSE<Float>.plan(dimension: 64)
        XCTAssertEqual(wmse.flopsPerEvaluation, 14 * 64 * 64 * 64)
        XCTAssertEqual(wmse.flops(on: .gather, worldSize: 1, globalBatchSize: n, largestRankCount: n),
                       wmse.flops(on: .statistics, worldSize: 1, globalBatchSize: n, largestRankCount: n))
    }
}
