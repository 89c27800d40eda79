/* it_server_client.c — a C gRPC client (gRPC C core + protobuf-c) against a live
 * `kvsieve serve` on the default model, on a free loopback port: streaming Generate, the
 * unary calls, client cancel and deadline (KV pages go back to the pool), Abort, malformed
 * message bytes on every method, UNIMPLEMENTED for unknown methods, and a clean exit on
 * SIGTERM. The server is started once and killed at the end. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kvsieve/v1/kvsieve.pb-c.h"
#include "test_util.h"

static pid_t server_pid = -1;
static char target[64];
static grpc_channel *ch;
static char log_path[] = "/tmp/kvs_it_server_XXXXXX";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* ---- the server process ---------------------------------------------------------------- */

static int start_server(const char *bin, const char *model)
{
    int fds[2];
    if (pipe(fds)) return -1;
    int logfd = mkstemp(log_path);
    server_pid = fork();
    if (server_pid < 0) return -1;
    if (server_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        if (logfd >= 0) dup2(logfd, 2);
        close(fds[0]);
        execl(bin, bin, "serve", "--model", model, "--listen", "127.0.0.1:0", "--grace", "2",
              "--kv-memory", "256M", "-v", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    if (logfd >= 0) close(logfd);
    FILE *f = fdopen(fds[0], "r");
    char line[512];
    /* The ready line: "kvsieve serve: ready grpc=127.0.0.1:PORT metrics=off". */
    while (fgets(line, sizeof line, f)) {
        char *g = strstr(line, "ready grpc=");
        if (g) {
            sscanf(g + 11, "%63s", target);
            fclose(f);
            return 0;
        }
    }
    fclose(f);
    return -1;
}

/* SIGTERM, then wait at most timeout_s; returns the exit status (or -1 after SIGKILL). */
static int stop_server(double timeout_s)
{
    if (server_pid <= 0) return -1;
    kill(server_pid, SIGTERM);
    double until = now_s() + timeout_s;
    int st = 0;
    while (now_s() < until) {
        pid_t r = waitpid(server_pid, &st, WNOHANG);
        if (r == server_pid) {
            server_pid = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(20000);
    }
    kill(server_pid, SIGKILL);
    waitpid(server_pid, &st, 0);
    server_pid = -1;
    return -1;
}

/* ---- a small blocking client: one pluck cq per call ------------------------------------- */

static grpc_byte_buffer *bytes_bb(const void *p, size_t n)
{
    grpc_slice s = grpc_slice_from_copied_buffer(p, n);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static grpc_byte_buffer *msg_bb(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n + 1);
    protobuf_c_message_pack(m, buf);
    grpc_byte_buffer *bb = bytes_bb(buf, n);
    free(buf);
    return bb;
}

static ProtobufCMessage *bb_msg(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
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

static gpr_timespec deadline_ms(int ms)
{
    if (ms <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static int pluck(grpc_completion_queue *cq, void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, deadline_ms(60000), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

typedef struct cstream {
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *send, *recv;
    int ended;
} cstream;

static void cs_start(cstream *cs, const char *method, grpc_byte_buffer *req, int dl_ms)
{
    memset(cs, 0, sizeof *cs);
    cs->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice m = grpc_slice_from_static_string(method);
    cs->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cs->cq, m, NULL,
                                        deadline_ms(dl_ms), NULL);
    grpc_metadata_array_init(&cs->init_md);
    grpc_metadata_array_init(&cs->trail_md);
    cs->send = req;
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &cs->init_md;
    CU_ASSERT_EQUAL(grpc_call_start_batch(cs->call, ops, 4, (void *)1, NULL), GRPC_CALL_OK);
    grpc_op st;
    memset(&st, 0, sizeof st);
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &cs->trail_md;
    st.data.recv_status_on_client.status = &cs->status;
    st.data.recv_status_on_client.status_details = &cs->details;
    CU_ASSERT_EQUAL(grpc_call_start_batch(cs->call, &st, 1, (void *)2, NULL), GRPC_CALL_OK);
    pluck(cs->cq, (void *)1);
}

/* Next message (caller frees), or NULL at the end of the stream. */
static Kvsieve__V1__GenerateResponse *cs_next(cstream *cs)
{
    if (cs->ended) return NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &cs->recv;
    if (grpc_call_start_batch(cs->call, &op, 1, (void *)3, NULL) != GRPC_CALL_OK ||
        !pluck(cs->cq, (void *)3) || !cs->recv) {
        cs->ended = 1;
        return NULL;
    }
    Kvsieve__V1__GenerateResponse *r = (Kvsieve__V1__GenerateResponse *)bb_msg(
        &kvsieve__v1__generate_response__descriptor, cs->recv);
    grpc_byte_buffer_destroy(cs->recv);
    cs->recv = NULL;
    CU_ASSERT_PTR_NOT_NULL(r);
    if (!r) cs->ended = 1;
    return r;
}

/* Drain, wait for the status, free; returns the status code (details into buf). */
static grpc_status_code cs_finish(cstream *cs, char *details, size_t cap)
{
    Kvsieve__V1__GenerateResponse *r;
    while ((r = cs_next(cs))) kvsieve__v1__generate_response__free_unpacked(r, NULL);
    pluck(cs->cq, (void *)2);
    grpc_status_code code = cs->status;
    if (details) {
        char *d = grpc_slice_to_c_string(cs->details);
        snprintf(details, cap, "%s", d);
        gpr_free(d);
    }
    grpc_slice_unref(cs->details);
    grpc_metadata_array_destroy(&cs->init_md);
    grpc_metadata_array_destroy(&cs->trail_md);
    grpc_byte_buffer_destroy(cs->send);
    grpc_call_unref(cs->call);
    grpc_completion_queue_shutdown(cs->cq);
    while (grpc_completion_queue_pluck(cs->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cs->cq);
    return code;
}

/* Unary call with raw request bytes: status, and the reply message's bytes unpacked with d. */
static grpc_status_code unary(const char *method, grpc_byte_buffer *req,
                              const ProtobufCMessageDescriptor *d, ProtobufCMessage **out,
                              char *details, size_t cap)
{
    cstream cs;
    cs_start(&cs, method, req, 20000);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &cs.recv;
    if (out) *out = NULL;
    if (grpc_call_start_batch(cs.call, &op, 1, (void *)3, NULL) == GRPC_CALL_OK &&
        pluck(cs.cq, (void *)3) && cs.recv) {
        if (out && d) *out = bb_msg(d, cs.recv);
        grpc_byte_buffer_destroy(cs.recv);
        cs.recv = NULL;
    }
    cs.ended = 1;
    return cs_finish(&cs, details, cap);
}

static Kvsieve__V1__GetServerInfoResponse *server_info(void)
{
    Kvsieve__V1__GetServerInfoRequest q = KVSIEVE__V1__GET_SERVER_INFO_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    grpc_status_code code = unary("/kvsieve.v1.Kvsieve/GetServerInfo", msg_bb(&q.base),
                                  &kvsieve__v1__get_server_info_response__descriptor, &m, NULL, 0);
    CU_ASSERT_EQUAL(code, GRPC_STATUS_OK);
    return (Kvsieve__V1__GetServerInfoResponse *)m;
}

/* Wait until no request runs and no KV page is used (pages went back to the pool). */
static int pool_drains(double timeout_s)
{
    double until = now_s() + timeout_s;
    while (now_s() < until) {
        Kvsieve__V1__GetServerInfoResponse *si = server_info();
        int idle = si && si->running == 0 && si->waiting == 0 && si->kv_pages_used == 0;
        if (si) kvsieve__v1__get_server_info_response__free_unpacked(si, NULL);
        if (idle) return 1;
        usleep(20000);
    }
    return 0;
}

/* Long requests set ignore_eos so that they run until cancelled. */
static grpc_byte_buffer *gen_req(const char *text, int max_tokens)
{
    Kvsieve__V1__GenerateRequest q = KVSIEVE__V1__GENERATE_REQUEST__INIT;
    q.prompt_case = KVSIEVE__V1__GENERATE_REQUEST__PROMPT_TEXT;
    q.text = (char *)text;
    q.max_tokens = max_tokens;
    q.ignore_eos = max_tokens > 50;
    return msg_bb(&q.base);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_generate_stream(void)
{
    cstream cs;
    cs_start(&cs, "/kvsieve.v1.Kvsieve/Generate", gen_req("The capital of France is", 8), 30000);
    char text[4096] = "";
    int n_msgs = 0, n_tokens = 0, got_final = 0;
    uint64_t id = 0;
    Kvsieve__V1__GenerateResponse *r;
    while ((r = cs_next(&cs))) {
        if (n_msgs == 0) {
            /* The first message carries the request id and nothing else. */
            CU_ASSERT(r->request_id > 0);
            CU_ASSERT_EQUAL(r->n_token_ids, 0);
            CU_ASSERT_PTR_NULL(r->finish);
            id = r->request_id;
        }
        CU_ASSERT_EQUAL(r->request_id, id);
        CU_ASSERT_FALSE(got_final); /* nothing after the final message */
        n_tokens += (int)r->n_token_ids;
        strncat(text, r->text, sizeof text - strlen(text) - 1);
        if (r->finish) {
            got_final = 1;
            CU_ASSERT_EQUAL(r->finish->reason, KVSIEVE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
            CU_ASSERT_EQUAL(r->finish->completion_tokens, 8);
            CU_ASSERT(r->finish->prompt_tokens >= 5);
            CU_ASSERT(r->finish->ttft_s > 0 && r->finish->ttft_s <= r->finish->e2e_s);
            CU_ASSERT(r->finish->queue_time_s >= 0);
            CU_ASSERT_STRING_EQUAL(r->finish->policy, "full");
        }
        n_msgs++;
        kvsieve__v1__generate_response__free_unpacked(r, NULL);
    }
    char det[256];
    CU_ASSERT_EQUAL(cs_finish(&cs, det, sizeof det), GRPC_STATUS_OK);
    CU_ASSERT(got_final);
    CU_ASSERT_EQUAL(n_tokens, 8);
    CU_ASSERT(strstr(text, "Paris") != NULL);
    if (!strstr(text, "Paris")) fprintf(stderr, "\n  text: '%s'\n", text);
}

static void test_unary_calls(void)
{
    Kvsieve__V1__TokenizeRequest tq = KVSIEVE__V1__TOKENIZE_REQUEST__INIT;
    tq.text = (char *)"hello world";
    tq.return_pieces = 1;
    ProtobufCMessage *m = NULL;
    CU_ASSERT_EQUAL(unary("/kvsieve.v1.Kvsieve/Tokenize", msg_bb(&tq.base),
                          &kvsieve__v1__tokenize_response__descriptor, &m, NULL, 0),
                    GRPC_STATUS_OK);
    Kvsieve__V1__TokenizeResponse *tr = (Kvsieve__V1__TokenizeResponse *)m;
    CU_ASSERT_PTR_NOT_NULL_FATAL(tr);
    CU_ASSERT(tr->n_token_ids >= 2);
    CU_ASSERT_EQUAL(tr->n_pieces, tr->n_token_ids);
    if (tr->n_pieces >= 2) {
        size_t last = tr->n_pieces - 1;
        CU_ASSERT(tr->pieces[last].len == 6 && !memcmp(tr->pieces[last].data, " world", 6));
    }
    kvsieve__v1__tokenize_response__free_unpacked(tr, NULL);

    Kvsieve__V1__GetModelInfoRequest mq = KVSIEVE__V1__GET_MODEL_INFO_REQUEST__INIT;
    CU_ASSERT_EQUAL(unary("/kvsieve.v1.Kvsieve/GetModelInfo", msg_bb(&mq.base),
                          &kvsieve__v1__get_model_info_response__descriptor, &m, NULL, 0),
                    GRPC_STATUS_OK);
    Kvsieve__V1__GetModelInfoResponse *mr = (Kvsieve__V1__GetModelInfoResponse *)m;
    CU_ASSERT_PTR_NOT_NULL_FATAL(mr);
    CU_ASSERT_EQUAL(mr->n_vocab, 49152);
    CU_ASSERT_EQUAL(mr->n_ctx, 8192);
    CU_ASSERT_EQUAL(mr->n_layers, 30);
    CU_ASSERT_STRING_EQUAL(mr->file, "smollm2-135m-instruct-q4_1.gguf");
    CU_ASSERT(mr->has_chat_template);
    CU_ASSERT(mr->kv_page_slots > 0);
    CU_ASSERT(mr->n_policies >= 2);
    CU_ASSERT_STRING_EQUAL(mr->default_policy, "full");
    kvsieve__v1__get_model_info_response__free_unpacked(mr, NULL);

    Kvsieve__V1__GetServerInfoResponse *si = server_info();
    CU_ASSERT_PTR_NOT_NULL_FATAL(si);
    CU_ASSERT(si->serving);
    CU_ASSERT(si->kv_pages_total > 0);
    CU_ASSERT_EQUAL(si->kv_pages_free + si->kv_pages_used, si->kv_pages_total);
    CU_ASSERT_PTR_NOT_NULL(si->tenant);
    if (si->tenant) CU_ASSERT_STRING_EQUAL(si->tenant->name, "default");
    kvsieve__v1__get_server_info_response__free_unpacked(si, NULL);

    Grpc__Health__V1__HealthCheckRequest hq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    CU_ASSERT_EQUAL(unary("/grpc.health.v1.Health/Check", msg_bb(&hq.base),
                          &grpc__health__v1__health_check_response__descriptor, &m, NULL, 0),
                    GRPC_STATUS_OK);
    Grpc__Health__V1__HealthCheckResponse *hr = (Grpc__Health__V1__HealthCheckResponse *)m;
    CU_ASSERT_PTR_NOT_NULL_FATAL(hr);
    CU_ASSERT_EQUAL(hr->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    grpc__health__v1__health_check_response__free_unpacked(hr, NULL);
    hq.service = (char *)"no.such.Service";
    CU_ASSERT_EQUAL(unary("/grpc.health.v1.Health/Check", msg_bb(&hq.base), NULL, NULL, NULL, 0),
                    GRPC_STATUS_NOT_FOUND);
}

static void test_cancel_frees_pages(void)
{
    cstream cs;
    cs_start(&cs, "/kvsieve.v1.Kvsieve/Generate", gen_req("Tell me a long story about a dragon.", 400),
             60000);
    int tokens = 0;
    Kvsieve__V1__GenerateResponse *r;
    while (tokens < 3 && (r = cs_next(&cs))) {
        tokens += (int)r->n_token_ids;
        kvsieve__v1__generate_response__free_unpacked(r, NULL);
    }
    CU_ASSERT(tokens >= 3);
    Kvsieve__V1__GetServerInfoResponse *si = server_info();
    CU_ASSERT_PTR_NOT_NULL_FATAL(si);
    CU_ASSERT(si->kv_pages_used > 0); /* the running request holds pages */
    CU_ASSERT_EQUAL(si->running, 1);
    kvsieve__v1__get_server_info_response__free_unpacked(si, NULL);
    grpc_call_cancel(cs.call, NULL);
    CU_ASSERT_EQUAL(cs_finish(&cs, NULL, 0), GRPC_STATUS_CANCELLED);
    CU_ASSERT(pool_drains(3.0));
}

static void test_deadline(void)
{
    cstream cs;
    double t0 = now_s();
    cs_start(&cs, "/kvsieve.v1.Kvsieve/Generate", gen_req("Count from one to one thousand:", 400),
             500);
    char det[256];
    CU_ASSERT_EQUAL(cs_finish(&cs, det, sizeof det), GRPC_STATUS_DEADLINE_EXCEEDED);
    CU_ASSERT(now_s() - t0 < 3.0);
    CU_ASSERT(pool_drains(3.0));
}

static void test_abort_rpc(void)
{
    cstream cs;
    cs_start(&cs, "/kvsieve.v1.Kvsieve/Generate", gen_req("Write a poem about the sea.", 400),
             60000);
    Kvsieve__V1__GenerateResponse *r = cs_next(&cs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    uint64_t id = r->request_id;
    kvsieve__v1__generate_response__free_unpacked(r, NULL);
    Kvsieve__V1__AbortRequest aq = KVSIEVE__V1__ABORT_REQUEST__INIT;
    aq.request_id = id;
    CU_ASSERT_EQUAL(unary("/kvsieve.v1.Kvsieve/Abort", msg_bb(&aq.base), NULL, NULL, NULL, 0),
                    GRPC_STATUS_OK);
    int final_aborted = 0;
    while ((r = cs_next(&cs))) {
        if (r->finish)
            final_aborted = r->finish->reason == KVSIEVE__V1__FINISH_REASON__FINISH_REASON_ABORTED;
        kvsieve__v1__generate_response__free_unpacked(r, NULL);
    }
    CU_ASSERT(final_aborted);
    CU_ASSERT_EQUAL(cs_finish(&cs, NULL, 0), GRPC_STATUS_CANCELLED);
    /* Gone now: a second abort finds nothing. */
    CU_ASSERT_EQUAL(unary("/kvsieve.v1.Kvsieve/Abort", msg_bb(&aq.base), NULL, NULL, NULL, 0),
                    GRPC_STATUS_NOT_FOUND);
    CU_ASSERT(pool_drains(3.0));
}

static void test_malformed_bytes(void)
{
    static const char *methods[] = {
        "/kvsieve.v1.Kvsieve/Generate",     "/kvsieve.v1.Kvsieve/Abort",
        "/kvsieve.v1.Kvsieve/Tokenize",     "/kvsieve.v1.Kvsieve/GetModelInfo",
        "/kvsieve.v1.Kvsieve/GetServerInfo", "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch"};
    /* A length-delimited field that claims more bytes than follow; a varint that never ends. */
    static const uint8_t bad1[] = {0x0a, 0x40, 'a', 'b'};
    static const uint8_t bad2[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        char det[256];
        grpc_status_code c1 = unary(methods[i], bytes_bb(bad1, sizeof bad1), NULL, NULL, det,
                                    sizeof det);
        CU_ASSERT_EQUAL(c1, GRPC_STATUS_INVALID_ARGUMENT);
        if (c1 != GRPC_STATUS_INVALID_ARGUMENT) fprintf(stderr, "\n  %s: %d %s\n", methods[i], c1, det);
        grpc_status_code c2 = unary(methods[i], bytes_bb(bad2, sizeof bad2), NULL, NULL, det,
                                    sizeof det);
        CU_ASSERT_EQUAL(c2, GRPC_STATUS_INVALID_ARGUMENT);
    }
    /* The server is still fine. */
    Kvsieve__V1__GetServerInfoResponse *si = server_info();
    CU_ASSERT_PTR_NOT_NULL(si);
    if (si) kvsieve__v1__get_server_info_response__free_unpacked(si, NULL);
}

static void test_unimplemented(void)
{
    double t0 = now_s();
    char det[256];
    Kvsieve__V1__GetServerInfoRequest q = KVSIEVE__V1__GET_SERVER_INFO_REQUEST__INIT;
    CU_ASSERT_EQUAL(unary("/kvsieve.v1.Kvsieve/NoSuchMethod", msg_bb(&q.base), NULL, NULL, det,
                          sizeof det),
                    GRPC_STATUS_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(unary("/other.Service/Method", msg_bb(&q.base), NULL, NULL, det, sizeof det),
                    GRPC_STATUS_UNIMPLEMENTED);
    CU_ASSERT(now_s() - t0 < 1.0);
}

static void test_sigterm_exits_zero(void)
{
    /* An idle server stops at once and exits 0. */
    CU_ASSERT_EQUAL(stop_server(20.0), 0);
}

int main(void)
{
    const char *model = kvs_test_model_path();
    if (!model) {
        fprintf(stderr, "it_server_client: FAIL: the default model is missing "
                        "(models/smollm2-135m-instruct-q4_1.gguf): run scripts/fetch-model\n");
        return 1;
    }
    char bin[4096];
    snprintf(bin, sizeof bin, "%s/kvsieve", kvs_test_build_dir());
    if (access(bin, X_OK)) {
        fprintf(stderr, "it_server_client: FAIL: %s not built\n", bin);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (start_server(bin, model)) {
        fprintf(stderr, "it_server_client: FAIL: the server did not start (log: %s)\n", log_path);
        stop_server(5);
        return 1;
    }
    grpc_init();
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    static const kvs_test tests[] = {
        {"Generate streams the id, tokens and a final message", test_generate_stream},
        {"Tokenize, GetModelInfo, GetServerInfo, Health.Check", test_unary_calls},
        {"client cancel mid-stream frees the KV pages", test_cancel_frees_pages},
        {"deadline exceeded frees the KV pages", test_deadline},
        {"Abort by request id", test_abort_rpc},
        {"malformed message bytes -> INVALID_ARGUMENT", test_malformed_bytes},
        {"unknown methods -> UNIMPLEMENTED at once", test_unimplemented},
        {"SIGTERM: exit 0", test_sigterm_exits_zero},
    };
    int rc = kvs_test_main("server_client", tests, (int)(sizeof tests / sizeof tests[0]));
    grpc_channel_destroy(ch);
    grpc_shutdown();
    if (server_pid > 0) stop_server(10);
    if (rc) {
        fprintf(stderr, "server log (%s):\n", log_path);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "tail -n 30 %s >&2", log_path);
        if (system(cmd)) {
        }
    }
    unlink(log_path);
    return rc;
}
