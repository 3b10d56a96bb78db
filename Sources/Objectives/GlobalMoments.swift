import Tensor

/// The global means and centred second moments of one or more views, combined exactly over
/// ranks in one of two ways (``MomentCombination``), both without raw moments (an embedding
/// offset of 300 costs no precision):
///
/// - **Per-rank means** (Chan, Golub & LeVeque's pairwise update). Each rank centres its rows on
///   its own mean. The fused buffer holds, per rank `r` in slot `r` (zeros in the other slots):
///   the count `n_r` and the sums `n_r·μ_r` of every view (stored exactly); and, summed over
///   ranks, the locally centred second moments `Σ_i (x_i − μ_r)(y_i − μ_r)ᵀ`. After the one
///   all-reduce every rank knows every per-rank mean and adds the between-rank part itself:
///
///       M = Σ_r M_r + Σ_r n_r (μ_r − μ)(μ_r − μ)ᵀ,   μ = Σ_r n_r μ_r / N.
///
///   No extra collective, but the slots grow the buffer by `1 + V·D·w` elements a rank.
/// - **Shared mean**. A first, small all-reduce of every rank's count and column sums (in
///   `Double`, ``accumulateSums(_:into:)``) gives every rank `N` and `μ`; each rank centres its
///   rows on `μ`, so the centred moments of the ranks simply add up: `M = Σ_r M_r`. One more
///   collective of `1 + V·D` `Double`s, and a buffer independent of the world size.
///
/// Moments are unnormalised sums (`M`), so that each objective divides by `N` or `N − 1`
/// as its paper does.
struct GlobalMoments<Scalar: TensorScalar> {
    /// A second moment to form.
    enum SecondMoment: Equatable {
        /// `Σ (x − μ)(x − μ)ᵀ` of a view, `D × D` (symmetric: the lower triangle is reduced).
        case covariance(Int)
        /// The diagonal of `covariance`, `D` sums of squared deviations.
        case variance(Int)
        /// `Σ (x − μ_x)(y − μ_y)ᵀ` of two views, `D × D`.
        case crossCovariance(Int, Int)
    }

    let viewCount: Int
    let dimension: Int
    let partitionCount: Int
    let secondMoments: [SecondMoment]
    /// How the moments of the partitions are combined.
    let combination: MomentCombination

    /// The per-rank slots (empty with a shared mean).
    private let countRegion: Range<Int>
    private let meanRegion: Range<Int>
    private let momentRegions: [Range<Int>]
    /// The count and column sums in the `Double` buffer of ``accumulateSums(_:into:)`` (shared mean).
    private var sumRegion = 0..<0

    /// The global batch size `N` (after ``combine(_:forming:)``, or ``readMeans(_:)``).
    private(set) var globalBatchSize = 0
    /// The global mean of each view, `V × D` (after ``combine(_:forming:)``, or ``readMeans(_:)``).
    private(set) var means: [[Double]] = []
    /// Each requested second moment, in request order: `[D, D]` or, for `.variance`, `[D]`.
    private(set) var moments: [Tensor<Double>] = []

    /// The buffer elements these statistics take: `fixed` whatever the world size, `perRank`
    /// more a rank with per-rank means, and the `Double`s of the first all-reduce with a shared
    /// mean (`1 + V·D`: the count and the column sums).
    static func elementCount(viewCount: Int, dimension d: Int,
                             secondMoments: [SecondMoment]) -> (fixed: Int, perRank: Int, sharedMean: Int) {
        let fixed = secondMoments.reduce(0) { total, moment in
            switch moment {
            case .covariance: return total + d * (d + 1) / 2
            case .variance: return total + d
            case .crossCovariance: return total + d * d
            }
        }
        return (fixed, 1 + viewCount * d * FusedStatistics<Scalar>.exactWidth, 1 + viewCount * d)
    }

    /// The buffers of the centred rows and moments (reused when the workspace is).
    let workspace: Workspace
    /// Which of several statistics sharing `workspace` this is (W-MSE's sub-batches).
    let workspaceSlot: Int

    /// The workspace index of buffer `k` (a view or a moment) of this instance.
    private func slot(_ k: Int) -> Int { workspaceSlot * 64 + k }

    /// Reserves the regions of these statistics in `buffer`.
    ///
    /// - Parameter combination: per-rank means (the default: what a caller that all-reduces
    ///   `buffer` alone needs) or a shared mean, whose counts and sums go through
    ///   ``accumulateSums(_:into:)`` and ``readMeans(_:)`` before ``accumulate(_:partition:into:)``.
    init(viewCount: Int, dimension: Int, secondMoments: [SecondMoment], partitionCount: Int,
         combination: MomentCombination = .perRankMeans,
         in buffer: inout FusedStatistics<Scalar>, workspace: Workspace = Workspace(), workspaceSlot: Int = 0) {
        self.workspace = workspace
        self.workspaceSlot = workspaceSlot
        self.viewCount = viewCount
        self.dimension = dimension
        self.partitionCount = partitionCount
        self.secondMoments = secondMoments
        self.combination = combination
        if combination == .perRankMeans {
            countRegion = buffer.reserve(partitionCount)
            meanRegion = buffer.reserveExact(partitionCount * viewCount * dimension)
        } else {
            countRegion = 0..<0
            meanRegion = 0..<0
        }
        momentRegions = secondMoments.map { moment in
            switch moment {
            case .covariance: return buffer.reserve(dimension * (dimension + 1) / 2)
            case .variance: return buffer.reserve(dimension)
            case .crossCovariance: return buffer.reserve(dimension * dimension)
            }
        }
    }

    /// Shared mean, first step: reserves `1 + V·D` `Double`s in `sums` and writes this rank's row
    /// count and the column sums of its rows of every view, for the all-reduce that makes them
    /// global.
    mutating func accumulateSums(_ views: [Tensor<Scalar>], into sums: inout FusedStatistics<Double>) {
        precondition(combination == .sharedMean, "accumulateSums with \(combination)")
        precondition(views.count == viewCount, "moments of \(viewCount) views, given \(views.count)")
        let d = dimension
        sumRegion = sums.reserve(1 + viewCount * d)
        let n = views.first?.rowCount ?? 0
        sums[sumRegion.lowerBound] = Double(n)
        guard n > 0 else { return }
        for (v, view) in views.enumerated() {
            for (j, sum) in view.columnSums().enumerated() { sums[sumRegion.lowerBound + 1 + v * d + j] = sum }
        }
    }

    /// Shared mean, second step: reads the summed counts and column sums, `N` and `μ`.
    mutating func readMeans(_ sums: FusedStatistics<Double>) {
        let d = dimension, total = sums[sumRegion.lowerBound]
        globalBatchSize = Int(total.rounded())
        means = (0..<viewCount).map { v in
            (0..<d).map { j in total > 0 ? sums[sumRegion.lowerBound + 1 + v * d + j] / total : 0 }
        }
    }

    /// Writes the statistics of this partition's rows (`views`, `n × D` each) into `buffer`:
    /// with per-rank means its count and exact sums in its slots and the moments about its own
    /// mean; with a shared mean (after ``readMeans(_:)``) the moments about the global mean.
    func accumulate(_ views: [Tensor<Scalar>], partition: Int, into buffer: inout FusedStatistics<Scalar>) {
        precondition(views.count == viewCount, "moments of \(viewCount) views, given \(views.count)")
        let n = views.first?.rowCount ?? 0, d = dimension
        // The mean each view's rows are centred on: this rank's (in Double), or the global one.
        var centres: [[Double]] = []
        switch combination {
        case .perRankMeans:
            buffer[countRegion.lowerBound + partition] = Scalar(n)
            guard n > 0 else { return }
            for (v, view) in views.enumerated() {
                let mean = view.columnSums().map { $0 / Double(n) }
                for j in 0..<d {
                    buffer.setExact(Double(n) * mean[j], at: (partition * viewCount + v) * d + j, in: meanRegion)
                }
                centres.append(mean)
            }
        case .sharedMean:
            precondition(means.count == viewCount, "accumulate with a shared mean before readMeans")
            guard n > 0 else { return }
            centres = means
        }
        var centred: [Int: Tensor<Scalar>] = [:]
        func centredRows(_ v: Int) -> Tensor<Scalar> {
            if let rows = centred[v] { return rows }
            let rows = GlobalMoments.centre(views[v], on: centres[v], columnSquares: nil,
                                            into: workspace.tensor("moments.local", index: slot(v), views[v].shape, zeroed: false))
            centred[v] = rows
            return rows
        }
        // Centred second moments.
        for (index, (moment, region)) in zip(secondMoments, momentRegions).enumerated() {
            switch moment {
            case .covariance(let v):
                let product: Tensor<Scalar> = workspace.tensor("moments.product", index: slot(index), [d, d])
                Tensor.syrk(centredRows(v), into: product, fillUpper: false)
                product.withUnsafeBufferPointer { m in
                    var position = region.lowerBound
                    for i in 0..<d { for j in 0...i { buffer[position] = m[i * d + j]; position += 1 } }
                }
            case .variance(let v):
                views[v].withUnsafeBufferPointer { x in
                    var sums = [Double](repeating: 0, count: d)
                    for i in 0..<n { for j in 0..<d { let e = Double(x[i * d + j]) - centres[v][j]; sums[j] += e * e } }
                    for j in 0..<d { buffer[region.lowerBound + j] = Scalar(sums[j]) }
                }
            case let .crossCovariance(v, w):
                let product: Tensor<Scalar> = workspace.tensor("moments.product", index: slot(index), [d, d])
                Tensor.gemm(centredRows(v), transposeA: true, centredRows(w), into: product)
                product.withUnsafeBufferPointer { m in
                    for k in 0..<(d * d) { buffer[region.lowerBound + k] = m[k] }
                }
            }
        }
    }

    /// The between-rank parts of the per-rank-means combination, after ``combine(_:forming:)``:
    /// for each partition with rows, its count and, per view, `μ_{v,r} − μ_v` (none with a
    /// shared mean, whose moments need no correction).
    private var corrections: [(count: Double, deviations: [[Double]])] = []

    /// Reads the reduced buffer and, with per-rank means, adds the between-rank parts: the
    /// global moments.
    ///
    /// - Parameter formed: whether to form ``moments`` (default true); objectives that stream
    ///   the lower triangle of a covariance with ``forEachCovarianceRow(_:_:_:)`` skip the
    ///   `D × D` matrices in `Double`.
    mutating func combine(_ buffer: FusedStatistics<Scalar>, forming formed: Bool = true) {
        let d = dimension
        corrections = []
        if combination == .perRankMeans {
            let counts = (0..<partitionCount).map { Double(buffer[countRegion.lowerBound + $0]) }
            let total = counts.reduce(0, +)
            globalBatchSize = Int(total.rounded())
            // rankMeans[v][r]: the mean of view v on rank r (zero where the rank has no rows).
            var rankMeans = [[[Double]]](repeating: [], count: viewCount)
            means = []
            for v in 0..<viewCount {
                var mean = [Double](repeating: 0, count: d)
                for r in 0..<partitionCount {
                    var rankMean = [Double](repeating: 0, count: d)
                    for j in 0..<d {
                        let sum = buffer.exact(at: (r * viewCount + v) * d + j, in: meanRegion)
                        mean[j] += sum
                        if counts[r] > 0 { rankMean[j] = sum / counts[r] }
                    }
                    rankMeans[v].append(rankMean)
                }
                means.append(total > 0 ? mean.map { $0 / total } : mean)
            }
            // μ_{v,r} − μ_v, only for ranks with rows.
            for r in 0..<partitionCount where counts[r] > 0 {
                corrections.append((counts[r], (0..<viewCount).map { v in zip(rankMeans[v][r], means[v]).map { $0 - $1 } }))
            }
        }
        let corrections = self.corrections
        guard formed else {
            moments = []
            return
        }
        moments = zip(secondMoments, momentRegions).enumerated().map { index, element in
            let (moment, region) = element
            switch moment {
            case .covariance(let v):
                let m: Tensor<Double> = workspace.tensor("moments.moment", index: slot(index), [d, d])
                m.withUnsafeMutableBufferPointer { m in
                    var position = region.lowerBound
                    for i in 0..<d { for j in 0...i { m[i * d + j] = Double(buffer[position]); position += 1 } }
                    for (count, deviations) in corrections {
                        let delta = deviations[v]
                        for i in 0..<d { for j in 0...i { m[i * d + j] += count * delta[i] * delta[j] } }
                    }
                    for i in 0..<d { for j in 0..<i { m[j * d + i] = m[i * d + j] } }
                }
                return m
            case .variance(let v):
                let m: Tensor<Double> = workspace.tensor("moments.moment", index: slot(index), [d])
                m.withUnsafeMutableBufferPointer { m in
                    for j in 0..<d { m[j] = Double(buffer[region.lowerBound + j]) }
                    for (count, deviations) in corrections {
                        for j in 0..<d { m[j] += count * deviations[v][j] * deviations[v][j] }
                    }
                }
                return m
            case let .crossCovariance(v, w):
                let m: Tensor<Double> = workspace.tensor("moments.moment", index: slot(index), [d, d])
                m.withUnsafeMutableBufferPointer { m in
                    for k in 0..<(d * d) { m[k] = Double(buffer[region.lowerBound + k]) }
                    for (count, deviations) in corrections {
                        let dv = deviations[v], dw = deviations[w]
                        for i in 0..<d { for j in 0..<d { m[i * d + j] += count * dv[i] * dw[j] } }
                    }
                }
                return m
            }
        }
    }

    /// Calls `body(i, m)` for every row `i` of the global covariance moment `index` (a
    /// `.covariance`) with `m[j]`, `j ≤ i`, its lower triangle: the values ``moments`` would
    /// hold, without forming the `D × D` matrix. `m` is valid during the call only.
    func forEachCovarianceRow(_ index: Int, _ buffer: FusedStatistics<Scalar>,
                              _ body: (Int, UnsafeMutableBufferPointer<Double>) -> Void) {
        guard case .covariance(let v) = secondMoments[index] else {
            preconditionFailure("moment \(index) is \(secondMoments[index]), not a covariance")
        }
        let d = dimension, region = momentRegions[index]
        let row = UnsafeMutableBufferPointer<Double>.allocate(capacity: max(d, 1))
        defer { row.deallocate() }
        buffer.values.withUnsafeBufferPointer { packed in
            var position = region.lowerBound
            for i in 0..<d {
                for j in 0...i { row[j] = Double(packed[position + j]) }
                position += i + 1
                for (count, deviations) in corrections {
                    let delta = deviations[v]
                    for j in 0...i { row[j] += count * delta[i] * delta[j] }
                }
                body(i, row)
            }
        }
    }

    /// The rows of `view` centred on the global mean of view `v`: `x − μ`, formed in `Double`.
    /// (A buffer of the workspace, one a view: valid until the next call for the same view.)
    func centred(_ view: Tensor<Scalar>, view v: Int) -> Tensor<Scalar> {
        GlobalMoments.centre(view, on: means[v], columnSquares: nil,
                             into: workspace.tensor("moments.centred", index: slot(v), view.shape, zeroed: false))
    }

    /// `x − mean` row by row, subtracted in `Double` and rounded once, written into `result`
    /// (shaped like `rows`); in the same pass each column's sum of squares of the centred
    /// (rounded) values is added to `columnSquares` (`D` elements) when given.
    @discardableResult
    static func centre(_ rows: Tensor<Scalar>, on mean: [Double], columnSquares: UnsafeMutableBufferPointer<Double>?,
                       into result: Tensor<Scalar>) -> Tensor<Scalar> {
        let n = rows.rowCount, d = rows.columnCount
        precondition(result.shape == rows.shape, "centre into \(result.shape), rows \(rows.shape)")
        rows.withUnsafeBufferPointer { x in
            result.withUnsafeMutableBufferPointer { y in
                if let squares = columnSquares {
                    for i in 0..<n {
                        for j in 0..<d {
                            let e = Scalar(Double(x[i * d + j]) - mean[j])
                            y[i * d + j] = e
                            squares[j] += Double(e) * Double(e)
                        }
                    }
                } else {
                    for i in 0..<n { for j in 0..<d { y[i * d + j] = Scalar(Double(x[i * d + j]) - mean[j]) } }
                }
            }
        }
        return result
    }
}
