/* test_cuda_memory.c — the memory kernels of the CUDA backend against their CPU twins, and
 * the twins and the backend's host bookkeeping against memory/ and policies/:
 *   slot assignment (kvs_stream_take_slot)      == mem_stream_append's choices
 *   compaction plan + copy (kvs_meta_compact)   == mem_stream_compact, bit for bit
 *   top-k selection (kref_select)               == pol_enforce_stream's victims
 *   attention statistics (kref_attn_reduce)     == the h2o / tova / snapkv observers
 * and device selection / backend resolution. Streams: empty, one token, holes everywhere,
 * page-boundary lengths, reserved-but-unused pages, holes refilled out of position order.
 * Without a GPU the device halves print "skipped: no GPU" and pass. */
#include "cuda_test_util.h"

#include "memory/policy.h"

#define N_STREAMS 12

/* Build N_STREAMS streams (one sequence, N_STREAMS layers x 1 head) with varied layouts in a
 * full host pool; deterministic for a seed. */
static void build(mem_pool **pool, mem_seq **seq, int P, int hd, uint64_t seed)
{
    t_seed(seed);
    CU_ASSERT_FATAL(tkv_pool_create(P, hd, 1024, pool) == 0);
    CU_ASSERT_FATAL(mem_seq_create(N_STREAMS, 1, 0, seq) == 0);
    static const int shape[N_STREAMS][3] = {
        {0, 0, 0}, {1, 0, 0}, {1, 100, 0}, {40, 97, 0}, {16, 50, 0}, {32, 0, 0},
        {33, 30, 2}, {200, 60, 20}, {64, 100, 5}, {17, 20, 0}, {150, 10, 0}, {48, 75, 7}};
    for (int i = 0; i < N_STREAMS; i++)
        CU_ASSERT_FATAL(t_fill_stream(*pool, &(*seq)->streams[i], 0, shape[i][0], shape[i][1],
                                      shape[i][2]) == 0);
    /* a stream with reserved but unused pages */
    CU_ASSERT_FATAL(mem_stream_reserve(*pool, &(*seq)->streams[9], 40) == 0);
}

/* ---- device query and backend selection ----------------------------------------------------- */

static void test_device_query(void)
{
    kvs_device_kind k;
    CU_ASSERT(kvs_device_parse("cpu", &k) == 0 && k == KVS_DEVICE_CPU);
    CU_ASSERT(kvs_device_parse("cuda", &k) == 0 && k == KVS_DEVICE_CUDA);
    CU_ASSERT(kvs_device_parse("auto", &k) == 0 && k == KVS_DEVICE_AUTO);
    CU_ASSERT(kvs_device_parse("gpu", &k) == KVS_EINVAL);
    CU_ASSERT(strstr(kvs_last_error(), "cpu, cuda or auto") != NULL);
    CU_ASSERT_STRING_EQUAL(kvs_device_name(KVS_DEVICE_CUDA), "cuda");
    int n = kvs_device_count();
    CU_ASSERT(n >= 0);
    char buf[256];
    kvs_device_describe(buf, sizeof buf);
    CU_ASSERT(strlen(buf) > 0);
    printf(" [%d device(s): %s]", n, buf);
    CU_ASSERT(kvs_device_resolve(KVS_DEVICE_CPU, &k) == 0 && k == KVS_DEVICE_CPU);
    CU_ASSERT(kvs_device_resolve(KVS_DEVICE_AUTO, &k) == 0);
    CU_ASSERT(k == (n > 0 ? KVS_DEVICE_CUDA : KVS_DEVICE_CPU));
    int rc = kvs_device_resolve(KVS_DEVICE_CUDA, &k);
    if (n == 0) {
        CU_ASSERT_EQUAL(rc, KVS_EUNSUPPORTED);
        CU_ASSERT(strstr(kvs_last_error(), "--device") != NULL);
    } else {
        CU_ASSERT(rc == 0 && k == KVS_DEVICE_CUDA);
    }
    /* K/V formats other than the two 16-bit types are refused before anything else */
    fwd_cuda_state *st = (fwd_cuda_state *)1;
    CU_ASSERT_EQUAL(fwd_cuda_create(NULL, 16, 0, 0.0, &kv_fmt_int8, &st), KVS_EUNSUPPORTED);
    CU_ASSERT_PTR_NULL(st);
    st = (fwd_cuda_state *)1;
    CU_ASSERT_EQUAL(fwd_cuda_create(NULL, 16, 0, 0.0, &kv_fmt_f32, &st), KVS_EUNSUPPORTED);
    CU_ASSERT_PTR_NULL(st);
#ifndef KVS_HAVE_CUDA
    CU_ASSERT_EQUAL(n, 0);
    st = (fwd_cuda_state *)1;
    CU_ASSERT_EQUAL(fwd_cuda_create(NULL, 16, 0, 0.0, NULL, &st), KVS_EUNSUPPORTED);
    CU_ASSERT_PTR_NULL(st);
    st = (fwd_cuda_state *)1;
    CU_ASSERT_EQUAL(fwd_cuda_create(NULL, 16, 0, 0.0, &kv_fmt_bf16, &st), KVS_EUNSUPPORTED);
    CU_ASSERT_PTR_NULL(st);
#else
    /* the pool's 16-bit type: both take 2 bytes an element; unknown types are refused */
    CU_ASSERT_EQUAL(mem_cuda_page_bytes(16, 64), (size_t)16 * (2 * 64 * 2 + 8));
    mem_cuda_pool *bad = (mem_cuda_pool *)1;
    CU_ASSERT_EQUAL(mem_cuda_pool_create(16, 64, 4, 2, &bad), KVS_EINVAL);
    CU_ASSERT_PTR_NULL(bad);
#endif
}

/* ---- slot assignment and the metadata pool -------------------------------------------------- */

static void test_take_slot(void)
{
    const int P = 8, hd = 4;
    mem_pool *a, *b;
    mem_seq *sa, *sb;
    CU_ASSERT_FATAL(tkv_pool_create(P, hd, 256, &a) == 0);
    CU_ASSERT_FATAL(mem_pool_create(P, 256, &b) == 0);
    CU_ASSERT(mem_check_invariants(b, NULL, 0) == 0);
    CU_ASSERT_FATAL(mem_seq_create(1, 3, 0, &sa) == 0);
    CU_ASSERT_FATAL(mem_seq_create(1, 3, 0, &sb) == 0);
    float k[4] = {1, 2, 3, 4};
    t_seed(5);
    int32_t pos = 0;
    int same = 1;
    for (int step = 0; step < 400; step++) {
        int h = (int)(t_rnd() % 3), op = (int)(t_rnd() % 10);
        mem_stream *x = &sa->streams[h], *y = &sb->streams[h];
        if (op < 6) {
            int n = 1 + (int)(t_rnd() % 5);
            CU_ASSERT_FATAL(mem_stream_reserve(a, x, n) == 0);
            CU_ASSERT_FATAL(mem_stream_reserve(b, y, n) == 0);
            for (int i = 0; i < n; i++, pos++) {
                float sc = t_unit();
                int32_t s1 = tkv_append(a, x, pos, k, k, sc);
                int32_t s2 = mem_stream_append(b, y, pos, sc);
                same &= s1 == s2 && s1 >= 0;
            }
        } else if (op < 9 && x->n_live > 0) {
            int32_t slot;
            do slot = (int32_t)(t_rnd() % (uint32_t)x->n_slots);
            while (a->pos[mem_gslot(a, x, slot)] < 0);
            CU_ASSERT(mem_stream_evict(a, x, slot) == 0);
            CU_ASSERT(mem_stream_evict(b, y, slot) == 0);
        } else {
            int32_t s1[64], d1[64];
            tkv_compact(a, x);
            CU_ASSERT(mem_stream_compact(b, y, s1, d1) >= 0);
        }
        same &= x->n_slots == y->n_slots && x->n_live == y->n_live && x->n_holes == y->n_holes &&
                x->n_pages == y->n_pages;
    }
    CU_ASSERT(same);
    CU_ASSERT(memcmp(a->pos, b->pos, (size_t)256 * P * sizeof(int32_t)) == 0);
    CU_ASSERT(memcmp(a->score, b->score, (size_t)256 * P * sizeof(float)) == 0);
    CU_ASSERT_EQUAL(a->n_free, b->n_free);
    CU_ASSERT(mem_check_invariants(b, &sb, 1) == 0);
    /* past the reserved room a slot takes a page from the pool; with none free, KVS_ENOMEM */
    mem_stream *y = &sb->streams[0];
    int32_t room = y->n_pages * P - y->n_slots + y->n_holes, pages = y->n_pages;
    for (int32_t i = 0; i < room; i++) CU_ASSERT(mem_stream_append(b, y, 100000 + i, 0) >= 0);
    CU_ASSERT(mem_stream_append(b, y, 200000, 0) >= 0);
    CU_ASSERT_EQUAL(y->n_pages, pages + 1);
    int32_t free_before = b->n_free;
    b->n_free = 0; /* pretend the pool is exhausted */
    for (int32_t i = 1; i < P; i++) CU_ASSERT(mem_stream_append(b, y, 200000 + i, 0) >= 0);
    CU_ASSERT_EQUAL(mem_stream_append(b, y, 300000, 0), KVS_ENOMEM);
    b->n_free = free_before;
    mem_seq_destroy(a, sa);
    mem_seq_destroy(b, sb);
    CU_ASSERT_EQUAL(b->n_free, b->n_pages);
    tkv_pool_destroy(a);
    tkv_pool_destroy(b);
}

/* ---- compaction -------------------------------------------------------------------------------- */

static void test_compaction(void)
{
    const int P = 16, hd = 64;
    mem_pool *a, *b;
    mem_seq *sa, *sb;
    build(&a, &sa, P, hd, 77);
    build(&b, &sb, P, hd, 77);
    CU_ASSERT_FATAL(memcmp(((float *)tkv_store(a)->k), ((float *)tkv_store(b)->k), (size_t)a->n_pages * P * hd * 4) == 0);
    /* device copy of the pool before compaction, and the device's plan of it */
#ifdef KVS_HAVE_CUDA
    mem_cuda_pool *dp = NULL;
    int32_t *d_pt = NULL, *d_src = NULL, *d_dst = NULL, *d_cnt = NULL;
    mem_cuda_stream *d_st = NULL;
    int32_t dsrc[N_STREAMS * 400], ddst[N_STREAMS * 400], dcnt[N_STREAMS];
    mem_cuda_stream ms[N_STREAMS];
    int cap_total = 0;
    if (t_gpu()) {
        CU_ASSERT_FATAL(mem_cuda_pool_create(P, hd, a->n_pages, t_dtype(), &dp) == 0);
        CU_ASSERT_EQUAL(dp->dtype, t_dtype());
        CU_ASSERT(kvs_cuda_pool_upload(dp, a, tkv_store(a)) == 0);
        int32_t pt[1024];
        int n_pt = 0;
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sa->streams[i];
            memset(&ms[i], 0, sizeof ms[i]);
            ms[i].pt_off = n_pt;
            ms[i].n_slots = s->n_slots;
            ms[i].n_live = s->n_live;
            ms[i].out_off = cap_total;
            cap_total += s->n_slots - s->n_live;
            if (s->n_pages) memcpy(pt + n_pt, s->pages, (size_t)s->n_pages * 4);
            n_pt += s->n_pages;
        }
        d_pt = kvs_cuda_malloc(n_pt * 4);
        d_st = kvs_cuda_malloc(sizeof ms);
        d_src = kvs_cuda_malloc((cap_total + 1) * 4);
        d_dst = kvs_cuda_malloc((cap_total + 1) * 4);
        d_cnt = kvs_cuda_malloc(sizeof dcnt);
        CU_ASSERT(kvs_cuda_upload(d_pt, pt, n_pt * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_st, ms, sizeof ms) == 0);
        CU_ASSERT(mem_cuda_compact_plan(dp, d_pt, d_st, N_STREAMS, d_src, d_dst, d_cnt, NULL) == 0);
        CU_ASSERT(kvs_cuda_download(dsrc, d_src, cap_total * 4) == 0);
        CU_ASSERT(kvs_cuda_download(ddst, d_dst, cap_total * 4) == 0);
        CU_ASSERT(kvs_cuda_download(dcnt, d_cnt, sizeof dcnt) == 0);
    }
#endif
    int plans_ok = 1, dev_plan_ok = 1;
    int32_t all_src[N_STREAMS * 400], all_dst[N_STREAMS * 400];
    int n_all = 0;
    for (int i = 0; i < N_STREAMS; i++) {
        mem_stream *x = &sa->streams[i], *y = &sb->streams[i];
        /* the twin's plan, before anything moves */
        int32_t ps[400], pd[400];
        int32_t np = kref_compact_plan(b, y->pages, y->n_slots, y->n_live, ps, pd);
        int32_t gs[400], gd[400];
        int32_t moves_a = tkv_compact(a, x);
        int32_t moves_b = mem_stream_compact(b, y, gs, gd);
        plans_ok &= moves_a == moves_b && np == moves_b;
        for (int32_t m = 0; m < moves_b; m++) {
            all_src[n_all] = gs[m];
            all_dst[n_all++] = gd[m];
        }
#ifdef KVS_HAVE_CUDA
        if (t_gpu()) {
            dev_plan_ok &= dcnt[i] == np;
            for (int32_t m = 0; m < np && m < dcnt[i]; m++)
                dev_plan_ok &= dsrc[ms[i].out_off + m] == gs[m] && ddst[ms[i].out_off + m] == gd[m];
            for (int32_t m = np; m < ms[i].n_slots - ms[i].n_live; m++)
                dev_plan_ok &= dsrc[ms[i].out_off + m] == -1;
        }
#endif
        (void)ps; (void)pd;
    }
    CU_ASSERT(plans_ok);
    /* host half moved pos/score; the K/V copy is the caller's (device: k_slot_copy) */
    kref_slot_copy(b, tkv_store(b), all_src, all_dst, n_all, KREF_COPY_KV);
    CU_ASSERT(memcmp(a->pos, b->pos, (size_t)a->n_pages * P * 4) == 0);
    int live_same = 1;
    for (int i = 0; i < N_STREAMS; i++) {
        mem_stream *x = &sa->streams[i], *y = &sb->streams[i];
        live_same &= x->n_slots == y->n_slots && x->n_live == y->n_live && x->n_holes == 0 &&
                     y->n_holes == 0 && x->n_pages == y->n_pages &&
                     (!x->n_pages || !memcmp(x->pages, y->pages, (size_t)x->n_pages * 4));
        for (int32_t slot = 0; slot < x->n_slots; slot++) {
            int32_t g = mem_gslot(a, x, slot);
            live_same &= !memcmp(((float *)tkv_store(a)->k) + (size_t)g * hd, ((float *)tkv_store(b)->k) + (size_t)g * hd, hd * 4) &&
                         !memcmp(((float *)tkv_store(a)->v) + (size_t)g * hd, ((float *)tkv_store(b)->v) + (size_t)g * hd, hd * 4) &&
                         a->score[g] == b->score[g];
        }
    }
    CU_ASSERT(live_same);
    CU_ASSERT_EQUAL(a->n_free, b->n_free);
    CU_ASSERT(memcmp(a->free_stack, b->free_stack, (size_t)a->n_free * 4) == 0);
    CU_ASSERT(mem_check_invariants(b, &sb, 1) == 0);
    printf(" [%d moves", n_all);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        CU_ASSERT(dev_plan_ok);
        /* the device's plan applied by the batched copy == mem_stream_compact's result */
        CU_ASSERT(mem_cuda_slot_copy(dp, d_src, d_dst, cap_total,
                                     MEM_CUDA_COPY_KV | MEM_CUDA_COPY_META | MEM_CUDA_CLEAR_SRC,
                                     NULL) == 0);
        mem_pool *c;
        CU_ASSERT_FATAL(tkv_pool_create(P, hd, a->n_pages, &c) == 0);
        CU_ASSERT(kvs_cuda_pool_download(dp, c, tkv_store(c)) == 0);
        int dev_same = 1;
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *x = &sa->streams[i];
            for (int32_t slot = 0; slot < x->n_slots; slot++) {
                int32_t g = mem_gslot(a, x, slot);
                dev_same &= !memcmp(((float *)tkv_store(a)->k) + (size_t)g * hd, ((float *)tkv_store(c)->k) + (size_t)g * hd, hd * 4) &&
                            !memcmp(((float *)tkv_store(a)->v) + (size_t)g * hd, ((float *)tkv_store(c)->v) + (size_t)g * hd, hd * 4) &&
                            a->pos[g] == c->pos[g] && a->score[g] == c->score[g];
            }
        }
        for (int m = 0; m < n_all; m++) dev_same &= c->pos[all_src[m]] == -1;
        CU_ASSERT(dev_same);
        printf(", device plan+copy %s", dev_same && dev_plan_ok ? "ok" : "DIFFERS");
        tkv_pool_destroy(c);
        kvs_cuda_free(d_pt); kvs_cuda_free(d_st); kvs_cuda_free(d_src); kvs_cuda_free(d_dst);
        kvs_cuda_free(d_cnt);
        mem_cuda_pool_destroy(dp);
    } else {
        printf(", skipped: no GPU");
    }
#else
    (void)dev_plan_ok;
    printf(", skipped: no GPU");
#endif
    printf("]");
    mem_seq_destroy(a, sa);
    mem_seq_destroy(b, sb);
    tkv_pool_destroy(a);
    tkv_pool_destroy(b);
}

T_PER_TYPE(test_compaction)

/* ---- selection ----------------------------------------------------------------------------- */

/* Scores with ties, NaN, -0/+0. */
static void odd_scores(mem_pool *pool, mem_seq *seq)
{
    for (int i = 0; i < N_STREAMS; i++) {
        mem_stream *s = &seq->streams[i];
        for (int32_t slot = 0; slot < s->n_slots; slot++) {
            int32_t g = mem_gslot(pool, s, slot);
            uint32_t r = t_rnd() % 20;
            pool->score[g] = r == 0 ? NAN : r == 1 ? -0.0f : r == 2 ? 0.0f
                           : r < 8 ? (float)(t_rnd() % 4) : t_unit();
        }
    }
}

typedef struct { int32_t n_keep, sink, window, cur_off; float tau; } sel_params;

static void test_select(void)
{
    const int P = 16, hd = 8;
    static const sel_params params[] = {
        {10, 0, 0, 0, 0.0f}, {0, 4, 8, 0, 0.5f}, {5, 2, 0, 3, -0.1f}, {1000, 1, 1, 0, 2.5f},
        {3, 40, 0, 0, 0.0f}, {0, 0, 16, 0, 1.0f}, {7, 3, 5, 10, 0.0f}};
    const int n_par = (int)(sizeof params / sizeof params[0]);
    int same_topk = 1, same_thr = 1, dev_ok = 1;
    int total_victims = 0;
    for (int pi = 0; pi < n_par; pi++) {
        const sel_params *sp = &params[pi];
        mem_pool *a;
        mem_seq *sa;
        build(&a, &sa, P, hd, 1000 + pi);
        odd_scores(a, sa);
        int32_t victims[N_STREAMS][400], nv[N_STREAMS], tv[N_STREAMS][400], nt[N_STREAMS];
        int32_t curpos[N_STREAMS];
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sa->streams[i];
            int32_t maxpos = -1;
            for (int32_t slot = 0; slot < s->n_slots; slot++)
                maxpos = KVS_MAX(maxpos, a->pos[mem_gslot(a, s, slot)]);
            curpos[i] = maxpos + sp->cur_off;
            nv[i] = kref_select(a, s->pages, s->n_slots, sp->n_keep, sp->sink, sp->window,
                                curpos[i], victims[i]);
            nt[i] = kref_select_threshold(a, s->pages, s->n_slots, sp->sink, sp->window,
                                          curpos[i], sp->tau, tv[i]);
            total_victims += nv[i];
        }
#ifdef KVS_HAVE_CUDA
        if (t_gpu()) {
            mem_cuda_pool *dp;
            CU_ASSERT_FATAL(mem_cuda_pool_create(P, hd, a->n_pages, t_dtype(), &dp) == 0);
            CU_ASSERT(kvs_cuda_pool_upload(dp, a, tkv_store(a)) == 0);
            mem_cuda_stream ms[N_STREAMS];
            int32_t pt[1024], n_pt = 0, out = 0;
            for (int i = 0; i < N_STREAMS; i++) {
                mem_stream *s = &sa->streams[i];
                ms[i] = (mem_cuda_stream){n_pt, s->n_slots, s->n_live, out, sp->n_keep, sp->sink,
                                          sp->window, curpos[i], sp->tau, 0, 0};
                if (s->n_pages) memcpy(pt + n_pt, s->pages, (size_t)s->n_pages * 4);
                n_pt += s->n_pages;
                out += s->n_slots;
            }
            int32_t *d_pt = kvs_cuda_malloc(n_pt * 4 + 4), *d_v = kvs_cuda_malloc(out * 4 + 4);
            int32_t *d_c = kvs_cuda_malloc(N_STREAMS * 4);
            mem_cuda_stream *d_ms = kvs_cuda_malloc(sizeof ms);
            int32_t *gv = malloc((size_t)(out + 1) * 4), gc[N_STREAMS];
            CU_ASSERT(kvs_cuda_upload(d_pt, pt, n_pt * 4) == 0);
            CU_ASSERT(kvs_cuda_upload(d_ms, ms, sizeof ms) == 0);
            /* threshold first (no marking), then top-k with marking */
            CU_ASSERT(mem_cuda_select(dp, d_pt, d_ms, N_STREAMS, 1, 0, d_v, d_c, NULL) == 0);
            CU_ASSERT(kvs_cuda_download(gv, d_v, out * 4) == 0);
            CU_ASSERT(kvs_cuda_download(gc, d_c, sizeof gc) == 0);
            for (int i = 0; i < N_STREAMS; i++) {
                dev_ok &= gc[i] == nt[i];
                for (int j = 0; j < nt[i] && j < gc[i]; j++) dev_ok &= gv[ms[i].out_off + j] == tv[i][j];
            }
            CU_ASSERT(mem_cuda_select(dp, d_pt, d_ms, N_STREAMS, 0, 1, d_v, d_c, NULL) == 0);
            CU_ASSERT(kvs_cuda_download(gv, d_v, out * 4) == 0);
            CU_ASSERT(kvs_cuda_download(gc, d_c, sizeof gc) == 0);
            int32_t *dpos = malloc((size_t)a->n_pages * P * 4);
            CU_ASSERT(kvs_cuda_download(dpos, dp->pos, (size_t)a->n_pages * P * 4) == 0);
            for (int i = 0; i < N_STREAMS; i++) {
                dev_ok &= gc[i] == nv[i];
                for (int j = 0; j < nv[i] && j < gc[i]; j++) {
                    dev_ok &= gv[ms[i].out_off + j] == victims[i][j];
                    dev_ok &= dpos[mem_gslot(a, &sa->streams[i], victims[i][j])] == -1;
                }
            }
            free(dpos); free(gv);
            kvs_cuda_free(d_pt); kvs_cuda_free(d_v); kvs_cuda_free(d_c); kvs_cuda_free(d_ms);
            mem_cuda_pool_destroy(dp);
        }
#endif
        /* threshold twin by the definition */
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sa->streams[i];
            int32_t k = 0, want[400];
            int32_t live = 0, poss[400];
            for (int32_t slot = 0; slot < s->n_slots; slot++)
                if (a->pos[mem_gslot(a, s, slot)] >= 0) poss[live++] = a->pos[mem_gslot(a, s, slot)];
            if (sp->sink < live) {
                for (int x = 1; x < live; x++)
                    for (int y = x; y > 0 && poss[y - 1] > poss[y]; y--) {
                        int32_t z = poss[y]; poss[y] = poss[y - 1]; poss[y - 1] = z;
                    }
                int32_t sink_max = sp->sink > 0 ? poss[sp->sink - 1] : -1;
                for (int32_t slot = 0; slot < s->n_slots; slot++) {
                    int32_t g = mem_gslot(a, s, slot), p = a->pos[g];
                    if (p < 0 || p <= sink_max || (sp->window > 0 && p > curpos[i] - sp->window))
                        continue;
                    float sc = isnan(a->score[g]) ? -INFINITY : a->score[g];
                    if (sc < sp->tau) want[k++] = slot;
                }
            }
            same_thr &= k == nt[i] && !memcmp(want, tv[i], (size_t)k * 4);
        }
        /* top-k twin == the eviction driver (pol_enforce_stream, default selection) */
        pol_model_info mi = {N_STREAMS, 1, 1, hd, NULL};
        pol_instance *inst;
        char args[64];
        snprintf(args, sizeof args, "sink=%d,window=%d", sp->sink, sp->window);
        CU_ASSERT_FATAL(pol_instance_create("knorm", args, &mi, &inst) == 0);
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sa->streams[i];
            int32_t before[400], n0 = s->n_slots;
            for (int32_t slot = 0; slot < n0; slot++) before[slot] = a->pos[mem_gslot(a, s, slot)];
            int32_t n = pol_enforce_stream(inst, a, s, i, 0, curpos[i], sp->n_keep);
            int32_t k = 0, ev[400];
            for (int32_t slot = 0; slot < n0; slot++)
                if (before[slot] >= 0 && a->pos[mem_gslot(a, s, slot)] < 0) ev[k++] = slot;
            same_topk &= n == nv[i] && k == nv[i] && !memcmp(ev, victims[i], (size_t)k * 4);
        }
        pol_instance_destroy(inst);
        mem_seq_destroy(a, sa);
        tkv_pool_destroy(a);
    }
    CU_ASSERT(same_topk);
    CU_ASSERT(same_thr);
    printf(" [%d victims", total_victims);
    if (t_gpu()) {
        CU_ASSERT(dev_ok);
        printf(", device %s]", dev_ok ? "same" : "DIFFERS");
    } else {
        printf(", skipped: no GPU]");
    }
}

/* ---- marking and clearing ------------------------------------------------------------------ */

static void test_mark_clear(void)
{
    const int P = 16, hd = 8;
    mem_pool *a;
    mem_seq *sa;
    build(&a, &sa, P, hd, 5150);
    int32_t marks[64], pages[3] = {sa->streams[7].pages[1], sa->streams[10].pages[0],
                                   sa->streams[5].pages[1]};
    mem_stream *s = &sa->streams[7];
    for (int i = 0; i < 64; i++) marks[i] = mem_gslot(a, s, (int32_t)(t_rnd() % (uint32_t)s->n_slots));
    int32_t *pos0 = malloc((size_t)a->n_pages * P * 4);
    memcpy(pos0, a->pos, (size_t)a->n_pages * P * 4);
    kref_mark(a, marks, 64);
    kref_clear_pages(a, pages, 3);
    int ok = 1;
    for (int32_t g = 0; g < a->n_pages * P; g++) {
        int want_empty = 0;
        for (int i = 0; i < 64; i++) want_empty |= marks[i] == g;
        for (int i = 0; i < 3; i++) want_empty |= g / P == pages[i];
        ok &= a->pos[g] == (want_empty ? -1 : pos0[g]);
    }
    CU_ASSERT(ok);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        mem_cuda_pool *dp;
        CU_ASSERT_FATAL(mem_cuda_pool_create(P, hd, a->n_pages, t_dtype(), &dp) == 0);
        memcpy(a->pos, pos0, (size_t)a->n_pages * P * 4);
        CU_ASSERT(kvs_cuda_pool_upload(dp, a, tkv_store(a)) == 0);
        kref_mark(a, marks, 64);
        kref_clear_pages(a, pages, 3);
        int32_t *d_m = kvs_cuda_malloc(sizeof marks), *d_p = kvs_cuda_malloc(sizeof pages);
        CU_ASSERT(kvs_cuda_upload(d_m, marks, sizeof marks) == 0);
        CU_ASSERT(kvs_cuda_upload(d_p, pages, sizeof pages) == 0);
        CU_ASSERT(mem_cuda_mark(dp, d_m, 64, NULL) == 0);
        CU_ASSERT(mem_cuda_clear_pages(dp, d_p, 3, NULL) == 0);
        int32_t *got = malloc((size_t)a->n_pages * P * 4);
        CU_ASSERT(kvs_cuda_download(got, dp->pos, (size_t)a->n_pages * P * 4) == 0);
        CU_ASSERT(memcmp(got, a->pos, (size_t)a->n_pages * P * 4) == 0);
        free(got);
        kvs_cuda_free(d_m); kvs_cuda_free(d_p);
        mem_cuda_pool_destroy(dp);
    } else {
        printf(" skipped: no GPU ");
    }
#else
    printf(" skipped: no GPU ");
#endif
    free(pos0);
    mem_seq_destroy(a, sa);
    tkv_pool_destroy(a);
}

/* ---- attention statistics ----------------------------------------------------------------- */

static void test_attn_reduce(void)
{
    const int P = 16, hd = 8, NQ = 5;
    mem_pool *a, *b;
    mem_seq *sa, *sb;
    build(&a, &sa, P, hd, 99);
    build(&b, &sb, P, hd, 99);
    pol_model_info mi = {N_STREAMS, 1, 1, hd, NULL};
    pol_instance *h2o, *tova, *snap;
    CU_ASSERT_FATAL(pol_instance_create("h2o", "", &mi, &h2o) == 0);
    CU_ASSERT_FATAL(pol_instance_create("tova", "", &mi, &tova) == 0);
    CU_ASSERT_FATAL(pol_instance_create("snapkv", "kernel=1,window=4", &mi, &snap) == 0);
    double worst_h2o = 0.0, worst_mean = 0.0;
    int tova_same = 1;
    float *probs_all[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++) {
        mem_stream *x = &sa->streams[i], *y = &sb->streams[i];
        float *probs = calloc((size_t)NQ * (x->n_slots + 1), sizeof *probs);
        probs_all[i] = probs;
        for (int q = 0; q < NQ; q++)
            for (int32_t slot = 0; slot < x->n_slots; slot++)
                if (a->pos[mem_gslot(a, x, slot)] >= 0) probs[q * x->n_slots + slot] = (t_unit() + 1.0f) / 8;
        /* h2o */
        CU_ASSERT(pol_observe_stream(h2o, a, x, i, 0, probs, NQ) == 0);
        kref_attn_reduce(b, y->pages, y->n_slots, probs, NQ, KREF_STATS_SUM, NULL);
        for (int32_t slot = 0; slot < x->n_slots; slot++) {
            int32_t g = mem_gslot(a, x, slot);
            if (a->pos[g] < 0) continue;
            /* the policy adds query by query, the twin (like the kernel) adds the column sum:
             * the same up to float rounding of values of order 1 */
            double d = fabs(a->score[g] - b->score[g]);
            if (d > worst_h2o) worst_h2o = d;
        }
        /* tova */
        CU_ASSERT(pol_observe_stream(tova, a, x, i, 0, probs, NQ) == 0);
        kref_attn_reduce(b, y->pages, y->n_slots, probs, NQ, KREF_STATS_LAST, NULL);
        for (int32_t slot = 0; slot < x->n_slots; slot++) {
            int32_t g = mem_gslot(a, x, slot);
            if (a->pos[g] >= 0) tova_same &= a->score[g] == b->score[g];
        }
        /* snapkv with kernel 1: the mean over the queries */
        float *mean = calloc((size_t)x->n_slots + 1, sizeof *mean);
        CU_ASSERT(pol_observe_stream(snap, a, x, i, 0, probs, NQ) == 0);
        kref_attn_reduce(b, y->pages, y->n_slots, probs, NQ, KREF_STATS_MEAN, mean);
        for (int32_t slot = 0; slot < x->n_slots; slot++) {
            int32_t g = mem_gslot(a, x, slot);
            if (a->pos[g] < 0) continue;
            double d = fabs(a->score[g] - mean[slot]) / (fabs(mean[slot]) + 1e-3);
            if (d > worst_mean) worst_mean = d;
        }
        free(mean);
    }
    CU_ASSERT(worst_h2o < 2e-6);
    CU_ASSERT(tova_same);
    CU_ASSERT(worst_mean < 1e-6);
    printf(" [h2o |d| %.1e, mean rel %.1e", worst_h2o, worst_mean);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        /* device: same three reductions over a fresh copy of the pool */
        mem_pool *c;
        mem_seq *sc;
        build(&c, &sc, P, hd, 99);
        mem_cuda_pool *dp;
        CU_ASSERT_FATAL(mem_cuda_pool_create(P, hd, c->n_pages, t_dtype(), &dp) == 0);
        CU_ASSERT(kvs_cuda_pool_upload(dp, c, tkv_store(c)) == 0);
        mem_cuda_stream ms[N_STREAMS];
        int32_t pt[1024], n_pt = 0, out = 0;
        int64_t poff = 0;
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sc->streams[i];
            ms[i] = (mem_cuda_stream){n_pt, s->n_slots, s->n_live, out, 0, 0, 0, 0, 0.0f, NQ, poff};
            if (s->n_pages) memcpy(pt + n_pt, s->pages, (size_t)s->n_pages * 4);
            n_pt += s->n_pages;
            out += s->n_slots;
            poff += (int64_t)NQ * s->n_slots;
        }
        float *probs = malloc((size_t)(poff + 1) * 4);
        for (int i = 0; i < N_STREAMS; i++)
            memcpy(probs + ms[i].probs_off, probs_all[i], (size_t)NQ * ms[i].n_slots * 4);
        int32_t *d_pt = kvs_cuda_malloc(n_pt * 4 + 4);
        mem_cuda_stream *d_ms = kvs_cuda_malloc(sizeof ms);
        float *d_pr = kvs_cuda_malloc((poff + 1) * 4), *d_out = kvs_cuda_malloc(out * 4 + 4);
        CU_ASSERT(kvs_cuda_upload(d_pt, pt, n_pt * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_ms, ms, sizeof ms) == 0);
        CU_ASSERT(kvs_cuda_upload(d_pr, probs, poff * 4) == 0);
        int ok = 1;
        float *want_mean = malloc((size_t)out * 4 + 4), *got = malloc((size_t)out * 4 + 4);
        /* twins on c, kernels on dp, in the same order */
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sc->streams[i];
            kref_attn_reduce(c, s->pages, s->n_slots, probs_all[i], NQ, KREF_STATS_SUM, NULL);
            kref_attn_reduce(c, s->pages, s->n_slots, probs_all[i], NQ, KREF_STATS_MEAN,
                             want_mean + ms[i].out_off);
        }
        CU_ASSERT(mem_cuda_attn_reduce(dp, d_pt, d_ms, N_STREAMS, d_pr, MEM_CUDA_STATS_SUM, NULL, NULL) == 0);
        CU_ASSERT(mem_cuda_attn_reduce(dp, d_pt, d_ms, N_STREAMS, d_pr, MEM_CUDA_STATS_MEAN, d_out, NULL) == 0);
        CU_ASSERT(kvs_cuda_download(got, d_out, out * 4) == 0);
        ok &= t_max_abs_diff(got, want_mean, out) < 1e-7;
        float *dscore = malloc((size_t)c->n_pages * P * 4);
        CU_ASSERT(kvs_cuda_download(dscore, dp->score, (size_t)c->n_pages * P * 4) == 0);
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sc->streams[i];
            for (int32_t slot = 0; slot < s->n_slots; slot++) {
                int32_t g = mem_gslot(c, s, slot);
                if (c->pos[g] >= 0) ok &= fabsf(dscore[g] - c->score[g]) <= 1e-6f * (fabsf(c->score[g]) + 1e-3f);
            }
        }
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sc->streams[i];
            kref_attn_reduce(c, s->pages, s->n_slots, probs_all[i], NQ, KREF_STATS_LAST, NULL);
        }
        CU_ASSERT(mem_cuda_attn_reduce(dp, d_pt, d_ms, N_STREAMS, d_pr, MEM_CUDA_STATS_LAST, NULL, NULL) == 0);
        CU_ASSERT(kvs_cuda_download(dscore, dp->score, (size_t)c->n_pages * P * 4) == 0);
        for (int i = 0; i < N_STREAMS; i++) {
            mem_stream *s = &sc->streams[i];
            for (int32_t slot = 0; slot < s->n_slots; slot++) {
                int32_t g = mem_gslot(c, s, slot);
                if (c->pos[g] >= 0) ok &= dscore[g] == c->score[g];
            }
        }
        CU_ASSERT(ok);
        printf(", device %s", ok ? "same" : "DIFFERS");
        free(dscore); free(want_mean); free(got); free(probs);
        kvs_cuda_free(d_pt); kvs_cuda_free(d_ms); kvs_cuda_free(d_pr); kvs_cuda_free(d_out);
        mem_cuda_pool_destroy(dp);
        mem_seq_destroy(c, sc);
        tkv_pool_destroy(c);
    } else {
        printf(", skipped: no GPU");
    }
#else
    printf(", skipped: no GPU");
#endif
    printf("]");
    for (int i = 0; i < N_STREAMS; i++) free(probs_all[i]);
    pol_instance_destroy(h2o); pol_instance_destroy(tova); pol_instance_destroy(snap);
    mem_seq_destroy(a, sa); mem_seq_destroy(b, sb);
    tkv_pool_destroy(a); tkv_pool_destroy(b);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"device query, --device parsing and resolution", test_device_query},
        {"slot assignment == mem_stream_append; metadata pool invariants", test_take_slot},
        {"compaction plan + copy == mem_stream_compact (device: plan and batched copy; fp16)",
         test_compaction_f16},
        {"compaction plan + copy == mem_stream_compact (device: plan and batched copy; bf16)",
         test_compaction_bf16},
        {"top-k selection == pol_enforce_stream; threshold selection", test_select},
        {"eviction marking and page clearing", test_mark_clear},
        {"attention statistics == h2o / tova / snapkv observers", test_attn_reduce},
    };
    return kvs_test_main("cuda_memory", tests, sizeof tests / sizeof tests[0]);
}
