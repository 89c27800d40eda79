/* test_policies.c — each built-in policy on hand-made keys where the right victims are known:
 * knorm evicts the largest norms, streaming keeps sinks + most recent, random is
 * deterministic per seed and uniform over the unprotected, qfilters evicts the lowest <k,u>
 * with a filters file written here (round trip, every corruption refused), Q-Filters
 * calibration recovers a planted direction with the right sign and averages GQA groups, h2o
 * accumulates and tova overwrites attention, snapkv pools with kernel 5; every policy keeps
 * the sinks and the window and leaves the streams' invariants valid. */
#include "core/common.h"
#include "memory/policy.h"
#include "policies/qfilters.h"
#include "memory/pool.h"
#include "test_util.h"
#include "test_kv.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define D 8

static const pol_model_info MI = { 2, 4, 2, D, "tiny-test" };

/* ---- helpers ----------------------------------------------------------------------------- */

static uint64_t rng = 88172645463325252ull;
static double urand(void) /* [0, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}
static double nrand(void)
{
    double u = urand(), v = urand();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static pol_instance *inst_new(const char *name, const char *args)
{
    pol_instance *inst = NULL;
    int rc = pol_instance_create(name, args, &MI, &inst);
    if (rc) fprintf(stderr, "\n  %s %s: %s\n", name, args, kvs_last_error());
    CU_ASSERT_FATAL(rc == KVS_OK);
    return inst;
}

static int expect_error(int rc, const char *needle)
{
    if (rc >= 0) { fprintf(stderr, "\n  expected an error containing \"%s\"\n", needle); return 0; }
    if (!strstr(kvs_last_error(), needle)) {
        fprintf(stderr, "\n  error \"%s\" lacks \"%s\"\n", kvs_last_error(), needle);
        return 0;
    }
    return 1;
}

/* Write n keys [n][D] at positions pos0.. into stream (layer, kv_head), scored by the
 * instance like the forward does. */
static void write_keys(pol_instance *inst, mem_pool *pool, mem_seq *q, int layer, int kv_head,
                       int32_t pos0, const float *keys, int n)
{
    int32_t pos[256];
    float sc[256];
    CU_ASSERT_FATAL(n <= 256);
    for (int i = 0; i < n; i++) pos[i] = pos0 + i;
    pol_score_keys(inst, layer, kv_head, keys, pos, n, sc);
    for (int i = 0; i < n; i++)
        CU_ASSERT_FATAL(tkv_append(pool, mem_seq_stream(q, layer, kv_head), pos[i],
                                          keys + (size_t)i * D, keys + (size_t)i * D, sc[i]) >= 0);
}

static int is_live(const mem_pool *pool, const mem_stream *s, int32_t pos)
{
    for (int32_t slot = 0; slot < s->n_slots; slot++)
        if (mem_page_pos(pool, mem_slot_page(pool, s, slot))[slot & (pool->page_slots - 1)] == pos)
            return 1;
    return 0;
}

static void tmp_path(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "%s/kvs_test_%s_%d.kvsqf", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             tag, (int)getpid());
}

/* ---- knorm, streaming, full, random ------------------------------------------------------ */

static void test_knorm(void)
{
    mem_pool *pool = NULL;
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 32, &pool) == KVS_OK);
    CU_ASSERT_FATAL(mem_seq_create(2, 2, 0, &q) == KVS_OK);
    /* Key i has norm norms[i]; the 3 largest (pos 2, 5, 9) must go. */
    const float norms[12] = { 1, 2, 9, 1.5f, 3, 8, 2.5f, 0.5f, 4, 7, 1, 2 };
    float keys[12][D];
    for (int i = 0; i < 12; i++) {
        double v[D], n2 = 0;
        for (int j = 0; j < D; j++) { v[j] = nrand(); n2 += v[j] * v[j]; }
        for (int j = 0; j < D; j++) keys[i][j] = (float)(v[j] / sqrt(n2) * norms[i]);
    }
    pol_instance *inst = inst_new("knorm", "budget=9");
    write_keys(inst, pool, q, 1, 1, 0, &keys[0][0], 12);
    mem_stream *s = mem_seq_stream(q, 1, 1);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 11, POL_AT_STEP), 3);
    for (int i = 0; i < 12; i++) CU_ASSERT_EQUAL(is_live(pool, s, i), i != 2 && i != 5 && i != 9);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

/* A pool of 16 pages of 4 slots and one sequence of 2 layers x 2 KV heads; and their end. */
static void two_layer_seq(mem_pool **pool, mem_seq **q)
{
    *pool = NULL;
    *q = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, pool) == KVS_OK);
    CU_ASSERT_FATAL(mem_seq_create(2, 2, 0, q) == KVS_OK);
}

static void two_layer_end(pol_instance *inst, mem_pool *pool, mem_seq *q)
{
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

/* layers=1: a policy evicts in layer 1 only; layer 0 keeps every key. */
static void test_layers_option(void)
{
    pol_instance *inst = inst_new("knorm", "budget=4,layers=1");
    float keys[8][D] = { { 0 } };
    for (int i = 0; i < 8; i++) keys[i][0] = (float)(i + 1);
    mem_pool *pool;
    mem_seq *q;
    two_layer_seq(&pool, &q);
    write_keys(inst, pool, q, 0, 0, 0, &keys[0][0], 8);
    write_keys(inst, pool, q, 1, 0, 0, &keys[0][0], 8);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 7, POL_AT_STEP), 4);
    for (int i = 0; i < 8; i++) {
        CU_ASSERT(is_live(pool, mem_seq_stream(q, 0, 0), i));
        CU_ASSERT_EQUAL(is_live(pool, mem_seq_stream(q, 1, 0), i), i < 4); /* smallest norms */
    }
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_streaming(void)
{
    mem_pool *pool = NULL;
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 64, &pool) == KVS_OK);
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    float keys[40][D];
    for (int i = 0; i < 40; i++)
        for (int j = 0; j < D; j++) keys[i][j] = (float)nrand();
    /* Prefill of 20 then ratio: sinks 0..3 + the 4 most recent. */
    pol_instance *inst = inst_new("streaming", "ratio=0.6");
    write_keys(inst, pool, q, 0, 0, 0, &keys[0][0], 20);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 19, POL_AT_PREFILL_END), 12);
    for (int i = 0; i < 20; i++)
        CU_ASSERT_EQUAL(is_live(pool, q->streams, i), i < 4 || i >= 16);
    pol_instance_destroy(inst);
    mem_stream_clear(pool, q->streams);

    /* Decode: one token per step with budget 8 (sink 2): after every step sinks + the most
     * recent 6; compaction keeps the stream at 2 pages. */
    inst = inst_new("streaming", "budget=8,sink=2");
    for (int t = 0; t < 40; t++) {
        write_keys(inst, pool, q, 0, 0, t, keys[t], 1);
        CU_ASSERT(pol_on_event(inst, pool, q, t, POL_AT_STEP) >= 0);
        tkv_compact(pool, q->streams);
        CU_ASSERT_EQUAL(q->streams[0].n_live, t + 1 < 8 ? t + 1 : 8);
        CU_ASSERT(q->streams[0].n_pages <= 2);
    }
    for (int i = 0; i < 40; i++)
        CU_ASSERT_EQUAL(is_live(pool, q->streams, i), i < 2 || i >= 34);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_full(void)
{
    mem_pool *pool = NULL;
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, &pool) == KVS_OK);
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    float keys[16][D] = { { 0 } };
    pol_instance *inst = inst_new("full", "budget=2");
    write_keys(inst, pool, q, 0, 0, 0, &keys[0][0], 16);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 15, POL_AT_STEP), 0);
    CU_ASSERT_EQUAL(pol_enforce_seq(inst, pool, q, 15, POL_AT_PREFILL_END), 0);
    CU_ASSERT_EQUAL(q->streams[0].n_live, 16);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

/* Live positions of a 1x1 sequence as a bitmask (positions < 64). */
static uint64_t live_mask(const mem_pool *pool, const mem_seq *q)
{
    uint64_t m = 0;
    for (int i = 0; i < 64; i++) if (is_live(pool, q->streams, i)) m |= 1ull << i;
    return m;
}

static uint64_t random_run(mem_pool *pool, const char *args)
{
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    float keys[48][D] = { { 0 } };
    pol_instance *inst = inst_new("random", args);
    /* Written in two chunks, to show the scores do not depend on call order. */
    write_keys(inst, pool, q, 0, 0, 0, &keys[0][0], 20);
    write_keys(inst, pool, q, 0, 0, 20, &keys[20][0], 28);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 47, POL_AT_STEP), 32);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    uint64_t m = live_mask(pool, q);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    return m;
}

static void test_random(void)
{
    mem_pool *pool = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, &pool) == KVS_OK);
    uint64_t a = random_run(pool, "budget=16,sink=2,window=4,seed=7");
    uint64_t b = random_run(pool, "budget=16,sink=2,window=4,seed=7");
    uint64_t c = random_run(pool, "budget=16,sink=2,window=4,seed=8");
    CU_ASSERT_EQUAL(a, b);
    CU_ASSERT_NOT_EQUAL(a, c);
    /* Many seeds: protected never touched; every other position sometimes kept, sometimes not,
     * about 10/42 of the time (budget 16 - 6 protected, out of 42 candidates). */
    int kept[48] = { 0 };
    const int runs = 200;
    for (int sd = 0; sd < runs; sd++) {
        char args[64];
        snprintf(args, sizeof args, "budget=16,sink=2,window=4,seed=%d", sd);
        uint64_t m = random_run(pool, args);
        for (int i = 0; i < 48; i++) kept[i] += (int)((m >> i) & 1);
    }
    for (int i = 0; i < 48; i++) {
        if (i < 2 || i >= 44) {
            CU_ASSERT_EQUAL(kept[i], runs);
        } else {
            CU_ASSERT(kept[i] > 20 && kept[i] < 80); /* mean 47.6, sd ~6 */
        }
    }
    tkv_pool_destroy(pool);
}

/* ---- qfilters: files --------------------------------------------------------------------- */

/* CRC-32 (IEEE) for forging files in the corruption tests. */
static uint32_t crc32_ref(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

static void make_filters(qf_filters *f, float *u)
{
    memset(f, 0, sizeof *f);
    snprintf(f->model_name, sizeof f->model_name, "%s", MI.model_name);
    f->n_layers = MI.n_layers;
    f->n_kv_heads = MI.n_kv_heads;
    f->head_dim = D;
    f->n_heads = MI.n_heads;
    f->n_tokens = 40960;
    f->u = u;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    unsigned char *b = malloc(1 << 16);
    *n = fread(b, 1, 1 << 16, fp);
    fclose(fp);
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    CU_ASSERT_EQUAL(fwrite(b, 1, n, fp), n);
    fclose(fp);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Load a modified copy of the good file; expect refusal with `needle`. fix_crc: recompute the
 * checksum after the change (so that deeper checks are reached). */
static void expect_refused(const char *path, const unsigned char *good, size_t n, size_t off,
                           const void *bytes, size_t len, size_t new_size, int fix_crc,
                           const pol_model_info *mi, const char *needle)
{
    unsigned char *b = calloc(new_size + 16, 1);
    memcpy(b, good, n < new_size ? n : new_size);
    if (bytes) memcpy(b + off, bytes, len);
    if (fix_crc) put32(b + new_size - 4, crc32_ref(b, new_size - 4));
    spit(path, b, new_size);
    qf_filters *f = NULL;
    int rc = qf_filters_load(path, mi, &f);
    if (!expect_error(rc, needle)) CU_FAIL("corrupt filters file not refused as expected");
    CU_ASSERT_PTR_NULL(f);
    free(b);
}

static void test_qfilters_file(void)
{
    char path[512], bad[512];
    tmp_path(path, sizeof path, "good");
    tmp_path(bad, sizeof bad, "bad");
    float u[2 * 2 * D];
    for (int i = 0; i < 2 * 2 * D; i++) u[i] = (float)nrand();
    qf_filters f;
    make_filters(&f, u);
    CU_ASSERT_EQUAL_FATAL(qf_filters_save(path, &f), KVS_OK);

    qf_filters *g = NULL;
    CU_ASSERT_EQUAL_FATAL(qf_filters_load(path, &MI, &g), KVS_OK);
    CU_ASSERT_STRING_EQUAL(g->model_name, "tiny-test");
    CU_ASSERT_EQUAL(g->n_layers, 2);
    CU_ASSERT_EQUAL(g->n_kv_heads, 2);
    CU_ASSERT_EQUAL((g)->head_dim, D);
    CU_ASSERT_EQUAL(g->n_heads, 4);
    CU_ASSERT_EQUAL(g->n_tokens, 40960);
    CU_ASSERT_EQUAL(memcmp(g->u, u, sizeof u), 0);
    qf_filters_free(g);
    /* No model info: no checks; unknown model name: geometry only. */
    CU_ASSERT_EQUAL(qf_filters_load(path, NULL, &g), KVS_OK);
    qf_filters_free(g);
    pol_model_info anon = MI;
    anon.model_name = NULL;
    CU_ASSERT_EQUAL(qf_filters_load(path, &anon, &g), KVS_OK);
    qf_filters_free(g);

    size_t n;
    unsigned char *good = slurp(path, &n);
    /* Layout: 40-byte header, "tiny-test" (9) + 3 padding, 2*2*8 floats, CRC. */
    CU_ASSERT_EQUAL_FATAL(n, 40 + 12 + 4 * 32 + 4);
    const size_t data = 52;
    uint32_t v;

    /* Truncations at every interesting length, and an extra byte. */
    static const size_t cuts[] = { 0, 1, 8, 39 };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
        expect_refused(bad, good, n, 0, NULL, 0, cuts[i], 0, &MI, "is truncated");
    expect_refused(bad, good, n, 0, NULL, 0, 40, 0, &MI, "is truncated");
    expect_refused(bad, good, n, 0, NULL, 0, data + 10, 0, &MI, "is truncated");
    expect_refused(bad, good, n, 0, NULL, 0, n - 1, 0, &MI, "is truncated");
    expect_refused(bad, good, n, 0, NULL, 0, n + 1, 0, &MI, "1 extra bytes");
    /* Header fields. */
    expect_refused(bad, good, n, 0, "KVSQF2", 6, n, 1, &MI, "bad magic");
    expect_refused(bad, good, n, 0, "GGUF", 4, n, 0, &MI, "bad magic");
    v = 2; expect_refused(bad, good, n, 8, &v, 4, n, 1, &MI, "format version 2");
    v = 0; expect_refused(bad, good, n, 12, &v, 4, n, 1, &MI, "corrupt header");
    v = 3; expect_refused(bad, good, n, 24, &v, 4, n, 1, &MI, "corrupt header"); /* Hq % Hkv */
    v = 100000; expect_refused(bad, good, n, 20, &v, 4, n, 1, &MI, "corrupt header");
    v = 300; expect_refused(bad, good, n, 28, &v, 4, n, 1, &MI, "corrupt header");
    v = 3; expect_refused(bad, good, n, 12, &v, 4, n, 1, &MI, "is truncated"); /* L 2 -> 3 */
    v = 1; expect_refused(bad, good, n, 12, &v, 4, n, 1, &MI, "64 extra bytes"); /* L 2 -> 1 */
    unsigned char one = 1;
    expect_refused(bad, good, n, 49, &one, 1, n, 1, &MI, "non-zero padding");
    /* Bits flipped in the data, the name or the checksum. */
    unsigned char x = good[data + 5] ^ 0x10;
    expect_refused(bad, good, n, data + 5, &x, 1, n, 0, &MI, "checksum mismatch");
    x = good[41] ^ 1;
    expect_refused(bad, good, n, 41, &x, 1, n, 0, &MI, "checksum mismatch");
    x = good[n - 1] ^ 0x80;
    expect_refused(bad, good, n, n - 1, &x, 1, n, 0, &MI, "checksum mismatch");
    /* A NaN or infinity in the data, with a valid checksum. */
    float nanv = NAN, infv = INFINITY;
    expect_refused(bad, good, n, data + 4 * 7, &nanv, 4, n, 1, &MI, "non-finite value");
    expect_refused(bad, good, n, data, &infv, 4, n, 1, &MI, "non-finite value");
    /* A good file for another model or geometry. */
    pol_model_info other = MI;
    other.model_name = "SmolLM2-135M";
    expect_refused(bad, good, n, 0, NULL, 0, n, 0, &other,
                   "calibrated for model 'tiny-test', not 'SmolLM2-135M'");
    const int dims[4][4] = { { 3, 4, 2, D }, { 2, 4, 4, D }, { 2, 4, 2, 16 }, { 2, 8, 2, D } };
    for (int i = 0; i < 4; i++) {
        other = MI;
        other.n_layers = dims[i][0]; other.n_heads = dims[i][1];
        other.n_kv_heads = dims[i][2]; other.head_dim = dims[i][3];
        expect_refused(bad, good, n, 0, NULL, 0, n, 0, &other, "does not fit the model");
    }
    /* Missing file, a directory. */
    CU_ASSERT(expect_error(qf_filters_load("/nonexistent/x.kvsqf", &MI, &g), "cannot open"));
    CU_ASSERT(expect_error(qf_filters_load("/", &MI, &g), "filters file /"));
    /* The policy reports the loader's message. */
    spit(bad, good, 20);
    char args[600];
    snprintf(args, sizeof args, "ratio=0.5,filters=%s", bad);
    pol_instance *inst = NULL;
    CU_ASSERT(expect_error(pol_instance_create("qfilters", args, &MI, &inst),
                           "policy qfilters: filters file"));
    CU_ASSERT(expect_error(pol_instance_create("qfilters", "filters=a,when=decode,x=1", &MI, &inst),
                           "unknown option 'x'"));
    /* Saving bad geometry is refused too. */
    f.n_heads = 3;
    CU_ASSERT(expect_error(qf_filters_save(bad, &f), "bad filters geometry"));
    make_filters(&f, u);
    CU_ASSERT(expect_error(qf_filters_save("/nonexistent/dir/f.kvsqf", &f),
                           "cannot write filters file"));
    free(good);
    unlink(path);
    unlink(bad);
}

/* qfilters evicts the lowest <k, u[layer][kv_head]>, with a different u per head. */
static void test_qfilters_scoring(void)
{
    char path[512];
    tmp_path(path, sizeof path, "score");
    float u[2][2][D] = { { { 0 } } };
    u[1][0][0] = 1.0f;  /* layer 1, kv head 0: keep large k[0] */
    u[1][1][3] = -2.0f; /* layer 1, kv head 1: keep small (negative) k[3] */
    qf_filters f;
    make_filters(&f, &u[0][0][0]);
    CU_ASSERT_EQUAL_FATAL(qf_filters_save(path, &f), KVS_OK);
    char args[600];
    snprintf(args, sizeof args, "budget=4,filters=%s", path);
    pol_instance *inst = inst_new("qfilters", args);

    float keys[8][D] = { { 0 } };
    const float a[8] = { 5, -1, 3, 0.5f, 2, -4, 4, 1 }; /* k[0] */
    const float b[8] = { 1, 2, -3, 4, -5, 0, -1, 3 };   /* k[3] */
    for (int i = 0; i < 8; i++) { keys[i][0] = a[i]; keys[i][3] = b[i]; }
    float sc[8];
    int32_t pos[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    pol_score_keys(inst, 1, 1, &keys[0][0], pos, 8, sc);
    for (int i = 0; i < 8; i++) CU_ASSERT_DOUBLE_EQUAL(sc[i], -2.0 * b[i], 1e-6);

    mem_pool *pool = NULL;
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, &pool) == KVS_OK);
    CU_ASSERT_FATAL(mem_seq_create(2, 2, 0, &q) == KVS_OK);
    write_keys(inst, pool, q, 1, 0, 0, &keys[0][0], 8);
    write_keys(inst, pool, q, 1, 1, 0, &keys[0][0], 8);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 7, POL_AT_STEP), 8);
    /* head 0 keeps the 4 largest k[0]: pos 0, 6, 2, 4; head 1 the 4 smallest k[3]: 4, 2, 6, 5 */
    for (int i = 0; i < 8; i++) {
        CU_ASSERT_EQUAL(is_live(pool, mem_seq_stream(q, 1, 0), i),
                        i == 0 || i == 2 || i == 4 || i == 6);
        CU_ASSERT_EQUAL(is_live(pool, mem_seq_stream(q, 1, 1), i),
                        i == 2 || i == 4 || i == 5 || i == 6);
    }
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
    unlink(path);
}

/* recent_layers=1: layer 0 keeps its newest keys (score = position), layer 1 still scores
 * <k, u>; out-of-range values are refused. */
static void test_qfilters_recent_layers(void)
{
    char path[512];
    tmp_path(path, sizeof path, "recent");
    float u[2][2][D] = { { { 0 } } };
    u[0][0][0] = 1.0f;
    u[1][0][0] = 1.0f;
    qf_filters f;
    make_filters(&f, &u[0][0][0]);
    CU_ASSERT_EQUAL_FATAL(qf_filters_save(path, &f), KVS_OK);
    char args[600];
    snprintf(args, sizeof args, "budget=4,filters=%s,recent_layers=1", path);
    pol_instance *inst = inst_new("qfilters", args);
    float keys[8][D] = { { 0 } };
    const float a[8] = { 5, -1, 3, 0.5f, 2, -4, 4, 1 };
    for (int i = 0; i < 8; i++) keys[i][0] = a[i];
    int32_t pos[8] = { 10, 11, 12, 13, 14, 15, 16, 17 };
    float sc[8];
    pol_score_keys(inst, 0, 0, &keys[0][0], pos, 8, sc);
    for (int i = 0; i < 8; i++) CU_ASSERT_DOUBLE_EQUAL(sc[i], pos[i], 1e-6);
    pol_score_keys(inst, 1, 0, &keys[0][0], pos, 8, sc);
    for (int i = 0; i < 8; i++) CU_ASSERT_DOUBLE_EQUAL(sc[i], a[i], 1e-6);

    mem_pool *pool;
    mem_seq *q;
    two_layer_seq(&pool, &q);
    write_keys(inst, pool, q, 0, 0, 0, &keys[0][0], 8);
    write_keys(inst, pool, q, 1, 0, 0, &keys[0][0], 8);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 7, POL_AT_STEP), 8);
    for (int i = 0; i < 8; i++) {
        CU_ASSERT_EQUAL(is_live(pool, mem_seq_stream(q, 0, 0), i), i >= 4);  /* newest 4 */
        CU_ASSERT_EQUAL(is_live(pool, mem_seq_stream(q, 1, 0), i),           /* largest k[0] */
                        i == 0 || i == 2 || i == 4 || i == 6);
    }
    two_layer_end(inst, pool, q);
    pol_instance *bad = NULL;
    snprintf(args, sizeof args, "filters=%s,recent_layers=3", path);
    CU_ASSERT(expect_error(pol_instance_create("qfilters", args, &MI, &bad), "recent_layers"));
    snprintf(args, sizeof args, "filters=%s,recent_layers=x", path);
    CU_ASSERT(expect_error(pol_instance_create("qfilters", args, &MI, &bad), "recent_layers"));
    unlink(path);
}

/* ---- qfilters: calibration --------------------------------------------------------------- */

static void unit_vec(double *v, int d)
{
    double n = 0;
    for (int i = 0; i < d; i++) { v[i] = nrand(); n += v[i] * v[i]; }
    for (int i = 0; i < d; i++) v[i] /= sqrt(n);
}

/* n queries q = a u + noise, with a ~ N(mu, 1) (or the two-point law below), noise N(0, s^2)
 * in every dimension; added in chunks. */
static void feed(qf_calib *c, int layer, int head, const double *u, int d, int n, double mu,
                 double s, int two_point)
{
    float *q = malloc((size_t)100 * d * sizeof *q);
    int done = 0;
    while (done < n) {
        int m = KVS_MIN(100, n - done);
        for (int i = 0; i < m; i++) {
            double a = two_point ? (urand() < 0.7 ? 1.0 : -10.0) : mu + nrand();
            for (int j = 0; j < d; j++) q[i * d + j] = (float)(a * u[j] + s * nrand());
        }
        CU_ASSERT_EQUAL(qf_calib_add_queries(c, layer, head, q, m), KVS_OK);
        done += m;
    }
    free(q);
}

static double cosine(const float *f, const double *u, int d, double *norm)
{
    double dot = 0, nf = 0;
    for (int i = 0; i < d; i++) { dot += f[i] * u[i]; nf += (double)f[i] * f[i]; }
    if (norm) *norm = sqrt(nf);
    return dot / sqrt(nf);
}

static void test_calibration(void)
{
    enum { d = 32 };
    /* G = 1: the filters are the per-head vectors. L=2, 3 heads:
     *   (0,0): a ~ N(2,1), mostly positive -> +u;   (0,1): a ~ N(-2,1) -> -u;
     *   (0,2): a = +1 (70%) or -10 (30%): the mean projects negatively but most queries
     *          positively -> +u by the majority rule;
     *   (1,*): a ~ N(1.5, 1) with more noise. */
    double u[2][3][d];
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 3; h++) unit_vec(u[l][h], d);
    qf_calib *c = NULL;
    CU_ASSERT_EQUAL_FATAL(qf_calib_create(2, 3, 3, d, 1024, &c), KVS_OK);
    feed(c, 0, 0, u[0][0], d, 3000, 2.0, 0.3, 0);
    feed(c, 0, 1, u[0][1], d, 3000, -2.0, 0.3, 0);
    feed(c, 0, 2, u[0][2], d, 3000, 0, 0.3, 1);
    for (int h = 0; h < 3; h++) feed(c, 1, h, u[1][h], d, 3000, 1.5, 0.5, 0);
    CU_ASSERT_EQUAL(qf_calib_n_tokens(c), 3000);
    float filters[2][3][d], frac[2][3];
    CU_ASSERT_EQUAL_FATAL(qf_calib_finish(c, &filters[0][0][0], &frac[0][0]), KVS_OK);
    const double sign[2][3] = { { 1, -1, 1 }, { 1, 1, 1 } };
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 3; h++) {
            double nf, cs = cosine(filters[l][h], u[l][h], d, &nf);
            CU_ASSERT(cs * sign[l][h] > 0.99);
            CU_ASSERT_DOUBLE_EQUAL(nf, 1.0, 1e-5); /* unit vectors when G = 1 */
            CU_ASSERT(frac[l][h] > 0.6f && frac[l][h] <= 1.0f);
            if (cs * sign[l][h] <= 0.99)
                fprintf(stderr, "\n  layer %d head %d: cosine %f\n", l, h, cs);
        }
    /* P(N(2,1) > 0) = 0.977; the two-point head: 0.7. */
    CU_ASSERT(fabsf(frac[0][0] - 0.977f) < 0.03f);
    CU_ASSERT(fabsf(frac[0][2] - 0.70f) < 0.05f);
    qf_calib_destroy(c);

    /* GQA: 4 query heads, 2 KV heads (G = 2, consecutive heads share). Heads 0, 1 follow
     * different directions: filter 0 = their mean (not renormalised). Heads 2, 3 share one:
     * filter 1 is that unit vector. */
    double w[3][d];
    for (int i = 0; i < 3; i++) unit_vec(w[i], d);
    CU_ASSERT_EQUAL_FATAL(qf_calib_create(1, 4, 2, d, 0, &c), KVS_OK);
    feed(c, 0, 0, w[0], d, 2000, 2.0, 0.1, 0);
    feed(c, 0, 1, w[1], d, 2000, 2.0, 0.1, 0);
    feed(c, 0, 2, w[2], d, 2000, 2.0, 0.1, 0);
    feed(c, 0, 3, w[2], d, 2000, 2.0, 0.1, 0);
    float fg[2][d];
    CU_ASSERT_EQUAL_FATAL(qf_calib_finish(c, &fg[0][0], NULL), KVS_OK);
    double mean[d], err = 0, nf;
    for (int i = 0; i < d; i++) mean[i] = 0.5 * (w[0][i] + w[1][i]);
    for (int i = 0; i < d; i++) err += (fg[0][i] - mean[i]) * (fg[0][i] - mean[i]);
    CU_ASSERT(sqrt(err) < 0.02);
    CU_ASSERT(cosine(fg[1], w[2], d, &nf) > 0.999);
    CU_ASSERT_DOUBLE_EQUAL(nf, 1.0, 1e-3); /* the mean of two near-equal unit vectors */
    /* Calibrated filters round-trip through a file into the policy. */
    char path[512];
    tmp_path(path, sizeof path, "calib");
    qf_filters f = { .n_layers = 1, .n_kv_heads = 2, .head_dim = d, .n_heads = 4,
                     .n_tokens = qf_calib_n_tokens(c), .u = &fg[0][0] };
    snprintf(f.model_name, sizeof f.model_name, "calib-model");
    CU_ASSERT_EQUAL(qf_filters_save(path, &f), KVS_OK);
    pol_model_info mi = { 1, 4, 2, d, "calib-model" };
    char args[600];
    snprintf(args, sizeof args, "filters=%s", path);
    pol_instance *inst = NULL;
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("qfilters", args, &mi, &inst), KVS_OK);
    float key[d], s;
    int32_t p0 = 0;
    for (int i = 0; i < d; i++) key[i] = (float)w[2][i];
    pol_score_keys(inst, 0, 1, key, &p0, 1, &s);
    CU_ASSERT(s > 0.99f);
    pol_instance_destroy(inst);
    unlink(path);
    qf_calib_destroy(c);

    /* Errors: out of range, a head without queries, a non-finite query, bad geometry. */
    CU_ASSERT_EQUAL_FATAL(qf_calib_create(1, 2, 1, 4, 8, &c), KVS_OK);
    float q4[4] = { 1, 2, 3, 4 };
    CU_ASSERT(expect_error(qf_calib_add_queries(c, 1, 0, q4, 1), "out of range"));
    CU_ASSERT(expect_error(qf_calib_add_queries(c, 0, 2, q4, 1), "out of range"));
    CU_ASSERT_EQUAL(qf_calib_add_queries(c, 0, 0, q4, 1), KVS_OK);
    float f4[4];
    CU_ASSERT(expect_error(qf_calib_finish(c, f4, NULL), "no queries for layer 0 query head 1"));
    q4[2] = NAN;
    CU_ASSERT(expect_error(qf_calib_add_queries(c, 0, 1, q4, 1), "not finite"));
    qf_calib_destroy(c);
    CU_ASSERT(expect_error(qf_calib_create(1, 3, 2, 4, 0, &c), "bad calibration geometry"));
    CU_ASSERT_PTR_NULL(c);
}

/* ---- attention policies ------------------------------------------------------------------ */

/* 1x1 sequence with tokens at positions order[0..n) written in that slot order. */
static mem_seq *seq_with(mem_pool *pool, pol_instance *inst, const int32_t *order, int n)
{
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    float k[D] = { 0 }, sc;
    for (int i = 0; i < n; i++) {
        pol_score_keys(inst, 0, 0, k, &order[i], 1, &sc);
        CU_ASSERT_FATAL(tkv_append(pool, q->streams, order[i], k, k, sc) >= 0);
    }
    return q;
}

static float score_of(const mem_pool *pool, const mem_stream *s, int32_t pos)
{
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t pg = mem_slot_page(pool, s, slot), off = slot & (pool->page_slots - 1);
        if (mem_page_pos(pool, pg)[off] == pos) return mem_page_score(pool, pg)[off];
    }
    return NAN;
}

static void test_h2o(void)
{
    mem_pool *pool = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, &pool) == KVS_OK);
    pol_instance *inst = inst_new("h2o", "budget=3,window=1");
    const int32_t order[5] = { 0, 1, 2, 3, 4 };
    mem_seq *q = seq_with(pool, inst, order, 5);
    CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, 3), 0.0, 0);
    const float p1[2][5] = { { 0.5f, 0.1f, 0.2f, 0.2f, 0 }, { 0.1f, 0.1f, 0.5f, 0.1f, 0.2f } };
    const float p2[1][5] = { { 0.1f, 0.6f, 0.1f, 0.1f, 0.1f } };
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &p1[0][0], 2), KVS_OK);
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &p2[0][0], 1), KVS_OK);
    const float want[5] = { 0.7f, 0.8f, 0.8f, 0.4f, 0.3f };
    for (int i = 0; i < 5; i++)
        CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, i), want[i], 1e-6);
    /* Budget 3, window 1 (pos 4 protected): evict pos 3 (0.4) then pos 0 (0.7). */
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 4, POL_AT_STEP), 2);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(is_live(pool, q->streams, i), i == 1 || i == 2 || i == 4);
    /* Holes are left alone by later observations. */
    const float p3[1][5] = { { 1, 1, 1, 1, 1 } };
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &p3[0][0], 1), KVS_OK);
    CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, 1), 1.8, 1e-6);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_tova(void)
{
    mem_pool *pool = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, &pool) == KVS_OK);
    pol_instance *inst = inst_new("tova", "budget=3");
    const int32_t order[5] = { 0, 1, 2, 3, 4 };
    mem_seq *q = seq_with(pool, inst, order, 5);
    const float p1[2][5] = { { 0.9f, 0.1f, 0, 0, 0 }, { 0.1f, 0.1f, 0.5f, 0.1f, 0.2f } };
    const float p2[2][5] = { { 0.2f, 0.2f, 0.2f, 0.2f, 0.2f }, { 0.3f, 0.05f, 0.15f, 0.4f, 0.1f } };
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &p1[0][0], 2), KVS_OK);
    for (int i = 0; i < 5; i++) CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, i), p1[1][i], 0);
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &p2[0][0], 2), KVS_OK);
    for (int i = 0; i < 5; i++) CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, i), p2[1][i], 0);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 4, POL_AT_STEP), 2); /* 0.05 and 0.1 go */
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(is_live(pool, q->streams, i), i == 0 || i == 2 || i == 3);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_snapkv(void)
{
    mem_pool *pool = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 16, &pool) == KVS_OK);
    pol_instance *inst = inst_new("snapkv", "ratio=0.5,window=2");
    /* 10 tokens written out of position order; window = positions 8, 9. */
    const int32_t order[10] = { 3, 0, 9, 5, 1, 7, 2, 8, 6, 4 };
    mem_seq *q = seq_with(pool, inst, order, 10);
    /* Two window queries; mean attention per position (pre-window 0..7):
     *   mean = { 0.10, 0, 0, 0.50, 0, 0, 0.05, 0.05 }, window: 8 -> 0.1, 9 -> 0.2 */
    const float mean_by_pos[10] = { 0.10f, 0, 0, 0.50f, 0, 0, 0.05f, 0.05f, 0.1f, 0.2f };
    float probs[2][10];
    for (int s = 0; s < 10; s++) {
        float m = mean_by_pos[order[s]];
        probs[0][s] = m * 0.5f;  /* the two queries split differently; the mean is m */
        probs[1][s] = m * 1.5f;
    }
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &probs[0][0], 2), KVS_OK);
    /* Pooled (kernel 5, zero padded, / 5) over positions 0..7. */
    double want[10];
    for (int i = 0; i < 8; i++) {
        double s = 0;
        for (int t = i - 2; t <= i + 2; t++) if (t >= 0 && t < 8) s += mean_by_pos[t];
        want[i] = s / 5;
    }
    want[8] = 0.1; want[9] = 0.2;
    for (int i = 0; i < 10; i++)
        CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, i), want[i], 1e-6);
    /* e.g. position 1 = (0.10 + 0 + 0 + 0.50) / 5 = 0.12 */
    CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, 1), 0.12, 1e-6);
    /* Ratio 0.5 at prefill end keeps 5: the window (8, 9) + the best 3 pooled of 0..7:
     * pooled = {.02, .12, .12, .10, .11, .12, .02, .02} -> 1, 2, 5 stay. */
    CU_ASSERT(pol_wants(inst, POL_AT_PREFILL_END));
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 9, POL_AT_PREFILL_END), 5);
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(is_live(pool, q->streams, i), i == 1 || i == 2 || i == 5 || i >= 8);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);

    /* kernel=1: the plain mean. */
    inst = inst_new("snapkv", "budget=4,kernel=1,window=2");
    q = seq_with(pool, inst, order, 10);
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, q->streams, 0, 0, &probs[0][0], 2), KVS_OK);
    for (int i = 0; i < 10; i++)
        CU_ASSERT_DOUBLE_EQUAL(score_of(pool, q->streams, i), mean_by_pos[i], 1e-6);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

/* ---- every policy: protection and invariants --------------------------------------------- */

static void test_every_policy_protects(void)
{
    char path[512], qf_args[700];
    tmp_path(path, sizeof path, "all");
    float u[2 * 2 * D];
    for (int i = 0; i < 2 * 2 * D; i++) u[i] = (float)nrand();
    qf_filters f;
    make_filters(&f, u);
    CU_ASSERT_EQUAL_FATAL(qf_filters_save(path, &f), KVS_OK);
    snprintf(qf_args, sizeof qf_args, "budget=6,window=3,sink=2,when=prefill,filters=%s", path);
    static const char *names[] = { "full", "random", "streaming", "knorm", "qfilters",
                                   "snapkv", "h2o", "tova" };
    const int T = 30;
    for (int k = 0; k < 8; k++) {
        for (int trial = 0; trial < 5; trial++) {
            mem_pool *pool = NULL;
            mem_seq *q = NULL;
            CU_ASSERT_FATAL(tkv_pool_create(4, D, 64, &pool) == KVS_OK);
            CU_ASSERT_FATAL(mem_seq_create(2, 2, 0, &q) == KVS_OK);
            const char *args = k == 4 ? qf_args : "budget=6,window=3,sink=2,when=prefill";
            pol_instance *inst = inst_new(names[k], args);
            float keys[30][D];
            for (int l = 0; l < 2; l++)
                for (int h = 0; h < 2; h++) {
                    for (int i = 0; i < T; i++)
                        for (int j = 0; j < D; j++) keys[i][j] = (float)(nrand() * (1 + i % 3));
                    write_keys(inst, pool, q, l, h, 0, &keys[0][0], T);
                    if (inst->vt->flags & POL_NEEDS_ATTENTION) {
                        /* random attention rows for the last 3 queries (causal) */
                        float probs[3][T];
                        for (int r = 0; r < 3; r++) {
                            double sum = 0;
                            for (int j = 0; j < T; j++) {
                                probs[r][j] = j <= T - 3 + r ? (float)urand() : 0.0f;
                                sum += probs[r][j];
                            }
                            for (int j = 0; j < T; j++) probs[r][j] = (float)(probs[r][j] / sum);
                        }
                        CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, mem_seq_stream(q, l, h), l,
                                                           h, &probs[0][0], 3), KVS_OK);
                    }
                }
            int64_t ev = pol_on_event(inst, pool, q, T - 1, POL_AT_PREFILL_END);
            CU_ASSERT_EQUAL(ev, k == 0 ? 0 : 4 * (T - 6));
            for (int i = 0; i < 4; i++) {
                mem_stream *s = &q->streams[i];
                CU_ASSERT_EQUAL(s->n_live, k == 0 ? T : 6);
                for (int p = 0; p < T; p++)
                    if (p < 2 || p >= T - 3) CU_ASSERT(is_live(pool, s, p));
            }
            CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
            for (int i = 0; i < 4; i++) tkv_compact(pool, &q->streams[i]);
            CU_ASSERT_EQUAL(pool->n_free, 64 - 4 * (k == 0 ? 8 : 2));
            CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
            pol_instance_destroy(inst);
            mem_seq_destroy(pool, q);
            tkv_pool_destroy(pool);
        }
    }
    unlink(path);
}

int main(void)
{
    static const kvs_test tests[] = {
        { "knorm", test_knorm },
        { "streaming", test_streaming },
        { "full", test_full },
        { "random", test_random },
        { "qfilters_file", test_qfilters_file },
        { "qfilters_scoring", test_qfilters_scoring },
        { "qfilters_recent_layers", test_qfilters_recent_layers },
        { "layers_option", test_layers_option },
        { "calibration", test_calibration },
        { "h2o", test_h2o },
        { "tova", test_tova },
        { "snapkv", test_snapkv },
        { "every_policy_protects", test_every_policy_protects },
    };
    return kvs_test_main("policies", tests, (int)(sizeof tests / sizeof tests[0]));
}
