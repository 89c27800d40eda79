/* wmat.c — products on weight matrices kept in their GGUF formats (wmat.h). */
#include "wmat.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "gguf.h"

#ifndef WMAT_BLAS_BATCH
#define WMAT_BLAS_BATCH 48 /* measured: docs/BENCHMARKS.md, "weights in their GGUF blocks" */
#endif
/* Weight rows per task of the dot path: small enough that 2 threads share the rows of the
 * narrowest matrix (576) evenly, large enough that the task overhead stays < 1%. */
#define WMAT_CHUNK_ROWS 16

static int wmat_batch = -1;

int wmat_blas_batch(void)
{
    if (wmat_batch < 0) {
        const char *e = getenv("KVSIEVE_WQ_BATCH");
        int v = e ? atoi(e) : WMAT_BLAS_BATCH;
        wmat_batch = v >= 0 ? v : WMAT_BLAS_BATCH;
    }
    return wmat_batch;
}

void wmat_set_blas_batch(int t) { wmat_batch = t >= 0 ? t : WMAT_BLAS_BATCH; }

int wmat_add(wmat *w, const wfmt *fmt, const void *data, int rows, int cols)
{
    if (w->n_parts == WMAT_MAX_PARTS)
        return kvs_error(KVS_EINVAL, "weight matrix: more than %d parts", WMAT_MAX_PARTS);
    if (w->n_parts && cols != w->cols)
        return kvs_error(KVS_EINVAL, "weight matrix parts of %d and %d columns", w->cols, cols);
    if (cols <= 0 || cols % fmt->blck || (fmt->act_q8 && cols % WQ_QK))
        return kvs_error(KVS_EUNSUPPORTED, "rows of %d elements do not fit %s blocks of %d",
                         cols, fmt->name, fmt->blck);
    w->part[w->n_parts++] = (wmat_part){fmt, data, rows, wfmt_row_bytes(fmt, cols)};
    w->cols = cols;
    w->rows += rows;
    return 0;
}

static int grow(void **p, size_t *have, size_t want)
{
    if (want <= *have) return 0;
    kvs_free(*p);
    *p = kvs_alloc(want);
    *have = *p ? want : 0;
    return *p ? 0 : kvs_error(KVS_ENOMEM, "cannot allocate %zu bytes of product scratch", want);
}

void wmat_scratch_free(wmat_scratch *s)
{
    kvs_free(s->act);
    kvs_free(s->tile);
    memset(s, 0, sizeof *s);
}

int wmat_row(const wmat *W, int r, float *dst)
{
    for (int p = 0; p < W->n_parts; p++) {
        const wmat_part *P = &W->part[p];
        if (r < P->rows)
            return gguf_dequantize(P->fmt->type, P->data + (size_t)r * P->row_bytes, dst,
                                   (uint64_t)W->cols);
        r -= P->rows;
    }
    return kvs_error(KVS_ERANGE, "row %d is outside a %d-row matrix", r, W->rows);
}

/* BLAS on one part: in place for fp32 rows, else tile by tile through the scratch. */
static int mul_blas(const wmat_part *P, float *Y, int ldy, const float *X, int T, int K,
                    float beta, wmat_scratch *s)
{
    if (P->fmt->blas_direct) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, P->rows, K, 1.0f, X, K,
                    (const float *)(const void *)P->data, K, beta, Y, ldy);
        return 0;
    }
    int tile_rows = (int)(WMAT_TILE_BYTES / ((size_t)K * sizeof(float)));
    if (tile_rows < 16) tile_rows = 16;
    if (tile_rows > P->rows) tile_rows = P->rows;
    int rc = grow((void **)&s->tile, &s->tile_bytes, (size_t)tile_rows * K * sizeof(float));
    if (rc) return rc;
    for (int r0 = 0; r0 < P->rows; r0 += tile_rows) {
        const int nr = P->rows - r0 < tile_rows ? P->rows - r0 : tile_rows;
        float *tile = s->tile;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < nr; r++)
            gguf_dequantize(P->fmt->type, P->data + (size_t)(r0 + r) * P->row_bytes,
                            tile + (size_t)r * K, (uint64_t)K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nr, K, 1.0f, X, K, tile, K,
                    beta, Y + r0, ldy);
    }
    return 0;
}

/* One dot-path product, split in chunks of rows. */
typedef struct mul_job {
    const wmat *W;
    float *Y;
    const float *X;
    const void *act;
    int T;
    float beta;
    size_t xq_stride;
    int first[WMAT_MAX_PARTS + 1], off[WMAT_MAX_PARTS];
} mul_job;

/* The act_residual dot path: activation rows 2t (x) and 2t+1 (its residual); y = sum. */
static void mul_chunk_res(const mul_job *j, const wmat_part *P, int p, int r0, int r1)
{
    const int N = j->W->rows, K = j->W->cols, T = j->T;
    const wfmt_dot_fn dot = wfmt_dot(P->fmt);
    const wfmt_dot4_fn dot4 = wfmt_dot4(P->fmt);
    const char *xs = (const char *)j->act;
    const size_t st = j->xq_stride;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wr = P->data + (size_t)r * P->row_bytes;
        float *y = j->Y + j->off[p] + r;
        for (int t = 0; t < T; t += 2) {
            const int t1 = t + 1 < T ? t + 1 : t;
            float v[4];
            if (dot4) {
                const void *xg[4] = {xs + 2 * t * st, xs + (2 * t + 1) * st, xs + 2 * t1 * st,
                                     xs + (2 * t1 + 1) * st};
                dot4(wr, xg, K, v);
            } else {
                dot(wr, xs + 2 * t * st, K, &v[0]);
                dot(wr, xs + (2 * t + 1) * st, K, &v[1]);
                dot(wr, xs + 2 * t1 * st, K, &v[2]);
                dot(wr, xs + (2 * t1 + 1) * st, K, &v[3]);
            }
            for (int k = 0; k < 2 && t + k < T; k++) {
                float *yy = y + (size_t)(t + k) * N, val = v[2 * k] + v[2 * k + 1];
                *yy = j->beta != 0.0f ? *yy + val : val;
            }
        }
    }
}

static void mul_chunk(void *ctx, int c)
{
    const mul_job *j = ctx;
    const wmat *W = j->W;
    const int N = W->rows, K = W->cols, T = j->T;
    const float beta = j->beta;
    float *Y = j->Y;
    int p = 0;
    while (c >= j->first[p + 1]) p++;
    const wmat_part *P = &W->part[p];
    const wfmt_dot_fn dot = wfmt_dot(P->fmt);
    const wfmt_dot4_fn dot4 = T > 1 ? wfmt_dot4(P->fmt) : NULL;
    const char *xs = P->fmt->act_q8 ? (const char *)j->act : (const char *)j->X;
    const size_t stride = P->fmt->act_q8 ? j->xq_stride : (size_t)K * sizeof(float);
    const int r0 = (c - j->first[p]) * WMAT_CHUNK_ROWS;
    const int r1 = r0 + WMAT_CHUNK_ROWS < P->rows ? r0 + WMAT_CHUNK_ROWS : P->rows;
    if (W->act_residual && P->fmt->act_q8) {
        mul_chunk_res(j, P, p, r0, r1);
        return;
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *wr = P->data + (size_t)r * P->row_bytes;
        float *y = Y + j->off[p] + r;
        int t = 0;
        if (dot4)
            for (; t < T; t += 4) { /* groups of 4 tokens; a short last group repeats */
                const void *xg[4];
                float v[4];
                for (int k = 0; k < 4; k++) xg[k] = xs + (t + k < T ? t + k : T - 1) * stride;
                dot4(wr, xg, K, v);
                for (int k = 0; k < 4 && t + k < T; k++) {
                    float *yy = y + (size_t)(t + k) * N;
                    *yy = beta != 0.0f ? *yy + v[k] : v[k];
                }
            }
        for (; t < T; t++) {
            float v;
            dot(wr, xs + t * stride, K, &v);
            y[(size_t)t * N] = beta != 0.0f ? y[(size_t)t * N] + v : v;
        }
    }
}

int wmat_mul(const wmat *W, float *Y, const float *X, int T, float beta, wmat_scratch *s)
{
    const int N = W->rows, K = W->cols;
    const int blas = T >= wmat_blas_batch();
    int rc, n_dot = 0, need_q8 = 0;
    int off[WMAT_MAX_PARTS];
    for (int p = 0, o = 0; p < W->n_parts; o += W->part[p].rows, p++) {
        const wmat_part *P = &W->part[p];
        off[p] = o;
        if (blas || P->fmt->blas_direct) {
            if ((rc = mul_blas(P, Y + o, N, X, T, K, beta, s))) return rc;
        } else {
            n_dot++;
            need_q8 |= P->fmt->act_q8;
        }
    }
    if (!n_dot || T <= 0) return 0;
    const size_t xq_stride = (size_t)(K / WQ_QK) * sizeof(wq8_block);
    if (need_q8) {
        const int res = W->act_residual, rows = res ? 2 * T : T;
        if ((rc = grow(&s->act, &s->act_bytes, (size_t)rows * xq_stride))) return rc;
        float *tmp = NULL;
        if (res && !(tmp = malloc((size_t)K * sizeof(float))))
            return kvs_error(KVS_ENOMEM, "out of memory");
        for (int t = 0; t < T; t++) {
            const float *x = X + (size_t)t * K;
            wq8_block *q1 = (wq8_block *)((char *)s->act + (size_t)(res ? 2 * t : t) * xq_stride);
            wq8_quantize(x, q1, K);
            if (!res) continue;
            for (int i = 0; i < K; i++) tmp[i] = x[i] - q1[i / WQ_QK].d * q1[i / WQ_QK].q[i % WQ_QK];
            wq8_quantize(tmp, (wq8_block *)((char *)q1 + xq_stride), K);
        }
        free(tmp);
    }
    /* Chunks of rows of the dot-path parts, numbered part after part. */
    int first[WMAT_MAX_PARTS + 1], n_chunks = 0;
    for (int p = 0; p < W->n_parts; p++) {
        first[p] = n_chunks;
        const wmat_part *P = &W->part[p];
        if (!(blas || P->fmt->blas_direct))
            n_chunks += (P->rows + WMAT_CHUNK_ROWS - 1) / WMAT_CHUNK_ROWS;
    }
    first[W->n_parts] = n_chunks;
    mul_job job = {W, Y, X, s->act, T, beta, xq_stride, {0}, {0}};
    memcpy(job.first, first, sizeof first);
    memcpy(job.off, off, sizeof off);
    /* chunks taken dynamically: a thread another process holds off its core delays only
     * the chunk it has, not a share fixed in advance (an engine-own pool whose caller never
     * waits for workers that had not started measured slower under load: BENCHMARKS.md) */
#pragma omp parallel for schedule(dynamic, 1)
    for (int c = 0; c < n_chunks; c++) mul_chunk(&job, c);
    return 0;
}
