/* gguf.c — GGUF v3 (and v2) reader: mmap the file, validate every byte we use, index the
 * metadata and the tensor table.
 *
 * File layout (little-endian; "str" = u64 byte length + that many bytes, no NUL):
 *
 *   header    "GGUF" | u32 version | u64 n_tensors | u64 n_kv                  (24 bytes)
 *   n_kv x    str key | u32 vtype | value
 *               value = scalar (1, 2, 4 or 8 bytes; bool is one byte, 0 or 1) | str | array
 *               array = u32 elem_vtype | u64 n | n values of elem_vtype (arrays may nest)
 *   n_tensors x  str name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset
 *   padding   up to the next multiple of general.alignment (default 32)
 *   data      tensor i lives at data_start + offset_i; offsets are multiples of the alignment
 *
 * Version 2 has the same layout as 3 (3 only added big-endian files, which we reject).
 *
 * Validation policy: the parser keeps `pos <= size` as an invariant and checks every length
 * against the bytes left *before* using or allocating for it, so a hostile count can neither
 * read out of bounds nor make us allocate more than a small multiple of the file size.
 * Errors name the file, the item being parsed and the byte offset. The mapping is read-only
 * and private; a file truncated by someone else *after* gguf_open() would still SIGBUS on
 * access, which no reader can prevent. */
#include "gguf.h"
#include "core/common.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian host (GGUF data is little-endian)"
#endif

#define GGUF_HEADER_BYTES 24u
/* Smallest possible entries, used to bound the header's counts by the file size:
 * a key/value is u64 key length + 1-byte key + u32 type + 1-byte value = 14 bytes;
 * a tensor info is u64 name length + 1-byte name + u32 n_dims + one u64 ne + u32 type +
 * u64 offset = 33 bytes. (Empty names are rejected, so 1 byte is the shortest.) */
#define GGUF_MIN_KV_BYTES 14u
#define GGUF_MIN_TENSOR_BYTES 33u
#define GGUF_MAX_ARRAY_DEPTH 4     /* array of array of ... : real files use at most 2 */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4u
#define GGUF_NAME_SHOW 96          /* longest name quoted in an error message */

typedef unsigned long long gguf_ull; /* for printf: uint64_t is not always unsigned long long */

/* One metadata entry. `off` is the file offset of the value: the scalar itself, the string's
 * bytes, or an array's first element. For arrays `n` is the element count, for strings the
 * byte length. String arrays get `str_offs`, the offset of each element's length prefix, so
 * gguf_get_arr_str is O(1). */
typedef struct gguf_kv {
    const char *key;
    uint32_t vtype;
    uint32_t elem_vtype;
    uint64_t n;
    uint64_t off;
    uint64_t *str_offs;
} gguf_kv;

/* Names (keys, tensor names) are copied NUL-terminated, back to back, into one buffer per
 * kind; entries hold offsets while parsing and get pointers once the buffer stops growing. */
typedef struct gguf_arena {
    char *buf;
    size_t len, cap;
} gguf_arena;

/* Open-addressing hash from name to entry index (-1 = empty slot). */
typedef struct gguf_index {
    int64_t *slots;
    uint64_t mask;
} gguf_index;

struct gguf_ctx {
    char *path;
    const uint8_t *map;
    uint64_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_start;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    gguf_tensor *tensors;
    gguf_arena key_names, tensor_names;
    gguf_index kv_index, tensor_index;
};

/* Parser state: the cursor and a description of the item being read, for messages. */
typedef struct gguf_parser {
    gguf_ctx *ctx;
    uint64_t pos;
    char what[160];
    size_t *name_off;    /* per entry: offset of its name in the arena being filled */
    uint64_t *t_offset;  /* per tensor: data offset as stored in the file */
    uint64_t kv_cap, tensor_cap, name_cap, offset_cap; /* allocated entries of each array */
} gguf_parser;

/* ---- small helpers ------------------------------------------------------------------------ */

static uint32_t gguf_vtype_size(uint32_t t)
{
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0; /* string, array, unknown */
    }
}

const char *gguf_vtype_name(int t)
{
    static const char *const names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32",
                                        "float32", "bool", "string", "array", "uint64",
                                        "int64", "float64"};
    if (t < 0 || t > GGUF_VT_FLOAT64) return "?";
    return names[t];
}

/* a * b without wrapping; 0 on overflow. */
static int gguf_mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static uint64_t gguf_rd_u64_at(const gguf_ctx *ctx, uint64_t off)
{
    uint64_t v;
    memcpy(&v, ctx->map + off, sizeof v);
    return v;
}

/* Make room for `need` entries of `elem` bytes in *arr. The tables grow as entries are
 * actually parsed rather than being sized from the header's counts: a corrupt count in a
 * multi-GB file then costs nothing before the parse fails. */
static int gguf_grow(void **arr, uint64_t *cap, uint64_t need, size_t elem)
{
    if (need <= *cap) return 0;
    uint64_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    if (c > SIZE_MAX / elem) return KVS_ENOMEM;
    void *n = realloc(*arr, (size_t)c * elem);
    if (!n) return KVS_ENOMEM;
    *arr = n;
    *cap = c;
    return 0;
}

/* FNV-1a: short keys, no adversary worth more than this (input is bounded by the file). */
static uint64_t gguf_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- error reporting during parsing ------------------------------------------------------- */

KVS_PRINTF(3, 4)
static int gguf_fail(const gguf_parser *p, int code, const char *fmt, ...)
{
    char msg[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kvs_error(code, "%s: %s: %s", p->ctx->path, p->what, msg);
}

/* A name from the file, made safe to print: at most GGUF_NAME_SHOW bytes (then "..."), control
 * bytes shown as '?' so a corrupt file cannot put escape sequences on the user's terminal. */
typedef struct { char s[GGUF_NAME_SHOW + 4]; } gguf_quoted;

static gguf_quoted gguf_quote(const char *name, uint64_t len)
{
    gguf_quoted q;
    size_t n = len > GGUF_NAME_SHOW ? GGUF_NAME_SHOW : (size_t)len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        q.s[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    memcpy(q.s + n, len > GGUF_NAME_SHOW ? "..." : "", len > GGUF_NAME_SHOW ? 4 : 1);
    return q;
}

/* Describe the item being parsed, quoting a (length-prefixed) name from the file. */
static void gguf_set_what(gguf_parser *p, const char *kind, uint64_t name_off, uint64_t len)
{
    snprintf(p->what, sizeof p->what, "%s '%s'", kind,
             gguf_quote((const char *)p->ctx->map + name_off, len).s);
}

/* ---- cursor reads: each checks the bytes left first --------------------------------------- */

static int gguf_need(gguf_parser *p, uint64_t n, const char *field)
{
    if (n <= p->ctx->size - p->pos) return 0;
    return gguf_fail(p, KVS_EFORMAT,
                     "%s at byte %llu needs %llu bytes but the file ends at byte %llu "
                     "(truncated download?)",
                     field, (gguf_ull)p->pos, (gguf_ull)n, (gguf_ull)p->ctx->size);
}

static int gguf_rd_u32(gguf_parser *p, const char *field, uint32_t *v)
{
    int rc = gguf_need(p, 4, field);
    if (rc) return rc;
    memcpy(v, p->ctx->map + p->pos, 4);
    p->pos += 4;
    return 0;
}

static int gguf_rd_u64(gguf_parser *p, const char *field, uint64_t *v)
{
    int rc = gguf_need(p, 8, field);
    if (rc) return rc;
    memcpy(v, p->ctx->map + p->pos, 8);
    p->pos += 8;
    return 0;
}

/* A length-prefixed string: returns the offset of its bytes and its length. */
static int gguf_rd_str(gguf_parser *p, const char *field, uint64_t *off, uint64_t *len)
{
    uint64_t at = p->pos;
    int rc = gguf_rd_u64(p, field, len);
    if (rc) return rc;
    if (*len > p->ctx->size - p->pos)
        return gguf_fail(p, KVS_EFORMAT,
                         "%s at byte %llu claims %llu bytes, but only %llu bytes of the file "
                         "are left (corrupt or truncated file)",
                         field, (gguf_ull)at, (gguf_ull)*len, (gguf_ull)(p->ctx->size - p->pos));
    *off = p->pos;
    p->pos += *len;
    return 0;
}

/* Copy a name (key or tensor name) from the file into `a`, NUL-terminated; *where gets its
 * offset in the arena. Names must be non-empty and free of NUL bytes (lookups use C strings). */
static int gguf_arena_add(gguf_parser *p, gguf_arena *a, uint64_t off, uint64_t len,
                          const char *kind, size_t *where)
{
    if (len == 0)
        return gguf_fail(p, KVS_EFORMAT, "empty %s at byte %llu", kind, (gguf_ull)off);
    if (memchr(p->ctx->map + off, 0, (size_t)len))
        return gguf_fail(p, KVS_EFORMAT, "%s at byte %llu contains a NUL byte", kind,
                         (gguf_ull)off);
    if (a->cap - a->len < len + 1) {
        size_t cap = a->cap ? a->cap : 4096;
        while (cap - a->len < len + 1) {
            if (cap > SIZE_MAX / 2)
                return gguf_fail(p, KVS_ENOMEM, "names too large");
            cap *= 2;
        }
        char *nb = realloc(a->buf, cap);
        if (!nb)
            return gguf_fail(p, KVS_ENOMEM, "cannot allocate %zu bytes for names", cap);
        a->buf = nb;
        a->cap = cap;
    }
    memcpy(a->buf + a->len, p->ctx->map + off, (size_t)len);
    a->buf[a->len + len] = '\0';
    *where = a->len;
    a->len += len + 1;
    return 0;
}

static int gguf_check_vtype(gguf_parser *p, uint32_t t, uint64_t at, const char *field)
{
    if (t <= GGUF_VT_FLOAT64) return 0;
    return gguf_fail(p, KVS_EFORMAT, "unknown %s %u at byte %llu (known: 0..12)", field, t,
                     (gguf_ull)at);
}

/* Walk (validate and skip) the n elements of an array whose header has just been read.
 * depth is 1 for a top-level array. For string arrays, `offs` (n entries, or NULL) receives
 * each element's file offset. Every element takes at least one byte (nested array headers 12,
 * string prefixes 8), so n is first bounded by the bytes left: no huge loops on junk counts. */
static int gguf_walk_array(gguf_parser *p, uint32_t et, uint64_t n, int depth, uint64_t *offs)
{
    gguf_ctx *ctx = p->ctx;
    uint64_t left = ctx->size - p->pos;
    uint32_t es = gguf_vtype_size(et);
    if (es) {
        if (n > left / es)
            return gguf_fail(p, KVS_EFORMAT,
                             "array of %llu %s values at byte %llu needs more than the %llu "
                             "bytes left in the file (corrupt or truncated file)",
                             (gguf_ull)n, gguf_vtype_name((int)et), (gguf_ull)p->pos,
                             (gguf_ull)left);
        if (et == GGUF_VT_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (ctx->map[p->pos + i] > 1)
                    return gguf_fail(p, KVS_EFORMAT, "bool array element %llu at byte %llu "
                                     "is %u, not 0 or 1", (gguf_ull)i, (gguf_ull)(p->pos + i),
                                     ctx->map[p->pos + i]);
        p->pos += n * es;
        return 0;
    }
    if (et == GGUF_VT_STRING) {
        if (n > left / 8)
            return gguf_fail(p, KVS_EFORMAT,
                             "array of %llu strings at byte %llu cannot fit in the %llu bytes "
                             "left in the file (corrupt or truncated file)",
                             (gguf_ull)n, (gguf_ull)p->pos, (gguf_ull)left);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t off, len;
            if (offs) offs[i] = p->pos;
            int rc = gguf_rd_str(p, "string array element", &off, &len);
            if (rc) return rc;
        }
        return 0;
    }
    /* array of arrays: each element is its own u32 elem_vtype | u64 n | values */
    if (depth >= GGUF_MAX_ARRAY_DEPTH)
        return gguf_fail(p, KVS_EFORMAT, "arrays nested more than %d deep at byte %llu",
                         GGUF_MAX_ARRAY_DEPTH, (gguf_ull)p->pos);
    if (n > left / 12)
        return gguf_fail(p, KVS_EFORMAT,
                         "array of %llu arrays at byte %llu cannot fit in the %llu bytes left "
                         "in the file (corrupt or truncated file)",
                         (gguf_ull)n, (gguf_ull)p->pos, (gguf_ull)left);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t et2;
        uint64_t n2, at = p->pos;
        int rc = gguf_rd_u32(p, "nested array element type", &et2);
        if (!rc) rc = gguf_check_vtype(p, et2, at, "nested array element type");
        if (!rc) rc = gguf_rd_u64(p, "nested array length", &n2);
        if (!rc) rc = gguf_walk_array(p, et2, n2, depth + 1, NULL);
        if (rc) return rc;
    }
    return 0;
}

/* ---- name index --------------------------------------------------------------------------- */

typedef const char *(*gguf_name_fn)(const gguf_ctx *ctx, int64_t i);

static const char *gguf_kv_name(const gguf_ctx *ctx, int64_t i) { return ctx->kv[i].key; }
static const char *gguf_tensor_name(const gguf_ctx *ctx, int64_t i)
{
    return ctx->tensors[i].name;
}

static int64_t gguf_index_find(const gguf_ctx *ctx, const gguf_index *ix, gguf_name_fn name_at,
                               const char *name)
{
    if (!ix->slots) return -1;
    for (uint64_t h = gguf_hash(name) & ix->mask;; h = (h + 1) & ix->mask) {
        int64_t i = ix->slots[h];
        if (i < 0) return -1;
        if (strcmp(name_at(ctx, i), name) == 0) return i;
    }
}

/* Build the index over n names. Returns 0, KVS_ENOMEM, or 1 with the first duplicate pair in
 * *dup_first / *dup_second. Load factor <= 1/2, so probes stay short and always terminate. */
static int gguf_index_build(const gguf_ctx *ctx, gguf_index *ix, int64_t n, gguf_name_fn name_at,
                            int64_t *dup_first, int64_t *dup_second)
{
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n) cap *= 2; /* n <= size / 14, so this cannot overflow */
    ix->slots = malloc(cap * sizeof *ix->slots);
    if (!ix->slots) return KVS_ENOMEM;
    ix->mask = cap - 1;
    for (uint64_t s = 0; s < cap; s++) ix->slots[s] = -1;
    for (int64_t i = 0; i < n; i++) {
        const char *name = name_at(ctx, i);
        uint64_t h = gguf_hash(name) & ix->mask;
        for (; ix->slots[h] >= 0; h = (h + 1) & ix->mask) {
            if (strcmp(name_at(ctx, ix->slots[h]), name) == 0) {
                *dup_first = ix->slots[h];
                *dup_second = i;
                return 1;
            }
        }
        ix->slots[h] = i;
    }
    return 0;
}

/* ---- the parser --------------------------------------------------------------------------- */

static int gguf_parse_header(gguf_parser *p, uint64_t *n_tensors, uint64_t *n_kv)
{
    gguf_ctx *ctx = p->ctx;
    snprintf(p->what, sizeof p->what, "header");
    if (ctx->size < 4 || memcmp(ctx->map, "GGUF", 4) != 0) {
        uint8_t b[4] = {0};
        memcpy(b, ctx->map, ctx->size < 4 ? (size_t)ctx->size : 4);
        return gguf_fail(p, KVS_EFORMAT,
                         "not a GGUF file: it starts with bytes %02x %02x %02x %02x, not "
                         "\"GGUF\" (47 47 55 46)", b[0], b[1], b[2], b[3]);
    }
    p->pos = 4;
    uint32_t v;
    int rc = gguf_rd_u32(p, "version", &v);
    if (rc) return rc;
    ctx->version = v;
    if (v == 1)
        return gguf_fail(p, KVS_EUNSUPPORTED,
                         "GGUF version 1 (2023) is not supported, only versions 2 and 3; "
                         "re-convert the model with a current llama.cpp");
    if (v != 2 && v != 3) {
        uint32_t sw = (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
        if (sw >= 1 && sw <= 3)
            return gguf_fail(p, KVS_EUNSUPPORTED,
                             "this is a big-endian GGUF file (version reads as %u); only "
                             "little-endian files are supported", v);
        return gguf_fail(p, KVS_EFORMAT, "unknown GGUF version %u (this reader knows 2 and 3)",
                         v);
    }
    rc = gguf_rd_u64(p, "tensor count", n_tensors);
    if (!rc) rc = gguf_rd_u64(p, "metadata count", n_kv);
    if (rc) return rc;

    /* Bound the counts by what the file could possibly hold before allocating anything. */
    uint64_t room = ctx->size - GGUF_HEADER_BYTES;
    if (*n_kv > room / GGUF_MIN_KV_BYTES)
        return gguf_fail(p, KVS_EFORMAT,
                         "claims %llu metadata entries, but a %llu-byte file can hold "
                         "at most %llu (corrupt header or truncated file)",
                         (gguf_ull)*n_kv, (gguf_ull)ctx->size,
                         (gguf_ull)(room / GGUF_MIN_KV_BYTES));
    if (*n_tensors > room / GGUF_MIN_TENSOR_BYTES)
        return gguf_fail(p, KVS_EFORMAT,
                         "claims %llu tensors, but a %llu-byte file can hold at most "
                         "%llu (corrupt header or truncated file)",
                         (gguf_ull)*n_tensors, (gguf_ull)ctx->size,
                         (gguf_ull)(room / GGUF_MIN_TENSOR_BYTES));
    /* both products are <= room, so the sum cannot wrap */
    if (*n_kv * GGUF_MIN_KV_BYTES + *n_tensors * GGUF_MIN_TENSOR_BYTES > room)
        return gguf_fail(p, KVS_EFORMAT,
                         "claims %llu metadata entries and %llu tensors, more than a "
                         "%llu-byte file can hold (corrupt header or truncated file)",
                         (gguf_ull)*n_kv, (gguf_ull)*n_tensors, (gguf_ull)ctx->size);
    return 0;
}

static int gguf_parse_kv(gguf_parser *p, int64_t i)
{
    gguf_ctx *ctx = p->ctx;
    gguf_kv *kv = &ctx->kv[i];
    uint64_t key_off, key_len, at;
    snprintf(p->what, sizeof p->what, "metadata entry #%lld", (long long)i);
    int rc = gguf_rd_str(p, "key length", &key_off, &key_len);
    if (!rc) rc = gguf_arena_add(p, &ctx->key_names, key_off, key_len, "key", &p->name_off[i]);
    if (rc) return rc;
    gguf_set_what(p, "key", key_off, key_len);

    at = p->pos;
    rc = gguf_rd_u32(p, "value type", &kv->vtype);
    if (!rc) rc = gguf_check_vtype(p, kv->vtype, at, "value type");
    if (rc) return rc;

    uint32_t es = gguf_vtype_size(kv->vtype);
    if (es) {
        rc = gguf_need(p, es, "value");
        if (rc) return rc;
        if (kv->vtype == GGUF_VT_BOOL && ctx->map[p->pos] > 1)
            return gguf_fail(p, KVS_EFORMAT, "bool value at byte %llu is %u, not 0 or 1",
                             (gguf_ull)p->pos, ctx->map[p->pos]);
        kv->off = p->pos;
        kv->n = 1;
        p->pos += es;
        return 0;
    }
    if (kv->vtype == GGUF_VT_STRING)
        return gguf_rd_str(p, "string length", &kv->off, &kv->n);

    /* array */
    at = p->pos;
    rc = gguf_rd_u32(p, "array element type", &kv->elem_vtype);
    if (!rc) rc = gguf_check_vtype(p, kv->elem_vtype, at, "array element type");
    if (!rc) rc = gguf_rd_u64(p, "array length", &kv->n);
    if (rc) return rc;
    kv->off = p->pos;
    if (kv->elem_vtype == GGUF_VT_STRING && kv->n > 0) {
        /* bound n before allocating the index: each string takes >= 8 bytes */
        if (kv->n > (ctx->size - p->pos) / 8)
            return gguf_walk_array(p, kv->elem_vtype, kv->n, 1, NULL); /* reports it */
        kv->str_offs = malloc((size_t)kv->n * sizeof *kv->str_offs);
        if (!kv->str_offs)
            return gguf_fail(p, KVS_ENOMEM, "cannot allocate the index of %llu strings",
                             (gguf_ull)kv->n);
    }
    return gguf_walk_array(p, kv->elem_vtype, kv->n, 1, kv->str_offs);
}

/* general.alignment: any integer type is accepted (the spec says uint32), value a power of 2. */
static int gguf_parse_alignment(gguf_parser *p)
{
    gguf_ctx *ctx = p->ctx;
    ctx->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = gguf_find_key(ctx, "general.alignment");
    if (i < 0) return 0;
    snprintf(p->what, sizeof p->what, "key 'general.alignment'");
    int64_t s;
    uint64_t u;
    const gguf_kv *kv = &ctx->kv[i];
    switch (kv->vtype) {
    case GGUF_VT_UINT8: u = ctx->map[kv->off]; break;
    case GGUF_VT_UINT16: { uint16_t x; memcpy(&x, ctx->map + kv->off, 2); u = x; break; }
    case GGUF_VT_UINT32: { uint32_t x; memcpy(&x, ctx->map + kv->off, 4); u = x; break; }
    case GGUF_VT_UINT64: u = gguf_rd_u64_at(ctx, kv->off); break;
    case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64:
        if (gguf_get_i64(ctx, "general.alignment", &s) < 0 || s < 0)
            return gguf_fail(p, KVS_EFORMAT, "alignment is negative; it must be a power of 2 "
                             "(GGUF default: 32)");
        u = (uint64_t)s;
        break;
    default:
        return gguf_fail(p, KVS_EFORMAT, "has type %s; expected uint32",
                         gguf_vtype_name((int)kv->vtype));
    }
    if (u == 0 || (u & (u - 1)) != 0)
        return gguf_fail(p, KVS_EFORMAT, "alignment is %llu; it must be a power of 2 "
                         "(GGUF default: 32)", (gguf_ull)u);
    ctx->alignment = u;
    return 0;
}

static void gguf_fmt_shape(char *buf, size_t n, const uint64_t *ne, uint32_t n_dims)
{
    size_t k = 0;
    buf[0] = '\0';
    for (uint32_t d = 0; d < n_dims && k < n; d++) {
        int w = snprintf(buf + k, n - k, "%s%llu", d ? ", " : "[", (gguf_ull)ne[d]);
        if (w < 0) return;
        k += (size_t)w;
    }
    if (k < n) snprintf(buf + k, n - k, "]");
}

static int gguf_parse_tensor_info(gguf_parser *p, int64_t i)
{
    gguf_ctx *ctx = p->ctx;
    gguf_tensor *t = &ctx->tensors[i];
    uint64_t name_off, name_len;
    snprintf(p->what, sizeof p->what, "tensor #%lld", (long long)i);
    int rc = gguf_rd_str(p, "name length", &name_off, &name_len);
    if (!rc)
        rc = gguf_arena_add(p, &ctx->tensor_names, name_off, name_len, "tensor name",
                            &p->name_off[i]);
    if (rc) return rc;
    gguf_set_what(p, "tensor", name_off, name_len);

    rc = gguf_rd_u32(p, "dimension count", &t->n_dims);
    if (rc) return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return gguf_fail(p, KVS_EFORMAT, "has %u dimensions; GGUF tensors have 1 to %u",
                         t->n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims) continue;
        rc = gguf_rd_u64(p, "dimension", &t->ne[d]);
        if (rc) return rc;
        if (t->ne[d] > (uint64_t)INT64_MAX) /* ggml stores shapes as int64 */
            return gguf_fail(p, KVS_EFORMAT, "dimension %u is %llu, more than 2^63 - 1", d,
                             (gguf_ull)t->ne[d]);
    }
    char shape[128];
    gguf_fmt_shape(shape, sizeof shape, t->ne, t->n_dims);
    t->n_elems = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        if (!gguf_mul_ok(t->n_elems, t->ne[d], &t->n_elems) || t->n_elems > (uint64_t)INT64_MAX)
            return gguf_fail(p, KVS_EFORMAT, "shape %s has more than 2^63 elements (corrupt "
                             "tensor info)", shape);

    uint64_t at = p->pos;
    rc = gguf_rd_u32(p, "type", &t->type);
    if (rc) return rc;
    uint32_t blck = gguf_type_block_elems(t->type);
    uint32_t bytes = gguf_type_block_bytes(t->type);
    if (blck == 0)
        return gguf_fail(p, KVS_EFORMAT, "unknown tensor type %u at byte %llu", t->type,
                         (gguf_ull)at);
    if (t->ne[0] % blck != 0)
        return gguf_fail(p, KVS_EFORMAT, "row length ne[0] = %llu is not a multiple of the %s "
                         "block size (%u elements)", (gguf_ull)t->ne[0],
                         gguf_type_name(t->type), blck);
    /* bytes = blocks per row * block bytes * rows, every step checked */
    uint64_t nb;
    int ok = gguf_mul_ok(t->ne[0] / blck, bytes, &nb);
    for (uint32_t d = 1; d < GGUF_MAX_DIMS && ok; d++) ok = gguf_mul_ok(nb, t->ne[d], &nb);
    if (!ok)
        return gguf_fail(p, KVS_EFORMAT, "%s data of shape %s is more than 2^64 bytes",
                         gguf_type_name(t->type), shape);
    t->nbytes = nb;
    return gguf_rd_u64(p, "data offset", &p->t_offset[i]);
}

/* With the tensor table read and the data section located, check each tensor's bytes. */
static int gguf_place_tensor(gguf_parser *p, int64_t i)
{
    gguf_ctx *ctx = p->ctx;
    gguf_tensor *t = &ctx->tensors[i];
    uint64_t off = p->t_offset[i];
    uint64_t room = ctx->size - ctx->data_start; /* caller ensured data_start <= size */
    snprintf(p->what, sizeof p->what, "tensor '%s'", gguf_quote(t->name, strlen(t->name)).s);
    if (off % ctx->alignment != 0)
        return gguf_fail(p, KVS_EFORMAT, "data offset %llu is not a multiple of the alignment "
                         "(%llu)", (gguf_ull)off, (gguf_ull)ctx->alignment);
    if (off > room || t->nbytes > room - off) {
        uint64_t start = ctx->data_start;
        if (off <= UINT64_MAX - start && t->nbytes <= UINT64_MAX - start - off)
            return gguf_fail(p, KVS_EFORMAT, "data ends at byte %llu but the file has %llu "
                             "bytes (truncated download?)",
                             (gguf_ull)(start + off + t->nbytes), (gguf_ull)ctx->size);
        return gguf_fail(p, KVS_EFORMAT, "data offset %llu (+%llu bytes) is far past the end "
                         "of the file (%llu bytes)", (gguf_ull)off, (gguf_ull)t->nbytes,
                         (gguf_ull)ctx->size);
    }
    t->data = ctx->map + ctx->data_start + off;
    return 0;
}

/* Tensors must not share bytes: an overlap means a corrupted shape or offset (e.g. a row count
 * edited upwards), and would silently feed one tensor's data to another. Sorted by offset,
 * each tensor must end at or before the next one starts. */
typedef struct { uint64_t off, nbytes; int64_t i; } gguf_span;

static int gguf_span_cmp(const void *a, const void *b)
{
    const gguf_span *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int gguf_check_overlap(gguf_parser *p)
{
    gguf_ctx *ctx = p->ctx;
    if (ctx->n_tensors < 2) return 0;
    gguf_span *sp = malloc((size_t)ctx->n_tensors * sizeof *sp);
    if (!sp) return gguf_fail(p, KVS_ENOMEM, "cannot allocate the overlap check");
    for (int64_t i = 0; i < ctx->n_tensors; i++)
        sp[i] = (gguf_span){p->t_offset[i], ctx->tensors[i].nbytes, i};
    qsort(sp, (size_t)ctx->n_tensors, sizeof *sp, gguf_span_cmp);
    int rc = 0;
    for (int64_t k = 0; k + 1 < ctx->n_tensors && !rc; k++) {
        /* placement checked off + nbytes <= size, so the sum cannot wrap */
        if (sp[k].off + sp[k].nbytes > sp[k + 1].off) {
            const gguf_tensor *a = &ctx->tensors[sp[k].i], *b = &ctx->tensors[sp[k + 1].i];
            snprintf(p->what, sizeof p->what, "tensor '%s'",
                     gguf_quote(a->name, strlen(a->name)).s);
            rc = gguf_fail(p, KVS_EFORMAT, "data [%llu, %llu) overlaps tensor '%s' at %llu "
                           "(corrupt shape or offset)", (gguf_ull)sp[k].off,
                           (gguf_ull)(sp[k].off + sp[k].nbytes),
                           gguf_quote(b->name, strlen(b->name)).s, (gguf_ull)sp[k + 1].off);
        }
    }
    free(sp);
    return rc;
}

static int gguf_check_arch(gguf_parser *p, const char *want)
{
    gguf_ctx *ctx = p->ctx;
    const char *s = NULL;
    size_t len = 0;
    snprintf(p->what, sizeof p->what, "key 'general.architecture'");
    int64_t i = gguf_find_key(ctx, "general.architecture");
    if (i < 0)
        return gguf_fail(p, KVS_EUNSUPPORTED, "missing, so the architecture is unknown; "
                         "expected '%s'", want);
    if (gguf_get_str(ctx, "general.architecture", &s, &len) < 0)
        return gguf_fail(p, KVS_EFORMAT, "has type %s; expected string",
                         gguf_vtype_name((int)ctx->kv[i].vtype));
    if (len != strlen(want) || memcmp(s, want, len) != 0) {
        return kvs_error(KVS_EUNSUPPORTED, "%s: the model's architecture is '%s', but this "
                         "program supports '%s' models only", ctx->path, gguf_quote(s, len).s,
                         want);
    }
    return 0;
}

static int gguf_parse(gguf_ctx *ctx, const char *want_arch)
{
    gguf_parser p = {.ctx = ctx};
    uint64_t n_tensors = 0, n_kv = 0;
    int64_t a, b;
    int rc = gguf_parse_header(&p, &n_tensors, &n_kv);
    if (rc) return rc;

    /* metadata */
    for (uint64_t i = 0; i < n_kv; i++) {
        if (gguf_grow((void **)&ctx->kv, &p.kv_cap, i + 1, sizeof *ctx->kv) ||
            gguf_grow((void **)&p.name_off, &p.name_cap, i + 1, sizeof *p.name_off)) {
            rc = gguf_fail(&p, KVS_ENOMEM, "cannot allocate the metadata table");
            goto out;
        }
        memset(&ctx->kv[i], 0, sizeof ctx->kv[i]);
        ctx->n_kv = (int64_t)i + 1; /* so gguf_close frees what this entry allocates */
        if ((rc = gguf_parse_kv(&p, (int64_t)i))) goto out;
    }
    for (int64_t i = 0; i < ctx->n_kv; i++) ctx->kv[i].key = ctx->key_names.buf + p.name_off[i];
    rc = gguf_index_build(ctx, &ctx->kv_index, ctx->n_kv, gguf_kv_name, &a, &b);
    if (rc == KVS_ENOMEM) {
        rc = gguf_fail(&p, rc, "cannot allocate the key index");
        goto out;
    }
    if (rc == 1) {
        snprintf(p.what, sizeof p.what, "metadata");
        rc = gguf_fail(&p, KVS_EFORMAT, "key '%s' appears twice (entries #%lld and #%lld)",
                       gguf_quote(ctx->kv[a].key, strlen(ctx->kv[a].key)).s, (long long)a,
                       (long long)b);
        goto out;
    }
    if ((rc = gguf_parse_alignment(&p))) goto out;

    /* tensor table */
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (gguf_grow((void **)&ctx->tensors, &p.tensor_cap, i + 1, sizeof *ctx->tensors) ||
            gguf_grow((void **)&p.t_offset, &p.offset_cap, i + 1, sizeof *p.t_offset) ||
            gguf_grow((void **)&p.name_off, &p.name_cap, i + 1, sizeof *p.name_off)) {
            rc = gguf_fail(&p, KVS_ENOMEM, "cannot allocate the tensor table");
            goto out;
        }
        memset(&ctx->tensors[i], 0, sizeof ctx->tensors[i]);
        if ((rc = gguf_parse_tensor_info(&p, (int64_t)i))) goto out;
    }
    ctx->n_tensors = (int64_t)n_tensors;
    for (int64_t i = 0; i < ctx->n_tensors; i++)
        ctx->tensors[i].name = ctx->tensor_names.buf + p.name_off[i];
    rc = gguf_index_build(ctx, &ctx->tensor_index, ctx->n_tensors, gguf_tensor_name, &a, &b);
    if (rc == KVS_ENOMEM) {
        rc = gguf_fail(&p, rc, "cannot allocate the tensor index");
        goto out;
    }
    if (rc == 1) {
        snprintf(p.what, sizeof p.what, "tensor table");
        rc = gguf_fail(&p, KVS_EFORMAT, "tensor name '%s' appears twice (tensors #%lld and "
                       "#%lld)", gguf_quote(ctx->tensors[a].name, strlen(ctx->tensors[a].name)).s,
                       (long long)a, (long long)b);
        goto out;
    }

    /* data section: starts at the first multiple of the alignment after the tensor table */
    snprintf(p.what, sizeof p.what, "tensor data");
    uint64_t pad = (ctx->alignment - p.pos % ctx->alignment) % ctx->alignment;
    if (pad > UINT64_MAX - p.pos) {
        rc = gguf_fail(&p, KVS_EFORMAT, "alignment %llu puts the data section past 2^64",
                       (gguf_ull)ctx->alignment);
        goto out;
    }
    ctx->data_start = p.pos + pad;
    if (ctx->n_tensors > 0 && ctx->data_start > ctx->size) {
        rc = gguf_fail(&p, KVS_EFORMAT, "data should start at byte %llu (the tensor table ends "
                       "at byte %llu, aligned to %llu) but the file has only %llu bytes "
                       "(truncated download?)", (gguf_ull)ctx->data_start, (gguf_ull)p.pos,
                       (gguf_ull)ctx->alignment, (gguf_ull)ctx->size);
        goto out;
    }
    for (int64_t i = 0; i < ctx->n_tensors; i++)
        if ((rc = gguf_place_tensor(&p, i))) goto out;
    if ((rc = gguf_check_overlap(&p))) goto out;

    if (want_arch) rc = gguf_check_arch(&p, want_arch);
out:
    free(p.name_off);
    free(p.t_offset);
    return rc;
}

/* ---- open / close ------------------------------------------------------------------------- */

int gguf_open(const char *path, const char *want_arch, gguf_ctx **out)
{
    if (!out) return kvs_error(KVS_EINVAL, "gguf_open: NULL output pointer");
    *out = NULL;
    if (!path) return kvs_error(KVS_EINVAL, "gguf_open: NULL path");

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvs_error(KVS_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kvs_error(KVS_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return kvs_error(KVS_EIO, "%s: not a regular file", path);
    }
    if (st.st_size < (off_t)GGUF_HEADER_BYTES) {
        /* too short for the header; read what is there so the message can say why */
        uint8_t b[GGUF_HEADER_BYTES];
        ssize_t got = st.st_size > 0 ? read(fd, b, (size_t)st.st_size) : 0;
        close(fd);
        if (got >= 4 && memcmp(b, "GGUF", 4) != 0)
            return kvs_error(KVS_EFORMAT, "%s: not a GGUF file: it starts with bytes %02x %02x "
                             "%02x %02x, not \"GGUF\"", path, b[0], b[1], b[2], b[3]);
        return kvs_error(KVS_EFORMAT, "%s: file has %lld bytes, too short for a GGUF header "
                         "(%u bytes; truncated download?)", path, (long long)st.st_size,
                         GGUF_HEADER_BYTES);
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return kvs_error(KVS_EIO, "%s: file too large to map", path);
    }

    gguf_ctx *ctx = calloc(1, sizeof *ctx);
    size_t plen = strlen(path);
    char *pcopy = malloc(plen + 1);
    if (!ctx || !pcopy) {
        close(fd);
        free(ctx);
        free(pcopy);
        return kvs_error(KVS_ENOMEM, "%s: out of memory", path);
    }
    memcpy(pcopy, path, plen + 1);
    ctx->path = pcopy;
    ctx->size = (uint64_t)st.st_size;
    void *map = mmap(NULL, (size_t)ctx->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) {
        free(ctx->path);
        free(ctx);
        return kvs_error(KVS_EIO, "%s: cannot mmap %llu bytes: %s", path,
                         (gguf_ull)st.st_size, strerror(e));
    }
    ctx->map = map;

    int rc = gguf_parse(ctx, want_arch);
    if (rc < 0) {
        gguf_close(ctx); /* leaves the error message alone */
        return rc;
    }
    *out = ctx;
    return KVS_OK;
}

void gguf_close(gguf_ctx *ctx)
{
    if (!ctx) return;
    if (ctx->kv)
        for (int64_t i = 0; i < ctx->n_kv; i++) free(ctx->kv[i].str_offs);
    free(ctx->kv);
    free(ctx->tensors);
    free(ctx->key_names.buf);
    free(ctx->tensor_names.buf);
    free(ctx->kv_index.slots);
    free(ctx->tensor_index.slots);
    if (ctx->map) munmap((void *)ctx->map, (size_t)ctx->size);
    free(ctx->path);
    free(ctx);
}

/* ---- metadata getters --------------------------------------------------------------------- */

uint32_t gguf_version(const gguf_ctx *ctx) { return ctx ? ctx->version : 0; }
int64_t gguf_n_kv(const gguf_ctx *ctx) { return ctx ? ctx->n_kv : 0; }

const char *gguf_key_at(const gguf_ctx *ctx, int64_t i)
{
    if (!ctx || i < 0 || i >= ctx->n_kv) return NULL;
    return ctx->kv[i].key;
}

int gguf_vtype_at(const gguf_ctx *ctx, int64_t i)
{
    if (!ctx || i < 0 || i >= ctx->n_kv)
        return kvs_error(KVS_ERANGE, "metadata index %lld out of range", (long long)i);
    return (int)ctx->kv[i].vtype;
}

int64_t gguf_find_key(const gguf_ctx *ctx, const char *key)
{
    if (!ctx || !key) return -1;
    return gguf_index_find(ctx, &ctx->kv_index, gguf_kv_name, key);
}

/* Look up `key`; on failure record a message and return NULL with *rc set. */
static const gguf_kv *gguf_lookup(const gguf_ctx *ctx, const char *key, int *rc)
{
    if (!ctx || !key) {
        *rc = kvs_error(KVS_EINVAL, "gguf: NULL context or key");
        return NULL;
    }
    int64_t i = gguf_find_key(ctx, key);
    if (i < 0) {
        *rc = kvs_error(KVS_ENOTFOUND, "%s: no metadata key '%s'", ctx->path, key);
        return NULL;
    }
    *rc = 0;
    return &ctx->kv[i];
}

static int gguf_wrong_type(const gguf_ctx *ctx, const gguf_kv *kv, const char *want)
{
    return kvs_error(KVS_EFORMAT, "%s: key '%s' has type %s, expected %s", ctx->path, kv->key,
                     kv->vtype == GGUF_VT_ARRAY ? "array" : gguf_vtype_name((int)kv->vtype),
                     want);
}

/* Integer scalar: signed types go to *s (*is_signed = 1), unsigned to *u. -1 if not an int. */
static int gguf_int_value(const gguf_ctx *ctx, const gguf_kv *kv, int *is_signed, int64_t *s,
                          uint64_t *u)
{
    const uint8_t *v = ctx->map + kv->off;
    *is_signed = 1;
    switch (kv->vtype) {
    case GGUF_VT_INT8: { int8_t x; memcpy(&x, v, 1); *s = x; return 0; }
    case GGUF_VT_INT16: { int16_t x; memcpy(&x, v, 2); *s = x; return 0; }
    case GGUF_VT_INT32: { int32_t x; memcpy(&x, v, 4); *s = x; return 0; }
    case GGUF_VT_INT64: { int64_t x; memcpy(&x, v, 8); *s = x; return 0; }
    default: break;
    }
    *is_signed = 0;
    switch (kv->vtype) {
    case GGUF_VT_UINT8: *u = v[0]; return 0;
    case GGUF_VT_UINT16: { uint16_t x; memcpy(&x, v, 2); *u = x; return 0; }
    case GGUF_VT_UINT32: { uint32_t x; memcpy(&x, v, 4); *u = x; return 0; }
    case GGUF_VT_UINT64: { uint64_t x; memcpy(&x, v, 8); *u = x; return 0; }
    default: return -1;
    }
}

int gguf_get_u32(const gguf_ctx *ctx, const char *key, uint32_t *out)
{
    int rc, sg;
    int64_t s;
    uint64_t u;
    const gguf_kv *kv = gguf_lookup(ctx, key, &rc);
    if (!kv) return rc;
    if (gguf_int_value(ctx, kv, &sg, &s, &u) < 0) return gguf_wrong_type(ctx, kv, "an integer");
    if (sg && (s < 0 || s > (int64_t)UINT32_MAX))
        return kvs_error(KVS_EFORMAT, "%s: key '%s' = %lld does not fit in uint32", ctx->path,
                         key, (long long)s);
    if (!sg && u > UINT32_MAX)
        return kvs_error(KVS_EFORMAT, "%s: key '%s' = %llu does not fit in uint32", ctx->path,
                         key, (gguf_ull)u);
    if (out) *out = sg ? (uint32_t)s : (uint32_t)u;
    return KVS_OK;
}

int gguf_get_i64(const gguf_ctx *ctx, const char *key, int64_t *out)
{
    int rc, sg;
    int64_t s;
    uint64_t u;
    const gguf_kv *kv = gguf_lookup(ctx, key, &rc);
    if (!kv) return rc;
    if (gguf_int_value(ctx, kv, &sg, &s, &u) < 0) return gguf_wrong_type(ctx, kv, "an integer");
    if (!sg && u > (uint64_t)INT64_MAX)
        return kvs_error(KVS_EFORMAT, "%s: key '%s' = %llu does not fit in int64", ctx->path,
                         key, (gguf_ull)u);
    if (out) *out = sg ? s : (int64_t)u;
    return KVS_OK;
}

int gguf_get_f32(const gguf_ctx *ctx, const char *key, float *out)
{
    int rc, sg;
    int64_t s;
    uint64_t u;
    float f;
    const gguf_kv *kv = gguf_lookup(ctx, key, &rc);
    if (!kv) return rc;
    if (kv->vtype == GGUF_VT_FLOAT32) {
        memcpy(&f, ctx->map + kv->off, 4);
    } else if (kv->vtype == GGUF_VT_FLOAT64) {
        double d;
        memcpy(&d, ctx->map + kv->off, 8);
        /* finite doubles beyond float's range do not fit (inf and NaN carry over as is) */
        if (isfinite(d) && fabs(d) > FLT_MAX)
            return kvs_error(KVS_EFORMAT, "%s: key '%s' = %g does not fit in float32",
                             ctx->path, key, d);
        f = (float)d;
    } else if (gguf_int_value(ctx, kv, &sg, &s, &u) == 0) {
        f = sg ? (float)s : (float)u;
    } else {
        return gguf_wrong_type(ctx, kv, "a number");
    }
    if (out) *out = f;
    return KVS_OK;
}

int gguf_get_bool(const gguf_ctx *ctx, const char *key, int *out)
{
    int rc;
    const gguf_kv *kv = gguf_lookup(ctx, key, &rc);
    if (!kv) return rc;
    if (kv->vtype != GGUF_VT_BOOL) return gguf_wrong_type(ctx, kv, "bool");
    if (out) *out = ctx->map[kv->off] != 0;
    return KVS_OK;
}

int gguf_get_str(const gguf_ctx *ctx, const char *key, const char **s, size_t *len)
{
    int rc;
    const gguf_kv *kv = gguf_lookup(ctx, key, &rc);
    if (!kv) return rc;
    if (kv->vtype != GGUF_VT_STRING) return gguf_wrong_type(ctx, kv, "string");
    if (s) *s = (const char *)ctx->map + kv->off;
    if (len) *len = (size_t)kv->n;
    return KVS_OK;
}

static const gguf_kv *gguf_lookup_arr(const gguf_ctx *ctx, const char *key, int *rc)
{
    const gguf_kv *kv = gguf_lookup(ctx, key, rc);
    if (kv && kv->vtype != GGUF_VT_ARRAY) {
        *rc = gguf_wrong_type(ctx, kv, "array");
        return NULL;
    }
    return kv;
}

int gguf_get_arr_info(const gguf_ctx *ctx, const char *key, int *elem_vtype, uint64_t *n)
{
    int rc;
    const gguf_kv *kv = gguf_lookup_arr(ctx, key, &rc);
    if (!kv) return rc;
    if (elem_vtype) *elem_vtype = (int)kv->elem_vtype;
    if (n) *n = kv->n;
    return KVS_OK;
}

int gguf_get_arr_data(const gguf_ctx *ctx, const char *key, const void **data)
{
    int rc;
    const gguf_kv *kv = gguf_lookup_arr(ctx, key, &rc);
    if (!kv) return rc;
    if (gguf_vtype_size(kv->elem_vtype) == 0)
        return kvs_error(KVS_EFORMAT, "%s: key '%s' is an array of %ss, not of numbers",
                         ctx->path, key, gguf_vtype_name((int)kv->elem_vtype));
    if (data) *data = ctx->map + kv->off;
    return KVS_OK;
}

int gguf_get_arr_str(const gguf_ctx *ctx, const char *key, uint64_t i, const char **s,
                     size_t *len)
{
    int rc;
    const gguf_kv *kv = gguf_lookup_arr(ctx, key, &rc);
    if (!kv) return rc;
    if (kv->elem_vtype != GGUF_VT_STRING)
        return kvs_error(KVS_EFORMAT, "%s: key '%s' is an array of %ss, not of strings",
                         ctx->path, key, gguf_vtype_name((int)kv->elem_vtype));
    if (i >= kv->n)
        return kvs_error(KVS_ERANGE, "%s: index %llu out of range for '%s' (%llu strings)",
                         ctx->path, (gguf_ull)i, key, (gguf_ull)kv->n);
    uint64_t at = kv->str_offs[i]; /* validated at open: prefix and bytes lie in the file */
    if (s) *s = (const char *)ctx->map + at + 8;
    if (len) *len = (size_t)gguf_rd_u64_at(ctx, at);
    return KVS_OK;
}

/* ---- tensors ------------------------------------------------------------------------------ */

int64_t gguf_n_tensors(const gguf_ctx *ctx) { return ctx ? ctx->n_tensors : 0; }

const gguf_tensor *gguf_tensor_at(const gguf_ctx *ctx, int64_t i)
{
    if (!ctx || i < 0 || i >= ctx->n_tensors) return NULL;
    return &ctx->tensors[i];
}

const gguf_tensor *gguf_find_tensor(const gguf_ctx *ctx, const char *name)
{
    if (!ctx || !name) return NULL;
    int64_t i = gguf_index_find(ctx, &ctx->tensor_index, gguf_tensor_name, name);
    return i < 0 ? NULL : &ctx->tensors[i];
}
