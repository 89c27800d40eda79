/* test_engine_policy.c — the engine helpers behind `kvsieve eval` (engine_seq_clone,
 * engine_seq_rescore, engine_seq_run_event, logits_all) and the harness's shortcut: prefill
 * once with a recording probe, clone, replay, compress. The shortcut must pick exactly the
 * victims each policy picks when it runs through engine_step itself. Needs the default model
 * (scripts/fetch-model); skipped without it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "engine.h"
#include "policies/qfilters.h"
#include "test_util.h"

/* The harness's probe and replay (eval/eval_stats.c) are tested here as they are built into
 * kvsieve: the test program compiles the same file. */
#include "../../eval/eval_stats.c"

static kvs_engine *E;
static char filters_path[256];

#define T_PROMPT 160

static void prompt_ids(int32_t *ids, int n, int salt)
{
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(((int64_t)i * 7919 + 13 + salt * 104729) % 49000);
}

/* Live positions of every stream, as a bitmap [streams][T]. */
static unsigned char *live_map(const engine_seq *s, int T)
{
    const int n = s->kv->n_layers * s->kv->n_kv_heads, P = E->pool->page_slots;
    unsigned char *m = calloc((size_t)n * T, 1);
    for (int i = 0; i < n; i++) {
        const mem_stream *st = &s->kv->streams[i];
        for (int32_t slot = 0; slot < st->n_slots; slot++) {
            int32_t pos = mem_page_pos(E->pool, mem_slot_page(E->pool, st, slot))[slot & (P - 1)];
            if (pos >= 0 && pos < T) m[(size_t)i * T + pos] = 1;
        }
    }
    return m;
}

static engine_seq *prefilled(const char *policy, const char *args, int T)
{
    int32_t ids[T_PROMPT];
    prompt_ids(ids, T, 0);
    engine_seq *s;
    CU_ASSERT_FATAL(engine_seq_create(E, &s) == 0);
    CU_ASSERT_FATAL(engine_seq_push(E, s, ids, T) == 0);
    engine_seq_mark_prompt(s);
    if (policy) CU_ASSERT_FATAL(engine_seq_set_policy(E, s, policy, args) == 0);
    float *lg;
    int row;
    while (s->n_computed < s->n_tokens) CU_ASSERT_FATAL(engine_step(E, &s, 1, 1024, &lg, &row) == 0);
    return s;
}

static void test_clone_copies_kv(void)
{
    if (!E) { puts("skipped: no model"); return; }
    engine_seq *a = prefilled("knorm", "ratio=0.5", T_PROMPT);
    CU_ASSERT(a->evicted > 0);
    engine_seq *b;
    int32_t free_before = E->pool->n_free;
    CU_ASSERT_FATAL(engine_seq_clone(E, a, &b) == 0);
    CU_ASSERT(E->pool->n_free < free_before);
    CU_ASSERT_EQUAL(b->n_tokens, a->n_tokens);
    CU_ASSERT_EQUAL(b->n_computed, a->n_computed);
    CU_ASSERT_EQUAL(b->n_prompt, a->n_prompt);
    CU_ASSERT_PTR_NULL(b->policy);
    /* Same live (pos, K, V, score) in every stream. */
    const int n = a->kv->n_layers * a->kv->n_kv_heads, P = E->pool->page_slots, d = E->m->cfg.head_dim;
    for (int i = 0; i < n; i++) {
        const mem_stream *x = &a->kv->streams[i], *y = &b->kv->streams[i];
        CU_ASSERT_EQUAL(x->n_live, y->n_live);
        CU_ASSERT_EQUAL(y->n_slots, y->n_live); /* dense */
        for (int32_t sy = 0; sy < y->n_slots; sy++) {
            int32_t py = mem_slot_page(E->pool, y, sy), oy = sy & (P - 1);
            int32_t pos = mem_page_pos(E->pool, py)[oy];
            int found = 0;
            for (int32_t sx = 0; sx < x->n_slots && !found; sx++) {
                int32_t px = mem_slot_page(E->pool, x, sx), ox = sx & (P - 1);
                if (mem_page_pos(E->pool, px)[ox] != pos) continue;
                float kx[256], vx[256], ky[256], vy[256];
                int32_t gx = px * P + ox, gy = py * P + oy;
                CU_ASSERT_FATAL(d <= 256 && engine_read_kv(E, &gx, 1, kx, vx) == 0 &&
                                engine_read_kv(E, &gy, 1, ky, vy) == 0);
                found = !memcmp(kx, ky, (size_t)d * 4) && !memcmp(vx, vy, (size_t)d * 4) &&
                        mem_page_score(E->pool, px)[ox] == mem_page_score(E->pool, py)[oy];
            }
            CU_ASSERT(found);
        }
    }
    CU_ASSERT(mem_check_invariants(E->pool, (mem_seq *[]){a->kv, b->kv}, 2) == 0);
    /* The next token's logits agree (slot order differs, so up to float summation order). */
    int32_t next = 42;
    float *lg;
    int rows[2];
    CU_ASSERT_FATAL(engine_seq_push(E, a, &next, 1) == 0);
    CU_ASSERT_FATAL(engine_seq_push(E, b, &next, 1) == 0);
    engine_seq *both[2] = {a, b};
    CU_ASSERT_FATAL(engine_step(E, both, 2, 1, &lg, rows) == 0);
    const int V = E->m->cfg.n_vocab;
    double md = 0;
    for (int v = 0; v < V; v++)
        md = fmax(md, fabs((double)lg[(size_t)rows[0] * V + v] - lg[(size_t)rows[1] * V + v]));
    CU_ASSERT(md < 1e-3);
    engine_seq_destroy(E, a);
    engine_seq_destroy(E, b);
    CU_ASSERT_EQUAL(E->pool->n_free, E->pool->n_pages);
}

static void test_clone_out_of_pages(void)
{
    if (!E) { puts("skipped: no model"); return; }
    engine_seq *a = prefilled(NULL, NULL, T_PROMPT);
    /* Take every free page, then cloning must fail cleanly. */
    int32_t n_free = E->pool->n_free;
    int32_t *taken = malloc((size_t)n_free * sizeof *taken);
    for (int32_t i = 0; i < n_free; i++) taken[i] = mem_pool_take_page(E->pool, 999999);
    engine_seq *b = (engine_seq *)1;
    CU_ASSERT_EQUAL(engine_seq_clone(E, a, &b), KVS_ENOMEM);
    CU_ASSERT_PTR_NULL(b);
    for (int32_t i = 0; i < n_free; i++) mem_pool_return_page(E->pool, taken[i]);
    free(taken);
    engine_seq_destroy(E, a);
    CU_ASSERT_EQUAL(E->pool->n_free, E->pool->n_pages);
}

static void test_logits_all_rows(void)
{
    if (!E) { puts("skipped: no model"); return; }
    /* Teacher forcing: a logits row per token equals the last-token row of a step ending there. */
    int32_t ids[12];
    prompt_ids(ids, 12, 3);
    engine_seq *a, *b;
    CU_ASSERT_FATAL(engine_seq_create(E, &a) == 0 && engine_seq_create(E, &b) == 0);
    a->logits_all = 1;
    CU_ASSERT_FATAL(engine_seq_push(E, a, ids, 12) == 0 && engine_seq_push(E, b, ids, 8) == 0);
    float *lg;
    int row;
    CU_ASSERT_FATAL(engine_step(E, &a, 1, 12, &lg, &row) == 0);
    CU_ASSERT_EQUAL(row, 0);
    const int V = E->m->cfg.n_vocab;
    float *keep = malloc((size_t)V * sizeof *keep);
    memcpy(keep, lg + (size_t)7 * V, (size_t)V * sizeof *keep); /* row of token 7 */
    CU_ASSERT_FATAL(engine_step(E, &b, 1, 8, &lg, &row) == 0);
    double md = 0;
    for (int v = 0; v < V; v++) md = fmax(md, fabs((double)keep[v] - lg[(size_t)row * V + v]));
    CU_ASSERT(md < 1e-3);
    free(keep);
    engine_seq_destroy(E, a);
    engine_seq_destroy(E, b);
}

/* The shortcut vs the real thing, for every built-in policy. */
static void check_shortcut(const char *policy, const char *extra, double ratio)
{
    char args[512];
    snprintf(args, sizeof args, "ratio=%g%s%s", ratio, extra[0] ? "," : "", extra);
    /* The real thing: the policy watches its own prefill and compresses at its end. */
    engine_seq *real = prefilled(policy, args, T_PROMPT);
    /* The shortcut: one recorded prefill, a clone, replay, compress. */
    eval_stats *st;
    CU_ASSERT_FATAL(eval_stats_create(E, 1, 64, T_PROMPT, &st) == 0);
    int32_t ids[T_PROMPT];
    prompt_ids(ids, T_PROMPT, 0);
    engine_seq *base, *clone;
    CU_ASSERT_FATAL(engine_seq_create(E, &base) == 0);
    CU_ASSERT_FATAL(engine_seq_push(E, base, ids, T_PROMPT) == 0);
    engine_seq_mark_prompt(base);
    CU_ASSERT_FATAL(eval_stats_attach(E, base, st) == 0);
    float *lg;
    int row;
    while (base->n_computed < base->n_tokens)
        CU_ASSERT_FATAL(engine_step(E, &base, 1, 1024, &lg, &row) == 0);
    eval_stats_detach(base);
    CU_ASSERT_EQUAL(base->evicted, 0);
    CU_ASSERT_FATAL(engine_seq_clone(E, base, &clone) == 0);
    CU_ASSERT_FATAL(engine_seq_set_policy(E, clone, policy, args) == 0);
    int64_t ev = eval_seq_compress_like(E, clone, st);
    CU_ASSERT(ev > 0);
    CU_ASSERT_EQUAL(ev, real->evicted);
    unsigned char *m1 = live_map(real, T_PROMPT), *m2 = live_map(clone, T_PROMPT);
    size_t n = (size_t)real->kv->n_layers * real->kv->n_kv_heads * T_PROMPT, diff = 0;
    for (size_t i = 0; i < n; i++) diff += m1[i] != m2[i];
    if (diff) printf("\n  %s %s: %zu live flags differ\n", policy, args, diff);
    CU_ASSERT_EQUAL(diff, 0);
    free(m1);
    free(m2);
    eval_stats_destroy(st);
    engine_seq_destroy(E, real);
    engine_seq_destroy(E, base);
    engine_seq_destroy(E, clone);
    CU_ASSERT_EQUAL(E->pool->n_free, E->pool->n_pages);
}

static void test_shortcut_same_victims(void)
{
    if (!E) { puts("skipped: no model"); return; }
    char q[300];
    snprintf(q, sizeof q, "filters=%s", filters_path);
    check_shortcut("streaming", "", 0.875);
    check_shortcut("knorm", "", 0.875);
    check_shortcut("random", "seed=3", 0.875);
    check_shortcut("tova", "", 0.875);
    check_shortcut("snapkv", "window=16,sink=4", 0.875);
    const double ratios[] = {0.5, 0.875};
    for (int r = 0; r < 2; r++) {
        check_shortcut("qfilters", q, ratios[r]);
        check_shortcut("h2o", "", ratios[r]);
        check_shortcut("snapkv", "", ratios[r]);
    }
}

static void test_rescore_and_event(void)
{
    if (!E) { puts("skipped: no model"); return; }
    /* Rescoring a full-cache clone with knorm gives -||k||; run_event with when=prefill evicts
     * half, with when=decode at the prefill event nothing. */
    engine_seq *a = prefilled(NULL, NULL, 64), *b;
    CU_ASSERT_FATAL(engine_seq_clone(E, a, &b) == 0);
    CU_ASSERT_FATAL(engine_seq_set_policy(E, b, "knorm", "ratio=0.5") == 0);
    CU_ASSERT(engine_seq_rescore(E, b) == 0);
    const mem_stream *s = mem_seq_stream(b->kv, 3, 1);
    const int d = E->m->cfg.head_dim;
    int32_t page = s->pages[0];
    float k[256];
    int32_t g5 = page * E->pool->page_slots + 5;
    CU_ASSERT_FATAL(d <= 256 && engine_read_kv(E, &g5, 1, k, NULL) == 0);
    double nn = 0;
    for (int i = 0; i < d; i++) nn += (double)k[i] * k[i];
    CU_ASSERT(fabs(mem_page_score(E->pool, page)[5] + sqrt(nn)) < 1e-4);
    CU_ASSERT_EQUAL(engine_seq_run_event(E, b, POL_AT_PREFILL_END),
                    (int64_t)b->kv->n_layers * b->kv->n_kv_heads * 32);
    CU_ASSERT_EQUAL(engine_seq_run_event(E, b, POL_AT_STEP), 0);
    CU_ASSERT(engine_seq_pages(b) < engine_seq_pages(a));
    engine_seq_destroy(E, a);
    engine_seq_destroy(E, b);
}

/* Prefill eviction follows the ratio while the prompt arrives: with when=prefill a 1,500-token
 * prompt fed in chunks of 256 at ratio 0.875 never holds its whole KV (the peak is about an
 * eighth of it plus one chunk), where when=prefill_end holds all of it first. Both end with
 * the same number of live entries. */
static int64_t peak_pages(const char *args, int64_t *live_end)
{
    enum { N = 1500 };
    static int32_t ids[N];
    prompt_ids(ids, N, 3);
    engine_seq *s;
    CU_ASSERT_FATAL(engine_seq_create(E, &s) == 0);
    CU_ASSERT_FATAL(engine_seq_push(E, s, ids, N) == 0);
    engine_seq_mark_prompt(s);
    CU_ASSERT_FATAL(engine_seq_set_policy(E, s, "knorm", args) == 0);
    float *lg;
    int row;
    E->pool->n_free_min = E->pool->n_free; /* the pool's low-water mark: pages at the peak */
    const int32_t free0 = E->pool->n_free;
    while (s->n_computed < s->n_tokens)
        CU_ASSERT_FATAL(engine_step(E, &s, 1, 256, &lg, &row) == 0);
    int64_t peak = free0 - E->pool->n_free_min;
    *live_end = 0;
    for (int i = 0; i < s->kv->n_layers * s->kv->n_kv_heads; i++) *live_end += s->kv->streams[i].n_live;
    engine_seq_destroy(E, s);
    return peak;
}

static void test_prefill_chunks_follow_ratio(void)
{
    if (!E) { printf(" skipped: default model missing "); return; }
    int64_t live_a, live_b;
    int64_t chunked = peak_pages("ratio=0.875,window=16", &live_a);
    int64_t one_shot = peak_pages("ratio=0.875,window=16,when=prefill_end", &live_b);
    const int64_t streams = (int64_t)E->m->cfg.n_layers * E->m->cfg.n_kv_heads;
    printf(" [peak KV pages: prefill %lld, prefill_end %lld; live entries at the "
           "end %lld / %lld]", (long long)chunked, (long long)one_shot, (long long)live_a,
           (long long)live_b);
    CU_ASSERT_EQUAL(live_a, live_b);
    CU_ASSERT_EQUAL(live_a, streams * (1500 / 8)); /* floor(1500 * 0.125) per head */
    /* a head holds at most 1/8 of what it has seen plus one chunk (188 + 256 tokens, 28
     * pages); without chunked eviction, the whole prompt (94 pages) */
    CU_ASSERT(chunked <= streams * ((1500 / 8 + 256 + 15) / 16 + 1));
    CU_ASSERT(one_shot >= streams * ((1500 + 15) / 16));
    CU_ASSERT(2 * chunked < one_shot);
}

int main(void)
{
    const char *model = kvs_test_model_path();
    if (model) {
        engine_opts eo = {.model_path = model, .kv_bytes = 256u << 20};
        if (engine_create(&eo, &E)) {
            fprintf(stderr, "engine: %s\n", kvs_last_error());
            return 1;
        }
        /* Random unit filters for qfilters, named for this model. */
        const model_config *c = &E->m->cfg;
        qf_filters f = {0};
        snprintf(f.model_name, sizeof f.model_name, "%s", c->name);
        f.n_layers = c->n_layers;
        f.n_kv_heads = c->n_kv_heads;
        f.head_dim = c->head_dim;
        f.n_heads = c->n_heads;
        size_t n = (size_t)c->n_layers * c->n_kv_heads * c->head_dim;
        f.u = malloc(n * sizeof *f.u);
        for (size_t i = 0; i < n; i++) f.u[i] = (float)sin(0.37 * (double)i + 1.0);
        snprintf(filters_path, sizeof filters_path, "/tmp/kvs-test-engine-policy-%d.kvsqf",
                 (int)getpid());
        if (qf_filters_save(filters_path, &f)) return 1;
        free(f.u);
    }
    static const kvs_test tests[] = {
        {"prefill eviction after every chunk: the peak follows the ratio", test_prefill_chunks_follow_ratio},
        {"clone copies the KV", test_clone_copies_kv},
        {"clone without pages fails cleanly", test_clone_out_of_pages},
        {"logits_all gives a row per token", test_logits_all_rows},
        {"rescore and run_event", test_rescore_and_event},
        {"one-prefill shortcut = the policy's own victims", test_shortcut_same_victims},
    };
    int rc = kvs_test_main("engine_policy", tests, (int)(sizeof tests / sizeof *tests));
    if (model) unlink(filters_path);
    engine_destroy(E);
    return rc;
}
