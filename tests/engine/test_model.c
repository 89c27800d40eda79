/* test_model.c — the model loader per architecture (engine/arch.c, engine/model.c): good
 * llama, llama3 (rope_freqs) and qwen2 files load with the right config and weights where
 * they belong; unknown architectures, tensors the engine would not use, missing biases,
 * rope_freqs where the family has none, unsupported RoPE scaling and corrupted copies are
 * refused with a message naming what is wrong.
 *
 * Fixtures: tests/fixtures/gguf/model_*.gguf from tests/reference/make_gguf_fixtures.py (see
 * its docstring): 1 layer, d_model 16, 2 query heads, 1 KV head, head dim 8, FFN 16, vocab 8,
 * all F32; weight value k of the j-th tensor in file order is (j + 1) + k / 1024, bias value k
 * is 0.25 k, rope_freqs = 1, 2, 3, 4. */
#include "test_util.h"

#include "arch.h"
#include "core/common.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { D = 16, HD = 8, QROWS = 16, KVROWS = 8, QKV = QROWS + 2 * KVROWS, FF = 16, VOCAB = 8 };

static const char *fixture(const char *name)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/tests/fixtures/gguf/%s", kvs_test_source_dir(), name);
    return buf[k];
}

/* model_load must fail with `want_rc` and a message containing every needle. */
static void expect_refused(const char *path, int want_rc, const char *n1, const char *n2)
{
    model *m = (model *)1;
    int rc = model_load(path, &m);
    const char *msg = kvs_last_error();
    printf("\n  %-28s -> %s", strrchr(path, '/') ? strrchr(path, '/') + 1 : path, msg);
    CU_ASSERT_EQUAL(rc, want_rc);
    CU_ASSERT_PTR_NULL(m);
    if (rc == 0) model_free(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, n1));
    if (n2) CU_ASSERT_PTR_NOT_NULL(strstr(msg, n2));
}

static void check_common_config(const model *m)
{
    const model_config *c = &m->cfg;
    CU_ASSERT_EQUAL(c->n_layers, 1);
    CU_ASSERT_EQUAL(c->d_model, D);
    CU_ASSERT_EQUAL(c->n_heads, 2);
    CU_ASSERT_EQUAL(c->n_kv_heads, 1);
    CU_ASSERT_EQUAL(c->head_dim, HD);
    CU_ASSERT_EQUAL(c->d_ff, FF);
    CU_ASSERT_EQUAL(c->n_vocab, VOCAB);
    CU_ASSERT_EQUAL(c->n_ctx, 64);
    CU_ASSERT_DOUBLE_EQUAL(c->rms_eps, 1e-6, 1e-12);
}

static void test_arch_table(void)
{
    CU_ASSERT_PTR_NULL(arch_find("gemma3", 6));
    CU_ASSERT_PTR_NULL(arch_find("llam", 4));
    CU_ASSERT_PTR_NULL(arch_find("llama2", 6));
    CU_ASSERT_PTR_NULL(arch_find(NULL, 0));
    const arch_desc *l = arch_find("llama", 5), *q = arch_find("qwen2", 5);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    CU_ASSERT_EQUAL(l->rope, ARCH_ROPE_NORM);
    CU_ASSERT_EQUAL(l->qkv_bias, ARCH_ABSENT);
    CU_ASSERT_EQUAL(l->rope_freqs, ARCH_OPTIONAL);
    CU_ASSERT_EQUAL(q->rope, ARCH_ROPE_NEOX);
    CU_ASSERT_EQUAL(q->qkv_bias, ARCH_REQUIRED);
    CU_ASSERT_EQUAL(q->rope_freqs, ARCH_ABSENT);
    /* every name in the supported list is in the table */
    char list[128];
    snprintf(list, sizeof list, "%s", arch_supported());
    int n = 0;
    for (char *tok = strtok(list, ", "); tok; tok = strtok(NULL, ", "), n++)
        CU_ASSERT_PTR_NOT_NULL(arch_find(tok, strlen(tok)));
    CU_ASSERT_EQUAL(n, 2);
}

static void test_llama(void)
{
    model *m = NULL;
    int rc = model_load(fixture("model_llama.gguf"), &m);
    if (rc) printf("\n  %s", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_common_config(m);
    const model_config *c = &m->cfg;
    CU_ASSERT_STRING_EQUAL(c->arch->name, "llama");
    CU_ASSERT_EQUAL(c->rope_type, ARCH_ROPE_NORM);
    CU_ASSERT_EQUAL(c->qkv_bias, 0);
    CU_ASSERT_EQUAL(c->rope_freqs, 0);
    CU_ASSERT_TRUE(c->tied_embeddings);
    CU_ASSERT_PTR_EQUAL(m->output, m->tok_embd);
    CU_ASSERT_PTR_NULL(m->rope_freqs);
    CU_ASSERT_PTR_NULL(m->layers[0].bqkv);
    CU_ASSERT_DOUBLE_EQUAL(c->rope_base, 10000.0, 1e-3);
    /* tensors in file order: token_embd (1), output_norm (2), attn_norm (3), attn_q (4),
     * attn_k (5), attn_v (6): the fused QKV rows hold q, then k, then v */
    CU_ASSERT_EQUAL(m->tok_embd[0], 1.0f);
    CU_ASSERT_EQUAL(m->output_norm[3], 2.0f + 3.0f / 1024);
    CU_ASSERT_EQUAL(m->layers[0].wqkv[0], 4.0f);
    CU_ASSERT_EQUAL(m->layers[0].wqkv[(size_t)QROWS * D], 5.0f);
    CU_ASSERT_EQUAL(m->layers[0].wqkv[(size_t)(QROWS + KVROWS) * D + 1], 6.0f + 1.0f / 1024);
    char why[128] = "x";
    CU_ASSERT_EQUAL(model_needs_extensions(m, why, sizeof why), 0);
    CU_ASSERT_STRING_EQUAL(why, "");
    model_free(m);
}

static void test_llama3_rope_freqs(void)
{
    model *m = NULL;
    int rc = model_load(fixture("model_llama3.gguf"), &m);
    if (rc) printf("\n  %s", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_common_config(m);
    CU_ASSERT_EQUAL(m->cfg.rope_freqs, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m->rope_freqs);
    for (int i = 0; i < HD / 2; i++) CU_ASSERT_EQUAL(m->rope_freqs[i], (float)(i + 1));
    char why[128];
    CU_ASSERT_EQUAL(model_needs_extensions(m, why, sizeof why), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "rope_freqs"));
    model_free(m);
}

static void test_qwen2(void)
{
    model *m = NULL;
    int rc = model_load(fixture("model_qwen2.gguf"), &m);
    if (rc) printf("\n  %s", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_common_config(m);
    const model_config *c = &m->cfg;
    CU_ASSERT_STRING_EQUAL(c->arch->name, "qwen2");
    CU_ASSERT_EQUAL(c->rope_type, ARCH_ROPE_NEOX);
    CU_ASSERT_EQUAL(c->qkv_bias, 1);
    CU_ASSERT_FALSE(c->tied_embeddings);
    CU_ASSERT_PTR_NOT_EQUAL(m->output, m->tok_embd);
    CU_ASSERT_EQUAL(m->output[0], 3.0f); /* output.weight is the third tensor */
    CU_ASSERT_DOUBLE_EQUAL(c->rope_base, 1e6, 1.0);
    CU_ASSERT_STRING_EQUAL(c->name, "kvsieve qwen2 loader fixture");
    /* biases: q [16], k [8], v [8], each 0.25 * index, fused in that order */
    const float *b = m->layers[0].bqkv;
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    for (int i = 0; i < QROWS; i++) CU_ASSERT_EQUAL(b[i], 0.25f * i);
    for (int i = 0; i < KVROWS; i++) {
        CU_ASSERT_EQUAL(b[QROWS + i], 0.25f * i);
        CU_ASSERT_EQUAL(b[QROWS + KVROWS + i], 0.25f * i);
    }
    char why[128];
    CU_ASSERT_EQUAL(model_needs_extensions(m, why, sizeof why), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "QKV biases"));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "NEOX"));
    CU_ASSERT_EQUAL(model_n_params(m), (int64_t)1 * (2 * D + QKV * D + D * QROWS + 3 * D * FF +
                                                      QKV) + D + 2 * VOCAB * D);
    model_free(m);
}

static void test_refused(void)
{
    expect_refused(fixture("model_gemma3.gguf"), KVS_EUNSUPPORTED, "'gemma3'", "llama, qwen2");
    expect_refused(fixture("model_llama_bias.gguf"), KVS_EUNSUPPORTED, "'blk.0.attn_q.bias'",
                   "'llama'");
    expect_refused(fixture("model_llama_stray.gguf"), KVS_EUNSUPPORTED, "'blk.0.attn_rot_embd'",
                   "and 1 more");
    expect_refused(fixture("model_qwen2_no_k_bias.gguf"), KVS_EFORMAT, "'blk.0.attn_k.bias'",
                   "missing");
    expect_refused(fixture("model_qwen2_rope_freqs.gguf"), KVS_EUNSUPPORTED,
                   "'rope_freqs.weight'", "'qwen2'");
    expect_refused(fixture("model_qwen2_yarn.gguf"), KVS_EUNSUPPORTED, "yarn", "RoPE scaling");
    expect_refused(fixture("model_llama_linear2.gguf"), KVS_EUNSUPPORTED, "linear (factor 2)",
                   "llama.rope.scaling");
    model *m = NULL;
    CU_ASSERT_EQUAL(model_load(fixture("model_llama_linear1.gguf"), &m), 0); /* factor 1: no-op */
    model_free(m);
    expect_refused("/nonexistent/model_qwen2.gguf", KVS_EIO, "/nonexistent/model_qwen2.gguf",
                   NULL);
}

/* ---- corrupted copies of model_qwen2.gguf, made at test time ---------------------------- */

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) { free(b); b = NULL; }
    fclose(f);
    *n = b ? (size_t)sz : 0;
    return b;
}

static int write_file(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(b, 1, n, f) : 0;
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* Offset of the tensor-info record of `name` (its length prefix), or 0. */
static size_t find_info(const uint8_t *b, size_t n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 8; i + len + 12 < n; i++) {
        uint64_t l;
        memcpy(&l, b + i - 8, 8);
        if (l == len && memcmp(b + i, name, len) == 0) return i - 8;
    }
    return 0;
}

static void test_corrupted(void)
{
    size_t n = 0;
    uint8_t *good = read_file(fixture("model_qwen2.gguf"), &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(good);
    uint8_t *b = malloc(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    char dir[] = "/tmp/kvs_test_model_XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/bad.gguf", dir);

    /* truncated in the middle of the tensor data */
    CU_ASSERT_EQUAL_FATAL(write_file(path, good, n - 100), 0);
    expect_refused(path, KVS_EFORMAT, "truncated", NULL);

    /* the k bias shrunk to 4 values: the config says 8 */
    memcpy(b, good, n);
    size_t at = find_info(b, n, "blk.0.attn_k.bias");
    CU_ASSERT_FATAL(at > 0);
    uint64_t four = 4;
    memcpy(b + at + 8 + strlen("blk.0.attn_k.bias") + 4, &four, 8); /* ne[0] after n_dims */
    CU_ASSERT_EQUAL_FATAL(write_file(path, b, n), 0);
    expect_refused(path, KVS_EFORMAT, "'blk.0.attn_k.bias'", "shape");

    /* the architecture renamed: "qwen2" -> "qwen3" (same length) */
    memcpy(b, good, n);
    size_t ai = 0;
    while (ai + 5 < 200 && memcmp(b + ai, "qwen2", 5) != 0) ai++;
    CU_ASSERT_FATAL(ai + 5 < 200);
    b[ai + 4] = '3';
    CU_ASSERT_EQUAL_FATAL(write_file(path, b, n), 0);
    expect_refused(path, KVS_EUNSUPPORTED, "'qwen3'", "supported: llama, qwen2");

    /* a bias turned into a type whose blocks (Q3_K: 256 values) do not fit its 16 values */
    memcpy(b, good, n);
    at = find_info(b, n, "blk.0.attn_q.bias");
    CU_ASSERT_FATAL(at > 0);
    uint32_t q3k = 11;
    /* record: len | name | n_dims (u32) | ne[n_dims] (u64) | type (u32) | offset (u64) */
    uint32_t nd;
    size_t p = at + 8 + strlen("blk.0.attn_q.bias");
    memcpy(&nd, b + p, 4);
    CU_ASSERT_EQUAL_FATAL(nd, 1);
    memcpy(b + p + 4 + 8, &q3k, 4);
    CU_ASSERT_EQUAL_FATAL(write_file(path, b, n), 0);
    model *m = (model *)1;
    int rc = model_load(path, &m);
    printf("\n  %-28s -> %s", "q bias as Q3_K", kvs_last_error());
    CU_ASSERT(rc < 0);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(kvs_last_error(), "blk.0.attn_q.bias"));

    unlink(path);
    rmdir(dir);
    free(b);
    free(good);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"architecture table", test_arch_table},
        {"llama loads (tied, no biases, normal RoPE)", test_llama},
        {"llama3 rope_freqs.weight is read", test_llama3_rope_freqs},
        {"qwen2 loads (biases, NEOX RoPE, untied)", test_qwen2},
        {"unknown arch, unused tensors, missing bias, scaling: refused", test_refused},
        {"corrupted copies are refused", test_corrupted},
    };
    return kvs_test_main("model", tests, sizeof tests / sizeof tests[0]);
}
