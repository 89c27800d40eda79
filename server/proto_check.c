/* proto_check.c — string checks on a request's wire bytes (see proto_check.h). */
#include "proto_check.h"

#include <stdio.h>
#include <string.h>

int srv_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len;
        unsigned min, v;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) len = 2, min = 0x80, v = c & 0x1f;
        else if ((c & 0xf0) == 0xe0) len = 3, min = 0x800, v = c & 0x0f;
        else if ((c & 0xf8) == 0xf0) len = 4, min = 0x10000, v = c & 0x07;
        else return 0;
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            v = v << 6 | (s[i + k] & 0x3f);
        }
        if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

static int varint(const uint8_t *p, size_t n, size_t *at, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *at < n; shift += 7) {
        uint8_t b = p[(*at)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int check(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, char *why,
                 size_t cap, int depth)
{
    if (depth > 32) return 0;
    size_t at = 0;
    while (at < n) {
        uint64_t key, len;
        if (varint(p, n, &at, &key)) return 0;
        unsigned wt = (unsigned)(key & 7);
        uint64_t num = key >> 3;
        switch (wt) {
        case 0:
            if (varint(p, n, &at, &len)) return 0;
            continue;
        case 1: at += 8; continue;
        case 5: at += 4; continue;
        case 2: break;
        default: return 0; /* groups: protobuf-c decides */
        }
        if (varint(p, n, &at, &len) || len > n - at) return 0;
        const ProtobufCFieldDescriptor *f =
            num <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(d, (unsigned)num) : NULL;
        if (f && f->type == PROTOBUF_C_TYPE_STRING) {
            const char *s = (const char *)p + at;
            if (memchr(s, 0, (size_t)len)) {
                snprintf(why, cap, "field '%s' holds a NUL byte; strings may not contain NUL",
                         f->name);
                return -1;
            }
            if (!srv_utf8_valid(s, (size_t)len)) {
                snprintf(why, cap, "field '%s' is not valid UTF-8 (proto3 strings must be)",
                         f->name);
                return -1;
            }
        } else if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && f->descriptor) {
            if (check(f->descriptor, p + at, (size_t)len, why, cap, depth + 1)) return -1;
        }
        at += (size_t)len;
    }
    return 0;
}

int srv_proto_check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                            char *why, size_t cap)
{
    return check(d, p, n, why, cap, 0);
}
