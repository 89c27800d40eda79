/* tok_pretok.c — the pre-tokenizer regexes that tokenizer.ggml.pre names, written out by
 * hand: gpt2, smollm (digits alone first), qwen2 and llama-bpe. */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "tok_internal.h"

/* End of the GPT-2 regex match starting at byte i of s[.. end):
 *   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
 * Alternatives are tried in this order, as the regex engine does; none needs backtracking
 * except \s+(?!\S), which gives back the last whitespace character when a non-space follows. */
static size_t gpt2_match(const uint8_t *s, size_t i, size_t end)
{
    if (s[i] == '\'' && i + 1 < end) {
        uint8_t c1 = s[i + 1], c2 = i + 2 < end ? s[i + 2] : 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return i + 3;
    }
    size_t start = i;
    uchar u = tok_uchar_at(s, i, end);
    if (s[i] == ' ' && i + 1 < end) { /* " ?" followed by a letter / number / other run */
        uchar v = tok_uchar_at(s, i + 1, end);
        if (v.cls != CL_SPACE) { u = v; start = i + 1; }
    }
    if (u.cls != CL_SPACE) {
        size_t j = start + u.len;
        while (j < end) {
            uchar v = tok_uchar_at(s, j, end);
            if (v.cls != u.cls) break;
            j += v.len;
        }
        return j;
    }
    size_t j = i, last = i;
    while (j < end) {
        uchar v = tok_uchar_at(s, j, end);
        if (v.cls != CL_SPACE) break;
        last = j;
        j += v.len;
    }
    if (j == end) return end;  /* \s+(?!\S) up to the end */
    if (last > i) return last; /* \s+(?!\S): all but the last, which goes with the next word */
    return j;                  /* \s+: a single whitespace character before a non-space */
}

int tok_pretok_gpt2(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    while (a < b) {
        size_t j = gpt2_match(s, a, b);
        int rc = tok_bpe_word(e, s + a, j - a);
        if (rc) return rc;
        a = j;
    }
    return 0;
}

/* smollm: every \p{N} character alone (HF Digits(individual_digits=true)), then the GPT-2 regex
 * on each stretch between them, which therefore ends where a digit starts. */
int tok_pretok_smollm(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    size_t frag = a;
    for (size_t i = a; i < b;) {
        uchar u = tok_uchar_at(s, i, b);
        if (u.cls == CL_NUMBER) {
            int rc = tok_pretok_gpt2(e, s, frag, i);
            if (!rc) rc = tok_bpe_word(e, s + i, u.len);
            if (rc) return rc;
            frag = i + u.len;
        }
        i += u.len;
    }
    return tok_pretok_gpt2(e, s, frag, b);
}

/* End of the match at byte i of s[.. end) of the regex that Qwen2 (max_digits 1) and Llama 3
 * (llama-bpe, max_digits 3) split with:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,max_digits} |
 *    ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * Alternatives in this order, as the regex engine tries them. The contractions ignore case; a
 * word takes one leading character that is not a newline, letter or number (a space, a tab, a
 * quote, a dot: " word", "\tword", ".com"); a whitespace run that holds newlines ends after
 * its last newline. */
static size_t llama3_match(const uint8_t *s, size_t i, size_t end, int max_digits)
{
    if (s[i] == '\'' && i + 1 < end) {
        uint8_t c1 = s[i + 1] | 0x20, c2 = i + 2 < end ? s[i + 2] | 0x20 : 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return i + 3;
    }
    uchar u = tok_uchar_at(s, i, end);
    size_t j = i;
    if (u.cls != CL_LETTER && u.cls != CL_NUMBER && u.cp != '\r' && u.cp != '\n' &&
        i + u.len < end && tok_uchar_at(s, i + u.len, end).cls == CL_LETTER)
        j = i + u.len; /* the one leading character of a word */
    if (j > i || u.cls == CL_LETTER) {
        while (j < end) {
            uchar v = tok_uchar_at(s, j, end);
            if (v.cls != CL_LETTER) break;
            j += v.len;
        }
        return j;
    }
    if (u.cls == CL_NUMBER) {
        j = i + u.len;
        for (int k = 1; k < max_digits && j < end; k++) {
            uchar v = tok_uchar_at(s, j, end);
            if (v.cls != CL_NUMBER) break;
            j += v.len;
        }
        return j;
    }
    uchar v = u;
    j = i;
    if (s[i] == ' ' && i + 1 < end) { v = tok_uchar_at(s, i + 1, end); j = i + 1; }
    if (v.cls == CL_OTHER) { /* " ?[^\s\p{L}\p{N}]+[\r\n]*" */
        j += v.len;
        while (j < end) {
            uchar w = tok_uchar_at(s, j, end);
            if (w.cls != CL_OTHER) break;
            j += w.len;
        }
        while (j < end && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    /* u is whitespace: the run [i, j), its last character at `last`, after its last newline nl */
    size_t last = i, nl = 0;
    j = i;
    while (j < end) {
        uchar w = tok_uchar_at(s, j, end);
        if (w.cls != CL_SPACE) break;
        last = j;
        j += w.len;
        if (w.cp == '\r' || w.cp == '\n') nl = j;
    }
    if (nl) return nl;         /* \s*[\r\n]+ */
    if (j == end) return end;  /* \s+(?!\S) up to the end */
    if (last > i) return last; /* \s+(?!\S): all but the last, which goes with the next word */
    return j;                  /* \s+ */
}

/* BPE of one piece, or the piece's own token when the vocabulary has it (llama-bpe's
 * ignore_merges: Llama 3 and tiktoken look a whole piece up before merging). */
static int bpe_piece(encoder *e, const uint8_t *w, size_t n)
{
    if (e->t->ignore_merges && n > 1) {
        int32_t id = tok_vocab_lookup(e->t, (const char *)w, n);
        if (id >= 0 && !tok_is_special_type(e->t->type[id])) {
            tok_emit(e, id);
            return 0;
        }
    }
    return tok_bpe_word(e, w, n);
}

int tok_pretok_llama3(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    int max_digits = e->t->pre == PRE_LLAMA3 ? 3 : 1;
    while (a < b) {
        size_t j = llama3_match(s, a, b, max_digits);
        int rc = bpe_piece(e, s + a, j - a);
        if (rc) return rc;
        a = j;
    }
    return 0;
}
