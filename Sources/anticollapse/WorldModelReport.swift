// `anticollapse worldmodel report RUN_DIR`: one self-contained HTML page of a world-model run.
import ArgumentParser
import Evaluation
import Foundation
import Tensor

struct WorldModelReport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "RUN_DIR/report.html: loss terms, collapse diagnostics, closed-loop success (eval.json) and executed paths.")
    @Argument(help: "The run directory (metrics.jsonl; eval.json from `worldmodel eval --json`).") var runDirectory: String

    func run() throws {
        let metricsPath = (runDirectory as NSString).appendingPathComponent("metrics.jsonl")
        guard let text = try? String(contentsOfFile: metricsPath, encoding: .utf8) else {
            throw ValidationError("\(metricsPath): cannot read the run's metrics")
        }
        let records = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        func series(_ key: String) -> SVGPlot.Series {
            SVGPlot.Series(name: key, points: records.compactMap { r in
                guard let step = r["step"] as? Double ?? (r["step"] as? Int).map(Double.init), let v = r[key] as? Double else { return nil }
                return (step, v)
            })
        }
        var figures = [
            SVGPlot.lineChart(title: "Loss and its terms (loss = prediction + λ·sigreg)", series: ["loss", "prediction", "sigreg"].map(series),
                              xLabel: "step", yLabel: "value", logY: true),
            SVGPlot.lineChart(title: "Collapse diagnostics of the embeddings", series: ["effective_rank", "std_mean", "std_min"].map(series),
                              xLabel: "step", yLabel: "value", markers: true),
        ]
        var notes: [String] = []
        let evalPath = (runDirectory as NSString).appendingPathComponent("eval.json")
        if let data = FileManager.default.contents(atPath: evalPath),
           let report = try JSONSerialization.jsonObject(with: data) as? [String: Any] {
            for name in ["held_out", "cross_room"] {
                guard let section = report[name] as? [String: Any] else { continue }
                let bars = ["planner", "random", "expert"].compactMap { policy -> (String, Double)? in
                    guard let s = section[policy] as? [String: Any], let p = s["success"] as? Double else { return nil }
                    return (policy, 100 * p)
                }
                figures.append(SVGPlot.barChart(title: "\(name): success over \(section["tasks"] ?? 0) tasks (budget \(section["budget"] ?? 0) steps)",
                                                bars: bars, yLabel: "success %", format: "%.1f %%", yMaximum: 105))
                if let records = section["records"] as? [[String: Any]] {
                    figures.append(successByDistance(records, title: "\(name): success against start–goal distance"))
                }
                if let paths = section["paths"] as? [[String: Any]] {
                    figures.append(roomPaths(paths, title: "\(name): executed paths (planner solid, expert dashed; ○ start, ✕ goal)",
                                             solid: "planner", dashed: "expert"))
                }
                if let planned = section["planned_paths"] as? [[String: Any]] {
                    figures.append(roomPaths(planned, title: "\(name): planned (dashed, each plan's whole horizon) vs executed (solid)",
                                             solid: "executed", dashed: "plans"))
                }
                if let rollouts = section["rollouts"] as? [[String: Any]] {
                    let (figure, note) = embeddingRollouts(rollouts, title: "\(name): predicted (dashed) vs actual (solid) embeddings, PCA")
                    figures.append(figure)
                    notes.append(note)
                }
                if let planner = section["planner"] as? [String: Any], let median = planner["ms_per_plan_median"] as? Double {
                    notes.append(String(format: "%@: %.0f ms per plan (median)", name, median))
                }
            }
        } else {
            notes.append("no eval.json: run `anticollapse worldmodel eval --checkpoint … --json \(evalPath)`")
        }
        let html = """
            <!doctype html><html><head><meta charset="utf-8"><title>world model — \(SVGPlot.escape(runDirectory))</title>
            <style>body{font-family:sans-serif;max-width:980px;margin:auto}svg{margin:8px 0}</style></head><body>
            <h1>World model: \(SVGPlot.escape(runDirectory))</h1><p>\(notes.map(SVGPlot.escape).joined(separator: "<br>"))</p>
            \(figures.joined(separator: "\n"))
            </body></html>
            """
        let out = (runDirectory as NSString).appendingPathComponent("report.html")
        try html.write(toFile: out, atomically: true, encoding: .utf8)
        print("wrote \(out)")
    }

    /// Success rate of each policy in bins of start–goal distance.
    private func successByDistance(_ records: [[String: Any]], title: String) -> String {
        let edges: [Double] = [0, 20, 40, 60, 80, 100, 150, 400]
        var series: [SVGPlot.Series] = []
        for policy in ["planner", "random", "expert"] {
            var points: [(x: Double, y: Double)] = []
            for b in 0..<(edges.count - 1) {
                let inBin = records.filter { r in
                    let d = r["distance"] as? Double ?? 0
                    return d >= edges[b] && d < edges[b + 1]
                }
                guard !inBin.isEmpty else { continue }
                let successes = inBin.filter { $0[policy] as? Bool == true }.count
                points.append(((edges[b] + edges[b + 1]) / 2, 100 * Double(successes) / Double(inBin.count)))
            }
            series.append(SVGPlot.Series(name: policy, points: points))
        }
        return SVGPlot.lineChart(title: title, series: series, xLabel: "start–goal distance (pixels of 224)", yLabel: "success %",
                                 markers: true)
    }

    /// TwoRoom's walls and door with paths over them, 224 pixels drawn at 2×: per task (one
    /// colour) the value of `solid` and of `dashed` (a path `[[x, y]]` or a list of paths).
    private func roomPaths(_ paths: [[String: Any]], title: String, solid: String, dashed: String) -> String {
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
        var svg = #"<svg xmlns="http://www.w3.org/2000/svg" width="460" height="490" viewBox="0 -20 448 468">"#
        svg += "<text x=\"0\" y=\"-6\" font-size=\"12\">\(SVGPlot.escape(title))</text>"
        svg += #"<rect x="20" y="20" width="408" height="408" fill="white" stroke="black" stroke-width="8"/>"#
        // The wall at x = 107–117 with the door at y = 35–63.
        svg += #"<rect x="214" y="24" width="22" height="46" fill="black"/><rect x="214" y="126" width="22" height="298" fill="black"/>"#
        for (i, path) in paths.enumerated() {
            let colour = colours[i % colours.count]
            func polyline(_ key: String, dashed: Bool) -> String {
                let lines = path[key] as? [[[Double]]] ?? (path[key] as? [[Double]]).map { [$0] } ?? []
                return lines.filter { !$0.isEmpty }.map { points in
                    let list = points.map { String(format: "%.1f,%.1f", 2 * $0[0], 2 * $0[1]) }.joined(separator: " ")
                    return "<polyline points=\"\(list)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"\(dashed ? 1 : 2)\"\(dashed ? " stroke-dasharray=\"4 3\"" : "")/>"
                }.joined()
            }
            svg += polyline(dashed, dashed: true) + polyline(solid, dashed: false)
            if let s = path["start"] as? [Double], let g = path["goal"] as? [Double] {
                svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"none\" stroke=\"%@\" stroke-width=\"2\"/>", 2 * s[0], 2 * s[1], colour)
                svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" fill=\"%@\" text-anchor=\"middle\">✕</text>", 2 * g[0], 2 * g[1] + 5, colour)
            }
        }
        return svg + "</svg>"
    }

    /// The predicted and the actual embeddings of each rollout (`predicted`, `actual`: one per
    /// action block, the start first) on the two leading principal axes of the actual ones; and
    /// a note with the prediction error at the last block.
    private func embeddingRollouts(_ rollouts: [[String: Any]], title: String) -> (figure: String, note: String) {
        let pairs = rollouts.compactMap { r -> (predicted: [[Double]], actual: [[Double]])? in
            guard let p = r["predicted"] as? [[Double]], let a = r["actual"] as? [[Double]], p.count == a.count, !a.isEmpty else { return nil }
            return (p, a)
        }
        let actual = pairs.flatMap(\.actual)
        guard let d = actual.first?.count, actual.count >= 2 else {
            return (SVGPlot.lineChart(title: title, series: [], xLabel: "PC 1", yLabel: "PC 2"), "no rollouts")
        }
        let mean = (0..<d).map { j in actual.reduce(0) { $0 + $1[j] } / Double(actual.count) }
        let centred = Tensor<Double>(shape: [actual.count, d], scalars: actual.flatMap { row in (0..<d).map { row[$0] - mean[$0] } })
        let covariance = Tensor<Double>(zeros: [d, d])
        Tensor.gemm(centred, transposeA: true, centred, into: covariance, alpha: 1 / Double(actual.count - 1))
        let axes = EmbeddingStatistics.leadingEigenvectors(of: covariance, count: 2, random: CounterRandom(seed: 0, streamName: "report.rollouts"))
        func project(_ rows: [[Double]]) -> [(x: Double, y: Double)] {
            rows.map { row in
                let c = (0..<d).map { row[$0] - mean[$0] }
                return ((0..<d).reduce(0) { $0 + c[$1] * axes[0][$1] }, (0..<d).reduce(0) { $0 + c[$1] * axes[1][$1] })
            }
        }
        var series: [SVGPlot.Series] = []
        for (i, pair) in pairs.enumerated() {
            series.append(SVGPlot.Series(name: "task \(i) actual", points: project(pair.actual), colour: i))
            series.append(SVGPlot.Series(name: "task \(i) predicted", points: project(pair.predicted), dashed: true, colour: i))
        }
        // ‖ẑ − z‖² / D at the last block, against ‖z_last − z_start‖² / D (how far the embedding moved).
        let error = pairs.map { pair in zip(pair.predicted.last!, pair.actual.last!).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } / Double(d) }
        let moved = pairs.map { pair in zip(pair.actual.last!, pair.actual[0]).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } / Double(d) }
        let note = String(format: "rollouts: mean squared error of the last predicted embedding %.4f per dimension, against %.4f moved from the start",
                          error.reduce(0, +) / Double(pairs.count), moved.reduce(0, +) / Double(pairs.count))
        return (SVGPlot.lineChart(title: title, series: series, xLabel: "PC 1 (of the actual embeddings)", yLabel: "PC 2", markers: true), note)
    }
}
