import Tensor
import Communication

/// VICReg: variance–invariance–covariance regularisation (Bardes, Ponce & LeCun, ICLR 2022).
///
/// For two views `Z`, `Z'` of a global batch of `N` rows and `D` features:
///
///     loss       = λ·s(Z, Z') + μ·[v(Z) + v(Z')] + ν·[c(Z) + c(Z')]
///     invariance s(Z, Z') = 1/(N·D) · Σ_i ‖z_i − z'_i‖²
///     variance   v(Z)     = 1/(2D) · Σ_j max(0, 1 − √(C_jj + ε))      (each branch halved)
///     covariance c(Z)     = 1/D · Σ_{j≠k} C_jk²
///     C = Cov(Z) = 1/(N−1) · Σ_i (z_i − z̄)(z_i − z̄)ᵀ                  (unbiased)
///
/// The terms are reported unweighted: `invariance` = s, `variance` = v(Z) + v(Z'),
/// `covariance` = c(Z) + c(Z').
///
/// With `G = ∂loss/∂C` (symmetric), the gradient of a row is
/// `∂loss/∂z_i = 2λ/(N·D)·(z_i − z'_i) + 2/(N−1)·G (z_i − z̄)`, where
/// `G_jk = 2ν·C_jk/D` off the diagonal and `G_jj = −μ/(4D·√(C_jj + ε))` where the hinge is active.
public struct VICReg<Scalar: TensorScalar & CommunicableScalar>: Objective {
    /// λ, the weight of the invariance term (default 25).
    public var invarianceWeight: Double
    /// μ, the weight of the variance term (default 25).
    public var varianceWeight: Double
    /// ν, the weight of the covariance term (default 1).
    public var covarianceWeight: Double
    /// ε under the square root of the variance (default 1e-4).
    public var epsilon: Double

    public var name: String { "vicreg" }

    public init(invarianceWeight: Double = 25, varianceWeight: Double = 25, covarianceWeight: Double = 1,
                epsilon: Double = 1e-4) {
        self.invarianceWeight = invarianceWeight
        self.varianceWeight = varianceWeight
        self.covarianceWeight = covarianceWeight
        self.epsilon = epsilon
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func evaluate(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>],
                         context: ObjectiveContext) throws -> ObjectiveResult {
        try validate(views: views, gradients: gradients, objective: name, viewCount: 2...2)
        let d = views[0].columnCount
        let secondMoments = VICReg.secondMoments
        let plan = VICReg.plan(dimension: d)
        var batch = try GlobalBatch(views: views, context: context, plan: plan)
        let globalBatchSize = batch.statisticsViews[0].rowCount
        if plan.takesGramForm(on: batch.path, worldSize: context.communicator.size, globalBatchSize: globalBatchSize) {
            let split = context.costModel.splitsGram(plan: plan, worldSize: context.communicator.size,
                                                     globalBatchSize: globalBatchSize,
                                                     largestRankCount: batch.rowCounts?.max() ?? globalBatchSize,
                                                     scalarBytes: MemoryLayout<Scalar>.stride)
            return try evaluateGram(&batch, gradients: gradients, splittingByFeatures: split)
        }
        var statistics = FusedStatistics<Scalar>()
        var moments = batch.moments(viewCount: 2, dimension: d, secondMoments: secondMoments, in: &statistics)
        let squaredDistance = statistics.reserve(1)
        try batch.accumulate(&moments, rows: batch.statisticsViews, into: &statistics)
        statistics[squaredDistance.lowerBound] = Scalar(VICReg.squaredDistance(batch.statisticsViews))

        // The one all-reduce.
        try batch.allReduce(&statistics)
        moments.combine(statistics, forming: false)
        let n = moments.globalBatchSize
        guard n >= 2 else { throw ObjectiveError("vicreg needs a global batch of at least 2 rows, given \(n)") }

        // Loss and G = ∂loss/∂C of each view, streamed over the lower triangle of the covariance
        // (no D × D matrix in Double); G is formed in Scalar (symmetric, mirrored) for the one
        // n × D × D gradient product of each view.
        let invariance = Double(statistics[squaredDistance.lowerBound]) / Double(n * d)
        var variance = 0.0, covariance = 0.0
        let covarianceScale = 1 / Double(n - 1)
        let gradient: Tensor<Scalar> = context.workspace.tensor("vicreg.gradient", [d, d])
        for v in 0..<2 {
            gradient.withUnsafeMutableBufferPointer { g in
                moments.forEachCovarianceRow(v, statistics) { j, m in
                    var offDiagonal = 0.0
                    for k in 0..<j {
                        let c = m[k] * covarianceScale
                        offDiagonal += c * c / Double(d)
                        g[j * d + k] = Scalar(2 * covarianceWeight * c / Double(d))
                    }
                    covariance += 2 * offDiagonal                    // C_jk and C_kj
                    let hinge = varianceHinge(m[j] * covarianceScale, dimension: d)
                    variance += hinge.term
                    g[j * d + j] = Scalar(hinge.gradient)
                }
                VICReg.mirrorLowerTriangle(g, dimension: d)
            }
            setInvarianceGradient(gradients[v], view: v, views: views, globalBatchSize: n)
            Tensor.gemm(moments.centred(views[v], view: v), gradient, into: gradients[v],
                        alpha: Scalar(2 / Double(n - 1)), beta: 1)
        }
        return result(invariance: invariance, variance: variance, covariance: covariance, batch: batch)
    }

    /// The second moments VICReg reduces: the covariance of each view.
    static var secondMoments: [GlobalMoments<Scalar>.SecondMoment] { [.covariance(0), .covariance(1)] }

    /// What VICReg's statistics of two views of `dimension` features cost (see
    /// ``ReductionCostModel``): the packed lower triangles of both covariances, the summed
    /// squared distance between the views, and per rank its row count and exact means (or,
    /// with a shared mean, one all-reduce of the count and both views' sums before). Per
    /// row: two covariance rows to form (syrk, `D²` each) and per view the gradient product
    /// `(x − μ) G`, `2·D²`; the Gram form when it holds every row and `2N < D`.
    public static func plan(dimension d: Int) -> StatisticsPlan {
        let size = GlobalMoments<Scalar>.elementCount(viewCount: 2, dimension: d, secondMoments: secondMoments)
        return StatisticsPlan(viewCount: 2, dimension: d, fixedElements: size.fixed + 1,
                              elementsPerRank: size.perRank, meanElements: size.sharedMean, flopsPerRow: Double(2 * d * d), allReduceCount: 1,
                              gradientFlopsPerRow: Double(4 * d * d), gramForm: true)
    }

    /// The loss and gradient through the `N × N` Gram matrix of the centred rows, never a
    /// `D × D` one: for when this rank holds every row of the global batch (one process, or
    /// the gather path) and `2N < D`, where it is the cheaper form of the same value.
    ///
    /// With `X` the globally centred rows (`N × D`), `S = XᵀX` and `K = XXᵀ`:
    /// - `Σ_jk S_jk² = ‖K‖²_F` (both are `Σ σ⁴`), so the off-diagonal sum of squares of
    ///   `C = S/(N−1)` is `(‖K‖²_F − Σ_j S_jj²)/(N−1)²`, with `S_jj = Σ_i X_ij²`; each rank
    ///   holds the block `K_r = X_r Xᵀ` of its own rows, and the blocks' squared norms are
    ///   summed over ranks (one all-reduce of three `Double`s, with the invariance's squared
    ///   distances of each rank's rows).
    /// - With `G = a·C + diag(h)`, `a = 2ν/D`, `h_j = G_jj − a·C_jj`, the covariance part of
    ///   the gradient of row `i` is `2/(N−1)·(x_i − μ) G = 2/(N−1)·[a/(N−1)·K_{i,:} X + x_i ∘ h]`.
    ///
    /// On `P` ranks each rank forms its rows `K_r = X_r Xᵀ` with a `gemm` (`2·n·N·D`), or, when
    /// `splittingByFeatures` (the cost model's ``ReductionCostModel/splitsGram(plan:worldSize:globalBatchSize:largestRankCount:scalarBytes:)``),
    /// the ranks share the symmetric work: rank `r` forms with `syrk` the whole `N × N` Gram
    /// matrix of its share `c_r` of the features, and one reduce-scatter of those sums
    /// `K = Σ_r X_{:,c_r} X_{:,c_r}ᵀ` leaves each rank its rows — `N²·D/P` operations a rank,
    /// half as many, for `N²` elements a view on the wire. The gradient product `K_r X` is
    /// `2·n·N·D` either way.
    ///
    /// Work per view and rank: `4·n·N·D`, or `N²·D/P + 2·n·N·D` split (`3·N²·D` on one rank),
    /// instead of the statistics form's `6·n·D²`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    func evaluateGram(_ batch: inout GlobalBatch<Scalar>, gradients: [Tensor<Scalar>],
                      splittingByFeatures: Bool) throws -> ObjectiveResult {
        let all = batch.statisticsViews, views = batch.localViews
        let n = all[0].rowCount, d = all[0].columnCount, local = views[0].rowCount
        guard n >= 2 else { throw ObjectiveError("vicreg needs a global batch of at least 2 rows, given \(n)") }
        let offset = local == n ? 0 : (batch.rowOffset ?? 0)
        let size = batch.communicator.size, rank = batch.communicator.rank
        let a = 2 * covarianceWeight / Double(d)

        var centred: [Tensor<Scalar>] = [], blocks: [Tensor<Scalar>] = [], columnSquares: [[Double]] = []
        // The blocks' squared norms, and the squared distances of this rank's rows.
        var blockNorms = [Double](repeating: 0, count: 3)
        blockNorms[2] = VICReg.squaredDistance(views)
        for v in 0..<2 {
            let (x, squares) = VICReg.centreWithColumnSquares(all[v], into: batch.workspace.tensor("vicreg.centred", index: v, all[v].shape, zeroed: false))
            let block: Tensor<Scalar> = batch.workspace.tensor("vicreg.gram", index: v, [local, n])
            if size == 1 {
                Tensor.syrk(x, transpose: false, into: block)
            } else if splittingByFeatures {
                // K over this rank's share of the features (half a gemm of the share, by
                // symmetry), summed over ranks into each rank's rows: K = Σ_r X_{:,c_r} X_{:,c_r}ᵀ.
                let partial: Tensor<Scalar> = batch.workspace.tensor("vicreg.partialGram", index: v, [n, n], zeroed: false)
                Tensor.syrk(x, transpose: false, columns: d * rank / size ..< d * (rank + 1) / size, into: partial)
                try batch.reduceScatterRows(partial, into: block)
            } else if local > 0 {
                Tensor.gemm(x.rows(offset ..< offset + local), x, transposeB: true, into: block)
            }
            blockNorms[v] = block.squaredNorm()
            centred.append(x)
            blocks.append(block)
            columnSquares.append(squares)
        }
        try batch.sumOverRanks(&blockNorms)
        let invariance = blockNorms[2] / Double(n * d)

        var variance = 0.0, covariance = 0.0
        let covarianceScale = 1 / Double(n - 1)
        for v in 0..<2 {
            var diagonalSquares = 0.0
            var factors = [Scalar](repeating: 0, count: d)          // 2/(N−1)·h_j
            for j in 0..<d {
                let c = columnSquares[v][j] * covarianceScale
                diagonalSquares += c * c
                let hinge = varianceHinge(c, dimension: d)
                variance += hinge.term
                factors[j] = Scalar(2 * covarianceScale * (hinge.gradient - a * c))
            }
            covariance += (blockNorms[v] * covarianceScale * covarianceScale - diagonalSquares) / Double(d)

            setInvarianceGradient(gradients[v], view: v, views: views, globalBatchSize: n)
            guard local > 0 else { continue }
            Tensor.gemm(blocks[v], centred[v], into: gradients[v],
                        alpha: Scalar(2 * covarianceScale * a * covarianceScale), beta: 1)
            let mine = centred[v].rows(offset ..< offset + local)
            mine.withUnsafeBufferPointer { x in
                gradients[v].withUnsafeMutableBufferPointer { out in
                    for i in 0..<local { for j in 0..<d { out[i * d + j] += factors[j] * x[i * d + j] } }
                }
            }
        }
        return result(invariance: invariance, variance: variance, covariance: covariance, batch: batch)
    }

    /// The variance term of one feature, `max(0, 1 − √(C_jj + ε))/(2D)`, and `G_jj`, its
    /// derivative (times μ) with respect to `C_jj`.
    private func varianceHinge(_ variance: Double, dimension d: Int) -> (term: Double, gradient: Double) {
        let standardDeviation = (variance + epsilon).squareRoot()
        guard standardDeviation < 1 else { return (0, 0) }
        return ((1 - standardDeviation) / Double(2 * d), -varianceWeight / (4 * Double(d) * standardDeviation))
    }

    /// `Σ_i ‖z_i − z'_i‖²` of two views, in one pass (differences in `Double`).
    private static func squaredDistance(_ views: [Tensor<Scalar>]) -> Double {
        views[0].withUnsafeBufferPointer { a in
            views[1].withUnsafeBufferPointer { b in
                Tensor<Scalar>.laneSum(a.count) { let e = Double(a[$0]) - Double(b[$0]); return e * e }
            }
        }
    }

    /// The rows centred on their column means and, per column, the sum of squares of the
    /// centred values: one pass after the means.
    private static func centreWithColumnSquares(_ rows: Tensor<Scalar>, into result: Tensor<Scalar>) -> (Tensor<Scalar>, [Double]) {
        let mean = rows.columnSums().map { $0 / Double(rows.rowCount) }
        var squares = [Double](repeating: 0, count: rows.columnCount)
        let centred = squares.withUnsafeMutableBufferPointer {
            GlobalMoments<Scalar>.centre(rows, on: mean, columnSquares: $0, into: result)
        }
        return (centred, squares)
    }

    /// Overwrites `gradient` with the invariance part of view `v`'s gradient,
    /// `±2λ/(N·D)·(z_i − z'_i)`, in one pass.
    private func setInvarianceGradient(_ gradient: Tensor<Scalar>, view v: Int, views: [Tensor<Scalar>],
                                       globalBatchSize n: Int) {
        let scale = Scalar((v == 0 ? 2 : -2) * invarianceWeight / Double(n * gradient.columnCount))
        views[0].withUnsafeBufferPointer { a in
            views[1].withUnsafeBufferPointer { b in
                gradient.withUnsafeMutableBufferPointer { g in
                    for i in g.indices { g[i] = scale * (a[i] - b[i]) }
                }
            }
        }
    }

    private func result(invariance: Double, variance: Double, covariance: Double,
                        batch: GlobalBatch<Scalar>) -> ObjectiveResult {
        ObjectiveResult(loss: invarianceWeight * invariance + varianceWeight * variance + covarianceWeight * covariance,
                        terms: [ObjectiveTerm("invariance", invariance), ObjectiveTerm("variance", variance),
                                ObjectiveTerm("covariance", covariance)],
                        communicatedBytes: batch.communicatedBytes, reduction: batch.path,
                        momentCombination: batch.momentCombination)
    }

    /// Copies the strictly lower triangle of the `d × d` row-major matrix into the upper one,
    /// a tile at a time through a small buffer, so that both reads and writes run along rows
    /// (a strided write of rows 8 KiB apart would thrash the cache).
    static func mirrorLowerTriangle(_ g: UnsafeMutableBufferPointer<Scalar>, dimension d: Int) {
        let tile = 64
        let buffer = UnsafeMutableBufferPointer<Scalar>.allocate(capacity: tile * tile)
        defer { buffer.deallocate() }
        for ib in stride(from: 0, to: d, by: tile) {
            let iEnd = min(ib + tile, d)
            for jb in stride(from: 0, through: ib, by: tile) {
                let jEnd = min(jb + tile, d)
                for i in ib..<iEnd {
                    for j in jb..<min(jEnd, i) { buffer[(j - jb) * tile + (i - ib)] = g[i * d + j] }
                }
                for j in jb..<jEnd {
                    for i in max(ib, j + 1)..<max(iEnd, j + 1) { g[j * d + i] = buffer[(j - jb) * tile + (i - ib)] }
                }
            }
        }
    }
}

// MARK: - Settings

extension ObjectiveName {
    public static let vicreg = ObjectiveName(rawValue: VICRegSettings.name)
}

/// `objective.vicreg`: the weights of VICReg's three terms.
public struct VICRegSettings: ObjectiveSettings {
    public static let name = "vicreg"
    public static let summary = "VICReg: invariance + variance + covariance (Bardes et al., 2022)"
    public static let viewCount = 2...2
    public var invariance = 25.0, variance = 25.0, covariance = 1.0

    public init() {}

    public func validate() throws {
        for (key, weight) in [("invariance", invariance), ("variance", variance), ("covariance", covariance)] where weight < 0 {
            throw ObjectiveSettingsError(key: key, "must not be negative, got \(weight)")
        }
    }

    public func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> {
        VICReg<Float>(invarianceWeight: invariance, varianceWeight: variance, covarianceWeight: covariance)
    }

    public func plan(dimension: Int) -> StatisticsPlan { VICReg<Float>.plan(dimension: dimension) }
}

extension ObjectiveConfiguration {
    public var vicreg: VICRegSettings {
        get { self[VICRegSettings.self] }
        set { self[VICRegSettings.self] = newValue }
    }
}
