/// The communicator of a job with one rank: every collective is the identity.
///
/// The single-process path runs exactly the code of the multi-process path, with the
/// collectives turned into no-ops.
public final class SingleProcessCommunicator: Communicator {
    public init() {}

    public var rank: Int { 0 }
    public var size: Int { 1 }

    public func allReduce<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       _ op: ReductionOp) throws {}

    public func broadcast<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       root: Int) throws {
        guard root == 0 else { throw CommunicationError.invalidArgument("broadcast root \(root) in a world of size 1") }
    }

    public func allGather<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                       into receive: UnsafeMutableBufferPointer<Element>) throws {
        guard receive.count == send.count else {
            throw CommunicationError.invalidArgument("allGather receives \(receive.count) elements, expected \(send.count)")
        }
        _ = receive.initialize(from: send)
    }

    public func reduceScatter<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                           into receive: UnsafeMutableBufferPointer<Element>,
                                                           counts: [Int], _ op: ReductionOp) throws {
        _ = try blockRanges(counts, size: 1, total: send.count, "reduceScatter")
        guard receive.count == send.count else {
            throw CommunicationError.invalidArgument("reduceScatter receives \(receive.count) elements, expected \(send.count)")
        }
        _ = receive.update(fromContentsOf: send)
    }

    public func allGather<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       counts: [Int]) throws {
        _ = try blockRanges(counts, size: 1, total: buffer.count, "allGather")
    }

    public func barrier() throws {}

    /// Nil: one rank has nobody to share with.
    public func sharedSegments(byteCount: Int) throws -> SharedSegments? { nil }

    public func abort(message: String, exitCode: Int32) throws -> Never {
        throw CommunicationError.aborted(rank: 0, message: message)
    }
}
