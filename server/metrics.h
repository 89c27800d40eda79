/* metrics.h — Prometheus text metrics (vLLM-compatible names plus kvsieve's own) and the HTTP
 * endpoint that serves them (libmicrohttpd, GET /metrics). The list is in docs/OPERATIONS.md.
 *
 * Gauges and token counters are read from the loop's snapshots (kvs_loop_get_stats,
 * kvs_loop_get_tenant_stats) at scrape time; latency histograms and finish/eviction counters
 * are fed by the server from the request events (TTFT at the first token, inter-token latency
 * between tokens, e2e and queue time at finish). Every function is thread-safe. */
#ifndef KVS_SRV_METRICS_H
#define KVS_SRV_METRICS_H

#include <stddef.h>

#include "scheduler/loop.h"

typedef struct srv_metrics srv_metrics;

/* tenants[n_tenants]: the tenant label values, in the server's tenant order (the index passed
 * to the observe functions). loop may be NULL (then only server-side series are rendered). */
int srv_metrics_create(kvs_loop *loop, const char *model_name, const char *const *tenants,
                       int n_tenants, srv_metrics **out);
void srv_metrics_destroy(srv_metrics *m);

void srv_metrics_ttft(srv_metrics *m, int tenant, double seconds);
void srv_metrics_itl(srv_metrics *m, int tenant, double seconds);
/* A request finished: e2e latency (server-side), and the FINISH event's numbers. */
void srv_metrics_finish(srv_metrics *m, int tenant, const char *policy, const sched_event *ev,
                        double e2e_s);
/* A call refused before it reached the engine; tenant -1 = not authenticated. code is the
 * gRPC status code (0..16). */
void srv_metrics_rejected(srv_metrics *m, int tenant, int code);

/* The exposition text (malloc'd, NUL-terminated; caller frees), or NULL. */
char *srv_metrics_render(srv_metrics *m, size_t *len);

/* Serve GET /metrics on addr ("host:port"; port 0 = any free port, see *bound_port). */
int srv_metrics_listen(srv_metrics *m, const char *addr, int *bound_port);
void srv_metrics_stop(srv_metrics *m);

#endif
