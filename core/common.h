/* common.h — status codes, error messages and big host allocations shared by every module.
 *
 * Convention (STYLE.md): functions return int status, 0 = ok, negative KVS_E* on failure, and
 * record a human-readable message with kvs_error() that the caller can print with
 * kvs_last_error(). The message is per thread (like errno), so the engine thread and server
 * threads do not clobber each other's messages. */
#ifndef KVS_COMMON_H
#define KVS_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    KVS_OK = 0,
    KVS_EINVAL = -1,   /* bad argument or bad input from outside */
    KVS_ENOMEM = -2,   /* host allocation failed, or KV pool out of pages */
    KVS_EIO = -3,      /* file could not be opened / read / mapped */
    KVS_EFORMAT = -4,  /* malformed file (GGUF, filters, config) */
    KVS_ERANGE = -5,   /* value out of allowed range (prompt too long, id out of vocab) */
    KVS_ENOTFOUND = -6,/* missing key / tensor / policy */
    KVS_EUNSUPPORTED = -7 /* valid but not supported (tensor type, architecture) */
};

#if defined(__GNUC__)
#define KVS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define KVS_PRINTF(a, b)
#endif

/* Record a message for the current thread and return `code` (so: return kvs_error(...)). */
int kvs_error(int code, const char *fmt, ...) KVS_PRINTF(2, 3);
/* The last message recorded on this thread ("" if none). */
const char *kvs_last_error(void);
/* Name of a status code ("invalid argument", ...). */
const char *kvs_strerror(int code);

/* Big host buffers (weights, KV pool, activations) go through jemalloc, 64-byte aligned.
 * Returns NULL on failure (and records a message). kvs_free(NULL) is a no-op. */
void *kvs_alloc(size_t bytes);
void *kvs_calloc(size_t n, size_t size);
void kvs_free(void *p);

/* Monotonic wall-clock seconds. */
double kvs_now(void);

#define KVS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVS_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
