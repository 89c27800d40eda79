/* kv_quant.c — the uniform min/max group quantiser (kv_quant.h). */
#include "memory/kv_quant.h"

#include <math.h>
#include <string.h>

#include "memory/kv_format.h"

uint16_t kvq_f16_down(float x)
{
    uint16_t h = kv_f32_to_f16(x);
    if (kv_f16_to_f32(h) <= x) return h;
    if (h == 0x0000u || h == 0x8000u) return 0x8001u; /* x < 0 just below zero */
    return (h & 0x8000u) ? (uint16_t)(h + 1u) : (uint16_t)(h - 1u);
}

uint16_t kvq_f16_up(float x)
{
    uint16_t h = kv_f32_to_f16(x);
    if (kv_f16_to_f32(h) >= x) return h;
    if (h == 0x0000u || h == 0x8000u) return 0x0001u;
    return (h & 0x8000u) ? (uint16_t)(h - 1u) : (uint16_t)(h + 1u);
}

void kvq_params(float lo, float hi, int bits, uint16_t *scale, uint16_t *zero)
{
    uint16_t z = kvq_f16_down(lo);
    float zf = kv_f16_to_f32(z);
    float q = (hi - zf) / (float)((1u << bits) - 1u);
    if (q > KVQ_F16_MAX) q = KVQ_F16_MAX; /* only 1-bit codes over the full fp16 range */
    *zero = z;
    *scale = kvq_f16_up(q);
}

static inline float clampf16(float x)
{
    return x < -KVQ_F16_MAX ? -KVQ_F16_MAX : x > KVQ_F16_MAX ? KVQ_F16_MAX : x;
}

int kvq_range(const float *x, int n, float *lo, float *hi)
{
    /* 8 lanes of min / max / exponent-all-ones flags, so that the loop vectorises */
    float l8[8], h8[8];
    uint32_t bad8[8];
    for (int j = 0; j < 8; j++) { l8[j] = INFINITY; h8[j] = -INFINITY; bad8[j] = 0; }
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            uint32_t u;
            memcpy(&u, &x[i + j], sizeof u);
            bad8[j] |= (u & 0x7f800000u) == 0x7f800000u;
            float v = clampf16(x[i + j]);
            l8[j] = v < l8[j] ? v : l8[j];
            h8[j] = v > h8[j] ? v : h8[j];
        }
    for (; i < n; i++) {
        bad8[0] |= !isfinite(x[i]);
        float v = clampf16(x[i]);
        l8[0] = v < l8[0] ? v : l8[0];
        h8[0] = v > h8[0] ? v : h8[0];
    }
    float l = l8[0], h = h8[0];
    uint32_t bad = bad8[0];
    for (int j = 1; j < 8; j++) {
        l = l8[j] < l ? l8[j] : l;
        h = h8[j] > h ? h8[j] : h;
        bad |= bad8[j];
    }
    *lo = l;
    *hi = h;
    return bad != 0;
}

void kvq_pack(uint8_t *codes, const float *src, int n, int bits, uint16_t scale, uint16_t zero)
{
    const float s = kv_f16_to_f32(scale), z = kv_f16_to_f32(zero);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    const float top = (float)((1 << bits) - 1);
    uint8_t c[64];
    for (int at = 0; at < n; at += 64) { /* codes of 64 elements (one loop the compiler vectorises), then packed */
        int m = n - at < 64 ? n - at : 64;
        for (int i = 0; i < m; i++) {
            /* clamped to [0, top] first, so truncation is floor: round half up */
            float v = (clampf16(src[at + i]) - z) * inv + 0.5f;
            v = v < 0.0f ? 0.0f : v > top ? top : v;
            c[i] = (uint8_t)(int)v;
        }
        uint8_t *d = codes + (size_t)at * bits / 8;
        int i = 0;
        if (bits == 8) {
            memcpy(d, c, (size_t)m);
            continue;
        }
        memset(d, 0, ((size_t)m * bits + 7) / 8);
        if (bits == 4)
            for (; i + 2 <= m; i += 2) d[i >> 1] = (uint8_t)(c[i] | c[i + 1] << 4);
        else if (bits == 2)
            for (; i + 4 <= m; i += 4)
                d[i >> 2] = (uint8_t)(c[i] | c[i + 1] << 2 | c[i + 2] << 4 | c[i + 3] << 6);
        for (; i < m; i++) {
            size_t bit = (size_t)i * bits;
            d[bit >> 3] |= (uint8_t)(c[i] << (bit & 7));
            if ((bit & 7) + bits > 8) d[(bit >> 3) + 1] |= (uint8_t)(c[i] >> (8 - (bit & 7)));
        }
    }
}

unsigned kvq_code(const uint8_t *codes, int i, int bits)
{
    size_t bit = (size_t)i * bits;
    unsigned w = codes[bit >> 3];
    if ((bit & 7) + bits > 8) w |= (unsigned)codes[(bit >> 3) + 1] << 8;
    return (w >> (bit & 7)) & ((1u << bits) - 1u);
}

void kvq_unpack(float *dst, const uint8_t *codes, int n, int bits, uint16_t scale, uint16_t zero)
{
    const float s = kv_f16_to_f32(scale), z = kv_f16_to_f32(zero);
    if (isnan(s)) {
        for (int i = 0; i < n; i++) dst[i] = NAN;
        return;
    }
    int i = 0;
    switch (bits) {
    case 8:
        for (; i < n; i++) dst[i] = z + (float)codes[i] * s;
        return;
    case 4:
        for (; i + 2 <= n; i += 2) {
            unsigned b = codes[i >> 1];
            dst[i] = z + (float)(b & 15u) * s;
            dst[i + 1] = z + (float)(b >> 4) * s;
        }
        break;
    case 2:
        for (; i + 4 <= n; i += 4) {
            unsigned b = codes[i >> 2];
            dst[i] = z + (float)(b & 3u) * s;
            dst[i + 1] = z + (float)((b >> 2) & 3u) * s;
            dst[i + 2] = z + (float)((b >> 4) & 3u) * s;
            dst[i + 3] = z + (float)(b >> 6) * s;
        }
        break;
    default:
        break;
    }
    for (; i < n; i++) dst[i] = z + (float)kvq_code(codes, i, bits) * s;
}

size_t kvq_row_bytes(int hd, int bits, int group)
{
    if (hd <= 0 || bits < 1 || bits > 8 || group <= 0 || group % 8) return 0;
    size_t ng = ((size_t)hd + group - 1) / group;
    return ng * 2 * sizeof(uint16_t) + ((size_t)hd * bits + 7) / 8;
}

void kvq_row_encode(void *dst, const float *src, int hd, int bits, int group)
{
    uint8_t *meta = dst;
    int ng = (hd + group - 1) / group;
    uint8_t *codes = meta + (size_t)ng * 2 * sizeof(uint16_t);
    for (int g = 0; g < ng; g++) {
        const float *x = src + (size_t)g * group;
        int n = (hd - g * group < group ? hd - g * group : group);
        float lo, hi;
        int bad = kvq_range(x, n, &lo, &hi);
        uint16_t sz[2];
        uint8_t *c = codes + (size_t)g * group * bits / 8;
        if (bad) {
            sz[0] = KVQ_F16_NAN;
            sz[1] = 0;
            memset(c, 0, ((size_t)n * bits + 7) / 8);
        } else {
            kvq_params(lo, hi, bits, &sz[0], &sz[1]);
            kvq_pack(c, x, n, bits, sz[0], sz[1]);
        }
        memcpy(meta + (size_t)g * sizeof sz, sz, sizeof sz);
    }
}

void kvq_row_decode(float *dst, const void *src, int hd, int bits, int group)
{
    const uint8_t *meta = src;
    int ng = (hd + group - 1) / group;
    const uint8_t *codes = meta + (size_t)ng * 2 * sizeof(uint16_t);
    for (int g = 0; g < ng; g++) {
        uint16_t sz[2];
        memcpy(sz, meta + (size_t)g * sizeof sz, sizeof sz);
        int n = (hd - g * group < group ? hd - g * group : group);
        kvq_unpack(dst + (size_t)g * group, codes + (size_t)g * group * bits / 8, n, bits, sz[0],
                   sz[1]);
    }
}
