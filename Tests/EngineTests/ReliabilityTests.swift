import Communication
import Datasets
import Engine
import Foundation
import HDF5
import JointEmbedding
import XCTest
import _TestSupport

/// The engine's defences against faults, in process (the process-level faults — kill -9,
/// signals under mpirun, two jobs, a full disk — are in CommandLineTests/FaultInjectionTests):
/// pruning, the resume choice and its agreement between ranks, divergence, corrupt
/// checkpoints, the run directory's lock, and resumed metrics.
final class ReliabilityTests: XCTestCase {
    var root = ""
    var dataset = ""

    override func setUpWithError() throws {
        root = try temporaryDirectory(for: self).path
        dataset = root + "/data"
        try SyntheticData(kind: .vectors, rows: 96, testRows: 40, classes: 4, features: 16, seed: 3).write(to: dataset, trainShards: 2)
    }

    /// A small VICReg run with the online probe; a checkpoint every step, one kept.
    func configuration(_ extra: [String] = []) throws -> TrainingConfiguration {
        try TrainingConfiguration.load(yaml: "", overrides: [
            "data.train=\(dataset)/train", "data.test=", "data.prefetch=1",
            "model.encoder={type: mlp, widths: [16, 32, 16]}",
            "model.projector={type: mlp, widths: [16, 32, 32], last_bias: false}",
            "schedule.global_batch_size=16", "schedule.steps=20", "schedule.warmup_epochs=0",
            "optimizer.learning_rate=0.2", "logging.every_steps=4", "logging.diagnostics_every=0",
            "checkpoint.every_steps=1", "checkpoint.keep=1",
        ] + extra)
    }

    /// Trains on `worldSize` in-process ranks; returns each rank's outcome (its error's text on failure).
    @discardableResult
    func train(_ configuration: TrainingConfiguration, _ run: String, worldSize: Int = 1, resume: ResumeMode = .none,
               overwrite: Bool = false, stopAfter: Int? = nil,
               storage: (@Sendable (Int) -> any CheckpointStorage)? = nil) throws -> [Result<TrainingSummary, TrainingFailureText>] {
        try ThreadCommunicator.run(worldSize: worldSize) { communicator in
            do {
                let trainer = try Trainer(configuration: configuration, communicator: communicator, runDirectory: run,
                                          checkpoints: storage?(communicator.rank), log: { _ in })
                try trainer.resume(resume, overwrite: overwrite)
                return .success(try trainer.train(stopAfter: stopAfter))
            } catch {
                return .failure(TrainingFailureText(text: "\(error)"))
            }
        }
    }

    func names(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    // MARK: 1. Pruning

    /// An empty file and a directory named like later checkpoints, beside valid ones: pruning
    /// keeps the checkpoint it just wrote and leaves what it does not recognise alone (it used
    /// to sort names and delete the newest real checkpoint, and a directory recursively).
    func testPruningKeepsTheCheckpointJustWrittenAndLeavesOtherFilesAlone() throws {
        let run = root + "/prune", checkpoints = run + "/checkpoints"
        let configuration = try configuration()
        XCTAssertNoThrow(try train(configuration, run, stopAfter: 2)[0].get())
        XCTAssertEqual(names(checkpoints), ["ckpt-00000002.h5"])
        _ = FileManager.default.createFile(atPath: checkpoints + "/ckpt-00000050.h5", contents: Data())
        try FileManager.default.createDirectory(atPath: checkpoints + "/ckpt-00000060.h5", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: checkpoints + "/ckpt-00000060.h5/notes.txt", contents: Data("mine".utf8))

        let summary = try train(configuration, run, resume: .automatic, stopAfter: 3)[0].get()
        XCTAssertEqual(summary.step, 5)
        XCTAssertEqual(names(checkpoints), ["ckpt-00000005.h5", "ckpt-00000050.h5", "ckpt-00000060.h5"])
        XCTAssertEqual(try HDF5CheckpointDirectory(directory: checkpoints).read(checkpoints + "/ckpt-00000005.h5").step, 5)
        XCTAssertEqual(names(checkpoints + "/ckpt-00000060.h5"), ["notes.txt"])
    }

    /// `keep` counts valid checkpoints only; those newer than the one written (an earlier run's)
    /// and the protected one are never deleted.
    func testPruneCountsValidCheckpointsAndNeverDeletesNewerOnes() throws {
        let directory = root + "/unit"
        let storage = HDF5CheckpointDirectory(directory: directory)
        func write(_ step: Int) throws -> String {
            try storage.write(Checkpoint(step: step, epoch: 0, stepInEpoch: step, seed: 1, globalBatchSize: 4, worldSize: 1,
                                         optimizerName: "sgd", optimizerStepCount: step, config: "", codeVersion: "test",
                                         tensors: ["params/w": ([2], [Float(step), 1])]))
        }
        let paths = try [3, 4, 5, 9].map(write)
        _ = FileManager.default.createFile(atPath: directory + "/ckpt-00000007.h5", contents: Data("junk".utf8))
        XCTAssertEqual(try storage.prune(keep: 2, written: paths[2]).map { ($0 as NSString).lastPathComponent },
                       ["ckpt-00000004.h5", "ckpt-00000003.h5"])
        XCTAssertEqual(names(directory), ["ckpt-00000005.h5", "ckpt-00000007.h5", "ckpt-00000009.h5"])
        let six = try write(6)
        XCTAssertEqual(try storage.prune(keep: 1, written: six, protecting: paths[2]), [])
        XCTAssertEqual(names(directory), ["ckpt-00000005.h5", "ckpt-00000006.h5", "ckpt-00000007.h5", "ckpt-00000009.h5"])
    }

    /// `--resume none` into a directory holding checkpoints is refused (the new run's checkpoints
    /// would mix with them, and pruning used to delete each new one); `overwrite` removes them.
    func testResumeNoneRefusesADirectoryWithCheckpointsUnlessOverwriting() throws {
        let run = root + "/none", configuration = try configuration()
        XCTAssertNoThrow(try train(configuration, run, stopAfter: 3)[0].get())
        let refused = try train(configuration, run, worldSize: 2, resume: .none, stopAfter: 1)
        for outcome in refused {
            guard case let .failure(error) = outcome else { return XCTFail("--resume none was not refused") }
            XCTAssertTrue(error.text.contains("--resume none") && error.text.contains("--overwrite"), error.text)
        }
        XCTAssertEqual(names(run + "/checkpoints"), ["ckpt-00000003.h5"])
        let summary = try train(configuration, run, resume: .none, overwrite: true, stopAfter: 1)[0].get()
        XCTAssertEqual(summary.step, 1)
        XCTAssertEqual(names(run + "/checkpoints"), ["ckpt-00000001.h5"])
    }

    // MARK: 4. Ranks resume one file

    /// Rank 0 chooses the checkpoint and broadcasts its path; the ranks compare checksums. A
    /// run directory that differs between ranks (not shared) fails on every rank.
    func testRanksThatSeeDifferentCheckpointsRefuseToResume() throws {
        let configuration = try configuration()
        let a = root + "/a", b = root + "/b"
        XCTAssertNoThrow(try train(configuration, a, stopAfter: 4)[0].get())
        // The same steps with another learning rate (not a resume key): another ckpt-4.
        XCTAssertNoThrow(try train(try self.configuration(["optimizer.learning_rate=0.1"]), b, stopAfter: 4)[0].get())
        // Rank 1 sees another disk under the same path (node-local storage).
        let storage: @Sendable (Int) -> any CheckpointStorage = { rank in
            NodeLocalStorage(shared: HDF5CheckpointDirectory(directory: a + "/checkpoints"),
                             local: rank == 0 ? a + "/checkpoints" : b + "/checkpoints")
        }
        let outcomes = try train(configuration, root + "/both", worldSize: 2, resume: .automatic, stopAfter: 1, storage: storage)
        for (rank, outcome) in outcomes.enumerated() {
            guard case let .failure(error) = outcome else { return XCTFail("rank \(rank) resumed") }
            XCTAssertTrue(error.text.contains("read different contents at \(a)/checkpoints/ckpt-00000004.h5"), error.text)
        }
        // A rank that does not have rank 0's file fails, and so do the others.
        try FileManager.default.removeItem(atPath: b + "/checkpoints/ckpt-00000004.h5")
        let missing = try train(configuration, root + "/both", worldSize: 2, resume: .automatic, stopAfter: 1, storage: storage)
        for outcome in missing {
            guard case let .failure(error) = outcome else { return XCTFail("a rank resumed without the file") }
            XCTAssertTrue(error.text.contains("ckpt-00000004.h5"), error.text)
        }
    }

    /// A checkpoint file whose name and `step` attribute disagree (copied or renamed) is rejected.
    func testACheckpointWhoseNameAndStepDisagreeIsRejected() throws {
        let run = root + "/renamed", checkpoints = run + "/checkpoints"
        XCTAssertNoThrow(try train(try configuration(), run, stopAfter: 2)[0].get())
        try FileManager.default.copyItem(atPath: checkpoints + "/ckpt-00000002.h5", toPath: checkpoints + "/ckpt-00000009.h5")
        let storage = HDF5CheckpointDirectory(directory: checkpoints)
        assertThrowsError(try storage.read(checkpoints + "/ckpt-00000009.h5"), containing: "name says step 9", "holds step 2")
        var warnings: [String] = []
        XCTAssertEqual(try storage.newestValid { warnings.append($0) }?.checkpoint.step, 2)
        XCTAssertEqual(warnings.count, 1)
    }

    // MARK: 5. Divergence

    /// A run that diverges (the learning rate raised a million-fold on resume) fails naming the
    /// last checkpoint whose weights still gave a finite loss — the same path on every rank —
    /// and pruning has kept that file.
    func testDivergenceNamesTheLastGoodCheckpointOnEveryRank() throws {
        let run = root + "/diverge", checkpoints = run + "/checkpoints"
        XCTAssertNoThrow(try train(try configuration(["optimizer.name=sgd"]), run, stopAfter: 3)[0].get())
        let outcomes = try train(try configuration(["optimizer.name=sgd", "optimizer.learning_rate=1e18"]), run, worldSize: 2,
                                 resume: .automatic)
        var messages: [String] = []
        for outcome in outcomes {
            guard case let .failure(error) = outcome else { return XCTFail("the run did not diverge") }
            messages.append(error.text)
        }
        XCTAssertEqual(Set(messages).count, 1, "ranks report differently: \(messages)")
        let good = try XCTUnwrap(messages[0].range(of: #"last good checkpoint is \S+\.h5"#, options: .regularExpression)
            .map { String(messages[0][$0].dropFirst("last good checkpoint is ".count)) }, messages[0])
        let checkpoint = try HDF5CheckpointDirectory(directory: checkpoints).read(good)
        XCTAssertNil(checkpoint.firstNonFiniteTensor)
        XCTAssertGreaterThanOrEqual(checkpoint.step, 3, messages[0])
        // Nothing written holds NaN or infinity.
        for path in try HDF5CheckpointDirectory(directory: checkpoints).list() {
            XCTAssertNil(try HDF5CheckpointDirectory(directory: checkpoints).read(path).firstNonFiniteTensor, path)
        }
    }

    // MARK: 10. Every checkpoint corrupt

    /// When checkpoints exist but none can be used, `--resume auto` refuses, listing each file
    /// and why, instead of starting over at step 0; `--resume none` may start over.
    func testEveryCheckpointCorruptRefusesToStartOver() throws {
        let run = root + "/corrupt", checkpoints = run + "/checkpoints"
        let configuration = try configuration(["checkpoint.keep=2"])
        XCTAssertNoThrow(try train(configuration, run, stopAfter: 2)[0].get())
        let first = checkpoints + "/ckpt-00000001.h5", second = checkpoints + "/ckpt-00000002.h5"
        let bytes = try XCTUnwrap(FileManager.default.contents(atPath: second))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: second))   // truncated
        try Data(repeating: 0x5A, count: bytes.count).write(to: URL(fileURLWithPath: first))   // overwritten
        for outcome in try train(configuration, run, worldSize: 2, resume: .automatic, stopAfter: 1) {
            guard case let .failure(error) = outcome else { return XCTFail("resumed or restarted over corrupt checkpoints") }
            XCTAssertTrue(error.text.contains("no usable checkpoint"), error.text)
            XCTAssertTrue(error.text.contains(first) && error.text.contains(second), error.text)
        }
        XCTAssertEqual(try train(configuration, run, resume: .none, stopAfter: 1)[0].get().step, 1)
    }

    // MARK: 6. The run directory's lock

    /// A second owner of a run directory is refused at once, naming the holder; the lock goes
    /// with its owner.
    func testARunDirectoryHasOneOwner() throws {
        let run = root + "/locked"
        var first: RunDirectory? = try RunDirectory.prepare(run, communicator: SingleProcessCommunicator())
        assertThrowsError(try RunDirectory.prepare(run, communicator: SingleProcessCommunicator()),
                          containing: "in use by another job", "pid \(getpid())", ProcessInfo.processInfo.hostName, run + "/.lock")
        XCTAssertNotNil(first)
        first = nil
        XCTAssertNoThrow(try RunDirectory.prepare(run, communicator: SingleProcessCommunicator()))
    }

    /// A run directory that cannot be one is named before any work, with what is wrong.
    func testRunDirectoryProblemsAreNamed() throws {
        _ = FileManager.default.createFile(atPath: root + "/file", contents: Data())
        assertThrowsError(try RunDirectory.prepare(root + "/file", communicator: SingleProcessCommunicator()),
                          containing: root + "/file", "a file is in the way")
        try FileManager.default.createDirectory(atPath: root + "/run", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: root + "/run/checkpoints", contents: Data())
        assertThrowsError(try RunDirectory.prepare(root + "/run", communicator: SingleProcessCommunicator()),
                          containing: root + "/run/checkpoints", "a file is in the way")
        assertThrowsError(try RunDirectory.prepare(root + "/file/sub", communicator: SingleProcessCommunicator()),
                          containing: root + "/file", "a file is in the way")
    }

    // MARK: 9. Resumed metrics

    /// Stopped and resumed between two records, a run writes the records of an uninterrupted
    /// one: the online probe's window is part of the checkpoint (timings aside).
    func testResumedRunWritesTheSameMetrics() throws {
        let configuration = try configuration(["checkpoint.every_steps=6", "checkpoint.keep=5", "schedule.steps=12",
                                               "data.test=\(dataset)/test", "logging.diagnostics_every=4"])
        XCTAssertNoThrow(try train(configuration, root + "/straight")[0].get())
        XCTAssertNoThrow(try train(configuration, root + "/resumed", stopAfter: 6)[0].get())
        XCTAssertNoThrow(try train(configuration, root + "/resumed", resume: .automatic)[0].get())
        let timings: Set<String> = ["samples_per_second", "data_wait_fraction", "collective_fraction"]
        func records(_ run: String) throws -> [[String: Double]] {
            try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
                let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                return object.filter { !timings.contains($0.key) }.compactMapValues { ($0 as? NSNumber)?.doubleValue }
            }
        }
        let straight = try records(root + "/straight"), resumed = try records(root + "/resumed")
        XCTAssertEqual(straight.map { $0["step"] }, [4, 8, 12])
        XCTAssertNotNil(straight[1]["probe_accuracy"], "the probe reports")
        XCTAssertNotNil(straight[1]["probe_test_accuracy"], "the probe is evaluated on the test split")
        XCTAssertEqual(resumed, straight)
    }
}

/// Checkpoints under `shared`'s paths whose bytes come from `local` (as a rank on another node
/// without a shared file system would read them).
struct NodeLocalStorage: CheckpointStorage {
    let shared: HDF5CheckpointDirectory
    let local: String
    func path(step: Int) -> String { shared.path(step: step) }
    func write(_ checkpoint: Checkpoint, beforeRename: (() -> Void)?) throws -> String {
        try shared.write(checkpoint, beforeRename: beforeRename)
    }
    func list() throws -> [String] { try shared.list() }
    func read(_ path: String) throws -> Checkpoint {
        try HDF5CheckpointDirectory(directory: local).read(path.replacingOccurrences(of: shared.directory, with: local))
    }
    func remove(_ path: String) throws { try shared.remove(path) }
    func peek(_ path: String) throws -> Int { try shared.peek(path) }
}

/// An error's text, carried out of an in-process rank.
struct TrainingFailureText: Error, Sendable {
    let text: String
}
