// `anticollapse plan bench|serve` and `anticollapse worldmodel eval`: the latent planner of a
// trained world model, timed, served over JSON lines, and evaluated in closed loop.
import ArgumentParser
import Communication
import Datasets
import Engine
import Environments
import Foundation
import Layers
import Tensor
import WorldModel

/// The planner's settings on the command line (defaults: LeWorldModel's CEM).
struct PlannerOptions: ParsableArguments {
    @Option(help: "cem or mppi.") var solver = "cem"
    @Option(help: "Candidate sequences an iteration.") var samples = 300
    @Option(help: "CEM: elites the Gaussian is refitted to.") var elites = 30
    @Option(help: "Iterations a solve.") var iterations = 30
    @Option(help: "Action blocks planned.") var horizon = 5
    @Option(help: "Blocks executed before replanning.") var receding = 5
    @Option(help: "Initial standard deviation of the actions.") var std = 1.0
    @Flag(name: .customLong("no-warm-start"), help: "Start every solve from zero instead of the rest of the previous plan.")
    var noWarmStart = false
    @Option(help: "MPPI temperature (relative to the spread of the costs).") var temperature = 0.5
    @Option(name: .customLong("planner-seed"), help: "Seed of the candidates' noise.") var plannerSeed: UInt64 = 0
    @Flag(name: .customLong("full-recompute"), help: "Recompute every rollout window in full instead of caching keys and values (the reference; slower).")
    var fullRecompute = false
    @Option(help: "Threads a rollout splits the candidates over (default: every core for plan bench|serve, cores ÷ ranks for worldmodel eval); BLAS then runs one thread.")
    var threads: Int?

    func settings() throws -> PlannerSettings {
        guard let solver = PlannerSolver(rawValue: solver) else {
            throw ValidationError("--solver: \"\(solver)\" is not one of \(PlannerSolver.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var s = PlannerSettings()
        s.solver = solver; s.samples = samples; s.elites = elites; s.iterations = iterations; s.horizon = horizon
        s.receding = receding; s.initialStd = std; s.warmStart = !noWarmStart; s.temperature = temperature; s.seed = plannerSeed
        s.keyValueCache = !fullRecompute
        s.threads = threads ?? 1
        try s.validate()
        return s
    }
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The latent planner of a trained world model.",
        subcommands: [PlanBench.self, PlanServe.self])
}

extension PlannerOptions {
    /// Sets the BLAS threads (`--blas-threads`, default cores ÷ ranks) and gives the planner
    /// as many (`--threads` unless given). Returns the options and the BLAS thread count.
    func configuringThreads(blasThreads: Int?, communicator: (any Communicator)? = nil) -> (options: PlannerOptions, blas: Int) {
        var options = self
        let blas = BLASThreads.configure(override: blasThreads, communicator: communicator)
        options.threads = threads ?? blas
        return (options, blas)
    }
}

/// BLAS gets one thread when the planner's rollout runs its own threads (unless
/// `--blas-threads` is given); returns the BLAS thread count.
func sharingCores(with planner: LatentPlanner, blasThreads: Int?, blas: Int) -> Int {
    guard planner.rolloutThreads > 1, blasThreads == nil else { return blas }
    BLASThreads.set(1)
    return 1
}

/// Loads a world-model checkpoint and makes its planner.
func makePlanner(checkpoint: String, options: PlannerOptions) throws -> (WorldModelCheckpoint, LatentPlanner, ObservationFormat) {
    let model = try WorldModelCheckpoint(path: checkpoint)
    let data = model.configuration.data
    let planner = try LatentPlanner(network: model.network, frameskip: data.frameskip, actionDimension: data.actionDimension,
                                    settings: options.settings())
    return (model, planner, try ObservationFormat(size: data.imageSize, channels: data.channels))
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((p * Double(sorted.count - 1)).rounded()))]
}

struct PlanBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Milliseconds per full solve (median, p90) on TwoRoom frames.")
    @Option(help: "A world-model checkpoint.") var checkpoint: String
    @Option(help: "Timed solves.") var solves = 20
    @Option(name: .customLong("blas-threads"), help: "OpenBLAS threads (default: every core).") var blasThreads: Int?
    @OptionGroup var planner: PlannerOptions

    func run() throws {
        let (options, blas) = planner.configuringThreads(blasThreads: blasThreads)
        let (model, latent, format) = try makePlanner(checkpoint: checkpoint, options: options)
        let threads = sharingCores(with: latent, blasThreads: blasThreads, blas: blas)
        var policy = PlannerPolicy(planner: latent, format: format)
        let tasks = ClosedLoop.crossRoomTasks(count: solves + 1, seed: 1)
        var times: [Double] = []
        for (i, task) in tasks.enumerated() {
            try policy.begin(task)
            let (_, ms) = try policy.act(agent: task.start, task: task, limit: 1000)
            if i > 0, let ms { times.append(ms) }   // the first solve makes the buffers
        }
        let s = latent.settings
        print("plan bench: \(model.path) (step \(model.step)); \(s.solver.rawValue) \(s.samples) samples × \(s.iterations) iterations × \(s.horizon) blocks, \(s.keyValueCache ? "key/value cache" : "full recompute"), \(latent.rolloutThreads) rollout thread(s), \(threads) BLAS thread(s)")
        print(String(format: "ms per solve over %d solves: median %.1f, p90 %.1f, min %.1f", times.count,
                     percentile(times, 0.5), percentile(times, 0.9), times.min() ?? .nan))
    }
}


struct PlanServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Plan for any environment over JSON lines on stdin/stdout.",
        discussion: """
            Request (one JSON object a line):
              {"observation": IMAGE, "goal": IMAGE}  →  {"actions": [[ax, ay], …], "plan_ms": t}
              {"reset": true}                        →  {"reset": true}   (clears the warm start)
            IMAGE = {"shape": [H, W, C], "dtype": "uint8", "data": "<base64 of the raw HWC bytes>"}, any size
            (area-resized to the model's input, as training's frames were). One action per environment
            step (receding · frameskip of them). A malformed request gets {"error": "…"}; the server goes on.
            """)
    @Option(help: "A world-model checkpoint.") var checkpoint: String
    @Option(name: .customLong("blas-threads"), help: "OpenBLAS threads (default: every core).") var blasThreads: Int?
    @OptionGroup var planner: PlannerOptions

    func run() throws {
        let (options, blas) = planner.configuringThreads(blasThreads: blasThreads)
        let (_, latent, format) = try makePlanner(checkpoint: checkpoint, options: options)
        _ = sharingCores(with: latent, blasThreads: blasThreads, blas: blas)
        let server = PlanServer(planner: latent, format: format)
        FileHandle.standardError.write(Data("plan serve: ready (\(format) frames; one JSON request a line)\n".utf8))
        while let line = readLine(strippingNewline: true) {
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            let reply = server.answer(line)
            FileHandle.standardOutput.write(Data((reply + "\n").utf8))   // unbuffered: one reply a request
        }
    }
}

/// Answers the JSON-lines planning protocol (see `plan serve --help`).
final class PlanServer {
    let planner: LatentPlanner
    let format: ObservationFormat
    private let frame: Tensor<Float>

    init(planner: LatentPlanner, format: ObservationFormat) {
        self.planner = planner
        self.format = format
        frame = Tensor(zeros: [1, format.channels, format.size, format.size])
    }

    struct RequestError: Error { let message: String }

    /// The reply line to a request line.
    func answer(_ line: String) -> String {
        do {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw RequestError(message: "a request is a JSON object")
            }
            if object["reset"] as? Bool == true {
                planner.reset()
                return #"{"reset": true}"#
            }
            guard let observation = object["observation"] else { throw RequestError(message: "missing \"observation\" (or {\"reset\": true})") }
            guard let goal = object["goal"] else { throw RequestError(message: "missing \"goal\"") }
            let current = try embed(observation, field: "observation")
            let target = try embed(goal, field: "goal")
            let started = DispatchTime.now().uptimeNanoseconds
            let plan = try planner.plan(current: current, goal: target)
            let ms = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
            let a = planner.actionDimension
            let actions = (0..<(plan.actions.count / a)).map { i in (0..<a).map { Double(plan.actions[i * a + $0]) } }
            let data = try JSONSerialization.data(withJSONObject: ["actions": actions, "plan_ms": (ms * 1000).rounded() / 1000])
            return String(decoding: data, as: UTF8.self)
        } catch let error as RequestError {
            return Self.error(error.message)
        } catch {
            return Self.error("\(error)")
        }
    }

    static func error(_ message: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: ["error": message])) ?? Data(#"{"error": "?"}"#.utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// An IMAGE object → the model's embedding of it.
    func embed(_ value: Any, field: String) throws -> [Float] {
        guard let image = value as? [String: Any] else { throw RequestError(message: "\(field): expected {\"shape\", \"dtype\", \"data\"}") }
        guard let shape = image["shape"] as? [Int], shape.count == 3 || shape.count == 2, shape.allSatisfy({ $0 > 0 }) else {
            throw RequestError(message: "\(field).shape: expected [H, W, C] of positive integers")
        }
        let (h, w, c) = (shape[0], shape[1], shape.count == 3 ? shape[2] : 1)
        guard [1, 3, 4].contains(c) else { throw RequestError(message: "\(field).shape: C must be 1, 3 or 4, got \(c)") }
        guard (image["dtype"] as? String ?? "uint8") == "uint8" else { throw RequestError(message: "\(field).dtype: only uint8 is supported") }
        guard let text = image["data"] as? String, let bytes = Data(base64Encoded: text) else {
            throw RequestError(message: "\(field).data: expected base64 text")
        }
        guard bytes.count == h * w * c else {
            throw RequestError(message: "\(field).data: \(bytes.count) bytes, but shape \(shape) needs \(h * w * c)")
        }
        let resized = Self.areaResize([UInt8](bytes), height: h, width: w, channels: c, to: format)
        PlannerPolicy.scale(resized, format: format, into: frame)
        return try planner.embed(frame).scalars
    }

    /// Area average of an HWC image to the model's square size and channels (RGB → luma for 1
    /// channel; grey replicated for 3; alpha dropped), rounded to uint8.
    static func areaResize(_ pixels: [UInt8], height: Int, width: Int, channels: Int, to format: ObservationFormat) -> [UInt8] {
        let size = format.size
        var out = [UInt8](repeating: 0, count: format.valueCount)
        for oy in 0..<size {
            let rows = (oy * height / size)..<max(oy * height / size + 1, ((oy + 1) * height + size - 1) / size)
            for ox in 0..<size {
                let columns = (ox * width / size)..<max(ox * width / size + 1, ((ox + 1) * width + size - 1) / size)
                var rgb = SIMD3<Double>.zero
                for y in rows { for x in columns {
                    let p = (y * width + x) * channels
                    rgb += channels >= 3 ? SIMD3(Double(pixels[p]), Double(pixels[p + 1]), Double(pixels[p + 2])) : SIMD3(repeating: Double(pixels[p]))
                } }
                rgb /= Double(rows.count * columns.count)
                let o = (oy * size + ox) * format.channels
                if format.channels == 3 {
                    for k in 0..<3 { out[o + k] = UInt8(rgb[k].rounded()) }
                } else {
                    out[o] = UInt8(min(255, (rgb.x.rounded() * 0.299 + rgb.y.rounded() * 0.587 + rgb.z.rounded() * 0.114).rounded()))
                }
            }
        }
        return out
    }
}
