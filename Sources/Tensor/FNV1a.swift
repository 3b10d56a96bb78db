/// The 64-bit FNV-1a hash: stable across processes and runs (unlike `Hasher`), for stream
/// names, checkpoint checksums and parameter fingerprints.
public struct FNV1a: Sendable, Equatable {
    /// The hash of everything mixed in so far.
    public var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    /// Mixes in `bytes`.
    @inlinable
    public mutating func mix<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        var h = value
        for byte in bytes { h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        value = h
    }

    /// Mixes in the UTF-8 of `text`.
    public mutating func mix(_ text: String) { mix(text.utf8) }

    /// Mixes in the little-endian bytes of `integer`.
    public mutating func mix(_ integer: Int64) { withUnsafeBytes(of: integer.littleEndian) { mix($0) } }

    /// Mixes in the bit pattern of every scalar, one 64-bit word each (how a fingerprint of
    /// parameters is taken).
    public mutating func mixBitPatterns(_ scalars: UnsafeBufferPointer<Float>) {
        var h = value
        for scalar in scalars { h = (h ^ UInt64(scalar.bitPattern)) &* 0x0000_0100_0000_01b3 }
        value = h
    }

    /// The hash of the UTF-8 of `text`.
    public static func hash(_ text: String) -> UInt64 {
        var hash = FNV1a()
        hash.mix(text)
        return hash.value
    }
}
