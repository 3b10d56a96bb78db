// `anticollapse inspect FILE.h5`: print the groups, datasets and attributes of an HDF5 file.
import ArgumentParser
import Foundation
import Datasets
import HDF5

/// Prints a readable tree of an HDF5 file: groups, datasets with their shape, element type,
/// chunking and compression, and attributes.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the groups, datasets and attributes of an HDF5 file.",
        discussion: "Like `h5ls -r -v`, but one readable line per object and attribute.")

    @Argument(help: "The HDF5 file to describe.")
    var file: String

    func run() throws {
        do {
            let tree = try HDF5File.withFile(file) { try $0.describeTree() }
            print(tree, terminator: "")
            if TrajectoryDataset.isTrajectoryShard(file) {
                let dataset = try TrajectoryDataset(file)
                print("trajectory shard: \(dataset.episodes.count) episodes, \(dataset.shardRows.reduce(0, +)) steps, environment \(dataset.environment)")
            }
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}
