import Communication
import Foundation
import XCTest
import _TestSupport

/// Collectives of in-process ranks (``ThreadCommunicator``) for worlds of 1 to 4 ranks.
final class ThreadCommunicatorTests: XCTestCase {
    /// An error a test rank throws on purpose.
    struct Deliberate: Error, Equatable {}

    func testEveryCollectiveAndTypeForOneToFourRanks() throws {
        for size in 1 ... 4 {
            for count in [0, 1, 7] {
                let reports = try runRanks(size) { try CollectivesFixture.run(on: $0, count: count) }
                let expected = CollectivesFixture.expected(size: size, count: count)
                for (rank, values) in reports.enumerated() {
                    XCTAssertEqual(values, expected, "size \(size), count \(count), rank \(rank)")
                }
            }
        }
    }

    func testBroadcastFromEveryRoot() throws {
        for size in 1 ... 4 {
            for root in 0 ..< size {
                let results = try runRanks(size) { comm in
                    var doubles = CollectivesFixture.values(Double.self, rank: comm.rank, count: 6)
                    var bytes = CollectivesFixture.values(UInt8.self, rank: comm.rank, count: 3)
                    try comm.broadcast(&doubles, root: root)
                    try comm.broadcast(&bytes, root: root)
                    return (doubles, bytes)
                }
                for (rank, result) in results.enumerated() {
                    XCTAssertEqual(result.0, CollectivesFixture.values(Double.self, rank: root, count: 6),
                                   "size \(size), root \(root), rank \(rank)")
                    XCTAssertEqual(result.1, CollectivesFixture.values(UInt8.self, rank: root, count: 3))
                }
            }
        }
    }

    func testAllGatherConcatenatesInRankOrder() throws {
        for size in 1 ... 4 {
            let results = try runRanks(size) { comm in
                try comm.allGather([Int64(comm.rank), Int64(100 + comm.rank)])
            }
            let expected = (0 ..< size).flatMap { [Int64($0), Int64(100 + $0)] }
            XCTAssertEqual(results, Array(repeating: expected, count: size))
        }
    }

    /// Sums of values that round differently in different orders are bitwise identical on every
    /// rank and equal to the sum in rank order.
    func testReductionIsDeterministicAndIdenticalOnEveryRank() throws {
        let size = 4, count = 257
        let inputs = (0 ..< size).map { rank in
            (0 ..< count).map { i in Float(sin(Double(rank * count + i) * 0.37)) * 1e3 + 1e-3 * Float(i) }
        }
        let inRankOrder = (0 ..< count).map { i in inputs.dropFirst().reduce(inputs[0][i]) { $0 + $1[i] } }
        for _ in 0 ..< 5 {
            let results = try runRanks(size) { comm in
                var buffer = inputs[comm.rank]
                try comm.allReduce(&buffer, .sum)
                return buffer
            }
            for result in results {
                XCTAssertEqual(result.map(\.bitPattern), inRankOrder.map(\.bitPattern))
            }
        }
    }

    func testIntegerSumsWrapAroundLikeMPI() throws {
        let results = try runRanks(2) { comm in
            var bytes: [UInt8] = [200, 1]
            var longs: [Int64] = [Int64.max, -1]
            try comm.allReduce(&bytes, .sum)
            try comm.allReduce(&longs, .sum)
            return (bytes, longs)
        }
        for result in results {
            XCTAssertEqual(result.0, [144, 2])
            XCTAssertEqual(result.1, [-2, -2])
        }
    }

    /// No rank leaves a barrier before every rank has entered it, over many reuses of the barrier.
    func testBarrierSeparatesPhases() throws {
        let size = 4, rounds = 200
        let counter = LockedCounter()
        let observations = try runRanks(size) { comm in
            var seen: [Int] = []
            for _ in 0 ..< rounds {
                counter.increment()
                try comm.barrier()
                seen.append(counter.value)
                try comm.barrier()
            }
            return seen
        }
        for seen in observations {
            XCTAssertEqual(seen, (1 ... rounds).map { $0 * size })
        }
    }

    func testMismatchedCountsThrowInvalidArgumentOnEveryRankAndGroupRecovers() throws {
        let results = try runRanks(3) { comm -> (String, [Double]) in
            var buffer = [Double](repeating: 1, count: comm.rank + 1)
            var message = "no error"
            do {
                try comm.allReduce(&buffer, .sum)
            } catch let CommunicationError.invalidArgument(text) {
                message = text
            }
            var ones = [Double](repeating: 1, count: 2)
            try comm.allReduce(&ones, .sum)
            return (message, ones)
        }
        for (message, ones) in results {
            XCTAssertTrue(message.contains("do not match"), message)
            XCTAssertEqual(ones, [3, 3])
        }
    }

    func testMismatchedTypesAndBadArgumentsThrowInvalidArgument() throws {
        let errors = try runRanks(2) { comm -> [String] in
            var errors: [String] = []
            func record(_ body: () throws -> Void) {
                do { try body(); errors.append("no error") } catch { errors.append("\(error)") }
            }
            record {
                if comm.rank == 0 {
                    var floats: [Float] = [1]
                    try comm.allReduce(&floats, .sum)
                } else {
                    var doubles: [Double] = [1]
                    try comm.allReduce(&doubles, .sum)
                }
            }
            record {
                var values: [Int64] = [1]
                try comm.broadcast(&values, root: 2)
            }
            record {
                var receive = [UInt8](repeating: 0, count: 3)
                try [UInt8(1)].withUnsafeBufferPointer { send in
                    try receive.withUnsafeMutableBufferPointer { try comm.allGather(send, into: $0) }
                }
            }
            record {
                var values: [Float] = [1]
                try comm.allReduce(&values, comm.rank == 0 ? .max : .min)
            }
            return errors
        }
        for rankErrors in errors {
            XCTAssertEqual(rankErrors.count, 4)
            for error in rankErrors {
                XCTAssertTrue(error.hasPrefix("invalid collective"), error)
            }
        }
    }

    /// A rank that throws wakes its peers blocked in a collective, which throw `aborted`, and
    /// `run` rethrows the first error.
    func testThrowingRankWakesBlockedPeers() {
        let peerErrors = ErrorLog()
        let start = Date()
        XCTAssertThrowsError(try runRanks(4) { comm in
            if comm.rank == 2 {
                Thread.sleep(forTimeInterval: 0.05)  // let the peers block first
                throw Deliberate()
            }
            do {
                var buffer: [Float] = [1, 2]
                try comm.allReduce(&buffer, .sum)
            } catch {
                peerErrors.append(error)
                throw error
            }
        }) { error in
            XCTAssertEqual(error as? Deliberate, Deliberate())
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertEqual(peerErrors.errors.count, 3)
        for error in peerErrors.errors {
            guard case let .aborted(rank, message)? = error as? CommunicationError else {
                return XCTFail("unexpected peer error \(error)")
            }
            XCTAssertEqual(rank, 2)
            XCTAssertTrue(message.contains("Deliberate"), message)
        }
    }

    func testAbortWakesPeersAndIsRethrown() {
        XCTAssertThrowsError(try runRanks(3) { comm in
            if comm.rank == 1 { try comm.abort(message: "giving up", exitCode: 3) }
            try comm.barrier()
        }) { error in
            XCTAssertEqual(error as? CommunicationError, .aborted(rank: 1, message: "giving up"))
        }
    }

    /// A rank that returns while its peers wait in a collective ends the job with an error
    /// instead of a deadlock.
    func testRankReturningEarlyDoesNotDeadlock() {
        XCTAssertThrowsError(try runRanks(3) { comm in
            if comm.rank == 0 { return }
            try comm.barrier()
        }) { error in
            guard case let .invalidArgument(text)? = error as? CommunicationError else {
                return XCTFail("unexpected error \(error)")
            }
            XCTAssertTrue(text.contains("rank 0 returned"), text)
        }
    }

    /// Every rank writes its own segment (each of its own size); after
    /// ``SharedSegments/synchronize()`` every rank reads every segment, through its own mapping;
    /// then the ranks overwrite their segments again.
    func testSharedSegmentsAreSeenByEveryRankAfterSynchronize() throws {
        let size = 3, count = 1000
        let seen = try runRanks(size) { comm -> [Int64] in
            guard let segments = try comm.sharedSegments(byteCount: (count + comm.rank) * 8) else { return [] }
            XCTAssertEqual(segments.count, size)
            XCTAssertEqual(segments.byteCounts, (0 ..< size).map { (count + $0) * 8 })
            var sums: [Int64] = []
            for round in 0 ..< 2 {
                let mine = segments.segment(comm.rank, as: Int64.self)
                for i in mine.indices { mine[i] = Int64(1000 * comm.rank + i + 7 * round) }
                try segments.synchronize()
                sums += (0 ..< size).map { peer in segments.segment(peer, as: Int64.self).reduce(0, +) }
                try segments.synchronize()   // nobody reads past this point
            }
            return sums
        }
        var expected: [Int64] = []
        for round in 0 ..< 2 {
            for peer in 0 ..< size {
                var sum: Int64 = 0
                for i in 0 ..< count + peer { sum += Int64(1000 * peer + i + 7 * round) }
                expected.append(sum)
            }
        }
        XCTAssertEqual(seen, [[Int64]](repeating: expected, count: size))
    }

    /// Segments asked for on one rank while another calls a collective are a mismatch on both;
    /// one rank has no segments to share.
    func testSharedSegmentsAgainstAnotherCollectiveThrowOnEveryRank() throws {
        let messages = try runRanks(2) { comm -> String in
            do {
                if comm.rank == 0 {
                    _ = try comm.sharedSegments(byteCount: 8)
                } else {
                    var bytes = [UInt8](repeating: 0, count: 8)
                    try comm.allReduce(&bytes, .max)
                }
                return "no error"
            } catch let CommunicationError.invalidArgument(text) {
                return text
            }
        }
        for message in messages { XCTAssertTrue(message.contains("do not match"), message) }
        XCTAssertNil(try SingleProcessCommunicator().sharedSegments(byteCount: 64))
    }

    func testWorldSizeMustBePositive() {
        XCTAssertThrowsError(try runRanks(0) { _ in 0 })
    }

    func testSingleProcessCommunicatorIsIdentity() throws {
        let comm = SingleProcessCommunicator()
        XCTAssertEqual(try CollectivesFixture.run(on: comm, count: 4), CollectivesFixture.expected(size: 1, count: 4))
        XCTAssertThrowsError(try comm.abort(message: "stop", exitCode: 1))
    }

    func testFactoryGivesSingleProcessWithoutLauncher() throws {
        try XCTSkipIf(MPICommunicator.isLaunchedByMPI, "the tests themselves run under an MPI launcher")
        XCTAssertTrue(try makeCommunicator() is SingleProcessCommunicator)
    }
}

/// A counter shared by the ranks of a test. `@unchecked Sendable`: `count` is guarded by `lock`.
private final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0

    var value: Int { lock.withLock { count } }
    func increment() { lock.withLock { count += 1 } }
}

/// Errors collected from the ranks of a test. `@unchecked Sendable`: `stored` is guarded by `lock`.
private final class ErrorLog: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [any Error] = []

    var errors: [any Error] { lock.withLock { stored } }
    func append(_ error: any Error) { lock.withLock { stored.append(error) } }
}
