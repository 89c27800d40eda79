/* mem_cuda.h — the device KV page pool and the memory kernels (docs/CUDA.md): eviction
 * marking, per-stream top-k / threshold selection, compaction (plan + batched copy), page
 * clearing and the attention statistics of attention-based policies. C linkage; built only
 * with CUDA (KVS_HAVE_CUDA). Twins: engine/kernels_ref.h (kref_*).
 *
 * Device pool layout, one cudaMalloc (page p, P slots, head dim d, 16-bit K/V):
 *   k     [n_pages][P][d]   16-bit: fp16 or bf16, the pool's dtype (chosen when created)
 *   v     [n_pages][P][d]
 *   pos   [n_pages][P]      int32, -1 = empty (only slots below a stream's n_slots are read)
 *   score [n_pages][P]      float
 * Page ids and global slots (page * P + offset) are the host pool's.
 *
 * Launchers take device pointers and a stream (a cudaStream_t, NULL = default stream) and
 * return 0 or a negative KVS_E* status with a message; they do not synchronise. */
#ifndef KVS_MEM_CUDA_H
#define KVS_MEM_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The 16-bit element type of a device pool's K/V (the CUDA forward uses the same type for its
 * weights and GEMM inputs). The memory kernels only move 16-bit rows and do not look at it. */
enum { MEM_CUDA_F16 = 0, MEM_CUDA_BF16 = 1 };

typedef struct mem_cuda_pool {
    int page_slots, page_shift, head_dim;
    int dtype;         /* MEM_CUDA_F16 | MEM_CUDA_BF16 */
    int32_t n_pages;
    size_t bytes;      /* of the one allocation */
    void *base;        /* the allocation */
    void *k, *v;       /* 16-bit (dtype) [n_pages][P][d] */
    int32_t *pos;      /* [n_pages][P] */
    float *score;      /* [n_pages][P] */
} mem_cuda_pool;

/* Bytes of one device page: P * (2 d * 2 + 4 + 4). */
size_t mem_cuda_page_bytes(int page_slots, int head_dim);
/* One cudaMalloc of n_pages pages of K/V of `dtype` (MEM_CUDA_F16 | MEM_CUDA_BF16); pos = -1,
 * K/V/score = 0. */
int mem_cuda_pool_create(int page_slots, int head_dim, int32_t n_pages, int dtype,
                         mem_cuda_pool **out);
void mem_cuda_pool_destroy(mem_cuda_pool *p);

/* A stream as the memory kernels see it (device array of these). */
typedef struct mem_cuda_stream {
    int32_t pt_off;    /* first page in the page-table array */
    int32_t n_slots;   /* allocated slots */
    int32_t n_live;    /* live slots (compaction) */
    int32_t out_off;   /* first output entry (moves, victims); capacity n_slots per stream */
    int32_t n_keep;    /* selection: keep this many live slots */
    int32_t sink;      /* protected lowest positions */
    int32_t window;    /* protected positions > cur_pos - window (when > 0) */
    int32_t cur_pos;
    float tau;         /* threshold selection: evict candidates with score < tau */
    int32_t n_q;       /* attention statistics: query rows in probs */
    int64_t probs_off; /* attention statistics: [n_q][n_slots] floats at probs + probs_off */
} mem_cuda_stream;

/* k_mark_slots: pos[gslots[i]] = -1 for i < n. */
int mem_cuda_mark(mem_cuda_pool *p, const int32_t *gslots, int n, void *stream);
/* k_clear_pages: pos = -1 in every slot of pages[0..n). */
int mem_cuda_clear_pages(mem_cuda_pool *p, const int32_t *pages, int n, void *stream);
/* k_slot_copy: src[i] -> dst[i] (global slots; sources and destinations disjoint), one warp
 * per move; flags: MEM_CUDA_COPY_KV | MEM_CUDA_COPY_META | MEM_CUDA_CLEAR_SRC. Entries with
 * src < 0 are skipped (unused plan capacity). */
enum { MEM_CUDA_COPY_KV = 1, MEM_CUDA_COPY_META = 2, MEM_CUDA_CLEAR_SRC = 4 };
int mem_cuda_slot_copy(mem_cuda_pool *p, const int32_t *src, const int32_t *dst, int n,
                       int flags, void *stream);
/* k_compact_plan: one warp per stream plans mem_stream_compact's tail-to-hole moves from the
 * device pos: writes global src/dst at streams[i].out_off (capacity n_slots - n_live, the
 * rest of it set to -1) and counts[i] = moves. */
int mem_cuda_compact_plan(mem_cuda_pool *p, const int32_t *pt, const mem_cuda_stream *streams,
                          int n_streams, int32_t *src, int32_t *dst, int32_t *counts,
                          void *stream);
/* k_select_topk / k_select_threshold: one block per stream; victims (stream-relative slots,
 * ascending) at victims + streams[i].out_off, counts[i]; with mark != 0 also pos = -1 at
 * the victims on the device (eviction marking). */
int mem_cuda_select(mem_cuda_pool *p, const int32_t *pt, const mem_cuda_stream *streams,
                    int n_streams, int threshold, int mark, int32_t *victims, int32_t *counts,
                    void *stream);
/* k_attn_reduce: per-stream statistics of probs[n_q][n_slots] over the live slots (see
 * kref_attn_reduce): MEM_CUDA_STATS_SUM adds the column sums into the device score (what h2o
 * accumulates), _LAST stores the last row as the score (tova), _MEAN writes the column means
 * to out + streams[i].out_off ([n_slots], 0 for holes; snapkv before its pooling). */
enum { MEM_CUDA_STATS_SUM = 0, MEM_CUDA_STATS_LAST = 1, MEM_CUDA_STATS_MEAN = 2 };
int mem_cuda_attn_reduce(mem_cuda_pool *p, const int32_t *pt, const mem_cuda_stream *streams,
                         int n_streams, const float *probs, int mode, float *out, void *stream);

#ifdef __cplusplus
}
#endif

#endif
