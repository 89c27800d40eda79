// kernels.cu — the forward kernels of the CUDA backend and their C launchers (kvs_cuda.h),
// plus small device-memory helpers. Each kernel's CPU twin is in engine/kernels_ref.c; the
// equivalence tests are tests/cuda/test_cuda_kernels.c. Design notes: docs/CUDA.md.
// Kernels that touch 16-bit data are templates on its element type H (__half or
// __nv_bfloat16); each launcher picks H from its `dtype` argument or the pool's.
#include "core/cuda/cuda_common.cuh"
#include "engine/cuda/kvs_cuda.h"

#include <limits.h>
#include <stdio.h>

#define LOG2E_F 1.4426950408889634f

// ==== conversions, embedding, norms, SwiGLU =====================================================

template <typename H>
__global__ void k_f32_to_half(const float *in, H *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = f2h<H>(in[i]);
}

template <typename H>
__global__ void k_half_to_f32(const H *in, float *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = h2f(in[i]);
}

static unsigned grid_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535u * 4) b = 65535u * 4;
    return (unsigned)b;
}

static int bad_dtype(int dtype)
{
    return kvs_error(KVS_EINVAL, "CUDA kernels: unknown 16-bit type %d", dtype);
}
#define CHECK_DTYPE(dt)                                                                    \
    do {                                                                                   \
        if ((dt) != MEM_CUDA_F16 && (dt) != MEM_CUDA_BF16) return bad_dtype(dt);           \
    } while (0)

template <typename H>
static int launch_f32_to_half(const float *in, void *out, size_t n, cudaStream_t st)
{
    KVS_LAUNCH((k_f32_to_half<H>), grid_for(n, 256), 256, st, in, (H *)out, n);
    KVS_CUDA_LAUNCHED("k_f32_to_half");
    return 0;
}

extern "C" int kvs_k_f32_to_half(const float *in, void *out, size_t n, int dtype, void *stream)
{
    CHECK_DTYPE(dtype);
    if (n == 0) return 0;
    return KVS_HALF_DISPATCH(dtype == MEM_CUDA_BF16, launch_f32_to_half, in, out, n,
                             KVS_STREAM(stream));
}

template <typename H>
static int launch_half_to_f32(const void *in, float *out, size_t n, cudaStream_t st)
{
    KVS_LAUNCH((k_half_to_f32<H>), grid_for(n, 256), 256, st, (const H *)in, out, n);
    KVS_CUDA_LAUNCHED("k_half_to_f32");
    return 0;
}

extern "C" int kvs_k_half_to_f32(const void *in, float *out, size_t n, int dtype, void *stream)
{
    CHECK_DTYPE(dtype);
    if (n == 0) return 0;
    return KVS_HALF_DISPATCH(dtype == MEM_CUDA_BF16, launch_half_to_f32, in, out, n,
                             KVS_STREAM(stream));
}

// x[t][D] = table[tok[t]][D]: one block per token.
template <typename H>
__global__ void k_embed(const H *table, const int32_t *tok, int D, float *x)
{
    const size_t t = blockIdx.x;
    const H *row = table + (size_t)tok[t] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) x[t * D + i] = h2f(row[i]);
}

template <typename H>
static int launch_embed(const void *table, const int32_t *tok, int T, int D, float *x,
                        cudaStream_t st)
{
    KVS_LAUNCH((k_embed<H>), T, 256, st, (const H *)table, tok, D, x);
    KVS_CUDA_LAUNCHED("k_embed");
    return 0;
}

extern "C" int kvs_k_embed(const void *table, const int32_t *tok, int T, int D, float *x,
                           int dtype, void *stream)
{
    CHECK_DTYPE(dtype);
    if (T <= 0) return 0;
    return KVS_HALF_DISPATCH(dtype == MEM_CUDA_BF16, launch_embed, table, tok, T, D, x,
                             KVS_STREAM(stream));
}

// out[r] = x[row] / sqrt(mean(x^2) + eps) * w, one block per row, fp32 sums, 16-bit output.
template <typename H>
__global__ void k_rmsnorm(const float *x, const int32_t *rows, int D, const float *w, float eps,
                          H *out)
{
    __shared__ float red[32];
    const size_t r = blockIdx.x, row = rows ? (size_t)rows[r] : r;
    const float *xr = x + row * D;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[r * D + i] = f2h<H>(xr[i] * inv * w[i]);
}

template <typename H>
static int launch_rmsnorm(const float *x, const int32_t *rows, int R, int D, const float *w,
                          float eps, void *out, cudaStream_t st)
{
    KVS_LAUNCH((k_rmsnorm<H>), R, 256, st, x, rows, D, w, eps, (H *)out);
    KVS_CUDA_LAUNCHED("k_rmsnorm");
    return 0;
}

extern "C" int kvs_k_rmsnorm(const float *x, const int32_t *rows, int R, int D, const float *w,
                             float eps, void *out, int dtype, void *stream)
{
    CHECK_DTYPE(dtype);
    if (R <= 0) return 0;
    return KVS_HALF_DISPATCH(dtype == MEM_CUDA_BF16, launch_rmsnorm, x, rows, R, D, w, eps, out,
                             KVS_STREAM(stream));
}

// act[t][i] = silu(g) * u with g = gu[t][i], u = gu[t][F + i].
template <typename H>
__global__ void k_swiglu(const float *gu, size_t T, int F, H *act)
{
    const size_t n = T * (size_t)F;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t t = k / F, i = k - t * F;
        float g = gu[t * 2 * F + i], u = gu[t * 2 * F + F + i];
        act[k] = f2h<H>(g / (1.0f + expf(-g)) * u);
    }
}

template <typename H>
static int launch_swiglu(const float *gu, int T, int F, void *act, cudaStream_t st)
{
    size_t n = (size_t)T * F;
    KVS_LAUNCH((k_swiglu<H>), grid_for(n, 256), 256, st, gu, (size_t)T, F, (H *)act);
    KVS_CUDA_LAUNCHED("k_swiglu");
    return 0;
}

extern "C" int kvs_k_swiglu(const float *gu, int T, int F, void *act, int dtype, void *stream)
{
    CHECK_DTYPE(dtype);
    if (T <= 0) return 0;
    return KVS_HALF_DISPATCH(dtype == MEM_CUDA_BF16, launch_swiglu, gu, T, F, act,
                             KVS_STREAM(stream));
}

// ==== RoPE + K/V write + key score ===============================================================
// One block per token: rotate its q and k heads in place (fp32), write k and v (16-bit) into
// the page slots the host assigned, and score each key by its sequence's kind from the fp32
// rotated key (one warp per KV head), so the policy's score costs no extra pass over K.

template <typename H>
__global__ void __launch_bounds__(256) k_rope_kv_write(kvs_rope_kv_args a)
{
    const int t = blockIdx.x, hd = a.hd, half = hd / 2, Hq = a.Hq, Hkv = a.Hkv;
    const size_t QKV = (size_t)(Hq + 2 * Hkv) * hd;
    float *row = a.qkv + (size_t)t * QKV;
    const int32_t p = a.pos[t];
    const float *cs = a.cos_t + (size_t)p * half, *sn = a.sin_t + (size_t)p * half;
    for (int idx = threadIdx.x; idx < (Hq + Hkv) * half; idx += blockDim.x) {
        int h = idx / half, i = idx - h * half;
        float *v = row + (size_t)h * hd + 2 * i;
        float x0 = v[0], x1 = v[1];
        // no FMA contraction: the same rounding as the C reference
        v[0] = __fsub_rn(__fmul_rn(x0, cs[i]), __fmul_rn(x1, sn[i]));
        v[1] = __fadd_rn(__fmul_rn(x0, sn[i]), __fmul_rn(x1, cs[i]));
    }
    __syncthreads();
    const kvs_seq_info si = a.seq[a.tok_seq[t]];
    H *K = (H *)a.pool.k, *V = (H *)a.pool.v;
    for (int idx = threadIdx.x; idx < Hkv * hd; idx += blockDim.x) {
        int h = idx / hd, e = idx - h * hd;
        size_t g = (size_t)a.slot_map[(size_t)t * Hkv + h];
        K[g * hd + e] = f2h<H>(row[(size_t)(Hq + h) * hd + e]);
        V[g * hd + e] = f2h<H>(row[(size_t)(Hq + Hkv + h) * hd + e]);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int h = warp; h < Hkv; h += nw) {
        const float *k = row + (size_t)(Hq + h) * hd;
        float acc = 0.0f, sc = 0.0f;
        if (si.score_kind == KVS_SCORE_DOT) {
            const float *u = a.filters + (size_t)si.filter_set * a.set_stride + (size_t)h * hd;
            for (int e = lane; e < hd; e += 32) acc += k[e] * u[e];
            sc = warp_sum(acc);
        } else if (si.score_kind == KVS_SCORE_NEG_NORM) {
            for (int e = lane; e < hd; e += 32) acc += k[e] * k[e];
            sc = -sqrtf(warp_sum(acc));
        } else if (si.score_kind == KVS_SCORE_POS) {
            sc = (float)p;
        }
        if (lane == 0) {
            int32_t g = a.slot_map[(size_t)t * Hkv + h];
            a.pool.pos[g] = p;
            a.pool.score[g] = sc;
            a.scores[(size_t)t * Hkv + h] = sc;
        }
    }
    if (si.key_stash >= 0) {
        float *dst = a.key_stash + (size_t)(si.key_stash + t - si.tok0) * Hkv * hd;
        for (int idx = threadIdx.x; idx < Hkv * hd; idx += blockDim.x)
            dst[idx] = row[(size_t)Hq * hd + idx];
    }
    if (si.query_stash >= 0) {
        float *dst = a.query_stash + (size_t)(si.query_stash + t - si.tok0) * Hq * hd;
        for (int idx = threadIdx.x; idx < Hq * hd; idx += blockDim.x) dst[idx] = row[idx];
    }
}

template <typename H>
static int launch_rope_kv_write(const kvs_rope_kv_args *a, cudaStream_t st)
{
    KVS_LAUNCH((k_rope_kv_write<H>), a->T, 256, st, *a);
    KVS_CUDA_LAUNCHED("k_rope_kv_write");
    return 0;
}

extern "C" int kvs_k_rope_kv_write(const kvs_rope_kv_args *a, void *stream)
{
    CHECK_DTYPE(a->pool.dtype);
    if (a->T <= 0) return 0;
    return KVS_HALF_DISPATCH(a->pool.dtype == MEM_CUDA_BF16, launch_rope_kv_write, a,
                             KVS_STREAM(stream));
}

// ==== paged decode attention (split along the stream) ===========================================
// One block (4 warps) per (query token, KV head, chunk of GB query heads, split): GB = G for
// G <= 4, else 8 (heads past G in the last chunk are computed on zeros and not written), so a
// block covers every query head of its group for G <= 8 and K/V are read once. The split
// covers a contiguous range of the stream's pages. Within a warp, LPS = HD/8 lanes share a
// slot (8 dims each, one 16-byte load of K and of V); the warp walks SPW = 32/LPS slots at a
// time, and each slot group keeps its own online-softmax state (max, sum, acc) in the log2
// domain; groups, then warps, are merged at the end. Holes (pos < 0) and keys after the
// query's position are skipped without loading K/V.

__device__ __forceinline__ void merge_state(float &m, float &l, float *acc, float m2, float l2,
                                            const float *acc2, int n)
{
    float mn = fmaxf(m, m2);
    if (mn == -CUDART_INF_F) return;
    float f1 = exp2f(m - mn), f2 = exp2f(m2 - mn);
    l = l * f1 + l2 * f2;
    for (int i = 0; i < n; i++) acc[i] = acc[i] * f1 + acc2[i] * f2;
    m = mn;
}

template <typename H, int HD, int GB>
__global__ void __launch_bounds__(128) k_attn_decode(kvs_attn_args a, int n_chunks)
{
    constexpr int NW = 4, LPS = HD / 8, SPW = 32 / LPS;
    __shared__ float q_s[GB][HD];
    __shared__ float red_m[NW][GB], red_l[NW][GB];
    __shared__ float red_acc[NW][GB][HD];
    const int item = blockIdx.x, t = a.dec[item], s = a.tok_seq[t];
    const int hk = blockIdx.y / n_chunks, g0 = (blockIdx.y % n_chunks) * GB;
    const int split = blockIdx.z, n_split = gridDim.z;
    const int G = a.Hq / a.Hkv, gc = min(GB, G - g0); // query heads in this chunk
    const kvs_stream_info si = a.streams[((size_t)s * a.L + a.layer) * a.Hkv + hk];
    const int32_t *pages = a.pt + si.pt_off;
    const int32_t qp = a.pos[t];
    const int P = a.pool.page_slots, shift = a.pool.page_shift;
    const int64_t n_pages = ((int64_t)si.n_slots + P - 1) >> shift;
    const int64_t pps = (n_pages + n_split - 1) / n_split;
    const int s0 = (int)min((int64_t)split * pps * P, (int64_t)si.n_slots);
    const int s1 = (int)min((int64_t)(split + 1) * pps * P, (int64_t)si.n_slots);
    const float qscale = a.scale * LOG2E_F;
    for (int i = threadIdx.x; i < GB * HD; i += blockDim.x) {
        int g = i / HD, e = i - g * HD;
        q_s[g][e] = g < gc ? a.q[(size_t)t * a.q_stride + (size_t)(hk * G + g0 + g) * HD + e] * qscale
                           : 0.0f;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = lane % LPS, j = lane / LPS;
    float m[GB], l[GB], acc[GB][8];
#pragma unroll
    for (int g = 0; g < GB; g++) {
        m[g] = -CUDART_INF_F;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[g][i] = 0.0f;
    }
    const uint4 *K = (const uint4 *)a.pool.k, *V = (const uint4 *)a.pool.v;
    for (int base = s0 + warp * SPW; base < s1; base += NW * SPW) {
        const int slot = base + j;
        bool vis = false;
        uint4 kk = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
        if (slot < s1) {
            const int32_t gsl = pages[slot >> shift] * P + (slot & (P - 1));
            const int32_t kp = a.pool.pos[gsl];
            vis = kp >= 0 && kp <= qp;
            if (vis) {
                kk = K[(size_t)gsl * (HD / 8) + c];
                vv = V[(size_t)gsl * (HD / 8) + c];
            }
        }
        float kf[8];
        unpack8<H>(kk, kf);
        float d[GB];
#pragma unroll
        for (int g = 0; g < GB; g++) {
            float x = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) x += q_s[g][c * 8 + i] * kf[i];
#pragma unroll
            for (int o = LPS / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
            d[g] = x;
        }
        if (vis) {
            float vf[8];
            unpack8<H>(vv, vf);
#pragma unroll
            for (int g = 0; g < GB; g++) {
                float mn = fmaxf(m[g], d[g]);
                float corr = exp2f(m[g] - mn), p = exp2f(d[g] - mn);
                l[g] = l[g] * corr + p;
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] = acc[g][i] * corr + p * vf[i];
                m[g] = mn;
            }
        }
    }
    // merge the slot groups of the warp (lanes that differ in the bits above LPS)
#pragma unroll
    for (int o = LPS; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < GB; g++) {
            float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
            float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
            float a2[8];
#pragma unroll
            for (int i = 0; i < 8; i++) a2[i] = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
            merge_state(m[g], l[g], acc[g], m2, l2, a2, 8);
        }
    }
    if (j == 0) {
#pragma unroll
        for (int g = 0; g < GB; g++) {
#pragma unroll
            for (int i = 0; i < 8; i++) red_acc[warp][g][c * 8 + i] = acc[g][i];
            if (c == 0) { red_m[warp][g] = m[g]; red_l[warp][g] = l[g]; }
        }
    }
    __syncthreads();
    H *out = (H *)a.out;
    for (int i = threadIdx.x; i < GB * HD; i += blockDim.x) {
        const int g = i / HD, e = i - g * HD, hq = hk * G + g0 + g;
        if (g >= gc) continue;
        float M = -CUDART_INF_F;
#pragma unroll
        for (int w = 0; w < NW; w++) M = fmaxf(M, red_m[w][g]);
        float A = 0.0f, Ls = 0.0f;
        if (M != -CUDART_INF_F) {
#pragma unroll
            for (int w = 0; w < NW; w++) {
                if (red_m[w][g] == -CUDART_INF_F) continue;
                float f = exp2f(red_m[w][g] - M);
                A += red_acc[w][g][e] * f;
                Ls += red_l[w][g] * f;
            }
        }
        if (n_split == 1) {
            out[(size_t)t * a.out_stride + (size_t)hq * HD + e] = f2h<H>(Ls > 0.0f ? A / Ls : 0.0f);
        } else {
            float *pp = a.part + (((size_t)split * a.n_dec + item) * a.Hq + hq) * (HD + 2);
            pp[e] = A;
            if (e == 0) { pp[HD] = M; pp[HD + 1] = Ls; }
        }
    }
}

// Merge the splits of one (token, query head) row: one block of HD threads per row.
template <typename H, int HD>
__global__ void k_attn_combine(kvs_attn_args a)
{
    const int row = blockIdx.x, item = row / a.Hq, hq = row - item * a.Hq, e = threadIdx.x;
    const int t = a.dec[item], n_split = a.n_split;
    const size_t stride = (size_t)a.n_dec * a.Hq * (HD + 2);
    const float *p0 = a.part + ((size_t)item * a.Hq + hq) * (HD + 2);
    float M = -CUDART_INF_F;
    for (int s = 0; s < n_split; s++) M = fmaxf(M, p0[s * stride + HD]);
    float A = 0.0f, L = 0.0f;
    if (M != -CUDART_INF_F)
        for (int s = 0; s < n_split; s++) {
            const float *p = p0 + s * stride;
            if (p[HD] == -CUDART_INF_F) continue;
            float f = exp2f(p[HD] - M);
            A += p[e] * f;
            L += p[HD + 1] * f;
        }
    ((H *)a.out)[(size_t)t * a.out_stride + (size_t)hq * HD + e] =
        f2h<H>(L > 0.0f ? A / L : 0.0f);
}

// Query heads per decode block: G up to 4, else 8 (the last chunk predicated).
static int decode_gb(int G) { return G <= 4 ? G : 8; }
static int decode_chunks(int G) { return (G + decode_gb(G) - 1) / decode_gb(G); }

extern "C" int kvs_attn_decode_splits(int n_dec, int Hkv, int G, int max_pages, int n_sm)
{
    long blocks = (long)n_dec * Hkv * decode_chunks(G);
    long target = 4L * (n_sm > 0 ? n_sm : 132);
    if (blocks <= 0 || blocks >= target) return 1;
    long want = (target + blocks - 1) / blocks;
    long most = max_pages / 4; // at least 4 pages (64 slots at P = 16) per split
    if (want > most) want = most;
    if (want > 32) want = 32;
    return want < 1 ? 1 : (int)want;
}

template <typename H, int HD, int GB>
static int launch_decode(const kvs_attn_args *a, cudaStream_t st)
{
    const int n_chunks = decode_chunks(a->Hq / a->Hkv);
    dim3 grid(a->n_dec, a->Hkv * n_chunks, a->n_split);
    KVS_LAUNCH((k_attn_decode<H, HD, GB>), grid, 128, st, *a, n_chunks);
    KVS_CUDA_LAUNCHED("k_attn_decode");
    if (a->n_split > 1) {
        KVS_LAUNCH((k_attn_combine<H, HD>), a->n_dec * a->Hq, HD, st, *a);
        KVS_CUDA_LAUNCHED("k_attn_combine");
    }
    return 0;
}

template <typename H, int HD>
static int launch_decode_hd(const kvs_attn_args *a, cudaStream_t st)
{
    switch (decode_gb(a->Hq / a->Hkv)) {
    case 8: return launch_decode<H, HD, 8>(a, st);
    case 4: return launch_decode<H, HD, 4>(a, st);
    case 3: return launch_decode<H, HD, 3>(a, st);
    case 2: return launch_decode<H, HD, 2>(a, st);
    default: return launch_decode<H, HD, 1>(a, st);
    }
}

template <typename H>
static int launch_decode_t(const kvs_attn_args *a, cudaStream_t st)
{
    return a->hd == 64 ? launch_decode_hd<H, 64>(a, st) : launch_decode_hd<H, 128>(a, st);
}

extern "C" int kvs_k_attn_decode(const kvs_attn_args *a, void *stream)
{
    if (a->n_dec <= 0) return 0;
    if (a->n_split < 1 || a->n_split > 64 || a->Hkv > 65535 / 16)
        return kvs_error(KVS_EINVAL, "decode attention: bad split count %d", a->n_split);
    if (a->n_split > 1 && !a->part)
        return kvs_error(KVS_EINVAL, "decode attention: %d splits need a partials buffer",
                         a->n_split);
    CHECK_DTYPE(a->pool.dtype);
    if (a->hd != 64 && a->hd != 128)
        return kvs_error(KVS_EUNSUPPORTED, "CUDA attention supports head dim 64 or 128, not %d",
                         a->hd);
    return KVS_HALF_DISPATCH(a->pool.dtype == MEM_CUDA_BF16, launch_decode_t, a,
                             KVS_STREAM(stream));
}

// ==== prefill attention (causal, flash-style) ====================================================
// One block (4 warps) per (tile, KV head): ROWS = (token, query head) rows of one sequence in
// shared memory (64 rows for HD 64, 32 for HD 128; tile tokens = ROWS / G). Keys stream
// through shared memory KT = 32 slots at a time from the sequence's pages (earlier chunks and
// this one alike); a tile whose keys are all holes or all after the tile's last position is
// skipped. Each warp owns ROWS/4 rows; lane j scores key j, the warp keeps the online softmax
// (log2 domain) and lane e accumulates output dims e, e+32, ...

template <typename H, int HD>
__global__ void __launch_bounds__(128) k_attn_prefill(kvs_attn_args a)
{
    typedef typename kvs_h16<H>::pair H2;
    constexpr int NW = 4, ROWS = HD <= 64 ? 64 : 32, RPW = ROWS / NW, KT = 32, EPL = HD / 32;
    __shared__ __align__(16) float q_s[ROWS][HD];
    __shared__ __align__(16) H2 k_s[KT][HD / 2 + 1];
    __shared__ __align__(16) H v_s[KT][HD];
    __shared__ int32_t kpos_s[KT];
    __shared__ int32_t qpos_s[ROWS];
    const kvs_tile tile = a.tiles[blockIdx.x];
    const int hk = blockIdx.y, G = a.Hq / a.Hkv, nrows = tile.n_tok * G;
    const kvs_stream_info si = a.streams[((size_t)tile.seq * a.L + a.layer) * a.Hkv + hk];
    const int32_t *pages = a.pt + si.pt_off;
    const int P = a.pool.page_slots, shift = a.pool.page_shift, n_slots = si.n_slots;
    const float qscale = a.scale * LOG2E_F;
    for (int i = threadIdx.x; i < ROWS * HD; i += blockDim.x) {
        int r = i / HD, e = i - r * HD;
        float v = 0.0f;
        if (r < nrows) {
            int t = tile.tok0 + r / G, g = r % G;
            v = a.q[(size_t)t * a.q_stride + (size_t)(hk * G + g) * HD + e] * qscale;
        }
        q_s[r][e] = v;
    }
    for (int r = threadIdx.x; r < ROWS; r += blockDim.x)
        qpos_s[r] = r < nrows ? a.pos[tile.tok0 + r / G] : -1;
    const int32_t max_qp = a.pos[tile.tok0 + tile.n_tok - 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float m[RPW], l[RPW], acc[RPW][EPL];
#pragma unroll
    for (int i = 0; i < RPW; i++) {
        m[i] = -CUDART_INF_F;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < EPL; c++) acc[i][c] = 0.0f;
    }
    const uint4 *K = (const uint4 *)a.pool.k, *V = (const uint4 *)a.pool.v;
    for (int kb = 0; kb < n_slots; kb += KT) {
        __syncthreads(); // previous tile consumed (and q_s / qpos_s written, first time)
        int any = 0;
        for (int i = threadIdx.x; i < KT * (HD / 8); i += blockDim.x) {
            const int jj = i / (HD / 8), c = i - jj * (HD / 8), slot = kb + jj;
            uint4 kk = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            int32_t kp = -1;
            if (slot < n_slots) {
                const int32_t gsl = pages[slot >> shift] * P + (slot & (P - 1));
                kp = a.pool.pos[gsl];
                if (kp >= 0 && kp <= max_qp) {
                    kk = K[(size_t)gsl * (HD / 8) + c];
                    vv = V[(size_t)gsl * (HD / 8) + c];
                } else {
                    kp = -1;
                }
            }
            const H2 *kh = reinterpret_cast<const H2 *>(&kk);
#pragma unroll
            for (int q = 0; q < 4; q++) k_s[jj][c * 4 + q] = kh[q];
            *reinterpret_cast<uint4 *>(&v_s[jj][c * 8]) = vv;
            if (c == 0) kpos_s[jj] = kp;
            any |= kp >= 0;
        }
        if (!__syncthreads_or(any)) continue;
        const int32_t kp = kpos_s[lane];
#pragma unroll
        for (int i = 0; i < RPW; i++) {
            const int r = warp + NW * i;
            if (r >= nrows) break;
            const bool vis = kp >= 0 && kp <= qpos_s[r];
            float d = 0.0f;
#pragma unroll 8
            for (int e2 = 0; e2 < HD / 2; e2++) {
                float2 kf = kvs_h16<H>::to_f2(k_s[lane][e2]);
                d += q_s[r][2 * e2] * kf.x + q_s[r][2 * e2 + 1] * kf.y;
            }
            const float sc = vis ? d : -CUDART_INF_F;
            const float mn = fmaxf(m[i], warp_max(sc));
            if (mn == -CUDART_INF_F) continue;
            const float p = vis ? exp2f(sc - mn) : 0.0f, corr = exp2f(m[i] - mn);
            l[i] = l[i] * corr + warp_sum(p);
            m[i] = mn;
#pragma unroll
            for (int c = 0; c < EPL; c++) acc[i][c] *= corr;
            for (int jj = 0; jj < KT; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                if (pj == 0.0f) continue;
#pragma unroll
                for (int c = 0; c < EPL; c++) acc[i][c] += pj * h2f(v_s[jj][lane + 32 * c]);
            }
        }
    }
    H *out = (H *)a.out;
#pragma unroll
    for (int i = 0; i < RPW; i++) {
        const int r = warp + NW * i;
        if (r >= nrows) break;
        const int t = tile.tok0 + r / G, hq = hk * G + r % G;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int c = 0; c < EPL; c++)
            out[(size_t)t * a.out_stride + (size_t)hq * HD + lane + 32 * c] = f2h<H>(acc[i][c] * inv);
    }
}

template <typename H>
static int launch_prefill(const kvs_attn_args *a, cudaStream_t st)
{
    dim3 grid(a->n_tiles, a->Hkv);
    if (a->hd == 64) KVS_LAUNCH((k_attn_prefill<H, 64>), grid, 128, st, *a);
    else KVS_LAUNCH((k_attn_prefill<H, 128>), grid, 128, st, *a);
    KVS_CUDA_LAUNCHED("k_attn_prefill");
    return 0;
}

extern "C" int kvs_k_attn_prefill(const kvs_attn_args *a, void *stream)
{
    CHECK_DTYPE(a->pool.dtype);
    if (a->n_tiles <= 0) return 0;
    const int G = a->Hq / a->Hkv, rows = a->hd <= 64 ? 64 : 32;
    if (G > rows)
        return kvs_error(KVS_EUNSUPPORTED, "prefill attention: GQA group of %d heads exceeds "
                         "the %d rows of a tile", G, rows);
    if (a->Hkv > 65535)
        return kvs_error(KVS_EUNSUPPORTED, "prefill attention: %d KV heads", a->Hkv);
    if (a->hd != 64 && a->hd != 128)
        return kvs_error(KVS_EUNSUPPORTED, "CUDA attention supports head dim 64 or 128, not %d",
                         a->hd);
    return KVS_HALF_DISPATCH(a->pool.dtype == MEM_CUDA_BF16, launch_prefill, a,
                             KVS_STREAM(stream));
}

// ==== attention statistics (observe hooks of h2o / tova / snapkv) ================================
// One block per (observed query token, KV head): probabilities over the stream's slots
// averaged over the G heads of the group. Pass 1: per-head online max/sum over the visible
// slots; pass 2: each slot's probability, written once (0 for holes and future keys).

#define PROBS_MAXG 16
template <typename H, int HD>
__global__ void __launch_bounds__(256) k_attn_probs(kvs_attn_args a)
{
    __shared__ float q_s[PROBS_MAXG][HD];
    __shared__ float red_m[PROBS_MAXG][8], red_l[PROBS_MAXG][8];
    __shared__ float fin_m[PROBS_MAXG], fin_l[PROBS_MAXG];
    const int t = a.obs[blockIdx.x], s = a.tok_seq[t], hk = blockIdx.y, G = a.Hq / a.Hkv;
    const kvs_seq_info sq = a.seq[s];
    const kvs_stream_info si = a.streams[((size_t)s * a.L + a.layer) * a.Hkv + hk];
    const int32_t *pages = a.pt + si.pt_off;
    const int P = a.pool.page_slots, shift = a.pool.page_shift, n = si.n_slots;
    const int32_t qp = a.pos[t];
    float *out = a.probs + si.probs_off + (size_t)(t - sq.tok0 - sq.obs0) * n;
    const float qscale = a.scale * LOG2E_F;
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        int g = i / HD, e = i - g * HD;
        q_s[g][e] = a.q[(size_t)t * a.q_stride + (size_t)(hk * G + g) * HD + e] * qscale;
    }
    __syncthreads();
    const uint4 *K = (const uint4 *)a.pool.k;
    float m[PROBS_MAXG], l[PROBS_MAXG];
#pragma unroll
    for (int g = 0; g < PROBS_MAXG; g++) { m[g] = -CUDART_INF_F; l[g] = 0.0f; }
    for (int slot = threadIdx.x; slot < n; slot += blockDim.x) {
        const int32_t gsl = pages[slot >> shift] * P + (slot & (P - 1)), kp = a.pool.pos[gsl];
        if (kp < 0 || kp > qp) continue;
        float d[PROBS_MAXG];
#pragma unroll
        for (int g = 0; g < PROBS_MAXG; g++) d[g] = 0.0f;
        for (int c = 0; c < HD / 8; c++) {
            float kf[8];
            unpack8<H>(K[(size_t)gsl * (HD / 8) + c], kf);
#pragma unroll
            for (int g = 0; g < PROBS_MAXG; g++)
                if (g < G)
#pragma unroll
                    for (int i = 0; i < 8; i++) d[g] += q_s[g][c * 8 + i] * kf[i];
        }
#pragma unroll
        for (int g = 0; g < PROBS_MAXG; g++) {
            if (g >= G) continue;
            float mn = fmaxf(m[g], d[g]);
            l[g] = l[g] * exp2f(m[g] - mn) + exp2f(d[g] - mn);
            m[g] = mn;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int g = 0; g < PROBS_MAXG; g++) {
        if (g >= G) continue;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
            float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
            merge_state(m[g], l[g], NULL, m2, l2, NULL, 0);
        }
        if (lane == 0) { red_m[g][warp] = m[g]; red_l[g][warp] = l[g]; }
    }
    __syncthreads();
    if ((int)threadIdx.x < G) {
        const int g = threadIdx.x;
        float M = -CUDART_INF_F, L = 0.0f;
        for (int w = 0; w < nw; w++) M = fmaxf(M, red_m[g][w]);
        if (M != -CUDART_INF_F)
            for (int w = 0; w < nw; w++)
                if (red_m[g][w] != -CUDART_INF_F) L += red_l[g][w] * exp2f(red_m[g][w] - M);
        fin_m[g] = M;
        fin_l[g] = L;
    }
    __syncthreads();
    for (int slot = threadIdx.x; slot < n; slot += blockDim.x) {
        const int32_t gsl = pages[slot >> shift] * P + (slot & (P - 1)), kp = a.pool.pos[gsl];
        if (kp < 0 || kp > qp) { out[slot] = 0.0f; continue; }
        float d[PROBS_MAXG];
#pragma unroll
        for (int g = 0; g < PROBS_MAXG; g++) d[g] = 0.0f;
        for (int c = 0; c < HD / 8; c++) {
            float kf[8];
            unpack8<H>(K[(size_t)gsl * (HD / 8) + c], kf);
#pragma unroll
            for (int g = 0; g < PROBS_MAXG; g++)
                if (g < G)
#pragma unroll
                    for (int i = 0; i < 8; i++) d[g] += q_s[g][c * 8 + i] * kf[i];
        }
        float pr = 0.0f;
#pragma unroll
        for (int g = 0; g < PROBS_MAXG; g++)
            if (g < G && fin_l[g] > 0.0f) pr += exp2f(d[g] - fin_m[g]) / (fin_l[g] * (float)G);
        out[slot] = pr;
    }
}

template <typename H>
static int launch_probs(const kvs_attn_args *a, cudaStream_t st)
{
    dim3 grid(a->n_obs, a->Hkv);
    if (a->hd == 64) KVS_LAUNCH((k_attn_probs<H, 64>), grid, 256, st, *a);
    else KVS_LAUNCH((k_attn_probs<H, 128>), grid, 256, st, *a);
    KVS_CUDA_LAUNCHED("k_attn_probs");
    return 0;
}

extern "C" int kvs_k_attn_probs(const kvs_attn_args *a, void *stream)
{
    CHECK_DTYPE(a->pool.dtype);
    if (a->n_obs <= 0) return 0;
    const int G = a->Hq / a->Hkv;
    if (G > PROBS_MAXG)
        return kvs_error(KVS_EUNSUPPORTED, "attention statistics: GQA group of %d > %d", G,
                         PROBS_MAXG);
    if (a->hd != 64 && a->hd != 128)
        return kvs_error(KVS_EUNSUPPORTED, "CUDA attention supports head dim 64 or 128, not %d",
                         a->hd);
    return KVS_HALF_DISPATCH(a->pool.dtype == MEM_CUDA_BF16, launch_probs, a,
                             KVS_STREAM(stream));
}

// ==== sampling ==================================================================================
// One block per logits row. Greedy: argmax, lowest index on ties. Otherwise every candidate
// token (p = exp((l - max) / T) >= 1e-10) gets a 64-bit key (bits(p) << 32 | ~id) whose
// descending order is smp_sample's order (p desc, id asc); top-k, top-p and the draw are
// radix selections over those keys (8 bits a digit), by count for top-k and by cumulative
// mass (double) for top-p and the draw — the sorted walk of the host sampler without sorting.

#define SAMPLE_THREADS 512

struct SampleCtx {
    const float *lg;
    int V;
    float mx, inv_t;
    uint64_t lo_k, lo_p; // kept: key >= lo_k (top-k) and key >= lo_p (top-p)
};

__device__ __forceinline__ bool sample_key(const SampleCtx &c, int i, uint64_t &key, float &p)
{
    p = expf((c.lg[i] - c.mx) * c.inv_t);
    if (!(p >= 1e-10f)) return false;
    key = ((uint64_t)__float_as_uint(p) << 32) | (uint64_t)(0xffffffffu - (uint32_t)i);
    return key >= c.lo_k && key >= c.lo_p;
}

struct SampleShared {
    unsigned int cnt[256];
    double mass[256];
    double total;
    unsigned int n;
    int bin;
    unsigned int k_rem;
    int found;
    uint64_t min_key;
};

// Largest key τ (kept) with count(key >= τ) >= k (k-th largest). Requires k <= kept count.
__device__ uint64_t sample_kth(const SampleCtx &c, unsigned k, SampleShared &sh)
{
    uint64_t prefix = 0, mask = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.cnt[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < c.V; i += blockDim.x) {
            uint64_t key;
            float p;
            if (sample_key(c, i, key, p) && (key & mask) == prefix)
                atomicAdd(&sh.cnt[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned cum = 0;
            sh.bin = 0;
            for (int b = 255; b >= 0; b--) {
                if (cum + sh.cnt[b] >= k) { sh.bin = b; break; }
                cum += sh.cnt[b];
            }
            k -= cum;
            sh.k_rem = k;
        }
        __syncthreads();
        k = sh.k_rem;
        prefix |= (uint64_t)sh.bin << shift;
        mask |= (uint64_t)255 << shift;
        __syncthreads();
    }
    return prefix;
}

// Largest key τ (kept) with mass(key >= τ) >= target (strict: > target). found = 0 if none.
__device__ uint64_t sample_by_mass(const SampleCtx &c, double target, bool strict,
                                   SampleShared &sh, int &found)
{
    uint64_t prefix = 0, mask = 0;
    double above = 0.0;
    found = 1;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.mass[b] = 0.0;
        __syncthreads();
        for (int i = threadIdx.x; i < c.V; i += blockDim.x) {
            uint64_t key;
            float p;
            if (sample_key(c, i, key, p) && (key & mask) == prefix)
                atomicAdd(&sh.mass[(key >> shift) & 255], (double)p);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            sh.found = 0;
            for (int b = 255; b >= 0; b--) {
                double m = above + sh.mass[b];
                if (sh.mass[b] > 0.0 && (strict ? m > target : m >= target)) {
                    sh.bin = b;
                    sh.found = 1;
                    break;
                }
                above = m;
            }
            sh.total = above; // mass strictly above the chosen bin
        }
        __syncthreads();
        if (!sh.found) { found = 0; return 0; }
        above = sh.total;
        prefix |= (uint64_t)sh.bin << shift;
        mask |= (uint64_t)255 << shift;
        __syncthreads();
    }
    return prefix;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
k_sample(const float *logits, int V, const kvs_sample_row *rows, int32_t *out)
{
    __shared__ SampleShared sh;
    __shared__ float red_v[SAMPLE_THREADS / 32];
    __shared__ int red_i[SAMPLE_THREADS / 32];
    const float *lg = logits + (size_t)blockIdx.x * V;
    const kvs_sample_row pr = rows[blockIdx.x];
    // argmax, lowest index on ties
    float bv = -CUDART_INF_F;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (lg[i] > bv) { bv = lg[i]; bi = i; }
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        if (v2 > bv || (v2 == bv && i2 < bi)) { bv = v2; bi = i2; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { red_v[warp] = bv; red_i[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < SAMPLE_THREADS / 32; w++)
            if (red_v[w] > red_v[0] || (red_v[w] == red_v[0] && red_i[w] < red_i[0])) {
                red_v[0] = red_v[w];
                red_i[0] = red_i[w];
            }
        if (red_i[0] == INT_MAX) red_i[0] = 0; // no finite logit: index 0, as smp_argmax
    }
    __syncthreads();
    const int best = red_i[0];
    if (pr.temperature == 0.0f || pr.top_k == 1) {
        if (threadIdx.x == 0) out[blockIdx.x] = best;
        return;
    }
    SampleCtx c;
    c.lg = lg;
    c.V = V;
    c.mx = lg[best];
    c.inv_t = 1.0f / pr.temperature;
    c.lo_k = 0;
    c.lo_p = 0;
    // candidates
    if (threadIdx.x == 0) sh.n = 0;
    __syncthreads();
    unsigned my_n = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        uint64_t key;
        float p;
        my_n += sample_key(c, i, key, p);
    }
    atomicAdd(&sh.n, my_n);
    __syncthreads();
    const unsigned n = sh.n; // >= 1: the argmax has p = 1
    if (pr.top_k > 0 && (unsigned)pr.top_k < n) c.lo_k = sample_kth(c, (unsigned)pr.top_k, sh);
    // mass of the kept set
    if (threadIdx.x == 0) sh.total = 0.0;
    __syncthreads();
    double my_mass = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        uint64_t key;
        float p;
        if (sample_key(c, i, key, p)) my_mass += p;
    }
    atomicAdd(&sh.total, my_mass);
    __syncthreads();
    double sum = sh.total;
    __syncthreads();
    int found;
    if (pr.top_p < 1.0f) {
        uint64_t tau = sample_by_mass(c, (double)pr.top_p * sum, false, sh, found);
        if (found) {
            c.lo_p = tau;
            if (threadIdx.x == 0) sh.total = 0.0;
            __syncthreads();
            my_mass = 0.0;
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                uint64_t key;
                float p;
                if (sample_key(c, i, key, p)) my_mass += p;
            }
            atomicAdd(&sh.total, my_mass);
            __syncthreads();
            sum = sh.total;
            __syncthreads();
        }
    }
    uint64_t pick = sample_by_mass(c, pr.r * sum, true, sh, found);
    if (!found) {
        // rounding left the draw past the last kept token: take the last one (smallest key)
        if (threadIdx.x == 0) sh.min_key = ~(uint64_t)0;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            uint64_t key;
            float p;
            if (sample_key(c, i, key, p)) atomicMin((unsigned long long *)&sh.min_key,
                                                    (unsigned long long)key);
        }
        __syncthreads();
        pick = sh.min_key;
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (int32_t)(0xffffffffu - (uint32_t)(pick & 0xffffffffu));
}

extern "C" int kvs_k_sample(const float *logits, int R, int V, const kvs_sample_row *rows,
                            int32_t *out, void *stream)
{
    if (R <= 0) return 0;
    if (V < 1) return kvs_error(KVS_EINVAL, "sampling over an empty vocabulary");
    KVS_LAUNCH((k_sample), R, SAMPLE_THREADS, KVS_STREAM(stream), logits, V, rows, out);
    KVS_CUDA_LAUNCHED("k_sample");
    return 0;
}

// ==== device query (engine/device.c) =============================================================

extern "C" int kvs_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); // no driver / no device
        return 0;
    }
    return n;
}

extern "C" void kvs_cuda_describe(char *buf, size_t size)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(buf, size, "no CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
        (void)cudaGetLastError();
        return;
    }
    cudaDeviceProp pr;
    if (cudaGetDeviceProperties(&pr, 0) != cudaSuccess) {
        snprintf(buf, size, "CUDA device 0 (properties unavailable)");
        return;
    }
    snprintf(buf, size, "%s, sm_%d%d, %.1f GiB, %d SMs, %d device%s", pr.name, pr.major, pr.minor,
             (double)pr.totalGlobalMem / (1024.0 * 1024 * 1024), pr.multiProcessorCount, n,
             n > 1 ? "s" : "");
}

// ==== device memory helpers ======================================================================

extern "C" void *kvs_cuda_malloc(size_t bytes)
{
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        kvs_cuda_err(e, "cudaMalloc", __FILE__, __LINE__);
        return NULL;
    }
    return d;
}

extern "C" void kvs_cuda_free(void *d)
{
    if (d) cudaFree(d);
}

extern "C" int kvs_cuda_upload(void *d, const void *h, size_t bytes)
{
    if (bytes) KVS_CUDA_TRY(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return 0;
}

extern "C" int kvs_cuda_download(void *h, const void *d, size_t bytes)
{
    if (bytes) KVS_CUDA_TRY(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int kvs_cuda_memset(void *d, int byte, size_t bytes)
{
    if (bytes) KVS_CUDA_TRY(cudaMemset(d, byte, bytes));
    return 0;
}

extern "C" int kvs_cuda_sync(void)
{
    KVS_CUDA_TRY(cudaDeviceSynchronize());
    return 0;
}

extern "C" int kvs_cuda_upload_half(void *d, const float *h, size_t n, int dtype)
{
    CHECK_DTYPE(dtype);
    const size_t chunk = (size_t)1 << 24; // floats per round trip through device staging
    float *stage = (float *)kvs_cuda_malloc((n < chunk ? n : chunk) * sizeof(float));
    if (!stage) return KVS_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        rc = kvs_cuda_upload(stage, h + i, k * sizeof(float));
        if (!rc) rc = kvs_k_f32_to_half(stage, (uint16_t *)d + i, k, dtype, NULL);
    }
    if (!rc) rc = kvs_cuda_sync();
    kvs_cuda_free(stage);
    return rc;
}

extern "C" int kvs_cuda_download_half(float *h, const void *d, size_t n, int dtype)
{
    CHECK_DTYPE(dtype);
    const size_t chunk = (size_t)1 << 24;
    float *stage = (float *)kvs_cuda_malloc((n < chunk ? n : chunk) * sizeof(float));
    if (!stage) return KVS_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        rc = kvs_k_half_to_f32((const uint16_t *)d + i, stage, k, dtype, NULL);
        if (!rc) rc = kvs_cuda_download(h + i, stage, k * sizeof(float));
    }
    kvs_cuda_free(stage);
    return rc;
}

extern "C" int kvs_cuda_pool_upload(mem_cuda_pool *d, const mem_pool *h, const kv_store *kv)
{
    if (d->page_slots != h->page_slots || d->head_dim != kv->head_dim || d->n_pages != h->n_pages ||
        kv->n_slots != (int64_t)h->n_pages * h->page_slots || kv->fk != &kv_fmt_f32 ||
        kv->fv != &kv_fmt_f32)
        return kvs_error(KVS_EINVAL, "device pool geometry differs from the host pool's "
                         "(or the host store is not f32)");
    size_t slots = (size_t)h->n_pages * h->page_slots, n = slots * kv->head_dim;
    int rc;
    if ((rc = kvs_cuda_upload_half(d->k, (const float *)kv->k, n, d->dtype))) return rc;
    if ((rc = kvs_cuda_upload_half(d->v, (const float *)kv->v, n, d->dtype))) return rc;
    if ((rc = kvs_cuda_upload(d->pos, h->pos, slots * sizeof(int32_t)))) return rc;
    return kvs_cuda_upload(d->score, h->score, slots * sizeof(float));
}

extern "C" int kvs_cuda_pool_download(const mem_cuda_pool *d, mem_pool *h, kv_store *kv)
{
    if (d->page_slots != h->page_slots || d->head_dim != kv->head_dim || d->n_pages != h->n_pages ||
        kv->n_slots != (int64_t)h->n_pages * h->page_slots || kv->fk != &kv_fmt_f32 ||
        kv->fv != &kv_fmt_f32)
        return kvs_error(KVS_EINVAL, "device pool geometry differs from the host pool's "
                         "(or the host store is not f32)");
    size_t slots = (size_t)h->n_pages * h->page_slots, n = slots * kv->head_dim;
    int rc;
    if ((rc = kvs_cuda_download_half((float *)kv->k, d->k, n, d->dtype))) return rc;
    if ((rc = kvs_cuda_download_half((float *)kv->v, d->v, n, d->dtype))) return rc;
    if ((rc = kvs_cuda_download(h->pos, d->pos, slots * sizeof(int32_t)))) return rc;
    return kvs_cuda_download(h->score, d->score, slots * sizeof(float));
}
