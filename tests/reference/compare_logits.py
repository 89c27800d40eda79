#!/usr/bin/env python3
"""Compare the C engine's logits with the numpy reference (ref_forward.py).

    compare_logits.py --kvsieve BIN --model GGUF --tokens 1,2,3 [--tokens 4,5 ...]
                      [--atol 1e-2] [--batch | --both] [--kvsieve-arg ARG ...]

For each token list the engine is run as
    BIN dump-logits --model GGUF --tokens 1,2,3 --out TMPFILE
which writes float32 little-endian [n_tokens][n_vocab]. With --batch all lists go to one
call (repeated --tokens plus --batch: one ragged batch) and the file holds every sequence's
logits concatenated in the given order. --both runs the separate calls and then the batched
one, sharing one reference computation.

Checks, per token list: the output is finite and has the right size, max |C - ref| <= atol,
and the argmax agrees at every position. An argmax disagreement is tolerated only as a
near-tie: when the reference itself rates the engine's pick within atol of its own top
logit (such a flip is inside the tolerance being tested); near-ties are reported.
Missing binary, non-zero exit, missing or wrongly sized output: failure.
Exit status 0 only if every check passed. Last line: "compare_logits: N passed, N failed".
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_forward  # noqa: E402


def run_engine(binary: str, model: str, token_lists: list[list[int]], batch: bool,
               extra: list[str], timeout: float) -> tuple[np.ndarray | None, str]:
    """Run dump-logits; return (flat float32 array, '') or (None, error message)."""
    if not os.path.isfile(binary):
        return None, f"engine binary not found: {binary}"
    if not os.access(binary, os.X_OK):
        return None, f"engine binary not executable: {binary}"
    with tempfile.TemporaryDirectory(prefix="kvs-cmp-") as tmp:
        out = os.path.join(tmp, "logits.f32")
        cmd = [binary, "dump-logits", "--model", model]
        for toks in token_lists:
            cmd += ["--tokens", ",".join(map(str, toks))]
        if batch:
            cmd.append("--batch")
        cmd += ["--out", out] + extra
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"engine timed out after {timeout:.0f}s: {' '.join(cmd)}"
        except OSError as e:
            return None, f"cannot run engine: {e}"
        dt = time.time() - t0
        if p.returncode != 0:
            tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
            return None, "\n    ".join([f"engine exited with status {p.returncode}: "
                                         f"{' '.join(cmd)}"] + tail)
        if not os.path.isfile(out):
            return None, f"engine wrote no output file: {' '.join(cmd)}"
        data = np.fromfile(out, dtype="<f4")
        print(f"  engine: {len(token_lists)} sequence(s){' batched' if batch else ''}, "
              f"{dt:.2f}s")
        return data, ""


# Above this size the reference runs in a child process that exits before the engine starts,
# so that the two dequantised copies of the weights (~4 bytes per parameter each) are never in
# memory at once (the 1.5B qwen2 model is ~6 GB in fp32).
BIG_MODEL_BYTES = 256 << 20


def reference_in_child(model: str, token_lists: list[list[int]], timeout: float
                       ) -> tuple[list[np.ndarray] | None, str]:
    """ref_forward.py in a subprocess; its float32 output split back into one array per list
    (float32 storage costs ~1e-6 on logits of size ~10, far below any tolerance used)."""
    with tempfile.TemporaryDirectory(prefix="kvs-ref-") as tmp:
        out = os.path.join(tmp, "ref.f32")
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "ref_forward.py"), model, "--out", out]
        for toks in token_lists:
            cmd += ["--tokens", ",".join(map(str, toks))]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 4)
        except subprocess.TimeoutExpired:
            return None, "reference timed out"
        if p.returncode != 0:
            return None, f"ref_forward.py exited with status {p.returncode}: {p.stderr[-2000:]}"
        data = np.fromfile(out, dtype="<f4").astype(np.float64)
    n = sum(len(t) for t in token_lists)
    if n == 0 or data.size % n:
        return None, f"reference wrote {data.size} floats for {n} tokens"
    vocab = data.size // n
    refs, off = [], 0
    for toks in token_lists:
        refs.append(data[off:off + len(toks) * vocab].reshape(len(toks), vocab))
        off += len(toks) * vocab
    return refs, ""


def check(name: str, c: np.ndarray, ref: np.ndarray, atol: float, rms_max: float = 0.0) -> bool:
    """Compare one sequence's engine logits c with reference ref, both [n, vocab]."""
    n = ref.shape[0]
    if not np.all(np.isfinite(c)):
        bad = int(np.sum(~np.isfinite(c)))
        print(f"FAIL {name}: n={n}: {bad} non-finite engine logits")
        return False
    diff = np.abs(c.astype(np.float64) - ref)
    maxdiff = float(diff.max())
    worst_pos = int(diff.max(axis=1).argmax())
    ra, ca = ref.argmax(axis=1), c.argmax(axis=1)
    flips = np.nonzero(ra != ca)[0]
    near = [int(p) for p in flips if ref[p, ca[p]] >= ref[p, ra[p]] - atol]
    hard = [int(p) for p in flips if int(p) not in near]
    agree = n - len(flips)
    rms = float(np.sqrt(np.mean(diff * diff)))
    ok = maxdiff <= atol and not hard and (rms_max <= 0 or rms <= rms_max)
    msg = (f"{'PASS' if ok else 'FAIL'} {name}: n={n} max_abs_diff={maxdiff:.3e} "
           f"(pos {worst_pos}, atol {atol:g}) rms_diff={rms:.3e}"
           f"{f' (max {rms_max:g})' if rms_max > 0 else ''} argmax {agree}/{n}")
    if near:
        msg += f" (near-tie flips at {near})"
    print(msg)
    if hard:
        for p in hard[:5]:
            print(f"    pos {p}: ref argmax {ra[p]} ({ref[p, ra[p]]:.4f}), engine argmax {ca[p]} "
                  f"(ref logit {ref[p, ca[p]]:.4f}, engine {c[p, ca[p]]:.4f})")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare kvsieve dump-logits with ref_forward")
    ap.add_argument("--kvsieve", required=True, help="path of the kvsieve binary")
    ap.add_argument("--model", required=True, help="llama or qwen2 GGUF")
    ap.add_argument("--tokens", action="append", required=True,
                    help="comma-separated token ids; repeat for more sequences")
    ap.add_argument("--atol", type=float, default=1e-2)
    ap.add_argument("--rms", type=float, default=0.0,
                    help="also require the RMS logit difference per sequence <= this (0: off)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--batch", action="store_true",
                      help="run all token lists in one ragged batch")
    mode.add_argument("--both", action="store_true",
                      help="run each list separately, then all in one batch")
    ap.add_argument("--kvsieve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for dump-logits (repeatable), e.g. --kvsieve-arg=--threads=2")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per engine call")
    a = ap.parse_args(argv)

    passed = failed = 0
    try:
        token_lists = [ref_forward.parse_tokens(t) for t in a.tokens]
        if any(len(t) == 0 for t in token_lists):
            raise ValueError("empty token list")
    except ValueError as e:
        print(f"FAIL bad --tokens: {e}")
        print("compare_logits: 0 passed, 1 failed")
        return 1
    if not os.path.isfile(a.model):
        print(f"FAIL model not found: {a.model}")
        print("compare_logits: 0 passed, 1 failed")
        return 1

    t0 = time.time()
    if os.path.getsize(a.model) > BIG_MODEL_BYTES:
        refs, err = reference_in_child(a.model, token_lists, a.timeout)
        if refs is None:
            print(f"FAIL reference: {err}")
            print("compare_logits: 0 passed, 1 failed")
            return 1
    else:
        refs = [ref_forward.logits(a.model, t) for t in token_lists]
    vocab = refs[0].shape[1]
    print(f"reference: {len(refs)} sequence(s), vocab {vocab}, {time.time() - t0:.1f}s "
          f"(incl. load)")

    modes = ["batch"] if a.batch else (["separate", "batch"] if a.both else ["separate"])
    for m in modes:
        if m == "separate":
            for i, (toks, ref) in enumerate(zip(token_lists, refs)):
                name = f"seq {i} (separate)"
                data, err = run_engine(a.kvsieve, a.model, [toks], False, a.kvsieve_arg,
                                       a.timeout)
                if data is None:
                    print(f"FAIL {name}: {err}")
                    failed += 1
                    continue
                if data.size != ref.size:
                    print(f"FAIL {name}: engine wrote {data.size} floats, expected "
                          f"{ref.shape[0]} x {vocab} = {ref.size}")
                    failed += 1
                    continue
                if check(name, data.reshape(ref.shape), ref, a.atol, a.rms):
                    passed += 1
                else:
                    failed += 1
        else:
            data, err = run_engine(a.kvsieve, a.model, token_lists, True, a.kvsieve_arg,
                                   a.timeout)
            total = sum(r.size for r in refs)
            if data is None or data.size != total:
                why = err or (f"engine wrote {data.size} floats, expected "
                              f"{sum(r.shape[0] for r in refs)} x {vocab} = {total}")
                print(f"FAIL batch of {len(refs)}: {why}")
                failed += len(refs)
                continue
            off = 0
            for i, ref in enumerate(refs):
                c = data[off:off + ref.size].reshape(ref.shape)
                off += ref.size
                if check(f"seq {i} (batch of {len(refs)})", c, ref, a.atol, a.rms):
                    passed += 1
                else:
                    failed += 1

    print(f"compare_logits: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
