import Tensor

/// Decides which dataset rows make up each global batch and which rank reads which of them,
/// so that the global batch of a step depends on the seed and the step alone — never on the
/// world size.
///
/// - The order of rows in epoch `e` is a permutation drawn from (seed, e) alone
///   (Fisher–Yates on the counter-based generator; our own, so it does not change with the
///   standard library).
/// - Global step `s` is step `s mod stepsPerEpoch` of epoch `s / stepsPerEpoch` and takes the next
///   `globalBatchSize` rows of that epoch's permutation; the last incomplete block of an
///   epoch is dropped.
/// - Rank `r` of `R` takes a contiguous part of the block. When `R` does not divide the global
///   batch, the first `globalBatchSize mod R` ranks take one row more
///   (``rankRange(rank:worldSize:)``). The concatenation over ranks, in rank order, is the block.
///
/// Unlike PyTorch's `DistributedSampler` (which deals rows round-robin after padding, so a
/// different world size sees different batches), one process and any number of ranks train on
/// exactly the same global batches, which is what makes elastic resume exact.
public struct GlobalBatchSampler: Sendable, Equatable {
    /// The number of rows in the dataset.
    public let rowCount: Int
    /// The number of rows per optimisation step, over all ranks.
    public let globalBatchSize: Int
    /// Keys the permutations.
    public let seed: UInt64

    /// - Throws: ``DatasetError/invalid(_:)`` when the dataset holds fewer rows than one global batch.
    public init(rowCount: Int, globalBatchSize: Int, seed: UInt64) throws {
        guard globalBatchSize > 0 else { throw DatasetError.invalid("global batch size must be positive, got \(globalBatchSize)") }
        guard rowCount >= globalBatchSize else {
            throw DatasetError.invalid("the dataset has \(rowCount) rows, fewer than one global batch of \(globalBatchSize)")
        }
        self.rowCount = rowCount
        self.globalBatchSize = globalBatchSize
        self.seed = seed
    }

    /// Complete global batches per epoch.
    public var stepsPerEpoch: Int { rowCount / globalBatchSize }

    /// The epoch and the step within it of global step `step`.
    public func position(ofStep step: Int) -> (epoch: Int, stepInEpoch: Int) {
        (step / stepsPerEpoch, step % stepsPerEpoch)
    }

    /// The row order of `epoch`: a permutation of `0 ..< rowCount` drawn from (seed, epoch).
    public func permutation(epoch: Int) -> [Int] {
        var order = Array(0..<rowCount)
        var random = CounterRandom(seed: seed, stream: CounterRandom.hash("sampler")).substream(UInt64(epoch)).sequence()
        // Fisher–Yates with Lemire's unbiased bounded draws.
        for i in stride(from: rowCount - 1, to: 0, by: -1) {
            let j = Int(GlobalBatchSampler.bounded(&random, UInt64(i + 1)))
            order.swapAt(i, j)
        }
        return order
    }

    /// The dataset rows of global step `step`, in order.
    public func globalBatch(step: Int, permutation: [Int]? = nil) -> ArraySlice<Int> {
        let (epoch, stepInEpoch) = position(ofStep: step)
        let order = permutation ?? self.permutation(epoch: epoch)
        return order[(stepInEpoch * globalBatchSize)..<((stepInEpoch + 1) * globalBatchSize)]
    }

    /// The positions within a global batch that rank `rank` of `worldSize` takes.
    public func rankRange(rank: Int, worldSize: Int) -> Range<Int> {
        GlobalBatchSampler.split(globalBatchSize, rank: rank, parts: worldSize)
    }

    /// The dataset rows that rank `rank` reads at global step `step`.
    public func rows(step: Int, rank: Int, worldSize: Int, permutation: [Int]? = nil) -> ArraySlice<Int> {
        let batch = globalBatch(step: step, permutation: permutation)
        let range = rankRange(rank: rank, worldSize: worldSize)
        return batch[(batch.startIndex + range.lowerBound)..<(batch.startIndex + range.upperBound)]
    }

    /// Contiguous split of `count` items into `parts`, the first `count mod parts` parts one larger.
    public static func split(_ count: Int, rank: Int, parts: Int) -> Range<Int> {
        precondition(parts > 0 && rank >= 0 && rank < parts, "rank \(rank) of \(parts)")
        let base = count / parts, extra = count % parts
        let start = rank * base + min(rank, extra)
        return start..<(start + base + (rank < extra ? 1 : 0))
    }

    /// An unbiased draw in `0 ..< bound` (Lemire's method).
    static func bounded(_ random: inout CounterRandomSequence, _ bound: UInt64) -> UInt64 {
        var product = random.next().multipliedFullWidth(by: bound)
        if product.low < bound {
            let threshold = (0 &- bound) % bound
            while product.low < threshold { product = random.next().multipliedFullWidth(by: bound) }
        }
        return product.high
    }
}

/// A problem with a dataset, its files or its settings, named so a user can fix it.
public enum DatasetError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    /// A problem in a file, with the file's path and what is wrong (and the row when known).
    case file(path: String, problem: String)

    public var description: String {
        switch self {
        case let .invalid(text): return text
        case let .file(path, problem): return "\(path): \(problem)"
        }
    }
}
