/* kvquant_bench.c — cost and error of the quantised KV formats (not a test; docs/QAQ-DESIGN.md).
 *
 *   build/kvquant_bench [--rows N] [--seconds S]
 *
 * 1. Error: random rows (Gaussian, Student-t with 3 degrees of freedom, Gaussian with two
 *    "outlier channels" x20 as keys have) quantised with groups of 32 and with one group per
 *    row, at 8/4/2 bits: bits per element (scales included) and RMS / max error relative to
 *    the rows' RMS.
 * 2. Cost: ns per row to write (quantise) and to read (dequantise, in tiles of 16 rows as
 *    attention reads them) for every built-in format and for the QAQ record, head_dim 64
 *    and 128, single thread. */
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
    printf("## cost: ns per row, one thread (%d distinct rows, >= %.2f s per cell)\n\n", rows,
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
            long nw = 0, nr = 0;
            double t0 = kvs_now(), tw, tr;
            volatile float sink = 0;
            do {
                for (int r = 0; r < rows; r++) {
                    if (b->fmt) b->fmt->write_row(store + rb * r, x + (size_t)r * hd, hd);
                    else qaq_encode(store + rb * r, rb, x + (size_t)r * hd, hd, b->qaq_bits, 1, NULL);
                }
                nw += rows;
            } while ((tw = kvs_now() - t0) < min_secs);
            t0 = kvs_now();
            do {
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
                nr += rows / 16 * 16;
            } while ((tr = kvs_now() - t0) < min_secs);
            (void)sink;
            printf("| %s | %d | %zu%s | %.1f | %.1f |\n", b->name, hd, rb, b->fmt ? "" : " (2 outliers)",
                   ns_per(tw, nw), ns_per(tr, nr));
            free(store);
        }
        free(x); free(scratch);
    }
}

int main(int argc, char **argv)
{
    int rows = 4096;
    double secs = 0.3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) secs = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--rows N] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (rows < 16) rows = 16;
    error_study(rows);
    cost(rows, secs);
    return 0;
}
