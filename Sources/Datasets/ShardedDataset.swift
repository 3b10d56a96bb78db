import Foundation
import HDF5

/// A dataset stored as HDF5 shards, read by rows.
///
/// ## Layout (version 1)
/// A dataset is a directory of shards named `NAME-00000-of-000NN.h5` (all NN of them present),
/// or a manifest: a text file listing one shard path a line (relative to the manifest), or a
/// single `.h5` file. Each shard holds:
/// - `/x`: the rows, `rows × featureShape` (e.g. `rows × 1 × 28 × 28` images or `rows × D`
///   vectors), `uint8` or `float32`, chunked and compressed;
/// - `/y` (optional): `int64` labels, one a row;
/// - root attributes: `layout_version` (1), `feature_shape` (int64 array), `pixel_scale`
///   (float64; 1/255 for 8-bit images), `channel_mean` and `channel_std` (float64 arrays, one a
///   channel — for vectors one a feature — or a single value, in units of `x · pixel_scale`;
///   the training split's statistics, in the test split too), optionally `num_classes`,
///   `shard_index`, `shard_count`, `source` and `format` ("anticollapse-shard").
///
/// `ShardWriter` writes this layout (`/x` chunked by about 32 KiB, gzip level 4) and
/// `datasets/convert_mnist5k.py` writes it from Python; h5py reads it.
///
/// Opening checks that every shard is an HDF5 file with a non-empty `/x`, that all shards
/// agree on feature shape and element type, that `/y`, where present, holds integers, one a
/// row, and that `feature_shape`, `channel_mean`, `channel_std` and `pixel_scale` fit the data;
/// every problem is a ``DatasetError/file(path:problem:)`` naming the shard. Reading checks
/// float rows for NaN and infinity (naming shard and row); ``DatasetVerifier`` checks every row
/// and label.
public final class ShardedDataset: @unchecked Sendable {
    /// The layout version this code reads and writes.
    public static let layoutVersion: Int64 = 1

    /// One file of the dataset.
    public struct Shard: Sendable, Equatable {
        public let path: String
        public let rowCount: Int
        /// The global index of the shard's first row.
        public let firstRow: Int
    }

    /// The element type of `/x`.
    public enum Storage: String, Sendable { case uint8, float32 }

    /// Where the dataset was opened from.
    public let location: String
    public let shards: [Shard]
    /// The shape of one row, e.g. `[1, 28, 28]` or `[64]`.
    public let featureShape: [Int]
    public let storage: Storage
    /// Whether every shard has labels.
    public let hasLabels: Bool
    /// How to turn stored values into model inputs.
    public let normalization: Normalization
    /// The number of classes, from the attribute or the largest label + 1 (0 without labels).
    public let classCount: Int

    private let lock = NSLock()
    /// The open shards, each with its `/x` (and `/y`) held open for their chunk caches.
    private var files: [Int: (file: HDF5File, retained: [HDF5RetainedDataset])] = [:]
    nonisolated(unsafe) private var rowsReadCounter = 0

    /// All rows over all shards.
    public var rowCount: Int { shards.last.map { $0.firstRow + $0.rowCount } ?? 0 }
    /// The number of values in one row.
    public var featureCount: Int { featureShape.reduce(1, *) }
    /// Whether rows are images (`channels × height × width`).
    public var isImage: Bool { featureShape.count == 3 }
    /// The number of rows this object has read so far (for tests and the data benchmark).
    public var rowsRead: Int { lock.withLock { rowsReadCounter } }

    /// Opens a dataset directory, manifest or single shard, and checks its shards.
    public init(_ location: String) throws {
        self.location = location
        let paths = try ShardedDataset.shardPaths(location)
        var shards: [Shard] = []
        var featureShape: [Int]?, storage: Storage?, hasLabels = true
        var normalization: Normalization?
        var classCount = 0
        for path in paths {
            let file: HDF5File
            do { file = try HDF5File.open(path) } catch let error as HDF5Error {
                throw DatasetError.file(path: path, problem: error.kind == .notHDF5File ? "not an HDF5 file"
                                         : error.kind == .noSuchFile ? "missing shard" : "\(error)")
            }
            defer { try? file.close() }
            guard try file.contains("x") else { throw DatasetError.file(path: path, problem: "no dataset /x") }
            let info = try file.info("x")
            guard let rows = info.shape.first else { throw DatasetError.file(path: path, problem: "/x is a scalar, expected rows × features") }
            guard rows > 0 else { throw DatasetError.file(path: path, problem: "empty shard: /x has 0 rows") }
            let shardStorage: Storage
            switch info.elementType {
            case .unsignedInteger(8): shardStorage = .uint8
            case .float(32): shardStorage = .float32
            default: throw DatasetError.file(path: path, problem: "/x holds \(info.elementType), expected uint8 or float32")
            }
            let shape = Array(info.shape.dropFirst())
            if let expected = featureShape, expected != shape {
                throw DatasetError.file(path: path, problem: "/x rows have shape \(shape), but \(shards[0].path) has \(expected)")
            }
            if let expected = storage, expected != shardStorage {
                throw DatasetError.file(path: path, problem: "/x holds \(shardStorage.rawValue), but \(shards[0].path) holds \(expected.rawValue)")
            }
            if case let .int64(version)? = try? file.attribute("layout_version"), version != ShardedDataset.layoutVersion {
                throw DatasetError.file(path: path, problem: "layout_version \(version), this build reads \(ShardedDataset.layoutVersion)")
            }
            if case let .int64Array(recorded)? = try? file.attribute("feature_shape"), recorded.map({ Int($0) }) != shape {
                throw DatasetError.file(path: path, problem: "attribute feature_shape \(recorded) disagrees with /x rows of shape \(shape)")
            }
            if try file.contains("y") {
                let labels = try file.info("y")
                switch labels.elementType {
                case .signedInteger, .unsignedInteger: break
                default: throw DatasetError.file(path: path, problem: "/y holds \(labels.elementType), expected integer labels")
                }
                guard labels.shape == [rows] else {
                    throw DatasetError.file(path: path, problem: "/y has shape \(labels.shape) but /x has \(rows) rows")
                }
                // Every label is checked here, when the dataset opens: one out of range would
                // index past the probe's classes in the middle of training.
                let (_, values) = try file.read(Int64.self, from: "y")
                if let row = values.firstIndex(where: { $0 < 0 }) {
                    throw DatasetError.file(path: path, problem: "row \(row) of /y holds label \(values[row]); labels must be 0 or more")
                }
                if case let .int64(classes)? = try? file.attribute("num_classes") {
                    if let row = values.firstIndex(where: { $0 >= classes }) {
                        throw DatasetError.file(path: path, problem: "row \(row) of /y holds label \(values[row]), but the attribute "
                                                + "num_classes is \(classes): labels must be in 0..<\(classes)")
                    }
                    classCount = max(classCount, Int(classes))
                } else {
                    classCount = max(classCount, Int(values.max() ?? -1) + 1)
                }
            } else {
                hasLabels = false
            }
            if normalization == nil {
                let found = ShardedDataset.normalization(of: file, storage: shardStorage, shape: shape)
                let channels = shape.count == 3 ? shape[0] : nil
                for (name, values) in [("channel_mean", found.mean), ("channel_std", found.standardDeviation)] {
                    guard !values.isEmpty, values.allSatisfy(\.isFinite) else {
                        throw DatasetError.file(path: path, problem: "attribute \(name) \(values) must be finite numbers")
                    }
                    if let channels, values.count != 1 && values.count != channels {
                        throw DatasetError.file(path: path, problem: "attribute \(name) has \(values.count) values for \(channels) channels")
                    }
                }
                guard found.standardDeviation.allSatisfy({ $0 > 0 }), found.pixelScale.isFinite, found.pixelScale > 0 else {
                    throw DatasetError.file(path: path, problem: "channel_std \(found.standardDeviation) and pixel_scale \(found.pixelScale) must be positive")
                }
                normalization = found
            }
            featureShape = shape
            storage = shardStorage
            shards.append(Shard(path: path, rowCount: rows, firstRow: shards.last.map { $0.firstRow + $0.rowCount } ?? 0))
        }
        self.shards = shards
        self.featureShape = featureShape ?? []
        self.storage = storage ?? .float32
        self.hasLabels = hasLabels
        self.normalization = normalization ?? Normalization(mean: [0], standardDeviation: [1])
        self.classCount = hasLabels ? classCount : 0
    }

    deinit {
        for open in files.values {
            for dataset in open.retained { try? dataset.release() }
            try? open.file.close()
        }
    }

    /// The shard paths of a directory (`NAME-00000-of-000NN.h5`, all present), a manifest or one file.
    static func shardPaths(_ location: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: location, isDirectory: &isDirectory) else {
            throw DatasetError.file(path: location, problem: "no such dataset directory or file")
        }
        if !isDirectory.boolValue {
            // One shard: by its name or by the HDF5 signature; anything else must be a manifest.
            if location.hasSuffix(".h5") || location.hasSuffix(".hdf5") || hasHDF5Signature(location) { return [location] }
            let base = (location as NSString).deletingLastPathComponent
            guard let data = FileManager.default.contents(atPath: location) else {
                throw DatasetError.file(path: location, problem: "cannot read the file")
            }
            guard let text = String(data: data, encoding: .utf8), !text.contains("\0") else {
                throw DatasetError.file(path: location, problem: "not an HDF5 file, nor a manifest (a text file listing one shard path a line)")
            }
            let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("#") }
            guard !lines.isEmpty else { throw DatasetError.file(path: location, problem: "the manifest lists no shards") }
            return lines.map { $0.hasPrefix("/") ? $0 : (base as NSString).appendingPathComponent($0) }
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: location).filter { $0.hasSuffix(".h5") }.sorted()
        guard !names.isEmpty else { throw DatasetError.file(path: location, problem: "no .h5 shards in this directory") }
        // NAME-00000-of-000NN.h5: every index present, all with the same NAME and count.
        var groups: [String: (count: Int, indices: Set<Int>)] = [:]
        for name in names {
            let stem = name.dropLast(3)
            let parts = stem.split(separator: "-")
            guard parts.count >= 4, parts[parts.count - 2] == "of", let index = Int(parts[parts.count - 3]),
                  let count = Int(parts[parts.count - 1]) else {
                throw DatasetError.file(path: (location as NSString).appendingPathComponent(name),
                                        problem: "shard name is not NAME-00000-of-000NN.h5")
            }
            let prefix = parts.dropLast(3).joined(separator: "-")
            let key = "\(prefix)|\(parts[parts.count - 1])"
            groups[key, default: (count, [])].indices.insert(index)
        }
        guard groups.count == 1, let (key, group) = groups.first else {
            throw DatasetError.file(path: location, problem: "shards of several datasets in one directory: \(groups.keys.sorted())")
        }
        let digits = String(key.split(separator: "|")[1])
        let prefix = String(key.split(separator: "|")[0])
        func name(_ i: Int) -> String {
            let index = String(i), pad = String(repeating: "0", count: max(0, digits.count - index.count))
            return "\(prefix)-\(pad)\(index)-of-\(digits).h5"
        }
        if let missing = (0..<group.count).first(where: { !group.indices.contains($0) }) {
            throw DatasetError.file(path: (location as NSString).appendingPathComponent(name(missing)), problem: "missing shard")
        }
        return (0..<group.count).map { (location as NSString).appendingPathComponent(name($0)) }
    }

    /// Whether the file starts with the HDF5 superblock signature `\x89HDF\r\n\x1a\n`.
    private static func hasHDF5Signature(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 8)) ?? Data()
        return head.elementsEqual([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a])
    }

    private static func normalization(of file: HDF5File, storage: Storage, shape: [Int]) -> Normalization {
        func doubles(_ name: String) -> [Double]? {
            switch try? file.attribute(name) {
            case let .doubleArray(values)?: return values
            case let .double(value)?: return [value]
            default: return nil
            }
        }
        let scale: Double
        if case let .double(value)? = try? file.attribute("pixel_scale") { scale = value } else { scale = storage == .uint8 ? 1.0 / 255 : 1 }
        return Normalization(pixelScale: scale, mean: doubles("channel_mean") ?? [0], standardDeviation: doubles("channel_std") ?? [1])
    }

    // MARK: Reading

    /// Reads `rows` (global indices, any order) as `Float` in stored units, and their labels.
    ///
    /// Rows are grouped by shard and read with one hyperslab selection a shard, then put back
    /// in the order asked. Float data is checked: a NaN or infinity is an error naming the
    /// shard and the row.
    public func read(rows: [Int]) throws -> (features: [Float], labels: [Int64]?) {
        let width = featureCount
        var features = [Float](repeating: 0, count: rows.count * width)
        var labels: [Int64]? = hasLabels ? [Int64](repeating: 0, count: rows.count) : nil
        var byShard: [Int: [(position: Int, local: Int)]] = [:]
        for (position, row) in rows.enumerated() {
            guard row >= 0 && row < rowCount else { throw DatasetError.invalid("row \(row) is outside \(location), which has \(rowCount) rows") }
            let shard = shardIndex(ofRow: row)
            byShard[shard, default: []].append((position, row - shards[shard].firstRow))
        }
        for (shardIndex, wanted) in byShard.sorted(by: { $0.key < $1.key }) {
            let shard = shards[shardIndex]
            let file = try openFile(shardIndex)
            let locals = wanted.map(\.local)
            // Read in the stored type: HDF5's own uint8 → float conversion walks the selection
            // element by element and is 20× slower than converting here.
            switch storage {
            case .uint8:
                let (_, values) = try file.readRows(locals, as: UInt8.self, from: "x")
                ShardedDataset.scatter(values, rows: wanted, width: width, into: &features)
            case .float32:
                let (_, values) = try file.readRows(locals, as: Float.self, from: "x")
                if let bad = values.firstIndex(where: { !$0.isFinite }) {
                    let local = locals[bad / width]
                    throw DatasetError.file(path: shard.path, problem: "row \(local) of /x (dataset row \(shard.firstRow + local)) holds \(values[bad])")
                }
                ShardedDataset.scatter(values, rows: wanted, width: width, into: &features)
            }
            if hasLabels {
                let (_, ys) = try file.readRows(locals, as: Int64.self, from: "y")
                for (i, item) in wanted.enumerated() { labels?[item.position] = ys[i] }
            }
        }
        lock.withLock { rowsReadCounter += rows.count }
        return (features, labels)
    }

    /// Copies row `i` of `values` to row `rows[i].position` of `features`, as floats.
    private static func scatter<T: BinaryInteger>(_ values: [T], rows: [(position: Int, local: Int)], width: Int,
                                                  into features: inout [Float]) {
        features.withUnsafeMutableBufferPointer { target in
            values.withUnsafeBufferPointer { source in
                for (i, item) in rows.enumerated() {
                    let out = target.baseAddress! + item.position * width, from = source.baseAddress! + i * width
                    for j in 0..<width { out[j] = Float(from[j]) }
                }
            }
        }
    }

    private static func scatter(_ values: [Float], rows: [(position: Int, local: Int)], width: Int, into features: inout [Float]) {
        features.withUnsafeMutableBufferPointer { target in
            values.withUnsafeBufferPointer { source in
                for (i, item) in rows.enumerated() {
                    (target.baseAddress! + item.position * width).update(from: source.baseAddress! + i * width, count: width)
                }
            }
        }
    }

    /// The shard holding global row `row`.
    public func shardIndex(ofRow row: Int) -> Int {
        var low = 0, high = shards.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if shards[middle].firstRow <= row { low = middle } else { high = middle - 1 }
        }
        return low
    }

    /// The bytes of decompressed chunks each open shard may keep: its whole `/x` when all shards'
    /// fit in 256 MiB, otherwise an even share of that (at least HDF5's default, 1 MiB). Rows
    /// are sampled at random, so a batch touches most chunks of a shard; with the chunks cached
    /// a chunk is decompressed once rather than once per batch.
    private var chunkCacheBytes: Int {
        let storedBytes = storage == .uint8 ? 1 : 4
        let largestShard = (shards.map(\.rowCount).max() ?? 0) * featureCount * storedBytes
        return max(1 << 20, min(largestShard + (1 << 16), (256 << 20) / max(shards.count, 1)))
    }

    private func openFile(_ index: Int) throws -> HDF5File {
        try lock.withLock {
            if let open = files[index] { return open.file }
            let file = try HDF5File.open(shards[index].path)
            var retained = [try file.retainDataset("x", cacheBytes: chunkCacheBytes)]
            if hasLabels { retained.append(try file.retainDataset("y")) }
            files[index] = (file, retained)
            return file
        }
    }
}
