/* plan.c — building the step plan on the host (plan.h) and finishing a step: scores, queries
 * and attention statistics handed back to the policies. Plain C, used by every backend. */
#include "plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* ---- filter cache (KVS_SCORE_DOT) -------------------------------------------------------------- */

void kvs_filter_cache_init(kvs_filter_cache *fc, const model_config *c)
{
    memset(fc, 0, sizeof *fc);
    fc->n_layers = c->n_layers;
    fc->n_kv_heads = c->n_kv_heads;
    fc->head_dim = c->head_dim;
}

void kvs_filter_cache_deinit(kvs_filter_cache *fc)
{
    for (int i = 0; i < KVS_MAX_FILTER_SETS; i++) free(fc->u[i]);
    memset(fc, 0, sizeof *fc);
}

/* The set holding exactly these filters, else a free set, else one the plan does not use
 * (refilled); -1 when every set is in use by this plan. */
static int set_for(kvs_filter_cache *fc, const float *u)
{
    const size_t n_u = (size_t)fc->n_layers * fc->n_kv_heads * fc->head_dim;
    for (int i = 0; i < fc->n; i++)
        if (fc->u[i] && !memcmp(fc->u[i], u, n_u * sizeof *u)) return i;
    int set = -1;
    for (int i = 0; i < KVS_MAX_FILTER_SETS && set < 0; i++)
        if (!fc->u[i]) set = i;
    for (int i = 0; i < KVS_MAX_FILTER_SETS && set < 0; i++)
        if (!fc->used[i]) set = i;
    if (set < 0) return -1;
    if (!fc->u[set] && !(fc->u[set] = malloc(n_u * sizeof *u))) return -1;
    memcpy(fc->u[set], u, n_u * sizeof *u);
    fc->dirty[set] = 1;
    if (set >= fc->n) fc->n = set + 1;
    return set;
}

int kvs_filter_cache_assign(kvs_filter_cache *fc, kvs_plan *p)
{
    memset(fc->used, 0, sizeof fc->used);
    int extra = 0;
    for (int s = 0; s < p->S; s++) {
        kvs_seq_info *si = &p->seq[s];
        if (si->score_kind != KVS_SCORE_DOT) continue;
        int set = p->score_u[s] ? set_for(fc, p->score_u[s]) : -1;
        if (set >= 0) {
            si->filter_set = set;
            fc->used[set] = 1;
            continue;
        }
        /* no set left: score this sequence on the host (its rows go after the others) */
        si->score_kind = KVS_SCORE_HOST;
        si->filter_set = -1;
        si->key_stash = p->n_key_stash + extra;
        extra += si->n_tok;
    }
    p->n_key_stash += extra;
    return KVS_OK;
}

/* ---- the step plan ------------------------------------------------------------------------- */

/* Query tokens per prefill tile: the kernel's rows (64 for hd <= 64, else 32) / G. */
static int tile_tokens(int hd, int G)
{
    int rows = hd <= 64 ? 64 : 32;
    return rows / G > 0 ? rows / G : 1;
}

void kvs_plan_free(kvs_plan *p)
{
    free(p->score_u);
    p->score_u = NULL;
    p->score_u_cap = 0;
    if (p->grow) { if (p->block) p->grow(p->grow_ctx, p->block, 0); }
    else free(p->block);
    p->block = NULL;
    p->block_cap = 0;
}

/* Offsets of the plan's arrays in its block (16-byte aligned). */
typedef struct { size_t tok, pos, tok_seq, rows, seq, stream, slot_map, dec, tiles, obs, pt,
                 marks, total; } plan_layout;

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

static plan_layout layout_of(const kvs_plan *p)
{
    plan_layout o;
    size_t at = 0;
#define PUT(f, bytes) do { o.f = at; at = align16(at + (bytes)); } while (0)
    PUT(tok, (size_t)p->T * 4);
    PUT(pos, (size_t)p->T * 4);
    PUT(tok_seq, (size_t)p->T * 4);
    PUT(rows, (size_t)p->R * 4);
    PUT(seq, (size_t)p->S * sizeof(kvs_seq_info));
    PUT(stream, (size_t)p->S * p->L * p->Hkv * sizeof(kvs_stream_info));
    PUT(slot_map, (size_t)p->L * p->T * p->Hkv * 4);
    PUT(dec, (size_t)p->n_dec * 4);
    PUT(tiles, (size_t)p->n_tiles * sizeof(kvs_tile));
    PUT(obs, (size_t)p->n_obs * 4);
    /* the two arrays whose lengths change from step to step come last, so that a decode step
     * of the same shape puts every other array at the same offset (CUDA graphs) */
    PUT(pt, (size_t)p->n_pt * 4);
    PUT(marks, (size_t)p->n_marks * 4);
#undef PUT
    o.total = at;
    return o;
}

static void point_arrays(kvs_plan *p, char *base, const plan_layout *o)
{
    p->tok = (int32_t *)(base + o->tok);
    p->pos = (int32_t *)(base + o->pos);
    p->tok_seq = (int32_t *)(base + o->tok_seq);
    p->rows = (int32_t *)(base + o->rows);
    p->seq = (kvs_seq_info *)(base + o->seq);
    p->stream = (kvs_stream_info *)(base + o->stream);
    p->pt = (int32_t *)(base + o->pt);
    p->slot_map = (int32_t *)(base + o->slot_map);
    p->marks = (int32_t *)(base + o->marks);
    p->dec = (int32_t *)(base + o->dec);
    p->tiles = (kvs_tile *)(base + o->tiles);
    p->obs = (int32_t *)(base + o->obs);
}

/* Grow the block to `bytes` (contents are rebuilt each step, so nothing is kept). */
static int plan_reserve(kvs_plan *p, size_t bytes)
{
    if (bytes <= p->block_cap && p->block) return KVS_OK;
    size_t cap = KVS_MAX(bytes, 2 * p->block_cap);
    cap = KVS_MAX(cap, (size_t)4096);
    void *b;
    if (p->grow) {
        if (p->block) p->grow(p->grow_ctx, p->block, 0);
        p->block = NULL;
        p->block_cap = 0;
        b = p->grow(p->grow_ctx, NULL, cap);
    } else {
        free(p->block);
        p->block = NULL;
        p->block_cap = 0;
        b = malloc(cap);
    }
    if (!b) return kvs_error(KVS_ENOMEM, "cannot allocate a step plan of %zu bytes", cap);
    p->block = b;
    p->block_cap = cap;
    return KVS_OK;
}

void kvs_plan_rebase(const kvs_plan *p, void *base, kvs_plan *out)
{
    *out = *p;
    plan_layout o = layout_of(p);
    point_arrays(out, base, &o);
    out->block = base;
}

/* Sizes of the plan for this batch (no validation, no changes). */
static void plan_sizes(kvs_plan *p, const model_config *c, const mem_pool *pool,
                       const fwd_seq *seqs, int n_seqs)
{
    const int L = c->n_layers, Hkv = c->n_kv_heads, P = pool->page_slots;
    const int G = c->n_heads / c->n_kv_heads;
    p->S = n_seqs;
    p->L = L;
    p->Hq = c->n_heads;
    p->Hkv = Hkv;
    p->hd = c->head_dim;
    p->P = P;
    p->tile_tokens = tile_tokens(c->head_dim, G);
    p->T = p->R = p->n_pt = p->n_marks = p->n_dec = p->n_tiles = p->n_obs = 0;
    p->n_key_stash = p->n_query_stash = 0;
    p->n_probs = 0;
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq *q = &seqs[s];
        p->T += q->n_tokens;
        p->R += q->logits == FWD_LOGITS_ALL ? q->n_tokens : q->logits == FWD_LOGITS_LAST;
        for (int i = 0; i < L * Hkv; i++) {
            const mem_stream *st = &q->kv->streams[i];
            int32_t after = st->n_slots + KVS_MAX(0, q->n_tokens - st->n_holes);
            p->n_pt += (after + P - 1) / P;
            p->n_marks += st->n_holes;
        }
        if (q->n_tokens <= KVS_DECODE_MAX_TOKENS) p->n_dec += q->n_tokens;
        else p->n_tiles += (q->n_tokens + p->tile_tokens - 1) / p->tile_tokens;
        if (q->observe) {
            int32_t i0 = q->observe_from - q->pos0;
            i0 = i0 < 0 ? 0 : i0 > q->n_tokens ? q->n_tokens : i0;
            p->n_obs += q->n_tokens - i0;
        }
    }
}

int kvs_plan_build(kvs_plan *p, const model_config *c, mem_pool *pool, const fwd_seq *seqs,
                   int n_seqs)
{
    const int Hq = c->n_heads, Hkv = c->n_kv_heads, G = Hq / Hkv;
    const int L = c->n_layers, P = pool->page_slots;
    if (n_seqs <= 0) return kvs_error(KVS_EINVAL, "empty batch");
    if (G > KVS_PLAN_MAX_GROUP)
        return kvs_error(KVS_EUNSUPPORTED, "GQA group of %d query heads is larger than %d",
                         G, KVS_PLAN_MAX_GROUP);
    int64_t T = 0;
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq *q = &seqs[s];
        if (q->n_tokens < 1) return kvs_error(KVS_EINVAL, "sequence %d has no tokens", s);
        if (q->pos0 < 0 || q->pos0 > INT32_MAX - q->n_tokens)
            return kvs_error(KVS_EINVAL, "sequence %d: bad position %d", s, q->pos0);
        if (!q->kv || q->kv->n_layers != L || q->kv->n_kv_heads != Hkv)
            return kvs_error(KVS_EINVAL, "sequence %d: KV streams do not match the model", s);
        for (int i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= c->n_vocab)
                return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary [0, %d)",
                                 q->tokens[i], c->n_vocab);
        for (int i = 0; i < L * Hkv; i++)
            if (mem_stream_pages_needed(pool, &q->kv->streams[i], q->n_tokens))
                return kvs_error(KVS_ENOMEM, "sequence %d: KV stream has no room for %d "
                                 "tokens (reserve pages first)", s, q->n_tokens);
        T += q->n_tokens;
        if (T > INT32_MAX / ((int64_t)L * Hkv > 0 ? (int64_t)L * Hkv : 1))
            return kvs_error(KVS_EINVAL, "batch too large");
    }
    /* Two sequences sharing streams would be assigned the same slots twice. */
    for (int a = 0; a < n_seqs; a++)
        for (int b = a + 1; b < n_seqs; b++)
            if (seqs[a].kv == seqs[b].kv)
                return kvs_error(KVS_EINVAL, "sequences %d and %d share their KV streams", a, b);

    plan_sizes(p, c, pool, seqs, n_seqs);
    plan_layout o = layout_of(p);
    int rc = plan_reserve(p, o.total);
    if (rc) return rc;
    p->block_size = o.total;
    point_arrays(p, p->block, &o);
    if (p->score_u_cap < n_seqs) {
        const float **u = realloc(p->score_u, (size_t)n_seqs * sizeof *u);
        if (!u) return kvs_error(KVS_ENOMEM, "out of memory building a step plan");
        p->score_u = u;
        p->score_u_cap = n_seqs;
    }

    int32_t t = 0, r = 0, pt = 0, mk = 0, dec = 0, tl = 0, ob = 0, max_pos = 0, max_dec = 0;
    int32_t kst = 0, qst = 0;
    int64_t probs = 0;
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq *q = &seqs[s];
        kvs_seq_info *si = &p->seq[s];
        memset(si, 0, sizeof *si);
        si->tok0 = t;
        si->n_tok = q->n_tokens;
        si->score_kind = !q->score_keys                    ? KVS_SCORE_ZERO
                         : q->score_kind == FWD_SCORE_ZERO     ? KVS_SCORE_ZERO
                         : q->score_kind == FWD_SCORE_DOT      ? KVS_SCORE_DOT
                         : q->score_kind == FWD_SCORE_NEG_NORM ? KVS_SCORE_NEG_NORM
                         : q->score_kind == FWD_SCORE_POS      ? KVS_SCORE_POS
                                                               : KVS_SCORE_HOST;
        if (si->score_kind == KVS_SCORE_DOT && !q->score_u) si->score_kind = KVS_SCORE_HOST;
        si->filter_set = -1;
        p->score_u[s] = si->score_kind == KVS_SCORE_DOT ? q->score_u : NULL;
        si->key_stash = -1;
        si->query_stash = -1;
        if (si->score_kind == KVS_SCORE_HOST) { si->key_stash = kst; kst += q->n_tokens; }
        if (q->queries) { si->query_stash = qst; qst += q->n_tokens; }
        if (q->observe) {
            int32_t i0 = q->observe_from - q->pos0;
            i0 = i0 < 0 ? 0 : i0 > q->n_tokens ? q->n_tokens : i0;
            si->obs0 = i0;
            si->n_obs = q->n_tokens - i0;
            for (int i = i0; i < q->n_tokens; i++) p->obs[ob++] = t + i;
        }
        for (int i = 0; i < q->n_tokens; i++) {
            p->tok[t + i] = q->tokens[i];
            p->pos[t + i] = q->pos0 + i;
            p->tok_seq[t + i] = s;
        }
        if (q->pos0 + q->n_tokens - 1 > max_pos) max_pos = q->pos0 + q->n_tokens - 1;
        if (q->logits == FWD_LOGITS_ALL)
            for (int i = 0; i < q->n_tokens; i++) p->rows[r++] = t + i;
        else if (q->logits == FWD_LOGITS_LAST)
            p->rows[r++] = t + q->n_tokens - 1;
        for (int l = 0; l < L; l++)
            for (int h = 0; h < Hkv; h++) {
                mem_stream *st = &q->kv->streams[l * Hkv + h];
                kvs_stream_info *info = &p->stream[((size_t)s * L + l) * Hkv + h];
                /* holes as they are before this step's appends: the device marks them
                 * empty first (evictions since the last step happened on the host only) */
                for (int32_t k = 0; k < st->n_holes; k++)
                    p->marks[mk++] = mem_gslot(pool, st, st->holes[k]);
                for (int i = 0; i < q->n_tokens; i++) {
                    int32_t slot = mem_stream_append(pool, st, q->pos0 + i, 0.0f);
                    if (slot < 0) return slot; /* not reached: room was checked above */
                    p->slot_map[((size_t)l * p->T + t + i) * Hkv + h] = mem_gslot(pool, st, slot);
                }
                int32_t np = (st->n_slots + P - 1) / P;
                info->pt_off = pt;
                info->n_slots = st->n_slots;
                info->probs_off = -1;
                if (np) memcpy(p->pt + pt, st->pages, (size_t)np * sizeof(int32_t));
                pt += np;
                if (q->n_tokens <= KVS_DECODE_MAX_TOKENS && np > max_dec) max_dec = np;
                if (si->n_obs > 0) {
                    info->probs_off = probs;
                    probs += (int64_t)si->n_obs * st->n_slots;
                }
            }
        if (q->n_tokens <= KVS_DECODE_MAX_TOKENS) {
            for (int i = 0; i < q->n_tokens; i++) p->dec[dec++] = t + i;
        } else {
            for (int i = 0; i < q->n_tokens; i += p->tile_tokens)
                p->tiles[tl++] = (kvs_tile){s, t + i, KVS_MIN(p->tile_tokens, q->n_tokens - i), 0};
        }
        t += q->n_tokens;
    }
    p->n_key_stash = kst;
    p->n_query_stash = qst;
    p->n_probs = probs;
    p->max_pos = max_pos;
    p->max_dec_pages = max_dec;
    /* the sizes pass and the fill pass must agree */
    if (t != p->T || r != p->R || pt != p->n_pt || mk != p->n_marks || dec != p->n_dec ||
        tl != p->n_tiles || ob != p->n_obs)
        return kvs_error(KVS_EINVAL, "internal error: step plan sizes disagree");
    return KVS_OK;
}

int kvs_plan_finish(const kvs_plan *p, mem_pool *pool, const fwd_seq *seqs, const float *scores,
                    const float *key_stash, const float *query_stash, const float *probs)
{
    const int L = p->L, Hkv = p->Hkv, Hq = p->Hq, hd = p->hd, T = p->T;
    int max_tok = 1;
    for (int s = 0; s < p->S; s++) max_tok = KVS_MAX(max_tok, p->seq[s].n_tok);
    float *buf = malloc((size_t)max_tok * hd * sizeof *buf);
    float *sc = malloc((size_t)max_tok * sizeof *sc);
    int32_t *pos = malloc((size_t)max_tok * sizeof *pos);
    int rc = KVS_OK;
    if (!buf || !sc || !pos) {
        rc = kvs_error(KVS_ENOMEM, "out of memory finishing a step");
        goto out;
    }
    for (int l = 0; l < L && !rc; l++) {
        for (int s = 0; s < p->S; s++) {
            const fwd_seq *q = &seqs[s];
            const kvs_seq_info *si = &p->seq[s];
            if (q->queries)
                for (int h = 0; h < Hq; h++) {
                    for (int i = 0; i < si->n_tok; i++)
                        memcpy(buf + (size_t)i * hd,
                               query_stash + (((size_t)l * p->n_query_stash + si->query_stash + i) *
                                              Hq + h) * hd, (size_t)hd * sizeof *buf);
                    q->queries(q->queries_ctx, l, h, buf, si->n_tok);
                }
            for (int h = 0; h < Hkv; h++) {
                if (si->score_kind == KVS_SCORE_HOST) {
                    for (int i = 0; i < si->n_tok; i++) {
                        memcpy(buf + (size_t)i * hd,
                               key_stash + (((size_t)l * p->n_key_stash + si->key_stash + i) *
                                            Hkv + h) * hd, (size_t)hd * sizeof *buf);
                        pos[i] = p->pos[si->tok0 + i];
                    }
                    q->score_keys(q->score_ctx, l, h, buf, pos, si->n_tok, sc);
                }
                for (int i = 0; i < si->n_tok; i++) {
                    size_t k = ((size_t)l * T + si->tok0 + i) * Hkv + h;
                    pool->score[p->slot_map[k]] =
                        si->score_kind == KVS_SCORE_HOST ? sc[i] : scores[k];
                }
            }
        }
        for (int s = 0; s < p->S && !rc; s++) {
            const fwd_seq *q = &seqs[s];
            const kvs_seq_info *si = &p->seq[s];
            if (!q->observe || si->n_obs <= 0) continue;
            for (int h = 0; h < Hkv && !rc; h++) {
                const kvs_stream_info *st = &p->stream[((size_t)s * L + l) * Hkv + h];
                rc = q->observe(q->observe_ctx, pool, &q->kv->streams[l * Hkv + h], l, h,
                                probs + st->probs_off, si->n_obs);
            }
        }
    }
out:
    free(buf);
    free(sc);
    free(pos);
    return rc;
}

