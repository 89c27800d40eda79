/* plan.h — the step plan: everything a backend needs to know about one batch (which token
 * goes to which slot of which stream, the page tables attention reads, the attention work, the
 * hooks' buffers), built on the host by the engine and executed by a backend (backend.h).
 * The CPU backend reads it from host memory; the CUDA backend uploads its block once per step. */
#ifndef KVS_PLAN_H
#define KVS_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "memory/pool.h"
#include "model.h"

/* Largest GQA group (query heads per KV head) any backend takes. */
#define KVS_PLAN_MAX_GROUP 16

/* How a device's K-write kernel scores a key (what the policy's device_score hook says,
 * memory/policy.h; the values are POL_SCORE_*'s). */
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
    int32_t filter_set;    /* KVS_SCORE_DOT: which uploaded filter set (kvs_filter_cache_assign,
                            * by the backend that uploads them); else -1 */
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
    /* host only (not in the block): KVS_SCORE_DOT sequences' filters u[L][Hkv][hd] (the
     * fwd_seq's score_u), NULL for the others; [S] */
    const float **score_u;
    int32_t score_u_cap;
} kvs_plan;

/* Filter sets for KVS_SCORE_DOT, deduplicated across sequences by content (a backend that
 * keeps filters on its device uploads each set once and reuses it while it is unchanged). */
#define KVS_MAX_FILTER_SETS 16
typedef struct kvs_filter_cache {
    int n_layers, n_kv_heads, head_dim;
    int n;                                   /* sets in use */
    float *u[KVS_MAX_FILTER_SETS];           /* [L][Hkv][hd] each (host copy) */
    int dirty[KVS_MAX_FILTER_SETS];          /* not uploaded yet (the backend clears it) */
    int used[KVS_MAX_FILTER_SETS];           /* referenced by the current plan */
} kvs_filter_cache;

void kvs_filter_cache_init(kvs_filter_cache *fc, const model_config *c);
void kvs_filter_cache_deinit(kvs_filter_cache *fc);
/* Give every KVS_SCORE_DOT sequence of the plan a filter set (seq[s].filter_set), copying
 * filters the cache does not hold yet into a free set (or one the plan does not use); a
 * sequence for which no set is left is scored on the host instead (KVS_SCORE_HOST, with key
 * stash rows: call before the stash sizes are used, i.e. right after kvs_plan_build). */
int kvs_filter_cache_assign(kvs_filter_cache *fc, kvs_plan *p);

/* Validate the batch (the one place its limits are checked, for every backend), then build
 * the plan: assign every new token's slot in every stream (host bookkeeping; pos set, score 0
 * until the step finishes), list the holes to mark, the page tables, the attention work, the
 * hooks' buffers. Each sequence's score kind is its fwd_seq's (score_kind, score_u). */
int kvs_plan_build(kvs_plan *p, const model_config *c, mem_pool *pool, const fwd_seq *seqs,
                   int n_seqs);
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

#endif
