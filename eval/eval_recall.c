/* eval_recall.c — `kvsieve eval recall`: how much of the attention each policy's kept set
 * would catch. A diagnostic for "why does policy X lose perplexity", not a quality score.
 *
 * The text is run once through the full cache with every query's attention observed. For the
 * queries of the second half (positions t in [N/2, N)) and every KV head, it computes the
 * share of the query's attention (averaged over the head's GQA group) that falls on the
 * keys each policy would hold at that moment under budget B and window W, the setting of
 * `eval ppl` with --chunk 1:
 *   oracle      the B keys with the most attention from this very query (an upper bound)
 *   streaming   the first 4 tokens and the most recent B - 4
 *   knorm, qfilters, qfilters-self
 *               the most recent W and the B - W highest-scoring older keys. With a score
 *               that depends on the key alone, evicting the lowest non-window score whenever
 *               a head is over budget keeps exactly those (induction over the stream).
 *               qfilters uses the policy's filters file; qfilters-self is calibrated here on
 *               the first half of this same text (its queries at positions < N/2), to see
 *               what a calibration text closer to the evaluation text would give.
 *   self-preRoPE like qfilters-self, but queries and keys are turned back to before RoPE
 *               (each by its own position) for calibration and scoring: pre- vs post-RoPE
 *               filters on the same calibration data.
 * Plus where attention goes: the share on the last 32 and last 128 positions and on the first
 * 4 tokens. And, for the first (budget, window), what the kept set does to the attention
 * output: the relative error |o_K - o| / |o| of the value average over the kept keys K
 * (their attention renormalised) against the full one, o = sum_p a_p v_p with a the group's
 * mean attention (so o is the mean of the group's head outputs). Mass says how much
 * attention a policy keeps; this says whether what it drops mattered to the output. Attention here is the full cache's: what each kept set would catch if the past
 * had not been compressed (the usual oracle analysis; no feedback of eviction on queries). */
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "memory/policy.h"
#include "policies/qfilters.h"

enum { R_ORACLE, R_STREAM, R_KNORM, R_QF, R_QFSELF, R_QFPRE, R_N };
static const char *const r_name[R_N] = {"oracle", "streaming", "knorm", "qfilters",
                                        "qfilters-self", "self-preRoPE"};
#define RECALL_SINKS 4
#define ATT_MAX_UNROT 1024 /* largest head dim */

typedef struct {
    int n_pos, half, n_kv_heads;
    float *rows;      /* [stream][t - half][n_pos]: attention of query t (second half) */
    qf_calib *cal;    /* self-calibration on the first half */
    qf_calib *cal_pre; /* the same on queries turned back to before RoPE */
    const double *inv_freq; /* [hd/2] RoPE frequencies */
    float *unrot;     /* [chunk][hd] scratch */
    int hd, pos0, cal_on, rc;
} recall_sink;

static int on_attention(void *ctx, mem_pool *pool, mem_stream *s, int layer, int kv_head,
                        const float *probs, int n_q)
{
    recall_sink *rs = ctx;
    const int P = pool->page_slots;
    /* The observed queries are the step's last n_q tokens; the newest sees every slot. */
    int32_t last = -1;
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t p = mem_page_pos(pool, mem_slot_page(pool, s, slot))[slot & (P - 1)];
        if (p > last) last = p;
    }
    const size_t stream = (size_t)layer * rs->n_kv_heads + kv_head;
    for (int q = 0; q < n_q; q++) {
        int32_t t = last - (n_q - 1 - q);
        if (t < rs->half || t >= rs->n_pos) continue;
        float *row = rs->rows + (stream * (size_t)(rs->n_pos - rs->half) + (t - rs->half)) *
                                    (size_t)rs->n_pos;
        for (int32_t slot = 0; slot < s->n_slots; slot++) {
            int32_t p = mem_page_pos(pool, mem_slot_page(pool, s, slot))[slot & (P - 1)];
            if (p >= 0 && p < rs->n_pos) row[p] = probs[(size_t)q * s->n_slots + slot];
        }
    }
    return 0;
}

/* out = x turned back by RoPE's angle at position pos (GGML pairs (x[2i], x[2i+1]), angle
 * pos * inv_freq[i], as engine/forward_cpu.c applies it). */
static void unrotate(float *out, const float *x, int32_t pos, const double *inv_freq, int hd)
{
    for (int i = 0; i < hd / 2; i++) {
        double a = (double)pos * inv_freq[i], c = cos(a), s = sin(a);
        double x0 = x[2 * i], x1 = x[2 * i + 1];
        out[2 * i] = (float)(x0 * c + x1 * s);
        out[2 * i + 1] = (float)(-x0 * s + x1 * c);
    }
}

static void on_queries(void *ctx, int layer, int head, const float *q, int n)
{
    recall_sink *rs = ctx;
    if (!rs->cal_on || rs->rc) return;
    int rc = qf_calib_add_queries(rs->cal, layer, head, q, n);
    for (int i = 0; i < n && !rc; i++)
        unrotate(rs->unrot + (size_t)i * rs->hd, q + (size_t)i * rs->hd, rs->pos0 + i,
                 rs->inv_freq, rs->hd);
    if (!rc) rc = qf_calib_add_queries(rs->cal_pre, layer, head, rs->unrot, n);
    if (rc) rs->rc = rc;
}

/* Min-heap of positions by score (the kept older keys of one static-score policy). */
typedef struct { int32_t *pos; int n; const float *score; } heap;

static int heap_less(const heap *h, int a, int b)
{
    float sa = h->score[h->pos[a]], sb = h->score[h->pos[b]];
    return sa < sb || (sa == sb && h->pos[a] < h->pos[b]);
}

static void heap_swap(heap *h, int a, int b)
{
    int32_t t = h->pos[a];
    h->pos[a] = h->pos[b];
    h->pos[b] = t;
}

static void heap_push(heap *h, int32_t p)
{
    int i = h->n++;
    h->pos[i] = p;
    while (i > 0 && heap_less(h, i, (i - 1) / 2)) {
        heap_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_pop(heap *h)
{
    h->pos[0] = h->pos[--h->n];
    for (int i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && heap_less(h, l, m)) m = l;
        if (r < h->n && heap_less(h, r, m)) m = r;
        if (m == i) break;
        heap_swap(h, i, m);
        i = m;
    }
}

typedef struct { float a; int32_t pos; } att_pos;

static int desc_att(const void *a, const void *b)
{
    float x = ((const att_pos *)a)->a, y = ((const att_pos *)b)->a;
    return (x < y) - (x > y);
}

/* What the output loses by keeping only the keys at kept[0..n): |o_K - o| / |o|. */
typedef struct {
    const float *V;     /* [n_pos][hd] values by position */
    const float *ofull; /* [queries][hd] full outputs */
    int hd;
} out_ctx;

static double output_err(const out_ctx *oc, const float *row, int t_idx, const int32_t *kept,
                         int n)
{
    double acc[ATT_MAX_UNROT] = {0}, mass = 0;
    for (int i = 0; i < n; i++) {
        const float a = row[kept[i]], *v = oc->V + (size_t)kept[i] * oc->hd;
        mass += a;
        for (int d = 0; d < oc->hd; d++) acc[d] += (double)a * v[d];
    }
    const float *o = oc->ofull + (size_t)t_idx * oc->hd;
    double e2 = 0, o2 = 0;
    for (int d = 0; d < oc->hd; d++) {
        double x = mass > 0 ? acc[d] / mass : 0;
        e2 += (x - o[d]) * (x - o[d]);
        o2 += (double)o[d] * o[d];
    }
    return o2 > 0 ? sqrt(e2 / o2) : 0;
}

/* Recall of one static-score policy for one stream: mean over t of the attention on the most
 * recent W positions and the top (B - W) older ones by score. */
static double static_recall(const float *rows, const float *score, int n_pos, int half, int B,
                            int W, int32_t *heap_buf, const out_ctx *oc, int32_t *kept,
                            double *err)
{
    double err_sum = 0;
    heap h = {heap_buf, 0, score};
    int keep_old = B - W;
    double total = 0;
    int next = 0; /* next position to become "older than the window" */
    for (int t = half; t < n_pos; t++) {
        const float *row = rows + (size_t)(t - half) * n_pos;
        for (; next <= t - W; next++) {
            if (keep_old <= 0) continue;
            heap_push(&h, next);
            if (h.n > keep_old) heap_pop(&h);
        }
        double m = 0;
        int nk = 0;
        for (int i = 0; i < h.n; i++) m += row[kept[nk++] = h.pos[i]];
        for (int p = t - W + 1 > 0 ? t - W + 1 : 0; p <= t; p++) m += row[kept[nk++] = p];
        total += m;
        if (oc) err_sum += output_err(oc, row, t - half, kept, nk);
    }
    if (err) *err = err_sum / (n_pos - half);
    return total / (n_pos - half);
}

int eval_recall(const eval_common *c, const eval_recall_opts *o)
{
    int rc = 1;
    kvs_engine *e = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    engine_seq *s = NULL;
    recall_sink rs = {0};
    qf_filters *file_f = NULL;
    float *self_u = NULL, *pre_u = NULL, *frac = NULL, *scores = NULL, *vbuf = NULL, *ofull = NULL;
    att_pos *srt = NULL;
    int32_t *kept = NULL;
    double *res = NULL;
    int32_t *heap_buf = NULL;
    FILE *csv = NULL;
    size_t len;
    if (eval_read_file(c->cmd, o->text_path, &text, &len)) return 1;
    if (eval_engine_open(c, &e)) goto done;
    const model_config *cfg = &e->m->cfg;
    const int L = cfg->n_layers, Hkv = cfg->n_kv_heads, hd = cfg->head_dim;
    if (hd > ATT_MAX_UNROT) {
        fprintf(stderr, "kvsieve %s: head dim %d is larger than %d\n", c->cmd, hd, ATT_MAX_UNROT);
        goto done;
    }
    int N;
    if (eval_tokenize(e, text, len, 1, &ids, &N)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    if (o->max_tokens > 0 && N > o->max_tokens) N = o->max_tokens;
    if (N > cfg->n_ctx) N = cfg->n_ctx;
    int max_b = 0;
    for (int b = 0; b < o->n_budgets; b++) max_b = KVS_MAX(max_b, o->budgets[b]);
    for (int b = 0; b < o->n_budgets; b++)
        for (int w = 0; w < o->n_windows; w++)
            if (o->windows[w] >= o->budgets[b] || o->budgets[b] <= RECALL_SINKS) {
                fprintf(stderr, "kvsieve %s: budget %d must exceed the window %d and the %d "
                        "sinks\n", c->cmd, o->budgets[b], o->windows[w], RECALL_SINKS);
                rc = 2;
                goto done;
            }
    if (N < 2 * (max_b + 1)) {
        fprintf(stderr, "kvsieve %s: %s gives %d tokens; need at least %d (twice the largest "
                "budget + 1) so that every measured query is over budget\n", c->cmd,
                o->text_path, N, 2 * (max_b + 1));
        rc = 2;
        goto done;
    }
    const char *filters_path = o->filters_path;
    if (!filters_path) {
        fprintf(stderr, "kvsieve %s: no filters file (make one with scripts/make-filters or "
                "pass --policy-args qfilters:filters=FILE)\n", c->cmd);
        rc = 2;
        goto done;
    }
    pol_model_info mi = {.model_name = cfg->name, .n_layers = L, .n_kv_heads = Hkv,
                         .head_dim = hd, .n_heads = cfg->n_heads};
    if (qf_filters_load(filters_path, &mi, &file_f)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    /* [issue 12] unrotate() below knows adjacent-pair RoPE without rope_freqs only. */
    if (cfg->rope_type != ARCH_ROPE_NORM || cfg->rope_freqs) {
        fprintf(stderr, "kvsieve %s: the pre-RoPE analysis supports adjacent-pair RoPE without "
                "rope_freqs only (this '%s' model has %s RoPE%s)\n", c->cmd, cfg->arch->name,
                arch_rope_name(cfg->rope_type), cfg->rope_freqs ? " with rope_freqs" : "");
        rc = 2;
        goto done;
    }
    rs.n_pos = N;
    rs.half = N / 2;
    rs.n_kv_heads = Hkv;
    const size_t n_streams = (size_t)L * Hkv, n_rows = (size_t)(N - rs.half);
    rs.rows = kvs_calloc(n_streams * n_rows * (size_t)N, sizeof(float));
    if (!rs.rows) {
        fprintf(stderr, "kvsieve %s: out of memory for %zu x %zu x %d attention rows (use "
                "--tokens to shorten the text)\n", c->cmd, n_streams, n_rows, N);
        goto done;
    }
    double *inv_freq = malloc((size_t)(hd / 2 + 1) * sizeof *inv_freq);
    rs.unrot = malloc((size_t)o->chunk * hd * sizeof(float));
    if (!inv_freq || !rs.unrot) {
        free(inv_freq);
        fprintf(stderr, "kvsieve %s: out of memory\n", c->cmd);
        goto done;
    }
    for (int i = 0; i < hd / 2; i++) inv_freq[i] = pow((double)cfg->rope_base, -2.0 * i / hd);
    rs.inv_freq = inv_freq;
    rs.hd = hd;
    if (qf_calib_create(L, cfg->n_heads, Hkv, hd, QF_RESERVOIR_DEFAULT, &rs.cal) ||
        qf_calib_create(L, cfg->n_heads, Hkv, hd, QF_RESERVOIR_DEFAULT, &rs.cal_pre)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    if (eval_engine_pages(c, e, (int64_t)n_streams * ((N + e->pool->page_slots - 1) /
                                                      e->pool->page_slots) + 16))
        goto done;
    if (engine_seq_create(e, &s)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    fprintf(stderr, "%s: %d tokens of %s; attention of the %d queries at positions %d..%d, "
            "self-calibration on positions 0..%d\n", c->cmd, N, o->text_path, N - rs.half,
            rs.half, N - 1, rs.half - 1);
    eval_progress pg;
    eval_progress_init(&pg, c->cmd);
    if (engine_seq_push(e, s, ids, N)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    s->queries = on_queries;
    s->queries_ctx = &rs;
    while (s->n_computed < N) {
        /* chunks end at N/2, so that the self-calibration sees exactly the first half */
        const int at = s->n_computed;
        int k = KVS_MIN(o->chunk, (at < rs.half ? rs.half : N) - at);
        rs.cal_on = at + k <= rs.half;
        rs.pos0 = at;
        if (at + k > rs.half) {
            s->observe = on_attention;
            s->observe_ctx = &rs;
            s->observe_from = rs.half;
        }
        float *lg;
        int row;
        if (engine_step(e, &s, 1, k, &lg, &row) || rs.rc) {
            fprintf(stderr, "\nkvsieve %s: %s\n", c->cmd, kvs_last_error());
            goto done;
        }
        eval_progress_show(&pg, s->n_computed, N, "tok", NULL, s->n_computed == N);
    }
    self_u = malloc((size_t)L * Hkv * hd * sizeof *self_u);
    pre_u = malloc((size_t)L * Hkv * hd * sizeof *pre_u);
    frac = malloc((size_t)L * cfg->n_heads * sizeof *frac);
    scores = malloc((size_t)R_N * N * sizeof *scores);
    srt = malloc((size_t)N * sizeof *srt);
    vbuf = calloc((size_t)N * hd, sizeof *vbuf);
    ofull = malloc((size_t)(N - rs.half) * hd * sizeof *ofull);
    kept = malloc((size_t)(max_b + 1) * sizeof *kept);
    heap_buf = malloc((size_t)(max_b + 1) * sizeof *heap_buf);
    const int n_bw = o->n_budgets * o->n_windows;
    /* res[stream]: [bw][R_N] recall, 3 locality values, [R_N] output errors (first bw) */
    const size_t per_stream = (size_t)n_bw * R_N + 3 + R_N;
    res = calloc(n_streams * per_stream, sizeof *res);
    if (!self_u || !pre_u || !frac || !scores || !srt || !vbuf || !ofull || !kept || !heap_buf ||
        !res) {
        fprintf(stderr, "kvsieve %s: out of memory\n", c->cmd);
        goto done;
    }
    if (qf_calib_finish(rs.cal, self_u, frac) || qf_calib_finish(rs.cal_pre, pre_u, frac)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    const int P = e->pool->page_slots;
    for (size_t st = 0; st < n_streams; st++) {
        const mem_stream *str = &s->kv->streams[st];
        const float *uf = file_f->u + st * hd, *us = self_u + st * hd, *up = pre_u + st * hd;
        float *kn = scores + (size_t)R_KNORM * N, *qf = scores + (size_t)R_QF * N;
        float *qs = scores + (size_t)R_QFSELF * N, *qp = scores + (size_t)R_QFPRE * N;
        float kpre[ATT_MAX_UNROT];
        for (int32_t slot = 0; slot < str->n_slots; slot++) {
            int32_t page = mem_slot_page(e->pool, str, slot);
            int32_t p = mem_page_pos(e->pool, page)[slot & (P - 1)];
            if (p < 0 || p >= N) continue;
            float k[ATT_MAX_UNROT];
            int32_t g = page * P + (slot & (P - 1));
            if (engine_read_kv(e, &g, 1, k, vbuf + (size_t)p * hd)) {
                fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                goto done;
            }
            double n2 = 0, df = 0, ds = 0, dp = 0;
            unrotate(kpre, k, p, rs.inv_freq, hd);
            for (int i = 0; i < hd; i++) {
                n2 += (double)k[i] * k[i];
                df += (double)k[i] * uf[i];
                ds += (double)k[i] * us[i];
                dp += (double)kpre[i] * up[i];
            }
            kn[p] = (float)-sqrt(n2);
            qf[p] = (float)df;
            qs[p] = (float)ds;
            qp[p] = (float)dp;
        }
        const float *rows = rs.rows + st * n_rows * (size_t)N;
        double *out = res + st * per_stream, *err = out + (size_t)n_bw * R_N + 3;
        const out_ctx oc = {vbuf, ofull, hd};
        double loc32 = 0, loc128 = 0, sink = 0;
        for (int t = rs.half; t < N; t++) {
            const float *row = rows + (size_t)(t - rs.half) * N;
            for (int p = 0; p <= t; p++) {
                if (t - p < 32) loc32 += row[p];
                if (t - p < 128) loc128 += row[p];
                if (p < RECALL_SINKS) sink += row[p];
            }
        }
        out[(size_t)n_bw * R_N + 0] = loc32 / n_rows;
        out[(size_t)n_bw * R_N + 1] = loc128 / n_rows;
        out[(size_t)n_bw * R_N + 2] = sink / n_rows;
        for (int t = rs.half; t < N; t++) {
            const float *row = rows + (size_t)(t - rs.half) * N;
            float *of = ofull + (size_t)(t - rs.half) * hd;
            double acc[ATT_MAX_UNROT] = {0};
            for (int p = 0; p <= t; p++)
                for (int d = 0; d < hd; d++) acc[d] += (double)row[p] * vbuf[(size_t)p * hd + d];
            for (int d = 0; d < hd; d++) of[d] = (float)acc[d];
        }
        double orc[16] = {0}, strm[16] = {0};
        for (int t = rs.half; t < N; t++) {
            const float *row = rows + (size_t)(t - rs.half) * N;
            for (int p = 0; p <= t; p++) srt[p] = (att_pos){row[p], p};
            qsort(srt, (size_t)t + 1, sizeof *srt, desc_att);
            for (int b = 0; b < o->n_budgets; b++) {
                const int B = o->budgets[b];
                double m = 0;
                for (int i = 0; i < B && i <= t; i++) m += srt[i].a;
                orc[b] += m;
                if (b == 0) {
                    int nk = 0;
                    for (int i = 0; i < B && i <= t; i++) kept[nk++] = srt[i].pos;
                    err[R_ORACLE] += output_err(&oc, row, t - rs.half, kept, nk) / n_rows;
                }
                m = 0;
                int nk = 0;
                for (int p = 0; p < RECALL_SINKS; p++) m += row[kept[nk++] = p];
                for (int p = t - (B - RECALL_SINKS) + 1; p <= t; p++) m += row[kept[nk++] = p];
                strm[b] += m;
                if (b == 0) err[R_STREAM] += output_err(&oc, row, t - rs.half, kept, nk) / n_rows;
            }
        }
        for (int b = 0; b < o->n_budgets; b++) {
            const int B = o->budgets[b];
            for (int w = 0; w < o->n_windows; w++) {
                double *r = out + (size_t)(b * o->n_windows + w) * R_N;
                r[R_ORACLE] = orc[b] / n_rows;
                r[R_STREAM] = strm[b] / n_rows;
                for (int k = R_KNORM; k < R_N; k++)
                    r[k] = static_recall(rows, scores + (size_t)k * N, N, rs.half, B,
                                         o->windows[w], heap_buf, b || w ? NULL : &oc, kept,
                                         b || w ? NULL : &err[k]);
            }
        }
        eval_progress_show(&pg, (double)st + 1, (double)n_streams, "heads", "scoring", 0);
    }
    fprintf(stderr, "\n");
    /* Tables on stdout, one CSV row per (stream, budget, window). */
    printf("attention recall: %s, %d tokens of %s, queries at positions %d..%d (full-cache "
           "attention, averaged over each KV head's query group)\n", cfg->name, N,
           o->text_path, rs.half, N - 1);
    printf("share of a query's attention on the keys each policy holds (mean over %zu KV heads "
           "and the queries)\n\n", n_streams);
    printf("%6s %6s", "budget", "window");
    for (int k = 0; k < R_N; k++) printf(" %13s", r_name[k]);
    printf("   qf>stream  qf>knorm\n");
    for (int b = 0; b < o->n_budgets; b++)
        for (int w = 0; w < o->n_windows; w++) {
            double m[R_N] = {0};
            int qf_gt_s = 0, qf_gt_k = 0;
            for (size_t st = 0; st < n_streams; st++) {
                const double *r = res + st * per_stream +
                                  (size_t)(b * o->n_windows + w) * R_N;
                for (int k = 0; k < R_N; k++) m[k] += r[k] / n_streams;
                qf_gt_s += r[R_QF] > r[R_STREAM];
                qf_gt_k += r[R_QF] > r[R_KNORM];
            }
            printf("%6d %6d", o->budgets[b], o->windows[w]);
            for (int k = 0; k < R_N; k++) printf(" %13.3f", m[k]);
            printf("   %5d/%zu  %5d/%zu\n", qf_gt_s, n_streams, qf_gt_k, n_streams);
        }
    printf("\nper layer (mean over its KV heads): where attention goes, and recall at budget %d "
           "window %d\n\n%5s %7s %7s %7s", o->budgets[0], o->windows[0], "layer", "last32",
           "last128", "first4");
    for (int k = 0; k < R_N; k++) printf(" %13s", r_name[k]);
    printf("\n");
    double all_loc[3] = {0};
    for (int l = 0; l < L; l++) {
        double loc[3] = {0}, m[R_N] = {0};
        for (int h = 0; h < Hkv; h++) {
            const double *r = res + ((size_t)l * Hkv + h) * per_stream;
            for (int k = 0; k < 3; k++) loc[k] += r[(size_t)n_bw * R_N + k] / Hkv;
            for (int k = 0; k < R_N; k++) m[k] += r[k] / Hkv;
        }
        for (int k = 0; k < 3; k++) all_loc[k] += loc[k] / L;
        printf("%5d %7.3f %7.3f %7.3f", l, loc[0], loc[1], loc[2]);
        for (int k = 0; k < R_N; k++) printf(" %13.3f", m[k]);
        printf("\n");
    }
    printf("  all %7.3f %7.3f %7.3f\n", all_loc[0], all_loc[1], all_loc[2]);
    printf("\nattention output error |o_K - o| / |o| at budget %d window %d (mean over the "
           "queries; per layer: mean over its KV heads)\n\n%5s", o->budgets[0], o->windows[0],
           "layer");
    for (int k = 0; k < R_N; k++) printf(" %13s", r_name[k]);
    printf("\n");
    double all_err[R_N] = {0};
    for (int l = 0; l < L; l++) {
        double m[R_N] = {0};
        for (int h = 0; h < Hkv; h++) {
            const double *r = res + ((size_t)l * Hkv + h) * per_stream + (size_t)n_bw * R_N + 3;
            for (int k = 0; k < R_N; k++) m[k] += r[k] / Hkv;
        }
        printf("%5d", l);
        for (int k = 0; k < R_N; k++) {
            printf(" %13.3f", m[k]);
            all_err[k] += m[k] / L;
        }
        printf("\n");
    }
    printf("%5s", "all");
    for (int k = 0; k < R_N; k++) printf(" %13.3f", all_err[k]);
    printf("\n");
    if (c->out_dir) {
        if (!(csv = eval_open_out(c->cmd, c->out_dir, "recall.csv"))) goto done;
        fprintf(csv, "layer,kv_head,budget,window,last32,last128,first4");
        for (int k = 0; k < R_N; k++) fprintf(csv, ",%s", r_name[k]);
        for (int k = 0; k < R_N; k++) fprintf(csv, ",err_%s", r_name[k]);
        fprintf(csv, "\n");
        for (size_t st = 0; st < n_streams; st++) {
            const double *r0 = res + st * per_stream;
            for (int b = 0; b < o->n_budgets; b++)
                for (int w = 0; w < o->n_windows; w++) {
                    const double *r = r0 + (size_t)(b * o->n_windows + w) * R_N;
                    fprintf(csv, "%zu,%zu,%d,%d,%.5f,%.5f,%.5f", st / Hkv, st % Hkv,
                            o->budgets[b], o->windows[w], r0[(size_t)n_bw * R_N],
                            r0[(size_t)n_bw * R_N + 1], r0[(size_t)n_bw * R_N + 2]);
                    for (int k = 0; k < R_N; k++) fprintf(csv, ",%.5f", r[k]);
                    for (int k = 0; k < R_N; k++)
                        if (b || w) fprintf(csv, ",");
                        else fprintf(csv, ",%.5f", r0[(size_t)n_bw * R_N + 3 + k]);
                    fprintf(csv, "\n");
                }
        }
        if (fclose(csv)) {
            csv = NULL;
            fprintf(stderr, "kvsieve %s: cannot write recall.csv\n", c->cmd);
            goto done;
        }
        csv = NULL;
    }
    rc = 0;
done:
    if (csv) fclose(csv);
    if (s) engine_seq_destroy(e, s);
    qf_calib_destroy(rs.cal);
    qf_calib_destroy(rs.cal_pre);
    free((void *)rs.inv_freq);
    free(rs.unrot);
    free(pre_u);
    qf_filters_free(file_f);
    kvs_free(rs.rows);
    free(self_u);
    free(frac);
    free(scores);
    free(srt);
    free(vbuf);
    free(ofull);
    free(kept);
    free(heap_buf);
    free(res);
    free(ids);
    free(text);
    engine_destroy(e);
    return rc;
}
