"""server_shutdown_test.py — SIGTERM under load (run by pytest_server_shutdown.sh).

Short and long streams run, a client keeps submitting new requests, a Health.Watch is open;
then SIGTERM. Expected (docs/OPERATIONS.md): health goes NOT_SERVING, new calls get
UNAVAILABLE, requests that can finish within the grace period end normally (OK), the others
get their final message (finish reason SHUTDOWN) and the status UNAVAILABLE when the grace
period ends; no accepted request (one whose first message, the request id, arrived) ends
without its final message; the server exits 0.
"""
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvs_server  # noqa: E402

kvs_server.check_prerequisites()
import grpc  # noqa: E402

pb, pb_grpc, health_pb, _, _ = kvs_server.make_stubs()
GRACE = 3.0


def run_stream(ch, req, out):
    """Collect one Generate: out gets id, tokens, final, code, details, t_end."""
    out.update(id=None, tokens=0, final=None, code=None, details="", t_first_token=None)
    try:
        for m in pb_grpc.KvsieveStub(ch).Generate(req, timeout=60):
            if out["id"] is None:
                out["id"] = m.request_id
            out["tokens"] += len(m.token_ids)
            if m.token_ids and out["t_first_token"] is None:
                out["t_first_token"] = time.time()
            if m.HasField("finish"):
                out["final"] = m.finish
        out["code"] = grpc.StatusCode.OK
    except grpc.RpcError as e:
        out["code"], out["details"] = e.code(), e.details()
    out["t_end"] = time.time()


class ShutdownTest(unittest.TestCase):
    def test_sigterm_under_load(self):
        srv = kvs_server.Server(grace=GRACE)
        try:
            self.run_load(srv)
        finally:
            srv.close()

    def run_load(self, srv):
        ch = grpc.insecure_channel(srv.grpc)
        grpc.channel_ready_future(ch).result(timeout=10)
        # Health.Watch: records every status it sees.
        watch_seen = []
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch",
                                request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                                response_deserializer=health_pb.HealthCheckResponse.FromString)

        def watcher():
            try:
                for m in watch(health_pb.HealthCheckRequest(), timeout=60):
                    watch_seen.append(m.status)
            except grpc.RpcError:
                pass

        wt = threading.Thread(target=watcher)
        wt.start()

        long_req = pb.GenerateRequest(text="Tell me a very long story.", max_tokens=2000,
                                      ignore_eos=True)
        short_req = pb.GenerateRequest(text="The capital of France is", max_tokens=8)
        streams = [({}, long_req) for _ in range(3)] + [({}, short_req) for _ in range(3)]
        threads = [threading.Thread(target=run_stream, args=(ch, r, o)) for o, r in streams]
        for t in threads:
            t.start()

        # A client that keeps submitting small requests through the shutdown.
        spam_results, stop_spam = [], threading.Event()

        def spammer():
            while not stop_spam.is_set():
                o = {}
                run_stream(ch, pb.GenerateRequest(text="Hi", max_tokens=3), o)
                spam_results.append(o)
                if o["code"] == grpc.StatusCode.UNAVAILABLE and o["id"] is None:
                    break

        spam_threads = [threading.Thread(target=spammer) for _ in range(3)]
        for t in spam_threads:
            t.start()

        # Wait until every long stream is generating.
        t0 = time.time()
        while time.time() - t0 < 30 and not (
                all(o.get("tokens", 0) >= 2 for o, _ in streams[:3]) and len(spam_results) >= 3):
            time.sleep(0.05)
        self.assertTrue(all(o.get("tokens", 0) >= 2 for o, _ in streams[:3]),
                        "long streams did not start")
        t_sig = time.time()
        srv.proc.send_signal(15)
        time.sleep(0.3)
        # New calls are refused.
        late = {}
        run_stream(ch, short_req, late)
        self.assertEqual(late["code"], grpc.StatusCode.UNAVAILABLE, late)
        self.assertIsNone(late["id"])

        for t in threads:
            t.join(60)
        stop_spam.set()
        for t in spam_threads:
            t.join(60)
        wt.join(30)
        rc, _ = srv.terminate(timeout=GRACE + 15)
        t_exit = time.time() - t_sig
        log = srv.log_text()
        self.assertEqual(rc, 0, "exit code %r; log:\n%s" % (rc, log))
        self.assertLess(t_exit, GRACE + 10)

        for o, _ in streams[:3]:  # long: stopped after the grace period
            self.assertIsNotNone(o["id"])
            self.assertIsNotNone(o["final"], "a long stream lost its final message: %r" % o)
            self.assertEqual(o["final"].reason, pb.FINISH_REASON_SHUTDOWN)
            self.assertEqual(o["code"], grpc.StatusCode.UNAVAILABLE)
            self.assertIn("shutting down", o["details"])
            self.assertGreater(o["final"].completion_tokens, 2)
            self.assertEqual(o["final"].completion_tokens, o["tokens"])
            self.assertGreater(o["t_end"] - t_sig, GRACE - 0.5)
        for o, _ in streams[3:]:  # short: finished normally
            self.assertEqual(o["code"], grpc.StatusCode.OK, o)
            self.assertEqual(o["final"].reason, pb.FINISH_REASON_LENGTH)
        # Every accepted request (it got its id) got a final message and a status.
        accepted = [o for o in spam_results if o["id"] is not None]
        self.assertGreater(len(accepted), 0)
        for o in accepted:
            self.assertIsNotNone(o["final"], "an accepted request lost its final message: %r" % o)
            self.assertIn(o["code"], (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE))
        refused = [o for o in spam_results if o["id"] is None]
        for o in refused:
            self.assertEqual(o["code"], grpc.StatusCode.UNAVAILABLE)
        print("\n  exit %.2fs after SIGTERM; long streams: %s tokens; spam: %d accepted, %d refused;"
              " watch saw %s" % (t_exit, [o["tokens"] for o, _ in streams[:3]], len(accepted),
                                 len(refused), watch_seen))
        self.assertEqual(watch_seen[0], health_pb.HealthCheckResponse.SERVING)
        self.assertIn(health_pb.HealthCheckResponse.NOT_SERVING, watch_seen)
        ch.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
