/* random.c — `random`: a uniform random score per key, so victims are a uniform sample of
 * the unprotected tokens (the sanity floor). The score is a hash of (seed, layer, kv_head,
 * position), so it is deterministic for a seed whatever order keys are written in. */
#include "memory/policy.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint64_t seed; } random_state;

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int random_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                         void **state, char *err, size_t err_size)
{
    (void)mi; (void)opts;
    uint64_t seed = 1;
    char key[64], val[256];
    const char *cur = args;
    while (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        if (strcmp(key, "seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (!isdigit((unsigned char)val[0]) || *end || errno == ERANGE) {
                snprintf(err, err_size, "seed=%s: seed must be a whole number in [0, 2^64)",
                         val);
                return -1;
            }
            seed = v;
        } else {
            snprintf(err, err_size, "unknown option '%s' (random takes seed=N)", key);
            return -1;
        }
    }
    random_state *st = malloc(sizeof *st);
    if (!st) { snprintf(err, err_size, "out of memory"); return -2; }
    st->seed = seed;
    *state = st;
    return 0;
}

static void random_destroy(void *state) { free(state); }

static void random_score(void *state, int layer, int kv_head, const float *keys,
                         const int32_t *pos, int n, float *out)
{
    (void)keys;
    uint64_t h = splitmix64(((const random_state *)state)->seed);
    h = splitmix64(h ^ ((uint64_t)(uint32_t)layer << 32 | (uint32_t)kv_head));
    for (int i = 0; i < n; i++)
        out[i] = (float)(splitmix64(h ^ (uint32_t)pos[i]) >> 40) * 0x1p-24f; /* [0, 1) */
}

const pol_vtable pol_random_vtable = {
    .version = POL_API_VERSION,
    .name = "random",
    .description = "uniform random victims (deterministic for seed=N, default 1)",
    .args_help = "seed=N",
    .create = random_create,
    .destroy = random_destroy,
    .score_keys = random_score,
};
