import Communication
import Engine
import Layers
import Objectives
import Tensor

/// The joint-embedding model's part of a step on given views: forward every view, the
/// objective on the global batch, backward — what ``JointEmbeddingRecipe`` runs on each batch
/// and `bench step` on random views, inside a ``TrainStep``.
public final class JointEmbeddingStep {
    public let model: Model<Float>
    public let objective: any Objective<Float>
    /// Keys the objective's random directions and sub-batches with the step.
    public var seed: UInt64
    public var reduction: StatisticsReduction
    public var costModel: ReductionCostModel
    /// Rows of every rank, when known (saves the objective a small all-gather).
    public var rowCounts: [Int]?
    private let passes = ViewPasses()
    /// The objective's buffers, reused every step.
    private let workspace = Workspace()
    /// The last step's embeddings of each view (views of the model's buffers).
    public private(set) var embeddings: [Tensor<Float>] = []
    /// The path the last evaluation took.
    public private(set) var lastReduction = StatisticsReduction.statistics
    /// How the last evaluation combined moments over ranks (nil: none were).
    public private(set) var lastMomentCombination: MomentCombination?

    public init(model: Model<Float>, objective: any Objective<Float>, seed: UInt64,
                reduction: StatisticsReduction = .automatic, costModel: ReductionCostModel = ReductionCostModel(),
                rowCounts: [Int]? = nil) {
        self.model = model
        self.objective = objective
        self.seed = seed
        self.reduction = reduction
        self.costModel = costModel
        self.rowCounts = rowCounts
    }

    /// Forward, loss and backward of `views` (this rank's rows of each view); accumulates the
    /// parameter gradients. A non-finite loss returns before the backward pass.
    ///
    /// - Parameters:
    ///   - afterForward: called with view 0's representation (the encoder's output) before the
    ///     objective: the online probe's hook.
    ///   - clock: takes the marks `forward`, `objective` and `backward`.
    public func forwardBackward(views: [Tensor<Float>], step: Int, communicator: any Communicator, clock: PhaseClock,
                                afterForward: (Tensor<Float>) throws -> Void = { _ in }) throws -> StepLoss {
        // Per-row randomness (dropout) is keyed by the global row: this rank's first row is the
        // rows of the ranks before it.
        let offset = rowCounts.map { $0.prefix(communicator.rank).reduce(0, +) } ?? 0
        let context = LayerContext(training: true, communicator: communicator, needsInputGradient: false,
                                   globalRowOffset: offset, seed: seed, step: step)
        let (outputs, representation) = try passes.forward(views, model: model, context: context)
        embeddings = outputs
        try afterForward(representation)
        clock.mark("forward")
        let result = try objective.evaluate(views: outputs, gradients: passes.gradients,
                                            context: ObjectiveContext(communicator: communicator, step: step, seed: seed,
                                                                      reduction: reduction, costModel: costModel,
                                                                      rowCounts: rowCounts, workspace: workspace))
        lastReduction = result.reduction
        lastMomentCombination = result.momentCombination
        clock.mark("objective")
        guard result.loss.isFinite else { return StepLoss(loss: result.loss, terms: result.terms) }
        try passes.backward(model: model, context: context)
        clock.mark("backward")
        return StepLoss(loss: result.loss, terms: result.terms, communicatedBytes: result.communicatedBytes)
    }
}
