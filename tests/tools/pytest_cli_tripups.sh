#!/usr/bin/env bash
# pytest_cli_tripups.sh — what a new user tripped over (issue 13 §3), each a one-line error with
# the way out: unknown options and commands ("did you mean", where --help is), a policy with
# no ratio or budget (it would evict nothing), a port in use (which address, one line), a load
# test against a closed port (refused at once, not "within 5s"), bare `kvsieve` exits 2.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/../lib/harness.sh"
tmp="$(mktemp -d)"; srv_pid=""
trap '[ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
require_built

# stderr of CMD is at most N lines and matches every REGEX; exit status 2 (usage) or given.
short_error() {
  local name="$1" lines="$2" want_rc="$3"; shift 3
  local res=()
  while [ "$1" != "--" ]; do res+=("$1"); shift; done; shift
  timeout 120 "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  local n; n=$(wc -l <"$tmp/err")
  local okay=1
  [ "$rc" -eq "$want_rc" ] || okay=0
  [ "$n" -le "$lines" ] || okay=0
  for re in "${res[@]}"; do grep -Eq -- "$re" "$tmp/err" || okay=0; done
  if [ $okay -eq 1 ]; then ok "$name"; else ko "$name (rc=$rc, $n lines: $(head -c 600 "$tmp/err"))"; fi
}

"$bin" >/dev/null 2>&1; rc=$?
if [ $rc -eq 2 ]; then ok "bare kvsieve exits 2"; else ko "bare kvsieve exits $rc"; fi
if "$bin" --help | grep -q "recall" && "$bin" --help | grep -q "OpenAI"; then ok "--help lists eval recall and the HTTP API"
else ko "--help: $("$bin" --help)"; fi

short_error "unknown serve option: did you mean" 2 2 "unknown option '--htp-listen'" \
  "did you mean '--http-listen'" "kvsieve serve --help" -- "$bin" serve --htp-listen 127.0.0.1:0
short_error "serve option without its value" 2 2 "'--listen' needs a value" -- "$bin" serve --listen
short_error "unknown load option: did you mean" 2 2 "did you mean '--concurrency'" \
  "kvsieve load --help" -- "$bin" load --concurency 4
short_error "unknown command: did you mean" 2 2 "did you mean 'serve'" -- "$bin" serv
short_error "serve --policy without ratio or budget" 1 2 "evict nothing" "--ratio" -- \
  "$bin" serve --model "$model" --policy knorm
short_error "load --policy-mix entry without ratio" 1 2 "evict nothing" "qfilters\\(ratio" -- \
  "$bin" load --target 127.0.0.1:1 --policy-mix full:1,qfilters:1

# a closed port: refused at once
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
timeout 60 "$bin" load --target "127.0.0.1:$port" -n 1 -q >"$tmp/out" 2>"$tmp/err"; rc=$?
if [ $rc -ne 0 ] && grep -q "refused" "$tmp/err" && ! grep -q "within" "$tmp/err"; then
  ok "load to a closed port: refused, not 'within Ns'"
else ko "load to a closed port (rc=$rc): $(cat "$tmp/err")"; fi

# ports in use: gRPC, metrics and HTTP each say which address, in one line
"$bin" serve --model "$model" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --kv-memory 64M >"$tmp/s1.out" 2>"$tmp/s1.err" &
srv_pid=$!
for _ in $(seq 1 300); do grep -q "ready" "$tmp/s1.out" && break; sleep 0.1; done
g="$(sed -n 's/.*ready grpc=\([^ ]*\).*/\1/p' "$tmp/s1.out")"
m="$(sed -n 's/.* metrics=\([^ ]*\).*/\1/p' "$tmp/s1.out")"
h="$(sed -n 's/.* http=\([^ ]*\).*/\1/p' "$tmp/s1.out")"
if [ -n "$g" ] && [ -n "$m" ] && [ -n "$h" ]; then
  short_error "gRPC port in use: one line naming it" 1 1 "cannot listen on $g: the address is already in use" -- \
    "$bin" serve --model "$model" --listen "$g" --kv-memory 64M
  short_error "metrics port in use: one line naming it" 1 1 "metrics: cannot listen on $m: the address is already in use" -- \
    "$bin" serve --model "$model" --listen 127.0.0.1:0 --metrics-listen "$m" --kv-memory 64M
  short_error "HTTP port in use: one line naming it" 1 1 "cannot listen on $h: the address is already in use" -- \
    "$bin" serve --model "$model" --listen 127.0.0.1:0 --http-listen "$h" --kv-memory 64M
else
  ko "first server did not start: $(cat "$tmp/s1.err")"
fi
kill -TERM "$srv_pid"; wait "$srv_pid"; srv_pid=""
finish
