// `anticollapse dataset …`: make, import, check and time datasets in the shard layout
// (version 1, see `ShardedDataset`). The work is done by the Datasets module; these commands
// parse options and print.
import ArgumentParser
import Datasets
import Engine
import HDF5
import Foundation

/// The `dataset` command group.
struct Dataset: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make, import, verify and benchmark sharded HDF5 datasets.",
        subcommands: [MakeSynthetic.self, Shard.self, Verify.self, Bench.self])
}

/// Runs `body`, printing any error as `error: …` on stderr and exiting non-zero.
func reportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let error as ExitCode { throw error } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode.failure
    }
}

/// Parses `1,28,28` into `[1, 28, 28]`.
private func parseShape(_ text: String?) throws -> [Int]? {
    guard let text else { return nil }
    let parts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !parts.isEmpty, parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
        throw ValidationError("--feature-shape \(text) is not a list of positive sizes like 1,28,28")
    }
    return parts.compactMap { $0 }
}

extension Dataset {
    /// `dataset make-synthetic`: a labelled synthetic dataset.
    struct MakeSynthetic: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "make-synthetic",
            abstract: "Write a labelled synthetic dataset (Gaussian blobs or simple shapes) as shards.",
            discussion: "Writes OUT/train/NAME-train-0000K-of-0000S.h5 and, with --test-rows, OUT/test/NAME-test-00000-of-00001.h5; both record the training rows' channel mean and std.")

        @Option(help: "images (1×size×size uint8 shapes) or vectors (float32 Gaussian blobs).")
        var kind: String = "images"
        @Option(help: "Training rows.") var rows: Int
        @Option(help: "Test rows (0: no test split).") var testRows: Int = 0
        @Option(help: "Classes.") var classes: Int = 10
        @Option(help: "Features a row (vectors).") var features: Int = 32
        @Option(help: "Image side (images).") var size: Int = 28
        @Option(help: "Training shards.") var shards: Int = 1
        @Option(help: "Random seed.") var seed: UInt64 = 0
        @Option(help: "Shard name prefix (default synthetic-KIND).") var name: String?
        @Option(help: "Output directory.") var out: String
        @Flag(help: "Replace shards already in the output directories.") var overwrite = false

        func validate() throws {
            guard SyntheticData.Kind(rawValue: kind) != nil else { throw ValidationError("--kind must be images or vectors, not \(kind)") }
        }

        func run() throws {
            try reportingErrors {
                let spec = try SyntheticData(kind: SyntheticData.Kind(rawValue: kind) ?? .images, rows: rows, testRows: testRows,
                                             classes: classes, features: features, size: size, seed: seed)
                let (train, test) = try spec.write(to: out, name: name, trainShards: shards, overwrite: overwrite)
                print("wrote \(rows) training rows in \(train.count) shards under \((out as NSString).appendingPathComponent("train"))")
                if !test.isEmpty { print("wrote \(testRows) test rows in \(test.count) shard under \((out as NSString).appendingPathComponent("test"))") }
            }
        }
    }

    /// `dataset shard`: import an HDF5, NumPy or CSV file, or a folder of images.
    struct Shard: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Split an HDF5, .npy or CSV file, or a folder of PNG/JPEG images, into train/test shards.",
            discussion: """
            A file INPUT is read by its extension: .h5/.hdf5 (datasets --features-dataset and --labels-dataset), \
            .npy (dtype |u1, <f4, <f8, <i8 or <i4, C order; labels from --labels FILE.npy) or anything else as CSV \
            (numbers, an optional header line, the label in --label-column).

            A folder INPUT holds PNG/JPEG images (decoded by libpng and libjpeg-turbo): one sub-folder a class \
            (classes sorted by name are labels 0, 1, …; their names are stored as the class_names attribute), or \
            flat with --labels FILE.csv (filename,label lines, file names relative to the folder, an optional \
            header line), or flat without labels. Alpha is dropped; --channels converts grey <-> RGB (BT.601 luma); \
            --image-size resizes each axis by area averaging when it shrinks and bilinear interpolation when it \
            grows (no crop: the aspect ratio follows the size). Rows are uint8 C×H×W, pixel_scale 1/255.

            Rows are split with a seeded permutation and written as OUT/train/NAME-train-0000K-of-0000N.h5 and \
            OUT/test/NAME-test-….h5.
            """)

        @Argument(help: "The input file or image folder.") var input: String
        @Option(help: "Output directory.") var out: String
        @Option(help: "Shard name prefix.") var name: String
        @Option(help: "Training shards.") var shards: Int = 1
        @Option(help: "Test shards.") var testShards: Int = 1
        @Option(help: "Fraction of rows for the test split (0 for none).") var testFraction: Double = 0.2
        @Option(help: "Seed of the train/test split.") var seed: UInt64 = 0
        @Option(help: "CSV label column: last, first or none.") var labelColumn: String = "last"
        @Option(help: "Labels: a .npy file (with a .npy input) or a filename,label CSV (with a flat image folder).")
        var labels: String?
        @Option(help: "Features dataset in an HDF5 input.") var featuresDataset: String = "x"
        @Option(help: "Labels dataset in an HDF5 input (ignored if absent).") var labelsDataset: String = "y"
        @Option(help: "Row shape, e.g. 1,28,28 (default: the input's).") var featureShape: String?
        @Option(help: "Stored type: auto, uint8 or float32.") var storage: String = "auto"
        @Option(help: "Images: stored size, S (S×S) or H,W (default: the first image's; others must match).")
        var imageSize: String?
        @Option(help: "Images: 1 (grey) or 3 (RGB) (default: the first image's).") var channels: Int?
        @Option(help: "Images: threads decoding at once (default: every core).") var threads: Int?
        @Flag(help: "Images: skip (and list) images that cannot be decoded instead of stopping.") var skipBad = false
        @Flag(help: "Replace shards already in the output directories.") var overwrite = false

        /// `S` or `H,W` (also `HxW`) as `[H, W]`.
        static func parseImageSize(_ text: String?) throws -> [Int]? {
            guard let text else { return nil }
            let parts = text.split(whereSeparator: { $0 == "," || $0 == "x" || $0 == "×" }).map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard (1...2).contains(parts.count), parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
                throw ValidationError("--image-size \(text) is not a positive size S or H,W (e.g. 32 or 48,64)")
            }
            let sizes = parts.compactMap { $0 }
            return sizes.count == 1 ? [sizes[0], sizes[0]] : sizes
        }

        func validate() throws {
            _ = try Self.parseImageSize(imageSize)
            if let channels, channels != 1 && channels != 3 { throw ValidationError("--channels must be 1 (grey) or 3 (RGB), not \(channels)") }
            if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
            guard ArrayImport.LabelColumn(rawValue: labelColumn) != nil else { throw ValidationError("--label-column must be last, first or none") }
            guard ArrayImport.StoragePolicy(rawValue: storage) != nil else { throw ValidationError("--storage must be auto, uint8 or float32") }
            _ = try parseShape(featureShape)
        }

        func run() throws {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory), isDirectory.boolValue {
                if featureShape != nil || storage != "auto" {
                    throw ValidationError("--feature-shape and --storage are for array files; an image folder's rows are uint8 C×H×W "
                                          + "(see --image-size and --channels)")
                }
                return try reportingErrors(shardImages)
            }
            if imageSize != nil || channels != nil || threads != nil || skipBad {
                throw ValidationError("--image-size, --channels, --threads and --skip-bad are for an image folder; \(input) is not a folder")
            }
            try reportingErrors {
                let shape = try parseShape(featureShape)
                let policy = ArrayImport.StoragePolicy(rawValue: storage) ?? .auto
                let lower = input.lowercased()
                let rows: DatasetRows
                if lower.hasSuffix(".h5") || lower.hasSuffix(".hdf5") {
                    rows = try ArrayImport.rowsFromHDF5(input, features: featuresDataset, labels: labelsDataset,
                                                       featureShape: shape, storage: policy)
                } else if lower.hasSuffix(".npy") {
                    rows = try ArrayImport.rowsFromNumPy(features: input, labels: labels, featureShape: shape, storage: policy)
                } else {
                    rows = try ArrayImport.rowsFromCSV(input, labelColumn: ArrayImport.LabelColumn(rawValue: labelColumn) ?? .last,
                                                       featureShape: shape, storage: policy)
                }
                let (train, test) = try ShardWriter.writeSplit(
                    rows, to: out, name: name, trainShards: shards, testShards: testShards, testFraction: testFraction,
                    seed: seed, source: "anticollapse dataset shard \((input as NSString).lastPathComponent) --test-fraction \(testFraction) --seed \(seed)",
                    overwrite: overwrite)
                print("read \(rows.rowCount) rows of shape \(rows.featureShape) (\(rows.values.storage.rawValue)) from \(input)")
                if shape == nil && rows.featureShape.count == 3 && rows.featureShape[0] == 1 && !lower.hasSuffix(".csv") {
                    print("note: rows of shape \(Array(rows.featureShape.dropFirst())) are stored as 1-channel images \(rows.featureShape) "
                          + "(augmentation crops, flips and rotates them); --feature-shape \(rows.featureCount) keeps them as vectors")
                }
                if let note = ShardWriter.pixelScale(of: rows).note { print("note: \(note)") }
                if rows.labels == nil, let hint = Dataset.labelHint(input: input, lower: lower) { print("note: no labels were read; \(hint)") }
                print("wrote \(train.count) training shards under \((out as NSString).appendingPathComponent("train"))"
                      + (test.isEmpty ? "" : " and \(test.count) test shards under \((out as NSString).appendingPathComponent("test"))"))
            }
        }
    }

    /// A hint when data read without labels look labelled: a `.npy` of labels beside the
    /// input, or integer datasets of one value a row in an HDF5 input.
    static func labelHint(input: String, lower: String) -> String? {
        let directory = (input as NSString).deletingLastPathComponent
        if lower.hasSuffix(".npy") {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory)) ?? []
            let candidates = names.filter { name in
                let n = name.lowercased()
                return n.hasSuffix(".npy") && n != (input as NSString).lastPathComponent.lowercased()
                    && (n.contains("label") || n.contains("target") || n == "y.npy" || n.hasSuffix("_y.npy") || n.hasPrefix("y_"))
            }.sorted()
            guard !candidates.isEmpty else { return nil }
            return "\(candidates.joined(separator: ", ")) beside it look like labels: pass --labels \((directory as NSString).appendingPathComponent(candidates[0]))"
        }
        if lower.hasSuffix(".h5") || lower.hasSuffix(".hdf5"), let file = try? HDF5File.open(input) {
            defer { try? file.close() }
            let integers = ((try? file.walk()) ?? []).filter { entry in
                guard entry.kind == .dataset, let info = try? file.info(entry.path) else { return false }
                if case .signedInteger = info.elementType { return info.shape.count == 1 }
                if case .unsignedInteger = info.elementType { return info.shape.count == 1 }
                return false
            }.map(\.path)
            guard !integers.isEmpty else { return nil }
            return "integer datasets \(integers.joined(separator: ", ")) look like labels: pass --labels-dataset NAME"
        }
        return nil
    }

    /// `dataset verify`: check every shard and row.
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every shard and row of a dataset and summarise it.",
            discussion: "Exits non-zero, naming the file (and row), on a missing or unreadable shard, disagreeing shards, an empty shard, labels not one a row or out of range, or NaN/Inf in float data. Trajectory shards: episode lengths and offsets, episode/step columns, finite states, actions in [-1, 1].")

        @Argument(help: "A dataset directory, manifest or shard.") var path: String

        func run() throws {
            try reportingErrors {
                // Trajectory shards (layout attribute format = "anticollapse-trajectories") have their own checks.
                print(TrajectoryDataset.isTrajectoryShard(path) ? "\(try TrajectoryVerifier.verify(path))" : "\(try DatasetVerifier.verify(path))")
            }
        }
    }

    /// `dataset bench`: loader throughput on one process.
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure the loader's rows/s and MB/s, with and without augmentation.")

        @Argument(help: "A dataset directory, manifest or shard.") var path: String
        @Option(help: "Global batch size.") var batch: Int = 256
        @Option(help: "Steps timed.") var steps: Int = 50
        @Flag(help: "Time reading and normalising only.") var noAugment = false

        func run() throws {
            try reportingErrors {
                let dataset = try ShardedDataset(path)
                print("\(path): \(dataset.rowCount) rows of \(dataset.featureShape) \(dataset.storage.rawValue), batch \(batch), \(steps) steps")
                for augment in noAugment ? [false] : [false, true] {
                    let result = try DataBenchmark.run(dataset: dataset, globalBatchSize: batch, steps: steps, augment: augment)
                    let label = augment ? "read + 2 augmented views" : "read + normalise       "
                    print("\(label): \(String(format: "%10.0f", result.rowsPerSecond)) rows/s  "
                          + "\(String(format: "%8.1f", result.megabytesPerSecond)) MB/s  (\(result.rows) rows in \(String(format: "%.3f", result.seconds)) s)")
                }
            }
        }
    }
}

extension Dataset.Shard {
    /// `dataset shard FOLDER`: lists, decodes and shards a folder of images.
    func shardImages() throws {
        let listing = try ImageFolderImport.list(input, labelsFile: labels)
        let threadCount = threads ?? ProcessInfo.processInfo.activeProcessorCount
        let options = ImageFolderImport.Options(size: try Self.parseImageSize(imageSize), channels: channels,
                                                threads: threadCount, skipBad: skipBad)
        let layout = listing.classNames.map { "\($0.count) class folders" }
            ?? (listing.labels != nil ? "labels from \(labels ?? "")" : "no labels")
        print("found \(listing.paths.count) images in \(input) (\(layout))")
        for name in listing.emptyClasses { print("warning: class folder \(name) holds no images (label \(listing.classNames?.firstIndex(of: name) ?? 0) has no rows)") }
        if !listing.ignoredFiles.isEmpty {
            print("note: ignored \(listing.ignoredFiles.count) files that are not .png/.jpg/.jpeg images or lie beside the class folders "
                  + "(\(listing.ignoredFiles.prefix(3).joined(separator: ", "))\(listing.ignoredFiles.count > 3 ? ", …" : ""))")
        }
        if !listing.unlistedImages.isEmpty {
            print("note: \(listing.unlistedImages.count) images are not named in \(labels ?? "the labels file") and were not read "
                  + "(\(listing.unlistedImages.prefix(3).joined(separator: ", "))\(listing.unlistedImages.count > 3 ? ", …" : ""))")
        }
        let source = "anticollapse dataset shard \((input as NSString).lastPathComponent)"
            + (imageSize.map { " --image-size \($0)" } ?? "") + (channels.map { " --channels \($0)" } ?? "")
            + " --test-fraction \(testFraction) --seed \(seed)"
        let progress = ImportProgress(total: listing.paths.count)
        let report = try ImageFolderImport.write(listing, to: out, name: name, trainShards: shards, testShards: testShards,
                                                 testFraction: testFraction, seed: seed, source: source, options: options,
                                                 overwrite: overwrite, progress: progress.update(done:total:))
        progress.finish()
        let seconds = progress.seconds
        let rate = Double(listing.paths.count) / max(seconds, 1e-9)
        let shape = report.featureShape.map(String.init).joined(separator: "×")
        var line = "decoded \(report.trainRows + report.testRows) images to \(shape) uint8 in \(String(format: "%.2f", seconds)) s"
        line += " (\(String(format: "%.0f", rate)) images/s on \(threadCount) threads)"
        if report.resized > 0 { line += ", \(report.resized) resized" }
        if report.converted > 0 { line += ", \(report.converted) converted to \(report.featureShape[0]) channel(s)" }
        print(line)
        if let names = listing.classNames {
            print("classes (label: name): " + names.enumerated().prefix(20).map { "\($0.offset): \($0.element)" }.joined(separator: ", ")
                  + (names.count > 20 ? ", … (\(names.count))" : ""))
        }
        if !report.skipped.isEmpty {
            for (path, reason) in report.skipped { print("skipped \(path): \(reason)") }
            print("skipped \(report.skipped.count) unreadable images of \(listing.paths.count)")
        }
        print("wrote \(report.trainRows) training rows in \(report.trainPaths.count) shards under \((out as NSString).appendingPathComponent("train"))"
              + (report.testPaths.isEmpty ? "" : " and \(report.testRows) test rows in \(report.testPaths.count) shards under \((out as NSString).appendingPathComponent("test"))"))
    }
}

/// Progress of an import on standard error: a bar redrawn in place on a terminal, a plain line
/// every 10 s otherwise (logs, pipes); images/s and the time left.
final class ImportProgress {
    private let total: Int
    private let started = Date()
    private let interactive = isatty(STDERR_FILENO) != 0
    private var lastShown = Date.distantPast
    private var shownOnce = false

    init(total: Int) { self.total = total }

    /// Seconds since the start.
    var seconds: Double { Date().timeIntervalSince(started) }

    /// Shows `done` of `total` images, at most 10 times a second (every 10 s without a
    /// terminal), and at the end.
    func update(done: Int, total: Int) {
        let now = Date()
        guard now.timeIntervalSince(lastShown) >= (interactive ? 0.1 : 10) || done == total else { return }
        lastShown = now
        let elapsed = now.timeIntervalSince(started)
        let rate = Double(done) / max(elapsed, 1e-9)
        let left = rate > 0 ? Double(total - done) / rate : 0
        let counts = "\(done)/\(total) images  \(String(format: "%.0f", rate)) images/s  ETA \(ProgressPrinter.duration(left))"
        if interactive {
            let width = 30, filled = total > 0 ? width * done / total : width
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r[\(bar)] \(counts)\u{1B}[K".utf8))
            shownOnce = true
        } else {
            FileHandle.standardError.write(Data("shard: \(counts)\n".utf8))
        }
    }

    /// Ends the bar's line.
    func finish() {
        if interactive && shownOnce { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
