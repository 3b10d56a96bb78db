import Engine
import JointEmbedding
import Layers
import Performance
import XCTest

/// The FLOP counting and a tiny run of the step benchmark behind `anticollapse bench`.
final class StepBenchmarkTests: XCTestCase {
    func testMLPProductsCountForwardInputGradientAndWeightGradient() {
        let shapes = Benchmarks.mlpGEMMs(widths: [4, 8, 2], batch: 3)
        XCTAssertEqual(shapes, [.init(m: 3, n: 8, k: 4), .init(m: 3, n: 4, k: 8), .init(m: 8, n: 4, k: 3),
                                .init(m: 3, n: 2, k: 8), .init(m: 3, n: 8, k: 2), .init(m: 2, n: 8, k: 3)])
        XCTAssertEqual(Benchmarks.mlpGEMMs(widths: [4, 8, 2], batch: 3, firstInputGradient: false),
                       [.init(m: 3, n: 8, k: 4), .init(m: 8, n: 4, k: 3),
                        .init(m: 3, n: 2, k: 8), .init(m: 3, n: 8, k: 2), .init(m: 2, n: 8, k: 3)])
        let options = Benchmarks.StepOptions(encoder: [784, 1024, 1024], projector: [1024, 2048, 2048], batch: 256)
        // 3 products of 2·B·in·out per layer and view (2 for the network's first layer, whose
        // input gradient the step does not form), 2 views.
        let weights: Int = 784 * 1024 + 1024 * 1024 + 1024 * 2048 + 2048 * 2048
        let expected = Double(2 * 2 * 256 * (3 * weights - 784 * 1024))
        XCTAssertEqual(Benchmarks.modelGEMMs(options).reduce(0) { $0 + $1.flops }, expected)
        XCTAssertEqual(Benchmarks.median([3, 1, 2]), 2)
        XCTAssertEqual(Benchmarks.median([4, 1, 2, 3]), 2.5)
    }

    func testTinyStepRuns() throws {
        for objective in [Benchmarks.ObjectiveName.vicreg, .barlowTwins, .sigreg, .lejepa] {
            let report = try Benchmarks.step(.init(encoder: [6, 8, 8], projector: [8, 16, 16], batch: 5,
                                                   objective: objective, steps: 2, warmup: 1, directions: 4))
            XCTAssertTrue(report.loss.isFinite, "\(objective)")
            XCTAssertGreaterThan(report.medianMilliseconds, 0)
            XCTAssertGreaterThan(report.gflopPerStep, 0)
            XCTAssertTrue(report.table.contains("ms/step"))
        }
    }

    /// A convolution counts as the products of its im2col over the batch: forward, weight
    /// gradient, and the input gradient unless it is the network's first layer.
    func testConvolutionProductsAndLayerPhases() throws {
        let network = NetworkDescription.convnet(ConvNetDescription(inputChannels: 1, imageSize: 8, channels: [4]))
        let options = Benchmarks.StepOptions(projector: [4, 8, 8], network: network, batch: 3, optimizer: .sgd,
                                             steps: 2, warmup: 1)
        XCTAssertEqual(options.inputShape, [1, 8, 8])
        let one: [Benchmarks.GEMMShape] = [.init(m: 4, n: 3 * 64, k: 9), .init(m: 4, n: 9, k: 3 * 64)]
            + Benchmarks.mlpGEMMs(widths: [4, 8, 8], batch: 3)
        XCTAssertEqual(Benchmarks.modelGEMMs(options), one + one)
        let report = try Benchmarks.step(options)
        XCTAssertTrue(report.loss.isFinite)
        XCTAssertEqual(report.optimizer, "sgd")
        XCTAssertGreaterThan(report.phases.layers[LayerPhase.convForward.name] ?? 0, 0)
        XCTAssertGreaterThan(report.phases.layers[LayerPhase.batchNorm.name] ?? 0, 0)
        XCTAssertTrue(report.table.contains("conv weight gradient"), report.table)
    }
}
