/* kv_fmt_int2.c — KV rows quantised to 2-bit codes per token: asymmetric min/max in groups of
 * KVQ_GROUP (32) elements, each with an fp16 scale and zero (kv_quant.h; the choice of group
 * is measured in docs/QAQ-DESIGN.md). A head_dim that is not a multiple of 32 ends with a
 * shorter group. */
#include "memory/kv_format.h"
#include "memory/kv_quant.h"

#define BITS 2

static size_t row_bytes(int hd) { return kvq_row_bytes(hd, BITS, KVQ_GROUP); }

static void write_row(void *dst, const float *src, int hd)
{
    kvq_row_encode(dst, src, hd, BITS, KVQ_GROUP);
}

static const float *read_rows(const void *src, int n, int hd, float *scratch)
{
    const unsigned char *s = src;
    const size_t rb = row_bytes(hd);
    for (int r = 0; r < n; r++) kvq_row_decode(scratch + (size_t)r * hd, s + r * rb, hd, BITS, KVQ_GROUP);
    return scratch;
}

const kv_format kv_fmt_int2 = {KV_FORMAT_VERSION, "int2",
    "2-bit codes per token, groups of 32 with fp16 scale+zero (3 bits per element)",
    row_bytes, write_row, read_rows};
