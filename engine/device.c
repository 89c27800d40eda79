/* device.c — backend choice and the host side of the CUDA backend: the metadata pool, slot
 * and compaction bookkeeping, the step plan and its finishing (device.h). Plain C: compiled
 * in every build, so the CUDA backend's host logic is tested without a GPU (kref_forward runs
 * it with the CPU twins). */
#include "device.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "kernels_ref.h"
#include "memory/policy.h"

#ifdef KVS_HAVE_CUDA
/* engine/cuda/kernels.cu (or the emulator's stand-ins) */
int kvs_cuda_device_count(void);
void kvs_cuda_describe(char *buf, size_t size);
#endif

/* ---- backend selection ------------------------------------------------------------------- */

int kvs_device_parse(const char *s, kvs_device_kind *out)
{
    if (s && !strcmp(s, "cpu")) *out = KVS_DEVICE_CPU;
    else if (s && !strcmp(s, "cuda")) *out = KVS_DEVICE_CUDA;
    else if (s && !strcmp(s, "auto")) *out = KVS_DEVICE_AUTO;
    else return kvs_error(KVS_EINVAL, "--device %s: must be cpu, cuda or auto", s ? s : "(null)");
    return KVS_OK;
}

const char *kvs_device_name(kvs_device_kind k)
{
    return k == KVS_DEVICE_CUDA ? "cuda" : k == KVS_DEVICE_AUTO ? "auto" : "cpu";
}

int kvs_device_count(void)
{
#ifdef KVS_HAVE_CUDA
    return kvs_cuda_device_count();
#else
    return 0;
#endif
}

void kvs_device_describe(char *buf, size_t size)
{
#ifdef KVS_HAVE_CUDA
    kvs_cuda_describe(buf, size);
#else
    snprintf(buf, size, "built without CUDA (KVS_CUDA=OFF or no nvcc)");
#endif
}

int kvs_device_resolve(kvs_device_kind want, kvs_device_kind *out)
{
    int n = kvs_device_count();
    if (want == KVS_DEVICE_AUTO) {
        *out = n > 0 ? KVS_DEVICE_CUDA : KVS_DEVICE_CPU;
        return KVS_OK;
    }
    if (want == KVS_DEVICE_CUDA && n == 0) {
#ifdef KVS_HAVE_CUDA
        return kvs_error(KVS_EUNSUPPORTED, "--device cuda: no CUDA device is visible (use "
                         "--device cpu or auto)");
#else
        return kvs_error(KVS_EUNSUPPORTED, "--device cuda: this kvsieve was built without "
                         "CUDA (rebuild with -DKVS_CUDA=ON where nvcc is installed)");
#endif
    }
    *out = want == KVS_DEVICE_CUDA ? KVS_DEVICE_CUDA : KVS_DEVICE_CPU;
    return KVS_OK;
}

/* ---- the metadata pool ------------------------------------------------------------------- */

int kvs_meta_pool_create(int page_slots, int head_dim, int32_t n_pages, mem_pool **out)
{
    *out = NULL;
    if (page_slots < 1 || page_slots > 1024 || (page_slots & (page_slots - 1)))
        return kvs_error(KVS_EINVAL, "KV page size %d is not a power of two in 1..1024",
                         page_slots);
    if (head_dim < 1 || n_pages < 1)
        return kvs_error(KVS_EINVAL, "KV pool needs head dim >= 1 and >= 1 page (got %d, %d)",
                         head_dim, (int)n_pages);
    if ((int64_t)n_pages * page_slots > INT32_MAX)
        return kvs_error(KVS_EINVAL, "KV pool of %d pages x %d slots exceeds %d slots",
                         (int)n_pages, page_slots, (int)INT32_MAX);
    size_t slots = (size_t)n_pages * (size_t)page_slots;
    mem_pool *p = calloc(1, sizeof *p);
    if (!p) return kvs_error(KVS_ENOMEM, "cannot allocate the KV pool header");
    p->page_slots = page_slots;
    while ((1 << p->page_shift) < page_slots) p->page_shift++;
    p->head_dim = head_dim;
    p->n_pages = n_pages;
    p->k = p->v = NULL; /* K/V live on the device */
    p->pos = kvs_alloc(slots * sizeof(int32_t));
    p->score = kvs_calloc(slots, sizeof(float));
    p->free_stack = kvs_alloc((size_t)n_pages * sizeof(int32_t));
    p->owner = kvs_alloc((size_t)n_pages * sizeof(int32_t));
    if (!p->pos || !p->score || !p->free_stack || !p->owner) {
        mem_pool_destroy(p);
        return kvs_error(KVS_ENOMEM, "cannot allocate KV metadata for %d pages", (int)n_pages);
    }
    for (size_t i = 0; i < slots; i++) p->pos[i] = -1;
    for (int32_t i = 0; i < n_pages; i++) {
        p->owner[i] = -1;
        p->free_stack[i] = n_pages - 1 - i; /* top of stack = page 0, as mem_pool_create */
    }
    p->n_free = n_pages;
    *out = p;
    return KVS_OK;
}

/* ---- bookkeeping ----------------------------------------------------------------------------- */

int32_t kvs_stream_take_slot(mem_pool *pool, mem_stream *s, int32_t pos, float score)
{
    if (pos < 0) return kvs_error(KVS_EINVAL, "cannot append a token with pos %d", (int)pos);
    int32_t slot;
    if (s->n_holes > 0) {
        slot = s->holes[0];
        memmove(s->holes, s->holes + 1, (size_t)(s->n_holes - 1) * sizeof *s->holes);
        s->n_holes--;
    } else {
        slot = s->n_slots;
        if ((int64_t)slot >= (int64_t)s->n_pages * pool->page_slots)
            return kvs_error(KVS_ENOMEM, "KV stream %d is full (%d pages): reserve pages "
                             "before the step", (int)s->id, (int)s->n_pages);
        s->n_slots++;
    }
    int32_t g = kvs_gslot(pool, s, slot);
    pool->pos[g] = pos;
    pool->score[g] = score;
    s->n_live++;
    return slot;
}

int32_t kvs_meta_compact(mem_pool *pool, mem_stream *s, int32_t *src, int32_t *dst)
{
    const int P = pool->page_slots;
    int32_t n = kref_compact_plan(pool, s->pages, s->n_slots, s->n_live, src, dst);
    for (int32_t i = 0; i < n; i++) {
        int32_t gs = kvs_gslot(pool, s, src[i]), gd = kvs_gslot(pool, s, dst[i]);
        pool->pos[gd] = pool->pos[gs];
        pool->score[gd] = pool->score[gs];
        pool->pos[gs] = -1;
        src[i] = gs;
        dst[i] = gd;
    }
    s->n_slots = s->n_live;
    s->n_holes = 0;
    int32_t keep = (s->n_live + P - 1) >> pool->page_shift;
    while (s->n_pages > keep) mem_pool_return_page(pool, s->pages[--s->n_pages]);
    return n;
}

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
    for (int i = 0; i < fc->n_inst; i++) free(fc->inst[i].fp);
    free(fc->inst);
    memset(fc, 0, sizeof *fc);
}

/* A fixed probe key: its score under every (layer, head) fingerprints an instance's filters. */
static void probe_key(float *k, int hd)
{
    for (int j = 0; j < hd; j++) k[j] = (float)((j * 2654435761u) % 1009u) / 1009.0f - 0.5f;
}

/* The filter set of a qfilters instance (-1: none could be given, or its score depends on the
 * position as with recent_layers; the caller falls back to host scoring). The instance is identified by its pointer and by the scores of the probe
 * key, so a new instance that reuses a freed one's address is not mistaken for it. */
static int filter_set_of(kvs_filter_cache *fc, void *inst)
{
    const int L = fc->n_layers, H = fc->n_kv_heads, hd = fc->head_dim, n_fp = L * H;
    const size_t n_u = (size_t)L * H * hd;
    float *key = malloc((size_t)hd * hd * sizeof *key), *fp = malloc((size_t)n_fp * sizeof *fp);
    float *u = NULL;
    int set = -1;
    if (!key || !fp) goto out;
    probe_key(key, hd);
    int32_t pos0 = 0, pos1 = 1 << 20;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            float other;
            pol_score_keys(inst, l, h, key, &pos0, 1, &fp[l * H + h]);
            pol_score_keys(inst, l, h, key, &pos1, 1, &other);
            if (other != fp[l * H + h]) goto out; /* depends on the position (recent_layers) */
        }
    int found = -1;
    for (int i = 0; i < fc->n_inst; i++)
        if (fc->inst[i].inst == inst) { found = i; break; }
    if (found >= 0 && !memcmp(fc->inst[found].fp, fp, (size_t)n_fp * sizeof *fp) &&
        fc->u[fc->inst[found].set]) {
        set = fc->inst[found].set;
        fc->used[set] = 1;
        goto out;
    }
    /* Extract u: the score of basis vector e_j is u_j (a linear scorer). */
    u = malloc(n_u * sizeof *u);
    int32_t *pos = calloc((size_t)hd, sizeof *pos);
    if (!u || !pos) { free(pos); goto out; }
    memset(key, 0, (size_t)hd * hd * sizeof *key);
    for (int j = 0; j < hd; j++) key[(size_t)j * hd + j] = 1.0f;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            pol_score_keys(inst, l, h, key, pos, hd, u + ((size_t)l * H + h) * hd);
    free(pos);
    for (int i = 0; i < KVS_MAX_FILTER_SETS && set < 0; i++)
        if (fc->u[i] && !memcmp(fc->u[i], u, n_u * sizeof *u)) set = i;
    if (set < 0) {
        /* a free set, else one the current plan does not use */
        for (int i = 0; i < KVS_MAX_FILTER_SETS && set < 0; i++)
            if (!fc->u[i]) set = i;
        for (int i = 0; i < KVS_MAX_FILTER_SETS && set < 0; i++)
            if (!fc->used[i]) set = i;
        if (set < 0) goto out;
        free(fc->u[set]);
        fc->u[set] = u;
        u = NULL;
        fc->dirty[set] = 1;
        if (set >= fc->n) fc->n = set + 1;
        /* instances that pointed at the replaced set must re-probe */
        for (int i = 0; i < fc->n_inst; i++)
            if (fc->inst[i].set == set) fc->inst[i].inst = NULL;
    }
    fc->used[set] = 1;
    if (found < 0) {
        if (fc->n_inst == fc->cap_inst) {
            if (fc->cap_inst >= 4096) { /* many dead instances: start over */
                for (int i = 0; i < fc->n_inst; i++) free(fc->inst[i].fp);
                fc->n_inst = 0;
            } else {
                int cap = fc->cap_inst ? 2 * fc->cap_inst : 16;
                void *p = realloc(fc->inst, (size_t)cap * sizeof *fc->inst);
                if (!p) goto out; /* the set is still valid; only not remembered */
                fc->inst = p;
                fc->cap_inst = cap;
            }
        }
        found = fc->n_inst++;
        fc->inst[found].fp = NULL;
    }
    free(fc->inst[found].fp);
    fc->inst[found].inst = inst;
    fc->inst[found].set = set;
    fc->inst[found].fp = fp;
    fp = NULL;
out:
    free(key);
    free(fp);
    free(u);
    return set;
}

extern const pol_vtable pol_qfilters_vtable, pol_knorm_vtable, pol_streaming_vtable,
    pol_h2o_vtable, pol_tova_vtable, pol_snapkv_vtable;

static int score_kind_of(const fwd_seq *q, kvs_filter_cache *fc, int *set)
{
    *set = -1;
    if (!q->score_keys) return KVS_SCORE_ZERO;
    if (q->score_keys != pol_score_keys || !q->score_ctx) return KVS_SCORE_HOST;
    const pol_vtable *vt = ((const pol_instance *)q->score_ctx)->vt;
    if (!vt->score_keys || vt == &pol_h2o_vtable || vt == &pol_tova_vtable ||
        vt == &pol_snapkv_vtable)
        return KVS_SCORE_ZERO;
    if (vt == &pol_streaming_vtable) return KVS_SCORE_POS;
    if (vt == &pol_knorm_vtable) return KVS_SCORE_NEG_NORM;
    if (vt == &pol_qfilters_vtable && fc) {
        *set = filter_set_of(fc, q->score_ctx);
        return *set >= 0 ? KVS_SCORE_DOT : KVS_SCORE_HOST;
    }
    return KVS_SCORE_HOST;
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
                   int n_seqs, kvs_filter_cache *fc)
{
    const int hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, G = Hq / Hkv;
    const int L = c->n_layers, P = pool->page_slots;
    /* Validation: the same checks and messages as fwd_cpu. */
    if (n_seqs <= 0) return kvs_error(KVS_EINVAL, "empty batch");
    if (pool->head_dim != hd)
        return kvs_error(KVS_EINVAL, "KV pool head dim %d != model %d", pool->head_dim, hd);
    if (G * 16 > 256)
        return kvs_error(KVS_EUNSUPPORTED, "GQA group of %d query heads is too large", G);
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
    if (fc) memset(fc->used, 0, sizeof fc->used);

    int32_t t = 0, r = 0, pt = 0, mk = 0, dec = 0, tl = 0, ob = 0, max_pos = 0, max_dec = 0;
    int32_t kst = 0, qst = 0;
    int64_t probs = 0;
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq *q = &seqs[s];
        kvs_seq_info *si = &p->seq[s];
        memset(si, 0, sizeof *si);
        si->tok0 = t;
        si->n_tok = q->n_tokens;
        si->score_kind = score_kind_of(q, fc, &si->filter_set);
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
                    p->marks[mk++] = kvs_gslot(pool, st, st->holes[k]);
                for (int i = 0; i < q->n_tokens; i++) {
                    int32_t slot = kvs_stream_take_slot(pool, st, q->pos0 + i, 0.0f);
                    if (slot < 0) return slot; /* not reached: room was checked above */
                    p->slot_map[((size_t)l * p->T + t + i) * Hkv + h] = kvs_gslot(pool, st, slot);
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

/* ---- the CUDA backend without CUDA: stubs that say so ---------------------------------------- */
#ifndef KVS_HAVE_CUDA

static int no_cuda(void)
{
    return kvs_error(KVS_EUNSUPPORTED, "this kvsieve was built without CUDA (rebuild with "
                     "-DKVS_CUDA=ON where nvcc is installed)");
}

int fwd_cuda_create(const model *m, int page_slots, size_t kv_bytes, double kv_fraction,
                    fwd_cuda_state **out)
{
    (void)m; (void)page_slots; (void)kv_bytes; (void)kv_fraction;
    *out = NULL;
    return no_cuda();
}
void fwd_cuda_destroy(fwd_cuda_state *st) { (void)st; }
int32_t fwd_cuda_n_pages(const fwd_cuda_state *st) { (void)st; return 0; }
int fwd_cuda(fwd_cuda_state *st, const model *m, mem_pool *pool, const fwd_seq *seqs,
             int n_seqs, float **logits, int *n_rows)
{
    (void)st; (void)m; (void)pool; (void)seqs; (void)n_seqs;
    *logits = NULL;
    *n_rows = 0;
    return no_cuda();
}
const fwd_timing *fwd_cuda_last_timing(const fwd_cuda_state *st)
{
    (void)st;
    static const fwd_timing zero;
    return &zero;
}
int32_t kvs_cuda_compact_stream(fwd_cuda_state *st, mem_pool *pool, mem_stream *s)
{
    (void)st; (void)pool; (void)s;
    return no_cuda();
}
int64_t kvs_cuda_compact_streams(fwd_cuda_state *st, mem_pool *pool, mem_stream *const *streams,
                                 int n)
{
    (void)st; (void)pool; (void)streams; (void)n;
    return no_cuda();
}
int kvs_cuda_copy_slots(fwd_cuda_state *st, const int32_t *src, const int32_t *dst, int n)
{
    (void)st; (void)src; (void)dst; (void)n;
    return no_cuda();
}
int kvs_cuda_read_keys(fwd_cuda_state *st, const int32_t *gslots, int n, float *out)
{
    (void)st; (void)gslots; (void)n; (void)out;
    return no_cuda();
}
int kvs_cuda_write_scores(fwd_cuda_state *st, const int32_t *gslots, const float *scores, int n)
{
    (void)st; (void)gslots; (void)scores; (void)n;
    return no_cuda();
}
#endif
