#!/usr/bin/env bash
# The forward on weights kept in their GGUF blocks (--weights native, the CPU default) vs the
# numpy reference (which dequantises to fp32), on the prompts of pytest_forward_model.sh:
#   1. whole prompts in one step: the products run BLAS on dequantised tiles (T >= the batch
#      threshold) for the longer prompts, the integer path for the 5-token one; batched too;
#   2. --chunk 1 (decode-like steps, T = 1 per sequence, T = 4 batched): every product on the
#      integer path, 8-bit activations. Tolerance stated from measurement (docs/BENCHMARKS.md):
#      max |logit diff| <= 3.0, RMS <= 0.6 per sequence, argmax flips only at near-ties.
# The same at the scalar kernels (KVSIEVE_WQ_ISA=scalar) for the chunk-1 run, so CI covers
# the portable fallback and the machine's best vector path.
set -u
SOURCE_DIR=${KVS_SOURCE_DIR:-.}
here="$SOURCE_DIR/tests/engine"
rc=0
echo "== whole prompts (BLAS tiles for the long ones, integer path for the short)"
KVS_FORWARD_ATOL=${KVS_WQ_ATOL:-3.0} KVS_FORWARD_ARGS="--kvsieve-arg=--weights=native --rms 0.6" \
  bash "$here/pytest_forward_model.sh" || rc=1
echo "== --chunk 1: integer dot kernels, best ISA"
KVS_FORWARD_ATOL=${KVS_WQ_ATOL:-3.0} \
  KVS_FORWARD_ARGS="--kvsieve-arg=--weights=native --kvsieve-arg=--chunk=1 --rms 0.6" \
  bash "$here/pytest_forward_model.sh" || rc=1
echo "== --chunk 1: scalar kernels"
KVSIEVE_WQ_ISA=scalar KVS_FORWARD_ATOL=${KVS_WQ_ATOL:-3.0} \
  KVS_FORWARD_ARGS="--kvsieve-arg=--weights=native --kvsieve-arg=--chunk=1 --rms 0.6" \
  bash "$here/pytest_forward_model.sh" || rc=1
exit $rc
