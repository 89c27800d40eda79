#!/usr/bin/env python3
"""make_tokenizer_fixture.py — reference token ids for the tokenizer (engine/tokenizer.c and
the tok_*.c files), and its Unicode table.

    python3 tests/reference/make_tokenizer_fixture.py [--model PATH] [--out PATH]
        writes tests/fixtures/tokenizer_cases.txt (or PATH) from Hugging Face's tokenizer built
        from the same GGUF (transformers + tokenizers + jinja2). The fixtures in the tree:
          tokenizer_cases.txt            models/smollm2-135m-instruct-q4_1.gguf (default)
          tokenizer_qwen2_cases.txt      tests/fixtures/gguf/tok_qwen2.gguf
          tokenizer_llama_bpe_cases.txt  tests/fixtures/gguf/tok_llama_bpe.gguf
          tokenizer_spm_cases.txt        tests/fixtures/gguf/tok_spm.gguf
          tokenizer_qwen2.5_cases.txt    models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
        (the tok_*.gguf come from make_tokenizer_vocabs.py).
    python3 tests/reference/make_tokenizer_fixture.py --unicode-table
        regenerates the \\p{L} / \\p{N} range table inside engine/tok_unicode.c from the Unicode 16.0
        database (pip install unicodedata2==16.0.0) and checks every code point against the
        reference regex.

The reference. transformers builds the tokenizer of a GGUF from its metadata: vocabulary,
merges, control tokens as special tokens. Two things needed handling:

  * Its GGUF reader imports torch (only for tensor dtypes), which is not installed here; the
    tokenizer path does not use it, so a stand-in module is registered while it loads, and
    PreTrainedTokenizerFast(gguf_file=...) is used, the class AutoTokenizer ends in for GGUF
    files (AutoTokenizer itself wants torch to rebuild the model config).
  * llama-bpe: Llama 3's own tokenizer.json sets the BPE model's ignore_merges (a piece that is
    a token is taken whole; llama.cpp does the same); the GGUF loader leaves it off, so the
    fixture sets it. qwen2 and llama-bpe otherwise load as they are (Split regex + ByteLevel);
    SentencePiece files as LlamaTokenizer (Metaspace prepend_scheme "first", merges derived
    from the scores, byte fallback).
  * It maps tokenizer.ggml.pre to a pre-tokenizer only for the names in its table, and "smollm"
    is not there: it falls back to GPT-2's ByteLevel regex. SmolLM2's own tokenizer.json (and
    llama.cpp, for pre = "smollm") first isolate every digit (Digits(individual_digits=True)),
    then apply the ByteLevel regex. The two differ where whitespace precedes a digit ("a   1":
    "a", "  ", " ", "1" vs "a", "   ", "1"). The model was trained with the digit split, so the
    fixture uses it: the loaded tokenizer gets the pre-tokenizer its file names. Cases prefixed
    "gpt2:" record the unpatched loader's ids, which the C test checks with tok_set_pre("gpt2").

Fixture lines (hex is the UTF-8 of the text, lowercase):
    <hex>\\t<ids>                encode, special tokens parsed (add_special_tokens=False)
    plain:<hex>\\t<ids>          encode with special tokens not parsed (split_special_tokens)
    gpt2:<hex>\\t<ids>           encode with the plain GPT-2 pre-tokenizer
    chat:<hex sys|->\\t<hex user>\\t<ids>  apply_chat_template(tokenize, add_generation_prompt)
    decode:<ids>\\t<hex>         decode(skip_special_tokens=False)
"""
import argparse
import hashlib
import importlib.util
import os
import random
import re
import sys
import types
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct-q4_1.gguf")
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer_cases.txt")
TOKENIZER_C = os.path.join(ROOT, "engine", "tok_unicode.c")

# Unicode White_Space (PropList.txt; unchanged since 6.3): what \s matches in the regex.
WHITE_SPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + \
    list(range(0x2000, 0x200B)) + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]


# ---- the reference tokenizer ------------------------------------------------------------------

def load_reference(model_path):
    import transformers  # noqa: F401  (import before the stand-in: it probes for torch)
    from transformers import PreTrainedTokenizerFast

    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        class _NoTorch(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (), {})
        sys.modules["torch"] = _NoTorch("torch")
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.dirname(model_path),
                                                  gguf_file=os.path.basename(model_path))
    return tok


def gguf_pre_name(model_path):
    from gguf import GGUFReader
    f = GGUFReader(model_path).fields.get("tokenizer.ggml.pre")
    return f.contents() if f is not None else None


def set_pre_tokenizer(tok, name):
    from tokenizers import pre_tokenizers as pt
    byte_level = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if name == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pt.Sequence(
            [pt.Digits(individual_digits=True), byte_level])
    elif name == "gpt2":
        tok.backend_tokenizer.pre_tokenizer = byte_level
    else:
        raise SystemExit(f"unknown pre-tokenizer {name!r}")


# ---- cases ------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
            "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
            "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
            "<jupyter_output>", "<jupyter_script>", "<empty_output>"]

C_SNIPPET = """#include <stdio.h>

int main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        printf("%d: %s\\n", i, argv[i]);  /* print each */
    }
    return argc > 1 ? 0 : -1;
}
"""

PY_SNIPPET = """def fib(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Foo(object):
\tdef __init__(self):
\t\tself.x = {'key': [1, 2, 3], "other": None}  # tabs


if __name__ == "__main__":
    print(fib(30))
"""

PROSE = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in "
    "my purse, and nothing particular to interest me on shore, I thought I would sail about a "
    "little and see the watery part of the world.",
    "SmolLM2 is a family of compact language models available in three sizes: 135M, 360M, and "
    "1.7B parameters.",
    "What is the capital of France?",
    "Answer: Paris. (Population ~2.1 million; metro area ~12 million.)",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "camelCaseIdentifier and snake_case_identifier and kebab-case-identifier",
    "Mr. Smith went to Washington D.C. on Jan. 5th, 2021 at 3:45 p.m.",
    "e.g. i.e. etc. vs. a.k.a.",
    "A\tB\tC",
    "first line\nsecond line\nthird line",
    "Windows\r\nline\r\nendings\r\n",
    "Dear Sir/Madam,\n\nI am writing to inquire about the position.\n\nBest regards,\nJohn",
    "hello",
    " hello",
    "  hello",
    "hello ",
    "hello  ",
    "Hello World HELLO world hElLo WoRlD",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "x",
    " ",
    "  ",
    "\n",
    "\t",
]

CONTRACTIONS = [
    "I'm here", "you're right", "we've won", "he'll go", "she'd say", "it's fine", "don't",
    "can't", "won't", "isn't", "I'M HERE", "IT'S", "YOU'RE", "We'Ve", "He'LL", "She'D",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'x", "'", "''", "'''s", "rock 'n' roll",
    "o'clock", "'twas the night", "the '90s", "can't've", "y'all'd've", "John's book",
    "JOHN'S BOOK", "James' car", "it’s (curly apostrophe)", "don ' t", "' s", "1's and 0's",
    "'ll'll'll", "the dog's bone's marrow",
]

UNICODE = [
    "中文测试：你好，世界！",
    "我爱自然语言处理。今天天气很好。",
    "日本語のテキストです。ひらがなとカタカナと漢字。",
    "東京タワーは1958年に完成しました。",
    "한국어 텍스트입니다. 안녕하세요!",
    "العربية: مرحبا بالعالم",
    "اَلْعَرَبِيَّةُ مع التشكيل",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "संस्कृतम् भाषा",
    "বাংলা ভাষা",
    "தமிழ் மொழி",
    "ภาษาไทย: สวัสดีชาวโลก",
    "Русский текст: Привет, мир!",
    "Українська мова: Ґанок, їжак, є.",
    "Ελληνικά: Γειά σου Κόσμε",
    "Հայերեն լեզու",
    "ქართული ენა",
    "Tiếng Việt: Xin chào thế giới",
    "Türkçe: İstanbul, ıslık, ĞÜŞÖÇ",
    "Deutsch: Straße, Größe, Übermäßig",
    "Français : élève, garçon, où, être, Noël",
    "Español: ¿Qué tal? ¡Muy bien! Mañana.",
    "Polski: zażółć gęślą jaźń",
    "Čeština: příliš žluťoučký kůň",
    "Íslenska: þetta er ðað",
    "Ge'ez: ሰላም ዓለም",
    "ᚠᚢᚦᚨᚱᚲ runes",
    "Mongolian: ᠮᠣᠩᠭᠣᠯ",
    "Tibetan: བོད་ཡིག",
    "Burmese: မြန်မာဘာသာ",
    "Khmer: ភាសាខ្មែរ",
    "Lao: ພາສາລາວ",
    "Sinhala: සිංහල",
    "Math: ∀x∈ℝ, ∃y: x² + y² ≥ 0 ⇒ √(x²) = |x|",
    "Currency: $100, €50, £30, ¥1000, ₹500, ₿0.01",
    "Symbols: © ® ™ § ¶ † ‡ • … ‰ ′ ″",
    "Arrows: ← → ↑ ↓ ↔ ⇐ ⇒",
    "Box: ┌─┐│└─┘",
    "Fullwidth: ＡＢＣ１２３！",
    "Mixed: English中文日本語한국어العربية",
    "Ligatures: ﬁ ﬂ ﬀ",
    "Zero width: a\u200bb\u200cc\u200dd\ufeffe",
    "Soft hyphen: co\u00adoperate",
    "NBSP:\u00a0here\u00a0and\u00a0there",
    "Ideographic space:\u3000here",
    "Em space:\u2003and thin space:\u2009end",
    "Line sep:\u2028para sep:\u2029end",
    "NEL:\u0085end",
    "Vertical tab\x0band form feed\x0cend",
    "Control chars: \x00\x01\x02\x1b[0m\x7f",
    "Private use: \ue000\uf8ff",
    "Supplementary: 𝕳𝖊𝖑𝖑𝖔 𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐",
    "Old Italic: 𐌀𐌁𐌂",
    "Cuneiform: 𒀀𒀁",
    "Rare CJK ext B: 𠀀𠀁𠀂",
]

EMOJI = [
    "😀", "Hello 😀 world", "😀😃😄😁😆", "👍", "👍🏽", "👍🏿 thumbs",
    "👨\u200d👩\u200d👧\u200d👦 family", "👩\u200d💻 coder", "🏳️\u200d🌈", "🏴\u200d☠️",
    "🇫🇷🇯🇵🇺🇸🇩🇪", "flag: 🇬🇧.", "1️⃣2️⃣3️⃣", "#️⃣ *️⃣", "❤️ ❤", "☺️☺", "🧑🏻\u200d🤝\u200d🧑🏿",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland", "emoji at end 🎉", "🎉 emoji at start", "x🎉y", "🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉",
    "😀 😀  😀   😀", "👋🏻👋🏼👋🏽👋🏾👋🏿", "🤷\u200d♀️", "Ⓜ️", "🀄🃏",
]

COMBINING = [
    "e\u0301", "cafe\u0301", "a\u0300\u0301\u0302\u0303\u0304", "n\u0303o",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a"
    "\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367"
    "\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354"
    "\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333",
    "\u0301 leading combining", " \u0301", "x \u0301y", "ḱ̷̬", "Å vs A\u030a",
    "क़ vs क\u093c", "한 vs \u1112\u1161\u11ab",
]

WHITESPACE = [
    "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a \tb", "a\t b", "a\nb", "a\n\nb",
    "a\n\n\nb", "a \nb", "a\n b", "a \n b", "a\r\nb", "a\r\n\r\nb", "a\rb", "   leading",
    "trailing   ", "   both   ", "\t\tindented", "\n\nnewlines first", "ends with newline\n",
    "ends with newlines\n\n\n", "  \n  \n  ", " \t \t ", "\t", "\t\t\t", "\n", "\r\n",
    "   ", " " * 10, " " * 100, "\n" * 20, "x" + " " * 50 + "y", "a \u00a0 b",
    "word \u3000 word", "x   1", "x   12", "   1", "\t1", "\n1", " 1", "  1", "a 1 b 2  c 3   d",
    "  !", "   !!", " !", "\t!", "a  .", "a\t\t.", "x  'll", "x  's", "end  \n", "a\u2003\u2003b",
]

DIGITS = [
    "0", "7", "42", "123", "1234", "12345", "123456789", "3.14159", "-2.5e-10", "1,000,000",
    "1 000 000", "2024-01-15", "12:34:56", "0x1F2E", "0b1010", "1st 2nd 3rd 4th", "100%",
    "$3.50", "v1.2.3", "192.168.0.1", "+1 (555) 123-4567", "١٢٣٤", "१२३४", "০১২৩",
    "²³¹", "½ ¼ ¾", "Ⅻ ⅻ", "①②③", "〇一二三", "𝟙𝟚𝟛", "٣.١٤",
    "1" * 300, "9" * 1000, "3.14159265358979323846264338327950288419716939937510",
    "abc123def456", "x1y2z3", "H2O CO2", "a1 b22 c333", "1a2b3c", "12 34  56   78",
]

CODE = [
    C_SNIPPET, PY_SNIPPET,
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "if x == 1:\n    return True\nelse:\n    return False\n",
    "    def method(self):\n        pass\n",
    '{"name": "SmolLM2", "params": 135000000, "tags": ["llm", "small"], "ok": true}',
    "<html><head><title>Test</title></head><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "$ ls -la /tmp | grep -v '^d' && echo \"done\" > /dev/null 2>&1",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "std::vector<std::string> v{\"a\", \"b\"}; auto it = v.begin();",
    "fn main() { let mut x: Vec<u8> = Vec::new(); x.push(1u8); println!(\"{:?}\", x); }",
    "const f = async (a, b) => { await g(a ?? b?.c); return `${a}+${b}`; };",
    "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
    "# Title\n\n## Subtitle\n\n- item 1\n- item 2\n\n```python\nprint('hi')\n```\n",
    "| col1 | col2 |\n|------|------|\n| a    | b    |",
    "\\begin{equation} E = mc^2 \\end{equation}",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=6;g>>=7;h&=8;i|=9;j^=10;",
    "/* comment */ // line comment\n#define MAX(a,b) ((a)>(b)?(a):(b))",
    "\t\tif (x) {\n\t\t\ty();\n\t\t}\n",
]

PUNCT = [
    "!!!", "...", "?!?!", "---", "***", "=====", "<<>>", "((()))", "[[]]", "{{}}",
    "\"quoted\"", "'single'", "«guillemets»", "„German“", "—em—dash—", "–en–dash–",
    "a...b", "wait... what?!", "Hello!!! How are you???", "@#$%^&*", "~`|\\", "-_-", "^_^",
    ":-) :-( ;-) :D", "..........", "!" * 200, "-" * 128, "=" * 80, "#" * 64, "*" * 33,
    "_" * 50, "~" * 40, ". . . .", "?! ?! ?!", "a,b,c", "a, b, c", "(a)(b)(c)",
]

URLS = [
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    "http://example.com/path/to/page.html?query=1&other=two#fragment",
    "Visit https://www.example.org/a_b-c~d/%20e for more.",
    "ftp://user:pass@host:21/file.txt",
    "mailto:someone@example.com",
    "Email me at john.doe+tag@sub.example.co.uk!",
    "/usr/local/bin/python3.11",
    "C:\\Users\\Name\\Documents\\file.txt",
    "www.example.com/index.php?id=42",
    "git@github.com:user/repo.git",
]

SPECIAL_TEXT = SPECIALS + [
    "<|im_start|>user\nHello<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "a<|endoftext|>b<|endoftext|>c",
    "<|im_start|><|im_end|>",
    "<|im_start|><|im_start|><|im_start|>",
    "<|im_start", "<|im_start|", "im_start|>", "<<|im_start|>>", " <|im_end|> ",
    "<|IM_START|>", "< |im_start| >", "<|im_start |>",
    "<repo_name>kvsieve<file_sep>engine/tokenizer.c<filename>x",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "hello <|endoftext|> world",
    "   <|im_end|>   ",
    "\n<|im_end|>\n",
    "1<|im_end|>2",
    "😀<|im_end|>😀",
    "<|endoftext|><|endoftext|>",
    "<issue_start>bug<issue_comment>fix<issue_closed>",
    "<gh_stars>100<reponame>x",
    "<jupyter_text>md<jupyter_script>s",
]


# Cases for the qwen2 / llama-bpe regexes and SentencePiece (added with them; every fixture has
# them): contractions in any case, digit runs of every length against 1-by-1 and 1-3 splits,
# newlines as their own pieces after spaces and punctuation, a word's one leading non-letter.
EXTRA = [
    "I'M", "YOU'RE", "WE'VE", "HE'LL", "SHE'D", "IT'S", "DON'T", "'S'T'RE'VE'M'LL'D",
    "We'Re We'rE", "'ſ long s", "The Dog'S", "'LL be", "x'M", "I'd've", "it'S 'Tis",
    "1", "22", "333", "4444", "55555", "666666", "7777777", "12345678901234567890", "a1234b",
    " 1234", "  12345", "x 123 456 7890", "1.2345", "12,345,678", "٣٤٥٦٧", "१२३४५", "99 bottles",
    "a\n", "a\n\n", "a \n", "a  \n\n  b", "}\n", "}\n\n", "};\r\n", ")\n    return",
    "x\n\n\n   y", "\n \n \n", " \n", "\r", "\r\r\n\n", "a\r\nb\r\n\r\nc", ".\n.\n",
    "\tword", "\t\tword", "\u00a0word", "\u3000word", ".com", "(abc)", "\"quote\"", "'word",
    "#include", "@user", "$var", "-flag", "--long-flag", "__init__", "a_b", "...abc", "!!x",
    " ?!x", " !x", "x  ?!", "a . b", "a\t.b", "\u2028x", "\x0bx", "\x0cx", "\x85x",
    "zebra", " zebra", "zebras", "Zebra zebra  zebra", "a zebra",
    "▁ already a meta space", "▁▁", "a▁b", "<0x41>", "<unk>", "<s>", "</s>", "<think>x</think>",
    "x<think>y", " <think> ", "[INST] hi [/INST]",
    "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<tool_call>{}</tool_call>", "a<|im_end|>b", "<|im_start|> x", "<|im_start|>  x",
    "text<|endoftext|> more", "<|endoftext|>\n<|endoftext|>",
]


def byte_spelling_table():
    """GPT-2's byte-to-unicode spelling: byte -> character."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def long_cases(rng):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "a" * 1000,
        "ab" * 600,
        "".join(rng.choice(letters) for _ in range(1500)),
        "Supercalifragilisticexpialidocious" * 40,
        "x" * 2500,
        "ábc" * 400,
        "中" * 1200,
        "😀" * 300,
        "Hello world! " * 100,
        " " * 1200,
        "-" * 1100,
        "a" * 1000 + " " + "b" * 1000,
    ]


def random_cases(rng, n):
    """Random strings over a pool of characters from many classes and scripts, so the
    classification of every range is exercised: letters, marks, digits of many scripts,
    whitespace, punctuation, symbols, emoji, apostrophes."""
    pool = (list("abcXYZ019 '\"\t\n\r.,!?-_()[]{}<>|/\\@#$%^&*+=~`") +
            ["'s", "'ll", "'re", " ", "  ", "\u00a0", "\u3000", "\u2009", "\u0301", "\u0308",
             "é", "ß", "ø", "中", "語", "カ", "ひ", "한", "ب", "ش", "\u064e", "क", "\u093f",
             "\u094d", "ก", "\u0e31", "Ж", "я", "λ", "Ω", "١", "४", "²", "½", "Ⅻ", "😀", "👍",
             "\u200d", "\ufe0f", "🇫", "🇷", "€", "™", "—", "…", "\u2028", "𝟙", "𝕳", "\ue000"])
    out = []
    for _ in range(n):
        k = rng.randint(1, 60)
        out.append("".join(rng.choice(pool) for _ in range(k)))
    # plus random assigned code points from across the whole range, 50 per string
    cps = []
    while len(cps) < 4000:
        c = rng.randint(0x20, 0x2FFFF)
        if 0xD800 <= c <= 0xDFFF:
            continue
        if unicodedata.category(chr(c)) in ("Cn", "Cs", "Co"):
            continue
        cps.append(c)
    for i in range(0, 4000, 50):
        out.append("".join(chr(c) for c in cps[i:i + 50]))
    return out


CHAT = [
    (None, "Hi there"),
    (None, "What is 2+2?"),
    (None, "Write a haiku about the sea.\nMake it rhyme."),
    ("You are a pirate.", "Hello!"),
    ("", "Empty system prompt"),
    (None, "Unicode: 中文, العربية, 😀👍🏽"),
    ("Answer in JSON.", '{"q": "list 3 colors"}'),
    (None, "   leading and trailing spaces   "),
    (None, "Does <|im_end|> inside the message split?"),
    (None, ""),
]


def decode_cases(tok, rng, byte_level=True):
    """Id sequences whose text must come back exactly as HF decodes it, incl. characters split
    over tokens and sequences that are not valid UTF-8."""
    seqs = []
    for text in ["😀 emoji split", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷", "中文测试", "é ñ ü",
                 "<|im_start|>user\nhi<|im_end|>"]:
        seqs.append(tok(text, add_special_tokens=False).input_ids)
    full = tok("😀🎉中", add_special_tokens=False).input_ids
    for i in range(len(full)):   # every prefix and suffix: partial characters at both ends
        seqs.append(full[:i + 1])
        seqs.append(full[i:])
    # reversed order, and lone continuation / lead bytes
    seqs.append(list(reversed(full)))
    v = tok.get_vocab()
    if byte_level:
        byte_tokens = [v[c] for c in ("Ã", "Â", "ð", "Ł", "ł", "ĳ", "ĵ") if c in v]
    else:  # byte-fallback tokens: a lone lead byte, a lone continuation, a split character
        byte_tokens = [v[c] for c in ("<0xE4>", "<0xB8>", "<0x41>", "<0xF0>", "<0x9F>", "<0x80>")
                       if c in v]
    seqs.append(byte_tokens)
    for _ in range(30):
        seqs.append([rng.randrange(len(v)) for _ in range(rng.randint(1, 12))])
    return seqs


# ---- output -----------------------------------------------------------------------------------

def hexs(s):
    return s.encode("utf-8").hex()


def ids_str(ids):
    return " ".join(str(i) for i in ids)


def gguf_meta(model_path):
    """(tokenizer.ggml.model, pre or None, chat template or None, [(text, type)] of the
    control / user-defined tokens)."""
    from gguf import GGUFReader
    r = GGUFReader(model_path)
    f = r.fields

    def get(k):
        return f[k].contents() if k in f else None

    toks, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type") or []
    specials = [(t, ty) for t, ty in zip(toks, types) if ty in (3, 4) and t]
    return get("tokenizer.ggml.model"), get("tokenizer.ggml.pre"), \
        get("tokenizer.chat_template"), specials


def gguf_tokens(model_path):
    from gguf import GGUFReader
    return GGUFReader(model_path).fields["tokenizer.ggml.tokens"].contents()


def template_kind(tpl):
    """The chat templates engine/tok_chat.c renders; None for the others (refused there)."""
    if tpl is None:
        return None
    if "<|im_start|>" in tpl:
        return "chatml"
    if "<|start_header_id|>" in tpl and "Cutting Knowledge Date" not in tpl:
        return "llama3"
    return None


def special_texts(specials):
    """Texts around this vocabulary's own control / user-defined tokens."""
    names = [t for t, _ in specials][:40]
    out = list(names)
    for i, n in enumerate(names[:12]):
        m = names[(i + 1) % len(names)]
        out += [f"a{n}b", f" {n} ", f"{n}{m}", f"{n}\n{m}\n", f"x {n}  y", f"{n}😀",
                n[:-1], n[1:], f"<{n}>", n.upper()]
    return out


def make_fixture(model_path, out_path, also_json=None):
    import tokenizers
    import transformers

    tok = load_reference(model_path)
    kind, pre, template, specials = gguf_meta(model_path)
    byte_level = kind == "gpt2"
    loaded_pre = tok.backend_tokenizer.pre_tokenizer.__class__.__name__
    print(f"reference: transformers {transformers.__version__}, tokenizers "
          f"{tokenizers.__version__}; tokenizer.ggml.model = {kind!r}, pre = {pre!r}; loader's "
          f"pre-tokenizer: {loaded_pre}", file=sys.stderr)
    rng = random.Random(20240611)
    specials_text = SPECIAL_TEXT if pre == "smollm" else special_texts(specials)
    texts = ([""] + PROSE + CONTRACTIONS + UNICODE + EMOJI + COMBINING + WHITESPACE + DIGITS +
             CODE + PUNCT + URLS + specials_text + EXTRA + long_cases(rng) +
             random_cases(rng, 120))
    seen = set()
    texts = [t for t in texts if not (t in seen or seen.add(t))]

    def enc(t, split=False):
        return tok(t, add_special_tokens=False, split_special_tokens=split).input_ids

    # Ids the file does not have: GPT2Tokenizer's default "<|endoftext|>" (unk/bos/eos when the
    # file names none) is added as a new token when the vocabulary lacks it, as for Llama 3. A
    # text that meets it is left out (its own tokenizer.json encodes it as plain text).
    n_vocab = len(gguf_tokens(model_path))
    invented = [t for t in texts if any(i >= n_vocab for i in enc(t))]
    for t in invented:
        print(f"  left out, the loader gives an id past the vocabulary: {t[:60]!r}",
              file=sys.stderr)
    texts = [t for t in texts if t not in invented]
    # the unpatched loader first, then the fixes it needs: smollm's digit split (the loader does
    # not know the name), llama-bpe's ignore_merges (Llama 3's tokenizer.json sets it; the loader
    # leaves the BPE default, off)
    loader_ids = {t: enc(t) for t in texts}
    if pre == "smollm" or pre is None and byte_level:
        set_pre_tokenizer(tok, pre or "gpt2")
    if pre == "llama-bpe":
        tok.backend_tokenizer.model.ignore_merges = True
    lines = []
    n_diff = 0
    for t in texts:
        ids = enc(t)
        lines.append(f"{hexs(t)}\t{ids_str(ids)}")
        if ids != loader_ids[t]:
            n_diff += 1
            print(f"  differs from the unpatched loader: {t[:60]!r}", file=sys.stderr)
    special_names = [n for n, ty in specials if ty == 3]
    for t in texts:
        if any(n in t for n in special_names):
            lines.append(f"plain:{hexs(t)}\t{ids_str(enc(t, split=True))}")
    gpt2_lines = []
    if pre == "smollm":
        # plain gpt2 differs only around numbers: keep the texts that have one
        gpt2_lines = [f"gpt2:{hexs(t)}\t{ids_str(loader_ids[t])}" for t in texts
                      if any(unicodedata.category(c)[0] == "N" for c in t)]
    n_chat = 0
    if template_kind(template):
        for system, user in CHAT:
            msgs = ([{"role": "system", "content": system}] if system is not None else []) + \
                [{"role": "user", "content": user}]
            r = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            ids = r["input_ids"] if hasattr(r, "keys") else r
            sys_hex = "-" if system is None else hexs(system)
            lines.append(f"chat:{sys_hex}\t{hexs(user)}\t{ids_str(ids)}")
            n_chat += 1
    for ids in decode_cases(tok, rng, byte_level):
        text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        lines.append(f"decode:{ids_str(ids)}\t{hexs(text)}")

    cross = ""
    if also_json:  # the model's own tokenizer.json as a second reference
        from tokenizers import Tokenizer
        own = Tokenizer.from_file(also_json)
        same = sum(own.encode(t, add_special_tokens=False).ids == enc(t) for t in texts)
        cross = f"; its own {os.path.basename(also_json)} agrees on {same} of {len(texts)} texts"
        print(f"  {os.path.basename(also_json)}: {same}/{len(texts)} texts agree", file=sys.stderr)
    sha = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    head = [
        f"# {os.path.basename(out_path)} - generated by tests/reference/"
        "make_tokenizer_fixture.py; do not edit.",
        f"# model {os.path.basename(model_path)} sha256 {sha}",
        f"# transformers {transformers.__version__}, tokenizers {tokenizers.__version__}; "
        f"tokenizer {kind}, pre-tokenizer {pre}; {n_diff} of {len(texts)} texts differ from the "
        f"unpatched GGUF loader{cross}"
        + (f"; {len(invented)} texts left out (the loader invents an id past the vocabulary "
           "for them)" if invented else ""),
        "# <hex utf-8>\\t<ids> | plain:<hex>\\t<ids> | gpt2:<hex>\\t<ids> | "
        "chat:<hex system or ->\\t<hex user>\\t<ids> | decode:<ids>\\t<hex>",
    ]
    with open(out_path, "w") as f:
        f.write("\n".join(head + lines + gpt2_lines) + "\n")
    print(f"wrote {out_path}: {len(texts)} texts ({n_diff} differ from the loader), "
          f"{sum(l.startswith('plain:') for l in lines)} plain, {n_chat} chat, "
          f"{sum(l.startswith('decode:') for l in lines)} decode cases", file=sys.stderr)


# ---- Unicode table ----------------------------------------------------------------------------

def unicode_ranges(ud):
    """Merged ranges (lo, hi, class) with class 1 = \\p{L}, 2 = \\p{N}."""
    out = []
    for cp in range(0x80, 0x110000):
        cat = ud.category(chr(cp))
        cls = 1 if cat[0] == "L" else 2 if cat[0] == "N" else 0
        if not cls:
            continue
        if out and out[-1][1] == cp - 1 and out[-1][2] == cls:
            out[-1][1] = cp
        else:
            out.append([cp, cp, cls])
    return out


def check_against_reference(ranges):
    """Every code point's class as the reference regex sees it, against the table."""
    from tokenizers import pre_tokenizers as pt
    bl = pt.ByteLevel(add_prefix_space=False, use_regex=True)

    def pieces(s):
        return len(bl.pre_tokenize_str(s))

    cls = {}
    for lo, hi, c in ranges:
        for cp in range(lo, hi + 1):
            cls[cp] = c
    bad = []
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        ref = 1 if pieces("x" + ch) == 1 else 2 if pieces("1" + ch) == 1 else \
            3 if pieces("!" + ch + "!") == 3 else 0
        mine = 3 if cp in WHITE_SPACE else cls.get(cp, 0)
        if ref != mine:
            bad.append((cp, ref, mine))
    return bad


def write_unicode_table(skip_check):
    try:
        import unicodedata2 as ud
    except ImportError:
        raise SystemExit("needs the Unicode 16.0 database: pip install unicodedata2==16.0.0")
    if not ud.unidata_version.startswith("16."):
        raise SystemExit(f"unicodedata2 has Unicode {ud.unidata_version}; the reference regex "
                         f"(Oniguruma in HF tokenizers) uses 16.0: pip install "
                         f"unicodedata2==16.0.0")
    ranges = unicode_ranges(ud)
    if not skip_check:
        bad = check_against_reference(ranges)
        if bad:
            raise SystemExit(f"{len(bad)} code points differ from the reference regex, first: "
                             + ", ".join(f"U+{c:04X} ref {r} table {m}" for c, r, m in bad[:10]))
        print("table agrees with the reference regex on every code point", file=sys.stderr)
    body = ["static const uint32_t uni_ranges[][2] = {"]
    row = "   "
    for lo, hi, c in ranges:
        item = f" R(0x{lo:X},0x{hi:X},{c}),"
        if len(row) + len(item) > 100:
            body.append(row)
            row = "   "
        row += item
    body.append(row)
    body.append("};")
    src = open(TOKENIZER_C).read()
    begin = src.index("/* BEGIN GENERATED UNICODE TABLE")
    begin = src.index("\n", begin) + 1
    end = src.index("/* END GENERATED UNICODE TABLE")
    src = src[:begin] + "/* Unicode %s, %d ranges */\n" % (ud.unidata_version, len(ranges)) + \
        "\n".join(body) + "\n" + src[end:]
    open(TOKENIZER_C, "w").write(src)
    print(f"wrote {len(ranges)} ranges into {TOKENIZER_C}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--also-json", metavar="TOKENIZER_JSON",
                    help="count how many texts the model's own tokenizer.json encodes alike")
    ap.add_argument("--unicode-table", action="store_true",
                    help="regenerate the Unicode range table in engine/tok_unicode.c")
    ap.add_argument("--skip-check", action="store_true",
                    help="with --unicode-table: skip the per-code-point check (about 10 s)")
    a = ap.parse_args()
    if a.unicode_table:
        write_unicode_table(a.skip_check)
        return
    if not os.path.exists(a.model):
        raise SystemExit(f"{a.model} is missing: run scripts/fetch-model")
    make_fixture(a.model, a.out, a.also_json)


if __name__ == "__main__":
    main()
