/* kv_format.c — the table of built-in KV formats and the 16-bit conversions they share. */
#include "memory/kv_format.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/common.h"

static const kv_format *const kv_formats[] = {&kv_fmt_f32, &kv_fmt_f16, &kv_fmt_bf16,
                                              &kv_fmt_int8, &kv_fmt_int4, &kv_fmt_int2};
#define N_FORMATS ((int)(sizeof kv_formats / sizeof kv_formats[0]))

const kv_format *const *kv_format_list(int *n)
{
    *n = N_FORMATS;
    return kv_formats;
}

const kv_format *kv_format_find(const char *name)
{
    if (!name) return NULL;
    for (int i = 0; i < N_FORMATS; i++)
        if (!strcmp(kv_formats[i]->name, name)) return kv_formats[i];
    return NULL;
}

const char *kv_format_names(void)
{
    static char buf[256];
    if (!buf[0]) {
        size_t at = 0;
        for (int i = 0; i < N_FORMATS && at < sizeof buf; i++)
            at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%s", i ? ", " : "",
                                   kv_formats[i]->name);
    }
    return buf;
}

int kv_format_parse(const char *name, const kv_format **out)
{
    const kv_format *f = kv_format_find(name);
    if (!f)
        return kvs_error(KVS_EINVAL, "unknown KV dtype '%.40s' (known: %s)",
                         name ? name : "(null)", kv_format_names());
    *out = f;
    return KVS_OK;
}

int kv_format_spec_parse(const char *spec, const kv_format **k, const kv_format **v)
{
    if (!spec) return kv_format_parse(NULL, k);
    const char *slash = strchr(spec, '/');
    if (!slash) {
        int rc = kv_format_parse(spec, k);
        if (!rc) *v = *k;
        return rc;
    }
    char kn[32];
    size_t n = (size_t)(slash - spec);
    if (n == 0 || n >= sizeof kn || strchr(slash + 1, '/'))
        return kvs_error(KVS_EINVAL, "bad KV dtype '%.40s': give NAME or KEYS/VALUES, e.g. "
                         "int8/int4 (known: %s)", spec, kv_format_names());
    memcpy(kn, spec, n);
    kn[n] = '\0';
    const kv_format *a = NULL, *b = NULL;
    int rc = kv_format_parse(kn, &a);
    if (!rc) rc = kv_format_parse(slash + 1, &b);
    if (rc) return rc;
    *k = a;
    *v = b;
    return KVS_OK;
}

const char *kv_format_spec_name(const kv_format *k, const kv_format *v, char *buf, size_t size)
{
    if (k == v) snprintf(buf, size, "%s", k->name);
    else snprintf(buf, size, "%s/%s", k->name, v->name);
    return buf;
}

/* ---- 16-bit conversions (round to nearest even) ------------------------------------------ */

static uint32_t bits_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t kv_f32_to_bf16(float x)
{
    uint32_t u = bits_of(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kv_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t kv_f32_to_f16(float x)
{
    uint32_t u = bits_of(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                                    /* below 2^-14: subnormal */
        /* a / 2^-24 rounded to nearest even, via a float add that does the rounding */
        float f = float_of(a) + 0.5f; /* 0.5 = 2^-1: ulp there is 2^-24 */
        return (uint16_t)(sign | (uint16_t)(bits_of(f) - bits_of(0.5f)));
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round */
    return (uint16_t)(sign | (uint16_t)(a >> 13));
}

float kv_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return float_of(sign) + (sign ? -1.0f : 1.0f) * ldexpf((float)m, -24);
    if (e == 31) return float_of(sign | 0x7f800000u | (m << 13));
    return float_of(sign | ((e + 112u) << 23) | (m << 13));
}
