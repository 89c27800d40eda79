// fwd.cu — the CUDA forward (fwd_cuda, engine/device.h): device weights (16-bit, uploaded
// once), the device KV pool (one cudaMalloc), pinned staging for the step plan and results,
// cuBLAS GEMMs, the per-layer kernel sequence, optional CUDA graphs for decode steps, the
// engine's compaction / clone / rescore helpers and the benchmark entry points.
//
// One step: the host builds the plan (engine/device.c: validation, slot assignment, page
// tables, attention work lists) into pinned memory, uploads it with one copy, marks the host's
// holes empty on the device, runs embed -> L x [rmsnorm, QKV GEMM, RoPE + K/V write + score,
// attention, Wo GEMM (+= x), rmsnorm, gate/up GEMM, SwiGLU, down GEMM (+= x)] -> logits rows,
// copies logits / new scores / hook buffers back and finishes the hooks on the host
// (kvs_plan_finish). Design and validation: docs/CUDA.md.
//
// The 16-bit type (fp16 or bf16) of the weights, GEMM inputs and K/V pages is chosen at
// fwd_cuda_create (st->dtype, MEM_CUDA_F16 | MEM_CUDA_BF16) and passed to every launcher.
#include "core/cuda/cuda_common.cuh"
#include "engine/cuda/kvs_cuda.h"

#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels_ref.h"
#include "rope.h"
#include "memory/policy.h"
}

struct dev_layer {
    float *attn_norm, *ffn_norm;           // [D] fp32
    void *wqkv, *wo, *w_gate_up, *w_down; // 16-bit (dtype)
};

#define KVS_GRAPH_SLOTS 8
struct graph_entry {
    int T, S, R, n_split;
    uint64_t gen;
    cudaGraphExec_t exec;
    unsigned long long last_used;
};

#define KVS_MAX_TIMING_EVENTS 1024
enum { PH_OTHER = 0, PH_GEMM, PH_KV, PH_ATT, PH_LOGITS };

struct fwd_cuda_state {
    model_config cfg;
    int dtype;                            // MEM_CUDA_F16 | MEM_CUDA_BF16: weights, activations, K/V
    int device, n_sm;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    size_t blas_ws_bytes;
    // weights
    void *wbase;
    size_t wbytes;
    void *tok_embd, *output;              // 16-bit (dtype)
    float *output_norm;
    dev_layer *layers;                    // host array of device pointers
    mem_cuda_pool *pool;
    // RoPE tables [rope_rows][hd/2]
    float *cos_t, *sin_t;
    int rope_rows;
    // Q-Filters filter sets: [KVS_MAX_FILTER_SETS][L][Hkv][hd]
    kvs_filter_cache fc;
    float *filters;
    // activations (device)
    int cap_T, cap_R;
    float *x, *qkv, *gu, *logits, *scores;
    void *h, *att, *act, *xr;             // 16-bit (dtype)
    float *part, *probs, *kst, *qst;
    size_t cap_part, cap_probs, cap_kst, cap_qst; // floats
    void *plan_d;
    size_t cap_plan_d;
    int32_t *idx_d;                       // scratch for compaction / copies / gathers
    float *fscratch_d;
    size_t cap_idx, cap_fscratch;
    // results (pinned host)
    float *logits_h, *scores_h, *probs_h, *kst_h, *qst_h;
    size_t cap_logits_h, cap_scores_h, cap_probs_h, cap_kst_h, cap_qst_h;
    // timing (events at phase boundaries, only when enabled)
    fwd_timing timing;
    int timing_on;
    cudaEvent_t ev[KVS_MAX_TIMING_EVENTS];
    int ev_phase[KVS_MAX_TIMING_EVENTS];
    int n_ev, n_ev_created;
    // CUDA graphs for decode steps (KVS_CUDA_GRAPHS=1)
    int graphs_on;
    uint64_t gen;                         // bumped when any buffer a graph uses moves
    graph_entry graphs[KVS_GRAPH_SLOTS];
    unsigned long long graph_clock;
};

// ==== small helpers ==============================================================================

static size_t a256(size_t x) { return (x + 255) & ~(size_t)255; }

// Device buffer of at least `need` bytes (contents not kept). 25% headroom.
static int dgrow(fwd_cuda_state *st, void **p, size_t *cap_bytes, size_t need)
{
    if (need <= *cap_bytes && *p) return 0;
    size_t cap = need + need / 4 + 256;
    if (*p) cudaFree(*p);
    *p = NULL;
    *cap_bytes = 0;
    cudaError_t e = cudaMalloc(p, cap);
    if (e != cudaSuccess) {
        *p = NULL;
        return kvs_error(KVS_ENOMEM, "cannot allocate %.1f MiB of device memory for "
                         "activations: %s (fewer tokens per step, or a smaller --kv-memory)",
                         (double)cap / (1 << 20), cudaGetErrorString(e));
    }
    *cap_bytes = cap;
    st->gen++;
    return 0;
}

static int hgrow(void **p, size_t *cap_bytes, size_t need)
{
    if (need <= *cap_bytes && *p) return 0;
    size_t cap = need + need / 4 + 256;
    if (*p) cudaFreeHost(*p);
    *p = NULL;
    *cap_bytes = 0;
    cudaError_t e = cudaHostAlloc(p, cap, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        *p = NULL;
        return kvs_error(KVS_ENOMEM, "cannot allocate %.1f MiB of pinned host memory: %s",
                         (double)cap / (1 << 20), cudaGetErrorString(e));
    }
    *cap_bytes = cap;
    return 0;
}

// The plan's block allocator: pinned host memory (the engine's plan uses it, backend.h).
extern "C" void *fwd_cuda_plan_grow(void *ctx, void *old, size_t bytes)
{
    (void)ctx;
    if (old) cudaFreeHost(old);
    if (!bytes) return NULL;
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) return NULL;
    return p;
}

// Y[T][N] (fp32) = X[T][K] @ W[N][K]^T + beta Y: column-major Y^T = W^T(op) X^T.
static int gemm(fwd_cuda_state *st, const void *X, const void *W, float *Y, int T, int N,
                int K, float beta)
{
    const float alpha = 1.0f;
    const cudaDataType ht = st->dtype == MEM_CUDA_BF16 ? kvs_h16<__nv_bfloat16>::blas_type
                                                       : kvs_h16<__half>::blas_type;
    cublasStatus_t s = cublasGemmEx(st->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W, ht,
                                    K, X, ht, K, &beta, Y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return kvs_error(KVS_EIO, "cuBLAS GEMM [%d x %d x %d] failed: %s", T, N, K,
                         cublasGetStatusString(s));
    return 0;
}

// Event at a phase boundary: the time since the previous boundary is charged to `phase`.
static void tmark(fwd_cuda_state *st, int phase)
{
    if (!st->timing_on || st->n_ev >= KVS_MAX_TIMING_EVENTS) return;
    if (st->n_ev == st->n_ev_created) {
        if (cudaEventCreate(&st->ev[st->n_ev]) != cudaSuccess) return;
        st->n_ev_created++;
    }
    st->ev_phase[st->n_ev] = phase;
    cudaEventRecord(st->ev[st->n_ev++], st->stream);
}

static void tcollect(fwd_cuda_state *st)
{
    double *ph[5] = {&st->timing.other, &st->timing.gemm, &st->timing.kv_write,
                     &st->timing.attention, &st->timing.logits};
    for (int i = 1; i < st->n_ev; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, st->ev[i - 1], st->ev[i]) == cudaSuccess)
            *ph[st->ev_phase[i]] += ms * 1e-3;
    }
    st->n_ev = 0;
}

// ==== weights ====================================================================================

// fp32 host tensor -> 16-bit device tensor through a device staging buffer.
static int upload_half(const fwd_cuda_state *st, void *dst, const float *src, size_t n,
                       float *stage, size_t stage_n)
{
    for (size_t i = 0; i < n; i += stage_n) {
        size_t k = n - i < stage_n ? n - i : stage_n;
        KVS_CUDA_TRY(cudaMemcpy(stage, src + i, k * sizeof(float), cudaMemcpyHostToDevice));
        int rc = kvs_k_f32_to_half(stage, (uint16_t *)dst + i, k, st->dtype, NULL);
        if (rc) return rc;
        KVS_CUDA_TRY(cudaDeviceSynchronize());
    }
    return 0;
}

static int upload_weights(fwd_cuda_state *st, const model *m)
{
    const model_config *c = &m->cfg;
    const size_t D = c->d_model, hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads;
    const size_t F = c->d_ff, V = c->n_vocab, QKV = (Hq + 2 * Hkv) * hd;
    const int tied = m->output == m->tok_embd;
    const size_t H = sizeof(uint16_t); // either 16-bit type
    size_t per_layer = 2 * a256(D * 4) + a256(QKV * D * H) + a256(D * Hq * hd * H) +
                       a256(2 * F * D * H) + a256(D * F * H);
    size_t total = a256(V * D * H) + (tied ? 0 : a256(V * D * H)) + a256(D * 4) +
                   per_layer * c->n_layers;
    KVS_CUDA_TRY(cudaMalloc(&st->wbase, total));
    st->wbytes = total;
    char *b = (char *)st->wbase;
#define TAKE(ptr, type, bytes) do { ptr = (type *)b; b += a256(bytes); } while (0)
    TAKE(st->tok_embd, void, V * D * H);
    if (tied) st->output = st->tok_embd;
    else TAKE(st->output, void, V * D * H);
    TAKE(st->output_norm, float, D * 4);
    st->layers = (dev_layer *)calloc((size_t)c->n_layers, sizeof(dev_layer));
    if (!st->layers) return kvs_error(KVS_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        dev_layer *dl = &st->layers[l];
        TAKE(dl->attn_norm, float, D * 4);
        TAKE(dl->ffn_norm, float, D * 4);
        TAKE(dl->wqkv, void, QKV * D * H);
        TAKE(dl->wo, void, D * Hq * hd * H);
        TAKE(dl->w_gate_up, void, 2 * F * D * H);
        TAKE(dl->w_down, void, D * F * H);
    }
#undef TAKE
    const size_t stage_n = (size_t)1 << 24;
    float *stage = NULL;
    KVS_CUDA_TRY(cudaMalloc(&stage, stage_n * sizeof(float)));
    int rc = upload_half(st, st->tok_embd, m->tok_embd, V * D, stage, stage_n);
    if (!rc && !tied) rc = upload_half(st, st->output, m->output, V * D, stage, stage_n);
    if (!rc) rc = kvs_cuda_upload(st->output_norm, m->output_norm, D * 4);
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const model_layer *ly = &m->layers[l];
        dev_layer *dl = &st->layers[l];
        if (!rc) rc = kvs_cuda_upload(dl->attn_norm, ly->attn_norm, D * 4);
        if (!rc) rc = kvs_cuda_upload(dl->ffn_norm, ly->ffn_norm, D * 4);
        if (!rc) rc = upload_half(st, dl->wqkv, ly->wqkv, QKV * D, stage, stage_n);
        if (!rc) rc = upload_half(st, dl->wo, ly->wo, D * Hq * hd, stage, stage_n);
        if (!rc) rc = upload_half(st, dl->w_gate_up, ly->w_gate_up, 2 * F * D, stage, stage_n);
        if (!rc) rc = upload_half(st, dl->w_down, ly->w_down, D * F, stage, stage_n);
    }
    cudaFree(stage);
    return rc;
}

static int ensure_rope(fwd_cuda_state *st, int rows)
{
    if (rows <= st->rope_rows) return 0;
    int n = st->rope_rows ? st->rope_rows : 1024;
    while (n < rows) n = n > (1 << 29) ? rows : 2 * n;
    const size_t half = st->cfg.head_dim / 2, bytes = (size_t)n * half * sizeof(float);
    float *c = (float *)malloc(bytes), *s = (float *)malloc(bytes);
    if (!c || !s) { free(c); free(s); return kvs_error(KVS_ENOMEM, "out of memory (RoPE)"); }
    kvs_rope_table(n, st->cfg.head_dim, st->cfg.rope_base, c, s);
    cudaFree(st->cos_t);
    cudaFree(st->sin_t);
    st->cos_t = st->sin_t = NULL;
    st->rope_rows = 0;
    cudaError_t e;
    if ((e = cudaMalloc(&st->cos_t, bytes)) != cudaSuccess ||
        (e = cudaMalloc(&st->sin_t, bytes)) != cudaSuccess ||
        (e = cudaMemcpy(st->cos_t, c, bytes, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = cudaMemcpy(st->sin_t, s, bytes, cudaMemcpyHostToDevice)) != cudaSuccess) {
        free(c);
        free(s);
        return kvs_cuda_err(e, "RoPE tables", __FILE__, __LINE__);
    }
    free(c);
    free(s);
    st->rope_rows = n;
    st->gen++;
    return 0;
}

// ==== create / destroy ============================================================================

extern "C" void fwd_cuda_destroy(fwd_cuda_state *st)
{
    if (!st) return;
    cudaStreamSynchronize(st->stream);
    for (int i = 0; i < KVS_GRAPH_SLOTS; i++)
        if (st->graphs[i].exec) cudaGraphExecDestroy(st->graphs[i].exec);
    for (int i = 0; i < st->n_ev_created; i++) cudaEventDestroy(st->ev[i]);
    void *dev[] = {st->wbase, st->cos_t, st->sin_t, st->filters, st->x, st->qkv, st->gu,
                   st->logits, st->scores, st->h, st->att, st->act, st->xr, st->part,
                   st->probs, st->kst, st->qst, st->plan_d, st->idx_d, st->fscratch_d,
                   st->blas_ws};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) cudaFree(dev[i]);
    void *host[] = {st->logits_h, st->scores_h, st->probs_h, st->kst_h, st->qst_h};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        if (host[i]) cudaFreeHost(host[i]);
    mem_cuda_pool_destroy(st->pool);
    kvs_filter_cache_deinit(&st->fc);
    if (st->blas) cublasDestroy(st->blas);
    if (st->stream) cudaStreamDestroy(st->stream);
    free(st->layers);
    free(st);
}

extern "C" int fwd_cuda_create(const model *m, int page_slots, size_t kv_bytes,
                               double kv_fraction, const kv_format *kv_fmt,
                               fwd_cuda_state **out)
{
    *out = NULL;
    if (kv_fmt && kv_fmt != &kv_fmt_f16 && kv_fmt != &kv_fmt_bf16)
        return kvs_error(KVS_EUNSUPPORTED, "the CUDA backend stores KV as f16 or bf16, not %s",
                         kv_fmt->name);
    const int dtype = kv_fmt == &kv_fmt_bf16 ? MEM_CUDA_BF16 : MEM_CUDA_F16;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        return kvs_error(KVS_EUNSUPPORTED, "no CUDA device is visible (use --device cpu)");
    }
    const model_config *c = &m->cfg;
    if (c->head_dim != 64 && c->head_dim != 128)
        return kvs_error(KVS_EUNSUPPORTED, "the CUDA backend supports head dim 64 or 128; "
                         "this model has %d (use --device cpu)", c->head_dim);
    if (c->n_heads / c->n_kv_heads > 16)
        return kvs_error(KVS_EUNSUPPORTED, "GQA group of %d query heads is too large",
                         c->n_heads / c->n_kv_heads);
    if (page_slots <= 0) page_slots = 16;
    fwd_cuda_state *st = (fwd_cuda_state *)calloc(1, sizeof *st);
    if (!st) return kvs_error(KVS_ENOMEM, "out of memory");
    st->cfg = *c;
    st->dtype = dtype;
    kvs_filter_cache_init(&st->fc, c);
    const char *g = getenv("KVS_CUDA_GRAPHS");
    st->graphs_on = g && g[0] == '1';
    const char *tm = getenv("KVS_CUDA_TIMING");
    st->timing_on = tm && tm[0] == '1';
    int rc = 0;
    cudaDeviceProp pr;
    cudaError_t e;
#define TRY(call) do { if ((e = (call)) != cudaSuccess) { \
        rc = kvs_cuda_err(e, #call, __FILE__, __LINE__); goto fail; } } while (0)
    TRY(cudaSetDevice(0));
    TRY(cudaGetDeviceProperties(&pr, 0));
    if (pr.major < 8) {
        rc = kvs_error(KVS_EUNSUPPORTED, "%s has compute capability %d.%d; kvsieve's CUDA "
                       "kernels are built for sm_80 and sm_90 (and newer through PTX)",
                       pr.name, pr.major, pr.minor);
        goto fail;
    }
    st->n_sm = pr.multiProcessorCount;
    TRY(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
    if (cublasCreate(&st->blas) != CUBLAS_STATUS_SUCCESS) {
        rc = kvs_error(KVS_EIO, "cuBLAS could not be initialised");
        goto fail;
    }
    st->blas_ws_bytes = (size_t)32 << 20;
    TRY(cudaMalloc(&st->blas_ws, st->blas_ws_bytes));
    if (cublasSetStream(st->blas, st->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(st->blas, st->blas_ws, st->blas_ws_bytes) != CUBLAS_STATUS_SUCCESS) {
        rc = kvs_error(KVS_EIO, "cuBLAS stream / workspace setup failed");
        goto fail;
    }
    if ((rc = upload_weights(st, m))) goto fail;
    if ((rc = ensure_rope(st, c->n_ctx > 0 ? c->n_ctx : 4096))) goto fail;
    TRY(cudaMalloc(&st->filters, (size_t)KVS_MAX_FILTER_SETS * c->n_layers * c->n_kv_heads *
                                     c->head_dim * sizeof(float)));
    {
        const size_t page = mem_cuda_page_bytes(page_slots, c->head_dim);
        int64_t n_pages;
        if (kv_bytes) {
            n_pages = (int64_t)(kv_bytes / page);
        } else {
            size_t free_b = 0, total_b = 0;
            TRY(cudaMemGetInfo(&free_b, &total_b));
            double frac = kv_fraction > 0.0 && kv_fraction < 1.0 ? kv_fraction : 0.85;
            // leave room for activations, cuBLAS and the logits of large batches
            double reserve = 1.0 * (1 << 30) + (double)total_b * 0.03;
            double usable = ((double)free_b - reserve) * frac;
            n_pages = usable > 0 ? (int64_t)(usable / (double)page) : 0;
        }
        if (n_pages > INT32_MAX / page_slots) n_pages = INT32_MAX / page_slots;
        if (n_pages < (int64_t)c->n_layers * c->n_kv_heads) {
            rc = kvs_error(KVS_EINVAL, "device KV memory holds %lld pages of %zu bytes; one "
                           "token of this model needs %d (one page per layer and KV head)",
                           (long long)n_pages, page, c->n_layers * c->n_kv_heads);
            goto fail;
        }
        if ((rc = mem_cuda_pool_create(page_slots, c->head_dim, (int32_t)n_pages, dtype,
                                       &st->pool)))
            goto fail;
    }
#undef TRY
    *out = st;
    return 0;
fail:
    fwd_cuda_destroy(st);
    return rc;
}

extern "C" int32_t fwd_cuda_n_pages(const fwd_cuda_state *st) { return st->pool->n_pages; }

extern "C" size_t fwd_cuda_slot_bytes(const fwd_cuda_state *st)
{
    return 2 * (size_t)st->cfg.head_dim * sizeof(uint16_t); // K + V rows, 16 bits an element
}

extern "C" const kv_format *fwd_cuda_kv_format(const fwd_cuda_state *st)
{
    return st->dtype == MEM_CUDA_BF16 ? &kv_fmt_bf16 : &kv_fmt_f16;
}

extern "C" const fwd_timing *fwd_cuda_last_timing(const fwd_cuda_state *st)
{
    return &st->timing;
}

extern "C" void fwd_cuda_set_timing(fwd_cuda_state *st, int on) { st->timing_on = on; }
extern "C" void fwd_cuda_set_graphs(fwd_cuda_state *st, int on) { st->graphs_on = on; }
extern "C" mem_cuda_pool *fwd_cuda_pool(fwd_cuda_state *st) { return st->pool; }

// ==== one step ==================================================================================

// Device buffer of exactly `bytes` (old contents dropped).
static int dalloc(fwd_cuda_state *st, void **p, size_t bytes)
{
    size_t cap = 0;
    if (*p) cudaFree(*p);
    *p = NULL;
    return dgrow(st, p, &cap, bytes);
}

static int ensure_buffers(fwd_cuda_state *st, const kvs_plan *p, int n_split)
{
    const model_config *c = &st->cfg;
    const size_t D = c->d_model, hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads;
    const size_t QKV = (Hq + 2 * Hkv) * hd, F = c->d_ff, L = c->n_layers, V = c->n_vocab;
    const size_t H = sizeof(uint16_t); // either 16-bit type
    int rc;
    if (p->T > st->cap_T) {
        const size_t T = (size_t)p->T + p->T / 4 + 16;
        st->cap_T = 0;
        if ((rc = dalloc(st, (void **)&st->x, T * D * 4)) ||
            (rc = dalloc(st, (void **)&st->qkv, T * QKV * 4)) ||
            (rc = dalloc(st, (void **)&st->gu, T * 2 * F * 4)) ||
            (rc = dalloc(st, (void **)&st->h, T * D * H)) ||
            (rc = dalloc(st, (void **)&st->att, T * Hq * hd * H)) ||
            (rc = dalloc(st, (void **)&st->act, T * F * H)) ||
            (rc = dalloc(st, (void **)&st->scores, L * T * Hkv * 4)) ||
            (rc = hgrow((void **)&st->scores_h, &st->cap_scores_h, L * T * Hkv * 4)))
            return rc;
        st->cap_T = (int)T;
    }
    if (p->R > st->cap_R) {
        const size_t R = (size_t)p->R + p->R / 4 + 8;
        st->cap_R = 0;
        if ((rc = dalloc(st, (void **)&st->xr, R * D * H)) ||
            (rc = dalloc(st, (void **)&st->logits, R * V * 4)) ||
            (rc = hgrow((void **)&st->logits_h, &st->cap_logits_h, R * V * 4)))
            return rc;
        st->cap_R = (int)R;
    }
    const size_t part = n_split > 1 ? (size_t)n_split * p->n_dec * Hq * (hd + 2) * 4 : 0;
    if (part && (rc = dgrow(st, (void **)&st->part, &st->cap_part, part))) return rc;
    const size_t probs = (size_t)p->n_probs * 4;
    if (probs && ((rc = dgrow(st, (void **)&st->probs, &st->cap_probs, probs)) ||
                  (rc = hgrow((void **)&st->probs_h, &st->cap_probs_h, probs))))
        return rc;
    const size_t kst = L * (size_t)p->n_key_stash * Hkv * hd * 4;
    if (kst && ((rc = dgrow(st, (void **)&st->kst, &st->cap_kst, kst)) ||
                (rc = hgrow((void **)&st->kst_h, &st->cap_kst_h, kst))))
        return rc;
    const size_t qst = L * (size_t)p->n_query_stash * Hq * hd * 4;
    if (qst && ((rc = dgrow(st, (void **)&st->qst, &st->cap_qst, qst)) ||
                (rc = hgrow((void **)&st->qst_h, &st->cap_qst_h, qst))))
        return rc;
    if ((rc = dgrow(st, &st->plan_d, &st->cap_plan_d, p->block_size))) return rc;
    return ensure_rope(st, p->max_pos + 1);
}

// Everything between the plan upload and the result copies (what a graph captures).
static int run_body(fwd_cuda_state *st, const kvs_plan *dp, int n_split)
{
    const model_config *c = &st->cfg;
    const int D = c->d_model, hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads;
    const int L = c->n_layers, F = c->d_ff, V = c->n_vocab, T = dp->T, R = dp->R;
    const int QKV = (Hq + 2 * Hkv) * hd;
    void *s = st->stream;
    int rc;
    const int dt = st->dtype;
    if ((rc = kvs_k_embed(st->tok_embd, dp->tok, T, D, st->x, dt, s))) return rc;
    kvs_rope_kv_args ra;
    memset(&ra, 0, sizeof ra);
    ra.qkv = st->qkv;
    ra.T = T;
    ra.Hq = Hq;
    ra.Hkv = Hkv;
    ra.hd = hd;
    ra.pos = dp->pos;
    ra.tok_seq = dp->tok_seq;
    ra.seq = dp->seq;
    ra.cos_t = st->cos_t;
    ra.sin_t = st->sin_t;
    ra.pool = *st->pool;
    ra.set_stride = (size_t)L * Hkv * hd;
    kvs_attn_args aa;
    memset(&aa, 0, sizeof aa);
    aa.q = st->qkv;
    aa.q_stride = QKV;
    aa.out = st->att;
    aa.out_stride = Hq * hd;
    aa.pos = dp->pos;
    aa.tok_seq = dp->tok_seq;
    aa.seq = dp->seq;
    aa.streams = dp->stream;
    aa.pt = dp->pt;
    aa.pool = *st->pool;
    aa.L = L;
    aa.Hq = Hq;
    aa.Hkv = Hkv;
    aa.hd = hd;
    aa.scale = 1.0f / sqrtf((float)hd);
    aa.dec = dp->dec;
    aa.n_dec = dp->n_dec;
    aa.n_split = n_split;
    aa.part = st->part;
    aa.tiles = dp->tiles;
    aa.n_tiles = dp->n_tiles;
    aa.obs = dp->obs;
    aa.n_obs = dp->n_obs;
    aa.probs = st->probs;
    tmark(st, PH_OTHER);
    for (int l = 0; l < L; l++) {
        const dev_layer *ly = &st->layers[l];
        if ((rc = kvs_k_rmsnorm(st->x, NULL, T, D, ly->attn_norm, c->rms_eps, st->h, dt, s)))
            return rc;
        tmark(st, PH_OTHER);
        if ((rc = gemm(st, st->h, ly->wqkv, st->qkv, T, QKV, D, 0.0f))) return rc;
        tmark(st, PH_GEMM);
        ra.slot_map = dp->slot_map + (size_t)l * T * Hkv;
        ra.filters = st->filters + (size_t)l * Hkv * hd;
        ra.scores = st->scores + (size_t)l * T * Hkv;
        ra.key_stash = st->kst ? st->kst + (size_t)l * dp->n_key_stash * Hkv * hd : NULL;
        ra.query_stash = st->qst ? st->qst + (size_t)l * dp->n_query_stash * Hq * hd : NULL;
        if ((rc = kvs_k_rope_kv_write(&ra, s))) return rc;
        tmark(st, PH_KV);
        aa.layer = l;
        if ((rc = kvs_k_attn_decode(&aa, s))) return rc;
        if ((rc = kvs_k_attn_prefill(&aa, s))) return rc;
        if ((rc = kvs_k_attn_probs(&aa, s))) return rc;
        tmark(st, PH_ATT);
        if ((rc = gemm(st, st->att, ly->wo, st->x, T, D, Hq * hd, 1.0f))) return rc;
        tmark(st, PH_GEMM);
        if ((rc = kvs_k_rmsnorm(st->x, NULL, T, D, ly->ffn_norm, c->rms_eps, st->h, dt, s)))
            return rc;
        tmark(st, PH_OTHER);
        if ((rc = gemm(st, st->h, ly->w_gate_up, st->gu, T, 2 * F, D, 0.0f))) return rc;
        tmark(st, PH_GEMM);
        if ((rc = kvs_k_swiglu(st->gu, T, F, st->act, dt, s))) return rc;
        tmark(st, PH_OTHER);
        if ((rc = gemm(st, st->act, ly->w_down, st->x, T, D, F, 1.0f))) return rc;
        tmark(st, PH_GEMM);
    }
    if (R > 0) {
        if ((rc = kvs_k_rmsnorm(st->x, dp->rows, R, D, st->output_norm, c->rms_eps, st->xr, dt,
                                s)))
            return rc;
        if ((rc = gemm(st, st->xr, st->output, st->logits, R, V, D, 0.0f))) return rc;
    }
    return 0;
}

// A captured graph for this decode step shape, or NULL (then run directly).
static cudaGraphExec_t graph_for(fwd_cuda_state *st, const kvs_plan *p, const kvs_plan *dp,
                                 int n_split)
{
    graph_entry *slot = NULL, *lru = &st->graphs[0];
    for (int i = 0; i < KVS_GRAPH_SLOTS; i++) {
        graph_entry *g = &st->graphs[i];
        if (g->exec && g->T == p->T && g->S == p->S && g->R == p->R && g->n_split == n_split &&
            g->gen == st->gen) {
            g->last_used = ++st->graph_clock;
            return g->exec;
        }
        if (!g->exec && !slot) slot = g;
        if (g->last_used < lru->last_used) lru = g;
    }
    if (!slot) {
        slot = lru;
        cudaGraphExecDestroy(slot->exec);
        slot->exec = NULL;
    }
    cudaGraph_t graph = NULL;
    if (cudaStreamBeginCapture(st->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    int saved = st->timing_on;
    st->timing_on = 0;
    int rc = run_body(st, dp, n_split);
    st->timing_on = saved;
    cudaError_t e = cudaStreamEndCapture(st->stream, &graph);
    if (rc || e != cudaSuccess || !graph) {
        if (graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        st->graphs_on = 0; // capture does not work here: run directly from now on
        return NULL;
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        st->graphs_on = 0;
        return NULL;
    }
    slot->T = p->T;
    slot->S = p->S;
    slot->R = p->R;
    slot->n_split = n_split;
    slot->gen = st->gen;
    slot->exec = exec;
    slot->last_used = ++st->graph_clock;
    return exec;
}

extern "C" int fwd_cuda(fwd_cuda_state *st, const model *m, mem_pool *pool, kvs_plan *p,
                        const fwd_seq *seqs, float **logits, int *n_rows)
{
    *logits = NULL;
    *n_rows = 0;
    const model_config *c = &st->cfg;
    memset(&st->timing, 0, sizeof st->timing);
    st->n_ev = 0;
    double t0 = kvs_now();
    if (m->cfg.n_layers != c->n_layers || m->cfg.d_model != c->d_model ||
        m->cfg.n_vocab != c->n_vocab)
        return kvs_error(KVS_EINVAL, "fwd_cuda: the model differs from the one uploaded");
    if (pool->n_pages != st->pool->n_pages || pool->page_slots != st->pool->page_slots)
        return kvs_error(KVS_EINVAL, "fwd_cuda: the KV pool (%d pages of %d) is not the "
                         "device pool's (%d of %d)", (int)pool->n_pages, pool->page_slots,
                         (int)st->pool->n_pages, st->pool->page_slots);
    // filter sets for the Q-Filters sequences (the rest of the plan is the engine's)
    int rc = kvs_filter_cache_assign(&st->fc, p);
    if (rc) return rc;
    const int G = c->n_heads / c->n_kv_heads, L = c->n_layers, Hkv = c->n_kv_heads;
    const int hd = c->head_dim, Hq = c->n_heads;
    const int n_split = p->n_dec > 0 ? kvs_attn_decode_splits(p->n_dec, Hkv, G,
                                                              p->max_dec_pages, st->n_sm) : 1;
    if ((rc = ensure_buffers(st, p, n_split))) return rc;
    cudaStream_t s = st->stream;
    // filter sets first seen in this step
    const size_t set_floats = (size_t)L * Hkv * hd;
    for (int i = 0; i < st->fc.n; i++)
        if (st->fc.dirty[i] && st->fc.u[i]) {
            KVS_CUDA_TRY(cudaMemcpy(st->filters + i * set_floats, st->fc.u[i],
                                    set_floats * sizeof(float), cudaMemcpyHostToDevice));
            st->fc.dirty[i] = 0;
        }
    KVS_CUDA_TRY(cudaMemcpyAsync(st->plan_d, p->block, p->block_size, cudaMemcpyHostToDevice, s));
    kvs_plan dp;
    kvs_plan_rebase(p, st->plan_d, &dp);
    tmark(st, PH_OTHER);
    if ((rc = mem_cuda_mark(st->pool, dp.marks, p->n_marks, s))) return rc;
    const int graphable = st->graphs_on && !st->timing_on && p->n_tiles == 0 && p->n_obs == 0 &&
                          p->n_key_stash == 0 && p->n_query_stash == 0;
    cudaGraphExec_t exec = graphable ? graph_for(st, p, &dp, n_split) : NULL;
    if (exec) KVS_CUDA_TRY(cudaGraphLaunch(exec, s));
    else if ((rc = run_body(st, &dp, n_split))) return rc;
    // results back
    const size_t V = c->n_vocab;
    if (p->R) KVS_CUDA_TRY(cudaMemcpyAsync(st->logits_h, st->logits, (size_t)p->R * V * 4,
                                           cudaMemcpyDeviceToHost, s));
    KVS_CUDA_TRY(cudaMemcpyAsync(st->scores_h, st->scores, (size_t)L * p->T * Hkv * 4,
                                 cudaMemcpyDeviceToHost, s));
    if (p->n_probs) KVS_CUDA_TRY(cudaMemcpyAsync(st->probs_h, st->probs, (size_t)p->n_probs * 4,
                                                 cudaMemcpyDeviceToHost, s));
    if (p->n_key_stash)
        KVS_CUDA_TRY(cudaMemcpyAsync(st->kst_h, st->kst,
                                     (size_t)L * p->n_key_stash * Hkv * hd * 4,
                                     cudaMemcpyDeviceToHost, s));
    if (p->n_query_stash)
        KVS_CUDA_TRY(cudaMemcpyAsync(st->qst_h, st->qst,
                                     (size_t)L * p->n_query_stash * Hq * hd * 4,
                                     cudaMemcpyDeviceToHost, s));
    tmark(st, PH_LOGITS);
    KVS_CUDA_TRY(cudaStreamSynchronize(s));
    if (st->timing_on) tcollect(st);
    if ((rc = kvs_plan_finish(p, pool, seqs, st->scores_h, st->kst_h, st->qst_h, st->probs_h)))
        return rc;
    if (!st->timing_on) st->timing.other = kvs_now() - t0;
    *logits = st->logits_h;
    *n_rows = p->R;
    return 0;
}

// ==== engine helpers: compaction, slot copies, key reads, score writes ============================

// Scratch buffers outside the step (no graph uses them: keep the graphs' generation).
static int dscratch(fwd_cuda_state *st, void **p, size_t *cap, size_t bytes)
{
    const uint64_t gen = st->gen;
    int rc = dgrow(st, p, cap, bytes);
    st->gen = gen;
    return rc;
}

static int ensure_idx(fwd_cuda_state *st, size_t n_ints)
{
    return dscratch(st, (void **)&st->idx_d, &st->cap_idx, n_ints * sizeof(int32_t));
}

extern "C" int64_t kvs_cuda_compact_streams(fwd_cuda_state *st, mem_pool *pool,
                                            mem_stream *const *streams, int n)
{
    int64_t cap = 0;
    for (int i = 0; i < n; i++) cap += streams[i]->n_holes;
    int32_t *pairs = (int32_t *)malloc((size_t)(2 * cap + 2) * sizeof(int32_t));
    if (!pairs) return kvs_error(KVS_ENOMEM, "out of memory planning compaction");
    int32_t *src = pairs, *dst = pairs + cap + 1;
    int64_t moves = 0;
    for (int i = 0; i < n; i++)
        moves += mem_stream_compact(pool, streams[i], src + moves, dst + moves);
    int rc = 0;
    if (moves > 0) {
        if (moves > INT32_MAX / 2) rc = kvs_error(KVS_EINVAL, "too many compaction moves");
        if (!rc) rc = ensure_idx(st, 2 * (size_t)moves);
        cudaError_t e = cudaSuccess;
        if (!rc) e = cudaMemcpyAsync(st->idx_d, src, moves * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, st->stream);
        if (!rc && e == cudaSuccess)
            e = cudaMemcpyAsync(st->idx_d + moves, dst, moves * sizeof(int32_t),
                                cudaMemcpyHostToDevice, st->stream);
        if (!rc && e != cudaSuccess) rc = kvs_cuda_err(e, "compaction upload", __FILE__, __LINE__);
        if (!rc)
            rc = mem_cuda_slot_copy(st->pool, st->idx_d, st->idx_d + moves, (int)moves,
                                    MEM_CUDA_COPY_KV | MEM_CUDA_COPY_META | MEM_CUDA_CLEAR_SRC,
                                    st->stream);
        // the host arrays are reused at once by the caller's next call: wait for the copy
        if (!rc && (e = cudaStreamSynchronize(st->stream)) != cudaSuccess)
            rc = kvs_cuda_err(e, "compaction copy", __FILE__, __LINE__);
    }
    free(pairs);
    return rc ? rc : moves;
}

extern "C" int32_t kvs_cuda_compact_stream(fwd_cuda_state *st, mem_pool *pool, mem_stream *s)
{
    int64_t r = kvs_cuda_compact_streams(st, pool, &s, 1);
    return (int32_t)r;
}

extern "C" int kvs_cuda_copy_slots(fwd_cuda_state *st, const int32_t *src, const int32_t *dst,
                                   int n)
{
    if (n <= 0) return 0;
    int rc = ensure_idx(st, 2 * (size_t)n);
    if (rc) return rc;
    KVS_CUDA_TRY(cudaMemcpyAsync(st->idx_d, src, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                 st->stream));
    KVS_CUDA_TRY(cudaMemcpyAsync(st->idx_d + n, dst, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                 st->stream));
    if ((rc = mem_cuda_slot_copy(st->pool, st->idx_d, st->idx_d + n, n,
                                 MEM_CUDA_COPY_KV | MEM_CUDA_COPY_META, st->stream)))
        return rc;
    KVS_CUDA_TRY(cudaStreamSynchronize(st->stream));
    return 0;
}

template <typename H>
__global__ void k_gather_keys(const H *K, const int32_t *gslots, int n, int hd, float *out)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)n * hd;
         i += (long)gridDim.x * blockDim.x)
        out[i] = h2f(K[(size_t)gslots[i / hd] * hd + i % hd]);
}

__global__ void k_scatter_scores(float *score, const int32_t *gslots, const float *v, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        score[gslots[i]] = v[i];
}

template <typename H>
static int launch_gather(const void *base, const int32_t *gslots, int n, int hd, float *out,
                         cudaStream_t s)
{
    long total = (long)n * hd, blocks = (total + 255) / 256;
    KVS_LAUNCH((k_gather_keys<H>), blocks < 4096 ? (int)blocks : 4096, 256, s, (const H *)base,
               gslots, n, hd, out);
    KVS_CUDA_LAUNCHED("k_gather_keys");
    return 0;
}

// Gather n rows of a device K or V array into fp32 on the host.
static int read_rows(fwd_cuda_state *st, const void *base, const int32_t *gslots, int n,
                     float *out)
{
    if (n <= 0) return 0;
    const int hd = st->cfg.head_dim;
    int rc = ensure_idx(st, (size_t)n);
    if (!rc) rc = dscratch(st, (void **)&st->fscratch_d, &st->cap_fscratch, (size_t)n * hd * 4);
    if (rc) return rc;
    KVS_CUDA_TRY(cudaMemcpyAsync(st->idx_d, gslots, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                 st->stream));
    if ((rc = KVS_HALF_DISPATCH(st->dtype == MEM_CUDA_BF16, launch_gather, base, st->idx_d, n,
                                hd, st->fscratch_d, st->stream)))
        return rc;
    KVS_CUDA_TRY(cudaMemcpyAsync(out, st->fscratch_d, (size_t)n * hd * 4, cudaMemcpyDeviceToHost,
                                 st->stream));
    KVS_CUDA_TRY(cudaStreamSynchronize(st->stream));
    return 0;
}

extern "C" int kvs_cuda_read_keys(fwd_cuda_state *st, const int32_t *gslots, int n, float *out)
{
    return read_rows(st, st->pool->k, gslots, n, out);
}

extern "C" int kvs_cuda_read_values(fwd_cuda_state *st, const int32_t *gslots, int n, float *out)
{
    return read_rows(st, st->pool->v, gslots, n, out);
}

extern "C" int kvs_cuda_write_scores(fwd_cuda_state *st, const int32_t *gslots,
                                     const float *scores, int n)
{
    if (n <= 0) return 0;
    int rc = ensure_idx(st, (size_t)n);
    if (!rc) rc = dscratch(st, (void **)&st->fscratch_d, &st->cap_fscratch, (size_t)n * 4);
    if (rc) return rc;
    KVS_CUDA_TRY(cudaMemcpyAsync(st->idx_d, gslots, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                 st->stream));
    KVS_CUDA_TRY(cudaMemcpyAsync(st->fscratch_d, scores, (size_t)n * 4, cudaMemcpyHostToDevice,
                                 st->stream));
    int blocks = (n + 255) / 256;
    KVS_LAUNCH((k_scatter_scores), blocks < 4096 ? blocks : 4096, 256, st->stream, 
        st->pool->score, st->idx_d, st->fscratch_d, n);
    KVS_CUDA_LAUNCHED("k_scatter_scores");
    KVS_CUDA_TRY(cudaStreamSynchronize(st->stream));
    return 0;
}

// ==== benchmark entry points (tools/cmd_bench_cuda.c) ===============================================

// Pseudo-random fp16 values in [-1, 1) (a hash of the index), for synthetic K/V and q. The
// benchmarks run on fp16 pools (bf16 moves the same bytes through the same kernels).
__global__ void k_fill_random(__half *x, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = f2h<__half>((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

static int fill_random(void *x, size_t n, uint32_t seed)
{
    if (!n) return 0;
    size_t blocks = (n + 255) / 256;
    KVS_LAUNCH((k_fill_random), (unsigned)(blocks < 65535 ? blocks : 65535), 256, (cudaStream_t)0,
               (__half *)x, n, seed);
    KVS_CUDA_LAUNCHED("k_fill_random");
    return 0;
}

static double elapsed_s(cudaEvent_t a, cudaEvent_t b)
{
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, a, b);
    return ms * 1e-3;
}

extern "C" int kvs_cuda_bench_copy(size_t bytes, int iters, double *gbps)
{
    *gbps = 0.0;
    void *a = kvs_cuda_malloc(bytes), *b = kvs_cuda_malloc(bytes);
    if (!a || !b) { kvs_cuda_free(a); kvs_cuda_free(b); return KVS_ENOMEM; }
    cudaEvent_t e0, e1;
    KVS_CUDA_TRY(cudaEventCreate(&e0));
    KVS_CUDA_TRY(cudaEventCreate(&e1));
    KVS_CUDA_TRY(cudaMemset(a, 1, bytes));
    double best = 1e30;
    for (int i = 0; i < iters + 1; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        KVS_CUDA_TRY(cudaEventSynchronize(e1));
        double t = elapsed_s(e0, e1);
        if (i > 0 && t < best) best = t; // the first copy warms up
    }
    *gbps = 2.0 * (double)bytes / best / 1e9; // read + write
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    kvs_cuda_free(a);
    kvs_cuda_free(b);
    return 0;
}

// A synthetic KV layout for the benchmarks: n_streams streams of `slots` slots each over
// pages in shuffled order, `holes_pct` % of the slots empty (pos -1) at random.
struct bench_layout {
    mem_cuda_pool *pool;
    int32_t *pt_h, *pt_d;      // [n_streams][pages_per_stream]
    int pages_per_stream;
    int64_t live;
};

static int bench_layout_make(bench_layout *bl, int n_streams, int slots, int hd, int P,
                             int holes_pct, uint64_t seed)
{
    memset(bl, 0, sizeof *bl);
    bl->pages_per_stream = (slots + P - 1) / P;
    int64_t n_pages = (int64_t)n_streams * bl->pages_per_stream;
    if (n_pages * P > INT32_MAX) return kvs_error(KVS_EINVAL, "benchmark layout too large");
    int rc = mem_cuda_pool_create(P, hd, (int32_t)n_pages, MEM_CUDA_F16, &bl->pool);
    if (rc) return rc;
    bl->pt_h = (int32_t *)malloc((size_t)n_pages * 4);
    int32_t *pos = (int32_t *)malloc((size_t)n_pages * P * 4);
    if (!bl->pt_h || !pos) { free(pos); return kvs_error(KVS_ENOMEM, "out of memory"); }
    for (int64_t i = 0; i < n_pages; i++) bl->pt_h[i] = (int32_t)i;
    uint64_t x = seed | 1;
    for (int64_t i = n_pages - 1; i > 0; i--) { // shuffle: streams' pages scattered
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int64_t j = (int64_t)(x % (uint64_t)(i + 1));
        int32_t t = bl->pt_h[i]; bl->pt_h[i] = bl->pt_h[j]; bl->pt_h[j] = t;
    }
    for (int64_t i = 0; i < n_pages * P; i++) pos[i] = -1;
    for (int s = 0; s < n_streams; s++)
        for (int k = 0; k < slots; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if ((int)(x % 100) < holes_pct && k != slots - 1) continue;
            int32_t g = bl->pt_h[(int64_t)s * bl->pages_per_stream + k / P] * P + k % P;
            pos[g] = k;
            bl->live++;
        }
    rc = kvs_cuda_upload(bl->pool->pos, pos, (size_t)n_pages * P * 4);
    free(pos);
    if (rc) return rc;
    size_t n = (size_t)n_pages * P * hd;
    if ((rc = fill_random(bl->pool->k, n, 1u)) || (rc = fill_random(bl->pool->v, n, 2u))) return rc;
    bl->pt_d = (int32_t *)kvs_cuda_malloc((size_t)n_pages * 4);
    if (!bl->pt_d) return KVS_ENOMEM;
    if ((rc = kvs_cuda_upload(bl->pt_d, bl->pt_h, (size_t)n_pages * 4))) return rc;
    return kvs_cuda_sync();
}

static void bench_layout_free(bench_layout *bl)
{
    mem_cuda_pool_destroy(bl->pool);
    kvs_cuda_free(bl->pt_d);
    free(bl->pt_h);
}

extern "C" int kvs_cuda_bench_attention(int n_seqs, int ctx, int Hkv, int G, int hd, int P,
                                        int holes_pct, int iters, double *seconds, double *bytes,
                                        int *n_split_out)
{
    *seconds = *bytes = 0.0;
    const int n_streams = n_seqs * Hkv, Hq = Hkv * G;
    bench_layout bl;
    int rc = bench_layout_make(&bl, n_streams, ctx, hd, P, holes_pct, 12345);
    if (rc) { bench_layout_free(&bl); return rc; }
    // one query token per sequence at position ctx (sees every key)
    int32_t *pos = (int32_t *)malloc(n_seqs * 4), *tok_seq = (int32_t *)malloc(n_seqs * 4);
    kvs_seq_info *si = (kvs_seq_info *)calloc(n_seqs, sizeof *si);
    kvs_stream_info *st = (kvs_stream_info *)calloc((size_t)n_streams, sizeof *st);
    for (int s = 0; s < n_seqs; s++) {
        pos[s] = ctx;
        tok_seq[s] = s;
        si[s] = (kvs_seq_info){s, 1, 0, -1, 0, 0, -1, -1};
        for (int h = 0; h < Hkv; h++)
            st[s * Hkv + h] = (kvs_stream_info){(s * Hkv + h) * bl.pages_per_stream, ctx, -1};
    }
    const int n_split = kvs_attn_decode_splits(n_seqs, Hkv, G, bl.pages_per_stream, 132);
    void *d_pos = kvs_cuda_malloc(n_seqs * 4), *d_ts = kvs_cuda_malloc(n_seqs * 4);
    void *d_si = kvs_cuda_malloc(n_seqs * sizeof *si), *d_st = kvs_cuda_malloc(n_streams * sizeof *st);
    float *d_q = (float *)kvs_cuda_malloc((size_t)n_seqs * Hq * hd * 4);
    void *d_out = kvs_cuda_malloc((size_t)n_seqs * Hq * hd * 2);
    float *d_part = (float *)kvs_cuda_malloc((size_t)n_split * n_seqs * Hq * (hd + 2) * 4);
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (!d_pos || !d_ts || !d_si || !d_st || !d_q || !d_out || !d_part) rc = KVS_ENOMEM;
    if (!rc) rc = kvs_cuda_upload(d_pos, pos, n_seqs * 4);
    if (!rc) rc = kvs_cuda_upload(d_ts, tok_seq, n_seqs * 4);
    if (!rc) rc = kvs_cuda_upload(d_si, si, n_seqs * sizeof *si);
    if (!rc) rc = kvs_cuda_upload(d_st, st, n_streams * sizeof *st);
    if (!rc) rc = kvs_cuda_memset(d_q, 0, (size_t)n_seqs * Hq * hd * 4);
    if (!rc && (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess))
        rc = kvs_error(KVS_EIO, "cudaEventCreate failed");
    if (!rc) {
        kvs_attn_args a;
        memset(&a, 0, sizeof a);
        a.q = d_q; a.q_stride = Hq * hd; a.out = d_out; a.out_stride = Hq * hd;
        a.pos = (const int32_t *)d_pos; a.tok_seq = (const int32_t *)d_ts;
        a.seq = (const kvs_seq_info *)d_si; a.streams = (const kvs_stream_info *)d_st;
        a.pt = bl.pt_d; a.pool = *bl.pool; a.L = 1; a.layer = 0; a.Hq = Hq; a.Hkv = Hkv;
        a.hd = hd; a.scale = 1.0f / sqrtf((float)hd); a.dec = (const int32_t *)d_ts;
        a.n_dec = n_seqs; a.n_split = n_split; a.part = d_part;
        double best = 1e30;
        for (int i = 0; i < iters + 1 && !rc; i++) {
            cudaEventRecord(e0, 0);
            rc = kvs_k_attn_decode(&a, NULL);
            cudaEventRecord(e1, 0);
            if (!rc && cudaEventSynchronize(e1) != cudaSuccess)
                rc = kvs_error(KVS_EIO, "decode attention benchmark failed");
            double t = elapsed_s(e0, e1);
            if (i > 0 && t < best) best = t;
        }
        *seconds = best;
        // K and V rows of the live slots, pos of every slot, page-table entries
        *bytes = (double)bl.live * 2.0 * hd * sizeof(uint16_t) +
                 (double)n_streams * ctx * 4.0 + (double)n_streams * bl.pages_per_stream * 4.0;
        *n_split_out = n_split;
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    kvs_cuda_free(d_pos); kvs_cuda_free(d_ts); kvs_cuda_free(d_si); kvs_cuda_free(d_st);
    kvs_cuda_free(d_q); kvs_cuda_free(d_out); kvs_cuda_free(d_part);
    free(pos); free(tok_seq); free(si); free(st);
    bench_layout_free(&bl);
    return rc;
}

extern "C" int kvs_cuda_bench_compaction(int n_streams, int slots, int hd, int P, int holes_pct,
                                         double *seconds, double *bytes, int64_t *moves)
{
    *seconds = *bytes = 0.0;
    *moves = 0;
    bench_layout bl;
    int rc = bench_layout_make(&bl, n_streams, slots, hd, P, holes_pct, 777);
    if (rc) { bench_layout_free(&bl); return rc; }
    mem_cuda_stream *ms = (mem_cuda_stream *)calloc((size_t)n_streams, sizeof *ms);
    int32_t *pos = (int32_t *)malloc((size_t)bl.pool->n_pages * P * 4);
    rc = kvs_cuda_download(pos, bl.pool->pos, (size_t)bl.pool->n_pages * P * 4);
    int64_t cap = 0;
    for (int s = 0; s < n_streams && !rc; s++) {
        int live = 0;
        for (int k = 0; k < slots; k++)
            live += pos[bl.pt_h[(int64_t)s * bl.pages_per_stream + k / P] * P + k % P] >= 0;
        ms[s].pt_off = s * bl.pages_per_stream;
        ms[s].n_slots = slots;
        ms[s].n_live = live;
        ms[s].out_off = (int32_t)cap;
        cap += slots - live;
    }
    int32_t *d_src = (int32_t *)kvs_cuda_malloc((cap + 1) * 4);
    int32_t *d_dst = (int32_t *)kvs_cuda_malloc((cap + 1) * 4);
    int32_t *d_cnt = (int32_t *)kvs_cuda_malloc((size_t)n_streams * 4);
    mem_cuda_stream *d_ms = (mem_cuda_stream *)kvs_cuda_malloc((size_t)n_streams * sizeof *ms);
    if (!rc && (!d_src || !d_dst || !d_cnt || !d_ms)) rc = KVS_ENOMEM;
    if (!rc) rc = kvs_cuda_upload(d_ms, ms, (size_t)n_streams * sizeof *ms);
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (!rc && (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess))
        rc = kvs_error(KVS_EIO, "cudaEventCreate failed");
    if (!rc) {
        cudaEventRecord(e0, 0);
        rc = mem_cuda_compact_plan(bl.pool, bl.pt_d, d_ms, n_streams, d_src, d_dst, d_cnt, NULL);
        if (!rc)
            rc = mem_cuda_slot_copy(bl.pool, d_src, d_dst, (int)cap,
                                    MEM_CUDA_COPY_KV | MEM_CUDA_COPY_META | MEM_CUDA_CLEAR_SRC, NULL);
        cudaEventRecord(e1, 0);
        if (!rc && cudaEventSynchronize(e1) != cudaSuccess)
            rc = kvs_error(KVS_EIO, "compaction benchmark failed");
        *seconds = elapsed_s(e0, e1);
    }
    if (!rc) {
        int32_t *cnt = (int32_t *)malloc((size_t)n_streams * 4);
        rc = kvs_cuda_download(cnt, d_cnt, (size_t)n_streams * 4);
        for (int s = 0; s < n_streams && !rc; s++) *moves += cnt[s];
        free(cnt);
        // per move: K and V rows read and written, pos and score read and written, pos cleared
        *bytes = (double)*moves * (2.0 * 2.0 * hd * sizeof(uint16_t) + 4 * 4.0 + 4.0) +
                 (double)n_streams * slots * 4.0; // the plan reads every pos
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    kvs_cuda_free(d_src); kvs_cuda_free(d_dst); kvs_cuda_free(d_cnt); kvs_cuda_free(d_ms);
    free(ms); free(pos);
    bench_layout_free(&bl);
    return rc;
}

extern "C" int kvs_cuda_bench_kv_write(int T, int Hq, int Hkv, int hd, int iters, double *t_zero,
                                       double *t_dot, double *t_norm)
{
    *t_zero = *t_dot = *t_norm = 0.0;
    const int P = 16, QKV = (Hq + 2 * Hkv) * hd;
    const int32_t n_pages = (int32_t)(((int64_t)T * Hkv + P - 1) / P);
    mem_cuda_pool *pool;
    int rc = mem_cuda_pool_create(P, hd, n_pages, MEM_CUDA_F16, &pool);
    if (rc) return rc;
    int32_t *pos = (int32_t *)malloc(T * 4), *ts = (int32_t *)calloc(T, 4);
    int32_t *sm = (int32_t *)malloc((size_t)T * Hkv * 4);
    float *cs = (float *)malloc((size_t)(T + 1) * hd / 2 * 4);
    for (int t = 0; t < T; t++) pos[t] = t;
    for (int i = 0; i < T * Hkv; i++) sm[i] = i; // distinct slots
    for (int i = 0; i < (T + 1) * hd / 2; i++) cs[i] = 0.5f;
    float *d_qkv = (float *)kvs_cuda_malloc((size_t)T * QKV * 4);
    float *d_cs = (float *)kvs_cuda_malloc((size_t)(T + 1) * hd / 2 * 4);
    float *d_f = (float *)kvs_cuda_malloc((size_t)Hkv * hd * 4);
    float *d_sc = (float *)kvs_cuda_malloc((size_t)T * Hkv * 4);
    int32_t *d_pos = (int32_t *)kvs_cuda_malloc(T * 4), *d_ts = (int32_t *)kvs_cuda_malloc(T * 4);
    int32_t *d_sm = (int32_t *)kvs_cuda_malloc((size_t)T * Hkv * 4);
    kvs_seq_info *d_si = (kvs_seq_info *)kvs_cuda_malloc(sizeof(kvs_seq_info));
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (!d_qkv || !d_cs || !d_f || !d_sc || !d_pos || !d_ts || !d_sm || !d_si) rc = KVS_ENOMEM;
    if (!rc) rc = kvs_cuda_memset(d_qkv, 0, (size_t)T * QKV * 4);
    if (!rc) rc = kvs_cuda_memset(d_f, 0, (size_t)Hkv * hd * 4);
    if (!rc) rc = kvs_cuda_upload(d_cs, cs, (size_t)(T + 1) * hd / 2 * 4);
    if (!rc) rc = kvs_cuda_upload(d_pos, pos, T * 4);
    if (!rc) rc = kvs_cuda_upload(d_ts, ts, T * 4);
    if (!rc) rc = kvs_cuda_upload(d_sm, sm, (size_t)T * Hkv * 4);
    if (!rc && (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess))
        rc = kvs_error(KVS_EIO, "cudaEventCreate failed");
    const int kinds[3] = {KVS_SCORE_ZERO, KVS_SCORE_DOT, KVS_SCORE_NEG_NORM};
    double *out[3] = {t_zero, t_dot, t_norm};
    for (int k = 0; k < 3 && !rc; k++) {
        kvs_seq_info si = {0, T, kinds[k], kinds[k] == KVS_SCORE_DOT ? 0 : -1, 0, 0, -1, -1};
        rc = kvs_cuda_upload(d_si, &si, sizeof si);
        kvs_rope_kv_args a;
        memset(&a, 0, sizeof a);
        a.qkv = d_qkv; a.T = T; a.Hq = Hq; a.Hkv = Hkv; a.hd = hd; a.pos = d_pos; a.tok_seq = d_ts;
        a.seq = d_si; a.cos_t = d_cs; a.sin_t = d_cs; a.slot_map = d_sm; a.pool = *pool;
        a.filters = d_f; a.set_stride = (size_t)Hkv * hd; a.scores = d_sc;
        double best = 1e30;
        for (int i = 0; i < iters + 1 && !rc; i++) {
            cudaEventRecord(e0, 0);
            rc = kvs_k_rope_kv_write(&a, NULL);
            cudaEventRecord(e1, 0);
            if (!rc && cudaEventSynchronize(e1) != cudaSuccess)
                rc = kvs_error(KVS_EIO, "K-write benchmark failed");
            double t = elapsed_s(e0, e1);
            if (i > 0 && t < best) best = t;
        }
        *out[k] = best;
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    kvs_cuda_free(d_qkv); kvs_cuda_free(d_cs); kvs_cuda_free(d_f); kvs_cuda_free(d_sc);
    kvs_cuda_free(d_pos); kvs_cuda_free(d_ts); kvs_cuda_free(d_sm); kvs_cuda_free(d_si);
    free(pos); free(ts); free(sm); free(cs);
    mem_cuda_pool_destroy(pool);
    return rc;
}
