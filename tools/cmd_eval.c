/* cmd_eval.c — `kvsieve eval MODE`: the quality harness (METHODS.md, "How we judge quality").
 * Parses the flags and hands over to eval_ppl.c, eval_retrieval.c, eval_cost.c or
 * eval_recall.c. */
#include <getopt.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/common.h"
#include "eval/eval.h"

static const char DEFAULT_PPL_POLICIES[] = "full,streaming,knorm,qfilters,random,h2o,tova";
static const char DEFAULT_RETRIEVAL_POLICIES[] = "full,streaming,knorm,qfilters,random,snapkv,tova";
static const char DEFAULT_COST_POLICIES[] = "full,streaming,knorm,qfilters,random,snapkv,h2o,tova";

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve eval ppl|passkey|needle|cost|recall [options]\n\n"
        "Measure quality under KV-cache compression against the full cache (docs/QUALITY.md).\n\n"
        "  ppl      generation perplexity of a text streamed token by token with a fixed budget\n"
        "           per head (when=decode), every policy in one batch, teacher forcing\n"
        "  passkey  a 5-digit pass key in repetitive filler; the context is compressed at\n"
        "           prefill end (ratio = fraction removed), then the question, greedy answer\n"
        "  needle   a 7-digit magic number in natural text (--haystack), same protocol\n"
        "  cost     scoring cost per key, eviction + compaction time per step, peak KV pages\n"
        "  recall   diagnostic: share of each query's attention (full cache, second half of\n"
        "           --text) on the keys streaming / knorm / qfilters would hold at budget B,\n"
        "           window W, next to the best B keys (oracle) and to Q-Filters calibrated on\n"
        "           the text's own first half, post- and pre-RoPE; where attention goes; the\n"
        "           attention output error of each kept set (first budget and window)\n\n"
        "common options:\n"
        "  --model PATH          GGUF model (default: $KVSIEVE_MODEL, else " KVS_DEFAULT_MODEL_REL ")\n"
        "  --policies LIST       policies to compare (full is always included as the reference;\n"
        "                        not for recall, which compares its fixed set)\n"
        "                        defaults: ppl %s\n"
        "                                  passkey/needle %s\n"
        "                                  cost %s\n"
        "  --policy-args ARGS    extra options \"K=V,...\" for every policy, or \"NAME:K=V,...\"\n"
        "                        for one (repeatable); qfilters defaults to filters=<model>.kvsqf\n"
        "  --out-dir DIR         write MODE.csv and MODE.json there\n"
        "  --kv-memory SIZE      KV page pool (default: sized for the run)\n"
        "  --kv-dtype LIST       KV cache element formats, comma-separated; the mode runs once\n"
        "                        per format (results in OUT/kv-DTYPE/). Each one of:\n"
        "                        " CLI_KV_DTYPE_HELP "\n"
        "  --device DEV          cpu (default), cuda or auto\n"
        "ppl:\n"
        "  --text FILE           the text (required; never the calibration text)\n"
        "  --tokens N            use the first N tokens (default all, at most the context)\n"
        "  --budgets LIST        tokens kept per head (default 128,256,512)\n"
        "  --windows LIST        recent tokens always kept (default 32,64)\n"
        "  --chunk N             tokens fed per step (default 1: evict after every token)\n"
        "passkey / needle:\n"
        "  --contexts LIST       context lengths in tokens (default 1024,2048,4096,8192; capped\n"
        "                        at the model's context minus the question and answer)\n"
        "  --depths LIST         needle depths in percent (default 0,50,100)\n"
        "  --ratios LIST         fractions removed (default 0.5,0.75,0.875,0.9375,0.96875)\n"
        "  --haystack FILE       natural text for needle (required for needle)\n"
        "  --chunk N             prefill chunk (default 512)\n"
        "  --max-new N           answer tokens (default 12)\n"
        "  --seed N              keys and needle words (default 1)\n"
        "  --no-chat             plain text instead of the model's chat template\n"
        "cost:\n"
        "  --text FILE           prompt text (default: random tokens)\n"
        "  --prompt-len N        prompt tokens (default 1024)\n"
        "  --gen-len N           decode steps (default 64)\n"
        "  --budget B --window W generation budget (default 256, 32)\n"
        "recall:\n"
        "  --text FILE           the text (required)\n"
        "  --tokens N            use the first N tokens (default 2048; memory grows as N^2)\n"
        "  --budgets LIST, --windows LIST   as for ppl (default 128,256,512 and 32,64)\n"
        "  --chunk N             prefill chunk (default 256)\n"
        "  --policy-args qfilters:filters=FILE   filters (default <model>.kvsqf)\n"
        "  -h, --help            this help\n",
        DEFAULT_PPL_POLICIES, DEFAULT_RETRIEVAL_POLICIES, DEFAULT_COST_POLICIES);
}

static int float_list(const char *cmd, const char *flag, const char *s, double lo, double hi,
                      double *out, int cap)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char item[64];
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item) {
            fprintf(stderr, "kvsieve %s: %s: bad list '%s' (expected e.g. 0.5,0.875)\n", cmd,
                    flag, s);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = 0;
        if (n == cap) {
            fprintf(stderr, "kvsieve %s: %s: more than %d values\n", cmd, flag, cap);
            return -1;
        }
        if (cli_float(cmd, flag, item, lo, hi, &out[n])) return -1;
        n++;
        p += len;
        if (*p == ',' && !*++p) {
            fprintf(stderr, "kvsieve %s: %s: trailing comma in '%s'\n", cmd, flag, s);
            return -1;
        }
    }
    if (!n) fprintf(stderr, "kvsieve %s: %s: empty list\n", cmd, flag);
    return n ? n : -1;
}

enum { M_PPL = 1, M_PASSKEY = 2, M_NEEDLE = 4, M_COST = 8, M_RECALL = 16,
       M_RET = M_PASSKEY | M_NEEDLE };

int cmd_eval(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *mode_name = argv[1];
    int mode = !strcmp(mode_name, "ppl") ? M_PPL : !strcmp(mode_name, "passkey") ? M_PASSKEY
             : !strcmp(mode_name, "needle") ? M_NEEDLE : !strcmp(mode_name, "cost") ? M_COST
             : !strcmp(mode_name, "recall") ? M_RECALL : 0;
    if (!mode) {
        fprintf(stderr, "kvsieve eval: unknown mode '%s' (ppl, passkey, needle, cost or recall)\n",
                mode_name);
        return 2;
    }
    static char cmdbuf[32];
    snprintf(cmdbuf, sizeof cmdbuf, "eval %s", mode_name);
    const char *cmd = cmdbuf;
    eval_common c = {.cmd = cmd};
    eval_ppl_opts po = {.budgets = {128, 256, 512}, .n_budgets = 3, .windows = {32, 64},
                        .n_windows = 2, .chunk = 1};
    eval_retrieval_opts ro = {.task = mode == M_NEEDLE ? EVAL_NEEDLE : EVAL_PASSKEY,
                              .contexts = {1024, 2048, 4096, 8192}, .n_contexts = 4,
                              .depths = {0, 0.5, 1}, .n_depths = 3,
                              .ratios = {0.5, 0.75, 0.875, 0.9375, 0.96875}, .n_ratios = 5,
                              .chunk = 512, .max_new = 12, .seed = 1, .chat = 1};
    eval_cost_opts co = {.prompt_len = 1024, .gen_len = 64, .budget = 256, .window = 32};
    const char *policies = NULL, *text = NULL, *kv_dtypes = NULL;
    char *extra[32];
    int n_extra = 0, chunk_set = 0;
    long long v;
    enum { O_MODEL = 256, O_POL, O_PARGS, O_OUT, O_KV, O_TEXT, O_TOKENS, O_BUDGETS, O_WINDOWS,
           O_CHUNK, O_CONTEXTS, O_DEPTHS, O_RATIOS, O_HAY, O_MAXNEW, O_SEED, O_NOCHAT, O_PL,
           O_GL, O_BUDGET, O_WINDOW, O_KVD, O_DEVICE };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"policies", required_argument, 0, O_POL},
        {"policy-args", required_argument, 0, O_PARGS}, {"out-dir", required_argument, 0, O_OUT},
        {"kv-memory", required_argument, 0, O_KV}, {"text", required_argument, 0, O_TEXT},
        {"kv-dtype", required_argument, 0, O_KVD}, {"device", required_argument, 0, O_DEVICE},
        {"tokens", required_argument, 0, O_TOKENS}, {"budgets", required_argument, 0, O_BUDGETS},
        {"windows", required_argument, 0, O_WINDOWS}, {"chunk", required_argument, 0, O_CHUNK},
        {"contexts", required_argument, 0, O_CONTEXTS}, {"depths", required_argument, 0, O_DEPTHS},
        {"ratios", required_argument, 0, O_RATIOS}, {"haystack", required_argument, 0, O_HAY},
        {"max-new", required_argument, 0, O_MAXNEW}, {"seed", required_argument, 0, O_SEED},
        {"no-chat", no_argument, 0, O_NOCHAT}, {"prompt-len", required_argument, 0, O_PL},
        {"gen-len", required_argument, 0, O_GL}, {"budget", required_argument, 0, O_BUDGET},
        {"window", required_argument, 0, O_WINDOW}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    /* Which modes take each option (0 = all). */
    static const struct { int opt, modes; } only[] = {
        {O_TOKENS, M_PPL | M_RECALL}, {O_BUDGETS, M_PPL | M_RECALL},
        {O_WINDOWS, M_PPL | M_RECALL}, {O_CHUNK, M_PPL | M_RET | M_RECALL},
        {O_POL, M_PPL | M_RET | M_COST},
        {O_CONTEXTS, M_RET}, {O_DEPTHS, M_RET}, {O_RATIOS, M_RET}, {O_HAY, M_NEEDLE},
        {O_MAXNEW, M_RET}, {O_SEED, M_RET}, {O_NOCHAT, M_RET}, {O_TEXT, M_PPL | M_COST | M_RECALL},
        {O_PL, M_COST}, {O_GL, M_COST}, {O_BUDGET, M_COST}, {O_WINDOW, M_COST}};
    int ch, li;
    opterr = 0;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "h", opts, &li)) != -1) {
        for (size_t i = 0; i < sizeof only / sizeof *only; i++)
            if (only[i].opt == ch && !(only[i].modes & mode)) {
                fprintf(stderr, "kvsieve %s: %s is not an option of this mode (see kvsieve eval "
                        "--help)\n", cmd, argv[optind - 1]);
                return 2;
            }
        int n;
        double d[32];
        switch (ch) {
        case O_MODEL: c.model_path = optarg; break;
        case O_POL: policies = optarg; break;
        case O_PARGS:
            if (n_extra == 32) { fprintf(stderr, "kvsieve %s: too many --policy-args\n", cmd); return 2; }
            extra[n_extra++] = optarg;
            break;
        case O_OUT: c.out_dir = optarg; break;
        case O_KV: if (cli_size(cmd, "--kv-memory", optarg, &c.kv_bytes)) return 2; break;
        case O_KVD: kv_dtypes = optarg; break;
        case O_DEVICE:
            if (kvs_device_parse(optarg, &c.device)) {
                fprintf(stderr, "kvsieve %s: %s\n", cmd, kvs_last_error());
                return 2;
            }
            break;
        case O_TEXT: text = optarg; break;
        case O_TOKENS:
            if (cli_int(cmd, "--tokens", optarg, 4, 1 << 24, &v)) return 2;
            po.max_tokens = (int32_t)v;
            break;
        case O_BUDGETS:
            if ((po.n_budgets = cli_int_list(cmd, "--budgets", optarg, 1, 1 << 20, po.budgets, 16)) < 0) return 2;
            break;
        case O_WINDOWS:
            if ((po.n_windows = cli_int_list(cmd, "--windows", optarg, 0, 1 << 20, po.windows, 16)) < 0) return 2;
            break;
        case O_CHUNK:
            if (cli_int(cmd, "--chunk", optarg, 1, 1 << 16, &v)) return 2;
            po.chunk = ro.chunk = (int32_t)v;
            chunk_set = 1;
            break;
        case O_CONTEXTS:
            if ((ro.n_contexts = cli_int_list(cmd, "--contexts", optarg, 64, 1 << 20, ro.contexts, 16)) < 0) return 2;
            break;
        case O_DEPTHS:
            if ((n = float_list(cmd, "--depths", optarg, 0, 100, d, 32)) < 0) return 2;
            for (int i = 0; i < n; i++) ro.depths[i] = d[i] / 100.0;
            ro.n_depths = n;
            break;
        case O_RATIOS:
            if ((n = float_list(cmd, "--ratios", optarg, 0, 0.999999, ro.ratios, 16)) < 0) return 2;
            ro.n_ratios = n;
            break;
        case O_HAY: ro.haystack_path = optarg; break;
        case O_MAXNEW:
            if (cli_int(cmd, "--max-new", optarg, 1, 256, &v)) return 2;
            ro.max_new = (int32_t)v;
            break;
        case O_SEED:
            if (cli_int(cmd, "--seed", optarg, 0, INT64_MAX, &v)) return 2;
            ro.seed = (uint64_t)v;
            break;
        case O_NOCHAT: ro.chat = 0; break;
        case O_PL:
            if (cli_int(cmd, "--prompt-len", optarg, 1, 1 << 20, &v)) return 2;
            co.prompt_len = (int32_t)v;
            break;
        case O_GL:
            if (cli_int(cmd, "--gen-len", optarg, 1, 1 << 20, &v)) return 2;
            co.gen_len = (int32_t)v;
            break;
        case O_BUDGET:
            if (cli_int(cmd, "--budget", optarg, 1, 1 << 20, &v)) return 2;
            co.budget = (int32_t)v;
            break;
        case O_WINDOW:
            if (cli_int(cmd, "--window", optarg, 0, 1 << 20, &v)) return 2;
            co.window = (int32_t)v;
            break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_option(cmd, opts, argv[optind - 1]);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvsieve %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    if (!c.model_path) c.model_path = cli_default_model();
    /* Required inputs first: their errors must not hide behind policy set-up errors. */
    if ((mode == M_PPL || mode == M_RECALL) && !text) {
        fprintf(stderr, "kvsieve %s: --text FILE is required\n", cmd);
        return 2;
    }
    if (mode == M_NEEDLE && !ro.haystack_path) {
        fprintf(stderr, "kvsieve %s: --haystack FILE (natural text) is required\n", cmd);
        return 2;
    }
    /* one dtype (recall takes only one): every mode reads it from c */
    if (kv_dtypes && !strchr(kv_dtypes, ',')) {
        if (cli_kv_dtype(cmd, kv_dtypes)) return 2;
        c.kv_dtype = kv_dtypes;
    }
    if (mode == M_RECALL) {
        eval_recall_opts ro2 = {.text_path = text, .max_tokens = po.max_tokens ? po.max_tokens : 2048,
                                .n_budgets = po.n_budgets, .n_windows = po.n_windows,
                                .chunk = chunk_set ? po.chunk : 256};
        memcpy(ro2.budgets, po.budgets, sizeof ro2.budgets);
        memcpy(ro2.windows, po.windows, sizeof ro2.windows);
        c.n_pol = eval_parse_policies(cmd, "qfilters", extra, n_extra, c.model_path, c.pol,
                                      EVAL_MAX_POLICIES);
        if (c.n_pol < 0) return 2;
        static char fpath[4096];
        for (int i = 0; i < c.n_pol; i++) {
            const char *f = strstr(c.pol[i].args, "filters=");
            if (strcmp(c.pol[i].name, "qfilters") || !f) continue;
            f += strlen("filters=");
            size_t n = strcspn(f, ",");
            if (n < sizeof fpath) {
                memcpy(fpath, f, n);
                fpath[n] = 0;
                ro2.filters_path = fpath;
            }
        }
        return eval_recall(&c, &ro2);
    }
    if (!policies)
        policies = mode == M_PPL ? DEFAULT_PPL_POLICIES
                 : mode == M_COST ? DEFAULT_COST_POLICIES : DEFAULT_RETRIEVAL_POLICIES;
    c.n_pol = eval_parse_policies(cmd, policies, extra, n_extra, c.model_path, c.pol,
                                  EVAL_MAX_POLICIES);
    if (c.n_pol < 0) return 2;
    /* --kv-dtype A,B,...: the mode once per KV dtype (an engine each: a pool holds one
     * format), results of each in OUT/kv-A/ ... beside the console tables */
    char specs[16][32];
    int n_specs = 0;
    if (kv_dtypes) {
        for (const char *p = kv_dtypes; *p;) {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (n == 0 || n >= sizeof specs[0] || n_specs == 16) {
                fprintf(stderr, "kvsieve %s: --kv-dtype: give up to 16 comma-separated dtypes "
                        "(e.g. f32,int8,int8/int4)\n", cmd);
                return 2;
            }
            memcpy(specs[n_specs], p, n);
            specs[n_specs][n] = '\0';
            if (cli_kv_dtype(cmd, specs[n_specs])) return 2;
            n_specs++;
            p = e ? e + 1 : p + n;
        }
    }
    if (n_specs > 1 && mode == M_RECALL) {
        fprintf(stderr, "kvsieve %s: one --kv-dtype at a time\n", cmd);
        return 2;
    }
    const char *out_dir = c.out_dir;
    int rc = 0;
    for (int k = 0; k < (n_specs ? n_specs : 1) && !rc; k++) {
        char dir[4096];
        c.kv_dtype = n_specs ? specs[k] : NULL;
        if (n_specs > 1) {
            printf("%s# KV dtype %s\n", k ? "\n" : "", specs[k]);
            fflush(stdout);
            if (out_dir) {
                if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
                    fprintf(stderr, "kvsieve %s: cannot create %s: %s\n", cmd, out_dir,
                            strerror(errno));
                    return 1;
                }
                snprintf(dir, sizeof dir, "%s/kv-%s", out_dir, specs[k]);
                for (char *q = dir + strlen(out_dir) + 1; *q; q++) if (*q == '/') *q = '-';
                c.out_dir = dir;
            }
        }
        switch (mode) {
        case M_PPL:
            po.text_path = text;
            rc = eval_ppl(&c, &po);
            break;
        case M_PASSKEY:
        case M_NEEDLE:
            rc = eval_retrieval(&c, &ro);
            break;
        default:
            co.text_path = text;
            rc = eval_cost(&c, &co);
            break;
        }
    }
    return rc;
}
