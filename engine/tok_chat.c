/* tok_chat.c — chat templates recognised in tokenizer.chat_template (ChatML, Llama 3) and
 * the prompt text for one user turn; other templates are refused by name. */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "tok_internal.h"

/* Chat templates kvsieve renders, recognised in tokenizer.chat_template by their markers:
 * ChatML (<|im_start|>role\n...<|im_end|>\n: Qwen2.5, SmolLM2) and Llama 3's
 * (<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>, contents trimmed). Llama 3.1's
 * and later templates (a dated system preamble, tool calls) and every other template are
 * CHAT_UNKNOWN: tok_chat_prompt refuses them rather than guess. */

static int contains(const char *s, size_t n, const char *what)
{
    size_t w = strlen(what);
    for (size_t i = 0; i + w <= n; i++)
        if (memcmp(s + i, what, w) == 0) return 1;
    return 0;
}

int tok_template_kind(const char *tpl, size_t len, char *head, size_t hcap)
{
    if (contains(tpl, len, "<|im_start|>") && contains(tpl, len, "<|im_end|>")) return CHAT_CHATML;
    if (contains(tpl, len, "<|start_header_id|>") && contains(tpl, len, "<|eot_id|>") &&
        !contains(tpl, len, "Cutting Knowledge Date") && !contains(tpl, len, "tools"))
        return CHAT_LLAMA3;
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < hcap; i++) /* printable ASCII, for the message */
        head[n++] = tpl[i] >= 0x20 && tpl[i] < 0x7F ? tpl[i] : ' ';
    head[n] = 0;
    return CHAT_UNKNOWN;
}

/* The default system message of a ChatML template: the literal text between
 * "<|im_start|>system\n" and "<|im_end|>" when the template writes one out. */
char *tok_template_default_system(const char *tpl, size_t len)
{
    static const char head[] = "<|im_start|>system";
    for (size_t i = 0; i + sizeof head - 1 <= len; i++) {
        if (memcmp(tpl + i, head, sizeof head - 1) != 0) continue;
        size_t j = i + sizeof head - 1;
        if (j < len && tpl[j] == '\n') j += 1;
        else if (j + 1 < len && tpl[j] == '\\' && tpl[j + 1] == 'n') j += 2;
        else continue;
        size_t k = j;
        while (k + 10 <= len && memcmp(tpl + k, "<|im_end|>", 10) != 0) {
            char c = tpl[k];
            if (c == '\'' || c == '"' || c == '{' || c == '}' || c == '\\') break;
            k++;
        }
        if (k + 10 > len || memcmp(tpl + k, "<|im_end|>", 10) != 0 || k == j) continue;
        char *s = malloc(k - j + 1);
        if (!s) return NULL;
        memcpy(s, tpl + j, k - j);
        s[k - j] = 0;
        return s;
    }
    return NULL;
}

/* ---- chat template ----------------------------------------------------------------------- */

/* Python's str.isspace() (what Jinja's trim strips): White_Space plus U+001C..U+001F. */
static int py_space(uint32_t c)
{
    return tok_is_space_cp(c) || (c >= 0x1C && c <= 0x1F);
}

/* s with the leading and trailing Python whitespace cut off, into (*b, *n). */
static void py_trim(const char *s, const char **b, size_t *n)
{
    size_t len = strlen(s), i = 0, end = len, l;
    uint32_t cp;
    while (i < len && tok_utf8_seq((const uint8_t *)s + i, len - i, &l, &cp) == U8_VALID &&
           py_space(cp))
        i += l;
    while (end > i) {
        size_t j = end - 1;
        while (j > i && ((uint8_t)s[j] & 0xC0) == 0x80) j--;
        if (tok_utf8_seq((const uint8_t *)s + j, end - j, &l, &cp) != U8_VALID || j + l != end ||
            !py_space(cp))
            break;
        end = j;
    }
    *b = s + i;
    *n = end - i;
}

static void put_str(sink *k, const char *s) { tok_sink_put(k, s, strlen(s)); }

int tok_chat_prompt(const tok_ctx *t, const char *system, const char *user, char *out,
                    size_t cap)
{
    if (!t || !user || (cap > 0 && !out))
        return kvs_error(KVS_EINVAL, "tok_chat_prompt: bad arguments");
    sink k = {out, cap ? cap - 1 : 0, 0, 0};
    switch (t->chat) {
    case CHAT_CHATML:
        if (t->im_start < 0 || t->im_end < 0)
            return kvs_error(KVS_EUNSUPPORTED, "the chat template is ChatML but the vocabulary "
                             "has no <|im_start|>/<|im_end|>");
        if (!system) system = t->default_system;
        if (system) {
            put_str(&k, "<|im_start|>system\n");
            put_str(&k, system);
            put_str(&k, "<|im_end|>\n");
        }
        put_str(&k, "<|im_start|>user\n");
        put_str(&k, user);
        put_str(&k, "<|im_end|>\n<|im_start|>assistant\n");
        break;
    case CHAT_LLAMA3: {
        /* bos_token + each message's header and trimmed content; the BOS text is left out when
         * the caller adds the BOS id (tok_add_bos), so the ids come out once */
        if (t->bos < 0)
            return kvs_error(KVS_EUNSUPPORTED, "the Llama 3 chat template starts with the BOS "
                             "token, and the file names none");
        if (!t->add_bos) {
            size_t bl;
            const char *bp = tok_piece_ptr(t, t->bos, &bl);
            tok_sink_put(&k, bp, bl);
        }
        const char *b;
        size_t n;
        if (system) {
            put_str(&k, "<|start_header_id|>system<|end_header_id|>\n\n");
            py_trim(system, &b, &n);
            tok_sink_put(&k, b, n);
            put_str(&k, "<|eot_id|>");
        }
        put_str(&k, "<|start_header_id|>user<|end_header_id|>\n\n");
        py_trim(user, &b, &n);
        tok_sink_put(&k, b, n);
        put_str(&k, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    }
    case CHAT_UNKNOWN:
        return kvs_error(KVS_EUNSUPPORTED, "the model's chat template (tokenizer.chat_template) "
                         "is not one kvsieve renders (ChatML, Llama 3); it begins \"%s\"",
                         t->chat_head);
    default:
        return kvs_error(KVS_EUNSUPPORTED, "the model has no chat template "
                         "(tokenizer.chat_template) and its vocabulary is not ChatML's");
    }
    if (k.n > (size_t)INT_MAX) return kvs_error(KVS_ERANGE, "chat prompt is too long");
    if (cap) out[KVS_MIN(k.n, cap - 1)] = 0;
    return (int)k.n;
}
