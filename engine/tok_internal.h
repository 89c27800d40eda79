/* tok_internal.h — what the tokenizer's files share: the context, the encoder and output
 * sink, and the helpers each file exports to the others. Not part of the engine's API
 * (tokenizer.h is).
 *
 *   tokenizer.c   the context from GGUF metadata, byte-level BPE, encode, decode, streaming
 *   tok_unicode.c \\p{L} / \\p{N} / \\s classes (generated table) and UTF-8 sequences
 *   tok_pretok.c  the pre-tokenizer regexes: gpt2, smollm, qwen2, llama-bpe
 *   tok_spm.c     SentencePiece (tokenizer.ggml.model = llama): merges from scores, encode, decode
 *   tok_chat.c    chat templates recognised in tokenizer.chat_template, the prompt text */
#ifndef KVS_TOK_INTERNAL_H
#define KVS_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tokenizer.h"

/* ---- Unicode and UTF-8 (tok_unicode.c) ---------------------------------------------------- */

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SPACE = 3 };
enum { U8_INVALID = 0, U8_VALID = 1, U8_INCOMPLETE = 2 };

/* One character of input text for the pre-tokenizer: invalid bytes are one "other" each. */
typedef struct { uint32_t cp; int cls; size_t len; } uchar;

/* Classify the sequence at b[0..avail): U8_VALID (len = its length), U8_INVALID (len = the
 * maximal invalid subpart, >= 1) or U8_INCOMPLETE (a valid prefix more bytes may complete). */
int tok_utf8_seq(const uint8_t *b, size_t avail, size_t *len, uint32_t *cp);
uchar tok_uchar_at(const uint8_t *s, size_t i, size_t end);
int tok_is_space_cp(uint32_t c); /* Unicode White_Space */

/* ---- the context (tokenizer.c) ---------------------------------------------------------- */

enum { PRE_GPT2 = 0, PRE_SMOLLM = 1, PRE_QWEN2 = 2, PRE_LLAMA3 = 3 };
enum { MODEL_BPE = 0, MODEL_SPM = 1 }; /* tokenizer.ggml.model gpt2 / llama */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

struct tok_ctx {
    int model;            /* MODEL_BPE or MODEL_SPM */
    int n_vocab;
    uint8_t *type;        /* [n_vocab] GGUF token type (1 normal, 3 control, 4 user-defined) */
    uint32_t *piece_off;  /* [n_vocab + 1] offsets of each token's raw bytes in piece_buf */
    char *piece_buf;
    size_t max_piece;     /* longest raw token, bytes */

    int32_t *vocab_ht;    /* raw bytes -> id, open addressing, -1 = empty */
    uint32_t vocab_mask;

    uint64_t *pair_key;   /* (left << 32 | right) + 1, 0 = empty */
    uint32_t *pair_rank;
    int32_t *pair_id;
    uint32_t pair_mask;

    int32_t byte_id[256]; /* the single-byte token of each byte (SPM: its <0xXX> token) */
    int32_t unk;          /* SPM: the unknown token, -1 if none */
    int add_space_prefix; /* SPM: prepend "▁" to the text (tokenizer.ggml.add_space_prefix) */
    int strip_lead;       /* decoding drops one leading space of the text (SPM's prefix) */

    int32_t *special;     /* ids of control/user tokens, grouped by first byte, longest first */
    int32_t special_at[257]; /* special[special_at[b] .. special_at[b+1]) start with byte b */
    int n_user;           /* user-defined tokens among them (matched even without parse_special) */

    int pre;
    int ignore_merges;    /* llama-bpe: a piece that is a token is not merged up from bytes */
    int32_t bos, eos, eot, eom, im_start, im_end, endoftext, eot_id, end_of_text;
    int chat;             /* CHAT_*: the kind of tokenizer.chat_template */
    char chat_head[48];   /* CHAT_UNKNOWN: the template's start, for the error message */
    int add_bos;
    char *default_system; /* NUL-terminated, NULL if the template has none */
};

enum { CHAT_NONE = 0, CHAT_CHATML = 1, CHAT_LLAMA3 = 2, CHAT_UNKNOWN = 3 };

int tok_is_special_type(int type);
uint64_t tok_hash_bytes(const char *s, size_t n);
uint32_t tok_table_mask(size_t n);
const char *tok_piece_ptr(const tok_ctx *t, int32_t id, size_t *len);
int32_t tok_vocab_lookup(const tok_ctx *t, const char *s, size_t n);
void tok_pair_insert(tok_ctx *t, int32_t a, int32_t b, uint32_t rank, int32_t id);
int tok_read_id(const gguf_ctx *g, const char *key, int n_vocab, int32_t *out);

/* ---- encoding (tokenizer.c) ------------------------------------------------------------- */

typedef struct {
    const tok_ctx *t;
    int32_t *ids;
    int cap;
    int64_t n;          /* ids produced so far (may exceed cap) */
    /* BPE scratch, grown to the longest word seen: one symbol per byte of the word. */
    size_t scap;
    int32_t *sym, *prv, *nxt;
    uint64_t *heap;     /* (rank << 32 | left position), min-heap; 3 entries per byte */
} encoder;

void tok_emit(encoder *e, int32_t id);
int tok_grow_scratch(encoder *e, size_t n);
void tok_bpe_run(encoder *e, size_t m);
int tok_bpe_word(encoder *e, const uint8_t *w, size_t n);

/* Pre-tokenizers (tok_pretok.c): split s[a, b) and BPE each piece. */
int tok_pretok_gpt2(encoder *e, const uint8_t *s, size_t a, size_t b);
int tok_pretok_smollm(encoder *e, const uint8_t *s, size_t a, size_t b);
int tok_pretok_llama3(encoder *e, const uint8_t *s, size_t a, size_t b);

/* ---- decoding output (tokenizer.c) ------------------------------------------------------ */

/* Counts everything, writes what fits; with strip set, drops one leading space of the text. */
typedef struct { char *out; size_t cap, n; int strip; } sink;
void tok_sink_put(sink *k, const void *p, size_t n);
extern const char TOK_REPLACEMENT[3]; /* U+FFFD */

/* ---- SentencePiece (tok_spm.c) ---------------------------------------------------------- */

enum { SPM_RUN_MAX = 16 };
size_t tok_spm_piece(int type, const char *s, size_t len, char *dst);
int tok_spm_load(tok_ctx *t, const gguf_ctx *g);
int tok_spm_segment(encoder *e, const uint8_t *s, size_t a, size_t b);
void tok_spm_feed(const tok_ctx *t, int32_t id, uint8_t *run, int *n, sink *k);
void tok_spm_close_run(const uint8_t *run, int n, sink *k);

/* ---- chat templates (tok_chat.c) -------------------------------------------------------- */

int tok_template_kind(const char *tpl, size_t len, char *head, size_t hcap);
char *tok_template_default_system(const char *tpl, size_t len);

#endif
