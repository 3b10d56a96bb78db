import XCTest
import Layers
import Optimizers
import _TestSupport

final class GradientSyncTests: XCTestCase {
    /// A store of 3 parameters, 13 scalars, of any scalar type.
    static func makeStore<Scalar: TensorScalar>(_: Scalar.Type) -> ParameterStore<Scalar> {
        ParameterStore<Scalar>(specs: [
            ParameterSpec(name: "encoder.0.weight", shape: [3, 3], role: .weight, initializer: .normal(std: 1)),
            ParameterSpec(name: "encoder.0.bias", shape: [3], role: .bias, initializer: .zeros),
            ParameterSpec(name: "bn.weight", shape: [1], role: .normalization, initializer: .ones),
        ], seed: 7)
    }

    /// Rank `rank`'s contribution to the gradient: distinct per rank and element.
    static func contribution(rank: Int, count: Int) -> [Double] {
        (0..<count).map { i in Double(rank + 1) * 0.1 + Double(i) * 0.01 - 0.05 }
    }

    func testSingleProcessAllReduceIsTheIdentityAndCountsBytes() throws {
        let store = Self.makeStore(Float.self)
        let contribution = Self.contribution(rank: 0, count: store.count).map { Float($0) }
        store.gradients.copy(from: Tensor(shape: [store.count], scalars: contribution))
        let synchronizer = GradientSynchronizer(parameters: store, communicator: SingleProcessCommunicator())
        XCTAssertEqual(synchronizer.buckets, [0..<13])
        XCTAssertEqual(try synchronizer.allReduceGradients(), 13 * 4)
        XCTAssertEqual(store.gradients.scalars, contribution)
        XCTAssertEqual(try synchronizer.allReduceGradients(scale: 0.5), 13 * 4)
        XCTAssertEqual(store.gradients.scalars, contribution.map { $0 * 0.5 })
        XCTAssertEqual(synchronizer.bytesCommunicated, 2 * 13 * 4)
        XCTAssertEqual(synchronizer.collectiveCalls, 2)
    }

    func testBucketsCoverTheBufferInOrder() {
        let store = Self.makeStore(Double.self)
        let communicator = SingleProcessCommunicator()
        // 40 bytes hold 5 Doubles: 13 = 5 + 5 + 3.
        let bucketed = GradientSynchronizer(parameters: store, communicator: communicator, bucketByteCount: 40)
        XCTAssertEqual(bucketed.buckets, [0..<5, 5..<10, 10..<13])
        XCTAssertEqual(bucketed.bytesPerStep, 13 * 8)
        // A bucket size that is not a multiple of the scalar rounds down; one larger than the buffer is one call.
        XCTAssertEqual(GradientSynchronizer(parameters: store, communicator: communicator, bucketByteCount: 47).buckets,
                       [0..<5, 5..<10, 10..<13])
        XCTAssertEqual(GradientSynchronizer(parameters: store, communicator: communicator, bucketByteCount: 1 << 20).buckets,
                       [0..<13])
    }

    // MARK: In-process ranks

    func testSummedGradientsEqualTheSumOfPerRankContributions() throws {
        for worldSize in 2...4 {
            let count = GradientSyncTests.makeStore(Float.self).count
            let results = try ThreadCommunicator.run(worldSize: worldSize) { communicator -> ([Float], Int) in
                let store = GradientSyncTests.makeStore(Float.self)
                let contribution = GradientSyncTests.contribution(rank: communicator.rank, count: store.count)
                store.gradients.copy(from: Tensor(shape: [store.count], scalars: contribution.map { Float($0) }))
                let synchronizer = GradientSynchronizer(parameters: store, communicator: communicator)
                let bytes = try synchronizer.allReduceGradients()
                return (store.gradients.scalars, bytes)
            }
            var expected = [Double](repeating: 0, count: count)
            for rank in 0..<worldSize {
                for (i, g) in GradientSyncTests.contribution(rank: rank, count: count).enumerated() { expected[i] += g }
            }
            for (rank, (gradients, bytes)) in results.enumerated() {
                assertClose(gradients, expected, rtol: 1e-6, "world size \(worldSize), rank \(rank)")
                XCTAssertEqual(gradients, results[0].0, "ranks disagree")
                XCTAssertEqual(bytes, count * MemoryLayout<Float>.stride)
            }
        }
    }

    func testBucketsGiveTheResultOfOneCall() throws {
        for worldSize in [2, 3] {
            let results = try ThreadCommunicator.run(worldSize: worldSize) { communicator -> [[Float]] in
                // 12-byte buckets (3 Floats) and 1 byte short of the buffer: 5 calls and 2 calls.
                try [nil, 12, 13 * 4 - 1].map { bucketByteCount -> [Float] in
                    let store = GradientSyncTests.makeStore(Float.self)
                    let contribution = GradientSyncTests.contribution(rank: communicator.rank, count: store.count)
                    store.gradients.copy(from: Tensor(shape: [store.count], scalars: contribution.map { Float($0) }))
                    let synchronizer = GradientSynchronizer(parameters: store, communicator: communicator,
                                                            bucketByteCount: bucketByteCount)
                    try synchronizer.allReduceGradients(scale: 0.25)
                    return store.gradients.scalars
                }
            }
            for perRank in results {
                XCTAssertEqual(perRank[1], perRank[0], "12-byte buckets, world size \(worldSize)")
                XCTAssertEqual(perRank[2], perRank[0], "2 buckets, world size \(worldSize)")
                XCTAssertEqual(perRank[0], results[0][0], "ranks disagree")
            }
        }
    }

    /// The contract the sum rests on: each rank's gradient is its rows' share of the gradient
    /// of the global-batch loss, so N ranks + sum + one LARS step equal one process on the whole
    /// batch (to rounding), and averaging instead would shrink the gradient N-fold.
    func testDataParallelStepReproducesTheSingleProcessStep() throws {
        // loss = (1 / B) Σ_rows ½ (w · x − y)², B = 12 rows, split over the ranks.
        let globalBatch = 12, dimension = 3
        let inputs = (0..<globalBatch * dimension).map { Double(($0 * 7) % 11) / 11 - 0.4 }
        let targets = (0..<globalBatch).map { Double(($0 * 5) % 7) / 7 - 0.5 }
        @Sendable func makeStore() -> ParameterStore<Double> {
            ParameterStore<Double>(specs: [
                ParameterSpec(name: "w", shape: [dimension], role: .weight, initializer: .normal(std: 1)),
                ParameterSpec(name: "b", shape: [1], role: .bias, initializer: .uniform(bound: 1)),
            ], seed: 3)
        }
        /// Adds the gradient contribution of `rows` to the store's gradients.
        @Sendable func accumulateGradient(_ store: ParameterStore<Double>, rows: Range<Int>) {
            let w = store.value("w"), b = store.value("b"), gw = store.gradient("w"), gb = store.gradient("b")
            for row in rows {
                var residual = b[0] - targets[row]
                for j in 0..<dimension { residual += w[j] * inputs[row * dimension + j] }
                for j in 0..<dimension { gw[j] += residual * inputs[row * dimension + j] / Double(globalBatch) }
                gb[0] += residual / Double(globalBatch)
            }
        }
        @Sendable func step(_ store: ParameterStore<Double>, _ synchronizer: GradientSynchronizer<Double>,
                            rows: Range<Int>, scale: Double) throws -> [Double] {
            let lars = try LARS(parameters: store, learningRate: 0.5, weightDecay: 1e-3, eta: 0.02)
            for _ in 0..<3 {
                store.zeroGradients()
                accumulateGradient(store, rows: rows)
                try synchronizer.allReduceGradients(scale: scale)
                lars.step()
            }
            return store.values.scalars
        }
        let single = makeStore()
        let reference = try step(single, GradientSynchronizer(parameters: single, communicator: SingleProcessCommunicator()),
                                 rows: 0..<globalBatch, scale: 1)
        for worldSize in [2, 3, 4] {
            for scaleByWorldSize in [false, true] {
                let results = try ThreadCommunicator.run(worldSize: worldSize) { communicator -> [Double] in
                    let store = makeStore()
                    let perRank = globalBatch / worldSize, start = communicator.rank * perRank
                    return try step(store, GradientSynchronizer(parameters: store, communicator: communicator),
                                    rows: start..<(start + perRank), scale: scaleByWorldSize ? 1 / Double(worldSize) : 1)
                }
                for values in results {
                    if scaleByWorldSize {
                        XCTAssertGreaterThan(relativeNormError(values, reference), 1e-3, "averaging should be wrong")
                    } else {
                        assertClose(values, reference, rtol: 1e-12, atol: 1e-14, "world size \(worldSize)")
                    }
                }
            }
        }
    }
}
