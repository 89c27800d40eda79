/* openai.c — the OpenAI API mapped onto the engine loop (docs/API.md, "OpenAI-compatible HTTP
 * API"): request JSON (jansson) -> prompt ids + sched_params, the loop's events -> completion
 * objects or server-sent event chunks, /v1/models, /tokenize, /detokenize.
 *
 * A request with n choices (and, for completions, several prompts) is one job: one submit per
 * choice, one mutex and condition variable. The engine thread only appends to the job; the
 * connection thread waits on it, watches the socket, and builds every JSON object. */
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"
#include "http_internal.h"
#include "memory/policy.h"
#include "request_policy.h"

#define OAI_MAX_N 16       /* choices of one request */
#define OAI_MAX_JOBS 64    /* prompts x n */
#define OAI_MAX_MESSAGES 1024

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) len = 2, min = 0x80;
    else if ((c & 0xf0) == 0xe0) len = 3, min = 0x800;
    else if ((c & 0xf8) == 0xf0) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned v = c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    return len;
}

/* A JSON string of n bytes, invalid UTF-8 replaced by U+FFFD (token pieces need not be
 * valid UTF-8 on their own). */
static json_t *jstr(const char *s, size_t n)
{
    char small[256] = "";
    char *buf = n * 3 + 1 <= sizeof small ? small : malloc(n * 3 + 1);
    if (!buf) return json_string("");
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k && !(k == 1 && s[i] == 0)) {
            memcpy(buf + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(buf + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    buf[o] = 0;
    json_t *j = json_string(buf);
    if (buf != small) free(buf);
    return j ? j : json_string("");
}

/* ---- the job: choices fed by the engine thread -------------------------------------------- */

typedef struct oai_tok {
    int32_t id;
    uint32_t off, len;       /* its text in the choice's text */
    float lp;
    int n_top;
    int32_t top_ids[SCHED_MAX_TOP_LOGPROBS];
    float top_lp[SCHED_MAX_TOP_LOGPROBS];
} oai_tok;

typedef struct oai_job oai_job;

typedef struct oai_choice {
    oai_job *job;
    int index, prompt;
    uint64_t id;
    int submitted, done, fin_sent;
    char *text;
    size_t n_text, cap_text, sent_text;
    oai_tok *toks;
    int n_toks, cap_toks, sent_toks;
    int n_generated;
    double t_last;
    sched_event fin;
    char fin_msg[256];
} oai_choice;

struct oai_job {
    srv_http *h;
    int tenant;
    const char *tenant_name;
    int chat, stream, include_usage;
    int logprobs, top_logprobs; /* logprobs: 0 off, 1 on */
    char id[64];
    long created;
    char policy[SCHED_NAME_MAX];
    int fd;
    double t_submit;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    oai_choice ch[OAI_MAX_JOBS];
    int n_ch;
    int n_pending;           /* submitted, FINISH not yet seen */
    /* streaming */
    int role_sent, ended;
    char *out;
    size_t n_out, off_out, cap_out;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int append_text(oai_choice *c, const char *s, size_t n)
{
    if (grow((void **)&c->text, &c->cap_text, c->n_text + n + 1, 1)) return -1;
    if (n) memcpy(c->text + c->n_text, s, n);
    c->n_text += n;
    c->text[c->n_text] = 0;
    return 0;
}

/* Engine thread. Must not touch the job after the unlock of a FINISH (it may be freed). */
static void on_event(void *user, const sched_event *ev)
{
    oai_choice *c = user;
    oai_job *j = c->job;
    srv_metrics *m = j->h->o.metrics;
    int tenant = j->tenant;
    char policy[SCHED_NAME_MAX];
    double now = kvs_now(), ttft = -1, itl = -1, e2e = now - j->t_submit;
    pthread_mutex_lock(&j->mu);
    if (ev->type == SCHED_EV_TOKEN) {
        if (c->n_generated++ == 0) ttft = now - j->t_submit;
        else itl = now - c->t_last;
        c->t_last = now;
        size_t cap = (size_t)c->cap_toks;
        size_t off = c->n_text;
        if (!grow((void **)&c->toks, &cap, (size_t)c->n_toks + 1, sizeof *c->toks) &&
            !append_text(c, ev->text ? ev->text : "", ev->text ? ev->text_len : 0)) {
            c->cap_toks = (int)cap;
            oai_tok *t = &c->toks[c->n_toks++];
            t->id = ev->token;
            t->off = (uint32_t)off;
            t->len = (uint32_t)(c->n_text - off);
            t->lp = ev->logprob;
            t->n_top = ev->has_logprob ? ev->n_top : 0;
            memcpy(t->top_ids, ev->top_ids, (size_t)t->n_top * sizeof *t->top_ids);
            memcpy(t->top_lp, ev->top_logprobs, (size_t)t->n_top * sizeof *t->top_lp);
        } else {
            c->cap_toks = (int)cap;
        }
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
        if (ttft >= 0) srv_metrics_ttft(m, tenant, ttft);
        if (itl >= 0) srv_metrics_itl(m, tenant, itl);
        return;
    }
    /* Metrics first: once n_pending drops the client may get its answer and read them. */
    pthread_mutex_unlock(&j->mu);
    srv_metrics_finish(m, tenant, j->policy, ev, e2e);
    pthread_mutex_lock(&j->mu);
    if (ev->text_len) append_text(c, ev->text, ev->text_len);
    c->fin = *ev;
    c->fin.text = NULL;
    c->fin.message = NULL;
    snprintf(c->fin_msg, sizeof c->fin_msg, "%s", ev->message ? ev->message : "");
    c->done = 1;
    snprintf(policy, sizeof policy, "%s", j->policy);
    int verbose = j->h->o.verbose;
    j->n_pending--;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (verbose)
        fprintf(stderr, "kvsieve serve: http request %llu finish=%d prompt=%d completion=%d "
                "e2e=%.3fs policy=%s\n", (unsigned long long)ev->request_id, ev->finish_reason,
                ev->prompt_tokens, ev->completion_tokens, ev->e2e_s, policy);
}

static void job_timedwait(oai_job *j, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

/* Abort every unfinished choice (never with j->mu held: the engine thread takes it inside
 * the loop's callbacks) and wait for their FINISH events. */
static void job_abort_and_wait(oai_job *j)
{
    uint64_t ids[OAI_MAX_JOBS];
    int n = 0;
    pthread_mutex_lock(&j->mu);
    for (int i = 0; i < j->n_ch; i++)
        if (j->ch[i].submitted && !j->ch[i].done) ids[n++] = j->ch[i].id;
    pthread_mutex_unlock(&j->mu);
    for (int i = 0; i < n; i++) kvs_loop_abort(j->h->o.loop, ids[i], NULL);
    pthread_mutex_lock(&j->mu);
    while (j->n_pending > 0) job_timedwait(j, 50);
    pthread_mutex_unlock(&j->mu);
}

static void job_free(oai_job *j)
{
    if (!j) return;
    for (int i = 0; i < j->n_ch; i++) {
        free(j->ch[i].text);
        free(j->ch[i].toks);
    }
    free(j->out);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* ---- request parsing ---------------------------------------------------------------------- */

typedef struct oai_prompt {
    int32_t *ids;
    int n;
} oai_prompt;

typedef struct oai_parsed {
    oai_prompt prompts[OAI_MAX_JOBS];
    int n_prompts;
    int n;
    int max_tokens;          /* -1: default */
    int stream, include_usage, logprobs, top_logprobs, has_seed;
    uint64_t seed;
    sched_params p;
} oai_parsed;

static void parsed_free(oai_parsed *o)
{
    for (int i = 0; i < o->n_prompts; i++) free(o->prompts[i].ids);
}

static int __attribute__((format(printf, 3, 4)))
bad(srv_http_resp *r, const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_http_error(r, 400, param, "%s", msg);
    return -1;
}
#define BAD(param, ...) bad(r, param, __VA_ARGS__)

static int bad_json(srv_http_resp *r, const json_error_t *e)
{
    if (strstr(e->text, "JSON_ALLOW_NUL"))
        return BAD(NULL, "the body is not valid here: a string holds a NUL character (\\u0000) "
                   "(line %d, column %d)", e->line, e->column);
    char safe[400];
    srv_sanitize(e->text, strlen(e->text), safe, sizeof safe);
    return BAD(NULL, "the body is not valid JSON: %s (line %d, column %d)", safe, e->line,
               e->column);
}

/* Text -> ids (BOS first when the model asks for one). */
static int encode(const srv_http_req *q, srv_http_resp *r, const char *text, size_t len,
                  int special, int bos_ok, oai_prompt *out)
{
    const tok_ctx *tok = q->h->o.engine->tok;
    int n = tok_encode(tok, text, len, special, NULL, 0);
    if (n < 0) return BAD("prompt", "tokenizer: %s", kvs_last_error());
    int bos = bos_ok && tok_add_bos(tok) && tok_bos(tok) >= 0;
    out->ids = malloc(((size_t)n + 1) * sizeof *out->ids);
    if (!out->ids) return srv_http_error(r, 500, NULL, "out of memory"), -1;
    if (bos) out->ids[0] = tok_bos(tok);
    tok_encode(tok, text, len, special, out->ids + bos, n);
    out->n = n + bos;
    return 0;
}

static int token_array(srv_http_resp *r, json_t *a, const char *param, int n_vocab,
                       oai_prompt *out)
{
    size_t n = json_array_size(a);
    out->ids = malloc((n ? n : 1) * sizeof *out->ids);
    if (!out->ids) return srv_http_error(r, 500, NULL, "out of memory"), -1;
    out->n = (int)n;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *v = json_array_get(a, i);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : 0;
        if (!json_is_integer(v))
            rc = BAD(param, "%s[%zu] must be a token id (integer)", param, i);
        else if (id < 0 || id >= n_vocab)
            rc = BAD(param, "%s[%zu] = %lld is outside the vocabulary [0, %d)", param, i,
                     (long long)id, n_vocab);
        else out->ids[i] = (int32_t)id;
    }
    if (rc) { /* the caller owns nothing on failure */
        free(out->ids);
        out->ids = NULL;
        out->n = 0;
    }
    return rc;
}

/* Message content: a string, or an array of {"type": "text", "text": ...} parts. Appended to
 * *buf. */
static int message_text(srv_http_resp *r, json_t *content, size_t mi, char **buf, size_t *n,
                        size_t *cap)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", mi);
    const char *parts[256];
    size_t lens[256], np = 0;
    if (json_is_string(content)) {
        parts[0] = json_string_value(content);
        lens[0] = json_string_length(content);
        np = 1;
    } else if (json_is_array(content)) {
        if (json_array_size(content) > 256) return BAD(param, "%s has over 256 parts", param);
        size_t i;
        json_t *part;
        json_array_foreach(content, i, part) {
            json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
            if (!json_is_object(part) || !json_is_string(type) ||
                strcmp(json_string_value(type), "text") || !json_is_string(text))
                return BAD(param, "%s[%zu]: only parts {\"type\": \"text\", \"text\": ...} are "
                           "supported", param, i);
            parts[np] = json_string_value(text);
            lens[np++] = json_string_length(text);
        }
    } else if (!json_is_null(content)) {
        return BAD(param, "%s must be a string or an array of text parts", param);
    }
    for (size_t i = 0; i < np; i++) {
        if (grow((void **)buf, cap, *n + lens[i] + 1, 1)) return -1;
        memcpy(*buf + *n, parts[i], lens[i]);
        *n += lens[i];
        (*buf)[*n] = 0;
    }
    return 0;
}

static int append_str(char **buf, size_t *n, size_t *cap, const char *s, size_t len)
{
    if (grow((void **)buf, cap, *n + len + 1, 1)) return -1;
    memcpy(*buf + *n, s, len);
    *n += len;
    (*buf)[*n] = 0;
    return 0;
}

/* messages -> the ChatML prompt of the model's template (system / user / assistant turns, the
 * template's default system message when the first turn is not a system one, then the
 * assistant prompt), encoded with special tokens parsed like gRPC's chat. */
static int chat_prompt(const srv_http_req *q, srv_http_resp *r, json_t *msgs, oai_prompt *out)
{
    const tok_ctx *tok = q->h->o.engine->tok;
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return BAD("messages", "messages must be a non-empty array");
    if (json_array_size(msgs) > OAI_MAX_MESSAGES)
        return BAD("messages", "at most %d messages", OAI_MAX_MESSAGES);
    int need = tok_chat_prompt(tok, NULL, "", NULL, 0);
    if (need < 0)
        return srv_http_error(r, 400, "messages", "this model has no chat template (%s); use "
                              "/v1/completions", kvs_last_error()), -1;
    char *tmpl = malloc((size_t)need + 1);
    if (!tmpl) return srv_http_error(r, 500, NULL, "out of memory"), -1;
    tok_chat_prompt(tok, NULL, "", tmpl, (size_t)need + 1);
    char *user_at = strstr(tmpl, "<|im_start|>user\n");
    size_t def_sys = user_at ? (size_t)(user_at - tmpl) : 0;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", i);
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role)) {
            rc = BAD(param, "%s must be an object with a string role", param);
            break;
        }
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            char safe[80];
            srv_sanitize(rs, strlen(rs), safe, sizeof safe);
            rc = BAD(param, "%s.role '%s': expected system, developer, user or assistant",
                     param, safe);
            break;
        }
        if (i == 0 && strcmp(rs, "system") && def_sys)
            rc |= append_str(&buf, &n, &cap, tmpl, def_sys);
        rc |= append_str(&buf, &n, &cap, "<|im_start|>", 12);
        rc |= append_str(&buf, &n, &cap, rs, strlen(rs));
        rc |= append_str(&buf, &n, &cap, "\n", 1);
        if (rc || message_text(r, json_object_get(m, "content"), i, &buf, &n, &cap)) {
            if (!r->body) srv_http_error(r, 500, NULL, "out of memory");
            rc = -1;
            break;
        }
        rc |= append_str(&buf, &n, &cap, "<|im_end|>\n", 11);
    }
    if (!rc) rc = append_str(&buf, &n, &cap, "<|im_start|>assistant\n", 22);
    free(tmpl);
    if (!rc) rc = encode(q, r, buf, n, 1, 1, out);
    else if (!r->body) srv_http_error(r, 500, NULL, "out of memory");
    free(buf);
    return rc;
}

static int get_number(srv_http_resp *r, json_t *root, const char *key, double lo, double hi,
                      double *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return BAD(key, "%s must be a number", key);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return BAD(key, "%s is %g; it must be in [%g, %g]", key, d, lo, hi);
    *out = d;
    return 1;
}

static int get_int(srv_http_resp *r, json_t *root, const char *key, long long lo, long long hi,
                   long long *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return BAD(key, "%s must be an integer", key);
    long long d = json_integer_value(v);
    if (d < lo || d > hi) return BAD(key, "%s is %lld; it must be in [%lld, %lld]", key, d, lo, hi);
    *out = d;
    return 1;
}

static int get_bool(srv_http_resp *r, json_t *root, const char *key, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return BAD(key, "%s must be true or false", key);
    *out = json_is_true(v);
    return 1;
}

/* Fields OpenAI has that this server does not implement: refused unless absent / default. */
static int unsupported(srv_http_resp *r, json_t *root, int chat)
{
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, zero[i]);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0))
            return BAD(zero[i], "%s is not supported (only 0)", zero[i]);
    }
    json_t *v = json_object_get(root, "logit_bias");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return BAD("logit_bias", "logit_bias is not supported");
    v = json_object_get(root, "best_of");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return BAD("best_of", "best_of is not supported (only 1)");
    v = json_object_get(root, "echo");
    if (!chat && v && json_is_true(v)) return BAD("echo", "echo is not supported");
    static const char *const none[] = {"suffix", "tools", "functions", "tool_choice",
                                       "function_call", "response_format", "audio"};
    for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
        v = json_object_get(root, none[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
            return BAD(none[i], "%s is not supported", none[i]);
    }
    return 0;
}

/* The "kvsieve" extension object: policy, policy_args, ratio, budget, window, sink,
 * priority, ignore_eos, top_k, stop_token_ids, kv_dtype. */
static int parse_ext(const srv_http_req *q, srv_http_resp *r, json_t *ext, sched_params *p)
{
    if (!ext || json_is_null(ext)) return 0;
    if (!json_is_object(ext)) return BAD("kvsieve", "kvsieve must be an object");
    static const char *const known[] = {"policy", "policy_args", "ratio", "budget", "window",
                                        "sink", "priority", "ignore_eos", "top_k",
                                        "stop_token_ids", "kv_dtype"};
    const char *key;
    json_t *v;
    json_object_foreach(ext, key, v) {
        size_t k = 0;
        while (k < sizeof known / sizeof *known && strcmp(key, known[k])) k++;
        if (k == sizeof known / sizeof *known) {
            char safe[80];
            srv_sanitize(key, strlen(key), safe, sizeof safe);
            return BAD("kvsieve", "kvsieve.%s: unknown field (known: policy, policy_args, "
                       "ratio, budget, window, sink, priority, ignore_eos, top_k, "
                       "stop_token_ids, kv_dtype)", safe);
        }
    }
    json_t *pol = json_object_get(ext, "policy"), *pa = json_object_get(ext, "policy_args");
    if (pol && !json_is_null(pol) && !json_is_string(pol))
        return BAD("kvsieve.policy", "kvsieve.policy must be a string");
    if (pa && !json_is_null(pa) && !json_is_string(pa))
        return BAD("kvsieve.policy_args", "kvsieve.policy_args must be a string");
    char args[SCHED_ARGS_MAX] = "";
    size_t na = 0;
    if (json_is_string(pa)) {
        if (json_string_length(pa) >= sizeof args)
            return BAD("kvsieve.policy_args", "kvsieve.policy_args is longer than %zu bytes",
                       sizeof args - 1);
        na = (size_t)snprintf(args, sizeof args, "%s", json_string_value(pa));
    }
    static const char *const nums[] = {"ratio", "budget", "window", "sink"};
    for (size_t i = 0; i < 4; i++) {
        json_t *x = json_object_get(ext, nums[i]);
        if (!x || json_is_null(x)) continue;
        if (!json_is_number(x)) return BAD("kvsieve", "kvsieve.%s must be a number", nums[i]);
        int w = i == 0 ? snprintf(args + na, sizeof args - na, "%s%s=%g", na ? "," : "", nums[i],
                                  json_number_value(x))
                       : snprintf(args + na, sizeof args - na, "%s%s=%lld", na ? "," : "",
                                  nums[i], (long long)json_number_value(x));
        if (w < 0 || (size_t)w >= sizeof args - na)
            return BAD("kvsieve", "kvsieve policy options are longer than %zu bytes",
                       sizeof args - 1);
        na += (size_t)w;
    }
    char err[512];
    const char *name = json_is_string(pol) ? json_string_value(pol) : "";
    int rc = srv_request_policy(name, args, q->h->o.qfilters_path, p, err, sizeof err);
    if (rc) return srv_http_error(r, srv_http_status_from_kvs(rc), "kvsieve.policy", "%s", err), -1;
    json_t *kd = json_object_get(ext, "kv_dtype");
    if (kd && !json_is_null(kd)) {
        if (!json_is_string(kd)) return BAD("kvsieve.kv_dtype", "kvsieve.kv_dtype must be a string");
        if (srv_request_kv_dtype(json_string_value(kd), q->h->o.kv_dtype, err, sizeof err))
            return srv_http_error(r, 400, "kvsieve.kv_dtype", "%s", err), -1;
    }
    long long pr = 0;
    int g = get_int(r, ext, "priority", -1000000, 1000000, &pr);
    if (g < 0) return -1;
    if (g) p->has_priority = 1, p->priority = (int)pr;
    if (get_bool(r, ext, "ignore_eos", &p->ignore_eos) < 0) return -1;
    long long tk = 0;
    g = get_int(r, ext, "top_k", 0, 1 << 20, &tk);
    if (g < 0) return -1;
    if (g) p->sampling.top_k = (int)tk;
    json_t *st = json_object_get(ext, "stop_token_ids");
    if (st && !json_is_null(st)) {
        if (!json_is_array(st) || json_array_size(st) > SCHED_MAX_STOP)
            return BAD("kvsieve.stop_token_ids", "kvsieve.stop_token_ids must be an array of at "
                       "most %d token ids", SCHED_MAX_STOP);
        oai_prompt ids = {0};
        int trc = token_array(r, st, "kvsieve.stop_token_ids",
                              q->h->o.engine->m->cfg.n_vocab, &ids);
        for (int i = 0; !trc && i < ids.n; i++) p->stop_ids[i] = ids.ids[i];
        if (!trc) p->n_stop_ids = ids.n;
        free(ids.ids);
        if (trc) return -1;
    }
    return 0;
}

static int parse_request(const srv_http_req *q, srv_http_resp *r, int chat, oai_parsed *o)
{
    const kvs_engine *e = q->h->o.engine;
    const model_config *cfg = &e->m->cfg;
    json_error_t jerr;
    memset(o, 0, sizeof *o);
    json_t *root = json_loadb(q->body, q->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return bad_json(r, &jerr);
    int rc = -1;
    if (!json_is_object(root)) {
        BAD(NULL, "the body must be a JSON object");
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) {
            BAD("model", "model must be a string");
            goto out;
        }
        if (strcmp(json_string_value(model), q->h->o.model_name)) {
            char safe[200];
            srv_sanitize(json_string_value(model), json_string_length(model), safe, sizeof safe);
            srv_http_error(r, 404, "model", "the model '%s' does not exist; this server serves "
                           "'%s' (GET /v1/models)", safe, q->h->o.model_name);
            goto out;
        }
    }
    if (unsupported(r, root, chat)) goto out;
    o->p.sampling = smp_default();
    o->p.sampling.temperature = 1.0f; /* OpenAI's default */
    double d = 0;
    long long ll = 0;
    int g;
    if ((g = get_number(r, root, "temperature", 0, 2, &d)) < 0) goto out;
    if (g) o->p.sampling.temperature = (float)d;
    if ((g = get_number(r, root, "top_p", 0, 1, &d)) < 0) goto out;
    if (g) {
        if (d <= 0) {
            BAD("top_p", "top_p must be in (0, 1]");
            goto out;
        }
        o->p.sampling.top_p = (float)d;
    }
    if ((g = get_int(r, root, "seed", INT64_MIN, INT64_MAX, &ll)) < 0) goto out;
    if (g) o->has_seed = 1, o->seed = (uint64_t)ll;
    o->n = 1;
    if ((g = get_int(r, root, "n", 1, OAI_MAX_N, &ll)) < 0) goto out;
    if (g) o->n = (int)ll;
    o->max_tokens = -1;
    const char *mt_key = "max_tokens";
    if (chat && json_object_get(root, "max_completion_tokens") &&
        !json_is_null(json_object_get(root, "max_completion_tokens")))
        mt_key = "max_completion_tokens";
    if ((g = get_int(r, root, mt_key, 1, cfg->n_ctx, &ll)) < 0) goto out;
    if (g) o->max_tokens = (int)ll;
    if (get_bool(r, root, "stream", &o->stream) < 0) goto out;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!o->stream) {
            BAD("stream_options", "stream_options is only allowed with stream: true");
            goto out;
        }
        if (!json_is_object(so) || get_bool(r, so, "include_usage", &o->include_usage) < 0) {
            if (!r->body) BAD("stream_options", "stream_options must be an object");
            goto out;
        }
    }
    /* logprobs: an integer 0..5 for completions (the number of alternatives), a boolean plus
     * top_logprobs 0..20 for chat. */
    if (chat) {
        if (get_bool(r, root, "logprobs", &o->logprobs) < 0) goto out;
        if ((g = get_int(r, root, "top_logprobs", 0, SCHED_MAX_TOP_LOGPROBS, &ll)) < 0) goto out;
        if (g && !o->logprobs && ll > 0) {
            BAD("top_logprobs", "top_logprobs needs logprobs: true");
            goto out;
        }
        if (g) o->top_logprobs = (int)ll;
    } else {
        if ((g = get_int(r, root, "logprobs", 0, 5, &ll)) < 0) goto out;
        if (g) o->logprobs = 1, o->top_logprobs = (int)ll;
    }
    o->p.logprobs = o->logprobs;
    o->p.top_logprobs = o->top_logprobs;
    json_t *stop = json_object_get(root, "stop");
    if (stop && !json_is_null(stop)) {
        json_t *one = json_is_string(stop) ? stop : NULL;
        size_t ns = one ? 1 : json_is_array(stop) ? json_array_size(stop) : 0;
        if (!one && !json_is_array(stop)) {
            BAD("stop", "stop must be a string or an array of strings");
            goto out;
        }
        if (ns > SCHED_MAX_STOP) {
            BAD("stop", "at most %d stop strings", SCHED_MAX_STOP);
            goto out;
        }
        for (size_t i = 0; i < ns; i++) {
            json_t *s = one ? one : json_array_get(stop, i);
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) >= sizeof o->p.stop_strings[0]) {
                BAD("stop", "stop[%zu] must be a string of 1 to %zu bytes", i,
                    sizeof o->p.stop_strings[0] - 1);
                goto out;
            }
            memcpy(o->p.stop_strings[i], json_string_value(s), json_string_length(s) + 1);
        }
        o->p.n_stop_strings = (int)ns;
    }
    if (parse_ext(q, r, json_object_get(root, "kvsieve"), &o->p)) goto out;

    /* The prompt(s). */
    if (chat) {
        if (json_object_get(root, "prompt")) {
            BAD("prompt", "chat completions take messages, not prompt");
            goto out;
        }
        if (chat_prompt(q, r, json_object_get(root, "messages"), &o->prompts[0])) goto out;
        o->n_prompts = 1;
    } else {
        json_t *pr = json_object_get(root, "prompt");
        if (json_object_get(root, "messages")) {
            BAD("messages", "completions take prompt, not messages (see /v1/chat/completions)");
            goto out;
        }
        if (json_is_string(pr)) {
            if (encode(q, r, json_string_value(pr), json_string_length(pr), 0, 1, &o->prompts[0]))
                goto out;
            o->n_prompts = 1;
        } else if (json_is_array(pr) && json_array_size(pr) > 0) {
            json_t *first = json_array_get(pr, 0);
            if (json_is_integer(first)) {
                if (token_array(r, pr, "prompt", cfg->n_vocab, &o->prompts[0])) goto out;
                o->n_prompts = 1;
            } else {
                size_t np = json_array_size(pr);
                if (np * (size_t)o->n > OAI_MAX_JOBS) {
                    BAD("prompt", "%zu prompts x n = %d is over %d choices", np, o->n,
                        OAI_MAX_JOBS);
                    goto out;
                }
                for (size_t i = 0; i < np; i++) {
                    json_t *pi = json_array_get(pr, i);
                    char param[32];
                    snprintf(param, sizeof param, "prompt[%zu]", i);
                    int erc;
                    if (json_is_string(pi))
                        erc = encode(q, r, json_string_value(pi), json_string_length(pi), 0, 1,
                                     &o->prompts[i]);
                    else if (json_is_array(pi) && json_array_size(pi) > 0)
                        erc = token_array(r, pi, param, cfg->n_vocab, &o->prompts[i]);
                    else
                        erc = BAD(param, "%s must be a string or a non-empty array of token ids",
                                  param);
                    o->n_prompts = (int)i + 1;
                    if (erc) goto out;
                }
            }
        } else {
            BAD("prompt", "prompt is required: a string, an array of strings, or an array of "
                "token ids");
            goto out;
        }
    }
    const int P = e->pool->page_slots;
    for (int i = 0; i < o->n_prompts; i++) {
        int n = o->prompts[i].n;
        int bos_only = n == 1 && tok_add_bos(e->tok) && o->prompts[i].ids[0] == tok_bos(e->tok);
        if (n == 0 || (bos_only && !chat)) {
            BAD("prompt", "the prompt is empty");
            goto out;
        }
        int mt = o->max_tokens > 0 ? o->max_tokens : chat ? cfg->n_ctx - n : 16;
        if (n + mt > cfg->n_ctx) {
            BAD(o->max_tokens > 0 ? mt_key : "prompt",
                "this model's maximum context length is %d tokens; the prompt has %d and %d "
                "are asked to be generated", cfg->n_ctx, n, mt);
            goto out;
        }
        int64_t pages = (int64_t)cfg->n_layers * cfg->n_kv_heads * ((n + 1 + P - 1) / P);
        if (pages > e->pool->n_pages) {
            BAD("prompt", "the prompt of %d tokens needs %lld KV pages; the server's pool has %d",
                n, (long long)pages, e->pool->n_pages);
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- JSON output ---------------------------------------------------------------------------- */

static const char *finish_reason(int r)
{
    return r == SCHED_FINISH_STOP ? "stop" : r == SCHED_FINISH_LENGTH ? "length" : NULL;
}

static json_t *bytes_array(const char *b, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

static json_t *piece_str(const srv_http *h, int32_t id, json_t **bytes)
{
    const char *b = NULL;
    size_t n = 0;
    if (tok_piece(h->o.engine->tok, id, &b, &n)) b = "", n = 0;
    if (bytes) *bytes = bytes_array(b, n);
    return jstr(b, n);
}

/* Logprobs of tokens [from, to) of a choice, in the chat or the completions shape. */
static json_t *logprobs_json(const oai_job *j, const oai_choice *c, int from, int to)
{
    if (!j->logprobs) return json_null();
    if (j->chat) {
        json_t *content = json_array();
        for (int i = from; i < to; i++) {
            const oai_tok *t = &c->toks[i];
            json_t *bytes, *tops = json_array();
            json_t *tok = piece_str(j->h, t->id, &bytes);
            for (int k = 0; k < t->n_top; k++) {
                json_t *tb, *ts = piece_str(j->h, t->top_ids[k], &tb);
                json_array_append_new(tops, json_pack("{s:o,s:f,s:o}", "token", ts, "logprob",
                                                      (double)t->top_lp[k], "bytes", tb));
            }
            json_array_append_new(content, json_pack("{s:o,s:f,s:o,s:o}", "token", tok,
                                                     "logprob", (double)t->lp, "bytes", bytes,
                                                     "top_logprobs", tops));
        }
        return json_pack("{s:o}", "content", content);
    }
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    for (int i = from; i < to; i++) {
        const oai_tok *t = &c->toks[i];
        json_array_append_new(tokens, piece_str(j->h, t->id, NULL));
        json_array_append_new(lps, json_real(t->lp));
        json_t *top = json_object();
        for (int k = 0; k < t->n_top; k++) {
            json_t *ts = piece_str(j->h, t->top_ids[k], NULL);
            json_object_set_new(top, json_string_value(ts), json_real(t->top_lp[k]));
            json_decref(ts);
        }
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer(t->off));
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

static json_t *usage_json(const oai_job *j)
{
    long long pt = 0, ct = 0;
    int seen[OAI_MAX_JOBS] = {0};
    for (int i = 0; i < j->n_ch; i++) {
        const oai_choice *c = &j->ch[i];
        if (!seen[c->prompt]) pt += c->fin.prompt_tokens, seen[c->prompt] = 1;
        ct += c->fin.completion_tokens;
    }
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)pt, "completion_tokens",
                     (json_int_t)ct, "total_tokens", (json_int_t)(pt + ct));
}

static json_t *envelope(const oai_job *j, int chunk)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", j->id, "object",
                     j->chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                             : "text_completion",
                     "created", (json_int_t)j->created, "model", j->h->o.model_name);
}

/* The first choice that did not end with stop/length, as an HTTP status and message. */
static int job_failure(const oai_job *j, char *msg, size_t cap)
{
    for (int i = 0; i < j->n_ch; i++) {
        const oai_choice *c = &j->ch[i];
        switch (c->fin.finish_reason) {
        case SCHED_FINISH_STOP:
        case SCHED_FINISH_LENGTH: continue;
        case SCHED_FINISH_SHUTDOWN:
            snprintf(msg, cap, "server shutting down: the request stopped after the grace "
                     "period with %d tokens generated (retry on another server)",
                     c->fin.completion_tokens);
            return 503;
        case SCHED_FINISH_ABORTED:
            snprintf(msg, cap, "request %llu was aborted", (unsigned long long)c->id);
            return 500;
        case SCHED_FINISH_DEADLINE:
            snprintf(msg, cap, "deadline exceeded after %d generated tokens",
                     c->fin.completion_tokens);
            return 504;
        default:
            snprintf(msg, cap, "engine error: %s", c->fin_msg[0] ? c->fin_msg : "unknown");
            return 500;
        }
    }
    return 0;
}

static void reply_json(srv_http_resp *r, int status, json_t *o)
{
    r->body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    r->n_body = r->body ? strlen(r->body) : 0;
    r->status = status;
    json_decref(o);
    if (!r->body) srv_http_error(r, 500, NULL, "out of memory");
}

static void reply_complete(oai_job *j, srv_http_resp *r)
{
    char msg[512];
    int fail = job_failure(j, msg, sizeof msg);
    if (fail) {
        srv_http_error(r, fail, NULL, "%s", msg);
        return;
    }
    json_t *o = envelope(j, 0), *choices = json_array();
    for (int i = 0; i < j->n_ch; i++) {
        const oai_choice *c = &j->ch[i];
        json_t *ch;
        if (j->chat)
            ch = json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", c->index, "message", "role",
                           "assistant", "content", jstr(c->text ? c->text : "", c->n_text),
                           "logprobs", logprobs_json(j, c, 0, c->n_toks), "finish_reason",
                           finish_reason(c->fin.finish_reason));
        else
            ch = json_pack("{s:i,s:o,s:o,s:s}", "index", c->index, "text",
                           jstr(c->text ? c->text : "", c->n_text), "logprobs",
                           logprobs_json(j, c, 0, c->n_toks), "finish_reason",
                           finish_reason(c->fin.finish_reason));
        json_array_append_new(choices, ch);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(j));
    reply_json(r, 200, o);
}

/* ---- streaming ------------------------------------------------------------------------------ */

static void sse_put(oai_job *j, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return;
    size_t n = strlen(s);
    if (!grow((void **)&j->out, &j->cap_out, j->n_out + n + 9, 1)) {
        memcpy(j->out + j->n_out, "data: ", 6);
        memcpy(j->out + j->n_out + 6, s, n);
        memcpy(j->out + j->n_out + 6 + n, "\n\n", 2);
        j->n_out += n + 8;
    }
    free(s);
}

static json_t *chunk(oai_job *j, const oai_choice *c, json_t *delta_or_text, json_t *logprobs,
                     const char *finish)
{
    json_t *o = envelope(j, 1);
    json_t *ch = json_pack("{s:i,s:o,s:o,s:o}", "index", c->index, j->chat ? "delta" : "text",
                           delta_or_text, "logprobs", logprobs ? logprobs : json_null(),
                           "finish_reason", finish ? json_string(finish) : json_null());
    json_object_set_new(o, "choices", json_pack("[o]", ch));
    if (j->include_usage) json_object_set_new(o, "usage", json_null());
    return o;
}

/* Under j->mu: turn what arrived into SSE bytes in j->out. */
static void stream_format(oai_job *j)
{
    if (j->chat && !j->role_sent) {
        for (int i = 0; i < j->n_ch; i++)
            sse_put(j, chunk(j, &j->ch[i], json_pack("{s:s,s:s}", "role", "assistant", "content",
                                                     ""), NULL, NULL));
        j->role_sent = 1;
    }
    int all_done = 1;
    for (int i = 0; i < j->n_ch; i++) {
        oai_choice *c = &j->ch[i];
        if (c->n_text > c->sent_text || c->n_toks > c->sent_toks) {
            json_t *t = jstr(c->text + c->sent_text, c->n_text - c->sent_text);
            json_t *lp = j->logprobs ? logprobs_json(j, c, c->sent_toks, c->n_toks) : NULL;
            if (j->chat) t = json_pack("{s:o}", "content", t);
            if (c->n_text > c->sent_text || j->logprobs) sse_put(j, chunk(j, c, t, lp, NULL));
            else json_decref(t), json_decref(lp);
            c->sent_text = c->n_text;
            c->sent_toks = c->n_toks;
        }
        if (c->done && !c->fin_sent) {
            const char *fr = finish_reason(c->fin.finish_reason);
            if (fr) sse_put(j, chunk(j, c, j->chat ? json_object() : json_string(""), NULL, fr));
            c->fin_sent = 1;
        }
        all_done &= c->fin_sent;
    }
    if (!all_done || j->ended) return;
    char msg[512];
    int fail = job_failure(j, msg, sizeof msg);
    if (fail) {
        srv_http_resp e = {0};
        srv_http_error(&e, fail, NULL, "%s", msg);
        json_t *o = e.body ? json_loads(e.body, 0, NULL) : NULL;
        if (o) json_object_set_new(json_object_get(o, "error"), "status", json_integer(fail));
        sse_put(j, o);
        free(e.body);
    }
    if (j->include_usage) {
        json_t *o = envelope(j, 1);
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(o, "usage", usage_json(j));
        sse_put(j, o);
    }
    if (!grow((void **)&j->out, &j->cap_out, j->n_out + 15, 1)) {
        memcpy(j->out + j->n_out, "data: [DONE]\n\n", 14);
        j->n_out += 14;
    }
    j->ended = 1;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    oai_job *j = cls;
    (void)pos;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        if (j->n_out > j->off_out) {
            size_t n = j->n_out - j->off_out;
            if (n > max) n = max;
            memcpy(buf, j->out + j->off_out, n);
            j->off_out += n;
            if (j->off_out == j->n_out) j->off_out = j->n_out = 0;
            pthread_mutex_unlock(&j->mu);
            return (ssize_t)n;
        }
        if (j->ended) {
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        stream_format(j);
        if (j->n_out > j->off_out || j->ended) continue;
        job_timedwait(j, 50);
        if (j->n_pending > 0 && srv_http_peer_gone(j->fd)) {
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls)
{
    oai_job *j = cls;
    job_abort_and_wait(j); /* the client went away mid-stream: its pages go back now */
    job_free(j);
}

/* ---- /v1/completions, /v1/chat/completions -------------------------------------------------- */

void srv_oai_completions(const srv_http_req *q, srv_http_resp *r, int chat)
{
    srv_http *h = q->h;
    static atomic_uint_fast64_t seed_counter;
    oai_parsed *o = calloc(1, sizeof *o);
    oai_job *j = calloc(1, sizeof *j);
    if (!o || !j) {
        free(o);
        free(j);
        srv_http_error(r, 500, NULL, "out of memory");
        return;
    }
    if (parse_request(q, r, chat, o)) {
        parsed_free(o);
        free(o);
        free(j);
        return;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->h = h;
    j->tenant = q->tenant;
    j->tenant_name = q->tenant_name;
    j->chat = chat;
    j->stream = o->stream;
    j->include_usage = o->include_usage;
    j->logprobs = o->logprobs;
    j->top_logprobs = o->top_logprobs;
    j->created = (long)time(NULL);
    j->fd = q->fd;
    j->t_submit = kvs_now();
    snprintf(j->policy, sizeof j->policy, "%s",
             o->p.policy[0] ? o->p.policy
                            : h->o.default_policy && *h->o.default_policy ? h->o.default_policy
                                                                          : "full");
    uint64_t seed0 = o->has_seed ? o->seed
                                 : (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^
                                       (atomic_fetch_add(&seed_counter, 1) + 1) * 0xbf58476d1ce4e5b9ull;
    int rc = 0;
    for (int pi = 0; pi < o->n_prompts && !rc; pi++)
        for (int k = 0; k < o->n && !rc; k++) {
            oai_choice *c = &j->ch[j->n_ch];
            c->job = j;
            c->index = j->n_ch;
            c->prompt = pi;
            sched_params p = o->p;
            int n = o->prompts[pi].n;
            p.max_tokens = o->max_tokens > 0 ? o->max_tokens
                                             : chat ? h->o.engine->m->cfg.n_ctx - n : 16;
            p.sampling.seed = seed0 + (uint64_t)j->n_ch;
            j->n_ch++;
            pthread_mutex_lock(&j->mu);
            j->n_pending++;
            pthread_mutex_unlock(&j->mu);
            uint64_t id = 0;
            rc = kvs_loop_submit(h->o.loop, q->tenant_name, o->prompts[pi].ids, n, &p, on_event,
                                 c, &id);
            pthread_mutex_lock(&j->mu);
            if (rc) {
                j->n_pending--;
                j->n_ch--;
            } else {
                c->submitted = 1;
                c->id = id;
            }
            pthread_mutex_unlock(&j->mu);
        }
    if (rc) {
        const char *why = kvs_last_error();
        srv_http_error(r, srv_http_status_from_kvs(rc), NULL, "%s",
                       why && *why ? why : kvs_strerror(rc));
        job_abort_and_wait(j);
        job_free(j);
        parsed_free(o);
        free(o);
        return;
    }
    snprintf(j->id, sizeof j->id, "%s-%llu", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)j->ch[0].id);
    parsed_free(o);
    free(o);
    if (j->stream) {
        r->status = 200;
        r->stream = j;
        r->reader = stream_read;
        r->free_stream = stream_free;
        return;
    }
    /* Not streamed: wait for every choice, watching for a client that goes away. */
    int gone = 0;
    pthread_mutex_lock(&j->mu);
    while (j->n_pending > 0) {
        job_timedwait(j, 50);
        if (j->n_pending > 0 && srv_http_peer_gone(j->fd)) {
            gone = 1;
            break;
        }
    }
    pthread_mutex_unlock(&j->mu);
    if (gone) {
        job_abort_and_wait(j);
        r->drop = 1;
    } else {
        reply_complete(j, r);
    }
    job_free(j);
}

/* ---- /v1/models, /tokenize, /detokenize -------------------------------------------------- */

/* OpenAI's model object, vLLM's max_model_len, and kvsieve's own facts (the load tester draws
 * synthetic prompts from the vocabulary and checks policy names against them). */
static json_t *model_json(const srv_http *h)
{
    const kvs_engine *e = h->o.engine;
    json_t *pols = json_array();
    const pol_vtable *vt[64];
    int np = pol_list(vt, 64);
    for (int i = 0; i < np && i < 64; i++) json_array_append_new(pols, json_string(vt[i]->name));
    return json_pack("{s:s,s:s,s:I,s:s,s:i,s:{s:i,s:i,s:i,s:s,s:o}}", "id", h->o.model_name,
                     "object", "model", "created", (json_int_t)h->created, "owned_by", "kvsieve",
                     "max_model_len", e->m->cfg.n_ctx, "kvsieve", "n_vocab", e->m->cfg.n_vocab,
                     "bos_token_id", tok_bos(e->tok),
                     "eos_token_id", tok_eos(e->tok), "default_policy",
                     h->o.default_policy && *h->o.default_policy ? h->o.default_policy : "full",
                     "policies", pols);
}

void srv_oai_models(const srv_http_req *q, srv_http_resp *r, const char *id)
{
    const srv_http *h = q->h;
    if (id) {
        if (strcmp(id, h->o.model_name)) {
            char safe[200];
            srv_sanitize(id, strlen(id), safe, sizeof safe);
            srv_http_error(r, 404, "model", "the model '%s' does not exist; this server serves "
                           "'%s'", safe, h->o.model_name);
            return;
        }
        reply_json(r, 200, model_json(h));
        return;
    }
    reply_json(r, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model_json(h)));
}

static json_t *load_object(const srv_http_req *q, srv_http_resp *r)
{
    json_error_t jerr;
    json_t *root = json_loadb(q->body, q->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        bad_json(r, &jerr);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        BAD(NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

void srv_oai_tokenize(const srv_http_req *q, srv_http_resp *r)
{
    json_t *root = load_object(q, r);
    if (!root) return;
    oai_prompt p = {0};
    int add_special = 1, rc;
    json_t *prompt = json_object_get(root, "prompt"), *msgs = json_object_get(root, "messages");
    if (get_bool(r, root, "add_special_tokens", &add_special) < 0) rc = -1;
    else if (msgs && prompt) rc = BAD(NULL, "give prompt or messages, not both");
    else if (msgs) rc = chat_prompt(q, r, msgs, &p);
    else if (json_is_string(prompt))
        rc = encode(q, r, json_string_value(prompt), json_string_length(prompt), 0, add_special,
                    &p);
    else rc = BAD("prompt", "prompt (a string) or messages is required");
    if (!rc) {
        json_t *ids = json_array();
        for (int i = 0; i < p.n; i++) json_array_append_new(ids, json_integer(p.ids[i]));
        reply_json(r, 200, json_pack("{s:i,s:i,s:o}", "count", p.n, "max_model_len",
                                     q->h->o.engine->m->cfg.n_ctx, "tokens", ids));
    }
    free(p.ids);
    json_decref(root);
}

void srv_oai_detokenize(const srv_http_req *q, srv_http_resp *r)
{
    json_t *root = load_object(q, r);
    if (!root) return;
    json_t *tokens = json_object_get(root, "tokens");
    oai_prompt p = {0};
    if (!json_is_array(tokens)) {
        BAD("tokens", "tokens (an array of token ids) is required");
    } else if (!token_array(r, tokens, "tokens", q->h->o.engine->m->cfg.n_vocab, &p)) {
        const tok_ctx *tok = q->h->o.engine->tok;
        int need = p.n ? tok_decode(tok, p.ids, p.n, NULL, 0) : 0;
        char *text = need >= 0 ? malloc((size_t)need + 1) : NULL;
        if (!text) {
            srv_http_error(r, 500, NULL, "detokenize: %s", need < 0 ? kvs_last_error() : "out of memory");
        } else {
            if (p.n) tok_decode(tok, p.ids, p.n, text, (size_t)need + 1);
            else text[0] = 0;
            reply_json(r, 200, json_pack("{s:o}", "prompt", jstr(text, (size_t)need)));
            free(text);
        }
    }
    free(p.ids);
    json_decref(root);
}
