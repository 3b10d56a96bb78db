import XCTest
import Foundation
import _TestSupport

/// What the command-line tests share: the binary, a synthetic dataset, processes started with
/// Open MPI's root permission, waited for with a timeout and their output collected.
class CommandLineTestCase: XCTestCase {
    var root = ""
    var dataset = ""
    var binary = ""

    var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        return environment
    }

    func start(_ executable: String, _ arguments: [String], environment extra: [String: String] = [:],
               directory: String? = nil) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.arguments = arguments
        process.environment = environment.merging(extra) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        return (process, pipe)
    }

    /// Waits for `process` to exit within `timeout` seconds; kills it and fails otherwise.
    func finish(_ process: Process, _ pipe: Pipe, timeout: TimeInterval = 120,
                file: StaticString = #filePath, line: UInt = #line) -> (status: Int32, output: String, seconds: Double) {
        let started = Date()
        let output = LockedText()
        let reader = Thread { output.set(String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)) }
        reader.start()
        while process.isRunning && Date().timeIntervalSince(started) < timeout { usleep(20_000) }
        if process.isRunning {
            kill(-process.processIdentifier, SIGKILL)
            process.terminate()
            XCTFail("still running after \(timeout) s", file: file, line: line)
        }
        process.waitUntilExit()
        while output.value == nil { usleep(5_000) }
        return (process.terminationStatus, output.value ?? "", Date().timeIntervalSince(started))
    }

    func waitForCheckpoint(_ runDirectory: String, step: Int, timeout: TimeInterval = 60) -> Bool {
        let path = runDirectory + String(format: "/checkpoints/ckpt-%08d.h5", step)
        let started = Date()
        while !FileManager.default.fileExists(atPath: path) {
            if Date().timeIntervalSince(started) > timeout { return false }
            usleep(5_000)
        }
        return true
    }

    func childProcesses(of pid: Int32) throws -> [Int32] {
        let text = try String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
        return text.split(separator: " ").compactMap { Int32($0) }.sorted()
    }

    /// Runs the binary with `arguments` (in `directory`) to the end.
    func anticollapse(_ arguments: [String], directory: String? = nil, timeout: TimeInterval = 120,
                      file: StaticString = #filePath, line: UInt = #line) throws -> (status: Int32, output: String) {
        let (process, pipe) = try start(binary, arguments, directory: directory)
        let result = finish(process, pipe, timeout: timeout, file: file, line: line)
        return (result.status, result.output)
    }

    /// mpirun, or a failure when it is not installed.
    func mpirun() throws -> String {
        try XCTUnwrap(["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) },
                      "mpirun is not installed")
    }

    /// The repository's `launch/` directory (this file is Tests/CommandLineTests/…).
    var launchDirectory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("launch").path
    }
}

/// Text set once from another thread.
final class LockedText: @unchecked Sendable {
    private let lock = NSLock()
    private var text: String?
    var value: String? { lock.withLock { text } }
    func set(_ value: String) { lock.withLock { text = value } }
}
