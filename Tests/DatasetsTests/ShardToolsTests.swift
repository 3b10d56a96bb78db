import Foundation
import XCTest
import Datasets
import HDF5
import _TestSupport

/// make-synthetic, shard (CSV, NPY, HDF5), verify and bench, through the Datasets module.
final class ShardToolsTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = try temporaryDirectory(for: self).path
    }

    func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// Every row of a dataset, as floats, and its labels.
    func readAll(_ location: String) throws -> (features: [Float], labels: [Int64]?, dataset: ShardedDataset) {
        let dataset = try ShardedDataset(location)
        let (features, labels) = try dataset.read(rows: Array(0..<dataset.rowCount))
        return (features, labels, dataset)
    }

    /// Checks that `out/train` and `out/test` hold the rows of the seeded split of `original`.
    func assertSplit(_ out: String, name: String, original: [[Float]], labels: [Int64]?, testFraction: Double, seed: UInt64,
                     featureShape: [Int], storage: ShardedDataset.Storage, trainShards: Int,
                     file: StaticString = #filePath, line: UInt = #line) throws {
        let (trainRows, testRows) = try ShardWriter.trainTestSplit(rowCount: original.count, testFraction: testFraction, seed: seed)
        XCTAssertEqual(testRows.count, Int((Double(original.count) * testFraction).rounded()), file: file, line: line)
        XCTAssertEqual(Set(trainRows + testRows), Set(0..<original.count), file: file, line: line)
        for (split, rows) in [("train", trainRows), ("test", testRows)] {
            let (features, got, dataset) = try readAll((out as NSString).appendingPathComponent(split))
            XCTAssertEqual(dataset.rowCount, rows.count, split, file: file, line: line)
            XCTAssertEqual(dataset.featureShape, featureShape, file: file, line: line)
            XCTAssertEqual(dataset.storage, storage, file: file, line: line)
            XCTAssertEqual(dataset.shards.count, split == "train" ? trainShards : 1, file: file, line: line)
            XCTAssertTrue(dataset.shards[0].path.hasSuffix("\(name)-\(split)-00000-of-0000\(dataset.shards.count).h5"),
                          dataset.shards[0].path, file: file, line: line)
            XCTAssertEqual(features, rows.flatMap { original[$0] }, split, file: file, line: line)
            XCTAssertEqual(got, labels.map { l in rows.map { l[$0] } }, split, file: file, line: line)
            XCTAssertNoThrow(try DatasetVerifier.verify((out as NSString).appendingPathComponent(split)), file: file, line: line)
        }
    }

    // MARK: make-synthetic → verify

    func testSyntheticDatasetsVerify() throws {
        let images = try SyntheticData(kind: .images, rows: 300, testRows: 60, classes: 10, size: 16, seed: 3)
        try images.write(to: path("images"), trainShards: 3)
        let report = try DatasetVerifier.verify(path("images/train"))
        XCTAssertEqual(report.rowCount, 300)
        XCTAssertEqual(report.shards.map(\.rowCount), [100, 100, 100])
        XCTAssertEqual(report.featureShape, [1, 16, 16])
        XCTAssertEqual(report.storage, .uint8)
        XCTAssertEqual(report.labelHistogram?.count, 10)
        XCTAssertEqual(report.labelHistogram?.reduce(0, +), 300)
        XCTAssertTrue(report.description.contains("rows 300 in 3 shards"), report.description)
        let test = try DatasetVerifier.verify(path("images/test"))
        XCTAssertEqual(test.rowCount, 60)
        XCTAssertEqual(test.normalization, report.normalization, "the test split records the training statistics")
        // The statistics are those of the training rows.
        let (features, _, dataset) = try readAll(path("images/train"))
        let scaled = features.map { Double($0) / 255 }
        let mean = scaled.reduce(0, +) / Double(scaled.count)
        let std = (scaled.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(scaled.count)).squareRoot()
        assertClose(dataset.normalization.mean[0], mean, rtol: 1e-9)
        assertClose(dataset.normalization.standardDeviation[0], std, rtol: 1e-9)
        // The same settings make the same rows.
        XCTAssertEqual(images.make().train, try SyntheticData(kind: .images, rows: 300, testRows: 60, classes: 10, size: 16, seed: 3).make().train)

        let vectors = try SyntheticData(kind: .vectors, rows: 200, classes: 5, features: 8, seed: 1)
        try vectors.write(to: path("vectors"), trainShards: 2)
        let vectorReport = try DatasetVerifier.verify(path("vectors/train"))
        XCTAssertEqual(vectorReport.featureShape, [8])
        XCTAssertEqual(vectorReport.storage, .float32)
        XCTAssertEqual(vectorReport.normalization.mean.count, 8, "vectors are standardised per feature")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("vectors/test")))
        // Writing again over existing shards needs overwrite.
        assertThrowsError(try vectors.write(to: path("vectors"), trainShards: 2), containing: path("vectors/train"), "--overwrite")
        XCTAssertNoThrow(try vectors.write(to: path("vectors"), trainShards: 4, overwrite: true))
        XCTAssertEqual(try ShardedDataset(path("vectors/train")).shards.count, 4)
    }

    // MARK: shard: CSV

    func testShardFromCSVRoundTrips() throws {
        // Integers 0...255 with a header and the label last → uint8.
        let original = (0..<50).map { r in (0..<6).map { c in Float((r * 7 + c * 31) % 256) } }
        let labels = (0..<50).map { Int64($0 % 3) }
        var text = "a,b,c,d,e,f,label\n"
        for (row, label) in zip(original, labels) { text += row.map { String(Int($0)) }.joined(separator: ",") + ",\(label)\n" }
        try text.write(toFile: path("bytes.csv"), atomically: true, encoding: .utf8)
        let rows = try ArrayImport.rowsFromCSV(path("bytes.csv"), labelColumn: .last)
        XCTAssertEqual(rows.values.storage, .uint8)
        try ShardWriter.writeSplit(rows, to: path("csv"), name: "bytes", trainShards: 2, testFraction: 0.2, seed: 7, source: "test")
        try assertSplit(path("csv"), name: "bytes", original: original, labels: labels, testFraction: 0.2, seed: 7,
                        featureShape: [6], storage: .uint8, trainShards: 2)

        // Floats, no header, label first, reshaped → float32.
        let floats = (0..<20).map { r in (0..<4).map { c in Float(r) * 0.5 - Float(c) * 1.25 } }
        text = zip(floats, labels).map { row, label in "\(label)," + row.map { "\($0)" }.joined(separator: ", ") }.joined(separator: "\n")
        try text.write(toFile: path("floats.csv"), atomically: true, encoding: .utf8)
        let floatRows = try ArrayImport.rowsFromCSV(path("floats.csv"), labelColumn: .first, featureShape: [1, 2, 2])
        try ShardWriter.writeSplit(floatRows, to: path("csv2"), name: "floats", trainShards: 1, testFraction: 0.25, seed: 1, source: "test")
        try assertSplit(path("csv2"), name: "floats", original: floats, labels: Array(labels.prefix(20)), testFraction: 0.25,
                        seed: 1, featureShape: [1, 2, 2], storage: .float32, trainShards: 1)

        // Without labels.
        let unlabelled = try ArrayImport.rowsFromCSV(path("floats.csv"), labelColumn: .none)
        XCTAssertNil(unlabelled.labels)
        XCTAssertEqual(unlabelled.featureShape, [5])

        // Bad values name the file and the row.
        try "1,2,3\n4,x,6\n".write(toFile: path("bad.csv"), atomically: true, encoding: .utf8)
        assertThrowsError(try ArrayImport.rowsFromCSV(path("bad.csv")), containing: path("bad.csv"), "line 2", "row 1", "\"x\"")
        try "1,2,3\n4,5\n".write(toFile: path("ragged.csv"), atomically: true, encoding: .utf8)
        assertThrowsError(try ArrayImport.rowsFromCSV(path("ragged.csv")), containing: path("ragged.csv"), "row 1")
        try "1,2,3\n4,nan,1\n".write(toFile: path("nan.csv"), atomically: true, encoding: .utf8)
        assertThrowsError(try ArrayImport.rowsFromCSV(path("nan.csv")), containing: path("nan.csv"), "row 1", "nan")
        try "1,2,-1\n".write(toFile: path("label.csv"), atomically: true, encoding: .utf8)
        assertThrowsError(try ArrayImport.rowsFromCSV(path("label.csv")), containing: path("label.csv"), "label -1")
    }

    // MARK: shard: NPY

    /// A `.npy` file (version 1) of `shape` and dtype `descr` holding `bytes`.
    func writeNumPy(_ name: String, descr: String, shape: [Int], bytes: [UInt8], fortran: Bool = false) throws -> String {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(shapeText), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var data = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)])
        data.append(contentsOf: Array(header.utf8))
        data.append(contentsOf: bytes)
        try data.write(to: URL(fileURLWithPath: path(name)))
        return path(name)
    }

    func bytes<T>(_ values: [T]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }

    /// Traps of issue 18: an `(N, H, W)` array is 1-channel images (not vectors, which no crop
    /// or rotation touches) unless a feature shape says otherwise; 8-bit data within 0…16 get
    /// pixel scale 1/16, so that augmentation strengths are fractions of the data's own range.
    func testImageArraysAndSmallIntegerRangesAreNotSilentTraps() throws {
        let digits = (0..<20 * 8 * 8).map { UInt8($0 % 17) }
        let x = try writeNumPy("digits.npy", descr: "|u1", shape: [20, 8, 8], bytes: digits)
        let rows = try ArrayImport.rowsFromNumPy(features: x, labels: nil)
        XCTAssertEqual(rows.featureShape, [1, 8, 8])
        XCTAssertEqual(try ArrayImport.rowsFromNumPy(features: x, labels: nil, featureShape: [64]).featureShape, [64])
        let scale = ShardWriter.pixelScale(of: rows)
        XCTAssertEqual(scale.scale, 1.0 / 16)
        XCTAssertTrue(scale.note?.contains("0…16") ?? false, "\(scale)")
        XCTAssertEqual(ShardWriter.Attributes.describing(rows, source: "test").pixelScale, 1.0 / 16)
        let full = try ArrayImport.rowsFromNumPy(
            features: try writeNumPy("full.npy", descr: "|u1", shape: [4, 2, 2], bytes: (0..<16).map { UInt8($0 * 17) }), labels: nil)
        XCTAssertEqual(ShardWriter.pixelScale(of: full).scale, 1.0 / 255)
        XCTAssertNil(ShardWriter.pixelScale(of: full).note)
    }

    func testShardFromNumPyRoundTrips() throws {
        // |u1 images with <i8 labels.
        let images = (0..<30).map { r in (0..<12).map { c in Float((r * 13 + c) % 256) } }
        let labels = (0..<30).map { Int64($0 % 4) }
        let x = try writeNumPy("x.npy", descr: "|u1", shape: [30, 1, 3, 4], bytes: images.flatMap { $0 }.map { UInt8($0) })
        let y = try writeNumPy("y.npy", descr: "<i8", shape: [30], bytes: bytes(labels))
        let rows = try ArrayImport.rowsFromNumPy(features: x, labels: y)
        XCTAssertEqual(rows.featureShape, [1, 3, 4])
        try ShardWriter.writeSplit(rows, to: path("npy"), name: "digits", trainShards: 3, testFraction: 0.2, seed: 11, source: "test")
        try assertSplit(path("npy"), name: "digits", original: images, labels: labels, testFraction: 0.2, seed: 11,
                        featureShape: [1, 3, 4], storage: .uint8, trainShards: 3)

        // <f8 and <f4 features become float32; a feature shape reshapes.
        let doubles = (0..<10).map { r in (0..<6).map { c in Double(r) - Double(c) / 8 } }
        let f8 = try writeNumPy("f8.npy", descr: "<f8", shape: [10, 6], bytes: bytes(doubles.flatMap { $0 }))
        let fromDoubles = try ArrayImport.rowsFromNumPy(features: f8, labels: nil, featureShape: [2, 3])
        XCTAssertEqual(fromDoubles.values, .float32(doubles.flatMap { $0 }.map { Float($0) }))
        XCTAssertEqual(fromDoubles.featureShape, [2, 3])
        let f4 = try writeNumPy("f4.npy", descr: "<f4", shape: [10, 6], bytes: bytes(doubles.flatMap { $0 }.map { Float($0) }))
        XCTAssertEqual(try ArrayImport.rowsFromNumPy(features: f4, labels: nil).values, fromDoubles.values)

        // Errors name the file.
        let fortran = try writeNumPy("fortran.npy", descr: "<f4", shape: [2, 2], bytes: bytes([Float](repeating: 0, count: 4)), fortran: true)
        assertThrowsError(try ArrayImport.rowsFromNumPy(features: fortran, labels: nil), containing: fortran, "Fortran")
        let bigEndian = try writeNumPy("be.npy", descr: ">f4", shape: [2, 2], bytes: bytes([Float](repeating: 0, count: 4)))
        assertThrowsError(try ArrayImport.rowsFromNumPy(features: bigEndian, labels: nil), containing: bigEndian, ">f4")
        let short = try writeNumPy("short.npy", descr: "<f4", shape: [4, 2], bytes: bytes([Float](repeating: 0, count: 4)))
        assertThrowsError(try ArrayImport.rowsFromNumPy(features: short, labels: nil), containing: short, "bytes")
        let fewLabels = try writeNumPy("few.npy", descr: "<i8", shape: [29], bytes: bytes(Array(labels.prefix(29))))
        assertThrowsError(try ArrayImport.rowsFromNumPy(features: x, labels: fewLabels), containing: fewLabels, "30 rows")
        let nan = try writeNumPy("nan.npy", descr: "<f4", shape: [2, 2], bytes: bytes([0, 0, 0, Float.nan]))
        assertThrowsError(try ArrayImport.rowsFromNumPy(features: nan, labels: nil), containing: nan, "row 1", "nan")
        try Data("hello".utf8).write(to: URL(fileURLWithPath: path("text.npy")))
        assertThrowsError(try ArrayImport.rowsFromNumPy(features: path("text.npy"), labels: nil), containing: path("text.npy"), "NUMPY")
    }

    // MARK: shard: HDF5

    func testShardFromHDF5RoundTrips() throws {
        let original = (0..<25).map { r in (0..<5).map { c in Float(r * 5 + c) / 3 } }
        let labels = (0..<25).map { Int64(($0 * 7) % 5) }
        let input = path("input.h5")
        try HDF5File.withNewFile(input) { file in
            try file.createDataset("features", shape: [25, 5], values: original.flatMap { $0 })
            try file.createDataset("targets", shape: [25], values: labels.map { Int32($0) })
        }
        let rows = try ArrayImport.rowsFromHDF5(input, features: "features", labels: "targets")
        try ShardWriter.writeSplit(rows, to: path("h5"), name: "table", trainShards: 2, testFraction: 0.2, seed: 5, source: "test")
        try assertSplit(path("h5"), name: "table", original: original, labels: labels, testFraction: 0.2, seed: 5,
                        featureShape: [5], storage: .float32, trainShards: 2)
        // Missing datasets and non-HDF5 input name the file.
        assertThrowsError(try ArrayImport.rowsFromHDF5(input), containing: input, "no dataset /x")
        try Data(repeating: 7, count: 100).write(to: URL(fileURLWithPath: path("fake.h5")))
        assertThrowsError(try ArrayImport.rowsFromHDF5(path("fake.h5")), containing: path("fake.h5"), "not an HDF5 file")
        // No labels dataset: unlabelled rows.
        XCTAssertNil(try ArrayImport.rowsFromHDF5(input, features: "features", labels: "y").labels)
    }

    // MARK: The shipped dataset and the benchmark

    func testShippedMNIST5kVerifies() throws {
        let train = try DatasetVerifier.verify(ShippedDatasetTests.root.appendingPathComponent("train").path)
        XCTAssertEqual(train.rowCount, 4000)
        XCTAssertEqual(train.labelHistogram, Array(repeating: 400, count: 10))
        XCTAssertEqual(train.valueRange, 0...255)
        let test = try DatasetVerifier.verify(ShippedDatasetTests.root.appendingPathComponent("test").path)
        XCTAssertEqual(test.rowCount, 1000)
        XCTAssertEqual(test.labelHistogram, Array(repeating: 100, count: 10))
    }

    func testBenchmarkCountsRows() throws {
        let dataset = try ShardedDataset(ShippedDatasetTests.root.appendingPathComponent("test").path)
        for augment in [false, true] {
            let result = try DataBenchmark.run(dataset: dataset, globalBatchSize: 32, steps: 2, augment: augment)
            XCTAssertEqual(result.rows, 64)
            XCTAssertGreaterThan(result.rowsPerSecond, 0)
            assertClose(result.megabytesPerSecond, result.rowsPerSecond * 784 / 1e6, rtol: 1e-9)
        }
    }
}
