/* tenants.c — the tenants file: libyaml document -> srv_tenants, with errors that name the
 * file, line, column and field (see tenants.h for the format). */
#include "tenants.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/common.h"
#include "memory/policy.h"

typedef struct {
    const char *file;
    yaml_document_t *doc;
    char field[128]; /* "tenants[2].limits.kv_pages" */
} pctx;

static int fail(pctx *p, const yaml_node_t *n, const char *fmt, ...) KVS_PRINTF(3, 4);
static int fail(pctx *p, const yaml_node_t *n, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t line = n ? n->start_mark.line + 1 : 1, col = n ? n->start_mark.column + 1 : 1;
    return kvs_error(KVS_EFORMAT, "%s:%zu:%zu: %s: %s", p->file, line, col,
                     p->field[0] ? p->field : "(top level)", msg);
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int want_scalar(pctx *p, const yaml_node_t *n, const char **out)
{
    *out = scalar(n);
    if (!*out) return fail(p, n, "expected a single value, not a list or mapping");
    return 0;
}

static int get_int(pctx *p, const yaml_node_t *n, long long min, long long max, long long *out)
{
    const char *s;
    if (want_scalar(p, n, &s)) return KVS_EFORMAT;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return fail(p, n, "'%.40s' is not an integer", s);
    if (v < min || v > max)
        return fail(p, n, "%lld is out of range [%lld, %lld]", v, min, max);
    *out = v;
    return 0;
}

static int get_weight(pctx *p, const yaml_node_t *n, double *out)
{
    const char *s;
    if (want_scalar(p, n, &s)) return KVS_EFORMAT;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return fail(p, n, "'%.40s' is not a number", s);
    if (!(v > 0) || v > 1e6) return fail(p, n, "%g must be > 0 and <= 1e6", v);
    *out = v;
    return 0;
}

static int valid_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

static int add_key(pctx *p, srv_tenant *t, const yaml_node_t *n)
{
    const char *s;
    if (want_scalar(p, n, &s)) return KVS_EFORMAT;
    if (t->n_keys >= SRV_MAX_KEYS) return fail(p, n, "more than %d keys", SRV_MAX_KEYS);
    if (srv_key_hash_parse(s, t->key_hash[t->n_keys])) return fail(p, n, "%s", kvs_last_error());
    t->n_keys++;
    return 0;
}

static int parse_limits(pctx *p, srv_tenant *t, const yaml_node_t *n, size_t flen)
{
    if (n->type != YAML_MAPPING_NODE)
        return fail(p, n, "expected a mapping (kv_pages, max_running, max_queued)");
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, pr->value);
        const char *key = scalar(k);
        long long x;
        snprintf(p->field + flen, sizeof p->field - flen, ".%s", key ? key : "?");
        if (!key) return fail(p, k, "expected a field name");
        if (!strcmp(key, "kv_pages")) {
            if (get_int(p, v, 0, 1LL << 40, &x)) return KVS_EFORMAT;
            t->st.max_kv_pages = x;
        } else if (!strcmp(key, "max_running")) {
            if (get_int(p, v, 0, 1 << 20, &x)) return KVS_EFORMAT;
            t->st.max_running = (int)x;
        } else if (!strcmp(key, "max_queued")) {
            if (get_int(p, v, 0, 1 << 20, &x)) return KVS_EFORMAT;
            t->st.max_queued = (int)x;
        } else {
            return fail(p, k, "unknown limit (expected kv_pages, max_running or max_queued)");
        }
    }
    return 0;
}

static int parse_policies(pctx *p, srv_tenant *t, const yaml_node_t *n)
{
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(p, n, "expected a list of policy names, e.g. [full, qfilters]");
    char *out = t->st.allowed_policies;
    size_t used = 0;
    out[0] = 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++) {
        yaml_node_t *v = yaml_document_get_node(p->doc, *it);
        const char *s;
        if (want_scalar(p, v, &s)) return KVS_EFORMAT;
        if (!pol_find(s)) {
            const pol_vtable *all[64];
            int na = pol_list(all, 64);
            char names[512] = "";
            for (int i = 0; i < na && i < 64; i++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                         i ? ", " : "", all[i]->name);
            return fail(p, v, "unknown policy '%.40s' (known: %s)", s, names);
        }
        size_t len = strlen(s);
        if (used + len + 2 > sizeof t->st.allowed_policies)
            return fail(p, v, "list too long (at most %zu characters in all)",
                        sizeof t->st.allowed_policies - 1);
        if (used) out[used++] = ',';
        memcpy(out + used, s, len + 1);
        used += len;
    }
    return 0;
}

static int parse_tenant(pctx *p, srv_tenant *t, const yaml_node_t *n, int idx)
{
    snprintf(p->field, sizeof p->field, "tenants[%d]", idx);
    size_t flen = strlen(p->field);
    if (n->type != YAML_MAPPING_NODE)
        return fail(p, n, "expected a mapping with name, key_hash, weight, ...");
    memset(t, 0, sizeof *t);
    t->st.weight = 1.0;
    const yaml_node_t *name_node = NULL;
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, pr->value);
        const char *key = scalar(k);
        snprintf(p->field + flen, sizeof p->field - flen, ".%s", key ? key : "?");
        if (!key) return fail(p, k, "expected a field name");
        long long x;
        const char *s;
        if (!strcmp(key, "name")) {
            if (want_scalar(p, v, &s)) return KVS_EFORMAT;
            if (!valid_name(s, SCHED_NAME_MAX - 1))
                return fail(p, v, "'%.80s' is not a valid name (1-%d characters of A-Z a-z 0-9 "
                            "_ - .)", s, SCHED_NAME_MAX - 1);
            snprintf(t->st.name, sizeof t->st.name, "%s", s);
            name_node = v;
        } else if (!strcmp(key, "key_hash")) {
            if (add_key(p, t, v)) return KVS_EFORMAT;
        } else if (!strcmp(key, "key_hashes")) {
            if (v->type != YAML_SEQUENCE_NODE) return fail(p, v, "expected a list of hashes");
            for (yaml_node_item_t *it = v->data.sequence.items.start;
                 it < v->data.sequence.items.top; it++)
                if (add_key(p, t, yaml_document_get_node(p->doc, *it))) return KVS_EFORMAT;
        } else if (!strcmp(key, "weight")) {
            if (get_weight(p, v, &t->st.weight)) return KVS_EFORMAT;
        } else if (!strcmp(key, "priority")) {
            if (get_int(p, v, -1000000, 1000000, &x)) return KVS_EFORMAT;
            t->st.priority = (int)x;
        } else if (!strcmp(key, "limits")) {
            if (parse_limits(p, t, v, strlen(p->field))) return KVS_EFORMAT;
        } else if (!strcmp(key, "allowed_policies")) {
            if (parse_policies(p, t, v)) return KVS_EFORMAT;
        } else {
            return fail(p, k, "unknown field (expected name, key_hash, key_hashes, weight, "
                        "priority, limits, allowed_policies)");
        }
    }
    p->field[flen] = 0;
    if (!name_node) return fail(p, n, "missing 'name'");
    snprintf(p->field + flen, sizeof p->field - flen, " ('%s')", t->st.name);
    if (t->n_keys == 0)
        return fail(p, n, "missing 'key_hash' (make one with `kvsieve hash-key --generate`)");
    return 0;
}

static int parse_doc(pctx *p, srv_tenants *out)
{
    yaml_node_t *root = yaml_document_get_root_node(p->doc);
    if (!root) return fail(p, NULL, "the file is empty (expected 'tenants:' and a list)");
    if (root->type != YAML_MAPPING_NODE) return fail(p, root, "expected a mapping with 'tenants'");
    yaml_node_t *list = NULL;
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start;
         pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pr->key);
        const char *key = scalar(k);
        if (key && !strcmp(key, "tenants")) {
            list = yaml_document_get_node(p->doc, pr->value);
        } else {
            snprintf(p->field, sizeof p->field, "%s", key ? key : "?");
            return fail(p, k, "unknown top-level field (expected 'tenants')");
        }
    }
    snprintf(p->field, sizeof p->field, "tenants");
    if (!list) return fail(p, root, "missing 'tenants'");
    if (list->type != YAML_SEQUENCE_NODE) return fail(p, list, "expected a list of tenants");
    int n = (int)(list->data.sequence.items.top - list->data.sequence.items.start);
    if (n == 0) return fail(p, list, "the list is empty (without a tenants file the server "
                            "runs open, with one tenant 'default')");
    if (n > SRV_MAX_TENANTS) return fail(p, list, "more than %d tenants", SRV_MAX_TENANTS);
    out->v = calloc((size_t)n, sizeof *out->v);
    if (!out->v) return kvs_error(KVS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        yaml_node_t *tn = yaml_document_get_node(p->doc, list->data.sequence.items.start[i]);
        srv_tenant *t = &out->v[i];
        if (parse_tenant(p, t, tn, i)) return KVS_EFORMAT;
        out->n = i + 1;
        for (int j = 0; j < i; j++) {
            if (!strcmp(out->v[j].st.name, t->st.name))
                return fail(p, tn, "tenant name '%s' is used twice", t->st.name);
            for (int a = 0; a < t->n_keys; a++)
                for (int b = 0; b < out->v[j].n_keys; b++)
                    if (!memcmp(t->key_hash[a], out->v[j].key_hash[b], SRV_KEY_HASH_LEN))
                        return fail(p, tn, "key hash %d is also a key of tenant '%s'", a,
                                    out->v[j].st.name);
        }
    }
    return 0;
}

int srv_tenants_parse(const char *text, size_t len, const char *name, srv_tenants *out)
{
    memset(out, 0, sizeof *out);
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) return kvs_error(KVS_ENOMEM, "yaml: out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = kvs_error(KVS_EFORMAT, "%s:%zu:%zu: YAML syntax error: %s%s%s", name,
                           parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                           parser.problem ? parser.problem : "unknown",
                           parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return rc;
    }
    pctx p = {.file = name, .doc = &doc};
    int rc = parse_doc(&p, out);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc) srv_tenants_free(out);
    return rc;
}

int srv_tenants_load(const char *path, srv_tenants *out)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return kvs_error(KVS_EIO, "%s: cannot open tenants file: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) {
                free(buf);
                fclose(f);
                return kvs_error(KVS_EFORMAT, "%s: tenants file larger than 64 MiB", path);
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return kvs_error(KVS_ENOMEM, "out of memory");
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return kvs_error(KVS_EIO, "%s: read error", path);
    }
    int rc = srv_tenants_parse(buf ? buf : "", len, path, out);
    free(buf);
    return rc;
}

void srv_tenants_free(srv_tenants *t)
{
    if (!t) return;
    free(t->v);
    t->v = NULL;
    t->n = 0;
}
