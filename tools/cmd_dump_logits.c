/* cmd_dump_logits.c — `kvsieve dump-logits`: raw float32 logits of every position of one or
 * more token lists, for comparisons with an independent reference (tests/reference/). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/common.h"
#include "engine.h"

#define MAX_LISTS 64
#define MAX_TOKENS 8192

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve dump-logits --tokens 1,2,3 [--tokens ...] --out FILE [options]\n\n"
        "Run the engine's forward on token ids and write float32 little-endian logits\n"
        "[n_tokens][n_vocab] for every position, list after list, to FILE.\n\n"
        "  --model PATH   GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --tokens IDS   comma-separated token ids (repeatable: one sequence each)\n"
        "  --batch        run all sequences together in one ragged batch (default: one by one)\n"
        "  --chunk N      feed each sequence in chunks of N tokens (tests chunked prefill)\n"
        "  --page-slots P KV page size in slots (default 16)\n"
        "  --weights W    native (GGUF blocks, default on the CPU) or f32 (dequantised at load)\n"
        "  --kv-dtype T   KV cache element format: " CLI_KV_DTYPE_HELP " (CUDA: f16 default, or bf16)\n"
        "  --device D     cpu (default), cuda or auto\n"
        "  --out FILE     output file\n");
}

int cmd_dump_logits(int argc, char **argv)
{
    const char *model_path = NULL, *out_path = NULL;
    int32_t *lists[MAX_LISTS] = {0};
    int lens[MAX_LISTS], n_lists = 0, batch = 0, rc = 1;
    long long chunk = 1 << 30, page_slots = 16;
    const char *kv_dtype = NULL, *device = "cpu", *weights = NULL;
    enum { O_MODEL = 256, O_TOKENS, O_BATCH, O_CHUNK, O_OUT, O_PS, O_KVD, O_DEV, O_W };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"tokens", required_argument, 0, O_TOKENS},
        {"batch", no_argument, 0, O_BATCH}, {"chunk", required_argument, 0, O_CHUNK},
        {"out", required_argument, 0, O_OUT}, {"page-slots", required_argument, 0, O_PS},
        {"kv-dtype", required_argument, 0, O_KVD}, {"device", required_argument, 0, O_DEV},
        {"weights", required_argument, 0, O_W}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *cmd = "dump-logits";
    kvs_engine *e = NULL;
    engine_seq *kv[MAX_LISTS] = {0};
    FILE *out = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model_path = optarg; break;
        case O_TOKENS:
            if (n_lists == MAX_LISTS) { fprintf(stderr, "kvsieve %s: too many --tokens\n", cmd); goto done; }
            lists[n_lists] = malloc(MAX_TOKENS * sizeof(int32_t));
            if (!lists[n_lists]) goto done;
            lens[n_lists] = cli_int_list(cmd, "--tokens", optarg, 0, INT32_MAX, lists[n_lists],
                                         MAX_TOKENS);
            if (lens[n_lists++] < 0) goto done;
            break;
        case O_BATCH: batch = 1; break;
        case O_CHUNK: if (cli_int(cmd, "--chunk", optarg, 1, 1 << 30, &chunk)) goto done; break;
        case O_PS: if (cli_int(cmd, "--page-slots", optarg, 1, 1024, &page_slots)) goto done; break;
        case O_OUT: out_path = optarg; break;
        case O_KVD: kv_dtype = optarg; break;
        case O_DEV: device = optarg; break;
        case O_W: weights = optarg; break;
        case 'h': usage(stdout); rc = 0; goto done;
        default:
            cli_bad_option(cmd, opts, argv[optind - 1]);
            goto done;
        }
    }
    if (!n_lists || !out_path) { usage(stderr); goto done; }
    if (!model_path) model_path = cli_default_model();
    int total = 0;
    for (int i = 0; i < n_lists; i++) total += lens[i];
    engine_opts eo = {.model_path = model_path, .page_slots = (int)page_slots,
                      .kv_dtype = kv_dtype, .kv_bytes = (size_t)64 << 20,
                      .weights = weights};
    if (kvs_device_parse(device, &eo.device)) { fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error()); goto done; }
    /* enough KV for every token of every list in every stream, plus a partial page each */
    for (int pass = 0; pass < 2; pass++) {
        if (engine_create(&eo, &e)) { fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error()); goto done; }
        const model_config *mc = &e->m->cfg;
        int64_t pages = (int64_t)mc->n_layers * mc->n_kv_heads * (total / page_slots + 2 * n_lists);
        if (pass == 1 || e->pool->n_pages >= pages) break;
        eo.kv_bytes = (size_t)((double)eo.kv_bytes * ((double)pages / e->pool->n_pages) * 1.05) + 1;
        engine_destroy(e);
        e = NULL;
    }
    const size_t V = (size_t)e->m->cfg.n_vocab;
    for (int i = 0; i < n_lists; i++) {
        if (engine_seq_create(e, &kv[i]) || engine_seq_push(e, kv[i], lists[i], lens[i])) {
            fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error());
            goto done;
        }
        kv[i]->logits_all = 1;
    }
    if (!(out = fopen(out_path, "wb"))) { fprintf(stderr, "kvsieve %s: cannot write %s\n", cmd, out_path); goto done; }
    /* Sequences run either all in one batch per chunk round, or one after the other. */
    float *all = malloc((size_t)total * V * sizeof(float));
    if (!all) goto done;
    size_t off[MAX_LISTS];
    for (int i = 0, o = 0; i < n_lists; o += lens[i], i++) off[i] = (size_t)o * V;
    for (int first = 0; first < n_lists;) {
        int last = batch ? n_lists : first + 1;
        for (;;) {
            engine_seq *step[MAX_LISTS];
            int32_t lim[MAX_LISTS], before[MAX_LISTS];
            int idx[MAX_LISTS], row_of[MAX_LISTS], n = 0;
            for (int i = first; i < last; i++) {
                if (kv[i]->n_computed >= lens[i]) continue;
                step[n] = kv[i];
                lim[n] = (int32_t)chunk;
                before[n] = kv[i]->n_computed;
                idx[n++] = i;
            }
            if (!n) break;
            float *lg;
            if (engine_step_limits(e, step, n, lim, &lg, row_of)) {
                fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error());
                free(all);
                goto done;
            }
            for (int k = 0; k < n; k++) {
                int i = idx[k];
                int32_t done_k = kv[i]->n_computed - before[k];
                memcpy(all + off[i] + (size_t)before[k] * V, lg + (size_t)row_of[k] * V,
                       (size_t)done_k * V * sizeof(float));
            }
        }
        first = last;
    }
    if (fwrite(all, sizeof(float), (size_t)total * V, out) != (size_t)total * V) {
        fprintf(stderr, "kvsieve %s: write to %s failed\n", cmd, out_path);
        free(all);
        goto done;
    }
    free(all);
    rc = 0;
done:
    if (out && fclose(out) && !rc) { fprintf(stderr, "kvsieve %s: write to %s failed\n", cmd, out_path); rc = 1; }
    for (int i = 0; i < MAX_LISTS; i++) { if (kv[i]) engine_seq_destroy(e, kv[i]); free(lists[i]); }
    engine_destroy(e);
    return rc;
}
