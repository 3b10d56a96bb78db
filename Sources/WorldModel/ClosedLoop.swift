import Datasets
import Engine
import Environments
import Foundation
import Tensor

/// One closed-loop task: drive the agent from `start` to within the success distance of `goal`
/// in at most `budget` environment steps.
public struct PlanningTask: Sendable, Equatable {
    public var start: SIMD2<Float>
    public var goal: SIMD2<Float>
    /// The held-out episode and step it came from (−1 for synthetic tasks).
    public var episode: Int
    public var step: Int
    public var budget: Int
    public var distance: Float { TwoRoom.distance(start, goal) }
}

/// What one policy did on one task.
public struct TaskOutcome: Sendable, Equatable {
    public var success: Bool
    /// Steps taken (until success or the budget).
    public var steps: Int
    /// The executed path (the start, then every state).
    public var path: [SIMD2<Float>]
    /// Milliseconds of each plan (planner policies only).
    public var planMilliseconds: [Double]

    public init(success: Bool, steps: Int, path: [SIMD2<Float>], planMilliseconds: [Double]) {
        self.success = success; self.steps = steps; self.path = path; self.planMilliseconds = planMilliseconds
    }
}

/// A policy for closed-loop evaluation: the actions to take from `agent` (at most `limit`).
public protocol ClosedLoopPolicy {
    var name: String { get }
    /// Called at the start of every task.
    mutating func begin(_ task: PlanningTask) throws
    /// The next actions (1 or more) from the current state; their count is at most `limit`.
    mutating func act(agent: SIMD2<Float>, task: PlanningTask, limit: Int) throws -> (actions: [SIMD2<Float>], planMilliseconds: Double?)
}

/// LeWorldModel's evaluation protocol, and the cross-room variant.
public enum ClosedLoop {
    /// Tasks from held-out expert episodes: a random step of an episode as the start, the state
    /// `goalOffset` steps later as the goal (episodes too short are skipped), drawn from `seed`.
    public static func heldOutTasks(dataset: TrajectoryDataset, episodes: [Int], count: Int, goalOffset: Int = 25,
                                    budget: Int = 50, seed: UInt64 = 0) throws -> [PlanningTask] {
        let usable = episodes.filter { dataset.episodes[$0].length > goalOffset + 1 }
        guard !usable.isEmpty else {
            throw ConfigurationError("\(dataset.location): no held-out episode is longer than \(goalOffset + 1) steps")
        }
        var random = CounterRandom(seed: seed, streamName: "closed-loop tasks").sequence()
        var tasks: [PlanningTask] = []
        var columns: [Int: [Float]] = [:]
        for _ in 0..<count {
            let e = usable[Int(random.next() % UInt64(usable.count))]
            let episode = dataset.episodes[e]
            let start = Int(random.next() % UInt64(episode.length - goalOffset))
            if columns[episode.shard] == nil { columns[episode.shard] = try dataset.columns(ofShard: episode.shard).states }
            let states = columns[episode.shard]!
            func state(_ row: Int) -> SIMD2<Float> { SIMD2(states[2 * (episode.offset + row)], states[2 * (episode.offset + row) + 1]) }
            tasks.append(PlanningTask(start: state(start), goal: state(start + goalOffset), episode: e, step: start, budget: budget))
        }
        return tasks
    }

    /// Tasks whose start and goal lie in opposite rooms (left `x < 100`, right `x > 124`), each
    /// uniform over its room, the start's room chosen at random.
    public static func crossRoomTasks(count: Int, budget: Int = 100, seed: UInt64 = 0) -> [PlanningTask] {
        var random = CounterRandom(seed: seed, streamName: "cross-room tasks").sequence()
        func uniform(_ low: Float, _ high: Float) -> Float { low + (high - low) * Float(Double(random.next() >> 11) * 0x1p-53) }
        func point(left: Bool) -> SIMD2<Float> {
            SIMD2(left ? uniform(21, 99) : uniform(125, 203), uniform(21, 203))
        }
        return (0..<count).map { _ in
            let left = random.next() & 1 == 0
            return PlanningTask(start: point(left: left), goal: point(left: !left), episode: -1, step: -1, budget: budget)
        }
    }

    /// Runs `policy` on `task` in TwoRoom: success as soon as the agent is within the success
    /// distance of the goal after a step.
    public static func run<P: ClosedLoopPolicy>(_ policy: inout P, on task: PlanningTask) throws -> TaskOutcome {
        var environment = TwoRoom(agent: task.start, target: task.goal)
        try policy.begin(task)
        var path = [task.start], milliseconds: [Double] = []
        var steps = 0
        while steps < task.budget {
            let (actions, ms) = try policy.act(agent: environment.agent, task: task, limit: task.budget - steps)
            if let ms { milliseconds.append(ms) }
            guard !actions.isEmpty else { break }
            for action in actions.prefix(task.budget - steps) {
                environment.step([action.x, action.y])
                steps += 1
                path.append(environment.agent)
                if environment.isSuccess { return TaskOutcome(success: true, steps: steps, path: path, planMilliseconds: milliseconds) }
            }
        }
        return TaskOutcome(success: false, steps: steps, path: path, planMilliseconds: milliseconds)
    }

    /// Runs the planner on `task` like ``run(_:on:)`` and keeps every plan's whole horizon
    /// executed open loop in TwoRoom from the state it was made in (the planned path; only its
    /// first `receding` blocks are executed before the next plan).
    public static func plannedPaths(_ policy: inout PlannerPolicy, on task: PlanningTask) throws
        -> (outcome: TaskOutcome, plans: [[SIMD2<Float>]]) {
        var recorder = PlanRecorder(inner: policy)
        let outcome = try run(&recorder, on: task)
        policy = recorder.inner
        return (outcome, recorder.plans)
    }

    /// The embeddings the model predicts for the first plan of `task` (open loop from the
    /// start's embedding, one per action block) and the embeddings of the frames that executing
    /// that plan in TwoRoom shows at the same steps: `horizon + 1` each, the start first.
    public static func predictionRollout(_ policy: inout PlannerPolicy, on task: PlanningTask) throws
        -> (predicted: [[Float]], actual: [[Float]]) {
        try policy.begin(task)
        _ = try policy.act(agent: task.start, task: task, limit: task.budget)
        let planner = policy.planner, plan = planner.lastPlan
        let start = try policy.embed(task.start)
        let predicted = try planner.predictedEmbeddings(current: start, actions: plan)
        let path = simulate(plan, from: task.start, goal: task.goal, actionDimension: planner.actionDimension)
        let actual = try (0...planner.settings.horizon).map { block in try policy.embed(path[block * planner.frameskip]) }
        return (predicted, actual)
    }

    /// The states of TwoRoom from `agent` under `actions` (flattened, `actionDimension` each):
    /// the start, then one a step.
    public static func simulate(_ actions: [Float], from agent: SIMD2<Float>, goal: SIMD2<Float>, actionDimension a: Int)
        -> [SIMD2<Float>] {
        var environment = TwoRoom(agent: agent, target: goal)
        var path = [agent]
        for i in 0..<(actions.count / a) {
            environment.step(Array(actions[(i * a)..<(i * a + a)]))
            path.append(environment.agent)
        }
        return path
    }

    /// The Wilson score interval of `successes` of `n` at 95 % (z = 1.96).
    public static func wilson(successes: Int, of n: Int, z: Double = 1.959964) -> (low: Double, high: Double) {
        guard n > 0 else { return (0, 1) }
        let p = Double(successes) / Double(n), n = Double(n)
        let centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        let half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)).squareRoot()
        return (max(0, centre - half), min(1, centre + half))
    }
}

// MARK: - Policies

/// A planner policy that keeps each plan's whole horizon, simulated from where it was made.
private struct PlanRecorder: ClosedLoopPolicy {
    var inner: PlannerPolicy
    var plans: [[SIMD2<Float>]] = []
    var name: String { inner.name }
    mutating func begin(_ task: PlanningTask) throws {
        plans = []
        try inner.begin(task)
    }
    mutating func act(agent: SIMD2<Float>, task: PlanningTask, limit: Int) throws -> (actions: [SIMD2<Float>], planMilliseconds: Double?) {
        let result = try inner.act(agent: agent, task: task, limit: limit)
        plans.append(ClosedLoop.simulate(inner.planner.lastPlan, from: agent, goal: task.goal, actionDimension: inner.planner.actionDimension))
        return result
    }
}

/// Uniform random actions in [−1, 1]², keyed by (seed, task, step).
public struct RandomPolicy: ClosedLoopPolicy {
    public let name = "random"
    public var seed: UInt64
    private var random = CounterRandom(seed: 0).sequence()
    private var tasks: UInt64 = 0
    public init(seed: UInt64 = 0) { self.seed = seed }
    public mutating func begin(_ task: PlanningTask) throws {
        tasks += 1
        random = CounterRandom(seed: seed, streamName: "random policy").substream(tasks).sequence()
    }
    public mutating func act(agent: SIMD2<Float>, task: PlanningTask, limit: Int) throws -> (actions: [SIMD2<Float>], planMilliseconds: Double?) {
        func u() -> Float { Float(Double(random.next() >> 11) * 0x1p-53) * 2 - 1 }
        return ([SIMD2(u(), u())], nil)
    }
}

/// The noiseless expert (through the door when the goal is in the other room).
public struct ExpertClosedLoopPolicy: ClosedLoopPolicy {
    public let name = "expert"
    public var policy = ExpertPolicy(actionNoise: 0)
    public init() {}
    public mutating func begin(_ task: PlanningTask) throws {}
    public mutating func act(agent: SIMD2<Float>, task: PlanningTask, limit: Int) throws -> (actions: [SIMD2<Float>], planMilliseconds: Double?) {
        ([policy.action(agent: agent, target: task.goal, previous: nil, random: CounterRandom(seed: 0), step: 0)], nil)
    }
}

/// The latent planner as a policy: renders the current and the goal frame as training did,
/// embeds them, plans, and executes the first `receding` blocks (or `executeBlocks`).
public struct PlannerPolicy: ClosedLoopPolicy {
    public let name: String
    public let planner: LatentPlanner
    public let format: ObservationFormat
    /// Blocks executed a plan (default: the planner's `receding`).
    public var executeBlocks: Int
    private let render: @Sendable (ArraySlice<Float>, inout ArraySlice<UInt8>) -> Void
    private var goalEmbedding: [Float] = []
    private let frame: Tensor<Float>
    private var pixels: [UInt8]

    public init(planner: LatentPlanner, format: ObservationFormat, executeBlocks: Int? = nil, name: String = "planner") {
        self.planner = planner
        self.format = format
        self.executeBlocks = executeBlocks ?? planner.settings.receding
        self.name = name
        render = format.renderer(for: TwoRoom())
        frame = Tensor(zeros: [1, format.channels, format.size, format.size])
        pixels = [UInt8](repeating: 0, count: format.valueCount)
    }

    /// The embedding of the frame showing the agent at `position`.
    public mutating func embed(_ position: SIMD2<Float>) throws -> [Float] {
        var slice = pixels[...]
        render([position.x, position.y][...], &slice)
        pixels = Array(slice)
        PlannerPolicy.scale(pixels, format: format, into: frame)
        return try planner.embed(frame).scalars
    }

    /// HWC bytes → CHW values in [−1, 1] (the clip loader's scaling).
    public static func scale(_ hwc: [UInt8], format: ObservationFormat, into frame: Tensor<Float>) {
        let (size, channels) = (format.size, format.channels)
        frame.withUnsafeMutableBufferPointer { out in
            for y in 0..<size { for x in 0..<size { for c in 0..<channels {
                out[(c * size + y) * size + x] = Float(hwc[(y * size + x) * channels + c]) / 127.5 - 1
            } } }
        }
    }

    public mutating func begin(_ task: PlanningTask) throws {
        planner.reset()
        goalEmbedding = try embed(task.goal)
    }

    public mutating func act(agent: SIMD2<Float>, task: PlanningTask, limit: Int) throws -> (actions: [SIMD2<Float>], planMilliseconds: Double?) {
        let current = try embed(agent)
        let started = DispatchTime.now().uptimeNanoseconds
        let plan = try planner.plan(current: current, goal: goalEmbedding)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
        let a = planner.actionDimension
        let count = min(executeBlocks * planner.frameskip, plan.actions.count / a)
        return ((0..<count).map { SIMD2(plan.actions[$0 * a], plan.actions[$0 * a + 1]) }, ms)
    }
}
