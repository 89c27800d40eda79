#!/usr/bin/env bash
# pytest_plot_quality.sh — scripts/plot_quality.py's axes and labels (tests/tools/
# plot_quality_test.py). Needs matplotlib (scripts/requirements.txt: the project's .venv).
set -u
src=${KVS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${PYTHON:-}
[ -z "$PY" ] && [ -x "$src/.venv/bin/python" ] && PY="$src/.venv/bin/python"
PY=${PY:-python3}
"$PY" -c "import matplotlib" 2>/dev/null || { echo "FAIL: $PY cannot import matplotlib"; exit 1; }
KVS_SOURCE_DIR="$src" exec timeout 300 "$PY" "$(dirname "$0")/plot_quality_test.py"
