/* test_policy.c — the policy interface: common option parsing (every bad string gets an error
 * naming the option), budget / ratio arithmetic (floor(T * (1 - ratio)) exactly for decimal
 * ratios), the registry, instance creation errors, and the eviction driver on hand-made
 * streams (lowest score first, older first on ties, sinks and window protected, a policy's
 * select validated, invariants kept, compaction frees the expected pages). */
#include "core/common.h"
#include "memory/policy.h"
#include "memory/pool.h"
#include "test_util.h"
#include "test_kv.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D 4

static const pol_model_info MI = { 2, 4, 2, D, "test-model" };

/* ---- helpers ----------------------------------------------------------------------------- */

static mem_pool *pool_new(int P, int32_t n_pages)
{
    mem_pool *p = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(P, D, n_pages, &p) == KVS_OK);
    return p;
}

/* Append a token with key (x, 0, 0, 0) and the given score. */
static void put(mem_pool *pool, mem_stream *s, int32_t pos, float score)
{
    float k[D] = { (float)pos, 0, 0, 0 };
    CU_ASSERT_FATAL(tkv_append(pool, s, pos, k, k, score) >= 0);
}

static int is_live(const mem_pool *pool, const mem_stream *s, int32_t pos)
{
    for (int32_t slot = 0; slot < s->n_slots; slot++)
        if (mem_page_pos(pool, mem_slot_page(pool, s, slot))[slot & (pool->page_slots - 1)] == pos)
            return 1;
    return 0;
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

/* ---- options ----------------------------------------------------------------------------- */

static void test_opts_defaults(void)
{
    pol_opts o;
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("", &o, NULL, 0), KVS_OK);
    CU_ASSERT_EQUAL(pol_opts_parse("  ", &o, NULL, 0), KVS_OK);
    CU_ASSERT_EQUAL(pol_opts_parse(NULL, &o, NULL, 0), KVS_OK);
    CU_ASSERT(o.ratio < 0);
    CU_ASSERT_EQUAL(o.budget, 0);
    CU_ASSERT_EQUAL(o.window, 0);
    CU_ASSERT_EQUAL(o.sink, 0);
    CU_ASSERT_EQUAL(o.layer_first, 0);
    CU_ASSERT_EQUAL(o.layer_last, INT32_MAX);
    CU_ASSERT_EQUAL(pol_opts_when(&o), POL_WHEN_PREFILL);
    CU_ASSERT_EQUAL(pol_n_keep(&o, 100), INT32_MAX);
    o.budget = 5;
    CU_ASSERT_EQUAL(pol_opts_when(&o), POL_WHEN_DECODE);
}

static void test_opts_good(void)
{
    pol_opts o;
    char rest[128];
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("ratio=0.5,window=64,sink=4,when=prefill", &o, rest,
                                   sizeof rest), KVS_OK);
    CU_ASSERT_DOUBLE_EQUAL(o.ratio, 0.5, 0);
    CU_ASSERT_EQUAL(o.window, 64);
    CU_ASSERT_EQUAL(o.sink, 4);
    CU_ASSERT_EQUAL(o.when, POL_WHEN_PREFILL);
    CU_ASSERT_STRING_EQUAL(rest, "");

    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("budget=256,window=32,when=decode", &o, rest, sizeof rest),
                    KVS_OK);
    CU_ASSERT_EQUAL(o.budget, 256);
    CU_ASSERT_EQUAL(o.window, 32);
    CU_ASSERT_EQUAL(o.when, POL_WHEN_DECODE);

    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse(" ratio = 0.25 , sink=2 ,when=pressure", &o, rest,
                                   sizeof rest), KVS_OK);
    CU_ASSERT_DOUBLE_EQUAL(o.ratio, 0.25, 0);
    CU_ASSERT_EQUAL(o.sink, 2);
    CU_ASSERT_EQUAL(o.when, POL_WHEN_PRESSURE);

    /* A policy's own options are passed on, in order; paths may hold '='. */
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("filters=/tmp/a=b.kvsqf,ratio=0.875, seed = 3", &o, rest,
                                   sizeof rest), KVS_OK);
    CU_ASSERT_STRING_EQUAL(rest, "filters=/tmp/a=b.kvsqf,seed=3");
    CU_ASSERT_DOUBLE_EQUAL(o.ratio, 0.875, 0);
    const char *cur = rest;
    char k[64], v[64];
    CU_ASSERT(pol_args_next(&cur, k, sizeof k, v, sizeof v));
    CU_ASSERT_STRING_EQUAL(k, "filters");
    CU_ASSERT_STRING_EQUAL(v, "/tmp/a=b.kvsqf");
    CU_ASSERT(pol_args_next(&cur, k, sizeof k, v, sizeof v));
    CU_ASSERT_STRING_EQUAL(k, "seed");
    CU_ASSERT_STRING_EQUAL(v, "3");
    CU_ASSERT(!pol_args_next(&cur, k, sizeof k, v, sizeof v));

    /* Limits are inclusive; budget may equal window + sink. */
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("ratio=0,window=0,sink=0", &o, NULL, 0), KVS_OK);
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("budget=68,window=64,sink=4", &o, NULL, 0), KVS_OK);
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("window=1073741824,ratio=0.99999", &o, NULL, 0), KVS_OK);
    CU_ASSERT_EQUAL(o.window, POL_MAX_TOKENS);
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("layers=3-7", &o, NULL, 0), KVS_OK);
    CU_ASSERT(o.layer_first == 3 && o.layer_last == 7);
    pol_opts_default(&o);
    CU_ASSERT_EQUAL(pol_opts_parse("layers=5", &o, NULL, 0), KVS_OK);
    CU_ASSERT(o.layer_first == 5 && o.layer_last == 5);
}

static void test_opts_errors(void)
{
    static const struct { const char *args, *needle; } cases[] = {
        { "ratio=1.5", "ratio=1.5: ratio must be in [0, 1)" },
        { "ratio=1", "ratio=1: ratio must be in [0, 1)" },
        { "ratio=-0.1", "ratio=-0.1: ratio must be in [0, 1)" },
        { "ratio=abc", "ratio=abc: ratio must be a number in [0, 1)" },
        { "ratio=0.5x", "ratio=0.5x: ratio must be" },
        { "ratio=nan", "ratio=nan: ratio must be" },
        { "ratio=inf", "ratio=inf: ratio must be" },
        { "ratio=", "ratio needs a value" },
        { "budget=0", "budget=0: budget must be in [1, 1073741824]" },
        { "budget=-3", "budget=-3: budget must be in [1, 1073741824]" },
        { "budget=1e3", "budget=1e3: budget must be a whole number" },
        { "budget=2.5", "budget=2.5: budget must be a whole number" },
        { "budget=99999999999999", "budget=99999999999999: budget must be in [1, 1073741824]" },
        { "window=-1", "window=-1: window must be in [0, 1073741824]" },
        { "window=1073741825", "window must be in [0, 1073741824]" },
        { "window=", "window needs a value" },
        { "sink=x", "sink=x: sink must be a whole number" },
        { "sink= ", "sink needs a value" },
        { "when=later", "when=later: when must be prefill, prefill_end, decode or pressure" },
        { "when=", "when needs a value" },
        { "ratio=0.5,budget=10", "both ratio and budget" },
        { "window=1,window=2", "'window' is given twice" },
        { "ratio=0.5,ratio=0.5", "'ratio' is given twice" },
        { "seed=1,seed=2", "'seed' is given twice" },
        { "=5", "missing the key" },
        { "ratio", "'ratio': expected key=value" },
        { "ratio=0.5,,sink=1", "empty option" },
        { "ratio=0.5,", "empty option" },
        { ",ratio=0.5", "empty option" },
        { ",", "empty option" },
        { "a b=1", "key 'a b' is malformed" },
        { "budget=16,window=64,sink=4", "budget=16 is less than window + sink = 68" },
        { "layers=7-3", "layers=7-3: layers must be A-B" },
        { "layers=-1", "layers must be A-B" },
        { "layers=1-", "layers must be A-B" },
        { "layers=x", "layers must be A-B" },
        { "layers=99999999999", "layers must be A-B" },
    };
    char rest[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pol_opts o;
        pol_opts_default(&o);
        int rc = pol_opts_parse(cases[i].args, &o, rest, sizeof rest);
        CU_ASSERT_EQUAL(rc, KVS_EINVAL);
        if (!expect_error(rc, cases[i].needle)) {
            fprintf(stderr, "  (args \"%s\")\n", cases[i].args);
            CU_FAIL("wrong error message");
        }
    }
    /* Without a rest buffer, any other key is an error naming it. */
    pol_opts o;
    pol_opts_default(&o);
    CU_ASSERT(expect_error(pol_opts_parse("ratio=0.5,foo=1", &o, NULL, 0),
                           "unknown policy option 'foo'"));
}

/* ---- budget arithmetic ------------------------------------------------------------------- */

static int32_t keep_for(const char *args, int32_t T)
{
    pol_opts o;
    pol_opts_default(&o);
    CU_ASSERT_FATAL(pol_opts_parse(args, &o, NULL, 0) == KVS_OK);
    return pol_n_keep(&o, T);
}

static void test_n_keep(void)
{
    CU_ASSERT_EQUAL(keep_for("ratio=0.875", 64), 8);      /* x8 */
    CU_ASSERT_EQUAL(keep_for("ratio=0.875", 65), 8);
    CU_ASSERT_EQUAL(keep_for("ratio=0.875", 63), 7);
    CU_ASSERT_EQUAL(keep_for("ratio=0.96875", 1024), 32); /* x32 */
    CU_ASSERT_EQUAL(keep_for("ratio=0.96875", 100), 3);
    CU_ASSERT_EQUAL(keep_for("ratio=0.9", 10), 1);        /* 1 - 0.9 < 0.1 in binary */
    CU_ASSERT_EQUAL(keep_for("ratio=0.7", 10), 3);
    CU_ASSERT_EQUAL(keep_for("ratio=0.3", 1000), 700);
    CU_ASSERT_EQUAL(keep_for("ratio=0.5", 7), 3);
    CU_ASSERT_EQUAL(keep_for("ratio=0.5", 0), 0);
    CU_ASSERT_EQUAL(keep_for("ratio=0", 5), 5);
    CU_ASSERT_EQUAL(keep_for("ratio=0.99", 99), 0);
    CU_ASSERT_EQUAL(keep_for("ratio=0.5", INT32_MAX), INT32_MAX / 2);
    CU_ASSERT_EQUAL(keep_for("budget=256", 10), 256);
    CU_ASSERT_EQUAL(keep_for("budget=256", 100000), 256);
    CU_ASSERT_EQUAL(keep_for("window=4", 100000), INT32_MAX);

    /* Every ratio with 3 decimals, every T up to 2000: the exact integer answer. */
    int bad = 0;
    for (int k = 0; k < 1000 && !bad; k++) {
        char args[32];
        snprintf(args, sizeof args, "ratio=0.%03d", k);
        pol_opts o;
        pol_opts_default(&o);
        CU_ASSERT_FATAL(pol_opts_parse(args, &o, NULL, 0) == KVS_OK);
        for (int32_t T = 0; T <= 2000; T++) {
            int32_t want = (int32_t)((int64_t)T * (1000 - k) / 1000);
            if (pol_n_keep(&o, T) != want) {
                fprintf(stderr, "\n  %s T=%d: keep %d, want %d\n", args, (int)T,
                        (int)pol_n_keep(&o, T), (int)want);
                bad = 1;
                break;
            }
        }
    }
    CU_ASSERT(!bad);
}

/* ---- registry ---------------------------------------------------------------------------- */

static const pol_vtable vt_custom = { .version = POL_API_VERSION, .name = "test_custom",
                                      .description = "test" };
static const pol_vtable vt_custom_again = { .version = POL_API_VERSION, .name = "test_custom",
                                            .description = "another with the same name" };

static void test_registry(void)
{
    static const char *builtins[] = { "full", "random", "streaming", "knorm", "qfilters",
                                       "snapkv", "h2o", "tova" };
    const pol_vtable *all[64];
    int n = pol_list(all, 64);
    CU_ASSERT(n >= 8);
    for (int i = 0; i < 8; i++) {
        const pol_vtable *vt = pol_find(builtins[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(vt);
        CU_ASSERT_STRING_EQUAL(vt->name, builtins[i]);
        CU_ASSERT_PTR_EQUAL(all[i], vt);
        CU_ASSERT(vt->description && vt->description[0]);
        CU_ASSERT_EQUAL(vt->version, POL_API_VERSION);
    }
    CU_ASSERT(pol_find("snapkv")->flags & POL_NEEDS_ATTENTION);
    CU_ASSERT(pol_find("snapkv")->flags & POL_WINDOW_ATTENTION);
    CU_ASSERT(pol_find("h2o")->flags & POL_NEEDS_ATTENTION);
    CU_ASSERT(!(pol_find("h2o")->flags & POL_WINDOW_ATTENTION));
    CU_ASSERT(pol_find("tova")->flags & POL_NEEDS_ATTENTION);
    CU_ASSERT(pol_find("full")->flags & POL_NO_EVICTION);
    CU_ASSERT(!(pol_find("qfilters")->flags & POL_NEEDS_ATTENTION));
    CU_ASSERT_PTR_NULL(pol_find("nope"));
    CU_ASSERT_PTR_NULL(pol_find(NULL));

    CU_ASSERT_EQUAL(pol_register(&vt_custom), KVS_OK);
    CU_ASSERT_EQUAL(pol_register(&vt_custom), KVS_OK); /* same vtable: no-op */
    CU_ASSERT_PTR_EQUAL(pol_find("test_custom"), &vt_custom);
    CU_ASSERT(expect_error(pol_register(&vt_custom_again), "'test_custom' is already registered"));
    CU_ASSERT_EQUAL(pol_list(all, 64), n + 1);

    pol_vtable bad = { .version = POL_API_VERSION, .name = "Bad", .description = "" };
    CU_ASSERT(expect_error(pol_register(&bad), "outside [a-z0-9_-]"));
    bad.name = "a b";
    CU_ASSERT(expect_error(pol_register(&bad), "outside [a-z0-9_-]"));
    bad.name = "";
    CU_ASSERT(expect_error(pol_register(&bad), "without a name"));
    bad.name = NULL;
    CU_ASSERT(expect_error(pol_register(&bad), "without a name"));
    bad.name = "a_name_that_is_much_longer_than_31_chars";
    CU_ASSERT(expect_error(pol_register(&bad), "longer than 31"));
    bad.name = "vers";
    bad.version = 0;
    CU_ASSERT(expect_error(pol_register(&bad), "written for policy API version 0"));
    bad.version = POL_API_VERSION + 1;
    CU_ASSERT(expect_error(pol_register(&bad), "this kvsieve speaks versions 1 to 2"));
    bad.version = POL_API_VERSION;
    bad.description = NULL;
    CU_ASSERT(expect_error(pol_register(&bad), "has no description"));
    CU_ASSERT(expect_error(pol_register(NULL), "NULL policy"));
    CU_ASSERT_PTR_NULL(pol_find("vers"));
}

static void test_instance_errors(void)
{
    pol_instance *inst = NULL;
    CU_ASSERT(expect_error(pol_instance_create("nope", "", &MI, &inst),
                           "unknown eviction policy 'nope' (known: full, random, streaming"));
    CU_ASSERT_PTR_NULL(inst);
    CU_ASSERT(expect_error(pol_instance_create("knorm", "foo=1", &MI, &inst),
                           "policy knorm: unknown option 'foo'"));
    CU_ASSERT(expect_error(pol_instance_create("full", "foo=1", &MI, &inst),
                           "policy full: unknown option 'foo'"));
    CU_ASSERT(expect_error(pol_instance_create("h2o", "ratio=0.5,x=1", &MI, &inst),
                           "policy h2o: unknown option 'x'"));
    CU_ASSERT(expect_error(pol_instance_create("knorm", "ratio=0.5,layers=9-12", &MI, &inst),
                           "layers=9-12: the model has layers 0-"));
    CU_ASSERT(expect_error(pol_instance_create("knorm", "ratio=2", &MI, &inst),
                           "policy knorm: ratio=2: ratio must be in [0, 1)"));
    CU_ASSERT(expect_error(pol_instance_create("random", "seed=abc", &MI, &inst),
                           "policy random: seed=abc: seed must be a whole number"));
    CU_ASSERT(expect_error(pol_instance_create("qfilters", "ratio=0.5", &MI, &inst),
                           "policy qfilters: needs filters=PATH"));
    CU_ASSERT(expect_error(pol_instance_create("qfilters", "filters=/nonexistent/f.kvsqf", &MI,
                                               &inst), "cannot open filters file"));
    CU_ASSERT(expect_error(pol_instance_create("snapkv", "budget=100,when=decode", &MI, &inst),
                           "snapkv scores keys once at prefill end"));
    CU_ASSERT(expect_error(pol_instance_create("snapkv", "ratio=0.5,window=0", &MI, &inst),
                           "snapkv needs window >= 1"));
    CU_ASSERT(expect_error(pol_instance_create("snapkv", "ratio=0.5,kernel=4", &MI, &inst),
                           "kernel=4: kernel must be an odd number"));
    /* streaming's default sink=4 counts against a budget. */
    CU_ASSERT(expect_error(pol_instance_create("streaming", "budget=6,window=4", &MI, &inst),
                           "budget=6 is less than window + sink = 8"));
    pol_model_info bad = MI;
    bad.n_kv_heads = 3;
    CU_ASSERT(expect_error(pol_instance_create("knorm", "", &bad, &inst), "bad model geometry"));
    CU_ASSERT(expect_error(pol_instance_create("knorm", "", NULL, &inst), "bad model geometry"));
    CU_ASSERT_PTR_NULL(inst);

    /* Good ones: defaults from the vtable, `when` resolved. */
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("streaming", "budget=12", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->opts.sink, 4);
    CU_ASSERT_EQUAL(inst->opts.when, POL_WHEN_DECODE);
    pol_instance_destroy(inst);
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("streaming", "budget=12,sink=1", &MI, &inst),
                          KVS_OK);
    CU_ASSERT_EQUAL(inst->opts.sink, 1);
    pol_instance_destroy(inst);
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("snapkv", "ratio=0.5", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->opts.window, 64);
    CU_ASSERT_EQUAL(inst->opts.when, POL_WHEN_PREFILL);
    pol_instance_destroy(inst);
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("full", NULL, &MI, &inst), KVS_OK);
    pol_instance_destroy(inst);
    pol_instance_destroy(NULL);
}

/* ---- the driver -------------------------------------------------------------------------- */

/* 12 tokens, positions 0..11, given scores; returns a 1-layer 1-head sequence. */
static mem_seq *stream12(mem_pool *pool, const float *scores)
{
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    for (int i = 0; i < 12; i++) put(pool, mem_seq_stream(q, 0, 0), i, scores[i]);
    return q;
}

static pol_instance *inst_new(const char *name, const char *args)
{
    pol_instance *inst = NULL;
    int rc = pol_instance_create(name, args, &MI, &inst);
    if (rc) fprintf(stderr, "\n  %s\n", kvs_last_error());
    CU_ASSERT_FATAL(rc == KVS_OK);
    return inst;
}

static void test_default_select(void)
{
    const float sc[12] = { 5, 1, 3, 1, 9, 0, 2, 2, 7, 8, 6, 4 };
    mem_pool *pool = pool_new(4, 16);
    mem_seq *q = stream12(pool, sc);
    mem_stream *s = mem_seq_stream(q, 0, 0);
    pol_instance *inst = inst_new("knorm", "");
    /* Evict 4: scores 0 (pos 5), 1 (pos 1 and 3), then 2: pos 6 before pos 7 (older first). */
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 8), 4);
    CU_ASSERT_EQUAL(s->n_live, 8);
    int gone[12] = { 0 };
    gone[5] = gone[1] = gone[3] = gone[6] = 1;
    for (int i = 0; i < 12; i++) CU_ASSERT_EQUAL(is_live(pool, s, i), !gone[i]);
    /* One more (the n_evict == 1 path): score 2 at pos 7. */
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 7), 1);
    CU_ASSERT(!is_live(pool, s, 7));
    /* Nothing to do at or under n_keep. */
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 7), 0);
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 100), 0);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    /* Ties at n_evict == 1: all equal scores -> the oldest goes. */
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    const float flat[12] = { 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3 };
    q = stream12(pool, flat);
    s = mem_seq_stream(q, 0, 0);
    inst = inst_new("knorm", "");
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 11), 1);
    CU_ASSERT(!is_live(pool, s, 0));
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 8), 3);
    for (int i = 0; i < 12; i++) CU_ASSERT_EQUAL(is_live(pool, s, i), i >= 4);
    /* NaN scores count as -infinity. */
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    float nan_sc[12] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
    nan_sc[9] = NAN;
    q = stream12(pool, nan_sc);
    s = mem_seq_stream(q, 0, 0);
    inst = inst_new("knorm", "");
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 11), 1);
    CU_ASSERT(!is_live(pool, s, 9));
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 9), 2);
    CU_ASSERT(!is_live(pool, s, 0) && !is_live(pool, s, 1));
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_protection(void)
{
    /* Lowest scores sit on the sinks and the window: they must survive anyway. */
    const float sc[12] = { -9, -9, 1, 2, 3, 4, 5, 6, 7, -9, -9, -9 };
    mem_pool *pool = pool_new(4, 16);
    mem_seq *q = stream12(pool, sc);
    mem_stream *s = mem_seq_stream(q, 0, 0);
    pol_instance *inst = inst_new("knorm", "sink=2,window=3");
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 6), 6);
    for (int i = 0; i < 12; i++)
        CU_ASSERT_EQUAL(is_live(pool, s, i), i < 2 || i >= 8); /* 2..7 go, 8 is the best */
    /* Asked for 0: only the protected ones stay. */
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 0), 1);
    CU_ASSERT_EQUAL(s->n_live, 5);
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 0), 0);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);

    /* Sinks are the lowest LIVE positions: with pos 0 gone, 1 and 2 are the sinks. The window
     * follows cur_pos: with cur_pos 20 nothing here is recent. */
    const float sc2[12] = { 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1 };
    q = stream12(pool, sc2);
    s = mem_seq_stream(q, 0, 0);
    CU_ASSERT_EQUAL(mem_stream_evict(pool, s, 0), KVS_OK);
    inst = inst_new("knorm", "sink=2,window=3");
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 20, 10), 1);
    CU_ASSERT(is_live(pool, s, 1) && is_live(pool, s, 2) && !is_live(pool, s, 3));
    /* sink >= live tokens: nothing can go. */
    pol_instance_destroy(inst);
    inst = inst_new("knorm", "sink=10");
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 0), 0);
    CU_ASSERT_EQUAL(s->n_live, 10);
    pol_instance_destroy(inst);
    /* A large sink (the sorted path): 17 lowest kept. */
    mem_seq_destroy(pool, q);
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    s = mem_seq_stream(q, 0, 0);
    for (int i = 0; i < 40; i++) put(pool, s, 39 - i, 0.0f); /* reverse order in the slots */
    inst = inst_new("knorm", "sink=17");
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 39, 0), 23);
    for (int i = 0; i < 40; i++) CU_ASSERT_EQUAL(is_live(pool, s, i), i < 17);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_enforce_seq_and_compaction(void)
{
    const int P = 4, L = 2, H = 2, T = 32;
    mem_pool *pool = pool_new(P, 64);
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(mem_seq_create(L, H, 0, &q) == KVS_OK);
    uint32_t r = 12345;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                r = r * 1664525u + 1013904223u;
                put(pool, mem_seq_stream(q, l, h), i, (float)(r >> 8));
            }
    CU_ASSERT_EQUAL(pool->n_free, 64 - L * H * (T / P));
    pol_instance *inst = inst_new("knorm", "budget=8,window=2,sink=1");
    CU_ASSERT(pol_wants(inst, POL_AT_STEP));
    CU_ASSERT(!pol_wants(inst, POL_AT_PREFILL_END));
    CU_ASSERT(!pol_wants(inst, POL_AT_PRESSURE));
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, T - 1, POL_AT_PREFILL_END), 0); /* not wanted */
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, T - 1, POL_AT_STEP), L * H * (T - 8));
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            mem_stream *s = mem_seq_stream(q, l, h);
            CU_ASSERT_EQUAL(s->n_live, 8);
            CU_ASSERT(is_live(pool, s, 0) && is_live(pool, s, 30) && is_live(pool, s, 31));
        }
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    for (int i = 0; i < L * H; i++) tkv_compact(pool, &q->streams[i]);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    CU_ASSERT_EQUAL(pool->n_free, 64 - L * H * 2); /* 8 tokens = 2 pages per stream */
    pol_instance_destroy(inst);

    /* Ratio at prefill end: T = prompt tokens seen (32) per head, as after each prefill chunk
     * (so that chunked eviction and the end agree); x8 keeps 4 of the 8 live ones. */
    inst = inst_new("knorm", "ratio=0.875,window=2,sink=1");
    CU_ASSERT(pol_wants(inst, POL_AT_PREFILL_END));
    CU_ASSERT(pol_wants(inst, POL_AT_PREFILL_CHUNK));
    CU_ASSERT(!pol_wants(inst, POL_AT_STEP));
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, T - 1, POL_AT_PREFILL_END), L * H * 4);
    for (int i = 0; i < L * H; i++) {
        CU_ASSERT_EQUAL(q->streams[i].n_live, 4);
        tkv_compact(pool, &q->streams[i]);
    }
    CU_ASSERT_EQUAL(pool->n_free, 64 - L * H);
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    /* would a named policy evict at all? (the one check behind CLI, gRPC and HTTP refusals) */
    CU_ASSERT(pol_args_sized("", ""));
    CU_ASSERT(pol_args_sized("full", ""));
    CU_ASSERT(pol_args_sized("no-such-policy", ""));
    CU_ASSERT(!pol_args_sized("knorm", ""));
    CU_ASSERT(!pol_args_sized("streaming", "window=4,sink=2"));
    CU_ASSERT(pol_args_sized("knorm", "window=4,ratio=0.5"));
    CU_ASSERT(pol_args_sized("qfilters", "budget=64"));
    /* prefill_end: only at the end; a window-attention policy (snapkv) also only at the end */
    inst = inst_new("knorm", "ratio=0.875,when=prefill_end");
    CU_ASSERT(pol_wants(inst, POL_AT_PREFILL_END));
    CU_ASSERT(!pol_wants(inst, POL_AT_PREFILL_CHUNK));
    pol_instance_destroy(inst);
    inst = inst_new("snapkv", "ratio=0.875,window=4");
    CU_ASSERT(pol_wants(inst, POL_AT_PREFILL_END));
    CU_ASSERT(!pol_wants(inst, POL_AT_PREFILL_CHUNK));
    pol_instance_destroy(inst);

    /* Ratio after a step: T = tokens seen = cur_pos + 1, so a repeated call is idempotent. */
    mem_seq_destroy(pool, q);
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    for (int i = 0; i < 64; i++) put(pool, mem_seq_stream(q, 0, 0), i, (float)(i % 7));
    inst = inst_new("knorm", "ratio=0.75,when=decode");
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 63, POL_AT_STEP), 48);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 63, POL_AT_STEP), 0);
    CU_ASSERT_EQUAL(q->streams[0].n_live, 16);
    pol_instance_destroy(inst);
    /* Pressure: only when=pressure; T = live tokens, so each call halves. */
    inst = inst_new("knorm", "ratio=0.5,when=pressure");
    CU_ASSERT(pol_wants(inst, POL_AT_PRESSURE) && !pol_wants(inst, POL_AT_STEP));
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 63, POL_AT_PRESSURE), 8);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 63, POL_AT_PRESSURE), 4);
    pol_instance_destroy(inst);
    /* No ratio or budget, or `full`: never. */
    inst = inst_new("knorm", "window=4");
    CU_ASSERT(!pol_wants(inst, POL_AT_PREFILL_END) && !pol_wants(inst, POL_AT_STEP));
    CU_ASSERT_EQUAL(pol_enforce_seq(inst, pool, q, 63, POL_AT_PREFILL_END), 0);
    pol_instance_destroy(inst);
    inst = inst_new("full", "budget=1");
    CU_ASSERT(!pol_wants(inst, POL_AT_STEP));
    CU_ASSERT_EQUAL(pol_enforce_seq(inst, pool, q, 63, POL_AT_STEP), 0);
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, &q->streams[0], 0, 0, 63, 0), 0);
    CU_ASSERT_EQUAL(q->streams[0].n_live, 4);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    CU_ASSERT_EQUAL(pool->n_free, 64);
    tkv_pool_destroy(pool);
}

/* A policy with its own select: evict the NEWEST candidates; misbehaves on request. */
static int sel_mode;
static int newest_select(void *state, const pol_candidates *c, int32_t n_evict,
                         int32_t *victims, char *err, size_t err_size)
{
    (void)state;
    if (sel_mode == 1) { /* an index past the end */
        victims[0] = c->n;
        for (int i = 1; i < n_evict; i++) victims[i] = i;
        return 0;
    }
    if (sel_mode == 2) { for (int i = 0; i < n_evict; i++) victims[i] = 0; return 0; }
    if (sel_mode == 3) { snprintf(err, err_size, "refused on purpose"); return -1; }
    /* candidates are in slot order; pick the n_evict with the largest positions */
    for (int32_t k = 0; k < n_evict; k++) {
        int32_t best = -1;
        for (int32_t i = 0; i < c->n; i++) {
            int taken = 0;
            for (int32_t j = 0; j < k; j++) taken |= victims[j] == i;
            if (!taken && (best < 0 || c->pos[i] > c->pos[best])) best = i;
        }
        victims[k] = best;
    }
    return 0;
}
static const pol_vtable vt_newest = { .version = POL_API_VERSION, .name = "test_newest",
                                      .description = "evicts the newest", .select = newest_select };

static void test_custom_select(void)
{
    CU_ASSERT_EQUAL_FATAL(pol_register(&vt_newest), KVS_OK);
    const float sc[12] = { 0 };
    mem_pool *pool = pool_new(4, 16);
    mem_seq *q = stream12(pool, sc);
    mem_stream *s = mem_seq_stream(q, 0, 0);
    pol_instance *inst = inst_new("test_newest", "window=2,sink=1");
    sel_mode = 0;
    CU_ASSERT_EQUAL(pol_enforce_stream(inst, pool, s, 0, 0, 11, 9), 3);
    for (int i = 0; i < 12; i++) CU_ASSERT_EQUAL(is_live(pool, s, i), i < 7 || i >= 10);
    sel_mode = 1;
    CU_ASSERT(expect_error(pol_enforce_stream(inst, pool, s, 0, 0, 11, 7),
                           "select returned out-of-range victim"));
    sel_mode = 2;
    CU_ASSERT(expect_error(pol_enforce_stream(inst, pool, s, 0, 0, 11, 7),
                           "select returned a duplicate victim 0"));
    sel_mode = 3;
    CU_ASSERT(expect_error(pol_enforce_stream(inst, pool, s, 0, 0, 11, 7),
                           "policy test_newest: select failed: refused on purpose"));
    CU_ASSERT_EQUAL(s->n_live, 9); /* nothing evicted by the failed calls */
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

/* observe_attention sees the stream in slot order (holes as -1) and only live scores are
 * written back. */
static int obs_calls;
static int record_observe(void *state, int layer, int kv_head, const float *probs, int n_q,
                          const int32_t *slot_pos, int n_slots, float *slot_scores, char *err,
                          size_t err_size)
{
    (void)state; (void)err; (void)err_size;
    obs_calls++;
    CU_ASSERT_EQUAL(layer, 1);
    CU_ASSERT_EQUAL(kv_head, 0);
    CU_ASSERT_EQUAL(n_q, 2);
    CU_ASSERT_EQUAL(n_slots, 6);
    for (int j = 0; j < n_slots; j++) {
        CU_ASSERT_EQUAL(slot_pos[j], j == 2 ? -1 : j);
        slot_scores[j] = 100.0f * probs[n_slots + j] + (float)slot_pos[j];
    }
    return 0;
}
static const pol_vtable vt_observe = { .version = POL_API_VERSION, .name = "test_observe",
                                       .description = "records", .flags = POL_NEEDS_ATTENTION,
                                       .observe_attention = record_observe };

static void test_observe_stream(void)
{
    CU_ASSERT_EQUAL_FATAL(pol_register(&vt_observe), KVS_OK);
    mem_pool *pool = pool_new(4, 8);
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    mem_stream *s = mem_seq_stream(q, 0, 0);
    for (int i = 0; i < 6; i++) put(pool, s, i, 0.5f);
    CU_ASSERT_EQUAL(mem_stream_evict(pool, s, 2), KVS_OK);
    float probs[2][6] = { { 0 }, { 0.1f, 0.2f, 0.0f, 0.3f, 0.2f, 0.2f } };
    pol_instance *inst = inst_new("test_observe", "");
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, s, 1, 0, &probs[0][0], 2), KVS_OK);
    CU_ASSERT_EQUAL(obs_calls, 1);
    const float *score = mem_page_score(pool, s->pages[0]);
    const float *score1 = mem_page_score(pool, s->pages[1]);
    CU_ASSERT_DOUBLE_EQUAL(score[0], 10.0, 1e-5);
    CU_ASSERT_DOUBLE_EQUAL(score[1], 21.0, 1e-5);
    CU_ASSERT_DOUBLE_EQUAL(score[2], 0.5, 0);  /* the hole keeps what it had */
    CU_ASSERT_DOUBLE_EQUAL(score[3], 33.0, 1e-5);
    CU_ASSERT_DOUBLE_EQUAL(score1[0], 24.0, 1e-5);
    CU_ASSERT_DOUBLE_EQUAL(score1[1], 25.0, 1e-5);
    pol_instance_destroy(inst);
    /* Policies without observe_attention: a no-op. */
    inst = inst_new("knorm", "");
    CU_ASSERT_EQUAL(pol_observe_stream(inst, pool, s, 1, 0, &probs[0][0], 2), KVS_OK);
    CU_ASSERT_DOUBLE_EQUAL(score[0], 10.0, 1e-5);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_score_hook(void)
{
    const float keys[2][D] = { { 3, 4, 0, 0 }, { 0, 0, 0, 1 } };
    const int32_t pos[2] = { 7, 8 };
    float out[2] = { 9, 9 };
    pol_instance *inst = inst_new("full", "");
    pol_score_keys(inst, 0, 0, &keys[0][0], pos, 2, out);
    CU_ASSERT_DOUBLE_EQUAL(out[0], 0, 0);
    CU_ASSERT_DOUBLE_EQUAL(out[1], 0, 0);
    pol_instance_destroy(inst);
    inst = inst_new("knorm", "");
    pol_score_keys(inst, 1, 1, &keys[0][0], pos, 2, out);
    CU_ASSERT_DOUBLE_EQUAL(out[0], -5.0, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(out[1], -1.0, 1e-6);
    pol_instance_destroy(inst);
}

int main(void)
{
    static const kvs_test tests[] = {
        { "opts_defaults", test_opts_defaults },
        { "opts_good", test_opts_good },
        { "opts_errors", test_opts_errors },
        { "n_keep", test_n_keep },
        { "registry", test_registry },
        { "instance_errors", test_instance_errors },
        { "default_select", test_default_select },
        { "protection", test_protection },
        { "enforce_seq_and_compaction", test_enforce_seq_and_compaction },
        { "custom_select", test_custom_select },
        { "observe_stream", test_observe_stream },
        { "score_hook", test_score_hook },
    };
    return kvs_test_main("policy", tests, (int)(sizeof tests / sizeof tests[0]));
}
