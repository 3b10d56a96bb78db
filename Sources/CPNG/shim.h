// C boundary for libpng 1.6: whole-file decoding through the simplified API (png_image),
// which reports errors in `image.message` instead of longjmp-ing through the caller.
#ifndef ANTICOLLAPSE_CPNG_SHIM_H
#define ANTICOLLAPSE_CPNG_SHIM_H
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/// Decodes the PNG file at `path` to 8-bit samples, one to four a pixel (grey, grey+alpha,
/// RGB, RGBA, as the file holds them; palettes expanded; alpha straight, not premultiplied).
/// 16-bit samples are taken as sRGB-encoded (not linear) and scaled to 8 bits, v·255/65535.
///
/// On success returns 0 and sets `*pixels` (rows top-down, `*width · *channels` bytes a row;
/// the caller frees it with `free`), `*width`, `*height` and `*channels`. On failure returns
/// 1 and writes libpng's reason into `message` (capacity `capacity`, NUL-terminated).
static inline int shim_png_decode(const char *path, unsigned char **pixels, unsigned *width, unsigned *height,
                                  unsigned *channels, char *message, size_t capacity) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    *pixels = NULL;
    if (!png_image_begin_read_from_file(&image, path)) {
        snprintf(message, capacity, "%s", image.message);
        png_image_free(&image);
        return 1;
    }
    image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    // 8-bit samples with the file's colour and alpha (no colour map, no linear 16-bit).
    image.format &= (PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA);
    size_t size = PNG_IMAGE_SIZE(image);
    unsigned char *buffer = (unsigned char *)malloc(size > 0 ? size : 1);
    if (buffer == NULL) {
        snprintf(message, capacity, "out of memory for %u×%u pixels", image.width, image.height);
        png_image_free(&image);
        return 1;
    }
    if (!png_image_finish_read(&image, NULL, buffer, 0, NULL)) {
        snprintf(message, capacity, "%s", image.message);
        png_image_free(&image);
        free(buffer);
        return 1;
    }
    *pixels = buffer;
    *width = image.width;
    *height = image.height;
    *channels = PNG_IMAGE_SAMPLE_CHANNELS(image.format);
    return 0;
}
#endif
