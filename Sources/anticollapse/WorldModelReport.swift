// `anticollapse worldmodel report RUN_DIR`: one self-contained HTML page of a world-model run.
import ArgumentParser
import Evaluation
import Foundation

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
                    figures.append(roomPaths(paths, title: "\(name): executed paths (planner solid, expert dashed; ○ start, ✕ goal)"))
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

    /// TwoRoom's walls and door with the executed paths, 224 pixels drawn at 2×.
    private func roomPaths(_ paths: [[String: Any]], title: String) -> String {
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
        var svg = #"<svg xmlns="http://www.w3.org/2000/svg" width="460" height="490" viewBox="0 -20 448 468">"#
        svg += "<text x=\"0\" y=\"-6\" font-size=\"12\">\(SVGPlot.escape(title))</text>"
        svg += #"<rect x="20" y="20" width="408" height="408" fill="white" stroke="black" stroke-width="8"/>"#
        // The wall at x = 107–117 with the door at y = 35–63.
        svg += #"<rect x="214" y="24" width="22" height="46" fill="black"/><rect x="214" y="126" width="22" height="298" fill="black"/>"#
        for (i, path) in paths.enumerated() {
            let colour = colours[i % colours.count]
            func polyline(_ key: String, dashed: Bool) -> String {
                guard let points = path[key] as? [[Double]], !points.isEmpty else { return "" }
                let list = points.map { String(format: "%.1f,%.1f", 2 * $0[0], 2 * $0[1]) }.joined(separator: " ")
                return "<polyline points=\"\(list)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"\(dashed ? 1 : 2)\"\(dashed ? " stroke-dasharray=\"4 3\"" : "")/>"
            }
            svg += polyline("expert", dashed: true) + polyline("planner", dashed: false)
            if let s = path["start"] as? [Double], let g = path["goal"] as? [Double] {
                svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"none\" stroke=\"%@\" stroke-width=\"2\"/>", 2 * s[0], 2 * s[1], colour)
                svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" fill=\"%@\" text-anchor=\"middle\">✕</text>", 2 * g[0], 2 * g[1] + 5, colour)
            }
        }
        return svg + "</svg>"
    }
}
