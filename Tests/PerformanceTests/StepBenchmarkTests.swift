import Engine
import JointEmbedding
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
}
