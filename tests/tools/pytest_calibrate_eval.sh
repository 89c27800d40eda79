#!/usr/bin/env bash
# pytest_calibrate_eval.sh — quick end-to-end checks of `kvsieve calibrate` and `kvsieve eval`
# on the default model (well under 2 minutes on 2 cores): calibrate on a few hundred tokens
# gives a valid filters file that another model refuses; eval ppl on ~160 tokens with three
# policies gives a finite, sane perplexity for the full cache; passkey at 1K context with the
# full cache answers right; bad flags give clear errors. Run by ctest; needs the default model
# (scripts/fetch-model) and, for the second model, python3 with the gguf package.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/../lib/harness.sh"
# A python with the gguf package (for the second, tiny model): $PYTHON, the venv, python3.
py=""
for cand in "${PYTHON:-}" "$root/.venv/bin/python" python3; do
  if [ -n "$cand" ] && "$cand" -c "import gguf, numpy" 2>/dev/null; then py="$cand"; break; fi
done
export OMP_WAIT_POLICY=PASSIVE
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
require_built

# Calibration text (generic prose) and a different evaluation text.
for i in 1 2 3; do cat >> "$tmp/calib.txt" <<'EOF'
The river ran slowly through the valley, and the farmers along its banks watched the water
rise each spring. In the village the old mill still turned, grinding the grain that the
families brought in autumn. Children walked to school across the wooden bridge, and in the
evenings the lamps were lit in every window while the bells of the church rang the hour.
Travellers who came over the hills would stop at the inn, tell stories of distant cities,
and leave before dawn with bread and cheese wrapped in cloth for the long road ahead.
EOF
done
for i in 1 2 3 4; do cat >> "$tmp/eval.txt" <<'EOF'
A library is a collection of books and other materials kept for reading, study and
reference. Public libraries lend books to the people of a town, and many also offer
newspapers, music, maps and quiet rooms for work. Librarians help visitors find what they
need, keep the catalogue in order, and choose new books each year within a small budget.
EOF
done

# ---- calibrate ---------------------------------------------------------------------------
f="$tmp/f.kvsqf"
"$bin" calibrate --model "$model" --text "$tmp/calib.txt" --tokens 256 --seq-len 128 \
  --diag-tokens 96 --out "$f" --diag-csv "$tmp/diag.csv" >"$tmp/cal.out" 2>"$tmp/cal.err"
rc=$?
if [ $rc -eq 0 ] && [ -s "$f" ] && grep -q "^summary:" "$tmp/cal.out" && grep -q "Spearman" "$tmp/cal.out" \
   && grep -q "tok/s" "$tmp/cal.err"; then ok "calibrate writes filters, diagnostics and progress"
else ko "calibrate (rc=$rc): $(tail -3 "$tmp/cal.err") $(tail -2 "$tmp/cal.out")"; fi
# 30 layers x 3 KV heads, header + 3 fractions + 2 correlations per row
if [ "$(wc -l < "$tmp/diag.csv" 2>/dev/null)" = 91 ]; then ok "diagnostics CSV has a row per KV head"
else ko "diagnostics CSV: $(wc -l < "$tmp/diag.csv" 2>/dev/null) lines"; fi
if "$bin" calibrate --model "$model" --check "$f" | grep -q "^ok: .*calibrated on"; then ok "filters file checks valid"
else ko "calibrate --check on a fresh file"; fi
if [ -n "$py" ] && "$py" "$root/tests/reference/make_tiny_llama.py" "$tmp/tiny.gguf"; then
  expect_fail "filters refused for another model" "calibrated for model" \
    "$bin" calibrate --model "$tmp/tiny.gguf" --check "$f"
  expect_fail "qfilters refuses another model's filters" "calibrated for model" \
    "$bin" generate --model "$tmp/tiny.gguf" --prompt hi -n 1 --policy qfilters --policy-args "filters=$f"
else
  ko "make_tiny_llama.py failed (needs python3 with gguf and numpy: scripts/setup.sh)"
fi
head -c 200 "$f" > "$tmp/trunc.kvsqf"
expect_fail "truncated filters file refused" "truncated" "$bin" calibrate --model "$model" --check "$tmp/trunc.kvsqf"

# ---- eval ppl ------------------------------------------------------------------------------
if "$bin" eval ppl --model "$model" --text "$tmp/eval.txt" --tokens 160 \
     --policies full,streaming,qfilters --policy-args "qfilters:filters=$f" --budgets 64 \
     --windows 16 --out-dir "$tmp/ev" >"$tmp/ppl.out" 2>"$tmp/ppl.err"; then
  full_ppl="$(awk -F, '$1=="full"{print $6}' "$tmp/ev/ppl.csv")"
  if awk -v p="$full_ppl" 'BEGIN{exit !(p > 1 && p < 60)}'; then ok "eval ppl: full perplexity $full_ppl is finite and sane"
  else ko "eval ppl: full perplexity '$full_ppl'"; fi
  if [ "$(grep -c -E '^(streaming|qfilters),64,16,' "$tmp/ev/ppl.csv")" = 2 ] && grep -q '"results"' "$tmp/ev/ppl.json"; then
    ok "eval ppl writes CSV and JSON rows per policy"
  else ko "eval ppl output: $(cat "$tmp/ev/ppl.csv")"; fi
  if awk -F, '$1=="streaming"{exit !($10 > 0)}' "$tmp/ev/ppl.csv"; then ok "eval ppl: budgets evict"
  else ko "eval ppl: streaming evicted nothing"; fi
else ko "eval ppl: $(tail -3 "$tmp/ppl.err")"; fi

# ---- eval passkey --------------------------------------------------------------------------
if "$bin" eval passkey --model "$model" --contexts 1024 --depths 50 --ratios 0.5 \
     --policies full,knorm --out-dir "$tmp/ev" >"$tmp/pk.out" 2>"$tmp/pk.err"; then
  if awk -F, '$5=="full"{exit !($7 == 1)}' "$tmp/ev/passkey.csv"; then ok "passkey at 1K: full cache answers right"
  else ko "passkey full answer: $(grep ',full,' "$tmp/ev/passkey.csv")"; fi
  if awk -F, '$5=="knorm"{exit !($10 > 0.49 && $10 < 0.51)}' "$tmp/ev/passkey.csv"; then ok "passkey: ratio 0.5 keeps half"
  else ko "passkey kept fraction: $(grep ',knorm,' "$tmp/ev/passkey.csv")"; fi
  if grep -q "case 1/1" "$tmp/pk.err"; then ok "passkey progress line"; else ko "passkey progress: $(tail -2 "$tmp/pk.err")"; fi
else ko "eval passkey: $(tail -3 "$tmp/pk.err")"; fi

# ---- eval recall -----------------------------------------------------------------------------
if "$bin" eval recall --model "$model" --text "$tmp/eval.txt" --tokens 300 --budgets 36,64 \
     --windows 8 --policy-args "qfilters:filters=$f" --out-dir "$tmp/ev" >"$tmp/rc.out" 2>"$tmp/rc.err"; then
  c="$tmp/ev/recall.csv"
  if [ "$(wc -l < "$c")" = 181 ] && grep -q "^   128\|^    36" "$tmp/rc.out" && grep -q "qf>stream" "$tmp/rc.out"; then
    ok "eval recall: a CSV row per KV head and budget, summary table"
  else ko "eval recall output: $(wc -l < "$c") rows; $(head -8 "$tmp/rc.out")"; fi
  # the best B keys catch at least as much as any kept set of B keys; shares are in [0, 1]
  bad="$(awk -F, 'NR>1{for(i=5;i<=13;i++) if($i<-1e-6||$i>1+1e-4) print; for(i=9;i<=13;i++) if($i>$8+1e-4) print}' "$c" | head -3)"
  if [ -z "$bad" ]; then ok "eval recall: oracle >= every policy, all shares in [0, 1]"
  else ko "eval recall: inconsistent rows: $bad"; fi
  # streaming at B=36 holds the first 4 and the last 32: two separate computations must agree
  bad="$(awk -F, 'NR>1 && $3==36{d=$9-($7+$5); if(d<-2e-4||d>2e-4) print}' "$c" | head -3)"
  if [ -z "$bad" ]; then ok "eval recall: streaming(B=36) = first4 + last32"
  else ko "eval recall: streaming != first4 + last32: $bad"; fi
  bad="$(awk -F, 'NR>1{k=$1","$2; if($3==36){o[k]=$8;s[k]=$9} else if($8<o[k]-1e-5||$9<s[k]-1e-5) print}' "$c" | head -3)"
  bad="$(awk -F, 'NR>1 && $3==36{for(i=14;i<=19;i++) if($i==""||$i<0||$i>10) print} NR>1 && $3==64 && $14!=""{print}' "$c" | head -3)"
  if [ -z "$bad" ] && grep -q "attention output error" "$tmp/rc.out"; then ok "eval recall: output errors for the first budget only"
  else ko "eval recall: output error columns: $bad"; fi
  if [ -z "$bad" ]; then ok "eval recall: a larger budget catches no less"
  else ko "eval recall: not monotone in the budget: $bad"; fi
else ko "eval recall: $(tail -3 "$tmp/rc.err")"; fi

# ---- bad input -----------------------------------------------------------------------------
expect_fail "eval: unknown mode" "unknown mode" "$bin" eval frobnicate
expect_fail "eval: unknown option" "unknown option '--bogus'" "$bin" eval ppl --text "$tmp/eval.txt" --bogus
expect_fail "eval: option of another mode" "not an option of this mode" "$bin" eval passkey --budgets 128
expect_fail "eval ppl: --text required" "--text FILE is required" "$bin" eval ppl --model "$model"
expect_fail "eval needle: --haystack required" "--haystack" "$bin" eval needle --model "$model" --policies full
expect_fail "eval: unknown policy" "unknown policy 'nope'" "$bin" eval ppl --text "$tmp/eval.txt" --policies full,nope
expect_fail "eval: bad ratio" "out of range" "$bin" eval passkey --ratios 0.5,1.5
expect_fail "eval: bad budget list" "trailing comma|not an integer" "$bin" eval ppl --text "$tmp/eval.txt" --budgets 128,
expect_fail "eval: budget below window" "less than window" \
  "$bin" eval ppl --model "$model" --text "$tmp/eval.txt" --policies full,knorm --budgets 8 --windows 32
expect_fail "eval: missing filters file" "cannot open filters file" \
  "$bin" eval ppl --model "$model" --text "$tmp/eval.txt" --policies full,qfilters --policy-args "qfilters:filters=$tmp/none.kvsqf"
expect_fail "eval: policy-args for an unlisted policy" "is not in --policies" \
  "$bin" eval ppl --text "$tmp/eval.txt" --policies full,knorm --policy-args "h2o:sink=4"
expect_fail "eval recall: --text required" "--text FILE is required" "$bin" eval recall --model "$model"
expect_fail "eval recall: text too short" "need at least" \
  "$bin" eval recall --model "$model" --text "$tmp/eval.txt" --tokens 300 --budgets 512 --policy-args "qfilters:filters=$f"
expect_fail "eval recall: window not below budget" "must exceed the window" \
  "$bin" eval recall --model "$model" --text "$tmp/eval.txt" --budgets 32 --windows 32 --policy-args "qfilters:filters=$f"
expect_fail "eval recall: --policies refused" "not an option of this mode" "$bin" eval recall --text "$tmp/eval.txt" --policies full
expect_fail "calibrate: --out required" "--text and --out are required" "$bin" calibrate --text "$tmp/calib.txt"
expect_fail "calibrate: bad --seq-len" "out of range" "$bin" calibrate --text "$tmp/calib.txt" --out "$tmp/x" --seq-len 0
expect_fail "calibrate: missing text" "cannot open" "$bin" calibrate --text "$tmp/none.txt" --out "$tmp/x"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
