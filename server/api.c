/* api.c — kvsieve.v1.Kvsieve: Generate (server streaming, fed by the engine thread), Abort,
 * Tokenize, GetModelInfo, GetServerInfo. Validation and status codes follow docs/API.md. */
#include <grpc/support/time.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "kvsieve/v1/kvsieve.pb-c.h"
#include "memory/policy.h"
#include "request_policy.h"
#include "srv_internal.h"

#define KVS_VERSION_STRING "0.1.0"

/* ---- prompt ------------------------------------------------------------------------------- */

/* Text (optionally wrapped in the chat template) -> the ids Generate runs: BOS first when the
 * model asks for one. tok_* with a const ctx are safe on server threads. Returns 0, or a gRPC
 * status with a message in err. */
static grpc_status_code build_prompt(srv *s, const char *text, int chat, const char *system,
                                     int32_t **ids_out, int *n_out, char *err, size_t errsz)
{
    const tok_ctx *tok = s->o.engine->tok;
    char *wrapped = NULL;
    const char *src = text;
    *ids_out = NULL;
    *n_out = 0;
    if (chat) {
        const char *sys = system && *system ? system : NULL;
        int need = tok_chat_prompt(tok, sys, text, NULL, 0);
        if (need < 0) {
            snprintf(err, errsz, "chat template: %s", kvs_last_error());
            return GRPC_STATUS_FAILED_PRECONDITION;
        }
        wrapped = malloc((size_t)need + 1);
        if (!wrapped || tok_chat_prompt(tok, sys, text, wrapped, (size_t)need + 1) != need) {
            free(wrapped);
            snprintf(err, errsz, "out of memory");
            return GRPC_STATUS_RESOURCE_EXHAUSTED;
        }
        src = wrapped;
    }
    size_t len = strlen(src);
    int n = tok_encode(tok, src, len, chat, NULL, 0);
    if (n < 0) {
        free(wrapped);
        snprintf(err, errsz, "tokenizer: %s", kvs_last_error());
        return GRPC_STATUS_INVALID_ARGUMENT;
    }
    int bos = tok_add_bos(tok) && tok_bos(tok) >= 0;
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) {
        free(wrapped);
        snprintf(err, errsz, "out of memory");
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    if (bos) ids[0] = tok_bos(tok);
    tok_encode(tok, src, len, chat, ids + bos, n);
    free(wrapped);
    *ids_out = ids;
    *n_out = n + bos;
    return GRPC_STATUS_OK;
}

static const char *tenant_name(const srv_call *c) { return c->s->tenant_names[c->tenant]; }

/* ---- Generate ------------------------------------------------------------------------------- */

typedef struct gen_state {
    uint64_t request_id;
    int submitted;
    int messages;             /* messages built so far */
    int header_pending;       /* the first message (request id only) is still owed */
    int32_t *ids;             /* tokens not yet sent */
    size_t n_ids, cap_ids;
    char *text;               /* their text, NUL-terminated */
    size_t n_text, cap_text;
    int have_final, final_sent;
    sched_event fin;          /* the FINISH event (message copied into fin_msg) */
    char fin_msg[512];
    char policy[SCHED_NAME_MAX]; /* the policy that runs (for the final message and metrics) */
    double t_submit, t_last;
    int n_tokens;
} gen_state;

static void gen_free(void *p)
{
    gen_state *g = p;
    if (!g) return;
    free(g->ids);
    free(g->text);
    free(g);
}

static Kvsieve__V1__FinishReason finish_reason(int r)
{
    switch (r) {
    case SCHED_FINISH_STOP: return KVSIEVE__V1__FINISH_REASON__FINISH_REASON_STOP;
    case SCHED_FINISH_LENGTH: return KVSIEVE__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    case SCHED_FINISH_ABORTED: return KVSIEVE__V1__FINISH_REASON__FINISH_REASON_ABORTED;
    case SCHED_FINISH_DEADLINE: return KVSIEVE__V1__FINISH_REASON__FINISH_REASON_DEADLINE;
    case SCHED_FINISH_SHUTDOWN: return KVSIEVE__V1__FINISH_REASON__FINISH_REASON_SHUTDOWN;
    default: return KVSIEVE__V1__FINISH_REASON__FINISH_REASON_ERROR;
    }
}

static const char *finish_name(int r)
{
    static const char *const n[] = {"stop", "length", "aborted", "deadline", "shutdown", "error"};
    return r >= 0 && r <= SCHED_FINISH_ERROR ? n[r] : "error";
}

/* Everything pending in one message: coalescing keeps a slow client from costing one HTTP/2
 * write per token. Called under c->mu. */
static grpc_byte_buffer *gen_next_msg(srv_call *c)
{
    gen_state *g = c->impl;
    int final_now = g->have_final && !g->final_sent;
    if (!g->header_pending && g->n_ids == 0 && !final_now) return NULL;
    Kvsieve__V1__GenerateResponse r = KVSIEVE__V1__GENERATE_RESPONSE__INIT;
    Kvsieve__V1__Finish f = KVSIEVE__V1__FINISH__INIT;
    r.request_id = g->request_id;
    r.n_token_ids = g->n_ids;
    r.token_ids = g->ids;
    r.text = g->text && g->n_text ? g->text : (char *)"";
    if (final_now) {
        f.reason = finish_reason(g->fin.finish_reason);
        f.message = g->fin_msg;
        f.prompt_tokens = g->fin.prompt_tokens;
        f.completion_tokens = g->fin.completion_tokens;
        f.queue_time_s = g->fin.queue_time_s;
        f.ttft_s = g->fin.ttft_s;
        f.e2e_s = g->fin.e2e_s;
        f.evicted_tokens = g->fin.evicted_tokens;
        f.preemptions = g->fin.preemptions;
        f.policy = g->policy;
        r.finish = &f;
        g->final_sent = 1;
    }
    grpc_byte_buffer *bb = srv_pack(&r.base);
    g->n_ids = 0;
    g->n_text = 0;
    if (g->text) g->text[0] = 0;
    g->header_pending = 0;
    g->messages++;
    return bb;
}

static int gen_append(gen_state *g, int32_t id, const char *text, size_t len)
{
    if (g->n_ids == g->cap_ids) {
        size_t cap = g->cap_ids ? 2 * g->cap_ids : 16;
        int32_t *p = realloc(g->ids, cap * sizeof *p);
        if (!p) return -1;
        g->ids = p;
        g->cap_ids = cap;
    }
    g->ids[g->n_ids++] = id;
    if (g->n_text + len + 1 > g->cap_text) {
        size_t cap = g->cap_text ? 2 * g->cap_text : 256;
        while (cap < g->n_text + len + 1) cap *= 2;
        char *p = realloc(g->text, cap);
        if (!p) return -1;
        g->text = p;
        g->cap_text = cap;
    }
    if (len) memcpy(g->text + g->n_text, text, len);
    g->n_text += len;
    g->text[g->n_text] = 0;
    return 0;
}

/* Engine thread: results of one request. Quick: copy, queue, start a write. */
static void gen_on_event(void *user, const sched_event *ev)
{
    srv_call *c = user;
    srv *s = c->s;
    gen_state *g = c->impl;
    double now = kvs_now();
    double ttft = -1, itl = -1;
    pthread_mutex_lock(&c->mu);
    if (!g->request_id) g->request_id = ev->request_id;
    if (ev->type == SCHED_EV_TOKEN) {
        if (g->n_tokens == 0) ttft = now - g->t_submit;
        else itl = now - g->t_last;
        g->t_last = now;
        g->n_tokens++;
        if (!atomic_load(&c->gone)) {
            if (gen_append(g, ev->token, ev->text ? ev->text : "", ev->text ? ev->text_len : 0))
                srv_call_close_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            else srv_call_pump_locked(c);
        }
        pthread_mutex_unlock(&c->mu);
        if (ttft >= 0) srv_metrics_ttft(s->o.metrics, c->tenant, ttft);
        if (itl >= 0) srv_metrics_itl(s->o.metrics, c->tenant, itl);
        return;
    }
    /* SCHED_EV_FINISH: the last event of this request; the engine's reference goes. */
    g->fin = *ev;
    g->fin.message = NULL;
    g->fin.text = NULL;
    snprintf(g->fin_msg, sizeof g->fin_msg, "%s", ev->message ? ev->message : "");
    g->have_final = 1;
    grpc_status_code code = GRPC_STATUS_OK;
    char msg[640] = "";
    switch (ev->finish_reason) {
    case SCHED_FINISH_STOP:
    case SCHED_FINISH_LENGTH: break;
    case SCHED_FINISH_ABORTED:
        code = GRPC_STATUS_CANCELLED;
        snprintf(msg, sizeof msg, "request %llu was aborted", (unsigned long long)ev->request_id);
        break;
    case SCHED_FINISH_DEADLINE:
        code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(msg, sizeof msg, "deadline exceeded after %d generated tokens",
                 ev->completion_tokens);
        break;
    case SCHED_FINISH_SHUTDOWN:
        code = GRPC_STATUS_UNAVAILABLE;
        snprintf(msg, sizeof msg,
                 "server shutting down: request stopped after the grace period with %d tokens "
                 "generated (retry on another server)",
                 ev->completion_tokens);
        break;
    default:
        code = GRPC_STATUS_INTERNAL;
        snprintf(msg, sizeof msg, "engine error: %s",
                 ev->message && *ev->message ? ev->message : kvs_strerror(ev->status));
        break;
    }
    if (!atomic_load(&c->gone)) srv_call_close_locked(c, code, msg);
    pthread_mutex_unlock(&c->mu);
    srv_metrics_finish(s->o.metrics, c->tenant, g->policy, ev, now - g->t_submit);
    if (s->o.verbose)
        fprintf(stderr,
                "kvsieve serve: request %llu tenant=%s finish=%s prompt=%d completion=%d "
                "queue=%.3fs ttft=%.3fs e2e=%.3fs evicted=%lld policy=%s%s%s\n",
                (unsigned long long)ev->request_id, tenant_name(c),
                finish_name(ev->finish_reason), ev->prompt_tokens, ev->completion_tokens,
                ev->queue_time_s, ev->ttft_s, ev->e2e_s, (long long)ev->evicted_tokens,
                g->policy, ev->message && *ev->message ? " msg=" : "",
                ev->message ? ev->message : "");
    srv_call_unref(c);
}

/* Cq thread: the client cancelled, its deadline passed or it went away. Never call the loop
 * with c->mu held (the engine thread takes c->mu inside the loop's callbacks). */
static void gen_on_cancel(srv_call *c)
{
    gen_state *g = c->impl;
    pthread_mutex_lock(&c->mu);
    int submitted = g->submitted, done = g->have_final;
    uint64_t id = g->request_id;
    pthread_mutex_unlock(&c->mu);
    if (!submitted || done) return;
    /* gRPC cancels a call whose deadline passed before the loop's own check sees it: record
     * that as DEADLINE, not as an abort. */
    /* The client's deadline is a little earlier than the server's copy (computed on arrival
     * from grpc-timeout), and the client may reset the stream when its own passes: a cancel
     * within 250 ms of the server's deadline is that deadline. */
    int expired = gpr_time_cmp(c->deadline, gpr_inf_future(c->deadline.clock_type)) != 0 &&
                  gpr_time_cmp(gpr_time_add(gpr_now(c->deadline.clock_type),
                                            gpr_time_from_millis(250, GPR_TIMESPAN)),
                               c->deadline) >= 0;
    kvs_loop_cancel(c->s->o.loop, id, NULL, expired ? SCHED_FINISH_DEADLINE : SCHED_FINISH_ABORTED);
}

static int copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

void srv_api_generate(srv_call *c)
{
    srv *s = c->s;
    if (srv_call_auth(c)) return;
    Kvsieve__V1__GenerateRequest *q = (Kvsieve__V1__GenerateRequest *)srv_unpack_call(
        c, &kvsieve__v1__generate_request__descriptor, "GenerateRequest");
    if (!q) return;
    const model_config *cfg = &s->o.engine->m->cfg;
    int32_t *ids = NULL;
    int n_ids = 0;
    char err[512];
    grpc_status_code code = GRPC_STATUS_OK;
    sched_params p;
    memset(&p, 0, sizeof p);

    /* Validation the loop cannot do (proto shape) or does better with our field names. */
    if (q->prompt_case == KVSIEVE__V1__GENERATE_REQUEST__PROMPT__NOT_SET ||
        (q->prompt_case == KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TEXT && !q->text[0] &&
         !q->chat) ||
        (q->prompt_case == KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TOKEN_IDS &&
         q->token_ids->n_ids == 0)) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "the prompt is empty: set text or token_ids");
    } else if (q->prompt_case == KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TOKEN_IDS && q->chat) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "chat applies to a text prompt, not to token_ids");
    } else if (q->system[0] && !q->chat) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "system only applies with chat = true");
    } else if (q->max_tokens < 1) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "max_tokens is %d; it is required and must be >= 1",
                 q->max_tokens);
    } else if (q->max_tokens > cfg->n_ctx) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "max_tokens is %d; the model's context is %d tokens",
                 q->max_tokens, cfg->n_ctx);
    } else if (q->n_stop > SCHED_MAX_STOP || q->n_stop_token_ids > SCHED_MAX_STOP) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "at most %d stop strings and %d stop_token_ids",
                 SCHED_MAX_STOP, SCHED_MAX_STOP);
    } else if (copy_field(p.policy, sizeof p.policy, q->policy)) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "policy name longer than %zu bytes", sizeof p.policy - 1);
    } else if (copy_field(p.policy_args, sizeof p.policy_args, q->policy_args)) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "policy_args longer than %zu bytes", sizeof p.policy_args - 1);
    }
    if (!code && !q->policy[0] && q->policy_args[0]) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "policy_args needs policy (the server's default policy keeps "
                 "the server's options)");
    }
    if (!code && q->policy_args[0]) {
        /* Options naming files on the server are the operator's, not the client's. */
        const char *cur = q->policy_args;
        char key[64], val[SCHED_ARGS_MAX];
        int r;
        while ((r = pol_args_next(&cur, key, sizeof key, val, sizeof val)) > 0)
            if (!strcmp(key, "filters")) {
                code = GRPC_STATUS_INVALID_ARGUMENT;
                snprintf(err, sizeof err, "policy_args: filters= cannot be set by a request; "
                         "the server uses its own filters file");
                break;
            }
    }
    if (!code && !pol_args_sized(q->policy, q->policy_args)) {
        /* a policy with neither ratio nor budget would evict nothing: say so (as HTTP does) */
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "policy '%s' needs ratio (fraction of tokens evicted, e.g. "
                 "ratio=0.5) or budget (tokens kept per head, e.g. budget=256) in policy_args: "
                 "without either it evicts nothing", q->policy);
    }
    if (!code && q->kv_dtype && q->kv_dtype[0] &&
        srv_request_kv_dtype(q->kv_dtype, s->o.kv_dtype, err, sizeof err))
        code = GRPC_STATUS_INVALID_ARGUMENT;
    if (!code && !strcmp(q->policy, "qfilters")) {
        const char *qf = s->o.qfilters_path;
        size_t n = strlen(p.policy_args);
        if (!qf || !*qf) {
            code = GRPC_STATUS_FAILED_PRECONDITION;
            snprintf(err, sizeof err, "policy qfilters needs a filters file on the server "
                     "(<model>.kvsqf from `kvsieve calibrate`, or the server's --policy-args); "
                     "this server has none");
        } else if (snprintf(p.policy_args + n, sizeof p.policy_args - n, "%sfilters=%s",
                            n ? "," : "", qf) >= (int)(sizeof p.policy_args - n)) {
            code = GRPC_STATUS_INVALID_ARGUMENT;
            snprintf(err, sizeof err, "policy_args too long");
        }
    }
    for (size_t i = 0; !code && i < q->n_stop; i++) {
        if (!q->stop[i][0] || copy_field(p.stop_strings[i], sizeof p.stop_strings[i], q->stop[i])) {
            code = GRPC_STATUS_INVALID_ARGUMENT;
            snprintf(err, sizeof err, "stop[%zu] must be 1 to %zu bytes", i,
                     sizeof p.stop_strings[i] - 1);
        }
    }
    if (code) {
        srv_call_fail(c, code, "%s", err);
        kvsieve__v1__generate_request__free_unpacked(q, NULL);
        return;
    }
    p.n_stop_strings = (int)q->n_stop;
    for (size_t i = 0; i < q->n_stop_token_ids; i++) p.stop_ids[i] = q->stop_token_ids[i];
    p.n_stop_ids = (int)q->n_stop_token_ids;
    p.max_tokens = q->max_tokens;
    p.sampling = smp_default();
    if (q->sampling) {
        p.sampling.temperature = q->sampling->temperature;
        p.sampling.top_k = q->sampling->top_k;
        p.sampling.top_p = q->sampling->top_p == 0.0f ? 1.0f : q->sampling->top_p;
        p.sampling.seed = q->sampling->seed;
    }
    p.ignore_eos = q->ignore_eos;
    if (q->priority_override_case == KVSIEVE__V1__GENERATE_REQUEST__PRIORITY_OVERRIDE_PRIORITY) {
        p.has_priority = 1;
        p.priority = q->priority;
    }
    if (gpr_time_cmp(c->deadline, gpr_inf_future(c->deadline.clock_type)) != 0) {
        gpr_timespec left = gpr_time_sub(gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC),
                                         gpr_now(GPR_CLOCK_MONOTONIC));
        double secs = (double)left.tv_sec + 1e-9 * left.tv_nsec;
        if (secs <= 0) {
            srv_call_fail(c, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded before start");
            kvsieve__v1__generate_request__free_unpacked(q, NULL);
            return;
        }
        p.deadline = kvs_now() + secs;
    }

    if (q->prompt_case == KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TEXT) {
        code = build_prompt(s, q->text, q->chat, q->system, &ids, &n_ids, err, sizeof err);
        if (code) {
            srv_call_fail(c, code, "%s", err);
            kvsieve__v1__generate_request__free_unpacked(q, NULL);
            return;
        }
    }
    const int32_t *prompt = ids;
    if (q->prompt_case == KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TOKEN_IDS) {
        prompt = q->token_ids->ids;
        n_ids = (int)q->token_ids->n_ids;
    }

    gen_state *g = calloc(1, sizeof *g);
    if (!g) {
        free(ids);
        kvsieve__v1__generate_request__free_unpacked(q, NULL);
        srv_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    snprintf(g->policy, sizeof g->policy, "%s",
             p.policy[0] ? p.policy
                         : (s->o.default_policy && *s->o.default_policy ? s->o.default_policy
                                                                        : "full"));
    c->impl = g;
    c->impl_free = gen_free;
    c->next_msg = gen_next_msg;
    c->on_cancel = gen_on_cancel;
    g->t_submit = kvs_now();

    uint64_t id = 0;
    srv_call_ref(c); /* the engine's reference, dropped at FINISH */
    int rc = kvs_loop_submit(s->o.loop, tenant_name(c), prompt, n_ids, &p, gen_on_event, c, &id);
    free(ids);
    kvsieve__v1__generate_request__free_unpacked(q, NULL);
    if (rc) {
        atomic_fetch_sub(&c->refs, 1); /* no event will come; we still hold the arrival's */
        const char *why = kvs_last_error();
        grpc_status_code sc = srv_status_from_kvs(rc);
        if (rc == KVS_ERANGE && p.deadline > 0 && kvs_now() >= p.deadline)
            sc = GRPC_STATUS_DEADLINE_EXCEEDED;
        srv_call_fail(c, sc, "%s", why && *why ? why : kvs_strerror(rc));
        return;
    }
    pthread_mutex_lock(&c->mu);
    g->submitted = 1;
    g->request_id = id;
    if (g->messages == 0) g->header_pending = 1; /* the id goes out before the first token */
    srv_call_pump_locked(c);
    int gone = atomic_load(&c->gone) && !g->have_final;
    pthread_mutex_unlock(&c->mu);
    if (gone) kvs_loop_abort(s->o.loop, id, NULL); /* cancelled while we were submitting */
}

/* ---- Abort ------------------------------------------------------------------------------------ */

void srv_api_abort(srv_call *c)
{
    if (srv_call_auth(c)) return;
    Kvsieve__V1__AbortRequest *q = (Kvsieve__V1__AbortRequest *)srv_unpack_call(
        c, &kvsieve__v1__abort_request__descriptor, "AbortRequest");
    if (!q) return;
    uint64_t id = q->request_id;
    kvsieve__v1__abort_request__free_unpacked(q, NULL);
    int rc = kvs_loop_abort(c->s->o.loop, id, tenant_name(c));
    if (rc == KVS_ENOTFOUND) {
        srv_call_fail(c, GRPC_STATUS_NOT_FOUND, "no unfinished request %llu of tenant '%s'",
                      (unsigned long long)id, tenant_name(c));
    } else if (rc) {
        srv_call_fail(c, srv_status_from_kvs(rc), "%s", kvs_last_error());
    } else {
        Kvsieve__V1__AbortResponse r = KVSIEVE__V1__ABORT_RESPONSE__INIT;
        srv_call_reply(c, &r.base, GRPC_STATUS_OK, NULL);
    }
}

/* ---- Tokenize --------------------------------------------------------------------------------- */

void srv_api_tokenize(srv_call *c)
{
    srv *s = c->s;
    if (srv_call_auth(c)) return;
    Kvsieve__V1__TokenizeRequest *q = (Kvsieve__V1__TokenizeRequest *)srv_unpack_call(
        c, &kvsieve__v1__tokenize_request__descriptor, "TokenizeRequest");
    if (!q) return;
    if (q->system[0] && !q->chat) {
        srv_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "system only applies with chat = true");
        kvsieve__v1__tokenize_request__free_unpacked(q, NULL);
        return;
    }
    int32_t *ids = NULL;
    int n = 0;
    char err[512];
    grpc_status_code code = build_prompt(s, q->text, q->chat, q->system, &ids, &n, err, sizeof err);
    if (code) {
        srv_call_fail(c, code, "%s", err);
        kvsieve__v1__tokenize_request__free_unpacked(q, NULL);
        return;
    }
    Kvsieve__V1__TokenizeResponse r = KVSIEVE__V1__TOKENIZE_RESPONSE__INIT;
    r.n_token_ids = (size_t)n;
    r.token_ids = ids;
    ProtobufCBinaryData *pieces = NULL;
    if (q->return_pieces && n > 0) {
        pieces = calloc((size_t)n, sizeof *pieces);
        if (pieces) {
            for (int i = 0; i < n; i++) {
                const char *b = NULL;
                size_t len = 0;
                if (tok_piece(s->o.engine->tok, ids[i], &b, &len) == 0) {
                    pieces[i].data = (uint8_t *)b;
                    pieces[i].len = len;
                }
            }
            r.n_pieces = (size_t)n;
            r.pieces = pieces;
        }
    }
    srv_call_reply(c, &r.base, GRPC_STATUS_OK, NULL);
    free(pieces);
    free(ids);
    kvsieve__v1__tokenize_request__free_unpacked(q, NULL);
}

/* ---- GetModelInfo / GetServerInfo ---------------------------------------------------------- */

void srv_api_model_info(srv_call *c)
{
    srv *s = c->s;
    if (srv_call_auth(c)) return;
    Kvsieve__V1__GetModelInfoRequest *q = (Kvsieve__V1__GetModelInfoRequest *)srv_unpack_call(
        c, &kvsieve__v1__get_model_info_request__descriptor, "GetModelInfoRequest");
    if (!q) return;
    kvsieve__v1__get_model_info_request__free_unpacked(q, NULL);
    const kvs_engine *e = s->o.engine;
    const model_config *cfg = &e->m->cfg;
    Kvsieve__V1__GetModelInfoResponse r = KVSIEVE__V1__GET_MODEL_INFO_RESPONSE__INIT;
    char path[sizeof e->m->path];
    snprintf(path, sizeof path, "%s", e->m->path);
    r.name = (char *)(s->o.model_name ? s->o.model_name : cfg->name);
    r.file = basename(path);
    r.architecture = (char *)cfg->arch->name; /* general.architecture of the GGUF */
    r.n_vocab = cfg->n_vocab;
    r.n_ctx = cfg->n_ctx;
    r.n_layers = cfg->n_layers;
    r.n_heads = cfg->n_heads;
    r.n_kv_heads = cfg->n_kv_heads;
    r.head_dim = cfg->head_dim;
    r.d_model = cfg->d_model;
    r.n_params = s->n_params;
    r.bos_token_id = tok_bos(e->tok);
    r.eos_token_id = tok_eos(e->tok);
    r.has_chat_template = tok_chat_prompt(e->tok, NULL, "", NULL, 0) >= 0;
    r.kv_page_slots = e->pool ? e->pool->page_slots : 0;
    r.kv_bytes_per_token = model_kv_bytes_per_token(cfg);
    r.default_policy = (char *)(s->o.default_policy ? s->o.default_policy : "full");
    r.default_policy_args = (char *)(s->o.default_policy_args ? s->o.default_policy_args : "");
    const pol_vtable *vt[64];
    int np = pol_list(vt, 64);
    if (np > 64) np = 64;
    Kvsieve__V1__PolicyInfo pi[64], *pip[64];
    for (int i = 0; i < np; i++) {
        kvsieve__v1__policy_info__init(&pi[i]);
        pi[i].name = (char *)vt[i]->name;
        pi[i].description = (char *)(vt[i]->description ? vt[i]->description : "");
        pi[i].args_help = (char *)(vt[i]->args_help ? vt[i]->args_help : "");
        pip[i] = &pi[i];
    }
    r.n_policies = (size_t)np;
    r.policies = pip;
    srv_call_reply(c, &r.base, GRPC_STATUS_OK, NULL);
}

void srv_api_server_info(srv_call *c)
{
    srv *s = c->s;
    if (srv_call_auth(c)) return;
    Kvsieve__V1__GetServerInfoRequest *q = (Kvsieve__V1__GetServerInfoRequest *)srv_unpack_call(
        c, &kvsieve__v1__get_server_info_request__descriptor, "GetServerInfoRequest");
    if (!q) return;
    kvsieve__v1__get_server_info_request__free_unpacked(q, NULL);
    kvs_loop_stats st;
    memset(&st, 0, sizeof st);
    kvs_loop_get_stats(s->o.loop, &st);
    Kvsieve__V1__GetServerInfoResponse r = KVSIEVE__V1__GET_SERVER_INFO_RESPONSE__INIT;
    r.version = (char *)KVS_VERSION_STRING;
    r.uptime_s = kvs_now() - s->t_start;
    r.serving = !atomic_load(&s->shutting_down);
    r.running = st.running;
    r.waiting = st.waiting;
    r.kv_pages_total = st.kv_pages_total;
    r.kv_pages_used = st.kv_pages_used;
    r.kv_pages_free = st.kv_pages_free;
    r.kv_usage = st.kv_usage;
    r.live_tokens = st.live_tokens;
    r.evicted_tokens_total = st.evicted_tokens_total;
    r.compaction_moves_total = st.compaction_moves_total;
    r.preemptions_total = st.preemptions_total;
    r.fragmentation = st.fragmentation;
    r.requests_finished_total = st.requests_finished_total;
    r.generated_tokens_total = st.generated_tokens_total;
    r.steps_total = st.steps_total;
    r.kv_dtype = st.kv_dtype;
    r.kv_bytes_per_token = st.kv_bytes_per_token;
    r.kv_bytes_total = st.kv_bytes_total;

    /* The caller's tenant: its configuration and its counters (other tenants stay hidden). */
    Kvsieve__V1__TenantInfo ti = KVSIEVE__V1__TENANT_INFO__INIT;
    const char *name = tenant_name(c);
    ti.name = (char *)name;
    ti.weight = 1.0;
    char allowed[SCHED_ARGS_MAX] = "";
    if (s->o.tenants) {
        const sched_tenant *t = &s->o.tenants->v[c->tenant].st;
        ti.weight = t->weight;
        ti.priority = t->priority;
        ti.max_kv_pages = t->max_kv_pages;
        ti.max_running = t->max_running;
        ti.max_queued = t->max_queued;
        snprintf(allowed, sizeof allowed, "%s", t->allowed_policies);
    }
    char *pol[SCHED_ARGS_MAX / 2];
    size_t npol = 0;
    char *save = NULL;
    for (char *tok = strtok_r(allowed, ",", &save); tok && npol < SCHED_ARGS_MAX / 2;
         tok = strtok_r(NULL, ",", &save))
        pol[npol++] = tok;
    ti.n_allowed_policies = npol;
    ti.allowed_policies = pol;
    int cap = s->n_tenants + 4;
    kvs_tenant_stats *ts = calloc((size_t)cap, sizeof *ts);
    if (ts) {
        int n = kvs_loop_get_tenant_stats(s->o.loop, ts, cap);
        for (int i = 0; i < n && i < cap; i++) {
            if (strcmp(ts[i].name, name)) continue;
            ti.running = ts[i].running;
            ti.waiting = ts[i].waiting;
            ti.kv_pages = ts[i].kv_pages;
            ti.prompt_tokens_total = ts[i].prompt_tokens_total;
            ti.generated_tokens_total = ts[i].generated_tokens_total;
            ti.evicted_tokens_total = ts[i].evicted_tokens_total;
            ti.requests_finished_total = ts[i].requests_finished_total;
            ti.preemptions_total = ts[i].preemptions_total;
        }
    }
    r.tenant = &ti;
    srv_call_reply(c, &r.base, GRPC_STATUS_OK, NULL);
    free(ts);
}
