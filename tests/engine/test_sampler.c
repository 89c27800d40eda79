/* test_sampler.c — greedy, temperature, top-k, top-p and seeding of the sampler. */
#include <math.h>
#include <string.h>

#include "sampler.h"
#include "test_util.h"

static void test_greedy(void)
{
    float lg[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
    sampler s;
    smp_params p = smp_default();
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 5), 0);
    CU_ASSERT_EQUAL(smp_sample(&s, lg), 1); /* ties: lowest index */
    smp_deinit(&s);
    p.temperature = 1.0f;
    p.top_k = 1;
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 5), 0);
    for (int i = 0; i < 20; i++) CU_ASSERT_EQUAL(smp_sample(&s, lg), 1);
    smp_deinit(&s);
}

static void test_bad_params(void)
{
    sampler s;
    smp_params p = smp_default();
    p.temperature = -1.0f;
    CU_ASSERT(smp_init(&s, &p, 5) < 0);
    p = smp_default();
    p.top_p = 0.0f;
    CU_ASSERT(smp_init(&s, &p, 5) < 0);
    p = smp_default();
    p.top_p = 1.5f;
    CU_ASSERT(smp_init(&s, &p, 5) < 0);
    p = smp_default();
    p.top_k = -2;
    CU_ASSERT(smp_init(&s, &p, 5) < 0);
    p = smp_default();
    p.temperature = NAN;
    CU_ASSERT(smp_init(&s, &p, 5) < 0);
}

/* Frequencies at temperature 1 follow softmax(logits) within a loose bound. */
static void test_distribution_and_seed(void)
{
    float lg[4] = {0.0f, logf(2.0f), logf(3.0f), logf(4.0f)}; /* p = .1 .2 .3 .4 */
    sampler s;
    smp_params p = {1.0f, 0, 1.0f, 42};
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 4), 0);
    int cnt[4] = {0}, first[64];
    const int N = 40000;
    for (int i = 0; i < N; i++) {
        int32_t t = smp_sample(&s, lg);
        CU_ASSERT_FATAL(t >= 0 && t < 4);
        cnt[t]++;
        if (i < 64) first[i] = t;
    }
    for (int k = 0; k < 4; k++) CU_ASSERT(fabs(cnt[k] / (double)N - 0.1 * (k + 1)) < 0.01);
    smp_deinit(&s);
    /* Same seed: same stream. */
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 4), 0);
    for (int i = 0; i < 64; i++) CU_ASSERT_EQUAL(smp_sample(&s, lg), first[i]);
    smp_deinit(&s);
}

static void test_top_k_top_p(void)
{
    float lg[4] = {0.0f, logf(2.0f), logf(3.0f), logf(4.0f)};
    sampler s;
    smp_params p = {1.0f, 2, 1.0f, 7};
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 4), 0);
    int cnt[4] = {0};
    for (int i = 0; i < 20000; i++) cnt[smp_sample(&s, lg)]++;
    CU_ASSERT_EQUAL(cnt[0] + cnt[1], 0); /* only the two best survive top-k 2 */
    CU_ASSERT(fabs(cnt[3] / 20000.0 - 4.0 / 7.0) < 0.015);
    smp_deinit(&s);
    /* top-p 0.5: {0.4, 0.3} is the smallest set reaching 0.5. */
    p = (smp_params){1.0f, 0, 0.5f, 7};
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 4), 0);
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < 20000; i++) cnt[smp_sample(&s, lg)]++;
    CU_ASSERT_EQUAL(cnt[0] + cnt[1], 0);
    CU_ASSERT(cnt[2] > 0 && cnt[3] > 0);
    smp_deinit(&s);
    /* top-p tiny: only the best. */
    p = (smp_params){1.0f, 0, 0.01f, 7};
    CU_ASSERT_EQUAL_FATAL(smp_init(&s, &p, 4), 0);
    for (int i = 0; i < 100; i++) CU_ASSERT_EQUAL(smp_sample(&s, lg), 3);
    smp_deinit(&s);
}

int main(void)
{
    static const kvs_test tests[] = {
        {"greedy and top-k 1", test_greedy},
        {"bad parameters rejected", test_bad_params},
        {"temperature-1 frequencies and seeding", test_distribution_and_seed},
        {"top-k and top-p truncation", test_top_k_top_p},
    };
    return kvs_test_main("sampler", tests, sizeof tests / sizeof tests[0]);
}
