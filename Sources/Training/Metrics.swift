import Communication
import Foundation
import Objectives

/// One line of `metrics.jsonl`: what a step measured (rank 0 writes it).
public struct MetricsRecord: Sendable {
    public var step: Int
    public var epoch: Int
    public var loss: Double
    public var terms: [ObjectiveTerm]
    public var learningRate: Double
    public var samplesPerSecond: Double
    public var gradientNorm: Double
    /// Bytes this rank sent in the step's collectives (statistics + gradients).
    public var communicatedBytes: Int
    public var diagnostics: CollapseDiagnostics?
    /// The online linear probe's mean loss and accuracy since the previous record.
    public var onlineProbe: (loss: Double, accuracy: Double)?
    /// The shares of step time, since the previous record, spent waiting for the data loader
    /// and inside collectives (batch norm's, the objective's, the gradients'; waits for the
    /// slowest rank included).
    public var dataWaitFraction: Double?, collectiveFraction: Double?

    public init(step: Int, epoch: Int, loss: Double, terms: [ObjectiveTerm], learningRate: Double, samplesPerSecond: Double,
                gradientNorm: Double, communicatedBytes: Int, diagnostics: CollapseDiagnostics?,
                onlineProbe: (loss: Double, accuracy: Double)? = nil, dataWaitFraction: Double? = nil,
                collectiveFraction: Double? = nil) {
        self.step = step; self.epoch = epoch; self.loss = loss; self.terms = terms; self.learningRate = learningRate
        self.samplesPerSecond = samplesPerSecond; self.gradientNorm = gradientNorm
        self.communicatedBytes = communicatedBytes; self.diagnostics = diagnostics; self.onlineProbe = onlineProbe
        self.dataWaitFraction = dataWaitFraction; self.collectiveFraction = collectiveFraction
    }

    /// The record as one JSON object (keys in a fixed order, numbers as JSON numbers; a
    /// non-finite number is written as null).
    public var jsonLine: String {
        func number(_ value: Double) -> String { value.isFinite ? "\(value)" : "null" }
        var fields = ["\"step\":\(step)", "\"epoch\":\(epoch)", "\"loss\":\(number(loss))"]
        fields += terms.map { "\"\($0.name)\":\(number($0.value))" }
        fields += ["\"lr\":\(number(learningRate))", "\"samples_per_second\":\(number(samplesPerSecond))",
                   "\"grad_norm\":\(number(gradientNorm))", "\"communicated_bytes\":\(communicatedBytes)"]
        if let dataWaitFraction { fields.append("\"data_wait_fraction\":\(number(dataWaitFraction))") }
        if let collectiveFraction { fields.append("\"collective_fraction\":\(number(collectiveFraction))") }
        if let probe = onlineProbe {
            fields += ["\"probe_loss\":\(number(probe.loss))", "\"probe_accuracy\":\(number(probe.accuracy))"]
        }
        if let d = diagnostics {
            fields += ["\"std_mean\":\(number(d.meanStandardDeviation))", "\"std_min\":\(number(d.minimumStandardDeviation))",
                       "\"effective_rank\":\(number(d.effectiveRank))",
                       "\"offdiag_cov_energy\":\(number(d.offDiagonalCovarianceEnergy))",
                       "\"epps_pulley\":\(number(d.eppsPulley))"]
        }
        return "{" + fields.joined(separator: ",") + "}"
    }
}

/// Appends ``MetricsRecord``s to `RUN_DIR/metrics.jsonl`, one JSON object a line.
final class MetricsWriter {
    private let handle: FileHandle?

    /// Opens the metrics of a run starting at `startStep`: records of later steps (written by
    /// a run that died after its last checkpoint) are dropped, so a resumed run's file holds
    /// each step once.
    init(runDirectory: String, enabled: Bool, startStep: Int) throws {
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

    func write(_ record: MetricsRecord) throws {
        handle?.write(Data((record.jsonLine + "\n").utf8))
    }
}

/// The progress line of rank 0: redrawn in place on a terminal, a plain line otherwise.
final class ProgressPrinter {
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
    init(log: @escaping (String) -> Void, enabled: Bool, startStep: Int) {
        self.log = log
        self.enabled = enabled
        firstStep = startStep
    }

    func show(_ record: MetricsRecord, totalSteps: Int, lastStep: Int) {
        guard enabled else { return }
        let done = record.step - firstStep
        let elapsed = Date().timeIntervalSince(started)
        let remaining = done > 0 ? elapsed / Double(done) * Double(lastStep - record.step) : 0
        let terms = record.terms.map { "\($0.name) \(Self.format($0.value))" }.joined(separator: " ")
        let width = String(totalSteps).count
        let stepText = String(repeating: " ", count: max(0, width - String(record.step).count)) + String(record.step)
        var line = "step \(stepText)/\(totalSteps) | epoch \(record.epoch) | loss \(Self.format(record.loss)) (\(terms))"
        line += " | lr \(Self.format(record.learningRate)) | \(Int(record.samplesPerSecond)) samples/s"
        if let collective = record.collectiveFraction, let wait = record.dataWaitFraction {
            line += String(format: " (comm %.1f%%, data wait %.1f%%)", 100 * collective, 100 * wait)
        }
        line += " | ETA \(Self.duration(remaining))"
        if let probe = record.onlineProbe {
            line += String(format: " | probe %.1f%%", 100 * probe.accuracy)
        }
        if let d = record.diagnostics {
            line += " | std \(Self.format(d.meanStandardDeviation)) erank \(Self.format(d.effectiveRank))"
        }
        if interactive {
            FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + line).utf8))
            drewInPlace = true
        } else {
            log(line)
        }
    }

    func finish() {
        if drewInPlace { FileHandle.standardOutput.write(Data("\n".utf8)) }
        drewInPlace = false
    }

    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "\(value)" }
        let magnitude = abs(value)
        if magnitude != 0 && (magnitude < 1e-3 || magnitude >= 1e5) { return String(format: "%.3e", value) }
        return String(format: magnitude < 1 ? "%.4f" : "%.3f", value)
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }
}
