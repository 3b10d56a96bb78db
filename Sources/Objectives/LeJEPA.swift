import Tensor
import Communication

/// LeJEPA: joint-embedding predictive learning with SIGReg (Balestriero & LeCun, 2025).
///
/// `V` views of each sample: the first `G` are global views (2 in the paper), the rest local.
/// The prediction target of a sample is the centre of its global views' embeddings, and
///
///     centre     c_i = 1/G · Σ_{v<G} z_{v,i}
///     invariance     = 1/(V·N·D) · Σ_v Σ_i ‖c_i − z_{v,i}‖²
///     sigreg         = 1/V · Σ_v eppsPulley(Z_v)                 (see ``SIGReg``)
///     loss           = (1 − λ)·invariance + λ·sigreg
///
/// The centre is per sample, so the invariance needs only the global sum of squared distances;
/// the one all-reduce carries that, the row count and the Epps–Pulley sums of every view. The
/// gradient of the invariance is
/// `2/(V·N·D) · [(z_{w,i} − c_i) + 1[w < G]/G · Σ_v (c_i − z_{v,i})]`.
public struct LeJEPA<Scalar: TensorScalar & CommunicableScalar>: Objective {
    /// `G`, the number of leading global views whose mean is the target (default 2).
    public var globalViewCount: Int
    /// λ, the weight of SIGReg (default 0.02).
    public var sigregWeight: Double
    /// The SIGReg projection directions (default 1024 random directions a step).
    public var directions: SlicingDirections<Scalar>

    public var name: String { "lejepa" }

    public init(globalViewCount: Int = 2, sigregWeight: Double = 0.02,
                directions: SlicingDirections<Scalar> = .random(count: 1024)) {
        self.globalViewCount = globalViewCount
        self.sigregWeight = sigregWeight
        self.directions = directions
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func evaluate(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>],
                         context: ObjectiveContext) throws -> ObjectiveResult {
        try validate(views: views, gradients: gradients, objective: name, viewCount: 1...Int.max)
        let viewCount = views.count, g = globalViewCount
        guard (1...viewCount).contains(g) else {
            throw ObjectiveError("lejepa: \(g) global views of \(viewCount) views")
        }
        let n = views[0].rowCount, d = views[0].columnCount
        let eppsPulley = EppsPulley(directions: try directions.resolve(dimension: d, context: context,
                                                                        streamName: SIGReg<Scalar>.directionStream),
                                    workspace: context.workspace)

        // Statistics: the row count, the summed squared distances to the centres, and the
        // Epps–Pulley sums of every view.
        let plan = LeJEPA.plan(dimension: d, viewCount: viewCount, directionCount: eppsPulley.directionCount)
        var batch = try GlobalBatch(views: views, context: context, plan: plan)
        var statistics = FusedStatistics<Scalar>()
        let rowCount = statistics.reserve(1)
        let squaredDistance = statistics.reserve(1)
        statistics[rowCount.lowerBound] = Scalar(batch.statisticsViews[0].rowCount)
        let centre = LeJEPA.centre(of: batch.statisticsViews, globalViewCount: g,
                                   into: context.workspace.tensor("lejepa.centre", batch.statisticsViews[0].shape, zeroed: false))
        let distance: Tensor<Scalar> = context.workspace.tensor("lejepa.distance", batch.statisticsViews[0].shape, zeroed: false)
        statistics[squaredDistance.lowerBound] = Scalar(batch.statisticsViews.reduce(0.0) { total, view in
            distance.copy(from: view)
            distance.add(centre, scaledBy: -1)
            return total + distance.squaredNorm()
        })
        let sums = eppsPulley.accumulate(batch, into: &statistics)

        // The one all-reduce.
        try batch.allReduce(&statistics)
        let globalBatchSize = Int(Double(statistics[rowCount.lowerBound]).rounded())
        guard globalBatchSize >= 1 else { throw ObjectiveError("lejepa needs a non-empty global batch") }

        // Loss.
        let invariance = Double(statistics[squaredDistance.lowerBound]) / Double(viewCount * globalBatchSize * d)
        let sigreg = eppsPulley.meanStatistic(sums, statistics, globalBatchSize: globalBatchSize)
        let loss = (1 - sigregWeight) * invariance + sigregWeight * sigreg

        // Gradient of this rank's rows: the invariance, then SIGReg.
        let localCentre = batch.path == .gather
            ? LeJEPA.centre(of: views, globalViewCount: g,
                            into: context.workspace.tensor("lejepa.localCentre", views[0].shape, zeroed: false))
            : centre
        let scale = 2 * (1 - sigregWeight) / Double(viewCount * globalBatchSize * d)
        let towardsCentre: Tensor<Scalar> = context.workspace.tensor("lejepa.towardsCentre", [n, d])   // Σ_v (c_i − z_{v,i})
        for view in views {
            towardsCentre.add(localCentre)
            towardsCentre.add(view, scaledBy: -1)
        }
        for v in 0..<viewCount {
            gradients[v].copy(from: views[v])
            gradients[v].add(localCentre, scaledBy: -1)
            if v < g { gradients[v].add(towardsCentre, scaledBy: Scalar(1 / Double(g))) }
            gradients[v].scale(by: Scalar(scale))
        }
        eppsPulley.addGradients(sums, statistics, globalBatchSize: globalBatchSize, weight: sigregWeight,
                                to: gradients)
        return ObjectiveResult(loss: loss,
                               terms: [ObjectiveTerm("invariance", invariance), ObjectiveTerm("sigreg", sigreg)],
                               communicatedBytes: batch.communicatedBytes, reduction: batch.path)
    }

    /// What LeJEPA's statistics of `viewCount` views of `dimension` features on
    /// `directionCount` directions cost (see ``ReductionCostModel``): SIGReg's
    /// (``SIGReg/plan(dimension:viewCount:directionCount:)``) and the summed squared distance
    /// to the centres, one more element.
    public static func plan(dimension d: Int, viewCount: Int, directionCount k: Int) -> StatisticsPlan {
        var plan = SIGReg<Scalar>.plan(dimension: d, viewCount: viewCount, directionCount: k)
        plan.fixedElements += 1
        return plan
    }

    /// The mean of the first `globalViewCount` views, row by row (formed in `Double`), written
    /// into `centre`.
    static func centre(of views: [Tensor<Scalar>], globalViewCount g: Int, into centre: Tensor<Scalar>) -> Tensor<Scalar> {
        centre.withUnsafeMutableBufferPointer { c in
            for i in c.indices {
                var sum = 0.0
                for v in 0..<g { sum += Double(views[v][flat: i]) }
                c[i] = Scalar(sum / Double(g))
            }
        }
        return centre
    }
}

// MARK: - Settings

extension ObjectiveName {
    public static let lejepa = ObjectiveName(rawValue: LeJEPASettings.name)
}

/// `objective.lejepa`: λ and the projections of its SIGReg term.
public struct LeJEPASettings: ObjectiveSettings {
    public static let name = "lejepa"
    public static let summary = "LeJEPA: views predict the global views' centre + λ·SIGReg (Balestriero & LeCun, 2025)"
    /// λ: loss = (1 − λ)·invariance + λ·SIGReg.
    public var lambda = 0.02
    public var directionCount = 1024

    public init() {}

    public func validate() throws {
        if directionCount < 1 { throw ObjectiveSettingsError(key: "directions", "must be at least 1") }
        if !(0...1).contains(lambda) { throw ObjectiveSettingsError(key: "lambda", "must be in [0, 1]") }
    }

    public func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> {
        LeJEPA<Float>(globalViewCount: context.globalViews, sigregWeight: lambda, directions: .random(count: directionCount))
    }

    public func plan(dimension: Int) -> StatisticsPlan {
        LeJEPA<Float>.plan(dimension: dimension, viewCount: 2, directionCount: directionCount)
    }

    public var directions: Int? {
        get { directionCount }
        set { if let newValue { directionCount = newValue } }
    }

    enum CodingKeys: String, CodingKey { case lambda, directionCount = "directions" }
}

extension ObjectiveConfiguration {
    public var lejepa: LeJEPASettings {
        get { self[LeJEPASettings.self] }
        set { self[LeJEPASettings.self] = newValue }
    }
}
