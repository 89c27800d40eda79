/* http.h — the OpenAI-compatible HTTP/1.1 front end (libmicrohttpd, one thread per
 * connection), beside the gRPC server on the same engine loop, tenants and metrics
 * (docs/API.md, "OpenAI-compatible HTTP API").
 *
 *   POST /v1/completions, POST /v1/chat/completions   (stream: server-sent events)
 *   GET  /v1/models, GET /v1/models/{id}
 *   POST /tokenize, POST /detokenize
 *   GET  /health        200 while serving, 503 while draining (no key needed)
 *   GET  /metrics       Prometheus text, only with srv_http_opts.serve_metrics (no key needed)
 *
 * Connection threads block while their request runs (streamed or not) and watch the socket:
 * a client that closes its connection gets its requests aborted at once (kvs_loop_abort). */
#ifndef KVS_SRV_HTTP_H
#define KVS_SRV_HTTP_H

#include <stddef.h>

#include "engine.h"
#include "metrics.h"
#include "scheduler/loop.h"
#include "tenants.h"

typedef struct srv_http_opts {
    const char *listen;          /* "host:port"; port 0 = any free port */
    kvs_engine *engine;          /* read-only: tokenizer, model config, pool geometry */
    kvs_loop *loop;
    const srv_tenants *tenants;  /* NULL: open, tenant "default", no key */
    srv_metrics *metrics;        /* may be NULL */
    const char *model_name;      /* the id clients send as "model" (--served-model-name) */
    const char *default_policy;  /* for the policy label of metrics */
    const char *qfilters_path;   /* added to requests for policy qfilters; NULL = none */
    const char *kv_dtype;        /* the engine's KV dtype (engine_kv_dtype), for requests */
    int serve_metrics;           /* also GET /metrics */
    size_t max_body;             /* request body limit in bytes (0: 1 MiB); larger: 413 */
    int max_connections;         /* 0: 256 */
    int verbose;
} srv_http_opts;

typedef struct srv_http srv_http;

/* Bind and start. Errors ("address in use" names the address) return a negative status. */
int srv_http_start(const srv_http_opts *o, srv_http **out, int *bound_port);
/* Draining: /health answers 503, new generation requests 503; running ones go on. */
void srv_http_begin_shutdown(srv_http *h);
/* Close the listener and every connection (waits for their threads), free. */
void srv_http_stop(srv_http *h);

#endif
