/* request_policy.h — a request's own KV policy (gRPC policy/policy_args, the HTTP API's
 * "kvsieve" object), checked the same way for both front ends. */
#ifndef KVS_SRV_REQUEST_POLICY_H
#define KVS_SRV_REQUEST_POLICY_H

#include <stddef.h>

#include "scheduler/loop.h"

/* Fill p->policy / p->policy_args from a request. name "" = the server's default policy with
 * the server's options (args must then be empty). Refused: names and options too long, a
 * request's filters= (server files are the operator's), qfilters on a server without a
 * filters file (that file is added to the options otherwise), and a policy other than full
 * with neither ratio nor budget (it would evict nothing). Returns 0, or KVS_EINVAL with the message in err. */
int srv_request_policy(const char *name, const char *args, const char *qfilters_path,
                       sched_params *p, char *err, size_t errsz);

/* A request's kv_dtype ("" = the server's): a valid KV dtype spec (NAME or KEYS/VALUES) whose
 * canonical name is the server's. KVS_EINVAL with the message in err otherwise (the
 * request's bytes are not echoed when they are not a known name). */
int srv_request_kv_dtype(const char *spec, const char *server_dtype, char *err, size_t errsz);

#endif
