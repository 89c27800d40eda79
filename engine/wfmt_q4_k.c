/* wfmt_q4_k.c — Q4_K (144-byte super-blocks of 256: fp16 d | fp16 dmin | scales[12] |
 * qs[128]; 8 sub-blocks of 32, sub-block j = 2g + h is nibble h of qs[32g .. 32g+31];
 * x = d sc[j] q - dmin mn[j]). Each sub-block lines up with one wq8 activation block:
 * dot = sum_j dx_j (d sc_j sum q qx - dmin mn_j sum qx). */
#include "wfmt.h"

#include "gguf.h"

static void dot_q4_k(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 144, xb += 8) {
        float d = wq_f16(w), dmin = wq_f16(w + 2);
        uint8_t sc[8], mn[8];
        wq_k_scale_min(w + 4, sc, mn);
        const uint8_t *qs = w + 16;
        for (int g = 0; g < 4; g++) {
            const wq8_block *x0 = &xb[2 * g], *x1 = &xb[2 * g + 1];
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (qs[32 * g + l] & 0x0f) * x0->q[l];
                s1 += (qs[32 * g + l] >> 4) * x1->q[l];
            }
            s += x0->d * (d * (float)sc[2 * g] * (float)s0 -
                          dmin * (float)mn[2 * g] * (float)(x0->s16[0] + x0->s16[1]));
            s += x1->d * (d * (float)sc[2 * g + 1] * (float)s1 -
                          dmin * (float)mn[2 * g + 1] * (float)(x1->s16[0] + x1->s16[1]));
        }
    }
    *out = s;
}

const wfmt wfmt_q4_k = {"Q4_K", GGUF_T_Q4_K, 256, 144, 1, 0,
                        {dot_q4_k, WQ_X86(wq_dot_q4_k_avx2), WQ_X86(wq_dot_q4_k_vnni)},
                        {NULL, WQ_X86(wq_dot4_q4_k_avx2), WQ_X86(wq_dot4_q4_k_vnni)}};
