/* wfmt_q4_0.c — Q4_0 (18-byte blocks of 32: fp16 d | qs[16]; element i < 16 is the low
 * nibble of qs[i], 16 + i the high one; x = d (q - 8)). dot = d dx (sum q qx - 8 sum qx). */
#include "wfmt.h"

#include "gguf.h"

static void dot_q4_0(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 18) {
        const uint8_t *qs = w + 2;
        int si = 0;
        for (int i = 0; i < 16; i++)
            si += (qs[i] & 0x0f) * xb[b].q[i] + (qs[i] >> 4) * xb[b].q[i + 16];
        si -= 8 * (xb[b].s16[0] + xb[b].s16[1]);
        s += wq_f16(w) * xb[b].d * (float)si;
    }
    *out = s;
}

const wfmt wfmt_q4_0 = {"Q4_0", GGUF_T_Q4_0, 32, 18, 1, 0,
                        {dot_q4_0, WQ_X86(wq_dot_q4_0_avx2), WQ_X86(wq_dot_q4_0_vnni)},
                        {NULL, WQ_X86(wq_dot4_q4_0_avx2), WQ_X86(wq_dot4_q4_0_vnni)}};
