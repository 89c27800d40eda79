/* wfmt.c — the weight-format table, the activation quantiser and the run-time choice of the
 * dot kernels' instruction set (wfmt.h). */
#include "wfmt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gguf.h"

static const wfmt *const wfmt_table[] = {
    &wfmt_f32, &wfmt_f16, &wfmt_bf16, &wfmt_q4_0, &wfmt_q4_1, &wfmt_q5_0,
    &wfmt_q5_1, &wfmt_q8_0, &wfmt_q4_k, &wfmt_q5_k, &wfmt_q6_k, &wfmt_q8_k,
};

const wfmt *wfmt_get(uint32_t gguf_type)
{
    for (size_t i = 0; i < sizeof wfmt_table / sizeof wfmt_table[0]; i++)
        if (wfmt_table[i]->type == gguf_type) return wfmt_table[i];
    return NULL;
}

size_t wfmt_row_bytes(const wfmt *f, int n)
{
    return (size_t)(n / f->blck) * (size_t)f->bytes;
}

/* ---- instruction-set level ------------------------------------------------------------- */

static int wq_isa_level = -1; /* -1: not chosen yet */

wq_isa wq_isa_best(void)
{
#if WQ_HAVE_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    /* f16c has no __builtin_cpu_supports name in older GCC; every AVX2 CPU has it */
    if (!avx2) return WQ_ISA_SCALAR;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl"))
        return WQ_ISA_VNNI;
    return WQ_ISA_AVX2;
#else
    return WQ_ISA_SCALAR;
#endif
}

const char *wq_isa_name(wq_isa level)
{
    static const char *names[] = {"scalar", "avx2", "vnni"};
    return level >= 0 && level < WQ_ISA_N ? names[level] : "?";
}

wq_isa wq_isa_force(wq_isa level)
{
    wq_isa best = wq_isa_best();
    if (level > best) level = best;
    if (level < WQ_ISA_SCALAR) level = WQ_ISA_SCALAR;
    wq_isa_level = (int)level;
    return level;
}

wq_isa wq_isa_current(void)
{
    if (wq_isa_level < 0) {
        wq_isa want = WQ_ISA_N;
        const char *e = getenv("KVSIEVE_WQ_ISA");
        if (e) {
            for (int i = 0; i < WQ_ISA_N; i++)
                if (!strcasecmp(e, wq_isa_name((wq_isa)i))) want = (wq_isa)i;
        }
        wq_isa_force(want);
    }
    return (wq_isa)wq_isa_level;
}

wfmt_dot_fn wfmt_dot(const wfmt *f)
{
    for (int l = (int)wq_isa_current(); l >= 0; l--)
        if (f->dot[l]) return f->dot[l];
    return f->dot[0];
}

wfmt_dot4_fn wfmt_dot4(const wfmt *f)
{
    for (int l = (int)wq_isa_current(); l >= 0; l--)
        if (f->dot4[l]) return f->dot4[l];
    return NULL;
}

/* ---- activations ----------------------------------------------------------------------- */

void wq8_quantize(const float *x, wq8_block *y, int n)
{
    for (int b = 0; b < n / WQ_QK; b++, x += WQ_QK) {
        float amax = 0.0f;
        for (int i = 0; i < WQ_QK; i++) {
            float a = fabsf(x[i]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        int s0 = 0, s1 = 0;
        for (int i = 0; i < WQ_QK; i++) {
            int q = (int)lrintf(x[i] * id);
            q = q > 127 ? 127 : q < -127 ? -127 : q;
            y[b].q[i] = (int8_t)q;
            if (i < 16) s0 += q; else s1 += q;
        }
        y[b].d = d;
        y[b].s16[0] = (int16_t)s0;
        y[b].s16[1] = (int16_t)s1;
    }
}

/* ---- helpers the format files share ---------------------------------------------------- */

float wq_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return gguf_f16_to_f32(h);
}

void wq_k_scale_min(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30));
    }
}
