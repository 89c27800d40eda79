/* wfmt_q5_0.c — Q5_0 (22-byte blocks of 32: fp16 d | qh u32 | qs[16]; bit e of qh is bit 4
 * of element e; x = d (q - 16)). */
#include "wfmt.h"

#include "gguf.h"

static void dot_q5_0(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 22) {
        uint32_t qh = (uint32_t)w[2] | (uint32_t)w[3] << 8 | (uint32_t)w[4] << 16 |
                      (uint32_t)w[5] << 24;
        const uint8_t *qs = w + 6;
        int si = 0;
        for (int i = 0; i < 16; i++) {
            int lo = (qs[i] & 0x0f) | (int)((qh >> i) & 1u) << 4;
            int hi = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1u) << 4;
            si += lo * xb[b].q[i] + hi * xb[b].q[i + 16];
        }
        si -= 16 * (xb[b].s16[0] + xb[b].s16[1]);
        s += wq_f16(w) * xb[b].d * (float)si;
    }
    *out = s;
}

const wfmt wfmt_q5_0 = {"Q5_0", GGUF_T_Q5_0, 32, 22, 1, 0, {dot_q5_0, NULL, NULL}, {NULL, NULL, NULL}};
