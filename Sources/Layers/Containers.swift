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

    public func bind(parameters: ParameterStore<Scalar>, buffers: ParameterStore<Scalar>, prefix: String) {
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

    public func bind(parameters: ParameterStore<Scalar>, buffers: ParameterStore<Scalar>, prefix: String) {
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
        let output = reuse(&cache.output, shape: bodyOutput.shape)
        output.copy(from: bodyOutput)
        output.add(skip)
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
        let inputGradient = reuse(&cache.inputGradient, shape: bodyGradient.shape)
        inputGradient.copy(from: bodyGradient)
        inputGradient.add(skipGradient)
        return inputGradient
    }
}
