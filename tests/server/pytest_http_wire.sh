#!/usr/bin/env bash
# pytest_http_wire.sh — the OpenAI HTTP API on the wire (tests/server/http_wire_test.py):
# SSE framing through `curl -N`, and a garbage / slow-client test that must leave the server
# serving. Standard library only (any python3) and curl. Loopback only.
# Env (set by ctest): KVS_BUILD_DIR, KVS_SOURCE_DIR; optional KVSIEVE_MODEL.
set -u
command -v curl >/dev/null || { echo "FAIL: curl not found (apt-get install curl)"; exit 1; }
exec timeout 400 "${PYTHON:-python3}" "$(dirname "$0")/http_wire_test.py"
