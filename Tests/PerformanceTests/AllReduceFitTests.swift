import Foundation
import Engine
import JointEmbedding
import Performance
import XCTest
import _TestSupport

/// The fit of `t(bytes) = α + 2(P−1)/P · bytes/β` under `bench comm`'s table.
final class AllReduceFitTests: XCTestCase {
    /// Rows whose mean times follow `α + 2(P−1)/P · bytes/β` exactly.
    func syntheticRows(latency: Double, bandwidth: Double, worldSize: Int) -> [Benchmarks.AllReduceRow] {
        let p = Double(worldSize)
        return Benchmarks.doublingSizes(from: 4096, to: 64 << 20).map { bytes in
            let seconds = latency + 2 * (p - 1) / p * Double(bytes) / bandwidth
            return Benchmarks.AllReduceRow(bytes: bytes, iterations: 10, meanMicroseconds: seconds * 1e6,
                                           minimumMicroseconds: seconds * 1e6, algorithmBandwidth: Double(bytes) / seconds / 1e9,
                                           busBandwidth: 2 * (p - 1) / p * Double(bytes) / seconds / 1e9)
        }
    }

    func testFitRecoversLatencyAndBusBandwidthExactly() throws {
        for (latency, bandwidth, ranks) in [(3.2e-6, 1.4e9, 2), (21e-6, 9.5e9, 4), (0.8e-6, 25e9, 7)] {
            let fit = try XCTUnwrap(Benchmarks.fitAllReduce(syntheticRows(latency: latency, bandwidth: bandwidth,
                                                                          worldSize: ranks), worldSize: ranks))
            assertClose(fit.latency, latency, rtol: 1e-9, "α on \(ranks) ranks")
            assertClose(fit.bandwidth, bandwidth, rtol: 1e-9, "β on \(ranks) ranks")
            XCTAssertLessThan(fit.relativeResidual, 1e-9)
            XCTAssertEqual(fit.worldSize, ranks)
            assertClose(fit.seconds(bytes: 1 << 20), latency + 2 * Double(ranks - 1) / Double(ranks) * Double(1 << 20) / bandwidth,
                        rtol: 1e-9)
        }
    }

    /// The shared-memory fit `t = α + (1 + 1/P)·bytes/β_mem` recovers both from exact rows.
    func testSharedMemoryFitRecoversLatencyAndMemoryBandwidth() throws {
        for (latency, bandwidth, ranks) in [(1.5e-6, 15e9, 2), (4e-6, 40e9, 3)] {
            let factor = 1 + 1 / Double(ranks)
            let rows = Benchmarks.doublingSizes(from: 4096, to: 64 << 20).map { bytes in
                let seconds = latency + factor * Double(bytes) / bandwidth
                return Benchmarks.AllReduceRow(bytes: bytes, iterations: 10, meanMicroseconds: seconds * 1e6,
                                               minimumMicroseconds: seconds * 1e6, algorithmBandwidth: 0, busBandwidth: 0)
            }
            let fit = try XCTUnwrap(Benchmarks.fitSharedMemoryReduction(rows, worldSize: ranks))
            assertClose(fit.latency, latency, rtol: 1e-9, "α on \(ranks) ranks")
            assertClose(fit.bandwidth, bandwidth, rtol: 1e-9, "β_mem on \(ranks) ranks")
            XCTAssertLessThan(fit.residual, 1e-9)
            XCTAssertNil(Benchmarks.fitSharedMemoryReduction(rows, worldSize: 1))
        }
    }

    func testFitOfNoisyRowsAndWhereThereIsNone() throws {
        // Latency-free rows: α is not negative, β is recovered.
        let free = try XCTUnwrap(Benchmarks.fitAllReduce(syntheticRows(latency: 0, bandwidth: 2e9, worldSize: 2), worldSize: 2))
        XCTAssertGreaterThanOrEqual(free.latency, 0)
        XCTAssertLessThan(free.latency, 1e-12)
        assertClose(free.bandwidth, 2e9, rtol: 1e-9)
        // ±10 % alternating noise: still within 10 %, and the residual says so.
        var rows = syntheticRows(latency: 5e-6, bandwidth: 3e9, worldSize: 2)
        for i in rows.indices { rows[i].meanMicroseconds *= i % 2 == 0 ? 1.1 : 0.9 }
        let noisy = try XCTUnwrap(Benchmarks.fitAllReduce(rows, worldSize: 2))
        assertClose(noisy.latency, 5e-6, rtol: 0.1)
        assertClose(noisy.bandwidth, 3e9, rtol: 0.1)
        XCTAssertGreaterThan(noisy.relativeResidual, 0.05)
        // One rank, or one size: no fit.
        XCTAssertNil(Benchmarks.fitAllReduce(syntheticRows(latency: 1e-6, bandwidth: 1e9, worldSize: 2), worldSize: 1))
        XCTAssertNil(Benchmarks.fitAllReduce(Array(rows.prefix(1)), worldSize: 2))
        let report = Benchmarks.AllReduceReport(worldSize: 2, rows: syntheticRows(latency: 4e-6, bandwidth: 1e9, worldSize: 2))
        XCTAssertTrue(report.table.contains("α = 4.00 µs, β = 1.000 GB/s"), report.table)
        XCTAssertNil(Benchmarks.AllReduceReport(worldSize: 1, rows: rows).fit)
    }
}
