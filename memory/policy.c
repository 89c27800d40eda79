/* policy.c — the policy registry (built-ins + dlopen'd plugins), the common option parser and
 * policy instances (ARCHITECTURE.md §4). The eviction driver is in evict.c.
 *
 * The registry is the one piece of process-wide state here, like SQLite's VFS list: policies
 * are registered once and read by every engine; a mutex guards it. */
#include "memory/policy.h"

#include "core/common.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* policies/builtin.c: the built-in vtables, NULL-terminated. */
extern const pol_vtable *const pol_builtin_vtables[];

#define POL_MAX_POLICIES 128
#define POL_MAX_NAME 31

static struct {
    pthread_mutex_t lock;
    pthread_once_t once;
    const pol_vtable *vt[POL_MAX_POLICIES];
    int n;
} reg = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_ONCE_INIT, { NULL }, 0 };

/* ---- registry ---------------------------------------------------------------------------- */

static int check_vtable(const pol_vtable *vt)
{
    if (!vt) return kvs_error(KVS_EINVAL, "cannot register a NULL policy");
    if (!vt->name || !vt->name[0])
        return kvs_error(KVS_EINVAL, "cannot register a policy without a name");
    size_t n = strlen(vt->name);
    if (n > POL_MAX_NAME)
        return kvs_error(KVS_EINVAL, "policy name '%.40s...' is longer than %d characters",
                         vt->name, POL_MAX_NAME);
    for (size_t i = 0; i < n; i++) {
        char c = vt->name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return kvs_error(KVS_EINVAL, "policy name '%s' has a character outside "
                             "[a-z0-9_-]", vt->name);
    }
    if (vt->version < POL_API_VERSION_MIN || vt->version > POL_API_VERSION)
        return kvs_error(KVS_EINVAL, "policy '%s' was written for policy API version %d; "
                         "this kvsieve speaks versions %d to %d", vt->name, vt->version,
                         POL_API_VERSION_MIN, POL_API_VERSION);
    if (!vt->description)
        return kvs_error(KVS_EINVAL, "policy '%s' has no description", vt->name);
    return KVS_OK;
}

/* Add vt under the lock. Same vtable twice: no-op. */
static int reg_add(const pol_vtable *vt)
{
    int rc = check_vtable(vt);
    if (rc) return rc;
    pthread_mutex_lock(&reg.lock);
    for (int i = 0; i < reg.n; i++) {
        if (reg.vt[i] == vt) { pthread_mutex_unlock(&reg.lock); return KVS_OK; }
        if (strcmp(reg.vt[i]->name, vt->name) == 0) {
            pthread_mutex_unlock(&reg.lock);
            return kvs_error(KVS_EINVAL, "a policy named '%s' is already registered; give "
                             "the new one another name", vt->name);
        }
    }
    if (reg.n == POL_MAX_POLICIES) {
        pthread_mutex_unlock(&reg.lock);
        return kvs_error(KVS_ERANGE, "cannot register policy '%s': %d policies are already "
                         "registered", vt->name, POL_MAX_POLICIES);
    }
    reg.vt[reg.n++] = vt;
    pthread_mutex_unlock(&reg.lock);
    return KVS_OK;
}

/* Built-ins are well-formed and distinct (test_policy checks they are all found). */
static void register_builtins(void)
{
    for (int i = 0; pol_builtin_vtables[i]; i++) (void)reg_add(pol_builtin_vtables[i]);
}

static void ensure_builtins(void) { pthread_once(&reg.once, register_builtins); }

int pol_register(const pol_vtable *vt)
{
    ensure_builtins();
    return reg_add(vt);
}

const pol_vtable *pol_find(const char *name)
{
    ensure_builtins();
    if (!name) return NULL;
    const pol_vtable *found = NULL;
    pthread_mutex_lock(&reg.lock);
    for (int i = 0; i < reg.n && !found; i++)
        if (strcmp(reg.vt[i]->name, name) == 0) found = reg.vt[i];
    pthread_mutex_unlock(&reg.lock);
    return found;
}

int pol_list(const pol_vtable **out, int max)
{
    ensure_builtins();
    pthread_mutex_lock(&reg.lock);
    int n = reg.n;
    for (int i = 0; i < n && i < max; i++) out[i] = reg.vt[i];
    pthread_mutex_unlock(&reg.lock);
    return n;
}

int pol_load_plugin(const char *path, const pol_vtable **out)
{
    if (out) *out = NULL;
    if (!path || !path[0]) return kvs_error(KVS_EINVAL, "no policy plugin path given");
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        return kvs_error(KVS_EIO, "cannot load policy plugin %s: %s", path,
                         e ? e : "dlopen failed");
    }
    dlerror();
    void *sym = dlsym(h, POL_PLUGIN_SYMBOL);
    if (!sym) {
        const char *e = dlerror();
        int rc = kvs_error(KVS_ENOTFOUND, "%s is not a kvsieve policy plugin: it does not "
                           "export %s (%s)", path, POL_PLUGIN_SYMBOL, e ? e : "symbol is NULL");
        dlclose(h);
        return rc;
    }
    pol_plugin_register_fn fn;
    memcpy(&fn, &sym, sizeof fn); /* object pointer -> function pointer, as POSIX allows */
    const pol_vtable *vt = NULL;
    int plugin_version = fn(POL_API_VERSION, &vt);
    int rc;
    if (plugin_version <= 0)
        rc = kvs_error(KVS_EINVAL, "policy plugin %s: %s(%d) failed (returned %d)", path,
                       POL_PLUGIN_SYMBOL, POL_API_VERSION, plugin_version);
    else if (!vt)
        rc = kvs_error(KVS_EUNSUPPORTED, "policy plugin %s needs policy API version %d; this "
                       "kvsieve provides version %d (rebuild the plugin against this "
                       "kvsieve's memory/policy.h, or upgrade kvsieve)", path, plugin_version,
                       POL_API_VERSION);
    else if (vt->version != plugin_version)
        rc = kvs_error(KVS_EINVAL, "policy plugin %s is inconsistent: it says API version %d "
                       "but its vtable says %d", path, plugin_version, vt->version);
    else if (vt->version > POL_API_VERSION || vt->version < POL_API_VERSION_MIN)
        rc = kvs_error(KVS_EUNSUPPORTED, "policy plugin %s was built for policy API version %d;"
                       " this kvsieve supports versions %d to %d (rebuild the plugin against "
                       "this kvsieve's memory/policy.h)", path, vt->version,
                       POL_API_VERSION_MIN, POL_API_VERSION);
    else {
        rc = pol_register(vt);
        if (rc) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", kvs_last_error());
            rc = kvs_error(rc, "policy plugin %s: %s", path, msg);
        }
    }
    if (rc) { dlclose(h); return rc; }
    /* Registered: the library stays loaded (dlopen of an already loaded library only bumped
     * its reference count, so a second load of the same plugin is harmless). */
    if (out) *out = vt;
    return KVS_OK;
}

/* ---- options ----------------------------------------------------------------------------- */

void pol_opts_default(pol_opts *o)
{
    o->ratio = -1.0;
    o->budget = 0;
    o->window = 0;
    o->sink = 0;
    o->when = POL_WHEN_AUTO;
    o->layer_first = 0;
    o->layer_last = INT32_MAX;
}

/* layers=A-B or layers=A (one layer), 0 <= A <= B. */
static int parse_layers(const char *val, pol_opts *o)
{
    const char *p = val;
    long long a = 0, b;
    if (!isdigit((unsigned char)*p)) goto bad;
    for (; isdigit((unsigned char)*p) && a <= POL_MAX_TOKENS; p++) a = a * 10 + (*p - '0');
    b = a;
    if (*p == '-') {
        p++;
        if (!isdigit((unsigned char)*p)) goto bad;
        for (b = 0; isdigit((unsigned char)*p) && b <= POL_MAX_TOKENS; p++) b = b * 10 + (*p - '0');
    }
    if (*p || a > POL_MAX_TOKENS || b > POL_MAX_TOKENS || a > b) goto bad;
    o->layer_first = (int32_t)a;
    o->layer_last = (int32_t)b;
    return KVS_OK;
bad:
    return kvs_error(KVS_EINVAL, "layers=%s: layers must be A-B (first and last layer, 0 <= A <= "
                     "B) or a single layer A", val);
}

pol_when pol_opts_when(const pol_opts *o)
{
    if (o->when != POL_WHEN_AUTO) return o->when;
    return o->budget > 0 ? POL_WHEN_DECODE : POL_WHEN_PREFILL;
}

/* Strictly parse a token count in [0, POL_MAX_TOKENS]. */
static int parse_count(const char *key, const char *val, int32_t lo, int32_t *out)
{
    const char *p = val;
    if (*p == '+') p++;
    int neg = 0;
    if (*p == '-') { neg = 1; p++; }
    if (!isdigit((unsigned char)*p)) goto bad;
    long long v = 0;
    for (; isdigit((unsigned char)*p); p++) {
        v = v * 10 + (*p - '0');
        if (v > POL_MAX_TOKENS) {
            while (isdigit((unsigned char)*p)) p++;
            if (*p) goto bad;
            goto range;
        }
    }
    if (*p) goto bad;
    if (neg) v = -v;
    if (v < lo) goto range;
    *out = (int32_t)v;
    return KVS_OK;
bad:
    return kvs_error(KVS_EINVAL, "%s=%s: %s must be a whole number of tokens in [%d, %d]",
                     key, val, key, (int)lo, POL_MAX_TOKENS);
range:
    return kvs_error(KVS_EINVAL, "%s=%s: %s must be in [%d, %d]", key, val, key, (int)lo,
                     POL_MAX_TOKENS);
}

static int parse_ratio(const char *val, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end || errno == ERANGE || !isfinite(v))
        return kvs_error(KVS_EINVAL, "ratio=%s: ratio must be a number in [0, 1) (the fraction "
                         "of tokens removed, e.g. 0.875 for x8)", val);
    if (!(v >= 0.0 && v < 1.0))
        return kvs_error(KVS_EINVAL, "ratio=%s: ratio must be in [0, 1) (the fraction of "
                         "tokens removed, e.g. 0.875 for x8)", val);
    *out = v;
    return KVS_OK;
}

/* Copy s[0..n) trimmed of spaces into buf (size > n). */
static void trimmed(const char *s, size_t n, char *buf)
{
    while (n && isspace((unsigned char)*s)) { s++; n--; }
    while (n && isspace((unsigned char)s[n - 1])) n--;
    memcpy(buf, s, n);
    buf[n] = '\0';
}

int pol_opts_parse(const char *args, pol_opts *o, char *rest, size_t rest_size)
{
    if (rest_size) rest[0] = '\0';
    if (!args) return KVS_OK;
    size_t len = strlen(args);
    /* An all-blank string is no options. */
    size_t i0 = 0;
    while (i0 < len && isspace((unsigned char)args[i0])) i0++;
    if (i0 == len) return KVS_OK;

    char *item = malloc(len + 1), *keys = malloc(len + 2);
    if (!item || !keys) {
        free(item); free(keys);
        return kvs_error(KVS_ENOMEM, "out of memory parsing policy options");
    }
    size_t keys_len = 0, rest_len = 0;
    keys[0] = '\0';
    int rc = KVS_OK;
    const char *p = args;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        trimmed(p, n, item);
        if (!item[0]) {
            rc = kvs_error(KVS_EINVAL, "policy options '%s': empty option (two commas in a row,"
                           " or a comma at an end)", args);
            break;
        }
        char *eq = strchr(item, '=');
        if (!eq) {
            rc = kvs_error(KVS_EINVAL, "policy option '%s': expected key=value (e.g. "
                           "ratio=0.5, budget=256, window=64, sink=4, when=decode)", item);
            break;
        }
        *eq = '\0';
        char key[64], val[4096];
        if (strlen(item) >= sizeof key || strlen(eq + 1) >= sizeof val) {
            rc = kvs_error(KVS_EINVAL, "policy option '%.40s...' is too long", item);
            break;
        }
        trimmed(item, strlen(item), key);
        trimmed(eq + 1, strlen(eq + 1), val);
        if (!key[0]) {
            rc = kvs_error(KVS_EINVAL, "policy option '=%s': missing the key before '='", val);
            break;
        }
        if (!val[0]) {
            rc = kvs_error(KVS_EINVAL, "policy option '%s=': %s needs a value", key, key);
            break;
        }
        for (const char *k = key; *k; k++)
            if (isspace((unsigned char)*k) || *k == '=') {
                rc = kvs_error(KVS_EINVAL, "policy option key '%s' is malformed", key);
                break;
            }
        if (rc) break;
        /* Duplicates: keys seen so far in this string, as ",k1,k2,". */
        char probe[70];
        snprintf(probe, sizeof probe, ",%s,", key);
        if (keys_len == 0) { keys[0] = ','; keys[1] = '\0'; keys_len = 1; }
        if (strstr(keys, probe)) {
            rc = kvs_error(KVS_EINVAL, "policy option '%s' is given twice", key);
            break;
        }
        memcpy(keys + keys_len, key, strlen(key));
        keys_len += strlen(key);
        keys[keys_len++] = ',';
        keys[keys_len] = '\0';

        if (strcmp(key, "ratio") == 0) rc = parse_ratio(val, &o->ratio);
        else if (strcmp(key, "budget") == 0) rc = parse_count(key, val, 1, &o->budget);
        else if (strcmp(key, "window") == 0) rc = parse_count(key, val, 0, &o->window);
        else if (strcmp(key, "sink") == 0) rc = parse_count(key, val, 0, &o->sink);
        else if (strcmp(key, "layers") == 0) rc = parse_layers(val, o);
        else if (strcmp(key, "when") == 0) {
            if (strcmp(val, "prefill") == 0) o->when = POL_WHEN_PREFILL;
            else if (strcmp(val, "prefill_end") == 0) o->when = POL_WHEN_PREFILL_END;
            else if (strcmp(val, "decode") == 0) o->when = POL_WHEN_DECODE;
            else if (strcmp(val, "pressure") == 0) o->when = POL_WHEN_PRESSURE;
            else rc = kvs_error(KVS_EINVAL, "when=%s: when must be prefill, prefill_end, decode or pressure",
                                val);
        } else {
            /* A policy's own option: pass it on. */
            size_t need = strlen(key) + 1 + strlen(val) + (rest_len ? 1 : 0);
            if (rest_len + need + 1 > rest_size) {
                rc = rest_size ? kvs_error(KVS_EINVAL, "policy options are too long")
                               : kvs_error(KVS_EINVAL, "unknown policy option '%s' (common "
                                           "options: ratio, budget, window, sink, when, layers)", key);
                break;
            }
            rest_len += (size_t)snprintf(rest + rest_len, rest_size - rest_len, "%s%s=%s",
                                         rest_len ? "," : "", key, val);
        }
        if (rc || !end) break;
        p = end + 1;
    }
    free(item);
    free(keys);
    if (rc) return rc;
    if (o->ratio >= 0.0 && o->budget > 0)
        return kvs_error(KVS_EINVAL, "policy options give both ratio and budget: use one "
                         "(ratio = fraction of tokens removed, budget = tokens kept per head)");
    if (o->budget > 0 && (int64_t)o->window + o->sink > o->budget)
        return kvs_error(KVS_EINVAL, "budget=%d is less than window + sink = %d: the protected "
                         "tokens alone would exceed the budget (raise budget or lower "
                         "window/sink)", (int)o->budget, (int)(o->window + o->sink));
    return KVS_OK;
}

int32_t pol_n_keep(const pol_opts *o, int32_t T)
{
    if (T < 0) T = 0;
    if (o->budget > 0) return o->budget;
    if (o->ratio < 0.0) return INT32_MAX;
    /* floor(T * (1 - ratio)) for the ratio as written in decimal: 1 - 0.9 is
     * 0.09999999999999998 in binary, so 10 * (1 - 0.9) floors to 0. Double rounding here is
     * below 4e-16 * T; a tolerance of 1e-12 * (T + 1) absorbs it while staying far below any
     * real fraction of a token for ratios written with up to 10 decimals (0.9 of 10 keeps 1,
     * 0.875 of 64 keeps 8, 0.5 of 7 keeps 3). */
    double keep = floor((double)T * (1.0 - o->ratio) + 1e-12 * ((double)T + 1.0));
    if (keep < 0.0) keep = 0.0;
    if (keep > (double)T) keep = (double)T;
    return (int32_t)keep;
}

/* ---- instances --------------------------------------------------------------------------- */

int pol_instance_create(const char *name, const char *args, const pol_model_info *mi,
                        pol_instance **out)
{
    *out = NULL;
    const pol_vtable *vt = pol_find(name);
    if (!vt) {
        char known[512] = "";
        const pol_vtable *all[POL_MAX_POLICIES];
        int n = pol_list(all, POL_MAX_POLICIES);
        size_t k = 0;
        for (int i = 0; i < n && i < POL_MAX_POLICIES && k < sizeof known; i++)
            k += (size_t)snprintf(known + k, sizeof known - k, "%s%s", i ? ", " : "",
                                  all[i]->name);
        return kvs_error(KVS_ENOTFOUND, "unknown eviction policy '%s' (known: %s; plugins are "
                         "loaded with --policy-plugin)", name ? name : "(null)", known);
    }
    if (!mi || mi->n_layers < 1 || mi->n_heads < 1 || mi->n_kv_heads < 1 || mi->head_dim < 1 ||
        mi->n_heads % mi->n_kv_heads != 0)
        return kvs_error(KVS_EINVAL, "policy %s: bad model geometry", vt->name);

    pol_opts o;
    pol_opts_default(&o);
    int rc;
    if (vt->default_args && (rc = pol_opts_parse(vt->default_args, &o, NULL, 0)))
        return kvs_error(rc, "policy %s: bad default options \"%s\"", vt->name,
                         vt->default_args);
    size_t rest_size = (args ? strlen(args) : 0) + 1;
    char *rest = malloc(rest_size);
    if (!rest) return kvs_error(KVS_ENOMEM, "out of memory creating policy %s", vt->name);
    if ((rc = pol_opts_parse(args, &o, rest, rest_size))) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", kvs_last_error());
        free(rest);
        return kvs_error(rc, "policy %s: %s", vt->name, msg);
    }
    o.when = pol_opts_when(&o);
    if (o.layer_first >= mi->n_layers) {
        free(rest);
        return kvs_error(KVS_ERANGE, "policy %s: layers=%d-%d: the model has layers 0-%d",
                         vt->name, (int)o.layer_first, (int)o.layer_last, mi->n_layers - 1);
    }

    void *state = NULL;
    if (vt->create) {
        char err[512] = "";
        rc = vt->create(mi, &o, rest, &state, err, sizeof err);
        if (rc) {
            free(rest);
            return kvs_error(rc < 0 ? rc : KVS_EINVAL, "policy %s: %s", vt->name,
                             err[0] ? err : "create failed");
        }
    } else if (rest[0]) {
        const char *cur = rest;
        char key[64], val[8];
        pol_args_next(&cur, key, sizeof key, val, sizeof val);
        free(rest);
        return kvs_error(KVS_EINVAL, "policy %s: unknown option '%s' (%s takes only the common "
                         "options ratio, budget, window, sink, when, layers)", vt->name, key, vt->name);
    }
    free(rest);
    pol_instance *inst = calloc(1, sizeof *inst);
    if (!inst) {
        if (vt->destroy) vt->destroy(state);
        return kvs_error(KVS_ENOMEM, "out of memory creating policy %s", vt->name);
    }
    inst->vt = vt;
    inst->state = state;
    inst->opts = o;
    /* device_score exists from version 2 on: never read it from an older (shorter) vtable */
    inst->dev.kind = vt->score_keys ? POL_SCORE_HOST : POL_SCORE_ZERO;
    inst->dev.u = NULL;
    if (vt->version >= 2 && vt->device_score && vt->score_keys) {
        pol_device_score d = {POL_SCORE_HOST, NULL};
        vt->device_score(state, &d);
        if (d.kind >= POL_SCORE_HOST && d.kind <= POL_SCORE_POS &&
            (d.kind != POL_SCORE_DOT || d.u))
            inst->dev = d;
    }
    *out = inst;
    return KVS_OK;
}

void pol_instance_destroy(pol_instance *inst)
{
    if (!inst) return;
    if (inst->vt->destroy) inst->vt->destroy(inst->state);
    free(inst->scratch);
    free(inst);
}

void pol_score_keys(void *ctx, int layer, int kv_head, const float *keys, const int32_t *pos,
                    int n, float *out)
{
    pol_instance *inst = ctx;
    if (inst->vt->score_keys) inst->vt->score_keys(inst->state, layer, kv_head, keys, pos, n, out);
    else memset(out, 0, (size_t)(n > 0 ? n : 0) * sizeof *out);
}

static int names_size(const char *args)
{
    const char *cur = args ? args : "";
    char key[64], val[256];
    while (pol_args_next(&cur, key, sizeof key, val, sizeof val) > 0)
        if (!strcmp(key, "ratio") || !strcmp(key, "budget")) return 1;
    return 0;
}

int pol_args_sized(const char *name, const char *args)
{
    if (!name || !*name) return 1;
    const pol_vtable *vt = pol_find(name);
    if (!vt || (vt->flags & POL_NO_EVICTION)) return 1;
    return names_size(args) || names_size(vt->default_args);
}
