/* wmat.h — a weight matrix as the CPU forward sees it: up to three row ranges ("parts"),
 * each a tensor in its own GGUF format (wfmt.h), kept where it lies (the mmap'd file, or a
 * fp32 buffer of the model's), and the product Y = X W^T on it.
 *
 * Fused matrices (Q/K/V, gate/up) are parts one after another: their tensors may differ in
 * format (a Q4_K_M file has Q4_K and Q6_K V rows), so nothing is copied to fuse them.
 *
 * wmat_mul picks, per call:
 *   - T < the batch threshold: activations quantised to wq8 blocks once, then every weight
 *     row is dotted with every token's row (integer dot kernels), rows split over the OpenMP
 *     threads in chunks taken dynamically (a descheduled thread delays only its chunk);
 *   - otherwise, or for F32 rows: BLAS sgemm; quantised rows are dequantised a tile of rows at
 *     a time into a bounded scratch buffer (never the whole matrix). */
#ifndef KVS_WMAT_H
#define KVS_WMAT_H

#include <stddef.h>
#include <stdint.h>

#include "wfmt.h"

#define WMAT_MAX_PARTS 3

typedef struct wmat_part {
    const wfmt *fmt;
    const uint8_t *data; /* rows * row_bytes */
    int rows;
    size_t row_bytes;
} wmat_part;

typedef struct wmat {
    int rows, cols; /* N (sum of the parts' rows), K */
    int act_residual; /* 1: the dot path quantises each activation row twice, x ~= q1 d1 +
                       * q2 d2 with q2 the 8-bit residual of the first pass (error /127, cost
                       * x2): for the logits, where one pass flipped greedy tokens at
                       * near-ties */
    int n_parts;
    wmat_part part[WMAT_MAX_PARTS];
} wmat;

/* Scratch of the products (activation blocks, dequantised tiles); owned by the caller (one
 * per forward state), grown on demand. */
typedef struct wmat_scratch {
    void *act;         /* wq8 blocks of X */
    size_t act_bytes;
    float *tile;       /* dequantised rows for BLAS */
    size_t tile_bytes;
} wmat_scratch;

/* Append a part (its rows follow the previous parts'); cols must match the first part. */
int wmat_add(wmat *w, const wfmt *fmt, const void *data, int rows, int cols);

/* Y[T][W->rows] = X[T][W->cols] W^T (+ beta Y: beta 0 or 1). */
int wmat_mul(const wmat *W, float *Y, const float *X, int T, float beta, wmat_scratch *s);

/* Row r of W dequantised to fp32 (dst holds W->cols floats). */
int wmat_row(const wmat *W, int r, float *dst);

void wmat_scratch_free(wmat_scratch *s);

/* Tokens per product at which wmat_mul switches to BLAS (default WMAT_BLAS_BATCH, or
 * $KVSIEVE_WQ_BATCH read once; 0 = always BLAS, a huge value = never). */
int wmat_blas_batch(void);
void wmat_set_blas_batch(int t);

/* Bytes of the dequantisation tile (bounded: the BLAS path's extra memory). */
#define WMAT_TILE_BYTES (4u << 20)
#endif
