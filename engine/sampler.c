/* sampler.c — greedy / temperature / top-k / top-p sampling with a seeded splitmix64 stream. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

#include "core/common.h"

smp_params smp_default(void) { return (smp_params){0.0f, 0, 1.0f, 0}; }

int smp_init(sampler *s, const smp_params *p, int n_vocab)
{
    s->cand = NULL;
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        return kvs_error(KVS_ERANGE, "temperature %g is out of range [0, 100]", p->temperature);
    if (p->top_k < 0) return kvs_error(KVS_ERANGE, "top-k %d must be >= 0 (0 = off)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return kvs_error(KVS_ERANGE, "top-p %g is out of range (0, 1]", p->top_p);
    if (n_vocab < 1) return kvs_error(KVS_EINVAL, "empty vocabulary");
    s->p = *p;
    s->rng = p->seed ^ 0x9E3779B97F4A7C15ull;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->cand) return kvs_error(KVS_ENOMEM, "out of memory");
    return 0;
}

void smp_deinit(sampler *s)
{
    free(s->cand);
    s->cand = NULL;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rand_unit(uint64_t *x) { return (double)(splitmix64(x) >> 11) * 0x1.0p-53; }

int32_t smp_argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int cmp_desc(const void *a, const void *b)
{
    float pa = ((const smp_candidate *)a)->p, pb = ((const smp_candidate *)b)->p;
    if (pa > pb) return -1;
    if (pa < pb) return 1;
    return ((const smp_candidate *)a)->id - ((const smp_candidate *)b)->id;
}

int32_t smp_sample(sampler *s, const float *logits)
{
    const int V = s->n_vocab;
    if (s->p.temperature == 0.0f || s->p.top_k == 1) return smp_argmax(logits, V);
    const float inv_t = 1.0f / s->p.temperature;
    float mx = logits[smp_argmax(logits, V)];
    /* Softmax at temperature; drop tokens whose probability is below 1e-10 of the best
     * (their total mass is < V * 1e-10, far below anything top-p can tell apart), so the sort
     * only sees plausible candidates. */
    int n = 0;
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        float p = expf((logits[i] - mx) * inv_t);
        if (p < 1e-10f) continue;
        s->cand[n].id = i;
        s->cand[n].p = p;
        sum += p;
        n++;
    }
    qsort(s->cand, (size_t)n, sizeof *s->cand, cmp_desc);
    if (s->p.top_k > 0 && s->p.top_k < n) {
        n = s->p.top_k;
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += s->cand[i].p;
    }
    if (s->p.top_p < 1.0f) {
        double cum = 0.0, want = s->p.top_p * sum;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += s->cand[i].p;
            if (cum >= want) { keep = i + 1; break; }
        }
        n = keep;
        sum = cum < want ? sum : cum;
    }
    double r = rand_unit(&s->rng) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += s->cand[i].p;
        if (r < acc) return s->cand[i].id;
    }
    return s->cand[n - 1].id;
}
