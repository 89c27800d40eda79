/* cmd_load.c — `kvsieve load`: drive a kvsieve server with streaming Generate calls and report
 * latency percentiles, throughput and goodput (docs/LOAD.md). Flags are parsed here; the work
 * is in load_workload.c, load_client.c, load_stats.c and load_report.c. */
#include <errno.h>
#include <getopt.h>
#include <grpc/grpc.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "memory/policy.h"
#include "load/load.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve load --target HOST:PORT [options]\n\n"
        "Load-test a running `kvsieve serve` with streaming Generate calls; report TTFT, ITL,\n"
        "TPOT and end-to-end latency percentiles, throughput, goodput and errors. Point it only\n"
        "at servers you run (docs/LOAD.md).\n\n"
        "arrivals (the run always stops: after --requests, or --duration, whichever first):\n"
        "  --target HOST:PORT     the server's gRPC address (required), or its --http-listen\n"
        "                         address with --api openai\n"
        "  --api API              grpc (default) | openai: streamed /v1/completions (chat with\n"
        "                         --chat) over HTTP, the same workload and report\n"
        "  -c, --concurrency N    closed loop: N requests in flight at all times (default 4);\n"
        "                         with --rate: the most in flight (default 1000)\n"
        "  -r, --rate R           open loop: Poisson arrivals at R requests/s\n"
        "  -n, --requests N       requests to send (default 100 when --duration is not given)\n"
        "  -d, --duration S       stop sending after S seconds (in-flight requests finish)\n"
        "  --timeout S            deadline of each request (default 300)\n"
        "  --connect-timeout S    give up if the server does not answer in S (default 5)\n"
        "prompts:\n"
        "  --input-len N          synthetic prompt length in tokens (default 128)\n"
        "  --input-dist D         fixed (default) | uniform[:LO:HI] | normal[:SD] | exp\n"
        "  --output-len N         max_tokens of each request (default 128)\n"
        "  --output-dist D        as --input-dist, for --output-len\n"
        "  --prompts FILE         text prompts instead of synthetic ones: one per line, or JSONL\n"
        "                         {\"prompt\": \"...\", \"max_tokens\": N} (max_tokens optional)\n"
        "  --chat                 send --prompts as chat user turns\n"
        "  --no-ignore-eos        let requests stop at end-of-generation tokens (default: run\n"
        "                         to max_tokens, so output lengths are as asked)\n"
        "  --seed N               seed of lengths, token ids, tenants, policies, arrivals (0)\n"
        "tenants and policies:\n"
        "  --tenant NAME:KEY:W    send this tenant's requests with `authorization: Bearer KEY`,\n"
        "                         weight W in the mix (repeatable; KEY may be empty)\n"
        "  --policy NAME          KV policy of every request (default: the server's)\n"
        "  --policy-args ARGS     its options, e.g. ratio=0.5 (see 'kvsieve policies')\n"
        "  --policy-mix MIX       a mix instead, e.g. full:1,knorm(ratio=0.5):1,default:1;\n"
        "                         --policy-args applies to entries without (ARGS)\n"
        "report:\n"
        "  --slo-ttft MS          goodput: TTFT at most MS milliseconds\n"
        "  --slo-tpot MS          goodput: time per output token at most MS milliseconds\n"
        "  --json FILE            write the whole report as JSON ('-' = stdout; the table then\n"
        "                         goes to stderr)\n"
        "  --records FILE         write one JSON line per request\n"
        "  -q, --quiet            no progress line on stderr\n"
        "  -h, --help             this help\n\n"
        "Exit status: 0 all requests OK; 3 some failed (the report says why); 1 the run could not\n"
        "start (unreachable server, unreadable file); 2 bad flags; 130 interrupted.\n");
}

/* Ctrl-C: the run stops sending, cancels what is in flight and still reports. A second Ctrl-C
 * kills (SA_RESETHAND). The one piece of global state: a signal can reach nothing else. */
static volatile sig_atomic_t load_stop;

static void on_signal(int sig)
{
    (void)sig;
    load_stop = 1;
}

/* HOST:PORT with a port in 1..65535 (or unix:PATH). */
static int check_target(const char *t)
{
    if (!strncmp(t, "unix:", 5) && t[5]) return 0;
    const char *colon = strrchr(t, ':');
    if (!colon || colon == t) return -1;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 1 || port > 65535) return -1;
    return 0;
}

static int is_loopback(const char *t)
{
    return !strncmp(t, "127.", 4) || !strncmp(t, "localhost:", 10) || !strncmp(t, "[::1]:", 6) ||
           !strncmp(t, "unix:", 5) || !strncmp(t, "ipv4:127.", 9);
}

/* Is name in the comma-separated list? */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t l = strcspn(p, ",");
        if (l == n && !strncmp(p, name, n)) return 1;
        p += l;
        if (*p == ',') p++;
    }
    return 0;
}

int cmd_load(int argc, char **argv)
{
    const char *cmd = "load";
    load_opts o = {.concurrency = 0, .timeout = 300, .connect_timeout = 5, .progress = 1};
    const char *input_dist = "fixed", *output_dist = "fixed", *prompts_path = NULL;
    const char *policy = NULL, *policy_args = NULL, *policy_mix = NULL;
    const char *json_path = NULL, *records_path = NULL;
    long long input_len = 128, output_len = 128, seed = 0, v = 0;
    int chat = 0, ignore_eos = 1, input_given = 0;
    double slo_ttft_ms = 0, slo_tpot_ms = 0;
    load_tenant *tenants = NULL;
    int n_tenants = 0, grpc_up = 0;
    load_workload w;
    load_results res;
    load_model_info mi;
    FILE *rec_file = NULL, *json_file = NULL;
    memset(&w, 0, sizeof w);
    memset(&res, 0, sizeof res);
    enum { O_TARGET = 256, O_TIMEOUT, O_CONNECT, O_IN_LEN, O_IN_DIST, O_OUT_LEN, O_OUT_DIST,
           O_PROMPTS, O_CHAT, O_NO_EOS, O_SEED, O_TENANT, O_POLICY, O_POLICY_ARGS, O_MIX, O_API,
           O_SLO_TTFT, O_SLO_TPOT, O_JSON, O_RECORDS };
    static const struct option opts[] = {
        {"target", required_argument, 0, O_TARGET},
        {"concurrency", required_argument, 0, 'c'},
        {"rate", required_argument, 0, 'r'},
        {"requests", required_argument, 0, 'n'},
        {"duration", required_argument, 0, 'd'},
        {"timeout", required_argument, 0, O_TIMEOUT},
        {"connect-timeout", required_argument, 0, O_CONNECT},
        {"input-len", required_argument, 0, O_IN_LEN},
        {"input-dist", required_argument, 0, O_IN_DIST},
        {"output-len", required_argument, 0, O_OUT_LEN},
        {"output-dist", required_argument, 0, O_OUT_DIST},
        {"prompts", required_argument, 0, O_PROMPTS},
        {"chat", no_argument, 0, O_CHAT},
        {"no-ignore-eos", no_argument, 0, O_NO_EOS},
        {"seed", required_argument, 0, O_SEED},
        {"tenant", required_argument, 0, O_TENANT},
        {"policy", required_argument, 0, O_POLICY},
        {"policy-args", required_argument, 0, O_POLICY_ARGS},
        {"policy-mix", required_argument, 0, O_MIX},
        {"api", required_argument, 0, O_API},
        {"slo-ttft", required_argument, 0, O_SLO_TTFT},
        {"slo-tpot", required_argument, 0, O_SLO_TPOT},
        {"json", required_argument, 0, O_JSON},
        {"records", required_argument, 0, O_RECORDS},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c, rc = 2, bad = 0;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:r:n:d:qh", opts, NULL)) != -1) {
        switch (c) {
        case O_TARGET: o.target = optarg; break;
        case 'c':
            bad = cli_int(cmd, "--concurrency", optarg, 1, 100000, &v);
            o.concurrency = (int)v;
            break;
        case 'r': bad = cli_float(cmd, "--rate", optarg, 1e-6, 1e6, &o.rate); break;
        case 'n': bad = cli_int(cmd, "--requests", optarg, 1, 100000000, &o.requests); break;
        case 'd': bad = cli_float(cmd, "--duration", optarg, 1e-3, 1e7, &o.duration); break;
        case O_TIMEOUT: bad = cli_float(cmd, "--timeout", optarg, 1e-3, 1e7, &o.timeout); break;
        case O_CONNECT:
            bad = cli_float(cmd, "--connect-timeout", optarg, 1e-3, 3600, &o.connect_timeout);
            break;
        case O_IN_LEN:
            bad = cli_int(cmd, "--input-len", optarg, 1, 1 << 20, &input_len);
            input_given = 1;
            break;
        case O_IN_DIST: input_dist = optarg; input_given = 1; break;
        case O_OUT_LEN: bad = cli_int(cmd, "--output-len", optarg, 1, 1 << 20, &output_len); break;
        case O_OUT_DIST: output_dist = optarg; break;
        case O_PROMPTS: prompts_path = optarg; break;
        case O_CHAT: chat = 1; break;
        case O_NO_EOS: ignore_eos = 0; break;
        case O_SEED: bad = cli_int(cmd, "--seed", optarg, 0, INT64_MAX, &seed); break;
        case O_TENANT: {
            load_tenant *nt = realloc(tenants, (size_t)(n_tenants + 1) * sizeof *nt);
            if (!nt) goto out;
            tenants = nt;
            if (load_tenant_parse(optarg, &tenants[n_tenants])) goto out;
            n_tenants++;
            for (int i = 0; i < n_tenants - 1; i++)
                if (!strcmp(tenants[i].name, tenants[n_tenants - 1].name)) {
                    fprintf(stderr, "kvsieve load: --tenant: '%s' is given twice\n",
                            tenants[i].name);
                    goto out;
                }
            break;
        }
        case O_POLICY: policy = optarg; break;
        case O_POLICY_ARGS: policy_args = optarg; break;
        case O_MIX: policy_mix = optarg; break;
        case O_API:
            if (!strcmp(optarg, "openai")) o.api_openai = 1;
            else if (strcmp(optarg, "grpc")) {
                fprintf(stderr, "kvsieve load: --api: '%s' is not grpc or openai\n", optarg);
                goto out;
            }
            break;
        case O_SLO_TTFT: bad = cli_float(cmd, "--slo-ttft", optarg, 1e-3, 1e9, &slo_ttft_ms); break;
        case O_SLO_TPOT: bad = cli_float(cmd, "--slo-tpot", optarg, 1e-3, 1e9, &slo_tpot_ms); break;
        case O_JSON: json_path = optarg; break;
        case O_RECORDS: records_path = optarg; break;
        case 'q': o.progress = 0; break;
        case 'h': usage(stdout); rc = 0; goto out;
        default:
            cli_bad_option("load", opts, argv[optind - 1]);
            goto out;
        }
        if (bad) goto out;
    }
    if (optind < argc) {
        fprintf(stderr, "kvsieve load: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (!o.target) {
        fprintf(stderr, "kvsieve load: --target HOST:PORT is required (the address of a "
                "`kvsieve serve` you run)\n");
        goto out;
    }
    if (check_target(o.target)) {
        fprintf(stderr, "kvsieve load: --target: '%s' is not HOST:PORT (port 1..65535)\n",
                o.target);
        goto out;
    }
    if (!o.requests && !(o.duration > 0)) o.requests = 100;
    if (!o.concurrency) o.concurrency = o.rate > 0 ? 1000 : 4;
    if (o.requests && o.rate <= 0 && o.concurrency > o.requests) o.concurrency = (int)o.requests;
    if (prompts_path && input_given) {
        fprintf(stderr, "kvsieve load: --input-len/--input-dist describe synthetic prompts; "
                "with --prompts the file's prompts are sent as they are\n");
        goto out;
    }
    if (chat && !prompts_path) {
        fprintf(stderr, "kvsieve load: --chat needs --prompts (synthetic prompts are token ids, "
                "which have no chat form)\n");
        goto out;
    }
    if (policy && policy_mix) {
        fprintf(stderr, "kvsieve load: give --policy or --policy-mix, not both\n");
        goto out;
    }
    if (policy_args && !policy && !policy_mix) {
        fprintf(stderr, "kvsieve load: --policy-args needs --policy or --policy-mix (the "
                "server's default policy keeps the server's options)\n");
        goto out;
    }
    if (policy_args && policy && !strcmp(policy, "default")) {
        fprintf(stderr, "kvsieve load: --policy default (the server's) takes no --policy-args\n");
        goto out;
    }
    if (policy && (!*policy || strlen(policy) >= sizeof((load_policy *)0)->name)) {
        fprintf(stderr, "kvsieve load: --policy: '%s' is not a policy name\n", policy);
        goto out;
    }
    if (policy_args && strlen(policy_args) >= sizeof((load_policy *)0)->args) {
        fprintf(stderr, "kvsieve load: --policy-args: longer than %zu bytes\n",
                sizeof((load_policy *)0)->args - 1);
        goto out;
    }

    w.chat = chat;
    w.ignore_eos = ignore_eos;
    load_rng_seed(&w.rng, (uint64_t)seed);
    if (load_dist_parse("--input-dist", input_dist, (int)input_len, &w.in) ||
        load_dist_parse("--output-dist", output_dist, (int)output_len, &w.out))
        goto out;
    if (policy_mix) {
        w.n_policies = load_policy_mix_parse(policy_mix, policy_args, &w.policies);
        if (w.n_policies < 0) goto out;
    } else {
        w.policies = calloc(1, sizeof *w.policies);
        if (!w.policies) goto out;
        w.n_policies = 1;
        w.policies[0].weight = 1;
        if (policy && strcmp(policy, "default")) {
            snprintf(w.policies[0].name, sizeof w.policies[0].name, "%s", policy);
            snprintf(w.policies[0].args, sizeof w.policies[0].args, "%s",
                     policy_args ? policy_args : "");
        }
    }
    for (int i = 0; i < w.n_policies; i++) /* known policies only: the server may have plugins */
        if (pol_find(w.policies[i].name) &&
            !cli_policy_sized(w.policies[i].name, w.policies[i].args)) {
            fprintf(stderr, "kvsieve load: policy %s has no ratio or budget, so it would evict "
                    "nothing: write %s(ratio=0.5) in --policy-mix, or --policy %s "
                    "--policy-args ratio=0.5\n", w.policies[i].name, w.policies[i].name,
                    w.policies[i].name);
            goto out;
        }
    if (n_tenants == 0) {
        tenants = calloc(1, sizeof *tenants);
        if (!tenants) goto out;
        snprintf(tenants[0].name, sizeof tenants[0].name, "default");
        tenants[0].weight = 1;
        n_tenants = 1;
    }
    w.tenants = tenants;
    w.n_tenants = n_tenants;

    rc = 1;
    if (prompts_path && load_prompts_read(prompts_path, &w.prompts, &w.n_prompts)) goto out;
    if (records_path && !(rec_file = fopen(records_path, "w"))) {
        fprintf(stderr, "kvsieve load: --records %s: %s\n", records_path, strerror(errno));
        goto out;
    }
    if (json_path && strcmp(json_path, "-") && !(json_file = fopen(json_path, "w"))) {
        fprintf(stderr, "kvsieve load: --json %s: %s\n", json_path, strerror(errno));
        goto out;
    }
    if (!is_loopback(o.target))
        fprintf(stderr, "kvsieve load: note: %s is not a loopback address; load-test only "
                "servers you run\n", o.target);

    grpc_init();
    grpc_up = 1;
    if (o.api_openai ? load_http_probe(&o, &w, &mi) : load_client_probe(&o, &w, &mi)) goto out;
    if (mi.known) {
        for (int i = 0; i < w.n_policies; i++)
            if (w.policies[i].name[0] && !in_list(mi.policies, w.policies[i].name)) {
                fprintf(stderr, "kvsieve load: policy '%s': the server has no such policy (it "
                        "has %s)\n", w.policies[i].name, mi.policies);
                rc = 2;
                goto out;
            }
        int lo = mi.n_vocab / 64, hi = mi.n_vocab - mi.n_vocab / 16;
        w.vocab_lo = lo;
        w.vocab_hi = hi > lo ? hi : mi.n_vocab;
        w.bos = mi.bos;
        w.n_ctx = mi.n_ctx;
    } else {
        w.vocab_lo = 256;
        w.vocab_hi = 4096;
        w.bos = -1;
        if (!w.prompts)
            fprintf(stderr, "kvsieve load: warning: no model information; synthetic token ids "
                    "are drawn from [256, 4096)\n");
    }
    if (o.progress) {
        fprintf(stderr, "kvsieve load: %s%s%s, ", o.target, mi.known ? " model " : "",
                mi.known ? mi.name : "");
        if (o.requests) fprintf(stderr, "%lld requests", o.requests);
        if (o.requests && o.duration > 0) fputs(" or ", stderr);
        if (o.duration > 0) fprintf(stderr, "%g s", o.duration);
        if (o.rate > 0) fprintf(stderr, ", open loop %g req/s\n", o.rate);
        else fprintf(stderr, ", closed loop concurrency %d\n", o.concurrency);
    }

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    load_stop = 0;
    o.stop = &load_stop;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int run_rc = o.api_openai ? load_http_run(&o, &w, &res, rec_file)
                              : load_client_run(&o, &w, &res, rec_file);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (run_rc) goto out;

    load_slo slo = {slo_ttft_ms / 1e3, slo_tpot_ms / 1e3};
    load_report_ctx rc_ctx = {&o, &w, &mi, &res, &slo, (uint64_t)seed, prompts_path};
    FILE *text_out = json_path && !strcmp(json_path, "-") ? stderr : stdout;
    if (load_report_text(text_out, &rc_ctx)) {
        fprintf(stderr, "kvsieve load: cannot write the report\n");
        goto out;
    }
    if (json_path) {
        FILE *jf = json_file ? json_file : stdout;
        if (load_report_json(jf, &rc_ctx) || fflush(jf)) {
            fprintf(stderr, "kvsieve load: --json %s: write failed\n", json_path);
            goto out;
        }
    }
    if (rec_file && (fflush(rec_file) || ferror(rec_file))) {
        fprintf(stderr, "kvsieve load: --records %s: write failed\n", records_path);
        goto out;
    }
    {
        load_summary s;
        if (load_summarize(&res, -1, -1, &slo, &s)) goto out;
        rc = res.interrupted ? 130 : s.errors ? 3 : 0;
    }

out:
    if (grpc_up) grpc_shutdown();
    if (json_file && fclose(json_file) && rc == 0) {
        fprintf(stderr, "kvsieve load: --json %s: write failed\n", json_path);
        rc = 1;
    }
    if (rec_file && fclose(rec_file) && rc == 0) {
        fprintf(stderr, "kvsieve load: --records %s: write failed\n", records_path);
        rc = 1;
    }
    load_results_free(&res);
    load_prompts_free(w.prompts, w.n_prompts);
    free(w.policies);
    for (int i = 0; i < n_tenants; i++) {
        if (tenants[i].key) memset(tenants[i].key, 0, strlen(tenants[i].key));
        free(tenants[i].key);
    }
    free(tenants);
    return rc;
}
