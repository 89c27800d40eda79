/* http_internal.h — what http.c (the listener) and openai.c (the OpenAI request/response
 * mapping) share. Not public. */
#ifndef KVS_SRV_HTTP_INTERNAL_H
#define KVS_SRV_HTTP_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "http.h"

struct srv_http {
    srv_http_opts o;
    struct MHD_Daemon *d;
    atomic_int draining;
    long created;                /* unix time of start ("created" of /v1/models) */
    char addr[300];
};

/* One request as a handler sees it: authenticated tenant, the body, the connection socket
 * (watched for a client that goes away). */
typedef struct srv_http_req {
    srv_http *h;
    int tenant;
    const char *tenant_name;
    const char *body;
    size_t len;
    int fd;
} srv_http_req;

/* What a handler answers: a status and a JSON body (malloc'd), or a stream (server-sent
 * events): reader/free as libmicrohttpd's content reader callbacks take them. */
typedef struct srv_http_resp {
    int status;
    char *body;
    size_t n_body;
    void *stream;
    ssize_t (*reader)(void *cls, uint64_t pos, char *buf, size_t max);
    void (*free_stream)(void *cls);
    int drop;                    /* the client went away: close without a reply */
} srv_http_resp;

/* http.c */
/* Fill r with OpenAI's error object {"error": {message, type, param, code}} and status.
 * param may be NULL. Returns 0. */
int srv_http_error(srv_http_resp *r, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* 1 if the peer closed its side of the connection (or it failed). */
int srv_http_peer_gone(int fd);
/* Copy s into out[cap] with every byte that is not printable ASCII written as \xNN, so that
 * client bytes echoed in a message are never raw. */
void srv_sanitize(const char *s, size_t len, char *out, size_t cap);
/* HTTP status for a kvs_loop_submit / KVS_E* refusal. */
int srv_http_status_from_kvs(int rc);

/* openai.c */
void srv_oai_completions(const srv_http_req *q, srv_http_resp *r, int chat);
void srv_oai_models(const srv_http_req *q, srv_http_resp *r, const char *id);
void srv_oai_tokenize(const srv_http_req *q, srv_http_resp *r);
void srv_oai_detokenize(const srv_http_req *q, srv_http_resp *r);

#endif
