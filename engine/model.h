/* model.h — model config and weights read from a GGUF file, for the families of arch.h
 * (llama: SmolLM2, Llama-3.x, ...; qwen2: Qwen2/2.5).
 *
 * Every number comes from the GGUF metadata (ARCH.* keys, ARCH = general.architecture);
 * nothing is hard-coded for the default model. What differs between families reaches the
 * forward passes as data here (rope_type, QKV biases, rope_freqs), not as the name.
 *
 * Weights come in one of two modes (model_weights):
 *   - MODEL_WEIGHTS_NATIVE: matrices stay in their GGUF blocks inside the mmap'd file (no
 *     copy; the CPU forward computes on them through wmat.h). The float pointers below are
 *     NULL, only the wmat views are set. Norm weights, biases and rope_freqs are fp32 copies.
 *   - MODEL_WEIGHTS_F32: every weight dequantised once to fp32 (the CUDA uploader, the exact
 *     fp32 reference path, tests); the float pointers are set and the wmat views point at them.
 * Q/K/V are fused into one matrix and gate/up into another so that each layer runs 4 products
 * instead of 7 (in NATIVE mode as parts of one wmat: nothing is copied). */
#ifndef KVS_MODEL_H
#define KVS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "arch.h"
#include "gguf.h"
#include "wmat.h"

typedef struct model_config {
    int n_layers;     /* ARCH.block_count */
    int d_model;      /* ARCH.embedding_length */
    int n_heads;      /* ARCH.attention.head_count (query heads) */
    int n_kv_heads;   /* ARCH.attention.head_count_kv */
    int head_dim;     /* d_model / n_heads (== ARCH.rope.dimension_count when present) */
    int d_ff;         /* ARCH.feed_forward_length */
    int n_vocab;      /* rows of token_embd.weight */
    int n_ctx;        /* ARCH.context_length */
    float rope_base;  /* ARCH.rope.freq_base (default 10000) */
    float rms_eps;    /* ARCH.attention.layer_norm_rms_epsilon */
    int tied_embeddings; /* no output.weight: logits use token_embd */
    /* Family differences (arch.h), as data for the forward passes: */
    arch_rope rope_type; /* ARCH_ROPE_NORM: pairs (2i, 2i+1); ARCH_ROPE_NEOX: (i, i + hd/2) */
    int qkv_bias;        /* layers carry bqkv (added after the QKV GEMM) */
    int rope_freqs;      /* model.rope_freqs is set (llama3 RoPE scaling) */
    const arch_desc *arch; /* the family's description; arch->name is general.architecture */
    char name[128];   /* general.name */
} model_config;

typedef struct model_layer {
    float *attn_norm; /* [d_model] */
    float *wqkv;      /* [(n_heads + 2 n_kv_heads) * head_dim][d_model]: q rows, k rows, v rows */
    float *bqkv;      /* [(n_heads + 2 n_kv_heads) * head_dim]: q, k, v biases; NULL if none */
    float *wo;        /* [d_model][n_heads * head_dim] */
    float *ffn_norm;  /* [d_model] */
    float *w_gate_up; /* [2 d_ff][d_model]: gate rows then up rows */
    float *w_down;    /* [d_model][d_ff] */
    /* The same matrices as the CPU forward reads them (either mode): */
    wmat qkv, o, gate_up, down;
} model_layer;

typedef enum model_weights {
    MODEL_WEIGHTS_F32 = 0,    /* dequantise everything to fp32 at load */
    MODEL_WEIGHTS_NATIVE = 1  /* keep the GGUF blocks (mmap'd) */
} model_weights;

typedef struct model {
    model_config cfg;
    float *tok_embd;    /* [n_vocab][d_model] */
    float *output_norm; /* [d_model] */
    float *output;      /* [n_vocab][d_model]; == tok_embd when tied */
    float *rope_freqs;  /* [head_dim / 2] or NULL: pair i turns by pos * theta_i / rope_freqs[i]
                         * (rope_freqs.weight, llama3-style RoPE scaling) */
    model_layer *layers;
    wmat embd, out;     /* token_embd and the logits matrix (== embd when tied), either mode */
    model_weights weights;
    gguf_ctx *gguf;     /* kept open: tokenizer metadata lives in it */
    char path[1024];
} model;

/* Load a GGUF of a supported architecture (arch.h). Errors (missing file, unknown
 * architecture, missing tensor, a tensor the engine would not use, shape mismatch,
 * unsupported tensor type or RoPE scaling) return a negative status with a message naming
 * what is wrong. */
int model_load(const char *path, model **out); /* MODEL_WEIGHTS_F32 */
int model_load_ex(const char *path, model_weights weights, model **out);
/* Set the wmat views of a model whose fp32 float pointers are filled (model_load does it;
 * for models built in memory by tests). */
int model_wrap_f32(model *m);
/* "native" / "f32" -> mode (KVS_EINVAL otherwise); and its name. */
int model_weights_parse(const char *s, model_weights *out);
const char *model_weights_name(model_weights w);
/* Bytes of weight matrices as held for the forward (blocks in NATIVE mode, fp32 in F32). */
int64_t model_weight_bytes(const model *m);

/* 0 if the model computes exactly like the original llama forward (no QKV biases, adjacent-
 * pair RoPE, no rope_freqs); else 1, with the features it needs beyond that written to why
 * ("QKV biases, NEOX RoPE"). For backends that implement only that forward (CUDA for now). */
int model_needs_extensions(const model *m, char *why, size_t why_size);
void model_free(model *m);

/* Bytes of KV (K and V, fp32) one token occupies across all layers and KV heads. */
int64_t model_kv_bytes_per_token(const model_config *c);
/* Parameters (weights) in the model, for FLOP accounting. */
int64_t model_n_params(const model *m);

#endif
