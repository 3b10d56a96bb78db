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
}
