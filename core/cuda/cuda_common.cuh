// cuda_common.cuh — shared by the .cu files of engine/cuda and memory/cuda: the two 16-bit
// element types and their conversions, error handling, warp/block reductions, orderable keys.
// Internal (not a C header). Includes no engine or memory header: each .cu includes the C API
// it implements (engine/cuda/kvs_cuda.h, memory/cuda/mem_cuda.h).
#ifndef KVS_CUDA_COMMON_CUH
#define KVS_CUDA_COMMON_CUH

#ifdef KVS_CUDA_EMU
#include "core/cuda/cuda_emu.h" // the kernels as C++ on the CPU (validation without a GPU)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#endif
#include <stdint.h>

extern "C" {
#include "core/common.h"
}

// ---- the 16-bit storage types -------------------------------------------------------------
// Kernels that read or write 16-bit data are templates on the element type H: __half (fp16)
// or __nv_bfloat16 (bf16), chosen at run time by their launchers. kvs_h16<H> gives the pair
// type, the cuBLAS data type and the conversions (fp32 sums throughout, round to nearest even).
template <typename H> struct kvs_h16;
template <> struct kvs_h16<__half> {
    typedef __half2 pair;
    static constexpr cudaDataType blas_type = CUDA_R_16F;
    static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ float2 to_f2(__half2 x) { return __half22float2(x); }
};
template <> struct kvs_h16<__nv_bfloat16> {
    typedef __nv_bfloat162 pair;
    static constexpr cudaDataType blas_type = CUDA_R_16BF;
    static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float x)
    {
        return __float2bfloat16_rn(x);
    }
    static __device__ __forceinline__ float2 to_f2(__nv_bfloat162 x)
    {
        return __bfloat1622float2(x);
    }
};
template <typename H> __device__ __forceinline__ float h2f(H x) { return kvs_h16<H>::to_f(x); }
template <typename H> __device__ __forceinline__ H f2h(float x) { return kvs_h16<H>::from_f(x); }

// 8 16-bit values in one 16-byte load, widened to fp32.
template <typename H> __device__ __forceinline__ void unpack8(const uint4 &u, float *f)
{
    typedef typename kvs_h16<H>::pair H2;
    const H2 *h = reinterpret_cast<const H2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 x = kvs_h16<H>::to_f2(h[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

// Call launcher<H>(args...) with H the element type named by a run-time flag (bf16 != 0:
// __nv_bfloat16, else __half). Launchers are function templates returning int.
#define KVS_HALF_DISPATCH(bf16, launcher, ...)                                            \
    ((bf16) ? launcher<__nv_bfloat16>(__VA_ARGS__) : launcher<__half>(__VA_ARGS__))

// ---- errors -----------------------------------------------------------------------------------
// Record a CUDA error as a kvsieve error (message names the call and where).
static inline int kvs_cuda_err(cudaError_t e, const char *what, const char *file, int line)
{
    return kvs_error(e == cudaErrorMemoryAllocation ? KVS_ENOMEM : KVS_EIO,
                     "CUDA error in %s (%s:%d): %s", what, file, line, cudaGetErrorString(e));
}
#define KVS_CUDA_TRY(call)                                                                \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) return kvs_cuda_err(e_, #call, __FILE__, __LINE__);         \
    } while (0)
// After a kernel launch: launch configuration errors.
#define KVS_CUDA_LAUNCHED(name)                                                           \
    do {                                                                                  \
        cudaError_t e_ = cudaGetLastError();                                              \
        if (e_ != cudaSuccess) return kvs_cuda_err(e_, name, __FILE__, __LINE__);          \
    } while (0)

#define KVS_STREAM(s) (static_cast<cudaStream_t>(s))

// Kernel launch: KVS_LAUNCH((kernel<T>), grid, block, stream, args...). A macro so that the
// emulator (cuda_emu.h) can run the same launch sites on the CPU.
#define KVS_UNPAREN(...) __VA_ARGS__
#ifdef KVS_CUDA_EMU
#define KVS_LAUNCH(k, grid, block, stream, ...)                                           \
    ((void)(stream), kvs_emu_launch_args(dim3(grid), dim3(block), KVS_UNPAREN k, __VA_ARGS__))
#else
#define KVS_LAUNCH(k, grid, block, stream, ...)                                           \
    KVS_UNPAREN k<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

// ---- reductions -------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `red` is __shared__ float[32]. Contains __syncthreads: call from every thread.
__device__ __forceinline__ float block_sum(float v, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // red may still be read from a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

// ---- orderable keys -----------------------------------------------------------------------------
// Map a float to an unsigned key with the same order (-inf lowest); NaN is treated as -inf
// and -0 as +0, as the eviction driver compares scores.
__device__ __forceinline__ uint32_t float_order_key(float f)
{
    if (f != f) f = -CUDART_INF_F;
    if (f == 0.0f) f = 0.0f;
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#endif
