import Communication
import Datasets
import Engine
import Evaluation
import Foundation
import JointEmbedding
import Layers
import XCTest
import _TestSupport

/// `anticollapse export`: the files are read back by readers written here from the formats'
/// specifications (safetensors; ZIP + NumPy .npy), and — where Python with torch and
/// safetensors is installed (`ANTICOLLAPSE_TEST_PYTHON`) — loaded into PyTorch with
/// `strict=True` by the README's snippet, whose forward pass must give our representations.
final class ExportTests: XCTestCase {
    var root = ""

    /// A short VICReg run of a small MLP (batch norm in both parts) or convnet; its newest checkpoint.
    func trainedCheckpoint(encoder: String, projector: String, images: Bool) throws -> String {
        root = try temporaryDirectory(for: self).path
        let data = root + "/data"
        try SyntheticData(kind: images ? .images : .vectors, rows: 64, testRows: 16, classes: 4, features: 12, size: 8, seed: 2)
            .write(to: data, trainShards: 1)
        let configuration = try TrainingConfiguration.load(yaml: "", overrides: [
            "data.train=\(data)/train", "data.test=\(data)/test", "model.encoder=\(encoder)", "model.projector=\(projector)",
            "schedule.global_batch_size=16", "schedule.steps=3", "checkpoint.every_steps=0", "logging.online_probe=false",
        ])
        let trainer = try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(), runDirectory: root + "/run",
                                  log: { _ in })
        return try XCTUnwrap(try trainer.train().checkpoint)
    }

    /// The safetensors file, parsed by the specification: u64 header length, a JSON header,
    /// then the data; offsets must tile the data exactly.
    func readSafetensors(_ path: String) throws -> [String: (dtype: String, shape: [Int], bytes: Data)] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let length = Int(data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) })
        XCTAssertEqual(length % 8, 0, "header padded to 8 bytes")
        let header = try XCTUnwrap(try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as? [String: Any])
        let body = data.subdata(in: (8 + length)..<data.count)
        var result: [String: (String, [Int], Data)] = [:], spans: [(Int, Int)] = []
        for (name, value) in header where name != "__metadata__" {
            let entry = try XCTUnwrap(value as? [String: Any])
            let dtype = try XCTUnwrap(entry["dtype"] as? String), shape = try XCTUnwrap(entry["shape"] as? [Int])
            let offsets = try XCTUnwrap(entry["data_offsets"] as? [Int])
            XCTAssertEqual(offsets[1] - offsets[0], shape.reduce(1, *) * (dtype == "F32" ? 4 : 8), name)
            spans.append((offsets[0], offsets[1]))
            result[name] = (dtype, shape, body.subdata(in: offsets[0]..<offsets[1]))
        }
        var end = 0
        for (start, stop) in spans.sorted(by: { $0.0 < $1.0 }) { XCTAssertEqual(start, end, "gap or overlap"); end = stop }
        XCTAssertEqual(end, body.count, "trailing bytes")
        return result
    }

    /// The .npz file, parsed by the ZIP specification (the central directory, stored entries,
    /// CRC-32) and NumPy's .npy format 1.0.
    func readNPZ(_ path: String) throws -> [String: (descr: String, shape: [Int], bytes: Data)] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        func u16(_ at: Int) -> Int { Int(data[at]) | Int(data[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        let end = data.count - 22
        XCTAssertEqual(u32(end), 0x0605_4B50, "end of central directory")
        var offset = u32(end + 16), result: [String: (String, [Int], Data)] = [:]
        for _ in 0..<u16(end + 10) {
            XCTAssertEqual(u32(offset), 0x0201_4B50)
            let size = u32(offset + 20), nameLength = u16(offset + 28), local = u32(offset + 42)
            let name = String(decoding: data.subdata(in: (offset + 46)..<(offset + 46 + nameLength)), as: UTF8.self)
            XCTAssertEqual(u16(offset + 10), 0, "stored")
            let start = local + 30 + u16(local + 26) + u16(local + 28)
            let file = data.subdata(in: start..<(start + size))
            XCTAssertEqual(UInt32(u32(offset + 16)), file.withUnsafeBytes { ExportTests.crc32($0) }, name)
            XCTAssertEqual(Array(file.prefix(8)), [0x93] + Array("NUMPY".utf8) + [1, 0])
            let headerLength = Int(file[8]) | Int(file[9]) << 8
            XCTAssertEqual((10 + headerLength) % 64, 0)
            let header = String(decoding: file.subdata(in: 10..<(10 + headerLength)), as: UTF8.self)
            let descr = try XCTUnwrap(header.range(of: #"'descr': '([^']+)'"#, options: .regularExpression)
                .map { String(header[$0]).components(separatedBy: "'")[3] })
            let shapeText = try XCTUnwrap(header.range(of: #"\(([0-9, ]*)\)"#, options: .regularExpression).map { String(header[$0]) })
            let shape = shapeText.trimmingCharacters(in: CharacterSet(charactersIn: "()")).split(separator: ",")
                .compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            XCTAssertTrue(header.contains("'fortran_order': False"))
            result[String(name.dropLast(4))] = (descr, shape, file.subdata(in: (10 + headerLength)..<file.count))
            offset += 46 + nameLength + u16(offset + 30) + u16(offset + 32)
        }
        return result
    }

    static func crc32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    func floats(_ bytes: Data) -> [Float] { bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } }

    func testBothFormatsHoldTheCheckpointsTensorsUnderPyTorchNames() throws {
        let checkpoint = try trainedCheckpoint(encoder: "{type: mlp, widths: [12, 32, 16]}",
                                               projector: "{type: mlp, widths: [16, 24, 24], last_bias: false}", images: false)
        let trained = try TrainedModel(checkpoint: checkpoint)
        let stored = try HDF5CheckpointDirectory(directory: root + "/run/checkpoints").read(checkpoint)
        let export = ModelExport(trained, normalization: nil)
        let safetensors = try readSafetensors(root + "/m.safetensors", writing: export, .safetensors)
        let npz = try readNPZ(root + "/m.npz", writing: export, .npz)
        // Every parameter and buffer, and num_batches_tracked for each batch norm; nothing else.
        var expected = Set(stored.tensors.keys.filter { $0.hasPrefix("params/") || $0.hasPrefix("buffers/") }
            .map { String($0.split(separator: "/", maxSplits: 1)[1]) })
        expected.formUnion(["encoder.1.num_batches_tracked", "projector.1.num_batches_tracked"])
        XCTAssertEqual(Set(safetensors.keys), expected)
        XCTAssertEqual(Set(npz.keys), expected)
        for name in expected {
            let st = try XCTUnwrap(safetensors[name]), np = try XCTUnwrap(npz[name])
            XCTAssertEqual(st.bytes, np.bytes, name)
            if name.hasSuffix("num_batches_tracked") {
                XCTAssertEqual("\(st.dtype) \(st.shape) \(np.descr) \(np.shape)", "I64 [] <i8 []", name)
                XCTAssertEqual(st.bytes.withUnsafeBytes { $0.load(as: Int64.self) }, 3)
                continue
            }
            let source = try XCTUnwrap(stored.tensors["params/" + name] ?? stored.tensors["buffers/" + name], name)
            XCTAssertEqual("\(st.dtype) \(st.shape) \(np.descr) \(np.shape)", "F32 \(source.shape) <f4 \(source.shape)", name)
            XCTAssertEqual(floats(st.bytes), source.values, name)
        }
        let sidecar = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/m.json")))
            as? [String: Any])
        XCTAssertEqual(sidecar["input_shape"] as? [Int], [12])
    }

    /// The sidecar's module lists name exactly the model's parameters and buffers, with their
    /// shapes, for mlp and convnet parts (what the README's PyTorch snippet relies on).
    func testModuleListsMatchTheModelsTensors() throws {
        for description in [
            ModelDescription(encoder: .mlp(MLPDescription(widths: [12, 32, 16], activation: .gelu)),
                             projector: .mlp(MLPDescription(widths: [16, 8, 8], lastBias: false, lastBatchNorm: true))),
            ModelDescription(encoder: .convnet(ConvNetDescription(inputChannels: 3, imageSize: 8, channels: [4, 6], kernelSize: 3,
                                                                  poolSize: 2, batchNorm: true)),
                             projector: .mlp(MLPDescription(widths: [6, 8]))),
        ] {
            let model = try Model<Float>(description, seed: 1)
            var expected: [String: [Int]] = [:]
            for (part, network) in [("encoder", description.encoder), ("projector", description.projector!)] {
                for (index, module) in try XCTUnwrap(network.torchModules).enumerated() {
                    let prefix = "\(part).\(index)."
                    switch module["type"] as? String {
                    case "Linear":
                        let (i, o) = (module["in_features"] as! Int, module["out_features"] as! Int)
                        expected[prefix + "weight"] = [o, i]
                        if module["bias"] as! Bool { expected[prefix + "bias"] = [o] }
                    case "Conv2d":
                        let (i, o, k) = (module["in_channels"] as! Int, module["out_channels"] as! Int, module["kernel_size"] as! Int)
                        expected[prefix + "weight"] = [o, i, k, k]
                        if module["bias"] as! Bool { expected[prefix + "bias"] = [o] }
                    case "BatchNorm1d", "BatchNorm2d":
                        let c = module["num_features"] as! Int
                        if module["affine"] as! Bool { expected[prefix + "weight"] = [c]; expected[prefix + "bias"] = [c] }
                        expected[prefix + "running_mean"] = [c]
                        expected[prefix + "running_var"] = [c]
                    default: break
                    }
                }
            }
            var actual: [String: [Int]] = [:]
            for store: any NamedTensorStore<Float> in [model.parameters, model.buffers] { for entry in store.entries { actual[entry.name] = entry.shape } }
            XCTAssertEqual(actual, expected, "\(description)")
        }
    }

    /// PyTorch (where installed) rebuilds the model with the README's snippet, loads the file
    /// with strict=True, and its encoder gives our representations.
    func testPyTorchLoadsTheExportStrictlyAndComputesTheSameRepresentations() throws {
        let python = ProcessInfo.processInfo.environment["ANTICOLLAPSE_TEST_PYTHON"] ?? "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python),
              (try? runProcess(python, ["-c", "import torch, safetensors"]))?.status == 0 else {
            throw XCTSkip("Python with torch and safetensors is not installed; set ANTICOLLAPSE_TEST_PYTHON to one that has them")
        }
        for (encoder, images) in [("{type: mlp, widths: [12, 32, 16]}", false),
                                  ("{type: convnet, input_channels: 1, image_size: 8, channels: [4, 6], pool_size: 2}", true)] {
            let checkpoint = try trainedCheckpoint(encoder: encoder, projector: "{type: mlp, widths: [\(images ? 6 : 16), 24, 24]}",
                                                   images: images)
            let trained = try TrainedModel(checkpoint: checkpoint)
            try ModelExport(trained, normalization: nil).write(to: root + "/m.safetensors", format: .safetensors)
            let dataset = try ShardedDataset(root + "/data/test")
            let features = try FeatureExtractor(model: trained.model).extract(dataset, rows: [0, 1, 2, 3])
            let (inputs, _) = try dataset.read(rows: [0, 1, 2, 3])
            let normalized = inputs.enumerated().map { Double($0.element) * dataset.normalization.pixelScale }
                .enumerated().map { index, value in
                    let c = dataset.normalization.mean.count == 1 ? 0 : (index % dataset.featureCount) / (dataset.featureCount / dataset.normalization.mean.count)
                    return (value - dataset.normalization.mean[c]) / dataset.normalization.standardDeviation[c]
                }
            let script = Self.readmeSnippet + """

                import sys
                x = torch.tensor(json.loads(sys.argv[3]), dtype=torch.float32).reshape([4] + spec["input_shape"])
                with torch.no_grad(): print(json.dumps(model["encoder"](x).flatten().tolist()))
                """
            let result = try runProcess(python, ["-c", script, root + "/m.json", root + "/m.safetensors",
                                          "\(normalized.map { Float($0) })"])
            XCTAssertEqual(result.status, 0, result.output)
            let torchValues = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.output.split(separator: "\n").last!.utf8))
                as? [Double])
            XCTAssertEqual(torchValues.count, features.values.scalars.count)
            for (a, b) in zip(torchValues, features.values.scalars) { XCTAssertEqual(a, Double(b), accuracy: 1e-4 * max(1, abs(a))) }
        }
    }

    /// The README's PyTorch snippet (kept identical to the README's text, which a test reads).
    static let readmeSnippet = """
        import json, sys, torch, torch.nn as nn
        from safetensors.torch import load_file
        spec = json.load(open(sys.argv[1]))              # model.json, beside model.safetensors
        make = {"Linear": lambda m: nn.Linear(m["in_features"], m["out_features"], bias=m["bias"]),
                "BatchNorm1d": lambda m: nn.BatchNorm1d(m["num_features"], affine=m["affine"]),
                "BatchNorm2d": lambda m: nn.BatchNorm2d(m["num_features"], affine=m["affine"]),
                "Conv2d": lambda m: nn.Conv2d(m["in_channels"], m["out_channels"], m["kernel_size"],
                                              padding=m["padding"], bias=m["bias"]),
                "AvgPool2d": lambda m: nn.AvgPool2d(m["kernel_size"]),
                "GlobalAvgPool2d": lambda m: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                "ReLU": lambda m: nn.ReLU(), "GELU": lambda m: nn.GELU()}
        model = nn.ModuleDict({part: nn.Sequential(*[make[m["type"]](m) for m in modules])
                               for part, modules in spec["modules"].items()})
        model.load_state_dict(load_file(sys.argv[2]), strict=True)
        model.eval()
        """

    /// The README shows the snippet above, word for word.
    func testTheReadmeShowsTheTestedSnippet() throws {
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md"), encoding: .utf8)
        XCTAssertTrue(readme.contains(Self.readmeSnippet), "README.md lacks the export snippet of ExportTests.readmeSnippet")
    }

    func readSafetensors(_ path: String, writing export: ModelExport, _ format: ModelExport.Format) throws
        -> [String: (dtype: String, shape: [Int], bytes: Data)] {
        try export.write(to: path, format: format)
        return try readSafetensors(path)
    }

    func readNPZ(_ path: String, writing export: ModelExport, _ format: ModelExport.Format) throws
        -> [String: (descr: String, shape: [Int], bytes: Data)] {
        try export.write(to: path, format: format)
        return try readNPZ(path)
    }
}
