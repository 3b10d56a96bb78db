import Tensor

/// A self-supervised model: `encoder` (the backbone, whose output is the representation),
/// `projector` (whose output is the embedding the loss sees) and an optional `predictor`
/// (BYOL/SimSiam), with all parameters in one ``ParameterStore`` and all running statistics in
/// another.
///
/// Parameter names are hierarchical and stable — they are the checkpoint keys:
/// `encoder.0.weight`, `encoder.1.running_mean`, `encoder.4.body.0.weight`,
/// `projector.2.bias`, … (part, index in the part's ``Sequential``, then the layer's own names).
///
/// Every rank builds bit-identical parameters from the seed, without a broadcast: each
/// parameter is drawn from the counter-based stream named by its full name.
///
/// Two views per step: run `forward` and `backward` with the view's index as
/// ``LayerContext/slot`` (see ``LayerContext``); each slot has its own activations and batch
/// statistics, and the parameter gradients of both views add up.
public final class Model<Scalar: LayerScalar> {
    /// What a forward pass returns: views of the parts' output buffers, valid until the next
    /// forward of the same slot.
    public struct Output {
        /// The encoder's output `(B, representation width)`.
        public var representation: Tensor<Scalar>
        /// The projector's output `(B, embedding width)` (the representation without a projector).
        public var embedding: Tensor<Scalar>
        /// The predictor's output, if the model has a predictor.
        public var prediction: Tensor<Scalar>?

        /// The last part's output, whose gradient ``Model/backward(_:context:)`` takes.
        public var last: Tensor<Scalar> { prediction ?? embedding }
    }

    public let description: ModelDescription
    public let encoder: Sequential<Scalar>
    public let projector: Sequential<Scalar>?
    public let predictor: Sequential<Scalar>?
    /// Every trainable parameter and its gradient.
    public let parameters: ParameterStore<Scalar>
    /// The non-trainable state (batch norm's `running_mean`, `running_var`), PyTorch's buffers.
    /// Stored in a ``ParameterStore`` of its own so checkpoints save it like the parameters;
    /// its `gradients` are unused and optimizers never see it.
    public let buffers: BufferStore<Scalar>

    /// Builds the model of `description` with parameters initialised from `seed`.
    /// - Throws: ``ModelDescriptionError`` when the description is not valid.
    public init(_ description: ModelDescription, seed: UInt64) throws {
        try description.validate()
        self.description = description
        encoder = description.encoder.makeNetwork()
        projector = description.projector?.makeNetwork()
        predictor = description.predictor?.makeNetwork()
        let parts = [("encoder", encoder as Sequential?), ("projector", projector), ("predictor", predictor)]
            .compactMap { name, part in part.map { (name, $0) } }
        parameters = ParameterStore(specs: parts.flatMap { name, part in part.parameterSpecs().map { $0.prefixed(name) } },
                                    seed: seed)
        buffers = BufferStore(specs: parts.flatMap { name, part in part.bufferSpecs().map { $0.prefixed(name) } },
                                 seed: seed)
        for (name, part) in parts { part.bind(parameters: parameters, buffers: buffers, prefix: name) }
    }

    /// The forward pass of one view: `(B, …input) → representation → embedding [→ prediction]`.
    ///
    /// - Parameter input: `(B, …)` rows of ``NetworkDescription/inputShape``; flat rows
    ///   `(B, C·H·W)` are viewed as images `(B, C, H, W)` for convolutional encoders.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func forward(_ input: Tensor<Scalar>, context: LayerContext) throws -> Output {
        let sampleShape = description.encoder.inputShape
        guard input.rank >= 1, input.columnCount == sampleShape.reduce(1, *) else {
            throw LayerError.shapeMismatch(layer: "Model", expected: "(B, \(sampleShape))", got: input.shape)
        }
        let images = Array(input.shape.dropFirst()) == sampleShape ? input : input.reshaped([input.rowCount] + sampleShape)
        let representation = try encoder.forward(images, context: context)
        let embedding = try projector?.forward(representation, context: context) ?? representation
        let prediction = try predictor?.forward(embedding, context: context)
        return Output(representation: representation, embedding: embedding, prediction: prediction)
    }

    /// The backward pass of one view: takes the gradient of the last part's output
    /// (``Output/last``), accumulates every parameter gradient into `parameters.gradients` and
    /// returns the gradient with respect to the encoder's input `(B, C, H, W)` or `(B, D)`
    /// (an empty tensor when `context.needsInputGradient` is false, as for training).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func backward(_ outputGradient: Tensor<Scalar>, context: LayerContext) throws -> Tensor<Scalar> {
        var gradient = outputGradient
        let inner = context.needingInputGradient(true)
        if let predictor { gradient = try predictor.backward(gradient, context: inner) }
        if let projector { gradient = try projector.backward(gradient, context: inner) }
        return try encoder.backward(gradient, context: context)
    }
}
