import Communication
import Foundation
import Tensor

/// How many threads each rank gives OpenBLAS: the node's cores shared among the ranks on it.
///
/// Ranks on one node that each start as many BLAS threads as there are cores oversubscribe the
/// node many times over; the default gives each rank `cores ÷ ranks on the node` (at least 1).
/// The trainer calls ``BLASThreads/configure(override:communicator:environment:)`` once at
/// start-up, after MPI is initialised, with its `--blas-threads` option as `override`.
extension BLASThreads {
    /// The default thread count: `cores ÷ ranksOnNode`, at least 1.
    public static func defaultCount(cores: Int = processors, ranksOnNode: Int) -> Int {
        max(1, cores / max(1, ranksOnNode))
    }

    /// The number of ranks sharing this node's cores.
    ///
    /// ``MPICommunicator/localSize`` under MPI; the world size for ``ThreadCommunicator`` (its
    /// ranks are threads of this process); otherwise the launcher's environment (Open MPI's
    /// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH's `MPI_LOCALNRANKS`, Slurm's `SLURM_NTASKS_PER_NODE`),
    /// else 1.
    public static func ranksOnNode(communicator: (any Communicator)? = nil,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) -> Int {
        if let mpi = communicator as? MPICommunicator { return max(1, mpi.localSize) }
        if let threads = communicator as? ThreadCommunicator { return threads.size }
        for key in ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"] {
            if let value = environment[key].flatMap({ Int($0) }), value > 0 { return value }
        }
        return 1
    }

    /// Sets the OpenBLAS thread count of this process and returns it.
    ///
    /// - Parameters:
    ///   - override: an explicit count (a command-line option); wins over everything.
    ///   - communicator: tells how many ranks share the node (see ``ranksOnNode(communicator:environment:)``).
    ///   - environment: `OPENBLAS_NUM_THREADS`, when set, wins over the default, so a user's
    ///     setting is kept; otherwise ``defaultCount(cores:ranksOnNode:)``.
    @discardableResult
    public static func configure(override: Int? = nil, communicator: (any Communicator)? = nil,
                                 environment: [String: String] = ProcessInfo.processInfo.environment) -> Int {
        let count: Int
        if let override {
            count = max(1, override)
        } else if let value = environment["OPENBLAS_NUM_THREADS"].flatMap({ Int($0) }), value > 0 {
            count = value
        } else {
            count = defaultCount(ranksOnNode: ranksOnNode(communicator: communicator, environment: environment))
        }
        set(count)
        return count
    }
}

extension BLASThreads {
    /// The environment variable of OpenBLAS's idle-thread wait: its threads spin `2^value`
    /// cycles after a product before they sleep (default 28, ~0.1 s).
    public static let threadTimeoutVariable = "OPENBLAS_THREAD_TIMEOUT"
    /// The wait the executable runs with, unless the user sets one: 4, the shortest (sleep at once).
    ///
    /// A convolutional step runs thousands of products with memory-bound passes between them
    /// (Winograd's transforms, batch norm); spinning threads take the core those passes run on,
    /// through `sched_yield` (the system time of the issue-17 measurements). On the ResNet step,
    /// 2 threads, alternating runs on the shared machine: 6.2 and 6.1 s a step with 4 against
    /// 6.7 and 8.6 s with the default, system time 3.2 and 2.7 s against 4.9 and 4.8 s.
    public static let shortThreadTimeout = "4"

    /// Restarts this executable with ``threadTimeoutVariable`` set to ``shortThreadTimeout``
    /// when it is unset: OpenBLAS reads it once, when the library loads, so it cannot be set
    /// later in the process. Returns (doing nothing) when it is set, or when the restart fails.
    public static func restartWithShortThreadWait(arguments: [String] = CommandLine.arguments) {
        guard ProcessInfo.processInfo.environment[threadTimeoutVariable] == nil else { return }
        setenv(threadTimeoutVariable, shortThreadTimeout, 1)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &argv)
        // Only reached if execv failed: carry on with OpenBLAS's default wait.
        for pointer in argv { free(pointer) }
    }
}
