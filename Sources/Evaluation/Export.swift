import CZlib
import Datasets
import Engine
import Foundation
import Layers

/// A trained model in the files PyTorch users load: its parameters and buffers under PyTorch's
/// state-dict names (with batch norm's `num_batches_tracked`) as safetensors or NumPy `.npz`,
/// and a JSON sidecar with the architecture and the input normalisation.
///
/// The names are the checkpoint's (`encoder.0.weight`, `encoder.1.running_mean`,
/// `projector.2.weight`, …): `nn.Sequential` indices, so for `mlp` and `convnet` parts the
/// sidecar's `modules` list rebuilds the same `nn.Sequential` (see the README's snippet) and
/// `load_state_dict(…, strict=True)` takes the file as it is. `resnet` and `vit` parts are
/// described (`description`) but not as a module list.
public struct ModelExport {
    public enum Format: String, CaseIterable, Sendable {
        case safetensors, npz
    }

    /// One tensor of the state dict.
    public enum Values: Equatable, Sendable {
        case float32([Float])
        case int64([Int64])
    }

    /// The state dict: name, shape and values, in name order.
    public let tensors: [(name: String, shape: [Int], values: Values)]
    /// The sidecar, as a JSON object.
    public let sidecar: [String: Any]

    /// The export of the model of `trained`.
    public init(_ trained: TrainedModel, normalization: Normalization?) {
        let model = trained.model
        var tensors: [(String, [Int], Values)] = []
        for store: any NamedTensorStore<Float> in [model.parameters, model.buffers] {
            for entry in store.entries {
                tensors.append((entry.name, entry.shape, .float32(store.view(of: store.values, entry).scalars)))
            }
        }
        // PyTorch's BatchNorm has a third buffer, the number of batches its statistics saw.
        for entry in model.buffers.entries where entry.name.hasSuffix(".running_mean") {
            let module = String(entry.name.dropLast(".running_mean".count))
            tensors.append((module + ".num_batches_tracked", [], .int64([Int64(trained.optimizerStepCount)])))
        }
        self.tensors = tensors.sorted { $0.0 < $1.0 }.map { (name: $0.0, shape: $0.1, values: $0.2) }

        let description = trained.configuration.model
        var parts: [String: Any] = [:], modules: [String: Any] = [:]
        for (name, network) in [("encoder", description.encoder as NetworkDescription?), ("projector", description.projector),
                                ("predictor", description.predictor)] {
            guard let network else { continue }
            parts[name] = (try? ConfigurationTree.encode(network)) ?? [:]
            if let layers = network.torchModules { modules[name] = layers }
        }
        var sidecar: [String: Any] = [
            "format": "anticollapse-export", "format_version": 1, "code_version": AntiCollapseVersion.current,
            "checkpoint": trained.path, "step": trained.step,
            "input_shape": description.encoder.inputShape,
            "description": parts, "modules": modules,
            "representation": "encoder", "embedding": description.projector == nil ? "encoder" : "projector",
        ]
        if let normalization {
            sidecar["input_normalization"] = [
                "formula": "x = (stored * pixel_scale - mean[c]) / std[c]",
                "pixel_scale": normalization.pixelScale, "mean": normalization.mean, "std": normalization.standardDeviation,
            ]
        }
        self.sidecar = sidecar
    }

    /// Writes the state dict to `path` in `format`, and the sidecar beside it (`<path minus
    /// extension>.json`); returns the sidecar's path.
    @discardableResult
    public func write(to path: String, format: Format) throws -> String {
        let data = format == .safetensors ? safetensors() : try npz()
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty { try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) }
        do { try data.write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw EvaluationError("cannot write \(path): \(error.localizedDescription)")
        }
        let sidecarPath = (path as NSString).deletingPathExtension + ".json"
        let json = try JSONSerialization.data(withJSONObject: sidecar, options: [.prettyPrinted, .sortedKeys])
        do { try json.write(to: URL(fileURLWithPath: sidecarPath), options: .atomic) } catch {
            throw EvaluationError("cannot write \(sidecarPath): \(error.localizedDescription)")
        }
        return sidecarPath
    }

    /// The safetensors bytes: an 8-byte little-endian header length, the JSON header
    /// (`{"name": {"dtype": "F32", "shape": […], "data_offsets": [begin, end]}, …,
    /// "__metadata__": {…}}`, padded with spaces to a multiple of 8), then the tensors'
    /// little-endian bytes back to back in header order.
    public func safetensors() -> Data {
        var header = "{\"__metadata__\":{\"format\":\"pt\",\"exported_by\":\"anticollapse \(AntiCollapseVersion.current)\"}"
        var offset = 0
        for (name, shape, values) in tensors {
            let (dtype, bytes) = Self.describe(values)
            header += ",\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],"
                + "\"data_offsets\":[\(offset),\(offset + bytes)]}"
            offset += bytes
        }
        header += "}"
        while header.utf8.count % 8 != 0 { header += " " }
        var data = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: Array(header.utf8))
        for (_, _, values) in tensors { Self.append(values, to: &data) }
        return data
    }

    /// The `.npz` bytes: a zip archive (stored, no compression) of one `<name>.npy` a tensor
    /// (NumPy format 1.0: `\x93NUMPY`, version, header length, the header dict padded to a
    /// multiple of 64 bytes, then the C-order little-endian data).
    public func npz() throws -> Data {
        var archive = Data(), directory = Data(), count = 0
        for (name, shape, values) in tensors {
            let (dtype, _) = Self.describe(values)
            let shapeText = shape.isEmpty ? "()" : shape.count == 1 ? "(\(shape[0]),)" : "(\(shape.map(String.init).joined(separator: ", ")))"
            var header = "{'descr': '\(dtype == "F32" ? "<f4" : "<i8")', 'fortran_order': False, 'shape': \(shapeText), }"
            while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
            header += "\n"
            var file = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
            withUnsafeBytes(of: UInt16(header.utf8.count).littleEndian) { file.append(contentsOf: $0) }
            file.append(contentsOf: Array(header.utf8))
            Self.append(values, to: &file)
            guard archive.count + file.count < Int(UInt32.max) else {
                throw EvaluationError("the model is too large for a .npz without ZIP64 (4 GiB); use --format safetensors")
            }
            let fileName = Array((name + ".npy").utf8)
            let crc = file.withUnsafeBytes { UInt32(crc32(0, $0.bindMemory(to: UInt8.self).baseAddress, uInt($0.count))) }
            let localOffset = UInt32(archive.count)
            // Local file header.
            little(UInt32(0x0403_4B50), into: &archive); little(UInt16(20), into: &archive); little(UInt16(0), into: &archive)
            little(UInt16(0), into: &archive); little(UInt16(0), into: &archive); little(UInt16(0x21), into: &archive)
            little(crc, into: &archive); little(UInt32(file.count), into: &archive); little(UInt32(file.count), into: &archive)
            little(UInt16(fileName.count), into: &archive); little(UInt16(0), into: &archive)
            archive.append(contentsOf: fileName)
            archive.append(file)
            // Its central-directory entry.
            little(UInt32(0x0201_4B50), into: &directory); little(UInt16(20), into: &directory); little(UInt16(20), into: &directory)
            little(UInt16(0), into: &directory); little(UInt16(0), into: &directory); little(UInt16(0), into: &directory)
            little(UInt16(0x21), into: &directory); little(crc, into: &directory); little(UInt32(file.count), into: &directory)
            little(UInt32(file.count), into: &directory); little(UInt16(fileName.count), into: &directory)
            little(UInt16(0), into: &directory); little(UInt16(0), into: &directory); little(UInt16(0), into: &directory)
            little(UInt16(0), into: &directory); little(UInt32(0), into: &directory); little(localOffset, into: &directory)
            directory.append(contentsOf: fileName)
            count += 1
        }
        let directoryOffset = UInt32(archive.count)
        archive.append(directory)
        // End of central directory.
        little(UInt32(0x0605_4B50), into: &archive); little(UInt16(0), into: &archive); little(UInt16(0), into: &archive)
        little(UInt16(count), into: &archive); little(UInt16(count), into: &archive)
        little(UInt32(directory.count), into: &archive); little(directoryOffset, into: &archive); little(UInt16(0), into: &archive)
        return archive
    }

    /// Appends `value`'s little-endian bytes.
    private func little<T: FixedWidthInteger>(_ value: T, into data: inout Data) {
        withUnsafeBytes(of: value.littleEndian) { data.append(contentsOf: $0) }
    }

    private static func describe(_ values: Values) -> (dtype: String, bytes: Int) {
        switch values {
        case let .float32(v): return ("F32", v.count * 4)
        case let .int64(v): return ("I64", v.count * 8)
        }
    }

    private static func append(_ values: Values, to data: inout Data) {
        switch values {
        case let .float32(v): v.withUnsafeBytes { data.append(contentsOf: $0) }   // little-endian hosts only (x86-64, arm64)
        case let .int64(v): v.withUnsafeBytes { data.append(contentsOf: $0) }
        }
    }
}

extension NetworkDescription {
    /// The PyTorch modules of this network, in `nn.Sequential` order (index `i` is the module
    /// whose parameters are named `<part>.i.*`), each `{"type": …, constructor arguments}`;
    /// nil for networks that are not a plain sequence (`resnet`, `vit`).
    public var torchModules: [[String: Any]]? {
        switch self {
        case let .mlp(d):
            var layers: [[String: Any]] = []
            for i in 0..<max(d.widths.count - 1, 0) {
                let last = i == d.widths.count - 2
                layers.append(["type": "Linear", "in_features": d.widths[i], "out_features": d.widths[i + 1],
                               "bias": last ? d.lastBias : d.bias])
                if last {
                    if d.lastBatchNorm { layers.append(["type": "BatchNorm1d", "num_features": d.widths[i + 1], "affine": d.lastBatchNormAffine]) }
                } else {
                    if d.batchNorm { layers.append(["type": "BatchNorm1d", "num_features": d.widths[i + 1], "affine": true]) }
                    layers.append(["type": d.activation == .relu ? "ReLU" : "GELU"])
                }
            }
            return layers
        case let .convnet(d):
            var layers: [[String: Any]] = [], inChannels = d.inputChannels
            for (i, outChannels) in d.channels.enumerated() {
                if i > 0 { layers.append(["type": "AvgPool2d", "kernel_size": d.poolSize]) }
                layers.append(["type": "Conv2d", "in_channels": inChannels, "out_channels": outChannels,
                               "kernel_size": d.kernelSize, "padding": d.kernelSize / 2, "bias": !d.batchNorm])
                if d.batchNorm { layers.append(["type": "BatchNorm2d", "num_features": outChannels, "affine": true]) }
                layers.append(["type": "ReLU"])
                inChannels = outChannels
            }
            layers.append(["type": "GlobalAvgPool2d"])
            return layers
        case .resnet, .vit:
            return nil
        }
    }
}
