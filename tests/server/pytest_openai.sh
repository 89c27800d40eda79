#!/usr/bin/env bash
# pytest_openai.sh — the OpenAI-compatible HTTP API through the official `openai` Python
# client (tests/server/openai_test.py) against a live `kvsieve serve --http-listen`.
# Loopback only. The client comes from PyPI (scripts/requirements.txt): the project's .venv.
# Env (set by ctest): KVS_BUILD_DIR, KVS_SOURCE_DIR; optional KVSIEVE_MODEL, PYTHON.
set -u
src=${KVS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${PYTHON:-}
[ -z "$PY" ] && [ -x "$src/.venv/bin/python" ] && PY="$src/.venv/bin/python"
PY=${PY:-python3}
if ! "$PY" -c "import openai" 2>/dev/null; then
  echo "FAIL: $PY cannot import openai (scripts/setup.sh installs scripts/requirements.txt)"
  exit 1
fi
exec timeout 400 "$PY" "$(dirname "$0")/openai_test.py"
