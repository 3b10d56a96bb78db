import Communication
import Tensor

/// Synchronised batch normalisation over the global batch (PyTorch's `nn.BatchNorm1d` /
/// `nn.BatchNorm2d` converted with `nn.SyncBatchNorm`).
///
/// Input `(B, C)` (statistics per feature over the rows) or `(B, C, H, W)` (per channel over
/// rows and positions); `y = γ (x − μ) / √(σ² + ε) + β`.
///
/// In training mode μ and σ² (biased) are those of the *global* batch — every rank's rows — so
/// N ranks give the single-process result on the same global batch:
/// - forward: one all-reduce of `Double`s `[n, Σ(x − K), Σ(x − K)²]` per channel, where the
///   shift `K` is the running mean (the same on every rank, since it is updated from global
///   statistics). Shifting by a value near the mean keeps `Σ(x−K)²/n − (Σ(x−K)/n)²` free of
///   cancellation; in `Double` the relative error of σ² is about `1e-16 · (1 + (μ − K)²/σ²)`.
/// - the running statistics (momentum 0.1, like PyTorch) take the global μ and the *unbiased*
///   global variance `σ² · n / (n − 1)`; they are the same on every rank.
/// - backward: one all-reduce of the two per-channel sums `Σ dy` and `Σ dy·x̂`, so the input
///   gradient is that of the global batch norm. The gradients of γ and β are this rank's
///   sums only: the trainer all-reduces parameter gradients with a sum afterwards.
/// A rank with no rows contributes zeros and still takes part in both all-reduces.
///
/// In evaluation mode the running statistics normalise and nothing is communicated.
///
/// Parameters (`affine`): `weight` γ `(C)` = 1, `bias` β `(C)` = 0. Buffers: `running_mean`
/// `(C)` = 0 and `running_var` `(C)` = 1.
public final class BatchNorm<Scalar: LayerScalar>: Layer {
    public let features: Int
    public let affine: Bool
    public let momentum: Double
    public let epsilon: Double

    private var weight: Tensor<Scalar>?, weightGradient: Tensor<Scalar>?   // (C)
    private var bias: Tensor<Scalar>?, biasGradient: Tensor<Scalar>?       // (C)
    private var runningMean: Tensor<Scalar>?, runningVariance: Tensor<Scalar>?  // (C)
    /// Scratch for the all-reduces: `[n, Σ(x−K) (C), Σ(x−K)² (C)]` forward, `[Σdy (C), Σdy·x̂ (C)]` backward.
    private var statistics: [Double]

    private final class Cache {
        var training = false
        var groups = 1                            // G: row groups with statistics of their own
        var count: [Int] = []                     // (G) n: values per channel over the global batch
        var mean: [Double] = [], inverseStd: [Double] = []   // (G, C) μ and 1/√(σ² + ε)
        var normalized: Tensor<Scalar>?           // (B, C, S) x̂
        var output: Tensor<Scalar>?               // (B, C, S)
        var inputGradient: Tensor<Scalar>?        // (B, C, S)
    }
    private var caches = SlotCaches<Cache>()

    /// - Parameters:
    ///   - features: C, the number of features (channels).
    ///   - affine: learn γ and β (default true).
    ///   - momentum: the running statistics' update weight (PyTorch's default 0.1).
    ///   - epsilon: added to the variance (PyTorch's default 1e-5).
    public init(features: Int, affine: Bool = true, momentum: Double = 0.1, epsilon: Double = 1e-5) {
        precondition(features > 0, "BatchNorm(\(features))")
        self.features = features
        self.affine = affine
        self.momentum = momentum
        self.epsilon = epsilon
        statistics = [Double](repeating: 0, count: 2 * features + 1)
    }

    public func parameterSpecs() -> [ParameterSpec] {
        guard affine else { return [] }
        return [ParameterSpec(name: "weight", shape: [features], role: .normalization, initializer: .ones),
                ParameterSpec(name: "bias", shape: [features], role: .normalization, initializer: .zeros)]
    }

    public func bufferSpecs() -> [ParameterSpec] {
        [ParameterSpec(name: "running_mean", shape: [features], role: .normalization, initializer: .zeros),
         ParameterSpec(name: "running_var", shape: [features], role: .normalization, initializer: .ones)]
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        if affine {
            (weight, weightGradient) = parameters.bound(prefix, "weight")
            (bias, biasGradient) = parameters.bound(prefix, "bias")
        }
        runningMean = buffers.value(qualifiedName(prefix, "running_mean"))
        runningVariance = buffers.value(qualifiedName(prefix, "running_var"))
    }

    /// `(B, C) → (B, C)` or `(B, C, H, W) → (B, C, H, W)`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let runningMean, let runningVariance else { throw LayerError.unbound(layer: "BatchNorm") }
        guard input.rank >= 2, input.shape[1] == features else {
            throw LayerError.shapeMismatch(layer: "BatchNorm(\(features))", expected: "(B, \(features)[, H, W])",
                                           got: input.shape)
        }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.batchNorm, since: started) }
        let groups = context.rowGroups
        guard input.shape[0] % groups == 0 else {
            throw LayerError.shapeMismatch(layer: "BatchNorm(\(features)) over \(groups) row groups",
                                           expected: "(B, \(features)[, H, W]) with B a multiple of \(groups)",
                                           got: input.shape)
        }
        let cache = caches.cache(context.slot, make: Cache.init)
        if cache.groups != groups || cache.mean.count != groups * features {
            cache.groups = groups
            cache.count = [Int](repeating: 0, count: groups)
            cache.mean = [Double](repeating: 0, count: groups * features)
            cache.inverseStd = [Double](repeating: 0, count: groups * features)
        }
        let normalized = reuse(&cache.normalized, shape: input.shape)
        let output = reuse(&cache.output, shape: input.shape)
        cache.training = context.training
        // Each group in turn, as separate forward passes would: group g + 1 is shifted by the
        // running mean that group g updated.
        let rows = input.shape[0] / groups
        for g in 0..<groups {
            let part = g * rows ..< (g + 1) * rows
            try forwardGroup(g, input.rows(part), normalized: normalized.rows(part), output: output.rows(part),
                             cache: cache, runningMean: runningMean, runningVariance: runningVariance, context: context)
        }
        return output
    }

    /// The forward pass of row group `g` (all rows when there is one group).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    private func forwardGroup(_ g: Int, _ input: Tensor<Scalar>, normalized: Tensor<Scalar>, output: Tensor<Scalar>,
                              cache: Cache, runningMean: Tensor<Scalar>, runningVariance: Tensor<Scalar>,
                              context: LayerContext) throws {
        let (B, C, S) = (input.shape[0], features, input.count / max(input.shape[0] * features, 1))
        let base = g * C

        if context.training {
            // Shifted sums of this rank, then one all-reduce makes them global.
            for i in statistics.indices { statistics[i] = 0 }
            statistics[0] = Double(B * S)
            statistics.withUnsafeMutableBufferPointer { sums in
                input.withUnsafeBufferPointer { x in
                    runningMean.withUnsafeBufferPointer { shift in
                        // Each pass has an S == 1 loop and an S > 1 loop on purpose. Written
                        // once through a per-element closure (tried: forEachElement(B, C, S) {
                        // i, c in … }), the per-channel constants are reloaded for every element
                        // of a (B, C, H, W) input, and batch norm's time in the convnet step
                        // went from 23–26 to 30–40 ms (bench step --encoder convnet, 1 thread).
                        if S == 1 {
                            // (B, C): the same sums, vectorised along the channels.
                            for b in 0..<B {
                                let row = x.baseAddress! + b * C
                                for c in 0..<C {
                                    let d = Double(row[c]) - Double(shift[c])
                                    sums[1 + c] += d
                                    sums[1 + C + c] += d * d
                                }
                            }
                            return
                        }
                        for b in 0..<B {
                            for c in 0..<C {
                                let row = x.baseAddress! + (b * C + c) * S
                                let k = Double(shift[c])
                                // Eight independent lanes each (Tensor.laneSum): one running
                                // sum is a chain of dependent adds, 4 cycles an element.
                                sums[1 + c] += Tensor<Scalar>.laneSum(S) { Double(row[$0]) - k }
                                sums[1 + C + c] += Tensor<Scalar>.laneSum(S) { let d = Double(row[$0]) - k; return d * d }
                            }
                        }
                    }
                }
            }
            try statistics.withUnsafeMutableBufferPointer { try context.communicator.allReduce($0, .sum) }
            let n = statistics[0]
            cache.count[g] = Int(n)
            guard cache.count[g] > 1 else { throw LayerError.batchTooSmall(layer: "BatchNorm(\(features))", count: cache.count[g]) }
            runningMean.withUnsafeMutableBufferPointer { runningMean in
                runningVariance.withUnsafeMutableBufferPointer { runningVariance in
                    for c in 0..<C {
                        let shiftedMean = statistics[1 + c] / n
                        let variance = max(statistics[1 + C + c] / n - shiftedMean * shiftedMean, 0)  // biased σ²
                        let mean = Double(runningMean[c]) + shiftedMean
                        cache.mean[base + c] = mean
                        cache.inverseStd[base + c] = 1 / (variance + epsilon).squareRoot()
                        // Running statistics: global mean, unbiased global variance.
                        runningMean[c] = Scalar((1 - momentum) * Double(runningMean[c]) + momentum * mean)
                        runningVariance[c] = Scalar((1 - momentum) * Double(runningVariance[c])
                                                    + momentum * variance * n / (n - 1))
                    }
                }
            }
        } else {
            for c in 0..<C {
                cache.mean[base + c] = Double(runningMean[flat: c])
                cache.inverseStd[base + c] = 1 / (Double(runningVariance[flat: c]) + epsilon).squareRoot()
            }
        }

        // x̂ = (x − μ) / √(σ² + ε);  y = γ x̂ + β                (B, C, S)
        // Per-channel constants once, in Scalar: [μ, 1/√(σ²+ε), γ, β] × C.
        let constants = UnsafeMutableBufferPointer<Scalar>.allocate(capacity: 4 * C)
        defer { constants.deallocate() }
        for c in 0..<C {
            constants[c] = Scalar(cache.mean[base + c])
            constants[C + c] = Scalar(cache.inverseStd[base + c])
            constants[2 * C + c] = weight.map { $0[flat: c] } ?? 1
            constants[3 * C + c] = bias.map { $0[flat: c] } ?? 0
        }
        input.withUnsafeBufferPointer { x in
            normalized.withUnsafeMutableBufferPointer { xHat in
                output.withUnsafeMutableBufferPointer { y in
                    if S == 1 {
                        for b in 0..<B {
                            for c in 0..<C {
                                let i = b * C + c
                                xHat[i] = (x[i] - constants[c]) * constants[C + c]
                                y[i] = constants[2 * C + c] * xHat[i] + constants[3 * C + c]
                            }
                        }
                        return
                    }
                    for b in 0..<B {
                        for c in 0..<C {
                            let base = (b * C + c) * S
                            let mean = constants[c], inverseStd = constants[C + c]
                            let gamma = constants[2 * C + c], beta = constants[3 * C + c]
                            for s in base..<(base + S) {
                                xHat[s] = (x[s] - mean) * inverseStd
                                y[s] = gamma * xHat[s] + beta
                            }
                        }
                    }
                }
            }
        }
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let normalized = cache.normalized,
              normalized.count == outputGradient.count
        else { throw LayerError.noForward(layer: "BatchNorm", slot: context.slot) }
        let started = LayerProfile.shared.now()
        defer { LayerProfile.shared.add(.batchNorm, since: started) }
        let inputGradient = reuse(&cache.inputGradient, shape: normalized.shape)
        let rows = normalized.shape[0] / cache.groups, dy = outputGradient.reshaped(normalized.shape)
        for g in 0..<cache.groups {
            let part = g * rows ..< (g + 1) * rows
            try backwardGroup(g, dy.rows(part), normalized: normalized.rows(part), inputGradient: inputGradient.rows(part),
                              cache: cache, context: context)
        }
        return inputGradient
    }

    /// The backward pass of row group `g`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    private func backwardGroup(_ g: Int, _ outputGradient: Tensor<Scalar>, normalized: Tensor<Scalar>,
                               inputGradient: Tensor<Scalar>, cache: Cache, context: LayerContext) throws {
        let (B, C, S) = (normalized.shape[0], features, normalized.count / max(normalized.shape[0] * features, 1))
        let base = g * C

        // This rank's Σ dy and Σ dy·x̂ per channel                     (C), (C)
        for i in 0..<(2 * C) { statistics[i] = 0 }
        statistics.withUnsafeMutableBufferPointer { sums in
            outputGradient.withUnsafeBufferPointer { dy in
                normalized.withUnsafeBufferPointer { xHat in
                    if S == 1 {
                        for b in 0..<B {
                            for c in 0..<C {
                                let i = b * C + c
                                sums[c] += Double(dy[i])
                                sums[C + c] += Double(dy[i]) * Double(xHat[i])
                            }
                        }
                        return
                    }
                    for b in 0..<B {
                        for c in 0..<C {
                            let (dyRow, xHatRow) = (dy.baseAddress! + (b * C + c) * S, xHat.baseAddress! + (b * C + c) * S)
                            sums[c] += Tensor<Scalar>.laneSum(S) { Double(dyRow[$0]) }
                            sums[C + c] += Tensor<Scalar>.laneSum(S) { Double(dyRow[$0]) * Double(xHatRow[$0]) }
                        }
                    }
                }
            }
        }
        // dβ += Σ dy, dγ += Σ dy·x̂ (this rank's contribution)
        if let weightGradient, let biasGradient {
            weightGradient.withUnsafeMutableBufferPointer { dGamma in
                biasGradient.withUnsafeMutableBufferPointer { dBeta in
                    for c in 0..<C {
                        dBeta[c] += Scalar(statistics[c])
                        dGamma[c] += Scalar(statistics[C + c])
                    }
                }
            }
        }
        if cache.training {
            try statistics.withUnsafeMutableBufferPointer {
                try context.communicator.allReduce(UnsafeMutableBufferPointer(rebasing: $0[0..<(2 * C)]), .sum)
            }
        }

        // training: dx = γ/√(σ²+ε) · (dy − Σdy/n − x̂ · Σdy·x̂/n)   (global sums, global n)
        // eval:     dx = γ/√(σ²+ε) · dy
        let n = Double(cache.count[g])
        // Per-channel constants once, in Scalar: [scale, mean dy, mean dy·x̂] × C.
        let constants = UnsafeMutableBufferPointer<Scalar>.allocate(capacity: 3 * C)
        defer { constants.deallocate() }
        for c in 0..<C {
            let gamma = weight.map { Double($0[flat: c]) } ?? 1
            constants[c] = Scalar(gamma * cache.inverseStd[base + c])
            constants[C + c] = Scalar(cache.training ? statistics[c] / n : 0)
            constants[2 * C + c] = Scalar(cache.training ? statistics[C + c] / n : 0)
        }
        outputGradient.withUnsafeBufferPointer { dy in
            normalized.withUnsafeBufferPointer { xHat in
                inputGradient.withUnsafeMutableBufferPointer { dx in
                    if S == 1 {
                        // (B, C): a loop along the channels of each row, which vectorises.
                        for b in 0..<B {
                            for c in 0..<C {
                                let i = b * C + c
                                dx[i] = constants[c] * (dy[i] - constants[C + c] - xHat[i] * constants[2 * C + c])
                            }
                        }
                        return
                    }
                    for b in 0..<B {
                        for c in 0..<C {
                            let scale = constants[c], meanDy = constants[C + c], meanDyXHat = constants[2 * C + c]
                            let base = (b * C + c) * S
                            for s in base..<(base + S) {
                                dx[s] = scale * (dy[s] - meanDy - xHat[s] * meanDyXHat)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Batch norm of `(B, C)` features (PyTorch's `nn.BatchNorm1d`), synchronised over the ranks.
public typealias BatchNorm1d<Scalar: LayerScalar> = BatchNorm<Scalar>
/// Batch norm of `(B, C, H, W)` channels (PyTorch's `nn.BatchNorm2d`), synchronised over the ranks.
public typealias BatchNorm2d<Scalar: LayerScalar> = BatchNorm<Scalar>
