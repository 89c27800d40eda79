/* test_loop.c — the engine loop on the default model: streaming, stops, aborts, deadlines,
 * bad requests, a pool too small for the load (compress, compact, preempt), VTC fairness,
 * shutdown. Every accepted request must get exactly one FINISH event. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "scheduler/loop.h"
#include "test_util.h"

static const char *model_path;

#define MAXR 128
typedef struct rec {
    pthread_mutex_t mu;
    int n_tokens[MAXR], finished[MAXR], reason[MAXR], completion[MAXR], status[MAXR];
    int64_t evicted[MAXR];
    char text[MAXR][2048];
    size_t text_len[MAXR];
    int tenant_of[MAXR];
    int n_finished;
    double t_fin[MAXR], t_first[MAXR];
    kvs_loop *loop;
    int abort_after; /* abort slot 0 after this many tokens (0 = never) */
    uint64_t id0;
} rec;

typedef struct ctx { rec *r; int slot; } ctx;
static ctx ctxs[MAXR];

static void on_event(void *user, const sched_event *ev)
{
    ctx *c = user;
    rec *r = c->r;
    pthread_mutex_lock(&r->mu);
    if (ev->text_len && r->text_len[c->slot] + ev->text_len < sizeof r->text[0]) {
        memcpy(r->text[c->slot] + r->text_len[c->slot], ev->text, ev->text_len);
        r->text_len[c->slot] += ev->text_len;
    }
    if (ev->type == SCHED_EV_TOKEN) {
        if (r->n_tokens[c->slot]++ == 0) r->t_first[c->slot] = kvs_now();
        if (r->abort_after && c->slot == 0 && r->n_tokens[0] == r->abort_after)
            kvs_loop_abort(r->loop, ev->request_id, NULL);
    } else {
        r->finished[c->slot]++;
        r->t_fin[c->slot] = kvs_now();
        if (getenv("KVS_TEST_VERBOSE")) printf("  [finish slot %d reason %d status %d: %s]\n", c->slot, ev->finish_reason, ev->status, ev->message);
        r->reason[c->slot] = ev->finish_reason;
        r->status[c->slot] = ev->status;
        r->completion[c->slot] = ev->completion_tokens;
        r->evicted[c->slot] = ev->evicted_tokens;
        r->n_finished++;
    }
    pthread_mutex_unlock(&r->mu);
}

static void *run_thread(void *arg)
{
    kvs_loop_run(arg);
    return NULL;
}

static kvs_engine *E;

static int tokenize(const char *text, int32_t *ids, int cap)
{
    return tok_encode(E->tok, text, strlen(text), 0, ids, cap);
}

static sched_params params(int max_tokens)
{
    sched_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = max_tokens;
    p.sampling = smp_default();
    return p;
}

static void wait_finished(rec *r, int n, double timeout)
{
    double t_end = kvs_now() + timeout;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int done = r->n_finished >= n;
        pthread_mutex_unlock(&r->mu);
        if (done || kvs_now() > t_end) return;
        usleep(2000);
    }
}

static rec *rec_new(void)
{
    rec *r = calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    for (int i = 0; i < MAXR; i++) ctxs[i] = (ctx){r, i};
    return r;
}

/* Greedy output through the loop equals a direct engine run; batching does not change it. */
static void test_stream_matches_engine(void)
{
    const char *prompts[3] = {"The capital of France is", "Water boils at a temperature of",
                              "def fibonacci(n):"};
    /* Direct: one sequence at a time with engine_step. */
    char direct[3][512];
    for (int k = 0; k < 3; k++) {
        engine_seq *s;
        int32_t ids[64];
        int n = tokenize(prompts[k], ids, 64);
        CU_ASSERT_FATAL(engine_seq_create(E, &s) == 0);
        CU_ASSERT_FATAL(engine_seq_push(E, s, ids, n) == 0);
        int32_t gen[12];
        float *lg;
        int row;
        for (int t = 0; t < 12; t++) {
            while (s->n_computed < s->n_tokens) CU_ASSERT_FATAL(engine_step(E, &s, 1, 64, &lg, &row) == 0);
            gen[t] = smp_argmax(lg + (size_t)row * E->m->cfg.n_vocab, E->m->cfg.n_vocab);
            CU_ASSERT_FATAL(engine_seq_push(E, s, &gen[t], 1) == 0);
        }
        int nb = tok_decode(E->tok, gen, 12, direct[k], sizeof direct[k]);
        CU_ASSERT_FATAL(nb > 0);
        engine_seq_destroy(E, s);
    }
    rec *r = rec_new();
    kvs_loop_opts o = {.max_batch_tokens = 16, .prefill_chunk = 4};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    for (int k = 0; k < 3; k++) {
        int32_t ids[64];
        int n = tokenize(prompts[k], ids, 64);
        sched_params p = params(12);
        p.ignore_eos = 1;
        uint64_t id;
        CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, n, &p, on_event, &ctxs[k], &id), 0);
    }
    wait_finished(r, 3, 120);
    kvs_loop_stop(r->loop, 0);
    pthread_join(th, NULL);
    for (int k = 0; k < 3; k++) {
        CU_ASSERT_EQUAL(r->finished[k], 1);
        CU_ASSERT_EQUAL(r->reason[k], SCHED_FINISH_LENGTH);
        CU_ASSERT_EQUAL(r->completion[k], 12);
        r->text[k][r->text_len[k]] = 0;
        if (strcmp(r->text[k], direct[k]))
            printf("\n  loop: '%s'\n  direct: '%s'\n", r->text[k], direct[k]);
        CU_ASSERT_STRING_EQUAL(r->text[k], direct[k]);
    }
    kvs_loop_stats st;
    kvs_loop_get_stats(r->loop, &st);
    CU_ASSERT_EQUAL(st.kv_pages_used, 0);
    CU_ASSERT_EQUAL(st.running, 0);
    kvs_loop_destroy(r->loop);
    free(r);
}

static void test_stops_abort_deadline(void)
{
    rec *r = rec_new();
    r->abort_after = 3;
    kvs_loop_opts o = {0};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    int32_t ids[64];
    int n = tokenize("Count: one, two, three, four, five, six, seven,", ids, 64);
    uint64_t id;
    sched_params p = params(200); /* slot 0: aborted after 3 tokens */
    p.ignore_eos = 1;
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, n, &p, on_event, &ctxs[0], &id), 0);
    sched_params ps = params(40); /* slot 1: stop string */
    snprintf(ps.stop_strings[0], sizeof ps.stop_strings[0], "ten");
    ps.n_stop_strings = 1;
    ps.ignore_eos = 1;
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, n, &ps, on_event, &ctxs[1], &id), 0);
    sched_params pd = params(500); /* slot 2: deadline */
    pd.ignore_eos = 1;
    pd.deadline = kvs_now() + 0.5;
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, n, &pd, on_event, &ctxs[2], &id), 0);
    wait_finished(r, 3, 120);
    CU_ASSERT_EQUAL(r->reason[0], SCHED_FINISH_ABORTED);
    CU_ASSERT(r->n_tokens[0] >= 3 && r->n_tokens[0] < 10);
    CU_ASSERT_EQUAL(r->reason[1], SCHED_FINISH_STOP);
    r->text[1][r->text_len[1]] = 0;
    printf("\n  stop-string text: '%s'\n", r->text[1]);
    CU_ASSERT(strstr(r->text[1], "ten") == NULL); /* the stop string is not emitted */
    CU_ASSERT(strstr(r->text[1], "nine") != NULL);
    CU_ASSERT_EQUAL(r->reason[2], SCHED_FINISH_DEADLINE);
    /* Abort of an unknown id, and of another tenant's request. */
    CU_ASSERT_EQUAL(kvs_loop_abort(r->loop, 999999, NULL), KVS_ENOTFOUND);
    kvs_loop_stop(r->loop, 0);
    pthread_join(th, NULL);
    kvs_loop_stats st;
    kvs_loop_get_stats(r->loop, &st);
    CU_ASSERT_EQUAL(st.kv_pages_used, 0);
    for (int k = 0; k < 3; k++) CU_ASSERT_EQUAL(r->finished[k], 1);
    kvs_loop_destroy(r->loop);
    free(r);
}

static void test_bad_requests(void)
{
    sched_tenant ts[2] = {{.name = "a", .weight = 1, .max_queued = 1, .allowed_policies = "full,knorm"},
                          {.name = "b", .weight = 1}};
    kvs_loop_opts o = {.tenants = ts, .n_tenants = 2};
    kvs_loop *l;
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &l) == 0);
    int32_t ids[4] = {1, 2, 3, 4};
    uint64_t id;
    sched_params p = params(4);
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", ids, 0, &p, on_event, &ctxs[0], &id), KVS_EINVAL);
    int32_t bad[2] = {1, E->m->cfg.n_vocab};
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", bad, 2, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    int32_t *big = calloc(9000, sizeof *big);
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", big, 9000, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    free(big);
    p.max_tokens = 0;
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", ids, 4, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    p.max_tokens = 1 << 30;
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", ids, 4, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    p = params(4);
    snprintf(p.policy, sizeof p.policy, "nosuchpolicy");
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "b", ids, 4, &p, on_event, &ctxs[0], &id), KVS_EINVAL);
    snprintf(p.policy, sizeof p.policy, "knorm");
    snprintf(p.policy_args, sizeof p.policy_args, "ratio=1.5");
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "b", ids, 4, &p, on_event, &ctxs[0], &id), KVS_EINVAL);
    CU_ASSERT(strstr(kvs_last_error(), "ratio") != NULL);
    snprintf(p.policy, sizeof p.policy, "streaming");
    p.policy_args[0] = 0;
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", ids, 4, &p, on_event, &ctxs[0], &id), KVS_EUNSUPPORTED);
    p = params(4); /* stop ids must lie in the vocabulary */
    p.stop_ids[0] = E->m->cfg.n_vocab;
    p.n_stop_ids = 1;
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "b", ids, 4, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    p.stop_ids[0] = -1;
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "b", ids, 4, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    p = params(4); /* a deadline that already passed: refused at once, never queued */
    p.deadline = kvs_now() - 0.001;
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "b", ids, 4, &p, on_event, &ctxs[0], &id), KVS_ERANGE);
    CU_ASSERT(strstr(kvs_last_error(), "deadline") != NULL);
    p = params(4);
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "nobody", ids, 4, &p, on_event, &ctxs[0], &id), KVS_ENOTFOUND);
    /* queue limit 1 for tenant a (the loop is not running, so nothing is dequeued) */
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", ids, 4, &p, on_event, &ctxs[0], &id), 0);
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "a", ids, 4, &p, on_event, &ctxs[1], &id), KVS_ENOMEM);
    CU_ASSERT(strstr(kvs_last_error(), "queued") != NULL);
    /* b cannot abort a's request */
    CU_ASSERT_EQUAL(kvs_loop_abort(l, id, "b"), KVS_ENOTFOUND);
    CU_ASSERT_EQUAL(kvs_loop_abort(l, id, "a"), 0);
    /* shutdown: the queued request still gets its final status */
    rec *r = rec_new();
    kvs_loop_stop(l, 0);
    ctxs[0].r = r;
    kvs_loop_run(l);
    CU_ASSERT_EQUAL(r->finished[0], 1);
    CU_ASSERT_EQUAL(kvs_loop_submit(l, "b", ids, 4, &p, on_event, &ctxs[0], &id), KVS_EIO);
    kvs_loop_destroy(l);
    free(r);
}

/* A fresh loop reports its pool before any request (GetServerInfo and metrics read this). */
static void test_fresh_stats(void)
{
    kvs_loop_opts o = {0};
    kvs_loop *l;
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &l) == 0);
    kvs_loop_stats st;
    kvs_loop_get_stats(l, &st);
    CU_ASSERT_EQUAL(st.kv_pages_total, E->pool->n_pages);
    CU_ASSERT_EQUAL(st.kv_pages_free, E->pool->n_pages);
    CU_ASSERT_EQUAL(st.kv_pages_used, 0);
    kvs_loop_destroy(l);
}

/* A deadline that passes during the step that makes the last token: the request ends as
 * DEADLINE, not LENGTH (the client has given up by then). One prefill step of a long prompt
 * takes far longer than the 20 ms deadline. */
static void test_deadline_beats_length(void)
{
    rec *r = rec_new();
    kvs_loop_opts o = {.max_batch_tokens = 2048, .prefill_chunk = 2048};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    usleep(100000); /* the loop is idle and waiting */
    static int32_t ids[400];
    for (int i = 0; i < 400; i++) ids[i] = 100 + (i * 37) % 5000;
    sched_params p = params(1);
    p.deadline = kvs_now() + 0.02;
    uint64_t id;
    double t0 = kvs_now();
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, 400, &p, on_event, &ctxs[0], &id), 0);
    wait_finished(r, 1, 120);
    printf("\n  400-token prefill step: %.3fs; reason %d\n", kvs_now() - t0, r->reason[0]);
    CU_ASSERT_EQUAL(r->reason[0], SCHED_FINISH_DEADLINE);
    kvs_loop_stop(r->loop, 0);
    pthread_join(th, NULL);
    kvs_loop_destroy(r->loop);
    free(r);
}

/* An abort is reaped before the next step, and the stats show it then, not one (long) step
 * later: slot 0 decodes and is aborted after 3 tokens while slot 1 prefills a long prompt in
 * chunks of 256 tokens (each step takes long on a CPU). */
static void test_abort_stats_at_once(void)
{
    rec *r = rec_new();
    r->abort_after = 3;
    kvs_loop_opts o = {.max_batch_tokens = 512, .prefill_chunk = 256};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    int32_t ids[64];
    int n = tokenize("Tell me a story about a dragon.", ids, 64);
    static int32_t big[1800];
    for (int i = 0; i < 1800; i++) big[i] = 100 + (i * 37) % 5000;
    sched_params pa = params(100), pb = params(1);
    pa.ignore_eos = 1;
    uint64_t id;
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, n, &pa, on_event, &ctxs[0], &id), 0);
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, big, 1800, &pb, on_event, &ctxs[1], &id), 0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    wait_finished(r, 1, 120);
    CU_ASSERT_EQUAL(r->reason[0], SCHED_FINISH_ABORTED);
    kvs_loop_stats st;
    double t_seen = 0, t_end = kvs_now() + 20;
    do {
        kvs_loop_get_stats(r->loop, &st);
        if (st.requests_finished_total >= 1) t_seen = kvs_now();
        else usleep(1000);
    } while (!t_seen && kvs_now() < t_end);
    double steps0 = (double)st.steps_total;
    double t1 = kvs_now();
    while ((double)st.steps_total < steps0 + 1 && kvs_now() < t1 + 30) {
        usleep(5000);
        kvs_loop_get_stats(r->loop, &st);
    }
    double step_s = kvs_now() - t1;
    printf("\n  abort -> stats: %.3fs; one prefill step: >= %.3fs\n", t_seen - r->t_fin[0], step_s);
    CU_ASSERT(t_seen > 0 && t_seen - r->t_fin[0] < 0.25);
    CU_ASSERT_EQUAL(st.running, 1);
    kvs_loop_stop(r->loop, 0);
    pthread_join(th, NULL);
    kvs_loop_destroy(r->loop);
    free(r);
}

/* Starvation bound: tenant "long" holds both slots with long requests; tenant "short" arrives
 * later. VTC alone admits "short" only when a slot frees (after the long requests end); with
 * the bound it gets a slot within about max_starve_s (the long request is preempted and
 * recomputed, and still finishes). */
static double starve_run(double max_starve_s, double *step_s)
{
    sched_tenant ts[2] = {{.name = "long", .weight = 1}, {.name = "short", .weight = 1}};
    rec *r = rec_new();
    kvs_loop_opts o = {.max_running = 2, .tenants = ts, .n_tenants = 2,
                       .max_starve_s = max_starve_s};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    int32_t ids[16];
    int n = tokenize("Tell me a story about a dragon.", ids, 16);
    uint64_t id;
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    for (int k = 0; k < 2; k++) {
        sched_params p = params(100);
        p.ignore_eos = 1;
        CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, "long", ids, n, &p, on_event, &ctxs[k], &id), 0);
    }
    for (double t_end = kvs_now() + 60; kvs_now() < t_end;) {
        pthread_mutex_lock(&r->mu);
        int both = r->n_tokens[0] > 0 && r->n_tokens[1] > 0;
        pthread_mutex_unlock(&r->mu);
        if (both) break;
        usleep(2000);
    }
    double t_sub = kvs_now();
    sched_params p = params(4);
    p.ignore_eos = 1;
    CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, "short", ids, n, &p, on_event, &ctxs[2], &id), 0);
    wait_finished(r, 3, 300);
    double wait = r->t_first[2] - t_sub;
    wait_finished(r, 3, 300);
    /* the long requests' mean time per token (a step, plus a recompute when preempted) */
    *step_s = (r->t_fin[1] - r->t_first[1]) / 99.0;
    kvs_loop_stop(r->loop, 60);
    pthread_join(th, NULL);
    for (int k = 0; k < 3; k++) CU_ASSERT_EQUAL(r->finished[k], 1);
    CU_ASSERT_EQUAL(r->reason[0], SCHED_FINISH_LENGTH);
    CU_ASSERT_EQUAL(r->completion[0], 100);
    CU_ASSERT_EQUAL(r->completion[1], 100);
    kvs_loop_destroy(r->loop);
    free(r);
    return wait;
}

static void test_starvation_bound(void)
{
    double step, step_off;
    double w = starve_run(0.5, &step);
    double off = starve_run(-1, &step_off);
    printf("\n  'short' waited %.2fs for its first token with a 0.5 s bound, %.2fs without "
           "(a decode step: %.3fs)\n", w, off, step);
    /* the bound, plus the step in progress, the preemption and the short request's prefill */
    CU_ASSERT(w < 0.5 + 4 * step + 0.5);
    CU_ASSERT(off > 2 * w);
}

/* A pool far too small for the offered load: every request finishes, with compressions and
 * preemptions. */
static void test_pressure(void)
{
    kvs_engine *small;
    engine_opts eo = {.model_path = model_path, .kv_bytes = 90 * 8 * mem_pool_page_bytes(16, 2 * 64 * sizeof(float))};
    CU_ASSERT_FATAL(engine_create(&eo, &small) == 0); /* 8 pages per stream: 128 tokens */
    kvs_engine *saveE = E;
    E = small;
    rec *r = rec_new();
    kvs_loop_opts o = {.max_batch_tokens = 64, .prefill_chunk = 32,
                       .default_policy = "knorm", .default_policy_args = "ratio=0.5,when=pressure,window=8"};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    int32_t ids[128];
    int n = tokenize("In a quiet village by the sea, the people woke early every morning to fish, "
                     "mend their nets, and tell stories of the storms that had shaped their lives.",
                     ids, 128);
    const int N = 6;
    for (int k = 0; k < N; k++) {
        sched_params p = params(72);
        p.ignore_eos = 1;
        if (k % 3) snprintf(p.policy, sizeof p.policy, "full"); /* full ones must preempt */
        uint64_t id;
        CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, NULL, ids, n, &p, on_event, &ctxs[k], &id), 0);
    }
    wait_finished(r, N, 300);
    kvs_loop_stats st;
    kvs_loop_get_stats(r->loop, &st);
    printf("\n  pressure: %d finished, %lld preemptions, %lld evicted, %lld compaction moves\n",
           r->n_finished, (long long)st.preemptions_total, (long long)st.evicted_tokens_total,
           (long long)st.compaction_moves_total);
    kvs_loop_stop(r->loop, 0);
    pthread_join(th, NULL);
    for (int k = 0; k < N; k++) {
        CU_ASSERT_EQUAL(r->finished[k], 1);
        CU_ASSERT_EQUAL(r->reason[k], SCHED_FINISH_LENGTH);
        CU_ASSERT_EQUAL(r->completion[k], 72);
    }
    CU_ASSERT(st.preemptions_total > 0);
    CU_ASSERT(st.evicted_tokens_total > 0);
    kvs_loop_get_stats(r->loop, &st);
    CU_ASSERT_EQUAL(st.kv_pages_used, 0);
    kvs_loop_destroy(r->loop);
    free(r);
    engine_destroy(small);
    E = saveE;
}

/* Two tenants with weights 1:2, both backlogged: service (VTC counter units) in proportion. */
static void test_vtc_fairness(void)
{
    sched_tenant ts[2] = {{.name = "light", .weight = 1}, {.name = "heavy", .weight = 2}};
    rec *r = rec_new();
    kvs_loop_opts o = {.max_batch_tokens = 24, .max_running = 3, .prefill_chunk = 24,
                       .tenants = ts, .n_tenants = 2};
    CU_ASSERT_FATAL(kvs_loop_create(E, &o, &r->loop) == 0);
    int32_t ids[16];
    int n = tokenize("Tell me a story about a dragon.", ids, 16);
    /* 24 requests each, queued before the loop starts: both tenants stay backlogged. */
    const int N = 24;
    for (int k = 0; k < 2 * N; k++) {
        sched_params p = params(8);
        p.ignore_eos = 1;
        uint64_t id;
        r->tenant_of[k] = k % 2;
        CU_ASSERT_EQUAL(kvs_loop_submit(r->loop, ts[k % 2].name, ids, n, &p, on_event, &ctxs[k], &id), 0);
    }
    pthread_t th;
    pthread_create(&th, NULL, run_thread, r->loop);
    /* Measure while both are still backlogged: after a third of the requests finished. */
    wait_finished(r, 2 * N / 3, 300);
    kvs_tenant_stats tst[2];
    kvs_loop_get_tenant_stats(r->loop, tst, 2);
    double s_light = tst[0].prompt_tokens_total + 2.0 * tst[0].generated_tokens_total;
    double s_heavy = tst[1].prompt_tokens_total + 2.0 * tst[1].generated_tokens_total;
    printf("\n  VTC service: light %.0f, heavy %.0f (ratio %.2f, want 2); counters %.1f / %.1f\n",
           s_light, s_heavy, s_heavy / s_light, tst[0].virtual_counter, tst[1].virtual_counter);
    /* VTC bound: the weighted counters differ by at most ~ the max service of one step per
     * request in flight (here a few requests of <= n + 2*8 units). */
    CU_ASSERT(fabs(tst[0].virtual_counter - tst[1].virtual_counter) <= 3.0 * (n + 16));
    CU_ASSERT(s_heavy / s_light > 1.6 && s_heavy / s_light < 2.5);
    kvs_loop_stop(r->loop, 0);
    pthread_join(th, NULL);
    int fin = 0;
    for (int k = 0; k < 2 * N; k++) fin += r->finished[k];
    CU_ASSERT_EQUAL(fin, 2 * N);
    kvs_loop_destroy(r->loop);
    free(r);
}

int main(void)
{
    model_path = kvs_test_model_path();
    if (!model_path) {
        fprintf(stderr, "test_loop: the default model is missing; run scripts/fetch-model\n");
        return 1;
    }
    engine_opts eo = {.model_path = model_path, .kv_bytes = (size_t)256 << 20};
    if (engine_create(&eo, &E)) {
        fprintf(stderr, "test_loop: %s\n", kvs_last_error());
        return 1;
    }
    static const kvs_test tests[] = {
        {"greedy streams equal direct engine runs", test_stream_matches_engine},
        {"abort, stop string, deadline", test_stops_abort_deadline},
        {"bad requests refused with the right status", test_bad_requests},
        {"a fresh loop reports its pool", test_fresh_stats},
        {"an abort shows in the stats before the next step", test_abort_stats_at_once},
        {"a deadline passed during the last step wins over length", test_deadline_beats_length},
        {"pool too small: compress, compact, preempt; all finish", test_pressure},
        {"VTC fairness between weighted tenants", test_vtc_fairness},
        {"starvation bound: a tenant with nothing running gets a slot", test_starvation_bound},
    };
    int rc = kvs_test_main("loop", tests, sizeof tests / sizeof tests[0]);
    engine_destroy(E);
    return rc;
}
