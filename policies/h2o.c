/* h2o.c — `h2o` (Heavy-Hitter Oracle, Zhang et al. 2023): a key's score is the attention it
 * has received so far, summed over every query that saw it (averaged over the GQA group by
 * the caller). New keys start at 0 and accumulate from the step that writes them (their own
 * query included). Needs each step's attention (POL_NEEDS_ATTENTION). */
#include "memory/policy.h"

#include <stdio.h>

static int h2o_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                      void **state, char *err, size_t err_size)
{
    (void)mi; (void)opts;
    char key[64], val[256];
    const char *cur = args;
    if (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        snprintf(err, err_size, "unknown option '%s' (h2o takes only the common options)", key);
        return -1;
    }
    *state = NULL;
    return 0;
}

static void h2o_score(void *state, int layer, int kv_head, const float *keys,
                      const int32_t *pos, int n, float *out)
{
    (void)state; (void)layer; (void)kv_head; (void)keys; (void)pos;
    for (int i = 0; i < n; i++) out[i] = 0.0f;
}

/* slot_scores[j] += sum over the n_q queries of probs[q][j]. */
static int h2o_observe(void *state, int layer, int kv_head, const float *probs, int n_q,
                       const int32_t *slot_pos, int n_slots, float *slot_scores, char *err,
                       size_t err_size)
{
    (void)state; (void)layer; (void)kv_head; (void)err; (void)err_size;
    for (int q = 0; q < n_q; q++) {
        const float *p = probs + (size_t)q * n_slots;
        for (int j = 0; j < n_slots; j++)
            if (slot_pos[j] >= 0) slot_scores[j] += p[j];
    }
    return 0;
}

/* Keys start at 0; attention adds to them on the host (device_score, API v2). */
static void h2o_device_score(void *state, pol_device_score *out)
{
    (void)state;
    out->kind = POL_SCORE_ZERO;
}

const pol_vtable pol_h2o_vtable = {
    .version = POL_API_VERSION,
    .name = "h2o",
    .description = "H2O: accumulated attention received (needs every step's attention)",
    .flags = POL_NEEDS_ATTENTION,
    .create = h2o_create,
    .score_keys = h2o_score,
    .device_score = h2o_device_score,
    .observe_attention = h2o_observe,
};
