import Tensor

/// Layer normalisation of each row over its last `features` elements (PyTorch's
/// `nn.LayerNorm(features)`): `y = γ (x − μ_row) / √(σ²_row + ε) + β` with the biased variance.
///
/// Statistics are per row, so nothing is communicated. Parameters (`elementwiseAffine`):
/// `weight` γ `(D)` = 1, `bias` β `(D)` = 0.
public final class LayerNorm<Scalar: LayerScalar>: Layer {
    public let features: Int
    public let elementwiseAffine: Bool
    public let epsilon: Double

    private var weight: Tensor<Scalar>?, weightGradient: Tensor<Scalar>?   // (D)
    private var bias: Tensor<Scalar>?, biasGradient: Tensor<Scalar>?       // (D)
    private var weightSums: [Double], biasSums: [Double]                   // (D) scratch

    private final class Cache {
        var mean: [Double] = [], inverseStd: [Double] = []   // (R) per row
        var normalized: Tensor<Scalar>?                      // (R, D) x̂
        var output: Tensor<Scalar>?                          // (R, D)
        var inputGradient: Tensor<Scalar>?                   // (R, D)
    }
    private var caches = SlotCaches<Cache>()

    public init(features: Int, elementwiseAffine: Bool = true, epsilon: Double = 1e-5) {
        precondition(features > 0, "LayerNorm(\(features))")
        self.features = features
        self.elementwiseAffine = elementwiseAffine
        self.epsilon = epsilon
        weightSums = [Double](repeating: 0, count: features)
        biasSums = [Double](repeating: 0, count: features)
    }

    public func parameterSpecs() -> [ParameterSpec] {
        guard elementwiseAffine else { return [] }
        return [ParameterSpec(name: "weight", shape: [features], role: .normalization, initializer: .ones),
                ParameterSpec(name: "bias", shape: [features], role: .normalization, initializer: .zeros)]
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        guard elementwiseAffine else { return }
        (weight, weightGradient) = parameters.bound(prefix, "weight")
        (bias, biasGradient) = parameters.bound(prefix, "bias")
    }

    /// `(…, D) → (…, D)`, normalising each run of `D` elements (R = count / D rows).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard input.rank >= 1, input.shape.last == features else {
            throw LayerError.shapeMismatch(layer: "LayerNorm(\(features))", expected: "(…, \(features))", got: input.shape)
        }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.layerNorm, since: started) }
        let cache = caches.cache(context.slot, make: Cache.init)
        let (R, D) = (input.count / features, features)
        if cache.mean.count != R {
            cache.mean = [Double](repeating: 0, count: R)
            cache.inverseStd = [Double](repeating: 0, count: R)
        }
        let normalized = reuse(&cache.normalized, shape: input.shape)
        let output = reuse(&cache.output, shape: input.shape)
        // Raw pointers throughout: element access through the class's arrays would pay a
        // dynamic exclusivity check per element.
        withAffine { gamma, beta in
            input.withUnsafeBufferPointer { x in
                normalized.withUnsafeMutableBufferPointer { xHat in
                    output.withUnsafeMutableBufferPointer { y in
                        cache.mean.withUnsafeMutableBufferPointer { means in
                            cache.inverseStd.withUnsafeMutableBufferPointer { inverseStds in
                                for r in 0..<R {
                                    let base = r * D
                                    var sum = 0.0
                                    for i in base..<(base + D) { sum += Double(x[i]) }
                                    let mean = sum / Double(D)
                                    var squares = 0.0
                                    for i in base..<(base + D) { let d = Double(x[i]) - mean; squares += d * d }
                                    let inverseStd = 1 / (squares / Double(D) + epsilon).squareRoot()
                                    means[r] = mean
                                    inverseStds[r] = inverseStd
                                    for j in 0..<D {
                                        xHat[base + j] = Scalar((Double(x[base + j]) - mean) * inverseStd)
                                        y[base + j] = (gamma?[j] ?? 1) * xHat[base + j] + (beta?[j] ?? 0)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let normalized = cache.normalized,
              normalized.count == outputGradient.count
        else { throw LayerError.noForward(layer: "LayerNorm", slot: context.slot) }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.layerNorm, since: started) }
        let inputGradient = reuse(&cache.inputGradient, shape: normalized.shape)
        let (R, D) = (normalized.count / features, features)
        for j in 0..<D { weightSums[j] = 0; biasSums[j] = 0 }
        withAffine { gamma, _ in
            outputGradient.withUnsafeBufferPointer { dy in
                normalized.withUnsafeBufferPointer { xHat in
                    inputGradient.withUnsafeMutableBufferPointer { dx in
                        cache.inverseStd.withUnsafeBufferPointer { inverseStds in
                            weightSums.withUnsafeMutableBufferPointer { weightSums in
                                biasSums.withUnsafeMutableBufferPointer { biasSums in
                                    for r in 0..<R {
                                        let base = r * D
                                        // dx̂ = γ dy;  dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ x̂)) / √(σ² + ε)
                                        var sumDXHat = 0.0, sumDXHatXHat = 0.0
                                        for j in 0..<D {
                                            let dXHat = Double(gamma?[j] ?? 1) * Double(dy[base + j])
                                            sumDXHat += dXHat
                                            sumDXHatXHat += dXHat * Double(xHat[base + j])
                                            biasSums[j] += Double(dy[base + j])
                                            weightSums[j] += Double(dy[base + j]) * Double(xHat[base + j])
                                        }
                                        let meanDXHat = sumDXHat / Double(D), meanDXHatXHat = sumDXHatXHat / Double(D)
                                        for j in 0..<D {
                                            let dXHat = Double(gamma?[j] ?? 1) * Double(dy[base + j])
                                            dx[base + j] = Scalar(inverseStds[r]
                                                                  * (dXHat - meanDXHat - Double(xHat[base + j]) * meanDXHatXHat))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // dγ += Σ_rows dy x̂,  dβ += Σ_rows dy                           (D)
        if let weightGradient, let biasGradient {
            accumulate(weightSums, into: weightGradient)
            accumulate(biasSums, into: biasGradient)
        }
        return inputGradient
    }

    /// Calls `body` with γ and β (`nil` without affine parameters).
    @inline(__always)
    private func withAffine<R>(_ body: (UnsafePointer<Scalar>?, UnsafePointer<Scalar>?) -> R) -> R {
        guard let weight, let bias else { return body(nil, nil) }
        return weight.withUnsafeBufferPointer { w in bias.withUnsafeBufferPointer { b in body(w.baseAddress!, b.baseAddress!) } }
    }
}
