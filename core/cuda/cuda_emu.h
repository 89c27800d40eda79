// cuda_emu.h — a small CUDA emulator for validating the kernels on a machine without a GPU
// (build with -DKVS_CUDA=OFF -DKVS_CUDA_EMU=ON; docs/CUDA.md). NOT a backend: it runs the same
// kernel source, compiled as C++ by the host compiler, one block at a time, each CUDA thread
// a cooperative fiber on one OS thread. __syncthreads / __syncthreads_or are block barriers,
// warp intrinsics (__shfl*_sync, __ballot_sync, __syncwarp) are rendezvous of the 32 lanes of
// a warp, and a barrier nobody can complete (e.g. __syncthreads in divergent code, a shuffle
// some lanes never reach) aborts with a message. Shared memory is function-static storage
// (one block runs at a time). Device memory is host memory; copies are memcpy; streams,
// events and graphs are synchronous stand-ins; cuBLAS GEMMs are plain loops.
//
// What it checks: indexing, the page/slot arithmetic, reductions, barrier placement and the
// shuffle/ballot logic — the kernels' results against their CPU twins. What it cannot check:
// data races between blocks or warps that real hardware would expose (execution here is
// sequential and deterministic), memory-model subtleties, timing and performance.
#ifndef KVS_CUDA_EMU_H
#define KVS_CUDA_EMU_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <sys/mman.h>
#include <time.h>
#include <vector>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// The CUDA headers give these host-compiler meanings; the emulator wants plain C++.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define CUDART_INF_F INFINITY
using std::max; // CUDA's device overloads of min / max
using std::min;

// ---- built-in variables -----------------------------------------------------------------------
struct kvs_emu_uint3 { unsigned x, y, z; };
inline kvs_emu_uint3 threadIdx, blockIdx, blockDim, gridDim;

// ---- fibers -------------------------------------------------------------------------------------
#define KVS_EMU_MAX_THREADS 1024
#define KVS_EMU_STACK (256u << 10)
enum { KVS_EMU_RUN = 0, KVS_EMU_WAIT = 1, KVS_EMU_DONE = 2 };

struct kvs_emu_fiber {
    void *sp;                 // saved stack pointer (x86-64 switch)
    char *stack;
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
    int state;
    int waiting_warp;         // -1: block barrier, else the warp
};

struct kvs_emu_block {
    int n, live, live_in_warp[32];
    int arrived, warp_arrived[32];
    int or_acc, or_result;
    uint64_t xbuf[32][32];    // per-warp exchange slots
};

inline kvs_emu_fiber kvs_emu_fibers[KVS_EMU_MAX_THREADS];
inline kvs_emu_block kvs_emu_blk;
inline int kvs_emu_cur = -1;
inline void *kvs_emu_sched_sp;
#if !defined(__x86_64__)
inline ucontext_t kvs_emu_sched_ctx;
#endif
inline std::function<void()> kvs_emu_body; // the kernel launch being run

#if defined(__x86_64__)
// Save callee-saved registers on the current stack, store its pointer in *save, load `next`
// and restore its registers: the minimal cooperative switch of the System V x86-64 ABI.
extern "C" void kvs_emu_switch(void **save, void *next);
asm(R"(
    .text
    .weak kvs_emu_switch
    .type kvs_emu_switch,@function
kvs_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kvs_emu_switch, .-kvs_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

inline void kvs_emu_to_sched()
{
    kvs_emu_fiber *f = &kvs_emu_fibers[kvs_emu_cur];
#if defined(__x86_64__)
    kvs_emu_switch(&f->sp, kvs_emu_sched_sp);
#else
    swapcontext(&f->ctx, &kvs_emu_sched_ctx);
#endif
}

inline void kvs_emu_release(int warp)
{
    kvs_emu_block &b = kvs_emu_blk;
    for (int i = 0; i < b.n; i++) {
        kvs_emu_fiber &f = kvs_emu_fibers[i];
        if (f.state == KVS_EMU_WAIT && f.waiting_warp == warp) f.state = KVS_EMU_RUN;
    }
    if (warp < 0) {
        b.arrived = 0;
        b.or_result = b.or_acc;
        b.or_acc = 0;
    } else {
        b.warp_arrived[warp] = 0;
    }
}

inline void kvs_emu_check_complete(int warp)
{
    kvs_emu_block &b = kvs_emu_blk;
    if (b.arrived > 0 && b.arrived == b.live) kvs_emu_release(-1);
    if (warp >= 0 && b.warp_arrived[warp] > 0 && b.warp_arrived[warp] == b.live_in_warp[warp])
        kvs_emu_release(warp);
}

// Wait at the block barrier (warp < 0) or at warp `warp`'s rendezvous.
inline void kvs_emu_wait(int warp)
{
    kvs_emu_block &b = kvs_emu_blk;
    kvs_emu_fiber &f = kvs_emu_fibers[kvs_emu_cur];
    f.state = KVS_EMU_WAIT;
    f.waiting_warp = warp;
    if (warp < 0) b.arrived++;
    else b.warp_arrived[warp]++;
    kvs_emu_check_complete(warp);
    kvs_emu_to_sched();
}

inline void kvs_emu_fiber_main()
{
    kvs_emu_body();
    kvs_emu_block &b = kvs_emu_blk;
    const int warp = kvs_emu_cur / 32;
    kvs_emu_fibers[kvs_emu_cur].state = KVS_EMU_DONE;
    b.live--;
    b.live_in_warp[warp]--;
    kvs_emu_check_complete(warp);
    kvs_emu_to_sched();
    std::abort(); // never resumed
}

#if defined(__x86_64__)
extern "C" inline void kvs_emu_trampoline() { kvs_emu_fiber_main(); }
#else
inline void kvs_emu_trampoline_uc() { kvs_emu_fiber_main(); }
#endif

inline void kvs_emu_run_block(int n)
{
    kvs_emu_block &b = kvs_emu_blk;
    std::memset(&b, 0, sizeof b);
    b.n = n;
    b.live = n;
    for (int i = 0; i < n; i++) b.live_in_warp[i / 32]++;
    for (int i = 0; i < n; i++) {
        kvs_emu_fiber &f = kvs_emu_fibers[i];
        if (!f.stack) {
            void *p = mmap(NULL, KVS_EMU_STACK, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) { std::fprintf(stderr, "cuda_emu: no stack\n"); std::abort(); }
            f.stack = (char *)p;
        }
        f.state = KVS_EMU_RUN;
        f.waiting_warp = -1;
#if defined(__x86_64__)
        // initial frame: 6 callee-saved registers, then `ret` into the trampoline
        uintptr_t top = ((uintptr_t)f.stack + KVS_EMU_STACK) & ~(uintptr_t)15;
        uint64_t *sp = (uint64_t *)(top - 64);
        for (int k = 0; k < 6; k++) sp[k] = 0;
        sp[6] = (uint64_t)(uintptr_t)&kvs_emu_trampoline;
        sp[7] = 0;
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = KVS_EMU_STACK;
        f.ctx.uc_link = NULL;
        makecontext(&f.ctx, (void (*)())kvs_emu_trampoline_uc, 0);
#endif
    }
    for (;;) {
        int ran = 0, done = 0;
        for (int i = 0; i < n; i++) {
            kvs_emu_fiber &f = kvs_emu_fibers[i];
            if (f.state == KVS_EMU_DONE) { done++; continue; }
            if (f.state != KVS_EMU_RUN) continue;
            ran = 1;
            kvs_emu_cur = i;
            threadIdx.x = (unsigned)i;
            threadIdx.y = threadIdx.z = 0;
#if defined(__x86_64__)
            kvs_emu_switch(&kvs_emu_sched_sp, f.sp);
#else
            swapcontext(&kvs_emu_sched_ctx, &f.ctx);
#endif
        }
        if (done == n) break;
        if (!ran) {
            std::fprintf(stderr, "cuda_emu: deadlock in block (%u,%u,%u): %d of %d threads wait "
                         "at a barrier the others never reach\n", blockIdx.x, blockIdx.y,
                         blockIdx.z, n - done, n);
            std::abort();
        }
    }
    kvs_emu_cur = -1;
}

// ---- launches (recorded instead while a stream is being captured) ------------------------------
inline int kvs_emu_capturing;
inline std::vector<std::function<void()>> *kvs_emu_capture;

inline void kvs_emu_exec(dim3 grid, dim3 block, const std::function<void()> &body)
{
    if (block.y != 1 || block.z != 1 || block.x < 1 || block.x > KVS_EMU_MAX_THREADS) {
        std::fprintf(stderr, "cuda_emu: unsupported block shape %ux%ux%u\n", block.x, block.y,
                     block.z);
        std::abort();
    }
    gridDim = {grid.x, grid.y, grid.z};
    blockDim = {block.x, 1, 1};
    kvs_emu_body = body;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = {x, y, z};
                kvs_emu_run_block((int)block.x);
            }
    kvs_emu_body = nullptr;
}

inline void kvs_emu_launch(dim3 grid, dim3 block, std::function<void()> body)
{
    if (kvs_emu_capturing) {
        kvs_emu_capture->push_back([grid, block, body]() { kvs_emu_exec(grid, block, body); });
        return;
    }
    kvs_emu_exec(grid, block, body);
}

// Arguments are evaluated and copied at the launch, as CUDA does (a graph replays the values
// captured then, not whatever the launch site's variables hold later).
template <class F, class... A> inline void kvs_emu_launch_args(dim3 grid, dim3 block, F f, A... args)
{
    kvs_emu_launch(grid, block, [=]() { f(args...); });
}

inline void kvs_emu_host_op(std::function<void()> op)
{
    if (kvs_emu_capturing) kvs_emu_capture->push_back(op);
    else op();
}

// ---- device intrinsics ----------------------------------------------------------------------------
inline void __syncthreads() { kvs_emu_wait(-1); }
inline int __syncthreads_or(int p)
{
    kvs_emu_blk.or_acc |= p != 0;
    kvs_emu_wait(-1);
    return kvs_emu_blk.or_result;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; kvs_emu_wait(kvs_emu_cur / 32); }

template <class T> inline T kvs_emu_exchange(T v, int src_lane)
{
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    const int warp = kvs_emu_cur / 32, lane = kvs_emu_cur % 32;
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof v);
    kvs_emu_blk.xbuf[warp][lane] = u;
    kvs_emu_wait(warp);
    uint64_t r = kvs_emu_blk.xbuf[warp][src_lane & 31];
    kvs_emu_wait(warp);
    T out;
    std::memcpy(&out, &r, sizeof out);
    return out;
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32)
{
    (void)mask; (void)width;
    return kvs_emu_exchange(v, (kvs_emu_cur % 32) ^ o);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    (void)mask; (void)width;
    return kvs_emu_exchange(v, src);
}
inline unsigned __ballot_sync(unsigned mask, int p)
{
    (void)mask;
    const int warp = kvs_emu_cur / 32, lane = kvs_emu_cur % 32;
    kvs_emu_blk.xbuf[warp][lane] = p != 0;
    kvs_emu_wait(warp);
    unsigned r = 0;
    for (int i = 0; i < 32; i++)
        if (kvs_emu_blk.xbuf[warp][i] && kvs_emu_fibers[warp * 32 + i].state != KVS_EMU_DONE)
            r |= 1u << i;
    kvs_emu_wait(warp);
    return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
// one fiber runs at a time: atomics are plain read-modify-writes
template <class T> inline T atomicAdd(T *p, T v) { T o = *p; *p = o + v; return o; }
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v)
{
    unsigned long long o = *p;
    if (v < o) *p = v;
    return o;
}

// ---- the runtime API the backend uses ---------------------------------------------------------------
inline const char *kvs_emu_err_str(cudaError_t e)
{
    return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory"
                                                                           : "emulated error";
}
inline cudaError_t kvs_emu_malloc(void **p, size_t n)
{
    *p = std::calloc(1, n ? n : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t kvs_emu_free(void *p) { std::free(p); return cudaSuccess; }
inline cudaError_t kvs_emu_memcpy(void *d, const void *s, size_t n, cudaMemcpyKind)
{
    if (n) std::memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t kvs_emu_memcpy_async(void *d, const void *s, size_t n, cudaMemcpyKind k,
                                        cudaStream_t = 0)
{
    return kvs_emu_memcpy(d, s, n, k);
}
inline cudaError_t kvs_emu_memset(void *d, int v, size_t n)
{
    if (n) std::memset(d, v, n);
    return cudaSuccess;
}
inline cudaError_t kvs_emu_ok() { return cudaSuccess; }
inline cudaError_t kvs_emu_count(int *n) { *n = 1; return cudaSuccess; }
inline cudaError_t kvs_emu_props(cudaDeviceProp *p, int)
{
    std::memset(p, 0, sizeof *p);
    std::snprintf(p->name, sizeof p->name, "kvsieve CUDA emulator (CPU)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 4;
    p->totalGlobalMem = (size_t)4 << 30;
    return cudaSuccess;
}
inline cudaError_t kvs_emu_mem_info(size_t *free_b, size_t *total_b)
{
    *free_b = (size_t)2 << 30;
    *total_b = (size_t)4 << 30;
    return cudaSuccess;
}
inline cudaError_t kvs_emu_stream_create(cudaStream_t *s, unsigned)
{
    *s = (cudaStream_t)(uintptr_t)0x5;
    return cudaSuccess;
}
inline cudaError_t kvs_emu_host_alloc(void **p, size_t n, unsigned)
{
    return kvs_emu_malloc(p, n);
}
inline double kvs_emu_clock()
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
inline cudaError_t kvs_emu_event_create(cudaEvent_t *e)
{
    *e = (cudaEvent_t)std::calloc(1, sizeof(double));
    return *e ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t kvs_emu_event_record(cudaEvent_t e, cudaStream_t = 0)
{
    *(double *)(void *)e = kvs_emu_clock();
    return cudaSuccess;
}
inline cudaError_t kvs_emu_event_elapsed(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    *ms = (float)((*(double *)(void *)b - *(double *)(void *)a) * 1e3);
    return cudaSuccess;
}
inline cudaError_t kvs_emu_event_destroy(cudaEvent_t e) { std::free((void *)e); return cudaSuccess; }

// graphs: capture records the launches, a graph replays them
struct kvs_emu_graph { std::vector<std::function<void()>> ops; };
inline cudaError_t kvs_emu_begin_capture(cudaStream_t, cudaStreamCaptureMode)
{
    kvs_emu_capturing = 1;
    kvs_emu_capture = new std::vector<std::function<void()>>();
    return cudaSuccess;
}
inline cudaError_t kvs_emu_end_capture(cudaStream_t, cudaGraph_t *g)
{
    kvs_emu_capturing = 0;
    kvs_emu_graph *gr = new kvs_emu_graph{*kvs_emu_capture};
    delete kvs_emu_capture;
    kvs_emu_capture = NULL;
    *g = (cudaGraph_t)(void *)gr;
    return cudaSuccess;
}
inline cudaError_t kvs_emu_instantiate(cudaGraphExec_t *x, cudaGraph_t g, unsigned long long)
{
    *x = (cudaGraphExec_t)(void *)new kvs_emu_graph(*(kvs_emu_graph *)(void *)g);
    return cudaSuccess;
}
inline cudaError_t kvs_emu_graph_launch(cudaGraphExec_t x, cudaStream_t)
{
    for (auto &op : ((kvs_emu_graph *)(void *)x)->ops) op();
    return cudaSuccess;
}
inline cudaError_t kvs_emu_graph_destroy(cudaGraph_t g)
{
    delete (kvs_emu_graph *)(void *)g;
    return cudaSuccess;
}
inline cudaError_t kvs_emu_exec_destroy(cudaGraphExec_t x)
{
    delete (kvs_emu_graph *)(void *)x;
    return cudaSuccess;
}

#define cudaMalloc(p, n) kvs_emu_malloc((void **)(p), (n))
#define cudaFree kvs_emu_free
#define cudaMemcpy kvs_emu_memcpy
#define cudaMemcpyAsync kvs_emu_memcpy_async
#define cudaMemset kvs_emu_memset
#define cudaDeviceSynchronize() kvs_emu_ok()
#define cudaStreamSynchronize(s) ((void)(s), kvs_emu_ok())
#define cudaGetLastError() kvs_emu_ok()
#define cudaGetErrorString kvs_emu_err_str
#define cudaGetDeviceCount kvs_emu_count
#define cudaSetDevice(d) ((void)(d), kvs_emu_ok())
#define cudaGetDeviceProperties kvs_emu_props
#define cudaMemGetInfo kvs_emu_mem_info
#define cudaStreamCreateWithFlags kvs_emu_stream_create
#define cudaStreamDestroy(s) ((void)(s), kvs_emu_ok())
#define cudaHostAlloc(p, n, f) kvs_emu_host_alloc((void **)(p), (n), (f))
#define cudaFreeHost kvs_emu_free
#define cudaEventCreate kvs_emu_event_create
#define cudaEventRecord kvs_emu_event_record
#define cudaEventElapsedTime kvs_emu_event_elapsed
#define cudaEventDestroy kvs_emu_event_destroy
#define cudaEventSynchronize(e) ((void)(e), kvs_emu_ok())
#define cudaStreamBeginCapture kvs_emu_begin_capture
#define cudaStreamEndCapture kvs_emu_end_capture
#define cudaGraphInstantiate kvs_emu_instantiate
#define cudaGraphLaunch kvs_emu_graph_launch
#define cudaGraphDestroy kvs_emu_graph_destroy
#define cudaGraphExecDestroy kvs_emu_exec_destroy

// ---- cuBLAS: GemmEx with 16-bit inputs and fp32 output, as plain loops ------------------------------
inline float kvs_emu_ld16(const void *p, size_t i, cudaDataType t)
{
    if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}
inline cublasStatus_t kvs_emu_gemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, const void *alpha, const void *A,
                                   cudaDataType at, int lda, const void *B, cudaDataType bt,
                                   int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                                   cublasComputeType_t, cublasGemmAlgo_t)
{
    if (ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    kvs_emu_host_op([=]() {
        float *c = (float *)C;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float s = 0.0f;
                for (int l = 0; l < k; l++) {
                    float a = kvs_emu_ld16(A, ta == CUBLAS_OP_N ? (size_t)l * lda + i
                                                                : (size_t)i * lda + l, at);
                    float b = kvs_emu_ld16(B, tb == CUBLAS_OP_N ? (size_t)j * ldb + l
                                                                : (size_t)l * ldb + j, bt);
                    s += a * b;
                }
                float *y = &c[(size_t)j * ldc + i];
                *y = al * s + (be != 0.0f ? be * *y : 0.0f);
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t kvs_emu_blas_ok() { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t kvs_emu_blas_create(cublasHandle_t *h)
{
    *h = (cublasHandle_t)(uintptr_t)0x7;
    return CUBLAS_STATUS_SUCCESS;
}
inline const char *kvs_emu_blas_str(cublasStatus_t) { return "emulated cuBLAS error"; }
#undef cublasCreate
#undef cublasDestroy
#undef cublasSetStream
#undef cublasSetWorkspace
#undef cublasGemmEx
#undef cublasGetStatusString
#define cublasCreate kvs_emu_blas_create
#define cublasDestroy(h) ((void)(h), kvs_emu_blas_ok())
#define cublasSetStream(h, s) ((void)(h), (void)(s), kvs_emu_blas_ok())
#define cublasSetWorkspace(h, w, n) ((void)(h), (void)(w), (void)(n), kvs_emu_blas_ok())
#define cublasGemmEx kvs_emu_gemm
#define cublasGetStatusString kvs_emu_blas_str

#endif
