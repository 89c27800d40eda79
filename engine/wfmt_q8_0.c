/* wfmt_q8_0.c — Q8_0 (34-byte blocks of 32: fp16 d | int8 q[32]; x = d q). */
#include "wfmt.h"

#include "gguf.h"

static void dot_q8_0(const uint8_t *w, const void *x, int n, float *out)
{
    const wq8_block *xb = x;
    float s = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 34) {
        const int8_t *q = (const int8_t *)(w + 2);
        int si = 0;
        for (int i = 0; i < 32; i++) si += q[i] * xb[b].q[i];
        s += wq_f16(w) * xb[b].d * (float)si;
    }
    *out = s;
}

const wfmt wfmt_q8_0 = {"Q8_0", GGUF_T_Q8_0, 32, 34, 1, 0,
                        {dot_q8_0, WQ_X86(wq_dot_q8_0_avx2), WQ_X86(wq_dot_q8_0_vnni)},
                        {NULL, WQ_X86(wq_dot4_q8_0_avx2), WQ_X86(wq_dot4_q8_0_vnni)}};
