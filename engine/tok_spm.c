/* tok_spm.c — SentencePiece (tokenizer.ggml.model = llama) as Hugging Face runs it: merges
 * ranked from the scores, the "▁" prefix, byte fallback, and the ByteFallback decoder. */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "tok_internal.h"

/* ---- SentencePiece (tokenizer.ggml.model = llama) ----------------------------------------- */

/* Raw bytes of an SPM token into dst: a byte token "<0xXX>" is that byte, every other token its
 * text with "▁" (U+2581) as a space. Returns the length. */
size_t tok_spm_piece(int type, const char *s, size_t len, char *dst)
{
    if (type == TT_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        unsigned v;
        char hex[3] = {s[3], s[4], 0};
        char *end;
        v = (unsigned)strtoul(hex, &end, 16);
        if (*end == 0) { dst[0] = (char)v; return 1; }
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (i + 2 < len && (uint8_t)s[i] == 0xE2 && (uint8_t)s[i + 1] == 0x96 &&
            (uint8_t)s[i + 2] == 0x81) {
            dst[n++] = ' ';
            i += 3;
        } else {
            dst[n++] = s[i++];
        }
    }
    return n;
}

/* The vocabulary as the file spells it (with "▁", "<0xXX>"), for building merges. */
typedef struct {
    const char **str;
    size_t *len;
    int32_t *ht;
    uint32_t mask;
} spelled;

static int32_t spelled_find(const spelled *v, const char *s, size_t n)
{
    for (uint32_t i = (uint32_t)tok_hash_bytes(s, n) & v->mask;; i = (i + 1) & v->mask) {
        int32_t id = v->ht[i];
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(v->str[id], s, n) == 0) return id;
    }
}

typedef struct { float score; int32_t ll, lr, l, r, id; uint32_t seq; } spm_merge;

static int merge_by_ids(const void *a, const void *b)
{
    const spm_merge *x = a, *y = b;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

/* Best first: higher score of the merged token, then longer left piece, longer right piece
 * (in characters), then the order found. */
static int merge_by_rank(const void *a, const void *b)
{
    const spm_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->ll != y->ll) return x->ll > y->ll ? -1 : 1;
    if (x->lr != y->lr) return x->lr > y->lr ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static size_t utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((uint8_t)s[i] & 0xC0) != 0x80;
    return c;
}

/* Merges of an SPM vocabulary. The file's tokenizer.ggml.merges when it has them; else the
 * ones its scores imply, as Hugging Face derives them (transformers' generate_merges): every
 * split of every token into two tokens is a merge, ranked by merge_by_rank. */
static int spm_merges(tok_ctx *t, const gguf_ctx *g, const spelled *v)
{
    int et;
    uint64_t nm = 0, ns;
    int rc;
    int from_file = gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &nm) == 0;
    const char *scores = NULL; /* float32, not necessarily aligned */
    if (from_file) {
        if (et != GGUF_VT_STRING)
            return kvs_error(KVS_EFORMAT, "tokenizer.ggml.merges must be a string array");
    } else {
        rc = gguf_get_arr_info(g, "tokenizer.ggml.scores", &et, &ns);
        if (rc == KVS_ENOTFOUND)
            return kvs_error(KVS_ENOTFOUND, "the GGUF has neither tokenizer.ggml.scores nor "
                             "tokenizer.ggml.merges: a llama (SentencePiece) tokenizer needs one");
        const void *data;
        if (rc || et != GGUF_VT_FLOAT32 || ns != (uint64_t)t->n_vocab ||
            gguf_get_arr_data(g, "tokenizer.ggml.scores", &data))
            return kvs_error(KVS_EFORMAT, "tokenizer.ggml.scores must be a float32 array with "
                             "one entry per token (%d)", t->n_vocab);
        scores = data;
    }
    size_t cap = 1024, n = 0;
    spm_merge *m = kvs_alloc(cap * sizeof *m);
    if (!m) return KVS_ENOMEM;
    if (from_file) {
        for (uint64_t i = 0; i < nm; i++) {
            const char *s;
            size_t sl;
            if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &sl))) goto out;
            const char *sp = memchr(s, ' ', sl);
            if (!sp) continue;
            size_t la = (size_t)(sp - s);
            int32_t l = spelled_find(v, s, la), r = spelled_find(v, sp + 1, sl - la - 1);
            if (l < 0 || r < 0 || la + v->len[r] > 4096) continue;
            char buf[4096];
            memcpy(buf, s, la);
            memcpy(buf + la, sp + 1, sl - la - 1);
            int32_t id = spelled_find(v, buf, sl - 1);
            if (id < 0) continue;
            if (n == cap) {
                spm_merge *nm2 = kvs_alloc(2 * cap * sizeof *m);
                if (!nm2) { rc = KVS_ENOMEM; goto out; }
                memcpy(nm2, m, n * sizeof *m);
                kvs_free(m);
                m = nm2;
                cap *= 2;
            }
            m[n++] = (spm_merge){0, 0, 0, l, r, id, (uint32_t)i};
        }
    } else {
        for (int32_t id = 0; id < t->n_vocab; id++) {
            const char *s = v->str[id];
            size_t sl = v->len[id], first = n;
            if (spelled_find(v, s, sl) != id) continue; /* a later duplicate stands for it */
            for (size_t k = 1; k < sl; k++) {
                if (((uint8_t)s[k] & 0xC0) == 0x80) continue; /* split between characters */
                int32_t l = spelled_find(v, s, k), r = spelled_find(v, s + k, sl - k);
                if (l < 0 || r < 0) continue;
                if (n == cap) {
                    spm_merge *nm2 = kvs_alloc(2 * cap * sizeof *m);
                    if (!nm2) { rc = KVS_ENOMEM; goto out; }
                    memcpy(nm2, m, n * sizeof *m);
                    kvs_free(m);
                    m = nm2;
                    cap *= 2;
                }
                float sc;
                memcpy(&sc, scores + 4 * (size_t)id, 4);
                m[n++] = (spm_merge){sc, (int32_t)utf8_count(s, k),
                                     (int32_t)utf8_count(s + k, sl - k), l, r, id, 0};
            }
            qsort(m + first, n - first, sizeof *m, merge_by_ids);
        }
        for (size_t i = 0; i < n; i++) m[i].seq = (uint32_t)i;
        qsort(m, n, sizeof *m, merge_by_rank);
    }
    t->pair_mask = tok_table_mask(n);
    t->pair_key = kvs_calloc((size_t)t->pair_mask + 1, sizeof *t->pair_key);
    t->pair_rank = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_rank);
    t->pair_id = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_id);
    if (!t->pair_key || !t->pair_rank || !t->pair_id) { rc = KVS_ENOMEM; goto out; }
    for (size_t i = 0; i < n; i++) tok_pair_insert(t, m[i].l, m[i].r, (uint32_t)i, m[i].id);
    rc = 0;
out:
    kvs_free(m);
    return rc;
}

/* The SPM parts of the context: byte tokens, <unk>, the prefix flag and the merges. */
int tok_spm_load(tok_ctx *t, const gguf_ctx *g)
{
    int rc;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int32_t id = t->n_vocab - 1; id >= 0; id--) { /* the first of duplicates wins */
        size_t l;
        const char *p = tok_piece_ptr(t, id, &l);
        if (t->type[id] == TT_BYTE && l == 1) t->byte_id[(uint8_t)p[0]] = id;
    }
    if ((rc = tok_read_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk))) return rc;
    for (int32_t id = 0; id < t->n_vocab && t->unk < 0; id++)
        if (t->type[id] == TT_UNKNOWN) t->unk = id;
    int flag = 1;
    rc = gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &flag);
    if (rc && rc != KVS_ENOTFOUND) return rc;
    t->add_space_prefix = rc == KVS_ENOTFOUND || flag;
    t->strip_lead = t->add_space_prefix;

    spelled v = {0};
    v.str = kvs_alloc((size_t)t->n_vocab * sizeof *v.str);
    v.len = kvs_alloc((size_t)t->n_vocab * sizeof *v.len);
    v.mask = tok_table_mask((size_t)t->n_vocab);
    v.ht = kvs_alloc(((size_t)v.mask + 1) * sizeof *v.ht);
    if (!v.str || !v.len || !v.ht) { rc = KVS_ENOMEM; goto out; }
    memset(v.ht, 0xFF, ((size_t)v.mask + 1) * sizeof *v.ht);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)id, &v.str[id],
                                   &v.len[id])))
            goto out;
        uint32_t i = (uint32_t)tok_hash_bytes(v.str[id], v.len[id]) & v.mask;
        for (;; i = (i + 1) & v.mask) { /* later duplicates win, as in a Python dict */
            int32_t o = v.ht[i];
            if (o < 0 || (v.len[o] == v.len[id] && memcmp(v.str[o], v.str[id], v.len[id]) == 0)) {
                v.ht[i] = id;
                break;
            }
        }
    }
    rc = spm_merges(t, g, &v);
out:
    kvs_free(v.str);
    kvs_free(v.len);
    kvs_free(v.ht);
    return rc;
}

/* SentencePiece (tokenizer.ggml.model = llama), as Hugging Face's LlamaTokenizer runs it: the
 * segment's spaces become "▁" (here the other way round: the vocabulary's "▁" are spaces in
 * piece_buf, so a "▁" typed in the text becomes a space), one "▁" is prepended when the segment
 * starts the text and does not start with one already (Metaspace, prepend_scheme "first"), then
 * BPE over characters: a character with no token becomes its <0xXX> byte tokens (byte
 * fallback), or <unk> when a byte token is missing (consecutive unknowns fuse into one). */
int tok_spm_segment(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    const tok_ctx *t = e->t;
    if (a >= b) return 0;
    size_t n = b - a;
    uint8_t *w = kvs_alloc(n + 1);
    if (!w) return KVS_ENOMEM;
    size_t m = 0;
    for (size_t i = a; i < b;) {
        if (i + 2 < b && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
            w[m++] = ' ';
            i += 3;
        } else {
            w[m++] = s[i++];
        }
    }
    if (a == 0 && t->add_space_prefix && w[0] != ' ') {
        memmove(w + 1, w, m);
        w[0] = ' ';
        m++;
    }
    int rc = tok_grow_scratch(e, m); /* at most one symbol per byte */
    if (rc) { kvs_free(w); return rc; }
    size_t k = 0;
    int prev_unk = 0;
    for (size_t i = 0; i < m;) {
        size_t l;
        uint32_t cp;
        if (tok_utf8_seq(w + i, m - i, &l, &cp) != U8_VALID) l = 1;
        int32_t id = tok_vocab_lookup(t, (const char *)w + i, l);
        if (id >= 0) {
            e->sym[k++] = id;
            prev_unk = 0;
        } else {
            size_t j = 0;
            while (j < l && t->byte_id[w[i + j]] >= 0) j++;
            if (j == l) {
                for (j = 0; j < l; j++) e->sym[k++] = t->byte_id[w[i + j]];
                prev_unk = 0;
            } else if (t->unk >= 0 && !prev_unk) {
                e->sym[k++] = t->unk;
                prev_unk = 1;
            }
        }
        i += l;
    }
    kvs_free(w);
    tok_bpe_run(e, k);
    return 0;
}

/* SentencePiece decoding, as Hugging Face's ByteFallback decoder does it: a run of byte tokens
 * (<0xE4><0xB8><0xAD>) becomes its bytes when the whole run is valid UTF-8, else one U+FFFD per
 * byte token of the run. The run is held back until a token that is not a byte ends it (or the
 * flush), since a bad byte late in the run replaces the whole run. When the run fills
 * SPM_RUN_MAX bytes, its complete characters go out and the rest stays (or, if it starts with
 * an invalid byte, all of it goes out as U+FFFD): only a run of more than SPM_RUN_MAX bytes
 * with a bad byte after the first SPM_RUN_MAX decodes otherwise than Hugging Face's. */

static int utf8_all_valid(const uint8_t *b, size_t n)
{
    size_t l;
    uint32_t cp;
    for (size_t i = 0; i < n; i += l)
        if (tok_utf8_seq(b + i, n - i, &l, &cp) != U8_VALID) return 0;
    return 1;
}

void tok_spm_close_run(const uint8_t *run, int n, sink *k)
{
    if (n <= 0) return;
    if (utf8_all_valid(run, (size_t)n)) {
        tok_sink_put(k, run, (size_t)n);
        return;
    }
    for (int i = 0; i < n; i++) tok_sink_put(k, TOK_REPLACEMENT, 3);
}

void tok_spm_feed(const tok_ctx *t, int32_t id, uint8_t *run, int *n, sink *k)
{
    size_t l;
    const char *p = tok_piece_ptr(t, id, &l);
    if (t->type[id] == TT_BYTE && l == 1) {
        if (*n == SPM_RUN_MAX) {
            size_t ok = 0, sl;
            uint32_t cp;
            while (ok < (size_t)*n && tok_utf8_seq(run + ok, (size_t)*n - ok, &sl, &cp) == U8_VALID)
                ok += sl;
            if (ok == 0) ok = (size_t)*n; /* invalid from the start: all of it is U+FFFD */
            tok_spm_close_run(run, (int)ok, k);
            memmove(run, run + ok, (size_t)*n - ok);
            *n -= (int)ok;
        }
        run[(*n)++] = (uint8_t)p[0];
        return;
    }
    tok_spm_close_run(run, *n, k);
    *n = 0;
    tok_sink_put(k, p, l);
}
