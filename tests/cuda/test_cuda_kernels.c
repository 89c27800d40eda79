/* test_cuda_kernels.c — the forward kernels of the CUDA backend against their CPU twins
 * (engine/kernels_ref.h), and the twins against the existing CPU code: policies' key scores
 * (qfilters, knorm, streaming), the sampler, and dense attention computed here. Inputs cover
 * GQA groups 1/3/4/8, head dims 64/128, empty streams, one token, holes everywhere, lengths
 * at page boundaries, causal masking inside a chunk and long streams split across blocks.
 * Without a GPU the device halves print "skipped: no GPU" and pass. */
#include "cuda_test_util.h"

#include <unistd.h>

#include "memory/policy.h"
#include "policies/qfilters.h"
#include "sampler.h"

/* ---- 16-bit rounding ---------------------------------------------------------------------- */

static void test_round_half(void)
{
    const kv_format *f16 = &kv_fmt_f16, *bf16 = &kv_fmt_bf16;
    for (int b = 0; b < 2; b++) {
        const kv_format *f = b ? bf16 : f16;
        CU_ASSERT_EQUAL(kref_round_half(1.0f, f), 1.0f);
        CU_ASSERT_EQUAL(kref_round_half(-2.5f, f), -2.5f);
        CU_ASSERT_EQUAL(kref_round_half(0.0f, f), 0.0f);
    }
    /* binary16: 11 significant bits; ties to even */
    CU_ASSERT_EQUAL(kref_round_half(1.0f + 0x1p-11f, f16), 1.0f);              /* tie -> even */
    CU_ASSERT_EQUAL(kref_round_half(1.0f + 3 * 0x1p-11f, f16), 1.0f + 0x1p-9f); /* tie -> even */
    CU_ASSERT_EQUAL(kref_round_half(1.0f + 0x1p-10f, f16), 1.0f + 0x1p-10f);
    CU_ASSERT_EQUAL(kref_round_half(65504.0f, f16), 65504.0f);
    CU_ASSERT(isinf(kref_round_half(65520.0f, f16)));
    CU_ASSERT_EQUAL(kref_round_half(65519.0f, f16), 65504.0f);
    CU_ASSERT_EQUAL(kref_round_half(0x1p-24f, f16), 0x1p-24f); /* smallest subnormal */
    CU_ASSERT_EQUAL(kref_round_half(0x1p-25f, f16), 0.0f);     /* tie -> even (0) */
    CU_ASSERT_EQUAL(kref_round_half(0x1.8p-24f, f16), 0x1p-23f);
    CU_ASSERT_EQUAL(kref_round_half(0.1f, f16), 0.0999755859375f);
    CU_ASSERT_EQUAL(kref_round_half(1.0f, NULL), 1.0f); /* NULL: fp16 */
    CU_ASSERT_EQUAL(kref_round_half(0.1f, NULL), 0.0999755859375f);
    /* bf16: 8 significant bits, fp32's range */
    CU_ASSERT_EQUAL(kref_round_half(1.0f + 0x1p-8f, bf16), 1.0f);             /* tie -> even */
    CU_ASSERT_EQUAL(kref_round_half(1.0f + 3 * 0x1p-8f, bf16), 1.0f + 0x1p-6f); /* tie -> even */
    CU_ASSERT_EQUAL(kref_round_half(0.1f, bf16), 0.10009765625f);
    CU_ASSERT_EQUAL(kref_round_half(65520.0f, bf16), 65536.0f);
    /* the twins agree with the CPU's own 16-bit KV formats */
    t_seed(5);
    int same = 1;
    for (int i = 0; i < 10000; i++) {
        float x = t_unit() * ldexpf(1.0f, (int)(t_rnd() % 40) - 20);
        same &= kref_round_half(x, f16) == kv_f16_to_f32(kv_f32_to_f16(x));
        same &= kref_round_half(x, bf16) == kv_bf16_to_f32(kv_f32_to_bf16(x));
    }
    CU_ASSERT(same);
#ifdef KVS_HAVE_CUDA
    GPU_OR_SKIP();
    /* the device conversion of each type rounds like the twin, bit for bit */
    enum { N = 4096 };
    float *h = malloc(N * sizeof *h), *back = malloc(N * sizeof *back), *want = malloc(N * sizeof *want);
    void *d = kvs_cuda_malloc(N * 2);
    CU_ASSERT_FATAL(d != NULL);
    for (int b = 0; b < 2; b++) {
        const kv_format *f = b ? bf16 : f16;
        t_seed(7);
        for (int i = 0; i < N; i++) {
            h[i] = t_unit() * ldexpf(1.0f, (int)(t_rnd() % 40) - 26);
            want[i] = kref_round_half(h[i], f);
        }
        const int dt = b ? MEM_CUDA_BF16 : MEM_CUDA_F16;
        CU_ASSERT(kvs_cuda_upload_half(d, h, N, dt) == 0);
        CU_ASSERT(kvs_cuda_download_half(back, d, N, dt) == 0);
        int exact = memcmp(back, want, N * sizeof *back) == 0;
        printf(" %s %s", f->name, exact ? "bit-exact" : "DIFFERS");
        CU_ASSERT(exact);
    }
    /* an unknown type is refused */
    CU_ASSERT_EQUAL(kvs_cuda_upload_half(d, h, N, 7), KVS_EINVAL);
    kvs_cuda_free(d);
    free(h); free(back); free(want);
#else
    GPU_OR_SKIP();
#endif
}

/* ---- embedding, RMSNorm, SwiGLU ------------------------------------------------------------- */

static void test_embed_rmsnorm_swiglu(void)
{
    enum { V = 300, D = 576, T = 37, F = 1536 };
    t_seed(11);
    float *table = malloc((size_t)V * D * sizeof *table), *x = malloc((size_t)T * D * sizeof *x);
    float *w = malloc(D * sizeof *w), *out = malloc((size_t)T * D * sizeof *out);
    float *gu = malloc((size_t)T * 2 * F * sizeof *gu), *act = malloc((size_t)T * F * sizeof *act);
    int32_t tok[T], rows[5] = {3, 0, 36, 3, 17};
    for (size_t i = 0; i < (size_t)V * D; i++) table[i] = t_half_unit() * 2.0f;
    for (int i = 0; i < D; i++) w[i] = 1.0f + 0.5f * t_unit();
    for (int t = 0; t < T; t++) tok[t] = (int32_t)(t_rnd() % V);
    for (size_t i = 0; i < (size_t)T * 2 * F; i++) gu[i] = 4.0f * t_unit();
    kref_embed(table, D, tok, T, x);
    for (int t = 0; t < T; t++)
        CU_ASSERT(memcmp(x + (size_t)t * D, table + (size_t)tok[t] * D, D * sizeof(float)) == 0);
    /* RMSNorm: the definition, in double, per row */
    kref_rmsnorm(x, NULL, T, D, w, 1e-5f, out);
    double worst = 0.0;
    for (int t = 0; t < T; t++) {
        double ss = 0.0;
        for (int i = 0; i < D; i++) ss += (double)x[(size_t)t * D + i] * x[(size_t)t * D + i];
        double inv = 1.0 / sqrt(ss / D + 1e-5);
        for (int i = 0; i < D; i++) {
            double e = x[(size_t)t * D + i] * inv * w[i];
            double d = fabs(e - out[(size_t)t * D + i]) / (fabs(e) + 1e-6);
            if (d > worst) worst = d;
        }
    }
    CU_ASSERT(worst < 1e-5);
    float rowsout[5 * D];
    kref_rmsnorm(x, rows, 5, D, w, 1e-5f, rowsout);
    for (int r = 0; r < 5; r++)
        CU_ASSERT(memcmp(rowsout + (size_t)r * D, out + (size_t)rows[r] * D, D * sizeof(float)) == 0);
    kref_swiglu(gu, T, F, act);
    worst = 0.0;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < F; i++) {
            double g = gu[(size_t)t * 2 * F + i], u = gu[(size_t)t * 2 * F + F + i];
            double e = g / (1.0 + exp(-g)) * u, d = fabs(e - act[(size_t)t * F + i]);
            if (d > worst) worst = d;
        }
    CU_ASSERT(worst < 1e-5);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        void *d_table = kvs_cuda_malloc((size_t)V * D * 2), *d_h = kvs_cuda_malloc((size_t)T * F * 2);
        float *d_x = kvs_cuda_malloc((size_t)T * D * 4), *d_w = kvs_cuda_malloc(D * 4);
        float *d_gu = kvs_cuda_malloc((size_t)T * 2 * F * 4);
        int32_t *d_tok = kvs_cuda_malloc(T * 4), *d_rows = kvs_cuda_malloc(5 * 4);
        float *back = malloc((size_t)T * F * sizeof *back);
        CU_ASSERT_FATAL(d_table && d_h && d_x && d_w && d_gu && d_tok && d_rows && back);
        const int dt = t_dtype();
        CU_ASSERT(kvs_cuda_upload_half(d_table, table, (size_t)V * D, dt) == 0);
        CU_ASSERT(kvs_cuda_upload(d_tok, tok, sizeof tok) == 0);
        CU_ASSERT(kvs_cuda_upload(d_rows, rows, sizeof rows) == 0);
        CU_ASSERT(kvs_cuda_upload(d_w, w, D * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_gu, gu, (size_t)T * 2 * F * 4) == 0);
        /* embed: table values are 16-bit representable, so exact */
        CU_ASSERT(kvs_k_embed(d_table, d_tok, T, D, d_x, dt, NULL) == 0);
        CU_ASSERT(kvs_cuda_download(back, d_x, (size_t)T * D * 4) == 0);
        CU_ASSERT(memcmp(back, x, (size_t)T * D * 4) == 0);
        /* rmsnorm (all rows, then a row list): 16-bit output */
        CU_ASSERT(kvs_k_rmsnorm(d_x, NULL, T, D, d_w, 1e-5f, d_h, dt, NULL) == 0);
        CU_ASSERT(kvs_cuda_download_half(back, d_h, (size_t)T * D, dt) == 0);
        worst = 0.0;
        for (size_t i = 0; i < (size_t)T * D; i++) {
            double d = fabs(back[i] - out[i]) / (fabs(out[i]) + 1e-3);
            if (d > worst) worst = d;
        }
        printf(" rmsnorm rel %.2e", worst);
        CU_ASSERT(worst < t_half_tol());
        CU_ASSERT(t_representable(back, (size_t)T * D)); /* stored in the type under test */
        CU_ASSERT(kvs_k_rmsnorm(d_x, d_rows, 5, D, d_w, 1e-5f, d_h, dt, NULL) == 0);
        CU_ASSERT(kvs_cuda_download_half(back, d_h, (size_t)5 * D, dt) == 0);
        CU_ASSERT(t_max_abs_diff(back, rowsout, 5 * D) < 8 * t_half_tol());
        /* swiglu */
        CU_ASSERT(kvs_k_swiglu(d_gu, T, F, d_h, dt, NULL) == 0);
        CU_ASSERT(kvs_cuda_download_half(back, d_h, (size_t)T * F, dt) == 0);
        worst = 0.0;
        for (size_t i = 0; i < (size_t)T * F; i++) {
            double d = fabs(back[i] - act[i]) / (fabs(act[i]) + 1e-3);
            if (d > worst) worst = d;
        }
        printf(" swiglu rel %.2e", worst);
        CU_ASSERT(worst < t_half_tol());
        CU_ASSERT(t_representable(back, (size_t)T * F));
        kvs_cuda_free(d_table); kvs_cuda_free(d_h); kvs_cuda_free(d_x); kvs_cuda_free(d_w);
        kvs_cuda_free(d_gu); kvs_cuda_free(d_tok); kvs_cuda_free(d_rows);
        free(back);
    } else {
        printf(" skipped: no GPU ");
    }
#else
    printf(" skipped: no GPU ");
#endif
    free(table); free(x); free(w); free(out); free(gu); free(act);
}

/* ---- RoPE + K/V write + fused key scores ----------------------------------------------------- */

static void test_rope_kv_write(void)
{
    enum { Hq = 6, Hkv = 2, hd = 64, T = 23, S = 5, NPOS = 400, P = 16, NPAGES = 8 };
    const int QKV = (Hq + 2 * Hkv) * hd;
    t_seed(23);
    float *qkv = malloc((size_t)T * QKV * sizeof *qkv), *qkv0 = malloc((size_t)T * QKV * sizeof *qkv);
    float *cs = malloc((size_t)NPOS * hd / 2 * sizeof *cs), *sn = malloc((size_t)NPOS * hd / 2 * sizeof *sn);
    float scores[T * Hkv], u[Hkv * hd];
    int32_t pos[T], tok_seq[T], slot_map[T * Hkv];
    /* sequence kinds: one of each */
    int32_t kinds[S] = {KVS_SCORE_ZERO, KVS_SCORE_DOT, KVS_SCORE_NEG_NORM, KVS_SCORE_POS,
                        KVS_SCORE_HOST};
    const float *seq_u[S] = {NULL, u, NULL, NULL, NULL};
    for (size_t i = 0; i < (size_t)T * QKV; i++) qkv0[i] = 3.0f * t_unit();
    for (int i = 0; i < Hkv * hd; i++) u[i] = t_unit();
    for (int t = 0; t < T; t++) { pos[t] = (int32_t)(t_rnd() % NPOS); tok_seq[t] = t * S / T; }
    /* distinct global slots */
    int32_t perm[NPAGES * P];
    for (int i = 0; i < NPAGES * P; i++) perm[i] = i;
    for (int i = NPAGES * P - 1; i > 0; i--) {
        int j = (int)(t_rnd() % (uint32_t)(i + 1));
        int32_t x = perm[i]; perm[i] = perm[j]; perm[j] = x;
    }
    for (int i = 0; i < T * Hkv; i++) slot_map[i] = perm[i];
    memcpy(qkv, qkv0, (size_t)T * QKV * sizeof *qkv);
    kvs_rope_table(NPOS, hd, 10000.0f, cs, sn);
    mem_pool *pool;
    CU_ASSERT_FATAL(tkv_pool_create(P, hd, NPAGES, &pool) == 0);
    kref_rope_kv_write(qkv, T, Hq, Hkv, hd, pos, cs, sn, pool, tkv_store(pool), slot_map, tok_seq, kinds, seq_u,
                       scores);
    /* RoPE: every head rotated pairwise by pos * base^(-2i/hd) (double reference) */
    double worst = 0.0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hq + Hkv; h++)
            for (int i = 0; i < hd / 2; i++) {
                double a = qkv0[(size_t)t * QKV + h * hd + 2 * i], b = qkv0[(size_t)t * QKV + h * hd + 2 * i + 1];
                double th = pos[t] * pow(10000.0, -2.0 * i / hd);
                double e0 = a * cos(th) - b * sin(th), e1 = a * sin(th) + b * cos(th);
                double d0 = fabs(e0 - qkv[(size_t)t * QKV + h * hd + 2 * i]);
                double d1 = fabs(e1 - qkv[(size_t)t * QKV + h * hd + 2 * i + 1]);
                if (d0 > worst) worst = d0;
                if (d1 > worst) worst = d1;
            }
    CU_ASSERT(worst < 1e-5);
    /* V heads untouched; K/V and pos in the slots */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hkv; h++) {
            int32_t g = slot_map[t * Hkv + h];
            CU_ASSERT(memcmp(((float *)tkv_store(pool)->k) + (size_t)g * hd, qkv + (size_t)t * QKV + (Hq + h) * hd, hd * 4) == 0);
            CU_ASSERT(memcmp(((float *)tkv_store(pool)->v) + (size_t)g * hd, qkv0 + (size_t)t * QKV + (Hq + Hkv + h) * hd, hd * 4) == 0);
            CU_ASSERT_EQUAL(pool->pos[g], pos[t]);
            CU_ASSERT_EQUAL(pool->score[g], scores[t * Hkv + h]);
        }
    /* fused scores == the policies' own score_keys on the same rotated keys */
    char path[256];
    snprintf(path, sizeof path, "%s/kvs_test_rope_%d.kvsqf", t_tmpdir(), (int)getpid());
    qf_filters f = {.n_layers = 1, .n_kv_heads = Hkv, .head_dim = hd, .n_heads = Hq, .n_tokens = 1,
                    .u = u};
    snprintf(f.model_name, sizeof f.model_name, "test");
    CU_ASSERT_FATAL(qf_filters_save(path, &f) == 0);
    pol_model_info mi = {1, Hq, Hkv, hd, NULL};
    pol_instance *qf, *kn, *stm;
    char args[300];
    snprintf(args, sizeof args, "filters=%s", path);
    CU_ASSERT_FATAL(pol_instance_create("qfilters", args, &mi, &qf) == 0);
    CU_ASSERT_FATAL(pol_instance_create("knorm", "", &mi, &kn) == 0);
    CU_ASSERT_FATAL(pol_instance_create("streaming", "", &mi, &stm) == 0);
    remove(path);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hkv; h++) {
            const float *k = qkv + (size_t)t * QKV + (Hq + h) * hd;
            float want = 0.0f;
            switch (kinds[tok_seq[t]]) {
            case KVS_SCORE_DOT: pol_score_keys(qf, 0, h, k, &pos[t], 1, &want); break;
            case KVS_SCORE_NEG_NORM: pol_score_keys(kn, 0, h, k, &pos[t], 1, &want); break;
            case KVS_SCORE_POS: pol_score_keys(stm, 0, h, k, &pos[t], 1, &want); break;
            default: want = 0.0f;
            }
            CU_ASSERT_EQUAL(scores[t * Hkv + h], want);
        }
    pol_instance_destroy(qf); pol_instance_destroy(kn); pol_instance_destroy(stm);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        /* device: same inputs; HOST sequence stashes its keys, sequence 0 its queries */
        kvs_seq_info si[S];
        memset(si, 0, sizeof si);
        int first[S], cnt[S] = {0};
        for (int s = 0; s < S; s++) first[s] = -1;
        for (int t = 0; t < T; t++) { if (first[tok_seq[t]] < 0) first[tok_seq[t]] = t; cnt[tok_seq[t]]++; }
        for (int s = 0; s < S; s++) {
            si[s].tok0 = first[s];
            si[s].n_tok = cnt[s];
            si[s].score_kind = kinds[s];
            si[s].filter_set = kinds[s] == KVS_SCORE_DOT ? 1 : -1; /* set 1: set 0 is junk */
            si[s].key_stash = kinds[s] == KVS_SCORE_HOST ? 0 : -1;
            si[s].query_stash = s == 0 ? 0 : -1;
        }
        mem_cuda_pool *dp;
        CU_ASSERT_FATAL(mem_cuda_pool_create(P, hd, NPAGES, t_dtype(), &dp) == 0);
        mem_pool *back;
        CU_ASSERT_FATAL(tkv_pool_create(P, hd, NPAGES, &back) == 0);
        float *d_qkv = kvs_cuda_malloc((size_t)T * QKV * 4), *d_cs = kvs_cuda_malloc((size_t)NPOS * hd / 2 * 4);
        float *d_sn = kvs_cuda_malloc((size_t)NPOS * hd / 2 * 4), *d_f = kvs_cuda_malloc(2 * Hkv * hd * 4);
        float *d_sc = kvs_cuda_malloc(T * Hkv * 4), *d_ks = kvs_cuda_malloc((size_t)T * Hkv * hd * 4);
        float *d_qs = kvs_cuda_malloc((size_t)T * Hq * hd * 4);
        int32_t *d_pos = kvs_cuda_malloc(T * 4), *d_ts = kvs_cuda_malloc(T * 4), *d_sm = kvs_cuda_malloc(T * Hkv * 4);
        kvs_seq_info *d_si = kvs_cuda_malloc(sizeof si);
        float junk[Hkv * hd];
        for (int i = 0; i < Hkv * hd; i++) junk[i] = 100.0f;
        CU_ASSERT(kvs_cuda_upload(d_qkv, qkv0, (size_t)T * QKV * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_cs, cs, (size_t)NPOS * hd / 2 * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_sn, sn, (size_t)NPOS * hd / 2 * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_f, junk, sizeof junk) == 0);
        CU_ASSERT(kvs_cuda_upload(d_f + Hkv * hd, u, sizeof u) == 0);
        CU_ASSERT(kvs_cuda_upload(d_pos, pos, sizeof pos) == 0);
        CU_ASSERT(kvs_cuda_upload(d_ts, tok_seq, sizeof tok_seq) == 0);
        CU_ASSERT(kvs_cuda_upload(d_sm, slot_map, sizeof slot_map) == 0);
        CU_ASSERT(kvs_cuda_upload(d_si, si, sizeof si) == 0);
        kvs_rope_kv_args a = {.qkv = d_qkv, .T = T, .Hq = Hq, .Hkv = Hkv, .hd = hd, .pos = d_pos,
                              .tok_seq = d_ts, .seq = d_si, .cos_t = d_cs, .sin_t = d_sn,
                              .slot_map = d_sm, .pool = *dp, .filters = d_f,
                              .set_stride = (size_t)Hkv * hd, .scores = d_sc, .key_stash = d_ks,
                              .query_stash = d_qs};
        CU_ASSERT(kvs_k_rope_kv_write(&a, NULL) == 0);
        CU_ASSERT(kvs_cuda_sync() == 0);
        float *q2 = malloc((size_t)T * QKV * 4), sc2[T * Hkv];
        float *ks = malloc((size_t)T * Hkv * hd * 4), *qs = malloc((size_t)T * Hq * hd * 4);
        CU_ASSERT(kvs_cuda_download(q2, d_qkv, (size_t)T * QKV * 4) == 0);
        CU_ASSERT(kvs_cuda_download(sc2, d_sc, sizeof sc2) == 0);
        CU_ASSERT(kvs_cuda_download(ks, d_ks, (size_t)cnt[4] * Hkv * hd * 4) == 0);
        CU_ASSERT(kvs_cuda_download(qs, d_qs, (size_t)cnt[0] * Hq * hd * 4) == 0);
        CU_ASSERT(kvs_cuda_pool_download(dp, back, tkv_store(back)) == 0);
        double dq = 0.0;
        for (int t = 0; t < T; t++) /* q and k rotated in place; v untouched */
            for (int i = 0; i < (Hq + Hkv) * hd; i++) {
                double d = fabs(q2[(size_t)t * QKV + i] - qkv[(size_t)t * QKV + i]);
                if (d > dq) dq = d;
            }
        printf(" rope |d| %.2e", dq);
        CU_ASSERT(dq < 1e-5);
        int kv_exact = 1, meta_ok = 1;
        double dsc = 0.0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < Hkv; h++) {
                int32_t g = slot_map[t * Hkv + h];
                for (int e = 0; e < hd; e++) {
                    if (((float *)tkv_store(back)->k)[(size_t)g * hd + e] != t_round(((float *)tkv_store(pool)->k)[(size_t)g * hd + e])) kv_exact = 0;
                    if (((float *)tkv_store(back)->v)[(size_t)g * hd + e] != t_round(((float *)tkv_store(pool)->v)[(size_t)g * hd + e])) kv_exact = 0;
                }
                if (back->pos[g] != pos[t]) meta_ok = 0;
                double d = fabs(sc2[t * Hkv + h] - scores[t * Hkv + h]) / (fabs(scores[t * Hkv + h]) + 1.0);
                if (d > dsc) dsc = d;
                if (back->score[g] != sc2[t * Hkv + h]) meta_ok = 0;
            }
        printf(" score rel %.2e", dsc);
        CU_ASSERT(kv_exact);
        CU_ASSERT(meta_ok);
        CU_ASSERT(dsc < 1e-5);
        /* stashes: rotated keys of the HOST sequence, rotated queries of sequence 0 */
        for (int i = 0; i < cnt[4]; i++)
            CU_ASSERT(t_max_abs_diff(ks + (size_t)i * Hkv * hd,
                                     qkv + (size_t)(first[4] + i) * QKV + Hq * hd, Hkv * hd) < 1e-5);
        for (int i = 0; i < cnt[0]; i++)
            CU_ASSERT(t_max_abs_diff(qs + (size_t)i * Hq * hd, qkv + (size_t)(first[0] + i) * QKV,
                                     Hq * hd) < 1e-5);
        free(q2); free(ks); free(qs);
        kvs_cuda_free(d_qkv); kvs_cuda_free(d_cs); kvs_cuda_free(d_sn); kvs_cuda_free(d_f);
        kvs_cuda_free(d_sc); kvs_cuda_free(d_ks); kvs_cuda_free(d_qs); kvs_cuda_free(d_pos);
        kvs_cuda_free(d_ts); kvs_cuda_free(d_sm); kvs_cuda_free(d_si);
        mem_cuda_pool_destroy(dp);
        tkv_pool_destroy(back);
    } else {
        printf(" skipped: no GPU ");
    }
#else
    printf(" skipped: no GPU ");
#endif
    tkv_pool_destroy(pool);
    free(qkv); free(qkv0); free(cs); free(sn);
}

/* ---- attention ------------------------------------------------------------------------------- */

/* A batch of sequences (one layer) with queries, as the attention kernels see it. */
typedef struct {
    int S, Hkv, G, hd, P, T;
    mem_pool *pool;
    mem_seq *seq[8];
    int n_q[8], tok0[8];
    int32_t *pos, *tok_seq;         /* [T] query positions, sequence of each query */
    float *q;                       /* [T][Hq hd] */
    kvs_seq_info si[8];
    kvs_stream_info *st;            /* [S][Hkv] */
    int32_t *pt;
    int n_pt;
    int64_t n_probs;
} att_scene;

/* Stream shapes: per sequence s and head h a different layout. */
static void scene_build(att_scene *a, int Hkv, int G, int hd, int P, int variant)
{
    memset(a, 0, sizeof *a);
    a->S = 7;
    a->Hkv = Hkv;
    a->G = G;
    a->hd = hd;
    a->P = P;
    CU_ASSERT_FATAL(tkv_pool_create(P, hd, 4096, &a->pool) == 0);
    /* (tokens, evict %, tokens after, queries): empty, one token, holes everywhere but the
     * last, page boundary, page boundary + 1, long (splits), a chunk with causal masking */
    static const int shape[7][4] = {{0, 0, 0, 1},   {1, 0, 0, 1},   {40, 95, 1, 1},
                                     {32, 0, 0, 1},  {33, 30, 0, 3}, {700, 40, 60, 1},
                                     {90, 25, 37, 37}};
    int T = 0;
    for (int s = 0; s < a->S; s++) {
        CU_ASSERT_FATAL(mem_seq_create(1, Hkv, s * 64, &a->seq[s]) == 0);
        for (int h = 0; h < Hkv; h++) {
            int n = shape[s][0], after = shape[s][2];
            if (variant && n > 1) n += h * 5; /* heads of different lengths */
            CU_ASSERT_FATAL(t_fill_stream(a->pool, &a->seq[s]->streams[h], 0, n, shape[s][1],
                                          after) == 0);
        }
        a->n_q[s] = shape[s][3];
        a->tok0[s] = T;
        T += a->n_q[s];
    }
    a->T = T;
    const int Hq = Hkv * G;
    a->pos = malloc((size_t)T * sizeof *a->pos);
    a->tok_seq = malloc((size_t)T * sizeof *a->tok_seq);
    a->q = malloc((size_t)T * Hq * hd * sizeof *a->q);
    for (size_t i = 0; i < (size_t)T * Hq * hd; i++) a->q[i] = 2.0f * t_unit();
    a->st = calloc((size_t)(unsigned)a->S * (unsigned)Hkv, sizeof *a->st);
    int n_pt = 0;
    for (int s = 0; s < a->S; s++)
        for (int h = 0; h < Hkv; h++) n_pt += a->seq[s]->streams[h].n_pages;
    a->pt = malloc((size_t)(n_pt + 1) * sizeof *a->pt);
    n_pt = 0;
    int64_t probs = 0;
    for (int s = 0; s < a->S; s++) {
        int32_t maxpos = -1;
        for (int h = 0; h < Hkv; h++) {
            mem_stream *m = &a->seq[s]->streams[h];
            kvs_stream_info *si = &a->st[s * Hkv + h];
            si->pt_off = n_pt;
            si->n_slots = m->n_slots;
            si->probs_off = probs;
            probs += (int64_t)a->n_q[s] * m->n_slots;
            if (m->n_pages) memcpy(a->pt + n_pt, m->pages, (size_t)m->n_pages * sizeof(int32_t));
            n_pt += m->n_pages;
            for (int32_t slot = 0; slot < m->n_slots; slot++) {
                int32_t p = a->pool->pos[mem_gslot(a->pool, m, slot)];
                if (p > maxpos) maxpos = p;
            }
        }
        /* queries at the last positions (a chunk's own tokens: causal inside the chunk) */
        for (int i = 0; i < a->n_q[s]; i++) {
            int t = a->tok0[s] + i;
            a->pos[t] = maxpos - a->n_q[s] + 1 + i;
            if (a->pos[t] < 0) a->pos[t] = i;
            a->tok_seq[t] = s;
        }
        a->si[s] = (kvs_seq_info){a->tok0[s], a->n_q[s], 0, -1, 0, a->n_q[s], -1, -1};
    }
    a->n_pt = n_pt;
    a->n_probs = probs;
}

static void scene_free(att_scene *a)
{
    for (int s = 0; s < a->S; s++) mem_seq_destroy(a->pool, a->seq[s]);
    tkv_pool_destroy(a->pool);
    free(a->pos); free(a->tok_seq); free(a->q); free(a->st); free(a->pt);
}

/* Twin outputs for every query of the scene: out[T][Hq hd]. */
static void scene_twin(const att_scene *a, float *out)
{
    const int Hq = a->Hkv * a->G, hd = a->hd;
    for (int s = 0; s < a->S; s++)
        for (int h = 0; h < a->Hkv; h++) {
            const kvs_stream_info *si = &a->st[s * a->Hkv + h];
            kref_attention(a->pool, tkv_store(a->pool), a->pt + si->pt_off, si->n_slots,
                           a->q + (size_t)a->tok0[s] * Hq * hd + (size_t)h * a->G * hd,
                           (size_t)Hq * hd, a->pos + a->tok0[s], a->n_q[s], a->G, hd,
                           1.0f / sqrtf((float)hd),
                           out + (size_t)a->tok0[s] * Hq * hd + (size_t)h * a->G * hd,
                           (size_t)Hq * hd);
        }
}

/* Dense attention by the definition (double softmax over the visible slots). */
static double scene_check_dense(const att_scene *a, const float *out)
{
    const int Hq = a->Hkv * a->G, hd = a->hd;
    const float scale = 1.0f / sqrtf((float)hd);
    double worst = 0.0;
    for (int s = 0; s < a->S; s++)
        for (int h = 0; h < a->Hkv; h++) {
            const mem_stream *m = &a->seq[s]->streams[h];
            for (int i = 0; i < a->n_q[s]; i++)
                for (int g = 0; g < a->G; g++) {
                    int t = a->tok0[s] + i;
                    const float *q = a->q + (size_t)t * Hq * hd + (size_t)(h * a->G + g) * hd;
                    double mx = -INFINITY, *w = calloc((size_t)m->n_slots + 1, sizeof *w), l = 0.0;
                    for (int32_t slot = 0; slot < m->n_slots; slot++) {
                        int32_t gs = mem_gslot(a->pool, m, slot), p = a->pool->pos[gs];
                        if (p < 0 || p > a->pos[t]) { w[slot] = -INFINITY; continue; }
                        double d = 0.0;
                        for (int e = 0; e < hd; e++) d += (double)q[e] * ((float *)tkv_store(a->pool)->k)[(size_t)gs * hd + e];
                        w[slot] = d * scale;
                        if (w[slot] > mx) mx = w[slot];
                    }
                    double o[128] = {0};
                    if (mx > -INFINITY) {
                        for (int32_t slot = 0; slot < m->n_slots; slot++) {
                            if (w[slot] == -INFINITY) continue;
                            double p = exp(w[slot] - mx);
                            l += p;
                            int32_t gs = mem_gslot(a->pool, m, slot);
                            for (int e = 0; e < hd; e++) o[e] += p * ((float *)tkv_store(a->pool)->v)[(size_t)gs * hd + e];
                        }
                        for (int e = 0; e < hd; e++) o[e] /= l;
                    }
                    const float *got = out + (size_t)t * Hq * hd + (size_t)(h * a->G + g) * hd;
                    for (int e = 0; e < hd; e++) {
                        double d = fabs(o[e] - got[e]);
                        if (d > worst) worst = d;
                    }
                    free(w);
                }
        }
    return worst;
}

static void attention_case(int Hkv, int G, int hd, int P, int variant)
{
    att_scene a;
    scene_build(&a, Hkv, G, hd, P, variant);
    const int Hq = Hkv * G, T = a.T;
    const float scale = 1.0f / sqrtf((float)hd);
    float *twin = calloc((size_t)T * Hq * hd, sizeof *twin);
    scene_twin(&a, twin);
    double dense = scene_check_dense(&a, twin);
    CU_ASSERT(dense < 1e-5);
    /* split partials + combine == the whole (the decode kernel's split path) */
    double worst_split = 0.0;
    for (int s = 0; s < a.S; s++) {
        if (a.n_q[s] != 1) continue;
        int t = a.tok0[s];
        for (int h = 0; h < Hkv; h++) {
            const kvs_stream_info *si = &a.st[s * Hkv + h];
            for (int ns = 1; ns <= 7; ns += 3) {
                int np = (si->n_slots + P - 1) / P, pps = (np + ns - 1) / ns;
                float m[8 * 16], l[8 * 16], *acc = malloc((size_t)ns * G * hd * sizeof *acc);
                for (int k = 0; k < ns; k++) {
                    int s0 = KVS_MIN(k * pps * P, si->n_slots), s1 = KVS_MIN((k + 1) * pps * P, si->n_slots);
                    float mm[16], ll[16];
                    kref_attention_partial(a.pool, tkv_store(a.pool), a.pt + si->pt_off, s0, s1,
                                           a.q + (size_t)t * Hq * hd + (size_t)h * G * hd,
                                           a.pos[t], G, hd, scale, mm, ll,
                                           acc + (size_t)k * G * hd);
                    for (int g = 0; g < G; g++) { m[g * ns + k] = mm[g]; l[g * ns + k] = ll[g]; }
                }
                for (int g = 0; g < G; g++) {
                    float o[128], *ag = malloc((size_t)ns * hd * sizeof *ag);
                    for (int k = 0; k < ns; k++)
                        memcpy(ag + (size_t)k * hd, acc + ((size_t)k * G + g) * hd, hd * sizeof *ag);
                    kref_attention_combine(ns, m + g * ns, l + g * ns, ag, hd, o);
                    double d = t_max_abs_diff(o, twin + (size_t)t * Hq * hd + (size_t)(h * G + g) * hd, hd);
                    if (d > worst_split) worst_split = d;
                    free(ag);
                }
                free(acc);
            }
        }
    }
    CU_ASSERT(worst_split < 1e-5);
    /* attention probabilities: rows sum to 1 over visible slots (per head, averaged) */
    float *probs = calloc((size_t)(a.n_probs ? a.n_probs : 1), sizeof *probs);
    double worst_sum = 0.0;
    for (int s = 0; s < a.S; s++)
        for (int h = 0; h < Hkv; h++) {
            const kvs_stream_info *si = &a.st[s * Hkv + h];
            kref_attn_probs(a.pool, tkv_store(a.pool), a.pt + si->pt_off, si->n_slots,
                            a.q + (size_t)a.tok0[s] * Hq * hd + (size_t)h * G * hd, (size_t)Hq * hd,
                            a.pos + a.tok0[s], a.n_q[s], G, hd, scale, probs + si->probs_off);
            for (int i = 0; i < a.n_q[s] && si->n_slots > 0; i++) {
                double sum = 0.0;
                int any = 0;
                for (int32_t slot = 0; slot < si->n_slots; slot++) {
                    sum += probs[si->probs_off + (int64_t)i * si->n_slots + slot];
                    int32_t p = a.pool->pos[mem_gslot(a.pool, &a.seq[s]->streams[h], slot)];
                    any |= p >= 0 && p <= a.pos[a.tok0[s] + i];
                }
                if (any && fabs(sum - 1.0) > worst_sum) worst_sum = fabs(sum - 1.0);
            }
        }
    CU_ASSERT(worst_sum < 1e-5);
    printf(" [G%d hd%d P%d: dense %.1e split %.1e", G, hd, P, dense, worst_split);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        mem_cuda_pool *dp;
        CU_ASSERT_FATAL(mem_cuda_pool_create(P, hd, a.pool->n_pages, t_dtype(), &dp) == 0);
        CU_ASSERT(kvs_cuda_pool_upload(dp, a.pool, tkv_store(a.pool)) == 0);
        float *d_q = kvs_cuda_malloc((size_t)T * Hq * hd * 4), *d_part = kvs_cuda_malloc((size_t)64 * T * Hq * (hd + 2) * 4);
        float *d_probs = kvs_cuda_malloc((size_t)(a.n_probs + 1) * 4);
        void *d_out = kvs_cuda_malloc((size_t)T * Hq * hd * 2);
        int32_t *d_pos = kvs_cuda_malloc(T * 4), *d_ts = kvs_cuda_malloc(T * 4), *d_pt = kvs_cuda_malloc((a.n_pt + 1) * 4);
        int32_t *d_dec = kvs_cuda_malloc(T * 4);
        kvs_seq_info *d_si = kvs_cuda_malloc(sizeof a.si);
        kvs_stream_info *d_st = kvs_cuda_malloc((size_t)a.S * Hkv * sizeof *a.st);
        int32_t *dec = malloc(T * 4);
        for (int t = 0; t < T; t++) dec[t] = t;
        /* prefill tiles as the plan makes them */
        int rows = hd <= 64 ? 64 : 32, tt = rows / G > 0 ? rows / G : 1, n_tiles = 0;
        kvs_tile tiles[64];
        for (int s = 0; s < a.S; s++)
            for (int i = 0; i < a.n_q[s]; i += tt)
                tiles[n_tiles++] = (kvs_tile){s, a.tok0[s] + i, KVS_MIN(tt, a.n_q[s] - i), 0};
        kvs_tile *d_tiles = kvs_cuda_malloc(sizeof tiles);
        CU_ASSERT(kvs_cuda_upload(d_q, a.q, (size_t)T * Hq * hd * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_pos, a.pos, T * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_ts, a.tok_seq, T * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_pt, a.pt, (size_t)a.n_pt * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_dec, dec, T * 4) == 0);
        CU_ASSERT(kvs_cuda_upload(d_si, a.si, sizeof a.si) == 0);
        CU_ASSERT(kvs_cuda_upload(d_st, a.st, (size_t)a.S * Hkv * sizeof *a.st) == 0);
        CU_ASSERT(kvs_cuda_upload(d_tiles, tiles, sizeof tiles) == 0);
        kvs_attn_args aa = {.q = d_q, .q_stride = Hq * hd, .out = d_out, .out_stride = Hq * hd,
                            .pos = d_pos, .tok_seq = d_ts, .seq = d_si, .streams = d_st, .pt = d_pt,
                            .pool = *dp, .L = 1, .layer = 0, .Hq = Hq, .Hkv = Hkv, .hd = hd,
                            .scale = scale, .dec = d_dec, .n_dec = T, .n_split = 1,
                            .part = d_part, .tiles = d_tiles, .n_tiles = n_tiles, .obs = d_dec,
                            .n_obs = T, .probs = d_probs};
        float *got = malloc((size_t)T * Hq * hd * sizeof *got);
        int splits[] = {1, 2, 5, 13, kvs_attn_decode_splits(T, Hkv, G, 44, 132)};
        for (int k = 0; k < 5; k++) {
            aa.n_split = splits[k];
            CU_ASSERT(kvs_cuda_memset(d_out, 0, (size_t)T * Hq * hd * 2) == 0);
            CU_ASSERT(kvs_k_attn_decode(&aa, NULL) == 0);
            CU_ASSERT(kvs_cuda_sync() == 0);
            CU_ASSERT(kvs_cuda_download_half(got, d_out, (size_t)T * Hq * hd, t_dtype()) == 0);
            double d = t_max_abs_diff(got, twin, (size_t)T * Hq * hd);
            printf(" decode/%d %.1e", splits[k], d);
            CU_ASSERT(d < t_half_tol());
            CU_ASSERT(t_representable(got, (size_t)T * Hq * hd));
        }
        CU_ASSERT(kvs_cuda_memset(d_out, 0, (size_t)T * Hq * hd * 2) == 0);
        CU_ASSERT(kvs_k_attn_prefill(&aa, NULL) == 0);
        CU_ASSERT(kvs_cuda_sync() == 0);
        CU_ASSERT(kvs_cuda_download_half(got, d_out, (size_t)T * Hq * hd, t_dtype()) == 0);
        double d = t_max_abs_diff(got, twin, (size_t)T * Hq * hd);
        printf(" prefill %.1e", d);
        CU_ASSERT(d < t_half_tol());
        CU_ASSERT(t_representable(got, (size_t)T * Hq * hd));
        if (G <= 16) {
            float *gp = malloc((size_t)(a.n_probs + 1) * 4);
            CU_ASSERT(kvs_k_attn_probs(&aa, NULL) == 0);
            CU_ASSERT(kvs_cuda_download(gp, d_probs, (size_t)a.n_probs * 4) == 0);
            d = t_max_abs_diff(gp, probs, (size_t)a.n_probs);
            printf(" probs %.1e", d);
            CU_ASSERT(d < 1e-5);
            free(gp);
        }
        free(got); free(dec);
        kvs_cuda_free(d_q); kvs_cuda_free(d_part); kvs_cuda_free(d_probs); kvs_cuda_free(d_out);
        kvs_cuda_free(d_pos); kvs_cuda_free(d_ts); kvs_cuda_free(d_pt); kvs_cuda_free(d_dec);
        kvs_cuda_free(d_si); kvs_cuda_free(d_st); kvs_cuda_free(d_tiles);
        mem_cuda_pool_destroy(dp);
    } else {
        printf(" skipped: no GPU");
    }
#else
    printf(" skipped: no GPU");
#endif
    printf("]");
    free(twin);
    free(probs);
    scene_free(&a);
}

static void test_attention(void)
{
    t_seed(101);
    attention_case(3, 3, 64, 16, 0);  /* SmolLM2: 3 KV heads, G = 3 */
    attention_case(2, 4, 64, 16, 1);  /* Llama-3.2-1B-like G = 4, heads of different lengths */
    attention_case(2, 8, 128, 16, 1); /* hd 128, G = 8 (two head chunks in decode) */
    attention_case(4, 1, 64, 4, 0);   /* MHA, small pages */
    attention_case(1, 5, 128, 32, 1); /* G = 5: one predicated chunk of 8, big pages */
    attention_case(2, 16, 64, 16, 0); /* G = 16: two chunks of 8, 4-token prefill tiles */
    attention_case(1, 7, 64, 8, 1);   /* G = 7 (Qwen2-7B-like), small pages */
}

T_PER_TYPE(test_embed_rmsnorm_swiglu)
T_PER_TYPE(test_rope_kv_write)
T_PER_TYPE(test_attention)

/* ---- sampling -------------------------------------------------------------------------------- */

/* sampler.c's stream: state seed ^ golden, splitmix64, 53-bit uniform. */
static uint64_t t_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void test_sampling(void)
{
    enum { V = 2000, N = 200 };
    static const smp_params cases[] = {
        {0.0f, 0, 1.0f, 1}, {0.8f, 0, 1.0f, 2}, {1.3f, 40, 1.0f, 3}, {0.7f, 0, 0.9f, 4},
        {1.0f, 50, 0.8f, 5}, {0.5f, 1, 1.0f, 6}, {2.0f, 0, 0.3f, 7}};
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    t_seed(31);
    float *lg = malloc((size_t)N * V * sizeof *lg);
    double *r = malloc((size_t)n_cases * N * sizeof *r);
    int32_t *want = malloc((size_t)n_cases * N * sizeof *want);
    for (int i = 0; i < N; i++) {
        float spread = 1.0f + (float)(i % 7) * 2.0f;
        for (int j = 0; j < V; j++) lg[(size_t)i * V + j] = spread * t_unit();
        if (i % 5 == 0) { /* an exact tie for the maximum */
            lg[(size_t)i * V + 10] = 50.0f;
            lg[(size_t)i * V + 1500] = 50.0f;
        }
    }
    int mismatches = 0;
    for (int c = 0; c < n_cases; c++) {
        sampler smp;
        CU_ASSERT_FATAL(smp_init(&smp, &cases[c], V) == 0);
        uint64_t rng = cases[c].seed ^ 0x9E3779B97F4A7C15ull;
        for (int i = 0; i < N; i++) {
            int32_t a = smp_sample(&smp, lg + (size_t)i * V);
            int greedy = cases[c].temperature == 0.0f || cases[c].top_k == 1;
            double u = greedy ? 0.0 : (double)(t_splitmix(&rng) >> 11) * 0x1.0p-53;
            r[c * N + i] = u;
            int32_t b = kref_sample(lg + (size_t)i * V, V, cases[c].temperature, cases[c].top_k,
                                    cases[c].top_p, u);
            want[c * N + i] = b;
            if (a != b) mismatches++;
            if (greedy && i % 5 == 0) CU_ASSERT_EQUAL(b, 10); /* lowest index of the tie */
        }
        smp_deinit(&smp);
    }
    CU_ASSERT_EQUAL(mismatches, 0);
#ifdef KVS_HAVE_CUDA
    if (t_gpu()) {
        float *d_lg = kvs_cuda_malloc((size_t)N * V * 4);
        kvs_sample_row *rows = calloc(N, sizeof *rows);
        kvs_sample_row *d_rows = kvs_cuda_malloc(N * sizeof *rows);
        int32_t *d_out = kvs_cuda_malloc(N * 4), got[N];
        CU_ASSERT(kvs_cuda_upload(d_lg, lg, (size_t)N * V * 4) == 0);
        int dev_mis = 0;
        for (int c = 0; c < n_cases; c++) {
            int greedy = cases[c].temperature == 0.0f || cases[c].top_k == 1, mis = 0;
            for (int i = 0; i < N; i++)
                rows[i] = (kvs_sample_row){r[c * N + i], cases[c].temperature, cases[c].top_p,
                                           cases[c].top_k, 0};
            CU_ASSERT(kvs_cuda_upload(d_rows, rows, N * sizeof *rows) == 0);
            CU_ASSERT(kvs_k_sample(d_lg, N, V, d_rows, d_out, NULL) == 0);
            CU_ASSERT(kvs_cuda_download(got, d_out, sizeof got) == 0);
            for (int i = 0; i < N; i++) mis += got[i] != want[c * N + i];
            if (greedy) CU_ASSERT_EQUAL(mis, 0);
            dev_mis += mis;
        }
        /* expf on the device may differ from glibc's by an ulp: a draw that lands within
         * ~1e-7 of a boundary may pick the neighbour. Allow 1% of draws. */
        printf(" device mismatches %d/%d", dev_mis, n_cases * N);
        CU_ASSERT(dev_mis <= n_cases * N / 100);
        kvs_cuda_free(d_lg); kvs_cuda_free(d_rows); kvs_cuda_free(d_out);
        free(rows);
    } else {
        printf(" skipped: no GPU ");
    }
#else
    printf(" skipped: no GPU ");
#endif
    free(lg); free(r); free(want);
}

int main(void)
{
    char dev[256];
    kvs_device_describe(dev, sizeof dev);
    printf("device: %s\n", dev);
    static const kvs_test tests[] = {
        {"16-bit rounding (fp16, bf16): twin rules, device conversion bit-exact", test_round_half},
        {"embedding, RMSNorm, SwiGLU (fp16)", test_embed_rmsnorm_swiglu_f16},
        {"embedding, RMSNorm, SwiGLU (bf16)", test_embed_rmsnorm_swiglu_bf16},
        {"RoPE + K/V write + fused scores (= qfilters/knorm/streaming) (fp16)",
         test_rope_kv_write_f16},
        {"RoPE + K/V write + fused scores (= qfilters/knorm/streaming) (bf16)",
         test_rope_kv_write_bf16},
        {"paged attention: decode (splits), prefill, probs (fp16 K/V)", test_attention_f16},
        {"paged attention: decode (splits), prefill, probs (bf16 K/V)", test_attention_bf16},
        {"sampling: twin == smp_sample; device == twin", test_sampling},
    };
    return kvs_test_main("cuda_kernels", tests, sizeof tests / sizeof tests[0]);
}
