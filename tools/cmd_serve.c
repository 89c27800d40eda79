/* cmd_serve.c — `kvsieve serve`: load the model, start the engine loop on its own thread, serve
 * gRPC (and optionally Prometheus metrics) until SIGTERM/SIGINT, then shut down gracefully
 * (docs/OPERATIONS.md). */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/common.h"
#include "device.h"
#include "engine.h"
#include "memory/policy.h"
#include "scheduler/loop.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/server.h"
#include "server/tenants.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve serve [options]\n\n"
        "Serve the model over gRPC (kvsieve.v1.Kvsieve, grpc.health.v1.Health, server reflection)\n"
        "and optionally the OpenAI HTTP API, until SIGTERM or SIGINT. Prints\n"
        "'kvsieve serve: ready grpc=HOST:PORT metrics=... http=...' on stdout\n"
        "once it accepts calls. See docs/OPERATIONS.md and docs/API.md.\n\n"
        "  --model PATH            GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --listen HOST:PORT      gRPC address (default 127.0.0.1:50051; port 0 = any free port)\n"
        "  --metrics-listen HOST:PORT\n"
        "                          serve Prometheus metrics at http://HOST:PORT/metrics\n"
        "                          (default: off; port 0 = any free port)\n"
        "  --http-listen HOST:PORT serve the OpenAI-compatible HTTP API (/v1/completions,\n"
        "                          /v1/chat/completions, /v1/models, /health, /tokenize,\n"
        "                          /detokenize) on the same engine and tenants (default: off)\n"
        "  --http-metrics          also serve GET /metrics on the --http-listen port\n"
        "  --served-model-name NAME\n"
        "                          the model name both APIs report and the HTTP API expects in\n"
        "                          \"model\" (default: the GGUF's general.name)\n"
        "  --tenants FILE          tenants file (YAML: names, API key hashes, weights, limits,\n"
        "                          allowed policies). Without it the server is open: no API key,\n"
        "                          one tenant 'default' without limits\n"
        "  --kv-memory SIZE        KV page pool size, e.g. 256M, 2G (default 1G)\n"
        "  --device DEV            cpu | cuda | auto (default cpu; cuda needs a GPU build)\n"
        "  --kv-dtype T            KV cache element format (one per server): " CLI_KV_DTYPE_HELP "\n"
        "  --max-batch-tokens N    token budget of one engine step (default 512)\n"
        "  --max-running N         sequences in one step (default 64)\n"
        "  --prefill-chunk N       prompt tokens of one sequence per step (default 256)\n"
        "  --fair-max-wait SECONDS a tenant with waiting requests and none running gets a slot\n"
        "                          after about this long, preempting the newest request of the\n"
        "                          most-served tenant (default 2; 0 = off)\n"
        "  --grace SECONDS         on SIGTERM/SIGINT, time running requests get to finish before\n"
        "                          they are stopped with finish reason SHUTDOWN (default 15)\n"
        "  --server-threads N      gRPC completion-queue threads (default 1)\n"
        "  -v, --verbose           log one line per finished request to stderr\n"
        "  -h, --help              this help\n\n"
        "KV policy of requests that name none (a request's own policy / policy_args replace\n"
        "these as a whole):\n%s", cli_policy_help);
}

static void *engine_main(void *p)
{
    kvs_loop_run(p);
    return NULL;
}

/* "host:port" with the port replaced by the one actually bound. */
static void bound_addr(const char *listen, int port, char *out, size_t cap)
{
    const char *colon = strrchr(listen, ':');
    int hl = colon ? (int)(colon - listen) : (int)strlen(listen);
    snprintf(out, cap, "%.*s:%d", hl, listen, port);
}

int cmd_serve(int argc, char **argv)
{
    const char *cmd = "serve";
    const char *model_path = NULL, *listen = "127.0.0.1:50051", *metrics_listen = NULL;
    const char *tenants_path = NULL, *http_listen = NULL, *served_name = NULL;
    int http_metrics = 0;
    cli_policy pol = {0};
    int verbose = 0;
    size_t kv_bytes = 0;
    const char *kv_dtype = NULL;
    kvs_device_kind device = KVS_DEVICE_CPU;
    long long max_batch = 512, max_running = 64, chunk = 256, threads = 1;
    double grace = 15.0, fair_wait = 2.0;
    enum { O_MODEL = 256, O_LISTEN, O_METRICS, O_TENANTS, O_KV, O_POLICY, O_BATCH, O_RUNNING,
           O_CHUNK, O_GRACE, O_THREADS, O_DEVICE, O_HTTP, O_HTTP_METRICS, O_SERVED,
           O_FAIR, O_KVD };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"listen", required_argument, 0, O_LISTEN},
        {"metrics-listen", required_argument, 0, O_METRICS},
        {"tenants", required_argument, 0, O_TENANTS},
        {"http-listen", required_argument, 0, O_HTTP},
        {"http-metrics", no_argument, 0, O_HTTP_METRICS},
        {"served-model-name", required_argument, 0, O_SERVED},
        {"kv-memory", required_argument, 0, O_KV},
        {"policy", required_argument, 0, O_POLICY},
        {"ratio", required_argument, 0, O_POLICY},
        {"budget", required_argument, 0, O_POLICY},
        {"window", required_argument, 0, O_POLICY},
        {"sink", required_argument, 0, O_POLICY},
        {"when", required_argument, 0, O_POLICY},
        {"policy-args", required_argument, 0, O_POLICY},
        {"max-batch-tokens", required_argument, 0, O_BATCH},
        {"max-running", required_argument, 0, O_RUNNING},
        {"prefill-chunk", required_argument, 0, O_CHUNK},
        {"grace", required_argument, 0, O_GRACE},
        {"fair-max-wait", required_argument, 0, O_FAIR},
        {"server-threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE},
        {"kv-dtype", required_argument, 0, O_KVD},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c, li = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "vh", opts, &li)) != -1) {
        switch (c) {
        case O_MODEL: model_path = optarg; break;
        case O_LISTEN: listen = optarg; break;
        case O_METRICS: metrics_listen = optarg; break;
        case O_TENANTS: tenants_path = optarg; break;
        case O_HTTP: http_listen = optarg; break;
        case O_HTTP_METRICS: http_metrics = 1; break;
        case O_SERVED:
            if (!*optarg || strlen(optarg) > 200) {
                fprintf(stderr, "kvsieve serve: --served-model-name must be 1 to 200 bytes\n");
                return 2;
            }
            served_name = optarg;
            break;
        case O_KV: if (cli_size(cmd, "--kv-memory", optarg, &kv_bytes)) return 2; break;
        case O_KVD:
            if (cli_kv_dtype(cmd, optarg)) return 2;
            kv_dtype = optarg;
            break;
        case O_DEVICE:
            if (kvs_device_parse(optarg, &device)) {
                fprintf(stderr, "kvsieve serve: %s\n", kvs_last_error());
                return 2;
            }
            break;
        case O_POLICY: if (cli_policy_flag(cmd, &pol, opts[li].name, optarg) < 0) return 2; break;
        case O_BATCH: if (cli_int(cmd, "--max-batch-tokens", optarg, 1, 1 << 20, &max_batch)) return 2; break;
        case O_RUNNING: if (cli_int(cmd, "--max-running", optarg, 1, 1 << 16, &max_running)) return 2; break;
        case O_CHUNK: if (cli_int(cmd, "--prefill-chunk", optarg, 1, 1 << 20, &chunk)) return 2; break;
        case O_GRACE: if (cli_float(cmd, "--grace", optarg, 0, 86400, &grace)) return 2; break;
        case O_FAIR: if (cli_float(cmd, "--fair-max-wait", optarg, 0, 86400, &fair_wait)) return 2; break;
        case O_THREADS: if (cli_int(cmd, "--server-threads", optarg, 1, 64, &threads)) return 2; break;
        case 'v': verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_option(cmd, opts, argv[optind - 1]);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvsieve serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (http_metrics && !http_listen) {
        fprintf(stderr, "kvsieve serve: --http-metrics needs --http-listen\n");
        return 2;
    }
    if (!model_path) model_path = cli_default_model();
    cli_policy_finish(&pol, model_path);
    const char *policy = pol.name, *policy_args = pol.args;
    if (pol_find(policy) && !cli_policy_sized(policy, policy_args)) {
        fprintf(stderr, "kvsieve serve: --policy %s without --ratio or --budget would evict "
                "nothing; give e.g. --ratio 0.5 (fraction evicted) or --budget 256 (tokens kept "
                "per head)\n", policy);
        return 2;
    }
    /* The filters file requests with policy qfilters get: the one of --policy-args, else the
     * model's default (<model>.kvsqf) when it exists. */
    char qf_path[sizeof pol.args] = "";
    {
        cli_policy qf = {.name = "qfilters"};
        const char *args = !strcmp(policy, "qfilters") ? pol.args : "";
        if (!strstr(args, "filters=")) {
            cli_policy_finish(&qf, model_path);
            args = qf.args;
        }
        const char *f = strstr(args, "filters=");
        if (f) snprintf(qf_path, sizeof qf_path, "%.*s", (int)strcspn(f + 8, ","), f + 8);
    }

    /* Block the signals before any thread exists (gRPC's, OpenMP's, ours): they all inherit
     * the mask and only sigwait() below sees SIGTERM/SIGINT. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv_tenants tenants = {0};
    sched_tenant *st = NULL;
    kvs_engine *e = NULL;
    kvs_loop *loop = NULL;
    srv_metrics *metrics = NULL;
    srv *server = NULL;
    srv_http *http = NULL;
    int http_port = 0;
    pthread_t engine_thread;
    int engine_started = 0, rc = 1;

    if (!pol_find(policy)) {
        fprintf(stderr, "kvsieve serve: --policy: unknown policy '%s' (see 'kvsieve policies')\n",
                policy);
        goto done;
    }
    if (tenants_path) {
        if (srv_tenants_load(tenants_path, &tenants)) {
            fprintf(stderr, "kvsieve serve: %s\n", kvs_last_error());
            goto done;
        }
        st = calloc((size_t)tenants.n, sizeof *st);
        if (!st) goto done;
        for (int i = 0; i < tenants.n; i++) st[i] = tenants.v[i].st;
    }

    engine_opts eo = {.model_path = model_path, .kv_bytes = kv_bytes, .device = device,
                      .kv_dtype = kv_dtype};
    if (engine_create(&eo, &e)) {
        fprintf(stderr, "kvsieve serve: %s\n", kvs_last_error());
        if (access(model_path, R_OK) != 0)
            fprintf(stderr, "hint: run scripts/fetch-model, or pass --model PATH\n");
        goto done;
    }
    kvs_loop_opts lo = {.max_batch_tokens = (int32_t)max_batch,
                        .max_running = (int32_t)max_running,
                        .prefill_chunk = (int32_t)chunk,
                        .max_starve_s = fair_wait > 0 ? fair_wait : -1,
                        .default_policy = policy,
                        .default_policy_args = policy_args,
                        .tenants = st,
                        .n_tenants = tenants.n};
    if (kvs_loop_create(e, &lo, &loop)) {
        fprintf(stderr, "kvsieve serve: %s\n", kvs_last_error());
        goto done;
    }

    const char **names = calloc((size_t)(tenants.n ? tenants.n : 1), sizeof *names);
    if (!names) goto done;
    for (int i = 0; i < tenants.n; i++) names[i] = tenants.v[i].st.name;
    if (!tenants.n) names[0] = "default";
    const char *model_name = served_name ? served_name : e->m->cfg.name;
    int mrc = srv_metrics_create(loop, model_name, names, tenants.n ? tenants.n : 1, &metrics);
    free(names);
    if (mrc) {
        fprintf(stderr, "kvsieve serve: %s\n", kvs_last_error());
        goto done;
    }
    int metrics_port = 0;
    if (metrics_listen && srv_metrics_listen(metrics, metrics_listen, &metrics_port)) {
        fprintf(stderr, "kvsieve serve: --metrics-listen: %s\n", kvs_last_error());
        goto done;
    }

    char kv_dtype_name[32];
    snprintf(kv_dtype_name, sizeof kv_dtype_name, "%s", engine_kv_dtype(e));
    srv_opts so = {.listen = listen,
                   .n_threads = (int)threads,
                   .engine = e,
                   .loop = loop,
                   .tenants = tenants_path ? &tenants : NULL,
                   .metrics = metrics,
                   .default_policy = policy,
                   .default_policy_args = policy_args,
                   .qfilters_path = qf_path[0] ? qf_path : NULL,
                   .kv_dtype = kv_dtype_name,
                   .model_name = model_name,
                   .verbose = verbose};
    if (srv_create(&so, &server)) {
        fprintf(stderr, "kvsieve serve: --listen: %s\n", kvs_last_error());
        goto done;
    }
    if (http_listen) {
        srv_http_opts ho = {.listen = http_listen,
                            .engine = e,
                            .loop = loop,
                            .tenants = tenants_path ? &tenants : NULL,
                            .metrics = metrics,
                            .model_name = model_name,
                            .default_policy = policy,
                            .qfilters_path = qf_path[0] ? qf_path : NULL,
                            .kv_dtype = kv_dtype_name,
                            .serve_metrics = http_metrics,
                            .verbose = verbose};
        if (srv_http_start(&ho, &http, &http_port)) {
            fprintf(stderr, "kvsieve serve: %s\n", kvs_last_error());
            goto done;
        }
    }
    if (pthread_create(&engine_thread, NULL, engine_main, loop)) {
        fprintf(stderr, "kvsieve serve: cannot start the engine thread\n");
        goto done;
    }
    engine_started = 1;

    char gaddr[300], maddr[300] = "off", haddr[300] = "off";
    if (http_listen) bound_addr(http_listen, http_port, haddr, sizeof haddr);
    bound_addr(listen, srv_port(server), gaddr, sizeof gaddr);
    if (metrics_listen) bound_addr(metrics_listen, metrics_port, maddr, sizeof maddr);
    fprintf(stderr,
            "kvsieve serve: model %s (%s), KV pool %lld pages of %d tokens (%s, %zu bytes per "
            "token), policy %s%s%s, %s\n",
            e->m->cfg.name, model_path, (long long)e->pool->n_pages, e->pool->page_slots,
            kv_dtype_name, engine_kv_bytes_per_token(e), policy,
            *policy_args ? " " : "", policy_args,
            tenants_path ? "tenants from file" : "open (no API key; tenant 'default')");
    printf("kvsieve serve: ready grpc=%s metrics=%s http=%s\n", gaddr, maddr, haddr);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "kvsieve serve: %s: shutting down (grace %.1fs)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", grace);
    srv_begin_shutdown(server);   /* health NOT_SERVING, no new calls, stop listening */
    srv_http_begin_shutdown(http); /* /health 503, new generation requests 503 */
    kvs_loop_stop(loop, grace);   /* running requests get the grace period, then SHUTDOWN */
    pthread_join(engine_thread, NULL);
    engine_started = 0;
    srv_finish(server, 5.0);      /* final statuses flushed; what is left is cancelled */
    srv_http_stop(http);          /* every response ended with its FINISH; close connections */
    http = NULL;
    fprintf(stderr, "kvsieve serve: stopped\n");
    rc = 0;

done:
    if (engine_started) { /* error after the engine started: stop it first */
        kvs_loop_stop(loop, 0);
        pthread_join(engine_thread, NULL);
    }
    srv_http_stop(http);
    srv_destroy(server);
    srv_metrics_destroy(metrics);
    kvs_loop_destroy(loop);
    engine_destroy(e);
    free(st);
    srv_tenants_free(&tenants);
    return rc;
}
