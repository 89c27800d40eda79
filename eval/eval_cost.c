/* eval_cost.c — `kvsieve eval cost`: what a policy costs (METHODS.md, "How we judge quality" 3).
 *
 *   score ns/key     the policy's score_keys on 4096 random keys, repeated (the cost fused into
 *                    every K write); attention policies score 0 here and pay in observe instead
 *   per decode step  one sequence, prompt then --gen-len greedy steps with budget B / window W
 *                    (when=decode; snapkv: budget at prefill end, its only mode): wall time,
 *                    the forward's K-write and attention phases (fwd_last_timing), and
 *                    "evict+compact" = step wall time - forward time (the engine's policy work
 *                    after the forward: victim selection, eviction, compaction)
 *   observe ms/step  attention phase of an attention policy minus that of streaming with the
 *                    same budget (same cache size): the extra attention-probability pass
 *   peak KV pages    max over steps of pages held + pages the step reserves, vs the full cache
 *                    (with chunked prefill the peak is the prefill chunk's; "end" = pages held
 *                    after the last decode step, the steady state under a budget) */
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sampler.h"

typedef struct {
    const char *name;
    char args[1024];
    double score_ns, prefill_s, step_ms, kvw_ms, att_ms, evict_ms, observe_ms;
    int64_t peak_pages, end_pages, evicted;
} cost_row;

/* ns per key of score_keys on n random keys. */
static double score_cost(pol_instance *inst, int d, int n_layers, int n_kv)
{
    enum { NK = 4096 };
    float *keys = malloc((size_t)NK * d * sizeof *keys), *out = malloc(NK * sizeof *out);
    int32_t *pos = malloc(NK * sizeof *pos);
    if (!keys || !out || !pos) { free(keys); free(out); free(pos); return NAN; }
    uint64_t s = 42;
    for (size_t i = 0; i < (size_t)NK * d; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        keys[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
    for (int i = 0; i < NK; i++) pos[i] = i;
    double t0 = kvs_now(), t;
    int64_t calls = 0;
    do {
        pol_score_keys(inst, (int)(calls % n_layers), (int)(calls % n_kv), keys, pos, NK, out);
        calls++;
        t = kvs_now() - t0;
    } while (t < 0.2);
    free(keys); free(out); free(pos);
    return t / ((double)calls * NK) * 1e9;
}

int eval_cost(const eval_common *c, const eval_cost_opts *o)
{
    int rc = 1;
    kvs_engine *e = NULL;
    int32_t *prompt = NULL;
    char *text = NULL;
    cost_row rows[EVAL_MAX_POLICIES + 1];
    int n_rows = 0;
    FILE *csv = NULL, *js = NULL;
    if (eval_engine_open(c, &e)) return 1;
    const model_config *cfg = &e->m->cfg;
    if ((int64_t)o->prompt_len + o->gen_len > cfg->n_ctx) {
        fprintf(stderr, "kvsieve %s: --prompt-len + --gen-len = %d exceeds the context %d\n",
                c->cmd, o->prompt_len + o->gen_len, cfg->n_ctx);
        rc = 2;
        goto done;
    }
    prompt = malloc((size_t)o->prompt_len * sizeof *prompt);
    if (!prompt) goto done;
    if (o->text_path) {
        size_t len;
        int32_t *ids;
        int n;
        if (eval_read_file(c->cmd, o->text_path, &text, &len)) goto done;
        if (eval_tokenize(e, text, len, 1, &ids, &n)) {
            fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
            goto done;
        }
        if (n < o->prompt_len) {
            fprintf(stderr, "kvsieve %s: %s has %d tokens; --prompt-len is %d\n", c->cmd,
                    o->text_path, n, o->prompt_len);
            free(ids);
            rc = 2;
            goto done;
        }
        memcpy(prompt, ids, (size_t)o->prompt_len * sizeof *prompt);
        free(ids);
    } else {
        uint64_t s = 7;
        for (int i = 0; i < o->prompt_len; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            prompt[i] = (int32_t)((s >> 33) % (uint64_t)cfg->n_vocab);
        }
    }
    const int P = e->pool->page_slots, S = cfg->n_layers * cfg->n_kv_heads;
    if (eval_engine_pages(c, e, (int64_t)S * ((o->prompt_len + o->gen_len) / P + 4) + 1024))
        goto done;
    pol_model_info mi = engine_model_info(e);
    const int chunk = 512;
    /* full first: the reference for pages. */
    int order[EVAL_MAX_POLICIES + 1], n_order = 0, full_i = -1;
    for (int i = 0; i < c->n_pol; i++) if (!strcmp(c->pol[i].name, "full")) full_i = i;
    order[n_order++] = full_i;  /* -1 = full without options */
    for (int i = 0; i < c->n_pol; i++) if (i != full_i) order[n_order++] = i;
    fprintf(stderr, "%s: prompt %d tokens (%s), %d decode steps, budget %d, window %d\n", c->cmd,
            o->prompt_len, o->text_path ? o->text_path : "random tokens", o->gen_len, o->budget,
            o->window);
    for (int k = 0; k < n_order; k++) {
        const eval_policy *p = order[k] >= 0 ? &c->pol[order[k]] : NULL;
        cost_row *r = &rows[n_rows];
        memset(r, 0, sizeof *r);
        r->name = p ? p->name : "full";
        r->observe_ms = NAN;
        char base[128];
        if (!p || !strcmp(p->name, "full")) base[0] = '\0';
        else if (p->flags & POL_WINDOW_ATTENTION)
            snprintf(base, sizeof base, "budget=%d,when=prefill", o->budget);
        else
            snprintf(base, sizeof base, "budget=%d,window=%d,when=decode", o->budget, o->window);
        if (p) eval_policy_args(p, base, r->args, sizeof r->args);
        pol_instance *inst;
        if (pol_instance_create(r->name, r->args, &mi, &inst)) {
            fprintf(stderr, "kvsieve %s: policy %s with %s: %s\n", c->cmd, r->name, r->args,
                    kvs_last_error());
            rc = 2;
            goto done;
        }
        r->score_ns = score_cost(inst, cfg->head_dim, cfg->n_layers, cfg->n_kv_heads);
        pol_instance_destroy(inst);
        engine_seq *s;
        if (engine_seq_create(e, &s) || engine_seq_push(e, s, prompt, o->prompt_len) ||
            (engine_seq_mark_prompt(s), engine_seq_set_policy(e, s, r->name, r->args))) {
            fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
            goto done;
        }
        float *logits;
        int row;
        double t0 = kvs_now();
        while (s->n_computed < s->n_tokens) {
            int64_t peak = engine_seq_pages(s) +
                           mem_seq_pages_needed(e->pool, s->kv, engine_step_tokens(s, chunk));
            r->peak_pages = KVS_MAX(r->peak_pages, peak);
            if (engine_step(e, &s, 1, chunk, &logits, &row)) {
                fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                engine_seq_destroy(e, s);
                goto done;
            }
        }
        r->prefill_s = kvs_now() - t0;
        for (int g = 0; g < o->gen_len; g++) {
            int32_t next = smp_argmax(logits + (size_t)row * cfg->n_vocab, cfg->n_vocab);
            if (engine_seq_push(e, s, &next, 1)) break;
            int64_t peak = engine_seq_pages(s) + mem_seq_pages_needed(e->pool, s->kv, 1);
            r->peak_pages = KVS_MAX(r->peak_pages, peak);
            double ts = kvs_now();
            if (engine_step(e, &s, 1, 1, &logits, &row)) {
                fprintf(stderr, "kvsieve %s: %s\n", c->cmd, kvs_last_error());
                engine_seq_destroy(e, s);
                goto done;
            }
            double wall = kvs_now() - ts;
            const fwd_timing *ft = engine_last_timing(e);
            double fwd = ft->gemm + ft->attention + ft->kv_write + ft->other + ft->logits;
            r->step_ms += wall * 1e3;
            r->kvw_ms += ft->kv_write * 1e3;
            r->att_ms += ft->attention * 1e3;
            r->evict_ms += (wall - fwd) * 1e3;
        }
        r->step_ms /= o->gen_len;
        r->kvw_ms /= o->gen_len;
        r->att_ms /= o->gen_len;
        r->evict_ms /= o->gen_len;
        r->evicted = s->evicted;
        r->end_pages = engine_seq_pages(s);
        engine_seq_destroy(e, s);
        n_rows++;
        fprintf(stderr, "%s: %-10s done (%.1f ms/step)\n", c->cmd, r->name, r->step_ms);
    }
    /* Observe overhead: attention phase vs streaming's (same budget, same cache size). */
    double att_ref = NAN;
    for (int i = 0; i < n_rows; i++) if (!strcmp(rows[i].name, "streaming")) att_ref = rows[i].att_ms;
    for (int i = 0; i < n_rows; i++) {
        const pol_vtable *vt = pol_find(rows[i].name);
        if (vt && (vt->flags & POL_NEEDS_ATTENTION) && !(vt->flags & POL_WINDOW_ATTENTION))
            rows[i].observe_ms = rows[i].att_ms - att_ref;
    }
    const double page_mib = mem_pool_page_bytes(P, e->be->kv_slot_bytes) / 1048576.0;
    const int64_t full_pages = rows[0].peak_pages;
    printf("policy cost: %s, prompt %d, %d decode steps, budget %d, window %d (%s, %s KV)\n",
           cfg->name, o->prompt_len, o->gen_len, o->budget, o->window, e->be->i->name,
           e->be->kv_format->name);
    printf("%-10s %9s %9s %8s %8s %8s %8s %9s %8s %8s %6s %8s %6s\n", "policy", "score",
           "prefill", "step", "K-write", "attn", "observe", "evict+cmp", "peak", "peak", "vs",
           "end", "vs");
    printf("%-10s %9s %9s %8s %8s %8s %8s %9s %8s %8s %6s %8s %6s\n", "", "ns/key", "s", "ms",
           "ms", "ms", "ms", "ms", "pages", "MiB", "full", "pages", "full");
    if (c->out_dir) {
        if (!(csv = eval_open_out(c->cmd, c->out_dir, "cost.csv")) ||
            !(js = eval_open_out(c->cmd, c->out_dir, "cost.json")))
            goto done;
        fprintf(csv, "policy,args,score_ns_per_key,prefill_s,step_ms,kv_write_ms,attention_ms,"
                     "observe_ms,evict_compact_ms,peak_pages,peak_mib,peak_vs_full,end_pages,evicted\n");
        fprintf(js, "{\"mode\": \"cost\", \"model\": ");
        eval_json_str(js, cfg->name);
        fprintf(js, ", \"prompt_len\": %d, \"gen_len\": %d, \"budget\": %d, \"window\": %d, "
                    "\"results\": [", o->prompt_len, o->gen_len, o->budget, o->window);
    }
    for (int i = 0; i < n_rows; i++) {
        const cost_row *r = &rows[i];
        double vs = full_pages ? (double)r->peak_pages / full_pages : 0;
        double vs_end = rows[0].end_pages ? (double)r->end_pages / rows[0].end_pages : 0;
        printf("%-10s %9.2f %9.2f %8.2f %8.3f %8.2f %8.2f %9.3f %8lld %8.1f %5.0f%% %8lld %5.0f%%\n",
               r->name, r->score_ns, r->prefill_s, r->step_ms, r->kvw_ms, r->att_ms,
               r->observe_ms, r->evict_ms, (long long)r->peak_pages, r->peak_pages * page_mib,
               100 * vs, (long long)r->end_pages, 100 * vs_end);
        if (csv) {
            fprintf(csv, "%s,", r->name);
            eval_csv_str(csv, r->args);
            fprintf(csv, ",%.3f,%.3f,%.3f,%.4f,%.3f,%.3f,%.4f,%lld,%.2f,%.4f,%lld,%lld\n",
                    r->score_ns, r->prefill_s, r->step_ms, r->kvw_ms, r->att_ms, r->observe_ms,
                    r->evict_ms, (long long)r->peak_pages, r->peak_pages * page_mib, vs,
                    (long long)r->end_pages, (long long)r->evicted);
        }
        if (js) {
            char obs[32] = "null";
            if (!isnan(r->observe_ms)) snprintf(obs, sizeof obs, "%.3f", r->observe_ms);
            fprintf(js, "%s{\"policy\": \"%s\", \"args\": ", i ? ", " : "", r->name);
            eval_json_str(js, r->args);
            fprintf(js, ", \"score_ns_per_key\": %.3f, \"prefill_s\": %.3f, \"step_ms\": %.3f, "
                        "\"kv_write_ms\": %.4f, \"attention_ms\": %.3f, \"observe_ms\": %s, "
                        "\"evict_compact_ms\": %.4f, \"peak_pages\": %lld, \"peak_mib\": %.2f, "
                        "\"peak_vs_full\": %.4f, \"end_pages\": %lld}",
                    r->score_ns, r->prefill_s, r->step_ms, r->kvw_ms, r->att_ms,
                    obs, r->evict_ms, (long long)r->peak_pages,
                    r->peak_pages * page_mib, vs, (long long)r->end_pages);
        }
    }
    if (js) fprintf(js, "]}\n");
    rc = 0;
done:
    if (csv && fclose(csv)) rc = 1;
    if (js && fclose(js)) rc = 1;
    free(prompt);
    free(text);
    engine_destroy(e);
    return rc;
}
