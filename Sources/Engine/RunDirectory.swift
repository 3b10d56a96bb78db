import Communication
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A run directory, prepared and owned by one job: created if missing, checked before any work
/// (a directory, writable, with a `checkpoints` directory inside), and locked.
///
/// The lock is an exclusive `flock(2)` on `RUN_DIR/.lock`, taken by rank 0 and held for the
/// life of this object (the process, in practice): the kernel releases it when the process
/// ends, however it ends (kill -9 included), so a crashed job never leaves a stale lock. The
/// file holds the owner's host, PID and start time, which a second job names when it refuses
/// to start. `flock` is advisory and local to one machine on most network file systems: run
/// directories on NFS are protected only between jobs on the same node.
public final class RunDirectory {
    public let path: String
    /// Rank 0's descriptor of the lock file (-1 on other ranks).
    private var lockDescriptor: Int32 = -1

    /// Where the checkpoints go.
    public var checkpointsPath: String { Self.checkpointsPath(of: path) }

    /// The checkpoint folder of the run directory `path`: `path/checkpoints`.
    public static func checkpointsPath(of path: String) -> String {
        (path as NSString).appendingPathComponent("checkpoints")
    }

    /// The run directory a checkpoint file lies in (`RUN_DIR` of `RUN_DIR/checkpoints/ckpt-….h5`),
    /// or nil when the file is not in a run's checkpoint folder.
    public static func containing(checkpoint: String) -> String? {
        let folder = (checkpoint as NSString).deletingLastPathComponent
        let run = (folder as NSString).deletingLastPathComponent
        guard checkpointsPath(of: run) == folder else { return nil }
        return run.isEmpty ? "." : run   // `checkpoints/ckpt-….h5` from inside the run
    }

    private init(path: String) { self.path = path }

    deinit { if lockDescriptor >= 0 { close(lockDescriptor) } }

    /// Prepares `path` on rank 0 — creates it and its `checkpoints` directory, checks that it
    /// can be written, removes half-written checkpoint files (`*.tmp`) of a killed job, and
    /// takes the lock — and makes the outcome every rank's. Every rank must call it.
    ///
    /// - Throws: on every rank, ``TrainingError`` naming the path and what is wrong (a file
    ///   where a directory should be, no permission), or the job that holds the lock.
    public static func prepare(_ path: String, communicator: any Communicator) throws -> RunDirectory {
        let directory = RunDirectory(path: path)
        try communicator.together {
            guard communicator.isRoot else { return }
            try makeDirectory(path, role: "run directory")
            try makeDirectory(directory.checkpointsPath, role: "checkpoint directory")
            guard access(path, W_OK) == 0 else {
                throw TrainingError("run directory \(path): cannot write there: \(String(cString: strerror(errno)))")
            }
            try directory.lock()
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory.checkpointsPath)) ?? []
            where name.hasPrefix("ckpt-") && name.hasSuffix(".h5.tmp") {
                unlink((directory.checkpointsPath as NSString).appendingPathComponent(name))
            }
        }
        return directory
    }

    /// Writes `text` to `name` in the run directory atomically (a temporary file renamed into
    /// place), naming the file in the error.
    public func write(_ text: String, to name: String) throws {
        let file = (path as NSString).appendingPathComponent(name)
        do { try text.write(toFile: file, atomically: true, encoding: .utf8) } catch {
            throw TrainingError("cannot write \(file): \(error.localizedDescription)")
        }
    }

    /// `mkdir -p`, with errors that name the path and the system's reason.
    static func makeDirectory(_ path: String, role: String) throws {
        var status = stat()
        if stat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFDIR else {
                throw TrainingError("\(role) \(path): a file is in the way; it must be a directory")
            }
            return
        }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != path && parent != "/" { try makeDirectory(parent, role: "directory") }
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw TrainingError("\(role) \(path): cannot create it: \(String(cString: strerror(errno)))")
        }
    }

    private func lock() throws {
        let lockPath = (path as NSString).appendingPathComponent(".lock")
        let descriptor = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw TrainingError("run directory \(path): cannot open its lock file \(lockPath): \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            close(descriptor)
            throw TrainingError("run directory \(path) is in use by another job (\(holder.isEmpty ? "owner unknown" : holder); "
                                + "lock file \(lockPath)): wait for it to end, stop it, or choose another --run-dir")
        }
        let host = ProcessInfo.processInfo.hostName
        let owner = "pid \(getpid()) on host \(host), since \(ISO8601DateFormatter().string(from: Date()))\n"
        ftruncate(descriptor, 0)
        _ = owner.withCString { Glibc.write(descriptor, $0, strlen($0)) }
        lockDescriptor = descriptor
    }
}
