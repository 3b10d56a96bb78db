import Foundation
import Layers
import XCTest
import _TestSupport

/// Synchronised batch norm: N ranks on one global batch reproduce one process on it.
final class SyncBatchNormTests: XCTestCase {
    /// One process on the whole batch, reported like a rank.
    private func singleProcess() throws -> [String: [Double]] {
        try doubles(BatchNormFixture.run(on: SingleProcessCommunicator(), rows: 0..<BatchNormFixture.globalRows))
    }

    private func doubles(_ values: [String: JSONValue]) throws -> [String: [Double]] {
        try RankReport(rank: 0, size: 1, scenario: "batchnorm", values: values).doublesByKey()
    }

    /// Checks the ranks' reports (in rank order) against one process.
    private func assertMatchesSingleProcess(_ ranks: [[String: [Double]]], _ label: String,
                                            file: StaticString = #filePath, line: UInt = #line) throws {
        let reference = try singleProcess()
        for key in BatchNormFixture.keys {
            let values = ranks.map { $0[key] ?? [] }
            if BatchNormFixture.combination(of: key) == .identical {
                for (rank, value) in values.enumerated() {
                    XCTAssertEqual(value, values[0], "\(label): \(key) of rank \(rank) differs from rank 0's",
                                   file: file, line: line)
                }
            }
            assertClose(BatchNormFixture.combine(values, key: key), reference[key]!, rtol: 1e-12, atol: 1e-12,
                        "\(label): \(key)", file: file, line: line)
        }
    }

    func testInProcessRanksMatchOneProcess() throws {
        for worldSize in [2, 3, 4] {
            let reports = try runRanks(worldSize) { communicator in
                try BatchNormFixture.run(on: communicator)
            }
            try assertMatchesSingleProcess(try reports.map(doubles), "\(worldSize) in-process ranks")
        }
    }

    func testMPIRanksMatchOneProcess() throws {
        try MPIRun.requireAvailable()
        for ranks in [2, 3] {
            let reports = try MPIRun.launch(executable: "MPIHarness", ranks: ranks, arguments: ["batchnorm"], timeout: 120)
            try assertMatchesSingleProcess(try reports.map { try $0.doublesByKey() }, "mpirun -np \(ranks)")
        }
    }

    /// The fixture's split covers the batch, unevenly, with an empty rank from 3 ranks on.
    func testFixtureSplit() {
        for size in 1...4 {
            let ranges = (0..<size).map { BatchNormFixture.rows(rank: $0, size: size) }
            XCTAssertEqual(ranges.first?.lowerBound, 0)
            XCTAssertEqual(ranges.last?.upperBound, BatchNormFixture.globalRows)
            XCTAssertEqual(zip(ranges, ranges.dropFirst()).filter { $0.upperBound != $1.lowerBound }.count, 0)
            if size >= 3 { XCTAssertTrue(ranges[1].isEmpty) }
        }
    }

    /// The statistics are PyTorch's: biased batch variance to normalise, unbiased in the running
    /// variance, momentum 0.1; evaluation normalises with the running statistics.
    func testStatisticsAreThoseOfPyTorch() throws {
        let layer = BatchNorm1d<Double>(features: 2, affine: false)
        let parameters = ParameterStore<Double>(specs: layer.parameterSpecs(), seed: 0)
        let buffers = BufferStore<Double>(specs: layer.bufferSpecs(), seed: 0)
        layer.bind(parameters: parameters, buffers: buffers, prefix: "")
        let x = Tensor<Double>(shape: [4, 2], scalars: [1, 10, 2, 20, 3, 30, 6, 40])
        let y = try layer.forward(x, context: LayerContext(training: true))
        // Feature 0: mean 3, biased variance 3.5, unbiased 14/3.
        let mean0 = 3.0, variance0 = 3.5, unbiased0 = 14.0 / 3
        let mean1 = 25.0, variance1 = 125.0, unbiased1 = 500.0 / 3
        for (i, (a, b)) in [(1.0, 10.0), (2, 20), (3, 30), (6, 40)].enumerated() {
            assertClose(y[i, 0], (a - mean0) / (variance0 + 1e-5).squareRoot(), rtol: 1e-12)
            assertClose(y[i, 1], (b - mean1) / (variance1 + 1e-5).squareRoot(), rtol: 1e-12)
        }
        assertClose(buffers.value("running_mean").scalars, [0.1 * mean0, 0.1 * mean1], rtol: 1e-12)
        assertClose(buffers.value("running_var").scalars, [0.9 + 0.1 * unbiased0, 0.9 + 0.1 * unbiased1], rtol: 1e-12)

        let z = try layer.forward(x, context: LayerContext(training: false))
        let runningMean = buffers.value("running_mean"), runningVariance = buffers.value("running_var")
        for i in 0..<4 {
            for c in 0..<2 {
                assertClose(z[i, c], (x[i, c] - runningMean[c]) / (runningVariance[c] + 1e-5).squareRoot(), rtol: 1e-12)
            }
        }
        assertClose(buffers.value("running_var").scalars, [0.9 + 0.1 * unbiased0, 0.9 + 0.1 * unbiased1], rtol: 1e-12,
                    "evaluation leaves the running statistics alone")
    }

    /// Training on a global batch of one value per channel is an error, as in PyTorch.
    func testTrainingNeedsTwoValuesPerChannel() throws {
        let layer = BatchNorm1d<Float>(features: 2)
        layer.bind(parameters: ParameterStore(specs: layer.parameterSpecs(), seed: 0),
                   buffers: BufferStore(specs: layer.bufferSpecs(), seed: 0), prefix: "")
        XCTAssertThrowsError(try layer.forward(Tensor(zeros: [1, 2]), context: LayerContext(training: true))) {
            XCTAssertEqual($0 as? LayerError, .batchTooSmall(layer: "BatchNorm(2)", count: 1))
        }
        XCTAssertNoThrow(try layer.forward(Tensor(zeros: [1, 2]), context: LayerContext(training: false)))
    }

    /// Two slots (views) keep separate statistics and caches; their parameter gradients add up.
    func testSlotsKeepSeparateBatchStatistics() throws {
        func make() -> (BatchNorm1d<Double>, ParameterStore<Double>) {
            let layer = BatchNorm1d<Double>(features: 3)
            let parameters = ParameterStore<Double>(specs: layer.parameterSpecs(), seed: 0)
            layer.bind(parameters: parameters, buffers: BufferStore(specs: layer.bufferSpecs(), seed: 0), prefix: "")
            return (layer, parameters)
        }
        let view0 = randomTensor([5, 3], seed: 1, as: Double.self), view1 = randomTensor([5, 3], seed: 2, as: Double.self)
        let gradient0 = randomTensor([5, 3], seed: 3, as: Double.self), gradient1 = randomTensor([5, 3], seed: 4, as: Double.self)
        let training = LayerContext(training: true)

        let (both, bothParameters) = make()
        let y0 = try both.forward(view0, context: training.slot(0)).copy()
        let y1 = try both.forward(view1, context: training.slot(1)).copy()
        let dx1 = try both.backward(gradient1, context: training.slot(1)).copy()
        let dx0 = try both.backward(gradient0, context: training.slot(0)).copy()

        var expectedGradients = [Double](repeating: 0, count: bothParameters.count)
        for (view, gradient, y, dx) in [(view0, gradient0, y0, dx0), (view1, gradient1, y1, dx1)] {
            let (alone, parameters) = make()
            // Equal up to rounding: the shift of the sums (the running mean) has moved after view 0.
            assertClose(try alone.forward(view, context: training).scalars, y.scalars, rtol: 1e-12, atol: 1e-14)
            assertClose(try alone.backward(gradient, context: training).scalars, dx.scalars, rtol: 1e-12, atol: 1e-14)
            expectedGradients = zip(expectedGradients, parameters.gradients.scalars).map { $0 + $1 }
        }
        assertClose(bothParameters.gradients.scalars, expectedGradients, rtol: 1e-12, atol: 1e-14)
    }
}

extension RankReport {
    /// Every value as an array of `Double`s.
    func doublesByKey() throws -> [String: [Double]] {
        var result: [String: [Double]] = [:]
        for key in values.keys { result[key] = try doubles(key) }
        return result
    }
}
