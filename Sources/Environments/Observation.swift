/// The resolution and channels at which a model sees frames.
///
/// A native frame (`frameSize²`, RGB) becomes an observation by area averaging as PyTorch's
/// `adaptive_avg_pool2d` / `F.interpolate(mode="area")` does — output pixel `i` the plain mean
/// of native pixels `⌊i·N/n⌋ ..< ⌈(i+1)·N/n⌉` in each direction (224 → 64: windows of 4
/// pixels, every other pair of neighbours sharing one) — rounded to `uint8`, then, for one
/// channel, the luma `0.299 R + 0.587 G + 0.114 B` (PIL's "L").
public struct ObservationFormat: Sendable, Equatable, CustomStringConvertible {
    /// The side in pixels.
    public var size: Int
    /// 3 (RGB) or 1 (grey).
    public var channels: Int

    /// - Parameters:
    ///   - size: the side in pixels (default 64).
    ///   - channels: 3 or 1 (default 3).
    /// - Throws: ``EnvironmentError/invalid(_:)`` for a size below 1 or other channel counts.
    public init(size: Int = 64, channels: Int = 3) throws {
        guard size >= 1 else { throw EnvironmentError.invalid("observation size \(size) must be at least 1") }
        guard channels == 1 || channels == 3 else { throw EnvironmentError.invalid("observation channels \(channels) must be 1 or 3") }
        self.size = size; self.channels = channels
    }

    public var description: String { "\(size)×\(size)×\(channels)" }

    /// The values in one observation (`size · size · channels`).
    public var valueCount: Int { size * size * channels }

    /// The observation of `frame` (`frameSize × frameSize × 3`, HWC), HWC.
    public func observation(of frame: [UInt8], frameSize: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: valueCount)
        observe(frame, frameSize: frameSize, into: &out[...])
        return out
    }

    /// The native rows (or columns) that output row (or column) `i` averages.
    func window(_ i: Int, frameSize: Int) -> Range<Int> {
        (i * frameSize / size)..<(((i + 1) * frameSize + size - 1) / size)
    }

    /// Writes the observation of `frame` into `output` (``valueCount`` values, HWC).
    /// - Parameters:
    ///   - outputRows, outputColumns: the output pixels to compute (default: all); the others
    ///     are left as they are (see ``observe(_:frameSize:changed:background:into:)``).
    public func observe(_ frame: [UInt8], frameSize: Int, into output: inout ArraySlice<UInt8>,
                        outputRows: Range<Int>? = nil, outputColumns: Range<Int>? = nil) {
        precondition(frame.count == frameSize * frameSize * 3 && output.count == valueCount)
        let windows = (0..<size).map { window($0, frameSize: frameSize) }
        var rgb = SIMD3<Float>.zero
        for oy in outputRows ?? 0..<size {
            let rows = windows[oy]
            for ox in outputColumns ?? 0..<size {
                let columns = windows[ox]
                rgb = .zero
                for y in rows {
                    for x in columns {
                        let p = (y * frameSize + x) * 3
                        rgb += SIMD3(Float(frame[p]), Float(frame[p + 1]), Float(frame[p + 2]))
                    }
                }
                rgb /= Float(rows.count * columns.count)
                let o = output.startIndex + (oy * size + ox) * channels
                if channels == 3 {
                    for c in 0..<3 { output[o + c] = UInt8(rgb[c].rounded()) }
                } else {
                    let rounded = (rgb.x.rounded() * 0.299 + rgb.y.rounded() * 0.587 + rgb.z.rounded() * 0.114).rounded()
                    output[o] = UInt8(min(rounded, 255))
                }
            }
        }
    }
}

extension ObservationFormat {
    /// `[height, width, channels]` of an observation.
    public var shape: [Int] { [size, size, channels] }

    /// The output rows (or columns) whose windows meet native rows (or columns) `native`.
    func outputRange(covering native: ClosedRange<Int>, frameSize: Int) -> Range<Int> {
        let first = (0..<size).first { window($0, frameSize: frameSize).upperBound > native.lowerBound } ?? size
        let end = (0..<size).last { window($0, frameSize: frameSize).lowerBound <= native.upperBound }.map { $0 + 1 } ?? first
        return first..<max(first, end)
    }

    /// The observation of `frame`, resampling only the pixels whose windows meet `changed`
    /// and copying the rest from `background` (the observation of the frame without the state).
    /// Equal to ``observe(_:frameSize:into:outputRows:outputColumns:)`` of the whole frame when
    /// `frame` differs from the background only inside `changed`.
    public func observe(_ frame: [UInt8], frameSize: Int, changed: (rows: ClosedRange<Int>, columns: ClosedRange<Int>),
                        background: [UInt8], into output: inout ArraySlice<UInt8>) {
        output.replaceSubrange(output.indices, with: background)
        observe(frame, frameSize: frameSize, into: &output, outputRows: outputRange(covering: changed.rows, frameSize: frameSize),
                outputColumns: outputRange(covering: changed.columns, frameSize: frameSize))
    }

    /// Draws observations of `environment`'s states at this format (native frame, then area
    /// average): the renderer a ``Datasets/ClipLoader`` uses for `.rendered` frames.
    public func renderer<E: Environment>(for environment: E) -> @Sendable (ArraySlice<Float>, inout ArraySlice<UInt8>) -> Void {
        let format = self
        // The background's observation is made once; each state then resamples only what it changes.
        let background = environment.background.map { format.observation(of: $0, frameSize: E.frameSize) }
        return { state, output in
            var frame = [UInt8]()
            environment.render(state: state, into: &frame)
            if let background {
                format.observe(frame, frameSize: E.frameSize, changed: environment.changedRegion(state: state),
                               background: background, into: &output)
            } else {
                format.observe(frame, frameSize: E.frameSize, into: &output)
            }
        }
    }
}
