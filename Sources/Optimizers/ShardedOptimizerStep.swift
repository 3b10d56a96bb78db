import Tensor
import Communication
import Layers

/// The optimizer step of a data-parallel job with the update sharded over the ranks (ZeRO
/// stage 1, Rajbhandari et al., 2020): each rank updates only its share of the parameters.
///
/// The gradient all-reduce is a reduce-scatter followed by an all-gather; this step puts the
/// update between the two halves, on the summed gradient the reduce-scatter leaves:
///
/// 1. ``reduceScatterGradients()``: this rank's share of `g = Σ_r g_r` (the store's flat
///    gradient cut into ``shards``, consecutive and equal to within an element) lands in
///    ``shardGradient``;
/// 2. ``gradientNorm()``: the share's squared norm summed over ranks (one all-reduce of a
///    `Double`), the global norm; ``clipGradients(maxNorm:norm:)`` scales the share by
///    ``ParameterStore/clippingFactor(norm:maxNorm:)``, as the whole store would be;
/// 3. ``step()``: the optimizer updates the parameters and slots of the share only — a
///    parameter cut by a share boundary is updated in pieces; the sums over a whole parameter
///    an update needs (LARS' norms) are each rank's pieces' sums, all-reduced (a few `Double`s
///    a parameter) — then the parameters are all-gathered in place.
///
/// The bytes on the wire are those of the all-reduce (a reduce-scatter and an all-gather of
/// `|θ|` elements), while the update's work, memory-bound, is divided by the world size.
/// Every result is that of one process up to the order of the sums.
///
/// **On one node** (the communicator offers ``SharedSegments``: every rank on this node, or
/// in-process ranks) both halves skip MPI. At the first step the store's gradient moves into
/// this rank's segment and every rank's parameters become one copy in rank 0's
/// (``Tensor/moveStorage(to:owner:)``; the layers' views follow). The backward pass then
/// writes the gradient where the peers read it: after a barrier each rank sums its share from
/// every rank's segment, in rank order (``ThreadCommunicator``'s order, so the result is
/// bitwise that of the collectives in process), and updates its share of the parameters in
/// place; a second barrier is the whole all-gather. The only bytes moved are those the sum
/// reads (its pass also forms the share's squared norm). On two ranks of this machine the
/// reference model's 8.15 M parameters took 15.0 ms a step through MPI's reduce-scatter, the
/// update and the all-gather, and 4.6 ms so (`docs/PERFORMANCE.md`, *Scaling*). A world spread
/// over several nodes takes the MPI collectives. Outside the step the ranks must not write the
/// parameters (restoring a checkpoint comes before the first step).
///
/// The slots stay full-size on every rank, but between steps a rank's copy is current only on
/// its share: ``gatherOptimizerState()`` makes every slot whole everywhere before anyone reads
/// it (a checkpoint), so checkpoints hold the world-size-independent state and a run resumes on
/// any number of ranks. The store's ``ParameterStore/gradients`` keep this rank's contributions
/// (the summed share is ``shardGradient``).
public final class ShardedOptimizerStep<Scalar: TensorScalar & CommunicableScalar> {
    public let parameters: ParameterStore<Scalar>
    public let optimizer: any Optimizer<Scalar>
    public let communicator: any Communicator
    /// Each rank's share of the flat buffers, in rank order: rank `r` holds
    /// `⌊count·r/P⌋ ..< ⌊count·(r+1)/P⌋`.
    public let shards: [Range<Int>]
    /// This rank's share of the summed gradient, after ``reduceScatterGradients()``.
    public let shardGradient: Tensor<Scalar>
    /// Whether every rank's slots are whole (true until the first step; after
    /// ``gatherOptimizerState()``).
    public private(set) var optimizerStateIsWhole = true

    private let counts: [Int]
    private let update: OptimizerShard<Scalar>
    /// The per-parameter sums of ``Optimizer/sumsPerParameter`` (allocated once).
    private var sums: [Double]
    /// How the gradient and the parameters move between the ranks.
    private var transport: Transport
    /// The squared norm of ``shardGradient``, when the reduction summed it on the way.
    private var shardSquaredNorm: Double?

    private enum Transport {
        /// Not decided yet: the shared segments are asked for at the first step (a collective).
        case undecided
        /// MPI's (or the in-process) reduce-scatter and all-gather.
        case collectives
        /// The segments: each rank's gradient, and the parameters in rank 0's.
        case shared(SharedSegments)
    }

    /// Whether the steps go through shared memory (known after the first step; false before).
    public var usesSharedMemory: Bool {
        if case .shared = transport { return true }
        return false
    }

    /// Cuts the shares and the optimizer's views of this rank's.
    ///
    /// - Parameter sharedMemory: move the gradient and parameters through ``SharedSegments``
    ///   when the communicator has them (default); false keeps to its collectives.
    public init(parameters: ParameterStore<Scalar>, optimizer: any Optimizer<Scalar>, communicator: any Communicator,
                sharedMemory: Bool = true) {
        precondition(optimizer.parameters === parameters, "the optimizer updates another parameter store")
        self.parameters = parameters
        self.optimizer = optimizer
        self.communicator = communicator
        let count = parameters.count, size = communicator.size
        shards = (0..<size).map { r in count * r / size ..< count * (r + 1) / size }
        counts = shards.map(\.count)
        shardGradient = Tensor(zeros: [counts[communicator.rank]])
        update = optimizer.shard(shards[communicator.rank], gradient: shardGradient)
        sums = [Double](repeating: 0, count: update.sumCount)
        transport = sharedMemory && size > 1 ? .undecided : .collectives
    }

    /// The bytes handed to the gradient's reduce-scatter in a step (all of `|θ|`); the
    /// parameters' all-gather receives as many.
    public var bytesPerStep: Int { parameters.count * MemoryLayout<Scalar>.stride }

    /// Sums the store's gradients over the ranks into this rank's share, ``shardGradient``.
    public func reduceScatterGradients() throws {
        if case .undecided = transport { try mapSegments() }
        if case let .shared(segments) = transport {
            try segments.synchronize()
            shardSquaredNorm = shardGradient.withUnsafeMutableBufferPointer {
                Self.sum(shards[communicator.rank], of: segments, into: $0)
            }
            return
        }
        try parameters.gradients.withUnsafeBufferPointer { gradients in
            try shardGradient.withUnsafeMutableBufferPointer { share in
                try communicator.reduceScatter(gradients, into: share, counts: counts, .sum)
            }
        }
    }

    /// Writes `Σ_r segment_r[range]` into `out` (`range.count` elements), adding in rank order
    /// `((g₀ + g₁) + g₂) + …` — ``ThreadCommunicator``'s order — and returns the squared norm
    /// of the sum in `squaredNorm()`'s order: the first pass adds two segments, the last also
    /// sums the squares. The reduction of a step through shared memory (and what
    /// `bench comm --shared-memory` times); the segments hold `Scalar`s, two or more.
    public static func sum(_ range: Range<Int>, of segments: SharedSegments,
                           into out: UnsafeMutableBufferPointer<Scalar>) -> Double {
        precondition(segments.count >= 2 && out.count == range.count, "sum: \(segments.count) segments into \(out.count) of \(range)")
        guard let out = out.baseAddress else { return 0 }
        func peer(_ rank: Int) -> UnsafeMutablePointer<Scalar> {
            segments.segment(rank, as: Scalar.self).baseAddress! + range.lowerBound
        }
        let first = peer(0), second = peer(1), count = segments.count
        if count > 2 {
            for i in 0 ..< range.count { out[i] = first[i] + second[i] }
            for rank in 2 ..< count - 1 {
                let source = peer(rank)
                for i in 0 ..< range.count { out[i] += source[i] }
            }
        }
        let last = peer(count - 1)
        return Tensor<Scalar>.laneSum(range.count) { i in
            out[i] = count > 2 ? out[i] + last[i] : first[i] + last[i]
            let x = Double(out[i])
            return x * x
        }
    }

    /// Where the parameters start in rank 0's segment: after its gradient, on a cache line.
    private var parameterOffset: Int { (parameters.count + 15) / 16 * 16 }

    /// The node's one copy of the parameters, in rank 0's segment.
    private func sharedParameters(_ segments: SharedSegments) -> UnsafeMutablePointer<Scalar> {
        segments.segment(0, as: Scalar.self).baseAddress! + parameterOffset
    }

    /// Asks the communicator for segments (a collective): each rank's holds its gradient, rank
    /// 0's the parameters too. When it has them, the store's gradient moves into this rank's
    /// segment (``Tensor/moveStorage(to:owner:)``; the layers' views follow), so the backward
    /// pass writes it where the peers read it; and every rank's parameters become the one copy
    /// in rank 0's segment, which each rank's update writes its share of in place.
    private func mapSegments() throws {
        let rank = communicator.rank
        let elements = parameters.count + (rank == 0 ? parameterOffset : 0)
        guard let segments = try communicator.sharedSegments(byteCount: elements * MemoryLayout<Scalar>.stride) else {
            transport = .collectives
            return
        }
        transport = .shared(segments)
        // A store's flat buffers are storages of their own, which can move.
        parameters.gradients.moveStorage(to: segments.segment(rank, as: Scalar.self).baseAddress!, owner: segments)
        // Every rank holds the same parameters here (the steps so far kept them equal): rank 0
        // copies its own in, the others take them after the barrier.
        if rank == 0 { parameters.values.moveStorage(to: sharedParameters(segments), owner: segments) }
        try segments.synchronize()
        if rank != 0 { parameters.values.adoptStorage(sharedParameters(segments), owner: segments) }
    }

    /// The global L2 norm of the summed gradient, the same on every rank: the shares' squared
    /// norms summed over ranks (in `Double`).
    public func gradientNorm() throws -> Double {
        defer { shardSquaredNorm = nil }
        return try communicator.allReduce(shardSquaredNorm ?? shardGradient.squaredNorm(), .sum).squareRoot()
    }

    /// Clips this rank's share as ``ParameterStore/clipGradientNorm(maxNorm:)`` clips the whole
    /// gradient, given its global norm (``gradientNorm()``).
    public func clipGradients(maxNorm: Double, norm: Double) {
        precondition(maxNorm > 0, "clipGradients: maxNorm \(maxNorm) must be positive")
        if let coefficient = ParameterStore<Scalar>.clippingFactor(norm: norm, maxNorm: maxNorm) {
            shardGradient.scale(by: Scalar(coefficient))
        }
    }

    /// Increments the optimizer's step count, updates this rank's share of the parameters and
    /// slots from ``shardGradient`` (all-reducing the per-parameter sums first when the
    /// optimizer needs them), then all-gathers the parameters.
    public func step() throws {
        optimizer.stepCount += 1
        if !sums.isEmpty {
            sums.withUnsafeMutableBufferPointer { sums in
                sums.update(repeating: 0)
                update.accumulate(sums)
            }
            try communicator.allReduce(&sums, .sum)
        }
        sums.withUnsafeBufferPointer { update.apply($0) }
        try gatherParameters()
        optimizerStateIsWhole = false
    }

    /// Gives every rank the parameters every rank updated: through shared memory a barrier (the
    /// ranks' parameters are the one copy each updated its share of), else an all-gather.
    private func gatherParameters() throws {
        guard case let .shared(segments) = transport else {
            try parameters.values.withUnsafeMutableBufferPointer { try communicator.allGather($0, counts: counts) }
            return
        }
        try segments.synchronize()
    }

    /// All-gathers every slot's shares, so that every rank holds the whole optimizer state (what
    /// one process would hold). Every rank must call it; it does nothing when the state is whole.
    public func gatherOptimizerState() throws {
        guard !optimizerStateIsWhole else { return }
        for name in optimizer.slotNames {
            try optimizer.slot(name).withUnsafeMutableBufferPointer { try communicator.allGather($0, counts: counts) }
        }
        optimizerStateIsWhole = true
    }
}

/// An optimizer's update of a contiguous range of the flat buffers (its pieces of the
/// parameters that meet the range), with the optimizer's state type erased.
public struct OptimizerShard<Scalar: TensorScalar> {
    /// The range of the flat buffers.
    public let range: Range<Int>
    /// The `Double`s of the per-parameter sums: ``Optimizer/sumsPerParameter`` for every
    /// parameter of the store, at its index (0 when the update needs none).
    public let sumCount: Int
    /// Adds the pieces' sums into a buffer of ``sumCount`` `Double`s.
    let accumulate: (UnsafeMutableBufferPointer<Double>) -> Void
    /// Updates the pieces, given the whole parameters' sums.
    let apply: (UnsafeBufferPointer<Double>) -> Void
}

extension Optimizer {
    /// The update of the elements `range` of the flat buffers only: for every parameter that
    /// meets the range, the piece of its value and slots there and of `gradient` (the range's
    /// gradient, `range.count` elements).
    public func shard(_ range: Range<Int>, gradient: Tensor<Scalar>) -> OptimizerShard<Scalar> {
        precondition(gradient.count == range.count, "gradient of \(gradient.count) elements for \(range)")
        let perParameter = sumsPerParameter
        var pieces: [(index: Int, target: OptimizerTarget<Scalar, State>)] = []
        for (index, entry) in parameters.entries.enumerated() {
            let start = max(entry.offset, range.lowerBound), end = min(entry.offset + entry.count, range.upperBound)
            guard start < end else { continue }
            let piece = start ..< end
            let cut = { (buffer: Tensor<Scalar>) in buffer.reshaped([buffer.count]).rows(piece) }
            let local = piece.lowerBound - range.lowerBound ..< piece.upperBound - range.lowerBound
            pieces.append((index, OptimizerTarget(entry: entry, parameter: cut(parameters.values),
                                                  gradient: gradient.rows(local), state: state(cut))))
        }
        func sumsOf(_ index: Int) -> Range<Int> { index * perParameter ..< (index + 1) * perParameter }
        let cutPieces = pieces
        return OptimizerShard(
            range: range, sumCount: parameters.entries.count * perParameter,
            accumulate: { sums in
                for (index, target) in cutPieces {
                    self.accumulateSums(gradient: target.gradient, parameter: target.parameter, role: target.entry.role,
                                        into: UnsafeMutableBufferPointer(rebasing: sums[sumsOf(index)]))
                }
            },
            apply: { sums in
                for (index, target) in cutPieces {
                    self.applyPiece(gradient: target.gradient, parameter: target.parameter, state: target.state,
                                    role: target.entry.role, sums: UnsafeBufferPointer(rebasing: sums[sumsOf(index)]))
                }
            })
    }
}

/// When a data-parallel step shards the optimizer update over the ranks
/// (``ShardedOptimizerStep``; the config's `optimizer.sharded_update`).
public enum ShardedUpdate: String, ConfigurationChoice {
    /// On two ranks or more, for a store of at least ``minimumParameters`` parameters.
    case automatic
    /// On two ranks or more.
    case always
    /// Never: every rank updates every parameter after one all-reduce.
    case never

    /// The smallest store `automatic` shards. The update is memory-bound, about 1 ns a
    /// parameter on one core here (8.2 ms for the reference model's 8.15 M, `docs/SCALING.md`),
    /// so sharding saves about `(P−1)/P` ns a parameter; it adds the latency of a collective or
    /// two (the all-reduce split in two halves, LARS' per-parameter sums: some 2 × 20 µs on a
    /// cluster). Worth it from about 10⁵ parameters.
    public static let minimumParameters = 1 << 17

    /// Whether a store of `parameterCount` parameters on `worldSize` ranks is sharded.
    public func shards(worldSize: Int, parameterCount: Int) -> Bool {
        switch self {
        case .never: return false
        case .always: return worldSize > 1
        case .automatic: return worldSize > 1 && parameterCount >= ShardedUpdate.minimumParameters
        }
    }
}
