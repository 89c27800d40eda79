/* sched_internal.h — the engine loop's private state, shared by the scheduler's files:
 * loop.c (public API, step loop), request.c (a request's tokens, text and end),
 * pressure.c (compress -> compact -> preempt), fairness.c (VTC between tenants).
 * Nothing outside scheduler/ includes this. */
#ifndef KVS_SCHED_INTERNAL_H
#define KVS_SCHED_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

/* Cost of a token for the virtual token counter (Sheng et al., OSDI'24: w_p * prompt +
 * w_q * output); output tokens cost more because they take a whole step each. */
#define VTC_W_PROMPT 1.0
#define VTC_W_OUTPUT 2.0

enum req_state { RQ_WAITING = 0, RQ_RUNNING = 1 };

typedef struct req {
    uint64_t id;
    int tenant;
    sched_params p;
    int priority;
    sched_event_fn cb;
    void *user;
    int32_t *prompt;          /* copy; also kept for recompute after preemption */
    int32_t n_prompt;
    engine_seq *seq;          /* NULL while waiting */
    int32_t *generated;       /* tokens generated so far */
    int32_t n_generated, cap_generated;
    int state;
    sampler smp;
    tok_stream ts;
    char *pending;            /* text held back while it may be the start of a stop string */
    size_t n_pending;
    double t_submit, t_sched, t_first;
    int64_t evicted;          /* across preemptions */
    int32_t preemptions;
    int charged;              /* prompt already charged to the tenant's virtual counter */
    /* log-probabilities of the token being taken (p.logprobs), for its TOKEN event */
    float lp;
    int n_top;
    int32_t top_ids[SCHED_MAX_TOP_LOGPROBS];
    float top_lp[SCHED_MAX_TOP_LOGPROBS];
    struct req *next;
} req;

typedef struct tenant_rt {
    sched_tenant t;
    double vtc;               /* virtual counter: weighted service received */
    int running, waiting;
    int64_t pages;
    int64_t prompt_tokens, generated_tokens, evicted_tokens, finished, preemptions;
    double starve_since;      /* backlogged with nothing running since (0 = not) */
} tenant_rt;

typedef struct abort_msg {
    uint64_t id;
    int reason;               /* SCHED_FINISH_ABORTED or SCHED_FINISH_DEADLINE */
    char tenant[SCHED_NAME_MAX];
} abort_msg;

struct kvs_loop {
    kvs_engine *e;
    kvs_loop_opts o;
    char kv_dtype[32];           /* the engine's KV dtype, read once at create */
    char default_policy[SCHED_NAME_MAX], default_args[SCHED_ARGS_MAX];
    tenant_rt *tenants;
    int n_tenants;

    /* ---- shared with other threads, under mu ---- */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    req *inbox_head, *inbox_tail;
    abort_msg *aborts;
    int n_aborts, cap_aborts;
    uint64_t next_id;
    int stopping;
    double stop_deadline;
    kvs_loop_stats stats;
    kvs_tenant_stats *tstats;
    /* unfinished requests with their tenant, for abort checks from other threads */
    struct live_ent { uint64_t id; int tenant; } *live;
    int n_live, cap_live;

    /* ---- engine thread only ---- */
    req **running;
    int n_running, cap_running;
    req **waiting;            /* across tenants; picked by VTC */
    int n_waiting, cap_waiting;
    char *piece;              /* token text scratch */
    size_t piece_cap;
    int64_t evicted_total, moves_total, preempt_total, finished_total, generated_total, steps;
    int force_tenant;         /* admit this tenant's request first (starvation bound), or -1 */
    int64_t starve_preemptions;
};

/* request.c */
int sched_grow(void **arr, int *cap, int need, size_t elem);
void sched_remove_at(req **arr, int *n, int i);
void sched_req_free(kvs_loop *l, req *r);
/* Deliver the FINISH event, update counters, forget and free the request. */
void sched_finish(kvs_loop *l, req *r, int reason, int status, const char *msg);
/* Take a newly sampled token; returns 1 if the request finished (and was freed). */
int sched_take_token(kvs_loop *l, req *r, int32_t tok);
/* Build the sequence of a request being (re)admitted. */
int sched_start_seq(kvs_loop *l, req *r);

/* Fill r->lp / r->top_* for token tok from the step's logits row. */
void sched_logprobs(req *r, const float *logits, int n_vocab, int32_t tok);

/* pressure.c */
int64_t sched_pages_needed(kvs_loop *l, const int32_t *lim);
void sched_refresh_tenant_pages(kvs_loop *l);
void sched_relieve_pressure(kvs_loop *l, int32_t *lim);
/* Preempt running[i] by recompute: drop its KV, keep its tokens, back to the queue's front. */
void sched_preempt(kvs_loop *l, int i);

/* fairness.c */
int sched_pick_waiting(kvs_loop *l);
void sched_enqueue_new(kvs_loop *l, req *r);
/* Before admissions: preempt for a tenant starved longer than max_starve_s (see loop.h). */
void sched_bound_starvation(kvs_loop *l);

#endif
