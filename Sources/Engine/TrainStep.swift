import Communication
import Layers
import Optimizers
import Tensor

/// One optimiser step of data-parallel training, the same for every model: the trainer, `bench
/// step`, the online probe and the linear probe all take their steps through it.
///
/// 1. zero the gradients;
/// 2. `forwardBackward` (the caller's model: forward, the loss of the global batch, backward),
///    which accumulates this rank's gradient contributions and returns the loss;
/// 3. with ``checksFiniteness``, stop on a non-finite loss;
/// 4. all-reduce the gradients with a **sum** (one call; the identity on one rank);
/// 5. the global gradient norm (with ``measuresGradientNorm``), stopping on a non-finite one,
///    and clipping to ``clipGradientNorm`` when set;
/// 6. set the learning rate and update every parameter.
///
/// With a sharded update (``sharded``, ``ShardedOptimizerStep``) step 4 is a reduce-scatter,
/// steps 5 and 6 work on this rank's share of the gradient (the norm all-reduced from the
/// shares), and the parameters are all-gathered after the update: the same bytes as the
/// all-reduce, 1/P of the update. Call ``gatherOptimizerState()`` on every rank before reading
/// the optimizer's slots.
///
/// Nothing is allocated here: a steady step allocates only what `forwardBackward` does.
public final class TrainStep<Scalar: LayerScalar> {
    public let parameters: ParameterStore<Scalar>
    public let optimizer: any Optimizer<Scalar>
    public let synchronizer: GradientSynchronizer<Scalar>
    /// The sharded update, when this step shards it (nil: every rank updates everything).
    public let sharded: ShardedOptimizerStep<Scalar>?
    /// Clip the gradients to this global norm (0: no clipping).
    public var clipGradientNorm: Double
    /// Stop on a non-finite loss or gradient norm (training); probes leave it off.
    public var checksFiniteness: Bool
    /// Report the gradient norm even when neither the finiteness check nor clipping needs it.
    public var reportsGradientNorm: Bool
    /// Whether a step measures the global gradient norm: for the record, the finiteness check
    /// or clipping.
    public var measuresGradientNorm: Bool { reportsGradientNorm || checksFiniteness || clipGradientNorm > 0 }

    /// What one step did.
    public struct Outcome: Sendable {
        public var loss: StepLoss
        /// The global gradient norm before clipping (NaN when not measured).
        public var gradientNorm: Double
    }

    /// A step that could not be taken.
    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// The loss (or a term) is not finite.
        case nonFiniteLoss(loss: Double, terms: [String])
        /// The global gradient norm is not finite.
        case nonFiniteGradient(norm: Double)

        public var description: String {
            switch self {
            case let .nonFiniteLoss(loss, terms):
                return "the loss is \(loss)\(terms.isEmpty ? "" : " (non-finite terms: \(terms.joined(separator: ", ")))")"
            case let .nonFiniteGradient(norm):
                return "a gradient is not finite (global norm \(norm))"
            }
        }
    }

    /// - Parameters:
    ///   - parameters: the store the step updates.
    ///   - optimizer: its optimizer (over `parameters`).
    ///   - communicator: the ranks whose gradients are summed (time it with a
    ///     ``TimedCommunicator`` to see the all-reduce's share).
    ///   - clipGradientNorm: 0 (default) for no clipping.
    ///   - checksFiniteness: stop on a non-finite loss or gradient (default true).
    ///   - measuresGradientNorm: measure the global gradient norm (default true).
    ///   - shardedUpdate: when to shard the update over the ranks (default `.never`: the probes'
    ///     small stores; the trainer passes its config's choice).
    ///   - sharedMemory: let a sharded update go through the node's shared memory when the
    ///     communicator has it (default; see ``ShardedOptimizerStep``).
    public init(parameters: ParameterStore<Scalar>, optimizer: any Optimizer<Scalar>, communicator: any Communicator,
                clipGradientNorm: Double = 0, checksFiniteness: Bool = true, measuresGradientNorm: Bool = true,
                shardedUpdate: ShardedUpdate = .never, sharedMemory: Bool = true) {
        precondition(optimizer.parameters === parameters, "the optimizer updates another parameter store")
        self.parameters = parameters
        self.optimizer = optimizer
        synchronizer = GradientSynchronizer(parameters: parameters, communicator: communicator)
        sharded = shardedUpdate.shards(worldSize: communicator.size, parameterCount: parameters.count)
            ? ShardedOptimizerStep(parameters: parameters, optimizer: optimizer, communicator: communicator,
                                   sharedMemory: sharedMemory) : nil
        self.clipGradientNorm = clipGradientNorm
        self.checksFiniteness = checksFiniteness
        reportsGradientNorm = measuresGradientNorm
    }

    /// Takes one step at `learningRate`; see the type's discussion for the order.
    ///
    /// - Parameter clock: takes the marks `all-reduce` (the gradient sum and norm) and `update`.
    /// - Throws: ``Failure`` (nothing is updated then), or what `forwardBackward` or the
    ///   communicator throws.
    @discardableResult
    public func run(learningRate: Double, clock: PhaseClock? = nil,
                    _ forwardBackward: () throws -> StepLoss) throws -> Outcome {
        parameters.zeroGradients()
        let loss = try forwardBackward()
        if checksFiniteness && !loss.loss.isFinite {
            throw Failure.nonFiniteLoss(loss: loss.loss, terms: loss.terms.filter { !$0.value.isFinite }.map(\.name))
        }
        if let sharded {
            try sharded.reduceScatterGradients()
            let norm = try measuresGradientNorm ? sharded.gradientNorm() : .nan
            if checksFiniteness && !norm.isFinite { throw Failure.nonFiniteGradient(norm: norm) }
            if clipGradientNorm > 0 { sharded.clipGradients(maxNorm: clipGradientNorm, norm: norm) }
            clock?.mark("all-reduce")
            optimizer.learningRate = learningRate
            try sharded.step()
            clock?.mark("update")
            return Outcome(loss: loss, gradientNorm: norm)
        }
        try synchronizer.allReduceGradients()
        let norm = measuresGradientNorm ? parameters.gradientNorm() : .nan
        if checksFiniteness && !norm.isFinite { throw Failure.nonFiniteGradient(norm: norm) }
        if clipGradientNorm > 0 { parameters.clipGradientNorm(maxNorm: clipGradientNorm) }
        clock?.mark("all-reduce")
        optimizer.learningRate = learningRate
        optimizer.step()
        clock?.mark("update")
        return Outcome(loss: loss, gradientNorm: norm)
    }

    /// Makes the optimizer's slots whole on every rank after sharded steps (nothing to do
    /// otherwise): every rank must call it before any reads them, e.g. to write a checkpoint.
    public func gatherOptimizerState() throws {
        try sharded?.gatherOptimizerState()
    }

    /// The bytes of the gradient's collective of one step: the all-reduce, or with a sharded
    /// update the reduce-scatter (the parameters' all-gather receives as many again).
    public var gradientBytes: Int { sharded?.bytesPerStep ?? synchronizer.bytesPerStep }
}
