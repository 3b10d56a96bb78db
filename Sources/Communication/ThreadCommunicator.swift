import Foundation

/// A communicator whose ranks are threads of one process, so a test can run a 4-rank job.
///
/// ``run(worldSize:_:)`` starts one thread per rank, hands each its communicator and returns the
/// results in rank order. The collectives meet the guarantees of ``MPICommunicator``'s and more:
/// a reduction combines the ranks' buffers in rank order `0, 1, …, N-1`, identically on every
/// rank, so its result is deterministic and bitwise identical everywhere.
///
/// Each collective works in two phases separated by a generation-counted barrier: every rank
/// deposits a description of its buffer (address, count, kind, operation, root); after the barrier
/// each rank checks that the descriptions agree (else every rank throws
/// ``CommunicationError/invalidArgument(_:)``) and reads the peers' buffers into private scratch
/// memory; after a second barrier, when nobody reads any more, it writes its own buffer.
///
/// When a rank throws or calls ``abort(message:exitCode:)``, or returns while its peers still wait
/// in a collective, the group is aborted: every rank blocked in (or later entering) a collective
/// wakes and throws ``CommunicationError/aborted(rank:message:)``, so a failing test never deadlocks.
public final class ThreadCommunicator: Communicator {
    public let rank: Int
    public var size: Int { group.size }

    private let group: ThreadGroup

    private init(rank: Int, group: ThreadGroup) {
        self.rank = rank
        self.group = group
    }

    /// Runs `body` on `worldSize` threads, each with the communicator of its rank, and returns
    /// the results in rank order.
    ///
    /// - Parameters:
    ///   - worldSize: the number of ranks (threads), at least 1.
    ///   - stackSize: the stack of each rank's thread in bytes; 8 MiB by default, like a main thread.
    ///   - body: the work of one rank. It is called concurrently on every rank's thread.
    /// - Returns: the values returned by ranks `0 ..< worldSize`.
    /// - Throws: the first error thrown by any rank (the errors it caused in its peers are dropped);
    ///   ``CommunicationError/invalidArgument(_:)`` if `worldSize < 1`.
    public static func run<Value: Sendable>(worldSize: Int, stackSize: Int = 8 << 20,
                                            _ body: @escaping @Sendable (ThreadCommunicator) throws -> Value)
        throws -> [Value] {
        guard worldSize >= 1 else {
            throw CommunicationError.invalidArgument("worldSize \(worldSize) must be at least 1")
        }
        let group = ThreadGroup(size: worldSize)
        let results = ResultSlots<Value>(count: worldSize)
        for rank in 0 ..< worldSize {
            let communicator = ThreadCommunicator(rank: rank, group: group)
            let thread = Thread {
                do {
                    results.store(.success(try body(communicator)), rank: rank)
                    group.rankFinished(rank)
                } catch {
                    group.fail(rank: rank, error: error)
                    results.store(.failure(error), rank: rank)
                }
            }
            thread.name = "ThreadCommunicator rank \(rank)"
            thread.stackSize = stackSize
            thread.start()
        }
        results.waitForAll()
        if let error = group.firstError { throw error }
        return try results.values()
    }

    // MARK: Collectives

    public func allReduce<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       _ op: ReductionOp) throws {
        let mine = Deposit(operation: "allReduce(\(op))", kind: Element.kind, count: buffer.count,
                           address: UnsafeRawPointer(buffer.baseAddress))
        let deposits = try group.exchange(mine, rank: rank)
        let failure = agreement(of: deposits, with: mine)
        let scratch: [Element] = failure == nil ? reduced(deposits, 0 ..< buffer.count, op) : []
        try group.barrier(rank: rank)  // nobody reads a peer's buffer past this point
        if let failure { throw failure }
        _ = buffer.update(fromContentsOf: scratch)
    }

    public func broadcast<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       root: Int) throws {
        let mine = Deposit(operation: "broadcast(root: \(root))", kind: Element.kind, count: buffer.count,
                           address: UnsafeRawPointer(buffer.baseAddress))
        let deposits = try group.exchange(mine, rank: rank)
        var failure = agreement(of: deposits, with: mine)
        if failure == nil, !(0 ..< size).contains(root) {
            failure = .invalidArgument("broadcast root \(root) is not a rank of a world of size \(size)")
        }
        if failure == nil, rank != root, buffer.count > 0 {
            // Writing our own buffer is safe now: only the root's buffer is read by the peers.
            _ = buffer.update(fromContentsOf: peerBuffer(deposits[root], as: Element.self))
        }
        try group.barrier(rank: rank)  // the root's buffer may change again past this point
        if let failure { throw failure }
    }

    public func allGather<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                       into receive: UnsafeMutableBufferPointer<Element>) throws {
        let mine = Deposit(operation: "allGather", kind: Element.kind, count: send.count,
                           address: UnsafeRawPointer(send.baseAddress))
        let deposits = try group.exchange(mine, rank: rank)
        var failure = agreement(of: deposits, with: mine)
        if failure == nil, receive.count != send.count * size {
            // Checked after the exchange so that every rank passes the same barriers.
            failure = .invalidArgument("allGather on rank \(rank) receives \(receive.count) elements, "
                                           + "expected \(size) × \(send.count)")
        }
        if failure == nil, send.count > 0 {
            for source in 0 ..< size {
                let slot = UnsafeMutableBufferPointer(rebasing: receive[source * send.count ..< (source + 1) * send.count])
                _ = slot.update(fromContentsOf: peerBuffer(deposits[source], as: Element.self))
            }
        }
        try group.barrier(rank: rank)  // the peers' send buffers may change again past this point
        if let failure { throw failure }
    }

    /// Reduces block `rank` of every rank's `send` in rank order `0, 1, …, N-1`, as
    /// ``allReduce(_:_:)`` does: the block is bitwise that of an all-reduce.
    public func reduceScatter<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                           into receive: UnsafeMutableBufferPointer<Element>,
                                                           counts: [Int], _ op: ReductionOp) throws {
        let mine = Deposit(operation: "reduceScatter(\(op), \(counts))", kind: Element.kind, count: send.count,
                           address: UnsafeRawPointer(send.baseAddress))
        let deposits = try group.exchange(mine, rank: rank)
        var failure = agreement(of: deposits, with: mine)
        var block = 0 ..< 0
        if failure == nil {
            do {
                block = try blockRanges(counts, size: size, total: send.count, "reduceScatter")[rank]
                if receive.count != block.count {
                    failure = .invalidArgument("reduceScatter on rank \(rank) receives \(receive.count) elements, "
                                                   + "expected \(block.count)")
                }
            } catch let error as CommunicationError {
                failure = error
            }
        }
        let scratch: [Element] = failure == nil ? reduced(deposits, block, op) : []
        try group.barrier(rank: rank)  // nobody reads a peer's buffer past this point
        if let failure { throw failure }
        _ = receive.update(fromContentsOf: scratch)
    }

    /// Elements `range` of every rank's deposited buffer, reduced in rank order `0, 1, …, N-1`
    /// (so a reduce-scatter's block is bitwise that block of an all-reduce).
    private func reduced<Element: CommunicableScalar>(_ deposits: [Deposit], _ range: Range<Int>,
                                                      _ op: ReductionOp) -> [Element] {
        var scratch = [Element](repeating: .zero, count: range.count)
        guard !range.isEmpty else { return scratch }
        scratch.withUnsafeMutableBufferPointer { scratch in
            for source in 0 ..< deposits.count {
                let peer = UnsafeBufferPointer(rebasing: peerBuffer(deposits[source], as: Element.self)[range])
                if source == 0 {
                    _ = scratch.update(fromContentsOf: peer)
                } else {
                    combine(into: scratch, peer, op)
                }
            }
        }
        return scratch
    }

    /// Copies block `r` of rank `r`'s buffer into every other rank's: each rank writes only the
    /// blocks of the others into its own buffer, and its peers read only its own block there.
    public func allGather<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       counts: [Int]) throws {
        let mine = Deposit(operation: "allGather(\(counts))", kind: Element.kind, count: buffer.count,
                           address: UnsafeRawPointer(buffer.baseAddress))
        let deposits = try group.exchange(mine, rank: rank)
        var failure = agreement(of: deposits, with: mine)
        var blocks: [Range<Int>] = []
        if failure == nil {
            do {
                blocks = try blockRanges(counts, size: size, total: buffer.count, "allGather")
            } catch let error as CommunicationError {
                failure = error
            }
        }
        if failure == nil {
            for (source, block) in blocks.enumerated() where source != rank && !block.isEmpty {
                let peer = UnsafeBufferPointer(rebasing: peerBuffer(deposits[source], as: Element.self)[block])
                _ = UnsafeMutableBufferPointer(rebasing: buffer[block]).update(fromContentsOf: peer)
            }
        }
        try group.barrier(rank: rank)  // the peers' blocks may change again past this point
        if let failure { throw failure }
    }

    public func barrier() throws {
        try group.barrier(rank: rank)
    }

    /// Segments of plain memory, one allocated by each rank; ``SharedSegments/synchronize()`` is
    /// the group's barrier, whose lock hand-off orders the memory.
    public func sharedSegments(byteCount: Int) throws -> SharedSegments? {
        let allocation = SharedAllocation(byteCount: byteCount)
        // Each rank's allocation lives until the second barrier; its peers take a reference before.
        let (owners, failure) = try withExtendedLifetime(allocation) {
            let mine = Deposit(operation: "sharedSegments", kind: .uint8, count: byteCount,
                               address: UnsafeRawPointer(Unmanaged.passUnretained(allocation).toOpaque()))
            let deposits = try group.exchange(mine, rank: rank)
            let failure = agreement(of: deposits, with: mine, comparingCounts: false)   // the sizes may differ
            let owners = failure == nil
                ? deposits.map { Unmanaged<SharedAllocation>.fromOpaque($0.address!).takeUnretainedValue() } : []
            try group.barrier(rank: rank)
            return (zip(owners, deposits.map(\.count)).map { $0 }, failure)
        }
        if let failure { throw failure }
        return SharedSegments(byteCounts: owners.map(\.1), bases: owners.map(\.0.base), owners: owners.map(\.0)) { [group, rank] in
            try group.barrier(rank: rank)
        }
    }

    /// Marks the group aborted, which wakes every rank waiting in a collective, and throws
    /// ``CommunicationError/aborted(rank:message:)``. `exitCode` is ignored: the process goes on.
    public func abort(message: String, exitCode: Int32) throws -> Never {
        let error = CommunicationError.aborted(rank: rank, message: message)
        group.fail(rank: rank, error: error)
        throw error
    }

    // MARK: Helpers

    /// The error every rank throws when the deposits of a collective disagree, or nil.
    ///
    /// Every rank sees the same deposits, so either all ranks fail or none does.
    /// - Parameter comparingCounts: false where each rank may bring its own count.
    private func agreement(of deposits: [Deposit], with mine: Deposit, comparingCounts: Bool = true) -> CommunicationError? {
        for (peer, deposit) in deposits.enumerated()
        where deposit.operation != mine.operation || deposit.kind != mine.kind
            || (comparingCounts && deposit.count != mine.count) {
            let describe = { (rank: Int, d: Deposit) in "rank \(rank) called \(d.operation) on \(d.count) \(d.kind)" }
            return .invalidArgument("collectives do not match: \(describe(0, deposits[0])), \(describe(peer, deposit))")
        }
        return nil
    }

    private func peerBuffer<Element>(_ deposit: Deposit, as type: Element.Type) -> UnsafeBufferPointer<Element> {
        UnsafeBufferPointer(start: deposit.address?.assumingMemoryBound(to: Element.self), count: deposit.count)
    }
}

// MARK: - Element-wise combination

/// Combines `source` into `target` element-wise; integer sums wrap around like MPI's.
private func combine<Element: CommunicableScalar>(into target: UnsafeMutableBufferPointer<Element>,
                                                  _ source: UnsafeBufferPointer<Element>, _ op: ReductionOp) {
    switch op {
    case .max:
        for i in target.indices where source[i] > target[i] { target[i] = source[i] }
    case .min:
        for i in target.indices where source[i] < target[i] { target[i] = source[i] }
    case .sum:
        switch Element.kind {
        case .int64: wrappingSum(into: target, source, as: Int64.self)
        case .uint8: wrappingSum(into: target, source, as: UInt8.self)
        case .float32, .float64: for i in target.indices { target[i] += source[i] }
        }
    }
}

/// Adds `source` into `target` with wrap-around, viewing both as `Integer` (which `Element` is).
private func wrappingSum<Element, Integer: FixedWidthInteger>(into target: UnsafeMutableBufferPointer<Element>,
                                                              _ source: UnsafeBufferPointer<Element>,
                                                              as _: Integer.Type) {
    target.withMemoryRebound(to: Integer.self) { target in
        source.withMemoryRebound(to: Integer.self) { source in
            for i in target.indices { target[i] &+= source[i] }
        }
    }
}

// MARK: - Shared state of a group

/// What a rank contributes to a collective: the description of its buffer.
private struct Deposit: @unchecked Sendable {
    // @unchecked: `address` is only read between the two barriers of a collective, while its
    // owner keeps the buffer alive and unchanged.
    var operation: String
    var kind: ScalarKind
    var count: Int
    var address: UnsafeRawPointer?
}

/// The rendezvous of the ranks of one ``ThreadCommunicator/run(worldSize:stackSize:_:)``.
///
/// `@unchecked Sendable`: every mutable property is read and written only while `condition` is
/// locked, and the barrier's lock hand-off orders the reads of the peers' buffers after their deposits.
private final class ThreadGroup: @unchecked Sendable {
    let size: Int

    private let condition = NSCondition()
    private var generation = 0
    private var arrived = 0
    private var deposits: [Deposit?]
    private var finishedRank: Int?
    private var abortError: CommunicationError?
    private var recordedError: (any Error)?

    init(size: Int) {
        self.size = size
        deposits = Array(repeating: nil, count: size)
    }

    /// The error that aborted the group first, if any.
    var firstError: (any Error)? {
        condition.lock()
        defer { condition.unlock() }
        return recordedError
    }

    /// Records `error` of `rank` (unless an earlier failure is recorded) and wakes every waiting rank.
    func fail(rank: Int, error: any Error) {
        condition.lock()
        defer { condition.unlock() }
        guard abortError == nil else { return }
        recordedError = error
        if case let .aborted(abortingRank, message)? = error as? CommunicationError {
            abortError = .aborted(rank: abortingRank, message: message)
        } else {
            abortError = .aborted(rank: rank, message: "rank \(rank) failed: \(error)")
        }
        condition.broadcast()
    }

    /// Notes that `rank` has returned: a collective still waiting for it can never complete.
    func rankFinished(_ rank: Int) {
        condition.lock()
        defer { condition.unlock() }
        if finishedRank == nil { finishedRank = rank }
        condition.broadcast()
    }

    /// Deposits `mine`, waits for every rank, and returns all deposits in rank order.
    func exchange(_ mine: Deposit, rank: Int) throws -> [Deposit] {
        condition.lock()
        deposits[rank] = mine
        condition.unlock()
        try barrier(rank: rank)
        condition.lock()
        defer { condition.unlock() }
        // The depositors cannot overwrite their slots before our next barrier.
        return deposits.map { $0 ?? Deposit(operation: "nothing", kind: mine.kind, count: 0, address: nil) }
    }

    /// Waits until every rank has arrived at this generation of the barrier.
    func barrier(rank: Int) throws {
        condition.lock()
        defer { condition.unlock() }
        try throwIfBroken()
        let myGeneration = generation
        arrived += 1
        if arrived == size {
            arrived = 0
            generation += 1
            condition.broadcast()
            return
        }
        while generation == myGeneration {
            try throwIfBroken()
            condition.wait()
        }
    }

    /// Throws when the barrier can never complete: the group was aborted or a rank has returned.
    private func throwIfBroken() throws {
        if let abortError { throw abortError }
        if let finishedRank {
            let error = CommunicationError.invalidArgument(
                "rank \(finishedRank) returned while other ranks still wait in a collective")
            recordedError = recordedError ?? error
            abortError = .aborted(rank: finishedRank, message: "\(error)")
            condition.broadcast()
            throw error
        }
    }
}

/// The results of the ranks, and the wait for all of them.
///
/// `@unchecked Sendable`: `slots` is read and written only while `condition` is locked.
private final class ResultSlots<Value>: @unchecked Sendable {
    private let condition = NSCondition()
    private var slots: [Result<Value, any Error>?]
    private var stored = 0

    init(count: Int) { slots = Array(repeating: nil, count: count) }

    func store(_ result: Result<Value, any Error>, rank: Int) {
        condition.lock()
        defer { condition.unlock() }
        slots[rank] = result
        stored += 1
        condition.broadcast()
    }

    func waitForAll() {
        condition.lock()
        defer { condition.unlock() }
        while stored < slots.count { condition.wait() }
    }

    func values() throws -> [Value] {
        condition.lock()
        defer { condition.unlock() }
        return try slots.map { slot in
            guard let slot else { throw CommunicationError.invalidArgument("a rank produced no result") }
            return try slot.get()
        }
    }
}
