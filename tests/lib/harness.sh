# tests/lib/harness.sh — sourced by the bash tests (tests/*/pytest_*.sh): the paths they use,
# PASS/FAIL counting and the checks every script needs. The script sets $tmp (a scratch
# directory) and its own cleanup trap before calling expect_fail.
#   root, bin, model   source tree, the kvsieve binary, the default model
#   ok NAME / ko NAME  count a pass / a failure
#   finish             print "N passed, M failed" and exit non-zero on any failure
#   require_built      fail early (with the summary line) when the binary or model is missing
#   expect_fail NAME REGEX CMD...   CMD exits non-zero without a signal or a timeout and its
#                      stderr matches REGEX
root="${KVS_SOURCE_DIR:-.}"
bin="${KVS_BUILD_DIR:-$root/build}/kvsieve"
model="${KVSIEVE_MODEL:-$root/models/smollm2-135m-instruct-q4_1.gguf}"
pass=0; fail=0
ok() { echo "PASS: $1"; pass=$((pass + 1)); }
ko() { echo "FAIL: $1"; fail=$((fail + 1)); }
finish() { echo "$pass passed, $fail failed"; [ $fail -eq 0 ]; exit $?; }
require_built() {
  if [ ! -x "$bin" ]; then ko "$bin not built"; finish; fi
  if [ ! -f "$model" ]; then ko "model $model missing; run scripts/fetch-model"; finish; fi
}
expect_fail() {
  local name="$1" re="$2"; shift 2
  timeout 120 "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 124 ] && grep -Eq -- "$re" "$tmp/err"; then ok "$name"
  else ko "$name (rc=$rc, stderr: $(head -c 400 "$tmp/err"))"; fi
}
