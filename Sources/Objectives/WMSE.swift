import Tensor
import Communication

/// W-MSE: whitening mean-squared error (Ermolov, Siarohin, Sangineto & Sebe, ICML 2021).
///
/// Each view is whitened with the statistics of its (sub-)batch of `N_g` rows and the whitened
/// rows are compared on the unit sphere:
///
///     Σ   = 1/(N_g − 1) · Σ_i (z_i − z̄)(z_i − z̄)ᵀ              (unbiased, after centring)
///     Σ_s = (1 − α)·Σ + α·tr(Σ)/D · I                          (optional shrinkage α)
///     Σ_s = L Lᵀ,   W = L⁻¹,   y_i = W (z_i − z̄),   u_i = y_i / ‖y_i‖
///     loss = 1/N · Σ_i (2 − 2⟨u_i, u'_i⟩)
///
/// With `whiteningSize`, the global batch is cut into sub-batches of that size by a permutation
/// drawn from `(seed, step)` (the same on every rank), and each is whitened on its own.
///
/// Backward, per view and sub-batch, with `g_i = ∂loss/∂y_i = (I − u_i u_iᵀ) ∂loss/∂u_i / ‖y_i‖`:
///
///     W̄  = tril(Σ_i g_i (z_i − z̄)ᵀ)                             (W is lower triangular)
///     Σ̄_s = sym(Wᵀ Φ(−W̄ Wᵀ) W)                                  (through L = chol(Σ_s), W = L⁻¹;
///                                                                 Φ = lower triangle, diagonal halved)
///     Σ̄  = (1 − α)·Σ̄_s + α·tr(Σ̄_s)/D · I
///     ∂loss/∂z_i = Wᵀ (g_i − mean_j g_j) + 2/(N_g − 1) · Σ̄ (z_i − z̄)
///
/// `W̄` and `Σ_j g_j` are batch sums of quantities that exist only after whitening, so on the
/// statistics path W-MSE takes two all-reduces: the forward moments, then these backward sums
/// (with the loss). The gather path needs none after the gather.
public struct WMSE<Scalar: TensorScalar & CommunicableScalar>: Objective {
    /// α, the shrinkage of the covariance towards `tr(Σ)/D · I` (default 0: none).
    public var shrinkage: Double
    /// The size of the sub-batches that are whitened separately (default nil: the whole
    /// global batch). The global batch size must be a multiple of it.
    public var whiteningSize: Int?

    public var name: String { "wmse" }

    public init(shrinkage: Double = 0, whiteningSize: Int? = nil) {
        self.shrinkage = shrinkage
        self.whiteningSize = whiteningSize
    }

    /// The stream of the counter-based generator the sub-batch permutation comes from.
    static var subBatchStream: String { "wmse.subbatches" }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func evaluate(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>],
                         context: ObjectiveContext) throws -> ObjectiveResult {
        try validate(views: views, gradients: gradients, objective: name, viewCount: 2...2)
        let d = views[0].columnCount, localCount = views[0].rowCount
        let secondMoments = WMSE.secondMoments
        let plan = WMSE.plan(dimension: d)
        var batch = try GlobalBatch(views: views, context: context, plan: plan, needsRowCounts: whiteningSize != nil)

        // Which statistics rows belong to which sub-batch.
        let statisticsCount = batch.statisticsViews[0].rowCount
        let localRows = batch.path == .gather ? batch.rowOffset! ..< batch.rowOffset! + localCount : 0 ..< localCount
        let subBatches = try subBatchRows(batch: batch, statisticsCount: statisticsCount, context: context)
        let workspace = context.workspace
        let groupViews = subBatches.count == 1 && subBatches[0].elementsEqual(0..<statisticsCount)
            ? [batch.statisticsViews]
            : subBatches.enumerated().map { g, rows in
                batch.statisticsViews.enumerated().map { v, view in
                    WMSE.select(rows, of: view, into: workspace.tensor("wmse.select", index: 2 * g + v,
                                                                         [rows.count, view.columnCount], zeroed: false))
                }
            }

        // Statistics: the moments of both views of every sub-batch.
        var forward = FusedStatistics<Scalar>()
        var moments = subBatches.indices.map { g in
            batch.moments(viewCount: 2, dimension: d, secondMoments: secondMoments, in: &forward, workspaceSlot: g)
        }
        try batch.accumulate(&moments, rows: groupViews, into: &forward)

        // The first all-reduce.
        try batch.allReduce(&forward)
        for g in moments.indices { moments[g].combine(forward) }
        let globalBatchSize = moments.reduce(0) { $0 + $1.globalBatchSize }
        guard moments.allSatisfy({ $0.globalBatchSize > d }) else {
            throw ObjectiveError("wmse needs more rows than features in every whitened batch (\(moments.map(\.globalBatchSize)) rows, \(d) features)")
        }

        // Loss: whiten, normalise, compare; and the backward sums W̄, Σ g.
        var backward = FusedStatistics<Scalar>()
        let lossSum = backward.reserve(1)
        var passes: [[WhiteningPass]] = []
        var localLoss = 0.0
        for (g, rows) in groupViews.enumerated() {
            let pass = try (0..<2).map { v in
                try WhiteningPass(rows: rows[v], moments: moments[g], view: v, shrinkage: shrinkage, workspace: workspace,
                                  index: 2 * g + v)
            }
            localLoss += WhiteningPass.pairGradients(pass[0], pass[1], globalBatchSize: globalBatchSize)
            for v in 0..<2 { pass[v].reserveAndAccumulate(into: &backward) }
            passes.append(pass)
        }
        backward[lossSum.lowerBound] = Scalar(localLoss)

        // The second all-reduce (backward sums).
        try batch.allReduce(&backward)
        let loss = Double(backward[lossSum.lowerBound]) / Double(globalBatchSize)

        // Gradient of the statistics rows, then this rank's share.
        let statisticsGradients: [Tensor<Scalar>] = (0..<2).map {
            workspace.tensor("wmse.statisticsGradient", index: $0, [statisticsCount, d])
        }
        for (g, rows) in subBatches.enumerated() {
            for v in 0..<2 {
                let gradient = passes[g][v].rowGradients(backward, shrinkage: shrinkage,
                                                          batchSize: moments[g].globalBatchSize)
                for (k, row) in rows.enumerated() {
                    statisticsGradients[v].rows(row ..< row + 1).copy(from: gradient.rows(k ..< k + 1))
                }
            }
        }
        for v in 0..<2 { gradients[v].copy(from: statisticsGradients[v].rows(localRows)) }
        return ObjectiveResult(loss: loss, terms: [ObjectiveTerm("alignment", loss)],
                               communicatedBytes: batch.communicatedBytes, reduction: batch.path,
                               momentCombination: batch.momentCombination)
    }

    /// The second moments W-MSE reduces: the covariance of each view.
    static var secondMoments: [GlobalMoments<Scalar>.SecondMoment] { [.covariance(0), .covariance(1)] }

    /// What W-MSE's statistics of two views of `dimension` features cost (see
    /// ``ReductionCostModel``), for one whitened batch (sub-batches of `whiteningSize` repeat
    /// the moments once each): the forward moments (packed covariances, per rank the row
    /// count and exact means — or a shared mean's all-reduce of the count and sums before),
    /// then the backward sums `Σ g x̃ᵀ`, `Σ g` of both views and the
    /// loss — two all-reduces.
    ///
    /// Per statistics row and view, all formed for every statistics row (so repeated on the
    /// gather path): the covariance row (syrk, `D²`), the whitening `2·D²`, the backward sum
    /// `2·D²` and the two gradient products `4·D²` — `18·D²` for both views. Per evaluation and
    /// view, independent of the rows: the Cholesky factor and its inverse (`D³`, in `Double`)
    /// and the three `D × D × D` products of the backward pass (`6·D³`).
    public static func plan(dimension d: Int) -> StatisticsPlan {
        let size = GlobalMoments<Scalar>.elementCount(viewCount: 2, dimension: d, secondMoments: secondMoments)
        let cube = Double(d) * Double(d) * Double(d)
        return StatisticsPlan(viewCount: 2, dimension: d, fixedElements: size.fixed + 2 * (d * d + d) + 1,
                              elementsPerRank: size.perRank, meanElements: size.sharedMean, flopsPerRow: Double(18 * d * d), allReduceCount: 2,
                              flopsPerEvaluation: 2 * (cube + 6 * cube))
    }

    /// The statistics rows of each sub-batch (indices into the statistics views).
    private func subBatchRows(batch: GlobalBatch<Scalar>, statisticsCount: Int,
                              context: ObjectiveContext) throws -> [[Int]] {
        guard let whiteningSize else { return [Array(0..<statisticsCount)] }
        let total = batch.rowCounts!.reduce(0, +)
        guard whiteningSize > 0, total % whiteningSize == 0 else {
            throw ObjectiveError("wmse: global batch of \(total) rows is not a multiple of the whitening size \(whiteningSize)")
        }
        // A permutation of the global batch from (seed, step): Fisher–Yates on counter draws.
        let random = CounterRandom(seed: context.seed, streamName: WMSE.subBatchStream)
            .substream(UInt64(truncatingIfNeeded: context.step))
        var permutation = Array(0..<total)
        for i in stride(from: total - 1, to: 0, by: -1) {
            let j = min(i, Int(random.uniform(at: UInt64(i)) * Double(i + 1)))
            permutation.swapAt(i, j)
        }
        var subBatch = [Int](repeating: 0, count: total)
        for (position, row) in permutation.enumerated() { subBatch[row] = position / whiteningSize }
        let firstRow = batch.path == .gather ? 0 : batch.rowOffset!
        var rows = [[Int]](repeating: [], count: total / whiteningSize)
        for i in 0..<statisticsCount { rows[subBatch[firstRow + i]].append(i) }
        return rows
    }

    /// The rows `indices` of `tensor`, copied into `result`.
    static func select(_ indices: [Int], of tensor: Tensor<Scalar>, into result: Tensor<Scalar>) -> Tensor<Scalar> {
        for (k, row) in indices.enumerated() { result.rows(k ..< k + 1).copy(from: tensor.rows(row ..< row + 1)) }
        return result
    }

    /// The whitening of one view of one sub-batch: forward values kept for the backward pass.
    private final class WhiteningPass {
        let dimension: Int
        /// Where its buffers live, and which pass (sub-batch and view) it is.
        let workspace: Workspace
        let index: Int
        /// `W = L⁻¹`, in `Double` and in `Scalar`.
        let whitening: Tensor<Double>
        let whiteningScalar: Tensor<Scalar>
        /// The rows centred on the global mean, `n × D`.
        let centred: Tensor<Scalar>
        /// The whitened rows `y`, their norms, and the unit rows `u`.
        let whitened: Tensor<Scalar>
        var norms: [Double] = []
        let unit: Tensor<Scalar>
        /// `g = ∂loss/∂y`, set by ``pairGradients(_:_:globalBatchSize:)``.
        let whitenedGradient: Tensor<Scalar>
        private var region = 0..<0

        init(rows: Tensor<Scalar>, moments: GlobalMoments<Scalar>, view: Int, shrinkage: Double, workspace: Workspace,
             index: Int) throws {
            let d = rows.columnCount, n = rows.rowCount
            dimension = d
            self.workspace = workspace
            self.index = index
            let covariance = moments.moments[view]
            covariance.scale(by: 1 / Double(moments.globalBatchSize - 1))
            if shrinkage != 0 {
                var trace = 0.0
                for j in 0..<d { trace += covariance[j, j] }
                covariance.scale(by: 1 - shrinkage)
                for j in 0..<d { covariance[j, j] += shrinkage * trace / Double(d) }
            }
            do {
                whitening = try covariance.choleskyLower(inverse: true,
                                                         into: workspace.tensor("wmse.whitening", index: index, [d, d], zeroed: false))
            } catch {
                throw ObjectiveError("wmse: cannot whiten view \(view): \(error)")
            }
            whiteningScalar = whitening.converted(into: workspace.tensor("wmse.whiteningScalar", index: index, [d, d],
                                                                         zeroed: false))
            centred = moments.centred(rows, view: view)
            whitened = workspace.tensor("wmse.whitened", index: index, [n, d], zeroed: false)
            Tensor.gemm(centred, whiteningScalar, transposeB: true, into: whitened)
            unit = workspace.copy(whitened, into: "wmse.unit", index: index)
            whitenedGradient = workspace.tensor("wmse.whitenedGradient", index: index, [n, d])
            for i in 0..<n {
                let row = unit.rows(i ..< i + 1)
                let norm = row.squaredNorm().squareRoot()
                norms.append(norm)
                row.scale(by: Scalar(1 / norm))
            }
        }

        /// Sets `g = ∂loss/∂y` of both views (`∂loss/∂u = −2/N · u'`) and returns
        /// `Σ_i (2 − 2⟨u_i, u'_i⟩)` over the pass's rows.
        static func pairGradients(_ a: WhiteningPass, _ b: WhiteningPass, globalBatchSize: Int) -> Double {
            let n = a.unit.rowCount, d = a.dimension
            var loss = 0.0
            for i in 0..<n {
                let ua = a.unit.rows(i ..< i + 1), ub = b.unit.rows(i ..< i + 1)
                let cosine = ua.dot(ub)
                loss += 2 - 2 * cosine
                for (pass, other) in [(a, ub), (b, ua)] {
                    // g = (∂u − ⟨∂u, u⟩ u) / ‖y‖ with ∂u = −2/N · other, ⟨∂u, u⟩ = −2/N · cosine.
                    let scale = -2 / Double(globalBatchSize) / pass.norms[i]
                    let u = pass.unit.rows(i ..< i + 1)
                    let g = pass.whitenedGradient.rows(i ..< i + 1)
                    for j in 0..<d { g[flat: j] = Scalar(scale * (Double(other[flat: j]) - cosine * Double(u[flat: j]))) }
                }
            }
            return loss
        }

        /// Reserves and fills the backward sums: `Σ_i g_i x̃_iᵀ` (`D × D`) and `Σ_i g_i` (`D`).
        func reserveAndAccumulate(into buffer: inout FusedStatistics<Scalar>) {
            let d = dimension
            region = buffer.reserve(d * d + d)
            let product: Tensor<Scalar> = workspace.tensor("wmse.backwardProduct", [d, d], zeroed: false)
            Tensor.gemm(whitenedGradient, transposeA: true, centred, into: product)
            let sums = whitenedGradient.columnSums()
            for k in 0..<(d * d) { buffer[region.lowerBound + k] = product[flat: k] }
            for j in 0..<d { buffer[region.lowerBound + d * d + j] = Scalar(sums[j]) }
        }

        /// `∂loss/∂z` of the pass's rows from the reduced backward sums.
        func rowGradients(_ buffer: FusedStatistics<Scalar>, shrinkage: Double, batchSize: Int) -> Tensor<Scalar> {
            let d = dimension, n = centred.rowCount
            // W̄ = tril(Σ g x̃ᵀ), then P = Φ(−W̄ Wᵀ), then Σ̄_s = sym(Wᵀ P W).
            let whiteningGradient: Tensor<Double> = workspace.tensor("wmse.whiteningGradient", [d, d])
            for i in 0..<d { for j in 0...i { whiteningGradient[i, j] = Double(buffer[region.lowerBound + i * d + j]) } }
            let p: Tensor<Double> = workspace.tensor("wmse.p", [d, d], zeroed: false)
            Tensor.gemm(whiteningGradient, whitening, transposeB: true, into: p, alpha: -1)
            for i in 0..<d {
                p[i, i] *= 0.5
                for j in (i + 1)..<d where j < d { p[i, j] = 0 }
            }
            let pw: Tensor<Double> = workspace.tensor("wmse.pw", [d, d], zeroed: false)
            Tensor.gemm(p, whitening, into: pw)
            let s: Tensor<Double> = workspace.tensor("wmse.s", [d, d], zeroed: false)
            Tensor.gemm(whitening, transposeA: true, pw, into: s)
            let covarianceGradient: Tensor<Double> = workspace.tensor("wmse.covarianceGradient", [d, d])
            var trace = 0.0
            for i in 0..<d {
                trace += s[i, i]
                for j in 0..<d { covarianceGradient[i, j] = (1 - shrinkage) * 0.5 * (s[i, j] + s[j, i]) }
            }
            if shrinkage != 0 { for i in 0..<d { covarianceGradient[i, i] += shrinkage * trace / Double(d) } }

            // ∂z = (g − mean g) W + 2/(N_g − 1) · x̃ Σ̄.
            let meanGradient: Tensor<Scalar> = workspace.tensor("wmse.meanGradient", [d], zeroed: false)
            for j in 0..<d { meanGradient[flat: j] = Scalar(-Double(buffer[region.lowerBound + d * d + j]) / Double(batchSize)) }
            let shifted = workspace.copy(whitenedGradient, into: "wmse.shifted")
            shifted.addToEachRow(meanGradient)
            let gradient: Tensor<Scalar> = workspace.tensor("wmse.rowGradient", [n, d], zeroed: false)
            Tensor.gemm(shifted, whiteningScalar, into: gradient)
            let covarianceGradientScalar = covarianceGradient.converted(
                into: workspace.tensor("wmse.covarianceGradientScalar", [d, d], zeroed: false, as: Scalar.self))
            Tensor.gemm(centred, covarianceGradientScalar, into: gradient,
                        alpha: Scalar(2 / Double(batchSize - 1)), beta: 1)
            return gradient
        }
    }
}

// MARK: - Settings

extension ObjectiveName {
    public static let wmse = ObjectiveName(rawValue: WMSESettings.name)
}

/// `objective.wmse`: shrinkage and the whitening sub-batch.
public struct WMSESettings: ObjectiveSettings {
    public static let name = "wmse"
    public static let summary = "W-MSE: MSE between whitened views (Ermolov et al., 2021)"
    public static let viewCount = 2...2
    /// Shrinkage of the covariance towards its scaled identity, in [0, 1).
    public var shrinkage = 0.0
    /// Rows per whitening sub-batch (0: the whole global batch).
    public var subBatchSize = 0

    public init() {}

    public func validate() throws {
        if !(0..<1).contains(shrinkage) { throw ObjectiveSettingsError(key: "shrinkage", "must be in [0, 1)") }
        if subBatchSize < 0 { throw ObjectiveSettingsError(key: "sub_batch_size", "must be 0 (whole batch) or positive") }
    }

    public func validate(in context: ObjectiveBuildContext) throws {
        let whitened = subBatchSize > 0 ? subBatchSize : context.globalBatchSize
        guard whitened > context.embeddingWidth else {
            throw ObjectiveSettingsError(key: "", "whitening needs more rows than embedding features, but a whitened batch has \(whitened) rows (objective.wmse.sub_batch_size or schedule.global_batch_size) for \(context.embeddingWidth) features")
        }
        if subBatchSize > 0 && context.globalBatchSize % whitened != 0 {
            throw ObjectiveSettingsError(key: "sub_batch_size", "\(whitened) does not divide schedule.global_batch_size \(context.globalBatchSize)")
        }
    }

    public func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> {
        WMSE<Float>(shrinkage: shrinkage, whiteningSize: subBatchSize > 0 ? subBatchSize : nil)
    }

    public func plan(dimension: Int) -> StatisticsPlan { WMSE<Float>.plan(dimension: dimension) }
}

extension ObjectiveConfiguration {
    public var wmse: WMSESettings {
        get { self[WMSESettings.self] }
        set { self[WMSESettings.self] = newValue }
    }
}
