#!/usr/bin/env bash
# run.sh — the README's main command: set everything up, then run kvsieve on the default model.
# (Until the gRPC server lands, this is a non-interactive demo generation.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
echo "[run] kvsieve generate --prompt 'The capital of France is' -n 16" >&2
build/kvsieve generate --prompt "The capital of France is" -n 16 --echo
echo "[run] kvsieve generate --chat --prompt 'Name three primary colors.' -n 48" >&2
build/kvsieve generate --chat --prompt "Name three primary colors." -n 48
