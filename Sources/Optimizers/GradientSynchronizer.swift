import Tensor
import Communication
import Layers

/// Sums the gradients of a `ParameterStore` over all ranks, with one all-reduce of the store's
/// whole flat gradient buffer (or a few large buckets of it) per step.
///
/// **Sum, not average.** The objectives of AntiCollapse compute on each rank its *contribution*
/// to the gradient of the global-batch loss — the loss normalised by the global batch size, with
/// batch statistics made global by their own all-reduce — so the gradient of the step is the
/// sum of the ranks' contributions:
///
///     g = Σ over ranks r of g_r
///
/// Scaling by `1 / worldSize` (PyTorch DDP's averaging, right when each rank's loss is a mean over
/// its own local batch) would here shrink the gradient by the world size, and the run would no
/// longer reproduce the single-process one — the bug published data-parallel SSL
/// implementations have. A loss that *is* a per-rank mean can pass `scale: 1 / worldSize`
/// explicitly.
///
/// With ``SingleProcessCommunicator`` the all-reduce is the identity, and the single-process
/// step is the multi-process step.
///
/// Buckets split the flat buffer into consecutive ranges of at most `bucketByteCount` bytes,
/// cut once at construction; the element-wise sum does not depend on the cut (with
/// `ThreadCommunicator`, which adds in rank order, the result is bitwise that of one call; MPI may
/// choose its reduction algorithm by message size, so keep the bucket size fixed between runs
/// compared bit for bit).
public final class GradientSynchronizer<Scalar: TensorScalar & CommunicableScalar> {
    /// The store whose gradients are reduced.
    public let parameters: ParameterStore<Scalar>
    /// The ranks to sum over.
    public let communicator: any Communicator
    /// The element ranges of the flat gradient buffer reduced by one call each.
    public let buckets: [Range<Int>]
    /// The bytes handed to the all-reduce in one ``allReduceGradients(scale:)``: the whole
    /// gradient buffer (`count · MemoryLayout<Scalar>.stride`). What the network carries depends on
    /// MPI's algorithm (about `2 (N − 1) / N` times this for a ring).
    public var bytesPerStep: Int { parameters.count * MemoryLayout<Scalar>.stride }
    /// The bytes handed to the all-reduce since construction, over all calls.
    public private(set) var bytesCommunicated = 0
    /// The number of all-reduce calls since construction.
    public private(set) var collectiveCalls = 0

    /// Prepares the reduction of `parameters.gradients` over `communicator`.
    ///
    /// - Parameters:
    ///   - bucketByteCount: the largest bucket in bytes; `nil` (the default) reduces the whole
    ///     buffer in one call. A few tens of MiB keep the number of calls small while bounding
    ///     the size of one message.
    public init(parameters: ParameterStore<Scalar>, communicator: any Communicator, bucketByteCount: Int? = nil) {
        self.parameters = parameters
        self.communicator = communicator
        let count = parameters.count
        if let bucketByteCount {
            precondition(bucketByteCount >= MemoryLayout<Scalar>.stride,
                         "bucket of \(bucketByteCount) bytes holds no \(Scalar.self)")
            let perBucket = bucketByteCount / MemoryLayout<Scalar>.stride
            buckets = stride(from: 0, to: count, by: perBucket).map { $0 ..< min($0 + perBucket, count) }
        } else {
            buckets = [0 ..< count]
        }
    }

    /// Replaces every rank's gradients with their sum over all ranks, times `scale`:
    /// `g ← scale · Σ_r g_r`, identical on every rank.
    ///
    /// Must be called by every rank at the same point of the step.
    /// - Parameter scale: 1 by default (the gradients are contributions to the global-batch
    ///   loss; see the type's discussion); applied after the sum, on every rank alike.
    /// - Returns: the bytes handed to the all-reduce (``bytesPerStep``).
    /// - Throws: the communicator's error.
    @discardableResult
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func allReduceGradients(scale: Double = 1) throws -> Int {
        try parameters.gradients.withUnsafeMutableBufferPointer { gradients in
            for bucket in buckets {
                try communicator.allReduce(UnsafeMutableBufferPointer(rebasing: gradients[bucket]), .sum)
            }
        }
        if scale != 1 { parameters.gradients.scale(by: Scalar(scale)) }
        collectiveCalls += buckets.count
        bytesCommunicated += bytesPerStep
        return bytesPerStep
    }
}
