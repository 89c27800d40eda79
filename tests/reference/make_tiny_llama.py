#!/usr/bin/env python3
"""Write a tiny random-weight llama (or qwen2) GGUF for fast forward-pass tests.

    make_tiny_llama.py OUT.gguf [--seed N] [--arch llama|qwen2] [--rope-freqs]

Deterministic (default seed 1234). Shape: 2 layers, hidden 64, 4 query heads, 2 KV heads
(GQA group 2), head dim 16, FFN 128, vocab 256, RoPE base 10000, RMS eps 1e-5, context 128,
tied embeddings (no output.weight). Tensor types are mixed on purpose so a loader meets
each kind: norms F32, token_embd Q8_0, and the layer weights a mix of Q4_1, Q8_0, F16, F32.
The tokenizer section is byte-level GPT-2 with exactly the 256 byte tokens (token id == byte
value), no merges, bos 1, eos 2 -- enough for a loader that expects one; it is not meant to
tokenise anything sensibly.

--arch qwen2 writes the same shapes as a qwen2 model: qwen2.* keys, Q/K/V biases
(blk.N.attn_{q,k,v}.bias, F32, large enough to matter), an untied output.weight (Q8_0), and
Q5_0 / Q5_1 among the layer weights; the forward must use NEOX RoPE for it.
--rope-freqs adds a llama3-style rope_freqs.weight (F32 [head_dim / 2], factors 1..8).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import gguf
from gguf import GGUFWriter, GGUFValueType
from gguf.constants import GGMLQuantizationType as QT

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_VOCAB, N_CTX = 2, 64, 4, 2, 128, 256, 128
HEAD_DIM = N_EMBD // N_HEAD
ROPE_BASE, EPS = 10000.0, 1e-5

# per-layer weight types: every matmul format appears at least once
LAYER_TYPES = [
    {"attn_q": QT.Q4_1, "attn_k": QT.F16, "attn_v": QT.F32, "attn_output": QT.Q4_1,
     "ffn_gate": QT.Q4_1, "ffn_up": QT.F16, "ffn_down": QT.Q4_1},
    {"attn_q": QT.F16, "attn_k": QT.Q4_1, "attn_v": QT.Q4_1, "attn_output": QT.Q8_0,
     "ffn_gate": QT.F32, "ffn_up": QT.Q4_1, "ffn_down": QT.F16},
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class _Writer(GGUFWriter):
    """GGUFWriter refuses empty arrays; GGUF itself allows them. The only empty array we
    write is tokenizer.ggml.merges, so an empty array is written as an empty string array."""

    def _pack_val(self, val, vtype, add_vtype, *args, **kwargs):
        if vtype == GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and len(val) == 0:
            out = self._pack("I", vtype) if add_vtype else b""
            return out + self._pack("I", GGUFValueType.STRING) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, *args, **kwargs)


def add_weight(w: GGUFWriter, name: str, data: np.ndarray, qtype: QT) -> None:
    """data has numpy shape (out, in); GGUF stores ne = [in, out]."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype in (QT.F32, QT.F16):
        w.add_tensor(name, gguf.quants.quantize(data, qtype))
    else:
        q = gguf.quants.quantize(data, qtype)           # uint8 (out, bytes per row)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


QWEN2_LAYER_TYPES = [
    {"attn_q": QT.Q5_0, "attn_k": QT.F16, "attn_v": QT.Q5_1, "attn_output": QT.Q4_1,
     "ffn_gate": QT.Q5_1, "ffn_up": QT.F16, "ffn_down": QT.Q5_0},
    {"attn_q": QT.F16, "attn_k": QT.Q5_1, "attn_v": QT.Q5_0, "attn_output": QT.Q8_0,
     "ffn_gate": QT.F32, "ffn_up": QT.Q4_1, "ffn_down": QT.F16},
]


def build(path: str, seed: int = 1234, arch: str = "llama", rope_freqs: bool = False) -> None:
    rng = np.random.default_rng(seed)
    qwen2 = arch == "qwen2"

    def mat(n_out, n_in):
        return rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)

    def norm(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    w = _Writer(path, arch)
    w.add_name(f"kvsieve-tiny-{arch}")
    w.add_custom_alignment(32)                           # general.alignment (the default)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(EPS)
    w.add_vocab_size(N_VOCAB)
    w.add_quantization_version(2)

    byte_chars = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([byte_chars[b] for b in range(N_VOCAB)])
    w.add_token_types([1] * N_VOCAB)
    w.add_key_value(gguf.Keys.Tokenizer.MERGES, [], GGUFValueType.ARRAY)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    kv = N_HEAD_KV * HEAD_DIM
    add_weight(w, "token_embd.weight", 0.5 * rng.standard_normal((N_VOCAB, N_EMBD)), QT.Q8_0)
    if rope_freqs:
        add_weight(w, "rope_freqs.weight", np.linspace(1.0, 8.0, HEAD_DIM // 2), QT.F32)
    for i, types in enumerate(QWEN2_LAYER_TYPES if qwen2 else LAYER_TYPES):
        shapes = {"attn_q": (N_EMBD, N_EMBD), "attn_k": (kv, N_EMBD), "attn_v": (kv, N_EMBD),
                  "attn_output": (N_EMBD, N_EMBD), "ffn_gate": (N_FF, N_EMBD),
                  "ffn_up": (N_FF, N_EMBD), "ffn_down": (N_EMBD, N_FF)}
        add_weight(w, f"blk.{i}.attn_norm.weight", norm(N_EMBD), QT.F32)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add_weight(w, f"blk.{i}.{name}.weight", mat(*shapes[name]), types[name])
        if qwen2:
            for name in ("attn_q", "attn_k", "attn_v"):
                add_weight(w, f"blk.{i}.{name}.bias", 0.5 * rng.standard_normal(shapes[name][0]),
                           QT.F32)
        add_weight(w, f"blk.{i}.ffn_norm.weight", norm(N_EMBD), QT.F32)
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            add_weight(w, f"blk.{i}.{name}.weight", mat(*shapes[name]), types[name])
    add_weight(w, "output_norm.weight", norm(N_EMBD), QT.F32)
    if qwen2:
        add_weight(w, "output.weight", mat(N_VOCAB, N_EMBD), QT.Q8_0)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write a tiny random llama / qwen2 GGUF")
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--arch", choices=("llama", "qwen2"), default="llama")
    ap.add_argument("--rope-freqs", action="store_true",
                    help="add a llama3-style rope_freqs.weight")
    a = ap.parse_args(argv)
    build(a.out, a.seed, a.arch, a.rope_freqs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
