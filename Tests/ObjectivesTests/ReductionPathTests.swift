import Objectives
import XCTest
import _TestSupport

/// The choice between the statistics and the gather path, the bytes each moves, and the
/// collapse diagnostics.
final class ReductionPathTests: XCTestCase {
    func inputs(_ count: Int, n: Int, d: Int, offset: Double = 0) -> [[Double]] {
        (0..<count).map { v in (randomTensor([n, d], seed: 9, stream: UInt64(v)) as Tensor<Double>).scalars.map { $0 + offset } }
    }

    func testBytesOfEachPathAreWhatTheyShouldBe() throws {
        let (n, d) = (10, 4), counts = [3, 7]
        let data = inputs(2, n: n, d: d)
        // Statistics path: count slots and exact mean slots per rank (2 Floats a Double), two
        // packed lower triangles, one squared distance.
        let statistics = try evaluateSplit(VICReg<Float>(), inputs: data, dimension: d, counts: counts,
                                           reduction: .statistics)
        let statisticsElements = 2 * d * (d + 1) / 2 + 1 + 2 * (1 + 2 * d * 2)
        XCTAssertEqual(statistics.results.map(\.communicatedBytes), [4 * statisticsElements, 4 * statisticsElements])
        // Gather path: the counts (Int64 a rank), then both views padded to 7 rows.
        let gather = try evaluateSplit(VICReg<Float>(), inputs: data, dimension: d, counts: counts, reduction: .gather)
        XCTAssertEqual(gather.results[0].communicatedBytes, 8 * 2 + 4 * 2 * 2 * 7 * d)
        // With the counts known, the gather path moves only the rows.
        let known = try evaluateSplit(VICReg<Float>(), inputs: data, dimension: d, counts: counts, reduction: .gather,
                                      knownRowCounts: true)
        XCTAssertEqual(known.results[1].communicatedBytes, 4 * 2 * 2 * 7 * d)
        // One rank moves nothing.
        let single = try evaluateSplit(VICReg<Float>(), inputs: data, dimension: d, counts: [n], reduction: .automatic)
        XCTAssertEqual(single.results[0].communicatedBytes, 0)
        XCTAssertEqual(single.results[0].reduction, .statistics)
    }

    func testCostModelPrefersGatheringWhenCovariancesOutweighTheBatch() {
        let model = ReductionCostModel()
        func plan(d: Int) -> StatisticsPlan {
            StatisticsPlan(viewCount: 2, dimension: d, fixedElements: 2 * d * d, elementsPerRank: 4 * d + 1,
                           flopsPerRow: Double(2 * d * d), allReduceCount: 1)
        }
        // Small batch, wide embeddings: D² ≫ N·D, so gathering moves far fewer bytes; on a
        // 1 GB/s network that outweighs repeating the whole-batch covariance (at 10 GB/s it does not).
        XCTAssertEqual(ReductionCostModel(bandwidth: 1e9).choose(plan: plan(d: 2048), worldSize: 4, globalBatchSize: 64, largestRankCount: 16,
                                    scalarBytes: 4), .gather)
        XCTAssertEqual(model.choose(plan: plan(d: 2048), worldSize: 4, globalBatchSize: 64, largestRankCount: 16,
                                    scalarBytes: 4), .statistics)
        // Large batch, narrow embeddings: the statistics are small and the work is split.
        XCTAssertEqual(model.choose(plan: plan(d: 32), worldSize: 4, globalBatchSize: 8192, largestRankCount: 2048,
                                    scalarBytes: 4), .statistics)
        // A fast network and slow arithmetic: repeating the whole-batch products is what costs.
        let slowArithmetic = ReductionCostModel(latency: 0, bandwidth: 1e15, flopRate: 1e6)
        XCTAssertEqual(slowArithmetic.choose(plan: plan(d: 2048), worldSize: 4, globalBatchSize: 64,
                                             largestRankCount: 16, scalarBytes: 4), .statistics)
        XCTAssertEqual(model.choose(plan: plan(d: 2048), worldSize: 1, globalBatchSize: 64, largestRankCount: 64,
                                    scalarBytes: 4), .statistics)
    }

    func testAutomaticChoiceIsTheSameOnEveryRankAndExact() throws {
        for (n, d, expected) in [(6, 24, StatisticsReduction.gather), (300, 3, .statistics)] {
            let data = inputs(2, n: n, d: d, offset: 300)
            let counts = rowSplit(n, ranks: 3, uneven: true)
            let automatic = try evaluateSplit(BarlowTwins<Float>(), inputs: data, dimension: d, counts: counts,
                                              reduction: .automatic)
            XCTAssertEqual(Set(automatic.results.map(\.reduction)), [expected], "N \(n), D \(d)")
            let single = try evaluateSplit(BarlowTwins<Float>(), inputs: data, dimension: d, counts: [n],
                                           reduction: .statistics)
            assertClose(automatic.results[0].loss, single.results[0].loss, rtol: 1e-5)
            for v in 0..<2 {
                XCTAssertLessThanOrEqual(relativeNormError(automatic.gradients[v], single.gradients[v]), 1e-4)
            }
        }
    }

    /// VICReg's Gram form (every row held and 2N < D: one process, or the gather path) against
    /// its D × D form (the statistics path), in Float with embeddings offset by 300, on even and
    /// uneven splits with an empty rank: the same loss, terms and gradients.
    func testVICRegGramFormMatchesTheCovarianceFormOnEverySplit() throws {
        let (n, d) = (12, 40)
        let data = inputs(2, n: n, d: d, offset: 300)
        let square = try evaluateSplit(VICReg<Float>(), inputs: data, dimension: d, counts: [5, 7], reduction: .statistics)
        let splits = [[n], [6, 6], rowSplit(n, ranks: 2, uneven: true), rowSplit(n, ranks: 3, uneven: true), [0, 12]]
        // The default cost model keeps these tiny blocks by rows (a reduce-scatter's latency
        // outweighs their work); one of free collectives splits them by features.
        let byFeatures = ReductionCostModel(latency: 0, bandwidth: 1e18, flopRate: 1e9)
        let plan = VICReg<Float>.plan(dimension: d)
        for (counts, costModel) in splits.flatMap({ counts in [(counts, ReductionCostModel()), (counts, byFeatures)] }) {
            let split = costModel.splitsGram(plan: plan, worldSize: counts.count, globalBatchSize: n,
                                             largestRankCount: counts.max()!, scalarBytes: 4)
            XCTAssertEqual(split, counts.count > 1 && costModel == byFeatures, "ranks \(counts)")
            let gram = try evaluateSplit(VICReg<Float>(), inputs: data, dimension: d, counts: counts,
                                         reduction: counts.count == 1 ? .statistics : .gather, costModel: costModel)
            let label = "ranks \(counts), split by features \(split)"
            XCTAssertEqual(Set(gram.results.map(\.reduction)), [counts.count == 1 ? .statistics : .gather], label)
            for result in gram.results {
                assertClose(result.loss, square.results[0].loss, rtol: 1e-5, label)
                for (term, reference) in zip(result.terms, square.results[0].terms) {
                    XCTAssertEqual(term.name, reference.name)
                    assertClose(term.value, reference.value, rtol: 1e-4, "\(label) \(term.name)")
                }
            }
            for v in 0..<2 {
                XCTAssertLessThanOrEqual(relativeNormError(gram.gradients[v], square.gradients[v]), 1e-4, "\(label) view \(v)")
            }
        }
    }

    func testInvalidInputsThrowClearErrors() throws {
        let communicator = SingleProcessCommunicator()
        let view = Tensor<Float>(zeros: [1, 3])
        XCTAssertThrowsError(try VICReg<Float>().evaluate(views: [view, view], gradients: [view.copy(), view.copy()],
                                                          context: ObjectiveContext(communicator: communicator))) {
            XCTAssertTrue("\($0)".contains("at least 2 rows"), "\($0)")
        }
        XCTAssertThrowsError(try BarlowTwins<Float>().evaluate(views: [view], gradients: [view],
                                                               context: ObjectiveContext(communicator: communicator))) {
            XCTAssertTrue("\($0)".contains("takes 2 views"), "\($0)")
        }
        let rows = Tensor<Float>(shape: [4, 3], scalars: (0..<12).map { Float($0 % 5) })
        XCTAssertThrowsError(try WMSE<Float>(whiteningSize: 3).evaluate(
            views: [rows, rows], gradients: [rows.copy(), rows.copy()], context: ObjectiveContext(communicator: communicator))) {
            XCTAssertTrue("\($0)".contains("multiple of the whitening size"), "\($0)")
        }
    }

    /// The pictures (projection histograms, per-feature std, correlation map) are those of the
    /// global batch on any split, and a Gaussian batch's standardised projections look normal.
    func testDiagnosticPicturesAreThoseOfTheGlobalBatch() throws {
        let (n, d) = (2000, 8)
        let gaussian = inputs(1, n: n, d: d, offset: 77)[0]
        let single = try XCTUnwrap(try CollapseDiagnostics.measure(Tensor<Double>(shape: [n, d], scalars: gaussian),
                                                                   communicator: SingleProcessCommunicator(), step: 3, seed: 1,
                                                                   pictures: true).pictures)
        XCTAssertEqual(single.projectionCounts.count, 4)
        for counts in single.projectionCounts {
            XCTAssertEqual(counts.reduce(0, +), Double(n))
            // Buckets (−1, 1]: edges −4 + 0.25 k; the standard normal holds 68.3 % there.
            let central = counts[13...20].reduce(0, +) / Double(n)
            XCTAssertEqual(central, 0.683, accuracy: 0.04, "\(counts)")
        }
        XCTAssertEqual(single.correlationSide, d)
        for j in 0..<d { XCTAssertEqual(single.correlationMap[j * d + j], 1, accuracy: 1e-9) }
        let split = try runRanks(3) { communicator in
            let rows = [0..<700, 700..<700, 700..<2000][communicator.rank]
            let local = Tensor<Double>(shape: [rows.count, d], scalars: Array(gaussian[(rows.lowerBound * d)..<(rows.upperBound * d)]))
            return try CollapseDiagnostics.measure(local, communicator: communicator, step: 3, seed: 1, pictures: true).pictures
        }
        for pictures in split {
            let pictures = try XCTUnwrap(pictures)
            XCTAssertEqual(pictures.projectionCounts, single.projectionCounts)
            for (a, b) in zip(pictures.correlationMap, single.correlationMap) { XCTAssertEqual(a, b, accuracy: 1e-9) }
            for (a, b) in zip(pictures.standardDeviations, single.standardDeviations) { XCTAssertEqual(a, b, accuracy: 1e-9) }
        }
    }

    func testCollapseDiagnosticsAreThoseOfTheGlobalBatch() throws {
        let (n, d) = (40, 6)
        let isotropic = inputs(1, n: n, d: d, offset: 300)[0]
        let single = try ThreadCommunicator.run(worldSize: 1) { communicator in
            try CollapseDiagnostics.measure(Tensor<Float>(shape: [n, d], scalars: isotropic.map { Float($0) }),
                                            communicator: communicator, step: 2, seed: 5)
        }[0]
        XCTAssertEqual(single.globalBatchSize, n)
        XCTAssertGreaterThan(single.effectiveRank, 0.8 * Double(d))
        XCTAssertLessThan(single.offDiagonalCovarianceEnergy, 0.3)
        XCTAssertGreaterThan(single.minimumStandardDeviation, 0.5)
        XCTAssertEqual(single.communicatedBytes, 0)
        // Split over 3 ranks (one empty): the same diagnostics.
        let counts = [15, 0, 25], offsets = [0, 15, 15]
        let split = try runRanks(3) { communicator in
            let rows = offsets[communicator.rank] ..< offsets[communicator.rank] + counts[communicator.rank]
            let local = Tensor<Float>(shape: [rows.count, d],
                                      scalars: isotropic[rows.lowerBound * d ..< rows.upperBound * d].map { Float($0) })
            return try CollapseDiagnostics.measure(local, communicator: communicator, step: 2, seed: 5)
        }
        for diagnostics in split {
            assertClose(diagnostics.effectiveRank, single.effectiveRank, rtol: 1e-5)
            assertClose(diagnostics.meanStandardDeviation, single.meanStandardDeviation, rtol: 1e-5)
            assertClose(diagnostics.minimumStandardDeviation, single.minimumStandardDeviation, rtol: 1e-5)
            assertClose(diagnostics.offDiagonalCovarianceEnergy, single.offDiagonalCovarianceEnergy, rtol: 1e-4)
            assertClose(diagnostics.eppsPulley, single.eppsPulley, rtol: 1e-4)
            XCTAssertGreaterThan(diagnostics.communicatedBytes, 0)
        }
        // Collapsed onto a line: effective rank near 1, all covariance energy off the diagonal.
        let line = (0..<n).flatMap { i in (0..<d).map { j in Double(j + 1) * isotropic[i * d] } }
        let collapsed = try CollapseDiagnostics.measure(Tensor<Double>(shape: [n, d], scalars: line),
                                                        communicator: SingleProcessCommunicator())
        XCTAssertLessThan(collapsed.effectiveRank, 1.01)
        XCTAssertGreaterThan(collapsed.offDiagonalCovarianceEnergy, 0.5)
    }
}
