/* loop.c — the engine loop: its public API (submit / abort / stop / stats, any thread) and the
 * step loop (engine thread): continuous batching with a per-step token budget and chunked
 * prefill (ARCHITECTURE.md §5). Requests: request.c; memory pressure: pressure.c; fairness
 * between tenants: fairness.c.
 *
 * Threads: kvs_loop_run() is the engine thread and the only one that touches the engine.
 * Other threads only enter through submit / abort / stop / get_stats, which take `mu` and
 * touch the inbox and the stats snapshot, nothing else. */
#include "sched_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"

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

static void publish_stats(kvs_loop *l);

int kvs_loop_create(kvs_engine *e, const kvs_loop_opts *o, kvs_loop **out)
{
    *out = NULL;
    kvs_loop *l = calloc(1, sizeof *l);
    if (!l) return kvs_error(KVS_ENOMEM, "out of memory");
    l->e = e;
    l->o = *o;
    snprintf(l->kv_dtype, sizeof l->kv_dtype, "%s", engine_kv_dtype(e));
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
    l->force_tenant = -1;
    if (l->o.max_starve_s == 0) l->o.max_starve_s = 2.0;
    publish_stats(l); /* a fresh server reports its pool before the first request */
    *out = l;
    return 0;
}

void kvs_loop_destroy(kvs_loop *l)
{
    if (!l) return;
    for (req *r = l->inbox_head, *n; r; r = n) { n = r->next; sched_req_free(l, r); }
    for (int i = 0; i < l->n_running; i++) sched_req_free(l, l->running[i]);
    for (int i = 0; i < l->n_waiting; i++) sched_req_free(l, l->waiting[i]);
    free(l->running); free(l->waiting); free(l->aborts); free(l->live);
    free(l->tenants); free(l->tstats); free(l->piece);
    if (l->tenants) { pthread_mutex_destroy(&l->mu); pthread_cond_destroy(&l->cv); }
    free(l);
}

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
    for (int i = 0; i < p->n_stop_ids && i < SCHED_MAX_STOP; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= c->n_vocab)
            return kvs_error(KVS_ERANGE, "stop token id %d is outside the vocabulary [0, %d)",
                             p->stop_ids[i], c->n_vocab);
    if (p->deadline > 0 && p->deadline <= kvs_now())
        return kvs_error(KVS_ERANGE, "the deadline already passed before the request was "
                         "queued");
    if (p->top_logprobs < 0 || p->top_logprobs > SCHED_MAX_TOP_LOGPROBS)
        return kvs_error(KVS_EINVAL, "top_logprobs %d is out of range [0, %d]", p->top_logprobs,
                         SCHED_MAX_TOP_LOGPROBS);
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
        rc = sched_grow((void **)&l->live, &l->cap_live, l->n_live + 1, sizeof *l->live);
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

int kvs_loop_cancel(kvs_loop *l, uint64_t request_id, const char *tenant, int reason)
{
    int rc = KVS_ENOTFOUND;
    pthread_mutex_lock(&l->mu);
    int ti = tenant ? find_tenant(l, tenant) : -1;
    for (int i = 0; i < l->n_live; i++)
        if (l->live[i].id == request_id && (!tenant || l->live[i].tenant == ti)) {
            if (!sched_grow((void **)&l->aborts, &l->cap_aborts, l->n_aborts + 1, sizeof(abort_msg))) {
                l->aborts[l->n_aborts].id = request_id;
                l->aborts[l->n_aborts].reason =
                    reason == SCHED_FINISH_DEADLINE ? SCHED_FINISH_DEADLINE : SCHED_FINISH_ABORTED;
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

int kvs_loop_abort(kvs_loop *l, uint64_t request_id, const char *tenant)
{
    return kvs_loop_cancel(l, request_id, tenant, SCHED_FINISH_ABORTED);
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
    sched_refresh_tenant_pages(l);
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
    snprintf(st->kv_dtype, sizeof st->kv_dtype, "%s", l->kv_dtype);
    st->kv_bytes_per_token = (int64_t)engine_kv_bytes_per_token(l->e);
    st->kv_bytes_total = (int64_t)l->e->pool->n_pages *
                         (int64_t)mem_pool_page_bytes(l->e->pool->page_slots, l->e->be->kv_slot_bytes);
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

/* Finish every request matching an abort, a passed deadline, or the end of the grace period. */
static int reap(kvs_loop *l, const abort_msg *ab, int n_ab, int shutdown_now)
{
    double now = kvs_now();
    int n_reaped = 0;
    for (int pass = 0; pass < 2; pass++) {
        req **arr = pass ? l->waiting : l->running;
        int *n = pass ? &l->n_waiting : &l->n_running;
        for (int i = 0; i < *n;) {
            req *r = arr[i];
            int reason = 0;
            for (int k = 0; k < n_ab && !reason; k++)
                if (ab[k].id == r->id) reason = ab[k].reason;
            if (!reason && r->p.deadline > 0 && now > r->p.deadline) reason = SCHED_FINISH_DEADLINE;
            if (!reason && shutdown_now) reason = SCHED_FINISH_SHUTDOWN;
            if (!reason) { i++; continue; }
            sched_remove_at(arr, n, i);
            sched_finish(l, r, reason, 0,
                   reason == SCHED_FINISH_ABORTED ? "aborted" :
                   reason == SCHED_FINISH_DEADLINE ? "deadline exceeded" :
                   "the server shut down before the request finished");
            n_reaped++;
        }
    }
    return n_reaped;
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

        for (req *r = in, *nx; r; r = nx) { nx = r->next; r->next = NULL; sched_enqueue_new(l, r); }
        int shutdown_now = stopping && kvs_now() >= stop_deadline;
        /* Cancelled, expired and killed requests give their pages back here, before the next
         * step, and the stats say so at once (not only after that step). */
        if (reap(l, ab, n_ab, shutdown_now)) publish_stats(l);
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
                sched_grow((void **)&l->running, &l->cap_running, c2, sizeof(req *))) {
                kvs_error(KVS_ENOMEM, "out of memory");
                break;
            }
            cap = c2;
        }
        /* 0. A tenant starved past the bound gets a slot (preempting the most-served). */
        sched_bound_starvation(l);
        /* 1. Running requests first, within the token budget. */
        int32_t budget = l->o.max_batch_tokens;
        for (int i = 0; i < l->n_running; i++) {
            engine_seq *s = l->running[i]->seq;
            int32_t t = engine_step_tokens(s, KVS_MIN(l->o.prefill_chunk, KVS_MAX(budget, 1)));
            lim[i] = KVS_MAX(t, 1);
            budget -= lim[i];
        }
        sched_relieve_pressure(l, lim);
        budget = l->o.max_batch_tokens;
        for (int i = 0; i < l->n_running; i++) budget -= lim[i];
        /* 2. Admit waiting requests by VTC while budget, slots and pages allow. */
        int64_t free_after = e->pool->n_free - sched_pages_needed(l, lim);
        const int64_t watermark = e->pool->n_pages / 100;
        while (budget > 0 && l->n_running < l->o.max_running && l->n_waiting) {
            int wi = sched_pick_waiting(l);
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
            if (sched_start_seq(l, r)) {
                sched_remove_at(l->waiting, &l->n_waiting, wi);
                sched_finish(l, r, SCHED_FINISH_ERROR, KVS_EINVAL, kvs_last_error());
                continue;
            }
            sched_remove_at(l->waiting, &l->n_waiting, wi);
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
        sched_relieve_pressure(l, lim);
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
                sched_finish(l, r, SCHED_FINISH_ERROR, rc, msg);
            }
            publish_stats(l);
            continue;
        }
        /* 4. Sample, stream, stop. Iterate backwards so finished requests can be removed. */
        for (int i = l->n_running - 1; i >= 0; i--) {
            req *r = l->running[i];
            if (row_of[i] < 0) continue;
            const float *row = logits + (size_t)row_of[i] * e->m->cfg.n_vocab;
            int32_t tok = smp_sample(&r->smp, row);
            if (r->p.logprobs) sched_logprobs(r, row, e->m->cfg.n_vocab, tok);
            /* take_token may finish (and free) the request */
            req *keep = r;
            sched_remove_at(l->running, &l->n_running, i);
            if (!sched_take_token(l, keep, tok)) {
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
