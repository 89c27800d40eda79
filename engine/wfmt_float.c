/* wfmt_float.c — the float weight formats F32, F16, BF16: dots against fp32 activations
 * (F32 matrices go to BLAS in place; the dot is for completeness and the tests). */
#include "wfmt.h"

#include <string.h>

#include "gguf.h"

static void dot_f32(const uint8_t *w, const void *x, int n, float *out)
{
    const float *xf = x;
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        float v;
        memcpy(&v, w + 4 * (size_t)i, sizeof v);
        s += v * xf[i];
    }
    *out = s;
}

static void dot_f16(const uint8_t *w, const void *x, int n, float *out)
{
    const float *xf = x;
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += wq_f16(w + 2 * (size_t)i) * xf[i];
    *out = s;
}

static void dot_bf16(const uint8_t *w, const void *x, int n, float *out)
{
    const float *xf = x;
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, w + 2 * (size_t)i, sizeof h);
        s += gguf_bf16_to_f32(h) * xf[i];
    }
    *out = s;
}

const wfmt wfmt_f32 = {"F32", GGUF_T_F32, 1, 4, 0, 1, {dot_f32, NULL, NULL}, {NULL, NULL, NULL}};
const wfmt wfmt_f16 = {"F16", GGUF_T_F16, 1, 2, 0, 0, {dot_f16, NULL, NULL}, {NULL, NULL, NULL}};
const wfmt wfmt_bf16 = {"BF16", GGUF_T_BF16, 1, 2, 0, 0, {dot_bf16, NULL, NULL}, {NULL, NULL, NULL}};
