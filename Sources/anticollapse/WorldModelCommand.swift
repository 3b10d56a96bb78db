// `anticollapse worldmodel eval`: closed-loop success of a world model's planner on TwoRoom,
// against random and expert policies on the same tasks.
import ArgumentParser
import Communication
import Datasets
import Engine
import Environments
import Foundation
import Layers
import Tensor
import WorldModel

struct WorldModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worldmodel", abstract: "World-model evaluation.", subcommands: [WorldModelEval.self, WorldModelReport.self])
}

struct WorldModelEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Closed-loop success on held-out episodes (LeWM's protocol) and across rooms; random and expert baselines.",
        discussion: """
            Held out: start = a random step of a held-out expert episode (the run's validation split), goal =
            the state --goal-offset steps later, --budget steps, success = within 16 pixels of the goal after
            any step. Cross room: start and goal uniform in opposite rooms, --cross-budget steps, replanning
            every --cross-receding blocks. Under mpirun the tasks are split over the ranks.
            """)
    @Option(help: "A world-model checkpoint.") var checkpoint: String
    @Option(help: "Held-out tasks.") var episodes = 500
    @Option(name: .customLong("goal-offset"), help: "Steps from start to goal in the held-out episode.") var goalOffset = 25
    @Option(help: "Environment steps a held-out task.") var budget = 50
    @Option(name: .customLong("cross-episodes"), help: "Cross-room tasks (0: skip).") var crossEpisodes = 200
    @Option(name: .customLong("cross-budget"), help: "Environment steps a cross-room task.") var crossBudget = 100
    @Option(name: .customLong("cross-receding"), help: "Blocks executed between plans across rooms.") var crossReceding = 1
    @Option(help: "Seed of the tasks.") var seed: UInt64 = 0
    @Option(help: "Write the results here (JSON).") var json: String?
    @Option(help: "Executed paths kept in the JSON per protocol (for the report).") var paths = 12
    @Option(name: .customLong("blas-threads"), help: "OpenBLAS threads a rank (default: cores ÷ ranks).") var blasThreads: Int?
    @OptionGroup var planner: PlannerOptions

    func run() throws {
        try runJob { communicator in
            let (planner, blas) = self.planner.configuringThreads(blasThreads: blasThreads, communicator: communicator)
            let (model, first, format) = try makePlanner(checkpoint: checkpoint, options: planner)
            _ = sharingCores(with: first, blasThreads: blasThreads, blas: blas)
            let data = model.configuration.data
            let dataset = try TrajectoryDataset(data.train)
            let (_, heldOut) = try WorldModelRecipe.split(episodeCount: dataset.episodes.count, data: data, seed: model.configuration.seed)
            guard !heldOut.isEmpty else {
                throw ConfigurationError("\(checkpoint): the run holds out no episodes (data.validation_fraction 0)")
            }
            var report: [String: Any] = ["checkpoint": checkpoint, "step": model.step, "ranks": communicator.size,
                                         "planner": plannerDescription(planner)]
            let heldOutTasks = try ClosedLoop.heldOutTasks(dataset: dataset, episodes: heldOut, count: episodes,
                                                           goalOffset: goalOffset, budget: budget, seed: seed)
            var protocols: [(String, [PlanningTask], Int)] = [("held_out", heldOutTasks, planner.receding)]
            if crossEpisodes > 0 {
                protocols.append(("cross_room", ClosedLoop.crossRoomTasks(count: crossEpisodes, budget: crossBudget, seed: seed), crossReceding))
            }
            for (name, tasks, receding) in protocols {
                var options = planner
                options.receding = min(receding, options.horizon)
                let latent = try LatentPlanner(network: model.network, frameskip: data.frameskip, actionDimension: data.actionDimension,
                                               settings: options.settings())
                var plannerPolicy = PlannerPolicy(planner: latent, format: format)
                var randomPolicy = RandomPolicy(seed: seed)
                var expertPolicy = ExpertClosedLoopPolicy()
                let started = Date()
                let planned = try evaluate(&plannerPolicy, tasks, communicator)
                let seconds = Date().timeIntervalSince(started)
                let random = try evaluate(&randomPolicy, tasks, communicator)
                let expert = try evaluate(&expertPolicy, tasks, communicator)
                var section: [String: Any] = ["tasks": tasks.count, "budget": tasks.first?.budget ?? 0,
                                              "receding_blocks": options.receding, "seconds": seconds]
                if name == "held_out" { section["goal_offset"] = goalOffset }
                for (policy, results) in [("planner", planned), ("random", random), ("expert", expert)] {
                    section[policy] = summary(results)
                }
                section["records"] = tasks.indices.map { i -> [String: Any] in
                    ["start": [tasks[i].start.x, tasks[i].start.y], "goal": [tasks[i].goal.x, tasks[i].goal.y],
                     "distance": tasks[i].distance, "planner": planned[i].success, "planner_steps": planned[i].steps,
                     "random": random[i].success, "expert": expert[i].success]
                }
                section["paths"] = tasks.indices.prefix(paths).map { i -> [String: Any] in
                    ["start": [tasks[i].start.x, tasks[i].start.y], "goal": [tasks[i].goal.x, tasks[i].goal.y],
                     "planner": planned[i].path.map { [$0.x, $0.y] }, "expert": expert[i].path.map { [$0.x, $0.y] },
                     "success": planned[i].success]
                }
                if communicator.isRoot {
                    // For the report: planned against executed paths, and predicted against actual embeddings.
                    section["planned_paths"] = try tasks.prefix(min(paths, 6)).map { task -> [String: Any] in
                        let (outcome, plans) = try ClosedLoop.plannedPaths(&plannerPolicy, on: task)
                        return ["start": [task.start.x, task.start.y], "goal": [task.goal.x, task.goal.y], "success": outcome.success,
                                "executed": outcome.path.map { [$0.x, $0.y] }, "plans": plans.map { $0.map { [$0.x, $0.y] } }]
                    }
                    if name == "held_out" {
                        section["rollouts"] = try tasks.prefix(min(paths, 4)).map { task -> [String: Any] in
                            let (predicted, actual) = try ClosedLoop.predictionRollout(&plannerPolicy, on: task)
                            return ["predicted": predicted, "actual": actual]
                        }
                    }
                }
                report[name] = section
                if communicator.isRoot {
                    print("\(name): \(tasks.count) tasks, budget \(tasks.first?.budget ?? 0) steps, replanning every \(options.receding) block(s)")
                    for (policy, results) in [("planner", planned), ("random", random), ("expert", expert)] {
                        let s = summary(results)
                        let wilson = s["wilson_95"] as! [Double]
                        var line = String(format: "  %-8@ success %5.1f %%  (Wilson 95 %%: %.1f–%.1f %%)", policy as NSString,
                                          100 * (s["success"] as! Double), 100 * wilson[0], 100 * wilson[1])
                        if let median = s["ms_per_plan_median"] as? Double, let p90 = s["ms_per_plan_p90"] as? Double {
                            line += String(format: ", %.0f ms per plan (median; p90 %.0f), %d plans", median, p90, s["plans"] as! Int)
                        }
                        print(line)
                    }
                }
            }
            if communicator.isRoot, let json {
                let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
                try data.write(to: URL(fileURLWithPath: json))
                print("wrote \(json)")
            }
        }
    }

    private func plannerDescription(_ planner: PlannerOptions) -> [String: Any] {
        ["threads": planner.threads ?? 1, "solver": planner.solver, "samples": planner.samples, "elites": planner.elites, "iterations": planner.iterations,
         "horizon": planner.horizon, "receding": planner.receding, "std": planner.std, "warm_start": !planner.noWarmStart]
    }

    /// Runs `policy` on this rank's share of the tasks and gathers every task's outcome on every rank.
    private func evaluate<P: ClosedLoopPolicy>(_ policy: inout P, _ tasks: [PlanningTask],
                                               _ communicator: any Communicator) throws -> [TaskOutcome] {
        let share = (tasks.count + communicator.size - 1) / communicator.size
        let mine = (communicator.rank * share)..<min(tasks.count, (communicator.rank + 1) * share)
        var local: [TaskOutcome] = []
        for i in mine { local.append(try ClosedLoop.run(&policy, on: tasks[i])) }
        // Fixed-size records: success, steps, plans, their ms sum, then the path (x, y) padded.
        let maxPath = (tasks.map(\.budget).max() ?? 0) + 1, maxPlans = maxPath
        let width = 3 + maxPlans + 2 * maxPath
        var send = [Double](repeating: .nan, count: share * width)
        for (j, outcome) in local.enumerated() {
            let base = j * width
            send[base] = outcome.success ? 1 : 0
            send[base + 1] = Double(outcome.steps)
            send[base + 2] = Double(outcome.planMilliseconds.count)
            for (k, ms) in outcome.planMilliseconds.enumerated() { send[base + 3 + k] = ms }
            for (k, p) in outcome.path.enumerated() {
                send[base + 3 + maxPlans + 2 * k] = Double(p.x)
                send[base + 3 + maxPlans + 2 * k + 1] = Double(p.y)
            }
        }
        let all = try communicator.allGather(send)
        return tasks.indices.map { i in
            let rank = i / share, j = i % share, base = (rank * share + j) * width
            let plans = Int(all[base + 2])
            let steps = Int(all[base + 1])
            return TaskOutcome(success: all[base] == 1, steps: steps,
                               path: (0...steps).map { SIMD2(Float(all[base + 3 + maxPlans + 2 * $0]), Float(all[base + 3 + maxPlans + 2 * $0 + 1])) },
                               planMilliseconds: (0..<plans).map { all[base + 3 + $0] })
        }
    }

    private func summary(_ results: [TaskOutcome]) -> [String: Any] {
        let successes = results.filter(\.success).count
        let wilson = ClosedLoop.wilson(successes: successes, of: results.count)
        var s: [String: Any] = ["success": Double(successes) / Double(max(1, results.count)), "successes": successes,
                                "wilson_95": [wilson.low, wilson.high],
                                "mean_steps_to_success": results.filter(\.success).map { Double($0.steps) }.reduce(0, +) / Double(max(1, successes))]
        let ms = results.flatMap(\.planMilliseconds)
        if !ms.isEmpty {
            s["ms_per_plan_median"] = percentile(ms, 0.5)
            s["ms_per_plan_p90"] = percentile(ms, 0.9)
            s["plans"] = ms.count
        }
        return s
    }
}
