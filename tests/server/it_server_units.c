/* it_server_units.c — the server's pure parts, without a network: tenants file parsing (and
 * its error messages), API key hashes and lookup, reflection answers, metrics text. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/reflection.h"
#include "server/tenants.h"
#include "test_util.h"

/* sha256("alice-key") and sha256("bob-key"), made with `kvsieve hash-key`. */
static char hash_alice[SRV_KEY_HASH_STR], hash_bob[SRV_KEY_HASH_STR];

static void make_hashes(void)
{
    unsigned char h[SRV_KEY_HASH_LEN];
    srv_key_hash("alice-key", 9, h);
    srv_key_hash_format(h, hash_alice);
    srv_key_hash("bob-key", 7, h);
    srv_key_hash_format(h, hash_bob);
}

static void test_key_hash(void)
{
    unsigned char h[SRV_KEY_HASH_LEN], back[SRV_KEY_HASH_LEN];
    char s[SRV_KEY_HASH_STR];
    CU_ASSERT_EQUAL(srv_key_hash("abc", 3, h), 0);
    srv_key_hash_format(h, s);
    /* SHA-256("abc"), FIPS 180-2 test vector. */
    CU_ASSERT_STRING_EQUAL(s, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CU_ASSERT_EQUAL(srv_key_hash_parse(s, back), 0);
    CU_ASSERT_EQUAL(memcmp(h, back, sizeof h), 0);
    CU_ASSERT_NOT_EQUAL(srv_key_hash_parse("sha256:abc", back), 0);
    CU_ASSERT_NOT_EQUAL(srv_key_hash_parse("md5:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", back), 0);
    CU_ASSERT_NOT_EQUAL(srv_key_hash_parse("sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", back), 0);
    CU_ASSERT_NOT_EQUAL(srv_key_hash("", 0, h), 0);
    char k1[64], k2[64];
    CU_ASSERT_EQUAL(srv_key_generate(k1, sizeof k1), 0);
    CU_ASSERT_EQUAL(srv_key_generate(k2, sizeof k2), 0);
    CU_ASSERT_EQUAL(strlen(k1), 47);
    CU_ASSERT(strncmp(k1, "kvs-", 4) == 0);
    CU_ASSERT(strcmp(k1, k2) != 0);
}

static void test_authorization_header(void)
{
    size_t n = 0;
    const char *k = srv_key_from_authorization("Bearer abc", 10, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT(!strncmp(k, "abc", 3));
    k = srv_key_from_authorization("bearer xyz", 10, &n);
    CU_ASSERT_PTR_NOT_NULL(k);
    /* exactly one space after the scheme, nothing around or inside the key */
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Bearer  abc", 11, &n));
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Bearer abc ", 11, &n));
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Bearer a bc", 11, &n));
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Bearer\tabc", 10, &n));
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Basic abc", 9, &n));
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Bearer ", 7, &n));
    CU_ASSERT_PTR_NULL(srv_key_from_authorization("Bearer    ", 10, &n));
}

static void test_tenants_good(void)
{
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "# two tenants\n"
             "tenants:\n"
             "  - name: alice\n"
             "    key_hash: \"%s\"\n"
             "    weight: 2.5\n"
             "    priority: 3\n"
             "    limits: {kv_pages: 4096, max_running: 8, max_queued: 32}\n"
             "    allowed_policies: [full, knorm]\n"
             "  - name: bob\n"
             "    key_hashes:\n"
             "      - %s\n",
             hash_alice, hash_bob);
    srv_tenants t;
    int rc = srv_tenants_parse(yaml, strlen(yaml), "t.yaml", &t);
    if (rc) fprintf(stderr, "%s\n", kvs_last_error());
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL_FATAL(t.n, 2);
    CU_ASSERT_STRING_EQUAL(t.v[0].st.name, "alice");
    CU_ASSERT_DOUBLE_EQUAL(t.v[0].st.weight, 2.5, 1e-12);
    CU_ASSERT_EQUAL(t.v[0].st.priority, 3);
    CU_ASSERT_EQUAL(t.v[0].st.max_kv_pages, 4096);
    CU_ASSERT_EQUAL(t.v[0].st.max_running, 8);
    CU_ASSERT_EQUAL(t.v[0].st.max_queued, 32);
    CU_ASSERT_STRING_EQUAL(t.v[0].st.allowed_policies, "full,knorm");
    CU_ASSERT_STRING_EQUAL(t.v[1].st.name, "bob");
    CU_ASSERT_DOUBLE_EQUAL(t.v[1].st.weight, 1.0, 1e-12);
    CU_ASSERT_STRING_EQUAL(t.v[1].st.allowed_policies, "");
    CU_ASSERT_EQUAL(srv_auth_find(&t, "alice-key", 9), 0);
    CU_ASSERT_EQUAL(srv_auth_find(&t, "bob-key", 7), 1);
    CU_ASSERT_EQUAL(srv_auth_find(&t, "bob-kez", 7), -1);
    CU_ASSERT_EQUAL(srv_auth_find(&t, "", 0), -1);
    srv_tenants_free(&t);
}

/* Parse yaml (with %s = alice's hash, %s = bob's) and expect an error containing every
 * needle. */
static void expect_error(const char *fmt, const char *n1, const char *n2)
{
    char yaml[2048];
    snprintf(yaml, sizeof yaml, fmt, hash_alice, hash_bob);
    srv_tenants t;
    int rc = srv_tenants_parse(yaml, strlen(yaml), "t.yaml", &t);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    const char *msg = kvs_last_error();
    int ok = strstr(msg, n1) && (!n2 || strstr(msg, n2));
    if (!ok || rc == 0) fprintf(stderr, "\n  yaml: %s\n  message: '%s'\n  wanted: '%s' '%s'\n", yaml,
                                msg, n1, n2 ? n2 : "");
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(t.n, 0);
    CU_ASSERT_PTR_NULL(t.v);
}

static void test_tenants_errors(void)
{
    expect_error("", "t.yaml:1:1", "empty");
    expect_error("tenants: [\n", "t.yaml:", "YAML syntax error");
    expect_error("tenant:\n  - name: a\n", "t.yaml:1:1: tenant:", "unknown top-level");
    expect_error("tenants: []\n", "t.yaml:1:10: tenants", "empty");
    expect_error("tenants:\n  - name: alice\n", "t.yaml:2:5: tenants[0] ('alice')", "key_hash");
    expect_error("tenants:\n  - key_hash: %s\n", "tenants[0]", "missing 'name'");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n    weight: -1\n",
                 "t.yaml:4:13: tenants[0].weight", "> 0");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n    weight: lots\n",
                 "t.yaml:4:13: tenants[0].weight", "not a number");
    expect_error("tenants:\n  - name: a\n    key_hash: sha256:1234\n",
                 "t.yaml:3:15: tenants[0].key_hash", "64 hex digits");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n    limits: {kv_pages: -5}\n",
                 "t.yaml:4:24: tenants[0].limits.kv_pages", "out of range");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n    limits: {max_runing: 5}\n",
                 "tenants[0].limits.max_runing", "unknown limit");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n    colour: blue\n",
                 "t.yaml:4:5: tenants[0].colour", "unknown field");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n    allowed_policies: [full, nope]\n",
                 "tenants[0].allowed_policies", "unknown policy 'nope'");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n  - name: a\n    key_hash: %s\n",
                 "tenants[1]", "used twice");
    expect_error("tenants:\n  - name: a\n    key_hash: %s\n  - name: b\n    key_hash: %1$s\n",
                 "tenants[1]", "also a key of tenant 'a'");
    expect_error("tenants:\n  - name: 'a b'\n    key_hash: %s\n", "tenants[0].name",
                 "not a valid name");
    expect_error("tenants:\n  - name: a\n    key_hash: [x]\n", "tenants[0].key_hash",
                 "single value");
}

static void test_tenants_load_file(void)
{
    srv_tenants t;
    CU_ASSERT_EQUAL(srv_tenants_load("/nonexistent/tenants.yaml", &t), KVS_EIO);
    CU_ASSERT(strstr(kvs_last_error(), "/nonexistent/tenants.yaml") != NULL);
    char path[] = "/tmp/kvs_tenants_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "tenants:\n  - name: carol\n    key_hash: %s\n", hash_alice);
    fclose(f);
    CU_ASSERT_EQUAL(srv_tenants_load(path, &t), 0);
    CU_ASSERT_EQUAL(t.n, 1);
    srv_tenants_free(&t);
    remove(path);
}

/* ---- reflection ------------------------------------------------------------------------ */

static Grpc__Reflection__V1__ServerReflectionResponse *ask(srv_reflection *r,
                                                            Grpc__Reflection__V1__ServerReflectionRequest *q)
{
    uint8_t buf[1024], *out = NULL;
    size_t n = grpc__reflection__v1__server_reflection_request__pack(q, buf), out_len = 0;
    if (srv_reflection_answer(r, buf, n, &out, &out_len)) return NULL;
    Grpc__Reflection__V1__ServerReflectionResponse *resp =
        grpc__reflection__v1__server_reflection_response__unpack(NULL, out_len, out);
    free(out);
    return resp;
}

static void test_reflection(void)
{
    srv_reflection *r = NULL;
    CU_ASSERT_EQUAL_FATAL(srv_reflection_create(kvs_descriptor_set, kvs_descriptor_set_len, &r), 0);
    int found = 0;
    for (int i = 0; i < srv_reflection_n_services(r); i++) {
        const char *s = srv_reflection_service(r, i);
        found += !strcmp(s, "kvsieve.v1.Kvsieve") + !strcmp(s, "grpc.health.v1.Health") +
                 !strcmp(s, "grpc.reflection.v1.ServerReflection") +
                 !strcmp(s, "grpc.reflection.v1alpha.ServerReflection");
    }
    CU_ASSERT_EQUAL(found, 4);
    CU_ASSERT_EQUAL(srv_reflection_n_services(r), 4);

    Grpc__Reflection__V1__ServerReflectionRequest q = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    q.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    q.list_services = (char *)"";
    Grpc__Reflection__V1__ServerReflectionResponse *a = ask(r, &q);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(a->message_response_case,
                    GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    CU_ASSERT_EQUAL(a->list_services_response->n_service, 4);
    grpc__reflection__v1__server_reflection_response__free_unpacked(a, NULL);

    static const char *syms[] = {"kvsieve.v1.Kvsieve", ".kvsieve.v1.GenerateRequest",
                                 "kvsieve.v1.Kvsieve.Generate", "kvsieve.v1.FinishReason",
                                 "grpc.health.v1.HealthCheckResponse.ServingStatus"};
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        q.message_request_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
        q.file_containing_symbol = (char *)syms[i];
        a = ask(r, &q);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a);
        CU_ASSERT_EQUAL(a->message_response_case,
                        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
        if (a->message_response_case ==
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE) {
            CU_ASSERT(a->file_descriptor_response->n_file_descriptor_proto >= 1);
            ProtobufCBinaryData b = a->file_descriptor_response->file_descriptor_proto[0];
            Google__Protobuf__FileDescriptorProto *fd =
                google__protobuf__file_descriptor_proto__unpack(NULL, b.len, b.data);
            CU_ASSERT_PTR_NOT_NULL_FATAL(fd);
            CU_ASSERT_STRING_EQUAL(fd->name, i < 4 ? "kvsieve/v1/kvsieve.proto"
                                                   : "grpc/health/v1/health.proto");
            google__protobuf__file_descriptor_proto__free_unpacked(fd, NULL);
        }
        grpc__reflection__v1__server_reflection_response__free_unpacked(a, NULL);
    }
    q.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    q.file_containing_symbol = (char *)"no.such.Symbol";
    a = ask(r, &q);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(a->message_response_case,
                    GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    CU_ASSERT_EQUAL(a->error_response->error_code, 5);
    grpc__reflection__v1__server_reflection_response__free_unpacked(a, NULL);

    q.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
    q.file_by_filename = (char *)"grpc/reflection/v1alpha/reflection.proto";
    a = ask(r, &q);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(a->message_response_case,
                    GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    grpc__reflection__v1__server_reflection_response__free_unpacked(a, NULL);

    uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    uint8_t *out = NULL;
    size_t out_len;
    CU_ASSERT_EQUAL(srv_reflection_answer(r, junk, sizeof junk, &out, &out_len), KVS_EINVAL);
    srv_reflection_destroy(r);
}

/* ---- metrics ----------------------------------------------------------------------------- */

static void test_metrics_render(void)
{
    const char *names[] = {"alice", "bob"};
    srv_metrics *m = NULL;
    CU_ASSERT_EQUAL_FATAL(srv_metrics_create(NULL, "Tiny \"model\"", names, 2, &m), 0);
    srv_metrics_ttft(m, 0, 0.03);
    srv_metrics_ttft(m, 0, 0.5);
    srv_metrics_ttft(m, 1, 100.0);
    srv_metrics_itl(m, 0, 0.05);
    sched_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = SCHED_EV_FINISH;
    ev.finish_reason = SCHED_FINISH_LENGTH;
    ev.evicted_tokens = 42;
    srv_metrics_finish(m, 0, "knorm", &ev, 1.2);
    srv_metrics_finish(m, 0, "knorm", &ev, 1.2);
    srv_metrics_rejected(m, -1, 16);
    srv_metrics_rejected(m, 1, 3);
    srv_metrics_ttft(m, 7, 1.0); /* unknown tenant index: ignored */
    size_t n = 0;
    char *t = srv_metrics_render(m, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(strlen(t), n);
    const char *want[] = {
        "# TYPE vllm:time_to_first_token_seconds histogram\n",
        "vllm:time_to_first_token_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\",le=\"0.02\"} 0\n",
        "vllm:time_to_first_token_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\",le=\"0.04\"} 1\n",
        "vllm:time_to_first_token_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\",le=\"0.5\"} 2\n",
        "vllm:time_to_first_token_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\",le=\"+Inf\"} 2\n",
        "vllm:time_to_first_token_seconds_count{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\"} 2\n",
        "vllm:time_to_first_token_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"bob\",le=\"80\"} 0\n",
        "vllm:time_to_first_token_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"bob\",le=\"160\"} 1\n",
        "vllm:inter_token_latency_seconds_count{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\"} 1\n",
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\",le=\"1.5\"} 2\n",
        "vllm:request_success_total{model_name=\"Tiny \\\"model\\\"\",tenant=\"alice\",finished_reason=\"length\"} 2\n",
        "kvsieve_evicted_tokens_total{policy=\"knorm\",tenant=\"alice\"} 84\n",
        "kvsieve_requests_rejected_total{tenant=\"\",code=\"UNAUTHENTICATED\"} 1\n",
        "kvsieve_requests_rejected_total{tenant=\"bob\",code=\"INVALID_ARGUMENT\"} 1\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int ok = strstr(t, want[i]) != NULL;
        if (!ok) fprintf(stderr, "\n  missing: %s", want[i]);
        CU_ASSERT(ok);
    }
    free(t);
    srv_metrics_destroy(m);
}

static void test_metrics_http_bad_address(void)
{
    const char *names[] = {"default"};
    srv_metrics *m = NULL;
    CU_ASSERT_EQUAL_FATAL(srv_metrics_create(NULL, "m", names, 1, &m), 0);
    CU_ASSERT_NOT_EQUAL(srv_metrics_listen(m, "no-port", NULL), 0);
    CU_ASSERT_NOT_EQUAL(srv_metrics_listen(m, "256.1.1.1:80", NULL), 0);
    int port = 0;
    CU_ASSERT_EQUAL(srv_metrics_listen(m, "127.0.0.1:0", &port), 0);
    CU_ASSERT(port > 0);
    srv_metrics_destroy(m);
}

int main(void)
{
    make_hashes();
    static const kvs_test tests[] = {
        {"key hash, parse, generate", test_key_hash},
        {"authorization: Bearer", test_authorization_header},
        {"tenants file: good", test_tenants_good},
        {"tenants file: errors name file, line, column and field", test_tenants_errors},
        {"tenants file: load from disk", test_tenants_load_file},
        {"reflection answers", test_reflection},
        {"metrics text", test_metrics_render},
        {"metrics listen", test_metrics_http_bad_address},
    };
    return kvs_test_main("server_units", tests, (int)(sizeof tests / sizeof tests[0]));
}
