import Foundation
import HDF5

/// Whole episodes of an environment in memory: what a collector produces and a trajectory
/// shard stores.
///
/// Rows are steps: row `t` of an episode holds the state `s_t` and the action taken at it;
/// an episode of `T` actions has `T + 1` rows, and its last row's action (none was taken)
/// is zero.
public struct TrajectoryEpisodes: Sendable, Equatable {
    /// Values in one state and one action.
    public var stateDimension: Int
    public var actionDimension: Int
    /// `rows × stateDimension` states.
    public var states: [Float]
    /// `rows × actionDimension` actions.
    public var actions: [Float]
    /// Rows of each episode, in order.
    public var lengths: [Int]
    /// Whether each episode reached its goal.
    public var successes: [Bool]
    /// The global index of the first episode.
    public var firstEpisode: Int
    /// `rows × height × width × channels` frames, or nil.
    public var pixels: [UInt8]?
    /// `[height, width, channels]` of a stored frame, or nil.
    public var frameShape: [Int]?

    /// Empty episodes to append to.
    public init(stateDimension: Int, actionDimension: Int, firstEpisode: Int, frameShape: [Int]? = nil) {
        self.stateDimension = stateDimension; self.actionDimension = actionDimension
        self.states = []; self.actions = []; self.lengths = []; self.successes = []
        self.firstEpisode = firstEpisode
        self.frameShape = frameShape
        self.pixels = frameShape == nil ? nil : []
    }

    /// All rows.
    public var rowCount: Int { states.count / max(1, stateDimension) }
    /// The number of episodes.
    public var episodeCount: Int { lengths.count }
    /// The row at which each episode starts.
    public var offsets: [Int] {
        var offsets: [Int] = [], next = 0
        for length in lengths { offsets.append(next); next += length }
        return offsets
    }

    /// Appends `other`, whose first episode must follow this one's last.
    public mutating func append(_ other: TrajectoryEpisodes) {
        precondition(other.stateDimension == stateDimension && other.actionDimension == actionDimension
                     && other.frameShape == frameShape && other.firstEpisode == firstEpisode + episodeCount)
        states += other.states; actions += other.actions; lengths += other.lengths; successes += other.successes
        if let more = other.pixels { pixels! += more }
    }
}

/// What every trajectory shard of a dataset records besides its rows.
public struct TrajectoryAttributes: Sendable, Equatable {
    /// The environment's name, e.g. `"two_room"`.
    public var environment: String
    /// The environment's parameters, written as attributes `env_<name>`.
    public var parameters: [String: Double]
    /// The side of the environment's native frame.
    public var frameSize: Int
    /// The collection seed.
    public var seed: UInt64
    /// The step limit of an episode.
    public var maxSteps: Int
    /// The policy and its settings, e.g. `"expert action_noise=2 repeat_probability=0"`.
    public var policy: String

    public init(environment: String, parameters: [String: Double], frameSize: Int, seed: UInt64, maxSteps: Int, policy: String) {
        self.environment = environment; self.parameters = parameters; self.frameSize = frameSize
        self.seed = seed; self.maxSteps = maxSteps; self.policy = policy
    }
}

/// Writes and names trajectory shards (layout ``TrajectoryDataset/layoutVersion``), readable by h5py.
///
/// Per shard: per-step columns `/state` (rows × S, float32), `/action` (rows × A, float32),
/// `/episode`, `/step` (int64), optional `/pixels` (rows × H × W × C, uint8); per-episode
/// `/episode_length`, `/episode_offset` (int64) and `/episode_success` (uint8); attributes
/// `format` = "anticollapse-trajectories", `layout_version`, `environment`, `env_<parameter>`,
/// `frame_size`, `seed`, `max_steps`, `policy`, `first_episode`, `episode_count`,
/// `shard_index`, `shard_count`.
public enum TrajectoryShardWriter {
    /// The `format` attribute of a trajectory shard.
    public static let format = "anticollapse-trajectories"

    /// Writes `episodes` as shard `index` of `count` at `path` (replacing a file there).
    /// - Throws: ``DatasetError`` when the episodes are inconsistent; HDF5 errors naming the file.
    public static func write(_ episodes: TrajectoryEpisodes, to path: String, index: Int, count: Int,
                             attributes: TrajectoryAttributes) throws {
        let rows = episodes.rowCount
        guard episodes.episodeCount > 0, rows > 0 else { throw DatasetError.file(path: path, problem: "a trajectory shard needs at least one episode") }
        guard episodes.lengths.reduce(0, +) == rows, episodes.actions.count == rows * episodes.actionDimension,
              episodes.successes.count == episodes.episodeCount else {
            throw DatasetError.file(path: path, problem: "episode lengths sum to \(episodes.lengths.reduce(0, +)) but there are \(rows) states and \(episodes.actions.count / max(1, episodes.actionDimension)) actions")
        }
        var episodeColumn: [Int64] = [], stepColumn: [Int64] = []
        episodeColumn.reserveCapacity(rows); stepColumn.reserveCapacity(rows)
        for (i, length) in episodes.lengths.enumerated() {
            for t in 0..<length { episodeColumn.append(Int64(episodes.firstEpisode + i)); stepColumn.append(Int64(t)) }
        }
        let stepChunk = min(rows, 16_384)
        try HDF5File.withNewFile(path, overwrite: true) { file in
            try file.createDataset("state", shape: [rows, episodes.stateDimension], values: episodes.states,
                                   chunks: [stepChunk, episodes.stateDimension], gzipLevel: 4)
            try file.createDataset("action", shape: [rows, episodes.actionDimension], values: episodes.actions,
                                   chunks: [stepChunk, episodes.actionDimension], gzipLevel: 4)
            try file.createDataset("episode", shape: [rows], values: episodeColumn, chunks: [stepChunk], gzipLevel: 4)
            try file.createDataset("step", shape: [rows], values: stepColumn, chunks: [stepChunk], gzipLevel: 4)
            if let pixels = episodes.pixels, let frame = episodes.frameShape {
                // One frame a chunk (a clip reads a few frames of an episode), gzip level 1 (writing is serial).
                try file.createDataset("pixels", shape: [rows] + frame, values: pixels, chunks: [1] + frame, gzipLevel: 1)
            }
            let episodeCount = episodes.episodeCount
            try file.createDataset("episode_length", shape: [episodeCount], values: episodes.lengths.map { Int64($0) })
            try file.createDataset("episode_offset", shape: [episodeCount], values: episodes.offsets.map { Int64($0) })
            try file.createDataset("episode_success", shape: [episodeCount], values: episodes.successes.map { UInt8($0 ? 1 : 0) })
            try file.setAttribute("format", to: .string(format))
            try file.setAttribute("layout_version", to: .int64(TrajectoryDataset.layoutVersion))
            try file.setAttribute("environment", to: .string(attributes.environment))
            for (name, value) in attributes.parameters.sorted(by: { $0.key < $1.key }) {
                try file.setAttribute("env_\(name)", to: .double(value))
            }
            try file.setAttribute("frame_size", to: .int64(Int64(attributes.frameSize)))
            try file.setAttribute("seed", to: .int64(Int64(bitPattern: attributes.seed)))
            try file.setAttribute("max_steps", to: .int64(Int64(attributes.maxSteps)))
            try file.setAttribute("policy", to: .string(attributes.policy))
            try file.setAttribute("first_episode", to: .int64(Int64(episodes.firstEpisode)))
            try file.setAttribute("episode_count", to: .int64(Int64(episodeCount)))
            try file.setAttribute("shard_index", to: .int64(Int64(index)))
            try file.setAttribute("shard_count", to: .int64(Int64(count)))
        }
    }
}

/// Trajectory shards opened for reading: the episode table of every shard, and the rows of
/// any episode on demand.
///
/// Opening reads the per-episode columns and checks that lengths and offsets tile each
/// shard's rows and that global episode indices run on from shard to shard; per-step values
/// are checked by ``TrajectoryVerifier``. Errors name the file and row.
public final class TrajectoryDataset: @unchecked Sendable {
    // Unchecked Sendable: the tables are immutable; the column cache has its own lock.

    /// The layout version this code reads and writes.
    public static let layoutVersion: Int64 = 1

    /// One episode: where its rows are.
    public struct Episode: Sendable, Equatable {
        public let shard: Int
        /// The row of its first step within the shard.
        public let offset: Int
        /// Its rows (actions taken + 1).
        public let length: Int
    }

    /// Where the dataset was opened from.
    public let location: String
    /// The shard files, in order.
    public let paths: [String]
    /// Every episode, by its index here (`firstEpisode` + index in `/episode`).
    public let episodes: [Episode]
    /// The `/episode` number of the first episode: 0 for a whole dataset, more for a later shard opened alone.
    public let firstEpisode: Int
    /// Rows in each shard.
    public let shardRows: [Int]
    public let stateDimension: Int
    public let actionDimension: Int
    /// `[height, width, channels]` of stored frames, or nil when frames are not stored.
    public let frameShape: [Int]?
    /// The `environment` attribute.
    public let environment: String

    private let lock = NSLock()
    private var columns: [Int: (states: [Float], actions: [Float])] = [:]

    /// Whether `path` is a trajectory shard (its `format` attribute), for commands that accept both layouts.
    public static func isTrajectoryShard(_ path: String) -> Bool {
        guard let first = try? ShardedDataset.shardPaths(path).first,
              let file = try? HDF5File.open(first) else { return false }
        defer { try? file.close() }
        return (try? file.attribute("format")) == .string(TrajectoryShardWriter.format)
    }

    /// Opens a directory of trajectory shards, a manifest or one shard.
    public init(_ location: String) throws {
        self.location = location
        let paths = try ShardedDataset.shardPaths(location)
        var episodes: [Episode] = [], shardRows: [Int] = []
        var dimensions: (Int, Int)?, frameShape: [Int]?? = .none, environment: String?, firstEpisode = 0
        for (shardIndex, path) in paths.enumerated() {
            try Self.withShard(path) { file in
                guard case .string(TrajectoryShardWriter.format)? = try? file.attribute("format") else {
                    throw DatasetError.file(path: path, problem: "not a trajectory shard (attribute format is not \"\(TrajectoryShardWriter.format)\")")
                }
                guard case let .int64(version)? = try? file.attribute("layout_version"), version == Self.layoutVersion else {
                    throw DatasetError.file(path: path, problem: "layout_version is not \(Self.layoutVersion)")
                }
                for name in ["state", "action", "episode", "step", "episode_length", "episode_offset"] where !(try file.contains(name)) {
                    throw DatasetError.file(path: path, problem: "no dataset /\(name)")
                }
                let state = try file.info("state"), action = try file.info("action")
                guard state.shape.count == 2, action.shape.count == 2, state.shape[0] > 0 else {
                    throw DatasetError.file(path: path, problem: "/state \(state.shape) and /action \(action.shape) must be rows × values with rows > 0")
                }
                let rows = state.shape[0]
                for (name, shape) in [("action", action.shape), ("episode", try file.info("episode").shape), ("step", try file.info("step").shape)]
                where shape.first != rows {
                    throw DatasetError.file(path: path, problem: "/\(name) has shape \(shape) but /state has \(rows) rows")
                }
                let shardFrame: [Int]? = try file.contains("pixels") ? Array(try file.info("pixels").shape.dropFirst()) : nil
                if try file.contains("pixels"), try file.info("pixels").shape.first != rows {
                    throw DatasetError.file(path: path, problem: "/pixels has shape \(try file.info("pixels").shape) but /state has \(rows) rows")
                }
                if let (s, a) = dimensions, (s, a) != (state.shape[1], action.shape[1]) {
                    throw DatasetError.file(path: path, problem: "states of \(state.shape[1]) and actions of \(action.shape[1]) values, but \(paths[0]) has \(s) and \(a)")
                }
                if case let .some(expected) = frameShape, expected != shardFrame {
                    throw DatasetError.file(path: path, problem: "frames of shape \(shardFrame.map { "\($0)" } ?? "none"), but \(paths[0]) has \(expected.map { "\($0)" } ?? "none")")
                }
                let name: String
                if case let .string(value)? = try? file.attribute("environment") { name = value } else { name = "" }
                if let environment, environment != name {
                    throw DatasetError.file(path: path, problem: "environment \"\(name)\", but \(paths[0]) has \"\(environment)\"")
                }
                dimensions = (state.shape[1], action.shape[1]); frameShape = .some(shardFrame); environment = name
                let lengths = try file.read(Int64.self, from: "episode_length").values
                let offsets = try file.read(Int64.self, from: "episode_offset").values
                try Self.checkEpisodeTable(lengths: lengths, offsets: offsets, rows: rows, path: path)
                if case let .int64(first)? = try? file.attribute("first_episode") {
                    // One shard opened alone may start anywhere; the next must continue it.
                    if shardIndex == 0 { firstEpisode = Int(first) }
                    guard Int(first) == firstEpisode + episodes.count else {
                        throw DatasetError.file(path: path, problem: "first_episode is \(first) but the shards before it end at episode \(firstEpisode + episodes.count)")
                    }
                }
                for (length, offset) in zip(lengths, offsets) {
                    episodes.append(Episode(shard: shardIndex, offset: Int(offset), length: Int(length)))
                }
                shardRows.append(rows)
            }
        }
        self.paths = paths; self.episodes = episodes; self.shardRows = shardRows; self.firstEpisode = firstEpisode
        self.stateDimension = dimensions?.0 ?? 0; self.actionDimension = dimensions?.1 ?? 0
        self.frameShape = frameShape ?? nil
        self.environment = environment ?? ""
    }

    /// Opens `path` read-only for `body`, turning a missing, truncated or foreign file into an
    /// error naming it.
    static func withShard<T>(_ path: String, _ body: (HDF5File) throws -> T) throws -> T {
        let file: HDF5File
        do { file = try HDF5File.open(path) } catch let error as HDF5Error {
            throw DatasetError.file(path: path, problem: error.kind == .notHDF5File ? "not an HDF5 file (truncated or foreign)"
                                    : error.kind == .noSuchFile ? "missing shard" : "\(error)")
        }
        defer { try? file.close() }
        do { return try body(file) } catch let error as HDF5Error {
            throw DatasetError.file(path: path, problem: "cannot read it (truncated?): \(error)")
        }
    }

    /// Checks that episodes are non-empty and tile `rows` in order: episode `i` starts where
    /// episode `i − 1` ends.
    static func checkEpisodeTable(lengths: [Int64], offsets: [Int64], rows: Int, path: String) throws {
        guard lengths.count == offsets.count, !lengths.isEmpty else {
            throw DatasetError.file(path: path, problem: "/episode_length has \(lengths.count) values and /episode_offset \(offsets.count); they must agree and be non-empty")
        }
        var next: Int64 = 0
        for i in lengths.indices {
            guard lengths[i] >= 1 else {
                throw DatasetError.file(path: path, problem: "row \(i) of /episode_length is \(lengths[i]); an episode has at least one step")
            }
            guard offsets[i] == next else {
                let relation = offsets[i] < next ? "overlaps the previous episode (which ends at row \(next))"
                                                 : "leaves a gap after the previous episode (which ends at row \(next))"
                throw DatasetError.file(path: path, problem: "row \(i) of /episode_offset is \(offsets[i]): episode \(i) \(relation)")
            }
            next += lengths[i]
        }
        guard next == Int64(rows) else {
            throw DatasetError.file(path: path, problem: "/episode_length sums to \(next) rows but /state has \(rows)")
        }
    }

    /// The states and actions of shard `shard`, read once and kept (16 bytes a step for TwoRoom).
    public func columns(ofShard shard: Int) throws -> (states: [Float], actions: [Float]) {
        if let cached = lock.withLock({ columns[shard] }) { return cached }
        let path = paths[shard]
        let loaded = try Self.withShard(path) { file in
            (try file.read(Float.self, from: "state").values, try file.read(Float.self, from: "action").values)
        }
        lock.withLock { columns[shard] = loaded }
        return loaded
    }

    /// The stored frames of `rows` of shard `shard`, concatenated.
    /// - Throws: ``DatasetError`` when the dataset stores no frames.
    public func pixels(shard: Int, rows: [Int]) throws -> [UInt8] {
        guard frameShape != nil else { throw DatasetError.invalid("\(location) stores no pixels") }
        return try Self.withShard(paths[shard]) { file in try file.readRows(rows, as: UInt8.self, from: "pixels").values }
    }
}
