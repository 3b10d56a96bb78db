import Layers
import XCTest
import _TestSupport

/// Finite-difference checks of every layer's input and parameter gradients, in `Double`.
final class LayerGradientTests: XCTestCase {
    private let training = LayerContext(training: true)
    private let evaluation = LayerContext(training: false)

    private func check(_ layer: any Layer<Double>, input shape: [Int], context: LayerContext? = nil,
                       _ label: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let network = GradientCheck.network(layer)
        let input = randomTensor(shape, seed: 3, as: Double.self)
        let errors = try GradientCheck.errors(network, input: input, context: context ?? training)
        GradientCheck.assertSmall(errors, label, file: file, line: line)
    }

    func testLinear() throws {
        try check(Linear<Double>(inFeatures: 5, outFeatures: 4), input: [6, 5], "Linear")
        try check(Linear<Double>(inFeatures: 5, outFeatures: 4, bias: false), input: [6, 5], "Linear(bias: false)")
    }

    func testBatchNorm1dTraining() throws {
        try check(BatchNorm<Double>(features: 4), input: [7, 4], "BatchNorm1d train")
        try check(BatchNorm<Double>(features: 4, affine: false), input: [7, 4], "BatchNorm1d(affine: false) train")
    }

    func testBatchNorm1dEvaluation() throws {
        let layer = BatchNorm<Double>(features: 4)
        let network = GradientCheck.network(layer)
        // Move the running statistics away from (0, 1) first.
        for _ in 0..<3 { _ = try layer.forward(randomTensor([9, 4], seed: 8, as: Double.self), context: training) }
        let errors = try GradientCheck.errors(network, input: randomTensor([5, 4], seed: 3), context: evaluation)
        GradientCheck.assertSmall(errors, "BatchNorm1d eval")
    }

    func testBatchNorm2dTraining() throws {
        try check(BatchNorm2d<Double>(features: 3), input: [2, 3, 3, 2], "BatchNorm2d train")
    }

    func testActivations() throws {
        try check(ReLU<Double>(), input: [4, 6], "ReLU")
        try check(GELU<Double>(), input: [4, 6], "GELU")
    }

    func testLayerNorm() throws {
        try check(LayerNorm<Double>(features: 6), input: [3, 6], "LayerNorm")
        try check(LayerNorm<Double>(features: 6, elementwiseAffine: false), input: [3, 6], "LayerNorm(affine: false)")
        // 300 rows: three blocks of dγ/dβ partial sums (128 rows each); 11 features: a row sum's
        // eight lanes and its tail (`Tensor.laneSum`).
        try check(LayerNorm<Double>(features: 11), input: [300, 11], "LayerNorm over blocks of rows")
    }

    func testConv2d() throws {
        try check(Conv2d<Double>(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 1, padding: 1),
                  input: [2, 2, 5, 5], "Conv2d(k3 s1 p1)")
        try check(Conv2d<Double>(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 2, padding: 1, bias: false),
                  input: [2, 2, 6, 5], "Conv2d(k3 s2 p1, bias: false)")
        try check(Conv2d<Double>(inChannels: 3, outChannels: 2, kernelSize: 1, stride: 2),
                  input: [2, 3, 4, 4], "Conv2d(k1 s2)")
    }

    /// The im2col path over several chunks of images (one image, or two, a chunk) and the
    /// Winograd path (3×3, stride 1, padding 1; even and odd sizes: clipped edge tiles), each
    /// against finite differences. Ten images: Winograd's transforms take eight images a
    /// vector, so chunks of 8 + 2 and 10 images give full and partial groups of lanes.
    func testConv2dChunksAndWinograd() throws {
        // im2col's chunk (C·K·K × OH·OW = 18 × 25 an image) and Winograd's (36 positions ·
        // max(C, OC) · 4×4 tiles: 36 · 3 · 4 an image of 5×5, 36 · 3 · 2 of 4×6).
        for (chunkElements, winogradElements, label) in [(1, 1, "1 image a chunk"),
                                                         (2 * 18 * 25, 2 * 36 * 3 * 4, "2 images a chunk"),
                                                         (9 * 18 * 25, 9 * 36 * 3 * 4, "9 images asked (Winograd: 8) a chunk"),
                                                         (1 << 20, 1 << 20, "one chunk")] {
            for winograd in [false, true] {
                let conv = Conv2d<Double>(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 1, padding: 1)
                conv.chunkElements = chunkElements
                conv.winogradChunkElements = winogradElements
                XCTAssertTrue(conv.usesWinograd, "3×3 stride 1 padding 1 takes Winograd by default")
                conv.usesWinograd = winograd
                try check(conv, input: [10, 2, 5, 5], "Conv2d(k3 s1 p1) \(winograd ? "Winograd" : "im2col"), \(label)")
                let even = Conv2d<Double>(inChannels: 3, outChannels: 2, kernelSize: 3, stride: 1, padding: 1, bias: false)
                even.chunkElements = chunkElements
                even.winogradChunkElements = winogradElements
                even.usesWinograd = winograd
                try check(even, input: [10, 3, 4, 6], "Conv2d(k3 s1 p1, 4×6) \(winograd ? "Winograd" : "im2col"), \(label)")
            }
            let strided = Conv2d<Double>(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 2, padding: 1)
            strided.chunkElements = chunkElements
            XCTAssertFalse(strided.usesWinograd)
            try check(strided, input: [3, 2, 7, 6], "Conv2d(k3 s2 p1), \(label)")
            // rows wide enough for stride 2's eight-at-a-time gather (and a ragged end)
            try check(strided, input: [2, 2, 5, 37], "Conv2d(k3 s2 p1, 5×37), \(label)")
        }
    }

    /// In `Float`, Winograd's output and input gradient are im2col's up to rounding, on a
    /// ResNet-sized layer over chunks of 16 + 3 images (lane groups of 8, 8 and 3); planes of
    /// 4, 8, 35 and 70 columns (rows moved into and out of lanes by 8×8 transposes: none, one
    /// block, several and a ragged end), and 15 × 18 tiles (three bands of tile rows).
    func testWinogradMatchesIm2colInFloat() throws {
        for (height, width) in [(4, 4), (9, 8), (6, 35), (60, 70)] {
            try checkWinogradMatchesIm2col(height: height, width: width)
        }
    }

    private func checkWinogradMatchesIm2col(height: Int, width: Int) throws {
        let input = randomTensor([19, 16, height, width], seed: 11, as: Float.self)
        let outputGradient = randomTensor([19, 24, height, width], seed: 12, as: Float.self)
        var results: [(output: [Float], inputGradient: [Float], weightGradient: [Float])] = []
        for winograd in [false, true] {
            let conv = Conv2d<Float>(inChannels: 16, outChannels: 24, kernelSize: 3, stride: 1, padding: 1)
            conv.usesWinograd = winograd
            conv.chunkElements = 4000
            conv.winogradChunkElements = 16 * 36 * 24 * ((height + 3) / 4) * ((width + 3) / 4)  // 16 images a chunk
            let parameters = ParameterStore<Float>(specs: conv.parameterSpecs(), seed: 5)
            conv.bind(parameters: parameters, buffers: BufferStore<Float>(specs: [], seed: 0), prefix: "")
            let output = try conv.forward(input, context: training)
            let outputValues = output.scalars
            let inputGradient = try conv.backward(outputGradient, context: training)
            results.append((outputValues, inputGradient.scalars, parameters.gradients.scalars))
        }
        for (name, a, b) in [("output", results[0].output, results[1].output),
                             ("input gradient", results[0].inputGradient, results[1].inputGradient),
                             ("weight gradient", results[0].weightGradient, results[1].weightGradient)] {
            let scale = a.map { abs($0) }.max() ?? 1
            let error = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(error, 1e-5 * scale, "Winograd vs im2col, \(height)×\(width) \(name): max error \(error), max value \(scale)")
        }
    }

    func testPoolingAndFlatten() throws {
        try check(AvgPool2d<Double>(kernelSize: 2), input: [2, 2, 5, 4], "AvgPool2d(2)")
        try check(AvgPool2d<Double>(kernelSize: 3, stride: 2), input: [2, 2, 5, 5], "AvgPool2d(3, stride 2)")
        try check(GlobalAvgPool2d<Double>(), input: [3, 2, 3, 4], "GlobalAvgPool2d")
        try check(Flatten<Double>(), input: [3, 2, 2, 2], "Flatten")
    }

    func testSequentialAndResidual() throws {
        let identity = Residual<Double>(body: Sequential([Linear(inFeatures: 4, outFeatures: 4), GELU()]))
        try check(identity, input: [5, 4], "Residual(identity)")
        let projected = Residual<Double>(
            body: Sequential([Conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 2, padding: 1),
                              BatchNorm2d(features: 3), ReLU()]),
            shortcut: Sequential([Conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, stride: 2), BatchNorm2d(features: 3)]))
        try check(projected, input: [3, 2, 4, 4], "Residual(conv shortcut)")
        let mlp = Sequential<Double>([Linear(inFeatures: 3, outFeatures: 5), BatchNorm1d(features: 5), ReLU(),
                                      Linear(inFeatures: 5, outFeatures: 2), LayerNorm(features: 2)])
        try check(mlp, input: [6, 3], "Sequential")
    }

    /// Batch norm split over 2–4 ranks (uneven, one rank empty): the gradient of the global loss.
    func testBatchNormTrainingAcrossRanks() throws {
        for (worldSize, rows) in [(2, [3, 5]), (3, [4, 0, 3]), (4, [1, 2, 3, 2])] {
            let errors = try runRanks(worldSize) { communicator in
                let layer = BatchNorm<Double>(features: 3)
                let network = GradientCheck.network(layer)
                let start = rows[..<communicator.rank].reduce(0, +)
                let global = randomTensor([rows.reduce(0, +), 3], seed: 4, as: Double.self)
                let input = global.rows(start..<(start + rows[communicator.rank])).copy()
                return try GradientCheck.errors(network, input: input,
                                                context: LayerContext(training: true, communicator: communicator))
            }
            for rankErrors in errors { GradientCheck.assertSmall(rankErrors, "BatchNorm1d over \(worldSize) ranks \(rows)") }
            XCTAssertEqual(Set(errors.map { $0 }), Set([errors[0]]), "every rank reports the same global errors")
        }
    }

    // MARK: Models end to end

    func testMLPModel() throws {
        let description = ModelDescription(
            encoder: .mlp(widths: [6, 8, 5]),
            projector: .mlp(widths: [5, 7, 4], bias: false, lastBias: false, lastBatchNorm: true))
        let model = try Model<Double>(description, seed: 1)
        let errors = try GradientCheck.errors(GradientCheck.network(model), input: randomTensor([6, 6], seed: 2),
                                              context: training)
        GradientCheck.assertSmall(errors, "MLP model")
    }

    func testConvNetModel() throws {
        let description = ModelDescription(
            encoder: .convnet(ConvNetDescription(inputChannels: 1, imageSize: 6, channels: [2, 3])),
            projector: .mlp(widths: [3, 4, 3], activation: .gelu))
        let model = try Model<Double>(description, seed: 1)
        let errors = try GradientCheck.errors(GradientCheck.network(model), input: randomTensor([3, 36], seed: 2),
                                              context: training, maximumCoordinates: 20)
        GradientCheck.assertSmall(errors, "ConvNet model")
    }

    func testResNetModel() throws {
        let description = ModelDescription(
            encoder: .resnet(ResNetDescription(inputChannels: 2, imageSize: 6, stemChannels: 2, stageChannels: [2, 3])),
            projector: .mlp(widths: [3, 4]))
        let model = try Model<Double>(description, seed: 1)
        let errors = try GradientCheck.errors(GradientCheck.network(model), input: randomTensor([3, 2, 6, 6], seed: 2),
                                              context: training, maximumCoordinates: 12)
        GradientCheck.assertSmall(errors, "ResNet model")
    }
}
