/* cmd_generate.c — `kvsieve generate`: tokenize a prompt, prefill, decode, stream the text. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/common.h"
#include "device.h"
#include "engine.h"
#include "sampler.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve generate --prompt TEXT [options]\n\n"
        "Generate text on the CPU, streaming it to stdout; speed goes to stderr at the end.\n\n"
        "  --model PATH        GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --prompt TEXT       the prompt (required)\n"
        "  --chat              wrap the prompt in the model's ChatML template as a user turn\n"
        "  --system TEXT       system message for --chat (default: the model's own)\n"
        "  -n, --max-tokens N  tokens to generate (default 64; stops early at end of turn/text)\n"
        "  --temperature T     0 = greedy (default 0)\n"
        "  --top-k K           keep the K most likely tokens (default 0 = off)\n"
        "  --top-p P           nucleus sampling threshold in (0, 1] (default 1 = off)\n"
        "  --seed S            random seed (default 0)\n"
        "  --kv-memory SIZE    KV page pool size, e.g. 256M, 2G (default 1G)\n"
        "  --chunk N           prefill chunk size in tokens (default 512)\n"
        "  --device DEV        cpu | cuda | auto (default cpu)\n"
        "  --weights W         native (GGUF blocks, default on the CPU) or f32 (dequantised)\n"
        "  --kv-dtype T        KV cache element format: " CLI_KV_DTYPE_HELP "\n"
        "  --echo              print the prompt before the generated text\n"
        "%s"
        "  -h, --help          this help\n", cli_policy_help);
}

int cmd_generate(int argc, char **argv)
{
    const char *model_path = NULL, *prompt = NULL, *system_msg = NULL;
    int chat = 0, echo = 0;
    long long n_gen = 64, top_k = 0, seed = 0, chunk = 512;
    double temperature = 0.0, top_p = 1.0;
    size_t kv_bytes = 0;
    const char *kv_dtype = NULL, *weights = NULL;
    kvs_device_kind device = KVS_DEVICE_CPU;
    enum { O_MODEL = 256, O_PROMPT, O_CHAT, O_SYSTEM, O_TEMP, O_TOPK, O_TOPP, O_SEED, O_KV,
           O_CHUNK, O_ECHO, O_DEVICE, O_KVD, O_W };
    cli_policy pol = {0};
    static const struct option opts[] = {
        {"policy", required_argument, 0, 0}, {"ratio", required_argument, 0, 0},
        {"budget", required_argument, 0, 0}, {"window", required_argument, 0, 0},
        {"sink", required_argument, 0, 0}, {"when", required_argument, 0, 0},
        {"policy-args", required_argument, 0, 0},
        {"model", required_argument, 0, O_MODEL}, {"prompt", required_argument, 0, O_PROMPT},
        {"chat", no_argument, 0, O_CHAT}, {"system", required_argument, 0, O_SYSTEM},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK}, {"top-p", required_argument, 0, O_TOPP},
        {"seed", required_argument, 0, O_SEED}, {"kv-memory", required_argument, 0, O_KV},
        {"chunk", required_argument, 0, O_CHUNK}, {"echo", no_argument, 0, O_ECHO},
        {"device", required_argument, 0, O_DEVICE},
        {"kv-dtype", required_argument, 0, O_KVD}, {"weights", required_argument, 0, O_W},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *cmd = "generate";
    int c, li;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "n:h", opts, &li)) != -1) {
        switch (c) {
        case 0:
            if (cli_policy_flag(cmd, &pol, opts[li].name, optarg) < 0) return 2;
            break;
        case O_MODEL: model_path = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_CHAT: chat = 1; break;
        case O_SYSTEM: system_msg = optarg; break;
        case 'n': if (cli_int(cmd, "-n", optarg, 0, 1 << 20, &n_gen)) return 2; break;
        case O_TEMP: if (cli_float(cmd, "--temperature", optarg, 0, 100, &temperature)) return 2; break;
        case O_TOPK: if (cli_int(cmd, "--top-k", optarg, 0, 1 << 24, &top_k)) return 2; break;
        case O_TOPP: if (cli_float(cmd, "--top-p", optarg, 1e-6, 1, &top_p)) return 2; break;
        case O_SEED: if (cli_int(cmd, "--seed", optarg, 0, INT64_MAX, &seed)) return 2; break;
        case O_KV: if (cli_size(cmd, "--kv-memory", optarg, &kv_bytes)) return 2; break;
        case O_CHUNK: if (cli_int(cmd, "--chunk", optarg, 1, 1 << 16, &chunk)) return 2; break;
        case O_ECHO: echo = 1; break;
        case O_W: weights = optarg; break;
        case O_KVD:
            if (cli_kv_dtype(cmd, optarg)) return 2;
            kv_dtype = optarg;
            break;
        case O_DEVICE:
            if (kvs_device_parse(optarg, &device)) {
                fprintf(stderr, "kvsieve generate: %s\n", kvs_last_error());
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_option(cmd, opts, argv[optind - 1]);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvsieve generate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!prompt) {
        fprintf(stderr, "kvsieve generate: --prompt is required\n");
        usage(stderr);
        return 2;
    }
    if (system_msg && !chat) {
        fprintf(stderr, "kvsieve generate: --system only makes sense with --chat\n");
        return 2;
    }
    if (!model_path) model_path = cli_default_model();
    cli_policy_finish(&pol, model_path);

    kvs_engine *e = NULL;
    engine_seq *seq = NULL;
    sampler smp = {0};
    int32_t *ids = NULL;
    char *text = NULL, *piece = NULL;
    int rc = 1;
    engine_opts eo = {.model_path = model_path, .kv_bytes = kv_bytes, .device = device,
                      .kv_dtype = kv_dtype, .weights = weights};
    if (engine_create(&eo, &e)) {
        fprintf(stderr, "kvsieve generate: %s\n", kvs_last_error());
        if (!strstr(kvs_last_error(), "format") && access(model_path, R_OK) != 0)
            fprintf(stderr, "hint: run scripts/fetch-model, or pass --model PATH\n");
        goto done;
    }
    const model_config *cfg = &e->m->cfg;
    smp_params sp = {(float)temperature, (int)top_k, (float)top_p, (uint64_t)seed};
    if (smp_init(&smp, &sp, cfg->n_vocab)) {
        fprintf(stderr, "kvsieve generate: %s\n", kvs_last_error());
        goto done;
    }
    /* Prompt text -> ids. */
    const char *src = prompt;
    if (chat) {
        int need = tok_chat_prompt(e->tok, system_msg, prompt, NULL, 0);
        if (need < 0 || !(text = malloc((size_t)need + 1)) ||
            tok_chat_prompt(e->tok, system_msg, prompt, text, (size_t)need + 1) != need) {
            fprintf(stderr, "kvsieve generate: chat template: %s\n", kvs_last_error());
            goto done;
        }
        src = text;
    }
    int n_ids = tok_encode(e->tok, src, strlen(src), chat, NULL, 0);
    if (n_ids < 0) { fprintf(stderr, "kvsieve generate: %s\n", kvs_last_error()); goto done; }
    int add_bos = tok_add_bos(e->tok);
    ids = malloc(((size_t)n_ids + 1) * sizeof *ids);
    if (!ids) { fprintf(stderr, "kvsieve generate: out of memory\n"); goto done; }
    if (add_bos) ids[0] = tok_bos(e->tok);
    tok_encode(e->tok, src, strlen(src), chat, ids + add_bos, n_ids);
    n_ids += add_bos;
    if (n_ids == 0) { fprintf(stderr, "kvsieve generate: the prompt is empty\n"); goto done; }
    if (n_ids > cfg->n_ctx) {
        fprintf(stderr, "kvsieve generate: prompt has %d tokens; the model's context is %d\n",
                n_ids, cfg->n_ctx);
        goto done;
    }
    if (engine_seq_create(e, &seq) || engine_seq_push(e, seq, ids, n_ids)) {
        fprintf(stderr, "kvsieve generate: %s\n", kvs_last_error());
        goto done;
    }
    engine_seq_mark_prompt(seq);
    if (engine_seq_set_policy(e, seq, pol.name, pol.args)) {
        fprintf(stderr, "kvsieve generate: --policy %s: %s\n", pol.name, kvs_last_error());
        goto done;
    }
    if (echo) { fputs(src, stdout); fflush(stdout); }

    /* Prefill in chunks, then decode one token per step. */
    double t0 = kvs_now(), t_prefill = 0;
    float *logits;
    int row;
    tok_stream ts;
    tok_stream_init(&ts);
    size_t piece_cap = tok_stream_cap(e->tok) + 8;
    piece = malloc(piece_cap);
    if (!piece) { fprintf(stderr, "kvsieve generate: out of memory\n"); goto done; }
    int generated = 0, stopped_ctx = 0;
    const char *finish = "length";
    while (seq->n_computed < seq->n_tokens) {
        if (engine_step(e, &seq, 1, (int32_t)chunk, &logits, &row)) {
            fprintf(stderr, "\nkvsieve generate: %s\n", kvs_last_error());
            goto done;
        }
    }
    t_prefill = kvs_now() - t0;
    double t1 = kvs_now();
    for (;;) {
        if (generated >= n_gen) break;
        int32_t next = smp_sample(&smp, logits + (size_t)row * cfg->n_vocab);
        generated++;
        if (tok_is_eog(e->tok, next)) { finish = "stop"; break; }
        int nb = tok_stream_push(e->tok, &ts, next, piece, piece_cap);
        if (nb > 0) { fwrite(piece, 1, (size_t)nb, stdout); fflush(stdout); }
        if (generated >= n_gen) break;
        if (seq->n_tokens >= cfg->n_ctx) { stopped_ctx = 1; break; }
        if (engine_seq_push(e, seq, &next, 1) ||
            engine_step(e, &seq, 1, 1, &logits, &row)) {
            fprintf(stderr, "\nkvsieve generate: %s\n", kvs_last_error());
            goto done;
        }
    }
    int nb = tok_stream_flush(&ts, piece, piece_cap);
    if (nb > 0) fwrite(piece, 1, (size_t)nb, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    double t_dec = kvs_now() - t1;
    if (stopped_ctx)
        fprintf(stderr, "kvsieve generate: stopped at the model's context of %d tokens\n",
                cfg->n_ctx);
    fprintf(stderr, "[prompt %d tokens, %.1f tok/s | generated %d tokens, %.1f tok/s | finish: %s]\n",
            n_ids, t_prefill > 0 ? n_ids / t_prefill : 0.0, generated,
            t_dec > 0 && generated > 1 ? (generated - 1) / t_dec : 0.0, finish);
    {
        const int64_t heads = (int64_t)cfg->n_layers * cfg->n_kv_heads;
        const int64_t pages = engine_seq_pages(seq);
        fprintf(stderr, "[KV policy %s%s%s: evicted %lld of %lld entries (%.1f%%), %lld compaction "
                "moves, %lld pages held]\n", pol.name, pol.args[0] ? " " : "", pol.args,
                (long long)seq->evicted, (long long)seq->n_computed * heads,
                seq->n_computed ? 100.0 * seq->evicted / ((double)seq->n_computed * heads) : 0.0,
                (long long)seq->compaction_moves, (long long)pages);
        fprintf(stderr, "[KV dtype %s: %zu bytes per token (all layers and KV heads), %.1f MiB "
                "held]\n", engine_kv_dtype(e), engine_kv_bytes_per_token(e),
                pages * (double)mem_pool_page_bytes(e->pool->page_slots, e->be->kv_slot_bytes) /
                    1048576.0);
    }
    rc = 0;
done:
    engine_seq_destroy(e, seq);
    smp_deinit(&smp);
    free(ids);
    free(text);
    free(piece);
    engine_destroy(e);
    return rc;
}
