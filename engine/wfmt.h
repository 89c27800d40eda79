/* wfmt.h — weight formats as trait tables: a GGUF tensor type kept in its own blocks
 * (mmap'd, no fp32 copy), with the kernels the CPU forward needs to compute on it.
 *
 * A format knows its block geometry, how to dequantise a run of blocks to fp32 (a BLAS tile,
 * an embedding row), and how to take the dot product of one weight row with one activation
 * row: for the quantised types against activations quantised to 8 bits per block of 32
 * (wq8_block, integer dot products), for the float types against fp32 activations. Each
 * dot has a portable scalar version and, where written, AVX2 and AVX-512 VNNI versions;
 * which one runs is chosen at run time (wq_isa_*) from the CPU's features, and a test or a
 * user can force a lower one (KVSIEVE_WQ_ISA=scalar|avx2|vnni, or wq_isa_force()).
 *
 * Adding a type: one engine/wfmt_<type>.c defining `const wfmt wfmt_<type>` (the scalar dot
 * is enough; vector dots go into wq_kernels_x86.inc), and a line in wfmt.c's table. */
#ifndef KVS_WFMT_H
#define KVS_WFMT_H

#include <stddef.h>
#include <stdint.h>

#define WQ_QK 32 /* activation block: 32 elements */

/* 8-bit activation block: x[i] ~= d * q[i]; s16[h] = sum of q[16h .. 16h+15] (the integer
 * sums the formats with an offset or a min need). 40 bytes. */
typedef struct wq8_block {
    float d;
    int16_t s16[2];
    int8_t q[WQ_QK];
} wq8_block;

/* Instruction-set levels of the dot kernels, lowest first. */
typedef enum wq_isa { WQ_ISA_SCALAR = 0, WQ_ISA_AVX2 = 1, WQ_ISA_VNNI = 2, WQ_ISA_N = 3 } wq_isa;

/* out = dot(weight row w of n elements, activation row x): x is n/32 wq8_blocks for formats
 * with act_q8, else n floats. n is a multiple of the format's block size. */
typedef void (*wfmt_dot_fn)(const uint8_t *w, const void *x, int n, float *out);
/* The same for four activation rows x[0..3] (out[0..3]): the weight row is read and unpacked
 * once for all four (small batches). Optional: without one, the dot runs four times. */
typedef void (*wfmt_dot4_fn)(const uint8_t *w, const void *const *x, int n, float *out);

typedef struct wfmt {
    const char *name;   /* "Q4_1" */
    uint32_t type;      /* enum gguf_ttype */
    int blck;           /* elements per block */
    int bytes;          /* bytes per block */
    int act_q8;         /* 1: dots take wq8 activations; 0: fp32 activations */
    int blas_direct;    /* 1: rows are fp32 already (F32): BLAS reads them in place */
    wfmt_dot_fn dot[WQ_ISA_N]; /* NULL entries fall back to the next lower level */
    wfmt_dot4_fn dot4[WQ_ISA_N]; /* optional, same fallback; NULL at every level: 4 dots */
} wfmt;

/* The format of a GGUF tensor type, or NULL if kvsieve has no kernels for it. */
const wfmt *wfmt_get(uint32_t gguf_type);
/* Bytes of one row of n elements (n a multiple of the block size). */
size_t wfmt_row_bytes(const wfmt *f, int n);
/* The dot the current ISA level selects for f (never NULL: every format has a scalar dot). */
wfmt_dot_fn wfmt_dot(const wfmt *f);
/* The four-row dot the current level selects, or NULL (then: wfmt_dot four times). */
wfmt_dot4_fn wfmt_dot4(const wfmt *f);

/* Quantise n floats (n a multiple of 32) to n/32 blocks: d = max|x| / 127, q = round(x / d). */
void wq8_quantize(const float *x, wq8_block *y, int n);

/* Best level this CPU runs (cpuid: avx2+fma+f16c; avx512vnni+avx512vl). */
wq_isa wq_isa_best(void);
/* Level in use: the best, lowered by $KVSIEVE_WQ_ISA (read once) or wq_isa_force(). */
wq_isa wq_isa_current(void);
/* Force a level (clamped to the best the CPU has); returns the level now in use. Not
 * thread-safe with running kernels: call between steps (tests). */
wq_isa wq_isa_force(wq_isa level);
const char *wq_isa_name(wq_isa level);

/* The formats (wfmt_<type>.c). */
extern const wfmt wfmt_f32, wfmt_f16, wfmt_bf16, wfmt_q4_0, wfmt_q4_1, wfmt_q5_0, wfmt_q5_1,
    wfmt_q8_0, wfmt_q4_k, wfmt_q5_k, wfmt_q6_k, wfmt_q8_k;

/* Vector kernels (wq_kernels_avx2.c, wq_kernels_vnni.c; NULL-free only on x86-64). */
#define WQ_DECLARE_DOTS(sfx)                                                              \
    void wq_dot_q4_0_##sfx(const uint8_t *w, const void *x, int n, float *out);           \
    void wq_dot_q4_1_##sfx(const uint8_t *w, const void *x, int n, float *out);           \
    void wq_dot_q8_0_##sfx(const uint8_t *w, const void *x, int n, float *out);           \
    void wq_dot_q4_k_##sfx(const uint8_t *w, const void *x, int n, float *out);           \
    void wq_dot_q6_k_##sfx(const uint8_t *w, const void *x, int n, float *out);           \
    void wq_dot4_q4_0_##sfx(const uint8_t *w, const void *const *x, int n, float *out);   \
    void wq_dot4_q4_1_##sfx(const uint8_t *w, const void *const *x, int n, float *out);   \
    void wq_dot4_q8_0_##sfx(const uint8_t *w, const void *const *x, int n, float *out);   \
    void wq_dot4_q4_k_##sfx(const uint8_t *w, const void *const *x, int n, float *out);   \
    void wq_dot4_q6_k_##sfx(const uint8_t *w, const void *const *x, int n, float *out);
#if defined(__x86_64__)
#define WQ_HAVE_X86 1
WQ_DECLARE_DOTS(avx2)
WQ_DECLARE_DOTS(vnni)
#define WQ_X86(fn) fn
#else
#define WQ_HAVE_X86 0
#define WQ_X86(fn) NULL
#endif

/* Shared scalar helpers for the format files. */
float wq_f16(const uint8_t *p); /* little-endian fp16 at p (unaligned) -> fp32 */
/* The eight 6-bit scales and mins of a Q4_K / Q5_K super-block. */
void wq_k_scale_min(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]);

#endif
