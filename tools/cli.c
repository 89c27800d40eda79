/* cli.c — defaults and strict number parsing for the kvsieve subcommands. */
#include "cli.h"
#include "memory/kv_format.h"

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/common.h"
#include "memory/policy.h"

const char *cli_default_model(void)
{
    static char buf[PATH_MAX + 64];
    const char *env = getenv("KVSIEVE_MODEL");
    if (env && *env) return env;
    if (access(KVS_DEFAULT_MODEL_REL, R_OK) == 0) return KVS_DEFAULT_MODEL_REL;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        snprintf(buf, sizeof buf, "%s/../" KVS_DEFAULT_MODEL_REL, dirname(exe));
        if (access(buf, R_OK) == 0) return buf;
    }
    return KVS_DEFAULT_MODEL_REL;
}

int cli_int(const char *cmd, const char *flag, const char *s, long long min, long long max,
            long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, "kvsieve %s: %s: '%s' is not an integer\n", cmd, flag, s);
        return -1;
    }
    if (v < min || v > max) {
        fprintf(stderr, "kvsieve %s: %s: %lld is out of range [%lld, %lld]\n", cmd, flag, v, min,
                max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *cmd, const char *flag, const char *s, double min, double max,
              double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "kvsieve %s: %s: '%s' is not a number\n", cmd, flag, s);
        return -1;
    }
    if (v < min || v > max) {
        fprintf(stderr, "kvsieve %s: %s: %g is out of range [%g, %g]\n", cmd, flag, v, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_size(const char *cmd, const char *flag, const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mult = 1.0;
    if (!errno && end != s) {
        if (!strcasecmp(end, "") || !strcasecmp(end, "b")) mult = 1.0;
        else if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb")) mult = 1024.0;
        else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb")) mult = 1048576.0;
        else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb")) mult = 1073741824.0;
        else mult = -1.0;
    }
    if (errno || end == s || mult < 0 || !(v > 0) || v * mult > 1e15) {
        fprintf(stderr, "kvsieve %s: %s: '%s' is not a size (e.g. 512M, 2G, 1.5GiB)\n", cmd,
                flag, s);
        return -1;
    }
    *out = (size_t)(v * mult);
    return 0;
}

int cli_int_list(const char *cmd, const char *flag, const char *s, long long min, long long max,
                 int32_t *out, int cap)
{
    int n = 0;
    const char *p = s;
    if (!*p) {
        fprintf(stderr, "kvsieve %s: %s: empty list\n", cmd, flag);
        return -1;
    }
    while (*p) {
        char item[32];
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item) {
            fprintf(stderr, "kvsieve %s: %s: bad list '%s' (expected e.g. 1,8,32)\n", cmd, flag, s);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = 0;
        long long v;
        if (cli_int(cmd, flag, item, min, max, &v)) return -1;
        if (n >= cap) {
            fprintf(stderr, "kvsieve %s: %s: more than %d values\n", cmd, flag, cap);
            return -1;
        }
        out[n++] = (int32_t)v;
        p += len;
        if (*p == ',') {
            p++;
            if (!*p) {
                fprintf(stderr, "kvsieve %s: %s: trailing comma in '%s'\n", cmd, flag, s);
                return -1;
            }
        }
    }
    return n;
}

const char cli_policy_help[] =
    "  --policy NAME       KV eviction policy (default full; see 'kvsieve policies')\n"
    "  --ratio R           fraction of KV entries removed per head, in [0, 1) (x8 = 0.875)\n"
    "  --budget B          KV entries kept per head (instead of --ratio)\n"
    "  --window W          most recent tokens always kept\n"
    "  --sink S            first tokens always kept\n"
    "  --when WHEN         prefill | decode | pressure (default: decode with --budget, else prefill)\n"
    "  --policy-args ARGS  policy-specific options, e.g. filters=FILE for qfilters\n"
    "  --policy-plugin SO  load an external policy (repeatable; any subcommand)\n";

static int append_arg(const char *cmd, cli_policy *p, const char *key, const char *val)
{
    size_t n = strlen(p->args);
    int w = snprintf(p->args + n, sizeof p->args - n, "%s%s%s%s", n ? "," : "", key,
                     key[0] ? "=" : "", val);
    if (w < 0 || (size_t)w >= sizeof p->args - n) {
        fprintf(stderr, "kvsieve %s: policy options too long\n", cmd);
        return -1;
    }
    return 1;
}

int cli_policy_flag(const char *cmd, cli_policy *p, const char *flag, const char *arg)
{
    static const char *keys[] = {"ratio", "budget", "window", "sink", "when"};
    if (!strcmp(flag, "policy")) { p->name = arg; return 1; }
    if (!strcmp(flag, "policy-args")) return append_arg(cmd, p, "", arg);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(flag, keys[i])) return append_arg(cmd, p, keys[i], arg);
    return 0;
}

void cli_policy_finish(cli_policy *p, const char *model_path)
{
    if (!p->name) p->name = "full";
    if (strcmp(p->name, "qfilters") || strstr(p->args, "filters=")) return;
    char path[PATH_MAX];
    size_t n = strlen(model_path);
    if (n > 5 && !strcmp(model_path + n - 5, ".gguf")) n -= 5;
    if (n + 7 >= sizeof path) return;
    memcpy(path, model_path, n);
    strcpy(path + n, ".kvsqf");
    if (access(path, R_OK) == 0) append_arg("", p, "filters", path);
}

int cli_load_plugins(int argc, char **argv)
{
    int out = 0;
    for (int i = 0; i < argc; i++) {
        const char *path = NULL;
        if (!strcmp(argv[i], "--policy-plugin")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kvsieve: --policy-plugin needs a path\n");
                return -1;
            }
            path = argv[++i];
        } else if (!strncmp(argv[i], "--policy-plugin=", 16)) {
            path = argv[i] + 16;
        }
        if (path) {
            const pol_vtable *vt;
            if (pol_load_plugin(path, &vt)) {
                fprintf(stderr, "kvsieve: %s\n", kvs_last_error());
                return -1;
            }
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    return out;
}

int cli_kv_dtype(const char *cmd, const char *spec)
{
    const kv_format *k, *v;
    if (kv_format_spec_parse(spec, &k, &v)) {
        fprintf(stderr, "kvsieve %s: --kv-dtype: %s\n", cmd, kvs_last_error());
        return 1;
    }
    return 0;
}

int cli_policy_sized(const char *name, const char *args)
{
    if (name && !strcmp(name, "default")) return 1;
    return pol_args_sized(name, args);
}

/* Edit distance (insertions, deletions, substitutions), capped at 99. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 60 || lb > 60) return 99;
    int d[61][61];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int x = d[i - 1][j] + 1, y = d[i][j - 1] + 1;
            d[i][j] = c < x ? (c < y ? c : y) : (x < y ? x : y);
        }
    return d[la][lb];
}

int cli_bad_option(const char *cmd, const struct option *opts, const char *arg)
{
    char name[128];
    const char *a = arg ? arg : "";
    while (*a == '-') a++;
    snprintf(name, sizeof name, "%.*s", (int)strcspn(a, "="), a);
    const struct option *known = NULL, *best = NULL;
    int best_d = 99;
    for (const struct option *o = opts; o && o->name; o++) {
        if (!strcmp(o->name, name)) known = o;
        int d = edit_distance(name, o->name);
        if (!strncmp(o->name, name, strlen(name)) && strlen(name) >= 3) d = 1;
        if (d < best_d) best_d = d, best = o;
    }
    if (known && known->has_arg == required_argument)
        fprintf(stderr, "kvsieve %s: option '--%s' needs a value\n", cmd, known->name);
    else if (best && best_d <= (strlen(name) > 6 ? 3 : 2))
        fprintf(stderr, "kvsieve %s: unknown option '%s'; did you mean '--%s'?\n", cmd, arg,
                best->name);
    else
        fprintf(stderr, "kvsieve %s: unknown option '%s'\n", cmd, arg);
    fprintf(stderr, "'kvsieve %s --help' lists the options\n", cmd);
    return 2;
}
