import Tensor

/// Layers applied in order (PyTorch's `nn.Sequential`); layer `i`'s names are prefixed `i.`.
public final class Sequential<Scalar: LayerScalar>: Layer {
    /// The layers, in order.
    public let layers: [any Layer<Scalar>]

    public init(_ layers: [any Layer<Scalar>]) {
        self.layers = layers
    }

    public func parameterSpecs() -> [ParameterSpec] {
        layers.enumerated().flatMap { i, layer in layer.parameterSpecs().map { $0.prefixed("\(i)") } }
    }

    public func bufferSpecs() -> [ParameterSpec] {
        layers.enumerated().flatMap { i, layer in layer.bufferSpecs().map { $0.prefixed("\(i)") } }
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        for (i, layer) in layers.enumerated() {
            layer.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "\(i)"))
        }
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        var x = input
        for layer in layers { x = try layer.forward(x, context: context) }
        return x
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        var gradient = outputGradient
        let inner = context.needingInputGradient(true)
        for (index, layer) in layers.enumerated().reversed() {
            gradient = try layer.backward(gradient, context: index == 0 ? context : inner)
        }
        return gradient
    }
}

/// Layers applied in order under fixed names — PyTorch's `nn.Sequential(OrderedDict(…))` or a
/// module's named children (`fc1`, `act`, `fc2`; `patch_embed`, `blocks.0`, …): a ``Sequential``
/// whose parameter names are module names rather than indices. An empty name puts the child's
/// parameters directly under the parent (`cls_token`).
public final class NamedSequential<Scalar: LayerScalar>: Layer {
    /// The children, in order.
    public let children: [(name: String, layer: any Layer<Scalar>)]

    public init(_ children: [(String, any Layer<Scalar>)]) {
        self.children = children.map { (name: $0.0, layer: $0.1) }
    }

    public func parameterSpecs() -> [ParameterSpec] {
        children.flatMap { child in child.layer.parameterSpecs().map { $0.prefixed(child.name) } }
    }

    public func bufferSpecs() -> [ParameterSpec] {
        children.flatMap { child in child.layer.bufferSpecs().map { $0.prefixed(child.name) } }
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        for child in children {
            child.layer.bind(parameters: parameters, buffers: buffers,
                             prefix: child.name.isEmpty ? prefix : qualifiedName(prefix, child.name))
        }
    }

    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        var x = input
        for child in children { x = try child.layer.forward(x, context: context) }
        return x
    }

    /// Backward through the children in reverse; only the first sees the caller's
    /// ``LayerContext/needsInputGradient``.
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        var gradient = outputGradient
        let inner = context.needingInputGradient(true)
        for (index, child) in children.enumerated().reversed() {
            gradient = try child.layer.backward(gradient, context: index == 0 ? context : inner)
        }
        return gradient
    }
}

/// A layer that is a fixed ``NamedSequential`` of children (``FeedForward``,
/// ``VisionTransformer``): its parameters, forward and backward are the sequence's.
public protocol NamedSequentialLayer: Layer {
    /// The children, in order.
    var sequence: NamedSequential<Scalar> { get }
}

extension NamedSequentialLayer {
    public func parameterSpecs() -> [ParameterSpec] { sequence.parameterSpecs() }
    public func bufferSpecs() -> [ParameterSpec] { sequence.bufferSpecs() }
    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        sequence.bind(parameters: parameters, buffers: buffers, prefix: prefix)
    }
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        try sequence.forward(input, context: context)
    }
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        try sequence.backward(outputGradient, context: context)
    }
}

/// A residual connection, `y = body(x) + shortcut(x)`, with the identity as the default
/// shortcut (the sum of a ResNet basic block, before its last ReLU). Names: `body.i.…`,
/// `shortcut.i.…`.
public final class Residual<Scalar: LayerScalar>: Layer {
    public let body: Sequential<Scalar>
    /// The projection of the input when the body changes its shape (1×1 conv + batch norm);
    /// `nil` for the identity.
    public let shortcut: Sequential<Scalar>?

    private final class Cache {
        var output: Tensor<Scalar>?         // (B, …) body's output shape
        var inputGradient: Tensor<Scalar>?  // (B, …) input shape
    }
    private var caches = SlotCaches<Cache>()

    public init(body: Sequential<Scalar>, shortcut: Sequential<Scalar>? = nil) {
        self.body = body
        self.shortcut = shortcut
    }

    public func parameterSpecs() -> [ParameterSpec] {
        body.parameterSpecs().map { $0.prefixed("body") } + (shortcut?.parameterSpecs().map { $0.prefixed("shortcut") } ?? [])
    }

    public func bufferSpecs() -> [ParameterSpec] {
        body.bufferSpecs().map { $0.prefixed("body") } + (shortcut?.bufferSpecs().map { $0.prefixed("shortcut") } ?? [])
    }

    public func bind(parameters: ParameterStore<Scalar>, buffers: BufferStore<Scalar>, prefix: String) {
        body.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "body"))
        shortcut?.bind(parameters: parameters, buffers: buffers, prefix: qualifiedName(prefix, "shortcut"))
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        let cache = caches.cache(context.slot, make: Cache.init)
        let bodyOutput = try body.forward(input, context: context)
        let skip = try shortcut?.forward(input, context: context) ?? input
        guard skip.shape == bodyOutput.shape else {
            throw LayerError.shapeMismatch(layer: "Residual", expected: "shortcut output \(bodyOutput.shape)", got: skip.shape)
        }
        // y = body(x) + shortcut(x)
        let started = LayerProfile.shared.now()
        let output = reuse(&cache.output, shape: bodyOutput.shape)
        sum(bodyOutput, skip, into: output)
        LayerProfile.shared.add(.elementwise, since: started)
        return output
    }

    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        guard let cache = caches.existing(context.slot), let output = cache.output, output.count == outputGradient.count
        else { throw LayerError.noForward(layer: "Residual", slot: context.slot) }
        // dx = body'ᵀ dy + shortcut'ᵀ dy
        let context = context.needingInputGradient(true)
        let bodyGradient = try body.backward(outputGradient, context: context)
        let skipGradient = try shortcut?.backward(outputGradient, context: context) ?? outputGradient
        let started = LayerProfile.shared.now()
        let inputGradient = reuse(&cache.inputGradient, shape: bodyGradient.shape)
        sum(bodyGradient, skipGradient, into: inputGradient)
        LayerProfile.shared.add(.elementwise, since: started)
        return inputGradient
    }
}
