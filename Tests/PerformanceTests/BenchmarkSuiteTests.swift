import Communication
import Foundation
import Engine
import JointEmbedding
import Performance
import XCTest
import _TestSupport

/// The all-reduce and checkpoint benchmarks behind `anticollapse bench comm` and `bench checkpoint`.
final class BenchmarkSuiteTests: XCTestCase {
    func testAllReduceOnTwoThreadRanksReportsEveryDoublingSize() throws {
        let sizes = Benchmarks.doublingSizes(from: 4096, to: 65536)
        XCTAssertEqual(sizes, [4096, 8192, 16384, 32768, 65536])
        let results = try runRanks(2) { communicator in
            try Benchmarks.allReduce(communicator: communicator, sizes: sizes, iterations: 5)
        }
        XCTAssertEqual(results[0], results[1], "every rank returns the rows reduced over the ranks")
        let rows = results[0]
        XCTAssertEqual(rows.map(\.bytes), sizes)
        for (row, next) in zip(rows, rows.dropFirst()) { XCTAssertEqual(next.bytes, 2 * row.bytes) }
        for row in rows {
            XCTAssertEqual(row.iterations, 5)
            XCTAssertGreaterThan(row.meanMicroseconds, 0)
            XCTAssertGreaterThan(row.minimumMicroseconds, 0)
            XCTAssertLessThanOrEqual(row.minimumMicroseconds, row.meanMicroseconds)
            XCTAssertGreaterThan(row.algorithmBandwidth, 0)
            // 2(p−1)/p = 1 for two ranks.
            XCTAssertEqual(row.busBandwidth, row.algorithmBandwidth, accuracy: 1e-12)
        }
        XCTAssertTrue(Benchmarks.allReduceTable(rows, worldSize: 2).contains("busbw GB/s"))
    }

    /// `bench comm --shared-memory`: the step's shared-memory sum on two thread ranks, a row a
    /// size; nothing to time on one process.
    func testSharedMemoryReductionOnTwoThreadRanksReportsEveryDoublingSize() throws {
        let sizes = Benchmarks.doublingSizes(from: 4096, to: 65536)
        let results = try runRanks(2) { communicator in
            try Benchmarks.sharedMemoryReduction(communicator: communicator, sizes: sizes, iterations: 5)
        }
        let rows = try XCTUnwrap(results[0])
        XCTAssertEqual(results[1], rows, "every rank returns the rows reduced over the ranks")
        XCTAssertEqual(rows.map(\.bytes), sizes)
        for row in rows {
            XCTAssertEqual(row.iterations, 5)
            XCTAssertGreaterThan(row.minimumMicroseconds, 0)
            XCTAssertLessThanOrEqual(row.minimumMicroseconds, row.meanMicroseconds)
            // (1 + 1/P)·bytes read and written a second, in both columns.
            XCTAssertEqual(row.algorithmBandwidth, 1.5 * Double(row.bytes) / row.meanMicroseconds / 1e3, accuracy: 1e-9)
            XCTAssertEqual(row.busBandwidth, row.algorithmBandwidth)
        }
        XCTAssertTrue(Benchmarks.sharedMemoryTable(rows, worldSize: 2).contains("sharded reduction through shared memory"))
        XCTAssertNil(try Benchmarks.sharedMemoryReduction(communicator: SingleProcessCommunicator(), sizes: sizes))
        XCTAssertTrue(Benchmarks.sharedMemoryTable(nil, worldSize: 1).contains("none"))
    }

    func testLargeMessagesGetFewerIterations() {
        XCTAssertEqual(Benchmarks.allReduceIterations(bytes: 1 << 20, iterations: 100), 100)
        XCTAssertEqual(Benchmarks.allReduceIterations(bytes: 64 << 20, iterations: 100), 10)
        XCTAssertEqual(Benchmarks.allReduceIterations(bytes: 64 << 20, iterations: 20), 5)
        XCTAssertEqual(Benchmarks.doublingSizes(from: 4096, to: 64 << 20).count, 15)
        XCTAssertEqual(Benchmarks.doublingSizes(from: 4096, to: 5000), [4096])
    }

    func testCheckpointOfTinyModelReportsRatesAndLeavesNoFiles() throws {
        let parent = try temporaryDirectory(for: self)
        let report = try Benchmarks.checkpoint(encoder: [6, 8, 8], projector: [8, 16, 16], repeats: 2, in: parent)
        XCTAssertGreaterThan(report.megabytes, 0)
        XCTAssertGreaterThan(report.writeMegabytesPerSecond, 0)
        XCTAssertGreaterThan(report.readMegabytesPerSecond, 0)
        XCTAssertGreaterThan(report.tensorCount, 0)
        XCTAssertTrue(report.table.contains("MB/s"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent.path), [])
    }
}
