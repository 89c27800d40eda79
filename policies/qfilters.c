/* qfilters.c — `qfilters` (Godey et al., arXiv 2503.02812; METHODS.md): score of a key =
 * <k, u[layer][kv_head]> on the post-RoPE key, computed once when it is written; keep high.
 * Also here: the filters file (format in docs/POLICIES.md) and the calibration maths, as pure
 * functions over query vectors that `kvsieve calibrate` feeds from the forward.
 *
 * Calibration, per (layer, query head):
 *   C = sum q q^T (d x d, double, via BLAS dsyrk), s = sum q, and a reservoir sample of up to
 *   R queries (Algorithm R, deterministic per head);
 *   u = top eigenvector of C by power iteration from s / |s| (the uncentred query matrix's top
 *   right singular vector);
 *   sign: the one with more sampled queries projecting positively (sum sign(<q,u>) > 0), the
 *   paper's rule estimated on the sample; on a tie, the sign with <s,u> > 0;
 *   GQA: filter[l][kv] = mean of u over the G consecutive query heads of the group, not
 *   renormalised. */
#include "memory/policy.h"
#include "policies/qfilters.h"

#include "core/common.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the policy -------------------------------------------------------------------------- */

typedef struct {
    qf_filters *f;
    int recent_layers; /* layers [0, recent_layers) keep their newest keys instead */
} qfilters_state;

static int qfilters_create(const pol_model_info *mi, const pol_opts *opts, const char *args,
                           void **state, char *err, size_t err_size)
{
    (void)opts;
    char key[64], val[4096], path[4096] = "";
    long recent = 0;
    const char *cur = args;
    while (pol_args_next(&cur, key, sizeof key, val, sizeof val)) {
        if (!strcmp(key, "recent_layers")) {
            char *end;
            errno = 0;
            recent = strtol(val, &end, 10);
            if (errno || end == val || *end || recent < 0 || recent > mi->n_layers) {
                snprintf(err, err_size, "recent_layers must be an integer in [0, %d], got '%s'",
                         mi->n_layers, val);
                return KVS_ERANGE;
            }
            continue;
        }
        if (strcmp(key, "filters") != 0) {
            snprintf(err, err_size, "unknown option '%s' (qfilters takes filters=PATH and "
                     "recent_layers=N)", key);
            return KVS_EINVAL;
        }
        snprintf(path, sizeof path, "%s", val);
    }
    if (!path[0]) {
        snprintf(err, err_size, "needs filters=PATH: a filters file made by `kvsieve "
                 "calibrate` for this model");
        return KVS_EINVAL;
    }
    qf_filters *f;
    int rc = qf_filters_load(path, mi, &f);
    if (rc) { snprintf(err, err_size, "%s", kvs_last_error()); return rc; }
    qfilters_state *st = malloc(sizeof *st);
    if (!st) { qf_filters_free(f); snprintf(err, err_size, "out of memory"); return KVS_ENOMEM; }
    st->f = f;
    st->recent_layers = (int)recent;
    *state = st;
    return 0;
}

static void qfilters_destroy(void *state)
{
    qfilters_state *st = state;
    if (!st) return;
    qf_filters_free(st->f);
    free(st);
}

/* out[i] = <keys[i], u[layer][kv_head]>; the position (newest kept) in the first
 * recent_layers layers. */
static void qfilters_score(void *state, int layer, int kv_head, const float *keys,
                           const int32_t *pos, int n, float *out)
{
    const qfilters_state *st = state;
    if (layer < st->recent_layers) {
        for (int i = 0; i < n; i++) out[i] = (float)pos[i];
        return;
    }
    const qf_filters *f = st->f;
    const int d = f->head_dim;
    const float *u = f->u + ((size_t)layer * f->n_kv_heads + kv_head) * d;
    for (int i = 0; i < n; i++) {
        const float *k = keys + (size_t)i * d;
        float s = 0.0f;
        for (int j = 0; j < d; j++) s += k[j] * u[j];
        out[i] = s;
    }
}

/* <k, u>, with the filters handed over (device_score, API v2); with recent_layers the score
 * depends on the layer's kind, which no device kernel knows: the host scores. */
static void qfilters_device_score(void *state, pol_device_score *out)
{
    const qfilters_state *st = state;
    out->kind = st->recent_layers > 0 ? POL_SCORE_HOST : POL_SCORE_DOT;
    out->u = st->recent_layers > 0 ? NULL : st->f->u;
}

const pol_vtable pol_qfilters_vtable = {
    .version = POL_API_VERSION,
    .name = "qfilters",
    .description = "Q-Filters: score <k, u> with calibrated per-head filters (filters=PATH); "
                   "recent_layers=N: the first N layers keep their newest keys instead",
    .args_help = "filters=PATH[,recent_layers=N]",
    .create = qfilters_create,
    .destroy = qfilters_destroy,
    .score_keys = qfilters_score,
    .device_score = qfilters_device_score,
};

/* ---- filters files ----------------------------------------------------------------------- */

#define QF_MAGIC "KVSQF1\0\0"
#define QF_FORMAT_VERSION 1u
#define QF_FIXED_HEADER 40   /* bytes before the model name */
#define QF_MAX_NAME 255
#define QF_MAX_DIM 4096

static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put_u32(unsigned char *p, uint32_t v)
{ for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put_u64(unsigned char *p, uint64_t v)
{ for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint32_t get_u32(const unsigned char *p)
{ uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get_u64(const unsigned char *p)
{ uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

static size_t data_offset(size_t name_len) { return (QF_FIXED_HEADER + name_len + 3) & ~(size_t)3; }

int qf_filters_save(const char *path, const qf_filters *f)
{
    size_t name_len = strnlen(f->model_name, sizeof f->model_name);
    if (name_len > QF_MAX_NAME)
        return kvs_error(KVS_EINVAL, "model name is longer than %d bytes", QF_MAX_NAME);
    if (f->n_layers < 1 || f->n_kv_heads < 1 || f->head_dim < 1 || f->n_heads < 1 ||
        f->n_layers > QF_MAX_DIM || f->n_kv_heads > QF_MAX_DIM || f->head_dim > QF_MAX_DIM ||
        f->n_heads > QF_MAX_DIM || f->n_heads % f->n_kv_heads != 0 || f->n_tokens < 0)
        return kvs_error(KVS_EINVAL, "bad filters geometry: %d layers, %d KV heads, head dim "
                         "%d, %d query heads", f->n_layers, f->n_kv_heads, f->head_dim,
                         f->n_heads);
    size_t n_floats = (size_t)f->n_layers * f->n_kv_heads * f->head_dim;
    size_t off = data_offset(name_len), size = off + 4 * n_floats + 4;
    unsigned char *buf = calloc(size, 1);
    if (!buf) return kvs_error(KVS_ENOMEM, "out of memory writing %s", path);
    memcpy(buf, QF_MAGIC, 8);
    put_u32(buf + 8, QF_FORMAT_VERSION);
    put_u32(buf + 12, (uint32_t)f->n_layers);
    put_u32(buf + 16, (uint32_t)f->n_kv_heads);
    put_u32(buf + 20, (uint32_t)f->head_dim);
    put_u32(buf + 24, (uint32_t)f->n_heads);
    put_u32(buf + 28, (uint32_t)name_len);
    put_u64(buf + 32, (uint64_t)f->n_tokens);
    memcpy(buf + QF_FIXED_HEADER, f->model_name, name_len);
    for (size_t i = 0; i < n_floats; i++) {
        uint32_t bits;
        memcpy(&bits, &f->u[i], 4);
        put_u32(buf + off + 4 * i, bits);
    }
    put_u32(buf + size - 4, crc32_ieee(buf, size - 4));
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        int e = errno;
        free(buf);
        return kvs_error(KVS_EIO, "cannot write filters file %s: %s", path, strerror(e));
    }
    size_t wrote = fwrite(buf, 1, size, fp);
    int closed = fclose(fp);
    free(buf);
    if (wrote != size || closed != 0)
        return kvs_error(KVS_EIO, "cannot write filters file %s: short write (disk full?)",
                         path);
    return KVS_OK;
}

void qf_filters_free(qf_filters *f)
{
    if (!f) return;
    free(f->u);
    free(f);
}

int qf_filters_load(const char *path, const pol_model_info *mi, qf_filters **out)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return kvs_error(KVS_EIO, "cannot open filters file %s: %s (make one with `kvsieve "
                         "calibrate`)", path, strerror(errno));
    long fsize = -1;
    if (fseek(fp, 0, SEEK_END) == 0) fsize = ftell(fp);
    if (fsize < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return kvs_error(KVS_EIO, "cannot read filters file %s (not a regular file?)", path);
    }
    size_t size = (size_t)fsize;
    unsigned char hdr[QF_FIXED_HEADER];
    if (size < QF_FIXED_HEADER || fread(hdr, 1, QF_FIXED_HEADER, fp) != QF_FIXED_HEADER) {
        fclose(fp);
        return kvs_error(KVS_EFORMAT, "filters file %s is truncated (%zu bytes; the header "
                         "alone is %d)", path, size, QF_FIXED_HEADER);
    }
    if (memcmp(hdr, QF_MAGIC, 8) != 0) {
        fclose(fp);
        return kvs_error(KVS_EFORMAT, "%s is not a kvsieve Q-Filters file (bad magic; expected "
                         "\"KVSQF1\")", path);
    }
    uint32_t version = get_u32(hdr + 8), L = get_u32(hdr + 12), H = get_u32(hdr + 16),
             d = get_u32(hdr + 20), Hq = get_u32(hdr + 24), name_len = get_u32(hdr + 28);
    uint64_t n_tokens = get_u64(hdr + 32);
    if (version != QF_FORMAT_VERSION) {
        fclose(fp);
        return kvs_error(KVS_EFORMAT, "filters file %s has format version %u; this kvsieve "
                         "reads version %u (recalibrate)", path, version, QF_FORMAT_VERSION);
    }
    if (L < 1 || H < 1 || d < 1 || Hq < 1 || L > QF_MAX_DIM || H > QF_MAX_DIM ||
        d > QF_MAX_DIM || Hq > QF_MAX_DIM || Hq % H != 0 || name_len > QF_MAX_NAME ||
        n_tokens > (uint64_t)INT64_MAX) {
        fclose(fp);
        return kvs_error(KVS_EFORMAT, "filters file %s has a corrupt header (%u layers, %u KV "
                         "heads, head dim %u, %u query heads, name of %u bytes)", path, L, H, d,
                         Hq, name_len);
    }
    size_t n_floats = (size_t)L * H * d, off = data_offset(name_len);
    size_t expect = off + 4 * n_floats + 4;
    if (size != expect) {
        fclose(fp);
        if (size < expect)
            return kvs_error(KVS_EFORMAT, "filters file %s is truncated (%zu bytes; %u x %u x "
                             "%u filters need %zu)", path, size, L, H, d, expect);
        return kvs_error(KVS_EFORMAT, "filters file %s has %zu extra bytes after its data",
                         path, size - expect);
    }
    unsigned char *buf = malloc(size);
    if (!buf) {
        fclose(fp);
        return kvs_error(KVS_ENOMEM, "out of memory loading %s", path);
    }
    memcpy(buf, hdr, QF_FIXED_HEADER);
    size_t got = fread(buf + QF_FIXED_HEADER, 1, size - QF_FIXED_HEADER, fp);
    fclose(fp);
    if (got != size - QF_FIXED_HEADER) {
        free(buf);
        return kvs_error(KVS_EIO, "cannot read filters file %s (changed while reading?)", path);
    }
    int rc;
    for (size_t i = QF_FIXED_HEADER + name_len; i < off; i++)
        if (buf[i]) {
            free(buf);
            return kvs_error(KVS_EFORMAT, "filters file %s has a corrupt header (non-zero "
                             "padding)", path);
        }
    if (crc32_ieee(buf, size - 4) != get_u32(buf + size - 4)) {
        free(buf);
        return kvs_error(KVS_EFORMAT, "filters file %s is corrupt (checksum mismatch)", path);
    }
    qf_filters *f = calloc(1, sizeof *f);
    float *u = malloc(n_floats * sizeof *u);
    if (!f || !u) {
        free(f); free(u); free(buf);
        return kvs_error(KVS_ENOMEM, "out of memory loading %s", path);
    }
    memcpy(f->model_name, buf + QF_FIXED_HEADER, name_len);
    f->model_name[name_len] = '\0';
    f->n_layers = (int)L;
    f->n_kv_heads = (int)H;
    f->head_dim = (int)d;
    f->n_heads = (int)Hq;
    f->n_tokens = (int64_t)n_tokens;
    f->u = u;
    for (size_t i = 0; i < n_floats; i++) {
        uint32_t bits = get_u32(buf + off + 4 * i);
        memcpy(&u[i], &bits, 4);
        if (!isfinite(u[i])) {
            free(buf);
            qf_filters_free(f);
            return kvs_error(KVS_EFORMAT, "filters file %s holds a non-finite value (filter "
                             "%zu, dim %zu)", path, i / d, i % d);
        }
    }
    free(buf);
    if (mi) {
        if (mi->model_name && strcmp(mi->model_name, f->model_name) != 0) {
            rc = kvs_error(KVS_EINVAL, "filters file %s was calibrated for model '%s', not "
                           "'%s' (calibrate this model with `kvsieve calibrate`)", path,
                           f->model_name, mi->model_name);
            qf_filters_free(f);
            return rc;
        }
        if (mi->n_layers != f->n_layers || mi->n_kv_heads != f->n_kv_heads ||
            mi->head_dim != f->head_dim || mi->n_heads != f->n_heads) {
            rc = kvs_error(KVS_EINVAL, "filters file %s does not fit the model: it has %d "
                           "layers x %d KV heads x head dim %d (%d query heads); the model has "
                           "%d x %d x %d (%d)", path, f->n_layers, f->n_kv_heads, f->head_dim,
                           f->n_heads, mi->n_layers, mi->n_kv_heads, mi->head_dim, mi->n_heads);
            qf_filters_free(f);
            return rc;
        }
    }
    *out = f;
    return KVS_OK;
}

/* ---- calibration ------------------------------------------------------------------------- */

struct qf_calib {
    int L, Hq, Hkv, d, R;
    double *C;          /* [L*Hq][d][d], upper triangle accumulated */
    double *sum;        /* [L*Hq][d] */
    int64_t *n;         /* [L*Hq] queries added */
    float *res;         /* [L*Hq][R][d] reservoir sample */
    uint64_t *rng;      /* [L*Hq] */
};

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int qf_calib_create(int L, int Hq, int Hkv, int d, int reservoir, qf_calib **out)
{
    *out = NULL;
    if (L < 1 || Hq < 1 || Hkv < 1 || d < 1 || Hq % Hkv != 0 || L > QF_MAX_DIM ||
        Hq > QF_MAX_DIM || d > QF_MAX_DIM || reservoir < 0)
        return kvs_error(KVS_EINVAL, "bad calibration geometry: %d layers, %d query heads, %d "
                         "KV heads, head dim %d, reservoir %d", L, Hq, Hkv, d, reservoir);
    if (reservoir == 0) reservoir = QF_RESERVOIR_DEFAULT;
    size_t heads = (size_t)L * Hq;
    qf_calib *c = calloc(1, sizeof *c);
    if (!c) return kvs_error(KVS_ENOMEM, "out of memory for calibration");
    c->L = L; c->Hq = Hq; c->Hkv = Hkv; c->d = d; c->R = reservoir;
    c->C = kvs_calloc(heads * d * d, sizeof *c->C);
    c->sum = kvs_calloc(heads * d, sizeof *c->sum);
    c->n = kvs_calloc(heads, sizeof *c->n);
    c->res = kvs_alloc(heads * (size_t)reservoir * d * sizeof *c->res);
    c->rng = kvs_alloc(heads * sizeof *c->rng);
    if (!c->C || !c->sum || !c->n || !c->res || !c->rng) {
        qf_calib_destroy(c);
        return kvs_error(KVS_ENOMEM, "out of memory for calibration (%zu heads x %d x %d)",
                         heads, d, d);
    }
    for (size_t h = 0; h < heads; h++) c->rng[h] = 0x51f15eedull * (h + 1);
    *out = c;
    return KVS_OK;
}

void qf_calib_destroy(qf_calib *c)
{
    if (!c) return;
    kvs_free(c->C); kvs_free(c->sum); kvs_free(c->n); kvs_free(c->res); kvs_free(c->rng);
    free(c);
}

int64_t qf_calib_n_tokens(const qf_calib *c) { return c->n[0]; }

int qf_calib_add_queries(qf_calib *c, int layer, int head, const float *q, int n)
{
    if (layer < 0 || layer >= c->L || head < 0 || head >= c->Hq)
        return kvs_error(KVS_EINVAL, "calibration: layer %d / query head %d out of range "
                         "(%d layers, %d heads)", layer, head, c->L, c->Hq);
    if (n <= 0) return KVS_OK;
    const int d = c->d;
    const size_t h = (size_t)layer * c->Hq + head;
    double *Q = malloc((size_t)n * d * sizeof *Q);
    if (!Q) return kvs_error(KVS_ENOMEM, "out of memory in calibration");
    for (size_t i = 0; i < (size_t)n * d; i++) {
        if (!isfinite(q[i])) {
            free(Q);
            return kvs_error(KVS_EINVAL, "calibration: a query of layer %d head %d is not "
                             "finite", layer, head);
        }
        Q[i] = q[i];
    }
    /* C (d x d, upper) += Q^T Q, Q: [n][d] row-major. */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, n, 1.0, Q, d, 1.0,
                c->C + h * d * d, d);
    free(Q);
    double *s = c->sum + h * d;
    float *res = c->res + h * (size_t)c->R * d;
    for (int i = 0; i < n; i++) {
        const float *qi = q + (size_t)i * d;
        for (int j = 0; j < d; j++) s[j] += qi[j];
        /* Reservoir sampling (Algorithm R): query t is kept with probability R / (t + 1). */
        int64_t t = c->n[h]++;
        int64_t slot = t < c->R ? t : (int64_t)(rng_next(&c->rng[h]) % (uint64_t)(t + 1));
        if (slot < c->R) memcpy(res + slot * d, qi, (size_t)d * sizeof *qi);
    }
    return KVS_OK;
}

/* Top eigenvector of the symmetric d x d matrix C (full), by power iteration from v (in/out,
 * any non-zero start). Returns the number of iterations. */
static int power_iteration(const double *C, int d, double *v, double *w)
{
    enum { MAX_ITERS = 20000 };
    int it;
    for (it = 1; it <= MAX_ITERS; it++) {
        double norm = 0.0;
        for (int i = 0; i < d; i++) {
            double s = 0.0;
            for (int j = 0; j < d; j++) s += C[(size_t)i * d + j] * v[j];
            w[i] = s;
            norm += s * s;
        }
        norm = sqrt(norm);
        if (norm == 0.0) break; /* C v = 0: v is in the null space; keep it */
        double dot = 0.0;
        for (int i = 0; i < d; i++) {
            w[i] /= norm;
            dot += w[i] * v[i];
        }
        memcpy(v, w, (size_t)d * sizeof *v);
        if (1.0 - fabs(dot) < 1e-15) break;
    }
    return it;
}

int qf_calib_finish(qf_calib *c, float *filters, float *frac_positive)
{
    const int d = c->d, G = c->Hq / c->Hkv;
    const size_t heads = (size_t)c->L * c->Hq;
    for (size_t h = 0; h < heads; h++)
        if (c->n[h] == 0)
            return kvs_error(KVS_EINVAL, "calibration: no queries for layer %d query head %d",
                             (int)(h / c->Hq), (int)(h % c->Hq));
    double *U = kvs_calloc(heads * d, sizeof *U);
    if (!U) return kvs_error(KVS_ENOMEM, "out of memory finishing calibration");
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t h = 0; h < heads; h++) {
        double *M = malloc((size_t)d * d * sizeof *M), *w = malloc((size_t)d * sizeof *w);
        if (!M || !w) {
            free(M); free(w);
#pragma omp atomic write
            failed = 1;
            continue;
        }
        /* Full symmetric matrix from the accumulated upper triangle. */
        const double *Cu = c->C + h * d * d;
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
                M[(size_t)i * d + j] = i <= j ? Cu[(size_t)i * d + j] : Cu[(size_t)j * d + i];
        /* Start from the mean query direction (close to u when queries share a direction),
         * nudged so it is never exactly orthogonal to the top eigenvector. */
        const double *s = c->sum + h * d;
        double *v = U + h * d, ns = 0.0;
        for (int i = 0; i < d; i++) ns += s[i] * s[i];
        ns = sqrt(ns);
        for (int i = 0; i < d; i++)
            v[i] = (ns > 0.0 ? s[i] / ns : 0.0) + 1e-3 * (1.0 + (double)(i % 7)) / sqrt((double)d);
        power_iteration(M, d, v, w);
        /* Sign: majority of the sampled queries project positively; tie: <s, u> > 0. */
        const int64_t m = KVS_MIN(c->n[h], (int64_t)c->R);
        const float *res = c->res + h * (size_t)c->R * d;
        int64_t pos = 0, neg = 0;
        for (int64_t t = 0; t < m; t++) {
            double p = 0.0;
            for (int i = 0; i < d; i++) p += res[t * d + i] * v[i];
            pos += p > 0.0;
            neg += p < 0.0;
        }
        double su = 0.0;
        for (int i = 0; i < d; i++) su += s[i] * v[i];
        if (neg > pos || (neg == pos && su < 0.0)) {
            for (int i = 0; i < d; i++) v[i] = -v[i];
            int64_t tmp = pos; pos = neg; neg = tmp;
        }
        if (frac_positive) frac_positive[h] = (float)((double)pos / (double)m);
        free(M);
        free(w);
    }
    if (failed) {
        kvs_free(U);
        return kvs_error(KVS_ENOMEM, "out of memory finishing calibration");
    }
    /* GQA: each KV head's filter is the mean of its G query heads' vectors. */
    for (int l = 0; l < c->L; l++)
        for (int kv = 0; kv < c->Hkv; kv++) {
            float *f = filters + ((size_t)l * c->Hkv + kv) * d;
            for (int i = 0; i < d; i++) {
                double a = 0.0;
                for (int g = 0; g < G; g++) a += U[((size_t)l * c->Hq + kv * G + g) * d + i];
                f[i] = (float)(a / G);
            }
        }
    kvs_free(U);
    return KVS_OK;
}
