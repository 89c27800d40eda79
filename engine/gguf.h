/* gguf.h — GGUF v3 reader: mmap'd file, metadata key/values, tensor table, dequantisation.
 *
 * Everything read from the file is validated before use: a malformed file gets a clear
 * message (kvs_last_error()) and a negative status, never a crash. Pointers returned by the
 * getters point into the mapping and live until gguf_close(). Strings in GGUF are
 * length-prefixed and NOT NUL-terminated: always use the returned length. */
#ifndef KVS_GGUF_H
#define KVS_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Metadata value types (GGUF spec). */
enum gguf_vtype {
    GGUF_VT_UINT8 = 0, GGUF_VT_INT8 = 1, GGUF_VT_UINT16 = 2, GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4, GGUF_VT_INT32 = 5, GGUF_VT_FLOAT32 = 6, GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_UINT64 = 10, GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12
};

/* Tensor element types (ggml numbering). */
enum gguf_ttype {
    GGUF_T_F32 = 0, GGUF_T_F16 = 1, GGUF_T_Q4_0 = 2, GGUF_T_Q4_1 = 3, GGUF_T_Q5_0 = 6,
    GGUF_T_Q5_1 = 7, GGUF_T_Q8_0 = 8, GGUF_T_Q4_K = 12, GGUF_T_Q5_K = 13, GGUF_T_Q6_K = 14,
    GGUF_T_Q8_K = 15, GGUF_T_BF16 = 30
};

typedef struct gguf_ctx gguf_ctx;

typedef struct gguf_tensor {
    const char *name;   /* NUL-terminated copy owned by the ctx */
    uint32_t n_dims;    /* 1..4 */
    uint64_t ne[4];     /* innermost first: ne[0] is the row length; unused dims are 1 */
    uint32_t type;      /* enum gguf_ttype */
    uint64_t n_elems;   /* product of ne */
    uint64_t nbytes;    /* bytes of data */
    const void *data;   /* inside the mapping, validated to lie within the file */
} gguf_tensor;

/* Open and validate `path`. If `want_arch` is non-NULL, general.architecture must equal it
 * (else KVS_EUNSUPPORTED with a message naming both). */
int gguf_open(const char *path, const char *want_arch, gguf_ctx **out);
void gguf_close(gguf_ctx *ctx);

uint32_t gguf_version(const gguf_ctx *ctx);
int64_t gguf_n_kv(const gguf_ctx *ctx);
/* Key name of entry i (NUL-terminated copy owned by ctx), its type (enum gguf_vtype). */
const char *gguf_key_at(const gguf_ctx *ctx, int64_t i);
int gguf_vtype_at(const gguf_ctx *ctx, int64_t i);
/* Index of a key, or -1. */
int64_t gguf_find_key(const gguf_ctx *ctx, const char *key);

/* Typed getters: 0 on success; KVS_ENOTFOUND if absent; KVS_EFORMAT if the stored type does
 * not fit (integers of any width convert when the value fits the target). */
int gguf_get_u32(const gguf_ctx *ctx, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_ctx *ctx, const char *key, int64_t *out);
int gguf_get_f32(const gguf_ctx *ctx, const char *key, float *out); /* float32/64 or ints */
int gguf_get_bool(const gguf_ctx *ctx, const char *key, int *out);
int gguf_get_str(const gguf_ctx *ctx, const char *key, const char **s, size_t *len);
/* Arrays: element type and count. */
int gguf_get_arr_info(const gguf_ctx *ctx, const char *key, int *elem_vtype, uint64_t *n);
/* Raw pointer to a numeric array's elements (little-endian, packed). */
int gguf_get_arr_data(const gguf_ctx *ctx, const char *key, const void **data);
/* i-th string of a string array (O(1): offsets are indexed at open). */
int gguf_get_arr_str(const gguf_ctx *ctx, const char *key, uint64_t i, const char **s,
                     size_t *len);

int64_t gguf_n_tensors(const gguf_ctx *ctx);
const gguf_tensor *gguf_tensor_at(const gguf_ctx *ctx, int64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_ctx *ctx, const char *name); /* NULL if absent */

/* Type info: name ("Q4_1"), elements per block, bytes per block. Unknown type: NULL / 0. */
const char *gguf_type_name(uint32_t type);
uint32_t gguf_type_block_elems(uint32_t type);
uint32_t gguf_type_block_bytes(uint32_t type);

/* Dequantise n elements (n a multiple of the type's block size) from src to fp32 dst.
 * KVS_EUNSUPPORTED for types not listed in enum gguf_ttype. */
int gguf_dequantize(uint32_t type, const void *src, float *dst, uint64_t n);
/* Whole tensor to fp32 (dst holds t->n_elems floats). */
int gguf_tensor_to_f32(const gguf_tensor *t, float *dst);

/* fp16 / bf16 <-> fp32 helpers (used by dequantisation and by the CUDA uploader). */
float gguf_f16_to_f32(uint16_t h);
float gguf_bf16_to_f32(uint16_t h);
uint16_t gguf_f32_to_f16(float f);

/* 1 if gguf_dequantize supports `type`, else 0 (known-but-unsupported types such as Q3_K open
 * fine, they just cannot be converted). */
int gguf_type_can_dequantize(uint32_t type);
/* Name of a metadata value type ("uint32", "string", ...), or "?" if unknown. */
const char *gguf_vtype_name(int vtype);

#endif
