#!/usr/bin/env bash
# Forward pass vs the numpy reference on the default model (SmolLM2-135M-Instruct Q4_1),
# prompts tokenised with the GGUF's own tokenizer (tests/reference/ref_forward.py).
# Each prompt alone, then all in one ragged batch. Takes some tens of seconds.
# Env (set by ctest): KVS_BUILD_DIR (default ./build), KVS_SOURCE_DIR (default .);
# optional: KVSIEVE_MODEL (GGUF path), KVS_FORWARD_ATOL (default 1e-2), PYTHON,
# KVS_FORWARD_ARGS (extra compare_logits.py arguments; default: --weights f32, the
# dequantised weights: the quantised-weight path has its own test, pytest_forward_model_wq).
set -u
BUILD_DIR=${KVS_BUILD_DIR:-./build}
SOURCE_DIR=${KVS_SOURCE_DIR:-.}
BIN="$BUILD_DIR/kvsieve"
REF="$SOURCE_DIR/tests/reference"
PY=${PYTHON:-python3}
ATOL=${KVS_FORWARD_ATOL:-1e-2}
MODEL=${KVSIEVE_MODEL:-$SOURCE_DIR/models/smollm2-135m-instruct-q4_1.gguf}

passed=0
failed=0
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}

if [ ! -f "$MODEL" ]; then
  echo "FAIL model not found: $MODEL"
  echo "     run scripts/fetch-model (or set KVSIEVE_MODEL to a llama GGUF)"
  failed=1
  finish
fi

# Prompts, one token list per line (comma-separated), from the GGUF's tokenizer. Without the
# `tokenizers` package, the ids below (made with it, for the default model only) are used.
TOKENS=$("$PY" - "$REF" "$MODEL" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
import ref_forward
prompts = [
    "The capital of France is",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who repaired every clock in town and never once asked to be paid for his work.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
    "print([fib(i) for i in range(10)])\n",
    "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n<|im_start|>assistant\n",
]
SMOLLM2_IDS = [
    "504,3575,282,4649,314",
    "6403,1980,253,655,28,281,253,1165,6560,418,260,5595,282,253,1109,3150,28,665,4161,354,"
    "1573,9191,16201,617,25589,897,9191,281,3102,284,2093,2268,3413,288,325,5940,327,650,746,30",
    "1604,3987,24,94,727,472,585,304,2067,216,34,42,448,1003,304,472,1003,3987,24,94,731,216,"
    "33,25,1232,3987,24,94,731,216,34,25,198,198,3272,4151,38572,24,89,25,327,2056,281,1845,24,"
    "33,32,21311,198",
    "1,4093,198,1780,314,216,33,39,1232,216,34,37,47,2,198,1,520,9531,198",
]
try:
    import tokenizers  # noqa: F401
except ImportError:
    from gguf import GGUFReader
    f = GGUFReader(sys.argv[2]).fields
    toks = f["tokenizer.ggml.tokens"].contents()
    if len(toks) == 49152 and toks[1] == "<|im_start|>" and toks[504] == "The":
        print("note: python package 'tokenizers' missing; using stored SmolLM2 token ids",
              file=sys.stderr)
        print("\n".join(SMOLLM2_IDS))
        sys.exit(0)
    sys.exit("python package 'tokenizers' is needed to tokenise prompts for this model "
             "(pip install tokenizers)")
tok = ref_forward.tokenizer_from_gguf(sys.argv[2])
for p in prompts:
    print(",".join(map(str, tok.encode(p).ids)))
PYEOF
)
if [ $? -ne 0 ] || [ -z "$TOKENS" ]; then
  echo "FAIL could not tokenise the prompts with $MODEL"
  failed=1
  finish
fi

args=()
while IFS= read -r line; do
  [ -n "$line" ] && args+=(--tokens "$line")
done <<< "$TOKENS"
echo "prompts: $(( ${#args[@]} / 2 )), token counts: $(echo "$TOKENS" | awk -F, '{printf "%s%d", sep, NF; sep=" "}')"

out=$("$PY" "$REF/compare_logits.py" --kvsieve "$BIN" --model "$MODEL" "${args[@]}" \
      --atol "$ATOL" --both ${KVS_FORWARD_ARGS---kvsieve-arg=--weights=f32} 2>&1)
rc=$?
echo "$out"
summary=$(echo "$out" | grep -E '^compare_logits: [0-9]+ passed, [0-9]+ failed$' | tail -1)
if [ -n "$summary" ]; then
  p=$(echo "$summary" | awk '{print $2}'); f=$(echo "$summary" | awk '{print $4}')
  passed=$((passed + p)); failed=$((failed + f))
  [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && failed=$((failed + 1))
else
  echo "FAIL compare_logits.py produced no summary (exit status $rc)"
  failed=$((failed + 1))
fi
finish
