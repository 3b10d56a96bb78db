import Tensor
import Communication

/// The projection directions of a sliced test.
public enum SlicingDirections<Scalar: TensorScalar>: Sendable {
    /// `count` unit directions drawn from `(seed, step)` by the counter-based generator: the
    /// same on every rank without communication, new at every step.
    case random(count: Int)
    /// Fixed unit directions, `D × K` (e.g. the golden file's `slices`).
    case explicit(Tensor<Scalar>)

    /// The `D × K` directions of a step.
    func resolve(dimension: Int, context: ObjectiveContext, streamName: String) throws -> Tensor<Scalar> {
        switch self {
        case .random(let count):
            guard count > 0 else { throw ObjectiveError("\(streamName): direction count must be positive, given \(count)") }
            return EppsPulley<Scalar>.randomDirections(dimension: dimension, count: count, seed: context.seed,
                                                       streamName: streamName, step: context.step,
                                                       workspace: context.workspace)
        case .explicit(let directions):
            guard directions.rank == 2, directions.shape[0] == dimension, directions.shape[1] > 0 else {
                throw ObjectiveError("\(streamName): directions have shape \(directions.shape), expected [\(dimension), K]")
            }
            return directions
        }
    }
}

/// SIGReg: sketched isotropic Gaussian regularisation (Balestriero & LeCun, LeJEPA, 2025).
///
/// The Epps–Pulley statistic of the global batch against `N(0, 1)` along `K` unit directions
/// (default 1024), averaged over directions and over the given views:
///
///     sigreg = 1/V · Σ_v eppsPulley(Z_v)
///     eppsPulley(Z) = 1/K · Σ_k N · Σ_j w_j [(mean_i cos(t_j p_ik) − e^{−t_j²/2})² + (mean_i sin(t_j p_ik))²]
///
/// with `p = Z·A`, `t_j` 17 knots evenly spaced in [0, 3] and `w_j` the trapezoid weights
/// times `e^{−t_j²/2}` (see ``EppsPulley``). What is all-reduced is the sums of
/// `cos(t_j p)` and `sin(t_j p)` over rows — `2·K·17` numbers a view — and the row count.
/// The gradient of a row follows from the global means alone, as `∂/∂z_i = Σ_k ∂/∂p_ik · a_k`.
public struct SIGReg<Scalar: TensorScalar & CommunicableScalar>: Objective {
    /// The projection directions (default 1024 random directions a step).
    public var directions: SlicingDirections<Scalar>

    public var name: String { "sigreg" }

    public init(directions: SlicingDirections<Scalar> = .random(count: 1024)) {
        self.directions = directions
    }

    /// The stream of the counter-based generator the random directions come from.
    static var directionStream: String { "sigreg.directions" }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func evaluate(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>],
                         context: ObjectiveContext) throws -> ObjectiveResult {
        try validate(views: views, gradients: gradients, objective: name, viewCount: 1...Int.max)
        let d = views[0].columnCount, viewCount = views.count
        let eppsPulley = EppsPulley(directions: try directions.resolve(dimension: d, context: context,
                                                                        streamName: SIGReg.directionStream),
                                    workspace: context.workspace)

        // Statistics: the row count and, per view, the sums of cos(t p) and sin(t p).
        let plan = SIGReg.plan(dimension: d, viewCount: viewCount, directionCount: eppsPulley.directionCount)
        var batch = try GlobalBatch(views: views, context: context, plan: plan)
        var statistics = FusedStatistics<Scalar>()
        let rowCount = statistics.reserve(1)
        statistics[rowCount.lowerBound] = Scalar(batch.statisticsViews[0].rowCount)
        let sums = eppsPulley.accumulate(batch, into: &statistics)

        // The one all-reduce.
        try batch.allReduce(&statistics)
        let n = Int(Double(statistics[rowCount.lowerBound]).rounded())
        guard n >= 1 else { throw ObjectiveError("sigreg needs a non-empty global batch") }

        // Loss.
        let loss = eppsPulley.meanStatistic(sums, statistics, globalBatchSize: n)

        // Gradient of this rank's rows.
        for gradient in gradients { gradient.fill(0) }
        eppsPulley.addGradients(sums, statistics, globalBatchSize: n, weight: 1, to: gradients)
        return ObjectiveResult(loss: loss, terms: [ObjectiveTerm("epps_pulley", loss)],
                               communicatedBytes: batch.communicatedBytes, reduction: batch.path)
    }

    /// What SIGReg's statistics of `viewCount` views of `dimension` features on
    /// `directionCount` directions cost (see ``ReductionCostModel``): the row count and per
    /// view the sums of `cos(t_j p)`, `sin(t_j p)` at 17 knots — `1 + V·2·K·17` elements,
    /// whatever the world size. Per row and view: the projection (`2·D·K`) and about 100
    /// operations per direction for the characteristic function; the gradient of this rank's
    /// rows costs as much again.
    public static func plan(dimension d: Int, viewCount: Int, directionCount k: Int) -> StatisticsPlan {
        let perRow = Double(viewCount * k * (2 * d + 100))
        return StatisticsPlan(viewCount: viewCount, dimension: d,
                              fixedElements: 1 + viewCount * EppsPulley<Scalar>.sumCount(directionCount: k),
                              elementsPerRank: 0, flopsPerRow: perRow, allReduceCount: 1, gradientFlopsPerRow: perRow)
    }
}

// MARK: - Settings

extension ObjectiveName {
    public static let sigreg = ObjectiveName(rawValue: SIGRegSettings.name)
}

/// `objective.sigreg`: random 1-D projections a step.
public struct SIGRegSettings: ObjectiveSettings {
    public static let name = "sigreg"
    public static let summary = "SIGReg alone: Epps–Pulley of random projections vs N(0, 1) (Balestriero & LeCun, 2025)"
    /// Random 1-D projections per step.
    public var directionCount = 1024

    public init() {}

    public func validate() throws {
        if directionCount < 1 { throw ObjectiveSettingsError(key: "directions", "must be at least 1") }
    }

    public func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> {
        SIGReg<Float>(directions: .random(count: directionCount))
    }

    public func plan(dimension: Int) -> StatisticsPlan {
        SIGReg<Float>.plan(dimension: dimension, viewCount: 2, directionCount: directionCount)
    }

    public var directions: Int? {
        get { directionCount }
        set { if let newValue { directionCount = newValue } }
    }

    enum CodingKeys: String, CodingKey { case directionCount = "directions" }
}

extension ObjectiveConfiguration {
    public var sigreg: SIGRegSettings {
        get { self[SIGRegSettings.self] }
        set { self[SIGRegSettings.self] = newValue }
    }
}
