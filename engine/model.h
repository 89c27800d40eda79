/* model.h — llama-family config and weights (SmolLM2, Llama-3.x, ...) read from a GGUF file.
 *
 * Every number comes from the GGUF metadata (llama.* keys); nothing is hard-coded for the
 * default model. Weights are dequantised once to fp32 at load (the CPU backend computes in
 * fp32 with BLAS). Q/K/V are fused into one matrix and gate/up into another so that each
 * layer runs 4 GEMMs instead of 7. */
#ifndef KVS_MODEL_H
#define KVS_MODEL_H

#include <stdint.h>

#include "gguf.h"

typedef struct model_config {
    int n_layers;     /* llama.block_count */
    int d_model;      /* llama.embedding_length */
    int n_heads;      /* llama.attention.head_count (query heads) */
    int n_kv_heads;   /* llama.attention.head_count_kv */
    int head_dim;     /* d_model / n_heads (== llama.rope.dimension_count when present) */
    int d_ff;         /* llama.feed_forward_length */
    int n_vocab;      /* rows of token_embd.weight */
    int n_ctx;        /* llama.context_length */
    float rope_base;  /* llama.rope.freq_base (default 10000) */
    float rms_eps;    /* llama.attention.layer_norm_rms_epsilon */
    int tied_embeddings; /* no output.weight: logits use token_embd */
    char name[128];   /* general.name */
} model_config;

typedef struct model_layer {
    float *attn_norm; /* [d_model] */
    float *wqkv;      /* [(n_heads + 2 n_kv_heads) * head_dim][d_model]: q rows, k rows, v rows */
    float *wo;        /* [d_model][n_heads * head_dim] */
    float *ffn_norm;  /* [d_model] */
    float *w_gate_up; /* [2 d_ff][d_model]: gate rows then up rows */
    float *w_down;    /* [d_model][d_ff] */
} model_layer;

typedef struct model {
    model_config cfg;
    float *tok_embd;    /* [n_vocab][d_model] */
    float *output_norm; /* [d_model] */
    float *output;      /* [n_vocab][d_model]; == tok_embd when tied */
    model_layer *layers;
    gguf_ctx *gguf;     /* kept open: tokenizer metadata lives in it */
    char path[1024];
} model;

/* Load a llama-architecture GGUF. Errors (missing file, wrong architecture, missing tensor,
 * shape mismatch, unsupported tensor type) return a negative status with a message. */
int model_load(const char *path, model **out);
void model_free(model *m);

/* Bytes of KV (K and V, fp32) one token occupies across all layers and KV heads. */
int64_t model_kv_bytes_per_token(const model_config *c);
/* Parameters (weights) in the model, for FLOP accounting. */
int64_t model_n_params(const model *m);

#endif
