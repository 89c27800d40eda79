/* wq_kernels_avx2.c — the weight formats' dot kernels for AVX2 + FMA + F16C
 * (wq_kernels_x86.inc), chosen at run time (wfmt.c); empty off x86-64. */
#include "wfmt.h"

#include <string.h>

#if WQ_HAVE_X86
#define WQ_SFX avx2
#define WQ_TARGET __attribute__((target("avx2,fma,f16c")))
#define WQ_VNNI 0
#include "wq_kernels_x86.inc"
#endif
