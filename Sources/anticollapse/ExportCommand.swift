// `anticollapse export`, `anticollapse embed` and `anticollapse config show`: models and
// representations out, and the resolved config.
import ArgumentParser
import Communication
import Datasets
import Engine
import Evaluation
import Foundation
import HDF5
import JointEmbedding
import WorldModel

/// Writes a checkpoint's model as safetensors or `.npz` under PyTorch state-dict names, with a
/// JSON sidecar (architecture, input normalisation).
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a checkpoint's model for PyTorch: safetensors or .npz, and a JSON sidecar.",
        discussion: """
            The tensors keep the checkpoint's names (encoder.0.weight, encoder.1.running_mean, …), \
            which are PyTorch's for an nn.Sequential of the same layers; every batch norm gains \
            num_batches_tracked, so load_state_dict(strict=True) accepts the file. The sidecar \
            (OUT with .json) lists each part's modules and the input normalisation; the README \
            shows the 15 lines of PyTorch that rebuild the model from it.
            """)

    @Argument(help: "The checkpoint (ckpt-<step>.h5).") var checkpoint: String
    @Option(help: "safetensors or npz.") var format = "safetensors"
    @Option(help: "The output file (default: the checkpoint's name with .safetensors or .npz).") var out: String?

    func validate() throws {
        guard ModelExport.Format(rawValue: format) != nil else {
            throw ValidationError("--format \(format): expected \(ModelExport.Format.allCases.map(\.rawValue).joined(separator: " or "))")
        }
    }

    func run() throws {
        try reportingErrors {
            let format = ModelExport.Format(rawValue: format)!
            let trained = try TrainedModel(checkpoint: checkpoint)
            // The input normalisation of the data it trained on, when that dataset is at hand.
            let normalization = try? ShardedDataset(trained.configuration.data.train).normalization
            let output = out ?? (checkpoint as NSString).deletingPathExtension + "." + format.rawValue
            let export = ModelExport(trained, normalization: normalization)
            let sidecar = try export.write(to: output, format: format)
            print("wrote \(output) (\(export.tensors.count) tensors) and \(sidecar)")
            if normalization == nil {
                print("note: \(trained.configuration.data.train) is not readable here; the sidecar has no input_normalization")
            }
        }
    }
}

/// Writes the representations (and embeddings) of every row of a dataset, with its labels.
struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the representations and embeddings of a dataset's rows to HDF5.",
        discussion: """
            OUT holds /representation (rows × encoder width), /embedding (rows × projector width) \
            and /y (labels, when the dataset has them), row i for row i of the dataset, with the \
            attributes checkpoint and step. Under mpirun the rows are split across ranks; the \
            result is that of one process.
            """)

    @Argument(help: "The checkpoint (ckpt-<step>.h5).") var checkpoint: String
    @Option(help: "The dataset (default: the checkpoint config's data.test, else data.train).") var data: String?
    @Option(help: "The output HDF5 file.") var out: String

    func run() throws {
        try runJob { communicator in
            let trained = try TrainedModel(checkpoint: checkpoint)
            let configuration = trained.configuration
            let path = data ?? (configuration.data.test.isEmpty ? configuration.data.train : configuration.data.test)
            let dataset = try ShardedDataset(path)
            let representation = try FeatureExtractor(model: trained.model, output: .representation)
                .extract(dataset, communicator: communicator)
            let embedding = try FeatureExtractor(model: trained.model, output: .embedding).extract(dataset, communicator: communicator)
            guard communicator.isRoot else { return }
            try HDF5File.withNewFile(out, overwrite: true) { file in
                try file.createDataset("representation", shape: representation.values.shape, values: representation.values.scalars)
                try file.createDataset("embedding", shape: embedding.values.shape, values: embedding.values.scalars)
                if let labels = representation.labels { try file.createDataset("y", shape: [labels.count], values: labels) }
                try file.setAttribute("checkpoint", to: .string(checkpoint))
                try file.setAttribute("step", to: .int64(Int64(trained.step)))
                try file.setAttribute("dataset", to: .string(path))
            }
            print("wrote \(out): \(representation.rowCount) rows of \(path); representation \(representation.width), embedding \(embedding.width)")
        }
    }
}

/// `anticollapse config show`: the resolved config, every default included.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Show the resolved config.", subcommands: [Show.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the config a run would use: the file and --set overrides over every default, as YAML.")

        @Option(help: "The YAML config file (default: the built-in defaults).") var config: String?
        @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, as for train.", valueName: "key=value"))
        var overrides: [String] = []

        func run() throws {
            try reportingErrors {
                let text = config.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
                switch recipeName(ofConfig: text) {
                case WorldModelSettings.recipeName:
                    print(try WorldModelConfiguration.load(file: config, overrides: overrides).yaml(), terminator: "")
                default:
                    print(try TrainingConfiguration.load(file: config, overrides: overrides).yaml(), terminator: "")
                }
            }
        }
    }
}
