/* srv_internal.h — what the server's files share: the call context, its tags and its write
 * queue (grpc_server.c), used by the method handlers in api.c and health.c. Not public. */
#ifndef KVS_SRV_INTERNAL_H
#define KVS_SRV_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>

#include "reflection.h"
#include "server.h"

enum srv_method {
    SRV_M_GENERATE,
    SRV_M_ABORT,
    SRV_M_TOKENIZE,
    SRV_M_MODEL_INFO,
    SRV_M_SERVER_INFO,
    SRV_M_HEALTH_CHECK,
    SRV_M_HEALTH_WATCH,
    SRV_M_REFLECT_V1,
    SRV_M_REFLECT_V1ALPHA,
    SRV_M_UNKNOWN,
    SRV_M_COUNT
};

typedef struct srv_call srv_call;
/* A completion tag: the cq thread runs fn(c, ok) for it. One tag per batch kind, so at most
 * one batch of each kind is in flight per call. */
typedef struct srv_tag {
    void (*fn)(srv_call *c, int ok);
    srv_call *c;
} srv_tag;

typedef struct srv_msg {
    grpc_byte_buffer *bb;
    struct srv_msg *next;
} srv_msg;

struct srv {
    srv_opts o;
    grpc_server *server;
    int port;
    int n_cq;
    grpc_completion_queue **cq;
    pthread_t *threads;
    int threads_started;
    void *method[SRV_M_COUNT];
    srv_reflection *refl;
    atomic_int shutting_down;
    atomic_int shutdown_done;
    int shutdown_requested;
    srv_tag shutdown_tag;
    atomic_int live_work;        /* accepted Kvsieve calls not yet freed */
    double t_start;
    pthread_mutex_t watch_mu;    /* guards watchers */
    srv_call *watchers;          /* open Health.Watch calls */
    char (*tenant_names)[SCHED_NAME_MAX];
    int n_tenants;
    int64_t n_params;            /* cached for GetModelInfo */
};

struct srv_call {
    srv *s;
    grpc_completion_queue *cq;
    int method;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_call_details details;   /* SRV_M_UNKNOWN only */
    grpc_byte_buffer *payload;   /* the request message (unary and server streaming) */
    grpc_byte_buffer *r_bb;      /* RECV_MESSAGE target (reflection) */
    srv_tag t_new, t_close, t_write, t_read;
    atomic_int refs;             /* +1 per batch in flight and per outside holder */
    int cancelled;               /* out-param of RECV_CLOSE_ON_SERVER */
    atomic_int gone;             /* the client cancelled / the call failed: stop writing */
    int counted;                 /* counted in s->live_work */

    pthread_mutex_t mu;          /* guards everything below */
    srv_msg *q_head, *q_tail;    /* messages waiting to be written */
    grpc_byte_buffer *w_bb;      /* message of the send batch in flight */
    int write_inflight, md_sent, status_started, closing;
    grpc_status_code status;     /* sent once closing and the queue is empty */
    grpc_slice status_details;
    int has_details;
    /* Method hooks: next_msg builds the next message from the call's own state (under mu;
     * NULL when there is nothing); on_cancel runs on the cq thread when the client goes away. */
    grpc_byte_buffer *(*next_msg)(srv_call *c);
    void (*on_cancel)(srv_call *c);
    void *impl;
    void (*impl_free)(void *impl);
    int tenant;                  /* authenticated tenant index, -1 before */
    srv_call *watch_next;        /* in s->watchers */
    int watch_known;
};

/* grpc_server.c */
void srv_call_ref(srv_call *c);
void srv_call_unref(srv_call *c);
/* Queue a message (takes bb) / finish with a status (message copied); both start writes as
 * needed. The _locked forms need c->mu held. */
void srv_call_push_locked(srv_call *c, grpc_byte_buffer *bb);
void srv_call_close_locked(srv_call *c, grpc_status_code code, const char *msg);
void srv_call_pump_locked(srv_call *c);
/* Unary reply: optional message, then the status. */
void srv_call_reply(srv_call *c, const ProtobufCMessage *msg, grpc_status_code code,
                    const char *details);
/* Refuse a call before it did anything: status + metrics (kvsieve_requests_rejected_total). */
void srv_call_fail(srv_call *c, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
grpc_byte_buffer *srv_pack(const ProtobufCMessage *m);
/* The call's request message, strings checked (UTF-8, no NUL); on failure the call gets
 * INVALID_ARGUMENT naming the field (what = the message type) and NULL is returned. */
ProtobufCMessage *srv_unpack_call(srv_call *c, const ProtobufCMessageDescriptor *d,
                                  const char *what);
/* Authenticate: sets c->tenant and returns 0, or replies UNAUTHENTICATED and returns -1. */
int srv_call_auth(srv_call *c);
grpc_status_code srv_status_from_kvs(int rc);

/* api.c: kvsieve.v1.Kvsieve. */
void srv_api_generate(srv_call *c);
void srv_api_abort(srv_call *c);
void srv_api_tokenize(srv_call *c);
void srv_api_model_info(srv_call *c);
void srv_api_server_info(srv_call *c);

/* health.c: grpc.health.v1.Health. */
void srv_health_check(srv_call *c);
void srv_health_watch(srv_call *c);
/* Shutdown: every open Watch gets NOT_SERVING, then the status UNAVAILABLE. */
void srv_health_shutdown(srv *s);

#endif
