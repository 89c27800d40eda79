/* qaq.h — the building blocks of QAQ, quality-adaptive KV quantisation (Dong et al., arXiv
 * 2403.04643; docs/QAQ-DESIGN.md has the derivations, our reading of them and the choices).
 * Pure functions: no pool, no engine.
 *
 *  - outliers: the k lowest and k highest values of a row are kept in fp16 with their index
 *    and the quantisation range is taken over the rest; k = qaq_outliers_per_side(hd, alpha);
 *  - bits per token: the smallest width whose uniform quantiser (kv_quant.h: 2^B levels
 *    spanning the non-outlier range R, step R / (2^B - 1)) has an error standard deviation
 *    step / sqrt(12) <= sigma: B = ceil(log2(R / (2 sqrt(3) sigma) + 1)), then rounded up to
 *    an allowed width (a bit set, default {2, 4, 8}) and clamped to its smallest and largest;
 *  - the sigma a key may have: sigma_K^2 <= ln(T^3 / (T-1) * sigma_S,max^2 + 1) / |q|^2,
 *    |q|^2 the upper-10% quantile of the head's squared query norms;
 *  - the sigma a value may have: sigma_V <= sigma_X,max / (sqrt(T) |S_t|), S_t the max of the
 *    token's last n (5) attention scores (qaq_window);
 *  - a self-describing row record: bits, scale, zero, outliers, codes (qaq_encode). */
#ifndef KVS_MEMORY_QAQ_H
#define KVS_MEMORY_QAQ_H

#include <stddef.h>
#include <stdint.h>

/* ---- outliers ------------------------------------------------------------------------------ */

/* Outliers kept on each side of a row of hd values for a total fraction alpha (the paper's
 * alpha = 0.01): 0 if alpha <= 0, else ceil(alpha / 2 * hd), so at least one per side (hd 64
 * or 128 at 1%: one lowest and one highest, 2 of 64 = 3.1%). Capped at (hd - 2) / 2 so that
 * two values are left to span the range. */
int qaq_outliers_per_side(int hd, double alpha);

/* The k lowest values of x[hd] (idx[0..k), lowest first) and the k highest (idx[k..2k),
 * highest first), ties to the lower index; *lo / *hi: the range of the other hd - 2k values.
 * x must be free of NaN. KVS_EINVAL if k < 0 or 2k > hd - 1. */
int qaq_outliers(const float *x, int hd, int k, int *idx, float *lo, float *hi);

/* ---- bits ---------------------------------------------------------------------------------- */

#define QAQ_MAX_BITS 8
/* Allowed widths as a bit set: bit b set = width b allowed (b in 2..8). */
#define QAQ_WIDTHS(b) (1u << (b))
#define QAQ_WIDTHS_248 (QAQ_WIDTHS(2) | QAQ_WIDTHS(4) | QAQ_WIDTHS(8))
#define QAQ_WIDTHS_2348 (QAQ_WIDTHS_248 | QAQ_WIDTHS(3))

/* The smallest B >= 0 with R / (2^B - 1) <= 2 sqrt(3) sigma (the quantiser's step / sqrt(12)
 * <= sigma): 0 when range is 0 or sigma infinite, 31 when sigma is 0 (no width suffices). */
int qaq_bits_needed(double range, double sigma);
/* needed rounded up to an allowed width, clamped to the smallest and largest allowed; -1 if
 * widths allows nothing in 2..8. */
int qaq_pick_bits(int needed, unsigned widths);

/* ---- the sigma bounds ---------------------------------------------------------------------- */

/* Key: sqrt(ln(T^3 / (T-1) * sigma_s_max^2 + 1) / qnorm2). INFINITY when T < 2 (one token:
 * its softmax weight is 1 whatever its key) or qnorm2 <= 0. Grows with T: a key's bits never
 * need to rise as the context grows. */
double qaq_key_sigma(int64_t T, double sigma_s_max, double qnorm2);
/* Value: sigma_x_max / (sqrt(T) |s_t|); INFINITY when s_t is 0 (T >= 1). */
double qaq_value_sigma(int64_t T, double sigma_x_max, double s_t);
/* |q|^2 for the key bound: the nearest-rank quantile of the squared norms of n queries q[n][d]
 * such that a fraction `upper` (0.1 in the paper) of them is above it: the smallest value with
 * at least (1 - upper) n norms <= it. KVS_EINVAL for n < 1 or upper outside [0, 1). */
int qaq_qnorm2_quantile(const float *q, int n, int d, double upper, double *out);

/* ---- the attention window (value bits) ----------------------------------------------------- */

#define QAQ_WINDOW_MAX 8
/* The last n attention scores one token received (n = 5 in the paper); S_t = their max. With
 * GQA, push the max over the query heads that read this KV head. Scores are kept as fp16
 * (a softmax weight in [0, 1] to 2^-11 relative, subnormals below 2^-14): 20 bytes a token,
 * meant to sit beside a slot like the pool's score. */
typedef struct qaq_window {
    uint16_t s[QAQ_WINDOW_MAX]; /* fp16 bits */
    uint8_t n, count, at;       /* window length, scores seen (saturates at n), next slot */
} qaq_window;

/* KVS_EINVAL unless 1 <= n <= QAQ_WINDOW_MAX. */
int qaq_window_init(qaq_window *w, int n);
void qaq_window_push(qaq_window *w, float score);
/* 1 once n scores have been seen: before that the token stays at the largest width. */
int qaq_window_ready(const qaq_window *w);
/* The max of the scores in the window, as stored (fp16-rounded; 0 before the first push). */
float qaq_window_max(const qaq_window *w);

/* Bits of a key row whose non-outlier range is `range`, with T tokens in context. */
int qaq_key_bits(double range, int64_t T, double sigma_s_max, double qnorm2, unsigned widths);
/* Bits of a value row: the largest allowed width until w is ready, then from S_t = its max. */
int qaq_value_bits(double range, int64_t T, double sigma_x_max, const qaq_window *w,
                   unsigned widths);

/* ---- the row record ------------------------------------------------------------------------ */

/* Layout (little endian, no alignment; head_dim is known to the reader, <= 256):
 *   u8 bits (1..8) | u8 n_outliers | f16 scale | f16 zero |
 *   n_outliers x (u8 index, f16 value) | codes of all hd elements, ceil(hd * bits / 8) bytes
 * Codes are kv_quant.h's stream over the whole row (one group); an outlier's code is there too
 * (clamped) and replaced by its fp16 value when read. scale NaN: the row held a NaN or an
 * infinity and reads back as all NaN (kv_quant.h's rule). */
#define QAQ_RECORD_HEADER 6
#define QAQ_OUTLIER_BYTES 3

/* Bytes of a record of hd values at `bits` with n_outliers outliers (0 if hd is not in
 * 1..256 or bits not in 1..8). */
size_t qaq_record_bytes(int hd, int bits, int n_outliers);
/* The same with k outliers per side (the most qaq_encode writes for that k). */
size_t qaq_record_max_bytes(int hd, int bits, int k);

typedef struct qaq_row_info {
    float lo, hi;     /* range of the non-outliers (0, 0 for a poisoned row) */
    int n_outliers;
    size_t bytes;     /* the record's size */
} qaq_row_info;

/* Encode src[hd] at `bits` with k outliers per side into dst (cap bytes). Returns the record's
 * size (> 0), KVS_EINVAL for a bad hd / bits / k, KVS_ERANGE if cap is too small. info may be
 * NULL. A row holding NaN or +-inf is stored poisoned (no outliers); finite values beyond
 * +-65504 saturate. */
int qaq_encode(void *dst, size_t cap, const float *src, int hd, int bits, int k,
               qaq_row_info *info);
/* Decode a record of len bytes into dst[hd]. Returns its size, or KVS_EFORMAT if it is not a
 * valid record for this hd (bad bits, outlier index out of range, len too short). */
int qaq_decode(const void *src, size_t len, int hd, float *dst);
/* Size of the record at src from its header (KVS_EFORMAT if len < header or bad bits). */
int qaq_record_size(const void *src, size_t len, int hd);
/* fp16 bytes / record bytes: the compression ratio of one row, scales, zero and outliers
 * included (0 if record_bytes is 0). */
double qaq_ratio(int hd, size_t record_bytes);

#endif
