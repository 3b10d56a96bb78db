import Foundation
import XCTest
import Datasets
import HDF5
import _TestSupport

/// Trajectory shards: the layout as written, what opening and `verify` check, and bad input
/// (truncated shard, overlapping episodes, NaN states, actions out of bounds) named by file and row.
final class TrajectoryShardTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = try temporaryDirectory(for: self).path
    }

    /// Episodes `first ..< first + count` of a made-up 2-D walk: episode `e` has `5 + e % 7` rows.
    static func episodes(first: Int, count: Int, pixels: Bool = false) -> TrajectoryEpisodes {
        var out = TrajectoryEpisodes(stateDimension: 2, actionDimension: 2, firstEpisode: first,
                                     frameShape: pixels ? [4, 4, 1] : nil)
        for e in first..<(first + count) {
            let length = 5 + e % 7
            for t in 0..<length {
                out.states += [Float(e), Float(t) + 0.5]
                out.actions += t == length - 1 ? [0, 0] : [Float((e + t) % 3 - 1) * 0.5, 0.25]
                if pixels { out.pixels! += (0..<16).map { UInt8((e * 16 + t + $0) % 256) } }
            }
            out.lengths.append(length)
            out.successes.append(e % 2 == 0)
        }
        return out
    }

    static let attributes = TrajectoryAttributes(environment: "walk", parameters: ["speed": 5], frameSize: 4,
                                                 seed: 3, maxSteps: 10, policy: "made up")

    /// Writes `episodes` episodes as `shards` shards; returns the paths.
    func write(episodes: Int, shards: Int, pixels: Bool = false) throws -> [String] {
        try (0..<shards).map { shard in
            let range = GlobalBatchSampler.split(episodes, rank: shard, parts: shards)
            let path = (directory as NSString).appendingPathComponent(ShardWriter.shardName("walk", index: shard, count: shards))
            try TrajectoryShardWriter.write(Self.episodes(first: range.lowerBound, count: range.count, pixels: pixels),
                                            to: path, index: shard, count: shards, attributes: Self.attributes)
            return path
        }
    }

    func testLayoutAsDocumented() throws {
        let paths = try write(episodes: 10, shards: 2, pixels: true)
        try HDF5File.withFile(paths[1]) { file in
            XCTAssertEqual(try file.attribute("format"), .string("anticollapse-trajectories"))
            XCTAssertEqual(try file.attribute("layout_version"), .int64(1))
            XCTAssertEqual(try file.attribute("environment"), .string("walk"))
            XCTAssertEqual(try file.attribute("env_speed"), .double(5))
            XCTAssertEqual(try file.attribute("first_episode"), .int64(5))
            let lengths = try file.read(Int64.self, from: "episode_length").values
            XCTAssertEqual(lengths, (5..<10).map { Int64(5 + $0 % 7) })
            XCTAssertEqual(try file.read(Int64.self, from: "episode_offset").values.first, 0)
            let rows = Int(lengths.reduce(0, +))
            XCTAssertEqual(try file.info("state").shape, [rows, 2])
            XCTAssertEqual(try file.info("pixels").shape, [rows, 4, 4, 1])
            XCTAssertEqual(try file.read(Int64.self, from: "episode").values.first, 5)
            XCTAssertEqual(try file.read(Int64.self, from: "step").values.prefix(3), [0, 1, 2])
        }
        let dataset = try TrajectoryDataset(directory)
        XCTAssertEqual(dataset.episodes.count, 10)
        XCTAssertEqual([dataset.episodes[7].shard, dataset.episodes[7].offset, dataset.episodes[7].length], [1, (5 + 5) + (5 + 6), 5], "episodes 5 and 6 (10 and 11 rows) come first in shard 1")
        XCTAssertEqual(dataset.frameShape, [4, 4, 1])
        XCTAssertTrue(TrajectoryDataset.isTrajectoryShard(directory))
        let report = try TrajectoryVerifier.verify(directory)
        XCTAssertEqual(report.episodeCount, 10)
        XCTAssertEqual(report.rowCount, (0..<10).map { 5 + $0 % 7 }.reduce(0, +))
        XCTAssertEqual(report.successRate, 0.5)
        XCTAssertEqual(report.stateRange[0], 0...9)
    }

    func testTruncatedShardNamesTheFile() throws {
        let paths = try write(episodes: 6, shards: 2)
        let data = try Data(contentsOf: URL(fileURLWithPath: paths[1]))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: paths[1]))
        assertThrowsError(try TrajectoryVerifier.verify(directory), containing: "walk-00001-of-00002.h5")
    }

    /// Rewrites dataset `name` of `path` with `values`.
    func overwrite<T: HDF5Scalar>(_ path: String, _ name: String, _ values: [T]) throws {
        try HDF5File.withFile(path, mode: .readWrite) { try $0.write(values, to: name) }
    }

    func testOverlappingEpisodeOffsetsNameFileAndRow() throws {
        let paths = try write(episodes: 6, shards: 2)
        var offsets = try HDF5File.withFile(paths[0]) { try $0.read(Int64.self, from: "episode_offset").values }
        offsets[2] -= 2
        try overwrite(paths[0], "episode_offset", offsets)
        assertThrowsError(try TrajectoryVerifier.verify(directory), containing: "walk-00000-of-00002.h5", "row 2 of /episode_offset", "overlaps")
    }

    func testNaNStateNamesFileAndRow() throws {
        let paths = try write(episodes: 6, shards: 2)
        var states = try HDF5File.withFile(paths[1]) { try $0.read(Float.self, from: "state").values }
        states[2 * 7 + 1] = .nan
        try overwrite(paths[1], "state", states)
        assertThrowsError(try TrajectoryVerifier.verify(directory), containing: "walk-00001-of-00002.h5", "row 7 of /state", "nan")
    }

    func testActionOutOfBoundsNamesFileAndRow() throws {
        let paths = try write(episodes: 6, shards: 2)
        var actions = try HDF5File.withFile(paths[0]) { try $0.read(Float.self, from: "action").values }
        actions[2 * 4] = 1.5
        try overwrite(paths[0], "action", actions)
        assertThrowsError(try TrajectoryVerifier.verify(directory), containing: "walk-00000-of-00002.h5", "row 4 of /action", "1.5")
    }

    func testEpisodeColumnsMustAgreeWithTheTable() throws {
        let paths = try write(episodes: 4, shards: 1)
        var steps = try HDF5File.withFile(paths[0]) { try $0.read(Int64.self, from: "step").values }
        steps[3] = 9
        try overwrite(paths[0], "step", steps)
        assertThrowsError(try TrajectoryVerifier.verify(directory), containing: "walk-00000-of-00001.h5", "row 3 of /episode, /step")
    }

    func testImageShardIsNotATrajectoryShard() throws {
        let rows = try SyntheticData(kind: .vectors, rows: 8, features: 3).make().train
        try ShardWriter.write(rows, to: directory, name: "set", shardCount: 1, attributes: .describing(rows, source: "test"))
        XCTAssertFalse(TrajectoryDataset.isTrajectoryShard(directory))
        assertThrowsError(try TrajectoryDataset(directory), containing: "set-00000-of-00001.h5", "not a trajectory shard")
    }
}
