/* model.c — read a model's config from GGUF metadata (per its arch.h description), check
 * that every tensor in the file is one the engine uses, and dequantise the weights to fp32. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

/* ARCH.suffix, e.g. "qwen2.block_count". */
static const char *arch_key(const model_config *c, const char *suffix, char *buf, size_t n)
{
    snprintf(buf, n, "%s.%s", c->arch->name, suffix);
    return buf;
}

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

/* An optional float key: *out keeps its default when absent. */
static int meta_f32(gguf_ctx *g, const char *key, float *out)
{
    int rc = gguf_get_f32(g, key, out);
    if (rc && rc != KVS_ENOTFOUND)
        return kvs_error(KVS_EFORMAT, "GGUF key '%s' is not a number", key);
    return 0;
}

/* The tensors the loader has taken; any other tensor in the file is refused (a tensor the
 * engine does not use means a variant it does not implement). */
typedef struct claims {
    const gguf_tensor **t;
    int n, cap;
} claims;

/* Find a tensor, check its shape is [ne0, ne1] (ne1 = 1 for vectors), and claim it. */
static int find_tensor(gguf_ctx *g, claims *cl, const char *name, uint64_t ne0, uint64_t ne1,
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
    if (cl->n == cl->cap) return kvs_error(KVS_EINVAL, "model loader: claim table full");
    cl->t[cl->n++] = t;
    *out = t;
    return 0;
}

static int check_all_claimed(gguf_ctx *g, const claims *cl, const model_config *c)
{
    int64_t n = gguf_n_tensors(g), unused = 0;
    const gguf_tensor *first = NULL;
    for (int64_t i = 0; i < n; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        int k = 0;
        while (k < cl->n && cl->t[k] != t) k++;
        if (k == cl->n && !unused++) first = t;
    }
    if (!unused) return 0;
    char more[64] = "";
    if (unused > 1) snprintf(more, sizeof more, " (and %lld more)", (long long)(unused - 1));
    return kvs_error(KVS_EUNSUPPORTED, "tensor '%s'%s is not used by kvsieve's '%s' forward "
                     "pass: the file is a variant of the architecture that kvsieve does not "
                     "implement, so it is refused rather than run without it", first->name,
                     more, c->arch->name);
}

/* One dequantisation job: tensor -> dst (rows are copied whole, so fused matrices are just
 * offsets into one buffer). */
typedef struct load_job { const gguf_tensor *t; float *dst; } load_job;

/* general.architecture -> c->arch; unknown or missing: refused, naming it. */
static int read_arch(gguf_ctx *g, const char *path, model_config *c)
{
    const char *s;
    size_t len;
    int rc = gguf_get_str(g, "general.architecture", &s, &len);
    if (rc == KVS_ENOTFOUND)
        return kvs_error(KVS_EUNSUPPORTED, "%s: no general.architecture key, so the model "
                         "family is unknown (supported: %s)", path, arch_supported());
    if (rc) return kvs_error(KVS_EFORMAT, "%s: general.architecture is not a string", path);
    c->arch = arch_find(s, len);
    if (!c->arch) {
        char shown[64];
        size_t n = len < sizeof shown - 1 ? len : sizeof shown - 1;
        for (size_t i = 0; i < n; i++)
            shown[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
        shown[n] = 0;
        return kvs_error(KVS_EUNSUPPORTED, "%s: the model's architecture is '%s%s', which "
                         "kvsieve does not support (supported: %s)", path, shown,
                         len > n ? "..." : "", arch_supported());
    }
    return 0;
}

/* RoPE scaling keys: only "none" (or linear with factor 1) is implemented; llama3-style
 * scaling comes as the rope_freqs.weight tensor instead. */
static int check_rope_scaling(gguf_ctx *g, const model_config *c)
{
    char key[96];
    const char *s;
    size_t len;
    float factor = 1.0f, lin = 1.0f;
    int rc = gguf_get_str(g, arch_key(c, "rope.scaling.type", key, sizeof key), &s, &len);
    int typed = rc == 0 && !(len == 4 && memcmp(s, "none", 4) == 0);
    if (rc && rc != KVS_ENOTFOUND) return kvs_error(KVS_EFORMAT, "GGUF key '%s' is not a "
                                                    "string", key);
    if ((rc = meta_f32(g, arch_key(c, "rope.scaling.factor", key, sizeof key), &factor)))
        return rc;
    if ((rc = meta_f32(g, arch_key(c, "rope.scale_linear", key, sizeof key), &lin))) return rc;
    int linear = typed && len == 6 && memcmp(s, "linear", 6) == 0;
    /* a no-op: no type / "none" / "linear", and factors unset (0) or 1 */
    int noop_type = !typed || linear;
    int noop_factor = (factor == 1.0f || factor == 0.0f) && (lin == 1.0f || lin == 0.0f);
    if (!noop_type || !noop_factor) {
        char what[40];
        snprintf(what, sizeof what, "%.*s", typed ? (int)(len < 32 ? len : 32) : 4,
                 typed ? s : "none");
        return kvs_error(KVS_EUNSUPPORTED, "RoPE scaling %s (factor %g) is not implemented "
                         "(%s.rope.scaling.*; supported: none, and llama3 rope_freqs.weight)",
                         what, factor != 1.0f && factor != 0.0f ? factor : lin, c->arch->name);
    }
    return 0;
}

static int read_config(gguf_ctx *g, model_config *c)
{
    int rc;
    char key[96];
#define KEY(suffix) arch_key(c, suffix, key, sizeof key)
    if ((rc = meta_u32(g, KEY("block_count"), 1, 0, &c->n_layers))) return rc;
    if ((rc = meta_u32(g, KEY("embedding_length"), 1, 0, &c->d_model))) return rc;
    if ((rc = meta_u32(g, KEY("attention.head_count"), 1, 0, &c->n_heads))) return rc;
    if ((rc = meta_u32(g, KEY("attention.head_count_kv"), 0, (uint32_t)c->n_heads,
                       &c->n_kv_heads))) return rc;
    if ((rc = meta_u32(g, KEY("feed_forward_length"), 1, 0, &c->d_ff))) return rc;
    if ((rc = meta_u32(g, KEY("context_length"), 0, 2048, &c->n_ctx))) return rc;
    if (c->d_model % c->n_heads)
        return kvs_error(KVS_EFORMAT, "embedding_length %d is not a multiple of head_count %d",
                         c->d_model, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return kvs_error(KVS_EFORMAT, "head_count %d is not a multiple of head_count_kv %d",
                         c->n_heads, c->n_kv_heads);
    c->head_dim = c->d_model / c->n_heads;
    int rope_dim = c->head_dim, kl = c->head_dim, vl = c->head_dim;
    if ((rc = meta_u32(g, KEY("rope.dimension_count"), 0, (uint32_t)c->head_dim, &rope_dim)))
        return rc;
    if (rope_dim != c->head_dim)
        return kvs_error(KVS_EUNSUPPORTED, "partial RoPE (rope.dimension_count %d, head dim %d) "
                         "is not supported", rope_dim, c->head_dim);
    if ((rc = meta_u32(g, KEY("attention.key_length"), 0, (uint32_t)c->head_dim, &kl)) ||
        (rc = meta_u32(g, KEY("attention.value_length"), 0, (uint32_t)c->head_dim, &vl)))
        return rc;
    if (kl != c->head_dim || vl != c->head_dim)
        return kvs_error(KVS_EUNSUPPORTED, "key/value length %d/%d differ from embedding_length "
                         "/ head_count = %d; not supported", kl, vl, c->head_dim);
    if (c->head_dim % 2)
        return kvs_error(KVS_EFORMAT, "head dim %d is odd; RoPE needs pairs", c->head_dim);
    c->rope_base = 10000.0f;
    if ((rc = meta_f32(g, KEY("rope.freq_base"), &c->rope_base))) return rc;
    c->rms_eps = 1e-5f;
    if ((rc = meta_f32(g, KEY("attention.layer_norm_rms_epsilon"), &c->rms_eps))) return rc;
    if (!(c->rope_base > 1.0f) || !(c->rms_eps > 0.0f) || c->rms_eps > 1.0f)
        return kvs_error(KVS_EFORMAT, "rope base %g / rms eps %g out of range", c->rope_base,
                         c->rms_eps);
#undef KEY
    if ((rc = check_rope_scaling(g, c))) return rc;
    c->rope_type = c->arch->rope;
    const char *s; size_t len;
    if (gguf_get_str(g, "general.name", &s, &len) == 0) {
        if (len >= sizeof c->name) len = sizeof c->name - 1;
        memcpy(c->name, s, len);
        c->name[len] = 0;
    } else {
        snprintf(c->name, sizeof c->name, "unnamed %s model", c->arch->name);
    }
    return 0;
}

/* rope_freqs.weight: [head_dim / 2] positive finite divisors of the pair frequencies. */
static int load_rope_freqs(gguf_ctx *g, claims *cl, model *m)
{
    model_config *c = &m->cfg;
    const gguf_tensor *t = gguf_find_tensor(g, "rope_freqs.weight");
    if (!t) return 0;
    if (c->arch->rope_freqs == ARCH_ABSENT) return 0; /* left unclaimed: refused as unused */
    int rc = find_tensor(g, cl, "rope_freqs.weight", (uint64_t)(c->head_dim / 2), 1, &t);
    if (rc) return rc;
    m->rope_freqs = kvs_alloc((size_t)(c->head_dim / 2) * sizeof(float));
    if (!m->rope_freqs) return kvs_error(KVS_ENOMEM, "out of memory");
    if ((rc = gguf_tensor_to_f32(t, m->rope_freqs))) return rc;
    for (int i = 0; i < c->head_dim / 2; i++)
        if (!(m->rope_freqs[i] > 0.0f) || m->rope_freqs[i] > 1e30f)
            return kvs_error(KVS_EFORMAT, "rope_freqs.weight[%d] = %g; the frequency factors "
                             "must be positive and finite", i, m->rope_freqs[i]);
    c->rope_freqs = 1;
    return 0;
}

/* A matrix tensor kept in its GGUF blocks: one more part of w. */
static int add_native(wmat *w, const gguf_tensor *t)
{
    const wfmt *f = wfmt_get(t->type);
    if (!f) {
        const char *tn = gguf_type_name(t->type);
        return kvs_error(KVS_EUNSUPPORTED, "tensor '%s' is %s, which the CPU kernels do not "
                         "compute on (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
                         "Q4_K, Q5_K, Q6_K, Q8_K); try --weights f32 if it can be dequantised",
                         t->name, tn ? tn : "an unknown type");
    }
    int rc = wmat_add(w, f, t->data, (int)t->ne[1], (int)t->ne[0]);
    if (rc) {
        char why[512];
        snprintf(why, sizeof why, "%s", kvs_last_error());
        return kvs_error(rc, "tensor '%s': %s", t->name, why);
    }
    return 0;
}

int model_weights_parse(const char *s, model_weights *out)
{
    if (s && !strcmp(s, "native")) *out = MODEL_WEIGHTS_NATIVE;
    else if (s && (!strcmp(s, "f32") || !strcmp(s, "fp32"))) *out = MODEL_WEIGHTS_F32;
    else return kvs_error(KVS_EINVAL, "weights mode '%s': expected native (GGUF blocks) or f32",
                          s ? s : "(null)");
    return 0;
}

const char *model_weights_name(model_weights w)
{
    return w == MODEL_WEIGHTS_NATIVE ? "native" : "f32";
}

int model_load(const char *path, model **out)
{
    return model_load_ex(path, MODEL_WEIGHTS_F32, out);
}

int model_load_ex(const char *path, model_weights weights, model **out)
{
    *out = NULL;
    const int native = weights == MODEL_WEIGHTS_NATIVE;
    gguf_ctx *g = NULL;
    int rc = gguf_open(path, NULL, &g);
    if (rc) return rc;
    model *m = calloc(1, sizeof *m);
    if (!m) { gguf_close(g); return kvs_error(KVS_ENOMEM, "out of memory"); }
    m->gguf = g;
    m->weights = native ? MODEL_WEIGHTS_NATIVE : MODEL_WEIGHTS_F32;
    snprintf(m->path, sizeof m->path, "%s", path);
    model_config *c = &m->cfg;
    load_job *jobs = NULL;
    claims cl = {0};
    if ((rc = read_arch(g, path, c)) || (rc = read_config(g, c))) goto fail;
    const arch_desc *A = c->arch;

    cl.cap = gguf_n_tensors(g) > 0 ? (int)gguf_n_tensors(g) : 1;
    cl.t = calloc((size_t)cl.cap, sizeof *cl.t);
    if (!cl.t) { rc = kvs_error(KVS_ENOMEM, "out of memory"); goto fail; }

    const gguf_tensor *embd = gguf_find_tensor(g, "token_embd.weight");
    if (!embd) { rc = kvs_error(KVS_EFORMAT, "tensor 'token_embd.weight' is missing"); goto fail; }
    if (embd->ne[0] != (uint64_t)c->d_model || embd->ne[1] < 1 || embd->ne[1] > (1u << 24)) {
        rc = kvs_error(KVS_EFORMAT, "token_embd.weight has row length %llu; expected %d",
                       (unsigned long long)embd->ne[0], c->d_model);
        goto fail;
    }
    c->n_vocab = (int)embd->ne[1];
    const gguf_tensor *t;
    if ((rc = find_tensor(g, &cl, "token_embd.weight", (uint64_t)c->d_model,
                          (uint64_t)c->n_vocab, &t))) goto fail;
    const gguf_tensor *outw = A->output == ARCH_ABSENT ? NULL : gguf_find_tensor(g, "output.weight");
    if (!outw && A->output == ARCH_REQUIRED) {
        rc = kvs_error(KVS_EFORMAT, "tensor 'output.weight' is missing ('%s' models have one)",
                       A->name);
        goto fail;
    }
    c->tied_embeddings = outw == NULL;
    c->qkv_bias = A->qkv_bias != ARCH_ABSENT;
    if (A->qkv_bias == ARCH_OPTIONAL)
        c->qkv_bias = gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;

    const int D = c->d_model, hd = c->head_dim, F = c->d_ff;
    const int q_rows = c->n_heads * hd, kv_rows = c->n_kv_heads * hd;
    const int QKV = q_rows + 2 * kv_rows;
    const int L = c->n_layers;
    /* Jobs: embd, output norm, output (if untied), 12 per layer. */
    int max_jobs = 3 + 12 * L, n_jobs = 0;
    jobs = calloc((size_t)max_jobs, sizeof *jobs);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    if (!jobs || !m->layers) { rc = kvs_error(KVS_ENOMEM, "out of memory"); goto fail; }

    /* Sizes in floats; one allocation per matrix keeps freeing simple. */
    m->output_norm = kvs_alloc((size_t)D * sizeof(float));
    if (!m->output_norm) { rc = KVS_ENOMEM; goto fail; }
    if (native) {
        if ((rc = add_native(&m->embd, embd))) goto fail;
    } else {
        m->tok_embd = kvs_alloc((size_t)c->n_vocab * D * sizeof(float));
        if (!m->tok_embd) { rc = KVS_ENOMEM; goto fail; }
        jobs[n_jobs++] = (load_job){embd, m->tok_embd};
    }
    if ((rc = find_tensor(g, &cl, "output_norm.weight", (uint64_t)D, 1, &t))) goto fail;
    jobs[n_jobs++] = (load_job){t, m->output_norm};
    if (outw) {
        if ((rc = find_tensor(g, &cl, "output.weight", (uint64_t)D, (uint64_t)c->n_vocab, &t)))
            goto fail;
        if (native) {
            if ((rc = add_native(&m->out, t))) goto fail;
        } else {
            m->output = kvs_alloc((size_t)c->n_vocab * D * sizeof(float));
            if (!m->output) { rc = KVS_ENOMEM; goto fail; }
            jobs[n_jobs++] = (load_job){t, m->output};
        }
    } else {
        m->output = m->tok_embd;
    }
    if ((rc = load_rope_freqs(g, &cl, m))) goto fail;
    for (int l = 0; l < L; l++) {
        model_layer *ly = &m->layers[l];
        char name[96];
        ly->attn_norm = kvs_alloc((size_t)D * sizeof(float));
        ly->ffn_norm = kvs_alloc((size_t)D * sizeof(float));
        if (!native) {
            ly->wqkv = kvs_alloc((size_t)QKV * D * sizeof(float));
            ly->wo = kvs_alloc((size_t)D * q_rows * sizeof(float));
            ly->w_gate_up = kvs_alloc((size_t)2 * F * D * sizeof(float));
            ly->w_down = kvs_alloc((size_t)D * F * sizeof(float));
            if (!ly->wqkv || !ly->wo || !ly->w_gate_up || !ly->w_down) { rc = KVS_ENOMEM; goto fail; }
        }
        if (c->qkv_bias) ly->bqkv = kvs_alloc((size_t)QKV * sizeof(float));
        if (!ly->attn_norm || !ly->ffn_norm || (c->qkv_bias && !ly->bqkv)) {
            rc = KVS_ENOMEM;
            goto fail;
        }
        /* mat: the wmat the tensor is a part of (NATIVE mode keeps its blocks there) */
        struct { const char *name; uint64_t ne0, ne1; float *dst; wmat *mat; int want; } spec[12] = {
            {"attn_norm.weight", (uint64_t)D, 1, ly->attn_norm, NULL, 1},
            {"attn_q.weight", (uint64_t)D, (uint64_t)q_rows, ly->wqkv, &ly->qkv, 1},
            {"attn_k.weight", (uint64_t)D, (uint64_t)kv_rows,
             ly->wqkv ? ly->wqkv + (size_t)q_rows * D : NULL, &ly->qkv, 1},
            {"attn_v.weight", (uint64_t)D, (uint64_t)kv_rows,
             ly->wqkv ? ly->wqkv + (size_t)(q_rows + kv_rows) * D : NULL, &ly->qkv, 1},
            {"attn_output.weight", (uint64_t)q_rows, (uint64_t)D, ly->wo, &ly->o, 1},
            {"ffn_norm.weight", (uint64_t)D, 1, ly->ffn_norm, NULL, 1},
            {"ffn_gate.weight", (uint64_t)D, (uint64_t)F, ly->w_gate_up, &ly->gate_up, 1},
            {"ffn_up.weight", (uint64_t)D, (uint64_t)F,
             ly->w_gate_up ? ly->w_gate_up + (size_t)F * D : NULL, &ly->gate_up, 1},
            {"ffn_down.weight", (uint64_t)F, (uint64_t)D, ly->w_down, &ly->down, 1},
            {"attn_q.bias", (uint64_t)q_rows, 1, ly->bqkv, NULL, c->qkv_bias},
            {"attn_k.bias", (uint64_t)kv_rows, 1, ly->bqkv ? ly->bqkv + q_rows : NULL, NULL,
             c->qkv_bias},
            {"attn_v.bias", (uint64_t)kv_rows, 1, ly->bqkv ? ly->bqkv + q_rows + kv_rows : NULL,
             NULL, c->qkv_bias},
        };
        for (int i = 0; i < 12; i++) {
            if (!spec[i].want) continue; /* bias of a model without biases: must be absent */
            snprintf(name, sizeof name, "blk.%d.%s", l, spec[i].name);
            if ((rc = find_tensor(g, &cl, name, spec[i].ne0, spec[i].ne1, &t))) goto fail;
            if (native && spec[i].mat) {
                if ((rc = add_native(spec[i].mat, t))) goto fail;
            } else {
                jobs[n_jobs++] = (load_job){t, spec[i].dst};
            }
        }
    }
    if ((rc = check_all_claimed(g, &cl, c))) goto fail;
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
                snprintf(err_msg, sizeof err_msg, "%s", kvs_last_error());
            }
        }
    }
    if (first_err) { rc = kvs_error(first_err, "%s", err_msg); goto fail; }
    if (!native && (rc = model_wrap_f32(m))) goto fail;
    if (!outw) m->out = m->embd;
    m->out.act_residual = 1; /* logits: two-pass 8-bit activations (wmat.h) */
    free(jobs);
    free(cl.t);
    *out = m;
    return 0;
fail:
    free(jobs);
    free(cl.t);
    model_free(m);
    /* every message names the file */
    if (strncmp(kvs_last_error(), path, strlen(path)) != 0) {
        char why[1024];
        snprintf(why, sizeof why, "%s", kvs_last_error());
        kvs_error(rc, "%s: %s", path, why);
    }
    return rc;
}

int model_wrap_f32(model *m)
{
    const model_config *c = &m->cfg;
    const int D = c->d_model, hd = c->head_dim, F = c->d_ff;
    const int q_rows = c->n_heads * hd, QKV = q_rows + 2 * c->n_kv_heads * hd;
    const wfmt *f = &wfmt_f32;
    int rc;
    memset(&m->embd, 0, sizeof m->embd);
    memset(&m->out, 0, sizeof m->out);
    if ((rc = wmat_add(&m->embd, f, m->tok_embd, c->n_vocab, D))) return rc;
    if (m->output && m->output != m->tok_embd) {
        if ((rc = wmat_add(&m->out, f, m->output, c->n_vocab, D))) return rc;
    } else {
        m->out = m->embd;
    }
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *ly = &m->layers[l];
        memset(&ly->qkv, 0, sizeof ly->qkv); memset(&ly->o, 0, sizeof ly->o);
        memset(&ly->gate_up, 0, sizeof ly->gate_up); memset(&ly->down, 0, sizeof ly->down);
        if ((rc = wmat_add(&ly->qkv, f, ly->wqkv, QKV, D)) ||
            (rc = wmat_add(&ly->o, f, ly->wo, D, q_rows)) ||
            (rc = wmat_add(&ly->gate_up, f, ly->w_gate_up, 2 * F, D)) ||
            (rc = wmat_add(&ly->down, f, ly->w_down, D, F)))
            return rc;
    }
    m->weights = MODEL_WEIGHTS_F32;
    return 0;
}

int model_needs_extensions(const model *m, char *why, size_t why_size)
{
    const model_config *c = &m->cfg;
    char buf[128] = "";
    if (c->qkv_bias) strcat(buf, ", QKV biases");
    if (c->rope_type != ARCH_ROPE_NORM) strcat(buf, ", NEOX RoPE (i, i+d/2)");
    if (c->rope_freqs) strcat(buf, ", rope_freqs.weight RoPE scaling");
    if (why && why_size) snprintf(why, why_size, "%s", buf[0] ? buf + 2 : "");
    return buf[0] != 0;
}

void model_free(model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            model_layer *ly = &m->layers[l];
            kvs_free(ly->attn_norm); kvs_free(ly->ffn_norm); kvs_free(ly->wqkv);
            kvs_free(ly->wo); kvs_free(ly->w_gate_up); kvs_free(ly->w_down);
            kvs_free(ly->bqkv);
        }
        free(m->layers);
    }
    if (m->output != m->tok_embd) kvs_free(m->output);
    kvs_free(m->tok_embd);
    kvs_free(m->output_norm);
    kvs_free(m->rope_freqs);
    gguf_close(m->gguf);
    free(m);
}

int64_t model_kv_bytes_per_token(const model_config *c)
{
    return (int64_t)c->n_layers * c->n_kv_heads * c->head_dim * 2 * (int64_t)sizeof(float);
}

static int64_t wmat_bytes(const wmat *w)
{
    int64_t b = 0;
    for (int p = 0; p < w->n_parts; p++) b += (int64_t)w->part[p].rows * (int64_t)w->part[p].row_bytes;
    return b;
}

int64_t model_weight_bytes(const model *m)
{
    int64_t b = wmat_bytes(&m->embd);
    if (!m->cfg.tied_embeddings) b += wmat_bytes(&m->out);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const model_layer *ly = &m->layers[l];
        b += wmat_bytes(&ly->qkv) + wmat_bytes(&ly->o) + wmat_bytes(&ly->gate_up) +
             wmat_bytes(&ly->down);
    }
    return b;
}

int64_t model_n_params(const model *m)
{
    const model_config *c = &m->cfg;
    int64_t D = c->d_model, hd = c->head_dim;
    int64_t per_layer = 2 * D + (c->n_heads + 2 * c->n_kv_heads) * hd * D +
                        D * c->n_heads * hd + 3 * D * (int64_t)c->d_ff;
    if (c->qkv_bias) per_layer += (c->n_heads + 2 * c->n_kv_heads) * hd;
    int64_t p = c->n_layers * per_layer + D + (int64_t)c->n_vocab * D;
    if (!c->tied_embeddings) p += (int64_t)c->n_vocab * D;
    return p;
}
