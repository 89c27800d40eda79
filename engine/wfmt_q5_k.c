/* wfmt_q5_k.c — Q5_K (176-byte super-blocks of 256: fp16 d | fp16 dmin | scales[12] as Q4_K |
 * qh[32] | qs[128]; sub-block j takes nibble j%2 of qs[32(j/2) ..] and bit j of qh[l] as
 * bit 4; x = d sc[j] q - dmin mn[j]). Scalar only for now. */
#include "wfmt.h"

#include "gguf.h"

static void dot_q5_k(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 176, xb += 8) {
        float d = wq_f16(w), dmin = wq_f16(w + 2);
        uint8_t sc[8], mn[8];
        wq_k_scale_min(w + 4, sc, mn);
        const uint8_t *qh = w + 16, *qs = w + 48;
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            int si = 0;
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0x0f) | (int)((qh[l] >> j) & 1u) << 4;
                si += v * xb[j].q[l];
            }
            s += xb[j].d * (d * (float)sc[j] * (float)si -
                            dmin * (float)mn[j] * (float)(xb[j].s16[0] + xb[j].s16[1]));
        }
    }
    *out = s;
}

const wfmt wfmt_q5_k = {"Q5_K", GGUF_T_Q5_K, 256, 176, 1, 0, {dot_q5_k, NULL, NULL}, {NULL, NULL, NULL}};
