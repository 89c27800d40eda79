/* streaming.c — `streaming` (StreamingLLM, Xiao et al. 2023): keep the first `sink` tokens
 * (attention sinks, default 4) and the most recent ones. Score = position: newer is kept; the
 * sinks are protected by the driver like for every policy. */
#include "memory/policy.h"

static void streaming_score(void *state, int layer, int kv_head, const float *keys,
                            const int32_t *pos, int n, float *out)
{
    (void)state; (void)layer; (void)kv_head; (void)keys;
    /* Positions above 2^24 round to equal floats; the driver breaks ties by position. */
    for (int i = 0; i < n; i++) out[i] = (float)pos[i];
}

/* The score is the position (device_score, API v2). */
static void streaming_device_score(void *state, pol_device_score *out)
{
    (void)state;
    out->kind = POL_SCORE_POS;
}

const pol_vtable pol_streaming_vtable = {
    .version = POL_API_VERSION,
    .name = "streaming",
    .description = "StreamingLLM: keep the first `sink` tokens (default 4) and the most recent ones; score = position",
    .default_args = "sink=4",
    .score_keys = streaming_score,
    .device_score = streaming_device_score,
};
