import XCTest
import Tensor
import _TestSupport

final class TensorTests: XCTestCase {
    /// A storage moved into other memory keeps its elements, and every view of it (made before)
    /// reads and writes there; adopting memory takes it as it is, without a copy.
    func testMovedStorageCarriesItsViews() {
        final class Owner {
            let memory = UnsafeMutableRawPointer.allocate(byteCount: 64 * 4, alignment: 64)
            deinit { memory.deallocate() }
        }
        let owner = Owner(), other = Owner()
        let memory = owner.memory.bindMemory(to: Float.self, capacity: 64)
        let whole = Tensor<Float>(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])
        let middle = whole.rows(1 ..< 2)
        XCTAssertTrue(whole.spansStorage)
        XCTAssertFalse(middle.spansStorage)
        whole.moveStorage(to: memory, owner: owner)
        XCTAssertEqual(whole.scalars, [1, 2, 3, 4, 5, 6])
        middle[0, 0] = 30
        XCTAssertEqual(memory[2], 30)
        memory[5] = 60
        XCTAssertEqual(whole[2, 1], 60)

        let shared = other.memory.bindMemory(to: Float.self, capacity: 64)
        for i in 0 ..< 6 { shared[i] = Float(-i) }
        whole.adoptStorage(shared, owner: other)
        XCTAssertEqual(middle.scalars, [-2, -3])
        XCTAssertEqual(memory[2], 30, "the memory left behind is not written")
    }

    func testViewsShareStorage() {
        let t = Tensor<Float>(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])
        let middle = t.rows(1..<2)
        XCTAssertEqual(middle.shape, [1, 2])
        XCTAssertEqual(middle.scalars, [3, 4])
        middle[0, 1] = 40
        XCTAssertEqual(t[1, 1], 40)
        XCTAssertEqual(t.reshaped([6])[flat: 3], 40)
        let copy = t.copy()
        copy.fill(0)
        XCTAssertEqual(t[1, 1], 40)
        XCTAssertEqual(t.columnCount, 2)
        XCTAssertEqual(Tensor<Float>(zeros: [2, 3, 4]).columnCount, 12)
    }

    func testReductionsAccumulateInDouble() {
        // 2^24 + many ones: a Float accumulator would stall at 2^24.
        let n = 1 << 20
        let t = Tensor<Float>(shape: [n + 1], repeating: 1)
        t[flat: 0] = 16_777_216
        XCTAssertEqual(t.sum(), 16_777_216 + Double(n))
        let m = Tensor<Double>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(m.columnSums(), [5, 7, 9])
        XCTAssertEqual(m.squaredNorm(), 91)
        XCTAssertEqual(m.dot(m), 91)
        XCTAssertEqual(m.maxAbs(), 6)
    }

    func testElementwise() {
        let y = Tensor<Double>(shape: [2, 2], scalars: [1, 2, 3, 4])
        y.add(Tensor(shape: [2, 2], repeating: 1), scaledBy: 2)
        XCTAssertEqual(y.scalars, [3, 4, 5, 6])
        y.scale(by: 0.5)
        XCTAssertEqual(y.scalars, [1.5, 2, 2.5, 3])
        y.addToEachRow(Tensor(shape: [2], scalars: [10, 20]))
        XCTAssertEqual(y.scalars, [11.5, 22, 12.5, 23])
        XCTAssertTrue(y.allFinite())
        y[0, 0] = .nan
        XCTAssertFalse(y.allFinite())
    }
}
