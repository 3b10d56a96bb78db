import Communication
import Datasets
import Engine
import Foundation
import HDF5
import JointEmbedding
import XCTest
import _TestSupport

/// Checkpoints as state groups: format 2 round-trips every group and its attributes; format 1
/// (written by the code before state groups) still evaluates and resumes, bit for bit.
final class CheckpointFormatTests: XCTestCase {
    static let fixtureData = "/tmp/anticollapse-format1-fixture/data"

    func fixture(_ name: String) -> String {
        Bundle.module.url(forResource: "Fixtures/format1/\(name)", withExtension: nil)!.path
    }

    /// Writes the dataset the fixture's config names (see Fixtures/format1/README.md).
    func writeFixtureData() throws {
        try? FileManager.default.removeItem(atPath: Self.fixtureData)
        try SyntheticData(kind: .vectors, rows: 96, testRows: 32, classes: 4, features: 16, seed: 3)
            .write(to: Self.fixtureData, trainShards: 3)
    }

    /// Resuming the format-1 `ckpt-00000004.h5` gives, bit for bit, the run that resumes the
    /// same state written as format 2; and that run is the fixture's own `ckpt-00000008.h5`, to
    /// the rounding of the BLAS kernels (the fixture was written on a CPU whose OpenBLAS took
    /// another sgemm kernel: on an AVX-512 machine the sums round differently; with
    /// `OPENBLAS_CORETYPE=Haswell` they match to the bit).
    func testFormatOneCheckpointResumesBitwise() throws {
        try writeFixtureData()
        let storage = HDF5CheckpointDirectory(directory: (fixture("ckpt-00000004.h5") as NSString).deletingLastPathComponent)
        let start = try storage.read(fixture("ckpt-00000004.h5"))
        let expected = try storage.read(fixture("ckpt-00000008.h5"))
        XCTAssertEqual(start.formatVersion, 1)
        XCTAssertEqual(Array(start.groups.keys), [Checkpoint.modelGroup])
        let configuration = try TrainingConfiguration.load(file: fixture("config.yaml"))
        let directory = try temporaryDirectory(for: self)
        func trainer(_ name: String) throws -> Trainer<JointEmbeddingRecipe> {
            try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(),
                        runDirectory: directory.appendingPathComponent(name).path, log: { _ in })
        }
        // From format 1, and from the same state as format 2 (written right after the restore).
        let fromFormatOne = try trainer("format1")
        try fromFormatOne.restore(start, from: fixture("ckpt-00000004.h5"))
        XCTAssertEqual(fromFormatOne.step, 4)
        let rewritten = try fromFormatOne.makeCheckpoint()
        XCTAssertEqual(rewritten.formatVersion, 2)
        let fromFormatTwo = try trainer("format2")
        try fromFormatTwo.restore(rewritten, from: "format 2 of ckpt-00000004.h5")
        for run in [fromFormatOne, fromFormatTwo] {
            let summary = try run.train()
            XCTAssertEqual(summary.step, 8)
        }
        let resumed = try fromFormatOne.makeCheckpoint(), reference = try fromFormatTwo.makeCheckpoint()
        XCTAssertEqual(resumed.optimizerStepCount, expected.optimizerStepCount)
        XCTAssertEqual(resumed.tensors.keys.sorted(), expected.tensors.keys.sorted())
        for key in expected.tensors.keys.sorted() {
            XCTAssertEqual(resumed.tensors[key]?.values, reference.tensors[key]?.values,
                           "\(key): resuming format 1 differs from resuming the same state as format 2")
            let (ours, theirs) = (resumed.tensors[key]?.values ?? [], expected.tensors[key]?.values ?? [])
            XCTAssertEqual(ours.count, theirs.count, key)
            let scale = theirs.map { abs(Double($0)) }.max() ?? 0
            let error = zip(ours, theirs).map { abs(Double($0) - Double($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(error, 1e-3 * max(scale, 1e-3), "\(key) differs from the format-1 run: \(error) (largest \(scale))")
        }
    }

    func testFormatOneCheckpointStillEvaluates() throws {
        // The model group of a format-1 file is the model: what `eval` and `report` restore.
        let checkpoint = try HDF5CheckpointDirectory(directory: "/").read(fixture("ckpt-00000008.h5"))
        XCTAssertEqual(checkpoint.step, 8)
        XCTAssertNotNil(checkpoint.tensors["params/encoder.0.weight"])
        XCTAssertNotNil(checkpoint.tensors["buffers/encoder.1.running_mean"])
        XCTAssertNotNil(checkpoint.tensors["optimizer/encoder.0.weight/mu"])
    }

    func testFormatTwoRoundTripsEveryGroupAndCoversItsAttributes() throws {
        try writeFixtureData()
        let configuration = try TrainingConfiguration.load(file: fixture("config.yaml"))
        let run = try temporaryDirectory(for: self).appendingPathComponent("run").path
        let trainer = try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(), runDirectory: run,
                                  log: { _ in })
        _ = try trainer.train(stopAfter: 3)
        let written = try trainer.makeCheckpoint()
        // The online probe (labels are there) is a state group of its own, with its optimizer's step count.
        XCTAssertEqual(written.groupNames, [Checkpoint.modelGroup, "probe"])
        XCTAssertEqual(written.groupStepCounts["probe"], 3)
        XCTAssertNotNil(written.groups["probe"]?["params/probe.weight"])
        XCTAssertNotNil(written.groups["probe"]?["optimizer/probe.weight/exp_avg"])
        let storage = HDF5CheckpointDirectory(directory: run + "/checkpoints")
        let path = try storage.write(written)
        let read = try storage.read(path)
        XCTAssertEqual(read, written)
        XCTAssertEqual(read.formatVersion, Checkpoint.formatVersion)

        // h5py sees the model at the root (as in format 1) and the probe under /probe.
        try HDF5File.withFile(path) { file in
            XCTAssertTrue(try file.contains("params/encoder.0.weight"))
            XCTAssertTrue(try file.contains("probe/params/probe.weight"))
        }

        // The checksum covers every root attribute, like every tensor ...
        for edit in [{ (c: inout Checkpoint) in c.optimizerStepCount = 99 }, { $0.groupScalars["probe"]?["window_rows"] = 1 },
                     { $0.groupStepCounts["probe"] = 1 }, { $0.config += " " }] {
            var edited = written
            edit(&edited)
            XCTAssertNotEqual(edited.checksum, written.checksum)
        }
        // ... and the file's raw header every byte: an edited attribute is caught before HDF5
        // parses the file (it can hang on a corrupt one).
        try HDF5File.withFile(path, mode: .readWrite) { file in
            try file.setAttribute("optimizer_step_count", to: .int64(99))
        }
        XCTAssertThrowsError(try storage.read(path)) { error in
            XCTAssertTrue("\(error)".contains("do not match their checksum"), "\(error)")
        }
    }

    func testResumeRestoresTheProbeGroup() throws {
        try writeFixtureData()
        let configuration = try TrainingConfiguration.load(file: fixture("config.yaml"))
        let root = try temporaryDirectory(for: self)
        func trainer(_ name: String) throws -> Trainer<JointEmbeddingRecipe> {
            try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(),
                        runDirectory: root.appendingPathComponent(name).path, log: { _ in })
        }
        let whole = try trainer("whole")
        _ = try whole.train()
        let first = try trainer("parts")
        _ = try first.train(stopAfter: 5)
        let second = try trainer("parts")
        XCTAssertNotNil(try second.resume(.automatic))
        _ = try second.train()
        XCTAssertTrue(Checkpoint.sameTensors(try second.makeCheckpoint().groups, try whole.makeCheckpoint().groups),
                      "a resumed run ends with the state of an uninterrupted one, probe included")
    }
}
