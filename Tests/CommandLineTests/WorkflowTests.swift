import XCTest
import Datasets
import Engine
import Foundation
import _TestSupport

/// The daily workflow's traps (issue 18): relative paths in a saved config, data that look
/// labelled or are images in disguise, and the commands that show and export what a run is.
final class WorkflowTests: CommandLineTestCase {
    override func setUpWithError() throws {
        root = try temporaryDirectory(for: self).path
        dataset = root + "/data"
        try SyntheticData(kind: .vectors, rows: 128, testRows: 32, classes: 4, features: 16, seed: 4).write(to: dataset, trainShards: 1)
        binary = try MPIRun.locate(executable: "anticollapse")
    }

    /// Trained with relative dataset paths, a checkpoint is evaluated (and exported) from
    /// another working directory: the saved config holds absolute paths.
    func testACheckpointWorksFromAnotherDirectory() throws {
        let train = try anticollapse([
            "train", "--set", "data.train=data/train", "--set", "data.test=data/test",
            "--set", "model.encoder={type: mlp, widths: [16, 32, 16]}", "--set", "model.projector={type: mlp, widths: [16, 32, 32]}",
            "--set", "schedule.global_batch_size=32", "--set", "schedule.steps=4", "--run-dir", "run", "--blas-threads", "1",
        ], directory: root)
        XCTAssertEqual(train.status, 0, train.output)
        let config = try String(contentsOfFile: root + "/run/config.yaml", encoding: .utf8)
        XCTAssertTrue(config.contains("train: \"\(root)/data/train\""), config)
        let checkpoint = root + "/run/checkpoints/ckpt-00000004.h5"
        let elsewhere = try temporaryDirectory(for: self).path
        let eval = try anticollapse(["eval", "--checkpoint", checkpoint, "--probe-epochs", "2"], directory: elsewhere)
        XCTAssertEqual(eval.status, 0, eval.output)
        XCTAssertTrue(eval.output.contains("linear probe"), eval.output)
        let export = try anticollapse(["export", checkpoint, "--out", elsewhere + "/model.safetensors"], directory: elsewhere)
        XCTAssertEqual(export.status, 0, export.output)
        let sidecar = try String(contentsOfFile: elsewhere + "/model.json", encoding: .utf8)
        XCTAssertTrue(sidecar.contains("input_normalization"), sidecar)
        // A dataset that is gone is named, with the options that replace it.
        try FileManager.default.moveItem(atPath: root + "/data", toPath: root + "/moved")
        let missing = try anticollapse(["eval", "--checkpoint", checkpoint], directory: elsewhere)
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.output.contains("\(root)/data/train") && missing.output.contains("--train"), missing.output)
    }

    /// `dataset shard` says when (rows, H, W) became images, when 8-bit values do not span
    /// 0…255, and when labels were not read but a labels file sits beside the input.
    func testShardSaysWhatItDidWithAmbiguousData() throws {
        func numpy(_ name: String, descr: String, shape: [Int], bytes: [UInt8]) throws {
            let shapeText = "(" + shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? ",)" : ")")
            var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
            while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
            header += "\n"
            var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0])
            data.append(contentsOf: Array(header.utf8))
            data.append(contentsOf: bytes)
            try data.write(to: URL(fileURLWithPath: root + "/" + name))
        }
        try numpy("digits.npy", descr: "|u1", shape: [40, 8, 8], bytes: (0..<(40 * 64)).map { UInt8($0 % 17) })
        try numpy("digits_labels.npy", descr: "|u1", shape: [40], bytes: (0..<40).map { UInt8($0 % 10) })
        let result = try anticollapse(["dataset", "shard", root + "/digits.npy", "--out", root + "/shards", "--name", "digits"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("1-channel images [1, 8, 8]"), result.output)
        XCTAssertTrue(result.output.contains("pixel_scale is 1/16"), result.output)
        XCTAssertTrue(result.output.contains("digits_labels.npy beside it look like labels"), result.output)
    }

    /// `config show` prints the resolved config with every default and the overrides.
    func testConfigShowPrintsEveryKey() throws {
        let result = try anticollapse(["config", "show", "--set", "seed=7", "--set", "objective.name=sigreg"])
        XCTAssertEqual(result.status, 0, result.output)
        for key in ["seed: 7", "name: \"sigreg\"", "online_probe_learning_rate: 0.002", "every_steps: 100", "global_batch_size: 256"] {
            XCTAssertTrue(result.output.contains(key), "\(key) missing from:\n\(result.output)")
        }
        let bad = try anticollapse(["config", "show", "--set", "schedule.steps=2.5"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("schedule.steps: must be a whole number"), bad.output)
    }
}
