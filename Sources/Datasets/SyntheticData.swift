import Foundation
import Tensor

/// Labelled synthetic datasets for tests and benchmarks, a pure function of their settings.
///
/// - `vectors`: class `k` is a Gaussian blob: row = centre[k] + N(0, 1) in `D` dimensions,
///   the centres drawn as N(0, separation²); stored as `float32`, shape `[D]`.
/// - `images`: `1 × S × S` 8-bit images of one simple shape a class (disc, square, horizontal
///   bar, vertical bar, cross, ring, diagonal, frame, two dots, triangle, then again with a
///   smaller size), with a random position, size and brightness and uniform noise.
///
/// Row `i` (training rows `0 ..< rows`, test rows `rows ..< rows + testRows`) is drawn from
/// its own counter-based stream, so any row can be made on its own.
public struct SyntheticData: Sendable, Equatable {
    /// What the rows are.
    public enum Kind: String, Sendable, CaseIterable { case images, vectors }

    public var kind: Kind
    /// Training and test rows.
    public var rows: Int
    public var testRows: Int
    /// The number of classes; labels are drawn uniformly.
    public var classes: Int
    /// Features a vector row (`vectors`).
    public var features: Int
    /// Side of an image (`images`).
    public var size: Int
    /// Keys every draw.
    public var seed: UInt64
    /// Standard deviation of the class centres of `vectors` (in units of the within-class noise).
    public var separation: Double

    /// - Throws: ``DatasetError/invalid(_:)`` for non-positive sizes or fewer than 2 classes.
    public init(kind: Kind, rows: Int, testRows: Int = 0, classes: Int = 10, features: Int = 32,
                size: Int = 28, seed: UInt64 = 0, separation: Double = 2) throws {
        guard rows > 0, testRows >= 0 else { throw DatasetError.invalid("rows (\(rows)) must be positive and test rows (\(testRows)) not negative") }
        guard classes >= 2 else { throw DatasetError.invalid("classes (\(classes)) must be at least 2") }
        guard features > 0 else { throw DatasetError.invalid("features (\(features)) must be positive") }
        guard size >= 8 else { throw DatasetError.invalid("image size (\(size)) must be at least 8") }
        self.kind = kind; self.rows = rows; self.testRows = testRows; self.classes = classes
        self.features = features; self.size = size; self.seed = seed; self.separation = separation
    }

    /// The shape of one row.
    public var featureShape: [Int] { kind == .images ? [1, size, size] : [features] }

    /// The training rows (`0 ..< rows`) and test rows (`rows ..< rows + testRows`).
    public func make() -> (train: DatasetRows, test: DatasetRows?) {
        (make(0..<rows), testRows > 0 ? make(rows..<(rows + testRows)) : nil)
    }

    /// The rows `range` of the sequence (training rows first, then test rows).
    public func make(_ range: Range<Int>) -> DatasetRows {
        let root = CounterRandom(seed: seed, streamName: "synthetic \(kind.rawValue)")
        let labels = range.map { Int64(root.substream(UInt64($0)).uniform(at: 0) * Double(classes)) }
        let width = featureShape.reduce(1, *)
        let values: FeatureValues
        switch kind {
        case .vectors:
            let centres = CounterRandom(seed: seed, streamName: "synthetic centres")
            var out = [Float](repeating: 0, count: range.count * width)
            for (i, row) in range.enumerated() {
                let g = root.substream(UInt64(row)), label = UInt64(labels[i])
                for j in 0..<width {
                    let centre = separation * centres.normal(at: label * UInt64(width) + UInt64(j))
                    out[i * width + j] = Float(centre + g.normal(at: 1 + UInt64(j)))
                }
            }
            values = .float32(out)
        case .images:
            var out = [UInt8](repeating: 0, count: range.count * width)
            for (i, row) in range.enumerated() {
                drawImage(into: &out, offset: i * width, label: Int(labels[i]), generator: root.substream(UInt64(row)))
            }
            values = .uint8(out)
        }
        return DatasetRows(unchecked: featureShape, values: values, labels: labels)
    }

    /// One image of class `label`.
    private func drawImage(into out: inout [UInt8], offset: Int, label: Int, generator g: CounterRandom) {
        let s = Double(size)
        let shape = label % 10
        let scale = (label / 10) % 2 == 0 ? 1.0 : 0.6
        let radius = s * scale * (0.22 + 0.1 * g.uniform(at: 1))
        let cx = s / 2 + s * 0.12 * (2 * g.uniform(at: 2) - 1)
        let cy = s / 2 + s * 0.12 * (2 * g.uniform(at: 3) - 1)
        let brightness = 170 + 85 * g.uniform(at: 4)
        let thickness = max(1.5, radius * 0.35)
        var noise = g.substream(1).sequence()
        for y in 0..<size {
            for x in 0..<size {
                let dx = Double(x) + 0.5 - cx, dy = Double(y) + 0.5 - cy
                let r = (dx * dx + dy * dy).squareRoot()
                let inside: Bool
                switch shape {
                case 0: inside = r <= radius
                case 1: inside = abs(dx) <= radius * 0.8 && abs(dy) <= radius * 0.8
                case 2: inside = abs(dx) <= radius && abs(dy) <= thickness / 2
                case 3: inside = abs(dy) <= radius && abs(dx) <= thickness / 2
                case 4: inside = (abs(dx) <= radius && abs(dy) <= thickness / 2) || (abs(dy) <= radius && abs(dx) <= thickness / 2)
                case 5: inside = abs(r - radius * 0.8) <= thickness / 2
                case 6: inside = abs(dx - dy) <= thickness * 0.7 && abs(dx) <= radius
                case 7: inside = max(abs(dx), abs(dy)) <= radius && max(abs(dx), abs(dy)) >= radius - thickness
                case 8: inside = ((dx - radius * 0.5) * (dx - radius * 0.5) + dy * dy).squareRoot() <= radius * 0.35
                            || ((dx + radius * 0.5) * (dx + radius * 0.5) + dy * dy).squareRoot() <= radius * 0.35
                default: inside = dy <= radius * 0.7 && dy >= -radius * 0.7 + 1.4 * abs(dx)
                }
                let background = Double(noise.next() >> 58)   // 0 ..< 64
                let value = inside ? brightness - background / 2 : background / 2
                out[offset + y * size + x] = UInt8(max(0, min(255, value.rounded())))
            }
        }
    }

    /// Writes the training rows as `trainShards` shards in `directory/train` and the test rows
    /// (if any) as one shard in `directory/test`, named `NAME-train-…` and `NAME-test-…`, with
    /// the training split's statistics.
    @discardableResult
    public func write(to directory: String, name: String? = nil, trainShards: Int, testShards: Int = 1,
                      overwrite: Bool = false) throws -> (train: [String], test: [String]) {
        let (train, test) = make()
        let source = "anticollapse dataset make-synthetic --kind \(kind.rawValue) --rows \(rows) --test-rows \(testRows) "
            + "--classes \(classes) " + (kind == .images ? "--size \(size)" : "--features \(features)") + " --seed \(seed)"
        return try ShardWriter.writeSplit(train: train, test: test, to: directory, name: name ?? "synthetic-\(kind.rawValue)",
                                          trainShards: trainShards, testShards: testShards, source: source,
                                          overwrite: overwrite)
    }
}
