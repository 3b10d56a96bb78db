import Foundation
import Datasets
import Objectives
import Engine
import JointEmbedding
import XCTest
import _TestSupport

/// The TensorBoard event file, read back by a small TFRecord and protobuf reader.
final class TensorBoardTests: XCTestCase {
    /// One decoded `tensorflow.Event` (the fields the writer uses).
    struct Event {
        var wallTime: Double?
        var step: Int64 = 0
        var fileVersion: String?
        var scalars: [(tag: String, value: Float)] = []
        /// `session_log.status` (1: START, a restart marker).
        var sessionStatus: UInt64?
        /// Histograms: tag, bucket limits, bucket counts.
        var histograms: [(tag: String, limits: [Double], counts: [Double])] = []
        /// Images: tag, width, height, encoded bytes.
        var images: [(tag: String, width: Int, height: Int, bytes: [UInt8])] = []
        /// Text tensors: tag, plugin name, text.
        var texts: [(tag: String, plugin: String, text: String)] = []
    }

    /// Reads the TFRecords of an event file, checking both masked CRC32Cs of every record.
    static func records(_ data: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> [[UInt8]] {
        var records: [[UInt8]] = [], offset = 0
        func uint32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(data[at + $1]) << (8 * $1) } }
        while offset < data.count {
            let length = Int((0..<8).reduce(UInt64(0)) { $0 | UInt64(data[offset + $1]) << (8 * $1) })
            XCTAssertEqual(uint32(offset + 8), CRC32C.masked(data[offset..<(offset + 8)]), "length CRC", file: file, line: line)
            let body = Array(data[(offset + 12)..<(offset + 12 + length)])
            XCTAssertEqual(uint32(offset + 12 + length), CRC32C.masked(body), "data CRC", file: file, line: line)
            records.append(body)
            offset += 16 + length
        }
        XCTAssertEqual(offset, data.count, "trailing bytes", file: file, line: line)
        return records
    }

    /// A minimal protobuf reader: (field, wire type, varint or bytes).
    static func fields(_ bytes: [UInt8]) -> [(field: Int, varint: UInt64, bytes: [UInt8])] {
        var result: [(Int, UInt64, [UInt8])] = [], i = 0
        func varint() -> UInt64 {
            var value: UInt64 = 0, shift: UInt64 = 0
            while true { let b = bytes[i]; i += 1; value |= UInt64(b & 0x7F) << shift; shift += 7; if b < 0x80 { return value } }
        }
        while i < bytes.count {
            let key = varint(), field = Int(key >> 3)
            switch key & 7 {
            case 0: result.append((field, varint(), []))
            case 1: result.append((field, 0, Array(bytes[i..<(i + 8)]))); i += 8
            case 5: result.append((field, 0, Array(bytes[i..<(i + 4)]))); i += 4
            case 2: let n = Int(varint()); result.append((field, 0, Array(bytes[i..<(i + n)]))); i += n
            default: XCTFail("unexpected wire type \(key & 7)"); return result
            }
        }
        return result
    }

    static func event(_ bytes: [UInt8]) -> Event {
        func littleEndian(_ b: [UInt8]) -> UInt64 { b.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) } }
        var event = Event()
        for f in fields(bytes) {
            switch f.field {
            case 1: event.wallTime = Double(bitPattern: littleEndian(f.bytes))
            case 2: event.step = Int64(bitPattern: f.varint)
            case 3: event.fileVersion = String(decoding: f.bytes, as: UTF8.self)
            case 5:
                for value in fields(f.bytes) where value.field == 1 {
                    var tag = "", number: Float?, plugin = "", text: String?
                    func doubles(_ b: [UInt8]) -> [Double] {
                        stride(from: 0, to: b.count, by: 8).map { Double(bitPattern: littleEndian(Array(b[$0..<($0 + 8)]))) }
                    }
                    for part in fields(value.bytes) {
                        switch part.field {
                        case 1: tag = String(decoding: part.bytes, as: UTF8.self)
                        case 2: number = Float(bitPattern: UInt32(littleEndian(part.bytes)))
                        case 4:
                            var w = 0, h = 0, png: [UInt8] = []
                            for p in fields(part.bytes) {
                                if p.field == 1 { h = Int(p.varint) }
                                if p.field == 2 { w = Int(p.varint) }
                                if p.field == 4 { png = p.bytes }
                            }
                            event.images.append((tag, w, h, png))
                        case 5:
                            var limits: [Double] = [], counts: [Double] = []
                            for p in fields(part.bytes) {
                                if p.field == 6 { limits = doubles(p.bytes) }
                                if p.field == 7 { counts = doubles(p.bytes) }
                            }
                            event.histograms.append((tag, limits, counts))
                        case 8: text = fields(part.bytes).first { $0.field == 8 }.map { String(decoding: $0.bytes, as: UTF8.self) }
                        case 9:
                            let data = fields(part.bytes).first { $0.field == 1 }?.bytes ?? []
                            plugin = fields(data).first { $0.field == 1 }.map { String(decoding: $0.bytes, as: UTF8.self) } ?? ""
                        default: XCTFail("unexpected Summary.Value field \(part.field)")
                        }
                    }
                    if let number { event.scalars.append((tag, number)) }
                    if let text { event.texts.append((tag, plugin, text)) }
                }
            case 7: event.sessionStatus = fields(f.bytes).first { $0.field == 1 }?.varint ?? 0
            default: XCTFail("unexpected Event field \(f.field)")
            }
        }
        return event
    }

    /// `ANTICOLLAPSE_TEST_PYTHON` (else `/usr/bin/python3`) when it has the tensorboard
    /// package (its event reader and hparams plugin); skips the test otherwise.
    static func pythonWithTensorBoard() throws -> String {
        let python = ProcessInfo.processInfo.environment["ANTICOLLAPSE_TEST_PYTHON"] ?? "/usr/bin/python3"
        let modules = "import tensorboard.backend.event_processing.event_accumulator, tensorboard.plugins.hparams.metadata"
        guard FileManager.default.isExecutableFile(atPath: python), (try? runProcess(python, ["-c", modules]))?.status == 0 else {
            throw XCTSkip("tensorboard (Python) is not installed; set ANTICOLLAPSE_TEST_PYTHON to a Python that has it")
        }
        return python
    }

    /// Reads every event of `path`.
    static func events(_ path: String) throws -> [Event] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: path), "cannot read \(path)")
        return records(Array(data)).map(event)
    }

    /// A resumed run's event file starts with a restart marker at the first step it logs anew,
    /// so TensorBoard drops what the interrupted run logged after its checkpoint.
    func testResumedWriterStartsWithARestartMarker() throws {
        let directory = try temporaryDirectory(for: self, prefix: "tensorboard").path
        let fresh = try TensorBoardWriter(directory: directory, now: Date(timeIntervalSince1970: 1_700_000_000))
        XCTAssertNil(try Self.events(fresh.path).first { $0.sessionStatus != nil }, "a new run has no marker")
        let resumed = try TensorBoardWriter(directory: directory, resumingAfter: 7, now: Date(timeIntervalSince1970: 1_700_000_100))
        try resumed.write(step: 8, scalars: [("loss", 1)])
        let events = try Self.events(resumed.path)
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[1].sessionStatus, 1, "START")
        XCTAssertEqual(events[1].step, 8)
        XCTAssertEqual(events[2].scalars.map(\.tag), ["loss"])
    }

    /// TensorBoard's own reader (where Python and the tensorboard package are installed) reads
    /// an interrupted run and its resumed continuation as one series, each step once, with the
    /// resumed run's values.
    func testTensorBoardItselfPurgesTheStepsOfAnInterruptedRun() throws {
        let python = try Self.pythonWithTensorBoard()
        let directory = try temporaryDirectory(for: self, prefix: "tensorboard").path
        let first = try TensorBoardWriter(directory: directory, now: Date(timeIntervalSince1970: 1_700_000_000))
        for step in 1...10 { try first.write(step: step, scalars: [("loss", Double(step))], wallTime: Date(timeIntervalSince1970: 1_700_000_000 + Double(step))) }
        // Resumed from the checkpoint of step 6: steps 7–10 again, with other values.
        let second = try TensorBoardWriter(directory: directory, resumingAfter: 6, now: Date(timeIntervalSince1970: 1_700_000_100))
        for step in 7...12 { try second.write(step: step, scalars: [("loss", Double(100 + step))], wallTime: Date(timeIntervalSince1970: 1_700_000_100 + Double(step))) }
        let script = """
            import sys
            from tensorboard.backend.event_processing import event_accumulator as ea
            a = ea.EventAccumulator(sys.argv[1], purge_orphaned_data=True); a.Reload()
            print(" ".join(f"{e.step}:{e.value:g}" for e in a.Scalars("loss")))
            """
        let result = try runProcess(python, ["-c", script, directory])
        XCTAssertEqual(result.status, 0, result.output)
        // (TensorBoard logs its purge on standard error; the values are the last line.)
        XCTAssertEqual(result.output.split(separator: "\n").last.map(String.init),
                       "1:1 2:2 3:3 4:4 5:5 6:6 7:107 8:108 9:109 10:110 11:111 12:112", result.output)
    }

    /// Histograms, images and text: what the trainer writes at diagnostics steps and at start.
    func testHistogramsImagesAndTextReadBack() throws {
        let directory = try temporaryDirectory(for: self, prefix: "tensorboard").path
        let writer = try TensorBoardWriter(directory: directory)
        try writer.write(text: "    seed: 0", tag: "config")
        let histogram = MetricsHistogram([0, 1, 1, 2, 3, 3, 3], bucketCount: 3)
        XCTAssertEqual(histogram.bucketCounts, [3, 1, 3])
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 1, 2, 3]
        try writer.write(MetricsRecord(step: 50, epoch: 0, fields: [
            MetricsField("loss", 2), MetricsField(tag: "embeddings/feature_std", .histogram(histogram)),
            MetricsField(tag: "embeddings/correlation", .image(MetricsImage(width: 4, height: 3, channels: 1, png: png))),
        ]))
        let events = try Self.events(writer.path)
        XCTAssertEqual(events[1].texts.first?.tag, "config")
        XCTAssertEqual(events[1].texts.first?.plugin, "text")
        XCTAssertEqual(events[1].texts.first?.text, "    seed: 0")
        XCTAssertEqual(events[2].scalars.map(\.tag), ["loss"])
        XCTAssertEqual(events[2].histograms.first?.tag, "embeddings/feature_std")
        XCTAssertEqual(events[2].histograms.first?.limits, [1, 2, 3])
        XCTAssertEqual(events[2].histograms.first?.counts, [3, 1, 3])
        XCTAssertEqual(events[2].images.first?.tag, "embeddings/correlation")
        XCTAssertEqual(events[2].images.first.map { [$0.width, $0.height] }, [4, 3])
        XCTAssertEqual(events[2].images.first?.bytes, png)
        // metrics.jsonl takes the numbers only.
        XCTAssertEqual(MetricsRecord(step: 1, epoch: 0, fields: [MetricsField("loss", 2),
                                                                 MetricsField(tag: "h", .histogram(histogram))]).jsonLine,
                       "{\"step\":1,\"epoch\":0,\"loss\":2.0}")
    }

    /// TensorBoard's own reader (where installed) reads a real run's scalars, histograms,
    /// heatmap images, config text and hyper-parameters.
    func testTensorBoardItselfReadsEveryKindOfARun() throws {
        let python = try Self.pythonWithTensorBoard()
        let root = try temporaryDirectory(for: self).path
        try SyntheticData(kind: .vectors, rows: 64, classes: 4, features: 8, seed: 1).write(to: root + "/data", trainShards: 1)
        let configuration = try TrainingConfiguration.load(yaml: "", overrides: [
            "data.train=\(root)/data/train", "data.test=", "model.encoder={type: mlp, widths: [8, 16, 16]}",
            "model.projector={type: mlp, widths: [16, 16, 16]}", "schedule.global_batch_size=16", "schedule.steps=4",
            "logging.diagnostics_every=2", "logging.every_steps=2",
        ])
        _ = try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(), runDirectory: root + "/run",
                        log: { _ in }).train()
        let script = """
            import sys
            from tensorboard.backend.event_processing import event_accumulator as ea
            a = ea.EventAccumulator(sys.argv[1], size_guidance={ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0, ea.SCALARS: 0})
            a.Reload(); t = a.Tags()
            print("scalars", len(a.Scalars("loss")), "histograms", sorted(t["histograms"]), "images", t["images"],
                  "image", a.Images("embeddings/correlation")[0].width, "text", "config" in t["tensors"],
                  "projection", int(sum(a.Histograms("embeddings/projection_0")[0].histogram_value.bucket)))
            from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
            from tensorboard.plugins.hparams import metadata
            m = pem.EventMultiplexer(); m.AddRunsFromDirectory(sys.argv[1]); m.Reload()
            s = metadata.parse_session_start_info_plugin_data(m.PluginRunToTagToContent("hparams")["."][metadata.SESSION_START_INFO_TAG])
            print("hparams", s.hparams["schedule.global_batch_size"].number_value, s.hparams["data.train"].string_value.endswith("/data/train"))
            """
        let result = try runProcess(python, ["-c", script, root + "/run"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("scalars 2 histograms ['embeddings/feature_std', 'embeddings/projection_0', "
                                             + "'embeddings/projection_1', 'embeddings/projection_2', 'embeddings/projection_3'] "
                                             + "images ['embeddings/correlation'] image 256 text True projection 16"), result.output)
        XCTAssertTrue(result.output.contains("hparams 16.0 True"), result.output)
    }

    /// The summaries with plugin metadata of an event file: (tag, plugin name, plugin content).
    static func pluginSummaries(_ path: String) throws -> [(tag: String, plugin: String, content: [UInt8])] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: path), "cannot read \(path)")
        var result: [(tag: String, plugin: String, content: [UInt8])] = []
        for record in records(Array(data)) {
            for summary in fields(record) where summary.field == 5 {
                for value in fields(summary.bytes) where value.field == 1 {
                    let parts = fields(value.bytes)
                    guard let metadata = parts.first(where: { $0.field == 9 }),
                          let pluginData = fields(metadata.bytes).first(where: { $0.field == 1 }) else { continue }
                    let plugin = fields(pluginData.bytes)
                    result.append((parts.first { $0.field == 1 }.map { String(decoding: $0.bytes, as: UTF8.self) } ?? "",
                                   plugin.first { $0.field == 1 }.map { String(decoding: $0.bytes, as: UTF8.self) } ?? "",
                                   plugin.first { $0.field == 2 }?.bytes ?? []))
                }
            }
        }
        return result
    }

    /// Hyper-parameters are written as the HParams plugin reads them: an experiment listing
    /// each hyper-parameter with its type and each metric tag, and a session start holding the
    /// values (`google.protobuf.Value`: number, string or bool).
    func testHyperparametersAreWrittenForTheHParamsPlugin() throws {
        let directory = try temporaryDirectory(for: self, prefix: "tensorboard").path
        let writer = try TensorBoardWriter(directory: directory, now: Date(timeIntervalSince1970: 1_700_000_000))
        try writer.write(hyperparameters: [("objective.name", .text("vicreg")), ("optimizer.learning_rate", .number(0.3)),
                                           ("model.batch_norm", .boolean(true))],
                         metrics: ["loss", "probe/test_accuracy"], wallTime: Date(timeIntervalSince1970: 1_700_000_001))
        let summaries = try Self.pluginSummaries(writer.path)
        XCTAssertEqual(summaries.map(\.tag), ["_hparams_/experiment", "_hparams_/session_start_info"])
        XCTAssertEqual(summaries.map(\.plugin), ["hparams", "hparams"])
        func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
        // HParamsPluginData: version 0 (absent), then the experiment (field 2) …
        let experimentData = Self.fields(summaries[0].content)
        XCTAssertEqual(experimentData.map(\.field), [2])
        let experiment = Self.fields(experimentData[0].bytes)
        let hparamInfos = experiment.filter { $0.field == 4 }.map { info -> String in
            let parts = Self.fields(info.bytes)
            return "\(text(parts.first { $0.field == 1 }?.bytes ?? [])):\(parts.first { $0.field == 4 }?.varint ?? 0)"
        }
        XCTAssertEqual(hparamInfos, ["objective.name:1", "optimizer.learning_rate:3", "model.batch_norm:2"], "name:DataType")
        let metricTags = experiment.filter { $0.field == 5 }.compactMap { info in
            Self.fields(info.bytes).first { $0.field == 1 }.flatMap { name in Self.fields(name.bytes).first { $0.field == 2 } }.map { text($0.bytes) }
        }
        XCTAssertEqual(metricTags, ["loss", "probe/test_accuracy"])
        // … and the session start (field 3): the hparams map.
        let startData = Self.fields(summaries[1].content)
        XCTAssertEqual(startData.map(\.field), [3])
        var values: [String: String] = [:]
        for entry in Self.fields(startData[0].bytes) where entry.field == 1 {
            let parts = Self.fields(entry.bytes)
            let key = text(parts.first { $0.field == 1 }?.bytes ?? [])
            guard let value = parts.first(where: { $0.field == 2 }).map({ Self.fields($0.bytes) })?.first else { continue }
            switch value.field {
            case 2: values[key] = "number \(Double(bitPattern: value.bytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }))"
            case 3: values[key] = "string \(text(value.bytes))"
            case 4: values[key] = "bool \(value.varint)"
            default: values[key] = "field \(value.field)"
            }
        }
        XCTAssertEqual(values, ["objective.name": "string vicreg", "optimizer.learning_rate": "number 0.3", "model.batch_norm": "bool 1"])
    }

    /// A run's hyper-parameters are its flattened config, typed: numbers, text, Booleans.
    func testARunsHyperparametersAreItsFlattenedConfig() throws {
        let configuration = try TrainingConfiguration.load(yaml: "", overrides: ["optimizer.learning_rate=0.25", "objective.name=sigreg"])
        let hyperparameters = ConfigurationTree.hyperparameters(try ConfigurationTree.encode(configuration))
        let byName = Dictionary(hyperparameters.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(byName.count, hyperparameters.count, "names are unique")
        XCTAssertEqual(hyperparameters.map(\.name), hyperparameters.map(\.name).sorted())
        XCTAssertEqual(byName["optimizer.learning_rate"], .number(0.25))
        XCTAssertEqual(byName["objective.name"], .text("sigreg"))
        XCTAssertEqual(byName["schedule.global_batch_size"], .number(Double(configuration.schedule.globalBatchSize)))
        XCTAssertTrue(hyperparameters.contains { if case .boolean = $0.value { return true } else { return false } },
                      "\(hyperparameters)")
        // Every leaf of the flattened text form is there.
        XCTAssertEqual(Set(byName.keys), Set(ConfigurationTree.flatten(try ConfigurationTree.encode(configuration)).keys))
    }

    /// TensorBoard's own event loader and hparams metadata parser (where installed) read a
    /// training run's experiment and session start.
    func testTensorBoardItselfReadsTheHyperparameters() throws {
        let python = try Self.pythonWithTensorBoard()
        let directory = try temporaryDirectory(for: self, prefix: "tensorboard").path
        let writer = try TensorBoardWriter(directory: directory)
        try writer.write(hyperparameters: [("objective.name", .text("vicreg")), ("optimizer.learning_rate", .number(0.3)),
                                           ("model.batch_norm", .boolean(false))],
                         metrics: ["loss", "probe/test_accuracy"])
        let script = """
            import sys
            from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
            from tensorboard.plugins.hparams import metadata
            m = pem.EventMultiplexer(); m.AddRunsFromDirectory(sys.argv[1]); m.Reload()
            content = m.PluginRunToTagToContent(metadata.PLUGIN_NAME)["."]
            e = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
            s = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
            print(" ".join(f"{i.name}:{i.type}" for i in e.hparam_infos), "|", " ".join(i.name.tag for i in e.metric_infos), "|",
                  " ".join(f"{k}={s.hparams[k].WhichOneof('kind')}:{getattr(s.hparams[k], s.hparams[k].WhichOneof('kind'))}"
                           for k in sorted(s.hparams)))
            """
        let result = try runProcess(python, ["-c", script, directory])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output.split(separator: "\n").last.map(String.init),
                       "objective.name:1 optimizer.learning_rate:3 model.batch_norm:2 | loss probe/test_accuracy | "
                       + "model.batch_norm=bool_value:False objective.name=string_value:vicreg optimizer.learning_rate=number_value:0.3",
                       result.output)
    }

    func testCRC32CKnownAnswer() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    }

    func testEventsReadBack() throws {
        let directory = try temporaryDirectory(for: self, prefix: "tensorboard").path
        let writer = try TensorBoardWriter(directory: directory, now: Date(timeIntervalSince1970: 1_700_000_000))
        XCTAssertTrue((writer.path as NSString).lastPathComponent.hasPrefix("events.out.tfevents.1700000000."))
        try writer.write(step: 3, scalars: [("loss", 1.5), ("lr", 0.25)], wallTime: Date(timeIntervalSince1970: 1_700_000_001.5))
        let record = MetricsRecord(step: 300, epoch: 1, loss: 2, terms: [ObjectiveTerm("invariance", 0.5), ObjectiveTerm("variance", 1.5)],
                                   learningRate: 0.1, samplesPerSecond: 1000, gradientNorm: 3, communicatedBytes: 0,
                                   diagnostics: CollapseDiagnostics(globalBatchSize: 8, meanStandardDeviation: 0.75,
                                                                    minimumStandardDeviation: 0.125, effectiveRank: 5,
                                                                    offDiagonalCovarianceEnergy: 0.5, eppsPulley: 0.25,
                                                                    communicatedBytes: 0),
                                   dataWaitFraction: 0.25, collectiveFraction: 0.0625)
        try writer.write(record)
        XCTAssertTrue(record.jsonLine.contains("\"data_wait_fraction\":0.25,\"collective_fraction\":0.0625"), record.jsonLine)
        // A second writer in the same second gets a file of its own.
        let second = try TensorBoardWriter(directory: directory, now: Date(timeIntervalSince1970: 1_700_000_000))
        XCTAssertNotEqual(second.path, writer.path)

        let events = try Self.events(writer.path)
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[0].fileVersion, "brain.Event:2")
        XCTAssertEqual(events[0].wallTime, 1_700_000_000)
        XCTAssertEqual(events[1].step, 3)
        XCTAssertEqual(events[1].wallTime, 1_700_000_001.5)
        XCTAssertEqual(events[1].scalars.map(\.tag), ["loss", "lr"])
        XCTAssertEqual(events[1].scalars.map(\.value), [1.5, 0.25])
        XCTAssertEqual(events[2].step, 300)
        let scalars = Dictionary(uniqueKeysWithValues: events[2].scalars.map { ($0.tag, $0.value) })
        XCTAssertEqual(scalars["loss"], 2)
        XCTAssertEqual(scalars["loss/invariance"], 0.5)
        XCTAssertEqual(scalars["loss/variance"], 1.5)
        XCTAssertEqual(scalars["lr"], 0.1)
        XCTAssertEqual(scalars["samples_per_second"], 1000)
        XCTAssertEqual(scalars["time/data_wait_fraction"], 0.25)
        XCTAssertEqual(scalars["time/collective_fraction"], 0.0625)
        XCTAssertEqual(scalars["diagnostics/std_min"], 0.125)
        XCTAssertEqual(scalars["diagnostics/effective_rank"], 5)
    }
}
