/* qaq_record.c — QAQ's self-describing quantised row (qaq.h): header, fp16 outliers, codes. */
#include <math.h>
#include <string.h>

#include "core/common.h"
#include "memory/kv_format.h"
#include "memory/kv_quant.h"
#include "memory/qaq.h"

#define QAQ_RECORD_MAX_HD 256

size_t qaq_record_bytes(int hd, int bits, int n_outliers)
{
    if (hd < 1 || hd > QAQ_RECORD_MAX_HD || bits < 1 || bits > 8 || n_outliers < 0 ||
        n_outliers > hd)
        return 0;
    return QAQ_RECORD_HEADER + (size_t)n_outliers * QAQ_OUTLIER_BYTES +
           ((size_t)hd * bits + 7) / 8;
}

size_t qaq_record_max_bytes(int hd, int bits, int k) { return qaq_record_bytes(hd, bits, 2 * k); }

double qaq_ratio(int hd, size_t record_bytes)
{
    return record_bytes ? 2.0 * hd / (double)record_bytes : 0.0;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

int qaq_encode(void *dst, size_t cap, const float *src, int hd, int bits, int k,
               qaq_row_info *info)
{
    if (hd < 1 || hd > QAQ_RECORD_MAX_HD || bits < 1 || bits > 8 || k < 0 || 2 * k > hd - 1)
        return kvs_error(KVS_EINVAL, "qaq record: head dim %d, %d bits, %d outliers per side",
                         hd, bits, k);
    float x[QAQ_RECORD_MAX_HD];
    int bad = 0;
    for (int i = 0; i < hd; i++) {
        float v = src[i];
        if (!isfinite(v)) bad = 1;
        x[i] = v < -KVQ_F16_MAX ? -KVQ_F16_MAX : v > KVQ_F16_MAX ? KVQ_F16_MAX : v;
    }
    int n_out = bad ? 0 : 2 * k;
    size_t bytes = qaq_record_bytes(hd, bits, n_out);
    if (cap < bytes)
        return kvs_error(KVS_ERANGE, "qaq record: %zu bytes needed, %zu given", bytes, cap);
    uint8_t *p = dst;
    uint8_t *codes = p + QAQ_RECORD_HEADER + (size_t)n_out * QAQ_OUTLIER_BYTES;
    uint16_t scale = KVQ_F16_NAN, zero = 0;
    float lo = 0, hi = 0;
    if (bad) {
        memset(codes, 0, ((size_t)hd * bits + 7) / 8);
    } else {
        int idx[QAQ_RECORD_MAX_HD];
        int rc = qaq_outliers(x, hd, k, idx, &lo, &hi);
        if (rc) return rc;
        kvq_params(lo, hi, bits, &scale, &zero);
        kvq_pack(codes, x, hd, bits, scale, zero);
        for (int j = 0; j < n_out; j++) {
            uint8_t *o = p + QAQ_RECORD_HEADER + (size_t)j * QAQ_OUTLIER_BYTES;
            o[0] = (uint8_t)idx[j];
            put16(o + 1, kv_f32_to_f16(x[idx[j]]));
        }
    }
    p[0] = (uint8_t)bits;
    p[1] = (uint8_t)n_out;
    put16(p + 2, scale);
    put16(p + 4, zero);
    if (info) *info = (qaq_row_info){lo, hi, n_out, bytes};
    return (int)bytes;
}

int qaq_record_size(const void *src, size_t len, int hd)
{
    const uint8_t *p = src;
    if (len < QAQ_RECORD_HEADER) return kvs_error(KVS_EFORMAT, "qaq record: %zu bytes", len);
    size_t b = qaq_record_bytes(hd, p[0], p[1]);
    if (!b)
        return kvs_error(KVS_EFORMAT, "qaq record: %d bits, %d outliers, head dim %d", p[0], p[1],
                         hd);
    return (int)b;
}

int qaq_decode(const void *src, size_t len, int hd, float *dst)
{
    int size = qaq_record_size(src, len, hd);
    if (size < 0) return size;
    if ((size_t)size > len)
        return kvs_error(KVS_EFORMAT, "qaq record: %d bytes, %zu given", size, len);
    const uint8_t *p = src;
    int bits = p[0], n_out = p[1];
    const uint8_t *out = p + QAQ_RECORD_HEADER;
    for (int j = 0; j < n_out; j++)
        if (out[(size_t)j * QAQ_OUTLIER_BYTES] >= hd)
            return kvs_error(KVS_EFORMAT, "qaq record: outlier index %d >= head dim %d",
                             out[(size_t)j * QAQ_OUTLIER_BYTES], hd);
    uint16_t scale = get16(p + 2);
    kvq_unpack(dst, out + (size_t)n_out * QAQ_OUTLIER_BYTES, hd, bits, scale, get16(p + 4));
    if (!isnan(kv_f16_to_f32(scale)))
        for (int j = 0; j < n_out; j++) {
            const uint8_t *o = out + (size_t)j * QAQ_OUTLIER_BYTES;
            dst[o[0]] = kv_f16_to_f32(get16(o + 1));
        }
    return size;
}
