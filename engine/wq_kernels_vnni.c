/* wq_kernels_vnni.c — the weight formats' dot kernels with AVX-512 VNNI (vpdpbusd on 256-bit
 * registers, AVX-512VL) (wq_kernels_x86.inc), chosen at run time (wfmt.c); empty off x86-64. */
#include "wfmt.h"

#include <string.h>

#if WQ_HAVE_X86
#define WQ_SFX vnni
#define WQ_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define WQ_VNNI 1
#include "wq_kernels_x86.inc"
#endif
