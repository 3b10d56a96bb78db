import Objectives
import XCTest
import _TestSupport

/// The `objectives` scenario of `MPIHarness` under a real `mpirun` on 2 and 3 processes: every
/// rank's loss and terms, and the ranks' gradient rows put together, against the golden file.
final class MPIObjectivesTests: XCTestCase {
    func testObjectivesUnderMPIMatchTheGoldenFile() throws {
        try MPIRun.requireAvailable()
        let cases = try GoldenCase.loadAll()
        for ranks in [2, 3] {
            let reports = try MPIRun.launch(executable: "MPIHarness", ranks: ranks,
                                            arguments: ["objectives", "--fixture", GoldenCase.fixturePath], timeout: 120)
            XCTAssertEqual(reports.map(\.rank), Array(0..<ranks))
            // VICReg's Gram form on the gather path, split by rows (each rank's n × N block) and by
            // features (each rank's syrk of its features, reduce-scattered), against one process (syrk).
            let square = try evaluateSplit(VICReg<Float>(), inputs: VICRegGramFixture.views(),
                                           dimension: VICRegGramFixture.dimension, counts: [VICRegGramFixture.rows],
                                           reduction: .statistics)
            for split in ["gather", "gather-features"] {
                for report in reports {
                    assertClose(try report.doubles("gram/vicreg/\(split)/loss")[0], square.results[0].loss, rtol: 1e-5,
                                "Gram form (\(split)) on \(ranks) MPI ranks")
                }
                for (v, key) in ["grad_z1", "grad_z2"].enumerated() {
                    let gradient = try reports.flatMap { try $0.doubles("gram/vicreg/\(split)/\(key)") }
                    XCTAssertLessThanOrEqual(relativeNormError(gradient, square.gradients[v]), 1e-4,
                                             "Gram form \(key) (\(split)) on \(ranks) MPI ranks")
                }
            }
            // The split by features reduce-scatters each view's 12 × 12 Gram matrix (Float).
            let rows = try reports[0].doubles("gram/vicreg/gather/bytes")[0]
            XCTAssertEqual(try reports[0].doubles("gram/vicreg/gather-features/bytes")[0], rows + 2 * 12 * 12 * 4)
            for golden in cases {
                for (objective, _, gradientKeys, termNames) in golden.objectives(as: Float.self) {
                    let name = objective.name
                    for reduction in ["statistics", "gather"] {
                        let key = "\(golden.name)/\(name)/\(reduction)"
                        let label = "\(key) on \(ranks) MPI ranks"
                        for report in reports {
                            let loss = try report.doubles("\(key)/loss")[0]
                            XCTAssertLessThanOrEqual(relativeError(loss, golden.scalar("\(name)/loss")), 1e-4, label)
                            XCTAssertEqual(loss, try reports[0].doubles("\(key)/loss")[0], "same loss on every rank: \(label)")
                            for term in termNames {
                                XCTAssertLessThanOrEqual(relativeError(try report.doubles("\(key)/\(term)")[0],
                                                                       golden.scalar("\(name)/\(term)")), 1e-4, "\(term): \(label)")
                            }
                        }
                        let rowCounts = try reports.map { Int(try $0.integers("\(key)/rows")[1]) }
                        XCTAssertEqual(rowCounts.reduce(0, +), golden.batchSize, label)
                        for gradientKey in gradientKeys {
                            var gradient: [Double]
                            if gradientKey == "grad_views" {
                                // Each rank reports its rows of view 0, then of view 1, then view 2.
                                let perRank = try reports.map { try $0.doubles("\(key)/grad_views") }
                                gradient = []
                                for v in 0..<3 {
                                    for (rank, rows) in perRank.enumerated() {
                                        let block = rowCounts[rank] * golden.dimension
                                        gradient += rows[v * block ..< (v + 1) * block]
                                    }
                                }
                            } else {
                                gradient = try reports.flatMap { try $0.doubles("\(key)/\(gradientKey)") }
                            }
                            XCTAssertLessThanOrEqual(relativeNormError(gradient, golden.reference["\(name)/\(gradientKey)"]!),
                                                     1e-3, "\(gradientKey): \(label)")
                        }
                    }
                }
            }
        }
    }
}
