/* test_kv_dtype.c — the KV element format as an engine option (--kv-dtype): f16 and bf16 KV
 * take half the K/V bytes of f32 (per token, and in pages per byte of KV memory), and their
 * effect on the model is small and stated: teacher-forced logits of the README prompts within
 * a bound of the f32 KV's, and the same greedy tokens (or, where they differ, a near-tie in
 * the f32 logits, which the test reports). The int formats are checked the same way, looser. */
#include "core/common.h"
#include "engine.h"
#include "sampler.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *MODEL;

static kvs_engine *make(const char *dtype, size_t kv_bytes)
{
    /* fp32 weights: the 8-bit activations of --weights native would amplify the KV format's
     * rounding (an activation crossing a rounding step), which is not what is measured here */
    engine_opts eo = {.model_path = MODEL, .kv_bytes = kv_bytes, .kv_dtype = dtype,
                      .weights = "f32"};
    kvs_engine *e = NULL;
    if (engine_create(&eo, &e)) fprintf(stderr, "\n  %s: %s\n", dtype, kvs_last_error());
    return e;
}

static void test_bytes(void)
{
    if (!MODEL) { printf(" skipped: default model missing "); return; }
    const size_t bytes = 64u << 20;
    kvs_engine *a = make("f32", bytes), *b = make("f16", bytes), *c = make("bf16", bytes);
    CU_ASSERT_FATAL(a && b && c);
    const model_config *m = &a->m->cfg;
    const size_t heads = (size_t)m->n_layers * m->n_kv_heads, meta = sizeof(int32_t) + sizeof(float);
    CU_ASSERT_EQUAL(a->be->kv_slot_bytes, 2 * (size_t)m->head_dim * 4);
    CU_ASSERT_EQUAL(b->be->kv_slot_bytes * 2, a->be->kv_slot_bytes);
    CU_ASSERT_EQUAL(c->be->kv_slot_bytes * 2, a->be->kv_slot_bytes);
    /* per token: K/V halve, the pos/score bookkeeping stays */
    CU_ASSERT_EQUAL(engine_kv_bytes_per_token(a) - heads * meta,
                    2 * (engine_kv_bytes_per_token(b) - heads * meta));
    CU_ASSERT_STRING_EQUAL(engine_kv_format(b)->name, "f16");
    CU_ASSERT_STRING_EQUAL(engine_kv_format(c)->name, "bf16");
    /* the same KV memory holds (slot + meta) ratio more pages */
    double ratio = (double)b->pool->n_pages / a->pool->n_pages;
    double want = (double)(a->be->kv_slot_bytes + meta) / (b->be->kv_slot_bytes + meta);
    printf(" [64 MiB: f32 %d pages, f16 %d pages (x%.3f), %zu vs %zu bytes/token]",
           a->pool->n_pages, b->pool->n_pages, ratio, engine_kv_bytes_per_token(a),
           engine_kv_bytes_per_token(b));
    CU_ASSERT(fabs(ratio - want) < 0.01);
    /* a 64-token sequence holds the same pages in either format, so its bytes halve too */
    engine_seq *sa, *sb;
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = 100 + i;
    CU_ASSERT_FATAL(engine_seq_create(a, &sa) == 0 && engine_seq_create(b, &sb) == 0);
    CU_ASSERT_FATAL(engine_seq_push(a, sa, ids, 64) == 0 && engine_seq_push(b, sb, ids, 64) == 0);
    float *lg;
    int row;
    CU_ASSERT_FATAL(engine_step(a, &sa, 1, 64, &lg, &row) == 0);
    CU_ASSERT_FATAL(engine_step(b, &sb, 1, 64, &lg, &row) == 0);
    CU_ASSERT_EQUAL(engine_seq_pages(sa), engine_seq_pages(sb));
    engine_seq_destroy(a, sa);
    engine_seq_destroy(b, sb);
    /* unknown names are refused with the list */
    CU_ASSERT_PTR_NULL(make("fp8", bytes));
    CU_ASSERT_PTR_NOT_NULL(strstr(kvs_last_error(), "f32, f16, bf16"));
    engine_destroy(a);
    engine_destroy(b);
    engine_destroy(c);
}

static const char *PROMPTS[] = {
    "The capital of France is",
    "Summarise this: The committee met on Tuesday to discuss the budget for the new library. "
    "After a long debate, they agreed to fund the building but not the garden.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "woodcutter and his daughter. Every morning he went into the forest to cut wood, and every "
    "evening she waited for him by the door. One day he did not come back, and so she took "
    "his lantern and went to look for him among the trees, where the paths grew narrow and "
    "the light grew thin.",
};

/* Teacher-forced logits of prompt + n_gen greedy tokens (the greedy tokens of the engine
 * itself), chunked prefill of 16 tokens. */
static float *forced(kvs_engine *e, const int32_t *ids, int n, int32_t *greedy, int n_gen,
                     int *n_rows)
{
    const int V = e->m->cfg.n_vocab;
    engine_seq *s;
    CU_ASSERT_FATAL(engine_seq_create(e, &s) == 0);
    s->logits_all = 1;
    CU_ASSERT_FATAL(engine_seq_push(e, s, ids, n) == 0);
    float *all = malloc((size_t)(n + n_gen) * V * sizeof *all);
    int rows = 0;
    while (s->n_computed < s->n_tokens || rows < n + n_gen) {
        float *lg;
        int row;
        int32_t before = s->n_computed;
        CU_ASSERT_FATAL(engine_step(e, &s, 1, 16, &lg, &row) == 0);
        int k = s->n_computed - before;
        memcpy(all + (size_t)rows * V, lg + (size_t)row * V, (size_t)k * V * sizeof *lg);
        rows += k;
        if (s->n_computed == s->n_tokens && rows < n + n_gen) {
            int32_t next = smp_argmax(all + (size_t)(rows - 1) * V, V);
            greedy[rows - n] = next;
            CU_ASSERT_FATAL(engine_seq_push(e, s, &next, 1) == 0);
        }
    }
    engine_seq_destroy(e, s);
    *n_rows = rows;
    return all;
}

/* One format against f32: max |d logit| / logit scale, greedy agreement. */
static void compare_format(const char *dtype, double tol_rel, int must_match)
{
    if (!MODEL) { printf(" skipped: default model missing "); return; }
    kvs_engine *a = make("f32", 64u << 20), *b = make(dtype, 64u << 20);
    CU_ASSERT_FATAL(a && b);
    const int V = a->m->cfg.n_vocab, N_GEN = 8;
    double worst = 0;
    int mism = 0, mism_near_tie = 0;
    for (size_t p = 0; p < sizeof PROMPTS / sizeof PROMPTS[0]; p++) {
        int32_t ids[512], ga[16], gb[16];
        int n = tok_encode(a->tok, PROMPTS[p], strlen(PROMPTS[p]), 0, ids, 512);
        CU_ASSERT_FATAL(n > 0 && n < 512);
        int ra, rb;
        float *la = forced(a, ids, n, ga, N_GEN, &ra), *lb = forced(b, ids, n, gb, N_GEN, &rb);
        CU_ASSERT_EQUAL_FATAL(ra, rb);
        /* teacher-forced on the prompt: the same inputs, so the logits compare directly */
        double scale = 0, d = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            scale = fmax(scale, fabs(la[i]));
            d = fmax(d, fabs((double)la[i] - lb[i]));
        }
        worst = fmax(worst, d / scale);
        for (int g = 0; g < N_GEN; g++) {
            if (ga[g] == gb[g]) continue;
            mism++;
            /* where they part: the f32 logits of the two tokens at that step */
            const float *row = la + (size_t)(n - 1 + g) * V;
            double gap = fabs((double)row[ga[g]] - row[gb[g]]);
            printf(" [prompt %zu token %d: f32 %d vs %s %d, f32 logit gap %.3f]", p, g, ga[g],
                   dtype, gb[g], gap);
            if (gap < 0.5) mism_near_tie++;
            break; /* after the first difference the continuations differ anyway */
        }
        free(la);
        free(lb);
    }
    printf(" [%s vs f32: max |d logit| / scale %.2e over %zu prompts; greedy mismatches %d "
           "(near-ties %d)]", dtype, worst, sizeof PROMPTS / sizeof PROMPTS[0], mism,
           mism_near_tie);
    CU_ASSERT(worst < tol_rel);
    CU_ASSERT(worst > 0); /* it does round */
    if (must_match) CU_ASSERT_EQUAL(mism, mism_near_tie);
    engine_destroy(a);
    engine_destroy(b);
}

static void test_f16(void) { compare_format("f16", 2e-3, 1); }
static void test_bf16(void) { compare_format("bf16", 2e-2, 1); }

int main(void)
{
    MODEL = kvs_test_model_path();
    static const kvs_test tests[] = {
        {"f16/bf16 KV: half the K/V bytes per token and in pages", test_bytes},
        {"f16 KV vs f32: logits within 2e-3 of scale, same greedy tokens", test_f16},
        {"bf16 KV vs f32: logits within 2e-2 of scale, same greedy tokens", test_bf16},
    };
    return kvs_test_main("kv_dtype", tests, (int)(sizeof tests / sizeof tests[0]));
}
