/* full.c — `full`: no eviction, every token is kept. The quality ceiling every other policy
 * is compared against (METHODS.md). */
#include "memory/policy.h"

const pol_vtable pol_full_vtable = {
    .version = POL_API_VERSION,
    .name = "full",
    .description = "no eviction: every token is kept (the quality ceiling)",
    .flags = POL_NO_EVICTION,
};
