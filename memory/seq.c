/* seq.c — the KV of one sequence: n_layers x n_kv_heads streams, created without pages,
 * reserved for all at once, destroyed by giving every page back (ARCHITECTURE.md §3). */
#include "memory/pool.h"

#include "core/common.h"

#include <stdlib.h>

int mem_seq_create(int n_layers, int n_kv_heads, int32_t id_base, mem_seq **out)
{
    *out = NULL;
    if (n_layers < 1 || n_kv_heads < 1 || (int64_t)n_layers * n_kv_heads > INT32_MAX)
        return kvs_error(KVS_EINVAL, "KV sequence needs >= 1 layer and >= 1 KV head "
                         "(got %d x %d)", n_layers, n_kv_heads);
    int64_t n = (int64_t)n_layers * n_kv_heads;
    if (id_base < 0 || (int64_t)id_base + n - 1 > INT32_MAX)
        return kvs_error(KVS_EINVAL, "KV stream ids %d..%lld do not fit in 0..%d",
                         (int)id_base, (long long)((int64_t)id_base + n - 1), (int)INT32_MAX);
    mem_seq *q = calloc(1, sizeof *q);
    mem_stream *streams = calloc((size_t)n, sizeof *streams);
    if (!q || !streams) {
        free(q);
        free(streams);
        return kvs_error(KVS_ENOMEM, "cannot allocate a KV sequence of %lld streams",
                         (long long)n);
    }
    q->n_layers = n_layers;
    q->n_kv_heads = n_kv_heads;
    q->streams = streams;
    for (int64_t i = 0; i < n; i++) streams[i].id = (int32_t)(id_base + i);
    *out = q;
    return KVS_OK;
}

void mem_seq_destroy(mem_pool *pool, mem_seq *seq)
{
    if (!seq) return;
    int n = seq->n_layers * seq->n_kv_heads;
    for (int i = 0; i < n; i++) {
        mem_stream *s = &seq->streams[i];
        mem_stream_clear(pool, s);
        free(s->pages);
        free(s->holes);
    }
    free(seq->streams);
    free(seq);
}

int64_t mem_seq_pages_needed(const mem_pool *pool, const mem_seq *q, int32_t n_new)
{
    int64_t total = 0;
    int n = q->n_layers * q->n_kv_heads;
    for (int i = 0; i < n; i++) total += mem_stream_pages_needed(pool, &q->streams[i], n_new);
    return total;
}

int mem_seq_reserve(mem_pool *pool, mem_seq *q, int32_t n_new)
{
    if (n_new < 0) return kvs_error(KVS_EINVAL, "cannot reserve %d tokens", (int)n_new);
    int64_t need = mem_seq_pages_needed(pool, q, n_new);
    if (need == 0) return KVS_OK;
    if (need > pool->n_free)
        return kvs_error(KVS_ENOMEM, "KV pool has %d free pages; %d more tokens in each of "
                         "%d streams need %lld", (int)pool->n_free, (int)n_new,
                         q->n_layers * q->n_kv_heads, (long long)need);
    /* Enough pages for all: a stream can now fail only if its page list cannot grow (host
     * out of memory). Then give back what the streams before it took: all or nothing. */
    int n = q->n_layers * q->n_kv_heads;
    int32_t *before = malloc((size_t)n * sizeof *before);
    if (!before) return kvs_error(KVS_ENOMEM, "cannot allocate a KV reservation plan");
    int rc = KVS_OK;
    for (int i = 0; i < n && rc == KVS_OK; i++) {
        before[i] = q->streams[i].n_pages;
        rc = mem_stream_reserve(pool, &q->streams[i], n_new);
        if (rc != KVS_OK)
            for (int j = i - 1; j >= 0; j--) {
                mem_stream *t = &q->streams[j];
                while (t->n_pages > before[j]) mem_pool_return_page(pool, t->pages[--t->n_pages]);
            }
    }
    free(before);
    return rc;
}
