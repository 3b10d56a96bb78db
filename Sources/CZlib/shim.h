// C boundary for zlib: deflate (zlib stream format) and CRC-32, as PNG needs them.
#ifndef ANTICOLLAPSE_CZLIB_SHIM_H
#define ANTICOLLAPSE_CZLIB_SHIM_H
#include <zlib.h>

/// Compresses `length` bytes of `source` into `destination` (capacity `*destinationLength`,
/// at least `shim_compress_bound(length)`) as one zlib stream; sets `*destinationLength` to
/// the bytes written. Returns zlib's status (Z_OK on success).
static inline int shim_compress(unsigned char *destination, unsigned long *destinationLength,
                                const unsigned char *source, unsigned long length, int level) {
    uLongf written = *destinationLength;
    int status = compress2(destination, &written, source, length, level);
    *destinationLength = written;
    return status;
}

/// An upper bound of the compressed size of `length` bytes.
static inline unsigned long shim_compress_bound(unsigned long length) { return compressBound(length); }

/// The CRC-32 (ISO 3309, as PNG chunks use) of `length` bytes, continuing from `crc`.
static inline unsigned long shim_crc32(unsigned long crc, const unsigned char *bytes, unsigned int length) {
    return crc32(crc, bytes, length);
}
#endif
