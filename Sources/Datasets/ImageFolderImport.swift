import Dispatch
import Foundation
import HDF5
import Imaging

/// Reads a folder of PNG and JPEG images into shards of the layout of ``ShardedDataset``
/// (`anticollapse dataset shard FOLDER`).
///
/// Three layouts:
/// - **ImageFolder**: one sub-folder a class (`FOLDER/cat/001.png`, images may sit deeper);
///   classes sorted by name are labels 0, 1, …, and their names are written as the shards'
///   `class_names` attribute.
/// - **Flat folder with a labels CSV**: `filename,label` lines, the file names relative to the
///   folder, labels whole numbers ≥ 0; a first line whose label is not a number is a header.
/// - **Flat folder without labels**: every image, unlabelled (self-supervised training needs
///   no labels).
///
/// Images are decoded by libpng and libjpeg (``ImageDecoder``), converted to the channels asked
/// for, resized (``Image8/resized(height:width:)``) and stored as `uint8` `C × H × W` rows with
/// `pixel_scale` 1/255. Decoding runs on several threads a block of rows at a time, and each
/// block is written before the next is decoded, so memory holds one block, not the dataset;
/// the rows' order does not depend on the thread count.
public enum ImageFolderImport {
    /// The images found and their labels, before any is decoded.
    public struct Listing: Sendable, Equatable {
        /// The folder listed.
        public var folder: String
        /// The image files, in row order: class by class (classes sorted by name), sorted by
        /// path within a class; in a flat folder sorted by name, or in the labels file's order.
        public var paths: [String]
        /// One label an image, or nil (a flat folder without a labels file).
        public var labels: [Int64]?
        /// The class folders' names, label `i` the `i`-th (ImageFolder layout), or nil.
        public var classNames: [String]?
        /// Files ignored: not `.png`, `.jpg` or `.jpeg` by name (`.DS_Store`, `README.txt`), or
        /// beside the class folders; relative to the folder.
        public var ignoredFiles: [String]
        /// Class folders that hold no image (their labels have no rows).
        public var emptyClasses: [String]
        /// Images in the folder that the labels file does not name (not read).
        public var unlistedImages: [String]

        /// The number of classes: the class folders, or the largest label + 1.
        public var classCount: Int? { classNames?.count ?? labels.map { Int($0.max() ?? -1) + 1 } }
    }

    /// How images become rows.
    public struct Options: Sendable, Equatable {
        /// The stored height and width, or nil for the first image's (then every image must
        /// have that size).
        public var size: [Int]?
        /// 1 (grey) or 3 (RGB), or nil for the first image's.
        public var channels: Int?
        /// Threads decoding at once (at least 1).
        public var threads: Int
        /// Whether an image that cannot be decoded is skipped (and reported) instead of ending
        /// the import with an error.
        public var skipBad: Bool

        public init(size: [Int]? = nil, channels: Int? = nil, threads: Int = 1, skipBad: Bool = false) {
            self.size = size; self.channels = channels; self.threads = threads; self.skipBad = skipBad
        }
    }

    /// What an import wrote.
    public struct Report: Sendable {
        /// `[channels, height, width]`.
        public var featureShape: [Int]
        public var trainPaths: [String]
        public var testPaths: [String]
        public var trainRows: Int
        public var testRows: Int
        /// Images skipped (with `skipBad`): the path and the decoder's reason, in row order.
        public var skipped: [(path: String, reason: String)]
        /// Images whose channels were converted (grey ↔ RGB), and images resized.
        public var converted: Int
        public var resized: Int
    }

    // MARK: Listing

    /// Lists the images of `folder`: with `labelsFile` a flat folder labelled by that CSV;
    /// otherwise the ImageFolder layout when the folder has sub-folders, a flat unlabelled
    /// folder when it has none.
    ///
    /// - Throws: ``DatasetError/file(path:problem:)`` naming the folder when it is not one or
    ///   holds no image, or the labels file and its line for a line that is not
    ///   `filename,label`, a label that is not a whole number ≥ 0, a file that is missing,
    ///   not an image by name, or listed twice.
    public static func list(_ folder: String, labelsFile: String? = nil) throws -> Listing {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DatasetError.file(path: folder, problem: "not a directory")
        }
        let files = filesBelow(folder)
        var listing = Listing(folder: folder, paths: [], labels: nil, classNames: nil, ignoredFiles: [], emptyClasses: [],
                              unlistedImages: [])
        func path(_ relative: String) -> String { (folder as NSString).appendingPathComponent(relative) }
        if let labelsFile {
            let entries = try readLabels(labelsFile, folder: folder)
            let listed = Set(entries.map(\.name))
            listing.paths = entries.map { path($0.name) }
            listing.labels = entries.map(\.label)
            let labelsName = (labelsFile as NSString).standardizingPath
            for file in files where !listed.contains(file) && (path(file) as NSString).standardizingPath != labelsName {
                if ImageFileFormat.hasImageExtension(file) { listing.unlistedImages.append(file) } else { listing.ignoredFiles.append(file) }
            }
        } else {
            let classes = classFolders(folder)
            if classes.isEmpty {
                for file in files {
                    if ImageFileFormat.hasImageExtension(file) { listing.paths.append(path(file)) } else { listing.ignoredFiles.append(file) }
                }
            } else {
                listing.classNames = classes
                // The files of each top-level folder, in one pass (sorted paths stay sorted).
                var byFolder: [String: [String]] = [:]
                for file in files {
                    if let slash = file.firstIndex(of: "/") { byFolder[String(file[..<slash]), default: []].append(file) }
                }
                var labels: [Int64] = []
                for (label, name) in classes.enumerated() {
                    let inside = byFolder[name] ?? []
                    let images = inside.filter(ImageFileFormat.hasImageExtension)
                    if images.isEmpty { listing.emptyClasses.append(name) }
                    listing.paths += images.map(path)
                    labels += Array(repeating: Int64(label), count: images.count)
                    listing.ignoredFiles += inside.filter { !ImageFileFormat.hasImageExtension($0) }
                }
                listing.labels = labels
                listing.ignoredFiles += files.filter { !$0.contains("/") }
            }
        }
        guard !listing.paths.isEmpty else {
            throw DatasetError.file(path: folder, problem: "holds no PNG or JPEG images (.png, .jpg, .jpeg)"
                                    + (listing.classNames.map { " in its class folders \($0.joined(separator: ", "))" } ?? ""))
        }
        return listing
    }

    /// The regular files below `folder` (following links), relative to it, sorted; hidden
    /// folders (`.git`) are not entered.
    static func filesBelow(_ folder: String) -> [String] {
        var files: [String] = []
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return [] }
        while let relative = walker.nextObject() as? String {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(relative), isDirectory: &isDirectory) else { continue }
            if isDirectory.boolValue {
                if (relative as NSString).lastPathComponent.hasPrefix(".") { walker.skipDescendants() }
            } else {
                files.append(relative)
            }
        }
        return files.sorted()
    }

    /// The sub-folders of `folder` (not hidden), sorted by name.
    static func classFolders(_ folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.filter { name in
            var isDirectory: ObjCBool = false
            return !name.hasPrefix(".")
                && FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(name), isDirectory: &isDirectory)
                && isDirectory.boolValue
        }.sorted()
    }

    /// The `filename,label` lines of a labels CSV (see ``list(_:labelsFile:)``). The label is
    /// after the last comma, so file names may hold commas; a name may be double-quoted.
    static func readLabels(_ csv: String, folder: String) throws -> [(name: String, label: Int64)] {
        let data = try ArrayImport.contents(of: csv)
        guard let text = String(data: data, encoding: .utf8) else { throw DatasetError.file(path: csv, problem: "not a UTF-8 text file") }
        var entries: [(name: String, label: Int64)] = []
        var firstLine: [String: Int] = [:]
        var sawLine = false
        for (index, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let lineNumber = index + 1
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            func fail(_ problem: String) -> DatasetError { .file(path: csv, problem: "line \(lineNumber): \(problem)") }
            guard let comma = trimmed.lastIndex(of: ",") else { throw fail("\"\(trimmed)\" is not filename,label") }
            var name = trimmed[..<comma].trimmingCharacters(in: .whitespaces)
            if name.count >= 2 && name.hasPrefix("\"") && name.hasSuffix("\"") { name = String(name.dropFirst().dropLast()) }
            let labelText = trimmed[trimmed.index(after: comma)...].trimmingCharacters(in: .whitespaces)
            let isHeader = !sawLine && Int64(labelText) == nil
            sawLine = true
            if isHeader { continue }
            guard let label = Int64(labelText), label >= 0 else { throw fail("label \"\(labelText)\" of \(name) is not a whole number ≥ 0") }
            guard !name.isEmpty else { throw fail("no file name before the label") }
            if let first = firstLine[name] { throw fail("\(name) is listed again (first on line \(first))") }
            firstLine[name] = lineNumber
            guard ImageFileFormat.hasImageExtension(name) else { throw fail("\(name) is not a .png, .jpg or .jpeg file") }
            guard FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(name)) else {
                throw fail("\(name) does not exist in \(folder)")
            }
            entries.append((name, label))
        }
        guard !entries.isEmpty else { throw DatasetError.file(path: csv, problem: "no filename,label lines") }
        return entries
    }

    // MARK: Writing

    /// Decodes the images of `listing` and writes them as shards: `directory/train/NAME-train-…`
    /// and, unless the test split is empty, `directory/test/NAME-test-…` (the split as
    /// ``ShardWriter/trainTestSplit(rowCount:testFraction:seed:)`` draws it, rows in its order),
    /// with the training split's channel statistics and, for class folders, `class_names`.
    /// On an error, the shards written so far are deleted.
    ///
    /// - Parameters:
    ///   - progress: called after each block with the images done (decoded or skipped) and
    ///     the total.
    /// - Throws: ``DatasetError/file(path:problem:)`` naming an image that cannot be decoded
    ///   (unless `options.skipBad`) or, without `options.size`, whose size differs from the
    ///   first image's.
    public static func write(_ listing: Listing, to directory: String, name: String, trainShards: Int, testShards: Int = 1,
                             testFraction: Double, seed: UInt64, source: String, options: Options, overwrite: Bool = false,
                             progress: (_ done: Int, _ total: Int) -> Void = { _, _ in }) throws -> Report {
        guard !name.isEmpty, !name.contains("/") else { throw DatasetError.invalid("shard name \"\(name)\" must be non-empty without /") }
        guard options.threads >= 1 else { throw DatasetError.invalid("threads \(options.threads) must be at least 1") }
        let total = listing.paths.count
        let (trainOrder, testOrder) = try ShardWriter.trainTestSplit(rowCount: total, testFraction: testFraction, seed: seed)
        for (split, rows, shards) in [("training", trainOrder.count, trainShards), ("test", testOrder.count, testShards)]
        where shards < 1 || (rows > 0 && rows < shards) || (split == "training" && rows == 0) {
            throw DatasetError.invalid("\(rows) \(split) images cannot fill \(shards) shards (a shard may not be empty)")
        }
        try ShardWriter.refuseExistingShards(in: directory, test: !testOrder.isEmpty, overwrite: overwrite)
        let shape = try RowShape(listing: listing, options: options)
        var histogram = PixelHistogram(channels: shape.channels)
        var report = Report(featureShape: shape.featureShape, trainPaths: [], testPaths: [], trainRows: 0, testRows: 0,
                            skipped: [], converted: 0, resized: 0)
        var written: [String] = []
        var done = 0
        do {
            for (split, order, shardCount) in [("train", trainOrder, trainShards), ("test", testOrder, testShards)] where !order.isEmpty {
                let splitDirectory = (directory as NSString).appendingPathComponent(split)
                try ShardWriter.prepareDirectory(splitDirectory, overwrite: overwrite)
                for index in 0..<shardCount {
                    let rows = Array(order[GlobalBatchSampler.split(order.count, rank: index, parts: shardCount)])
                    let path = (splitDirectory as NSString).appendingPathComponent(
                        ShardWriter.shardName("\(name)-\(split)", index: index, count: shardCount))
                    written.append(path)
                    let kept = try HDF5File.withNewFile(path) { file -> Int in
                        let rowValues = shape.featureShape.reduce(1, *)
                        try file.createDataset("x", of: UInt8.self, shape: [rows.count] + shape.featureShape,
                                               chunks: [ShardWriter.chunkRows(rowCount: rows.count, rowBytes: rowValues)] + shape.featureShape,
                                               gzipLevel: 4)
                        var kept = 0
                        var labels: [Int64] = []
                        // A block: enough images to keep every thread busy, few enough to hold.
                        let block = max(64, 16 * options.threads)
                        for start in stride(from: 0, to: rows.count, by: block) {
                            let part = Array(rows[start..<min(start + block, rows.count)])
                            let decoded = shape.rows(part.map { listing.paths[$0] }, threads: options.threads)
                            var values: [UInt8] = []
                            values.reserveCapacity(part.count * rowValues)
                            for (row, result) in zip(part, decoded) {
                                switch result {
                                case let .success(made):
                                    values += made.values
                                    if made.converted { report.converted += 1 }
                                    if made.resized { report.resized += 1 }
                                    labels.append(listing.labels?[row] ?? 0)
                                    if split == "train" { histogram.add(made.values) }
                                case let .failure(error):
                                    guard options.skipBad, case let .file(badPath, reason) = error else { throw error }
                                    report.skipped.append((badPath, reason))
                                }
                            }
                            let count = values.count / rowValues
                            if count > 0 { try file.write(values, to: "x", rows: kept..<(kept + count)) }
                            kept += count
                            done += part.count
                            progress(done, total)
                        }
                        guard kept > 0 else {
                            throw DatasetError.file(path: path, problem: "every image of this shard was skipped: no rows to write")
                        }
                        if kept < rows.count { try file.setRowCount(kept, of: "x") }
                        if listing.labels != nil {
                            try file.createDataset("y", shape: [kept], values: labels, chunks: [min(kept, 4096)], gzipLevel: 4)
                        }
                        return kept
                    }
                    if split == "train" { report.trainPaths.append(path); report.trainRows += kept } else { report.testPaths.append(path); report.testRows += kept }
                }
            }
            let (mean, std) = histogram.statistics(pixelScale: 1.0 / 255)
            let attributes = ShardWriter.Attributes(pixelScale: 1.0 / 255, channelMean: mean, channelStandardDeviation: std,
                                                    classCount: listing.classCount, source: source, classNames: listing.classNames)
            for (paths, count) in [(report.trainPaths, trainShards), (report.testPaths, testShards)] {
                for (index, path) in paths.enumerated() {
                    try HDF5File.withFile(path, mode: .readWrite) { file in
                        try ShardWriter.writeRootAttributes(attributes, to: file, featureShape: shape.featureShape,
                                                            labelled: listing.labels != nil, shardIndex: index, shardCount: count)
                    }
                }
            }
        } catch {
            for path in written { try? FileManager.default.removeItem(atPath: path) }
            throw error
        }
        return report
    }

    /// What every row is: its size and channels, and how an image file becomes one.
    struct RowShape: Sendable {
        let height: Int, width: Int, channels: Int

        var featureShape: [Int] { [channels, height, width] }
        /// Whether images of another size are resized (a size was asked for) or refused.
        let resizing: Bool

        /// The size and channels of `options`, or of the first image that decodes.
        init(listing: Listing, options: Options) throws {
            if let channels = options.channels, channels != 1 && channels != 3 {
                throw DatasetError.invalid("channels \(channels) must be 1 (grey) or 3 (RGB)")
            }
            if let size = options.size, size.count != 2 || size.contains(where: { $0 < 1 }) {
                throw DatasetError.invalid("image size \(size) must be a positive height and width")
            }
            var first: Image8?
            if options.size == nil || options.channels == nil {
                for path in listing.paths {
                    do { first = try ImageDecoder.decode(path); break } catch let error as ImagingError {
                        guard options.skipBad, case .decoding = error else { throw Self.datasetError(error, path: path) }
                    }
                }
            }
            height = options.size?[0] ?? first?.height ?? 1
            width = options.size?[1] ?? first?.width ?? 1
            channels = options.channels ?? first?.channels ?? 3
            resizing = options.size != nil
        }

        /// One decoded row: `C × H × W` values, and whether channels or size changed.
        struct Row: Sendable { var values: [UInt8]; var converted: Bool; var resized: Bool }

        /// The row of the image file at `path`.
        func row(_ path: String) throws -> Row {
            let decoded: Image8
            do { decoded = try ImageDecoder.decode(path) } catch let error as ImagingError { throw Self.datasetError(error, path: path) }
            var image = decoded
            if !resizing && (image.height != height || image.width != width) {
                throw DatasetError.file(path: path, problem: "is \(image.height)×\(image.width) (H×W), the first image \(height)×\(width); "
                                        + "pass --image-size to resize every image")
            }
            // Grey output: convert before resizing (one channel to resample); RGB: after.
            if channels == 1 { image = try image.converted(toChannels: 1) }
            image = try image.resized(height: height, width: width)
            image = try image.converted(toChannels: channels)
            return Row(values: image.channelsFirst, converted: decoded.channels != channels,
                       resized: decoded.height != height || decoded.width != width)
        }

        /// The rows of `paths` in order, decoded on `threads` threads (each thread takes every
        /// `threads`-th image, so large and small images share out evenly).
        func rows(_ paths: [String], threads: Int) -> [Result<Row, DatasetError>] {
            let results = Locked([Result<Row, DatasetError>?](repeating: nil, count: paths.count))
            let parts = max(1, min(threads, paths.count))
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                for i in stride(from: part, to: paths.count, by: parts) {
                    let result: Result<Row, DatasetError>
                    do { result = .success(try row(paths[i])) } catch let error as DatasetError { result = .failure(error) } catch {
                        result = .failure(.file(path: paths[i], problem: "\(error)"))
                    }
                    results.withLock { $0[i] = result }
                }
            }
            return results.withLock { $0 }.enumerated().map { $0.element ?? .failure(.file(path: paths[$0.offset], problem: "not decoded")) }
        }

        /// A decoding error as a dataset error naming the file.
        static func datasetError(_ error: ImagingError, path: String) -> DatasetError {
            if case let .decoding(file, reason) = error { return .file(path: file, problem: reason) }
            return .file(path: path, problem: "\(error)")
        }
    }

    /// Counts of every 8-bit value a channel: the exact mean and standard deviation of the
    /// rows added, without holding them.
    struct PixelHistogram {
        let channels: Int
        private(set) var counts: [Int]

        init(channels: Int) {
            self.channels = channels
            counts = [Int](repeating: 0, count: channels * 256)
        }

        /// Adds one `C × H × W` row.
        mutating func add(_ row: [UInt8]) {
            let plane = row.count / channels
            for c in 0..<channels {
                for i in (c * plane)..<((c + 1) * plane) { counts[c * 256 + Int(row[i])] += 1 }
            }
        }

        /// Per channel, the mean and standard deviation of `value · pixelScale`; a zero
        /// standard deviation is 1 (as ``DatasetRows/channelStatistics(pixelScale:)``).
        func statistics(pixelScale: Double) -> (mean: [Double], standardDeviation: [Double]) {
            var means: [Double] = [], deviations: [Double] = []
            for c in 0..<channels {
                let bins = counts[(c * 256)..<((c + 1) * 256)]
                let n = Double(max(1, bins.reduce(0, +)))
                let mean = zip(0..., bins).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } / n
                let variance = zip(0..., bins).reduce(0.0) { $0 + (Double($1.0) - mean) * (Double($1.0) - mean) * Double($1.1) } / n
                means.append(mean * pixelScale)
                deviations.append(variance > 0 ? variance.squareRoot() * pixelScale : 1)
            }
            return (means, deviations)
        }
    }
}
