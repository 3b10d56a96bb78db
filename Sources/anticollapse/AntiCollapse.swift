import ArgumentParser

@main
struct AntiCollapse: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "anticollapse",
        abstract: "Data-parallel self-supervised learning with exact global-batch statistics.",
        version: "0.1.0",
        subcommands: [Inspect.self, Dataset.self])
}
