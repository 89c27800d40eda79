#!/usr/bin/env python3
"""Greedy continuation of a prompt through the C engine's `kvsieve dump-logits`, with the
tokenizer of ref_forward.py (Hugging Face `tokenizers`, built from the GGUF) on both ends.

    greedy_engine.py --kvsieve build/kvsieve --model GGUF --prompt "The capital of France is" -n 8

For checking a model family whose tokenizer the engine does not have yet (so `kvsieve
generate` refuses the model): one dump-logits call per generated token, each reloading the
model, so it is slow on big models (~10 s a step for the 1.5B qwen2 on 2 cores). Prints the
prompt's ids, the generated ids and the decoded continuation.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_forward  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvsieve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("-n", type=int, default=8)
    a = ap.parse_args(argv)
    tok = ref_forward.tokenizer_from_gguf(a.model)
    ids = tok.encode(a.prompt).ids
    print(f"prompt ids: {ids}")
    gen = []
    with tempfile.TemporaryDirectory(prefix="kvs-greedy-") as tmp:
        out = os.path.join(tmp, "logits.f32")
        for _ in range(a.n):
            seq = ids + gen
            cmd = [a.kvsieve, "dump-logits", "--model", a.model,
                   "--tokens", ",".join(map(str, seq)), "--out", out]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"engine failed: {p.stderr.strip()}")
                return 1
            lg = np.fromfile(out, dtype="<f4").reshape(len(seq), -1)
            gen.append(int(lg[-1].argmax()))
    print(f"generated ids: {gen}")
    print(f"continuation: {tok.decode(gen)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
