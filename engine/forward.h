/* forward.h — one forward step over a ragged batch (ARCHITECTURE.md §2).
 *
 * A batch is a list of sequences, each contributing n_tokens new tokens at positions
 * pos0 .. pos0+n_tokens-1: a prefill chunk (many tokens) or a decode token (one), mixed
 * freely in the same step. The step reads earlier K/V from each sequence's per-head streams
 * in the page pool and appends the new tokens' K/V there (callers reserve the pages first
 * with mem_seq_reserve). Attention covers every live slot of a stream whose position is
 * <= the query's position, so evicted slots (holes) are skipped and chunked prefill is causal. */
#ifndef KVS_FORWARD_H
#define KVS_FORWARD_H

#include <stdint.h>

#include "memory/pool.h"
#include "model.h"

enum { FWD_LOGITS_NONE = 0, FWD_LOGITS_LAST = 1, FWD_LOGITS_ALL = 2 };

/* fwd_seq.score_kind: what score_keys computes, so a device can fuse it into the key write. */
enum {
    FWD_SCORE_HOST = 0,     /* unknown: call score_keys on the host (the default) */
    FWD_SCORE_ZERO = 1,     /* 0 */
    FWD_SCORE_DOT = 2,      /* <k, score_u[layer][kv_head]> */
    FWD_SCORE_NEG_NORM = 3, /* -||k||2 */
    FWD_SCORE_POS = 4       /* (float)pos */
};

/* Called when keys are written: score n post-RoPE keys ([n][head_dim]) of one head of one
 * layer; the score is stored beside the key in its slot (the eviction policy's hook). */
typedef void (*fwd_score_fn)(void *ctx, int layer, int kv_head, const float *keys,
                             const int32_t *pos, int n, float *out_scores);

/* Called after attention with the attention probabilities of the observed queries of one
 * (layer, kv_head) over the stream's slots: probs[n_q][s->n_slots] in slot order, averaged over
 * the G query heads of the group, 0 for holes and masked slots (attention-based policies:
 * H2O, TOVA, SnapKV). Called from one thread at a time. */
typedef int (*fwd_observe_fn)(void *ctx, mem_pool *pool, mem_stream *s, int layer, int kv_head,
                              const float *probs, int n_q);

/* Called per layer and query head with the sequence's post-RoPE queries of this step,
 * q[n][head_dim] (Q-Filters calibration). */
typedef void (*fwd_query_fn)(void *ctx, int layer, int head, const float *q, int n);

typedef struct fwd_seq {
    mem_seq *kv;              /* this sequence's streams, with room for n_tokens more */
    const int32_t *tokens;    /* [n_tokens] token ids (validated against the vocabulary) */
    int32_t n_tokens;         /* >= 1 */
    int32_t pos0;             /* absolute position of tokens[0] */
    int logits;               /* FWD_LOGITS_* */
    fwd_score_fn score_keys;  /* NULL: scores are 0 */
    void *score_ctx;
    /* How a device may compute score_keys' result itself (FWD_SCORE_*, from the policy's
     * device_score hook; the default 0 = FWD_SCORE_HOST always works), and for FWD_SCORE_DOT
     * the filters u[n_layers][n_kv_heads][head_dim]. The CPU backend always calls score_keys. */
    int score_kind;
    const float *score_u;
    fwd_observe_fn observe;   /* NULL: no attention statistics */
    void *observe_ctx;
    int32_t observe_from;     /* observe the queries at positions >= observe_from */
    fwd_query_fn queries;     /* NULL: queries are not reported */
    void *queries_ctx;
} fwd_seq;

/* Seconds spent in the last call, split by phase (for bench / profiling). */
typedef struct fwd_timing { double gemm, attention, kv_write, other, logits; } fwd_timing;

#endif
