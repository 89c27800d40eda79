/* test_forward.c — invariances of the CPU forward on the default model: the logits of a
 * sequence must not depend on how it is fed (whole prefill, chunks, token by token, inside a
 * ragged batch with other sequences, page size), and bad input gets an error, not a crash. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "backend.h"
#include "forward.h"
#include "memory/kv_store.h"
#include "memory/pool.h"
#include "model.h"
#include "test_util.h"

static model *M;

/* Two token lists: ids chosen to span the vocabulary, lengths across page boundaries. */
#define LEN_A 37
#define LEN_B 18
static int32_t toks_a[LEN_A], toks_b[LEN_B];

/* The CPU backend with exactly `pages` pages of P slots, and the pool of their bookkeeping. */
typedef struct { kvs_backend *be; kvs_plan plan; } tfwd;
static int tfwd_create(int P, int32_t pages, tfwd *t, mem_pool **pool)
{
    memset(t, 0, sizeof *t);
    const size_t slot = kv_store_slot_bytes(&kv_fmt_f32, &kv_fmt_f32, M->cfg.head_dim);
    kvs_backend_opts o = {.page_slots = P, .kv_bytes = (size_t)pages * mem_pool_page_bytes(P, slot)};
    int rc = kvs_backend_cpu_create(M, &o, &t->be);
    if (rc) return rc;
    if (t->be->n_pages != pages) return KVS_EINVAL;
    return mem_pool_create(P, pages, pool);
}
static int tfwd_run(tfwd *t, mem_pool *pool, const fwd_seq *fs, int n, float **lg, int *rows)
{
    int rc = kvs_plan_build(&t->plan, &M->cfg, pool, fs, n);
    return rc ? rc : t->be->i->run(t->be, M, pool, &t->plan, fs, lg, rows);
}
static void tfwd_destroy(tfwd *t)
{
    kvs_plan_free(&t->plan);
    kvs_backend_destroy(t->be);
}

/* Logits of all positions of `toks` fed in chunks of `chunk`, with `other` (if non-NULL)
 * decoded alongside in the same batches. Returns a malloc'd [n][V] array. */
static float *run(const int32_t *toks, int n, int chunk, int page_slots, const int32_t *other,
                  int n_other)
{
    const model_config *c = &M->cfg;
    mem_pool *pool;
    tfwd st;
    mem_seq *kv, *kv2;
    int32_t pages = c->n_layers * c->n_kv_heads * (2 * 64 / page_slots + 4);
    CU_ASSERT_FATAL(tfwd_create(page_slots, pages, &st, &pool) == 0);
    CU_ASSERT_FATAL(mem_seq_create(c->n_layers, c->n_kv_heads, 0, &kv) == 0);
    CU_ASSERT_FATAL(mem_seq_create(c->n_layers, c->n_kv_heads, 1000, &kv2) == 0);
    float *out = malloc((size_t)n * c->n_vocab * sizeof(float));
    int done = 0, done2 = 0;
    while (done < n) {
        int k = n - done < chunk ? n - done : chunk;
        fwd_seq fs[2];
        int ns = 0;
        if (other && done2 < n_other) {
            CU_ASSERT_FATAL(mem_seq_reserve(pool, kv2, 1) == 0);
            fs[ns++] = (fwd_seq){.kv = kv2, .tokens = other + done2, .n_tokens = 1,
                                 .pos0 = done2, .logits = FWD_LOGITS_LAST};
        }
        CU_ASSERT_FATAL(mem_seq_reserve(pool, kv, k) == 0);
        fs[ns++] = (fwd_seq){.kv = kv, .tokens = toks + done, .n_tokens = k, .pos0 = done,
                             .logits = FWD_LOGITS_ALL};
        float *lg;
        int rows;
        CU_ASSERT_FATAL(tfwd_run(&st, pool, fs, ns, &lg, &rows) == 0);
        CU_ASSERT_EQUAL(rows, k + (ns == 2));
        memcpy(out + (size_t)done * c->n_vocab, lg + (size_t)(ns - 1) * c->n_vocab,
               (size_t)k * c->n_vocab * sizeof(float));
        done += k;
        if (ns == 2) done2++;
    }
    CU_ASSERT(mem_check_invariants(pool, (mem_seq *[]){kv, kv2}, 2) == 0);
    mem_seq_destroy(pool, kv);
    mem_seq_destroy(pool, kv2);
    CU_ASSERT_EQUAL(pool->n_free, pool->n_pages);
    tfwd_destroy(&st);
    mem_pool_destroy(pool);
    return out;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

static void test_feeding_invariance(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(M);
    size_t nv = (size_t)M->cfg.n_vocab;
    float *whole = run(toks_a, LEN_A, LEN_A, 16, NULL, 0);
    float *chunk5 = run(toks_a, LEN_A, 5, 16, NULL, 0);
    float *single = run(toks_a, LEN_A, 1, 16, NULL, 0);
    float *batched = run(toks_a, LEN_A, 7, 16, toks_b, LEN_B);
    float *page4 = run(toks_a, LEN_A, 3, 4, NULL, 0);
    double d1 = max_diff(whole, chunk5, LEN_A * nv), d2 = max_diff(whole, single, LEN_A * nv);
    double d3 = max_diff(whole, batched, LEN_A * nv), d4 = max_diff(whole, page4, LEN_A * nv);
    printf("\n  max |logit diff| vs whole prefill: chunk5 %.2e, token-by-token %.2e, "
           "batched %.2e, page4 %.2e\n", d1, d2, d3, d4);
    CU_ASSERT(d1 < 1e-3);
    CU_ASSERT(d2 < 1e-3);
    CU_ASSERT(d3 < 1e-3);
    CU_ASSERT(d4 < 1e-3);
    free(whole); free(chunk5); free(single); free(batched); free(page4);
}

static void test_bad_input(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(M);
    const model_config *c = &M->cfg;
    mem_pool *pool;
    tfwd st;
    mem_seq *kv;
    CU_ASSERT_FATAL(tfwd_create(16, c->n_layers * c->n_kv_heads * 2, &st, &pool) == 0);
    CU_ASSERT_FATAL(mem_seq_create(c->n_layers, c->n_kv_heads, 0, &kv) == 0);
    float *lg;
    int rows;
    int32_t bad[2] = {5, c->n_vocab};
    CU_ASSERT_FATAL(mem_seq_reserve(pool, kv, 2) == 0);
    fwd_seq fs = {.kv = kv, .tokens = bad, .n_tokens = 2, .pos0 = 0, .logits = FWD_LOGITS_LAST};
    CU_ASSERT_EQUAL(tfwd_run(&st, pool, &fs, 1, &lg, &rows), KVS_ERANGE);
    bad[1] = -1;
    CU_ASSERT_EQUAL(tfwd_run(&st, pool, &fs, 1, &lg, &rows), KVS_ERANGE);
    /* No room reserved beyond 2 pages' worth: 40 tokens must be refused, not overflow. */
    int32_t many[40] = {0};
    fwd_seq fs2 = {.kv = kv, .tokens = many, .n_tokens = 40, .pos0 = 0, .logits = FWD_LOGITS_LAST};
    CU_ASSERT_EQUAL(tfwd_run(&st, pool, &fs2, 1, &lg, &rows), KVS_ENOMEM);
    fs2.n_tokens = 0;
    CU_ASSERT_EQUAL(tfwd_run(&st, pool, &fs2, 1, &lg, &rows), KVS_EINVAL);
    CU_ASSERT(strlen(kvs_last_error()) > 0);
    mem_seq_destroy(pool, kv);
    tfwd_destroy(&st);
    mem_pool_destroy(pool);
}

static void test_missing_model(void)
{
    model *m = NULL;
    CU_ASSERT(model_load("/nonexistent/model.gguf", &m) < 0);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT(strstr(kvs_last_error(), "/nonexistent/model.gguf") != NULL);
}

int main(void)
{
    const char *path = kvs_test_model_path();
    if (!path) {
        fprintf(stderr, "test_forward: the default model is missing; run scripts/fetch-model\n");
        return 1;
    }
    if (model_load(path, &M)) {
        fprintf(stderr, "test_forward: %s\n", kvs_last_error());
        return 1;
    }
    for (int i = 0; i < LEN_A; i++) toks_a[i] = (int32_t)((i * 7919 + 13) % M->cfg.n_vocab);
    for (int i = 0; i < LEN_B; i++) toks_b[i] = (int32_t)((i * 104729 + 5) % M->cfg.n_vocab);
    static const kvs_test tests[] = {
        {"logits independent of chunking, batching, page size", test_feeding_invariance},
        {"bad token ids, no room, empty sequence", test_bad_input},
        {"missing model file", test_missing_model},
    };
    int rc = kvs_test_main("forward", tests, sizeof tests / sizeof tests[0]);
    model_free(M);
    return rc;
}
