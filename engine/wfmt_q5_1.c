/* wfmt_q5_1.c — Q5_1 (24-byte blocks of 32: fp16 d | fp16 m | qh u32 | qs[16]; the 5-bit q
 * as Q5_0, unsigned; x = d q + m). */
#include "wfmt.h"

#include "gguf.h"

static void dot_q5_1(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 24) {
        uint32_t qh = (uint32_t)w[4] | (uint32_t)w[5] << 8 | (uint32_t)w[6] << 16 |
                      (uint32_t)w[7] << 24;
        const uint8_t *qs = w + 8;
        int si = 0;
        for (int i = 0; i < 16; i++) {
            int lo = (qs[i] & 0x0f) | (int)((qh >> i) & 1u) << 4;
            int hi = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1u) << 4;
            si += lo * xb[b].q[i] + hi * xb[b].q[i + 16];
        }
        s += wq_f16(w) * xb[b].d * (float)si +
             wq_f16(w + 2) * xb[b].d * (float)(xb[b].s16[0] + xb[b].s16[1]);
    }
    *out = s;
}

const wfmt wfmt_q5_1 = {"Q5_1", GGUF_T_Q5_1, 32, 24, 1, 0, {dot_q5_1, NULL, NULL}, {NULL, NULL, NULL}};
