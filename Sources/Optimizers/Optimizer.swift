import Tensor
import Layers

// The Optimizers module: how a training step turns the gradients of a `ParameterStore` into new
// parameters.
//
// - `SGD`, `AdamW` and `LARS` update every parameter of a store in place; their state
//   (momentum buffers, moment estimates) lives in flat buffers of the store's layout, one a
//   *slot*, so a checkpoint saves `/optimizer/<parameter name>/<slot>` as views.
// - `GradientSynchronizer` sums the gradients of the global batch over the ranks.
// - `ShardedOptimizerStep` splits that sum into a reduce-scatter and an all-gather of the
//   parameters, with each rank's update of its share (ZeRO-1) in between.
// - `ParameterStore.clipGradientNorm(maxNorm:)` clips by the global norm.
// - `LearningRateSchedule` gives the learning rate of every step.
//
// The order of a data-parallel step: backward → `synchronizer.allReduceGradients()` →
// (optionally) `store.clipGradientNorm(maxNorm:)` →
// `optimizer.learningRate = schedule.learningRate(at: step)` → `optimizer.step()` →
// `store.zeroGradients()`.

/// An optimizer that updates every parameter of a `ParameterStore` from the store's gradients.
///
/// Following mlx-swift, an optimizer states only how *one* parameter is updated:
/// ``applySingle(gradient:parameter:state:role:)``. The shared ``step()`` increments
/// ``stepCount`` and calls it for every parameter, with views cut once at construction, so a step
/// allocates nothing.
///
/// The state of every parameter is a set of *slots*: one flat buffer of `parameters.count`
/// elements a slot, in the layout of `parameters.values`, named like the keys of the PyTorch
/// optimizer's `state_dict` (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, `mu`). A checkpoint
/// saves each slot (or ``slot(_:for:)`` per parameter) and ``stepCount``; restoring copies them
/// back and sets ``stepCount``.
///
/// Hyperparameters are `Double` properties; each update converts them to `Scalar` once, like
/// PyTorch turning a Python float into the tensor's dtype.
public protocol Optimizer<Scalar>: AnyObject {
    associatedtype Scalar: TensorScalar
    /// The state one parameter is updated with: views of the slots over that parameter.
    associatedtype State

    /// The parameters this optimizer updates, from their gradients `parameters.gradients`.
    var parameters: ParameterStore<Scalar> { get }
    /// The learning rate of the next step (PyTorch `lr`), set every step by the schedule.
    var learningRate: Double { get set }
    /// The number of steps taken (PyTorch's `state["step"]`): ``step()`` increments it before
    /// updating, so the first update sees 1. Saved and restored with the slots.
    var stepCount: Int { get set }
    /// The names of the state buffers, in a stable order.
    var slotNames: [String] { get }
    /// The flat state buffer `name` (one of ``slotNames``), in the layout of `parameters.values`.
    func slot(_ name: String) -> Tensor<Scalar>
    /// Every parameter with its views, cut once at construction.
    var targets: [OptimizerTarget<Scalar, State>] { get }
    /// The state of one parameter, or of a contiguous piece of one, from its views of the
    /// slots: `view` cuts a flat slot buffer to the parameter (or the piece).
    func state(_ view: (Tensor<Scalar>) -> Tensor<Scalar>) -> State

    /// Updates one parameter in place from its gradient and state (updated in place too).
    ///
    /// Reads the hyperparameters and ``stepCount`` from `self`; never writes the gradient.
    /// - Parameter role: what the parameter is; optimizers that exclude biases and
    ///   normalisation parameters from weight decay or adaptation test it.
    func applySingle(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state: State, role: ParameterRole)

    // MARK: Pieces of a parameter (the sharded step)

    /// The sums over a whole parameter its update needs: 0 for element-wise updates (SGD,
    /// AdamW), which a piece of a parameter can take alone; LARS needs 2 (`‖p‖²`, `‖g + λp‖²`).
    var sumsPerParameter: Int { get }
    /// Adds a piece's share of the sums of its parameter to `sums` (``sumsPerParameter`` of them).
    func accumulateSums(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, role: ParameterRole,
                        into sums: UnsafeMutableBufferPointer<Double>)
    /// Updates a piece of a parameter in place, given the sums of the whole parameter: what
    /// ``applySingle(gradient:parameter:state:role:)`` does to the piece's elements.
    func applyPiece(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state: State, role: ParameterRole,
                    sums: UnsafeBufferPointer<Double>)
}

extension Optimizer {
    /// Element-wise updates need no sums.
    public var sumsPerParameter: Int { 0 }

    public func accumulateSums(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, role: ParameterRole,
                               into sums: UnsafeMutableBufferPointer<Double>) {}

    /// An element-wise update of a piece is the update of its elements.
    public func applyPiece(gradient: Tensor<Scalar>, parameter: Tensor<Scalar>, state: State, role: ParameterRole,
                           sums: UnsafeBufferPointer<Double>) {
        applySingle(gradient: gradient, parameter: parameter, state: state, role: role)
    }
}

/// One parameter of a store with flat views of its value, its gradient and its optimizer state.
public struct OptimizerTarget<Scalar: TensorScalar, State> {
    /// The parameter's entry in the store (name, shape, role, offset).
    public let entry: ParameterStore<Scalar>.Entry
    /// The parameter's elements, a flat view into `values`.
    public let parameter: Tensor<Scalar>
    /// The gradient's elements, a flat view into `gradients`.
    public let gradient: Tensor<Scalar>
    /// The views of the slots over this parameter.
    public let state: State

    /// Cuts the views of every parameter of `store`; `makeState` cuts the state of one entry
    /// with `flatView(slot)` (an optimizer's ``Optimizer/state(_:)``).
    static func all(of store: ParameterStore<Scalar>,
                    state makeState: (_ flatView: (Tensor<Scalar>) -> Tensor<Scalar>) -> State) -> [OptimizerTarget] {
        store.entries.map { entry in
            let flatView = { (buffer: Tensor<Scalar>) in store.view(of: buffer, entry).reshaped([entry.count]) }
            return OptimizerTarget(entry: entry, parameter: flatView(store.values),
                                   gradient: flatView(store.gradients), state: makeState(flatView))
        }
    }
}

extension Optimizer {
    /// Takes one optimisation step: increments ``stepCount``, then updates every parameter from
    /// the store's gradients (PyTorch `optimizer.step()`). Allocates nothing.
    public func step() {
        stepCount += 1
        for target in targets {
            applySingle(gradient: target.gradient, parameter: target.parameter, state: target.state,
                        role: target.entry.role)
        }
    }

    /// The view of slot `name` over parameter `parameterName`, shaped like the parameter: what a
    /// checkpoint saves as `/optimizer/<parameterName>/<name>`.
    public func slot(_ name: String, for parameterName: String) -> Tensor<Scalar> {
        guard let entry = parameters.entry(named: parameterName) else {
            preconditionFailure("no parameter named \(parameterName)")
        }
        return parameters.view(of: slot(name), entry)
    }

    /// Sets every slot to zero and ``stepCount`` to 0: the state of a new optimizer.
    public func resetState() {
        for name in slotNames { slot(name).fill(0) }
        stepCount = 0
    }
}

/// A hyperparameter out of its range, worded like PyTorch's `ValueError`s.
public struct OptimizerConfigurationError: Error, CustomStringConvertible, Equatable {
    /// The optimizer, the hyperparameter, its value and the valid range.
    public let description: String

    public init(_ description: String) { self.description = description }

    /// Throws unless `isValid`, naming hyperparameter `name` of `optimizer` and its `value`.
    static func check(_ optimizer: String, _ name: String, _ value: Double, _ isValid: Bool,
                      expected: String) throws {
        guard isValid else {
            throw OptimizerConfigurationError("\(optimizer): invalid \(name) \(value); expected \(expected)")
        }
    }
}

/// Stops on a slot name the optimizer does not have, listing the ones it has.
func missingSlot(_ name: String, in optimizer: String, names: [String]) -> Never {
    preconditionFailure("\(optimizer) has no slot \"\(name)\"; its slots are \(names)")
}
