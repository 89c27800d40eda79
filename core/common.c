/* common.c — per-thread error messages, jemalloc-backed big allocations, clock. */
#define _POSIX_C_SOURCE 200809L
#include "core/common.h"

#include <jemalloc/jemalloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Thread_local char err_msg[1024];

int kvs_error(int code, const char *fmt, ...)
{
    /* Format into a local buffer first: callers often pass kvs_last_error() itself as an
     * argument to prefix context ("policy x: %s"). */
    char buf[sizeof err_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(err_msg, buf, sizeof err_msg);
    return code;
}

const char *kvs_last_error(void) { return err_msg; }

const char *kvs_strerror(int code)
{
    switch (code) {
    case KVS_OK: return "ok";
    case KVS_EINVAL: return "invalid argument";
    case KVS_ENOMEM: return "out of memory";
    case KVS_EIO: return "I/O error";
    case KVS_EFORMAT: return "malformed file";
    case KVS_ERANGE: return "out of range";
    case KVS_ENOTFOUND: return "not found";
    case KVS_EUNSUPPORTED: return "unsupported";
    default: return "unknown error";
    }
}

void *kvs_alloc(size_t bytes)
{
    if (bytes == 0) bytes = 1;
    void *p = NULL;
    /* jemalloc's prefixed API (Debian builds it with the je_ prefix off: plain names map to
     * jemalloc when linked), so use mallocx for alignment. */
    p = mallocx(bytes, MALLOCX_ALIGN(64));
    if (!p) kvs_error(KVS_ENOMEM, "cannot allocate %zu bytes", bytes);
    return p;
}

void *kvs_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        kvs_error(KVS_ENOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    size_t bytes = n * size;
    if (bytes == 0) bytes = 1;
    void *p = mallocx(bytes, MALLOCX_ALIGN(64) | MALLOCX_ZERO);
    if (!p) kvs_error(KVS_ENOMEM, "cannot allocate %zu bytes", bytes);
    return p;
}

void kvs_free(void *p)
{
    if (p) dallocx(p, 0);
}

double kvs_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
