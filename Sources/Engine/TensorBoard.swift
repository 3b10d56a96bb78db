import Foundation

/// Writes TensorBoard scalar summaries: an `events.out.tfevents.<seconds>.<host>` file in the
/// run directory, readable by `tensorboard --logdir RUN_DIR` without TensorFlow.
///
/// ## Format
/// The file is a sequence of TFRecords, each
///
///     uint64 length (little-endian) · uint32 masked CRC32C(length bytes) · data · uint32 masked CRC32C(data)
///
/// with `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`. Each record's data is a
/// protobuf `tensorflow.Event`, encoded by hand (only the fields needed):
///
///     Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
///                  SessionLog session_log = 7; }
///     Summary    { repeated Value value = 1; }
///     Value      { string tag = 1; float simple_value = 2; }
///     SessionLog { SessionStatus status = 1 (START = 1); string msg = 3; }
///
/// Text and hyper-parameters are `Value { tag = 1; SummaryMetadata metadata = 9; TensorProto tensor = 8; }`
/// with `SummaryMetadata { PluginData plugin_data = 1 { string plugin_name = 1; bytes content = 2; } }`
/// naming the plugin that reads them (see ``write(hyperparameters:metrics:wallTime:)``).
///
/// The first record carries `file_version = "brain.Event:2"`. A resumed run's file then carries
/// a restart marker, `session_log { status: START }` at the first step the run will log anew
/// (the checkpoint's step + 1): TensorBoard then drops the records of that step and later that
/// the interrupted run wrote after its checkpoint, as it does for TensorFlow's own restarts.
/// Every later record is a summary.
public final class TensorBoardWriter {
    /// The event file.
    public let path: String
    private let handle: FileHandle

    /// The scalar tags TensorBoard's HParams dashboard compares runs by (those a recipe does
    /// not write stay empty).
    public static let comparedMetrics = ["loss", "lr", "grad_norm", "samples_per_second", "diagnostics/std_mean",
                                         "diagnostics/std_min", "diagnostics/effective_rank", "probe/accuracy",
                                         "probe/test_accuracy"]

    /// Creates a new event file in `directory` (creating the directory).
    ///
    /// - Throws: ``TrainingError`` naming the file when it cannot be created.
    ///
    /// - Parameter resumingAfter: the step a resumed run starts from (its checkpoint's): when
    ///   positive, a restart marker at the next step follows the header.
    public init(directory: String, resumingAfter startStep: Int = 0, now: Date = Date()) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        let base = (directory as NSString).appendingPathComponent("events.out.tfevents.\(Int(now.timeIntervalSince1970)).\(host)")
        var path = base, suffix = 0
        while FileManager.default.fileExists(atPath: path) { suffix += 1; path = "\(base).\(suffix)" }
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw TrainingError("cannot create the TensorBoard event file \(path)")
        }
        self.path = path
        self.handle = handle
        var event = ProtocolBuffer()
        event.double(1, now.timeIntervalSince1970)
        event.string(3, "brain.Event:2")
        try write(record: event.bytes)
        if startStep > 0 {
            var log = ProtocolBuffer()
            log.varint(1, 1)   // START
            log.string(3, "resumed from the checkpoint of step \(startStep)")
            var marker = ProtocolBuffer()
            marker.double(1, now.timeIntervalSince1970)
            marker.varint(2, UInt64(startStep + 1))
            marker.message(7, log)
            try write(record: marker.bytes)
        }
    }

    deinit { try? handle.close() }

    /// Writes one event with scalar summaries `(tag, value)` at `step`.
    public func write(step: Int, scalars: [(tag: String, value: Double)], wallTime: Date = Date()) throws {
        var summary = ProtocolBuffer()
        for (tag, value) in scalars {
            var entry = ProtocolBuffer()
            entry.string(1, tag)
            entry.float(2, Float(value))
            summary.message(1, entry)
        }
        try write(summary, step: step, wallTime: wallTime)
    }

    /// Writes a metrics record: every field under its tag — numbers as scalars, distributions
    /// as histograms, pictures as images.
    public func write(_ record: MetricsRecord, wallTime: Date = Date()) throws {
        var summary = ProtocolBuffer()
        for field in record.fields {
            var entry = ProtocolBuffer()
            entry.string(1, field.tag)
            switch field.value {
            case .integer, .number:
                entry.float(2, Float(field.value.double))
            case let .histogram(h):
                var histogram = ProtocolBuffer()
                histogram.double(1, h.minimum); histogram.double(2, h.maximum); histogram.double(3, h.count)
                histogram.double(4, h.sum); histogram.double(5, h.sumOfSquares)
                histogram.packedDoubles(6, h.bucketLimits); histogram.packedDoubles(7, h.bucketCounts)
                entry.message(5, histogram)
            case let .image(image):
                var picture = ProtocolBuffer()
                picture.varint(1, UInt64(image.height)); picture.varint(2, UInt64(image.width))
                picture.varint(3, UInt64(image.channels)); picture.bytes(4, image.png)
                entry.message(4, picture)
            }
            summary.message(1, entry)
        }
        try write(summary, step: record.step, wallTime: wallTime)
    }

    /// Writes `text` (Markdown) under `tag` for TensorBoard's text dashboard: a string tensor
    /// whose metadata names the `text` plugin.
    public func write(text: String, tag: String, step: Int = 0, wallTime: Date = Date()) throws {
        var tensor = ProtocolBuffer()
        tensor.varint(1, 7)   // DT_STRING
        tensor.message(2, ProtocolBuffer())   // a scalar
        tensor.bytes(8, Array(text.utf8))
        try write(pluginValue: tag, plugin: "text", content: [], tensor: tensor, step: step, wallTime: wallTime)
    }

    /// Writes the run's hyper-parameters and the metrics to compare runs by, for TensorBoard's
    /// HParams dashboard (its `hparams` plugin), as `torch.utils.tensorboard`'s `add_hparams`
    /// does: two summaries at step 0 whose plugin content is a serialised `HParamsPluginData`
    /// (tensorboard/plugins/hparams/plugin_data.proto and api.proto, version 0):
    ///
    ///     _hparams_/experiment:         HParamsPluginData { Experiment experiment = 2 {
    ///                                       double time_created_secs = 3;
    ///                                       repeated HParamInfo hparam_infos = 4 { string name = 1; DataType type = 4; }
    ///                                       repeated MetricInfo metric_infos = 5 { MetricName name = 1 { string tag = 2; } } } }
    ///     _hparams_/session_start_info: HParamsPluginData { SessionStartInfo session_start_info = 3 {
    ///                                       map<string, google.protobuf.Value> hparams = 1;
    ///                                       double start_time_secs = 5; } }
    ///
    /// with `Value { double number_value = 2; string string_value = 3; bool bool_value = 4; }`
    /// and `DataType` 1 string, 2 bool, 3 float64. The metrics are scalar tags of this run
    /// (`loss`, `probe/test_accuracy`): the dashboard shows each one's last value.
    public func write(hyperparameters: [(name: String, value: HyperparameterValue)], metrics: [String],
                      wallTime: Date = Date()) throws {
        var experiment = ProtocolBuffer()
        experiment.double(3, wallTime.timeIntervalSince1970)
        var start = ProtocolBuffer()
        for (name, value) in hyperparameters {
            var info = ProtocolBuffer()
            info.string(1, name)
            var entry = ProtocolBuffer()
            entry.string(1, name)
            var encoded = ProtocolBuffer()
            switch value {
            case let .number(number): info.varint(4, 3); encoded.double(2, number)
            case let .text(text): info.varint(4, 1); encoded.string(3, text)
            case let .boolean(flag): info.varint(4, 2); encoded.varint(4, flag ? 1 : 0)
            }
            entry.message(2, encoded)
            experiment.message(4, info)
            start.message(1, entry)
        }
        for tag in metrics {
            var name = ProtocolBuffer()
            name.string(2, tag)
            var info = ProtocolBuffer()
            info.message(1, name)
            experiment.message(5, info)
        }
        start.double(5, wallTime.timeIntervalSince1970)
        for (tag, field, message) in [("_hparams_/experiment", 2, experiment), ("_hparams_/session_start_info", 3, start)] {
            var data = ProtocolBuffer()   // HParamsPluginData, version 0 (the default, not written)
            data.message(field, message)
            try write(pluginValue: tag, plugin: "hparams", content: data.bytes, tensor: nil, step: 0, wallTime: wallTime)
        }
    }

    /// Writes one summary value under `tag` whose metadata names `plugin` (with `content`),
    /// holding `tensor` if given (TensorBoard adds an empty one to hparams summaries).
    private func write(pluginValue tag: String, plugin: String, content: [UInt8], tensor: ProtocolBuffer?,
                       step: Int, wallTime: Date) throws {
        var pluginData = ProtocolBuffer()
        pluginData.string(1, plugin)
        if !content.isEmpty { pluginData.bytes(2, content) }
        var metadata = ProtocolBuffer()
        metadata.message(1, pluginData)
        var entry = ProtocolBuffer()
        entry.string(1, tag)
        entry.message(9, metadata)
        if let tensor { entry.message(8, tensor) }
        var summary = ProtocolBuffer()
        summary.message(1, entry)
        try write(summary, step: step, wallTime: wallTime)
    }

    /// Writes one event holding `summary` at `step`.
    private func write(_ summary: ProtocolBuffer, step: Int, wallTime: Date) throws {
        var event = ProtocolBuffer()
        event.double(1, wallTime.timeIntervalSince1970)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.message(5, summary)
        try write(record: event.bytes)
    }

    private func write(record data: [UInt8]) throws {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(data.count + 16)
        let length = withUnsafeBytes(of: UInt64(data.count).littleEndian, Array.init)
        bytes += length
        bytes += withUnsafeBytes(of: CRC32C.masked(length).littleEndian, Array.init)
        bytes += data
        bytes += withUnsafeBytes(of: CRC32C.masked(data).littleEndian, Array.init)
        do { try handle.write(contentsOf: bytes) } catch {
            throw TrainingError("cannot write the TensorBoard event file \(path): \(error)")
        }
    }
}

/// A hyper-parameter's value on TensorBoard's HParams dashboard.
public enum HyperparameterValue: Sendable, Equatable {
    case number(Double)
    case text(String)
    case boolean(Bool)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord framing uses it.
public enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { byte in
        var crc = UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        return crc
    }

    /// The CRC-32C of `bytes`.
    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8`.
    public static func masked<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        let crc = checksum(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}

/// A protobuf message encoded field by field (wire types 0, 1, 2 and 5).
struct ProtocolBuffer {
    private(set) var bytes: [UInt8] = []

    private mutating func rawVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }

    private mutating func key(_ field: Int, _ wireType: UInt64) { rawVarint(UInt64(field) << 3 | wireType) }

    /// A varint field (int64, uint64, bool, enum); a negative int64 is its two's complement.
    mutating func varint(_ field: Int, _ value: UInt64) { key(field, 0); rawVarint(value) }

    /// A 64-bit little-endian field (double).
    mutating func double(_ field: Int, _ value: Double) {
        key(field, 1)
        bytes += withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init)
    }

    /// A 32-bit little-endian field (float).
    mutating func float(_ field: Int, _ value: Float) {
        key(field, 5)
        bytes += withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init)
    }

    /// A length-delimited field holding bytes.
    mutating func bytes(_ field: Int, _ value: [UInt8]) { lengthDelimited(field, value) }

    /// A packed repeated double field.
    mutating func packedDoubles(_ field: Int, _ values: [Double]) {
        lengthDelimited(field, values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) })
    }

    /// A length-delimited field holding UTF-8 text.
    mutating func string(_ field: Int, _ value: String) { lengthDelimited(field, Array(value.utf8)) }

    /// A length-delimited field holding a message.
    mutating func message(_ field: Int, _ value: ProtocolBuffer) { lengthDelimited(field, value.bytes) }

    private mutating func lengthDelimited(_ field: Int, _ value: [UInt8]) {
        key(field, 2)
        rawVarint(UInt64(value.count))
        bytes += value
    }
}
