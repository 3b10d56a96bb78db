import Foundation
import XCTest
import _TestSupport

/// `train` with `recipe: world_model`, `plan bench`, `plan serve` and `worldmodel eval`, as a
/// user runs them, on a tiny model.
final class WorldModelCommandTests: XCTestCase {
    func run(_ arguments: [String], input: String? = nil) throws -> (status: Int32, output: String, error: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try MPIRun.locate(executable: "anticollapse"))
        process.arguments = arguments
        let output = Pipe(), error = Pipe(), stdin = Pipe()
        process.standardOutput = output; process.standardError = error; process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try stdin.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile(), err = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    func testTrainPlanServeAndEvaluate() throws {
        let root = try temporaryDirectory(for: self).path
        XCTAssertEqual(try run(["env", "collect", "--episodes", "60", "--shards", "1", "--out", root + "/data", "--threads", "1"]).status, 0)
        let config = """
            recipe: world_model
            data: {train: \(root)/data, image_size: 16, channels: 1, validation_fraction: 0.3, prefetch: 1}
            model:
              encoder: {type: convnet, input_channels: 1, image_size: 16, channels: [4, 8]}
              projector: {type: mlp, widths: [8, 16, 8]}
              action_encoder: {type: mlp, widths: [10, 8], batch_norm: false}
              predictor: {type: transformer, depth: 1, heads: 2}
              prediction_projector: {type: mlp, widths: [8, 16, 8]}
            loss: {directions: 16}
            optimizer: {name: adamw, learning_rate: 0.001}
            schedule: {global_batch_size: 8, steps: 3}
            """
        try config.write(toFile: root + "/wm.yaml", atomically: true, encoding: .utf8)
        let train = try run(["train", "--config", root + "/wm.yaml", "--run-dir", root + "/run"])
        XCTAssertEqual(train.status, 0, train.error)
        XCTAssertTrue(train.output.contains("prediction") && train.output.contains("sigreg"), train.output)
        let checkpoint = root + "/run/checkpoints/ckpt-00000003.h5"
        let small = ["--samples", "20", "--elites", "4", "--iterations", "2"]

        let bench = try run(["plan", "bench", "--checkpoint", checkpoint, "--solves", "2"] + small)
        XCTAssertEqual(bench.status, 0, bench.error)
        XCTAssertTrue(bench.output.contains("median") && bench.output.contains("p90"), bench.output)

        // Two frames of any size (8 × 8 RGB and 20 × 20 grey), a malformed request, a reset.
        let rgb = Data(repeating: 200, count: 8 * 8 * 3).base64EncodedString()
        let grey = Data(repeating: 30, count: 20 * 20).base64EncodedString()
        let requests = [
            #"{"observation": {"shape": [8, 8, 3], "dtype": "uint8", "data": "\#(rgb)"}, "goal": {"shape": [20, 20, 1], "dtype": "uint8", "data": "\#(grey)"}}"#,
            #"{"observation": {"shape": [8, 8, 3], "dtype": "uint8", "data": "AAAA"}, "goal": {"shape": [2, 2, 1], "data": "AAAA"}}"#,
            "not json",
            #"{"reset": true}"#,
        ]
        let serve = try run(["plan", "serve", "--checkpoint", checkpoint] + small, input: requests.joined(separator: "\n") + "\n")
        XCTAssertEqual(serve.status, 0, serve.error)
        let replies = serve.output.split(separator: "\n").map { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(replies.count, 4, serve.output)
        let actions = try XCTUnwrap(replies[0]?["actions"] as? [[Double]], serve.output)
        XCTAssertEqual(actions.count, 25)   // 5 blocks × frameskip 5
        XCTAssertTrue(actions.allSatisfy { $0.count == 2 && $0.allSatisfy { abs($0) <= 1 } })
        XCTAssertNotNil(replies[0]?["plan_ms"] as? Double)
        XCTAssertTrue((replies[1]?["error"] as? String)?.contains("observation.data") == true, serve.output)
        XCTAssertNotNil(replies[2]?["error"] as? String)
        XCTAssertEqual(replies[3]?["reset"] as? Bool, true)

        let eval = try run(["worldmodel", "eval", "--checkpoint", checkpoint, "--episodes", "4", "--cross-episodes", "2",
                            "--json", root + "/eval.json"] + small)
        XCTAssertEqual(eval.status, 0, eval.error)
        XCTAssertTrue(eval.output.contains("held_out") && eval.output.contains("expert success 100.0 %"), eval.output)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/eval.json"))) as? [String: Any])
        let heldOut = try XCTUnwrap(report["held_out"] as? [String: Any])
        XCTAssertEqual(heldOut["tasks"] as? Int, 4)
        XCTAssertNotNil((heldOut["planner"] as? [String: Any])?["wilson_95"])
        XCTAssertEqual((heldOut["records"] as? [Any])?.count, 4)
        XCTAssertNotNil(report["cross_room"])

        let bad = try run(["plan", "bench", "--checkpoint", root + "/missing.h5"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.error.contains("missing.h5"), bad.error)
    }
}
