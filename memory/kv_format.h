/* kv_format.h — KV element formats as data: one trait table per format (docs/ARCHITECTURE.md,
 * "KV formats").
 *
 * A format says how one row (the head_dim elements of one key or one value of one slot) is
 * stored: its size in bytes (scales and zero points included), how to write it from fp32 and
 * how to read rows back as fp32. The K/V store (kv_store.h) keeps rows of one format for keys
 * and one for values, slot after slot; attention reads a tile of consecutive slots through
 * read_rows, so a format is read where it is stored (no fp32 copy of the cache).
 *
 * Adding a format is one file (memory/kv_fmt_NAME.c defining `const kv_format kv_fmt_NAME`)
 * plus one line in kv_format.c's table plus its tests. */
#ifndef KVS_MEMORY_KV_FORMAT_H
#define KVS_MEMORY_KV_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define KV_FORMAT_VERSION 1

typedef struct kv_format {
    int version;             /* KV_FORMAT_VERSION */
    const char *name;        /* "f32", "f16", "bf16", ... ([a-z0-9_]+) */
    const char *description; /* one line for --help and docs */
    /* Bytes of one row of head_dim elements, scales included (0: this head_dim is not
     * supported by the format, e.g. not a multiple of its group). */
    size_t (*row_bytes)(int head_dim);
    /* Store src[head_dim] into dst (row_bytes bytes). */
    void (*write_row)(void *dst, const float *src, int head_dim);
    /* Read n consecutive rows starting at src (row_bytes apart) as fp32. Returns a pointer to
     * n * head_dim floats: either into the store itself (a format stored as fp32 may do
     * that) or into scratch, which has room for n * head_dim floats. */
    const float *(*read_rows)(const void *src, int n, int head_dim, float *scratch);
} kv_format;

/* The formats built in, by name; NULL if unknown. */
const kv_format *kv_format_find(const char *name);
/* The built-in formats, in a fixed order (f32 first); *n gets their count. */
const kv_format *const *kv_format_list(int *n);
/* "f32, f16, bf16": the names, for help text and error messages. */
const char *kv_format_names(void);
/* name -> format; KVS_EINVAL with a message listing the known names otherwise. */
int kv_format_parse(const char *name, const kv_format **out);
/* A KV dtype spec: "NAME" (keys and values in one format) or "KEYS/VALUES" (e.g. "int8/int4":
 * keys need more bits than values). KVS_EINVAL naming the bad part otherwise. */
int kv_format_spec_parse(const char *spec, const kv_format **k, const kv_format **v);
/* The canonical spec of a pair ("f16", or "int8/int4" when they differ) into buf. */
const char *kv_format_spec_name(const kv_format *k, const kv_format *v, char *buf, size_t size);

extern const kv_format kv_fmt_f32, kv_fmt_f16, kv_fmt_bf16;
/* Per-token uniform quantisation, groups of 32 with fp16 scale + zero (kv_quant.h). */
extern const kv_format kv_fmt_int8, kv_fmt_int4, kv_fmt_int2;

/* Scalar conversions shared by the 16-bit formats (and by the CUDA twins): round to nearest
 * even, NaN stays NaN, overflow to infinity as IEEE does. */
uint16_t kv_f32_to_f16(float x);
float kv_f16_to_f32(uint16_t h);
uint16_t kv_f32_to_bf16(float x);
float kv_bf16_to_f32(uint16_t h);

#endif
