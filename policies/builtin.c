/* builtin.c — the built-in eviction policies, registered by memory/policy.c at first use
 * (in this order, which is also `kvsieve policies`' order). */
#include "memory/policy.h"

#include <stddef.h>

extern const pol_vtable pol_full_vtable, pol_random_vtable, pol_streaming_vtable,
    pol_knorm_vtable, pol_qfilters_vtable, pol_snapkv_vtable, pol_h2o_vtable, pol_tova_vtable;

extern const pol_vtable *const pol_builtin_vtables[];
const pol_vtable *const pol_builtin_vtables[] = {
    &pol_full_vtable,   &pol_random_vtable, &pol_streaming_vtable, &pol_knorm_vtable,
    &pol_qfilters_vtable, &pol_snapkv_vtable, &pol_h2o_vtable,     &pol_tova_vtable,
    NULL,
};
