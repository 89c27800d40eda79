// mem_kernels.cu — the device KV pool and the memory kernels (mem_cuda.h): eviction marking,
// page clearing, batched slot copies (compaction, clones), compaction planning, per-stream
// top-k / threshold selection and the attention statistics (column sums, last row, column
// means) that attention-based policies use. Twins: engine/kernels_ref.c; tests:
// tests/cuda/test_cuda_memory.c. K/V are moved as 16-bit rows of either type (the pool's
// dtype), never converted here.
#include "core/cuda/cuda_common.cuh"

#include <stdlib.h>

#include "memory/cuda/mem_cuda.h" // C linkage of its own

// ==== the pool ===================================================================================

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

extern "C" size_t mem_cuda_page_bytes(int page_slots, int head_dim)
{
    return (size_t)page_slots * (2 * (size_t)head_dim * sizeof(uint16_t) + 8);
}

extern "C" int mem_cuda_pool_create(int page_slots, int head_dim, int32_t n_pages, int dtype,
                                    mem_cuda_pool **out)
{
    *out = NULL;
    if (dtype != MEM_CUDA_F16 && dtype != MEM_CUDA_BF16)
        return kvs_error(KVS_EINVAL, "device KV pool: unknown 16-bit type %d", dtype);
    if (page_slots < 1 || (page_slots & (page_slots - 1)) || head_dim < 1 || n_pages < 1 ||
        (int64_t)n_pages * page_slots > INT32_MAX)
        return kvs_error(KVS_EINVAL, "bad device KV pool geometry: %d pages x %d slots x %d",
                         (int)n_pages, page_slots, head_dim);
    mem_cuda_pool *p = (mem_cuda_pool *)calloc(1, sizeof *p);
    if (!p) return kvs_error(KVS_ENOMEM, "out of memory");
    p->page_slots = page_slots;
    while ((1 << p->page_shift) < page_slots) p->page_shift++;
    p->head_dim = head_dim;
    p->dtype = dtype;
    p->n_pages = n_pages;
    const size_t slots = (size_t)n_pages * page_slots;
    const size_t kv = align256(slots * head_dim * sizeof(uint16_t));
    const size_t meta = align256(slots * sizeof(int32_t));
    p->bytes = 2 * kv + 2 * meta;
    cudaError_t e = cudaMalloc(&p->base, p->bytes);
    if (e != cudaSuccess) {
        free(p);
        return kvs_error(KVS_ENOMEM, "cannot allocate a device KV pool of %d pages (%.2f GiB): "
                         "%s (lower --kv-memory)", (int)n_pages,
                         (double)(2 * kv + 2 * meta) / (1 << 30), cudaGetErrorString(e));
    }
    char *b = (char *)p->base;
    p->k = b;
    p->v = b + kv;
    p->pos = (int32_t *)(b + 2 * kv);
    p->score = (float *)(b + 2 * kv + meta);
    // pos = -1 (all bytes 0xff), the rest 0
    if ((e = cudaMemset(p->base, 0, 2 * kv)) != cudaSuccess ||
        (e = cudaMemset(p->pos, 0xff, meta)) != cudaSuccess ||
        (e = cudaMemset(p->score, 0, meta)) != cudaSuccess ||
        // the memsets run on the legacy stream; the forward's stream does not wait for it
        (e = cudaDeviceSynchronize()) != cudaSuccess) {
        cudaFree(p->base);
        free(p);
        return kvs_cuda_err(e, "cudaMemset (KV pool)", __FILE__, __LINE__);
    }
    *out = p;
    return 0;
}

extern "C" void mem_cuda_pool_destroy(mem_cuda_pool *p)
{
    if (!p) return;
    cudaFree(p->base);
    free(p);
}

__device__ __forceinline__ int32_t gslot_of(const int32_t *pages, int slot, int P, int shift)
{
    return pages[slot >> shift] * P + (slot & (P - 1));
}

// ==== marking, clearing, copies ==================================================================

__global__ void k_mark_slots(int32_t *pos, const int32_t *gslots, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        pos[gslots[i]] = -1;
}

extern "C" int mem_cuda_mark(mem_cuda_pool *p, const int32_t *gslots, int n, void *stream)
{
    if (n <= 0) return 0;
    int blocks = (n + 255) / 256;
    KVS_LAUNCH((k_mark_slots), blocks < 1024 ? blocks : 1024, 256, KVS_STREAM(stream), p->pos,
               gslots, n);
    KVS_CUDA_LAUNCHED("k_mark_slots");
    return 0;
}

__global__ void k_clear_pages(int32_t *pos, const int32_t *pages, int n, int P)
{
    const long total = (long)n * P;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x)
        pos[(size_t)pages[i / P] * P + (i % P)] = -1;
}

extern "C" int mem_cuda_clear_pages(mem_cuda_pool *p, const int32_t *pages, int n, void *stream)
{
    if (n <= 0) return 0;
    long total = (long)n * p->page_slots, blocks = (total + 255) / 256;
    KVS_LAUNCH((k_clear_pages), blocks < 1024 ? (int)blocks : 1024, 256, KVS_STREAM(stream), 
        p->pos, pages, n, p->page_slots);
    KVS_CUDA_LAUNCHED("k_clear_pages");
    return 0;
}

// One warp per move: K and V rows in 16-byte pieces (8 values), then pos and score.
__global__ void k_slot_copy(mem_cuda_pool pool, const int32_t *src, const int32_t *dst, int n,
                            int flags)
{
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (w >= n) return;
    const int32_t s = src[w], d = dst[w];
    if (s < 0 || d < 0) return;
    const int hd = pool.head_dim;
    if (flags & MEM_CUDA_COPY_KV) {
        if (hd % 8 == 0) {
            const int n16 = hd / 8;
            uint4 *K = (uint4 *)pool.k, *V = (uint4 *)pool.v;
            for (int c = lane; c < n16; c += 32) {
                K[(size_t)d * n16 + c] = K[(size_t)s * n16 + c];
                V[(size_t)d * n16 + c] = V[(size_t)s * n16 + c];
            }
        } else {
            uint16_t *K = (uint16_t *)pool.k, *V = (uint16_t *)pool.v; // either 16-bit type
            for (int e = lane; e < hd; e += 32) {
                K[(size_t)d * hd + e] = K[(size_t)s * hd + e];
                V[(size_t)d * hd + e] = V[(size_t)s * hd + e];
            }
        }
    }
    if (lane == 0) {
        if (flags & MEM_CUDA_COPY_META) {
            pool.pos[d] = pool.pos[s];
            pool.score[d] = pool.score[s];
        }
        if (flags & MEM_CUDA_CLEAR_SRC) pool.pos[s] = -1;
    }
}

extern "C" int mem_cuda_slot_copy(mem_cuda_pool *p, const int32_t *src, const int32_t *dst,
                                  int n, int flags, void *stream)
{
    if (n <= 0) return 0;
    const int warps_per_block = 8;
    int blocks = (n + warps_per_block - 1) / warps_per_block;
    KVS_LAUNCH((k_slot_copy), blocks, 32 * warps_per_block, KVS_STREAM(stream), *p, src, dst, n, flags);
    KVS_CUDA_LAUNCHED("k_slot_copy");
    return 0;
}

// ==== compaction planning ========================================================================
// One warp per stream. The i-th hole below n_live (ascending) receives the i-th live slot at or
// above n_live counted down from the top: mem_stream_compact's moves, found with ballots.

__global__ void k_compact_plan(mem_cuda_pool pool, const int32_t *pt,
                               const mem_cuda_stream *streams, int n_streams, int32_t *src,
                               int32_t *dst, int32_t *counts)
{
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (w >= n_streams) return;
    const mem_cuda_stream st = streams[w];
    const int32_t *pages = pt + st.pt_off;
    const int P = pool.page_slots, shift = pool.page_shift;
    const int n_slots = st.n_slots, n_live = min(st.n_live, st.n_slots);
    const int cap = n_slots - n_live;
    const unsigned lt = (1u << lane) - 1u;
    int cnt = 0;
    for (int base = 0; base < n_live; base += 32) {
        const int slot = base + lane;
        int32_t g = -1;
        bool hole = false;
        if (slot < n_live) {
            g = gslot_of(pages, slot, P, shift);
            hole = pool.pos[g] < 0;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, hole);
        if (hole && cnt + __popc(bal & lt) < cap) dst[st.out_off + cnt + __popc(bal & lt)] = g;
        cnt += __popc(bal);
    }
    int cnt2 = 0;
    for (int top = n_slots - 1; top >= n_live; top -= 32) {
        const int slot = top - lane;
        int32_t g = -1;
        bool live = false;
        if (slot >= n_live) {
            g = gslot_of(pages, slot, P, shift);
            live = pool.pos[g] >= 0;
        }
        const unsigned bal = __ballot_sync(0xffffffffu, live);
        if (live && cnt2 + __popc(bal & lt) < cap) src[st.out_off + cnt2 + __popc(bal & lt)] = g;
        cnt2 += __popc(bal);
    }
    const int n = min(min(cnt, cnt2), cap);
    __syncwarp();
    for (int i = n + lane; i < cap; i += 32) {
        src[st.out_off + i] = -1;
        dst[st.out_off + i] = -1;
    }
    if (lane == 0) counts[w] = n;
}

extern "C" int mem_cuda_compact_plan(mem_cuda_pool *p, const int32_t *pt,
                                     const mem_cuda_stream *streams, int n_streams, int32_t *src,
                                     int32_t *dst, int32_t *counts, void *stream)
{
    if (n_streams <= 0) return 0;
    const int warps_per_block = 4;
    int blocks = (n_streams + warps_per_block - 1) / warps_per_block;
    KVS_LAUNCH((k_compact_plan), blocks, 32 * warps_per_block, KVS_STREAM(stream), 
        *p, pt, streams, n_streams, src, dst, counts);
    KVS_CUDA_LAUNCHED("k_compact_plan");
    return 0;
}

// ==== selection ==================================================================================
// One block per stream, with the eviction driver's rules (memory/evict.c): the `sink` lowest
// positions and the positions > cur_pos - window are protected; victims are the lowest
// (score, pos) candidates (NaN = -inf), or for threshold selection every candidate with
// score < tau. k-th smallest keys by 8-bit radix select over the stream (no sort).

#define SEL_THREADS 256

struct SelShared {
    unsigned cnt[256];
    int bin;
    unsigned k_rem;
    unsigned n_live, n_cand;
    unsigned warp_cnt[SEL_THREADS / 32];
};

struct SelCtx {
    mem_cuda_pool pool;
    const int32_t *pages;
    mem_cuda_stream st;
    int64_t sink_max, recent_min;
};

enum { SEL_KEY_POS = 0, SEL_KEY_VICTIM = 1 };

__device__ __forceinline__ bool sel_candidate(const SelCtx &c, int32_t pos)
{
    return pos >= 0 && pos > c.sink_max && !(c.st.window > 0 && pos >= c.recent_min);
}

// The slot's key for `which`; false if the slot is not in that set.
__device__ __forceinline__ bool sel_key(const SelCtx &c, int which, int slot, uint64_t &key)
{
    const int32_t g = gslot_of(c.pages, slot, c.pool.page_slots, c.pool.page_shift);
    const int32_t pos = c.pool.pos[g];
    if (which == SEL_KEY_POS) {
        key = (uint32_t)pos;
        return pos >= 0;
    }
    if (!sel_candidate(c, pos)) return false;
    key = ((uint64_t)float_order_key(c.pool.score[g]) << 32) | (uint32_t)pos;
    return true;
}

// The k-th smallest key (k >= 1, at most the set's size) of the set `which`.
__device__ uint64_t sel_kth_smallest(const SelCtx &c, int which, unsigned k, SelShared &sh)
{
    const int nbits = which == SEL_KEY_POS ? 32 : 64;
    uint64_t prefix = 0, mask = 0;
    for (int shift = nbits - 8; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.cnt[b] = 0;
        __syncthreads();
        for (int slot = threadIdx.x; slot < c.st.n_slots; slot += blockDim.x) {
            uint64_t key;
            if (sel_key(c, which, slot, key) && (key & mask) == prefix)
                atomicAdd(&sh.cnt[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned cum = 0;
            sh.bin = 255;
            for (int b = 0; b < 256; b++) {
                if (cum + sh.cnt[b] >= k) { sh.bin = b; break; }
                cum += sh.cnt[b];
            }
            sh.k_rem = k - cum;
        }
        __syncthreads();
        k = sh.k_rem;
        prefix |= (uint64_t)sh.bin << shift;
        mask |= (uint64_t)255 << shift;
        __syncthreads();
    }
    return prefix;
}

__global__ void __launch_bounds__(SEL_THREADS)
k_select(mem_cuda_pool pool, const int32_t *pt, const mem_cuda_stream *streams, int threshold,
         int mark, int32_t *victims, int32_t *counts)
{
    __shared__ SelShared sh;
    SelCtx c;
    c.pool = pool;
    c.st = streams[blockIdx.x];
    c.pages = pt + c.st.pt_off;
    c.sink_max = -1;
    c.recent_min = (int64_t)c.st.cur_pos - c.st.window + 1;
    const int n = c.st.n_slots, P = pool.page_slots, shift = pool.page_shift;
    if (threadIdx.x == 0) { sh.n_live = 0; sh.n_cand = 0; }
    __syncthreads();
    unsigned my = 0;
    for (int slot = threadIdx.x; slot < n; slot += blockDim.x)
        my += pool.pos[gslot_of(c.pages, slot, P, shift)] >= 0;
    atomicAdd(&sh.n_live, my);
    __syncthreads();
    const unsigned m = sh.n_live;
    if ((unsigned)max(c.st.sink, 0) >= m) {
        if (threadIdx.x == 0) counts[blockIdx.x] = 0;
        return;
    }
    if (c.st.sink > 0) c.sink_max = (int64_t)sel_kth_smallest(c, SEL_KEY_POS, c.st.sink, sh);
    my = 0;
    for (int slot = threadIdx.x; slot < n; slot += blockDim.x)
        my += sel_candidate(c, pool.pos[gslot_of(c.pages, slot, P, shift)]);
    atomicAdd(&sh.n_cand, my);
    __syncthreads();
    const unsigned n_cand = sh.n_cand;
    uint64_t thr = 0;
    float tau = c.st.tau;
    if (!threshold) {
        long n_evict = (long)m - max(c.st.n_keep, 0);
        if (n_evict > (long)n_cand) n_evict = n_cand;
        if (n_evict <= 0) {
            if (threadIdx.x == 0) counts[blockIdx.x] = 0;
            return;
        }
        thr = sel_kth_smallest(c, SEL_KEY_VICTIM, (unsigned)n_evict, sh);
    }
    // victims in ascending slot order: block-wide ballot scan per chunk of slots
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int run = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int slot = base + threadIdx.x;
        bool v = false;
        int32_t g = -1;
        if (slot < n) {
            g = gslot_of(c.pages, slot, P, shift);
            const int32_t pos = pool.pos[g];
            if (sel_candidate(c, pos)) {
                if (threshold) {
                    float sc = pool.score[g];
                    if (sc != sc) sc = -CUDART_INF_F;
                    v = sc < tau;
                } else {
                    uint64_t key = ((uint64_t)float_order_key(pool.score[g]) << 32) | (uint32_t)pos;
                    v = key <= thr;
                }
            }
        }
        const unsigned bal = __ballot_sync(0xffffffffu, v);
        if (lane == 0) sh.warp_cnt[warp] = __popc(bal);
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < nw; w++) {
            if (w < warp) before += sh.warp_cnt[w];
            total += sh.warp_cnt[w];
        }
        if (v) {
            victims[c.st.out_off + run + before + __popc(bal & ((1u << lane) - 1u))] = slot;
            if (mark) pool.pos[g] = -1;
        }
        run += total;
        __syncthreads(); // warp_cnt reused
    }
    if (threadIdx.x == 0) counts[blockIdx.x] = run;
}

extern "C" int mem_cuda_select(mem_cuda_pool *p, const int32_t *pt, const mem_cuda_stream *streams,
                               int n_streams, int threshold, int mark, int32_t *victims,
                               int32_t *counts, void *stream)
{
    if (n_streams <= 0) return 0;
    KVS_LAUNCH((k_select), n_streams, SEL_THREADS, KVS_STREAM(stream), *p, pt, streams, threshold, mark,
                                                                victims, counts);
    KVS_CUDA_LAUNCHED("k_select");
    return 0;
}

// ==== attention statistics =======================================================================
// One block per stream over probs[n_q][n_slots] (from k_attn_probs): SUM adds the column sums
// to the stored score (h2o), LAST stores the last row (tova), MEAN writes the column means to
// out (snapkv, before its pooling).

__global__ void k_attn_reduce(mem_cuda_pool pool, const int32_t *pt,
                              const mem_cuda_stream *streams, const float *probs, int mode,
                              float *out)
{
    const mem_cuda_stream st = streams[blockIdx.x];
    const int32_t *pages = pt + st.pt_off;
    const int n = st.n_slots, nq = st.n_q, P = pool.page_slots, shift = pool.page_shift;
    const float *pr = probs + st.probs_off;
    for (int slot = threadIdx.x; slot < n; slot += blockDim.x) {
        const int32_t g = gslot_of(pages, slot, P, shift);
        const bool live = pool.pos[g] >= 0;
        if (mode == MEM_CUDA_STATS_LAST) {
            if (live && nq > 0) pool.score[g] = pr[(size_t)(nq - 1) * n + slot];
            continue;
        }
        float sum = 0.0f;
        for (int q = 0; q < nq; q++) sum += pr[(size_t)q * n + slot];
        if (mode == MEM_CUDA_STATS_SUM) {
            if (live) pool.score[g] += sum;
        } else {
            out[st.out_off + slot] = live && nq > 0 ? sum / (float)nq : 0.0f;
        }
    }
}

extern "C" int mem_cuda_attn_reduce(mem_cuda_pool *p, const int32_t *pt,
                                    const mem_cuda_stream *streams, int n_streams,
                                    const float *probs, int mode, float *out, void *stream)
{
    if (n_streams <= 0) return 0;
    KVS_LAUNCH((k_attn_reduce), n_streams, 256, KVS_STREAM(stream), *p, pt, streams, probs, mode, out);
    KVS_CUDA_LAUNCHED("k_attn_reduce");
    return 0;
}
