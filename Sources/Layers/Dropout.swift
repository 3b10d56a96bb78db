import Tensor

/// Inverted dropout (PyTorch's `nn.Dropout(p)`): in training, each element is zeroed with
/// probability `p` and the rest scaled by `1 / (1 − p)`; in evaluation, the identity.
///
/// The mask is a pure function of (``LayerContext/seed``, ``LayerContext/step``, the layer's
/// name, the view, the *global* row, the position in the row): element `i` of local row `r` in
/// row group `g` draws `CounterRandom(seed, stream: hash(name) ⊕ step ⊕ (slot + g))` at counter
/// `(globalRowOffset + r) · rowElements + i` — view `slot + g`, so that `G` views stacked in row
/// groups draw the masks of `G` passes on slots `0…G−1`. N ranks, each with its
/// ``LayerContext/globalRowOffset``, therefore drop exactly what one process drops on the
/// whole batch. The name comes from ``bind(parameters:buffers:prefix:)`` so that two dropout
/// layers of one network draw different masks.
public final class Dropout<Scalar: LayerScalar>: ParameterFreeLayer {
    /// The probability of zeroing an element, in `[0, 1)`.
    public let probability: Double
    private var stream: UInt64 = CounterRandom.hash("dropout")

    private final class Cache {
        var mask: Tensor<Scalar>?           // (B, …) 0 or 1/(1 − p)
        var output: Tensor<Scalar>?         // (B, …)
        var inputGradient: Tensor<Scalar>?  // (B, …)
        var active = false                  // whether the last forward dropped (training, p > 0)
    }
    private var caches = SlotCaches<Cache>()

    public init(probability: Double) {
        precondition(probability >= 0 && probability < 1, "Dropout(p: \(probability)): p must be in [0, 1)")
        self.probability = probability
    }

    /// Takes the layer's name (`prefix`), which keys its masks.
    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        stream = CounterRandom.hash("dropout:" + prefix)
    }

    /// `(B, …) → (B, …)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let cache = caches.cache(context.slot, make: Cache.init)
        cache.active = context.training && probability > 0
        guard cache.active else { cache.output = input; return input }
        guard input.rank >= 1, input.rowCount % context.rowGroups == 0 else {
            throw LayerError.shapeMismatch(layer: "Dropout(\(probability))",
                                           expected: "(B, …) with B a multiple of \(context.rowGroups) row groups", got: input.shape)
        }
        let mask = reuse(&cache.mask, shape: input.shape)
        let output = reuse(&cache.output, shape: input.shape)
        let (rowsPerGroup, rowElements) = (input.rowCount / context.rowGroups, input.columnCount)
        let keep = Scalar(1 / (1 - probability))
        let base = CounterRandom(seed: context.seed, stream: stream).substream(UInt64(context.step))
        mask.withUnsafeMutableBufferPointer { m in
            for group in 0..<context.rowGroups {
                let generator = base.substream(UInt64(context.slot + group))
                for r in 0..<rowsPerGroup {
                    let row = (group * rowsPerGroup + r) * rowElements
                    let counter = UInt64((context.globalRowOffset + r) * rowElements)
                    for i in 0..<rowElements {
                        m[row + i] = generator.uniform(at: counter + UInt64(i)) < probability ? 0 : keep
                    }
                }
            }
        }
        // y = x ⊙ mask
        input.withUnsafeBufferPointer { x in
            mask.withUnsafeBufferPointer { m in
                output.withUnsafeMutableBufferPointer { y in for i in y.indices { y[i] = x[i] * m[i] } }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count
        else { throw LayerError.noForward(layer: "Dropout(\(probability))", slot: context.slot) }
        guard cache.active, let mask = cache.mask else { return outputGradient }
        // dx = dy ⊙ mask
        let inputGradient = reuse(&cache.inputGradient, shape: mask.shape)
        outputGradient.withUnsafeBufferPointer { dy in
            mask.withUnsafeBufferPointer { m in
                inputGradient.withUnsafeMutableBufferPointer { dx in for i in dx.indices { dx[i] = dy[i] * m[i] } }
            }
        }
        return inputGradient
    }
}
