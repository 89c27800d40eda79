/* grpc_server.c — gRPC C core plumbing: bind, register methods, completion-queue threads, the
 * call context (refcount, write queue, status), reflection's bidi stream, UNIMPLEMENTED for
 * unknown methods, and the shutdown sequence (server.h). Patterns: ../shared/docs/grpc-c.md.
 *
 * Life of a call:
 *   arm():   a srv_call is allocated and offered to grpc_server_request_(registered_)call
 *   on_new:  the call arrived: re-arm, post RECV_CLOSE_ON_SERVER first (it is how a client
 *            cancel or a deadline shows up), then run the method's handler
 *   writes:  messages go through a per-call queue; at most one send batch is in flight; the
 *            status goes out with (or after) the last message
 *   free:    when the last reference is dropped (batches in flight, the engine, a Watch list) */
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "listen.h"
#include "proto_check.h"
#include "srv_internal.h"

/* Requests kept armed per method per cq; one is re-armed as each call arrives. Calls beyond
 * these wait inside the core, they are not refused. */
static const int arm_count[SRV_M_COUNT] = {
    [SRV_M_GENERATE] = 32, [SRV_M_ABORT] = 4,        [SRV_M_TOKENIZE] = 8,
    [SRV_M_MODEL_INFO] = 4, [SRV_M_SERVER_INFO] = 8, [SRV_M_HEALTH_CHECK] = 4,
    [SRV_M_HEALTH_WATCH] = 4, [SRV_M_REFLECT_V1] = 2, [SRV_M_REFLECT_V1ALPHA] = 2,
    [SRV_M_UNKNOWN] = 4};

static const char *const method_path[SRV_M_COUNT] = {
    [SRV_M_GENERATE] = "/kvsieve.v1.Kvsieve/Generate",
    [SRV_M_ABORT] = "/kvsieve.v1.Kvsieve/Abort",
    [SRV_M_TOKENIZE] = "/kvsieve.v1.Kvsieve/Tokenize",
    [SRV_M_MODEL_INFO] = "/kvsieve.v1.Kvsieve/GetModelInfo",
    [SRV_M_SERVER_INFO] = "/kvsieve.v1.Kvsieve/GetServerInfo",
    [SRV_M_HEALTH_CHECK] = "/grpc.health.v1.Health/Check",
    [SRV_M_HEALTH_WATCH] = "/grpc.health.v1.Health/Watch",
    [SRV_M_REFLECT_V1] = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    [SRV_M_REFLECT_V1ALPHA] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
};

static int is_kvsieve_method(int m) { return m <= SRV_M_SERVER_INFO; }
static int is_bidi(int m) { return m == SRV_M_REFLECT_V1 || m == SRV_M_REFLECT_V1ALPHA; }

/* ---- messages ------------------------------------------------------------------------- */

grpc_byte_buffer *srv_pack(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

ProtobufCMessage *srv_unpack_call(srv_call *c, const ProtobufCMessageDescriptor *d,
                                  const char *what)
{
    grpc_byte_buffer_reader r;
    if (!c->payload || !grpc_byte_buffer_reader_init(&r, c->payload)) {
        srv_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "missing %s message", what);
        return NULL;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    char why[256];
    ProtobufCMessage *m = NULL;
    if (srv_proto_check_strings(d, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), why,
                                sizeof why)) {
        srv_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s", what, why);
    } else {
        m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
        if (!m)
            srv_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT,
                          "malformed %s (the message bytes do not parse)", what);
    }
    grpc_slice_unref(s);
    return m;
}

grpc_status_code srv_status_from_kvs(int rc)
{
    switch (rc) {
    case KVS_EINVAL:
    case KVS_ERANGE: return GRPC_STATUS_INVALID_ARGUMENT;
    case KVS_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case KVS_ENOTFOUND: return GRPC_STATUS_UNAUTHENTICATED;
    case KVS_EUNSUPPORTED: return GRPC_STATUS_PERMISSION_DENIED;
    case KVS_EIO: return GRPC_STATUS_UNAVAILABLE;
    default: return GRPC_STATUS_INTERNAL;
    }
}

/* ---- call context --------------------------------------------------------------------- */

static void on_new(srv_call *c, int ok);

static srv_call *call_new(srv *s, grpc_completion_queue *cq, int method)
{
    srv_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->cq = cq;
    c->method = method;
    c->tenant = -1;
    atomic_init(&c->refs, 1); /* held by the pending request (t_new) */
    atomic_init(&c->gone, 0);
    pthread_mutex_init(&c->mu, NULL);
    grpc_metadata_array_init(&c->md);
    grpc_call_details_init(&c->details);
    c->t_new = (srv_tag){on_new, c};
    return c;
}

static void call_free(srv_call *c)
{
    if (c->call) grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    grpc_call_details_destroy(&c->details);
    if (c->payload) grpc_byte_buffer_destroy(c->payload);
    if (c->r_bb) grpc_byte_buffer_destroy(c->r_bb);
    if (c->w_bb) grpc_byte_buffer_destroy(c->w_bb);
    for (srv_msg *m = c->q_head, *n; m; m = n) {
        n = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
    if (c->has_details) grpc_slice_unref(c->status_details);
    if (c->impl_free) c->impl_free(c->impl);
    pthread_mutex_destroy(&c->mu);
    if (c->counted) atomic_fetch_sub(&c->s->live_work, 1);
    free(c);
}

void srv_call_ref(srv_call *c) { atomic_fetch_add(&c->refs, 1); }

void srv_call_unref(srv_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1) call_free(c);
}

static void on_write(srv_call *c, int ok)
{
    pthread_mutex_lock(&c->mu);
    if (c->w_bb) grpc_byte_buffer_destroy(c->w_bb);
    c->w_bb = NULL;
    c->write_inflight = 0;
    if (!ok) atomic_store(&c->gone, 1); /* the call is dead; drop what is queued */
    else srv_call_pump_locked(c);
    pthread_mutex_unlock(&c->mu);
    srv_call_unref(c);
}

void srv_call_pump_locked(srv_call *c)
{
    if (c->write_inflight || c->status_started || atomic_load(&c->gone)) return;
    grpc_byte_buffer *bb = NULL;
    if (c->q_head) {
        srv_msg *m = c->q_head;
        c->q_head = m->next;
        if (!c->q_head) c->q_tail = NULL;
        bb = m->bb;
        free(m);
    } else if (c->next_msg) {
        bb = c->next_msg(c);
    }
    int with_status = c->closing && !c->q_head;
    if (!bb && !with_status) return;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    int n = 0;
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = 0;
        n++;
    }
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
    }
    if (with_status) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = c->status;
        ops[n].data.send_status_from_server.status_details =
            c->has_details ? &c->status_details : NULL;
        n++;
    }
    srv_call_ref(c);
    c->t_write = (srv_tag){on_write, c};
    if (grpc_call_start_batch(c->call, ops, (size_t)n, &c->t_write, NULL) != GRPC_CALL_OK) {
        if (bb) grpc_byte_buffer_destroy(bb);
        atomic_store(&c->gone, 1);
        atomic_fetch_sub(&c->refs, 1); /* the caller holds another reference */
        return;
    }
    c->md_sent = 1;
    c->w_bb = bb;
    c->write_inflight = 1;
    if (with_status) c->status_started = 1;
}

/* Append to the write queue without starting a write. */
static int enqueue_locked(srv_call *c, grpc_byte_buffer *bb)
{
    srv_msg *m = malloc(sizeof *m);
    if (!bb || !m) {
        free(m);
        if (bb) grpc_byte_buffer_destroy(bb);
        if (!c->closing) srv_call_close_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return -1;
    }
    m->bb = bb;
    m->next = NULL;
    if (c->q_tail) c->q_tail->next = m;
    else c->q_head = m;
    c->q_tail = m;
    return 0;
}

void srv_call_push_locked(srv_call *c, grpc_byte_buffer *bb)
{
    if (!enqueue_locked(c, bb)) srv_call_pump_locked(c);
}

void srv_call_close_locked(srv_call *c, grpc_status_code code, const char *msg)
{
    if (c->closing) return;
    c->closing = 1;
    c->status = code;
    if (msg && *msg) {
        c->status_details = grpc_slice_from_copied_string(msg);
        c->has_details = 1;
    }
    srv_call_pump_locked(c);
}

void srv_call_reply(srv_call *c, const ProtobufCMessage *msg, grpc_status_code code,
                    const char *details)
{
    pthread_mutex_lock(&c->mu);
    /* Queue first, then close: the message and the status go out in one batch. */
    if (!msg || !enqueue_locked(c, srv_pack(msg))) srv_call_close_locked(c, code, details);
    pthread_mutex_unlock(&c->mu);
}

void srv_call_fail(srv_call *c, grpc_status_code code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (is_kvsieve_method(c->method)) srv_metrics_rejected(c->s->o.metrics, c->tenant, (int)code);
    srv_call_reply(c, NULL, code, msg);
}

/* ---- auth ----------------------------------------------------------------------------- */

int srv_call_auth(srv_call *c)
{
    srv *s = c->s;
    if (!s->o.tenants) {
        c->tenant = 0;
        return 0;
    }
    const char *key = NULL, *akey = NULL, *xkey = NULL;
    size_t klen = 0, aklen = 0, xklen = 0;
    int n_auth = 0, n_x = 0;
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *m = &c->md.metadata[i];
        const char *v = (const char *)GRPC_SLICE_START_PTR(m->value);
        size_t vlen = GRPC_SLICE_LENGTH(m->value);
        if (!grpc_slice_str_cmp(m->key, "authorization")) {
            n_auth++;
            akey = srv_key_from_authorization(v, vlen, &aklen);
        } else if (!grpc_slice_str_cmp(m->key, "x-api-key")) {
            n_x++;
            xkey = srv_key_is_clean(v, vlen) ? v : NULL;
            xklen = vlen;
        }
    }
    /* One header, exactly one form: several (a later right key after a wrong one) or a value
     * with spaces around the key is refused, not guessed at. */
    if (n_auth > 1 || (!n_auth && n_x > 1)) {
        srv_call_fail(c, GRPC_STATUS_UNAUTHENTICATED,
                      "more than one %s header: send exactly one",
                      n_auth > 1 ? "authorization" : "x-api-key");
        return -1;
    }
    if (n_auth) key = akey, klen = aklen;
    else if (n_x) key = xkey, klen = xklen;
    if (!key) {
        srv_call_fail(c, GRPC_STATUS_UNAUTHENTICATED,
                      n_auth || n_x ? "malformed API key header: send exactly 'authorization: "
                                      "Bearer <key>' or 'x-api-key: <key>'"
                                    : "missing API key: send 'authorization: Bearer <key>' or "
                                      "'x-api-key: <key>'");
        return -1;
    }
    int t = srv_auth_find(s->o.tenants, key, klen);
    if (t < 0) {
        srv_call_fail(c, GRPC_STATUS_UNAUTHENTICATED, "invalid API key");
        return -1;
    }
    c->tenant = t;
    return 0;
}

/* ---- reflection (bidi stream) ---------------------------------------------------------- */

static void refl_read(srv_call *c);

static void on_refl_read(srv_call *c, int ok)
{
    grpc_byte_buffer *bb = c->r_bb;
    c->r_bb = NULL;
    if (!ok) { /* the call is over */
        if (bb) grpc_byte_buffer_destroy(bb);
        srv_call_unref(c);
        return;
    }
    if (!bb) { /* the client half-closed: done */
        pthread_mutex_lock(&c->mu);
        srv_call_close_locked(c, GRPC_STATUS_OK, NULL);
        pthread_mutex_unlock(&c->mu);
        srv_call_unref(c);
        return;
    }
    grpc_byte_buffer_reader r;
    int rc = KVS_EINVAL;
    uint8_t *out = NULL;
    size_t out_len = 0;
    if (grpc_byte_buffer_reader_init(&r, bb)) {
        grpc_slice s = grpc_byte_buffer_reader_readall(&r);
        grpc_byte_buffer_reader_destroy(&r);
        rc = srv_reflection_answer(c->s->refl, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s),
                                   &out, &out_len);
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_destroy(bb);
    pthread_mutex_lock(&c->mu);
    if (rc) {
        srv_call_close_locked(c, GRPC_STATUS_INVALID_ARGUMENT,
                              "malformed ServerReflectionRequest");
    } else {
        grpc_slice s = grpc_slice_from_copied_buffer((const char *)out, out_len);
        grpc_byte_buffer *ob = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        srv_call_push_locked(c, ob);
    }
    int more = !rc && !c->closing;
    pthread_mutex_unlock(&c->mu);
    free(out);
    if (more) refl_read(c);
    srv_call_unref(c);
}

static void refl_read(srv_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->r_bb;
    c->t_read = (srv_tag){on_refl_read, c};
    srv_call_ref(c);
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_read, NULL) != GRPC_CALL_OK)
        srv_call_unref(c);
}

/* ---- arrival ----------------------------------------------------------------------------- */

static void arm(srv *s, grpc_completion_queue *cq, int method)
{
    srv_call *c = call_new(s, cq, method);
    if (!c) return;
    grpc_call_error e;
    if (method == SRV_M_UNKNOWN)
        e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, cq, cq, &c->t_new);
    else
        e = grpc_server_request_registered_call(s->server, s->method[method], &c->call,
                                                &c->deadline, &c->md,
                                                is_bidi(method) ? NULL : &c->payload, cq, cq,
                                                &c->t_new);
    if (e != GRPC_CALL_OK) call_free(c);
}

static void on_close(srv_call *c, int ok)
{
    (void)ok;
    if (c->cancelled) {
        atomic_store(&c->gone, 1);
        if (c->on_cancel) c->on_cancel(c);
    }
    srv_call_unref(c);
}

static void dispatch(srv_call *c)
{
    switch (c->method) {
    case SRV_M_GENERATE: srv_api_generate(c); break;
    case SRV_M_ABORT: srv_api_abort(c); break;
    case SRV_M_TOKENIZE: srv_api_tokenize(c); break;
    case SRV_M_MODEL_INFO: srv_api_model_info(c); break;
    case SRV_M_SERVER_INFO: srv_api_server_info(c); break;
    case SRV_M_HEALTH_CHECK: srv_health_check(c); break;
    case SRV_M_HEALTH_WATCH: srv_health_watch(c); break;
    case SRV_M_REFLECT_V1:
    case SRV_M_REFLECT_V1ALPHA: refl_read(c); break;
    default: {
        char *m = grpc_slice_to_c_string(c->details.method);
        srv_call_fail(c, GRPC_STATUS_UNIMPLEMENTED, "unknown method %s", m);
        gpr_free(m);
        break;
    }
    }
}

static void on_extra_msg(srv_call *c, int ok)
{
    if (ok && c->r_bb) {
        grpc_byte_buffer_destroy(c->r_bb);
        c->r_bb = NULL;
        srv_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT,
                      "more than one request message on a method that takes one");
    } else if (ok) {
        dispatch(c);
    }
    /* !ok: the call failed or was cancelled; RECV_CLOSE_ON_SERVER reports it */
    srv_call_unref(c);
}

static void on_new(srv_call *c, int ok)
{
    srv *s = c->s;
    if (!ok) { /* server shutting down: this request was never used */
        srv_call_unref(c);
        return;
    }
    if (!atomic_load(&s->shutting_down)) arm(s, c->cq, c->method);
    if (c->method == SRV_M_UNKNOWN) c->deadline = c->details.deadline;
    if (is_kvsieve_method(c->method)) {
        c->counted = 1;
        atomic_fetch_add(&s->live_work, 1);
    }
    /* RECV_CLOSE_ON_SERVER first: it completes early, with cancelled = 1, on a client cancel,
     * a deadline or a disconnect. */
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->t_close = (srv_tag){on_close, c};
    srv_call_ref(c);
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
        srv_call_unref(c);
        srv_call_unref(c);
        return;
    }
    if (atomic_load(&s->shutting_down) && c->method != SRV_M_HEALTH_CHECK) {
        srv_call_fail(c, GRPC_STATUS_UNAVAILABLE, "server shutting down");
        srv_call_unref(c);
        return;
    }
    if (c->method != SRV_M_UNKNOWN && !is_bidi(c->method)) {
        /* One request message on a single-request method: read on to the client's half-close
         * and refuse a second message instead of ignoring it. */
        grpc_op rop;
        memset(&rop, 0, sizeof rop);
        rop.op = GRPC_OP_RECV_MESSAGE;
        rop.data.recv_message.recv_message = &c->r_bb;
        c->t_read = (srv_tag){on_extra_msg, c};
        srv_call_ref(c);
        if (grpc_call_start_batch(c->call, &rop, 1, &c->t_read, NULL) != GRPC_CALL_OK) {
            srv_call_unref(c);
            dispatch(c);
        }
    } else {
        dispatch(c);
    }
    srv_call_unref(c); /* the arrival's reference */
}

/* ---- threads, create, shutdown ------------------------------------------------------------ */

typedef struct cq_arg {
    srv *s;
    int i;
} cq_arg;

static void *cq_thread(void *p)
{
    cq_arg a = *(cq_arg *)p;
    free(p);
    grpc_completion_queue *cq = a.s->cq[a.i];
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        srv_tag *t = ev.tag;
        t->fn(t->c, ev.success);
    }
    return NULL;
}

static void on_shutdown_done(srv_call *c, int ok)
{
    (void)ok;
    srv *s = (srv *)(void *)c; /* the shutdown tag carries the server */
    atomic_store(&s->shutdown_done, 1);
}

int srv_create(const srv_opts *o, srv **out)
{
    srv *s = calloc(1, sizeof *s);
    if (!s) return kvs_error(KVS_ENOMEM, "out of memory");
    s->o = *o;
    if (s->o.n_threads < 1) s->o.n_threads = 1;
    s->t_start = kvs_now();
    atomic_init(&s->shutting_down, 0);
    atomic_init(&s->shutdown_done, 0);
    atomic_init(&s->live_work, 0);
    pthread_mutex_init(&s->watch_mu, NULL);
    s->n_tenants = o->tenants ? o->tenants->n : 1;
    s->tenant_names = calloc((size_t)s->n_tenants, sizeof *s->tenant_names);
    if (!s->tenant_names) {
        free(s);
        return kvs_error(KVS_ENOMEM, "out of memory");
    }
    for (int i = 0; i < s->n_tenants; i++)
        snprintf(s->tenant_names[i], SCHED_NAME_MAX, "%s",
                 o->tenants ? o->tenants->v[i].st.name : "default");
    s->n_params = o->engine ? model_n_params(o->engine->m) : 0;
    int rc = srv_reflection_create(kvs_descriptor_set, kvs_descriptor_set_len, &s->refl);
    if (rc) {
        free(s->tenant_names);
        free(s);
        return rc;
    }

    grpc_init();
    /* No SO_REUSEPORT: a second server on the same port must fail, not share it. */
    grpc_arg args[1];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
    args[0].value.integer = 0;
    grpc_channel_args cargs = {1, args};
    s->server = grpc_server_create(&cargs, NULL);
    for (int m = 0; m < SRV_M_UNKNOWN; m++) {
        s->method[m] = grpc_server_register_method(
            s->server, method_path[m], NULL,
            is_bidi(m) ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    }
    s->n_cq = s->o.n_threads;
    s->cq = calloc((size_t)s->n_cq, sizeof *s->cq);
    s->threads = calloc((size_t)s->n_cq, sizeof *s->threads);
    if (!s->cq || !s->threads) {
        rc = kvs_error(KVS_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < s->n_cq; i++) {
        s->cq[i] = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(s->server, s->cq[i], NULL);
    }
    if (srv_addr_in_use(o->listen)) { /* one line, not gRPC core's multi-line log */
        rc = kvs_error(KVS_EIO, "cannot listen on %s: the address is already in use (another "
                       "server on that port?)", o->listen);
        goto fail;
    }
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    s->port = grpc_server_add_http2_port(s->server, o->listen, creds);
    grpc_server_credentials_release(creds);
    if (s->port <= 0) {
        rc = kvs_error(KVS_EIO, "cannot listen on '%s' (bad address, or the port is in use)",
                       o->listen);
        goto fail;
    }
    grpc_server_start(s->server);
    for (int i = 0; i < s->n_cq; i++)
        for (int m = 0; m < SRV_M_COUNT; m++)
            for (int k = 0; k < arm_count[m]; k++) arm(s, s->cq[i], m);
    for (int i = 0; i < s->n_cq; i++) {
        cq_arg *a = malloc(sizeof *a);
        if (!a) {
            rc = kvs_error(KVS_ENOMEM, "out of memory");
            goto fail_started;
        }
        a->s = s;
        a->i = i;
        if (pthread_create(&s->threads[i], NULL, cq_thread, a)) {
            free(a);
            rc = kvs_error(KVS_EIO, "cannot start a server thread");
            goto fail_started;
        }
        s->threads_started++;
    }
    *out = s;
    return 0;

fail_started:
    srv_begin_shutdown(s);
    srv_finish(s, 0);
    srv_destroy(s);
    return rc;
fail:
    /* Not started: nothing is armed, no thread runs. */
    if (s->cq)
        for (int i = 0; i < s->n_cq; i++) {
            if (!s->cq[i]) continue;
            grpc_completion_queue_shutdown(s->cq[i]);
            while (grpc_completion_queue_next(s->cq[i], gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                       .type != GRPC_QUEUE_SHUTDOWN) {
            }
        }
    grpc_server_destroy(s->server);
    if (s->cq)
        for (int i = 0; i < s->n_cq; i++)
            if (s->cq[i]) grpc_completion_queue_destroy(s->cq[i]);
    free(s->cq);
    free(s->threads);
    srv_reflection_destroy(s->refl);
    free(s->tenant_names);
    pthread_mutex_destroy(&s->watch_mu);
    free(s);
    grpc_shutdown();
    return rc;
}

int srv_port(const srv *s) { return s->port; }
int srv_n_tenants(const srv *s) { return s->n_tenants; }
const char *srv_tenant_name(const srv *s, int i) { return s->tenant_names[i]; }

void srv_begin_shutdown(srv *s)
{
    if (atomic_exchange(&s->shutting_down, 1)) return;
    srv_health_shutdown(s);
    s->shutdown_tag = (srv_tag){on_shutdown_done, (srv_call *)(void *)s};
    grpc_server_shutdown_and_notify(s->server, s->cq[0], &s->shutdown_tag);
    s->shutdown_requested = 1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void srv_finish(srv *s, double flush_s)
{
    srv_begin_shutdown(s);
    /* Let accepted Kvsieve calls send their final messages and statuses. */
    double until = kvs_now() + flush_s;
    while (atomic_load(&s->live_work) > 0 && kvs_now() < until) sleep_ms(5);
    /* Whatever is left (open Watch or reflection streams, clients that stopped reading). */
    grpc_server_cancel_all_calls(s->server);
    while (!atomic_load(&s->shutdown_done)) sleep_ms(5);
    for (int i = 0; i < s->n_cq; i++) grpc_completion_queue_shutdown(s->cq[i]);
    for (int i = 0; i < s->threads_started; i++) pthread_join(s->threads[i], NULL);
    s->threads_started = 0;
}

void srv_destroy(srv *s)
{
    if (!s) return;
    if (!s->shutdown_requested || s->threads_started) srv_finish(s, 0);
    grpc_server_destroy(s->server);
    for (int i = 0; i < s->n_cq; i++) grpc_completion_queue_destroy(s->cq[i]);
    free(s->cq);
    free(s->threads);
    srv_reflection_destroy(s->refl);
    free(s->tenant_names);
    pthread_mutex_destroy(&s->watch_mu);
    free(s);
    grpc_shutdown();
}
