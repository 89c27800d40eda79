/* wfmt_q4_1.c — Q4_1 (20-byte blocks of 32: fp16 d | fp16 m | qs[16], nibbles as Q4_0;
 * x = d q + m). dot = d dx sum q qx + m dx sum qx. */
#include "wfmt.h"

#include "gguf.h"

static void dot_q4_1(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 20) {
        const uint8_t *qs = w + 4;
        int si = 0;
        for (int i = 0; i < 16; i++)
            si += (qs[i] & 0x0f) * xb[b].q[i] + (qs[i] >> 4) * xb[b].q[i + 16];
        s += wq_f16(w) * xb[b].d * (float)si +
             wq_f16(w + 2) * xb[b].d * (float)(xb[b].s16[0] + xb[b].s16[1]);
    }
    *out = s;
}

const wfmt wfmt_q4_1 = {"Q4_1", GGUF_T_Q4_1, 32, 20, 1, 0,
                        {dot_q4_1, WQ_X86(wq_dot_q4_1_avx2), WQ_X86(wq_dot_q4_1_vnni)},
                        {NULL, WQ_X86(wq_dot4_q4_1_avx2), WQ_X86(wq_dot4_q4_1_vnni)}};
