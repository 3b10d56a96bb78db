import Communication
import XCTest
import _TestSupport

/// `TimedCommunicator` forwards every collective unchanged and counts calls, bytes and time.
final class TimedCommunicatorTests: XCTestCase {
    func testForwardsCollectivesAndCountsThem() throws {
        let results = try runRanks(3) { base -> ([Double], [Int64], Int, Int, Bool) in
            let timed = TimedCommunicator(base)
            XCTAssertEqual(timed.rank, base.rank)
            XCTAssertEqual(timed.size, 3)
            var values = [Double(timed.rank + 1), 10]
            try timed.allReduce(&values, .sum)
            let gathered = try timed.allGather([Int64(timed.rank)])
            var broadcast = [Float(timed.rank)]
            try broadcast.withUnsafeMutableBufferPointer { try timed.broadcast($0, root: 2) }
            XCTAssertEqual(broadcast, [2])
            try timed.barrier()
            let counted = (timed.calls, timed.bytes, timed.seconds > 0)
            timed.reset()
            XCTAssertEqual(timed.calls, 0)
            XCTAssertEqual(timed.seconds, 0)
            return (values, gathered, counted.0, counted.1, counted.2)
        }
        // The segments' fence is timed like a barrier.
        let fences = try runRanks(2) { base -> Int in
            let timed = TimedCommunicator(base)
            let segments = try XCTUnwrap(timed.sharedSegments(byteCount: 8))
            timed.reset()
            try segments.synchronize()
            try segments.synchronize()
            return timed.calls
        }
        XCTAssertEqual(fences, [2, 2])
        for (values, gathered, calls, bytes, spent) in results {
            XCTAssertEqual(values, [6, 30])
            XCTAssertEqual(gathered, [0, 1, 2])
            XCTAssertEqual(calls, 4)
            XCTAssertEqual(bytes, 2 * 8 + 3 * 8 + 4)   // all-reduce, all-gather received, broadcast
            XCTAssertTrue(spent)
        }
    }
}
