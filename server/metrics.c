/* metrics.c — Prometheus text exposition and the /metrics HTTP endpoint (see metrics.h). */
#include "metrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/common.h"
#include "listen.h"

/* Bucket bounds (seconds), as vLLM uses for the same metrics. */
static const double ttft_b[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0,
                                640.0, 2560.0};
static const double itl_b[] = {0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,  0.4, 0.5,
                               0.75, 1.0,   2.5,  5.0,   7.5,  10.0, 20.0, 40.0, 80.0};
static const double e2e_b[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,  15.0, 20.0,
                               30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
#define NB(a) ((int)(sizeof a / sizeof a[0]))
#define MAX_BUCKETS 24

typedef struct hist {
    uint64_t counts[MAX_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    double sum;
    uint64_t count;
} hist;

enum { H_TTFT, H_ITL, H_E2E, H_QUEUE, H_COUNT };
static const struct {
    const char *name, *help;
    const double *b;
    int nb;
} hdef[H_COUNT] = {
    {"vllm:time_to_first_token_seconds", "Time to first token (submit to first token event).",
     ttft_b, NB(ttft_b)},
    {"vllm:inter_token_latency_seconds", "Time between consecutive tokens of a request.", itl_b,
     NB(itl_b)},
    {"vllm:e2e_request_latency_seconds", "Submit to finish, per request.", e2e_b, NB(e2e_b)},
    {"vllm:request_queue_time_seconds", "Time a request waited before it was first scheduled.",
     ttft_b, NB(ttft_b)},
};

enum { F_STOP, F_LENGTH, F_ABORT, F_DEADLINE, F_SHUTDOWN, F_ERROR, F_COUNT };
static const char *const fname[F_COUNT] = {"stop", "length", "abort", "deadline", "shutdown",
                                           "error"};

#define MAX_EVICT_SERIES 256
typedef struct evict_series {
    int tenant;
    char policy[SCHED_NAME_MAX];
    uint64_t tokens;
} evict_series;

typedef struct tenant_m {
    char name[SCHED_NAME_MAX];
    hist h[H_COUNT];
    uint64_t finished[F_COUNT];
    uint64_t rejected[17];
} tenant_m;

struct srv_metrics {
    pthread_mutex_t mu;
    kvs_loop *loop;
    char model[256]; /* escaped label value */
    tenant_m *t;
    int n_t;
    uint64_t unauth_rejected[17];
    evict_series ev[MAX_EVICT_SERIES];
    int n_ev;
    struct MHD_Daemon *httpd;
};

static const char *const code_name[17] = {
    "OK",        "CANCELLED",         "UNKNOWN",        "INVALID_ARGUMENT",  "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",
    "UNAVAILABLE", "DATA_LOSS",       "UNAUTHENTICATED"};

static void escape_label(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    for (; *s && n + 3 < cap; s++) {
        if (*s == '"' || *s == '\\') out[n++] = '\\', out[n++] = *s;
        else if (*s == '\n') out[n++] = '\\', out[n++] = 'n';
        else out[n++] = *s;
    }
    out[n] = 0;
}

int srv_metrics_create(kvs_loop *loop, const char *model_name, const char *const *tenants,
                       int n_tenants, srv_metrics **out)
{
    srv_metrics *m = calloc(1, sizeof *m);
    if (!m) return kvs_error(KVS_ENOMEM, "out of memory");
    m->t = calloc((size_t)(n_tenants > 0 ? n_tenants : 1), sizeof *m->t);
    if (!m->t) {
        free(m);
        return kvs_error(KVS_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&m->mu, NULL);
    m->loop = loop;
    escape_label(model_name ? model_name : "", m->model, sizeof m->model);
    m->n_t = n_tenants;
    for (int i = 0; i < n_tenants; i++) escape_label(tenants[i], m->t[i].name, sizeof m->t[i].name);
    *out = m;
    return 0;
}

void srv_metrics_destroy(srv_metrics *m)
{
    if (!m) return;
    srv_metrics_stop(m);
    pthread_mutex_destroy(&m->mu);
    free(m->t);
    free(m);
}

static void observe(srv_metrics *m, int tenant, int which, double v)
{
    if (!m || tenant < 0 || tenant >= m->n_t) return;
    if (!(v >= 0)) v = 0;
    int b = 0;
    while (b < hdef[which].nb && v > hdef[which].b[b]) b++;
    pthread_mutex_lock(&m->mu);
    hist *h = &m->t[tenant].h[which];
    h->counts[b]++;
    h->sum += v;
    h->count++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_ttft(srv_metrics *m, int tenant, double s) { observe(m, tenant, H_TTFT, s); }
void srv_metrics_itl(srv_metrics *m, int tenant, double s) { observe(m, tenant, H_ITL, s); }

void srv_metrics_finish(srv_metrics *m, int tenant, const char *policy, const sched_event *ev,
                        double e2e_s)
{
    if (!m || tenant < 0 || tenant >= m->n_t) return;
    observe(m, tenant, H_E2E, e2e_s);
    observe(m, tenant, H_QUEUE, ev->queue_time_s);
    int f;
    switch (ev->finish_reason) {
    case SCHED_FINISH_STOP: f = F_STOP; break;
    case SCHED_FINISH_LENGTH: f = F_LENGTH; break;
    case SCHED_FINISH_ABORTED: f = F_ABORT; break;
    case SCHED_FINISH_DEADLINE: f = F_DEADLINE; break;
    case SCHED_FINISH_SHUTDOWN: f = F_SHUTDOWN; break;
    default: f = F_ERROR; break;
    }
    char pol[SCHED_NAME_MAX];
    escape_label(policy && *policy ? policy : "default", pol, sizeof pol);
    pthread_mutex_lock(&m->mu);
    m->t[tenant].finished[f]++;
    /* One series per (tenant, policy) seen; policies are registered names, so few. */
    int i;
    for (i = 0; i < m->n_ev; i++)
        if (m->ev[i].tenant == tenant && !strcmp(m->ev[i].policy, pol)) break;
    if (i == m->n_ev && m->n_ev < MAX_EVICT_SERIES) {
        m->ev[i].tenant = tenant;
        snprintf(m->ev[i].policy, sizeof m->ev[i].policy, "%s", pol);
        m->n_ev++;
    }
    if (i < m->n_ev && ev->evicted_tokens > 0) m->ev[i].tokens += (uint64_t)ev->evicted_tokens;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_rejected(srv_metrics *m, int tenant, int code)
{
    if (!m || code < 0 || code > 16) return;
    pthread_mutex_lock(&m->mu);
    if (tenant >= 0 && tenant < m->n_t) m->t[tenant].rejected[code]++;
    else m->unauth_rejected[code]++;
    pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) KVS_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 16384;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void head(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *srv_metrics_render(srv_metrics *m, size_t *len)
{
    sbuf b = {0};
    kvs_loop_stats ls;
    memset(&ls, 0, sizeof ls);
    kvs_tenant_stats *ts = NULL;
    int nts = 0;
    if (m->loop) {
        kvs_loop_get_stats(m->loop, &ls);
        int cap = m->n_t + 8;
        ts = calloc((size_t)cap, sizeof *ts);
        if (ts) {
            nts = kvs_loop_get_tenant_stats(m->loop, ts, cap);
            if (nts > cap) nts = cap;
        }
    }
    const char *mn = m->model;

    if (m->loop) {
        head(&b, "vllm:num_requests_running", "gauge", "Requests in the running batch.");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "vllm:num_requests_running{model_name=\"%s\",tenant=\"%s\"} %d\n", mn,
                      ts[i].name, ts[i].running);
        head(&b, "vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "vllm:num_requests_waiting{model_name=\"%s\",tenant=\"%s\"} %d\n", mn,
                      ts[i].name, ts[i].waiting);
        head(&b, "vllm:kv_cache_usage_perc", "gauge", "KV page pool usage (1 = 100%).");
        sb_printf(&b, "vllm:kv_cache_usage_perc{model_name=\"%s\"} %.6f\n", mn, ls.kv_usage);
        head(&b, "vllm:num_preemptions_total", "counter", "Preemptions (recompute).");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "vllm:num_preemptions_total{model_name=\"%s\",tenant=\"%s\"} %lld\n",
                      mn, ts[i].name, (long long)ts[i].preemptions_total);
        head(&b, "vllm:prompt_tokens_total", "counter", "Prompt tokens processed.");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "vllm:prompt_tokens_total{model_name=\"%s\",tenant=\"%s\"} %lld\n", mn,
                      ts[i].name, (long long)ts[i].prompt_tokens_total);
        head(&b, "vllm:generation_tokens_total", "counter", "Tokens generated.");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "vllm:generation_tokens_total{model_name=\"%s\",tenant=\"%s\"} %lld\n",
                      mn, ts[i].name, (long long)ts[i].generated_tokens_total);
    }

    pthread_mutex_lock(&m->mu);
    head(&b, "vllm:request_success_total", "counter",
         "Finished requests by finish reason (stop, length, abort, deadline, shutdown, error).");
    for (int i = 0; i < m->n_t; i++)
        for (int f = 0; f < F_COUNT; f++)
            sb_printf(&b,
                      "vllm:request_success_total{model_name=\"%s\",tenant=\"%s\","
                      "finished_reason=\"%s\"} %llu\n",
                      mn, m->t[i].name, fname[f], (unsigned long long)m->t[i].finished[f]);
    for (int h = 0; h < H_COUNT; h++) {
        head(&b, hdef[h].name, "histogram", hdef[h].help);
        for (int i = 0; i < m->n_t; i++) {
            const hist *hh = &m->t[i].h[h];
            uint64_t cum = 0;
            for (int k = 0; k <= hdef[h].nb; k++) {
                cum += hh->counts[k];
                if (k < hdef[h].nb)
                    sb_printf(&b, "%s_bucket{model_name=\"%s\",tenant=\"%s\",le=\"%g\"} %llu\n",
                              hdef[h].name, mn, m->t[i].name, hdef[h].b[k],
                              (unsigned long long)cum);
                else
                    sb_printf(&b, "%s_bucket{model_name=\"%s\",tenant=\"%s\",le=\"+Inf\"} %llu\n",
                              hdef[h].name, mn, m->t[i].name, (unsigned long long)cum);
            }
            sb_printf(&b, "%s_sum{model_name=\"%s\",tenant=\"%s\"} %.6f\n", hdef[h].name, mn,
                      m->t[i].name, hh->sum);
            sb_printf(&b, "%s_count{model_name=\"%s\",tenant=\"%s\"} %llu\n", hdef[h].name, mn,
                      m->t[i].name, (unsigned long long)hh->count);
        }
    }
    head(&b, "kvsieve_evicted_tokens_total", "counter",
         "KV entries (token x layer x KV head) evicted, by policy; counted when a request "
         "finishes.");
    for (int i = 0; i < m->n_ev; i++)
        sb_printf(&b, "kvsieve_evicted_tokens_total{policy=\"%s\",tenant=\"%s\"} %llu\n",
                  m->ev[i].policy, m->t[m->ev[i].tenant].name,
                  (unsigned long long)m->ev[i].tokens);
    head(&b, "kvsieve_requests_rejected_total", "counter",
         "Calls refused before reaching the engine, by gRPC status code.");
    for (int c = 1; c <= 16; c++) {
        for (int i = 0; i < m->n_t; i++)
            if (m->t[i].rejected[c])
                sb_printf(&b, "kvsieve_requests_rejected_total{tenant=\"%s\",code=\"%s\"} %llu\n",
                          m->t[i].name, code_name[c], (unsigned long long)m->t[i].rejected[c]);
        if (m->unauth_rejected[c])
            sb_printf(&b, "kvsieve_requests_rejected_total{tenant=\"\",code=\"%s\"} %llu\n",
                      code_name[c], (unsigned long long)m->unauth_rejected[c]);
    }
    pthread_mutex_unlock(&m->mu);

    if (m->loop) {
        head(&b, "kvsieve_kv_pages_used", "gauge", "KV pages in use.");
        sb_printf(&b, "kvsieve_kv_pages_used %lld\n", (long long)ls.kv_pages_used);
        head(&b, "kvsieve_kv_pages_free", "gauge", "KV pages free.");
        sb_printf(&b, "kvsieve_kv_pages_free %lld\n", (long long)ls.kv_pages_free);
        head(&b, "kvsieve_kv_pages_total", "gauge", "KV pages in the pool.");
        sb_printf(&b, "kvsieve_kv_pages_total %lld\n", (long long)ls.kv_pages_total);
        head(&b, "kvsieve_kv_dtype_info", "gauge",
             "The KV element format of the pool (keys/values when they differ).");
        sb_printf(&b, "kvsieve_kv_dtype_info{dtype=\"%s\"} 1\n", ls.kv_dtype);
        head(&b, "kvsieve_kv_bytes_per_token", "gauge",
             "KV bytes of one token of a sequence (all layers and KV heads).");
        sb_printf(&b, "kvsieve_kv_bytes_per_token %lld\n", (long long)ls.kv_bytes_per_token);
        head(&b, "kvsieve_kv_bytes_total", "gauge", "Bytes of the KV pool.");
        sb_printf(&b, "kvsieve_kv_bytes_total %lld\n", (long long)ls.kv_bytes_total);
        head(&b, "kvsieve_kv_live_tokens", "gauge",
             "KV entries alive (token x layer x KV head).");
        sb_printf(&b, "kvsieve_kv_live_tokens %lld\n", (long long)ls.live_tokens);
        head(&b, "kvsieve_kv_fragmentation", "gauge",
             "1 - live slots / allocated slots over all streams.");
        sb_printf(&b, "kvsieve_kv_fragmentation %.6f\n", ls.fragmentation);
        head(&b, "kvsieve_compaction_moves_total", "counter", "KV slots moved by compaction.");
        sb_printf(&b, "kvsieve_compaction_moves_total %lld\n", (long long)ls.compaction_moves_total);
        head(&b, "kvsieve_engine_evicted_tokens_total", "counter",
             "KV entries evicted by the engine (all policies, updated every step).");
        sb_printf(&b, "kvsieve_engine_evicted_tokens_total %lld\n",
                  (long long)ls.evicted_tokens_total);
        head(&b, "kvsieve_engine_steps_total", "counter", "Engine steps.");
        sb_printf(&b, "kvsieve_engine_steps_total %lld\n", (long long)ls.steps_total);
        head(&b, "kvsieve_tenant_kv_pages", "gauge", "KV pages held by a tenant's requests.");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "kvsieve_tenant_kv_pages{tenant=\"%s\"} %lld\n", ts[i].name,
                      (long long)ts[i].kv_pages);
        head(&b, "kvsieve_tenant_evicted_tokens_total", "counter",
             "KV entries evicted from a tenant's requests (updated every step).");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "kvsieve_tenant_evicted_tokens_total{tenant=\"%s\"} %lld\n",
                      ts[i].name, (long long)ts[i].evicted_tokens_total);
        head(&b, "kvsieve_tenant_virtual_counter", "gauge",
             "Fair-share (VTC) service counter of a tenant, weighted tokens.");
        for (int i = 0; i < nts; i++)
            sb_printf(&b, "kvsieve_tenant_virtual_counter{tenant=\"%s\"} %.3f\n", ts[i].name,
                      ts[i].virtual_counter);
    }
    free(ts);
    if (b.oom || !b.p) {
        free(b.p);
        return NULL;
    }
    if (len) *len = b.n;
    return b.p;
}

/* ---- HTTP ------------------------------------------------------------------------------- */

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    srv_metrics *m = cls;
    (void)version;
    (void)upload;
    (void)con_cls;
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    struct MHD_Response *r;
    unsigned status;
    const char *ctype = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        static const char msg[] = "method not allowed\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (!strcmp(url, "/metrics")) {
        size_t n = 0;
        char *text = srv_metrics_render(m, &n);
        if (!text) {
            static const char msg[] = "out of memory\n";
            r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg,
                                                MHD_RESPMEM_PERSISTENT);
            status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        } else {
            r = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
            if (!r) free(text);
            status = MHD_HTTP_OK;
            ctype = "text/plain; version=0.0.4; charset=utf-8";
        }
    } else {
        static const char msg[] = "kvsieve: metrics are at /metrics\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    }
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static void mhd_quiet(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    (void)fmt;
    (void)ap;
}

int srv_metrics_listen(srv_metrics *m, const char *addr, int *bound_port)
{
    int fd = -1, port = 0;
    int rc = srv_listen_socket("metrics", addr, &fd, &port);
    if (rc) return rc;
    m->httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL,
                                NULL, &on_http, m, MHD_OPTION_LISTEN_SOCKET, fd,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                MHD_OPTION_EXTERNAL_LOGGER, mhd_quiet, NULL, MHD_OPTION_END);
    if (!m->httpd) {
        close(fd);
        return kvs_error(KVS_EIO, "metrics: cannot start the HTTP server on %s", addr);
    }
    if (bound_port) *bound_port = port;
    return 0;
}

void srv_metrics_stop(srv_metrics *m)
{
    if (m && m->httpd) {
        MHD_stop_daemon(m->httpd);
        m->httpd = NULL;
    }
}
