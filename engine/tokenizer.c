/* tokenizer.c — the tokenizer context from GGUF metadata (gpt2 byte-level BPE; llama
 * SentencePiece in tok_spm.c), the special-token split, BPE by merge rank, encode, and the
 * UTF-8-safe (streaming) decode. Pre-tokenizers: tok_pretok.c; chat templates: tok_chat.c.
 *
 * Data layout: every token's raw bytes (byte-level mapping already reversed) sit in one buffer,
 * found by id through piece_off and by bytes through an open-addressing hash table. Merges are
 * a second hash table from the id pair (left, right) to (rank, merged id), so BPE never touches
 * strings. */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "tok_internal.h"

/* ---- GPT-2 byte <-> unicode mapping ------------------------------------------------------ */

/* GPT-2 spells every byte as a printable character: the printable Latin-1 bytes ('!'..'~',
 * U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves, the other 68 bytes in order become
 * U+0100, U+0101, ... (so ' ' is U+0120 'Ġ' and '\n' is U+010A 'Ċ'). */
static int byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* Inverse of the mapping: code point -> byte, or -1 if cp is not in the byte alphabet. */
static int bytelevel_cp_to_byte(uint32_t cp)
{
    if (cp < 0x100) return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    int n = 0;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b) && n++ == (int)(cp - 0x100)) return b;
    return -1;
}

/* Raw bytes of a byte-level spelled string into dst (capacity >= len). If any character is
 * outside the byte alphabet the string is taken verbatim (as Hugging Face does). Returns the
 * raw length; *all_mapped tells which case happened. */
static size_t bytelevel_decode(const int16_t *inv, const char *s, size_t len, char *dst,
                               bool *all_mapped)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t l;
        uint32_t cp;
        if (tok_utf8_seq((const uint8_t *)s + i, len - i, &l, &cp) != U8_VALID || cp >= 0x144 ||
            inv[cp] < 0) {
            memcpy(dst, s, len);
            *all_mapped = false;
            return len;
        }
        dst[n++] = (char)inv[cp];
        i += l;
    }
    *all_mapped = true;
    return n;
}

/* Tokens matched whole in the text: control and unknown ones (<|im_end|>, <s>, <unk>) with
 * parse_special, user-defined ones (<think>) always, as llama.cpp and Hugging Face do. */
int tok_is_special_type(int type)
{
    return type == TT_CONTROL || type == TT_USER || type == TT_UNKNOWN;
}

uint64_t tok_hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= (uint8_t)s[i]; h *= 1099511628211ULL; }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t k)
{
    k *= 0x9E3779B97F4A7C15ULL;
    return k ^ (k >> 31);
}

uint32_t tok_table_mask(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return (uint32_t)(cap - 1);
}

const char *tok_piece_ptr(const tok_ctx *t, int32_t id, size_t *len)
{
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->piece_buf + t->piece_off[id];
}

int32_t tok_vocab_lookup(const tok_ctx *t, const char *s, size_t n)
{
    uint32_t i = (uint32_t)tok_hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_ht[i];
        if (id < 0) return -1;
        size_t l;
        const char *p = tok_piece_ptr(t, id, &l);
        if (l == n && memcmp(p, s, n) == 0) return id;
    }
}

static void vocab_insert(tok_ctx *t, int32_t id)
{
    size_t n;
    const char *s = tok_piece_ptr(t, id, &n);
    uint32_t i = (uint32_t)tok_hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        int32_t o = t->vocab_ht[i];
        if (o < 0) { t->vocab_ht[i] = id; return; }
        size_t l;
        const char *p = tok_piece_ptr(t, o, &l);
        if (l == n && memcmp(p, s, n) == 0) { t->vocab_ht[i] = id; return; } /* later wins */
    }
}

/* Rank and result of merging (a, b); returns 0 if the pair is not a merge. */
static int pair_lookup(const tok_ctx *t, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t i = (uint32_t)hash_pair(key) & t->pair_mask;
    for (;; i = (i + 1) & t->pair_mask) {
        uint64_t k = t->pair_key[i];
        if (k == 0) return 0;
        if (k == key) { *rank = t->pair_rank[i]; *id = t->pair_id[i]; return 1; }
    }
}

void tok_pair_insert(tok_ctx *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t i = (uint32_t)hash_pair(key) & t->pair_mask;
    for (;; i = (i + 1) & t->pair_mask) {
        if (t->pair_key[i] == key) return; /* keep the first (lowest) rank */
        if (t->pair_key[i] == 0) {
            t->pair_key[i] = key; t->pair_rank[i] = rank; t->pair_id[i] = id;
            return;
        }
    }
}

void tok_destroy(tok_ctx *t)
{
    if (!t) return;
    kvs_free(t->type);
    kvs_free(t->piece_off);
    kvs_free(t->piece_buf);
    kvs_free(t->vocab_ht);
    kvs_free(t->pair_key);
    kvs_free(t->pair_rank);
    kvs_free(t->pair_id);
    kvs_free(t->special);
    free(t->default_system);
    free(t);
}

/* Pre-tokenizer names as tokenizer.ggml.pre spells them; "default" (llama.cpp's name for files
 * that name no special pre-tokenizer) is GPT-2's. */
static const struct { const char *name; int pre; } PRE_NAMES[] = {
    {"gpt2", PRE_GPT2}, {"default", PRE_GPT2}, {"smollm", PRE_SMOLLM}, {"qwen2", PRE_QWEN2},
    {"llama-bpe", PRE_LLAMA3},
};
#define PRE_SUPPORTED "gpt2 (or default), smollm, qwen2, llama-bpe"

static int pre_from_name(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof PRE_NAMES / sizeof PRE_NAMES[0]; i++)
        if (strlen(PRE_NAMES[i].name) == len && memcmp(PRE_NAMES[i].name, name, len) == 0)
            return PRE_NAMES[i].pre;
    return -1;
}

static void set_pre(tok_ctx *t, int pre)
{
    t->pre = pre;
    t->ignore_merges = pre == PRE_LLAMA3;
}

int tok_set_pre(tok_ctx *t, const char *name)
{
    if (!t) return kvs_error(KVS_EINVAL, "tok_set_pre: no tokenizer");
    if (t->model != MODEL_BPE)
        return kvs_error(KVS_EUNSUPPORTED, "a SentencePiece tokenizer has no pre-tokenizer to "
                         "set (asked for '%s')", name ? name : "(null)");
    int p = name ? pre_from_name(name, strlen(name)) : -1;
    if (p < 0)
        return kvs_error(KVS_EUNSUPPORTED, "pre-tokenizer '%s' is not supported (supported: "
                         PRE_SUPPORTED ")", name ? name : "(null)");
    set_pre(t, p);
    return 0;
}

const char *tok_pre_name(const tok_ctx *t)
{
    if (t->model != MODEL_BPE) return "none";
    for (size_t i = 0; i < sizeof PRE_NAMES / sizeof PRE_NAMES[0]; i++)
        if (PRE_NAMES[i].pre == t->pre) return PRE_NAMES[i].name;
    return "gpt2";
}

/* Optional token-id key: -1 if absent, error if present but out of range. */
int tok_read_id(const gguf_ctx *g, const char *key, int n_vocab, int32_t *out)
{
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    *out = -1;
    if (rc == KVS_ENOTFOUND) return 0;
    if (rc) return rc; /* the reader's message names the key and the type */
    if (v >= (uint32_t)n_vocab)
        return kvs_error(KVS_EFORMAT, "GGUF key %s = %u is outside the vocabulary of %d tokens",
                         key, v, n_vocab);
    *out = (int32_t)v;
    return 0;
}

int tok_create_from_gguf(const gguf_ctx *g, tok_ctx **out)
{
    if (!out) return kvs_error(KVS_EINVAL, "tok_create_from_gguf: out is NULL");
    *out = NULL;
    if (!g) return kvs_error(KVS_EINVAL, "tok_create_from_gguf: no GGUF given");

    const char *s;
    size_t sl;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &s, &sl);
    if (rc == KVS_ENOTFOUND)
        return kvs_error(KVS_ENOTFOUND, "the GGUF has no tokenizer.ggml.model: it carries no "
                         "tokenizer");
    if (rc) return rc;
    int model;
    if (sl == 4 && memcmp(s, "gpt2", 4) == 0) model = MODEL_BPE;
    else if (sl == 5 && memcmp(s, "llama", 5) == 0) model = MODEL_SPM;
    else
        return kvs_error(KVS_EUNSUPPORTED, "tokenizer model '%.*s' is not supported: only gpt2 "
                         "(byte-level BPE) and llama (SentencePiece) tokenizers are",
                         (int)KVS_MIN(sl, 64), s);
    if (model == MODEL_SPM && gguf_get_str(g, "general.architecture", &s, &sl) == 0) {
        /* Hugging Face builds these architectures' SentencePiece otherwise (Gemma: spaces
         * spelled as spaces, merges by file order; Phi-3: the prefix from a normalizer) */
        static const char *const other[] = {"gemma", "gemma2", "gemma3", "phi3"};
        for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
            if (strlen(other[i]) == sl && memcmp(other[i], s, sl) == 0)
                return kvs_error(KVS_EUNSUPPORTED, "the SentencePiece tokenizer of %s models is "
                                 "not supported (only the Llama form is)", other[i]);
    }
    int pre = PRE_GPT2; /* no key: plain GPT-2, as Hugging Face falls back to */
    rc = model == MODEL_BPE ? gguf_get_str(g, "tokenizer.ggml.pre", &s, &sl) : KVS_ENOTFOUND;
    if (rc == 0) {
        pre = pre_from_name(s, sl);
        if (pre < 0)
            return kvs_error(KVS_EUNSUPPORTED, "pre-tokenizer '%.*s' (tokenizer.ggml.pre) is not "
                             "supported; supported: " PRE_SUPPORTED, (int)KVS_MIN(sl, 64), s);
    } else if (rc != KVS_ENOTFOUND) {
        return rc;
    }

    int et;
    uint64_t n;
    rc = gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n);
    if (rc == KVS_ENOTFOUND)
        return kvs_error(KVS_ENOTFOUND, "the GGUF has no tokenizer.ggml.tokens: no vocabulary");
    if (rc || et != GGUF_VT_STRING || n == 0 || n > (uint64_t)INT32_MAX / 2)
        return kvs_error(KVS_EFORMAT, "tokenizer.ggml.tokens must be a non-empty string array");

    tok_ctx *t = calloc(1, sizeof *t);
    if (!t) return kvs_error(KVS_ENOMEM, "out of memory");
    t->model = model;
    t->n_vocab = (int)n;
    t->unk = -1;
    set_pre(t, pre);
    int16_t inv[0x144];
    for (uint32_t c = 0; c < 0x144; c++) inv[c] = (int16_t)bytelevel_cp_to_byte(c);

    /* Token types (optional: all normal without them). */
    t->type = kvs_calloc(n, 1);
    t->piece_off = kvs_calloc(n + 1, sizeof *t->piece_off);
    if (!t->type || !t->piece_off) { rc = KVS_ENOMEM; goto fail; }
    memset(t->type, TT_NORMAL, n);
    uint64_t nt;
    if (gguf_get_arr_info(g, "tokenizer.ggml.token_type", &et, &nt) == 0) {
        const void *data;
        if ((et != GGUF_VT_INT32 && et != GGUF_VT_UINT32) || nt != n ||
            gguf_get_arr_data(g, "tokenizer.ggml.token_type", &data)) {
            rc = kvs_error(KVS_EFORMAT, "tokenizer.ggml.token_type must be an int32 array with "
                           "one entry per token (%llu)", (unsigned long long)n);
            goto fail;
        }
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, (const char *)data + 4 * i, 4);
            t->type[i] = (uint8_t)(v >= 1 && v <= 6 ? v : TT_NORMAL);
        }
    }

    /* Raw bytes of every token. */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &sl))) goto fail;
        total += sl;
    }
    if (total > UINT32_MAX) { rc = kvs_error(KVS_EFORMAT, "vocabulary text too large"); goto fail; }
    t->piece_buf = kvs_alloc(total + 1);
    if (!t->piece_buf) { rc = KVS_ENOMEM; goto fail; }
    size_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &sl);
        bool mapped;
        size_t l;
        if (model == MODEL_SPM) {
            l = tok_spm_piece(t->type[i], s, sl, t->piece_buf + pos);
        } else if (tok_is_special_type(t->type[i])) {
            memcpy(t->piece_buf + pos, s, sl); /* special tokens decode to their text */
            l = sl;
        } else {
            l = bytelevel_decode(inv, s, sl, t->piece_buf + pos, &mapped);
        }
        t->piece_off[i] = (uint32_t)pos;
        pos += l;
        if (l > t->max_piece) t->max_piece = l;
    }
    t->piece_off[n] = (uint32_t)pos;

    t->vocab_mask = tok_table_mask(n);
    t->vocab_ht = kvs_alloc(((size_t)t->vocab_mask + 1) * sizeof *t->vocab_ht);
    if (!t->vocab_ht) { rc = KVS_ENOMEM; goto fail; }
    memset(t->vocab_ht, 0xFF, ((size_t)t->vocab_mask + 1) * sizeof *t->vocab_ht);
    for (uint64_t i = 0; i < n; i++)
        if (!(model == MODEL_SPM && t->type[i] == TT_BYTE)) vocab_insert(t, (int32_t)i);
    if (model == MODEL_SPM) {
        if ((rc = tok_spm_load(t, g))) goto fail;
        goto specials;
    }

    /* Bytes never seen in training may have no token (SmolLM2 lacks 21, e.g. 0x04 and
     * 0xF5..0xFF): such bytes are dropped from the input, as Hugging Face does without an
     * unknown token. */
    int n_bytes = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tok_vocab_lookup(t, &c, 1);
        n_bytes += t->byte_id[b] >= 0;
    }
    if (n_bytes < 128) {
        rc = kvs_error(KVS_EFORMAT, "the vocabulary has tokens for only %d of the 256 bytes: not "
                       "a byte-level BPE vocabulary", n_bytes);
        goto fail;
    }

    /* Merges: "left right" in the byte-level spelling, rank = position in the list. */
    uint64_t nm;
    rc = gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &nm);
    if (rc == KVS_ENOTFOUND) {
        rc = kvs_error(KVS_ENOTFOUND, "the GGUF has no tokenizer.ggml.merges: a gpt2 tokenizer "
                       "needs its BPE merges");
        goto fail;
    }
    if (rc || et != GGUF_VT_STRING || nm > (uint64_t)INT32_MAX / 4) {
        rc = kvs_error(KVS_EFORMAT, "tokenizer.ggml.merges must be a string array");
        goto fail;
    }
    t->pair_mask = tok_table_mask(nm);
    t->pair_key = kvs_calloc((size_t)t->pair_mask + 1, sizeof *t->pair_key);
    t->pair_rank = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_rank);
    t->pair_id = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_id);
    char *tmp = malloc(4 * t->max_piece + 4);
    if (!t->pair_key || !t->pair_rank || !t->pair_id || !tmp) {
        free(tmp);
        rc = kvs_error(KVS_ENOMEM, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < nm; i++) {
        if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &sl))) {
            free(tmp);
            goto fail;
        }
        const char *sp = memchr(s, ' ', sl);
        if (!sp || sp == s || sp + 1 == s + sl) continue;
        size_t la = (size_t)(sp - s), lb = sl - la - 1;
        if (la > 2 * t->max_piece || lb > 2 * t->max_piece) continue; /* cannot be tokens */
        bool ma, mb;
        size_t ra = bytelevel_decode(inv, s, la, tmp, &ma);
        size_t rb = ra + bytelevel_decode(inv, sp + 1, lb, tmp + ra, &mb);
        if (!ma || !mb || rb > t->max_piece) continue; /* no token can be the result */
        int32_t a = tok_vocab_lookup(t, tmp, ra), b = tok_vocab_lookup(t, tmp + ra, rb - ra);
        int32_t ab = tok_vocab_lookup(t, tmp, rb);
        if (a < 0 || b < 0 || ab < 0) continue; /* a merge of unknown tokens is never used */
        tok_pair_insert(t, a, b, (uint32_t)i, ab);
    }
    free(tmp);

specials:;
    /* Special tokens, matched whole in the text when parse_special is on: grouped by first
     * byte, longest first within a group (leftmost-longest matching). */
    int n_special = 0;
    for (uint64_t i = 0; i < n; i++)
        if (tok_is_special_type(t->type[i]) && t->piece_off[i + 1] > t->piece_off[i]) {
            n_special++;
            t->n_user += t->type[i] == TT_USER;
        }
    int32_t *found = kvs_alloc((size_t)(n_special ? n_special : 1) * sizeof *found);
    t->special = kvs_alloc((size_t)(n_special ? n_special : 1) * sizeof *t->special);
    if (!found || !t->special) { kvs_free(found); rc = KVS_ENOMEM; goto fail; }
    n_special = 0;
    for (uint64_t i = 0; i < n; i++)
        if (tok_is_special_type(t->type[i]) && t->piece_off[i + 1] > t->piece_off[i])
            found[n_special++] = (int32_t)i;
    int k = 0;
    for (int b = 0; b < 256; b++) {
        t->special_at[b] = k;
        int first = k;
        for (int f = 0; f < n_special; f++) {
            size_t l;
            const char *p = tok_piece_ptr(t, found[f], &l);
            if ((uint8_t)p[0] != b) continue;
            int j = k++;
            while (j > first) { /* insertion by length, descending */
                size_t lj;
                tok_piece_ptr(t, t->special[j - 1], &lj);
                if (lj >= l) break;
                t->special[j] = t->special[j - 1];
                j--;
            }
            t->special[j] = found[f];
        }
    }
    kvs_free(found);
    t->special_at[256] = k;

    if ((rc = tok_read_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos)) ||
        (rc = tok_read_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos)) ||
        (rc = tok_read_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot)) ||
        (rc = tok_read_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->eom)))
        goto fail;
    int flag = 0;
    rc = gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag);
    if (rc && rc != KVS_ENOTFOUND) goto fail;
    t->add_bos = rc == 0 && flag;
    t->im_start = tok_vocab_lookup(t, "<|im_start|>", 12);
    t->im_end = tok_vocab_lookup(t, "<|im_end|>", 10);
    t->endoftext = tok_vocab_lookup(t, "<|endoftext|>", 13);
    t->eot_id = tok_vocab_lookup(t, "<|eot_id|>", 10);
    t->end_of_text = tok_vocab_lookup(t, "<|end_of_text|>", 15);
    rc = gguf_get_str(g, "tokenizer.chat_template", &s, &sl);
    if (rc && rc != KVS_ENOTFOUND) goto fail;
    t->chat = rc == 0 ? tok_template_kind(s, sl, t->chat_head, sizeof t->chat_head)
                      : t->im_start >= 0 && t->im_end >= 0 ? CHAT_CHATML : CHAT_NONE;
    if (rc == 0 && t->chat == CHAT_CHATML) t->default_system = tok_template_default_system(s, sl);
    rc = 0;
    *out = t;
    return 0;
fail:
    if (rc == KVS_ENOMEM) kvs_error(KVS_ENOMEM, "out of memory building the tokenizer");
    tok_destroy(t);
    return rc;
}

int tok_n_vocab(const tok_ctx *t) { return t->n_vocab; }
int32_t tok_bos(const tok_ctx *t) { return t->bos; }
int32_t tok_eos(const tok_ctx *t) { return t->eos; }
int tok_add_bos(const tok_ctx *t) { return t->add_bos; }

int tok_is_eog(const tok_ctx *t, int32_t id)
{
    if (id < 0) return 0;
    return id == t->eos || id == t->eot || id == t->eom || id == t->im_end ||
           id == t->endoftext || id == t->eot_id || id == t->end_of_text;
}

int32_t tok_find(const tok_ctx *t, const char *piece)
{
    if (!t || !piece) return -1;
    return tok_vocab_lookup(t, piece, strlen(piece));
}

int tok_piece(const tok_ctx *t, int32_t id, const char **bytes, size_t *len)
{
    if (id < 0 || id >= t->n_vocab)
        return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary of %d tokens", id,
                         t->n_vocab);
    *bytes = tok_piece_ptr(t, id, len);
    return 0;
}

/* ---- encoding ---------------------------------------------------------------------------- */

void tok_emit(encoder *e, int32_t id)
{
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (v <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

int tok_grow_scratch(encoder *e, size_t n)
{
    if (n <= e->scap) return 0;
    size_t cap = KVS_MAX(n, 2 * e->scap);
    kvs_free(e->sym); kvs_free(e->prv); kvs_free(e->nxt); kvs_free(e->heap);
    e->sym = kvs_alloc(cap * sizeof *e->sym);
    e->prv = kvs_alloc(cap * sizeof *e->prv);
    e->nxt = kvs_alloc(cap * sizeof *e->nxt);
    e->heap = kvs_alloc(3 * cap * sizeof *e->heap);
    e->scap = cap;
    if (!e->sym || !e->prv || !e->nxt || !e->heap) { e->scap = 0; return KVS_ENOMEM; }
    return 0;
}

static void push_pair(encoder *e, size_t *hn, int32_t left)
{
    int32_t right = e->nxt[left];
    uint32_t rank;
    int32_t id;
    if (right >= 0 && pair_lookup(e->t, e->sym[left], e->sym[right], &rank, &id))
        heap_push(e->heap, hn, ((uint64_t)rank << 32) | (uint32_t)left);
}

/* BPE over the m symbols in e->sym[0..m): apply the lowest-ranked merge present, leftmost
 * first, until none applies, and tok_emit the result. Symbols form a linked list; the heap holds
 * candidate pairs and stale entries are skipped when popped. O(m log m). */
void tok_bpe_run(encoder *e, size_t m)
{
    const tok_ctx *t = e->t;
    if (m == 0) return;
    for (size_t i = 0; i < m; i++) {
        e->prv[i] = (int32_t)i - 1;
        e->nxt[i] = (int32_t)i + 1;
    }
    e->nxt[m - 1] = -1;
    size_t hn = 0;
    for (size_t i = 0; i + 1 < m; i++) push_pair(e, &hn, (int32_t)i);
    while (hn) {
        uint64_t top = heap_pop(e->heap, &hn);
        int32_t left = (int32_t)(uint32_t)top, right = e->nxt[left];
        uint32_t rank;
        int32_t id;
        if (e->sym[left] < 0 || right < 0) continue;
        if (!pair_lookup(t, e->sym[left], e->sym[right], &rank, &id) ||
            rank != (uint32_t)(top >> 32))
            continue; /* stale: one side has merged with something else since */
        e->sym[left] = id;
        e->sym[right] = -1;
        e->nxt[left] = e->nxt[right];
        if (e->nxt[left] >= 0) e->prv[e->nxt[left]] = left;
        if (e->prv[left] >= 0) push_pair(e, &hn, e->prv[left]);
        push_pair(e, &hn, left);
    }
    for (int32_t i = 0; i >= 0; i = e->nxt[i]) tok_emit(e, e->sym[i]);
}

/* BPE of one pre-tokenized word of a byte-level vocabulary: one symbol per byte to start. */
int tok_bpe_word(encoder *e, const uint8_t *w, size_t n)
{
    const tok_ctx *t = e->t;
    if (n == 1) {
        if (t->byte_id[w[0]] >= 0) tok_emit(e, t->byte_id[w[0]]);
        return 0;
    }
    if (tok_grow_scratch(e, n)) return KVS_ENOMEM;
    size_t m = 0; /* symbols: the bytes that have a token (the others are dropped) */
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id >= 0) e->sym[m++] = id;
    }
    tok_bpe_run(e, m);
    return 0;
}

/* The special token starting at s[i], longest first; -1 if none. Without parse_special only
 * user-defined tokens count (Hugging Face's non-special added tokens, which llama.cpp and HF
 * match whole in any text). */
static int32_t special_at(const tok_ctx *t, const uint8_t *s, size_t i, size_t len,
                          int parse_special, size_t *l)
{
    for (int k = t->special_at[s[i]]; k < t->special_at[s[i] + 1]; k++) {
        if (!parse_special && t->type[t->special[k]] != TT_USER) continue;
        const char *p = tok_piece_ptr(t, t->special[k], l);
        if (*l <= len - i && memcmp(p, s + i, *l) == 0) return t->special[k];
    }
    return -1;
}

int tok_encode(const tok_ctx *t, const char *text, size_t len, int parse_special, int32_t *ids,
               int cap)
{
    if (!t || (!text && len) || cap < 0 || (cap > 0 && !ids))
        return kvs_error(KVS_EINVAL, "tok_encode: bad arguments");
    if (len > (size_t)INT_MAX)
        return kvs_error(KVS_ERANGE, "text of %zu bytes is too long to encode (limit %d)", len,
                         INT_MAX);
    encoder e = {.t = t, .ids = ids, .cap = cap};
    const uint8_t *s = (const uint8_t *)text;
    int (*pretok)(encoder *, const uint8_t *, size_t, size_t) =
        t->model == MODEL_SPM ? tok_spm_segment
        : t->pre == PRE_SMOLLM ? tok_pretok_smollm
        : t->pre == PRE_QWEN2 || t->pre == PRE_LLAMA3 ? tok_pretok_llama3 : tok_pretok_gpt2;
    int rc = 0;
    size_t seg = 0;
    if (parse_special || t->n_user) {
        for (size_t i = 0; i < len && !rc; i++) {
            size_t l;
            int32_t id = special_at(t, s, i, len, parse_special, &l);
            if (id < 0) continue;
            if (seg < i) rc = pretok(&e, s, seg, i);
            tok_emit(&e, id);
            seg = i + l;
            i = seg - 1;
        }
    }
    if (!rc && seg < len) rc = pretok(&e, s, seg, len);
    kvs_free(e.sym); kvs_free(e.prv); kvs_free(e.nxt); kvs_free(e.heap);
    if (rc) return kvs_error(rc, "out of memory encoding %zu bytes of text", len);
    return (int)e.n;
}

/* ---- decoding ---------------------------------------------------------------------------- */

void tok_sink_put(sink *k, const void *p, size_t n)
{
    if (k->strip && n > 0) {
        k->strip = 0;
        if (*(const char *)p == ' ') { p = (const char *)p + 1; n--; }
    }
    if (k->n < k->cap) memcpy(k->out + k->n, p, KVS_MIN(n, k->cap - k->n));
    k->n += n;
}

const char TOK_REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Write the complete characters of pending ++ piece to k (invalid subparts as U+FFFD) and leave
 * a trailing incomplete character in newp/newn. */
static void utf8_feed(const uint8_t *pend, int np, const uint8_t *p, size_t n, sink *k,
                      uint8_t *newp, int *newn)
{
    size_t pos = 0, l;
    uint32_t cp;
    *newn = 0;
    if (np > 0) { /* sequences that start in the pending bytes, in a small joint buffer */
        uint8_t joint[8];
        size_t nj = (size_t)np, extra = KVS_MIN(n, 4);
        memcpy(joint, pend, (size_t)np);
        memcpy(joint + np, p, extra);
        nj += extra;
        while (pos < (size_t)np) {
            int st = tok_utf8_seq(joint + pos, nj - pos, &l, &cp);
            if (st == U8_INCOMPLETE) { /* only when joint holds all the input */
                memcpy(newp, joint + pos, l);
                *newn = (int)l;
                return;
            }
            if (st == U8_VALID) tok_sink_put(k, joint + pos, l);
            else tok_sink_put(k, TOK_REPLACEMENT, 3);
            pos += l;
        }
        pos -= (size_t)np; /* now an offset into p */
    }
    while (pos < n) {
        int st = tok_utf8_seq(p + pos, n - pos, &l, &cp);
        if (st == U8_INCOMPLETE) {
            memcpy(newp, p + pos, l);
            *newn = (int)l;
            return;
        }
        size_t run = pos;
        if (st == U8_VALID) { /* copy a run of valid characters at once */
            pos += l;
            while (pos < n && tok_utf8_seq(p + pos, n - pos, &l, &cp) == U8_VALID) pos += l;
            tok_sink_put(k, p + run, pos - run);
        } else {
            tok_sink_put(k, TOK_REPLACEMENT, 3);
            pos += l;
        }
    }
}

void tok_stream_init(tok_stream *s)
{
    memset(s, 0, sizeof *s);
}

size_t tok_stream_cap(const tok_ctx *t)
{
    /* Each input byte gives at most 3 output bytes (U+FFFD); the input is the piece and what
     * was pending: <= 3 bytes of a character, or an SPM run of <= SPM_RUN_MAX byte tokens. */
    return 3 * (t->max_piece + SPM_RUN_MAX);
}

int tok_stream_push(const tok_ctx *t, tok_stream *s, int32_t id, char *out, size_t cap)
{
    const char *p = NULL;
    size_t n = 0;
    int rc = tok_piece(t, id, &p, &n);
    if (rc) return rc;
    if (s->n_pending < 0 || s->n_pending > (t->model == MODEL_SPM ? SPM_RUN_MAX : 3))
        return kvs_error(KVS_EINVAL, "tok_stream_push: stream not initialised");
    sink k = {out, cap, 0, t->strip_lead && !s->begun};
    uint8_t newp[sizeof s->pending];
    int newn;
    if (t->model == MODEL_SPM) {
        memcpy(newp, s->pending, (size_t)s->n_pending);
        newn = s->n_pending;
        tok_spm_feed(t, id, newp, &newn, &k);
        s->spm = 1;
    } else {
        utf8_feed(s->pending, s->n_pending, (const uint8_t *)p, n, &k, newp, &newn);
    }
    if (k.n > cap)
        return kvs_error(KVS_ERANGE, "token %d decodes to %zu bytes; the buffer holds %zu "
                         "(tok_stream_cap() is always enough)", id, k.n, cap);
    memcpy(s->pending, newp, (size_t)newn);
    s->n_pending = newn;
    s->strip = t->strip_lead;
    if (!k.strip) s->begun = 1;
    return (int)k.n;
}

int tok_stream_flush(tok_stream *s, char *out, size_t cap)
{
    if (s->n_pending <= 0) { s->n_pending = 0; s->begun = 0; return 0; }
    if (s->spm) {
        sink k = {out, cap, 0, !s->begun && s->strip};
        tok_spm_close_run(s->pending, s->n_pending, &k);
        if (k.n > cap)
            return kvs_error(KVS_ERANGE, "tok_stream_flush needs %zu bytes of output, got %zu",
                             k.n, cap);
        tok_stream_init(s);
        return (int)k.n;
    }
    if (cap < 3)
        return kvs_error(KVS_ERANGE, "tok_stream_flush needs 3 bytes of output, got %zu", cap);
    memcpy(out, TOK_REPLACEMENT, 3);
    s->n_pending = 0;
    s->begun = 0;
    return 3;
}

int tok_decode(const tok_ctx *t, const int32_t *ids, int n, char *out, size_t cap)
{
    if (!t || n < 0 || (n > 0 && !ids) || (cap > 0 && !out))
        return kvs_error(KVS_EINVAL, "tok_decode: bad arguments");
    sink k = {out, cap ? cap - 1 : 0, 0, t->strip_lead};
    uint8_t pend[SPM_RUN_MAX];
    int np = 0;
    if (t->model == MODEL_SPM) {
        for (int i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= t->n_vocab)
                return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary of %d tokens",
                                 ids[i], t->n_vocab);
            tok_spm_feed(t, ids[i], pend, &np, &k);
        }
        tok_spm_close_run(pend, np, &k);
        np = 0;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const char *p = NULL;
        size_t l = 0;
        int rc = tok_piece(t, ids[i], &p, &l);
        if (rc) return rc;
        uint8_t newp[8];
        int newn;
        utf8_feed(pend, np, (const uint8_t *)p, l, &k, newp, &newn);
        memcpy(pend, newp, (size_t)newn);
        np = newn;
    }
    if (np) tok_sink_put(&k, TOK_REPLACEMENT, 3);
done:
    if (k.n > (size_t)INT_MAX) return kvs_error(KVS_ERANGE, "decoded text is too long");
    if (cap) out[KVS_MIN(k.n, cap - 1)] = 0;
    return (int)k.n;
}
