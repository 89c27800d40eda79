/* device.c — the CUDA entry points of device.h in a build without CUDA: stubs that say so. */
#include "device.h"

#include <stdlib.h>

#include "core/common.h"

#ifndef KVS_HAVE_CUDA

static int no_cuda(void)
{
    return kvs_error(KVS_EUNSUPPORTED, "this kvsieve was built without CUDA (rebuild with "
                     "-DKVS_CUDA=ON where nvcc is installed)");
}

int fwd_cuda_create(const model *m, int page_slots, size_t kv_bytes, double kv_fraction,
                    const kv_format *kv_fmt, fwd_cuda_state **out)
{
    (void)m; (void)page_slots; (void)kv_bytes; (void)kv_fraction; (void)kv_fmt;
    *out = NULL;
    return no_cuda();
}
void fwd_cuda_destroy(fwd_cuda_state *st) { (void)st; }
int32_t fwd_cuda_n_pages(const fwd_cuda_state *st) { (void)st; return 0; }
int fwd_cuda(fwd_cuda_state *st, const model *m, mem_pool *pool, kvs_plan *plan,
             const fwd_seq *seqs, float **logits, int *n_rows)
{
    (void)st; (void)m; (void)pool; (void)plan; (void)seqs;
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
int kvs_cuda_read_values(fwd_cuda_state *st, const int32_t *gslots, int n, float *out)
{
    (void)st; (void)gslots; (void)n; (void)out;
    return no_cuda();
}
size_t fwd_cuda_slot_bytes(const fwd_cuda_state *st) { (void)st; return 0; }
const kv_format *fwd_cuda_kv_format(const fwd_cuda_state *st) { (void)st; return NULL; }
void *fwd_cuda_plan_grow(void *ctx, void *old, size_t bytes)
{
    (void)ctx; (void)bytes;
    free(old);
    return NULL;
}
int kvs_cuda_write_scores(fwd_cuda_state *st, const int32_t *gslots, const float *scores, int n)
{
    (void)st; (void)gslots; (void)scores; (void)n;
    return no_cuda();
}
#endif
