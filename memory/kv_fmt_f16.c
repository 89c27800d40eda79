/* kv_fmt_f16.c — KV rows stored as f16, rounded to nearest even when written. */
#include <stdint.h>
#include <string.h>

#include "memory/kv_format.h"

static size_t row_bytes(int hd) { return hd > 0 ? (size_t)hd * sizeof(uint16_t) : 0; }

static void write_row(void *dst, const float *src, int hd)
{
    uint16_t *d = dst;
    for (int i = 0; i < hd; i++) d[i] = kv_f32_to_f16(src[i]);
}

static const float *read_rows(const void *src, int n, int hd, float *scratch)
{
    const uint16_t *s = src;
    for (size_t i = 0; i < (size_t)n * hd; i++) scratch[i] = kv_f16_to_f32(s[i]);
    return scratch;
}

const kv_format kv_fmt_f16 = {KV_FORMAT_VERSION, "f16", "IEEE fp16 (2 bytes per element; 11-bit mantissa, range +-65504)", row_bytes, write_row, read_rows};
