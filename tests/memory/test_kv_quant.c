/* test_kv_quant.c — the fixed-width quantised KV formats int8 / int4 / int2 (kv_quant.h):
 * fp16 rounding towards -inf/+inf, rows whose codes and values are known exactly (0..15 at
 * int4, a 2-bit and an 8-bit row, ties rounded half up), constant rows (scale 0), NaN / inf
 * (the group reads back all NaN) and saturation, the |error| <= scale/2 bound on random rows,
 * head dims that are not a multiple of the group, multi-row reads, the store, and names. */
#include "core/common.h"
#include "memory/kv_format.h"
#include "memory/kv_quant.h"
#include "memory/kv_store.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint64_t seed = 12345;
static double urand(void) /* [0, 1) */
{
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(seed >> 11) / 9007199254740992.0;
}

static uint16_t meta16(const uint8_t *row, int g, int which) /* group g's scale (0) / zero (1) */
{
    uint16_t v;
    memcpy(&v, row + 4 * g + 2 * which, 2);
    return v;
}

static void test_f16_directed(void)
{
    CU_ASSERT_EQUAL(kvq_f16_down(1.0f), 0x3c00);
    CU_ASSERT_EQUAL(kvq_f16_up(1.0f), 0x3c00);
    CU_ASSERT_EQUAL(kvq_f16_down(-2.0f), 0xc000);
    float xs[] = {0.1f, -0.1f, 3.14159f, -1000.3f, 65503.0f, -65503.0f, 1e-6f, -1e-6f};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        uint16_t d = kvq_f16_down(xs[i]), u = kvq_f16_up(xs[i]);
        CU_ASSERT(kv_f16_to_f32(d) <= xs[i]);
        CU_ASSERT(kv_f16_to_f32(u) >= xs[i]);
        CU_ASSERT(kv_f16_to_f32(d) < kv_f16_to_f32(u)); /* none of these is exact */
        /* adjacent halves: one ulp apart (same sign: bit patterns differ by one) */
        CU_ASSERT_EQUAL(d > u ? d - u : u - d, 1);
    }
    CU_ASSERT_EQUAL(kvq_f16_down(1e-10f), 0x0000);
    CU_ASSERT_EQUAL(kvq_f16_up(1e-10f), 0x0001);
    CU_ASSERT_EQUAL(kvq_f16_down(-1e-10f), 0x8001);
    CU_ASSERT(kv_f16_to_f32(kvq_f16_up(-1e-10f)) == 0.0f);
    CU_ASSERT_EQUAL(kvq_f16_up(65504.0f), 0x7bff);
}

/* 0..15 at int4: zero 0, scale 1, codes i, values exact; and a tie rounds half up. */
static void test_int4_known(void)
{
    const int hd = 16;
    float x[16], y[16];
    uint8_t row[32];
    for (int i = 0; i < hd; i++) x[i] = (float)i;
    CU_ASSERT_EQUAL_FATAL(kv_fmt_int4.row_bytes(hd), 4u + 8u);
    kv_fmt_int4.write_row(row, x, hd);
    CU_ASSERT_EQUAL(meta16(row, 0, 0), 0x3c00); /* scale 1 */
    CU_ASSERT_EQUAL(meta16(row, 0, 1), 0x0000); /* zero 0 */
    for (int j = 0; j < 8; j++) CU_ASSERT_EQUAL(row[4 + j], (uint8_t)(2 * j | (2 * j + 1) << 4));
    for (int i = 0; i < hd; i++) CU_ASSERT_EQUAL(kvq_code(row + 4, i, 4), (unsigned)i);
    const float *r = kv_fmt_int4.read_rows(row, 1, hd, y);
    CU_ASSERT_EQUAL(memcmp(r, x, sizeof x), 0);
    /* ties: 7.5 -> 8, 7.49 -> 7, 0.5 -> 1 (half up), 14.5 -> 15 */
    float t[8] = {0, 15, 7.5f, 7.49f, 0.5f, 14.5f, 3, 0.49f};
    const unsigned want[8] = {0, 15, 8, 7, 1, 15, 3, 0};
    kv_fmt_int4.write_row(row, t, 8);
    for (int i = 0; i < 8; i++) CU_ASSERT_EQUAL(kvq_code(row + 4, i, 4), want[i]);
    /* an offset row: -3 .. 4.5 in steps of 0.5: zero -3, scale 0.5, exact */
    for (int i = 0; i < hd; i++) x[i] = -3.0f + 0.5f * i;
    kv_fmt_int4.write_row(row, x, hd);
    CU_ASSERT_EQUAL(kv_f16_to_f32(meta16(row, 0, 0)), 0.5f);
    CU_ASSERT_EQUAL(kv_f16_to_f32(meta16(row, 0, 1)), -3.0f);
    r = kv_fmt_int4.read_rows(row, 1, hd, y);
    CU_ASSERT_EQUAL(memcmp(r, x, sizeof x), 0);
}

static void test_int2_int8_known(void)
{
    float x2[8] = {-1, -0.5f, 0, 0.5f, 0.5f, 0, -0.5f, -1}, y[64];
    uint8_t row[128];
    CU_ASSERT_EQUAL(kv_fmt_int2.row_bytes(8), 4u + 2u);
    kv_fmt_int2.write_row(row, x2, 8);
    CU_ASSERT_EQUAL(kv_f16_to_f32(meta16(row, 0, 0)), 0.5f);
    CU_ASSERT_EQUAL(kv_f16_to_f32(meta16(row, 0, 1)), -1.0f);
    CU_ASSERT_EQUAL(row[4], 0xE4); /* codes 0 1 2 3, LSB first */
    CU_ASSERT_EQUAL(row[5], 0x1B); /* codes 3 2 1 0 */
    CU_ASSERT_EQUAL(memcmp(kv_fmt_int2.read_rows(row, 1, 8, y), x2, sizeof x2), 0);
    /* int8, one group of 32: codes 0, 8, ..., 240 and 255 times 0.25 */
    float x8[32];
    for (int i = 0; i < 31; i++) x8[i] = 0.25f * (float)(8 * i);
    x8[31] = 0.25f * 255;
    CU_ASSERT_EQUAL(kv_fmt_int8.row_bytes(32), 4u + 32u);
    kv_fmt_int8.write_row(row, x8, 32);
    CU_ASSERT_EQUAL(kv_f16_to_f32(meta16(row, 0, 0)), 0.25f);
    for (int i = 0; i < 31; i++) CU_ASSERT_EQUAL(row[4 + i], 8 * i);
    CU_ASSERT_EQUAL(row[4 + 31], 255);
    CU_ASSERT_EQUAL(memcmp(kv_fmt_int8.read_rows(row, 1, 32, y), x8, sizeof x8), 0);
}

static void test_constant_rows(void)
{
    const kv_format *fs[3] = {&kv_fmt_int8, &kv_fmt_int4, &kv_fmt_int2};
    float x[64], y[64];
    uint8_t row[128];
    for (int f = 0; f < 3; f++) {
        const float consts[] = {1.0f, 0.0f, -3.5f, 0.1f, -1234.567f};
        for (int c = 0; c < 5; c++) {
            for (int i = 0; i < 64; i++) x[i] = consts[c];
            fs[f]->write_row(row, x, 64);
            int exact = c < 3; /* exact in fp16: scale 0 */
            if (exact) CU_ASSERT_EQUAL(meta16(row, 0, 0), 0);
            const float *r = fs[f]->read_rows(row, 1, 64, y);
            for (int i = 0; i < 64; i++) {
                CU_ASSERT(isfinite(r[i]));
                if (exact) {
                    CU_ASSERT_EQUAL(r[i], x[i]);
                } else {
                    CU_ASSERT(fabsf(r[i] - x[i]) <= fabsf(x[i]) * 0x1p-10f);
                }
            }
        }
    }
}

static void test_special_values(void)
{
    const kv_format *fs[3] = {&kv_fmt_int8, &kv_fmt_int4, &kv_fmt_int2};
    float x[64], y[64];
    uint8_t row[128];
    for (int f = 0; f < 3; f++) {
        for (int i = 0; i < 64; i++) x[i] = (float)i / 8.0f;
        x[40] = NAN; /* group 1 poisoned, group 0 fine */
        fs[f]->write_row(row, x, 64);
        const float *r = fs[f]->read_rows(row, 1, 64, y);
        float sg = kv_f16_to_f32(meta16(row, 0, 0));
        for (int i = 0; i < 32; i++) CU_ASSERT(isfinite(r[i]) && fabsf(r[i] - x[i]) <= sg / 2 + 1e-6f);
        for (int i = 32; i < 64; i++) CU_ASSERT(isnan(r[i]));
        x[40] = 1.0f;
        x[3] = INFINITY;
        fs[f]->write_row(row, x, 64);
        r = fs[f]->read_rows(row, 1, 64, y);
        for (int i = 0; i < 32; i++) CU_ASSERT(isnan(r[i]));
        for (int i = 32; i < 64; i++) CU_ASSERT(isfinite(r[i]));
        x[3] = -INFINITY;
        fs[f]->write_row(row, x, 64);
        CU_ASSERT(isnan(fs[f]->read_rows(row, 1, 64, y)[0]));
        /* finite values beyond fp16 saturate to +-65504 */
        for (int i = 0; i < 64; i++) x[i] = i < 32 ? 0.0f : 1.0f;
        x[0] = 1e6f;
        x[33] = -1e30f;
        fs[f]->write_row(row, x, 64);
        r = fs[f]->read_rows(row, 1, 64, y);
        float s0 = kv_f16_to_f32(meta16(row, 0, 0)), s1 = kv_f16_to_f32(meta16(row, 1, 0));
        CU_ASSERT(isfinite(s0) && isfinite(s1));
        CU_ASSERT(fabsf(r[0] - 65504.0f) <= s0 / 2);
        CU_ASSERT(fabsf(r[33] + 65504.0f) <= s1 / 2);
        CU_ASSERT(fabsf(r[1]) <= s0 / 2);
    }
}

/* |error| <= scale / 2 of the element's group (plus fp32 rounding) on random rows of several
 * offsets and spreads, head dims 64, 128 and 80 / 33 / 7 (a shorter last group); and the bound
 * is reached (the codes really round). */
static void test_random_bound(void)
{
    const kv_format *fs[3] = {&kv_fmt_int8, &kv_fmt_int4, &kv_fmt_int2};
    const int hds[] = {64, 128, 80, 33, 7};
    float x[128], y[128];
    uint8_t row[256];
    for (int f = 0; f < 3; f++)
        for (int h = 0; h < 5; h++) {
            int hd = hds[h];
            double worst = 0; /* max over rows of max |err| / (s/2) */
            int bad = 0;
            for (int it = 0; it < 300; it++) {
                double off = (urand() - 0.5) * 200, spread = pow(10.0, urand() * 6 - 3);
                for (int i = 0; i < hd; i++) {
                    double u = urand() - 0.5;
                    x[i] = (float)(off + spread * (it % 3 ? u : u * u * u * 8)); /* some heavy */
                }
                fs[f]->write_row(row, x, hd);
                const float *r = fs[f]->read_rows(row, 1, hd, y);
                for (int i = 0; i < hd; i++) {
                    float s = kv_f16_to_f32(meta16(row, i / 32, 0));
                    double e = fabs((double)r[i] - x[i]);
                    double eps = 2e-7 * (fabs(x[i]) + s * 255);
                    if (e > s / 2 + eps) bad++;
                    if (s > 0 && e / (s / 2) > worst) worst = e / (s / 2);
                }
            }
            CU_ASSERT_EQUAL(bad, 0);
            CU_ASSERT(worst > 0.9);
        }
}

static void test_row_sizes(void)
{
    CU_ASSERT_EQUAL(kv_fmt_int8.row_bytes(64), 72u);  /* 2 x (scale, zero) + 64 */
    CU_ASSERT_EQUAL(kv_fmt_int4.row_bytes(64), 40u);  /* 8 + 32 */
    CU_ASSERT_EQUAL(kv_fmt_int2.row_bytes(64), 24u);  /* 8 + 16 */
    CU_ASSERT_EQUAL(kv_fmt_int8.row_bytes(128), 144u);
    CU_ASSERT_EQUAL(kv_fmt_int4.row_bytes(128), 80u);
    CU_ASSERT_EQUAL(kv_fmt_int2.row_bytes(128), 48u);
    CU_ASSERT_EQUAL(kv_fmt_int4.row_bytes(80), 12u + 40u); /* groups 32, 32, 16 */
    CU_ASSERT_EQUAL(kv_fmt_int4.row_bytes(33), 8u + 17u);
    CU_ASSERT_EQUAL(kv_fmt_int2.row_bytes(1), 4u + 1u);
    CU_ASSERT_EQUAL(kv_fmt_int4.row_bytes(0), 0u);
    CU_ASSERT_EQUAL(kv_fmt_int8.row_bytes(-3), 0u);
    CU_ASSERT_EQUAL(kv_store_slot_bytes(&kv_fmt_int4, &kv_fmt_int2, 64), 64u);
    CU_ASSERT_EQUAL(kvq_row_bytes(64, 4, 64), 4u + 32u); /* one group per row */
    CU_ASSERT_EQUAL(kvq_row_bytes(64, 4, 12), 0u);       /* group not a multiple of 8 */
    CU_ASSERT_EQUAL(kvq_row_bytes(64, 9, 32), 0u);
}

/* n rows read at once equal the rows read one by one; odd row bytes (hd 33: 25 bytes) in a
 * store keep the unaligned scales readable. */
static void test_multi_rows_and_store(void)
{
    const int hd = 33, n = 5;
    const size_t rb = kv_fmt_int4.row_bytes(hd);
    uint8_t rows[5 * 25];
    float x[5][33], one[33], all[5 * 33];
    CU_ASSERT_EQUAL_FATAL(rb, 25u);
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < hd; i++) x[r][i] = (float)(urand() * 4 - 2 + r);
        kv_fmt_int4.write_row(rows + r * rb, x[r], hd);
    }
    const float *a = kv_fmt_int4.read_rows(rows, n, hd, all);
    for (int r = 0; r < n; r++) {
        const float *o = kv_fmt_int4.read_rows(rows + r * rb, 1, hd, one);
        CU_ASSERT_EQUAL(memcmp(o, a + r * hd, sizeof one), 0);
    }
    kv_store *s;
    CU_ASSERT_EQUAL_FATAL(kv_store_create(&kv_fmt_int4, &kv_fmt_int8, hd, 7, &s), 0);
    CU_ASSERT_EQUAL(s->k_row, 25u);
    CU_ASSERT_EQUAL(s->v_row, 8u + 33u);
    float rk[33], rv[33];
    kv_store_write(s, 3, x[1], x[2]);
    kv_store_read(s, 3, rk, rv);
    for (int i = 0; i < hd; i++) {
        CU_ASSERT(fabsf(rk[i] - x[1][i]) <= 4.5f / 15 / 2 + 1e-5f);
        CU_ASSERT(fabsf(rv[i] - x[2][i]) <= 4.5f / 255 / 2 + 1e-5f);
    }
    int32_t src[1] = {3}, dst[1] = {6};
    kv_store_copy(s, src, dst, 1);
    kv_store_read(s, 6, one, NULL);
    CU_ASSERT_EQUAL(memcmp(one, rk, sizeof one), 0);
    kv_store_destroy(s);
}

static void test_names(void)
{
    CU_ASSERT_PTR_EQUAL(kv_format_find("int8"), &kv_fmt_int8);
    CU_ASSERT_PTR_EQUAL(kv_format_find("int4"), &kv_fmt_int4);
    CU_ASSERT_PTR_EQUAL(kv_format_find("int2"), &kv_fmt_int2);
    CU_ASSERT_PTR_NOT_NULL(strstr(kv_format_names(), "int8, int4, int2"));
    CU_ASSERT_EQUAL(kv_fmt_int4.version, KV_FORMAT_VERSION);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"fp16 rounded down / up", test_f16_directed},
        {"int4: 0..15 exact, ties half up, offset row", test_int4_known},
        {"int2 and int8 rows with known codes", test_int2_int8_known},
        {"constant rows: scale 0 without division, exact or within fp16", test_constant_rows},
        {"NaN / inf poison their group, huge values saturate", test_special_values},
        {"random rows: |error| <= scale/2, reached; short last group", test_random_bound},
        {"row bytes count scales and zeros; bad sizes are 0", test_row_sizes},
        {"n-row reads, odd row bytes in a store", test_multi_rows_and_store},
        {"format names", test_names},
    };
    return kvs_test_main("kv_quant", tests, (int)(sizeof tests / sizeof tests[0]));
}
