/* loop.c — the engine loop: continuous batching with a per-step token budget, chunked
 * prefill, VTC fairness between tenants, and the memory-pressure ladder
 * compress -> compact -> preempt (ARCHITECTURE.md §5).
 *
 * Threads: kvs_loop_run() is the engine thread and the only one that touches the engine.
 * Other threads only enter through submit / abort / stop / get_stats, which take `mu` and
 * touch the inbox and the stats snapshot, nothing else. */
#include "loop.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

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
    struct req *next;
} req;

typedef struct tenant_rt {
    sched_tenant t;
    double vtc;               /* virtual counter: weighted service received */
    int running, waiting;
    int64_t pages;
    int64_t prompt_tokens, generated_tokens, evicted_tokens, finished, preemptions;
} tenant_rt;

typedef struct abort_msg { uint64_t id; char tenant[SCHED_NAME_MAX]; } abort_msg;

struct kvs_loop {
    kvs_engine *e;
    kvs_loop_opts o;
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
};

/* ---- small helpers -------------------------------------------------------------------- */

static int grow(void **arr, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *p = realloc(*arr, (size_t)c * elem);
    if (!p) return kvs_error(KVS_ENOMEM, "out of memory");
    *arr = p;
    *cap = c;
    return 0;
}

static int find_tenant(const kvs_loop *l, const char *name)
{
    for (int i = 0; i < l->n_tenants; i++)
        if (!strcmp(l->tenants[i].t.name, name)) return i;
    return -1;
}

static int policy_allowed(const char *list, const char *name)
{
    if (!list[0]) return 1;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        while (*p == ',' || *p == ' ') p++;
        size_t len = strcspn(p, ", ");
        if (len == n && !strncmp(p, name, n)) return 1;
        p += len;
    }
    return 0;
}

/* ---- create / destroy ----------------------------------------------------------------- */

int kvs_loop_create(kvs_engine *e, const kvs_loop_opts *o, kvs_loop **out)
{
    *out = NULL;
    kvs_loop *l = calloc(1, sizeof *l);
    if (!l) return kvs_error(KVS_ENOMEM, "out of memory");
    l->e = e;
    l->o = *o;
    if (l->o.max_batch_tokens <= 0) l->o.max_batch_tokens = 512;
    if (l->o.max_running <= 0) l->o.max_running = 64;
    if (l->o.prefill_chunk <= 0) l->o.prefill_chunk = 256;
    if (l->o.prefill_chunk > l->o.max_batch_tokens) l->o.prefill_chunk = l->o.max_batch_tokens;
    snprintf(l->default_policy, sizeof l->default_policy, "%s",
             o->default_policy && o->default_policy[0] ? o->default_policy : "full");
    snprintf(l->default_args, sizeof l->default_args, "%s",
             o->default_policy_args ? o->default_policy_args : "");
    l->o.default_policy = l->default_policy;
    l->o.default_policy_args = l->default_args;
    l->n_tenants = o->n_tenants > 0 ? o->n_tenants : 1;
    l->tenants = calloc((size_t)l->n_tenants, sizeof *l->tenants);
    l->tstats = calloc((size_t)l->n_tenants, sizeof *l->tstats);
    l->piece_cap = tok_stream_cap(e->tok) + 16;
    l->piece = malloc(l->piece_cap);
    if (!l->tenants || !l->tstats || !l->piece) {
        kvs_loop_destroy(l);
        return kvs_error(KVS_ENOMEM, "out of memory");
    }
    if (o->n_tenants > 0) {
        for (int i = 0; i < o->n_tenants; i++) {
            l->tenants[i].t = o->tenants[i];
            if (!(o->tenants[i].weight > 0)) {
                int rc = kvs_error(KVS_EINVAL, "tenant '%s': weight must be > 0",
                                   o->tenants[i].name);
                kvs_loop_destroy(l);
                return rc;
            }
        }
    } else {
        snprintf(l->tenants[0].t.name, SCHED_NAME_MAX, "default");
        l->tenants[0].t.weight = 1.0;
    }
    /* The default policy must exist and take its options. */
    pol_model_info mi = engine_model_info(e);
    pol_instance *probe;
    if (pol_instance_create(l->default_policy, l->default_args, &mi, &probe)) {
        int rc = kvs_error(KVS_EINVAL, "default policy '%s': %s", l->default_policy,
                           kvs_last_error());
        kvs_loop_destroy(l);
        return rc;
    }
    pol_instance_destroy(probe);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->next_id = 1;
    *out = l;
    return 0;
}

static void req_free(kvs_loop *l, req *r)
{
    if (!r) return;
    if (r->seq) engine_seq_destroy(l->e, r->seq);
    smp_deinit(&r->smp);
    free(r->prompt);
    free(r->generated);
    free(r->pending);
    free(r);
}

void kvs_loop_destroy(kvs_loop *l)
{
    if (!l) return;
    for (req *r = l->inbox_head, *n; r; r = n) { n = r->next; req_free(l, r); }
    for (int i = 0; i < l->n_running; i++) req_free(l, l->running[i]);
    for (int i = 0; i < l->n_waiting; i++) req_free(l, l->waiting[i]);
    free(l->running); free(l->waiting); free(l->aborts); free(l->live);
    free(l->tenants); free(l->tstats); free(l->piece);
    if (l->tenants) { pthread_mutex_destroy(&l->mu); pthread_cond_destroy(&l->cv); }
    free(l);
}

/* ---- submit / abort / stop (any thread) -------------------------------------------------- */

int kvs_loop_submit(kvs_loop *l, const char *tenant, const int32_t *prompt, int32_t n_prompt,
                    const sched_params *p, sched_event_fn cb, void *user, uint64_t *request_id)
{
    const model_config *c = &l->e->m->cfg;
    if (!cb) return kvs_error(KVS_EINVAL, "no event callback");
    int ti = find_tenant(l, tenant ? tenant : "default");
    if (ti < 0) return kvs_error(KVS_ENOTFOUND, "unknown tenant '%s'", tenant ? tenant : "");
    if (n_prompt <= 0 || !prompt) return kvs_error(KVS_EINVAL, "the prompt is empty");
    if (n_prompt >= c->n_ctx)
        return kvs_error(KVS_ERANGE, "prompt has %d tokens; the model's context is %d (and at "
                         "least one token must be generated)", n_prompt, c->n_ctx);
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->n_vocab)
            return kvs_error(KVS_ERANGE, "prompt token %d has id %d, outside the vocabulary "
                             "[0, %d)", i, prompt[i], c->n_vocab);
    if (p->max_tokens < 1 || p->max_tokens > c->n_ctx)
        return kvs_error(KVS_ERANGE, "max_tokens %d is out of range [1, %d]", p->max_tokens,
                         c->n_ctx);
    if (p->n_stop_ids < 0 || p->n_stop_ids > SCHED_MAX_STOP || p->n_stop_strings < 0 ||
        p->n_stop_strings > SCHED_MAX_STOP)
        return kvs_error(KVS_EINVAL, "at most %d stop ids and %d stop strings", SCHED_MAX_STOP,
                         SCHED_MAX_STOP);
    for (int i = 0; i < p->n_stop_strings; i++)
        if (!memchr(p->stop_strings[i], 0, sizeof p->stop_strings[i]) || !p->stop_strings[i][0])
            return kvs_error(KVS_EINVAL, "stop string %d is empty or longer than %zu bytes", i,
                             sizeof p->stop_strings[i] - 1);
    const tenant_rt *tr = &l->tenants[ti];
    const char *pol = p->policy[0] ? p->policy : l->default_policy;
    const char *pargs = p->policy[0] ? p->policy_args : l->default_args;
    if (!policy_allowed(tr->t.allowed_policies, pol))
        return kvs_error(KVS_EUNSUPPORTED, "tenant '%s' may not use policy '%s' (allowed: %s)",
                         tr->t.name, pol, tr->t.allowed_policies);
    /* Validate the policy and its options now, so a bad one is refused before queueing. */
    pol_model_info mi = engine_model_info(l->e);
    pol_instance *probe;
    if (pol_instance_create(pol, pargs, &mi, &probe))
        return kvs_error(KVS_EINVAL, "policy '%s': %s", pol, kvs_last_error());
    pol_instance_destroy(probe);
    /* A prompt that cannot fit in the whole pool even alone can never run. */
    const int P = l->e->pool->page_slots;
    int64_t pages = (int64_t)c->n_layers * c->n_kv_heads * ((n_prompt + 1 + P - 1) / P);
    if (pages > l->e->pool->n_pages)
        return kvs_error(KVS_ENOMEM, "prompt of %d tokens needs %lld KV pages; the pool has %d",
                         n_prompt, (long long)pages, l->e->pool->n_pages);
    req *r = calloc(1, sizeof *r);
    if (!r) return kvs_error(KVS_ENOMEM, "out of memory");
    r->tenant = ti;
    r->p = *p;
    snprintf(r->p.policy, sizeof r->p.policy, "%s", pol);
    snprintf(r->p.policy_args, sizeof r->p.policy_args, "%s", pargs);
    r->priority = p->has_priority ? p->priority : tr->t.priority;
    r->cb = cb;
    r->user = user;
    r->prompt = malloc((size_t)n_prompt * sizeof *r->prompt);
    if (!r->prompt || smp_init(&r->smp, &p->sampling, c->n_vocab)) {
        int rc = r->prompt ? KVS_EINVAL : kvs_error(KVS_ENOMEM, "out of memory");
        free(r->prompt);
        free(r);
        return rc;
    }
    memcpy(r->prompt, prompt, (size_t)n_prompt * sizeof *prompt);
    r->n_prompt = n_prompt;
    tok_stream_init(&r->ts);
    r->t_submit = kvs_now();

    pthread_mutex_lock(&l->mu);
    int rc = 0;
    if (l->stopping) rc = kvs_error(KVS_EIO, "the server is shutting down");
    else if (tr->t.max_queued > 0 && l->tstats[ti].waiting >= tr->t.max_queued)
        rc = kvs_error(KVS_ENOMEM, "tenant '%s' has %d queued requests (limit %d)", tr->t.name,
                       l->tstats[ti].waiting, tr->t.max_queued);
    else
        rc = grow((void **)&l->live, &l->cap_live, l->n_live + 1, sizeof *l->live);
    if (!rc) {
        r->id = l->next_id++;
        l->live[l->n_live].id = r->id;
        l->live[l->n_live++].tenant = ti;
        if (l->inbox_tail) l->inbox_tail->next = r; else l->inbox_head = r;
        l->inbox_tail = r;
        l->tstats[ti].waiting++;
        l->stats.waiting++;
        *request_id = r->id;
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    if (rc) { smp_deinit(&r->smp); free(r->prompt); free(r); }
    return rc;
}

int kvs_loop_abort(kvs_loop *l, uint64_t request_id, const char *tenant)
{
    int rc = KVS_ENOTFOUND;
    pthread_mutex_lock(&l->mu);
    int ti = tenant ? find_tenant(l, tenant) : -1;
    for (int i = 0; i < l->n_live; i++)
        if (l->live[i].id == request_id && (!tenant || l->live[i].tenant == ti)) {
            if (!grow((void **)&l->aborts, &l->cap_aborts, l->n_aborts + 1, sizeof(abort_msg))) {
                l->aborts[l->n_aborts].id = request_id;
                l->aborts[l->n_aborts++].tenant[0] = 0;
                pthread_cond_signal(&l->cv);
                rc = 0;
            } else {
                rc = KVS_ENOMEM;
            }
            break;
        }
    pthread_mutex_unlock(&l->mu);
    if (rc == KVS_ENOTFOUND) kvs_error(rc, "no unfinished request %llu%s",
                                       (unsigned long long)request_id,
                                       tenant ? " of this tenant" : "");
    return rc;
}

void kvs_loop_stop(kvs_loop *l, double grace_s)
{
    pthread_mutex_lock(&l->mu);
    if (!l->stopping) {
        l->stopping = 1;
        l->stop_deadline = kvs_now() + (grace_s > 0 ? grace_s : 0);
    }
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

void kvs_loop_get_stats(kvs_loop *l, kvs_loop_stats *out)
{
    pthread_mutex_lock(&l->mu);
    *out = l->stats;
    pthread_mutex_unlock(&l->mu);
}

int kvs_loop_get_tenant_stats(kvs_loop *l, kvs_tenant_stats *out, int cap)
{
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n_tenants && i < cap; i++) out[i] = l->tstats[i];
    pthread_mutex_unlock(&l->mu);
    return l->n_tenants;
}

/* ---- engine thread ------------------------------------------------------------------------ */

/* Deliver the FINISH event, update counters, forget the request. */
static void finish(kvs_loop *l, req *r, int reason, int status, const char *msg)
{
    char tail[512];
    size_t n_tail = 0;
    /* Text still held back (a possible stop-string prefix, a partial UTF-8 character) goes
     * out with the final event unless a stop string matched. */
    if (reason != SCHED_FINISH_STOP || !msg || strncmp(msg, "stop string", 11)) {
        if (r->n_pending && r->n_pending < sizeof tail) {
            memcpy(tail, r->pending, r->n_pending);
            n_tail = r->n_pending;
        }
        int f = tok_stream_flush(&r->ts, tail + n_tail, sizeof tail - n_tail);
        if (f > 0) n_tail += (size_t)f;
    }
    double now = kvs_now();
    int64_t ev_now = r->seq ? r->seq->evicted : 0;
    sched_event ev = {
        .type = SCHED_EV_FINISH, .request_id = r->id, .token = -1, .text = tail,
        .text_len = n_tail, .finish_reason = reason, .status = status,
        .message = msg ? msg : "", .prompt_tokens = r->n_prompt,
        .completion_tokens = r->n_generated,
        .queue_time_s = r->t_sched > 0 ? r->t_sched - r->t_submit : now - r->t_submit,
        .ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : 0.0, .e2e_s = now - r->t_submit,
        .evicted_tokens = r->evicted + ev_now, .preemptions = r->preemptions};
    r->cb(r->user, &ev);
    tenant_rt *t = &l->tenants[r->tenant];
    t->finished++;
    t->evicted_tokens += ev.evicted_tokens;
    l->evicted_total += ev_now;
    if (r->seq) l->moves_total += r->seq->compaction_moves;
    l->finished_total++;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n_live; i++)
        if (l->live[i].id == r->id) { l->live[i] = l->live[--l->n_live]; break; }
    pthread_mutex_unlock(&l->mu);
    req_free(l, r);
}

static void remove_at(req **arr, int *n, int i)
{
    memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
    (*n)--;
}

/* Emit text, holding back a suffix that may begin a stop string. Returns 1 if a stop string
 * matched (the text before it was emitted). */
static int emit_text(req *r, int32_t token, const char *piece, size_t n)
{
    char *buf = realloc(r->pending, r->n_pending + n + 1);
    if (!buf) n = 0; else r->pending = buf;
    if (n) memcpy(r->pending + r->n_pending, piece, n);
    r->n_pending += n;
    size_t emit = r->n_pending, cut = r->n_pending;
    int matched = 0;
    for (int i = 0; i < r->p.n_stop_strings; i++) {
        const char *ss = r->p.stop_strings[i];
        size_t m = strlen(ss);
        /* a full match anywhere in the pending text */
        for (size_t at = 0; at + m <= r->n_pending; at++)
            if (!memcmp(r->pending + at, ss, m)) {
                if (at < cut) cut = at;
                matched = 1;
                break;
            }
        /* longest suffix that is a proper prefix of the stop string */
        for (size_t k = m - 1; k > 0; k--)
            if (k <= r->n_pending && !memcmp(r->pending + r->n_pending - k, ss, k)) {
                if (r->n_pending - k < emit) emit = r->n_pending - k;
                break;
            }
    }
    if (matched) emit = cut;
    sched_event ev = {.type = SCHED_EV_TOKEN, .request_id = r->id, .token = token,
                      .text = r->pending, .text_len = emit};
    r->cb(r->user, &ev);
    memmove(r->pending, r->pending + emit, r->n_pending - emit);
    r->n_pending -= emit;
    return matched;
}

/* Take a newly sampled token; returns 1 if the request finished (and was freed). */
static int take_token(kvs_loop *l, req *r, int32_t tok)
{
    const model_config *c = &l->e->m->cfg;
    if (r->t_first == 0) r->t_first = kvs_now();
    l->generated_total++;
    l->tenants[r->tenant].generated_tokens++;
    l->tenants[r->tenant].vtc += VTC_W_OUTPUT / l->tenants[r->tenant].t.weight;
    if (!r->p.ignore_eos && tok_is_eog(l->e->tok, tok)) {
        r->n_generated++;
        finish(l, r, SCHED_FINISH_STOP, 0, "end of generation token");
        return 1;
    }
    for (int i = 0; i < r->p.n_stop_ids; i++)
        if (r->p.stop_ids[i] == tok) {
            r->n_generated++;
            finish(l, r, SCHED_FINISH_STOP, 0, "stop id");
            return 1;
        }
    if (r->n_generated + 1 > r->cap_generated) {
        int32_t cap = r->cap_generated ? 2 * r->cap_generated : 64;
        int32_t *g = realloc(r->generated, (size_t)cap * sizeof *g);
        if (!g) { finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM, "out of memory"); return 1; }
        r->generated = g;
        r->cap_generated = cap;
    }
    r->generated[r->n_generated++] = tok;
    int nb = tok_stream_push(l->e->tok, &r->ts, tok, l->piece, l->piece_cap);
    if (emit_text(r, tok, l->piece, nb > 0 ? (size_t)nb : 0)) {
        finish(l, r, SCHED_FINISH_STOP, 0, "stop string");
        return 1;
    }
    if (r->n_generated >= r->p.max_tokens) {
        finish(l, r, SCHED_FINISH_LENGTH, 0, "max_tokens");
        return 1;
    }
    if (r->n_prompt + r->n_generated >= c->n_ctx) {
        finish(l, r, SCHED_FINISH_LENGTH, 0, "the model's context is full");
        return 1;
    }
    if (engine_seq_push(l->e, r->seq, &tok, 1)) {
        finish(l, r, SCHED_FINISH_ERROR, KVS_EINVAL, kvs_last_error());
        return 1;
    }
    return 0;
}

/* Build the sequence of a request being (re)admitted: prompt + what it generated before a
 * preemption, prompt marked for prefill-time compression, its policy. */
static int start_seq(kvs_loop *l, req *r)
{
    engine_seq *s;
    int rc = engine_seq_create(l->e, &s);
    if (rc) return rc;
    if ((rc = engine_seq_push(l->e, s, r->prompt, r->n_prompt))) goto fail;
    engine_seq_mark_prompt(s);
    if (r->n_generated && (rc = engine_seq_push(l->e, s, r->generated, r->n_generated))) goto fail;
    if ((rc = engine_seq_set_policy(l->e, s, r->p.policy, r->p.policy_args))) goto fail;
    r->seq = s;
    return 0;
fail:
    engine_seq_destroy(l->e, s);
    return rc;
}

/* Preempt by recompute: drop the KV, keep the tokens, back to the front of the queue. */
static void preempt(kvs_loop *l, int i)
{
    req *r = l->running[i];
    remove_at(l->running, &l->n_running, i);
    r->evicted += r->seq->evicted;
    l->evicted_total += r->seq->evicted;
    l->moves_total += r->seq->compaction_moves;
    engine_seq_destroy(l->e, r->seq);
    r->seq = NULL;
    r->state = RQ_WAITING;
    r->preemptions++;
    l->preempt_total++;
    l->tenants[r->tenant].preemptions++;
    if (!grow((void **)&l->waiting, &l->cap_waiting, l->n_waiting + 1, sizeof(req *))) {
        memmove(l->waiting + 1, l->waiting, (size_t)l->n_waiting * sizeof(req *));
        l->waiting[0] = r;
        l->n_waiting++;
    } else {
        finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM, "out of memory while preempting");
    }
}

/* Order for the pressure ladder: victims first = lowest priority, then newest. */
static int worse(const req *a, const req *b)
{
    if (a->priority != b->priority) return a->priority < b->priority;
    return a->id > b->id;
}

/* Tenant over its KV quota? */
static int over_quota(const kvs_loop *l, const req *r)
{
    const tenant_rt *t = &l->tenants[r->tenant];
    return t->t.max_kv_pages > 0 && t->pages > t->t.max_kv_pages;
}

static int64_t pages_needed(kvs_loop *l, const int32_t *lim)
{
    int64_t need = 0;
    for (int i = 0; i < l->n_running; i++) {
        engine_seq *s = l->running[i]->seq;
        need += mem_seq_pages_needed(l->e->pool, s->kv, engine_step_tokens(s, lim[i]));
    }
    return need;
}

static void refresh_tenant_pages(kvs_loop *l)
{
    for (int t = 0; t < l->n_tenants; t++) l->tenants[t].pages = 0;
    for (int i = 0; i < l->n_running; i++)
        l->tenants[l->running[i]->tenant].pages += engine_seq_pages(l->running[i]->seq);
}

/* Make the running set's next step fit: compress (policies that allow it; over-quota and
 * low-priority tenants first), compact, then preempt (lowest priority, newest). */
static void relieve_pressure(kvs_loop *l, int32_t *lim)
{
    kvs_engine *e = l->e;
    if (pages_needed(l, lim) <= e->pool->n_free) return;
    refresh_tenant_pages(l);
    /* (1) compress, in victim order: over-quota first, then worse priority / newer. */
    int n = l->n_running;
    req **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (order) {
        memcpy(order, l->running, (size_t)n * sizeof *order);
        for (int i = 1; i < n; i++)
            for (int j = i; j > 0; j--) {
                req *a = order[j], *b = order[j - 1];
                int qa = over_quota(l, a), qb = over_quota(l, b);
                if (qa > qb || (qa == qb && worse(a, b))) { order[j] = b; order[j - 1] = a; }
                else break;
            }
        for (int i = 0; i < n && pages_needed(l, lim) > e->pool->n_free; i++)
            if (order[i]->seq->policy && pol_wants(order[i]->seq->policy, POL_AT_PRESSURE))
                engine_seq_compress(e, order[i]->seq);
        free(order);
    }
    /* (2) compact everything. */
    if (pages_needed(l, lim) > e->pool->n_free)
        for (int i = 0; i < l->n_running; i++) {
            engine_seq *s = l->running[i]->seq;
            for (int k = 0; k < s->kv->n_layers * s->kv->n_kv_heads; k++)
                s->compaction_moves += mem_stream_compact(e->pool, &s->kv->streams[k]);
        }
    /* (3) preempt by recompute. */
    while (l->n_running > 1 && pages_needed(l, lim) > e->pool->n_free) {
        int v = 0;
        for (int i = 1; i < l->n_running; i++)
            if (worse(l->running[i], l->running[v])) v = i;
        memmove(lim + v, lim + v + 1, (size_t)(l->n_running - v - 1) * sizeof *lim);
        preempt(l, v);
    }
    /* A single sequence that does not fit alone can never continue. */
    if (l->n_running == 1 && pages_needed(l, lim) > e->pool->n_free) {
        req *r = l->running[0];
        l->n_running = 0;
        finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM,
               "the KV memory cannot hold this sequence (use a compressing policy or a larger "
               "--kv-memory)");
    }
}

/* Pick the next waiting request: the tenant with the smallest virtual counter among those
 * with waiting requests and room under max_running; within it, highest priority, oldest. */
static int pick_waiting(kvs_loop *l)
{
    int best = -1;
    for (int i = 0; i < l->n_waiting; i++) {
        req *r = l->waiting[i];
        tenant_rt *t = &l->tenants[r->tenant];
        if (t->t.max_running > 0 && t->running >= t->t.max_running) continue;
        if (best < 0) { best = i; continue; }
        req *b = l->waiting[best];
        double va = t->vtc, vb = l->tenants[b->tenant].vtc;
        if (va < vb - 1e-9 || (fabs(va - vb) <= 1e-9 &&
                               (r->priority > b->priority ||
                                (r->priority == b->priority && r->preemptions > b->preemptions))))
            best = i;
    }
    return best;
}

static void publish_stats(kvs_loop *l)
{
    mem_stats ms;
    mem_stats_get(l->e->pool, NULL, 0, &ms);
    int64_t live = 0, holes = 0, slots = 0;
    for (int t = 0; t < l->n_tenants; t++) { l->tenants[t].running = 0; l->tenants[t].waiting = 0; }
    for (int i = 0; i < l->n_running; i++) {
        engine_seq *s = l->running[i]->seq;
        l->tenants[l->running[i]->tenant].running++;
        for (int k = 0; k < s->kv->n_layers * s->kv->n_kv_heads; k++) {
            live += s->kv->streams[k].n_live;
            holes += s->kv->streams[k].n_slots - s->kv->streams[k].n_live;
            slots += (int64_t)s->kv->streams[k].n_pages * l->e->pool->page_slots;
        }
    }
    for (int i = 0; i < l->n_waiting; i++) l->tenants[l->waiting[i]->tenant].waiting++;
    refresh_tenant_pages(l);
    int64_t ev_running = 0, mv_running = 0;
    for (int i = 0; i < l->n_running; i++) {
        ev_running += l->running[i]->seq->evicted;
        mv_running += l->running[i]->seq->compaction_moves;
    }
    pthread_mutex_lock(&l->mu);
    kvs_loop_stats *st = &l->stats;
    st->running = l->n_running;
    /* requests still in the inbox count as waiting too */
    int inbox = 0;
    for (req *r = l->inbox_head; r; r = r->next) inbox++;
    st->waiting = l->n_waiting + inbox;
    st->kv_pages_total = l->e->pool->n_pages;
    st->kv_pages_free = l->e->pool->n_free;
    st->kv_pages_used = st->kv_pages_total - st->kv_pages_free;
    st->kv_usage = st->kv_pages_total ? (double)st->kv_pages_used / st->kv_pages_total : 0.0;
    st->live_tokens = live;
    st->evicted_tokens_total = l->evicted_total + ev_running;
    st->compaction_moves_total = l->moves_total + mv_running;
    st->preemptions_total = l->preempt_total;
    st->fragmentation = slots ? 1.0 - (double)live / (double)slots : 0.0;
    st->requests_finished_total = l->finished_total;
    st->generated_tokens_total = l->generated_total;
    st->steps_total = l->steps;
    for (int t = 0; t < l->n_tenants; t++) {
        kvs_tenant_stats *ts = &l->tstats[t];
        const tenant_rt *tr = &l->tenants[t];
        snprintf(ts->name, sizeof ts->name, "%s", tr->t.name);
        ts->running = tr->running;
        ts->waiting = tr->waiting;
        ts->kv_pages = tr->pages;
        ts->prompt_tokens_total = tr->prompt_tokens;
        ts->generated_tokens_total = tr->generated_tokens;
        ts->evicted_tokens_total = tr->evicted_tokens;
        ts->requests_finished_total = tr->finished;
        ts->preemptions_total = tr->preemptions;
        ts->virtual_counter = tr->vtc;
    }
    for (req *r = l->inbox_head; r; r = r->next) l->tstats[r->tenant].waiting++;
    pthread_mutex_unlock(&l->mu);
    (void)holes;
}

/* Requests whose tenant had nothing queued or running are lifted to the smallest counter of
 * the active tenants, so idle time is not banked as credit (VTC's counter lift). */
static void enqueue_new(kvs_loop *l, req *r)
{
    tenant_rt *t = &l->tenants[r->tenant];
    int active = 0;
    for (int i = 0; i < l->n_running && !active; i++) active = l->running[i]->tenant == r->tenant;
    for (int i = 0; i < l->n_waiting && !active; i++) active = l->waiting[i]->tenant == r->tenant;
    if (!active) {
        double lo = -1;
        for (int k = 0; k < l->n_tenants; k++) {
            if (k == r->tenant) continue;
            int busy = 0;
            for (int i = 0; i < l->n_running && !busy; i++) busy = l->running[i]->tenant == k;
            for (int i = 0; i < l->n_waiting && !busy; i++) busy = l->waiting[i]->tenant == k;
            if (busy && (lo < 0 || l->tenants[k].vtc < lo)) lo = l->tenants[k].vtc;
        }
        if (lo > t->vtc) t->vtc = lo;
    }
    if (grow((void **)&l->waiting, &l->cap_waiting, l->n_waiting + 1, sizeof(req *))) {
        finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM, "out of memory");
        return;
    }
    l->waiting[l->n_waiting++] = r;
}

/* Finish every request matching an abort, a passed deadline, or the end of the grace period. */
static void reap(kvs_loop *l, const abort_msg *ab, int n_ab, int shutdown_now)
{
    double now = kvs_now();
    for (int pass = 0; pass < 2; pass++) {
        req **arr = pass ? l->waiting : l->running;
        int *n = pass ? &l->n_waiting : &l->n_running;
        for (int i = 0; i < *n;) {
            req *r = arr[i];
            int reason = 0;
            for (int k = 0; k < n_ab && !reason; k++)
                if (ab[k].id == r->id) reason = SCHED_FINISH_ABORTED;
            if (!reason && r->p.deadline > 0 && now > r->p.deadline) reason = SCHED_FINISH_DEADLINE;
            if (!reason && shutdown_now) reason = SCHED_FINISH_SHUTDOWN;
            if (!reason) { i++; continue; }
            remove_at(arr, n, i);
            finish(l, r, reason, 0,
                   reason == SCHED_FINISH_ABORTED ? "aborted" :
                   reason == SCHED_FINISH_DEADLINE ? "deadline exceeded" :
                   "the server shut down before the request finished");
        }
    }
}

int kvs_loop_run(kvs_loop *l)
{
    kvs_engine *e = l->e;
    int32_t *lim = NULL;
    engine_seq **batch = NULL;
    int *row_of = NULL;
    int cap = 0;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (!l->inbox_head && !l->n_aborts && !l->n_running && !l->n_waiting && !l->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        }
        req *in = l->inbox_head;
        l->inbox_head = l->inbox_tail = NULL;
        abort_msg ab[64];
        int n_ab = l->n_aborts < 64 ? l->n_aborts : 64;
        if (n_ab) {
            memcpy(ab, l->aborts, (size_t)n_ab * sizeof *ab);
            memmove(l->aborts, l->aborts + n_ab, (size_t)(l->n_aborts - n_ab) * sizeof *ab);
            l->n_aborts -= n_ab;
        }
        int stopping = l->stopping;
        double stop_deadline = l->stop_deadline;
        pthread_mutex_unlock(&l->mu);

        for (req *r = in, *nx; r; r = nx) { nx = r->next; r->next = NULL; enqueue_new(l, r); }
        int shutdown_now = stopping && kvs_now() >= stop_deadline;
        reap(l, ab, n_ab, shutdown_now);
        if (stopping && !l->n_running && !l->n_waiting) {
            pthread_mutex_lock(&l->mu);
            int more = l->inbox_head != NULL;
            pthread_mutex_unlock(&l->mu);
            if (!more) break;
            continue;
        }
        if (!l->n_running && !l->n_waiting) { publish_stats(l); continue; }

        /* Room for every request that could run this step. */
        int need_cap = l->n_running + l->n_waiting;
        if (need_cap > cap) {
            int c2 = need_cap * 2;
            int32_t *a = realloc(lim, (size_t)c2 * sizeof *a);
            if (a) lim = a;
            engine_seq **b = realloc(batch, (size_t)c2 * sizeof *b);
            if (b) batch = b;
            int *c = realloc(row_of, (size_t)c2 * sizeof *c);
            if (c) row_of = c;
            if (!a || !b || !c ||
                grow((void **)&l->running, &l->cap_running, c2, sizeof(req *))) {
                kvs_error(KVS_ENOMEM, "out of memory");
                break;
            }
            cap = c2;
        }
        /* 1. Running requests first, within the token budget. */
        int32_t budget = l->o.max_batch_tokens;
        for (int i = 0; i < l->n_running; i++) {
            engine_seq *s = l->running[i]->seq;
            int32_t t = engine_step_tokens(s, KVS_MIN(l->o.prefill_chunk, KVS_MAX(budget, 1)));
            lim[i] = KVS_MAX(t, 1);
            budget -= lim[i];
        }
        relieve_pressure(l, lim);
        budget = l->o.max_batch_tokens;
        for (int i = 0; i < l->n_running; i++) budget -= lim[i];
        /* 2. Admit waiting requests by VTC while budget, slots and pages allow. */
        int64_t free_after = e->pool->n_free - pages_needed(l, lim);
        const int64_t watermark = e->pool->n_pages / 100;
        while (budget > 0 && l->n_running < l->o.max_running && l->n_waiting) {
            int wi = pick_waiting(l);
            if (wi < 0) break;
            req *r = l->waiting[wi];
            const model_config *c = &e->m->cfg;
            const int P = e->pool->page_slots;
            int32_t total = r->n_prompt + r->n_generated;
            int64_t pages = (int64_t)c->n_layers * c->n_kv_heads * ((total + P - 1) / P);
            tenant_rt *t = &l->tenants[r->tenant];
            if (t->t.max_kv_pages > 0 && t->pages + pages > t->t.max_kv_pages && t->running > 0)
                break; /* its quota is full: wait for its own requests to finish */
            if (pages + watermark > free_after && l->n_running > 0) break;
            if (start_seq(l, r)) {
                remove_at(l->waiting, &l->n_waiting, wi);
                finish(l, r, SCHED_FINISH_ERROR, KVS_EINVAL, kvs_last_error());
                continue;
            }
            remove_at(l->waiting, &l->n_waiting, wi);
            if (r->t_sched == 0) r->t_sched = kvs_now();
            /* VTC charges the prompt when the request is admitted, so the next pick in this
             * same step already sees it (a recompute after preemption is not charged again). */
            if (!r->charged) {
                t->vtc += VTC_W_PROMPT * r->n_prompt / t->t.weight;
                t->prompt_tokens += r->n_prompt;
                r->charged = 1;
            }
            r->state = RQ_RUNNING;
            l->running[l->n_running] = r; /* cap >= running + waiting */
            int32_t tk = engine_step_tokens(r->seq, KVS_MIN(l->o.prefill_chunk, budget));
            lim[l->n_running++] = KVS_MAX(tk, 1);
            budget -= KVS_MAX(tk, 1);
            free_after -= pages;
            t->running++;
            t->pages += pages;
        }
        if (!l->n_running) { publish_stats(l); continue; }
        relieve_pressure(l, lim);
        if (!l->n_running) { publish_stats(l); continue; }

        /* 3. One step. */
        for (int i = 0; i < l->n_running; i++) batch[i] = l->running[i]->seq;
        float *logits;
        int rc = engine_step_limits(e, batch, l->n_running, lim, &logits, row_of);
        l->steps++;
        if (rc) {
            /* Should not happen after relieve_pressure; fail the requests rather than spin. */
            char msg[512];
            snprintf(msg, sizeof msg, "engine step failed: %s", kvs_last_error());
            while (l->n_running) {
                req *r = l->running[--l->n_running];
                finish(l, r, SCHED_FINISH_ERROR, rc, msg);
            }
            publish_stats(l);
            continue;
        }
        /* 4. Sample, stream, stop. Iterate backwards so finished requests can be removed. */
        for (int i = l->n_running - 1; i >= 0; i--) {
            req *r = l->running[i];
            if (row_of[i] < 0) continue;
            int32_t tok = smp_sample(&r->smp, logits + (size_t)row_of[i] * e->m->cfg.n_vocab);
            /* take_token may finish (and free) the request */
            req *keep = r;
            remove_at(l->running, &l->n_running, i);
            if (!take_token(l, keep, tok)) {
                memmove(l->running + i + 1, l->running + i,
                        (size_t)(l->n_running - i) * sizeof *l->running);
                l->running[i] = keep;
                l->n_running++;
            }
        }
        publish_stats(l);
    }
    free(lim);
    free(batch);
    free(row_of);
    publish_stats(l);
    return 0;
}
