import Communication
import _TestSupport

/// The message the `abort` scenario aborts with; the tests look for it in the job's output.
let abortScenarioMessage = "MPIHarness abort scenario: this rank gives up on purpose"

/// Rank 1 (rank 0 in a job of one rank) aborts the job; the other ranks wait in a barrier that
/// never completes, until `MPI_Abort` ends them.
///
/// The job must end quickly with a non-zero status (the abort code, 3) and the message, prefixed
/// with the rank, must appear on standard error.
func abortScenario(_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue] {
    if communicator.rank == Swift.min(1, communicator.size - 1) {
        try communicator.abort(message: abortScenarioMessage, exitCode: 3)
    }
    try communicator.barrier()
    return ["unreachable": .bool(true)]
}
