#!/usr/bin/env bash
# pytest_load_openai.sh — `kvsieve load --api openai` against `kvsieve serve --http-listen` on
# 127.0.0.1: the same workload as over gRPC (same seed: same prompts, same token counts),
# text and chat prompts, a policy mix, a wrong key (UNAUTHENTICATED, exit 3), a closed port
# (refused, exit 1), a bad --api (exit 2). Needs the default model.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/../lib/harness.sh"
py=/usr/bin/python3; [ -x "$py" ] || py=python3
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
tmp="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
require_built

key="kvs-load-openai-test-key-0123456789abcdefghijkl"
printf 'tenants:\n  - name: alice\n    key_hash: "%s"\n' "$(printf '%s\n' "$key" | "$bin" hash-key)" >"$tmp/tenants.yaml"
"$bin" serve --model "$model" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --kv-memory 256M \
  --tenants "$tmp/tenants.yaml" >"$tmp/s.out" 2>"$tmp/s.err" &
pids+=($!)
for _ in $(seq 1 240); do grep -q ready "$tmp/s.out" && break; sleep 0.25; done
g="$(sed -n 's/.*ready grpc=\([^ ]*\).*/\1/p' "$tmp/s.out")"
h="$(sed -n 's/.* http=\([^ ]*\).*/\1/p' "$tmp/s.out")"
if [ -z "$g" ] || [ -z "$h" ]; then ko "server did not start: $(tail -3 "$tmp/s.err")"; finish; fi

common=(-c 2 -n 4 --input-len 16 --output-len 6 --seed 3 --tenant "alice:$key:1" -q)
"$bin" load --api openai --target "$h" "${common[@]}" --json "$tmp/o.json" --records "$tmp/o.jsonl" \
  >"$tmp/o.txt" 2>"$tmp/o.err"; rc=$?
"$bin" load --api grpc --target "$g" "${common[@]}" --json "$tmp/g.json" --records "$tmp/g.jsonl" \
  >"$tmp/g.txt" 2>"$tmp/g.err"; rc2=$?
cat >"$tmp/check.py" <<'EOF'
import json, sys
t = sys.argv[1]
for api in ("o", "g"):
    d = json.load(open("%s/%s.json" % (t, api)))
    r = d["requests"]
    assert r["ok"] == 4 and r["errors"] == 0, (api, r)
    assert d["throughput"]["output_tokens"] == 24, (api, d["throughput"])
    assert d["finish_reasons"] == {"length": 4}, (api, d["finish_reasons"])
    lat = d["latency_ms"]
    for k in ("ttft", "tpot", "e2e"):
        assert lat[k]["n"] == 4 and 0 < lat[k]["min"] <= lat[k]["max"], (api, k, lat[k])
    assert d["itl_ms"]["n"] > 0
o = sorted((json.loads(l) for l in open(t + "/o.jsonl")), key=lambda r: r["i"])
g = sorted((json.loads(l) for l in open(t + "/g.jsonl")), key=lambda r: r["i"])
assert [r["input_len"] for r in o] == [r["input_len"] for r in g]
assert [r["output_tokens"] for r in o] == [6] * 4
assert all(r["status"] == "OK" and r["ttft_ms"] <= r["e2e_ms"] for r in o), o
EOF
if [ $rc -eq 0 ] && [ $rc2 -eq 0 ] && "$py" "$tmp/check.py" "$tmp" 2>"$tmp/check"; then ok "openai and grpc runs of one workload agree"
else ko "openai vs grpc: rc=$rc/$rc2 $(tail -3 "$tmp/check") $(tail -2 "$tmp/o.err")"; fi

printf 'The capital of France is\nSay hi\n' >"$tmp/prompts.txt"
"$bin" load --api openai --target "$h" -c 2 -n 2 --prompts "$tmp/prompts.txt" --chat --output-len 4 \
  --tenant "alice:$key:1" -q --policy-mix 'full:1,knorm(ratio=0.5):1' --json "$tmp/c.json" \
  >"$tmp/c.txt" 2>"$tmp/c.err"; rc=$?
if [ $rc -eq 0 ] && "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['requests']['ok']==2, d['requests']" "$tmp/c.json" 2>"$tmp/check"
then ok "chat prompts and a policy mix over HTTP"; else ko "chat/policy mix: rc=$rc $(cat "$tmp/c.err" "$tmp/check" | tail -3)"; fi

"$bin" load --api openai --target "$h" -n 2 --tenant "alice:wrong-key:1" -q --output-len 2 \
  >"$tmp/w.txt" 2>"$tmp/w.err"; rc=$?
if [ $rc -eq 3 ] && grep -q "UNAUTHENTICATED" "$tmp/w.txt"; then ok "wrong key: UNAUTHENTICATED, exit 3"
else ko "wrong key: rc=$rc $(head -c 300 "$tmp/w.txt") $(head -c 300 "$tmp/w.err")"; fi

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" load --api openai --target "127.0.0.1:$port" -n 1 -q >"$tmp/x.txt" 2>"$tmp/x.err"; rc=$?
if [ $rc -eq 1 ] && grep -q "refused" "$tmp/x.err"; then ok "closed port: refused, exit 1"
else ko "closed port: rc=$rc $(cat "$tmp/x.err")"; fi
expect_fail "bad --api" "not grpc or openai" "$bin" load --api soap --target "$h"
finish
