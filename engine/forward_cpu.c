/* forward_cpu.c — fp32 llama forward on the CPU: BLAS GEMMs, OpenMP for everything else.
 *
 * Shapes (T = tokens in the step, D = d_model, hd = head_dim, Hq/Hkv = query/KV heads,
 * G = Hq/Hkv, F = d_ff, V = vocab):
 *   x [T][D] -> rmsnorm -> h [T][D] -> h @ Wqkv^T -> qkv [T][(Hq + 2 Hkv) hd]
 *   RoPE(q, k) -> append k, v into the streams -> attention -> att [T][Hq hd]
 *   x += att @ Wo^T ; h = rmsnorm(x) ; gu = h @ Wgu^T [T][2F] ; x += (silu(g) * u) @ Wdown^T
 *   logits = rmsnorm(x[rows]) @ Wout^T */
#include "forward.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

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
    /* GGML "normal" RoPE: pair (x[2i], x[2i+1]) turns by pos * base^(-2i/hd). */
    for (int i = 0; i < half; i++)
        st->inv_freq[i] = pow((double)m->cfg.rope_base, -2.0 * i / m->cfg.head_dim);
    *out = st;
    return 0;
}

void fwd_destroy(fwd_state *st)
{
    if (!st) return;
    free_buffers(st);
    kvs_free(st->xrows); kvs_free(st->logits);
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

/* Y[T][N] (+)= X[T][K] @ W[N][K]^T */
static void gemm_xwt(float *Y, const float *X, const float *W, int T, int N, int K, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, X, K, W, K, beta, Y, N);
}

static void rope_apply(float *v, const float *cs, const float *sn, int half)
{
    for (int i = 0; i < half; i++) {
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * cs[i] - b * sn[i];
        v[2 * i + 1] = a * sn[i] + b * cs[i];
    }
}

/* Attention of query rows of one (sequence, kv_head) over its stream, online softmax page by
 * page. q: n_q tokens x G heads, rows at q0 + (t * q_stride) + g * hd; out likewise. */
static void attend_stream(const mem_pool *pool, const mem_stream *s, const float *q0,
                          size_t q_stride, float *out0, size_t out_stride,
                          const int32_t *qpos, int n_q, int G, int hd, float scale)
{
    enum { MAXR = ATT_QBLOCK * 16 };
    const int P = pool->page_slots;
    const int R = n_q * G;
    float m_run[MAXR], l_run[MAXR];
    float *acc = out0; /* accumulate straight into the output rows */
    for (int r = 0; r < R; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.0f;
        float *a = acc + (size_t)(r / G) * out_stride + (size_t)(r % G) * hd;
        memset(a, 0, (size_t)hd * sizeof(float));
    }
    float sc[1024];
    const int n_pages_used = (s->n_slots + P - 1) / P;
    for (int pi = 0; pi < n_pages_used; pi++) {
        int32_t page = s->pages[pi];
        const float *K = mem_page_k(pool, page), *V = mem_page_v(pool, page);
        const int32_t *pos = mem_page_pos(pool, page);
        int ns = s->n_slots - pi * P;
        if (ns > P) ns = P;
        for (int r = 0; r < R; r++) {
            int t = r / G, g = r % G;
            const float *q = q0 + (size_t)t * q_stride + (size_t)g * hd;
            float *a = acc + (size_t)t * out_stride + (size_t)g * hd;
            int32_t qp = qpos[t];
            float mx = m_run[r];
            int any = 0;
            for (int j = 0; j < ns; j++) {
                if (pos[j] < 0 || pos[j] > qp) { sc[j] = -INFINITY; continue; }
                const float *k = K + (size_t)j * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += q[i] * k[i];
                sc[j] = d * scale;
                if (sc[j] > mx) mx = sc[j];
                any = 1;
            }
            if (!any) continue;
            float corr = expf(m_run[r] - mx); /* exp(-inf) = 0 on the first page */
            float l = l_run[r] * corr;
            if (corr != 1.0f)
                for (int i = 0; i < hd; i++) a[i] *= corr;
            for (int j = 0; j < ns; j++) {
                if (sc[j] == -INFINITY) continue;
                float p = expf(sc[j] - mx);
                l += p;
                const float *v = V + (size_t)j * hd;
                for (int i = 0; i < hd; i++) a[i] += p * v[i];
            }
            m_run[r] = mx;
            l_run[r] = l;
        }
    }
    for (int r = 0; r < R; r++) {
        float *a = acc + (size_t)(r / G) * out_stride + (size_t)(r % G) * hd;
        float inv = l_run[r] > 0.0f ? 1.0f / l_run[r] : 0.0f;
        for (int i = 0; i < hd; i++) a[i] *= inv;
    }
}

/* Attention probabilities of n_q query tokens (G heads each) over a stream's slots, averaged
 * over the G heads: probs[n_q][n_slots], 0 for holes and masked slots. A second pass over the
 * keys, paid only by attention-based policies. */
static void attention_probs(const mem_pool *pool, const mem_stream *s, const float *q0,
                            size_t q_stride, const int32_t *qpos, int n_q, int G, int hd,
                            float scale, float *probs)
{
    const int P = pool->page_slots, n = s->n_slots;
    float *row = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    memset(probs, 0, (size_t)n_q * n * sizeof(float));
    if (!row) return;
    for (int t = 0; t < n_q; t++) {
        float *pr = probs + (size_t)t * n;
        for (int g = 0; g < G; g++) {
            const float *q = q0 + (size_t)t * q_stride + (size_t)g * hd;
            float mx = -INFINITY;
            for (int slot = 0; slot < n; slot++) {
                int32_t page = s->pages[slot / P], off = slot % P;
                int32_t p = mem_page_pos(pool, page)[off];
                if (p < 0 || p > qpos[t]) { row[slot] = -INFINITY; continue; }
                const float *k = mem_page_k(pool, page) + (size_t)off * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++) d += q[i] * k[i];
                row[slot] = d * scale;
                if (row[slot] > mx) mx = row[slot];
            }
            if (mx == -INFINITY) continue;
            double sum = 0.0;
            for (int slot = 0; slot < n; slot++)
                if (row[slot] != -INFINITY) sum += (row[slot] = expf(row[slot] - mx));
            float w = (float)(1.0 / (sum * G));
            for (int slot = 0; slot < n; slot++)
                if (row[slot] != -INFINITY) pr[slot] += row[slot] * w;
        }
    }
    free(row);
}

/* Feed attention-based policies: for every sequence with an observer, the probabilities of its
 * observed queries over each KV head's stream of layer l. */
static int observe_layer(fwd_state *st, const model_config *c, mem_pool *pool,
                         const fwd_seq *seqs, int n_seqs, int l)
{
    const int hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, G = Hq / Hkv;
    const int QKV = (Hq + 2 * Hkv) * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int s = 0, tb = 0; s < n_seqs; tb += seqs[s].n_tokens, s++) {
        const fwd_seq *q = &seqs[s];
        if (!q->observe) continue;
        int i0 = 0;
        while (i0 < q->n_tokens && st->tok_pos[tb + i0] < q->observe_from) i0++;
        int n_q = q->n_tokens - i0;
        if (n_q <= 0) continue;
        float *probs[64];
        int rc = 0;
        if (Hkv > 64) return kvs_error(KVS_EUNSUPPORTED, "more than 64 KV heads");
        for (int h = 0; h < Hkv; h++) {
            const mem_stream *str = &q->kv->streams[l * Hkv + h];
            probs[h] = malloc((size_t)n_q * (str->n_slots > 0 ? str->n_slots : 1) * sizeof(float));
            if (!probs[h]) rc = KVS_ENOMEM;
        }
        if (!rc) {
#pragma omp parallel for schedule(dynamic, 1)
            for (int h = 0; h < Hkv; h++)
                attention_probs(pool, &q->kv->streams[l * Hkv + h],
                                st->qkv + (size_t)(tb + i0) * QKV + (size_t)h * G * hd,
                                (size_t)QKV, st->tok_pos + tb + i0, n_q, G, hd, scale, probs[h]);
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

int fwd_cpu(fwd_state *st, const model *m, mem_pool *pool, const fwd_seq *seqs, int n_seqs,
            float **logits, int *n_rows)
{
    const model_config *c = &m->cfg;
    const int D = c->d_model, hd = c->head_dim, half = hd / 2, Hq = c->n_heads;
    const int Hkv = c->n_kv_heads, G = Hq / Hkv, F = c->d_ff;
    const int QKV = (Hq + 2 * Hkv) * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    memset(&st->timing, 0, sizeof st->timing);
    double t0 = kvs_now(), t1;

    if (n_seqs <= 0) return kvs_error(KVS_EINVAL, "empty batch");
    if (pool->head_dim != hd) return kvs_error(KVS_EINVAL, "KV pool head dim %d != model %d",
                                               pool->head_dim, hd);
    if (G * ATT_QBLOCK > 256)
        return kvs_error(KVS_EUNSUPPORTED, "GQA group of %d query heads is too large", G);
    /* Validate the batch and count tokens / logit rows. */
    int T = 0, R = 0;
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq *q = &seqs[s];
        if (q->n_tokens < 1) return kvs_error(KVS_EINVAL, "sequence %d has no tokens", s);
        if (q->pos0 < 0 || q->pos0 > INT32_MAX - q->n_tokens)
            return kvs_error(KVS_EINVAL, "sequence %d: bad position %d", s, q->pos0);
        if (!q->kv || q->kv->n_layers != c->n_layers || q->kv->n_kv_heads != Hkv)
            return kvs_error(KVS_EINVAL, "sequence %d: KV streams do not match the model", s);
        for (int i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= c->n_vocab)
                return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary [0, %d)",
                                 q->tokens[i], c->n_vocab);
        for (int l = 0; l < c->n_layers; l++)
            for (int h = 0; h < Hkv; h++)
                if (mem_stream_pages_needed(pool, &q->kv->streams[l * Hkv + h], q->n_tokens))
                    return kvs_error(KVS_ENOMEM, "sequence %d: KV stream has no room for %d "
                                     "tokens (reserve pages first)", s, q->n_tokens);
        if (T > INT32_MAX - q->n_tokens) return kvs_error(KVS_EINVAL, "batch too large");
        T += q->n_tokens;
        R += q->logits == FWD_LOGITS_ALL ? q->n_tokens : q->logits == FWD_LOGITS_LAST ? 1 : 0;
    }
    int rc;
    if ((rc = ensure_tokens(st, c, T)) || (rc = ensure_rows(st, c, R))) return rc;

    /* Embeddings, positions, RoPE tables. */
    for (int s = 0, t = 0; s < n_seqs; s++)
        for (int i = 0; i < seqs[s].n_tokens; i++, t++) {
            memcpy(st->x + (size_t)t * D, m->tok_embd + (size_t)seqs[s].tokens[i] * D,
                   (size_t)D * sizeof(float));
            st->tok_pos[t] = seqs[s].pos0 + i;
        }
#pragma omp parallel for schedule(static) if (T > 8)
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double a = (double)st->tok_pos[t] * st->inv_freq[i];
            st->rope_cos[(size_t)t * half + i] = (float)cos(a);
            st->rope_sin[(size_t)t * half + i] = (float)sin(a);
        }
    t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;

    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *ly = &m->layers[l];
        rmsnorm_rows(st->h, st->x, ly->attn_norm, T, D, c->rms_eps);
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;
        gemm_xwt(st->qkv, st->h, ly->wqkv, T, QKV, D, 0.0f);
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;

        /* RoPE on every query and key head. */
#pragma omp parallel for schedule(static) if (T > 1)
        for (int t = 0; t < T; t++) {
            float *row = st->qkv + (size_t)t * QKV;
            const float *cs = st->rope_cos + (size_t)t * half, *sn = st->rope_sin + (size_t)t * half;
            for (int h = 0; h < Hq + Hkv; h++) rope_apply(row + (size_t)h * hd, cs, sn, half);
        }
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;

        /* Append K/V (with the policy's score) into each sequence's streams of this layer. */
        for (int s = 0, tb = 0; s < n_seqs; tb += seqs[s].n_tokens, s++) {
            const fwd_seq *q = &seqs[s];
            if (q->queries)
                for (int h = 0; h < Hq; h++) {
                    for (int i = 0; i < q->n_tokens; i++)
                        memcpy(st->key_buf + (size_t)i * hd,
                               st->qkv + (size_t)(tb + i) * QKV + (size_t)h * hd,
                               (size_t)hd * sizeof(float));
                    q->queries(q->queries_ctx, l, h, st->key_buf, q->n_tokens);
                }
            for (int h = 0; h < Hkv; h++) {
                mem_stream *str = &q->kv->streams[l * Hkv + h];
                if (q->score_keys) {
                    for (int i = 0; i < q->n_tokens; i++) {
                        memcpy(st->key_buf + (size_t)i * hd,
                               st->qkv + (size_t)(tb + i) * QKV + (size_t)(Hq + h) * hd,
                               (size_t)hd * sizeof(float));
                        st->pos_buf[i] = st->tok_pos[tb + i];
                    }
                    q->score_keys(q->score_ctx, l, h, st->key_buf, st->pos_buf, q->n_tokens,
                                  st->score_buf);
                }
                for (int i = 0; i < q->n_tokens; i++) {
                    const float *row = st->qkv + (size_t)(tb + i) * QKV;
                    int32_t slot = mem_stream_append(pool, str, st->tok_pos[tb + i],
                                                     row + (size_t)(Hq + h) * hd,
                                                     row + (size_t)(Hq + Hkv + h) * hd,
                                                     q->score_keys ? st->score_buf[i] : 0.0f);
                    if (slot < 0) return kvs_error(KVS_ENOMEM, "KV stream full while writing "
                                                   "layer %d (reserve pages first)", l);
                }
            }
        }
        t1 = kvs_now(); st->timing.kv_write += t1 - t0; t0 = t1;

        /* Attention: one task per (sequence, kv head, block of query tokens). */
        int n_tasks = 0;
        for (int s = 0; s < n_seqs; s++)
            n_tasks += Hkv * ((seqs[s].n_tokens + ATT_QBLOCK - 1) / ATT_QBLOCK);
#pragma omp parallel for schedule(dynamic, 1)
        for (int task = 0; task < n_tasks; task++) {
            int s = 0, rem = task, tb = 0;
            for (;;) {
                int nb = (seqs[s].n_tokens + ATT_QBLOCK - 1) / ATT_QBLOCK;
                if (rem < nb * Hkv) break;
                rem -= nb * Hkv;
                tb += seqs[s].n_tokens;
                s++;
            }
            int h = rem % Hkv, blk = rem / Hkv;
            int ts = tb + blk * ATT_QBLOCK;
            int nq = seqs[s].n_tokens - blk * ATT_QBLOCK;
            if (nq > ATT_QBLOCK) nq = ATT_QBLOCK;
            attend_stream(pool, &seqs[s].kv->streams[l * Hkv + h],
                          st->qkv + (size_t)ts * QKV + (size_t)h * G * hd, (size_t)QKV,
                          st->att + (size_t)ts * Hq * hd + (size_t)h * G * hd, (size_t)Hq * hd,
                          st->tok_pos + ts, nq, G, hd, scale);
        }
        if ((rc = observe_layer(st, c, pool, seqs, n_seqs, l))) return rc;
        t1 = kvs_now(); st->timing.attention += t1 - t0; t0 = t1;

        gemm_xwt(st->x, st->att, ly->wo, T, D, Hq * hd, 1.0f); /* x += att @ Wo^T */
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
        rmsnorm_rows(st->h, st->x, ly->ffn_norm, T, D, c->rms_eps);
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;
        gemm_xwt(st->gu, st->h, ly->w_gate_up, T, 2 * F, D, 0.0f);
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
#pragma omp parallel for schedule(static) if (T > 1)
        for (int t = 0; t < T; t++) {
            const float *g = st->gu + (size_t)t * 2 * F, *u = g + F;
            float *a = st->act + (size_t)t * F;
            for (int i = 0; i < F; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        t1 = kvs_now(); st->timing.other += t1 - t0; t0 = t1;
        gemm_xwt(st->x, st->act, ly->w_down, T, D, F, 1.0f); /* x += act @ Wdown^T */
        t1 = kvs_now(); st->timing.gemm += t1 - t0; t0 = t1;
    }

    /* Logits for the requested rows. */
    int r = 0;
    for (int s = 0, tb = 0; s < n_seqs; tb += seqs[s].n_tokens, s++) {
        if (seqs[s].logits == FWD_LOGITS_ALL) {
            memcpy(st->xrows + (size_t)r * D, st->x + (size_t)tb * D,
                   (size_t)seqs[s].n_tokens * D * sizeof(float));
            r += seqs[s].n_tokens;
        } else if (seqs[s].logits == FWD_LOGITS_LAST) {
            memcpy(st->xrows + (size_t)r * D, st->x + (size_t)(tb + seqs[s].n_tokens - 1) * D,
                   (size_t)D * sizeof(float));
            r++;
        }
    }
    if (R > 0) {
        rmsnorm_rows(st->xrows, st->xrows, m->output_norm, R, D, c->rms_eps);
        gemm_xwt(st->logits, st->xrows, m->output, R, c->n_vocab, D, 0.0f);
    }
    t1 = kvs_now(); st->timing.logits += t1 - t0;
    *logits = st->logits;
    *n_rows = R;
    return 0;
}
