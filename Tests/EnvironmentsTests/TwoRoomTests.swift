import Foundation
import XCTest
import Datasets
import Environments
import HDF5
import Imaging
import _TestSupport

/// TwoRoom against `Fixtures/two_room_fixture.h5`, recorded from stable-worldmodel 0.1.1 by
/// `Fixtures/make_two_room_fixture.py`: states exactly in `Float`, frames within one grey level.
final class TwoRoomTests: XCTestCase {
    static let fixturePath = Bundle.module.url(forResource: "Fixtures/two_room_fixture", withExtension: "h5")!.path

    /// Reads `name` from the fixture as `Float`.
    func floats(_ name: String) throws -> (shape: [Int], values: [Float]) {
        try HDF5File.withFile(Self.fixturePath) { try $0.read(Float.self, from: name) }
    }

    /// Replays every rollout of `group` (swm's actions) and compares each state bit for bit.
    func replay(_ group: String, checkSuccess: Bool) throws {
        let (shape, actions) = try floats("\(group)/actions")
        let states = try floats("\(group)/states").values
        let starts = try floats("\(group)/start").values, targets = try floats("\(group)/target").values
        let lengths = try HDF5File.withFile(Self.fixturePath) { try $0.read(Int64.self, from: "\(group)/length").values }
        let success = try HDF5File.withFile(Self.fixturePath) { try $0.read(UInt8.self, from: "\(group)/success").values }
        let (rollouts, steps) = (shape[0], shape[1])
        var compared = 0
        for r in 0..<rollouts {
            var env = TwoRoom()
            try env.reset(state: [starts[2 * r], starts[2 * r + 1]], goal: [targets[2 * r], targets[2 * r + 1]])
            XCTAssertEqual(env.state, [states[r * (steps + 1) * 2], states[r * (steps + 1) * 2 + 1]])
            for t in 0..<Int(lengths[r]) {
                let a = (r * steps + t) * 2
                env.step([actions[a], actions[a + 1]])
                let s = (r * (steps + 1) + t + 1) * 2
                XCTAssertEqual(env.state, [states[s], states[s + 1]], "\(group) rollout \(r) step \(t)")
                if env.state != [states[s], states[s + 1]] { return }
                if checkSuccess { XCTAssertEqual(env.isSuccess, success[r * steps + t] != 0, "\(group) rollout \(r) step \(t) success") }
                compared += 1
            }
        }
        XCTAssertGreaterThan(compared, 500)
    }

    func testExpertRolloutsReproduceSwmStatesExactly() throws {
        try replay("expert", checkSuccess: true)
    }

    func testWallBorderAndClippingReproduceSwmStatesExactly() throws {
        try replay("random", checkSuccess: false)
    }

    func testNoiselessExpertActionsEqualSwm() throws {
        let (shape, directions) = try floats("expert/directions")
        let states = try floats("expert/states").values, targets = try floats("expert/target").values
        let lengths = try HDF5File.withFile(Self.fixturePath) { try $0.read(Int64.self, from: "expert/length").values }
        let policy = ExpertPolicy()
        let steps = shape[1]
        var doorPhases = 0
        for r in 0..<shape[0] {
            let target = SIMD2(targets[2 * r], targets[2 * r + 1])
            for t in 0..<Int(lengths[r]) {
                let s = (r * (steps + 1) + t) * 2
                let agent = SIMD2(states[s], states[s + 1])
                let ours = policy.direction(agent: agent, target: target)
                let a = (r * steps + t) * 2
                XCTAssertEqual([ours.x, ours.y], [directions[a], directions[a + 1]], "rollout \(r) step \(t) at \(agent)")
                if (agent.x > 112) != (target.x > 112) { doorPhases += 1 }
            }
        }
        XCTAssertGreaterThan(doorPhases, 20, "the fixture exercises the door waypoint")
    }

    func testFramesWithinOneGreyLevelOfSwm() throws {
        let (shape, rgb) = try HDF5File.withFile(Self.fixturePath) { try $0.read(UInt8.self, from: "frames/rgb") }
        let states = try floats("frames/state").values
        let frameValues = 224 * 224 * 3
        var frame = [UInt8]()
        var worst = 0, differing = 0
        for f in 0..<shape[0] {
            TwoRoom.renderFrame(agent: SIMD2(states[2 * f], states[2 * f + 1]), into: &frame)
            for i in 0..<frameValues {
                let d = abs(Int(frame[i]) - Int(rgb[f * frameValues + i]))
                worst = max(worst, d); differing += d > 0 ? 1 : 0
            }
        }
        XCTAssertLessThanOrEqual(worst, 1, "max abs difference over \(shape[0]) frames")
        print("TwoRoom frames vs swm: max |difference| \(worst), values differing \(differing) of \(shape[0] * frameValues)")
    }

    func testAreaObservationMatchesTorchAreaInterpolation() throws {
        let (shape, rgb) = try HDF5File.withFile(Self.fixturePath) { try $0.read(UInt8.self, from: "frames/rgb") }
        let area = try floats("frames/area64").values
        let format = try ObservationFormat(size: 64, channels: 3)
        let frameValues = 224 * 224 * 3
        var worst: Float = 0
        for f in 0..<shape[0] {
            let observation = format.observation(of: Array(rgb[(f * frameValues)..<((f + 1) * frameValues)]), frameSize: 224)
            for i in 0..<format.valueCount { worst = max(worst, abs(Float(observation[i]) - area[f * format.valueCount + i])) }
        }
        XCTAssertLessThanOrEqual(worst, 0.5 + 1e-3, "our rounded area average vs torch's F.interpolate(mode=\"area\")")
    }

    func testResetDistributionMatchesSwm() throws {
        let swmAgents = try floats("resets/agent").values, swmTargets = try floats("resets/target").values
        let n = swmAgents.count / 2
        var env = TwoRoom()
        var ours: [Float] = [], oursTargets: [Float] = []
        for e in 0..<n {
            env.reset(seed: 3, episode: UInt64(e))
            ours += env.state; oursTargets += env.goal
        }
        for (label, swm, mine) in [("agent", swmAgents, ours), ("target", swmTargets, oursTargets)] {
            for c in 0..<2 {
                let a = stride(from: c, to: swm.count, by: 2).map { swm[$0] }, b = stride(from: c, to: mine.count, by: 2).map { mine[$0] }
                XCTAssertGreaterThanOrEqual(b.min()!, 14); XCTAssertLessThanOrEqual(b.max()!, 209)
                let meanA = a.reduce(0, +) / Float(n), meanB = b.reduce(0, +) / Float(n)
                // Standard error of a mean of n uniforms on 195 pixels: 195 / sqrt(12 n) ≈ 1.3.
                XCTAssertEqual(meanA, meanB, accuracy: 6, "\(label) coordinate \(c) mean")
            }
        }
        let inWall = { (xs: [Float]) in stride(from: 0, to: xs.count, by: 2).filter { xs[$0] >= 100 && xs[$0] <= 124 }.count }
        XCTAssertEqual(inWall(swmAgents), 0); XCTAssertEqual(inWall(ours), 0)
        // The target is not constrained: about 25/195 of the draws fall in the wall band, in both.
        XCTAssertEqual(Double(inWall(oursTargets)) / Double(n), Double(inWall(swmTargets)) / Double(n), accuracy: 0.04)
        XCTAssertGreaterThan(inWall(oursTargets), 0)
    }

    func testResetIsAFunctionOfSeedAndEpisode() throws {
        var a = TwoRoom(), b = TwoRoom()
        a.reset(seed: 9, episode: 4); b.reset(seed: 9, episode: 4)
        XCTAssertEqual(a, b)
        b.reset(seed: 9, episode: 5)
        XCTAssertNotEqual(a, b)
        XCTAssertThrowsError(try a.reset(state: [1, .nan], goal: [3, 4]))
        XCTAssertThrowsError(try a.reset(state: [1], goal: [3, 4]))
    }

    func testNoisyExpertReachesMostTargetsAndStaysInBounds() throws {
        let collector = TrajectoryCollector(policy: ExpertPolicy(actionNoise: 2), maxSteps: 100, seed: 1)
        let episodes = try collector.episodes(0..<64, threads: 2)
        XCTAssertEqual(episodes.episodeCount, 64)
        XCTAssertTrue(episodes.actions.allSatisfy { $0 >= -1 && $0 <= 1 })
        XCTAssertTrue(episodes.states.allSatisfy { $0 >= 14 && $0 <= 209 }, "reset draws in [14, 209], steps clamp to [21, 203]")
        let rate = Double(episodes.successes.filter { $0 }.count) / 64
        XCTAssertGreaterThan(rate, 0.5, "success rate of the noisy expert")
        // The same episodes whatever the number of threads.
        XCTAssertEqual(try collector.episodes(0..<64, threads: 1), episodes)
        XCTAssertEqual(try collector.episodes(10..<12, threads: 3).states, Array(episodes.states[(episodes.offsets[10] * 2)..<(episodes.offsets[12] * 2)]))
    }

    func testGreyObservationIsLuma() throws {
        var frame = [UInt8]()
        TwoRoom.renderFrame(agent: [60, 112], into: &frame)
        let rgb = try ObservationFormat(size: 32, channels: 3).observation(of: frame, frameSize: 224)
        let grey = try ObservationFormat(size: 32, channels: 1).observation(of: frame, frameSize: 224)
        for i in 0..<(32 * 32) {
            let luma = 0.299 * Double(rgb[3 * i]) + 0.587 * Double(rgb[3 * i + 1]) + 0.114 * Double(rgb[3 * i + 2])
            XCTAssertEqual(Double(grey[i]), luma, accuracy: 0.51)
        }
        XCTAssertThrowsError(try ObservationFormat(size: 64, channels: 2))
    }
}

/// The clip loader's renderer (background observation + resampling of the dot's window)
/// against resampling the whole frame, and the PNG encoder's structure.
final class ObservationRendererTests: XCTestCase {
    func testWindowedRendererEqualsWholeFrameAreaAverage() throws {
        for format in [try ObservationFormat(size: 64, channels: 3), try ObservationFormat(size: 50, channels: 1),
                       try ObservationFormat(size: 224, channels: 3)] {
            let render = format.renderer(for: TwoRoom())
            var output = [UInt8](repeating: 0, count: format.valueCount)[...]
            var frame = [UInt8]()
            for (x, y) in [(21, 21), (203, 203), (99.5, 49), (112.3, 40.7), (14, 209), (150.77, 96.13)] as [(Float, Float)] {
                render([x, y][...], &output)
                TwoRoom.renderFrame(agent: [x, y], into: &frame)
                XCTAssertEqual(Array(output), format.observation(of: frame, frameSize: 224), "\(format) at (\(x), \(y))")
            }
        }
    }
}

/// The PNG encoder: signature, header fields, chunk checksums (the IEND CRC is fixed by the
/// standard), and a strip's layout.
final class PNGEncoderTests: XCTestCase {
    func testChunksAndChecksums() throws {
        let image = try Image8(width: 3, height: 2, channels: 3, pixels: (0..<18).map { UInt8($0 * 10) })
        let png = try PNGEncoder.encode(image)
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        XCTAssertEqual(Array(png[12..<16]), Array("IHDR".utf8))
        XCTAssertEqual(Array(png[16..<29]), [0, 0, 0, 3, 0, 0, 0, 2, 8, 2, 0, 0, 0])
        XCTAssertEqual(Array(png.suffix(12)), [0, 0, 0, 0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82])
        XCTAssertEqual(PNGEncoder.crc32(Array("IEND".utf8)), 0xAE42_6082)
        XCTAssertEqual(PNGEncoder.crc32(Array("123456789".utf8)), 0xCBF4_3926, "the CRC-32 check value")
        let grey = try PNGEncoder.encode(try Image8(width: 2, height: 2, channels: 1, pixels: [0, 255, 255, 0]))
        XCTAssertEqual(grey[25], 0, "colour type 0 (grey)")
        XCTAssertThrowsError(try Image8(width: 2, height: 2, channels: 3, pixels: [1, 2]))
    }

    func testStripPlacesImagesSideBySide() throws {
        let a = try Image8(width: 2, height: 1, channels: 1, pixels: [1, 2]), b = try Image8(width: 1, height: 1, channels: 1, pixels: [3])
        XCTAssertEqual(try Image8.horizontalStrip([a, b], gap: 1, background: 9).pixels, [1, 2, 9, 3])
    }
}

/// Collection to shards: what is written verifies and reads back as the episodes collected.
final class CollectionTests: XCTestCase {
    func testCollectedShardsVerifyAndHoldTheEpisodes() throws {
        let directory = try temporaryDirectory(for: self).path
        let collector = TrajectoryCollector(policy: ExpertPolicy(actionNoise: 2), maxSteps: 30, seed: 8,
                                            pixels: try ObservationFormat(size: 16, channels: 1))
        let paths = try collector.collect(episodes: 25, shardCount: 3, to: directory, threads: 2)
        XCTAssertEqual(paths.map { ($0 as NSString).lastPathComponent }, (0..<3).map { "trajectories-0000\($0)-of-00003.h5" })
        let report = try TrajectoryVerifier.verify(directory)
        XCTAssertEqual(report.episodeCount, 25)
        XCTAssertEqual(report.frameShape, [16, 16, 1])
        XCTAssertLessThanOrEqual(report.lengthRange.upperBound, 31)
        let dataset = try TrajectoryDataset(directory)
        let expected = try collector.episodes(0..<25, threads: 1)
        var states: [Float] = []
        for shard in 0..<3 { states += try dataset.columns(ofShard: shard).states }
        XCTAssertEqual(states, expected.states)
        XCTAssertEqual(dataset.episodes.map(\.length), expected.lengths)
        XCTAssertEqual(try dataset.pixels(shard: 0, rows: [0, 1]), Array(expected.pixels![0..<512]))
        assertThrowsError(try collector.collect(episodes: 2, shardCount: 3, to: directory), containing: "2 episodes cannot fill 3 shards")
    }
}

/// Which 64 × 64 rendering matches the area average of swm's 224 frame: measured, printed, and
/// the README's figures bounded.
final class DirectRenderingTests: XCTestCase {
    func testAreaAverageMatchesTheDownsampleAndPointSamplingDoesNot() throws {
        let (shape, states) = try HDF5File.withFile(TwoRoomTests.fixturePath) { try $0.read(Float.self, from: "frames/state") }
        let area = try HDF5File.withFile(TwoRoomTests.fixturePath) { try $0.read(Float.self, from: "frames/area64").values }
        let format = try ObservationFormat(size: 64, channels: 3)
        let render = format.renderer(for: TwoRoom())
        var output = [UInt8](repeating: 0, count: format.valueCount)[...]
        var worstArea: Float = 0, worstDirect: Float = 0, sumDirect: Float = 0
        for f in 0..<shape[0] {
            render([states[2 * f], states[2 * f + 1]][...], &output)
            let direct = TwoRoom.renderDirect(agent: [states[2 * f], states[2 * f + 1]], size: 64)
            for i in 0..<format.valueCount {
                let reference = area[f * format.valueCount + i]
                worstArea = max(worstArea, abs(Float(output[output.startIndex + i]) - reference))
                let d = abs(Float(direct[i]) - reference)
                worstDirect = max(worstDirect, d); sumDirect += d
            }
        }
        let meanDirect = sumDirect / Float(shape[0] * format.valueCount)
        print(String(format: "64×64 vs torch area average of swm frames: area-averaged max %.2f; point-sampled max %.1f, mean %.3f",
                     worstArea, worstDirect, meanDirect))
        XCTAssertLessThanOrEqual(worstArea, 0.5 + 1e-3)
        XCTAssertGreaterThan(worstDirect, 50, "point sampling misses partial wall coverage")
    }
}
