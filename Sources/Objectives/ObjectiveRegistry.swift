import Synchronization

// MARK: - Settings

/// What building an objective needs to know about the run besides its own settings.
public struct ObjectiveBuildContext: Sendable, Equatable {
    /// Views made with the global augmentation (two for VICReg, Barlow Twins, W-MSE).
    public var globalViews: Int
    /// Extra views made with the local augmentation (LeJEPA's multi-crop).
    public var localViews: Int
    /// Rows per step over all ranks.
    public var globalBatchSize: Int
    /// The width of the embeddings the objective sees.
    public var embeddingWidth: Int

    public init(globalViews: Int = 2, localViews: Int = 0, globalBatchSize: Int = 256, embeddingWidth: Int = 2048) {
        self.globalViews = globalViews
        self.localViews = localViews
        self.globalBatchSize = globalBatchSize
        self.embeddingWidth = embeddingWidth
    }

    /// All views of a step.
    public var viewCount: Int { globalViews + localViews }
}

/// A setting of an objective that cannot work: the key under `objective.<name>` and what
/// would be right.
public struct ObjectiveSettingsError: Error, CustomStringConvertible, Equatable {
    /// The key relative to the objective's settings (`variance`, `sub_batch_size`), or "" for
    /// the objective as a whole.
    public var key: String
    public var problem: String

    public init(key: String, _ problem: String) {
        self.key = key
        self.problem = problem
    }

    public var description: String { key.isEmpty ? problem : "\(key): \(problem)" }
}

/// The settings of one objective: its name in configs, its defaults, its checks and how it is
/// built — everything the config parser, the trainer, `bench` and the scaling model need.
///
/// An objective is one file: the objective type, then its settings type conforming to this
/// protocol, then one line in ``ObjectiveRegistry/builtIn`` (or a call to
/// ``ObjectiveRegistry/register(_:)`` from elsewhere, e.g. a test target). Its settings live
/// under `objective.<name>` in a config, snake_case keys, every key with a default.
public protocol ObjectiveSettings: Codable, Equatable, Sendable {
    /// The one spelling of the objective everywhere: `objective.name`, `bench --objective`,
    /// metrics and help (snake_case, e.g. `barlow_twins`).
    static var name: String { get }
    /// One line for help texts.
    static var summary: String { get }
    /// The number of views it compares, for the config check (default: any).
    static var viewCount: ClosedRange<Int> { get }

    /// The defaults.
    init()

    /// Checks values that decode but cannot work, alone (called when the config loads).
    func validate() throws
    /// Checks the settings against the run (called when the recipe is built).
    func validate(in context: ObjectiveBuildContext) throws
    /// The objective these settings describe, in `Float` for training.
    func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float>
    /// The statistics plan of one evaluation on two views of width `dimension` (what `bench`
    /// and the scaling model count).
    func plan(dimension: Int) -> StatisticsPlan
    /// The random projection directions a step, for objectives that slice (SIGReg, LeJEPA);
    /// nil for the others. `bench --directions` sets it.
    var directions: Int? { get set }
}

extension ObjectiveSettings {
    public static var viewCount: ClosedRange<Int> { 1...Int.max }
    public func validate() throws {}
    public func validate(in context: ObjectiveBuildContext) throws {}
    public var directions: Int? {
        get { nil }
        set {}
    }

    /// Whether `other` holds the same settings.
    func isEqual(to other: any ObjectiveSettings) -> Bool { (other as? Self) == self }
}

// MARK: - Registry

/// The objectives a config, `bench` and the scaling model can name.
///
/// The built-in ones are listed in ``builtIn``; another (a research variant, a test's toy) is
/// added with ``register(_:)`` before configs that name it are loaded.
public enum ObjectiveRegistry {
    /// The objectives this library ships, in the order help texts list them.
    public static let builtIn: [any ObjectiveSettings.Type] = [
        VICRegSettings.self,
        BarlowTwinsSettings.self,
        WMSESettings.self,
        SIGRegSettings.self,
        LeJEPASettings.self,
    ]

    private static let registered = Mutex<[any ObjectiveSettings.Type]>(builtIn)

    /// Every registered objective, built-in ones first.
    public static var all: [any ObjectiveSettings.Type] { registered.withLock { $0 } }

    /// Their names, in order.
    public static var names: [String] { all.map { $0.name } }

    /// Adds an objective (idempotent for a type already registered).
    /// - Precondition: no other objective has its name.
    public static func register(_ type: any ObjectiveSettings.Type) {
        registered.withLock { list in
            if let existing = list.first(where: { $0.name == type.name }) {
                precondition(existing == type, "objective name \(type.name) is taken by \(existing)")
                return
            }
            list.append(type)
        }
    }

    /// The objective named `name`, if registered.
    public static func settingsType(named name: String) -> (any ObjectiveSettings.Type)? {
        all.first { $0.name == name }
    }

    /// The objective named `name`, or an error listing the valid names.
    public static func require(_ name: String) throws -> any ObjectiveSettings.Type {
        guard let type = settingsType(named: name) else {
            throw ObjectiveSettingsError(key: "name", "unknown \"\(name)\"; valid: \(names.joined(separator: ", "))")
        }
        return type
    }

    /// "vicreg, barlow_twins, …" for help texts.
    public static var helpList: String { names.joined(separator: ", ") }
}

/// The name of a registered objective (`objective.name`): a string checked against the
/// registry when a config loads. Each objective's file adds its static constant
/// (``ObjectiveName/vicreg``, …).
public struct ObjectiveName: RawRepresentable, Hashable, Codable, Sendable, ExpressibleByStringLiteral,
    CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { rawValue = value }
    public var description: String { rawValue }

    /// Every registered objective's name, in registry order.
    public static var allCases: [ObjectiveName] { ObjectiveRegistry.names.map(ObjectiveName.init(rawValue:)) }

    /// The settings type of this name.
    /// - Throws: ``ObjectiveSettingsError`` listing the valid names when it is not registered.
    public func settingsType() throws -> any ObjectiveSettings.Type { try ObjectiveRegistry.require(rawValue) }

    /// The default settings of this objective with `directions` random projections (for those
    /// that slice): what `bench` builds.
    public func defaultSettings(directions: Int? = nil) throws -> any ObjectiveSettings {
        var settings = try settingsType().init()
        if let directions { settings.directions = directions }
        return settings
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard ObjectiveRegistry.settingsType(named: text) != nil else {
            throw DecodingError.dataCorrupted(.init(
                codingPath: decoder.codingPath,
                debugDescription: "unknown \"\(text)\"; valid: \(ObjectiveRegistry.helpList)"))
        }
        rawValue = text
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

// MARK: - The `objective` section of a config

/// Which objective a run uses, the settings of every registered objective (each under its
/// name), and how batch statistics become global.
///
/// ```yaml
/// objective:
///   name: vicreg
///   vicreg: {invariance: 25, variance: 25, covariance: 1}
///   reduction: automatic
/// ```
public struct ObjectiveConfiguration: Codable, Equatable, Sendable {
    public var name: ObjectiveName = .vicreg
    /// The settings of every registered objective, by name (defaults where a config says nothing).
    private var settings: [String: any ObjectiveSettings]
    /// How batch statistics become global: `automatic` (by the cost model), `statistics`
    /// (all-reduce the moments) or `gather` (all-gather the embeddings).
    public var reduction = "automatic"
    /// The machine `automatic` assumes (`anticollapse bench comm` fits the first two).
    public var costModel = CostModelSettings()

    public init() {
        settings = Dictionary(uniqueKeysWithValues: ObjectiveRegistry.all.map { ($0.name, $0.init()) })
    }

    /// The settings of objective `type` (its defaults if it was registered after this value was made).
    public subscript<Settings: ObjectiveSettings>(_ type: Settings.Type) -> Settings {
        get { settings[Settings.name] as? Settings ?? Settings() }
        set { settings[Settings.name] = newValue }
    }

    /// The settings of the objective the run uses.
    public var selected: any ObjectiveSettings {
        get {
            settings[name.rawValue] ?? (ObjectiveRegistry.settingsType(named: name.rawValue)?.init() ?? VICRegSettings())
        }
        set { settings[type(of: newValue).name] = newValue }
    }

    /// The objective the run uses, built for `context`.
    public func makeObjective(in context: ObjectiveBuildContext) -> any Objective<Float> {
        selected.makeObjective(in: context)
    }

    /// The constants of ``ReductionCostModel``, in the units people quote.
    public struct CostModelSettings: Codable, Equatable, Sendable {
        /// The fixed cost of one collective.
        public var latencyMicroseconds = 20.0
        /// The bus bandwidth of an all-reduce (GB/s, 10⁹ bytes).
        public var bandwidthGigabytesPerSecond = 10.0
        /// One rank's rate on the statistics kernels (GFLOP/s).
        public var gigaflops = 50.0

        public init() {}

        /// The cost model with these constants.
        public var model: ReductionCostModel {
            ReductionCostModel(latency: latencyMicroseconds / 1e6, bandwidth: bandwidthGigabytesPerSecond * 1e9,
                               flopRate: gigaflops * 1e9)
        }
    }

    /// Checks what can be checked without the run, naming the key under `objective`.
    public func validate() throws {
        for (key, value) in [("latency_microseconds", costModel.latencyMicroseconds),
                             ("bandwidth_gigabytes_per_second", costModel.bandwidthGigabytesPerSecond),
                             ("gigaflops", costModel.gigaflops)] where !(value.isFinite && value > 0) {
            throw ObjectiveSettingsError(key: "cost_model.\(key)", "must be a positive number, got \(value)")
        }
        if !StatisticsReduction.allCases.map(\.rawValue).contains(reduction) {
            throw ObjectiveSettingsError(key: "reduction", "unknown \"\(reduction)\"; valid: \(StatisticsReduction.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        for type in ObjectiveRegistry.all {
            do { try settings[type.name]?.validate() } catch let error as ObjectiveSettingsError {
                throw ObjectiveSettingsError(key: error.key.isEmpty ? type.name : "\(type.name).\(error.key)", error.problem)
            }
        }
    }

    /// Checks the selected objective against the run, naming the key under `objective`.
    public func validate(in context: ObjectiveBuildContext) throws {
        do { try selected.validate(in: context) } catch let error as ObjectiveSettingsError {
            throw ObjectiveSettingsError(key: error.key.isEmpty ? name.rawValue : "\(name.rawValue).\(error.key)", error.problem)
        }
    }

    public static func == (a: ObjectiveConfiguration, b: ObjectiveConfiguration) -> Bool {
        a.name == b.name && a.reduction == b.reduction && a.costModel == b.costModel
            && ObjectiveRegistry.all.allSatisfy { type in
                (a.settings[type.name] ?? type.init()).isEqual(to: b.settings[type.name] ?? type.init())
            }
    }

    // MARK: Coding (keys are camelCase here: the config's snake_case is converted by its coders)

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// `barlow_twins` → `barlowTwins`, the key a snake_case-converting coder matches.
    private static func codingKey(_ name: String) -> Key {
        let parts = name.split(separator: "_")
        return Key(parts.enumerated().map { $0.offset == 0 ? String($0.element) : $0.element.prefix(1).uppercased() + $0.element.dropFirst() }
            .joined())
    }

    public init(from decoder: any Decoder) throws {
        self.init()
        let container = try decoder.container(keyedBy: Key.self)
        if let name = try container.decodeIfPresent(ObjectiveName.self, forKey: Key("name")) { self.name = name }
        if let reduction = try container.decodeIfPresent(String.self, forKey: Key("reduction")) { self.reduction = reduction }
        if let costModel = try container.decodeIfPresent(CostModelSettings.self, forKey: Key("costModel")) {
            self.costModel = costModel
        }
        for type in ObjectiveRegistry.all {
            let key = Self.codingKey(type.name)
            if container.contains(key) { settings[type.name] = try type.init(from: container.superDecoder(forKey: key)) }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(name, forKey: Key("name"))
        try container.encode(reduction, forKey: Key("reduction"))
        try container.encode(costModel, forKey: Key("costModel"))
        for type in ObjectiveRegistry.all {
            let value = settings[type.name] ?? type.init()
            try value.encode(to: container.superEncoder(forKey: Self.codingKey(type.name)))
        }
    }
}
