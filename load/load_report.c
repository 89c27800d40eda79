/* load_report.c — the report of `kvsieve load`: a text table for people, one JSON object for
 * programs (field list in docs/LOAD.md), and one JSON line per request for --records. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "load/load.h"

/* ---- JSON helpers ----------------------------------------------------------------------- */

void load_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* A number, or null when it is not finite or (with neg_null) negative. */
static void jnum(FILE *f, double v, int neg_null)
{
    if (!isfinite(v) || (neg_null && v < 0)) fputs("null", f);
    else fprintf(f, "%.6g", v);
}

/* Milliseconds with microsecond resolution (null when negative: not defined). */
static void jms(FILE *f, double s)
{
    if (!isfinite(s) || s < 0) fputs("null", f);
    else fprintf(f, "%.3f", s * 1e3);
}

static void json_pct(FILE *f, const load_pct *p)
{
    if (!p->n) {
        fputs("{\"n\": 0, \"mean\": null, \"min\": null, \"p50\": null, \"p90\": null, "
              "\"p99\": null, \"max\": null}", f);
        return;
    }
    fprintf(f, "{\"n\": %d, \"mean\": %.3f, \"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
            "\"p99\": %.3f, \"max\": %.3f}", p->n, p->mean * 1e3, p->min * 1e3, p->p50 * 1e3,
            p->p90 * 1e3, p->p99 * 1e3, p->max * 1e3);
}

static const char *policy_label(const load_policy *p) { return p->name[0] ? p->name : "default"; }

static const char *mode_name(const load_opts *o) { return o->rate > 0 ? "open" : "closed"; }

static double per_s(long long n, double secs) { return secs > 0 ? (double)n / secs : 0.0; }

/* ---- per-request records ------------------------------------------------------------------ */

void load_record_write_json(FILE *f, const load_workload *w, const load_record *r,
                            const char *message)
{
    fprintf(f, "{\"i\": %lld, \"tenant\": ", r->idx);
    load_json_str(f, w->tenants[r->tenant].name);
    fputs(", \"policy\": ", f);
    load_json_str(f, policy_label(&w->policies[r->policy]));
    fputs(", \"policy_args\": ", f);
    load_json_str(f, w->policies[r->policy].args);
    if (r->prompt >= 0) fprintf(f, ", \"prompt_index\": %d, \"input_len\": null", r->prompt);
    else fprintf(f, ", \"prompt_index\": null, \"input_len\": %d", r->input_len);
    fprintf(f, ", \"max_tokens\": %d, \"code\": %d, \"status\": \"%s\", \"message\": ",
            r->max_tokens, r->status, load_status_name(r->status));
    load_json_str(f, message);
    fprintf(f, ", \"interrupted\": %s, \"request_id\": %llu, \"scheduled_s\": %.6f, "
            "\"sent_s\": %.6f, \"ttft_ms\": ", r->interrupted ? "true" : "false",
            (unsigned long long)r->request_id, r->t_sched, r->t_send);
    jms(f, load_rec_ttft(r));
    fputs(", \"tpot_ms\": ", f);
    jms(f, load_rec_tpot(r));
    fputs(", \"e2e_ms\": ", f);
    jms(f, load_rec_e2e(r));
    fprintf(f, ", \"output_tokens\": %d, \"messages\": %d", r->out_tokens, r->n_msgs);
    if (r->has_finish) {
        fprintf(f, ", \"finish\": \"%s\", \"prompt_tokens\": %d, \"completion_tokens\": %d, "
                "\"server_queue_ms\": ", load_finish_name(r->finish_reason), r->prompt_tokens,
                r->completion_tokens);
        jms(f, r->srv_queue_s);
        fputs(", \"server_ttft_ms\": ", f);
        jms(f, r->srv_ttft_s);
        fputs(", \"server_e2e_ms\": ", f);
        jms(f, r->srv_e2e_s);
        fprintf(f, ", \"evicted_tokens\": %lld, \"preemptions\": %d, \"policy_ran\": ",
                (long long)r->evicted_tokens, r->preemptions);
        load_json_str(f, r->policy_ran);
    } else {
        fputs(", \"finish\": null", f);
    }
    fputs("}\n", f);
}

/* ---- JSON report ------------------------------------------------------------------------- */

static void json_summary_core(FILE *f, const load_summary *s, const load_slo *slo)
{
    fprintf(f, "\"requests\": {\"finished\": %lld, \"ok\": %lld, \"errors\": %lld, "
            "\"interrupted\": %lld}, ", s->finished, s->ok, s->errors, s->interrupted);
    fprintf(f, "\"throughput\": {\"requests_per_s\": %.4f, \"output_tokens_per_s\": %.3f, "
            "\"input_tokens_per_s\": %.3f, \"output_tokens\": %lld, \"input_tokens\": %lld}, ",
            per_s(s->ok, s->elapsed), per_s(s->out_tokens, s->elapsed),
            per_s(s->in_tokens, s->elapsed), s->out_tokens, s->in_tokens);
    fputs("\"latency_ms\": {\"ttft\": ", f);
    json_pct(f, &s->ttft);
    fputs(", \"tpot\": ", f);
    json_pct(f, &s->tpot);
    fputs(", \"e2e\": ", f);
    json_pct(f, &s->e2e);
    fputs(", \"server_queue\": ", f);
    json_pct(f, &s->queue);
    fputs("}, \"goodput\": ", f);
    if (slo->ttft > 0 || slo->tpot > 0) {
        fprintf(f, "{\"good\": %lld, \"fraction\": ", s->good);
        jnum(f, s->finished - s->interrupted > 0
                    ? (double)s->good / (double)(s->finished - s->interrupted) : 0.0, 0);
        fprintf(f, ", \"requests_per_s\": %.4f}", per_s(s->good, s->elapsed));
    } else {
        fputs("null", f);
    }
}

int load_report_json(FILE *f, const load_report_ctx *c)
{
    const load_opts *o = c->o;
    const load_workload *w = c->w;
    const load_results *res = c->res;
    load_summary all;
    if (load_summarize(res, -1, -1, c->slo, &all)) return -1;
    char when[32] = "";
    time_t t0 = (time_t)res->t_start_wall;
    struct tm tm;
    if (gmtime_r(&t0, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);

    fputs("{\n  \"tool\": \"kvsieve load\",\n  \"format\": 1,\n  \"target\": ", f);
    load_json_str(f, o->target);
    fprintf(f, ",\n  \"started_at\": \"%s\",\n  \"model\": ", when);
    if (c->mi->known) {
        fputs("{\"name\": ", f);
        load_json_str(f, c->mi->name);
        fprintf(f, ", \"n_ctx\": %d, \"n_vocab\": %d, \"default_policy\": ", c->mi->n_ctx,
                c->mi->n_vocab);
        load_json_str(f, c->mi->default_policy);
        fputs("}", f);
    } else {
        fputs("null", f);
    }
    /* The configuration (API keys are never written). */
    fprintf(f, ",\n  \"config\": {\"mode\": \"%s\", \"concurrency\": %d, \"rate\": ", mode_name(o),
            o->concurrency);
    jnum(f, o->rate > 0 ? o->rate : NAN, 0);
    fputs(", \"requests\": ", f);
    if (o->requests) fprintf(f, "%lld", o->requests);
    else fputs("null", f);
    fputs(", \"duration_s\": ", f);
    jnum(f, o->duration > 0 ? o->duration : NAN, 0);
    fprintf(f, ", \"timeout_s\": %g, \"seed\": %llu, \"ignore_eos\": %s, \"chat\": %s, "
            "\"prompts_file\": ", o->timeout, (unsigned long long)c->seed,
            w->ignore_eos ? "true" : "false", w->chat ? "true" : "false");
    if (c->prompts_path) load_json_str(f, c->prompts_path);
    else fputs("null", f);
    const load_dist *ds[2] = {&w->in, &w->out};
    const char *dn[2] = {"input", "output"};
    for (int i = 0; i < 2; i++) {
        const load_dist *d = ds[i];
        fprintf(f, ", \"%s\": {\"dist\": \"%s\", \"len\": %d", dn[i], load_dist_name(d->kind),
                d->len);
        if (d->kind == LOAD_DIST_UNIFORM) fprintf(f, ", \"lo\": %d, \"hi\": %d", d->lo, d->hi);
        if (d->kind == LOAD_DIST_NORMAL) fprintf(f, ", \"sd\": %g", d->sd);
        fputs("}", f);
    }
    fputs(", \"tenants\": [", f);
    for (int i = 0; i < w->n_tenants; i++) {
        fputs(i ? ", {\"name\": " : "{\"name\": ", f);
        load_json_str(f, w->tenants[i].name);
        fprintf(f, ", \"weight\": %g, \"has_key\": %s}", w->tenants[i].weight,
                w->tenants[i].key && *w->tenants[i].key ? "true" : "false");
    }
    fputs("], \"policies\": [", f);
    for (int i = 0; i < w->n_policies; i++) {
        fputs(i ? ", {\"name\": " : "{\"name\": ", f);
        load_json_str(f, policy_label(&w->policies[i]));
        fputs(", \"args\": ", f);
        load_json_str(f, w->policies[i].args);
        fprintf(f, ", \"weight\": %g}", w->policies[i].weight);
    }
    fputs("], \"slo\": {\"ttft_ms\": ", f);
    jnum(f, c->slo->ttft > 0 ? c->slo->ttft * 1e3 : NAN, 0);
    fputs(", \"tpot_ms\": ", f);
    jnum(f, c->slo->tpot > 0 ? c->slo->tpot * 1e3 : NAN, 0);
    fputs("}},\n", f);

    fprintf(f, "  \"duration_s\": %.6f,\n  \"interrupted\": %s,\n  \"sent\": %lld,\n"
            "  \"late_arrivals\": %lld,\n  \"clamped_lengths\": %d,\n  ", res->elapsed,
            res->interrupted ? "true" : "false", res->sent, res->late, w->clamped);
    json_summary_core(f, &all, c->slo);
    fputs(",\n  \"itl_ms\": ", f);
    json_pct(f, &all.itl);
    fputs(",\n  \"errors\": [", f);
    int first = 1;
    for (int code = 1; code <= 16; code++) {
        if (!all.by_code[code]) continue;
        fprintf(f, "%s{\"code\": %d, \"status\": \"%s\", \"count\": %lld, \"example\": ",
                first ? "" : ", ", code, load_status_name(code), all.by_code[code]);
        load_json_str(f, res->first_msg[code]);
        fputs("}", f);
        first = 0;
    }
    fputs("],\n  \"finish_reasons\": {", f);
    first = 1;
    for (int k = 0; k <= 6; k++) {
        if (!all.by_finish[k]) continue;
        fprintf(f, "%s\"%s\": %lld", first ? "" : ", ", load_finish_name(k), all.by_finish[k]);
        first = 0;
    }
    fprintf(f, "},\n  \"kv\": {\"evicted_tokens\": %lld, \"preemptions\": %lld},\n",
            all.evicted_tokens, all.preemptions);
    /* Breakdowns. */
    for (int pass = 0; pass < 2; pass++) {
        int n = pass ? w->n_policies : w->n_tenants;
        fprintf(f, "  \"by_%s\": [", pass ? "policy" : "tenant");
        for (int i = 0; i < n; i++) {
            load_summary s;
            if (load_summarize(res, pass ? -1 : i, pass ? i : -1, c->slo, &s)) return -1;
            fputs(i ? ",\n    {\"name\": " : "\n    {\"name\": ", f);
            load_json_str(f, pass ? policy_label(&w->policies[i]) : w->tenants[i].name);
            if (pass) {
                fputs(", \"args\": ", f);
                load_json_str(f, w->policies[i].args);
            }
            fputs(", ", f);
            json_summary_core(f, &s, c->slo);
            fputs(", \"errors\": {", f);
            int fe = 1;
            for (int code = 1; code <= 16; code++) {
                if (!s.by_code[code]) continue;
                fprintf(f, "%s\"%s\": %lld", fe ? "" : ", ", load_status_name(code),
                        s.by_code[code]);
                fe = 0;
            }
            fprintf(f, "}, \"evicted_tokens\": %lld}", s.evicted_tokens);
        }
        fputs(n ? "\n  ]" : "]", f);
        fputs(pass ? "\n" : ",\n", f);
    }
    fputs("}\n", f);
    return ferror(f) ? -1 : 0;
}

/* ---- text report ----------------------------------------------------------------------- */

static void text_pct_row(FILE *f, const char *name, const load_pct *p)
{
    if (!p->n) {
        fprintf(f, "  %-16s %9s\n", name, "-");
        return;
    }
    fprintf(f, "  %-16s %9.1f %9.1f %9.1f %9.1f %9.1f %7d\n", name, p->mean * 1e3, p->p50 * 1e3,
            p->p90 * 1e3, p->p99 * 1e3, p->max * 1e3, p->n);
}

static void text_breakdown(FILE *f, const load_report_ctx *c, int by_policy)
{
    const load_workload *w = c->w;
    int n = by_policy ? w->n_policies : w->n_tenants;
    fprintf(f, "\nby %s:\n  %-24s %6s %6s %6s %8s %10s %9s %9s %9s %9s\n",
            by_policy ? "policy" : "tenant", by_policy ? "policy" : "tenant", "done", "ok",
            "err", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "E2E p50");
    for (int i = 0; i < n; i++) {
        load_summary s;
        if (load_summarize(c->res, by_policy ? -1 : i, by_policy ? i : -1, c->slo, &s)) return;
        char label[sizeof w->policies[i].name + sizeof w->policies[i].args + 4];
        if (by_policy && w->policies[i].args[0])
            snprintf(label, sizeof label, "%s(%s)", policy_label(&w->policies[i]),
                     w->policies[i].args);
        else snprintf(label, sizeof label, "%s",
                      by_policy ? policy_label(&w->policies[i]) : w->tenants[i].name);
        fprintf(f, "  %-24.60s %6lld %6lld %6lld %8.2f %10.1f", label, s.finished, s.ok, s.errors,
                per_s(s.ok, s.elapsed), per_s(s.out_tokens, s.elapsed));
        const load_pct *ps[4] = {&s.ttft, &s.ttft, &s.tpot, &s.e2e};
        for (int k = 0; k < 4; k++) {
            double v = k == 1 ? ps[k]->p99 : ps[k]->p50;
            if (ps[k]->n) fprintf(f, " %9.1f", v * 1e3);
            else fprintf(f, " %9s", "-");
        }
        fputc('\n', f);
    }
}

int load_report_text(FILE *f, const load_report_ctx *c)
{
    const load_opts *o = c->o;
    const load_workload *w = c->w;
    const load_results *res = c->res;
    load_summary s;
    if (load_summarize(res, -1, -1, c->slo, &s)) return -1;
    char b1[64], b2[64];

    fprintf(f, "\n== kvsieve load: %s", o->target);
    if (c->mi->known) fprintf(f, ", model %s", c->mi->name);
    if (o->rate > 0)
        fprintf(f, ", open loop at %g req/s (Poisson, at most %d in flight)", o->rate,
                o->concurrency);
    else fprintf(f, ", closed loop with %d in flight", o->concurrency);
    fputs(" ==\n", f);
    if (w->prompts)
        fprintf(f, "workload     prompts from %s (%d), output %s tokens", c->prompts_path,
                w->n_prompts, load_dist_describe(&w->out, b2, sizeof b2));
    else
        fprintf(f, "workload     input %s tokens (random ids), output %s tokens",
                load_dist_describe(&w->in, b1, sizeof b1),
                load_dist_describe(&w->out, b2, sizeof b2));
    fprintf(f, "%s", w->ignore_eos ? " (ignore_eos)" : "");
    if (w->n_policies == 1 && w->policies[0].name[0])
        fprintf(f, ", policy %s%s%s", w->policies[0].name, w->policies[0].args[0] ? " " : "",
                w->policies[0].args);
    else if (w->n_policies == 1)
        fprintf(f, ", the server's policy%s%s", c->mi->known ? " " : "",
                c->mi->known ? c->mi->default_policy : "");
    fputc('\n', f);
    if (w->clamped)
        fprintf(f, "             %d requests were cut to fit the model's context of %d tokens\n",
                w->clamped, w->n_ctx);

    fprintf(f, "requests     %lld sent, %lld ok, %lld failed", res->sent, s.ok, s.errors);
    if (s.interrupted) fprintf(f, ", %lld cancelled by Ctrl-C", s.interrupted);
    fprintf(f, " in %.2f s%s\n", res->elapsed, res->interrupted ? " (interrupted)" : "");
    if (o->rate > 0 && res->late)
        fprintf(f, "             %lld arrivals were sent late (the %d in-flight cap was full)\n",
                res->late, o->concurrency);
    fprintf(f, "throughput   %.2f req/s, %.1f output tok/s, %.1f input tok/s (%lld output, %lld "
            "input tokens)\n", per_s(s.ok, s.elapsed), per_s(s.out_tokens, s.elapsed),
            per_s(s.in_tokens, s.elapsed), s.out_tokens, s.in_tokens);
    if (c->slo->ttft > 0 || c->slo->tpot > 0) {
        long long denom = s.finished - s.interrupted;
        fputs("goodput      ", f);
        if (c->slo->ttft > 0) fprintf(f, "TTFT <= %g ms", c->slo->ttft * 1e3);
        if (c->slo->ttft > 0 && c->slo->tpot > 0) fputs(" and ", f);
        if (c->slo->tpot > 0) fprintf(f, "TPOT <= %g ms", c->slo->tpot * 1e3);
        fprintf(f, ": %lld of %lld = %.1f%%, %.2f req/s\n", s.good, denom,
                denom > 0 ? 100.0 * (double)s.good / (double)denom : 0.0,
                per_s(s.good, s.elapsed));
    }
    fprintf(f, "\nlatency (ms)          mean       p50       p90       p99       max       n\n");
    text_pct_row(f, "TTFT", &s.ttft);
    text_pct_row(f, "ITL", &s.itl);
    text_pct_row(f, "TPOT", &s.tpot);
    text_pct_row(f, "E2E", &s.e2e);
    text_pct_row(f, "queue (server)", &s.queue);

    int any = 0;
    for (int k = 0; k <= 6; k++)
        if (s.by_finish[k]) {
            fprintf(f, "%s%s %lld", any ? ", " : "\nfinish       ", load_finish_name(k),
                    s.by_finish[k]);
            any = 1;
        }
    if (any) fputc('\n', f);
    if (s.evicted_tokens || s.preemptions)
        fprintf(f, "KV           %lld entries evicted, %lld preemptions\n", s.evicted_tokens,
                s.preemptions);
    if (s.errors) {
        fputs("\nerrors by status:\n", f);
        for (int code = 1; code <= 16; code++)
            if (s.by_code[code])
                fprintf(f, "  %-20s %2d %7lld   %.160s\n", load_status_name(code), code,
                        s.by_code[code], res->first_msg[code] ? res->first_msg[code] : "");
    }
    if (w->n_tenants > 1) text_breakdown(f, c, 0);
    if (w->n_policies > 1) text_breakdown(f, c, 1);
    fflush(f);
    return ferror(f) ? -1 : 0;
}
