/* forward_cpu.c — the CPU forward of a step plan: fp32 activations, products on the weights
 * in their GGUF formats (wmat.h: integer dot kernels for small batches, BLAS on dequantised
 * tiles for large ones; BLAS in place for fp32 weights), OpenMP for everything else; K/V rows read through their format's tile reader (forward_cpu.h).
 *
 * Shapes (T = tokens in the step, D = d_model, hd = head_dim, Hq/Hkv = query/KV heads,
 * G = Hq/Hkv, F = d_ff, V = vocab):
 *   x [T][D] -> rmsnorm -> h [T][D] -> h @ Wqkv^T -> qkv [T][(Hq + 2 Hkv) hd]
 *   RoPE(q, k) -> append k, v into the streams -> attention -> att [T][Hq hd]
 *   x += att @ Wo^T ; h = rmsnorm(x) ; gu = h @ Wgu^T [T][2F] ; x += (silu(g) * u) @ Wdown^T
 *   logits = rmsnorm(x[rows]) @ Wout^T */
#include "forward_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* Attention of a step with fewer query rows x slots than this runs on the calling thread:
 * waking the OpenMP team costs more than it saves (9 heads x 256 slots is ~1 us of work). */
#define ATT_PAR_WORK 32768
/* Query tokens handled by one attention task (with all G heads of the group). */
#define ATT_QBLOCK 16

struct fwd_state {
    int cap_tokens, cap_rows;
    float *x, *h, *qkv, *att, *gu, *act; /* activations, sized for cap_tokens */
    float *rope_cos, *rope_sin;          /* [T][hd/2] */
    int32_t *tok_pos;                    /* [T] absolute position of each token */
    float *xrows, *logits;               /* [R][D], [R][V] */
    double *inv_freq;                    /* [hd/2] */
    float *score_buf, *key_buf;          /* [T] scores, [T][hd] keys of one head */
    int32_t *pos_buf;
    wmat_scratch wsc;                    /* the weight products' scratch */
    fwd_timing timing;
};

static void free_buffers(fwd_state *st)
{
    kvs_free(st->x); kvs_free(st->h); kvs_free(st->qkv); kvs_free(st->att);
    kvs_free(st->gu); kvs_free(st->act); kvs_free(st->rope_cos); kvs_free(st->rope_sin);
    kvs_free(st->tok_pos); kvs_free(st->score_buf); kvs_free(st->key_buf); kvs_free(st->pos_buf);
    st->x = st->h = st->qkv = st->att = st->gu = st->act = NULL;
    st->rope_cos = st->rope_sin = st->score_buf = st->key_buf = NULL;
    st->tok_pos = st->pos_buf = NULL;
    st->cap_tokens = 0;
}

static int ensure_tokens(fwd_state *st, const model_config *c, int T)
{
    if (T <= st->cap_tokens) return 0;
    free_buffers(st);
    int cap = T < 64 ? 64 : T;
    size_t qkv = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    st->x = kvs_alloc((size_t)cap * c->d_model * sizeof(float));
    st->h = kvs_alloc((size_t)cap * c->d_model * sizeof(float));
    st->qkv = kvs_alloc((size_t)cap * qkv * sizeof(float));
    st->att = kvs_alloc((size_t)cap * c->n_heads * c->head_dim * sizeof(float));
    st->gu = kvs_alloc((size_t)cap * 2 * c->d_ff * sizeof(float));
    st->act = kvs_alloc((size_t)cap * c->d_ff * sizeof(float));
    st->rope_cos = kvs_alloc((size_t)cap * (c->head_dim / 2) * sizeof(float));
    st->rope_sin = kvs_alloc((size_t)cap * (c->head_dim / 2) * sizeof(float));
    st->tok_pos = kvs_alloc((size_t)cap * sizeof(int32_t));
    st->score_buf = kvs_alloc((size_t)cap * sizeof(float));
    st->key_buf = kvs_alloc((size_t)cap * c->head_dim * sizeof(float));
    st->pos_buf = kvs_alloc((size_t)cap * sizeof(int32_t));
    if (!st->x || !st->h || !st->qkv || !st->att || !st->gu || !st->act || !st->rope_cos ||
        !st->rope_sin || !st->tok_pos || !st->score_buf || !st->key_buf || !st->pos_buf) {
        free_buffers(st);
        return kvs_error(KVS_ENOMEM, "cannot allocate activations for %d tokens", T);
    }
    st->cap_tokens = cap;
    return 0;
}

static int ensure_rows(fwd_state *st, const model_config *c, int R)
{
    if (R <= st->cap_rows) return 0;
    kvs_free(st->xrows); kvs_free(st->logits);
    int cap = R < 8 ? 8 : R;
    st->xrows = kvs_alloc((size_t)cap * c->d_model * sizeof(float));
    st->logits = kvs_alloc((size_t)cap * c->n_vocab * sizeof(float));
    if (!st->xrows || !st->logits) {
        kvs_free(st->xrows); kvs_free(st->logits);
        st->xrows = st->logits = NULL;
        st->cap_rows = 0;
        return kvs_error(KVS_ENOMEM, "cannot allocate logits for %d rows", R);
    }
    st->cap_rows = cap;
    return 0;
}

int fwd_create(const model *m, fwd_state **out)
{
    fwd_state *st = calloc(1, sizeof *st);
    if (!st) return kvs_error(KVS_ENOMEM, "out of memory");
    int half = m->cfg.head_dim / 2;
    st->inv_freq = calloc((size_t)half, sizeof(double));
    if (!st->inv_freq) { free(st); return kvs_error(KVS_ENOMEM, "out of memory"); }
    /* Pair i (which dims: rope_apply) turns by pos * base^(-2i/hd). */
    for (int i = 0; i < half; i++)
        st->inv_freq[i] = pow((double)m->cfg.rope_base, -2.0 * i / m->cfg.head_dim);
    /* [issue 12: model families] rope_freqs.weight (llama3 RoPE scaling): theta_i / f_i. */
    if (m->rope_freqs)
        for (int i = 0; i < half; i++) st->inv_freq[i] /= (double)m->rope_freqs[i];
    *out = st;
    return 0;
}

void fwd_destroy(fwd_state *st)
{
    if (!st) return;
    free_buffers(st);
    kvs_free(st->xrows); kvs_free(st->logits);
    wmat_scratch_free(&st->wsc);
    free(st->inv_freq);
    free(st);
}

const fwd_timing *fwd_last_timing(const fwd_state *st) { return &st->timing; }

/* out[t] = x[t] / rms(x[t]) * w, for T rows of D. */
static void rmsnorm_rows(float *out, const float *x, const float *w, int T, int D, float eps)
{
#pragma omp parallel for schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float ss = 0.0f;
        for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) o[i] = xr[i] * r * w[i];
    }
}


static void rope_apply(float *v, const float *cs, const float *sn, int half, arch_rope type)
{
    /* [issue 12: model families] NEOX RoPE (qwen2): pair (x[i], x[i + hd/2]). */
    if (type == ARCH_ROPE_NEOX) {
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cs[i] - b * sn[i];
            v[i + half] = a * sn[i] + b * cs[i];
        }
        return;
    }
    /* GGML "normal" RoPE (llama): pair (x[2i], x[2i+1]). */
    for (int i = 0; i < half; i++) {
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * cs[i] - b * sn[i];
        v[2 * i + 1] = a * sn[i] + b * cs[i];
    }
}

/* Keys per attention tile: one vector register of scores on AVX-512. */
#define ATT_TILE 16
/* Largest head dim the attention tiles hold on the stack. */
#define ATT_MAX_HD FWD_CPU_MAX_HEAD_DIM

/* One tile of ATT_TILE floats as a GCC/Clang vector (a zmm register on AVX-512, split by the
 * compiler elsewhere). */
typedef float att_vec __attribute__((vector_size(ATT_TILE * sizeof(float))));
typedef int32_t att_ivec __attribute__((vector_size(ATT_TILE * sizeof(int32_t))));

static inline att_vec att_select(att_ivec mask, att_vec a, att_vec b) /* mask ? a : b */
{
    return (att_vec)(((att_ivec)a & mask) | ((att_ivec)b & ~mask));
}

/* exp(x) lane by lane for x <= 0 (softmax arguments); 0 below -87 and for -inf. Range
 * reduction by ln 2 and a degree-6 polynomial: relative error ~1e-7, one vector at a time
 * (expf would be called one element at a time). */
static inline att_vec att_exp_nonpos(att_vec x)
{
    const att_vec lo = (att_vec){0} - 87.0f;
    att_ivec under = x < lo;
    att_vec v = att_select(under, lo, x);
    att_vec k = (v * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest */
    att_vec r = v - k * 0.693145752f;
    r = r - k * 1.42860677e-06f;
    att_vec p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666667e-2f +
                r * (8.3333333e-3f + r * 1.3888889e-3f)))));
    att_ivec e = (__builtin_convertvector(k, att_ivec) + 127) << 23;
    return att_select(under, (att_vec){0}, p * (att_vec)e);
}

static inline att_vec att_load(const float *p)
{
    att_vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* a[0..hd) = a * corr + sum_j p[j] v_j, v_j = V + j * hd: one register accumulator per
 * ATT_TILE-wide chunk of a, so that the chain over j stays in registers. */
static void att_accumulate(float *a, float corr, const float *p, const float *V, int ns, int hd)
{
    int i = 0;
    for (; i + ATT_TILE <= hd; i += ATT_TILE) {
        att_vec acc = att_load(a + i) * corr;
        for (int j = 0; j < ns; j++) acc += p[j] * att_load(V + (size_t)j * hd + i);
        memcpy(a + i, &acc, sizeof acc);
    }
    for (; i < hd; i++) {
        float acc = a[i] * corr;
        for (int j = 0; j < ns; j++) acc += p[j] * V[(size_t)j * hd + i];
        a[i] = acc;
    }
}

/* Attention of query rows of one (sequence, kv_head) over its stream, online softmax tile by
 * tile: ATT_TILE slots of a page, their keys transposed so that the scores of a query row
 * are one vector of FMAs (four rows at a time, sharing the key loads). q: n_q tokens x G
 * heads, rows at q0 + (t * q_stride) + g * hd; out likewise. */
static void attend_stream(const mem_pool *pool, const kv_store *kv, const int32_t *pages,
                          int32_t n_slots, const float *q0, size_t q_stride, float *out0,
                          size_t out_stride, const int32_t *qpos, int n_q, int G, int hd,
                          float scale)
{
    enum { MAXR = ATT_QBLOCK * 16 };
    const int P = pool->page_slots;
    const int R = n_q * G;
    float m_run[MAXR], l_run[MAXR];
    att_vec kt[ATT_MAX_HD]; /* kt[i][j] = key j's component i */
    att_vec scv[MAXR];      /* scores of every row for the current tile */
    float pr[ATT_TILE];
    float kbuf[ATT_TILE * ATT_MAX_HD], vbuf[ATT_TILE * ATT_MAX_HD]; /* tiles read as fp32 */
    const float *qrow[MAXR];
    int32_t qmax = INT32_MIN;
    for (int t = 0; t < n_q; t++)
        if (qpos[t] > qmax) qmax = qpos[t];
    for (int r = 0; r < R; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.0f;
        qrow[r] = q0 + (size_t)(r / G) * q_stride + (size_t)(r % G) * hd;
        memset(out0 + (size_t)(r / G) * out_stride + (size_t)(r % G) * hd, 0,
               (size_t)hd * sizeof(float));
    }
    for (int base = 0; base < n_slots; base += ATT_TILE) {
        int32_t page = pages[base / P];
        int off = base % P;
        int ns = n_slots - base;
        if (ns > ATT_TILE) ns = ATT_TILE;
        if (ns > P - off) ns = P - off;
        if (ns < ATT_TILE) base -= ATT_TILE - ns; /* next tile starts at the next page */
        const int64_t g0 = (int64_t)page * P + off;
        const int32_t *pos = mem_page_pos(pool, page) + off;
        int32_t pmin = INT32_MAX;
        for (int j = 0; j < ns; j++)
            if (pos[j] >= 0 && pos[j] < pmin) pmin = pos[j];
        if (pmin > qmax) continue; /* holes only, or the causal future of every row */
        const float *K = kv->fk->read_rows(kv_store_krow(kv, g0), ns, hd, kbuf);
        const float *V = kv->fv->read_rows(kv_store_vrow(kv, g0), ns, hd, vbuf);
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < ATT_TILE; j++) kt[i][j] = j < ns ? K[(size_t)j * hd + i] : 0.0f;
        for (int r0 = 0; r0 < R; r0 += 4) {
            const float *qa = qrow[r0], *qb = qrow[r0 + 1 < R ? r0 + 1 : r0];
            const float *qc = qrow[r0 + 2 < R ? r0 + 2 : r0], *qd = qrow[r0 + 3 < R ? r0 + 3 : r0];
            att_vec sa = {0}, sb = {0}, scc = {0}, sd = {0};
            for (int i = 0; i < hd; i++) {
                att_vec k = kt[i];
                sa += qa[i] * k;
                sb += qb[i] * k;
                scc += qc[i] * k;
                sd += qd[i] * k;
            }
            scv[r0] = sa;
            if (r0 + 1 < R) scv[r0 + 1] = sb;
            if (r0 + 2 < R) scv[r0 + 2] = scc;
            if (r0 + 3 < R) scv[r0 + 3] = sd;
        }
        att_ivec posv, jv;
        for (int j = 0; j < ATT_TILE; j++) {
            posv[j] = j < ns ? pos[j] : -1;
            jv[j] = j;
        }
        const att_vec neg_inf = (att_vec){0} - INFINITY;
        for (int r = 0; r < R; r++) {
            int t = r / G, g = r % G;
            int32_t qp = qpos[t];
            if (pmin > qp) continue;
            float *a = out0 + (size_t)t * out_stride + (size_t)g * hd;
            att_ivec ok = (posv >= 0) & (posv <= qp) & (jv < ns);
            att_vec sv = att_select(ok, scv[r] * scale, neg_inf);
            float mx = m_run[r];
            for (int j = 0; j < ATT_TILE; j++)
                if (sv[j] > mx) mx = sv[j];
            float corr = mx == m_run[r] ? 1.0f : expf(m_run[r] - mx); /* 0 on the first tile */
            att_vec pv = att_exp_nonpos(sv - mx);
            float l = 0.0f;
            for (int j = 0; j < ATT_TILE; j++) {
                pr[j] = pv[j];
                l += pv[j];
            }
            att_accumulate(a, corr, pr, V, ns, hd);
            m_run[r] = mx;
            l_run[r] = l_run[r] * corr + l;
        }
    }
    for (int r = 0; r < R; r++) {
        float *a = out0 + (size_t)(r / G) * out_stride + (size_t)(r % G) * hd;
        float inv = l_run[r] > 0.0f ? 1.0f / l_run[r] : 0.0f;
        for (int i = 0; i < hd; i++) a[i] *= inv;
    }
}

/* Attention probabilities of n_q query tokens (G heads each) over a stream's slots, averaged
 * over the G heads: probs[n_q][n_slots], 0 for holes and masked slots. A second pass over the
 * keys, paid only by attention-based policies; the tiles of attend_stream, ATT_PROB_ROWS query
 * rows at a time (each tile's keys transposed once per block of rows). */
#define ATT_PROB_ROWS 16
static void attention_probs(const mem_pool *pool, const kv_store *kv, const int32_t *pages,
                            int32_t n_slots, const float *q0, size_t q_stride,
                            const int32_t *qpos, int n_q, int G, int hd, float scale,
                            float *probs)
{
    const int P = pool->page_slots, n = n_slots, R = n_q * G;
    const int max_tiles = (n + ATT_TILE - 1) / ATT_TILE + (n + P - 1) / P + 1;
    att_vec *sc = malloc((size_t)ATT_PROB_ROWS * max_tiles * sizeof(att_vec));
    int *tile_slot = malloc((size_t)(max_tiles + 1) * sizeof(int));
    att_vec *kt = malloc((size_t)(hd > 0 ? hd : 1) * sizeof(att_vec));
    float *kbuf = malloc((size_t)ATT_TILE * (hd > 0 ? hd : 1) * sizeof(float));
    memset(probs, 0, (size_t)n_q * n * sizeof(float));
    const att_vec neg_inf = (att_vec){0} - INFINITY;
    att_ivec jv;
    for (int j = 0; j < ATT_TILE; j++) jv[j] = j;
    if (!sc || !tile_slot || !kt || !kbuf) goto done;
    for (int r0 = 0; r0 < R; r0 += ATT_PROB_ROWS) {
        const int nr = R - r0 < ATT_PROB_ROWS ? R - r0 : ATT_PROB_ROWS;
        float mx[ATT_PROB_ROWS];
        for (int k = 0; k < nr; k++) mx[k] = -INFINITY;
        int nt = 0;
        for (int base = 0; base < n; nt++) {
            int32_t page = pages[base / P];
            int off = base % P, ns = n - base;
            if (ns > ATT_TILE) ns = ATT_TILE;
            if (ns > P - off) ns = P - off;
            const float *K = kv->fk->read_rows(kv_store_krow(kv, (int64_t)page * P + off), ns,
                                               hd, kbuf);
            const int32_t *pos = mem_page_pos(pool, page) + off;
            att_ivec posv;
            for (int j = 0; j < ATT_TILE; j++) posv[j] = j < ns ? pos[j] : -1;
            for (int i = 0; i < hd; i++)
                for (int j = 0; j < ATT_TILE; j++) kt[i][j] = j < ns ? K[(size_t)j * hd + i] : 0.0f;
            for (int k = 0; k < nr; k++) {
                int r = r0 + k, t = r / G, g = r % G;
                const float *q = q0 + (size_t)t * q_stride + (size_t)g * hd;
                att_vec sv = {0};
                for (int i = 0; i < hd; i++) sv += q[i] * kt[i];
                att_ivec ok = (posv >= 0) & (posv <= qpos[t]) & (jv < ns);
                sv = att_select(ok, sv * scale, neg_inf);
                for (int j = 0; j < ATT_TILE; j++)
                    if (sv[j] > mx[k]) mx[k] = sv[j];
                sc[(size_t)k * max_tiles + nt] = sv;
            }
            tile_slot[nt] = base;
            base += ns;
        }
        tile_slot[nt] = n;
        for (int k = 0; k < nr; k++) {
            if (mx[k] == -INFINITY) continue;
            att_vec *row = sc + (size_t)k * max_tiles;
            float *pr = probs + (size_t)((r0 + k) / G) * n;
            double sum = 0.0;
            for (int b = 0; b < nt; b++) {
                row[b] = att_exp_nonpos(row[b] - mx[k]);
                for (int j = 0; j < ATT_TILE; j++) sum += row[b][j];
            }
            float w = (float)(1.0 / (sum * G));
            for (int b = 0; b < nt; b++)
                for (int j = 0; j < tile_slot[b + 1] - tile_slot[b]; j++)
                    pr[tile_slot[b] + j] += row[b][j] * w;
        }
    }
done:
    free(sc);
    free(tile_slot);
    free(kt);
    free(kbuf);
}

/* Feed attention-based policies: for every sequence with an observer, the probabilities of its
 * observed queries over each KV head's stream of layer l. */
static int observe_layer(fwd_state *st, const model_config *c, mem_pool *pool, const kv_store *kv,
                         const kvs_plan *p, const fwd_seq *seqs, int l)
{
    const int hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, G = Hq / Hkv;
    const int QKV = (Hq + 2 * Hkv) * hd, L = c->n_layers;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int s = 0; s < p->S; s++) {
        const fwd_seq *q = &seqs[s];
        const kvs_seq_info *si = &p->seq[s];
        if (!q->observe || si->n_obs <= 0) continue;
        const int t0 = si->tok0 + si->obs0, n_q = si->n_obs;
        float *probs[64];
        int rc = 0;
        if (Hkv > 64) return kvs_error(KVS_EUNSUPPORTED, "more than 64 KV heads");
        for (int h = 0; h < Hkv; h++) {
            const kvs_stream_info *info = &p->stream[((size_t)s * L + l) * Hkv + h];
            probs[h] = malloc((size_t)n_q * (info->n_slots > 0 ? info->n_slots : 1) * sizeof(float));
            if (!probs[h]) rc = KVS_ENOMEM;
        }
        if (!rc) {
#pragma omp parallel for schedule(dynamic, 1)
            for (int h = 0; h < Hkv; h++) {
                const kvs_stream_info *info = &p->stream[((size_t)s * L + l) * Hkv + h];
                attention_probs(pool, kv, p->pt + info->pt_off, info->n_slots,
                                st->qkv + (size_t)t0 * QKV + (size_t)h * G * hd, (size_t)QKV,
                                p->pos + t0, n_q, G, hd, scale, probs[h]);
            }
            for (int h = 0; h < Hkv && !rc; h++)
                rc = q->observe(q->observe_ctx, pool, &q->kv->streams[l * Hkv + h], l, h,
                                probs[h], n_q);
        } else {
            kvs_error(rc, "cannot allocate attention statistics");
        }
        for (int h = 0; h < Hkv; h++) free(probs[h]);
        if (rc) return rc;
    }
    return 0;
}

int fwd_cpu(fwd_state *st, const model *m, mem_pool *pool, kv_store *kv, const kvs_plan *p,
            const fwd_seq *seqs, float **logits, int *n_rows)
{
    const model_config *c = &m->cfg;
    const int D = c->d_model, hd = c->head_dim, half = hd / 2, Hq = c->n_heads;
    const int Hkv = c->n_kv_heads, G = Hq / Hkv, F = c->d_ff, L = c->n_layers;
    const int QKV = (Hq + 2 * Hkv) * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    memset(&st->timing, 0, sizeof st->timing);
    double t0 = kvs_now(), t1;

    if (hd > ATT_MAX_HD)
        return kvs_error(KVS_EUNSUPPORTED, "head dim %d is larger than %d", hd, ATT_MAX_HD);
    if (G * ATT_QBLOCK > 256) /* KVS_PLAN_MAX_GROUP keeps this true */
        return kvs_error(KVS_EUNSUPPORTED, "GQA group of %d query heads is too large", G);
    if (kv->head_dim != hd)
        return kvs_error(KVS_EINVAL, "KV store head dim %d != model %d", kv->head_dim, hd);
    const int T = p->T, R = p->R, S = p->S;
    int rc;
    if ((rc = ensure_tokens(st, c, T)) || (rc = ensure_rows(st, c, R))) return rc;

    /* Embeddings, positions, RoPE tables. */
    for (int t = 0; t < T; t++) {
        if ((rc = wmat_row(&m->embd, p->tok[t], st->x + (size_t)t * D))) return rc;
        st->tok_pos[t] = p->pos[t];
    }
#pragma omp parallel for schedule(static) if (T > 8)
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double a = (double)st->tok_pos[t] * st->inv_freq[i];
            st->rope_cos[(size_t)t * half + i] = (float)cos(a);
            st->rope_sin[(size_t)t * half + i] = (float)sin(a);
        }
    t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;

    for (int l = 0; l < L; l++) {
        const model_layer *ly = &m->layers[l];
        rmsnorm_rows(st->h, st->x, ly->attn_norm, T, D, c->rms_eps);
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;
        if ((rc = wmat_mul(&ly->qkv, st->qkv, st->h, T, 0.0f, &st->wsc))) return rc;
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
        /* [issue 12: model families] Q/K/V biases (qwen2), before RoPE. */
        if (ly->bqkv) {
#pragma omp parallel for schedule(static) if (T > 1)
            for (int t = 0; t < T; t++) {
                float *row = st->qkv + (size_t)t * QKV;
                for (int i = 0; i < QKV; i++) row[i] += ly->bqkv[i];
            }
        }

        /* RoPE on every query and key head. */
#pragma omp parallel for schedule(static) if (T > 1)
        for (int t = 0; t < T; t++) {
            float *row = st->qkv + (size_t)t * QKV;
            const float *cs = st->rope_cos + (size_t)t * half, *sn = st->rope_sin + (size_t)t * half;
            for (int h = 0; h < Hq + Hkv; h++)
                rope_apply(row + (size_t)h * hd, cs, sn, half, c->rope_type);
        }
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;

        /* Write K/V (with the policy's score) into the slots the plan assigned. */
        const int32_t *slot_map = p->slot_map + (size_t)l * T * Hkv;
        for (int s = 0; s < S; s++) {
            const fwd_seq *q = &seqs[s];
            const int tb = p->seq[s].tok0, n = p->seq[s].n_tok;
            if (q->queries)
                for (int h = 0; h < Hq; h++) {
                    for (int i = 0; i < n; i++)
                        memcpy(st->key_buf + (size_t)i * hd,
                               st->qkv + (size_t)(tb + i) * QKV + (size_t)h * hd,
                               (size_t)hd * sizeof(float));
                    q->queries(q->queries_ctx, l, h, st->key_buf, n);
                }
            for (int h = 0; h < Hkv; h++) {
                if (q->score_keys) {
                    for (int i = 0; i < n; i++) {
                        memcpy(st->key_buf + (size_t)i * hd,
                               st->qkv + (size_t)(tb + i) * QKV + (size_t)(Hq + h) * hd,
                               (size_t)hd * sizeof(float));
                        st->pos_buf[i] = st->tok_pos[tb + i];
                    }
                    q->score_keys(q->score_ctx, l, h, st->key_buf, st->pos_buf, n, st->score_buf);
                }
                for (int i = 0; i < n; i++) {
                    const float *row = st->qkv + (size_t)(tb + i) * QKV;
                    int32_t g = slot_map[(size_t)(tb + i) * Hkv + h];
                    kv_store_write(kv, g, row + (size_t)(Hq + h) * hd,
                                   row + (size_t)(Hq + Hkv + h) * hd);
                    pool->score[g] = q->score_keys ? st->score_buf[i] : 0.0f;
                }
            }
        }
        t1 = kvs_now(); st->timing.kv_write += t1 - t0; t0 = t1;

        /* Attention: one task per (sequence, kv head, block of query tokens). */
        int n_tasks = 0;
        int64_t att_work = 0; /* query rows x slots: small decode steps stay on this thread */
        for (int s = 0; s < S; s++) {
            n_tasks += Hkv * ((p->seq[s].n_tok + ATT_QBLOCK - 1) / ATT_QBLOCK);
            att_work += (int64_t)p->seq[s].n_tok * Hq * p->stream[((size_t)s * L + l) * Hkv].n_slots;
        }
#pragma omp parallel for schedule(dynamic, 1) if (att_work >= ATT_PAR_WORK)
        for (int task = 0; task < n_tasks; task++) {
            int s = 0, rem = task;
            for (;;) {
                int nb = (p->seq[s].n_tok + ATT_QBLOCK - 1) / ATT_QBLOCK;
                if (rem < nb * Hkv) break;
                rem -= nb * Hkv;
                s++;
            }
            int h = rem % Hkv, blk = rem / Hkv;
            int ts = p->seq[s].tok0 + blk * ATT_QBLOCK;
            int nq = p->seq[s].n_tok - blk * ATT_QBLOCK;
            if (nq > ATT_QBLOCK) nq = ATT_QBLOCK;
            const kvs_stream_info *info = &p->stream[((size_t)s * L + l) * Hkv + h];
            attend_stream(pool, kv, p->pt + info->pt_off, info->n_slots,
                          st->qkv + (size_t)ts * QKV + (size_t)h * G * hd, (size_t)QKV,
                          st->att + (size_t)ts * Hq * hd + (size_t)h * G * hd, (size_t)Hq * hd,
                          st->tok_pos + ts, nq, G, hd, scale);
        }
        if ((rc = observe_layer(st, c, pool, kv, p, seqs, l))) return rc;
        t1 = kvs_now(); st->timing.attention += t1 - t0; t0 = t1;

        /* x += att @ Wo^T */
        if ((rc = wmat_mul(&ly->o, st->x, st->att, T, 1.0f, &st->wsc))) return rc;
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
        rmsnorm_rows(st->h, st->x, ly->ffn_norm, T, D, c->rms_eps);
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;
        if ((rc = wmat_mul(&ly->gate_up, st->gu, st->h, T, 0.0f, &st->wsc))) return rc;
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
#pragma omp parallel for schedule(static) if (T > 1)
        for (int t = 0; t < T; t++) {
            const float *g = st->gu + (size_t)t * 2 * F, *u = g + F;
            float *a = st->act + (size_t)t * F;
            for (int i = 0; i < F; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;
        /* x += act @ Wdown^T */
        if ((rc = wmat_mul(&ly->down, st->x, st->act, T, 1.0f, &st->wsc))) return rc;
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
    }

    /* Logits for the plan's rows. */
    for (int r = 0; r < R; r++)
        memcpy(st->xrows + (size_t)r * D, st->x + (size_t)p->rows[r] * D, (size_t)D * sizeof(float));
    if (R > 0) {
        rmsnorm_rows(st->xrows, st->xrows, m->output_norm, R, D, c->rms_eps);
        if ((rc = wmat_mul(&m->out, st->logits, st->xrows, R, 0.0f, &st->wsc))) return rc;
    }
    t1 = kvs_now(); st->timing.logits += t1 - t0;
    *logits = st->logits;
    *n_rows = R;
    return 0;
}
