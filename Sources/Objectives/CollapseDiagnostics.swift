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
    /// What the diagnostics look like, when asked for (see ``Pictures``).
    public var pictures: Pictures?

    /// Distributions and a map of the embeddings of the global batch, for TensorBoard and the
    /// report: exact on any number of ranks (counts are all-reduced, never sampled).
    public struct Pictures: Sendable, Equatable {
        /// Every feature's standard deviation `√C_jj`.
        public var standardDeviations: [Double]
        /// The upper edges of the projection histograms' buckets, in standard deviations from
        /// the projection's mean (the last is +∞); the first bucket holds everything below the
        /// first edge.
        public var projectionEdges: [Double]
        /// For the first few Epps–Pulley directions `a`, the counts of the standardised
        /// projections `(z·a − mean) / std` of the global batch's rows in each bucket — the
        /// histogram SIGReg pushes toward the standard normal's bell.
        public var projectionCounts: [[Double]]
        /// `|correlation|` of the features, averaged over `side × side` blocks (row-major):
        /// white diagonal, fading off-diagonals when the features decorrelate.
        public var correlationSide: Int
        public var correlationMap: [Double]
    }

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
        directionCount: Int = 256, pictures: Bool = false
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
        var result = CollapseDiagnostics(
            globalBatchSize: n,
            meanStandardDeviation: standardDeviations.reduce(0, +) / Double(d),
            minimumStandardDeviation: standardDeviations.min() ?? 0,
            effectiveRank: singularSum > 0 ? Double.exp(entropy) : 0,
            offDiagonalCovarianceEnergy: totalEnergy > 0 ? (totalEnergy - diagonalEnergy) / totalEnergy : 0,
            eppsPulley: eppsPulley.statistic(statistics, region: sums, globalBatchSize: n),
            communicatedBytes: communicator.size > 1 ? statistics.values.count * MemoryLayout<Scalar>.stride : 0)
        if pictures {
            result.pictures = try Self.pictures(embeddings, eppsPulley: eppsPulley, covariance: covariance, mean: moments.means[0],
                                                standardDeviations: standardDeviations, communicator: communicator)
        }
        return result
    }

    /// Bins this rank's projections on the first 4 directions by the global mean and standard
    /// deviation (from the covariance: `var = aᵀCa`), and sums the counts over the ranks (a
    /// second, small all-reduce); the correlation map from the covariance every rank holds.
    private static func pictures<Scalar: TensorScalar & CommunicableScalar>(
        _ embeddings: Tensor<Scalar>, eppsPulley: EppsPulley<Scalar>, covariance: Tensor<Double>, mean: [Double],
        standardDeviations: [Double], communicator: any Communicator
    ) throws -> Pictures {
        let d = embeddings.columnCount, n = embeddings.rowCount
        let k = min(4, eppsPulley.directionCount)
        let edges = stride(from: -4.0, through: 4.0, by: 0.25).map { $0 } + [.infinity]
        var counts = [Double](repeating: 0, count: k * edges.count)
        for direction in 0..<k {
            let a = (0..<d).map { Double(eppsPulley.directions[$0, direction]) }
            let center = zip(a, mean).reduce(0) { $0 + $1.0 * $1.1 }
            var variance = 0.0
            for i in 0..<d where a[i] != 0 {
                var row = 0.0
                for j in 0..<d { row += covariance[i, j] * a[j] }
                variance += a[i] * row
            }
            let scale = variance > 0 ? 1 / variance.squareRoot() : 0
            // Each row's projection in Double, row by row (not the Epps–Pulley projections'
            // matrix product, whose rounding depends on how many rows a rank holds): a value
            // near a bucket edge lands in the same bucket on any number of ranks.
            for r in 0..<n {
                var p = 0.0
                for j in 0..<d { p += Double(embeddings[r, j]) * a[j] }
                let z = (p - center) * scale
                let bucket = edges.firstIndex { z <= $0 } ?? edges.count - 1
                counts[direction * edges.count + bucket] += 1
            }
        }
        if communicator.size > 1 { try communicator.allReduce(&counts, .sum) }
        let block = (d + 63) / 64, side = (d + block - 1) / block
        var map = [Double](repeating: 0, count: side * side), cells = [Double](repeating: 0, count: side * side)
        for i in 0..<d {
            for j in 0..<d {
                let denominator = standardDeviations[i] * standardDeviations[j]
                let cell = (i / block) * side + j / block
                map[cell] += denominator > 0 ? abs(covariance[i, j]) / denominator : 0
                cells[cell] += 1
            }
        }
        for c in map.indices where cells[c] > 0 { map[c] /= cells[c] }
        return Pictures(standardDeviations: standardDeviations, projectionEdges: edges,
                        projectionCounts: (0..<k).map { Array(counts[($0 * edges.count)..<(($0 + 1) * edges.count)]) },
                        correlationSide: side, correlationMap: map)
    }
}
