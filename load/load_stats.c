/* load_stats.c — per-request latencies, percentiles and goodput for `kvsieve load`.
 *
 * Definitions (docs/LOAD.md):
 *   TTFT  send -> first message that carries a token
 *   ITL   gap between two token-carrying messages, split evenly over the tokens of the later
 *         one (the server coalesces tokens when the client falls behind)
 *   TPOT  (last token - first token) / (tokens - 1), per request
 *   E2E   send -> status
 * A request is good when it finished OK and meets every SLO given. */
#include <stdlib.h>
#include <string.h>

#include "load/load.h"

double load_rec_ttft(const load_record *r)
{
    return r->out_tokens > 0 ? r->t_first - r->t_send : -1;
}

double load_rec_tpot(const load_record *r)
{
    return r->out_tokens > 1 ? (r->t_last - r->t_first) / (r->out_tokens - 1) : -1;
}

double load_rec_e2e(const load_record *r) { return r->t_end - r->t_send; }

int load_rec_good(const load_record *r, const load_slo *slo)
{
    if (r->status != 0) return 0;
    if (slo->ttft > 0 && !(load_rec_ttft(r) >= 0 && load_rec_ttft(r) <= slo->ttft)) return 0;
    if (slo->tpot > 0 && load_rec_tpot(r) > slo->tpot) return 0; /* < 2 tokens: no TPOT */
    return 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct_at(const double *v, size_t n, double q)
{
    double pos = q * (double)(n - 1);
    size_t i = (size_t)pos;
    if (i + 1 >= n) return v[n - 1];
    return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

void load_pct_compute(double *v, size_t n, load_pct *out)
{
    memset(out, 0, sizeof *out);
    if (!n) return;
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    out->n = (int)n;
    out->mean = sum / (double)n;
    out->min = v[0];
    out->max = v[n - 1];
    out->p50 = pct_at(v, n, 0.50);
    out->p90 = pct_at(v, n, 0.90);
    out->p99 = pct_at(v, n, 0.99);
}

int load_summarize(const load_results *res, int tenant, int policy, const load_slo *slo,
                   load_summary *out)
{
    memset(out, 0, sizeof *out);
    out->elapsed = res->elapsed;
    double *buf = malloc((res->n ? res->n : 1) * 4 * sizeof *buf);
    if (!buf) return -1;
    double *ttft = buf, *tpot = buf + res->n, *e2e = buf + 2 * res->n, *queue = buf + 3 * res->n;
    size_t n_ttft = 0, n_tpot = 0, n_e2e = 0, n_queue = 0;
    for (size_t i = 0; i < res->n; i++) {
        const load_record *r = &res->recs[i];
        if ((tenant >= 0 && r->tenant != tenant) || (policy >= 0 && r->policy != policy))
            continue;
        out->finished++;
        if (r->interrupted) {
            out->interrupted++;
            continue;
        }
        if (r->status >= 0 && r->status <= 16) out->by_code[r->status]++;
        if (r->has_finish && r->finish_reason >= 0 && r->finish_reason <= 6)
            out->by_finish[r->finish_reason]++;
        if (r->status != 0) {
            out->errors++;
            continue;
        }
        out->ok++;
        out->good += load_rec_good(r, slo);
        out->out_tokens += r->out_tokens;
        out->in_tokens += r->has_finish ? r->prompt_tokens : (r->input_len > 0 ? r->input_len : 0);
        out->evicted_tokens += r->evicted_tokens;
        out->preemptions += r->preemptions;
        if (load_rec_ttft(r) >= 0) ttft[n_ttft++] = load_rec_ttft(r);
        if (load_rec_tpot(r) >= 0) tpot[n_tpot++] = load_rec_tpot(r);
        e2e[n_e2e++] = load_rec_e2e(r);
        if (r->has_finish) queue[n_queue++] = r->srv_queue_s;
    }
    load_pct_compute(ttft, n_ttft, &out->ttft);
    load_pct_compute(tpot, n_tpot, &out->tpot);
    load_pct_compute(e2e, n_e2e, &out->e2e);
    load_pct_compute(queue, n_queue, &out->queue);
    free(buf);
    if (tenant < 0 && policy < 0 && res->n_itl) {
        double *itl = malloc(res->n_itl * sizeof *itl);
        if (!itl) return -1;
        memcpy(itl, res->itl, res->n_itl * sizeof *itl);
        load_pct_compute(itl, res->n_itl, &out->itl);
        free(itl);
    }
    return 0;
}

const char *load_status_name(int code)
{
    static const char *const n[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED"};
    return code >= 0 && code <= 16 ? n[code] : "UNKNOWN";
}

const char *load_finish_name(int reason)
{
    static const char *const n[] = {"unspecified", "stop", "length", "aborted",
                                    "deadline", "shutdown", "error"};
    return reason >= 0 && reason <= 6 ? n[reason] : "unspecified";
}

void load_results_free(load_results *res)
{
    free(res->recs);
    free(res->itl);
    for (int i = 0; i < 17; i++) free(res->first_msg[i]);
    memset(res, 0, sizeof *res);
}
