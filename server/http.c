/* http.c — the HTTP listener of the OpenAI-compatible API (see http.h): libmicrohttpd with a
 * thread per connection, the request body, routing, API keys, error objects. The OpenAI
 * request/response mapping is in openai.c. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "http_internal.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "core/common.h"
#include "listen.h"

/* ---- helpers shared with openai.c -------------------------------------------------------- */

void srv_sanitize(const char *s, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    if (!cap) return;
    for (size_t i = 0; i < len && n + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f) {
            out[n++] = (char)c;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = 0;
}

static const char *error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "invalid_request_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

int srv_http_error(srv_http_resp *r, int status, const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Messages are built from sanitized input, but a truncated one could end inside a UTF-8
     * sequence of the server's own text: jansson refuses that, so fall back to ASCII. */
    json_t *m = json_string(msg);
    if (!m) {
        char safe[1100];
        srv_sanitize(msg, strlen(msg), safe, sizeof safe);
        m = json_string(safe);
    }
    json_t *e = json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message", m, "type",
                          error_type(status), "param", param ? json_string(param) : json_null(),
                          "code", status == 401 ? json_string("invalid_api_key") : json_null());
    free(r->body);
    r->body = e ? json_dumps(e, JSON_COMPACT) : NULL;
    r->n_body = r->body ? strlen(r->body) : 0;
    r->status = status;
    json_decref(e);
    return 0;
}

int srv_http_peer_gone(int fd)
{
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return 1;
    if (p.revents & POLLIN) {
        char c;
        ssize_t k = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return 0;
}

int srv_http_status_from_kvs(int rc)
{
    switch (rc) {
    case KVS_EINVAL: case KVS_ERANGE: return 400;
    case KVS_ENOTFOUND: return 404;
    case KVS_EUNSUPPORTED: return 403;
    case KVS_ENOMEM: return 429;
    case KVS_EIO: return 503;
    default: return 500;
    }
}

/* ---- one connection's request ------------------------------------------------------------ */

typedef struct conn_state {
    char *body;
    size_t n, cap;
    int too_big;
} conn_state;

typedef struct auth_scan {
    int n;
    char value[512];
    size_t len;
    int truncated;
} auth_scan;

static enum MHD_Result scan_auth(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    auth_scan *a = cls;
    (void)kind;
    if (key && !strcasecmp(key, "Authorization")) {
        if (a->n++ == 0 && value) {
            size_t l = strlen(value);
            if (l >= sizeof a->value) a->truncated = 1;
            else memcpy(a->value, value, l + 1), a->len = l;
        }
    }
    return MHD_YES;
}

/* The tenant of the request (0 when open), or -1 with r filled (401). */
static int authenticate(srv_http *h, struct MHD_Connection *conn, srv_http_resp *r)
{
    if (!h->o.tenants) return 0;
    auth_scan a = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_auth, &a);
    if (a.n == 0) {
        srv_http_error(r, 401, NULL, "missing API key: send the header 'Authorization: Bearer "
                       "<key>'");
        return -1;
    }
    if (a.n > 1) {
        srv_http_error(r, 401, NULL, "more than one Authorization header: send exactly one");
        return -1;
    }
    size_t kl = 0;
    const char *k = a.truncated ? NULL : srv_key_from_authorization(a.value, a.len, &kl);
    if (!k) {
        srv_http_error(r, 401, NULL, "malformed Authorization header: expected exactly "
                       "'Bearer <key>'");
        return -1;
    }
    int t = srv_auth_find(h->o.tenants, k, kl);
    if (t < 0) {
        srv_http_error(r, 401, NULL, "invalid API key");
        return -1;
    }
    return t;
}

static int grpc_code_of(int status)
{
    switch (status) {
    case 400: return 3;  /* INVALID_ARGUMENT */
    case 401: return 16; /* UNAUTHENTICATED */
    case 403: return 7;  /* PERMISSION_DENIED */
    case 404: return 5;  /* NOT_FOUND */
    case 413: case 429: return 8; /* RESOURCE_EXHAUSTED */
    case 503: return 14; /* UNAVAILABLE */
    default: return 13;  /* INTERNAL */
    }
}

static enum MHD_Result send_resp(struct MHD_Connection *conn, srv_http_resp *r, const char *allow)
{
    struct MHD_Response *mr;
    if (r->stream) {
        mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, r->reader, r->stream,
                                               r->free_stream);
        if (!mr) {
            r->free_stream(r->stream);
            return MHD_NO;
        }
        MHD_add_response_header(mr, "Content-Type", "text/event-stream");
        MHD_add_response_header(mr, "Cache-Control", "no-cache");
    } else {
        if (!r->body) {
            srv_http_error(r, 500, NULL, "out of memory");
            if (!r->body) return MHD_NO;
        }
        mr = MHD_create_response_from_buffer(r->n_body, r->body, MHD_RESPMEM_MUST_FREE);
        if (!mr) {
            free(r->body);
            return MHD_NO;
        }
        r->body = NULL;
        MHD_add_response_header(mr, "Content-Type", "application/json");
    }
    if (allow) MHD_add_response_header(mr, "Allow", allow);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)r->status, mr);
    MHD_destroy_response(mr);
    return rc;
}

static enum MHD_Result send_text(struct MHD_Connection *conn, unsigned status, const char *ctype,
                                 char *text, size_t n, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *mr = MHD_create_response_from_buffer(n, text, mode);
    if (!mr) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(text);
        return MHD_NO;
    }
    MHD_add_response_header(mr, "Content-Type", ctype);
    enum MHD_Result rc = MHD_queue_response(conn, status, mr);
    MHD_destroy_response(mr);
    return rc;
}

enum route { R_NONE, R_HEALTH, R_METRICS, R_MODELS, R_MODEL, R_COMPLETIONS, R_CHAT, R_TOKENIZE,
             R_DETOKENIZE };

static int route_of(const srv_http *h, const char *url, const char **allow)
{
    *allow = "POST";
    if (!strcmp(url, "/v1/completions")) return R_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions")) return R_CHAT;
    if (!strcmp(url, "/tokenize")) return R_TOKENIZE;
    if (!strcmp(url, "/detokenize")) return R_DETOKENIZE;
    *allow = "GET, HEAD";
    if (!strcmp(url, "/health")) return R_HEALTH;
    if (!strcmp(url, "/metrics") && h->o.serve_metrics) return R_METRICS;
    if (!strcmp(url, "/v1/models")) return R_MODELS;
    if (!strncmp(url, "/v1/models/", 11) && url[11]) return R_MODEL;
    *allow = NULL;
    return R_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    srv_http *h = cls;
    conn_state *cs = *con_cls;
    (void)version;
    if (!cs) { /* headers only: refuse a body announced too large before reading it */
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > h->o.max_body) {
            cs->too_big = 1;
            srv_http_resp r = {0};
            srv_http_error(&r, 413, NULL, "request body of %s bytes is over the limit of %zu",
                           cl, h->o.max_body);
            return send_resp(conn, &r, NULL);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (cs->too_big) return MHD_YES;
        if (cs->n + n > h->o.max_body) {
            cs->too_big = 1;
            return MHD_YES;
        }
        if (cs->n + n + 1 > cs->cap) {
            size_t cap = cs->cap ? cs->cap : 4096;
            while (cap < cs->n + n + 1) cap *= 2;
            char *p = realloc(cs->body, cap);
            if (!p) return MHD_NO;
            cs->body = p;
            cs->cap = cap;
        }
        memcpy(cs->body + cs->n, upload, n);
        cs->n += n;
        cs->body[cs->n] = 0;
        return MHD_YES;
    }

    /* The whole request is here. */
    srv_http_resp r = {0};
    if (cs->too_big) {
        srv_http_error(&r, 413, NULL, "request body is over the limit of %zu bytes",
                       h->o.max_body);
        return send_resp(conn, &r, NULL);
    }
    const char *allow = NULL;
    int route = route_of(h, url, &allow);
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int is_post = !strcmp(method, "POST");
    if (route == R_NONE) {
        char safe[256];
        srv_sanitize(url, strlen(url), safe, sizeof safe);
        srv_http_error(&r, 404, NULL, "no such endpoint: %s %s (see docs/API.md)",
                       is_get ? "GET" : is_post ? "POST" : "method", safe);
        return send_resp(conn, &r, NULL);
    }
    if ((allow[0] == 'P' && !is_post) || (allow[0] == 'G' && !is_get)) {
        srv_http_error(&r, 405, NULL, "this endpoint takes %s", allow);
        return send_resp(conn, &r, allow);
    }
    if (route == R_HEALTH) {
        int draining = atomic_load(&h->draining);
        return send_text(conn, draining ? 503 : 200, "application/json",
                         (char *)(draining ? "{\"status\":\"draining\"}" : "{\"status\":\"ok\"}"),
                         draining ? 21 : 15, MHD_RESPMEM_PERSISTENT);
    }
    if (route == R_METRICS) {
        size_t n = 0;
        char *text = srv_metrics_render(h->o.metrics, &n);
        if (!text) return send_text(conn, 500, "text/plain", (char *)"out of memory\n", 14,
                                    MHD_RESPMEM_PERSISTENT);
        return send_text(conn, 200, "text/plain; version=0.0.4; charset=utf-8", text, n,
                         MHD_RESPMEM_MUST_FREE);
    }
    int tenant = authenticate(h, conn, &r);
    if (tenant < 0) {
        srv_metrics_rejected(h->o.metrics, -1, grpc_code_of(401));
        return send_resp(conn, &r, NULL);
    }
    int generation = route == R_COMPLETIONS || route == R_CHAT;
    if (generation && atomic_load(&h->draining)) {
        srv_http_error(&r, 503, NULL, "server shutting down: retry on another server");
        srv_metrics_rejected(h->o.metrics, tenant, grpc_code_of(503));
        return send_resp(conn, &r, NULL);
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    srv_http_req q = {.h = h,
                      .tenant = tenant,
                      .tenant_name = h->o.tenants ? h->o.tenants->v[tenant].st.name : "default",
                      .body = cs->body ? cs->body : "",
                      .len = cs->n,
                      .fd = ci ? ci->connect_fd : -1};
    switch (route) {
    case R_MODELS: srv_oai_models(&q, &r, NULL); break;
    case R_MODEL: srv_oai_models(&q, &r, url + 11); break;
    case R_COMPLETIONS: srv_oai_completions(&q, &r, 0); break;
    case R_CHAT: srv_oai_completions(&q, &r, 1); break;
    case R_TOKENIZE: srv_oai_tokenize(&q, &r); break;
    case R_DETOKENIZE: srv_oai_detokenize(&q, &r); break;
    default: srv_http_error(&r, 500, NULL, "unrouted"); break;
    }
    if (r.drop) {
        free(r.body);
        return MHD_NO; /* the client is gone: close the connection */
    }
    if (generation && r.status >= 400 && !r.stream)
        srv_metrics_rejected(h->o.metrics, tenant, grpc_code_of(r.status));
    return send_resp(conn, &r, NULL);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    conn_state *cs = *con_cls;
    if (cs) {
        free(cs->body);
        free(cs);
    }
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    srv_http *h = cls;
    if (!h->o.verbose) return;
    fprintf(stderr, "kvsieve serve: http: ");
    vfprintf(stderr, fmt, ap);
}

int srv_http_start(const srv_http_opts *o, srv_http **out, int *bound_port)
{
    *out = NULL;
    if (!o->listen || !o->engine || !o->loop)
        return kvs_error(KVS_EINVAL, "http: listen address, engine and loop are required");
    srv_http *h = calloc(1, sizeof *h);
    if (!h) return kvs_error(KVS_ENOMEM, "out of memory");
    h->o = *o;
    if (!h->o.max_body) h->o.max_body = 1 << 20;
    if (!h->o.max_connections) h->o.max_connections = 256;
    if (!h->o.model_name) h->o.model_name = o->engine->m->cfg.name;
    h->created = (long)time(NULL);
    snprintf(h->addr, sizeof h->addr, "%s", o->listen);
    json_object_seed(0); /* jansson's hash seed, set once before connection threads exist */
    int fd = -1, port = 0;
    int rc = srv_listen_socket("--http-listen", o->listen, &fd, &port);
    if (rc) {
        free(h);
        return rc;
    }
    h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                MHD_USE_POLL | MHD_USE_ERROR_LOG,
                            0, NULL, NULL, &on_request, h, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->o.max_connections,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_END);
    if (!h->d) {
        close(fd);
        free(h);
        return kvs_error(KVS_EIO, "--http-listen: cannot start the HTTP server on %s",
                         o->listen);
    }
    if (bound_port) *bound_port = port;
    *out = h;
    return 0;
}

void srv_http_begin_shutdown(srv_http *h)
{
    if (h) atomic_store(&h->draining, 1);
}

void srv_http_stop(srv_http *h)
{
    if (!h) return;
    if (h->d) MHD_stop_daemon(h->d);
    free(h);
}
