/* twin_forward.h — the CUDA kernels' CPU twins composed into a whole forward step, with the
 * same host-side plan as the CUDA forward (plan build, filter sets, slot assignment, hook
 * finishing): a test-only reference (tests/cuda/test_cuda_forward.c), so that the CUDA
 * backend's host logic and the kernels' definitions are checked against the CPU backend
 * without a GPU. fp32 + BLAS GEMMs, single-threaded kernels. logits: malloc'd. */
#ifndef KVS_TWIN_FORWARD_H
#define KVS_TWIN_FORWARD_H

#include <cblas.h>

#include "kernels_ref.h"
#include "memory/kv_store.h"
#include "plan.h"
#include "rope.h"

/* Y[T][N] (+)= X[T][K] @ W[N][K]^T */
static void tw_gemm_xwt(float *Y, const float *X, const float *W, int T, int N, int K, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, X, K, W, K, beta, Y, N);
}

static int twin_forward(const model *m, mem_pool *pool, kv_store *kv, const fwd_seq *seqs,
                        int n_seqs, float **logits_out, int *n_rows)
{
    const model_config *c = &m->cfg;
    const int D = c->d_model, hd = c->head_dim, half = hd / 2, Hq = c->n_heads;
    const int Hkv = c->n_kv_heads, G = Hq / Hkv, F = c->d_ff, L = c->n_layers, V = c->n_vocab;
    const int QKV = (Hq + 2 * Hkv) * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    *logits_out = NULL;
    *n_rows = 0;
    kvs_filter_cache fc;
    kvs_filter_cache_init(&fc, c);
    kvs_plan p;
    memset(&p, 0, sizeof p);
    int rc = kvs_plan_build(&p, c, pool, seqs, n_seqs);
    if (!rc) rc = kvs_filter_cache_assign(&fc, &p);
    if (rc) { kvs_filter_cache_deinit(&fc); return rc; }
    const int T = p.T, R = p.R, S = p.S;
    float *x = malloc((size_t)T * D * sizeof *x), *h = malloc((size_t)T * D * sizeof *h);
    float *qkv = malloc((size_t)T * QKV * sizeof *qkv);
    float *att = calloc((size_t)T * Hq * hd, sizeof *att);
    float *gu = malloc((size_t)T * 2 * F * sizeof *gu), *act = malloc((size_t)T * F * sizeof *act);
    float *cos_t = malloc((size_t)(p.max_pos + 1) * half * sizeof *cos_t);
    float *sin_t = malloc((size_t)(p.max_pos + 1) * half * sizeof *sin_t);
    float *scores = malloc((size_t)L * T * Hkv * sizeof *scores);
    float *kst = malloc((size_t)L * (p.n_key_stash ? p.n_key_stash : 1) * Hkv * hd * sizeof *kst);
    float *qst = malloc((size_t)L * (p.n_query_stash ? p.n_query_stash : 1) * Hq * hd * sizeof *qst);
    float *probs = calloc((size_t)(p.n_probs ? p.n_probs : 1), sizeof *probs);
    float *xr = malloc((size_t)(R ? R : 1) * D * sizeof *xr);
    float *lg = malloc((size_t)(R ? R : 1) * V * sizeof *lg);
    int32_t *seq_kind = malloc((size_t)S * sizeof *seq_kind);
    const float **seq_u = malloc((size_t)S * sizeof *seq_u);
    if (!x || !h || !qkv || !att || !gu || !act || !cos_t || !sin_t || !scores || !kst || !qst ||
        !probs || !xr || !lg || !seq_kind || !seq_u) {
        rc = kvs_error(KVS_ENOMEM, "twin_forward: out of memory for %d tokens", T);
        goto out;
    }
    kvs_rope_table(p.max_pos + 1, hd, c->rope_base, cos_t, sin_t);
    for (int s = 0; s < S; s++) seq_kind[s] = p.seq[s].score_kind;
    kref_mark(pool, p.marks, p.n_marks);
    kref_embed(m->tok_embd, D, p.tok, T, x);
    for (int l = 0; l < L; l++) {
        const model_layer *ly = &m->layers[l];
        for (int s = 0; s < S; s++)
            seq_u[s] = p.seq[s].filter_set >= 0
                           ? fc.u[p.seq[s].filter_set] + (size_t)l * Hkv * hd : NULL;
        kref_rmsnorm(x, NULL, T, D, ly->attn_norm, c->rms_eps, h);
        tw_gemm_xwt(qkv, h, ly->wqkv, T, QKV, D, 0.0f);
        kref_rope_kv_write(qkv, T, Hq, Hkv, hd, p.pos, cos_t, sin_t, pool, kv,
                           p.slot_map + (size_t)l * T * Hkv, p.tok_seq, seq_kind, seq_u,
                           scores + (size_t)l * T * Hkv);
        /* stashes for the host-side hooks */
        for (int s = 0; s < S; s++) {
            const kvs_seq_info *si = &p.seq[s];
            for (int i = 0; i < si->n_tok; i++) {
                const float *row = qkv + (size_t)(si->tok0 + i) * QKV;
                if (si->key_stash >= 0)
                    memcpy(kst + ((size_t)l * p.n_key_stash + si->key_stash + i) * Hkv * hd,
                           row + (size_t)Hq * hd, (size_t)Hkv * hd * sizeof(float));
                if (si->query_stash >= 0)
                    memcpy(qst + ((size_t)l * p.n_query_stash + si->query_stash + i) * Hq * hd,
                           row, (size_t)Hq * hd * sizeof(float));
            }
        }
        /* attention: decode tokens one by one, prefill tiles */
        for (int i = 0; i < p.n_dec; i++) {
            int t = p.dec[i], s = p.tok_seq[t];
            for (int hk = 0; hk < Hkv; hk++) {
                const kvs_stream_info *st = &p.stream[((size_t)s * L + l) * Hkv + hk];
                kref_attention(pool, kv, p.pt + st->pt_off, st->n_slots,
                               qkv + (size_t)t * QKV + (size_t)hk * G * hd, (size_t)QKV,
                               p.pos + t, 1, G, hd, scale,
                               att + (size_t)t * Hq * hd + (size_t)hk * G * hd, (size_t)Hq * hd);
            }
        }
        for (int i = 0; i < p.n_tiles; i++) {
            const kvs_tile *tl = &p.tiles[i];
            for (int hk = 0; hk < Hkv; hk++) {
                const kvs_stream_info *st = &p.stream[((size_t)tl->seq * L + l) * Hkv + hk];
                kref_attention(pool, kv, p.pt + st->pt_off, st->n_slots,
                               qkv + (size_t)tl->tok0 * QKV + (size_t)hk * G * hd, (size_t)QKV,
                               p.pos + tl->tok0, tl->n_tok, G, hd, scale,
                               att + (size_t)tl->tok0 * Hq * hd + (size_t)hk * G * hd,
                               (size_t)Hq * hd);
            }
        }
        /* attention statistics for the observers */
        for (int s = 0; s < S; s++) {
            const kvs_seq_info *si = &p.seq[s];
            if (si->n_obs <= 0) continue;
            int t0 = si->tok0 + si->obs0;
            for (int hk = 0; hk < Hkv; hk++) {
                const kvs_stream_info *st = &p.stream[((size_t)s * L + l) * Hkv + hk];
                kref_attn_probs(pool, kv, p.pt + st->pt_off, st->n_slots,
                                qkv + (size_t)t0 * QKV + (size_t)hk * G * hd, (size_t)QKV,
                                p.pos + t0, si->n_obs, G, hd, scale, probs + st->probs_off);
            }
        }
        tw_gemm_xwt(x, att, ly->wo, T, D, Hq * hd, 1.0f);
        kref_rmsnorm(x, NULL, T, D, ly->ffn_norm, c->rms_eps, h);
        tw_gemm_xwt(gu, h, ly->w_gate_up, T, 2 * F, D, 0.0f);
        kref_swiglu(gu, T, F, act);
        tw_gemm_xwt(x, act, ly->w_down, T, D, F, 1.0f);
    }
    if (R > 0) {
        kref_rmsnorm(x, p.rows, R, D, m->output_norm, c->rms_eps, xr);
        tw_gemm_xwt(lg, xr, m->output, R, V, D, 0.0f);
    }
    rc = kvs_plan_finish(&p, pool, seqs, scores, kst, qst, probs);
    if (!rc) {
        *logits_out = lg;
        *n_rows = R;
        lg = NULL;
    }
out:
    free(x); free(h); free(qkv); free(att); free(gu); free(act); free(cos_t); free(sin_t);
    free(scores); free(kst); free(qst); free(probs); free(xr); free(lg); free(seq_kind);
    free(seq_u);
    kvs_plan_free(&p);
    kvs_filter_cache_deinit(&fc);
    return rc;
}

#endif
