/* test_cuda_forward.c — whole forward steps of the CUDA backend against the CPU forward.
 *
 * One scripted run (ragged batches of prefill chunks and decode tokens over four sequences,
 * evictions that leave holes, compaction, chunks that refill holes out of position order,
 * every way a key gets its score: qfilters (fused dot), streaming (fused position), h2o and
 * snapkv (attention statistics), a custom scorer (keys back to the host), and the queries
 * hook) is played by three backends on the same tiny random model:
 *   fwd_cpu       the reference;
 *   kref_forward  the CPU twins + the CUDA forward's host-side plan: must match fwd_cpu to
 *                 fp32 rounding (runs everywhere, so CI checks the plan/finish logic);
 *   fwd_cuda      the device (fp16/bf16 storage): logits within a stated tolerance.
 * Then the default model (if present): twin forward == fwd_cpu; on a GPU the same greedy
 * tokens and logits within tolerance, the engine on --device cuda (policies, eviction,
 * compaction, clone, CUDA graphs, timing). Without a GPU the device parts print
 * "skipped: no GPU" and pass. */
#include "cuda_test_util.h"
#include "twin_forward.h"

#include <unistd.h>

#include "engine.h"
#include "forward.h"
#include "memory/policy.h"
#include "policies/qfilters.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

/* Logit tolerance of the device forward (16-bit weights, GEMM inputs and K/V; fp32 sums) vs
 * the fp32 CPU forward, relative to the logits' scale, for the 16-bit type under test:
 * max |gpu - cpu| <= t_logit_tol() * (1 + max |cpu logit|), and mean |gpu - cpu| <=
 * t_logit_mean(). Measured on the emulator (which rounds like the device, cuda_emu.h):
 * default model 0.054 max (scale 31.8), 0.0075 mean (bf16: 0.373, 0.056). */
static inline double t_logit_tol(void) { return t_bf16() ? 0.04 : 0.005; }
static inline double t_logit_mean(void) { return t_bf16() ? 0.15 : 0.02; }

/* ---- a tiny random llama ------------------------------------------------------------------ */

static float *rand_w(size_t n, float scale)
{
    float *w = kvs_alloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) w[i] = t_round(scale * t_unit());
    return w;
}

static model *tiny_model(void)
{
    model *m = calloc(1, sizeof *m);
    model_config *c = &m->cfg;
    c->n_layers = 3;
    c->n_heads = 6;
    c->n_kv_heads = 2;
    c->head_dim = 64;
    c->d_model = c->n_heads * c->head_dim;
    c->d_ff = 512;
    c->n_vocab = 700;
    c->n_ctx = 1024;
    c->rope_base = 10000.0f;
    c->rms_eps = 1e-5f;
    c->tied_embeddings = 1;
    snprintf(c->name, sizeof c->name, "tiny-test");
    const size_t D = c->d_model, hd = c->head_dim, QKV = (c->n_heads + 2 * c->n_kv_heads) * hd;
    t_seed(4242);
    m->tok_embd = rand_w((size_t)c->n_vocab * D, 1.0f);
    m->output = m->tok_embd;
    m->output_norm = rand_w(D, 0.1f);
    for (size_t i = 0; i < D; i++) m->output_norm[i] += 1.0f;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *ly = &m->layers[l];
        ly->attn_norm = rand_w(D, 0.1f);
        ly->ffn_norm = rand_w(D, 0.1f);
        for (size_t i = 0; i < D; i++) { ly->attn_norm[i] += 1.0f; ly->ffn_norm[i] += 1.0f; }
        ly->wqkv = rand_w(QKV * D, 2.0f / sqrtf((float)D));
        ly->wo = rand_w(D * c->n_heads * hd, 1.0f / sqrtf((float)D));
        ly->w_gate_up = rand_w(2 * (size_t)c->d_ff * D, 1.5f / sqrtf((float)D));
        ly->w_down = rand_w(D * c->d_ff, 1.0f / sqrtf((float)c->d_ff));
    }
    if (model_wrap_f32(m)) abort(); /* the CPU forward's views of the matrices */
    return m;
}

static void tiny_free(model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) {
        model_layer *ly = &m->layers[l];
        kvs_free(ly->attn_norm); kvs_free(ly->ffn_norm); kvs_free(ly->wqkv); kvs_free(ly->wo);
        kvs_free(ly->w_gate_up); kvs_free(ly->w_down);
    }
    free(m->layers);
    kvs_free(m->tok_embd);
    kvs_free(m->output_norm);
    free(m);
}

/* Random Q-Filters filters for a model, in a file. */
static void write_filters(const model_config *c, const char *path)
{
    size_t n = (size_t)c->n_layers * c->n_kv_heads * c->head_dim;
    float *u = malloc(n * sizeof *u);
    for (size_t i = 0; i < n; i++) u[i] = t_unit();
    qf_filters f = {.n_layers = c->n_layers, .n_kv_heads = c->n_kv_heads,
                    .head_dim = c->head_dim, .n_heads = c->n_heads, .n_tokens = 1, .u = u};
    snprintf(f.model_name, sizeof f.model_name, "%s", c->name);
    CU_ASSERT_FATAL(qf_filters_save(path, &f) == 0);
    free(u);
}

/* ---- the scripted run ----------------------------------------------------------------------- */

typedef enum { BK_CPU, BK_TWIN, BK_GPU } backend;

typedef struct {
    double q_sum, o_sum;   /* weighted sums of |what the hooks saw| */
    long q_calls, o_calls;
} trace;

#define N_SEQ 4
typedef struct {
    backend bk;
    const model *m;
    mem_pool *pool;
    kvs_backend *cpu;        /* BK_CPU: the CPU backend (its K/V store) */
    kvs_plan plan;           /* BK_CPU, BK_GPU: the step plan */
    fwd_cuda_state *gpu;
    mem_seq *kv[N_SEQ];
    pol_instance *pol[N_SEQ];
    int32_t done[N_SEQ];
    trace tr;
    float *logits;         /* all logit rows of the run, concatenated */
    size_t n_logits, cap_logits;
    int failed;
} runner;

static int g_hd;

static void q_hook(void *ctx, int layer, int head, const float *q, int n)
{
    runner *r = ctx;
    r->tr.q_calls++;
    for (int i = 0; i < n * g_hd; i++) r->tr.q_sum += fabsf(q[i]) * (1.0 + 0.01 * layer + 0.001 * head);
}

static int o_hook(void *ctx, mem_pool *pool, mem_stream *s, int layer, int kv_head,
                  const float *probs, int n_q)
{
    runner *r = ctx;
    int which = -1;
    for (int i = 0; i < N_SEQ; i++)
        if (s >= r->kv[i]->streams && s < r->kv[i]->streams + r->kv[i]->n_layers * r->kv[i]->n_kv_heads)
            which = i;
    r->tr.o_calls++;
    for (int q = 0; q < n_q; q++)
        for (int32_t j = 0; j < s->n_slots; j++)
            r->tr.o_sum += probs[(size_t)q * s->n_slots + j] * (1.0 + 0.1 * layer + 0.01 * kv_head + 0.001 * q);
    return pol_observe_stream(r->pol[which], pool, s, layer, kv_head, probs, n_q);
}

/* A scorer the device does not know: keys come back to the host for it. */
static void host_score(void *ctx, int layer, int kv_head, const float *keys, const int32_t *pos,
                       int n, float *out)
{
    (void)ctx;
    for (int i = 0; i < n; i++)
        out[i] = keys[(size_t)i * g_hd] * 0.5f + keys[(size_t)i * g_hd + 1] - 0.001f * pos[i] +
                 (float)layer + 0.1f * kv_head;
}

static void run_step(runner *r, const int32_t *n_tok, const int *logits_mode, const int32_t *const *toks)
{
    const model_config *c = &r->m->cfg;
    fwd_seq fs[N_SEQ];
    int n = 0;
    for (int i = 0; i < N_SEQ; i++) {
        if (!n_tok[i]) continue;
        if (mem_seq_reserve(r->pool, r->kv[i], n_tok[i])) { r->failed = 1; return; }
        fwd_seq *q = &fs[n++];
        *q = (fwd_seq){.kv = r->kv[i], .tokens = toks[i] + r->done[i], .n_tokens = n_tok[i],
                       .pos0 = r->done[i], .logits = logits_mode[i]};
        switch (i) {
        case 0: /* qfilters (fused dot) + the queries hook */
            q->score_keys = pol_score_keys; q->score_ctx = r->pol[0];
            q->score_kind = FWD_SCORE_DOT; q->score_u = r->pol[0]->dev.u;
            q->queries = q_hook; q->queries_ctx = r;
            break;
        case 1: /* h2o: score 0 at write, attention statistics of every query */
            q->score_keys = pol_score_keys; q->score_ctx = r->pol[1];
            q->score_kind = FWD_SCORE_ZERO;
            q->observe = o_hook; q->observe_ctx = r; q->observe_from = 0;
            break;
        case 2: /* a scorer only the host knows + snapkv-like window observation */
            q->score_keys = host_score; q->score_ctx = NULL;
            q->observe = o_hook; q->observe_ctx = r; q->observe_from = 3;
            break;
        default: /* streaming: fused position score */
            q->score_keys = pol_score_keys; q->score_ctx = r->pol[3];
            q->score_kind = FWD_SCORE_POS;
            break;
        }
    }
    float *lg = NULL;
    int rows = 0, rc;
    if (r->bk == BK_TWIN) rc = twin_forward(r->m, r->pool, tkv_store(r->pool), fs, n, &lg, &rows);
    else if ((rc = kvs_plan_build(&r->plan, &r->m->cfg, r->pool, fs, n))) {}
    else if (r->bk == BK_CPU) rc = r->cpu->i->run(r->cpu, r->m, r->pool, &r->plan, fs, &lg, &rows);
    else rc = fwd_cuda(r->gpu, r->m, r->pool, &r->plan, fs, &lg, &rows);
    if (rc) {
        printf("\n  backend %d: %s\n", (int)r->bk, kvs_last_error());
        r->failed = 1;
        return;
    }
    size_t add = (size_t)rows * c->n_vocab;
    if (r->n_logits + add > r->cap_logits) {
        r->cap_logits = 2 * (r->n_logits + add);
        r->logits = realloc(r->logits, r->cap_logits * sizeof *r->logits);
    }
    memcpy(r->logits + r->n_logits, lg, add * sizeof *lg);
    r->n_logits += add;
    if (r->bk == BK_TWIN) free(lg);
    for (int i = 0; i < N_SEQ; i++) r->done[i] += n_tok[i];
}

/* Evict fixed slots (independent of scores, so every backend evicts the same ones). */
static void evict_some(runner *r, int seq, int every)
{
    mem_seq *kv = r->kv[seq];
    for (int i = 0; i < kv->n_layers * kv->n_kv_heads; i++) {
        mem_stream *s = &kv->streams[i];
        for (int32_t slot = i % every; slot < s->n_slots - 2; slot += every)
            if (r->pool->pos[mem_gslot(r->pool, s, slot)] >= 0) mem_stream_evict(r->pool, s, slot);
    }
}

static void compact_all(runner *r, int seq)
{
    mem_seq *kv = r->kv[seq];
    for (int i = 0; i < kv->n_layers * kv->n_kv_heads; i++) {
        mem_stream *s = &kv->streams[i];
        int32_t moves = r->bk == BK_GPU ? kvs_cuda_compact_stream(r->gpu, r->pool, s)
                        : r->bk == BK_CPU ? (int32_t)r->cpu->i->compact(r->cpu, r->pool, &s, 1)
                                          : tkv_compact(r->pool, s);
        if (moves < 0) r->failed = 1;
    }
}

static void script(runner *r, const int32_t *const *toks)
{
    static const int32_t round1[N_SEQ] = {20, 37, 5, 1};
    static const int all_last[N_SEQ] = {FWD_LOGITS_ALL, FWD_LOGITS_LAST, FWD_LOGITS_LAST,
                                        FWD_LOGITS_LAST};
    static const int32_t ones[N_SEQ] = {1, 1, 1, 1};
    static const int lasts[N_SEQ] = {FWD_LOGITS_LAST, FWD_LOGITS_LAST, FWD_LOGITS_LAST,
                                     FWD_LOGITS_LAST};
    run_step(r, round1, all_last, toks);
    for (int k = 0; k < 3 && !r->failed; k++) run_step(r, ones, lasts, toks);
    evict_some(r, 0, 3);
    evict_some(r, 1, 4);
    evict_some(r, 3, 2);
    compact_all(r, 1); /* seq 0 keeps its holes: the next chunk refills them out of order */
    static const int32_t round5[N_SEQ] = {3, 12, 1, 0};
    static const int mixed[N_SEQ] = {FWD_LOGITS_ALL, FWD_LOGITS_ALL, FWD_LOGITS_NONE,
                                     FWD_LOGITS_LAST};
    if (!r->failed) run_step(r, round5, mixed, toks);
    for (int k = 0; k < 4 && !r->failed; k++) run_step(r, ones, lasts, toks);
    evict_some(r, 2, 3);
    compact_all(r, 0);
    for (int k = 0; k < 2 && !r->failed; k++) run_step(r, ones, lasts, toks);
}

static void runner_init(runner *r, backend bk, const model *m, const char *filters_path)
{
    const model_config *c = &m->cfg;
    memset(r, 0, sizeof *r);
    r->bk = bk;
    r->m = m;
    const int P = 16;
    const int32_t n_pages = 600;
    if (bk == BK_GPU) {
#ifdef KVS_HAVE_CUDA
        CU_ASSERT_FATAL(fwd_cuda_create(m, P, (size_t)n_pages * mem_cuda_page_bytes(P, c->head_dim),
                                        0.0, t_fmt, &r->gpu) == 0);
        CU_ASSERT_FATAL(fwd_cuda_n_pages(r->gpu) == n_pages);
        CU_ASSERT(fwd_cuda_kv_format(r->gpu) == t_fmt);
        CU_ASSERT_EQUAL(fwd_cuda_slot_bytes(r->gpu), (size_t)2 * c->head_dim * 2);
        CU_ASSERT_FATAL(mem_pool_create(P, n_pages, &r->pool) == 0);
#endif
    } else if (bk == BK_CPU) {
        const size_t slot = kv_store_slot_bytes(&kv_fmt_f32, &kv_fmt_f32, c->head_dim);
        kvs_backend_opts o = {.page_slots = P,
                              .kv_bytes = (size_t)n_pages * mem_pool_page_bytes(P, slot)};
        CU_ASSERT_FATAL(kvs_backend_cpu_create(m, &o, &r->cpu) == 0);
        CU_ASSERT_FATAL(r->cpu->n_pages == n_pages);
        CU_ASSERT_FATAL(mem_pool_create(P, n_pages, &r->pool) == 0);
    } else {
        CU_ASSERT_FATAL(tkv_pool_create(P, c->head_dim, n_pages, &r->pool) == 0);
    }
    pol_model_info mi = {c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->name};
    char args[512];
    snprintf(args, sizeof args, "filters=%s", filters_path);
    CU_ASSERT_FATAL(pol_instance_create("qfilters", args, &mi, &r->pol[0]) == 0);
    CU_ASSERT_FATAL(pol_instance_create("h2o", "", &mi, &r->pol[1]) == 0);
    CU_ASSERT_FATAL(pol_instance_create("snapkv", "window=4", &mi, &r->pol[2]) == 0);
    CU_ASSERT_FATAL(pol_instance_create("streaming", "", &mi, &r->pol[3]) == 0);
    for (int i = 0; i < N_SEQ; i++)
        CU_ASSERT_FATAL(mem_seq_create(c->n_layers, c->n_kv_heads, i * 100, &r->kv[i]) == 0);
}

static void runner_free(runner *r)
{
    for (int i = 0; i < N_SEQ; i++) {
        mem_seq_destroy(r->pool, r->kv[i]);
        pol_instance_destroy(r->pol[i]);
    }
    CU_ASSERT_EQUAL(r->pool->n_free, r->pool->n_pages);
    kvs_backend_destroy(r->cpu);
    kvs_plan_free(&r->plan);
    fwd_cuda_destroy(r->gpu);
    tkv_pool_destroy(r->pool);
    free(r->logits);
}

/* K/V of global slot g of a runner (CPU backend or twin store) as fp32. */
static void runner_read(const runner *r, int32_t g, float *k, float *v)
{
    if (r->bk == BK_CPU) {
        CU_ASSERT(r->cpu->i->read_kv(r->cpu, &g, 1, k, v) == 0);
    } else {
        kv_store_read(tkv_store(r->pool), g, k, v);
    }
}

/* Compare the KV of two runners: bookkeeping exactly, K/V and scores within tolerances.
 * b's K/V come from `bkv` (a download of the device's) or, when NULL, from b itself. */
static void compare_kv(const runner *a, const runner *b, const kv_store *bkv, double kv_tol,
                       double score_tol, const char *what)
{
    float ka[512], va[512], kb[512], vb[512];
    const int hd = a->m->cfg.head_dim;
    int book = 1;
    double dk = 0.0, ds = 0.0;
    for (int i = 0; i < N_SEQ; i++)
        for (int k = 0; k < a->kv[i]->n_layers * a->kv[i]->n_kv_heads; k++) {
            const mem_stream *x = &a->kv[i]->streams[k], *y = &b->kv[i]->streams[k];
            book &= x->n_slots == y->n_slots && x->n_live == y->n_live &&
                    x->n_pages == y->n_pages && x->n_holes == y->n_holes &&
                    (!x->n_pages || !memcmp(x->pages, y->pages, (size_t)x->n_pages * 4));
            if (!book) continue;
            for (int32_t slot = 0; slot < x->n_slots; slot++) {
                int32_t g = mem_gslot(a->pool, x, slot);
                book &= a->pool->pos[g] == b->pool->pos[g];
                if (a->pool->pos[g] < 0) continue;
                double d = fabs(a->pool->score[g] - b->pool->score[g]) / (1.0 + fabs(a->pool->score[g]));
                if (d > ds) ds = d;
                runner_read(a, g, ka, va);
                if (bkv) kv_store_read(bkv, g, kb, vb);
                else runner_read(b, g, kb, vb);
                for (int e = 0; e < hd; e++) {
                    double x1 = ka[e], y1 = kb[e];
                    double x2 = va[e], y2 = vb[e];
                    double d1 = fabs(x1 - y1) / (1.0 + fabs(x1)), d2 = fabs(x2 - y2) / (1.0 + fabs(x2));
                    if (d1 > dk) dk = d1;
                    if (d2 > dk) dk = d2;
                }
            }
        }
    printf(" [%s: K/V rel %.1e, scores rel %.1e]", what, dk, ds);
    CU_ASSERT(book);
    CU_ASSERT(dk <= kv_tol);
    CU_ASSERT(ds <= score_tol);
}

static double logit_scale(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static void test_tiny_script(void)
{
    model *m = tiny_model();
    g_hd = m->cfg.head_dim;
    char path[512];
    snprintf(path, sizeof path, "%s/kvs_test_tiny_%d.kvsqf", t_tmpdir(), (int)getpid());
    write_filters(&m->cfg, path);
    int32_t *toks[N_SEQ];
    const int32_t *ctoks[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        toks[i] = malloc(200 * sizeof(int32_t));
        for (int j = 0; j < 200; j++) toks[i][j] = (int32_t)(t_rnd() % (uint32_t)m->cfg.n_vocab);
        ctoks[i] = toks[i];
    }
    runner cpu, twin;
    runner_init(&cpu, BK_CPU, m, path);
    runner_init(&twin, BK_TWIN, m, path);
    script(&cpu, ctoks);
    script(&twin, ctoks);
    CU_ASSERT_FATAL(!cpu.failed && !twin.failed);
    CU_ASSERT_EQUAL_FATAL(cpu.n_logits, twin.n_logits);
    double scale = logit_scale(cpu.logits, cpu.n_logits);
    double d = t_max_abs_diff(cpu.logits, twin.logits, cpu.n_logits);
    printf(" [twin vs cpu: %zu logits, scale %.1f, max |d| %.1e; hooks q %ld/%ld o %ld/%ld]",
           cpu.n_logits, scale, d, cpu.tr.q_calls, twin.tr.q_calls, cpu.tr.o_calls, twin.tr.o_calls);
    CU_ASSERT(d < 1e-4 * (1.0 + scale));
    CU_ASSERT_EQUAL(cpu.tr.q_calls, twin.tr.q_calls);
    CU_ASSERT_EQUAL(cpu.tr.o_calls, twin.tr.o_calls);
    CU_ASSERT(fabs(cpu.tr.q_sum - twin.tr.q_sum) <= 1e-6 * (1.0 + fabs(cpu.tr.q_sum)));
    CU_ASSERT(fabs(cpu.tr.o_sum - twin.tr.o_sum) <= 1e-6 * (1.0 + fabs(cpu.tr.o_sum)));
    compare_kv(&cpu, &twin, NULL, 1e-5, 1e-5, "twin pool");
    CU_ASSERT(mem_check_invariants(twin.pool, twin.kv, N_SEQ) == 0);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        runner gpu;
        runner_init(&gpu, BK_GPU, m, path);
        script(&gpu, ctoks);
        CU_ASSERT_FATAL(!gpu.failed);
        CU_ASSERT_EQUAL_FATAL(cpu.n_logits, gpu.n_logits);
        d = t_max_abs_diff(cpu.logits, gpu.logits, cpu.n_logits);
        printf(" [gpu (%s) vs cpu: max |d| %.2e (tolerance %.2e); hooks q %ld o %ld]",
               t_fmt->name, d, t_logit_tol() * (1.0 + scale), gpu.tr.q_calls, gpu.tr.o_calls);
        CU_ASSERT(d <= t_logit_tol() * (1.0 + scale));
        CU_ASSERT_EQUAL(cpu.tr.q_calls, gpu.tr.q_calls);
        CU_ASSERT_EQUAL(cpu.tr.o_calls, gpu.tr.o_calls);
        CU_ASSERT(fabs(cpu.tr.q_sum - gpu.tr.q_sum) <= 1e-2 * (1.0 + fabs(cpu.tr.q_sum)));
        CU_ASSERT(fabs(cpu.tr.o_sum - gpu.tr.o_sum) <= 1e-2 * (1.0 + fabs(cpu.tr.o_sum)));
        mem_pool *kv;
        CU_ASSERT_FATAL(tkv_pool_create(16, m->cfg.head_dim, gpu.pool->n_pages, &kv) == 0);
        CU_ASSERT(kvs_cuda_pool_download(fwd_cuda_pool(gpu.gpu), kv, tkv_store(kv)) == 0);
        compare_kv(&cpu, &gpu, tkv_store(kv), 40 * t_half_tol(), 40 * t_half_tol(), "gpu pool");
        /* the device pos mirror agrees with the host metadata below n_slots */
        int pos_ok = 1;
        for (int i = 0; i < N_SEQ; i++)
            for (int k = 0; k < gpu.kv[i]->n_layers * gpu.kv[i]->n_kv_heads; k++) {
                const mem_stream *s = &gpu.kv[i]->streams[k];
                for (int32_t slot = 0; slot < s->n_slots; slot++) {
                    int32_t g = mem_gslot(gpu.pool, s, slot);
                    if (gpu.pool->pos[g] >= 0) pos_ok &= kv->pos[g] == gpu.pool->pos[g];
                }
            }
        CU_ASSERT(pos_ok);
        CU_ASSERT(mem_check_invariants(gpu.pool, gpu.kv, N_SEQ) == 0);
        tkv_pool_destroy(kv);
        runner_free(&gpu);
    } else {
        printf(" skipped: no GPU ");
    }
#else
    printf(" skipped: no GPU ");
#endif
    runner_free(&cpu);
    runner_free(&twin);
    remove(path);
    for (int i = 0; i < N_SEQ; i++) free(toks[i]);
    tiny_free(m);
}

T_PER_TYPE(test_tiny_script)

/* ---- the default model ------------------------------------------------------------------------ */

static model *M;
static tok_ctx *TOK;

/* The CUDA backend's forward state of an engine, or NULL when it runs on the CPU. */
#define E_CUDA(e) (!strcmp((e)->be->i->name, "cuda") ? (fwd_cuda_state *)(e)->be->state : NULL)

static int encode(const char *text, int32_t *ids, int cap)
{
    int n = tok_encode(TOK, text, strlen(text), 0, ids, cap);
    return n > cap ? cap : n;
}

/* Teacher-forced logits of `ids` fed as a prefill chunk then token by token. */
static float *forced_logits(backend bk, fwd_cuda_state *gpu, const int32_t *ids, int n, int chunk)
{
    const model_config *c = &M->cfg;
    mem_pool *pool = NULL;
    kvs_backend *cpu = NULL;
    kvs_plan plan;
    memset(&plan, 0, sizeof plan);
    mem_seq *kv;
    const int32_t pages = c->n_layers * c->n_kv_heads * 16;
    if (bk == BK_GPU) {
        CU_ASSERT_FATAL(mem_pool_create(16, fwd_cuda_n_pages(gpu), &pool) == 0);
    } else if (bk == BK_CPU) {
        const size_t slot = kv_store_slot_bytes(&kv_fmt_f32, &kv_fmt_f32, c->head_dim);
        kvs_backend_opts o = {.page_slots = 16, .kv_bytes = (size_t)pages * mem_pool_page_bytes(16, slot)};
        CU_ASSERT_FATAL(kvs_backend_cpu_create(M, &o, &cpu) == 0 && cpu->n_pages == pages);
        CU_ASSERT_FATAL(mem_pool_create(16, pages, &pool) == 0);
    } else {
        CU_ASSERT_FATAL(tkv_pool_create(16, c->head_dim, pages, &pool) == 0);
    }
    CU_ASSERT_FATAL(mem_seq_create(c->n_layers, c->n_kv_heads, 0, &kv) == 0);
    float *out = malloc((size_t)n * c->n_vocab * sizeof *out);
    for (int done = 0; done < n;) {
        int k = done == 0 ? chunk : 1;
        if (k > n - done) k = n - done;
        CU_ASSERT_FATAL(mem_seq_reserve(pool, kv, k) == 0);
        fwd_seq fs = {.kv = kv, .tokens = ids + done, .n_tokens = k, .pos0 = done,
                      .logits = FWD_LOGITS_ALL};
        float *lg;
        int rows, rc;
        if (bk == BK_TWIN) rc = twin_forward(M, pool, tkv_store(pool), &fs, 1, &lg, &rows);
        else if ((rc = kvs_plan_build(&plan, c, pool, &fs, 1))) {}
        else if (bk == BK_CPU) rc = cpu->i->run(cpu, M, pool, &plan, &fs, &lg, &rows);
        else rc = fwd_cuda(gpu, M, pool, &plan, &fs, &lg, &rows);
        CU_ASSERT_FATAL(rc == 0 && rows == k);
        memcpy(out + (size_t)done * c->n_vocab, lg, (size_t)k * c->n_vocab * sizeof *lg);
        if (bk == BK_TWIN) free(lg);
        done += k;
    }
    mem_seq_destroy(pool, kv);
    kvs_plan_free(&plan);
    kvs_backend_destroy(cpu);
    tkv_pool_destroy(pool);
    return out;
}

static void test_default_model(void)
{
    if (!M) { printf(" skipped: default model missing (scripts/fetch-model) "); return; }
    const model_config *c = &M->cfg;
    int32_t ids[64];
    int n = encode("The quick brown fox jumps over the lazy dog. Paged attention keeps a "
                   "cache of keys and values for every head, and", ids, 40);
    CU_ASSERT_FATAL(n >= 20);
    float *cpu = forced_logits(BK_CPU, NULL, ids, n, 17);
    float *twin = forced_logits(BK_TWIN, NULL, ids, n, 17);
    size_t nv = (size_t)n * c->n_vocab;
    double scale = logit_scale(cpu, nv), d = t_max_abs_diff(cpu, twin, nv);
    printf(" [%d tokens: twin vs cpu max |d| %.1e, scale %.1f]", n, d, scale);
    CU_ASSERT(d < 1e-3);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        for (int b = 0; b < 2; b++) {
            t_fmt = b ? &kv_fmt_bf16 : &kv_fmt_f16;
            fwd_cuda_state *gpu;
            CU_ASSERT_FATAL(fwd_cuda_create(M, 16, (size_t)256 << 20, 0.0, t_fmt, &gpu) == 0);
            float *dev = forced_logits(BK_GPU, gpu, ids, n, 17);
            double sum = 0.0;
            d = 0.0;
            int agree = 0, confident = 0;
            for (int t = 0; t < n; t++) {
                const float *a = cpu + (size_t)t * c->n_vocab, *b = dev + (size_t)t * c->n_vocab;
                int32_t ia = smp_argmax(a, c->n_vocab), ib = smp_argmax(b, c->n_vocab);
                float second = -INFINITY;
                for (int v = 0; v < c->n_vocab; v++) if (v != ia && a[v] > second) second = a[v];
                if (a[ia] - second > 0.5f) { confident++; agree += ia == ib; }
                for (int v = 0; v < c->n_vocab; v++) {
                    double x = fabs((double)a[v] - b[v]);
                    sum += x;
                    if (x > d) d = x;
                }
            }
            printf(" [gpu (%s) vs cpu: max |d| %.3f, mean |d| %.4f, argmax agrees on %d/%d "
                   "confident positions]", t_fmt->name, d, sum / nv, agree, confident);
            CU_ASSERT(d <= t_logit_tol() * (1.0 + scale));
            CU_ASSERT(sum / nv <= t_logit_mean());
            CU_ASSERT_EQUAL(agree, confident);
            free(dev);
            fwd_cuda_destroy(gpu);
        }
        t_fmt = &kv_fmt_f16;
    } else {
        printf(" skipped: no GPU ");
    }
#else
    printf(" skipped: no GPU ");
#endif
    free(cpu);
    free(twin);
}

/* Greedy generation through the engine on each backend, with a policy that evicts every step
 * (streaming: integer scores, so both backends evict the same keys) and compaction. */
static int engine_generate(kvs_engine *e, const int32_t *prompt, int n_prompt, int n_gen,
                           int32_t *out, float *last_logits, int graphs)
{
    const model_config *c = &e->m->cfg;
    engine_seq *s;
    if (engine_seq_create(e, &s)) return -1;
    if (engine_seq_push(e, s, prompt, n_prompt)) return -1;
    engine_seq_mark_prompt(s);
    if (engine_seq_set_policy(e, s, "streaming", "budget=24,sink=4,window=8")) return -1;
    (void)graphs;
#ifdef KVS_HAVE_CUDA
    if (E_CUDA(e)) fwd_cuda_set_graphs(E_CUDA(e), graphs);
#endif
    float *lg;
    int row;
    for (int i = 0; i < n_gen; i++) {
        if (engine_step(e, &s, 1, 13, &lg, &row)) { engine_seq_destroy(e, s); return -1; }
        while (row < 0)
            if (engine_step(e, &s, 1, 13, &lg, &row)) { engine_seq_destroy(e, s); return -1; }
        out[i] = smp_argmax(lg + (size_t)row * c->n_vocab, c->n_vocab);
        if (i == n_gen - 1) memcpy(last_logits, lg + (size_t)row * c->n_vocab, (size_t)c->n_vocab * 4);
        if (engine_seq_push(e, s, &out[i], 1)) { engine_seq_destroy(e, s); return -1; }
        if (i == n_gen / 2 && engine_seq_compact(e, s) < 0) { engine_seq_destroy(e, s); return -1; }
    }
    CU_ASSERT(s->evicted > 0);
    CU_ASSERT(mem_check_invariants(e->pool, &s->kv, 1) == 0);
    engine_seq_destroy(e, s);
    return 0;
}

static void test_engine_backends(void)
{
    const char *path = kvs_test_model_path();
    if (!path) { printf(" skipped: default model missing "); return; }
    /* --device auto without a GPU is the CPU backend; --device cuda says why not */
    kvs_engine *e = NULL;
    engine_opts o = {.model_path = path, .kv_bytes = (size_t)64 << 20, .device = KVS_DEVICE_AUTO};
    CU_ASSERT_FATAL(engine_create(&o, &e) == 0);
    CU_ASSERT((E_CUDA(e) != NULL) == (kvs_device_count() > 0));
    const model_config *c = &e->m->cfg;
    int32_t prompt[32], toks_cpu[24], toks_gpu[24];
    int n = tok_encode(e->tok, "Once upon a time, in a small village by the sea,", 49, 0, prompt, 32);
    CU_ASSERT_FATAL(n > 4 && n <= 32);
    float *l_cpu = malloc((size_t)c->n_vocab * 4), *l_gpu = malloc((size_t)c->n_vocab * 4);
    engine_destroy(e);
    o.device = KVS_DEVICE_CPU;
    CU_ASSERT_FATAL(engine_create(&o, &e) == 0);
    CU_ASSERT_PTR_NULL(E_CUDA(e));
    CU_ASSERT_FATAL(engine_generate(e, prompt, n, 24, toks_cpu, l_cpu, 0) == 0);
    engine_destroy(e);
    o.device = KVS_DEVICE_CUDA;
    int rc = engine_create(&o, &e);
    if (!t_gpu()) {
        CU_ASSERT_EQUAL(rc, KVS_EUNSUPPORTED);
        CU_ASSERT_PTR_NULL(e);
        printf(" [--device cuda: \"%s\"] skipped: no GPU ", kvs_last_error());
        free(l_cpu); free(l_gpu);
        return;
    }
    CU_ASSERT_FATAL(rc == 0 && E_CUDA(e) != NULL);
    CU_ASSERT(engine_kv_format(e) == &kv_fmt_f16); /* the default */
    CU_ASSERT_EQUAL(e->be->kv_slot_bytes, (size_t)2 * c->head_dim * 2);
    CU_ASSERT_FATAL(engine_generate(e, prompt, n, 24, toks_gpu, l_gpu, 0) == 0);
    int same = !memcmp(toks_cpu, toks_gpu, sizeof toks_cpu);
    printf(" [engine greedy tokens cpu == cuda: %s]", same ? "yes" : "NO");
    CU_ASSERT(same);
    /* CUDA graphs for decode steps: the same logits, bit for bit */
    int32_t toks_graph[24];
    float *l_graph = malloc((size_t)c->n_vocab * 4);
    CU_ASSERT(engine_generate(e, prompt, n, 24, toks_graph, l_graph, 1) == 0);
    CU_ASSERT(!memcmp(toks_graph, toks_gpu, sizeof toks_gpu));
    CU_ASSERT(t_max_abs_diff(l_graph, l_gpu, c->n_vocab) <= 1e-6);
    /* clone on the device: the clone continues like the original */
    engine_seq *a, *b;
    float *lg;
    int row;
    CU_ASSERT_FATAL(engine_seq_create(e, &a) == 0);
    CU_ASSERT_FATAL(engine_seq_push(e, a, prompt, n) == 0);
    CU_ASSERT_FATAL(engine_step(e, &a, 1, n, &lg, &row) == 0);
    CU_ASSERT_FATAL(engine_seq_clone(e, a, &b) == 0);
    int32_t next = smp_argmax(lg + (size_t)row * c->n_vocab, c->n_vocab);
    CU_ASSERT(engine_seq_push(e, a, &next, 1) == 0 && engine_seq_push(e, b, &next, 1) == 0);
    engine_seq *both[2] = {a, b};
    int rows2[2];
    CU_ASSERT_FATAL(engine_step(e, both, 2, 1, &lg, rows2) == 0);
    CU_ASSERT(t_max_abs_diff(lg + (size_t)rows2[0] * c->n_vocab, lg + (size_t)rows2[1] * c->n_vocab,
                             c->n_vocab) < 1e-2);
    /* rescore through the device keys: qfilters-free check with knorm */
    CU_ASSERT(engine_seq_set_policy(e, b, "knorm", "") == 0);
    CU_ASSERT(engine_seq_rescore(e, b) == 0);
    /* per-phase timing */
#ifdef KVS_HAVE_CUDA
    fwd_cuda_set_timing(E_CUDA(e), 1);
    next = smp_argmax(lg + (size_t)rows2[0] * c->n_vocab, c->n_vocab);
    CU_ASSERT(engine_seq_push(e, a, &next, 1) == 0);
    CU_ASSERT(engine_step(e, &a, 1, 1, &lg, &row) == 0);
    const fwd_timing *tm = fwd_cuda_last_timing(E_CUDA(e));
    printf(" [decode step: gemm %.3f ms, attention %.3f ms, kv write %.3f ms, other %.3f ms, "
           "logits %.3f ms]", tm->gemm * 1e3, tm->attention * 1e3, tm->kv_write * 1e3,
           tm->other * 1e3, tm->logits * 1e3);
    CU_ASSERT(tm->gemm > 0 && tm->attention > 0 && tm->kv_write > 0);
    fwd_cuda_set_timing(E_CUDA(e), 0);
#endif
    engine_seq_destroy(e, a);
    engine_seq_destroy(e, b);
    CU_ASSERT_EQUAL(e->pool->n_free, e->pool->n_pages);
    engine_destroy(e);
    /* --kv-dtype on the CUDA backend: bf16 in the same build; formats it has not: refused */
    o.kv_dtype = "int8";
    CU_ASSERT_EQUAL(engine_create(&o, &e), KVS_EUNSUPPORTED);
    CU_ASSERT_PTR_NULL(e);
    o.kv_dtype = "bf16";
    CU_ASSERT_FATAL(engine_create(&o, &e) == 0 && E_CUDA(e) != NULL);
    CU_ASSERT(engine_kv_format(e) == &kv_fmt_bf16);
    CU_ASSERT(fwd_cuda_kv_format(E_CUDA(e)) == &kv_fmt_bf16);
    CU_ASSERT_EQUAL(e->be->kv_slot_bytes, (size_t)2 * c->head_dim * 2);
    int32_t toks_bf16[24];
    CU_ASSERT_FATAL(engine_generate(e, prompt, n, 24, toks_bf16, l_gpu, 0) == 0);
    int same_bf16 = 0;
    while (same_bf16 < 24 && toks_bf16[same_bf16] == toks_cpu[same_bf16]) same_bf16++;
    printf(" [bf16: greedy tokens cpu == cuda for the first %d of 24]", same_bf16);
    CU_ASSERT(same_bf16 == 24);
    engine_destroy(e);
    free(l_cpu); free(l_gpu); free(l_graph);
}

int main(void)
{
    const char *path = kvs_test_model_path();
    if (path && model_load(path, &M) == 0) {
        if (tok_create_from_gguf(M->gguf, &TOK)) { model_free(M); M = NULL; }
    } else {
        M = NULL;
    }
    static const kvs_test tests[] = {
        {"tiny model script: twin == fwd_cpu; device within tolerance (fp16)",
         test_tiny_script_f16},
        {"tiny model script: twin == fwd_cpu; device within tolerance (bf16)",
         test_tiny_script_bf16},
        {"default model: twin == fwd_cpu; device (fp16, bf16) logits and argmax",
         test_default_model},
        {"engine --device auto/cpu/cuda: same greedy tokens, graphs, clone, timing",
         test_engine_backends},
    };
    int rc = kvs_test_main("cuda_forward", tests, sizeof tests / sizeof tests[0]);
    tok_destroy(TOK);
    model_free(M);
    return rc;
}
