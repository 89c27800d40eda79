/* cmd_hash_key.c — `kvsieve hash-key`: the hash of an API key, as the tenants file wants it. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "core/common.h"
#include "server/auth.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvsieve hash-key [KEY]\n"
        "       kvsieve hash-key --generate\n\n"
        "Print the hash of an API key for the tenants file (key_hash: sha256:...).\n"
        "Without KEY, the key is read from the first line of standard input (safer: a key on\n"
        "the command line is visible to other users in ps and stays in the shell history).\n\n"
        "  -g, --generate   make a new random key (256 bits); prints the key, then its hash\n"
        "  -h, --help       this help\n");
}

int cmd_hash_key(int argc, char **argv)
{
    int generate = 0, c;
    static const struct option opts[] = {{"generate", no_argument, 0, 'g'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    opterr = 0;
    while ((c = getopt_long(argc, argv, "gh", opts, NULL)) != -1) {
        switch (c) {
        case 'g': generate = 1; break;
        case 'h': usage(stdout); return 0;
        default:
            fprintf(stderr, "kvsieve hash-key: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (argc - optind > 1 || (generate && argc - optind > 0)) {
        fprintf(stderr, "kvsieve hash-key: expected at most one KEY (and none with --generate)\n");
        return 2;
    }
    char key[4096];
    if (generate) {
        if (srv_key_generate(key, sizeof key)) {
            fprintf(stderr, "kvsieve hash-key: %s\n", kvs_last_error());
            return 1;
        }
    } else if (optind < argc) {
        snprintf(key, sizeof key, "%s", argv[optind]);
    } else {
        if (!fgets(key, sizeof key, stdin)) {
            fprintf(stderr, "kvsieve hash-key: no key on standard input\n");
            return 2;
        }
        key[strcspn(key, "\r\n")] = 0;
    }
    unsigned char h[SRV_KEY_HASH_LEN];
    if (srv_key_hash(key, strlen(key), h)) {
        fprintf(stderr, "kvsieve hash-key: the key is empty\n");
        return 2;
    }
    char hs[SRV_KEY_HASH_STR];
    srv_key_hash_format(h, hs);
    if (generate) printf("key: %s\n", key);
    printf("%s%s\n", generate ? "key_hash: " : "", hs);
    memset(key, 0, sizeof key);
    return 0;
}
