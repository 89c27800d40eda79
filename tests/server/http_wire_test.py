"""The OpenAI HTTP API on the wire (run by pytest_http_wire.sh; stdlib + curl; loopback only):
SSE framing as `curl -N` sees it, and garbage (bad JSON, wrong types, huge bodies, raw junk,
slow clients) that must get 4xx JSON errors and leave the server serving."""
import json
import os
import random
import socket
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvs_server  # noqa: E402

SRV = None


def setUpModule():
    global SRV
    kvs_server.check_prerequisites_http()
    SRV = kvs_server.Server("--http-listen", "127.0.0.1:0", "--served-model-name", "m")


def tearDownModule():
    if SRV:
        rc, _ = SRV.terminate()
        log = SRV.log_text()
        SRV.close()
        if rc != 0:  # a crash, a hang, or (sanitizer builds) a leak report
            print(log)
            raise AssertionError("kvsieve serve exited with %s" % rc)


def url(path):
    return "http://%s%s" % (SRV.http, path)


def post(path, raw, headers=None, timeout=60):
    req = urllib.request.Request(url(path), data=raw, method="POST",
                                 headers=dict({"Content-Type": "application/json"},
                                              **(headers or {})))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def addr():
    h, p = SRV.http.rsplit(":", 1)
    return h, int(p)


def serving(test):
    """The server still answers /health and a small completion."""
    test.assertEqual(urllib.request.urlopen(url("/health"), timeout=10).status, 200)
    st, body = post("/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2}).encode())
    test.assertEqual(st, 200, body)
    test.assertIsNone(SRV.proc.poll())


class Curl(unittest.TestCase):
    def test_sse_framing(self):
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 24, "stream": True,
                           "temperature": 0, "kvsieve": {"ignore_eos": True},
                           "stream_options": {"include_usage": True}})
        p = subprocess.Popen(["curl", "-sS", "-N", "-D", "-", url("/v1/completions"),
                              "-H", "Content-Type: application/json", "-d", body],
                             stdout=subprocess.PIPE)
        lines, stamps = [], []
        t_end = time.time() + 120
        while time.time() < t_end:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line.decode())
            stamps.append(time.time())
        self.assertEqual(p.wait(timeout=30), 0)
        p.stdout.close()
        head_end = lines.index("\r\n")
        head = "".join(lines[:head_end]).lower()
        self.assertIn("200 ok", head.splitlines()[0])
        self.assertIn("content-type: text/event-stream", head)
        self.assertIn("transfer-encoding: chunked", head)
        events = "".join(lines[head_end + 1:])
        self.assertTrue(events.endswith("data: [DONE]\n\n"), events[-200:])
        frames = events.split("\n\n")
        self.assertEqual(frames[-1], "")
        frames = frames[:-1]
        for f in frames:
            self.assertTrue(f.startswith("data: ") and "\n" not in f, repr(f))
        chunks = [json.loads(f[6:]) for f in frames[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        self.assertTrue(text)
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 24)
        # streamed as generated: the first event comes well before the last
        first = next(i for i, l in enumerate(lines) if l.startswith("data: "))
        self.assertGreater(stamps[-1] - stamps[first], 0.1)
        self.assertGreaterEqual(len(chunks), 5)

    def test_curl_errors(self):
        out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", url("/v1/chat/completions"),
                              "-d", '{"messages": "hi"}'], capture_output=True, timeout=30)
        body, code = out.stdout.decode().rsplit("\n", 1)
        self.assertEqual(code, "400")
        self.assertEqual(json.loads(body)["error"]["param"], "messages")


BAD_BODIES = [
    b"", b"{", b"[]", b"null", b"1", b'"x"', b"{\"prompt\": }", b"{'prompt': 'x'}",
    b'{"prompt": "x", "prompt": "y"}',                     # duplicate key
    b'{"prompt": "a\xff\xfeb"}',                           # invalid UTF-8
    b'{"prompt": "a\\u0000b"}',                            # NUL
    b'{"prompt": "\\ud800"}',                              # lone surrogate
    b"[" * 100000 + b"]" * 100000,                         # deep nesting
]
FIELD_VALUES = {
    "prompt": [1, {}, [], [[]], [1.5], [-1], [10 ** 9], True, None, [["x"]]],
    "max_tokens": ["1", 1.5, -1, 0, [], {}, 10 ** 12],
    "temperature": ["x", -1, 3, [], True],
    "top_p": ["x", 0, 2, -0.5],
    "n": ["2", 2.5, 0, -1, 1000],
    "seed": ["x", 1.5, []],
    "stop": [1, [1], [""], ["x" * 100], {}, ["a"] * 20],
    "stream": ["yes", 1, []],
    "stream_options": [1, "x", {"include_usage": "yes"}],
    "logprobs": ["x", -1, 100, 1.5],
    "model": [1, [], "other-model"],
    "kvsieve": [1, "x", [], {"policy": 1}, {"ratio": "x"}, {"stop_token_ids": "x"},
                {"stop_token_ids": [-1]}, {"nope": 1}, {"policy": "knorm"},
                {"policy": "knorm", "ratio": 2}, {"policy": "x" * 1000, "ratio": 0.5},
                {"policy": "knorm", "policy_args": "ratio=0.5,junk=1"},
                {"priority": "high"}, {"top_k": -1}],
    "presence_penalty": [1, "x"],
    "logit_bias": [{"1": 5}],
    "echo": [True],
}
CHAT_VALUES = {
    "messages": ["x", 1, [], [1], [{}], [{"role": 1}], [{"role": "user", "content": 1}],
                 [{"role": "tool", "content": "x"}],
                 [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
                 [{"role": "user", "content": [1]}]],
    "top_logprobs": [100, "x", -1],
    "logprobs": ["x", 1],
    "max_completion_tokens": ["x", 0],
}


class Garbage(unittest.TestCase):
    def expect_4xx(self, path, raw, what):
        st, body = post(path, raw)
        self.assertTrue(400 <= st < 500, "%s: %s -> %d %r" % (path, what, st, body[:200]))
        err = json.loads(body)["error"]
        self.assertTrue(err["message"])
        self.assertNotIn("\ufffd", err["message"])  # client bytes never echoed raw
        return st

    def test_bad_json(self):
        for raw in BAD_BODIES:
            for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
                self.expect_4xx(path, raw, raw[:40])
        serving(self)

    def test_wrong_types(self):
        for field, values in FIELD_VALUES.items():
            for v in values:
                body = {"prompt": "hi", "max_tokens": 2}
                body[field] = v
                self.expect_4xx("/v1/completions", json.dumps(body).encode(), (field, v))
        for field, values in CHAT_VALUES.items():
            for v in values:
                body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                body[field] = v
                self.expect_4xx("/v1/chat/completions", json.dumps(body).encode(), (field, v))
        serving(self)

    def test_random_bytes(self):
        rng = random.Random(13)
        for i in range(200):
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            self.expect_4xx("/v1/completions", raw, "random %d" % i)
        # random mutations of a valid body
        good = json.dumps({"prompt": "hi", "max_tokens": 2, "temperature": 0,
                           "stop": ["x"], "kvsieve": {"ignore_eos": True}}).encode()
        for i in range(200):
            b = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            st, body = post("/v1/completions", bytes(b))
            self.assertTrue(st == 200 or 400 <= st < 500, (st, bytes(b), body[:200]))
        serving(self)

    def test_huge_bodies(self):
        # over the limit with Content-Length: 413 at once (the server need not read the rest)
        s = socket.create_connection(addr(), timeout=30)
        resp = b""
        try:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                      % (3 << 20) + b"x" * (3 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            resp = s.recv(4096)
        except ConnectionResetError:
            pass
        s.close()
        self.assertIn(b" 413 ", resp.split(b"\r\n")[0])
        # a prompt under the body limit but far over the context
        st, body = post("/v1/completions",
                        json.dumps({"prompt": "hello " * 150000, "max_tokens": 1}).encode())
        self.assertEqual(st, 400, body[:200])
        self.assertIn(b"context", body)
        # chunked upload over the limit (no Content-Length)
        s = socket.create_connection(addr(), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/json\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(40):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            resp = s.recv(4096)
            self.assertIn(b" 413 ", resp.split(b"\r\n")[0])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refusing the rest of the upload by closing is fine too
        s.close()
        # Content-Length announcing more than the limit: refused before the body
        s = socket.create_connection(addr(), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n"
                  b"\r\n")
        self.assertIn(b" 413 ", s.recv(4096).split(b"\r\n")[0])
        s.close()
        serving(self)

    def test_raw_junk_and_slow_clients(self):
        rng = random.Random(7)
        for i in range(30):
            s = socket.create_connection(addr(), timeout=10)
            s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))) +
                      b"\r\n\r\n")
            try:
                s.recv(4096)
            except (socket.timeout, ConnectionResetError):
                pass
            s.close()
        # slow clients: half-sent headers and half-sent bodies held open
        slow = []
        for i in range(40):
            s = socket.create_connection(addr(), timeout=10)
            if i % 2:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
            else:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                          b"\r\n{\"prompt\": ")
            slow.append(s)
        t0 = time.time()
        serving(self)  # others are served meanwhile
        self.assertLess(time.time() - t0, 30)
        # a client that reads its stream slowly still gets everything
        s = socket.create_connection(addr(), timeout=60)
        body = json.dumps({"prompt": "Hi", "max_tokens": 12, "stream": True,
                           "kvsieve": {"ignore_eos": True}}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(1.5)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            time.sleep(0.05)
        s.close()
        self.assertIn(b"data: [DONE]", data)
        for s in slow:
            s.close()
        serving(self)


class Draining(unittest.TestCase):
    """SIGTERM: /health turns 503, new requests get 503, a running stream ends with the
    shutdown error event and data: [DONE] after the grace period; the server exits 0."""

    def test_drain(self):
        srv = kvs_server.Server("--http-listen", "127.0.0.1:0", grace=2.0)
        try:
            # a fresh server reports its KV pool before the first request
            text = urllib.request.urlopen("http://%s/metrics" % srv.metrics, timeout=10).read()
            free = [float(l.rsplit(b" ", 1)[1]) for l in text.splitlines()
                    if l.startswith(b"kvsieve_kv_pages_free")]
            self.assertTrue(free and free[0] > 0, free)
            h, p = srv.http.rsplit(":", 1)
            s = socket.create_connection((h, int(p)), timeout=60)
            body = json.dumps({"prompt": "Tell me a story.", "max_tokens": 4000, "stream": True,
                               "kvsieve": {"ignore_eos": True}}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            data = s.recv(65536)
            self.assertIn(b" 200 ", data.split(b"\r\n")[0])
            srv.proc.send_signal(__import__("signal").SIGTERM)
            t0 = time.time()
            code = None
            while time.time() - t0 < 2.0:
                try:
                    code = urllib.request.urlopen("http://%s/health" % srv.http, timeout=5).status
                except urllib.error.HTTPError as e:
                    code = e.code
                    break
                time.sleep(0.05)
            self.assertEqual(code, 503)
            req = urllib.request.Request("http://%s/v1/completions" % srv.http, method="POST",
                                         data=b'{"prompt": "hi", "max_tokens": 1}')
            with self.assertRaises(urllib.error.HTTPError) as cm:
                urllib.request.urlopen(req, timeout=10)
            self.assertEqual(cm.exception.code, 503)
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            s.close()
            self.assertIn(b'"status":503', data)
            self.assertIn(b"server shutting down", data)
            self.assertTrue(data.rstrip().endswith(b"0"), data[-100:])  # last chunk of chunked
            self.assertIn(b"data: [DONE]", data)
            rc, took = srv.terminate()
            self.assertEqual(rc, 0)
        finally:
            srv.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
