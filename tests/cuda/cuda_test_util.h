/* cuda_test_util.h — helpers shared by tests/cuda/test_cuda_*.c (header-only, static).
 *
 * Every CUDA equivalence test has two halves: the CPU twin (engine/kernels_ref.h) against
 * the existing CPU code, which always runs, and the kernel against its twin, which runs when
 * kvs_device_count() > 0 and otherwise prints "skipped: no GPU" and passes. */
#ifndef KVS_CUDA_TEST_UTIL_H
#define KVS_CUDA_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "backend.h"
#include "device.h"
#include "rope.h"
#include "kernels_ref.h"
#include "memory/pool.h"
#include "test_util.h"
#include "test_kv.h"

#ifdef KVS_HAVE_CUDA
#include "engine/cuda/kvs_cuda.h"
#endif

static uint64_t t_rng_state = 0x9E3779B97F4A7C15ull;
static inline void t_seed(uint64_t s) { t_rng_state = s ? s : 1; }
static inline uint32_t t_rnd(void)
{
    t_rng_state ^= t_rng_state >> 12;
    t_rng_state ^= t_rng_state << 25;
    t_rng_state ^= t_rng_state >> 27;
    return (uint32_t)((t_rng_state * 2685821657736338717ull) >> 32);
}
/* uniform in [-1, 1) */
static inline float t_unit(void) { return (float)t_rnd() / 4294967296.0f * 2.0f - 1.0f; }

/* The device 16-bit type under test (&kv_fmt_f16 or &kv_fmt_bf16): one build runs both, each
 * test that touches 16-bit data once per type (T_PER_TYPE). */
static const kv_format *t_fmt = &kv_fmt_f16;
static inline int t_bf16(void) { return t_fmt == &kv_fmt_bf16; }
#ifdef KVS_HAVE_CUDA
static inline int t_dtype(void) { return t_bf16() ? MEM_CUDA_BF16 : MEM_CUDA_F16; }
#endif
/* x rounded to the type under test */
static inline float t_round(float x) { return kref_round_half(x, t_fmt); }
static inline float t_half_unit(void) { return t_round(t_unit()); }
/* Tolerance for values stored in the 16-bit type under test, of magnitude about 1 (bf16 has
 * 8 significant bits to fp16's 11). */
static inline double t_half_tol(void) { return t_bf16() ? 2e-2 : 3e-3; }

/* 1 when every x[i] is a value of the 16-bit type under test (device outputs stored in it). */
static inline int t_representable(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] == x[i] && t_round(x[i]) != x[i]) return 0;
    return 1;
}

/* fn_f16 and fn_bf16: fn run with the 16-bit type under test set to each type. */
#define T_PER_TYPE(fn)                                                                       \
    static void fn##_f16(void)                                                               \
    {                                                                                        \
        t_fmt = &kv_fmt_f16;                                                                 \
        printf(" [f16]");                                                                    \
        fn();                                                                                \
    }                                                                                        \
    static void fn##_bf16(void)                                                              \
    {                                                                                        \
        t_fmt = &kv_fmt_bf16;                                                                \
        printf(" [bf16]");                                                                   \
        fn();                                                                                \
        t_fmt = &kv_fmt_f16;                                                                 \
    }

/* A directory for temporary files ($TMPDIR, else /tmp): tests also run by hand, e.g. under
 * compute-sanitizer, from any directory. */
static inline const char *t_tmpdir(void)
{
    const char *d = getenv("TMPDIR");
    return d && d[0] ? d : "/tmp";
}

/* 1 when a GPU is there to run the device half of a test. */
static inline int t_gpu(void)
{
#ifdef KVS_HAVE_CUDA
    return kvs_device_count() > 0;
#else
    return 0;
#endif
}
#define GPU_OR_SKIP()                                                                        \
    do {                                                                                     \
        if (!t_gpu()) {                                                                      \
            printf(" skipped: no GPU ");                                                     \
            fflush(stdout);                                                                  \
            return;                                                                          \
        }                                                                                    \
    } while (0)

static inline double t_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

/* Fill a stream of a full host pool: n tokens at positions pos0.. with random K/V (16-bit
 * representable) and random scores, then evict each slot with probability evict_pct / 100,
 * then append n_after more tokens (they fill holes first, so slot order != position order).
 * Reserves pages as needed. Returns 0 or a status. */
static inline int t_fill_stream(mem_pool *pool, mem_stream *s, int32_t pos0, int n, int evict_pct,
                         int n_after)
{
    const int d = tkv_head_dim(pool);
    float *k = malloc((size_t)d * sizeof *k), *v = malloc((size_t)d * sizeof *v);
    int rc = 0;
    if (!k || !v) { free(k); free(v); return KVS_ENOMEM; }
    int32_t pos = pos0;
    for (int phase = 0; phase < 2 && !rc; phase++) {
        int m = phase == 0 ? n : n_after;
        if ((rc = mem_stream_reserve(pool, s, m))) break;
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < d; j++) { k[j] = t_half_unit(); v[j] = t_half_unit(); }
            if (tkv_append(pool, s, pos++, k, v, t_unit()) < 0) { rc = KVS_ENOMEM; break; }
        }
        if (phase == 0 && evict_pct > 0)
            for (int32_t slot = s->n_slots - 1; slot >= 0; slot--) {
                int32_t pg = mem_slot_page(pool, s, slot), off = slot & (pool->page_slots - 1);
                if (mem_page_pos(pool, pg)[off] >= 0 && (int)(t_rnd() % 100) < evict_pct)
                    mem_stream_evict(pool, s, slot);
            }
    }
    free(k);
    free(v);
    return rc;
}

#endif
