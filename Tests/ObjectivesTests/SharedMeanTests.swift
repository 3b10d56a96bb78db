import Objectives
import XCTest
import _TestSupport

/// The shared-mean combination of moments (``MomentCombination/sharedMean``): a first
/// all-reduce of the counts and sums, then moments about the global mean, in a statistics
/// buffer that does not grow with the world size; and the cost model's choice between it and
/// per-rank means.
final class SharedMeanTests: XCTestCase {
    /// A cost model without latency: the extra collective is free, so the shared mean (fewer
    /// bytes from two ranks on) is always taken.
    let sharedMean = ReductionCostModel(latency: 0)

    func inputs(_ count: Int, n: Int, d: Int, offset: Double) -> [[Double]] {
        (0..<count).map { v in (randomTensor([n, d], seed: 5, stream: UInt64(v)) as Tensor<Double>).scalars.map { $0 + offset } }
    }

    func objectives(dimension d: Int) -> [(any Objective<Float>, StatisticsPlan)] {
        [(VICReg<Float>(), VICReg<Float>.plan(dimension: d)), (BarlowTwins<Float>(), BarlowTwins<Float>.plan(dimension: d)),
         (WMSE<Float>(), WMSE<Float>.plan(dimension: d))]
    }

    /// The bytes every rank hands to collectives are the plan's for the shared mean, the same
    /// on 2, 3 and 4 ranks, and fewer than per-rank means take there.
    func testTheBufferDoesNotGrowWithTheWorldSize() throws {
        let (n, d) = (12, 4)
        for (objective, plan) in objectives(dimension: d) {
            XCTAssertEqual(plan.meanElements, 1 + 2 * d, objective.name)
            XCTAssertEqual(plan.elementCount(partitions: 1024, combination: .sharedMean), plan.fixedElements)
            var bytes: Set<Int> = []
            for counts in [[5, 7], [4, 0, 8], [3, 3, 3, 3]] {
                let label = "\(objective.name) ranks \(counts)"
                let evaluation = try evaluateSplit(objective, inputs: inputs(2, n: n, d: d, offset: 0), dimension: d,
                                                   counts: counts, reduction: .statistics, knownRowCounts: true,
                                                   costModel: sharedMean)
                XCTAssertEqual(Set(evaluation.results.map(\.momentCombination)), [.sharedMean], label)
                let expected = plan.communicatedBytes(on: .statistics, worldSize: counts.count, globalBatchSize: n,
                                                      largestRankCount: counts.max()!, scalarBytes: 4, combination: .sharedMean)
                XCTAssertEqual(evaluation.results.map(\.communicatedBytes), [Int](repeating: expected, count: counts.count), label)
                XCTAssertEqual(expected, plan.fixedElements * 4 + plan.meanElements * 8, label)
                XCTAssertLessThan(expected, plan.communicatedBytes(on: .statistics, worldSize: counts.count, globalBatchSize: n,
                                                                   largestRankCount: counts.max()!, scalarBytes: 4), label)
                XCTAssertEqual(plan.collectiveCount(on: .statistics, worldSize: counts.count, globalBatchSize: n,
                                                    combination: .sharedMean), plan.allReduceCount + 1, label)
                bytes.insert(expected)
            }
            XCTAssertEqual(bytes.count, 1, "\(objective.name): the bytes depend on the world size")
        }
    }

    /// Embeddings offset by 300, in Float, on even and uneven splits with an empty rank: the
    /// shared mean gives one process's loss, terms and gradients, as per-rank means do.
    func testSharedMeanIsThatOfOneProcessFarFromTheOrigin() throws {
        let (n, d) = (40, 6)
        for (objective, _) in objectives(dimension: d) {
            let data = inputs(2, n: n, d: d, offset: 300)
            let single = try evaluateSplit(objective, inputs: data, dimension: d, counts: [n], reduction: .statistics)
            for counts in [[20, 20], [7, 0, 33], [10, 5, 15, 10]] {
                let label = "\(objective.name) ranks \(counts)"
                let shared = try evaluateSplit(objective, inputs: data, dimension: d, counts: counts, reduction: .statistics,
                                               costModel: sharedMean)
                XCTAssertEqual(Set(shared.results.map(\.momentCombination)), [.sharedMean], label)
                XCTAssertEqual(Set(shared.results.map(\.loss)).count, 1, "every rank reports the same loss: \(label)")
                assertClose(shared.results[0].loss, single.results[0].loss, rtol: 1e-5, label)
                for (term, expected) in zip(shared.results[0].terms, single.results[0].terms) {
                    assertClose(term.value, expected.value, rtol: 1e-4, atol: 1e-7, "\(label) \(term.name)")
                }
                for v in 0..<2 {
                    XCTAssertLessThanOrEqual(relativeNormError(shared.gradients[v], single.gradients[v]), 1e-4, label)
                }
            }
        }
    }

    /// The cost model keeps per-rank means while their slots cost less than a collective, and
    /// shares the mean from some world size on (VICReg at D = 2048, 20 µs and 10 GB/s);
    /// objectives without moments never share.
    func testTheCostModelSharesTheMeanAsTheWorldGrows() {
        let plan = VICReg<Float>.plan(dimension: 2048), model = ReductionCostModel()
        let choices = [1, 2, 4, 8, 16, 64, 256, 1024].map { model.combination(plan: plan, worldSize: $0, scalarBytes: 4) }
        XCTAssertEqual(choices.first, .perRankMeans)
        XCTAssertEqual(choices[1], .perRankMeans, "2 ranks: 32.8 kB of slots cost less than a 20 µs collective")
        XCTAssertEqual(choices.last, .sharedMean, "1024 ranks: 33.6 MB of slots")
        let firstShared = choices.firstIndex(of: .sharedMean)!
        XCTAssertTrue(choices[firstShared...].allSatisfy { $0 == .sharedMean }, "\(choices)")
        // This machine's shared memory (α 1.97 µs, β 1.96 GB/s): sharing pays from 2 ranks.
        XCTAssertEqual(ReductionCostModel(latency: 1.97e-6, bandwidth: 1.96e9).combination(plan: plan, worldSize: 2,
                                                                                          scalarBytes: 4), .sharedMean)
        // The statistics path's cost is that of the cheaper combination.
        for p in [2, 1024] {
            let cheaper = [MomentCombination.perRankMeans, .sharedMean].map {
                plan.communicationSeconds(on: .statistics, worldSize: p, globalBatchSize: 256 * p, largestRankCount: 256,
                                          scalarBytes: 4, collectives: model.collectives, combination: $0)
            }.min()!
            let flops = plan.flops(on: .statistics, worldSize: p, globalBatchSize: 256 * p, largestRankCount: 256)
            XCTAssertEqual(model.cost(of: .statistics, plan: plan, worldSize: p, globalBatchSize: 256 * p,
                                      largestRankCount: 256, scalarBytes: 4), cheaper + flops / model.flopRate,
                           accuracy: 1e-12)
        }
        let sigreg = SIGReg<Float>.plan(dimension: 2048, viewCount: 2, directionCount: 1024)
        XCTAssertEqual(sigreg.meanElements, 0)
        XCTAssertEqual(ReductionCostModel(latency: 0).combination(plan: sigreg, worldSize: 1024, scalarBytes: 4), .perRankMeans)
    }
}
