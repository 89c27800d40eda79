/* kvs_cuda.h — the CUDA forward kernels as C functions on device pointers, and small device
 * memory helpers (docs/CUDA.md). C linkage; built only with CUDA (KVS_HAVE_CUDA). The
 * forward (fwd_cuda, engine/device.h) is built from these; the equivalence tests call them
 * directly against their twins in engine/kernels_ref.h.
 *
 * 16-bit buffers (weights, GEMM inputs, K/V pages, attention output) appear here as void *;
 * their element type is chosen at run time: `dtype` MEM_CUDA_F16 (fp16) or MEM_CUDA_BF16
 * (bf16) (memory/cuda/mem_cuda.h), or the pool's dtype for kernels that take a pool.
 * Launchers return 0 or a negative KVS_E* status with a message, and do not synchronise;
 * `stream` is a cudaStream_t (NULL = the default stream). */
#ifndef KVS_CUDA_H
#define KVS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {  /* the project's C headers have no C++ guards of their own */
#endif

#include "device.h"
#include "memory/kv_store.h"
#include "memory/cuda/mem_cuda.h"

/* ---- device memory helpers (synchronous) ----------------------------------------------------- */
void *kvs_cuda_malloc(size_t bytes);              /* NULL + message on failure */
void kvs_cuda_free(void *d);
int kvs_cuda_upload(void *d, const void *h, size_t bytes);
int kvs_cuda_download(void *h, const void *d, size_t bytes);
int kvs_cuda_memset(void *d, int byte, size_t bytes);
/* fp32 host <-> 16-bit device of `dtype` (converted on the device, through a staging buffer). */
int kvs_cuda_upload_half(void *d, const float *h, size_t n, int dtype);
int kvs_cuda_download_half(float *h, const void *d, size_t n, int dtype);
int kvs_cuda_sync(void);
/* Copy a whole host pool (K/V as 16-bit of the device pool's dtype, pos, score) into a device
 * pool of the same geometry, and back (K/V widened to fp32). For tests and clones. */
int kvs_cuda_pool_upload(mem_cuda_pool *d, const mem_pool *h, const kv_store *kv);
int kvs_cuda_pool_download(const mem_cuda_pool *d, mem_pool *h, kv_store *kv);

/* ---- the forward state (engine/device.h has the rest) ---------------------------------------- */
/* Per-phase timing with CUDA events in fwd_cuda_last_timing (default: $KVS_CUDA_TIMING=1;
 * off: only the step's wall time, in `other`). */
void fwd_cuda_set_timing(fwd_cuda_state *st, int on);
/* CUDA graphs for decode-only steps (default: $KVS_CUDA_GRAPHS=1). */
void fwd_cuda_set_graphs(fwd_cuda_state *st, int on);
/* The device KV pool. */
mem_cuda_pool *fwd_cuda_pool(fwd_cuda_state *st);

/* ---- forward kernels --------------------------------------------------------------------- */

/* k_f32_to_half / k_half_to_f32 (n elements, 16-bit of dtype). */
int kvs_k_f32_to_half(const float *in, void *out, size_t n, int dtype, void *stream);
int kvs_k_half_to_f32(const void *in, float *out, size_t n, int dtype, void *stream);
/* k_embed: x[t][D] (fp32) = table[tok[t]][D] (16-bit of dtype). */
int kvs_k_embed(const void *table, const int32_t *tok, int T, int D, float *x, int dtype,
                void *stream);
/* k_rmsnorm: out[r][D] (16-bit of dtype) = x[rows ? rows[r] : r] / rms * w (fp32 x and w). */
int kvs_k_rmsnorm(const float *x, const int32_t *rows, int R, int D, const float *w, float eps,
                  void *out, int dtype, void *stream);
/* k_swiglu: act[t][F] (16-bit of dtype) = silu(gu[t][i]) * gu[t][F + i] (fp32 gu). */
int kvs_k_swiglu(const float *gu, int T, int F, void *act, int dtype, void *stream);

/* One layer's RoPE + K/V write + key score (twin: kref_rope_kv_write). */
typedef struct kvs_rope_kv_args {
    float *qkv;                  /* [T][(Hq + 2 Hkv) hd] fp32, q and k rotated in place */
    int T, Hq, Hkv, hd;
    const int32_t *pos, *tok_seq;/* [T] */
    const kvs_seq_info *seq;     /* [S] */
    const float *cos_t, *sin_t;  /* [n_pos][hd/2] */
    const int32_t *slot_map;     /* this layer: [T][Hkv] global slots */
    mem_cuda_pool pool;          /* device pool (by value: its device pointers and dtype) */
    const float *filters;        /* KVS_SCORE_DOT: set s, this layer: filters + s * set_stride */
    size_t set_stride;           /* floats per filter set ([L][Hkv][hd]) */
    float *scores;               /* this layer: [T][Hkv] */
    float *key_stash;            /* this layer: [n_key_stash][Hkv][hd] (KVS_SCORE_HOST) */
    float *query_stash;          /* this layer: [n_query_stash][Hq][hd] (queries hooks) */
} kvs_rope_kv_args;
int kvs_k_rope_kv_write(const kvs_rope_kv_args *a, void *stream);

/* Paged attention of one layer over per-head streams (twins: kref_attention,
 * kref_attention_partial / _combine, kref_attn_probs). hd must be 64 or 128. */
typedef struct kvs_attn_args {
    const float *q;              /* q of token t, query head hq: q + t * q_stride + hq * hd */
    int q_stride;
    void *out;                   /* 16-bit of pool.dtype, row of token t, head hq:
                                    out + t * out_stride + hq * hd */
    int out_stride;
    const int32_t *pos, *tok_seq;/* [T] */
    const kvs_seq_info *seq;     /* [S] */
    const kvs_stream_info *streams; /* [S][L][Hkv] */
    const int32_t *pt;
    mem_cuda_pool pool;
    int L, layer, Hq, Hkv, hd;
    float scale;                 /* 1 / sqrt(hd) */
    /* decode: one block per (token, KV head, head chunk, split) */
    const int32_t *dec;          /* [n_dec] tokens */
    int n_dec, n_split;
    float *part;                 /* n_split > 1: [n_split][n_dec][Hq][hd + 2] */
    /* prefill: one block per (tile, KV head) */
    const kvs_tile *tiles;
    int n_tiles;
    /* attention statistics: one block per (observed token, KV head) */
    const int32_t *obs;
    int n_obs;
    float *probs;                /* [..] at streams[].probs_off, rows in observed order */
} kvs_attn_args;
int kvs_k_attn_decode(const kvs_attn_args *a, void *stream);   /* + k_attn_combine */
int kvs_k_attn_prefill(const kvs_attn_args *a, void *stream);
int kvs_k_attn_probs(const kvs_attn_args *a, void *stream);
/* Splits the decode kernel would use for n_dec tokens reading up to max_pages pages. */
int kvs_attn_decode_splits(int n_dec, int Hkv, int G, int max_pages, int n_sm);

/* k_sample: one token per logits row (twin: kref_sample). */
typedef struct kvs_sample_row {
    double r;            /* uniform draw in [0, 1) */
    float temperature;   /* 0 = greedy */
    float top_p;         /* 1 = off */
    int32_t top_k;       /* 0 = off */
    int32_t pad;
} kvs_sample_row;
int kvs_k_sample(const float *logits, int R, int V, const kvs_sample_row *rows, int32_t *out,
                 void *stream);

/* ---- benchmark entry points (kvsieve bench --device cuda; synthetic fp16 device data) -------- */
/* Device-to-device copy of `bytes` (best of iters): (read + write) bytes per second / 1e9. */
int kvs_cuda_bench_copy(size_t bytes, int iters, double *gbps);
/* k_attn_decode (+ combine) for n_seqs query tokens, each over Hkv streams of ctx slots in
 * shuffled pages with holes_pct % holes: best seconds, bytes it must read (live K/V rows, every
 * pos, page tables), and the split count used. */
int kvs_cuda_bench_attention(int n_seqs, int ctx, int Hkv, int G, int hd, int P, int holes_pct,
                             int iters, double *seconds, double *bytes, int *n_split);
/* k_compact_plan + k_slot_copy over n_streams streams of `slots` slots with holes_pct % holes:
 * seconds, bytes read + written, moves. */
int kvs_cuda_bench_compaction(int n_streams, int slots, int hd, int P, int holes_pct,
                              double *seconds, double *bytes, int64_t *moves);
/* k_rope_kv_write for T tokens, one layer, scoring ZERO / DOT (Q-Filters) / NEG_NORM: best
 * seconds per launch of each. */
int kvs_cuda_bench_kv_write(int T, int Hq, int Hkv, int hd, int iters, double *t_zero,
                            double *t_dot, double *t_norm);

#ifdef __cplusplus
}
#endif

#endif
