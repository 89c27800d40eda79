/* load_workload.c — what `kvsieve load` sends: length distributions, synthetic token-id
 * prompts, prompts files (plain lines or JSONL), tenant and policy mixes. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "load/load.h"

/* ---- random numbers ---------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void load_rng_seed(load_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t load_rng_next(load_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double load_rng_uniform(load_rng *r) { return (double)(load_rng_next(r) >> 11) * 0x1.0p-53; }

double load_rng_normal(load_rng *r)
{
    double u1 = 1.0 - load_rng_uniform(r), u2 = load_rng_uniform(r); /* u1 in (0, 1] */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

double load_rng_exp(load_rng *r, double mean) { return -mean * log(1.0 - load_rng_uniform(r)); }

/* ---- distributions ------------------------------------------------------------------------ */

const char *load_dist_name(load_dist_kind k)
{
    static const char *const n[] = {"fixed", "uniform", "normal", "exp"};
    return n[k];
}

/* Whole string a positive number? */
static int parse_num(const char *s, size_t len, double *out)
{
    char buf[64], *end;
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || *end || !isfinite(v) || v < 0) return -1;
    *out = v;
    return 0;
}

int load_dist_parse(const char *flag, const char *s, int len, load_dist *out)
{
    memset(out, 0, sizeof *out);
    out->len = len;
    const char *colon = strchr(s, ':');
    size_t nl = colon ? (size_t)(colon - s) : strlen(s);
    const char *params = colon ? colon + 1 : NULL;
    if (nl == 5 && !strncmp(s, "fixed", 5) && !params) {
        out->kind = LOAD_DIST_FIXED;
    } else if (nl == 3 && !strncmp(s, "exp", 3) && !params) {
        out->kind = LOAD_DIST_EXP;
    } else if (nl == 7 && !strncmp(s, "uniform", 7)) {
        out->kind = LOAD_DIST_UNIFORM;
        out->lo = len / 2 > 0 ? len / 2 : 1;
        out->hi = len + len / 2;
        if (params) {
            const char *c2 = strchr(params, ':');
            double lo, hi;
            if (!c2 || parse_num(params, (size_t)(c2 - params), &lo) ||
                parse_num(c2 + 1, strlen(c2 + 1), &hi) || lo < 1 || hi < lo || hi > 1 << 20 ||
                lo != floor(lo) || hi != floor(hi)) {
                fprintf(stderr, "kvsieve load: %s: '%s': expected uniform:LO:HI with integers "
                        "1 <= LO <= HI\n", flag, s);
                return -1;
            }
            out->lo = (int)lo;
            out->hi = (int)hi;
            out->len = (out->lo + out->hi) / 2;
        }
    } else if (nl == 6 && !strncmp(s, "normal", 6)) {
        out->kind = LOAD_DIST_NORMAL;
        out->sd = len / 4.0;
        if (params && (parse_num(params, strlen(params), &out->sd) || out->sd > 1 << 20)) {
            fprintf(stderr, "kvsieve load: %s: '%s': expected normal:SD with SD >= 0\n", flag, s);
            return -1;
        }
    } else {
        fprintf(stderr, "kvsieve load: %s: unknown distribution '%s' (expected fixed, "
                "uniform[:LO:HI], normal[:SD] or exp)\n", flag, s);
        return -1;
    }
    return 0;
}

int load_dist_sample(const load_dist *d, load_rng *r)
{
    double v;
    switch (d->kind) {
    case LOAD_DIST_UNIFORM:
        v = d->lo + (double)(load_rng_next(r) % (uint64_t)(d->hi - d->lo + 1));
        break;
    case LOAD_DIST_NORMAL: v = floor(d->len + d->sd * load_rng_normal(r) + 0.5); break;
    case LOAD_DIST_EXP: v = ceil(load_rng_exp(r, d->len)); break;
    default: v = d->len; break;
    }
    if (v < 1) v = 1;
    if (v > 1 << 24) v = 1 << 24;
    return (int)v;
}

const char *load_dist_describe(const load_dist *d, char *buf, size_t cap)
{
    switch (d->kind) {
    case LOAD_DIST_UNIFORM: snprintf(buf, cap, "uniform [%d, %d]", d->lo, d->hi); break;
    case LOAD_DIST_NORMAL: snprintf(buf, cap, "normal mean %d sd %g", d->len, d->sd); break;
    case LOAD_DIST_EXP: snprintf(buf, cap, "exp mean %d", d->len); break;
    default: snprintf(buf, cap, "fixed %d", d->len); break;
    }
    return buf;
}

/* ---- tenants and policies --------------------------------------------------------------- */

int load_tenant_parse(const char *s, load_tenant *out)
{
    memset(out, 0, sizeof *out);
    const char *c1 = strchr(s, ':');
    if (!c1 || c1 == s || (size_t)(c1 - s) >= sizeof out->name) {
        fprintf(stderr, "kvsieve load: --tenant: '%s': expected NAME:KEY:WEIGHT (a name of 1 to "
                "%zu bytes)\n", s, sizeof out->name - 1);
        return -1;
    }
    memcpy(out->name, s, (size_t)(c1 - s));
    const char *key = c1 + 1;
    size_t klen = strlen(key);
    out->weight = 1.0;
    const char *c2 = strrchr(key, ':');
    if (c2) {
        double w;
        if (parse_num(c2 + 1, strlen(c2 + 1), &w) || !(w > 0) || w > 1e9) {
            fprintf(stderr, "kvsieve load: --tenant %s: the weight '%s' is not a number > 0\n",
                    out->name, c2 + 1);
            return -1;
        }
        out->weight = w;
        klen = (size_t)(c2 - key);
    }
    for (size_t i = 0; i < klen; i++)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e) {
            fprintf(stderr, "kvsieve load: --tenant %s: the key has a space or a non-printable "
                    "character\n", out->name);
            return -1;
        }
    out->key = malloc(klen + 1);
    if (!out->key) return -1;
    memcpy(out->key, key, klen);
    out->key[klen] = 0;
    return 0;
}

int load_policy_mix_parse(const char *s, const char *default_args, load_policy **out)
{
    load_policy *v = NULL;
    int n = 0;
    const char *p = s;
    *out = NULL;
    if (!*p) goto bad;
    while (*p) {
        load_policy e;
        memset(&e, 0, sizeof e);
        size_t nl = strcspn(p, "(:,");
        if (nl == 0 || nl >= sizeof e.name) goto bad;
        memcpy(e.name, p, nl);
        p += nl;
        int own_args = 0;
        if (*p == '(') { /* ARGS up to the matching ')' */
            const char *a = ++p;
            int depth = 1;
            while (*p && depth) {
                if (*p == '(') depth++;
                else if (*p == ')') depth--;
                if (depth) p++;
            }
            if (!*p || (size_t)(p - a) >= sizeof e.args) goto bad;
            memcpy(e.args, a, (size_t)(p - a));
            p++;
            own_args = 1;
        }
        e.weight = 1.0;
        if (*p == ':') {
            p++;
            size_t wl = strcspn(p, ",");
            if (parse_num(p, wl, &e.weight) || !(e.weight > 0)) goto bad;
            p += wl;
        }
        if (*p == ',') {
            p++;
            if (!*p) goto bad;
        } else if (*p) {
            goto bad;
        }
        if (!strcmp(e.name, "default")) {
            if (own_args) {
                fprintf(stderr, "kvsieve load: --policy-mix: 'default' (the server's policy) "
                        "takes no (ARGS)\n");
                free(v);
                return -1;
            }
            e.name[0] = 0;
        } else if (!own_args && default_args) {
            snprintf(e.args, sizeof e.args, "%s", default_args);
        }
        load_policy *nv = realloc(v, (size_t)(n + 1) * sizeof *v);
        if (!nv) { free(v); return -1; }
        v = nv;
        v[n++] = e;
    }
    *out = v;
    return n;
bad:
    free(v);
    fprintf(stderr, "kvsieve load: --policy-mix: bad mix '%s' (expected e.g. "
            "full:1,knorm(ratio=0.5):2,default:1)\n", s);
    return -1;
}

/* ---- prompts files ------------------------------------------------------------------------ */

/* A tiny JSON reader for one flat object per line: enough for {"prompt": "...", ...}. */
typedef struct jp {
    const char *p, *end;
} jp;

static void jp_ws(jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n'))
        j->p++;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t utf8_put(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xc0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A string at j->p (the opening quote). With out != NULL, writes the decoded string (malloc'd). */
static int jp_string(jp *j, char **out)
{
    if (j->p >= j->end || *j->p != '"') return -1;
    const char *s = ++j->p;
    char *o = NULL;
    size_t n = 0;
    if (out && !(o = malloc((size_t)(j->end - s) + 1))) return -1;
    while (j->p < j->end && *j->p != '"') {
        char c = *j->p++;
        if ((unsigned char)c < 0x20) goto bad;
        if (c != '\\') {
            if (o) o[n++] = c;
            continue;
        }
        if (j->p >= j->end) goto bad;
        c = *j->p++;
        unsigned cp;
        switch (c) {
        case '"': case '\\': case '/': if (o) o[n++] = c; break;
        case 'b': if (o) o[n++] = '\b'; break;
        case 'f': if (o) o[n++] = '\f'; break;
        case 'n': if (o) o[n++] = '\n'; break;
        case 'r': if (o) o[n++] = '\r'; break;
        case 't': if (o) o[n++] = '\t'; break;
        case 'u':
            if (j->end - j->p < 4 || hex4(j->p, &cp)) goto bad;
            j->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) { /* a surrogate pair */
                unsigned lo;
                if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
                    hex4(j->p + 2, &lo) || lo < 0xdc00 || lo >= 0xe000)
                    goto bad;
                j->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                goto bad;
            }
            if (cp == 0) goto bad; /* would cut the C string */
            if (o) n += utf8_put(o + n, cp);
            break;
        default: goto bad;
        }
    }
    if (j->p >= j->end) goto bad;
    j->p++;
    if (o) {
        o[n] = 0;
        *out = o;
    }
    return 0;
bad:
    free(o);
    return -1;
}

/* Skip any value (string, number, literal, nested object or array). */
static int jp_skip(jp *j)
{
    jp_ws(j);
    if (j->p >= j->end) return -1;
    if (*j->p == '"') return jp_string(j, NULL);
    if (*j->p == '{' || *j->p == '[') {
        int depth = 0;
        while (j->p < j->end) {
            char c = *j->p;
            if (c == '"') {
                if (jp_string(j, NULL)) return -1;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') depth--;
            j->p++;
            if (!depth) return 0;
        }
        return -1;
    }
    const char *s = j->p;
    while (j->p < j->end && !strchr(",}] \t\r\n", *j->p)) j->p++;
    return j->p > s ? 0 : -1;
}

/* One JSONL record -> prompt. Returns 0, or -1 with a reason in why. */
static int parse_jsonl(const char *line, size_t len, load_prompt *out, const char **why)
{
    jp j = {line, line + len};
    char *text = NULL;
    long mt = 0;
    *why = "not a JSON object";
    jp_ws(&j);
    if (j.p >= j.end || *j.p != '{') return -1;
    j.p++;
    jp_ws(&j);
    if (j.p < j.end && *j.p == '}') goto close;
    for (;;) {
        char *key = NULL;
        jp_ws(&j);
        if (jp_string(&j, &key)) goto bad;
        jp_ws(&j);
        if (j.p >= j.end || *j.p != ':') { free(key); goto bad; }
        j.p++;
        jp_ws(&j);
        if (!strcmp(key, "prompt") || !strcmp(key, "text")) {
            free(text);
            text = NULL;
            if (jp_string(&j, &text)) {
                free(key);
                *why = "\"prompt\" must be a JSON string";
                goto fail;
            }
        } else if (!strcmp(key, "max_tokens") || !strcmp(key, "output_len")) {
            char *end;
            errno = 0;
            mt = strtol(j.p, &end, 10);
            if (errno || end == j.p || mt < 1 || mt > 1 << 24) {
                free(key);
                *why = "\"max_tokens\" must be an integer >= 1";
                goto fail;
            }
            j.p = end;
        } else if (jp_skip(&j)) {
            free(key);
            goto bad;
        }
        free(key);
        jp_ws(&j);
        if (j.p < j.end && *j.p == ',') { j.p++; continue; }
        break;
    }
close:
    if (j.p >= j.end || *j.p != '}') goto bad;
    j.p++;
    jp_ws(&j);
    if (j.p != j.end) goto bad;
    if (!text || !*text) {
        *why = "no \"prompt\" (or \"text\") string, or it is empty";
        goto fail;
    }
    out->text = text;
    out->max_tokens = (int)mt;
    return 0;
bad:
    *why = "malformed JSON (expected one object per line, e.g. {\"prompt\": \"...\"})";
fail:
    free(text);
    return -1;
}

void load_prompts_free(load_prompt *p, int n)
{
    for (int i = 0; i < n; i++) free(p[i].text);
    free(p);
}

int load_prompts_read(const char *path, load_prompt **out, int *n_out)
{
    FILE *f = fopen(path, "r");
    *out = NULL;
    *n_out = 0;
    if (!f) {
        fprintf(stderr, "kvsieve load: --prompts %s: %s\n", path, strerror(errno));
        return -1;
    }
    load_prompt *v = NULL;
    int n = 0, cap = 0, lineno = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if ((size_t)len != strlen(line)) {
            fprintf(stderr, "kvsieve load: %s:%d: the line holds a NUL byte\n", path, lineno);
            goto fail;
        }
        size_t ws = strspn(line, " \t");
        if (line[ws] == 0) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            load_prompt *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) goto oom;
            v = nv;
        }
        load_prompt p = {0};
        if (line[ws] == '{') {
            const char *why;
            if (parse_jsonl(line, (size_t)len, &p, &why)) {
                fprintf(stderr, "kvsieve load: %s:%d: %s\n", path, lineno, why);
                goto fail;
            }
        } else if (!(p.text = strdup(line))) {
            goto oom;
        }
        v[n++] = p;
    }
    if (ferror(f)) {
        fprintf(stderr, "kvsieve load: --prompts %s: read error\n", path);
        goto fail;
    }
    if (n == 0) {
        fprintf(stderr, "kvsieve load: --prompts %s: no prompts in the file\n", path);
        goto fail;
    }
    free(line);
    fclose(f);
    *out = v;
    *n_out = n;
    return 0;
oom:
    fprintf(stderr, "kvsieve load: out of memory reading %s\n", path);
fail:
    free(line);
    fclose(f);
    load_prompts_free(v, n);
    return -1;
}

/* ---- requests ------------------------------------------------------------------------------- */

/* Index drawn with probability weight / sum of weights. */
static int pick_tenant(load_workload *w)
{
    double sum = 0, x;
    for (int i = 0; i < w->n_tenants; i++) sum += w->tenants[i].weight;
    x = load_rng_uniform(&w->rng) * sum;
    for (int i = 0; i < w->n_tenants - 1; i++)
        if ((x -= w->tenants[i].weight) < 0) return i;
    return w->n_tenants - 1;
}

static int pick_policy(load_workload *w)
{
    double sum = 0, x;
    for (int i = 0; i < w->n_policies; i++) sum += w->policies[i].weight;
    x = load_rng_uniform(&w->rng) * sum;
    for (int i = 0; i < w->n_policies - 1; i++)
        if ((x -= w->policies[i].weight) < 0) return i;
    return w->n_policies - 1;
}

int load_workload_next(load_workload *w, load_req *out)
{
    memset(out, 0, sizeof *out);
    out->tenant = pick_tenant(w);
    out->policy = pick_policy(w);
    out->prompt = -1;
    if (w->prompts) {
        out->prompt = w->next_prompt;
        w->next_prompt = (w->next_prompt + 1) % w->n_prompts;
        out->max_tokens = w->prompts[out->prompt].max_tokens;
        if (!out->max_tokens) out->max_tokens = load_dist_sample(&w->out, &w->rng);
        if (w->n_ctx > 0 && out->max_tokens >= w->n_ctx) {
            out->max_tokens = w->n_ctx - 1; /* the server checks prompt + output itself */
            w->clamped++;
        }
        return 0;
    }
    int n_in = load_dist_sample(&w->in, &w->rng);
    int n_out = load_dist_sample(&w->out, &w->rng);
    if (w->n_ctx > 0 && n_in + n_out > w->n_ctx) { /* keep both >= 1, cut the larger share */
        if (n_out > w->n_ctx / 2) n_out = KVS_MAX(1, w->n_ctx - KVS_MIN(n_in, w->n_ctx / 2));
        if (n_in + n_out > w->n_ctx) n_in = w->n_ctx - n_out;
        w->clamped++;
    }
    out->max_tokens = n_out;
    out->ids = malloc((size_t)n_in * sizeof *out->ids);
    if (!out->ids) return -1;
    int i = 0;
    if (w->bos >= 0) out->ids[i++] = w->bos;
    uint64_t span = (uint64_t)(w->vocab_hi - w->vocab_lo);
    for (; i < n_in; i++) out->ids[i] = w->vocab_lo + (int32_t)(load_rng_next(&w->rng) % span);
    out->n_ids = n_in;
    return 0;
}

void load_req_clear(load_req *r)
{
    free(r->ids);
    r->ids = NULL;
}
