/* kv_quant.h — the uniform min/max quantiser shared by the fixed-width KV formats (int8, int4,
 * int2: kv_fmt_int*.c) and the QAQ row record (qaq.h).
 *
 * A group of n values is stored as an fp16 scale s, an fp16 zero z and n codes c of `bits`
 * bits: x^ = z + c * s, c in [0, 2^bits - 1]. z is min rounded down to fp16 and s is
 * (max - z) / (2^bits - 1) rounded up to fp16, so every finite value of the group lies in
 * [z, z + (2^bits - 1) s] and is read back within s/2 of what was written (plus the fp32
 * rounding of z + c * s). Codes are rounded half up: c = floor((x - z) / s + 1/2), clamped.
 *
 * Special values (one rule for every quantised format):
 *  - a group holding a NaN or an infinity is stored "poisoned": s = NaN, and reads back as
 *    all NaN (a broken K/V row stays visibly broken, as it would in f16, where one NaN key
 *    element already makes the whole attention score NaN);
 *  - finite values beyond fp16's range (|x| > 65504) saturate to +-65504;
 *  - a constant group has s = 0 when its value is exact in fp16 (no division: the encoder
 *    uses 1/s only when s > 0), else the tiny s that covers [z, x].
 *
 * Codes are a bit stream, element i at bit i * bits, LSB first within each byte. A group of
 * 32 starts on a byte for every width, so groups are packed independently. */
#ifndef KVS_MEMORY_KV_QUANT_H
#define KVS_MEMORY_KV_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define KVQ_F16_MAX 65504.0f
/* Elements per scale/zero in the int8/int4/int2 formats. */
#define KVQ_GROUP 32

/* fp16 of x rounded towards -inf / +inf (x finite). */
uint16_t kvq_f16_down(float x);
uint16_t kvq_f16_up(float x);

/* Scale and zero (fp16 bits) of a group whose finite values span [lo, hi] (lo <= hi, both
 * within +-65504), for codes of `bits` bits (1..8). */
void kvq_params(float lo, float hi, int bits, uint16_t *scale, uint16_t *zero);

/* lo / hi of x[n] clamped to +-65504; returns 1 if x holds a NaN or an infinity (lo / hi are
 * then meaningless), else 0. */
int kvq_range(const float *x, int n, float *lo, float *hi);

/* Quantise src[n] with the given scale/zero into the bit stream at codes (which starts on a
 * byte); src must be finite and within +-65504. */
void kvq_pack(uint8_t *codes, const float *src, int n, int bits, uint16_t scale, uint16_t zero);
/* dst[i] = zero + code_i * scale for the n codes at codes (NaN everywhere if scale is NaN). */
void kvq_unpack(float *dst, const uint8_t *codes, int n, int bits, uint16_t scale, uint16_t zero);

/* Code i of a stream (tests and the QAQ record). */
unsigned kvq_code(const uint8_t *codes, int i, int bits);

/* A whole row in groups of `group` elements (the last group may be shorter), layout
 * [ng x (fp16 scale, fp16 zero)][codes, ceil(hd * bits / 8) bytes], ng = ceil(hd / group).
 * group must be a multiple of 8 (so each group starts on a byte). */
size_t kvq_row_bytes(int hd, int bits, int group);
void kvq_row_encode(void *dst, const float *src, int hd, int bits, int group);
void kvq_row_decode(float *dst, const void *src, int hd, int bits, int group);

/* The f16 bits of a quiet NaN (a poisoned group's scale). */
#define KVQ_F16_NAN ((uint16_t)0x7e00u)

#endif
