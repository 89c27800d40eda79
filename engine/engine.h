/* engine.h — the engine: model + tokenizer + KV page pool + forward state, and the step that
 * advances a set of sequences (prefill chunks and decode tokens in one ragged batch).
 * One thread owns an engine; nothing here is shared with other threads. */
#ifndef KVS_ENGINE_H
#define KVS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "forward.h"
#include "memory/policy.h"
#include "memory/pool.h"
#include "model.h"
#include "tokenizer.h"

typedef struct engine_opts {
    const char *model_path;
    size_t kv_bytes;   /* KV memory in bytes (K/V rows plus each slot's pos and score); 0 =
                        * 1 GiB (CPU), a share of free GPU memory (CUDA) */
    int page_slots;    /* P; 0 = 16 */
    kvs_device_kind device; /* KVS_DEVICE_CPU (0, the default), _CUDA or _AUTO (backend.h) */
    const char *kv_dtype;   /* KV dtype spec: a format name (memory/kv_format.h) or
                             * KEYS/VALUES ("int8/int4"); NULL = the backend's default (CPU
                             * f32, CUDA its 16-bit type) */
    const char *weights;    /* "native" (matrices kept in their GGUF blocks, CPU only) or
                             * "f32" (dequantised at load); NULL = $KVSIEVE_WEIGHTS, else
                             * native on the CPU and f32 on CUDA */
} engine_opts;

typedef struct kvs_engine {
    model *m;
    tok_ctx *tok;
    mem_pool *pool;    /* the block manager's bookkeeping; the K/V rows are the backend's */
    kvs_backend *be;   /* runs the steps and owns the K/V */
    kvs_plan plan;     /* the step plan, rebuilt every step */
    int32_t next_stream_id;
    int n_seqs;        /* sequences alive */
    engine_opts opts;  /* as created (model_path not kept) */
    char kv_dtype_name[32];
} kvs_engine;

/* A sequence: its token ids (prompt + generated) and its KV streams; the first n_computed
 * tokens have their K/V in the streams. */
typedef struct engine_seq {
    mem_seq *kv;
    int32_t *tokens;
    int32_t n_tokens, cap_tokens;
    int32_t n_computed;
    int32_t n_prompt;          /* prompt length: POL_AT_PREFILL_END fires when it is computed */
    pol_instance *policy;      /* KV eviction policy (NULL = full cache); owned */
    int64_t evicted;           /* KV entries (token x layer x head) evicted so far */
    int64_t compaction_moves;  /* slots moved by compaction so far */
    int logits_all;            /* 1: engine_step returns a logits row for every token it
                                * computes (teacher-forced evaluation), 0: only the last */
    /* Optional: called with each layer's post-RoPE queries of the tokens this sequence
     * computes in a step (calibration, diagnostics); forward.h's fwd_query_fn. */
    fwd_query_fn queries;
    void *queries_ctx;
    /* Optional, for a sequence without an attention policy: attention probabilities of every
     * query at positions >= observe_from over each stream (forward.h's fwd_observe_fn). */
    fwd_observe_fn observe;
    void *observe_ctx;
    int32_t observe_from;
} engine_seq;

int engine_create(const engine_opts *o, kvs_engine **out);
void engine_destroy(kvs_engine *e);
/* Give the engine a KV memory of kv_bytes (a new backend and pool of that size, same model,
 * format and device). Only while no sequence exists: KVS_EINVAL otherwise. On error the
 * engine keeps its old memory. */
int engine_set_kv_bytes(kvs_engine *e, size_t kv_bytes);

int engine_seq_create(kvs_engine *e, engine_seq **out);
/* Frees the sequence and returns its pages to the pool. */
void engine_seq_destroy(kvs_engine *e, engine_seq *s);
/* Append token ids (checked against the vocabulary and the context length). */
int engine_seq_push(kvs_engine *e, engine_seq *s, const int32_t *ids, int32_t n);

/* Give the sequence an eviction policy ("full", "qfilters", ... with its option string).
 * Errors (unknown policy, bad options) leave the sequence unchanged. */
int engine_seq_set_policy(kvs_engine *e, engine_seq *s, const char *name, const char *args);
/* Mark the tokens pushed so far as the prompt (prefill-time compression fires after them). */
void engine_seq_mark_prompt(engine_seq *s);
/* Compress under memory pressure with the sequence's policy if it allows it (when=pressure),
 * then compact. Returns the pages freed (>= 0) or a negative status. */
int64_t engine_seq_compress(kvs_engine *e, engine_seq *s);
/* Pages the sequence's streams hold. */
int64_t engine_seq_pages(const engine_seq *s);
/* Compact every stream of the sequence (tail-to-hole moves, trailing empty pages back to the
 * pool) on the engine's backend; adds the moves to s->compaction_moves and returns them (or a
 * negative status). Use this, not mem_stream_compact: the backend moves the K/V. */
int64_t engine_seq_compact(kvs_engine *e, engine_seq *s);
/* The model as policies see it. */
pol_model_info engine_model_info(const kvs_engine *e);
/* The KV format and what one token costs: K/V bytes per token of a sequence (all layers and
 * KV heads, pos and score included) with this engine's format. */
const kv_format *engine_kv_format(const kvs_engine *e);
/* The KV dtype spec in use: "f32", "f16", or "KEYS/VALUES" such as "int8/int4". */
const char *engine_kv_dtype(kvs_engine *e);
size_t engine_kv_bytes_per_token(const kvs_engine *e);
/* Read the keys and/or values (either may be NULL) of n global slots (mem_gslot) as fp32,
 * out[n][head_dim], from whichever backend holds them (evaluation, diagnostics). */
int engine_read_kv(kvs_engine *e, const int32_t *gslots, int n, float *k, float *v);
/* Seconds of the last step by phase. */
const fwd_timing *engine_last_timing(const kvs_engine *e);

/* One step: every sequence computes up to max_chunk of its uncomputed tokens (>= 1 each).
 * Policies run inside the step: keys are scored as they are written, attention policies see
 * the attention they need, and after the forward each sequence's policy evicts (at prefill
 * end or every step, per its `when`) and streams with a page's worth of holes are compacted.
 * Pages are reserved for the whole step first (all or nothing: KVS_ENOMEM leaves every
 * sequence as it was). row_of[i] = row of sequence i in *logits when its last token was
 * computed in this step (its next-token distribution), else -1; for a sequence with
 * logits_all, the first of its rows, one per token computed in the step, in order. */
int engine_step(kvs_engine *e, engine_seq **seqs, int n, int32_t max_chunk, float **logits,
                int *row_of);
/* The same with a limit per sequence (limits[i] >= 1 tokens for sequence i): the scheduler's
 * token budget. The tokens each sequence computed are in its n_computed. */
int engine_step_limits(kvs_engine *e, engine_seq **seqs, int n, const int32_t *limits,
                       float **logits, int *row_of);
/* Tokens engine_step_limits would compute for s with this limit (chunk boundaries). */
int32_t engine_step_tokens(const engine_seq *s, int32_t limit);

/* ---- evaluation helpers (kvsieve eval: one shared prefill, many policies) ---------------- */
/* A new sequence with the same tokens, counters and KV entries (K, V, position and stored
 * score of every live slot, copied densely: holes are not copied). The policy is not copied
 * (the clone has none: give it one with engine_seq_set_policy). KVS_ENOMEM (and nothing
 * taken) if the pool cannot hold the copy. */
int engine_seq_clone(kvs_engine *e, const engine_seq *src, engine_seq **out);
/* Recompute the stored score of every live key with the sequence's policy's score_keys, as if
 * the keys were written now (for attention policies this resets them to their start value;
 * feed attention with pol_observe_stream afterwards). No-op without a policy. */
int engine_seq_rescore(kvs_engine *e, engine_seq *s);
/* Run the sequence's policy at an event now, as engine_step would (evict when its `when`
 * matches, then compact). Returns the entries evicted (>= 0) or a negative status. */
int64_t engine_seq_run_event(kvs_engine *e, engine_seq *s, pol_event ev);

#endif
