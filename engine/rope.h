/* rope.h — rotary position tables shared by the backends that precompute them. */
#ifndef KVS_ROPE_H
#define KVS_ROPE_H

/* cos_t/sin_t[pos][hd/2] for positions [0, n_pos): angle pos * base^(-2i/hd) in double (GGML
 * "normal" RoPE, as the CPU forward computes it per token). */
void kvs_rope_table(int n_pos, int hd, float base, float *cos_t, float *sin_t);

#endif
