/* test_wfmt.c — the weight formats' dot kernels (wfmt.h) and the products on weight matrices
 * (wmat.h), at every instruction-set level this CPU has (scalar always), against fp32
 * references built from gguf_dequantize:
 *   - exactness of the integer path: dot(w, xq) vs sum deq(w) * deq(xq) in double (the same
 *     numbers, so only float rounding may differ: 1e-5 relative to sum |w x|);
 *   - the activation quantisation's error: vs sum deq(w) * x, within the bound it implies
 *     (each x off by at most d/2 = max|x| / 254 per block);
 *   - wmat_mul on multi-part matrices (mixed formats) at small and large batch (dot path and
 *     BLAS tiles), beta 0 and 1, vs the fp32 product. */
#include "core/common.h"
#include "gguf.h"
#include "test_util.h"
#include "wfmt.h"
#include "wmat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}
static float urand(void) { return (float)(rnd() & 0xffffff) / (float)0x1000000; } /* [0,1) */

static void put_f16(uint8_t *p, float v)
{
    uint16_t h = gguf_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* Random blocks of f with sane scales (random bytes elsewhere: every bit pattern of the
 * quants is valid). */
static void random_blocks(const wfmt *f, uint8_t *w, int n)
{
    const int nb = n / f->blck;
    for (int i = 0; i < nb * f->bytes; i++) w[i] = (uint8_t)rnd();
    for (int b = 0; b < nb; b++) {
        uint8_t *p = w + (size_t)b * f->bytes;
        float d = 0.001f + 0.02f * urand(), m = -0.05f * urand();
        switch (f->type) {
        case GGUF_T_F32:
            for (int i = 0; i < f->blck; i++) { float v = urand() - 0.5f; memcpy(p, &v, 4); }
            break;
        case GGUF_T_F16: put_f16(p, urand() - 0.5f); break;
        case GGUF_T_BF16: { float v = urand() - 0.5f; uint32_t u; memcpy(&u, &v, 4);
                            uint16_t h = (uint16_t)(u >> 16); memcpy(p, &h, 2); } break;
        case GGUF_T_Q4_0: case GGUF_T_Q5_0: case GGUF_T_Q8_0: put_f16(p, d); break;
        case GGUF_T_Q4_1: case GGUF_T_Q5_1: case GGUF_T_Q4_K: case GGUF_T_Q5_K:
            put_f16(p, d); put_f16(p + 2, f->type == GGUF_T_Q4_1 || f->type == GGUF_T_Q5_1 ? m : -m * 0.1f);
            break;
        case GGUF_T_Q6_K: put_f16(p + 208, d * 0.05f); break;
        case GGUF_T_Q8_K: { float v = d; memcpy(p, &v, 4); } break;
        default: break;
        }
    }
}

static void random_x(float *x, int n, int mode)
{
    for (int i = 0; i < n; i++) {
        x[i] = 2.0f * urand() - 1.0f;
        if (mode == 1 && i % 97 == 0) x[i] *= 50.0f; /* outliers */
        if (mode == 2 && (i / 32) % 3 == 0) x[i] = 0.0f; /* all-zero blocks */
    }
}

static const wfmt *all_fmts[] = {&wfmt_f32, &wfmt_f16, &wfmt_bf16, &wfmt_q4_0, &wfmt_q4_1,
                                 &wfmt_q5_0, &wfmt_q5_1, &wfmt_q8_0, &wfmt_q4_k, &wfmt_q5_k,
                                 &wfmt_q6_k, &wfmt_q8_k};
#define N_FMTS (int)(sizeof all_fmts / sizeof all_fmts[0])

static void test_table(void)
{
    for (int i = 0; i < N_FMTS; i++) {
        const wfmt *f = all_fmts[i];
        CU_ASSERT_PTR_EQUAL(wfmt_get(f->type), f);
        CU_ASSERT_EQUAL((uint32_t)f->blck, gguf_type_block_elems(f->type));
        CU_ASSERT_EQUAL((uint32_t)f->bytes, gguf_type_block_bytes(f->type));
        CU_ASSERT_STRING_EQUAL(f->name, gguf_type_name(f->type));
        CU_ASSERT_PTR_NOT_NULL(f->dot[0]);
    }
    CU_ASSERT_PTR_NULL(wfmt_get(GGUF_T_Q8_K + 100));
    CU_ASSERT_PTR_NULL(wfmt_get(11)); /* Q3_K: no kernels */
    printf(" [best ISA %s]", wq_isa_name(wq_isa_best()));
}

/* The activation quantiser: round trip within d/2 per element, sums right, zeros stay 0. */
static void test_quantize(void)
{
    float x[256], y[256];
    wq8_block q[8];
    for (int mode = 0; mode < 3; mode++) {
        random_x(x, 256, mode);
        wq8_quantize(x, q, 256);
        for (int b = 0; b < 8; b++) {
            int s0 = 0, s1 = 0;
            for (int i = 0; i < 32; i++) {
                y[32 * b + i] = q[b].d * q[b].q[i];
                if (i < 16) s0 += q[b].q[i]; else s1 += q[b].q[i];
                CU_ASSERT(q[b].q[i] >= -127 && q[b].q[i] <= 127);
            }
            CU_ASSERT_EQUAL(s0, q[b].s16[0]);
            CU_ASSERT_EQUAL(s1, q[b].s16[1]);
            for (int i = 0; i < 32; i++)
                CU_ASSERT(fabsf(y[32 * b + i] - x[32 * b + i]) <= q[b].d * 0.5f + 1e-7f);
        }
    }
}

static int n_checked;

/* One format, one length, every ISA level: the checks in the header. */
static void check_dot(const wfmt *f, int n, int xmode)
{
    uint8_t *w = malloc((size_t)(n / f->blck) * f->bytes);
    float *wf = malloc((size_t)n * sizeof(float)), *x = malloc((size_t)n * sizeof(float));
    wq8_block *xq = malloc((size_t)(n / 32 + 1) * sizeof(wq8_block));
    CU_ASSERT_FATAL(w && wf && x && xq);
    random_blocks(f, w, n);
    random_x(x, n, xmode);
    CU_ASSERT_FATAL(gguf_dequantize(f->type, w, wf, (uint64_t)n) == 0);
    double ref_q = 0, ref_x = 0, mag = 0, qbound = 0;
    if (f->act_q8) {
        wq8_quantize(x, xq, n);
        for (int i = 0; i < n; i++) {
            ref_q += (double)wf[i] * xq[i / 32].d * xq[i / 32].q[i % 32];
            ref_x += (double)wf[i] * x[i];
            mag += fabs((double)wf[i] * x[i]);
            qbound += fabs((double)wf[i]) * xq[i / 32].d * 0.5;
        }
    } else {
        for (int i = 0; i < n; i++) {
            ref_q += (double)wf[i] * x[i];
            mag += fabs((double)wf[i] * x[i]);
        }
        ref_x = ref_q;
    }
    const void *xa = f->act_q8 ? (const void *)xq : (const void *)x;
    const wq_isa best = wq_isa_best();
    for (int l = 0; l <= (int)best; l++) {
        if (l > 0 && !f->dot[l]) continue;
        float out = NAN;
        wfmt_dot_fn fn = f->dot[l] ? f->dot[l] : f->dot[0];
        fn(w, xa, n, &out);
        double err = fabs(out - ref_q), tol = 1e-5 * mag + 1e-6;
        if (!(err <= tol))
            printf("\n  %s n=%d x%d %s: dot %.7g vs %.7g (err %.3g > %.3g)", f->name, n, xmode,
                   wq_isa_name((wq_isa)l), out, ref_q, err, tol);
        CU_ASSERT(err <= tol);
        CU_ASSERT(fabs(out - ref_x) <= qbound * 1.0001 + 1e-5 * mag + 1e-6);
        n_checked++;
    }
    free(w); free(wf); free(x); free(xq);
}

/* The four-row dots against the scalar dot of each row. */
static void check_dot4(const wfmt *f, int n)
{
    uint8_t *w = malloc((size_t)(n / f->blck) * f->bytes);
    float *x = malloc((size_t)n * sizeof(float));
    wq8_block *xq[4];
    CU_ASSERT_FATAL(w && x);
    random_blocks(f, w, n);
    float ref[4];
    double mag = 0;
    for (int k = 0; k < 4; k++) {
        xq[k] = malloc((size_t)(n / 32) * sizeof(wq8_block));
        CU_ASSERT_FATAL(xq[k] != NULL);
        random_x(x, n, k % 3);
        wq8_quantize(x, xq[k], n);
        f->dot[0](w, xq[k], n, &ref[k]);
        mag += fabs(ref[k]);
    }
    for (int l = 1; l <= (int)wq_isa_best(); l++) {
        if (!f->dot4[l]) continue;
        float out[4];
        f->dot4[l](w, (const void *const *)xq, n, out);
        for (int k = 0; k < 4; k++) {
            double err = fabs(out[k] - ref[k]), tol = 1e-4 * mag + 1e-5 * n;
            if (!(err <= tol)) printf("\n  dot4 %s n=%d %s row %d: %.7g vs %.7g", f->name, n,
                                      wq_isa_name((wq_isa)l), k, out[k], ref[k]);
            CU_ASSERT(err <= tol);
        }
        n_checked++;
    }
    for (int k = 0; k < 4; k++) free(xq[k]);
    free(w); free(x);
}

static void test_dots(void)
{
    n_checked = 0;
    for (int i = 0; i < N_FMTS; i++) {
        const wfmt *f = all_fmts[i];
        const int base = f->blck < 32 ? 32 : f->blck;
        /* one block, a few, odd counts, the model widths (576, 1536, 8960) where they fit */
        const int lens[] = {base, 2 * base, 3 * base, 7 * base, 576, 1536, 8960};
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            if (lens[k] % f->blck || lens[k] % 32) continue;
            for (int xm = 0; xm < 3; xm++) check_dot(f, lens[k], xm);
            if (f->act_q8) check_dot4(f, lens[k]);
        }
    }
    printf(" [%d kernel checks]", n_checked);
    CU_ASSERT(n_checked > 100);
}

/* Forcing a level is what the tests and KVSIEVE_WQ_ISA rely on. */
static void test_isa_force(void)
{
    wq_isa best = wq_isa_best();
    CU_ASSERT_EQUAL(wq_isa_force(WQ_ISA_SCALAR), WQ_ISA_SCALAR);
    CU_ASSERT_PTR_EQUAL(wfmt_dot(&wfmt_q4_1), wfmt_q4_1.dot[0]);
    CU_ASSERT_EQUAL(wq_isa_force(WQ_ISA_VNNI), best);
    if (best >= WQ_ISA_AVX2) CU_ASSERT_PTR_NOT_EQUAL(wfmt_dot(&wfmt_q4_1), wfmt_q4_1.dot[0]);
    wq_isa_force(best);
}

/* wmat_mul on a 3-part matrix of mixed formats vs fp32, dot path and BLAS path. */
static void check_mul(const wfmt *fa, const wfmt *fb, int K, int T, wq_isa isa, int res)
{
    const int ra = 40, rb = 17, rc = 33, N = ra + rb + rc;
    const wfmt *fc = &wfmt_q8_0;
    uint8_t *wa = malloc(wfmt_row_bytes(fa, K) * ra), *wb = malloc(wfmt_row_bytes(fb, K) * rb);
    uint8_t *wc = malloc(wfmt_row_bytes(fc, K) * rc);
    float *wf = malloc((size_t)N * K * sizeof(float)), *X = malloc((size_t)T * K * sizeof(float));
    float *Y = malloc((size_t)T * N * sizeof(float)), *Y0 = malloc((size_t)T * N * sizeof(float));
    CU_ASSERT_FATAL(wa && wb && wc && wf && X && Y && Y0);
    random_blocks(fa, wa, K * ra);
    random_blocks(fb, wb, K * rb);
    random_blocks(fc, wc, K * rc);
    gguf_dequantize(fa->type, wa, wf, (uint64_t)K * ra);
    gguf_dequantize(fb->type, wb, wf + (size_t)ra * K, (uint64_t)K * rb);
    gguf_dequantize(fc->type, wc, wf + (size_t)(ra + rb) * K, (uint64_t)K * rc);
    random_x(X, T * K, 0);
    wmat W = {0};
    CU_ASSERT_FATAL(wmat_add(&W, fa, wa, ra, K) == 0 && wmat_add(&W, fb, wb, rb, K) == 0 &&
                    wmat_add(&W, fc, wc, rc, K) == 0);
    CU_ASSERT_EQUAL(W.rows, N);
    W.act_residual = res;
    wmat_scratch s = {0};
    wq_isa_force(isa);
    for (int beta = 0; beta <= 1; beta++) {
        for (int i = 0; i < T * N; i++) Y[i] = Y0[i] = beta ? (float)(i % 5) : NAN;
        CU_ASSERT_FATAL(wmat_mul(&W, Y, X, T, (float)beta, &s) == 0);
        int bad = 0;
        for (int t = 0; t < T; t++)
            for (int r = 0; r < N; r++) {
                double ref = beta ? Y0[(size_t)t * N + r] : 0.0, mag = 0;
                for (int k = 0; k < K; k++) {
                    ref += (double)wf[(size_t)r * K + k] * X[(size_t)t * K + k];
                    mag += fabs((double)wf[(size_t)r * K + k]);
                }
                /* q8 activations: |x| < 1, so each term is off by < |w| / 254 */
                /* two passes (act_residual): the residual's own error, 127x smaller */
                double tol = T >= wmat_blas_batch() ? 1e-4 * mag + 1e-5
                             : res ? mag / 254.0 / 100.0 + 1e-4 : mag / 254.0 + 1e-5;
                if (!(fabs(Y[(size_t)t * N + r] - ref) <= tol)) bad++;
            }
        if (bad) printf("\n  wmat %s+%s K=%d T=%d %s beta %d res %d: %d bad", fa->name, fb->name,
                        K, T, wq_isa_name(isa), beta, res, bad);
        CU_ASSERT_EQUAL(bad, 0);
    }
    /* row access */
    float row[2048];
    CU_ASSERT_FATAL(K <= 2048);
    CU_ASSERT_EQUAL(wmat_row(&W, ra + 3, row), 0);
    CU_ASSERT_EQUAL(memcmp(row, wf + (size_t)(ra + 3) * K, (size_t)K * sizeof(float)), 0);
    CU_ASSERT(wmat_row(&W, N, row) < 0);
    wmat_scratch_free(&s);
    wq_isa_force(wq_isa_best());
    free(wa); free(wb); free(wc); free(wf); free(X); free(Y); free(Y0);
}

static void test_wmat(void)
{
    const int Ts[] = {1, 3, 4, 5, 8, wmat_blas_batch() + 5};
    for (int l = 0; l <= (int)wq_isa_best(); l++)
        for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
            for (int res = 0; res <= 1; res++) {
                check_mul(&wfmt_q4_1, &wfmt_q4_0, 576, Ts[i], (wq_isa)l, res);
                check_mul(&wfmt_q4_k, &wfmt_q6_k, 512, Ts[i], (wq_isa)l, res);
            }
            check_mul(&wfmt_f16, &wfmt_f32, 96, Ts[i], (wq_isa)l, 0);
        }
    wmat W = {0};
    CU_ASSERT(wmat_add(&W, &wfmt_q4_k, NULL, 4, 576) < 0); /* 576 is not a multiple of 256 */
    CU_ASSERT(wmat_add(&W, &wfmt_q4_1, NULL, 4, 576) == 0);
    CU_ASSERT(wmat_add(&W, &wfmt_q4_1, NULL, 4, 608) < 0); /* columns differ */
}

int main(void)
{
    static const kvs_test tests[] = {
        {"format table matches the GGUF type table", test_table},
        {"8-bit activation blocks", test_quantize},
        {"dot kernels vs dequantised fp32, every ISA level", test_dots},
        {"forcing the ISA level", test_isa_force},
        {"products on multi-part matrices, dot and BLAS paths", test_wmat},
    };
    return kvs_test_main("wfmt", tests, (int)(sizeof tests / sizeof tests[0]));
}
