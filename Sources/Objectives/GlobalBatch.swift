import Tensor
import Communication

/// How the statistics of the global batch are formed from the ranks' rows.
public enum StatisticsReduction: String, ConfigurationChoice {
    /// Chosen per evaluation by ``ReductionCostModel``, identically on every rank.
    case automatic
    /// Every rank computes statistics of its own rows; one fused all-reduce sums them.
    case statistics
    /// Every rank all-gathers all rows and computes the statistics of the whole batch itself.
    case gather
}

/// How the statistics path combines the moments of the ranks' rows (see `GlobalMoments`). Both
/// give the moments of one process on the global batch; they differ in what they move.
public enum MomentCombination: String, Sendable, Codable, CaseIterable {
    /// Each rank adds its row count and exact mean in slots of its own to the one all-reduce
    /// (`elementsPerRank` of the plan, `1 + V·D·w` elements a rank) and every rank adds the
    /// between-rank part: no extra collective, but a buffer that grows with the world size.
    case perRankMeans = "per_rank_means"
    /// A first all-reduce of the counts and column sums (`1 + V·D` `Double`s, the plan's
    /// `meanElements`) gives every rank the global mean, about which each centres its rows, so
    /// the moments add up directly: one more small collective, a buffer independent of the
    /// world size.
    case sharedMean = "shared_mean"
}

/// The cost model that picks between the statistics path and the gather path.
///
/// Both paths are exact; they differ in what they move and what they repeat. For a world of
/// `P` ranks, `V` views of `D` features, a global batch of `N` rows of which the largest rank
/// holds `n_max`, an objective whose global statistics have `S` elements of `s` bytes, need
/// `F` floating-point operations per row to form (e.g. `2·D²` for one covariance), and take
/// `R` all-reduces on the statistics path:
///
///     statistics: R · allReduce(S·s / R) + n_max·F / flopRate
///     gather:     allGather(n_max·V·D·s) + N·F / flopRate
///
/// where `allReduce` and `allGather` are ``CollectiveModel``'s times for this model's latency
/// and bandwidth — the one collective model of the project, which the scaling model uses too
/// (``StatisticsPlan/communicationSeconds(on:worldSize:globalBatchSize:largestRankCount:scalarBytes:collectives:)``).
/// On two ranks they are `α + m/β` each. (The row counts the choice needs are known by then:
/// given in ``ObjectiveContext/rowCounts`` or all-gathered once, whichever path follows.) On the
/// gather path every rank repeats the statistics of the whole batch (`N·F`), while the
/// statistics path splits them (`n_max·F`). Both paths add the gradient products of this rank's
/// rows (`n_max·F_g`, ``StatisticsPlan/gradientFlopsPerRow``) and the work that depends on
/// neither (``StatisticsPlan/flopsPerEvaluation``).
///
/// An objective with a Gram form (``StatisticsPlan/gramForm``; VICReg) replaces, when it holds
/// every row and `2N < D`, the `D × D` statistics and gradient products by `N × N` ones:
///
///     gather (Gram form): allGather(n_max·V·D·s) + allReduce(24) + 4·V·n_max·N·D / flopRate
///       split by features: allGather(n_max·V·D·s) + V·reduceScatter(N²·s) + allReduce(24)
///                          + V·(N²·D/P + 2·n_max·N·D) / flopRate
///
/// (per view the Gram block of this rank's rows against all rows, or, split by features
/// (``splitsGram(plan:worldSize:globalBatchSize:largestRankCount:scalarBytes:)``), the Gram
/// matrix of this rank's share of the features reduce-scattered into each rank's rows; then
/// the rows' product with them; the all-reduce carries the two block norms and the
/// invariance's sum, 24 bytes). Gathering
/// wins when `D²` is large against `N·D` and the FLOPs it repeats are cheap on the machine.
///
/// On the statistics path the moments are combined in the cheaper of the two exact
/// ``MomentCombination``s (``combination(plan:worldSize:scalarBytes:)``): per-rank means add
/// `P·perRank` elements to the all-reduce, a shared mean one all-reduce of `meanElements`
/// `Double`s before it:
///
///     per-rank means: R · allReduce((fixed + P·perRank)·s / R)
///     shared mean:    allReduce(8·meanElements) + R · allReduce(fixed·s / R)
///
/// so per-rank means win on few ranks and high latency, a shared mean as `P` grows.
public struct ReductionCostModel: Sendable, Equatable {
    /// The fixed cost of one collective message step, in seconds (``CollectiveModel/latency``).
    public var latency: Double
    /// The bytes a rank sends (or receives) per second in a collective (``CollectiveModel/bandwidth``).
    public var bandwidth: Double
    /// The floating-point operations per second of one rank's statistics kernels.
    public var flopRate: Double

    /// - Parameters: defaults describe a commodity cluster node: 20 µs per collective,
    ///   10 GB/s, 50 GFLOP/s.
    public init(latency: Double = 20e-6, bandwidth: Double = 10e9, flopRate: Double = 50e9) {
        self.latency = latency
        self.bandwidth = bandwidth
        self.flopRate = flopRate
    }

    /// The collectives of this model's latency and bandwidth.
    public var collectives: CollectiveModel { CollectiveModel(latency: latency, bandwidth: bandwidth) }

    /// The estimated seconds of each path for one evaluation (the statistics path in the
    /// combination ``combination(plan:worldSize:scalarBytes:)`` picks).
    public func cost(of path: StatisticsReduction, plan: StatisticsPlan, worldSize: Int,
                     globalBatchSize: Int, largestRankCount: Int, scalarBytes: Int) -> Double {
        let combination = path == .statistics
            ? self.combination(plan: plan, worldSize: worldSize, scalarBytes: scalarBytes) : .perRankMeans
        let split = splitsGram(plan: plan, worldSize: worldSize, globalBatchSize: globalBatchSize,
                               largestRankCount: largestRankCount, scalarBytes: scalarBytes)
        return plan.communicationSeconds(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize,
                                         largestRankCount: largestRankCount, scalarBytes: scalarBytes,
                                         collectives: collectives, combination: combination, splitsGram: split)
            + plan.flops(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize,
                         largestRankCount: largestRankCount, splitsGram: split) / flopRate
    }

    /// Whether the Gram form on the gather path splits its work by features: each rank forms
    /// with `syrk` the `N × N` Gram matrix of its `D/P` features over all rows, and one
    /// reduce-scatter a view sums them into each rank's rows (`N²·D/P` operations a rank and
    /// `N²` elements a view on the wire), rather than each rank forming its `n × N` block
    /// against all rows (`2·n·N·D`, nothing more on the wire). Split when
    ///
    ///     V · reduceScatter(N²·s) < V · (2·n_max·N·D − N²·D/P) / flopRate
    ///
    /// — on few ranks and wide embeddings (2 ranks, D = 2048: 0.27 GFLOP saved a view for 1 MB);
    /// not on many ranks of few rows, where the reduce-scatter's latency outweighs the work.
    /// Depends only on the plan, the sizes and this model: every rank decides alike.
    public func splitsGram(plan: StatisticsPlan, worldSize: Int, globalBatchSize: Int, largestRankCount: Int,
                           scalarBytes: Int) -> Bool {
        guard worldSize > 1, plan.usesGramForm(globalBatchSize: globalBatchSize) else { return false }
        let n = Double(globalBatchSize), nMax = Double(largestRankCount), d = Double(plan.dimension)
        let saved = 2 * nMax * n * d - n * n * d / Double(worldSize)
        let wire = collectives.reduceScatter(bytes: n * n * Double(scalarBytes), worldSize: worldSize)
        return wire < saved / flopRate
    }

    /// The cheaper way to combine the moments on the statistics path: a shared mean when its
    /// extra all-reduce costs less than the per-rank slots it saves; per-rank means on a tie,
    /// on one rank and for a plan without means to share. It depends only on the plan and
    /// the world size, so every rank picks the same.
    public func combination(plan: StatisticsPlan, worldSize: Int, scalarBytes: Int) -> MomentCombination {
        guard worldSize > 1, plan.meanElements > 0 else { return .perRankMeans }
        func seconds(_ combination: MomentCombination) -> Double {
            plan.communicationSeconds(on: .statistics, worldSize: worldSize, globalBatchSize: 0, largestRankCount: 0,
                                      scalarBytes: scalarBytes, collectives: collectives, combination: combination)
        }
        return seconds(.sharedMean) < seconds(.perRankMeans) ? .sharedMean : .perRankMeans
    }

    /// The cheaper path (the statistics path on a tie, and always on one rank).
    public func choose(plan: StatisticsPlan, worldSize: Int, globalBatchSize: Int, largestRankCount: Int,
                       scalarBytes: Int) -> StatisticsReduction {
        guard worldSize > 1 else { return .statistics }
        let statistics = cost(of: .statistics, plan: plan, worldSize: worldSize, globalBatchSize: globalBatchSize,
                              largestRankCount: largestRankCount, scalarBytes: scalarBytes)
        let gather = cost(of: .gather, plan: plan, worldSize: worldSize, globalBatchSize: globalBatchSize,
                          largestRankCount: largestRankCount, scalarBytes: scalarBytes)
        return gather < statistics ? .gather : .statistics
    }
}

/// What an objective's statistics cost: the input of ``ReductionCostModel``.
///
/// Each objective builds its plan with a static `plan(dimension:…)` function (``VICReg/plan(dimension:)``,
/// ``BarlowTwins/plan(dimension:)``, ``WMSE/plan(dimension:)``, ``SIGReg/plan(dimension:viewCount:directionCount:)``,
/// ``LeJEPA/plan(dimension:viewCount:directionCount:)``), the one its evaluation uses, so that a
/// model of the job (e.g. the trainer's scaling model) sees the same sizes.
public struct StatisticsPlan: Sendable, Equatable {
    /// The number of views whose rows the gather path would move.
    public var viewCount: Int
    /// The number of features of a view.
    public var dimension: Int
    /// Statistics elements independent of the world size.
    public var fixedElements: Int
    /// Statistics elements per rank with per-rank means (``MomentCombination/perRankMeans``:
    /// each rank's count and exact means in slots of its own).
    public var elementsPerRank: Int
    /// The `Double`s of the first all-reduce with a shared mean (``MomentCombination/sharedMean``):
    /// the row count and the column sums of every view, `1 + V·D` a set of moments; 0 when the
    /// objective has no moments (then the statistics do not depend on the world size anyway).
    public var meanElements: Int
    /// Floating-point operations to form the statistics of one row.
    public var flopsPerRow: Double
    /// All-reduces the statistics path takes (1, or 2 when the backward pass needs batch sums).
    public var allReduceCount: Int
    /// Floating-point operations per row of this rank to apply the statistics in the gradient
    /// (the same on both paths; 0 when negligible).
    public var gradientFlopsPerRow: Double
    /// Floating-point operations of each rank per evaluation that depend neither on the rows
    /// nor on the path (W-MSE's factorisations and `D × D × D` products; 0 when negligible).
    /// The same on both paths, so they do not change the choice.
    public var flopsPerEvaluation: Double
    /// Whether the objective switches to an `N × N` Gram form when it holds every row of a
    /// global batch of `N < D/2` rows (see ``usesGramForm(globalBatchSize:)``).
    public var gramForm: Bool

    public init(viewCount: Int, dimension: Int, fixedElements: Int, elementsPerRank: Int, meanElements: Int = 0,
                flopsPerRow: Double, allReduceCount: Int, gradientFlopsPerRow: Double = 0, flopsPerEvaluation: Double = 0,
                gramForm: Bool = false) {
        self.viewCount = viewCount
        self.dimension = dimension
        self.fixedElements = fixedElements
        self.elementsPerRank = elementsPerRank
        self.meanElements = meanElements
        self.flopsPerRow = flopsPerRow
        self.allReduceCount = allReduceCount
        self.gradientFlopsPerRow = gradientFlopsPerRow
        self.flopsPerEvaluation = flopsPerEvaluation
        self.gramForm = gramForm
    }

    /// The statistics elements for `partitions` ranks with per-rank means.
    public func elementCount(partitions: Int) -> Int { fixedElements + elementsPerRank * partitions }

    /// The statistics elements of the large all-reduce(s) for `partitions` ranks: with per-rank
    /// means ``elementCount(partitions:)``; with a shared mean ``fixedElements``, whatever `P`
    /// (its counts and sums go in a first all-reduce of ``meanElements`` `Double`s).
    public func elementCount(partitions: Int, combination: MomentCombination) -> Int {
        sharesMean(combination) ? fixedElements : elementCount(partitions: partitions)
    }

    /// Whether `combination` takes the shared-mean form: asked for, and the plan has means.
    private func sharesMean(_ combination: MomentCombination) -> Bool {
        combination == .sharedMean && meanElements > 0
    }

    /// The bytes of the shared mean's first all-reduce: ``meanElements`` `Double`s.
    private var meanBytes: Int { meanElements * MemoryLayout<Double>.stride }

    /// Whether an objective with a Gram form uses it for a global batch of `globalBatchSize`
    /// rows it holds entirely: when `2N < D`, where the `N × N` products cost less than the
    /// `D × D` ones.
    public func usesGramForm(globalBatchSize: Int) -> Bool { gramForm && 2 * globalBatchSize < dimension }

    /// Whether an evaluation on `path` takes the Gram form: a rank holds every row of the batch
    /// (one rank, or the gather path) and ``usesGramForm(globalBatchSize:)``.
    public func takesGramForm(on path: StatisticsReduction, worldSize: Int, globalBatchSize: Int) -> Bool {
        (worldSize == 1 || path == .gather) && usesGramForm(globalBatchSize: globalBatchSize)
    }

    /// The bytes of the Gram form's all-reduce: the squared norms of both views' blocks and the
    /// invariance's squared distances, three `Double`s.
    private static var gramNormBytes: Int { 3 * MemoryLayout<Double>.stride }

    /// The bytes of the Gram form's reduce-scatters on several ranks: each view's `N × N`
    /// partial Gram matrices.
    private func gramBlockBytes(globalBatchSize n: Int, scalarBytes: Int) -> Int { viewCount * n * n * scalarBytes }

    /// The collectives one evaluation takes on `path`, the row counts being known (none on one
    /// rank): the statistics path's ``allReduceCount``, plus the means' all-reduce with a shared
    /// mean; on the gather path the all-gather of the rows, and in the Gram form the all-reduce
    /// of the block norms, after a reduce-scatter of each view's Gram matrix when it
    /// `splitsGram` (``ReductionCostModel/splitsGram(plan:worldSize:globalBatchSize:largestRankCount:scalarBytes:)``).
    public func collectiveCount(on path: StatisticsReduction, worldSize: Int, globalBatchSize: Int,
                                combination: MomentCombination = .perRankMeans, splitsGram: Bool = false) -> Int {
        guard worldSize > 1 else { return 0 }
        if path == .gather {
            guard takesGramForm(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize) else { return 1 }
            return splitsGram ? 2 + viewCount : 2
        }
        return allReduceCount + (sharesMean(combination) ? 1 : 0)
    }

    /// The bytes one evaluation hands to collectives on `path` — all-reduce buffers plus
    /// all-gather receive buffers, what ``ObjectiveResult/communicatedBytes`` reports when the
    /// row counts are known (``ObjectiveContext/rowCounts``): `S·s` on the statistics path;
    /// `P·n_max·V·D·s` (the rows padded to the largest rank), plus 24 in the Gram form (and
    /// `V·N²·s` when it `splitsGram`), on the gather path; 0 on one rank. With a shared mean the
    /// statistics path hands over `fixed·s` plus the means' `8·meanElements`.
    public func communicatedBytes(on path: StatisticsReduction, worldSize: Int, globalBatchSize: Int,
                                  largestRankCount: Int, scalarBytes: Int,
                                  combination: MomentCombination = .perRankMeans, splitsGram: Bool = false) -> Int {
        guard worldSize > 1 else { return 0 }
        if path == .gather {
            let rows = worldSize * largestRankCount * viewCount * dimension * scalarBytes
            guard takesGramForm(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize) else { return rows }
            return rows + StatisticsPlan.gramNormBytes
                + (splitsGram ? gramBlockBytes(globalBatchSize: globalBatchSize, scalarBytes: scalarBytes) : 0)
        }
        return elementCount(partitions: worldSize, combination: combination) * scalarBytes
            + (sharesMean(combination) ? meanBytes : 0)
    }

    /// The bytes one rank sends on `path` with bandwidth-optimal collectives: `2(P−1)/P` times
    /// an all-reduce's buffer (a ring, or reduce-scatter then all-gather), `(P−1)/P` times a
    /// reduce-scatter's, and `(P−1)` times this rank's block in an all-gather; 0 on one rank.
    public func sentBytes(on path: StatisticsReduction, worldSize: Int, globalBatchSize: Int, largestRankCount: Int,
                          scalarBytes: Int, combination: MomentCombination = .perRankMeans,
                          splitsGram: Bool = false) -> Double {
        guard worldSize > 1 else { return 0 }
        let p = Double(worldSize), allReduceFactor = 2 * (p - 1) / p
        if path == .gather {
            let block = Double(largestRankCount * viewCount * dimension * scalarBytes)
            guard takesGramForm(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize) else {
                return (p - 1) * block
            }
            let split = splitsGram
                ? (p - 1) / p * Double(gramBlockBytes(globalBatchSize: globalBatchSize, scalarBytes: scalarBytes)) : 0
            return (p - 1) * block + allReduceFactor * Double(StatisticsPlan.gramNormBytes) + split
        }
        return allReduceFactor * Double(communicatedBytes(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize,
                                                          largestRankCount: largestRankCount, scalarBytes: scalarBytes,
                                                          combination: combination))
    }

    /// The seconds of one evaluation's collectives on `path` under `collectives`: the
    /// statistics path's ``allReduceCount`` all-reduces, as equal parts of its buffer (after
    /// the means' all-reduce with a shared mean); on the gather path the all-gather of the rows
    /// padded to the largest rank, and in the Gram form the all-reduce of the block norms
    /// (after the reduce-scatter of each view's Gram matrix when it `splitsGram`); 0 on one rank.
    public func communicationSeconds(on path: StatisticsReduction, worldSize p: Int, globalBatchSize n: Int,
                                     largestRankCount nMax: Int, scalarBytes s: Int,
                                     collectives: CollectiveModel,
                                     combination: MomentCombination = .perRankMeans, splitsGram: Bool = false) -> Double {
        let count = collectiveCount(on: path, worldSize: p, globalBatchSize: n)
        guard count > 0 else { return 0 }
        if path == .gather {
            let block = Double(nMax * viewCount * dimension * s)
            let rows = collectives.allGather(bytesPerRank: block, worldSize: p)
            guard count > 1 else { return rows }
            let norms = collectives.allReduce(bytes: Double(StatisticsPlan.gramNormBytes), worldSize: p)
            guard splitsGram else { return rows + norms }
            let gram = Double(n * n * s)
            return rows + norms + Double(viewCount) * collectives.reduceScatter(bytes: gram, worldSize: p)
        }
        let statistics = Double(elementCount(partitions: p, combination: combination) * s)
        let means = sharesMean(combination) ? collectives.allReduce(bytes: Double(meanBytes), worldSize: p) : 0
        return means + Double(allReduceCount) * collectives.allReduce(bytes: statistics / Double(allReduceCount), worldSize: p)
    }

    /// The floating-point operations of the slowest rank (the one with `largestRankCount`
    /// rows) in one evaluation on `path`:
    /// - statistics path: `n_max·(F + F_g)`;
    /// - gather path: `N·F + n_max·F_g` (every rank forms the whole batch's statistics);
    /// - Gram form (holding every row, `2N < D`): `4·V·n_max·N·D` (each rank's block and its
    ///   product with the rows), `V·(N²·D/P + 2·n_max·N·D)` when it `splitsGram` (each rank the
    ///   Gram matrix of its share of the features), or `3·V·N²·D` on one rank;
    /// plus ``flopsPerEvaluation`` on every path.
    public func flops(on path: StatisticsReduction, worldSize: Int, globalBatchSize: Int,
                      largestRankCount: Int, splitsGram: Bool = false) -> Double {
        let n = Double(globalBatchSize), nMax = Double(largestRankCount), v = Double(viewCount), d = Double(dimension)
        let rows: Double
        if takesGramForm(on: path, worldSize: worldSize, globalBatchSize: globalBatchSize) {
            if worldSize == 1 {
                rows = 3 * v * n * n * d
            } else {
                rows = splitsGram ? v * (n * n * d / Double(worldSize) + 2 * nMax * n * d) : 4 * v * nMax * n * d
            }
        } else if path == .gather && worldSize > 1 {
            rows = n * flopsPerRow + nMax * gradientFlopsPerRow
        } else {
            rows = nMax * (flopsPerRow + gradientFlopsPerRow)
        }
        return rows + flopsPerEvaluation
    }
}

/// Several statistics packed into one buffer, so that one all-reduce makes all of them global.
///
/// An objective reserves regions in layout order, writes its local statistics into them,
/// hands the buffer to ``GlobalBatch/allReduce(_:)`` and reads the sums back.
/// ``reserveExact(_:)`` regions hold `Double`s exactly even in a `Float` buffer (as a
/// high and a low part); they are meant for per-rank slots, which are non-zero on one rank only,
/// so that their sum over ranks is exact too.
struct FusedStatistics<Scalar: TensorScalar> {
    private(set) var values: [Scalar] = []

    /// The buffer elements one exactly stored `Double` takes: 1 in a `Double` buffer, 2 in `Float`.
    static var exactWidth: Int { Scalar.significandBitCount >= Double.significandBitCount ? 1 : 2 }

    /// Appends a region of `count` zeros.
    mutating func reserve(_ count: Int) -> Range<Int> {
        let start = values.count
        values.append(contentsOf: repeatElement(0, count: count))
        return start..<values.count
    }

    /// Appends a region for `count` exactly stored `Double`s.
    mutating func reserveExact(_ count: Int) -> Range<Int> {
        reserve(count * Self.exactWidth)
    }

    subscript(index: Int) -> Scalar {
        get { values[index] }
        set { values[index] = newValue }
    }

    /// Stores `value` as the `index`-th `Double` of an exact region.
    mutating func setExact(_ value: Double, at index: Int, in region: Range<Int>) {
        let position = region.lowerBound + index * Self.exactWidth
        let high = Scalar(value)
        values[position] = high
        if Self.exactWidth == 2 { values[position + 1] = Scalar(value - Double(high)) }
    }

    /// The `index`-th `Double` of an exact region.
    func exact(at index: Int, in region: Range<Int>) -> Double {
        let position = region.lowerBound + index * Self.exactWidth
        return Self.exactWidth == 2 ? Double(values[position]) + Double(values[position + 1]) : Double(values[position])
    }

    mutating func withUnsafeMutableBufferPointer<R>(_ body: (inout UnsafeMutableBufferPointer<Scalar>) throws -> R) rethrows -> R {
        try values.withUnsafeMutableBufferPointer(body)
    }
}

/// This rank's view of the global batch for one evaluation: which rows it computes statistics
/// of, and the collective that makes them global.
///
/// On the statistics path the statistics rows are this rank's own rows, in partition `rank`
/// of `worldSize`, and ``allReduce(_:)`` sums the fused buffer over ranks. On the gather path
/// the rows of every rank are all-gathered first (padded to the largest count), the statistics
/// rows are the whole global batch in one partition, and ``allReduce(_:)`` does nothing.
struct GlobalBatch<Scalar: TensorScalar & CommunicableScalar> {
    let communicator: any Communicator
    /// The evaluation's reused buffers.
    let workspace: Workspace
    /// The path taken (`.statistics` or `.gather`).
    let path: StatisticsReduction
    /// This rank's rows of each view.
    let localViews: [Tensor<Scalar>]
    /// The rows whose statistics this rank computes: its own, or the whole global batch.
    let statisticsViews: [Tensor<Scalar>]
    /// The number of partitions of the statistics (the world size, or 1 on the gather path).
    let partitionCount: Int
    /// This rank's partition.
    let partition: Int
    /// The rows of every rank, when known (given, needed by the path, or asked for).
    let rowCounts: [Int]?
    /// How the moments of the ranks are combined: set on the statistics path on several ranks
    /// for a plan with means (the cost model's ``ReductionCostModel/combination(plan:worldSize:scalarBytes:)``),
    /// nil elsewhere (one partition holds every row).
    let momentCombination: MomentCombination?
    /// The bytes passed to collectives so far.
    private(set) var communicatedBytes = 0

    /// Decides the path and, on the gather path, gathers the rows.
    ///
    /// - Parameter needsRowCounts: gather the row counts even if the path does not need them
    ///   (W-MSE sub-batches need this rank's global row offset).
    init(views: [Tensor<Scalar>], context: ObjectiveContext, plan: StatisticsPlan, needsRowCounts: Bool = false) throws {
        let communicator = context.communicator
        self.communicator = communicator
        workspace = context.workspace
        localViews = views
        let worldSize = communicator.size, localCount = views.first?.rowCount ?? 0
        var bytes = 0
        var counts = context.rowCounts
        if let given = counts {
            guard given.count == worldSize, given[communicator.rank] == localCount else {
                throw ObjectiveError("context.rowCounts \(given) does not fit rank \(communicator.rank) of \(worldSize) with \(localCount) rows")
            }
        }
        func gatheredCounts() throws -> [Int] {
            if let counts { return counts }
            let gathered = try communicator.allGather([Int64(localCount)])
            bytes += gathered.count * MemoryLayout<Int64>.stride
            return gathered.map(Int.init)
        }

        var path = context.reduction
        if worldSize == 1 { path = .statistics }
        if path == .automatic {
            counts = try gatheredCounts()
            path = context.costModel.choose(plan: plan, worldSize: worldSize, globalBatchSize: counts!.reduce(0, +),
                                            largestRankCount: counts!.max() ?? 0,
                                            scalarBytes: MemoryLayout<Scalar>.stride)
        }
        if path == .gather || needsRowCounts { counts = try gatheredCounts() }
        self.path = path
        rowCounts = counts
        momentCombination = path == .statistics && worldSize > 1 && plan.meanElements > 0
            ? context.costModel.combination(plan: plan, worldSize: worldSize, scalarBytes: MemoryLayout<Scalar>.stride)
            : nil

        if path == .gather, let counts {
            statisticsViews = try GlobalBatch.gatherRows(views, counts: counts, communicator: communicator,
                                                         workspace: context.workspace, bytes: &bytes)
            partitionCount = 1
            partition = 0
        } else {
            statisticsViews = views
            partitionCount = worldSize
            partition = communicator.rank
        }
        communicatedBytes = bytes
    }

    /// The global index of this rank's first row, when the row counts are known.
    var rowOffset: Int? {
        rowCounts.map { $0.prefix(communicator.rank).reduce(0, +) }
    }

    /// Sums `statistics` over ranks on the statistics path; does nothing on the gather path,
    /// whose statistics are already those of the whole batch.
    mutating func allReduce<Element: TensorScalar & CommunicableScalar>(_ statistics: inout FusedStatistics<Element>) throws {
        guard path == .statistics, communicator.size > 1 else { return }
        try statistics.withUnsafeMutableBufferPointer { try communicator.allReduce($0, .sum) }
        communicatedBytes += statistics.values.count * MemoryLayout<Element>.stride
    }

    /// Moments of `viewCount` views in this batch's partitions and combination, reserved in
    /// `buffer` (see ``GlobalMoments/init(viewCount:dimension:secondMoments:partitionCount:combination:in:workspace:workspaceSlot:)``).
    func moments(viewCount: Int, dimension: Int, secondMoments: [GlobalMoments<Scalar>.SecondMoment],
                 in buffer: inout FusedStatistics<Scalar>, workspaceSlot: Int = 0) -> GlobalMoments<Scalar> {
        GlobalMoments(viewCount: viewCount, dimension: dimension, secondMoments: secondMoments,
                      partitionCount: partitionCount, combination: momentCombination ?? .perRankMeans, in: &buffer,
                      workspace: workspace, workspaceSlot: workspaceSlot)
    }

    /// Writes the local statistics of each set of moments (`moments[g]` of the statistics rows
    /// `rows[g]`) into `statistics`; with a shared mean first all-reduces the counts and sums of
    /// all of them at once, so that each is formed about its global mean.
    mutating func accumulate(_ moments: inout [GlobalMoments<Scalar>], rows: [[Tensor<Scalar>]],
                             into statistics: inout FusedStatistics<Scalar>) throws {
        if momentCombination == .sharedMean {
            var sums = FusedStatistics<Double>()
            for g in moments.indices { moments[g].accumulateSums(rows[g], into: &sums) }
            try allReduce(&sums)
            for g in moments.indices { moments[g].readMeans(sums) }
        }
        for g in moments.indices { moments[g].accumulate(rows[g], partition: partition, into: &statistics) }
    }

    /// ``accumulate(_:rows:into:)`` for one set of moments.
    mutating func accumulate(_ moments: inout GlobalMoments<Scalar>, rows: [Tensor<Scalar>],
                             into statistics: inout FusedStatistics<Scalar>) throws {
        var group = [moments]
        try accumulate(&group, rows: [rows], into: &statistics)
        moments = group[0]
    }

    /// Sums per-rank values that the gather path leaves local (each rank's share of a sum over
    /// the rows it owns) over ranks; nothing to do on one rank. On the statistics path the
    /// fused all-reduce carries such values instead.
    mutating func sumOverRanks(_ values: inout [Double]) throws {
        guard communicator.size > 1 else { return }
        try communicator.allReduce(&values, .sum)
        communicatedBytes += values.count * MemoryLayout<Double>.stride
    }

    /// Sums the `N × C` matrices `rows` (one row per row of the global batch, in rank order) over
    /// ranks and writes this rank's rows of the sum into `block` (`n × C`): a reduce-scatter,
    /// for the gather path. The row counts must be known (they are on the gather path).
    mutating func reduceScatterRows(_ rows: Tensor<Scalar>, into block: Tensor<Scalar>) throws {
        guard let rowCounts else { preconditionFailure("reduceScatterRows needs the row counts") }
        let width = rows.columnCount
        try rows.withUnsafeBufferPointer { send in
            try block.withUnsafeMutableBufferPointer { receive in
                try communicator.reduceScatter(send, into: receive, counts: rowCounts.map { $0 * width }, .sum)
            }
        }
        communicatedBytes += rows.count * MemoryLayout<Scalar>.stride
    }

    /// All ranks' rows of every view, in rank order, with one all-gather of the rows padded to
    /// the largest count.
    private static func gatherRows(_ views: [Tensor<Scalar>], counts: [Int], communicator: any Communicator,
                                   workspace: Workspace, bytes: inout Int) throws -> [Tensor<Scalar>] {
        let dimension = views.first?.columnCount ?? 0, viewCount = views.count
        let padded = counts.max() ?? 0, block = viewCount * padded * dimension
        let send: Tensor<Scalar> = workspace.tensor("gather.send", [max(block, 0)])
        for (v, view) in views.enumerated() {
            send.rows(v * padded * dimension ..< v * padded * dimension + view.count).copy(from: view.reshaped([view.count]))
        }
        let receive: Tensor<Scalar> = workspace.tensor("gather.receive", [block * counts.count], zeroed: false)
        try send.withUnsafeBufferPointer { s in
            try receive.withUnsafeMutableBufferPointer { try communicator.allGather(s, into: $0) }
        }
        bytes += receive.count * MemoryLayout<Scalar>.stride
        let total = counts.reduce(0, +)
        return (0..<viewCount).map { v in
            let global: Tensor<Scalar> = workspace.tensor("gather.view", index: v, [total, dimension], zeroed: false)
            var row = 0
            for (rank, count) in counts.enumerated() where count > 0 {
                let start = rank * block + v * padded * dimension
                global.rows(row ..< row + count).copy(from: receive.rows(start ..< start + count * dimension))
                row += count
            }
            return global
        }
    }
}
