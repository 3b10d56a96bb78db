import Foundation
import HDF5
import Tensor

/// The stored values of a set of rows: 8-bit (images) or 32-bit float.
public enum FeatureValues: Sendable, Equatable {
    case uint8([UInt8])
    case float32([Float])

    /// The number of values.
    public var count: Int {
        switch self {
        case .uint8(let values): return values.count
        case .float32(let values): return values.count
        }
    }

    /// The element type as stored.
    public var storage: ShardedDataset.Storage {
        switch self {
        case .uint8: return .uint8
        case .float32: return .float32
        }
    }

    /// Value `index` as a `Double`.
    @inline(__always)
    public subscript(index: Int) -> Double {
        switch self {
        case .uint8(let values): return Double(values[index])
        case .float32(let values): return Double(values[index])
        }
    }
}

/// Rows in memory, ready to be split and written as shards.
public struct DatasetRows: Sendable, Equatable {
    /// The shape of one row, e.g. `[1, 28, 28]` or `[64]`.
    public var featureShape: [Int]
    /// `rowCount × featureShape` values, row-major.
    public var values: FeatureValues
    /// One label a row, or nil.
    public var labels: [Int64]?

    /// - Throws: ``DatasetError/invalid(_:)`` when the counts do not fit the shape.
    public init(featureShape: [Int], values: FeatureValues, labels: [Int64]?) throws {
        let width = featureShape.reduce(1, *)
        guard !featureShape.isEmpty, featureShape.allSatisfy({ $0 > 0 }) else {
            throw DatasetError.invalid("feature shape \(featureShape) must have positive sizes")
        }
        guard values.count % width == 0 else {
            throw DatasetError.invalid("\(values.count) values are not a whole number of rows of shape \(featureShape)")
        }
        if let labels, labels.count != values.count / width {
            throw DatasetError.invalid("\(labels.count) labels for \(values.count / width) rows")
        }
        self.featureShape = featureShape
        self.values = values
        self.labels = labels
    }

    /// The number of values in one row.
    public var featureCount: Int { featureShape.reduce(1, *) }
    /// The number of rows.
    public var rowCount: Int { values.count / featureCount }

    /// The rows `indices`, in that order.
    public func selecting(_ indices: [Int]) -> DatasetRows {
        let width = featureCount
        func gather<T>(_ source: [T]) -> [T] {
            var out: [T] = []
            out.reserveCapacity(indices.count * width)
            for row in indices { out.append(contentsOf: source[(row * width)..<((row + 1) * width)]) }
            return out
        }
        let values: FeatureValues
        switch self.values {
        case .uint8(let v): values = .uint8(gather(v))
        case .float32(let v): values = .float32(gather(v))
        }
        // The counts fit by construction.
        return DatasetRows(unchecked: featureShape, values: values, labels: labels.map { l in indices.map { l[$0] } })
    }

    /// Rows whose counts are known to fit (no checks).
    init(unchecked featureShape: [Int], values: FeatureValues, labels: [Int64]?) {
        self.featureShape = featureShape; self.values = values; self.labels = labels
    }

    /// The per-channel mean and standard deviation of `value · pixelScale`: over rows and
    /// pixels for images (`C × H × W`, one pair a channel), per feature for vectors (`D`),
    /// over everything otherwise. A zero standard deviation is stored as 1 (a constant
    /// feature is centred, not divided by zero).
    public func channelStatistics(pixelScale: Double) -> (mean: [Double], standardDeviation: [Double]) {
        let width = featureCount
        let channels = featureShape.count == 3 ? featureShape[0] : featureShape.count == 1 ? featureShape[0] : 1
        let perChannel = width / channels
        var sum = [Double](repeating: 0, count: channels), sumSquares = sum
        // Shifted sums (by the first row's channel means) keep the variance accurate.
        var shift = [Double](repeating: 0, count: channels)
        if rowCount > 0 {
            for c in 0..<channels {
                var s = 0.0
                for i in 0..<perChannel { s += values[c * perChannel + i] * pixelScale }
                shift[c] = s / Double(perChannel)
            }
        }
        for row in 0..<rowCount {
            for c in 0..<channels {
                let start = row * width + c * perChannel
                var s = 0.0, q = 0.0
                for i in start..<(start + perChannel) {
                    let x = values[i] * pixelScale - shift[c]
                    s += x; q += x * x
                }
                sum[c] += s; sumSquares[c] += q
            }
        }
        let n = Double(max(1, rowCount * perChannel))
        let mean = (0..<channels).map { shift[$0] + sum[$0] / n }
        let std = (0..<channels).map { c -> Double in
            let m = sum[c] / n
            let variance = max(0, sumSquares[c] / n - m * m)
            return variance > 0 ? variance.squareRoot() : 1
        }
        return (mean, std)
    }
}

/// Writes rows as shards of the layout of ``ShardedDataset`` (version 1), readable by h5py.
public enum ShardWriter {
    /// What every shard of a dataset records besides its rows.
    public struct Attributes: Sendable, Equatable {
        /// Multiplies stored values before normalisation (1/255 for 8-bit images).
        public var pixelScale: Double
        /// Per-channel statistics in units of `x · pixelScale` (usually of the training split).
        public var channelMean: [Double]
        public var channelStandardDeviation: [Double]
        /// The number of classes, written when the rows have labels.
        public var classCount: Int?
        /// Where the data came from, written as the `source` attribute.
        public var source: String
        /// The name of each class, label `i` the `i`-th, written as the `class_names` attribute
        /// when known (image folders).
        public var classNames: [String]?

        public init(pixelScale: Double, channelMean: [Double], channelStandardDeviation: [Double],
                    classCount: Int?, source: String, classNames: [String]? = nil) {
            self.pixelScale = pixelScale; self.channelMean = channelMean
            self.channelStandardDeviation = channelStandardDeviation; self.classCount = classCount
            self.source = source; self.classNames = classNames
        }

        /// The attributes of `rows` with statistics computed on them; the pixel scale is
        /// ``ShardWriter/pixelScale(of:)``, the class count the largest label + 1.
        public static func describing(_ rows: DatasetRows, source: String) -> Attributes {
            let scale = ShardWriter.pixelScale(of: rows).scale
            let (mean, std) = rows.channelStatistics(pixelScale: scale)
            return Attributes(pixelScale: scale, channelMean: mean, channelStandardDeviation: std,
                              classCount: rows.labels.map { Int($0.max() ?? -1) + 1 }, source: source)
        }
    }

    /// The pixel scale of `rows`: 1 for floats; for 8-bit values 1/255 — unless they stay
    /// within 0…127 (e.g. 0…16 digits), where 1/255 would put them in [0, 0.06] and an
    /// augmentation's absolute strengths (brightness ±0.2 of [0, 1]) would be many standard
    /// deviations: then 1/max, so that `x · pixel_scale` spans [0, 1] as 8-bit images do, with
    /// a note saying so.
    public static func pixelScale(of rows: DatasetRows) -> (scale: Double, note: String?) {
        guard case let .uint8(values) = rows.values else { return (1, nil) }
        let maximum = Int(values.max() ?? 0)
        guard maximum > 0 && maximum <= 127 else { return (1.0 / 255, nil) }
        return (1.0 / Double(maximum),
                "values span 0…\(maximum), not 0…255: pixel_scale is 1/\(maximum) (not 1/255), so x · pixel_scale spans [0, 1] "
                + "and augmentation strengths (brightness, contrast: fractions of that range) mean what they mean for 8-bit images")
    }

    /// The file name of shard `index` of `count`: `NAME-0000K-of-0000N.h5`.
    public static func shardName(_ name: String, index: Int, count: Int) -> String {
        func padded(_ n: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, 5 - s.count)) + s
        }
        return "\(name)-\(padded(index))-of-\(padded(count)).h5"
    }

    /// Writes `rows` as `shardCount` shards of nearly equal size (contiguous runs of rows, in
    /// order) named `NAME-0000K-of-0000N.h5` in `directory`, which is created if needed.
    ///
    /// `/x` is chunked by about 32 KiB (``chunkRows(rowCount:rowBytes:)``) and gzip-compressed
    /// (level 4), `/y` (int64) likewise.
    /// - Parameters:
    ///   - rows: The rows; at least one a shard.
    ///   - directory: Where to write; it must hold no `.h5` files unless `overwrite`.
    ///   - name: The shards' name prefix.
    ///   - shardCount: The number of files.
    ///   - attributes: The root attributes of every shard.
    ///   - overwrite: Whether to delete the `.h5` files already in `directory` (default false).
    /// - Returns: The paths written, in shard order.
    @discardableResult
    public static func write(_ rows: DatasetRows, to directory: String, name: String, shardCount: Int,
                             attributes: Attributes, overwrite: Bool = false) throws -> [String] {
        guard shardCount >= 1 else { throw DatasetError.invalid("shard count \(shardCount) must be at least 1") }
        guard rows.rowCount >= shardCount else {
            throw DatasetError.invalid("\(rows.rowCount) rows cannot fill \(shardCount) shards (a shard may not be empty)")
        }
        guard !name.isEmpty, !name.contains("/") else { throw DatasetError.invalid("shard name \"\(name)\" must be non-empty without /") }
        let channels = rows.featureShape.count == 3 ? rows.featureShape[0] : 1
        for (label, values) in [("channel_mean", attributes.channelMean), ("channel_std", attributes.channelStandardDeviation)] {
            guard !values.isEmpty, values.allSatisfy(\.isFinite) else { throw DatasetError.invalid("\(label) \(values) must be finite numbers") }
            guard rows.featureShape.count != 3 || values.count == 1 || values.count == channels else {
                throw DatasetError.invalid("\(label) has \(values.count) values for \(channels) channels")
            }
        }
        guard attributes.channelStandardDeviation.allSatisfy({ $0 > 0 }) else {
            throw DatasetError.invalid("channel_std \(attributes.channelStandardDeviation) must be positive")
        }
        try prepareDirectory(directory, overwrite: overwrite)
        let width = rows.featureCount
        let rowBytes = width * (rows.values.storage == .uint8 ? 1 : 4)
        var paths: [String] = []
        for index in 0..<shardCount {
            let range = GlobalBatchSampler.split(rows.rowCount, rank: index, parts: shardCount)
            let path = (directory as NSString).appendingPathComponent(shardName(name, index: index, count: shardCount))
            let shape = [range.count] + rows.featureShape
            let chunks = [chunkRows(rowCount: range.count, rowBytes: rowBytes)] + rows.featureShape
            try HDF5File.withNewFile(path) { file in
                let values = (range.lowerBound * width)..<(range.upperBound * width)
                switch rows.values {
                case .uint8(let all):
                    try file.createDataset("x", shape: shape, values: Array(all[values]), chunks: chunks, gzipLevel: 4)
                case .float32(let all):
                    try file.createDataset("x", shape: shape, values: Array(all[values]), chunks: chunks, gzipLevel: 4)
                }
                if let labels = rows.labels {
                    try file.createDataset("y", shape: [range.count], values: Array(labels[range]),
                                           chunks: [min(range.count, 4096)], gzipLevel: 4)
                }
                try writeRootAttributes(attributes, to: file, featureShape: rows.featureShape, labelled: rows.labels != nil,
                                        shardIndex: index, shardCount: shardCount)
            }
            paths.append(path)
        }
        return paths
    }

    /// Rows a chunk of `/x`: about 32 KiB (a random row decompresses one chunk, so small chunks
    /// keep shuffled reading fast), at most 1024 rows and at most the shard's.
    static func chunkRows(rowCount: Int, rowBytes: Int) -> Int {
        max(1, min(rowCount, 1024, (32 << 10) / max(1, rowBytes)))
    }

    /// Creates `directory` if needed and makes sure it holds no shards: deletes them when
    /// `overwrite`, throws naming one otherwise.
    static func prepareDirectory(_ directory: String, overwrite: Bool) throws {
        let manager = FileManager.default
        try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let existing = try manager.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".h5") }.sorted()
        if !existing.isEmpty {
            guard overwrite else {
                throw DatasetError.file(path: directory, problem: "already holds shards (\(existing[0]) …); pass --overwrite to replace them")
            }
            for file in existing { try manager.removeItem(atPath: (directory as NSString).appendingPathComponent(file)) }
        }
    }

    /// Throws, before anything is written, when `directory/train` (or, with `test`,
    /// `directory/test`) already holds shards and `overwrite` is false.
    static func refuseExistingShards(in directory: String, test: Bool, overwrite: Bool) throws {
        guard !overwrite else { return }
        for split in ["train", "test"] where split == "train" || test {
            let path = (directory as NSString).appendingPathComponent(split)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            if let existing = names.filter({ $0.hasSuffix(".h5") }).sorted().first {
                throw DatasetError.file(path: path, problem: "already holds shards (\(existing) …); pass --overwrite to replace them")
            }
        }
    }

    /// The root attributes of a shard of the layout of ``ShardedDataset`` (version 1).
    static func writeRootAttributes(_ attributes: Attributes, to file: HDF5File, featureShape: [Int], labelled: Bool,
                                    shardIndex: Int, shardCount: Int) throws {
        try file.setAttribute("format", to: .string("anticollapse-shard"))
        try file.setAttribute("layout_version", to: .int64(ShardedDataset.layoutVersion))
        try file.setAttribute("feature_shape", to: .int64Array(featureShape.map { Int64($0) }))
        try file.setAttribute("pixel_scale", to: .double(attributes.pixelScale))
        try file.setAttribute("channel_mean", to: .doubleArray(attributes.channelMean))
        try file.setAttribute("channel_std", to: .doubleArray(attributes.channelStandardDeviation))
        if labelled, let classes = attributes.classCount {
            try file.setAttribute("num_classes", to: .int64(Int64(classes)))
        }
        if labelled, let names = attributes.classNames { try file.setAttribute("class_names", to: .stringArray(names)) }
        try file.setAttribute("shard_index", to: .int64(Int64(shardIndex)))
        try file.setAttribute("shard_count", to: .int64(Int64(shardCount)))
        try file.setAttribute("source", to: .string(attributes.source))
    }

    /// A seeded split of `rowCount` rows into training and test rows, each in random order:
    /// the test rows are the first `round(rowCount · testFraction)` of a permutation drawn
    /// from `seed`.
    public static func trainTestSplit(rowCount: Int, testFraction: Double, seed: UInt64) throws -> (train: [Int], test: [Int]) {
        guard testFraction >= 0, testFraction < 1 else {
            throw DatasetError.invalid("test fraction \(testFraction) must be in [0, 1)")
        }
        var order = Array(0..<rowCount)
        // Fisher–Yates on our own draws, so the split does not change with the standard library.
        var random = CounterRandom(seed: seed, streamName: "train-test split").sequence()
        for i in stride(from: rowCount - 1, to: 0, by: -1) {
            order.swapAt(i, Int(GlobalBatchSampler.bounded(&random, UInt64(i + 1))))
        }
        let testCount = Int((Double(rowCount) * testFraction).rounded())
        return (Array(order[testCount...]), Array(order[..<testCount]))
    }

    /// Splits `rows` with ``trainTestSplit(rowCount:testFraction:seed:)`` and writes
    /// `directory/train/NAME-train-…` and, when the test split is not empty,
    /// `directory/test/NAME-test-…`, both with the training split's statistics.
    /// - Returns: The paths written.
    @discardableResult
    public static func writeSplit(_ rows: DatasetRows, to directory: String, name: String, trainShards: Int,
                                  testShards: Int = 1, testFraction: Double, seed: UInt64, source: String,
                                  overwrite: Bool = false) throws -> (train: [String], test: [String]) {
        let (trainRows, testRows) = try trainTestSplit(rowCount: rows.rowCount, testFraction: testFraction, seed: seed)
        return try writeSplit(train: rows.selecting(trainRows), test: testRows.isEmpty ? nil : rows.selecting(testRows),
                              to: directory, name: name, trainShards: trainShards, testShards: testShards,
                              source: source, overwrite: overwrite)
    }

    /// Writes a training split (whose statistics both splits record) and an optional test split
    /// under `directory/train` and `directory/test`.
    @discardableResult
    public static func writeSplit(train: DatasetRows, test: DatasetRows?, to directory: String, name: String,
                                  trainShards: Int, testShards: Int = 1, source: String,
                                  overwrite: Bool = false) throws -> (train: [String], test: [String]) {
        // Refuse before writing anything when either split's directory already holds shards.
        try refuseExistingShards(in: directory, test: test != nil, overwrite: overwrite)
        var attributes = Attributes.describing(train, source: source)
        if let testLabels = test?.labels, let classes = attributes.classCount {
            attributes.classCount = max(classes, Int(testLabels.max() ?? -1) + 1)
        }
        let trainPaths = try write(train, to: (directory as NSString).appendingPathComponent("train"), name: "\(name)-train",
                                   shardCount: trainShards, attributes: attributes, overwrite: overwrite)
        var testPaths: [String] = []
        if let test {
            testPaths = try write(test, to: (directory as NSString).appendingPathComponent("test"), name: "\(name)-test",
                                  shardCount: testShards, attributes: attributes, overwrite: overwrite)
        }
        return (trainPaths, testPaths)
    }
}
