import Foundation
import XCTest
import Datasets
import HDF5
import _TestSupport

/// Every kind of broken dataset is a thrown error naming the file (and the row for bad values).
final class BadInputTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = try temporaryDirectory(for: self).path
    }

    func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// A shard written by hand: `/x` of `shape` holding `values`, optional `/y`.
    func writeShard(_ name: String, shape: [Int], values: [Float], labels: [Int64]? = nil, uint8: Bool = false) throws -> String {
        let file = path(name)
        try HDF5File.withNewFile(file) { f in
            let chunks = [max(1, shape[0])] + shape.dropFirst()
            if uint8 {
                try f.createDataset("x", shape: shape, values: values.map { UInt8($0) }, chunks: chunks, gzipLevel: 1)
            } else {
                try f.createDataset("x", shape: shape, values: values, chunks: chunks, gzipLevel: 1)
            }
            if let labels { try f.createDataset("y", shape: [labels.count], values: labels) }
            try f.setAttribute("layout_version", to: .int64(1))
        }
        return file
    }

    func floats(_ count: Int) -> [Float] { (0..<count).map { Float($0 % 7) } }

    func testMissingShard() throws {
        let rows = try SyntheticData(kind: .vectors, rows: 40, features: 3).make().train
        let paths = try ShardWriter.write(rows, to: directory, name: "set", shardCount: 4,
                                          attributes: .describing(rows, source: "test"))
        try FileManager.default.removeItem(atPath: paths[2])
        assertThrowsError(try ShardedDataset(directory), containing: "set-00002-of-00004.h5", "missing shard")
        assertThrowsError(try DatasetVerifier.verify(directory), containing: "set-00002-of-00004.h5", "missing shard")
        // A manifest naming a missing file.
        try "set-00000-of-00004.h5\nnothing-here.h5\n".write(toFile: path("list.txt"), atomically: true, encoding: .utf8)
        assertThrowsError(try ShardedDataset(path("list.txt")), containing: path("nothing-here.h5"), "missing shard")
    }

    func testShardsWhoseShapeOrTypeDisagree() throws {
        _ = try writeShard("a-00000-of-00002.h5", shape: [4, 6], values: floats(24))
        let second = try writeShard("a-00001-of-00002.h5", shape: [4, 2, 3], values: floats(24))
        assertThrowsError(try ShardedDataset(directory), containing: second, "shape [2, 3]", "[6]")
        try FileManager.default.removeItem(atPath: second)
        let byteShard = try writeShard("a-00001-of-00002.h5", shape: [4, 6], values: floats(24), uint8: true)
        assertThrowsError(try ShardedDataset(directory), containing: byteShard, "uint8", "float32")
    }

    func testEmptyShard() throws {
        _ = try writeShard("e-00000-of-00002.h5", shape: [3, 2], values: floats(6))
        let empty = try writeShard("e-00001-of-00002.h5", shape: [0, 2], values: [])
        assertThrowsError(try ShardedDataset(directory), containing: empty, "empty shard")
    }

    func testLabelsOfAnotherLength() throws {
        let file = try writeShard("l-00000-of-00001.h5", shape: [5, 2], values: floats(10), labels: [0, 1, 0, 1])
        assertThrowsError(try ShardedDataset(directory), containing: file, "/y has shape [4]", "5 rows")
    }

    func testNaNAndInfinityOnReadAndInVerify() throws {
        var values = floats(30)
        values[4 * 3 + 2] = .nan
        let nanFile = try writeShard("n-00000-of-00001.h5", shape: [10, 3], values: values, labels: Array(repeating: 0, count: 10))
        let dataset = try ShardedDataset(nanFile)   // opening does not read the rows
        XCTAssertNoThrow(try dataset.read(rows: [0, 1, 9]))
        assertThrowsError(try dataset.read(rows: [9, 4]), containing: nanFile, "row 4", "nan")
        assertThrowsError(try DatasetVerifier.verify(nanFile), containing: nanFile, "row 4", "nan")

        values[4 * 3 + 2] = 0
        values[8 * 3] = -.infinity
        let infFile = try writeShard("i.h5", shape: [10, 3], values: values)
        assertThrowsError(try DatasetVerifier.verify(infFile), containing: infFile, "row 8", "-inf")
    }

    func testLabelsOutsideTheClassesFailVerification() throws {
        let file = try writeShard("c-00000-of-00001.h5", shape: [4, 2], values: floats(8), labels: [0, 1, 5, 2])
        try HDF5File.withFile(file, mode: .readWrite) { try $0.setAttribute("num_classes", to: .int64(3)) }
        assertThrowsError(try DatasetVerifier.verify(file), containing: file, "row 2", "label 5", "0..<3")
    }

    /// A label outside `num_classes`, or negative, fails when the dataset opens (it crashed the
    /// online probe mid-run before), naming the file and the row.
    func testLabelsOutsideTheClassesFailWhenTheDatasetOpens() throws {
        let file = try writeShard("o-00000-of-00001.h5", shape: [4, 2], values: floats(8), labels: [0, 1, 5, 2])
        try HDF5File.withFile(file, mode: .readWrite) { try $0.setAttribute("num_classes", to: .int64(3)) }
        assertThrowsError(try ShardedDataset(file), containing: file, "row 2", "label 5", "num_classes is 3", "0..<3")
        let negative = try writeShard("neg.h5", shape: [3, 2], values: floats(6), labels: [0, -1, 1])
        assertThrowsError(try ShardedDataset(negative), containing: negative, "row 1", "label -1")
        let fine = try writeShard("fine.h5", shape: [3, 2], values: floats(6), labels: [0, 2, 1])
        XCTAssertEqual(try ShardedDataset(fine).classCount, 3)
    }

    func testFilesThatAreNotHDF5() throws {
        var generator = CounterRandom(seed: 1).sequence()
        let junk = Data((0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) })
        _ = try writeShard("r-00000-of-00002.h5", shape: [2, 2], values: floats(4))
        try junk.write(to: URL(fileURLWithPath: path("r-00001-of-00002.h5")))
        assertThrowsError(try ShardedDataset(directory), containing: path("r-00001-of-00002.h5"), "not an HDF5 file")
        assertThrowsError(try DatasetVerifier.verify(directory), containing: path("r-00001-of-00002.h5"), "not an HDF5 file")
        // Random bytes under a name that is not .h5: neither a shard nor a manifest.
        try junk.write(to: URL(fileURLWithPath: path("junk.bin")))
        assertThrowsError(try ShardedDataset(path("junk.bin")), containing: path("junk.bin"), "not an HDF5 file")
    }

    func testAttributesThatContradictTheData() throws {
        let file = try writeShard("f-00000-of-00001.h5", shape: [3, 4], values: floats(12))
        try HDF5File.withFile(file, mode: .readWrite) { try $0.setAttribute("feature_shape", to: .int64Array([2, 2])) }
        assertThrowsError(try ShardedDataset(file), containing: file, "feature_shape")
        try HDF5File.withFile(file, mode: .readWrite) {
            try $0.setAttribute("feature_shape", to: .int64Array([4]))
            try $0.setAttribute("channel_std", to: .doubleArray([0]))
        }
        assertThrowsError(try ShardedDataset(file), containing: file, "channel_std")
    }
}
