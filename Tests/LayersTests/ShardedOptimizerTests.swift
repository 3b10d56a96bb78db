import XCTest
import Layers
import Optimizers
import _TestSupport

/// The sharded optimizer step (ZeRO-1): reduce-scatter, the update of this rank's share,
/// all-gather — N ranks reproduce one process on the summed gradient, for LARS, AdamW and SGD
/// with clipping (``ShardedUpdateFixture``).
final class ShardedOptimizerTests: XCTestCase {
    private func doubles(_ values: [String: JSONValue]) throws -> [String: [Double]] {
        try RankReport(rank: 0, size: 1, scenario: "sharded", values: values).doublesByKey()
    }

    /// Checks every rank's report (in rank order) against one process on the sum of as many
    /// ranks' contributions: each rank's parameters, gathered slots, norms and step count; and
    /// that the steps went through shared memory or not, as `sharedMemory` says.
    private func assertMatchesOneProcess(_ reports: [[String: [Double]]], _ label: String, sharedMemory: Bool,
                                         file: StaticString = #filePath, line: UInt = #line) throws {
        var reports = reports
        for rank in reports.indices {
            let transport = reports[rank].removeValue(forKey: ShardedUpdateFixture.transportKey)
            XCTAssertEqual(transport, [sharedMemory ? 1 : 0], "\(label), rank \(rank): the transport", file: file, line: line)
        }
        let reference = try doubles(ShardedUpdateFixture.run(on: SingleProcessCommunicator(), referenceRanks: reports.count))
        XCTAssertEqual(Set(reference.keys).count, 3 * 4 + 1, "values, norms, step count and slots of 3 optimizers",
                       file: file, line: line)
        for (rank, report) in reports.enumerated() {
            XCTAssertEqual(Set(report.keys), Set(reference.keys), "\(label), rank \(rank)", file: file, line: line)
            for (key, expected) in reference.sorted(by: { $0.key < $1.key }) {
                assertClose(report[key] ?? [], expected, rtol: 1e-12, atol: 1e-14, "\(label), rank \(rank): \(key)",
                            file: file, line: line)
            }
            XCTAssertEqual(report, reports[0], "\(label): rank \(rank) differs from rank 0", file: file, line: line)
        }
        // Clipping acted on every step, so the test covers the clipped update.
        for name in ShardedUpdateFixture.optimizers {
            XCTAssertTrue(reference["\(name).norms"]!.allSatisfy { $0 > ShardedUpdateFixture.maxNorm }, file: file, line: line)
        }
    }

    /// Through the ranks' shared memory (in-process ranks share their address space) and
    /// through the collectives: both match one process, and bitwise each other (both sum in
    /// rank order). One rank has no peers and never shares memory.
    func testInProcessRanksMatchOneProcess() throws {
        for worldSize in [1, 2, 3] {
            var byTransport: [[[String: [Double]]]] = []
            for sharedMemory in [true, false] {
                let reports = try runRanks(worldSize) { try ShardedUpdateFixture.run(on: $0, sharedMemory: sharedMemory) }
                let label = "\(worldSize) in-process ranks, shared memory \(sharedMemory)"
                try assertMatchesOneProcess(try reports.map(doubles), label, sharedMemory: sharedMemory && worldSize > 1)
                byTransport.append(try reports.map(doubles).map { $0.filter { $0.key != ShardedUpdateFixture.transportKey } })
            }
            XCTAssertEqual(byTransport[0], byTransport[1], "\(worldSize) ranks: shared memory against collectives")
        }
    }

    /// `mpirun` on this node: the steps go through an MPI shared-memory window, or with
    /// `--collectives` through `MPI_Reduce_scatter` and `MPI_Allgatherv`.
    func testMPIRanksMatchOneProcess() throws {
        try MPIRun.requireAvailable()
        for ranks in [2, 3] {
            for collectives in [false, true] {
                let reports = try MPIRun.launch(executable: "MPIHarness", ranks: ranks,
                                                arguments: ["sharded"] + (collectives ? ["--collectives"] : []), timeout: 120)
                try assertMatchesOneProcess(try reports.map { try $0.doublesByKey() },
                                            "mpirun -np \(ranks)\(collectives ? " --collectives" : "")",
                                            sharedMemory: !collectives)
            }
        }
    }

    /// The shares cut the flat buffer into consecutive ranges within an element of each other;
    /// a parameter cut by a share boundary is updated in pieces, and between steps a rank's
    /// slots are current on its own share only, until gathered.
    func testSharesAndTheGatheredState() throws {
        let results = try runRanks(3) { communicator -> ([Range<Int>], [Double], [Double]) in
            let store = ShardedUpdateFixture.makeStore()
            let optimizer = try SGD(parameters: store, learningRate: 0.1, momentum: 0.9)
            let sharded = ShardedOptimizerStep(parameters: store, optimizer: optimizer, communicator: communicator)
            XCTAssertTrue(sharded.optimizerStateIsWhole)
            store.gradients.fill(1)
            try sharded.reduceScatterGradients()
            try sharded.step()
            XCTAssertFalse(sharded.optimizerStateIsWhole)
            let before = optimizer.momentumBuffer.scalars
            try sharded.gatherOptimizerState()
            XCTAssertTrue(sharded.optimizerStateIsWhole)
            return (sharded.shards, before, optimizer.momentumBuffer.scalars)
        }
        XCTAssertEqual(results[0].0, [0..<13, 13..<27, 27..<41])
        for (rank, (shards, before, after)) in results.enumerated() {
            // The summed gradient is 3 everywhere: b = 0.9·0 + 3 on this rank's share, 0 elsewhere.
            for i in 0..<41 { XCTAssertEqual(before[i], shards[rank].contains(i) ? 3 : 0, "rank \(rank), element \(i)") }
            XCTAssertEqual(after, [Double](repeating: 3, count: 41))
        }
    }
}
