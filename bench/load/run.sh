#!/usr/bin/env bash
# bench/load/run.sh — kvsieve load against a local server: full vs qfilters at the same KV
# memory, concurrency 1/4/8. Usage: bash bench/load/run.sh [KV_MEMORY] (default 32M).
set -euo pipefail
cd "$(dirname "$0")/../.."
kv="${1:-32M}"
out=bench/load
for pol in full qfilters; do
  args=""
  [ "$pol" = qfilters ] && args="--policy qfilters --ratio 0.5 --window 16"
  build/kvsieve serve --listen 127.0.0.1:0 --kv-memory "$kv" $args > $out/serve-$pol.out 2>&1 &
  spid=$!
  for i in $(seq 100); do grep -q "ready grpc=" $out/serve-$pol.out && break; sleep 0.2; done
  target=$(sed -n 's/.*ready grpc=\([^ ]*\).*/\1/p' $out/serve-$pol.out)
  for c in 1 4 8; do
    build/kvsieve load --target "$target" -c $c -n $((c < 4 ? 6 : 2 * c)) --input-len 128 \
      --output-len 32 --slo-ttft 2000 --slo-tpot 200 -q --json $out/$pol-c$c.json > $out/$pol-c$c.txt 2>&1 || true
  done
  kill -TERM $spid; wait $spid || true
done
