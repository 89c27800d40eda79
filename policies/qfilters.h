/* qfilters.h — Q-Filters' own API: filters files and calibration (policies/qfilters.c; the
 * policy itself is registered as "qfilters", docs/POLICIES.md). */
#ifndef KVS_POLICIES_QFILTERS_H
#define KVS_POLICIES_QFILTERS_H

#include <stddef.h>
#include <stdint.h>

#include "memory/policy.h"

/* Filters for one model: u[layer][kv_head][head_dim], float32 (METHODS.md, Q-Filters). */
typedef struct qf_filters {
    char model_name[256];
    int n_layers, n_kv_heads, head_dim, n_heads;
    int64_t n_tokens;   /* calibration tokens (per query head) */
    float *u;           /* [n_layers][n_kv_heads][head_dim] */
} qf_filters;

/* Write a filters file (format in docs/POLICIES.md). */
int qf_filters_save(const char *path, const qf_filters *f);
/* Read and validate a filters file. mi (may be NULL) is checked against it: geometry always,
 * the model name when mi->model_name is not NULL. */
int qf_filters_load(const char *path, const pol_model_info *mi, qf_filters **out);
void qf_filters_free(qf_filters *f);

/* Calibration: per (layer, query head) accumulate C = sum q q^T (double), s = sum q and a
 * reservoir sample of the queries; finish with power iteration for the top eigenvector u of
 * C, the sign with more positive than negative projections <q,u> over the sample (ties: the
 * sign with <s,u> > 0), and the mean of each KV head's G query-head vectors. */
typedef struct qf_calib qf_calib;
#define QF_RESERVOIR_DEFAULT 512
/* reservoir: queries kept per query head for the sign rule and diagnostics (0 = default). */
int qf_calib_create(int n_layers, int n_heads, int n_kv_heads, int head_dim, int reservoir,
                    qf_calib **out);
void qf_calib_destroy(qf_calib *c);
/* Add n post-RoPE queries q[n][head_dim] of query head `head` of `layer`. */
int qf_calib_add_queries(qf_calib *c, int layer, int head, const float *q, int n);
/* Queries added so far to (layer 0, head 0), i.e. calibration tokens. */
int64_t qf_calib_n_tokens(const qf_calib *c);
/* filters[n_layers][n_kv_heads][head_dim]; frac_positive[n_layers][n_heads] (may be NULL):
 * fraction of sampled queries with <q,u> > 0 for each query head's own u. KVS_EINVAL if a
 * head got no queries. */
int qf_calib_finish(qf_calib *c, float *filters, float *frac_positive);

#endif
