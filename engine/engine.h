/* engine.h — the engine: model + tokenizer + KV page pool + forward state, and the step that
 * advances a set of sequences (prefill chunks and decode tokens in one ragged batch).
 * One thread owns an engine; nothing here is shared with other threads. */
#ifndef KVS_ENGINE_H
#define KVS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "memory/pool.h"
#include "model.h"
#include "tokenizer.h"

typedef struct engine_opts {
    const char *model_path;
    size_t kv_bytes;   /* KV pool size in bytes; 0 = 1 GiB */
    int page_slots;    /* P; 0 = 16 */
} engine_opts;

typedef struct kvs_engine {
    model *m;
    tok_ctx *tok;
    mem_pool *pool;
    fwd_state *fwd;
    int32_t next_stream_id;
} kvs_engine;

/* A sequence: its token ids (prompt + generated) and its KV streams; the first n_computed
 * tokens have their K/V in the streams. */
typedef struct engine_seq {
    mem_seq *kv;
    int32_t *tokens;
    int32_t n_tokens, cap_tokens;
    int32_t n_computed;
    fwd_score_fn score_keys; /* optional policy hook, see forward.h */
    void *score_ctx;
} engine_seq;

int engine_create(const engine_opts *o, kvs_engine **out);
void engine_destroy(kvs_engine *e);

int engine_seq_create(kvs_engine *e, engine_seq **out);
/* Frees the sequence and returns its pages to the pool. */
void engine_seq_destroy(kvs_engine *e, engine_seq *s);
/* Append token ids (checked against the vocabulary and the context length). */
int engine_seq_push(kvs_engine *e, engine_seq *s, const int32_t *ids, int32_t n);

/* One step: every sequence computes up to max_chunk of its uncomputed tokens (>= 1 each).
 * Pages are reserved for the whole step first (all or nothing: KVS_ENOMEM leaves every
 * sequence as it was). row_of[i] = row of sequence i in *logits when its last token was
 * computed in this step (its next-token distribution), else -1. */
int engine_step(kvs_engine *e, engine_seq **seqs, int n, int32_t max_chunk, float **logits,
                int *row_of);

#endif
