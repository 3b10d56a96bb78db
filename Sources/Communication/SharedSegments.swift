/// Memory that every rank of a communicator reads and writes directly: one segment a rank,
/// each mapped into the address space of every rank. Ranks on one node can have it (an MPI-3
/// shared-memory window, `MPI_Win_allocate_shared`), and so can the threads of one process.
///
/// Collectives through MPI copy a buffer at least twice on a node (into the library's shared
/// buffers or the peer's memory, then into the result). A rank that reads its peers' segments
/// itself moves each byte once: ``ShardedOptimizerStep`` sums its share of the gradient from
/// every rank's segment, and reads the peers' updated parameters from theirs.
///
/// The caller orders the accesses: ``synchronize()`` is a barrier that also orders memory, so
/// that whatever a rank wrote before it, every rank sees after it. Between two calls a byte may
/// be written by one rank or read by any, not both.
///
/// Obtained from ``Communicator/sharedSegments(byteCount:)``; the memory lives as long as the
/// segments object of any rank (threads) or until MPI is finalised (processes).
public final class SharedSegments: @unchecked Sendable {
    // @unchecked: the segments are shared on purpose; ``synchronize()`` orders their use.

    /// The bytes of each rank's segment, in rank order (each rank asks for its own).
    public let byteCounts: [Int]
    private let bases: [UnsafeMutableRawPointer]
    private let fence: () throws -> Void
    /// What keeps the memory alive (the in-process ranks' allocations), if anything.
    private let owners: [AnyObject]

    /// - Parameters:
    ///   - bases: the address of each rank's segment in this rank's address space, in rank order,
    ///     each 64-byte aligned.
    ///   - fence: a barrier of all ranks that orders memory (what ``synchronize()`` calls).
    ///   - owners: objects that must live as long as the segments.
    public init(byteCounts: [Int], bases: [UnsafeMutableRawPointer], owners: [AnyObject] = [],
                fence: @escaping () throws -> Void) {
        precondition(bases.allSatisfy { Int(bitPattern: $0) % 64 == 0 }, "shared segments must be 64-byte aligned")
        precondition(bases.count == byteCounts.count, "one segment size a rank")
        self.byteCounts = byteCounts
        self.bases = bases
        self.owners = owners
        self.fence = fence
    }

    /// The number of segments, one a rank.
    public var count: Int { bases.count }

    /// Rank `rank`'s segment as elements of `type`, `byteCounts[rank] / stride` of them.
    public func segment<Element>(_ rank: Int, as type: Element.Type) -> UnsafeMutableBufferPointer<Element> {
        UnsafeMutableBufferPointer(start: bases[rank].assumingMemoryBound(to: Element.self),
                                   count: byteCounts[rank] / MemoryLayout<Element>.stride)
    }

    /// Waits until every rank has called it; every write to the segments made before it by any
    /// rank is visible to every rank after it. Every rank must call it.
    public func synchronize() throws { try fence() }

    /// The same segments with another fence (a timed one, e.g.).
    public func withFence(_ fence: @escaping () throws -> Void) -> SharedSegments {
        SharedSegments(byteCounts: byteCounts, bases: bases, owners: owners + [self], fence: fence)
    }
}

/// One rank's segment when the ranks are threads: plain 64-byte-aligned memory.
final class SharedAllocation {
    let base: UnsafeMutableRawPointer

    init(byteCount: Int) {
        base = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
    }

    deinit { base.deallocate() }
}
