import Datasets
import Dispatch
import Foundation
import Tensor

/// Rolls out the expert in an environment and writes trajectory shards.
///
/// Episode `e` starts from ``Environment/reset(seed:episode:)`` with `(seed, e)` and draws its
/// policy noise from `(seed, e)` too, so the dataset does not depend on how many threads
/// collect it. An episode ends at success (tested after each step, so it takes at least one) or after `maxSteps` actions; it has one row more than
/// actions (its final state). Shards hold contiguous runs of episodes, nearly equal in count.
public struct TrajectoryCollector: Sendable {
    /// The environment's name (see ``EnvironmentRegistry``).
    public var environment: String
    /// The scripted policy.
    public var policy: ExpertPolicy
    /// Actions an episode at most.
    public var maxSteps: Int
    /// Keys resets and noise.
    public var seed: UInt64
    /// Frames stored with the states: nil (render on the fly later), or a resolution.
    public var pixels: ObservationFormat?

    /// - Parameters:
    ///   - environment: the environment's name (default `"two_room"`).
    ///   - policy: the expert (default: swm's TwoRoom data settings, noise σ = 2, no repeats).
    ///   - maxSteps: the episode limit (default 100, as swm's `World`).
    ///   - seed: the collection seed (default 0).
    ///   - pixels: stored frames (default nil: states and actions only).
    public init(environment: String = TwoRoom.name, policy: ExpertPolicy = ExpertPolicy(actionNoise: 2),
                maxSteps: Int = 100, seed: UInt64 = 0, pixels: ObservationFormat? = nil) {
        self.environment = environment; self.policy = policy; self.maxSteps = maxSteps
        self.seed = seed; self.pixels = pixels
    }

    /// The dataset attributes of this collection.
    public func attributes() throws -> TrajectoryAttributes {
        let env = try EnvironmentRegistry.make(environment)
        return TrajectoryAttributes(environment: environment,
                                    parameters: Dictionary(uniqueKeysWithValues: env.parameters.map { ($0.name, $0.value) }),
                                    frameSize: type(of: env).frameSize, seed: seed, maxSteps: maxSteps,
                                    policy: "expert action_noise=\(policy.actionNoise) repeat_probability=\(policy.repeatProbability) door_reach_tolerance=\(policy.doorReachTolerance)")
    }

    /// Episode `episode`: its rows, success and (optionally) frames.
    public func episode(_ episode: Int) throws -> TrajectoryEpisodes {
        guard var env = try EnvironmentRegistry.make(environment) as? TwoRoom else {
            throw EnvironmentError.invalid("the expert policy drives two_room only, not \(environment)")
        }
        env.reset(seed: seed, episode: UInt64(episode))
        let random = CounterRandom(seed: seed, streamName: "\(environment) expert").substream(UInt64(episode))
        var out = TrajectoryEpisodes(stateDimension: 2, actionDimension: 2, firstEpisode: episode,
                                     frameShape: pixels.map { [$0.size, $0.size, $0.channels] })
        var previous: SIMD2<Float>?
        let render = pixels.map { $0.renderer(for: env) }
        var observation = [UInt8](repeating: 0, count: pixels?.valueCount ?? 0)[...]
        var steps = 0
        func record(_ action: SIMD2<Float>) {
            out.states += [env.agent.x, env.agent.y]
            out.actions += [action.x, action.y]
            if let render {
                render([env.agent.x, env.agent.y][...], &observation)
                out.pixels! += observation
            }
        }
        // As swm's World: success is only tested after a step, so every episode takes one.
        repeat {
            let action = policy.action(agent: env.agent, target: env.target, previous: previous, random: random, step: steps)
            record(action)
            env.agent = TwoRoom.next(env.agent, action: action)
            previous = action
            steps += 1
        } while steps < maxSteps && !env.isSuccess
        record(.zero)   // the final state; no action is taken there
        out.lengths = [steps + 1]
        out.successes = [env.isSuccess]
        return out
    }

    /// Episodes `range`, collected on `threads` threads, in order.
    public func episodes(_ range: Range<Int>, threads: Int) throws -> TrajectoryEpisodes {
        let blocks = max(1, min(range.count, threads * 4))
        let results = Locked([TrajectoryEpisodes?](repeating: nil, count: blocks))
        let failure = Locked<Error?>(nil)
        DispatchQueue.concurrentPerform(iterations: blocks) { block in
            let part = GlobalBatchSampler.split(range.count, rank: block, parts: blocks)
            do {
                var collected = TrajectoryEpisodes(stateDimension: 2, actionDimension: 2, firstEpisode: range.lowerBound + part.lowerBound,
                                                   frameShape: pixels.map { [$0.size, $0.size, $0.channels] })
                for e in part { collected.append(try episode(range.lowerBound + e)) }
                results.withLock { $0[block] = collected }
            } catch {
                failure.withLock { $0 = $0 ?? error }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        let parts = results.withLock { $0 }.compactMap { $0 }
        var all = parts[0]
        for part in parts.dropFirst() { all.append(part) }
        return all
    }

    /// Collects `episodes` episodes into `shardCount` shards `NAME-0000K-of-0000N.h5` in
    /// `directory`, one shard at a time (so memory holds one shard).
    /// - Parameters:
    ///   - threads: collecting threads (default: every core).
    /// - Returns: the shard paths.
    @discardableResult
    public func collect(episodes: Int, shardCount: Int, to directory: String, name: String = "trajectories",
                        threads: Int = ProcessInfo.processInfo.activeProcessorCount) throws -> [String] {
        guard episodes >= shardCount, shardCount >= 1 else {
            throw EnvironmentError.invalid("\(episodes) episodes cannot fill \(shardCount) shards (at least one episode a shard)")
        }
        guard maxSteps >= 1 else { throw EnvironmentError.invalid("max steps \(maxSteps) must be at least 1") }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let attributes = try attributes()
        var paths: [String] = []
        for shard in 0..<shardCount {
            let range = GlobalBatchSampler.split(episodes, rank: shard, parts: shardCount)
            let collected = try self.episodes(range, threads: threads)
            let path = (directory as NSString).appendingPathComponent(ShardWriter.shardName(name, index: shard, count: shardCount))
            try TrajectoryShardWriter.write(collected, to: path, index: shard, count: shardCount, attributes: attributes)
            paths.append(path)
        }
        return paths
    }
}
