/* server.h — the gRPC server (gRPC C core + protobuf-c): kvsieve.v1.Kvsieve, grpc.health.v1.Health
 * and server reflection v1/v1alpha on one port (ARCHITECTURE.md §6, docs/API.md).
 *
 * Threads: srv_create starts n_threads completion-queue threads; each owns one cq and handles
 * every call that arrives on it. The engine thread (kvs_loop_run, started by the caller) sends
 * results back through the request callback, which queues them on the call and starts the
 * write itself (grpc_call_start_batch is thread-safe); completions come back on the call's cq.
 * Server threads never touch the model or KV memory: they only read the immutable tokenizer and
 * model config, and talk to the loop through scheduler/loop.h.
 *
 * Shutdown (what `kvsieve serve` does on SIGTERM):
 *   srv_begin_shutdown(s)       health NOT_SERVING, new calls refused (UNAVAILABLE), stop
 *                               listening; running Generate calls go on
 *   kvs_loop_stop(l, grace); join the engine thread   every request gets its FINISH event
 *   srv_finish(s, flush_s)      wait (at most flush_s) until every Kvsieve call has sent its
 *                               final status, cancel what is left (Watch/reflection streams),
 *                               stop the cq threads
 *   srv_destroy(s) */
#ifndef KVS_SRV_SERVER_H
#define KVS_SRV_SERVER_H

#include "engine.h"
#include "metrics.h"
#include "scheduler/loop.h"
#include "tenants.h"

typedef struct srv_opts {
    const char *listen;          /* "host:port"; port 0 = any free port (see srv_port) */
    int n_threads;               /* completion-queue threads (default 1) */
    kvs_engine *engine;          /* read-only here: tokenizer, model config, page size */
    kvs_loop *loop;
    const srv_tenants *tenants;  /* NULL: open server, one tenant "default", no key needed */
    srv_metrics *metrics;        /* may be NULL */
    const char *default_policy;  /* what --policy set (for GetModelInfo and metric labels) */
    const char *default_policy_args;
    /* Filters file added to requests for policy qfilters: requests may not name server files
     * themselves (filters= in policy_args is refused). NULL = none on this server. */
    const char *qfilters_path;
    const char *kv_dtype;        /* the engine's KV dtype (engine_kv_dtype), for requests */
    const char *model_name;      /* GetModelInfo's name (--served-model-name); NULL = GGUF name */
    int verbose;                 /* log one line per finished request to stderr */
} srv_opts;

typedef struct srv srv;

/* grpc_init, bind, register methods, start the cq threads. Errors (address in use, bad
 * address) return a negative status with a message. */
int srv_create(const srv_opts *o, srv **out);
/* The port actually bound. */
int srv_port(const srv *s);
/* Tenant label / name of tenant index i, in srv_opts.tenants order ("default" when open). */
int srv_n_tenants(const srv *s);
const char *srv_tenant_name(const srv *s, int i);

void srv_begin_shutdown(srv *s);
void srv_finish(srv *s, double flush_s);
void srv_destroy(srv *s);

#endif
