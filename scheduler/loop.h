/* loop.h — the engine loop: the one thread that owns the engine (model + KV memory) and the
 * scheduler that feeds it (ARCHITECTURE.md §2, §5).
 *
 * Other threads (gRPC server, load tests) talk to it only through this header: submit a
 * request, abort it, read a stats snapshot. Everything they pass is copied. Results come back
 * through the request's callback, called ON THE ENGINE THREAD: the callback must be quick and
 * must not call back into the loop except kvs_loop_abort (e.g. push to a queue and wake a
 * completion queue with an alarm).
 *
 * Every accepted request gets exactly one SCHED_EV_FINISH event, whatever happens (stop,
 * length, abort, deadline, shutdown, error): no accepted request loses its final status. */
#ifndef KVS_SCHED_LOOP_H
#define KVS_SCHED_LOOP_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "sampler.h"

#define SCHED_MAX_STOP 8
#define SCHED_NAME_MAX 64
#define SCHED_ARGS_MAX 256
#define SCHED_MAX_TOP_LOGPROBS 20

/* A tenant as the scheduler sees it (auth lives in the server). Limits of 0 = unlimited. */
typedef struct sched_tenant {
    char name[SCHED_NAME_MAX];
    double weight;          /* fair-share weight (VTC), > 0 */
    int priority;           /* default priority of its requests; higher = more important */
    int64_t max_kv_pages;   /* KV pages its running requests may hold together */
    int max_running;        /* concurrent running requests */
    int max_queued;         /* waiting requests */
    char allowed_policies[SCHED_ARGS_MAX]; /* comma-separated names; "" = any */
} sched_tenant;

typedef struct sched_params {
    int32_t max_tokens;     /* >= 1 */
    smp_params sampling;
    int32_t stop_ids[SCHED_MAX_STOP];
    int n_stop_ids;
    char stop_strings[SCHED_MAX_STOP][64];
    int n_stop_strings;
    int ignore_eos;         /* don't stop at the model's end-of-generation tokens */
    int priority;           /* overrides the tenant's default when has_priority */
    int has_priority;
    char policy[SCHED_NAME_MAX];    /* KV eviction policy; "" = server default */
    char policy_args[SCHED_ARGS_MAX]; /* e.g. "ratio=0.875,window=64" */
    double deadline;        /* absolute time on kvs_now()'s clock; 0 = none */
    int logprobs;           /* TOKEN events carry the token's log-probability (the model's
                             * distribution, before temperature / top-k / top-p) */
    int top_logprobs;       /* ... and the n most likely alternatives, 0..SCHED_MAX_TOP_LOGPROBS */
} sched_params;

enum sched_finish {
    SCHED_FINISH_STOP = 0,   /* end-of-generation token, stop id or stop string */
    SCHED_FINISH_LENGTH,     /* max_tokens or the model's context */
    SCHED_FINISH_ABORTED,    /* kvs_loop_abort (client cancel) */
    SCHED_FINISH_DEADLINE,   /* deadline passed */
    SCHED_FINISH_SHUTDOWN,   /* server shutting down after the grace period */
    SCHED_FINISH_ERROR       /* see status/message */
};

enum sched_event_type { SCHED_EV_TOKEN = 0, SCHED_EV_FINISH = 1 };

typedef struct sched_event {
    int type;
    uint64_t request_id;
    /* SCHED_EV_TOKEN */
    int32_t token;
    const char *text;        /* decoded text piece (complete UTF-8 only; may be empty) */
    size_t text_len;
    int has_logprob;         /* sched_params.logprobs was set */
    float logprob;
    int n_top;               /* alternatives, most likely first */
    int32_t top_ids[SCHED_MAX_TOP_LOGPROBS];
    float top_logprobs[SCHED_MAX_TOP_LOGPROBS];
    /* SCHED_EV_FINISH */
    int finish_reason;       /* enum sched_finish */
    int status;              /* 0, or a KVS_E* code for SCHED_FINISH_ERROR */
    const char *message;     /* human-readable detail ("" if none) */
    int32_t prompt_tokens, completion_tokens;
    double queue_time_s;     /* submit -> first scheduled */
    double ttft_s;           /* submit -> first token */
    double e2e_s;            /* submit -> finish */
    int64_t evicted_tokens;  /* KV entries (token x layer x head) evicted for this request */
    int32_t preemptions;
} sched_event;

typedef void (*sched_event_fn)(void *user, const sched_event *ev);

typedef struct kvs_loop_opts {
    int32_t max_batch_tokens;   /* token budget per step (default 512) */
    int32_t max_running;        /* max sequences in a step (default 64) */
    int32_t prefill_chunk;      /* max prompt tokens of one sequence per step (default 256) */
    const char *default_policy; /* default "full" */
    const char *default_policy_args;
    const sched_tenant *tenants; /* copied; n_tenants == 0: one tenant "default" */
    int n_tenants;
    /* Starvation bound: a tenant with waiting requests and none running waits about this long
     * at most (VTC only orders admissions, so long requests of others could hold every slot or
     * page for as long as they run); then the newest running request of the tenant with the
     * largest virtual counter is preempted (recompute) for it. 0 = default 2 s; < 0 = off. */
    double max_starve_s;
} kvs_loop_opts;

typedef struct kvs_loop kvs_loop;

typedef struct kvs_loop_stats {
    int running, waiting;
    int64_t kv_pages_total, kv_pages_used, kv_pages_free;
    double kv_usage;             /* used / total */
    int64_t live_tokens;         /* KV entries alive (token x layer x head) */
    int64_t evicted_tokens_total;
    int64_t compaction_moves_total;
    int64_t preemptions_total;
    double fragmentation;
    int64_t requests_finished_total;
    int64_t generated_tokens_total;
    int64_t steps_total;
    char kv_dtype[32];           /* the engine's KV format ("f16", "int8/int4") */
    int64_t kv_bytes_per_token;  /* KV bytes of one token of a sequence, bookkeeping included */
    int64_t kv_bytes_total;      /* the pool: pages x page bytes */
} kvs_loop_stats;

/* Per-tenant counters for metrics. */
typedef struct kvs_tenant_stats {
    char name[SCHED_NAME_MAX];
    int running, waiting;
    int64_t kv_pages;
    int64_t prompt_tokens_total, generated_tokens_total, evicted_tokens_total;
    int64_t requests_finished_total, preemptions_total;
    double virtual_counter;      /* VTC service counter (weighted tokens) */
} kvs_tenant_stats;

/* The loop takes ownership of nothing: the engine must outlive it. */
int kvs_loop_create(kvs_engine *e, const kvs_loop_opts *o, kvs_loop **out);
void kvs_loop_destroy(kvs_loop *l);

/* Run the engine loop on the calling thread until kvs_loop_stop() is called and all requests
 * are finished. Returns 0. */
int kvs_loop_run(kvs_loop *l);

/* Thread-safe. Validates and enqueues. On success returns 0 and sets *request_id; every
 * accepted request later gets exactly one FINISH event through cb. On refusal returns a
 * negative status with a message (kvs_last_error on the caller's thread) and calls nothing:
 * KVS_EINVAL (empty prompt, bad params, unknown policy, bad policy args), KVS_ERANGE (prompt
 * over the context, token id or stop id out of range, max_tokens out of range, a deadline
 * that already passed), KVS_ENOTFOUND (unknown
 * tenant), KVS_EUNSUPPORTED (policy not allowed for tenant), KVS_ENOMEM (tenant queue full /
 * prompt can never fit in KV memory), KVS_EIO (shutting down). */
int kvs_loop_submit(kvs_loop *l, const char *tenant, const int32_t *prompt, int32_t n_prompt,
                    const sched_params *p, sched_event_fn cb, void *user, uint64_t *request_id);

/* Thread-safe. Ask to abort a request; honoured as soon as the engine thread sees it (before
 * its next step; during a step, after that step): its pages are freed, the stats show it, and
 * it gets FINISH/ABORTED. If tenant is non-NULL, only that tenant's requests can be aborted.
 * Returns 0, or KVS_ENOTFOUND if no such (unfinished) request is visible to the tenant. */
int kvs_loop_abort(kvs_loop *l, uint64_t request_id, const char *tenant);
/* The same with the finish reason: SCHED_FINISH_ABORTED (kvs_loop_abort), or
 * SCHED_FINISH_DEADLINE when the caller saw the request's deadline pass (a gRPC deadline
 * cancels the call before the loop's own check). */
int kvs_loop_cancel(kvs_loop *l, uint64_t request_id, const char *tenant, int reason);

/* Thread-safe: begin shutdown. New submits are refused (KVS_EIO). Running and waiting requests
 * continue until grace_s seconds have passed, then get FINISH/SHUTDOWN; then kvs_loop_run
 * returns. */
void kvs_loop_stop(kvs_loop *l, double grace_s);

/* Thread-safe snapshots (updated by the engine thread after each step). */
void kvs_loop_get_stats(kvs_loop *l, kvs_loop_stats *out);
/* Copies up to cap tenants' stats, returns the number of tenants. */
int kvs_loop_get_tenant_stats(kvs_loop *l, kvs_tenant_stats *out, int cap);

#endif
