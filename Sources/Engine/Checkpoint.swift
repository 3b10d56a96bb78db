import Foundation
import HDF5
import Layers
import Tensor

/// The tensors of one state group, by their path in the group (`params/encoder.0.weight`,
/// `buffers/…`, `optimizer/<parameter>/<slot>`), each with its shape.
public typealias StateDict = [String: (shape: [Int], values: [Float])]

/// The resumable state of a run, as saved in a checkpoint file: a state dict of named groups
/// (the model's parameters, buffers and optimizer slots; the online probe's; …) and the data
/// position.
///
/// ## HDF5 layout (format version 2), readable with h5py
/// - group `model` at the root, as in format 1 (so `f["params/encoder.0.weight"]` still works):
///   `/params/<name>` every trainable parameter, `float32`, its own shape; `/buffers/<name>`
///   batch norm's `running_mean` and `running_var`; `/optimizer/<name>/<slot>` the optimizer's
///   state over each parameter (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, `mu`);
/// - every other group `G` (e.g. `probe`) in `/G/`, with the same three parts;
/// - root attributes: `format` ("anticollapse-checkpoint"), `format_version` (2),
///   `code_version`, `step` (steps completed), `epoch`, `step_in_epoch` (the data position of the
///   next step), `seed`, `global_batch_size`, `world_size` (that wrote it), `optimizer`,
///   `optimizer_step_count` (the model's), `state_groups` (comma-separated group names, `model`
///   first), `<G>_optimizer_step_count` for every other group with an optimizer, `config` (the
///   resolved YAML), `checksum` (FNV-1a 64, hex, over every other root attribute and every
///   dataset's path, shape and bytes, in name order).
///
/// Format 1 (written before state groups) has only the model group and a checksum over the
/// datasets; it still reads, and resumes.
///
/// Nothing else is needed to resume: the data order, augmentation and random projections are
/// functions of (seed, step), and the learning rate of the step.
public struct Checkpoint: Equatable, Sendable {
    public static let format = "anticollapse-checkpoint"
    /// The version this build writes.
    public static let formatVersion: Int64 = 2
    /// The versions this build reads.
    public static let readableVersions: ClosedRange<Int64> = 1...2
    /// The group of the model (stored at the root of the file).
    public static let modelGroup = "model"

    /// Steps completed; the next step is `step`.
    public var step: Int
    public var epoch: Int
    public var stepInEpoch: Int
    public var seed: UInt64
    public var globalBatchSize: Int
    public var worldSize: Int
    public var optimizerName: String
    /// The model optimizer's step count.
    public var optimizerStepCount: Int
    /// The resolved config, as YAML.
    public var config: String
    public var codeVersion: String
    /// The format version of the file this was read from (``formatVersion`` for a new one).
    public var formatVersion: Int64 = Checkpoint.formatVersion
    /// Every state group's tensors, by group name.
    public var groups: [String: StateDict]
    /// The optimizer step counts of the groups other than the model's.
    public var groupStepCounts: [String: Int] = [:]

    public init(step: Int, epoch: Int, stepInEpoch: Int, seed: UInt64, globalBatchSize: Int, worldSize: Int,
                optimizerName: String, optimizerStepCount: Int, config: String, codeVersion: String,
                groups: [String: StateDict], groupStepCounts: [String: Int] = [:]) {
        self.step = step; self.epoch = epoch; self.stepInEpoch = stepInEpoch; self.seed = seed
        self.globalBatchSize = globalBatchSize; self.worldSize = worldSize
        self.optimizerName = optimizerName; self.optimizerStepCount = optimizerStepCount
        self.config = config; self.codeVersion = codeVersion; self.groups = groups
        self.groupStepCounts = groupStepCounts
    }

    /// A checkpoint of the model group alone.
    public init(step: Int, epoch: Int, stepInEpoch: Int, seed: UInt64, globalBatchSize: Int, worldSize: Int,
                optimizerName: String, optimizerStepCount: Int, config: String, codeVersion: String,
                tensors: StateDict) {
        self.init(step: step, epoch: epoch, stepInEpoch: stepInEpoch, seed: seed, globalBatchSize: globalBatchSize,
                  worldSize: worldSize, optimizerName: optimizerName, optimizerStepCount: optimizerStepCount, config: config,
                  codeVersion: codeVersion, groups: [Checkpoint.modelGroup: tensors])
    }

    /// The model group's tensors (`params/…`, `buffers/…`, `optimizer/…/…`).
    public var tensors: StateDict {
        get { groups[Checkpoint.modelGroup] ?? [:] }
        set { groups[Checkpoint.modelGroup] = newValue }
    }

    /// The group names, the model's first.
    public var groupNames: [String] {
        [Checkpoint.modelGroup] + groups.keys.filter { $0 != Checkpoint.modelGroup }.sorted()
    }

    /// Every tensor by its dataset path in the file: the model's at the root, group `G`'s under `G/`.
    public var fileTensors: StateDict {
        var result: StateDict = [:]
        for (group, tensors) in groups {
            for (name, tensor) in tensors { result[group == Checkpoint.modelGroup ? name : "\(group)/\(name)"] = tensor }
        }
        return result
    }

    public static func == (a: Checkpoint, b: Checkpoint) -> Bool {
        a.step == b.step && a.epoch == b.epoch && a.stepInEpoch == b.stepInEpoch && a.seed == b.seed
            && a.globalBatchSize == b.globalBatchSize && a.worldSize == b.worldSize && a.optimizerName == b.optimizerName
            && a.optimizerStepCount == b.optimizerStepCount && a.config == b.config && a.codeVersion == b.codeVersion
            && a.groupStepCounts == b.groupStepCounts && sameTensors(a.groups, b.groups)
    }

    /// Whether two sets of state groups hold the same tensors (names, shapes and values).
    public static func sameTensors(_ a: [String: StateDict], _ b: [String: StateDict]) -> Bool {
        a.keys.sorted() == b.keys.sorted() && a.allSatisfy { group, tensors in
            guard let other = b[group], other.keys.sorted() == tensors.keys.sorted() else { return false }
            return tensors.allSatisfy { key, value in other[key].map { $0.shape == value.shape && $0.values == value.values } ?? false }
        }
    }

    /// The root attributes other than `checksum`, as written.
    public var attributes: [(String, HDF5AttributeValue)] {
        var attributes: [(String, HDF5AttributeValue)] = [
            ("format", .string(Checkpoint.format)), ("format_version", .int64(formatVersion)),
            ("code_version", .string(codeVersion)), ("step", .int64(Int64(step))),
            ("epoch", .int64(Int64(epoch))), ("step_in_epoch", .int64(Int64(stepInEpoch))),
            ("seed", .int64(Int64(bitPattern: seed))), ("global_batch_size", .int64(Int64(globalBatchSize))),
            ("world_size", .int64(Int64(worldSize))), ("optimizer", .string(optimizerName)),
            ("optimizer_step_count", .int64(Int64(optimizerStepCount))), ("config", .string(config)),
        ]
        if formatVersion >= 2 {
            attributes.append(("state_groups", .string(groupNames.joined(separator: ","))))
            for group in groupStepCounts.keys.sorted() {
                attributes.append(("\(group)_optimizer_step_count", .int64(Int64(groupStepCounts[group]!))))
            }
        }
        return attributes
    }

    /// FNV-1a 64 over the datasets' paths, shapes and bytes in name order — and, from format 2
    /// on, first over every root attribute but the checksum (name and value), so an edited
    /// attribute is caught like an edited tensor.
    public var checksum: String {
        var hash = FNV1a()
        if formatVersion >= 2 {
            for (name, value) in attributes.sorted(by: { $0.0 < $1.0 }) {
                hash.mix(name)
                hash.mix(value.description)
            }
        }
        let tensors = fileTensors
        for name in tensors.keys.sorted() {
            let (shape, values) = tensors[name]!
            hash.mix(name)
            for extent in shape { hash.mix(Int64(extent)) }
            values.withUnsafeBytes { hash.mix($0) }
        }
        return String(hash.value, radix: 16)
    }
}

/// The tensors of a parameter store, its optimizer's slots and a buffer store in the layout of
/// a state group: `params/<name>`, `buffers/<name>`, `optimizer/<name>/<slot>`.
public func stateDict(parameters: ParameterStore<Float>, buffers: ParameterStore<Float>?,
                      optimizerSlots: [(name: String, buffer: Tensor<Float>)]) -> StateDict {
    var tensors: StateDict = [:]
    for entry in parameters.entries {
        tensors["params/\(entry.name)"] = (entry.shape, parameters.view(of: parameters.values, entry).scalars)
    }
    if let buffers {
        for entry in buffers.entries {
            tensors["buffers/\(entry.name)"] = (entry.shape, buffers.view(of: buffers.values, entry).scalars)
        }
    }
    for (slot, buffer) in optimizerSlots {
        for entry in parameters.entries {
            tensors["optimizer/\(entry.name)/\(slot)"] = (entry.shape, parameters.view(of: buffer, entry).scalars)
        }
    }
    return tensors
}

extension Checkpoint {
    /// The tensors of `model` and of its optimizer's state in the model group's layout:
    /// `params/<name>`, `buffers/<name>`, `optimizer/<name>/<slot>`.
    ///
    /// - Parameter optimizerSlots: each slot's name and its flat buffer (in the layout of
    ///   `model.parameters`).
    public static func tensors(of model: Model<Float>, optimizerSlots: [(name: String, buffer: Tensor<Float>)]) -> StateDict {
        stateDict(parameters: model.parameters, buffers: model.buffers, optimizerSlots: optimizerSlots)
    }
}

/// A checkpoint file that cannot be used, naming the file.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String

    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }
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
                let tensors = checkpoint.fileTensors
                for name in tensors.keys.sorted() {
                    let (shape, values) = tensors[name]!
                    try file.createDataset(name, shape: shape, values: values)
                }
                for (name, value) in checkpoint.attributes + [("checksum", .string(checkpoint.checksum))] {
                    try file.setAttribute(name, to: value)
                }
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
        guard Checkpoint.readableVersions.contains(version) else {
            throw fail("format version \(version); this build reads versions \(Checkpoint.readableVersions.lowerBound)–\(Checkpoint.readableVersions.upperBound)")
        }
        let groupNames = version >= 2 ? try string("state_groups").split(separator: ",").map(String.init) : [Checkpoint.modelGroup]
        var groups: [String: StateDict] = Dictionary(uniqueKeysWithValues: groupNames.map { ($0, [:]) })
        var groupStepCounts: [String: Int] = [:]
        for group in groupNames where group != Checkpoint.modelGroup {
            if case let .int64(count)? = try? file.attribute("\(group)_optimizer_step_count") { groupStepCounts[group] = Int(count) }
        }
        do {
            for entry in try file.walk() where entry.kind == .dataset {
                let name = entry.path.hasPrefix("/") ? String(entry.path.dropFirst()) : entry.path
                let (shape, values) = try file.read(Float.self, from: name)
                let head = name.split(separator: "/", maxSplits: 1)
                if head.count == 2, String(head[0]) != Checkpoint.modelGroup, groups[String(head[0])] != nil {
                    groups[String(head[0]), default: [:]][String(head[1])] = (shape, values)
                } else {
                    groups[Checkpoint.modelGroup, default: [:]][name] = (shape, values)
                }
            }
        } catch { throw fail("cannot read its tensors: \(error)") }
        var checkpoint = Checkpoint(
            step: Int(try integer("step")), epoch: Int(try integer("epoch")), stepInEpoch: Int(try integer("step_in_epoch")),
            seed: UInt64(bitPattern: try integer("seed")), globalBatchSize: Int(try integer("global_batch_size")),
            worldSize: Int(try integer("world_size")), optimizerName: try string("optimizer"),
            optimizerStepCount: Int(try integer("optimizer_step_count")), config: try string("config"),
            codeVersion: try string("code_version"), groups: groups, groupStepCounts: groupStepCounts)
        checkpoint.formatVersion = version
        let stored = try string("checksum")
        guard stored == checkpoint.checksum else {
            throw fail("checksum mismatch (stored \(stored), computed \(checkpoint.checksum)): the file is corrupt")
        }
        return checkpoint
    }
}
