/* qaq.c — QAQ's outliers, bit widths, sigma bounds and attention window (qaq.h). */
#include "memory/qaq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "memory/kv_format.h"

#define QAQ_OUTLIER_MAX_HD 4096

int qaq_outliers_per_side(int hd, double alpha)
{
    if (!(alpha > 0) || hd < 3) return 0;
    double k = ceil(alpha / 2 * hd - 1e-9);
    int cap = (hd - 2) / 2;
    return k > cap ? cap : (int)k;
}

int qaq_outliers(const float *x, int hd, int k, int *idx, float *lo, float *hi)
{
    if (hd < 1 || hd > QAQ_OUTLIER_MAX_HD || k < 0 || 2 * k > hd - 1)
        return kvs_error(KVS_EINVAL, "qaq: %d outliers per side in a row of %d", k, hd);
    uint8_t used[QAQ_OUTLIER_MAX_HD];
    memset(used, 0, (size_t)hd);
    for (int j = 0; j < 2 * k; j++) {
        int best = -1;
        for (int i = 0; i < hd; i++) {
            if (used[i]) continue;
            if (best < 0 || (j < k ? x[i] < x[best] : x[i] > x[best])) best = i;
        }
        used[best] = 1;
        idx[j] = best;
    }
    float l = INFINITY, h = -INFINITY;
    for (int i = 0; i < hd; i++) {
        if (used[i]) continue;
        l = x[i] < l ? x[i] : l;
        h = x[i] > h ? x[i] : h;
    }
    *lo = l;
    *hi = h;
    return KVS_OK;
}

int qaq_bits_needed(double range, double sigma)
{
    if (!(range > 0) || isinf(sigma)) return 0;
    if (!(sigma > 0)) return 31;
    double q = range / (2.0 * sqrt(3.0) * sigma); /* steps needed: 2^B - 1 >= q */
    for (int b = 0; b < 31; b++)
        if (q <= (double)((1u << b) - 1u)) return b;
    return 31;
}

int qaq_pick_bits(int needed, unsigned widths)
{
    widths &= 0x1fcu; /* widths 2..8 */
    if (!widths) return -1;
    int lo = 2, hi = QAQ_MAX_BITS;
    while (!(widths & (1u << lo))) lo++;
    while (!(widths & (1u << hi))) hi--;
    if (needed >= hi) return hi;
    for (int b = needed > lo ? needed : lo; b <= hi; b++)
        if (widths & (1u << b)) return b;
    return hi;
}

double qaq_key_sigma(int64_t T, double sigma_s_max, double qnorm2)
{
    if (T < 2 || !(qnorm2 > 0)) return INFINITY;
    double t = (double)T;
    double a = t * t * t / (t - 1.0) * sigma_s_max * sigma_s_max;
    return sqrt(log1p(a) / qnorm2);
}

double qaq_value_sigma(int64_t T, double sigma_x_max, double s_t)
{
    if (T < 1 || s_t == 0) return INFINITY;
    return sigma_x_max / (sqrt((double)T) * fabs(s_t));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int qaq_qnorm2_quantile(const float *q, int n, int d, double upper, double *out)
{
    if (n < 1 || d < 1 || !(upper >= 0 && upper < 1))
        return kvs_error(KVS_EINVAL, "qaq: query norm quantile of %d queries at %g", n, upper);
    double *v = malloc(sizeof(double) * (size_t)n);
    if (!v) return kvs_error(KVS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)q[(size_t)i * d + j] * q[(size_t)i * d + j];
        v[i] = s;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int m = (int)ceil((1.0 - upper) * n - 1e-9);
    if (m < 1) m = 1;
    *out = v[m - 1];
    free(v);
    return KVS_OK;
}

int qaq_window_init(qaq_window *w, int n)
{
    memset(w, 0, sizeof *w);
    if (n < 1 || n > QAQ_WINDOW_MAX)
        return kvs_error(KVS_EINVAL, "qaq: attention window of %d (1..%d)", n, QAQ_WINDOW_MAX);
    w->n = (uint8_t)n;
    return KVS_OK;
}

void qaq_window_push(qaq_window *w, float score)
{
    w->s[w->at] = kv_f32_to_f16(score);
    w->at = (uint8_t)((w->at + 1) % w->n);
    if (w->count < w->n) w->count++;
}

int qaq_window_ready(const qaq_window *w) { return w->n > 0 && w->count >= w->n; }

float qaq_window_max(const qaq_window *w)
{
    float m = 0.0f;
    for (int i = 0; i < w->count; i++) {
        float v = fabsf(kv_f16_to_f32(w->s[i]));
        m = v > m ? v : m;
    }
    return m;
}

int qaq_key_bits(double range, int64_t T, double sigma_s_max, double qnorm2, unsigned widths)
{
    return qaq_pick_bits(qaq_bits_needed(range, qaq_key_sigma(T, sigma_s_max, qnorm2)), widths);
}

int qaq_value_bits(double range, int64_t T, double sigma_x_max, const qaq_window *w,
                   unsigned widths)
{
    if (!qaq_window_ready(w)) return qaq_pick_bits(QAQ_MAX_BITS, widths);
    double sigma = qaq_value_sigma(T, sigma_x_max, qaq_window_max(w));
    return qaq_pick_bits(qaq_bits_needed(range, sigma), widths);
}
