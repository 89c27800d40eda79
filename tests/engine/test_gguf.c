/* test_gguf.c — GGUF reader: metadata getters, tensor table, dequantisation against the `gguf`
 * Python package, and malformed files (corrupted copies of the fixture, built at test time).
 *
 * Fixtures come from tests/reference/make_gguf_fixtures.py (see its docstring): all_types.gguf
 * with its expected fp32 values (all_types.expected.bin) and field offsets
 * (all_types.layout.txt), minimal.gguf, and f32_to_f16.bin. The metadata values checked in
 * test_metadata are the ones that script writes. */
#include "test_util.h"

#include "core/common.h"
#include "gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *fixture(const char *name)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/tests/fixtures/gguf/%s", kvs_test_source_dir(), name);
    return buf[k];
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static int write_all(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(b, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static void put_u32(uint8_t *b, uint64_t off, uint32_t v) { memcpy(b + off, &v, 4); }
static void put_u64(uint8_t *b, uint64_t off, uint64_t v) { memcpy(b + off, &v, 8); }

/* Values bit-identical, or both NaN, or within 1e-6 relative. */
static int same_float(float a, float b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    if (x == y) return 1;
    return fabsf(a - b) <= 1e-6f * fabsf(b);
}

/* ---- fixture layout (all_types.layout.txt) ------------------------------------------------ */

typedef struct {
    char name[64];
    uint32_t type, n_dims;
    uint64_t ne[4];
    uint64_t name_len_off, n_dims_off, ne_off, type_off, offset_off, data_off, nbytes;
} fx_tensor;

typedef struct {
    int n_fields;
    char field[64][48];
    uint64_t value[64];
    int nt;
    fx_tensor t[32];
} fx_layout;

static int load_layout(fx_layout *L)
{
    memset(L, 0, sizeof *L);
    FILE *f = fopen(fixture("all_types.layout.txt"), "r");
    if (!f) return -1;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        if (strncmp(line, "tensor ", 7) == 0 && L->nt < 32) {
            fx_tensor *t = &L->t[L->nt];
            int idx;
            unsigned long long v[13];
            if (sscanf(line, "tensor %d %63s %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
                       "%llu %llu %llu", &idx, t->name, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                       &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12]) != 15)
                continue;
            t->type = (uint32_t)v[0];
            t->n_dims = (uint32_t)v[1];
            for (int d = 0; d < 4; d++) t->ne[d] = v[2 + d];
            t->name_len_off = v[6];
            t->n_dims_off = v[7];
            t->ne_off = v[8];
            t->type_off = v[9];
            t->offset_off = v[10];
            t->data_off = v[11];
            t->nbytes = v[12];
            L->nt++;
        } else if (L->n_fields < 64) {
            unsigned long long v;
            if (sscanf(line, "%47s %llu", L->field[L->n_fields], &v) == 2)
                L->value[L->n_fields++] = v;
        }
    }
    fclose(f);
    return 0;
}

static uint64_t lay(const fx_layout *L, const char *name)
{
    for (int i = 0; i < L->n_fields; i++)
        if (strcmp(L->field[i], name) == 0) return L->value[i];
    fprintf(stderr, "layout field '%s' missing: re-run make_gguf_fixtures.py\n", name);
    CU_FAIL("layout field missing");
    return 0;
}

/* ---- type table and conversions ----------------------------------------------------------- */

static void test_type_table(void)
{
    static const struct { uint32_t t; const char *name; uint32_t be, bb; } want[] = {
        {GGUF_T_F32, "F32", 1, 4},      {GGUF_T_F16, "F16", 1, 2},
        {GGUF_T_BF16, "BF16", 1, 2},    {GGUF_T_Q8_0, "Q8_0", 32, 34},
        {GGUF_T_Q4_0, "Q4_0", 32, 18},  {GGUF_T_Q4_1, "Q4_1", 32, 20},
        {GGUF_T_Q4_K, "Q4_K", 256, 144}, {GGUF_T_Q6_K, "Q6_K", 256, 210},
        {GGUF_T_Q5_0, "Q5_0", 32, 22},  {GGUF_T_Q5_1, "Q5_1", 32, 24},
        {GGUF_T_Q5_K, "Q5_K", 256, 176}, {GGUF_T_Q8_K, "Q8_K", 256, 292},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CU_ASSERT_STRING_EQUAL(gguf_type_name(want[i].t), want[i].name);
        CU_ASSERT_EQUAL(gguf_type_block_elems(want[i].t), want[i].be);
        CU_ASSERT_EQUAL(gguf_type_block_bytes(want[i].t), want[i].bb);
        CU_ASSERT_TRUE(gguf_type_can_dequantize(want[i].t));
    }
    /* known to ggml but without a dequantiser here: sizes known, conversion refused */
    CU_ASSERT_STRING_EQUAL(gguf_type_name(11), "Q3_K");
    CU_ASSERT_EQUAL(gguf_type_block_bytes(11), 110);
    CU_ASSERT_FALSE(gguf_type_can_dequantize(11));
    uint8_t blk[292] = {0};
    float out[256];
    CU_ASSERT_EQUAL(gguf_dequantize(11, blk, out, 256), KVS_EUNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(kvs_last_error(), "Q3_K"));
    CU_ASSERT_NOT_EQUAL(kvs_last_error()[0], '\0');
    /* unknown numbers (removed from ggml or never used) */
    const uint32_t unknown[] = {4, 5, 31, 32, 33, 36, 99, UINT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        CU_ASSERT_PTR_NULL(gguf_type_name(unknown[i]));
        CU_ASSERT_EQUAL(gguf_type_block_elems(unknown[i]), 0);
        CU_ASSERT_EQUAL(gguf_type_block_bytes(unknown[i]), 0);
        CU_ASSERT_EQUAL(gguf_dequantize(unknown[i], blk, out, 32), KVS_EUNSUPPORTED);
    }
    /* n must be a multiple of the block size; n = 0 is fine */
    CU_ASSERT_EQUAL(gguf_dequantize(GGUF_T_Q8_0, blk, out, 31), KVS_EINVAL);
    CU_ASSERT_EQUAL(gguf_dequantize(GGUF_T_Q4_K, blk, out, 32), KVS_EINVAL);
    CU_ASSERT_EQUAL(gguf_dequantize(GGUF_T_Q8_0, blk, out, 0), KVS_OK);
    CU_ASSERT_STRING_EQUAL(gguf_vtype_name(GGUF_VT_UINT32), "uint32");
    CU_ASSERT_STRING_EQUAL(gguf_vtype_name(GGUF_VT_FLOAT64), "float64");
    CU_ASSERT_STRING_EQUAL(gguf_vtype_name(13), "?");
    CU_ASSERT_STRING_EQUAL(gguf_vtype_name(-1), "?");
}

static void test_half_conversions(void)
{
    /* known values */
    CU_ASSERT_EQUAL(gguf_f16_to_f32(0x3c00), 1.0f);
    CU_ASSERT_EQUAL(gguf_f16_to_f32(0xc000), -2.0f);
    CU_ASSERT_EQUAL(gguf_f16_to_f32(0x7bff), 65504.0f);
    CU_ASSERT_EQUAL(gguf_f16_to_f32(0x0001), 0x1p-24f);
    CU_ASSERT_EQUAL(gguf_f16_to_f32(0x03ff), 1023 * 0x1p-24f);
    CU_ASSERT_EQUAL(gguf_f16_to_f32(0x0400), 0x1p-14f);
    CU_ASSERT_TRUE(isinf(gguf_f16_to_f32(0x7c00)) && gguf_f16_to_f32(0x7c00) > 0);
    CU_ASSERT_TRUE(isinf(gguf_f16_to_f32(0xfc00)) && gguf_f16_to_f32(0xfc00) < 0);
    CU_ASSERT_TRUE(isnan(gguf_f16_to_f32(0x7e00)));
    CU_ASSERT_TRUE(gguf_f16_to_f32(0x8000) == 0.0f && signbit(gguf_f16_to_f32(0x8000)));
    CU_ASSERT_EQUAL(gguf_bf16_to_f32(0x3f80), 1.0f);
    CU_ASSERT_EQUAL(gguf_bf16_to_f32(0xc040), -3.0f);

    /* exhaustive: every non-NaN half survives f16 -> f32 -> f16, and the map is monotonic */
    int bad_round = 0, bad_order = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = gguf_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            if ((gguf_f32_to_f16(f) & 0x7c00) != 0x7c00 || !(gguf_f32_to_f16(f) & 0x3ff))
                bad_round++;
            continue;
        }
        if (gguf_f32_to_f16(f) != h) bad_round++;
        if (h < 0x7c00 && !(gguf_f16_to_f32((uint16_t)h) < gguf_f16_to_f32((uint16_t)(h + 1))))
            bad_order++;
    }
    CU_ASSERT_EQUAL(bad_round, 0);
    CU_ASSERT_EQUAL(bad_order, 0);

    /* f32 -> f16 against numpy's astype(float16): specials, ties, random bit patterns */
    size_t n;
    uint8_t *b = read_all(fixture("f32_to_f16.bin"), &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_TRUE(n > 0 && n % 8 == 0);
    int mism = 0;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint32_t fb;
        uint16_t want;
        float f;
        memcpy(&fb, b + i, 4);
        memcpy(&want, b + i + 4, 2);
        memcpy(&f, &fb, 4);
        uint16_t got = gguf_f32_to_f16(f);
        int ok = isnan(f) ? ((got & 0x7c00) == 0x7c00 && (got & 0x3ff)) : got == want;
        if (!ok && mism++ < 5)
            printf("\n  f32_to_f16(%08x = %g) = %04x, numpy says %04x", fb, f, got, want);
    }
    CU_ASSERT_EQUAL(mism, 0);
    free(b);
}

/* ---- the good fixture --------------------------------------------------------------------- */

static void test_metadata(void)
{
    gguf_ctx *g = NULL;
    int rc = gguf_open(fixture("all_types.gguf"), "llama", &g);
    if (rc < 0) printf("\n  %s", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, KVS_OK);
    CU_ASSERT_EQUAL(gguf_version(g), 3);
    CU_ASSERT_EQUAL(gguf_n_kv(g), 34);
    CU_ASSERT_EQUAL(gguf_n_tensors(g), 15);

    /* every key is findable and has a known type */
    for (int64_t i = 0; i < gguf_n_kv(g); i++) {
        const char *k = gguf_key_at(g, i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(k);
        CU_ASSERT_EQUAL(gguf_find_key(g, k), i);
        CU_ASSERT_TRUE(gguf_vtype_at(g, i) >= 0 && gguf_vtype_at(g, i) <= GGUF_VT_FLOAT64);
    }
    CU_ASSERT_PTR_NULL(gguf_key_at(g, -1));
    CU_ASSERT_PTR_NULL(gguf_key_at(g, gguf_n_kv(g)));
    CU_ASSERT_TRUE(gguf_vtype_at(g, gguf_n_kv(g)) < 0);
    CU_ASSERT_EQUAL(gguf_find_key(g, "no.such.key"), -1);
    CU_ASSERT_STRING_EQUAL(gguf_key_at(g, 0), "general.architecture");
    CU_ASSERT_EQUAL(gguf_vtype_at(g, gguf_find_key(g, "test.u8")), GGUF_VT_UINT8);
    CU_ASSERT_EQUAL(gguf_vtype_at(g, gguf_find_key(g, "test.arr_u8")), GGUF_VT_ARRAY);

    uint32_t u32;
    int64_t i64;
    float f;
    int bl;
    const char *s;
    size_t len;

    /* integers convert between widths when the value fits */
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.u8", &u32), 0);
    CU_ASSERT_EQUAL(u32, 200);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.u8", &i64), 0);
    CU_ASSERT_EQUAL(i64, 200);
    CU_ASSERT_EQUAL(gguf_get_f32(g, "test.u8", &f), 0);
    CU_ASSERT_EQUAL(f, 200.0f);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.i8", &u32), KVS_EFORMAT); /* -100 */
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "does not fit"), NULL);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.i8", &i64), 0);
    CU_ASSERT_EQUAL(i64, -100);
    CU_ASSERT_EQUAL(gguf_get_f32(g, "test.i8", &f), 0);
    CU_ASSERT_EQUAL(f, -100.0f);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.u16", &u32), 0);
    CU_ASSERT_EQUAL(u32, 60000);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.i16", &i64), 0);
    CU_ASSERT_EQUAL(i64, -30000);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.i16", &u32), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.u32", &u32), 0);
    CU_ASSERT_EQUAL(u32, 4000000000u);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.u32", &i64), 0);
    CU_ASSERT_EQUAL(i64, 4000000000);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.i32", &i64), 0);
    CU_ASSERT_EQUAL(i64, -2000000000);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.i32", &u32), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.u64", &i64), KVS_EFORMAT); /* 2^63 + 5 */
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.u64", &u32), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_f32(g, "test.u64", &f), 0);
    CU_ASSERT_EQUAL(f, 9223372036854775808.0f);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.u64_small", &u32), 0);
    CU_ASSERT_EQUAL(u32, 12345);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.i64", &i64), 0);
    CU_ASSERT_EQUAL(i64, -(INT64_C(1) << 62) - 7);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.i64", &u32), KVS_EFORMAT);

    /* floats */
    CU_ASSERT_EQUAL(gguf_get_f32(g, "test.f32", &f), 0);
    CU_ASSERT_EQUAL(f, 0.15625f);
    CU_ASSERT_EQUAL(gguf_get_f32(g, "test.f64", &f), 0);
    CU_ASSERT_EQUAL(f, (float)2.718281828459045);
    CU_ASSERT_EQUAL(gguf_get_f32(g, "test.f64_big", &f), KVS_EFORMAT); /* 1e300 */
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.f32", &u32), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "test.f64", &i64), KVS_EFORMAT);

    /* bools are not integers and integers are not bools */
    CU_ASSERT_EQUAL(gguf_get_bool(g, "test.bool_t", &bl), 0);
    CU_ASSERT_EQUAL(bl, 1);
    CU_ASSERT_EQUAL(gguf_get_bool(g, "test.bool_f", &bl), 0);
    CU_ASSERT_EQUAL(bl, 0);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "test.bool_t", &u32), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_bool(g, "test.u8", &bl), KVS_EFORMAT);
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "test.u8"), NULL);

    /* strings: length-prefixed, UTF-8, not NUL-terminated */
    static const char hello[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93";
    CU_ASSERT_EQUAL(gguf_get_str(g, "test.str", &s, &len), 0);
    CU_ASSERT_EQUAL(len, strlen(hello));
    CU_ASSERT_EQUAL(memcmp(s, hello, strlen(hello)), 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "test.str_empty", &s, &len), 0);
    CU_ASSERT_EQUAL(len, 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "general.architecture", &s, &len), 0);
    CU_ASSERT_TRUE(len == 5 && memcmp(s, "llama", 5) == 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "general.name", &s, &len), 0);
    CU_ASSERT_TRUE(len == 20 && memcmp(s, "kvsieve gguf fixture", 20) == 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "test.u32", &s, &len), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "general.alignment", &u32), 0);
    CU_ASSERT_EQUAL(u32, 64);

    /* missing keys */
    CU_ASSERT_EQUAL(gguf_get_u32(g, "no.such.key", &u32), KVS_ENOTFOUND);
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "no.such.key"), NULL);
    CU_ASSERT_EQUAL(gguf_get_str(g, "no.such.key", &s, &len), KVS_ENOTFOUND);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "no.such.key", NULL, NULL), KVS_ENOTFOUND);

    /* numeric arrays: element type, count and raw little-endian data */
    int et;
    uint64_t n;
    const void *data;
#define CHECK_ARR(key, vt, ctype, ...)                                                          \
    do {                                                                                         \
        static const ctype want_[] = {__VA_ARGS__};                                              \
        const size_t nw_ = sizeof want_ / sizeof want_[0];                                       \
        CU_ASSERT_EQUAL(gguf_get_arr_info(g, key, &et, &n), 0);                                  \
        CU_ASSERT_EQUAL(et, vt);                                                                 \
        CU_ASSERT_EQUAL(n, nw_);                                                                 \
        CU_ASSERT_EQUAL_FATAL(gguf_get_arr_data(g, key, &data), 0);                              \
        if (n == nw_) CU_ASSERT_EQUAL(memcmp(data, want_, sizeof want_), 0);                     \
    } while (0)
    CHECK_ARR("test.arr_u8", GGUF_VT_UINT8, uint8_t, 0, 1, 255);
    CHECK_ARR("test.arr_i8", GGUF_VT_INT8, int8_t, -128, 0, 127);
    CHECK_ARR("test.arr_u16", GGUF_VT_UINT16, uint16_t, 0, 65535);
    CHECK_ARR("test.arr_i16", GGUF_VT_INT16, int16_t, -32768, 32767);
    CHECK_ARR("test.arr_u32", GGUF_VT_UINT32, uint32_t, 1, 2, 4000000000u);
    CHECK_ARR("test.arr_i32", GGUF_VT_INT32, int32_t, -1, 0, 1, 2147483647);
    CHECK_ARR("test.arr_u64", GGUF_VT_UINT64, uint64_t, UINT64_MAX, 0);
    CHECK_ARR("test.arr_i64", GGUF_VT_INT64, int64_t, INT64_MIN, INT64_MAX);
    CHECK_ARR("test.arr_f32", GGUF_VT_FLOAT32, float, 1.5f, -2.25f, 1e-3f);
    CHECK_ARR("test.arr_f64", GGUF_VT_FLOAT64, double, 1e-300, -0.1);
    CHECK_ARR("test.arr_bool", GGUF_VT_BOOL, uint8_t, 1, 0, 1);
#undef CHECK_ARR
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "test.u8", &et, &n), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_arr_data(g, "test.u8", &data), KVS_EFORMAT);

    /* string arrays, O(1) per element */
    static const char *const strs[] = {"a", "", "h\xc3\xa9llo", "two words"};
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "test.arr_str", &et, &n), 0);
    CU_ASSERT_EQUAL(et, GGUF_VT_STRING);
    CU_ASSERT_EQUAL_FATAL(n, 4);
    for (uint64_t i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(gguf_get_arr_str(g, "test.arr_str", i, &s, &len), 0);
        CU_ASSERT_EQUAL(len, strlen(strs[i]));
        CU_ASSERT_EQUAL(memcmp(s, strs[i], len), 0);
    }
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "test.arr_str", 4, &s, &len), KVS_ERANGE);
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "test.arr_str", UINT64_MAX, &s, &len), KVS_ERANGE);
    CU_ASSERT_EQUAL(gguf_get_arr_data(g, "test.arr_str", &data), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "test.arr_u8", 0, &s, &len), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "test.str", 0, &s, &len), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "test.tokens", &et, &n), 0);
    CU_ASSERT_EQUAL_FATAL(n, 1000);
    int bad = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        char want[32];
        int wl = snprintf(want, sizeof want, "tok%llu", (unsigned long long)i);
        if (gguf_get_arr_str(g, "test.tokens", i, &s, &len) != 0 || len != (size_t)wl ||
            memcmp(s, want, len) != 0)
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);

    /* nested arrays: visible as arrays of arrays, no element access */
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "test.arr_nested_i32", &et, &n), 0);
    CU_ASSERT_EQUAL(et, GGUF_VT_ARRAY);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_EQUAL(gguf_get_arr_data(g, "test.arr_nested_i32", &data), KVS_EFORMAT);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "test.arr_nested_str", &et, &n), 0);
    CU_ASSERT_EQUAL(et, GGUF_VT_ARRAY);
    CU_ASSERT_EQUAL(n, 2);

    /* NULL handling */
    CU_ASSERT_EQUAL(gguf_get_u32(NULL, "test.u8", &u32), KVS_EINVAL);
    CU_ASSERT_EQUAL(gguf_get_u32(g, NULL, &u32), KVS_EINVAL);
    CU_ASSERT_EQUAL(gguf_find_key(NULL, "x"), -1);
    CU_ASSERT_PTR_NULL(gguf_find_tensor(g, NULL));
    gguf_close(g);
    gguf_close(NULL);
}

static void test_tensors(void)
{
    fx_layout L;
    CU_ASSERT_EQUAL_FATAL(load_layout(&L), 0);
    size_t nexp;
    float *expected = (float *)read_all(fixture("all_types.expected.bin"), &nexp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(expected);
    gguf_ctx *g = NULL;
    CU_ASSERT_EQUAL_FATAL(gguf_open(fixture("all_types.gguf"), NULL, &g), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(gguf_n_tensors(g), L.nt);
    CU_ASSERT_PTR_NULL(gguf_tensor_at(g, -1));
    CU_ASSERT_PTR_NULL(gguf_tensor_at(g, L.nt));
    CU_ASSERT_PTR_NULL(gguf_find_tensor(g, "t.nope"));

    uint32_t seen_types = 0; /* bit per type index we covered */
    size_t at = 0;           /* position in expected, in floats */
    for (int i = 0; i < L.nt; i++) {
        const fx_tensor *w = &L.t[i];
        const gguf_tensor *t = gguf_tensor_at(g, i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_STRING_EQUAL(t->name, w->name);
        CU_ASSERT_PTR_EQUAL(gguf_find_tensor(g, w->name), t);
        CU_ASSERT_EQUAL(t->type, w->type);
        CU_ASSERT_EQUAL(t->n_dims, w->n_dims);
        uint64_t ne = 1;
        for (int d = 0; d < 4; d++) {
            CU_ASSERT_EQUAL(t->ne[d], w->ne[d]);
            ne *= w->ne[d];
        }
        CU_ASSERT_EQUAL(t->n_elems, ne);
        CU_ASSERT_EQUAL(t->nbytes, w->nbytes);
        CU_ASSERT_EQUAL((uintptr_t)t->data % 64, 0); /* general.alignment = 64 */
        seen_types |= 1u << t->type;

        CU_ASSERT_FATAL((at + ne) * sizeof(float) <= nexp);
        float *out = malloc(ne * sizeof(float));
        CU_ASSERT_PTR_NOT_NULL_FATAL(out);
        CU_ASSERT_EQUAL(gguf_tensor_to_f32(t, out), KVS_OK);
        int mism = 0, exact = 0;
        for (uint64_t k = 0; k < ne; k++) {
            if (!same_float(out[k], expected[at + k]) && mism++ < 3)
                printf("\n  %s[%llu] = %.9g, gguf-py says %.9g", t->name, (unsigned long long)k,
                       out[k], expected[at + k]);
            exact += memcmp(&out[k], &expected[at + k], 4) == 0 || isnan(out[k]);
        }
        CU_ASSERT_EQUAL(mism, 0);
        CU_ASSERT_EQUAL(exact, (int)ne); /* same fp32 operations in the same order: bit-exact */

        /* the first block alone, through gguf_dequantize */
        uint32_t be = gguf_type_block_elems(t->type);
        CU_ASSERT_EQUAL(gguf_dequantize(t->type, t->data, out, be), KVS_OK);
        CU_ASSERT_EQUAL(memcmp(out, expected + at, be * sizeof(float)), 0);
        free(out);
        at += ne;
    }
    CU_ASSERT_EQUAL(at * sizeof(float), nexp);
    const uint32_t all = 1u << GGUF_T_F32 | 1u << GGUF_T_F16 | 1u << GGUF_T_BF16 |
                         1u << GGUF_T_Q8_0 | 1u << GGUF_T_Q4_0 | 1u << GGUF_T_Q4_1 |
                         1u << GGUF_T_Q4_K | 1u << GGUF_T_Q6_K | 1u << GGUF_T_Q5_0 |
                         1u << GGUF_T_Q5_1 | 1u << GGUF_T_Q5_K | 1u << GGUF_T_Q8_K;
    CU_ASSERT_EQUAL(seen_types & all, all);
    gguf_close(g);
    free(expected);
}

/* Default alignment (no general.alignment key), tensor sizes not multiples of it. */
static void test_minimal_default_alignment(void)
{
    gguf_ctx *g = NULL;
    CU_ASSERT_EQUAL_FATAL(gguf_open(fixture("minimal.gguf"), "llama", &g), KVS_OK);
    CU_ASSERT_EQUAL(gguf_find_key(g, "general.alignment"), -1);
    CU_ASSERT_EQUAL_FATAL(gguf_n_tensors(g), 2);
    const gguf_tensor *a = gguf_find_tensor(g, "a"), *b = gguf_find_tensor(g, "b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(a->n_elems, 5);
    CU_ASSERT_EQUAL(b->n_elems, 7);
    CU_ASSERT_EQUAL((uintptr_t)a->data % 32, 0);
    CU_ASSERT_EQUAL((uintptr_t)b->data % 32, 0);
    CU_ASSERT_EQUAL((const uint8_t *)b->data - (const uint8_t *)a->data, 32);
    float x[7];
    CU_ASSERT_EQUAL(gguf_tensor_to_f32(a, x), 0);
    for (int i = 0; i < 5; i++) CU_ASSERT_EQUAL(x[i], 0.5f * (float)i);
    CU_ASSERT_EQUAL(gguf_tensor_to_f32(b, x), 0);
    for (int i = 0; i < 7; i++) CU_ASSERT_EQUAL(x[i], (float)(i - 3));
    gguf_close(g);
}

/* ---- malformed files ---------------------------------------------------------------------- */

static char tmp_dir[64];
static char tmp_file[128];
static int show_messages = 1; /* print one line per named corruption: the messages are the UI */

static int tmp_setup(void)
{
    if (tmp_dir[0]) return 0;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/kvs_test_gguf_XXXXXX");
    if (!mkdtemp(tmp_dir)) return -1;
    snprintf(tmp_file, sizeof tmp_file, "%s/bad.gguf", tmp_dir);
    return 0;
}

/* Write `b` to the temp file and open it: must fail with a negative status, no context and a
 * message (containing `expect` if non-NULL). Returns the status. */
static int open_bad(const uint8_t *b, size_t n, const char *want_arch, const char *label,
                    const char *expect)
{
    CU_ASSERT_EQUAL_FATAL(write_all(tmp_file, b, n), 0);
    kvs_error(0, "%s", "");
    gguf_ctx *g = (gguf_ctx *)&g; /* must be reset to NULL */
    int rc = gguf_open(tmp_file, want_arch, &g);
    CU_ASSERT(rc < 0);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_NOT_EQUAL(kvs_last_error()[0], '\0');
    if (expect && !strstr(kvs_last_error(), expect)) {
        printf("\n  %s: message lacks \"%s\": %s", label, expect, kvs_last_error());
        CU_FAIL("error message");
    }
    if (label && show_messages)
        printf("\n  %-26s -> %-12s %s", label, kvs_strerror(rc), kvs_last_error());
    if (rc >= 0) {
        printf("\n  %s: opened, but should have failed", label ? label : "?");
        gguf_close(g);
    }
    return rc;
}

static uint8_t *good_copy(const uint8_t *good, size_t n)
{
    uint8_t *b = malloc(n);
    memcpy(b, good, n);
    return b;
}

static void test_corrupt(void)
{
    fx_layout L;
    CU_ASSERT_EQUAL_FATAL(load_layout(&L), 0);
    CU_ASSERT_EQUAL_FATAL(tmp_setup(), 0);
    size_t n;
    uint8_t *good = read_all(fixture("all_types.gguf"), &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(good);
    CU_ASSERT_EQUAL_FATAL(n, lay(&L, "file_size"));
    uint8_t *b = good_copy(good, n);
#define RESET() memcpy(b, good, n)

    /* magic and version */
    b[0] = 'X';
    open_bad(b, n, NULL, "bad magic", "not a GGUF file");
    RESET();
    put_u32(b, 4, 1);
    CU_ASSERT_EQUAL(open_bad(b, n, NULL, "version 1", "version 1"), KVS_EUNSUPPORTED);
    put_u32(b, 4, 4);
    CU_ASSERT_EQUAL(open_bad(b, n, NULL, "version 4", "version 4"), KVS_EFORMAT);
    put_u32(b, 4, 0);
    open_bad(b, n, NULL, "version 0", "version");
    put_u32(b, 4, 0x03000000u);
    CU_ASSERT_EQUAL(open_bad(b, n, NULL, "big-endian version", "big-endian"),
                    KVS_EUNSUPPORTED);
    RESET();

    /* truncation: every 7th byte through the header, then points inside the data */
    uint64_t data_start = lay(&L, "data_start"), data_end = lay(&L, "data_end");
    CU_ASSERT_EQUAL(data_end, n); /* so every truncation of the data is an error */
    show_messages = 0;
    int fails = 0, tried = 0;
    for (uint64_t k = 0; k < data_start + 16; k += 7) {
        tried++;
        fails += open_bad(b, (size_t)k, NULL, NULL, k >= 4 ? "truncated" : NULL) < 0;
    }
    for (int i = 0; i < L.nt; i++) {
        uint64_t s = data_start + L.t[i].data_off;
        uint64_t cut[3] = {s + 1, s + L.t[i].nbytes / 2, s + L.t[i].nbytes - 1};
        for (int c = 0; c < 3; c++) {
            tried++;
            fails += open_bad(b, (size_t)cut[c], NULL, NULL, L.t[i].name) < 0;
        }
    }
    tried++;
    fails += open_bad(b, n - 1, NULL, NULL, "truncated download") < 0;
    CU_ASSERT_EQUAL(fails, tried);
    show_messages = 1;
    open_bad(b, 0, NULL, "empty file", "too short");
    open_bad(b, 20, NULL, "truncated at 20", "too short");
    open_bad(b, 100, NULL, "truncated at 100", "truncated");
    open_bad(b, (size_t)lay(&L, "str_len_off") + 4, NULL, "truncated in a length", "truncated");
    open_bad(b, (size_t)(data_start + L.t[3].data_off + 5), NULL, "truncated in tensor 3",
             "truncated download");

    /* absurd counts */
    put_u64(b, 8, UINT64_C(1) << 60);
    open_bad(b, n, NULL, "n_tensors = 2^60", "tensors");
    put_u64(b, 8, UINT64_MAX);
    open_bad(b, n, NULL, "n_tensors = 2^64-1", "tensors");
    put_u64(b, 8, lay(&L, "n_tensors") + 1);
    open_bad(b, n, NULL, "n_tensors + 1", NULL);
    RESET();
    put_u64(b, 16, UINT64_C(1) << 60);
    open_bad(b, n, NULL, "n_kv = 2^60", "metadata entries");
    put_u64(b, 16, UINT64_MAX);
    open_bad(b, n, NULL, "n_kv = 2^64-1", "metadata entries");
    put_u64(b, 16, lay(&L, "n_kv") + 1);
    open_bad(b, n, NULL, "n_kv + 1", NULL);
    put_u64(b, 16, lay(&L, "n_kv") - 1);
    open_bad(b, n, NULL, "n_kv - 1", NULL);
    RESET();

    /* lengths past the end */
    put_u64(b, lay(&L, "str_len_off"), n);
    open_bad(b, n, NULL, "string length = file size", "claims");
    put_u64(b, lay(&L, "str_len_off"), UINT64_MAX);
    open_bad(b, n, NULL, "string length = 2^64-1", "claims");
    RESET();
    put_u64(b, lay(&L, "first_key_len_off"), UINT64_C(1) << 40);
    open_bad(b, n, NULL, "key length = 2^40", "key length");
    RESET();
    put_u64(b, lay(&L, "tokens_last_len_off"), n);
    open_bad(b, n, NULL, "last token length", "string array element");
    RESET();
    put_u64(b, lay(&L, "tokens_count_off"), UINT64_C(1) << 62);
    open_bad(b, n, NULL, "string array count 2^62", "test.tokens");
    put_u64(b, lay(&L, "tokens_count_off"), 1001);
    open_bad(b, n, NULL, "string array count + 1", NULL);
    RESET();

    /* bad value types and values */
    put_u32(b, lay(&L, "u32_vtype_off"), 13);
    open_bad(b, n, NULL, "value type 13", "unknown value type 13");
    put_u32(b, lay(&L, "u32_vtype_off"), UINT32_MAX);
    open_bad(b, n, NULL, "value type 2^32-1", "unknown value type");
    RESET();
    b[lay(&L, "bool_value_off")] = 2;
    open_bad(b, n, NULL, "bool = 2", "not 0 or 1");
    RESET();
    b[lay(&L, "bool_arr_first_off")] = 7;
    open_bad(b, n, NULL, "bool array element = 7", "not 0 or 1");
    RESET();
    put_u32(b, lay(&L, "nested_elem_type_off"), 99);
    open_bad(b, n, NULL, "nested elem type 99", "array element type 99");
    RESET();
    put_u64(b, lay(&L, "nested_inner_count_off"), UINT64_C(1) << 50);
    open_bad(b, n, NULL, "nested inner count 2^50", "test.arr_nested_i32");
    RESET();

    /* keys */
    b[lay(&L, "first_key_len_off") + 8] = 0;
    open_bad(b, n, NULL, "NUL in key", "NUL");
    RESET();
    memcpy(b + lay(&L, "dup_key_dst_off"), good + lay(&L, "dup_key_src_off"),
           lay(&L, "dup_key_len"));
    open_bad(b, n, NULL, "duplicate key", "appears twice");
    RESET();

    /* alignment */
    uint64_t ao = lay(&L, "alignment_value_off");
    put_u32(b, ao, 0);
    open_bad(b, n, NULL, "alignment 0", "power of 2");
    put_u32(b, ao, 3);
    open_bad(b, n, NULL, "alignment 3", "power of 2");
    put_u32(b, ao, 48);
    open_bad(b, n, NULL, "alignment 48", "power of 2");
    put_u32(b, ao, UINT32_C(1) << 31);
    open_bad(b, n, NULL, "alignment 2^31", "truncated");
    RESET();

    /* tensor infos: use tensor 0 (F32 64 x 3), 3 (Q8_0 64 x 4) and the last one */
    const fx_tensor *t0 = &L.t[0], *tq = &L.t[3], *tl = &L.t[L.nt - 1];
    CU_ASSERT_EQUAL_FATAL(t0->n_dims, 2);
    CU_ASSERT_EQUAL_FATAL(tq->type, GGUF_T_Q8_0);
    put_u32(b, t0->n_dims_off, 0);
    open_bad(b, n, NULL, "n_dims 0", "dimensions");
    put_u32(b, t0->n_dims_off, 5);
    open_bad(b, n, NULL, "n_dims 5", "dimensions");
    put_u32(b, t0->n_dims_off, UINT32_MAX);
    open_bad(b, n, NULL, "n_dims 2^32-1", "dimensions");
    RESET();
    put_u64(b, t0->ne_off, UINT64_C(1) << 32);
    put_u64(b, t0->ne_off + 8, UINT64_C(1) << 33);
    open_bad(b, n, NULL, "ne0*ne1 = 2^65", "2^63 elements");
    put_u64(b, t0->ne_off, UINT64_C(1) << 62);
    put_u64(b, t0->ne_off + 8, 2);
    open_bad(b, n, NULL, "ne0*ne1 = 2^63", "2^63 elements");
    put_u64(b, t0->ne_off, UINT64_C(1) << 61);
    put_u64(b, t0->ne_off + 8, 2);
    open_bad(b, n, NULL, "F32 bytes = 2^64", "2^64 bytes");
    put_u64(b, t0->ne_off, UINT64_C(1) << 63);
    open_bad(b, n, NULL, "ne0 = 2^63", "2^63 - 1");
    RESET();
    put_u64(b, tq->ne_off, 63);
    open_bad(b, n, NULL, "Q8_0 ne0 = 63", "not a multiple of the Q8_0 block");
    RESET();
    put_u64(b, tq->ne_off + 8, 5); /* one row more than the data holds */
    open_bad(b, n, NULL, "Q8_0 one row too many", "overlaps tensor");
    RESET();
    const uint32_t bad_types[] = {4, 5, 31, 99, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        char label[48];
        snprintf(label, sizeof label, "tensor type %u", bad_types[i]);
        put_u32(b, t0->type_off, bad_types[i]);
        open_bad(b, n, NULL, label, "unknown tensor type");
    }
    RESET();
    uint64_t past = (n + 63) / 64 * 64;
    put_u64(b, tl->offset_off, past);
    open_bad(b, n, NULL, "offset past the end", "truncated download");
    put_u64(b, tl->offset_off, UINT64_MAX - 63);
    open_bad(b, n, NULL, "offset 2^64-64", "past the end");
    put_u64(b, tl->offset_off, tl->data_off + 64); /* aligned, starts inside, ends outside */
    open_bad(b, n, NULL, "offset + one block", tl->name);
    put_u64(b, tl->offset_off, tl->data_off + 1);
    open_bad(b, n, NULL, "unaligned offset", "not a multiple of the alignment");
    RESET();
    /* duplicate tensor name: two names of equal length */
    int di = -1, dj = -1;
    for (int i = 0; i < L.nt && di < 0; i++)
        for (int j = i + 1; j < L.nt; j++)
            if (strlen(L.t[i].name) == strlen(L.t[j].name)) {
                di = i;
                dj = j;
                break;
            }
    if (di < 0 || dj < 0) { /* the fixture always has two (t.f32, t.f16) */
        CU_FAIL("no two tensor names of equal length in the fixture");
        free(b);
        free(good);
        return;
    }
    memcpy(b + L.t[dj].name_len_off + 8, L.t[di].name, strlen(L.t[di].name));
    open_bad(b, n, NULL, "duplicate tensor name", "appears twice");
    RESET();
    b[L.t[1].name_len_off + 8] = 0;
    open_bad(b, n, NULL, "NUL in tensor name", "NUL");
    RESET();

    /* architecture */
    CU_ASSERT_EQUAL(open_bad(b, n, "gpt2", "want_arch gpt2", "'llama'"), KVS_EUNSUPPORTED);
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "'gpt2'"), NULL);
    b[lay(&L, "first_key_len_off") + 8 + 19] = 'X'; /* general.architecturX */
    CU_ASSERT_EQUAL(open_bad(b, n, "llama", "no architecture key", "llama"), KVS_EUNSUPPORTED);
    gguf_ctx *g = NULL; /* without want_arch the same file is fine */
    CU_ASSERT_EQUAL(gguf_open(tmp_file, NULL, &g), KVS_OK);
    gguf_close(g);
    RESET();

    /* not files */
    g = (gguf_ctx *)&g;
    CU_ASSERT_EQUAL(gguf_open("/nonexistent/model.gguf", NULL, &g), KVS_EIO);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "/nonexistent/model.gguf"), NULL);
    CU_ASSERT_EQUAL(gguf_open(tmp_dir, NULL, &g), KVS_EIO);
    CU_ASSERT_EQUAL(gguf_open(NULL, NULL, &g), KVS_EINVAL);
    CU_ASSERT_EQUAL(gguf_open(tmp_file, NULL, NULL), KVS_EINVAL);

    /* version 2 has the same layout and is accepted */
    put_u32(b, 4, 2);
    CU_ASSERT_EQUAL_FATAL(write_all(tmp_file, b, n), 0);
    CU_ASSERT_EQUAL(gguf_open(tmp_file, "llama", &g), KVS_OK);
    CU_ASSERT_EQUAL(gguf_version(g), 2);
    gguf_close(g);
#undef RESET
    free(b);
    free(good);
    printf("\n  ");
}

/* Files built byte by byte, for shapes the Python writer cannot produce. */
typedef struct { uint8_t b[4096]; size_t n; } fbuf;
static void fb_u32(fbuf *f, uint32_t v) { memcpy(f->b + f->n, &v, 4); f->n += 4; }
static void fb_u64(fbuf *f, uint64_t v) { memcpy(f->b + f->n, &v, 8); f->n += 8; }
static void fb_str(fbuf *f, const char *s)
{
    fb_u64(f, strlen(s));
    memcpy(f->b + f->n, s, strlen(s));
    f->n += strlen(s);
}
static void fb_header(fbuf *f, uint64_t n_tensors, uint64_t n_kv)
{
    f->n = 0;
    memcpy(f->b, "GGUF", 4);
    f->n = 4;
    fb_u32(f, 3);
    fb_u64(f, n_tensors);
    fb_u64(f, n_kv);
}
/* key "x" = array nested `depth` levels deep, innermost: two uint8 */
static void fb_nested(fbuf *f, int depth)
{
    fb_header(f, 0, 1);
    fb_str(f, "x");
    fb_u32(f, GGUF_VT_ARRAY);
    for (int d = 1; d < depth; d++) {
        fb_u32(f, GGUF_VT_ARRAY);
        fb_u64(f, 1);
    }
    fb_u32(f, GGUF_VT_UINT8);
    fb_u64(f, 2);
    f->b[f->n++] = 7;
    f->b[f->n++] = 9;
}

static int open_buf(const fbuf *f, gguf_ctx **g)
{
    CU_ASSERT_EQUAL_FATAL(write_all(tmp_file, f->b, f->n), 0);
    return gguf_open(tmp_file, NULL, g);
}

static void test_handmade(void)
{
    CU_ASSERT_EQUAL_FATAL(tmp_setup(), 0);
    static fbuf f;
    gguf_ctx *g = NULL;
    int et;
    uint64_t n;
    const void *data;
    const char *s;
    size_t len;

    /* header only: a valid, empty file; but it has no architecture */
    fb_header(&f, 0, 0);
    CU_ASSERT_EQUAL(open_buf(&f, &g), KVS_OK);
    CU_ASSERT_EQUAL(gguf_n_kv(g), 0);
    CU_ASSERT_EQUAL(gguf_n_tensors(g), 0);
    CU_ASSERT_EQUAL(gguf_find_key(g, "general.architecture"), -1);
    gguf_close(g);
    g = NULL;
    CU_ASSERT_EQUAL(gguf_open(tmp_file, "llama", &g), KVS_EUNSUPPORTED);

    /* nesting: 4 levels are accepted, 5 and 50 are not */
    fb_nested(&f, 4);
    CU_ASSERT_EQUAL(open_buf(&f, &g), KVS_OK);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "x", &et, &n), 0);
    CU_ASSERT_TRUE(et == GGUF_VT_ARRAY && n == 1);
    gguf_close(g);
    fb_nested(&f, 5);
    CU_ASSERT_EQUAL(open_buf(&f, &g), KVS_EFORMAT);
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "nested"), NULL);
    printf("\n  %-26s -> %s", "arrays nested 5 deep", kvs_last_error());
    fb_nested(&f, 50);
    CU_ASSERT_EQUAL(open_buf(&f, &g), KVS_EFORMAT);

    /* empty arrays, an empty-but-valid zero-size tensor, a signed alignment key */
    fb_header(&f, 2, 4);
    fb_str(&f, "e.str");
    fb_u32(&f, GGUF_VT_ARRAY);
    fb_u32(&f, GGUF_VT_STRING);
    fb_u64(&f, 0);
    fb_str(&f, "e.u8");
    fb_u32(&f, GGUF_VT_ARRAY);
    fb_u32(&f, GGUF_VT_UINT8);
    fb_u64(&f, 0);
    fb_str(&f, "general.alignment");
    fb_u32(&f, GGUF_VT_INT32);
    size_t align_off = f.n;
    fb_u32(&f, 16);
    fb_str(&f, "k");
    fb_u32(&f, GGUF_VT_STRING);
    fb_str(&f, "v");
    fb_str(&f, "zero"); /* Q8_0 [32, 0]: no elements, no bytes */
    fb_u32(&f, 2);
    fb_u64(&f, 32);
    fb_u64(&f, 0);
    fb_u32(&f, GGUF_T_Q8_0);
    fb_u64(&f, 0);
    fb_str(&f, "one"); /* F32 [4] at offset 0 too */
    fb_u32(&f, 1);
    fb_u64(&f, 4);
    fb_u32(&f, GGUF_T_F32);
    fb_u64(&f, 0);
    while (f.n % 16) f.b[f.n++] = 0;
    const float vals[4] = {1, -2, 3.5f, 0};
    memcpy(f.b + f.n, vals, sizeof vals);
    f.n += sizeof vals;
    int rc = open_buf(&f, &g);
    if (rc) printf("\n  %s", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, KVS_OK);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "e.str", &et, &n), 0);
    CU_ASSERT_TRUE(et == GGUF_VT_STRING && n == 0);
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "e.str", 0, &s, &len), KVS_ERANGE);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "e.u8", &et, &n), 0);
    CU_ASSERT_TRUE(et == GGUF_VT_UINT8 && n == 0);
    CU_ASSERT_EQUAL(gguf_get_arr_data(g, "e.u8", &data), 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "k", &s, &len), 0);
    CU_ASSERT_TRUE(len == 1 && s[0] == 'v');
    const gguf_tensor *z = gguf_find_tensor(g, "zero"), *o = gguf_find_tensor(g, "one");
    CU_ASSERT_PTR_NOT_NULL_FATAL(z);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT_TRUE(z->n_elems == 0 && z->nbytes == 0);
    float out[4];
    CU_ASSERT_EQUAL(gguf_tensor_to_f32(z, out), 0);
    CU_ASSERT_EQUAL(gguf_tensor_to_f32(o, out), 0);
    CU_ASSERT_EQUAL(memcmp(out, vals, sizeof vals), 0);
    gguf_close(g);

    /* negative signed alignment */
    put_u32(f.b, align_off, (uint32_t)-64);
    CU_ASSERT_EQUAL(open_buf(&f, &g), KVS_EFORMAT);
    CU_ASSERT_NOT_EQUAL(strstr(kvs_last_error(), "power of 2"), NULL);
    printf("\n  %-26s -> %s\n  ", "alignment -64 (int32)", kvs_last_error());
}

/* Random byte flips in the header: whatever happens, no crash, no out-of-bounds read (the
 * ASan build checks), and either a usable file or an error with a message.
 * KVS_GGUF_FUZZ_ITERS=N runs N mutations instead of 1500 (for a longer soak by hand). */
static void test_fuzz_header(void)
{
    fx_layout L;
    CU_ASSERT_EQUAL_FATAL(load_layout(&L), 0);
    CU_ASSERT_EQUAL_FATAL(tmp_setup(), 0);
    size_t n;
    uint8_t *good = read_all(fixture("all_types.gguf"), &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(good);
    uint8_t *b = malloc(n);
    uint64_t span = lay(&L, "data_start");
    uint64_t state = 0x9e3779b97f4a7c15ull;
    int iters = 1500;
    const char *env = getenv("KVS_GGUF_FUZZ_ITERS");
    if (env && atoi(env) > 0) iters = atoi(env);
    int opened = 0, failed = 0, silent = 0;
    volatile char sink = 0; /* reads of the last byte of each string: ASan checks them */
    for (int iter = 0; iter < iters; iter++) {
        memcpy(b, good, n);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t pos = (state >> 33) % span;
            uint8_t v = (uint8_t)(state >> 20);
            b[pos] = (iter & 1) ? v : (uint8_t)(b[pos] ^ (1u << (v & 7)));
        }
        CU_ASSERT_EQUAL_FATAL(write_all(tmp_file, b, n), 0);
        kvs_error(0, "%s", "");
        gguf_ctx *g = NULL;
        int rc = gguf_open(tmp_file, NULL, &g);
        if (rc < 0) {
            failed++;
            silent += kvs_last_error()[0] == '\0';
            continue;
        }
        opened++;
        /* touch everything the getters expose */
        for (int64_t i = 0; i < gguf_n_kv(g); i++) {
            const char *key = gguf_key_at(g, i), *s;
            size_t len;
            uint64_t cnt;
            int et;
            const void *d;
            uint32_t u;
            float f;
            gguf_get_u32(g, key, &u);
            gguf_get_f32(g, key, &f);
            if (gguf_get_str(g, key, &s, &len) == 0 && len) sink = s[len - 1];
            if (gguf_get_arr_info(g, key, &et, &cnt) == 0) {
                gguf_get_arr_data(g, key, &d);
                for (uint64_t j = 0; et == GGUF_VT_STRING && j < cnt; j++)
                    if (gguf_get_arr_str(g, key, j, &s, &len) == 0 && len) sink = s[len - 1];
            }
        }
        for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
            const gguf_tensor *t = gguf_tensor_at(g, i);
            if (!gguf_type_can_dequantize(t->type) || t->n_elems > (1u << 22)) continue;
            float *out = malloc(t->n_elems ? t->n_elems * sizeof(float) : 1);
            CU_ASSERT_EQUAL(gguf_tensor_to_f32(t, out), 0);
            free(out);
        }
        gguf_close(g);
    }
    (void)sink;
    CU_ASSERT_EQUAL(silent, 0);
    CU_ASSERT_TRUE(failed > 0);
    printf("\n  %d mutated headers: %d opened, %d rejected\n  ", iters, opened, failed);
    free(b);
    free(good);
}

/* ---- the default model (skipped when models/ has no copy) --------------------------------- */

static void test_default_model(void)
{
    const char *path = kvs_test_model_path();
    if (!path) {
        printf("\n  default model absent: skipped\n  ");
        return;
    }
    double t0 = kvs_now();
    gguf_ctx *g = NULL;
    int rc = gguf_open(path, "llama", &g);
    if (rc) printf("\n  %s", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, KVS_OK);
    double t_open = kvs_now() - t0;
    CU_ASSERT_EQUAL(gguf_n_tensors(g), 272);
    uint32_t u;
    CU_ASSERT_EQUAL(gguf_get_u32(g, "llama.block_count", &u), 0);
    CU_ASSERT_EQUAL(u, 30);
    CU_ASSERT_EQUAL(gguf_get_u32(g, "llama.context_length", &u), 0);
    CU_ASSERT_EQUAL(u, 8192);
    float f;
    CU_ASSERT_EQUAL(gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    CU_ASSERT_EQUAL(f, 100000.0f);
    int et;
    uint64_t n;
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n), 0);
    CU_ASSERT_EQUAL(et, GGUF_VT_STRING);
    CU_ASSERT_EQUAL(n, 49152);
    CU_ASSERT_EQUAL(gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &n), 0);
    CU_ASSERT_EQUAL(n, 48900);
    const char *s;
    size_t len;
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 0, &s, &len), 0);
    CU_ASSERT_TRUE(len == 13 && memcmp(s, "<|endoftext|>", 13) == 0);
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 49151, &s, &len), 0);
    CU_ASSERT_TRUE(len == 7 && memcmp(s, "ectable", 7) == 0);
    CU_ASSERT_EQUAL(gguf_get_arr_str(g, "tokenizer.ggml.merges", 48899, &s, &len), 0);
    CU_ASSERT_TRUE(len == 8 && memcmp(s, "ect able", 8) == 0);

    const gguf_tensor *e = gguf_find_tensor(g, "token_embd.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(e->type, GGUF_T_Q8_0);
    CU_ASSERT_EQUAL(e->n_dims, 2);
    CU_ASSERT_EQUAL(e->ne[0], 576);
    CU_ASSERT_EQUAL(e->ne[1], 49152);

    /* Reference values: computed once with the gguf Python package (0.19.0):
     *   r = gguf.GGUFReader(path); t = <tensor by name>
     *   v = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1); print(repr(float(v[i])))
     * All are exact in fp32 (and the C code reproduces numpy's operations bit for bit). */
    static const struct { uint64_t i; float v; } q[] = {
        {0, -0.0963134765625f},     {1, 0.1573486328125f},    {15, 0.537841796875f},
        {16, -0.22314453125f},      {31, -0.0963134765625f},  {32, -0.34619140625f},
        {575, 0.12353515625f},      {57633, 0.195556640625f}, {331775, -0.255859375f},
    };
    const gguf_tensor *aq = gguf_find_tensor(g, "blk.0.attn_q.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(aq);
    CU_ASSERT_EQUAL(aq->type, GGUF_T_Q4_1);
    CU_ASSERT_EQUAL_FATAL(aq->n_elems, 576 * 576);
    float *w = malloc(aq->n_elems * sizeof(float));
    CU_ASSERT_EQUAL(gguf_tensor_to_f32(aq, w), 0);
    for (size_t k = 0; k < sizeof q / sizeof q[0]; k++) CU_ASSERT_EQUAL(w[q[k].i], q[k].v);
    double sum = 0; /* gguf-py: float(v.astype(np.float64).sum()) = 59.22322082519531 */
    for (uint64_t k = 0; k < aq->n_elems; k++) sum += w[k];
    CU_ASSERT_DOUBLE_EQUAL(sum, 59.22322082519531, 1e-6);
    free(w);

    /* the largest tensor (Q8_0, 28M values), timed */
    float *ew = malloc(e->n_elems * sizeof(float));
    CU_ASSERT_PTR_NOT_NULL_FATAL(ew);
    double t1 = kvs_now();
    CU_ASSERT_EQUAL(gguf_tensor_to_f32(e, ew), 0);
    double t_deq = kvs_now() - t1;
    CU_ASSERT_EQUAL(ew[0], -0.10654449462890625f);
    CU_ASSERT_EQUAL(ew[576005], -0.0099945068359375f);
    CU_ASSERT_EQUAL(ew[e->n_elems - 1], -0.0417022705078125f);
    free(ew);
    printf("\n  open %.1f ms; token_embd (%llu values) dequantised in %.1f ms\n  ",
           t_open * 1e3, (unsigned long long)e->n_elems, t_deq * 1e3);
    gguf_close(g);
}

static void cleanup_tmp(void)
{
    if (!tmp_dir[0]) return;
    unlink(tmp_file);
    rmdir(tmp_dir);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"type table", test_type_table},
        {"fp16/bf16 conversions", test_half_conversions},
        {"metadata getters", test_metadata},
        {"tensors dequantise like gguf-py", test_tensors},
        {"default alignment", test_minimal_default_alignment},
        {"corrupted files are rejected", test_corrupt},
        {"hand-built files", test_handmade},
        {"header fuzz", test_fuzz_header},
        {"default model", test_default_model},
    };
    int rc = kvs_test_main("gguf", tests, (int)(sizeof tests / sizeof tests[0]));
    cleanup_tmp();
    return rc;
}
