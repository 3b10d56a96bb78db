import CZlib

/// An 8-bit image in memory: rows of pixels, each `channels` values (1 grey, 3 RGB), HWC.
public struct Image8: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// 1 (grey) or 3 (RGB).
    public let channels: Int
    /// `height × width × channels` values, row-major.
    public var pixels: [UInt8]

    /// - Throws: ``ImagingError`` when the sizes do not fit the pixels or the channel count is not 1 or 3.
    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        guard width > 0, height > 0 else { throw ImagingError.invalid("image size \(width)×\(height) must be positive") }
        guard channels == 1 || channels == 3 else { throw ImagingError.invalid("\(channels) channels; PNG writing supports 1 (grey) or 3 (RGB)") }
        guard pixels.count == width * height * channels else {
            throw ImagingError.invalid("\(pixels.count) values for a \(width)×\(height)×\(channels) image")
        }
        self.width = width; self.height = height; self.channels = channels; self.pixels = pixels
    }

    /// Images side by side, separated by `gap` columns of `background`; all must share height and channels.
    public static func horizontalStrip(_ images: [Image8], gap: Int = 2, background: UInt8 = 255) throws -> Image8 {
        guard let first = images.first, images.allSatisfy({ $0.height == first.height && $0.channels == first.channels }) else {
            throw ImagingError.invalid("a strip needs at least one image, all of one height and channel count")
        }
        let width = images.map(\.width).reduce(0, +) + gap * (images.count - 1)
        var pixels = [UInt8](repeating: background, count: width * first.height * first.channels)
        var x0 = 0
        for image in images {
            for y in 0..<image.height {
                let source = y * image.width * image.channels
                let target = (y * width + x0) * image.channels
                pixels.replaceSubrange(target..<(target + image.width * image.channels),
                                       with: image.pixels[source..<(source + image.width * image.channels)])
            }
            x0 += image.width + gap
        }
        return try Image8(width: width, height: first.height, channels: first.channels, pixels: pixels)
    }
}

/// A problem making an image or its file.
public enum ImagingError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    /// A zlib call failed with this status.
    case zlib(call: String, status: Int32)
    /// An image file could not be decoded: the file and the decoder's reason.
    case decoding(path: String, reason: String)

    public var description: String {
        switch self {
        case let .invalid(text): return text
        case let .zlib(call, status): return "\(call) failed with zlib status \(status)"
        case let .decoding(path, reason): return "\(path): \(reason)"
        }
    }
}

/// Encodes 8-bit grey or RGB images (and, for tests, raw samples of any colour type without a
/// palette) as PNG (ISO/IEC 15948): signature, IHDR, one IDAT of the
/// zlib-deflated scanlines (filter type 0, none), IEND; every chunk with its CRC-32.
public enum PNGEncoder {
    /// The PNG bytes of `image`.
    /// - Parameter level: the deflate level 0–9 (default 6).
    public static func encode(_ image: Image8, level: Int32 = 6) throws -> [UInt8] {
        try encode(samples: image.pixels, width: image.width, height: image.height,
                   colourType: image.channels == 1 ? 0 : 2, bitDepth: 8, level: level)
    }

    /// The PNG bytes of raw samples: `height` rows of `width` pixels of colour type
    /// `colourType` (0 grey, 2 RGB, 4 grey + alpha, 6 RGBA) at `bitDepth` 8 or 16 (16-bit
    /// samples as big-endian byte pairs), no interlace.
    /// - Throws: ``ImagingError/invalid(_:)`` when the samples do not fill the image.
    public static func encode(samples: [UInt8], width: Int, height: Int, colourType: UInt8, bitDepth: UInt8,
                              level: Int32 = 6) throws -> [UInt8] {
        let channels: [UInt8: Int] = [0: 1, 2: 3, 4: 2, 6: 4]
        guard let perPixel = channels[colourType], bitDepth == 8 || bitDepth == 16, width > 0, height > 0 else {
            throw ImagingError.invalid("PNG colour type \(colourType) at \(bitDepth) bits is not one this writes (0, 2, 4, 6 at 8 or 16)")
        }
        let rowBytes = width * perPixel * Int(bitDepth) / 8
        guard samples.count == rowBytes * height else {
            throw ImagingError.invalid("\(samples.count) bytes for \(height) rows of \(rowBytes)")
        }
        var header: [UInt8] = []
        append32(UInt32(width), to: &header)
        append32(UInt32(height), to: &header)
        // Bit depth; colour type; deflate; adaptive filtering; no interlace.
        header += [bitDepth, colourType, 0, 0, 0]
        var scanlines = [UInt8]()
        scanlines.reserveCapacity(height * (rowBytes + 1))
        for y in 0..<height {
            scanlines.append(0)   // filter type 0, none
            scanlines += samples[(y * rowBytes)..<((y + 1) * rowBytes)]
        }
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        appendChunk("IHDR", header, to: &png)
        appendChunk("IDAT", try deflate(scanlines, level: level), to: &png)
        appendChunk("IEND", [], to: &png)
        return png
    }

    /// `bytes` as one zlib stream.
    public static func deflate(_ bytes: [UInt8], level: Int32 = 6) throws -> [UInt8] {
        var capacity = shim_compress_bound(UInt(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(capacity))
        let status = shim_compress(&out, &capacity, bytes, UInt(bytes.count), level)
        guard status == Z_OK else { throw ImagingError.zlib(call: "compress2", status: status) }
        return Array(out[..<Int(capacity)])
    }

    /// The CRC-32 of `bytes` (the PNG chunk checksum).
    public static func crc32(_ bytes: [UInt8]) -> UInt32 {
        UInt32(truncatingIfNeeded: shim_crc32(0, bytes, UInt32(bytes.count)))
    }

    private static func appendChunk(_ type: String, _ data: [UInt8], to png: inout [UInt8]) {
        append32(UInt32(data.count), to: &png)
        let body = Array(type.utf8) + data
        png += body
        append32(crc32(body), to: &png)
    }

    private static func append32(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }
}
