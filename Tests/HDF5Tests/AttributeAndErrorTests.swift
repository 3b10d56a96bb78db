import Foundation
import HDF5
import XCTest
import _TestSupport

final class HDF5AttributeTests: XCTestCase {
    func testAttributesRoundTripOnFilesGroupsAndDatasets() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("attributes.h5").path
        let values: [String: HDF5AttributeValue] = [
            "count": .int64(-12), "rate": .double(0.25), "ids": .int64Array([1, 2, 3]),
            "weights": .doubleArray([0.5, 1.5]), "empty": .doubleArray([]), "note": .string("héllo, wörld"),
            "labels": .stringArray(["cat", "", "dog"]),
        ]
        try HDF5File.withNewFile(path) { file in
            try file.createDataset("g/x", of: Float.self, shape: [2])
            for object in [".", "g", "g/x"] {
                for (name, value) in values {
                    try file.setAttribute(name, to: value, on: object)
                }
                try file.setAttribute("fixed", to: .string("fixed-length"), on: object, strings: .fixedLength)
                try file.setAttribute("fixedList", to: .stringArray(["a", "bcd"]), on: object, strings: .fixedLength)
            }
            try file.setAttribute("count", to: .int64(7))
        }
        try HDF5File.withFile(path) { file in
            for object in [".", "g", "g/x"] {
                XCTAssertEqual(try file.attributeNames(of: object), (Array(values.keys) + ["fixed", "fixedList"]).sorted())
                for (name, value) in values where !(object == "." && name == "count") {
                    XCTAssertEqual(try file.attribute(name, of: object), value, "\(name) of \(object)")
                }
                XCTAssertEqual(try file.attribute("fixed", of: object), .string("fixed-length"))
                XCTAssertEqual(try file.attribute("fixedList", of: object), .stringArray(["a", "bcd"]))
            }
            XCTAssertEqual(try file.attribute("count"), .int64(7))
            assertThrowsError(try file.attribute("missing", of: "g/x"), containing: "\"missing\"", "/g/x", path)
        }
    }

    func testValuesDescribeThemselvesReadably() {
        XCTAssertEqual(HDF5AttributeValue.string("a \"b\"").description, #""a \"b\"""#)
        XCTAssertEqual(HDF5AttributeValue.int64Array([1, 2]).description, "[1, 2]")
        XCTAssertEqual(HDF5AttributeValue.doubleArray((0..<20).map(Double.init)).description,
                       "[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, … (20 values)]")
    }
}

final class HDF5ErrorTests: XCTestCase {
    func testMissingFileIsNamed() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("missing.h5").path
        let error = assertThrowsError(try HDF5File.open(path), containing: path, "no such file")
        XCTAssertEqual((error as? HDF5Error)?.kind, .noSuchFile)
    }

    func testFileOfRandomBytesIsNamed() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("noise.h5").path
        var generator = SystemRandomNumberGenerator()
        let noise = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try Data(noise).write(to: URL(fileURLWithPath: path))
        let error = assertThrowsError(try HDF5File.open(path, mode: .readWrite), containing: path, "not an HDF5 file")
        XCTAssertEqual((error as? HDF5Error)?.kind, .notHDF5File)
    }

    func testCreatingOverAnExistingFileNeedsOverwrite() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("twice.h5").path
        try HDF5File.create(path).close()
        assertThrowsError(try HDF5File.create(path), containing: path, "already exists")
        try HDF5File.create(path, overwrite: true).close()
    }

    func testFailedCallsNameTheCallAndTheObject() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("calls.h5").path
        try HDF5File.withNewFile(path) { file in
            try file.createGroup("g")
            // A group is not a dataset: H5Dopen2 fails and says so.
            assertThrowsError(try file.read(Float.self, from: "g"), containing: "H5Dopen2 failed", "\"/g\"", path)
        }
        try HDF5File.withFile(path) { file in
            _ = assertThrowsError(try file.createGroup("h"), containing: "H5Gcreate2 failed", "\"/h\"", path)
        }
    }
}

final class HDF5ConcurrencyTests: XCTestCase {
    /// HDF5's error printing is per thread in thread-safe builds: a new thread must be quiet too.
    func testFailuresOnAnyThreadPrintNothing() throws {
        let directory = try temporaryDirectory(for: self)
        let path = directory.appendingPathComponent("quiet.h5").path
        _ = try HDF5File.withNewFile(path) { try $0.createGroup("g") }
        let captured = directory.appendingPathComponent("stderr.txt").path
        let capture = open(captured, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let savedStderr = dup(2)
        XCTAssertTrue(capture >= 0 && savedStderr >= 0)
        fflush(nil)
        dup2(capture, 2)
        let finished = DispatchSemaphore(value: 0)
        Thread {
            _ = try? HDF5File.withFile(path) { try $0.read(Float.self, from: "g") }
            finished.signal()
        }.start()
        finished.wait()
        fflush(nil)
        dup2(savedStderr, 2)
        close(savedStderr)
        close(capture)
        XCTAssertEqual(try String(contentsOfFile: captured, encoding: .utf8), "")
    }

    func testThreadsUsingTheirOwnFilesDoNotInterfere() throws {
        let directory = try temporaryDirectory(for: self)
        let failures = LockedFailures()
        let finished = DispatchGroup()
        for thread in 0..<4 {
            finished.enter()
            Thread {
                defer { finished.leave() }
                do {
                    for round in 0..<20 {
                        let path = directory.appendingPathComponent("thread-\(thread).h5").path
                        let values = (0..<256).map { Float(thread * 1000 + round + $0) }
                        try HDF5File.withNewFile(path, overwrite: true) { file in
                            try file.createDataset("d", shape: [64, 4], values: values, chunks: [8, 4], gzipLevel: 1)
                            try file.setAttribute("thread", to: .int64(Int64(thread)), on: "d")
                        }
                        let (rows, attribute) = try HDF5File.withFile(path) { file in
                            (try file.readRows([63, 0, 5], as: Float.self, from: "d").values,
                             try file.attribute("thread", of: "d"))
                        }
                        if rows != Array(values[252..<256] + values[0..<4] + values[20..<24])
                            || attribute != .int64(Int64(thread)) {
                            failures.append("thread \(thread) round \(round) read back wrong values")
                        }
                    }
                } catch {
                    failures.append("thread \(thread): \(error)")
                }
            }.start()
        }
        finished.wait()
        XCTAssertEqual(failures.messages, [])
    }
}

/// Failure messages collected from several threads.
private final class LockedFailures: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    func append(_ message: String) { lock.withLock { stored.append(message) } }
    var messages: [String] { lock.withLock { stored } }
}

final class HDF5TreeDescriptionTests: XCTestCase {
    func testTreeShowsNamesShapesTypesChunksAndAttributes() throws {
        let path = try temporaryDirectory(for: self).appendingPathComponent("tree.h5").path
        try HDF5File.withNewFile(path) { file in
            try file.setAttribute("version", to: .int64(2))
            try file.createDataset("train/images", of: UInt8.self, shape: [10, 4, 4, 3], chunks: [5, 4, 4, 3], gzipLevel: 4)
            try file.setAttribute("source", to: .string("cifar10"), on: "train/images")
            try file.setAttribute("mean", to: .doubleArray((0..<100).map(Double.init)), on: "train/images")
            try file.createDataset("labels", shape: [3], values: [Int64(1), 2, 3])
            try file.createDataset("step", shape: [], values: [Double(0.5)])
        }
        let tree = try HDF5File.withFile(path) { try $0.describeTree() }
        XCTAssertEqual(tree, """
            \(path)
            /
              @version = 2
              labels: int64 [3]
              step: float64 scalar
              train/
                images: uint8 [10, 4, 4, 3], chunks [5, 4, 4, 3], gzip(4)
                  @mean = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, … (100 values)]
                  @source = "cifar10"

            """)
    }
}
