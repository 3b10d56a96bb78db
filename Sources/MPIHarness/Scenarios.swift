import Communication
import _TestSupport

/// A named distributed check that `MPIHarness` runs on every rank.
///
/// A scenario receives this rank's communicator and its own command-line arguments, does its
/// collective work, and returns named values; the harness prints them as this rank's
/// ``RankReport``. Throwing aborts the whole job with a non-zero exit status.
///
/// To add a scenario, write its function in a file of its own (like `CollectivesScenario.swift`)
/// and add one entry to ``scenarios``.
struct Scenario: Sendable {
    /// The name given on the command line: `MPIHarness <name> [arguments]`.
    let name: String
    /// One line for the usage text, including the scenario's arguments.
    let usage: String
    /// The work of one rank.
    let run: @Sendable (_ communicator: any Communicator, _ arguments: ScenarioArguments) throws -> [String: JSONValue]
}

/// The registry of scenarios, in the order the usage text lists them.
let scenarios: [Scenario] = [
    Scenario(name: "collectives",
             usage: "collectives [--count N]  every collective on every element type (root size-1)",
             run: collectivesScenario),
    Scenario(name: "abort",
             usage: "abort  rank 1 (rank 0 of a 1-rank job) aborts the job with a message",
             run: abortScenario),
    Scenario(name: "batchnorm",
             usage: "batchnorm  synchronised BatchNorm1d/2d on an uneven split of 7 rows (BatchNormFixture)",
             run: batchNormScenario),
    Scenario(name: "sharded",
             usage: "sharded [--collectives]  sharded optimizer steps (LARS, AdamW, SGD, clipping) on this rank's share (ShardedUpdateFixture), through the node's shared memory or MPI's collectives",
             run: shardedUpdateScenario),
    Scenario(name: "objectives",
             usage: "objectives --fixture PATH  every objective on every golden case, on this rank's rows, both reduction paths",
             run: objectivesScenario),
    Scenario(name: "worldmodel",
             usage: "worldmodel  the world model's loss and gradients on an uneven split of 7 clips (WorldModelFixture)",
             run: worldModelScenario),
    Scenario(name: "whereami",
             usage: "whereami  where each rank runs: network namespace, host name, pid, [localRank, localSize]",
             run: whereAmIScenario),
]

/// The arguments of a scenario: `--name value` options.
struct ScenarioArguments: Sendable {
    /// The arguments as given, after the scenario name and the harness options.
    let raw: [String]

    /// The value of `--name`, parsed as an integer, or `defaultValue` when absent.
    /// - Throws: ``HarnessError/badArgument(_:)`` when the value is missing or not an integer.
    func integer(_ name: String, default defaultValue: Int) throws -> Int {
        guard let index = raw.firstIndex(of: "--\(name)") else { return defaultValue }
        guard index + 1 < raw.count, let value = Int(raw[index + 1]) else {
            throw HarnessError.badArgument("--\(name) needs an integer value")
        }
        return value
    }

    /// Whether the flag `--name` (without a value) is given.
    func flag(_ name: String) -> Bool { raw.contains("--\(name)") }

    /// The value of `--name`, or `defaultValue` when absent.
    /// - Throws: ``HarnessError/badArgument(_:)`` when the value is missing.
    func string(_ name: String, default defaultValue: String? = nil) throws -> String {
        guard let index = raw.firstIndex(of: "--\(name)") else {
            guard let defaultValue else { throw HarnessError.badArgument("--\(name) is required") }
            return defaultValue
        }
        guard index + 1 < raw.count else { throw HarnessError.badArgument("--\(name) needs a value") }
        return raw[index + 1]
    }
}

/// A failure of the harness itself rather than of a collective.
enum HarnessError: Error, CustomStringConvertible {
    case badArgument(String)

    var description: String {
        switch self {
        case let .badArgument(text): return "bad argument: \(text)"
        }
    }
}
