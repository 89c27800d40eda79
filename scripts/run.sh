#!/usr/bin/env bash
# run.sh — the README's main command: set everything up (packages, model, Q-Filters, build),
# then start the gRPC server on the default model in the foreground (Ctrl-C / SIGTERM stops it
# gracefully). Override with environment variables:
#   KVS_LISTEN (127.0.0.1:50051)  KVS_METRICS (127.0.0.1:9090)  KVS_KV_MEMORY (1G)
#   KVS_SERVE_ARGS (extra flags for `kvsieve serve`, e.g. "--policy qfilters --ratio 0.875";
#   without them the server runs policy full: no eviction)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
echo "[run] kvsieve serve on ${KVS_LISTEN:-127.0.0.1:50051} (metrics: http://${KVS_METRICS:-127.0.0.1:9090}/metrics)" >&2
echo "[run] try: build/kvsieve load --target ${KVS_LISTEN:-127.0.0.1:50051} --concurrency 4 --requests 16" >&2
# shellcheck disable=SC2086
exec build/kvsieve serve --listen "${KVS_LISTEN:-127.0.0.1:50051}" \
  --metrics-listen "${KVS_METRICS:-127.0.0.1:9090}" --kv-memory "${KVS_KV_MEMORY:-1G}" \
  ${KVS_SERVE_ARGS:-}
