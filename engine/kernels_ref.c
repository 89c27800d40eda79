/* kernels_ref.c — CPU twins of the CUDA kernels; see kernels_ref.h. Plain C11, fp32,
 * single-threaded, written to be obviously the definition of each kernel's result. */
#include "kernels_ref.h"

#include "memory/kv_store.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "device.h"

#define KREF_LOG2E 1.4426950408889634f

/* ---- 16-bit rounding ------------------------------------------------------------------------ */

static uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
static float u2f(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }

/* bf16: the top 16 bits of the fp32, round to nearest even. */
static float round_bf16(float x)
{
    uint32_t u = f2u(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x; /* inf / nan unchanged */
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;                              /* round to nearest even */
    return u2f(u & 0xffff0000u);
}

/* IEEE binary16, round to nearest even, with subnormals, overflow to inf. */
static float round_f16(float x)
{
    if (isnan(x) || isinf(x)) return x;
    float a = fabsf(x);
    if (a >= 65520.0f) return copysignf(INFINITY, x); /* rounds to inf in binary16 */
    if (a < 0x1p-24f * 0.5f) return copysignf(0.0f, x);
    int e;
    frexpf(a, &e);          /* a = f * 2^e, f in [0.5, 1) */
    int exp2 = e - 1;       /* a in [2^exp2, 2^(exp2+1)) */
    if (exp2 < -14) exp2 = -14; /* subnormal range: fixed quantum 2^-24 */
    float quantum = ldexpf(1.0f, exp2 - 10);
    float q = a / quantum;  /* exact: power-of-two scaling */
    float r = rintf(q);     /* default rounding mode: nearest even */
    return copysignf(r * quantum, x);
}

float kref_round_half(float x, const kv_format *fmt)
{
    return fmt == &kv_fmt_bf16 ? round_bf16(x) : round_f16(x);
}

void kref_round_half_array(float *x, size_t n, const kv_format *fmt)
{
    for (size_t i = 0; i < n; i++) x[i] = kref_round_half(x[i], fmt);
}

/* ---- forward kernels ------------------------------------------------------------------------ */

void kref_embed(const float *table, int D, const int32_t *tok, int T, float *x)
{
    for (int t = 0; t < T; t++)
        memcpy(x + (size_t)t * D, table + (size_t)tok[t] * D, (size_t)D * sizeof(float));
}

void kref_rmsnorm(const float *x, const int32_t *rows, int R, int D, const float *w, float eps,
                  float *out)
{
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)(rows ? rows[r] : r) * D;
        float *o = out + (size_t)r * D;
        float ss = 0.0f;
        for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) o[i] = xr[i] * inv * w[i];
    }
}

float kref_score_key(int kind, const float *k, int hd, const float *u, int32_t pos)
{
    switch (kind) {
    case KVS_SCORE_DOT: {
        float s = 0.0f;
        for (int j = 0; j < hd; j++) s += k[j] * u[j];
        return s;
    }
    case KVS_SCORE_NEG_NORM: {
        double s = 0.0;
        for (int j = 0; j < hd; j++) s += (double)k[j] * k[j];
        return -(float)sqrt(s);
    }
    case KVS_SCORE_POS: return (float)pos;
    default: return 0.0f;
    }
}

void kref_rope_kv_write(float *qkv, int T, int Hq, int Hkv, int hd, const int32_t *pos,
                        const float *cos_t, const float *sin_t, mem_pool *pool, kv_store *kv,
                        const int32_t *slot_map, const int32_t *tok_seq, const int32_t *seq_kind,
                        const float *const *seq_u, float *scores)
{
    const int half = hd / 2, QKV = (Hq + 2 * Hkv) * hd;
    for (int t = 0; t < T; t++) {
        float *row = qkv + (size_t)t * QKV;
        const float *cs = cos_t + (size_t)pos[t] * half, *sn = sin_t + (size_t)pos[t] * half;
        for (int h = 0; h < Hq + Hkv; h++) {
            float *v = row + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * cs[i] - b * sn[i];
                v[2 * i + 1] = a * sn[i] + b * cs[i];
            }
        }
        int s = tok_seq[t], kind = seq_kind[s];
        for (int h = 0; h < Hkv; h++) {
            int32_t g = slot_map[(size_t)t * Hkv + h];
            const float *k = row + (size_t)(Hq + h) * hd, *v = row + (size_t)(Hq + Hkv + h) * hd;
            memcpy(kv_store_krow(kv, g), k, (size_t)hd * sizeof(float));
            memcpy(kv_store_vrow(kv, g), v, (size_t)hd * sizeof(float));
            float sc = kref_score_key(kind, k, hd,
                                      kind == KVS_SCORE_DOT ? seq_u[s] + (size_t)h * hd : NULL,
                                      pos[t]);
            pool->pos[g] = pos[t];
            pool->score[g] = sc;
            scores[(size_t)t * Hkv + h] = sc;
        }
    }
}

void kref_swiglu(const float *gu, int T, int F, float *act)
{
    for (int t = 0; t < T; t++) {
        const float *g = gu + (size_t)t * 2 * F, *u = g + F;
        float *a = act + (size_t)t * F;
        for (int i = 0; i < F; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* Address of stream slot `slot`'s row in K or V (an fp32 store), and its pos. */
static inline const float *slot_row(const mem_pool *pool, const uint8_t *base, size_t row,
                                    const int32_t *pages, int32_t slot)
{
    int32_t g = pages[slot >> pool->page_shift] * pool->page_slots +
                (slot & (pool->page_slots - 1));
    return (const float *)(base + (size_t)g * row);
}
static inline int32_t slot_pos(const mem_pool *pool, const int32_t *pages, int32_t slot)
{
    return pool->pos[(size_t)pages[slot >> pool->page_shift] * pool->page_slots +
                     (slot & (pool->page_slots - 1))];
}

static float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void kref_attention(const mem_pool *pool, const kv_store *kv, const int32_t *pages, int32_t n_slots, const float *q,
                    size_t q_stride, const int32_t *qpos, int n_q, int G, int hd, float scale,
                    float *out, size_t out_stride)
{
    float *sc = malloc((size_t)(n_slots > 0 ? n_slots : 1) * sizeof *sc);
    if (!sc) return; /* the callers size n_slots from real streams; see the tests */
    for (int t = 0; t < n_q; t++)
        for (int g = 0; g < G; g++) {
            const float *qr = q + (size_t)t * q_stride + (size_t)g * hd;
            float *o = out + (size_t)t * out_stride + (size_t)g * hd;
            float mx = -INFINITY;
            for (int32_t s = 0; s < n_slots; s++) {
                int32_t p = slot_pos(pool, pages, s);
                if (p < 0 || p > qpos[t]) { sc[s] = -INFINITY; continue; }
                sc[s] = dot(qr, slot_row(pool, kv->k, kv->k_row, pages, s), hd) * scale;
                if (sc[s] > mx) mx = sc[s];
            }
            memset(o, 0, (size_t)hd * sizeof *o);
            if (mx == -INFINITY) continue;
            double l = 0.0;
            for (int32_t s = 0; s < n_slots; s++) {
                if (sc[s] == -INFINITY) continue;
                float p = expf(sc[s] - mx);
                l += p;
                const float *v = slot_row(pool, kv->v, kv->v_row, pages, s);
                for (int i = 0; i < hd; i++) o[i] += p * v[i];
            }
            float inv = (float)(1.0 / l);
            for (int i = 0; i < hd; i++) o[i] *= inv;
        }
    free(sc);
}

void kref_attention_partial(const mem_pool *pool, const kv_store *kv, const int32_t *pages, int32_t s0, int32_t s1,
                            const float *q, int32_t qpos, int G, int hd, float scale, float *m,
                            float *l, float *acc)
{
    const float qs = scale * KREF_LOG2E;
    for (int g = 0; g < G; g++) {
        const float *qr = q + (size_t)g * hd;
        float *a = acc + (size_t)g * hd;
        float mx = -INFINITY;
        for (int32_t s = s0; s < s1; s++) {
            int32_t p = slot_pos(pool, pages, s);
            if (p < 0 || p > qpos) continue;
            float v = dot(qr, slot_row(pool, kv->k, kv->k_row, pages, s), hd) * qs;
            if (v > mx) mx = v;
        }
        memset(a, 0, (size_t)hd * sizeof *a);
        m[g] = mx;
        l[g] = 0.0f;
        if (mx == -INFINITY) continue;
        double sum = 0.0;
        for (int32_t s = s0; s < s1; s++) {
            int32_t p = slot_pos(pool, pages, s);
            if (p < 0 || p > qpos) continue;
            float w = exp2f(dot(qr, slot_row(pool, kv->k, kv->k_row, pages, s), hd) * qs - mx);
            sum += w;
            const float *v = slot_row(pool, kv->v, kv->v_row, pages, s);
            for (int i = 0; i < hd; i++) a[i] += w * v[i];
        }
        l[g] = (float)sum;
    }
}

void kref_attention_combine(int n_split, const float *m, const float *l, const float *acc,
                            int hd, float *out)
{
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        if (m[s] > M) M = m[s];
    memset(out, 0, (size_t)hd * sizeof *out);
    if (M == -INFINITY) return;
    double L = 0.0;
    for (int s = 0; s < n_split; s++) {
        if (m[s] == -INFINITY) continue;
        float f = exp2f(m[s] - M);
        L += (double)l[s] * f;
        for (int i = 0; i < hd; i++) out[i] += acc[(size_t)s * hd + i] * f;
    }
    float inv = L > 0.0 ? (float)(1.0 / L) : 0.0f;
    for (int i = 0; i < hd; i++) out[i] *= inv;
}

void kref_attn_probs(const mem_pool *pool, const kv_store *kv, const int32_t *pages, int32_t n_slots, const float *q,
                     size_t q_stride, const int32_t *qpos, int n_q, int G, int hd, float scale,
                     float *probs)
{
    float *row = malloc((size_t)(n_slots > 0 ? n_slots : 1) * sizeof *row);
    memset(probs, 0, (size_t)n_q * (size_t)n_slots * sizeof *probs);
    if (!row) return;
    for (int t = 0; t < n_q; t++) {
        float *pr = probs + (size_t)t * n_slots;
        for (int g = 0; g < G; g++) {
            const float *qr = q + (size_t)t * q_stride + (size_t)g * hd;
            float mx = -INFINITY;
            for (int32_t s = 0; s < n_slots; s++) {
                int32_t p = slot_pos(pool, pages, s);
                if (p < 0 || p > qpos[t]) { row[s] = -INFINITY; continue; }
                row[s] = dot(qr, slot_row(pool, kv->k, kv->k_row, pages, s), hd) * scale;
                if (row[s] > mx) mx = row[s];
            }
            if (mx == -INFINITY) continue;
            double sum = 0.0;
            for (int32_t s = 0; s < n_slots; s++)
                if (row[s] != -INFINITY) sum += (row[s] = expf(row[s] - mx));
            float w = (float)(1.0 / (sum * G));
            for (int32_t s = 0; s < n_slots; s++)
                if (row[s] != -INFINITY) pr[s] += row[s] * w;
        }
    }
    free(row);
}

/* ---- sampling ------------------------------------------------------------------------------- */

typedef struct { float p; int32_t id; } kref_cand;

static int cmp_cand_desc(const void *a, const void *b)
{
    const kref_cand *x = a, *y = b;
    if (x->p > y->p) return -1;
    if (x->p < y->p) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

int32_t kref_sample(const float *logits, int V, float temperature, int top_k, float top_p,
                    double r)
{
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature == 0.0f || top_k == 1) return best;
    const float inv_t = 1.0f / temperature, mx = logits[best];
    kref_cand *c = malloc((size_t)V * sizeof *c);
    if (!c) return best;
    int n = 0;
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        float p = expf((logits[i] - mx) * inv_t);
        if (p < 1e-10f) continue;
        c[n].p = p;
        c[n].id = i;
        sum += p;
        n++;
    }
    qsort(c, (size_t)n, sizeof *c, cmp_cand_desc);
    if (top_k > 0 && top_k < n) {
        n = top_k;
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += c[i].p;
    }
    if (top_p < 1.0f) {
        double cum = 0.0, want = top_p * sum;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= want) { keep = i + 1; break; }
        }
        n = keep;
        sum = cum < want ? sum : cum;
    }
    double target = r * sum, acc = 0.0;
    int32_t id = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (target < acc) { id = c[i].id; break; }
    }
    free(c);
    return id;
}

/* ---- memory kernels ------------------------------------------------------------------------- */

/* Candidates of a stream for eviction, as in memory/evict.c: live slots minus the `sink`
 * lowest positions and the positions > cur_pos - window. Returns the count of live slots in
 * *n_live_out; fills slot[] with the candidates (ascending slots) and returns their count, or
 * -1 when sink >= live (nothing may be evicted). */
static int32_t candidates(const mem_pool *pool, const int32_t *pages, int32_t n_slots,
                          int32_t sink, int32_t window, int32_t cur_pos, int32_t *slot,
                          int32_t *n_live_out)
{
    int32_t m = 0;
    for (int32_t s = 0; s < n_slots; s++)
        if (slot_pos(pool, pages, s) >= 0) slot[m++] = s;
    *n_live_out = m;
    if (sink >= m) return -1;
    int64_t sink_max = -1;
    if (sink > 0) {
        /* the sink-th smallest position: sort a copy of the positions */
        int32_t *ps = malloc((size_t)m * sizeof *ps);
        if (!ps) return -1;
        for (int32_t i = 0; i < m; i++) ps[i] = slot_pos(pool, pages, slot[i]);
        for (int32_t i = 1; i < m; i++) { /* insertion sort: test-sized streams */
            int32_t x = ps[i], j = i;
            while (j > 0 && ps[j - 1] > x) { ps[j] = ps[j - 1]; j--; }
            ps[j] = x;
        }
        sink_max = ps[sink - 1];
        free(ps);
    }
    const int64_t recent_min = (int64_t)cur_pos - window + 1;
    int32_t n = 0;
    for (int32_t i = 0; i < m; i++) {
        int32_t p = slot_pos(pool, pages, slot[i]);
        if (p <= sink_max || (window > 0 && p >= recent_min)) continue;
        slot[n++] = slot[i];
    }
    return n;
}

static float score_key_of(float s) { return isnan(s) ? -INFINITY : s; }

static float slot_score(const mem_pool *pool, const int32_t *pages, int32_t slot)
{
    return pool->score[(size_t)pages[slot >> pool->page_shift] * pool->page_slots +
                       (slot & (pool->page_slots - 1))];
}

int32_t kref_select(const mem_pool *pool, const int32_t *pages, int32_t n_slots, int32_t n_keep,
                    int32_t sink, int32_t window, int32_t cur_pos, int32_t *victims)
{
    int32_t *cand = malloc((size_t)(n_slots > 0 ? n_slots : 1) * sizeof *cand), n_live;
    if (!cand) return 0;
    int32_t n = candidates(pool, pages, n_slots, sink, window, cur_pos, cand, &n_live);
    if (n_keep < 0) n_keep = 0;
    int32_t n_evict = n < 0 ? 0 : KVS_MIN(n_live - n_keep, n);
    if (n_evict <= 0) { free(cand); return 0; }
    /* mark the n_evict smallest (score, pos): repeated minimum over unmarked, test-sized */
    uint8_t *taken = calloc((size_t)n, 1);
    if (!taken) { free(cand); return 0; }
    for (int32_t k = 0; k < n_evict; k++) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++) {
            if (taken[i]) continue;
            if (best < 0) { best = i; continue; }
            float a = score_key_of(slot_score(pool, pages, cand[i]));
            float b = score_key_of(slot_score(pool, pages, cand[best]));
            if (a < b || (a == b && slot_pos(pool, pages, cand[i]) <
                                        slot_pos(pool, pages, cand[best])))
                best = i;
        }
        taken[best] = 1;
    }
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (taken[i]) victims[k++] = cand[i]; /* cand is ascending */
    free(taken);
    free(cand);
    return k;
}

int32_t kref_select_threshold(const mem_pool *pool, const int32_t *pages, int32_t n_slots,
                              int32_t sink, int32_t window, int32_t cur_pos, float tau,
                              int32_t *victims)
{
    int32_t *cand = malloc((size_t)(n_slots > 0 ? n_slots : 1) * sizeof *cand), n_live;
    if (!cand) return 0;
    int32_t n = candidates(pool, pages, n_slots, sink, window, cur_pos, cand, &n_live), k = 0;
    for (int32_t i = 0; i < n; i++)
        if (score_key_of(slot_score(pool, pages, cand[i])) < tau) victims[k++] = cand[i];
    free(cand);
    return k;
}

void kref_mark(mem_pool *pool, const int32_t *gslots, int n)
{
    for (int i = 0; i < n; i++) pool->pos[gslots[i]] = -1;
}

void kref_clear_pages(mem_pool *pool, const int32_t *pages, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < pool->page_slots; j++)
            pool->pos[(size_t)pages[i] * pool->page_slots + j] = -1;
}

int32_t kref_compact_plan(const mem_pool *pool, const int32_t *pages, int32_t n_slots,
                          int32_t n_live, int32_t *src, int32_t *dst)
{
    int32_t n_dst = 0, n_src = 0;
    for (int32_t s = 0; s < n_live && s < n_slots; s++)
        if (slot_pos(pool, pages, s) < 0) dst[n_dst++] = s;
    for (int32_t s = n_slots - 1; s >= n_live && s >= 0; s--)
        if (slot_pos(pool, pages, s) >= 0) src[n_src++] = s;
    return KVS_MIN(n_dst, n_src); /* equal whenever n_live counts the live slots */
}

void kref_slot_copy(mem_pool *pool, kv_store *kv, const int32_t *src, const int32_t *dst, int n,
                    int flags)
{
    for (int i = 0; i < n; i++) {
        if (flags & KREF_COPY_KV) {
            memcpy(kv_store_krow(kv, dst[i]), kv_store_krow(kv, src[i]), kv->k_row);
            memcpy(kv_store_vrow(kv, dst[i]), kv_store_vrow(kv, src[i]), kv->v_row);
        }
        if (flags & KREF_COPY_META) {
            pool->pos[dst[i]] = pool->pos[src[i]];
            pool->score[dst[i]] = pool->score[src[i]];
        }
        if (flags & KREF_CLEAR_SRC) pool->pos[src[i]] = -1;
    }
}

void kref_attn_reduce(mem_pool *pool, const int32_t *pages, int32_t n_slots, const float *probs,
                      int n_q, int mode, float *out)
{
    for (int32_t s = 0; s < n_slots; s++) {
        size_t g = (size_t)pages[s >> pool->page_shift] * pool->page_slots +
                   (s & (pool->page_slots - 1));
        int live = pool->pos[g] >= 0;
        if (mode == KREF_STATS_LAST) {
            if (live && n_q > 0) pool->score[g] = probs[(size_t)(n_q - 1) * n_slots + s];
            continue;
        }
        float sum = 0.0f;
        for (int q = 0; q < n_q; q++) sum += probs[(size_t)q * n_slots + s];
        if (mode == KREF_STATS_SUM) {
            if (live) pool->score[g] += sum;
        } else {
            out[s] = live && n_q > 0 ? sum / (float)n_q : 0.0f;
        }
    }
}

