/* cmd_bench_cuda.c — `kvsieve bench --device cuda` (issue 5, docs/CUDA.md):
 *   1. device-to-device copy bandwidth, measured in this run: the roofline for 2 and 3;
 *   2. paged decode attention: bytes it must read per second, and as a share of the copy
 *      bandwidth, over contexts x batch sizes, on shuffled pages with holes;
 *   3. compaction (device plan + batched copy): bytes moved per second, share of copy;
 *   4. Q-Filters scoring: the fused score's cost in the K-write kernel (DOT vs no score) per
 *      decode step, as a share of a measured decode step of the model;
 *   5. a fixed KV memory budget: how many concurrent sequences of --prompt-len tokens fit and
 *      the output tokens/s decoding them all, for full and qfilters at x4, x8, x16 (prefill
 *      compression: ratio 0.75, 0.875, 0.9375).
 * Results print as a table and, with --json, as one JSON object. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/common.h"
#include "engine.h"
#include "memory/policy.h"
#include "policies/qfilters.h"
#include "sampler.h"

#ifdef KVS_HAVE_CUDA
#include "engine/cuda/kvs_cuda.h"
#endif

int cmd_bench_cuda(int argc, char **argv);

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve bench --device cuda [options]\n\n"
        "CUDA benchmarks: copy bandwidth; decode attention and compaction GB/s against it;\n"
        "the share of a decode step spent on Q-Filters scoring; and, with a fixed KV memory\n"
        "budget, concurrent sequences and output tokens/s for full vs qfilters x4/x8/x16.\n\n"
        "  --model PATH       GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --kv-memory SIZE   KV budget for the capacity run (default 4G)\n"
        "  --prompt-len N     prompt tokens per sequence (default 4096)\n"
        "  --gen-len N        decode steps in the capacity run (default 32)\n"
        "  --ratios LIST      qfilters compression factors (default 4,8,16)\n"
        "  --max-seqs N       stop admitting at N sequences (default 1024)\n"
        "  --filters PATH     Q-Filters file (default <model>.kvsqf; else random filters,\n"
        "                     which measure speed, not quality)\n"
        "  --contexts LIST    decode-attention contexts (default 1024,4096,16384)\n"
        "  --batches LIST     decode-attention batch sizes (default 1,16,64)\n"
        "  --quick            small sizes (a smoke run)\n"
        "  --json FILE        also write the results as JSON\n");
}

#ifdef KVS_HAVE_CUDA

/* Random filters for the model, saved to a temporary file (performance runs only). */
static int random_filters(const model_config *c, char *path, size_t size)
{
    size_t n = (size_t)c->n_layers * c->n_kv_heads * c->head_dim;
    float *u = malloc(n * sizeof *u);
    if (!u) return KVS_ENOMEM;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        u[i] = (float)(x >> 40) / (float)(1 << 24) - 0.5f;
    }
    qf_filters f = {.n_layers = c->n_layers, .n_kv_heads = c->n_kv_heads,
                    .head_dim = c->head_dim, .n_heads = c->n_heads, .n_tokens = 0, .u = u};
    snprintf(f.model_name, sizeof f.model_name, "%s", c->name);
    snprintf(path, size, "/tmp/kvsieve-bench-%d.kvsqf", (int)getpid());
    int rc = qf_filters_save(path, &f);
    free(u);
    return rc;
}

typedef struct {
    const char *label;
    double ratio;        /* < 0: full */
    int n_seqs;          /* admitted */
    int64_t pages_used;
    double prefill_s, decode_s, tok_per_s, step_ms;
    double kv_write_ms;  /* per decode step, from fwd timing */
    int failed;
} cap_result;

/* Admit sequences of prompt_len random tokens (prefill each, compressing with the policy at
 * prefill end) while the pool can hold one more prefill and every admitted sequence's decode;
 * then decode gen_len tokens for all of them together. */
static void capacity_run(kvs_engine *e, const char *policy, const char *args, int prompt_len,
                         int gen_len, int max_seqs, cap_result *out)
{
    const model_config *c = &e->m->cfg;
    const int P = e->pool->page_slots, streams = c->n_layers * c->n_kv_heads;
    engine_seq **seqs = calloc((size_t)max_seqs, sizeof *seqs);
    int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    int *row = calloc((size_t)max_seqs, sizeof *row);
    int32_t *next = calloc((size_t)max_seqs, sizeof *next);
    int n = 0;
    uint64_t x = 12345;
    double t0 = kvs_now();
    float *lg;
    /* each admitted sequence keeps room for its decode: ceil(gen_len / P) + 1 pages a stream */
    const int64_t decode_pages = (int64_t)streams * ((gen_len + P - 1) / P + 1);
    while (seqs && prompt && row && next && n < max_seqs) {
        int64_t prefill_pages = (int64_t)streams * ((prompt_len + P - 1) / P);
        if (e->pool->n_free < prefill_pages + decode_pages * (n + 1)) break;
        for (int i = 0; i < prompt_len; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            prompt[i] = (int32_t)((x >> 33) % (uint64_t)c->n_vocab);
        }
        engine_seq *s;
        if (engine_seq_create(e, &s)) break;
        if (engine_seq_push(e, s, prompt, prompt_len) ||
            (policy && engine_seq_set_policy(e, s, policy, args))) {
            fprintf(stderr, "kvsieve bench: %s\n", kvs_last_error());
            engine_seq_destroy(e, s);
            out->failed = 1;
            break;
        }
        engine_seq_mark_prompt(s);
        if (engine_step(e, &s, 1, prompt_len, &lg, &row[0])) {
            engine_seq_destroy(e, s);
            break; /* the pool is full */
        }
        next[n] = smp_argmax(lg + (size_t)row[0] * c->n_vocab, c->n_vocab);
        seqs[n++] = s;
    }
    out->prefill_s = kvs_now() - t0;
    out->n_seqs = n;
    out->pages_used = e->pool->n_pages - e->pool->n_free;
    double t_dec = 0.0, kvw = 0.0;
    int steps = 0;
    for (int k = 0; k < gen_len && n > 0 && !out->failed; k++) {
        for (int i = 0; i < n; i++)
            if (engine_seq_push(e, seqs[i], &next[i], 1)) out->failed = 1;
        double t1 = kvs_now();
        if (out->failed || engine_step(e, seqs, n, 1, &lg, row)) {
            fprintf(stderr, "kvsieve bench: decode: %s\n", kvs_last_error());
            out->failed = 1;
            break;
        }
        t_dec += kvs_now() - t1;
        kvw += engine_last_timing(e)->kv_write;
        steps++;
        for (int i = 0; i < n; i++)
            next[i] = smp_argmax(lg + (size_t)row[i] * c->n_vocab, c->n_vocab);
    }
    out->decode_s = t_dec;
    out->tok_per_s = t_dec > 0 ? (double)n * steps / t_dec : 0.0;
    out->step_ms = steps ? t_dec / steps * 1e3 : 0.0;
    out->kv_write_ms = steps ? kvw / steps * 1e3 : 0.0;
    for (int i = 0; i < n; i++) engine_seq_destroy(e, seqs[i]);
    free(seqs); free(prompt); free(row); free(next);
}

int cmd_bench_cuda(int argc, char **argv)
{
    const char *cmd = "bench", *model_path = NULL, *json_path = NULL, *filters = NULL;
    size_t kv_bytes = (size_t)4 << 30;
    long long prompt_len = 4096, gen_len = 32, max_seqs = 1024;
    int32_t ratios[8] = {4, 8, 16}, contexts[8] = {1024, 4096, 16384}, batches[8] = {1, 16, 64};
    int n_ratios = 3, n_ctx = 3, n_batch = 3, quick = 0, set_ctx = 0, set_batch = 0;
    enum { O_MODEL = 256, O_KV, O_PL, O_GL, O_RATIOS, O_MAXS, O_FILT, O_CTX, O_BATCH, O_QUICK,
           O_JSON, O_DEVICE };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"kv-memory", required_argument, 0, O_KV},
        {"prompt-len", required_argument, 0, O_PL}, {"gen-len", required_argument, 0, O_GL},
        {"ratios", required_argument, 0, O_RATIOS}, {"max-seqs", required_argument, 0, O_MAXS},
        {"filters", required_argument, 0, O_FILT}, {"contexts", required_argument, 0, O_CTX},
        {"batches", required_argument, 0, O_BATCH}, {"quick", no_argument, 0, O_QUICK},
        {"json", required_argument, 0, O_JSON}, {"device", required_argument, 0, O_DEVICE},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model_path = optarg; break;
        case O_KV: if (cli_size(cmd, "--kv-memory", optarg, &kv_bytes)) return 2; break;
        case O_PL: if (cli_int(cmd, "--prompt-len", optarg, 1, 1 << 20, &prompt_len)) return 2; break;
        case O_GL: if (cli_int(cmd, "--gen-len", optarg, 1, 1 << 16, &gen_len)) return 2; break;
        case O_MAXS: if (cli_int(cmd, "--max-seqs", optarg, 1, 1 << 16, &max_seqs)) return 2; break;
        case O_RATIOS:
            if ((n_ratios = cli_int_list(cmd, "--ratios", optarg, 2, 1024, ratios, 8)) < 0) return 2;
            break;
        case O_CTX:
            if ((n_ctx = cli_int_list(cmd, "--contexts", optarg, 16, 1 << 20, contexts, 8)) < 0) return 2;
            set_ctx = 1;
            break;
        case O_BATCH:
            if ((n_batch = cli_int_list(cmd, "--batches", optarg, 1, 4096, batches, 8)) < 0) return 2;
            set_batch = 1;
            break;
        case O_FILT: filters = optarg; break;
        case O_QUICK: quick = 1; break;
        case O_JSON: json_path = optarg; break;
        case O_DEVICE: break; /* chose this command */
        case 'h': usage(stdout); return 0;
        default: return cli_bad_option("bench --device cuda", opts, argv[optind - 1]);
        }
    }
    if (optind < argc) { fprintf(stderr, "kvsieve bench: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (quick) { /* smaller defaults; explicit values stay */
        prompt_len = prompt_len > 512 ? 512 : prompt_len;
        gen_len = gen_len > 8 ? 8 : gen_len;
        if (!set_ctx) { n_ctx = 1; contexts[0] = 1024; }
        if (!set_batch) { n_batch = 2; batches[0] = 1; batches[1] = 16; }
        if (max_seqs > 64) max_seqs = 64;
    }
    if (!model_path) model_path = cli_default_model();
    char dev[256];
    kvs_device_describe(dev, sizeof dev);
    if (kvs_device_count() == 0) {
        fprintf(stderr, "kvsieve bench --device cuda: %s\n", dev);
        return 1;
    }
    kvs_engine *e = NULL;
    engine_opts eo = {.model_path = model_path, .kv_bytes = kv_bytes, .device = KVS_DEVICE_CUDA};
    if (engine_create(&eo, &e)) { fprintf(stderr, "kvsieve bench: %s\n", kvs_last_error()); return 1; }
    const model_config *cfg = &e->m->cfg;
    const int G = cfg->n_heads / cfg->n_kv_heads, hd = cfg->head_dim, P = e->pool->page_slots;
    if (prompt_len + gen_len > cfg->n_ctx)
        fprintf(stderr, "kvsieve bench: note: prompt-len + gen-len = %lld exceeds the model's "
                "context %d (positions past it are still computed)\n", prompt_len + gen_len,
                cfg->n_ctx);
    FILE *jf = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !jf) fprintf(stderr, "kvsieve bench: cannot write %s\n", json_path);
    printf("device: %s\n", dev);
    printf("model %s | %d layers, d_model %d, heads %d/%d, head dim %d | KV pool %d pages of %d "
           "(%.2f GiB)\n", cfg->name, cfg->n_layers, cfg->d_model, cfg->n_heads, cfg->n_kv_heads,
           hd, (int)e->pool->n_pages, P,
           (double)e->pool->n_pages * mem_cuda_page_bytes(P, hd) / (1 << 30));
    if (jf) fprintf(jf, "{\"device\": \"%s\", \"model\": \"%s\", \"kv_bytes\": %zu, "
                        "\"page_slots\": %d", dev, cfg->name, kv_bytes, P);
    int rc = 0;

    /* 1. copy bandwidth */
    double copy_gbps = 0.0;
    if ((rc = kvs_cuda_bench_copy(quick ? (size_t)256 << 20 : (size_t)1 << 30, 10, &copy_gbps))) goto out;
    printf("\n[copy] device-to-device: %.1f GB/s (read + write)\n", copy_gbps);
    if (jf) fprintf(jf, ", \"copy_gbps\": %.2f", copy_gbps);

    /* 2. decode attention */
    printf("\n[decode attention] %d KV heads x G %d, head dim %d, P %d, 10%% holes, shuffled pages\n",
           cfg->n_kv_heads, G, hd, P);
    printf("%-8s %-6s %7s %10s %10s %8s\n", "context", "batch", "splits", "time_us", "GB/s", "of copy");
    if (jf) fprintf(jf, ", \"decode_attention\": [");
    for (int i = 0, first = 1; i < n_ctx; i++)
        for (int j = 0; j < n_batch; j++) {
            double t, bytes;
            int splits;
            /* the synthetic pool must fit next to the engine's */
            rc = kvs_cuda_bench_attention(batches[j], contexts[i], cfg->n_kv_heads, G, hd, P, 10,
                                          quick ? 3 : 20, &t, &bytes, &splits);
            if (rc) {
                fprintf(stderr, "  context %d batch %d: %s (skipped)\n", contexts[i], batches[j],
                        kvs_last_error());
                rc = 0;
                continue;
            }
            double gbps = bytes / t / 1e9;
            printf("%-8d %-6d %7d %10.1f %10.1f %7.0f%%\n", contexts[i], batches[j], splits,
                   t * 1e6, gbps, 100.0 * gbps / copy_gbps);
            if (jf) fprintf(jf, "%s{\"context\": %d, \"batch\": %d, \"splits\": %d, \"seconds\": %.3e, "
                                "\"gbps\": %.2f, \"of_copy\": %.4f}", first ? "" : ", ", contexts[i],
                            batches[j], splits, t, gbps, gbps / copy_gbps);
            first = 0;
        }
    if (jf) fprintf(jf, "]");

    /* 3. compaction */
    {
        const int n_streams = quick ? 256 : 4096, slots = 512;
        double t, bytes;
        int64_t moves;
        printf("\n[compaction] %d streams x %d slots, 50%% holes: device plan + batched copy\n",
               n_streams, slots);
        if ((rc = kvs_cuda_bench_compaction(n_streams, slots, hd, P, 50, &t, &bytes, &moves))) goto out;
        printf("  %lld moves in %.1f us: %.1f GB/s (%.0f%% of copy)\n", (long long)moves, t * 1e6,
               bytes / t / 1e9, 100.0 * bytes / t / 1e9 / copy_gbps);
        if (jf) fprintf(jf, ", \"compaction\": {\"streams\": %d, \"slots\": %d, \"moves\": %lld, "
                            "\"seconds\": %.3e, \"gbps\": %.2f, \"of_copy\": %.4f}", n_streams,
                        slots, (long long)moves, t, bytes / t / 1e9, bytes / t / 1e9 / copy_gbps);
    }

    /* 4 + 5. the capacity run; Q-Filters scoring share from its decode steps */
    char fpath[512] = "";
    if (filters) snprintf(fpath, sizeof fpath, "%s", filters);
    else {
        snprintf(fpath, sizeof fpath, "%s", model_path);
        char *dot = strrchr(fpath, '.');
        if (dot && !strcmp(dot, ".gguf")) strcpy(dot, ".kvsqf");
        if (access(fpath, R_OK) != 0) {
            if ((rc = random_filters(cfg, fpath, sizeof fpath))) goto out;
            printf("\n(no filters file: random Q-Filters filters in %s — speed, not quality)\n", fpath);
        }
    }
    fwd_cuda_set_timing((fwd_cuda_state *)e->be->state, 1); /* the CUDA backend's state (checked: --device cuda) */
    printf("\n[capacity] KV budget %.2f GiB, prompts of %lld tokens, %lld decode steps\n",
           (double)kv_bytes / (1 << 30), prompt_len, gen_len);
    printf("%-14s %6s %10s %12s %10s %12s\n", "policy", "seqs", "pages", "prefill_s", "step_ms", "out_tok/s");
    if (jf) fprintf(jf, ", \"capacity\": {\"prompt_len\": %lld, \"gen_len\": %lld, \"runs\": [",
                    prompt_len, gen_len);
    cap_result full = {0}, qf[8];
    for (int k = -1; k < n_ratios; k++) {
        cap_result *r = k < 0 ? &full : &qf[k];
        memset(r, 0, sizeof *r);
        char args[700], label[32];
        if (k < 0) {
            snprintf(label, sizeof label, "full");
            capacity_run(e, NULL, NULL, (int)prompt_len, (int)gen_len, (int)max_seqs, r);
        } else {
            r->ratio = 1.0 - 1.0 / ratios[k];
            snprintf(label, sizeof label, "qfilters x%d", ratios[k]);
            snprintf(args, sizeof args, "ratio=%.6f,when=prefill,filters=%s", r->ratio, fpath);
            capacity_run(e, "qfilters", args, (int)prompt_len, (int)gen_len, (int)max_seqs, r);
        }
        printf("%-14s %6d %10lld %12.2f %10.2f %12.1f%s\n", label, r->n_seqs, (long long)r->pages_used,
               r->prefill_s, r->step_ms, r->tok_per_s, r->failed ? "  (failed)" : "");
        if (jf) fprintf(jf, "%s{\"policy\": \"%s\", \"seqs\": %d, \"pages\": %lld, \"prefill_s\": %.3f, "
                            "\"step_ms\": %.3f, \"out_tok_per_s\": %.2f}", k < 0 ? "" : ", ", label,
                        r->n_seqs, (long long)r->pages_used, r->prefill_s, r->step_ms, r->tok_per_s);
        fflush(stdout);
    }
    if (jf) fprintf(jf, "]}");
    /* scoring share: the K-write kernel with and without the Q-Filters dot, at the batch of the
     * largest qfilters run, times the layers, over its measured decode step */
    if (n_ratios > 0 && qf[n_ratios - 1].n_seqs > 0 && qf[n_ratios - 1].step_ms > 0) {
        const cap_result *r = &qf[n_ratios - 1];
        double t0, t1, t2;
        if ((rc = kvs_cuda_bench_kv_write(r->n_seqs, cfg->n_heads, cfg->n_kv_heads, hd, 20, &t0,
                                          &t1, &t2))) goto out;
        double per_step = (t1 - t0) * cfg->n_layers * 1e3;
        printf("\n[Q-Filters scoring] K-write kernel at batch %d: %.2f us without a score, %.2f us "
               "with <k,u>, %.2f us with ||k||\n", r->n_seqs, t0 * 1e6, t1 * 1e6, t2 * 1e6);
        printf("  scoring costs %.4f ms of a %.2f ms decode step (%d layers): %.3f%% of the step\n",
               per_step, r->step_ms, cfg->n_layers, 100.0 * per_step / r->step_ms);
        printf("  (the whole K-write phase, scoring included, was %.3f ms a step)\n", r->kv_write_ms);
        if (jf) fprintf(jf, ", \"qfilters_scoring\": {\"batch\": %d, \"kv_write_us\": %.3f, "
                            "\"kv_write_dot_us\": %.3f, \"kv_write_norm_us\": %.3f, "
                            "\"ms_per_step\": %.5f, \"step_ms\": %.3f, \"share\": %.6f}",
                        r->n_seqs, t0 * 1e6, t1 * 1e6, t2 * 1e6, per_step, r->step_ms,
                        per_step / r->step_ms);
    }
    if (!filters && strncmp(fpath, "/tmp/kvsieve-bench-", 19) == 0) remove(fpath);
out:
    if (rc) fprintf(stderr, "kvsieve bench: %s\n", kvs_last_error());
    if (jf) { fprintf(jf, "}\n"); fclose(jf); }
    engine_destroy(e);
    return rc ? 1 : 0;
}

#else /* no CUDA in this build */

int cmd_bench_cuda(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
    fprintf(stderr, "kvsieve bench --device cuda: this kvsieve was built without CUDA (rebuild "
            "with -DKVS_CUDA=ON where nvcc is installed)\n");
    return 1;
}

#endif
