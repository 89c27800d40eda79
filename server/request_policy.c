/* request_policy.c — see request_policy.h. */
#include "request_policy.h"

#include "memory/kv_format.h"

#include <stdio.h>
#include <string.h>

#include "core/common.h"
#include "memory/policy.h"

int srv_request_policy(const char *name, const char *args, const char *qfilters_path,
                       sched_params *p, char *err, size_t errsz)
{
    size_t nl = strlen(name), al = strlen(args);
    if (nl >= sizeof p->policy) {
        snprintf(err, errsz, "policy name longer than %zu bytes", sizeof p->policy - 1);
        return KVS_EINVAL;
    }
    if (al >= sizeof p->policy_args) {
        snprintf(err, errsz, "policy_args longer than %zu bytes", sizeof p->policy_args - 1);
        return KVS_EINVAL;
    }
    if (!nl && al) {
        snprintf(err, errsz, "policy options need a policy (the server's default policy keeps "
                 "the server's options)");
        return KVS_EINVAL;
    }
    memcpy(p->policy, name, nl + 1);
    memcpy(p->policy_args, args, al + 1);
    if (!nl) return 0;
    const char *cur = args;
    char key[64], val[SCHED_ARGS_MAX];
    int r;
    while ((r = pol_args_next(&cur, key, sizeof key, val, sizeof val)) > 0)
        if (!strcmp(key, "filters")) {
            snprintf(err, errsz, "policy_args: filters= cannot be set by a request; the server "
                     "uses its own filters file");
            return KVS_EINVAL;
        }
    if (!pol_args_sized(name, args)) {
        snprintf(err, errsz, "policy '%s' needs ratio (fraction of tokens evicted, e.g. "
                 "ratio=0.5) or budget (tokens kept per head, e.g. budget=256): without either "
                 "it evicts nothing", name);
        return KVS_EINVAL;
    }
    if (!strcmp(name, "qfilters")) {
        if (!qfilters_path || !*qfilters_path) {
            snprintf(err, errsz, "policy qfilters needs a filters file on the server "
                     "(<model>.kvsqf from `kvsieve calibrate`, or the server's --policy-args); "
                     "this server has none");
            return KVS_EINVAL;
        }
        if (snprintf(p->policy_args + al, sizeof p->policy_args - al, "%sfilters=%s",
                     al ? "," : "", qfilters_path) >= (int)(sizeof p->policy_args - al)) {
            snprintf(err, errsz, "policy_args too long");
            return KVS_EINVAL;
        }
    }
    return 0;
}

int srv_request_kv_dtype(const char *spec, const char *server_dtype, char *err, size_t errsz)
{
    if (!spec || !*spec) return 0;
    const kv_format *k, *v;
    if (kv_format_spec_parse(spec, &k, &v)) {
        snprintf(err, errsz, "kv_dtype: not a KV dtype (known: %s, or KEYS/VALUES such as "
                 "int8/int4)", kv_format_names());
        return KVS_EINVAL;
    }
    char name[64];
    kv_format_spec_name(k, v, name, sizeof name);
    if (server_dtype && strcmp(name, server_dtype)) {
        snprintf(err, errsz, "kv_dtype %s: this server stores KV as %s (one format per server: "
                 "start one with --kv-dtype %s to serve %s)", name, server_dtype, name, name);
        return KVS_EINVAL;
    }
    return 0;
}
