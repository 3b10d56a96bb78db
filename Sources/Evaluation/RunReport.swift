import Communication
import Datasets
import Foundation
import Layers
import Tensor
import Engine
import JointEmbedding

// MARK: - Metrics history

/// The records of a run's `metrics.jsonl`, with the order of their keys.
public struct MetricsHistory: Sendable {
    /// Every record: key → value (a JSON null is NaN).
    public var records: [[String: Double]]
    /// The objective's terms: the keys after `loss` and before `lr`, in the file's order.
    public var termNames: [String]

    /// Reads `metrics.jsonl`.
    ///
    /// - Throws: ``EvaluationError`` naming the file and line when a line is not a JSON object.
    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw EvaluationError("\(path): cannot read the metrics file")
        }
        var records: [[String: Double]] = []
        var termNames: [String]?
        for (index, line) in text.split(whereSeparator: \.isNewline).enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
                throw EvaluationError("\(path): line \(index + 1) is not a JSON object")
            }
            var record: [String: Double] = [:]
            for (key, value) in object {
                if let number = value as? NSNumber { record[key] = number.doubleValue } else if value is NSNull { record[key] = .nan }
            }
            records.append(record)
            if termNames == nil { termNames = MetricsHistory.keysBetween("loss", "lr", in: String(line)) }
        }
        self.records = records
        self.termNames = termNames ?? []
    }

    /// The keys of a flat JSON object line strictly between `first` and `last`, in order.
    static func keysBetween(_ first: String, _ last: String, in line: String) -> [String]? {
        // Keys are the strings followed by a colon; metrics keys hold no quotes or colons.
        var keys: [String] = []
        var rest = Substring(line)
        while let open = rest.firstIndex(of: "\"") {
            let afterOpen = rest.index(after: open)
            guard let close = rest[afterOpen...].firstIndex(of: "\"") else { break }
            let name = String(rest[afterOpen..<close])
            rest = rest[rest.index(after: close)...]
            if rest.first == ":" { keys.append(name) }
        }
        guard let start = keys.firstIndex(of: first), let end = keys.firstIndex(of: last), start < end else { return nil }
        return Array(keys[(start + 1)..<end])
    }

    /// `(step, value)` of every record that has `key`.
    public func series(_ key: String) -> [(x: Double, y: Double)] {
        records.compactMap { record in
            guard let step = record["step"], let value = record[key] else { return nil }
            return (step, value)
        }
    }
}

// MARK: - Embedding statistics

/// The statistics of a checkpoint's embeddings (the projector's output) on rows of a dataset,
/// in evaluation mode.
public struct EmbeddingStatistics: Sendable {
    /// The matrix shown as a heatmap.
    public enum MatrixKind: String, Sendable {
        /// The covariance of the embeddings (VICReg, W-MSE, SIGReg, LeJEPA).
        case covariance
        /// The cross-correlation of the standardised embeddings of two augmented views (Barlow Twins).
        case crossCorrelation = "cross-correlation"
    }

    public var kind: MatrixKind
    /// The embedding width `D`.
    public var width: Int
    /// The rows the statistics describe.
    public var rows: Int
    /// The top-left block of the matrix, `blockSize × blockSize`, row-major.
    public var block: [Double]
    public var blockSize: Int
    /// The eigenvalues of the covariance, largest first.
    public var eigenvalues: [Double]
    /// A few random 1-D projections (unit directions) of the standardised embeddings.
    public var projections: [[Double]]
    /// Every row's coordinates on the covariance's two leading eigenvectors (PCA), and its label.
    public var principalComponents: [(x: Double, y: Double, group: Int)] = []

    /// Measures the embeddings of `rowLimit` rows of `dataset` (a seeded random subset when it
    /// has more).
    ///
    /// - Parameters:
    ///   - blockLimit: the largest heatmap side (default 128).
    ///   - projectionCount: random directions (default 4).
    public static func measure(_ trained: TrainedModel, dataset: ShardedDataset, rowLimit: Int = 2048, blockLimit: Int = 128,
                               projectionCount: Int = 4) throws -> EmbeddingStatistics {
        let configuration = trained.configuration
        let count = min(rowLimit, dataset.rowCount)
        guard count >= 2 else { throw EvaluationError("\(dataset.location): embedding statistics need at least 2 rows") }
        let sampler = try GlobalBatchSampler(rowCount: dataset.rowCount, globalBatchSize: count, seed: configuration.seed)
        let extractor = FeatureExtractor(model: trained.model, output: .embedding)
        let features = try extractor.extract(dataset, rows: Array(sampler.globalBatch(step: 0)))
        let embeddings = features.values.converted(to: Double.self)
        let d = embeddings.columnCount
        let centred = centredColumns(embeddings)
        let covariance = Tensor<Double>(zeros: [d, d])
        Tensor.syrk(centred.values, into: covariance, alpha: 1 / Double(count - 1))
        let eigenvalues = try covariance.symmetricEigenvalues().reversed().map { $0 }
        let side = min(d, blockLimit)

        var kind = MatrixKind.covariance, matrix = covariance
        if configuration.objective.name == .barlowTwins {
            // Two augmented views of the same rows, as in training, then C = z₁ᵀz₂ / N of the
            // columns standardised over the rows.
            kind = .crossCorrelation
            let plan = ViewPlan(globalCount: 2, globalAugmentation: configuration.data.augmentation)
            let loader = try BatchLoader(dataset: dataset, sampler: sampler, plan: plan, augmentationSeed: configuration.seed,
                                         prefetchDepth: 0)
            let views = try loader.batch(step: 0).views
            let context = LayerContext(training: false)
            var standardised: [Tensor<Double>] = []
            for (slot, view) in views.enumerated() {
                let z = try trained.model.forward(view, context: context.slot(slot)).embedding.converted(to: Double.self)
                standardised.append(centredColumns(z, scaled: true).values)
            }
            matrix = Tensor<Double>(zeros: [d, d])
            Tensor.gemm(standardised[0], transposeA: true, standardised[1], into: matrix, alpha: 1 / Double(count))
        }
        var block: [Double] = []
        for i in 0..<side { for j in 0..<side { block.append(matrix[i, j]) } }

        // Projections of the standardised embeddings on random unit directions.
        let standardised = centredColumns(embeddings, scaled: true).values
        var projections: [[Double]] = []
        let random = CounterRandom(seed: configuration.seed, streamName: "report.projections")
        for p in 0..<projectionCount {
            let direction = Tensor<Double>(zeros: [d, 1])
            random.substream(UInt64(p)).fillNormal(direction)
            direction.scale(by: 1 / max(direction.squaredNorm().squareRoot(), 1e-300))
            projections.append(Tensor.matmul(standardised, direction).scalars)
        }
        var statistics = EmbeddingStatistics(kind: kind, width: d, rows: count, block: block, blockSize: side,
                                             eigenvalues: eigenvalues, projections: projections)
        let components = leadingEigenvectors(of: covariance, count: min(2, d), random: random)
        if components.count == 2 {
            let x = Tensor.matmul(centred.values, Tensor(shape: [d, 1], scalars: components[0])).scalars
            let y = Tensor.matmul(centred.values, Tensor(shape: [d, 1], scalars: components[1])).scalars
            statistics.principalComponents = (0..<count).map { (x[$0], y[$0], Int(features.labels?[$0] ?? 0)) }
        }
        return statistics
    }

    /// The `count` leading eigenvectors of the symmetric matrix `matrix` (PCA's axes of a
    /// covariance) by power iteration with deflation, each started from `random`'s substream
    /// `1000 + i`.
    public static func leadingEigenvectors(of matrix: Tensor<Double>, count: Int, random: CounterRandom) -> [[Double]] {
        let d = matrix.rowCount
        var components: [[Double]] = []
        for c in 0..<count {
            let v = Tensor<Double>(zeros: [d, 1])
            random.substream(UInt64(1000 + c)).fillNormal(v)
            for _ in 0..<200 {
                let w = Tensor.matmul(matrix, v)
                for previous in components {
                    let dot = (0..<d).reduce(0) { $0 + previous[$1] * w[$1, 0] }
                    for i in 0..<d { w[i, 0] -= dot * previous[i] }
                }
                let norm = w.squaredNorm().squareRoot()
                guard norm > 0 else { break }
                w.scale(by: 1 / norm)
                v.copy(from: w)
            }
            components.append(v.scalars)
        }
        return components
    }

    /// The columns minus their means (and divided by their population standard deviations
    /// with `scaled`; a constant column stays 0).
    static func centredColumns(_ x: Tensor<Double>, scaled: Bool = false) -> (values: Tensor<Double>, mean: [Double]) {
        let n = x.rowCount, d = x.columnCount
        let result = x.copy()
        let mean = x.columnSums().map { $0 / Double(max(n, 1)) }
        result.withUnsafeMutableBufferPointer { p in
            for i in 0..<n { for j in 0..<d { p[i * d + j] -= mean[j] } }
            guard scaled else { return }
            var squares = [Double](repeating: 0, count: d)
            for i in 0..<n { for j in 0..<d { squares[j] += p[i * d + j] * p[i * d + j] } }
            let inverse = squares.map { s in s > 0 ? 1 / (s / Double(n)).squareRoot() : 0 }
            for i in 0..<n { for j in 0..<d { p[i * d + j] *= inverse[j] } }
        }
        return (result, mean)
    }
}

// MARK: - The report

/// A self-contained HTML report of a run directory: inline SVG figures, no scripts, no
/// network.
///
/// Figures: the loss and each of its terms, the learning rate, the throughput, the per-feature
/// standard deviation and the effective rank over steps (from `metrics.jsonl`); from the newest
/// checkpoint and the test (else training) dataset of its config, the embeddings' covariance
/// (Barlow Twins: the two views' cross-correlation) as a heatmap, the covariance's eigenvalue
/// spectrum and histograms of random 1-D projections against the standard normal; and the probe
/// accuracies of `eval.json` when present. A part whose input is missing is replaced by a note.
public struct RunReport {
    public let runDirectory: String
    /// Rows of the dataset used for the embedding figures (default 2048).
    public var embeddingRows = 2048

    public init(runDirectory: String) {
        self.runDirectory = runDirectory
    }

    /// The titles of the figures a report of a run with these inputs contains (for tests).
    public static func figureTitles(terms: [String], hasCheckpoint: Bool, barlowTwins: Bool = false,
                                    hasEvaluation: Bool, projections: Int = 4) -> [String] {
        var titles = ["Loss"] + terms.map { "Loss term: \($0)" } + ["Learning rate", "Throughput", "Per-feature standard deviation",
                                                                      "Effective rank"]
        if hasCheckpoint {
            titles += [barlowTwins ? "Cross-correlation of two views" : "Embedding covariance", "Covariance eigenvalue spectrum"]
            titles += (0..<projections).map { "Random projection \($0 + 1)" }
            titles += ["Embedding covariance at step 0", "Embedding covariance at the end", "PCA of the embeddings at step 0",
                       "PCA of the embeddings at the end"]
        }
        if hasEvaluation { titles.append("Probe accuracy") }
        return titles
    }

    /// Builds the report's HTML.
    ///
    /// - Parameter log: notes about skipped parts.
    public func html(log: (String) -> Void = { _ in }) throws -> String {
        let metricsPath = (runDirectory as NSString).appendingPathComponent("metrics.jsonl")
        guard FileManager.default.fileExists(atPath: metricsPath) else {
            throw EvaluationError("\(runDirectory): no metrics.jsonl; is this a run directory?")
        }
        let history = try MetricsHistory(contentsOf: metricsPath)
        var sections: [(String, [String])] = []
        var notes: [String] = []
        var verdictLine: String?

        // Training curves.
        var curves = [SVGPlot.lineChart(title: "Loss", series: [.init(name: "loss", points: history.series("loss"))],
                                        xLabel: "step", yLabel: "loss")]
        for term in history.termNames {
            curves.append(SVGPlot.lineChart(title: "Loss term: \(term)", series: [.init(name: term, points: history.series(term))],
                                            xLabel: "step", yLabel: term))
        }
        sections.append(("Objective", curves))
        sections.append(("Optimisation", [
            SVGPlot.lineChart(title: "Learning rate", series: [.init(name: "lr", points: history.series("lr"))],
                              xLabel: "step", yLabel: "learning rate"),
            SVGPlot.lineChart(title: "Throughput", series: [.init(name: "samples/s", points: history.series("samples_per_second"))],
                              xLabel: "step", yLabel: "samples / s"),
        ]))
        let stdSeries = history.series("std_mean")
        let reference = stdSeries.isEmpty ? [] : [(x: stdSeries.first!.x, y: 1.0), (x: stdSeries.last!.x, y: 1.0)]
        sections.append(("Collapse diagnostics (training batches)", [
            SVGPlot.lineChart(title: "Per-feature standard deviation",
                              series: [.init(name: "mean", points: stdSeries),
                                       .init(name: "minimum", points: history.series("std_min")),
                                       .init(name: "std = 1 (reference)", points: reference)],
                              xLabel: "step", yLabel: "std", markers: true),
            SVGPlot.lineChart(title: "Effective rank", series: [.init(name: "effective rank", points: history.series("effective_rank"))],
                              xLabel: "step", yLabel: "effective rank", markers: true),
        ]))

        // Embeddings of the newest checkpoint.
        var checkpointLine = "no checkpoint in \(runDirectory)/checkpoints"
        if let path = try TrainedModel.newestCheckpoint(inRun: runDirectory) {
            let trained = try TrainedModel(checkpoint: path)
            let data = trained.configuration.data
            let candidates = [data.test, data.train].filter { !$0.isEmpty }
            if let location = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) {
                let dataset = try ShardedDataset(location)
                let statistics = try EmbeddingStatistics.measure(trained, dataset: dataset, rowLimit: embeddingRows)
                checkpointLine = "checkpoint \(path) (step \(trained.step)); embeddings of \(statistics.rows) rows of \(location)"
                sections.append(("Embeddings (\(statistics.width) dimensions, \(statistics.rows) rows, evaluation mode)",
                                 embeddingFigures(statistics)))
                // The same rows through the model as it started (its weights are a function of the seed).
                let start = try EmbeddingStatistics.measure(try TrainedModel(initialOf: trained.configuration), dataset: dataset,
                                                            rowLimit: embeddingRows)
                sections.append(("Start and end: the model at step 0 and at step \(trained.step)", [
                    SVGPlot.heatmap(title: "Embedding covariance at step 0", values: start.block, rows: start.blockSize,
                                    columns: start.blockSize, caption: "the same block as at the end"),
                    SVGPlot.heatmap(title: "Embedding covariance at the end", values: statistics.block, rows: statistics.blockSize,
                                    columns: statistics.blockSize, caption: "step \(trained.step)"),
                    SVGPlot.scatter(title: "PCA of the embeddings at step 0", points: start.principalComponents,
                                    xLabel: "first principal component", yLabel: "second principal component"),
                    SVGPlot.scatter(title: "PCA of the embeddings at the end", points: statistics.principalComponents,
                                    xLabel: "first principal component", yLabel: "second principal component"),
                ]))
            } else {
                let note = "the embedding figures are missing: none of the config's datasets (\(candidates.joined(separator: ", "))) exists from \(FileManager.default.currentDirectoryPath)"
                notes.append(note)
                log("note: \(note)")
            }
        } else {
            notes.append("no checkpoint: the embedding figures are missing")
            log("note: no checkpoint in \(runDirectory)/checkpoints: the embedding figures are missing")
        }

        // The verdict, from the last diagnostics of the training batches.
        if let std = stdSeries.last?.y, let rank = history.series("effective_rank").last?.y,
           let path = try TrainedModel.newestCheckpoint(inRun: runDirectory), let trained = try? TrainedModel(checkpoint: path) {
            let width = (trained.configuration.model.projector ?? trained.configuration.model.encoder).outputFeatures
            let verdict = Self.verdict(meanStandardDeviation: std, effectiveRank: rank, width: width,
                                       rows: trained.configuration.schedule.globalBatchSize)
            verdictLine = verdict.text
            notes += verdict.notes
        }

        // Probe accuracies.
        let evalPath = (runDirectory as NSString).appendingPathComponent("eval.json")
        if FileManager.default.fileExists(atPath: evalPath) {
            let result = try EvaluationResult.load(evalPath)
            sections.append(("Evaluation (\(evalPath))", [
                SVGPlot.barChart(title: "Probe accuracy",
                                 bars: [("linear probe", 100 * result.linearProbeTop1), ("k-NN (k \(result.knnK))", 100 * result.knnTop1)],
                                 yLabel: "top-1 accuracy (%)", format: "%.2f %%", yMaximum: 100),
            ]))
        }
        return document(sections: sections, notes: notes, subtitle: checkpointLine, records: history.records.count,
                        verdict: verdictLine)
    }

    /// Whether the embeddings collapsed, in one line, from the last collapse diagnostics of the
    /// training batches: **collapsed** when the features' standard deviation has gone to 0 or
    /// the effective rank to about 1 (every row on one point or line); **dimensional collapse**
    /// when the effective rank is below a tenth of what the batch allows (min(D, N − 1));
    /// otherwise not collapsed. The notes say when the rows, not the model, bound the rank.
    public static func verdict(meanStandardDeviation std: Double, effectiveRank rank: Double, width: Int,
                               rows: Int) -> (collapsed: Bool, text: String, notes: [String]) {
        let bound = min(width, max(rows - 1, 1))
        var notes: [String] = []
        if rows - 1 < width {
            notes.append("The training batch has \(rows) rows: the covariance of \(width) features has at most \(rows - 1) non-zero "
                         + "eigenvalues, so the effective rank is bounded by \(rows - 1), not \(width) (rank-limited by the rows).")
        }
        let figures = String(format: "mean std %.4g, effective rank %.1f of at most %d", std, rank, bound)
        if std < 1e-3 || rank < 1.5 {
            return (true, "COLLAPSED: \(figures) — every input maps to (nearly) one point or line.", notes)
        }
        if rank < 0.1 * Double(bound) {
            return (true, "DIMENSIONAL COLLAPSE: \(figures) — the embeddings fill a small subspace.", notes)
        }
        return (false, "Not collapsed: \(figures).", notes)
    }

    /// Writes `RUN_DIR/report.html` and returns its path.
    @discardableResult
    public func write(log: (String) -> Void = { _ in }) throws -> String {
        let path = (runDirectory as NSString).appendingPathComponent("report.html")
        try html(log: log).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func embeddingFigures(_ statistics: EmbeddingStatistics) -> [String] {
        let side = statistics.blockSize
        let shown = side < statistics.width ? "top-left \(side) × \(side) block of \(statistics.width) × \(statistics.width)"
                                            : "\(side) × \(side)"
        let title = statistics.kind == .crossCorrelation ? "Cross-correlation of two views" : "Embedding covariance"
        var figures = [SVGPlot.heatmap(title: title, values: statistics.block, rows: side, columns: side, caption: shown)]
        // Eigenvalues below 1e-10 of the largest are rounding noise (with N rows at most N − 1
        // are non-zero): they are left out and counted in the axis label.
        let floor = (statistics.eigenvalues.first ?? 0) * 1e-10
        let kept = statistics.eigenvalues.prefix { $0 > floor }
        let spectrum = kept.enumerated().map { (x: Double($0.offset + 1), y: $0.element) }
        let omitted = statistics.eigenvalues.count - kept.count
        figures.append(SVGPlot.lineChart(title: "Covariance eigenvalue spectrum", series: [.init(name: "eigenvalue", points: spectrum)],
                                         xLabel: "index, largest first" + (omitted > 0 ? " (\(omitted) below 1e-10 × largest omitted)" : ""),
                                         yLabel: "eigenvalue (log scale)", logY: true, markers: spectrum.count <= 256))
        let normal = { (x: Double) in Double.exp(-x * x / 2) / (2 * Double.pi).squareRoot() }
        for (i, values) in statistics.projections.enumerated() {
            figures.append(SVGPlot.histogram(title: "Random projection \(i + 1)", values: values, bins: 40, range: -4...4,
                                             density: normal, xLabel: "projection of the standardised embedding"))
        }
        return figures
    }

    private func document(sections: [(String, [String])], notes: [String], subtitle: String, records: Int,
                          verdict: String?) -> String {
        let name = (runDirectory as NSString).lastPathComponent
        var html = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>AntiCollapse report: \(SVGPlot.escape(name))</title>
            <style>
            body { font-family: sans-serif; margin: 24px; color: #222; }
            h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; }
            .figures { display: flex; flex-wrap: wrap; gap: 12px; }
            .note { color: #a33; } .meta { color: #555; font-size: 13px; }
            </style></head><body>
            <h1>AntiCollapse report: \(SVGPlot.escape(name))</h1>
            <p class="meta">\(SVGPlot.escape(runDirectory)) · \(records) metric records · \(SVGPlot.escape(subtitle)) · generated \(ISO8601DateFormatter().string(from: Date()))</p>

            """
        if let verdict {
            let collapsed = verdict.hasPrefix("COLLAPSED") || verdict.hasPrefix("DIMENSIONAL")
            html += "<p class=\"verdict\" style=\"font-size: 18px; font-weight: bold; padding: 8px; "
                + "background: \(collapsed ? "#fdd" : "#dfd")\">\(SVGPlot.escape(verdict))</p>\n"
        }
        for note in notes { html += "<p class=\"note\">\(SVGPlot.escape(note))</p>\n" }
        for (title, figures) in sections {
            html += "<h2>\(SVGPlot.escape(title))</h2>\n<div class=\"figures\">\n"
            for figure in figures { html += figure + "\n" }
            html += "</div>\n"
        }
        return html + "</body></html>\n"
    }
}
