import Communication
import Layers
import Optimizers

/// The sharded optimizer step (``ShardedOptimizerStep``) against one process, shared by the
/// in-process tests (``ThreadCommunicator``) and the `MPIHarness sharded` scenario
/// (``MPICommunicator``).
///
/// A store of 41 `Double`s in 4 parameters (weights, a bias, a normalisation scale), so that
/// the shares of 2 and 3 ranks cut through parameters, takes ``steps`` steps with LARS (weight
/// decay, trust ratios, a separate rate for the excluded parameters), AdamW and Nesterov SGD,
/// each with gradient clipping by the global norm (``maxNorm``, below the norms, so it acts).
/// Rank `r` contributes ``contribution(rank:step:count:)`` to the gradient of step `s`; the
/// reference is one process stepping on the sum of the contributions of as many ranks, in rank
/// order. Reported per optimizer `o`: `o.values` (the parameters), `o.<slot>` (every slot,
/// gathered), `o.norms` (the global norm before clipping, a step each), `o.stepCount`; every rank
/// must report one process's values. The sharded runs also report ``transportKey``: 1 when the
/// steps went through shared memory (``ShardedOptimizerStep/usesSharedMemory``), else 0.
public enum ShardedUpdateFixture {
    public static let optimizers = ["lars", "adamw", "sgd"]
    public static let steps = 3
    public static let maxNorm = 1.5
    /// The key of the transport the sharded steps took (not a value to compare with one process).
    public static let transportKey = "sharedMemory"

    /// The store, the same on every rank (initialised from a seed).
    public static func makeStore() -> ParameterStore<Double> {
        ParameterStore<Double>(specs: [
            ParameterSpec(name: "layer0.weight", shape: [5, 3], role: .weight, initializer: .normal(std: 1)),
            ParameterSpec(name: "layer0.bias", shape: [5], role: .bias, initializer: .uniform(bound: 1)),
            ParameterSpec(name: "norm.weight", shape: [1], role: .normalization, initializer: .ones),
            ParameterSpec(name: "layer1.weight", shape: [4, 5], role: .weight, initializer: .normal(std: 1)),
        ], seed: 11)
    }

    static func makeOptimizer(_ name: String, _ store: ParameterStore<Double>) throws -> any Optimizer<Double> {
        switch name {
        case "lars":
            return try LARS(parameters: store, learningRate: 0.3, weightDecay: 1e-2, momentum: 0.9, eta: 0.02,
                            excludedLearningRateFactor: 0.5)
        case "adamw":
            return try AdamW(parameters: store, learningRate: 0.05, weightDecay: 0.1, excludeBiasAndNormalization: true)
        default:
            return try SGD(parameters: store, learningRate: 0.1, momentum: 0.9, weightDecay: 1e-2, nesterov: true,
                           excludeBiasAndNormalization: true)
        }
    }

    /// Rank `rank`'s gradient contribution at `step`: distinct per rank, step and element.
    public static func contribution(rank: Int, step: Int, count: Int) -> [Double] {
        (0..<count).map { i in Double((7 * i + 13 * rank + 31 * step) % 17 - 8) / 8 * Double(rank + 1) }
    }

    /// Runs the check on this rank, sharded over `communicator`'s ranks; or, with
    /// `referenceRanks`, the reference: one process, unsharded, on the summed contributions of
    /// that many ranks. With `sharedMemory` false the sharded steps keep to the communicator's
    /// collectives.
    public static func run(on communicator: any Communicator, referenceRanks: Int? = nil,
                           sharedMemory: Bool = true) throws -> [String: JSONValue] {
        var results: [String: JSONValue] = [:]
        var transports: Set<Bool> = []
        for name in optimizers {
            let store = makeStore()
            let optimizer = try makeOptimizer(name, store)
            let sharded = referenceRanks == nil
                ? ShardedOptimizerStep(parameters: store, optimizer: optimizer, communicator: communicator,
                                       sharedMemory: sharedMemory) : nil
            var norms: [Double] = []
            for step in 0..<steps {
                optimizer.learningRate *= 0.9
                if let sharded {
                    let mine = contribution(rank: communicator.rank, step: step, count: store.count)
                    store.gradients.copy(from: Tensor(shape: [store.count], scalars: mine))
                    try sharded.reduceScatterGradients()
                    let norm = try sharded.gradientNorm()
                    sharded.clipGradients(maxNorm: maxNorm, norm: norm)
                    norms.append(norm)
                    try sharded.step()
                } else {
                    var sum = [Double](repeating: 0, count: store.count)
                    for rank in 0..<(referenceRanks ?? 1) {
                        for (i, g) in contribution(rank: rank, step: step, count: store.count).enumerated() { sum[i] += g }
                    }
                    store.gradients.copy(from: Tensor(shape: [store.count], scalars: sum))
                    norms.append(store.clipGradientNorm(maxNorm: maxNorm))
                    optimizer.step()
                }
            }
            try sharded?.gatherOptimizerState()
            if let sharded { transports.insert(sharded.usesSharedMemory) }
            results["\(name).values"] = JSONValue(store.values.scalars)
            for slot in optimizer.slotNames { results["\(name).\(slot)"] = JSONValue(optimizer.slot(slot).scalars) }
            results["\(name).norms"] = JSONValue(norms)
            results["\(name).stepCount"] = JSONValue([Int64(optimizer.stepCount)])
        }
        if transports.count == 1 { results[transportKey] = JSONValue([Int64(transports.first! ? 1 : 0)]) }
        return results
    }
}
