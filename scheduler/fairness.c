/* fairness.c — the virtual token counter (VTC, Sheng et al., OSDI'24): which tenant's request
 * is admitted next, and the counter lift for tenants that were idle. */
#include "sched_internal.h"

#include <math.h>

#include "core/common.h"

/* Pick the next waiting request: the tenant with the smallest virtual counter among those
 * with waiting requests and room under max_running; within it, highest priority, oldest. */
int sched_pick_waiting(kvs_loop *l)
{
    int best = -1;
    if (l->force_tenant >= 0) {
        int f = l->force_tenant;
        l->force_tenant = -1;
        for (int i = 0; i < l->n_waiting; i++)
            if (l->waiting[i]->tenant == f) return i;
    }
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

/* Requests whose tenant had nothing queued or running are lifted to the smallest counter of
 * the active tenants, so idle time is not banked as credit (VTC's counter lift). */
void sched_enqueue_new(kvs_loop *l, req *r)
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
    if (sched_grow((void **)&l->waiting, &l->cap_waiting, l->n_waiting + 1, sizeof(req *))) {
        sched_finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM, "out of memory");
        return;
    }
    l->waiting[l->n_waiting++] = r;
}

void sched_bound_starvation(kvs_loop *l)
{
    double bound = l->o.max_starve_s;
    if (bound < 0 || l->n_tenants < 2) return;
    double now = kvs_now();
    int starved = -1;
    for (int k = 0; k < l->n_tenants; k++) {
        tenant_rt *t = &l->tenants[k];
        int waiting = 0, running = 0;
        for (int i = 0; i < l->n_waiting && !waiting; i++) waiting = l->waiting[i]->tenant == k;
        for (int i = 0; i < l->n_running && !running; i++) running = l->running[i]->tenant == k;
        if (!waiting || running) {
            t->starve_since = 0;
            continue;
        }
        if (t->starve_since == 0) t->starve_since = now;
        else if (now - t->starve_since >= bound &&
                 (starved < 0 || t->vtc < l->tenants[starved].vtc))
            starved = k;
    }
    if (starved < 0) return;
    /* Victim: the newest request of the running tenant (other than the starved one) with the
     * largest virtual counter. */
    int v = -1;
    for (int i = 0; i < l->n_running; i++) {
        req *r = l->running[i];
        if (r->tenant == starved) continue;
        if (v < 0) { v = i; continue; }
        req *b = l->running[v];
        double va = l->tenants[r->tenant].vtc, vb = l->tenants[b->tenant].vtc;
        if (va > vb + 1e-9 || (fabs(va - vb) <= 1e-9 && r->id > b->id)) v = i;
    }
    l->tenants[starved].starve_since = now; /* at most one preemption per bound and tenant */
    if (v < 0) return;
    sched_preempt(l, v);
    l->starve_preemptions++;
    l->force_tenant = starved;
}
