/* sampler.h — next-token choice from logits: greedy, temperature, top-k, top-p, seeded. */
#ifndef KVS_SAMPLER_H
#define KVS_SAMPLER_H

#include <stdint.h>

typedef struct smp_params {
    float temperature; /* 0 = greedy (argmax); else logits / temperature, in (0, 100] */
    int top_k;         /* 0 = off; else keep the k most likely tokens */
    float top_p;       /* 1 = off; else keep the smallest set with probability >= top_p */
    uint64_t seed;     /* random stream; the same seed gives the same tokens */
} smp_params;

typedef struct smp_candidate { int32_t id; float p; } smp_candidate;

typedef struct sampler {
    smp_params p;
    uint64_t rng;
    smp_candidate *cand; /* scratch [n_vocab] */
    int n_vocab;
} sampler;

/* Default params: greedy, top_k 0, top_p 1, seed 0. */
smp_params smp_default(void);
/* Validate params (message names the bad one) and allocate scratch for n_vocab. */
int smp_init(sampler *s, const smp_params *p, int n_vocab);
void smp_deinit(sampler *s);
/* Pick a token from logits[n_vocab]. */
int32_t smp_sample(sampler *s, const float *logits);
/* Index of the largest logit (ties: lowest index). */
int32_t smp_argmax(const float *logits, int n);

#endif
