/* eval_policies.c — the --policies list of `kvsieve eval` and each policy's extra options. */
#include "eval/eval.h"

#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "core/common.h"

static int append(char *buf, size_t size, const char *s)
{
    if (!s[0]) return 0;
    size_t n = strlen(buf);
    int w = snprintf(buf + n, size - n, "%s%s", n ? "," : "", s);
    return w < 0 || (size_t)w >= size - n ? -1 : 0;
}

int eval_parse_policies(const char *cmd, const char *list, char *const *extra, int n_extra,
                        const char *model_path, eval_policy *out, int cap)
{
    int n = 0;
    const char *p = list;
    if (!*p) {
        fprintf(stderr, "kvsieve %s: --policies: empty list\n", cmd);
        return -1;
    }
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof out[0].name) {
            fprintf(stderr, "kvsieve %s: --policies: bad list '%s' (expected names separated "
                    "by commas, e.g. full,streaming,qfilters)\n", cmd, list);
            return -1;
        }
        if (n == cap) {
            fprintf(stderr, "kvsieve %s: --policies: more than %d policies\n", cmd, cap);
            return -1;
        }
        eval_policy *e = &out[n];
        memset(e, 0, sizeof *e);
        memcpy(e->name, p, len);
        const pol_vtable *vt = pol_find(e->name);
        if (!vt) {
            const pol_vtable *all[64];
            int m = pol_list(all, 64);
            char known[512] = "";
            for (int i = 0; i < m && i < 64; i++) append(known, sizeof known, all[i]->name);
            fprintf(stderr, "kvsieve %s: --policies: unknown policy '%s' (known: %s)\n", cmd,
                    e->name, known);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (!strcmp(out[i].name, e->name)) {
                fprintf(stderr, "kvsieve %s: --policies: '%s' is listed twice\n", cmd, e->name);
                return -1;
            }
        e->flags = vt->flags;
        n++;
        p += len;
        if (*p == ',') {
            p++;
            if (!*p) {
                fprintf(stderr, "kvsieve %s: --policies: trailing comma in '%s'\n", cmd, list);
                return -1;
            }
        }
    }
    /* --policy-args: "K=V,..." for all, "NAME:K=V,..." for one. */
    for (int k = 0; k < n_extra; k++) {
        const char *a = extra[k], *colon = strchr(a, ':'), *eq = strchr(a, '=');
        int target = -1;
        if (colon && (!eq || colon < eq)) {
            size_t len = (size_t)(colon - a);
            for (int i = 0; i < n; i++)
                if (strlen(out[i].name) == len && !strncmp(out[i].name, a, len)) target = i;
            if (target < 0) {
                fprintf(stderr, "kvsieve %s: --policy-args '%s': policy '%.*s' is not in "
                        "--policies\n", cmd, a, (int)len, a);
                return -1;
            }
            a = colon + 1;
        }
        for (int i = 0; i < n; i++) {
            if (target >= 0 && i != target) continue;
            if (append(out[i].args, sizeof out[i].args, a)) {
                fprintf(stderr, "kvsieve %s: --policy-args: options of %s are too long\n", cmd,
                        out[i].name);
                return -1;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(out[i].name, "qfilters") || strstr(out[i].args, "filters=")) continue;
        cli_policy cp = {0};
        cp.name = "qfilters";
        size_t len = strlen(out[i].args);
        if (len >= sizeof cp.args) {
            fprintf(stderr, "kvsieve %s: --policy-args: options of qfilters are too long\n", cmd);
            return -1;
        }
        memcpy(cp.args, out[i].args, len + 1);
        cli_policy_finish(&cp, model_path);
        if (!strstr(cp.args, "filters=")) {
            fprintf(stderr, "kvsieve %s: qfilters needs a filters file for this model: run "
                    "scripts/make-filters (it writes the model's path with .kvsqf for .gguf), "
                    "or pass --policy-args qfilters:filters=FILE (made by `kvsieve "
                    "calibrate`)\n", cmd);
            return -1;
        }
        snprintf(out[i].args, sizeof out[i].args, "%s", cp.args);
    }
    return n;
}

void eval_policy_args(const eval_policy *p, const char *base, char *buf, size_t size)
{
    buf[0] = '\0';
    append(buf, size, base);
    append(buf, size, p->args);
}
