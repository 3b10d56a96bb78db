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
///   first), `<G>_optimizer_step_count` for every other group with an optimizer,
///   `scalar.<G>.<name>` (float64) for a group's numbers that are not tensors (the online
///   probe's metrics window), `config` (the
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
    /// Each group's numbers that are not tensors (a metrics window's running sums), by name:
    /// root attributes `scalar.<group>.<name>`, float64.
    public var groupScalars: [String: [String: Double]] = [:]

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
            && a.groupStepCounts == b.groupStepCounts && a.groupScalars == b.groupScalars && sameTensors(a.groups, b.groups)
    }

    /// Whether two sets of state groups hold the same tensors (names, shapes and values).
    public static func sameTensors(_ a: [String: StateDict], _ b: [String: StateDict]) -> Bool {
        a.keys.sorted() == b.keys.sorted() && a.allSatisfy { group, tensors in
            guard let other = b[group], other.keys.sorted() == tensors.keys.sorted() else { return false }
            return tensors.allSatisfy { key, value in other[key].map { $0.shape == value.shape && $0.values == value.values } ?? false }
        }
    }

    /// The first tensor (by file path) holding a NaN or an infinity, if any.
    public var firstNonFiniteTensor: String? {
        let tensors = fileTensors
        return tensors.keys.sorted().first { name in !tensors[name]!.values.allSatisfy(\.isFinite) }
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
            for group in groupScalars.keys.sorted() {
                for (name, value) in groupScalars[group]!.sorted(by: { $0.key < $1.key }) {
                    attributes.append(("scalar.\(group).\(name)", .double(value)))
                }
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
public func stateDict(parameters: ParameterStore<Float>, buffers: BufferStore<Float>?,
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
    /// file under the final name); `beforeRename` runs when the data is on disk under a
    /// temporary name (fault injection).
    func write(_ checkpoint: Checkpoint, beforeRename: (() -> Void)?) throws -> String
    /// The checkpoint files, oldest first.
    func list() throws -> [String]
    /// Reads and verifies one checkpoint.
    func read(_ path: String) throws -> Checkpoint
    /// Removes one checkpoint.
    func remove(_ path: String) throws
    /// The step of the checkpoint at `path`, from its header alone (cheap: no tensor is read);
    /// throws when the file is not a checkpoint or its name and step disagree.
    func peek(_ path: String) throws -> Int
}

extension CheckpointStorage {
    /// Writes `checkpoint` atomically (see ``write(_:beforeRename:)``).
    public func write(_ checkpoint: Checkpoint) throws -> String { try write(checkpoint, beforeRename: nil) }

    /// The newest checkpoint that reads and verifies, with its path, skipping (and reporting
    /// through `warn`) truncated or corrupt ones and ones holding non-finite numbers; nil when
    /// there is none.
    public func newestValid(warn: (String) -> Void) throws -> (path: String, checkpoint: Checkpoint)? {
        try newestUsable(warn: warn).newest
    }

    /// The newest usable checkpoint (see ``newestValid(warn:)``), and every newer file that is
    /// not, with why.
    public func newestUsable(warn: (String) -> Void = { _ in }) throws
        -> (newest: (path: String, checkpoint: Checkpoint)?, unusable: [(path: String, problem: String)]) {
        var unusable: [(path: String, problem: String)] = []
        for path in try list().reversed() {
            do {
                let checkpoint = try read(path)
                if let tensor = checkpoint.firstNonFiniteTensor {
                    throw CheckpointError(path: path, problem: "\(tensor) holds NaN or infinity: the run had diverged")
                }
                return ((path, checkpoint), unusable)
            } catch {
                let problem = (error as? CheckpointError)?.problem ?? "\(error)"
                unusable.append((path, problem))
                warn("skipping \(path): \(problem)")
            }
        }
        return (nil, unusable)
    }

    /// Removes old checkpoints after `written` was written, keeping `keep` checkpoints in all:
    /// `written`, every checkpoint newer than it (of an earlier run: never deleted here), and the
    /// newest older ones — and `protecting` (the last known good one) beyond that. Only files
    /// that ``peek(_:)`` recognises count and are removed; a file that is not a checkpoint
    /// (empty, corrupt, another program's) is left alone.
    ///
    /// - Returns: the paths removed.
    @discardableResult
    public func prune(keep: Int, written: String, protecting: String? = nil) throws -> [String] {
        let writtenStep = try peek(written)
        var older: [(step: Int, path: String)] = [], kept = 1
        for path in try list() where path != written {
            guard let step = try? peek(path) else { continue }
            if step < writtenStep { older.append((step, path)) } else { kept += 1 }
        }
        let removed = older.sorted { $0.step > $1.step }.dropFirst(max(0, keep - kept)).map(\.path)
            .filter { $0 != protecting }
        for path in removed { try remove(path) }
        return removed
    }
}

/// Checkpoints as HDF5 files `ckpt-<step, 8 digits>.h5` in a directory.
public struct HDF5CheckpointDirectory: CheckpointStorage {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public func path(step: Int) -> String {
        (directory as NSString).appendingPathComponent(String(format: "ckpt-%08d.h5", step))
    }

    /// The step a checkpoint's file name gives (`ckpt-00000040.h5` → 40), nil for another name.
    public static func step(ofName name: String) -> Int? {
        guard name.hasPrefix("ckpt-"), name.hasSuffix(".h5") else { return nil }
        let digits = name.dropFirst(5).dropLast(3)
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
        return Int(digits)
    }

    /// The regular files named `ckpt-<step>.h5`, by step (a directory or link of that name is
    /// not a checkpoint).
    public func list() throws -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.compactMap { name -> (Int, String)? in
            guard let step = Self.step(ofName: name) else { return nil }
            let path = (directory as NSString).appendingPathComponent(name)
            var status = stat()
            guard lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return nil }
            return (step, path)
        }.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// Removes one checkpoint file (never a directory).
    public func remove(_ path: String) throws {
        guard unlink(path) == 0 else {
            throw CheckpointError(path: path, problem: "cannot remove it: \(String(cString: strerror(errno)))")
        }
    }

    public func peek(_ path: String) throws -> Int {
        func fail(_ problem: String) -> CheckpointError { CheckpointError(path: path, problem: problem) }
        if let step = try RawHeader.verify(path, checksum: false) {
            try Self.checkName(of: path, step: step)
            return step
        }
        let file: HDF5File
        do { file = try HDF5File.open(path) } catch { throw fail("cannot be opened; truncated or not HDF5?") }
        defer { try? file.close() }
        guard case .string(Checkpoint.format)? = try? file.attribute("format") else { throw fail("not an AntiCollapse checkpoint") }
        guard case let .int64(step)? = try? file.attribute("step") else { throw fail("attribute step is missing") }
        try Self.checkName(of: path, step: Int(step))
        return Int(step)
    }

    /// Throws when `path` is named for another step than `step` (a renamed or copied file).
    static func checkName(of path: String, step: Int) throws {
        if let named = Self.step(ofName: (path as NSString).lastPathComponent), named != step {
            throw CheckpointError(path: path, problem: "its name says step \(named) but it holds step \(step): renamed or copied over?")
        }
    }

    /// Writes to `<name>.tmp` (with the raw header, see ``RawHeader``), closes (which
    /// flushes), `fsync`s, then renames into place.
    public func write(_ checkpoint: Checkpoint, beforeRename: (() -> Void)?) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let final = path(step: checkpoint.step), temporary = final + ".tmp"
        try? FileManager.default.removeItem(atPath: temporary)
        do {
            try HDF5File.withNewFile(temporary, overwrite: true, userBlock: RawHeader.size) { file in
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
            try RawHeader.write(into: temporary, step: checkpoint.step)
            beforeRename?()
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
        // The raw bytes first: HDF5 itself may loop forever on a corrupt file.
        _ = try RawHeader.verify(path, checksum: true)
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
        if version >= 2, let names = try? file.attributeNames() {
            for name in names where name.hasPrefix("scalar.") {
                let parts = name.split(separator: ".", maxSplits: 2).map(String.init)
                guard parts.count == 3, case let .double(value)? = try? file.attribute(name) else {
                    throw fail("attribute \(name) is not a float64 scalar")
                }
                checkpoint.groupScalars[parts[1], default: [:]][parts[2]] = value
            }
        }
        let stored = try string("checksum")
        guard stored == checkpoint.checksum else {
            throw fail("checksum mismatch (stored \(stored), computed \(checkpoint.checksum)): the file is corrupt")
        }
        try Self.checkName(of: path, step: checkpoint.step)
        return checkpoint
    }
}

/// The first 512 bytes of a checkpoint file: an HDF5 user block (HDF5 and h5py skip it) holding
/// text that lets a checkpoint be checked without HDF5 parsing it — the library can loop forever
/// on a corrupt file — and its step read without opening it:
///
///     anticollapse-checkpoint
///     step=<steps completed>
///     bytes=<size of the file after the header>
///     fnv1a64=<FNV-1a 64 of those bytes as 64-bit little-endian words, hex>
///
/// then zero bytes. Files written before the header existed have none (HDF5's signature at
/// byte 0) and are read as before.
enum RawHeader {
    static let size = 512
    static let magic = "anticollapse-checkpoint\n"

    /// Fills the header of the HDF5 file at `path` (created with a user block of ``size``
    /// bytes) and `fsync`s the file.
    static func write(into path: String, step: Int) throws {
        func fail(_ problem: String) -> CheckpointError { CheckpointError(path: path, problem: problem) }
        let descriptor = open(path, O_RDWR)
        guard descriptor >= 0 else { throw fail("cannot reopen it: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        let (bytes, hash) = try digest(descriptor, path: path)
        var text = Array((magic + "step=\(step)\nbytes=\(bytes)\nfnv1a64=\(String(hash, radix: 16))\n").utf8)
        text += [UInt8](repeating: 0, count: size - text.count)
        guard pwrite(descriptor, text, size, 0) == size else {
            throw fail("cannot write its header: \(String(cString: strerror(errno)))")
        }
        guard fsync(descriptor) == 0 else { throw fail("cannot sync it to disk: \(String(cString: strerror(errno)))") }
    }

    /// The step in the header of `path`, after checking its size (and, with `checksum`, every
    /// byte); nil for a file without a header.
    static func verify(_ path: String, checksum: Bool) throws -> Int? {
        func fail(_ problem: String) -> CheckpointError { CheckpointError(path: path, problem: problem) }
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { throw fail("cannot be opened: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var head = [UInt8](repeating: 0, count: size)
        let got = read(descriptor, &head, size)
        guard got == size, head.starts(with: Array(magic.utf8)) else { return nil }
        var fields: [String: String] = [:]
        for line in String(decoding: head.prefix { $0 != 0 }, as: UTF8.self).split(separator: "\n").dropFirst() {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        guard let step = fields["step"].flatMap(Int.init), let bytes = fields["bytes"].flatMap(Int.init),
              let stored = fields["fnv1a64"].flatMap({ UInt64($0, radix: 16) }) else {
            throw fail("its header is damaged")
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw fail("cannot stat it") }
        guard Int(status.st_size) == size + bytes else {
            throw fail("\(status.st_size) bytes where its header says \(size + bytes): truncated or appended to")
        }
        if checksum {
            let (_, hash) = try digest(descriptor, path: path)
            guard hash == stored else {
                throw fail("its bytes do not match their checksum (stored \(String(stored, radix: 16)), computed \(String(hash, radix: 16))): the file is corrupt")
            }
        }
        return step
    }

    /// FNV-1a 64 over 64-bit little-endian words (the last, short one zero-padded): a step a
    /// word instead of a byte, 8 times faster than byte-wise FNV-1a. Chunks are whole words
    /// except the file's last.
    private static func mixWords(_ bytes: UnsafeRawBufferPointer, into hash: inout FNV1a) {
        var h = hash.value, offset = 0
        while offset + 8 <= bytes.count {
            h = (h ^ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))) &* 0x0000_0100_0000_01b3
            offset += 8
        }
        if offset < bytes.count {
            var tail: UInt64 = 0
            for i in offset..<bytes.count { tail |= UInt64(bytes[i]) << (8 * UInt64(i - offset)) }
            h = (h ^ tail) &* 0x0000_0100_0000_01b3
        }
        hash.value = h
    }

    /// The byte count and the word-wise FNV-1a 64 (``mixWords(_:into:)``) of everything after
    /// the header.
    private static func digest(_ descriptor: Int32, path: String) throws -> (Int, UInt64) {
        var hash = FNV1a(), total = 0, offset = off_t(size)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, offset) }
            guard count >= 0 else {
                throw CheckpointError(path: path, problem: "cannot read it: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            buffer.withUnsafeBytes { mixWords(UnsafeRawBufferPointer(rebasing: $0.prefix(count)), into: &hash) }
            total += count
            offset += off_t(count)
        }
        return (total, hash.value)
    }
}
