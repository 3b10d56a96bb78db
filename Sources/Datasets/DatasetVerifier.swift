import Foundation
import HDF5

/// What `anticollapse dataset verify` found in a dataset that passed every check.
public struct VerificationReport: Sendable, Equatable, CustomStringConvertible {
    public let location: String
    public let rowCount: Int
    /// Each shard's path and row count.
    public let shards: [ShardedDataset.Shard]
    public let featureShape: [Int]
    public let storage: ShardedDataset.Storage
    public let normalization: Normalization
    /// The number of classes (0 without labels).
    public let classCount: Int
    /// Rows a class, or nil without labels.
    public let labelHistogram: [Int]?
    /// The smallest and largest stored value.
    public let valueRange: ClosedRange<Float>
    /// The classes' names (the first shard's `class_names` attribute), or nil.
    public var classNames: [String]? = nil

    /// Several lines for people: totals, normalisation, label histogram, shards.
    public var description: String {
        var lines = ["\(location): OK",
                     "  rows \(rowCount) in \(shards.count) shard\(shards.count == 1 ? "" : "s"), "
                        + "feature shape \(featureShape.map(String.init).joined(separator: "×")), \(storage.rawValue), "
                        + "values \(valueRange.lowerBound)...\(valueRange.upperBound)",
                     "  normalisation: (x · \(normalization.pixelScale) − mean \(Self.abbreviated(normalization.mean))) / std "
                        + Self.abbreviated(normalization.standardDeviation)]
        if let histogram = labelHistogram {
            lines.append("  labels: \(classCount) classes; rows a class: "
                         + histogram.enumerated().map { label, rows in
                             let name = classNames.flatMap { label < $0.count ? " (\($0[label]))" : nil } ?? ""
                             return "\(label)\(name): \(rows)"
                         }.joined(separator: ", "))
        } else {
            lines.append("  labels: none")
        }
        for shard in shards { lines.append("  \(shard.path): \(shard.rowCount) rows") }
        return lines.joined(separator: "\n")
    }

    /// A list of at most eight values, or its first six and a count.
    private static func abbreviated(_ values: [Double]) -> String {
        let shown = values.count <= 8 ? values : Array(values.prefix(6))
        let text = shown.map { String(format: "%.6g", $0) }.joined(separator: ", ")
        return "[" + text + (values.count <= 8 ? "" : ", … (\(values.count) values)") + "]"
    }
}

/// Checks a whole dataset: opens it (every shard present, agreeing in shape and type, non-empty,
/// labels one a row), then reads every row, checking float values for NaN and infinity and labels
/// for being in `0 ..< classCount`.
public enum DatasetVerifier {
    /// - Parameters:
    ///   - location: A dataset directory, manifest or shard.
    ///   - rowsPerRead: Rows read at a time (default 4096), bounding memory.
    /// - Throws: ``DatasetError`` naming the file (and the row) of the first problem.
    public static func verify(_ location: String, rowsPerRead: Int = 4096) throws -> VerificationReport {
        let dataset = try ShardedDataset(location)
        var histogram = [Int](repeating: 0, count: dataset.classCount)
        var low = Float.infinity, high = -Float.infinity
        for shard in dataset.shards {
            var start = 0
            while start < shard.rowCount {
                let end = min(shard.rowCount, start + max(1, rowsPerRead))
                let rows = Array((shard.firstRow + start)..<(shard.firstRow + end))
                let (features, labels) = try dataset.read(rows: rows)   // throws on NaN / infinity
                for value in features {
                    low = min(low, value); high = max(high, value)
                }
                if let labels {
                    for (i, label) in labels.enumerated() {
                        guard label >= 0, label < Int64(dataset.classCount) else {
                            throw DatasetError.file(path: shard.path, problem: "row \(start + i) of /y holds label \(label), "
                                                    + "outside 0..<\(dataset.classCount) (num_classes)")
                        }
                        histogram[Int(label)] += 1
                    }
                }
                start = end
            }
        }
        var report = VerificationReport(location: location, rowCount: dataset.rowCount,
                                        shards: dataset.shards,
                                        featureShape: dataset.featureShape, storage: dataset.storage,
                                        normalization: dataset.normalization, classCount: dataset.classCount,
                                        labelHistogram: dataset.hasLabels ? histogram : nil,
                                        valueRange: low <= high ? low...high : 0...0)
        if let first = dataset.shards.first,
           case let .stringArray(names)? = try? HDF5File.withFile(first.path, { try $0.attribute("class_names") }) {
            report.classNames = names
        }
        return report
    }
}

/// Loader throughput, for `anticollapse dataset bench` (and later `anticollapse bench data`).
public enum DataBenchmark {
    /// What one run measured.
    public struct Result: Sendable, Equatable {
        /// Dataset rows delivered a second.
        public let rowsPerSecond: Double
        /// Stored (decompressed) feature bytes read a second, in MB (10⁶ bytes).
        public let megabytesPerSecond: Double
        public let rows: Int
        public let seconds: Double
    }

    /// Times `steps` consecutive global batches of one rank that reads them all.
    ///
    /// With `augment`, each step is ``BatchLoader/batch(step:)`` with `plan` (default: two
    /// augmented global views); without, it is ``BatchLoader/readNormalized(rows:)`` of the same
    /// rows (read, convert, normalise). Both run on the calling thread.
    public static func run(dataset: ShardedDataset, globalBatchSize: Int, steps: Int, augment: Bool,
                           plan: ViewPlan = ViewPlan(), seed: UInt64 = 0) throws -> Result {
        guard steps > 0 else { throw DatasetError.invalid("steps (\(steps)) must be positive") }
        let sampler = try GlobalBatchSampler(rowCount: dataset.rowCount, globalBatchSize: globalBatchSize, seed: seed)
        let loader = try BatchLoader(dataset: dataset, sampler: sampler, plan: plan, prefetchDepth: 0)
        var permutation = (epoch: 0, order: sampler.permutation(epoch: 0))
        let clock = ContinuousClock()
        var rows = 0
        let elapsed = try clock.measure {
            for step in 0..<steps {
                if augment {
                    rows += try loader.batch(step: step).rows.count
                } else {
                    let epoch = sampler.position(ofStep: step).epoch
                    if epoch != permutation.epoch { permutation = (epoch, sampler.permutation(epoch: epoch)) }
                    let batchRows = Array(sampler.globalBatch(step: step, permutation: permutation.order))
                    rows += try loader.readNormalized(rows: batchRows).features.rowCount
                }
            }
        }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        let bytes = Double(rows * dataset.featureCount * (dataset.storage == .uint8 ? 1 : 4))
        return Result(rowsPerSecond: Double(rows) / seconds, megabytesPerSecond: bytes / seconds / 1e6,
                      rows: rows, seconds: seconds)
    }
}
