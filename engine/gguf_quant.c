/* gguf_quant.c — tensor type table, fp16/bf16 conversion and dequantisation to fp32.
 *
 * Every block format below was re-derived from the `gguf` Python package's dequantiser
 * (gguf/quants.py), which is the reference the tests compare against bit for bit. The
 * arithmetic is done in fp32 in the same order as numpy does it (e.g. Q4_1 is `(d*q) + m`,
 * two roundings), so results match exactly as long as the compiler does not contract a*b+c
 * into an FMA; the build uses -std=c11, where GCC's default is -ffp-contract=off.
 *
 * All block data is read byte-wise (memcpy for the fp16 scales): blocks are 18 to 292 bytes
 * long, so scales are not aligned and a cast would be undefined
 * behaviour. GGUF is little-endian; so is every host we build for (checked below). */
#include "gguf.h"
#include "core/common.h"

#include <stdio.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf_quant.c assumes a little-endian host (GGUF data is little-endian)"
#endif

#define GGUF_QK 32   /* elements per block in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 */
#define GGUF_QK_K 256 /* elements per super-block in the K-quants */

/* ---- fp16 / bf16 -------------------------------------------------------------------------- */

/* IEEE binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Exact conversion,
 * including subnormals, infinities and NaN payloads (numpy does the same). */
float gguf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);          /* inf / NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13); /* normal: rebias */
    } else {
        /* zero or subnormal: value = mant * 2^-24, exact in fp32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 is the top half of an fp32. */
float gguf_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* fp32 -> fp16 with round-to-nearest-even (what numpy's astype(float16) does). Overflow goes
 * to infinity, tiny values to (signed) zero via the subnormals, NaN stays NaN (quiet). */
uint16_t gguf_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;

    if (ax > 0x7f800000u) /* NaN: keep the top payload bits, force the quiet bit */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    /* 65520 = 0x477ff000 is halfway between 65504 (largest half, odd mantissa) and 2^16:
     * ties go to even, i.e. up to infinity. */
    if (ax >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* >= 2^-14: normal half */
        /* Rebias the exponent in place, then round to nearest even on the 13 dropped bits;
         * a carry out of the mantissa bumps the exponent, which is the right result. */
        uint32_t m = ax - ((127u - 15u) << 23);
        m += 0x0fffu + ((m >> 13) & 1u);
        return (uint16_t)(sign | (m >> 13));
    }
    if (ax <= 0x33000000u) /* <= 2^-25: rounds to zero (2^-25 itself ties to even = 0) */
        return sign;
    /* Subnormal half: q = round(|f| * 2^24). |f| = mant24 * 2^(e - 150), so q = mant24 >>
     * (126 - e) with round-to-nearest-even on the shifted-out bits; e is 102..112 here. */
    uint32_t e = ax >> 23;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++; /* q == 0x400 is the smallest normal half: the encoding works out */
    return (uint16_t)(sign | q);
}

static inline float gguf_rd_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return gguf_f16_to_f32(h);
}

/* ---- dequantisers: nb blocks from src to dst ---------------------------------------------- */

static void gguf_deq_f32(const uint8_t *src, float *dst, uint64_t nb)
{
    memcpy(dst, src, (size_t)nb * sizeof(float));
}

static void gguf_deq_f16(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++)
        dst[i] = gguf_rd_f16(src + 2 * i);
}

static void gguf_deq_bf16(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = gguf_bf16_to_f32(h);
    }
}

/* Q8_0 block (34 bytes): fp16 d | int8 q[32]; x[i] = q[i] * d. */
static void gguf_deq_q8_0(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 34, dst += GGUF_QK) {
        float d = gguf_rd_f16(src);
        const int8_t *q = (const int8_t *)(src + 2);
        for (int i = 0; i < GGUF_QK; i++)
            dst[i] = (float)q[i] * d;
    }
}

/* Q4_0 block (18 bytes): fp16 d | uint8 qs[16]; element i < 16 is the low nibble of qs[i],
 * element 16 + i the high nibble; x = d * (q - 8). */
static void gguf_deq_q4_0(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 18, dst += GGUF_QK) {
        float d = gguf_rd_f16(src);
        const uint8_t *qs = src + 2;
        for (int i = 0; i < GGUF_QK / 2; i++) {
            dst[i] = d * (float)((int)(qs[i] & 0x0f) - 8);
            dst[i + GGUF_QK / 2] = d * (float)((int)(qs[i] >> 4) - 8);
        }
    }
}

/* Q4_1 block (20 bytes): fp16 d | fp16 m | uint8 qs[16]; nibbles as in Q4_0; x = d*q + m. */
static void gguf_deq_q4_1(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 20, dst += GGUF_QK) {
        float d = gguf_rd_f16(src);
        float m = gguf_rd_f16(src + 2);
        const uint8_t *qs = src + 4;
        for (int i = 0; i < GGUF_QK / 2; i++) {
            float lo = d * (float)(qs[i] & 0x0f);
            float hi = d * (float)(qs[i] >> 4);
            dst[i] = lo + m;
            dst[i + GGUF_QK / 2] = hi + m;
        }
    }
}

/* The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (12 bytes, layout below). */
static void gguf_k_scale_min(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30));
    }
}

/* Q4_K super-block (144 bytes, 256 elements = 8 sub-blocks of 32):
 *   fp16 d | fp16 dmin | scales[12] | qs[128]
 * The 12 scale bytes pack eight 6-bit scales sc[j] and eight 6-bit mins mn[j]:
 *   bytes 0..3  : sc[0..3] in bits 0-5, bits 6-7 are the high bits of sc[4..7]
 *   bytes 4..7  : mn[0..3] in bits 0-5, bits 6-7 are the high bits of mn[4..7]
 *   bytes 8..11 : low 4 bits of sc[4..7] (bits 0-3) and of mn[4..7] (bits 4-7)
 * Sub-block j = 2g + h (g = 0..3) takes nibble h (0 = low, 1 = high) of qs[32g .. 32g+31].
 * x = (d * sc[j]) * q - (dmin * mn[j]). */
static void gguf_deq_q4_k(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 144, dst += GGUF_QK_K) {
        float d = gguf_rd_f16(src);
        float dmin = gguf_rd_f16(src + 2);
        const uint8_t *s = src + 4;
        const uint8_t *qs = src + 16;
        uint8_t sc[8], mn[8];
        gguf_k_scale_min(s, sc, mn);
        for (int g = 0; g < 4; g++) {
            const uint8_t *q = qs + 32 * g;
            float dl = d * (float)sc[2 * g], ml = dmin * (float)mn[2 * g];
            float dh = d * (float)sc[2 * g + 1], mh = dmin * (float)mn[2 * g + 1];
            float *y = dst + 64 * g;
            for (int l = 0; l < 32; l++) {
                float lo = dl * (float)(q[l] & 0x0f);
                float hi = dh * (float)(q[l] >> 4);
                y[l] = lo - ml;
                y[l + 32] = hi - mh;
            }
        }
    }
}

/* Q5_0 block (22 bytes): fp16 d | qh (32 bits, little-endian) | uint8 qs[16]. Element i < 16
 * is the low nibble of qs[i], element 16 + i the high nibble; bit e of qh is bit 4 of element
 * e. x = d * (q - 16). */
static void gguf_deq_q5_0(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 22, dst += GGUF_QK) {
        float d = gguf_rd_f16(src);
        uint32_t qh = (uint32_t)src[2] | (uint32_t)src[3] << 8 | (uint32_t)src[4] << 16 |
                      (uint32_t)src[5] << 24;
        const uint8_t *qs = src + 6;
        for (int i = 0; i < GGUF_QK / 2; i++) {
            int lo = (int)(qs[i] & 0x0f) | (int)((qh >> i) & 1u) << 4;
            int hi = (int)(qs[i] >> 4) | (int)((qh >> (i + GGUF_QK / 2)) & 1u) << 4;
            dst[i] = d * (float)(lo - 16);
            dst[i + GGUF_QK / 2] = d * (float)(hi - 16);
        }
    }
}

/* Q5_1 block (24 bytes): fp16 d | fp16 m | qh (32 bits) | uint8 qs[16]; the 5-bit q as in
 * Q5_0 (unsigned); x = d*q + m (two roundings, as in Q4_1). */
static void gguf_deq_q5_1(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 24, dst += GGUF_QK) {
        float d = gguf_rd_f16(src);
        float m = gguf_rd_f16(src + 2);
        uint32_t qh = (uint32_t)src[4] | (uint32_t)src[5] << 8 | (uint32_t)src[6] << 16 |
                      (uint32_t)src[7] << 24;
        const uint8_t *qs = src + 8;
        for (int i = 0; i < GGUF_QK / 2; i++) {
            int lo = (int)(qs[i] & 0x0f) | (int)((qh >> i) & 1u) << 4;
            int hi = (int)(qs[i] >> 4) | (int)((qh >> (i + GGUF_QK / 2)) & 1u) << 4;
            float vlo = d * (float)lo, vhi = d * (float)hi;
            dst[i] = vlo + m;
            dst[i + GGUF_QK / 2] = vhi + m;
        }
    }
}

/* Q5_K super-block (176 bytes, 256 elements = 8 sub-blocks of 32):
 *   fp16 d | fp16 dmin | scales[12] (as Q4_K) | qh[32] | qs[128]
 * Sub-block j = 2g + h takes nibble h of qs[32g .. 32g+31] as its low 4 bits and bit j of
 * qh[0..31] as bit 4. x = (d * sc[j]) * q - (dmin * mn[j]). */
static void gguf_deq_q5_k(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 176, dst += GGUF_QK_K) {
        float d = gguf_rd_f16(src);
        float dmin = gguf_rd_f16(src + 2);
        const uint8_t *qh = src + 16;
        const uint8_t *qs = src + 48;
        uint8_t sc[8], mn[8];
        gguf_k_scale_min(src + 4, sc, mn);
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            float dl = d * (float)sc[j], ml = dmin * (float)mn[j];
            float *y = dst + 32 * j;
            for (int l = 0; l < 32; l++) {
                int v = (int)((q[l] >> shift) & 0x0f) | (int)((qh[l] >> j) & 1u) << 4;
                float t = dl * (float)v;
                y[l] = t - ml;
            }
        }
    }
}

/* Q8_K super-block (292 bytes, 256 elements): fp32 d | int8 qs[256] | int16 bsums[16] (sums
 * of groups of 16 q, used only by ggml's dot products); x = d * q. gguf-py has no dequantiser
 * for it: the fixture script checks it with its own numpy transcription of this layout. */
static void gguf_deq_q8_k(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 292, dst += GGUF_QK_K) {
        float d;
        memcpy(&d, src, sizeof d);
        const int8_t *q = (const int8_t *)(src + 4);
        for (int i = 0; i < GGUF_QK_K; i++)
            dst[i] = d * (float)q[i];
    }
}

/* Q6_K super-block (210 bytes, 256 elements):
 *   ql[128] (low 4 bits) | qh[64] (high 2 bits) | int8 scales[16] | fp16 d
 * The block is two halves of 128 elements (h = 0, 1). Within half h, element r (0..127):
 *   low 4 bits  = nibble (r / 64) of ql[64h + r % 64]      (low nibble first)
 *   high 2 bits = bits 2*(r / 32) .. +1 of qh[32h + r % 32]
 * q = (low | high << 4) - 32 (range -32..31); x = (d * scales[e / 16]) * q, e = 128h + r. */
static void gguf_deq_q6_k(const uint8_t *src, float *dst, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++, src += 210, dst += GGUF_QK_K) {
        const uint8_t *ql = src;
        const uint8_t *qh = src + 128;
        const int8_t *sc = (const int8_t *)(src + 192);
        float d = gguf_rd_f16(src + 208);
        float ds[16];
        for (int i = 0; i < 16; i++)
            ds[i] = d * (float)sc[i];
        for (int h = 0; h < 2; h++) {
            const uint8_t *l4 = ql + 64 * h;
            const uint8_t *h2 = qh + 32 * h;
            const float *dsh = ds + 8 * h; /* 128 elements = 8 scale groups of 16 */
            float *y = dst + 128 * h;
            for (int l = 0; l < 32; l++) {
                int q0 = (int)((l4[l] & 0x0f) | ((h2[l] & 0x03) << 4)) - 32;
                int q1 = (int)((l4[l + 32] & 0x0f) | (((h2[l] >> 2) & 0x03) << 4)) - 32;
                int q2 = (int)((l4[l] >> 4) | (((h2[l] >> 4) & 0x03) << 4)) - 32;
                int q3 = (int)((l4[l + 32] >> 4) | (((h2[l] >> 6) & 0x03) << 4)) - 32;
                y[l] = dsh[l / 16] * (float)q0;
                y[l + 32] = dsh[2 + l / 16] * (float)q1;
                y[l + 64] = dsh[4 + l / 16] * (float)q2;
                y[l + 96] = dsh[6 + l / 16] * (float)q3;
            }
        }
    }
}

/* ---- type table --------------------------------------------------------------------------- */

/* Every type ggml defines (numbering and block sizes as in gguf-py's GGML_QUANT_SIZES), so a
 * file with, say, Q5_K tensors still opens and its tensor table is correct; only the types
 * with a dequantiser can be converted to fp32. Gaps (4, 5, 31..33, 36..38) are types ggml
 * removed and are rejected as unknown. */
typedef struct {
    const char *name;
    uint32_t blck;  /* elements per block */
    uint32_t bytes; /* bytes per block */
    void (*deq)(const uint8_t *src, float *dst, uint64_t nblocks);
} gguf_type_info;

static const gguf_type_info gguf_types[] = {
    [0] = {"F32", 1, 4, gguf_deq_f32},
    [1] = {"F16", 1, 2, gguf_deq_f16},
    [2] = {"Q4_0", 32, 18, gguf_deq_q4_0},
    [3] = {"Q4_1", 32, 20, gguf_deq_q4_1},
    [6] = {"Q5_0", 32, 22, gguf_deq_q5_0},
    [7] = {"Q5_1", 32, 24, gguf_deq_q5_1},
    [8] = {"Q8_0", 32, 34, gguf_deq_q8_0},
    [9] = {"Q8_1", 32, 40, NULL},
    [10] = {"Q2_K", 256, 84, NULL},
    [11] = {"Q3_K", 256, 110, NULL},
    [12] = {"Q4_K", 256, 144, gguf_deq_q4_k},
    [13] = {"Q5_K", 256, 176, gguf_deq_q5_k},
    [14] = {"Q6_K", 256, 210, gguf_deq_q6_k},
    [15] = {"Q8_K", 256, 292, gguf_deq_q8_k},
    [16] = {"IQ2_XXS", 256, 66, NULL},
    [17] = {"IQ2_XS", 256, 74, NULL},
    [18] = {"IQ3_XXS", 256, 98, NULL},
    [19] = {"IQ1_S", 256, 50, NULL},
    [20] = {"IQ4_NL", 32, 18, NULL},
    [21] = {"IQ3_S", 256, 110, NULL},
    [22] = {"IQ2_S", 256, 82, NULL},
    [23] = {"IQ4_XS", 256, 136, NULL},
    [24] = {"I8", 1, 1, NULL},
    [25] = {"I16", 1, 2, NULL},
    [26] = {"I32", 1, 4, NULL},
    [27] = {"I64", 1, 8, NULL},
    [28] = {"F64", 1, 8, NULL},
    [29] = {"IQ1_M", 256, 56, NULL},
    [30] = {"BF16", 1, 2, gguf_deq_bf16},
    [34] = {"TQ1_0", 256, 54, NULL},
    [35] = {"TQ2_0", 256, 66, NULL},
    [39] = {"MXFP4", 32, 17, NULL},
    [40] = {"NVFP4", 64, 36, NULL},
    [41] = {"Q1_0", 128, 18, NULL},
};

#define GGUF_N_TYPES (sizeof gguf_types / sizeof gguf_types[0])

static const gguf_type_info *gguf_type_lookup(uint32_t type)
{
    if (type >= GGUF_N_TYPES || !gguf_types[type].name) return NULL;
    return &gguf_types[type];
}

const char *gguf_type_name(uint32_t type)
{
    const gguf_type_info *ti = gguf_type_lookup(type);
    return ti ? ti->name : NULL;
}

uint32_t gguf_type_block_elems(uint32_t type)
{
    const gguf_type_info *ti = gguf_type_lookup(type);
    return ti ? ti->blck : 0;
}

uint32_t gguf_type_block_bytes(uint32_t type)
{
    const gguf_type_info *ti = gguf_type_lookup(type);
    return ti ? ti->bytes : 0;
}

int gguf_type_can_dequantize(uint32_t type)
{
    const gguf_type_info *ti = gguf_type_lookup(type);
    return ti && ti->deq;
}

int gguf_dequantize(uint32_t type, const void *src, float *dst, uint64_t n)
{
    const gguf_type_info *ti = gguf_type_lookup(type);
    if (!ti)
        return kvs_error(KVS_EUNSUPPORTED, "unknown tensor type %u", type);
    if (!ti->deq)
        return kvs_error(KVS_EUNSUPPORTED,
                         "tensor type %s cannot be converted to fp32 (supported: F32, F16, "
                         "BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q8_K); "
                         "re-quantise the model to one of these", ti->name);
    if (n % ti->blck != 0)
        return kvs_error(KVS_EINVAL, "cannot dequantise %llu %s elements: not a multiple of "
                         "the block size %u", (unsigned long long)n, ti->name, ti->blck);
    if (n == 0) return KVS_OK;
    if (!src || !dst)
        return kvs_error(KVS_EINVAL, "gguf_dequantize: NULL buffer");
    ti->deq((const uint8_t *)src, dst, n / ti->blck);
    return KVS_OK;
}

int gguf_tensor_to_f32(const gguf_tensor *t, float *dst)
{
    if (!t) return kvs_error(KVS_EINVAL, "gguf_tensor_to_f32: NULL tensor");
    int rc = gguf_dequantize(t->type, t->data, dst, t->n_elems);
    if (rc < 0) {
        /* prefix the tensor name; copy first, the message buffer is the one we write to */
        char why[512];
        snprintf(why, sizeof why, "%s", kvs_last_error());
        return kvs_error(rc, "tensor '%s': %s", t->name, why);
    }
    return KVS_OK;
}
