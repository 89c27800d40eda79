/* eval_out.c — output of the quality harness: files in --out-dir, CSV / JSON strings, progress
 * lines on stderr, and the Spearman rank correlation used by calibrate's diagnostics. */
#include "eval/eval.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"

FILE *eval_open_out(const char *cmd, const char *dir, const char *name)
{
    char path[4096];
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "kvsieve %s: cannot create --out-dir %s: %s\n", cmd, dir, strerror(errno));
        return NULL;
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) fprintf(stderr, "kvsieve %s: cannot write %s: %s\n", cmd, path, strerror(errno));
    return f;
}

void eval_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

void eval_csv_str(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) { fputs(s, f); return; }
    fputc('"', f);
    for (const char *p = s; *p; p++) {
        if (*p == '"') fputc('"', f);
        fputc(*p == '\n' || *p == '\r' ? ' ' : *p, f);
    }
    fputc('"', f);
}

void eval_fmt_secs(double s, char *buf, size_t size)
{
    if (!(s >= 0) || s > 1e7) { snprintf(buf, size, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, size, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, size, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, size, "%lds", t);
}

typedef struct { double v; int i; } ranked;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return x->i - y->i;
}

/* Average ranks (1-based) of v[n] into r[n]. */
static int ranks(const double *v, int n, double *r)
{
    ranked *t = malloc((size_t)n * sizeof *t);
    if (!t) return -1;
    for (int i = 0; i < n; i++) t[i] = (ranked){v[i], i};
    qsort(t, (size_t)n, sizeof *t, cmp_ranked);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && t[j + 1].v == t[i].v) j++;
        double avg = (i + j) / 2.0 + 1.0;
        for (int k = i; k <= j; k++) r[t[k].i] = avg;
        i = j + 1;
    }
    free(t);
    return 0;
}

double eval_spearman(const double *x, const double *y, int n)
{
    if (n < 3) return NAN;
    double *rx = malloc((size_t)n * sizeof *rx), *ry = malloc((size_t)n * sizeof *ry);
    double out = NAN;
    if (rx && ry && !ranks(x, n, rx) && !ranks(y, n, ry)) {
        double mx = 0, my = 0;
        for (int i = 0; i < n; i++) { mx += rx[i]; my += ry[i]; }
        mx /= n;
        my /= n;
        double sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++) {
            sxy += (rx[i] - mx) * (ry[i] - my);
            sxx += (rx[i] - mx) * (rx[i] - mx);
            syy += (ry[i] - my) * (ry[i] - my);
        }
        if (sxx > 0 && syy > 0) out = sxy / sqrt(sxx * syy);
    }
    free(rx);
    free(ry);
    return out;
}

void eval_progress_init(eval_progress *p, const char *label)
{
    p->label = label;
    p->t0 = kvs_now();
    p->last = -1e9;
    p->tty = isatty(fileno(stderr));
}

void eval_progress_show(eval_progress *p, double done, double total, const char *unit,
                        const char *extra, int final)
{
    double now = kvs_now(), el = now - p->t0;
    if (!final && (now - p->last < (p->tty ? 0.5 : 10.0) || done >= total)) return;
    p->last = now;
    char e1[32], e2[32], bar[32];
    eval_fmt_secs(el, e1, sizeof e1);
    double frac = total > 0 ? done / total : 0;
    if (frac > 1) frac = 1;
    eval_fmt_secs(done > 0 ? el / done * (total - done) : -1, e2, sizeof e2);
    int w = 20, k = (int)(frac * w + 0.5);
    for (int i = 0; i < w; i++) bar[i] = i < k ? '#' : '.';
    bar[w] = '\0';
    fprintf(stderr, "%s%s [%s] %.0f/%.0f %s, %.1f %s/s, elapsed %s, ETA %s%s%s%s",
            p->tty ? "\r" : "", p->label, bar, done, total, unit, el > 0 ? done / el : 0.0, unit,
            e1, done >= total ? "0s" : e2, extra && extra[0] ? " | " : "", extra ? extra : "",
            p->tty && !final ? "\033[K" : "\n");
    fflush(stderr);
}

double eval_kv_ratio(const kvs_engine *e)
{
    return (double)(2 * 2 * e->m->cfg.head_dim) / (double)e->be->kv_slot_bytes;
}

int eval_engine_open(const eval_common *c, kvs_engine **out)
{
    engine_opts eo = {.model_path = c->model_path, .kv_bytes = c->kv_bytes ? c->kv_bytes : (64u << 20),
                      .kv_dtype = c->kv_dtype, .device = c->device};
    if (engine_create(&eo, out)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        if (access(c->model_path, R_OK) != 0)
            fprintf(stderr, "hint: run scripts/fetch-model, or pass --model PATH\n");
        return -1;
    }
    return 0;
}

int eval_engine_pages(const eval_common *c, kvs_engine *e, int64_t pages)
{
    if (c->kv_bytes || e->pool->n_pages >= pages) return 0;
    const int P = e->pool->page_slots;
    if (pages > INT32_MAX / P) {
        fprintf(stderr, "kvsieve %s: the run needs %lld KV pages, too many\n", c->cmd, (long long)pages);
        return -1;
    }
    /* No sequence exists yet: give the engine the KV memory this run needs. */
    size_t bytes = (size_t)pages * mem_pool_page_bytes(P, e->be->kv_slot_bytes);
    if (engine_set_kv_bytes(e, bytes)) {
        fprintf(stderr, "kvsieve %s: KV memory of %.2f GiB: %s (pass a smaller workload or "
                "--kv-memory)\n", c->cmd, bytes / 1073741824.0, kvs_last_error());
        return -1;
    }
    fprintf(stderr, "%s: KV memory %.2f GiB (%lld pages of %d tokens, %s)\n", c->cmd,
            bytes / 1073741824.0, (long long)e->pool->n_pages, P, e->be->kv_format->name);
    return 0;
}
