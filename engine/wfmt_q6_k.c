/* wfmt_q6_k.c — Q6_K (210-byte super-blocks of 256: ql[128] | qh[64] | int8 scales[16] |
 * fp16 d). Half h (128 elements) in four runs of 32: run k takes nibble k/2 of
 * ql[64h + 32(k%2) + l] and bits 2k, 2k+1 of qh[32h + l]; q = that 6-bit value - 32;
 * x = d scales[e/16] q. Activation block 4h + k covers run k of half h (two scales). */
#include "wfmt.h"

#include "gguf.h"

static void dot_q6_k(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 210, xb += 8) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        float d = wq_f16(w + 208);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++) {
                const wq8_block *xk = &xb[4 * h + k];
                const uint8_t *l4 = ql + 64 * h + 32 * (k % 2), *h2 = qh + 32 * h;
                int si[2] = {0, 0};
                for (int l = 0; l < 32; l++) {
                    int lo = (l4[l] >> (4 * (k / 2))) & 0x0f;
                    int hi = (h2[l] >> (2 * k)) & 0x03;
                    si[l / 16] += ((lo | hi << 4) - 32) * xk->q[l];
                }
                const int g = 8 * h + 2 * k; /* scale group of element 128h + 32k */
                s += xk->d * d * ((float)sc[g] * (float)si[0] + (float)sc[g + 1] * (float)si[1]);
            }
    }
    *out = s;
}

const wfmt wfmt_q6_k = {"Q6_K", GGUF_T_Q6_K, 256, 210, 1, 0,
                        {dot_q6_k, WQ_X86(wq_dot_q6_k_avx2), WQ_X86(wq_dot_q6_k_vnni)},
                        {NULL, WQ_X86(wq_dot4_q6_k_avx2), WQ_X86(wq_dot4_q6_k_vnni)}};
