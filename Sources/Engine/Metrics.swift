import Communication
import Foundation
import Objectives

/// One measured value of a step, as both sinks name it.
public struct MetricsField: Sendable, Equatable {
    /// The value: a whole number (`communicated_bytes`) or a number (non-finite ones are
    /// written as JSON null).
    public enum Value: Sendable, Equatable {
        case integer(Int)
        case number(Double)
        /// A distribution: TensorBoard's histograms (not written to `metrics.jsonl`).
        case histogram(MetricsHistogram)
        /// A picture: TensorBoard's images (not written to `metrics.jsonl`).
        case image(MetricsImage)

        /// The number (NaN for a histogram or an image).
        public var double: Double {
            switch self {
            case let .integer(value): return Double(value)
            case let .number(value): return value
            case .histogram, .image: return .nan
            }
        }

        /// Whether the value is a number (written to `metrics.jsonl` and as a scalar).
        public var isScalar: Bool {
            switch self {
            case .integer, .number: return true
            case .histogram, .image: return false
            }
        }
    }

    /// The key in `metrics.jsonl` (`loss`, `invariance`, `probe_accuracy`).
    public var key: String
    /// The tag in TensorBoard (`loss`, `loss/invariance`, `probe/accuracy`).
    public var tag: String
    public var value: Value

    public init(_ key: String, _ value: Double, tag: String? = nil) {
        self.key = key
        self.tag = tag ?? key
        self.value = .number(value)
    }

    public init(_ key: String, integer: Int, tag: String? = nil) {
        self.key = key
        self.tag = tag ?? key
        value = .integer(integer)
    }

    /// A histogram or an image, under its TensorBoard tag.
    public init(tag: String, _ value: Value) {
        key = tag
        self.tag = tag
        self.value = value
    }
}

/// A distribution as TensorBoard's `HistogramProto` holds it: bucket `i` counts the values in
/// (`bucketLimits[i - 1]`, `bucketLimits[i]`].
public struct MetricsHistogram: Sendable, Equatable {
    public var minimum, maximum, count, sum, sumOfSquares: Double
    public var bucketLimits: [Double]
    public var bucketCounts: [Double]

    public init(minimum: Double, maximum: Double, count: Double, sum: Double, sumOfSquares: Double,
                bucketLimits: [Double], bucketCounts: [Double]) {
        self.minimum = minimum; self.maximum = maximum; self.count = count; self.sum = sum
        self.sumOfSquares = sumOfSquares; self.bucketLimits = bucketLimits; self.bucketCounts = bucketCounts
    }

    /// The histogram of `values` over `bucketCount` equal buckets between their extremes.
    public init(_ values: [Double], bucketCount: Int = 30) {
        let low = values.min() ?? 0, high = values.max() ?? 0
        let width = high > low ? (high - low) / Double(bucketCount) : 1
        var counts = [Double](repeating: 0, count: bucketCount)
        for value in values { counts[min(bucketCount - 1, max(0, Int(((value - low) / width).rounded(.up)) - 1))] += 1 }
        self.init(minimum: low, maximum: high, count: Double(values.count), sum: values.reduce(0, +),
                  sumOfSquares: values.reduce(0) { $0 + $1 * $1 },
                  bucketLimits: (1...bucketCount).map { low + Double($0) * width }, bucketCounts: counts)
    }
}

/// A PNG picture for TensorBoard.
public struct MetricsImage: Sendable, Equatable {
    public var width, height, channels: Int
    public var png: [UInt8]

    public init(width: Int, height: Int, channels: Int, png: [UInt8]) {
        self.width = width; self.height = height; self.channels = channels; self.png = png
    }
}

/// What a step measured, in order: one record feeds every sink (`metrics.jsonl`, TensorBoard,
/// the progress line). Rank 0 writes it.
public struct MetricsRecord: Sendable {
    public var step: Int
    public var epoch: Int
    /// The values, in the order they are written.
    public var fields: [MetricsField]

    public init(step: Int, epoch: Int, fields: [MetricsField]) {
        self.step = step
        self.epoch = epoch
        self.fields = fields
    }

    /// The value of field `key`, if present.
    public subscript(key: String) -> Double? { fields.first { $0.key == key }?.value.double }

    /// The record as one JSON object (`step` and `epoch` first, then the fields in order,
    /// numbers as JSON numbers; a non-finite number is written as null).
    public var jsonLine: String {
        var parts = ["\"step\":\(step)", "\"epoch\":\(epoch)"]
        for field in fields {
            switch field.value {
            case let .integer(value): parts.append("\"\(field.key)\":\(value)")
            case let .number(value): parts.append("\"\(field.key)\":\(value.isFinite ? "\(value)" : "null")")
            case .histogram, .image: continue
            }
        }
        return "{" + parts.joined(separator: ",") + "}"
    }
}

extension MetricsRecord {
    /// The fields of one training step, in the engine's order: loss and its terms, learning
    /// rate, throughput, gradient norm, bytes, time shares, then `extra` (the recipe's: probe,
    /// diagnostics).
    public init(step: Int, epoch: Int, loss: Double, terms: [ObjectiveTerm], learningRate: Double, samplesPerSecond: Double,
                gradientNorm: Double, communicatedBytes: Int, dataWaitFraction: Double? = nil,
                collectiveFraction: Double? = nil, extra: [MetricsField] = []) {
        var fields = [MetricsField("loss", loss)]
        fields += terms.map { MetricsField($0.name, $0.value, tag: "loss/\($0.name)") }
        fields += [MetricsField("lr", learningRate), MetricsField("samples_per_second", samplesPerSecond),
                   MetricsField("grad_norm", gradientNorm), MetricsField("communicated_bytes", integer: communicatedBytes)]
        if let dataWaitFraction { fields.append(MetricsField("data_wait_fraction", dataWaitFraction, tag: "time/data_wait_fraction")) }
        if let collectiveFraction {
            fields.append(MetricsField("collective_fraction", collectiveFraction, tag: "time/collective_fraction"))
        }
        self.init(step: step, epoch: epoch, fields: fields + extra)
    }

    /// A joint-embedding step's record with the online probe and collapse diagnostics.
    public init(step: Int, epoch: Int, loss: Double, terms: [ObjectiveTerm], learningRate: Double, samplesPerSecond: Double,
                gradientNorm: Double, communicatedBytes: Int, diagnostics: CollapseDiagnostics?,
                onlineProbe: (loss: Double, accuracy: Double)? = nil, dataWaitFraction: Double? = nil,
                collectiveFraction: Double? = nil) {
        self.init(step: step, epoch: epoch, loss: loss, terms: terms, learningRate: learningRate,
                  samplesPerSecond: samplesPerSecond, gradientNorm: gradientNorm, communicatedBytes: communicatedBytes,
                  dataWaitFraction: dataWaitFraction, collectiveFraction: collectiveFraction,
                  extra: MetricsField.onlineProbe(onlineProbe) + MetricsField.diagnostics(diagnostics))
    }

    /// The value of the loss.
    public var loss: Double { self["loss"] ?? .nan }
}

extension MetricsField {
    /// The online probe's fields (none when it saw no rows).
    public static func onlineProbe(_ probe: (loss: Double, accuracy: Double)?) -> [MetricsField] {
        guard let probe else { return [] }
        return [MetricsField("probe_loss", probe.loss, tag: "probe/loss"),
                MetricsField("probe_accuracy", probe.accuracy, tag: "probe/accuracy")]
    }

    /// The collapse diagnostics' fields (none when not measured this step).
    public static func diagnostics(_ d: CollapseDiagnostics?) -> [MetricsField] {
        guard let d else { return [] }
        return [MetricsField("std_mean", d.meanStandardDeviation, tag: "diagnostics/std_mean"),
                MetricsField("std_min", d.minimumStandardDeviation, tag: "diagnostics/std_min"),
                MetricsField("effective_rank", d.effectiveRank, tag: "diagnostics/effective_rank"),
                MetricsField("offdiag_cov_energy", d.offDiagonalCovarianceEnergy, tag: "diagnostics/offdiag_cov_energy"),
                MetricsField("diag_epps_pulley", d.eppsPulley, tag: "diagnostics/epps_pulley")]
    }
}

/// Appends ``MetricsRecord``s to `RUN_DIR/metrics.jsonl`, one JSON object a line.
public final class MetricsWriter {
    private let handle: FileHandle?

    /// Opens the metrics of a run starting at `startStep`: records of later steps (written by
    /// a run that died after its last checkpoint) are dropped, so a resumed run's file holds
    /// each step once.
    public init(runDirectory: String, enabled: Bool, startStep: Int) throws {
        guard enabled else { handle = nil; return }
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        let path = (runDirectory as NSString).appendingPathComponent("metrics.jsonl")
        var kept = ""
        if startStep > 0, let old = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                let record = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                if let step = record?["step"] as? Int, step <= startStep { kept += line + "\n" }
            }
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(kept.utf8)) else {
            throw TrainingError("cannot create \(path)")
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TrainingError("cannot open \(path) for writing") }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    deinit { try? handle?.close() }

    public func write(_ record: MetricsRecord) throws {
        do { try handle?.write(contentsOf: Data((record.jsonLine + "\n").utf8)) } catch {
            throw TrainingError("cannot write metrics.jsonl at step \(record.step): \(error.localizedDescription)")
        }
    }
}

/// The progress line of rank 0: redrawn in place on a terminal, a plain line otherwise.
public final class ProgressPrinter {
    private let log: (String) -> Void
    private let enabled: Bool
    /// Redraw in place only on a terminal of our own: under mpirun a rank's standard output is
    /// a pseudo-terminal even when mpirun's own output goes to a file.
    private let interactive = isatty(STDOUT_FILENO) != 0 && !MPICommunicator.isLaunchedByMPI
    private let started = Date()
    private let firstStep: Int
    private var drewInPlace = false

    /// - Parameters:
    ///   - enabled: whether this rank prints (rank 0 only).
    ///   - startStep: the step the run (or this resumed part of it) starts from.
    public init(log: @escaping (String) -> Void, enabled: Bool, startStep: Int) {
        self.log = log
        self.enabled = enabled
        firstStep = startStep
    }

    /// Shows the record of a step: one line — redrawn in place on a terminal, cut to its
    /// width — with the step, loss and terms, learning rate, throughput, ETA and the probe; and,
    /// when the record has collapse diagnostics, a line of its own with them and the time
    /// shares, kept above the progress line.
    public func show(_ record: MetricsRecord, totalSteps: Int, lastStep: Int) {
        guard enabled else { return }
        let done = record.step - firstStep
        let elapsed = Date().timeIntervalSince(started)
        let remaining = done > 0 ? elapsed / Double(done) * Double(lastStep - record.step) : 0
        let terms = record.fields.filter { $0.tag.hasPrefix("loss/") }
            .map { "\($0.key) \(Self.format($0.value.double))" }.joined(separator: " ")
        let width = String(totalSteps).count
        let stepText = String(repeating: " ", count: max(0, width - String(record.step).count)) + String(record.step)
        var line = "step \(stepText)/\(totalSteps) | loss \(Self.format(record.loss)) (\(terms))"
        line += " | lr \(Self.format(record["lr"] ?? .nan)) | \(Int(record["samples_per_second"] ?? 0)) samples/s"
        line += " | ETA \(Self.duration(remaining))"
        if let accuracy = record["probe_accuracy"] { line += String(format: " | probe %.1f%%", 100 * accuracy) }
        if let accuracy = record["probe_test_accuracy"] { line += String(format: " (test %.1f%%)", 100 * accuracy) }
        if let std = record["std_mean"], let rank = record["effective_rank"] {
            var details = "  step \(record.step), epoch \(record.epoch): std \(Self.format(std))"
            if let minimum = record["std_min"] { details += " (min \(Self.format(minimum)))" }
            details += ", effective rank \(Self.format(rank))"
            if let collective = record["collective_fraction"], let wait = record["data_wait_fraction"] {
                details += String(format: "; time in collectives %.1f%%, waiting for data %.1f%%", 100 * collective, 100 * wait)
            }
            print(permanent: details)
        }
        if interactive {
            let columns = Self.terminalColumns()
            let cut = line.count >= columns ? String(line.prefix(max(10, columns - 2))) + "…" : line
            FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + cut).utf8))
            drewInPlace = true
        } else {
            log(line)
        }
    }

    /// Prints a line that stays, above the progress line when one is drawn in place.
    public func print(permanent line: String) {
        guard enabled else { return }
        if drewInPlace {
            FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + line + "\n").utf8))
        } else {
            log(line)
        }
    }

    public func finish() {
        if drewInPlace { FileHandle.standardOutput.write(Data("\n".utf8)) }
        drewInPlace = false
    }

    /// The terminal's width (`TIOCGWINSZ`, else `COLUMNS`, else 80).
    static func terminalColumns() -> Int {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init) ?? 80
    }

    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "\(value)" }
        let magnitude = abs(value)
        if magnitude != 0 && (magnitude < 1e-3 || magnitude >= 1e5) { return String(format: "%.3e", value) }
        return String(format: magnitude < 1 ? "%.4f" : "%.3f", value)
    }

    /// `m:ss`, or `h:mm:ss` from an hour on: the ETA of progress lines.
    public static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }
}
