// How every command that may run under mpirun starts and ends.
import ArgumentParser
import Communication
import Foundation

/// Runs `body` on this rank with the job's communicator (MPI under mpirun or srun, else a single
/// process). On an error — on any rank — the whole job ends with a non-zero status on every
/// rank (MPI_Abort when there are several), never leaving peers waiting in a collective; on
/// success MPI is finalised.
func runJob(_ body: (any Communicator) throws -> Void) throws {
    let communicator: any Communicator
    do { communicator = try makeCommunicator() } catch {
        FileHandle.standardError.write(Data("error: cannot start MPI: \(error)\n".utf8))
        throw ExitCode.failure
    }
    try runOnEveryRank(communicator) { try body(communicator) }
}

/// Runs `body` on this rank; on an error, ends the whole job with a non-zero status on every
/// rank (MPI_Abort when there are several), never leaving peers waiting in a collective.
func runOnEveryRank(_ communicator: any Communicator, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch {
        if communicator.size > 1 {
            // Prints "[rank r] error: …" and ends every rank of the job.
            try? communicator.abort(message: "error: \(error)", exitCode: 1)
        }
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode.failure
    }
    if communicator is MPICommunicator { try MPICommunicator.finalize() }
}
