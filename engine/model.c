/* model.c — read the llama config from GGUF metadata and dequantise the weights to fp32. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

static int meta_u32(gguf_ctx *g, const char *key, int required, uint32_t dflt, int *out)
{
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    if (rc == KVS_ENOTFOUND && !required) v = dflt;
    else if (rc) return kvs_error(KVS_EFORMAT, "GGUF key '%s': %s", key,
                                  rc == KVS_ENOTFOUND ? "missing" : "not an unsigned integer");
    if (v == 0 || v > (1u << 24))
        return kvs_error(KVS_EFORMAT, "GGUF key '%s' = %u is out of range", key, v);
    *out = (int)v;
    return 0;
}

/* Find a tensor, check its shape is [ne0, ne1] (ne1 = 1 for vectors) and type is supported. */
static int find_tensor(gguf_ctx *g, const char *name, uint64_t ne0, uint64_t ne1,
                       const gguf_tensor **out)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) return kvs_error(KVS_EFORMAT, "tensor '%s' is missing from the model", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return kvs_error(KVS_EFORMAT,
                         "tensor '%s' has shape [%llu, %llu, %llu, %llu]; the config implies "
                         "[%llu, %llu]", name, (unsigned long long)t->ne[0],
                         (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
                         (unsigned long long)t->ne[3], (unsigned long long)ne0,
                         (unsigned long long)ne1);
    *out = t;
    return 0;
}

/* One dequantisation job: tensor -> dst (rows are copied whole, so fused matrices are just
 * offsets into one buffer). */
typedef struct load_job { const gguf_tensor *t; float *dst; } load_job;

static int read_config(gguf_ctx *g, model_config *c)
{
    int rc;
    memset(c, 0, sizeof *c);
    if ((rc = meta_u32(g, "llama.block_count", 1, 0, &c->n_layers))) return rc;
    if ((rc = meta_u32(g, "llama.embedding_length", 1, 0, &c->d_model))) return rc;
    if ((rc = meta_u32(g, "llama.attention.head_count", 1, 0, &c->n_heads))) return rc;
    if ((rc = meta_u32(g, "llama.attention.head_count_kv", 0, (uint32_t)c->n_heads,
                       &c->n_kv_heads))) return rc;
    if ((rc = meta_u32(g, "llama.feed_forward_length", 1, 0, &c->d_ff))) return rc;
    if ((rc = meta_u32(g, "llama.context_length", 0, 2048, &c->n_ctx))) return rc;
    if (c->d_model % c->n_heads)
        return kvs_error(KVS_EFORMAT, "embedding_length %d is not a multiple of head_count %d",
                         c->d_model, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return kvs_error(KVS_EFORMAT, "head_count %d is not a multiple of head_count_kv %d",
                         c->n_heads, c->n_kv_heads);
    c->head_dim = c->d_model / c->n_heads;
    int rope_dim = c->head_dim;
    if ((rc = meta_u32(g, "llama.rope.dimension_count", 0, (uint32_t)c->head_dim, &rope_dim)))
        return rc;
    if (rope_dim != c->head_dim)
        return kvs_error(KVS_EUNSUPPORTED, "partial RoPE (rope.dimension_count %d, head dim %d) "
                         "is not supported", rope_dim, c->head_dim);
    if (c->head_dim % 2)
        return kvs_error(KVS_EFORMAT, "head dim %d is odd; RoPE needs pairs", c->head_dim);
    c->rope_base = 10000.0f;
    rc = gguf_get_f32(g, "llama.rope.freq_base", &c->rope_base);
    if (rc && rc != KVS_ENOTFOUND)
        return kvs_error(KVS_EFORMAT, "GGUF key 'llama.rope.freq_base' is not a number");
    c->rms_eps = 1e-5f;
    rc = gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &c->rms_eps);
    if (rc && rc != KVS_ENOTFOUND)
        return kvs_error(KVS_EFORMAT, "GGUF key 'llama.attention.layer_norm_rms_epsilon' is not "
                         "a number");
    if (!(c->rope_base > 1.0f) || !(c->rms_eps > 0.0f) || c->rms_eps > 1.0f)
        return kvs_error(KVS_EFORMAT, "rope base %g / rms eps %g out of range", c->rope_base,
                         c->rms_eps);
    const char *s; size_t len;
    if (gguf_get_str(g, "general.name", &s, &len) == 0) {
        if (len >= sizeof c->name) len = sizeof c->name - 1;
        memcpy(c->name, s, len);
        c->name[len] = 0;
    } else {
        snprintf(c->name, sizeof c->name, "unnamed llama model");
    }
    return 0;
}

int model_load(const char *path, model **out)
{
    *out = NULL;
    gguf_ctx *g = NULL;
    int rc = gguf_open(path, "llama", &g);
    if (rc) return rc;
    model *m = calloc(1, sizeof *m);
    if (!m) { gguf_close(g); return kvs_error(KVS_ENOMEM, "out of memory"); }
    m->gguf = g;
    snprintf(m->path, sizeof m->path, "%s", path);
    model_config *c = &m->cfg;
    if ((rc = read_config(g, c))) goto fail;

    const gguf_tensor *embd = gguf_find_tensor(g, "token_embd.weight");
    if (!embd) { rc = kvs_error(KVS_EFORMAT, "tensor 'token_embd.weight' is missing"); goto fail; }
    if (embd->ne[0] != (uint64_t)c->d_model || embd->ne[1] < 1 || embd->ne[1] > (1u << 24)) {
        rc = kvs_error(KVS_EFORMAT, "token_embd.weight has row length %llu; expected %d",
                       (unsigned long long)embd->ne[0], c->d_model);
        goto fail;
    }
    c->n_vocab = (int)embd->ne[1];
    const gguf_tensor *outw = gguf_find_tensor(g, "output.weight");
    c->tied_embeddings = outw == NULL;

    const int D = c->d_model, hd = c->head_dim, F = c->d_ff;
    const int q_rows = c->n_heads * hd, kv_rows = c->n_kv_heads * hd;
    const int L = c->n_layers;
    /* Jobs: embd, output norm, output (if untied), 9 per layer. */
    int max_jobs = 3 + 9 * L, n_jobs = 0;
    load_job *jobs = calloc((size_t)max_jobs, sizeof *jobs);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    if (!jobs || !m->layers) { free(jobs); rc = kvs_error(KVS_ENOMEM, "out of memory"); goto fail; }

    /* Sizes in floats; one allocation per matrix keeps freeing simple. */
    const gguf_tensor *t;
    m->tok_embd = kvs_alloc((size_t)c->n_vocab * D * sizeof(float));
    m->output_norm = kvs_alloc((size_t)D * sizeof(float));
    if (!m->tok_embd || !m->output_norm) { free(jobs); rc = KVS_ENOMEM; goto fail; }
    jobs[n_jobs++] = (load_job){embd, m->tok_embd};
    if ((rc = find_tensor(g, "output_norm.weight", (uint64_t)D, 1, &t))) { free(jobs); goto fail; }
    jobs[n_jobs++] = (load_job){t, m->output_norm};
    if (outw) {
        if ((rc = find_tensor(g, "output.weight", (uint64_t)D, (uint64_t)c->n_vocab, &t))) {
            free(jobs); goto fail;
        }
        m->output = kvs_alloc((size_t)c->n_vocab * D * sizeof(float));
        if (!m->output) { free(jobs); rc = KVS_ENOMEM; goto fail; }
        jobs[n_jobs++] = (load_job){t, m->output};
    } else {
        m->output = m->tok_embd;
    }
    for (int l = 0; l < L; l++) {
        model_layer *ly = &m->layers[l];
        char name[96];
        ly->attn_norm = kvs_alloc((size_t)D * sizeof(float));
        ly->ffn_norm = kvs_alloc((size_t)D * sizeof(float));
        ly->wqkv = kvs_alloc((size_t)(q_rows + 2 * kv_rows) * D * sizeof(float));
        ly->wo = kvs_alloc((size_t)D * q_rows * sizeof(float));
        ly->w_gate_up = kvs_alloc((size_t)2 * F * D * sizeof(float));
        ly->w_down = kvs_alloc((size_t)D * F * sizeof(float));
        if (!ly->attn_norm || !ly->ffn_norm || !ly->wqkv || !ly->wo || !ly->w_gate_up ||
            !ly->w_down) { free(jobs); rc = KVS_ENOMEM; goto fail; }
        struct { const char *suffix; uint64_t ne0, ne1; float *dst; } spec[9] = {
            {"attn_norm", (uint64_t)D, 1, ly->attn_norm},
            {"attn_q", (uint64_t)D, (uint64_t)q_rows, ly->wqkv},
            {"attn_k", (uint64_t)D, (uint64_t)kv_rows, ly->wqkv + (size_t)q_rows * D},
            {"attn_v", (uint64_t)D, (uint64_t)kv_rows, ly->wqkv + (size_t)(q_rows + kv_rows) * D},
            {"attn_output", (uint64_t)q_rows, (uint64_t)D, ly->wo},
            {"ffn_norm", (uint64_t)D, 1, ly->ffn_norm},
            {"ffn_gate", (uint64_t)D, (uint64_t)F, ly->w_gate_up},
            {"ffn_up", (uint64_t)D, (uint64_t)F, ly->w_gate_up + (size_t)F * D},
            {"ffn_down", (uint64_t)F, (uint64_t)D, ly->w_down},
        };
        for (int i = 0; i < 9; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, spec[i].suffix);
            if ((rc = find_tensor(g, name, spec[i].ne0, spec[i].ne1, &t))) { free(jobs); goto fail; }
            jobs[n_jobs++] = (load_job){t, spec[i].dst};
        }
    }
    /* Dequantise in parallel; the first error wins. */
    int first_err = 0;
    char err_msg[1024] = "";
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n_jobs; i++) {
        int r = gguf_tensor_to_f32(jobs[i].t, jobs[i].dst);
        if (r) {
#pragma omp critical
            if (!first_err) {
                first_err = r;
                snprintf(err_msg, sizeof err_msg, "tensor '%s': %s", jobs[i].t->name,
                         kvs_last_error());
            }
        }
    }
    free(jobs);
    if (first_err) { rc = kvs_error(first_err, "%s", err_msg); goto fail; }
    *out = m;
    return 0;
fail:
    model_free(m);
    return rc;
}

void model_free(model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            model_layer *ly = &m->layers[l];
            kvs_free(ly->attn_norm); kvs_free(ly->ffn_norm); kvs_free(ly->wqkv);
            kvs_free(ly->wo); kvs_free(ly->w_gate_up); kvs_free(ly->w_down);
        }
        free(m->layers);
    }
    if (m->output != m->tok_embd) kvs_free(m->output);
    kvs_free(m->tok_embd);
    kvs_free(m->output_norm);
    gguf_close(m->gguf);
    free(m);
}

int64_t model_kv_bytes_per_token(const model_config *c)
{
    return (int64_t)c->n_layers * c->n_kv_heads * c->head_dim * 2 * (int64_t)sizeof(float);
}

int64_t model_n_params(const model *m)
{
    const model_config *c = &m->cfg;
    int64_t D = c->d_model, hd = c->head_dim;
    int64_t per_layer = 2 * D + (c->n_heads + 2 * c->n_kv_heads) * hd * D +
                        D * c->n_heads * hd + 3 * D * (int64_t)c->d_ff;
    int64_t p = c->n_layers * per_layer + D + (int64_t)c->n_vocab * D;
    if (!c->tied_embeddings) p += (int64_t)c->n_vocab * D;
    return p;
}
