#!/usr/bin/env python3
"""Write the small GGUF fixtures that tests/engine/test_gguf.c reads.

Run from the repository root (or anywhere: paths are relative to this file):

    python3 tests/reference/make_gguf_fixtures.py

Needs numpy and the `gguf` Python package (the reference for file layout and dequantisation).
Output, in tests/fixtures/gguf/ (deterministic: fixed seed, fixed order):

  all_types.gguf           metadata of every value type (scalars, strings, arrays of each
                           type, arrays of strings, nested arrays) and small tensors of every
                           type the engine dequantises (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
                           Q4_K, Q6_K, Q5_0, Q5_1, Q5_K, Q8_K), 1-D to 4-D, alignment 64.
  all_types.expected.bin   for each tensor in file order, its values as the `gguf` package
                           dequantises them: little-endian float32, n_elems of them, back
                           to back. gguf has no Q8_K dequantiser: that one comes from
                           dequantize_q8_k() below, a transcription of ggml's block layout.
  all_types.layout.txt     byte offsets of header fields, found by an independent walk of
                           the written file, so the C test can corrupt specific fields.
                           One "name value..." record per line (see write_layout()).
  minimal.gguf             two F32 tensors whose sizes are not multiples of the alignment,
                           no general.alignment key (default 32). Values: a[i] = 0.5 * i
                           (5 values), b[i] = i - 3 (7 values).
  f32_to_f16.bin           pairs (u32 float32 bits, u16 half bits, u16 0) giving numpy's
                           round-to-nearest-even float32 -> float16 conversion.
  model_*.gguf             tiny whole models (1 layer, d_model 16, 2 query heads / 1 KV head,
                           head dim 8, FFN 16, vocab 8, all F32) for tests/engine/test_model.c:
                           good llama / llama3 (rope_freqs) / qwen2 files and bad variants
                           (unknown architecture, a tensor the engine would not use, a
                           missing bias, rope_freqs on qwen2, YaRN or linear x2 RoPE
                           scaling; linear x1 is a no-op and loads). Weight value
                           k of tensor j (in file order) is (j + 1) + k / 1024 and a bias
                           value k is 0.25 * k, so the test can check where each one landed.
"""
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType as VT, GGUFWriter, quants

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "gguf"))
ALIGN = 64

rng = np.random.default_rng(20240611)
# The tensors added later (Q5_0, Q5_1, Q5_K, Q8_K) draw from their own generator, so that every
# value made before them stays as it was.
rng5 = np.random.default_rng(20261204)


def f16_bits(x):
    return np.array([x], dtype=np.float32).astype(np.float16).view(np.uint16)[0]


# --------------------------------------------------------------------------------------------
# tensors

def quantized(data, qtype):
    """gguf's own quantiser: returns (uint8 bytes with the same leading shape, qtype)."""
    return quants.quantize(data.astype(np.float32), qtype), qtype


def random_q4_k(n_rows, row_len):
    """gguf cannot quantise Q4_K: random blocks with valid fp16 d / dmin.
    Block (144 bytes) = f16 d | f16 dmin | 12 scale bytes | 128 nibble bytes."""
    nb = n_rows * row_len // 256
    blocks = rng.integers(0, 256, size=(nb, 144), dtype=np.uint8)
    d = rng.uniform(-0.05, 0.05, size=nb).astype(np.float16)
    dmin = rng.uniform(0.0, 0.05, size=nb).astype(np.float16)
    blocks[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(n_rows, row_len // 256 * 144), QT.Q4_K


def random_q6_k(n_rows, row_len):
    """gguf cannot quantise Q6_K: random blocks with a valid fp16 d.
    Block (210 bytes) = 128 ql | 64 qh | 16 int8 scales | f16 d."""
    nb = n_rows * row_len // 256
    blocks = rng.integers(0, 256, size=(nb, 210), dtype=np.uint8)
    d = rng.uniform(-0.01, 0.01, size=nb).astype(np.float16)
    blocks[:, 208:210] = d.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(n_rows, row_len // 256 * 210), QT.Q6_K


def random_q5_k(n_rows, row_len):
    """gguf cannot quantise Q5_K: random blocks with valid fp16 d / dmin.
    Block (176 bytes) = f16 d | f16 dmin | 12 scale bytes | 32 qh bytes | 128 nibble bytes."""
    nb = n_rows * row_len // 256
    blocks = rng5.integers(0, 256, size=(nb, 176), dtype=np.uint8)
    d = rng5.uniform(-0.05, 0.05, size=nb).astype(np.float16)
    dmin = rng5.uniform(0.0, 0.05, size=nb).astype(np.float16)
    blocks[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(n_rows, row_len // 256 * 176), QT.Q5_K


def random_q8_k(n_rows, row_len):
    """Q8_K (ggml's intermediate type for dot products; no quantiser in gguf): random blocks.
    Block (292 bytes) = f32 d | 256 int8 q | 16 int16 bsums (sums of groups of 16 q)."""
    nb = n_rows * row_len // 256
    d = rng5.uniform(-0.01, 0.01, size=nb).astype("<f4")
    q = rng5.integers(-128, 128, size=(nb, 256)).astype(np.int8)
    bsums = q.astype(np.int16).reshape(nb, 16, 16).sum(axis=-1).astype("<i2")
    blocks = np.concatenate([d.view(np.uint8).reshape(nb, 4), q.view(np.uint8),
                             bsums.view(np.uint8).reshape(nb, 32)], axis=-1)
    return blocks.reshape(n_rows, row_len // 256 * 292), QT.Q8_K


def dequantize_q8_k(raw):
    """x = d * q per 256-element block (ggml's dequantize_row_q8_K), in float32."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, 292)
    d = blocks[:, 0:4].copy().view("<f4").astype(np.float32)        # (nb, 1)
    q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)    # (nb, 256)
    return (d * q).reshape(-1)


def dequantize(data, qtype):
    if qtype == QT.Q8_K:
        return dequantize_q8_k(data)
    return quants.dequantize(data, qtype).astype(np.float32).reshape(-1)


def make_tensors():
    t = []
    # F32, 2-D: numpy shape (rows, row_len) -> GGUF ne = {row_len, rows}
    t.append(("t.f32", rng.standard_normal((3, 64)).astype(np.float32), None))
    # F16 with special values: +-0, +-inf, NaN, largest, subnormals
    f16 = rng.standard_normal((2, 32)).astype(np.float16)
    f16[0, :8] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 5.96e-8, -6.1e-5],
                          dtype=np.float16)
    t.append(("t.f16", f16, None))
    # BF16 through gguf's own converter (round to nearest even), plus specials
    bf = rng.standard_normal((2, 32)).astype(np.float32) * 100
    bf[0, :6] = [0.0, -0.0, np.inf, -np.inf, 1e-40, 3.0e38]
    t.append(("t.bf16",) + quantized(bf, QT.BF16))
    # 32-element block types: normal data, plus an all-zero block (d = 0) and a constant one
    for name, qt in (("t.q8_0", QT.Q8_0), ("t.q4_0", QT.Q4_0), ("t.q4_1", QT.Q4_1)):
        x = rng.standard_normal((4, 64)).astype(np.float32) * 0.2
        x[1, :32] = 0.0
        x[2, 32:] = 0.75
        t.append((name,) + quantized(x, qt))
    t.append(("t.q4_k",) + random_q4_k(2, 512))
    t.append(("t.q6_k",) + random_q6_k(2, 512))
    # 1-D, 3-D and 4-D shapes
    t.append(("t.f32_1d", rng.standard_normal(32).astype(np.float32), None))
    t.append(("t.q8_3d",) + quantized(rng.standard_normal((2, 3, 32)).astype(np.float32), QT.Q8_0))
    t.append(("t.f32_4d", rng.standard_normal((2, 3, 2, 32)).astype(np.float32), None))
    # 5-bit types through gguf's own quantiser (with a zero block and a constant one) and the
    # K-quants gguf cannot quantise as random blocks
    for name, qt in (("t.q5_0", QT.Q5_0), ("t.q5_1", QT.Q5_1)):
        x = rng5.standard_normal((4, 64)).astype(np.float32) * 0.2
        x[1, :32] = 0.0
        x[2, 32:] = -0.75
        t.append((name,) + quantized(x, qt))
    t.append(("t.q8_k",) + random_q8_k(2, 512))
    # last: its 704 bytes are a multiple of the alignment, so the file ends where its data does
    t.append(("t.q5_k",) + random_q5_k(2, 512))
    return t


# --------------------------------------------------------------------------------------------
# metadata: every value type; the C test hard-codes these values

def add_metadata(w):
    w.add_custom_alignment(ALIGN)               # general.alignment = 64 (uint32)
    w.add_name("kvsieve gguf fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_uint64("test.u64_small", 12345)
    w.add_int64("test.i64", -(2**62) - 7)
    w.add_float32("test.f32", 0.15625)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_float64("test.f64_big", 1e300)
    w.add_bool("test.bool_t", True)
    w.add_bool("test.bool_f", False)
    w.add_string("test.str", "h\u00e9llo w\u00f6rld \u2713")
    w.add_key_value("test.str_empty", "", VT.STRING)  # add_string() skips empty strings
    w.add_key_value("test.arr_u8", [0, 1, 255], VT.ARRAY, VT.UINT8)
    w.add_key_value("test.arr_i8", [-128, 0, 127], VT.ARRAY, VT.INT8)
    w.add_key_value("test.arr_u16", [0, 65535], VT.ARRAY, VT.UINT16)
    w.add_key_value("test.arr_i16", [-32768, 32767], VT.ARRAY, VT.INT16)
    w.add_key_value("test.arr_u32", [1, 2, 4000000000], VT.ARRAY, VT.UINT32)
    w.add_key_value("test.arr_i32", [-1, 0, 1, 2147483647], VT.ARRAY, VT.INT32)
    w.add_key_value("test.arr_u64", [2**64 - 1, 0], VT.ARRAY, VT.UINT64)
    w.add_key_value("test.arr_i64", [-(2**63), 2**63 - 1], VT.ARRAY, VT.INT64)
    w.add_key_value("test.arr_f32", [1.5, -2.25, 1e-3], VT.ARRAY, VT.FLOAT32)
    w.add_key_value("test.arr_f64", [1e-300, -0.1], VT.ARRAY, VT.FLOAT64)
    w.add_key_value("test.arr_bool", [True, False, True], VT.ARRAY, VT.BOOL)
    w.add_key_value("test.arr_str", ["a", "", "h\u00e9llo", "two words"], VT.ARRAY, VT.STRING)
    w.add_key_value("test.tokens", ["tok%d" % i for i in range(1000)], VT.ARRAY, VT.STRING)
    w.add_array("test.arr_nested_i32", [[1, 2, 3], [4, 5]])      # array of arrays of int32
    w.add_array("test.arr_nested_str", [["a", "b"], ["c"]])      # array of arrays of strings


def write_gguf(path, arch, add_meta, tensors):
    w = GGUFWriter(path, arch)
    add_meta(w)
    for name, data, qt in tensors:
        if qt is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------
# an independent walk of the written file, recording field offsets

SCALAR_SIZE = {VT.UINT8: 1, VT.INT8: 1, VT.BOOL: 1, VT.UINT16: 2, VT.INT16: 2, VT.UINT32: 4,
               VT.INT32: 4, VT.FLOAT32: 4, VT.UINT64: 8, VT.INT64: 8, VT.FLOAT64: 8}


def walk(buf):
    u32 = lambda o: struct.unpack_from("<I", buf, o)[0]
    u64 = lambda o: struct.unpack_from("<Q", buf, o)[0]
    assert buf[:4] == b"GGUF"
    n_tensors, n_kv = u64(8), u64(16)
    pos = 24

    def skip(vt, pos):
        if vt in SCALAR_SIZE:
            return pos + SCALAR_SIZE[vt]
        if vt == VT.STRING:
            return pos + 8 + u64(pos)
        assert vt == VT.ARRAY
        et, n = u32(pos), u64(pos + 4)
        pos += 12
        for _ in range(n):
            pos = skip(et, pos)
        return pos

    kvs = []
    for _ in range(n_kv):
        klen = u64(pos)
        key = buf[pos + 8: pos + 8 + klen].decode()
        rec = {"key": key, "key_len_off": pos, "vtype_off": pos + 8 + klen,
               "value_off": pos + 12 + klen}
        rec["vtype"] = u32(rec["vtype_off"])
        pos = skip(rec["vtype"], rec["value_off"])
        kvs.append(rec)
    tensors = []
    for _ in range(n_tensors):
        nlen = u64(pos)
        rec = {"name": buf[pos + 8: pos + 8 + nlen].decode(), "name_len_off": pos}
        pos += 8 + nlen
        rec["n_dims_off"] = pos
        n_dims = u32(pos)
        pos += 4
        rec["ne_off"] = pos
        ne = [u64(pos + 8 * d) for d in range(n_dims)]
        pos += 8 * n_dims
        rec["type_off"] = pos
        rec["type"] = u32(pos)
        rec["offset_off"] = pos + 4
        rec["offset"] = u64(pos + 4)
        pos += 12
        rec["n_dims"], rec["ne"] = n_dims, ne + [1] * (4 - n_dims)
        tensors.append(rec)
    return n_tensors, n_kv, kvs, tensors, pos


def write_layout(gguf_path, layout_path, expected_path):
    buf = open(gguf_path, "rb").read()
    n_tensors, n_kv, kvs, tinfo, info_end = walk(buf)
    data_start = (info_end + ALIGN - 1) // ALIGN * ALIGN
    by_key = {k["key"]: k for k in kvs}

    reader = GGUFReader(gguf_path)
    assert [t.name for t in reader.tensors] == [t["name"] for t in tinfo]
    expected = bytearray()
    data_end = 0
    lines = []
    for i, (rt, ti) in enumerate(zip(reader.tensors, tinfo)):
        assert rt.data_offset == data_start + ti["offset"]
        vals = dequantize(rt.data, rt.tensor_type)
        assert vals.size == int(np.prod(ti["ne"]))
        expected += vals.astype("<f4").tobytes()
        data_end = max(data_end, rt.data_offset + rt.n_bytes)
        # tensor <index> <name> <type> <n_dims> <ne0..ne3> <name_len_off> <n_dims_off>
        #        <ne_off> <type_off> <offset_off> <data offset from data_start> <nbytes>
        lines.append("tensor %d %s %d %d %s %d %d %d %d %d %d %d" % (
            i, ti["name"], ti["type"], ti["n_dims"], " ".join(str(x) for x in ti["ne"]),
            ti["name_len_off"], ti["n_dims_off"], ti["ne_off"], ti["type_off"],
            ti["offset_off"], ti["offset"], rt.n_bytes))

    # two keys of equal length, for the duplicate-key corruption
    assert len("test.u8") == len("test.i8")
    head = [
        "file_size %d" % len(buf),
        "n_tensors %d" % n_tensors,
        "n_kv %d" % n_kv,
        "version_off 4",
        "n_tensors_off 8",
        "n_kv_off 16",
        "first_key_len_off %d" % kvs[0]["key_len_off"],
        "alignment_value_off %d" % by_key["general.alignment"]["value_off"],
        "str_len_off %d" % by_key["test.str"]["value_off"],
        "u32_vtype_off %d" % by_key["test.u32"]["vtype_off"],
        "bool_value_off %d" % by_key["test.bool_t"]["value_off"],
        "bool_arr_first_off %d" % (by_key["test.arr_bool"]["value_off"] + 12),
        "tokens_count_off %d" % (by_key["test.tokens"]["value_off"] + 4),
        "tokens_last_len_off %d" % last_string_off(buf, by_key["test.tokens"]["value_off"]),
        "nested_elem_type_off %d" % by_key["test.arr_nested_i32"]["value_off"],
        "nested_inner_count_off %d" % (by_key["test.arr_nested_i32"]["value_off"] + 12 + 4),
        "dup_key_src_off %d" % (by_key["test.u8"]["key_len_off"] + 8),
        "dup_key_dst_off %d" % (by_key["test.i8"]["key_len_off"] + 8),
        "dup_key_len %d" % len("test.u8"),
        "tensor_info_end %d" % info_end,
        "data_start %d" % data_start,
        "data_end %d" % data_end,
    ]
    with open(layout_path, "w") as f:
        f.write("# written by tests/reference/make_gguf_fixtures.py; offsets in bytes\n")
        f.write("\n".join(head + lines) + "\n")
    with open(expected_path, "wb") as f:
        f.write(expected)


def last_string_off(buf, arr_off):
    """Offset of the length prefix of the last string of a string array at arr_off."""
    n = struct.unpack_from("<Q", buf, arr_off + 4)[0]
    pos, last = arr_off + 12, None
    for _ in range(n):
        last = pos
        pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
    return last


# --------------------------------------------------------------------------------------------

def write_f16_pairs(path):
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 65504.0, 65519.0,
                         65519.996, 65520.0, 65536.0, 1e10, -1e10, 2.0**-14, 2.0**-24,
                         2.0**-25, 2.0**-25 * 1.0001, 2.0**-26, 3 * 2.0**-25, 5 * 2.0**-26,
                         2.0**-14 - 2.0**-25, 2.0**-14 - 2.0**-26, 1e-8, 1e-45, 1.0 + 2.0**-11,
                         1.0 + 3 * 2.0**-11, 1.0 + 2.0**-11 + 2.0**-20, 0.1, 1.0 / 3],
                        dtype=np.float32)
    normals = (rng.standard_normal(1500) * np.exp2(rng.uniform(-26, 17, 1500))).astype(np.float32)
    bits = rng.integers(0, 2**32, size=1500, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # values exactly halfway between neighbouring halves (ties) in the normal and subnormal range
    h = rng.integers(0, 0x7bff, size=500, dtype=np.uint16)
    lo = h.view(np.float16).astype(np.float32)
    hi = (h + 1).view(np.float16).astype(np.float32)
    ties = ((lo.astype(np.float64) + hi) / 2).astype(np.float32)
    vals = np.concatenate([specials, normals, bits, ties, -ties])
    with np.errstate(over="ignore", invalid="ignore"):
        halves = vals.astype(np.float16).view(np.uint16)
    rec = np.zeros(vals.size, dtype=[("f", "<u4"), ("h", "<u2"), ("pad", "<u2")])
    rec["f"] = vals.view(np.uint32)
    rec["h"] = halves
    rec.tofile(path)


# --------------------------------------------------------------------------------------------
# tiny whole models for the loader tests (test_model.c hard-codes these shapes and values)

M_D, M_HEADS, M_KV, M_FF, M_VOCAB = 16, 2, 1, 16, 8
M_HD = M_D // M_HEADS


def model_tensors(arch, bias=True, rope_freqs=False, output=None, extra=()):
    """(name, numpy array) in file order; numpy shape (rows, row_len) = GGUF ne reversed."""
    kv = M_KV * M_HD
    t = [("token_embd.weight", (M_VOCAB, M_D)), ("output_norm.weight", (M_D,))]
    if output if output is not None else arch == "qwen2":
        t.append(("output.weight", (M_VOCAB, M_D)))
    if rope_freqs:
        t.append(("rope_freqs.weight", (M_HD // 2,)))
    t += [("blk.0.attn_norm.weight", (M_D,)), ("blk.0.attn_q.weight", (M_D, M_D)),
          ("blk.0.attn_k.weight", (kv, M_D)), ("blk.0.attn_v.weight", (kv, M_D)),
          ("blk.0.attn_output.weight", (M_D, M_D)), ("blk.0.ffn_norm.weight", (M_D,)),
          ("blk.0.ffn_gate.weight", (M_FF, M_D)), ("blk.0.ffn_up.weight", (M_FF, M_D)),
          ("blk.0.ffn_down.weight", (M_D, M_FF))]
    if bias is True:
        bias = ("attn_q", "attn_k", "attn_v")
    for b in bias or ():
        t.append((f"blk.0.{b}.bias", (M_D if b == "attn_q" else kv,)))
    t += list(extra)
    out = []
    for j, (name, shape) in enumerate(t):
        n = int(np.prod(shape))
        if name.endswith(".bias"):
            v = 0.25 * np.arange(n)
        elif name == "rope_freqs.weight":
            v = 1.0 + np.arange(n)           # 1, 2, 3, 4
        else:
            v = (j + 1) + np.arange(n) / 1024.0
        out.append((name, v.astype(np.float32).reshape(shape), None))
    return out


def model_meta(arch, extra=None):
    def add(w):
        w.add_name(f"kvsieve {arch} loader fixture")
        w.add_uint32(f"{arch}.block_count", 1)
        w.add_uint32(f"{arch}.context_length", 64)
        w.add_uint32(f"{arch}.embedding_length", M_D)
        w.add_uint32(f"{arch}.feed_forward_length", M_FF)
        w.add_uint32(f"{arch}.attention.head_count", M_HEADS)
        w.add_uint32(f"{arch}.attention.head_count_kv", M_KV)
        w.add_float32(f"{arch}.rope.freq_base", 1000000.0 if arch == "qwen2" else 10000.0)
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
        if extra:
            extra(w)
    return add


def write_models(p):
    yarn = lambda w: (w.add_string("qwen2.rope.scaling.type", "yarn"),  # noqa: E731
                      w.add_float32("qwen2.rope.scaling.factor", 4.0))
    linear2 = lambda w: (w.add_string("llama.rope.scaling.type", "linear"),  # noqa: E731
                         w.add_float32("llama.rope.scaling.factor", 2.0))
    linear1 = lambda w: (w.add_string("llama.rope.scaling.type", "linear"),  # noqa: E731
                         w.add_float32("llama.rope.scaling.factor", 1.0))
    models = [
        ("model_llama.gguf", "llama", model_meta("llama"), model_tensors("llama", bias=False)),
        ("model_llama3.gguf", "llama", model_meta("llama"),
         model_tensors("llama", bias=False, rope_freqs=True)),
        ("model_qwen2.gguf", "qwen2", model_meta("qwen2"), model_tensors("qwen2")),
        ("model_gemma3.gguf", "gemma3", model_meta("gemma3"), model_tensors("llama", bias=False)),
        ("model_llama_bias.gguf", "llama", model_meta("llama"),
         model_tensors("llama", bias=("attn_q",))),
        ("model_llama_stray.gguf", "llama", model_meta("llama"),
         model_tensors("llama", bias=False, extra=[("blk.0.attn_rot_embd", (4,)),
                                                   ("mystery.weight", (4,))])),
        ("model_qwen2_no_k_bias.gguf", "qwen2", model_meta("qwen2"),
         model_tensors("qwen2", bias=("attn_q", "attn_v"))),
        ("model_qwen2_rope_freqs.gguf", "qwen2", model_meta("qwen2"),
         model_tensors("qwen2", rope_freqs=True)),
        ("model_qwen2_yarn.gguf", "qwen2", model_meta("qwen2", yarn), model_tensors("qwen2")),
        ("model_llama_linear2.gguf", "llama", model_meta("llama", linear2),
         model_tensors("llama", bias=False)),
        ("model_llama_linear1.gguf", "llama", model_meta("llama", linear1),
         model_tensors("llama", bias=False)),
    ]
    for name, arch, meta, tensors in models:
        write_gguf(p(name), arch, meta, tensors)


def main():
    os.makedirs(OUT, exist_ok=True)
    p = lambda n: os.path.join(OUT, n)

    write_gguf(p("all_types.gguf"), "llama", add_metadata, make_tensors())
    write_layout(p("all_types.gguf"), p("all_types.layout.txt"), p("all_types.expected.bin"))

    minimal = [("a", (np.arange(5) * 0.5).astype(np.float32), None),
               ("b", (np.arange(7) - 3).astype(np.float32), None)]
    write_gguf(p("minimal.gguf"), "llama", lambda w: None, minimal)

    write_f16_pairs(p("f32_to_f16.bin"))
    write_models(p)

    total = sum(os.path.getsize(p(n)) for n in os.listdir(OUT))
    print("wrote %s (%d bytes in all)" % (OUT, total))
    assert total < 300 * 1024, "fixtures must stay under 300 KB"


if __name__ == "__main__":
    sys.exit(main())
