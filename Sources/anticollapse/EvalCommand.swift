// `anticollapse eval`: k-NN and linear-probe accuracy of a checkpoint's frozen encoder, under
// mpirun or as one process.
import ArgumentParser
import Communication
import Evaluation
import Foundation
import Layers
import Tensor
import Engine
import JointEmbedding

/// Evaluates the representations of a checkpoint on a labelled dataset.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "k-NN and linear-probe top-1 accuracy of a checkpoint's frozen encoder.",
        discussion: """
            Runs the encoder in evaluation mode (batch norm with its running statistics) over every             row of the training and test datasets (split across ranks under mpirun), then k-NN             (cosine similarity; the k nearest training rows vote with weight exp(sim / T)) and a             linear probe (logistic regression on standardised features, AdamW, fixed epochs).

            Rank 0 prints a table and writes --json. The datasets default to the checkpoint             config's data.train and data.test.
            """)

    @Option(help: "The checkpoint file (ckpt-<step>.h5).") var checkpoint: String
    @Option(help: "The labelled training dataset (k-NN bank, probe training rows).") var train: String?
    @Option(help: "The labelled test dataset.") var test: String?
    @Option(help: "Neighbours that vote.") var k: Int = 20
    @Option(help: "Temperature of the neighbours' weights exp(sim / T).") var temperature: Double = 0.07
    @Option(name: .customLong("probe-epochs"), help: "Epochs of the linear probe.") var probeEpochs: Int = 100
    @Option(name: .customLong("probe-lr"), help: "Base learning rate of the probe's AdamW (cosine to 0).") var probeLearningRate: Double = 1e-3
    @Option(name: .customLong("probe-weight-decay"), help: "Decoupled weight decay of the probe.") var probeWeightDecay: Double = 1e-4
    @Option(name: .customLong("probe-batch"), help: "Rows a probe step.") var probeBatch: Int = 256
    @Option(help: "Where to write the results as JSON (rank 0).") var json: String?
    @Flag(help: "Do not add the accuracies to the run's TensorBoard (written by default when the checkpoint is in RUN_DIR/checkpoints).")
    var noTensorboard = false
    @Option(name: .customLong("blas-threads"), help: "OpenBLAS threads per rank (default: cores ÷ ranks on the node).")
    var blasThreads: Int?

    func validate() throws {
        if k < 1 { throw ValidationError("--k must be at least 1") }
        if !(temperature > 0) { throw ValidationError("--temperature must be positive") }
        if probeEpochs < 1 { throw ValidationError("--probe-epochs must be at least 1") }
        if !(probeLearningRate > 0) { throw ValidationError("--probe-lr must be positive") }
        if !(probeWeightDecay >= 0) { throw ValidationError("--probe-weight-decay must not be negative") }
        if probeBatch < 1 { throw ValidationError("--probe-batch must be at least 1") }
        if let blasThreads, blasThreads < 1 { throw ValidationError("--blas-threads must be at least 1") }
    }

    func run() throws {
        try runJob { communicator in
            BLASThreads.configure(override: blasThreads, communicator: communicator)
            // The datasets default to those of the config that trained the checkpoint.
            var trainPath = train, testPath = test
            if trainPath == nil || testPath == nil {
                let configuration = try TrainedModel(checkpoint: checkpoint).configuration
                trainPath = trainPath ?? configuration.data.train
                testPath = testPath ?? configuration.data.test
            }
            guard let trainPath, let testPath, !testPath.isEmpty else {
                throw EvaluationError("no test dataset: pass --test (the checkpoint's config has data.test \"\")")
            }
            for (path, option, given) in [(trainPath, "--train", train), (testPath, "--test", test)]
            where given == nil && !FileManager.default.fileExists(atPath: path) {
                throw EvaluationError("the checkpoint's dataset \(path) is not here (relative to \(FileManager.default.currentDirectoryPath)); "
                                      + "pass \(option) PATH to evaluate on it from another place")
            }
            let evaluation = CheckpointEvaluation(
                checkpoint: checkpoint, trainDataset: trainPath, testDataset: testPath,
                knn: try NearestNeighborClassifier(k: k, temperature: temperature),
                probe: LinearProbe.Settings(epochs: probeEpochs, learningRate: probeLearningRate,
                                            weightDecay: probeWeightDecay, batchSize: probeBatch))
            let log: (String) -> Void = communicator.isRoot ? { print($0) } : { _ in }
            let result = try evaluation.run(communicator: communicator, log: log)
            if communicator.isRoot {
                print(result.table)
                if let json {
                    try result.json().write(to: URL(fileURLWithPath: json), options: .atomic)
                    print("wrote \(json)")
                }
                if !noTensorboard, let run = result.runDirectory {
                    print("wrote \(try result.writeTensorBoard(to: run)) (eval/linear_probe_top1, eval/knn_top1 at step \(result.step))")
                }
            }
        }
    }
}
