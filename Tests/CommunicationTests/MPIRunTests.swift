import Foundation
import XCTest
import _TestSupport

/// The process-group launcher behind ``MPIRun``.
final class MPIRunTests: XCTestCase {
    func testTimeoutKillsTheWholeProcessGroup() throws {
        // The shell prints the pid of a background child, then waits for it.
        let outcome = try MPIRun.spawn("/bin/sh", arguments: ["-c", "sleep 30 & echo $!; wait"],
                                       environment: ProcessInfo.processInfo.environment, timeout: 0.5)
        XCTAssertTrue(outcome.timedOut)
        XCTAssertLessThan(outcome.duration, 5)
        XCTAssertNotEqual(outcome.exitStatus, 0)
        let child = try XCTUnwrap(pid_t(outcome.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)))
        let deadline = Date().addingTimeInterval(3)
        // The orphaned child is gone once init has reaped it.
        while kill(child, 0) == 0, Date() < deadline { usleep(20_000) }
        XCTAssertNotEqual(kill(child, 0), 0, "background child \(child) survived the timeout")
    }

    func testExitStatusAndOutputAreCaptured() throws {
        let outcome = try MPIRun.spawn("/bin/sh", arguments: ["-c", "echo out; echo err >&2; exit 7"],
                                       environment: [:], timeout: 10)
        XCTAssertFalse(outcome.timedOut)
        XCTAssertEqual(outcome.exitStatus, 7)
        XCTAssertEqual(outcome.standardOutput, "out\n")
        XCTAssertEqual(outcome.standardError, "err\n")
    }

    func testMissingExecutableIsReportedClearly() {
        XCTAssertThrowsError(try MPIRun.locate(executable: "NoSuchExecutable")) { error in
            XCTAssertTrue("\(error)".contains("NoSuchExecutable not found"), "\(error)")
        }
    }
}
