/* blas_core.c — make OpenBLAS use the kernels this CPU can run, and OpenMP wait passively.
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

/* Set OPENBLAS_CORETYPE when the loaded kernels are the fallback; 1 if it did. */
static int blas_core_env(void)
{
    if (getenv("OPENBLAS_CORETYPE")) return 0; /* the user's choice, or our own second start */
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "prescott")) return 0;
    const char *want = cli_blas_core_for_cpu();
    return want && setenv("OPENBLAS_CORETYPE", want, 1) == 0;
}

/* OpenMP's waiting threads: libgomp spins for a while at every barrier before it sleeps.
 * On a machine whose cores are shared with other busy processes a spinning thread burns the
 * time slice the thread it waits for needs (2-thread decode measured at 1.7 tok/s against
 * 37 with passive waiting, docs/BENCHMARKS.md), so unless the user chose a policy
 * (OMP_WAIT_POLICY or GOMP_SPINCOUNT), kvsieve waits passively. 1 if it set it. */
static int omp_wait_env(void)
{
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return 0;
    return setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0;
}

void cli_blas_core_fix(char **argv)
{
    int changed = blas_core_env();
    changed |= omp_wait_env();
    if (!changed) return;
    /* both libraries read their settings when they load: start again, once (the variables
     * are set now, so the second start changes nothing) */
    execv("/proc/self/exe", argv); /* returns only on failure: go on as we are */
}
