/* load_client.c — the gRPC side of `kvsieve load`: one channel, one completion queue, one
 * thread, up to `concurrency` streaming Generate calls in flight (../shared/docs/grpc-c.md).
 *
 * Each call is three batches posted at once, so three completions end it:
 *   start:  SEND_INITIAL_METADATA (the API key) + SEND_MESSAGE + SEND_CLOSE + RECV_INITIAL_MD
 *   recv:   RECV_MESSAGE, posted again after every message until the stream ends
 *   status: RECV_STATUS_ON_CLIENT
 * The loop waits on the queue with a short deadline so that it can also start open-loop
 * arrivals on time, stop at --duration and redraw the progress line. */
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "kvsieve/v1/kvsieve.pb-c.h"
#include "load/load.h"

#define GENERATE_METHOD "/kvsieve.v1.Kvsieve/Generate"
#define MODEL_INFO_METHOD "/kvsieve.v1.Kvsieve/GetModelInfo"

/* ---- helpers ------------------------------------------------------------------------------- */

static gpr_timespec deadline_in(double s)
{
    if (s <= 0) s = 0;
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_micros((int64_t)(s * 1e6), GPR_TIMESPAN));
}

static grpc_byte_buffer *pack_msg(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static ProtobufCMessage *unpack_msg(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!bb || !grpc_byte_buffer_reader_init(&r, bb)) return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    return m;
}

static grpc_channel *channel_create(const char *target)
{
    grpc_arg args[1];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_STRING;
    args[0].key = (char *)GRPC_ARG_PRIMARY_USER_AGENT_STRING;
    args[0].value.string = (char *)"kvsieve-load/0.1";
    grpc_channel_args cargs = {1, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    return ch;
}

/* The authorization metadata of a tenant: 0 or 1 entries. */
typedef struct auth_md {
    grpc_metadata md;
    int n;
} auth_md;

static void auth_md_init(auth_md *a, const load_tenant *t)
{
    memset(a, 0, sizeof *a);
    if (!t->key || !*t->key) return;
    size_t n = strlen(t->key) + 8;
    char *v = malloc(n);
    if (!v) return;
    snprintf(v, n, "Bearer %s", t->key);
    a->md.key = grpc_slice_from_static_string("authorization");
    a->md.value = grpc_slice_from_copied_string(v);
    memset(v, 0, n);
    free(v);
    a->n = 1;
}

static void auth_md_deinit(auth_md *a)
{
    if (a->n) grpc_slice_unref(a->md.value);
    a->n = 0;
}

/* ---- probe: GetModelInfo, within the connect timeout --------------------------------------- */

/* One unary GetModelInfo. Returns the status; fills *mi on OK, msg otherwise. */
static grpc_status_code model_info_call(grpc_channel *ch, grpc_completion_queue *cq,
                                        const auth_md *auth, double timeout,
                                        load_model_info *mi, char *msg, size_t msg_cap)
{
    Kvsieve__V1__GetModelInfoRequest q = KVSIEVE__V1__GET_MODEL_INFO_REQUEST__INIT;
    grpc_byte_buffer *send = pack_msg(&q.base), *recv = NULL;
    grpc_slice method = grpc_slice_from_static_string(MODEL_INFO_METHOD);
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method,
                                               NULL, deadline_in(timeout), NULL);
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *err_str = NULL;
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = (size_t)auth->n;
    ops[0].data.send_initial_metadata.metadata = auth->n ? (grpc_metadata *)&auth->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.error_string = &err_str;
    int tag = 0;
    if (grpc_call_start_batch(call, ops, 6, &tag, NULL) == GRPC_CALL_OK)
        grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    else snprintf(msg, msg_cap, "cannot start the call");
    if (status == GRPC_STATUS_OK) {
        Kvsieve__V1__GetModelInfoResponse *r = (Kvsieve__V1__GetModelInfoResponse *)unpack_msg(
            &kvsieve__v1__get_model_info_response__descriptor, recv);
        if (!r) {
            status = GRPC_STATUS_INTERNAL;
            snprintf(msg, msg_cap, "malformed GetModelInfoResponse (is this a kvsieve server?)");
        } else {
            memset(mi, 0, sizeof *mi);
            mi->known = 1;
            snprintf(mi->name, sizeof mi->name, "%s", r->name);
            mi->n_vocab = r->n_vocab;
            mi->n_ctx = r->n_ctx;
            mi->bos = r->bos_token_id;
            mi->eos = r->eos_token_id;
            snprintf(mi->default_policy, sizeof mi->default_policy, "%s", r->default_policy);
            size_t off = 0;
            for (size_t i = 0; i < r->n_policies && off < sizeof mi->policies; i++) {
                int w = snprintf(mi->policies + off, sizeof mi->policies - off, "%s%s",
                                 i ? "," : "", r->policies[i]->name);
                if (w > 0) off += (size_t)w;
            }
            kvsieve__v1__get_model_info_response__free_unpacked(r, NULL);
        }
    } else {
        char *d = grpc_slice_to_c_string(details);
        snprintf(msg, msg_cap, "%s", *d ? d : (err_str ? err_str : ""));
        gpr_free(d);
    }
    if (recv) grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    grpc_slice_unref(details);
    if (err_str) gpr_free((void *)err_str);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_call_unref(call);
    return status;
}

int load_client_probe(const load_opts *o, const load_workload *w, load_model_info *mi)
{
    memset(mi, 0, sizeof *mi);
    grpc_channel *ch = channel_create(o->target);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    int rc = 0;
    for (int i = 0; i < w->n_tenants; i++) {
        auth_md auth;
        auth_md_init(&auth, &w->tenants[i]);
        char msg[512] = "";
        load_model_info got;
        double t0 = kvs_now();
        grpc_status_code st =
            model_info_call(ch, cq, &auth, o->connect_timeout, &got, msg, sizeof msg);
        double took = kvs_now() - t0;
        auth_md_deinit(&auth);
        if (st == GRPC_STATUS_OK) {
            if (!mi->known) *mi = got;
            continue;
        }
        if (st == GRPC_STATUS_UNAVAILABLE || st == GRPC_STATUS_DEADLINE_EXCEEDED) {
            /* Say "within Ns" only when it took that long; a refused connection fails at once. */
            if (took >= 0.9 * o->connect_timeout)
                fprintf(stderr, "kvsieve load: cannot reach %s within %gs: %s: %s\n", o->target,
                        o->connect_timeout, load_status_name(st), msg);
            else
                fprintf(stderr, "kvsieve load: cannot connect to %s (refused after %.2fs: "
                        "nothing listens there?): %s: %s\n", o->target, took,
                        load_status_name(st), msg);
            fprintf(stderr, "  (is `kvsieve serve --listen %s` running? Load-test only servers "
                    "you run.)\n", o->target);
            rc = -1;
            break;
        }
        fprintf(stderr, "kvsieve load: warning: tenant '%s': GetModelInfo failed with %s: %s "
                "(its requests will likely fail the same way)\n", w->tenants[i].name,
                load_status_name(st), msg);
    }
    grpc_channel_destroy(ch);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    return rc;
}

/* ---- the run -------------------------------------------------------------------------------- */

enum { TAG_START, TAG_RECV, TAG_STATUS };

struct load_call;
typedef struct call_tag {
    struct load_call *c;
    int kind;
} call_tag;

typedef struct load_call {
    grpc_call *call;
    call_tag tags[3];
    int pending;              /* batches not yet completed */
    int in_use;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code status;
    grpc_slice details;
    const char *err_str;
    grpc_byte_buffer *send_bb, *recv_bb;
    char client_err[96];      /* a local failure that overrides the status */
    double *itl;              /* this request's inter-token gaps (kept only if it ends OK) */
    size_t n_itl, cap_itl;
    load_record rec;
} load_call;

#define RATE_RING 8

typedef struct run_state run_state;
struct run_state {
    const load_opts *o;
    load_workload *w;
    load_results *res;
    FILE *rec_file;
    grpc_channel *ch;
    grpc_completion_queue *cq;
    void *reg;
    auth_md *auth;            /* per tenant */
    load_call *calls;         /* o->concurrency slots */
    int *free_slots, n_free, in_flight;
    double t0;
    long long ok, errors, tokens;
    int tty, cancelled;
    double next_tick;
    struct { double t; long long tokens, done; } ring[RATE_RING];
    int ring_n, ring_i;
};

static int push_gaps(double **v, size_t *n, size_t *cap, const double *gaps, size_t k)
{
    if (*n + k > *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        while (nc < *n + k) nc *= 2;
        double *nv = realloc(*v, nc * sizeof *nv);
        if (!nv) return -1;
        *v = nv;
        *cap = nc;
    }
    memcpy(*v + *n, gaps, k * sizeof *gaps);
    *n += k;
    return 0;
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

static int start_batch(load_call *c, const grpc_op *ops, size_t n, int kind)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->tags[kind], NULL);
    if (e != GRPC_CALL_OK) {
        if (!c->client_err[0])
            snprintf(c->client_err, sizeof c->client_err, "client: grpc_call_start_batch "
                     "failed (%d)", (int)e);
        return -1;
    }
    c->pending++;
    return 0;
}

static void post_recv(load_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    if (start_batch(c, &op, 1, TAG_RECV)) grpc_call_cancel(c->call, NULL);
}

static void call_finish(run_state *s, load_call *c);

/* Start the next request in a free slot. Returns 0 or -1 (out of memory). */
static int call_start(run_state *s, double now, double t_sched)
{
    load_workload *w = s->w;
    load_req q;
    if (load_workload_next(w, &q)) return -1;
    int slot = s->free_slots[--s->n_free];
    load_call *c = &s->calls[slot];
    double *itl = c->itl; /* the slot's gap buffer is reused */
    size_t cap_itl = c->cap_itl;
    memset(c, 0, sizeof *c);
    c->itl = itl;
    c->cap_itl = cap_itl;
    for (int k = 0; k < 3; k++) c->tags[k] = (call_tag){c, k};
    c->in_use = 1;
    c->details = grpc_empty_slice();
    grpc_metadata_array_init(&c->init_md);
    grpc_metadata_array_init(&c->trail_md);
    load_record *r = &c->rec;
    r->idx = s->res->sent++;
    r->tenant = q.tenant;
    r->policy = q.policy;
    r->prompt = q.prompt;
    r->input_len = q.prompt >= 0 ? -1 : q.n_ids;
    r->max_tokens = q.max_tokens;
    r->t_sched = t_sched - s->t0;
    r->t_send = now - s->t0;
    r->status = GRPC_STATUS_UNKNOWN;
    if (t_sched >= 0 && now - t_sched > 0.010) s->res->late++;

    Kvsieve__V1__GenerateRequest m = KVSIEVE__V1__GENERATE_REQUEST__INIT;
    Kvsieve__V1__TokenIds ti = KVSIEVE__V1__TOKEN_IDS__INIT;
    if (q.prompt >= 0) {
        m.prompt_case = KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TEXT;
        m.text = w->prompts[q.prompt].text;
        m.chat = w->chat;
    } else {
        ti.n_ids = (size_t)q.n_ids;
        ti.ids = q.ids;
        m.prompt_case = KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TOKEN_IDS;
        m.token_ids = &ti;
    }
    m.max_tokens = q.max_tokens;
    m.ignore_eos = w->ignore_eos;
    m.policy = w->policies[q.policy].name;
    m.policy_args = w->policies[q.policy].args;
    c->send_bb = pack_msg(&m.base);
    load_req_clear(&q);

    c->call = grpc_channel_create_registered_call(s->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
                                                  s->reg, deadline_in(s->o->timeout), NULL);
    const auth_md *a = &s->auth[r->tenant];
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = (size_t)a->n;
    ops[0].data.send_initial_metadata.metadata = a->n ? (grpc_metadata *)&a->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->init_md;
    int bad = start_batch(c, ops, 4, TAG_START);
    grpc_op st;
    memset(&st, 0, sizeof st);
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &c->trail_md;
    st.data.recv_status_on_client.status = &c->status;
    st.data.recv_status_on_client.status_details = &c->details;
    st.data.recv_status_on_client.error_string = &c->err_str;
    bad |= start_batch(c, &st, 1, TAG_STATUS);
    if (!bad) post_recv(c);
    else grpc_call_cancel(c->call, NULL);
    s->in_flight++;
    if (c->pending == 0) { /* no batch started, so no completion will come */
        c->rec.t_end = now - s->t0;
        call_finish(s, c);
    }
    return 0;
}

static void on_message(run_state *s, load_call *c, double now)
{
    Kvsieve__V1__GenerateResponse *m = (Kvsieve__V1__GenerateResponse *)unpack_msg(
        &kvsieve__v1__generate_response__descriptor, c->recv_bb);
    load_record *r = &c->rec;
    r->n_msgs++;
    if (!m) {
        snprintf(c->client_err, sizeof c->client_err, "client: malformed GenerateResponse");
        grpc_call_cancel(c->call, NULL);
        return;
    }
    if (m->request_id) r->request_id = m->request_id;
    int k = (int)m->n_token_ids;
    if (k > 0) {
        double t = now - s->t0;
        if (r->out_tokens == 0) r->t_first = t;
        else {
            /* One gap per token: the gap split evenly over the message's tokens. */
            double g[64];
            for (int left = k; left > 0; left -= 64) {
                int m = left < 64 ? left : 64;
                for (int i = 0; i < m; i++) g[i] = (t - r->t_last) / k;
                push_gaps(&c->itl, &c->n_itl, &c->cap_itl, g, (size_t)m);
            }
        }
        r->t_last = t;
        r->out_tokens += k;
        s->tokens += k;
    }
    if (m->finish) {
        const Kvsieve__V1__Finish *f = m->finish;
        r->has_finish = 1;
        r->finish_reason = (int)f->reason;
        r->prompt_tokens = f->prompt_tokens;
        r->completion_tokens = f->completion_tokens;
        r->srv_queue_s = f->queue_time_s;
        r->srv_ttft_s = f->ttft_s;
        r->srv_e2e_s = f->e2e_s;
        r->evicted_tokens = f->evicted_tokens;
        r->preemptions = f->preemptions;
        snprintf(r->policy_ran, sizeof r->policy_ran, "%s", f->policy);
    }
    kvsieve__v1__generate_response__free_unpacked(m, NULL);
}

/* All three batches are done: record the request and free the slot. */
static void call_finish(run_state *s, load_call *c)
{
    load_record *r = &c->rec;
    char msg[512] = "";
    if (c->client_err[0]) {
        r->status = GRPC_STATUS_INTERNAL;
        snprintf(msg, sizeof msg, "%s", c->client_err);
    } else {
        r->status = (int)c->status;
        char *d = grpc_slice_to_c_string(c->details);
        snprintf(msg, sizeof msg, "%s", *d || !c->err_str || !r->status ? d : c->err_str);
        gpr_free(d);
    }
    if (s->cancelled && r->status == GRPC_STATUS_CANCELLED) r->interrupted = 1;
    if (r->status < 0 || r->status > 16) r->status = GRPC_STATUS_UNKNOWN;
    if (r->status != 0 && !r->interrupted && !s->res->first_msg[r->status])
        s->res->first_msg[r->status] = strdup(msg);
    if (r->status == 0 && c->n_itl &&
        push_gaps(&s->res->itl, &s->res->n_itl, &s->res->cap_itl, c->itl, c->n_itl))
        fprintf(stderr, "kvsieve load: out of memory: ITL of request %lld is not recorded\n",
                r->idx);
    if (r->status == 0) s->ok++;
    else if (!r->interrupted) s->errors++;
    if (push_record(s->res, r))
        fprintf(stderr, "kvsieve load: out of memory: request %lld is not recorded\n", r->idx);
    if (s->rec_file) load_record_write_json(s->rec_file, s->w, r, msg);

    if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
    grpc_slice_unref(c->details);
    if (c->err_str) gpr_free((void *)c->err_str);
    grpc_metadata_array_destroy(&c->init_md);
    grpc_metadata_array_destroy(&c->trail_md);
    if (c->call) grpc_call_unref(c->call);
    c->in_use = 0;
    c->call = NULL;
    s->free_slots[s->n_free++] = (int)(c - s->calls);
    s->in_flight--;
}

static void on_event(run_state *s, const grpc_event *ev)
{
    call_tag *t = ev->tag;
    load_call *c = t->c;
    double now = kvs_now();
    c->pending--;
    switch (t->kind) {
    case TAG_START:
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
        break;
    case TAG_RECV:
        if (ev->success && c->recv_bb) {
            on_message(s, c, now);
            grpc_byte_buffer_destroy(c->recv_bb);
            c->recv_bb = NULL;
            post_recv(c);
        } else if (c->recv_bb) {
            grpc_byte_buffer_destroy(c->recv_bb);
            c->recv_bb = NULL;
        }
        break;
    case TAG_STATUS: c->rec.t_end = now - s->t0; break;
    }
    if (c->pending == 0) call_finish(s, c);
}

/* ---- progress line ------------------------------------------------------------------------ */

static void fmt_secs(char *buf, size_t cap, double s)
{
    if (s < 0 || !isfinite(s)) snprintf(buf, cap, "?");
    else if (s < 100) snprintf(buf, cap, "%.0fs", ceil(s));
    else if (s < 6000) snprintf(buf, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, cap, "%dh%02dm", (int)s / 3600, (int)s / 60 % 60);
}

enum { PROGRESS_SEED, PROGRESS_TICK, PROGRESS_FINAL };

/* Update the rate window; print the line (except when seeding). */
static void progress(run_state *s, double now, int mode)
{
    int final = mode == PROGRESS_FINAL;
    const load_opts *o = s->o;
    double el = now - s->t0;
    long long done = s->ok + s->errors;
    /* Current rates over the last few ticks. */
    int oldest = s->ring_n < RATE_RING ? 0 : s->ring_i;
    double tok_rate = 0, req_rate = 0;
    if (s->ring_n) {
        double dt = now - s->ring[oldest].t;
        if (dt > 0) {
            tok_rate = (double)(s->tokens - s->ring[oldest].tokens) / dt;
            req_rate = (double)(done - s->ring[oldest].done) / dt;
        }
    }
    s->ring[s->ring_i].t = now;
    s->ring[s->ring_i].tokens = s->tokens;
    s->ring[s->ring_i].done = done;
    s->ring_i = (s->ring_i + 1) % RATE_RING;
    if (s->ring_n < RATE_RING) s->ring_n++;
    if (!o->progress || mode == PROGRESS_SEED) return;
    double eta = -1;
    if (o->requests && done > 0) eta = (double)(o->requests - done) * el / (double)done;
    if (o->duration > 0) {
        double d = o->duration - el;
        if (d < 0) d = 0;
        if (eta < 0 || d < eta) eta = d;
    }
    char e1[16], e2[16];
    snprintf(e1, sizeof e1, "%.1fs", el);
    fmt_secs(e2, sizeof e2, final ? 0 : eta);
    fprintf(stderr, "%s[%s] sent %lld | ok %lld | err %lld | in flight %d | %.1f tok/s | "
            "%.2f req/s | ETA %s%s", s->tty ? "\r\033[K" : "", e1, s->res->sent, s->ok,
            s->errors, s->in_flight, tok_rate, req_rate, e2, s->tty && !final ? "" : "\n");
    fflush(stderr);
}

/* ---- main loop ------------------------------------------------------------------------------ */

int load_client_run(const load_opts *o, load_workload *w, load_results *res, FILE *rec_file)
{
    run_state s;
    memset(&s, 0, sizeof s);
    s.o = o;
    s.w = w;
    s.res = res;
    s.rec_file = rec_file;
    s.tty = isatty(STDERR_FILENO);
    int rc = -1;
    s.calls = calloc((size_t)o->concurrency, sizeof *s.calls);
    s.free_slots = malloc((size_t)o->concurrency * sizeof *s.free_slots);
    s.auth = calloc((size_t)w->n_tenants, sizeof *s.auth);
    if (!s.calls || !s.free_slots || !s.auth) {
        fprintf(stderr, "kvsieve load: out of memory\n");
        free(s.calls);
        free(s.free_slots);
        free(s.auth);
        return -1;
    }
    for (int i = o->concurrency - 1; i >= 0; i--) s.free_slots[s.n_free++] = i;
    for (int i = 0; i < w->n_tenants; i++) auth_md_init(&s.auth[i], &w->tenants[i]);
    s.ch = channel_create(o->target);
    s.cq = grpc_completion_queue_create_for_next(NULL);
    s.reg = grpc_channel_register_call(s.ch, GENERATE_METHOD, NULL, NULL);

    const double tick = s.tty ? 0.5 : 10.0;
    res->t_start_wall = (double)time(NULL);
    s.t0 = kvs_now();
    s.next_tick = s.t0 + tick;
    progress(&s, s.t0, PROGRESS_SEED);
    double next_arrival = s.t0;
    int sending = 1;
    for (;;) {
        double now = kvs_now();
        if (o->stop && *o->stop && !s.cancelled) {
            s.cancelled = 1;
            res->interrupted = 1;
            sending = 0;
            for (int i = 0; i < o->concurrency; i++)
                if (s.calls[i].in_use && s.calls[i].call) grpc_call_cancel(s.calls[i].call, NULL);
        }
        if (sending && ((o->requests && res->sent >= o->requests) ||
                        (o->duration > 0 && now - s.t0 >= o->duration)))
            sending = 0;
        while (sending && s.n_free > 0 && (o->rate <= 0 || next_arrival <= now) &&
               !(o->requests && res->sent >= o->requests)) {
            if (call_start(&s, now, o->rate > 0 ? next_arrival : now)) {
                fprintf(stderr, "kvsieve load: out of memory\n");
                sending = 0;
                s.cancelled = 1;
                break;
            }
            if (o->rate > 0) next_arrival += load_rng_exp(&w->rng, 1.0 / o->rate);
        }
        if (!sending && s.in_flight == 0) break;
        if (now >= s.next_tick) {
            progress(&s, now, PROGRESS_TICK);
            s.next_tick += tick;
            if (s.next_tick < now) s.next_tick = now + tick;
        }
        double wake = s.next_tick;
        if (sending && o->rate > 0 && s.n_free > 0 && next_arrival < wake) wake = next_arrival;
        if (sending && o->duration > 0 && s.t0 + o->duration < wake) wake = s.t0 + o->duration;
        if (wake > now + 0.05) wake = now + 0.05; /* notice Ctrl-C soon */
        grpc_event ev = grpc_completion_queue_next(s.cq, deadline_in(wake - now), NULL);
        if (ev.type == GRPC_OP_COMPLETE) {
            on_event(&s, &ev);
            /* Drain whatever else is ready without waiting. */
            for (int k = 0; k < 256; k++) {
                ev = grpc_completion_queue_next(s.cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL);
                if (ev.type != GRPC_OP_COMPLETE) break;
                on_event(&s, &ev);
            }
        }
    }
    double t_end = kvs_now();
    res->elapsed = 0;
    for (size_t i = 0; i < res->n; i++) /* first send -> last status */
        if (res->recs[i].t_end > res->elapsed) res->elapsed = res->recs[i].t_end;
    if (res->elapsed <= 0) res->elapsed = t_end - s.t0;
    progress(&s, t_end, PROGRESS_FINAL);
    rc = 0;

    grpc_channel_destroy(s.ch);
    grpc_completion_queue_shutdown(s.cq);
    while (grpc_completion_queue_next(s.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(s.cq);
    for (int i = 0; i < w->n_tenants; i++) auth_md_deinit(&s.auth[i]);
    for (int i = 0; i < o->concurrency; i++) free(s.calls[i].itl);
    free(s.auth);
    free(s.calls);
    free(s.free_slots);
    return rc;
}
