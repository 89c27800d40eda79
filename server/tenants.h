/* tenants.h — the tenants file (YAML, parsed with libyaml's document API). Format and example
 * in docs/OPERATIONS.md:
 *
 *   tenants:
 *     - name: alice
 *       key_hash: "sha256:…"          # or key_hashes: [ … ] (key rotation), at most 8
 *       weight: 2                      # fair-share weight, > 0 (default 1)
 *       priority: 1                    # default priority of its requests (default 0)
 *       limits: {kv_pages: 4096, max_running: 8, max_queued: 32}   # 0 / absent = unlimited
 *       allowed_policies: [full, qfilters]                         # absent or [] = any
 *
 * Every error names the file, the line and column, and the field (kvs_last_error()). */
#ifndef KVS_SRV_TENANTS_H
#define KVS_SRV_TENANTS_H

#include <stddef.h>

#include "auth.h"
#include "scheduler/loop.h"

#define SRV_MAX_KEYS 8
#define SRV_MAX_TENANTS 1024

typedef struct srv_tenant {
    sched_tenant st;       /* what the scheduler sees */
    unsigned char key_hash[SRV_MAX_KEYS][SRV_KEY_HASH_LEN];
    int n_keys;
} srv_tenant;

typedef struct srv_tenants {
    srv_tenant *v;
    int n;
} srv_tenants;

/* Read and check a tenants file. On error returns KVS_EIO / KVS_EFORMAT with a message
 * "FILE:LINE:COL: FIELD: what is wrong" and leaves *out empty. */
int srv_tenants_load(const char *path, srv_tenants *out);
/* The same from a buffer; `name` is used in messages in place of the file name. */
int srv_tenants_parse(const char *text, size_t len, const char *name, srv_tenants *out);
void srv_tenants_free(srv_tenants *t);

#endif
