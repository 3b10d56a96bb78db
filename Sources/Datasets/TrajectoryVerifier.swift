import Foundation
import HDF5

/// What ``TrajectoryVerifier/verify(_:)`` found in a valid trajectory dataset.
public struct TrajectoryReport: Sendable, Equatable, CustomStringConvertible {
    public let location: String
    public let environment: String
    public let shardCount: Int
    public let episodeCount: Int
    /// Rows (steps, each episode's final state included) over all shards.
    public let rowCount: Int
    /// Shortest, mean and longest episode in rows.
    public let lengthRange: ClosedRange<Int>
    public let meanLength: Double
    /// The fraction of episodes that reached their goal.
    public let successRate: Double
    /// The smallest and largest value of each state component.
    public let stateRange: [ClosedRange<Float>]
    /// `[height, width, channels]` of stored frames, or nil.
    public let frameShape: [Int]?

    public var description: String {
        let ranges = stateRange.map { String(format: "[%.2f, %.2f]", Double($0.lowerBound), Double($0.upperBound)) }
        return """
        \(location): valid trajectory dataset (environment \(environment))
          shards \(shardCount), episodes \(episodeCount), steps \(rowCount)
          episode length (rows) min \(lengthRange.lowerBound), mean \(String(format: "%.1f", meanLength)), max \(lengthRange.upperBound)
          success rate \(String(format: "%.3f", successRate))
          state ranges \(ranges.joined(separator: ", "))
          pixels \(frameShape.map { "\($0)" } ?? "not stored (rendered from states)")
        """
    }
}

/// Checks every row of a trajectory dataset.
///
/// Beyond what opening checks (layout, lengths and offsets that tile the rows, shard order):
/// `/episode` and `/step` agree with the episode table, every state is finite, every action
/// finite and within `[−1, 1]`, `/episode_success` has one value an episode. Errors name the
/// file, the dataset and the row.
public enum TrajectoryVerifier {
    /// - Throws: ``DatasetError`` naming the file and row of the first problem.
    public static func verify(_ location: String) throws -> TrajectoryReport {
        let dataset = try TrajectoryDataset(location)
        let sd = dataset.stateDimension, ad = dataset.actionDimension
        var low = [Float](repeating: .infinity, count: sd), high = [Float](repeating: -.infinity, count: sd)
        var successes = 0
        for (shard, path) in dataset.paths.enumerated() {
            let (states, actions) = try dataset.columns(ofShard: shard)
            let (episodeColumn, stepColumn, success) = try TrajectoryDataset.withShard(path) { file in
                (try file.read(Int64.self, from: "episode").values, try file.read(Int64.self, from: "step").values,
                 try file.contains("episode_success") ? try file.read(UInt8.self, from: "episode_success").values : nil)
            }
            let shardEpisodes = dataset.episodes.indices.filter { dataset.episodes[$0].shard == shard }
            if let success {
                guard success.count == shardEpisodes.count else {
                    throw DatasetError.file(path: path, problem: "/episode_success has \(success.count) values for \(shardEpisodes.count) episodes")
                }
                successes += success.filter { $0 != 0 }.count
            }
            for global in shardEpisodes {
                let episode = dataset.episodes[global]
                for t in 0..<episode.length {
                    let row = episode.offset + t
                    guard episodeColumn[row] == Int64(dataset.firstEpisode + global), stepColumn[row] == Int64(t) else {
                        throw DatasetError.file(path: path, problem: "row \(row) of /episode, /step is (\(episodeColumn[row]), \(stepColumn[row])) but the episode table puts step \(t) of episode \(dataset.firstEpisode + global) there")
                    }
                    for j in 0..<sd {
                        let value = states[row * sd + j]
                        guard value.isFinite else {
                            throw DatasetError.file(path: path, problem: "row \(row) of /state holds \(value) (episode \(global), step \(t))")
                        }
                        low[j] = min(low[j], value); high[j] = max(high[j], value)
                    }
                    for j in 0..<ad {
                        let value = actions[row * ad + j]
                        guard value.isFinite, value >= -1, value <= 1 else {
                            throw DatasetError.file(path: path, problem: "row \(row) of /action holds \(value), outside [-1, 1] (episode \(global), step \(t))")
                        }
                    }
                }
            }
        }
        let lengths = dataset.episodes.map(\.length)
        let rows = lengths.reduce(0, +)
        return TrajectoryReport(location: location, environment: dataset.environment, shardCount: dataset.paths.count,
                                episodeCount: lengths.count, rowCount: rows,
                                lengthRange: (lengths.min() ?? 0)...(lengths.max() ?? 0),
                                meanLength: Double(rows) / Double(max(1, lengths.count)),
                                successRate: Double(successes) / Double(max(1, lengths.count)),
                                stateRange: (0..<sd).map { low[$0]...high[$0] }, frameShape: dataset.frameShape)
    }
}
