import CMPI
import Foundation

/// The communicator of a job launched by `mpirun`: every collective runs on `MPI_COMM_WORLD`.
///
/// MPI is initialised once per process by the first `MPICommunicator` (with
/// `MPI_Init_thread(MPI_THREAD_SERIALIZED)`: a background prefetcher thread exists but never calls
/// MPI) and is finalised by ``finalize()``, which the command line calls once training has
/// finished. On a failure, call ``abort(message:exitCode:)`` instead: `MPI_Finalize` synchronises
/// with the other ranks and would wait forever for peers blocked in a collective.
///
/// `MPI_ERRORS_RETURN` is installed on `MPI_COMM_WORLD`, so a failing MPI call returns instead of
/// killing the job, and its return code becomes ``CommunicationError/mpi(call:code:message:)``
/// carrying the text of `MPI_Error_string`. Every MPI call of the process goes through one lock,
/// which provides the serialisation `MPI_THREAD_SERIALIZED` asks of its callers. MPI handles
/// never leave this file.
///
/// Element counts above `Int32.max` (MPI's `int` counts) are split into chunks.
public final class MPICommunicator: Communicator {
    /// This process's rank in `MPI_COMM_WORLD`.
    public let rank: Int
    /// The number of processes in `MPI_COMM_WORLD`.
    public let size: Int
    /// This process's index among the ranks that share its node (its shared-memory domain).
    public let localRank: Int
    /// The number of ranks on this node; the engine gives each rank `cores ÷ localSize` BLAS threads.
    public let localSize: Int
    /// The largest element count handed to a single MPI call; longer buffers go in chunks.
    public let maximumChunkCount: Int

    /// Initialises MPI if needed and wraps `MPI_COMM_WORLD`.
    ///
    /// Every rank must construct its communicator at the same point, because finding the ranks
    /// of this node (`MPI_Comm_split_type`) is itself a collective.
    ///
    /// - Parameter maximumChunkCount: the largest element count of one MPI call, at most (and by
    ///   default) `Int32.max`. Tests lower it to exercise the chunked paths with small buffers.
    /// - Throws: ``CommunicationError/mpi(call:code:message:)`` naming the failing call;
    ///   ``CommunicationError/invalidArgument(_:)`` for a bad chunk count or when MPI was already
    ///   finalised in this process (MPI cannot be initialised twice).
    public init(maximumChunkCount: Int = Int(Int32.max)) throws {
        guard (1 ... Int(Int32.max)).contains(maximumChunkCount) else {
            throw CommunicationError.invalidArgument(
                "maximumChunkCount \(maximumChunkCount) is outside 1 ... \(Int32.max)")
        }
        self.maximumChunkCount = maximumChunkCount
        (rank, size, localRank, localSize) = try MPIRuntime.shared.withMPI(initializing: true) {
            let world = shim_MPI_COMM_WORLD()
            try check(MPI_Comm_set_errhandler(world, shim_MPI_ERRORS_RETURN()), "MPI_Comm_set_errhandler")
            var rank: Int32 = 0, size: Int32 = 0
            try check(MPI_Comm_rank(world, &rank), "MPI_Comm_rank")
            try check(MPI_Comm_size(world, &size), "MPI_Comm_size")

            // The ranks on this node: a communicator per shared-memory domain, freed right away.
            var node = shim_MPI_COMM_NULL()
            try check(MPI_Comm_split_type(world, shim_MPI_COMM_TYPE_SHARED(), rank, shim_MPI_INFO_NULL(), &node),
                      "MPI_Comm_split_type")
            defer { _ = MPI_Comm_free(&node) }
            var localRank: Int32 = 0, localSize: Int32 = 0
            try check(MPI_Comm_rank(node, &localRank), "MPI_Comm_rank")
            try check(MPI_Comm_size(node, &localSize), "MPI_Comm_size")
            return (Int(rank), Int(size), Int(localRank), Int(localSize))
        }
    }

    // MARK: Launch detection and finalisation

    /// Environment variables that MPI launchers (Open MPI, PMI/PMIx, MPICH/Hydra, MVAPICH) set
    /// in every rank.
    static let launcherVariables = [
        "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE",
    ]

    /// Whether this process was started by an MPI launcher such as `mpirun`.
    ///
    /// True when one of the variables launchers put in each rank's environment is set
    /// (`OMPI_COMM_WORLD_SIZE`, `PMIX_RANK`, `PMI_SIZE`, …). Does not initialise MPI.
    public static var isLaunchedByMPI: Bool {
        let environment = ProcessInfo.processInfo.environment
        return launcherVariables.contains { environment[$0] != nil }
    }

    /// Finalises MPI once the job is done; safe to call repeatedly, and a no-op when this process
    /// never initialised MPI.
    ///
    /// Every rank must call it (it synchronises with the peers), after its last collective.
    /// No `MPICommunicator` may be used afterwards: their collectives throw.
    /// - Throws: ``CommunicationError/mpi(call:code:message:)`` if `MPI_Finalize` fails.
    public static func finalize() throws {
        try MPIRuntime.shared.finalize()
    }

    // MARK: Collectives

    public func allReduce<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       _ op: ReductionOp) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try MPIRuntime.shared.withMPI {
            try forEachChunk(of: buffer.count) { offset, count in
                try check(MPI_Allreduce(shim_MPI_IN_PLACE(), base + offset, count, Element.kind.mpiDatatype,
                                        op.mpiOp, shim_MPI_COMM_WORLD()), "MPI_Allreduce")
            }
        }
    }

    public func broadcast<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       root: Int) throws {
        try validate(root: root)
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try MPIRuntime.shared.withMPI {
            try broadcastLocked(base, count: buffer.count, root: Int32(root))
        }
    }

    /// Gathers every rank's `send` into `receive` in rank order with `MPI_Allgather`.
    ///
    /// When `send.count` exceeds ``maximumChunkCount``, the gather becomes one chunked broadcast
    /// from each rank of its own slot, which keeps the rank-major layout of `receive`.
    public func allGather<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                       into receive: UnsafeMutableBufferPointer<Element>) throws {
        let count = send.count
        guard receive.count == count * size else {
            throw CommunicationError.invalidArgument(
                "allGather receives \(receive.count) elements, expected \(size) × \(count)")
        }
        guard count > 0, let sendBase = send.baseAddress, let receiveBase = receive.baseAddress else { return }
        try MPIRuntime.shared.withMPI {
            if count <= maximumChunkCount {
                try check(MPI_Allgather(sendBase, Int32(count), Element.kind.mpiDatatype,
                                        receiveBase, Int32(count), Element.kind.mpiDatatype, shim_MPI_COMM_WORLD()),
                          "MPI_Allgather")
                return
            }
            (receiveBase + rank * count).update(from: sendBase, count: count)
            for root in 0 ..< size {
                try broadcastLocked(receiveBase + root * count, count: count, root: Int32(root))
            }
        }
    }

    /// `MPI_Reduce_scatter` of `send` into this rank's block.
    ///
    /// When a block exceeds ``maximumChunkCount`` (or the buffer MPI's `int` displacements), the
    /// reduction becomes a chunked all-reduce of a copy of `send`, of which this rank keeps its
    /// block: the same result, at twice the traffic.
    public func reduceScatter<Element: CommunicableScalar>(_ send: UnsafeBufferPointer<Element>,
                                                           into receive: UnsafeMutableBufferPointer<Element>,
                                                           counts: [Int], _ op: ReductionOp) throws {
        let block = try blockRanges(counts, size: size, total: send.count, "reduceScatter")[rank]
        guard receive.count == block.count else {
            throw CommunicationError.invalidArgument(
                "reduceScatter receives \(receive.count) elements, expected \(block.count)")
        }
        guard send.count > 0, let sendBase = send.baseAddress else { return }
        if fitsOneCall(counts, total: send.count) {
            let mpiCounts = counts.map { Int32($0) }
            // An empty block may come with no address; MPI writes nothing there.
            let receiveBase = receive.baseAddress ?? UnsafeMutablePointer(mutating: sendBase)
            try MPIRuntime.shared.withMPI {
                try check(MPI_Reduce_scatter(sendBase, receiveBase, mpiCounts, Element.kind.mpiDatatype, op.mpiOp,
                                             shim_MPI_COMM_WORLD()), "MPI_Reduce_scatter")
            }
            return
        }
        var whole = Array(send)
        try whole.withUnsafeMutableBufferPointer { whole in
            try allReduce(whole, op)
            _ = receive.update(fromContentsOf: UnsafeMutableBufferPointer(rebasing: whole[block]))
        }
    }

    /// `MPI_Allgatherv` in place (`MPI_IN_PLACE`: this rank's block is already in `buffer`).
    ///
    /// When a block exceeds ``maximumChunkCount`` (or the buffer MPI's `int` displacements), the
    /// gather becomes one chunked broadcast of each rank's block from that rank.
    public func allGather<Element: CommunicableScalar>(_ buffer: UnsafeMutableBufferPointer<Element>,
                                                       counts: [Int]) throws {
        let blocks = try blockRanges(counts, size: size, total: buffer.count, "allGather")
        guard buffer.count > 0, let base = buffer.baseAddress else { return }
        try MPIRuntime.shared.withMPI {
            if fitsOneCall(counts, total: buffer.count) {
                let mpiCounts = counts.map { Int32($0) }, displacements = blocks.map { Int32($0.lowerBound) }
                try check(MPI_Allgatherv(shim_MPI_IN_PLACE(), 0, Element.kind.mpiDatatype, base, mpiCounts, displacements,
                                         Element.kind.mpiDatatype, shim_MPI_COMM_WORLD()), "MPI_Allgatherv")
                return
            }
            for (root, block) in blocks.enumerated() where !block.isEmpty {
                try broadcastLocked(base + block.lowerBound, count: block.count, root: Int32(root))
            }
        }
    }

    /// Whether blocks of `counts` in a buffer of `total` elements go in one MPI call: every
    /// count within ``maximumChunkCount`` and every displacement within MPI's `int`.
    private func fitsOneCall(_ counts: [Int], total: Int) -> Bool {
        counts.allSatisfy { $0 <= maximumChunkCount } && total <= Int(Int32.max)
    }

    /// An MPI-3 shared-memory window over `MPI_COMM_WORLD` when every rank is on this node
    /// (`localSize == size`), else nil. The window stays in a passive-target epoch of every
    /// rank (`MPI_Win_lock_all`); ``SharedSegments/synchronize()`` is `MPI_Win_sync`,
    /// `MPI_Barrier`, `MPI_Win_sync`, as in the shared-memory examples of the MPI-3 standard. The
    /// window is freed when MPI is finalised.
    public func sharedSegments(byteCount: Int) throws -> SharedSegments? {
        precondition(byteCount >= 0, "sharedSegments: negative byte count \(byteCount)")
        guard localSize == size else { return nil }
        return try MPIRuntime.shared.withMPI {
            let world = shim_MPI_COMM_WORLD()
            var info = shim_MPI_INFO_NULL()
            try check(MPI_Info_create(&info), "MPI_Info_create")
            defer { _ = MPI_Info_free(&info) }
            // Each segment page-aligned on its own rank's pages rather than one block cut in pieces.
            try check(MPI_Info_set(info, "alloc_shared_noncontig", "true"), "MPI_Info_set")
            var base: UnsafeMutableRawPointer?
            var window = shim_MPI_WIN_NULL()
            // 64 spare bytes so that each segment can start on a cache line.
            try check(MPI_Win_allocate_shared(byteCount + 64, 1, info, world, &base, &window),
                      "MPI_Win_allocate_shared (\(byteCount) bytes a rank of shared memory; is /dev/shm large enough?)")
            try check(MPI_Win_set_errhandler(window, shim_MPI_ERRORS_RETURN()), "MPI_Win_set_errhandler")
            var bases: [UnsafeMutableRawPointer] = [], byteCounts: [Int] = []
            for peer in 0 ..< Int32(size) {
                var bytes = 0, unit: Int32 = 0
                var peerBase: UnsafeMutableRawPointer?
                try check(MPI_Win_shared_query(window, peer, &bytes, &unit, &peerBase), "MPI_Win_shared_query")
                guard let peerBase else {
                    throw CommunicationError.invalidArgument("MPI_Win_shared_query gave no address for rank \(peer)")
                }
                let aligned = peerBase.alignedUp(toMultipleOf: 64)
                bases.append(aligned)
                byteCounts.append(bytes - (aligned - peerBase))
            }
            try check(MPI_Win_lock_all(shim_MPI_MODE_NOCHECK(), window), "MPI_Win_lock_all")
            MPIRuntime.shared.keep(window)
            return SharedSegments(byteCounts: byteCounts, bases: bases) {
                try MPIRuntime.shared.withMPI {
                    try check(MPI_Win_sync(window), "MPI_Win_sync")
                    try check(MPI_Barrier(world), "MPI_Barrier")
                    try check(MPI_Win_sync(window), "MPI_Win_sync")
                }
            }
        }
    }

    public func barrier() throws {
        try MPIRuntime.shared.withMPI {
            try check(MPI_Barrier(shim_MPI_COMM_WORLD()), "MPI_Barrier")
        }
    }

    /// Prints `[rank r] message` to standard error and ends every rank with `MPI_Abort`.
    ///
    /// Does not take the MPI lock: it must work even while another thread is blocked in a collective.
    public func abort(message: String, exitCode: Int32) throws -> Never {
        FileHandle.standardError.write(Data("[rank \(rank)] \(message)\n".utf8))
        _ = MPI_Abort(shim_MPI_COMM_WORLD(), exitCode)
        // MPI_Abort does not return; should an implementation ever do so, end this rank anyway.
        exit(exitCode)
    }

    // MARK: Helpers (called with the MPI lock held)

    /// Broadcasts `count` elements at `base` from `root`, chunk by chunk.
    private func broadcastLocked<Element: CommunicableScalar>(_ base: UnsafeMutablePointer<Element>,
                                                              count: Int, root: Int32) throws {
        try forEachChunk(of: count) { offset, chunk in
            try check(MPI_Bcast(base + offset, chunk, Element.kind.mpiDatatype, root, shim_MPI_COMM_WORLD()),
                      "MPI_Bcast")
        }
    }

    /// Calls `body(offset, count)` for consecutive chunks of at most ``maximumChunkCount`` elements.
    private func forEachChunk(of total: Int, _ body: (Int, Int32) throws -> Void) throws {
        var offset = 0
        while offset < total {
            let count = Swift.min(maximumChunkCount, total - offset)
            try body(offset, Int32(count))
            offset += count
        }
    }

    private func validate(root: Int) throws {
        guard (0 ..< size).contains(root) else {
            throw CommunicationError.invalidArgument("root \(root) is not a rank of a world of size \(size)")
        }
    }
}

/// Returns an ``MPICommunicator`` when this process was launched by `mpirun` (or `forceMPI` is
/// set), otherwise a ``SingleProcessCommunicator``.
///
/// The command line calls it once at start-up.
/// - Parameter forceMPI: initialise MPI even without a launcher (an MPI "singleton" of size 1);
///   `false` by default so a plain run needs no MPI runtime at all.
/// - Throws: the errors of ``MPICommunicator/init(maximumChunkCount:)``.
public func makeCommunicator(forceMPI: Bool = false) throws -> any Communicator {
    if forceMPI || MPICommunicator.isLaunchedByMPI {
        return try MPICommunicator()
    }
    return SingleProcessCommunicator()
}

// MARK: - Process-wide MPI state

/// The MPI state of this process, and the lock that serialises every MPI call.
///
/// `@unchecked Sendable`: `state` is read and written only while `lock` is held.
private final class MPIRuntime: @unchecked Sendable {
    static let shared = MPIRuntime()

    private enum State { case uninitialized, initialized, finalized }

    private let lock = NSLock()
    private var state = State.uninitialized
    /// The shared-memory windows of ``MPICommunicator/sharedSegments(byteCount:)``, freed (a
    /// collective) just before `MPI_Finalize`, which every rank reaches.
    private var windows: [MPI_Win?] = []

    /// Keeps `window` until finalisation. Called with the lock held.
    func keep(_ window: MPI_Win?) { windows.append(window) }

    /// Runs `body` with the MPI lock held, after checking (or with `initializing`, establishing)
    /// that MPI is initialised and not yet finalised.
    func withMPI<Result>(initializing: Bool = false, _ body: () throws -> Result) throws -> Result {
        lock.lock()
        defer { lock.unlock() }
        switch state {
        case .initialized:
            break
        case .finalized:
            throw CommunicationError.invalidArgument(
                "MPI was finalised in this process; it cannot be used or initialised again")
        case .uninitialized:
            guard initializing else {
                throw CommunicationError.invalidArgument("MPI is not initialised; construct an MPICommunicator first")
            }
            try initialize()
            state = .initialized
        }
        return try body()
    }

    /// Finalises MPI if this process initialised it and has not finalised it yet.
    func finalize() throws {
        lock.lock()
        defer { lock.unlock() }
        guard state == .initialized else { return }
        state = .finalized
        for var window in windows {
            try check(MPI_Win_unlock_all(window), "MPI_Win_unlock_all")
            try check(MPI_Win_free(&window), "MPI_Win_free")
        }
        windows = []
        try check(MPI_Finalize(), "MPI_Finalize")
    }

    /// Calls `MPI_Init_thread` unless MPI is already running (initialised by a library or the host).
    private func initialize() throws {
        var isInitialized: Int32 = 0
        try check(MPI_Initialized(&isInitialized), "MPI_Initialized")
        guard isInitialized == 0 else { return }
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, shim_MPI_THREAD_SERIALIZED(), &provided), "MPI_Init_thread")
        // FUNNELED is enough in practice (only one thread calls MPI); below that we cannot run.
        guard provided >= shim_MPI_THREAD_FUNNELED() else {
            throw CommunicationError.mpi(call: "MPI_Init_thread", code: provided,
                                         message: "the MPI library provides thread level \(provided), "
                                             + "below MPI_THREAD_FUNNELED")
        }
    }
}

// MARK: - Error codes and handles

/// Throws ``CommunicationError/mpi(call:code:message:)`` unless `code` is `MPI_SUCCESS`.
private func check(_ code: Int32, _ call: String) throws {
    guard code != shim_MPI_SUCCESS() else { return }
    var text = [CChar](repeating: 0, count: Int(shim_MPI_MAX_ERROR_STRING()) + 1)
    var length: Int32 = 0
    let message: String
    if MPI_Error_string(code, &text, &length) == shim_MPI_SUCCESS() {
        message = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    } else {
        message = "unknown MPI error"
    }
    throw CommunicationError.mpi(call: call, code: code, message: message)
}

extension ScalarKind {
    /// The MPI datatype of the scalar kind.
    fileprivate var mpiDatatype: MPI_Datatype {
        switch self {
        case .float32: return shim_MPI_FLOAT()
        case .float64: return shim_MPI_DOUBLE()
        case .int64: return shim_MPI_INT64_T()
        case .uint8: return shim_MPI_UINT8_T()
        }
    }
}

extension ReductionOp {
    /// The MPI operation of the reduction.
    fileprivate var mpiOp: MPI_Op {
        switch self {
        case .sum: return shim_MPI_SUM()
        case .max: return shim_MPI_MAX()
        case .min: return shim_MPI_MIN()
        }
    }
}
