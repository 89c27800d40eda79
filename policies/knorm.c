/* knorm.c — `knorm` (Devoto et al. 2024): keys with a small L2 norm draw more attention, so
 * the score is -||k||2 (keep low norms, evict the largest). */
#include "memory/policy.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { int head_dim; } knorm_state;

static int knorm_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                        void **state, char *err, size_t err_size)
{
    (void)opts;
    char key[64], val[256];
    const char *cur = args;
    if (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        snprintf(err, err_size, "unknown option '%s' (knorm takes only the common options)",
                 key);
        return -1;
    }
    knorm_state *st = malloc(sizeof *st);
    if (!st) { snprintf(err, err_size, "out of memory"); return -2; }
    st->head_dim = mi->head_dim;
    *state = st;
    return 0;
}

static void knorm_destroy(void *state) { free(state); }

static void knorm_score(void *state, int layer, int kv_head, const float *keys,
                        const int32_t *pos, int n, float *out)
{
    (void)layer; (void)kv_head; (void)pos;
    const int d = ((const knorm_state *)state)->head_dim;
    for (int i = 0; i < n; i++) {
        const float *k = keys + (size_t)i * d;
        double s = 0.0;
        for (int j = 0; j < d; j++) s += (double)k[j] * k[j];
        out[i] = -(float)sqrt(s);
    }
}

/* -||k||2 (device_score, API v2). */
static void knorm_device_score(void *state, pol_device_score *out)
{
    (void)state;
    out->kind = POL_SCORE_NEG_NORM;
}

const pol_vtable pol_knorm_vtable = {
    .version = POL_API_VERSION,
    .name = "knorm",
    .description = "K-norm: score -||k||2, evict the keys with the largest norm",
    .create = knorm_create,
    .destroy = knorm_destroy,
    .score_keys = knorm_score,
    .device_score = knorm_device_score,
};
