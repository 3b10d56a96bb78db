/// Collective communication between the ranks of a data-parallel job.
///
/// Vocabulary used throughout AntiCollapse:
/// - *rank*: the index of a worker process (or in-process worker thread), `0 ..< size`.
/// - *world size*: the number of ranks, `size`.
/// - *global batch*: the rows of one optimisation step, split into contiguous per-rank parts;
///   every statistic and gradient is that of the global batch, whatever the world size.
///
/// Three implementations share this protocol: ``SingleProcessCommunicator`` (every collective
/// is the identity), ``MPICommunicator`` (`MPI_COMM_WORLD`) and ``ThreadCommunicator``
/// (N ranks on threads of one process, so XCTest can run a 4-rank job).
///
/// Collectives are blocking and must be called by every rank in the same order with the same
/// element counts. The result of a reduction is identical on every rank.
public protocol Communicator: AnyObject, Sendable {
    /// This worker's index, `0 ..< size`.
    var rank: Int { get }
    /// The world size.
    var size: Int { get }

    /// Reduces `buffer` element-wise over all ranks in place; every rank receives the result.
    func allReduce<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                _ op: ReductionOp) throws
    /// Copies `buffer` of rank `root` into `buffer` of every other rank.
    func broadcast<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                root: Int) throws
    /// Concatenates every rank's `send` (all of the same count) in rank order into `receive`,
    /// whose count must be `size * send.count`.
    func allGather<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                into receive: UnsafeMutableBufferPointer<Element>) throws
    /// Reduces `send` element-wise over all ranks (the same count on every rank) and writes this
    /// rank's block of the result into `receive`: the blocks are consecutive in rank order,
    /// block `r` of `counts[r]` elements (so `counts` sums to `send.count` and `receive.count` is
    /// `counts[rank]`). An all-reduce is a reduce-scatter followed by ``allGather(_:counts:)``;
    /// the sharded optimizer step keeps the two halves apart and updates its block between them.
    func reduceScatter<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                    into receive: UnsafeMutableBufferPointer<Element>,
                                                    counts: [Int], _ op: ReductionOp) throws
    /// Gathers in place: on entry block `rank` of `buffer` (consecutive blocks in rank order,
    /// block `r` of `counts[r]` elements, summing to `buffer.count`) holds this rank's part; on
    /// return every block holds its rank's part, on every rank.
    func allGather<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>, counts: [Int]) throws
    /// Blocks until every rank has called it.
    func barrier() throws
    /// Maps a segment of `byteCount` bytes for this rank (each rank asks for its own size) that
    /// every rank reads and writes directly (see ``SharedSegments``), or returns nil when the
    /// ranks share no memory (they span several nodes) or the implementation offers none. A
    /// collective: every rank calls it, and either every rank gets segments or every rank nil.
    func sharedSegments(byteCount: Int) throws -> SharedSegments?
    /// Ends the whole job with `message`. `MPICommunicator` calls `MPI_Abort` and never returns;
    /// the in-process implementations wake every waiting rank with an error and throw.
    func abort(message: String, exitCode: Int32) throws -> Never
}

/// The element-wise operation of a reduction.
public enum ReductionOp: String, Sendable, CaseIterable {
    case sum, max, min
}

/// The element types that collectives carry.
public enum ScalarKind: Sendable {
    case float32, float64, int64, uint8
}

/// A scalar type that collectives can carry.
public protocol CommunicableScalar: Numeric, Comparable, Sendable {
    static var kind: ScalarKind { get }
}

extension Float: CommunicableScalar { public static var kind: ScalarKind { .float32 } }
extension Double: CommunicableScalar { public static var kind: ScalarKind { .float64 } }
extension Int64: CommunicableScalar { public static var kind: ScalarKind { .int64 } }
extension UInt8: CommunicableScalar { public static var kind: ScalarKind { .uint8 } }

/// The element range of each rank's block when `counts` (one a rank, in rank order) cut a
/// buffer into consecutive blocks; checks that `counts` has one non-negative count a rank and
/// sums to `total`.
func blockRanges(_ counts: [Int], size: Int, total: Int, _ collective: String) throws -> [Range<Int>] {
    guard counts.count == size, counts.allSatisfy({ $0 >= 0 }), counts.reduce(0, +) == total else {
        throw CommunicationError.invalidArgument(
            "\(collective): block counts \(counts) must be \(size) non-negative counts summing to \(total)")
    }
    var start = 0
    return counts.map { count in
        defer { start += count }
        return start ..< start + count
    }
}

/// An error raised by a collective.
public enum CommunicationError: Error, CustomStringConvertible, Equatable {
    /// An MPI call returned `code`; `message` is MPI's own text for it.
    case mpi(call: String, code: Int32, message: String)
    /// Rank `rank` aborted the job with `message`.
    case aborted(rank: Int, message: String)
    /// The arguments of a collective do not fit (counts, root).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case let .mpi(call, code, message): return "\(call) failed (error \(code)): \(message)"
        case let .aborted(rank, message): return "rank \(rank) aborted the job: \(message)"
        case let .invalidArgument(text): return "invalid collective: \(text)"
        }
    }
}

// MARK: - Conveniences on Swift arrays

extension Communicator {
    /// Reduces an array in place over all ranks.
    public func allReduce<Element: CommunicableScalar>(_ array: inout [Element], _ op: ReductionOp = .sum) throws {
        try array.withUnsafeMutableBufferPointer { try allReduce($0, op) }
    }

    /// Broadcasts an array (of the same count on every rank) from `root`.
    public func broadcast<Element: CommunicableScalar>(_ array: inout [Element], root: Int = 0) throws {
        try array.withUnsafeMutableBufferPointer { try broadcast($0, root: root) }
    }

    /// Gathers every rank's array (all of the same count) in rank order.
    public func allGather<Element: CommunicableScalar>(_ array: [Element]) throws -> [Element] {
        var result = [Element](repeating: .zero, count: array.count * size)
        try array.withUnsafeBufferPointer { send in
            try result.withUnsafeMutableBufferPointer { try allGather(send, into: $0) }
        }
        return result
    }

    /// Reduces one scalar over all ranks.
    public func allReduce<Element: CommunicableScalar>(_ value: Element, _ op: ReductionOp = .sum) throws -> Element {
        var buffer = [value]
        try allReduce(&buffer, op)
        return buffer[0]
    }

    /// Whether this is rank 0, the rank that prints and writes files.
    public var isRoot: Bool { rank == 0 }

    /// Broadcasts `text` from `root` (its value elsewhere is ignored) and returns it on every rank.
    public func broadcast(text: String, root: Int = 0) throws -> String {
        var count = [Int64(rank == root ? text.utf8.count : 0)]
        try broadcast(&count, root: root)
        var bytes = rank == root ? Array(text.utf8) : [UInt8](repeating: 0, count: Int(count[0]))
        try broadcast(&bytes, root: root)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Runs `body` on this rank and makes a failure on any rank every rank's: if `body` throws
    /// anywhere, every rank throws — the lowest failing rank's own error there, and a
    /// ``CollectiveFailure`` carrying that rank's message on the others — so no rank goes on
    /// to wait in a collective its peers never reach. Every rank must call it.
    public func together<T>(_ body: () throws -> T) throws -> T {
        var result: Result<T, any Error>
        do { result = .success(try body()) } catch { result = .failure(error) }
        var failed = [Int64(size)]
        if case .failure = result { failed[0] = Int64(rank) }
        try allReduce(&failed, .min)
        guard failed[0] < Int64(size) else { return try result.get() }
        let failing = Int(failed[0])
        var message = ""
        if case let .failure(error) = result { message = "\(error)" }
        message = try broadcast(text: message, root: failing)
        if rank == failing, case let .failure(error) = result { throw error }
        throw CollectiveFailure(rank: failing, message: message)
    }
}

/// Another rank's failure, seen by a rank whose own part succeeded (see
/// ``Communicator/together(_:)``).
public struct CollectiveFailure: Error, CustomStringConvertible, Equatable {
    public let rank: Int
    public let message: String
    public init(rank: Int, message: String) { self.rank = rank; self.message = message }
    public var description: String { message }
}
