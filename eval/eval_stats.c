/* eval_stats.c — one prefill, many policies. The retrieval harness prefills each context once
 * with a recording probe as the sequence's policy, then clones the full cache for every
 * (policy, ratio) and compresses each clone as if its policy had watched the prefill itself:
 *   - key-scoring policies (streaming, knorm, qfilters, random): their scores depend on the
 *     key alone, so rescoring the stored post-RoPE keys gives the scores the K write gave;
 *   - h2o adds every query's attention into the score: one row, the sum over the prompt's
 *     queries accumulated in query order in float (what h2o_observe does chunk after chunk),
 *     replayed into a zero score gives the same float;
 *   - tova keeps the newest query's row: the row of the prompt's last query;
 *   - snapkv (POL_WINDOW_ATTENTION) wants the rows of its last `window` prompt queries: the
 *     probe keeps those rows and replays them in one call, as the engine would.
 * tests/engine/test_engine_policy.c checks that the victims are the same as running each
 * policy through engine_step. The probe is a pol_instance made here (not registered): no
 * budget, so it never evicts; flags ask the engine for the attention it must record. */
#include "eval/eval.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

struct eval_stats {
    int n_kv_heads, n_streams, n_pos;
    int need_all;      /* sum of every query's row (h2o) */
    int window;        /* rows kept for window policies */
    int win_base;      /* position of the first kept row: max(0, n_pos - window) */
    float *sum;        /* [n_streams][n_pos] */
    float *last;       /* [n_streams][n_pos] */
    float *win;        /* [n_streams][window][n_pos] */
};

int eval_stats_create(kvs_engine *e, int need_all, int window, int n_pos, eval_stats **out)
{
    *out = NULL;
    const model_config *c = &e->m->cfg;
    if (n_pos < 1) return kvs_error(KVS_EINVAL, "attention statistics need a prompt");
    eval_stats *st = calloc(1, sizeof *st);
    if (!st) return kvs_error(KVS_ENOMEM, "out of memory");
    st->n_kv_heads = c->n_kv_heads;
    st->n_streams = c->n_layers * c->n_kv_heads;
    st->n_pos = n_pos;
    st->need_all = need_all;
    st->window = window < 0 ? 0 : window;
    st->win_base = n_pos > st->window ? n_pos - st->window : 0;
    size_t per = (size_t)st->n_streams * n_pos;
    st->sum = need_all ? kvs_calloc(per, sizeof(float)) : NULL;
    st->last = kvs_calloc(per, sizeof(float));
    st->win = st->window ? kvs_calloc(per * st->window, sizeof(float)) : NULL;
    if ((need_all && !st->sum) || !st->last || (st->window && !st->win)) {
        eval_stats_destroy(st);
        return kvs_error(KVS_ENOMEM, "out of memory for attention statistics (%d streams x %d "
                         "positions x %d window rows)", c->n_layers * c->n_kv_heads, n_pos,
                         window);
    }
    *out = st;
    return 0;
}

void eval_stats_destroy(eval_stats *st)
{
    if (!st) return;
    kvs_free(st->sum);
    kvs_free(st->last);
    kvs_free(st->win);
    free(st);
}

static int probe_observe(void *state, int layer, int kv_head, const float *probs, int n_q,
                         const int32_t *slot_pos, int n_slots, float *slot_scores, char *err,
                         size_t err_size)
{
    (void)slot_scores;
    eval_stats *st = state;
    if (n_q <= 0 || n_slots <= 0) return 0;
    /* The observed queries are the step's newest tokens, in position order; the newest of
     * them is the newest key of the stream (keys are written before attention). */
    int32_t max_pos = -1;
    for (int j = 0; j < n_slots; j++)
        if (slot_pos[j] > max_pos) max_pos = slot_pos[j];
    if (max_pos >= st->n_pos) {
        snprintf(err, err_size, "eval probe: position %d is beyond the prompt (%d tokens)",
                 (int)max_pos, st->n_pos);
        return KVS_EINVAL;
    }
    const size_t s = (size_t)layer * st->n_kv_heads + kv_head;
    float *sum = st->sum ? st->sum + s * st->n_pos : NULL;
    float *last = st->last + s * st->n_pos;
    for (int q = 0; q < n_q; q++) {
        const float *p = probs + (size_t)q * n_slots;
        const int32_t qpos = max_pos - (n_q - 1 - q);
        if (sum)
            for (int j = 0; j < n_slots; j++)
                if (slot_pos[j] >= 0) sum[slot_pos[j]] += p[j];
        if (st->win && qpos >= st->win_base) {
            float *row = st->win + (s * st->window + (size_t)(qpos - st->win_base)) * st->n_pos;
            for (int j = 0; j < n_slots; j++)
                if (slot_pos[j] >= 0) row[slot_pos[j]] = p[j];
        }
    }
    const float *p = probs + (size_t)(n_q - 1) * n_slots;
    for (int j = 0; j < n_slots; j++)
        if (slot_pos[j] >= 0) last[slot_pos[j]] = p[j];
    return 0;
}

static const pol_vtable PROBE_ALL = {
    .version = POL_API_VERSION, .name = "eval-probe", .description = "eval: records attention",
    .flags = POL_NEEDS_ATTENTION, .observe_attention = probe_observe};
static const pol_vtable PROBE_WINDOW = {
    .version = POL_API_VERSION, .name = "eval-probe-window",
    .description = "eval: records the last window's attention",
    .flags = POL_NEEDS_ATTENTION | POL_WINDOW_ATTENTION, .observe_attention = probe_observe};

int eval_stats_attach(kvs_engine *e, engine_seq *s, eval_stats *st)
{
    (void)e;
    pol_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return kvs_error(KVS_ENOMEM, "out of memory");
    /* Everything needed (h2o): every query. Only window rows and the last row (tova, snapkv):
     * the engine's window mode, which observes only the last `window` prompt queries. */
    inst->vt = st->need_all ? &PROBE_ALL : &PROBE_WINDOW;
    inst->state = st;
    pol_opts_default(&inst->opts);
    inst->opts.window = st->window > 0 ? st->window : 1;
    inst->opts.when = POL_WHEN_PREFILL;
    pol_instance_destroy(s->policy);
    s->policy = inst;
    return 0;
}

void eval_stats_detach(engine_seq *s)
{
    pol_instance_destroy(s->policy);
    s->policy = NULL;
}

/* Feed one stream of the clone: rows[n_q][n_slots] from recorded per-position rows. */
static int replay_stream(kvs_engine *e, engine_seq *c, int l, int h, const float *const *src,
                         int n_q, int n_pos)
{
    mem_pool *pool = e->pool;
    mem_stream *s = mem_seq_stream(c->kv, l, h);
    if (s->n_slots == 0) return 0;
    const int P = pool->page_slots;
    float *rows = malloc((size_t)n_q * s->n_slots * sizeof *rows);
    if (!rows) return kvs_error(KVS_ENOMEM, "out of memory replaying attention");
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t page = mem_slot_page(pool, s, slot);
        int32_t pos = mem_page_pos(pool, page)[slot & (P - 1)];
        for (int q = 0; q < n_q; q++)
            rows[(size_t)q * s->n_slots + slot] = pos >= 0 && pos < n_pos ? src[q][pos] : 0.0f;
    }
    int rc = pol_observe_stream(c->policy, pool, s, l, h, rows, n_q);
    free(rows);
    return rc;
}

int64_t eval_seq_compress_like(kvs_engine *e, engine_seq *clone, const eval_stats *st)
{
    pol_instance *inst = clone->policy;
    if (!inst) return 0;
    int rc = engine_seq_rescore(e, clone);
    if (rc) return rc;
    const unsigned fl = inst->vt->flags;
    if ((fl & POL_NEEDS_ATTENTION) && inst->vt->observe_attention) {
        const char *name = inst->vt->name;
        int mode; /* 0 sum, 1 last row, 2 window rows */
        if (fl & POL_WINDOW_ATTENTION) mode = 2;
        else if (!strcmp(name, "h2o")) mode = 0;
        else if (!strcmp(name, "tova")) mode = 1;
        else
            return kvs_error(KVS_EUNSUPPORTED, "eval cannot replay the prefill attention for "
                             "policy %s (it knows h2o, tova and window policies such as snapkv)",
                             name);
        if (!st) return kvs_error(KVS_EINVAL, "policy %s needs recorded attention", name);
        if (mode == 0 && !st->sum)
            return kvs_error(KVS_EINVAL, "h2o needs every query's attention recorded");
        int n_q = 1;
        if (mode == 2) {
            int w = inst->opts.window > 0 ? inst->opts.window : 1;
            n_q = KVS_MIN(w, st->n_pos);
            if (n_q > st->n_pos - st->win_base)
                return kvs_error(KVS_EINVAL, "policy %s wants %d window rows; %d recorded", name,
                                 n_q, st->n_pos - st->win_base);
        }
        const float *src[1024];
        if (n_q > 1024) return kvs_error(KVS_ERANGE, "window of %d rows is too large", n_q);
        for (int l = 0; l < clone->kv->n_layers; l++)
            for (int h = 0; h < clone->kv->n_kv_heads; h++) {
                size_t s = (size_t)l * st->n_kv_heads + h;
                if (mode == 0) src[0] = st->sum + s * st->n_pos;
                else if (mode == 1) src[0] = st->last + s * st->n_pos;
                else
                    for (int q = 0; q < n_q; q++) {
                        int row = st->n_pos - n_q + q - st->win_base;
                        src[q] = st->win + (s * st->window + (size_t)row) * st->n_pos;
                    }
                if ((rc = replay_stream(e, clone, l, h, src, n_q, st->n_pos))) return rc;
            }
    }
    return engine_seq_run_event(e, clone, POL_AT_PREFILL_END);
}
