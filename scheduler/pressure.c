/* pressure.c — make the running set's next step fit in the KV pool: compress (policies that
 * allow it; over-quota and low-priority tenants first), compact, then preempt by recompute
 * (lowest priority, newest) (ARCHITECTURE.md §5). */
#include "sched_internal.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* Preempt by recompute: drop the KV, keep the tokens, back to the front of the queue. */
void sched_preempt(kvs_loop *l, int i)
{
    req *r = l->running[i];
    sched_remove_at(l->running, &l->n_running, i);
    r->evicted += r->seq->evicted;
    l->evicted_total += r->seq->evicted;
    l->moves_total += r->seq->compaction_moves;
    engine_seq_destroy(l->e, r->seq);
    r->seq = NULL;
    r->state = RQ_WAITING;
    r->preemptions++;
    l->preempt_total++;
    l->tenants[r->tenant].preemptions++;
    if (!sched_grow((void **)&l->waiting, &l->cap_waiting, l->n_waiting + 1, sizeof(req *))) {
        memmove(l->waiting + 1, l->waiting, (size_t)l->n_waiting * sizeof(req *));
        l->waiting[0] = r;
        l->n_waiting++;
    } else {
        sched_finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM, "out of memory while preempting");
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

int64_t sched_pages_needed(kvs_loop *l, const int32_t *lim)
{
    int64_t need = 0;
    for (int i = 0; i < l->n_running; i++) {
        engine_seq *s = l->running[i]->seq;
        need += mem_seq_pages_needed(l->e->pool, s->kv, engine_step_tokens(s, lim[i]));
    }
    return need;
}

void sched_refresh_tenant_pages(kvs_loop *l)
{
    for (int t = 0; t < l->n_tenants; t++) l->tenants[t].pages = 0;
    for (int i = 0; i < l->n_running; i++)
        l->tenants[l->running[i]->tenant].pages += engine_seq_pages(l->running[i]->seq);
}

/* Make the running set's next step fit: compress (policies that allow it; over-quota and
 * low-priority tenants first), compact, then preempt (lowest priority, newest). */
void sched_relieve_pressure(kvs_loop *l, int32_t *lim)
{
    kvs_engine *e = l->e;
    if (sched_pages_needed(l, lim) <= e->pool->n_free) return;
    sched_refresh_tenant_pages(l);
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
        for (int i = 0; i < n && sched_pages_needed(l, lim) > e->pool->n_free; i++)
            if (order[i]->seq->policy && pol_wants(order[i]->seq->policy, POL_AT_PRESSURE))
                engine_seq_compress(e, order[i]->seq);
        free(order);
    }
    /* (2) compact everything. */
    if (sched_pages_needed(l, lim) > e->pool->n_free)
        for (int i = 0; i < l->n_running; i++) engine_seq_compact(e, l->running[i]->seq);
    /* (3) preempt by recompute. */
    while (l->n_running > 1 && sched_pages_needed(l, lim) > e->pool->n_free) {
        int v = 0;
        for (int i = 1; i < l->n_running; i++)
            if (worse(l->running[i], l->running[v])) v = i;
        memmove(lim + v, lim + v + 1, (size_t)(l->n_running - v - 1) * sizeof *lim);
        sched_preempt(l, v);
    }
    /* A single sequence that does not fit alone can never continue. */
    if (l->n_running == 1 && sched_pages_needed(l, lim) > e->pool->n_free) {
        req *r = l->running[0];
        l->n_running = 0;
        sched_finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM,
               "the KV memory cannot hold this sequence (use a compressing policy or a larger "
               "--kv-memory)");
    }
}
