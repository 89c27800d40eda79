/* forward_cpu.h — the CPU forward: executes a step plan (plan.h) with fp32 activations, BLAS
 * GEMMs and OpenMP, K/V rows in a host store of any KV format (memory/kv_store.h). The CPU
 * backend (backend_cpu.c) is its only caller. */
#ifndef KVS_FORWARD_CPU_H
#define KVS_FORWARD_CPU_H

#include "forward.h"
#include "memory/kv_store.h"
#include "memory/pool.h"
#include "model.h"
#include "plan.h"

typedef struct fwd_state fwd_state;

/* Largest head dim the CPU attention tiles take. */
#define FWD_CPU_MAX_HEAD_DIM 512

int fwd_create(const model *m, fwd_state **out);
void fwd_destroy(fwd_state *st);

/* Run one planned step (kvs_plan_build has assigned the slots). Scores are computed with each
 * sequence's score_keys on the host, at the key write; the queries and observe hooks are
 * called during the layer that produces them. On success *logits points to rows of n_vocab
 * floats (valid until the next call): for each sequence in order, 1 row (LAST) or n_tokens
 * rows (ALL) or none; *n_rows is the total. */
int fwd_cpu(fwd_state *st, const model *m, mem_pool *pool, kv_store *kv, const kvs_plan *p,
            const fwd_seq *seqs, float **logits, int *n_rows);

const fwd_timing *fwd_last_timing(const fwd_state *st);

#endif
