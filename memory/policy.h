/* policy.h — the eviction-policy interface, the policy registry and the eviction driver
 * (ARCHITECTURE.md §4, METHODS.md; user guide in docs/POLICIES.md).
 *
 * Modelled on SQLite's VFS: a policy is a versioned struct of function pointers (pol_vtable)
 * registered by name. `version` comes first and new members are only ever appended, so a
 * policy written against version N keeps working with a kvsieve that speaks N or later.
 *
 * Life of a policy in the engine:
 *   inst = pol_instance_create("qfilters", "budget=256,window=32,filters=f.kvsqf", &mi)
 *   - key write (forward):  the forward calls pol_score_keys(inst, layer, kv_head, keys, pos,
 *                           n, out) on the post-RoPE keys; out[i] is stored in the key's slot.
 *   - attention (forward):  policies flagged POL_NEEDS_ATTENTION also see attention
 *                           probabilities through pol_observe_stream (see the flags below).
 *   - after a step / at prefill end / under memory pressure: pol_on_event(inst, pool, seq,
 *                           cur_pos, POL_AT_...) evicts victims when the instance's `when`
 *                           option asks for it; then the engine compacts the streams.
 *
 * Scores: higher = keep. Victims are the lowest-scoring live slots of a stream outside the
 * protected ones (the `sink` lowest positions and the last `window` positions); ties go to the
 * older position. A NaN score counts as -infinity.
 *
 * Threads: the registry is locked; an instance is used by one thread at a time (the engine's). */
#ifndef KVS_MEMORY_POLICY_H
#define KVS_MEMORY_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "memory/pool.h"

/* Version of this interface. A policy sets vtable.version to the version it was written for;
 * kvsieve accepts versions POL_API_VERSION_MIN .. POL_API_VERSION and never reads a member
 * added after the vtable's version (so a version-1 vtable may be the shorter version-1
 * struct). History: 1 = the first interface; 2 = device_score appended. */
#define POL_API_VERSION 2
#define POL_API_VERSION_MIN 1

/* The symbol a plugin exports (see pol_plugin_register_fn). */
#define POL_PLUGIN_SYMBOL "kvsieve_policy_register"

/* What the model looks like; handed to create() so a policy can size its state and check
 * calibration files. */
typedef struct pol_model_info {
    int n_layers;
    int n_heads;            /* query heads */
    int n_kv_heads;
    int head_dim;
    const char *model_name; /* GGUF general.name; NULL = unknown (no name checks) */
} pol_model_info;

/* When the instance evicts (the `when` option). */
typedef enum {
    POL_WHEN_AUTO = 0,     /* not given: decode when a budget is set, else prefill */
    POL_WHEN_PREFILL = 1,  /* during prefill: after every prompt chunk, down to the ratio or
                            * budget of the prompt tokens seen so far (so the peak KV follows
                            * the ratio), and at the end of the prompt; policies that look at
                            * the prompt's last window (SnapKV) only at its end */
    POL_WHEN_DECODE = 2,   /* after every step (prefill chunks and decode tokens) */
    POL_WHEN_PRESSURE = 3, /* only when the scheduler needs pages */
    /* once, when the prompt is fully computed, and not after earlier prefill chunks (the
     * whole prompt's KV is held until then; prefill evicts after every chunk) */
    POL_WHEN_PREFILL_END = 4
} pol_when;

/* Options common to every policy, parsed once from the args string before the policy sees
 * the rest. Budget: `ratio` (fraction of a head's tokens removed, kvpress semantics) XOR
 * `budget` (tokens kept per head); with neither, the instance never evicts. */
typedef struct pol_opts {
    double ratio;    /* [0, 1); < 0 when not given */
    int32_t budget;  /* >= 1; 0 when not given */
    int32_t window;  /* recent positions protected, >= 0 (default 0) */
    int32_t sink;    /* lowest positions protected, >= 0 (default 0) */
    pol_when when;   /* POL_WHEN_AUTO until given; pol_instance_create resolves it */
    /* Layers the policy evicts in (layers=A-B); the others keep every key. Default all:
     * 0 and INT32_MAX. Added in API version 1 without a bump: a field at the end that older
     * policies never read. */
    int32_t layer_first, layer_last;
} pol_opts;

/* Largest window / sink / budget accepted. */
#define POL_MAX_TOKENS (1 << 30)

/* Evictable slots of one stream, handed to a policy's select(): the stream's live slots minus
 * the protected ones (sinks and the recent window). Arrays are [n]. */
typedef struct pol_candidates {
    int layer, kv_head;
    int32_t cur_pos;        /* newest position of the sequence */
    int32_t n;
    const int32_t *slot;    /* stream slot index */
    const int32_t *pos;     /* absolute position */
    const float *score;     /* stored score */
} pol_candidates;

/* Flags. */
enum {
    /* observe_attention must be fed (it is where the scores come from). */
    POL_NEEDS_ATTENTION = 1u << 0,
    /* ... only once per sequence, at prefill end, with the attention of the last
     * min(window, T) prompt queries (SnapKV). Without this flag an attention policy wants
     * every step's queries (prefill chunks and decode tokens: H2O, TOVA). */
    POL_WINDOW_ATTENTION = 1u << 1,
    /* Never evicts (full): the driver returns 0 at once. */
    POL_NO_EVICTION = 1u << 2
};

/* How a policy's score_keys result can be computed on a device without calling it (the
 * version-2 device_score hook). */
typedef enum {
    POL_SCORE_HOST = 0,     /* none of the others: the keys go back to the host, score_keys runs */
    POL_SCORE_ZERO = 1,     /* every score is 0 (attention policies start there) */
    POL_SCORE_DOT = 2,      /* <k, u[layer][kv_head]>: u is handed over */
    POL_SCORE_NEG_NORM = 3, /* -||k||2 */
    POL_SCORE_POS = 4       /* (float)pos */
} pol_score_kind;

typedef struct pol_device_score {
    pol_score_kind kind;
    /* POL_SCORE_DOT: u[n_layers][n_kv_heads][head_dim] (fp32), owned by the policy state and
     * unchanged while it lives; NULL otherwise. */
    const float *u;
} pol_device_score;

typedef struct pol_vtable {
    int version;              /* POL_API_VERSION this policy was written against */
    const char *name;         /* [a-z0-9_-]+, at most 31 characters */
    const char *description;  /* one line for `kvsieve policies` */
    unsigned flags;           /* POL_* */
    /* Default common options, parsed before the user's (e.g. "sink=4"); NULL = none. */
    const char *default_args;
    /* Policy-specific options, for help text (e.g. "filters=PATH"); NULL = none. */
    const char *args_help;

    /* Make the policy's state. `args`: the user's option string with the common options
     * removed ("" when none): comma-separated key=value pairs, which pol_args_next() walks.
     * An unknown key must be an error naming it. On error return a negative KVS_E* status
     * (or -1) and write a message into err (err_size bytes). May be NULL: no state, and any
     * policy-specific option is refused. */
    int (*create)(const pol_model_info *mi, const pol_opts *opts, const char *args,
                  void **state, char *err, size_t err_size);
    void (*destroy)(void *state); /* may be NULL */

    /* Score n post-RoPE keys ([n][head_dim]) of one head of one layer, at absolute positions
     * pos[n], when they are written: out[n], higher = keep. Same shape as forward.h's
     * fwd_score_fn with ctx = state. Must be cheap and must not fail. NULL: scores are 0. */
    void (*score_keys)(void *state, int layer, int kv_head, const float *keys,
                       const int32_t *pos, int n, float *out);

    /* Optional (NULL = not an attention policy). Attention of n_q queries of one (layer,
     * kv_head) over the stream's slots: probs[n_q][n_slots] (softmax probabilities, averaged
     * over the G query heads of the group, 0 for holes and masked slots), queries in position
     * order. slot_pos[n_slots] (-1 = hole) and slot_scores[n_slots] are the stream's stored
     * positions and scores; update slot_scores in place (holes are ignored). Returns 0 or a
     * negative status (with a message in err). */
    int (*observe_attention)(void *state, int layer, int kv_head, const float *probs, int n_q,
                             const int32_t *slot_pos, int n_slots, float *slot_scores,
                             char *err, size_t err_size);

    /* Optional victim selection (NULL = lowest score first, older first on ties). Choose
     * n_evict distinct candidates (0 < n_evict < c->n) and write their indices into c's
     * arrays to victims[n_evict]. Returns 0 or a negative status (message in err). */
    int (*select)(void *state, const pol_candidates *c, int32_t n_evict, int32_t *victims,
                  char *err, size_t err_size);

    /* ---- version 2 ---- */
    /* Optional: say how a device computes score_keys' result (called once, after create).
     * Must describe exactly what score_keys returns (up to float rounding). NULL, or a
     * version-1 vtable: POL_SCORE_ZERO without score_keys, else POL_SCORE_HOST. */
    void (*device_score)(void *state, pol_device_score *out);
} pol_vtable;

/* The one function a plugin exports, named POL_PLUGIN_SYMBOL:
 *   int kvsieve_policy_register(int api_version, const pol_vtable **out);
 * kvsieve passes its POL_API_VERSION. The plugin returns the version it was written for
 * (> 0) and sets *out to its vtable, or sets *out = NULL if it cannot work with that kvsieve
 * (it needs a newer one). kvsieve refuses a vtable whose version is outside
 * POL_API_VERSION_MIN .. POL_API_VERSION. */
typedef int (*pol_plugin_register_fn)(int api_version, const pol_vtable **out);

/* ---- registry (built-ins are registered at first use) ------------------------------------ */

/* Add a policy. KVS_EINVAL for a malformed vtable, a version this kvsieve does not speak, or
 * a name already taken by another vtable (registering the same vtable again is a no-op). */
int pol_register(const pol_vtable *vt);
/* The policy registered under `name`, or NULL. */
const pol_vtable *pol_find(const char *name);
/* Up to max registered policies into out (built-ins first, then in registration order);
 * returns how many are registered in all. */
int pol_list(const pol_vtable **out, int max);
/* dlopen a plugin, call its registration function and register the policy it returns. The
 * library stays loaded for the life of the process. *out (may be NULL) gets the vtable.
 * Errors name the path and say why (dlopen's message, missing symbol, version mismatch). */
int pol_load_plugin(const char *path, const pol_vtable **out);

/* ---- options ----------------------------------------------------------------------------- */

/* Default options: ratio unset, budget unset, window 0, sink 0, when auto. */
void pol_opts_default(pol_opts *o);
/* Parse the common options of `args` over *o (keys: ratio, budget, window, sink, when, layers; each
 * at most once per string). The other key=value pairs are copied, in order and comma
 * separated, into rest (rest_size bytes; rest may be NULL when rest_size is 0, and then any
 * other key is an error). Checks the merged result (ratio XOR budget, budget >= window +
 * sink). KVS_EINVAL with a message naming the option and its allowed range. */
int pol_opts_parse(const char *args, pol_opts *o, char *rest, size_t rest_size);
/* Tokens a head keeps out of T: budget when set; floor(T * (1 - ratio)) when a ratio is set
 * (exact for decimal ratios: 0.9 of 10 keeps 1); INT32_MAX when neither. */
int32_t pol_n_keep(const pol_opts *o, int32_t T);
/* 1 if a policy named `name` with these options would evict at all: the name is "" or a
 * policy that never evicts (full) or is not registered (that error comes elsewhere), or the
 * options (or the policy's default_args) give a ratio or a budget; 0 when it would keep
 * every key (a request or flag that forgot its ratio). */
int pol_args_sized(const char *name, const char *args);
/* `when` with POL_WHEN_AUTO resolved. */
pol_when pol_opts_when(const pol_opts *o);

/* Walk "k1=v1,k2=v2" (the args handed to create): copies the next key and value into key /
 * val (NUL-terminated, truncated to the buffer sizes) and advances *cursor; returns 1, or 0
 * at the end. Inline so that plugins can use it without linking kvsieve. pol_opts_parse has
 * already checked the syntax (no empty keys or values). */
static inline int pol_args_next(const char **cursor, char *key, size_t key_size, char *val,
                                size_t val_size)
{
    const char *p = *cursor;
    while (*p == ',' || *p == ' ') p++;
    if (!*p) { *cursor = p; return 0; }
    const char *eq = strchr(p, '='), *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    if (!eq || eq > end) eq = end;
    size_t kn = (size_t)(eq - p), vn = eq < end ? (size_t)(end - eq - 1) : 0;
    if (kn >= key_size) kn = key_size - 1;
    if (vn >= val_size) vn = val_size - 1;
    memcpy(key, p, kn); key[kn] = '\0';
    memcpy(val, eq < end ? eq + 1 : end, vn); val[vn] = '\0';
    *cursor = end;
    return 1;
}

/* ---- instances and the eviction driver ---------------------------------------------------- */

typedef struct pol_instance {
    const pol_vtable *vt;
    void *state;
    pol_opts opts;
    pol_device_score dev;   /* the device_score hook's answer (or its default) */
    void *scratch;          /* the driver's, grown on demand */
    size_t scratch_size;
} pol_instance;

/* Create an instance of the policy `name` with an option string (common options and the
 * policy's own, e.g. "budget=256,window=32,filters=f.kvsqf"; NULL = ""). Errors: unknown
 * policy (the message lists the known ones), bad options, the policy's create failing. */
int pol_instance_create(const char *name, const char *args, const pol_model_info *mi,
                        pol_instance **out);
void pol_instance_destroy(pol_instance *inst);

/* The key-scoring hook, with the shape of forward.h's fwd_score_fn: pass (pol_score_keys,
 * inst) as (score_keys, score_ctx). Writes 0s for policies without score_keys. */
void pol_score_keys(void *inst, int layer, int kv_head, const float *keys, const int32_t *pos,
                    int n, float *out);

/* Feed attention to an attention policy: probs[n_q][s->n_slots] for the stream's slots in
 * slot order (holes 0). Gathers the stream's positions and scores, calls observe_attention,
 * writes the scores back. A no-op (0) for policies without observe_attention. */
int pol_observe_stream(pol_instance *inst, mem_pool *pool, mem_stream *s, int layer,
                       int kv_head, const float *probs, int n_q);

/* Evict from one stream down to n_keep live slots: victims are the lowest-scoring live slots
 * (ties: older first; or the policy's select) other than the `sink` lowest positions and the
 * positions > cur_pos - window, evicted with mem_stream_evict (compact afterwards to free
 * pages). Fewer are evicted if protected slots leave no more candidates. Returns the number
 * evicted (>= 0) or a negative status. */
int32_t pol_enforce_stream(pol_instance *inst, mem_pool *pool, mem_stream *s, int layer,
                           int kv_head, int32_t cur_pos, int32_t n_keep);

/* Engine events at which eviction may happen. */
typedef enum {
    POL_AT_PREFILL_END = 1, /* a sequence's last prompt token was just computed */
    POL_AT_STEP = 2,        /* after any step that wrote tokens of the sequence */
    POL_AT_PRESSURE = 3,    /* the scheduler needs pages */
    POL_AT_PREFILL_CHUNK = 4 /* a prompt chunk was computed, more of the prompt follows */
} pol_event;

/* 1 if the instance evicts at this event (its `when` matches, it has a ratio or budget and
 * the policy evicts at all), else 0. */
int pol_wants(const pol_instance *inst, pol_event ev);
/* Enforce the options on every stream of a sequence whose newest position is cur_pos:
 * n_keep = pol_n_keep(opts, T) with T = the stream's live tokens at POL_AT_PRESSURE, and T =
 * cur_pos + 1 (tokens seen) at POL_AT_STEP, POL_AT_PREFILL_CHUNK and POL_AT_PREFILL_END (so
 * that eviction after each chunk and at the end of the prompt keeps the same share of the
 * prompt). Does not check `when`.
 * Returns the number of slots evicted (>= 0) or a negative status. */
int64_t pol_enforce_seq(pol_instance *inst, mem_pool *pool, mem_seq *seq, int32_t cur_pos,
                        pol_event ev);
/* pol_wants + pol_enforce_seq: what the engine calls at each event. */
int64_t pol_on_event(pol_instance *inst, mem_pool *pool, mem_seq *seq, int32_t cur_pos,
                     pol_event ev);

#endif
