/* load.h — `kvsieve load`: a load generator for `kvsieve serve` (docs/LOAD.md).
 *
 * Data flows one way: the workload (load_workload.c) makes request specs, the client
 * (load_client.c) sends them as streaming Generate calls over one gRPC channel and fills one
 * load_record per request, the stats (load_stats.c) turn the records into percentiles and
 * goodput, the report (load_report.c) prints them as a table and as JSON. cmd_load.c parses
 * the flags and runs the four in order. */
#ifndef KVS_LOAD_H
#define KVS_LOAD_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- random numbers (xoshiro256**; one generator per run, no global state) ---------------- */

typedef struct load_rng {
    uint64_t s[4];
} load_rng;

void load_rng_seed(load_rng *r, uint64_t seed);
uint64_t load_rng_next(load_rng *r);
double load_rng_uniform(load_rng *r);          /* [0, 1) */
double load_rng_normal(load_rng *r);           /* mean 0, stddev 1 */
double load_rng_exp(load_rng *r, double mean); /* exponential with that mean */

/* ---- workload: what each request asks for --------------------------------------------------- */

typedef enum { LOAD_DIST_FIXED, LOAD_DIST_UNIFORM, LOAD_DIST_NORMAL, LOAD_DIST_EXP } load_dist_kind;

/* A length distribution: fixed N; uniform in [lo, hi] (default [N/2, 3N/2]); normal with mean
 * N and stddev sd (default N/4); exponential with mean N. Samples are clamped to >= 1. */
typedef struct load_dist {
    load_dist_kind kind;
    int len;       /* N (--input-len / --output-len) */
    int lo, hi;    /* uniform */
    double sd;     /* normal */
} load_dist;

/* Parse "fixed", "uniform[:LO:HI]", "normal[:SD]", "exp" for a distribution of mean `len`.
 * Returns 0, or -1 after printing "kvsieve load: FLAG: ..." */
int load_dist_parse(const char *flag, const char *s, int len, load_dist *out);
int load_dist_sample(const load_dist *d, load_rng *r);
/* "fixed 128", "uniform [64, 192]", ... into buf. */
const char *load_dist_describe(const load_dist *d, char *buf, size_t cap);
const char *load_dist_name(load_dist_kind k);

typedef struct load_tenant {
    char name[64];
    char *key;      /* API key sent as `authorization: Bearer <key>`; "" = none */
    double weight;
} load_tenant;

typedef struct load_policy {
    char name[64];  /* "" = the server's default policy */
    char args[256];
    double weight;
} load_policy;

typedef struct load_prompt {
    char *text;
    int max_tokens; /* from a JSONL record; 0 = sample the output distribution */
} load_prompt;

typedef struct load_workload {
    load_dist in, out;
    load_prompt *prompts; /* --prompts FILE (NULL = synthetic token-id prompts) */
    int n_prompts, next_prompt;
    int chat, ignore_eos;
    load_tenant *tenants; /* at least one (a keyless "default" when no --tenant) */
    int n_tenants;
    load_policy *policies; /* at least one ("" = the server's default) */
    int n_policies;
    /* From the server's GetModelInfo (or safe guesses when it could not be asked). */
    int32_t vocab_lo, vocab_hi; /* synthetic ids are drawn from [lo, hi) */
    int32_t bos;                /* prepended to synthetic prompts; -1 = none */
    int n_ctx;                  /* prompt + max_tokens are kept within it; 0 = unknown */
    int clamped;                /* requests whose lengths were cut to fit n_ctx */
    load_rng rng;
} load_workload;

/* One request to send. The client packs it and calls load_req_clear. */
typedef struct load_req {
    int tenant, policy;  /* indexes into the workload's arrays */
    int prompt;          /* index into prompts, or -1 for a synthetic prompt */
    int32_t *ids;        /* synthetic prompt (owned) */
    int n_ids;
    int max_tokens;
} load_req;

/* Parse "NAME:KEY:WEIGHT" (or "NAME:KEY", weight 1); the key may contain ':' when the
 * weight is given. Returns 0 or -1 (message printed). */
int load_tenant_parse(const char *s, load_tenant *out);
/* Parse a policy mix "NAME:W,NAME(ARGS):W,..." (ARGS may hold commas; "default" = the
 * server's policy). Entries without (ARGS) get default_args unless they are "default".
 * Returns the number of entries (malloc'd into *out) or -1 (message printed). */
int load_policy_mix_parse(const char *s, const char *default_args, load_policy **out);
/* Read a prompts file: one prompt per line, or JSONL ({"prompt": "...", "max_tokens": N};
 * "text" is accepted for "prompt", "output_len" for "max_tokens"). Empty lines are skipped.
 * Returns 0, or -1 after printing "kvsieve load: FILE:LINE: ...". */
int load_prompts_read(const char *path, load_prompt **out, int *n);
void load_prompts_free(load_prompt *p, int n);

/* The next request (tenant and policy drawn by weight; lengths drawn from the
 * distributions). Returns 0 or -1 (out of memory). */
int load_workload_next(load_workload *w, load_req *out);
void load_req_clear(load_req *r);

/* ---- records: what happened to each request -------------------------------------------------- */

typedef struct load_record {
    long long idx;            /* 0, 1, ... in the order the requests were sent */
    int tenant, policy, prompt;
    int input_len;            /* synthetic prompt tokens sent (BOS included); -1 = text */
    int max_tokens;
    double t_sched;           /* when it was due (open loop), seconds from the run's start */
    double t_send, t_first, t_last, t_end; /* send, first token, last token, status */
    int out_tokens;           /* tokens received */
    int n_msgs;               /* messages received (header included) */
    int status;               /* gRPC status code */
    int interrupted;          /* cancelled by the client (Ctrl-C), not a server error */
    uint64_t request_id;
    /* From the final message (has_finish = 0 when none came). */
    int has_finish, finish_reason, prompt_tokens, completion_tokens, preemptions;
    double srv_queue_s, srv_ttft_s, srv_e2e_s;
    int64_t evicted_tokens;
    char policy_ran[32];
} load_record;

/* TTFT, TPOT, E2E in seconds; -1 when not defined for that record (no token; < 2 tokens). */
double load_rec_ttft(const load_record *r);
double load_rec_tpot(const load_record *r);
double load_rec_e2e(const load_record *r);

/* ---- the run ------------------------------------------------------------------------------- */

typedef struct load_model_info {
    int known;
    char name[128];
    int n_vocab, n_ctx;
    int32_t bos, eos;
    char default_policy[64];
    char policies[1024]; /* names, comma-separated */
} load_model_info;

typedef struct load_opts {
    const char *target;
    int api_openai;           /* --api openai: the HTTP API (load_http.c), else gRPC */
    int concurrency;          /* closed loop: in flight; open loop: the cap */
    double rate;              /* > 0: open loop, Poisson arrivals at this rate */
    long long requests;       /* 0 = no limit (then duration is set) */
    double duration;          /* seconds; 0 = no limit (then requests is set) */
    double timeout;           /* per-request deadline, seconds */
    double connect_timeout;   /* bound on reaching the server at the start */
    int progress;             /* 0 off, 1 on */
    volatile sig_atomic_t *stop; /* set by SIGINT: stop sending, cancel what is in flight */
} load_opts;

/* Growable arrays that the client fills and the stats read. */
typedef struct load_results {
    load_record *recs;
    size_t n, cap;
    double *itl;              /* every inter-token gap of every OK request, seconds */
    size_t n_itl, cap_itl;
    double t_start_wall;      /* time(NULL)-like epoch seconds at the start */
    double elapsed;           /* first send -> last status, seconds */
    long long sent, late;     /* late: open-loop arrivals delayed by the concurrency cap */
    int interrupted;
    char *first_msg[17];      /* first status message seen per gRPC code (malloc'd) */
} load_results;

void load_results_free(load_results *res);

/* Connect and ask GetModelInfo with each tenant's key, within connect_timeout. Fills *mi
 * (known = 0 if no tenant could ask). Returns 0, or -1 after printing why the server cannot
 * be reached (connection refused, no answer in time). Warnings (a key the server refuses) go
 * to stderr. */
int load_client_probe(const load_opts *o, const load_workload *w, load_model_info *mi);
/* Run the load; records go to res, and each finished request to the records file (JSONL)
 * when rec_file is not NULL. Returns 0, or -1 on a local failure (message printed). */
int load_client_run(const load_opts *o, load_workload *w, load_results *res, FILE *rec_file);

/* The same over the OpenAI HTTP API (load_http.c, --api openai): GET /v1/models to probe,
 * streamed POST /v1/completions (/v1/chat/completions with --chat) to run. */
int load_http_probe(const load_opts *o, const load_workload *w, load_model_info *mi);
int load_http_run(const load_opts *o, load_workload *w, load_results *res, FILE *rec_file);

/* One record as a JSON line. */
void load_record_write_json(FILE *f, const load_workload *w, const load_record *r,
                            const char *message);

/* ---- statistics -------------------------------------------------------------------------- */

typedef struct load_pct {
    int n;
    double mean, min, p50, p90, p99, max;
} load_pct;

/* Percentiles with linear interpolation between order statistics (numpy's default). Sorts v. */
void load_pct_compute(double *v, size_t n, load_pct *out);

typedef struct load_slo {
    double ttft, tpot;        /* seconds; 0 = not given */
} load_slo;

/* The summary of a set of records (all of them, or one tenant's / one policy's). */
typedef struct load_summary {
    long long finished, ok, errors, interrupted, good;
    long long out_tokens, in_tokens; /* ok requests: received tokens, server-counted prompt */
    long long evicted_tokens, preemptions;
    double elapsed;
    load_pct ttft, tpot, e2e, itl, queue; /* seconds; itl only for the whole run */
    long long by_code[17];
    long long by_finish[7];
} load_summary;

/* tenant / policy < 0: no filter. itl (the whole run's gaps) is only used when both are < 0.
 * Returns 0 or -1 (out of memory). */
int load_summarize(const load_results *res, int tenant, int policy, const load_slo *slo,
                   load_summary *out);
/* Good = OK and TTFT <= slo.ttft and TPOT <= slo.tpot (each when given). */
int load_rec_good(const load_record *r, const load_slo *slo);

const char *load_status_name(int code);
const char *load_finish_name(int reason);

/* ---- report --------------------------------------------------------------------------------- */

typedef struct load_report_ctx {
    const load_opts *o;
    const load_workload *w;
    const load_model_info *mi;
    const load_results *res;
    const load_slo *slo;
    uint64_t seed;
    const char *prompts_path;
} load_report_ctx;

/* The text report. Returns 0 or -1 (out of memory). */
int load_report_text(FILE *f, const load_report_ctx *c);
/* Everything as one JSON object. Returns 0 or -1. */
int load_report_json(FILE *f, const load_report_ctx *c);
/* JSON string literal of s (quotes included). */
void load_json_str(FILE *f, const char *s);

#endif
