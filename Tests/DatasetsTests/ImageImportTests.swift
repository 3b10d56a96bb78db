import XCTest
import Foundation
import HDF5
import Imaging
import Datasets
import _TestSupport

/// Image folders in (issue 18): PNG and JPEG decoding through libpng and libjpeg, channel
/// conversion and resizing against references computed here, and folders written as shards.
final class ImageImportTests: XCTestCase {
    var root = ""

    override func setUpWithError() throws { root = try temporaryDirectory(for: self).path }

    /// The fixture folder (Tests/DatasetsTests/Fixtures/images, copied as a resource).
    var fixtures: String {
        get throws { try XCTUnwrap(Bundle.module.resourcePath) + "/Fixtures/images" }
    }

    /// A deterministic pattern of `count` bytes (a hash of the index, so neighbours differ).
    static func bytes(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761 &+ seed &* 97) >> 7) }
    }

    /// Writes a PNG of raw samples with our encoder.
    func png(_ path: String, width: Int, height: Int, colourType: UInt8, bitDepth: UInt8 = 8, samples: [UInt8]) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let data = try PNGEncoder.encode(samples: samples, width: width, height: height, colourType: colourType, bitDepth: bitDepth)
        try Data(data).write(to: URL(fileURLWithPath: path))
    }

    /// The JPEG fixtures' pattern (as make_jpeg_fixtures.py writes it).
    static func jpegPattern(x: Int, y: Int, c: Int) -> Int { 20 + 8 * x + 6 * y + 40 * c }

    // MARK: Decoding

    /// Grey, RGB, grey + alpha, RGBA and 16-bit grey PNGs decode to the samples written (alpha
    /// dropped, 16 bits scaled to 8).
    func testPNGOfEveryColourTypeDecodesToItsSamples() throws {
        let (w, h) = (5, 3)
        for (colourType, channels) in [(UInt8(0), 1), (2, 3), (4, 2), (6, 4)] {
            let samples = Self.bytes(w * h * channels, seed: Int(colourType))
            let path = root + "/type\(colourType).png"
            try png(path, width: w, height: h, colourType: colourType, samples: samples)
            let image = try ImageDecoder.decode(path)
            let kept = channels == 2 || channels == 4 ? channels - 1 : channels
            XCTAssertEqual([image.width, image.height, image.channels], [w, h, kept], "colour type \(colourType)")
            let expected = (0..<(w * h)).flatMap { p in (0..<kept).map { samples[p * channels + $0] } }
            XCTAssertEqual(image.pixels, expected, "colour type \(colourType)")
        }
        let wide: [UInt16] = (0..<(w * h)).map { UInt16(truncatingIfNeeded: $0 &* 4099 &+ 77) }
        try png(root + "/grey16.png", width: w, height: h, colourType: 0, bitDepth: 16,
                samples: wide.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] })
        let image = try ImageDecoder.decode(root + "/grey16.png")
        XCTAssertEqual(image.channels, 1)
        XCTAssertEqual(image.pixels, wide.map { UInt8((Double($0) * 255 / 65535).rounded()) })
    }

    /// The JPEG fixtures decode as PIL decodes them, and close to the pattern encoded.
    func testJPEGFixturesDecodeAsPILDecodesThem() throws {
        for name in ["rgb-12x10", "rgb-progressive-12x10", "grey-8x6"] {
            let image = try ImageDecoder.decode(try fixtures + "/\(name).jpg")
            let reference = try String(contentsOfFile: try fixtures + "/\(name).pil.txt", encoding: .utf8)
                .split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
            XCTAssertEqual([image.height, image.width, image.channels], Array(reference.prefix(3)), name)
            let pil = Array(reference.dropFirst(3))
            XCTAssertEqual(pil.count, image.pixels.count, name)
            let fromPIL = zip(image.pixels, pil).map { abs(Int($0) - $1) }.max() ?? 99
            XCTAssertLessThanOrEqual(fromPIL, 1, "\(name): largest difference from PIL's decoding")
            var fromPattern = 0
            for y in 0..<image.height {
                for x in 0..<image.width {
                    for c in 0..<image.channels {
                        let value = Int(image.pixels[(y * image.width + x) * image.channels + c])
                        fromPattern = max(fromPattern, abs(value - Self.jpegPattern(x: x, y: y, c: c)))
                    }
                }
            }
            XCTAssertLessThanOrEqual(fromPattern, 8, "\(name): largest difference from the pattern encoded at quality 95")
        }
    }

    /// Truncated, corrupt, empty and non-image files throw an error naming the file and the
    /// library's reason.
    func testBrokenFilesAreNamedWithTheLibrarysReason() throws {
        try png(root + "/good.png", width: 16, height: 16, colourType: 2, samples: Self.bytes(16 * 16 * 3, seed: 1))
        let good = try Data(contentsOf: URL(fileURLWithPath: root + "/good.png"))
        try good.prefix(good.count / 2).write(to: URL(fileURLWithPath: root + "/truncated.png"))
        var corrupt = good
        corrupt[40] ^= 0xFF   // inside IDAT: the CRC no longer matches
        try corrupt.write(to: URL(fileURLWithPath: root + "/corrupt.png"))
        let jpeg = try Data(contentsOf: URL(fileURLWithPath: try fixtures + "/rgb-12x10.jpg"))
        try jpeg.prefix(jpeg.count * 2 / 3).write(to: URL(fileURLWithPath: root + "/truncated.jpg"))
        try Data([0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, 1, 2, 3]).write(to: URL(fileURLWithPath: root + "/header-only.jpg"))
        try Data().write(to: URL(fileURLWithPath: root + "/empty.png"))
        try Data("hello".utf8).write(to: URL(fileURLWithPath: root + "/text.jpg"))
        let cases = ["truncated.png": "libpng", "corrupt.png": "libpng", "truncated.jpg": "truncated",
                     "header-only.jpg": "libjpeg", "empty.png": "empty file", "text.jpg": "neither PNG nor JPEG",
                     "missing.png": "cannot open"]
        for (name, reason) in cases.sorted(by: { $0.key < $1.key }) {
            XCTAssertThrowsError(try ImageDecoder.decode(root + "/" + name), name) { error in
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix(root + "/" + name + ": "), text)
                XCTAssertTrue(text.contains(reason), "\(name): \(text)")
            }
        }
    }

    // MARK: Conversion and resizing

    /// Area averaging (shrinking), bilinear interpolation (growing) and both at once agree with
    /// a two-dimensional reference written from the definitions; grey ↔ RGB follows BT.601.
    func testResizingAndChannelConversionMatchReferences() throws {
        let source = try Image8(width: 7, height: 5, channels: 3, pixels: Self.bytes(7 * 5 * 3, seed: 5))
        func value(_ x: Int, _ y: Int, _ c: Int) -> Double { Double(source.pixels[(y * 7 + x) * 3 + c]) }
        // Area: the mean of the source over the output pixel's footprint.
        func area(_ x: Int, _ y: Int, _ c: Int, width: Int, height: Int) -> Double {
            let sx = 7.0 / Double(width), sy = 5.0 / Double(height)
            var sum = 0.0
            for j in 0..<5 {
                let oy = min(Double(j + 1), Double(y + 1) * sy) - max(Double(j), Double(y) * sy)
                for i in 0..<7 {
                    let ox = min(Double(i + 1), Double(x + 1) * sx) - max(Double(i), Double(x) * sx)
                    if ox > 0 && oy > 0 { sum += ox * oy * value(i, j, c) }
                }
            }
            return sum / (sx * sy)
        }
        // Bilinear between pixel centres, edges clamped.
        func bilinear(_ x: Int, _ y: Int, _ c: Int, width: Int, height: Int) -> Double {
            let u = min(max((Double(x) + 0.5) * 7 / Double(width) - 0.5, 0), 6)
            let v = min(max((Double(y) + 0.5) * 5 / Double(height) - 0.5, 0), 4)
            let i = Int(u), j = Int(v), fu = u - Double(i), fv = v - Double(j)
            let i1 = min(i + 1, 6), j1 = min(j + 1, 4)
            return (1 - fv) * ((1 - fu) * value(i, j, c) + fu * value(i1, j, c)) + fv * ((1 - fu) * value(i, j1, c) + fu * value(i1, j1, c))
        }
        for (width, height) in [(3, 2), (4, 4), (11, 9)] {
            let resized = try source.resized(height: height, width: width)
            for y in 0..<height {
                for x in 0..<width {
                    for c in 0..<3 {
                        let expected = width < 7 ? area(x, y, c, width: width, height: height) : bilinear(x, y, c, width: width, height: height)
                        let got = Double(resized.pixels[(y * width + x) * 3 + c])
                        XCTAssertLessThanOrEqual(abs(got - expected), 0.5 + 1e-3, "\(width)×\(height) at (\(x), \(y), \(c))")
                    }
                }
            }
        }
        // Growing one axis and shrinking the other: separable, so the reference is bilinear in
        // x of the area average in y.
        let mixed = try source.resized(height: 2, width: 10)
        let columns = try source.resized(height: 2, width: 7)
        for y in 0..<2 {
            for x in 0..<10 {
                let u = min(max((Double(x) + 0.5) * 0.7 - 0.5, 0), 6), i = Int(u), f = u - Double(i)
                let a = area(i, y, 1, width: 7, height: 2), b = area(min(i + 1, 6), y, 1, width: 7, height: 2)
                XCTAssertLessThanOrEqual(abs(Double(mixed.pixels[(y * 10 + x) * 3 + 1]) - ((1 - f) * a + f * b)), 0.5 + 1e-3)
            }
        }
        XCTAssertEqual(columns.width, 7)
        let grey = try source.converted(toChannels: 1)
        for p in 0..<35 {
            let luma = 0.299 * value(p % 7, p / 7, 0) + 0.587 * value(p % 7, p / 7, 1) + 0.114 * value(p % 7, p / 7, 2)
            XCTAssertLessThanOrEqual(abs(Double(grey.pixels[p]) - luma), 0.5 + 1e-9)
        }
        let rgb = try grey.converted(toChannels: 3)
        XCTAssertEqual(rgb.pixels, grey.pixels.flatMap { [$0, $0, $0] })
        XCTAssertEqual(rgb.channelsFirst, grey.pixels + grey.pixels + grey.pixels)
    }

    // MARK: Folders to shards

    /// An ImageFolder tree: classes sorted by name, names stored, non-images ignored, an empty
    /// class reported; pixels as encoded (grey made RGB, alpha dropped), labels by class,
    /// statistics of the rows; the same shards on 1 and 3 threads.
    func testImageFolderBecomesShardsWhateverTheThreadCount() throws {
        let folder = root + "/photos"
        var expected: [String: (pixels: [UInt8], label: Int64)] = [:]   // by file name, CHW RGB
        for (label, className) in ["a_cat", "b_dog"].enumerated() {
            for k in 0..<5 {
                let name = "\(className)-\(k).png"
                let path = "\(folder)/\(className)/\(k % 2 == 0 ? "" : "deeper/")\(name)"
                let (w, h) = (4, 3)
                switch k % 3 {
                case 0:
                    let grey = Self.bytes(w * h, seed: 10 * label + k)
                    try png(path, width: w, height: h, colourType: 0, samples: grey)
                    expected[name] = (grey + grey + grey, Int64(label))
                case 1:
                    let rgb = Self.bytes(w * h * 3, seed: 10 * label + k)
                    try png(path, width: w, height: h, colourType: 2, samples: rgb)
                    expected[name] = ((0..<3).flatMap { c in (0..<(w * h)).map { rgb[$0 * 3 + c] } }, Int64(label))
                default:
                    let rgba = Self.bytes(w * h * 4, seed: 10 * label + k)
                    try png(path, width: w, height: h, colourType: 6, samples: rgba)
                    expected[name] = ((0..<3).flatMap { c in (0..<(w * h)).map { rgba[$0 * 4 + c] } }, Int64(label))
                }
            }
        }
        try FileManager.default.createDirectory(atPath: folder + "/c_empty", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: folder + "/a_cat/.DS_Store"))
        try Data("notes".utf8).write(to: URL(fileURLWithPath: folder + "/b_dog/README.txt"))
        try Data("top".utf8).write(to: URL(fileURLWithPath: folder + "/LICENSE"))

        let listing = try ImageFolderImport.list(folder)
        XCTAssertEqual(listing.classNames, ["a_cat", "b_dog", "c_empty"])
        XCTAssertEqual(listing.emptyClasses, ["c_empty"])
        XCTAssertEqual(listing.ignoredFiles.sorted(), ["LICENSE", "a_cat/.DS_Store", "b_dog/README.txt"])
        XCTAssertEqual(listing.paths.count, 10)
        XCTAssertEqual(listing.labels, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])

        var shards: [[UInt8]] = []
        for threads in [1, 3] {
            let out = root + "/shards-\(threads)"
            let report = try ImageFolderImport.write(listing, to: out, name: "photos", trainShards: 2, testFraction: 0.2, seed: 3,
                                                     source: "test", options: ImageFolderImport.Options(channels: 3, threads: threads))
            XCTAssertEqual(report.featureShape, [3, 3, 4])
            XCTAssertEqual([report.trainRows, report.testRows], [8, 2])
            XCTAssertEqual(report.converted, 4, "the grey images (k = 0, 3 of each class)")
            var bytes: [UInt8] = []
            var trainValues: [UInt8] = []
            for path in report.trainPaths + report.testPaths {
                try HDF5File.withFile(path) { file in
                    let x = try file.read(UInt8.self, from: "x")
                    let y = try file.read(Int64.self, from: "y").values
                    XCTAssertEqual(Array(x.shape.dropFirst()), [3, 3, 4])
                    XCTAssertEqual(try file.attribute("class_names"), .stringArray(["a_cat", "b_dog", "c_empty"]))
                    XCTAssertEqual(try file.attribute("num_classes"), .int64(3))
                    XCTAssertEqual(try file.attribute("pixel_scale"), .double(1.0 / 255))
                    // Every row is one of the images, with its label.
                    for (row, label) in y.enumerated() {
                        let values = Array(x.values[(row * 36)..<((row + 1) * 36)])
                        let match = expected.first { $0.value.pixels == values }
                        XCTAssertNotNil(match, "row \(row) of \(path) is none of the images")
                        XCTAssertEqual(match?.value.label, label, "label of \(match?.key ?? "?")")
                    }
                    bytes += x.values
                    if report.trainPaths.contains(path) { trainValues += x.values }
                }
            }
            XCTAssertEqual(bytes.count, 10 * 36)
            // Every shard records the training rows' per-channel mean (of x / 255).
            let mean = try HDF5File.withFile(report.testPaths[0]) { try $0.attribute("channel_mean") }
            let rows = trainValues.count / 36
            var sums = [0, 0, 0]
            for row in 0..<rows {
                for c in 0..<3 {
                    for i in 0..<12 { sums[c] += Int(trainValues[row * 36 + c * 12 + i]) }
                }
            }
            let expectedMean = sums.map { Double($0) / Double(rows * 12) / 255 }
            guard case let .doubleArray(recorded) = mean else { return XCTFail("channel_mean is \(mean)") }
            for c in 0..<3 { XCTAssertEqual(recorded[c], expectedMean[c], accuracy: 1e-12) }
            shards.append(bytes)
        }
        XCTAssertEqual(shards[0], shards[1], "the rows do not depend on the thread count")
        let verified = try DatasetVerifier.verify(root + "/shards-1/train")
        XCTAssertEqual(verified.classNames, ["a_cat", "b_dog", "c_empty"])
        XCTAssertTrue(verified.description.contains("labels: 3 classes; rows a class: 0 (a_cat): "), verified.description)
    }

    /// Resizing in an import gives the resized images (against the reference of the resizing
    /// test, through `Image8.resized`), grey output takes BT.601 luma of colour images, and
    /// without --image-size an image of another size is named.
    func testImportResizesConvertsAndNamesAMismatchedSize() throws {
        let folder = root + "/flat"
        let rgb = Self.bytes(6 * 4 * 3, seed: 9)
        try png(folder + "/one.png", width: 6, height: 4, colourType: 2, samples: rgb)
        try png(folder + "/two.png", width: 3, height: 2, colourType: 0, samples: Self.bytes(6, seed: 2))
        let listing = try ImageFolderImport.list(folder)
        XCTAssertNil(listing.labels, "a flat folder without a labels file is unlabelled")
        let report = try ImageFolderImport.write(listing, to: root + "/out", name: "flat", trainShards: 1, testFraction: 0, seed: 0,
                                                 source: "test", options: ImageFolderImport.Options(size: [2, 3], channels: 1))
        XCTAssertEqual(report.resized, 1)
        let x = try HDF5File.withFile(report.trainPaths[0]) { try $0.read(UInt8.self, from: "x") }
        XCTAssertEqual(x.shape, [2, 1, 2, 3])
        let expected = try Image8(width: 6, height: 4, channels: 3, pixels: rgb).converted(toChannels: 1).resized(height: 2, width: 3)
        XCTAssertTrue([Array(x.values[0..<6]), Array(x.values[6..<12])].contains(expected.pixels), "\(x.values)")
        XCTAssertThrowsError(try ImageFolderImport.write(listing, to: root + "/out2", name: "flat", trainShards: 1, testFraction: 0,
                                                         seed: 0, source: "test", options: ImageFolderImport.Options())) { error in
            XCTAssertTrue("\(error)".contains("two.png: is 2×3 (H×W), the first image 4×6"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/out2/train/flat-train-00000-of-00001.h5"), "no partial shard is left")
    }

    /// A corrupt image ends the import naming it (no shard left behind); with skipBad it is
    /// skipped, reported, and the shard holds the other rows.
    func testCorruptImageIsNamedOrSkipped() throws {
        let folder = root + "/set"
        for k in 0..<6 { try png(folder + "/img\(k).png", width: 2, height: 2, colourType: 0, samples: Self.bytes(4, seed: k)) }
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0]).write(to: URL(fileURLWithPath: folder + "/img3.png"))
        let listing = try ImageFolderImport.list(folder)
        XCTAssertThrowsError(try ImageFolderImport.write(listing, to: root + "/a", name: "set", trainShards: 1, testFraction: 0, seed: 0,
                                                         source: "t", options: ImageFolderImport.Options(threads: 2))) { error in
            XCTAssertTrue("\(error)".hasPrefix(folder + "/img3.png: libpng"), "\(error)")
        }
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: root + "/a/train")) ?? [], [])
        let report = try ImageFolderImport.write(listing, to: root + "/b", name: "set", trainShards: 1, testFraction: 0, seed: 0,
                                                 source: "t", options: ImageFolderImport.Options(threads: 2, skipBad: true))
        XCTAssertEqual(report.skipped.map(\.path), [folder + "/img3.png"])
        XCTAssertEqual(report.trainRows, 5)
        let dataset = try ShardedDataset(root + "/b/train")
        XCTAssertEqual(dataset.rowCount, 5)
    }

    /// A flat folder with a labels CSV: a header line, names with sub-paths; a bad label, a
    /// missing file and a repeated file are named with the CSV's line.
    func testLabelsCSVIsReadAndBadLinesAreNamed() throws {
        let folder = root + "/flat"
        for name in ["a.png", "b.png", "sub/c.png"] {
            try png(folder + "/" + name, width: 2, height: 2, colourType: 0, samples: Self.bytes(4, seed: name.count))
        }
        try png(folder + "/extra.png", width: 2, height: 2, colourType: 0, samples: Self.bytes(4, seed: 1))
        let csv = root + "/labels.csv"
        try "filename,label\nb.png,4\n\"a.png\", 0\nsub/c.png,2\n".write(toFile: csv, atomically: true, encoding: .utf8)
        let listing = try ImageFolderImport.list(folder, labelsFile: csv)
        XCTAssertEqual(listing.paths, [folder + "/b.png", folder + "/a.png", folder + "/sub/c.png"])
        XCTAssertEqual(listing.labels, [4, 0, 2])
        XCTAssertEqual(listing.classCount, 5)
        XCTAssertEqual(listing.unlistedImages, ["extra.png"])
        for (text, problem) in [("filename,label\na.png,0\nb.png,cat\n", "line 3: label \"cat\" of b.png is not a whole number ≥ 0"),
                                ("a.png,0\nnope.png,1\n", "line 2: nope.png does not exist in \(folder)"),
                                ("a.png,0\n\nb.png,1\na.png,1\n", "line 4: a.png is listed again (first on line 1)"),
                                ("a.png;0\n", "line 1: \"a.png;0\" is not filename,label"),
                                ("a.png,-1\n", "line 1: label \"-1\" of a.png is not a whole number ≥ 0")] {
            try text.write(toFile: csv, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try ImageFolderImport.list(folder, labelsFile: csv)) { error in
                XCTAssertEqual("\(error)", "\(csv): \(problem)")
            }
        }
    }
}
