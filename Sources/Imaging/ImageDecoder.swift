// Decoding PNG and JPEG files through libpng and libjpeg(-turbo). The C calls and their
// pointers stay in this file; callers get an `Image8` or a thrown `ImagingError`.
import CJPEG
import CPNG
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The image file formats ``ImageDecoder`` reads.
public enum ImageFileFormat: String, Sendable, CaseIterable {
    case png, jpeg

    /// The format whose signature starts `bytes`, or nil.
    public init?(signature bytes: [UInt8]) {
        if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) {
            self = .png
        } else if bytes.starts(with: [0xFF, 0xD8, 0xFF]) {
            self = .jpeg
        } else {
            return nil
        }
    }

    /// Whether a file name's extension is one of an image this reads (`.png`, `.jpg`, `.jpeg`,
    /// any case).
    public static func hasImageExtension(_ name: String) -> Bool {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return false }
        return ["png", "jpg", "jpeg"].contains(name[name.index(after: dot)...].lowercased())
    }
}

/// Decodes PNG and JPEG files.
public enum ImageDecoder {
    /// Decodes the PNG or JPEG file at `path` (chosen by its first bytes, not its name) to 8-bit
    /// grey or RGB pixels; an alpha channel is dropped (the colour values are kept as stored,
    /// not blended onto a background). 16-bit PNG samples are scaled to 8 bits (v·255/65535).
    ///
    /// - Throws: ``ImagingError/decoding(path:reason:)`` naming the file, with the library's
    ///   reason, when the file cannot be read, is neither PNG nor JPEG, is corrupt or truncated.
    public static func decode(_ path: String) throws -> Image8 {
        let format = try fileFormat(path)
        var pointer: UnsafeMutablePointer<UInt8>?
        var width: UInt32 = 0, height: UInt32 = 0, channels: UInt32 = 0
        var message = [CChar](repeating: 0, count: 512)
        let status: Int32
        switch format {
        case .png: status = shim_png_decode(path, &pointer, &width, &height, &channels, &message, message.count)
        case .jpeg: status = shim_jpeg_decode(path, &pointer, &width, &height, &channels, &message, message.count)
        }
        // Owned here: malloc'd by the shim on success, freed once copied.
        defer { free(pointer) }
        guard status == 0, let pointer else {
            let reason = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ImagingError.decoding(path: path, reason: "\(format == .png ? "libpng" : "libjpeg"): \(reason)")
        }
        let (w, h, c) = (Int(width), Int(height), Int(channels))
        guard w > 0, h > 0, (1...4).contains(c) else {
            throw ImagingError.decoding(path: path, reason: "decoded to \(w)×\(h) with \(c) channels")
        }
        let stored = UnsafeBufferPointer(start: pointer, count: w * h * c)
        // Grey+alpha and RGBA lose their last sample.
        let kept = c == 2 || c == 4 ? c - 1 : c
        let pixels: [UInt8]
        if kept == c {
            pixels = Array(stored)
        } else {
            pixels = [UInt8](unsafeUninitializedCapacity: w * h * kept) { buffer, initialized in
                for p in 0..<(w * h) {
                    for k in 0..<kept { buffer[p * kept + k] = stored[p * c + k] }
                }
                initialized = w * h * kept
            }
        }
        return try Image8(width: w, height: h, channels: kept, pixels: pixels)
    }

    /// The format of the file at `path` by its first eight bytes.
    static func fileFormat(_ path: String) throws -> ImageFileFormat {
        guard let file = fopen(path, "rb") else {
            throw ImagingError.decoding(path: path, reason: "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var signature = [UInt8](repeating: 0, count: 8)
        let count = fread(&signature, 1, 8, file)
        guard let format = ImageFileFormat(signature: Array(signature.prefix(count))) else {
            let start = signature.prefix(count).map { String($0, radix: 16, uppercase: true) }.joined(separator: " ")
            throw ImagingError.decoding(path: path, reason: count == 0 ? "empty file"
                                        : "neither PNG nor JPEG (the file starts with bytes \(start))")
        }
        return format
    }
}
