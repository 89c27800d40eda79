#!/usr/bin/env bash
# Forward pass vs the numpy reference on tiny random GGUFs (2 layers, GQA, mixed tensor
# types), made fresh in a temp dir by make_tiny_llama.py, one per family variant:
#   llama            Q8_0/Q4_1/F16/F32, tied output, adjacent-pair RoPE
#   llama3           the same plus rope_freqs.weight (llama3 RoPE scaling)
#   qwen2            Q/K/V biases, NEOX RoPE, untied output, Q5_0/Q5_1 weights
# Checks per variant: three sequences (lengths 1, 12, 40) each alone, all in one ragged
# batch, and the batch again with chunked prefill (dump-logits --chunk 7), all with --weights
# f32 (dequantised: the reference's own numbers); then --weights native (the blocks, 8-bit
# activations) within a stated bound, at the best ISA and the scalar kernels. Runs in seconds.
# Env (set by ctest): KVS_BUILD_DIR (default ./build), KVS_SOURCE_DIR (default .);
# optional: KVS_FORWARD_ATOL (default 1e-2), PYTHON (default python3).
set -u
BUILD_DIR=${KVS_BUILD_DIR:-./build}
SOURCE_DIR=${KVS_SOURCE_DIR:-.}
BIN="$BUILD_DIR/kvsieve"
REF="$SOURCE_DIR/tests/reference"
PY=${PYTHON:-python3}
ATOL=${KVS_FORWARD_ATOL:-1e-2}
# the native-weight runs (8-bit activations): measured max 0.30, RMS 0.053 on these models
WQ_ATOL=${KVS_WQ_ATOL:-0.5}
WQ_RMS=${KVS_WQ_RMS:-0.1}

passed=0
failed=0
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}

# run compare_logits.py with the given arguments and add its counts to ours
compare() {
  local out rc summary p f
  out=$("$PY" "$REF/compare_logits.py" --kvsieve "$BIN" --model "$MODEL" --atol "${CMP_ATOL:-$ATOL}" "$@" 2>&1)
  rc=$?
  echo "$out"
  summary=$(echo "$out" | grep -E '^compare_logits: [0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -n "$summary" ]; then
    p=$(echo "$summary" | awk '{print $2}'); f=$(echo "$summary" | awk '{print $4}')
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then failed=$((failed + 1)); fi
  else
    echo "FAIL compare_logits.py produced no summary (exit status $rc)"
    failed=$((failed + 1))
  fi
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-tiny.XXXXXX") || { failed=1; finish; }
trap 'rm -rf "$TMP"' EXIT

# three sequences: length 1, 12 ("Hello, world" as bytes; token id == byte), 40 (incl. 0 and 255)
T1="1"
T12="72,101,108,108,111,44,32,119,111,114,108,100"
T40="0,255"
for i in $(seq 1 38); do T40="$T40,$(( (i * 37 + 11) % 256 ))"; done

for variant in "llama" "llama3 --rope-freqs" "qwen2 --arch qwen2"; do
  set -- $variant
  name=$1; shift
  MODEL="$TMP/tiny-$name.gguf"
  if ! "$PY" "$REF/make_tiny_llama.py" "$MODEL" "$@"; then
    echo "FAIL make_tiny_llama.py $* could not write $MODEL"
    failed=$((failed + 1))
    continue
  fi
  echo "== $name: each sequence alone, then all three in one ragged batch"
  compare --tokens "$T1" --tokens "$T12" --tokens "$T40" --both --kvsieve-arg=--weights=f32
  echo "== $name: one ragged batch, chunked prefill (--chunk 7)"
  compare --tokens "$T1" --tokens "$T12" --tokens "$T40" --batch --kvsieve-arg=--chunk=7 \
    --kvsieve-arg=--weights=f32
  # weights in their GGUF blocks (every type of the file on the 8-bit-activation dot path:
  # all steps here are below the BLAS batch size), best ISA and scalar
  for isa in "" scalar; do
    echo "== $name: weights native${isa:+, $isa kernels}, each alone then batched"
    KVSIEVE_WQ_ISA=$isa CMP_ATOL=$WQ_ATOL compare --tokens "$T1" --tokens "$T12" --tokens "$T40" \
      --both --kvsieve-arg=--weights=native --rms "$WQ_RMS"
  done
done
finish
