/* stream.c — one (sequence, layer, kv_head) stream of KV slots over pool pages: append
 * (holes first, lowest first), evict, compaction, clear (ARCHITECTURE.md §3).
 *
 * Slot s lives in page pages[s >> shift] at offset s & (P-1). Slots [0, n_slots) are
 * allocated; holes[] lists the empty ones among them, ascending.
 *
 * Design choice: evicting the LAST allocated slot does not make a hole; n_slots shrinks
 * instead, and keeps shrinking over holes that become trailing. So whenever n_slots > 0, slot
 * n_slots-1 holds a token, and every hole lies strictly inside the live range
 * (mem_check_invariants checks this). Pages are only given back by compact and clear, so a
 * shrunk stream may own pages beyond ceil(n_slots / P) — as does one that reserved pages.
 *
 * The hole list's capacity is kept at cap_pages * P (>= any possible hole count), so
 * evicting never allocates and cannot fail for lack of memory. */
#include "memory/pool.h"

#include "core/common.h"

#include <stdlib.h>
#include <string.h>

/* Grow the page list (and hole list) to hold at least `need` pages. Changes capacity only. */
static int stream_grow(const mem_pool *pool, mem_stream *s, int32_t need)
{
    if (s->cap_pages >= need) return KVS_OK;
    int64_t cap = KVS_MAX((int64_t)need, 2 * (int64_t)s->cap_pages);
    cap = KVS_MAX(cap, 4);
    cap = KVS_MIN(cap, (int64_t)KVS_MAX(pool->n_pages, need));
    int32_t *pages = realloc(s->pages, (size_t)cap * sizeof *pages);
    if (!pages) return kvs_error(KVS_ENOMEM, "cannot grow a KV stream's page list");
    s->pages = pages;
    int64_t cap_holes = cap * pool->page_slots;
    if (cap_holes > s->cap_holes) {
        int32_t *holes = realloc(s->holes, (size_t)cap_holes * sizeof *holes);
        if (!holes) return kvs_error(KVS_ENOMEM, "cannot grow a KV stream's hole list");
        s->holes = holes;
        s->cap_holes = (int32_t)cap_holes;
    }
    s->cap_pages = (int32_t)cap;
    return KVS_OK;
}

int32_t mem_stream_pages_needed(const mem_pool *pool, const mem_stream *s, int32_t n_new)
{
    int64_t tail = (int64_t)n_new - s->n_holes; /* tokens that go past n_slots */
    if (tail <= 0) return 0;
    int64_t slots = s->n_slots + tail;
    int64_t pages = ((slots + pool->page_slots - 1) >> pool->page_shift) - s->n_pages;
    if (pages <= 0) return 0;
    return pages > INT32_MAX ? INT32_MAX : (int32_t)pages;
}

int mem_stream_reserve(mem_pool *pool, mem_stream *s, int32_t n_new)
{
    if (n_new < 0) return kvs_error(KVS_EINVAL, "cannot reserve %d tokens", (int)n_new);
    int32_t need = mem_stream_pages_needed(pool, s, n_new);
    if (need == 0) return KVS_OK;
    if (need > pool->n_free)
        return kvs_error(KVS_ENOMEM, "KV pool has %d free pages; %d more tokens need %d",
                         (int)pool->n_free, (int)n_new, (int)need);
    int rc = stream_grow(pool, s, s->n_pages + need);
    if (rc) return rc;
    for (int32_t i = 0; i < need; i++) s->pages[s->n_pages++] = mem_pool_take_page(pool, s->id);
    return KVS_OK;
}

/* Remove holes[0..) index i, keeping the list sorted. */
static void holes_remove_at(mem_stream *s, int32_t i)
{
    memmove(s->holes + i, s->holes + i + 1, (size_t)(s->n_holes - i - 1) * sizeof *s->holes);
    s->n_holes--;
}

int32_t mem_stream_append(mem_pool *pool, mem_stream *s, int32_t pos, float score)
{
    if (pos < 0) return kvs_error(KVS_EINVAL, "cannot append a token with pos %d", (int)pos);
    int32_t slot;
    if (s->n_holes > 0) {
        slot = s->holes[0];
        holes_remove_at(s, 0);
    } else {
        slot = s->n_slots;
        if (slot == s->n_pages * pool->page_slots) {
            if (pool->n_free == 0)
                return kvs_error(KVS_ENOMEM, "KV pool is out of pages (%d in all); reserve "
                                 "before appending, or evict/compact/preempt",
                                 (int)pool->n_pages);
            int rc = stream_grow(pool, s, s->n_pages + 1);
            if (rc) return rc;
            s->pages[s->n_pages++] = mem_pool_take_page(pool, s->id);
        }
        s->n_slots++;
    }
    int32_t g = mem_gslot(pool, s, slot);
    pool->pos[g] = pos;
    pool->score[g] = score;
    s->n_live++;
    return slot;
}

static int32_t *slot_pos(const mem_pool *pool, const mem_stream *s, int32_t slot)
{
    return mem_page_pos(pool, mem_slot_page(pool, s, slot)) + (slot & (pool->page_slots - 1));
}

int mem_stream_evict(mem_pool *pool, mem_stream *s, int32_t slot)
{
    if (slot < 0 || slot >= s->n_slots)
        return kvs_error(KVS_EINVAL, "cannot evict slot %d: stream %d has %d slots",
                         (int)slot, (int)s->id, (int)s->n_slots);
    int32_t *pos = slot_pos(pool, s, slot);
    if (*pos < 0)
        return kvs_error(KVS_EINVAL, "cannot evict slot %d of stream %d: already empty",
                         (int)slot, (int)s->id);
    *pos = -1;
    s->n_live--;
    if (slot == s->n_slots - 1) {
        /* Last slot: shrink, then drop holes that are now trailing (they are the largest). */
        s->n_slots--;
        while (s->n_holes > 0 && s->holes[s->n_holes - 1] == s->n_slots - 1) {
            s->n_holes--;
            s->n_slots--;
        }
        return KVS_OK;
    }
    /* Insert into the sorted hole list: binary search for the first hole > slot. */
    int32_t lo = 0, hi = s->n_holes;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (s->holes[mid] < slot) lo = mid + 1;
        else hi = mid;
    }
    memmove(s->holes + lo + 1, s->holes + lo, (size_t)(s->n_holes - lo) * sizeof *s->holes);
    s->holes[lo] = slot;
    s->n_holes++;
    return KVS_OK;
}

/* Give back pages [keep, n_pages) of the stream, last first. */
static void stream_trim_pages(mem_pool *pool, mem_stream *s, int32_t keep)
{
    while (s->n_pages > keep) mem_pool_return_page(pool, s->pages[--s->n_pages]);
}

int32_t mem_stream_compact(mem_pool *pool, mem_stream *s, int32_t *src, int32_t *dst)
{
    const int P = pool->page_slots;
    int32_t moves = 0, tail = s->n_slots - 1;
    /* Holes below n_live are exactly as many as live slots at or above n_live: fill the
     * earliest hole with the last live slot until none is left below n_live. */
    for (int32_t i = 0; i < s->n_holes && s->holes[i] < s->n_live; i++) {
        while (*slot_pos(pool, s, tail) < 0) tail--;
        int32_t gs = mem_gslot(pool, s, tail), gd = mem_gslot(pool, s, s->holes[i]);
        pool->pos[gd] = pool->pos[gs];
        pool->score[gd] = pool->score[gs];
        pool->pos[gs] = -1;
        if (src) src[moves] = gs;
        if (dst) dst[moves] = gd;
        tail--;
        moves++;
    }
    /* Slots [n_live, n_slots) are now all empty (moved-from or former holes). */
    s->n_slots = s->n_live;
    s->n_holes = 0;
    stream_trim_pages(pool, s, (s->n_live + P - 1) >> pool->page_shift);
    return moves;
}

void mem_stream_clear(mem_pool *pool, mem_stream *s)
{
    stream_trim_pages(pool, s, 0);
    s->n_slots = 0;
    s->n_live = 0;
    s->n_holes = 0;
}
