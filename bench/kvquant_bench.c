/* kvquant_bench.c — cost and error of the quantised KV formats (not a test; docs/QAQ-DESIGN.md).
 *
 *   build/kvquant_bench [--rows N] [--seconds S]
 *   build/kvquant_bench --kv FILE.kvd        (real K/V from bench/kv_dump.py, part 3 only)
 *
 * 1. Error: random rows (Gaussian, Student-t with 3 degrees of freedom, Gaussian with two
 *    "outlier channels" x20 as keys have) quantised with groups of 32 and with one group per
 *    row, at 8/4/2 bits: bits per element (scales included) and RMS / max error relative to
 *    the rows' RMS.
 * 2. Cost: ns per row to write (quantise) and to read (dequantise, in tiles of 16 rows as
 *    attention reads them) for every built-in format and for the QAQ record, head_dim 64
 *    and 128, single thread.
 * 3. (--kv) On real post-RoPE K/V/Q: element and attention errors of each storage, and QAQ's
 *    per-token widths from its sigma bounds: mean bits, ratio, attention errors. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "memory/kv_format.h"
#include "memory/kv_quant.h"
#include "memory/qaq.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double unif(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}

static double gauss(void) { return sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif()); }

static double student3(void)
{
    double c = 0;
    for (int i = 0; i < 3; i++) { double z = gauss(); c += z * z; }
    return gauss() / sqrt(c / 3.0);
}

enum { DIST_GAUSS, DIST_T3, DIST_CHANNELS, N_DIST };
static const char *dist_name[N_DIST] = {"gaussian", "student-t3", "2 channels x20"};

static void fill(float *x, int n, int hd, int dist)
{
    for (int r = 0; r < n; r++)
        for (int i = 0; i < hd; i++) {
            double v = dist == DIST_T3 ? student3() : gauss();
            if (dist == DIST_CHANNELS && (i == 5 || i == hd / 2 + 9)) v *= 20.0;
            x[(size_t)r * hd + i] = (float)v;
        }
}

static void error_study(int rows)
{
    printf("## error: RMS and max |error| / RMS of the rows (%d rows each)\n\n", rows);
    printf("| head_dim | rows | bits | group | bits/elem | RMS err | max err |\n");
    printf("|---|---|---|---|---|---|---|\n");
    const int hds[] = {64, 128}, bitss[] = {8, 4, 2};
    for (int h = 0; h < 2; h++) {
        int hd = hds[h];
        float *x = malloc(sizeof(float) * rows * hd), *y = malloc(sizeof(float) * hd);
        uint8_t *row = malloc(kvq_row_bytes(hd, 1, 8) * 8);
        for (int d = 0; d < N_DIST; d++) {
            fill(x, rows, hd, d);
            double ss = 0;
            for (size_t i = 0; i < (size_t)rows * hd; i++) ss += (double)x[i] * x[i];
            double rms = sqrt(ss / ((double)rows * hd));
            for (int b = 0; b < 3; b++)
                for (int g = 0; g < 2; g++) {
                    int group = g ? hd : 32, bits = bitss[b];
                    double se = 0, mx = 0;
                    for (int r = 0; r < rows; r++) {
                        const float *xr = x + (size_t)r * hd;
                        kvq_row_encode(row, xr, hd, bits, group);
                        kvq_row_decode(y, row, hd, bits, group);
                        for (int i = 0; i < hd; i++) {
                            double e = fabs((double)y[i] - xr[i]);
                            se += e * e;
                            mx = e > mx ? e : mx;
                        }
                    }
                    printf("| %d | %s | %d | %s | %.3f | %.4f | %.4f |\n", hd, dist_name[d], bits,
                           g ? "row" : "32", 8.0 * kvq_row_bytes(hd, bits, group) / hd,
                           sqrt(se / ((double)rows * hd)) / rms, mx / rms);
                }
            /* the QAQ record: one range per row without its lowest and highest value */
            for (int b = 0; b < 3; b++) {
                int bits = bitss[b];
                double se = 0, mx = 0;
                size_t cap = qaq_record_max_bytes(hd, bits, 1);
                for (int r = 0; r < rows; r++) {
                    const float *xr = x + (size_t)r * hd;
                    qaq_encode(row, cap, xr, hd, bits, 1, NULL);
                    qaq_decode(row, cap, hd, y);
                    for (int i = 0; i < hd; i++) {
                        double e = fabs((double)y[i] - xr[i]);
                        se += e * e;
                        mx = e > mx ? e : mx;
                    }
                }
                printf("| %d | %s | %d | qaq row + 2 outliers | %.3f | %.4f | %.4f |\n", hd,
                       dist_name[d], bits, 8.0 * cap / hd, sqrt(se / ((double)rows * hd)) / rms,
                       mx / rms);
            }
        }
        free(x); free(y); free(row);
    }
    printf("\n");
}

typedef struct {
    const char *name;
    const kv_format *fmt; /* NULL: the QAQ record at qaq_bits */
    int qaq_bits;
} bench_item;

static double ns_per(double secs, long n) { return secs * 1e9 / (double)n; }

static void cost(int rows, double min_secs)
{
    printf("## cost: ns per row, one thread, fastest pass over %d distinct rows (>= 5 passes, >= %.2f s per cell)\n\n", rows,
           min_secs);
    printf("| format | head_dim | row bytes | write ns/row | read ns/row |\n|---|---|---|---|---|\n");
    int nf;
    const kv_format *const *list = kv_format_list(&nf);
    bench_item items[16];
    int ni = 0;
    for (int f = 0; f < nf && ni < 12; f++) items[ni++] = (bench_item){list[f]->name, list[f], 0};
    items[ni++] = (bench_item){"qaq record 4b", NULL, 4};
    items[ni++] = (bench_item){"qaq record 3b", NULL, 3};
    items[ni++] = (bench_item){"qaq record 2b", NULL, 2};
    const int hds[] = {64, 128};
    for (int h = 0; h < 2; h++) {
        int hd = hds[h];
        float *x = malloc(sizeof(float) * rows * hd), *scratch = malloc(sizeof(float) * 16 * hd);
        fill(x, rows, hd, DIST_GAUSS);
        for (int it = 0; it < ni; it++) {
            const bench_item *b = &items[it];
            size_t rb = b->fmt ? b->fmt->row_bytes(hd) : qaq_record_max_bytes(hd, b->qaq_bits, 1);
            uint8_t *store = malloc(rb * rows);
            /* the fastest of repeated passes over all rows: robust to other load on the machine */
            double tw = INFINITY, tr = INFINITY, t_end = kvs_now() + min_secs;
            volatile float sink = 0;
            for (int pass = 0; pass < 5 || kvs_now() < t_end; pass++) {
                double t0 = kvs_now();
                for (int r = 0; r < rows; r++) {
                    if (b->fmt) b->fmt->write_row(store + rb * r, x + (size_t)r * hd, hd);
                    else qaq_encode(store + rb * r, rb, x + (size_t)r * hd, hd, b->qaq_bits, 1, NULL);
                }
                double t1 = kvs_now();
                for (int r = 0; r + 16 <= rows; r += 16) {
                    if (b->fmt) {
                        const float *o = b->fmt->read_rows(store + rb * r, 16, hd, scratch);
                        sink += o[hd * 15];
                    } else {
                        for (int j = 0; j < 16; j++)
                            qaq_decode(store + rb * (r + j), rb, hd, scratch + (size_t)j * hd);
                        sink += scratch[hd * 15];
                    }
                }
                double t2 = kvs_now();
                tw = t1 - t0 < tw ? t1 - t0 : tw;
                tr = t2 - t1 < tr ? t2 - t1 : tr;
            }
            long nw = rows, nr = rows / 16 * 16;
            (void)sink;
            printf("| %s | %d | %zu%s | %.1f | %.1f |\n", b->name, hd, rb, b->fmt ? "" : " (2 outliers)",
                   ns_per(tw, nw), ns_per(tr, nr));
            free(store);
        }
        free(x); free(scratch);
    }
}


/* ---- real K/V (bench/kv_dump.py) --------------------------------------------------------- */

typedef struct {
    int L, Hkv, Hq, d, n;
    float *k, *v, *q; /* [L][Hkv][n][d], [L][Hkv][n][d], [L][Hq][n][d] */
} kv_dump;

static int dump_load(const char *path, kv_dump *D)
{
    FILE *f = fopen(path, "rb");
    char magic[4];
    int32_t h[5];
    if (!f || fread(magic, 1, 4, f) != 4 || memcmp(magic, "KVD1", 4) || fread(h, 4, 5, f) != 5) {
        fprintf(stderr, "%s: not a KVD1 file\n", path);
        if (f) fclose(f);
        return -1;
    }
    D->L = h[0]; D->Hkv = h[1]; D->Hq = h[2]; D->d = h[3]; D->n = h[4];
    size_t nkv = (size_t)D->L * D->Hkv * D->n * D->d, nq = (size_t)D->L * D->Hq * D->n * D->d;
    D->k = malloc(nkv * 4); D->v = malloc(nkv * 4); D->q = malloc(nq * 4);
    int ok = D->k && D->v && D->q && fread(D->k, 4, nkv, f) == nkv &&
             fread(D->v, 4, nkv, f) == nkv && fread(D->q, 4, nq, f) == nq;
    fclose(f);
    if (!ok) fprintf(stderr, "%s: short file\n", path);
    return ok ? 0 : -1;
}

/* A way of storing a row: a group quantiser (bits, group) or the QAQ record (group 0,
 * fixed bits, k outliers per side). */
typedef struct { const char *name; int bits, group, k; } variant;

static size_t variant_bytes(const variant *x, int d)
{
    return x->group ? kvq_row_bytes(d, x->bits, x->group) : qaq_record_max_bytes(d, x->bits, x->k);
}

static void variant_rt(const variant *x, const float *src, float *dst, int d)
{
    uint8_t buf[1024];
    if (x->group) {
        kvq_row_encode(buf, src, d, x->bits, x->group);
        kvq_row_decode(dst, buf, d, x->bits, x->group);
    } else {
        qaq_encode(buf, sizeof buf, src, d, x->bits, x->k, NULL);
        qaq_decode(buf, sizeof buf, d, dst);
    }
}

static void softmax_row(const float *q, const float *k, int n, int d, double *p)
{
    double mx = -INFINITY, sum = 0, sc = 1.0 / sqrt((double)d);
    for (int t = 0; t < n; t++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)q[j] * k[(size_t)t * d + j];
        p[t] = s * sc;
        mx = p[t] > mx ? p[t] : mx;
    }
    for (int t = 0; t < n; t++) sum += (p[t] = exp(p[t] - mx));
    for (int t = 0; t < n; t++) p[t] /= sum;
}

/* Errors of the last query of every query head against all n tokens: attention weights
 * (RMS over tokens of p^ - p) and output (RMS over dims of x^ - x, relative to RMS of x). */
typedef struct { double se_p, n_p, se_x, ss_x, bytes, rows; } att_err;

static void att_compare(const kv_dump *D, int l, int h, const float *kq, const float *vq,
                        double *p, double *ph, att_err *e)
{
    int n = D->n, d = D->d, G = D->Hq / D->Hkv;
    const float *K = D->k + ((size_t)l * D->Hkv + h) * n * d;
    const float *V = D->v + ((size_t)l * D->Hkv + h) * n * d;
    for (int g = 0; g < G; g++) {
        const float *q = D->q + (((size_t)l * D->Hq + h * G + g) * n + (n - 1)) * d;
        softmax_row(q, K, n, d, p);
        softmax_row(q, kq, n, d, ph);
        for (int t = 0; t < n; t++) e->se_p += (ph[t] - p[t]) * (ph[t] - p[t]);
        e->n_p += n;
        for (int j = 0; j < d; j++) {
            double x = 0, xh = 0;
            for (int t = 0; t < n; t++) {
                x += p[t] * V[(size_t)t * d + j];
                xh += ph[t] * vq[(size_t)t * d + j];
            }
            e->se_x += (xh - x) * (xh - x);
            e->ss_x += x * x;
        }
    }
}

static void real_study(const char *path)
{
    kv_dump D;
    if (dump_load(path, &D)) return;
    const int n = D.n, d = D.d, G = D.Hq / D.Hkv;
    printf("## real K/V: %s (%d layers, %d/%d heads, d %d, %d tokens)\n\n", path, D.L, D.Hkv,
           D.Hq, d, n);
    const variant vs[] = {
        {"int8 (g32)", 8, 32, 0}, {"int8 row", 8, 64, 0}, {"int4 (g32)", 4, 32, 0},
        {"int4 row", 4, 64, 0},   {"int2 (g32)", 2, 32, 0}, {"int2 row", 2, 64, 0},
        {"qaq rec 4b k1", 4, 0, 1}, {"qaq rec 3b k1", 3, 0, 1}, {"qaq rec 2b k1", 2, 0, 1},
        {"qaq rec 2b k0", 2, 0, 0},
    };
    const int nv = (int)(sizeof vs / sizeof vs[0]);
    float *kq = malloc(sizeof(float) * n * d), *vq = malloc(sizeof(float) * n * d);
    double *p = malloc(sizeof(double) * n), *ph = malloc(sizeof(double) * n);
    printf("Element error: RMS(x^ - x) / RMS(x) over every row; attention: the last query of "
           "each query head against all %d tokens, K and V both stored that way: RMS of the "
           "attention-weight error (x 1e-4) and output error RMS / output RMS.\n\n", n);
    printf("| storage | bytes/row (d %d) | x fp16 | K err | V err | weight err e-4 | output err |\n", d);
    printf("|---|---|---|---|---|---|---|\n");
    for (int vi = 0; vi < nv; vi++) {
        double sek = 0, ssk = 0, sev = 0, ssv = 0;
        att_err e = {0};
        for (int l = 0; l < D.L; l++)
            for (int h = 0; h < D.Hkv; h++) {
                const float *K = D.k + ((size_t)l * D.Hkv + h) * n * d;
                const float *V = D.v + ((size_t)l * D.Hkv + h) * n * d;
                for (int t = 0; t < n; t++) {
                    variant_rt(&vs[vi], K + (size_t)t * d, kq + (size_t)t * d, d);
                    variant_rt(&vs[vi], V + (size_t)t * d, vq + (size_t)t * d, d);
                }
                for (size_t i = 0; i < (size_t)n * d; i++) {
                    sek += (kq[i] - K[i]) * (double)(kq[i] - K[i]); ssk += (double)K[i] * K[i];
                    sev += (vq[i] - V[i]) * (double)(vq[i] - V[i]); ssv += (double)V[i] * V[i];
                }
                att_compare(&D, l, h, kq, vq, p, ph, &e);
            }
        size_t b = variant_bytes(&vs[vi], d);
        printf("| %s | %zu | %.2f | %.4f | %.4f | %.2f | %.4f |\n", vs[vi].name, b,
               2.0 * d / b, sqrt(sek / ssk), sqrt(sev / ssv), 1e4 * sqrt(e.se_p / e.n_p),
               sqrt(e.se_x / e.ss_x));
    }

    /* QAQ with per-token widths: keys from the sigma_K bound (|q|^2: the upper 10% of the
     * group's squared query norms over all positions, divided by d since logits are
     * q.k / sqrt(d)), values from the sigma_V bound with S_t = the max weight token t got
     * from the 5 queries n-6..n-2 of the group (tokens they did not all see stay at the
     * largest width); evaluated on the query n-1, which is not in the window. */
    printf("\nQAQ per-token widths (one outlier per side, widths {2,4,8} unless noted; sigma_S = "
           "sigma_X = target; T = %d): mean bits, ratio (fp16 bytes / record bytes, K and V "
           "together), errors as above.\n\n", n);
    printf("| target | widths | mean K bits | mean V bits | x fp16 | weight err e-4 | output err |\n");
    printf("|---|---|---|---|---|---|---|\n");
    const double targets[] = {1e-4, 3e-4, 1e-3, 3e-3, 1e-2};
    const unsigned wsets[] = {QAQ_WIDTHS_248, QAQ_WIDTHS_2348};
    double *qn = malloc(sizeof(double) * D.L * D.Hkv);
    for (int l = 0; l < D.L; l++)
        for (int h = 0; h < D.Hkv; h++)
            qaq_qnorm2_quantile(D.q + ((size_t)l * D.Hq + h * G) * n * d, G * n, d, 0.1,
                                &qn[l * D.Hkv + h]);
    qaq_window *w = malloc(sizeof(qaq_window) * n);
    for (int ti = 0; ti < 5; ti++)
        for (int ws = 0; ws < 2; ws++) {
            double tgt = targets[ti], bk = 0, bv = 0, bytes = 0;
            att_err e = {0};
            for (int l = 0; l < D.L; l++)
                for (int h = 0; h < D.Hkv; h++) {
                    const float *K = D.k + ((size_t)l * D.Hkv + h) * n * d;
                    const float *V = D.v + ((size_t)l * D.Hkv + h) * n * d;
                    for (int t = 0; t < n; t++) qaq_window_init(&w[t], 5);
                    for (int qi = n - 6; qi <= n - 2; qi++) { /* the window's 5 queries */
                        double *mx = ph;
                        for (int t = 0; t < n; t++) mx[t] = 0;
                        for (int g = 0; g < G; g++) {
                            softmax_row(D.q + (((size_t)l * D.Hq + h * G + g) * n + qi) * d, K,
                                        qi + 1, d, p);
                            for (int t = 0; t <= qi; t++) mx[t] = p[t] > mx[t] ? p[t] : mx[t];
                        }
                        for (int t = 0; t <= qi; t++) qaq_window_push(&w[t], (float)mx[t]);
                    }
                    double q2 = qn[l * D.Hkv + h] / d;
                    for (int t = 0; t < n; t++) {
                        int idx[4];
                        float lo, hi;
                        uint8_t buf[512];
                        qaq_outliers(K + (size_t)t * d, d, 1, idx, &lo, &hi);
                        int b1 = qaq_key_bits(hi - lo, n, tgt, q2, wsets[ws]);
                        int n1 = qaq_encode(buf, sizeof buf, K + (size_t)t * d, d, b1, 1, NULL);
                        qaq_decode(buf, sizeof buf, d, kq + (size_t)t * d);
                        qaq_outliers(V + (size_t)t * d, d, 1, idx, &lo, &hi);
                        int b2 = qaq_value_bits(hi - lo, n, tgt, &w[t], wsets[ws]);
                        int n2 = qaq_encode(buf, sizeof buf, V + (size_t)t * d, d, b2, 1, NULL);
                        qaq_decode(buf, sizeof buf, d, vq + (size_t)t * d);
                        bk += b1; bv += b2; bytes += n1 + n2;
                    }
                    att_compare(&D, l, h, kq, vq, p, ph, &e);
                }
            double rows = (double)D.L * D.Hkv * n;
            printf("| %.0e | %s | %.2f | %.2f | %.2f | %.2f | %.4f |\n", tgt,
                   ws ? "{2,3,4,8}" : "{2,4,8}", bk / rows, bv / rows, 4.0 * d * rows / bytes,
                   1e4 * sqrt(e.se_p / e.n_p), sqrt(e.se_x / e.ss_x));
        }
    /* Over time: every query position in turn pushes its weights (max over the group) into
     * the windows; a ready token's value width follows (T = position + 1) at target 1e-3 and
     * widths {2,4,8}. A "rise": the width goes above the lowest it has had (with a
     * lower-only store that token is then held at fewer bits than the bound asks). Also the
     * joint (key, value) widths at the end, for width classes. */
    {
        const double tgt = 1e-3;
        long tokens = 0, rises = 0, steps_above = 0, steps = 0;
        long joint[9][9] = {{0}};
        int *lowest = malloc(sizeof(int) * n), *prev = malloc(sizeof(int) * n);
        /* lower-only stores with hysteresis: lower a token's stored width after the bound has
         * asked for less during m consecutive steps (to the most it asked in those steps);
         * never raise. Per m: sum of stored widths, steps where the bound asks for more than
         * stored (and by how many bits), lowerings (= moves between width classes). */
        enum { NH = 3 };
        const int hys[NH] = {1, 8, 32};
        int *st[NH], *run[NH], *runmax[NH];
        long sum_st[NH] = {0}, viol[NH] = {0}, deficit[NH] = {0}, lowers[NH] = {0}, sum_req = 0;
        for (int m = 0; m < NH; m++) {
            st[m] = malloc(sizeof(int) * n);
            run[m] = malloc(sizeof(int) * n);
            runmax[m] = malloc(sizeof(int) * n);
        }
        for (int l = 0; l < D.L; l++)
            for (int h = 0; h < D.Hkv; h++) {
                const float *K = D.k + ((size_t)l * D.Hkv + h) * n * d;
                const float *V = D.v + ((size_t)l * D.Hkv + h) * n * d;
                float *vr = kq; /* value ranges without outliers (kq is free here) */
                for (int t = 0; t < n; t++) {
                    int idx[4];
                    float lo, hi;
                    qaq_outliers(V + (size_t)t * d, d, 1, idx, &lo, &hi);
                    vr[t] = hi - lo;
                    qaq_window_init(&w[t], 5);
                    lowest[t] = prev[t] = 99;
                    for (int m = 0; m < NH; m++) { st[m][t] = QAQ_MAX_BITS; run[m][t] = runmax[m][t] = 0; }
                }
                for (int qi = 0; qi < n; qi++) {
                    double *mx = ph;
                    for (int t = 0; t <= qi; t++) mx[t] = 0;
                    for (int g = 0; g < G; g++) {
                        softmax_row(D.q + (((size_t)l * D.Hq + h * G + g) * n + qi) * d, K, qi + 1,
                                    d, p);
                        for (int t = 0; t <= qi; t++) mx[t] = p[t] > mx[t] ? p[t] : mx[t];
                    }
                    for (int t = 0; t <= qi; t++) {
                        qaq_window_push(&w[t], (float)mx[t]);
                        if (!qaq_window_ready(&w[t])) continue;
                        int b = qaq_value_bits(vr[t], qi + 1, tgt, &w[t], QAQ_WIDTHS_248);
                        if (b > lowest[t] && b > prev[t]) rises++;
                        if (b > lowest[t]) steps_above++;
                        steps++;
                        if (b < lowest[t]) lowest[t] = b;
                        prev[t] = b;
                        sum_req += b;
                        for (int m = 0; m < NH; m++) {
                            int *sw = &st[m][t], *rn = &run[m][t], *rm = &runmax[m][t];
                            if (b > *sw) {
                                viol[m]++;
                                deficit[m] += b - *sw;
                                *rn = *rm = 0;
                            } else if (b < *sw) {
                                *rm = b > *rm ? b : *rm;
                                if (++*rn >= hys[m]) {
                                    *sw = *rm;
                                    *rn = *rm = 0;
                                    lowers[m]++;
                                }
                            } else {
                                *rn = *rm = 0;
                            }
                            sum_st[m] += *sw;
                        }
                    }
                }
                double q2 = qn[l * D.Hkv + h] / d;
                for (int t = 0; t < n; t++) {
                    if (prev[t] == 99) continue; /* never ready */
                    tokens++;
                    int idx[4];
                    float lo, hi;
                    qaq_outliers(K + (size_t)t * d, d, 1, idx, &lo, &hi);
                    int bk = qaq_key_bits(hi - lo, n, tgt, q2, QAQ_WIDTHS_248);
                    joint[bk][prev[t]]++;
                }
            }
        printf("\nValue widths over time (target %.0e, {2,4,8}, %ld ready token-steps): %ld "
               "rises above a token's lowest width so far (%.3f per token), %.2f%% of "
               "token-steps above the lowest.\n\n", tgt, steps, rises,
               (double)rises / (tokens ? tokens : 1), 100.0 * steps_above / (steps ? steps : 1));
        printf("Joint widths at T = %d (rows: key bits, columns: value bits; %% of tokens):\n\n", n);
        printf("| K \\ V | 2 | 4 | 8 |\n|---|---|---|---|\n");
        const int ws3[3] = {2, 4, 8};
        for (int a = 0; a < 3; a++) {
            printf("| %d |", ws3[a]);
            for (int b = 0; b < 3; b++)
                printf(" %.1f |", 100.0 * joint[ws3[a]][ws3[b]] / (tokens ? tokens : 1));
            printf("\n");
        }
        printf("\nLower-only value widths with hysteresis (same replay; the bound's own widths "
               "average %.2f bits):\n\n", (double)sum_req / (steps ? steps : 1));
        printf("| m | mean stored bits | steps below the bound | mean deficit (bits) | "
               "lowerings per token |\n|---|---|---|---|---|\n");
        for (int m = 0; m < NH; m++) {
            printf("| %d | %.2f | %.2f%% | %.2f | %.2f |\n", hys[m],
                   (double)sum_st[m] / (steps ? steps : 1), 100.0 * viol[m] / (steps ? steps : 1),
                   viol[m] ? (double)deficit[m] / viol[m] : 0.0,
                   (double)lowers[m] / (tokens ? tokens : 1));
            free(st[m]); free(run[m]); free(runmax[m]);
        }
        free(lowest);
        free(prev);
    }
    printf("\n");
    free(w); free(qn); free(kq); free(vq); free(p); free(ph);
    free(D.k); free(D.v); free(D.q);
}

int main(int argc, char **argv)
{
    int rows = 4096;
    double secs = 0.3;
    const char *kv = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "--kv") && i + 1 < argc) kv = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--rows N] [--seconds S] [--kv FILE.kvd]\n", argv[0]);
            return 2;
        }
    }
    if (rows < 16) rows = 16;
    if (kv) { /* only the real-K/V study */
        real_study(kv);
        return 0;
    }
    error_study(rows);
    cost(rows, secs);
    return 0;
}
