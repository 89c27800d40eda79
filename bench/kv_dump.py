#!/usr/bin/env python3
"""kv_dump.py — post-RoPE queries, keys and values of a real model on real text, for
kvquant_bench --kv (quantisation error on real K/V rows; docs/QAQ-DESIGN.md).

    .venv/bin/python bench/kv_dump.py MODEL.gguf TEXT_FILE OUT.kvd [--tokens N]

Runs tests/reference/ref_forward.py's numpy forward (float32) and writes
    "KVD1", int32 n_layer, n_head_kv, n_head, head_dim, n_tokens,
    K [L][H_kv][n][d], V [L][H_kv][n][d], Q [L][H_q][n][d]   (float32, little endian)
"""
import argparse
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import ref_forward as rf  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    tok = rf.tokenizer_from_gguf(a.model)
    ids = tok.encode(open(a.text, encoding="utf-8").read()).ids[: a.tokens]
    m = rf.load(a.model)
    c = m.cfg
    n, d, dt = len(ids), c.head_dim, np.float32
    pos = np.arange(n)
    W = lambda i, name: m.layer(i, name).astype(dt, copy=False)  # noqa: E731
    K = np.empty((c.n_layer, c.n_head_kv, n, d), dt)
    V = np.empty_like(K)
    Q = np.empty((c.n_layer, c.n_head, n, d), dt)
    x = m.w["token_embd.weight"][np.asarray(ids)].astype(dt)
    for i in range(c.n_layer):
        h = rf.rmsnorm(x, W(i, "attn_norm"), c.eps)
        q = (h @ W(i, "attn_q").T).reshape(n, c.n_head, d)
        k = (h @ W(i, "attn_k").T).reshape(n, c.n_head_kv, d)
        v = (h @ W(i, "attn_v").T).reshape(n, c.n_head_kv, d)
        q = rf.rope(q, pos, c.rope_base, c.rope_dim, "adjacent")
        k = rf.rope(k, pos, c.rope_base, c.rope_dim, "adjacent")
        K[i], V[i], Q[i] = k.transpose(1, 0, 2), v.transpose(1, 0, 2), q.transpose(1, 0, 2)
        att = rf.attention(q, k, v, c.n_head, c.n_head_kv)
        x = x + att @ W(i, "attn_output").T
        h = rf.rmsnorm(x, W(i, "ffn_norm"), c.eps)
        x = x + (rf.silu(h @ W(i, "ffn_gate").T) * (h @ W(i, "ffn_up").T)) @ W(i, "ffn_down").T
    with open(a.out, "wb") as f:
        f.write(b"KVD1" + struct.pack("<5i", c.n_layer, c.n_head_kv, c.n_head, d, n))
        for t in (K, V, Q):
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())
    print(f"{a.out}: {c.n_layer} layers, {c.n_head_kv}/{c.n_head} heads, d {d}, {n} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
