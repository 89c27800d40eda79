/* auth.c — API key hashing and constant-time lookup (see auth.h). */
#include "auth.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/common.h"
#include "tenants.h"

int srv_key_hash(const char *key, size_t len, unsigned char out[SRV_KEY_HASH_LEN])
{
    unsigned int n = 0;
    if (!key || len == 0) return kvs_error(KVS_EINVAL, "empty API key");
    if (!EVP_Digest(key, len, out, &n, EVP_sha256(), NULL) || n != SRV_KEY_HASH_LEN)
        return kvs_error(KVS_EINVAL, "SHA-256 failed");
    return 0;
}

void srv_key_hash_format(const unsigned char h[SRV_KEY_HASH_LEN], char *out)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "sha256:", 7);
    for (int i = 0; i < SRV_KEY_HASH_LEN; i++) {
        out[7 + 2 * i] = hex[h[i] >> 4];
        out[8 + 2 * i] = hex[h[i] & 15];
    }
    out[7 + 2 * SRV_KEY_HASH_LEN] = 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int srv_key_hash_parse(const char *s, unsigned char out[SRV_KEY_HASH_LEN])
{
    if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 2 * SRV_KEY_HASH_LEN)
        return kvs_error(KVS_EINVAL,
                         "expected \"sha256:\" and 64 hex digits (make one with `kvsieve "
                         "hash-key`), got '%.80s'", s);
    for (int i = 0; i < SRV_KEY_HASH_LEN; i++) {
        int hi = hexval((unsigned char)s[7 + 2 * i]), lo = hexval((unsigned char)s[8 + 2 * i]);
        if (hi < 0 || lo < 0)
            return kvs_error(KVS_EINVAL, "'%.80s' has a character that is not a hex digit", s);
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

int srv_key_generate(char *out, size_t cap)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char r[33];
    if (cap < 4 + 44 + 1) return kvs_error(KVS_EINVAL, "key buffer too small");
    if (RAND_bytes(r, sizeof r) != 1) return kvs_error(KVS_EIO, "no random bytes (RAND_bytes)");
    size_t n = 0;
    memcpy(out, "kvs-", 4);
    n = 4;
    /* 33 bytes -> 44 characters, 6 bits each; keep 43 (258 bits, all random). */
    for (int i = 0; i < 33; i += 3) {
        unsigned v = (unsigned)r[i] << 16 | (unsigned)r[i + 1] << 8 | r[i + 2];
        for (int k = 3; k >= 0; k--) {
            if (n < 4 + 43) out[n++] = b64[(v >> (6 * k)) & 63];
        }
    }
    out[n] = 0;
    OPENSSL_cleanse(r, sizeof r);
    return 0;
}

const char *srv_key_from_authorization(const char *value, size_t len, size_t *key_len)
{
    if (len <= 7 || strncasecmp(value, "Bearer ", 7)) return NULL;
    value += 7;
    len -= 7;
    if (!srv_key_is_clean(value, len)) return NULL;
    *key_len = len;
    return value;
}

int srv_key_is_clean(const char *key, size_t len)
{
    if (!len) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= 0x20 || c >= 0x7f) return 0; /* no spaces, controls or non-ASCII */
    }
    return 1;
}

int srv_auth_find(const srv_tenants *t, const char *key, size_t len)
{
    unsigned char h[SRV_KEY_HASH_LEN];
    if (!t || srv_key_hash(key, len, h)) return -1;
    int found = -1;
    /* Compare with every hash: no early exit, no data-dependent branch on the bytes. */
    for (int i = 0; i < t->n; i++)
        for (int k = 0; k < t->v[i].n_keys; k++) {
            int eq = CRYPTO_memcmp(h, t->v[i].key_hash[k], SRV_KEY_HASH_LEN) == 0;
            found = eq ? i : found;
        }
    OPENSSL_cleanse(h, sizeof h);
    return found;
}
