import Communication

/// The inputs and expected results of the `collectives` check, shared by the in-process tests
/// (``ThreadCommunicator``) and the `MPIHarness collectives` scenario (``MPICommunicator``).
///
/// Each rank fills its buffers from its rank with values chosen so that every result is exact
/// in any summation order: floating-point values are small multiples of 1/8, integer sums stay
/// in range (`UInt8` up to 4 ranks). Results are reported under keys `"<op>.<kind>"`, e.g.
/// `"sum.float32"`, `"broadcast.int64"` (root `size - 1`), `"allGather.uint8"`; and, on uneven
/// blocks (``blockCounts(size:count:)``), `"reduceScatter.<op>.<kind>"` (each rank's reduced
/// block, gathered back in place: the whole reduction) and `"allGatherBlocks.<kind>"` (each
/// rank's block of its own values, gathered in place).
public enum CollectivesFixture {
    /// The input buffer of `rank` for element type `Element`.
    public static func values<Element: CommunicableScalar>(_ type: Element.Type, rank: Int, count: Int) -> [Element] {
        (0 ..< count).map { i in
            switch Element.kind {
            case .float32, .float64:
                let x = Double(i) * 0.25 - Double(rank) * 1.5 + (i % 2 == 1 ? 0.125 : 0)
                return (Element.self == Float.self ? Float(x) as? Element : x as? Element) ?? .zero
            case .int64:
                let sign: Int64 = i % 2 == 0 ? 1 : -1
                return (Int64(rank) * 1_000_000_000_007 * sign + Int64(i)) as? Element ?? .zero
            case .uint8:
                return UInt8((rank * 37 + i * 11) % 64) as? Element ?? .zero
            }
        }
    }

    /// Runs every collective on every element type with `communicator` and returns the results.
    ///
    /// - Parameters:
    ///   - communicator: the communicator of this rank.
    ///   - count: the element count of each buffer.
    public static func run(on communicator: any Communicator, count: Int) throws -> [String: JSONValue] {
        var results: [String: JSONValue] = [:]
        try run(Float.self, on: communicator, count: count, into: &results)
        try run(Double.self, on: communicator, count: count, into: &results)
        try run(Int64.self, on: communicator, count: count, into: &results)
        try run(UInt8.self, on: communicator, count: count, into: &results)
        try communicator.barrier()
        results["barrier"] = .bool(true)
        return results
    }

    /// The results every rank of a world of `size` ranks must report.
    public static func expected(size: Int, count: Int) -> [String: JSONValue] {
        var results: [String: JSONValue] = [:]
        expected(Float.self, size: size, count: count, into: &results)
        expected(Double.self, size: size, count: count, into: &results)
        expected(Int64.self, size: size, count: count, into: &results)
        expected(UInt8.self, size: size, count: count, into: &results)
        results["barrier"] = .bool(true)
        return results
    }

    /// The blocks of the block collectives on `size` ranks: `count`, `count − 1`, … elements
    /// (never fewer than 0), so they are uneven and, from `count + 1` ranks on, some are empty.
    public static func blockCounts(size: Int, count: Int) -> [Int] {
        (0 ..< size).map { Swift.max(0, count - $0) }
    }

    private static func run<Element: CommunicableScalar>(_ type: Element.Type, on communicator: any Communicator,
                                                         count: Int, into results: inout [String: JSONValue]) throws {
        let rank = communicator.rank
        let counts = blockCounts(size: communicator.size, count: count), total = counts.reduce(0, +)
        let block = counts[..<rank].reduce(0, +) ..< counts[...rank].reduce(0, +)
        for op in ReductionOp.allCases {
            let send = values(Element.self, rank: rank, count: total)
            var mine = [Element](repeating: .zero, count: counts[rank])
            try send.withUnsafeBufferPointer { send in
                try mine.withUnsafeMutableBufferPointer { try communicator.reduceScatter(send, into: $0, counts: counts, op) }
            }
            var whole = [Element](repeating: .zero, count: total)
            whole.replaceSubrange(block, with: mine)
            try whole.withUnsafeMutableBufferPointer { try communicator.allGather($0, counts: counts) }
            results["reduceScatter.\(op).\(Element.kind)"] = JSONValue(whole)
        }
        var blocks = [Element](repeating: .zero, count: total)
        blocks.replaceSubrange(block, with: values(Element.self, rank: rank, count: counts[rank]))
        try blocks.withUnsafeMutableBufferPointer { try communicator.allGather($0, counts: counts) }
        results["allGatherBlocks.\(Element.kind)"] = JSONValue(blocks)
        for op in ReductionOp.allCases {
            var buffer = values(Element.self, rank: rank, count: count)
            try communicator.allReduce(&buffer, op)
            results["\(op).\(Element.kind)"] = JSONValue(buffer)
        }
        var broadcast = values(Element.self, rank: rank, count: count)
        try communicator.broadcast(&broadcast, root: communicator.size - 1)
        results["broadcast.\(Element.kind)"] = JSONValue(broadcast)
        let gathered = try communicator.allGather(values(Element.self, rank: rank, count: count))
        results["allGather.\(Element.kind)"] = JSONValue(gathered)
    }

    private static func expected<Element: CommunicableScalar>(_ type: Element.Type, size: Int, count: Int,
                                                              into results: inout [String: JSONValue]) {
        let inputs = (0 ..< size).map { values(Element.self, rank: $0, count: count) }
        for op in ReductionOp.allCases {
            results["\(op).\(Element.kind)"] = JSONValue(reduce(inputs, op))
        }
        results["broadcast.\(Element.kind)"] = JSONValue(inputs[size - 1])
        results["allGather.\(Element.kind)"] = JSONValue(inputs.flatMap { $0 })
        let counts = blockCounts(size: size, count: count), total = counts.reduce(0, +)
        let wholes = (0 ..< size).map { values(Element.self, rank: $0, count: total) }
        for op in ReductionOp.allCases {
            results["reduceScatter.\(op).\(Element.kind)"] = JSONValue(reduce(wholes, op))
        }
        results["allGatherBlocks.\(Element.kind)"] = JSONValue((0 ..< size).flatMap { values(Element.self, rank: $0, count: counts[$0]) })
    }

    /// The element-wise reduction of the ranks' `inputs` (all of one count) in rank order.
    private static func reduce<Element: CommunicableScalar>(_ inputs: [[Element]], _ op: ReductionOp) -> [Element] {
        (0 ..< (inputs.first?.count ?? 0)).map { i in
            inputs.dropFirst().reduce(inputs[0][i]) { partial, input in
                switch op {
                case .sum: return partial + input[i]
                case .max: return Swift.max(partial, input[i])
                case .min: return Swift.min(partial, input[i])
                }
            }
        }
    }
}
