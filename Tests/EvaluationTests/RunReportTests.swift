import Datasets
import Evaluation
import Foundation
import Engine
import JointEmbedding
import XCTest
import _TestSupport

/// A short synthetic training run, evaluated and reported: every figure is in the HTML, the
/// evaluation over ranks equals one process, and the trainer wrote TensorBoard events.
final class RunReportTests: XCTestCase {
    /// Trains `steps` steps of `objective` on a synthetic vector dataset; returns the run directory.
    private func shortRun(objective: String, steps: Int = 8) throws -> (run: String, data: String) {
        let root = try temporaryDirectory(for: self, prefix: "eval-run").path
        let data = (root as NSString).appendingPathComponent("data")
        try SyntheticData(kind: .vectors, rows: 160, testRows: 64, classes: 4, features: 16, seed: 2).write(to: data, trainShards: 2)
        let yaml = """
            seed: 5
            data: {train: "\(data)/train", test: "\(data)/test", prefetch: 0}
            model:
              encoder: {type: mlp, widths: [16, 32, 32]}
              projector: {type: mlp, widths: [32, 48, 40], last_bias: false}
            objective: {name: \(objective)}
            schedule: {global_batch_size: 32, steps: \(steps), warmup_epochs: 0}
            checkpoint: {every_steps: 4}
            logging: {every_steps: 1, diagnostics_every: 2}
            """
        let configuration = try TrainingConfiguration.load(yaml: yaml, source: "test")
        let run = (root as NSString).appendingPathComponent("run")
        let trainer = try Trainer(configuration: configuration, communicator: SingleProcessCommunicator(), runDirectory: run,
                                  log: { _ in })
        _ = try trainer.train()
        return (run, data)
    }

    private func svgTitles(_ html: String) -> [String] {
        html.components(separatedBy: "<svg").dropFirst().compactMap { part in
            guard let start = part.range(of: "<title>"), let end = part.range(of: "</title>") else { return nil }
            return String(part[start.upperBound..<end.lowerBound])
        }
    }

    func testReportOfAShortRunContainsEveryFigure() throws {
        let (run, data) = try shortRun(objective: "vicreg")
        // TensorBoard: one event file with the file version, the config as text, the hyper-parameters (an
        // experiment and a session start) and one event a metrics record.
        let names = try FileManager.default.contentsOfDirectory(atPath: run)
        let eventFiles = names.filter { $0.hasPrefix("events.out.tfevents.") }
        XCTAssertEqual(eventFiles.count, 1)
        let events = try TensorBoardTests.events((run as NSString).appendingPathComponent(eventFiles[0]))
        let history = try MetricsHistory(contentsOf: (run as NSString).appendingPathComponent("metrics.jsonl"))
        XCTAssertEqual(events.count, 4 + history.records.count)
        XCTAssertEqual(events[1].texts.first?.tag, "config")
        XCTAssertEqual(try TensorBoardTests.pluginSummaries((run as NSString).appendingPathComponent(eventFiles[0])).map(\.plugin),
                       ["text", "hparams", "hparams"])
        XCTAssertEqual(events.last?.step, 8)
        XCTAssertEqual(history.termNames, ["invariance", "variance", "covariance"])

        // eval.json from the newest checkpoint, then the report.
        let checkpoint = try XCTUnwrap(try TrainedModel.newestCheckpoint(inRun: run))
        let evaluation = CheckpointEvaluation(checkpoint: checkpoint, trainDataset: "\(data)/train", testDataset: "\(data)/test",
                                              knn: try NearestNeighborClassifier(k: 5),
                                              probe: LinearProbe.Settings(epochs: 30, learningRate: 1e-2, batchSize: 32))
        let result = try evaluation.run()
        XCTAssertEqual(result.step, 8)
        XCTAssertEqual(result.featureDimension, 32)
        XCTAssertEqual([result.trainRows, result.testRows, result.classCount], [160, 64, 4])
        // Gaussian blobs 2σ apart in 16 dimensions: both classifiers do far better than chance.
        XCTAssertGreaterThan(result.knnTop1, 0.6)
        XCTAssertGreaterThan(result.linearProbeTop1, 0.6)
        // The accuracies as TensorBoard scalars at the checkpoint's step, in the run.
        XCTAssertEqual(result.runDirectory.map { URL(fileURLWithPath: $0).standardizedFileURL.path },
                       URL(fileURLWithPath: run).standardizedFileURL.path)
        let evalEvents = try TensorBoardTests.events(try result.writeTensorBoard(to: run))
        let scalars = try XCTUnwrap(evalEvents.last { !$0.scalars.isEmpty })
        XCTAssertEqual(scalars.step, 8)
        XCTAssertEqual(scalars.scalars.map(\.tag), ["eval/linear_probe_top1", "eval/linear_probe_train_top1", "eval/knn_top1"])
        XCTAssertEqual(scalars.scalars.map(\.value), [Float(result.linearProbeTop1), Float(result.linearProbeTrainTop1),
                                                       Float(result.knnTop1)])
        try result.json().write(to: URL(fileURLWithPath: (run as NSString).appendingPathComponent("eval.json")))
        XCTAssertEqual(try EvaluationResult.load((run as NSString).appendingPathComponent("eval.json")), result)

        // Over 2 in-process ranks: the same numbers.
        let ranks = try runRanks(2) { communicator in try evaluation.run(communicator: communicator) }
        for other in ranks {
            XCTAssertEqual(other.knnTop1, result.knnTop1)
            XCTAssertEqual(other.linearProbeTop1, result.linearProbeTop1)
            XCTAssertEqual(other.probeFinalLoss, result.probeFinalLoss)
        }

        let path = try RunReport(runDirectory: run).write()
        let html = try String(contentsOfFile: path, encoding: .utf8)
        let expected = RunReport.figureTitles(terms: history.termNames, hasCheckpoint: true, hasEvaluation: true)
        XCTAssertEqual(html.components(separatedBy: "<svg").count - 1, expected.count)
        XCTAssertEqual(svgTitles(html), expected)
        XCTAssertTrue(html.contains("40 × 40"), "the heatmap of a 40-wide embedding covariance is the whole matrix")
        XCTAssertTrue(html.contains("class=\"verdict\""), "the report gives a verdict")
        XCTAssertTrue(html.contains("std = 1 (reference)"))
        // Self-contained: no scripts, no external resources.
        XCTAssertFalse(html.contains("<script"))
        XCTAssertFalse(html.contains("src="))
        XCTAssertFalse(html.contains("href="))
    }

    func testBarlowTwinsReportShowsTheCrossCorrelation() throws {
        let (run, _) = try shortRun(objective: "barlow_twins", steps: 4)
        var report = RunReport(runDirectory: run)
        report.embeddingRows = 64
        let html = try report.html()
        let history = try MetricsHistory(contentsOf: (run as NSString).appendingPathComponent("metrics.jsonl"))
        XCTAssertEqual(svgTitles(html), RunReport.figureTitles(terms: history.termNames, hasCheckpoint: true, barlowTwins: true,
                                                               hasEvaluation: false))
    }

    func testReportOfAMissingRunNamesTheDirectory() {
        assertThrowsError(try RunReport(runDirectory: "/nonexistent/run").html(), containing: "/nonexistent/run", "metrics.jsonl")
    }

    /// The verdict says collapsed when it is, and when the rows bound the rank.
    func testTheVerdictNamesCollapse() {
        XCTAssertTrue(RunReport.verdict(meanStandardDeviation: 1e-6, effectiveRank: 3, width: 64, rows: 256).text.hasPrefix("COLLAPSED"))
        XCTAssertTrue(RunReport.verdict(meanStandardDeviation: 0.5, effectiveRank: 1.1, width: 64, rows: 256).collapsed)
        let dimensional = RunReport.verdict(meanStandardDeviation: 0.5, effectiveRank: 4, width: 2048, rows: 256)
        XCTAssertTrue(dimensional.text.hasPrefix("DIMENSIONAL COLLAPSE"), dimensional.text)
        XCTAssertTrue(dimensional.notes.first?.contains("bounded by 255") ?? false, "\(dimensional.notes)")
        let healthy = RunReport.verdict(meanStandardDeviation: 0.9, effectiveRank: 200, width: 2048, rows: 256)
        XCTAssertFalse(healthy.collapsed)
        XCTAssertTrue(healthy.text.hasPrefix("Not collapsed"), healthy.text)
        XCTAssertTrue(RunReport.verdict(meanStandardDeviation: 0.9, effectiveRank: 50, width: 64, rows: 256).notes.isEmpty)
    }
}
