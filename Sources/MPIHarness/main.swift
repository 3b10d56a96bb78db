// MPIHarness — runs one named distributed scenario on every MPI rank and prints one JSON line
// a rank, which the tests compare with the results of a single process.
//
// Usage: mpirun -np N MPIHarness <scenario> [--max-chunk K] [scenario arguments]
//
// `--max-chunk K` makes MPICommunicator split buffers into chunks of at most K elements.
// `--report-dir DIR` writes each rank's report to DIR/rank-R.json instead of standard output
// (mpirun may interleave long lines of several ranks on its standard output).
// Exit status: 0 on success, 1 when a scenario fails (the job is aborted), 2 for bad usage.
import Communication
import Foundation
import _TestSupport

/// Writes `text` and a newline to standard error.
func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// The usage text, listing every registered scenario.
func usage() -> String {
    (["usage: MPIHarness <scenario> [--max-chunk K] [arguments]", "scenarios:"]
        + scenarios.map { "  " + $0.usage }).joined(separator: "\n")
}

/// Parses the command line, runs the scenario on this rank and returns the exit status.
func harnessMain(_ arguments: [String]) -> Int32 {
    guard let name = arguments.first, !name.hasPrefix("-") else {
        printError(usage())
        return arguments.contains("--help") ? 0 : 2
    }
    guard let scenario = scenarios.first(where: { $0.name == name }) else {
        printError("unknown scenario \(name)\n\(usage())")
        return 2
    }
    var rest = Array(arguments.dropFirst())
    var maximumChunkCount = Int(Int32.max)
    if let index = rest.firstIndex(of: "--max-chunk") {
        guard index + 1 < rest.count, let value = Int(rest[index + 1]) else {
            printError("--max-chunk needs an integer value")
            return 2
        }
        maximumChunkCount = value
        rest.removeSubrange(index ... index + 1)
    }
    var reportDirectory: String?
    if let index = rest.firstIndex(of: "--report-dir") {
        guard index + 1 < rest.count else {
            printError("--report-dir needs a directory")
            return 2
        }
        reportDirectory = rest[index + 1]
        rest.removeSubrange(index ... index + 1)
    }

    let communicator: MPICommunicator
    do {
        communicator = try MPICommunicator(maximumChunkCount: maximumChunkCount)
    } catch {
        printError("MPIHarness: cannot start MPI: \(error)")
        return 1
    }
    do {
        let values = try scenario.run(communicator, ScenarioArguments(raw: rest))
        let report = RankReport(rank: communicator.rank, size: communicator.size, scenario: name, values: values)
        let line = Data((try report.jsonLine() + "\n").utf8)
        if let reportDirectory {
            try line.write(to: URL(fileURLWithPath: reportDirectory).appendingPathComponent("rank-\(communicator.rank).json"))
        } else {
            FileHandle.standardOutput.write(line)
        }
        try MPICommunicator.finalize()
        return 0
    } catch {
        // Finalising would wait for peers that may be blocked in a collective: abort instead.
        do {
            try communicator.abort(message: "scenario \(name) failed: \(error)", exitCode: 1)
        } catch {
            return 1
        }
    }
}

exit(harnessMain(Array(CommandLine.arguments.dropFirst())))
