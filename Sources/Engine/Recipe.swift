import Communication
import Foundation
import Layers
import Objectives
import Optimizers
import Tensor

// Vocabulary (fixed here, used everywhere):
// - rank: one process of the job; world size: the number of ranks.
// - global batch: the samples of one optimisation step over all ranks; each rank holds a
//   contiguous slice of it (its rows).
// - step: one optimiser update; `step` counts the steps completed.
// - recipe: a kind of model with its data, forward pass and loss (joint embedding, world model).
// - state group: a named set of tensors a checkpoint saves (the model's, the probe's).

/// A kind of model the engine trains: what a batch holds, the forward pass and the loss, what
/// is all-reduced, what is logged — read top to bottom like a paper's method section.
///
/// The engine (``Trainer``) owns everything else: the optimizer and its learning-rate
/// schedule, the one gradient all-reduce (a sum) through ``TrainStep``, checkpoints of the
/// recipe's state groups, metrics sinks, the stop signal and resume. A new kind of model is a
/// new recipe in a folder of its own; see `docs/EXTENDING.md`.
public protocol Recipe: AnyObject {
    /// The recipe's keys of the config.
    associatedtype Settings: RecipeSettings
    /// What one step reads: this rank's rows of the global batch.
    associatedtype Batch

    /// The run's configuration.
    var configuration: RunConfiguration<Settings> { get }
    /// The ranks of the job.
    var communicator: any Communicator { get }
    /// The trainable parameters the run's optimizer updates (one flat store: the gradients of
    /// a step are all-reduced in one call).
    var parameters: ParameterStore<Float> { get }
    /// The non-trainable state saved with them (batch norm's running statistics).
    var buffers: BufferStore<Float> { get }
    /// Steps in one epoch of the training data.
    var stepsPerEpoch: Int { get }
    /// The data position of `step`: its epoch and its step within the epoch.
    func position(ofStep step: Int) -> (epoch: Int, stepInEpoch: Int)
    /// One line for the log when training starts (what is trained on what).
    var summary: String { get }

    /// This rank's batches from `startStep` on (a background loader: `stop` it when done).
    func makeBatchSource(startStep: Int) throws -> any BatchSource<Batch>
    /// The forward pass, the loss of the global batch and the backward pass of one step:
    /// accumulates this rank's parameter gradients into ``parameters`` (zeroed by the caller)
    /// and returns the loss. Collectives go through `communicator` (timed by the engine);
    /// `clock` takes the recipe's phase marks for `bench step`.
    func forwardBackward(_ batch: Batch, step: Int, communicator: any Communicator, clock: PhaseClock) throws -> StepLoss
    /// What follows the update on every rank: the online probe's and diagnostics' values for
    /// the record of `step` (`record` tells whether a metrics record is written this step;
    /// `isLastStep`, whether it is the run's last step). Both follow the run's schedule, never
    /// the invocation's, so that a stopped and resumed run records what an uninterrupted one
    /// does. Return fields only when `record` is true or when something was measured that must
    /// be recorded.
    func afterUpdate(_ batch: Batch, step: Int, record: Bool, isLastStep: Bool) throws -> [MetricsField]
    /// State groups besides the model's (parameters, buffers and the run's optimizer), e.g. an
    /// online probe with its own optimizer.
    var extraStateGroups: [StateGroup] { get }
}

extension Recipe {
    public func afterUpdate(_ batch: Batch, step: Int, record: Bool, isLastStep: Bool) throws -> [MetricsField] { [] }
    public var extraStateGroups: [StateGroup] { [] }
}

/// Batches for one rank, one a step, in step order.
public protocol BatchSource<Batch>: AnyObject {
    associatedtype Batch
    /// The next step's batch (waits for the background loader).
    func next() throws -> Batch
    /// Stops the background loader.
    func stop()
}

/// The loss of one step (the same on every rank) and what went into it.
public struct StepLoss: Sendable {
    public var loss: Double
    /// Named terms, unweighted, in the order the paper lists them.
    public var terms: [ObjectiveTerm]
    /// Bytes this rank handed to the loss's collectives.
    public var communicatedBytes: Int

    public init(loss: Double, terms: [ObjectiveTerm] = [], communicatedBytes: Int = 0) {
        self.loss = loss
        self.terms = terms
        self.communicatedBytes = communicatedBytes
    }
}

/// A named set of tensors saved in checkpoints: parameters, their optimizer's slots and
/// buffers. The model group is the engine's; recipes add others (``Recipe/extraStateGroups``).
public struct StateGroup {
    public var name: String
    public var parameters: ParameterStore<Float>
    public var buffers: BufferStore<Float>?
    /// The optimizer of `parameters` (its slots and step count are saved), if any.
    public var optimizer: (any Optimizer<Float>)?
    /// Numbers that are not tensors (a metrics window's running sums), if any.
    public var scalars: (any StateScalars)?

    public init(name: String, parameters: ParameterStore<Float>, buffers: BufferStore<Float>? = nil,
                optimizer: (any Optimizer<Float>)? = nil, scalars: (any StateScalars)? = nil) {
        self.name = name
        self.parameters = parameters
        self.buffers = buffers
        self.optimizer = optimizer
        self.scalars = scalars
    }

    /// The parameter store and the buffer store (if any), with their kind in the state dict
    /// (`params`, `buffers`).
    public var stores: [(kind: String, store: any NamedTensorStore<Float>)] {
        [("params", parameters)] + (buffers.map { [("buffers", $0)] } ?? [])
    }

    /// The group's tensors now.
    public var stateDict: StateDict {
        let slots = optimizer.map { optimizer in optimizer.slotNames.map { ($0, optimizer.slot($0)) } } ?? []
        return Engine.stateDict(parameters: parameters, buffers: buffers, optimizerSlots: slots)
    }

    /// Copies `tensors` into the group; every tensor of the group must be there with its shape.
    /// - Throws: ``TrainingError`` naming the missing tensor or the shape that differs.
    public func load(_ tensors: StateDict, stepCount: Int?, from path: String) throws {
        func copy(_ name: String, into target: Tensor<Float>) throws {
            let key = self.name == Checkpoint.modelGroup ? name : "\(self.name)/\(name)"
            guard let (shape, values) = tensors[name] else { throw TrainingError("checkpoint \(path) has no tensor /\(key)") }
            guard shape == target.shape else {
                throw TrainingError("checkpoint \(path): /\(key) has shape \(shape), the model expects \(target.shape)")
            }
            target.copy(from: Tensor(shape: shape, scalars: values))
        }
        for entry in parameters.entries { try copy("params/\(entry.name)", into: parameters.view(of: parameters.values, entry)) }
        if let buffers {
            for entry in buffers.entries { try copy("buffers/\(entry.name)", into: buffers.view(of: buffers.values, entry)) }
        }
        if let optimizer {
            for slot in optimizer.slotNames {
                let buffer = optimizer.slot(slot)
                for entry in parameters.entries {
                    try copy("optimizer/\(entry.name)/\(slot)", into: parameters.view(of: buffer, entry))
                }
            }
            if let stepCount { optimizer.stepCount = stepCount }
        }
    }
}

/// State of a state group that is not a tensor — the running sums of a metric averaged between
/// two records — saved in checkpoints as float64 (``Checkpoint/groupScalars``), so that a resumed
/// run's records equal an uninterrupted run's.
public protocol StateScalars: AnyObject {
    /// The values by name (snake_case); setting restores them.
    var scalarState: [String: Double] { get set }
}

/// Time marks within a step, for `bench step`'s phases (forward, objective, backward, …).
/// Marks are kept in a buffer reserved once: marking allocates nothing.
public final class PhaseClock {
    /// Whether marks are taken (off in training).
    public var enabled: Bool
    private var names: [String] = []
    private var times: [UInt64] = []

    public init(enabled: Bool = false) {
        self.enabled = enabled
        names.reserveCapacity(16)
        times.reserveCapacity(16)
    }

    /// Forgets the marks and takes the start of a step.
    public func start() {
        guard enabled else { return }
        names.removeAll(keepingCapacity: true)
        times.removeAll(keepingCapacity: true)
        mark("start")
    }

    /// Marks the end of phase `name` (the phase runs from the previous mark).
    public func mark(_ name: String) {
        guard enabled else { return }
        names.append(name)
        times.append(DispatchTime.now().uptimeNanoseconds)
    }

    /// Milliseconds of each phase since ``start()``, in order.
    public var phases: [(name: String, milliseconds: Double)] {
        guard times.count > 1 else { return [] }
        return (1..<times.count).map { (names[$0], Double(times[$0] - times[$0 - 1]) * 1e-6) }
    }
}

/// A fault that stops training: a non-finite loss or gradient, a drifted rank, a bad checkpoint.
public struct TrainingError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
