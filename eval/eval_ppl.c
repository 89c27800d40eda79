/* eval_ppl.c — `kvsieve eval ppl`: generation perplexity under a fixed KV budget (METHODS.md,
 * "How we judge quality" 1; the Q-Filters paper's generation setting).
 *
 * One batch: the full cache, plus one sequence per (budget B, window W, policy), each with its
 * own policy "budget=B,window=W,when=decode". All are fed the same text (teacher forcing),
 * --chunk tokens per step (1 = the streaming setting: after every token, heads holding more
 * than B evict down to B, the last W positions protected). Every computed token's logits give
 * the NLL of the true next token. The first min(B) tokens go in one step: nothing can be
 * evicted before a head holds more than B, so this changes no number. Reported: perplexity
 * over all predicted tokens and over the second half, and the gaps to the full cache. */
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

typedef struct {
    const eval_policy *pol;   /* NULL = the full cache */
    int32_t budget, window;
    double nll, nll2;         /* summed NLL: all, second half */
    int64_t n, n2;
    engine_seq *s;
} ppl_run;

/* -log softmax(row)[target] */
static double nll_of(const float *row, int V, int32_t target)
{
    float mx = row[0];
    for (int i = 1; i < V; i++) if (row[i] > mx) mx = row[i];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)row[i] - mx);
    return log(sum) + mx - row[target];
}

int eval_ppl(const eval_common *c, const eval_ppl_opts *o)
{
    int rc = 1;
    kvs_engine *e = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    ppl_run *runs = NULL;
    engine_seq **seqs = NULL;
    int *row_of = NULL, n_runs = 0;
    FILE *csv = NULL, *js = NULL;
    size_t len;
    if (eval_read_file(c->cmd, o->text_path, &text, &len)) return 1;
    if (eval_engine_open(c, &e)) goto done;
    const model_config *cfg = &e->m->cfg;
    int N;
    if (eval_tokenize(e, text, len, 1, &ids, &N)) {
        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
        goto done;
    }
    if (o->max_tokens > 0 && N > o->max_tokens) N = o->max_tokens;
    if (N > cfg->n_ctx) {
        fprintf(stderr, "%s: using the first %d tokens of %s (the model's context)\n", c->cmd,
                cfg->n_ctx, o->text_path);
        N = cfg->n_ctx;
    }
    if (N < 4) {
        fprintf(stderr, "kvsieve %s: %s has %d tokens; need at least 4\n", c->cmd, o->text_path, N);
        rc = 2;
        goto done;
    }
    /* Runs: the full cache first, then every (budget, window, policy). */
    int n_other = 0;
    for (int i = 0; i < c->n_pol; i++) n_other += strcmp(c->pol[i].name, "full") != 0;
    int n_max = 1 + o->n_budgets * o->n_windows * n_other;
    runs = calloc((size_t)n_max, sizeof *runs);
    seqs = calloc((size_t)n_max, sizeof *seqs);
    row_of = calloc((size_t)n_max, sizeof *row_of);
    if (!runs || !seqs || !row_of) { fprintf(stderr, "kvsieve %s: out of memory\n", c->cmd); goto done; }
    int32_t min_budget = INT32_MAX, max_budget = 0;
    runs[n_runs++] = (ppl_run){0};
    for (int b = 0; b < o->n_budgets; b++)
        for (int w = 0; w < o->n_windows; w++)
            for (int i = 0; i < c->n_pol; i++) {
                if (!strcmp(c->pol[i].name, "full")) continue;
                runs[n_runs++] = (ppl_run){.pol = &c->pol[i], .budget = o->budgets[b],
                                           .window = o->windows[w]};
                min_budget = KVS_MIN(min_budget, o->budgets[b]);
                max_budget = KVS_MAX(max_budget, o->budgets[b]);
            }
    /* Pages: the full cache holds N tokens per stream, the others at most B + a chunk + a
     * page of holes (compaction runs once a page's worth of holes gathers). */
    const int P = e->pool->page_slots, S = cfg->n_layers * cfg->n_kv_heads;
    int64_t pages = (int64_t)S * ((N + P - 1) / P + 1);
    pages += (int64_t)(n_runs - 1) * S * ((max_budget + o->chunk + 2 * P - 1) / P + 1);
    if (eval_engine_pages(c, e, pages + pages / 16)) goto done;
    for (int r = 0; r < n_runs; r++) {
        if (engine_seq_create(e, &runs[r].s)) {
            fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
            goto done;
        }
        seqs[r] = runs[r].s;
        runs[r].s->logits_all = 1;
        if (!runs[r].pol) continue;
        char base[96], args[1024];
        snprintf(base, sizeof base, "budget=%d,window=%d,when=decode", runs[r].budget, runs[r].window);
        eval_policy_args(runs[r].pol, base, args, sizeof args);
        if (engine_seq_set_policy(e, runs[r].s, runs[r].pol->name, args)) {
            fprintf(stderr, "kvsieve %s: policy %s with %s: %s\n", c->cmd, runs[r].pol->name,
                    args, kvs_last_error());
            rc = 2;
            goto done;
        }
    }
    fprintf(stderr, "%s: %d tokens of %s, %d sequences in one batch (full + %d budgets x %d "
            "windows x %d policies), chunk %d\n", c->cmd, N, o->text_path, n_runs, o->n_budgets,
            o->n_windows, n_other, o->chunk);
    /* Feed tokens 0 .. N-2; the logits at position p predict token p+1. */
    const int V = cfg->n_vocab;
    const int half = N / 2;
    eval_progress pg;
    eval_progress_init(&pg, c->cmd);
    double t0 = kvs_now();
    for (int pos = 0; pos < N - 1;) {
        int k = pos == 0 && n_runs > 1 ? KVS_MAX(o->chunk, min_budget) : o->chunk;
        k = KVS_MIN(k, N - 1 - pos);
        float *logits;
        for (int r = 0; r < n_runs; r++)
            if (engine_seq_push(e, seqs[r], ids + pos, k)) {
                fprintf(stderr, "\nkvsieve %s: %s\n", c->cmd, kvs_last_error());
                goto done;
            }
        int src = engine_step(e, seqs, n_runs, k, &logits, row_of);
        if (src) {
            int oom = src == KVS_ENOMEM;
            fprintf(stderr, "\nkvsieve %s: %s%s\n", c->cmd, kvs_last_error(),
                    oom && !c->kv_bytes ? " (the pool is sized for every head at its budget; "
                    "with layers= or a plugin that keeps more, give --kv-memory)" : "");
            goto done;
        }
        for (int r = 0; r < n_runs; r++) {
            if (seqs[r]->n_computed != pos + k) {
                fprintf(stderr, "\nkvsieve %s: sequence %d computed %d tokens, expected %d\n",
                        c->cmd, r, seqs[r]->n_computed, pos + k);
                goto done;
            }
            for (int j = 0; j < k; j++) {
                int32_t target = ids[pos + j + 1];
                double v = nll_of(logits + (size_t)(row_of[r] + j) * V, V, target);
                runs[r].nll += v;
                runs[r].n++;
                if (pos + j + 1 >= half) { runs[r].nll2 += v; runs[r].n2++; }
            }
        }
        pos += k;
        char extra[96];
        snprintf(extra, sizeof extra, "full ppl so far %.2f", exp(runs[0].nll / runs[0].n));
        eval_progress_show(&pg, pos, N - 1, "tok", extra, pos == N - 1);
    }
    double secs = kvs_now() - t0;

    /* Report. */
    const double ppl_full = exp(runs[0].nll / runs[0].n), ppl2_full = exp(runs[0].nll2 / runs[0].n2);
    printf("generation perplexity: %s, %d tokens of %s (second half: %d tokens), chunk %d\n",
           cfg->name, N, o->text_path, (int)runs[0].n2, o->chunk);
    const double kv_ratio = eval_kv_ratio(e);
    const double entries = (double)N * cfg->n_layers * cfg->n_kv_heads;
    printf("KV dtype %s: %zu bytes per slot (fp16: %d), x%.2f vs fp16 KV; compression = that x "
           "the entries written / kept at the end\n", engine_kv_dtype(e), e->be->kv_slot_bytes,
           4 * cfg->head_dim, kv_ratio);
    printf("%-10s %6s %6s %9s %9s %9s %9s %10s %7s\n", "policy", "budget", "window", "ppl",
           "ppl_2nd", "gap", "gap_2nd", "evicted", "compr");
    if (c->out_dir) {
        if (!(csv = eval_open_out(c->cmd, c->out_dir, "ppl.csv")) ||
            !(js = eval_open_out(c->cmd, c->out_dir, "ppl.json")))
            goto done;
        fprintf(csv, "policy,budget,window,tokens,nll,ppl,ppl_second_half,gap,gap_second_half,"
                     "evicted,kv_dtype,kv_ratio,compression\n");
        fprintf(js, "{\"mode\": \"ppl\", \"model\": ");
        eval_json_str(js, cfg->name);
        fprintf(js, ", \"text\": ");
        eval_json_str(js, o->text_path);
        fprintf(js, ", \"tokens\": %d, \"chunk\": %d, \"seconds\": %.1f, \"results\": [", N,
                o->chunk, secs);
    }
    for (int r = 0; r < n_runs; r++) {
        const ppl_run *u = &runs[r];
        double ppl = exp(u->nll / u->n), ppl2 = exp(u->nll2 / u->n2);
        const char *name = u->pol ? u->pol->name : "full";
        const double compr = kv_ratio * entries / (entries - (double)u->s->evicted);
        printf("%-10s %6d %6d %9.3f %9.3f %+9.3f %+9.3f %10lld %7.2f\n", name, u->budget,
               u->window, ppl, ppl2, ppl - ppl_full, ppl2 - ppl2_full, (long long)u->s->evicted,
               compr);
        if (csv)
            fprintf(csv, "%s,%d,%d,%lld,%.6f,%.4f,%.4f,%.4f,%.4f,%lld,%s,%.4f,%.4f\n", name,
                    u->budget, u->window, (long long)u->n, u->nll / u->n, ppl, ppl2,
                    ppl - ppl_full, ppl2 - ppl2_full, (long long)u->s->evicted,
                    engine_kv_dtype(e), kv_ratio, compr);
        if (js)
            fprintf(js, "%s{\"policy\": \"%s\", \"budget\": %d, \"window\": %d, \"tokens\": %lld, "
                        "\"ppl\": %.4f, \"ppl_second_half\": %.4f, \"gap\": %.4f, "
                        "\"gap_second_half\": %.4f, \"evicted\": %lld, \"kv_dtype\": \"%s\", "
                        "\"kv_ratio\": %.4f, \"compression\": %.4f}",
                    r ? ", " : "", name, u->budget, u->window, (long long)u->n, ppl, ppl2,
                    ppl - ppl_full, ppl2 - ppl2_full, (long long)u->s->evicted,
                    engine_kv_dtype(e), kv_ratio, compr);
    }
    if (js) fprintf(js, "]}\n");
    fprintf(stderr, "%s: %.1f s (%.1f tokens/s over %d sequences)\n", c->cmd, secs,
            (double)(N - 1) * n_runs / secs, n_runs);
    rc = 0;
done:
    if (csv && fclose(csv)) rc = 1;
    if (js && fclose(js)) rc = 1;
    for (int r = 0; r < n_runs; r++) engine_seq_destroy(e, runs[r].s);
    free(runs);
    free(seqs);
    free(row_of);
    free(ids);
    free(text);
    engine_destroy(e);
    return rc;
}
