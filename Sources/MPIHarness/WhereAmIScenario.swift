import Communication
import Foundation
import _TestSupport
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reports where this rank runs, so that a test can tell that a job really spans several
/// nodes (or, on one machine, several network namespaces that stand for nodes).
///
/// Values: `"networkNamespace"`, the target of `/proc/self/ns/net` (`net:[inode]`, the same for
/// two processes exactly when they share a network stack; `"unavailable"` where there is no
/// `/proc`, as on macOS); `"hostname"`; `"pid"`; for an MPI rank, `"node"`:
/// `[localRank, localSize]` among the ranks that MPI places on its node. Ends with a barrier,
/// so that every rank has started before any reports.
func whereAmIScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    let namespace = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? "unavailable"
    var name = [CChar](repeating: 0, count: 256)
    let hostname = gethostname(&name, name.count - 1) == 0
        ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown"
    var values: [String: JSONValue] = [
        "networkNamespace": .string(namespace),
        "hostname": .string(hostname),
        "pid": .integer(Int64(getpid())),
    ]
    if let mpi = communicator as? MPICommunicator {
        values["node"] = .array([.integer(Int64(mpi.localRank)), .integer(Int64(mpi.localSize))])
    }
    try communicator.barrier()
    return values
}
