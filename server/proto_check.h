/* proto_check.h — what protobuf-c does not check in a request: proto3 `string` fields must be
 * valid UTF-8, and a NUL byte inside one would silently cut the C string protobuf-c returns
 * ("hi\0..." running as "hi", "knorm\0junk" as "knorm"). */
#ifndef KVS_SRV_PROTO_CHECK_H
#define KVS_SRV_PROTO_CHECK_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* Walk the wire bytes of a message of type d (nested messages too). Returns 0 when every
 * string field is valid UTF-8 without NUL bytes, else -1 with a message in why naming the
 * field (never its bytes). Bytes that do not parse return 0: protobuf-c reports those. */
int srv_proto_check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                            char *why, size_t cap);

/* 1 if n bytes at s are valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF). */
int srv_utf8_valid(const char *s, size_t n);

#endif
