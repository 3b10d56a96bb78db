import Tensor
import Communication

/// A self-supervised objective evaluated on a global batch split over ranks.
///
/// Every rank calls ``evaluate(views:gradients:context:)`` with its own contiguous rows of the
/// global batch. The objective computes local statistics, makes them global with one fused
/// all-reduce (or, on the gather path, one all-gather of the rows), and returns the loss of the
/// *global* batch — the same value on every rank — together with the gradient of that loss
/// with respect to this rank's rows. The trainer then **sums** parameter gradients over ranks
/// (never averages), so N ranks reproduce one process exactly.
public protocol Objective<Scalar>: Sendable {
    associatedtype Scalar: TensorScalar & CommunicableScalar

    /// The objective's name in logs (`vicreg`, `barlow`, …).
    var name: String { get }

    /// The global loss, its named terms, and the gradient with respect to this rank's rows.
    ///
    /// - Parameters:
    ///   - views: this rank's rows of each view, `n_r × D` each; `n_r` may differ across ranks
    ///     and may be 0.
    ///   - gradients: preallocated outputs of the same shapes as `views`, overwritten with
    ///     ∂loss/∂view (the gradient of the global loss).
    ///   - context: the communicator, the step and seed, and the reduction path.
    func evaluate(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>],
                  context: ObjectiveContext) throws -> ObjectiveResult
}

/// What an objective needs to know about the step besides the embeddings.
public struct ObjectiveContext: @unchecked Sendable {
    /// The ranks of the job.
    public var communicator: any Communicator
    /// The optimisation step (selects the step's random directions and sub-batches).
    public var step: Int
    /// The run's seed.
    public var seed: UInt64
    /// How the global statistics are formed (default: chosen by `costModel`).
    public var reduction: StatisticsReduction
    /// The cost model that ``StatisticsReduction/automatic`` consults.
    public var costModel: ReductionCostModel
    /// The number of rows of every rank, when the data loader knows them; otherwise the
    /// objectives that need them (the gather path, the automatic choice, W-MSE sub-batches)
    /// gather them with one small all-gather.
    public var rowCounts: [Int]?
    /// The buffers the evaluation reuses: a trainer passes the same workspace every step, so a
    /// steady step allocates no tensor storage (default: a new one, for a one-off evaluation).
    public var workspace: Workspace

    public init(communicator: any Communicator, step: Int = 0, seed: UInt64 = 0,
                reduction: StatisticsReduction = .automatic,
                costModel: ReductionCostModel = ReductionCostModel(), rowCounts: [Int]? = nil,
                workspace: Workspace = Workspace()) {
        self.communicator = communicator
        self.step = step
        self.seed = seed
        self.reduction = reduction
        self.costModel = costModel
        self.rowCounts = rowCounts
        self.workspace = workspace
    }
}

/// One named term of a loss (reported unweighted, as the papers name them).
public struct ObjectiveTerm: Sendable, Equatable {
    public var name: String
    public var value: Double
    public init(_ name: String, _ value: Double) {
        self.name = name
        self.value = value
    }
}

/// The result of one evaluation: identical on every rank except for the gradients.
public struct ObjectiveResult: Sendable {
    /// The loss of the global batch.
    public var loss: Double
    /// The named terms, in the order the paper lists them.
    public var terms: [ObjectiveTerm]
    /// The bytes this rank passed to collectives in this evaluation (all-reduce buffers plus
    /// all-gather receive buffers); 0 on one rank.
    public var communicatedBytes: Int
    /// The path that was taken (`.statistics` or `.gather`).
    public var reduction: StatisticsReduction
    /// How moments were combined over ranks on the statistics path (nil when no moments were:
    /// one rank, the gather path, an objective without moments).
    public var momentCombination: MomentCombination?

    public init(loss: Double, terms: [ObjectiveTerm], communicatedBytes: Int, reduction: StatisticsReduction,
                momentCombination: MomentCombination? = nil) {
        self.loss = loss
        self.terms = terms
        self.communicatedBytes = communicatedBytes
        self.reduction = reduction
        self.momentCombination = momentCombination
    }

    /// The value of the term `name`, if the objective reports one.
    public subscript(term name: String) -> Double? {
        terms.first { $0.name == name }?.value
    }
}

/// An objective's input was not what it needs.
public struct ObjectiveError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Checks the views and gradients that every objective receives.
func validate<Scalar>(views: [Tensor<Scalar>], gradients: [Tensor<Scalar>], objective: String,
                      viewCount: ClosedRange<Int>) throws {
    guard viewCount.contains(views.count) else {
        throw ObjectiveError("\(objective) takes \(viewCount.lowerBound == viewCount.upperBound ? "\(viewCount.lowerBound)" : "\(viewCount.lowerBound)…\(viewCount.upperBound)") views, given \(views.count)")
    }
    guard gradients.count == views.count else {
        throw ObjectiveError("\(objective): \(views.count) views but \(gradients.count) gradient outputs")
    }
    for (v, (view, gradient)) in zip(views, gradients).enumerated() {
        guard view.rank == 2 else { throw ObjectiveError("\(objective): view \(v) has shape \(view.shape), expected [rows, D]") }
        guard view.shape == views[0].shape else {
            throw ObjectiveError("\(objective): view \(v) has shape \(view.shape), view 0 has \(views[0].shape)")
        }
        guard gradient.shape == view.shape else {
            throw ObjectiveError("\(objective): gradient \(v) has shape \(gradient.shape), view has \(view.shape)")
        }
    }
}
