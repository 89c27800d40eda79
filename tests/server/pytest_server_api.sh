#!/usr/bin/env bash
# pytest_server_api.sh — the gRPC API through a Python grpcio client against a live
# `kvsieve serve` (tests/server/server_api_test.py). Loopback only; the server runs on free
# ports and is stopped at the end. Needs Debian's python3-grpcio, python3-grpc-tools and
# python3-protobuf, hence /usr/bin/python3 (a pyenv/venv python3 does not see them).
# Env (set by ctest): KVS_BUILD_DIR, KVS_SOURCE_DIR; optional KVSIEVE_MODEL.
set -u
PY=${KVS_SYSTEM_PYTHON:-/usr/bin/python3}
if ! "$PY" -c "import grpc, grpc_tools, google.protobuf" 2>/dev/null; then
  echo "FAIL: $PY cannot import grpc / grpc_tools / google.protobuf"
  echo "      (apt-get install python3-grpcio python3-grpc-tools python3-protobuf)"
  exit 1
fi
exec timeout 300 "$PY" "$(dirname "$0")/server_api_test.py"
