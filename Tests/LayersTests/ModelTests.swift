import Foundation
import Layers
import XCTest
import _TestSupport

final class ModelTests: XCTestCase {
    private let mlp = ModelDescription(
        encoder: .mlp(widths: [6, 8, 5]),
        projector: .mlp(widths: [5, 7, 4], bias: false, lastBias: false, lastBatchNorm: true))
    private let resnet = ModelDescription(
        encoder: .resnet(ResNetDescription(inputChannels: 1, imageSize: 8, stemChannels: 4, stageChannels: [4, 6])),
        projector: .mlp(widths: [6, 8, 4], lastBias: false))

    // MARK: Names and initialisation

    func testParameterNamesAreHierarchicalAndStable() throws {
        let model = try Model<Float>(mlp, seed: 0)
        XCTAssertEqual(model.parameters.entries.map(\.name), [
            "encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias", "encoder.3.weight", "encoder.3.bias",
            "projector.0.weight", "projector.1.weight", "projector.1.bias", "projector.3.weight",
        ])
        XCTAssertEqual(model.parameters.entries.map(\.shape), [[8, 6], [8], [8], [8], [5, 8], [5], [7, 5], [7], [7], [4, 7]])
        XCTAssertEqual(model.parameters.entries.map(\.role),
                       [.weight, .bias, .normalization, .normalization, .weight, .bias, .weight, .normalization, .normalization, .weight])
        XCTAssertEqual(model.buffers.entries.map(\.name), [
            "encoder.1.running_mean", "encoder.1.running_var",
            "projector.1.running_mean", "projector.1.running_var", "projector.4.running_mean", "projector.4.running_var",
        ])

        let names = try Model<Float>(resnet, seed: 0).parameters.entries.map(\.name)
        XCTAssertEqual(names.prefix(3), ["encoder.0.weight", "encoder.1.weight", "encoder.1.bias"])
        XCTAssertTrue(names.contains("encoder.3.body.0.weight"))          // stage 1, block 1: identity shortcut
        XCTAssertFalse(names.contains("encoder.3.shortcut.0.weight"))
        XCTAssertTrue(names.contains("encoder.5.body.4.bias"))            // stage 2: stride 2, projected shortcut
        XCTAssertTrue(names.contains("encoder.5.shortcut.0.weight"))
        XCTAssertTrue(names.contains("encoder.5.shortcut.1.weight"))
        XCTAssertEqual(names.last, "projector.3.weight")
    }

    func testEveryRankBuildsIdenticalParametersWithoutBroadcast() throws {
        let reference = try Model<Float>(resnet, seed: 42)
        let ranks = try runRanks(4) { [resnet] _ in
            let model = try Model<Float>(resnet, seed: 42)
            return (model.parameters.values.scalars, model.buffers.values.scalars)
        }
        for (rank, (values, buffers)) in ranks.enumerated() {
            XCTAssertEqual(values.map(\.bitPattern), reference.parameters.values.scalars.map(\.bitPattern), "rank \(rank)")
            XCTAssertEqual(buffers.map(\.bitPattern), reference.buffers.values.scalars.map(\.bitPattern), "rank \(rank)")
        }
        XCTAssertNotEqual(try Model<Float>(resnet, seed: 43).parameters.values.scalars, reference.parameters.values.scalars)
        // PyTorch's default bound for Linear: 1/√fanIn.
        let weight = reference.parameters.value("projector.0.weight")
        XCTAssertLessThanOrEqual(Double(weight.maxAbs()), 1 / 6.0.squareRoot())
        XCTAssertGreaterThan(Double(weight.maxAbs()), 0.8 / 6.0.squareRoot())
    }

    // MARK: Forward

    func testFloatForwardMatchesDouble() throws {
        for description in [mlp, resnet] {
            let single = try Model<Float>(description, seed: 7), double = try Model<Double>(description, seed: 7)
            let shape = [5] + description.encoder.inputShape
            let input = randomTensor(shape, seed: 9, as: Double.self)
            for training in [true, false] {
                let context = LayerContext(training: training)
                let expected = try double.forward(input, context: context).embedding.scalars
                let actual = try single.forward(input.converted(to: Float.self), context: context).embedding.scalars
                assertClose(actual, expected, rtol: 1e-4, atol: 1e-4, "training \(training)")
            }
        }
    }

    func testEvaluationUsesRunningStatistics() throws {
        let model = try Model<Double>(mlp, seed: 3)
        let batch = randomTensor([8, 6], seed: 1, as: Double.self)
        for step in 0..<3 { _ = try model.forward(randomTensor([8, 6], seed: UInt64(10 + step)), context: LayerContext(training: true)) }
        let runningStatistics = model.buffers.values.scalars
        let evaluation = LayerContext(training: false)
        let whole = try model.forward(batch, context: evaluation).embedding.copy()
        // A row's output does not depend on the rest of the batch, and nothing is updated.
        let alone = try model.forward(batch.rows(2..<3).copy(), context: evaluation).embedding
        assertClose(alone.scalars, whole.rows(2..<3).scalars, rtol: 1e-13, atol: 1e-13)
        XCTAssertEqual(model.buffers.values.scalars, runningStatistics)
        let trained = try model.forward(batch, context: LayerContext(training: true)).embedding
        XCTAssertGreaterThan(trained.maxAbsDifference(whole), 1e-3, "training mode normalises with batch statistics")
    }

    func testConvolutionalEncodersAcceptFlatRows() throws {
        let model = try Model<Float>(resnet, seed: 1)
        let images = randomTensor([3, 1, 8, 8], seed: 2, as: Float.self)
        let fromImages = try model.forward(images, context: LayerContext(training: false)).representation.copy()
        let fromRows = try model.forward(images.reshaped([3, 64]), context: LayerContext(training: false)).representation
        XCTAssertEqual(fromImages.shape, [3, 6])
        XCTAssertEqual(fromRows.scalars, fromImages.scalars)
        XCTAssertThrowsError(try model.forward(Tensor<Float>(zeros: [3, 63]), context: LayerContext(training: false)))
    }

    // MARK: Training steps

    /// After the first step at a batch size, steps reuse the same activation and gradient buffers.
    func testNoActivationAllocationAfterWarmUp() throws {
        let model = try Model<Float>(resnet, seed: 1)
        let context = LayerContext(training: true)
        var outputs: [Tensor<Float>] = [], inputGradients: [Tensor<Float>] = []
        for step in 0..<3 {
            let output = try model.forward(randomTensor([4, 64], seed: UInt64(step)), context: context)
            outputs.append(output.embedding)
            inputGradients.append(try model.backward(randomTensor(output.embedding.shape, seed: 9), context: context))
        }
        XCTAssertTrue(outputs[1].isSameView(as: outputs[0]) && outputs[2].isSameView(as: outputs[0]))
        XCTAssertTrue(inputGradients[1].isSameView(as: inputGradients[0]) && inputGradients[2].isSameView(as: inputGradients[0]))
        // Another slot has buffers of its own.
        let other = try model.forward(randomTensor([4, 64], seed: 5), context: context.slot(1)).embedding
        XCTAssertFalse(other.isSameView(as: outputs[0]))
    }

    /// Two views through one model in slots 0 and 1: each view's result is that of the view
    /// alone, and the parameter gradients are the sum of the views'.
    /// Without the input gradient (what the trainer asks for), the first Linear or Conv2d skips
    /// its input-gradient product, every layer after it still gets its own, and every parameter
    /// gradient is bitwise what the full backward pass gives.
    func testSkippingTheInputGradientLeavesParameterGradientsUnchanged() throws {
        for description in [mlp, resnet] {
            var gradients: [[Double]] = []
            for needsInputGradient in [true, false] {
                let model = try Model<Double>(description, seed: 5)
                let context = LayerContext(training: true, needsInputGradient: needsInputGradient)
                let output = try model.forward(randomTensor([4] + description.encoder.inputShape, seed: 6), context: context)
                model.parameters.zeroGradients()
                let inputGradient = try model.backward(randomTensor(output.last.shape, seed: 7), context: context)
                XCTAssertEqual(inputGradient.count, needsInputGradient ? 4 * description.encoder.inputShape.reduce(1, *) : 0)
                gradients.append(model.parameters.gradients.scalars)
            }
            XCTAssertGreaterThan(gradients[0].map(abs).max() ?? 0, 0)
            XCTAssertEqual(gradients[1], gradients[0])
        }
    }

    /// Views stacked into one batch with a row group each give what one pass per view on its
    /// own slot gives — outputs, input gradients, parameter gradients and running statistics —
    /// on the MLP (BatchNorm1d) and the ResNet (BatchNorm2d), for two and three views, in
    /// training and evaluation mode, on one rank and split over two.
    func testStackedViewsInRowGroupsMatchOnePassPerView() throws {
        for description in [mlp, resnet] {
            for viewCount in [2, 3] {
                let rows = 4, shape = description.encoder.inputShape
                let views = (0..<viewCount).map { randomTensor([rows] + shape, seed: UInt64(20 + $0), as: Double.self) }
                let width = (description.projector ?? description.encoder).outputFeatures
                let outputGradient = randomTensor([viewCount * rows, width], seed: 30, as: Double.self)
                for training in [true, false] {
                    let separate = try Model<Double>(description, seed: 8), stacked = try Model<Double>(description, seed: 8)
                    // One pass per view, each on its own slot.
                    separate.parameters.zeroGradients()
                    var outputs: [Double] = [], inputGradients: [Double] = []
                    for (v, view) in views.enumerated() {
                        outputs += try separate.forward(view, context: LayerContext(training: training, slot: v)).last.scalars
                    }
                    for v in 0..<viewCount {
                        let gradient = outputGradient.rows(v * rows ..< (v + 1) * rows).copy()
                        inputGradients += try separate.backward(gradient, context: LayerContext(training: training, slot: v)).scalars
                    }
                    // One pass over the stacked views.
                    let all = Tensor<Double>(zeros: [viewCount * rows] + shape)
                    for (v, view) in views.enumerated() { all.rows(v * rows ..< (v + 1) * rows).copy(from: view) }
                    let context = LayerContext(training: training, rowGroups: viewCount)
                    stacked.parameters.zeroGradients()
                    let label = "\(description.encoder) \(viewCount) views, training \(training)"
                    assertClose(try stacked.forward(all, context: context).last.scalars, outputs, rtol: 1e-12, atol: 1e-12, label)
                    assertClose(try stacked.backward(outputGradient, context: context).scalars, inputGradients,
                                rtol: 1e-10, atol: 1e-12, label)
                    assertClose(stacked.parameters.gradients.scalars, separate.parameters.gradients.scalars,
                                rtol: 1e-10, atol: 1e-12, label)
                    assertClose(stacked.buffers.values.scalars, separate.buffers.values.scalars, rtol: 1e-14, atol: 0, label)
                }
            }
        }
        // Split over two ranks (uneven), in row groups: the single-process result.
        let views = (0..<2).map { randomTensor([5, 6], seed: UInt64(40 + $0), as: Double.self) }
        let reference = try Model<Double>(mlp, seed: 9)
        let expected = try views.enumerated().flatMap { v, view in
            try reference.forward(view, context: LayerContext(training: true, slot: v)).last.scalars
        }
        let perRank = try runRanks(2) { [mlp] communicator -> [Double] in
            let rows = communicator.rank == 0 ? 0..<2 : 2..<5
            let all = Tensor<Double>(zeros: [2 * rows.count, 6])
            for v in 0..<2 { all.rows(v * rows.count ..< (v + 1) * rows.count).copy(from: views[v].rows(rows)) }
            let model = try Model<Double>(mlp, seed: 9)
            return try model.forward(all, context: LayerContext(training: true, communicator: communicator, rowGroups: 2)).last.scalars
        }
        // Rank r holds rows `rows_r` of view 0, then of view 1.
        let width = 4
        var gathered = [Double](repeating: .nan, count: expected.count)
        for (rank, values) in perRank.enumerated() {
            let rows = rank == 0 ? 0..<2 : 2..<5
            for v in 0..<2 {
                for (i, row) in rows.enumerated() {
                    let source = (v * rows.count + i) * width, target = (v * 5 + row) * width
                    gathered[target ..< target + width] = values[source ..< source + width]
                }
            }
        }
        assertClose(gathered, expected, rtol: 1e-12, atol: 1e-12, "two ranks")
    }

    func testTwoViewsAccumulateGradients() throws {
        let views = [randomTensor([6, 6], seed: 1, as: Double.self), randomTensor([6, 6], seed: 2, as: Double.self)]
        let gradients = [randomTensor([6, 4], seed: 3, as: Double.self), randomTensor([6, 4], seed: 4, as: Double.self)]
        let training = LayerContext(training: true)
        let model = try Model<Double>(mlp, seed: 5)
        model.parameters.zeroGradients()
        for slot in 0..<2 { _ = try model.forward(views[slot], context: training.slot(slot)) }
        for slot in [1, 0] { _ = try model.backward(gradients[slot], context: training.slot(slot)) }

        var expected = [Double](repeating: 0, count: model.parameters.count)
        for slot in 0..<2 {
            let alone = try Model<Double>(mlp, seed: 5)
            alone.parameters.zeroGradients()
            _ = try alone.forward(views[slot], context: training)
            _ = try alone.backward(gradients[slot], context: training)
            expected = zip(expected, alone.parameters.gradients.scalars).map { $0 + $1 }
        }
        assertClose(model.parameters.gradients.scalars, expected, rtol: 1e-10, atol: 1e-12)
    }

    /// A model step split over 3 ranks (one of them empty) is the one-process step on the same
    /// global batch: embedding rows, input gradient rows, summed parameter gradients, running statistics.
    func testModelStepAcrossRanksMatchesOneProcess() throws {
        let description = resnet
        let globalInput = randomTensor([7, 64], seed: 11, as: Double.self)
        let globalGradient = randomTensor([7, 4], seed: 12, as: Double.self)
        @Sendable func step(_ communicator: any Communicator, rows: Range<Int>) throws -> [[Double]] {
            let model = try Model<Double>(description, seed: 2)
            let context = LayerContext(training: true, communicator: communicator)
            model.parameters.zeroGradients()
            let embedding = try model.forward(globalInput.rows(rows).copy(), context: context).embedding.scalars
            let inputGradient = try model.backward(globalGradient.rows(rows).copy(), context: context).scalars
            return [embedding, inputGradient, model.parameters.gradients.scalars, model.buffers.values.scalars]
        }
        let reference = try step(SingleProcessCommunicator(), rows: 0..<7)
        let splits = [0..<4, 4..<4, 4..<7]
        let ranks = try runRanks(3) { communicator in try step(communicator, rows: splits[communicator.rank]) }
        assertClose(ranks.flatMap { $0[0] }, reference[0], rtol: 1e-10, atol: 1e-12, "embedding")
        assertClose(ranks.flatMap { $0[1] }, reference[1], rtol: 1e-10, atol: 1e-12, "input gradient")
        assertClose(ranks.dropFirst().reduce(ranks[0][2]) { zip($0, $1[2]).map { $0 + $1 } }, reference[2],
                    rtol: 1e-10, atol: 1e-12, "parameter gradients")
        for rank in ranks { assertClose(rank[3], reference[3], rtol: 1e-12, atol: 1e-14, "running statistics") }
    }

    // MARK: Description

    func testDescriptionCodingWithDefaults() throws {
        let json = """
        {"encoder": {"type": "convnet", "inputChannels": 1, "imageSize": 28, "channels": [8, 16]},
         "projector": {"type": "mlp", "widths": [16, 32, 32], "lastBias": false}}
        """
        let description = try JSONDecoder().decode(ModelDescription.self, from: Data(json.utf8))
        XCTAssertEqual(description.encoder, .convnet(ConvNetDescription(inputChannels: 1, imageSize: 28, channels: [8, 16])))
        XCTAssertEqual(description.projector, .mlp(widths: [16, 32, 32], lastBias: false))
        XCTAssertNil(description.predictor)
        let again = try JSONDecoder().decode(ModelDescription.self, from: JSONEncoder().encode(description))
        XCTAssertEqual(again, description)
        XCTAssertEqual(description.encoder.outputFeatures, 16)
        XCTAssertEqual(try Model<Float>(description, seed: 0).forward(Tensor(zeros: [2, 784]),
                                                                     context: LayerContext(training: true)).embedding.shape, [2, 32])
    }

    func testInvalidDescriptionNamesTheKey() {
        let wrong = ModelDescription(encoder: .mlp(widths: [4, 8]), projector: .mlp(widths: [6, 3]))
        XCTAssertThrowsError(try Model<Float>(wrong, seed: 0)) { error in
            XCTAssertEqual((error as? ModelDescriptionError)?.key, "projector.widths[0]")
        }
        let empty = ModelDescription(encoder: .resnet(ResNetDescription(inputChannels: 3, imageSize: 64, stageChannels: [])))
        XCTAssertThrowsError(try Model<Float>(empty, seed: 0)) { error in
            XCTAssertEqual((error as? ModelDescriptionError)?.key, "encoder.stageChannels")
        }
    }

    // MARK: BLAS threads

    func testBLASThreadPolicy() {
        XCTAssertEqual(BLASThreads.defaultCount(cores: 8, ranksOnNode: 3), 2)
        XCTAssertEqual(BLASThreads.defaultCount(cores: 2, ranksOnNode: 4), 1)
        XCTAssertEqual(BLASThreads.ranksOnNode(environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "4"]), 4)
        XCTAssertEqual(BLASThreads.ranksOnNode(environment: [:]), 1)
        XCTAssertEqual(BLASThreads.ranksOnNode(communicator: SingleProcessCommunicator(), environment: [:]), 1)
        let previous = BLASThreads.count
        defer { BLASThreads.set(previous) }
        XCTAssertEqual(BLASThreads.configure(override: 1, environment: [:]), 1)
        XCTAssertEqual(BLASThreads.count, 1)
        XCTAssertEqual(BLASThreads.configure(environment: ["OPENBLAS_NUM_THREADS": "2"]), 2)
        XCTAssertEqual(BLASThreads.configure(environment: [:]), BLASThreads.defaultCount(ranksOnNode: 1))
    }
}
