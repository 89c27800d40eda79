/* example_policy.c — a complete eviction-policy plugin, built as its own shared object
 * (libkvs_example_policy.so) and loaded with `--policy-plugin PATH` (pol_load_plugin), then
 * used by name with options like "budget=256,window=32,scale=2" (docs/POLICIES.md).
 *
 * Policy "example": score = -scale * max_i |k_i| — keep the keys without outlier channels.
 * It shows everything a plugin needs: the vtable, option parsing with pol_args_next (inline
 * in the header, so the plugin links nothing of kvsieve), state, and the one exported
 * registration function. Build: cc -shared -fPIC -I<kvsieve> example_policy.c -o libx.so */
#include "memory/policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The API version this plugin was written for. (The test build also compiles this file with
 * EXAMPLE_API_VERSION=99 to check that kvsieve refuses a plugin from the future.) */
/* Its name (the test build also makes a version-1 copy named "example_v1"). */
#ifndef EXAMPLE_NAME
#define EXAMPLE_NAME "example"
#endif
#ifndef EXAMPLE_API_VERSION
#define EXAMPLE_API_VERSION POL_API_VERSION
#endif
/* The oldest kvsieve this plugin works with: it uses only version-1 members. */
#define EXAMPLE_MIN_HOST_VERSION 1

typedef struct { int head_dim; float scale; } example_state;

static int example_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                          void **state, char *err, size_t err_size)
{
    (void)opts; /* ratio/budget/window/sink/when are handled by kvsieve's driver */
    float scale = 1.0f;
    char key[64], val[256];
    const char *cur = args;
    while (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        if (strcmp(key, "scale") == 0) {
            char *end;
            scale = strtof(val, &end);
            if (*end || !(scale > 0.0f) || !isfinite(scale)) {
                snprintf(err, err_size, "scale=%s: scale must be a number > 0", val);
                return -1;
            }
        } else {
            snprintf(err, err_size, "unknown option '%s' (example takes scale=F)", key);
            return -1;
        }
    }
    example_state *st = malloc(sizeof *st);
    if (!st) { snprintf(err, err_size, "out of memory"); return -2; }
    st->head_dim = mi->head_dim;
    st->scale = scale;
    *state = st;
    return 0;
}

static void example_destroy(void *state) { free(state); }

static void example_score(void *state, int layer, int kv_head, const float *keys,
                          const int32_t *pos, int n, float *out)
{
    (void)layer; (void)kv_head; (void)pos;
    const example_state *st = state;
    for (int i = 0; i < n; i++) {
        float m = 0.0f;
        const float *k = keys + (size_t)i * st->head_dim;
        for (int j = 0; j < st->head_dim; j++) m = fmaxf(m, fabsf(k[j]));
        out[i] = -st->scale * m;
    }
}

static const pol_vtable example_vtable = {
    .version = EXAMPLE_API_VERSION,
    .name = EXAMPLE_NAME,
    .description = "example plugin: score -scale * max|k_i| (keep keys without outliers)",
    .args_help = "scale=F",
    .create = example_create,
    .destroy = example_destroy,
    .score_keys = example_score,
};

/* The one symbol kvsieve looks up. */
__attribute__((visibility("default")))
int kvsieve_policy_register(int api_version, const pol_vtable **out)
{
    if (api_version < EXAMPLE_MIN_HOST_VERSION) { /* kvsieve too old for this plugin */
        *out = NULL;
        return EXAMPLE_MIN_HOST_VERSION;
    }
    *out = &example_vtable;
    return EXAMPLE_API_VERSION;
}
