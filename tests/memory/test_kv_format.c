/* test_kv_format.c — the KV format table and the host K/V store: f16/bf16 conversions on
 * values whose encodings are known (rounding ties to even, subnormals, overflow, NaN), the
 * round-trip error bound of each format on random rows, row sizes (f16/bf16 half of f32), the
 * store's write/read/copy, and parse errors. */
#include "core/common.h"
#include "memory/kv_format.h"
#include "memory/kv_store.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_f16_known(void)
{
    struct { float x; uint16_t h; } c[] = {
        {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {0.5f, 0x3800},
        {65504.0f, 0x7bff}, {65519.0f, 0x7bff}, {65520.0f, 0x7c00}, {1e9f, 0x7c00},
        {-1e9f, 0xfc00}, {INFINITY, 0x7c00},
        {6.103515625e-05f, 0x0400},          /* smallest normal 2^-14 */
        {5.9604644775390625e-08f, 0x0001},   /* smallest subnormal 2^-24 */
        {2.98023223876953125e-08f, 0x0000},  /* 2^-25: tie, rounds to even (0) */
        {8.94069671630859375e-08f, 0x0002},  /* 1.5 * 2^-24: tie, rounds to even (2) */
        {1.0009765625f, 0x3c01},             /* 1 + 2^-10 */
        {1.00048828125f, 0x3c00},            /* 1 + 2^-11: tie to even (down) */
        {1.00146484375f, 0x3c02},            /* 1 + 3 * 2^-11: tie to even (up) */
        {0.333333333f, 0x3555},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        CU_ASSERT_EQUAL(kv_f32_to_f16(c[i].x), c[i].h);
        if (!isinf(c[i].x) && fabsf(c[i].x) <= 65504.0f && c[i].h != 0x0000 &&
            c[i].h != 0x0002 && c[i].h != 0x3c00 && c[i].h != 0x3c02 && c[i].h != 0x3555 &&
            c[i].h != 0x7bff)
            CU_ASSERT_EQUAL(kv_f16_to_f32(c[i].h), c[i].x); /* exactly representable ones */
    }
    CU_ASSERT(isnan(kv_f16_to_f32(kv_f32_to_f16(NAN))));
    CU_ASSERT(isinf(kv_f16_to_f32(0x7c00)));
    CU_ASSERT_EQUAL(kv_f16_to_f32(0x3555), 0.333251953125f);
    /* every finite half round-trips through fp32 exactly */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        if (kv_f32_to_f16(kv_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_bf16_known(void)
{
    CU_ASSERT_EQUAL(kv_f32_to_bf16(1.0f), 0x3f80);
    CU_ASSERT_EQUAL(kv_f32_to_bf16(-2.0f), 0xc000);
    CU_ASSERT_EQUAL(kv_f32_to_bf16(1.00390625f), 0x3f80);   /* 1 + 2^-8: tie to even (down) */
    CU_ASSERT_EQUAL(kv_f32_to_bf16(1.01171875f), 0x3f82);   /* 1 + 3 * 2^-8: tie, up */
    CU_ASSERT_EQUAL(kv_f32_to_bf16(1.0078125f), 0x3f81);
    CU_ASSERT_EQUAL(kv_f32_to_bf16(3.0e38f), 0x7f62);
    CU_ASSERT_EQUAL(kv_f32_to_bf16(INFINITY), 0x7f80);
    CU_ASSERT(isnan(kv_bf16_to_f32(kv_f32_to_bf16(NAN))));
    CU_ASSERT_EQUAL(kv_bf16_to_f32(0x3f81), 1.0078125f);
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80) continue;
        if (kv_f32_to_bf16(kv_bf16_to_f32((uint16_t)h)) != h) bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static float rnd_unit(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) / 16777216.0) * 2.0f - 1.0f;
}

/* Round-trip every format on random rows: relative error within half an ulp of its mantissa
 * (f32 exact, f16 2^-11, bf16 2^-8) for values in the normal range. */
static void test_roundtrip_bounds(void)
{
    int n;
    const kv_format *const *list = kv_format_list(&n);
    CU_ASSERT(n >= 3);
    CU_ASSERT_PTR_EQUAL(list[0], &kv_fmt_f32);
    const int hd = 64;
    float src[64], scratch[64 * 4], out[64];
    uint8_t row[64 * 4];
    uint64_t seed = 42;
    for (int f = 0; f < n; f++) {
        const kv_format *fmt = list[f];
        CU_ASSERT_EQUAL(fmt->version, KV_FORMAT_VERSION);
        CU_ASSERT_PTR_EQUAL(kv_format_find(fmt->name), fmt);
        /* the quantised formats (int8/int4/int2) have their own bounds: test_kv_quant.c */
        if (fmt != &kv_fmt_f32 && fmt != &kv_fmt_f16 && fmt != &kv_fmt_bf16) continue;
        double bound = fmt == &kv_fmt_f32 ? 0.0 : fmt == &kv_fmt_f16 ? 0x1p-11 : 0x1p-8;
        double worst = 0;
        for (int it = 0; it < 200; it++) {
            for (int i = 0; i < hd; i++) src[i] = rnd_unit(&seed) * 8.0f + (i & 1 ? 0.01f : 0.5f);
            fmt->write_row(row, src, hd);
            const float *r = fmt->read_rows(row, 1, hd, scratch);
            memcpy(out, r, sizeof out);
            for (int i = 0; i < hd; i++) {
                if (fabsf(src[i]) < 1e-3f) continue;
                double e = fabs((double)out[i] - src[i]) / fabs(src[i]);
                if (e > worst) worst = e;
            }
        }
        CU_ASSERT(worst <= bound * 1.0000001);
        if (fmt != &kv_fmt_f32) CU_ASSERT(worst > bound / 8); /* it does round */
    }
}

static void test_row_sizes(void)
{
    CU_ASSERT_EQUAL(kv_fmt_f32.row_bytes(64), 256u);
    CU_ASSERT_EQUAL(kv_fmt_f16.row_bytes(64), 128u);
    CU_ASSERT_EQUAL(kv_fmt_bf16.row_bytes(128), 256u);
    CU_ASSERT_EQUAL(kv_fmt_f16.row_bytes(0), 0u);
    CU_ASSERT_EQUAL(kv_store_slot_bytes(&kv_fmt_f32, &kv_fmt_f32, 64), 512u);
    CU_ASSERT_EQUAL(kv_store_slot_bytes(&kv_fmt_f16, &kv_fmt_f16, 64), 256u);
    CU_ASSERT_EQUAL(kv_store_slot_bytes(&kv_fmt_bf16, &kv_fmt_f32, 64), 384u);
}

static void test_store(void)
{
    const int hd = 8;
    kv_store *s;
    CU_ASSERT_EQUAL_FATAL(kv_store_create(&kv_fmt_f16, &kv_fmt_bf16, hd, 10, &s), 0);
    CU_ASSERT_EQUAL(s->k_row, 16u);
    CU_ASSERT_EQUAL(s->v_row, 16u);
    float k[8], v[8], rk[8], rv[8];
    for (int i = 0; i < hd; i++) { k[i] = 0.25f * i - 1.0f; v[i] = 1.5f + i; }
    kv_store_write(s, 3, k, v);
    kv_store_read(s, 3, rk, rv);
    CU_ASSERT_EQUAL(memcmp(k, rk, sizeof k), 0); /* these values are exact in 16 bits */
    CU_ASSERT_EQUAL(memcmp(v, rv, sizeof v), 0);
    kv_store_read(s, 4, rk, rv);
    for (int i = 0; i < hd; i++) CU_ASSERT_EQUAL(rk[i] + rv[i], 0.0f); /* zeroed */
    int32_t src[1] = {3}, dst[1] = {9};
    kv_store_copy(s, src, dst, 1);
    kv_store_read(s, 9, rk, NULL);
    CU_ASSERT_EQUAL(memcmp(k, rk, sizeof k), 0);
    kv_store_destroy(s);
    CU_ASSERT_NOT_EQUAL(kv_store_create(&kv_fmt_f16, &kv_fmt_f16, 0, 10, &s), 0);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_NOT_EQUAL(kv_store_create(&kv_fmt_f16, &kv_fmt_f16, 8, 0, &s), 0);
}

static void test_parse(void)
{
    const kv_format *f = NULL;
    CU_ASSERT_EQUAL(kv_format_parse("bf16", &f), 0);
    CU_ASSERT_PTR_EQUAL(f, &kv_fmt_bf16);
    CU_ASSERT_EQUAL(kv_format_parse("fp8", &f), KVS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(kvs_last_error(), "f32, f16, bf16"));
    CU_ASSERT_EQUAL(kv_format_parse(NULL, &f), KVS_EINVAL);
    CU_ASSERT_PTR_NULL(kv_format_find("F16"));
    /* KEYS/VALUES specs */
    const kv_format *k = NULL, *v = NULL;
    char name[32];
    CU_ASSERT_EQUAL(kv_format_spec_parse("f16", &k, &v), 0);
    CU_ASSERT(k == &kv_fmt_f16 && v == &kv_fmt_f16);
    CU_ASSERT_STRING_EQUAL(kv_format_spec_name(k, v, name, sizeof name), "f16");
    CU_ASSERT_EQUAL(kv_format_spec_parse("f32/bf16", &k, &v), 0);
    CU_ASSERT(k == &kv_fmt_f32 && v == &kv_fmt_bf16);
    CU_ASSERT_STRING_EQUAL(kv_format_spec_name(k, v, name, sizeof name), "f32/bf16");
    const char *bad[] = {"/f16", "f16/", "f16/f16/f16", "f16/fp4", "fp4/f16", "", "verylongnameofaformat_xxxxxxxxxxxx/f16"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_EQUAL(kv_format_spec_parse(bad[i], &k, &v), KVS_EINVAL);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"f16 conversion: known encodings, ties to even, subnormals, round trip", test_f16_known},
        {"bf16 conversion: known encodings, ties to even, round trip", test_bf16_known},
        {"each format's round-trip error within half an ulp", test_roundtrip_bounds},
        {"row and slot bytes (16-bit formats are half of f32)", test_row_sizes},
        {"host K/V store: write, read, copy, bad sizes", test_store},
        {"format names: parse, unknown names listed", test_parse},
    };
    return kvs_test_main("kv_format", tests, (int)(sizeof tests / sizeof tests[0]));
}
