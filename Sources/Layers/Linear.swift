import Tensor

/// A fully connected layer, `y = x Wᵀ + b` (PyTorch's `nn.Linear`).
///
/// Parameters: `weight` `(outFeatures, inFeatures)`, `bias` `(outFeatures)` (optional), both
/// initialised like PyTorch: uniform in ±1/√inFeatures.
public final class Linear<Scalar: LayerScalar>: Layer {
    public let inFeatures: Int
    public let outFeatures: Int
    public let hasBias: Bool

    private var weight: Tensor<Scalar>?          // (OC, C)
    private var weightGradient: Tensor<Scalar>?  // (OC, C)
    private var bias: Tensor<Scalar>?            // (OC)
    private var biasGradient: Tensor<Scalar>?    // (OC)
    private var biasSums: [Double]               // (OC) scratch of the backward pass

    private final class Cache {
        var input: Tensor<Scalar>?          // (B, C), the caller's
        var output: Tensor<Scalar>?         // (B, OC)
        var inputGradient: Tensor<Scalar>?  // (B, C)
    }
    private var caches = SlotCaches<Cache>()

    public init(inFeatures: Int, outFeatures: Int, bias: Bool = true) {
        precondition(inFeatures > 0 && outFeatures > 0, "Linear(\(inFeatures), \(outFeatures))")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        hasBias = bias
        biasSums = [Double](repeating: 0, count: outFeatures)
    }

    public func parameterSpecs() -> [ParameterSpec] {
        var specs = [ParameterSpec(name: "weight", shape: [outFeatures, inFeatures], role: .weight,
                                   initializer: .pytorchDefault(fanIn: inFeatures))]
        if hasBias {
            specs.append(ParameterSpec(name: "bias", shape: [outFeatures], role: .bias,
                                       initializer: .pytorchDefault(fanIn: inFeatures)))
        }
        return specs
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: ParameterStore<Scalar>, prefix: String) {
        (weight, weightGradient) = parameters.bound(prefix, "weight")
        if hasBias {
            (bias, biasGradient) = parameters.bound(prefix, "bias")
        }
    }

    /// `(B, C) → (B, OC)`; any input whose rows have `inFeatures` elements is read as `(B, C)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight else { throw LayerError.unbound(layer: "Linear") }
        guard input.rank >= 1, input.columnCount == inFeatures else {
            throw LayerError.shapeMismatch(layer: "Linear(\(inFeatures), \(outFeatures))", expected: "(B, \(inFeatures))",
                                           got: input.shape)
        }
        let cache = caches.cache(context.slot, make: Cache.init)
        let batch = input.rowCount
        let output = reuse(&cache.output, shape: [batch, outFeatures])
        cache.input = input
        // y = x Wᵀ (+ b)                                     (B, OC) = (B, C) (OC, C)ᵀ
        Tensor.gemm(input, weight, transposeB: true, into: output)
        if let bias { output.addToEachRow(bias) }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight, let weightGradient else { throw LayerError.unbound(layer: "Linear") }
        guard let cache = caches.existing(context.slot), let input = cache.input,
              outputGradient.rowCount == input.rowCount, outputGradient.count == input.rowCount * outFeatures
        else { throw LayerError.noForward(layer: "Linear", slot: context.slot) }
        // dx = dy W                                          (B, C) = (B, OC) (OC, C)
        let inputGradient: Tensor<Scalar>
        if context.needsInputGradient {
            inputGradient = reuse(&cache.inputGradient, shape: input.shape)
            Tensor.gemm(outputGradient, weight, into: inputGradient)
        } else {
            inputGradient = Tensor(zeros: [0])
        }
        // dW += dyᵀ x                                        (OC, C) += (B, OC)ᵀ (B, C)
        Tensor.gemm(outputGradient, transposeA: true, input, into: weightGradient, beta: 1)
        if let biasGradient {
            // db += Σ_b dy                                   (OC)
            for j in biasSums.indices { biasSums[j] = 0 }
            outputGradient.addColumnSums(into: &biasSums)
            accumulate(biasSums, into: biasGradient)
        }
        return inputGradient
    }
}
