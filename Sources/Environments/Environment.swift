/// A simulated control task that a world model learns from offline trajectories and plans in.
///
/// An environment is a small value: its state, its goal, a `step` that applies one action, a
/// `render` that draws the current state, and a `success` test. Everything random (the start
/// state and goal drawn by ``reset(seed:episode:)``) is keyed by a seed and an episode index,
/// never by the thread or rank that runs the episode, so a dataset collected on any number of
/// cores is the same.
///
/// Vocabulary: a *state* is the vector the dynamics act on (TwoRoom: the agent position); a
/// *frame* is the environment's native rendering (`frameSize × frameSize × 3`, `uint8`, HWC);
/// an *observation* is a frame resampled to a model's resolution and channel count
/// (``ObservationFormat``).
public protocol Environment: Sendable {
    /// The name datasets record, e.g. `"two_room"`.
    static var name: String { get }
    /// The number of values in a state.
    static var stateDimension: Int { get }
    /// The number of values in an action; every component lies in `[-1, 1]`.
    static var actionDimension: Int { get }
    /// The side of a native frame in pixels.
    static var frameSize: Int { get }

    /// The parameters that define the task (speed, geometry, thresholds), written with datasets.
    var parameters: [(name: String, value: Double)] { get }
    /// The current state.
    var state: [Float] { get }
    /// The goal state.
    var goal: [Float] { get }
    /// Whether the current state reaches the goal.
    var isSuccess: Bool { get }

    /// Draws a start state and a goal from `(seed, episode)`.
    mutating func reset(seed: UInt64, episode: UInt64)
    /// Starts from a given state and goal.
    /// - Throws: ``EnvironmentError`` when either has the wrong size or is not finite.
    mutating func reset(state: [Float], goal: [Float]) throws
    /// Applies one action (each component clipped to `[-1, 1]`).
    mutating func step(_ action: [Float])
    /// Draws the frame of `state` (any state, not only the current one) into `frame`, which
    /// becomes `frameSize × frameSize × 3` values, HWC (it may come empty).
    func render(state: ArraySlice<Float>, into frame: inout [UInt8])
    /// The frame of everything but the state (walls, background), or nil when every pixel
    /// depends on the state.
    var background: [UInt8]? { get }
    /// The pixels of `render(state:into:)` that may differ from ``background``: rows and
    /// columns of the native frame (used to resample only what changed).
    func changedRegion(state: ArraySlice<Float>) -> (rows: ClosedRange<Int>, columns: ClosedRange<Int>)
}

extension Environment {
    /// The frame of the current state.
    public func render() -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: Self.frameSize * Self.frameSize * 3)
        render(state: state[...], into: &frame)
        return frame
    }
}

/// A problem with an environment's arguments, named so a user can fix it.
public enum EnvironmentError: Error, CustomStringConvertible, Equatable {
    case invalid(String)

    public var description: String {
        switch self {
        case let .invalid(text): return text
        }
    }
}

/// The environments known by name (the `--env` values of `anticollapse env`).
public enum EnvironmentRegistry {
    /// The names that ``make(_:)`` accepts.
    public static let names = [TwoRoom.name]

    /// A fresh environment named `name`.
    /// - Throws: ``EnvironmentError/invalid(_:)`` naming the known environments.
    public static func make(_ name: String) throws -> any Environment {
        switch name {
        case TwoRoom.name: return TwoRoom()
        default: throw EnvironmentError.invalid("unknown environment \"\(name)\"; known: \(names.joined(separator: ", "))")
        }
    }
}
