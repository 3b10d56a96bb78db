import Foundation
import HDF5
import Layers
import Tensor

/// The resumable state of a run, as saved in a checkpoint file.
///
/// ## HDF5 layout (format version 1), readable with h5py
/// - `/params/<name>`: every trainable parameter, `float32`, its own shape
///   (`/params/encoder.0.weight`, …);
/// - `/buffers/<name>`: batch norm's `running_mean` and `running_var`;
/// - `/optimizer/<name>/<slot>`: the optimizer's state over each parameter
///   (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, `mu`);
/// - root attributes: `format` ("anticollapse-checkpoint"), `format_version` (1),
///   `code_version`, `step` (steps completed), `epoch`, `step_in_epoch` (the data position of the
///   next step), `seed`, `global_batch_size`, `world_size` (that wrote it), `optimizer`,
///   `optimizer_step_count`, `config` (the resolved YAML), `checksum` (FNV-1a 64 over every
///   dataset's bytes in name order, hex).
///
/// Nothing else is needed to resume: the data order, augmentation and SIGReg directions are
/// functions of (seed, step), and the learning rate of the step.
public struct Checkpoint: Equatable, Sendable {
    public static let format = "anticollapse-checkpoint"
    public static let formatVersion: Int64 = 1

    /// Steps completed; the next step is `step`.
    public var step: Int
    public var epoch: Int
    public var stepInEpoch: Int
    public var seed: UInt64
    public var globalBatchSize: Int
    public var worldSize: Int
    public var optimizerName: String
    public var optimizerStepCount: Int
    /// The resolved config, as YAML.
    public var config: String
    public var codeVersion: String
    /// Every tensor by its path in the file (`params/encoder.0.weight`), with its shape.
    public var tensors: [String: (shape: [Int], values: [Float])]

    public init(step: Int, epoch: Int, stepInEpoch: Int, seed: UInt64, globalBatchSize: Int, worldSize: Int,
                optimizerName: String, optimizerStepCount: Int, config: String, codeVersion: String,
                tensors: [String: (shape: [Int], values: [Float])]) {
        self.step = step; self.epoch = epoch; self.stepInEpoch = stepInEpoch; self.seed = seed
        self.globalBatchSize = globalBatchSize; self.worldSize = worldSize
        self.optimizerName = optimizerName; self.optimizerStepCount = optimizerStepCount
        self.config = config; self.codeVersion = codeVersion; self.tensors = tensors
    }

    public static func == (a: Checkpoint, b: Checkpoint) -> Bool {
        a.step == b.step && a.epoch == b.epoch && a.stepInEpoch == b.stepInEpoch && a.seed == b.seed
            && a.globalBatchSize == b.globalBatchSize && a.worldSize == b.worldSize && a.optimizerName == b.optimizerName
            && a.optimizerStepCount == b.optimizerStepCount && a.config == b.config && a.codeVersion == b.codeVersion
            && a.tensors.keys.sorted() == b.tensors.keys.sorted()
            && a.tensors.allSatisfy { key, value in b.tensors[key].map { $0.shape == value.shape && $0.values == value.values } ?? false }
    }

    /// FNV-1a 64 over the tensors' names, shapes and bytes, in name order.
    public var checksum: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix<C: Collection>(_ bytes: C) where C.Element == UInt8 {
            for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        }
        for name in tensors.keys.sorted() {
            let (shape, values) = tensors[name]!
            mix(name.utf8)
            for extent in shape { withUnsafeBytes(of: Int64(extent).littleEndian) { mix($0) } }
            values.withUnsafeBytes { mix($0) }
        }
        return String(hash, radix: 16)
    }
}

extension Checkpoint {
    /// The tensors of `model` and of its optimizer's state in the checkpoint layout:
    /// `params/<name>`, `buffers/<name>`, `optimizer/<name>/<slot>`.
    ///
    /// - Parameter optimizerSlots: each slot's name and its flat buffer (in the layout of
    ///   `model.parameters`).
    public static func tensors(of model: Model<Float>, optimizerSlots: [(name: String, buffer: Tensor<Float>)])
        -> [String: (shape: [Int], values: [Float])] {
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for (prefix, store) in [("params", model.parameters), ("buffers", model.buffers)] {
            for entry in store.entries {
                tensors["\(prefix)/\(entry.name)"] = (entry.shape, store.view(of: store.values, entry).scalars)
            }
        }
        for (slot, buffer) in optimizerSlots {
            for entry in model.parameters.entries {
                tensors["optimizer/\(entry.name)/\(slot)"] = (entry.shape, model.parameters.view(of: buffer, entry).scalars)
            }
        }
        return tensors
    }
}

/// A checkpoint file that cannot be used, naming the file.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String
    public var description: String { "checkpoint \(path): \(problem)" }
}

/// Where checkpoints are kept: a small protocol, so tests can substitute a fake.
public protocol CheckpointStorage: Sendable {
    /// Where the checkpoint of step `step` is (or would be) stored.
    func path(step: Int) -> String
    /// Writes `checkpoint` to ``path(step:)`` of its step, atomically (never a half-written
    /// file under the final name).
    func write(_ checkpoint: Checkpoint) throws -> String
    /// The checkpoint files, oldest first.
    func list() throws -> [String]
    /// Reads and verifies one checkpoint.
    func read(_ path: String) throws -> Checkpoint
    /// Removes one checkpoint.
    func remove(_ path: String) throws
}

extension CheckpointStorage {
    /// The newest checkpoint that reads and verifies, with its path, skipping (and reporting
    /// through `warn`) truncated or corrupt ones; nil when there is none.
    public func newestValid(warn: (String) -> Void) throws -> (path: String, checkpoint: Checkpoint)? {
        for path in try list().reversed() {
            do { return (path, try read(path)) } catch { warn("skipping \(error)") }
        }
        return nil
    }

    /// Removes all but the newest `keep` checkpoints.
    public func prune(keep: Int) throws {
        let all = try list()
        for path in all.dropLast(keep) { try remove(path) }
    }
}

/// Checkpoints as HDF5 files `ckpt-<step, 8 digits>.h5` in a directory.
public struct HDF5CheckpointDirectory: CheckpointStorage {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public func path(step: Int) -> String {
        (directory as NSString).appendingPathComponent(String(format: "ckpt-%08d.h5", step))
    }

    public func list() throws -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.filter { $0.hasPrefix("ckpt-") && $0.hasSuffix(".h5") }.sorted()
            .map { (directory as NSString).appendingPathComponent($0) }
    }

    public func remove(_ path: String) throws { try FileManager.default.removeItem(atPath: path) }

    /// Writes to `<name>.tmp`, closes (which flushes), `fsync`s, then renames into place.
    public func write(_ checkpoint: Checkpoint) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let final = path(step: checkpoint.step), temporary = final + ".tmp"
        try? FileManager.default.removeItem(atPath: temporary)
        do {
            try HDF5File.withNewFile(temporary, overwrite: true) { file in
                for name in checkpoint.tensors.keys.sorted() {
                    let (shape, values) = checkpoint.tensors[name]!
                    try file.createDataset(name, shape: shape, values: values)
                }
                let attributes: [(String, HDF5AttributeValue)] = [
                    ("format", .string(Checkpoint.format)), ("format_version", .int64(Checkpoint.formatVersion)),
                    ("code_version", .string(checkpoint.codeVersion)), ("step", .int64(Int64(checkpoint.step))),
                    ("epoch", .int64(Int64(checkpoint.epoch))), ("step_in_epoch", .int64(Int64(checkpoint.stepInEpoch))),
                    ("seed", .int64(Int64(bitPattern: checkpoint.seed))),
                    ("global_batch_size", .int64(Int64(checkpoint.globalBatchSize))),
                    ("world_size", .int64(Int64(checkpoint.worldSize))), ("optimizer", .string(checkpoint.optimizerName)),
                    ("optimizer_step_count", .int64(Int64(checkpoint.optimizerStepCount))),
                    ("config", .string(checkpoint.config)), ("checksum", .string(checkpoint.checksum)),
                ]
                for (name, value) in attributes { try file.setAttribute(name, to: value) }
                try file.flush()
            }
            let handle = open(temporary, O_RDONLY)
            if handle >= 0 { fsync(handle); close(handle) }
            guard rename(temporary, final) == 0 else {
                throw CheckpointError(path: final, problem: "cannot rename \(temporary) into place: \(String(cString: strerror(errno)))")
            }
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        return final
    }

    public func read(_ path: String) throws -> Checkpoint {
        func fail(_ problem: String) -> CheckpointError { CheckpointError(path: path, problem: problem) }
        let file: HDF5File
        do { file = try HDF5File.open(path) } catch { throw fail("cannot be opened (\(error)); truncated or not HDF5?") }
        defer { try? file.close() }
        func integer(_ name: String) throws -> Int64 {
            guard case let .int64(value)? = try? file.attribute(name) else { throw fail("attribute \(name) is missing") }
            return value
        }
        func string(_ name: String) throws -> String {
            guard case let .string(value)? = try? file.attribute(name) else { throw fail("attribute \(name) is missing") }
            return value
        }
        guard try string("format") == Checkpoint.format else { throw fail("not an AntiCollapse checkpoint") }
        let version = try integer("format_version")
        guard version == Checkpoint.formatVersion else {
            throw fail("format version \(version); this build reads version \(Checkpoint.formatVersion)")
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        do {
            for entry in try file.walk() where entry.kind == .dataset {
                let name = entry.path.hasPrefix("/") ? String(entry.path.dropFirst()) : entry.path
                let (shape, values) = try file.read(Float.self, from: name)
                tensors[name] = (shape, values)
            }
        } catch { throw fail("cannot read its tensors: \(error)") }
        let checkpoint = Checkpoint(
            step: Int(try integer("step")), epoch: Int(try integer("epoch")), stepInEpoch: Int(try integer("step_in_epoch")),
            seed: UInt64(bitPattern: try integer("seed")), globalBatchSize: Int(try integer("global_batch_size")),
            worldSize: Int(try integer("world_size")), optimizerName: try string("optimizer"),
            optimizerStepCount: Int(try integer("optimizer_step_count")), config: try string("config"),
            codeVersion: try string("code_version"), tensors: tensors)
        let stored = try string("checksum")
        guard stored == checkpoint.checksum else {
            throw fail("checksum mismatch (stored \(stored), computed \(checkpoint.checksum)): the file is corrupt")
        }
        return checkpoint
    }
}
