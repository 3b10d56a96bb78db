import Foundation
import Layers
import Optimizers
import Tensor
import Yams

/// The settings a recipe adds to a run's configuration: its own keys at the top level of the
/// config (the joint-embedding recipe's `data`, `model`, `objective`), beside the engine's
/// `seed`, `optimizer`, `schedule`, `checkpoint` and `logging`.
public protocol RecipeSettings: Codable, Equatable, Sendable {
    /// The recipe's name, the value of the config's `recipe` key (`joint_embedding`, `world_model`).
    static var recipeName: String { get }
    /// The keys whose values must agree for a checkpoint to resume a run (dotted snake_case;
    /// a key covers the keys below it), besides the engine's.
    static var resumeKeys: [String] { get }

    /// The recipe's defaults.
    init()

    /// Checks values that decode but cannot work, naming the key; `run` gives the engine's
    /// settings for checks that span both.
    func validate(run: EngineSettings) throws

    /// These settings with relative file paths (datasets) made absolute against `directory`,
    /// so that a saved config reads the same data from any working directory.
    func resolvingPaths(relativeTo directory: String) -> Self
}

extension RecipeSettings {
    public func resolvingPaths(relativeTo directory: String) -> Self { self }
}

/// `path` made absolute against `directory` (standardised; "" stays "").
public func absolutePath(_ path: String, relativeTo directory: String) -> String {
    guard !path.isEmpty else { return path }
    let absolute = path.hasPrefix("/") ? path : (directory as NSString).appendingPathComponent(path)
    return (absolute as NSString).standardizingPath
}

/// The engine's part of a run's configuration, whatever the recipe.
public struct EngineSettings: Codable, Equatable, Sendable {
    /// Keys the initial parameters, the data order, augmentation and random projections.
    public var seed: UInt64 = 0
    public var optimizer = OptimizerConfiguration()
    public var schedule = ScheduleConfiguration()
    public var checkpoint = CheckpointConfiguration()
    public var logging = LoggingConfiguration()

    public init() {}
}

/// Everything a training run needs, as written in a YAML config file (snake_case keys): the
/// engine's settings and the recipe's, side by side at the top level.
///
/// Every key has a default (see `configs/` and the README's reference): a config file only
/// states what differs. Unknown keys and invalid values are rejected before any work, naming
/// the key and the valid choices. Where a number means "off" or "unset", it is 0. The recipe's
/// settings read as if they were properties of the configuration (`configuration.data.train`).
@dynamicMemberLookup
public struct RunConfiguration<Recipe: RecipeSettings>: Codable, Equatable, Sendable {
    public var engine = EngineSettings()
    public var recipe = Recipe()

    public init() {}

    public var seed: UInt64 {
        get { engine.seed }
        set { engine.seed = newValue }
    }
    public var optimizer: OptimizerConfiguration {
        get { engine.optimizer }
        set { engine.optimizer = newValue }
    }
    public var schedule: ScheduleConfiguration {
        get { engine.schedule }
        set { engine.schedule = newValue }
    }
    public var checkpoint: CheckpointConfiguration {
        get { engine.checkpoint }
        set { engine.checkpoint = newValue }
    }
    public var logging: LoggingConfiguration {
        get { engine.logging }
        set { engine.logging = newValue }
    }

    public subscript<Value>(dynamicMember keyPath: WritableKeyPath<Recipe, Value>) -> Value {
        get { recipe[keyPath: keyPath] }
        set { recipe[keyPath: keyPath] = newValue }
    }

    private enum CodingKeys: String, CodingKey { case recipe }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let name = try container.decodeIfPresent(String.self, forKey: .recipe), name != Recipe.recipeName {
            throw DecodingError.dataCorruptedError(forKey: .recipe, in: container,
                                                   debugDescription: "this configuration is for recipe \"\(Recipe.recipeName)\", not \"\(name)\"")
        }
        engine = try EngineSettings(from: decoder)
        recipe = try Recipe(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(Recipe.recipeName, forKey: .recipe)
        try engine.encode(to: encoder)
        try recipe.encode(to: encoder)
    }
}

/// The name of the recipe a config file asks for (`recipe:`, default `joint_embedding`), read
/// before the config is decoded, so a command can pick the recipe's configuration type.
public func recipeName(ofConfig yaml: String) -> String {
    guard let tree = (try? Yams.load(yaml: yaml)) as? [String: Any], let name = tree["recipe"] as? String else {
        return "joint_embedding"
    }
    return name
}

/// The optimizer and its hyperparameters.
public struct OptimizerConfiguration: Codable, Equatable, Sendable {
    public enum Name: String, ConfigurationChoice { case lars, adamw, sgd }
    public var name = Name.lars
    /// The base learning rate (before scaling by global batch / 256). 3.0 suits LARS on the
    /// short MNIST-5k recipe (LARS moves each weight by about lr·η·‖w‖ a step); the VICReg paper
    /// uses 0.2 for 1000 epochs of ImageNet.
    public var learningRate = 3.0
    /// Multiply the base learning rate by global batch / 256 (VICReg's and Barlow Twins' rule).
    public var scaleByBatch = true
    public var weightDecay = 1e-4
    /// Momentum of LARS and SGD.
    public var momentum = 0.9
    /// Nesterov momentum (SGD).
    public var nesterov = false
    /// LARS trust coefficient.
    public var eta = 0.001
    /// AdamW β₁, β₂, ε.
    public var beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8
    /// Clip gradients to this global norm (0: no clipping).
    public var clipGradientNorm = 0.0
    /// Shard the update over the ranks (ZeRO-1: reduce-scatter the gradient, update 1/P of the
    /// parameters, all-gather them): `automatic` on 2 ranks or more for a large enough model.
    public var shardedUpdate = ShardedUpdate.automatic
    /// With every rank on one node, move the sharded update's gradient and parameters through
    /// the node's shared memory (an MPI-3 shared window, `ShardedOptimizerStep`) rather than
    /// MPI's reduce-scatter and all-gather; false keeps to MPI (e.g. for a `/dev/shm` too small
    /// for twice the model's parameters).
    public var sharedMemory = true
}

/// How long to train and how the learning rate moves.
public struct ScheduleConfiguration: Codable, Equatable, Sendable {
    /// Rows per step over all ranks; the world size must divide it.
    public var globalBatchSize = 256
    public var epochs = 30
    /// Total steps; 0 means `epochs` × steps per epoch.
    public var steps = 0
    /// Linear warm-up, in epochs.
    public var warmupEpochs = 2.0
    /// The learning rate at the end of the cosine, as a fraction of the peak.
    public var finalLearningRateFraction = 0.002
    /// OpenBLAS threads per rank; 0: the node's cores ÷ ranks on the node.
    public var blasThreads = 0
}

/// When checkpoints are written and how many are kept.
public struct CheckpointConfiguration: Codable, Equatable, Sendable {
    /// Steps between checkpoints (0: only at the end and on SIGTERM/SIGINT).
    public var everySteps = 100
    /// Newest checkpoints kept in the run directory.
    public var keep = 3
}

/// What is printed and written to `metrics.jsonl`.
public struct LoggingConfiguration: Codable, Equatable, Sendable {
    /// Steps between progress lines and metric records.
    public var everySteps = 10
    /// Steps between collapse diagnostics (0: off).
    public var diagnosticsEvery = 50
    /// Train a linear classifier on the detached representations of labelled training data and
    /// report its accuracy (solo-learn's online linear evaluation).
    public var onlineProbe = true
    /// The online probe's AdamW learning rate (its inputs are standardised by a non-affine
    /// batch norm over the global batch).
    public var onlineProbeLearningRate = 0.002
}

// MARK: - Loading

/// A config that cannot be used, naming the key and what would be right.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }

    /// `key: problem`, for a key of the config (dotted snake_case).
    public static func key(_ key: String, _ problem: String) -> ConfigurationError {
        ConfigurationError("\(key): \(problem)")
    }
}

extension RunConfiguration {
    /// Reads a YAML config, applies `--set key=value` overrides (dotted snake_case keys, YAML
    /// values: `optimizer.learning_rate=0.1`, `model.encoder.widths=[784,512]`), and validates.
    ///
    /// - Parameters:
    ///   - yaml: the file's text ("" for all defaults).
    ///   - overrides: `key=value` strings, applied in order.
    ///   - source: the file's name, for messages.
    public static func load(yaml: String, overrides: [String] = [], source: String = "config") throws -> RunConfiguration {
        var tree: [String: Any]
        do {
            let loaded = try Yams.load(yaml: yaml)
            if loaded == nil || loaded is NSNull {
                tree = [:]
            } else if let mapping = loaded as? [String: Any] {
                tree = mapping
            } else {
                throw ConfigurationError("\(source): the top level must be a mapping of keys")
            }
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError("\(source): not valid YAML: \(error)")
        }
        for override in overrides {
            guard let equals = override.firstIndex(of: "="), equals != override.startIndex else {
                throw ConfigurationError("--set \(override): expected key=value, e.g. optimizer.learning_rate=0.1")
            }
            let key = String(override[..<equals]), text = String(override[override.index(after: equals)...])
            let path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !path.contains(where: \.isEmpty) else {
                throw ConfigurationError("--set \(override): the key \"\(key)\" has an empty part; keys are dotted names such as schedule.steps")
            }
            let value: Any = (try? Yams.load(yaml: text)).flatMap { $0 } ?? text
            try ConfigurationTree.set(&tree, path: path, value: value)
        }
        try ConfigurationTree.checkFiniteNumbers(tree, source: source)
        let defaults = try ConfigurationTree.encode(RunConfiguration())
        let merged = ConfigurationTree.merge(defaults, tree)
        let configuration: RunConfiguration
        do {
            configuration = try ConfigurationTree.decode(RunConfiguration.self, from: merged)
        } catch {
            // Name the key: the decoder's own message may have none ("not valid JSON" for a
            // number that does not fit its type).
            throw ConfigurationError("\(source): \(ConfigurationTree.locateDecodingError(error, given: tree, defaults: defaults, as: RunConfiguration.self))")
        }
        // A key the user wrote that the decoded config does not write back is not ours.
        try ConfigurationTree.checkKnownKeys(tree, against: ConfigurationTree.encode(configuration), source: source)
        try configuration.validate(source: source)
        return configuration
    }

    /// Reads a YAML config file (see ``load(yaml:overrides:source:)``).
    public static func load(file: String?, overrides: [String] = []) throws -> RunConfiguration {
        guard let file else { return try load(yaml: "", overrides: overrides, source: "defaults") }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw ConfigurationError("\(file): cannot read the config file")
        }
        return try load(yaml: text, overrides: overrides, source: file)
    }

    /// The config as YAML with every key, as saved in the run directory.
    public func yaml() throws -> String {
        try Yams.serialize(node: ConfigurationTree.node(ConfigurationTree.encode(self)))
    }

    /// Checks values that decode but cannot work, naming the key.
    public func validate(source: String = "config") throws {
        func fail(_ key: String, _ problem: String) -> ConfigurationError {
            ConfigurationError("\(source): \(key): \(problem)")
        }
        if schedule.globalBatchSize < 2 { throw fail("schedule.global_batch_size", "must be at least 2, got \(schedule.globalBatchSize)") }
        if schedule.epochs < 1 && schedule.steps < 1 { throw fail("schedule.epochs", "must be at least 1 (or set schedule.steps)") }
        if schedule.steps < 0 { throw fail("schedule.steps", "must be 0 (use epochs) or positive, got \(schedule.steps)") }
        if schedule.warmupEpochs < 0 { throw fail("schedule.warmup_epochs", "must not be negative") }
        if !(0...1).contains(schedule.finalLearningRateFraction) { throw fail("schedule.final_learning_rate_fraction", "must be in [0, 1]") }
        if schedule.blasThreads < 0 { throw fail("schedule.blas_threads", "must be 0 (automatic) or positive") }
        if optimizer.learningRate <= 0 { throw fail("optimizer.learning_rate", "must be positive, got \(optimizer.learningRate)") }
        if optimizer.weightDecay < 0 { throw fail("optimizer.weight_decay", "must not be negative") }
        if optimizer.clipGradientNorm < 0 { throw fail("optimizer.clip_gradient_norm", "must be 0 (off) or positive") }
        if checkpoint.everySteps < 0 { throw fail("checkpoint.every_steps", "must be 0 (only at the end) or positive") }
        if checkpoint.keep < 1 { throw fail("checkpoint.keep", "must be at least 1") }
        if logging.everySteps < 1 { throw fail("logging.every_steps", "must be at least 1") }
        if logging.diagnosticsEvery < 0 { throw fail("logging.diagnostics_every", "must be 0 (off) or positive") }
        if !(logging.onlineProbeLearningRate > 0) {
            throw fail("logging.online_probe_learning_rate", "must be positive, got \(logging.onlineProbeLearningRate)")
        }
        do { try recipe.validate(run: engine) } catch let error as ConfigurationError {
            throw ConfigurationError("\(source): \(error.description)")
        }
    }
}

extension RunConfiguration {
    /// The configuration with the recipe's relative paths made absolute against `directory`
    /// (by default the working directory): what `train` saves, so that `eval`, `report` and a
    /// resume read the same data from anywhere.
    public func resolvingPaths(relativeTo directory: String = FileManager.default.currentDirectoryPath) -> RunConfiguration {
        var resolved = self
        resolved.recipe = recipe.resolvingPaths(relativeTo: directory)
        return resolved
    }
}

extension RunConfiguration {
    /// The keys whose values must agree for a checkpoint to resume a run: the engine's
    /// (`seed`, `optimizer.name`, `schedule.global_batch_size`) and the recipe's.
    public static var resumeKeys: [String] { ["seed", "optimizer.name", "schedule.global_batch_size"] + Recipe.resumeKeys }

    /// The ``resumeKeys`` (and keys below them) whose values differ between `a` and `b`, sorted.
    public static func incompatibleKeys(_ a: RunConfiguration, _ b: RunConfiguration) -> [String] {
        guard let left = try? ConfigurationTree.encode(a), let right = try? ConfigurationTree.encode(b) else { return ["(config)"] }
        let l = ConfigurationTree.flatten(left), r = ConfigurationTree.flatten(right)
        return Set(l.keys).union(r.keys).filter { key in
            resumeKeys.contains { key == $0 || key.hasPrefix($0 + ".") } && l[key] != r[key]
        }.sorted()
    }
}

/// Config trees as JSON-like values (`[String: Any]`, arrays, numbers, strings), converted to and
/// from the Codable types with snake_case keys.
public enum ConfigurationTree {
    public static func encode<T: Encodable>(_ value: T) throws -> [String: Any] {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let data = try encoder.encode(value)
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    public static func decode<T: Decodable>(_ type: T.Type, from tree: [String: Any]) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let data = try JSONSerialization.data(withJSONObject: normalize(tree))
        return try decoder.decode(type, from: data)
    }

    /// The YAML node of a tree: keys sorted, lists of scalars in flow style, numbers written
    /// with Swift's shortest exact form (so a saved config reloads to the same values), strings
    /// double-quoted.
    public static func node(_ value: Any) -> Node {
        switch value {
        case let mapping as [String: Any]:
            return .mapping(Node.Mapping(mapping.keys.sorted().map { (Node($0), node(mapping[$0]!)) }))
        case let list as [Any]:
            let items = list.map(node)
            let flow = !list.contains { $0 is [String: Any] || $0 is [Any] }
            return .sequence(Node.Sequence(items, Tag(.seq), flow ? .flow : .block))
        case let number as NSNumber:
            switch kind(of: number) {
            case .boolean: return Node(number.boolValue ? "true" : "false", Tag(.bool))
            case .floatingPoint: return Node("\(number.doubleValue)", Tag(.float))
            case .integer: return Node("\(number.int64Value)", Tag(.int))
            }
        case let text as String:
            return Node(text, Tag(.str), .doubleQuoted)
        default:
            return Node("null", Tag(.null))
        }
    }

    /// What a number decoded from JSON holds, by its Objective-C type code.
    enum NumberKind { case boolean, integer, floatingPoint }

    static func kind(of number: NSNumber) -> NumberKind {
        switch String(cString: number.objCType) {
        case "c", "B": return .boolean
        case "f", "d": return .floatingPoint
        default: return .integer
        }
    }

    /// Every leaf of `tree` by its dotted path as a hyper-parameter for TensorBoard: numbers,
    /// Booleans and text as they are, lists as text (`[16, 32, 16]`), nulls left out; sorted
    /// by path.
    public static func hyperparameters(_ tree: [String: Any]) -> [(name: String, value: HyperparameterValue)] {
        func text(_ value: Any) -> String {
            switch value {
            case let list as [Any]: return "[" + list.map(text).joined(separator: ", ") + "]"
            case let mapping as [String: Any]: return "{" + mapping.keys.sorted().map { "\($0): \(text(mapping[$0] ?? ""))" }.joined(separator: ", ") + "}"
            case let number as NSNumber:
                switch kind(of: number) {
                case .boolean: return number.boolValue ? "true" : "false"
                case .floatingPoint: return "\(number.doubleValue)"
                case .integer: return "\(number.int64Value)"
                }
            default: return "\(value)"
            }
        }
        var result: [(name: String, value: HyperparameterValue)] = []
        func visit(_ value: Any, _ path: String) {
            switch value {
            case let mapping as [String: Any]:
                for key in mapping.keys.sorted() { visit(mapping[key] ?? NSNull(), path.isEmpty ? key : "\(path).\(key)") }
            case let number as NSNumber:
                switch kind(of: number) {
                case .boolean: result.append((path, .boolean(number.boolValue)))
                case .integer, .floatingPoint: result.append((path, .number(number.doubleValue)))
                }
            case let string as String: result.append((path, .text(string)))
            case is NSNull: break
            default: result.append((path, .text(text(value))))
            }
        }
        visit(tree, "")
        return result
    }

    /// YAML leaves `1e-6` as a string; numbers written so become numbers.
    public static func normalize(_ value: Any) -> Any {
        switch value {
        case let mapping as [String: Any]: return mapping.mapValues(normalize)
        case let list as [Any]: return list.map(normalize)
        case let text as String:
            if text.range(of: #"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$"#, options: .regularExpression) != nil, let number = Double(text) {
                return number
            }
            return text
        default: return value
        }
    }

    /// `base` with `override` laid over it: mappings merge key by key, except a mapping whose
    /// `type` changes (a network of another kind), which replaces; everything else replaces.
    public static func merge(_ base: [String: Any], _ override: [String: Any]) -> [String: Any] {
        var result = base
        for (key, value) in override {
            if let inner = value as? [String: Any], let old = base[key] as? [String: Any],
               (inner["type"] as? String).map({ $0 == old["type"] as? String }) ?? true {
                result[key] = merge(old, inner)
            } else if value is NSNull {
                result.removeValue(forKey: key)
            } else {
                result[key] = value
            }
        }
        return result
    }

    /// Every leaf of `tree` by its dotted path, its value as text.
    public static func flatten(_ tree: [String: Any], _ prefix: String = "") -> [String: String] {
        var result: [String: String] = [:]
        for (key, value) in tree {
            let path = prefix.isEmpty ? key : "\(prefix).\(key)"
            if let inner = value as? [String: Any] { result.merge(flatten(inner, path)) { $1 } } else { result[path] = "\(value)" }
        }
        return result
    }

    public static func set(_ tree: inout [String: Any], path: [String], value: Any) throws {
        guard let head = path.first, !head.isEmpty else { throw ConfigurationError("--set: empty key") }
        if path.count == 1 {
            tree[head] = value
            return
        }
        var inner = tree[head] as? [String: Any] ?? [:]
        try set(&inner, path: Array(path.dropFirst()), value: value)
        tree[head] = inner
    }

    public static func checkKnownKeys(_ given: [String: Any], against known: [String: Any], source: String, prefix: String = "") throws {
        for (key, value) in given.sorted(by: { $0.key < $1.key }) {
            let path = prefix.isEmpty ? key : "\(prefix).\(key)"
            guard let knownValue = known[key] else {
                let hint = key.contains(":") ? " (in YAML's flow style a space follows each colon: {type: mlp})" : ""
                throw ConfigurationError("\(source): unknown key \"\(path)\"\(hint); valid keys\(prefix.isEmpty ? "" : " of \(prefix)"): \(known.keys.sorted().joined(separator: ", "))")
            }
            if value is NSNull { continue }
            if let inner = value as? [String: Any], let knownInner = knownValue as? [String: Any] {
                try checkKnownKeys(inner, against: knownInner, source: source, prefix: path)
            }
        }
    }

    /// Throws for a NaN or infinite number anywhere in `tree` (YAML's `.nan`, `.inf`), naming the key.
    public static func checkFiniteNumbers(_ tree: [String: Any], source: String, prefix: String = "") throws {
        for (key, value) in tree.sorted(by: { $0.key < $1.key }) {
            let path = prefix.isEmpty ? key : "\(prefix).\(key)"
            switch value {
            case let inner as [String: Any]:
                try checkFiniteNumbers(inner, source: source, prefix: path)
            case let list as [Any]:
                for (index, item) in list.enumerated() {
                    if let inner = item as? [String: Any] { try checkFiniteNumbers(inner, source: source, prefix: "\(path)[\(index)]") }
                    if let number = item as? Double, !number.isFinite {
                        throw ConfigurationError("\(source): \(path)[\(index)]: must be a finite number, got \(number)")
                    }
                }
            case let number as Double where !number.isFinite:
                throw ConfigurationError("\(source): \(path): must be a finite number, got \(number)")
            default:
                break
            }
        }
    }

    /// A message for a config that does not decode, naming the key: the decoder's own when it
    /// names one, else the first leaf of `given` that fails to decode on its own over the
    /// `defaults`, with the kind of value that key takes.
    public static func locateDecodingError<T: Decodable>(_ error: any Error, given: [String: Any], defaults: [String: Any],
                                                         as type: T.Type) -> String {
        if let error = error as? DecodingError, case let .dataCorrupted(context) = error, !context.codingPath.isEmpty {
            return describe(error)
        }
        if let error = error as? DecodingError, case .typeMismatch = error { return describe(error) }
        for (path, value) in leaves(given) {
            var single: [String: Any] = [:]
            guard (try? set(&single, path: path, value: value)) != nil else { continue }
            do {
                _ = try decode(type, from: merge(defaults, single))
            } catch let inner {
                let key = path.joined(separator: ".")
                let original = leaf(defaults, path)
                let expected = original.map(kind(of:)) ?? "another value"
                if let original = original as? NSNumber, !["c", "B", "f", "d"].contains(String(cString: original.objCType)),
                   let number = (normalize(value) as? NSNumber)?.doubleValue {
                    if number.rounded() != number { return "\(key): must be a whole number, got \(value)" }
                    if number < 0 { return "\(key): must be 0 or more, got \(value)" }
                    if number >= 0x1p63 { return "\(key): \(value) is too large (at most \(Int64.max))" }
                }
                if let inner = inner as? DecodingError, case let .dataCorrupted(context) = inner, !context.codingPath.isEmpty,
                   !context.debugDescription.contains("JSON") {
                    return describe(inner)
                }
                return "\(key): \(value) is not valid here; expected \(expected)"
            }
        }
        if let error = error as? DecodingError { return describe(error) }
        return "\(error)"
    }

    /// Every leaf of `tree` (lists count as leaves) with its key path, sorted by path.
    static func leaves(_ tree: [String: Any], _ prefix: [String] = []) -> [([String], Any)] {
        tree.keys.sorted().flatMap { key -> [([String], Any)] in
            if let inner = tree[key] as? [String: Any] { return leaves(inner, prefix + [key]) }
            return [(prefix + [key], tree[key]!)]
        }
    }

    static func leaf(_ tree: [String: Any], _ path: [String]) -> Any? {
        guard let head = path.first else { return nil }
        return path.count == 1 ? tree[head] : (tree[head] as? [String: Any]).flatMap { leaf($0, Array(path.dropFirst())) }
    }

    /// What kind of value a default stands for, for messages.
    static func kind(of value: Any) -> String {
        switch value {
        case let number as NSNumber:
            switch String(cString: number.objCType) {
            case "c", "B": return "true or false"
            case "f", "d": return "a number such as \(number.doubleValue)"
            default: return "a whole number such as \(number.int64Value)"
            }
        case is String: return "a string"
        case is [Any]: return "a list"
        case is [String: Any]: return "a mapping"
        default: return "another value"
        }
    }

    public static func snakeCase(_ key: String) -> String {
        var result = ""
        for character in key {
            if character.isUppercase { result += "_" + character.lowercased() } else { result.append(character) }
        }
        return result
    }

    public static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { key in key.intValue.map { "[\($0)]" } ?? snakeCase(key.stringValue) }
                .joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case let .typeMismatch(type, context):
            let found = context.debugDescription.range(of: #"found .*$"#, options: .regularExpression)
                .map { String(context.debugDescription[$0]).replacingOccurrences(of: " instead.", with: "") }
            var text = "\(path(context)): expected \(typeName(type))" + (found.map { ", \($0)" } ?? "")
            if type is [String: Any].Type {
                text += " (in YAML's flow style a space follows each colon: {type: mlp, widths: [784, 1024]})"
            }
            return text
        case let .valueNotFound(type, context):
            return "\(path(context)): missing \(typeName(type))"
        case let .keyNotFound(key, context):
            let prefix = path(context)
            return "\(prefix.isEmpty ? "" : prefix + "."): missing key \"\(snakeCase(key.stringValue))\""
        case let .dataCorrupted(context):
            return "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Double.Type, is Float.Type: return "a number"
        case is Int.Type, is UInt64.Type: return "a whole number"
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        case is [String: Any].Type: return "a mapping of keys"
        case is [Any].Type: return "a list"
        default: return "\(type)"
        }
    }
}

extension OptimizerConfiguration {
    /// The optimizer these settings describe, over `parameters`.
    /// - Throws: ``OptimizerConfigurationError`` for a hyperparameter out of range.
    public func makeOptimizer(parameters: ParameterStore<Float>) throws -> any Optimizer<Float> {
        switch name {
        case .lars:
            return try LARS(parameters: parameters, learningRate: learningRate, weightDecay: weightDecay, momentum: momentum,
                            eta: eta)
        case .adamw:
            return try AdamW(parameters: parameters, learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon,
                             weightDecay: weightDecay, excludeBiasAndNormalization: true)
        case .sgd:
            return try SGD(parameters: parameters, learningRate: learningRate, momentum: momentum, weightDecay: weightDecay,
                           nesterov: nesterov, excludeBiasAndNormalization: true)
        }
    }
}
