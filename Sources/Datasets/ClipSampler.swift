import Tensor

/// The shape of a clip: `historyFrames` context frames and `predictedFrames` frames to
/// predict, `frameskip` steps apart, each frame with the block of `frameskip` actions taken
/// from it to the next frame.
///
/// A clip starting at row `s` of an episode takes frames at rows `s + k·F` and the actions of
/// rows `s + k·F ..< s + (k+1)·F` for `k < H + P`, so it needs `s + (H + P)·F ≤ length − 1`
/// (only real actions; the last row of an episode has none): an episode of `length` rows has
/// `max(0, length − (H + P)·F)` clips.
public struct ClipShape: Sendable, Equatable, CustomStringConvertible {
    public var historyFrames: Int
    public var predictedFrames: Int
    public var frameskip: Int

    /// - Throws: ``DatasetError/invalid(_:)`` for a history below 1, a negative prediction or a frameskip below 1.
    public init(historyFrames: Int = 3, predictedFrames: Int = 1, frameskip: Int = 5) throws {
        guard historyFrames >= 1, predictedFrames >= 0, frameskip >= 1 else {
            throw DatasetError.invalid("clip history \(historyFrames) (≥ 1), predicted \(predictedFrames) (≥ 0), frameskip \(frameskip) (≥ 1)")
        }
        self.historyFrames = historyFrames; self.predictedFrames = predictedFrames; self.frameskip = frameskip
    }

    /// Frames in a clip (`H + P`).
    public var frames: Int { historyFrames + predictedFrames }
    /// Clips that fit in an episode of `length` rows.
    public func clipCount(episodeLength length: Int) -> Int { max(0, length - frames * frameskip) }
    public var description: String { "H=\(historyFrames) P=\(predictedFrames) F=\(frameskip)" }
}

/// One clip: an episode (global index) and the row of its first frame within the episode.
public struct Clip: Sendable, Equatable, Hashable {
    public let episode: Int
    public let start: Int
    public init(episode: Int, start: Int) { self.episode = episode; self.start = start }
}

/// Decides the clips of each global batch and which rank takes which, independently of the
/// world size: ``GlobalBatchSampler`` over the clips of a set of episodes, numbered episode by
/// episode in increasing episode order.
///
/// Train and validation sets are disjoint sets of *episodes* (``split(episodeCount:validationFraction:seed:)``),
/// so no validation frame is seen in training.
public struct ClipSampler: Sendable, Equatable {
    public let shape: ClipShape
    /// The episodes sampled from, increasing.
    public let episodes: [Int]
    /// `clipStarts[i]`: the number of clips before `episodes[i]`.
    public let clipStarts: [Int]
    /// Which clips make each global batch.
    public let sampler: GlobalBatchSampler

    /// - Parameters:
    ///   - episodeLengths: rows of every episode of the dataset, by global index.
    ///   - episodes: the episodes to sample from (default nil: all).
    ///   - shape: the clip shape.
    ///   - globalBatchSize: clips a step over all ranks.
    ///   - seed: keys the clip order.
    /// - Throws: ``DatasetError/invalid(_:)`` when the episodes hold fewer clips than one global batch.
    public init(episodeLengths: [Int], episodes: [Int]? = nil, shape: ClipShape, globalBatchSize: Int, seed: UInt64) throws {
        let chosen = (episodes ?? Array(episodeLengths.indices)).sorted()
        if let bad = chosen.first(where: { !episodeLengths.indices.contains($0) }) {
            throw DatasetError.invalid("episode \(bad) is not in the dataset's \(episodeLengths.count) episodes")
        }
        var starts: [Int] = [], total = 0
        for e in chosen { starts.append(total); total += shape.clipCount(episodeLength: episodeLengths[e]) }
        do {
            sampler = try GlobalBatchSampler(rowCount: total, globalBatchSize: globalBatchSize, seed: seed)
        } catch DatasetError.invalid(let problem) {
            throw DatasetError.invalid("clips of \(shape): \(problem) (from \(chosen.count) episodes)")
        }
        self.shape = shape; self.episodes = chosen; self.clipStarts = starts
    }

    /// All clips.
    public var clipCount: Int { sampler.rowCount }

    /// Clip number `index` (`0 ..< clipCount`).
    public func clip(_ index: Int) -> Clip {
        // The last episode whose first clip is at or before `index` (binary search).
        var low = 0, high = clipStarts.count - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if clipStarts[mid] <= index { low = mid } else { high = mid - 1 }
        }
        // Episodes without clips share their start with the next one; take the last such.
        return Clip(episode: episodes[low], start: index - clipStarts[low])
    }

    /// The clips rank `rank` of `worldSize` takes at global step `step`.
    public func clips(step: Int, rank: Int, worldSize: Int) -> [Clip] {
        sampler.rows(step: step, rank: rank, worldSize: worldSize).map(clip)
    }

    /// A seeded split of episodes into training and validation, each increasing.
    public static func split(episodeCount: Int, validationFraction: Double, seed: UInt64) throws -> (train: [Int], validation: [Int]) {
        let (train, validation) = try ShardWriter.trainTestSplit(rowCount: episodeCount, testFraction: validationFraction, seed: seed)
        return (train.sorted(), validation.sorted())
    }
}
