/* kv_store.c — the host K/V store (kv_store.h): two byte arrays of rows, one per format. */
#include "memory/kv_store.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

size_t kv_store_slot_bytes(const kv_format *fk, const kv_format *fv, int head_dim)
{
    size_t k = fk->row_bytes(head_dim), v = fv->row_bytes(head_dim);
    return k && v ? k + v : 0;
}

int kv_store_create(const kv_format *fk, const kv_format *fv, int head_dim, int64_t n_slots,
                    kv_store **out)
{
    *out = NULL;
    size_t kr = fk->row_bytes(head_dim), vr = fv->row_bytes(head_dim);
    if (!kr || !vr)
        return kvs_error(KVS_EINVAL, "KV dtype %s/%s does not support head dim %d", fk->name,
                         fv->name, head_dim);
    size_t total;
    if (n_slots < 1 || __builtin_mul_overflow((size_t)n_slots, kr + vr, &total) ||
        total > (size_t)PTRDIFF_MAX)
        return kvs_error(KVS_EINVAL, "bad KV store size: %lld slots", (long long)n_slots);
    kv_store *s = calloc(1, sizeof *s);
    if (!s) return kvs_error(KVS_ENOMEM, "out of memory");
    s->fk = fk;
    s->fv = fv;
    s->head_dim = head_dim;
    s->k_row = kr;
    s->v_row = vr;
    s->n_slots = n_slots;
    s->k = kvs_calloc((size_t)n_slots, kr);
    s->v = kvs_calloc((size_t)n_slots, vr);
    if (!s->k || !s->v) {
        kv_store_destroy(s);
        return kvs_error(KVS_ENOMEM, "cannot allocate %zu bytes of KV (%lld slots of %s K, %s V)",
                         (size_t)n_slots * (kr + vr), (long long)n_slots, fk->name, fv->name);
    }
    *out = s;
    return KVS_OK;
}

void kv_store_destroy(kv_store *s)
{
    if (!s) return;
    kvs_free(s->k);
    kvs_free(s->v);
    free(s);
}

void kv_store_write(kv_store *s, int64_t g, const float *k, const float *v)
{
    if (k) s->fk->write_row(kv_store_krow(s, g), k, s->head_dim);
    if (v) s->fv->write_row(kv_store_vrow(s, g), v, s->head_dim);
}

void kv_store_read(const kv_store *s, int64_t g, float *k, float *v)
{
    const size_t n = (size_t)s->head_dim * sizeof(float);
    if (k) {
        const float *r = s->fk->read_rows(kv_store_krow(s, g), 1, s->head_dim, k);
        if (r != k) memcpy(k, r, n);
    }
    if (v) {
        const float *r = s->fv->read_rows(kv_store_vrow(s, g), 1, s->head_dim, v);
        if (r != v) memcpy(v, r, n);
    }
}

void kv_store_copy(kv_store *s, const int32_t *src, const int32_t *dst, int n)
{
    for (int i = 0; i < n; i++) {
        memcpy(kv_store_krow(s, dst[i]), kv_store_krow(s, src[i]), s->k_row);
        memcpy(kv_store_vrow(s, dst[i]), kv_store_vrow(s, src[i]), s->v_row);
    }
}

int32_t kv_stream_append(mem_pool *pool, kv_store *kv, mem_stream *s, int32_t pos,
                         const float *k, const float *v, float score)
{
    if (!k || !v) return kvs_error(KVS_EINVAL, "cannot append a token without K/V");
    int32_t slot = mem_stream_append(pool, s, pos, score);
    if (slot >= 0) kv_store_write(kv, mem_gslot(pool, s, slot), k, v);
    return slot;
}

int32_t kv_stream_compact(mem_pool *pool, kv_store *kv, mem_stream *s)
{
    int32_t stack_src[64], stack_dst[64];
    int32_t *src = stack_src, *dst = stack_dst;
    if (s->n_holes > 64) {
        src = malloc((size_t)s->n_holes * sizeof *src);
        dst = malloc((size_t)s->n_holes * sizeof *dst);
        if (!src || !dst) {
            free(src == stack_src ? NULL : src);
            free(dst == stack_dst ? NULL : dst);
            return kvs_error(KVS_ENOMEM, "out of memory compacting a stream");
        }
    }
    int32_t n = mem_stream_compact(pool, s, src, dst);
    kv_store_copy(kv, src, dst, n);
    if (src != stack_src) { free(src); free(dst); }
    return n;
}
