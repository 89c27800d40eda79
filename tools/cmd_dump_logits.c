/* cmd_dump_logits.c — `kvsieve dump-logits`: raw float32 logits of every position of one or
 * more token lists, for comparisons with an independent reference (tests/reference/). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/common.h"
#include "forward.h"
#include "memory/pool.h"
#include "model.h"

#define MAX_LISTS 64
#define MAX_TOKENS 8192

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve dump-logits --tokens 1,2,3 [--tokens ...] --out FILE [options]\n\n"
        "Run the CPU forward on token ids and write float32 little-endian logits\n"
        "[n_tokens][n_vocab] for every position, list after list, to FILE.\n\n"
        "  --model PATH   GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --tokens IDS   comma-separated token ids (repeatable: one sequence each)\n"
        "  --batch        run all sequences together in one ragged batch (default: one by one)\n"
        "  --chunk N      feed each sequence in chunks of N tokens (tests chunked prefill)\n"
        "  --page-slots P KV page size in slots (default 16)\n"
        "  --out FILE     output file\n");
}

int cmd_dump_logits(int argc, char **argv)
{
    const char *model_path = NULL, *out_path = NULL;
    int32_t *lists[MAX_LISTS] = {0};
    int lens[MAX_LISTS], n_lists = 0, batch = 0, rc = 1;
    long long chunk = 1 << 30, page_slots = 16;
    enum { O_MODEL = 256, O_TOKENS, O_BATCH, O_CHUNK, O_OUT, O_PS };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"tokens", required_argument, 0, O_TOKENS},
        {"batch", no_argument, 0, O_BATCH}, {"chunk", required_argument, 0, O_CHUNK},
        {"out", required_argument, 0, O_OUT}, {"page-slots", required_argument, 0, O_PS},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *cmd = "dump-logits";
    model *m = NULL;
    mem_pool *pool = NULL;
    fwd_state *fwd = NULL;
    mem_seq *kv[MAX_LISTS] = {0};
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
        case 'h': usage(stdout); rc = 0; goto done;
        default:
            fprintf(stderr, "kvsieve %s: unknown or incomplete option '%s'\n", cmd, argv[optind - 1]);
            usage(stderr);
            goto done;
        }
    }
    if (!n_lists || !out_path) { usage(stderr); goto done; }
    if (!model_path) model_path = cli_default_model();
    if (model_load(model_path, &m)) { fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error()); goto done; }
    int total = 0;
    for (int i = 0; i < n_lists; i++) total += lens[i];
    int64_t pages = (int64_t)m->cfg.n_layers * m->cfg.n_kv_heads * (total / page_slots + 2 * n_lists);
    if (mem_pool_create((int)page_slots, m->cfg.head_dim, (int32_t)pages, &pool) ||
        fwd_create(m, &fwd)) {
        fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error());
        goto done;
    }
    for (int i = 0; i < n_lists; i++)
        if (mem_seq_create(m->cfg.n_layers, m->cfg.n_kv_heads, i * m->cfg.n_layers * m->cfg.n_kv_heads, &kv[i])) goto done;
    if (!(out = fopen(out_path, "wb"))) { fprintf(stderr, "kvsieve %s: cannot write %s\n", cmd, out_path); goto done; }
    const size_t V = (size_t)m->cfg.n_vocab;
    /* Sequences run either all in one batch per chunk round, or one after the other. */
    int done_tok[MAX_LISTS] = {0};
    float *all = malloc((size_t)total * V * sizeof(float));
    if (!all) goto done;
    size_t off[MAX_LISTS];
    for (int i = 0, o = 0; i < n_lists; o += lens[i], i++) off[i] = (size_t)o * V;
    for (int first = 0; first < n_lists;) {
        int last = batch ? n_lists : first + 1;
        for (;;) {
            fwd_seq fs[MAX_LISTS];
            int idx[MAX_LISTS], n = 0;
            for (int i = first; i < last; i++) {
                int todo = lens[i] - done_tok[i];
                if (todo <= 0) continue;
                if (todo > chunk) todo = (int)chunk;
                if (mem_seq_reserve(pool, kv[i], todo)) { fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error()); free(all); goto done; }
                fs[n] = (fwd_seq){.kv = kv[i], .tokens = lists[i] + done_tok[i], .n_tokens = todo,
                                  .pos0 = done_tok[i], .logits = FWD_LOGITS_ALL};
                idx[n++] = i;
            }
            if (!n) break;
            float *lg;
            int rows;
            if (fwd_cpu(fwd, m, pool, fs, n, &lg, &rows)) {
                fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error());
                free(all);
                goto done;
            }
            for (int k = 0; k < n; k++) {
                int i = idx[k];
                memcpy(all + off[i] + (size_t)done_tok[i] * V, lg, (size_t)fs[k].n_tokens * V * sizeof(float));
                lg += (size_t)fs[k].n_tokens * V;
                done_tok[i] += fs[k].n_tokens;
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
    for (int i = 0; i < MAX_LISTS; i++) { if (kv[i]) mem_seq_destroy(pool, kv[i]); free(lists[i]); }
    fwd_destroy(fwd);
    mem_pool_destroy(pool);
    model_free(m);
    return rc;
}
