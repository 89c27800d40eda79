/* request.c — one request on the engine thread: its sequence, its tokens, the text it streams
 * (holding back possible stop-string prefixes) and its single FINISH event. */
#include "sched_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

int sched_grow(void **arr, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *p = realloc(*arr, (size_t)c * elem);
    if (!p) return kvs_error(KVS_ENOMEM, "out of memory");
    *arr = p;
    *cap = c;
    return 0;
}

void sched_remove_at(req **arr, int *n, int i)
{
    memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
    (*n)--;
}

void sched_req_free(kvs_loop *l, req *r)
{
    if (!r) return;
    if (r->seq) engine_seq_destroy(l->e, r->seq);
    smp_deinit(&r->smp);
    free(r->prompt);
    free(r->generated);
    free(r->pending);
    free(r);
}

/* Deliver the FINISH event, update counters, forget the request. */
void sched_finish(kvs_loop *l, req *r, int reason, int status, const char *msg)
{
    char tail[512];
    size_t n_tail = 0;
    /* Text still held back (a possible stop-string prefix, a partial UTF-8 character) goes
     * out with the final event unless a stop string matched. */
    if (reason != SCHED_FINISH_STOP || !msg || strncmp(msg, "stop string", 11)) {
        if (r->n_pending && r->n_pending < sizeof tail) {
            memcpy(tail, r->pending, r->n_pending);
            n_tail = r->n_pending;
        }
        int f = tok_stream_flush(&r->ts, tail + n_tail, sizeof tail - n_tail);
        if (f > 0) n_tail += (size_t)f;
    }
    double now = kvs_now();
    /* A request whose deadline passed (during the step that made its last token) ends as
     * DEADLINE: its client has given up, it did not get a complete answer in time. */
    if ((reason == SCHED_FINISH_STOP || reason == SCHED_FINISH_LENGTH) && r->p.deadline > 0 &&
        now > r->p.deadline) {
        reason = SCHED_FINISH_DEADLINE;
        msg = "deadline exceeded";
    }
    int64_t ev_now = r->seq ? r->seq->evicted : 0;
    sched_event ev = {
        .type = SCHED_EV_FINISH, .request_id = r->id, .token = -1, .text = tail,
        .text_len = n_tail, .finish_reason = reason, .status = status,
        .message = msg ? msg : "", .prompt_tokens = r->n_prompt,
        .completion_tokens = r->n_generated,
        .queue_time_s = r->t_sched > 0 ? r->t_sched - r->t_submit : now - r->t_submit,
        .ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : 0.0, .e2e_s = now - r->t_submit,
        .evicted_tokens = r->evicted + ev_now, .preemptions = r->preemptions};
    /* Forget it for kvs_loop_abort first: once the callback ran, the client may have its
     * final status and ask to abort the request again (that must be NOT_FOUND). */
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n_live; i++)
        if (l->live[i].id == r->id) { l->live[i] = l->live[--l->n_live]; break; }
    pthread_mutex_unlock(&l->mu);
    r->cb(r->user, &ev);
    tenant_rt *t = &l->tenants[r->tenant];
    t->finished++;
    t->evicted_tokens += ev.evicted_tokens;
    l->evicted_total += ev_now;
    if (r->seq) l->moves_total += r->seq->compaction_moves;
    l->finished_total++;
    sched_req_free(l, r);
}

void sched_logprobs(req *r, const float *x, int n_vocab, int32_t tok)
{
    float m = x[0];
    for (int i = 1; i < n_vocab; i++) m = x[i] > m ? x[i] : m;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)(x[i] - m));
    double lse = m + log(sum);
    r->lp = (float)(x[tok] - lse);
    int k = r->p.top_logprobs, n = 0;
    if (k > SCHED_MAX_TOP_LOGPROBS) k = SCHED_MAX_TOP_LOGPROBS;
    /* insertion into a sorted list of the k largest (k <= 20; ties: lower id first) */
    for (int i = 0; i < n_vocab && k > 0; i++) {
        if (n == k && x[i] <= x[r->top_ids[n - 1]]) continue;
        int j = n < k ? n++ : n - 1;
        while (j > 0 && x[r->top_ids[j - 1]] < x[i]) {
            r->top_ids[j] = r->top_ids[j - 1];
            j--;
        }
        r->top_ids[j] = i;
    }
    for (int i = 0; i < n; i++) r->top_lp[i] = (float)(x[r->top_ids[i]] - lse);
    r->n_top = n;
}

/* Emit text, holding back a suffix that may begin a stop string. Returns 1 if a stop string
 * matched (the text before it was emitted). */
static int emit_text(req *r, int32_t token, const char *piece, size_t n)
{
    char *buf = realloc(r->pending, r->n_pending + n + 1);
    if (!buf) n = 0; else r->pending = buf;
    if (n) memcpy(r->pending + r->n_pending, piece, n);
    r->n_pending += n;
    size_t emit = r->n_pending, cut = r->n_pending;
    int matched = 0;
    for (int i = 0; i < r->p.n_stop_strings; i++) {
        const char *ss = r->p.stop_strings[i];
        size_t m = strlen(ss);
        /* a full match anywhere in the pending text */
        for (size_t at = 0; at + m <= r->n_pending; at++)
            if (!memcmp(r->pending + at, ss, m)) {
                if (at < cut) cut = at;
                matched = 1;
                break;
            }
        /* longest suffix that is a proper prefix of the stop string */
        for (size_t k = m - 1; k > 0; k--)
            if (k <= r->n_pending && !memcmp(r->pending + r->n_pending - k, ss, k)) {
                if (r->n_pending - k < emit) emit = r->n_pending - k;
                break;
            }
    }
    if (matched) emit = cut;
    sched_event ev = {.type = SCHED_EV_TOKEN, .request_id = r->id, .token = token,
                      .text = r->pending, .text_len = emit};
    if (r->p.logprobs) {
        ev.has_logprob = 1;
        ev.logprob = r->lp;
        ev.n_top = r->n_top;
        memcpy(ev.top_ids, r->top_ids, (size_t)r->n_top * sizeof *ev.top_ids);
        memcpy(ev.top_logprobs, r->top_lp, (size_t)r->n_top * sizeof *ev.top_logprobs);
    }
    r->cb(r->user, &ev);
    memmove(r->pending, r->pending + emit, r->n_pending - emit);
    r->n_pending -= emit;
    return matched;
}

/* Take a newly sampled token; returns 1 if the request finished (and was freed). */
int sched_take_token(kvs_loop *l, req *r, int32_t tok)
{
    const model_config *c = &l->e->m->cfg;
    if (r->t_first == 0) r->t_first = kvs_now();
    l->generated_total++;
    l->tenants[r->tenant].generated_tokens++;
    l->tenants[r->tenant].vtc += VTC_W_OUTPUT / l->tenants[r->tenant].t.weight;
    if (!r->p.ignore_eos && tok_is_eog(l->e->tok, tok)) {
        r->n_generated++;
        sched_finish(l, r, SCHED_FINISH_STOP, 0, "end of generation token");
        return 1;
    }
    for (int i = 0; i < r->p.n_stop_ids; i++)
        if (r->p.stop_ids[i] == tok) {
            r->n_generated++;
            sched_finish(l, r, SCHED_FINISH_STOP, 0, "stop id");
            return 1;
        }
    if (r->n_generated + 1 > r->cap_generated) {
        int32_t cap = r->cap_generated ? 2 * r->cap_generated : 64;
        int32_t *g = realloc(r->generated, (size_t)cap * sizeof *g);
        if (!g) { sched_finish(l, r, SCHED_FINISH_ERROR, KVS_ENOMEM, "out of memory"); return 1; }
        r->generated = g;
        r->cap_generated = cap;
    }
    r->generated[r->n_generated++] = tok;
    int nb = tok_stream_push(l->e->tok, &r->ts, tok, l->piece, l->piece_cap);
    if (emit_text(r, tok, l->piece, nb > 0 ? (size_t)nb : 0)) {
        sched_finish(l, r, SCHED_FINISH_STOP, 0, "stop string");
        return 1;
    }
    if (r->n_generated >= r->p.max_tokens) {
        sched_finish(l, r, SCHED_FINISH_LENGTH, 0, "max_tokens");
        return 1;
    }
    if (r->n_prompt + r->n_generated >= c->n_ctx) {
        sched_finish(l, r, SCHED_FINISH_LENGTH, 0, "the model's context is full");
        return 1;
    }
    if (engine_seq_push(l->e, r->seq, &tok, 1)) {
        sched_finish(l, r, SCHED_FINISH_ERROR, KVS_EINVAL, kvs_last_error());
        return 1;
    }
    return 0;
}

/* Build the sequence of a request being (re)admitted: prompt + what it generated before a
 * preemption, prompt marked for prefill-time compression, its policy. */
int sched_start_seq(kvs_loop *l, req *r)
{
    engine_seq *s;
    int rc = engine_seq_create(l->e, &s);
    if (rc) return rc;
    if ((rc = engine_seq_push(l->e, s, r->prompt, r->n_prompt))) goto fail;
    engine_seq_mark_prompt(s);
    if (r->n_generated && (rc = engine_seq_push(l->e, s, r->generated, r->n_generated))) goto fail;
    if ((rc = engine_seq_set_policy(l->e, s, r->p.policy, r->p.policy_args))) goto fail;
    r->seq = s;
    return 0;
fail:
    engine_seq_destroy(l->e, s);
    return rc;
}
