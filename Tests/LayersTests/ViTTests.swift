import Foundation
import Layers
import XCTest
import _TestSupport

/// The ViT encoder and the transformer blocks: names, description, the identity at
/// initialisation, causality, shape errors, and N ranks reproducing one process.
final class ViTTests: XCTestCase {
    private let training = LayerContext(training: true)
    private let tiny = ViTDescription(inputChannels: 1, imageSize: 4, patchSize: 2, width: 8, depth: 2, heads: 2, mlpRatio: 2)

    /// A layer bound to freshly initialised parameters (the layer's own initialisation).
    private func bound<L: Layer>(_ layer: L) -> L {
        layer.bind(parameters: ParameterStore(specs: layer.parameterSpecs(), seed: 4), buffers: BufferStore.empty,
                   prefix: "")
        return layer
    }

    private func bound<L: ConditionedLayer>(_ layer: L) -> L {
        layer.bind(parameters: ParameterStore(specs: layer.parameterSpecs(), seed: 4), buffers: BufferStore.empty,
                   prefix: "")
        return layer
    }

    // MARK: Names and description

    func testParameterNamesFollowTimm() throws {
        let model = try Model<Float>(ModelDescription(encoder: .vit(tiny)), seed: 0)
        let names = model.parameters.entries.map(\.name)
        XCTAssertEqual(Array(names.prefix(4)), ["encoder.0.patch_embed.proj.weight", "encoder.0.patch_embed.proj.bias",
                                                "encoder.0.cls_token", "encoder.0.pos_embed"])
        for name in ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                     "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"] {
            XCTAssertTrue(names.contains("encoder.0.blocks.1.\(name)"), name)
        }
        XCTAssertEqual(Array(names.suffix(2)), ["encoder.0.norm.weight", "encoder.0.norm.bias"])
        XCTAssertEqual(model.parameters.entry(named: "encoder.0.patch_embed.proj.weight")?.shape, [8, 1, 2, 2])
        XCTAssertEqual(model.parameters.entry(named: "encoder.0.pos_embed")?.shape, [1, 5, 8])
        XCTAssertEqual(model.parameters.entry(named: "encoder.0.pos_embed")?.role, .bias)     // no weight decay, as timm
        XCTAssertEqual(model.parameters.entry(named: "encoder.0.cls_token")?.role, .bias)
        XCTAssertEqual(model.parameters.entry(named: "encoder.0.blocks.0.attn.qkv.weight")?.shape, [24, 8])
        XCTAssertEqual(model.parameters.entry(named: "encoder.0.blocks.0.mlp.fc1.weight")?.shape, [16, 8])
        var mean = tiny
        mean.pooling = .mean
        let meanNames = try Model<Float>(ModelDescription(encoder: .vit(mean)), seed: 0).parameters.entries.map(\.name)
        XCTAssertFalse(meanNames.contains("encoder.0.cls_token"))

        let block = AdaLNZeroBlock<Float>(features: 4, conditionFeatures: 3, heads: 2)
        XCTAssertEqual(block.parameterSpecs().map(\.name), [
            "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
            "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
            "adaLN_modulation.1.weight", "adaLN_modulation.1.bias",
        ])
        XCTAssertEqual(block.parameterSpecs().last?.shape, [24])
        let stack = ConditionedTransformer<Float>(features: 4, conditionFeatures: 3, maxTokens: 6, depth: 2, heads: 2)
        let stackNames = stack.parameterSpecs().map(\.name)
        XCTAssertEqual(stackNames.first, "pos_embed")
        XCTAssertTrue(stackNames.contains("blocks.1.adaLN_modulation.1.weight"))
        XCTAssertEqual(Array(stackNames.suffix(4)), ["norm.weight", "norm.bias", "head.weight", "head.bias"])
    }

    func testDescriptionCodingWithDefaults() throws {
        let json = """
        {"encoder": {"type": "vit", "inputChannels": 1, "imageSize": 28, "width": 32, "pooling": "mean"},
         "projector": {"type": "mlp", "widths": [32, 64], "lastBias": false}}
        """
        let description = try JSONDecoder().decode(ModelDescription.self, from: Data(json.utf8))
        XCTAssertEqual(description.encoder, .vit(ViTDescription(inputChannels: 1, imageSize: 28, width: 32, pooling: .mean)))
        XCTAssertEqual(description.encoder.inputShape, [1, 28, 28])
        XCTAssertEqual(description.encoder.outputFeatures, 32)
        let again = try JSONDecoder().decode(ModelDescription.self, from: JSONEncoder().encode(description))
        XCTAssertEqual(again, description)
        let model = try Model<Float>(description, seed: 0)
        XCTAssertEqual(try model.forward(Tensor(zeros: [2, 784]), context: training).representation.shape, [2, 32])
        XCTAssertEqual(try model.forward(Tensor(zeros: [2, 784]), context: training).embedding.shape, [2, 64])
    }

    func testInvalidViTDescriptionNamesTheKey() {
        func with(_ change: (inout ViTDescription) -> Void) -> ViTDescription {
            var description = tiny
            change(&description)
            return description
        }
        let cases: [(ViTDescription, String)] = [
            (with { $0.heads = 3 }, "encoder.heads"),
            (with { $0.patchSize = 3 }, "encoder.patchSize"),
            (with { $0.dropout = 1 }, "encoder.dropout"),
            (with { $0.depth = 0 }, "encoder.inputChannels/imageSize/patchSize/width/depth/heads"),
        ]
        for (description, key) in cases {
            XCTAssertThrowsError(try Model<Float>(ModelDescription(encoder: .vit(description)), seed: 0)) { error in
                XCTAssertEqual((error as? ModelDescriptionError)?.key, key)
            }
        }
    }

    // MARK: Behaviour

    func testZeroInitialisedAdaLNZeroBlockIsTheIdentity() throws {
        let block = bound(AdaLNZeroBlock<Double>(features: 6, conditionFeatures: 3, heads: 2, causal: true))
        let x = randomTensor([2, 5, 6], seed: 1, as: Double.self), c = randomTensor([2, 5, 3], seed: 2, as: Double.self)
        XCTAssertEqual(try block.forward(x, condition: c, context: training).scalars, x.scalars)
        // Its gradients at the identity: dx = dy, and only the modulation's gates learn.
        let dy = randomTensor([2, 5, 6], seed: 3, as: Double.self)
        let (dx, dc) = try block.backward(dy, context: training)
        XCTAssertEqual(dx.scalars, dy.scalars)
        XCTAssertEqual(dc.maxAbs(), 0)
    }

    func testCausalOutputDoesNotDependOnLaterTokens() throws {
        let attention = bound(MultiHeadAttention<Double>(features: 6, heads: 2, causal: true))
        let stack = ConditionedTransformer<Double>(features: 6, conditionFeatures: 2, maxTokens: 5, depth: 2, heads: 2)
        let parameters = ParameterStore<Double>(specs: stack.parameterSpecs(), seed: 4)
        stack.bind(parameters: parameters, buffers: BufferStore.empty, prefix: "")
        // Non-zero modulations, so that the conditions matter.
        CounterRandom(seed: 8, stream: 1).fillNormal(parameters.values, standardDeviation: 0.3)
        let (B, T) = (2, 5)
        let x = randomTensor([B, T, 6], seed: 1, as: Double.self), c = randomTensor([B, T, 2], seed: 2, as: Double.self)
        let attended = try attention.forward(x, context: training).copy()
        let predicted = try stack.forward(x, condition: c, context: training).copy()
        for later in 1..<T {
            let (x2, c2) = (x.copy(), c.copy())
            for b in 0..<B {
                for j in 0..<6 { x2[b, later, j] += 1 }
                for j in 0..<2 { c2[b, later, j] -= 1 }
            }
            let attended2 = try attention.forward(x2, context: training)
            let predicted2 = try stack.forward(x2, condition: c2, context: training)
            for b in 0..<B {
                for t in 0..<T {
                    let a = (0..<6).map { attended[b, t, $0] }, a2 = (0..<6).map { attended2[b, t, $0] }
                    let p = (0..<6).map { predicted[b, t, $0] }, p2 = (0..<6).map { predicted2[b, t, $0] }
                    if t < later {
                        XCTAssertEqual(a2, a, "attention output at \(t) moved with token \(later)")
                        XCTAssertEqual(p2, p, "predictor output at \(t) moved with token \(later)")
                    } else {
                        XCTAssertNotEqual(a2, a, "attention output at \(t) ignores token \(later)")
                        XCTAssertNotEqual(p2, p, "predictor output at \(t) ignores token \(later)")
                    }
                }
            }
        }
        // Without the mask, the first token sees the last.
        let full = bound(MultiHeadAttention<Double>(features: 6, heads: 2))
        let before = try full.forward(x, context: training).copy()
        let x2 = x.copy()
        x2[0, T - 1, 0] += 1
        XCTAssertNotEqual(try full.forward(x2, context: training)[0, 0, 0], before[0, 0, 0])
    }

    /// Cross-attention of a sequence to itself, with the `q` and `kv` weights cut from a fused
    /// `qkv`, is self-attention; its two input gradients add up to self-attention's.
    func testCrossAttentionToItselfIsSelfAttention() throws {
        let attention = MultiHeadAttention<Double>(features: 6, heads: 2)
        let cross = CrossAttention<Double>(features: 6, heads: 2)
        let fused = ParameterStore<Double>(specs: attention.parameterSpecs(), seed: 4)
        let split = ParameterStore<Double>(specs: cross.parameterSpecs(), seed: 4)
        let none = BufferStore<Double>.empty
        attention.bind(parameters: fused, buffers: none, prefix: "")
        cross.bind(parameters: split, buffers: none, prefix: "")
        let qkvWeight = fused.value("qkv.weight").scalars, qkvBias = fused.value("qkv.bias").scalars
        split.value("q.weight").copy(from: Tensor(shape: [6, 6], scalars: Array(qkvWeight[..<36])))
        split.value("kv.weight").copy(from: Tensor(shape: [12, 6], scalars: Array(qkvWeight[36...])))
        split.value("q.bias").copy(from: Tensor(shape: [6], scalars: Array(qkvBias[..<6])))
        split.value("kv.bias").copy(from: Tensor(shape: [12], scalars: Array(qkvBias[6...])))
        split.value("proj.weight").copy(from: fused.value("proj.weight"))
        split.value("proj.bias").copy(from: fused.value("proj.bias"))
        let x = randomTensor([2, 5, 6], seed: 1, as: Double.self), dy = randomTensor([2, 5, 6], seed: 2, as: Double.self)
        assertClose(try cross.forward(x, condition: x, context: training).scalars, try attention.forward(x, context: training).scalars,
                    rtol: 1e-12, atol: 1e-14, "output")
        let (dx, dMemory) = try cross.backward(dy, context: training)
        let expected = try attention.backward(dy, context: training)
        assertClose(zip(dx.scalars, dMemory.scalars).map { $0 + $1 }, expected.scalars, rtol: 1e-12, atol: 1e-14, "input gradient")
        // A memory of another length: (B, T, C) attending to (B, S, M).
        let other = CrossAttention<Double>(features: 6, memoryFeatures: 3, heads: 3)
        other.bind(parameters: ParameterStore(specs: other.parameterSpecs(), seed: 1), buffers: none, prefix: "")
        XCTAssertEqual(try other.forward(x, condition: randomTensor([2, 7, 3], seed: 3), context: training).shape, [2, 5, 6])
        XCTAssertEqual(try other.backward(dy, context: training).condition.shape, [2, 7, 3])
    }

    func testShapeErrorsNameTheLayerAndTheInput() throws {
        func assertShapeError(_ body: @autoclosure () throws -> Any, layer: String, expected: String,
                              file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try body(), file: file, line: line) { error in
                guard case let .shapeMismatch(name, expectation, _)? = error as? LayerError else {
                    return XCTFail("not a shape mismatch: \(error)", file: file, line: line)
                }
                XCTAssertTrue(name.hasPrefix(layer), "\(name) does not start with \(layer)", file: file, line: line)
                XCTAssertTrue(expectation.hasPrefix(expected), "\(expectation) does not start with \(expected)", file: file, line: line)
            }
        }
        let attention = bound(MultiHeadAttention<Double>(features: 6, heads: 2))
        assertShapeError(try attention.forward(Tensor(zeros: [2, 3, 5]), context: training),
                         layer: "MultiHeadAttention(6", expected: "(B, T ≥ 1, 6)")
        assertShapeError(try attention.forward(Tensor(zeros: [2, 6]), context: training),
                         layer: "MultiHeadAttention(6", expected: "(B, T ≥ 1, 6)")
        let block = bound(AdaLNZeroBlock<Double>(features: 6, conditionFeatures: 3, heads: 2))
        assertShapeError(try block.forward(Tensor(zeros: [2, 3, 5]), condition: Tensor(zeros: [2, 3, 3]), context: training),
                         layer: "AdaLNZeroBlock", expected: "input")
        assertShapeError(try block.forward(Tensor(zeros: [2, 3, 6]), condition: Tensor(zeros: [2, 3, 4]), context: training),
                         layer: "AdaLNZeroBlock", expected: "condition (2, 3, 3)")
        assertShapeError(try block.forward(Tensor(zeros: [2, 3, 6]), condition: Tensor(zeros: [2, 2, 3]), context: training),
                         layer: "AdaLNZeroBlock", expected: "condition (2, 3, 3)")
        let cross = bound(CrossAttention<Double>(features: 6, memoryFeatures: 3, heads: 2))
        assertShapeError(try cross.forward(Tensor(zeros: [2, 3, 6]), condition: Tensor(zeros: [2, 4, 5]), context: training),
                         layer: "CrossAttention", expected: "memory (2, S ≥ 1, 3)")
        assertShapeError(try cross.forward(Tensor(zeros: [2, 3, 6]), condition: Tensor(zeros: [1, 4, 3]), context: training),
                         layer: "CrossAttention", expected: "memory (2, S ≥ 1, 3)")
        assertShapeError(try cross.forward(Tensor(zeros: [2, 3, 3]), condition: Tensor(zeros: [2, 4, 3]), context: training),
                         layer: "CrossAttention", expected: "input")
        let patches = bound(PatchEmbedding<Double>(inChannels: 1, patchSize: 2, embedDimension: 4))
        assertShapeError(try patches.forward(Tensor(zeros: [2, 1, 5, 4]), context: training),
                         layer: "PatchEmbedding", expected: "(B, 1, H, W) with H, W multiples of 2")
        let position = bound(PositionEmbedding<Double>(tokens: 4, embedDimension: 3, classToken: true))
        assertShapeError(try position.forward(Tensor(zeros: [2, 5, 3]), context: training),
                         layer: "PositionEmbedding", expected: "(B, T ≤ 4, 3)")
        let stack = bound(ConditionedTransformer<Double>(features: 4, conditionFeatures: 2, maxTokens: 3, depth: 1, heads: 2))
        assertShapeError(try stack.forward(Tensor(zeros: [1, 4, 4]), condition: Tensor(zeros: [1, 4, 2]), context: training),
                         layer: "PositionEmbedding", expected: "(B, T ≤ 3, 4)")
        let model = try Model<Double>(ModelDescription(encoder: .vit(tiny)), seed: 0)
        assertShapeError(try model.forward(Tensor(zeros: [2, 15]), context: training), layer: "Model", expected: "(B, [1, 4, 4])")
    }

    func testDropoutIsKeyedByGlobalRowAndStep() throws {
        let dropout = Dropout<Double>(probability: 0.5)
        let ones = Tensor<Double>(shape: [6, 10], repeating: 1)
        func mask(_ rows: Range<Int>, offset: Int, step: Int = 0, training: Bool = true) throws -> [Double] {
            try dropout.forward(ones.rows(rows), context: LayerContext(training: training, globalRowOffset: offset, seed: 3, step: step))
                .scalars
        }
        let whole = try mask(0..<6, offset: 0)
        XCTAssertEqual(try mask(0..<2, offset: 0) + mask(2..<6, offset: 2), whole)
        XCTAssertNotEqual(try mask(2..<6, offset: 0), Array(whole[20...]))
        XCTAssertNotEqual(try mask(0..<6, offset: 0, step: 1), whole)
        XCTAssertEqual(Set(whole), [0, 2])
        XCTAssertEqual(try mask(0..<6, offset: 0, training: false), ones.scalars)
        // Two views stacked in row groups draw what two slots draw.
        let stacked = try dropout.forward(Tensor(shape: [12, 10], repeating: 1), context: LayerContext(training: true, seed: 3)
            .groupingRows(2)).scalars
        let second = try dropout.forward(ones, context: LayerContext(training: true, slot: 1, seed: 3)).scalars
        XCTAssertEqual(stacked, whole + second)
    }

    /// A second step at the same batch size reuses the first step's buffers (outputs and input
    /// gradients are the same views), for the encoder and for the predictor stack.
    func testBuffersAreReusedAcrossSteps() throws {
        let model = try Model<Double>(ModelDescription(encoder: .vit(tiny)), seed: 0)
        let stack = bound(ConditionedTransformer<Double>(features: 8, conditionFeatures: 2, maxTokens: 4, depth: 2, heads: 2))
        let (x, tokens, conditions) = (randomTensor([3, 16], seed: 1, as: Double.self), randomTensor([3, 4, 8], seed: 2, as: Double.self),
                                       randomTensor([3, 4, 2], seed: 3, as: Double.self))
        var views: [[Tensor<Double>]] = []
        for _ in 0..<2 {
            let y = try model.forward(x, context: training).last
            let dx = try model.backward(y, context: training)
            let z = try stack.forward(tokens, condition: conditions, context: training)
            let (dTokens, dConditions) = try stack.backward(z, context: training)
            views.append([y, dx, z, dTokens, dConditions])
        }
        for (first, second) in zip(views[0], views[1]) { XCTAssertTrue(first.isSameView(as: second), "\(first.shape)") }
    }

    // MARK: Data parallel

    /// A few SGD steps of a tiny ViT on `loss = (1 / 2B) Σ_rows ‖y − target‖²` of the pooled
    /// output over a global batch of 6: one process, and 2 and 3 in-process ranks each taking
    /// its rows (keyed by their global offset), give the same parameters — with dropout too.
    func testRanksReproduceOneProcess() throws {
        let (globalBatch, steps) = (6, 3)
        let images = randomTensor([globalBatch, 1, 4, 4], seed: 5, as: Double.self)
        let targets = randomTensor([globalBatch, 8], seed: 6, as: Double.self)
        for dropout in [0.0, 0.25] {
            let description = ViTDescription(inputChannels: 1, imageSize: 4, patchSize: 2, width: 8, depth: 2, heads: 2,
                                              mlpRatio: 2, dropout: dropout)
            @Sendable func train(_ communicator: any Communicator, rows: Range<Int>, keyByGlobalRow: Bool = true) throws -> [Double] {
                let model = try Model<Double>(ModelDescription(encoder: .vit(description)), seed: 11)
                let gradient = Tensor<Double>(zeros: [rows.count, 8])
                for step in 0..<steps {
                    let context = LayerContext(training: true, communicator: communicator, needsInputGradient: false,
                                               globalRowOffset: keyByGlobalRow ? rows.lowerBound : 0, seed: 2, step: step)
                    model.parameters.zeroGradients()
                    let y = try model.forward(images.rows(rows), context: context).last
                    // dL/dy = (y − target) / B
                    for i in 0..<gradient.count {
                        gradient[flat: i] = (y[flat: i] - targets[flat: rows.lowerBound * 8 + i]) / Double(globalBatch)
                    }
                    _ = try model.backward(gradient, context: context)
                    var gradients = model.parameters.gradients.scalars
                    try communicator.allReduce(&gradients, .sum)
                    model.parameters.values.add(Tensor(shape: [gradients.count], scalars: gradients), scaledBy: -0.5)
                }
                return model.parameters.values.scalars
            }
            let reference = try train(SingleProcessCommunicator(), rows: 0..<globalBatch)
            let initial = try Model<Double>(ModelDescription(encoder: .vit(description)), seed: 11).parameters.values.scalars
            XCTAssertGreaterThan(relativeNormError(reference, initial), 1e-3, "the steps moved the parameters")
            for splits in [[0..<4, 4..<6], [0..<1, 1..<3, 3..<6]] {
                let ranks = try runRanks(splits.count) { communicator in try train(communicator, rows: splits[communicator.rank]) }
                for (rank, values) in ranks.enumerated() {
                    assertClose(values, reference, rtol: 1e-10, atol: 1e-12, "dropout \(dropout), \(splits.count) ranks, rank \(rank)")
                }
                if dropout > 0 {
                    // The rank-local row index would draw other masks.
                    let wrong = try runRanks(splits.count) { communicator in
                        try train(communicator, rows: splits[communicator.rank], keyByGlobalRow: false)
                    }
                    XCTAssertGreaterThan(relativeNormError(wrong[0], reference), 1e-8, "rank-local dropout keys should differ")
                }
            }
        }
    }
}
