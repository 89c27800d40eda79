/* test_kv.h — the memory tests' pools with K/V: a bookkeeping pool (memory/pool.h) paired with
 * an f32 host store (memory/kv_store.h), so that a test can write, move and read K/V rows
 * through the pool's slots as the CPU backend does. Each tkv_pool_create'd pool is
 * registered with its store; tkv_store(pool) finds it. */
#ifndef KVS_TEST_KV_H
#define KVS_TEST_KV_H

#include <stdint.h>
#include <stdlib.h>

#include "memory/kv_store.h"
#include "memory/pool.h"

#define TKV_MAX 64
static struct { const mem_pool *pool; kv_store *kv; int head_dim; } tkv_reg[TKV_MAX];

static inline kv_store *tkv_store(const mem_pool *p)
{
    for (int i = 0; i < TKV_MAX; i++)
        if (tkv_reg[i].pool == p) return tkv_reg[i].kv;
    abort(); /* a pool the test did not make with tkv_pool_create */
}
static inline int tkv_head_dim(const mem_pool *p) { return tkv_store(p)->head_dim; }

/* mem_pool_create + an f32 store for its slots (head dim d). */
static inline int tkv_pool_create(int P, int d, int32_t n_pages, mem_pool **out)
{
    *out = NULL;
    kv_store *kv = NULL;
    /* the store first: its size checks come before the bookkeeping's allocations */
    int rc = n_pages < 1 ? mem_pool_create(P, n_pages, out)
                         : kv_store_create(&kv_fmt_f32, &kv_fmt_f32, d, (int64_t)n_pages * P, &kv);
    if (rc) return rc;
    if ((rc = mem_pool_create(P, n_pages, out))) { kv_store_destroy(kv); return rc; }
    for (int i = 0; i < TKV_MAX; i++)
        if (!tkv_reg[i].pool) { tkv_reg[i].pool = *out; tkv_reg[i].kv = kv; return 0; }
    abort();
}
static inline void tkv_pool_destroy(mem_pool *p)
{
    if (!p) return;
    for (int i = 0; i < TKV_MAX; i++)
        if (tkv_reg[i].pool == p) {
            kv_store_destroy(tkv_reg[i].kv);
            tkv_reg[i].pool = NULL;
            tkv_reg[i].kv = NULL;
        }
    mem_pool_destroy(p);
}
static inline int32_t tkv_append(mem_pool *p, mem_stream *s, int32_t pos, const float *k,
                                 const float *v, float score)
{ return kv_stream_append(p, tkv_store(p), s, pos, k, v, score); }
static inline int32_t tkv_compact(mem_pool *p, mem_stream *s)
{ return kv_stream_compact(p, tkv_store(p), s); }
/* The fp32 K / V rows of a page (as mem_page_k / mem_page_v were). */
static inline float *tkv_page_k(const mem_pool *p, int32_t page)
{ kv_store *kv = tkv_store(p); return (float *)kv_store_krow(kv, (int64_t)page * p->page_slots); }
static inline float *tkv_page_v(const mem_pool *p, int32_t page)
{ kv_store *kv = tkv_store(p); return (float *)kv_store_vrow(kv, (int64_t)page * p->page_slots); }

#endif
