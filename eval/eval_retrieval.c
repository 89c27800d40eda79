/* eval_retrieval.c — `kvsieve eval passkey|needle`: retrieval under prefill compression
 * (METHODS.md, "How we judge quality" 2).
 *
 * For every (context length, depth): build the prompt (eval_text.c), prefill the context ONCE
 * with the full cache (recording the attention the attention policies need, eval_stats.c),
 * then for every (policy, ratio) clone the cache and compress the clone as that policy would
 * have at prefill end (ratio = fraction removed per head). The question is not compressed:
 * it is pushed after compression. All clones and the full cache then answer in one batch,
 * greedy, and an answer is right when its first run of digits is the key. */
#include "eval/eval.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sampler.h"

typedef struct {
    const eval_policy *pol;  /* NULL = full */
    double ratio;            /* 0 for full */
    int64_t correct, total;  /* over all cases */
    double needle_kept;      /* summed over cases */
    int64_t *ctx_correct;    /* [n_contexts] */
} ret_cell;

typedef struct {
    engine_seq *s;
    int cell;
    int32_t out[256];
    int n_out, done;
    int64_t live_after;      /* KV entries after compression */
    double needle_kept;      /* fraction of the needle's KV entries kept */
} ret_run;

static void first_digits(const char *s, char *out, size_t size)
{
    size_t n = 0;
    while (*s && !isdigit((unsigned char)*s)) s++;
    while (*s && isdigit((unsigned char)*s) && n + 1 < size) out[n++] = *s++;
    out[n] = '\0';
}

static int64_t live_entries(const engine_seq *s)
{
    int64_t n = 0;
    for (int i = 0; i < s->kv->n_layers * s->kv->n_kv_heads; i++) n += s->kv->streams[i].n_live;
    return n;
}

/* Fraction of the KV entries (token x layer x KV head) at positions [a, b) still live. */
static double kept_between(const kvs_engine *e, const engine_seq *s, int a, int b)
{
    const int P = e->pool->page_slots, n = s->kv->n_layers * s->kv->n_kv_heads;
    int64_t kept = 0;
    for (int i = 0; i < n; i++) {
        const mem_stream *st = &s->kv->streams[i];
        for (int32_t slot = 0; slot < st->n_slots; slot++) {
            int32_t pos = mem_page_pos(e->pool, mem_slot_page(e->pool, st, slot))[slot & (P - 1)];
            kept += pos >= a && pos < b;
        }
    }
    return b > a ? (double)kept / ((double)(b - a) * n) : 0.0;
}

int eval_retrieval(const eval_common *c, const eval_retrieval_opts *o)
{
    const char *task = o->task == EVAL_PASSKEY ? "passkey" : "needle";
    int rc = 1;
    kvs_engine *e = NULL;
    char *hay_text = NULL;
    int32_t *hay = NULL;
    int n_hay = 0;
    ret_cell *cells = NULL;
    ret_run *runs = NULL;
    engine_seq **batch = NULL;
    int *row_of = NULL, n_cells = 0;
    FILE *csv = NULL, *js = NULL;
    eval_prompt pr = {0};
    eval_stats *stats = NULL;
    char *answer = NULL;

    if (eval_engine_open(c, &e)) return 1;
    const model_config *cfg = &e->m->cfg;
    pol_model_info mi = engine_model_info(e);
    if (o->task == EVAL_NEEDLE) {
        size_t len;
        if (eval_read_file(c->cmd, o->haystack_path, &hay_text, &len)) goto done;
        if (eval_tokenize(e, hay_text, len, 0, &hay, &n_hay) || n_hay < 16) {
            fprintf(stderr, "kvsieve %s: haystack %s: %s\n", c->cmd, o->haystack_path,
                    n_hay < 16 ? "too short (needs prose)" : kvs_last_error());
            goto done;
        }
    }
    /* Cells: full, then every (policy, ratio); check every policy string now. */
    int need_all = 0, window = 0;
    cells = calloc((size_t)(1 + c->n_pol * o->n_ratios), sizeof *cells);
    if (!cells) goto done;
    cells[n_cells++] = (ret_cell){0};
    for (int i = 0; i < c->n_pol; i++) {
        if (!strcmp(c->pol[i].name, "full")) continue;
        for (int r = 0; r < o->n_ratios; r++) {
            char base[64], args[1024];
            snprintf(base, sizeof base, "ratio=%.10g", o->ratios[r]);
            eval_policy_args(&c->pol[i], base, args, sizeof args);
            pol_instance *inst;
            if (pol_instance_create(c->pol[i].name, args, &mi, &inst)) {
                fprintf(stderr, "kvsieve %s: policy %s with %s: %s\n", c->cmd, c->pol[i].name,
                        args, kvs_last_error());
                rc = 2;
                goto done;
            }
            if (pol_opts_when(&inst->opts) != POL_WHEN_PREFILL &&
                pol_opts_when(&inst->opts) != POL_WHEN_PREFILL_END) {
                fprintf(stderr, "kvsieve %s: policy %s: retrieval compresses at prefill end; "
                        "remove when=%s\n", c->cmd, c->pol[i].name, "decode/pressure");
                pol_instance_destroy(inst);
                rc = 2;
                goto done;
            }
            if (inst->vt->flags & POL_NEEDS_ATTENTION) {
                if (inst->vt->flags & POL_WINDOW_ATTENTION)
                    window = KVS_MAX(window, inst->opts.window > 0 ? inst->opts.window : 1);
                else if (!strcmp(inst->vt->name, "h2o")) need_all = 1;
                else if (strcmp(inst->vt->name, "tova")) {
                    fprintf(stderr, "kvsieve %s: policy %s needs attention the harness cannot "
                            "replay into clones (known: h2o, tova, window policies)\n", c->cmd,
                            inst->vt->name);
                    pol_instance_destroy(inst);
                    rc = 2;
                    goto done;
                }
            }
            pol_instance_destroy(inst);
            cells[n_cells++] = (ret_cell){.pol = &c->pol[i], .ratio = o->ratios[r]};
        }
    }
    if (n_cells > 256) {
        fprintf(stderr, "kvsieve %s: %d (policy, ratio) cells; at most 255\n", c->cmd, n_cells - 1);
        rc = 2;
        goto done;
    }
    int any_attention = need_all || window > 0;
    for (int i = 0; i < c->n_pol; i++)
        if ((c->pol[i].flags & POL_NEEDS_ATTENTION) && strcmp(c->pol[i].name, "full"))
            any_attention = 1;
    for (int i = 0; i < n_cells; i++)
        if (!(cells[i].ctx_correct = calloc((size_t)o->n_contexts, sizeof(int64_t)))) goto done;

    /* Context lengths: capped so that context + question + answer fit the model. */
    const int n_q = eval_question_tokens(e, o->task, o->chat);
    if (n_q < 0) { fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error()); goto done; }
    int ctx_len[16], max_ctx = 0;
    for (int i = 0; i < o->n_contexts; i++) {
        ctx_len[i] = KVS_MIN(o->contexts[i], cfg->n_ctx - n_q - o->max_new);
        if (ctx_len[i] < 64) {
            fprintf(stderr, "kvsieve %s: context %d leaves no room under the model's %d tokens\n",
                    c->cmd, o->contexts[i], cfg->n_ctx);
            rc = 2;
            goto done;
        }
        max_ctx = KVS_MAX(max_ctx, ctx_len[i]);
    }
    /* Pages: the prefilled context, the clone being compressed, and every compressed clone
     * with its question and answer. */
    const int P = e->pool->page_slots, S = cfg->n_layers * cfg->n_kv_heads;
    const int tail = n_q + o->max_new + 2 * P;
    int64_t pages = 2 * (int64_t)S * ((max_ctx + tail) / P + 2);
    for (int i = 1; i < n_cells; i++)
        pages += (int64_t)S * ((int64_t)(max_ctx * (1.0 - cells[i].ratio)) / P + tail / P + 3);
    if (eval_engine_pages(c, e, pages + pages / 16)) goto done;

    runs = calloc((size_t)n_cells, sizeof *runs);
    batch = calloc((size_t)n_cells, sizeof *batch);
    row_of = calloc((size_t)n_cells, sizeof *row_of);
    answer = malloc(4096);
    if (!runs || !batch || !row_of || !answer) goto done;
    if (c->out_dir) {
        char name[64];
        snprintf(name, sizeof name, "%s.csv", task);
        if (!(csv = eval_open_out(c->cmd, c->out_dir, name))) goto done;
        snprintf(name, sizeof name, "%s.json", task);
        if (!(js = eval_open_out(c->cmd, c->out_dir, name))) goto done;
        fprintf(csv, "task,context,context_tokens,depth,policy,ratio,correct,expected,answer,"
                     "kept_fraction,needle_kept\n");
        fprintf(js, "{\"mode\": \"%s\", \"model\": ", task);
        eval_json_str(js, cfg->name);
        fprintf(js, ", \"chat\": %s, \"seed\": %llu, \"results\": [", o->chat ? "true" : "false",
                (unsigned long long)o->seed);
    }
    const int n_cases = o->n_contexts * o->n_depths;
    fprintf(stderr, "%s: %d cases (%d contexts x %d depths) x %d (policy, ratio) cells, chat "
            "template %s; one prefill per case\n", c->cmd, n_cases, o->n_contexts, o->n_depths,
            n_cells, o->chat ? "on" : "off");
    /* Progress in context tokens (the prefill dominates), quadratic part included. */
    double work_total = 0, work_done = 0;
    for (int ci = 0; ci < o->n_contexts; ci++)
        work_total += o->n_depths * (ctx_len[ci] + ctx_len[ci] * (double)ctx_len[ci] / 8192.0);
    eval_progress pg;
    eval_progress_init(&pg, c->cmd);
    int case_i = 0, first_row = 1;
    for (int ci = 0; ci < o->n_contexts; ci++)
        for (int di = 0; di < o->n_depths; di++, case_i++) {
            double tc = kvs_now();
            if (eval_make_prompt(e, o->task, hay, n_hay, ctx_len[ci], o->depths[di],
                                 o->seed * 1000003u + (uint64_t)case_i, o->chat, &pr)) {
                fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                goto done;
            }
            /* One prefill with the full cache. */
            engine_seq *full;
            if (engine_seq_create(e, &full) || engine_seq_push(e, full, pr.ctx, pr.n_ctx)) {
                fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                goto done;
            }
            runs[0] = (ret_run){.s = full, .cell = 0};
            int n_runs = 1;
            engine_seq_mark_prompt(full);
            if (any_attention &&
                (eval_stats_create(e, need_all, window, pr.n_ctx, &stats) ||
                 eval_stats_attach(e, full, stats))) {
                fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                goto fail_case;
            }
            float *logits;
            while (full->n_computed < full->n_tokens)
                if (engine_step(e, &full, 1, o->chunk, &logits, row_of)) {
                    fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                    goto fail_case;
                }
            if (stats) eval_stats_detach(full);
            double t_prefill = kvs_now() - tc;
            const int64_t live_full = live_entries(full);
            runs[0].live_after = live_full;
            runs[0].needle_kept = 1.0;
            /* A compressed clone per (policy, ratio). */
            for (int k = 1; k < n_cells; k++) {
                engine_seq *cl;
                char base[64], args[1024];
                /* The chat template's head is not compressed: its tokens are sinks. */
                if (pr.n_template > 0 && !strstr(cells[k].pol->args, "sink="))
                    snprintf(base, sizeof base, "ratio=%.10g,sink=%d", cells[k].ratio,
                             KVS_MAX(pr.n_template, 4));
                else
                    snprintf(base, sizeof base, "ratio=%.10g", cells[k].ratio);
                eval_policy_args(cells[k].pol, base, args, sizeof args);
                if (engine_seq_clone(e, full, &cl)) {
                    fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                    goto fail_case;
                }
                runs[n_runs++] = (ret_run){.s = cl, .cell = k};
                if (engine_seq_set_policy(e, cl, cells[k].pol->name, args) ||
                    eval_seq_compress_like(e, cl, stats) < 0) {
                    fprintf(stderr, "kvsieve %s: %s %s: %s\n", c->cmd, cells[k].pol->name, args,
                            kvs_last_error());
                    goto fail_case;
                }
                runs[n_runs - 1].live_after = live_entries(cl);
                runs[n_runs - 1].needle_kept = kept_between(e, cl, pr.needle_at,
                                                            pr.needle_at + pr.n_needle);
            }
            eval_stats_destroy(stats);
            stats = NULL;
            /* The question (whole), then greedy answers, all in one batch. */
            for (int k = 0; k < n_runs; k++) {
                if (engine_seq_push(e, runs[k].s, pr.question, pr.n_question)) {
                    fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                    goto fail_case;
                }
                batch[k] = runs[k].s;
            }
            int n_active = n_runs;
            int32_t step_chunk = pr.n_question;
            int idx[256];
            for (int k = 0; k < n_runs; k++) idx[k] = k;
            while (n_active > 0) {
                if (engine_step(e, batch, n_active, step_chunk, &logits, row_of)) {
                    fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                    goto fail_case;
                }
                step_chunk = 1;
                int m = 0;
                for (int a = 0; a < n_active; a++) {
                    ret_run *r = &runs[idx[a]];
                    int32_t t = smp_argmax(logits + (size_t)row_of[a] * cfg->n_vocab, cfg->n_vocab);
                    int stop = tok_is_eog(e->tok, t);
                    if (!stop) r->out[r->n_out++] = t;
                    /* Stop at the end of turn, after max_new tokens, or at a newline once
                     * something was said. */
                    const char *b;
                    size_t bl;
                    if (!stop && r->n_out >= 2 && !tok_piece(e->tok, t, &b, &bl) &&
                        memchr(b, '\n', bl))
                        stop = 1;
                    if (stop || r->n_out >= o->max_new || r->s->n_tokens >= cfg->n_ctx) continue;
                    if (engine_seq_push(e, r->s, &t, 1)) {
                        fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                        goto fail_case;
                    }
                    batch[m] = r->s;
                    idx[m++] = idx[a];
                }
                n_active = m;
            }
            /* Score and record. */
            int n_right = 0, full_ok = 0;
            for (int k = 0; k < n_runs; k++) {
                ret_run *r = &runs[k];
                ret_cell *cell = &cells[r->cell];
                int nb = tok_decode(e->tok, r->out, r->n_out, answer, 4096);
                if (nb < 0) answer[0] = '\0';
                char digits[64];
                first_digits(answer, digits, sizeof digits);
                int ok = !strcmp(digits, pr.answer);
                n_right += ok;
                if (k == 0) full_ok = ok;
                cell->correct += ok;
                cell->total++;
                cell->needle_kept += r->needle_kept;
                cell->ctx_correct[ci] += ok;
                const char *pname = cell->pol ? cell->pol->name : "full";
                double kept = live_full ? (double)r->live_after / live_full : 0;
                if (csv) {
                    fprintf(csv, "%s,%d,%d,%.4g,%s,%.6g,%d,%s,", task, o->contexts[ci],
                            pr.n_ctx, o->depths[di] * 100, pname, cell->ratio, ok, pr.answer);
                    eval_csv_str(csv, answer);
                    fprintf(csv, ",%.5f,%.5f\n", kept, r->needle_kept);
                }
                if (js) {
                    fprintf(js, "%s{\"context\": %d, \"context_tokens\": %d, \"depth\": %.4g, "
                                "\"policy\": \"%s\", \"ratio\": %.6g, \"correct\": %d, "
                                "\"expected\": \"%s\", \"answer\": ", first_row ? "" : ", ",
                            o->contexts[ci], pr.n_ctx, o->depths[di] * 100, pname, cell->ratio,
                            ok, pr.answer);
                    eval_json_str(js, answer);
                    fprintf(js, ", \"kept_fraction\": %.5f, \"needle_kept\": %.5f}", kept,
                            r->needle_kept);
                    first_row = 0;
                }
            }
            if (csv) fflush(csv);
            if (js) fflush(js);
            work_done += ctx_len[ci] + ctx_len[ci] * (double)ctx_len[ci] / 8192.0;
            char extra[200];
            snprintf(extra, sizeof extra, "case %d/%d (ctx %d, depth %.0f%%): prefill %.1f s, "
                     "%d answers %.1f s, %d right, full %s", case_i + 1, n_cases, pr.n_ctx,
                     o->depths[di] * 100, t_prefill, n_runs, kvs_now() - tc - t_prefill, n_right,
                     full_ok ? "right" : "WRONG");
            eval_progress_show(&pg, work_done, work_total, "work", extra, 1);
            for (int k = 0; k < n_runs; k++) engine_seq_destroy(e, runs[k].s);
            eval_prompt_free(&pr);
            continue;
        fail_case:
            eval_stats_destroy(stats);
            stats = NULL;
            for (int k = 0; k < n_runs; k++) engine_seq_destroy(e, runs[k].s);
            goto done;
        }
    if (js) fprintf(js, "]}\n");

    /* Summary: accuracy per (policy, ratio), overall and per context. */
    printf("%s retrieval accuracy (exact match), %s, %d depths per context%s\n", task, cfg->name,
           o->n_depths, o->chat ? ", chat template" : "");
    printf("%-10s %8s %6s", "policy", "ratio", "all");
    for (int ci = 0; ci < o->n_contexts; ci++) printf(" %7d", o->contexts[ci]);
    printf("  needle kept\n");
    for (int i = 0; i < n_cells; i++) {
        const ret_cell *cl = &cells[i];
        printf("%-10s %8.5g %5.0f%%", cl->pol ? cl->pol->name : "full", cl->ratio,
               cl->total ? 100.0 * cl->correct / cl->total : 0.0);
        for (int ci = 0; ci < o->n_contexts; ci++)
            printf(" %6.0f%%", 100.0 * cl->ctx_correct[ci] / o->n_depths);
        printf("  %10.0f%%\n", cl->total ? 100.0 * cl->needle_kept / cl->total : 0.0);
    }
    rc = 0;
done:
    if (csv && fclose(csv)) rc = 1;
    if (js && fclose(js)) rc = 1;
    eval_prompt_free(&pr);
    if (cells)
        for (int i = 0; i < n_cells; i++) free(cells[i].ctx_correct);
    free(cells);
    free(runs);
    free(batch);
    free(row_of);
    free(answer);
    free(hay);
    free(hay_text);
    engine_destroy(e);
    return rc;
}
