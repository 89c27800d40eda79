/* device.h — backend choice (--device cpu|cuda|auto) and the host side of the CUDA backend
 * (ARCHITECTURE.md §7, docs/CUDA.md). Compiles and works without CUDA: kvs_device_count()
 * is then 0 and the CUDA entry points return KVS_EUNSUPPORTED.
 *
 * With the CUDA backend the KV data (K, V pages) live only on the device. The host keeps the
 * block manager's bookkeeping exactly as on the CPU backend (page lists, holes, free stack)
 * plus each slot's pos and score, in a "metadata pool": a mem_pool whose k and v are NULL.
 * Policies, the eviction driver, the scheduler and the invariant checker work on it
 * unchanged. What moves K/V (appends, compaction, clone) goes through the backend:
 *   - the forward assigns slots on the host (kvs_stream_take_slot, the bookkeeping half of
 *     mem_stream_append) and writes K/V/pos/score on the device;
 *   - compaction plans on the host (kvs_meta_compact, the bookkeeping half of
 *     mem_stream_compact) and copies K/V/pos/score on the device;
 *   - evictions only set host pos = -1; the next forward marks every host hole of the streams
 *     it touches as empty on the device before anything reads them.
 * Calling mem_stream_append / mem_stream_compact directly on a metadata pool is a bug (they
 * would touch the NULL K/V arrays and crash): use engine_seq_compact. */
#ifndef KVS_DEVICE_H
#define KVS_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "memory/pool.h"
#include "model.h"

/* ---- backend selection ------------------------------------------------------------------- */

typedef enum {
    KVS_DEVICE_CPU = 0,  /* the default: engine_opts zero-initialised keeps the CPU backend */
    KVS_DEVICE_CUDA = 1,
    KVS_DEVICE_AUTO = 2  /* CUDA when a GPU is visible, else CPU */
} kvs_device_kind;

/* "cpu", "cuda", "auto" -> kind; KVS_EINVAL with a message otherwise. */
int kvs_device_parse(const char *s, kvs_device_kind *out);
const char *kvs_device_name(kvs_device_kind k);
/* Number of CUDA devices visible (0 when built without CUDA, without a driver or a GPU). */
int kvs_device_count(void);
/* One line about device 0 ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, 132 SMs"), or why none. */
void kvs_device_describe(char *buf, size_t size);
/* AUTO -> CUDA if kvs_device_count() > 0 else CPU; CUDA without a GPU (or a build without
 * CUDA) -> KVS_EUNSUPPORTED with a message saying so. */
int kvs_device_resolve(kvs_device_kind want, kvs_device_kind *out);

/* ---- the metadata pool ------------------------------------------------------------------- */

/* A mem_pool with the bookkeeping of n_pages pages of P slots (free stack, owner, pos = -1,
 * score) and k = v = NULL: the host half of a device KV pool. Free with mem_pool_destroy. */
int kvs_meta_pool_create(int page_slots, int head_dim, int32_t n_pages, mem_pool **out);

/* ---- host bookkeeping shared with the twins ------------------------------------------------ */

/* Global slot of a stream-relative slot. */
static inline int32_t kvs_gslot(const mem_pool *p, const mem_stream *s, int32_t slot)
{ return s->pages[slot >> p->page_shift] * p->page_slots + (slot & (p->page_slots - 1)); }

/* mem_stream_append without K/V: take the first hole, else the tail slot (which must be in a
 * page the stream already owns: reserve first), set its pos and score, count it live.
 * Returns the stream-relative slot or KVS_ENOMEM. Same slot choice as mem_stream_append. */
int32_t kvs_stream_take_slot(mem_pool *pool, mem_stream *s, int32_t pos, float score);

/* mem_stream_compact's bookkeeping without K/V: plan the tail-to-hole moves
 * (kref_compact_plan), move pos and score on the host, make the stream dense and return its
 * trailing empty pages to the pool. src[i] -> dst[i] (global slots, capacity >= s->n_holes)
 * are the moves whose K/V the caller must copy (device: mem_cuda_slot_copy; host:
 * kref_slot_copy with KREF_COPY_KV). Returns the number of moves. */
int32_t kvs_meta_compact(mem_pool *pool, mem_stream *s, int32_t *src, int32_t *dst);

/* ---- the step plan: everything a device forward needs to know about a batch ---------------- */

/* How the K-write kernel scores a key (the policy's score_keys, fused). */
enum {
    KVS_SCORE_ZERO = 0,     /* no scorer, or one that writes 0 (full, h2o, tova, snapkv) */
    KVS_SCORE_DOT = 1,      /* <k, u[layer][kv_head]> (qfilters) */
    KVS_SCORE_NEG_NORM = 2, /* -||k||2 (knorm) */
    KVS_SCORE_POS = 3,      /* (float)pos (streaming) */
    KVS_SCORE_HOST = 4      /* any other scorer: keys go back to the host, which calls it */
};

typedef struct kvs_stream_info {
    int32_t pt_off;    /* first page of the stream in plan.pt */
    int32_t n_slots;   /* slots attention reads (after this step's appends) */
    int64_t probs_off; /* observed sequences: offset of [n_obs][n_slots] in the probs buffer */
} kvs_stream_info;

typedef struct kvs_seq_info {
    int32_t tok0, n_tok;   /* the sequence's tokens in the step: [tok0, tok0 + n_tok) */
    int32_t score_kind;    /* KVS_SCORE_* */
    int32_t filter_set;    /* KVS_SCORE_DOT: which uploaded filter set; else -1 */
    int32_t obs0, n_obs;   /* observed queries: tokens [tok0 + obs0, +n_obs); n_obs 0 = none */
    int32_t key_stash;     /* KVS_SCORE_HOST: first row in the key stash; else -1 */
    int32_t query_stash;   /* queries hook: first row in the query stash; else -1 */
} kvs_seq_info;

/* A prefill attention tile: n_tok query tokens (all G heads) of one sequence. */
typedef struct kvs_tile { int32_t seq, tok0, n_tok, pad; } kvs_tile;

/* Query tokens of sequences with at most this many tokens in the step go to the split decode
 * kernel (one block per token and KV head); longer runs go to the prefill kernel in tiles. */
#define KVS_DECODE_MAX_TOKENS 4

typedef struct kvs_plan {
    /* sizes */
    int32_t T, S, R, L, Hq, Hkv, hd, P;
    int32_t n_pt, n_marks, n_dec, n_tiles, n_obs;
    int32_t tile_tokens;              /* query tokens per prefill tile */
    int32_t n_key_stash, n_query_stash; /* rows (tokens) per layer */
    int64_t n_probs;                  /* floats in the probs buffer (all layers) */
    int32_t max_pos;                  /* largest position in the step */
    int32_t max_dec_pages;            /* longest stream a decode token reads, in pages */
    /* arrays, all inside `block` (one upload) */
    int32_t *tok, *pos, *tok_seq;     /* [T] */
    int32_t *rows;                    /* [R] token of each logits row */
    kvs_seq_info *seq;                /* [S] */
    kvs_stream_info *stream;          /* [S][L][Hkv] */
    int32_t *pt;                      /* [n_pt] page ids */
    int32_t *slot_map;                /* [L][T][Hkv] global slot of each new K/V */
    int32_t *marks;                   /* [n_marks] global slots to mark empty first */
    int32_t *dec;                     /* [n_dec] tokens for the decode kernel */
    kvs_tile *tiles;                  /* [n_tiles] */
    int32_t *obs;                     /* [n_obs] observed query tokens */
    void *block;
    size_t block_size, block_cap;
    /* How the block grows: NULL = realloc/free; the CUDA backend sets a pinned allocator
     * (grow(ctx, old, bytes) returns a new block, old contents not kept; bytes 0 frees). */
    void *(*grow)(void *ctx, void *old, size_t bytes);
    void *grow_ctx;
} kvs_plan;

/* Filter sets for KVS_SCORE_DOT, deduplicated across sequences (one per distinct filters). */
#define KVS_MAX_FILTER_SETS 16
typedef struct kvs_filter_cache {
    int n_layers, n_kv_heads, head_dim;
    int n;                                   /* sets in use */
    float *u[KVS_MAX_FILTER_SETS];           /* [L][Hkv][hd] each (host copy) */
    int dirty[KVS_MAX_FILTER_SETS];          /* not uploaded yet (the CUDA backend clears it) */
    int used[KVS_MAX_FILTER_SETS];           /* referenced by the current plan */
    /* instances seen: fingerprint (a fixed probe key scored per layer and head) -> set */
    int n_inst, cap_inst;
    struct kvs_filter_inst { const void *inst; int set; float *fp; } *inst;
} kvs_filter_cache;

void kvs_filter_cache_init(kvs_filter_cache *fc, const model_config *c);
void kvs_filter_cache_deinit(kvs_filter_cache *fc);

/* Validate the batch like fwd_cpu (same errors), then build the plan: assign every new
 * token's slot in every stream (host bookkeeping; pos set, score 0 until the step finishes),
 * list the holes to mark, the page tables, the attention work, the hooks' buffers. Score
 * kinds: the built-in policies whose score the device computes are recognised through
 * pol_score_keys; anything else is KVS_SCORE_HOST. DOT filters are extracted once per
 * policy instance by scoring basis vectors and kept in fc (when fc is NULL, DOT is HOST). */
int kvs_plan_build(kvs_plan *p, const model_config *c, mem_pool *pool, const fwd_seq *seqs,
                   int n_seqs, kvs_filter_cache *fc);
void kvs_plan_free(kvs_plan *p);
/* A copy of the plan's header whose array pointers point into `base` (the device copy of
 * p->block) at the same offsets. */
void kvs_plan_rebase(const kvs_plan *p, void *base, kvs_plan *out);

/* After the device ran the step: store each new key's score in the host pool (scores
 * [L][T][Hkv] from the device; KVS_SCORE_HOST sequences scored here from key_stash
 * [L][n_key_stash][Hkv][hd]), call the queries hooks (query_stash [L][n_query_stash][Hq][hd])
 * and the observe hooks (probs), layer by layer in fwd_cpu's order. */
int kvs_plan_finish(const kvs_plan *p, mem_pool *pool, const fwd_seq *seqs, const float *scores,
                    const float *key_stash, const float *query_stash, const float *probs);

/* ---- the CUDA backend as the engine sees it (stubs without CUDA) --------------------------- */

typedef struct fwd_cuda_state fwd_cuda_state;

/* Upload the weights (16-bit) and allocate the device KV pool in one cudaMalloc: kv_bytes of
 * it, or when 0 kv_fraction (0 = 0.85) of the free device memory left after weights and a
 * reserve for activations. The host metadata pool must have fwd_cuda_n_pages pages. */
int fwd_cuda_create(const model *m, int page_slots, size_t kv_bytes, double kv_fraction,
                    fwd_cuda_state **out);
void fwd_cuda_destroy(fwd_cuda_state *st);
int32_t fwd_cuda_n_pages(const fwd_cuda_state *st);
/* fwd_cpu's interface and semantics on the device; pool is the host metadata pool. */
int fwd_cuda(fwd_cuda_state *st, const model *m, mem_pool *pool, const fwd_seq *seqs,
             int n_seqs, float **logits, int *n_rows);
const fwd_timing *fwd_cuda_last_timing(const fwd_cuda_state *st);

/* Compact streams (kvs_meta_compact each, then one batched device copy of K, V, pos and
 * score). Returns the moves (>= 0) or a negative status. */
int64_t kvs_cuda_compact_streams(fwd_cuda_state *st, mem_pool *pool, mem_stream *const *streams,
                                 int n);
int32_t kvs_cuda_compact_stream(fwd_cuda_state *st, mem_pool *pool, mem_stream *s);
/* Copy global slots src[i] -> dst[i] on the device (K, V, pos, score; sources kept). */
int kvs_cuda_copy_slots(fwd_cuda_state *st, const int32_t *src, const int32_t *dst, int n);
/* Read the keys of n global slots into out[n][hd] (fp32). */
int kvs_cuda_read_keys(fwd_cuda_state *st, const int32_t *gslots, int n, float *out);
/* Write n scores into the device's score mirror. */
int kvs_cuda_write_scores(fwd_cuda_state *st, const int32_t *gslots, const float *scores, int n);

#endif
