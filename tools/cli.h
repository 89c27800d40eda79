/* cli.h — helpers shared by the kvsieve subcommands: defaults, strict number parsing. */
#ifndef KVS_CLI_H
#define KVS_CLI_H

#include <stddef.h>
#include <stdint.h>

#define KVS_DEFAULT_MODEL_REL "models/smollm2-135m-instruct-q4_1.gguf"

/* $KVSIEVE_MODEL, else ./models/…gguf, else <dir of the binary>/../models/…gguf (so
 * build/kvsieve finds the model fetched into the source tree). Returns a static buffer. */
const char *cli_default_model(void);

/* Strict parsers: the whole string must be a number within [min, max]; otherwise print
 * "kvsieve CMD: --flag: ..." to stderr and return -1. */
int cli_int(const char *cmd, const char *flag, const char *s, long long min, long long max,
            long long *out);
int cli_float(const char *cmd, const char *flag, const char *s, double min, double max,
              double *out);
/* Sizes like 512M, 2GiB, 1.5G, 1048576 (bytes). */
int cli_size(const char *cmd, const char *flag, const char *s, size_t *out);
/* Comma-separated integers ("1,8,32"): up to cap values, each in [min, max]. Returns count or -1. */
int cli_int_list(const char *cmd, const char *flag, const char *s, long long min, long long max,
                 int32_t *out, int cap);

/* KV policy flags shared by generate / eval / serve: --policy NAME, --ratio R, --budget B,
 * --window W, --sink S, --when WHEN, --policy-args K=V,... */
typedef struct cli_policy {
    const char *name;       /* NULL = "full" */
    char args[512];         /* composed option string */
} cli_policy;
/* Handle one policy flag (getopt's long-option name and its argument). Returns 1 if it was a
 * policy flag, 0 if not, -1 on a bad value (message printed). */
int cli_policy_flag(const char *cmd, cli_policy *p, const char *flag, const char *arg);
/* Finish: for qfilters without filters=, add the default filters file of the model
 * (<model path without .gguf>.kvsqf) if it exists. */
void cli_policy_finish(cli_policy *p, const char *model_path);
/* Help text of the policy flags. */
extern const char cli_policy_help[];

/* 1 if a policy with these options evicts something or is meant to keep all: full (and ""
 * = the server's default), or options with ratio= or budget=. A policy with neither would
 * evict nothing, silently. */
int cli_policy_sized(const char *name, const char *args);

struct option;
/* An unknown option or one missing its value (getopt_long returned '?'): one error line, a
 * "did you mean" when a known option is close, and where --help is. Returns 2 (the exit
 * status). */
int cli_bad_option(const char *cmd, const struct option *opts, const char *arg);

/* Load every `--policy-plugin PATH` (accepted by every subcommand) and remove them from argv.
 * Returns the new argc, or -1 after printing the error. */
int cli_load_plugins(int argc, char **argv);

/* OpenBLAS kernel choice (blas_core.c): when the library fell back to its generic "Prescott"
 * kernels on a CPU with AVX2 or AVX-512 and OPENBLAS_CORETYPE is unset, set it and execute
 * the program again (argv as given to main). Likewise OMP_WAIT_POLICY=PASSIVE when neither it
 * nor GOMP_SPINCOUNT is set (spinning OpenMP threads collapse decode on shared cores). Returns
 * only when nothing had to change or the restart failed. cli_blas_core_for_cpu: the OpenBLAS core name for this CPU's features. */
void cli_blas_core_fix(char **argv);
const char *cli_blas_core_for_cpu(void);

/* Subcommands. */
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_dump_logits(int argc, char **argv);
int cmd_serve(int argc, char **argv);    /* cmd_serve.c (links kvsieve_server) */
int cmd_hash_key(int argc, char **argv); /* cmd_hash_key.c */
int cmd_policies(int argc, char **argv);
int cmd_load(int argc, char **argv);     /* cmd_load.c + load_*.c (gRPC client) */
int cmd_calibrate(int argc, char **argv); /* cmd_calibrate.c */
int cmd_eval(int argc, char **argv);      /* cmd_eval.c, eval_*.c */

/* --kv-dtype SPEC: check a KV dtype spec (NAME or KEYS/VALUES); prints the error and returns
 * nonzero for a bad one. */
int cli_kv_dtype(const char *cmd, const char *spec);
#define CLI_KV_DTYPE_HELP "f32 (default), f16, bf16, int8, int4, int2, or KEYS/VALUES (int8/int4)"

#endif
