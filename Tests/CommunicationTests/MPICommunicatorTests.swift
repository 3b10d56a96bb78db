import Communication
import Foundation
import XCTest
import _TestSupport

/// ``MPICommunicator`` under a real `mpirun`, through the `MPIHarness` scenarios.
///
/// These tests fail (they do not skip) when `mpirun` is missing: CI installs Open MPI.
final class MPICommunicatorTests: XCTestCase {
    func testCollectivesOnTwoRanks() throws {
        try checkCollectives(ranks: 2, count: 5)
    }

    func testCollectivesOnThreeOversubscribedRanks() throws {
        try checkCollectives(ranks: 3, count: 5)
    }

    /// Buffers longer than the chunk limit are split into several MPI calls (allGather becomes
    /// one broadcast per rank), with the same results.
    func testChunkedCollectivesOnThreeRanks() throws {
        try checkCollectives(ranks: 3, count: 5, extraArguments: ["--max-chunk", "2"])
    }

    func testAbortEndsTheJobQuicklyWithItsMessage() throws {
        try MPIRun.requireAvailable()
        let outcome = try MPIRun.run(executable: "MPIHarness", ranks: 3, arguments: ["abort"], timeout: 30)
        XCTAssertFalse(outcome.timedOut, outcome.combinedOutput)
        XCTAssertNotEqual(outcome.exitStatus, 0, outcome.combinedOutput)
        XCTAssertLessThan(outcome.duration, 20)
        let output = outcome.standardOutput + outcome.standardError
        XCTAssertTrue(output.contains("[rank 1] MPIHarness abort scenario: this rank gives up on purpose"),
                      outcome.combinedOutput)
    }

    /// Runs `MPIHarness collectives` and checks every rank's report against the expected results.
    private func checkCollectives(ranks: Int, count: Int, extraArguments: [String] = [],
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        try MPIRun.requireAvailable()
        let reports = try MPIRun.launch(executable: "MPIHarness", ranks: ranks,
                                        arguments: ["collectives", "--count", "\(count)"] + extraArguments,
                                        timeout: 60)
        let expected = try roundTripped(CollectivesFixture.expected(size: ranks, count: count))
        XCTAssertEqual(reports.map(\.rank), Array(0 ..< ranks), file: file, line: line)
        for report in reports {
            XCTAssertEqual(report.scenario, "collectives", file: file, line: line)
            XCTAssertEqual(report.size, ranks, file: file, line: line)
            XCTAssertEqual(Set(report.values.keys), Set(expected.keys).union(["node"]), file: file, line: line)
            // Every rank runs on this machine: its node rank is its rank.
            XCTAssertEqual(report.values["node"], .array([.integer(Int64(report.rank)), .integer(Int64(ranks))]),
                           file: file, line: line)
            for (key, value) in expected.sorted(by: { $0.key < $1.key }) {
                XCTAssertEqual(report.values[key], value, "rank \(report.rank), \(key)", file: file, line: line)
            }
        }
    }

    /// `values` as they come back from a JSON line (whole numbers decode as integers).
    private func roundTripped(_ values: [String: JSONValue]) throws -> [String: JSONValue] {
        let line = try RankReport(rank: 0, size: 1, scenario: "", values: values).jsonLine()
        return try JSONDecoder().decode(RankReport.self, from: Data(line.utf8)).values
    }
}
