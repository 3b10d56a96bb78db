import ArgumentParser
import Engine
import JointEmbedding
import Layers
import Tensor

@main
struct AntiCollapse: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anticollapse",
        abstract: "Data-parallel self-supervised learning with exact global-batch statistics.",
        version: AntiCollapseVersion.current,
        subcommands: [Train.self, Eval.self, Report.self, Export.self, Embed.self, ConfigCommand.self, Dataset.self, Inspect.self,
                      Bench.self, Env.self, Plan.self, WorldModelCommand.self])

    /// Sets OpenBLAS's idle-thread wait short (``BLASThreads/restartWithShortThreadWait(arguments:)``),
    /// then runs the command.
    static func main() {
        BLASThreads.restartWithShortThreadWait()
        main(nil)
    }
}
