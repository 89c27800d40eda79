/* backend.c — choosing a backend (--device) and creating it (backend.h). */
#include "backend.h"

#include <stdio.h>
#include <string.h>

#include "core/common.h"

#ifdef KVS_HAVE_CUDA
/* engine/cuda/kernels.cu (or the emulator's stand-ins) */
int kvs_cuda_device_count(void);
void kvs_cuda_describe(char *buf, size_t size);
#endif

/* ---- backend selection ------------------------------------------------------------------- */

int kvs_device_parse(const char *s, kvs_device_kind *out)
{
    if (s && !strcmp(s, "cpu")) *out = KVS_DEVICE_CPU;
    else if (s && !strcmp(s, "cuda")) *out = KVS_DEVICE_CUDA;
    else if (s && !strcmp(s, "auto")) *out = KVS_DEVICE_AUTO;
    else return kvs_error(KVS_EINVAL, "--device %s: must be cpu, cuda or auto", s ? s : "(null)");
    return KVS_OK;
}

const char *kvs_device_name(kvs_device_kind k)
{
    return k == KVS_DEVICE_CUDA ? "cuda" : k == KVS_DEVICE_AUTO ? "auto" : "cpu";
}

int kvs_device_count(void)
{
#ifdef KVS_HAVE_CUDA
    return kvs_cuda_device_count();
#else
    return 0;
#endif
}

void kvs_device_describe(char *buf, size_t size)
{
#ifdef KVS_HAVE_CUDA
    kvs_cuda_describe(buf, size);
#else
    snprintf(buf, size, "built without CUDA (KVS_CUDA=OFF or no nvcc)");
#endif
}

int kvs_device_resolve(kvs_device_kind want, kvs_device_kind *out)
{
    int n = kvs_device_count();
    if (want == KVS_DEVICE_AUTO) {
        *out = n > 0 ? KVS_DEVICE_CUDA : KVS_DEVICE_CPU;
        return KVS_OK;
    }
    if (want == KVS_DEVICE_CUDA && n == 0) {
#ifdef KVS_HAVE_CUDA
        return kvs_error(KVS_EUNSUPPORTED, "--device cuda: no CUDA device is visible (use "
                         "--device cpu or auto)");
#else
        return kvs_error(KVS_EUNSUPPORTED, "--device cuda: this kvsieve was built without "
                         "CUDA (rebuild with -DKVS_CUDA=ON where nvcc is installed)");
#endif
    }
    *out = want == KVS_DEVICE_CUDA ? KVS_DEVICE_CUDA : KVS_DEVICE_CPU;
    return KVS_OK;
}

/* ---- creation ------------------------------------------------------------------------- */

int kvs_backend_create(kvs_device_kind kind, const model *m, const kvs_backend_opts *o,
                       kvs_backend **out)
{
    *out = NULL;
    int rc = kvs_device_resolve(kind, &kind);
    if (rc) return rc;
    return kind == KVS_DEVICE_CUDA ? kvs_backend_cuda_create(m, o, out)
                                   : kvs_backend_cpu_create(m, o, out);
}

void kvs_backend_destroy(kvs_backend *b)
{
    if (b) b->i->destroy(b);
}
