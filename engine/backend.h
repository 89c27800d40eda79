/* backend.h — the backend interface: what runs a step plan and owns the K/V rows
 * (docs/ARCHITECTURE.md, "Backends").
 *
 * A backend is a versioned struct of function pointers (kvs_backend_i, in the style of
 * llama.cpp's ggml_backend_i and SQLite's VFS: `version` first, members only ever appended)
 * plus an instance. The engine builds the step plan on the host (plan.h: slot assignment is
 * host bookkeeping in the page pool), hands it to the backend's `run`, and moves K/V only
 * through the backend (copy, read, compaction), so engine.c never asks which backend it has.
 * Two implementations: CPU (backend_cpu.c: K/V in a host kv_store of any KV format) and CUDA
 * (backend_cuda.c over engine/cuda: K/V in device memory, fp16 or bf16). */
#ifndef KVS_BACKEND_H
#define KVS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "memory/kv_format.h"
#include "memory/pool.h"
#include "model.h"
#include "plan.h"

#define KVS_BACKEND_VERSION 1

/* ---- backend selection (--device cpu|cuda|auto) ------------------------------------------ */

typedef enum {
    KVS_DEVICE_CPU = 0,  /* the default: engine_opts zero-initialised keeps the CPU backend */
    KVS_DEVICE_CUDA = 1,
    KVS_DEVICE_AUTO = 2  /* CUDA when a GPU is visible, else CPU */
} kvs_device_kind;

/* "cpu", "cuda", "auto" -> kind; KVS_EINVAL with a message otherwise. */
int kvs_device_parse(const char *s, kvs_device_kind *out);
const char *kvs_device_name(kvs_device_kind k);
/* Number of CUDA devices visible (0 when built without CUDA, without a driver or a GPU). */
int kvs_device_count(void);
/* One line about device 0 ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, 132 SMs"), or why none. */
void kvs_device_describe(char *buf, size_t size);
/* AUTO -> CUDA if kvs_device_count() > 0 else CPU; CUDA without a GPU (or a build without
 * CUDA) -> KVS_EUNSUPPORTED with a message saying so. */
int kvs_device_resolve(kvs_device_kind want, kvs_device_kind *out);

/* ---- the interface ---------------------------------------------------------------------- */

typedef struct kvs_backend kvs_backend;

typedef struct kvs_backend_opts {
    int page_slots;          /* P (power of two) */
    size_t kv_bytes;         /* K/V memory; 0 = the backend's default (CPU 1 GiB; CUDA a
                              * share of the free device memory) */
    const kv_format *kv_format; /* keys; NULL = the backend's default (CPU f32, CUDA f16) */
    const kv_format *kv_format_v; /* values; NULL = as the keys */
} kvs_backend_opts;

typedef struct kvs_backend_i {
    int version;             /* KVS_BACKEND_VERSION */
    const char *name;        /* "cpu", "cuda" */
    void (*destroy)(kvs_backend *b);
    /* Run one step: the plan's new K/V rows are written into their slots, attention reads
     * each stream through the plan's page tables, policies' scores and attention statistics
     * reach the host pool (directly or through kvs_plan_finish) before it returns. The plan
     * may be amended (device filter sets). logits as forward.h describes, valid until the
     * next call. */
    int (*run)(kvs_backend *b, const model *m, mem_pool *pool, kvs_plan *plan,
               const fwd_seq *seqs, float **logits, int *n_rows);
    /* Copy the K/V of global slots src[i] -> dst[i] (sources kept; pos and score are the
     * pool's, already moved by the caller). */
    int (*copy_slots)(kvs_backend *b, mem_pool *pool, const int32_t *src, const int32_t *dst,
                      int n);
    /* Read keys and/or values (either may be NULL) of n global slots as fp32, [n][head_dim]. */
    int (*read_kv)(kvs_backend *b, const int32_t *gslots, int n, float *k, float *v);
    /* The pool's scores of n global slots changed on the host (rescoring): mirror them where
     * the backend keeps a copy (CPU: nothing to do). */
    int (*scores_changed)(kvs_backend *b, mem_pool *pool, const int32_t *gslots, int n);
    /* Compact n streams (mem_stream_compact's bookkeeping and the K/V copies, batched where
     * the backend can). Returns the moves (>= 0) or a negative status. */
    int64_t (*compact)(kvs_backend *b, mem_pool *pool, mem_stream *const *streams, int n);
    /* Seconds of the last run by phase. */
    const fwd_timing *(*last_timing)(const kvs_backend *b);
} kvs_backend_i;

struct kvs_backend {
    const kvs_backend_i *i;
    void *state;
    /* memory figures, fixed at create */
    int page_slots;
    int32_t n_pages;           /* pages of K/V the backend holds: the pool must have these */
    const kv_format *kv_format;  /* format of the keys (CUDA: its 16-bit type) */
    const kv_format *kv_format_v;/* format of the values */
    size_t kv_slot_bytes;      /* K + V bytes of one slot (one token of one KV head) */
    size_t kv_bytes;           /* bytes of K/V storage */
    /* How the engine's step plan grows its block (kvs_plan.grow; NULL = malloc): the CUDA
     * backend gives pinned host memory so that the upload is asynchronous. */
    void *(*plan_grow)(void *ctx, void *old, size_t bytes);
    void *plan_grow_ctx;
};

/* Create the backend of this kind (CPU or CUDA; resolve AUTO first) for the model. */
int kvs_backend_create(kvs_device_kind kind, const model *m, const kvs_backend_opts *o,
                       kvs_backend **out);
void kvs_backend_destroy(kvs_backend *b);

int kvs_backend_cpu_create(const model *m, const kvs_backend_opts *o, kvs_backend **out);
/* KVS_EUNSUPPORTED with a message in a build without CUDA or without a GPU. */
int kvs_backend_cuda_create(const model *m, const kvs_backend_opts *o, kvs_backend **out);

#endif
