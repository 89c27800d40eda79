/* pool.h — the KV page pool and per-head streams (ARCHITECTURE.md §3).
 *
 * A page holds P slots of ONE stream (one (sequence, layer, kv_head)). The pool is the block
 * manager's bookkeeping only: per-slot metadata pos (int32 absolute position, -1 =
 * empty/evicted hole) and score (float, written by the eviction policy when the key is
 * written), the owner of each page and a stack of free pages. Every page is in exactly one
 * place: the free stack, or one stream's page list. The K/V rows themselves belong to the
 * backend that runs the forward (memory/kv_store.h on the host, device memory on a GPU),
 * addressed by the same global slot (mem_gslot); the functions here that move or assign slots
 * report which global slots their caller must write or copy.
 *
 * A stream owns a list of pages. Slots [0, n_slots) are allocated (high-water mark); among
 * them n_live have pos >= 0, the others are holes. New tokens fill holes first (lowest slot
 * first), then the tail. Slot order does not matter to attention (keys carry their RoPE). */
#ifndef KVS_MEMORY_POOL_H
#define KVS_MEMORY_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct mem_pool {
    int page_slots;      /* P, power of two */
    int page_shift;      /* log2(P) */
    int32_t n_pages;     /* total pages */
    int32_t n_free;      /* pages on the free stack */
    int32_t n_free_min;  /* low-water mark of n_free (peak use); reset by writing n_free */
    int32_t *free_stack; /* [n_pages], top at n_free-1 */
    int32_t *pos;        /* [n_pages][P] */
    float *score;        /* [n_pages][P] */
    int32_t *owner;      /* [n_pages]: owning stream id or -1 when free (debug/invariants) */
} mem_pool;

typedef struct mem_stream {
    int32_t *pages;      /* page ids, in slot order: slot s lives in pages[s >> page_shift] */
    int32_t n_pages;
    int32_t cap_pages;   /* capacity of the pages array */
    int32_t n_slots;     /* allocated slots (high-water mark), <= n_pages * P */
    int32_t n_live;      /* slots with pos >= 0 */
    int32_t *holes;      /* slot indices with pos == -1 below n_slots, kept sorted ascending */
    int32_t n_holes;
    int32_t cap_holes;
    int32_t id;          /* stream id for page ownership checks */
} mem_stream;

/* KV of one sequence: n_layers x n_kv_heads streams, stream (l, h) at l * n_kv_heads + h. */
typedef struct mem_seq {
    int n_layers, n_kv_heads;
    mem_stream *streams;
} mem_seq;

typedef struct mem_stats {
    int64_t pages_total, pages_used, pages_free;
    int64_t slots_allocated; /* sum of n_slots over streams alive */
    int64_t live_tokens;     /* sum of n_live */
    int64_t holes;
    double fragmentation;    /* 1 - live slots / (used pages * P); 0 when nothing is used */
} mem_stats;

/* Bookkeeping for n_pages pages of P slots (P a power of two up to MEM_MAX_PAGE_SLOTS). */
#define MEM_MAX_PAGE_SLOTS 1024
int mem_pool_create(int page_slots, int32_t n_pages, mem_pool **out);
void mem_pool_destroy(mem_pool *pool);
/* Bytes of one page: P slots of slot_bytes K/V bytes (the backend's format) plus pos and
 * score; 0 for a bad geometry. */
size_t mem_pool_page_bytes(int page_slots, size_t slot_bytes);
/* Pages that fit in `bytes` (--kv-memory) for this geometry; KVS_EINVAL for a bad one. */
int32_t mem_pool_pages_for_bytes(int page_slots, size_t slot_bytes, size_t bytes);

/* Slot addresses. `slot` is a stream-relative slot index < s->n_slots. */
static inline int32_t mem_slot_page(const mem_pool *p, const mem_stream *s, int32_t slot)
{ return s->pages[slot >> p->page_shift]; }
/* Global slot (page * P + offset: the index of its K/V rows in the backend's store) of a
 * stream-relative slot. */
static inline int32_t mem_gslot(const mem_pool *p, const mem_stream *s, int32_t slot)
{ return s->pages[slot >> p->page_shift] * p->page_slots + (slot & (p->page_slots - 1)); }
static inline int32_t *mem_page_pos(const mem_pool *p, int32_t page)
{ return p->pos + (size_t)page * p->page_slots; }
static inline float *mem_page_score(const mem_pool *p, int32_t page)
{ return p->score + (size_t)page * p->page_slots; }

/* Sequences. mem_seq_create allocates no pages; ids of its streams start at id_base. */
int mem_seq_create(int n_layers, int n_kv_heads, int32_t id_base, mem_seq **out);
/* Return every page of every stream to the pool and free the sequence. */
void mem_seq_destroy(mem_pool *pool, mem_seq *seq);
static inline mem_stream *mem_seq_stream(mem_seq *q, int layer, int kv_head)
{ return &q->streams[layer * q->n_kv_heads + kv_head]; }

/* Pages the stream needs to take n more tokens (after filling its holes). */
int32_t mem_stream_pages_needed(const mem_pool *pool, const mem_stream *s, int32_t n_new);
/* Pages the whole sequence needs to take n more tokens in every stream. */
int64_t mem_seq_pages_needed(const mem_pool *pool, const mem_seq *q, int32_t n_new);
/* Make room for n more tokens in every stream of the sequence, all or nothing:
 * KVS_ENOMEM (and no change) if the pool has too few free pages. */
int mem_seq_reserve(mem_pool *pool, mem_seq *q, int32_t n_new);

/* Give one token a slot in the stream (first hole, else the tail; takes a page from the pool
 * if the tail page is full), with its position and score. Returns the stream-relative slot
 * (>= 0; its K/V go to global slot mem_gslot(pool, s, slot)) or KVS_ENOMEM / KVS_EINVAL. */
int32_t mem_stream_append(mem_pool *pool, mem_stream *s, int32_t pos, float score);

/* Evict one slot: pos = -1, slot becomes a hole. KVS_EINVAL if the slot is not live. */
int mem_stream_evict(mem_pool *pool, mem_stream *s, int32_t slot);
/* Compaction: move live tail slots into the earliest holes until dense (tail-to-hole, as in
 * KV-Compress: the i-th hole below n_live, ascending, receives the i-th live slot at or above
 * n_live counted down from the tail), then return trailing empty pages to the pool. pos and
 * score move here; the K/V of move i must be copied by the caller from global slot src[i] to
 * dst[i] (arrays of capacity >= s->n_holes; NULL when there is no K/V to copy), before the
 * freed pages are reused. Returns the number of moves (>= 0). */
int32_t mem_stream_compact(mem_pool *pool, mem_stream *s, int32_t *src, int32_t *dst);
/* Return all pages of the stream to the pool; the stream is empty afterwards. */
void mem_stream_clear(mem_pool *pool, mem_stream *s);

/* Stats over the pool and the given sequences (seqs may be NULL when n_seqs == 0). */
void mem_stats_get(const mem_pool *pool, mem_seq *const *seqs, int n_seqs, mem_stats *out);
/* Check every invariant of ARCHITECTURE.md §3; 0 if all hold, else KVS_EINVAL with a message. */
int mem_check_invariants(const mem_pool *pool, mem_seq *const *seqs, int n_seqs);

/* ---- added by the block manager (memory/pool.c, stream.c) --------------------------------- */
/* Page-level pool operations, used by streams. take: pop a free page and mark it owned by
 * stream `owner`; returns the page id or KVS_ENOMEM. return: set every slot's pos to -1,
 * owner to -1 and push the page back on the free stack. */
int32_t mem_pool_take_page(mem_pool *pool, int32_t owner);
void mem_pool_return_page(mem_pool *pool, int32_t page);
/* Make room for n more tokens in one stream (pages appended to its list, n_slots unchanged),
 * all or nothing: KVS_ENOMEM and no change if the pool has too few free pages. */
int mem_stream_reserve(mem_pool *pool, mem_stream *s, int32_t n_new);

#endif
