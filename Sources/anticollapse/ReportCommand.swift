// `anticollapse report RUN_DIR`: one self-contained HTML page of a run's curves and embeddings.
import ArgumentParser
import Evaluation
import Foundation
import Layers

/// Writes `RUN_DIR/report.html`.
struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write RUN_DIR/report.html: training curves, collapse diagnostics and embedding figures.",
        discussion: """
            One HTML file with inline SVG (no scripts, no network): loss and its terms, learning rate,
            throughput, per-feature std and effective rank over steps (metrics.jsonl); from the newest
            checkpoint and the config's test (else train) dataset, the embedding covariance (Barlow Twins:
            the cross-correlation of two views) as a heatmap, its eigenvalue spectrum and histograms of
            random projections against N(0, 1); the probe accuracies of RUN_DIR/eval.json if present.
            Dataset paths in the config are resolved from the current directory.
            """)

    @Argument(help: "The run directory.") var runDirectory: String
    @Option(name: .customLong("rows"), help: "Dataset rows for the embedding figures.") var rows: Int = 2048

    func validate() throws {
        if rows < 2 { throw ValidationError("--rows must be at least 2") }
    }

    func run() throws {
        do {
            var report = RunReport(runDirectory: runDirectory)
            report.embeddingRows = rows
            let path = try report.write { print($0) }
            print("wrote \(path)")
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}
