import ArgumentParser
import Engine
import JointEmbedding

@main
struct AntiCollapse: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anticollapse",
        abstract: "Data-parallel self-supervised learning with exact global-batch statistics.",
        version: AntiCollapseVersion.current,
        subcommands: [Train.self, Eval.self, Report.self, Dataset.self, Inspect.self, Bench.self, Env.self, Plan.self, WorldModelCommand.self])
}
