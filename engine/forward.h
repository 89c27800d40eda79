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
    fwd_observe_fn observe;   /* NULL: no attention statistics */
    void *observe_ctx;
    int32_t observe_from;     /* observe the queries at positions >= observe_from */
    fwd_query_fn queries;     /* NULL: queries are not reported */
    void *queries_ctx;
} fwd_seq;

typedef struct fwd_state fwd_state;

int fwd_create(const model *m, fwd_state **out);
void fwd_destroy(fwd_state *st);

/* Run one step. On success *logits points to rows of n_vocab floats (valid until the next
 * call): for each sequence in order, 1 row (LAST) or n_tokens rows (ALL) or none; *n_rows is
 * the total. Errors: KVS_EINVAL (bad token id / empty sequence), KVS_ENOMEM (a stream had no
 * room: reserve first), with a message. */
int fwd_cpu(fwd_state *st, const model *m, mem_pool *pool, const fwd_seq *seqs, int n_seqs,
            float **logits, int *n_rows);

/* Seconds spent in the last call, split by phase (for bench / profiling). */
typedef struct fwd_timing { double gemm, attention, kv_write, other, logits; } fwd_timing;
const fwd_timing *fwd_last_timing(const fwd_state *st);

#endif
