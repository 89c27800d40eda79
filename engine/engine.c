/* engine.c — engine set-up and the step loop's core: reserve pages, run the forward. */
#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* A backend of the engine's device and format with kv_bytes of KV, and the pool that keeps
 * the bookkeeping of exactly its pages. */
static int make_memory(kvs_engine *e, size_t kv_bytes, kvs_backend **be, mem_pool **pool)
{
    *be = NULL;
    *pool = NULL;
    const engine_opts *o = &e->opts;
    kvs_backend_opts bo = {.page_slots = o->page_slots ? o->page_slots : 16,
                           .kv_bytes = kv_bytes, .kv_format = NULL};
    int rc;
    if (o->kv_dtype && (rc = kv_format_spec_parse(o->kv_dtype, &bo.kv_format, &bo.kv_format_v)))
        return rc;
    if ((rc = kvs_backend_create(o->device, e->m, &bo, be))) return rc;
    if ((rc = mem_pool_create((*be)->page_slots, (*be)->n_pages, pool))) {
        kvs_backend_destroy(*be);
        *be = NULL;
    }
    return rc;
}

int engine_create(const engine_opts *o, kvs_engine **out)
{
    *out = NULL;
    kvs_engine *e = calloc(1, sizeof *e);
    if (!e) return kvs_error(KVS_ENOMEM, "out of memory");
    int rc;
    model_weights wm = MODEL_WEIGHTS_NATIVE;
    const char *ws = o->weights ? o->weights : getenv("KVSIEVE_WEIGHTS");
    kvs_device_kind dev = o->device;
    if (ws && ws[0]) {
        if ((rc = model_weights_parse(ws, &wm))) goto fail;
    } else if (kvs_device_resolve(o->device, &dev) == 0 && dev == KVS_DEVICE_CUDA) {
        wm = MODEL_WEIGHTS_F32; /* the CUDA uploader converts fp32 matrices */
    }
    if (wm == MODEL_WEIGHTS_NATIVE && kvs_device_resolve(o->device, &dev) == 0 &&
        dev == KVS_DEVICE_CUDA) {
        rc = kvs_error(KVS_EUNSUPPORTED, "--weights native runs on the CPU backend only; the "
                       "CUDA backend needs --weights f32");
        goto fail;
    }
    if ((rc = model_load_ex(o->model_path, wm, &e->m))) goto fail;
    if ((rc = tok_create_from_gguf(e->m->gguf, &e->tok))) goto fail;
    if (tok_n_vocab(e->tok) > e->m->cfg.n_vocab) {
        rc = kvs_error(KVS_EFORMAT, "tokenizer has %d tokens but the embedding only %d rows",
                       tok_n_vocab(e->tok), e->m->cfg.n_vocab);
        goto fail;
    }
    e->opts = *o;
    e->opts.model_path = NULL;
    if (o->kv_dtype) { /* keep the canonical name, not the caller's string */
        const kv_format *fk, *fv;
        if ((rc = kv_format_spec_parse(o->kv_dtype, &fk, &fv))) goto fail;
        e->opts.kv_dtype = kv_format_spec_name(fk, fv, e->kv_dtype_name, sizeof e->kv_dtype_name);
    }
    if ((rc = make_memory(e, o->kv_bytes, &e->be, &e->pool))) goto fail;
    e->plan.grow = e->be->plan_grow;
    e->plan.grow_ctx = e->be->plan_grow_ctx;
    *out = e;
    return 0;
fail:
    engine_destroy(e);
    return rc;
}

int engine_set_kv_bytes(kvs_engine *e, size_t kv_bytes)
{
    if (e->n_seqs > 0)
        return kvs_error(KVS_EINVAL, "cannot resize the KV memory while %d sequences hold it",
                         e->n_seqs);
    kvs_backend *be;
    mem_pool *pool;
    int rc = make_memory(e, kv_bytes, &be, &pool);
    if (rc) return rc;
    kvs_plan_free(&e->plan);
    kvs_backend_destroy(e->be);
    mem_pool_destroy(e->pool);
    e->be = be;
    e->pool = pool;
    e->opts.kv_bytes = kv_bytes;
    memset(&e->plan, 0, sizeof e->plan);
    e->plan.grow = be->plan_grow;
    e->plan.grow_ctx = be->plan_grow_ctx;
    return KVS_OK;
}

void engine_destroy(kvs_engine *e)
{
    if (!e) return;
    kvs_plan_free(&e->plan);
    kvs_backend_destroy(e->be);
    mem_pool_destroy(e->pool);
    tok_destroy(e->tok);
    model_free(e->m);
    free(e);
}

const kv_format *engine_kv_format(const kvs_engine *e) { return e->be->kv_format; }

const char *engine_kv_dtype(kvs_engine *e)
{
    return kv_format_spec_name(e->be->kv_format, e->be->kv_format_v, e->kv_dtype_name,
                               sizeof e->kv_dtype_name);
}

size_t engine_kv_bytes_per_token(const kvs_engine *e)
{
    const model_config *c = &e->m->cfg;
    return (size_t)c->n_layers * c->n_kv_heads *
           (e->be->kv_slot_bytes + sizeof(int32_t) + sizeof(float));
}

int engine_read_kv(kvs_engine *e, const int32_t *gslots, int n, float *k, float *v)
{
    return e->be->i->read_kv(e->be, gslots, n, k, v);
}

const fwd_timing *engine_last_timing(const kvs_engine *e) { return e->be->i->last_timing(e->be); }

int engine_seq_create(kvs_engine *e, engine_seq **out)
{
    engine_seq *s = calloc(1, sizeof *s);
    if (!s) return kvs_error(KVS_ENOMEM, "out of memory");
    const model_config *c = &e->m->cfg;
    int rc = mem_seq_create(c->n_layers, c->n_kv_heads, e->next_stream_id, &s->kv);
    if (rc) { free(s); return rc; }
    e->next_stream_id += c->n_layers * c->n_kv_heads;
    e->n_seqs++;
    *out = s;
    return 0;
}

void engine_seq_destroy(kvs_engine *e, engine_seq *s)
{
    if (!s) return;
    if (s->kv) mem_seq_destroy(e->pool, s->kv);
    e->n_seqs--;
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

/* Compact the streams that hold at least a page's worth of holes or spare pages (all with
 * force), on the backend: host bookkeeping plus the K/V copies, in one batch. */
static int compact_seq(kvs_engine *e, engine_seq *s, int force)
{
    const int P = e->pool->page_slots, n_streams = s->kv->n_layers * s->kv->n_kv_heads;
    mem_stream *stack[256], **list = n_streams <= 256 ? stack : malloc((size_t)n_streams * sizeof *list);
    if (!list) return kvs_error(KVS_ENOMEM, "out of memory compacting a sequence");
    int n = 0;
    for (int i = 0; i < n_streams; i++) {
        mem_stream *st = &s->kv->streams[i];
        if (force || st->n_slots - st->n_live >= P) list[n++] = st;
    }
    int64_t moves = n ? e->be->i->compact(e->be, e->pool, list, n) : 0;
    if (list != stack) free(list);
    if (moves < 0) return (int)moves;
    s->compaction_moves += moves;
    return 0;
}

static int run_policy(kvs_engine *e, engine_seq *s, pol_event ev)
{
    if (!s->policy || !pol_wants(s->policy, ev)) return 0;
    int64_t n = pol_enforce_seq(s->policy, e->pool, s->kv, s->n_computed - 1, ev);
    if (n < 0) return (int)n;
    s->evicted += n;
    return n > 0 ? compact_seq(e, s, ev != POL_AT_STEP) : 0;
}

int64_t engine_seq_compact(kvs_engine *e, engine_seq *s)
{
    int64_t before = s->compaction_moves;
    int rc = compact_seq(e, s, 1);
    return rc ? rc : s->compaction_moves - before;
}

int64_t engine_seq_compress(kvs_engine *e, engine_seq *s)
{
    int64_t before = e->pool->n_free;
    int rc = run_policy(e, s, POL_AT_PRESSURE);
    if (rc || (rc = compact_seq(e, s, 1))) return rc;
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
        fs[i].queries = s->queries;
        fs[i].queries_ctx = s->queries_ctx;
        fs[i].observe = s->observe;
        fs[i].observe_ctx = s->observe_ctx;
        fs[i].observe_from = s->observe_from;
        if (s->policy) {
            fs[i].score_keys = pol_score_keys;
            fs[i].score_ctx = s->policy;
            switch (s->policy->dev.kind) { /* the policy's words for it -> the forward's */
            case POL_SCORE_ZERO: fs[i].score_kind = FWD_SCORE_ZERO; break;
            case POL_SCORE_DOT: fs[i].score_kind = FWD_SCORE_DOT; break;
            case POL_SCORE_NEG_NORM: fs[i].score_kind = FWD_SCORE_NEG_NORM; break;
            case POL_SCORE_POS: fs[i].score_kind = FWD_SCORE_POS; break;
            default: fs[i].score_kind = FWD_SCORE_HOST; break;
            }
            fs[i].score_u = s->policy->dev.u;
            if ((s->policy->vt->flags & POL_NEEDS_ATTENTION) && s->observe) {
                rc = kvs_error(KVS_EINVAL, "sequence %d has an attention policy and its own "
                               "attention observer", i);
                goto out;
            }
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
    if ((rc = kvs_plan_build(&e->plan, &e->m->cfg, e->pool, fs, n)) ||
        (rc = e->be->i->run(e->be, e->m, e->pool, &e->plan, fs, logits, &rows)))
        goto out;
    for (int i = 0, r = 0; i < n; i++) {
        engine_seq *s = seqs[i];
        int32_t before = s->n_computed;
        s->n_computed += fs[i].n_tokens;
        if (fs[i].logits == FWD_LOGITS_ALL) { row_of[i] = r; r += fs[i].n_tokens; }
        else row_of[i] = fs[i].logits == FWD_LOGITS_LAST ? r++ : -1;
        if (before < s->n_prompt && s->n_computed >= s->n_prompt &&
            (rc = run_policy(e, s, POL_AT_PREFILL_END)))
            goto out;
        /* a prompt chunk with more to come: evict down to the share of what has been seen,
         * so the prompt's KV never peaks at its full size */
        if (s->n_computed < s->n_prompt && (rc = run_policy(e, s, POL_AT_PREFILL_CHUNK)))
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
    const int P = pool->page_slots;
    const int n_streams = src->kv->n_layers * src->kv->n_kv_heads;
    int64_t need = 0, live = 0;
    for (int i = 0; i < n_streams; i++) {
        need += (src->kv->streams[i].n_live + P - 1) / P;
        live += src->kv->streams[i].n_live;
    }
    if (need > pool->n_free)
        return kvs_error(KVS_ENOMEM, "cloning a sequence needs %lld KV pages but only %d are "
                         "free (raise --kv-memory)", (long long)need, pool->n_free);
    /* the live slots' global ids, copied by the backend at the end */
    int32_t *csrc = malloc((size_t)(live + 1) * sizeof *csrc);
    int32_t *cdst = malloc((size_t)(live + 1) * sizeof *cdst);
    engine_seq *s = NULL;
    int rc = !csrc || !cdst ? kvs_error(KVS_ENOMEM, "out of memory cloning a sequence")
                            : engine_seq_create(e, &s);
    if (rc) goto fail;
    int32_t nc = 0;
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
            int32_t g = mem_gslot(pool, a, slot);
            if (pool->pos[g] < 0) continue;
            int32_t r = mem_stream_append(pool, b, pool->pos[g], pool->score[g]);
            if (r < 0) { rc = r; goto fail; }
            csrc[nc] = g;
            cdst[nc++] = mem_gslot(pool, b, r);
        }
    }
    if ((rc = e->be->i->copy_slots(e->be, pool, csrc, cdst, nc))) goto fail;
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
    const int P = pool->page_slots, d = e->m->cfg.head_dim;
    float *keys = malloc((size_t)P * d * sizeof *keys), *sc = malloc((size_t)P * sizeof *sc);
    int32_t *pos = malloc((size_t)P * sizeof *pos), *gs = malloc((size_t)P * sizeof *gs);
    int rc = 0;
    if (!keys || !sc || !pos || !gs) {
        rc = kvs_error(KVS_ENOMEM, "out of memory rescoring a sequence");
        goto out;
    }
    for (int l = 0; l < s->kv->n_layers && !rc; l++)
        for (int h = 0; h < s->kv->n_kv_heads && !rc; h++) {
            mem_stream *st = mem_seq_stream(s->kv, l, h);
            /* Page by page: read the live keys of a page, score them, write back. */
            for (int32_t p0 = 0; p0 < st->n_slots && !rc; p0 += P) {
                int n = 0;
                for (int32_t slot = p0; slot < p0 + P && slot < st->n_slots; slot++) {
                    int32_t g = mem_gslot(pool, st, slot);
                    if (pool->pos[g] < 0) continue;
                    pos[n] = pool->pos[g];
                    gs[n++] = g;
                }
                if (!n) continue;
                if ((rc = e->be->i->read_kv(e->be, gs, n, keys, NULL))) break;
                pol_score_keys(s->policy, l, h, keys, pos, n, sc);
                for (int i = 0; i < n; i++) pool->score[gs[i]] = sc[i];
                rc = e->be->i->scores_changed(e->be, pool, gs, n);
            }
        }
out:
    free(keys); free(sc); free(pos); free(gs);
    return rc;
}

int64_t engine_seq_run_event(kvs_engine *e, engine_seq *s, pol_event ev)
{
    int64_t before = s->evicted;
    int rc = run_policy(e, s, ev);
    if (rc) return rc;
    return s->evicted - before;
}
