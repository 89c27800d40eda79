/* arch.c — the table of supported model families (see arch.h). */
#include "arch.h"

#include <string.h>

static const arch_desc arch_table[] = {
    /* Llama 1/2/3, SmolLM, TinyLlama, Mistral-style GGUFs: no biases, adjacent-pair RoPE,
     * output.weight optional (tied embeddings), llama3 files carry rope_freqs.weight. */
    {.name = "llama", .norm = ARCH_NORM_RMS, .rope = ARCH_ROPE_NORM, .act = ARCH_ACT_SWIGLU,
     .qkv_bias = ARCH_ABSENT, .output = ARCH_OPTIONAL, .rope_freqs = ARCH_OPTIONAL},
    /* Qwen2 / Qwen2.5: Q/K/V biases, NEOX RoPE, output.weight (absent in the tied 0.5B). */
    {.name = "qwen2", .norm = ARCH_NORM_RMS, .rope = ARCH_ROPE_NEOX, .act = ARCH_ACT_SWIGLU,
     .qkv_bias = ARCH_REQUIRED, .output = ARCH_OPTIONAL, .rope_freqs = ARCH_ABSENT},
};

const arch_desc *arch_find(const char *name, size_t len)
{
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof arch_table / sizeof arch_table[0]; i++)
        if (strlen(arch_table[i].name) == len && memcmp(arch_table[i].name, name, len) == 0)
            return &arch_table[i];
    return NULL;
}

const char *arch_supported(void) { return "llama, qwen2"; }

const char *arch_rope_name(arch_rope r)
{
    return r == ARCH_ROPE_NEOX ? "neox (i, i+d/2)" : "normal (2i, 2i+1)";
}
