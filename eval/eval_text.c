/* eval_text.c — text sources of the quality harness: files, tokenizing, and the two retrieval
 * prompts (METHODS.md, "How we judge quality", item 2).
 *
 * passkey (Mohtashami & Jaggi 2023): an intro, the repetitive filler "The grass is green. The
 *   sky is blue. ...", and at the chosen depth "The pass key is 68142. Remember it. 68142 is
 *   the pass key."; question "What is the pass key? The pass key is".
 * needle (RULER's niah_single_2 shape, Hsieh et al. 2024): an intro, natural text (a
 *   public-domain haystack file), and at the chosen depth "One of the special magic numbers
 *   for quiet-harbor is: 4619273."; question "What is the special magic number for
 *   quiet-harbor mentioned in the provided text? The special magic number for quiet-harbor
 *   mentioned in the provided text is".
 * The needle always sits at a sentence boundary of the haystack. The context (intro +
 * haystack + needle) is what prefill compression sees; the question comes after it, whole. */
#include "eval/eval.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

int eval_read_file(const char *cmd, const char *path, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kvsieve %s: cannot open %s: %s\n", cmd, path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 4096 + 1 > cap) {
            char *b = realloc(buf, cap * 2);
            if (!b) { free(buf); buf = NULL; break; }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        free(buf);
        fprintf(stderr, "kvsieve %s: cannot read %s%s\n", cmd, path, buf ? "" : ": out of memory");
        return -1;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

int eval_tokenize(kvs_engine *e, const char *text, size_t len, int add_bos, int32_t **ids,
                  int *n)
{
    *ids = NULL;
    *n = 0;
    int need = tok_encode(e->tok, text, len, 0, NULL, 0);
    if (need < 0) return need;
    int bos = add_bos && tok_add_bos(e->tok) && tok_bos(e->tok) >= 0;
    int32_t *v = malloc(((size_t)need + 1) * sizeof *v);
    if (!v) return kvs_error(KVS_ENOMEM, "out of memory tokenizing %zu bytes", len);
    if (bos) v[0] = tok_bos(e->tok);
    int got = tok_encode(e->tok, text, len, 0, v + bos, need);
    if (got != need) {
        free(v);
        return got < 0 ? got : kvs_error(KVS_EINVAL, "tokenizer gave %d then %d ids", need, got);
    }
    *ids = v;
    *n = need + bos;
    return 0;
}

/* Encode with special tokens parsed (chat markers), appended to *v (grown). */
static int append_text(kvs_engine *e, const char *text, int special, int32_t **v, int *n,
                       int *cap)
{
    int need = tok_encode(e->tok, text, strlen(text), special, NULL, 0);
    if (need < 0) return need;
    if (*n + need > *cap) {
        int c = KVS_MAX(*cap * 2, *n + need + 64);
        int32_t *b = realloc(*v, (size_t)c * sizeof *b);
        if (!b) return kvs_error(KVS_ENOMEM, "out of memory building a prompt");
        *v = b;
        *cap = c;
    }
    tok_encode(e->tok, text, strlen(text), special, *v + *n, need);
    *n += need;
    return 0;
}

int eval_token_ends_sentence(kvs_engine *e, int32_t id)
{
    const char *b;
    size_t n;
    if (tok_piece(e->tok, id, &b, &n) || n == 0) return 0;
    while (n > 0 && b[n - 1] == ' ') n--;
    if (n == 0) return 0;
    char c = b[n - 1];
    return c == '.' || c == '!' || c == '?' || c == ':' || c == '\n';
}

void eval_prompt_free(eval_prompt *p)
{
    free(p->ctx);
    free(p->question);
    memset(p, 0, sizeof *p);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static const char *const NEEDLE_WORDS[] = {
    "quiet-harbor", "amber-falcon", "silver-meadow", "crimson-lantern", "hollow-summit",
    "gentle-orchard", "rapid-glacier", "velvet-canyon", "brave-comet", "misty-island",
    "copper-violin", "golden-prairie", "frozen-lagoon", "scarlet-compass", "humble-cedar",
    "bright-pebble"};
#define PASSKEY_DIGITS 5
#define NEEDLE_DIGITS 7

static const char PASSKEY_INTRO[] =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.";
static const char PASSKEY_FILLER[] =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
static const char NEEDLE_INTRO[] =
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the numbers afterwards.\n";

/* The chat template split around the user's text: head (system + user start), tail
 * (end of turn + assistant start). */
static int chat_parts(kvs_engine *e, char *head, size_t hsize, char *tail, size_t tsize)
{
    static const char MARK[] = "@@KVSIEVE_USER@@";
    char buf[4096];
    int n = tok_chat_prompt(e->tok, NULL, MARK, buf, sizeof buf);
    if (n < 0) return n;
    if ((size_t)n >= sizeof buf) return kvs_error(KVS_ERANGE, "chat template too long");
    char *m = strstr(buf, MARK);
    if (!m) return kvs_error(KVS_EFORMAT, "chat template lost the user text");
    *m = '\0';
    const char *t = m + strlen(MARK);
    if (strlen(buf) >= hsize || strlen(t) >= tsize)
        return kvs_error(KVS_ERANGE, "chat template too long");
    memcpy(head, buf, strlen(buf) + 1);
    memcpy(tail, t, strlen(t) + 1);
    return 0;
}

/* The question part for a task with its key word / answer. */
static int build_question(kvs_engine *e, eval_task task, int chat, const char *word,
                          int32_t **q, int *nq)
{
    char text[512], head[2048], tail[512];
    int cap = 0, rc;
    *q = NULL;
    *nq = 0;
    if (chat && (rc = chat_parts(e, head, sizeof head, tail, sizeof tail))) return rc;
    if (task == EVAL_PASSKEY)
        snprintf(text, sizeof text, "\nWhat is the pass key?");
    else
        snprintf(text, sizeof text, "\nWhat is the special magic number for %s mentioned in "
                 "the provided text?", word);
    if ((rc = append_text(e, text, 0, q, nq, &cap))) return rc;
    if (chat && (rc = append_text(e, tail, 1, q, nq, &cap))) return rc;
    if (task == EVAL_PASSKEY)
        snprintf(text, sizeof text, "%sThe pass key is", chat ? "" : " ");
    else
        snprintf(text, sizeof text, "%sThe special magic number for %s mentioned in the "
                 "provided text is", chat ? "" : " ", word);
    return append_text(e, text, 0, q, nq, &cap);
}

int eval_question_tokens(kvs_engine *e, eval_task task, int chat)
{
    int32_t *q;
    int nq;
    /* The longest key word gives the longest question. */
    const char *longest = NEEDLE_WORDS[0];
    for (size_t i = 0; i < sizeof NEEDLE_WORDS / sizeof *NEEDLE_WORDS; i++)
        if (strlen(NEEDLE_WORDS[i]) > strlen(longest)) longest = NEEDLE_WORDS[i];
    int rc = build_question(e, task, chat, longest, &q, &nq);
    free(q);
    return rc ? rc : nq + 8; /* + slack: word tokenization varies */
}

int eval_make_prompt(kvs_engine *e, eval_task task, const int32_t *haystack, int n_haystack,
                     int n_ctx, double depth, uint64_t seed, int chat, eval_prompt *out)
{
    memset(out, 0, sizeof *out);
    uint64_t rng = seed * 0x2545F4914F6CDD1Dull + 12345;
    char head[2048] = "", tail[512], needle[256];
    const char *word = NEEDLE_WORDS[splitmix(&rng) % (sizeof NEEDLE_WORDS / sizeof *NEEDLE_WORDS)];
    int digits = task == EVAL_PASSKEY ? PASSKEY_DIGITS : NEEDLE_DIGITS;
    uint64_t lo = 1, span;
    for (int i = 1; i < digits; i++) lo *= 10;
    span = 9 * lo;
    snprintf(out->answer, sizeof out->answer, "%llu",
             (unsigned long long)(lo + splitmix(&rng) % span));
    if (task == EVAL_PASSKEY)
        snprintf(needle, sizeof needle, " The pass key is %s. Remember it. %s is the pass key.",
                 out->answer, out->answer);
    else
        snprintf(needle, sizeof needle, " One of the special magic numbers for %s is: %s.", word,
                 out->answer);
    int rc;
    if (chat && (rc = chat_parts(e, head, sizeof head, tail, sizeof tail))) return rc;

    int32_t *pre = NULL, *ndl = NULL, *fill = NULL;
    int n_pre = 0, cap_pre = 0, n_ndl = 0, cap_ndl = 0, n_fill = 0, cap_fill = 0;
    if (chat && (rc = append_text(e, head, 1, &pre, &n_pre, &cap_pre))) goto fail;
    int n_template = n_pre;
    if (!chat && tok_add_bos(e->tok) && tok_bos(e->tok) >= 0) {
        if (!(pre = malloc(64 * sizeof *pre))) { rc = kvs_error(KVS_ENOMEM, "out of memory"); goto fail; }
        cap_pre = 64;
        pre[n_pre++] = tok_bos(e->tok);
    }
    if ((rc = append_text(e, task == EVAL_PASSKEY ? PASSKEY_INTRO : NEEDLE_INTRO, 0, &pre,
                          &n_pre, &cap_pre)))
        goto fail;
    if ((rc = append_text(e, needle, 0, &ndl, &n_ndl, &cap_ndl))) goto fail;
    if (task == EVAL_PASSKEY) {
        if ((rc = append_text(e, PASSKEY_FILLER, 0, &fill, &n_fill, &cap_fill))) goto fail;
        haystack = fill;
        n_haystack = n_fill;
    }
    if (!haystack || n_haystack < 1) {
        rc = kvs_error(KVS_EINVAL, "the needle task needs a haystack text (--haystack FILE)");
        goto fail;
    }
    int F = n_ctx - n_pre - n_ndl; /* haystack tokens in the context */
    if (F < 1) {
        rc = kvs_error(KVS_ERANGE, "context of %d tokens is too short for the intro and needle "
                       "(%d tokens)", n_ctx, n_pre + n_ndl);
        goto fail;
    }
    /* Needle position: the sentence boundary of the haystack nearest to depth * F. */
    double target = depth * F;
    int best = 0;
    double best_d = target;
    for (int i = 1; i <= F; i++) {
        int boundary = i == F || eval_token_ends_sentence(e, haystack[(i - 1) % n_haystack]);
        if (!boundary) continue;
        double d = i > target ? i - target : target - i;
        if (d < best_d) { best_d = d; best = i; }
    }
    out->ctx = malloc((size_t)n_ctx * sizeof *out->ctx);
    if (!out->ctx) { rc = kvs_error(KVS_ENOMEM, "out of memory"); goto fail; }
    int k = 0;
    memcpy(out->ctx, pre, (size_t)n_pre * sizeof *pre);
    k = n_pre;
    for (int i = 0; i < best; i++) out->ctx[k++] = haystack[i % n_haystack];
    out->needle_at = k;
    out->n_needle = n_ndl;
    memcpy(out->ctx + k, ndl, (size_t)n_ndl * sizeof *ndl);
    k += n_ndl;
    for (int i = best; i < F; i++) out->ctx[k++] = haystack[i % n_haystack];
    out->n_ctx = k;
    out->n_template = n_template;
    if ((rc = build_question(e, task, chat, word, &out->question, &out->n_question))) goto fail;
    free(pre); free(ndl); free(fill);
    return 0;
fail:
    free(pre); free(ndl); free(fill);
    eval_prompt_free(out);
    return rc;
}
