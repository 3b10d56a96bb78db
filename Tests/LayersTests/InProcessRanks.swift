import Foundation
import Communication

// TEMPORARY until `ThreadCommunicator` (Communication branch) is merged into main: a minimal
// in-process communicator with just the collectives the layer tests use (allReduce, allGather,
// barrier). Reductions combine ranks in rank order, like ThreadCommunicator.

/// Runs `body` on `worldSize` threads, each with its rank's communicator; results in rank order.
func runRanks<Value: Sendable>(_ worldSize: Int, _ body: @escaping @Sendable (any Communicator) throws -> Value) throws -> [Value] {
    let group = LocalGroup(size: worldSize)
    let results = LockedResults<Value>(count: worldSize)
    let done = DispatchGroup()
    for rank in 0..<worldSize {
        done.enter()
        let thread = Thread {
            defer { done.leave() }
            do { results.set(rank, .success(try body(LocalCommunicator(rank: rank, group: group)))) }
            catch { results.set(rank, .failure(error)); group.fail() }
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    done.wait()
    return try results.values()
}

private final class LockedResults<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<Value, any Error>?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ rank: Int, _ result: Result<Value, any Error>) { lock.lock(); slots[rank] = result; lock.unlock() }
    func values() throws -> [Value] { try slots.map { try $0!.get() } }
}

private struct LocalFailure: Error {}

private final class LocalGroup: @unchecked Sendable {
    let size: Int
    private let condition = NSCondition()
    private var arrived = 0, generation = 0, failed = false
    var addresses: [UnsafeMutableRawPointer?]
    init(size: Int) { self.size = size; addresses = Array(repeating: nil, count: size) }

    func barrier() throws {
        condition.lock(); defer { condition.unlock() }
        if failed { throw LocalFailure() }
        let mine = generation
        arrived += 1
        if arrived == size { arrived = 0; generation += 1; condition.broadcast(); return }
        while generation == mine && !failed { condition.wait() }
        if failed { throw LocalFailure() }
    }

    func fail() { condition.lock(); failed = true; condition.broadcast(); condition.unlock() }
}

private final class LocalCommunicator: Communicator, @unchecked Sendable {
    let rank: Int
    private let group: LocalGroup
    var size: Int { group.size }
    init(rank: Int, group: LocalGroup) { self.rank = rank; self.group = group }

    func allReduce<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>, _ op: ReductionOp) throws {
        group.addresses[rank] = UnsafeMutableRawPointer(buffer.baseAddress)
        try group.barrier()
        var result = [Element](repeating: .zero, count: buffer.count)
        for r in 0..<size {
            guard let p = group.addresses[r]?.assumingMemoryBound(to: Element.self) else { continue }
            for i in 0..<buffer.count {
                switch op {
                case .sum: result[i] = r == 0 ? p[i] : result[i] + p[i]
                case .max: result[i] = r == 0 ? p[i] : max(result[i], p[i])
                case .min: result[i] = r == 0 ? p[i] : min(result[i], p[i])
                }
            }
        }
        try group.barrier()
        for i in 0..<buffer.count { buffer[i] = result[i] }
    }

    func broadcast<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>, root: Int) throws {
        fatalError("not used by the layer tests")
    }

    func allGather<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                into receive: UnsafeMutableBufferPointer<Element>) throws {
        group.addresses[rank] = UnsafeMutableRawPointer(mutating: send.baseAddress)
        try group.barrier()
        for r in 0..<size {
            let p = group.addresses[r]!.assumingMemoryBound(to: Element.self)
            for i in 0..<send.count { receive[r * send.count + i] = p[i] }
        }
        try group.barrier()
    }

    func barrier() throws { try group.barrier() }

    func abort(message: String, exitCode: Int32) throws -> Never { group.fail(); throw LocalFailure() }
}
