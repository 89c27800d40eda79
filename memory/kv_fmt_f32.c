/* kv_fmt_f32.c — KV rows stored as fp32 (exact; the reference every other format is measured
 * against). read_rows points into the store: no copy. */
#include <string.h>

#include "memory/kv_format.h"

static size_t row_bytes(int hd) { return hd > 0 ? (size_t)hd * sizeof(float) : 0; }

static void write_row(void *dst, const float *src, int hd)
{
    memcpy(dst, src, (size_t)hd * sizeof(float));
}

static const float *read_rows(const void *src, int n, int hd, float *scratch)
{
    (void)n; (void)hd; (void)scratch;
    return src;
}

const kv_format kv_fmt_f32 = {KV_FORMAT_VERSION, "f32", "fp32 (4 bytes per element, exact)",
                              row_bytes, write_row, read_rows};
