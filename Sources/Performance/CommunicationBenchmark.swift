import Engine
import Communication
import Foundation
import Optimizers

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

        public init(bytes: Int, iterations: Int, meanMicroseconds: Double, minimumMicroseconds: Double,
                    algorithmBandwidth: Double, busBandwidth: Double) {
            self.bytes = bytes
            self.iterations = iterations
            self.meanMicroseconds = meanMicroseconds
            self.minimumMicroseconds = minimumMicroseconds
            self.algorithmBandwidth = algorithmBandwidth
            self.busBandwidth = busBandwidth
        }
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

    /// The all-reduce time model fitted to benchmark rows: `t(bytes) = α + 2(P−1)/P · bytes/β`.
    public struct AllReduceFit: Sendable, Codable, Equatable {
        /// α, the seconds of a call whatever its size (on two ranks: one message's latency).
        public var latency: Double
        /// β, the bus bandwidth in bytes a second: what each rank's link carries in a ring
        /// all-reduce, so that a call of `bytes` takes `α + 2(P−1)/P · bytes/β`.
        public var bandwidth: Double
        /// The world size of the rows.
        public var worldSize: Int
        /// The root-mean-square relative residual `(t_measured − t_model)/t_measured` over the rows.
        public var relativeResidual: Double

        public init(latency: Double, bandwidth: Double, worldSize: Int, relativeResidual: Double) {
            self.latency = latency
            self.bandwidth = bandwidth
            self.worldSize = worldSize
            self.relativeResidual = relativeResidual
        }

        /// The modelled seconds of an all-reduce of `bytes`.
        public func seconds(bytes: Int) -> Double {
            let p = Double(worldSize)
            return latency + 2 * (p - 1) / p * Double(bytes) / bandwidth
        }

        /// One line: α in µs, β in GB/s and the residual.
        public var summary: String {
            String(format: "fit t = α + 2(p−1)/p·bytes/β (least squares on relative error, mean times): "
                   + "α = %.2f µs, β = %.3f GB/s (bus), rms residual %.0f %%",
                   latency * 1e6, bandwidth / 1e9, relativeResidual * 100)
        }
    }

    /// Fits `t(bytes) = α + bytes/β_eff` to the rows' mean times and reports α and the bus
    /// bandwidth `β = 2(P−1)/P · β_eff`.
    ///
    /// The fit minimises the squared *relative* residuals, `Σ ((t_i − α − b_i/β_eff)/t_i)²`, so
    /// that the microsecond times of small messages weigh as much as the milliseconds of large
    /// ones (an absolute fit would leave α to the noise of the largest messages). When the best
    /// α would be negative it is taken as 0 and β_eff refitted alone.
    /// - Returns: nil on one rank (an all-reduce moves nothing, β is undefined), with fewer
    ///   than two distinct sizes, or when the times do not grow with the size.
    public static func fitAllReduce(_ rows: [AllReduceRow], worldSize: Int) -> AllReduceFit? {
        guard worldSize > 1, let line = fitLatencyAndSlope(rows) else { return nil }
        let p = Double(worldSize)
        return AllReduceFit(latency: line.latency, bandwidth: 2 * (p - 1) / p / line.slope, worldSize: worldSize,
                            relativeResidual: line.residual)
    }

    /// `t(bytes) = α + s·bytes` fitted to the rows' mean times by least squares on the relative
    /// residuals (α clamped at 0), with the rms relative residual; nil with fewer than two
    /// distinct sizes or when the times do not grow with the size.
    static func fitLatencyAndSlope(_ rows: [AllReduceRow]) -> (latency: Double, slope: Double, residual: Double)? {
        let points = rows.filter { $0.meanMicroseconds > 0 }.map { (x: Double($0.bytes), t: $0.meanMicroseconds * 1e-6) }
        guard Set(points.map(\.x)).count >= 2 else { return nil }
        // Residual r_i = 1 − α·u_i − s·x_i·u_i with u_i = 1/t_i: linear least squares in (α, s)
        // through the normal equations.
        var suu = 0.0, sxuu = 0.0, sxxuu = 0.0, su = 0.0, sxu = 0.0
        for (x, t) in points {
            let u = 1 / t
            suu += u * u; sxuu += x * u * u; sxxuu += x * x * u * u; su += u; sxu += x * u
        }
        let determinant = suu * sxxuu - sxuu * sxuu
        var latency = determinant != 0 ? (su * sxxuu - sxu * sxuu) / determinant : -1
        var slope = determinant != 0 ? (suu * sxu - sxuu * su) / determinant : 0
        if latency < 0 {
            latency = 0
            slope = sxu / sxxuu
        }
        guard slope > 0, slope.isFinite else { return nil }
        let residual = (points.reduce(0.0) { total, point in
            let r = (point.t - latency - slope * point.x) / point.t
            return total + r * r
        } / Double(points.count)).squareRoot()
        return (latency, slope, residual)
    }

    // MARK: Shared memory

    /// Times the sharded update's reduction through the node's shared memory
    /// (``ShardedOptimizerStep`` on one node): every rank's gradient of `bytes` lies in its
    /// segment; a call is a barrier, then this rank's sum of its `1/P` share from every segment
    /// (``ShardedOptimizerStep/sum(_:of:into:)``, the step's own, with the squared norm).
    /// Rows as ``allReduce(communicator:sizes:iterations:)``'s, but the bandwidth columns are
    /// the bytes a rank reads and writes, `(1 + 1/P)·bytes`, a second (both columns alike).
    /// - Returns: nil when the communicator has no shared segments (ranks on several nodes, or
    ///   one process).
    public static func sharedMemoryReduction(communicator: any Communicator, sizes: [Int], iterations: Int = 100) throws
        -> [AllReduceRow]? {
        precondition(iterations >= 1, "the benchmark needs at least one timed call")
        let largest = max(1, (sizes.max() ?? 0) / MemoryLayout<Float>.stride)
        guard communicator.size > 1,
              let segments = try communicator.sharedSegments(byteCount: largest * MemoryLayout<Float>.stride) else { return nil }
        let size = communicator.size, rank = communicator.rank
        let mine = segments.segment(rank, as: Float.self)
        for i in mine.indices { mine[i] = Float(i % 7) }
        var rows: [AllReduceRow] = []
        for bytesAsked in sizes {
            let count = max(1, bytesAsked / MemoryLayout<Float>.stride), bytes = count * MemoryLayout<Float>.stride
            let share = count * rank / size ..< count * (rank + 1) / size
            var sum = [Float](repeating: 0, count: share.count)
            let timed = allReduceIterations(bytes: bytes, iterations: iterations)
            var seconds: [Double] = []
            try segments.synchronize()
            try sum.withUnsafeMutableBufferPointer { out in
                for call in 0..<(max(1, timed / 10) + timed) {
                    let start = DispatchTime.now().uptimeNanoseconds
                    try segments.synchronize()
                    _ = ShardedOptimizerStep<Float>.sum(share, of: segments, into: out)
                    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                    if call >= max(1, timed / 10) { seconds.append(elapsed) }
                }
            }
            try segments.synchronize()
            var slowest = [seconds.reduce(0, +) / Double(timed), seconds.min() ?? 0]
            try communicator.allReduce(&slowest, .max)
            let moved = Double(bytes) * (1 + 1 / Double(size)) / max(slowest[0], 1e-12) / 1e9
            rows.append(AllReduceRow(bytes: bytes, iterations: timed, meanMicroseconds: slowest[0] * 1e6,
                                     minimumMicroseconds: slowest[1] * 1e6, algorithmBandwidth: moved, busBandwidth: moved))
        }
        return rows
    }

    /// The fit `t = α + (1 + 1/P)·bytes/β_mem` of ``sharedMemoryReduction(communicator:sizes:iterations:)``'s
    /// rows: α the barrier, β_mem the bytes a rank reads and writes a second (what
    /// `bench scaling --memory-gbs` takes).
    public static func fitSharedMemoryReduction(_ rows: [AllReduceRow], worldSize: Int)
        -> (latency: Double, bandwidth: Double, residual: Double)? {
        guard worldSize > 1, let line = fitLatencyAndSlope(rows) else { return nil }
        return (line.latency, (1 + 1 / Double(worldSize)) / line.slope, line.residual)
    }

    /// What `anticollapse bench comm --json` prints: the rows and their fit.
    public struct AllReduceReport: Sendable, Codable, Equatable {
        public var worldSize: Int
        public var rows: [AllReduceRow]
        /// nil on one rank (see ``fitAllReduce(_:worldSize:)``).
        public var fit: AllReduceFit?

        public init(worldSize: Int, rows: [AllReduceRow]) {
            self.worldSize = worldSize
            self.rows = rows
            fit = Benchmarks.fitAllReduce(rows, worldSize: worldSize)
        }

        /// The table, then the fit (or why there is none).
        public var table: String {
            Benchmarks.allReduceTable(rows, worldSize: worldSize) + "\n# "
                + (fit?.summary ?? "no fit: it needs at least 2 ranks and 2 message sizes whose times grow with the size")
        }
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

    /// ``sharedMemoryReduction(communicator:sizes:iterations:)``'s rows as a table, then their fit;
    /// or why there are none.
    public static func sharedMemoryTable(_ rows: [AllReduceRow]?, worldSize: Int) -> String {
        guard let rows else { return "# shared memory: none (one process, or ranks on several nodes)" }
        var lines = ["# sharded reduction through shared memory on \(worldSize) ranks: a barrier + this rank's sum of its share; "
                        + "GB/s = (1 + 1/P)·bytes read and written a second",
                     [("bytes", 12), ("iters", 8), ("mean µs", 12), ("min µs", 12), ("GB/s", 10)]
                        .map { String(repeating: " ", count: max(0, $0.1 - $0.0.count)) + $0.0 }.joined(separator: " ")]
        for row in rows {
            lines.append(String(format: "%12d %8d %12.2f %12.2f %10.3f", row.bytes, row.iterations,
                                row.meanMicroseconds, row.minimumMicroseconds, row.algorithmBandwidth))
        }
        if let fit = fitSharedMemoryReduction(rows, worldSize: worldSize) {
            lines.append(String(format: "# fit t = α + (1 + 1/p)·bytes/β_mem: α = %.2f µs, β_mem = %.2f GB/s, rms residual %.0f %%",
                                fit.latency * 1e6, fit.bandwidth / 1e9, fit.residual * 100))
        }
        return lines.joined(separator: "\n")
    }
}
