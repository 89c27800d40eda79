/* eval.h — the quality harness behind `kvsieve eval` and `kvsieve calibrate` (METHODS.md, "How
 * we judge quality"). One file per concept:
 *   eval_text.c       text files, tokenizing, the passkey and needle prompts
 *   eval_policies.c   the --policies list and per-policy options
 *   eval_stats.c      a probe policy that records attention during one shared prefill, and
 *                     the replay of it into clones (eval_seq_compress_like)
 *   eval_out.c        output files (CSV, JSON), progress lines, Spearman correlation
 *   eval_ppl.c        generation perplexity under a fixed budget (mode ppl)
 *   eval_retrieval.c  passkey and needle-in-a-haystack under prefill compression
 *   eval_cost.c       scoring, eviction and compaction cost, peak KV pages (mode cost)
 *   eval_recall.c     share of attention each static-score policy's kept set would catch
 *                     (mode recall, a diagnostic) */
#ifndef KVS_TOOLS_EVAL_H
#define KVS_TOOLS_EVAL_H

#include <stdint.h>
#include <stdio.h>

#include "engine.h"

/* ---- text (eval_text.c) ------------------------------------------------------------------ */

/* Whole file into a NUL-terminated buffer (caller frees). Prints "kvsieve CMD: ..." on error. */
int eval_read_file(const char *cmd, const char *path, char **text, size_t *len);
/* Token ids of text (special tokens not parsed), with the model's BOS first when the GGUF asks
 * for one and add_bos is set. *ids is malloc'd. */
int eval_tokenize(kvs_engine *e, const char *text, size_t len, int add_bos, int32_t **ids,
                  int *n);
/* 1 if token id's text ends a sentence or a line ('.', '!', '?', ':' or a newline at its end). */
int eval_token_ends_sentence(kvs_engine *e, int32_t id);

/* A retrieval prompt: ctx (compressed) then question (kept whole), the expected answer. */
typedef struct eval_prompt {
    int32_t *ctx;      /* [n_ctx]: intro, haystack with the needle inside */
    int n_ctx;
    int32_t *question; /* [n_question]: question and answer prefix */
    int n_question;
    int needle_at;     /* token index of the needle in ctx */
    int n_needle;      /* its tokens */
    int n_template;    /* leading ctx tokens that are chat template (system turn, user start):
                        * protected from eviction as sinks, like the question */
    char answer[32];   /* the digits expected */
} eval_prompt;
void eval_prompt_free(eval_prompt *p);

typedef enum { EVAL_PASSKEY = 0, EVAL_NEEDLE = 1 } eval_task;
/* Build the prompt of a task: ctx of exactly n_ctx tokens, the needle at the sentence boundary
 * nearest to depth (0..1) of the haystack part. haystack: token ids of natural text (needle
 * task; repeated if short), ignored for passkey (repetitive filler). seed picks the key. chat:
 * wrap in the model's ChatML template (system default, user turn = context + question). */
int eval_make_prompt(kvs_engine *e, eval_task task, const int32_t *haystack, int n_haystack,
                     int n_ctx, double depth, uint64_t seed, int chat, eval_prompt *out);
/* Tokens the question part of a task needs (to fit the context under the model's maximum). */
int eval_question_tokens(kvs_engine *e, eval_task task, int chat);

/* ---- policies (eval_policies.c) ---------------------------------------------------------- */

#define EVAL_MAX_POLICIES 16
typedef struct eval_policy {
    char name[32];
    char args[768];     /* the user's extra options for this policy ("" = none) */
    unsigned flags;     /* its vtable flags (POL_*) */
} eval_policy;
/* Parse "full,streaming,qfilters" with the extra options: `extra` holds the --policy-args
 * values, each "K=V,..." (for every policy) or "NAME:K=V,..." (for one). qfilters without
 * filters= gets the model's default filters file or an error that says how to make one.
 * Returns the count or -1 after printing an error. */
int eval_parse_policies(const char *cmd, const char *list, char *const *extra, int n_extra,
                        const char *model_path, eval_policy *out, int cap);
/* "BASE,ARGS" (either may be empty) into buf. */
void eval_policy_args(const eval_policy *p, const char *base, char *buf, size_t size);

/* ---- shared prefill, attention replay (eval_stats.c) -------------------------------------- */

/* What one shared prefill must record so that clones can be compressed as if each policy had
 * watched the prefill itself: h2o needs the sum of every query's attention, tova the last
 * query's row, snapkv the rows of the last `window` prompt queries. */
typedef struct eval_stats eval_stats;
/* need_all: record every query (h2o); window: rows kept for window policies (snapkv, 0 = none).
 * n_pos: prompt length. */
int eval_stats_create(kvs_engine *e, int need_all, int window, int n_pos, eval_stats **out);
void eval_stats_destroy(eval_stats *st);
/* Give s (no policy yet, prompt marked) the recording probe as its policy: run its prefill
 * with engine_step, then call eval_stats_detach before cloning. */
int eval_stats_attach(kvs_engine *e, engine_seq *s, eval_stats *st);
void eval_stats_detach(engine_seq *s);
/* Make `clone` (an engine_seq_clone of the prefilled sequence, prompt just computed) look as
 * if its policy had run through the prefill, then compress it at prefill end: rescore its keys,
 * replay the recorded attention for attention policies, fire POL_AT_PREFILL_END (+ compaction).
 * st may be NULL when the policy needs no attention. Returns entries evicted or < 0. */
int64_t eval_seq_compress_like(kvs_engine *e, engine_seq *clone, const eval_stats *st);

/* ---- output (eval_out.c) ----------------------------------------------------------------- */

/* Open DIR/NAME for writing (creating DIR); prints an error and returns NULL on failure. */
FILE *eval_open_out(const char *cmd, const char *dir, const char *name);
/* Write s as a JSON string (quoted, escaped) / as a CSV field (quoted when needed). */
void eval_json_str(FILE *f, const char *s);
void eval_csv_str(FILE *f, const char *s);
/* "1h02m", "3m05s", "12s" */
void eval_fmt_secs(double s, char *buf, size_t size);
/* Spearman rank correlation of x and y (n values; average ranks for ties); NAN if n < 3 or a
 * side is constant. */
double eval_spearman(const double *x, const double *y, int n);
/* Progress on stderr: "\r" updates on a terminal, a line every `every` seconds otherwise. */
typedef struct eval_progress {
    const char *label;
    double t0, last;
    int tty;
} eval_progress;
void eval_progress_init(eval_progress *p, const char *label);
/* done/total units (tokens or cases), with rate and ETA; extra text appended. final: end line. */
void eval_progress_show(eval_progress *p, double done, double total, const char *unit,
                        const char *extra, int final);

/* The engine for a mode (KV pool from --kv-memory, else a small one), then, before any
 * sequence exists, a pool of `pages` pages unless --kv-memory was given. -1 after an error. */
struct eval_common;
int eval_engine_open(const struct eval_common *c, kvs_engine **out);
int eval_engine_pages(const struct eval_common *c, kvs_engine *e, int64_t pages);

/* ---- modes ------------------------------------------------------------------------------- */

/* fp16 K/V bytes of a slot / this engine's (scales and zero points included): the
 * compression of the KV format alone, as QAQ counts it. */
double eval_kv_ratio(const kvs_engine *e);

typedef struct eval_common {
    const char *cmd;          /* "eval ppl", ... for messages */
    const char *model_path;
    const char *out_dir;      /* NULL = no files */
    size_t kv_bytes;          /* 0 = sized by the mode */
    const char *kv_dtype;     /* --kv-dtype (NULL = f32) */
    kvs_device_kind device;   /* --device */
    eval_policy pol[EVAL_MAX_POLICIES];
    int n_pol;
} eval_common;

typedef struct eval_ppl_opts {
    const char *text_path;
    int32_t max_tokens;       /* tokens of the text used (0 = all, capped by the context) */
    int32_t budgets[16], windows[16];
    int n_budgets, n_windows;
    int32_t chunk;            /* tokens fed per step (1 = exact streaming) */
} eval_ppl_opts;
int eval_ppl(const eval_common *c, const eval_ppl_opts *o);

typedef struct eval_retrieval_opts {
    eval_task task;
    const char *haystack_path; /* needle */
    int32_t contexts[16]; int n_contexts;
    double depths[32]; int n_depths;      /* 0..1 */
    double ratios[16]; int n_ratios;
    int32_t chunk;            /* prefill chunk */
    int32_t max_new;          /* answer tokens */
    uint64_t seed;
    int chat;
} eval_retrieval_opts;
int eval_retrieval(const eval_common *c, const eval_retrieval_opts *o);

typedef struct eval_recall_opts {
    const char *text_path;
    int32_t max_tokens;       /* tokens of the text used (0 = all, capped by the context) */
    int32_t budgets[16], windows[16];
    int n_budgets, n_windows;
    int32_t chunk;            /* prefill chunk */
    const char *filters_path; /* qfilters' filters file */
} eval_recall_opts;
int eval_recall(const eval_common *c, const eval_recall_opts *o);

typedef struct eval_cost_opts {
    const char *text_path;    /* NULL: random tokens */
    int32_t prompt_len, gen_len, budget, window;
} eval_cost_opts;
int eval_cost(const eval_common *c, const eval_cost_opts *o);

#endif
