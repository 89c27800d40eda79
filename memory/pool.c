/* pool.c — the KV page pool: one allocation split into pages, a stack of free pages, stats
 * and the invariant checker (ARCHITECTURE.md §3).
 *
 * Layout of page p (P slots): pos[p][P], score[p][P]; its K/V rows are the backend's.
 * A free page has owner -1 and pos -1 in every slot, so a page taken from the stack is already
 * a run of empty slots. Pages are handed out lowest id first (the stack is filled top-down). */
#include "memory/pool.h"

#include "core/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

size_t mem_pool_page_bytes(int page_slots, size_t slot_bytes)
{
    if (!is_pow2(page_slots) || page_slots > MEM_MAX_PAGE_SLOTS || slot_bytes < 1) return 0;
    size_t P = (size_t)page_slots;
    /* Per slot: the K and V rows (the backend's format), then pos and score. */
    const size_t meta = sizeof(int32_t) + sizeof(float);
    if (slot_bytes > SIZE_MAX / P - meta) return 0;
    return P * (slot_bytes + meta);
}

int32_t mem_pool_pages_for_bytes(int page_slots, size_t slot_bytes, size_t bytes)
{
    size_t page = mem_pool_page_bytes(page_slots, slot_bytes);
    if (page == 0)
        return kvs_error(KVS_EINVAL, "bad KV page geometry: %d slots per page (power of two "
                         "up to %d) of %zu bytes (>= 1)", page_slots, MEM_MAX_PAGE_SLOTS,
                         slot_bytes);
    size_t n = bytes / page;
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

int mem_pool_create(int page_slots, int32_t n_pages, mem_pool **out)
{
    *out = NULL;
    if (!is_pow2(page_slots) || page_slots > MEM_MAX_PAGE_SLOTS)
        return kvs_error(KVS_EINVAL, "KV page size %d is not a power of two in 1..%d; "
                         "use e.g. 16", page_slots, MEM_MAX_PAGE_SLOTS);
    if (n_pages < 1)
        return kvs_error(KVS_EINVAL, "KV pool needs at least 1 page (got %d); give more "
                         "KV memory", (int)n_pages);
    /* Stream slot indices are int32: a stream may hold every page of the pool. */
    if ((int64_t)n_pages * page_slots > INT32_MAX)
        return kvs_error(KVS_EINVAL, "KV pool of %d pages x %d slots exceeds %d slots; use "
                         "fewer pages", (int)n_pages, page_slots, (int)INT32_MAX);
    size_t slots = (size_t)n_pages * (size_t)page_slots;

    mem_pool *p = calloc(1, sizeof *p);
    if (!p) return kvs_error(KVS_ENOMEM, "cannot allocate the KV pool header");
    p->page_slots = page_slots;
    while ((1 << p->page_shift) < page_slots) p->page_shift++;
    p->n_pages = n_pages;
    p->pos = kvs_alloc(slots * sizeof(int32_t));
    p->score = kvs_calloc(slots, sizeof(float));
    p->free_stack = kvs_alloc((size_t)n_pages * sizeof(int32_t));
    p->owner = kvs_alloc((size_t)n_pages * sizeof(int32_t));
    if (!p->pos || !p->score || !p->free_stack || !p->owner) {
        mem_pool_destroy(p);
        return kvs_error(KVS_ENOMEM, "cannot allocate the bookkeeping of a KV pool of %d "
                         "pages", (int)n_pages);
    }
    for (size_t i = 0; i < slots; i++) p->pos[i] = -1;
    for (int32_t i = 0; i < n_pages; i++) {
        p->owner[i] = -1;
        p->free_stack[i] = n_pages - 1 - i; /* top of stack = page 0 */
    }
    p->n_free = n_pages;
    p->n_free_min = n_pages;
    *out = p;
    return KVS_OK;
}

void mem_pool_destroy(mem_pool *pool)
{
    if (!pool) return;
    kvs_free(pool->pos);
    kvs_free(pool->score);
    kvs_free(pool->free_stack);
    kvs_free(pool->owner);
    free(pool);
}

int32_t mem_pool_take_page(mem_pool *pool, int32_t owner)
{
    if (pool->n_free == 0)
        return kvs_error(KVS_ENOMEM, "KV pool is out of pages (%d in all)", (int)pool->n_pages);
    int32_t page = pool->free_stack[--pool->n_free];
    if (pool->n_free < pool->n_free_min) pool->n_free_min = pool->n_free;
    pool->owner[page] = owner;
    return page;
}

void mem_pool_return_page(mem_pool *pool, int32_t page)
{
    int32_t *pos = mem_page_pos(pool, page);
    for (int i = 0; i < pool->page_slots; i++) pos[i] = -1;
    pool->owner[page] = -1;
    pool->free_stack[pool->n_free++] = page;
}

void mem_stats_get(const mem_pool *pool, mem_seq *const *seqs, int n_seqs, mem_stats *out)
{
    memset(out, 0, sizeof *out);
    out->pages_total = pool->n_pages;
    out->pages_free = pool->n_free;
    out->pages_used = pool->n_pages - pool->n_free;
    for (int q = 0; q < n_seqs; q++) {
        const mem_seq *seq = seqs[q];
        if (!seq) continue;
        int n = seq->n_layers * seq->n_kv_heads;
        for (int i = 0; i < n; i++) {
            const mem_stream *s = &seq->streams[i];
            out->slots_allocated += s->n_slots;
            out->live_tokens += s->n_live;
            out->holes += s->n_holes;
        }
    }
    if (out->pages_used > 0)
        out->fragmentation =
            1.0 - (double)out->live_tokens / ((double)out->pages_used * pool->page_slots);
}

/* ---- invariants --------------------------------------------------------------------------- */

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* One stream's invariants; `seen` counts how often each page was met so far. */
static int check_stream(const mem_pool *pool, const mem_stream *s, int q, int idx,
                        uint8_t *seen)
{
    const int P = pool->page_slots;
#define BAD(...) do {                                                                    \
        char what_[512];                                                                 \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                      \
        return kvs_error(KVS_EINVAL, "KV invariant broken in seq %d stream %d (id %d): %s", \
                         q, idx, (int)s->id, what_);                                     \
    } while (0)
    if (s->n_pages < 0 || s->n_pages > s->cap_pages || (s->n_pages > 0 && !s->pages))
        BAD("page list of %d pages with capacity %d", (int)s->n_pages, (int)s->cap_pages);
    if (s->n_slots < 0 || (int64_t)s->n_slots > (int64_t)s->n_pages * P)
        BAD("n_slots %d outside 0..n_pages*P = %d", (int)s->n_slots, (int)(s->n_pages * P));
    if (s->n_holes < 0 || s->n_holes > s->cap_holes || (s->n_holes > 0 && !s->holes))
        BAD("hole list of %d holes with capacity %d", (int)s->n_holes, (int)s->cap_holes);
    for (int32_t i = 0; i < s->n_pages; i++) {
        int32_t pg = s->pages[i];
        if (pg < 0 || pg >= pool->n_pages) BAD("page id %d out of range", (int)pg);
        if (seen[pg]) BAD("page %d is also free or in another stream", (int)pg);
        seen[pg] = 1;
        if (pool->owner[pg] != s->id)
            BAD("page %d has owner %d", (int)pg, (int)pool->owner[pg]);
    }
    int32_t live = 0;
    for (int32_t slot = 0; slot < s->n_pages * P; slot++) {
        int32_t pos = mem_page_pos(pool, mem_slot_page(pool, s, slot))[slot & (P - 1)];
        if (pos < -1) BAD("slot %d has pos %d (only -1 means empty)", (int)slot, (int)pos);
        if (slot >= s->n_slots && pos != -1)
            BAD("slot %d beyond n_slots %d holds pos %d", (int)slot, (int)s->n_slots, (int)pos);
        if (slot < s->n_slots && pos >= 0) live++;
    }
    if (live != s->n_live)
        BAD("n_live is %d but %d slots below n_slots hold a token", (int)s->n_live, (int)live);
    /* Holes: strictly ascending, below n_slots, each empty, and as many as the empty slots
     * below n_slots — together: exactly the set of empty slots. */
    for (int32_t i = 0; i < s->n_holes; i++) {
        int32_t h = s->holes[i];
        if (h < 0 || h >= s->n_slots)
            BAD("hole %d outside 0..n_slots-1 (n_slots %d)", (int)h, (int)s->n_slots);
        if (i > 0 && s->holes[i - 1] >= h)
            BAD("hole list not strictly ascending at index %d (%d after %d)", (int)i, (int)h,
                (int)s->holes[i - 1]);
        if (mem_page_pos(pool, mem_slot_page(pool, s, h))[h & (P - 1)] >= 0)
            BAD("hole %d holds a token", (int)h);
    }
    if (s->n_holes != s->n_slots - s->n_live)
        BAD("%d holes listed but %d empty slots below n_slots", (int)s->n_holes,
            (int)(s->n_slots - s->n_live));
    /* Design choice of stream.c: evicting the last slot shrinks n_slots past trailing holes,
     * so the highest allocated slot always holds a token. */
    if (s->n_slots > 0 && mem_page_pos(pool, mem_slot_page(pool, s, s->n_slots - 1))
                                  [(s->n_slots - 1) & (P - 1)] < 0)
        BAD("last allocated slot %d is a hole (n_slots must shrink over trailing holes)",
            (int)(s->n_slots - 1));
#undef BAD
    return KVS_OK;
}

/* `seqs` must be every live sequence on the pool: a page found neither free nor in one of
 * their streams is reported as leaked. */
int mem_check_invariants(const mem_pool *pool, mem_seq *const *seqs, int n_seqs)
{
    const int P = pool->page_slots;
    if (!is_pow2(P) || P > MEM_MAX_PAGE_SLOTS || (1 << pool->page_shift) != P)
        return kvs_error(KVS_EINVAL, "KV invariant broken: page size %d / shift %d", P,
                         pool->page_shift);
    if (pool->n_free < 0 || pool->n_free > pool->n_pages)
        return kvs_error(KVS_EINVAL, "KV invariant broken: %d free pages of %d",
                         (int)pool->n_free, (int)pool->n_pages);
    uint8_t *seen = calloc((size_t)pool->n_pages, 1);
    if (!seen) return kvs_error(KVS_ENOMEM, "cannot allocate the invariant checker's map");
    int rc = KVS_OK;
    for (int32_t i = 0; i < pool->n_free && rc == KVS_OK; i++) {
        int32_t pg = pool->free_stack[i];
        if (pg < 0 || pg >= pool->n_pages)
            rc = kvs_error(KVS_EINVAL, "KV invariant broken: free stack entry %d is page %d",
                           (int)i, (int)pg);
        else if (seen[pg])
            rc = kvs_error(KVS_EINVAL, "KV invariant broken: page %d is on the free stack "
                           "twice", (int)pg);
        else if (pool->owner[pg] != -1)
            rc = kvs_error(KVS_EINVAL, "KV invariant broken: free page %d has owner %d",
                           (int)pg, (int)pool->owner[pg]);
        else {
            seen[pg] = 1;
            const int32_t *pos = mem_page_pos(pool, pg);
            for (int j = 0; j < P; j++)
                if (pos[j] != -1) {
                    rc = kvs_error(KVS_EINVAL, "KV invariant broken: free page %d slot %d "
                                   "holds pos %d", (int)pg, j, (int)pos[j]);
                    break;
                }
        }
    }
    /* Stream ids must be distinct and >= 0, or page owners would not name one stream. */
    int64_t n_streams = 0;
    for (int q = 0; q < n_seqs; q++)
        if (seqs[q]) n_streams += (int64_t)seqs[q]->n_layers * seqs[q]->n_kv_heads;
    int32_t *ids = n_streams ? malloc((size_t)n_streams * sizeof *ids) : NULL;
    if (n_streams && !ids && rc == KVS_OK)
        rc = kvs_error(KVS_ENOMEM, "cannot allocate the invariant checker's id list");
    int64_t k = 0;
    for (int q = 0; q < n_seqs && rc == KVS_OK; q++) {
        const mem_seq *seq = seqs[q];
        if (!seq) continue;
        for (int i = 0; i < seq->n_layers * seq->n_kv_heads && rc == KVS_OK; i++) {
            const mem_stream *s = &seq->streams[i];
            if (s->id < 0)
                rc = kvs_error(KVS_EINVAL, "KV invariant broken: seq %d stream %d has id %d",
                               q, i, (int)s->id);
            else
                rc = check_stream(pool, s, q, i, seen);
            ids[k++] = s->id;
        }
    }
    if (rc == KVS_OK && k > 1) {
        qsort(ids, (size_t)k, sizeof *ids, cmp_i32);
        for (int64_t i = 1; i < k; i++)
            if (ids[i] == ids[i - 1]) {
                rc = kvs_error(KVS_EINVAL, "KV invariant broken: two streams share id %d",
                               (int)ids[i]);
                break;
            }
    }
    for (int32_t pg = 0; pg < pool->n_pages && rc == KVS_OK; pg++)
        if (!seen[pg])
            rc = kvs_error(KVS_EINVAL, "KV invariant broken: page %d (owner %d) is neither "
                           "free nor in any stream given (leaked, or a sequence was not "
                           "passed to the checker)", (int)pg, (int)pool->owner[pg]);
    free(ids);
    free(seen);
    return rc;
}
