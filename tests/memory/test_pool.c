/* test_pool.c — the KV page pool, streams and sequences: creation errors, append across
 * pages, out-of-pages without side effects, all-or-nothing reserve, holes first, stats, page
 * return on destroy, random operation sequences against a shadow model with the invariant
 * checker after every step, and a check that the checker itself catches corruption. */
#include "core/common.h"
#include "memory/pool.h"
#include "test_util.h"
#include "test_kv.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fill_kv(float *k, float *v, int d, float key)
{
    for (int j = 0; j < d; j++) {
        k[j] = key + 0.25f * (float)j;
        v[j] = -key - 0.5f * (float)j;
    }
}

static int32_t append_tok(mem_pool *p, mem_stream *s, int32_t pos, float key)
{
    float k[64], v[64];
    fill_kv(k, v, tkv_head_dim(p), key);
    return tkv_append(p, s, pos, k, v, key * 0.5f);
}

static int32_t pos_at(const mem_pool *p, const mem_stream *s, int32_t slot)
{
    return mem_page_pos(p, mem_slot_page(p, s, slot))[slot & (p->page_slots - 1)];
}

static const float *k_at(const mem_pool *p, const mem_stream *s, int32_t slot)
{
    return tkv_page_k(p, mem_slot_page(p, s, slot)) +
           (size_t)(slot & (p->page_slots - 1)) * tkv_head_dim(p);
}

static const float *v_at(const mem_pool *p, const mem_stream *s, int32_t slot)
{
    return tkv_page_v(p, mem_slot_page(p, s, slot)) +
           (size_t)(slot & (p->page_slots - 1)) * tkv_head_dim(p);
}

static int check1(mem_pool *p, mem_seq *q)
{
    mem_seq *seqs[1] = {q};
    return mem_check_invariants(p, seqs, q ? 1 : 0);
}

/* ---- fixed cases ---------------------------------------------------------------------- */

static void test_create_errors(void)
{
    mem_pool *p = (mem_pool *)1;
    int bad_p[] = {0, -4, 3, 6, 12, 2048, 4096};
    for (size_t i = 0; i < sizeof bad_p / sizeof *bad_p; i++) {
        CU_ASSERT_EQUAL(tkv_pool_create(bad_p[i], 8, 4, &p), KVS_EINVAL);
        CU_ASSERT_PTR_NULL(p);
        CU_ASSERT(strlen(kvs_last_error()) > 0);
    }
    CU_ASSERT_EQUAL(tkv_pool_create(16, 0, 4, &p), KVS_EINVAL);
    CU_ASSERT_EQUAL(tkv_pool_create(16, -1, 4, &p), KVS_EINVAL);
    CU_ASSERT_EQUAL(tkv_pool_create(16, 64, 0, &p), KVS_EINVAL);
    CU_ASSERT_EQUAL(tkv_pool_create(16, 64, -3, &p), KVS_EINVAL);
    /* slot count over int32 */
    CU_ASSERT_EQUAL(tkv_pool_create(1024, 1, INT32_MAX / 512, &p), KVS_EINVAL);
    /* byte size over size_t */
    CU_ASSERT_EQUAL(tkv_pool_create(1024, INT32_MAX, 1 << 20, &p), KVS_EINVAL);
    CU_ASSERT_PTR_NULL(p);

    int ok_p[] = {1, 2, 16, 1024};
    for (size_t i = 0; i < sizeof ok_p / sizeof *ok_p; i++) {
        CU_ASSERT_EQUAL_FATAL(tkv_pool_create(ok_p[i], 3, 5, &p), KVS_OK);
        CU_ASSERT_EQUAL(p->page_slots, ok_p[i]);
        CU_ASSERT_EQUAL(1 << p->page_shift, ok_p[i]);
        CU_ASSERT_EQUAL(p->n_free, 5);
        CU_ASSERT_EQUAL(check1(p, NULL), KVS_OK);
        tkv_pool_destroy(p);
    }
    tkv_pool_destroy(NULL);

    mem_seq *q = (mem_seq *)1;
    CU_ASSERT_EQUAL(mem_seq_create(0, 2, 0, &q), KVS_EINVAL);
    CU_ASSERT_EQUAL(mem_seq_create(2, 0, 0, &q), KVS_EINVAL);
    CU_ASSERT_EQUAL(mem_seq_create(2, 2, -1, &q), KVS_EINVAL);
    CU_ASSERT_EQUAL(mem_seq_create(2, 2, INT32_MAX - 2, &q), KVS_EINVAL);
    CU_ASSERT_PTR_NULL(q);
}

static void test_page_bytes(void)
{
    /* the K/V bytes of a slot come from the format: f32 at head dim 64 is 2 * 64 * 4 */
    const size_t f32_slot = kv_store_slot_bytes(&kv_fmt_f32, &kv_fmt_f32, 64);
    const size_t f16_slot = kv_store_slot_bytes(&kv_fmt_f16, &kv_fmt_f16, 64);
    CU_ASSERT_EQUAL(f32_slot, 512u);
    CU_ASSERT_EQUAL(f16_slot, 256u);
    CU_ASSERT_EQUAL(mem_pool_page_bytes(16, f32_slot), (size_t)16 * (2 * 64 * 4 + 8));
    CU_ASSERT_EQUAL(mem_pool_page_bytes(16, f16_slot), (size_t)16 * (2 * 64 * 2 + 8));
    CU_ASSERT_EQUAL(mem_pool_page_bytes(3, f32_slot), 0);
    CU_ASSERT_EQUAL(mem_pool_page_bytes(16, 0), 0);
    size_t pb = mem_pool_page_bytes(16, f32_slot);
    CU_ASSERT_EQUAL(mem_pool_pages_for_bytes(16, f32_slot, 10 * pb + pb / 2), 10);
    CU_ASSERT_EQUAL(mem_pool_pages_for_bytes(16, f32_slot, pb - 1), 0);
    /* the same bytes hold (almost) twice the pages of f16 KV */
    CU_ASSERT_EQUAL(mem_pool_pages_for_bytes(16, f16_slot, 100 * pb), 100 * 520 / 264);
    CU_ASSERT_EQUAL(mem_pool_pages_for_bytes(5, 64, 1 << 20), KVS_EINVAL);
}

static void test_append_across_pages(void)
{
    mem_pool *p;
    mem_seq *q;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(4, 3, 8, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 2, 100, &q), KVS_OK);
    mem_stream *a = mem_seq_stream(q, 0, 0), *b = mem_seq_stream(q, 0, 1);
    CU_ASSERT_EQUAL(a->id, 100);
    CU_ASSERT_EQUAL(b->id, 101);
    for (int i = 0; i < 9; i++) {
        CU_ASSERT_EQUAL(append_tok(p, a, i, (float)i), i);
        CU_ASSERT_EQUAL(a->n_pages, i / 4 + 1);
        CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    }
    CU_ASSERT_EQUAL(append_tok(p, b, 0, 100.f), 0);
    CU_ASSERT_EQUAL(a->n_slots, 9);
    CU_ASSERT_EQUAL(a->n_live, 9);
    CU_ASSERT_EQUAL(a->n_holes, 0);
    CU_ASSERT_EQUAL(p->n_free, 8 - 3 - 1);
    for (int i = 0; i < 3; i++) CU_ASSERT_EQUAL(p->owner[a->pages[i]], 100);
    CU_ASSERT_EQUAL(p->owner[b->pages[0]], 101);
    /* pages are distinct and the data went where the slot says */
    CU_ASSERT(a->pages[0] != a->pages[1] && a->pages[1] != a->pages[2]);
    for (int i = 0; i < 9; i++) {
        CU_ASSERT_EQUAL(pos_at(p, a, i), i);
        for (int j = 0; j < 3; j++) {
            CU_ASSERT_EQUAL(k_at(p, a, i)[j], (float)i + 0.25f * j);
            CU_ASSERT_EQUAL(v_at(p, a, i)[j], -(float)i - 0.5f * j);
        }
        CU_ASSERT_EQUAL(mem_page_score(p, mem_slot_page(p, a, i))[i & 3], 0.5f * i);
    }
    /* bad input */
    CU_ASSERT_EQUAL(append_tok(p, a, -1, 0.f), KVS_EINVAL);
    CU_ASSERT_EQUAL(tkv_append(p, a, 5, NULL, NULL, 0.f), KVS_EINVAL);
    CU_ASSERT_EQUAL(a->n_live, 9);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    mem_seq_destroy(p, q);
    CU_ASSERT_EQUAL(p->n_free, 8);
    CU_ASSERT_EQUAL(check1(p, NULL), KVS_OK);
    tkv_pool_destroy(p);
}

typedef struct {
    int32_t n_pages, n_slots, n_live, n_holes, pages[64], holes[64];
} stream_snap;

static void snap(const mem_stream *s, stream_snap *o)
{
    memset(o, 0, sizeof *o);
    o->n_pages = s->n_pages;
    o->n_slots = s->n_slots;
    o->n_live = s->n_live;
    o->n_holes = s->n_holes;
    for (int i = 0; i < s->n_pages && i < 64; i++) o->pages[i] = s->pages[i];
    for (int i = 0; i < s->n_holes && i < 64; i++) o->holes[i] = s->holes[i];
}

static void test_enomem_no_change(void)
{
    mem_pool *p;
    mem_seq *q;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(4, 2, 3, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 2, 0, &q), KVS_OK);
    mem_stream *a = mem_seq_stream(q, 0, 0), *b = mem_seq_stream(q, 0, 1);
    for (int i = 0; i < 8; i++) CU_ASSERT(append_tok(p, a, i, (float)i) >= 0);
    CU_ASSERT_EQUAL(append_tok(p, b, 0, 50.f), 0);
    CU_ASSERT_EQUAL(p->n_free, 0);
    for (int i = 1; i < 4; i++) CU_ASSERT_EQUAL(append_tok(p, b, i, 50.f + i), i);

    stream_snap sa, sb, sa2, sb2;
    snap(a, &sa);
    snap(b, &sb);
    CU_ASSERT_EQUAL(append_tok(p, a, 8, 8.f), KVS_ENOMEM);
    CU_ASSERT(strlen(kvs_last_error()) > 0);
    CU_ASSERT_EQUAL(append_tok(p, b, 4, 54.f), KVS_ENOMEM);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 1), KVS_ENOMEM);
    CU_ASSERT_EQUAL(mem_stream_reserve(p, a, 1), KVS_ENOMEM);
    snap(a, &sa2);
    snap(b, &sb2);
    CU_ASSERT_EQUAL(memcmp(&sa, &sa2, sizeof sa), 0);
    CU_ASSERT_EQUAL(memcmp(&sb, &sb2, sizeof sb), 0);
    CU_ASSERT_EQUAL(p->n_free, 0);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    for (int i = 0; i < 8; i++) CU_ASSERT_EQUAL(pos_at(p, a, i), i);

    /* a hole makes room again without a page; reserve(1) needs nothing */
    CU_ASSERT_EQUAL(mem_stream_evict(p, a, 2), KVS_OK);
    CU_ASSERT_EQUAL(mem_stream_pages_needed(p, a, 1), 0);
    CU_ASSERT_EQUAL(mem_stream_pages_needed(p, a, 2), 1);
    CU_ASSERT_EQUAL(append_tok(p, a, 8, 8.f), 2);
    CU_ASSERT_EQUAL(append_tok(p, a, 9, 9.f), KVS_ENOMEM);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    mem_seq_destroy(p, q);
    CU_ASSERT_EQUAL(p->n_free, 3);
    tkv_pool_destroy(p);
}

static void test_reserve_all_or_nothing(void)
{
    mem_pool *p;
    mem_seq *q;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(4, 2, 5, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(2, 2, 0, &q), KVS_OK);
    CU_ASSERT_EQUAL(mem_seq_pages_needed(p, q, 0), 0);
    CU_ASSERT_EQUAL(mem_seq_pages_needed(p, q, 1), 4);
    CU_ASSERT_EQUAL(mem_seq_pages_needed(p, q, 5), 8);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 5), KVS_ENOMEM);
    CU_ASSERT_EQUAL(p->n_free, 5);
    for (int i = 0; i < 4; i++) CU_ASSERT_EQUAL(q->streams[i].n_pages, 0);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, -1), KVS_EINVAL);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 0), KVS_OK);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 4), KVS_OK);
    CU_ASSERT_EQUAL(p->n_free, 1);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(q->streams[i].n_pages, 1);
        CU_ASSERT_EQUAL(q->streams[i].n_slots, 0);
    }
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 4), KVS_OK); /* already there: no pages */
    CU_ASSERT_EQUAL(p->n_free, 1);
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 4; i++) CU_ASSERT(append_tok(p, &q->streams[i], t, (float)t) >= 0);
    CU_ASSERT_EQUAL(p->n_free, 1);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    /* one more token in each: 4 pages needed, 1 free */
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 1), KVS_ENOMEM);
    CU_ASSERT_EQUAL(p->n_free, 1);
    /* a hole in stream 1 and 2 lowers the need to 2 */
    CU_ASSERT_EQUAL(mem_stream_evict(p, &q->streams[1], 0), KVS_OK);
    CU_ASSERT_EQUAL(mem_stream_evict(p, &q->streams[2], 1), KVS_OK);
    CU_ASSERT_EQUAL(mem_seq_pages_needed(p, q, 1), 2);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 1), KVS_ENOMEM);
    CU_ASSERT_EQUAL(mem_stream_evict(p, &q->streams[0], 3), KVS_OK); /* tail: shrinks */
    CU_ASSERT_EQUAL(q->streams[0].n_slots, 3);
    CU_ASSERT_EQUAL(mem_seq_pages_needed(p, q, 1), 1);
    CU_ASSERT_EQUAL(mem_seq_reserve(p, q, 1), KVS_OK);
    CU_ASSERT_EQUAL(p->n_free, 0);
    for (int i = 0; i < 4; i++) CU_ASSERT(append_tok(p, &q->streams[i], 9, 9.f) >= 0);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    mem_seq_destroy(p, q);
    CU_ASSERT_EQUAL(p->n_free, 5);
    CU_ASSERT_EQUAL(check1(p, NULL), KVS_OK);
    tkv_pool_destroy(p);
}

static void test_holes_first(void)
{
    mem_pool *p;
    mem_seq *q;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(4, 1, 4, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 1, 7, &q), KVS_OK);
    mem_stream *s = &q->streams[0];
    for (int i = 0; i < 7; i++) CU_ASSERT_EQUAL(append_tok(p, s, i, (float)i), i);
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, 5), KVS_OK);
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, 1), KVS_OK);
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, 3), KVS_OK);
    CU_ASSERT_EQUAL(s->n_holes, 3);
    CU_ASSERT_EQUAL(s->holes[0], 1);
    CU_ASSERT_EQUAL(s->holes[1], 3);
    CU_ASSERT_EQUAL(s->holes[2], 5);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    /* errors: empty slot, beyond n_slots, negative */
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, 3), KVS_EINVAL);
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, 7), KVS_EINVAL);
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, -1), KVS_EINVAL);
    CU_ASSERT_EQUAL(s->n_live, 4);
    /* evicting the tail slot 6 drops trailing hole 5 too */
    CU_ASSERT_EQUAL(mem_stream_evict(p, s, 6), KVS_OK);
    CU_ASSERT_EQUAL(s->n_slots, 5);
    CU_ASSERT_EQUAL(s->n_holes, 2);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    CU_ASSERT_EQUAL(append_tok(p, s, 10, 10.f), 1);
    CU_ASSERT_EQUAL(append_tok(p, s, 11, 11.f), 3);
    CU_ASSERT_EQUAL(append_tok(p, s, 12, 12.f), 5);
    CU_ASSERT_EQUAL(append_tok(p, s, 13, 13.f), 6);
    CU_ASSERT_EQUAL(append_tok(p, s, 14, 14.f), 7);
    CU_ASSERT_EQUAL(append_tok(p, s, 15, 15.f), 8);
    CU_ASSERT_EQUAL(s->n_pages, 3);
    CU_ASSERT_EQUAL(pos_at(p, s, 1), 10);
    CU_ASSERT_EQUAL(k_at(p, s, 3)[0], 11.f);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    /* evict everything from the top down: n_slots shrinks to 0, pages stay until compact */
    for (int i = s->n_slots - 1; i >= 0; i--) CU_ASSERT_EQUAL(mem_stream_evict(p, s, i), KVS_OK);
    CU_ASSERT_EQUAL(s->n_slots, 0);
    CU_ASSERT_EQUAL(s->n_live, 0);
    CU_ASSERT_EQUAL(s->n_pages, 3);
    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    CU_ASSERT_EQUAL(tkv_compact(p, s), 0);
    CU_ASSERT_EQUAL(s->n_pages, 0);
    CU_ASSERT_EQUAL(p->n_free, 4);
    mem_seq_destroy(p, q);
    tkv_pool_destroy(p);
}

static void test_stats(void)
{
    mem_pool *p;
    mem_seq *q1, *q2;
    mem_stats st;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(8, 2, 10, &p), KVS_OK);
    mem_stats_get(p, NULL, 0, &st);
    CU_ASSERT_EQUAL(st.pages_total, 10);
    CU_ASSERT_EQUAL(st.pages_free, 10);
    CU_ASSERT_EQUAL(st.pages_used, 0);
    CU_ASSERT_EQUAL(st.fragmentation, 0.0);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 2, 0, &q1), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(2, 1, 2, &q2), KVS_OK);
    for (int i = 0; i < 10; i++) append_tok(p, &q1->streams[0], i, (float)i); /* 2 pages */
    for (int i = 0; i < 3; i++) append_tok(p, &q2->streams[1], i, (float)i);  /* 1 page */
    mem_stream_evict(p, &q1->streams[0], 4);
    mem_stream_evict(p, &q1->streams[0], 6);
    mem_seq *both[2] = {q1, q2};
    CU_ASSERT_EQUAL(mem_check_invariants(p, both, 2), KVS_OK);
    mem_stats_get(p, both, 2, &st);
    CU_ASSERT_EQUAL(st.pages_used, 3);
    CU_ASSERT_EQUAL(st.pages_free, 7);
    CU_ASSERT_EQUAL(st.slots_allocated, 13);
    CU_ASSERT_EQUAL(st.live_tokens, 11);
    CU_ASSERT_EQUAL(st.holes, 2);
    CU_ASSERT_DOUBLE_EQUAL(st.fragmentation, 1.0 - 11.0 / 24.0, 1e-12);
    CU_ASSERT_EQUAL(tkv_compact(p, &q1->streams[0]), 2);
    mem_stats_get(p, both, 2, &st);
    CU_ASSERT_EQUAL(st.pages_used, 2); /* compaction gave back q1's second page */
    CU_ASSERT_EQUAL(st.holes, 0);
    CU_ASSERT_EQUAL(st.slots_allocated, 11);
    mem_seq_destroy(p, q1);
    mem_seq_destroy(p, q2);
    mem_stats_get(p, NULL, 0, &st);
    CU_ASSERT_EQUAL(st.pages_free, 10);
    tkv_pool_destroy(p);
}

static void test_destroy_returns_pages(void)
{
    mem_pool *p;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(2, 4, 40, &p), KVS_OK);
    mem_seq *qs[4];
    for (int k = 0; k < 4; k++) {
        CU_ASSERT_EQUAL_FATAL(mem_seq_create(2, 2, 4 * k, &qs[k]), KVS_OK);
        for (int i = 0; i < 4; i++)
            for (int t = 0; t < 3 + k; t++) append_tok(p, &qs[k]->streams[i], t, (float)t);
        mem_stream_evict(p, &qs[k]->streams[0], 0);
    }
    CU_ASSERT_EQUAL(mem_check_invariants(p, qs, 4), KVS_OK);
    CU_ASSERT(p->n_free < 40);
    /* a sequence left out of the check looks like a leak */
    CU_ASSERT_EQUAL(mem_check_invariants(p, qs, 3), KVS_EINVAL);
    mem_seq_destroy(p, qs[1]);
    qs[1] = qs[3];
    CU_ASSERT_EQUAL(mem_check_invariants(p, qs, 3), KVS_OK);
    mem_seq_destroy(p, qs[0]);
    mem_seq_destroy(p, qs[2]);
    mem_seq_destroy(p, qs[3]);
    mem_seq_destroy(p, NULL);
    CU_ASSERT_EQUAL(p->n_free, 40);
    CU_ASSERT_EQUAL(mem_check_invariants(p, NULL, 0), KVS_OK);
    tkv_pool_destroy(p);
}

/* ---- the checker can fail ----------------------------------------------------------------- */

static void expect_broken(mem_pool *p, mem_seq *q, const char *what)
{
    int rc = check1(p, q);
    CU_ASSERT_EQUAL(rc, KVS_EINVAL);
    if (rc != KVS_EINVAL) fprintf(stderr, "\n  checker missed: %s\n", what);
    CU_ASSERT(strstr(kvs_last_error(), "invariant") != NULL);
}

static void test_checker_detects_corruption(void)
{
    mem_pool *p;
    mem_seq *q;
    CU_ASSERT_EQUAL_FATAL(tkv_pool_create(4, 2, 6, &p), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(mem_seq_create(1, 2, 0, &q), KVS_OK);
    mem_stream *a = &q->streams[0], *b = &q->streams[1];
    for (int i = 0; i < 7; i++) append_tok(p, a, i, (float)i);
    for (int i = 0; i < 2; i++) append_tok(p, b, i, (float)i);
    mem_stream_evict(p, a, 2);
    mem_stream_evict(p, a, 4);
    CU_ASSERT_EQUAL_FATAL(check1(p, q), KVS_OK);

    int32_t *pos2 = mem_page_pos(p, a->pages[0]) + 2;   /* a hole */
    int32_t *pos5 = mem_page_pos(p, a->pages[1]) + 1;   /* live slot 5 */
    int32_t *pos7 = mem_page_pos(p, a->pages[1]) + 3;   /* beyond n_slots */
    int32_t freepg = p->free_stack[p->n_free - 1];
    int32_t save;

    a->n_live++;                    expect_broken(p, q, "n_live too high");
    a->n_live--;
    *pos2 = 9;                      expect_broken(p, q, "hole holds a token");
    *pos2 = -1;
    *pos5 = -1;                     expect_broken(p, q, "live slot emptied behind the back");
    *pos5 = 5;
    *pos5 = -7;                     expect_broken(p, q, "pos below -1");
    *pos5 = 5;
    *pos7 = 3;                      expect_broken(p, q, "token beyond n_slots");
    *pos7 = -1;
    save = a->holes[0]; a->holes[0] = a->holes[1]; a->holes[1] = save;
    expect_broken(p, q, "holes unsorted");
    save = a->holes[0]; a->holes[0] = a->holes[1]; a->holes[1] = save;
    a->holes[1] = 3;                expect_broken(p, q, "hole list names a live slot");
    a->holes[1] = 4;
    a->n_holes--;                   expect_broken(p, q, "hole missing from the list");
    a->n_holes++;
    a->n_slots = 9;                 expect_broken(p, q, "n_slots beyond pages");
    a->n_slots = 7;
    p->owner[a->pages[1]] = 1;      expect_broken(p, q, "page owner is another stream");
    p->owner[a->pages[1]] = 0;
    p->owner[freepg] = 0;           expect_broken(p, q, "free page has an owner");
    p->owner[freepg] = -1;
    mem_page_pos(p, freepg)[1] = 4; expect_broken(p, q, "free page holds a token");
    mem_page_pos(p, freepg)[1] = -1;
    save = b->pages[0]; b->pages[0] = a->pages[0];
    expect_broken(p, q, "page in two streams");
    b->pages[0] = save;
    save = p->free_stack[0]; p->free_stack[0] = freepg;
    expect_broken(p, q, "page twice on the free stack");
    p->free_stack[0] = save;
    p->n_free--;                    expect_broken(p, q, "page lost from the free stack");
    p->n_free++;
    b->n_pages--;                   expect_broken(p, q, "page lost from a stream (leak)");
    b->n_pages++;
    b->id = a->id;                  expect_broken(p, q, "two streams share an id");
    b->id = 1;
    /* evicting slot 6 by hand without shrinking: the trailing-hole rule catches it */
    mem_page_pos(p, a->pages[1])[2] = -1; a->n_live--; a->holes[a->n_holes++] = 6;
    expect_broken(p, q, "trailing hole not shrunk");
    mem_page_pos(p, a->pages[1])[2] = 6; a->n_live++; a->n_holes--;

    CU_ASSERT_EQUAL(check1(p, q), KVS_OK);
    mem_seq_destroy(p, q);
    CU_ASSERT_EQUAL(check1(p, NULL), KVS_OK);
    tkv_pool_destroy(p);
}

/* ---- random operation sequences against a shadow model ------------------------------------ */

/* xorshift64*: fast, seeded, reproducible. */
static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static int rnd_below(int n) { return (int)(rnd() % (uint32_t)n); }

#define R_SEQS 3
#define R_MAX_STREAMS 4
#define R_MAX_TOK 512

typedef struct { int32_t pos; float key; } tok;
typedef struct { tok t[R_MAX_TOK]; int n; } shadow_stream;

static int cmp_tok(const void *a, const void *b)
{
    const tok *x = a, *y = b;
    if (x->pos != y->pos) return (x->pos > y->pos) - (x->pos < y->pos);
    return (x->key > y->key) - (x->key < y->key);
}

/* Does the stream hold exactly the shadow's multiset, with V and score matching K? */
static int stream_matches(const mem_pool *p, const mem_stream *s, shadow_stream *sh)
{
    static tok got[R_MAX_TOK];
    int n = 0;
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t pos = pos_at(p, s, slot);
        if (pos < 0) continue;
        if (n == R_MAX_TOK) return 0;
        float key = k_at(p, s, slot)[0];
        const float *k = k_at(p, s, slot), *v = v_at(p, s, slot);
        for (int j = 0; j < tkv_head_dim(p); j++)
            if (k[j] != key + 0.25f * j || v[j] != -key - 0.5f * j) return 0;
        if (mem_page_score(p, mem_slot_page(p, s, slot))[slot & (p->page_slots - 1)] !=
            key * 0.5f)
            return 0;
        got[n].pos = pos;
        got[n++].key = key;
    }
    if (n != sh->n) return 0;
    qsort(got, (size_t)n, sizeof *got, cmp_tok);
    qsort(sh->t, (size_t)n, sizeof *got, cmp_tok);
    for (int i = 0; i < n; i++)
        if (got[i].pos != sh->t[i].pos || got[i].key != sh->t[i].key) return 0;
    return 1;
}

static int random_live_slot(const mem_pool *p, const mem_stream *s)
{
    if (s->n_live == 0) return -1;
    int32_t start = rnd_below(s->n_slots);
    for (int32_t i = 0; i < s->n_slots; i++) {
        int32_t slot = (start + i) % s->n_slots;
        if (pos_at(p, s, slot) >= 0) return slot;
    }
    return -1;
}

static void test_random_ops(void)
{
    static shadow_stream sh[R_SEQS][R_MAX_STREAMS];
    const int n_runs = 5000, n_ops = 200;
    const int sizes[4] = {1, 2, 4, 8};
    rng_state = 0x9e3779b97f4a7c15ull;
    long fails = 0, ops_done = 0, enomem = 0, moves = 0;
    double t0 = kvs_now();
    for (int run = 0; run < n_runs && fails == 0; run++) {
        mem_pool *p;
        int P = sizes[rnd_below(4)], d = 1 + rnd_below(4);
        int32_t n_pages = 2 + rnd_below(48 / P + 4);
        CU_ASSERT_EQUAL_FATAL(tkv_pool_create(P, d, n_pages, &p), KVS_OK);
        mem_seq *q[R_SEQS];
        int shape[R_SEQS][2];
        for (int i = 0; i < R_SEQS; i++) {
            shape[i][0] = 1 + rnd_below(2);
            shape[i][1] = 1 + rnd_below(2);
            CU_ASSERT_EQUAL_FATAL(
                mem_seq_create(shape[i][0], shape[i][1], i * R_MAX_STREAMS, &q[i]), KVS_OK);
            for (int j = 0; j < R_MAX_STREAMS; j++) sh[i][j].n = 0;
        }
        int32_t next_pos = 0;
        float next_key = 1.f;
        for (int op = 0; op < n_ops && fails == 0; op++, ops_done++) {
            int qi = rnd_below(R_SEQS);
            mem_seq *seq = q[qi];
            int n_str = seq->n_layers * seq->n_kv_heads;
            int si = rnd_below(n_str);
            mem_stream *s = &seq->streams[si];
            shadow_stream *ss = &sh[qi][si];
            int kind = rnd_below(100);
            if (kind < 50) { /* append */
                int32_t free_before = p->n_free, slots_before = s->n_slots;
                int32_t r = append_tok(p, s, next_pos, next_key);
                if (r == KVS_ENOMEM) {
                    enomem++;
                    /* only possible with no holes, a full tail and an empty pool */
                    if (s->n_holes != 0 || free_before != 0 || p->n_free != 0 ||
                        s->n_slots != slots_before || slots_before != s->n_pages * P)
                        fails++;
                } else if (r < 0 || ss->n == R_MAX_TOK) {
                    fails++;
                } else {
                    ss->t[ss->n].pos = next_pos;
                    ss->t[ss->n++].key = next_key;
                }
                next_pos++;
                next_key += 1.f;
            } else if (kind < 75) { /* evict a random live slot */
                int slot = random_live_slot(p, s);
                if (slot >= 0) {
                    int32_t pos = pos_at(p, s, slot);
                    float key = k_at(p, s, slot)[0];
                    if (mem_stream_evict(p, s, slot) != KVS_OK) fails++;
                    int found = 0;
                    for (int i = 0; i < ss->n && !found; i++)
                        if (ss->t[i].pos == pos && ss->t[i].key == key) {
                            ss->t[i] = ss->t[--ss->n];
                            found = 1;
                        }
                    if (!found) fails++;
                    if (mem_stream_evict(p, s, slot) != KVS_EINVAL) fails++;
                } else if (mem_stream_evict(p, s, rnd_below(4)) != KVS_EINVAL) {
                    fails++;
                }
            } else if (kind < 83) { /* compact */
                int32_t live = s->n_live, high = 0, pages_before = s->n_pages;
                for (int32_t slot = live; slot < s->n_slots; slot++)
                    high += pos_at(p, s, slot) >= 0;
                int32_t free_before = p->n_free;
                int32_t m = tkv_compact(p, s);
                moves += m;
                int32_t keep = (live + P - 1) / P;
                if (m != high || s->n_slots != live || s->n_holes != 0 || s->n_pages != keep ||
                    p->n_free != free_before + pages_before - keep)
                    fails++;
            } else if (kind < 93) { /* reserve, maybe consume it at once */
                int32_t n_new = rnd_below(6);
                int64_t need = mem_seq_pages_needed(p, seq, n_new);
                int32_t free_before = p->n_free;
                int rc = mem_seq_reserve(p, seq, n_new);
                if (need <= free_before) {
                    if (rc != KVS_OK || p->n_free != free_before - need) fails++;
                    if (mem_seq_pages_needed(p, seq, n_new) != 0) fails++;
                    if (rc == KVS_OK && rnd_below(2)) {
                        for (int t = 0; t < n_new; t++)
                            for (int i = 0; i < n_str; i++) {
                                shadow_stream *st = &sh[qi][i];
                                if (st->n == R_MAX_TOK) continue;
                                if (append_tok(p, &seq->streams[i], next_pos, next_key) < 0) {
                                    fails++;
                                    continue;
                                }
                                st->t[st->n].pos = next_pos;
                                st->t[st->n++].key = next_key;
                                next_pos++;
                                next_key += 1.f;
                            }
                    }
                } else if (rc != KVS_ENOMEM || p->n_free != free_before) {
                    fails++;
                }
            } else if (kind < 96) { /* clear one stream */
                int32_t free_before = p->n_free, had = s->n_pages;
                mem_stream_clear(p, s);
                ss->n = 0;
                if (p->n_free != free_before + had || s->n_pages || s->n_slots || s->n_live)
                    fails++;
            } else { /* destroy and recreate the sequence */
                int32_t used = 0;
                for (int i = 0; i < n_str; i++) used += seq->streams[i].n_pages;
                int32_t free_before = p->n_free;
                mem_seq_destroy(p, seq);
                if (p->n_free != free_before + used) fails++;
                shape[qi][0] = 1 + rnd_below(2);
                shape[qi][1] = 1 + rnd_below(2);
                CU_ASSERT_EQUAL_FATAL(mem_seq_create(shape[qi][0], shape[qi][1],
                                                     qi * R_MAX_STREAMS, &q[qi]), KVS_OK);
                for (int j = 0; j < R_MAX_STREAMS; j++) sh[qi][j].n = 0;
            }
            if (mem_check_invariants(p, q, R_SEQS) != KVS_OK) {
                fprintf(stderr, "\n  run %d op %d: %s\n", run, op, kvs_last_error());
                fails++;
            }
            if (fails) fprintf(stderr, "\n  run %d op %d (kind %d) failed\n", run, op, kind);
        }
        for (int i = 0; i < R_SEQS && fails == 0; i++)
            for (int j = 0; j < q[i]->n_layers * q[i]->n_kv_heads; j++)
                if (!stream_matches(p, &q[i]->streams[j], &sh[i][j])) {
                    fprintf(stderr, "\n  run %d: seq %d stream %d differs from the shadow\n",
                            run, i, j);
                    fails++;
                }
        for (int i = 0; i < R_SEQS; i++) mem_seq_destroy(p, q[i]);
        if (p->n_free != p->n_pages || mem_check_invariants(p, NULL, 0) != KVS_OK) fails++;
        tkv_pool_destroy(p);
    }
    CU_ASSERT_EQUAL(fails, 0);
    CU_ASSERT(enomem > 0); /* the pools are small enough to run out */
    CU_ASSERT(moves > 0);
    fprintf(stderr, "\n  %ld random ops (%ld out-of-pages, %ld compaction moves) in %.2f s\n",
            ops_done, enomem, moves, kvs_now() - t0);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"pool creation errors", test_create_errors},
        {"page bytes", test_page_bytes},
        {"append across page boundaries", test_append_across_pages},
        {"out of pages changes nothing", test_enomem_no_change},
        {"reserve is all or nothing", test_reserve_all_or_nothing},
        {"holes are filled first", test_holes_first},
        {"stats", test_stats},
        {"destroy returns every page", test_destroy_returns_pages},
        {"checker detects corruption", test_checker_detects_corruption},
        {"random operation sequences", test_random_ops},
    };
    return kvs_test_main("memory/pool", tests, (int)(sizeof tests / sizeof *tests));
}
