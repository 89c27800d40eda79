/* evict.c — the eviction driver: which slots of a stream go, and when (ARCHITECTURE.md §4).
 *
 * Per stream: gather the live slots, drop the protected ones (the `sink` lowest positions and
 * the positions > cur_pos - window), then evict the n_live - n_keep lowest-scoring candidates
 * (older first on ties; or the policy's select) with mem_stream_evict. Victims become holes;
 * the engine compacts afterwards to give pages back. */
#include "memory/policy.h"

#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One candidate for the default selection: ordered by (key, pos). */
typedef struct { float key; int32_t pos; int32_t idx; } cand;

/* Scratch for m slots: cand[m], slot[m], pos[m], score[m], idx[m] (victims, or a temporary),
 * mark[m]. */
typedef struct {
    cand *c;
    int32_t *slot, *pos, *idx;
    float *score;
    uint8_t *mark;
} scratch;

static int scratch_get(pol_instance *inst, int64_t m, scratch *sc)
{
    if (m < 1) m = 1;
    size_t need = (size_t)m * (sizeof(cand) + 3 * sizeof(int32_t) + sizeof(float) + 1);
    if (need > inst->scratch_size) {
        size_t cap = KVS_MAX(need, 2 * inst->scratch_size);
        void *p = realloc(inst->scratch, cap);
        if (!p) return kvs_error(KVS_ENOMEM, "out of memory in the eviction driver");
        inst->scratch = p;
        inst->scratch_size = cap;
    }
    char *b = inst->scratch;
    sc->c = (cand *)b;                 b += (size_t)m * sizeof(cand);
    sc->slot = (int32_t *)b;           b += (size_t)m * sizeof(int32_t);
    sc->pos = (int32_t *)b;            b += (size_t)m * sizeof(int32_t);
    sc->idx = (int32_t *)b;            b += (size_t)m * sizeof(int32_t);
    sc->score = (float *)b;            b += (size_t)m * sizeof(float);
    sc->mark = (uint8_t *)b;
    return KVS_OK;
}

static inline float score_key(float s) { return isnan(s) ? -INFINITY : s; }

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The k-th smallest (0-based) of v[n] (k < n); reorders tmp, a copy of v. */
static int32_t kth_smallest(const int32_t *v, int32_t n, int32_t k, int32_t *tmp)
{
    if (k < 16) {
        /* Small k (sinks are a handful): keep the k+1 smallest in a sorted run. */
        int32_t len = 0;
        for (int32_t i = 0; i < n; i++) {
            int32_t x = v[i];
            if (len == k + 1 && x >= tmp[k]) continue;
            int32_t j = len < k + 1 ? len++ : k;
            while (j > 0 && tmp[j - 1] > x) { tmp[j] = tmp[j - 1]; j--; }
            tmp[j] = x;
        }
        return tmp[k];
    }
    memcpy(tmp, v, (size_t)n * sizeof *tmp);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_i32);
    return tmp[k];
}

int32_t pol_enforce_stream(pol_instance *inst, mem_pool *pool, mem_stream *s, int layer,
                           int kv_head, int32_t cur_pos, int32_t n_keep)
{
    const pol_vtable *vt = inst->vt;
    if (vt->flags & POL_NO_EVICTION) return 0;
    if (layer < inst->opts.layer_first || layer > inst->opts.layer_last) return 0;
    if (n_keep < 0) n_keep = 0;
    if (s->n_live <= n_keep) return 0;
    scratch sc = { 0 };
    int rc = scratch_get(inst, s->n_slots, &sc);
    if (rc) return rc;

    /* Live slots, in slot order. */
    const int P = pool->page_slots;
    int32_t m = 0;
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t page = mem_slot_page(pool, s, slot), off = slot & (P - 1);
        int32_t pos = mem_page_pos(pool, page)[off];
        if (pos < 0) continue;
        sc.slot[m] = slot;
        sc.pos[m] = pos;
        sc.score[m] = mem_page_score(pool, page)[off];
        m++;
    }
    /* Protected: the `sink` lowest positions, and positions > cur_pos - window. */
    const int32_t sink = inst->opts.sink;
    if (sink >= m) return 0;
    int64_t sink_max = -1; /* positions <= sink_max are sinks */
    if (sink > 0) sink_max = kth_smallest(sc.pos, m, sink - 1, sc.idx);
    const int64_t recent_min = (int64_t)cur_pos - inst->opts.window + 1; /* window: >= this */
    int32_t n_cand = 0;
    for (int32_t i = 0; i < m; i++) {
        if (sc.pos[i] <= sink_max || (inst->opts.window > 0 && sc.pos[i] >= recent_min)) continue;
        sc.slot[n_cand] = sc.slot[i];
        sc.pos[n_cand] = sc.pos[i];
        sc.score[n_cand] = sc.score[i];
        n_cand++;
    }
    int32_t n_evict = KVS_MIN(s->n_live - n_keep, n_cand);
    if (n_evict <= 0) return 0;

    /* Victims as indices into the candidate arrays, in sc.idx[0..n_evict). */
    int32_t *victims = sc.idx;
    if (n_evict == n_cand) {
        for (int32_t i = 0; i < n_cand; i++) victims[i] = i;
    } else if (vt->select) {
        pol_candidates view = { layer, kv_head, cur_pos, n_cand, sc.slot, sc.pos, sc.score };
        char err[512] = "";
        rc = vt->select(inst->state, &view, n_evict, victims, err, sizeof err);
        if (rc)
            return kvs_error(rc < 0 ? rc : KVS_EINVAL, "policy %s: select failed: %s",
                             vt->name, err[0] ? err : "no message");
        memset(sc.mark, 0, (size_t)n_cand);
        for (int32_t i = 0; i < n_evict; i++) {
            int32_t v = victims[i];
            if (v < 0 || v >= n_cand || sc.mark[v])
                return kvs_error(KVS_EINVAL, "policy %s: select returned %s victim %d (of %d "
                                 "candidates)", vt->name,
                                 (v < 0 || v >= n_cand) ? "out-of-range" : "a duplicate",
                                 (int)v, (int)n_cand);
            sc.mark[v] = 1;
        }
    } else if (n_evict == 1) {
        int32_t best = 0;
        for (int32_t i = 1; i < n_cand; i++) {
            float a = score_key(sc.score[i]), b = score_key(sc.score[best]);
            if (a < b || (a == b && sc.pos[i] < sc.pos[best])) best = i;
        }
        victims[0] = best;
    } else {
        for (int32_t i = 0; i < n_cand; i++) {
            sc.c[i].key = score_key(sc.score[i]);
            sc.c[i].pos = sc.pos[i];
            sc.c[i].idx = i;
        }
        qsort(sc.c, (size_t)n_cand, sizeof *sc.c, cmp_cand);
        for (int32_t i = 0; i < n_evict; i++) victims[i] = sc.c[i].idx;
    }
    for (int32_t i = 0; i < n_evict; i++)
        if ((rc = mem_stream_evict(pool, s, sc.slot[victims[i]])) < 0) return rc;
    return n_evict;
}

int pol_observe_stream(pol_instance *inst, mem_pool *pool, mem_stream *s, int layer,
                       int kv_head, const float *probs, int n_q)
{
    const pol_vtable *vt = inst->vt;
    if (!vt->observe_attention || n_q <= 0 || s->n_slots == 0) return KVS_OK;
    scratch sc = { 0 };
    int rc = scratch_get(inst, s->n_slots, &sc);
    if (rc) return rc;
    const int P = pool->page_slots;
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t page = mem_slot_page(pool, s, slot), off = slot & (P - 1);
        sc.pos[slot] = mem_page_pos(pool, page)[off];
        sc.score[slot] = mem_page_score(pool, page)[off];
    }
    char err[512] = "";
    rc = vt->observe_attention(inst->state, layer, kv_head, probs, n_q, sc.pos, s->n_slots,
                               sc.score, err, sizeof err);
    if (rc)
        return kvs_error(rc < 0 ? rc : KVS_EINVAL, "policy %s: observe_attention failed: %s",
                         vt->name, err[0] ? err : "no message");
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        if (sc.pos[slot] < 0) continue;
        int32_t page = mem_slot_page(pool, s, slot), off = slot & (P - 1);
        mem_page_score(pool, page)[off] = sc.score[slot];
    }
    return KVS_OK;
}

int pol_wants(const pol_instance *inst, pol_event ev)
{
    const pol_opts *o = &inst->opts;
    if (inst->vt->flags & POL_NO_EVICTION) return 0;
    if (o->ratio < 0.0 && o->budget <= 0) return 0;
    pol_when w = pol_opts_when(o);
    switch (ev) {
    case POL_AT_PREFILL_END: return w == POL_WHEN_PREFILL || w == POL_WHEN_PREFILL_END;
    case POL_AT_PREFILL_CHUNK:
        /* a window-attention policy scores with the prompt's last window: only at its end */
        return w == POL_WHEN_PREFILL && !(inst->vt->flags & POL_WINDOW_ATTENTION);
    case POL_AT_STEP: return w == POL_WHEN_DECODE;
    case POL_AT_PRESSURE: return w == POL_WHEN_PRESSURE;
    }
    return 0;
}

int64_t pol_enforce_seq(pol_instance *inst, mem_pool *pool, mem_seq *seq, int32_t cur_pos,
                        pol_event ev)
{
    int64_t total = 0;
    for (int l = 0; l < seq->n_layers; l++)
        for (int h = 0; h < seq->n_kv_heads; h++) {
            mem_stream *s = mem_seq_stream(seq, l, h);
            int32_t T = ev == POL_AT_PRESSURE ? s->n_live
                        : cur_pos < INT32_MAX ? cur_pos + 1 : cur_pos;
            int32_t n = pol_enforce_stream(inst, pool, s, l, h, cur_pos,
                                           pol_n_keep(&inst->opts, T));
            if (n < 0) return n;
            total += n;
        }
    return total;
}

int64_t pol_on_event(pol_instance *inst, mem_pool *pool, mem_seq *seq, int32_t cur_pos,
                     pol_event ev)
{
    if (!pol_wants(inst, ev)) return 0;
    return pol_enforce_seq(inst, pool, seq, cur_pos, ev);
}
