import Tensor

/// A fully connected layer, `y = x Wᵀ + b` (PyTorch's `nn.Linear`).
///
/// Parameters: `weight` `(outFeatures, inFeatures)`, `bias` `(outFeatures)` (optional), both
/// initialised like PyTorch: uniform in ±1/√inFeatures.
public final class Linear<Scalar: LayerScalar>: Layer {
    public let inFeatures: Int
    public let outFeatures: Int
    public let hasBias: Bool
    /// The initialisation of weight and bias; `nil` for PyTorch's default.
    public let initializer: ParameterInitializer?

    private var weight: Tensor<Scalar>?          // (OC, C)
    private var weightGradient: Tensor<Scalar>?  // (OC, C)
    private var bias: Tensor<Scalar>?            // (OC)
    private var biasGradient: Tensor<Scalar>?    // (OC)
    private var biasSums: [Double]               // (OC) scratch of the backward pass

    private final class Cache {
        var input: Tensor<Scalar>?          // (…, C), the caller's
        var output: Tensor<Scalar>?         // (…, OC)
        var inputGradient: Tensor<Scalar>?  // (…, C)
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameter initializer: the initialisation of weight and bias (default `nil`: PyTorch's,
    ///   uniform in ±1/√inFeatures); `.zeros` for the modulation of an AdaLN-zero block.
    public init(inFeatures: Int, outFeatures: Int, bias: Bool = true, initializer: ParameterInitializer? = nil) {
        precondition(inFeatures > 0 && outFeatures > 0, "Linear(\(inFeatures), \(outFeatures))")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        hasBias = bias
        self.initializer = initializer
        biasSums = [Double](repeating: 0, count: outFeatures)
    }

    public func parameterSpecs() -> [ParameterSpec] {
        let initializer = initializer ?? .pytorchDefault(fanIn: inFeatures)
        var specs = [ParameterSpec(name: "weight", shape: [outFeatures, inFeatures], role: .weight, initializer: initializer)]
        if hasBias {
            specs.append(ParameterSpec(name: "bias", shape: [outFeatures], role: .bias, initializer: initializer))
        }
        return specs
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        (weight, weightGradient) = parameters.bound(prefix, "weight")
        if hasBias {
            (bias, biasGradient) = parameters.bound(prefix, "bias")
        }
    }

    /// `(…, C) → (…, OC)` over the last axis: `(B, C) → (B, OC)`, `(B, T, C) → (B, T, OC)`.
    ///
    /// An input of rank 3 or more whose last axis is not `inFeatures` but whose rows have
    /// `inFeatures` elements (`(B, 1, 28, 28)` for 784 features) is read as `(B, C)`, as before
    /// `Linear` worked on the last axis. Either way it is one matrix product over all rows.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight else { throw LayerError.unbound(layer: "Linear") }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.linear, since: started) }
        let lastAxis = input.rank >= 3 && input.shape.last == inFeatures
        guard input.rank >= 1, lastAxis || input.columnCount == inFeatures else {
            throw LayerError.shapeMismatch(layer: "Linear(\(inFeatures), \(outFeatures))", expected: "(…, \(inFeatures))",
                                           got: input.shape)
        }
        let cache = caches.cache(context.slot, make: Cache.init)
        let rows = lastAxis ? input.count / inFeatures : input.rowCount
        let outputShape = lastAxis ? input.shape.dropLast() + [outFeatures] : [rows, outFeatures]
        let output = reuse(&cache.output, shape: outputShape)
        cache.input = input
        let matrix = lastAxis ? input.reshaped([rows, inFeatures]) : input
        let outputMatrix = lastAxis ? output.reshaped([rows, outFeatures]) : output
        // y = x Wᵀ (+ b)                                     (R, OC) = (R, C) (OC, C)ᵀ
        Tensor.gemm(matrix, weight, transposeB: true, into: outputMatrix)
        if let bias { outputMatrix.addToEachRow(bias) }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let weight, let weightGradient else { throw LayerError.unbound(layer: "Linear") }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.linear, since: started) }
        guard let cache = caches.existing(context.slot), let input = cache.input, let output = cache.output,
              outputGradient.rowCount == output.rowCount, outputGradient.count == output.count
        else { throw LayerError.noForward(layer: "Linear", slot: context.slot) }
        let rows = output.count / outFeatures
        let (inputMatrix, gradientMatrix) = output.rank == 2
            ? (input, outputGradient) : (input.reshaped([rows, inFeatures]), outputGradient.reshaped([rows, outFeatures]))
        // dx = dy W                                          (R, C) = (R, OC) (OC, C)
        let inputGradient: Tensor<Scalar>
        if context.needsInputGradient {
            inputGradient = reuse(&cache.inputGradient, shape: input.shape)
            Tensor.gemm(gradientMatrix, weight, into: output.rank == 2 ? inputGradient : inputGradient.reshaped([rows, inFeatures]))
        } else {
            inputGradient = reuse(&cache.inputGradient, shape: [0])   // empty, kept: no allocation a step
        }
        // dW += dyᵀ x                                        (OC, C) += (R, OC)ᵀ (R, C)
        Tensor.gemm(gradientMatrix, transposeA: true, inputMatrix, into: weightGradient, beta: 1)
        if let biasGradient {
            // db += Σ_rows dy                                (OC)
            for j in biasSums.indices { biasSums[j] = 0 }
            gradientMatrix.addColumnSums(into: &biasSums)
            accumulate(biasSums, into: biasGradient)
        }
        return inputGradient
    }
}
