// `anticollapse env …`: collect trajectory datasets from an environment's expert, look at
// them, and time the clip loader. The work is done by the Environments, Datasets and Imaging
// modules; these commands parse options and print.
import ArgumentParser
import Datasets
import Dispatch
import Environments
import Foundation
import Imaging

/// The `env` command group.
struct Env: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Environments (TwoRoom) and their trajectory datasets.",
        subcommands: [Collect.self, Show.self, BenchData.self])
}

/// The size of all regular files under `path`, in bytes.
private func diskBytes(_ path: String) -> Int {
    let manager = FileManager.default
    let names = (try? manager.subpathsOfDirectory(atPath: path)) ?? []
    return names.reduce(0) { total, name in
        let attributes = try? manager.attributesOfItem(atPath: (path as NSString).appendingPathComponent(name))
        return total + ((attributes?[.size] as? NSNumber)?.intValue ?? 0)
    }
}

/// Seconds since `start` (a `DispatchTime` in nanoseconds).
private func seconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

extension Env {
    /// `env collect`: the expert's episodes as trajectory shards.
    struct Collect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Roll out the expert and write trajectory shards.",
            discussion: "Episodes run on all cores (episode e draws its start, goal and noise from (seed, e), so the data do not depend on the thread count). Defaults follow swm 0.1.1's TwoRoom data: 100 steps at most, noise 2, no repeats (swm ignores action_repeat_prob).")

        @Option(help: "The environment (\(EnvironmentRegistry.names.joined(separator: ", "))).") var env = TwoRoom.name
        @Option(help: "Episodes to collect (swm's TwoRoom dataset: 10000).") var episodes = 10_000
        @Option(help: "Actions an episode at most.") var maxSteps = 100
        @Option(help: "The output directory.") var out: String
        @Option(help: "Shard files.") var shards = 10
        @Option(help: "Seed of resets and noise.") var seed: UInt64 = 0
        @Option(help: "Stored frames: none (rendered on the fly from states), 64 or 224.") var pixels = "none"
        @Option(help: "Stored frame channels (3 or 1).") var channels = 3
        @Option(help: "Gaussian noise standard deviation of each action component.") var actionNoise: Float = 2
        @Option(help: "Probability of repeating the previous action (swm 0.1.1 effectively 0).") var repeatProbability = 0.0
        @Option(help: "Collecting threads (default: all cores).") var threads = ProcessInfo.processInfo.activeProcessorCount
        @Flag(help: "Replace the .h5 files already in --out.") var overwrite = false

        func validate() throws {
            guard ["none", "64", "224"].contains(pixels) else { throw ValidationError("--pixels \(pixels): use none, 64 or 224") }
            guard threads >= 1 else { throw ValidationError("--threads \(threads) must be at least 1") }
        }

        func run() throws {
            try reportingErrors {
                let existing = ((try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []).filter { $0.hasSuffix(".h5") }
                if !existing.isEmpty {
                    guard overwrite else { throw DatasetError.file(path: out, problem: "already holds shards (\(existing.sorted()[0]) …); pass --overwrite to replace them") }
                    for name in existing { try FileManager.default.removeItem(atPath: (out as NSString).appendingPathComponent(name)) }
                }
                let format = pixels == "none" ? nil : try ObservationFormat(size: Int(pixels)!, channels: channels)
                let collector = TrajectoryCollector(environment: env, policy: ExpertPolicy(actionNoise: actionNoise, repeatProbability: repeatProbability),
                                                    maxSteps: maxSteps, seed: seed, pixels: format)
                let start = DispatchTime.now().uptimeNanoseconds
                let paths = try collector.collect(episodes: episodes, shardCount: shards, to: out, threads: threads)
                let elapsed = seconds(since: start)
                print("wrote \(paths.count) shards to \(out): \(episodes) episodes in \(String(format: "%.2f", elapsed)) s, "
                      + "\(String(format: "%.0f", Double(episodes) / elapsed)) episodes/s on \(threads) threads, "
                      + "\(String(format: "%.1f", Double(diskBytes(out)) / 1e6)) MB on disk (pixels: \(format?.description ?? "none"))")
            }
        }
    }

    /// `env show`: a PNG strip of an episode and an SVG coverage map.
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a PNG strip of an episode and/or an SVG map of a dataset's visited positions.")

        @Argument(help: "A trajectory dataset directory, manifest or shard.") var path: String
        @Option(help: "The episode to draw (global index).") var episode = 0
        @Option(help: "Draw every k-th step.") var every = 5
        @Option(help: "Frame size in the strip (224: native, or an observation size).") var size = 224
        @Option(help: "The PNG strip to write.") var png: String?
        @Option(help: "The SVG coverage map to write.") var coverage: String?

        func run() throws {
            try reportingErrors {
                guard png != nil || coverage != nil else { throw ValidationError("pass --png FILE and/or --coverage FILE.svg") }
                let dataset = try TrajectoryDataset(path)
                guard dataset.environment == TwoRoom.name else { throw DatasetError.invalid("\(path): env show draws two_room, not \(dataset.environment)") }
                if let png {
                    guard dataset.episodes.indices.contains(episode) else {
                        throw DatasetError.invalid("\(path) has episodes 0..<\(dataset.episodes.count), not \(episode)")
                    }
                    let info = dataset.episodes[episode]
                    let states = try dataset.columns(ofShard: info.shard).states
                    let format = try ObservationFormat(size: size, channels: 3)
                    var steps = Array(stride(from: 0, to: info.length, by: max(1, every)))
                    if steps.last != info.length - 1 { steps.append(info.length - 1) }
                    var frame = [UInt8]()
                    let images = try steps.map { t -> Image8 in
                        let row = info.offset + t
                        TwoRoom.renderFrame(agent: SIMD2(states[2 * row], states[2 * row + 1]), into: &frame)
                        let pixels = size == TwoRoom.frameSize ? frame : format.observation(of: frame, frameSize: TwoRoom.frameSize)
                        return try Image8(width: size, height: size, channels: 3, pixels: pixels)
                    }
                    let bytes = try PNGEncoder.encode(try Image8.horizontalStrip(images, gap: 4, background: 128))
                    try Data(bytes).write(to: URL(fileURLWithPath: png))
                    print("wrote \(png): episode \(episode), steps \(steps.map(String.init).joined(separator: ",")) of \(info.length)")
                }
                if let coverage {
                    let map = try Coverage.of(dataset)
                    try map.svg(title: (path as NSString).lastPathComponent).write(toFile: coverage, atomically: true, encoding: .utf8)
                    print("wrote \(coverage): \(map.counts.reduce(0, +)) states, \(map.counts.filter { $0 > 0 }.count) of \(map.counts.count) cells visited")
                }
            }
        }
    }

    /// `env bench-data` (also `bench clips`): clip loader and render throughput.
    struct BenchData: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-data",
            abstract: "Time the clip loader on a trajectory dataset, and TwoRoom rendering.")

        @Argument(help: "A trajectory dataset.") var path: String
        @Option(help: "History frames a clip.") var history = 3
        @Option(help: "Predicted frames a clip.") var predict = 1
        @Option(help: "Steps between frames.") var frameskip = 5
        @Option(help: "Clips a step.") var batch = 64
        @Option(help: "Steps timed.") var steps = 20
        @Option(help: "Observation size when rendering.") var size = 64
        @Option(help: "Observation channels when rendering.") var channels = 3
        @Option(help: "Loader threads.") var threads = 1
        @Flag(help: "Read the stored /pixels instead of rendering.") var stored = false

        func run() throws {
            try reportingErrors {
                let dataset = try TrajectoryDataset(path)
                let format = try ObservationFormat(size: size, channels: channels)
                let frames: ClipFrames = stored ? .stored : .rendered(shape: format.shape, render: format.renderer(for: TwoRoom()))
                let report = try ClipLoader.benchmark(dataset: dataset, shape: try ClipShape(historyFrames: history, predictedFrames: predict, frameskip: frameskip),
                                                      frames: frames, globalBatchSize: batch, steps: steps, threads: threads)
                print("clip loader (\(stored ? "stored pixels" : "rendered \(format)"), \(threads) threads): \(report)")
                for format in [try ObservationFormat(size: 64, channels: 3), nil] {
                    print("render TwoRoom \(format.map { "\($0) (224 frame + area average)" } ?? "224×224×3 (native)"): "
                          + String(format: "%.0f frames/s on one thread", RenderBenchmark.framesPerSecond(format)))
                }
                print(String(format: "render TwoRoom 64×64×3 drawn directly (point sampled, not the area average): %.0f frames/s on one thread",
                             RenderBenchmark.directFramesPerSecond(size: 64)))
            }
        }
    }
}
