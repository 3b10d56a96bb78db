import XCTest
import Datasets
import Engine
import Foundation
import Imaging
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

    /// The newcomer's path: a folder of PNGs (one sub-folder a class) → `dataset shard` →
    /// `train` → `export --format safetensors`; a corrupt image stops the import naming it, and
    /// `--skip-bad` skips and lists it.
    func testAFolderOfPNGsIsShardedTrainedAndExported() throws {
        let photos = root + "/photos"
        for (label, name) in ["circle", "square"].enumerated() {
            try FileManager.default.createDirectory(atPath: "\(photos)/\(name)", withIntermediateDirectories: true)
            for k in 0..<24 {
                let pixels = (0..<(10 * 10 * 3)).map { UInt8(truncatingIfNeeded: ($0 &* 31 &+ k &* 7) % 200 + label * 50) }
                let png = try PNGEncoder.encode(Image8(width: 10, height: 10, channels: 3, pixels: pixels))
                try Data(png).write(to: URL(fileURLWithPath: String(format: "%@/%@/%03d.png", photos, name, k)))
            }
        }
        try Data("x".utf8).write(to: URL(fileURLWithPath: photos + "/circle/.DS_Store"))
        let arguments = ["dataset", "shard", photos, "--out", root + "/shards", "--name", "photos", "--image-size", "8", "--threads", "2"]
        let shard = try anticollapse(arguments)
        XCTAssertEqual(shard.status, 0, shard.output)
        for text in ["found 48 images in \(photos) (2 class folders)", "classes (label: name): 0: circle, 1: square",
                     "note: ignored 1 files", "shard: 48/48 images", "48 resized"] {
            XCTAssertTrue(shard.output.contains(text), "\(text) missing from:\n\(shard.output)")
        }
        let reshaped = try anticollapse(arguments + ["--overwrite", "--feature-shape", "3,8,8"])
        XCTAssertNotEqual(reshaped.status, 0)
        XCTAssertTrue(reshaped.output.contains("--feature-shape and --storage are for array files"), reshaped.output)
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2]).write(to: URL(fileURLWithPath: photos + "/square/broken.png"))
        let failed = try anticollapse(arguments + ["--overwrite"])
        XCTAssertEqual(failed.status, 1, failed.output)
        XCTAssertTrue(failed.output.contains("error: \(photos)/square/broken.png: libpng"), failed.output)
        let skipped = try anticollapse(arguments + ["--overwrite", "--skip-bad"])
        XCTAssertEqual(skipped.status, 0, skipped.output)
        XCTAssertTrue(skipped.output.contains("skipped \(photos)/square/broken.png: libpng"), skipped.output)
        XCTAssertTrue(skipped.output.contains("skipped 1 unreadable images of 49"), skipped.output)

        let train = try anticollapse([
            "train", "--set", "data.train=\(root)/shards/train", "--set", "data.test=\(root)/shards/test",
            "--set", "model.encoder={type: mlp, widths: [192, 32, 16]}", "--set", "model.projector={type: mlp, widths: [16, 32, 32]}",
            "--set", "schedule.global_batch_size=16", "--set", "schedule.steps=3", "--run-dir", root + "/run", "--blas-threads", "1",
        ])
        XCTAssertEqual(train.status, 0, train.output)
        let export = try anticollapse(["export", root + "/run/checkpoints/ckpt-00000003.h5", "--format", "safetensors",
                                       "--out", root + "/model.safetensors"])
        XCTAssertEqual(export.status, 0, export.output)
        let model = try XCTUnwrap(FileManager.default.contents(atPath: root + "/model.safetensors"))
        XCTAssertGreaterThan(model.count, 192 * 32 * 4, "the first layer's weights alone")
        let sidecar = try String(contentsOfFile: root + "/model.json", encoding: .utf8)
        XCTAssertTrue(sidecar.contains("input_normalization"), sidecar)
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
