/* auth.h — API keys: SHA-256 hashes ("sha256:<64 hex>") in the tenants file, constant-time
 * lookup of a presented key, and the request metadata that carries it.
 *
 * Keys are long random strings (kvsieve hash-key --generate makes one), so one SHA-256 is the
 * right hash: there is nothing to brute-force that a slow password hash would protect. Only
 * hashes are stored; a presented key is hashed and compared with every tenant's hashes with
 * CRYPTO_memcmp, without stopping at the first match. */
#ifndef KVS_SRV_AUTH_H
#define KVS_SRV_AUTH_H

#include <stddef.h>

#define SRV_KEY_HASH_LEN 32
#define SRV_KEY_HASH_STR 72 /* "sha256:" + 64 hex + NUL, rounded up */

struct srv_tenants;

/* SHA-256 of len bytes of key. Returns 0 or KVS_EINVAL (empty key). */
int srv_key_hash(const char *key, size_t len, unsigned char out[SRV_KEY_HASH_LEN]);
/* "sha256:<hex>" into out[SRV_KEY_HASH_STR]. */
void srv_key_hash_format(const unsigned char h[SRV_KEY_HASH_LEN], char *out);
/* Parse "sha256:<64 hex digits>" (hex in either case). Returns 0 or KVS_EINVAL with a message. */
int srv_key_hash_parse(const char *s, unsigned char out[SRV_KEY_HASH_LEN]);
/* A new random key ("kvs-" + 43 base64url characters = 256 bits) into out[64]. */
int srv_key_generate(char *out, size_t cap);

/* The key of an `authorization: Bearer <key>` value: exactly one space after the scheme (which
 * is case-insensitive), the key printable ASCII without spaces. Returns a pointer into value
 * (not NUL-terminated) and its length, or NULL if the value is not exactly that. */
const char *srv_key_from_authorization(const char *value, size_t len, size_t *key_len);
/* 1 if len bytes of key are a possible key (printable ASCII, no spaces), e.g. x-api-key's. */
int srv_key_is_clean(const char *key, size_t len);

/* Index of the tenant whose hashes include the key's hash, or -1. Constant time in the key
 * and in which hash matches. */
int srv_auth_find(const struct srv_tenants *t, const char *key, size_t len);

#endif
