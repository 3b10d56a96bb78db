import Tensor

/// What a parameter is, for the optimizer: weight decay and LARS adaptation apply to weights
/// only; biases and normalisation parameters are excluded (as in the VICReg and Barlow Twins
/// reference code).
public enum ParameterRole: String, Sendable, CaseIterable {
    case weight, bias, normalization
}

/// How a parameter is initialised. Draws come from `CounterRandom(seed:, streamName:)` keyed by
/// the parameter's full name, so every rank builds identical parameters without a broadcast.
public enum ParameterInitializer: Sendable, Equatable {
    case zeros
    case ones
    /// Uniform in ±`bound`.
    case uniform(bound: Double)
    /// Normal with standard deviation `std`.
    case normal(std: Double)
    /// Kaiming (He) uniform for ReLU: bound `sqrt(6 / fanIn)`.
    case kaimingUniform(fanIn: Int)
    /// Kaiming normal for ReLU: std `sqrt(2 / fanIn)`.
    case kaimingNormal(fanIn: Int)
    /// Xavier (Glorot) uniform: bound `sqrt(6 / (fanIn + fanOut))`.
    case xavierUniform(fanIn: Int, fanOut: Int)
    /// PyTorch's default for `nn.Linear` and `nn.Conv2d` weights and biases: uniform in ±`1/sqrt(fanIn)`.
    case pytorchDefault(fanIn: Int)

    /// Fills `tensor` with this initialisation from `generator`.
    public func fill<Scalar: TensorScalar>(_ tensor: Tensor<Scalar>, generator: CounterRandom) {
        switch self {
        case .zeros: tensor.fill(0)
        case .ones: tensor.fill(1)
        case let .uniform(bound): generator.fillUniform(tensor, low: -bound, high: bound)
        case let .normal(std): generator.fillNormal(tensor, standardDeviation: std)
        case let .kaimingUniform(fanIn):
            let bound = (6.0 / Double(max(fanIn, 1))).squareRoot()
            generator.fillUniform(tensor, low: -bound, high: bound)
        case let .kaimingNormal(fanIn):
            generator.fillNormal(tensor, standardDeviation: (2.0 / Double(max(fanIn, 1))).squareRoot())
        case let .xavierUniform(fanIn, fanOut):
            let bound = (6.0 / Double(max(fanIn + fanOut, 1))).squareRoot()
            generator.fillUniform(tensor, low: -bound, high: bound)
        case let .pytorchDefault(fanIn):
            let bound = 1 / Double(max(fanIn, 1)).squareRoot()
            generator.fillUniform(tensor, low: -bound, high: bound)
        }
    }
}

/// The declaration of one parameter before storage exists.
public struct ParameterSpec: Sendable, Equatable {
    /// The stable hierarchical name, e.g. `encoder.0.weight` — the checkpoint key.
    public var name: String
    public var shape: [Int]
    public var role: ParameterRole
    public var initializer: ParameterInitializer

    public init(name: String, shape: [Int], role: ParameterRole, initializer: ParameterInitializer) {
        self.name = name
        self.shape = shape
        self.role = role
        self.initializer = initializer
    }

    /// The same parameter under `prefix.` (for composing modules).
    public func prefixed(_ prefix: String) -> ParameterSpec {
        var copy = self
        copy.name = prefix.isEmpty ? name : "\(prefix).\(name)"
        return copy
    }
}

/// Where each named tensor of a store lies in its flat buffers: the entries in declaration
/// order, with a name index. ``ParameterStore`` and ``BufferStore`` share it, and optimizer slots
/// use it too.
public struct TensorLayout: Sendable {
    /// One tensor's place in the buffers.
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let shape: [Int]
        public let role: ParameterRole
        /// The first element in the flat buffers.
        public let offset: Int
        /// The number of elements.
        public var count: Int { shape.reduce(1, *) }
    }

    /// The tensors in declaration order.
    public let entries: [Entry]
    /// The number of scalars over all tensors.
    public let count: Int
    private let index: [String: Int]

    /// The layout of `specs`, one after the other.
    public init(specs: [ParameterSpec]) {
        var entries: [Entry] = []
        var index: [String: Int] = [:]
        var offset = 0
        for spec in specs {
            precondition(index[spec.name] == nil, "duplicate parameter name \(spec.name)")
            index[spec.name] = entries.count
            entries.append(Entry(name: spec.name, shape: spec.shape, role: spec.role, offset: offset))
            offset += spec.shape.reduce(1, *)
        }
        self.entries = entries
        self.index = index
        count = offset
    }

    /// The entry named `name`, if any.
    public func entry(named name: String) -> Entry? { index[name].map { entries[$0] } }

    /// A flat buffer of this layout holding the initial values of `specs` (the specs of this
    /// layout): each tensor draws from the stream named by its full name, so the result
    /// depends neither on rank nor on declaration order.
    func initialValues<Scalar: TensorScalar>(_ specs: [ParameterSpec], seed: UInt64) -> Tensor<Scalar> {
        let values = Tensor<Scalar>(zeros: [count])
        for (spec, entry) in zip(specs, entries) {
            spec.initializer.fill(view(of: values, entry), generator: CounterRandom(seed: seed, streamName: spec.name))
        }
        return values
    }

    /// The view of `entry` in a flat buffer of this layout.
    public func view<Scalar: TensorScalar>(of buffer: Tensor<Scalar>, _ entry: Entry) -> Tensor<Scalar> {
        precondition(buffer.count == count, "buffer of \(buffer.count) is not in this layout of \(count)")
        return buffer.reshaped([count]).rows(entry.offset..<(entry.offset + entry.count)).reshaped(entry.shape)
    }
}

/// Named tensors in one flat buffer: the parameters of a model (``ParameterStore``) or its
/// running statistics (``BufferStore``). Checkpoints, export and the finiteness check read
/// either through this protocol.
public protocol NamedTensorStore<Scalar>: AnyObject, Sendable {
    associatedtype Scalar: TensorScalar
    /// Where each tensor lies in ``values``.
    var layout: TensorLayout { get }
    /// Every tensor, flat.
    var values: Tensor<Scalar> { get }
}

extension NamedTensorStore {
    /// The tensors in declaration order.
    public var entries: [TensorLayout.Entry] { layout.entries }
    /// The number of scalars over all tensors.
    public var count: Int { layout.count }
    /// The entry named `name`, if any.
    public func entry(named name: String) -> TensorLayout.Entry? { layout.entry(named: name) }

    /// The view of tensor `name`.
    public func value(_ name: String) -> Tensor<Scalar> {
        guard let entry = entry(named: name) else { preconditionFailure("no tensor named \(name)") }
        return layout.view(of: values, entry)
    }

    /// The view of `entry` in a flat buffer of this layout (values, gradients or an optimizer slot).
    public func view(of buffer: Tensor<Scalar>, _ entry: TensorLayout.Entry) -> Tensor<Scalar> {
        layout.view(of: buffer, entry)
    }
}

/// All parameters of a model in one contiguous buffer, their gradients in a second buffer of
/// the same layout (so a data-parallel step all-reduces every gradient in one call), with a
/// named view of each.
///
/// Optimizer state uses the same layout: a slot of the optimizer is one more buffer of
/// `count` elements, and `entries` tell which range belongs to which parameter.
public final class ParameterStore<Scalar: TensorScalar>: NamedTensorStore, @unchecked Sendable {
    public typealias Entry = TensorLayout.Entry

    public let layout: TensorLayout
    /// Every parameter, flat.
    public let values: Tensor<Scalar>
    /// Every gradient, flat, in the layout of `values`.
    public let gradients: Tensor<Scalar>

    /// Allocates and initialises the parameters of `specs`.
    ///
    /// - Parameter seed: keys the initialisation; each parameter draws from the stream named
    ///   by its full name, so the result depends neither on rank nor on declaration order.
    public init(specs: [ParameterSpec], seed: UInt64) {
        layout = TensorLayout(specs: specs)
        values = layout.initialValues(specs, seed: seed)
        gradients = Tensor(zeros: [layout.count])
    }

    /// The view of the gradient of parameter `name`.
    public func gradient(_ name: String) -> Tensor<Scalar> {
        guard let entry = entry(named: name) else { preconditionFailure("no parameter named \(name)") }
        return view(of: gradients, entry)
    }

    /// The views of the value and the gradient of parameter `name` of the layer at `prefix`:
    /// what a layer takes in ``Layer/bind(parameters:buffers:prefix:)``.
    public func bound(_ prefix: String, _ name: String) -> (value: Tensor<Scalar>, gradient: Tensor<Scalar>) {
        let qualified = qualifiedName(prefix, name)
        guard let entry = entry(named: qualified) else { preconditionFailure("no parameter named \(qualified)") }
        return (view(of: values, entry), view(of: gradients, entry))
    }

    /// Sets every gradient to zero.
    public func zeroGradients() { gradients.fill(0) }
}

/// The non-trainable state of a model (PyTorch's buffers: batch norm's `running_mean` and
/// `running_var`) in one flat buffer, without gradients: layers update it in place during
/// training forwards, checkpoints save it beside the parameters, and neither the optimizer
/// nor the gradient all-reduce ever sees it.
public final class BufferStore<Scalar: TensorScalar>: NamedTensorStore, @unchecked Sendable {
    public let layout: TensorLayout
    /// Every buffer, flat.
    public let values: Tensor<Scalar>

    /// Allocates the buffers of `specs` with their initial values (`seed` keys random ones,
    /// as for parameters).
    public init(specs: [ParameterSpec], seed: UInt64 = 0) {
        layout = TensorLayout(specs: specs)
        values = layout.initialValues(specs, seed: seed)
    }

    /// A store with no buffers, for layers and tests that have none.
    public static var empty: BufferStore { BufferStore(specs: []) }
}
