/* kvsieve.c — the kvsieve command: dispatch to subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"generate", cmd_generate, "generate text from a prompt (streams tokens, reports tokens/s)"},
    {"bench", cmd_bench, "CPU throughput: prefill/decode tokens/s at several batch sizes vs sgemm peak"},
    {"policies", cmd_policies, "list the KV eviction policies and their options"},
    {"serve", cmd_serve, "serve the model over gRPC and the OpenAI HTTP API (multi-tenant, metrics)"},
    {"load", cmd_load, "load-test a running server: latency percentiles, throughput, goodput"},
    {"hash-key", cmd_hash_key, "print the hash of an API key for the tenants file (or --generate one)"},
    {"calibrate", cmd_calibrate, "make a model's Q-Filters from a text (with per-head diagnostics)"},
    {"eval", cmd_eval, "quality under KV compression: ppl, passkey, needle, cost, recall (CSV/JSON)"},
    {"dump-logits", cmd_dump_logits, "write raw logits for token ids (for reference comparisons)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: kvsieve <command> [options]\n\n"
               "kvsieve: an LLM serving engine whose paged KV cache is compressed per head.\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'kvsieve <command> --help' shows a command's options.\n"
               "The model defaults to $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL
               " (fetch it with scripts/fetch-model).\n");
}

int main(int argc, char **argv)
{
    cli_blas_core_fix(argv);
    argc = cli_load_plugins(argc, argv);
    if (argc < 0) return 2;
    if (argc < 2) { /* bare `kvsieve`: the command list, and exit 2 (nothing was run) */
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        puts("kvsieve 0.1.0");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    /* One line and a suggestion, not the whole help. */
    const char *best = NULL;
    size_t n1 = strlen(argv[1]);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0] && !best; i++)
        if ((n1 >= 2 && !strncmp(commands[i].name, argv[1], n1)) ||
            (n1 >= 3 && strstr(commands[i].name, argv[1])) ||
            (n1 >= 3 && !strncmp(commands[i].name, argv[1], 3)))
            best = commands[i].name;
    if (best) fprintf(stderr, "kvsieve: unknown command '%s'; did you mean '%s'?\n", argv[1], best);
    else fprintf(stderr, "kvsieve: unknown command '%s'\n", argv[1]);
    fprintf(stderr, "'kvsieve --help' lists the commands\n");
    return 2;
}
