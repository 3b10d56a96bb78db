import Objectives
import XCTest
import _TestSupport

/// Every gradient against central differences of the loss, in `Double`, on small random
/// batches; the analytic gradient is taken from a run split over ranks where stated, the
/// differences always from one process.
final class FiniteDifferenceTests: XCTestCase {
    /// Random inputs: `count` matrices of `n × d`, with per-feature scales from 0.3 to 1.5 (so
    /// that VICReg's variance hinge is active on some features and not on others) and an offset.
    func randomInputs(_ count: Int, n: Int, d: Int, seed: UInt64, offset: Double = 0.7) -> [[Double]] {
        (0..<count).map { v in
            let t: Tensor<Double> = randomTensor([n, d], seed: seed, stream: UInt64(v))
            return t.scalars.enumerated().map { index, x in x * (0.3 + 1.2 * Double(index % d) / Double(d - 1)) + offset }
        }
    }

    /// The loss of `objective` on the whole batch, on one process.
    func loss(_ objective: any Objective<Double>, _ inputs: [[Double]], d: Int, step: Int, seed: UInt64) throws -> Double {
        let views = inputs.map { Tensor<Double>(shape: [$0.count / d, d], scalars: $0) }
        let gradients = views.map { Tensor<Double>(zeros: $0.shape) }
        let context = ObjectiveContext(communicator: SingleProcessCommunicator(), step: step, seed: seed)
        return try objective.evaluate(views: views, gradients: gradients, context: context).loss
    }

    /// Asserts that the gradient of a (possibly split) run matches central differences.
    func checkGradient(_ objective: any Objective<Double>, inputs: [[Double]], d: Int, counts: [Int]? = nil,
                       reduction: StatisticsReduction = .statistics, step: Int = 3, seed: UInt64 = 11,
                       tolerance: Double = 1e-6, file: StaticString = #filePath, line: UInt = #line) throws {
        let n = inputs[0].count / d
        let evaluation = try evaluateSplit(objective, inputs: inputs, dimension: d, counts: counts ?? [n],
                                           reduction: reduction, step: step, seed: seed)
        var numeric: [Double] = [], analytic: [Double] = []
        for v in inputs.indices {
            for k in inputs[v].indices {
                let h = 1e-5 * max(1, Swift.abs(inputs[v][k]))
                var plus = inputs, minus = inputs
                plus[v][k] += h
                minus[v][k] -= h
                numeric.append((try loss(objective, plus, d: d, step: step, seed: seed)
                                - loss(objective, minus, d: d, step: step, seed: seed)) / (2 * h))
                analytic.append(evaluation.gradients[v][k])
            }
        }
        let error = relativeNormError(analytic, numeric)
        XCTAssertLessThanOrEqual(error, tolerance, "\(objective.name) gradient vs central differences", file: file, line: line)
        let singleLoss = try loss(objective, inputs, d: d, step: step, seed: seed)
        for result in evaluation.results {
            assertClose(result.loss, singleLoss, rtol: 1e-12, "\(objective.name) loss of the split run", file: file, line: line)
        }
    }

    func testVICReg() throws {
        let inputs = randomInputs(2, n: 7, d: 5, seed: 1)
        try checkGradient(VICReg<Double>(), inputs: inputs, d: 5)
        try checkGradient(VICReg<Double>(invarianceWeight: 0, varianceWeight: 3, covarianceWeight: 0), inputs: inputs, d: 5)
        try checkGradient(VICReg<Double>(), inputs: inputs, d: 5, counts: [3, 0, 4])
    }

    /// With every statistics row on one partition and 2N < D, VICReg forms its gradient in the
    /// Gram form (N × N products); split over ranks on the statistics path it takes the D × D
    /// form. Both match central differences and each other.
    func testVICRegGramForm() throws {
        let inputs = randomInputs(2, n: 5, d: 12, seed: 2)
        try checkGradient(VICReg<Double>(), inputs: inputs, d: 12)
        try checkGradient(VICReg<Double>(), inputs: inputs, d: 12, counts: [2, 3], reduction: .gather)
        try checkGradient(VICReg<Double>(), inputs: inputs, d: 12, counts: [2, 3])
        let gram = try evaluateSplit(VICReg<Double>(), inputs: inputs, dimension: 12, counts: [5], reduction: .statistics)
        let square = try evaluateSplit(VICReg<Double>(), inputs: inputs, dimension: 12, counts: [2, 3],
                                       reduction: .statistics)
        for v in 0..<2 {
            XCTAssertLessThanOrEqual(relativeNormError(gram.gradients[v], square.gradients[v]), 1e-12, "view \(v)")
        }
    }

    func testBarlowTwins() throws {
        let inputs = randomInputs(2, n: 7, d: 5, seed: 2)
        try checkGradient(BarlowTwins<Double>(), inputs: inputs, d: 5)
        try checkGradient(BarlowTwins<Double>(offDiagonalWeight: 0.5), inputs: inputs, d: 5, counts: [2, 5],
                          reduction: .gather)
    }

    func testWMSE() throws {
        let inputs = randomInputs(2, n: 7, d: 5, seed: 3)
        try checkGradient(WMSE<Double>(), inputs: inputs, d: 5)
        try checkGradient(WMSE<Double>(shrinkage: 0.2), inputs: inputs, d: 5, counts: [3, 0, 4])
    }

    func testWMSESubBatches() throws {
        let inputs = randomInputs(2, n: 12, d: 3, seed: 4)
        for reduction in [StatisticsReduction.statistics, .gather] {
            try checkGradient(WMSE<Double>(whiteningSize: 6), inputs: inputs, d: 3, counts: [5, 7], reduction: reduction)
        }
        try checkGradient(WMSE<Double>(shrinkage: 0.1, whiteningSize: 4), inputs: inputs, d: 3)
    }

    func testSIGRegWithRandomDirections() throws {
        let inputs = randomInputs(2, n: 7, d: 5, seed: 5)
        try checkGradient(SIGReg<Double>(directions: .random(count: 16)), inputs: inputs, d: 5)
        try checkGradient(SIGReg<Double>(directions: .random(count: 16)), inputs: [inputs[0]], d: 5, counts: [3, 0, 4])
    }

    func testLeJEPAWithLocalViews() throws {
        let inputs = randomInputs(4, n: 7, d: 5, seed: 6)
        try checkGradient(LeJEPA<Double>(directions: .random(count: 16)), inputs: inputs, d: 5)
        try checkGradient(LeJEPA<Double>(globalViewCount: 1, sigregWeight: 0.3, directions: .random(count: 8)),
                          inputs: inputs, d: 5, counts: [4, 3], reduction: .gather)
    }
}
