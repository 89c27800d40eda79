/* arch.h — model families as data: what each GGUF `general.architecture` means to kvsieve.
 *
 * One arch_desc per supported architecture: the metadata key prefix, which tensors a layer
 * has (biases included), the norm, RoPE pairing, activation, whether output.weight may be
 * absent (tied to token_embd) and whether rope_freqs.weight (llama3 RoPE scaling) is
 * allowed. The loader (model.c) reads these descriptions instead of branching on names; the
 * forward passes read the result from model_config (rope_type, qkv bias pointers, rope
 * freqs), never the architecture name. Adding a family = adding a row, when its
 * computation is one the forward passes already know. */
#ifndef KVS_ARCH_H
#define KVS_ARCH_H

#include <stddef.h>

/* How RoPE pairs the dimensions of a head (d = head dim, i = 0..d/2-1, angle pos*theta_i):
 *   NORM: (x[2i], x[2i+1])   -- GGML's default; llama GGUFs (Q/K rows permuted by the converter)
 *   NEOX: (x[i], x[i + d/2]) -- GPT-NeoX / Hugging Face form; qwen2 GGUFs (rows not permuted) */
typedef enum arch_rope { ARCH_ROPE_NORM = 0, ARCH_ROPE_NEOX = 2 } arch_rope; /* ggml's numbers */

typedef enum arch_norm { ARCH_NORM_RMS = 0 } arch_norm;         /* x / rms(x) * w */
typedef enum arch_act { ARCH_ACT_SWIGLU = 0 } arch_act;         /* silu(gate) * up */

/* Whether a tensor must be there, may be there, or must not be. */
typedef enum arch_need { ARCH_ABSENT = 0, ARCH_OPTIONAL = 1, ARCH_REQUIRED = 2 } arch_need;

typedef struct arch_desc {
    const char *name;       /* general.architecture, also the prefix of its keys ("qwen2.") */
    arch_norm norm;
    arch_rope rope;
    arch_act act;
    arch_need qkv_bias;     /* blk.N.attn_{q,k,v}.bias */
    arch_need output;       /* output.weight; absent = tied to token_embd.weight */
    arch_need rope_freqs;   /* rope_freqs.weight: per-pair frequency divisors (llama3) */
} arch_desc;

/* The description of architecture `name` (len bytes, not NUL-terminated), or NULL. */
const arch_desc *arch_find(const char *name, size_t len);
/* "llama, qwen2": the supported names, for error messages and --help. */
const char *arch_supported(void);
const char *arch_rope_name(arch_rope r);

#endif
