/* backend_cpu.c — the CPU backend: K/V rows in a host kv_store of the chosen format, the step
 * run by the CPU forward (forward_cpu.c). */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "forward_cpu.h"
#include "memory/kv_store.h"

typedef struct cpu_state {
    fwd_state *fwd;
    kv_store *kv;
} cpu_state;

static cpu_state *cpu(const kvs_backend *b) { return b->state; }

static void cpu_destroy(kvs_backend *b)
{
    cpu_state *st = cpu(b);
    if (st) {
        fwd_destroy(st->fwd);
        kv_store_destroy(st->kv);
        free(st);
    }
    free(b);
}

static int cpu_run(kvs_backend *b, const model *m, mem_pool *pool, kvs_plan *plan,
                   const fwd_seq *seqs, float **logits, int *n_rows)
{
    /* Holes (plan->marks) need nothing here: the host pool's pos is what attention reads. */
    return fwd_cpu(cpu(b)->fwd, m, pool, cpu(b)->kv, plan, seqs, logits, n_rows);
}

static int cpu_copy_slots(kvs_backend *b, mem_pool *pool, const int32_t *src, const int32_t *dst,
                          int n)
{
    (void)pool;
    kv_store_copy(cpu(b)->kv, src, dst, n);
    return KVS_OK;
}

static int cpu_read_kv(kvs_backend *b, const int32_t *gslots, int n, float *k, float *v)
{
    const kv_store *kv = cpu(b)->kv;
    const size_t hd = (size_t)kv->head_dim;
    for (int i = 0; i < n; i++) {
        if (gslots[i] < 0 || gslots[i] >= kv->n_slots)
            return kvs_error(KVS_EINVAL, "slot %d is outside the KV store", (int)gslots[i]);
        kv_store_read(kv, gslots[i], k ? k + i * hd : NULL, v ? v + i * hd : NULL);
    }
    return KVS_OK;
}

static int cpu_scores_changed(kvs_backend *b, mem_pool *pool, const int32_t *gslots, int n)
{
    (void)b; (void)pool; (void)gslots; (void)n;
    return KVS_OK; /* the host pool is the only copy */
}

static int64_t cpu_compact(kvs_backend *b, mem_pool *pool, mem_stream *const *streams, int n)
{
    int64_t moves = 0;
    for (int i = 0; i < n; i++) {
        int32_t r = kv_stream_compact(pool, cpu(b)->kv, streams[i]);
        if (r < 0) return r;
        moves += r;
    }
    return moves;
}

static const fwd_timing *cpu_last_timing(const kvs_backend *b)
{
    return fwd_last_timing(cpu(b)->fwd);
}

static const kvs_backend_i cpu_backend_i = {
    .version = KVS_BACKEND_VERSION,
    .name = "cpu",
    .destroy = cpu_destroy,
    .run = cpu_run,
    .copy_slots = cpu_copy_slots,
    .read_kv = cpu_read_kv,
    .scores_changed = cpu_scores_changed,
    .compact = cpu_compact,
    .last_timing = cpu_last_timing,
};

int kvs_backend_cpu_create(const model *m, const kvs_backend_opts *o, kvs_backend **out)
{
    *out = NULL;
    const model_config *c = &m->cfg;
    if (c->head_dim > FWD_CPU_MAX_HEAD_DIM)
        return kvs_error(KVS_EUNSUPPORTED, "the CPU backend takes head dims up to %d; this "
                         "model has %d", FWD_CPU_MAX_HEAD_DIM, c->head_dim);
    const kv_format *fmt = o->kv_format ? o->kv_format : &kv_fmt_f32;
    const kv_format *vfmt = o->kv_format_v ? o->kv_format_v : fmt;
    const int P = o->page_slots ? o->page_slots : 16;
    size_t slot = kv_store_slot_bytes(fmt, vfmt, c->head_dim);
    if (!slot)
        return kvs_error(KVS_EUNSUPPORTED, "KV dtype %s/%s does not support head dim %d",
                         fmt->name, vfmt->name, c->head_dim);
    size_t bytes = o->kv_bytes ? o->kv_bytes : ((size_t)1 << 30);
    int32_t pages = mem_pool_pages_for_bytes(P, slot, bytes);
    if (pages < 0) return pages;
    const int32_t need = c->n_layers * c->n_kv_heads;
    if (pages < need)
        return kvs_error(KVS_EINVAL, "KV memory of %zu bytes holds %d pages of %s/%s KV; one "
                         "token of this model needs %d (one page per layer and KV head)", bytes,
                         (int)pages, fmt->name, vfmt->name, (int)need);
    if ((int64_t)pages * P > INT32_MAX) pages = INT32_MAX / P;
    kvs_backend *b = calloc(1, sizeof *b);
    cpu_state *st = calloc(1, sizeof *st);
    if (!b || !st) {
        free(b);
        free(st);
        return kvs_error(KVS_ENOMEM, "out of memory");
    }
    b->i = &cpu_backend_i;
    b->state = st;
    int rc;
    if ((rc = kv_store_create(fmt, vfmt, c->head_dim, (int64_t)pages * P, &st->kv)) ||
        (rc = fwd_create(m, &st->fwd))) {
        cpu_destroy(b);
        return rc;
    }
    b->page_slots = P;
    b->n_pages = pages;
    b->kv_format = fmt;
    b->kv_format_v = vfmt;
    b->kv_slot_bytes = slot;
    b->kv_bytes = (size_t)pages * P * slot;
    *out = b;
    return KVS_OK;
}
