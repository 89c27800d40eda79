#!/usr/bin/env bash
# pytest_cli.sh — end-to-end checks of the kvsieve command on the default model: greedy
# generation says Paris, chat mode works, and every bad input gets a clear error and a non-zero
# exit (never a crash). Run by ctest; needs the default model (scripts/fetch-model).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/../lib/harness.sh"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
require_built

out="$("$bin" generate --model "$model" --prompt "The capital of France is" -n 8 2>"$tmp/err")"
if [ $? -eq 0 ] && grep -q "Paris" <<<"$out" && grep -q "tok/s" "$tmp/err"; then ok "greedy generation continues with Paris"
else ko "greedy generation: '$out' $(cat "$tmp/err")"; fi

out="$("$bin" generate --model "$model" --chat --prompt "What is the capital of France?" -n 24 2>/dev/null)"
if [ $? -eq 0 ] && grep -q "Paris" <<<"$out"; then ok "chat generation answers Paris"
else ko "chat generation: '$out'"; fi

a="$("$bin" generate --model "$model" --prompt "Once upon a time" -n 12 --temperature 0.8 --top-p 0.9 --seed 7 2>/dev/null)"
b="$("$bin" generate --model "$model" --prompt "Once upon a time" -n 12 --temperature 0.8 --top-p 0.9 --seed 7 2>/dev/null)"
if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "same seed gives the same sample"; else ko "seeded sampling: '$a' vs '$b'"; fi

if "$bin" --help | grep -q generate && "$bin" generate --help | grep -q -- "--top-p"; then ok "--help"; else ko "--help"; fi
expect_fail "unknown command" "unknown command" "$bin" frobnicate
expect_fail "unknown flag" "unknown option '--bogus'" "$bin" generate --model "$model" --prompt hi --bogus
expect_fail "unknown flag: did you mean" "did you mean '--prompt'?" "$bin" generate --model "$model" --promt hi
expect_fail "missing --prompt" "--prompt is required" "$bin" generate --model "$model"
expect_fail "bad number" "not an integer" "$bin" generate --model "$model" --prompt hi -n abc
expect_fail "top-p out of range" "out of range" "$bin" generate --model "$model" --prompt hi --top-p 2
expect_fail "missing model" "cannot open|No such file" "$bin" generate --model "$tmp/none.gguf" --prompt hi
head -c 100000 /dev/urandom > "$tmp/junk.gguf"
expect_fail "not a GGUF file" "magic|GGUF" "$bin" generate --model "$tmp/junk.gguf" --prompt hi
long="$(python3 -c 'print("hello " * 9000)')"
expect_fail "prompt longer than the context" "context is 8192" "$bin" generate --model "$model" --prompt "$long" -n 1
expect_fail "empty prompt" "empty" "$bin" generate --model "$model" --prompt ""
expect_fail "tiny KV memory" "KV memory" "$bin" generate --model "$model" --prompt hi --kv-memory 4K

out="$("$bin" generate --model "$model" --prompt "The capital of France is" -n 4 --policy knorm --ratio 0.5 --window 2 2>&1 >/dev/null)"
if grep -Eq "KV policy knorm .*evicted [1-9][0-9]* of" <<<"$out"; then ok "generate --policy knorm --ratio 0.5 evicts"; else ko "policy eviction report: $out"; fi
expect_fail "ratio out of range" "ratio.*\\[0, 1\\)" "$bin" generate --model "$model" --prompt hi --policy knorm --ratio 1.5
expect_fail "unknown policy" "unknown eviction policy.*qfilters" "$bin" generate --model "$model" --prompt hi --policy nosuch
expect_fail "budget below window + sink" "window" "$bin" generate --model "$model" --prompt hi --policy streaming --budget 8 --window 16
expect_fail "missing plugin" "nosuch.so" "$bin" policies --policy-plugin /nonexistent/nosuch.so
if "$bin" policies | grep -q qfilters; then ok "policies lists qfilters"; else ko "policies"; fi

if "$bin" bench --model "$model" --batches 1,2 --prompt-len 8 --gen-len 2 >"$tmp/out" 2>&1 && grep -q "decode" "$tmp/out"; then
  ok "bench runs"; else ko "bench: $(tail -5 "$tmp/out")"; fi

# OpenBLAS kernels: never the generic Prescott ones on a CPU with AVX2 + FMA (blas_core.c);
# a user's OPENBLAS_CORETYPE is left alone.
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  core="$(OPENBLAS_VERBOSE=2 "$bin" --version 2>&1 | sed -n 's/^Core: //p' | tail -1)"
  if [ -n "$core" ] && [ "$core" != Prescott ]; then ok "OpenBLAS core in use: $core"
  else ko "OpenBLAS core in use: '${core:-none reported}'"; fi
fi
# (OMP_WAIT_POLICY set too, so nothing makes kvsieve restart: one start, the user's core)
core="$(OPENBLAS_CORETYPE=Prescott OMP_WAIT_POLICY=PASSIVE OPENBLAS_VERBOSE=2 "$bin" --version 2>&1 | sed -n 's/^Core: //p' | tr '\n' ' ')"
if [ "$core" = "Prescott " ]; then ok "OPENBLAS_CORETYPE set by the user is kept"
else ko "OPENBLAS_CORETYPE=Prescott gave cores '$core'"; fi
# without a wait policy kvsieve restarts once to set OMP_WAIT_POLICY=PASSIVE (blas_core.c),
# keeping the user's core across the restart
core="$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OPENBLAS_CORETYPE=Prescott OPENBLAS_VERBOSE=2 "$bin" --version 2>&1 | sed -n 's/^Core: //p' | tr '\n' ' ')"
if [ "$core" = "Prescott Prescott " ]; then ok "one restart for OMP_WAIT_POLICY, user's core kept"
else ko "restart for OMP_WAIT_POLICY: cores '$core'"; fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
