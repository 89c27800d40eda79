/* test_plugin.c — policy plugins: dlopen the example plugin (policies/examples/), register
 * it, find it by name, create it with options, score keys and evict with it; loading twice is
 * harmless; a bad path, a library that is not a plugin, a file that is not a library and a
 * plugin built for a future API version all give clear errors; the plugin itself refuses a
 * kvsieve that is too old. */
#include "core/common.h"
#include "memory/policy.h"
#include "memory/pool.h"
#include "test_util.h"
#include "test_kv.h"

#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef KVS_EXAMPLE_PLUGIN
#define KVS_EXAMPLE_PLUGIN "build/libkvs_example_policy.so"
#endif
#ifndef KVS_EXAMPLE_PLUGIN_V99
#define KVS_EXAMPLE_PLUGIN_V99 "build/libkvs_example_policy_v99.so"
#endif

#define D 4
static const pol_model_info MI = { 1, 2, 1, D, "plugin-test" };

static int expect_error(int rc, const char *needle)
{
    if (rc >= 0) { fprintf(stderr, "\n  expected an error containing \"%s\"\n", needle); return 0; }
    if (!strstr(kvs_last_error(), needle)) {
        fprintf(stderr, "\n  error \"%s\" lacks \"%s\"\n", kvs_last_error(), needle);
        return 0;
    }
    return 1;
}

static void test_load_and_use(void)
{
    CU_ASSERT_PTR_NULL(pol_find("example"));
    const pol_vtable *vt = NULL;
    int rc = pol_load_plugin(KVS_EXAMPLE_PLUGIN, &vt);
    if (rc) fprintf(stderr, "\n  %s\n", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, KVS_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(vt);
    CU_ASSERT_STRING_EQUAL(vt->name, "example");
    CU_ASSERT_EQUAL(vt->version, POL_API_VERSION);
    CU_ASSERT_PTR_EQUAL(pol_find("example"), vt);
    const pol_vtable *all[64];
    int n = pol_list(all, 64), found = 0;
    for (int i = 0; i < n && i < 64; i++) found |= all[i] == vt;
    CU_ASSERT(found);
    /* Loading it again is harmless. */
    const pol_vtable *again = NULL;
    CU_ASSERT_EQUAL(pol_load_plugin(KVS_EXAMPLE_PLUGIN, &again), KVS_OK);
    CU_ASSERT_PTR_EQUAL(again, vt);
    CU_ASSERT_EQUAL(pol_list(all, 64), n);

    /* Options: common ones handled by kvsieve, its own by the plugin. */
    pol_instance *inst = NULL;
    CU_ASSERT(expect_error(pol_instance_create("example", "budget=2,foo=1", &MI, &inst),
                           "policy example: unknown option 'foo' (example takes scale=F)"));
    CU_ASSERT(expect_error(pol_instance_create("example", "scale=-1", &MI, &inst),
                           "scale=-1: scale must be a number > 0"));
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("example", "budget=3,scale=2", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->opts.budget, 3);

    /* Score = -2 * max|k_i|; the two keys with the largest |k_i| go. */
    const float keys[5][D] = { { 1, -1, 0, 0 }, { 0, 0, -5, 1 }, { 0.5f, 0, 0, 0 },
                               { 3, 0, 0, 2 }, { 0, 0.25f, 0, 0 } };
    const int32_t pos[5] = { 0, 1, 2, 3, 4 };
    float sc[5];
    pol_score_keys(inst, 0, 0, &keys[0][0], pos, 5, sc);
    const float want[5] = { -2, -10, -1, -6, -0.5f };
    for (int i = 0; i < 5; i++) CU_ASSERT_DOUBLE_EQUAL(sc[i], want[i], 1e-6);
    mem_pool *pool = NULL;
    mem_seq *q = NULL;
    CU_ASSERT_FATAL(tkv_pool_create(4, D, 8, &pool) == KVS_OK);
    CU_ASSERT_FATAL(mem_seq_create(1, 1, 0, &q) == KVS_OK);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_FATAL(tkv_append(pool, q->streams, pos[i], keys[i], keys[i], sc[i]) >= 0);
    CU_ASSERT_EQUAL(pol_on_event(inst, pool, q, 4, POL_AT_STEP), 2);
    CU_ASSERT_EQUAL(q->streams[0].n_live, 3);
    for (int32_t slot = 0; slot < q->streams[0].n_slots; slot++) {
        int32_t p = mem_page_pos(pool, mem_slot_page(pool, q->streams, slot))[slot & 3];
        CU_ASSERT(p != 1 && p != 3);
    }
    CU_ASSERT_EQUAL(mem_check_invariants(pool, &q, 1), KVS_OK);
    pol_instance_destroy(inst);
    mem_seq_destroy(pool, q);
    tkv_pool_destroy(pool);
}

static void test_bad_plugins(void)
{
    const pol_vtable *vt = (const pol_vtable *)1;
    /* No such file: the path and dlopen's reason. */
    CU_ASSERT(expect_error(pol_load_plugin("/nonexistent/libnope.so", &vt),
                           "cannot load policy plugin /nonexistent/libnope.so: "));
    CU_ASSERT(strstr(kvs_last_error(), "No such file") != NULL);
    CU_ASSERT_PTR_NULL(vt);
    CU_ASSERT(expect_error(pol_load_plugin("", &vt), "no policy plugin path"));
    CU_ASSERT(expect_error(pol_load_plugin(NULL, NULL), "no policy plugin path"));
    /* A file that is not a shared library. */
    char path[1024];
    snprintf(path, sizeof path, "%s/CMakeLists.txt", kvs_test_source_dir());
    CU_ASSERT(expect_error(pol_load_plugin(path, &vt), "cannot load policy plugin"));
    CU_ASSERT(strstr(kvs_last_error(), "CMakeLists.txt") != NULL);
    /* A real library without the registration function. */
    CU_ASSERT(expect_error(pol_load_plugin("libm.so.6", &vt),
                           "libm.so.6 is not a kvsieve policy plugin: it does not export "
                           "kvsieve_policy_register"));
    /* Built for API version 99: kvsieve refuses it, naming both versions. */
    CU_ASSERT(expect_error(pol_load_plugin(KVS_EXAMPLE_PLUGIN_V99, &vt),
                           "was built for policy API version 99; this kvsieve supports "
                           "versions 1 to 2"));
    CU_ASSERT_PTR_NULL(vt);
    /* And the other way round: the plugin refuses a kvsieve older than it needs. */
    void *h = dlopen(KVS_EXAMPLE_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    void *sym = dlsym(h, POL_PLUGIN_SYMBOL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sym);
    pol_plugin_register_fn fn;
    memcpy(&fn, &sym, sizeof fn);
    const pol_vtable *out = (const pol_vtable *)1;
    CU_ASSERT_EQUAL(fn(0, &out), 1);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_EQUAL(fn(POL_API_VERSION, &out), POL_API_VERSION);
    CU_ASSERT_PTR_EQUAL(out, pol_find("example"));
    dlclose(h);
}

#ifndef KVS_EXAMPLE_PLUGIN_V1
#define KVS_EXAMPLE_PLUGIN_V1 "build/libkvs_example_policy_v1.so"
#endif

static void v1_score(void *st, int layer, int kv_head, const float *k, const int32_t *pos, int n,
                     float *out)
{
    (void)st; (void)layer; (void)kv_head; (void)k;
    for (int i = 0; i < n; i++) out[i] = (float)(2 * pos[i]);
}

/* Policy API v2 appended device_score: a plugin written for v1 keeps loading and scoring on
 * the host, and kvsieve never reads past the end of a v1 vtable (this one is allocated with
 * exactly the v1 size, so ASan catches a read of the v2 member). */
static void test_v1_plugins(void)
{
    const pol_vtable *vt = NULL;
    int rc = pol_load_plugin(KVS_EXAMPLE_PLUGIN_V1, &vt);
    if (rc) fprintf(stderr, "\n  %s\n", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, KVS_OK);
    CU_ASSERT_EQUAL(vt->version, 1);
    CU_ASSERT_STRING_EQUAL(vt->name, "example_v1");
    pol_instance *inst = NULL;
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("example_v1", "budget=3,scale=2", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->dev.kind, POL_SCORE_HOST);
    const float key[D] = {1, -4, 0, 0};
    const int32_t pos = 0;
    float sc = 0;
    pol_score_keys(inst, 0, 0, key, &pos, 1, &sc);
    CU_ASSERT_DOUBLE_EQUAL(sc, -8, 1e-6);
    pol_instance_destroy(inst);

    const size_t v1_size = offsetof(pol_vtable, device_score);
    const pol_vtable full = {.version = 1, .name = "short_v1",
                             .description = "a version-1 vtable of the version-1 size",
                             .score_keys = v1_score};
    void *short_vt = malloc(v1_size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(short_vt);
    memcpy(short_vt, &full, v1_size);
    CU_ASSERT_EQUAL_FATAL(pol_register((const pol_vtable *)short_vt), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("short_v1", "ratio=0.5", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->dev.kind, POL_SCORE_HOST);
    CU_ASSERT_PTR_NULL(inst->dev.u);
    pol_score_keys(inst, 0, 0, key, &pos, 1, &sc);
    CU_ASSERT_DOUBLE_EQUAL(sc, 0, 1e-6);
    pol_instance_destroy(inst);
    /* the registry keeps the vtable for the life of the process (like a plugin's) */

    /* a v2 built-in hands its device score over: knorm -> negative norm, qfilters' u below */
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("knorm", "ratio=0.5", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->dev.kind, POL_SCORE_NEG_NORM);
    pol_instance_destroy(inst);
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("streaming", "ratio=0.5", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->dev.kind, POL_SCORE_POS);
    pol_instance_destroy(inst);
    CU_ASSERT_EQUAL_FATAL(pol_instance_create("h2o", "ratio=0.5", &MI, &inst), KVS_OK);
    CU_ASSERT_EQUAL(inst->dev.kind, POL_SCORE_ZERO);
    pol_instance_destroy(inst);
}

int main(void)
{
    static const kvs_test tests[] = {
        { "load_and_use", test_load_and_use },
        { "bad_plugins", test_bad_plugins },
        { "v1 plugins and v1-sized vtables keep working (API v2)", test_v1_plugins },
    };
    return kvs_test_main("plugin", tests, (int)(sizeof tests / sizeof tests[0]));
}
