#!/usr/bin/env bash
# pytest_load.sh — `kvsieve load` against a live `kvsieve serve` on the default model, all on
# 127.0.0.1: closed and open loop runs with checked JSON (every request OK, ordered
# percentiles, tokens/s > 0), per-request records, a prompts file with a policy mix, a
# --duration bound, a wrong API key against a server with a tenants file (UNAUTHENTICATED),
# an unreachable port and bad flags (clear errors, non-zero exits). Run by ctest; needs the
# default model (scripts/fetch-model). Takes well under two minutes.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/../lib/harness.sh"
py=/usr/bin/python3; [ -x "$py" ] || py=python3
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
require_built

# start_server NAME ARGS...: start `kvsieve serve` on free ports (port 0: the server binds a
# free one and prints it), wait until it is ready and its metrics answer; sets $port.
start_server() {
  local name="$1"; shift
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --kv-memory 256M \
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  local pid=$! i
  port=""
  for i in $(seq 1 120); do
    port="$(sed -n 's/.*ready grpc=127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$tmp/$name.out")"
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  local mport
  mport="$(sed -n 's/.*metrics=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/$name.out")"
  if [ -z "$port" ] || [ -z "$mport" ] ||
     ! "$py" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$mport/metrics', timeout=5).read()" 2>/dev/null; then
    ko "server $name did not come up: $(tail -5 "$tmp/$name.err")"
    finish
  fi
}

# expect_fail NAME REGEX CMD...: non-zero exit < 128 (no crash) and stderr matching REGEX.
expect_fail() {
  local name="$1" re="$2"; shift 2
  "$@" >"$tmp/fout" 2>"$tmp/ferr"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -Eq -- "$re" "$tmp/ferr"; then ok "$name"
  else ko "$name (rc=$rc, stderr: $(head -c 400 "$tmp/ferr"))"; fi
}

# check_json NAME FILE N_OK N_TOKENS MODE: the report says every request is OK and makes sense.
check_json() {
  "$py" - "$2" "$3" "$4" "$5" <<'EOF' >"$tmp/check" 2>&1
import json, sys
path, n_ok, n_tok, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
d = json.load(open(path))
assert d["config"]["mode"] == mode, d["config"]["mode"]
r = d["requests"]
assert r["ok"] == n_ok and r["errors"] == 0 and r["finished"] == n_ok, r
assert d["errors"] == [], d["errors"]
t = d["throughput"]
assert t["output_tokens_per_s"] > 0 and t["requests_per_s"] > 0, t
assert t["output_tokens"] == n_tok, t  # ignore_eos: every request runs to max_tokens
lat = dict(d["latency_ms"], itl=d["itl_ms"])
for k in ("ttft", "tpot", "e2e", "itl"):
    p = lat[k]
    assert p["n"] > 0, (k, p)
    assert 0 <= p["min"] <= p["p50"] <= p["p90"] <= p["p99"] <= p["max"], (k, p)
    assert p["min"] <= p["mean"] <= p["max"], (k, p)
assert lat["ttft"]["p50"] <= lat["e2e"]["p50"], lat
assert d["finish_reasons"] == {"length": n_ok}, d["finish_reasons"]
EOF
  if [ $? -eq 0 ]; then ok "$1"; else ko "$1: $(tail -3 "$tmp/check")"; fi
}

start_server open
open_port=$port
tgt="127.0.0.1:$open_port"

# Closed loop: 4 in flight, 8 requests; records of every request.
"$bin" load --target "$tgt" -c 4 -n 8 --input-len 32 --output-len 8 --slo-ttft 60000 --slo-tpot 60000 \
  --json "$tmp/closed.json" --records "$tmp/closed.jsonl" >"$tmp/closed.txt" 2>"$tmp/closed.err"
rc=$?
if [ $rc -eq 0 ] && grep -q "TTFT" "$tmp/closed.txt" && grep -q "8 ok" "$tmp/closed.txt"; then ok "closed loop runs (exit 0, table)"
else ko "closed loop: rc=$rc $(tail -3 "$tmp/closed.err")"; fi
check_json "closed loop JSON" "$tmp/closed.json" 8 64 closed
if "$py" - "$tmp/closed.json" "$tmp/closed.jsonl" <<'EOF' 2>"$tmp/check"; then ok "records file and goodput"; else ko "records/goodput: $(tail -2 "$tmp/check")"; fi
import json, sys
d = json.load(open(sys.argv[1]))
recs = [json.loads(l) for l in open(sys.argv[2])]
assert len(recs) == 8 and sorted(r["i"] for r in recs) == list(range(8))
assert all(r["status"] == "OK" and r["output_tokens"] == 8 and r["input_len"] == 32 for r in recs)
assert all(r["ttft_ms"] <= r["e2e_ms"] for r in recs)
g = d["goodput"]  # generous SLOs: everything is good
assert g["good"] == 8 and g["fraction"] == 1, g
EOF

# Open loop: Poisson arrivals at 4/s, 8 requests.
"$bin" load --target "$tgt" -r 4 -n 8 --input-len 32 --output-len 8 -q --json "$tmp/open.json" \
  >"$tmp/open.txt" 2>"$tmp/open.err"
rc=$?
if [ $rc -eq 0 ]; then ok "open loop runs"; else ko "open loop: rc=$rc $(tail -3 "$tmp/open.err")"; fi
check_json "open loop JSON" "$tmp/open.json" 8 64 open

# A prompts file (plain line + JSONL with its own max_tokens) and a policy mix.
printf 'The capital of France is\n{"prompt": "Once upon a time", "max_tokens": 3}\n' >"$tmp/prompts.txt"
"$bin" load --target "$tgt" -c 2 -n 4 --prompts "$tmp/prompts.txt" --output-len 2 -q \
  --policy-mix 'full:1,knorm(ratio=0.5):1' --json "$tmp/mix.json" >"$tmp/mix.txt" 2>"$tmp/mix.err"
rc=$?
if [ $rc -eq 0 ] && "$py" - "$tmp/mix.json" <<'EOF' 2>"$tmp/check"; then ok "prompts file + policy mix"; else ko "prompts file + policy mix: rc=$rc $(tail -2 "$tmp/check") $(tail -2 "$tmp/mix.err")"; fi
import json, sys
d = json.load(open(sys.argv[1]))
assert d["requests"]["ok"] == 4, d["requests"]
assert d["throughput"]["output_tokens"] == 2 * 2 + 2 * 3, d["throughput"]  # cycles the 2 prompts
names = sorted(p["name"] for p in d["by_policy"])
assert names == ["full", "knorm"], names
assert sum(p["requests"]["finished"] for p in d["by_policy"]) == 4
EOF

# --duration bounds the run: sending stops after 1.5 s, what is in flight finishes.
start=$(date +%s.%N)
"$bin" load --target "$tgt" -c 2 -d 1.5 --input-len 8 --output-len 2 -q --json "$tmp/dur.json" >/dev/null 2>"$tmp/dur.err"
rc=$?
el=$("$py" -c "print(round($(date +%s.%N) - $start, 1))")
if [ $rc -eq 0 ] && "$py" -c "
import json; d = json.load(open('$tmp/dur.json'))
assert d['config']['requests'] is None and d['config']['duration_s'] == 1.5
assert d['requests']['ok'] >= 1 and d['requests']['errors'] == 0" 2>"$tmp/check"; then ok "--duration stops the run (${el}s)"
else ko "--duration: rc=$rc $(tail -2 "$tmp/check") $(tail -2 "$tmp/dur.err")"; fi

expect_fail "unknown policy" "no such policy" "$bin" load --target "$tgt" -n 1 --policy nosuch -q

# Unreachable: a port nobody listens on -> non-zero exit with a message, quickly.
dead=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
start=$(date +%s)
expect_fail "unreachable port" "cannot connect to 127.0.0.1:$dead .refused" "$bin" load --target "127.0.0.1:$dead" -n 1 --connect-timeout 3
if [ $(( $(date +%s) - start )) -le 10 ]; then ok "unreachable port fails fast"; else ko "unreachable port took $(( $(date +%s) - start ))s"; fi

# Bad flags.
expect_fail "missing --target" "--target HOST:PORT is required" "$bin" load -n 1
expect_fail "bad target" "not HOST:PORT" "$bin" load --target 127.0.0.1 -n 1
expect_fail "unknown flag" "unknown option .--bogus." "$bin" load --target "$tgt" --bogus
expect_fail "bad rate" "out of range" "$bin" load --target "$tgt" --rate -1
expect_fail "bad concurrency" "not an integer" "$bin" load --target "$tgt" -c x
expect_fail "bad distribution" "unknown distribution" "$bin" load --target "$tgt" --input-dist zipf
expect_fail "bad uniform range" "uniform:LO:HI" "$bin" load --target "$tgt" --output-dist uniform:9:3
expect_fail "policy-args alone" "needs --policy" "$bin" load --target "$tgt" --policy-args ratio=0.5
expect_fail "bad policy mix" "bad mix" "$bin" load --target "$tgt" --policy-mix 'full:1,knorm(ratio=0.5'
expect_fail "bad tenant" "NAME:KEY:WEIGHT" "$bin" load --target "$tgt" --tenant nokey
expect_fail "bad tenant weight" "weight" "$bin" load --target "$tgt" --tenant a:k:-2
expect_fail "chat without prompts" "--chat needs --prompts" "$bin" load --target "$tgt" --chat
expect_fail "missing prompts file" "No such file" "$bin" load --target "$tgt" --prompts "$tmp/none.txt"
printf '{"prompt": 3}\n' >"$tmp/badprompts.jsonl"
expect_fail "bad JSONL prompt" "badprompts.jsonl:1: .*prompt" "$bin" load --target "$tgt" --prompts "$tmp/badprompts.jsonl"

# A server with a tenants file: the right key works, a wrong one is UNAUTHENTICATED.
key="kvs-load-test-key-$$"
printf 'tenants:\n  - name: alice\n    key_hash: "%s"\n' "$(printf '%s' "$key" | "$bin" hash-key)" >"$tmp/tenants.yaml"
start_server auth --tenants "$tmp/tenants.yaml"
atgt="127.0.0.1:$port"
"$bin" load --target "$atgt" -c 2 -n 2 --input-len 8 --output-len 2 -q --tenant "alice:$key:1" \
  --json "$tmp/auth_ok.json" >/dev/null 2>"$tmp/auth_ok.err"
rc=$?
if [ $rc -eq 0 ] && "$py" -c "
import json; d = json.load(open('$tmp/auth_ok.json')); assert d['requests']['ok'] == 2, d['requests']" 2>"$tmp/check"
then ok "right API key: requests OK"; else ko "right API key: rc=$rc $(tail -2 "$tmp/auth_ok.err") $(tail -1 "$tmp/check")"; fi
"$bin" load --target "$atgt" -c 2 -n 4 --input-len 8 --output-len 2 -q --tenant "alice:wrong-$key:1" \
  --json "$tmp/auth_bad.json" >"$tmp/auth_bad.txt" 2>"$tmp/auth_bad.err"
rc=$?
if [ $rc -eq 3 ] && grep -q UNAUTHENTICATED "$tmp/auth_bad.txt" && "$py" -c "
import json; d = json.load(open('$tmp/auth_bad.json'))
assert d['requests'] == {'finished': 4, 'ok': 0, 'errors': 4, 'interrupted': 0}, d['requests']
assert [(e['status'], e['count']) for e in d['errors']] == [('UNAUTHENTICATED', 4)], d['errors']
assert d['by_tenant'][0]['errors'] == {'UNAUTHENTICATED': 4}" 2>"$tmp/check"
then ok "wrong API key: errors counted as UNAUTHENTICATED, exit 3"; else ko "wrong API key: rc=$rc $(tail -2 "$tmp/check")"; fi

finish
