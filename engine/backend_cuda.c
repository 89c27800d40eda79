/* backend_cuda.c — the CUDA backend: the backend interface over the CUDA forward's entry points
 * (device.h, engine/cuda/). Compiled in every build; without CUDA, creating it fails with a
 * message saying so. */
#include "backend.h"

#include <stdlib.h>

#include "core/common.h"
#include "device.h"

static fwd_cuda_state *cu(const kvs_backend *b) { return b->state; }

static void cuda_destroy(kvs_backend *b)
{
    fwd_cuda_destroy(cu(b));
    free(b);
}

static int cuda_run(kvs_backend *b, const model *m, mem_pool *pool, kvs_plan *plan,
                    const fwd_seq *seqs, float **logits, int *n_rows)
{
    return fwd_cuda(cu(b), m, pool, plan, seqs, logits, n_rows);
}

static int cuda_copy_slots(kvs_backend *b, mem_pool *pool, const int32_t *src,
                           const int32_t *dst, int n)
{
    (void)pool;
    return kvs_cuda_copy_slots(cu(b), src, dst, n);
}

static int cuda_read_kv(kvs_backend *b, const int32_t *gslots, int n, float *k, float *v)
{
    int rc = k ? kvs_cuda_read_keys(cu(b), gslots, n, k) : 0;
    if (!rc && v) rc = kvs_cuda_read_values(cu(b), gslots, n, v);
    return rc;
}

static int cuda_scores_changed(kvs_backend *b, mem_pool *pool, const int32_t *gslots, int n)
{
    if (n <= 0) return KVS_OK;
    float *sc = malloc((size_t)n * sizeof *sc);
    if (!sc) return kvs_error(KVS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) sc[i] = pool->score[gslots[i]];
    int rc = kvs_cuda_write_scores(cu(b), gslots, sc, n);
    free(sc);
    return rc;
}

static int64_t cuda_compact(kvs_backend *b, mem_pool *pool, mem_stream *const *streams, int n)
{
    return kvs_cuda_compact_streams(cu(b), pool, streams, n);
}

static const fwd_timing *cuda_last_timing(const kvs_backend *b)
{
    return fwd_cuda_last_timing(cu(b));
}

static const kvs_backend_i cuda_backend_i = {
    .version = KVS_BACKEND_VERSION,
    .name = "cuda",
    .destroy = cuda_destroy,
    .run = cuda_run,
    .copy_slots = cuda_copy_slots,
    .read_kv = cuda_read_kv,
    .scores_changed = cuda_scores_changed,
    .compact = cuda_compact,
    .last_timing = cuda_last_timing,
};

int kvs_backend_cuda_create(const model *m, const kvs_backend_opts *o, kvs_backend **out)
{
    *out = NULL;
    if (o->kv_format_v && o->kv_format && o->kv_format_v != o->kv_format)
        return kvs_error(KVS_EUNSUPPORTED, "the CUDA backend stores keys and values in one "
                         "16-bit type; --kv-dtype %s/%s is CPU-only", o->kv_format->name,
                         o->kv_format_v->name);
    /* --kv-dtype f16 (the default) or bf16: the 16-bit type of the device's K/V pages, also
     * used for its weights and GEMM inputs; chosen here, at run time */
    const kv_format *fmt = o->kv_format ? o->kv_format : &kv_fmt_f16;
    if (fmt != &kv_fmt_f16 && fmt != &kv_fmt_bf16)
        return kvs_error(KVS_EUNSUPPORTED, "the CUDA backend stores KV as f16 or bf16, not %s",
                         fmt->name);
    /* The CUDA forward implements the original llama computation only: a model that needs
     * more (biases, NEOX RoPE, rope_freqs) is refused here rather than run wrong. */
    char why[128];
    if (model_needs_extensions(m, why, sizeof why))
        return kvs_error(KVS_EUNSUPPORTED, "the CUDA backend does not implement what this '%s' "
                         "model needs (%s); use --device cpu", m->cfg.arch->name, why);
    fwd_cuda_state *st;
    int rc = fwd_cuda_create(m, o->page_slots ? o->page_slots : 16, o->kv_bytes, 0.0, fmt, &st);
    if (rc) return rc;
    kvs_backend *b = calloc(1, sizeof *b);
    if (!b) {
        fwd_cuda_destroy(st);
        return kvs_error(KVS_ENOMEM, "out of memory");
    }
    b->i = &cuda_backend_i;
    b->state = st;
    b->page_slots = o->page_slots ? o->page_slots : 16;
    b->n_pages = fwd_cuda_n_pages(st);
    b->kv_format = fwd_cuda_kv_format(st);
    b->kv_format_v = b->kv_format;
    b->kv_slot_bytes = fwd_cuda_slot_bytes(st);
    b->kv_bytes = (size_t)b->n_pages * b->page_slots * b->kv_slot_bytes;
    b->plan_grow = fwd_cuda_plan_grow;
    b->plan_grow_ctx = st;
    *out = b;
    return KVS_OK;
}
