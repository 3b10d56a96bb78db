import Foundation
import HDF5
import XCTest
import _TestSupport

final class HDF5DatasetTests: XCTestCase {
    /// Writes and reads back a dataset of every shape for one element type, contiguous and chunked.
    private func checkRoundTrip<T: HDF5Scalar & Equatable>(_: T.Type, _ make: (Int) -> T) throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("round-trip.h5").path
        let shapes: [[Int]] = [[], [5], [3, 4], [2, 3, 4], [2, 1, 3, 2], [0, 3]]
        try HDF5File.withNewFile(path) { file in
            for (index, shape) in shapes.enumerated() {
                let values = (0..<shape.reduce(1, *)).map(make)
                try file.createDataset("contiguous/\(index)", shape: shape, values: values)
                if !shape.isEmpty {
                    let chunks = shape.map { max(1, $0) }
                    try file.createDataset("chunked/\(index)", shape: shape, values: values, chunks: chunks, gzipLevel: 1)
                }
            }
        }
        try HDF5File.withFile(path) { file in
            for (index, shape) in shapes.enumerated() {
                let expected = (0..<shape.reduce(1, *)).map(make)
                for group in shape.isEmpty ? ["contiguous"] : ["contiguous", "chunked"] {
                    let read = try file.read(T.self, from: "\(group)/\(index)")
                    XCTAssertEqual(read.shape, shape, "\(T.self) \(group) \(shape)")
                    XCTAssertEqual(read.values, expected, "\(T.self) \(group) \(shape)")
                    XCTAssertEqual(try file.info("\(group)/\(index)").elementType, T.hdf5ElementType)
                }
            }
        }
    }

    func testEveryTypeRoundTripsInEveryShape() throws {
        try checkRoundTrip(Float.self) { Float($0) * 0.5 - 3 }
        try checkRoundTrip(Double.self) { Double($0) / 3 }
        try checkRoundTrip(Int64.self) { Int64($0) * 1_000_000_007 - 5 }
        try checkRoundTrip(UInt8.self) { UInt8($0 % 256) }
        try checkRoundTrip(Int32.self) { Int32($0) - 7 }
    }

    func testRowRangesAndRowListsOnChunkedCompressedDataset() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("rows.h5").path
        let rowSize = 3
        let values = (0..<(100 * rowSize)).map { Float($0) }
        func row(_ index: Int) -> [Float] { Array(values[index * rowSize..<(index + 1) * rowSize]) }
        try HDF5File.withNewFile(path) { file in
            try file.createDataset("x", of: Float.self, shape: [100, rowSize], chunks: [16, rowSize], gzipLevel: 4)
            try file.write(Array(values[..<(50 * rowSize)]), to: "x", rows: 0..<50)
            try file.write(Array(values[(50 * rowSize)...]), to: "x", rows: 50..<100)
        }
        try HDF5File.withFile(path) { file in
            let info = try file.info("x")
            XCTAssertEqual(info.shape, [100, 3])
            XCTAssertEqual(info.chunks, [16, 3])
            XCTAssertEqual(info.filters, [.gzip(level: 4)])

            let range = try file.readRows(10..<20, as: Float.self, from: "x")
            XCTAssertEqual(range.shape, [10, 3])
            XCTAssertEqual(range.values, (10..<20).flatMap(row))
            XCTAssertEqual(try file.readRows(7..<7, as: Float.self, from: "x").shape, [0, 3])

            let list = [57, 3, 3, 99, 0, 58, 56, 17]
            let picked = try file.readRows(list, as: Double.self, from: "x")
            XCTAssertEqual(picked.shape, [list.count, 3])
            XCTAssertEqual(picked.values, list.flatMap(row).map(Double.init))
            XCTAssertEqual(try file.readRows([], as: Float.self, from: "x").shape, [0, 3])
            XCTAssertEqual(try file.readRows([4, 5, 6], as: Float.self, from: "x").values, (4..<7).flatMap(row))

            assertThrowsError(try file.readRows([100], as: Float.self, from: "x"), containing: "row 100", path, "/x")
            assertThrowsError(try file.readRows(95..<101, as: Float.self, from: "x"), containing: path, "/x")
        }
    }

    /// A retained dataset stays open beside the module's per-read handles (HDF5 shares its
    /// chunk cache with them): reads return the same rows, a missing dataset is named, and the
    /// file closes cleanly once the handle is released (twice is harmless).
    func testRetainedDatasetKeepsReadsCorrectAndReleases() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("retained.h5").path
        let values = (0..<(64 * 4)).map { Float($0) }
        try HDF5File.withNewFile(path) { file in
            try file.createDataset("x", shape: [64, 4], values: values, chunks: [16, 4], gzipLevel: 4)
        }
        let file = try HDF5File.open(path)
        let retained = try file.retainDataset("x", cacheBytes: 4096)
        for rows in [[63, 0, 17], [1, 62, 16, 33], [63, 0, 17]] {
            XCTAssertEqual(try file.readRows(rows, as: Float.self, from: "x").values,
                           rows.flatMap { Array(values[($0 * 4)..<($0 * 4 + 4)]) })
        }
        assertThrowsError(try file.retainDataset("missing"), containing: path, "/missing")
        try retained.release()
        try retained.release()
        try file.close()
        XCTAssertFalse(file.isOpen)
    }

    func testReadingConvertsBetweenNumberTypes() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("convert.h5").path
        try HDF5File.withNewFile(path) { file in
            try file.createDataset("pixels", shape: [2, 2], values: [UInt8(0), 7, 128, 255])
        }
        let read = try HDF5File.withFile(path) { try $0.read(Float.self, from: "pixels") }
        XCTAssertEqual(read.values, [0, 7, 128, 255])
    }

    func testArgumentsThatDoNotFitAreErrors() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("count.h5").path
        try HDF5File.withNewFile(path) { file in
            try file.createDataset("x", of: Double.self, shape: [2, 2])
            assertThrowsError(try file.write([1.0, 2.0], to: "x"), containing: "2 values given for 4", "/x")
            assertThrowsError(try file.createDataset("x", of: Double.self, shape: [1]), containing: "already exists")
            assertThrowsError(try file.createDataset("y", of: Float.self, shape: [4], gzipLevel: 4),
                              containing: "needs chunks")
            assertThrowsError(try file.createDataset("z", of: Float.self, shape: [4], chunks: [2, 2]),
                              containing: "do not fit")
        }
    }
}

final class HDF5GroupTests: XCTestCase {
    func testGroupsAreCreatedListedAndWalked() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("groups.h5").path
        try HDF5File.withNewFile(path) { file in
            let deep = try file.createGroup("a/b/c")
            XCTAssertEqual(deep.path, "/a/b/c")
            try file.group("a").createDataset("b/values", shape: [2], values: [1.0, 2.0])
            try file.createDataset("top", shape: [], values: [Int64(42)])

            XCTAssertTrue(try file.contains("a/b/c"))
            XCTAssertTrue(try file.contains("/a/b/values"))
            XCTAssertFalse(try file.contains("a/missing/c"))
            XCTAssertFalse(try file.contains("nothing"))

            XCTAssertEqual(try file.children().map(\.name), ["a", "top"])
            XCTAssertEqual(try file.children(of: "a/b").map(\.kind), [.group, .dataset])
            XCTAssertEqual(try file.walk().map(\.path), ["/a", "/a/b", "/a/b/c", "/a/b/values", "/top"])
            XCTAssertEqual(try file.group("a").walk(from: "b").map(\.path), ["/a/b/c", "/a/b/values"])
            XCTAssertEqual(try file.read(Int64.self, from: "top").values, [42])
            assertThrowsError(try file.group("a/nope"), containing: "\"/a/nope\"", path, "no such object")
        }
    }

    func testClosedFileThrowsAndGroupsOutliveIt() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("closed.h5").path
        let file = try HDF5File.create(path)
        let group = try file.createGroup("g")
        try file.flush()
        try file.close()
        try file.close()
        XCTAssertFalse(file.isOpen)
        assertThrowsError(try file.children(), containing: "closed", path)
        try group.createDataset("still-works", shape: [1], values: [Float(1)])
    }
}
