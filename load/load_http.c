/* load_http.c — the OpenAI HTTP side of `kvsieve load --api openai`: the same workload and
 * records as load_client.c, sent as streamed POST /v1/completions (or /v1/chat/completions
 * with --chat) to `kvsieve serve --http-listen`. One thread, non-blocking sockets and poll(),
 * one keep-alive HTTP/1.1 connection per concurrency slot (reopened when the server closes it).
 *
 * Records use gRPC status codes so that the stats and reports are shared: an HTTP status maps
 * to its gRPC counterpart (200 OK, 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 429
 * RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...); an error event inside a stream likewise. Each SSE
 * event with text counts as one token message; the output token count is the server's
 * usage.completion_tokens (stream_options.include_usage). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "load/load.h"

/* gRPC status of an HTTP status. */
static int grpc_of_http(int st)
{
    switch (st) {
    case 200: return 0;
    case 400: case 413: return st == 400 ? 3 : 8;
    case 401: return 16;
    case 403: return 7;
    case 404: return 5;
    case 429: return 8;
    case 503: return 14;
    case 504: return 4;
    default: return st >= 500 ? 13 : 2;
    }
}

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static int buf_put(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) return -1;
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static void buf_drop(buf *b, size_t k) /* remove the first k bytes */
{
    memmove(b->p, b->p + k, b->n - k);
    b->n -= k;
    if (b->p) b->p[b->n] = 0;
}

enum { ST_IDLE, ST_CONNECTING, ST_SENDING, ST_HEADERS, ST_BODY };

typedef struct hconn {
    int fd, state, in_use;
    buf out, in, body;         /* request bytes; raw response bytes; body (de-chunked) */
    size_t out_off;
    int status, chunked, sse, close_after;
    long long content_len, chunk_left; /* chunk_left: -1 = expecting a size line */
    int crlf_left;             /* after a chunk's data */
    double deadline;
    double *itl;
    size_t n_itl, cap_itl;
    int grpc_status;
    char msg[256];
    load_record rec;
} hconn;

typedef struct hrun {
    const load_opts *o;
    load_workload *w;
    load_results *res;
    FILE *rec_file;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[256];
    hconn *c;
    int *free_slots, n_free, in_flight;
    double t0;
    long long ok, errors;
    int cancelled;
} hrun;

/* "http://HOST:PORT" or "HOST:PORT" -> a socket address. */
static int resolve(const char *target, struct sockaddr_storage *ss, socklen_t *len, char *host,
                   size_t hcap)
{
    const char *t = target;
    if (!strncmp(t, "http://", 7)) t += 7;
    char h[200];
    const char *colon = strrchr(t, ':');
    if (!colon || colon == t || (size_t)(colon - t) >= sizeof h) return -1;
    memcpy(h, t, (size_t)(colon - t));
    h[colon - t] = 0;
    char port[16];
    snprintf(port, sizeof port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
    if (snprintf(host, hcap, "%.200s:%.15s", h, port) >= (int)hcap) return -1;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        memmove(h, h + 1, hl - 2);
        h[hl - 2] = 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(h, port, &hints, &res) || !res) return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int open_socket(const hrun *s, int blocking)
{
    int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK),
                    0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)&s->addr, s->addrlen) && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_close(hconn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* The request: HTTP/1.1 POST with the JSON body. */
static int build_request(hrun *s, hconn *c, const load_req *q)
{
    load_workload *w = s->w;
    json_t *body = json_object();
    int chat = q->prompt >= 0 && w->chat;
    if (q->prompt >= 0) {
        const char *text = w->prompts[q->prompt].text;
        if (chat)
            json_object_set_new(body, "messages",
                                json_pack("[{s:s,s:s}]", "role", "user", "content", text));
        else json_object_set_new(body, "prompt", json_string(text));
    } else {
        json_t *ids = json_array();
        for (int i = 0; i < q->n_ids; i++) json_array_append_new(ids, json_integer(q->ids[i]));
        json_object_set_new(body, "prompt", ids);
    }
    json_object_set_new(body, "max_tokens", json_integer(q->max_tokens));
    json_object_set_new(body, "temperature", json_real(0)); /* greedy, as the gRPC default */
    json_object_set_new(body, "stream", json_true());
    json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
    json_t *ext = json_pack("{s:b}", "ignore_eos", w->ignore_eos);
    const load_policy *p = &w->policies[q->policy];
    if (p->name[0]) {
        json_object_set_new(ext, "policy", json_string(p->name));
        if (p->args[0]) json_object_set_new(ext, "policy_args", json_string(p->args));
    }
    json_object_set_new(body, "kvsieve", ext);
    char *js = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!js) return -1;
    const load_tenant *t = &w->tenants[q->tenant];
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Accept: text/event-stream\r\n%s%s%sContent-Length: %zu\r\n\r\n",
                      chat ? "/v1/chat/completions" : "/v1/completions", s->host,
                      t->key && *t->key ? "Authorization: Bearer " : "",
                      t->key && *t->key ? t->key : "", t->key && *t->key ? "\r\n" : "",
                      strlen(js));
    c->out.n = 0;
    c->out_off = 0;
    int rc = hn > 0 && (size_t)hn < sizeof head ? buf_put(&c->out, head, (size_t)hn) : -1;
    if (!rc) rc = buf_put(&c->out, js, strlen(js));
    free(js);
    return rc;
}

static void push_gap(hconn *c, double g)
{
    if (c->n_itl == c->cap_itl) {
        size_t cap = c->cap_itl ? 2 * c->cap_itl : 64;
        double *v = realloc(c->itl, cap * sizeof *v);
        if (!v) return;
        c->itl = v;
        c->cap_itl = cap;
    }
    c->itl[c->n_itl++] = g;
}

static void fail(hconn *c, int code, const char *fmt, const char *arg)
{
    if (c->grpc_status) return; /* the first reason stays */
    c->grpc_status = code;
    snprintf(c->msg, sizeof c->msg, fmt, arg ? arg : "");
}

/* One SSE event's data. */
static void on_sse(hrun *s, hconn *c, const char *data, size_t n, double now)
{
    load_record *r = &c->rec;
    if (n == 6 && !memcmp(data, "[DONE]", 6)) return;
    json_t *j = json_loadb(data, n, 0, NULL);
    if (!j) {
        fail(c, 13, "client: malformed event in the stream", NULL);
        return;
    }
    r->n_msgs++;
    json_t *err = json_object_get(j, "error");
    if (err) {
        json_t *st = json_object_get(err, "status");
        fail(c, grpc_of_http(json_is_integer(st) ? (int)json_integer_value(st) : 500), "%s",
             json_string_value(json_object_get(err, "message")));
    }
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    if (ch) {
        json_t *t = json_object_get(ch, "text");
        if (!t) t = json_object_get(json_object_get(ch, "delta"), "content");
        if (json_is_string(t) && json_string_length(t) > 0) {
            double tt = now - s->t0;
            if (r->out_tokens == 0) r->t_first = tt;
            else push_gap(c, tt - r->t_last);
            r->t_last = tt;
            r->out_tokens++;
        }
        const char *fr = json_string_value(json_object_get(ch, "finish_reason"));
        if (fr) {
            r->has_finish = 1;
            r->finish_reason = !strcmp(fr, "stop") ? 1 : !strcmp(fr, "length") ? 2 : 6;
        }
    }
    json_t *u = json_object_get(j, "usage");
    if (json_is_object(u)) {
        r->prompt_tokens = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
        r->completion_tokens = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    }
    json_decref(j);
}

/* Events complete in the body so far. */
static void parse_events(hrun *s, hconn *c, double now)
{
    for (;;) {
        char *end = strstr(c->body.p ? c->body.p : "", "\n\n");
        if (!end) return;
        size_t len = (size_t)(end - c->body.p);
        if (len > 6 && !strncmp(c->body.p, "data: ", 6)) on_sse(s, c, c->body.p + 6, len - 6, now);
        buf_drop(&c->body, len + 2);
    }
}

static void call_finish(hrun *s, hconn *c, double now);

/* The bytes in c->in: headers, then the body (chunked or with a length). Returns 1 when the
 * response is complete. */
static int parse_in(hrun *s, hconn *c, double now)
{
    if (c->state == ST_HEADERS) {
        char *e = strstr(c->in.p ? c->in.p : "", "\r\n\r\n");
        if (!e) return 0;
        *e = 0;
        if (sscanf(c->in.p, "HTTP/1.%*d %d", &c->status) != 1) {
            fail(c, 13, "client: not an HTTP response", NULL);
            return 1;
        }
        c->chunked = 0;
        c->content_len = -1;
        c->sse = 0;
        c->close_after = 0;
        for (char *line = strstr(c->in.p, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
            const char *h = line + 2;
            if (!strncasecmp(h, "Transfer-Encoding:", 18) && strstr(h, "chunked")) c->chunked = 1;
            else if (!strncasecmp(h, "Content-Length:", 15)) c->content_len = atoll(h + 15);
            else if (!strncasecmp(h, "Content-Type:", 13) && strstr(h, "event-stream")) c->sse = 1;
            else if (!strncasecmp(h, "Connection:", 11) && strcasestr(h, "close"))
                c->close_after = 1;
        }
        buf_drop(&c->in, (size_t)(e + 4 - c->in.p));
        c->state = ST_BODY;
        c->chunk_left = -1;
        c->crlf_left = 0;
        c->body.n = 0;
        if (c->status != 200) c->close_after = 1;
    }
    /* body bytes -> c->body */
    int done = 0;
    if (!c->chunked) {
        size_t take = c->in.n;
        if (c->content_len >= 0 && (long long)take > c->content_len - (long long)c->body.n)
            take = (size_t)(c->content_len - (long long)c->body.n);
        buf_put(&c->body, c->in.p ? c->in.p : "", take);
        buf_drop(&c->in, take);
        done = c->content_len >= 0 && (long long)c->body.n >= c->content_len;
    } else {
        while (c->in.n && !done) {
            if (c->crlf_left) {
                size_t k = c->in.n < (size_t)c->crlf_left ? c->in.n : (size_t)c->crlf_left;
                buf_drop(&c->in, k);
                c->crlf_left -= (int)k;
                continue;
            }
            if (c->chunk_left < 0) {
                char *nl = strstr(c->in.p, "\r\n");
                if (!nl) break;
                c->chunk_left = strtoll(c->in.p, NULL, 16);
                buf_drop(&c->in, (size_t)(nl + 2 - c->in.p));
                if (c->chunk_left == 0) { /* last chunk; trailers end with an empty line */
                    c->crlf_left = 2;
                    done = 1;
                }
                continue;
            }
            size_t k = c->in.n < (size_t)c->chunk_left ? c->in.n : (size_t)c->chunk_left;
            buf_put(&c->body, c->in.p, k);
            buf_drop(&c->in, k);
            c->chunk_left -= (long long)k;
            if (c->chunk_left == 0) {
                c->chunk_left = -1;
                c->crlf_left = 2;
            }
        }
        if (done && c->crlf_left && c->in.n >= (size_t)c->crlf_left) buf_drop(&c->in, (size_t)c->crlf_left);
    }
    if (c->status == 200 && c->sse) parse_events(s, c, now);
    if (done && c->status != 200) {
        json_t *j = c->body.p ? json_loadb(c->body.p, c->body.n, 0, NULL) : NULL;
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        char tmp[64];
        snprintf(tmp, sizeof tmp, "HTTP %d", c->status);
        fail(c, grpc_of_http(c->status), "%s", m ? m : tmp);
        json_decref(j);
    }
    return done;
}

static int push_record(load_results *res, const load_record *r)
{
    if (res->n == res->cap) {
        size_t cap = res->cap ? res->cap * 2 : 1024;
        load_record *v = realloc(res->recs, cap * sizeof *v);
        if (!v) return -1;
        res->recs = v;
        res->cap = cap;
    }
    res->recs[res->n++] = *r;
    return 0;
}

static void call_finish(hrun *s, hconn *c, double now)
{
    load_record *r = &c->rec;
    r->t_end = now - s->t0;
    if (!c->grpc_status && !r->has_finish) fail(c, 13, "client: the stream ended early", NULL);
    r->status = c->grpc_status;
    if (s->cancelled && r->status == 1) r->interrupted = 1;
    if (r->completion_tokens > 0 && r->status == 0) r->out_tokens = r->completion_tokens;
    if (r->status && !r->interrupted && !s->res->first_msg[r->status])
        s->res->first_msg[r->status] = strdup(c->msg);
    if (r->status == 0 && c->n_itl) {
        load_results *res = s->res;
        if (res->n_itl + c->n_itl > res->cap_itl) {
            size_t cap = res->cap_itl ? res->cap_itl * 2 : 1024;
            while (cap < res->n_itl + c->n_itl) cap *= 2;
            double *v = realloc(res->itl, cap * sizeof *v);
            if (v) res->itl = v, res->cap_itl = cap;
        }
        if (res->n_itl + c->n_itl <= res->cap_itl) {
            memcpy(res->itl + res->n_itl, c->itl, c->n_itl * sizeof *c->itl);
            res->n_itl += c->n_itl;
        }
    }
    if (r->status == 0) s->ok++;
    else if (!r->interrupted) s->errors++;
    if (push_record(s->res, r))
        fprintf(stderr, "kvsieve load: out of memory: request %lld is not recorded\n", r->idx);
    if (s->rec_file) load_record_write_json(s->rec_file, s->w, r, c->msg);
    if (c->close_after || c->grpc_status || c->in.n) conn_close(c);
    c->in_use = 0;
    c->state = ST_IDLE;
    c->in.n = 0;
    c->body.n = 0;
    s->free_slots[s->n_free++] = (int)(c - s->c);
    s->in_flight--;
}

static int call_start(hrun *s, double now, double t_sched)
{
    load_req q;
    if (load_workload_next(s->w, &q)) return -1;
    int slot = s->free_slots[--s->n_free];
    hconn *c = &s->c[slot];
    c->in_use = 1;
    c->n_itl = 0;
    c->grpc_status = 0;
    c->msg[0] = 0;
    memset(&c->rec, 0, sizeof c->rec);
    load_record *r = &c->rec;
    r->idx = s->res->sent++;
    r->tenant = q.tenant;
    r->policy = q.policy;
    r->prompt = q.prompt;
    r->input_len = q.prompt >= 0 ? -1 : q.n_ids;
    r->max_tokens = q.max_tokens;
    r->t_sched = t_sched - s->t0;
    r->t_send = now - s->t0;
    if (t_sched >= 0 && now - t_sched > 0.010) s->res->late++;
    int brc = build_request(s, c, &q);
    load_req_clear(&q);
    s->in_flight++;
    c->deadline = now + s->o->timeout;
    if (brc) {
        fail(c, 13, "client: out of memory", NULL);
        call_finish(s, c, now);
        return 0;
    }
    if (c->fd < 0) {
        c->fd = open_socket(s, 0);
        if (c->fd < 0) {
            fail(c, 14, "client: cannot connect: %s", strerror(errno));
            call_finish(s, c, now);
            return 0;
        }
        c->state = ST_CONNECTING;
    } else {
        c->state = ST_SENDING;
    }
    return 0;
}

static void on_ready(hrun *s, hconn *c, short revents, double now)
{
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            fail(c, 14, "client: cannot connect: %s", strerror(err));
            call_finish(s, c, now);
            return;
        }
        c->state = ST_SENDING;
    }
    if (c->state == ST_SENDING && (revents & POLLOUT)) {
        ssize_t k = send(c->fd, c->out.p + c->out_off, c->out.n - c->out_off, MSG_NOSIGNAL);
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            /* a kept-alive connection the server closed: reconnect once for this request */
            conn_close(c);
            c->fd = open_socket(s, 0);
            c->out_off = 0;
            c->state = ST_CONNECTING;
            if (c->fd < 0) {
                fail(c, 14, "client: cannot connect: %s", strerror(errno));
                call_finish(s, c, now);
            }
            return;
        }
        if (k > 0) c->out_off += (size_t)k;
        if (c->out_off == c->out.n) {
            c->state = ST_HEADERS;
            c->in.n = 0;
        }
        return;
    }
    if ((c->state == ST_HEADERS || c->state == ST_BODY) && (revents & (POLLIN | POLLHUP | POLLERR))) {
        char tmp[65536];
        ssize_t k = recv(c->fd, tmp, sizeof tmp, 0);
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (k <= 0) {
            if (c->state == ST_HEADERS && c->rec.n_msgs == 0 && c->out_off == c->out.n &&
                !c->grpc_status && c->in.n == 0 && k == 0) {
                /* closed before any byte of the answer */
                fail(c, 14, "client: the server closed the connection", NULL);
            } else if (!(c->state == ST_BODY && !c->chunked && c->content_len < 0)) {
                fail(c, 14, "client: the connection broke mid-response", NULL);
            }
            if (c->state == ST_BODY && !c->chunked && c->content_len < 0) parse_in(s, c, now);
            c->close_after = 1;
            call_finish(s, c, now);
            return;
        }
        buf_put(&c->in, tmp, (size_t)k);
        if (parse_in(s, c, now)) call_finish(s, c, now);
    }
}

/* ---- probe: GET /v1/models (blocking, within the connect timeout) ------------------------- */

static int http_get(const hrun *s, const char *path, const char *key, double timeout, int *status,
                    buf *body, char *err, size_t errcap)
{
    int fd = open_socket(s, 1);
    if (fd < 0) {
        snprintf(err, errcap, "%s", strerror(errno));
        return -1;
    }
    struct timeval tv = {(time_t)timeout, (suseconds_t)((timeout - (time_t)timeout) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[1024];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s%s%s\r\n",
                     path, s->host, key && *key ? "Authorization: Bearer " : "",
                     key && *key ? key : "", key && *key ? "\r\n" : "");
    buf raw = {0};
    int rc = -1;
    if (n > 0 && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n) {
        char tmp[8192];
        ssize_t k;
        while ((k = recv(fd, tmp, sizeof tmp, 0)) > 0) buf_put(&raw, tmp, (size_t)k);
        char *e = raw.p ? strstr(raw.p, "\r\n\r\n") : NULL;
        if (e && sscanf(raw.p, "HTTP/1.%*d %d", status) == 1) {
            /* the server answers with a Content-Length (not chunked) for plain JSON */
            buf_put(body, e + 4, raw.n - (size_t)(e + 4 - raw.p));
            rc = 0;
        } else {
            snprintf(err, errcap, "%s", k < 0 ? strerror(errno) : "no HTTP answer");
        }
    } else {
        snprintf(err, errcap, "%s", strerror(errno));
    }
    free(raw.p);
    close(fd);
    return rc;
}

int load_http_probe(const load_opts *o, const load_workload *w, load_model_info *mi)
{
    hrun s;
    memset(&s, 0, sizeof s);
    memset(mi, 0, sizeof *mi);
    if (resolve(o->target, &s.addr, &s.addrlen, s.host, sizeof s.host)) {
        fprintf(stderr, "kvsieve load: --target %s: expected HOST:PORT of `kvsieve serve "
                "--http-listen`\n", o->target);
        return -1;
    }
    for (int i = 0; i < w->n_tenants; i++) {
        int status = 0;
        buf body = {0};
        char err[256] = "";
        double t0 = kvs_now();
        if (http_get(&s, "/v1/models", w->tenants[i].key, o->connect_timeout, &status, &body, err,
                     sizeof err)) {
            double took = kvs_now() - t0;
            if (took >= 0.9 * o->connect_timeout)
                fprintf(stderr, "kvsieve load: cannot reach %s within %gs: %s\n", o->target,
                        o->connect_timeout, err);
            else
                fprintf(stderr, "kvsieve load: cannot connect to %s (refused after %.2fs: "
                        "nothing listens there?): %s\n", o->target, took, err);
            fprintf(stderr, "  (is `kvsieve serve --http-listen %s` running? Load-test only "
                    "servers you run.)\n", o->target);
            free(body.p);
            return -1;
        }
        json_t *j = body.p ? json_loadb(body.p, body.n, 0, NULL) : NULL;
        json_t *m = json_array_get(json_object_get(j, "data"), 0);
        if (status == 200 && m && !mi->known) {
            json_t *k = json_object_get(m, "kvsieve");
            mi->known = 1;
            snprintf(mi->name, sizeof mi->name, "%s",
                     json_string_value(json_object_get(m, "id")) ?: "");
            mi->n_ctx = (int)json_integer_value(json_object_get(m, "max_model_len"));
            mi->n_vocab = (int)json_integer_value(json_object_get(k, "n_vocab"));
            mi->bos = k ? (int32_t)json_integer_value(json_object_get(k, "bos_token_id")) : -1;
            mi->eos = k ? (int32_t)json_integer_value(json_object_get(k, "eos_token_id")) : -1;
            snprintf(mi->default_policy, sizeof mi->default_policy, "%s",
                     json_string_value(json_object_get(k, "default_policy")) ?: "");
            size_t off = 0, idx;
            json_t *p;
            json_array_foreach(json_object_get(k, "policies"), idx, p) {
                int wr = snprintf(mi->policies + off, sizeof mi->policies - off, "%s%s",
                                  idx ? "," : "", json_string_value(p) ?: "");
                if (wr > 0 && off + (size_t)wr < sizeof mi->policies) off += (size_t)wr;
            }
            if (!mi->n_vocab) mi->known = 0; /* not a kvsieve server: no vocabulary */
        } else if (status != 200) {
            const char *msg = json_string_value(json_object_get(json_object_get(j, "error"),
                                                                "message"));
            fprintf(stderr, "kvsieve load: warning: tenant '%s': GET /v1/models answered %d: %s "
                    "(its requests will likely fail the same way)\n", w->tenants[i].name,
                    status, msg ? msg : "");
        }
        json_decref(j);
        free(body.p);
    }
    return 0;
}

/* ---- the run ----------------------------------------------------------------------------------- */

int load_http_run(const load_opts *o, load_workload *w, load_results *res, FILE *rec_file)
{
    hrun s;
    memset(&s, 0, sizeof s);
    s.o = o;
    s.w = w;
    s.res = res;
    s.rec_file = rec_file;
    if (resolve(o->target, &s.addr, &s.addrlen, s.host, sizeof s.host)) return -1;
    s.c = calloc((size_t)o->concurrency, sizeof *s.c);
    s.free_slots = malloc((size_t)o->concurrency * sizeof *s.free_slots);
    struct pollfd *pfd = calloc((size_t)o->concurrency, sizeof *pfd);
    int *pidx = calloc((size_t)o->concurrency, sizeof *pidx);
    if (!s.c || !s.free_slots || !pfd || !pidx) {
        fprintf(stderr, "kvsieve load: out of memory\n");
        free(s.c);
        free(s.free_slots);
        free(pfd);
        free(pidx);
        return -1;
    }
    for (int i = o->concurrency - 1; i >= 0; i--) {
        s.c[i].fd = -1;
        s.free_slots[s.n_free++] = i;
    }
    res->t_start_wall = (double)time(NULL);
    s.t0 = kvs_now();
    double next_arrival = s.t0, next_tick = s.t0 + 10;
    int sending = 1;
    for (;;) {
        double now = kvs_now();
        if (o->stop && *o->stop && !s.cancelled) {
            s.cancelled = 1;
            res->interrupted = 1;
            sending = 0;
            for (int i = 0; i < o->concurrency; i++)
                if (s.c[i].in_use) {
                    fail(&s.c[i], 1, "client: cancelled", NULL);
                    s.c[i].close_after = 1;
                    call_finish(&s, &s.c[i], now);
                }
        }
        if (sending && ((o->requests && res->sent >= o->requests) ||
                        (o->duration > 0 && now - s.t0 >= o->duration)))
            sending = 0;
        while (sending && s.n_free > 0 && (o->rate <= 0 || next_arrival <= now) &&
               !(o->requests && res->sent >= o->requests)) {
            if (call_start(&s, now, o->rate > 0 ? next_arrival : now)) {
                fprintf(stderr, "kvsieve load: out of memory\n");
                sending = 0;
                break;
            }
            if (o->rate > 0) next_arrival += load_rng_exp(&w->rng, 1.0 / o->rate);
        }
        if (!sending && s.in_flight == 0) break;
        if (o->progress && now >= next_tick) {
            fprintf(stderr, "kvsieve load: %.0fs: %lld sent, %lld ok, %lld errors, %d in flight\n",
                    now - s.t0, res->sent, s.ok, s.errors, s.in_flight);
            next_tick = now + 10;
        }
        int np = 0;
        for (int i = 0; i < o->concurrency; i++) {
            hconn *c = &s.c[i];
            if (!c->in_use) continue;
            if (now > c->deadline) {
                fail(c, 4, "client: deadline exceeded (--timeout)", NULL);
                c->close_after = 1;
                call_finish(&s, c, now);
                continue;
            }
            pfd[np].fd = c->fd;
            pfd[np].events = c->state == ST_CONNECTING || c->state == ST_SENDING ? POLLOUT : POLLIN;
            pfd[np].revents = 0;
            pidx[np++] = i;
        }
        double wake = 0.05;
        if (sending && o->rate > 0 && s.n_free > 0 && next_arrival - now < wake)
            wake = next_arrival - now > 0 ? next_arrival - now : 0;
        int k = poll(pfd, (nfds_t)np, (int)(wake * 1000));
        if (k <= 0) continue;
        now = kvs_now();
        for (int i = 0; i < np; i++)
            if (pfd[i].revents && s.c[pidx[i]].in_use) on_ready(&s, &s.c[pidx[i]], pfd[i].revents, now);
    }
    double t_end = kvs_now();
    res->elapsed = 0;
    for (size_t i = 0; i < res->n; i++)
        if (res->recs[i].t_end > res->elapsed) res->elapsed = res->recs[i].t_end;
    if (res->elapsed <= 0) res->elapsed = t_end - s.t0;
    for (int i = 0; i < o->concurrency; i++) {
        conn_close(&s.c[i]);
        free(s.c[i].out.p);
        free(s.c[i].in.p);
        free(s.c[i].body.p);
        free(s.c[i].itl);
    }
    free(s.c);
    free(s.free_slots);
    free(pfd);
    free(pidx);
    return 0;
}
