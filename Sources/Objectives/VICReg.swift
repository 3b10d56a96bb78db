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
        let secondMoments: [GlobalMoments<Scalar>.SecondMoment] = [.covariance(0), .covariance(1)]

        // Statistics: the moments of both views and the summed squared distance between them.
        let size = GlobalMoments<Scalar>.elementCount(viewCount: 2, dimension: d, secondMoments: secondMoments,
                                                      partitions: 1)
        let plan = StatisticsPlan(viewCount: 2, dimension: d, fixedElements: size.fixed + 1,
                                  elementsPerRank: size.perRank, flopsPerRow: Double(2 * d * d), allReduceCount: 1)
        var batch = try GlobalBatch(views: views, context: context, plan: plan)
        var statistics = FusedStatistics<Scalar>()
        var moments = GlobalMoments<Scalar>(viewCount: 2, dimension: d, secondMoments: secondMoments,
                                            partitionCount: batch.partitionCount, in: &statistics)
        let squaredDistance = statistics.reserve(1)
        moments.accumulate(batch.statisticsViews, partition: batch.partition, into: &statistics)
        let difference = batch.statisticsViews[0].copy()
        difference.add(batch.statisticsViews[1], scaledBy: -1)
        statistics[squaredDistance.lowerBound] = Scalar(difference.squaredNorm())

        // The one all-reduce.
        try batch.allReduce(&statistics)
        moments.combine(statistics, forming: false)
        let n = moments.globalBatchSize
        guard n >= 2 else { throw ObjectiveError("vicreg needs a global batch of at least 2 rows, given \(n)") }

        // Loss and G = ∂loss/∂C of each view, streamed over the lower triangle of the covariance
        // (no D × D matrix in Double).
        //
        // The gradient product (x − μ) G takes one of two forms of the same value:
        // - D × D: G formed in Scalar (symmetric, mirrored), one n × D × D product;
        // - Gram, when every row of the statistics is on this rank (one partition) and 2N < D:
        //   with G = a·C + diag(h), a = 2ν/D, h_j = G_jj − a·C_jj and C = Xᵀ X/(N−1) of the
        //   centred rows X, (x_i − μ) G = a/(N−1)·(x_i − μ) Xᵀ X + (x_i − μ) ∘ h, two products
        //   of n × N × D instead of D² work a row.
        let invariance = Double(statistics[squaredDistance.lowerBound]) / Double(n * d)
        var variance = 0.0, covariance = 0.0
        let covarianceScale = 1 / Double(n - 1)
        let offDiagonalFactor = 2 * covarianceWeight / Double(d)          // a
        let useGram = batch.partitionCount == 1 && 2 * n < d
        let gradient = Tensor<Scalar>(zeros: useGram ? [0] : [d, d])
        var diagonal = [Double](repeating: 0, count: useGram ? d : 0)     // h
        let localDifference = views[0].copy()
        localDifference.add(views[1], scaledBy: -1)
        for v in 0..<2 {
            gradient.withUnsafeMutableBufferPointer { g in
                moments.forEachCovarianceRow(v, statistics) { j, m in
                    var offDiagonal = 0.0
                    for k in 0..<j {
                        let c = m[k] * covarianceScale
                        offDiagonal += c * c / Double(d)
                        if !useGram { g[j * d + k] = Scalar(2 * covarianceWeight * c / Double(d)) }
                    }
                    covariance += 2 * offDiagonal                    // C_jk and C_kj
                    let standardDeviation = (m[j] * covarianceScale + epsilon).squareRoot()
                    var diagonalGradient = 0.0
                    if standardDeviation < 1 {
                        variance += (1 - standardDeviation) / Double(2 * d)
                        diagonalGradient = -varianceWeight / (4 * Double(d) * standardDeviation)
                    }
                    if useGram {
                        diagonal[j] = diagonalGradient - offDiagonalFactor * (m[j] * covarianceScale)
                    } else {
                        g[j * d + j] = Scalar(diagonalGradient)
                    }
                }
                if !useGram { VICReg.mirrorLowerTriangle(g, dimension: d) }
            }
            // Gradient of this rank's rows.
            gradients[v].copy(from: localDifference)
            gradients[v].scale(by: Scalar((v == 0 ? 2 : -2) * invarianceWeight / Double(n * d)))
            let centred = moments.centred(views[v], view: v)
            if useGram {
                let all = batch.path == .gather ? moments.centred(batch.statisticsViews[v], view: v) : centred
                let gram = Tensor<Scalar>(zeros: [centred.rowCount, all.rowCount])
                Tensor.gemm(centred, all, transposeB: true, into: gram)
                Tensor.gemm(gram, all, into: gradients[v],
                            alpha: Scalar(2 / Double(n - 1) * offDiagonalFactor / Double(n - 1)), beta: 1)
                let rows = centred.rowCount
                let factors = diagonal.map { Scalar(2 / Double(n - 1) * $0) }
                centred.withUnsafeBufferPointer { x in
                    gradients[v].withUnsafeMutableBufferPointer { out in
                        for i in 0..<rows { for j in 0..<d { out[i * d + j] += factors[j] * x[i * d + j] } }
                    }
                }
            } else {
                Tensor.gemm(centred, gradient, into: gradients[v], alpha: Scalar(2 / Double(n - 1)), beta: 1)
            }
        }
        let loss = invarianceWeight * invariance + varianceWeight * variance + covarianceWeight * covariance
        return ObjectiveResult(loss: loss,
                               terms: [ObjectiveTerm("invariance", invariance), ObjectiveTerm("variance", variance),
                                       ObjectiveTerm("covariance", covariance)],
                               communicatedBytes: batch.communicatedBytes, reduction: batch.path)
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
