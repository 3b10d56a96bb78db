import Communication
import Foundation

extension Benchmarks {
    // MARK: All-reduce

    /// One message size of the all-reduce benchmark, as `osu_allreduce` reports it.
    public struct AllReduceRow: Sendable, Codable, Equatable {
        /// Message size in bytes (`Float` elements × 4).
        public var bytes: Int
        /// Timed calls, after untimed warm-up calls.
        public var iterations: Int
        /// Mean and minimum microseconds a call; each is the largest over the ranks (the job
        /// waits for its slowest rank).
        public var meanMicroseconds: Double, minimumMicroseconds: Double
        /// Algorithm bandwidth, `bytes / mean time`, in GB/s (10⁹ bytes).
        public var algorithmBandwidth: Double
        /// Bus bandwidth, `2(p−1)/p · bytes / mean time`, in GB/s: what each rank's link carries
        /// in a ring all-reduce, comparable across world sizes (NCCL-tests' `busbw`).
        public var busBandwidth: Double
    }

    /// Message sizes from `minimum` to `maximum` bytes, doubling (`maximum` included when it is
    /// `minimum` times a power of two).
    public static func doublingSizes(from minimum: Int, to maximum: Int) -> [Int] {
        precondition(minimum > 0, "the smallest message must have a positive size")
        return Array(sequence(first: minimum) { $0 <= maximum / 2 ? $0 * 2 : nil }.prefix { $0 <= maximum })
    }

    /// The timed calls for a message of `bytes`: `iterations` up to 1 MiB, a tenth (at least 5)
    /// above, like `osu_allreduce`'s separate large-message count.
    public static func allReduceIterations(bytes: Int, iterations: Int) -> Int {
        bytes > 1 << 20 ? max(5, iterations / 10) : iterations
    }

    /// Times `allReduce(.sum)` of `Float` buffers of each size in `sizes` bytes.
    ///
    /// For each size: a barrier, a tenth of the timed calls (at least one) untimed, then each
    /// timed call on its own clock. Every rank must call it with the same arguments; each rank
    /// returns the same rows (times reduced with `max` over the ranks).
    /// - Parameters:
    ///   - communicator: the job's ranks (a single process gives the cost of the identity).
    ///   - sizes: message sizes in bytes, rounded down to whole `Float`s (at least one).
    ///   - iterations: timed calls for sizes up to 1 MiB (see ``allReduceIterations(bytes:iterations:)``).
    public static func allReduce(communicator: any Communicator, sizes: [Int], iterations: Int = 100) throws
        -> [AllReduceRow] {
        precondition(iterations >= 1, "the all-reduce benchmark needs at least one timed call")
        let ranks = Double(communicator.size)
        var rows: [AllReduceRow] = []
        for size in sizes {
            let count = max(1, size / MemoryLayout<Float>.stride), bytes = count * MemoryLayout<Float>.stride
            // Zeros stay zeros however many sums (ones would overflow to infinity on many ranks).
            var buffer = [Float](repeating: 0, count: count)
            let timed = allReduceIterations(bytes: bytes, iterations: iterations)
            var seconds: [Double] = []
            seconds.reserveCapacity(timed)
            try communicator.barrier()
            try buffer.withUnsafeMutableBufferPointer { pointer in
                for call in 0..<(max(1, timed / 10) + timed) {
                    let start = DispatchTime.now().uptimeNanoseconds
                    try communicator.allReduce(pointer, .sum)
                    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                    if call >= max(1, timed / 10) { seconds.append(elapsed) }
                }
            }
            var slowest = [seconds.reduce(0, +) / Double(timed), seconds.min() ?? 0]
            try communicator.allReduce(&slowest, .max)
            let mean = max(slowest[0], 1e-12)
            let algorithm = Double(bytes) / mean / 1e9
            rows.append(AllReduceRow(bytes: bytes, iterations: timed, meanMicroseconds: slowest[0] * 1e6,
                                     minimumMicroseconds: slowest[1] * 1e6, algorithmBandwidth: algorithm,
                                     busBandwidth: 2 * (ranks - 1) / ranks * algorithm))
        }
        return rows
    }

    /// The rows as an aligned table with a header, like `osu_allreduce`'s.
    public static func allReduceTable(_ rows: [AllReduceRow], worldSize: Int) -> String {
        var lines = ["# all-reduce (sum, Float) on \(worldSize) rank(s); times are the slowest rank's",
                     [("bytes", 12), ("iters", 8), ("mean µs", 12), ("min µs", 12), ("algbw GB/s", 10), ("busbw GB/s", 10)]
                        .map { String(repeating: " ", count: max(0, $0.1 - $0.0.count)) + $0.0 }.joined(separator: " ")]
        for row in rows {
            lines.append(String(format: "%12d %8d %12.2f %12.2f %10.3f %10.3f", row.bytes, row.iterations,
                                row.meanMicroseconds, row.minimumMicroseconds, row.algorithmBandwidth, row.busBandwidth))
        }
        return lines.joined(separator: "\n")
    }
}
