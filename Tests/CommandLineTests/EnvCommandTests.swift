import XCTest
import Datasets
import HDF5
import _TestSupport

/// `anticollapse env collect | show` and `dataset verify | inspect` on trajectory shards, as a
/// user runs them.
final class EnvCommandTests: XCTestCase {
    /// Runs the binary with `arguments`; returns the exit status, stdout and stderr.
    func run(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try MPIRun.locate(executable: "anticollapse"))
        process.arguments = arguments
        let output = Pipe(), error = Pipe()
        process.standardOutput = output; process.standardError = error
        try process.run()
        let out = output.fileHandleForReading.readDataToEndOfFile(), err = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    func testCollectVerifyShowInspect() throws {
        let root = try temporaryDirectory(for: self).path, data = root + "/two_room"
        let collect = try run(["env", "collect", "--episodes", "40", "--shards", "2", "--out", data, "--seed", "3", "--threads", "2"])
        XCTAssertEqual(collect.status, 0, collect.error)
        XCTAssertTrue(collect.output.contains("40 episodes") && collect.output.contains("episodes/s"), collect.output)
        XCTAssertNotEqual(try run(["env", "collect", "--episodes", "40", "--shards", "2", "--out", data]).status, 0, "refuses to overwrite")

        let verify = try run(["dataset", "verify", data])
        XCTAssertEqual(verify.status, 0, verify.error)
        XCTAssertTrue(verify.output.contains("valid trajectory dataset") && verify.output.contains("episodes 40"), verify.output)

        let show = try run(["env", "show", data, "--episode", "39", "--png", root + "/strip.png", "--coverage", root + "/map.svg"])
        XCTAssertEqual(show.status, 0, show.error)
        let png = try Data(contentsOf: URL(fileURLWithPath: root + "/strip.png"))
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        XCTAssertTrue(try String(contentsOfFile: root + "/map.svg", encoding: .utf8).hasPrefix("<svg"))

        let shard = data + "/trajectories-00001-of-00002.h5"
        let inspect = try run(["inspect", shard])
        XCTAssertTrue(inspect.output.contains("trajectory shard: 20 episodes"), inspect.output)
        XCTAssertEqual(try run(["dataset", "verify", shard]).status, 0, "a later shard verifies alone")

        var actions = try HDF5File.withFile(shard) { try $0.read(Float.self, from: "action").values }
        actions[2 * 3 + 1] = -7
        try HDF5File.withFile(shard, mode: .readWrite) { try $0.write(actions, to: "action") }
        let bad = try run(["dataset", "verify", data])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.error.contains("trajectories-00001-of-00002.h5") && bad.error.contains("row 3 of /action"), bad.error)
    }
}
