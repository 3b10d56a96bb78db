import XCTest
import Datasets
import Engine
import Foundation
import _TestSupport

/// Faults injected into real runs — a process, or an mpirun job — as a user meets them:
/// kill -9 while a checkpoint is written, SIGTERM and Ctrl-C in the middle of a long step under
/// mpirun, two jobs in one run directory, a corrupt newest checkpoint, a full disk. No fault
/// may lose a checkpoint or leave a half-written one under its final name, and every failure
/// ends every rank, non-zero, without a hang.
final class FaultInjectionTests: CommandLineTestCase {
    override func setUpWithError() throws {
        root = try temporaryDirectory(for: self).path
        dataset = root + "/data"
        try SyntheticData(kind: .vectors, rows: 256, classes: 4, features: 16, seed: 9).write(to: dataset, trainShards: 2)
        binary = try MPIRun.locate(executable: "anticollapse")
    }

    /// A tiny recipe: steps of a millisecond or two (unless a fault slows them).
    func arguments(steps: Int, every: Int, keep: Int = 3, run: String) -> [String] {
        ["train", "--set", "data.train=\(dataset)/train", "--set", "data.test=",
         "--set", "model.encoder={type: mlp, widths: [16, 64, 64]}",
         "--set", "model.projector={type: mlp, widths: [64, 64, 64], last_bias: false}",
         "--set", "schedule.global_batch_size=32", "--set", "schedule.steps=\(steps)",
         "--set", "checkpoint.every_steps=\(every)", "--set", "checkpoint.keep=\(keep)", "--set", "logging.every_steps=1",
         "--blas-threads", "1", "--run-dir", run]
    }

    func checkpointNames(_ run: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints")) ?? []).sorted()
    }

    /// Every `ckpt-*.h5` of `run` reads and verifies.
    func assertCheckpointsValid(_ run: String, file: StaticString = #filePath, line: UInt = #line) {
        let storage = HDF5CheckpointDirectory(directory: run + "/checkpoints")
        for path in (try? storage.list()) ?? [] {
            XCTAssertNoThrow(try storage.read(path), path, file: file, line: line)
        }
    }

    /// Waits until `metrics.jsonl` of `run` holds `records` lines.
    func waitForRecords(_ run: String, _ records: Int, timeout: TimeInterval = 60) -> Bool {
        let started = Date()
        while Date().timeIntervalSince(started) < timeout {
            let text = (try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? ""
            if text.split(separator: "\n").count >= records { return true }
            usleep(20_000)
        }
        return false
    }

    /// kill -9 after the checkpoint file is written but before it is renamed into place: only
    /// a `.tmp` file is left, the previous checkpoint is intact, and the next run resumes from
    /// it (and clears the `.tmp`).
    func testKillDuringACheckpointWriteLosesNothing() throws {
        let run = root + "/killed"
        let (process, pipe) = try start(binary, arguments(steps: 10, every: 2, run: run),
                                        environment: ["ANTICOLLAPSE_FAULTS": "kill_during_checkpoint_write=4"])
        let killed = finish(process, pipe, timeout: 60)
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, killed.output)
        XCTAssertEqual(checkpointNames(run), ["ckpt-00000002.h5", "ckpt-00000004.h5.tmp"])
        assertCheckpointsValid(run)

        let (again, againPipe) = try start(binary, arguments(steps: 10, every: 2, run: run))
        let resumed = finish(again, againPipe, timeout: 60)
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("resumed from \(run)/checkpoints/ckpt-00000002.h5"), resumed.output)
        XCTAssertEqual(checkpointNames(run), ["ckpt-00000006.h5", "ckpt-00000008.h5", "ckpt-00000010.h5"])
        assertCheckpointsValid(run)
    }

    /// SIGTERM to the launch wrapper of an mpirun job whose steps take 2 s (mpirun alone kills
    /// the ranks 1 s after a SIGTERM): every rank finishes its step, a checkpoint is written,
    /// the job exits 0. Then Ctrl-C (SIGINT to the whole process group) the same way.
    func testSignalsMidStepUnderMPIRunFinishTheStepCheckpointAndExitZero() throws {
        let graceful = launchDirectory + "/run-graceful", mpirun = try mpirun()
        for (signal, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "Ctrl-C")] {
            let run = root + "/signal-\(signal)"
            let (process, pipe) = try start(graceful, [mpirun, "-np", "2", "--oversubscribe", "--bind-to", "none", binary]
                                            + arguments(steps: 100, every: 0, run: run),
                                            environment: ["ANTICOLLAPSE_FAULTS": "step_seconds=2"])
            XCTAssertTrue(waitForRecords(run, 1), "\(name): no first step")
            usleep(700_000)   // in the middle of the second step
            let signalled = Date()
            if signal == SIGINT {
                XCTAssertEqual(getpgid(process.processIdentifier), process.processIdentifier, "the test's child leads its group")
                kill(-process.processIdentifier, SIGINT)
            } else {
                kill(process.processIdentifier, SIGTERM)
            }
            let result = finish(process, pipe, timeout: 60)
            XCTAssertEqual(result.status, 0, "\(name): \(result.output)")
            XCTAssertTrue(result.output.contains("stop requested"), "\(name): \(result.output)")
            XCTAssertLessThan(Date().timeIntervalSince(signalled), 30, name)
            let newest = try HDF5CheckpointDirectory(directory: run + "/checkpoints").newestValid { XCTFail($0) }
            let checkpoint = try XCTUnwrap(newest?.checkpoint, "\(name): no checkpoint: \(result.output)")
            XCTAssertGreaterThanOrEqual(checkpoint.step, 2, name)
            XCTAssertLessThan(checkpoint.step, 100, name)
            XCTAssertEqual(checkpoint.worldSize, 2)
        }
    }

    /// A second job in a run directory that a job is using is refused at once, on every rank,
    /// naming the first job's PID; the first job carries on undisturbed.
    func testASecondJobInTheSameRunDirectoryIsRefused() throws {
        let run = root + "/shared"
        let (first, firstPipe) = try start(binary, arguments(steps: 400, every: 50, run: run),
                                           environment: ["ANTICOLLAPSE_FAULTS": "step_seconds=0.05"])
        XCTAssertTrue(waitForRecords(run, 2), "the first job does not train")
        let config = try String(contentsOfFile: run + "/config.yaml", encoding: .utf8)
        let (second, secondPipe) = try start(try mpirun(), ["-np", "2", "--oversubscribe", "--bind-to", "none", binary]
                                             + arguments(steps: 10, every: 5, run: run))
        let refused = finish(second, secondPipe, timeout: 30)
        XCTAssertNotEqual(refused.status, 0, refused.output)
        XCTAssertTrue(refused.output.contains("in use by another job"), refused.output)
        XCTAssertTrue(refused.output.contains("pid \(first.processIdentifier)"), refused.output)
        XCTAssertLessThan(refused.seconds, 20)
        XCTAssertTrue(first.isRunning, "the first job was disturbed")

        first.terminate()
        let result = finish(first, firstPipe, timeout: 60)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(try String(contentsOfFile: run + "/config.yaml", encoding: .utf8), config)
        let steps = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int
        }
        XCTAssertFalse(steps.isEmpty)
        XCTAssertEqual(steps, Array(1...steps.count), "metrics.jsonl was clobbered")
        assertCheckpointsValid(run)
    }

    /// A corrupt newest checkpoint is skipped with a warning naming it; the run resumes from the
    /// one before and completes.
    func testACorruptNewestCheckpointIsSkipped() throws {
        let run = root + "/corrupt"
        let (process, pipe) = try start(binary, arguments(steps: 6, every: 2, run: run))
        XCTAssertEqual(finish(process, pipe, timeout: 60).status, 0)
        let newest = run + "/checkpoints/ckpt-00000006.h5"
        var bytes = try XCTUnwrap(FileManager.default.contents(atPath: newest))
        for offset in stride(from: bytes.count - 4000, to: bytes.count - 100, by: 97) { bytes[offset] ^= 0x5A }
        try bytes.write(to: URL(fileURLWithPath: newest))

        let (again, againPipe) = try start(binary, arguments(steps: 10, every: 2, run: run))
        let result = finish(again, againPipe, timeout: 60)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("skipping \(newest)"), result.output)
        XCTAssertTrue(result.output.contains("resumed from \(run)/checkpoints/ckpt-00000004.h5"), result.output)
        XCTAssertNoThrow(try HDF5CheckpointDirectory(directory: run + "/checkpoints").read(run + "/checkpoints/ckpt-00000010.h5"))
    }

    /// A disk that fills up (a 320 KiB tmpfs, as root) fails the job on every rank, non-zero and
    /// without a hang, naming the file; every checkpoint left reads, and no `.tmp` remains.
    func testAFullDiskFailsEveryRankAndKeepsTheCheckpointsWritten() throws {
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root") }
        let mountPoint = root + "/tiny"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=320k", "tmpfs", mountPoint]
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here (no CAP_SYS_ADMIN?)") }
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = [mountPoint]
            try? umount.run()
            umount.waitUntilExit()
        }
        let run = mountPoint + "/run"
        let (process, pipe) = try start(try mpirun(), ["-np", "2", "--oversubscribe", "--bind-to", "none", binary]
                                        + arguments(steps: 200, every: 2, keep: 100, run: run))
        let result = finish(process, pipe, timeout: 60)
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains(run), result.output)
        XCTAssertTrue(result.output.lowercased().contains("space") || result.output.contains("cannot write")
                      || result.output.contains("ckpt-"), result.output)
        let names = checkpointNames(run)
        XCTAssertFalse(names.contains { $0.hasSuffix(".tmp") }, "\(names)")
        XCTAssertFalse(names.isEmpty, "no checkpoint fitted at all: \(result.output)")
        assertCheckpointsValid(run)
    }
}
