/* test_compaction.c — tail-to-hole compaction of one stream: the multiset of (pos, K, V,
 * score) is kept bit for bit, the stream ends dense with ceil(n_live / P) pages and gives the
 * rest back, moves are exactly the live slots that sat at or past n_live, and single-query
 * attention over the live slots is the same before and after. Edge cases: empty stream, one
 * token, everything evicted, lengths at page boundaries, holes only at the tail, reserved
 * but unused pages. */
#include "core/common.h"
#include "memory/pool.h"
#include "test_util.h"
#include "test_kv.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D_MAX 16

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static float rnd_unit(void) { return (float)rnd() / 4294967296.0f * 2.f - 1.f; } /* [-1, 1) */

/* One live token as stored: its position, K, V and score. */
typedef struct {
    int32_t pos;
    float k[D_MAX], v[D_MAX], score;
} entry;

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->pos != y->pos) return (x->pos > y->pos) - (x->pos < y->pos);
    return memcmp(x, y, sizeof *x); /* same pos twice: any total order on the bytes */
}

/* Live entries of the stream, sorted; returns their count. */
static int collect(const mem_pool *p, const mem_stream *s, entry *out)
{
    const int P = p->page_slots, d = tkv_head_dim(p);
    int n = 0;
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t pg = mem_slot_page(p, s, slot), off = slot & (P - 1);
        if (mem_page_pos(p, pg)[off] < 0) continue;
        entry *e = &out[n++];
        memset(e, 0, sizeof *e);
        e->pos = mem_page_pos(p, pg)[off];
        memcpy(e->k, tkv_page_k(p, pg) + (size_t)off * d, (size_t)d * sizeof(float));
        memcpy(e->v, tkv_page_v(p, pg) + (size_t)off * d, (size_t)d * sizeof(float));
        e->score = mem_page_score(p, pg)[off];
    }
    qsort(out, (size_t)n, sizeof *out, cmp_entry);
    return n;
}

/* Reference single-query attention over the live slots:
 * out (d,) = sum_i softmax(q . k_i / sqrt(d))_i v_i, skipping pos < 0. Returns live count. */
static int attend(const mem_pool *p, const mem_stream *s, const float *q, double *out)
{
    const int P = p->page_slots, d = tkv_head_dim(p);
    double mx = -INFINITY, sum = 0.0;
    int n = 0;
    for (int j = 0; j < d; j++) out[j] = 0.0;
    for (int pass = 0; pass < 2; pass++)
        for (int32_t slot = 0; slot < s->n_slots; slot++) {
            int32_t pg = mem_slot_page(p, s, slot), off = slot & (P - 1);
            if (mem_page_pos(p, pg)[off] < 0) continue;
            const float *k = tkv_page_k(p, pg) + (size_t)off * d;
            const float *v = tkv_page_v(p, pg) + (size_t)off * d;
            double dot = 0.0;
            for (int j = 0; j < d; j++) dot += (double)q[j] * k[j];
            dot /= sqrt((double)d);
            if (pass == 0) {
                if (dot > mx) mx = dot;
                n++;
            } else {
                double w = exp(dot - mx);
                sum += w;
                for (int j = 0; j < d; j++) out[j] += w * v[j];
            }
        }
    if (sum > 0)
        for (int j = 0; j < d; j++) out[j] /= sum;
    return n;
}

static int check1(mem_pool *p, mem_seq *q)
{
    mem_seq *seqs[1] = {q};
    return mem_check_invariants(p, seqs, 1);
}

/* Fill a fresh stream with `len` random tokens, evict the slots marked in `evict` (via
 * mem_stream_evict, so trailing evictions shrink n_slots), optionally reserve `extra` more
 * tokens, compact, and check everything. Returns the number of moves. */
static int32_t run_case(int P, int d, int len, const unsigned char *evict, int extra)
{
    mem_pool *p;
    mem_seq *q;
    int32_t n_pool = (len + extra) / P + 4;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(P, d, n_pool, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 1, 3, &q), KVS_OK);
    mem_stream *s = &q->streams[0];
    float k[D_MAX], v[D_MAX], qv[D_MAX];
    for (int i = 0; i < len; i++) {
        for (int j = 0; j < d; j++) {
            k[j] = rnd_unit();
            v[j] = rnd_unit();
        }
        CU_ASSERT_EQUAL(tkv_append(p, s, 1000 + i, k, v, rnd_unit()), i);
    }
    /* evict high slots first so a slot index always means the same token */
    for (int i = len - 1; i >= 0; i--)
        if (evict[i]) CU_ASSERT_EQUAL(mem_stream_evict(p, s, i), KVS_OK);
    if (extra) CU_ASSERT_EQUAL(mem_seq_reserve(p, q, extra), KVS_OK);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    for (int j = 0; j < d; j++) qv[j] = 2.f * rnd_unit();

    entry *before = malloc(sizeof(entry) * (size_t)(len + 1));
    entry *after = malloc(sizeof(entry) * (size_t)(len + 1));
    int n_before = collect(p, s, before);
    double att_before[D_MAX], att_after[D_MAX];
    attend(p, s, qv, att_before);
    int32_t live = s->n_live, pages_before = s->n_pages, free_before = p->n_free;
    int32_t expect_moves = 0;
    for (int32_t slot = live; slot < s->n_slots; slot++)
        expect_moves += mem_page_pos(p, mem_slot_page(p, s, slot))[slot & (P - 1)] >= 0;
    CU_ASSERT_EQUAL(n_before, live);

    int32_t moves = tkv_compact(p, s);

    CU_ASSERT_EQUAL(moves, expect_moves);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    CU_ASSERT_EQUAL(s->n_live, live);
    CU_ASSERT_EQUAL(s->n_slots, live);
    CU_ASSERT_EQUAL(s->n_holes, 0);
    int32_t keep = (live + P - 1) / P;
    CU_ASSERT_EQUAL(s->n_pages, keep);
    CU_ASSERT_EQUAL(p->n_free, free_before + (pages_before - keep));
    for (int32_t slot = 0; slot < live; slot++) /* dense */
        CU_ASSERT(mem_page_pos(p, mem_slot_page(p, s, slot))[slot & (P - 1)] >= 0);
    int n_after = collect(p, s, after);
    CU_ASSERT_EQUAL(n_after, n_before);
    CU_ASSERT(memcmp(before, after, sizeof(entry) * (size_t)n_before) == 0);
    int n_att = attend(p, s, qv, att_after);
    CU_ASSERT_EQUAL(n_att, live);
    for (int j = 0; j < d; j++)
        CU_ASSERT(fabs(att_before[j] - att_after[j]) <= 1e-6 * fmax(1.0, fabs(att_before[j])));

    /* compacting a dense stream is a no-op; the stream still works afterwards */
    CU_ASSERT_EQUAL(tkv_compact(p, s), 0);
    CU_ASSERT_EQUAL(s->n_pages, keep);
    for (int j = 0; j < d; j++) k[j] = v[j] = 0.5f;
    CU_ASSERT_EQUAL(tkv_append(p, s, 5000, k, v, 0.f), live);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);

    free(before);
    free(after);
    mem_seq_destroy(p, q);
    CU_ASSERT_EQUAL(p->n_free, n_pool);
    tkv_pool_destroy(p);
    return moves;
}

static void test_empty_stream(void)
{
    mem_pool *p;
    mem_seq *q;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(4, 2, 3, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 1, 0, &q), KVS_OK);
    mem_stream *s = &q->streams[0];
    CU_ASSERT_EQUAL(tkv_compact(p, s), 0);
    CU_ASSERT_EQUAL(s->n_pages, 0);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    /* an empty stream with reserved pages gives them back */
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 6), KVS_OK);
    CU_ASSERT_EQUAL(s->n_pages, 2);
    CU_ASSERT_EQUAL(p->n_free, 1);
    CU_ASSERT_EQUAL(tkv_compact(p, s), 0);
    CU_ASSERT_EQUAL(s->n_pages, 0);
    CU_ASSERT_EQUAL(p->n_free, 3);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    mem_seq_destroy(p, q);
    tkv_pool_destroy(p);
    unsigned char none[1] = {0};
    CU_ASSERT_EQUAL(run_case(4, 3, 0, none, 0), 0);
}

static void test_one_token(void)
{
    unsigned char keep[1] = {0}, gone[1] = {1};
    for (int P = 1; P <= 16; P *= 2) {
        CU_ASSERT_EQUAL(run_case(P, 4, 1, keep, 0), 0);
        CU_ASSERT_EQUAL(run_case(P, 4, 1, gone, 0), 0);
        CU_ASSERT_EQUAL(run_case(P, 4, 1, keep, 3), 0);
    }
}

static void test_all_evicted(void)
{
    unsigned char all[64];
    memset(all, 1, sizeof all);
    for (int P = 1; P <= 16; P *= 2)
        for (int len = 1; len <= 40; len += 13) CU_ASSERT_EQUAL(run_case(P, 3, len, all, 0), 0);
}

static void test_holes_only_at_tail(void)
{
    unsigned char ev[64];
    for (int P = 1; P <= 16; P *= 2)
        for (int cut = 0; cut <= 33; cut += 3) {
            memset(ev, 0, sizeof ev);
            memset(ev + 33 - cut, 1, (size_t)cut);
            CU_ASSERT_EQUAL(run_case(P, 2, 33, ev, 0), 0); /* nothing to move, pages freed */
        }
}

static void test_page_boundaries(void)
{
    unsigned char ev[2 * 64 + 1];
    const int Ps[] = {1, 2, 4, 8, 16, 32, 64};
    for (size_t pi = 0; pi < sizeof Ps / sizeof *Ps; pi++) {
        int P = Ps[pi];
        int lens[4] = {P - 1, P, P + 1, 2 * P};
        for (int li = 0; li < 4; li++) {
            int len = lens[li];
            /* no holes; every other slot; first half; first slot only; random */
            memset(ev, 0, sizeof ev);
            CU_ASSERT_EQUAL(run_case(P, 5, len, ev, 0), 0);
            for (int i = 0; i < len; i++) ev[i] = (unsigned char)(i % 2 == 0);
            run_case(P, 5, len, ev, 0);
            for (int i = 0; i < len; i++) ev[i] = (unsigned char)(i < len / 2);
            run_case(P, 5, len, ev, 1);
            memset(ev, 0, sizeof ev);
            ev[0] = 1;
            CU_ASSERT_EQUAL(run_case(P, 5, len, ev, 0), len > 1 ? 1 : 0);
            for (int t = 0; t < 8; t++) {
                for (int i = 0; i < len; i++) ev[i] = (unsigned char)(rnd() % 3 == 0);
                run_case(P, 5, len, ev, (int)(rnd() % 3) * P);
            }
        }
    }
}

static void test_random_patterns(void)
{
    unsigned char ev[300];
    double t0 = kvs_now();
    int total_moves = 0;
    for (int t = 0; t < 400; t++) {
        int P = 1 << (rnd() % 6), d = 1 + (int)(rnd() % D_MAX), len = (int)(rnd() % 300);
        unsigned density = 1 + rnd() % 9; /* evict about density/10 */
        for (int i = 0; i < len; i++) ev[i] = (unsigned char)(rnd() % 10 < density);
        total_moves += run_case(P, d, len, ev, (int)(rnd() % 5));
    }
    CU_ASSERT(total_moves > 0);
    fprintf(stderr, "\n  400 random eviction patterns, %d moves, %.2f s\n", total_moves,
            kvs_now() - t0);
}

/* Repeated evict / compact / append cycles on one stream: the held set stays right. */
static void test_repeated_cycles(void)
{
    mem_pool *p;
    mem_seq *q;
    const int P = 8, d = 4;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(P, d, 16, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 1, 0, &q), KVS_OK);
    mem_stream *s = &q->streams[0];
    static entry model[128], got[128];
    int n_model = 0, next = 0;
    float k[D_MAX], v[D_MAX];
    for (int round = 0; round < 200; round++) {
        int add = (int)(rnd() % 20);
        for (int i = 0; i < add && s->n_live < 120; i++) {
            for (int j = 0; j < d; j++) {
                k[j] = rnd_unit();
                v[j] = rnd_unit();
            }
            float sc = rnd_unit();
            if (tkv_append(p, s, next, k, v, sc) < 0) break;
            entry *e = &model[n_model++];
            memset(e, 0, sizeof *e);
            e->pos = next++;
            memcpy(e->k, k, sizeof(float) * d);
            memcpy(e->v, v, sizeof(float) * d);
            e->score = sc;
        }
        int del = s->n_live ? (int)(rnd() % (unsigned)(s->n_live / 2 + 1)) : 0;
        for (int i = 0; i < del; i++) {
            int32_t slot = (int32_t)(rnd() % (unsigned)s->n_slots);
            int32_t *pp = mem_page_pos(p, mem_slot_page(p, s, slot)) + (slot & (P - 1));
            if (*pp < 0) continue;
            int32_t pos = *pp;
            CU_ASSERT_EQUAL(mem_stream_evict(p, s, slot), KVS_OK);
            for (int m = 0; m < n_model; m++)
                if (model[m].pos == pos) {
                    model[m] = model[--n_model];
                    break;
                }
        }
        if (rnd() % 2) tkv_compact(p, s);
        CU_ASSERT_EQUAL_FATAL(check1(p, q), KVS_OK);
        qsort(model, (size_t)n_model, sizeof *model, cmp_entry);
        CU_ASSERT_EQUAL_FATAL(collect(p, s, got), n_model);
        CU_ASSERT_FATAL(memcmp(got, model, sizeof(entry) * (size_t)n_model) == 0);
    }
    mem_seq_destroy(p, q);
    CU_ASSERT_EQUAL(p->n_free, 16);
    tkv_pool_destroy(p);
}

int main(void)
{
    rng_state = 0x2545f4914f6cdd1dull;
    static const kvs_test tests[] = {
        {"empty stream", test_empty_stream},
        {"one token", test_one_token},
        {"everything evicted", test_all_evicted},
        {"holes only at the tail", test_holes_only_at_tail},
        {"lengths at page boundaries", test_page_boundaries},
        {"random eviction patterns", test_random_patterns},
        {"repeated evict/compact/append cycles", test_repeated_cycles},
    };
    return kvs_test_main("memory/compaction", tests, (int)(sizeof tests / sizeof *tests));
}
