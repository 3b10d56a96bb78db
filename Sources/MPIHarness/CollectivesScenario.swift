import Communication
import _TestSupport

/// Runs every collective on every element type and reports the results (``CollectivesFixture``).
///
/// Each rank fills its buffers from its rank, then calls allReduce (sum, max, min), broadcast
/// from root `size - 1`, allGather and barrier for `Float`, `Double`, `Int64` and `UInt8`.
/// `--count N` sets the element count of each buffer (5 by default); combined with the harness
/// option `--max-chunk`, it exercises the chunked paths of ``MPICommunicator``. An MPI rank also
/// reports `"node"`: its `[localRank, localSize]` among the ranks of its node.
func collectivesScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    let count = try arguments.integer("count", default: 5)
    guard count >= 0 else { throw HarnessError.badArgument("--count must not be negative") }
    var values = try CollectivesFixture.run(on: communicator, count: count)
    if let mpi = communicator as? MPICommunicator {
        values["node"] = .array([.integer(Int64(mpi.localRank)), .integer(Int64(mpi.localSize))])
    }
    return values
}
