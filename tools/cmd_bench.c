/* cmd_bench.c — `kvsieve bench`: CPU prefill and decode throughput at several batch sizes,
 * each also as a fraction of the machine's own sgemm peak measured in the same run. */
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/common.h"
#include "engine.h"
#include "sampler.h"

int cmd_bench_cuda(int argc, char **argv); /* cmd_bench_cuda.c: --device cuda */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve bench [options]\n\n"
        "Measure CPU prefill and decode tokens/s at several batch sizes with random prompts, and\n"
        "the BLAS sgemm GFLOP/s of this machine in the same run; report model FLOP utilisation.\n\n"
        "  --model PATH       GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --batches LIST     batch sizes (default 1,8,32)\n"
        "  --prompt-len N     prompt tokens per sequence (default 128)\n"
        "  --gen-len N        decode steps per batch (default 32)\n"
        "  --kv-memory SIZE   KV page pool (default 1G)\n"
        "  --weights W        native (GGUF blocks, default) or f32 (dequantised at load)\n"
        "  --kv-dtype T       KV cache element format: " CLI_KV_DTYPE_HELP "\n"
        "  --device DEV       cpu (default), cuda or auto (cuda: `kvsieve bench --device cuda\n"
        "                     --help` lists the GPU benchmarks)\n"
        "  --json FILE        also write the results as JSON\n");
}

/* Best-of sgemm GFLOP/s on square n x n matrices for about `secs` seconds. */
static double sgemm_peak(int n, double secs)
{
    float *a = kvs_alloc((size_t)n * n * sizeof(float)), *b = kvs_alloc((size_t)n * n * sizeof(float));
    float *c = kvs_alloc((size_t)n * n * sizeof(float));
    if (!a || !b || !c) { kvs_free(a); kvs_free(b); kvs_free(c); return 0; }
    for (size_t i = 0; i < (size_t)n * n; i++) { a[i] = (float)(i % 7) * 0.1f; b[i] = (float)(i % 5) * 0.1f; }
    double best = 0, t_end = kvs_now() + secs;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    while (kvs_now() < t_end) {
        double t0 = kvs_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double g = 2.0 * n * (double)n * n / (kvs_now() - t0) / 1e9;
        if (g > best) best = g;
    }
    kvs_free(a); kvs_free(b); kvs_free(c);
    return best;
}

/* Model FLOPs for `n` new tokens of one sequence starting at position p0, with `rows` logit
 * rows: 2 per weight per token for the layer GEMMs, 4 * ctx * head_dim per query head per
 * layer for attention (QK^T and PV), 2 * vocab * d_model per logit row. */
static double model_flops(const model_config *c, int64_t p0, int64_t n, int rows)
{
    double D = c->d_model, hd = c->head_dim;
    double layer_w = (c->n_heads + 2.0 * c->n_kv_heads) * hd * D + D * c->n_heads * hd + 3.0 * D * c->d_ff;
    double f = 2.0 * layer_w * c->n_layers * (double)n;
    /* sum over tokens of their context length (p0+1 .. p0+n) */
    double ctx_sum = (double)n * p0 + (double)n * (n + 1) / 2.0;
    f += 4.0 * hd * c->n_heads * c->n_layers * ctx_sum;
    f += 2.0 * c->n_vocab * D * rows;
    return f;
}

int cmd_bench(int argc, char **argv)
{
    /* --device cuda (or auto with a GPU): the CUDA benchmarks take over */
    for (int i = 1; i < argc; i++) {
        const char *d = !strcmp(argv[i], "--device") && i + 1 < argc ? argv[i + 1]
                        : !strncmp(argv[i], "--device=", 9) ? argv[i] + 9 : NULL;
        kvs_device_kind k;
        if (!d) continue;
        if (kvs_device_parse(d, &k)) { fprintf(stderr, "kvsieve bench: %s\n", kvs_last_error()); return 2; }
        if (k == KVS_DEVICE_CUDA || (k == KVS_DEVICE_AUTO && kvs_device_count() > 0))
            return cmd_bench_cuda(argc, argv);
    }
    const char *model_path = NULL, *json_path = NULL, *cmd = "bench";
    int32_t batches[16] = {1, 8, 32};
    int n_batches = 3;
    long long prompt_len = 128, gen_len = 32;
    size_t kv_bytes = 0;
    enum { O_MODEL = 256, O_BATCHES, O_PL, O_GL, O_KV, O_JSON, O_DEVICE, O_KVD, O_W };
    const char *kv_dtype = NULL, *weights = NULL;
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"batches", required_argument, 0, O_BATCHES},
        {"prompt-len", required_argument, 0, O_PL}, {"gen-len", required_argument, 0, O_GL},
        {"kv-memory", required_argument, 0, O_KV}, {"json", required_argument, 0, O_JSON},
        {"device", required_argument, 0, O_DEVICE}, {"kv-dtype", required_argument, 0, O_KVD},
        {"weights", required_argument, 0, O_W}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model_path = optarg; break;
        case O_BATCHES:
            if ((n_batches = cli_int_list(cmd, "--batches", optarg, 1, 1024, batches, 16)) < 0) return 2;
            break;
        case O_PL: if (cli_int(cmd, "--prompt-len", optarg, 1, 1 << 16, &prompt_len)) return 2; break;
        case O_GL: if (cli_int(cmd, "--gen-len", optarg, 1, 1 << 16, &gen_len)) return 2; break;
        case O_KV: if (cli_size(cmd, "--kv-memory", optarg, &kv_bytes)) return 2; break;
        case O_JSON: json_path = optarg; break;
        case O_DEVICE: break; /* cpu here; checked above */
        case O_W: weights = optarg; break;
        case O_KVD:
            if (cli_kv_dtype(cmd, optarg)) return 2;
            kv_dtype = optarg;
            break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_option("bench", opts, argv[optind - 1]);
        }
    }
    if (optind < argc) { fprintf(stderr, "kvsieve bench: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (!model_path) model_path = cli_default_model();
    kvs_engine *e = NULL;
    engine_opts eo = {.model_path = model_path, .kv_bytes = kv_bytes, .kv_dtype = kv_dtype,
                      .weights = weights};
    if (engine_create(&eo, &e)) { fprintf(stderr, "kvsieve bench: %s\n", kvs_last_error()); return 1; }
    const model_config *cfg = &e->m->cfg;
    if (prompt_len + gen_len > cfg->n_ctx) {
        fprintf(stderr, "kvsieve bench: prompt-len + gen-len = %lld exceeds the context %d\n",
                prompt_len + gen_len, cfg->n_ctx);
        engine_destroy(e);
        return 2;
    }
    fprintf(stderr, "measuring sgemm peak (2048^3, ~3 s)...\n");
    double peak = sgemm_peak(2048, 3.0);
    printf("model %s | %d layers, d_model %d, heads %d/%d, vocab %d | BLAS threads %d, core %s\n",
           cfg->name, cfg->n_layers, cfg->d_model, cfg->n_heads, cfg->n_kv_heads, cfg->n_vocab,
           openblas_get_num_threads(), openblas_get_corename());
    printf("weights %s (%.1f MB of matrices) | dot kernels %s | BLAS from batch %d\n",
           model_weights_name(e->m->weights), (double)model_weight_bytes(e->m) / 1e6,
           wq_isa_name(wq_isa_current()), wmat_blas_batch());
    printf("sgemm peak: %.1f GFLOP/s\n", peak);
    printf("%-6s %-8s %12s %10s %8s %8s\n", "batch", "phase", "tokens/s", "GFLOP/s", "MFU", "gemm%");
    FILE *jf = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !jf) fprintf(stderr, "kvsieve bench: cannot write %s\n", json_path);
    if (jf) fprintf(jf, "{\"model\": \"%s\", \"sgemm_gflops\": %.2f, \"prompt_len\": %lld, "
                        "\"gen_len\": %lld, \"results\": [", cfg->name, peak, prompt_len, gen_len);
    uint64_t rng = 12345;
    int rc = 0;
    for (int bi = 0; bi < n_batches && !rc; bi++) {
        int B = batches[bi];
        engine_seq **seqs = calloc((size_t)B, sizeof *seqs);
        int *row_of = calloc((size_t)B, sizeof *row_of);
        int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
        if (!seqs || !row_of || !prompt) { rc = 1; free(seqs); free(row_of); free(prompt); break; }
        for (int s = 0; s < B && !rc; s++) {
            for (int i = 0; i < prompt_len; i++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                prompt[i] = (int32_t)((rng >> 33) % (uint64_t)cfg->n_vocab);
            }
            if (engine_seq_create(e, &seqs[s]) || engine_seq_push(e, seqs[s], prompt, (int32_t)prompt_len)) rc = 1;
        }
        float *logits;
        double t0 = kvs_now(), tg = 0;
        if (!rc && engine_step(e, seqs, B, (int32_t)prompt_len, &logits, row_of)) rc = 1;
        double t_pre = kvs_now() - t0;
        tg = engine_last_timing(e)->gemm + engine_last_timing(e)->logits;
        double f_pre = B * model_flops(cfg, 0, prompt_len, 1);
        if (!rc) {
            printf("%-6d %-8s %12.1f %10.1f %7.1f%% %7.0f%%\n", B, "prefill", B * prompt_len / t_pre,
                   f_pre / t_pre / 1e9, 100 * f_pre / t_pre / 1e9 / peak, 100 * tg / t_pre);
            if (jf) fprintf(jf, "%s{\"batch\": %d, \"phase\": \"prefill\", \"tokens_per_s\": %.2f, "
                                "\"gflops\": %.2f, \"mfu\": %.4f}", bi ? ", " : "", B,
                            B * prompt_len / t_pre, f_pre / t_pre / 1e9, f_pre / t_pre / 1e9 / peak);
        }
        double t_dec = 0, f_dec = 0, t_gemm = 0;
        for (int step = 0; step < gen_len && !rc; step++) {
            for (int s = 0; s < B; s++) {
                int32_t next = smp_argmax(logits + (size_t)row_of[s] * cfg->n_vocab, cfg->n_vocab);
                if (engine_seq_push(e, seqs[s], &next, 1)) rc = 1;
            }
            if (rc) break;
            f_dec += B * model_flops(cfg, seqs[0]->n_computed, 1, 1);
            t0 = kvs_now();
            if (engine_step(e, seqs, B, 1, &logits, row_of)) rc = 1;
            t_dec += kvs_now() - t0;
            t_gemm += engine_last_timing(e)->gemm + engine_last_timing(e)->logits;
        }
        if (rc) fprintf(stderr, "kvsieve bench: batch %d: %s\n", B, kvs_last_error());
        else {
            printf("%-6d %-8s %12.1f %10.1f %7.1f%% %7.0f%%\n", B, "decode", B * gen_len / t_dec,
                   f_dec / t_dec / 1e9, 100 * f_dec / t_dec / 1e9 / peak, 100 * t_gemm / t_dec);
            if (jf) fprintf(jf, ", {\"batch\": %d, \"phase\": \"decode\", \"tokens_per_s\": %.2f, "
                                "\"gflops\": %.2f, \"mfu\": %.4f}", B, B * gen_len / t_dec,
                            f_dec / t_dec / 1e9, f_dec / t_dec / 1e9 / peak);
        }
        fflush(stdout);
        for (int s = 0; s < B; s++) engine_seq_destroy(e, seqs[s]);
        free(seqs); free(row_of); free(prompt);
    }
    if (jf) { fprintf(jf, "]}\n"); fclose(jf); }
    engine_destroy(e);
    return rc;
}
