/* engine.c — engine set-up and the step loop's core: reserve pages, run the forward. */
#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

int engine_create(const engine_opts *o, kvs_engine **out)
{
    *out = NULL;
    kvs_engine *e = calloc(1, sizeof *e);
    if (!e) return kvs_error(KVS_ENOMEM, "out of memory");
    int rc;
    if ((rc = model_load(o->model_path, &e->m))) goto fail;
    if ((rc = tok_create_from_gguf(e->m->gguf, &e->tok))) goto fail;
    if (tok_n_vocab(e->tok) > e->m->cfg.n_vocab) {
        rc = kvs_error(KVS_EFORMAT, "tokenizer has %d tokens but the embedding only %d rows",
                       tok_n_vocab(e->tok), e->m->cfg.n_vocab);
        goto fail;
    }
    int P = o->page_slots ? o->page_slots : 16;
    /* CUDA backend (device.h): K/V pages live in one device allocation; the host keeps the
     * block manager's bookkeeping in a metadata pool of as many pages. */
    kvs_device_kind dev;
    if ((rc = kvs_device_resolve(o->device, &dev))) goto fail;
    if (dev == KVS_DEVICE_CUDA) {
        /* The CUDA forward implements the original llama computation only (issue 12: a model
         * that needs more is refused here rather than run wrong). */
        char why[128];
        if (model_needs_extensions(e->m, why, sizeof why)) {
            rc = kvs_error(KVS_EUNSUPPORTED, "%s: the CUDA backend does not implement what this "
                           "'%s' model needs (%s); use --device cpu", o->model_path,
                           e->m->cfg.arch->name, why);
            goto fail;
        }
        if ((rc = fwd_cuda_create(e->m, P, o->kv_bytes, 0.0, &e->cuda))) goto fail;
        if ((rc = kvs_meta_pool_create(P, e->m->cfg.head_dim, fwd_cuda_n_pages(e->cuda),
                                       &e->pool))) goto fail;
        if ((rc = fwd_create(e->m, &e->fwd))) goto fail;
        *out = e;
        return 0;
    }
    size_t bytes = o->kv_bytes ? o->kv_bytes : ((size_t)1 << 30);
    int32_t pages = mem_pool_pages_for_bytes(P, e->m->cfg.head_dim, bytes);
    if (pages < 0) { rc = pages; goto fail; }
    if (pages < e->m->cfg.n_layers * e->m->cfg.n_kv_heads) {
        rc = kvs_error(KVS_EINVAL, "KV memory of %zu bytes holds %d pages; one token of this "
                       "model needs %d (one page per layer and KV head)", bytes, pages,
                       e->m->cfg.n_layers * e->m->cfg.n_kv_heads);
        goto fail;
    }
    if ((rc = mem_pool_create(P, e->m->cfg.head_dim, pages, &e->pool))) goto fail;
    if ((rc = fwd_create(e->m, &e->fwd))) goto fail;
    *out = e;
    return 0;
fail:
    engine_destroy(e);
    return rc;
}

void engine_destroy(kvs_engine *e)
{
    if (!e) return;
    fwd_destroy(e->fwd);
    fwd_cuda_destroy(e->cuda); /* CUDA backend; NULL on the CPU backend */
    mem_pool_destroy(e->pool);
    tok_destroy(e->tok);
    model_free(e->m);
    free(e);
}

int engine_seq_create(kvs_engine *e, engine_seq **out)
{
    engine_seq *s = calloc(1, sizeof *s);
    if (!s) return kvs_error(KVS_ENOMEM, "out of memory");
    const model_config *c = &e->m->cfg;
    int rc = mem_seq_create(c->n_layers, c->n_kv_heads, e->next_stream_id, &s->kv);
    if (rc) { free(s); return rc; }
    e->next_stream_id += c->n_layers * c->n_kv_heads;
    *out = s;
    return 0;
}

void engine_seq_destroy(kvs_engine *e, engine_seq *s)
{
    if (!s) return;
    if (s->kv) mem_seq_destroy(e->pool, s->kv);
    pol_instance_destroy(s->policy);
    free(s->tokens);
    free(s);
}

int engine_seq_push(kvs_engine *e, engine_seq *s, const int32_t *ids, int32_t n)
{
    const model_config *c = &e->m->cfg;
    if (n < 0) return kvs_error(KVS_EINVAL, "negative token count");
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->n_vocab)
            return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary [0, %d)",
                             ids[i], c->n_vocab);
    if ((int64_t)s->n_tokens + n > c->n_ctx)
        return kvs_error(KVS_ERANGE, "sequence would have %lld tokens; the model's context is %d",
                         (long long)s->n_tokens + n, c->n_ctx);
    if (s->n_tokens + n > s->cap_tokens) {
        int32_t cap = s->cap_tokens ? s->cap_tokens : 64;
        while (cap < s->n_tokens + n) cap *= 2;
        int32_t *t = realloc(s->tokens, (size_t)cap * sizeof *t);
        if (!t) return kvs_error(KVS_ENOMEM, "out of memory");
        s->tokens = t;
        s->cap_tokens = cap;
    }
    memcpy(s->tokens + s->n_tokens, ids, (size_t)n * sizeof *ids);
    s->n_tokens += n;
    return 0;
}

pol_model_info engine_model_info(const kvs_engine *e)
{
    const model_config *c = &e->m->cfg;
    return (pol_model_info){c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->name};
}

int engine_seq_set_policy(kvs_engine *e, engine_seq *s, const char *name, const char *args)
{
    pol_model_info mi = engine_model_info(e);
    pol_instance *inst;
    int rc = pol_instance_create(name, args, &mi, &inst);
    if (rc) return rc;
    pol_instance_destroy(s->policy);
    s->policy = inst;
    return 0;
}

void engine_seq_mark_prompt(engine_seq *s) { s->n_prompt = s->n_tokens; }

int64_t engine_seq_pages(const engine_seq *s)
{
    int64_t n = 0;
    for (int i = 0; i < s->kv->n_layers * s->kv->n_kv_heads; i++) n += s->kv->streams[i].n_pages;
    return n;
}

/* Compact the streams that hold at least a page's worth of holes or spare pages. */
static void compact_seq(kvs_engine *e, engine_seq *s, int force)
{
    const int P = e->pool->page_slots;
    if (e->cuda) { /* CUDA backend: host bookkeeping, then one batched device copy */
        int n = 0, n_streams = s->kv->n_layers * s->kv->n_kv_heads;
        mem_stream **list = malloc((size_t)n_streams * sizeof *list);
        if (!list) return; /* compaction is an optimisation: skip it */
        for (int i = 0; i < n_streams; i++) {
            mem_stream *st = &s->kv->streams[i];
            if (force || st->n_slots - st->n_live >= P) list[n++] = st;
        }
        int64_t moves = n ? kvs_cuda_compact_streams(e->cuda, e->pool, list, n) : 0;
        if (moves > 0) s->compaction_moves += moves;
        free(list);
        return;
    }
    for (int i = 0; i < s->kv->n_layers * s->kv->n_kv_heads; i++) {
        mem_stream *st = &s->kv->streams[i];
        if (force || st->n_slots - st->n_live >= P)
            s->compaction_moves += mem_stream_compact(e->pool, st);
    }
}

static int run_policy(kvs_engine *e, engine_seq *s, pol_event ev)
{
    if (!s->policy || !pol_wants(s->policy, ev)) return 0;
    int64_t n = pol_enforce_seq(s->policy, e->pool, s->kv, s->n_computed - 1, ev);
    if (n < 0) return (int)n;
    s->evicted += n;
    if (n > 0) compact_seq(e, s, ev != POL_AT_STEP);
    return 0;
}

int64_t engine_seq_compact(kvs_engine *e, engine_seq *s)
{
    int64_t before = s->compaction_moves;
    compact_seq(e, s, 1);
    return s->compaction_moves - before;
}

int64_t engine_seq_compress(kvs_engine *e, engine_seq *s)
{
    int64_t before = e->pool->n_free;
    int rc = run_policy(e, s, POL_AT_PRESSURE);
    if (rc) return rc;
    compact_seq(e, s, 1);
    return e->pool->n_free - before;
}

static int observe_hook(void *ctx, mem_pool *pool, mem_stream *s, int layer, int kv_head,
                        const float *probs, int n_q)
{
    return pol_observe_stream(ctx, pool, s, layer, kv_head, probs, n_q);
}

int32_t engine_step_tokens(const engine_seq *s, int32_t limit)
{
    int32_t todo = s->n_tokens - s->n_computed;
    if (todo > limit) todo = limit;
    /* A chunk never crosses the end of the prompt, so prefill-time compression sees
     * exactly the prompt (the question of a retrieval task comes after it). */
    if (s->n_computed < s->n_prompt && s->n_computed + todo > s->n_prompt)
        todo = s->n_prompt - s->n_computed;
    /* SnapKV-style policies need their whole observation window in the last prefill
     * chunk: end the chunk before the window rather than inside it. */
    if (s->policy && (s->policy->vt->flags & POL_WINDOW_ATTENTION) &&
        s->n_computed + todo < s->n_prompt) {
        int32_t w = s->policy->opts.window > 0 ? s->policy->opts.window : 1;
        int32_t win_start = s->n_prompt - w;
        if (s->n_computed + todo > win_start && win_start > s->n_computed)
            todo = win_start - s->n_computed;
    }
    return todo;
}

int engine_step(kvs_engine *e, engine_seq **seqs, int n, int32_t max_chunk, float **logits,
                int *row_of)
{
    if (n <= 0) return kvs_error(KVS_EINVAL, "empty step");
    if (max_chunk < 1) return kvs_error(KVS_EINVAL, "chunk size must be >= 1");
    int32_t stack_lim[64];
    int32_t *lim = n <= 64 ? stack_lim : malloc((size_t)n * sizeof *lim);
    if (!lim) return kvs_error(KVS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) lim[i] = max_chunk;
    int rc = engine_step_limits(e, seqs, n, lim, logits, row_of);
    if (lim != stack_lim) free(lim);
    return rc;
}

int engine_step_limits(kvs_engine *e, engine_seq **seqs, int n, const int32_t *limits,
                       float **logits, int *row_of)
{
    if (n <= 0) return kvs_error(KVS_EINVAL, "empty step");
    fwd_seq stack_fs[64];
    fwd_seq *fs = n <= 64 ? stack_fs : malloc((size_t)n * sizeof *fs);
    if (!fs) return kvs_error(KVS_ENOMEM, "out of memory");
    int rc = 0;
    /* Check the whole step fits before taking any page. */
    int64_t need = 0;
    for (int i = 0; i < n; i++) {
        engine_seq *s = seqs[i];
        if (s->n_tokens - s->n_computed < 1) { rc = kvs_error(KVS_EINVAL, "sequence %d has nothing to compute", i); goto out; }
        if (limits[i] < 1) { rc = kvs_error(KVS_EINVAL, "sequence %d: limit must be >= 1", i); goto out; }
        int32_t todo = engine_step_tokens(s, limits[i]);
        need += mem_seq_pages_needed(e->pool, s->kv, todo);
        fs[i] = (fwd_seq){
            .kv = s->kv, .tokens = s->tokens + s->n_computed, .n_tokens = todo,
            .pos0 = s->n_computed,
            .logits = s->logits_all ? FWD_LOGITS_ALL
                      : s->n_computed + todo == s->n_tokens ? FWD_LOGITS_LAST : FWD_LOGITS_NONE};
        if (s->policy) {
            fs[i].score_keys = pol_score_keys;
            fs[i].score_ctx = s->policy;
            if (s->policy->vt->flags & POL_NEEDS_ATTENTION) {
                fs[i].observe = observe_hook;
                fs[i].observe_ctx = s->policy;
                /* Window-attention policies (SnapKV) look once, with the last `window` prompt
                 * queries; the others with every query. */
                fs[i].observe_from = 0;
                if (s->policy->vt->flags & POL_WINDOW_ATTENTION) {
                    int32_t w = s->policy->opts.window > 0 ? s->policy->opts.window : 1;
                    fs[i].observe_from = s->n_prompt - w;
                    if (s->n_computed >= s->n_prompt) fs[i].observe = NULL;
                }
            }
        }
    }
    if (need > e->pool->n_free) {
        rc = kvs_error(KVS_ENOMEM, "step needs %lld KV pages but only %d are free",
                       (long long)need, e->pool->n_free);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if ((rc = mem_seq_reserve(e->pool, seqs[i]->kv, fs[i].n_tokens))) goto out;
    int rows;
    rc = e->cuda ? fwd_cuda(e->cuda, e->m, e->pool, fs, n, logits, &rows) /* CUDA backend */
                 : fwd_cpu(e->fwd, e->m, e->pool, fs, n, logits, &rows);
    if (rc) goto out;
    for (int i = 0, r = 0; i < n; i++) {
        engine_seq *s = seqs[i];
        int32_t before = s->n_computed;
        s->n_computed += fs[i].n_tokens;
        if (fs[i].logits == FWD_LOGITS_ALL) { row_of[i] = r; r += fs[i].n_tokens; }
        else row_of[i] = fs[i].logits == FWD_LOGITS_LAST ? r++ : -1;
        if (before < s->n_prompt && s->n_computed >= s->n_prompt &&
            (rc = run_policy(e, s, POL_AT_PREFILL_END)))
            goto out;
        if ((rc = run_policy(e, s, POL_AT_STEP))) goto out;
    }
out:
    if (fs != stack_fs) free(fs);
    return rc;
}

/* ---- evaluation helpers (kvsieve eval: one shared prefill, many policies) ------------------ */

int engine_seq_clone(kvs_engine *e, const engine_seq *src, engine_seq **out)
{
    *out = NULL;
    mem_pool *pool = e->pool;
    const int P = pool->page_slots, d = pool->head_dim;
    const int n_streams = src->kv->n_layers * src->kv->n_kv_heads;
    int64_t need = 0;
    for (int i = 0; i < n_streams; i++)
        need += (src->kv->streams[i].n_live + P - 1) / P;
    if (need > pool->n_free)
        return kvs_error(KVS_ENOMEM, "cloning a sequence needs %lld KV pages but only %d are "
                         "free (raise --kv-memory)", (long long)need, pool->n_free);
    engine_seq *s = NULL;
    /* CUDA backend: the live slots' global ids, copied on the device at the end */
    int32_t *csrc = NULL, *cdst = NULL, nc = 0;
    if (e->cuda) {
        int64_t live = 0;
        for (int i = 0; i < n_streams; i++) live += src->kv->streams[i].n_live;
        csrc = malloc((size_t)(live + 1) * sizeof *csrc);
        cdst = malloc((size_t)(live + 1) * sizeof *cdst);
        if (!csrc || !cdst) {
            free(csrc); free(cdst);
            return kvs_error(KVS_ENOMEM, "out of memory cloning a sequence");
        }
    }
    int rc = engine_seq_create(e, &s);
    if (rc) { free(csrc); free(cdst); return rc; }
    if (src->n_tokens > 0 && (rc = engine_seq_push(e, s, src->tokens, src->n_tokens))) goto fail;
    s->n_computed = src->n_computed;
    s->n_prompt = src->n_prompt;
    s->evicted = src->evicted;
    s->compaction_moves = src->compaction_moves;
    s->logits_all = src->logits_all;
    /* Live slots in slot order: the copy is dense (holes are not copied). */
    for (int i = 0; i < n_streams; i++) {
        const mem_stream *a = &src->kv->streams[i];
        mem_stream *b = &s->kv->streams[i];
        if ((rc = mem_stream_reserve(pool, b, a->n_live))) goto fail;
        for (int32_t slot = 0; slot < a->n_slots; slot++) {
            int32_t page = mem_slot_page(pool, a, slot), off = slot & (P - 1);
            int32_t pos = mem_page_pos(pool, page)[off];
            if (pos < 0) continue;
            int32_t r;
            if (e->cuda) { /* CUDA backend: bookkeeping here, K/V below */
                r = kvs_stream_take_slot(pool, b, pos, mem_page_score(pool, page)[off]);
                if (r >= 0) { csrc[nc] = page * P + off; cdst[nc++] = kvs_gslot(pool, b, r); }
            } else {
                r = mem_stream_append(pool, b, pos, mem_page_k(pool, page) + (size_t)off * d,
                                      mem_page_v(pool, page) + (size_t)off * d,
                                      mem_page_score(pool, page)[off]);
            }
            if (r < 0) { rc = r; goto fail; }
        }
    }
    if (e->cuda && (rc = kvs_cuda_copy_slots(e->cuda, csrc, cdst, nc))) goto fail;
    free(csrc);
    free(cdst);
    *out = s;
    return 0;
fail:
    free(csrc);
    free(cdst);
    engine_seq_destroy(e, s);
    return rc;
}

int engine_seq_rescore(kvs_engine *e, engine_seq *s)
{
    if (!s->policy) return 0;
    mem_pool *pool = e->pool;
    const int P = pool->page_slots, d = pool->head_dim;
    float *keys = malloc((size_t)P * d * sizeof *keys), *sc = malloc((size_t)P * sizeof *sc);
    int32_t *pos = malloc((size_t)P * sizeof *pos), *slots = malloc((size_t)P * sizeof *slots);
    if (!keys || !sc || !pos || !slots) {
        free(keys); free(sc); free(pos); free(slots);
        return kvs_error(KVS_ENOMEM, "out of memory rescoring a sequence");
    }
    for (int l = 0; l < s->kv->n_layers; l++)
        for (int h = 0; h < s->kv->n_kv_heads; h++) {
            mem_stream *st = mem_seq_stream(s->kv, l, h);
            /* Page by page: gather the live keys of a page, score them, write back. */
            for (int32_t p0 = 0; p0 < st->n_slots; p0 += P) {
                int32_t page = st->pages[p0 >> pool->page_shift];
                const int32_t *pp = mem_page_pos(pool, page);
                const float *K = e->cuda ? NULL : mem_page_k(pool, page); /* CUDA: device */
                int n = 0;
                for (int32_t off = 0; off < P && p0 + off < st->n_slots; off++) {
                    if (pp[off] < 0) continue;
                    if (!e->cuda)
                        memcpy(keys + (size_t)n * d, K + (size_t)off * d, (size_t)d * sizeof *keys);
                    pos[n] = pp[off];
                    slots[n++] = off;
                }
                if (!n) continue;
                int rc = 0;
                if (e->cuda) { /* CUDA backend: the keys come from the device */
                    for (int i = 0; i < n; i++) slots[i] += page * P; /* global slots */
                    rc = kvs_cuda_read_keys(e->cuda, slots, n, keys);
                    for (int i = 0; i < n; i++) slots[i] -= page * P;
                }
                if (rc) {
                    free(keys); free(sc); free(pos); free(slots);
                    return rc;
                }
                pol_score_keys(s->policy, l, h, keys, pos, n, sc);
                float *score = mem_page_score(pool, page);
                for (int i = 0; i < n; i++) score[slots[i]] = sc[i];
                if (e->cuda) { /* keep the device's score mirror in step */
                    for (int i = 0; i < n; i++) slots[i] += page * P;
                    rc = kvs_cuda_write_scores(e->cuda, slots, sc, n);
                    if (rc) {
                        free(keys); free(sc); free(pos); free(slots);
                        return rc;
                    }
                }
            }
        }
    free(keys); free(sc); free(pos); free(slots);
    return 0;
}

int64_t engine_seq_run_event(kvs_engine *e, engine_seq *s, pol_event ev)
{
    int64_t before = s->evicted;
    int rc = run_policy(e, s, ev);
    if (rc) return rc;
    return s->evicted - before;
}
