/* kernels_ref.h — CPU twins of the CUDA kernels (engine/cuda, memory/cuda; docs/CUDA.md).
 *
 * Every CUDA kernel has a twin here: plain C11, fp32, the same data layout as the device
 * (K/V rows of global slot g = page * P + offset in an fp32 kv_store, pos and score in the
 * pool) and the same
 * definition of the result, written for clarity rather than speed. The equivalence tests
 * (tests/cuda/test_cuda_*.c) check each twin against the existing CPU code (forward_cpu.c,
 * memory/, policies/, sampler.c) everywhere, and each kernel against its twin where a GPU
 * exists. Where the device stores 16-bit values (K/V pages, GEMM inputs) the twin keeps fp32;
 * tests feed both sides values already representable in the device type (kref_round_half)
 * so the only differences left are accumulation order and the final rounding.
 * Only tests call the twins; the engine's CPU backend has its own (fast) forward, which
 * executes the same step plan (plan.h) as the CUDA forward. */
#ifndef KVS_KERNELS_REF_H
#define KVS_KERNELS_REF_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "memory/kv_store.h"
#include "memory/pool.h"
#include "model.h"
#include "plan.h" /* KVS_SCORE_* */

/* x rounded to the device's 16-bit storage type `fmt`: &kv_fmt_bf16 for bf16, otherwise
 * (&kv_fmt_f16, NULL) fp16 (IEEE binary16). Round to nearest even, like __float2half_rn /
 * __float2bfloat16_rn. */
float kref_round_half(float x, const kv_format *fmt);
void kref_round_half_array(float *x, size_t n, const kv_format *fmt);

/* ---- forward kernels (engine/cuda/kernels.cu) -------------------------------------------- */

/* k_embed: x[t][D] = table[tok[t]][D]. */
void kref_embed(const float *table, int D, const int32_t *tok, int T, float *x);

/* k_rmsnorm: out[r] = x[row_r] / rms(x[row_r]) * w, row_r = rows ? rows[r] : r, R rows of D. */
void kref_rmsnorm(const float *x, const int32_t *rows, int R, int D, const float *w, float eps,
                  float *out);

/* k_rope_kv_write (one layer): rotate the q and k heads of qkv[T][(Hq + 2 Hkv) hd] in place;
 * write k and v of token t, KV head h into global slot slot_map[t * Hkv + h] of the pool with
 * pos[t]; score it by the kind of its sequence (tok_seq[t] -> seq_kind[], seq_u[] = that
 * sequence's filters of this layer, [Hkv][hd], for KVS_SCORE_DOT) into the slot and into
 * scores[t * Hkv + h] (0 for ZERO and HOST). */
void kref_rope_kv_write(float *qkv, int T, int Hq, int Hkv, int hd, const int32_t *pos,
                        const float *cos_t, const float *sin_t, mem_pool *pool, kv_store *kv,
                        const int32_t *slot_map, const int32_t *tok_seq, const int32_t *seq_kind,
                        const float *const *seq_u, float *scores);

/* One key's score by kind (what the kernel computes; u: [hd] of its KV head). */
float kref_score_key(int kind, const float *k, int hd, const float *u, int32_t pos);

/* k_swiglu: act[t][i] = silu(gu[t][i]) * gu[t][F + i]. */
void kref_swiglu(const float *gu, int T, int F, float *act);

/* Paged attention of n_q query tokens x G heads over one stream (pages, n_slots): softmax over
 * the slots with 0 <= pos <= qpos[t]; q row (t, g) at q + t * q_stride + g * hd, output row
 * likewise at out. Rows with no visible slot get 0. Twin of k_attn_decode (with any number
 * of splits) and k_attn_prefill. */
void kref_attention(const mem_pool *pool, const kv_store *kv, const int32_t *pages, int32_t n_slots, const float *q,
                    size_t q_stride, const int32_t *qpos, int n_q, int G, int hd, float scale,
                    float *out, size_t out_stride);

/* Split attention (flash-decoding), in the log2 domain the kernels use: for ONE query token
 * (G heads, rows q + g * hd) over slots [s0, s1) of the stream: m[g] = max of
 * dot(q, k) * scale * log2(e) over visible slots (-INFINITY if none), l[g] = sum 2^(s - m),
 * acc[g][hd] = sum 2^(s - m) v (unnormalised). */
void kref_attention_partial(const mem_pool *pool, const kv_store *kv, const int32_t *pages, int32_t s0, int32_t s1,
                            const float *q, int32_t qpos, int G, int hd, float scale, float *m,
                            float *l, float *acc);
/* k_attn_combine: merge n_split partials of one row (m[n], l[n], acc[n][hd]) into out[hd]. */
void kref_attention_combine(int n_split, const float *m, const float *l, const float *acc,
                            int hd, float *out);

/* k_attn_probs: attention probabilities of n_q query tokens over the stream's slots, averaged
 * over the G heads of the group: probs[n_q][n_slots], 0 for holes and masked slots (what
 * forward.h's fwd_observe_fn receives). */
void kref_attn_probs(const mem_pool *pool, const kv_store *kv, const int32_t *pages, int32_t n_slots, const float *q,
                     size_t q_stride, const int32_t *qpos, int n_q, int G, int hd, float scale,
                     float *probs);

/* k_sample: the token smp_sample picks from logits[V] with the same parameters when its
 * uniform draw is r in [0, 1): greedy (temperature 0 or top_k 1: argmax, lowest index on
 * ties); else p_i = expf((l_i - max) / T), drop p < 1e-10, order by (p desc, id asc), keep
 * the top_k first (0 = all), keep the shortest prefix with mass >= top_p * mass, pick the
 * first token whose cumulative mass exceeds r * mass (sums in double). */
int32_t kref_sample(const float *logits, int V, float temperature, int top_k, float top_p,
                    double r);

/* ---- memory kernels (memory/cuda/mem_kernels.cu) ------------------------------------------ */

/* k_select_topk: the victims pol_enforce_stream's default selection picks in one stream
 * (pages, n_slots) down to n_keep live slots: among the live slots that are neither among the
 * `sink` lowest positions nor at positions > cur_pos - window (window > 0), the
 * min(n_live - n_keep, candidates) lowest by (score, pos) with NaN as -inf. Writes the victims'
 * stream-relative slots in ascending order; returns their count (0 if sink >= live). */
int32_t kref_select(const mem_pool *pool, const int32_t *pages, int32_t n_slots, int32_t n_keep,
                    int32_t sink, int32_t window, int32_t cur_pos, int32_t *victims);
/* k_select_threshold: every candidate (same protection rules) whose score is < tau (NaN
 * counts as -inf). Ascending slots; returns the count. */
int32_t kref_select_threshold(const mem_pool *pool, const int32_t *pages, int32_t n_slots,
                              int32_t sink, int32_t window, int32_t cur_pos, float tau,
                              int32_t *victims);

/* k_mark_slots: pos = -1 at the given global slots (eviction marking, hole sync). */
void kref_mark(mem_pool *pool, const int32_t *gslots, int n);
/* k_clear_pages: pos = -1 in every slot of the given pages. */
void kref_clear_pages(mem_pool *pool, const int32_t *pages, int n);

/* k_compact_plan: the tail-to-hole moves of mem_stream_compact for one stream: the i-th hole
 * below n_live (ascending) receives the i-th live slot at or above n_live counted down from
 * n_slots - 1. Writes stream-relative src[i], dst[i]; returns the number of moves. */
int32_t kref_compact_plan(const mem_pool *pool, const int32_t *pages, int32_t n_slots,
                          int32_t n_live, int32_t *src, int32_t *dst);

/* k_slot_copy: for each i, copy global slot src[i] to dst[i] (sources and destinations
 * disjoint): K and V rows with KREF_COPY_KV, pos and score with KREF_COPY_META; then, with
 * KREF_CLEAR_SRC, pos of the source = -1. */
enum { KREF_COPY_KV = 1, KREF_COPY_META = 2, KREF_CLEAR_SRC = 4 };
void kref_slot_copy(mem_pool *pool, kv_store *kv, const int32_t *src, const int32_t *dst, int n,
                    int flags);

/* k_attn_reduce: per-slot statistics of probs[n_q][n_slots] for attention policies, over the
 * stream's live slots (holes untouched / 0):
 *   KREF_STATS_SUM:  score[slot] += sum_q probs[q][slot]   (into the pool's score; h2o's)
 *   KREF_STATS_LAST: score[slot]  = probs[n_q - 1][slot]   (into the pool's score; tova's)
 *   KREF_STATS_MEAN: out[slot]    = sum_q probs[q][slot] / n_q (out[n_slots], 0 for holes;
 *                                   snapkv's, before its pooling) */
enum { KREF_STATS_SUM = 0, KREF_STATS_LAST = 1, KREF_STATS_MEAN = 2 };
void kref_attn_reduce(mem_pool *pool, const int32_t *pages, int32_t n_slots, const float *probs,
                      int n_q, int mode, float *out);

#endif
