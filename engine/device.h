/* device.h — the CUDA forward's C entry points (engine/cuda/fwd.cu; docs/CUDA.md), which the
 * CUDA backend (backend_cuda.c) wraps. Compiles and links without CUDA: device.c then gives
 * stubs that return KVS_EUNSUPPORTED.
 *
 * With the CUDA backend the K/V rows (and a mirror of each slot's pos and score) live only on
 * the device. The host keeps the block manager's bookkeeping in the ordinary page pool
 * (memory/pool.h): policies, the eviction driver, the scheduler and the invariant checker work
 * on it unchanged. What moves K/V goes through the backend: the plan assigns slots on the host
 * and the device writes K/V/pos/score; compaction plans on the host (mem_stream_compact) and
 * copies on the device; evictions only set host pos = -1, and the next step marks every host
 * hole of the streams it touches empty on the device before anything reads them. */
#ifndef KVS_DEVICE_H
#define KVS_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "memory/kv_format.h"
#include "memory/pool.h"
#include "model.h"
#include "plan.h"

/* ---- the CUDA backend as the engine sees it (stubs without CUDA) --------------------------- */

typedef struct fwd_cuda_state fwd_cuda_state;

/* Upload the weights (16-bit) and allocate the device KV pool in one cudaMalloc: kv_bytes of
 * it, or when 0 kv_fraction (0 = 0.85) of the free device memory left after weights and a
 * reserve for activations. The host pool must have fwd_cuda_n_pages pages. kv_fmt is the
 * 16-bit type of the K/V pages, &kv_fmt_f16 or &kv_fmt_bf16 (NULL = f16); the weights and
 * GEMM inputs use the same type. Other formats: KVS_EUNSUPPORTED. */
int fwd_cuda_create(const model *m, int page_slots, size_t kv_bytes, double kv_fraction,
                    const kv_format *kv_fmt, fwd_cuda_state **out);
void fwd_cuda_destroy(fwd_cuda_state *st);
int32_t fwd_cuda_n_pages(const fwd_cuda_state *st);
/* Run a planned step on the device (the CUDA backend's run); pool is the host bookkeeping. */
int fwd_cuda(fwd_cuda_state *st, const model *m, mem_pool *pool, kvs_plan *plan,
             const fwd_seq *seqs, float **logits, int *n_rows);
/* Bytes of device K/V per slot (K + V rows of the state's 16-bit type). */
size_t fwd_cuda_slot_bytes(const fwd_cuda_state *st);
/* The state's K/V format: &kv_fmt_f16 or &kv_fmt_bf16 (NULL without CUDA). */
const kv_format *fwd_cuda_kv_format(const fwd_cuda_state *st);
/* The step plan's block allocator (pinned host memory, so its upload is asynchronous). */
void *fwd_cuda_plan_grow(void *ctx, void *old, size_t bytes);
const fwd_timing *fwd_cuda_last_timing(const fwd_cuda_state *st);

/* Compact streams (mem_stream_compact each, then one batched device copy of K, V, pos and
 * score). Returns the moves (>= 0) or a negative status. */
int64_t kvs_cuda_compact_streams(fwd_cuda_state *st, mem_pool *pool, mem_stream *const *streams,
                                 int n);
int32_t kvs_cuda_compact_stream(fwd_cuda_state *st, mem_pool *pool, mem_stream *s);
/* Copy global slots src[i] -> dst[i] on the device (K, V, pos, score; sources kept). */
int kvs_cuda_copy_slots(fwd_cuda_state *st, const int32_t *src, const int32_t *dst, int n);
/* Read the keys of n global slots into out[n][hd] (fp32). */
int kvs_cuda_read_keys(fwd_cuda_state *st, const int32_t *gslots, int n, float *out);
/* Read the values likewise. */
int kvs_cuda_read_values(fwd_cuda_state *st, const int32_t *gslots, int n, float *out);
/* Write n scores into the device's score mirror. */
int kvs_cuda_write_scores(fwd_cuda_state *st, const int32_t *gslots, const float *scores, int n);

#endif
