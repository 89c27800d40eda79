"""server_api_test.py — the gRPC API through Debian's python3-grpcio against a live
`kvsieve serve` with a tenants file (run by pytest_server_api.sh; loopback only).

Covers: streaming Generate (text, chat, token ids), Tokenize / GetModelInfo / GetServerInfo,
auth (missing / wrong key, Bearer and x-api-key), every bad request getting its status while
another request keeps streaming, tenant isolation (Abort, server info), per-tenant queue
limits, deadlines, reflection v1 and v1alpha (list, file by symbol, a call made with dynamic
messages only), health Check and Watch, UNIMPLEMENTED, and the Prometheus metrics.
"""
import os
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvs_server  # noqa: E402

kvs_server.check_prerequisites()
import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

pb, pb_grpc, health_pb, refl_v1, refl_v1alpha = kvs_server.make_stubs()

ALICE, BOB = "alice-test-key-1", "bob-test-key-2"
SRV = None
CH = None


def md(key):
    return (("authorization", "Bearer " + key),)


def setUpModule():
    global SRV, CH
    tenants = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    tenants.write("tenants:\n"
                  "  - name: alice\n"
                  "    key_hash: %s\n"
                  "    weight: 2\n"
                  "  - name: bob\n"
                  "    key_hash: %s\n"
                  "    limits: {max_running: 1, max_queued: 1}\n"
                  "    allowed_policies: [full]\n" % (kvs_server.hash_key(ALICE),
                                                     kvs_server.hash_key(BOB)))
    tenants.close()
    SRV = kvs_server.Server("--tenants", tenants.name)
    os.unlink(tenants.name)
    CH = grpc.insecure_channel(SRV.grpc)
    grpc.channel_ready_future(CH).result(timeout=10)


def tearDownModule():
    CH.close()
    rc, secs = SRV.terminate()
    if rc != 0:
        print(SRV.log_text())
    SRV.close()
    assert rc == 0, "server exit code %r" % rc


def stub():
    return pb_grpc.KvsieveStub(CH)


def collect(stream):
    """(messages, text, token ids, final, error or None)."""
    msgs, text, ids, final, err = [], "", [], None, None
    try:
        for m in stream:
            msgs.append(m)
            text += m.text
            ids.extend(m.token_ids)
            if m.HasField("finish"):
                final = m.finish
    except grpc.RpcError as e:
        err = e
    return msgs, text, ids, final, err


def wait_idle(tenant_key, timeout=5.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        si = stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=md(tenant_key))
        if si.running == 0 and si.waiting == 0 and si.kv_pages_used == 0:
            return si
        time.sleep(0.05)
    return None


class GenerateTest(unittest.TestCase):
    def test_stream_text_and_final(self):
        msgs, text, ids, final, err = collect(stub().Generate(
            pb.GenerateRequest(text="The capital of France is", max_tokens=6), metadata=md(ALICE)))
        self.assertIsNone(err)
        self.assertGreater(msgs[0].request_id, 0)
        self.assertEqual(len(msgs[0].token_ids), 0)  # the first message: the id only
        self.assertTrue(all(m.request_id == msgs[0].request_id for m in msgs))
        self.assertTrue(msgs[-1].HasField("finish"))
        self.assertEqual(final.reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(final.completion_tokens, 6)
        self.assertEqual(len(ids), 6)
        self.assertIn("Paris", text)
        self.assertGreater(final.ttft_s, 0)
        self.assertGreaterEqual(final.e2e_s, final.ttft_s)

    def test_chat(self):
        _, text, _, final, err = collect(stub().Generate(
            pb.GenerateRequest(text="What is the capital of France?", chat=True, max_tokens=20),
            metadata=md(ALICE)))
        self.assertIsNone(err)
        self.assertIn("Paris", text)
        self.assertIn(final.reason, (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH))

    def test_token_ids_prompt_matches_text(self):
        tok = stub().Tokenize(pb.TokenizeRequest(text="Once upon a time"), metadata=md(ALICE))
        self.assertGreater(len(tok.token_ids), 2)
        _, t1, ids1, _, e1 = collect(stub().Generate(
            pb.GenerateRequest(text="Once upon a time", max_tokens=5), metadata=md(ALICE)))
        _, t2, ids2, _, e2 = collect(stub().Generate(
            pb.GenerateRequest(token_ids=pb.TokenIds(ids=tok.token_ids), max_tokens=5),
            metadata=md(ALICE)))
        self.assertIsNone(e1)
        self.assertIsNone(e2)
        self.assertEqual(ids1, ids2)
        self.assertEqual(t1, t2)

    def test_stop_string(self):
        _, text, _, final, err = collect(stub().Generate(
            pb.GenerateRequest(text="1, 2, 3, 4, 5, 6,", max_tokens=30, stop=["9"]),
            metadata=md(ALICE)))
        self.assertIsNone(err)
        self.assertEqual(final.reason, pb.FINISH_REASON_STOP)
        self.assertNotIn("10", text)

    def test_eviction_policy_counts(self):
        prompt = " ".join("word%d" % i for i in range(60))
        _, _, _, final, err = collect(stub().Generate(
            pb.GenerateRequest(text=prompt, max_tokens=4, policy="knorm",
                               policy_args="ratio=0.5"), metadata=md(ALICE)))
        self.assertIsNone(err)
        self.assertEqual(final.policy, "knorm")
        self.assertGreater(final.evicted_tokens, 0)

    def test_deadline(self):
        t0 = time.time()
        _, _, _, _, err = collect(stub().Generate(
            pb.GenerateRequest(text="Count to a thousand:", max_tokens=2000, ignore_eos=True),
            metadata=md(ALICE), timeout=0.6))
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.time() - t0, 3)
        self.assertIsNotNone(wait_idle(ALICE), "KV pages not returned after the deadline")

    def test_deadline_counts_as_deadline(self):
        def finished(reason):
            text = urllib.request.urlopen("http://%s/metrics" % SRV.metrics, timeout=5).read()
            return sum(float(l.rsplit(" ", 1)[1]) for l in text.decode().splitlines()
                       if l.startswith("vllm:request_success_total{") and 'tenant="alice"' in l
                       and 'finished_reason="%s"' % reason in l)
        d0, a0 = finished("deadline"), finished("abort")
        _, _, _, _, err = collect(stub().Generate(
            pb.GenerateRequest(text="Count to a thousand:", max_tokens=2000, ignore_eos=True),
            metadata=md(ALICE), timeout=0.6))
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIsNotNone(wait_idle(ALICE))
        self.assertEqual(finished("deadline"), d0 + 1)  # not recorded as an abort
        self.assertEqual(finished("abort"), a0)

    def test_cancel_returns_pages(self):
        call = stub().Generate(pb.GenerateRequest(text="Tell a story:", max_tokens=2000,
                                                  ignore_eos=True), metadata=md(ALICE))
        n = 0
        for m in call:
            n += len(m.token_ids)
            if n >= 3:
                break
        si = stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=md(ALICE))
        self.assertGreater(si.kv_pages_used, 0)
        call.cancel()
        self.assertIsNotNone(wait_idle(ALICE), "KV pages not returned after a cancel")


class InfoTest(unittest.TestCase):
    def test_tokenize(self):
        r = stub().Tokenize(pb.TokenizeRequest(text="hello world", return_pieces=True),
                            metadata=md(ALICE))
        self.assertEqual(len(r.pieces), len(r.token_ids))
        self.assertEqual(b"".join(r.pieces[-2:]), b"hello world")
        chat = stub().Tokenize(pb.TokenizeRequest(text="hi", chat=True), metadata=md(ALICE))
        self.assertGreater(len(chat.token_ids), 5)

    def test_model_info(self):
        r = stub().GetModelInfo(pb.GetModelInfoRequest(), metadata=md(ALICE))
        self.assertEqual(r.n_ctx, 8192)
        self.assertEqual(r.n_vocab, 49152)
        self.assertEqual(r.architecture, "llama")
        self.assertIn("knorm", [p.name for p in r.policies])
        self.assertEqual(r.default_policy, "full")

    def test_server_info_is_per_tenant(self):
        r = stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=md(BOB))
        self.assertTrue(r.serving)
        self.assertEqual(r.tenant.name, "bob")
        self.assertEqual(list(r.tenant.allowed_policies), ["full"])
        self.assertEqual(r.tenant.max_running, 1)
        a = stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=md(ALICE))
        self.assertEqual(a.tenant.name, "alice")
        self.assertEqual(a.tenant.weight, 2.0)
        self.assertEqual(r.kv_pages_total, a.kv_pages_total)


class AuthTest(unittest.TestCase):
    def check(self, metadata, code):
        for call in (lambda: stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata),
                     lambda: stub().Tokenize(pb.TokenizeRequest(text="x"), metadata=metadata),
                     lambda: list(stub().Generate(pb.GenerateRequest(text="x", max_tokens=1),
                                                  metadata=metadata))):
            if code is None:
                call()
                continue
            with self.assertRaises(grpc.RpcError) as cm:
                call()
            self.assertEqual(cm.exception.code(), code)
            self.assertTrue(cm.exception.details())

    def test_missing_key(self):
        self.check((), grpc.StatusCode.UNAUTHENTICATED)

    def test_wrong_key(self):
        self.check(md("not-a-key"), grpc.StatusCode.UNAUTHENTICATED)
        self.check((("x-api-key", ALICE + "x"),), grpc.StatusCode.UNAUTHENTICATED)
        self.check((("authorization", "Basic " + ALICE),), grpc.StatusCode.UNAUTHENTICATED)

    def test_strict_headers(self):
        # one header, exactly "Bearer KEY": a later right key does not win over a wrong one,
        # and spaces around the key are refused
        self.check((("authorization", "Bearer wrong"), ("authorization", "Bearer " + ALICE)),
                   grpc.StatusCode.UNAUTHENTICATED)
        self.check((("authorization", "Bearer  " + ALICE),), grpc.StatusCode.UNAUTHENTICATED)
        self.check((("authorization", "Bearer " + ALICE + " "),),
                   grpc.StatusCode.UNAUTHENTICATED)
        self.check((("x-api-key", "wrong"), ("x-api-key", ALICE)),
                   grpc.StatusCode.UNAUTHENTICATED)

    def test_good_keys(self):
        self.check(md(ALICE), None)
        self.check((("x-api-key", BOB),), None)
        self.check((("authorization", "bearer " + ALICE),), None)


def raw_generate(data, key=ALICE):
    """Generate with raw request bytes (no serializer)."""
    call = CH.unary_stream("/kvsieve.v1.Kvsieve/Generate", request_serializer=lambda b: b,
                           response_deserializer=pb.GenerateResponse.FromString)
    return list(call(data, metadata=md(key), timeout=10))


class StrictInputTest(unittest.TestCase):
    def test_nul_in_strings(self):
        INVALID = grpc.StatusCode.INVALID_ARGUMENT
        for req in [pb.GenerateRequest(text="hi\0there", max_tokens=1),
                    pb.GenerateRequest(text="hi", max_tokens=1, policy="knorm\0junk",
                                       policy_args="ratio=0.5"),
                    pb.GenerateRequest(text="hi", max_tokens=1, stop=["a\0b"]),
                    pb.GenerateRequest(text="hi", chat=True, system="s\0", max_tokens=1)]:
            with self.subTest(req=req):
                with self.assertRaises(grpc.RpcError) as cm:
                    list(stub().Generate(req, metadata=md(ALICE), timeout=10))
                self.assertEqual(cm.exception.code(), INVALID)
                self.assertIn("NUL", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            stub().Tokenize(pb.TokenizeRequest(text="a\0b"), metadata=md(ALICE))
        self.assertEqual(cm.exception.code(), INVALID)

    def test_invalid_utf8(self):
        # field 1 (text), field 6 (max_tokens) = 1: text with bytes that are not UTF-8
        bad = b"\x0a\x04hi\xff\xfe" + b"\x30\x01"
        with self.assertRaises(grpc.RpcError) as cm:
            raw_generate(bad)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("UTF-8", cm.exception.details())
        self.assertNotIn("\ufffd", cm.exception.details())
        call = CH.unary_unary("/kvsieve.v1.Kvsieve/Tokenize", request_serializer=lambda b: b,
                              response_deserializer=pb.TokenizeResponse.FromString)
        with self.assertRaises(grpc.RpcError) as cm:
            call(b"\x0a\x02\xc3\x28", metadata=md(ALICE), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_several_messages_on_single_request_method(self):
        for path, req, resp in [
                ("/kvsieve.v1.Kvsieve/Tokenize", pb.TokenizeRequest(text="x"),
                 pb.TokenizeResponse),
                ("/kvsieve.v1.Kvsieve/Generate", pb.GenerateRequest(text="x", max_tokens=1),
                 pb.GenerateResponse)]:
            call = CH.stream_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=resp.FromString)
            with self.assertRaises(grpc.RpcError) as cm:
                list(call(iter([req, req]), metadata=md(ALICE), timeout=10))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            # one message through the same streaming stub is fine
            self.assertTrue(list(call(iter([req]), metadata=md(ALICE), timeout=10)))

    def test_stop_token_ids_in_vocabulary(self):
        with self.assertRaises(grpc.RpcError) as cm:
            list(stub().Generate(pb.GenerateRequest(text="x", max_tokens=1,
                                                    stop_token_ids=[10 ** 8]),
                                 metadata=md(ALICE), timeout=10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError):
            list(stub().Generate(pb.GenerateRequest(text="x", max_tokens=1,
                                                    stop_token_ids=[-1]),
                                 metadata=md(ALICE), timeout=10))


class BadRequestTest(unittest.TestCase):
    def test_bad_requests_while_streaming(self):
        result = {}

        def background():
            result["r"] = collect(stub().Generate(
                pb.GenerateRequest(text="Write about the ocean.", max_tokens=40, ignore_eos=True),
                metadata=md(ALICE)))

        th = threading.Thread(target=background)
        th.start()
        time.sleep(0.3)
        INVALID = grpc.StatusCode.INVALID_ARGUMENT
        G = pb.GenerateRequest
        cases = [
            ("empty prompt", G(text="", max_tokens=5), INVALID),
            ("no prompt", G(max_tokens=5), INVALID),
            ("empty token ids", G(token_ids=pb.TokenIds(ids=[]), max_tokens=5), INVALID),
            ("prompt over the context", G(token_ids=pb.TokenIds(ids=[100] * 9000), max_tokens=5),
             INVALID),
            ("token id out of range", G(token_ids=pb.TokenIds(ids=[5, 10 ** 6]), max_tokens=5),
             INVALID),
            ("negative token id", G(token_ids=pb.TokenIds(ids=[5, -3]), max_tokens=5), INVALID),
            ("unknown policy", G(text="hi", max_tokens=5, policy="no-such-policy"), INVALID),
            ("ratio out of range", G(text="hi", max_tokens=5, policy="knorm",
                                     policy_args="ratio=1.5"), INVALID),
            ("unknown policy option", G(text="hi", max_tokens=5, policy="knorm",
                                        policy_args="colour=blue"), INVALID),
            ("filters= from a client", G(text="hi", max_tokens=5, policy="qfilters",
                                         policy_args="filters=/etc/passwd"), INVALID),
            ("policy_args without policy", G(text="hi", max_tokens=5, policy_args="ratio=0.5"),
             INVALID),
            ("policy without ratio or budget (would evict nothing)",
             G(text="hi", max_tokens=5, policy="knorm"), INVALID),
            ("max_tokens 0", G(text="hi", max_tokens=0), INVALID),
            ("max_tokens negative", G(text="hi", max_tokens=-4), INVALID),
            ("max_tokens huge", G(text="hi", max_tokens=10 ** 9), INVALID),
            ("temperature negative", G(text="hi", max_tokens=5,
                                       sampling=pb.SamplingOptions(temperature=-1)), INVALID),
            ("top_p over 1", G(text="hi", max_tokens=5, sampling=pb.SamplingOptions(top_p=2)),
             INVALID),
            ("too many stop strings", G(text="hi", max_tokens=5, stop=["a"] * 9), INVALID),
            ("stop string too long", G(text="hi", max_tokens=5, stop=["x" * 100]), INVALID),
            ("empty stop string", G(text="hi", max_tokens=5, stop=[""]), INVALID),
            ("system without chat", G(text="hi", system="be brief", max_tokens=5), INVALID),
            ("chat with token ids", G(token_ids=pb.TokenIds(ids=[5]), chat=True, max_tokens=5),
             INVALID),
        ]
        if not os.path.exists(kvs_server.MODEL[:-5] + ".kvsqf"):
            cases.append(("qfilters without a filters file",
                          G(text="hi", max_tokens=5, policy="qfilters", policy_args="ratio=0.5"),
                          grpc.StatusCode.FAILED_PRECONDITION))
        for name, req, code in cases:
            with self.subTest(name):
                with self.assertRaises(grpc.RpcError) as cm:
                    list(stub().Generate(req, metadata=md(ALICE), timeout=10))
                self.assertEqual(cm.exception.code(), code, cm.exception.details())
                self.assertTrue(cm.exception.details())
        with self.subTest("policy not allowed for the tenant"):
            with self.assertRaises(grpc.RpcError) as cm:
                list(stub().Generate(G(text="hi", max_tokens=5, policy="knorm",
                                       policy_args="ratio=0.5"), metadata=md(BOB)))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("knorm", cm.exception.details())
        for name, data in [("truncated field", b"\x0a\x40ab"),
                           ("endless varint", b"\x08" + b"\xff" * 11),
                           ("wrong wire type", b"\x0d\x00")]:
            with self.subTest("malformed bytes: " + name):
                with self.assertRaises(grpc.RpcError) as cm:
                    raw_generate(data)
                self.assertEqual(cm.exception.code(), INVALID)
        th.join(60)
        msgs, text, ids, final, err = result["r"]
        self.assertIsNone(err, "the background stream failed")
        self.assertEqual(len(ids), 40)
        self.assertEqual(final.reason, pb.FINISH_REASON_LENGTH)

    def test_unimplemented(self):
        call = CH.unary_unary("/kvsieve.v1.Kvsieve/NoSuchMethod", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        t0 = time.time()
        with self.assertRaises(grpc.RpcError) as cm:
            call(b"", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertLess(time.time() - t0, 1)


class TenantTest(unittest.TestCase):
    def test_isolation_and_abort(self):
        call = stub().Generate(pb.GenerateRequest(text="Tell a story:", max_tokens=2000,
                                                  ignore_eos=True), metadata=md(ALICE))
        it = iter(call)
        first = next(it)
        rid = first.request_id
        with self.assertRaises(grpc.RpcError) as cm:
            stub().Abort(pb.AbortRequest(request_id=rid), metadata=md(BOB))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        bob = stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=md(BOB))
        self.assertEqual(bob.tenant.running + bob.tenant.waiting, 0)
        stub().Abort(pb.AbortRequest(request_id=rid), metadata=md(ALICE))
        msgs, _, _, final, err = collect(it)
        self.assertIsNotNone(final, "no final message after Abort")
        self.assertEqual(final.reason, pb.FINISH_REASON_ABORTED)
        self.assertEqual(err.code(), grpc.StatusCode.CANCELLED)
        with self.assertRaises(grpc.RpcError) as cm:
            stub().Abort(pb.AbortRequest(request_id=rid), metadata=md(ALICE))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIsNotNone(wait_idle(ALICE))

    def test_queue_limit(self):
        # bob: max_running 1, max_queued 1 -> of 4 at once, some are refused.
        results = [None] * 4

        def run(i):
            results[i] = collect(stub().Generate(
                pb.GenerateRequest(text="Hello", max_tokens=15, ignore_eos=True),
                metadata=md(BOB)))

        ths = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(60)
        codes = [r[4].code() if r[4] else grpc.StatusCode.OK for r in results]
        self.assertIn(grpc.StatusCode.RESOURCE_EXHAUSTED, codes)
        self.assertIn(grpc.StatusCode.OK, codes)
        for r in results:
            if r[4]:
                self.assertEqual(r[4].code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertIn("queued", r[4].details())
            else:
                self.assertEqual(r[3].completion_tokens, 15)


class ReflectionHealthTest(unittest.TestCase):
    SERVICES = {"kvsieve.v1.Kvsieve", "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}

    def reflect(self, mod, path, requests):
        call = CH.stream_stream(path, request_serializer=mod.ServerReflectionRequest.SerializeToString,
                                response_deserializer=mod.ServerReflectionResponse.FromString)
        return list(call(iter(requests), timeout=10))

    def check_version(self, mod, path):
        R = mod.ServerReflectionRequest
        out = self.reflect(mod, path, [R(list_services=""),
                                       R(file_containing_symbol="kvsieve.v1.Kvsieve"),
                                       R(file_containing_symbol="no.such.Thing"),
                                       R(file_by_filename="grpc/health/v1/health.proto")])
        self.assertEqual(len(out), 4)
        self.assertEqual({s.name for s in out[0].list_services_response.service}, self.SERVICES)
        files = out[1].file_descriptor_response.file_descriptor_proto
        self.assertGreaterEqual(len(files), 1)
        self.assertEqual(out[2].error_response.error_code, grpc.StatusCode.NOT_FOUND.value[0])
        self.assertEqual(len(out[3].file_descriptor_response.file_descriptor_proto), 1)
        # Build the API from reflection alone and call it with dynamic messages.
        pool = descriptor_pool.DescriptorPool()
        for raw in files:
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
        svc = pool.FindServiceByName("kvsieve.v1.Kvsieve")
        meth = svc.methods_by_name["GetModelInfo"]
        Req = message_factory.MessageFactory(pool).GetPrototype(meth.input_type)
        Resp = message_factory.MessageFactory(pool).GetPrototype(meth.output_type)
        call = CH.unary_unary("/kvsieve.v1.Kvsieve/GetModelInfo",
                              request_serializer=Req.SerializeToString,
                              response_deserializer=Resp.FromString)
        info = call(Req(), metadata=md(ALICE), timeout=10)
        self.assertEqual(info.n_ctx, 8192)

    def test_reflection_v1(self):
        self.check_version(refl_v1, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")

    def test_reflection_v1alpha(self):
        self.check_version(refl_v1alpha,
                           "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")

    def test_health(self):
        h = CH.unary_unary("/grpc.health.v1.Health/Check",
                           request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                           response_deserializer=health_pb.HealthCheckResponse.FromString)
        self.assertEqual(h(health_pb.HealthCheckRequest(), timeout=5).status,
                         health_pb.HealthCheckResponse.SERVING)
        self.assertEqual(h(health_pb.HealthCheckRequest(service="kvsieve.v1.Kvsieve"),
                           timeout=5).status, health_pb.HealthCheckResponse.SERVING)
        with self.assertRaises(grpc.RpcError) as cm:
            h(health_pb.HealthCheckRequest(service="nope"), timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        w = CH.unary_stream("/grpc.health.v1.Health/Watch",
                            request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                            response_deserializer=health_pb.HealthCheckResponse.FromString)
        call = w(health_pb.HealthCheckRequest())
        self.assertEqual(next(iter(call)).status, health_pb.HealthCheckResponse.SERVING)
        call.cancel()
        call = w(health_pb.HealthCheckRequest(service="nope"))
        self.assertEqual(next(iter(call)).status, health_pb.HealthCheckResponse.SERVICE_UNKNOWN)
        call.cancel()


class MetricsTest(unittest.TestCase):
    def test_metrics(self):
        list(stub().Generate(pb.GenerateRequest(text="Hi", max_tokens=3), metadata=md(ALICE)))
        text = urllib.request.urlopen("http://%s/metrics" % SRV.metrics, timeout=5).read().decode()
        for name in ["vllm:num_requests_running{", "vllm:num_requests_waiting{",
                     "vllm:kv_cache_usage_perc{", "vllm:time_to_first_token_seconds_bucket{",
                     "vllm:inter_token_latency_seconds_bucket{",
                     "vllm:e2e_request_latency_seconds_bucket{", "vllm:num_preemptions_total{",
                     "vllm:prompt_tokens_total{", "vllm:generation_tokens_total{",
                     "kvsieve_evicted_tokens_total{policy=", "kvsieve_compaction_moves_total ",
                     "kvsieve_kv_fragmentation ", "kvsieve_kv_pages_used ",
                     "kvsieve_kv_pages_free ", 'tenant="alice"', 'tenant="bob"',
                     'kvsieve_requests_rejected_total{tenant="",code="UNAUTHENTICATED"}']:
            self.assertIn(name, text)
        vals = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                vals[k] = float(v)
        ttft = [v for k, v in vals.items()
                if k.startswith("vllm:time_to_first_token_seconds_count") and 'tenant="alice"' in k]
        self.assertTrue(ttft and ttft[0] >= 1)
        gen = [v for k, v in vals.items()
               if k.startswith("vllm:generation_tokens_total") and 'tenant="alice"' in k]
        self.assertTrue(gen and gen[0] >= 3)
        # Only GET /metrics exists.
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen("http://%s/other" % SRV.metrics, timeout=5)
        self.assertEqual(cm.exception.code, 404)


class KvDtypeTest(unittest.TestCase):
    """--kv-dtype: one KV format per server, reported in GetServerInfo and the metrics; a
    request naming another one is INVALID_ARGUMENT naming the server's."""

    @classmethod
    def setUpClass(cls):
        cls.srv = kvs_server.Server("--kv-dtype", "f16")
        cls.ch = grpc.insecure_channel(cls.srv.grpc)
        grpc.channel_ready_future(cls.ch).result(timeout=10)
        cls.st = pb_grpc.KvsieveStub(cls.ch)

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        cls.srv.terminate()
        cls.srv.close()

    def test_info_and_metrics(self):
        f32 = stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=md(ALICE))
        f16 = self.st.GetServerInfo(pb.GetServerInfoRequest())
        self.assertEqual(f32.kv_dtype, "f32")
        self.assertEqual(f16.kv_dtype, "f16")
        # SmolLM2-135M: 30 layers x 3 KV heads x (K + V rows of 64 + pos + score)
        heads, meta = 30 * 3, 8
        self.assertEqual(f32.kv_bytes_per_token, heads * (2 * 64 * 4 + meta))
        self.assertEqual(f16.kv_bytes_per_token, heads * (2 * 64 * 2 + meta))
        self.assertEqual(f32.kv_bytes_per_token - heads * meta,
                         2 * (f16.kv_bytes_per_token - heads * meta))
        # the same --kv-memory holds about twice the pages (the pos/score part does not shrink)
        self.assertGreater(f16.kv_pages_total, 1.9 * f32.kv_pages_total)
        self.assertLessEqual(f16.kv_bytes_total, 256 << 20)
        body = urllib.request.urlopen("http://%s/metrics" % self.srv.metrics, timeout=10).read()
        self.assertIn(b'kvsieve_kv_dtype_info{dtype="f16"} 1', body)
        self.assertIn(b"kvsieve_kv_bytes_per_token %d" % f16.kv_bytes_per_token, body)

    def test_request_dtype(self):
        ok = list(self.st.Generate(pb.GenerateRequest(text="The capital of France is",
                                                     max_tokens=2, kv_dtype="f16")))
        self.assertEqual(ok[-1].finish.reason, pb.FINISH_REASON_LENGTH)
        for bad, needle in (("f32", "this server stores KV as f16"),
                            ("int8/int4", "this server stores KV as f16"),
                            ("fp4x", "not a KV dtype")):
            with self.assertRaises(grpc.RpcError) as cm:
                list(self.st.Generate(pb.GenerateRequest(text="hi", max_tokens=2,
                                                         kv_dtype=bad)))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, bad)
            self.assertIn(needle, cm.exception.details())
            if needle == "not a KV dtype":  # an unknown name is not echoed back
                self.assertNotIn("fp4x", cm.exception.details())


if __name__ == "__main__":
    unittest.main(verbosity=2)
