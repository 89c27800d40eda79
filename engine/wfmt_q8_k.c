/* wfmt_q8_k.c — Q8_K (292-byte super-blocks of 256: fp32 d | int8 q[256] | int16 bsums[16];
 * x = d q). Rare in model files; scalar only. */
#include "wfmt.h"

#include <string.h>

#include "gguf.h"

static void dot_q8_k(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 292) {
        float d;
        memcpy(&d, w, sizeof d);
        const int8_t *q = (const int8_t *)(w + 4);
        for (int j = 0; j < 8; j++, xb++) {
            int si = 0;
            for (int i = 0; i < 32; i++) si += q[32 * j + i] * xb->q[i];
            s += d * xb->d * (float)si;
        }
    }
    *out = s;
}

const wfmt wfmt_q8_k = {"Q8_K", GGUF_T_Q8_K, 256, 292, 1, 0, {dot_q8_k, NULL, NULL}, {NULL, NULL, NULL}};
