import Datasets
import Foundation

/// How often a dataset's states visit each cell of the frame: the coverage map of `env show`.
public struct Coverage: Sendable, Equatable {
    /// The side of a cell in pixels and the number of cells a side.
    public let cellSize: Int
    public let cells: Int
    /// Visits of cell `(row, column)` at `row · cells + column`.
    public private(set) var counts: [Int]

    /// An empty map of `frameSize / cellSize` cells a side.
    public init(frameSize: Int = TwoRoom.frameSize, cellSize: Int = 4) {
        self.cellSize = cellSize; self.cells = (frameSize + cellSize - 1) / cellSize
        self.counts = [Int](repeating: 0, count: cells * cells)
    }

    /// Counts the position `(x, y)` (states outside the frame are ignored).
    public mutating func add(x: Float, y: Float) {
        guard x.isFinite, y.isFinite else { return }
        let column = Int(x) / cellSize, row = Int(y) / cellSize
        guard x >= 0, y >= 0, column < cells, row < cells else { return }
        counts[row * cells + column] += 1
    }

    /// The map of every state of `dataset` (whose first two state values are x and y).
    public static func of(_ dataset: TrajectoryDataset, cellSize: Int = 4) throws -> Coverage {
        var map = Coverage(cellSize: cellSize)
        let sd = dataset.stateDimension
        for shard in dataset.paths.indices {
            let states = try dataset.columns(ofShard: shard).states
            for row in 0..<(states.count / sd) { map.add(x: states[row * sd], y: states[row * sd + 1]) }
        }
        return map
    }

    /// An SVG heat map (log scale, white → dark red) with TwoRoom's walls drawn over it.
    public func svg(title: String) -> String {
        let scale = 3, side = cells * cellSize * scale
        let peak = log(1 + Double(counts.max() ?? 0))
        var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(side)" height="\(side + 24)" viewBox="0 0 \(side) \(side + 24)">
        <rect width="\(side)" height="\(side + 24)" fill="white"/>
        <text x="4" y="\(side + 17)" font-family="sans-serif" font-size="13">\(title): visits per \(cellSize)-pixel cell, log scale (max \(counts.max() ?? 0))</text>

        """
        for row in 0..<cells {
            for column in 0..<cells where counts[row * cells + column] > 0 {
                let t = peak > 0 ? log(1 + Double(counts[row * cells + column])) / peak : 0
                let green = Int(255 * (1 - t)), red = Int(255 - 100 * t)
                svg += "<rect x=\"\(column * cellSize * scale)\" y=\"\(row * cellSize * scale)\" width=\"\(cellSize * scale)\" height=\"\(cellSize * scale)\" fill=\"rgb(\(red),\(green),\(green))\"/>\n"
            }
        }
        // Walls: the border lines and the central wall above and below the door.
        let s = Double(scale)
        let half = Double(TwoRoom.wallThickness / 2), wall = Double(TwoRoom.wallCenter)
        let doorLow = Double(TwoRoom.doorCenter - TwoRoom.doorHalfExtent), doorHigh = Double(TwoRoom.doorCenter + TwoRoom.doorHalfExtent)
        let inner = Double(TwoRoom.borderSize), outer = Double(TwoRoom.frameSize) - inner
        svg += "<rect x=\"\((inner - 2) * s)\" y=\"\((inner - 2) * s)\" width=\"\((outer - inner + 4) * s)\" height=\"\((outer - inner + 4) * s)\" fill=\"none\" stroke=\"black\" stroke-width=\"\(4 * s)\"/>\n"
        svg += "<rect x=\"\((wall - half) * s)\" y=\"\(inner * s)\" width=\"\((2 * half + 1) * s)\" height=\"\((doorLow - inner) * s)\" fill=\"black\"/>\n"
        svg += "<rect x=\"\((wall - half) * s)\" y=\"\((doorHigh + 1) * s)\" width=\"\((2 * half + 1) * s)\" height=\"\((outer - doorHigh - 1) * s)\" fill=\"black\"/>\n"
        svg += "</svg>\n"
        return svg
    }
}

/// Rendering throughput of an environment's observations.
public enum RenderBenchmark {
    /// Frames a second of TwoRoom `format` observations as the clip loader renders them
    /// (``ObservationFormat/renderer(for:)``), or of native frames when `format` is nil, over
    /// `frames` frames on one thread.
    public static func framesPerSecond(_ format: ObservationFormat?, frames: Int = 2000) -> Double {
        var frame = [UInt8]()
        var output = [UInt8](repeating: 0, count: format?.valueCount ?? 1)[...]
        let render = format?.renderer(for: TwoRoom())
        var checksum = 0
        let start = DispatchTime.now().uptimeNanoseconds
        for i in 0..<frames {
            let agent: [Float] = [21 + Float(i % 182) + 0.37, 21 + Float((i * 7) % 182) + 0.61]
            if let render {
                render(agent[...], &output)
                checksum &+= Int(output[i % output.count])
            } else {
                TwoRoom.renderFrame(agent: SIMD2(agent[0], agent[1]), into: &frame)
                checksum &+= Int(frame[i % frame.count])
            }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        precondition(checksum >= 0)   // keeps the work observable
        return Double(frames) / seconds
    }

    /// Frames a second of ``TwoRoom/renderDirect(agent:size:)`` at `size`, on one thread.
    public static func directFramesPerSecond(size: Int, frames: Int = 2000) -> Double {
        var checksum = 0
        let start = DispatchTime.now().uptimeNanoseconds
        for i in 0..<frames {
            let frame = TwoRoom.renderDirect(agent: [21 + Float(i % 182) + 0.37, 21 + Float((i * 7) % 182) + 0.61], size: size)
            checksum &+= Int(frame[i % frame.count])
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        precondition(checksum >= 0)
        return Double(frames) / seconds
    }
}
