#!/usr/bin/env python3
"""Independent numpy reference forward pass for llama- and qwen2-architecture GGUF models.

Slow and readable on purpose: it is the yardstick the C forward pass is checked
against, so it shares no code with the engine. Weights are read and dequantised
with the `gguf` Python package; all arithmetic is done in float64 by default
(float32 on request).

Library use:
    from ref_forward import logits
    out = logits("model.gguf", [1, 2, 3])        # np.ndarray [n_tokens, vocab]

CLI:
    ref_forward.py MODEL --tokens 1,2,3 --out FILE   # float32 LE [n_tokens][vocab]
    ref_forward.py MODEL --tokens 1,2,3 --top 5      # print top-5 ids per position
    ref_forward.py MODEL --text "Hello" --print-tokens   # tokenize with the GGUF's BPE

The model (single sequence, positions 0..n-1, no KV cache, no batching):
    x = token_embd[tokens]
    per layer:
        h = rmsnorm(x) * attn_norm
        q, k, v = h @ Wq.T (+ bq), h @ Wk.T (+ bk), h @ Wv.T (+ bv)   (biases: qwen2)
        RoPE on q and k, angle pos * base^(-2i/d) / rope_freqs[i] (rope_freqs.weight,
            llama3 files; 1 when absent), pairing by architecture:
            llama: GGML "normal" form, adjacent pairs (x[2i], x[2i+1]) -- correct for GGUF
                   llama weights, whose Q/K rows were permuted by llama.cpp's converter;
            qwen2: NEOX form, pairs (x[i], x[i+d/2]) -- its Q/K rows are not permuted.
        causal GQA attention (query head h reads kv head h // (Hq/Hkv)),
            softmax(q.k / sqrt(d))
        x += attn @ Wo.T
        h = rmsnorm(x) * ffn_norm
        x += (silu(h @ Wgate.T) * (h @ Wup.T)) @ Wdown.T
    logits = (rmsnorm(x) * output_norm) @ Wout.T   (Wout = token_embd if no output.weight)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
import gguf.quants


# --------------------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------------------

def _field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key {key!r} missing")
        return default
    return f.contents()


@dataclass
class Config:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    rope_base: float
    eps: float
    vocab: int
    arch: str = "llama"
    rope_layout: str = "adjacent"     # the architecture's own RoPE pairing
    qkv_bias: bool = False


# What differs between the supported families (the C engine's engine/arch.c, restated).
ARCHS = {
    "llama": {"rope_layout": "adjacent", "qkv_bias": False},
    "qwen2": {"rope_layout": "half", "qkv_bias": True},
}


def read_config(reader: GGUFReader) -> Config:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"unsupported architecture {arch!r} (only {', '.join(ARCHS)})")
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    scaling = _field(reader, k("rope.scaling.type"), "none")
    if scaling != "none":
        raise ValueError(f"RoPE scaling {scaling!r} is not implemented here")
    n_embd = int(_field(reader, k("embedding_length")))
    n_head = int(_field(reader, k("attention.head_count")))
    n_head_kv = int(_field(reader, k("attention.head_count_kv"), n_head))
    head_dim = n_embd // n_head
    return Config(
        n_layer=int(_field(reader, k("block_count"))),
        n_embd=n_embd,
        n_ff=int(_field(reader, k("feed_forward_length"))),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        rope_dim=int(_field(reader, k("rope.dimension_count"), head_dim)),
        rope_base=float(_field(reader, k("rope.freq_base"), 10000.0)),
        eps=float(_field(reader, k("attention.layer_norm_rms_epsilon"))),
        vocab=0,  # filled from token_embd below
        arch=arch,
        **ARCHS[arch],
    )


def dequant(t) -> np.ndarray:
    """Dequantise one GGUF tensor to float32 in numpy order: ne=[in, out] -> (out, in)."""
    ne = [int(n) for n in t.shape]           # innermost first
    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16,
                         GGMLQuantizationType.F64):
        w = np.asarray(t.data, dtype=np.float32)
    else:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    return w.reshape(tuple(reversed(ne)))


class Model:
    """All weights of a llama / qwen2 GGUF, dequantised once to float32."""

    def __init__(self, path: str):
        reader = GGUFReader(path)
        self.cfg = read_config(reader)
        self.w = {t.name: dequant(t) for t in reader.tensors}
        emb = self.w["token_embd.weight"]
        self.cfg.vocab = emb.shape[0]
        c = self.cfg
        if emb.shape != (c.vocab, c.n_embd):
            raise ValueError(f"token_embd shape {emb.shape} != (vocab, {c.n_embd})")
        self.out_w = self.w.get("output.weight", emb)   # tied embeddings if absent
        kv = c.n_head_kv * c.head_dim
        for i in range(c.n_layer):
            for name, shape in (("attn_q", (c.n_embd, c.n_embd)), ("attn_k", (kv, c.n_embd)),
                                ("attn_v", (kv, c.n_embd)), ("attn_output", (c.n_embd, c.n_embd)),
                                ("ffn_gate", (c.n_ff, c.n_embd)), ("ffn_up", (c.n_ff, c.n_embd)),
                                ("ffn_down", (c.n_embd, c.n_ff))):
                got = self.w[f"blk.{i}.{name}.weight"].shape
                if got != shape:
                    raise ValueError(f"blk.{i}.{name}.weight shape {got} != {shape}")
            if c.qkv_bias:
                for name, n in (("attn_q", c.n_embd), ("attn_k", kv), ("attn_v", kv)):
                    got = self.w[f"blk.{i}.{name}.bias"].shape
                    if got != (n,):
                        raise ValueError(f"blk.{i}.{name}.bias shape {got} != ({n},)")
        self.rope_freqs = self.w.get("rope_freqs.weight")       # llama3 RoPE scaling
        if self.rope_freqs is not None and self.rope_freqs.shape != (c.rope_dim // 2,):
            raise ValueError(f"rope_freqs.weight shape {self.rope_freqs.shape}")

    def layer(self, i: int, name: str) -> np.ndarray:
        return self.w[f"blk.{i}.{name}.weight"]


# --------------------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------------------

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, pos: np.ndarray, base: float, n_rot: int,
         layout: str = "adjacent", freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Rotate x [n, heads, d] in place-free fashion.

    layout="adjacent": GGML normal RoPE, pairs (x[2i], x[2i+1]) -- correct for GGUF llama.
    layout="half":     Hugging Face / NeoX form, pairs (x[i], x[i+n_rot/2]) -- correct for
                       GGUF qwen2, WRONG for GGUF llama weights.
    freq_factors (rope_freqs.weight): theta_i is divided by freq_factors[i].
    Only the first n_rot dims of each head are rotated (n_rot = rope.dimension_count).
    """
    half = n_rot // 2
    theta = base ** (-2.0 * np.arange(half, dtype=np.float64) / n_rot)   # [half]
    if freq_factors is not None:
        theta = theta / freq_factors.astype(np.float64)
    ang = pos.astype(np.float64)[:, None] * theta[None, :]                # [n, half]
    cos = np.cos(ang)[:, None, :].astype(x.dtype)                         # [n, 1, half]
    sin = np.sin(ang)[:, None, :].astype(x.dtype)
    out = x.copy()
    if layout == "adjacent":
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    elif layout == "half":
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        raise ValueError(layout)
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, n_head_kv: int
              ) -> np.ndarray:
    """Causal GQA attention. q [n, Hq, d], k/v [n, Hkv, d] -> [n, Hq*d]."""
    n, _, d = q.shape
    group = n_head // n_head_kv
    mask = np.triu(np.ones((n, n), dtype=bool), k=1)       # True above diagonal = future
    out = np.empty_like(q)
    for h in range(n_head):
        kh = h // group
        s = (q[:, h, :] @ k[:, kh, :].T) / np.sqrt(d)        # [n, n]
        s = np.where(mask, -np.inf, s)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, kh, :]
    return out.reshape(n, n_head * d)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def forward(model: Model, tokens, dtype=np.float64, rope_layout: str | None = None
            ) -> np.ndarray:
    c = model.cfg
    rope_layout = rope_layout or c.rope_layout
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError("tokens must be a non-empty 1-D list")
    if tokens.min() < 0 or tokens.max() >= c.vocab:
        raise ValueError(f"token id out of range [0, {c.vocab})")
    n = tokens.size
    pos = np.arange(n)
    d = c.head_dim
    W = lambda i, name: model.layer(i, name).astype(dtype, copy=False)  # noqa: E731

    x = model.w["token_embd.weight"][tokens].astype(dtype)
    for i in range(c.n_layer):
        h = rmsnorm(x, W(i, "attn_norm"), c.eps)
        q, k, v = (h @ W(i, "attn_q").T), (h @ W(i, "attn_k").T), (h @ W(i, "attn_v").T)
        if c.qkv_bias:
            B = lambda name: model.w[f"blk.{i}.{name}.bias"].astype(dtype)  # noqa: E731
            q, k, v = q + B("attn_q"), k + B("attn_k"), v + B("attn_v")
        q = q.reshape(n, c.n_head, d)
        k = k.reshape(n, c.n_head_kv, d)
        v = v.reshape(n, c.n_head_kv, d)
        q = rope(q, pos, c.rope_base, c.rope_dim, rope_layout, model.rope_freqs)
        k = rope(k, pos, c.rope_base, c.rope_dim, rope_layout, model.rope_freqs)
        a = attention(q, k, v, c.n_head, c.n_head_kv)
        x = x + a @ W(i, "attn_output").T
        h = rmsnorm(x, W(i, "ffn_norm"), c.eps)
        x = x + (silu(h @ W(i, "ffn_gate").T) * (h @ W(i, "ffn_up").T)) @ W(i, "ffn_down").T
    x = rmsnorm(x, model.w["output_norm.weight"].astype(dtype), c.eps)
    return x @ model.out_w.astype(dtype, copy=False).T


# --------------------------------------------------------------------------------------
# Tokenizer (for building test prompts; the forward pass itself takes token ids)
# --------------------------------------------------------------------------------------

# Pre-tokenizer regexes of tokenizer.ggml.pre values other than gpt2's own (llama.cpp's).
PRE_REGEX = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def tokenizer_from_gguf(gguf_path: str):
    """A Hugging Face `tokenizers.Tokenizer` built from the GGUF's byte-level BPE metadata.

    Only tokenizer.ggml.model == "gpt2" is supported. Control tokens (token_type 3) are
    added as special tokens so they are matched whole before BPE. For pre "smollm" digits
    are split one by one first, as llama.cpp does (its extra "\\p{N}" split); "qwen2" and
    "llama-bpe" use their own split regex (PRE_REGEX) before the byte-level mapping.
    (transformers' own GGUF tokenizer loader needs torch, which is not installed here.)
    """
    from tokenizers import Tokenizer, AddedToken, decoders, models, pre_tokenizers

    reader = GGUFReader(gguf_path)
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {kind!r} not supported (only gpt2)")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                               fuse_unk=False, ignore_merges=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in PRE_REGEX:
        from tokenizers import Regex
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(PRE_REGEX[pre]), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok


_MODEL_CACHE: dict[str, Model] = {}


def load(gguf_path: str) -> Model:
    """Load (and keep in memory for this process) the dequantised model."""
    m = _MODEL_CACHE.get(gguf_path)
    if m is None:
        m = _MODEL_CACHE[gguf_path] = Model(gguf_path)
    return m


def logits(gguf_path: str, token_ids, dtype=np.float64, rope_layout: str | None = None
           ) -> np.ndarray:
    """Logits [n_tokens, vocab] (float64 by default) for one sequence at positions 0..n-1."""
    return forward(load(gguf_path), token_ids, dtype=dtype, rope_layout=rope_layout)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def parse_tokens(s: str) -> list[int]:
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="llama- or qwen2-architecture GGUF file")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", action="append",
                     help="comma-separated token ids (repeatable: the logits of every list "
                          "go to --out one after the other, the model loaded once)")
    src.add_argument("--text", help="tokenize this text with the GGUF's tokenizer instead")
    ap.add_argument("--print-tokens", action="store_true",
                    help="print the token ids (comma-separated) and stop")
    ap.add_argument("--out", help="write float32 little-endian [n_tokens][vocab] here")
    ap.add_argument("--dtype", choices=("f64", "f32"), default="f64",
                    help="arithmetic precision (default f64)")
    ap.add_argument("--rope-layout", choices=("adjacent", "half"), default=None,
                    help="force a RoPE pairing (default: the architecture's own: adjacent for "
                         "llama, half for qwen2); for experiments only")
    ap.add_argument("--top", type=int, default=0, help="print the top-K token ids per position")
    a = ap.parse_args(argv)

    if a.text is not None:
        lists = [tokenizer_from_gguf(a.model).encode(a.text).ids]
    else:
        lists = [parse_tokens(t) for t in a.tokens]
    if a.print_tokens:
        for toks in lists:
            print(",".join(str(t) for t in toks))
        return 0
    outs = [logits(a.model, toks, dtype=np.float64 if a.dtype == "f64" else np.float32,
                   rope_layout=a.rope_layout) for toks in lists]
    out = np.concatenate(outs, axis=0)
    if a.out:
        out.astype("<f4").tofile(a.out)
    if a.top:
        for p, row in enumerate(out):
            top = np.argsort(-row)[:a.top]
            print(p, " ".join(f"{t}:{row[t]:.4f}" for t in top))
    if not a.out and not a.top:
        print(f"logits shape {out.shape}; argmax per position: {out.argmax(-1).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
