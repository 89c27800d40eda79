/* tova.c — `tova` (Token Omission Via Attention, Oren et al. 2024): a key's score is the
 * attention the LAST query gave it (averaged over the GQA group by the caller), overwritten
 * at every step. New keys start at 0 until their step's attention is observed. */
#include "memory/policy.h"

#include <stdio.h>

static int tova_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                       void **state, char *err, size_t err_size)
{
    (void)mi; (void)opts;
    char key[64], val[256];
    const char *cur = args;
    if (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        snprintf(err, err_size, "unknown option '%s' (tova takes only the common options)",
                 key);
        return -1;
    }
    *state = NULL;
    return 0;
}

static void tova_score(void *state, int layer, int kv_head, const float *keys,
                       const int32_t *pos, int n, float *out)
{
    (void)state; (void)layer; (void)kv_head; (void)keys; (void)pos;
    for (int i = 0; i < n; i++) out[i] = 0.0f;
}

/* slot_scores[j] = probs[n_q - 1][j]: the newest query's attention. */
static int tova_observe(void *state, int layer, int kv_head, const float *probs, int n_q,
                        const int32_t *slot_pos, int n_slots, float *slot_scores, char *err,
                        size_t err_size)
{
    (void)state; (void)layer; (void)kv_head; (void)err; (void)err_size;
    if (n_q <= 0) return 0;
    const float *p = probs + (size_t)(n_q - 1) * n_slots;
    for (int j = 0; j < n_slots; j++)
        if (slot_pos[j] >= 0) slot_scores[j] = p[j];
    return 0;
}

/* Keys start at 0; attention adds to them on the host (device_score, API v2). */
static void tova_device_score(void *state, pol_device_score *out)
{
    (void)state;
    out->kind = POL_SCORE_ZERO;
}

const pol_vtable pol_tova_vtable = {
    .version = POL_API_VERSION,
    .name = "tova",
    .description = "TOVA: attention of the last query (needs every step's attention)",
    .flags = POL_NEEDS_ATTENTION,
    .create = tova_create,
    .score_keys = tova_score,
    .device_score = tova_device_score,
    .observe_attention = tova_observe,
};
