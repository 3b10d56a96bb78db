import Foundation

/// Small self-contained SVG figures for the HTML report: line charts, heatmaps, histograms
/// with a density curve, and bar charts. No scripts, no external resources.
///
/// Every figure is one `<svg>` element with a `<title>` (shown as a tooltip and read by
/// screen readers) and the same title drawn at the top. Numbers are formatted compactly;
/// non-finite values are skipped.
public enum SVGPlot {
    /// One line of a chart.
    public struct Series: Sendable {
        public var name: String
        public var points: [(x: Double, y: Double)]
        /// A dashed line (default solid).
        public var dashed: Bool
        /// The palette index of its colour (default: its position among the series).
        public var colour: Int?
        public init(name: String, points: [(x: Double, y: Double)], dashed: Bool = false, colour: Int? = nil) {
            self.name = name
            self.points = points
            self.dashed = dashed
            self.colour = colour
        }
    }

    /// The colours of successive series (Tableau 10).
    static let palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                          "#9c755f", "#bab0ac"]

    static let width = 560.0, height = 300.0
    static let left = 64.0, right = 16.0, top = 30.0, bottom = 40.0

    /// Escapes text for XML.
    public static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// A number for an axis label: 3 significant digits, exponent form when very large or small.
    static func label(_ value: Double) -> String {
        let magnitude = abs(value)
        if value == 0 { return "0" }
        if value == value.rounded() && magnitude < 1e6 { return String(format: "%.0f", value) }
        if magnitude >= 1e5 || magnitude < 1e-3 { return String(format: "%.2g", value) }
        return String(format: "%.3g", value)
    }

    static func coordinate(_ value: Double) -> String { String(format: "%.1f", value) }

    /// "Nice" tick values covering `low ... high` (about `count` of them).
    static func ticks(_ low: Double, _ high: Double, count: Int = 5) -> [Double] {
        guard high > low, (high - low).isFinite else { return [low] }
        let raw = (high - low) / Double(count)
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw } ?? raw
        var ticks: [Double] = []
        var value = ceil(low / step) * step
        while value <= high + step * 1e-9 { ticks.append(abs(value) < step * 1e-9 ? 0 : value); value += step }
        return ticks
    }

    static func open(_ title: String, width: Double = width, height: Double = height) -> String {
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\" font-size=\"11\">"
            + "<title>\(escape(title))</title>"
            + "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
            + "<text class=\"figure-title\" x=\"\(coordinate(width / 2))\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">\(escape(title))</text>"
    }

    /// Axes with ticks for the data ranges, mapped to the plot area; returns the SVG and the maps.
    static func axes(x: ClosedRange<Double>, y: ClosedRange<Double>, xLabel: String, yLabel: String, logY: Bool,
                     xTicks: Bool = true, width: Double = width, height: Double = height)
        -> (svg: String, mapX: (Double) -> Double, mapY: (Double) -> Double) {
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let x0 = x.lowerBound, x1 = x.upperBound > x.lowerBound ? x.upperBound : x.lowerBound + 1
        let y0 = y.lowerBound, y1 = y.upperBound > y.lowerBound ? y.upperBound : y.lowerBound + 1
        let mapX = { (v: Double) in left + (v - x0) / (x1 - x0) * plotWidth }
        let mapY = { (v: Double) in top + plotHeight - (v - y0) / (y1 - y0) * plotHeight }
        var svg = "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#888\"/>"
        for t in xTicks ? ticks(x0, x1) : [] {
            let px = coordinate(mapX(t))
            svg += "<line x1=\"\(px)\" y1=\"\(top + plotHeight)\" x2=\"\(px)\" y2=\"\(top + plotHeight + 4)\" stroke=\"#888\"/>"
            svg += "<text x=\"\(px)\" y=\"\(top + plotHeight + 15)\" text-anchor=\"middle\">\(label(t))</text>"
        }
        for t in ticks(y0, y1) {
            let py = coordinate(mapY(t))
            svg += "<line x1=\"\(left)\" y1=\"\(py)\" x2=\"\(left + plotWidth)\" y2=\"\(py)\" stroke=\"#eee\"/>"
            svg += "<text x=\"\(left - 4)\" y=\"\(py)\" dy=\"3\" text-anchor=\"end\">\(label(logY ? pow(10, t) : t))</text>"
        }
        svg += "<text x=\"\(coordinate(left + plotWidth / 2))\" y=\"\(height - 6)\" text-anchor=\"middle\">\(escape(xLabel))</text>"
        svg += "<text transform=\"translate(12 \(coordinate(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>"
        return (svg, mapX, mapY)
    }

    /// A line chart of one or more series, with a legend when there are several.
    ///
    /// - Parameters:
    ///   - logY: plot `log10(y)` (non-positive values are skipped); tick labels show `y`.
    ///   - markers: draw a dot at every point (for short series such as a spectrum).
    public static func lineChart(title: String, series: [Series], xLabel: String, yLabel: String,
                                 logY: Bool = false, markers: Bool = false) -> String {
        let transformed = series.map { s in
            Series(name: s.name, points: s.points.compactMap { p in
                let y = logY ? (p.y > 0 ? log10(p.y) : .nan) : p.y
                return p.x.isFinite && y.isFinite ? (p.x, y) : nil
            }, dashed: s.dashed, colour: s.colour)
        }
        let all = transformed.flatMap(\.points)
        var svg = open(title)
        guard let minX = all.map(\.x).min(), let maxX = all.map(\.x).max(),
              let minY = all.map(\.y).min(), let maxY = all.map(\.y).max() else {
            return svg + "<text x=\"\(width / 2)\" y=\"\(height / 2)\" text-anchor=\"middle\">no data</text></svg>"
        }
        let pad = maxY > minY ? (maxY - minY) * 0.05 : 0.5
        let (axes, mapX, mapY) = axes(x: minX...maxX, y: (minY - pad)...(maxY + pad), xLabel: xLabel, yLabel: yLabel, logY: logY)
        svg += axes
        for (i, s) in transformed.enumerated() where !s.points.isEmpty {
            let colour = palette[(s.colour ?? i) % palette.count]
            let path = s.points.map { "\(coordinate(mapX($0.x))),\(coordinate(mapY($0.y)))" }.joined(separator: " ")
            let dash = s.dashed ? " stroke-dasharray=\"5 3\"" : ""
            svg += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\"\(dash) points=\"\(path)\"><title>\(escape(s.name))</title></polyline>"
            if markers || s.points.count == 1 {
                for p in s.points {
                    svg += "<circle cx=\"\(coordinate(mapX(p.x)))\" cy=\"\(coordinate(mapY(p.y)))\" r=\"2\" fill=\"\(colour)\"/>"
                }
            }
        }
        if transformed.count > 1 {
            for (i, s) in transformed.enumerated() {
                let y = top + 12 + Double(i) * 14
                svg += "<rect x=\"\(width - right - 120)\" y=\"\(y - 8)\" width=\"10\" height=\"10\" fill=\"\(palette[(s.colour ?? i) % palette.count])\"/>"
                svg += "<text x=\"\(width - right - 106)\" y=\"\(y + 1)\">\(escape(s.name))</text>"
            }
        }
        return svg + "</svg>"
    }

    /// A heatmap of a square or rectangular matrix (row-major `rows × columns`) on a diverging
    /// blue–white–red scale symmetric about 0, with a colour bar.
    public static func heatmap(title: String, values: [Double], rows: Int, columns: Int, caption: String = "") -> String {
        precondition(values.count == rows * columns, "heatmap of \(values.count) values is not \(rows)×\(columns)")
        let size = 420.0, barWidth = 14.0, figureWidth = size + 140, figureHeight = size + 70
        var svg = open(title, width: figureWidth, height: figureHeight)
        let limit = values.filter(\.isFinite).map(abs).max() ?? 1
        let scale = limit > 0 ? limit : 1
        let cellWidth = size / Double(max(columns, 1)), cellHeight = size / Double(max(rows, 1))
        let x0 = 40.0, y0 = top
        func colour(_ v: Double) -> String {
            guard v.isFinite else { return "#000" }
            let t = max(-1, min(1, v / scale))
            // White at 0, #b2182b at +1, #2166ac at −1.
            let (r, g, b) = t >= 0 ? (255 - (255 - 178) * t, 255 - (255 - 24) * t, 255 - (255 - 43) * t)
                                   : (255 + (255 - 33) * t, 255 + (255 - 102) * t, 255 + (255 - 172) * t)
            return String(format: "#%02x%02x%02x", Int(r.rounded()), Int(g.rounded()), Int(b.rounded()))
        }
        // One unit square a cell, scaled into place: a 128 × 128 map stays under 1 MB.
        svg += "<g shape-rendering=\"crispEdges\" transform=\"translate(\(x0) \(y0)) scale(\(String(format: "%.4f", cellWidth)) \(String(format: "%.4f", cellHeight)))\">"
        for i in 0..<rows {
            for j in 0..<columns {
                svg += "<rect x=\"\(j)\" y=\"\(i)\" width=\"1.02\" height=\"1.02\" fill=\"\(colour(values[i * columns + j]))\"/>"
            }
        }
        svg += "</g><rect x=\"\(x0)\" y=\"\(y0)\" width=\"\(size)\" height=\"\(size)\" fill=\"none\" stroke=\"#888\"/>"
        // Colour bar.
        let barX = x0 + size + 20, steps = 40
        for s in 0..<steps {
            let v = scale * (1 - 2 * (Double(s) + 0.5) / Double(steps))
            svg += "<rect x=\"\(barX)\" y=\"\(coordinate(y0 + Double(s) * size / Double(steps)))\" width=\"\(barWidth)\" height=\"\(coordinate(size / Double(steps) + 0.5))\" fill=\"\(colour(v))\"/>"
        }
        for (v, y) in [(scale, y0), (0, y0 + size / 2), (-scale, y0 + size)] {
            svg += "<text x=\"\(barX + barWidth + 4)\" y=\"\(coordinate(y))\" dy=\"3\">\(label(v))</text>"
        }
        svg += "<text x=\"\(x0)\" y=\"\(y0 + size + 18)\">\(escape(caption.isEmpty ? "\(rows) × \(columns)" : caption))</text>"
        return svg + "</svg>"
    }

    /// A histogram of `values` (as a density: bar areas sum to 1) with a density curve drawn
    /// over it (e.g. the standard normal).
    /// A scatter plot of points coloured by their group (e.g. the class label), with a legend
    /// of up to 10 groups.
    public static func scatter(title: String, points: [(x: Double, y: Double, group: Int)], xLabel: String, yLabel: String)
        -> String {
        let finite = points.filter { $0.x.isFinite && $0.y.isFinite }
        let xs = finite.map(\.x), ys = finite.map(\.y)
        let (svg, mapX, mapY) = axes(x: (xs.min() ?? 0)...(xs.max() ?? 1), y: (ys.min() ?? 0)...(ys.max() ?? 1),
                                     xLabel: xLabel, yLabel: yLabel, logY: false)
        var out = open(title) + svg
        for p in finite {
            out += "<circle cx=\"\(coordinate(mapX(p.x)))\" cy=\"\(coordinate(mapY(p.y)))\" r=\"2\" fill=\"\(palette[((p.group % 10) + 10) % 10])\" fill-opacity=\"0.7\"/>"
        }
        let groups = Array(Set(finite.map(\.group))).sorted().prefix(10)
        for (i, group) in groups.enumerated() {
            let y = top + 10 + Double(i) * 13
            out += "<circle cx=\"\(coordinate(width - right - 40))\" cy=\"\(coordinate(y - 3))\" r=\"4\" fill=\"\(palette[((group % 10) + 10) % 10])\"/>"
            out += "<text x=\"\(coordinate(width - right - 32))\" y=\"\(coordinate(y))\">\(group)</text>"
        }
        return out + "</svg>"
    }

    public static func histogram(title: String, values: [Double], bins: Int = 40, range: ClosedRange<Double>? = nil,
                                 density: ((Double) -> Double)? = nil, densityName: String = "N(0, 1)",
                                 xLabel: String = "value") -> String {
        let finite = values.filter(\.isFinite)
        var svg = open(title)
        guard let low = range?.lowerBound ?? finite.min(), let high = range?.upperBound ?? finite.max(), !finite.isEmpty else {
            return svg + "<text x=\"\(width / 2)\" y=\"\(height / 2)\" text-anchor=\"middle\">no data</text></svg>"
        }
        let span = high > low ? high - low : 1
        let binWidth = span / Double(bins)
        var counts = [Double](repeating: 0, count: bins)
        for v in finite where v >= low && v <= high {
            counts[min(bins - 1, Int((v - low) / binWidth))] += 1
        }
        let heights = counts.map { $0 / (Double(finite.count) * binWidth) }
        let curve: [(x: Double, y: Double)] = density.map { f in
            (0...200).map { i in let x = low + span * Double(i) / 200; return (x, f(x)) }
        } ?? []
        let maxY = max(heights.max() ?? 0, curve.map(\.y).max() ?? 0) * 1.08
        let (axes, mapX, mapY) = axes(x: low...(low + span), y: 0...(maxY > 0 ? maxY : 1), xLabel: xLabel, yLabel: "density",
                                      logY: false)
        svg += axes
        for (i, h) in heights.enumerated() where h > 0 {
            let x = mapX(low + Double(i) * binWidth), x2 = mapX(low + Double(i + 1) * binWidth)
            svg += "<rect x=\"\(coordinate(x))\" y=\"\(coordinate(mapY(h)))\" width=\"\(coordinate(max(x2 - x - 0.5, 0.5)))\" height=\"\(coordinate(mapY(0) - mapY(h)))\" fill=\"#a0cbe8\"/>"
        }
        if !curve.isEmpty {
            let path = curve.map { "\(coordinate(mapX($0.x))),\(coordinate(mapY($0.y)))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"#e15759\" stroke-width=\"1.5\" points=\"\(path)\"><title>\(escape(densityName))</title></polyline>"
            svg += "<text x=\"\(width - right - 8)\" y=\"\(top + 14)\" text-anchor=\"end\" fill=\"#e15759\">\(escape(densityName))</text>"
        }
        return svg + "</svg>"
    }

    /// A bar chart of labelled values, each bar annotated with its value (`format`, e.g. `%.1f %%`).
    public static func barChart(title: String, bars: [(label: String, value: Double)], yLabel: String,
                                format: String = "%.3g", yMaximum: Double? = nil) -> String {
        var svg = open(title)
        let limit = yMaximum ?? max(bars.map(\.value).filter(\.isFinite).max() ?? 1, 1e-12) * 1.1
        let (axes, _, mapY) = axes(x: 0...1, y: 0...limit, xLabel: "", yLabel: yLabel, logY: false, xTicks: false)
        svg += axes
        let plotWidth = width - left - right, slot = plotWidth / Double(max(bars.count, 1))
        for (i, bar) in bars.enumerated() {
            let x = left + Double(i) * slot + slot * 0.2, barWidth = slot * 0.6
            let value = bar.value.isFinite ? bar.value : 0
            svg += "<rect x=\"\(coordinate(x))\" y=\"\(coordinate(mapY(value)))\" width=\"\(coordinate(barWidth))\" height=\"\(coordinate(mapY(0) - mapY(value)))\" fill=\"\(palette[i % palette.count])\"/>"
            svg += "<text x=\"\(coordinate(x + barWidth / 2))\" y=\"\(coordinate(mapY(value) - 4))\" text-anchor=\"middle\">\(escape(String(format: format, bar.value)))</text>"
            svg += "<text x=\"\(coordinate(x + barWidth / 2))\" y=\"\(coordinate(height - bottom + 15))\" text-anchor=\"middle\">\(escape(bar.label))</text>"
        }
        return svg + "</svg>"
    }
}
