import Tensor

/// Random transformations of one dataset row into one view, with every random choice keyed by
/// (seed, epoch, global row, view) — never by rank or thread — so a row's views are the same
/// whichever rank reads it and whatever the world size.
///
/// Images (`C × H × W`, values already scaled to `[0, 1]`-like units by `pixelScale`) go
/// through one bilinear resampling that composes a random resized crop, a rotation, a
/// translation and an optional horizontal flip; then brightness and contrast jitter,
/// per-channel normalisation, Gaussian noise and random erasing (in that order, as
/// torchvision's `RandomResizedCrop → RandomAffine → ColorJitter → Normalize → RandomErasing`).
/// Vectors get normalisation, Gaussian noise and feature masking.
public struct Augmentation: Sendable, Equatable, Codable {
    /// Range of the crop's area as a fraction of the image (torchvision `scale`).
    public var cropScale: ClosedRange<Double> = 0.4...1.0
    /// Range of the crop's aspect ratio (torchvision `ratio`), sampled log-uniformly.
    public var cropRatio: ClosedRange<Double> = (3.0 / 4.0)...(4.0 / 3.0)
    /// Largest rotation, in degrees, either way.
    public var rotationDegrees: Double = 15
    /// Largest translation as a fraction of the image side.
    public var translate: Double = 0.1
    /// Probability of a horizontal flip (0 for digits).
    public var flipProbability: Double = 0
    /// Brightness jitter: adds a uniform draw in ±`brightness` (in scaled units).
    public var brightness: Double = 0.2
    /// Contrast jitter: scales around the image mean by a factor in 1 ± `contrast`.
    public var contrast: Double = 0.2
    /// Standard deviation of additive Gaussian noise, after normalisation.
    public var noiseStandardDeviation: Double = 0.1
    /// Probability of erasing one random rectangle (torchvision `RandomErasing`, value 0).
    public var erasingProbability: Double = 0.25
    /// Range of the erased area as a fraction of the image.
    public var erasingScale: ClosedRange<Double> = 0.02...0.2
    /// For vector data: probability that a feature is set to zero.
    public var featureMaskProbability: Double = 0.1

    public init() {}

    /// No randomness at all: the normalised row (for evaluation features).
    public static var identity: Augmentation {
        var a = Augmentation()
        a.cropScale = 1...1; a.cropRatio = 1...1; a.rotationDegrees = 0; a.translate = 0
        a.flipProbability = 0; a.brightness = 0; a.contrast = 0; a.noiseStandardDeviation = 0
        a.erasingProbability = 0; a.featureMaskProbability = 0
        return a
    }

    /// Whether every transformation is off.
    public var isIdentity: Bool { self == .identity }
}

/// Where a view's randomness comes from.
public struct ViewKey: Sendable, Hashable {
    public var seed: UInt64
    public var epoch: Int
    /// The row's index in the whole dataset (not in the rank's part).
    public var row: Int
    public var view: Int

    public init(seed: UInt64, epoch: Int, row: Int, view: Int) {
        self.seed = seed; self.epoch = epoch; self.row = row; self.view = view
    }

    /// The generator of this view: a stream derived from (epoch, row, view) under the seed.
    public var generator: CounterRandom {
        CounterRandom(seed: seed, stream: CounterRandom.hash("augmentation"))
            .substream(UInt64(epoch)).substream(UInt64(row)).substream(UInt64(view))
    }
}

/// Per-channel normalisation `(x · pixelScale − mean[c]) / std[c]`.
public struct Normalization: Sendable, Equatable, Codable {
    public var pixelScale: Double
    public var mean: [Double]
    public var standardDeviation: [Double]

    public init(pixelScale: Double = 1, mean: [Double], standardDeviation: [Double]) {
        self.pixelScale = pixelScale; self.mean = mean; self.standardDeviation = standardDeviation
    }
}

extension Augmentation {
    // Indices of the draws of one view's generator, fixed so that adding a transformation
    // never shifts the others.
    private enum Draw: UInt64 {
        case cropScale = 0, cropRatio, cropX, cropY, rotation, translateX, translateY, flip,
             brightness, contrast, erase, eraseScale, eraseRatio, eraseX, eraseY
        static let noiseStart: UInt64 = 1 << 20
        static let maskStart: UInt64 = 1 << 40
    }

    /// Writes the view of an image `source` (`channels × height × width`, raw units) into
    /// `output` (`channels × outputHeight × outputWidth`).
    public func augmentImage(_ source: UnsafeBufferPointer<Float>, channels: Int, height: Int, width: Int,
                             into output: UnsafeMutableBufferPointer<Float>, outputHeight: Int, outputWidth: Int,
                             normalization: Normalization, key: ViewKey) {
        precondition(source.count == channels * height * width, "image of \(source.count) values is not \(channels)×\(height)×\(width)")
        precondition(output.count == channels * outputHeight * outputWidth, "view buffer of \(output.count) values")
        let g = key.generator
        func uniform(_ d: Draw, _ range: ClosedRange<Double>) -> Double {
            range.lowerBound + (range.upperBound - range.lowerBound) * g.uniform(at: d.rawValue)
        }
        // Random resized crop: area fraction and log-uniform aspect ratio, clamped to the image.
        let area = uniform(.cropScale, cropScale)
        let logRatio = uniform(.cropRatio, Double.log(cropRatio.lowerBound)...Double.log(cropRatio.upperBound))
        let ratio = Double.exp(logRatio)
        let cropWidth = min(1, (area * ratio).squareRoot()) * Double(width)
        let cropHeight = min(1, (area / ratio).squareRoot()) * Double(height)
        let centreX = (Double(width) - cropWidth) * g.uniform(at: Draw.cropX.rawValue) + cropWidth / 2
                    + translate * Double(width) * (2 * g.uniform(at: Draw.translateX.rawValue) - 1)
        let centreY = (Double(height) - cropHeight) * g.uniform(at: Draw.cropY.rawValue) + cropHeight / 2
                    + translate * Double(height) * (2 * g.uniform(at: Draw.translateY.rawValue) - 1)
        let angle = uniform(.rotation, -rotationDegrees...rotationDegrees) * Double.pi / 180
        let flip = g.uniform(at: Draw.flip.rawValue) < flipProbability ? -1.0 : 1.0
        // Output pixel centre (u, v) ↦ source point centre + R(angle) · S · (u − u0, v − v0).
        let sx = flip * cropWidth / Double(outputWidth), sy = cropHeight / Double(outputHeight)
        let (c, s) = (Double.cos(angle), Double.sin(angle))
        let a11 = c * sx, a12 = -s * sy, a21 = s * sx, a22 = c * sy
        let u0 = Double(outputWidth) / 2, v0 = Double(outputHeight) / 2
        let brightnessShift = uniform(.brightness, -brightness...brightness)
        let contrastFactor = uniform(.contrast, (1 - contrast)...(1 + contrast))
        let planeIn = height * width, planeOut = outputHeight * outputWidth
        var noise = [Float](repeating: 0, count: noiseStandardDeviation == 0 ? 0 : channels * planeOut)
        noise.withUnsafeMutableBufferPointer { g.singlePrecisionNormals(start: Draw.noiseStart, into: $0) }
        for channel in 0..<channels {
            let plane = source.baseAddress! + channel * planeIn
            let out = output.baseAddress! + channel * planeOut
            let scale = Float(normalization.pixelScale)
            var sum = 0.0
            for v in 0..<outputHeight {
                for u in 0..<outputWidth {
                    let du = Double(u) + 0.5 - u0, dv = Double(v) + 0.5 - v0
                    let x = centreX + a11 * du + a12 * dv - 0.5
                    let y = centreY + a21 * du + a22 * dv - 0.5
                    let value = Augmentation.bilinear(plane, height: height, width: width, x: x, y: y) * scale
                    out[v * outputWidth + u] = value
                    sum += Double(value)
                }
            }
            // Colour jitter, then normalisation.
            let mean = sum / Double(planeOut)
            let channelMean = normalization.mean[channel % normalization.mean.count]
            let channelStd = normalization.standardDeviation[channel % normalization.standardDeviation.count]
            for i in 0..<planeOut {
                let jittered = (Double(out[i]) - mean) * contrastFactor + mean + brightnessShift
                let shift = noise.isEmpty ? 0 : noiseStandardDeviation * Double(noise[channel * planeOut + i])
                out[i] = Float((jittered - channelMean) / channelStd + shift)
            }
        }
        // Random erasing of one rectangle in every channel.
        if g.uniform(at: Draw.erase.rawValue) < erasingProbability {
            let eraseArea = uniform(.eraseScale, erasingScale) * Double(planeOut)
            let eraseRatio = Double.exp(uniform(.eraseRatio, Double.log(0.3)...Double.log(3.3)))
            let h = min(outputHeight, max(1, Int((eraseArea * eraseRatio).squareRoot().rounded())))
            let w = min(outputWidth, max(1, Int((eraseArea / eraseRatio).squareRoot().rounded())))
            let top = Int(g.uniform(at: Draw.eraseY.rawValue) * Double(outputHeight - h + 1))
            let left = Int(g.uniform(at: Draw.eraseX.rawValue) * Double(outputWidth - w + 1))
            for channel in 0..<channels {
                for v in top..<(top + h) {
                    for u in left..<(left + w) { output[channel * planeOut + v * outputWidth + u] = 0 }
                }
            }
        }
    }

    /// Writes the view of a feature vector `source` (raw units) into `output` (same count).
    public func augmentVector(_ source: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>,
                              normalization: Normalization, key: ViewKey) {
        precondition(source.count == output.count, "vector view of \(output.count) for \(source.count) features")
        let g = key.generator
        for i in 0..<source.count {
            let mean = normalization.mean[i % normalization.mean.count]
            let std = normalization.standardDeviation[i % normalization.standardDeviation.count]
            var value = (Double(source[i]) * normalization.pixelScale - mean) / std
            if noiseStandardDeviation > 0 { value += noiseStandardDeviation * g.normal(at: Draw.noiseStart + UInt64(i)) }
            if featureMaskProbability > 0 && g.uniform(at: Draw.maskStart + UInt64(i)) < featureMaskProbability { value = 0 }
            output[i] = Float(value)
        }
    }

    /// Bilinear interpolation at pixel coordinates (x, y), zero outside the image.
    @inline(__always)
    static func bilinear(_ plane: UnsafePointer<Float>, height: Int, width: Int, x: Double, y: Double) -> Float {
        let x0 = Int(x.rounded(.down)), y0 = Int(y.rounded(.down))
        let fx = Float(x - Double(x0)), fy = Float(y - Double(y0))
        @inline(__always) func pixel(_ yy: Int, _ xx: Int) -> Float {
            (yy >= 0 && yy < height && xx >= 0 && xx < width) ? plane[yy * width + xx] : 0
        }
        let top = pixel(y0, x0) * (1 - fx) + pixel(y0, x0 + 1) * fx
        let bottom = pixel(y0 + 1, x0) * (1 - fx) + pixel(y0 + 1, x0 + 1) * fx
        return top * (1 - fy) + bottom * fy
    }
}
