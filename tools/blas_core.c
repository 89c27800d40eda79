/* blas_core.c — make OpenBLAS use the kernels this CPU can run.
 *
 * OpenBLAS picks its kernels once, when the library loads, from the CPU model number. A
 * release older than the CPU (Debian 12 ships 0.3.21) does not know the model and falls back
 * to its "Prescott" SSE3 kernels: on this project's Xeon VM (AVX-512) sgemm ran at 65 GFLOP/s
 * instead of 320 (docs/BENCHMARKS.md). The choice cannot be changed after loading, so when
 * that happens, and the user has not set OPENBLAS_CORETYPE, kvsieve sets it from the CPU's
 * own feature flags and executes itself again, once. Set OPENBLAS_CORETYPE to override. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"

const char *cli_blas_core_for_cpu(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

void cli_blas_core_fix(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE")) return; /* the user's choice, or our own second start */
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "prescott")) return;
    const char *want = cli_blas_core_for_cpu();
    if (!want) return;
    if (setenv("OPENBLAS_CORETYPE", want, 1)) return;
    execv("/proc/self/exe", argv); /* returns only on failure: go on with the slow kernels */
    unsetenv("OPENBLAS_CORETYPE");
}
