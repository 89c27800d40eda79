#!/usr/bin/env bash
# pytest_serve_cli.sh — `kvsieve serve` and `kvsieve hash-key` on the command line: --help,
# key hashes, and startup errors (bad tenants file names file:line:col and the field, unknown
# policy, bad policy options, missing model, port in use) exit non-zero with a clear message.
# Env (set by ctest): KVS_BUILD_DIR, KVS_SOURCE_DIR; optional KVSIEVE_MODEL.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/../lib/harness.sh"
tmp="$(mktemp -d)"
srv_pid=""
cleanup() { [ -n "$srv_pid" ] && kill -9 "$srv_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
require_built

if "$bin" serve --help | grep -q -- "--tenants" && "$bin" serve --help | grep -q -- "--grace" &&
   "$bin" serve --help | grep -q -- "--metrics-listen" && "$bin" --help | grep -q "serve"; then
  ok "serve --help"; else ko "serve --help"; fi

h="$(printf 'abc\n' | "$bin" hash-key)"
if [ "$h" = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" ]; then
  ok "hash-key from stdin"; else ko "hash-key from stdin: '$h'"; fi
g="$("$bin" hash-key --generate)"
k="$(sed -n 's/^key: //p' <<<"$g")"; kh="$(sed -n 's/^key_hash: //p' <<<"$g")"
if [ -n "$k" ] && [ "$("$bin" hash-key "$k")" = "$kh" ]; then ok "hash-key --generate"
else ko "hash-key --generate: '$g'"; fi
expect_fail "hash-key: empty stdin" "no key" "$bin" hash-key </dev/null

printf 'tenants:\n  - name: alice\n    key_hash: %s\n    weight: 0\n' "$h" >"$tmp/t1.yaml"
expect_fail "tenants: bad weight names file:line:col and field" \
  "t1.yaml:4:13: tenants\[0\]\.weight: 0 must be > 0" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --tenants "$tmp/t1.yaml"
printf 'tenants:\n  - name: alice\n    key_hash: nope\n' >"$tmp/t2.yaml"
expect_fail "tenants: bad key hash" "t2.yaml:3:15: tenants\[0\]\.key_hash" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --tenants "$tmp/t2.yaml"
printf 'tenants:\n  - name: [\n' >"$tmp/t3.yaml"
expect_fail "tenants: YAML syntax error" "t3.yaml:[0-9]+:[0-9]+: YAML syntax error" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --tenants "$tmp/t3.yaml"
expect_fail "tenants: missing file" "nonexistent.yaml: cannot open" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --tenants "$tmp/nonexistent.yaml"
expect_fail "unknown default policy" "unknown policy 'nope'" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --policy nope
expect_fail "bad default policy options" "knorm" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --policy knorm --ratio 1.5
expect_fail "missing model" "cannot open" "$bin" serve --model "$tmp/none.gguf" --listen 127.0.0.1:0
expect_fail "bad listen address" "cannot listen" "$bin" serve --model "$model" --listen 999.1.1.1:5
expect_fail "bad metrics address" "metrics" \
  "$bin" serve --model "$model" --listen 127.0.0.1:0 --metrics-listen nohostport
expect_fail "unknown flag" "unknown option" "$bin" serve --bogus
expect_fail "bad --grace" "grace" "$bin" serve --grace -1

# Port in use: a second server on the first one's port must fail, not share it.
"$bin" serve --model "$model" --listen 127.0.0.1:0 >"$tmp/s1.out" 2>"$tmp/s1.err" &
srv_pid=$!
for _ in $(seq 1 300); do grep -q "ready" "$tmp/s1.out" && break; sleep 0.1; done
addr="$(sed -n 's/.*ready grpc=\([^ ]*\).*/\1/p' "$tmp/s1.out")"
if [ -n "$addr" ]; then
  expect_fail "port in use" "cannot listen" "$bin" serve --model "$model" --listen "$addr"
  kill -TERM "$srv_pid"
  for _ in $(seq 1 100); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.1; done
  if wait "$srv_pid"; then ok "SIGTERM on an idle server: exit 0"; else ko "SIGTERM exit status"; fi
  srv_pid=""
else
  ko "first server did not start: $(cat "$tmp/s1.err")"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
