import XCTest
import Datasets
import _TestSupport

/// The shipped MNIST-5k shards open, agree and read by rows.
final class ShippedDatasetTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("datasets/mnist5k")

    func testMNIST5kOpensWithItsLayout() throws {
        let train = try ShardedDataset(Self.root.appendingPathComponent("train").path)
        XCTAssertEqual(train.rowCount, 4000)
        XCTAssertEqual(train.shards.count, 4)
        XCTAssertEqual(train.featureShape, [1, 28, 28])
        XCTAssertEqual(train.storage, .uint8)
        XCTAssertEqual(train.classCount, 10)
        assertClose(train.normalization.pixelScale, 1.0 / 255)
        let test = try ShardedDataset(Self.root.appendingPathComponent("test").path)
        XCTAssertEqual(test.rowCount, 1000)

        // Rows across shard boundaries, out of order, come back in the order asked.
        let rows = [3999, 0, 1000, 999, 2500, 0]
        let (features, labels) = try train.read(rows: rows)
        XCTAssertEqual(features.count, rows.count * 784)
        XCTAssertEqual(labels?.count, rows.count)
        XCTAssertEqual(Array(features[(5 * 784)..<(6 * 784)]), Array(features[(1 * 784)..<(2 * 784)]))
        XCTAssertEqual(labels?[5], labels?[1])
        XCTAssertTrue(features.allSatisfy { $0 >= 0 && $0 <= 255 })
        XCTAssertEqual(train.rowsRead, rows.count)
    }
}
