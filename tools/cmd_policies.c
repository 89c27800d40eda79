/* cmd_policies.c — `kvsieve policies`: list the registered eviction policies and options. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "memory/policy.h"

int cmd_policies(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: kvsieve policies [--policy-plugin SO ...]\n\n"
               "List the KV eviction policies (built-in and loaded plugins) and their options.\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "kvsieve policies: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    const pol_vtable *vts[64];
    int n = pol_list(vts, 64);
    if (n > 64) n = 64;
    printf("KV eviction policies (score: keep high, evict low; per head, inside pages):\n\n");
    for (int i = 0; i < n; i++) {
        printf("  %-10s %s\n", vts[i]->name, vts[i]->description ? vts[i]->description : "");
        if (vts[i]->default_args && vts[i]->default_args[0])
            printf("  %-10s defaults: %s\n", "", vts[i]->default_args);
        if (vts[i]->args_help && vts[i]->args_help[0])
            printf("  %-10s options: %s\n", "", vts[i]->args_help);
    }
    printf("\nCommon options (flags of generate/eval/serve, or key=value in a policy string):\n"
           "%s", cli_policy_help);
    return 0;
}
