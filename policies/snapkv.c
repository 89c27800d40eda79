/* snapkv.c — `snapkv` (Li et al. 2024): at prefill end, the last `window` prompt queries
 * (the observation window, default 64) vote for the keys they attend to. Score of a key =
 * mean attention over the window queries (averaged over the GQA group by the caller),
 * average-pooled along positions with a kernel of 5 (zero padded, divided by the kernel like
 * torch's avg_pool1d) so that neighbours of important tokens survive with them. Pooling runs
 * over the live keys before the window, in position order; window keys keep their plain mean
 * (they are protected anyway). Needs the window attention once (POL_WINDOW_ATTENTION). */
#include "memory/policy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int window, kernel; } snapkv_state;

static int snapkv_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                         void **state, char *err, size_t err_size)
{
    (void)mi;
    int kernel = 5;
    char key[64], val[256];
    const char *cur = args;
    while (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        if (strcmp(key, "kernel") == 0) {
            char *end;
            long v = strtol(val, &end, 10);
            if (!isdigit((unsigned char)val[0]) || *end || v < 1 || v > 63 || v % 2 == 0) {
                snprintf(err, err_size, "kernel=%s: kernel must be an odd number in [1, 63]",
                         val);
                return -1;
            }
            kernel = (int)v;
        } else {
            snprintf(err, err_size, "unknown option '%s' (snapkv takes kernel=K)", key);
            return -1;
        }
    }
    if (opts->window < 1) {
        snprintf(err, err_size, "window=%d: snapkv needs window >= 1 (its observation window "
                 "of last prompt queries; default 64)", (int)opts->window);
        return -1;
    }
    if (opts->when == POL_WHEN_DECODE) {
        snprintf(err, err_size, "when=decode: snapkv scores keys once at prefill end; use "
                 "when=prefill or when=pressure");
        return -1;
    }
    snapkv_state *st = malloc(sizeof *st);
    if (!st) { snprintf(err, err_size, "out of memory"); return -2; }
    st->window = opts->window;
    st->kernel = kernel;
    *state = st;
    return 0;
}

static void snapkv_destroy(void *state) { free(state); }

static void snapkv_score(void *state, int layer, int kv_head, const float *keys,
                         const int32_t *pos, int n, float *out)
{
    (void)state; (void)layer; (void)kv_head; (void)keys; (void)pos;
    for (int i = 0; i < n; i++) out[i] = 0.0f;
}

typedef struct { int32_t pos, slot; } pos_slot;

static int cmp_pos(const void *a, const void *b)
{
    const pos_slot *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int snapkv_observe(void *state, int layer, int kv_head, const float *probs, int n_q,
                          const int32_t *slot_pos, int n_slots, float *slot_scores, char *err,
                          size_t err_size)
{
    (void)layer; (void)kv_head;
    const snapkv_state *st = state;
    if (n_q <= 0 || n_slots <= 0) return 0;
    int32_t max_pos = -1;
    for (int j = 0; j < n_slots; j++)
        if (slot_pos[j] > max_pos) max_pos = slot_pos[j];
    pos_slot *order = malloc((size_t)n_slots * sizeof *order);
    double *mean = malloc((size_t)n_slots * sizeof *mean);
    if (!order || !mean) {
        free(order); free(mean);
        snprintf(err, err_size, "out of memory");
        return -2;
    }
    /* Mean attention over the window queries. */
    for (int j = 0; j < n_slots; j++) mean[j] = 0.0;
    for (int q = 0; q < n_q; q++) {
        const float *p = probs + (size_t)q * n_slots;
        for (int j = 0; j < n_slots; j++) mean[j] += p[j];
    }
    int m = 0;
    const int64_t window_min = (int64_t)max_pos - st->window + 1;
    for (int j = 0; j < n_slots; j++) {
        if (slot_pos[j] < 0) continue;
        mean[j] /= n_q;
        if (slot_pos[j] >= window_min) slot_scores[j] = (float)mean[j];
        else order[m++] = (pos_slot){ slot_pos[j], j };
    }
    /* Average-pool the pre-window keys along positions. */
    qsort(order, (size_t)m, sizeof *order, cmp_pos);
    const int r = st->kernel / 2;
    for (int i = 0; i < m; i++) {
        double s = 0.0;
        for (int t = i - r; t <= i + r; t++)
            if (t >= 0 && t < m) s += mean[order[t].slot];
        slot_scores[order[i].slot] = (float)(s / st->kernel);
    }
    free(order);
    free(mean);
    return 0;
}

/* Keys start at 0; attention adds to them on the host (device_score, API v2). */
static void snapkv_device_score(void *state, pol_device_score *out)
{
    (void)state;
    out->kind = POL_SCORE_ZERO;
}

const pol_vtable pol_snapkv_vtable = {
    .version = POL_API_VERSION,
    .name = "snapkv",
    .description = "SnapKV: attention of the last `window` prompt queries, pooled (kernel 5)",
    .flags = POL_NEEDS_ATTENTION | POL_WINDOW_ATTENTION,
    .default_args = "window=64,when=prefill",
    .args_help = "kernel=K",
    .create = snapkv_create,
    .destroy = snapkv_destroy,
    .score_keys = snapkv_score,
    .device_score = snapkv_device_score,
    .observe_attention = snapkv_observe,
};
