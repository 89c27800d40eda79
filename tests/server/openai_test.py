"""The OpenAI-compatible HTTP API through the official `openai` Python client (PyPI), against a
live `kvsieve serve --http-listen` with a tenants file (run by pytest_openai.sh; loopback
only). Completions, chat, streaming, n / seed, logprobs, the kvsieve extension object, errors
with their HTTP statuses, tokenize / detokenize, client disconnects and draining."""
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvs_server  # noqa: E402

import openai  # noqa: E402

ALICE = "kvs-alice-test-key-0123456789abcdefghijklmnopqrstuv"
BOB = "kvs-bob-test-key-0123456789abcdefghijklmnopqrstuvwxy"
CAROL = "kvs-carol-test-key-0123456789abcdefghijklmnopqrstuvw"
MODEL = "kvs-test-model"
SRV = None


def setUpModule():
    global SRV
    kvs_server.check_prerequisites_http()
    tenants = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    tenants.write("tenants:\n"
                  "  - name: alice\n"
                  "    key_hash: %s\n"
                  "  - name: bob\n"
                  "    key_hash: %s\n"
                  "    allowed_policies: [full]\n"
                  "  - name: carol\n"
                  "    key_hash: %s\n"
                  "    limits: {max_running: 1, max_queued: 1}\n"
                  % (kvs_server.hash_key(ALICE), kvs_server.hash_key(BOB),
                     kvs_server.hash_key(CAROL)))
    tenants.close()
    SRV = kvs_server.Server("--tenants", tenants.name, "--http-listen", "127.0.0.1:0",
                            "--http-metrics", "--served-model-name", MODEL)
    os.unlink(tenants.name)


def tearDownModule():
    if SRV:
        rc, _ = SRV.terminate()
        log = SRV.log_text()
        SRV.close()
        if rc != 0:  # a crash, a hang, or (sanitizer builds) a leak report
            print(log)
            raise AssertionError("kvsieve serve exited with %s" % rc)


def client(key=ALICE, **kw):
    return openai.OpenAI(base_url="http://%s/v1" % SRV.http, api_key=key, max_retries=0,
                         timeout=60, **kw)


def post(path, body, key=ALICE, headers=None, raw=None):
    """(status, parsed JSON or None, headers) of a POST with http.client."""
    c = http.client.HTTPConnection(*SRV.http.rsplit(":", 1), timeout=60)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    h.update(headers or {})
    c.request("POST", path, body=raw if raw is not None else json.dumps(body), headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data), r
    except ValueError:
        return r.status, None, r


def metrics():
    text = urllib.request.urlopen("http://%s/metrics" % SRV.http, timeout=10).read().decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    return vals


def running():
    return sum(v for k, v in metrics().items() if k.startswith("vllm:num_requests_running{"))


def wait_idle(timeout=10.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if running() == 0:
            return time.time() - t0
        time.sleep(0.05)
    raise AssertionError("requests still running after %.0fs" % timeout)


def n_tokens(**body):
    st, js, _ = post("/tokenize", body)
    assert st == 200, js
    return js["count"]


class Completions(unittest.TestCase):
    def test_models(self):
        ids = [m.id for m in client().models.list()]
        self.assertEqual(ids, [MODEL])
        self.assertEqual(client().models.retrieve(MODEL).id, MODEL)
        with self.assertRaises(openai.NotFoundError):
            client().models.retrieve("gpt-4")

    def test_completion(self):
        prompt = "The capital of France is"
        r = client().completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.model, MODEL)
        self.assertEqual(len(r.choices), 1)
        c = r.choices[0]
        self.assertIn("Paris", c.text)
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.prompt_tokens, n_tokens(prompt=prompt))
        self.assertLessEqual(r.usage.completion_tokens, 6)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        again = client().completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                            temperature=0)
        self.assertEqual(again.choices[0].text, c.text)  # greedy is deterministic

    def test_completion_length_and_default_max_tokens(self):
        r = client().completions.create(model=MODEL, prompt="Count: 1, 2, 3,", temperature=0,
                                        extra_body={"kvsieve": {"ignore_eos": True}})
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 16)  # OpenAI's default max_tokens

    def test_stop(self):
        r = client().completions.create(model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=20,
                                        temperature=0, stop=[" 5"])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertNotIn(" 5", r.choices[0].text)
        self.assertIn("4", r.choices[0].text)
        r = client().completions.create(model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=20,
                                        temperature=0, stop=",")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].text.strip(), "4")

    def test_token_id_prompt_matches_text(self):
        prompt = "The capital of France is"
        _, tok, _ = post("/tokenize", {"prompt": prompt})
        a = client().completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
        b = client().completions.create(model=MODEL, prompt=tok["tokens"], max_tokens=5,
                                        temperature=0)
        self.assertEqual(a.choices[0].text, b.choices[0].text)

    def test_several_prompts_and_n(self):
        r = client().completions.create(model=MODEL, prompt=["Hello", "The sky is"], n=2,
                                        max_tokens=3, temperature=0)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2, 3])
        self.assertEqual(r.choices[0].text, r.choices[1].text)
        self.assertEqual(r.choices[2].text, r.choices[3].text)
        self.assertEqual(r.usage.prompt_tokens, n_tokens(prompt="Hello") +
                         n_tokens(prompt="The sky is"))

    def test_seed(self):
        kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, n=3)
        a = client().completions.create(seed=1234, **kw)
        b = client().completions.create(seed=1234, **kw)
        self.assertEqual([c.text for c in a.choices], [c.text for c in b.choices])
        self.assertEqual(len(a.choices), 3)

    def test_logprobs(self):
        r = client().completions.create(model=MODEL, prompt="The capital of France is",
                                        max_tokens=4, temperature=0, logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), r.usage.completion_tokens)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        for t, v, top, off in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
            self.assertLessEqual(v, 0)
            self.assertEqual(len(top), 2)
            self.assertAlmostEqual(max(top.values()), v, places=4)  # greedy picks the top
        self.assertEqual(lp.text_offset[0], 0)

    def test_stream(self):
        kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
        full = client().completions.create(**kw)
        chunks = list(client().completions.create(stream=True,
                                                  stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, full.choices[0].text)
        finals = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual(finals[-1], full.choices[0].finish_reason)
        self.assertTrue(all(f is None for f in finals[:-1]))
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, full.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, full.usage.prompt_tokens)
        # without include_usage, no usage chunk
        chunks = list(client().completions.create(stream=True, **kw))
        self.assertTrue(all(c.choices for c in chunks))


class Chat(unittest.TestCase):
    MSGS = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3? Answer with a number."}]

    def test_chat(self):
        r = client().chat.completions.create(model=MODEL, messages=self.MSGS, max_tokens=10,
                                             temperature=0)
        self.assertEqual(r.object, "chat.completion")
        m = r.choices[0].message
        self.assertEqual(m.role, "assistant")
        self.assertTrue(m.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.prompt_tokens, n_tokens(messages=self.MSGS))

    def test_template_turns(self):
        # the default system message of the template when none is given; parts arrays
        _, a, _ = post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
        _, b, _ = post("/tokenize", {"messages": [{"role": "user",
                                                   "content": [{"type": "text", "text": "hi"}]}]})
        self.assertEqual(a["tokens"], b["tokens"])
        _, d, _ = post("/detokenize", {"tokens": a["tokens"]})
        self.assertTrue(d["prompt"].startswith("<|im_start|>system\n"), d["prompt"])
        self.assertTrue(d["prompt"].endswith("<|im_start|>user\nhi<|im_end|>\n"
                                             "<|im_start|>assistant\n"), d["prompt"])
        _, s, _ = post("/tokenize", {"messages": [{"role": "system", "content": "S"},
                                                  {"role": "user", "content": "hi"}]})
        _, d, _ = post("/detokenize", {"tokens": s["tokens"]})
        self.assertEqual(d["prompt"], "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi"
                         "<|im_end|>\n<|im_start|>assistant\n")

    def test_max_completion_tokens(self):
        r = client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write a long story."}],
            max_completion_tokens=3, temperature=0)
        self.assertEqual(r.usage.completion_tokens, 3)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_stream(self):
        kw = dict(model=MODEL, messages=self.MSGS, max_tokens=10, temperature=0)
        full = client().chat.completions.create(**kw)
        chunks = list(client().chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kw))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, full.choices[0].message.content)
        self.assertEqual([c for c in chunks if c.choices][-1].choices[0].finish_reason,
                         full.choices[0].finish_reason)
        self.assertEqual(chunks[-1].usage.total_tokens, full.usage.total_tokens)

    def test_logprobs(self):
        r = client().chat.completions.create(model=MODEL, messages=self.MSGS, max_tokens=4,
                                             temperature=0, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens -
                         (1 if r.choices[0].finish_reason == "stop" else 0))
        for t in content:
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertEqual(t.top_logprobs[0].token, t.token)
            self.assertEqual(bytes(t.bytes).decode(errors="replace"), t.token)
            self.assertGreaterEqual(t.top_logprobs[0].logprob, t.top_logprobs[1].logprob)

    def test_n(self):
        r = client().chat.completions.create(model=MODEL, messages=self.MSGS, max_tokens=4,
                                             temperature=0.8, seed=5, n=2)
        self.assertEqual([c.index for c in r.choices], [0, 1])


class Extension(unittest.TestCase):
    def test_policy(self):
        before = sum(v for k, v in metrics().items()
                     if k.startswith("kvsieve_evicted_tokens_total{") and 'policy="knorm"' in k)
        prompt = "The quick brown fox jumps over the lazy dog. " * 12
        r = client().completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0,
                                        extra_body={"kvsieve": {"policy": "knorm",
                                                                "ratio": 0.5}})
        self.assertEqual(len(r.choices), 1)
        after = sum(v for k, v in metrics().items()
                    if k.startswith("kvsieve_evicted_tokens_total{") and 'policy="knorm"' in k)
        self.assertGreater(after, before)

    def test_kv_dtype(self):
        c = client()
        r = c.completions.create(model=MODEL, prompt="hi", max_tokens=1,
                                 extra_body={"kvsieve": {"kv_dtype": "f32"}})
        self.assertEqual(len(r.choices), 1)
        with self.assertRaises(openai.BadRequestError) as cm:  # one format per server
            c.completions.create(model=MODEL, prompt="hi", max_tokens=1,
                                 extra_body={"kvsieve": {"kv_dtype": "int8/int4"}})
        self.assertIn("this server stores KV as f32", cm.exception.message)
        with self.assertRaises(openai.BadRequestError):
            c.completions.create(model=MODEL, prompt="hi", max_tokens=1,
                                 extra_body={"kvsieve": {"kv_dtype": 16}})

    def test_policy_errors(self):
        c = client()
        with self.assertRaises(openai.BadRequestError) as cm:  # would evict nothing
            c.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                 extra_body={"kvsieve": {"policy": "knorm"}})
        self.assertIn("ratio", cm.exception.message)
        with self.assertRaises(openai.BadRequestError):
            c.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                 extra_body={"kvsieve": {"policy": "nosuch", "ratio": 0.5}})
        with self.assertRaises(openai.BadRequestError):
            c.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                 extra_body={"kvsieve": {"polcy": "knorm"}})
        with self.assertRaises(openai.BadRequestError):
            c.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                 extra_body={"kvsieve": {"policy": "knorm",
                                                         "policy_args": "filters=/etc/passwd,"
                                                                        "ratio=0.5"}})
        with self.assertRaises(openai.PermissionDeniedError):  # bob: allowed_policies [full]
            client(BOB).completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                           extra_body={"kvsieve": {"policy": "knorm",
                                                                   "ratio": 0.5}})

    def test_stop_token_ids(self):
        _, tok, _ = post("/tokenize", {"prompt": " 4"})
        r = client().completions.create(model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=20,
                                        temperature=0,
                                        extra_body={"kvsieve": {"stop_token_ids": tok["tokens"]}})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        with self.assertRaises(openai.BadRequestError):
            client().completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                        extra_body={"kvsieve": {"stop_token_ids": [10 ** 7]}})


class Errors(unittest.TestCase):
    def test_auth(self):
        with self.assertRaises(openai.AuthenticationError):
            client("wrong-key").completions.create(model=MODEL, prompt="hi", max_tokens=1)
        st, js, _ = post("/v1/completions", {"prompt": "hi", "max_tokens": 1}, key=None)
        self.assertEqual(st, 401)
        self.assertEqual(js["error"]["type"], "authentication_error")
        st, _, _ = post("/v1/completions", {"prompt": "hi", "max_tokens": 1}, key=None,
                        headers={"Authorization": "Bearer  " + ALICE})  # extra space
        self.assertEqual(st, 401)
        st, _, _ = post("/v1/completions", {"prompt": "hi", "max_tokens": 1}, key=None,
                        headers={"Authorization": "Bearer " + ALICE + " "})
        self.assertEqual(st, 401)
        # two Authorization headers, the second one right: refused
        c = http.client.HTTPConnection(*SRV.http.rsplit(":", 1), timeout=30)
        c.putrequest("POST", "/v1/completions")
        c.putheader("Authorization", "Bearer wrong")
        c.putheader("Authorization", "Bearer " + ALICE)
        body = b'{"prompt": "hi", "max_tokens": 1}'
        c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        self.assertEqual(r.status, 401)
        self.assertIn(b"more than one", r.read())
        c.close()
        # health and metrics need no key
        self.assertEqual(urllib.request.urlopen("http://%s/health" % SRV.http).status, 200)

    def test_queue_full_is_429(self):
        kw = dict(model=MODEL, prompt="Tell me a story.", max_tokens=500, stream=True,
                  extra_body={"kvsieve": {"ignore_eos": True}})
        a = client(CAROL).completions.create(**kw)
        next(iter(a))  # running
        b = client(CAROL).completions.create(**kw)  # queued (max_running 1, max_queued 1)
        t0 = time.time()
        while time.time() - t0 < 10:
            w = [v for k, v in metrics().items()
                 if k.startswith("vllm:num_requests_waiting{") and 'tenant="carol"' in k]
            if w and w[0] >= 1:
                break
            time.sleep(0.05)
        with self.assertRaises(openai.RateLimitError) as cm:
            client(CAROL).completions.create(model=MODEL, prompt="hi", max_tokens=1)
        self.assertEqual(cm.exception.status_code, 429)
        a.response.close()
        b.response.close()
        wait_idle()

    def test_bad_requests(self):
        c = client()
        for kw in [dict(max_tokens=0), dict(max_tokens=10 ** 6), dict(temperature=5),
                   dict(top_p=0), dict(n=0), dict(n=100), dict(stop=["x"] * 9),
                   dict(extra_body={"max_tokens": "many"}), dict(logprobs=9),
                   dict(presence_penalty=1.0), dict(stream_options={"include_usage": True})]:
            with self.subTest(kw=kw):
                args = dict(model=MODEL, prompt="hi", max_tokens=2)
                args.update(kw)
                with self.assertRaises(openai.BadRequestError):
                    c.completions.create(**args)
        with self.assertRaises(openai.NotFoundError):
            c.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=MODEL, messages=[], max_tokens=1)
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "x"}],
                                      max_tokens=1)
        with self.assertRaises(openai.BadRequestError):
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                      max_tokens=1, top_logprobs=2)

    def test_error_object_and_statuses(self):
        st, js, r = post("/v1/completions", None, raw=b"{not json")
        self.assertEqual(st, 400)
        self.assertEqual(set(js["error"]), {"message", "type", "param", "code"})
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        st, js, _ = post("/v1/nothing", {})
        self.assertEqual(st, 404)
        st, js, _ = post("/v1/completions", None, raw=b'{"prompt": "a\\u0000b", "max_tokens": 1}')
        self.assertEqual(st, 400)
        self.assertIn("NUL", js["error"]["message"])
        st, js, _ = post("/v1/completions", None, raw=b'{"prompt": "a\xff\xfe", "max_tokens": 1}')
        self.assertEqual(st, 400)
        self.assertNotIn("\xff", js["error"]["message"])
        # 413 for bodies over the limit: http_wire_test.py (the server answers before reading
        # the body, which http.client may see as a broken pipe)
        c = http.client.HTTPConnection(*SRV.http.rsplit(":", 1), timeout=30)
        c.request("GET", "/v1/completions")
        r = c.getresponse()
        self.assertEqual(r.status, 405)
        self.assertEqual(r.getheader("Allow"), "POST")
        r.read()
        c.close()


class Tokenize(unittest.TestCase):
    def test_roundtrip(self):
        st, t, _ = post("/tokenize", {"prompt": "Hello, world! \u00e9\u4e16"})
        self.assertEqual(st, 200)
        self.assertEqual(t["count"], len(t["tokens"]))
        st, d, _ = post("/detokenize", {"tokens": t["tokens"]})
        self.assertEqual(d["prompt"], "Hello, world! \u00e9\u4e16")
        st, d, _ = post("/detokenize", {"tokens": [-1]})
        self.assertEqual(st, 400)


class Disconnect(unittest.TestCase):
    """A client that goes away has its request aborted and its pages freed at once."""

    def test_stream_disconnect(self):
        wait_idle()
        s = client().completions.create(model=MODEL, prompt="Tell me a story.", max_tokens=2000,
                                        temperature=0, stream=True,
                                        extra_body={"kvsieve": {"ignore_eos": True}})
        it = iter(s)
        for _ in range(3):
            next(it)
        self.assertGreaterEqual(running(), 1)
        s.response.close()
        took = wait_idle(5.0)
        self.assertLess(took, 2.0)
        used = [v for k, v in metrics().items() if k.startswith("kvsieve_kv_pages_used")]
        self.assertEqual(used, [0.0])

    def test_blocking_disconnect(self):
        wait_idle()
        sock = socket.create_connection(tuple([SRV.http.rsplit(":", 1)[0],
                                               int(SRV.http.rsplit(":", 1)[1])]), timeout=10)
        body = json.dumps({"prompt": "Tell me a story.", "max_tokens": 2000,
                           "kvsieve": {"ignore_eos": True}}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                     ALICE.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        t0 = time.time()
        while running() < 1 and time.time() - t0 < 10:
            time.sleep(0.05)
        self.assertGreaterEqual(running(), 1)
        sock.close()
        self.assertLess(wait_idle(5.0), 2.0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
