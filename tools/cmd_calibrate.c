/* cmd_calibrate.c — `kvsieve calibrate`: make a model's Q-Filters (METHODS.md, Q-Filters).
 *
 * Runs the model over a text in sequences of --seq-len tokens, hands the post-RoPE queries of
 * every (layer, query head) to qf_calib (forward.h's `queries` hook), finishes (power
 * iteration, majority sign, GQA mean) and writes a filters file that names the model. Then the
 * health check: per query head the fraction of sampled queries with <q,u> > 0, and on a part
 * of the text held out from calibration, per KV head the Spearman correlation between the
 * Q-Filters score <k,u> of each key and the attention the key actually receives (mean over the
 * queries that can see it, averaged over the GQA group; forward.h's `observe` hook), next to
 * the same correlation for K-norm's score -||k||. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/common.h"
#include "engine.h"
#include "policies/qfilters.h"
#include "eval/eval.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve calibrate --text FILE --out FILE [options]\n"
        "       kvsieve calibrate --check FILE [--model PATH]\n\n"
        "Calibrate Q-Filters for a model on a plain-text file and write the filters file that\n"
        "`--policy qfilters --policy-args filters=FILE` loads. Prints per-head diagnostics: the\n"
        "fraction of queries projecting positively on their filter, and on text held out from\n"
        "calibration the Spearman correlation of each key's score with the attention it gets,\n"
        "for Q-Filters (<k,u>) and K-norm (-||k||).\n\n"
        "  --model PATH        GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --text FILE         calibration text (generic prose; never the evaluation text)\n"
        "  --out FILE          filters file to write (convention: the model path with .kvsqf)\n"
        "  --tokens N          calibration tokens (default 16384; fewer if the text is short)\n"
        "  --seq-len N         tokens per sequence (default 2048)\n"
        "  --diag-tokens N     tokens held out from the END of the text for the correlation\n"
        "                      check (default 1024; at most half the text; 0 = skip)\n"
        "  --diag-csv FILE     write the per-head diagnostics as CSV\n"
        "  --chunk N           prefill chunk size (default 512)\n"
        "  --reservoir N       queries sampled per head for the sign rule (default %d)\n"
        "  --kv-memory SIZE    KV page pool (default 1G)\n"
        "  --device DEV        cpu (default), cuda or auto (the queries come from the engine's step)\n"
        "  --check FILE        only check that FILE is a valid filters file for the model\n"
        "  -h, --help          this help\n", QF_RESERVOIR_DEFAULT);
}

typedef struct { qf_calib *c; int rc; } query_sink;

static void on_queries(void *ctx, int layer, int head, const float *q, int n)
{
    query_sink *qs = ctx;
    if (qs->rc) return;
    int rc = qf_calib_add_queries(qs->c, layer, head, q, n);
    if (rc) qs->rc = rc;
}

/* Attention received per (stream, position), summed over the observed queries. */
typedef struct { double *sum; int n_kv_heads, n_pos; } attn_sink;

static int on_attention(void *ctx, mem_pool *pool, mem_stream *s, int layer, int kv_head,
                        const float *probs, int n_q)
{
    attn_sink *as = ctx;
    double *sum = as->sum + ((size_t)layer * as->n_kv_heads + kv_head) * as->n_pos;
    const int P = pool->page_slots;
    for (int32_t slot = 0; slot < s->n_slots; slot++) {
        int32_t pos = mem_page_pos(pool, mem_slot_page(pool, s, slot))[slot & (P - 1)];
        if (pos < 0 || pos >= as->n_pos) continue;
        double a = 0;
        for (int q = 0; q < n_q; q++) a += probs[(size_t)q * s->n_slots + slot];
        sum[pos] += a;
    }
    return 0;
}

/* Run ids[n] through the model as one sequence in chunks; the hooks see every token. */
static int run_sequence(kvs_engine *e, const int32_t *ids, int n, int chunk, query_sink *qs,
                        attn_sink *as, engine_seq **keep, eval_progress *pg, double *done,
                        double total)
{
    engine_seq *s;
    int rc = engine_seq_create(e, &s);
    if (rc) return rc;
    if (qs) { s->queries = on_queries; s->queries_ctx = qs; }
    if (as) { s->observe = on_attention; s->observe_ctx = as; }
    rc = engine_seq_push(e, s, ids, n);
    while (!rc && s->n_computed < n) {
        float *lg;
        int row;
        int32_t before = s->n_computed;
        if ((rc = engine_step(e, &s, 1, chunk, &lg, &row))) break;
        if (qs && qs->rc) { rc = qs->rc; break; }
        *done += s->n_computed - before;
        eval_progress_show(pg, *done, total, "tok", NULL, 0);
    }
    if (rc || !keep) engine_seq_destroy(e, s);
    else *keep = s;
    return rc;
}

static int check_file(const char *path, const char *model_path)
{
    kvs_engine *e;
    engine_opts eo = {.model_path = model_path, .kv_bytes = 64 << 20};
    if (engine_create(&eo, &e)) {
        fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
        return 1;
    }
    pol_model_info mi = engine_model_info(e);
    qf_filters *f;
    int rc = qf_filters_load(path, &mi, &f);
    if (rc) fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
    else {
        printf("ok: %s: Q-Filters for '%s' (%d layers x %d KV heads x %d dims), calibrated on "
               "%lld tokens\n", path, f->model_name, f->n_layers, f->n_kv_heads, f->head_dim,
               (long long)f->n_tokens);
        qf_filters_free(f);
    }
    engine_destroy(e);
    return rc ? 1 : 0;
}

int cmd_calibrate(int argc, char **argv)
{
    const char *cmd = "calibrate", *model_path = NULL, *text_path = NULL, *out_path = NULL;
    const char *check_path = NULL, *diag_csv = NULL;
    long long n_tokens = 16384, seq_len = 2048, diag_tokens = 1024, chunk = 512, reservoir = 0;
    size_t kv_bytes = 0;
    kvs_device_kind device = KVS_DEVICE_CPU;
    enum { O_MODEL = 256, O_TEXT, O_OUT, O_TOKENS, O_SEQ, O_DIAG, O_DIAGCSV, O_CHUNK, O_RES,
           O_KV, O_CHECK, O_DEVICE };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"text", required_argument, 0, O_TEXT},
        {"out", required_argument, 0, O_OUT}, {"tokens", required_argument, 0, O_TOKENS},
        {"seq-len", required_argument, 0, O_SEQ}, {"diag-tokens", required_argument, 0, O_DIAG},
        {"diag-csv", required_argument, 0, O_DIAGCSV}, {"chunk", required_argument, 0, O_CHUNK},
        {"reservoir", required_argument, 0, O_RES}, {"kv-memory", required_argument, 0, O_KV},
        {"device", required_argument, 0, O_DEVICE},
        {"check", required_argument, 0, O_CHECK}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model_path = optarg; break;
        case O_TEXT: text_path = optarg; break;
        case O_OUT: out_path = optarg; break;
        case O_TOKENS: if (cli_int(cmd, "--tokens", optarg, 1, 1 << 28, &n_tokens)) return 2; break;
        case O_SEQ: if (cli_int(cmd, "--seq-len", optarg, 1, 1 << 20, &seq_len)) return 2; break;
        case O_DIAG: if (cli_int(cmd, "--diag-tokens", optarg, 0, 1 << 20, &diag_tokens)) return 2; break;
        case O_DIAGCSV: diag_csv = optarg; break;
        case O_CHUNK: if (cli_int(cmd, "--chunk", optarg, 1, 1 << 16, &chunk)) return 2; break;
        case O_RES: if (cli_int(cmd, "--reservoir", optarg, 1, 1 << 20, &reservoir)) return 2; break;
        case O_KV: if (cli_size(cmd, "--kv-memory", optarg, &kv_bytes)) return 2; break;
        case O_DEVICE:
            if (kvs_device_parse(optarg, &device)) {
                fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error());
                return 2;
            }
            break;
        case O_CHECK: check_path = optarg; break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_option("calibrate", opts, argv[optind - 1]);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvsieve calibrate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!model_path) model_path = cli_default_model();
    if (check_path) {
        if (text_path || out_path) {
            fprintf(stderr, "kvsieve calibrate: --check takes no --text or --out\n");
            return 2;
        }
        return check_file(check_path, model_path);
    }
    if (!text_path || !out_path) {
        fprintf(stderr, "kvsieve calibrate: --text and --out are required\n");
        usage(stderr);
        return 2;
    }

    int rc = 1;
    kvs_engine *e = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    qf_calib *cal = NULL;
    float *filters = NULL, *frac = NULL;
    engine_seq *held = NULL;
    attn_sink as = {0};
    FILE *csv = NULL;
    size_t len;
    if (eval_read_file(cmd, text_path, &text, &len)) goto done;
    engine_opts eo = {.model_path = model_path, .kv_bytes = kv_bytes, .device = device};
    if (engine_create(&eo, &e)) {
        fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
        if (access(model_path, R_OK) != 0)
            fprintf(stderr, "hint: run scripts/fetch-model, or pass --model PATH\n");
        goto done;
    }
    const model_config *cfg = &e->m->cfg;
    if (seq_len > cfg->n_ctx) {
        fprintf(stderr, "kvsieve calibrate: --seq-len %lld exceeds the model's context of %d\n",
                seq_len, cfg->n_ctx);
        rc = 2;
        goto done;
    }
    int n_ids;
    if (eval_tokenize(e, text, len, 0, &ids, &n_ids)) {
        fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
        goto done;
    }
    int n_diag = (int)KVS_MIN(diag_tokens, (long long)n_ids / 2);
    if (n_diag > cfg->n_ctx) n_diag = cfg->n_ctx;
    int n_cal = (int)KVS_MIN(n_tokens, (long long)(n_ids - n_diag));
    if (n_cal < 1) {
        fprintf(stderr, "kvsieve calibrate: %s has no text to calibrate on (%d tokens)\n",
                text_path, n_ids);
        rc = 2;
        goto done;
    }
    int n_seq = (int)((n_cal + seq_len - 1) / seq_len);
    fprintf(stderr, "calibrate: %s (%d layers, %d query heads, %d KV heads, head dim %d)\n"
            "calibrate: %d of the %d tokens of %s in %d sequence(s) of <= %lld; %d tokens held "
            "out from the end for diagnostics\n", cfg->name, cfg->n_layers, cfg->n_heads,
            cfg->n_kv_heads, cfg->head_dim, n_cal, n_ids, text_path, n_seq, seq_len, n_diag);
    if (qf_calib_create(cfg->n_layers, cfg->n_heads, cfg->n_kv_heads, cfg->head_dim,
                        (int)reservoir, &cal)) {
        fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
        goto done;
    }
    double t0 = kvs_now(), done_tok = 0;
    eval_progress pg;
    eval_progress_init(&pg, "calibrate");
    query_sink qs = {cal, 0};
    for (int at = 0; at < n_cal; at += (int)seq_len) {
        int n = (int)KVS_MIN(seq_len, (long long)(n_cal - at));
        if (run_sequence(e, ids + at, n, (int)chunk, &qs, NULL, NULL, &pg, &done_tok, n_cal)) {
            fprintf(stderr, "\nkvsieve calibrate: %s\n", kvs_last_error());
            goto done;
        }
    }
    eval_progress_show(&pg, done_tok, n_cal, "tok", NULL, 1);
    const size_t n_f = (size_t)cfg->n_layers * cfg->n_kv_heads * cfg->head_dim;
    filters = malloc(n_f * sizeof *filters);
    frac = malloc((size_t)cfg->n_layers * cfg->n_heads * sizeof *frac);
    if (!filters || !frac) { fprintf(stderr, "kvsieve calibrate: out of memory\n"); goto done; }
    if (qf_calib_finish(cal, filters, frac)) {
        fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
        goto done;
    }
    qf_filters qf = {0};
    snprintf(qf.model_name, sizeof qf.model_name, "%s", cfg->name);
    qf.n_layers = cfg->n_layers;
    qf.n_kv_heads = cfg->n_kv_heads;
    qf.head_dim = cfg->head_dim;
    qf.n_heads = cfg->n_heads;
    qf.n_tokens = qf_calib_n_tokens(cal);
    qf.u = filters;
    if (qf_filters_save(out_path, &qf)) {
        fprintf(stderr, "kvsieve calibrate: %s\n", kvs_last_error());
        goto done;
    }
    fprintf(stderr, "calibrate: wrote %s (%lld calibration tokens, %.1f s)\n", out_path,
            (long long)qf.n_tokens, kvs_now() - t0);

    /* Diagnostics on the held-out tail. */
    const int L = cfg->n_layers, Hkv = cfg->n_kv_heads, G = cfg->n_heads / cfg->n_kv_heads;
    const int d = cfg->head_dim;
    double *rho_qf = calloc((size_t)L * Hkv, sizeof *rho_qf);
    double *rho_kn = calloc((size_t)L * Hkv, sizeof *rho_kn);
    if (!rho_qf || !rho_kn) { free(rho_qf); free(rho_kn); goto done; }
    int n_keys = 0;
    if (n_diag >= 8) {
        as.n_kv_heads = Hkv;
        as.n_pos = n_diag;
        as.sum = calloc((size_t)L * Hkv * n_diag, sizeof *as.sum);
        if (!as.sum) { fprintf(stderr, "kvsieve calibrate: out of memory\n"); free(rho_qf); free(rho_kn); goto done; }
        eval_progress dg;
        eval_progress_init(&dg, "diagnostics");
        double dd = 0;
        if (run_sequence(e, ids + n_ids - n_diag, n_diag, (int)chunk, NULL, &as, &held, &dg,
                         &dd, n_diag)) {
            fprintf(stderr, "\nkvsieve calibrate: %s\n", kvs_last_error());
            free(rho_qf); free(rho_kn);
            goto done;
        }
        eval_progress_show(&dg, dd, n_diag, "tok", NULL, 1);
        /* Keys in the first 3/4 of the held-out sequence: each is seen by >= n_diag/4 queries,
         * so its mean attention is not dominated by a handful of neighbours. */
        n_keys = n_diag - n_diag / 4;
        double *x1 = malloc((size_t)n_keys * sizeof *x1), *x2 = malloc((size_t)n_keys * sizeof *x2);
        double *y = malloc((size_t)n_keys * sizeof *y);
        if (!x1 || !x2 || !y) { free(x1); free(x2); free(y); free(rho_qf); free(rho_kn); goto done; }
        const int P = e->pool->page_slots;
        for (int l = 0; l < L; l++)
            for (int h = 0; h < Hkv; h++) {
                mem_stream *s = mem_seq_stream(held->kv, l, h);
                const float *u = filters + ((size_t)l * Hkv + h) * d;
                const double *sum = as.sum + ((size_t)l * Hkv + h) * n_diag;
                int m = 0;
                for (int32_t slot = 0; slot < s->n_slots; slot++) {
                    int32_t page = mem_slot_page(e->pool, s, slot), off = slot & (P - 1);
                    int32_t pos = mem_page_pos(e->pool, page)[off];
                    if (pos < 0 || pos >= n_keys) continue;
                    float k[1024];
                    int32_t g = page * P + off;
                    if (engine_read_kv(e, &g, 1, k, NULL)) goto done;
                    double dot = 0, nn = 0;
                    for (int i = 0; i < d; i++) { dot += (double)k[i] * u[i]; nn += (double)k[i] * k[i]; }
                    x1[m] = dot;
                    x2[m] = -sqrt(nn);
                    y[m] = sum[pos] / (double)(n_diag - pos);
                    m++;
                }
                rho_qf[l * Hkv + h] = eval_spearman(x1, y, m);
                rho_kn[l * Hkv + h] = eval_spearman(x2, y, m);
            }
        free(x1); free(x2); free(y);
    }
    /* Report. */
    if (diag_csv && !(csv = fopen(diag_csv, "w")))
        fprintf(stderr, "kvsieve calibrate: cannot write %s\n", diag_csv);
    if (csv) {
        fprintf(csv, "layer,kv_head");
        for (int g = 0; g < G; g++) fprintf(csv, ",frac_positive_q%d", g);
        fprintf(csv, ",spearman_qfilters,spearman_knorm\n");
    }
    printf("Q-Filters calibration of %s on %lld tokens of %s\n", cfg->name, (long long)qf.n_tokens,
           text_path);
    if (n_diag >= 8)
        printf("attention check: %d held-out tokens, %d keys per head (each seen by >= %d "
               "queries)\n", n_diag, n_keys, n_diag - n_keys + 1);
    printf("%5s %4s  %-*s  %9s %9s\n", "layer", "kv", G * 6, "frac <q,u> > 0", "rho <k,u>",
           "rho -|k|");
    double s_frac = 0, min_frac = 1, s_qf = 0, s_kn = 0;
    int n_rho = 0, qf_wins = 0;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < Hkv; h++) {
            char fr[256] = "";
            size_t o = 0;
            for (int g = 0; g < G; g++) {
                float f = frac[l * cfg->n_heads + h * G + g];
                s_frac += f;
                if (f < min_frac) min_frac = f;
                o += (size_t)snprintf(fr + o, sizeof fr - o, "%s%.3f", g ? " " : "", f);
                if (o >= sizeof fr) o = sizeof fr - 1;
            }
            double a = rho_qf[l * Hkv + h], b = rho_kn[l * Hkv + h];
            if (n_diag >= 8 && isfinite(a) && isfinite(b)) {
                s_qf += a; s_kn += b; n_rho++;
                qf_wins += a > b;
            }
            printf("%5d %4d  %-*s  %9.3f %9.3f\n", l, h, G * 6, fr, a, b);
            if (csv) {
                fprintf(csv, "%d,%d", l, h);
                for (int g = 0; g < G; g++) fprintf(csv, ",%.4f", frac[l * cfg->n_heads + h * G + g]);
                fprintf(csv, ",%.4f,%.4f\n", a, b);
            }
        }
    printf("summary: %d query heads: mean fraction of queries with <q,u> > 0 = %.3f (min %.3f)",
           L * cfg->n_heads, s_frac / (L * cfg->n_heads), min_frac);
    if (n_rho)
        printf("; %d KV heads: mean Spearman(score, attention) Q-Filters %.3f, K-norm %.3f; "
               "Q-Filters higher on %d/%d heads\n", n_rho, s_qf / n_rho, s_kn / n_rho, qf_wins,
               n_rho);
    else
        printf("; no attention check (--diag-tokens 0 or text too short)\n");
    free(rho_qf);
    free(rho_kn);
    rc = 0;
done:
    if (csv) fclose(csv);
    engine_seq_destroy(e, held);
    free(as.sum);
    qf_calib_destroy(cal);
    free(filters);
    free(frac);
    free(ids);
    free(text);
    engine_destroy(e);
    return rc;
}
