// Channel conversion and resizing of 8-bit images, as `dataset shard` applies them to decoded
// files.

extension Image8 {
    /// The image with `channels` channels: grey becomes RGB by repeating the value; RGB becomes
    /// grey by ITU-R BT.601 luma, (299 R + 587 G + 114 B) / 1000 rounded, as PIL's
    /// `convert("L")` computes it.
    /// - Throws: ``ImagingError/invalid(_:)`` when `channels` is not 1 or 3.
    public func converted(toChannels target: Int) throws -> Image8 {
        guard target == 1 || target == 3 else { throw ImagingError.invalid("\(target) channels; images have 1 (grey) or 3 (RGB)") }
        if target == channels { return self }
        let count = width * height
        var out = [UInt8](repeating: 0, count: count * target)
        if target == 3 {
            for p in 0..<count { let v = pixels[p]; out[3 * p] = v; out[3 * p + 1] = v; out[3 * p + 2] = v }
        } else {
            for p in 0..<count {
                let luma = 299 * Int(pixels[3 * p]) + 587 * Int(pixels[3 * p + 1]) + 114 * Int(pixels[3 * p + 2])
                out[p] = UInt8((luma + 500) / 1000)
            }
        }
        return try Image8(width: width, height: height, channels: target, pixels: out)
    }

    /// The image resampled to `newHeight × newWidth`, each axis on its own: an axis that
    /// shrinks takes area averages (each output pixel the mean of the input it covers, partly
    /// covered pixels weighted by their share), an axis that grows is interpolated linearly
    /// between pixel centres (half-pixel alignment, edges clamped), an axis of equal size is
    /// copied. Values are rounded to the nearest integer.
    /// - Throws: ``ImagingError/invalid(_:)`` when a size is not positive.
    public func resized(height newHeight: Int, width newWidth: Int) throws -> Image8 {
        guard newHeight > 0, newWidth > 0 else { throw ImagingError.invalid("image size \(newHeight)×\(newWidth) must be positive") }
        if newHeight == height && newWidth == width { return self }
        let columns = Taps(Self.resamplingWeights(from: width, to: newWidth))
        let rows = Taps(Self.resamplingWeights(from: height, to: newHeight))
        let c = channels
        // Along rows first (height × newWidth), then along columns.
        var horizontal = [Float](repeating: 0, count: height * newWidth * c)
        for y in 0..<height {
            for x in 0..<newWidth {
                for k in 0..<c {
                    var sum: Float = 0
                    for t in columns.range(x) {
                        sum += columns.weights[t] * Float(pixels[(y * width + columns.indices[t]) * c + k])
                    }
                    horizontal[(y * newWidth + x) * c + k] = sum
                }
            }
        }
        let rowValues = newWidth * c
        var out = [UInt8](repeating: 0, count: newHeight * rowValues)
        for y in 0..<newHeight {
            for i in 0..<rowValues {
                var sum: Float = 0
                for t in rows.range(y) { sum += rows.weights[t] * horizontal[rows.indices[t] * rowValues + i] }
                out[y * rowValues + i] = UInt8(max(0, min(255, sum.rounded())))
            }
        }
        return try Image8(width: newWidth, height: newHeight, channels: c, pixels: out)
    }

    /// Resampling weights laid out flat: output pixel `i` takes `indices[t]` with `weights[t]`
    /// for `t` in `range(i)` (no array per pixel in the inner loops).
    private struct Taps {
        var indices: [Int] = [], weights: [Float] = [], starts: [Int] = [0]

        init(_ perPixel: [[(index: Int, weight: Float)]]) {
            for taps in perPixel {
                indices += taps.map(\.index)
                weights += taps.map(\.weight)
                starts.append(indices.count)
            }
        }

        @inline(__always) func range(_ i: Int) -> Range<Int> { starts[i]..<starts[i + 1] }
    }

    /// The input pixels and weights of each output pixel along one axis of `source` pixels
    /// resampled to `target`: area averages when shrinking, linear interpolation when growing.
    static func resamplingWeights(from source: Int, to target: Int) -> [[(index: Int, weight: Float)]] {
        if source == target { return (0..<source).map { [($0, Float(1))] } }
        let scale = Double(source) / Double(target)
        return (0..<target).map { i in
            if target < source {
                // Output pixel i covers input [i·scale, (i+1)·scale).
                let low = Double(i) * scale, high = Double(i + 1) * scale
                return (Int(low)..<min(source, Int(high.rounded(.up)))).compactMap { j in
                    let overlap = min(Double(j + 1), high) - max(Double(j), low)
                    return overlap > 0 ? (j, Float(overlap / scale)) : nil
                }
            }
            let x = min(max((Double(i) + 0.5) * scale - 0.5, 0), Double(source - 1))
            let j = Int(x), fraction = x - Double(j)
            return fraction > 0 ? [(j, Float(1 - fraction)), (j + 1, Float(fraction))] : [(j, Float(1))]
        }
    }

    /// The pixels channel by channel (`channels × height × width`), as shards store images.
    public var channelsFirst: [UInt8] {
        let count = width * height
        if channels == 1 { return pixels }
        var out = [UInt8](repeating: 0, count: count * channels)
        for p in 0..<count {
            for k in 0..<channels { out[k * count + p] = pixels[p * channels + k] }
        }
        return out
    }
}
