"""kvs_server.py — helpers for the server's Python tests (Debian's python3-grpcio).

Generates the Python stubs of proto/kvsieve/v1/kvsieve.proto and of the health and reflection
protos into a temporary directory (the grpc protos are copied to flat file names first: stubs
generated under grpc/... would shadow the `grpc` package), and starts `kvsieve serve` on free
loopback ports, reading the ready line for the bound addresses.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SOURCE_DIR = os.environ.get("KVS_SOURCE_DIR", ".")
BUILD_DIR = os.environ.get("KVS_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
BIN = os.path.join(BUILD_DIR, "kvsieve")
MODEL = os.environ.get("KVSIEVE_MODEL",
                       os.path.join(SOURCE_DIR, "models", "smollm2-135m-instruct-q4_1.gguf"))
GRPC_PROTO_DIR = "/usr/share/grpc-proto"


def check_prerequisites():
    missing = []
    if not os.path.exists(MODEL):
        missing.append("the default model %s (run scripts/fetch-model)" % MODEL)
    if not os.access(BIN, os.X_OK):
        missing.append("%s (build it first)" % BIN)
    if not os.path.exists(os.path.join(GRPC_PROTO_DIR, "grpc/health/v1/health.proto")):
        missing.append("%s (apt-get install grpc-proto)" % GRPC_PROTO_DIR)
    if missing:
        print("FAIL: missing " + "; ".join(missing))
        sys.exit(1)


def check_prerequisites_http():
    """What the HTTP API tests need: the model and the binary (no gRPC protos)."""
    missing = []
    if not os.path.exists(MODEL):
        missing.append("the default model %s (run scripts/fetch-model)" % MODEL)
    if not os.access(BIN, os.X_OK):
        missing.append("%s (build it first)" % BIN)
    if missing:
        print("FAIL: missing " + "; ".join(missing))
        sys.exit(1)


def make_stubs():
    """Compile the protos; returns (kvsieve_pb2, kvsieve_pb2_grpc, health_pb2, refl_v1_pb2,
    refl_v1alpha_pb2) modules."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="kvs_pystubs_")
    flat = os.path.join(out, "protos")
    os.makedirs(flat)
    for src, dst in [("grpc/health/v1/health.proto", "kvs_health_v1.proto"),
                     ("grpc/reflection/v1/reflection.proto", "kvs_reflection_v1.proto"),
                     ("grpc/reflection/v1alpha/reflection.proto", "kvs_reflection_v1alpha.proto")]:
        shutil.copy(os.path.join(GRPC_PROTO_DIR, src), os.path.join(flat, dst))
    args = ["protoc", "-I" + os.path.join(SOURCE_DIR, "proto"), "-I" + flat,
            "--python_out=" + out, "--grpc_python_out=" + out,
            "kvsieve/v1/kvsieve.proto", "kvs_health_v1.proto", "kvs_reflection_v1.proto",
            "kvs_reflection_v1alpha.proto"]
    if protoc.main(args) != 0:
        print("FAIL: grpc_tools.protoc failed")
        sys.exit(1)
    sys.path.insert(0, out)
    import importlib
    mods = [importlib.import_module(m) for m in
            ("kvsieve.v1.kvsieve_pb2", "kvsieve.v1.kvsieve_pb2_grpc", "kvs_health_v1_pb2",
             "kvs_reflection_v1_pb2", "kvs_reflection_v1alpha_pb2")]
    return mods


class Server:
    """`kvsieve serve` on 127.0.0.1:0 (and metrics on 127.0.0.1:0)."""

    def __init__(self, *extra, grace=2.0, kv_memory="256M"):
        self.log = tempfile.NamedTemporaryFile(prefix="kvs_server_", suffix=".log", delete=False)
        cmd = [BIN, "serve", "--model", MODEL, "--listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0", "--grace", str(grace),
               "--kv-memory", kv_memory, "-v"] + list(extra)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     env=dict(os.environ, OMP_NUM_THREADS="2"))
        deadline = time.time() + 60
        self.grpc = self.metrics = self.http = None
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.search(r"ready grpc=(\S+) metrics=(\S+)(?: http=(\S+))?", line)
            if m:
                self.grpc, self.metrics, self.http = m.group(1), m.group(2), m.group(3)
                break
        if not self.grpc:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.log_text())

    def log_text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def terminate(self, timeout=30):
        """SIGTERM; returns (exit code or None if it had to be killed, seconds taken)."""
        t0 = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        return rc, time.time() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def hash_key(key):
    out = subprocess.run([BIN, "hash-key"], input=(key + "\n").encode(), capture_output=True,
                         check=True)
    return out.stdout.decode().strip()
