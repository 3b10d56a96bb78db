import Foundation
import XCTest
import Datasets
import _TestSupport

/// Clips: which exist, that N ranks see the global batch of one process, the episode split,
/// and the loader's clips against the shards' rows.
final class ClipSamplerTests: XCTestCase {
    func testClipsFitTheirEpisodes() throws {
        let lengths = [3, 20, 9, 14, 8]
        let shape = try ClipShape(historyFrames: 2, predictedFrames: 1, frameskip: 3)
        let sampler = try ClipSampler(episodeLengths: lengths, shape: shape, globalBatchSize: 4, seed: 1)
        XCTAssertEqual(sampler.clipCount, [0, 11, 0, 5, 0].reduce(0, +))
        var seen = Set<Clip>()
        for i in 0..<sampler.clipCount {
            let clip = sampler.clip(i)
            XCTAssertLessThanOrEqual(clip.start + shape.frames * shape.frameskip, lengths[clip.episode] - 1)
            seen.insert(clip)
        }
        XCTAssertEqual(seen.count, sampler.clipCount, "every clip once")
        XCTAssertThrowsError(try ClipSampler(episodeLengths: [5], shape: shape, globalBatchSize: 1, seed: 1))
    }

    func testRanksTogetherTakeTheGlobalBatchOfOneProcess() throws {
        let lengths = (0..<40).map { 10 + ($0 * 7) % 23 }
        let shape = try ClipShape(historyFrames: 3, predictedFrames: 1, frameskip: 2)
        let sampler = try ClipSampler(episodeLengths: lengths, shape: shape, globalBatchSize: 10, seed: 5)
        for worldSize in [1, 2, 3, 4] {
            let perRank = try runRanks(worldSize) { communicator in
                (0..<6).map { sampler.clips(step: $0, rank: communicator.rank, worldSize: communicator.size) }
            }
            for step in 0..<6 {
                XCTAssertEqual(perRank.flatMap { $0[step] }, sampler.clips(step: step, rank: 0, worldSize: 1), "world size \(worldSize), step \(step)")
            }
        }
    }

    func testEpisodeSplitIsDisjointAndComplete() throws {
        let (train, validation) = try ClipSampler.split(episodeCount: 100, validationFraction: 0.1, seed: 2)
        XCTAssertEqual(validation.count, 10)
        XCTAssertEqual(Set(train).union(validation), Set(0..<100))
        XCTAssertTrue(Set(train).isDisjoint(with: validation))
        let sampler = try ClipSampler(episodeLengths: [Int](repeating: 12, count: 100), episodes: validation,
                                      shape: try ClipShape(historyFrames: 1, predictedFrames: 1, frameskip: 1), globalBatchSize: 5, seed: 0)
        XCTAssertTrue((0..<sampler.clipCount).allSatisfy { validation.contains(sampler.clip($0).episode) })
    }

    func testLoaderClipsHoldTheShardRowsOnEveryWorldSize() throws {
        let directory = try temporaryDirectory(for: self).path
        for shard in 0..<3 {
            let range = GlobalBatchSampler.split(12, rank: shard, parts: 3)
            let path = (directory as NSString).appendingPathComponent(ShardWriter.shardName("walk", index: shard, count: 3))
            try TrajectoryShardWriter.write(TrajectoryShardTests.episodes(first: range.lowerBound, count: range.count, pixels: true),
                                            to: path, index: shard, count: 3, attributes: TrajectoryShardTests.attributes)
        }
        let dataset = try TrajectoryDataset(directory)
        let shape = try ClipShape(historyFrames: 2, predictedFrames: 1, frameskip: 1)
        let sampler = try ClipSampler(episodeLengths: dataset.episodes.map(\.length), shape: shape, globalBatchSize: 6, seed: 4)
        // Rendered frames: every pixel is the state's step value (y − 0.5).
        let render: @Sendable (ArraySlice<Float>, inout ArraySlice<UInt8>) -> Void = { state, out in
            for i in out.indices { out[i] = UInt8(state[state.startIndex + 1] - 0.5) }
        }
        let single = try ClipLoader(dataset: dataset, sampler: sampler, frames: .stored, prefetchDepth: 0)
        let one = try single.batch(step: 1)
        XCTAssertEqual(one.clips.count, 6)
        for (i, clip) in one.clips.enumerated() {
            for k in 0..<3 {
                let t = clip.start + k
                XCTAssertEqual(Array(one.states[((i * 3 + k) * 2)..<((i * 3 + k) * 2 + 2)]), [Float(clip.episode), Float(t) + 0.5])
                // Stored pixel 0 of step t of episode e is (16e + t) mod 256, scaled to [−1, 1].
                XCTAssertEqual(one.observations[(i * 3 + k) * 16], Float((clip.episode * 16 + t) % 256) / 127.5 - 1)
                XCTAssertEqual(one.actions[(i * 3 + k) * 2 + 1], 0.25, "a real action, not an episode's last row")
            }
        }
        for worldSize in [2, 3] {
            let batches = try runRanks(worldSize) { communicator in
                let loader = try ClipLoader(dataset: dataset, sampler: sampler, rank: communicator.rank, worldSize: communicator.size,
                                            frames: .rendered(shape: [2, 2, 1], render: render), startStep: 1, threads: 2)
                defer { loader.stop() }
                return try loader.next()
            }
            XCTAssertEqual(batches.flatMap(\.clips), one.clips)
            XCTAssertEqual(batches.flatMap(\.states), one.states)
            XCTAssertEqual(batches.flatMap(\.actions), one.actions)
            let expected = one.states.enumerated().filter { $0.offset % 2 == 1 }.flatMap { [Float](repeating: ($0.element - 0.5) / 127.5 - 1, count: 4) }
            XCTAssertEqual(batches.flatMap(\.observations), expected)
        }
    }
}

extension ClipSamplerTests {
    func testLoaderDroppedWithoutStopIsFreed() throws {
        let directory = try temporaryDirectory(for: self).path
        let path = (directory as NSString).appendingPathComponent(ShardWriter.shardName("walk", index: 0, count: 1))
        try TrajectoryShardWriter.write(TrajectoryShardTests.episodes(first: 0, count: 6), to: path, index: 0, count: 1,
                                        attributes: TrajectoryShardTests.attributes)
        let dataset = try TrajectoryDataset(directory)
        let sampler = try ClipSampler(episodeLengths: dataset.episodes.map(\.length), shape: try ClipShape(historyFrames: 1, predictedFrames: 1, frameskip: 1),
                                      globalBatchSize: 2, seed: 0)
        weak var dropped: ClipLoader?
        do {
            let loader = try ClipLoader(dataset: dataset, sampler: sampler, frames: .rendered(shape: [1, 1, 1], render: { _, _ in }))
            dropped = loader
            XCTAssertEqual(try loader.next().clips.count, 2)
        }
        for _ in 0..<40 where dropped != nil { Thread.sleep(forTimeInterval: 0.01) }
        XCTAssertNil(dropped, "the background thread must not keep the loader alive")
    }
}
