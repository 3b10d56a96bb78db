import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Launches a built executable of this package under a real `mpirun` and collects its output.
///
/// The tests use it to run `MPIHarness <scenario>` on 2 or 3 processes:
///
/// ```swift
/// let reports = try MPIRun.launch(executable: "MPIHarness", ranks: 3, arguments: ["collectives"])
/// ```
///
/// The executable is looked up in the SwiftPM build-products directory that holds the running
/// test bundle (`.build/<triple>/<configuration>/`), or in `$ANTICOLLAPSE_BUILD_PRODUCTS`.
/// `mpirun` is started in a process group of its own with `--oversubscribe --bind-to none` (the
/// test machines have fewer cores than ranks) and with Open MPI's permission to run as root;
/// when the timeout passes, the whole group is killed. A ``Launcher`` adds options (a hostfile)
/// or replaces `mpirun` by a wrapper script, as the multi-node test does.
public enum MPIRun {
    /// How `mpirun` is started: the program that stands for it, options placed before the
    /// executable, and variables added to its environment.
    ///
    /// ``local`` runs `mpirun` on this machine. The multi-node test runs a wrapper that starts
    /// `mpirun` inside a network namespace, with a hostfile:
    ///
    /// ```swift
    /// let launcher = MPIRun.Launcher(program: "\(repository)/launch/netns/mpirun",
    ///                                options: ["--hostfile", hostfile, "--mca", "btl", "tcp,self"],
    ///                                environment: ["ANTICOLLAPSE_NETNS": name])
    /// let reports = try MPIRun.launch(ranks: 2, arguments: ["collectives"], launcher: launcher)
    /// ```
    public struct Launcher: Sendable {
        /// The absolute path of a program taking `mpirun`'s arguments; nil for `mpirun` itself
        /// (`$MPIRUN`, else the first match on `PATH`).
        public var program: String?
        /// `mpirun` options placed after `-np N --oversubscribe --bind-to none` and before the
        /// executable, e.g. `["--hostfile", path]`. An MCA parameter may appear only once.
        public var options: [String]
        /// Variables added to (or replacing those of) `mpirun`'s environment.
        public var environment: [String: String]

        /// - Parameters:
        ///   - program: a wrapper to run instead of `mpirun` (default nil: `mpirun`).
        ///   - options: extra `mpirun` options (default none).
        ///   - environment: extra environment variables (default none).
        public init(program: String? = nil, options: [String] = [], environment: [String: String] = [:]) {
            self.program = program
            self.options = options
            self.environment = environment
        }

        /// `mpirun` on this machine, with nothing added.
        public static let local = Launcher()
    }

    /// What one `mpirun` invocation produced.
    public struct Outcome: Sendable {
        /// The exit status of `mpirun`, or `128 + signal` when a signal ended it.
        public var exitStatus: Int32
        /// Whether the run was killed because it outlived its timeout.
        public var timedOut: Bool
        /// Wall-clock seconds from launch to exit.
        public var duration: TimeInterval
        /// Everything the ranks and `mpirun` wrote on standard output.
        public var standardOutput: String
        /// Everything the ranks and `mpirun` wrote on standard error.
        public var standardError: String

        /// Standard output and standard error, for failure messages.
        public var combinedOutput: String {
            "--- stdout ---\n\(standardOutput)\n--- stderr ---\n\(standardError)"
        }
    }

    /// Whether `mpirun` is on `PATH` (or `$MPIRUN` names an executable).
    ///
    /// Tests should not skip when it is missing: call ``requireAvailable()`` so that a machine
    /// without Open MPI fails loudly (CI installs it through `launch/setup`).
    public static var isAvailable: Bool { mpirunPath != nil }

    /// Throws a clear error when `mpirun` cannot be found.
    public static func requireAvailable() throws {
        guard isAvailable else { throw MPIRunError.mpirunMissing }
    }

    /// Runs `executable` on `ranks` processes and returns each rank's ``RankReport``, sorted by rank.
    ///
    /// - Parameters:
    ///   - executable: the name of an executable product of this package.
    ///   - ranks: the number of MPI processes.
    ///   - arguments: the arguments of the executable (for `MPIHarness`, the scenario and its options).
    ///   - launcher: how `mpirun` is started (default ``Launcher/local``).
    ///   - timeout: seconds after which the job is killed and the call throws.
    /// - Throws: ``MPIRunError`` when the job fails, times out, or does not print exactly one
    ///   report per rank.
    public static func launch(executable: String = "MPIHarness", ranks: Int, arguments: [String] = [],
                              launcher: Launcher = .local, timeout: TimeInterval = 60) throws -> [RankReport] {
        // Reports go to one file a rank: mpirun may interleave long lines on its standard output.
        let reportDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("mpirun-reports-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: reportDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: reportDirectory) }
        let outcome = try run(executable: executable, ranks: ranks,
                              arguments: arguments + ["--report-dir", reportDirectory.path],
                              launcher: launcher, timeout: timeout)
        guard !outcome.timedOut else { throw MPIRunError.timedOut(seconds: timeout, output: outcome.combinedOutput) }
        guard outcome.exitStatus == 0 else {
            throw MPIRunError.failed(status: outcome.exitStatus, output: outcome.combinedOutput)
        }
        let decoder = JSONDecoder()
        var reports: [RankReport] = []
        let written = (0 ..< ranks).compactMap { rank in
            try? String(contentsOf: reportDirectory.appendingPathComponent("rank-\(rank).json"), encoding: .utf8)
        }
        for line in written.joined().split(whereSeparator: \.isNewline) where line.hasPrefix("{") {
            do {
                reports.append(try decoder.decode(RankReport.self, from: Data(line.utf8)))
            } catch {
                throw MPIRunError.badReport(line: String(line), reason: "\(error)")
            }
        }
        reports.sort { $0.rank < $1.rank }
        guard reports.map(\.rank) == Array(0 ..< ranks), reports.allSatisfy({ $0.size == ranks }) else {
            throw MPIRunError.badReport(line: written.joined(),
                                        reason: "expected one report from each of ranks 0 ..< \(ranks)")
        }
        return reports
    }

    /// Runs `executable` on `ranks` processes and returns what happened, whatever the exit status.
    ///
    /// Use it to check failures (such as the `abort` scenario); ``launch(executable:ranks:arguments:launcher:timeout:)``
    /// is the call for jobs that must succeed. The parameters are those of `launch`.
    /// - Throws: ``MPIRunError`` when `mpirun` (or the launcher's program) or the executable
    ///   cannot be found or started.
    public static func run(executable: String = "MPIHarness", ranks: Int, arguments: [String] = [],
                           launcher: Launcher = .local, timeout: TimeInterval = 60) throws -> Outcome {
        let mpirun: String
        if let wrapper = launcher.program {
            guard FileManager.default.isExecutableFile(atPath: wrapper) else {
                throw MPIRunError.executableMissing(name: wrapper, searched: [wrapper])
            }
            mpirun = wrapper
        } else {
            guard let path = mpirunPath else { throw MPIRunError.mpirunMissing }
            mpirun = path
        }
        let program = try locate(executable: executable)
        let mpirunArguments = ["-np", "\(ranks)", "--oversubscribe", "--bind-to", "none"] + launcher.options
            + [program] + arguments
        let environment = mpirunEnvironment().merging(launcher.environment) { _, added in added }
        return try spawn(mpirun, arguments: mpirunArguments, environment: environment, timeout: timeout)
    }

    // MARK: Finding things

    /// The absolute path of `mpirun`: `$MPIRUN`, else the first match on `PATH`.
    static var mpirunPath: String? {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["MPIRUN"], FileManager.default.isExecutableFile(atPath: explicit) {
            return explicit
        }
        let directories = (environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":")
        return directories.lazy.map { "\($0)/mpirun" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// The path of the executable product `name`, found next to the running test bundle.
    public static func locate(executable name: String) throws -> String {
        let candidates = buildProductDirectories()
        for directory in candidates {
            let path = directory.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw MPIRunError.executableMissing(name: name, searched: candidates.map(\.path))
    }

    /// Directories that may hold the build products: `$ANTICOLLAPSE_BUILD_PRODUCTS`, then the
    /// directory of the `.xctest` bundle (macOS) or test executable (Linux) that is running.
    static func buildProductDirectories() -> [URL] {
        var directories: [URL] = []
        if let explicit = ProcessInfo.processInfo.environment["ANTICOLLAPSE_BUILD_PRODUCTS"] {
            directories.append(URL(fileURLWithPath: explicit, isDirectory: true))
        }
        var running: [URL] = [URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL]
        running.append(Bundle.main.bundleURL)
        if let executable = Bundle.main.executableURL { running.append(executable) }
        running += Bundle.allBundles.map(\.bundleURL)
        for url in running {
            // Inside an .xctest bundle (macOS) the products sit next to the bundle.
            let components = url.pathComponents
            if let bundle = components.lastIndex(where: { $0.hasSuffix(".xctest") }) {
                directories.append(URL(fileURLWithPath: components[..<bundle].joined(separator: "/"),
                                       isDirectory: true).standardizedFileURL)
            }
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
                directories.append(url)
            } else {
                directories.append(url.deletingLastPathComponent())
            }
        }
        var seen = Set<String>()
        return directories.filter { seen.insert($0.path).inserted }
    }

    /// The environment of `mpirun`: ours, without the variables of an enclosing MPI job, plus
    /// Open MPI's permission to run as root (containers and CI run tests as root).
    static func mpirunEnvironment() -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { key, _ in
            !(key.hasPrefix("OMPI_COMM_WORLD") || key.hasPrefix("PMIX_") || key.hasPrefix("PMI_"))
        }
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        return environment
    }

    // MARK: Running a process group with a timeout

    /// Starts `path` in a new process group with output captured in temporary files, waits up to
    /// `timeout` seconds, and kills the group (TERM, then KILL after 3 s) if it is still running.
    ///
    /// - Parameters:
    ///   - path: the absolute path of the program.
    ///   - arguments: its arguments, without the program name.
    ///   - environment: its complete environment.
    ///   - timeout: seconds before the process group is killed.
    /// - Throws: ``MPIRunError/spawn(call:code:)`` when the process cannot be started or waited for.
    public static func spawn(_ path: String, arguments: [String], environment: [String: String],
                             timeout: TimeInterval) throws -> Outcome {
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("mpirun-\(getpid())-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let stdoutPath = scratch.appendingPathComponent("stdout").path
        let stderrPath = scratch.appendingPathComponent("stderr").path

        #if canImport(Darwin)
        var actions: posix_spawn_file_actions_t? = nil
        var attributes: posix_spawnattr_t? = nil
        #else
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        #endif
        try checkSpawn(posix_spawn_file_actions_init(&actions), "posix_spawn_file_actions_init")
        defer { posix_spawn_file_actions_destroy(&actions) }
        try checkSpawn(posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0),
                       "posix_spawn_file_actions_addopen(stdin)")
        try checkSpawn(posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644),
                       "posix_spawn_file_actions_addopen(stdout)")
        try checkSpawn(posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644),
                       "posix_spawn_file_actions_addopen(stderr)")

        try checkSpawn(posix_spawnattr_init(&attributes), "posix_spawnattr_init")
        defer { posix_spawnattr_destroy(&attributes) }
        try checkSpawn(posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP)), "posix_spawnattr_setflags")
        try checkSpawn(posix_spawnattr_setpgroup(&attributes, 0), "posix_spawnattr_setpgroup")

        let argv = ([path] + arguments).map { strdup($0) }
        let envp = environment.map { strdup("\($0.key)=\($0.value)") }
        defer { (argv + envp).forEach { free($0) } }

        let start = Date()
        var pid = pid_t()
        try checkSpawn(posix_spawn(&pid, path, &actions, &attributes, argv + [nil], envp + [nil]), "posix_spawn(\(path))")

        var status: Int32 = 0
        var timedOut = false
        while true {
            let waited = waitpid(pid, &status, WNOHANG)
            if waited == pid { break }
            if waited == -1, errno != EINTR { throw MPIRunError.spawn(call: "waitpid", code: errno) }
            if Date().timeIntervalSince(start) > timeout {
                timedOut = true
                kill(-pid, SIGTERM)
                let grace = Date()
                while waitpid(pid, &status, WNOHANG) == 0, Date().timeIntervalSince(grace) < 3 { usleep(20_000) }
                kill(-pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                break
            }
            usleep(10_000)
        }
        let signal = status & 0x7f
        let exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        let read = { (path: String) in
            (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        }
        return Outcome(exitStatus: exitStatus, timedOut: timedOut, duration: Date().timeIntervalSince(start),
                       standardOutput: read(stdoutPath), standardError: read(stderrPath))
    }

    private static func checkSpawn(_ code: Int32, _ call: String) throws {
        guard code == 0 else { throw MPIRunError.spawn(call: call, code: code) }
    }
}

/// Why an `mpirun` job could not deliver its reports.
public enum MPIRunError: Error, CustomStringConvertible {
    case mpirunMissing
    case executableMissing(name: String, searched: [String])
    case spawn(call: String, code: Int32)
    case timedOut(seconds: TimeInterval, output: String)
    case failed(status: Int32, output: String)
    case badReport(line: String, reason: String)

    public var description: String {
        switch self {
        case .mpirunMissing:
            return "mpirun is not on PATH: install Open MPI (launch/setup installs openmpi-bin and libopenmpi-dev)"
        case let .executableMissing(name, searched):
            return "executable \(name) not found; searched: \(searched.joined(separator: ", ")) "
                + "(build it with `swift build`, or set ANTICOLLAPSE_BUILD_PRODUCTS)"
        case let .spawn(call, code):
            return "\(call) failed: \(String(cString: strerror(code)))"
        case let .timedOut(seconds, output):
            return "mpirun did not finish within \(seconds) s and was killed\n\(output)"
        case let .failed(status, output):
            return "mpirun exited with status \(status)\n\(output)"
        case let .badReport(line, reason):
            return "unexpected rank reports (\(reason)):\n\(line)"
        }
    }
}
