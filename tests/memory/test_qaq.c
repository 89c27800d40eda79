/* test_qaq.c — QAQ's building blocks (qaq.h) on hand-made data: outlier counts and selection
 * (ties, range without them), bits per token (hand values, the sigma the chosen width really
 * gives, rounding to allowed widths), the key and value sigma bounds, the query-norm quantile,
 * the attention window (persistence, a jump that lasts n scores), and the row record (exact
 * bytes of a known row, 3-bit packing, sizes and ratio, NaN, malformed records, random rows). */
#include "core/common.h"
#include "memory/kv_format.h"
#include "memory/kv_quant.h"
#include "memory/qaq.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed = 777;
static double urand(void)
{
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(seed >> 11) / 9007199254740992.0;
}

static void test_outlier_counts(void)
{
    CU_ASSERT_EQUAL(qaq_outliers_per_side(64, 0.01), 1);   /* 0.32 -> at least one */
    CU_ASSERT_EQUAL(qaq_outliers_per_side(128, 0.01), 1);  /* 0.64 */
    CU_ASSERT_EQUAL(qaq_outliers_per_side(256, 0.01), 2);  /* 1.28 */
    CU_ASSERT_EQUAL(qaq_outliers_per_side(1000, 0.01), 5); /* exactly 5 */
    CU_ASSERT_EQUAL(qaq_outliers_per_side(64, 0.0), 0);
    CU_ASSERT_EQUAL(qaq_outliers_per_side(64, 0.5), 16);
    CU_ASSERT_EQUAL(qaq_outliers_per_side(4, 1.0), 1);     /* capped: two values left */
    CU_ASSERT_EQUAL(qaq_outliers_per_side(2, 0.5), 0);
}

static void test_outlier_select(void)
{
    const float x[7] = {3, -7, 0, 12, 1, -7, 5};
    int idx[6];
    float lo, hi;
    CU_ASSERT_EQUAL(qaq_outliers(x, 7, 1, idx, &lo, &hi), 0);
    CU_ASSERT_EQUAL(idx[0], 1); /* the first of the two -7 */
    CU_ASSERT_EQUAL(idx[1], 3);
    CU_ASSERT_EQUAL(lo, -7.0f); /* the other -7 stays */
    CU_ASSERT_EQUAL(hi, 5.0f);
    CU_ASSERT_EQUAL(qaq_outliers(x, 7, 2, idx, &lo, &hi), 0);
    CU_ASSERT_EQUAL(idx[0], 1);
    CU_ASSERT_EQUAL(idx[1], 5);
    CU_ASSERT_EQUAL(idx[2], 3);
    CU_ASSERT_EQUAL(idx[3], 6);
    CU_ASSERT_EQUAL(lo, 0.0f);
    CU_ASSERT_EQUAL(hi, 3.0f);
    CU_ASSERT_EQUAL(qaq_outliers(x, 7, 0, idx, &lo, &hi), 0);
    CU_ASSERT_EQUAL(lo, -7.0f);
    CU_ASSERT_EQUAL(hi, 12.0f);
    /* a constant row: lows and highs are distinct elements */
    const float c[5] = {2, 2, 2, 2, 2};
    CU_ASSERT_EQUAL(qaq_outliers(c, 5, 2, idx, &lo, &hi), 0);
    CU_ASSERT_EQUAL(idx[0], 0);
    CU_ASSERT_EQUAL(idx[1], 1);
    CU_ASSERT_EQUAL(idx[2], 2);
    CU_ASSERT_EQUAL(idx[3], 3);
    CU_ASSERT_EQUAL(lo, 2.0f);
    CU_ASSERT_EQUAL(hi, 2.0f);
    CU_ASSERT_EQUAL(qaq_outliers(x, 7, 4, idx, &lo, &hi), KVS_EINVAL);
    CU_ASSERT_EQUAL(qaq_outliers(x, 7, -1, idx, &lo, &hi), KVS_EINVAL);
}

static double sigma_for(double range, double q) { return range / (2.0 * sqrt(3.0) * q); }

static void test_bits_needed(void)
{
    /* q = R / (2 sqrt(3) sigma): the number of steps needed; B = ceil(log2(q + 1)) */
    CU_ASSERT_EQUAL(qaq_bits_needed(1.0, sigma_for(1.0, 15.0 * 0.999)), 4);
    CU_ASSERT_EQUAL(qaq_bits_needed(1.0, sigma_for(1.0, 15.5)), 5);
    CU_ASSERT_EQUAL(qaq_bits_needed(3.0, sigma_for(3.0, 16.0)), 5);
    CU_ASSERT_EQUAL(qaq_bits_needed(2.0, sigma_for(2.0, 2.5)), 2);
    CU_ASSERT_EQUAL(qaq_bits_needed(2.0, sigma_for(2.0, 0.5)), 1);
    CU_ASSERT_EQUAL(qaq_bits_needed(5.0, sigma_for(5.0, 200.0)), 8);
    CU_ASSERT_EQUAL(qaq_bits_needed(5.0, sigma_for(5.0, 256.0)), 9);
    CU_ASSERT_EQUAL(qaq_bits_needed(0.0, 0.1), 0);
    CU_ASSERT_EQUAL(qaq_bits_needed(1.0, INFINITY), 0);
    CU_ASSERT_EQUAL(qaq_bits_needed(1.0, 0.0), 31);
    /* meaning: B is the smallest width whose step / sqrt(12) is <= sigma */
    for (int it = 0; it < 2000; it++) {
        double R = pow(10.0, urand() * 4 - 2), sigma = R * pow(10.0, -urand() * 3);
        int b = qaq_bits_needed(R, sigma);
        CU_ASSERT(b >= 0 && b <= 12);
        if (b >= 1) CU_ASSERT(R / ((1 << b) - 1) / sqrt(12.0) <= sigma);
        if (b >= 2) CU_ASSERT(R / ((1 << (b - 1)) - 1) / sqrt(12.0) > sigma);
    }
}

/* The error of the quantiser at the chosen width really has a standard deviation <= sigma:
 * values spread uniformly over [0, R] (the model behind the formula) quantised by kv_quant. */
static void test_bits_give_sigma(void)
{
    enum { N = 4096 };
    static float x[N], y[N];
    static uint8_t codes[N];
    const double R = 3.0;
    const double sigmas[] = {0.3, 0.1, 0.03, 0.01, 0.004};
    for (int s = 0; s < 5; s++) {
        int b = qaq_bits_needed(R, sigmas[s]);
        CU_ASSERT_FATAL(b >= 1 && b <= 8);
        for (int i = 0; i < N; i++) x[i] = (float)(R * urand());
        x[0] = 0.0f;
        x[1] = (float)R;
        uint16_t scale, zero;
        kvq_params(0.0f, (float)R, b, &scale, &zero);
        kvq_pack(codes, x, N, b, scale, zero);
        kvq_unpack(y, codes, N, b, scale, zero);
        double se = 0;
        for (int i = 0; i < N; i++) se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        double rms = sqrt(se / N);
        CU_ASSERT(rms <= sigmas[s] * 1.05);
        CU_ASSERT(rms > sigmas[s] * 0.25); /* not far more bits than needed */
    }
}

static void test_pick_bits(void)
{
    const int want248[] = {2, 2, 2, 4, 4, 8, 8, 8, 8, 8};
    for (int n = 0; n < 10; n++) CU_ASSERT_EQUAL(qaq_pick_bits(n, QAQ_WIDTHS_248), want248[n]);
    CU_ASSERT_EQUAL(qaq_pick_bits(31, QAQ_WIDTHS_248), 8);
    CU_ASSERT_EQUAL(qaq_pick_bits(3, QAQ_WIDTHS_2348), 3);
    CU_ASSERT_EQUAL(qaq_pick_bits(1, QAQ_WIDTHS(4)), 4);
    CU_ASSERT_EQUAL(qaq_pick_bits(7, QAQ_WIDTHS(4)), 4);
    CU_ASSERT_EQUAL(qaq_pick_bits(3, 0), -1);
    CU_ASSERT_EQUAL(qaq_pick_bits(3, QAQ_WIDTHS(1) | QAQ_WIDTHS(9)), -1); /* only 2..8 */
}

static void test_sigma_bounds(void)
{
    /* T = 2, sigma_S = 0.5, |q|^2 = 4: ln(8 / 1 * 0.25 + 1) / 4 = ln(3) / 4 */
    CU_ASSERT_DOUBLE_EQUAL(qaq_key_sigma(2, 0.5, 4.0), sqrt(log(3.0) / 4.0), 1e-12);
    /* T = 11: 1331 / 10 * 0.01^2 = 0.01331 */
    CU_ASSERT_DOUBLE_EQUAL(qaq_key_sigma(11, 0.01, 300.0), sqrt(log(1.01331) / 300.0), 1e-12);
    CU_ASSERT(isinf(qaq_key_sigma(1, 0.5, 4.0)));
    CU_ASSERT(isinf(qaq_key_sigma(100, 0.5, 0.0)));
    double prev = 0;
    int mono = 1;
    for (int64_t T = 2; T < 100000; T = T * 3 / 2 + 1) {
        double s = qaq_key_sigma(T, 1e-3, 300.0);
        if (s < prev) mono = 0;
        prev = s;
    }
    CU_ASSERT(mono); /* a key's bits never have to rise as the context grows */
    CU_ASSERT(qaq_key_sigma(100, 1e-3, 600.0) < qaq_key_sigma(100, 1e-3, 300.0));
    /* value: 0.1 / (sqrt(100) * 0.05) = 0.2 */
    CU_ASSERT_DOUBLE_EQUAL(qaq_value_sigma(100, 0.1, 0.05), 0.2, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(qaq_value_sigma(100, 0.1, -0.05), 0.2, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(qaq_value_sigma(4, 1.0, 1.0), 0.5, 1e-12);
    CU_ASSERT(isinf(qaq_value_sigma(100, 0.1, 0.0)));
    /* key bits: T = 2, |q|^2 = 4, sigma_S 0.5 -> sigma 0.5241; R = 10 -> q = 5.51 -> B 3 -> 4 */
    CU_ASSERT_EQUAL(qaq_bits_needed(10.0, qaq_key_sigma(2, 0.5, 4.0)), 3);
    CU_ASSERT_EQUAL(qaq_key_bits(10.0, 2, 0.5, 4.0, QAQ_WIDTHS_248), 4);
    CU_ASSERT_EQUAL(qaq_key_bits(10.0, 2, 0.5, 4.0, QAQ_WIDTHS_2348), 3);
    CU_ASSERT_EQUAL(qaq_key_bits(10.0, 1, 0.5, 4.0, QAQ_WIDTHS_248), 2); /* one token: any */
}

static void test_qnorm_quantile(void)
{
    /* queries (i, 0) for i = 1..10 in shuffled order: squared norms 1, 4, ..., 100 */
    const int order[10] = {7, 2, 10, 1, 5, 9, 3, 6, 8, 4};
    float q[20];
    for (int i = 0; i < 10; i++) { q[2 * i] = (float)order[i]; q[2 * i + 1] = 0.0f; }
    double v = 0;
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q, 10, 2, 0.1, &v), 0);
    CU_ASSERT_EQUAL(v, 81.0); /* 9 of 10 at or below, one (10%) above */
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q, 10, 2, 0.0, &v), 0);
    CU_ASSERT_EQUAL(v, 100.0);
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q, 10, 2, 0.5, &v), 0);
    CU_ASSERT_EQUAL(v, 25.0);
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q, 10, 2, 0.99, &v), 0);
    CU_ASSERT_EQUAL(v, 1.0);
    const float q3[3] = {1, 2, 2};
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q3, 1, 3, 0.1, &v), 0);
    CU_ASSERT_EQUAL(v, 9.0);
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q, 10, 2, 1.0, &v), KVS_EINVAL);
    CU_ASSERT_EQUAL(qaq_qnorm2_quantile(q, 0, 2, 0.1, &v), KVS_EINVAL);
}

static void test_window(void)
{
    qaq_window w;
    CU_ASSERT(sizeof w <= 20);
    CU_ASSERT_EQUAL(qaq_window_init(&w, 0), KVS_EINVAL);
    CU_ASSERT_EQUAL(qaq_window_init(&w, QAQ_WINDOW_MAX + 1), KVS_EINVAL);
    CU_ASSERT_EQUAL_FATAL(qaq_window_init(&w, 5), 0);
    CU_ASSERT_EQUAL(qaq_window_max(&w), 0.0f);
    CU_ASSERT(!qaq_window_ready(&w));
    for (int i = 0; i < 4; i++) qaq_window_push(&w, 0.125f);
    CU_ASSERT(!qaq_window_ready(&w));
    CU_ASSERT_EQUAL(qaq_window_max(&w), 0.125f);
    qaq_window_push(&w, 0.125f);
    CU_ASSERT(qaq_window_ready(&w));
    /* persistence: a steady score stays the prediction */
    for (int i = 0; i < 20; i++) {
        qaq_window_push(&w, 0.125f);
        CU_ASSERT_EQUAL(qaq_window_max(&w), 0.125f);
    }
    /* a jump is the prediction for exactly n = 5 scores, then forgotten */
    qaq_window_push(&w, 0.875f);
    CU_ASSERT_EQUAL(qaq_window_max(&w), 0.875f);
    for (int i = 0; i < 4; i++) {
        qaq_window_push(&w, 0.015625f);
        CU_ASSERT_EQUAL(qaq_window_max(&w), 0.875f);
    }
    qaq_window_push(&w, 0.015625f); /* the jump was 5 scores ago: out of the window */
    CU_ASSERT_EQUAL(qaq_window_max(&w), 0.015625f);
    /* scores are kept to fp16 */
    qaq_window_push(&w, 0.1f);
    CU_ASSERT(fabsf(qaq_window_max(&w) - 0.1f) <= 0.1f * 0x1p-11f);
}

static void test_window_exact(void)
{
    qaq_window w;
    CU_ASSERT_EQUAL_FATAL(qaq_window_init(&w, 3), 0);
    const float s[] = {0.5f, 0.125f, 0.25f, 0.375f, 0.0625f, 0.046875f, 0.03125f, 0.75f};
    const float want[] = {0.5f, 0.5f, 0.5f, 0.375f, 0.375f, 0.375f, 0.0625f, 0.75f};
    for (int i = 0; i < 8; i++) {
        qaq_window_push(&w, s[i]);
        CU_ASSERT_EQUAL(qaq_window_max(&w), want[i]);
        CU_ASSERT_EQUAL(qaq_window_ready(&w), i >= 2);
    }
    CU_ASSERT_EQUAL_FATAL(qaq_window_init(&w, 1), 0);
    qaq_window_push(&w, 0.5f);
    qaq_window_push(&w, 0.125f);
    CU_ASSERT_EQUAL(qaq_window_max(&w), 0.125f);
}

/* value bits: the largest width until the window is full, then from S_t. R = 1, T = 100,
 * S = 0.5: sigma = sigma_X / 5; sigma_X chosen so that q = 10 steps -> 4 bits. */
static void test_value_bits(void)
{
    qaq_window w;
    qaq_window_init(&w, 5);
    const double sx = 5.0 * sigma_for(1.0, 10.0);
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS_248), 8);
    for (int i = 0; i < 4; i++) qaq_window_push(&w, 0.5f);
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS_248), 8); /* not ready */
    qaq_window_push(&w, 0.5f);
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS_248), 4);
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS_2348), 4);
    for (int i = 0; i < 5; i++) qaq_window_push(&w, 0.0625f); /* 8x less attention: q = 1.25 */
    CU_ASSERT_EQUAL(qaq_bits_needed(1.0, qaq_value_sigma(100, sx, 0.0625)), 2);
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS_248), 2);
    qaq_window_push(&w, 1.0f); /* a jump: q = 20 -> 5 bits -> 8 */
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS_248), 8);
    CU_ASSERT_EQUAL(qaq_value_bits(1.0, 100, sx, &w, QAQ_WIDTHS(2) | QAQ_WIDTHS(5)), 5);
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* 0..15 with index 3 = 100 and index 9 = -50: one outlier per side, range 0..15 at 4 bits
 * (scale 1, zero 0); 6 + 2 x 3 + 8 = 20 bytes; read back exactly. */
static void test_record_known(void)
{
    float x[16], y[16];
    for (int i = 0; i < 16; i++) x[i] = (float)i;
    x[3] = 100.0f;
    x[9] = -50.0f;
    uint8_t rec[64];
    qaq_row_info info;
    CU_ASSERT_EQUAL_FATAL(qaq_encode(rec, sizeof rec, x, 16, 4, 1, &info), 20);
    CU_ASSERT_EQUAL(info.bytes, 20u);
    CU_ASSERT_EQUAL(info.n_outliers, 2);
    CU_ASSERT_EQUAL(info.lo, 0.0f);
    CU_ASSERT_EQUAL(info.hi, 15.0f);
    CU_ASSERT_EQUAL(qaq_record_bytes(16, 4, 2), 20u);
    CU_ASSERT_EQUAL(rec[0], 4);
    CU_ASSERT_EQUAL(rec[1], 2);
    CU_ASSERT_EQUAL(get16(rec + 2), 0x3c00); /* scale 1 */
    CU_ASSERT_EQUAL(get16(rec + 4), 0x0000); /* zero 0 */
    CU_ASSERT_EQUAL(rec[6], 9);              /* the low outlier first */
    CU_ASSERT_EQUAL(kv_f16_to_f32(get16(rec + 7)), -50.0f);
    CU_ASSERT_EQUAL(rec[9], 3);
    CU_ASSERT_EQUAL(kv_f16_to_f32(get16(rec + 10)), 100.0f);
    const uint8_t *codes = rec + 12;
    for (int i = 0; i < 16; i++) {
        unsigned want = i == 3 ? 15u : i == 9 ? 0u : (unsigned)i; /* outliers clamped */
        CU_ASSERT_EQUAL(kvq_code(codes, i, 4), want);
    }
    CU_ASSERT_EQUAL(qaq_record_size(rec, sizeof rec, 16), 20);
    CU_ASSERT_EQUAL(qaq_decode(rec, 20, 16, y), 20);
    CU_ASSERT_EQUAL(memcmp(x, y, sizeof x), 0);
    CU_ASSERT_DOUBLE_EQUAL(qaq_ratio(16, 20), 32.0 / 20.0, 1e-12);
    /* without outliers: range -50..100, 4 bits -> coarse (scale 10) */
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 16, 4, 0, &info), 14);
    CU_ASSERT_EQUAL(info.lo, -50.0f);
    CU_ASSERT_EQUAL(kv_f16_to_f32(get16(rec + 2)), 10.0f);
}

static void test_record_3bit(void)
{
    float x[8], y[8];
    for (int i = 0; i < 8; i++) x[i] = (float)i;
    uint8_t rec[32];
    CU_ASSERT_EQUAL_FATAL(qaq_encode(rec, sizeof rec, x, 8, 3, 0, NULL), 6 + 3);
    CU_ASSERT_EQUAL(get16(rec + 2), 0x3c00);
    /* codes 0..7, 3 bits each, LSB first: 0xFAC688 */
    CU_ASSERT_EQUAL(rec[6], 0x88);
    CU_ASSERT_EQUAL(rec[7], 0xC6);
    CU_ASSERT_EQUAL(rec[8], 0xFA);
    CU_ASSERT_EQUAL(qaq_decode(rec, 9, 8, y), 9);
    CU_ASSERT_EQUAL(memcmp(x, y, sizeof x), 0);
}

static void test_record_sizes(void)
{
    /* head dim 64 at 1%: 1 outlier per side */
    CU_ASSERT_EQUAL(qaq_record_bytes(64, 4, 2), 6u + 6u + 32u);
    CU_ASSERT_EQUAL(qaq_record_bytes(64, 2, 2), 6u + 6u + 16u);
    CU_ASSERT_EQUAL(qaq_record_bytes(128, 2, 2), 6u + 6u + 32u);
    CU_ASSERT_EQUAL(qaq_record_bytes(64, 3, 0), 6u + 24u);
    CU_ASSERT_EQUAL(qaq_record_bytes(7, 3, 1), 6u + 3u + 3u); /* 21 bits -> 3 bytes */
    CU_ASSERT_EQUAL(qaq_record_max_bytes(64, 8, 1), 6u + 6u + 64u);
    CU_ASSERT_EQUAL(qaq_record_bytes(0, 4, 0), 0u);
    CU_ASSERT_EQUAL(qaq_record_bytes(257, 4, 0), 0u);
    CU_ASSERT_EQUAL(qaq_record_bytes(64, 9, 0), 0u);
    CU_ASSERT_EQUAL(qaq_record_bytes(64, 0, 0), 0u);
    /* ratio = fp16 bytes / record bytes, scales, zero and outliers included */
    CU_ASSERT_DOUBLE_EQUAL(qaq_ratio(64, qaq_record_bytes(64, 2, 2)), 128.0 / 28.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(qaq_ratio(128, qaq_record_bytes(128, 4, 2)), 256.0 / 76.0, 1e-12);
    CU_ASSERT_EQUAL(qaq_ratio(64, 0), 0.0);
}

static void test_record_special(void)
{
    float x[64], y[64];
    uint8_t rec[128];
    for (int i = 0; i < 64; i++) x[i] = (float)i / 10;
    x[17] = NAN;
    qaq_row_info info;
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 64, 4, 1, &info), 6 + 32);
    CU_ASSERT_EQUAL(info.n_outliers, 0);
    CU_ASSERT_EQUAL(qaq_decode(rec, sizeof rec, 64, y), 6 + 32);
    for (int i = 0; i < 64; i++) CU_ASSERT(isnan(y[i]));
    x[17] = -INFINITY;
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 64, 4, 1, NULL), 6 + 32);
    qaq_decode(rec, sizeof rec, 64, y);
    CU_ASSERT(isnan(y[0]));
    /* saturation: 1e6 becomes the high outlier, stored as 65504 */
    x[17] = 1e6f;
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 64, 4, 1, &info), 6 + 6 + 32);
    qaq_decode(rec, sizeof rec, 64, y);
    CU_ASSERT_EQUAL(y[17], 65504.0f);
    CU_ASSERT_EQUAL(info.hi, 6.3f);
    /* constant row: scale 0, exact */
    for (int i = 0; i < 64; i++) x[i] = -2.5f;
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 64, 2, 1, NULL), 6 + 6 + 16);
    CU_ASSERT_EQUAL(get16(rec + 2), 0);
    qaq_decode(rec, sizeof rec, 64, y);
    CU_ASSERT_EQUAL(memcmp(x, y, sizeof x), 0);
}

static void test_record_errors(void)
{
    float x[64], y[64];
    uint8_t rec[128];
    for (int i = 0; i < 64; i++) x[i] = (float)i;
    CU_ASSERT_EQUAL(qaq_encode(rec, 43, x, 64, 4, 1, NULL), KVS_ERANGE); /* needs 44 */
    CU_ASSERT_EQUAL(qaq_encode(rec, 44, x, 64, 4, 1, NULL), 44);
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 64, 9, 1, NULL), KVS_EINVAL);
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 64, 4, 32, NULL), KVS_EINVAL);
    CU_ASSERT_EQUAL(qaq_encode(rec, sizeof rec, x, 0, 4, 0, NULL), KVS_EINVAL);
    CU_ASSERT_EQUAL(qaq_encode(rec, 44, x, 64, 4, 1, NULL), 44);
    CU_ASSERT_EQUAL(qaq_decode(rec, 43, 64, y), KVS_EFORMAT); /* truncated */
    CU_ASSERT_EQUAL(qaq_decode(rec, 5, 64, y), KVS_EFORMAT);
    CU_ASSERT_EQUAL(qaq_record_size(rec, 5, 64), KVS_EFORMAT);
    uint8_t bad[128];
    memcpy(bad, rec, 44);
    bad[0] = 0;
    CU_ASSERT_EQUAL(qaq_decode(bad, 44, 64, y), KVS_EFORMAT);
    bad[0] = 9;
    CU_ASSERT_EQUAL(qaq_decode(bad, 44, 64, y), KVS_EFORMAT);
    memcpy(bad, rec, 44);
    bad[6] = 64; /* outlier index out of the row */
    CU_ASSERT_EQUAL(qaq_decode(bad, 44, 64, y), KVS_EFORMAT);
    CU_ASSERT_EQUAL(qaq_decode(rec, 44, 64, y), 44);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Random rows, widths 2..8, 0..2 outliers per side: the record's range is the sorted row
 * without its k extremes each side; non-outliers within scale/2, outliers within fp16
 * rounding; size as qaq_record_bytes says; records back to back decode by their own size. */
static void test_record_random(void)
{
    float x[128], y[128], s[128];
    uint8_t stream[3 * 256];
    int bad = 0;
    for (int it = 0; it < 600; it++) {
        int hd = it % 2 ? 64 : 128, bits = 2 + it % 7, k = it % 3;
        for (int i = 0; i < hd; i++) {
            double g = (urand() - 0.5) * 4;
            x[i] = (float)(g * g * g + (urand() < 0.03 ? 40 * (urand() - 0.5) : 0));
        }
        memcpy(s, x, sizeof(float) * hd);
        qsort(s, (size_t)hd, sizeof(float), cmp_float);
        qaq_row_info info;
        int n = qaq_encode(stream, sizeof stream, x, hd, bits, k, &info);
        CU_ASSERT_EQUAL_FATAL(n, (int)qaq_record_bytes(hd, bits, 2 * k));
        CU_ASSERT_EQUAL(info.lo, s[k]);
        CU_ASSERT_EQUAL(info.hi, s[hd - 1 - k]);
        CU_ASSERT_EQUAL(qaq_decode(stream, (size_t)n, hd, y), n);
        float scale = kv_f16_to_f32(get16(stream + 2));
        for (int i = 0; i < hd; i++) {
            double e = fabs((double)y[i] - x[i]);
            int outlier = x[i] < info.lo || x[i] > info.hi;
            if (outlier ? e > fabs(x[i]) * 0x1p-11 : e > scale / 2 + 1e-6 * (fabs(x[i]) + 1))
                bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* three records of different widths back to back, walked by their sizes */
    float rows[3][64], out[64];
    const int widths[3] = {2, 8, 3};
    size_t at = 0;
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 64; i++) rows[r][i] = (float)(urand() * 2 - 1);
        int n = qaq_encode(stream + at, sizeof stream - at, rows[r], 64, widths[r], 1, NULL);
        CU_ASSERT_FATAL(n > 0);
        at += (size_t)n;
    }
    size_t pos = 0;
    for (int r = 0; r < 3; r++) {
        int n = qaq_decode(stream + pos, at - pos, 64, out);
        CU_ASSERT_FATAL(n > 0);
        CU_ASSERT_EQUAL(stream[pos], widths[r]);
        double worst = 0;
        for (int i = 0; i < 64; i++) worst = fmax(worst, fabs((double)out[i] - rows[r][i]));
        CU_ASSERT(worst <= 2.0 / ((1 << widths[r]) - 1)); /* within one step of range 2 */
        pos += (size_t)n;
    }
    CU_ASSERT_EQUAL(pos, at);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"outliers per side: at least one at 1%, capped", test_outlier_counts},
        {"outlier selection: ties, range without them, bad k", test_outlier_select},
        {"bits needed: hand values and minimality", test_bits_needed},
        {"the chosen width gives an error sigma <= the target", test_bits_give_sigma},
        {"bits rounded up to allowed widths, clamped", test_pick_bits},
        {"key and value sigma bounds", test_sigma_bounds},
        {"query norm^2 upper quantile (nearest rank)", test_qnorm_quantile},
        {"attention window: persistence and a jump of n scores", test_window},
        {"attention window: max of the last n, exactly", test_window_exact},
        {"value bits: largest width until ready, then from S_t", test_value_bits},
        {"record: a known row byte by byte", test_record_known},
        {"record: 3-bit codes", test_record_3bit},
        {"record sizes and compression ratio", test_record_sizes},
        {"record: NaN / inf poison, saturation, constant row", test_record_special},
        {"record: malformed input refused", test_record_errors},
        {"record: random rows, bounds, back-to-back records", test_record_random},
    };
    return kvs_test_main("qaq", tests, (int)(sizeof tests / sizeof tests[0]));
}
