import Tensor
import Communication

/// Barlow Twins: redundancy reduction through the cross-correlation matrix
/// (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021).
///
/// Each view is batch-normalised with the global mean and biased variance,
/// `ẑ = (z − z̄) / √(σ² + ε)`, and
///
///     crossCorrelation C = ẑ₁ᵀ ẑ₂ / N = diag(1/s₁) · M₁₂ · diag(1/s₂) / N
///     loss = Σ_j (C_jj − 1)² + λ · Σ_{j≠k} C_jk²
///
/// with `M₁₂ = Σ_i (z₁ᵢ − z̄₁)(z₂ᵢ − z̄₂)ᵀ` and `s = √(σ² + ε)`, `σ² = M_jj / N`. The terms are
/// `on_diagonal` = Σ (C_jj − 1)² and `off_diagonal` = Σ_{j≠k} C_jk² (unweighted).
///
/// So only the cross moment `M₁₂` and the per-feature variances are all-reduced (not the two
/// auto-covariances). With `H = ∂loss/∂C` (`H_jj = 2(C_jj − 1)`, `H_jk = 2λ C_jk`),
/// `K = diag(1/s₁) H diag(1/s₂) / N` and `g₁_j = −Σ_k H_jk C_jk / (2N s₁_j²)` (and `g₂` alike
/// over columns), the gradients of the rows are
///
///     ∂loss/∂Z₁ = Ẑ₂c Kᵀ + 2 Ẑ₁c diag(g₁),   ∂loss/∂Z₂ = Ẑ₁c K + 2 Ẑ₂c diag(g₂)
///
/// where `Ẑc` are the rows centred on the global mean (the mean's own gradient vanishes
/// because centred rows sum to zero).
public struct BarlowTwins<Scalar: TensorScalar & CommunicableScalar>: Objective {
    /// λ, the weight of the off-diagonal (redundancy-reduction) term (default 0.0051).
    public var offDiagonalWeight: Double
    /// ε added to the variance in the batch normalisation (default 1e-5).
    public var epsilon: Double

    public var name: String { BarlowTwinsSettings.name }

    public init(offDiagonalWeight: Double = 0.0051, epsilon: Double = 1e-5) {
        self.offDiagonalWeight = offDiagonalWeight
        self.epsilon = epsilon
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func evaluate(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>],
                         context: ObjectiveContext) throws -> ObjectiveResult {
        try validate(views: views, gradients: gradients, objective: name, viewCount: 2...2)
        let d = views[0].columnCount
        let secondMoments = BarlowTwins.secondMoments

        // Statistics: means, per-feature variances and the cross moment.
        let plan = BarlowTwins.plan(dimension: d)
        var batch = try GlobalBatch(views: views, context: context, plan: plan)
        var statistics = FusedStatistics<Scalar>()
        var moments = batch.moments(viewCount: 2, dimension: d, secondMoments: secondMoments, in: &statistics)
        try batch.accumulate(&moments, rows: batch.statisticsViews, into: &statistics)

        // The one all-reduce.
        try batch.allReduce(&statistics)
        moments.combine(statistics)
        let n = Double(moments.globalBatchSize)
        guard n >= 1 else { throw ObjectiveError("barlow needs a non-empty global batch") }

        // Loss: the cross-correlation matrix of the normalised views.
        let scale1 = moments.moments[0].scalars.map { ($0 / n + epsilon).squareRoot() }
        let scale2 = moments.moments[1].scalars.map { ($0 / n + epsilon).squareRoot() }
        let crossCorrelation = moments.moments[2]
        var onDiagonal = 0.0, offDiagonal = 0.0
        let k: Tensor<Scalar> = context.workspace.tensor("barlow.k", [d, d])   // ∂loss/∂M₁₂, rounded to Scalar
        var g1 = [Double](repeating: 0, count: d), g2 = [Double](repeating: 0, count: d)
        crossCorrelation.withUnsafeMutableBufferPointer { c in
            k.withUnsafeMutableBufferPointer { k in
                for i in 0..<d {
                    for j in 0..<d {
                        c[i * d + j] /= n * scale1[i] * scale2[j]
                        let h: Double
                        if i == j {
                            onDiagonal += (c[i * d + j] - 1) * (c[i * d + j] - 1)
                            h = 2 * (c[i * d + j] - 1)
                        } else {
                            offDiagonal += c[i * d + j] * c[i * d + j]
                            h = 2 * offDiagonalWeight * c[i * d + j]
                        }
                        k[i * d + j] = Scalar(h / (n * scale1[i] * scale2[j]))
                        g1[i] -= h * c[i * d + j] / (2 * n * scale1[i] * scale1[i])
                        g2[j] -= h * c[i * d + j] / (2 * n * scale2[j] * scale2[j])
                    }
                }
            }
        }
        let loss = onDiagonal + offDiagonalWeight * offDiagonal

        // Gradient of this rank's rows.
        let centred = [moments.centred(views[0], view: 0), moments.centred(views[1], view: 1)]
        let kScalar = k
        for (v, g) in [g1, g2].enumerated() {
            gradients[v].copy(from: centred[v])
            gradients[v].withUnsafeMutableBufferPointer { out in
                for i in 0..<views[v].rowCount { for j in 0..<d { out[i * d + j] *= Scalar(2 * g[j]) } }
            }
        }
        Tensor.gemm(centred[1], kScalar, transposeB: true, into: gradients[0], beta: 1)
        Tensor.gemm(centred[0], kScalar, into: gradients[1], beta: 1)
        return ObjectiveResult(loss: loss,
                               terms: [ObjectiveTerm("on_diagonal", onDiagonal), ObjectiveTerm("off_diagonal", offDiagonal)],
                               communicatedBytes: batch.communicatedBytes, reduction: batch.path,
                               momentCombination: batch.momentCombination)
    }

    /// The second moments Barlow Twins reduces: each view's variances and the cross moment.
    static var secondMoments: [GlobalMoments<Scalar>.SecondMoment] { [.variance(0), .variance(1), .crossCovariance(0, 1)] }

    /// What Barlow Twins' statistics of two views of `dimension` features cost (see
    /// ``ReductionCostModel``): the `D × D` cross moment, the `2·D` variances, and per rank its
    /// row count and exact means (or, with a shared mean, one all-reduce of the count and both
    /// views' sums before). Per row: the cross moment's `2·D²` to form, and the two
    /// gradient products `Ẑ₂c Kᵀ`, `Ẑ₁c K` of this rank's rows, `4·D²`.
    public static func plan(dimension d: Int) -> StatisticsPlan {
        let size = GlobalMoments<Scalar>.elementCount(viewCount: 2, dimension: d, secondMoments: secondMoments)
        return StatisticsPlan(viewCount: 2, dimension: d, fixedElements: size.fixed, elementsPerRank: size.perRank,
                              meanElements: size.sharedMean, flopsPerRow: Double(2 * d * d), allReduceCount: 1, gradientFlopsPerRow: Double(4 * d * d))
    }
}

// MARK: - Settings

extension ObjectiveName {
    public static let barlowTwins = ObjectiveName(rawValue: BarlowTwinsSettings.name)
}

/// `objective.barlow_twins`: λ, the weight of the off-diagonal terms.
public struct BarlowTwinsSettings: ObjectiveSettings {
    public static let name = "barlow_twins"
    public static let summary = "Barlow Twins: cross-correlation towards the identity (Zbontar et al., 2021)"
    public static let viewCount = 2...2
    /// λ, the weight of the off-diagonal terms.
    public var lambda = 0.0051

    public init() {}

    public func validate() throws {
        if lambda < 0 { throw ObjectiveSettingsError(key: "lambda", "must not be negative, got \(lambda)") }
    }

    public func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> {
        BarlowTwins<Float>(offDiagonalWeight: lambda)
    }

    public func plan(dimension: Int) -> StatisticsPlan { BarlowTwins<Float>.plan(dimension: dimension) }
}

extension ObjectiveConfiguration {
    public var barlowTwins: BarlowTwinsSettings {
        get { self[BarlowTwinsSettings.self] }
        set { self[BarlowTwinsSettings.self] = newValue }
    }
}
