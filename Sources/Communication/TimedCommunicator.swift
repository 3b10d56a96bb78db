import Foundation

/// A communicator that forwards every collective to another and adds up the wall time spent
/// in them: what `anticollapse bench step` reports as the time of a step spent communicating.
///
/// The time of a collective includes waiting for the slowest rank to arrive, as in any MPI
/// profile. A `TimedCommunicator` belongs to one rank and is used from one thread at a time
/// (as every communicator of a rank is); ``reset()`` starts a new count.
public final class TimedCommunicator: Communicator, @unchecked Sendable {
    /// The communicator that does the work.
    public let base: any Communicator
    /// Seconds spent in collectives (barriers included) since construction or ``reset()``.
    public private(set) var seconds = 0.0
    /// Collective calls since construction or ``reset()``.
    public private(set) var calls = 0
    /// Bytes handed to all-reduces, reduce-scatters and broadcasts, and received by all-gathers,
    /// since construction or ``reset()``.
    public private(set) var bytes = 0

    public init(_ base: any Communicator) { self.base = base }

    public var rank: Int { base.rank }
    public var size: Int { base.size }

    /// Starts a new count.
    public func reset() {
        seconds = 0
        calls = 0
        bytes = 0
    }

    private func timed<T>(bytes count: Int, _ body: () throws -> T) rethrows -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            seconds += Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            calls += 1
            bytes += count
        }
        return try body()
    }

    public func allReduce<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       _ op: ReductionOp) throws {
        try timed(bytes: buffer.count * MemoryLayout<Element>.stride) { try base.allReduce(buffer, op) }
    }

    public func broadcast<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       root: Int) throws {
        try timed(bytes: buffer.count * MemoryLayout<Element>.stride) { try base.broadcast(buffer, root: root) }
    }

    public func allGather<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                       into receive: UnsafeMutableBufferPointer<Element>) throws {
        try timed(bytes: receive.count * MemoryLayout<Element>.stride) { try base.allGather(send, into: receive) }
    }

    public func reduceScatter<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                           into receive: UnsafeMutableBufferPointer<Element>,
                                                           counts: [Int], _ op: ReductionOp) throws {
        try timed(bytes: send.count * MemoryLayout<Element>.stride) {
            try base.reduceScatter(send, into: receive, counts: counts, op)
        }
    }

    public func allGather<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       counts: [Int]) throws {
        try timed(bytes: buffer.count * MemoryLayout<Element>.stride) { try base.allGather(buffer, counts: counts) }
    }

    public func barrier() throws {
        try timed(bytes: 0) { try base.barrier() }
    }

    /// The base's segments, whose ``SharedSegments/synchronize()`` is timed as a barrier.
    public func sharedSegments(byteCount: Int) throws -> SharedSegments? {
        try timed(bytes: 0) { try base.sharedSegments(byteCount: byteCount) }.map { segments in
            segments.withFence { [unowned self] in try self.timed(bytes: 0) { try segments.synchronize() } }
        }
    }

    public func abort(message: String, exitCode: Int32) throws -> Never {
        try base.abort(message: message, exitCode: exitCode)
    }
}
