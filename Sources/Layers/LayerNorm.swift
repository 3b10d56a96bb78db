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
    private var blockSums: [Double] = []                                   // (blocks, 2, D) scratch

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
        // dynamic exclusivity check per element. Rows are independent: split over the threads.
        withAffine { gamma, beta in
            input.withUnsafeBufferPointer { x in
                normalized.withUnsafeMutableBufferPointer { xHat in
                    output.withUnsafeMutableBufferPointer { y in
                        cache.mean.withUnsafeMutableBufferPointer { means in
                            cache.inverseStd.withUnsafeMutableBufferPointer { inverseStds in
                                let (x, xHat, y) = (x.baseAddress!, xHat.baseAddress!, y.baseAddress!)
                                let (means, inverseStds) = (means.baseAddress!, inverseStds.baseAddress!)
                                parallelRanges(R, minimumPerPart: Self.rowsPerBlock) { rows in
                                    for r in rows {
                                        let row = x + r * D
                                        let mean = Tensor<Scalar>.laneSum(D) { Double(row[$0]) } / Double(D)
                                        let squares = Tensor<Scalar>.laneSum(D) { let d = Double(row[$0]) - mean; return d * d }
                                        let inverseStd = 1 / (squares / Double(D) + epsilon).squareRoot()
                                        means[r] = mean
                                        inverseStds[r] = inverseStd
                                        let (xHatRow, yRow) = (xHat + r * D, y + r * D)
                                        if let gamma, let beta {
                                            for j in 0..<D {
                                                let v = Scalar((Double(row[j]) - mean) * inverseStd)
                                                xHatRow[j] = v
                                                yRow[j] = gamma[j] * v + beta[j]
                                            }
                                        } else {
                                            for j in 0..<D {
                                                let v = Scalar((Double(row[j]) - mean) * inverseStd)
                                                xHatRow[j] = v
                                                yRow[j] = v
                                            }
                                        }
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
        // dγ and dβ are column sums over the rows: each block of `rowsPerBlock` rows sums into
        // its own slice of `blockSums`, and the blocks are added in order afterwards, so the
        // result does not depend on how many threads ran the blocks.
        let blocks = (R + Self.rowsPerBlock - 1) / Self.rowsPerBlock
        let affine = weightGradient != nil
        if affine && blockSums.count < blocks * 2 * D { blockSums = [Double](repeating: 0, count: blocks * 2 * D) }
        withAffine { gamma, _ in
            outputGradient.withUnsafeBufferPointer { dy in
                normalized.withUnsafeBufferPointer { xHat in
                    inputGradient.withUnsafeMutableBufferPointer { dx in
                        cache.inverseStd.withUnsafeBufferPointer { inverseStds in
                            blockSums.withUnsafeMutableBufferPointer { blockSums in
                                let (dy, xHat, dx) = (dy.baseAddress!, xHat.baseAddress!, dx.baseAddress!)
                                let (inverseStds, blockSums) = (inverseStds.baseAddress!, blockSums.baseAddress)
                                parallelRanges(blocks) { blockRange in
                                    for block in blockRange {
                                        let rows = block * Self.rowsPerBlock ..< min(R, (block + 1) * Self.rowsPerBlock)
                                        if affine, let sums = blockSums.map({ $0 + block * 2 * D }) {
                                            // dβ block += Σ dy, dγ block += Σ dy x̂ over the block's rows
                                            for j in 0..<(2 * D) { sums[j] = 0 }
                                            for r in rows {
                                                let (dyRow, xHatRow) = (dy + r * D, xHat + r * D)
                                                for j in 0..<D {
                                                    sums[j] += Double(dyRow[j])
                                                    sums[D + j] += Double(dyRow[j]) * Double(xHatRow[j])
                                                }
                                            }
                                        }
                                        for r in rows {
                                            let (dyRow, xHatRow, dxRow) = (dy + r * D, xHat + r * D, dx + r * D)
                                            // dx̂ = γ dy;  dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ x̂)) / √(σ² + ε)
                                            func dXHat(_ j: Int) -> Double { Double(gamma?[j] ?? 1) * Double(dyRow[j]) }
                                            let meanDXHat = Tensor<Scalar>.laneSum(D) { dXHat($0) } / Double(D)
                                            let meanDXHatXHat = Tensor<Scalar>.laneSum(D) { dXHat($0) * Double(xHatRow[$0]) } / Double(D)
                                            let inverseStd = inverseStds[r]
                                            for j in 0..<D {
                                                dxRow[j] = Scalar(inverseStd * (dXHat(j) - meanDXHat - Double(xHatRow[j]) * meanDXHatXHat))
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // dβ += Σ_rows dy,  dγ += Σ_rows dy x̂: the blocks' sums in block order    (D)
        if let weightGradient, let biasGradient {
            for j in 0..<D { weightSums[j] = 0; biasSums[j] = 0 }
            for block in 0..<blocks {
                let base = block * 2 * D
                for j in 0..<D { biasSums[j] += blockSums[base + j]; weightSums[j] += blockSums[base + D + j] }
            }
            accumulate(weightSums, into: weightGradient)
            accumulate(biasSums, into: biasGradient)
        }
        return inputGradient
    }

    /// Rows a thread takes at a time, and the rows of one partial sum of dγ and dβ.
    static var rowsPerBlock: Int { 128 }

    /// Calls `body` with γ and β (`nil` without affine parameters).
    @inline(__always)
    private func withAffine<R>(_ body: (UnsafePointer<Scalar>?, UnsafePointer<Scalar>?) -> R) -> R {
        guard let weight, let bias else { return body(nil, nil) }
        return weight.withUnsafeBufferPointer { w in bias.withUnsafeBufferPointer { b in body(w.baseAddress!, b.baseAddress!) } }
    }
}

