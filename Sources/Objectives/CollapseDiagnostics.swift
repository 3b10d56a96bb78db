import Tensor
import Communication

/// Measures of representational collapse of the embeddings of a global batch, for logs and
/// reports, computed with one fused all-reduce whatever the number of ranks.
///
/// With `C` the unbiased covariance of the global batch and `λ_k` its eigenvalues:
/// - per-feature standard deviation `√C_jj`: its mean and minimum (a dead feature has 0);
/// - `effectiveRank = exp(−Σ_k p_k log p_k)` with `p_k = σ_k / Σ σ`, `σ_k = √λ_k` the singular
///   values of the centred embedding matrix (up to the common factor `√(N−1)`); between 1
///   (complete collapse onto a line) and `D` (isotropic) (Roy & Vetterli, 2007);
/// - `offDiagonalCovarianceEnergy = Σ_{j≠k} C_jk² / Σ_{j,k} C_jk²`: 0 for decorrelated features;
/// - `eppsPulley`: the sliced Epps–Pulley statistic against `N(0, I)` (see ``SIGReg``) on
///   directions that are fresh at every step and independent of the training directions.
public struct CollapseDiagnostics: Sendable, Equatable {
    /// `N`, the rows the diagnostics describe.
    public var globalBatchSize: Int
    /// The mean over features of the standard deviation.
    public var meanStandardDeviation: Double
    /// The smallest standard deviation of a feature.
    public var minimumStandardDeviation: Double
    /// The exponential of the entropy of the normalised singular values.
    public var effectiveRank: Double
    /// The fraction of the covariance's squared Frobenius norm that lies off the diagonal.
    public var offDiagonalCovarianceEnergy: Double
    /// The sliced Epps–Pulley statistic.
    public var eppsPulley: Double
    /// The bytes this rank passed to the all-reduce.
    public var communicatedBytes: Int

    public init(globalBatchSize: Int, meanStandardDeviation: Double, minimumStandardDeviation: Double,
                effectiveRank: Double, offDiagonalCovarianceEnergy: Double, eppsPulley: Double, communicatedBytes: Int) {
        self.globalBatchSize = globalBatchSize
        self.meanStandardDeviation = meanStandardDeviation
        self.minimumStandardDeviation = minimumStandardDeviation
        self.effectiveRank = effectiveRank
        self.offDiagonalCovarianceEnergy = offDiagonalCovarianceEnergy
        self.eppsPulley = eppsPulley
        self.communicatedBytes = communicatedBytes
    }

    /// The stream of the counter-based generator the diagnostic directions come from.
    static var directionStream: String { "diagnostics.directions" }

    /// The diagnostics of the global batch whose rows on this rank are `embeddings` (`n_r × D`).
    ///
    /// - Parameters:
    ///   - embeddings: this rank's rows (possibly none).
    ///   - communicator: the ranks of the job; every rank must call this.
    ///   - step: selects the step's Epps–Pulley directions, with `seed`.
    ///   - directionCount: the number of Epps–Pulley directions (default 256).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public static func measure<Scalar: TensorScalar & CommunicableScalar>(
        _ embeddings: Tensor<Scalar>, communicator: any Communicator, step: Int = 0, seed: UInt64 = 0,
        directionCount: Int = 256
    ) throws -> CollapseDiagnostics {
        guard embeddings.rank == 2 else { throw ObjectiveError("diagnostics of a tensor of shape \(embeddings.shape)") }
        let d = embeddings.columnCount
        let eppsPulley = EppsPulley(directions: EppsPulley<Scalar>.randomDirections(
            dimension: d, count: directionCount, seed: seed, streamName: directionStream, step: step))

        // Statistics: moments and the Epps–Pulley sums.
        var statistics = FusedStatistics<Scalar>()
        var moments = GlobalMoments<Scalar>(viewCount: 1, dimension: d, secondMoments: [.covariance(0)],
                                            partitionCount: communicator.size, in: &statistics)
        let sums = statistics.reserve(eppsPulley.sumCount)
        moments.accumulate([embeddings], partition: communicator.rank, into: &statistics)
        eppsPulley.accumulate(eppsPulley.project(embeddings), into: &statistics, region: sums)

        // The one all-reduce.
        if communicator.size > 1 {
            try statistics.withUnsafeMutableBufferPointer { try communicator.allReduce($0, .sum) }
        }
        moments.combine(statistics)
        let n = moments.globalBatchSize
        guard n >= 2 else { throw ObjectiveError("collapse diagnostics need at least 2 rows, given \(n)") }

        // The diagnostics.
        let covariance = moments.moments[0]
        covariance.scale(by: 1 / Double(n - 1))
        var standardDeviations: [Double] = [], diagonalEnergy = 0.0
        for j in 0..<d {
            standardDeviations.append(max(covariance[j, j], 0).squareRoot())
            diagonalEnergy += covariance[j, j] * covariance[j, j]
        }
        let totalEnergy = covariance.squaredNorm()
        let singularValues = try covariance.symmetricEigenvalues().map { max($0, 0).squareRoot() }
        let singularSum = singularValues.reduce(0, +)
        var entropy = 0.0
        if singularSum > 0 {
            for s in singularValues where s > 0 { let p = s / singularSum; entropy -= p * Double.log(p) }
        }
        return CollapseDiagnostics(
            globalBatchSize: n,
            meanStandardDeviation: standardDeviations.reduce(0, +) / Double(d),
            minimumStandardDeviation: standardDeviations.min() ?? 0,
            effectiveRank: singularSum > 0 ? Double.exp(entropy) : 0,
            offDiagonalCovarianceEnergy: totalEnergy > 0 ? (totalEnergy - diagonalEnergy) / totalEnergy : 0,
            eppsPulley: eppsPulley.statistic(statistics, region: sums, globalBatchSize: n),
            communicatedBytes: communicator.size > 1 ? statistics.values.count * MemoryLayout<Scalar>.stride : 0)
    }
}
