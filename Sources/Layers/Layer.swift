import Communication
import Tensor

// MARK: - Scalars

/// The scalar of a network: a tensor scalar that collectives can carry. `Float` for training,
/// `Double` for the finite-difference checks.
public protocol LayerScalar: TensorScalar, CommunicableScalar, SIMDScalar {
    /// `erf` as the activations (GELU) compute it: libm's for `Double`, what the
    /// finite-difference checks and float64 references use, and for `Float` a rational
    /// approximation the compiler vectorises (``Float/rationalErf(_:)``).
    static func activationErf(_ x: Self) -> Self
    /// `exp` as the activations and the attention softmax compute it: libm's for `Double`, a
    /// vectorisable polynomial for `Float` (``Float/polynomialExp(_:)``).
    static func activationExp(_ x: Self) -> Self
    /// `y = f(x)` of a smooth activation on `count` elements (one call a layer: a loop on the
    /// concrete type, see ``SmoothActivation``).
    static func activation(_ kind: SmoothActivation, _ x: UnsafePointer<Self>, into y: UnsafeMutablePointer<Self>, count: Int)
    /// `dx = dy · f′(x)` of a smooth activation on `count` elements.
    static func activationGradient(_ kind: SmoothActivation, _ x: UnsafePointer<Self>, _ dy: UnsafePointer<Self>,
                                   into dx: UnsafeMutablePointer<Self>, count: Int)
}

extension Float: LayerScalar {
    @inline(__always) public static func activationErf(_ x: Float) -> Float { rationalErf(x) }
    @inlinable @inline(__always) public static func activationExp(_ x: Float) -> Float { polynomialExp(x) }

    // The loops of `SmoothActivation.forward` and `.backward` again, on `Float` itself: the
    // generic ones, even specialised, kept protocol-witness calls for `*` and the `erf`/`exp`
    // approximations in every element (GELU 1.2 s of a 6.2 s ViT step; measured with
    // `bench step --encoder vit`, sampled with gdb). Eight elements a vector: left to the loop
    // vectoriser, GELU stayed scalar (it paired `erf`'s two polynomials in one `xmm` register
    // instead) and took 30 % of a planner solve (`perf record … plan bench`). The vector
    // functions do the scalar ones' operations in the same order, so every element has the
    // same bits whichever path it takes.
    public static func activation(_ kind: SmoothActivation, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                                  count: Int) {
        let vectors = count / 8 * 8
        switch kind {
        case .gelu:
            for i in stride(from: 0, to: vectors, by: 8) {
                let v = Winograd.load(x + i)
                Winograd.store(v * 0.5 * (1 + rationalErf(v * 0.70710678118654752)), y + i)
            }
            for i in vectors..<count { let v = x[i]; y[i] = v * 0.5 * (1 + rationalErf(v * 0.70710678118654752)) }
        case .silu:
            for i in stride(from: 0, to: vectors, by: 8) {
                let v = Winograd.load(x + i)
                Winograd.store(v / (1 + polynomialExp(-v)), y + i)
            }
            for i in vectors..<count { let v = x[i]; y[i] = v / (1 + polynomialExp(-v)) }
        }
    }

    public static func activationGradient(_ kind: SmoothActivation, _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                                          into dx: UnsafeMutablePointer<Float>, count: Int) {
        let vectors = count / 8 * 8
        switch kind {
        case .gelu:
            for i in stride(from: 0, to: vectors, by: 8) {
                let v = Winograd.load(x + i)
                Winograd.store(Winograd.load(dy + i) * ((1 + rationalErf(v * 0.70710678118654752)) * 0.5
                                                + v * polynomialExp(-0.5 * v * v) * 0.39894228040143268), dx + i)
            }
            for i in vectors..<count {
                let v = x[i]
                dx[i] = dy[i] * ((1 + rationalErf(v * 0.70710678118654752)) * 0.5
                                 + v * polynomialExp(-0.5 * v * v) * 0.39894228040143268)
            }
        case .silu:
            for i in stride(from: 0, to: vectors, by: 8) {
                let v = Winograd.load(x + i), sigmoid = 1 / (1 + polynomialExp(-v))
                Winograd.store(Winograd.load(dy + i) * (sigmoid * (1 + v * (1 - sigmoid))), dx + i)
            }
            for i in vectors..<count {
                let v = x[i], sigmoid = 1 / (1 + polynomialExp(-v))
                dx[i] = dy[i] * (sigmoid * (1 + v * (1 - sigmoid)))
            }
        }
    }

    /// `erf(x)` in single precision by Eigen's rational approximation (`generic_fast_erf_float`):
    /// odd degree-13 over even degree-8 polynomials on `x` clamped to `[−4, 4]` (beyond which
    /// `erf` rounds to ±1), 12 multiply-adds and a division instead of a libm call per element.
    /// Largest absolute error against `erf` in double precision: 4.2e-7 (at x ≈ −3.3, where
    /// `1 + erf(x)` is 6e-6); 2.6e-7 for |x| < 2.
    @inline(__always)
    public static func rationalErf(_ value: Float) -> Float {
        let x = Swift.min(4, Swift.max(-4, value)), x2 = x * x
        var p: Float = -2.72614225801306e-10
        p = p * x2 + 2.77068142495902e-08
        p = p * x2 - 2.10102402082508e-06
        p = p * x2 - 5.69250639462346e-05
        p = p * x2 - 7.34990630326855e-04
        p = p * x2 - 2.95459980854025e-03
        p = p * x2 - 1.60960333262415e-02
        var q: Float = -1.45660718464996e-05
        q = q * x2 - 2.13374055278905e-04
        q = q * x2 - 1.68282697438203e-03
        q = q * x2 - 7.37332916720468e-03
        q = q * x2 - 1.42647390514189e-02
        return x * p / q
    }

    /// `exp(x)` in single precision by Cephes' `expf`: `x = n ln 2 + r` (ln 2 in two parts),
    /// a degree-5 polynomial for `e^r − 1 − r`, and `2^n` from the exponent bits. Relative error
    /// under 1 ulp (8.1e-8) on the clamped range `[−87, 88]`; below it the result stays
    /// `e^−87` ≈ 1.6e-38 rather than going subnormal, which no activation or softmax notices.
    ///
    /// `n` is rounded by adding 1.5 · 2²³ (the sum's low mantissa bits then hold `n`), not by
    /// `rounded(.down)` and `Int32(_:)`: baseline x86-64 has no vector `floor` (a libm call per
    /// element) and the checked conversion branches, and either keeps the loop scalar — the GELU
    /// derivative ran 5× slower that way (408 against 79 ms on 19.7 M elements, one thread).
    @inlinable @inline(__always)
    public static func polynomialExp(_ value: Float) -> Float {
        let x = Swift.min(88, Swift.max(-87, value))
        let shifted = x * 1.44269504088896341 + 12_582_912
        let n = shifted - 12_582_912
        let r = x - n * 0.693359375 - n * -2.12194440e-4
        var y: Float = 1.9875691500e-4
        y = y * r + 1.3981999507e-3
        y = y * r + 8.3334519073e-3
        y = y * r + 4.1665795894e-2
        y = y * r + 1.6666665459e-1
        y = y * r + 5.0000001201e-1
        y = y * (r * r) + r + 1
        return y * Float(bitPattern: (shifted.bitPattern &- 0x4B40_0000 &+ 127) &<< 23)
    }

    /// ``rationalErf(_:)`` on eight lanes: the same operations in the same order. (Written out
    /// again rather than generic over `Float` and `SIMD8<Float>`: the operators a shared
    /// protocol adds to `SIMD8` made the type checker give up on `Winograd`'s expressions.)
    @inline(__always)
    public static func rationalErf(_ value: SIMD8<Float>) -> SIMD8<Float> {
        // `Swift.min(4, Swift.max(-4, value))` lane by lane (NaN included).
        var x = SIMD8<Float>(repeating: -4).replacing(with: value, where: value .>= -4)
        x = SIMD8<Float>(repeating: 4).replacing(with: x, where: x .< 4)
        let x2 = x * x
        var p = SIMD8<Float>(repeating: -2.72614225801306e-10)
        p = p * x2 + 2.77068142495902e-08
        p = p * x2 - 2.10102402082508e-06
        p = p * x2 - 5.69250639462346e-05
        p = p * x2 - 7.34990630326855e-04
        p = p * x2 - 2.95459980854025e-03
        p = p * x2 - 1.60960333262415e-02
        var q = SIMD8<Float>(repeating: -1.45660718464996e-05)
        q = q * x2 - 2.13374055278905e-04
        q = q * x2 - 1.68282697438203e-03
        q = q * x2 - 7.37332916720468e-03
        q = q * x2 - 1.42647390514189e-02
        return x * p / q
    }

    /// ``polynomialExp(_:)`` on eight lanes: the same operations in the same order.
    @inline(__always)
    public static func polynomialExp(_ value: SIMD8<Float>) -> SIMD8<Float> {
        var x = SIMD8<Float>(repeating: -87).replacing(with: value, where: value .>= -87)
        x = SIMD8<Float>(repeating: 88).replacing(with: x, where: x .< 88)
        let shifted = x * 1.44269504088896341 + 12_582_912
        let n = shifted - 12_582_912
        let r = x - n * 0.693359375 - n * -2.12194440e-4
        var y = SIMD8<Float>(repeating: 1.9875691500e-4)
        y = y * r + 1.3981999507e-3
        y = y * r + 8.3334519073e-3
        y = y * r + 4.1665795894e-2
        y = y * r + 1.6666665459e-1
        y = y * r + 5.0000001201e-1
        y = y * (r * r) + r + 1
        let bits = (unsafeBitCast(shifted, to: SIMD8<UInt32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        return y * unsafeBitCast(bits, to: SIMD8<Float>.self)
    }
}

extension Double: LayerScalar {
    @inline(__always) public static func activationErf(_ x: Double) -> Double { Double.erf(x) }
    @inline(__always) public static func activationExp(_ x: Double) -> Double { Double.exp(x) }

    public static func activation(_ kind: SmoothActivation, _ x: UnsafePointer<Double>, into y: UnsafeMutablePointer<Double>,
                                  count: Int) {
        SmoothActivation.forward(kind, x, into: y, count: count)
    }

    public static func activationGradient(_ kind: SmoothActivation, _ x: UnsafePointer<Double>, _ dy: UnsafePointer<Double>,
                                          into dx: UnsafeMutablePointer<Double>, count: Int) {
        SmoothActivation.backward(kind, x, dy, into: dx, count: count)
    }
}

// MARK: - Context

/// What a forward or backward pass needs besides its tensors.
///
/// ## Activation slots
/// A self-supervised step passes two (or more) views of the same images through the same
/// network, and each view's batch norm sees the statistics of its own view (as in the VICReg and
/// Barlow Twins reference code, where each view goes through the backbone separately). Every
/// layer therefore keeps one set of activation buffers and backward caches per *slot*, selected
/// by `slot`: forward view 0 in slot 0 and view 1 in slot 1, then call backward with the same
/// slots, in any order. Parameter gradients of the slots add up (`+=`) in the store, so the
/// gradient of the step is that of the sum of both views' losses. A slot's buffers are allocated
/// on its first use and again only when its batch size changes.
public struct LayerContext: Sendable {
    /// Training mode: batch norm uses (and updates) batch statistics; evaluation mode uses the
    /// running statistics.
    public var training: Bool
    /// The ranks that share the global batch; batch norm makes its statistics global through it.
    public var communicator: any Communicator
    /// The activation slot (usually the view index), `0, 1, …`.
    public var slot: Int
    /// Whether `backward` must return the gradient with respect to the input (default true).
    /// A trainer sets it to false for the whole network: containers keep it false only for their
    /// first layer, and a first `Linear` or `Conv2d` then skips its input-gradient product (for
    /// MNIST's first layer, `2·B·784·1024` FLOPs a view) and returns an empty tensor.
    public var needsInputGradient: Bool
    /// The number of equal, consecutive row groups of the batch that each take batch
    /// statistics of their own (default 1). Several views of the same shape stacked into one
    /// batch (`G · n` rows) go through the network in one pass — one matrix product per layer
    /// with `G` times the rows — while batch norm normalises each view by its own statistics,
    /// group after group, exactly as `G` passes on `G` slots would.
    public var rowGroups: Int
    /// The index in the global batch of this rank's first row (default 0). Layers that draw
    /// random numbers per row (``Dropout``) key them by the *global* row, `globalRowOffset + r`
    /// for local row `r` (of each row group), so that N ranks draw what one process draws on the
    /// whole batch.
    public var globalRowOffset: Int
    /// The run's seed for random layers (default 0); with ``step`` and the global row it keys
    /// every draw.
    public var seed: UInt64
    /// The training step (default 0): a dropout mask differs from step to step.
    public var step: Int

    public init(training: Bool, communicator: any Communicator = SingleProcessCommunicator(), slot: Int = 0,
                needsInputGradient: Bool = true, rowGroups: Int = 1,
                globalRowOffset: Int = 0, seed: UInt64 = 0, step: Int = 0) {
        precondition(slot >= 0, "negative activation slot \(slot)")
        precondition(rowGroups >= 1, "\(rowGroups) row groups")
        precondition(globalRowOffset >= 0, "negative global row offset \(globalRowOffset)")
        self.training = training
        self.communicator = communicator
        self.slot = slot
        self.needsInputGradient = needsInputGradient
        self.rowGroups = rowGroups
        self.globalRowOffset = globalRowOffset
        self.seed = seed
        self.step = step
    }

    /// The same context on another activation slot.
    public func slot(_ slot: Int) -> LayerContext {
        var copy = self
        copy.slot = slot
        return copy
    }

    /// The same context with the batch in `groups` row groups (see ``rowGroups``).
    public func groupingRows(_ groups: Int) -> LayerContext {
        precondition(groups >= 1, "\(groups) row groups")
        var copy = self
        copy.rowGroups = groups
        return copy
    }

    /// The same context with ``needsInputGradient`` set to `needed`.
    public func needingInputGradient(_ needed: Bool) -> LayerContext {
        var copy = self
        copy.needsInputGradient = needed
        return copy
    }
}

// MARK: - Layer

/// A layer of a network: a forward/backward pair on buffers it owns.
///
/// Life cycle: declare parameters with ``parameterSpecs()`` (and non-trainable state such as
/// batch norm's running statistics with ``bufferSpecs()``), allocate them in a
/// ``ParameterStore`` (see ``Model``), ``bind(parameters:buffers:prefix:)`` once, then alternate
/// ``forward(_:context:)`` and ``backward(_:context:)``.
///
/// Conventions (llm.c):
/// - `forward` returns a view of the layer's own output buffer, valid until the next forward
///   on the same slot. It keeps a reference to its input (no copy) for the backward pass: the
///   caller must not overwrite the input before `backward` of that slot.
/// - `backward` takes the gradient of the loss with respect to the output of the last forward
///   on the same slot, returns the gradient with respect to its input (a view of its own
///   buffer) and *accumulates* (`+=`) the parameter gradients into the store's gradient views;
///   the caller zeroes them once per step (``ParameterStore/zeroGradients()``).
/// - Parameter gradients are this rank's contribution; the trainer all-reduces them with a sum.
/// - No tensor storage is allocated once a slot is warmed up at a fixed batch size.
public protocol Layer<Scalar>: AnyObject {
    associatedtype Scalar: LayerScalar

    /// The trainable parameters, named relative to the layer (`weight`, `bias`; containers
    /// prefix their children's names with `0.`, `1.`, …).
    func parameterSpecs() -> [ParameterSpec]
    /// The non-trainable state saved in checkpoints (PyTorch's buffers: `running_mean`, …),
    /// named like the parameters. Empty for most layers.
    func bufferSpecs() -> [ParameterSpec]
    /// Takes the views of this layer's parameters, gradients and buffers, named `prefix.name`.
    func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String)
    /// The output for `input`; see the type's discussion for the conventions.
    func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar>
    /// The input gradient for `outputGradient`; accumulates the parameter gradients.
    func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar>
}

extension Layer {
    public func bufferSpecs() -> [ParameterSpec] { [] }
}

/// A layer without parameters or buffers (activations, pooling, reshaping): nothing to declare
/// and nothing to bind.
public protocol ParameterFreeLayer: Layer {}

extension ParameterFreeLayer {
    public func parameterSpecs() -> [ParameterSpec] { [] }
    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {}
}

/// `prefix.name`, or `name` when `prefix` is empty.
@inlinable
public func qualifiedName(_ prefix: String, _ name: String) -> String {
    prefix.isEmpty ? name : "\(prefix).\(name)"
}

// MARK: - Errors

/// A misuse of a layer that the caller can report (shapes, order of calls).
public enum LayerError: Error, CustomStringConvertible, Equatable {
    /// The input's shape does not fit the layer.
    case shapeMismatch(layer: String, expected: String, got: [Int])
    /// `forward` or `backward` before `bind`.
    case unbound(layer: String)
    /// `backward` on a slot without a preceding `forward`, or with a gradient whose shape is not
    /// that of the slot's output.
    case noForward(layer: String, slot: Int)
    /// Batch norm in training mode over a global batch with fewer than 2 values per channel.
    case batchTooSmall(layer: String, count: Int)

    public var description: String {
        switch self {
        case let .shapeMismatch(layer, expected, got): return "\(layer): expected input \(expected), got \(got)"
        case let .unbound(layer): return "\(layer): used before bind(parameters:buffers:prefix:)"
        case let .noForward(layer, slot):
            return "\(layer): backward on slot \(slot) does not follow a forward of that slot with the gradient's shape"
        case let .batchTooSmall(layer, count):
            return "\(layer): training needs more than 1 value per channel over the global batch, got \(count)"
        }
    }
}

// MARK: - Activation buffers

/// One activation cache per slot, created on first use.
struct SlotCaches<Cache: AnyObject> {
    private var caches: [Cache?] = []

    /// The cache of `slot`, made by `make` on first use.
    mutating func cache(_ slot: Int, make: () -> Cache) -> Cache {
        if slot >= caches.count { caches.append(contentsOf: repeatElement(nil, count: slot + 1 - caches.count)) }
        if let cache = caches[slot] { return cache }
        let cache = make()
        caches[slot] = cache
        return cache
    }

    /// The cache of `slot` if a forward created it.
    func existing(_ slot: Int) -> Cache? { slot < caches.count ? caches[slot] : nil }
}

/// `buffer` if it already has `shape`, else a new zero tensor stored in `buffer`: the only place
/// activation storage is allocated (first step, or a change of batch size).
@inline(__always)
func reuse<Scalar: TensorScalar>(_ buffer: inout Tensor<Scalar>?, shape: [Int]) -> Tensor<Scalar> {
    if let existing = buffer, existing.shape == shape { return existing }
    let fresh = Tensor<Scalar>(zeros: shape)
    buffer = fresh
    return fresh
}

/// Adds `values` (accumulated in `Double`) to the elements of `tensor`.
@inline(__always)
func accumulate<Scalar: TensorScalar>(_ values: [Double], into tensor: Tensor<Scalar>) {
    tensor.withUnsafeMutableBufferPointer { g in
        for i in g.indices { g[i] += Scalar(values[i]) }
    }
}

/// `result = a + b` element-wise (same counts): a residual sum into a layer's own buffer.
@inline(__always)
func sum<Scalar: TensorScalar>(_ a: Tensor<Scalar>, _ b: Tensor<Scalar>, into result: Tensor<Scalar>) {
    precondition(a.count == result.count && b.count == result.count, "sum of \(a.shape) and \(b.shape) into \(result.shape)")
    a.withUnsafeBufferPointer { a in
        b.withUnsafeBufferPointer { b in
            result.withUnsafeMutableBufferPointer { y in for i in y.indices { y[i] = a[i] + b[i] } }
        }
    }
}
