/* kv_store.h — the host K/V store: the rows of every slot of the pool, keys and values each in
 * its own format (kv_format.h). The page pool (pool.h) keeps only the bookkeeping (positions,
 * scores, free pages, stream page lists); whoever runs the forward owns the K/V: the CPU
 * backend a kv_store, the CUDA backend device memory.
 *
 * Global slot g = page * P + offset (pool.h's mem_gslot); row g of keys at k + g * k_row. */
#ifndef KVS_MEMORY_KV_STORE_H
#define KVS_MEMORY_KV_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "memory/kv_format.h"
#include "memory/pool.h"

typedef struct kv_store {
    const kv_format *fk, *fv; /* key and value formats */
    int head_dim;
    size_t k_row, v_row;      /* bytes per key row and per value row */
    int64_t n_slots;
    uint8_t *k, *v;           /* [n_slots][k_row], [n_slots][v_row] */
} kv_store;

/* Bytes one slot takes in a store of these formats (K row + V row); 0 if a format does not
 * support head_dim. */
size_t kv_store_slot_bytes(const kv_format *fk, const kv_format *fv, int head_dim);
/* A zeroed store of n_slots slots. KVS_EINVAL for a format that does not take head_dim,
 * KVS_ENOMEM with the size when the allocation fails. */
int kv_store_create(const kv_format *fk, const kv_format *fv, int head_dim, int64_t n_slots,
                    kv_store **out);
void kv_store_destroy(kv_store *s);

static inline void *kv_store_krow(const kv_store *s, int64_t g) { return s->k + (size_t)g * s->k_row; }
static inline void *kv_store_vrow(const kv_store *s, int64_t g) { return s->v + (size_t)g * s->v_row; }

/* Write slot g's key and value from fp32 (either may be NULL: left as is). */
void kv_store_write(kv_store *s, int64_t g, const float *k, const float *v);
/* Read slot g's key and value as fp32 (either may be NULL). */
void kv_store_read(const kv_store *s, int64_t g, float *k, float *v);
/* Copy n slots src[i] -> dst[i] (rows as stored, no re-rounding). */
void kv_store_copy(kv_store *s, const int32_t *src, const int32_t *dst, int n);

/* A stream's slot operations with the K/V rows in a host store (the CPU backend, tests):
 * mem_stream_append + kv_store_write; mem_stream_compact + kv_store_copy. */
int32_t kv_stream_append(mem_pool *pool, kv_store *kv, mem_stream *s, int32_t pos,
                         const float *k, const float *v, float score);
int32_t kv_stream_compact(mem_pool *pool, kv_store *kv, mem_stream *s);

#endif
