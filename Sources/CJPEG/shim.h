// C boundary for libjpeg(-turbo): whole-file decoding. libjpeg reports fatal errors through
// `error_exit`, which must not return; here it longjmps back into `shim_jpeg_decode` alone,
// so Swift never sees a longjmp, only a status and a message.
#ifndef ANTICOLLAPSE_CJPEG_SHIM_H
#define ANTICOLLAPSE_CJPEG_SHIM_H
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

/// libjpeg's error manager with the jump target of one decode and the first message.
struct shim_jpeg_error {
    struct jpeg_error_mgr manager;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    /// The first warning that means the data ended early (truncated file), or 0.
    int truncated;
};

/// A fatal error: keep libjpeg's message and jump back to the decode call.
static void shim_jpeg_error_exit(j_common_ptr info) {
    struct shim_jpeg_error *error = (struct shim_jpeg_error *)info->err;
    (*info->err->format_message)(info, error->message);
    longjmp(error->jump, 1);
}

/// Warnings (level -1) and trace messages: nothing is printed; a warning that the data ended
/// early (libjpeg fills the rest with grey and carries on) is kept, to be reported as an error.
static void shim_jpeg_emit_message(j_common_ptr info, int level) {
    struct shim_jpeg_error *error = (struct shim_jpeg_error *)info->err;
    if (level < 0) {
        int code = info->err->msg_code;
        if (!error->truncated && (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER)) {
            (*info->err->format_message)(info, error->message);
            error->truncated = 1;
        }
        info->err->num_warnings++;
    }
}

/// Decodes the baseline or progressive JPEG file at `path` to 8-bit grey (1 channel, for a
/// greyscale file) or RGB (3 channels, for anything else libjpeg can convert; CMYK cannot).
///
/// On success returns 0 and sets `*pixels` (rows top-down, `*width · *channels` bytes a row;
/// the caller frees it with `free`), `*width`, `*height` and `*channels`. On failure — the file
/// cannot be opened, is not a JPEG, is corrupt or ends early — returns 1 and writes the reason
/// into `message` (capacity `capacity`, NUL-terminated).
static inline int shim_jpeg_decode(const char *path, unsigned char **pixels, unsigned *width, unsigned *height,
                                   unsigned *channels, char *message, size_t capacity) {
    *pixels = NULL;
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        snprintf(message, capacity, "cannot open: %s", strerror(errno));
        return 1;
    }
    struct jpeg_decompress_struct info;
    struct shim_jpeg_error error;
    // Set before the jump target and read after a jump: volatile.
    unsigned char *volatile buffer = NULL;
    memset(&error, 0, sizeof error);
    info.err = jpeg_std_error(&error.manager);
    error.manager.error_exit = shim_jpeg_error_exit;
    error.manager.emit_message = shim_jpeg_emit_message;
    if (setjmp(error.jump)) {
        // Every failure after this point: a libjpeg error, a truncated file, no memory.
        snprintf(message, capacity, "%s%s", error.message, error.truncated ? " (the file is truncated)" : "");
        jpeg_destroy_decompress(&info);
        fclose(file);
        free(buffer);
        return 1;
    }
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, file);
    jpeg_read_header(&info, TRUE);
    info.out_color_space = info.jpeg_color_space == JCS_GRAYSCALE ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&info);
    size_t stride = (size_t)info.output_width * (size_t)info.output_components;
    buffer = (unsigned char *)malloc(stride * info.output_height + 1);
    if (buffer == NULL) {
        snprintf(error.message, sizeof error.message, "out of memory for %u×%u pixels", info.output_width, info.output_height);
        longjmp(error.jump, 1);
    }
    while (info.output_scanline < info.output_height && !error.truncated) {
        JSAMPROW row = buffer + stride * info.output_scanline;
        jpeg_read_scanlines(&info, &row, 1);
    }
    // A file that ends early is an error (libjpeg would return the rest as grey).
    if (!error.truncated) jpeg_finish_decompress(&info);
    if (error.truncated) longjmp(error.jump, 1);
    *width = info.output_width;
    *height = info.output_height;
    *channels = (unsigned)info.output_components;
    jpeg_destroy_decompress(&info);
    fclose(file);
    *pixels = buffer;
    return 0;
}
#endif
