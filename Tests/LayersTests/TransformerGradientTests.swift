import Layers
import XCTest
import _TestSupport

/// A ``ConditionedLayer`` as a unary ``Layer`` for ``GradientCheck``: the input `(B, T, C + A)`
/// packs the tokens and the conditions, and the input gradient packs both gradients, so the
/// check covers the condition's gradient too.
final class PackedConditionedLayer: Layer {
    typealias Scalar = Double
    let layer: any ConditionedLayer<Double>
    let features: Int, conditionFeatures: Int
    private var tokens: Tensor<Double>?, conditions: Tensor<Double>?, packedGradient: Tensor<Double>?

    init(_ layer: any ConditionedLayer<Double>, features: Int, conditionFeatures: Int) {
        self.layer = layer
        self.features = features
        self.conditionFeatures = conditionFeatures
    }

    func parameterSpecs() -> [ParameterSpec] { layer.parameterSpecs() }
    func bind(parameters: ParameterStore<Double>, buffers: BufferStore<Double>, prefix: String) {
        layer.bind(parameters: parameters, buffers: buffers, prefix: prefix)
    }

    /// Splits `(B, T, C + A)` into tokens `(B, T, C)` and conditions `(B, T, A)`.
    static func split(_ packed: Tensor<Double>, features: Int) -> (Tensor<Double>, Tensor<Double>) {
        let (B, T, width) = (packed.shape[0], packed.shape[1], packed.shape[2])
        let x = Tensor<Double>(zeros: [B, T, features]), c = Tensor<Double>(zeros: [B, T, width - features])
        for r in 0..<(B * T) {
            for j in 0..<width {
                if j < features { x[flat: r * features + j] = packed[flat: r * width + j] }
                else { c[flat: r * (width - features) + j - features] = packed[flat: r * width + j] }
            }
        }
        return (x, c)
    }

    func forward(_ input: Tensor<Double>, context: LayerContext) throws -> Tensor<Double> {
        let (x, c) = Self.split(input, features: features)
        (tokens, conditions) = (x, c)
        return try layer.forward(x, condition: c, context: context)
    }

    func backward(_ outputGradient: Tensor<Double>, context: LayerContext) throws -> Tensor<Double> {
        let (dx, dc) = try layer.backward(outputGradient, context: context)
        let (B, T) = (dx.shape[0], dx.shape[1]), width = features + conditionFeatures
        let packed = Tensor<Double>(zeros: [B, T, width])
        for r in 0..<(B * T) {
            for j in 0..<features { packed[flat: r * width + j] = dx[flat: r * features + j] }
            for j in 0..<conditionFeatures { packed[flat: r * width + features + j] = dc[flat: r * conditionFeatures + j] }
        }
        packedGradient = packed
        return packed
    }
}

/// Finite-difference checks (in `Double`) of the transformer layers, the ViT encoder and the
/// conditioned predictor stack.
final class TransformerGradientTests: XCTestCase {
    private let training = LayerContext(training: true)

    private func check(_ layer: any Layer<Double>, input shape: [Int], context: LayerContext? = nil, maximumCoordinates: Int = 40,
                       _ label: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let network = GradientCheck.network(layer)
        let input = randomTensor(shape, seed: 3, as: Double.self)
        let errors = try GradientCheck.errors(network, input: input, context: context ?? training,
                                              maximumCoordinates: maximumCoordinates)
        GradientCheck.assertSmall(errors, label, file: file, line: line)
    }

    func testLinearOnTheLastAxis() throws {
        try check(Linear<Double>(inFeatures: 5, outFeatures: 4), input: [2, 3, 5], "Linear (B, T, C)")
        try check(Linear<Double>(inFeatures: 5, outFeatures: 4, bias: false), input: [2, 3, 5], "Linear(bias: false) (B, T, C)")
        try check(Linear<Double>(inFeatures: 5, outFeatures: 4), input: [2, 2, 3, 5], "Linear (B, T, U, C)")
    }

    func testLinearShapes() throws {
        let layer = Linear<Double>(inFeatures: 4, outFeatures: 3)
        _ = GradientCheck.network(layer)
        XCTAssertEqual(try layer.forward(Tensor(zeros: [2, 5, 4]), context: training).shape, [2, 5, 3])
        XCTAssertEqual(try layer.forward(Tensor(zeros: [2, 4]), context: training).shape, [2, 3])
        // Rows of 4 elements that are not a last axis of 4: read as (B, C), as before.
        XCTAssertEqual(try layer.forward(Tensor(zeros: [2, 1, 2, 2]), context: training).shape, [2, 3])
    }

    func testAttention() throws {
        for causal in [false, true] {
            for bias in [true, false] {
                try check(MultiHeadAttention<Double>(features: 6, heads: 2, qkvBias: bias, causal: causal), input: [2, 4, 6],
                          "attention causal \(causal) bias \(bias)")
            }
        }
        try check(MultiHeadAttention<Double>(features: 4, heads: 3, headDimension: 2), input: [2, 3, 4], "attention H·D ≠ C")
        try check(MultiHeadAttention<Double>(features: 4, heads: 1, causal: true), input: [3, 1, 4], "attention one token")
    }

    func testCrossAttentionIncludingTheMemoryGradient() throws {
        try check(PackedConditionedLayer(CrossAttention<Double>(features: 6, memoryFeatures: 3, heads: 2), features: 6,
                                         conditionFeatures: 3),
                  input: [2, 4, 9], "CrossAttention")
        try check(PackedConditionedLayer(CrossAttention<Double>(features: 4, memoryFeatures: 4, heads: 2, headDimension: 3,
                                                                bias: false), features: 4, conditionFeatures: 4),
                  input: [2, 3, 8], "CrossAttention(bias: false, H·D ≠ C)")
    }

    func testEmbeddings() throws {
        try check(PatchEmbedding<Double>(inChannels: 2, patchSize: 2, embedDimension: 3), input: [2, 2, 4, 6], "PatchEmbedding")
        try check(PositionEmbedding<Double>(tokens: 4, embedDimension: 3, classToken: true), input: [2, 4, 3],
                  "PositionEmbedding with class token")
        try check(PositionEmbedding<Double>(tokens: 5, embedDimension: 3, classToken: false), input: [2, 3, 3],
                  "PositionEmbedding, 3 of 5 positions")
        try check(TokenPooling<Double>(.cls, prefixTokens: 1), input: [2, 4, 3], "TokenPooling(cls)")
        try check(TokenPooling<Double>(.mean, prefixTokens: 1), input: [2, 4, 3], "TokenPooling(mean)")
    }

    func testTransformerBlock() throws {
        try check(TransformerBlock<Double>(features: 6, heads: 2, mlpRatio: 2), input: [2, 3, 6], "TransformerBlock")
        try check(TransformerBlock<Double>(features: 6, heads: 3, mlpRatio: 1.5, causal: true, dropout: 0.3), input: [2, 3, 6],
                  "TransformerBlock causal, dropout")
    }

    func testDropoutWithItsFixedMask() throws {
        let context = LayerContext(training: true, globalRowOffset: 5, seed: 9, step: 2)
        try check(Dropout<Double>(probability: 0.4), input: [4, 3, 5], context: context, "Dropout")
        try check(SiLU<Double>(), input: [3, 4], "SiLU")
    }

    func testAdaLNZeroBlockIncludingTheConditionGradient() throws {
        for causal in [false, true] {
            let block = AdaLNZeroBlock<Double>(features: 6, conditionFeatures: 3, heads: 2, mlpRatio: 2, causal: causal)
            try check(PackedConditionedLayer(block, features: 6, conditionFeatures: 3), input: [2, 3, 9],
                      "AdaLNZeroBlock causal \(causal)")
        }
    }

    func testConditionedTransformer() throws {
        let stack = ConditionedTransformer<Double>(features: 4, conditionFeatures: 2, outputFeatures: 3, maxTokens: 5, depth: 2,
                                                   heads: 2, mlpRatio: 2)
        try check(PackedConditionedLayer(stack, features: 4, conditionFeatures: 2), input: [2, 4, 6], maximumCoordinates: 24,
                  "ConditionedTransformer")
    }

    func testViTModel() throws {
        for pooling in TokenPoolingMode.allCases {
            let description = ModelDescription(
                encoder: .vit(ViTDescription(inputChannels: 2, imageSize: 4, patchSize: 2, width: 6, depth: 2, heads: 2,
                                             mlpRatio: 2, pooling: pooling)),
                projector: .mlp(widths: [6, 5], batchNorm: false))
            let model = try Model<Double>(description, seed: 1)
            let errors = try GradientCheck.errors(GradientCheck.network(model), input: randomTensor([3, 32], seed: 2),
                                                  context: training, maximumCoordinates: 16)
            GradientCheck.assertSmall(errors, "ViT model, \(pooling) pooling")
        }
    }
}
