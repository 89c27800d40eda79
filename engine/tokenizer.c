/* tokenizer.c — byte-level BPE from GGUF metadata: special-token split, pre-tokenizer regex
 * written out by hand, GPT-2 byte mapping, BPE by merge rank, UTF-8-safe streaming decode.
 *
 * Data layout: every token's raw bytes (byte-level mapping already reversed) sit in one buffer,
 * found by id through piece_off and by bytes through an open-addressing hash table. Merges are
 * a second hash table from the id pair (left, right) to (rank, merged id), so BPE never touches
 * strings. */
#include "tokenizer.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---- Unicode character classes ---------------------------------------------------------- */

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SPACE = 3 };

/* Ranges of \p{L} (class 1) and \p{N} (class 2), Unicode 16.0 (what the Oniguruma build inside
 * Hugging Face tokenizers uses), sorted and disjoint: {first | class << 24, last}. */
#define R(lo, hi, c) {(uint32_t)(lo) | ((uint32_t)(c) << 24), (uint32_t)(hi)}
/* BEGIN GENERATED UNICODE TABLE: tests/reference/make_tokenizer_fixture.py --unicode-table */
/* Unicode 16.0.0, 818 ranges */
static const uint32_t uni_ranges[][2] = {
    R(0xAA,0xAA,1), R(0xB2,0xB3,2), R(0xB5,0xB5,1), R(0xB9,0xB9,2), R(0xBA,0xBA,1), R(0xBC,0xBE,2),
    R(0xC0,0xD6,1), R(0xD8,0xF6,1), R(0xF8,0x2C1,1), R(0x2C6,0x2D1,1), R(0x2E0,0x2E4,1),
    R(0x2EC,0x2EC,1), R(0x2EE,0x2EE,1), R(0x370,0x374,1), R(0x376,0x377,1), R(0x37A,0x37D,1),
    R(0x37F,0x37F,1), R(0x386,0x386,1), R(0x388,0x38A,1), R(0x38C,0x38C,1), R(0x38E,0x3A1,1),
    R(0x3A3,0x3F5,1), R(0x3F7,0x481,1), R(0x48A,0x52F,1), R(0x531,0x556,1), R(0x559,0x559,1),
    R(0x560,0x588,1), R(0x5D0,0x5EA,1), R(0x5EF,0x5F2,1), R(0x620,0x64A,1), R(0x660,0x669,2),
    R(0x66E,0x66F,1), R(0x671,0x6D3,1), R(0x6D5,0x6D5,1), R(0x6E5,0x6E6,1), R(0x6EE,0x6EF,1),
    R(0x6F0,0x6F9,2), R(0x6FA,0x6FC,1), R(0x6FF,0x6FF,1), R(0x710,0x710,1), R(0x712,0x72F,1),
    R(0x74D,0x7A5,1), R(0x7B1,0x7B1,1), R(0x7C0,0x7C9,2), R(0x7CA,0x7EA,1), R(0x7F4,0x7F5,1),
    R(0x7FA,0x7FA,1), R(0x800,0x815,1), R(0x81A,0x81A,1), R(0x824,0x824,1), R(0x828,0x828,1),
    R(0x840,0x858,1), R(0x860,0x86A,1), R(0x870,0x887,1), R(0x889,0x88E,1), R(0x8A0,0x8C9,1),
    R(0x904,0x939,1), R(0x93D,0x93D,1), R(0x950,0x950,1), R(0x958,0x961,1), R(0x966,0x96F,2),
    R(0x971,0x980,1), R(0x985,0x98C,1), R(0x98F,0x990,1), R(0x993,0x9A8,1), R(0x9AA,0x9B0,1),
    R(0x9B2,0x9B2,1), R(0x9B6,0x9B9,1), R(0x9BD,0x9BD,1), R(0x9CE,0x9CE,1), R(0x9DC,0x9DD,1),
    R(0x9DF,0x9E1,1), R(0x9E6,0x9EF,2), R(0x9F0,0x9F1,1), R(0x9F4,0x9F9,2), R(0x9FC,0x9FC,1),
    R(0xA05,0xA0A,1), R(0xA0F,0xA10,1), R(0xA13,0xA28,1), R(0xA2A,0xA30,1), R(0xA32,0xA33,1),
    R(0xA35,0xA36,1), R(0xA38,0xA39,1), R(0xA59,0xA5C,1), R(0xA5E,0xA5E,1), R(0xA66,0xA6F,2),
    R(0xA72,0xA74,1), R(0xA85,0xA8D,1), R(0xA8F,0xA91,1), R(0xA93,0xAA8,1), R(0xAAA,0xAB0,1),
    R(0xAB2,0xAB3,1), R(0xAB5,0xAB9,1), R(0xABD,0xABD,1), R(0xAD0,0xAD0,1), R(0xAE0,0xAE1,1),
    R(0xAE6,0xAEF,2), R(0xAF9,0xAF9,1), R(0xB05,0xB0C,1), R(0xB0F,0xB10,1), R(0xB13,0xB28,1),
    R(0xB2A,0xB30,1), R(0xB32,0xB33,1), R(0xB35,0xB39,1), R(0xB3D,0xB3D,1), R(0xB5C,0xB5D,1),
    R(0xB5F,0xB61,1), R(0xB66,0xB6F,2), R(0xB71,0xB71,1), R(0xB72,0xB77,2), R(0xB83,0xB83,1),
    R(0xB85,0xB8A,1), R(0xB8E,0xB90,1), R(0xB92,0xB95,1), R(0xB99,0xB9A,1), R(0xB9C,0xB9C,1),
    R(0xB9E,0xB9F,1), R(0xBA3,0xBA4,1), R(0xBA8,0xBAA,1), R(0xBAE,0xBB9,1), R(0xBD0,0xBD0,1),
    R(0xBE6,0xBF2,2), R(0xC05,0xC0C,1), R(0xC0E,0xC10,1), R(0xC12,0xC28,1), R(0xC2A,0xC39,1),
    R(0xC3D,0xC3D,1), R(0xC58,0xC5A,1), R(0xC5D,0xC5D,1), R(0xC60,0xC61,1), R(0xC66,0xC6F,2),
    R(0xC78,0xC7E,2), R(0xC80,0xC80,1), R(0xC85,0xC8C,1), R(0xC8E,0xC90,1), R(0xC92,0xCA8,1),
    R(0xCAA,0xCB3,1), R(0xCB5,0xCB9,1), R(0xCBD,0xCBD,1), R(0xCDD,0xCDE,1), R(0xCE0,0xCE1,1),
    R(0xCE6,0xCEF,2), R(0xCF1,0xCF2,1), R(0xD04,0xD0C,1), R(0xD0E,0xD10,1), R(0xD12,0xD3A,1),
    R(0xD3D,0xD3D,1), R(0xD4E,0xD4E,1), R(0xD54,0xD56,1), R(0xD58,0xD5E,2), R(0xD5F,0xD61,1),
    R(0xD66,0xD78,2), R(0xD7A,0xD7F,1), R(0xD85,0xD96,1), R(0xD9A,0xDB1,1), R(0xDB3,0xDBB,1),
    R(0xDBD,0xDBD,1), R(0xDC0,0xDC6,1), R(0xDE6,0xDEF,2), R(0xE01,0xE30,1), R(0xE32,0xE33,1),
    R(0xE40,0xE46,1), R(0xE50,0xE59,2), R(0xE81,0xE82,1), R(0xE84,0xE84,1), R(0xE86,0xE8A,1),
    R(0xE8C,0xEA3,1), R(0xEA5,0xEA5,1), R(0xEA7,0xEB0,1), R(0xEB2,0xEB3,1), R(0xEBD,0xEBD,1),
    R(0xEC0,0xEC4,1), R(0xEC6,0xEC6,1), R(0xED0,0xED9,2), R(0xEDC,0xEDF,1), R(0xF00,0xF00,1),
    R(0xF20,0xF33,2), R(0xF40,0xF47,1), R(0xF49,0xF6C,1), R(0xF88,0xF8C,1), R(0x1000,0x102A,1),
    R(0x103F,0x103F,1), R(0x1040,0x1049,2), R(0x1050,0x1055,1), R(0x105A,0x105D,1),
    R(0x1061,0x1061,1), R(0x1065,0x1066,1), R(0x106E,0x1070,1), R(0x1075,0x1081,1),
    R(0x108E,0x108E,1), R(0x1090,0x1099,2), R(0x10A0,0x10C5,1), R(0x10C7,0x10C7,1),
    R(0x10CD,0x10CD,1), R(0x10D0,0x10FA,1), R(0x10FC,0x1248,1), R(0x124A,0x124D,1),
    R(0x1250,0x1256,1), R(0x1258,0x1258,1), R(0x125A,0x125D,1), R(0x1260,0x1288,1),
    R(0x128A,0x128D,1), R(0x1290,0x12B0,1), R(0x12B2,0x12B5,1), R(0x12B8,0x12BE,1),
    R(0x12C0,0x12C0,1), R(0x12C2,0x12C5,1), R(0x12C8,0x12D6,1), R(0x12D8,0x1310,1),
    R(0x1312,0x1315,1), R(0x1318,0x135A,1), R(0x1369,0x137C,2), R(0x1380,0x138F,1),
    R(0x13A0,0x13F5,1), R(0x13F8,0x13FD,1), R(0x1401,0x166C,1), R(0x166F,0x167F,1),
    R(0x1681,0x169A,1), R(0x16A0,0x16EA,1), R(0x16EE,0x16F0,2), R(0x16F1,0x16F8,1),
    R(0x1700,0x1711,1), R(0x171F,0x1731,1), R(0x1740,0x1751,1), R(0x1760,0x176C,1),
    R(0x176E,0x1770,1), R(0x1780,0x17B3,1), R(0x17D7,0x17D7,1), R(0x17DC,0x17DC,1),
    R(0x17E0,0x17E9,2), R(0x17F0,0x17F9,2), R(0x1810,0x1819,2), R(0x1820,0x1878,1),
    R(0x1880,0x1884,1), R(0x1887,0x18A8,1), R(0x18AA,0x18AA,1), R(0x18B0,0x18F5,1),
    R(0x1900,0x191E,1), R(0x1946,0x194F,2), R(0x1950,0x196D,1), R(0x1970,0x1974,1),
    R(0x1980,0x19AB,1), R(0x19B0,0x19C9,1), R(0x19D0,0x19DA,2), R(0x1A00,0x1A16,1),
    R(0x1A20,0x1A54,1), R(0x1A80,0x1A89,2), R(0x1A90,0x1A99,2), R(0x1AA7,0x1AA7,1),
    R(0x1B05,0x1B33,1), R(0x1B45,0x1B4C,1), R(0x1B50,0x1B59,2), R(0x1B83,0x1BA0,1),
    R(0x1BAE,0x1BAF,1), R(0x1BB0,0x1BB9,2), R(0x1BBA,0x1BE5,1), R(0x1C00,0x1C23,1),
    R(0x1C40,0x1C49,2), R(0x1C4D,0x1C4F,1), R(0x1C50,0x1C59,2), R(0x1C5A,0x1C7D,1),
    R(0x1C80,0x1C8A,1), R(0x1C90,0x1CBA,1), R(0x1CBD,0x1CBF,1), R(0x1CE9,0x1CEC,1),
    R(0x1CEE,0x1CF3,1), R(0x1CF5,0x1CF6,1), R(0x1CFA,0x1CFA,1), R(0x1D00,0x1DBF,1),
    R(0x1E00,0x1F15,1), R(0x1F18,0x1F1D,1), R(0x1F20,0x1F45,1), R(0x1F48,0x1F4D,1),
    R(0x1F50,0x1F57,1), R(0x1F59,0x1F59,1), R(0x1F5B,0x1F5B,1), R(0x1F5D,0x1F5D,1),
    R(0x1F5F,0x1F7D,1), R(0x1F80,0x1FB4,1), R(0x1FB6,0x1FBC,1), R(0x1FBE,0x1FBE,1),
    R(0x1FC2,0x1FC4,1), R(0x1FC6,0x1FCC,1), R(0x1FD0,0x1FD3,1), R(0x1FD6,0x1FDB,1),
    R(0x1FE0,0x1FEC,1), R(0x1FF2,0x1FF4,1), R(0x1FF6,0x1FFC,1), R(0x2070,0x2070,2),
    R(0x2071,0x2071,1), R(0x2074,0x2079,2), R(0x207F,0x207F,1), R(0x2080,0x2089,2),
    R(0x2090,0x209C,1), R(0x2102,0x2102,1), R(0x2107,0x2107,1), R(0x210A,0x2113,1),
    R(0x2115,0x2115,1), R(0x2119,0x211D,1), R(0x2124,0x2124,1), R(0x2126,0x2126,1),
    R(0x2128,0x2128,1), R(0x212A,0x212D,1), R(0x212F,0x2139,1), R(0x213C,0x213F,1),
    R(0x2145,0x2149,1), R(0x214E,0x214E,1), R(0x2150,0x2182,2), R(0x2183,0x2184,1),
    R(0x2185,0x2189,2), R(0x2460,0x249B,2), R(0x24EA,0x24FF,2), R(0x2776,0x2793,2),
    R(0x2C00,0x2CE4,1), R(0x2CEB,0x2CEE,1), R(0x2CF2,0x2CF3,1), R(0x2CFD,0x2CFD,2),
    R(0x2D00,0x2D25,1), R(0x2D27,0x2D27,1), R(0x2D2D,0x2D2D,1), R(0x2D30,0x2D67,1),
    R(0x2D6F,0x2D6F,1), R(0x2D80,0x2D96,1), R(0x2DA0,0x2DA6,1), R(0x2DA8,0x2DAE,1),
    R(0x2DB0,0x2DB6,1), R(0x2DB8,0x2DBE,1), R(0x2DC0,0x2DC6,1), R(0x2DC8,0x2DCE,1),
    R(0x2DD0,0x2DD6,1), R(0x2DD8,0x2DDE,1), R(0x2E2F,0x2E2F,1), R(0x3005,0x3006,1),
    R(0x3007,0x3007,2), R(0x3021,0x3029,2), R(0x3031,0x3035,1), R(0x3038,0x303A,2),
    R(0x303B,0x303C,1), R(0x3041,0x3096,1), R(0x309D,0x309F,1), R(0x30A1,0x30FA,1),
    R(0x30FC,0x30FF,1), R(0x3105,0x312F,1), R(0x3131,0x318E,1), R(0x3192,0x3195,2),
    R(0x31A0,0x31BF,1), R(0x31F0,0x31FF,1), R(0x3220,0x3229,2), R(0x3248,0x324F,2),
    R(0x3251,0x325F,2), R(0x3280,0x3289,2), R(0x32B1,0x32BF,2), R(0x3400,0x4DBF,1),
    R(0x4E00,0xA48C,1), R(0xA4D0,0xA4FD,1), R(0xA500,0xA60C,1), R(0xA610,0xA61F,1),
    R(0xA620,0xA629,2), R(0xA62A,0xA62B,1), R(0xA640,0xA66E,1), R(0xA67F,0xA69D,1),
    R(0xA6A0,0xA6E5,1), R(0xA6E6,0xA6EF,2), R(0xA717,0xA71F,1), R(0xA722,0xA788,1),
    R(0xA78B,0xA7CD,1), R(0xA7D0,0xA7D1,1), R(0xA7D3,0xA7D3,1), R(0xA7D5,0xA7DC,1),
    R(0xA7F2,0xA801,1), R(0xA803,0xA805,1), R(0xA807,0xA80A,1), R(0xA80C,0xA822,1),
    R(0xA830,0xA835,2), R(0xA840,0xA873,1), R(0xA882,0xA8B3,1), R(0xA8D0,0xA8D9,2),
    R(0xA8F2,0xA8F7,1), R(0xA8FB,0xA8FB,1), R(0xA8FD,0xA8FE,1), R(0xA900,0xA909,2),
    R(0xA90A,0xA925,1), R(0xA930,0xA946,1), R(0xA960,0xA97C,1), R(0xA984,0xA9B2,1),
    R(0xA9CF,0xA9CF,1), R(0xA9D0,0xA9D9,2), R(0xA9E0,0xA9E4,1), R(0xA9E6,0xA9EF,1),
    R(0xA9F0,0xA9F9,2), R(0xA9FA,0xA9FE,1), R(0xAA00,0xAA28,1), R(0xAA40,0xAA42,1),
    R(0xAA44,0xAA4B,1), R(0xAA50,0xAA59,2), R(0xAA60,0xAA76,1), R(0xAA7A,0xAA7A,1),
    R(0xAA7E,0xAAAF,1), R(0xAAB1,0xAAB1,1), R(0xAAB5,0xAAB6,1), R(0xAAB9,0xAABD,1),
    R(0xAAC0,0xAAC0,1), R(0xAAC2,0xAAC2,1), R(0xAADB,0xAADD,1), R(0xAAE0,0xAAEA,1),
    R(0xAAF2,0xAAF4,1), R(0xAB01,0xAB06,1), R(0xAB09,0xAB0E,1), R(0xAB11,0xAB16,1),
    R(0xAB20,0xAB26,1), R(0xAB28,0xAB2E,1), R(0xAB30,0xAB5A,1), R(0xAB5C,0xAB69,1),
    R(0xAB70,0xABE2,1), R(0xABF0,0xABF9,2), R(0xAC00,0xD7A3,1), R(0xD7B0,0xD7C6,1),
    R(0xD7CB,0xD7FB,1), R(0xF900,0xFA6D,1), R(0xFA70,0xFAD9,1), R(0xFB00,0xFB06,1),
    R(0xFB13,0xFB17,1), R(0xFB1D,0xFB1D,1), R(0xFB1F,0xFB28,1), R(0xFB2A,0xFB36,1),
    R(0xFB38,0xFB3C,1), R(0xFB3E,0xFB3E,1), R(0xFB40,0xFB41,1), R(0xFB43,0xFB44,1),
    R(0xFB46,0xFBB1,1), R(0xFBD3,0xFD3D,1), R(0xFD50,0xFD8F,1), R(0xFD92,0xFDC7,1),
    R(0xFDF0,0xFDFB,1), R(0xFE70,0xFE74,1), R(0xFE76,0xFEFC,1), R(0xFF10,0xFF19,2),
    R(0xFF21,0xFF3A,1), R(0xFF41,0xFF5A,1), R(0xFF66,0xFFBE,1), R(0xFFC2,0xFFC7,1),
    R(0xFFCA,0xFFCF,1), R(0xFFD2,0xFFD7,1), R(0xFFDA,0xFFDC,1), R(0x10000,0x1000B,1),
    R(0x1000D,0x10026,1), R(0x10028,0x1003A,1), R(0x1003C,0x1003D,1), R(0x1003F,0x1004D,1),
    R(0x10050,0x1005D,1), R(0x10080,0x100FA,1), R(0x10107,0x10133,2), R(0x10140,0x10178,2),
    R(0x1018A,0x1018B,2), R(0x10280,0x1029C,1), R(0x102A0,0x102D0,1), R(0x102E1,0x102FB,2),
    R(0x10300,0x1031F,1), R(0x10320,0x10323,2), R(0x1032D,0x10340,1), R(0x10341,0x10341,2),
    R(0x10342,0x10349,1), R(0x1034A,0x1034A,2), R(0x10350,0x10375,1), R(0x10380,0x1039D,1),
    R(0x103A0,0x103C3,1), R(0x103C8,0x103CF,1), R(0x103D1,0x103D5,2), R(0x10400,0x1049D,1),
    R(0x104A0,0x104A9,2), R(0x104B0,0x104D3,1), R(0x104D8,0x104FB,1), R(0x10500,0x10527,1),
    R(0x10530,0x10563,1), R(0x10570,0x1057A,1), R(0x1057C,0x1058A,1), R(0x1058C,0x10592,1),
    R(0x10594,0x10595,1), R(0x10597,0x105A1,1), R(0x105A3,0x105B1,1), R(0x105B3,0x105B9,1),
    R(0x105BB,0x105BC,1), R(0x105C0,0x105F3,1), R(0x10600,0x10736,1), R(0x10740,0x10755,1),
    R(0x10760,0x10767,1), R(0x10780,0x10785,1), R(0x10787,0x107B0,1), R(0x107B2,0x107BA,1),
    R(0x10800,0x10805,1), R(0x10808,0x10808,1), R(0x1080A,0x10835,1), R(0x10837,0x10838,1),
    R(0x1083C,0x1083C,1), R(0x1083F,0x10855,1), R(0x10858,0x1085F,2), R(0x10860,0x10876,1),
    R(0x10879,0x1087F,2), R(0x10880,0x1089E,1), R(0x108A7,0x108AF,2), R(0x108E0,0x108F2,1),
    R(0x108F4,0x108F5,1), R(0x108FB,0x108FF,2), R(0x10900,0x10915,1), R(0x10916,0x1091B,2),
    R(0x10920,0x10939,1), R(0x10980,0x109B7,1), R(0x109BC,0x109BD,2), R(0x109BE,0x109BF,1),
    R(0x109C0,0x109CF,2), R(0x109D2,0x109FF,2), R(0x10A00,0x10A00,1), R(0x10A10,0x10A13,1),
    R(0x10A15,0x10A17,1), R(0x10A19,0x10A35,1), R(0x10A40,0x10A48,2), R(0x10A60,0x10A7C,1),
    R(0x10A7D,0x10A7E,2), R(0x10A80,0x10A9C,1), R(0x10A9D,0x10A9F,2), R(0x10AC0,0x10AC7,1),
    R(0x10AC9,0x10AE4,1), R(0x10AEB,0x10AEF,2), R(0x10B00,0x10B35,1), R(0x10B40,0x10B55,1),
    R(0x10B58,0x10B5F,2), R(0x10B60,0x10B72,1), R(0x10B78,0x10B7F,2), R(0x10B80,0x10B91,1),
    R(0x10BA9,0x10BAF,2), R(0x10C00,0x10C48,1), R(0x10C80,0x10CB2,1), R(0x10CC0,0x10CF2,1),
    R(0x10CFA,0x10CFF,2), R(0x10D00,0x10D23,1), R(0x10D30,0x10D39,2), R(0x10D40,0x10D49,2),
    R(0x10D4A,0x10D65,1), R(0x10D6F,0x10D85,1), R(0x10E60,0x10E7E,2), R(0x10E80,0x10EA9,1),
    R(0x10EB0,0x10EB1,1), R(0x10EC2,0x10EC4,1), R(0x10F00,0x10F1C,1), R(0x10F1D,0x10F26,2),
    R(0x10F27,0x10F27,1), R(0x10F30,0x10F45,1), R(0x10F51,0x10F54,2), R(0x10F70,0x10F81,1),
    R(0x10FB0,0x10FC4,1), R(0x10FC5,0x10FCB,2), R(0x10FE0,0x10FF6,1), R(0x11003,0x11037,1),
    R(0x11052,0x1106F,2), R(0x11071,0x11072,1), R(0x11075,0x11075,1), R(0x11083,0x110AF,1),
    R(0x110D0,0x110E8,1), R(0x110F0,0x110F9,2), R(0x11103,0x11126,1), R(0x11136,0x1113F,2),
    R(0x11144,0x11144,1), R(0x11147,0x11147,1), R(0x11150,0x11172,1), R(0x11176,0x11176,1),
    R(0x11183,0x111B2,1), R(0x111C1,0x111C4,1), R(0x111D0,0x111D9,2), R(0x111DA,0x111DA,1),
    R(0x111DC,0x111DC,1), R(0x111E1,0x111F4,2), R(0x11200,0x11211,1), R(0x11213,0x1122B,1),
    R(0x1123F,0x11240,1), R(0x11280,0x11286,1), R(0x11288,0x11288,1), R(0x1128A,0x1128D,1),
    R(0x1128F,0x1129D,1), R(0x1129F,0x112A8,1), R(0x112B0,0x112DE,1), R(0x112F0,0x112F9,2),
    R(0x11305,0x1130C,1), R(0x1130F,0x11310,1), R(0x11313,0x11328,1), R(0x1132A,0x11330,1),
    R(0x11332,0x11333,1), R(0x11335,0x11339,1), R(0x1133D,0x1133D,1), R(0x11350,0x11350,1),
    R(0x1135D,0x11361,1), R(0x11380,0x11389,1), R(0x1138B,0x1138B,1), R(0x1138E,0x1138E,1),
    R(0x11390,0x113B5,1), R(0x113B7,0x113B7,1), R(0x113D1,0x113D1,1), R(0x113D3,0x113D3,1),
    R(0x11400,0x11434,1), R(0x11447,0x1144A,1), R(0x11450,0x11459,2), R(0x1145F,0x11461,1),
    R(0x11480,0x114AF,1), R(0x114C4,0x114C5,1), R(0x114C7,0x114C7,1), R(0x114D0,0x114D9,2),
    R(0x11580,0x115AE,1), R(0x115D8,0x115DB,1), R(0x11600,0x1162F,1), R(0x11644,0x11644,1),
    R(0x11650,0x11659,2), R(0x11680,0x116AA,1), R(0x116B8,0x116B8,1), R(0x116C0,0x116C9,2),
    R(0x116D0,0x116E3,2), R(0x11700,0x1171A,1), R(0x11730,0x1173B,2), R(0x11740,0x11746,1),
    R(0x11800,0x1182B,1), R(0x118A0,0x118DF,1), R(0x118E0,0x118F2,2), R(0x118FF,0x11906,1),
    R(0x11909,0x11909,1), R(0x1190C,0x11913,1), R(0x11915,0x11916,1), R(0x11918,0x1192F,1),
    R(0x1193F,0x1193F,1), R(0x11941,0x11941,1), R(0x11950,0x11959,2), R(0x119A0,0x119A7,1),
    R(0x119AA,0x119D0,1), R(0x119E1,0x119E1,1), R(0x119E3,0x119E3,1), R(0x11A00,0x11A00,1),
    R(0x11A0B,0x11A32,1), R(0x11A3A,0x11A3A,1), R(0x11A50,0x11A50,1), R(0x11A5C,0x11A89,1),
    R(0x11A9D,0x11A9D,1), R(0x11AB0,0x11AF8,1), R(0x11BC0,0x11BE0,1), R(0x11BF0,0x11BF9,2),
    R(0x11C00,0x11C08,1), R(0x11C0A,0x11C2E,1), R(0x11C40,0x11C40,1), R(0x11C50,0x11C6C,2),
    R(0x11C72,0x11C8F,1), R(0x11D00,0x11D06,1), R(0x11D08,0x11D09,1), R(0x11D0B,0x11D30,1),
    R(0x11D46,0x11D46,1), R(0x11D50,0x11D59,2), R(0x11D60,0x11D65,1), R(0x11D67,0x11D68,1),
    R(0x11D6A,0x11D89,1), R(0x11D98,0x11D98,1), R(0x11DA0,0x11DA9,2), R(0x11EE0,0x11EF2,1),
    R(0x11F02,0x11F02,1), R(0x11F04,0x11F10,1), R(0x11F12,0x11F33,1), R(0x11F50,0x11F59,2),
    R(0x11FB0,0x11FB0,1), R(0x11FC0,0x11FD4,2), R(0x12000,0x12399,1), R(0x12400,0x1246E,2),
    R(0x12480,0x12543,1), R(0x12F90,0x12FF0,1), R(0x13000,0x1342F,1), R(0x13441,0x13446,1),
    R(0x13460,0x143FA,1), R(0x14400,0x14646,1), R(0x16100,0x1611D,1), R(0x16130,0x16139,2),
    R(0x16800,0x16A38,1), R(0x16A40,0x16A5E,1), R(0x16A60,0x16A69,2), R(0x16A70,0x16ABE,1),
    R(0x16AC0,0x16AC9,2), R(0x16AD0,0x16AED,1), R(0x16B00,0x16B2F,1), R(0x16B40,0x16B43,1),
    R(0x16B50,0x16B59,2), R(0x16B5B,0x16B61,2), R(0x16B63,0x16B77,1), R(0x16B7D,0x16B8F,1),
    R(0x16D40,0x16D6C,1), R(0x16D70,0x16D79,2), R(0x16E40,0x16E7F,1), R(0x16E80,0x16E96,2),
    R(0x16F00,0x16F4A,1), R(0x16F50,0x16F50,1), R(0x16F93,0x16F9F,1), R(0x16FE0,0x16FE1,1),
    R(0x16FE3,0x16FE3,1), R(0x17000,0x187F7,1), R(0x18800,0x18CD5,1), R(0x18CFF,0x18D08,1),
    R(0x1AFF0,0x1AFF3,1), R(0x1AFF5,0x1AFFB,1), R(0x1AFFD,0x1AFFE,1), R(0x1B000,0x1B122,1),
    R(0x1B132,0x1B132,1), R(0x1B150,0x1B152,1), R(0x1B155,0x1B155,1), R(0x1B164,0x1B167,1),
    R(0x1B170,0x1B2FB,1), R(0x1BC00,0x1BC6A,1), R(0x1BC70,0x1BC7C,1), R(0x1BC80,0x1BC88,1),
    R(0x1BC90,0x1BC99,1), R(0x1CCF0,0x1CCF9,2), R(0x1D2C0,0x1D2D3,2), R(0x1D2E0,0x1D2F3,2),
    R(0x1D360,0x1D378,2), R(0x1D400,0x1D454,1), R(0x1D456,0x1D49C,1), R(0x1D49E,0x1D49F,1),
    R(0x1D4A2,0x1D4A2,1), R(0x1D4A5,0x1D4A6,1), R(0x1D4A9,0x1D4AC,1), R(0x1D4AE,0x1D4B9,1),
    R(0x1D4BB,0x1D4BB,1), R(0x1D4BD,0x1D4C3,1), R(0x1D4C5,0x1D505,1), R(0x1D507,0x1D50A,1),
    R(0x1D50D,0x1D514,1), R(0x1D516,0x1D51C,1), R(0x1D51E,0x1D539,1), R(0x1D53B,0x1D53E,1),
    R(0x1D540,0x1D544,1), R(0x1D546,0x1D546,1), R(0x1D54A,0x1D550,1), R(0x1D552,0x1D6A5,1),
    R(0x1D6A8,0x1D6C0,1), R(0x1D6C2,0x1D6DA,1), R(0x1D6DC,0x1D6FA,1), R(0x1D6FC,0x1D714,1),
    R(0x1D716,0x1D734,1), R(0x1D736,0x1D74E,1), R(0x1D750,0x1D76E,1), R(0x1D770,0x1D788,1),
    R(0x1D78A,0x1D7A8,1), R(0x1D7AA,0x1D7C2,1), R(0x1D7C4,0x1D7CB,1), R(0x1D7CE,0x1D7FF,2),
    R(0x1DF00,0x1DF1E,1), R(0x1DF25,0x1DF2A,1), R(0x1E030,0x1E06D,1), R(0x1E100,0x1E12C,1),
    R(0x1E137,0x1E13D,1), R(0x1E140,0x1E149,2), R(0x1E14E,0x1E14E,1), R(0x1E290,0x1E2AD,1),
    R(0x1E2C0,0x1E2EB,1), R(0x1E2F0,0x1E2F9,2), R(0x1E4D0,0x1E4EB,1), R(0x1E4F0,0x1E4F9,2),
    R(0x1E5D0,0x1E5ED,1), R(0x1E5F0,0x1E5F0,1), R(0x1E5F1,0x1E5FA,2), R(0x1E7E0,0x1E7E6,1),
    R(0x1E7E8,0x1E7EB,1), R(0x1E7ED,0x1E7EE,1), R(0x1E7F0,0x1E7FE,1), R(0x1E800,0x1E8C4,1),
    R(0x1E8C7,0x1E8CF,2), R(0x1E900,0x1E943,1), R(0x1E94B,0x1E94B,1), R(0x1E950,0x1E959,2),
    R(0x1EC71,0x1ECAB,2), R(0x1ECAD,0x1ECAF,2), R(0x1ECB1,0x1ECB4,2), R(0x1ED01,0x1ED2D,2),
    R(0x1ED2F,0x1ED3D,2), R(0x1EE00,0x1EE03,1), R(0x1EE05,0x1EE1F,1), R(0x1EE21,0x1EE22,1),
    R(0x1EE24,0x1EE24,1), R(0x1EE27,0x1EE27,1), R(0x1EE29,0x1EE32,1), R(0x1EE34,0x1EE37,1),
    R(0x1EE39,0x1EE39,1), R(0x1EE3B,0x1EE3B,1), R(0x1EE42,0x1EE42,1), R(0x1EE47,0x1EE47,1),
    R(0x1EE49,0x1EE49,1), R(0x1EE4B,0x1EE4B,1), R(0x1EE4D,0x1EE4F,1), R(0x1EE51,0x1EE52,1),
    R(0x1EE54,0x1EE54,1), R(0x1EE57,0x1EE57,1), R(0x1EE59,0x1EE59,1), R(0x1EE5B,0x1EE5B,1),
    R(0x1EE5D,0x1EE5D,1), R(0x1EE5F,0x1EE5F,1), R(0x1EE61,0x1EE62,1), R(0x1EE64,0x1EE64,1),
    R(0x1EE67,0x1EE6A,1), R(0x1EE6C,0x1EE72,1), R(0x1EE74,0x1EE77,1), R(0x1EE79,0x1EE7C,1),
    R(0x1EE7E,0x1EE7E,1), R(0x1EE80,0x1EE89,1), R(0x1EE8B,0x1EE9B,1), R(0x1EEA1,0x1EEA3,1),
    R(0x1EEA5,0x1EEA9,1), R(0x1EEAB,0x1EEBB,1), R(0x1F100,0x1F10C,2), R(0x1FBF0,0x1FBF9,2),
    R(0x20000,0x2A6DF,1), R(0x2A700,0x2B739,1), R(0x2B740,0x2B81D,1), R(0x2B820,0x2CEA1,1),
    R(0x2CEB0,0x2EBE0,1), R(0x2EBF0,0x2EE5D,1), R(0x2F800,0x2FA1D,1), R(0x30000,0x3134A,1),
    R(0x31350,0x323AF,1),
};
/* END GENERATED UNICODE TABLE */
#undef R

static int is_space_cp(uint32_t c)
{
    /* Unicode White_Space (what \s matches in the reference regex). */
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int uni_class(uint32_t c)
{
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CL_LETTER;
        if (c >= '0' && c <= '9') return CL_NUMBER;
        return is_space_cp(c) ? CL_SPACE : CL_OTHER;
    }
    if (is_space_cp(c)) return CL_SPACE;
    size_t lo = 0, hi = sizeof uni_ranges / sizeof uni_ranges[0];
    while (lo < hi) { /* first range whose last >= c */
        size_t mid = (lo + hi) / 2;
        if (uni_ranges[mid][1] < c) lo = mid + 1; else hi = mid;
    }
    if (lo < sizeof uni_ranges / sizeof uni_ranges[0] && (uni_ranges[lo][0] & 0xFFFFFF) <= c)
        return (int)(uni_ranges[lo][0] >> 24);
    return CL_OTHER;
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

enum { U8_INVALID = 0, U8_VALID = 1, U8_INCOMPLETE = 2 };

/* Classify the sequence at b[0..avail): U8_VALID (len = its length), U8_INVALID (len = the
 * maximal invalid subpart, >= 1: replaced by one U+FFFD, as Python and Rust do) or U8_INCOMPLETE
 * (the avail bytes are a valid prefix that more bytes may complete). avail >= 1. */
static int utf8_seq(const uint8_t *b, size_t avail, size_t *len, uint32_t *cp)
{
    uint8_t c = b[0];
    if (c < 0x80) { *len = 1; *cp = c; return U8_VALID; }
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) { need = 1; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else { *len = 1; return U8_INVALID; }
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= avail) { *len = avail; return U8_INCOMPLETE; }
        uint8_t d = b[k];
        if (d < lo || d > hi) { *len = (size_t)k; return U8_INVALID; }
        v = (v << 6) | (d & 0x3F);
        lo = 0x80; hi = 0xBF;
    }
    *len = (size_t)need + 1;
    *cp = v;
    return U8_VALID;
}

/* One character of input text for the pre-tokenizer: invalid bytes are one "other" each. */
typedef struct { uint32_t cp; int cls; size_t len; } uchar;

static uchar uchar_at(const uint8_t *s, size_t i, size_t end)
{
    uchar u = {0, CL_OTHER, 1};
    if (utf8_seq(s + i, end - i, &u.len, &u.cp) != U8_VALID) { u.len = 1; u.cp = 0xFFFFFFFF; }
    else u.cls = uni_class(u.cp);
    return u;
}

/* ---- GPT-2 byte <-> unicode mapping ------------------------------------------------------ */

/* GPT-2 spells every byte as a printable character: the printable Latin-1 bytes ('!'..'~',
 * U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves, the other 68 bytes in order become
 * U+0100, U+0101, ... (so ' ' is U+0120 'Ġ' and '\n' is U+010A 'Ċ'). */
static int byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* Inverse of the mapping: code point -> byte, or -1 if cp is not in the byte alphabet. */
static int bytelevel_cp_to_byte(uint32_t cp)
{
    if (cp < 0x100) return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    int n = 0;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b) && n++ == (int)(cp - 0x100)) return b;
    return -1;
}

/* Raw bytes of a byte-level spelled string into dst (capacity >= len). If any character is
 * outside the byte alphabet the string is taken verbatim (as Hugging Face does). Returns the
 * raw length; *all_mapped tells which case happened. */
static size_t bytelevel_decode(const int16_t *inv, const char *s, size_t len, char *dst,
                               bool *all_mapped)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t l;
        uint32_t cp;
        if (utf8_seq((const uint8_t *)s + i, len - i, &l, &cp) != U8_VALID || cp >= 0x144 ||
            inv[cp] < 0) {
            memcpy(dst, s, len);
            *all_mapped = false;
            return len;
        }
        dst[n++] = (char)inv[cp];
        i += l;
    }
    *all_mapped = true;
    return n;
}

/* ---- the context ------------------------------------------------------------------------- */

enum { PRE_GPT2 = 0, PRE_SMOLLM = 1, PRE_QWEN2 = 2, PRE_LLAMA3 = 3 };
enum { MODEL_BPE = 0, MODEL_SPM = 1 }; /* tokenizer.ggml.model gpt2 / llama */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

struct tok_ctx {
    int model;            /* MODEL_BPE or MODEL_SPM */
    int n_vocab;
    uint8_t *type;        /* [n_vocab] GGUF token type (1 normal, 3 control, 4 user-defined) */
    uint32_t *piece_off;  /* [n_vocab + 1] offsets of each token's raw bytes in piece_buf */
    char *piece_buf;
    size_t max_piece;     /* longest raw token, bytes */

    int32_t *vocab_ht;    /* raw bytes -> id, open addressing, -1 = empty */
    uint32_t vocab_mask;

    uint64_t *pair_key;   /* (left << 32 | right) + 1, 0 = empty */
    uint32_t *pair_rank;
    int32_t *pair_id;
    uint32_t pair_mask;

    int32_t byte_id[256]; /* the single-byte token of each byte (SPM: its <0xXX> token) */
    int32_t unk;          /* SPM: the unknown token, -1 if none */
    int add_space_prefix; /* SPM: prepend "▁" to the text (tokenizer.ggml.add_space_prefix) */
    int strip_lead;       /* decoding drops one leading space of the text (SPM's prefix) */

    int32_t *special;     /* ids of control/user tokens, grouped by first byte, longest first */
    int32_t special_at[257]; /* special[special_at[b] .. special_at[b+1]) start with byte b */
    int n_user;           /* user-defined tokens among them (matched even without parse_special) */

    int pre;
    int ignore_merges;    /* llama-bpe: a piece that is a token is not merged up from bytes */
    int32_t bos, eos, eot, eom, im_start, im_end, endoftext, eot_id, end_of_text;
    int chat;             /* CHAT_*: the kind of tokenizer.chat_template */
    char chat_head[48];   /* CHAT_UNKNOWN: the template's start, for the error message */
    int add_bos;
    char *default_system; /* NUL-terminated, NULL if the template has none */
};

/* Tokens matched whole in the text: control and unknown ones (<|im_end|>, <s>, <unk>) with
 * parse_special, user-defined ones (<think>) always, as llama.cpp and Hugging Face do. */
static int is_special_type(int type)
{
    return type == TT_CONTROL || type == TT_USER || type == TT_UNKNOWN;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= (uint8_t)s[i]; h *= 1099511628211ULL; }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t k)
{
    k *= 0x9E3779B97F4A7C15ULL;
    return k ^ (k >> 31);
}

static uint32_t table_mask_for(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return (uint32_t)(cap - 1);
}

static const char *piece_ptr(const tok_ctx *t, int32_t id, size_t *len)
{
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->piece_buf + t->piece_off[id];
}

static int32_t vocab_lookup(const tok_ctx *t, const char *s, size_t n)
{
    uint32_t i = (uint32_t)hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_ht[i];
        if (id < 0) return -1;
        size_t l;
        const char *p = piece_ptr(t, id, &l);
        if (l == n && memcmp(p, s, n) == 0) return id;
    }
}

static void vocab_insert(tok_ctx *t, int32_t id)
{
    size_t n;
    const char *s = piece_ptr(t, id, &n);
    uint32_t i = (uint32_t)hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        int32_t o = t->vocab_ht[i];
        if (o < 0) { t->vocab_ht[i] = id; return; }
        size_t l;
        const char *p = piece_ptr(t, o, &l);
        if (l == n && memcmp(p, s, n) == 0) { t->vocab_ht[i] = id; return; } /* later wins */
    }
}

/* Rank and result of merging (a, b); returns 0 if the pair is not a merge. */
static int pair_lookup(const tok_ctx *t, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t i = (uint32_t)hash_pair(key) & t->pair_mask;
    for (;; i = (i + 1) & t->pair_mask) {
        uint64_t k = t->pair_key[i];
        if (k == 0) return 0;
        if (k == key) { *rank = t->pair_rank[i]; *id = t->pair_id[i]; return 1; }
    }
}

static void pair_insert(tok_ctx *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t i = (uint32_t)hash_pair(key) & t->pair_mask;
    for (;; i = (i + 1) & t->pair_mask) {
        if (t->pair_key[i] == key) return; /* keep the first (lowest) rank */
        if (t->pair_key[i] == 0) {
            t->pair_key[i] = key; t->pair_rank[i] = rank; t->pair_id[i] = id;
            return;
        }
    }
}

void tok_destroy(tok_ctx *t)
{
    if (!t) return;
    kvs_free(t->type);
    kvs_free(t->piece_off);
    kvs_free(t->piece_buf);
    kvs_free(t->vocab_ht);
    kvs_free(t->pair_key);
    kvs_free(t->pair_rank);
    kvs_free(t->pair_id);
    kvs_free(t->special);
    free(t->default_system);
    free(t);
}

/* Pre-tokenizer names as tokenizer.ggml.pre spells them; "default" (llama.cpp's name for files
 * that name no special pre-tokenizer) is GPT-2's. */
static const struct { const char *name; int pre; } PRE_NAMES[] = {
    {"gpt2", PRE_GPT2}, {"default", PRE_GPT2}, {"smollm", PRE_SMOLLM}, {"qwen2", PRE_QWEN2},
    {"llama-bpe", PRE_LLAMA3},
};
#define PRE_SUPPORTED "gpt2 (or default), smollm, qwen2, llama-bpe"

static int pre_from_name(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof PRE_NAMES / sizeof PRE_NAMES[0]; i++)
        if (strlen(PRE_NAMES[i].name) == len && memcmp(PRE_NAMES[i].name, name, len) == 0)
            return PRE_NAMES[i].pre;
    return -1;
}

static void set_pre(tok_ctx *t, int pre)
{
    t->pre = pre;
    t->ignore_merges = pre == PRE_LLAMA3;
}

int tok_set_pre(tok_ctx *t, const char *name)
{
    if (!t) return kvs_error(KVS_EINVAL, "tok_set_pre: no tokenizer");
    if (t->model != MODEL_BPE)
        return kvs_error(KVS_EUNSUPPORTED, "a SentencePiece tokenizer has no pre-tokenizer to "
                         "set (asked for '%s')", name ? name : "(null)");
    int p = name ? pre_from_name(name, strlen(name)) : -1;
    if (p < 0)
        return kvs_error(KVS_EUNSUPPORTED, "pre-tokenizer '%s' is not supported (supported: "
                         PRE_SUPPORTED ")", name ? name : "(null)");
    set_pre(t, p);
    return 0;
}

const char *tok_pre_name(const tok_ctx *t)
{
    if (t->model != MODEL_BPE) return "none";
    for (size_t i = 0; i < sizeof PRE_NAMES / sizeof PRE_NAMES[0]; i++)
        if (PRE_NAMES[i].pre == t->pre) return PRE_NAMES[i].name;
    return "gpt2";
}

/* Optional token-id key: -1 if absent, error if present but out of range. */
static int read_id(const gguf_ctx *g, const char *key, int n_vocab, int32_t *out)
{
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    *out = -1;
    if (rc == KVS_ENOTFOUND) return 0;
    if (rc) return rc; /* the reader's message names the key and the type */
    if (v >= (uint32_t)n_vocab)
        return kvs_error(KVS_EFORMAT, "GGUF key %s = %u is outside the vocabulary of %d tokens",
                         key, v, n_vocab);
    *out = (int32_t)v;
    return 0;
}

/* Chat templates kvsieve renders, recognised in tokenizer.chat_template by their markers:
 * ChatML (<|im_start|>role\n...<|im_end|>\n: Qwen2.5, SmolLM2) and Llama 3's
 * (<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>, contents trimmed). Llama 3.1's
 * and later templates (a dated system preamble, tool calls) and every other template are
 * CHAT_UNKNOWN: tok_chat_prompt refuses them rather than guess. */
enum { CHAT_NONE = 0, CHAT_CHATML = 1, CHAT_LLAMA3 = 2, CHAT_UNKNOWN = 3 };

static int contains(const char *s, size_t n, const char *what)
{
    size_t w = strlen(what);
    for (size_t i = 0; i + w <= n; i++)
        if (memcmp(s + i, what, w) == 0) return 1;
    return 0;
}

static int template_kind(const char *tpl, size_t len, char *head, size_t hcap)
{
    if (contains(tpl, len, "<|im_start|>") && contains(tpl, len, "<|im_end|>")) return CHAT_CHATML;
    if (contains(tpl, len, "<|start_header_id|>") && contains(tpl, len, "<|eot_id|>") &&
        !contains(tpl, len, "Cutting Knowledge Date") && !contains(tpl, len, "tools"))
        return CHAT_LLAMA3;
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < hcap; i++) /* printable ASCII, for the message */
        head[n++] = tpl[i] >= 0x20 && tpl[i] < 0x7F ? tpl[i] : ' ';
    head[n] = 0;
    return CHAT_UNKNOWN;
}

/* The default system message of a ChatML template: the literal text between
 * "<|im_start|>system\n" and "<|im_end|>" when the template writes one out. */
static char *template_default_system(const char *tpl, size_t len)
{
    static const char head[] = "<|im_start|>system";
    for (size_t i = 0; i + sizeof head - 1 <= len; i++) {
        if (memcmp(tpl + i, head, sizeof head - 1) != 0) continue;
        size_t j = i + sizeof head - 1;
        if (j < len && tpl[j] == '\n') j += 1;
        else if (j + 1 < len && tpl[j] == '\\' && tpl[j + 1] == 'n') j += 2;
        else continue;
        size_t k = j;
        while (k + 10 <= len && memcmp(tpl + k, "<|im_end|>", 10) != 0) {
            char c = tpl[k];
            if (c == '\'' || c == '"' || c == '{' || c == '}' || c == '\\') break;
            k++;
        }
        if (k + 10 > len || memcmp(tpl + k, "<|im_end|>", 10) != 0 || k == j) continue;
        char *s = malloc(k - j + 1);
        if (!s) return NULL;
        memcpy(s, tpl + j, k - j);
        s[k - j] = 0;
        return s;
    }
    return NULL;
}

/* ---- SentencePiece (tokenizer.ggml.model = llama) ----------------------------------------- */

/* Raw bytes of an SPM token into dst: a byte token "<0xXX>" is that byte, every other token its
 * text with "▁" (U+2581) as a space. Returns the length. */
static size_t spm_piece(int type, const char *s, size_t len, char *dst)
{
    if (type == TT_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        unsigned v;
        char hex[3] = {s[3], s[4], 0};
        char *end;
        v = (unsigned)strtoul(hex, &end, 16);
        if (*end == 0) { dst[0] = (char)v; return 1; }
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (i + 2 < len && (uint8_t)s[i] == 0xE2 && (uint8_t)s[i + 1] == 0x96 &&
            (uint8_t)s[i + 2] == 0x81) {
            dst[n++] = ' ';
            i += 3;
        } else {
            dst[n++] = s[i++];
        }
    }
    return n;
}

/* The vocabulary as the file spells it (with "▁", "<0xXX>"), for building merges. */
typedef struct {
    const char **str;
    size_t *len;
    int32_t *ht;
    uint32_t mask;
} spelled;

static int32_t spelled_find(const spelled *v, const char *s, size_t n)
{
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & v->mask;; i = (i + 1) & v->mask) {
        int32_t id = v->ht[i];
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(v->str[id], s, n) == 0) return id;
    }
}

typedef struct { float score; int32_t ll, lr, l, r, id; uint32_t seq; } spm_merge;

static int merge_by_ids(const void *a, const void *b)
{
    const spm_merge *x = a, *y = b;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

/* Best first: higher score of the merged token, then longer left piece, longer right piece
 * (in characters), then the order found. */
static int merge_by_rank(const void *a, const void *b)
{
    const spm_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->ll != y->ll) return x->ll > y->ll ? -1 : 1;
    if (x->lr != y->lr) return x->lr > y->lr ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static size_t utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((uint8_t)s[i] & 0xC0) != 0x80;
    return c;
}

/* Merges of an SPM vocabulary. The file's tokenizer.ggml.merges when it has them; else the
 * ones its scores imply, as Hugging Face derives them (transformers' generate_merges): every
 * split of every token into two tokens is a merge, ranked by merge_by_rank. */
static int spm_merges(tok_ctx *t, const gguf_ctx *g, const spelled *v)
{
    int et;
    uint64_t nm = 0, ns;
    int rc;
    int from_file = gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &nm) == 0;
    const char *scores = NULL; /* float32, not necessarily aligned */
    if (from_file) {
        if (et != GGUF_VT_STRING)
            return kvs_error(KVS_EFORMAT, "tokenizer.ggml.merges must be a string array");
    } else {
        rc = gguf_get_arr_info(g, "tokenizer.ggml.scores", &et, &ns);
        if (rc == KVS_ENOTFOUND)
            return kvs_error(KVS_ENOTFOUND, "the GGUF has neither tokenizer.ggml.scores nor "
                             "tokenizer.ggml.merges: a llama (SentencePiece) tokenizer needs one");
        const void *data;
        if (rc || et != GGUF_VT_FLOAT32 || ns != (uint64_t)t->n_vocab ||
            gguf_get_arr_data(g, "tokenizer.ggml.scores", &data))
            return kvs_error(KVS_EFORMAT, "tokenizer.ggml.scores must be a float32 array with "
                             "one entry per token (%d)", t->n_vocab);
        scores = data;
    }
    size_t cap = 1024, n = 0;
    spm_merge *m = kvs_alloc(cap * sizeof *m);
    if (!m) return KVS_ENOMEM;
    if (from_file) {
        for (uint64_t i = 0; i < nm; i++) {
            const char *s;
            size_t sl;
            if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &sl))) goto out;
            const char *sp = memchr(s, ' ', sl);
            if (!sp) continue;
            size_t la = (size_t)(sp - s);
            int32_t l = spelled_find(v, s, la), r = spelled_find(v, sp + 1, sl - la - 1);
            if (l < 0 || r < 0 || la + v->len[r] > 4096) continue;
            char buf[4096];
            memcpy(buf, s, la);
            memcpy(buf + la, sp + 1, sl - la - 1);
            int32_t id = spelled_find(v, buf, sl - 1);
            if (id < 0) continue;
            if (n == cap) {
                spm_merge *nm2 = kvs_alloc(2 * cap * sizeof *m);
                if (!nm2) { rc = KVS_ENOMEM; goto out; }
                memcpy(nm2, m, n * sizeof *m);
                kvs_free(m);
                m = nm2;
                cap *= 2;
            }
            m[n++] = (spm_merge){0, 0, 0, l, r, id, (uint32_t)i};
        }
    } else {
        for (int32_t id = 0; id < t->n_vocab; id++) {
            const char *s = v->str[id];
            size_t sl = v->len[id], first = n;
            if (spelled_find(v, s, sl) != id) continue; /* a later duplicate stands for it */
            for (size_t k = 1; k < sl; k++) {
                if (((uint8_t)s[k] & 0xC0) == 0x80) continue; /* split between characters */
                int32_t l = spelled_find(v, s, k), r = spelled_find(v, s + k, sl - k);
                if (l < 0 || r < 0) continue;
                if (n == cap) {
                    spm_merge *nm2 = kvs_alloc(2 * cap * sizeof *m);
                    if (!nm2) { rc = KVS_ENOMEM; goto out; }
                    memcpy(nm2, m, n * sizeof *m);
                    kvs_free(m);
                    m = nm2;
                    cap *= 2;
                }
                float sc;
                memcpy(&sc, scores + 4 * (size_t)id, 4);
                m[n++] = (spm_merge){sc, (int32_t)utf8_count(s, k),
                                     (int32_t)utf8_count(s + k, sl - k), l, r, id, 0};
            }
            qsort(m + first, n - first, sizeof *m, merge_by_ids);
        }
        for (size_t i = 0; i < n; i++) m[i].seq = (uint32_t)i;
        qsort(m, n, sizeof *m, merge_by_rank);
    }
    t->pair_mask = table_mask_for(n);
    t->pair_key = kvs_calloc((size_t)t->pair_mask + 1, sizeof *t->pair_key);
    t->pair_rank = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_rank);
    t->pair_id = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_id);
    if (!t->pair_key || !t->pair_rank || !t->pair_id) { rc = KVS_ENOMEM; goto out; }
    for (size_t i = 0; i < n; i++) pair_insert(t, m[i].l, m[i].r, (uint32_t)i, m[i].id);
    rc = 0;
out:
    kvs_free(m);
    return rc;
}

/* The SPM parts of the context: byte tokens, <unk>, the prefix flag and the merges. */
static int spm_load(tok_ctx *t, const gguf_ctx *g)
{
    int rc;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int32_t id = t->n_vocab - 1; id >= 0; id--) { /* the first of duplicates wins */
        size_t l;
        const char *p = piece_ptr(t, id, &l);
        if (t->type[id] == TT_BYTE && l == 1) t->byte_id[(uint8_t)p[0]] = id;
    }
    if ((rc = read_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk))) return rc;
    for (int32_t id = 0; id < t->n_vocab && t->unk < 0; id++)
        if (t->type[id] == TT_UNKNOWN) t->unk = id;
    int flag = 1;
    rc = gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &flag);
    if (rc && rc != KVS_ENOTFOUND) return rc;
    t->add_space_prefix = rc == KVS_ENOTFOUND || flag;
    t->strip_lead = t->add_space_prefix;

    spelled v = {0};
    v.str = kvs_alloc((size_t)t->n_vocab * sizeof *v.str);
    v.len = kvs_alloc((size_t)t->n_vocab * sizeof *v.len);
    v.mask = table_mask_for((size_t)t->n_vocab);
    v.ht = kvs_alloc(((size_t)v.mask + 1) * sizeof *v.ht);
    if (!v.str || !v.len || !v.ht) { rc = KVS_ENOMEM; goto out; }
    memset(v.ht, 0xFF, ((size_t)v.mask + 1) * sizeof *v.ht);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)id, &v.str[id],
                                   &v.len[id])))
            goto out;
        uint32_t i = (uint32_t)hash_bytes(v.str[id], v.len[id]) & v.mask;
        for (;; i = (i + 1) & v.mask) { /* later duplicates win, as in a Python dict */
            int32_t o = v.ht[i];
            if (o < 0 || (v.len[o] == v.len[id] && memcmp(v.str[o], v.str[id], v.len[id]) == 0)) {
                v.ht[i] = id;
                break;
            }
        }
    }
    rc = spm_merges(t, g, &v);
out:
    kvs_free(v.str);
    kvs_free(v.len);
    kvs_free(v.ht);
    return rc;
}

int tok_create_from_gguf(const gguf_ctx *g, tok_ctx **out)
{
    if (!out) return kvs_error(KVS_EINVAL, "tok_create_from_gguf: out is NULL");
    *out = NULL;
    if (!g) return kvs_error(KVS_EINVAL, "tok_create_from_gguf: no GGUF given");

    const char *s;
    size_t sl;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &s, &sl);
    if (rc == KVS_ENOTFOUND)
        return kvs_error(KVS_ENOTFOUND, "the GGUF has no tokenizer.ggml.model: it carries no "
                         "tokenizer");
    if (rc) return rc;
    int model;
    if (sl == 4 && memcmp(s, "gpt2", 4) == 0) model = MODEL_BPE;
    else if (sl == 5 && memcmp(s, "llama", 5) == 0) model = MODEL_SPM;
    else
        return kvs_error(KVS_EUNSUPPORTED, "tokenizer model '%.*s' is not supported: only gpt2 "
                         "(byte-level BPE) and llama (SentencePiece) tokenizers are",
                         (int)KVS_MIN(sl, 64), s);
    int pre = PRE_GPT2; /* no key: plain GPT-2, as Hugging Face falls back to */
    rc = model == MODEL_BPE ? gguf_get_str(g, "tokenizer.ggml.pre", &s, &sl) : KVS_ENOTFOUND;
    if (rc == 0) {
        pre = pre_from_name(s, sl);
        if (pre < 0)
            return kvs_error(KVS_EUNSUPPORTED, "pre-tokenizer '%.*s' (tokenizer.ggml.pre) is not "
                             "supported; supported: " PRE_SUPPORTED, (int)KVS_MIN(sl, 64), s);
    } else if (rc != KVS_ENOTFOUND) {
        return rc;
    }

    int et;
    uint64_t n;
    rc = gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n);
    if (rc == KVS_ENOTFOUND)
        return kvs_error(KVS_ENOTFOUND, "the GGUF has no tokenizer.ggml.tokens: no vocabulary");
    if (rc || et != GGUF_VT_STRING || n == 0 || n > (uint64_t)INT32_MAX / 2)
        return kvs_error(KVS_EFORMAT, "tokenizer.ggml.tokens must be a non-empty string array");

    tok_ctx *t = calloc(1, sizeof *t);
    if (!t) return kvs_error(KVS_ENOMEM, "out of memory");
    t->model = model;
    t->n_vocab = (int)n;
    t->unk = -1;
    set_pre(t, pre);
    int16_t inv[0x144];
    for (uint32_t c = 0; c < 0x144; c++) inv[c] = (int16_t)bytelevel_cp_to_byte(c);

    /* Token types (optional: all normal without them). */
    t->type = kvs_calloc(n, 1);
    t->piece_off = kvs_calloc(n + 1, sizeof *t->piece_off);
    if (!t->type || !t->piece_off) { rc = KVS_ENOMEM; goto fail; }
    memset(t->type, TT_NORMAL, n);
    uint64_t nt;
    if (gguf_get_arr_info(g, "tokenizer.ggml.token_type", &et, &nt) == 0) {
        const void *data;
        if ((et != GGUF_VT_INT32 && et != GGUF_VT_UINT32) || nt != n ||
            gguf_get_arr_data(g, "tokenizer.ggml.token_type", &data)) {
            rc = kvs_error(KVS_EFORMAT, "tokenizer.ggml.token_type must be an int32 array with "
                           "one entry per token (%llu)", (unsigned long long)n);
            goto fail;
        }
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, (const char *)data + 4 * i, 4);
            t->type[i] = (uint8_t)(v >= 1 && v <= 6 ? v : TT_NORMAL);
        }
    }

    /* Raw bytes of every token. */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &sl))) goto fail;
        total += sl;
    }
    if (total > UINT32_MAX) { rc = kvs_error(KVS_EFORMAT, "vocabulary text too large"); goto fail; }
    t->piece_buf = kvs_alloc(total + 1);
    if (!t->piece_buf) { rc = KVS_ENOMEM; goto fail; }
    size_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &sl);
        bool mapped;
        size_t l;
        if (model == MODEL_SPM) {
            l = spm_piece(t->type[i], s, sl, t->piece_buf + pos);
        } else if (is_special_type(t->type[i])) {
            memcpy(t->piece_buf + pos, s, sl); /* special tokens decode to their text */
            l = sl;
        } else {
            l = bytelevel_decode(inv, s, sl, t->piece_buf + pos, &mapped);
        }
        t->piece_off[i] = (uint32_t)pos;
        pos += l;
        if (l > t->max_piece) t->max_piece = l;
    }
    t->piece_off[n] = (uint32_t)pos;

    t->vocab_mask = table_mask_for(n);
    t->vocab_ht = kvs_alloc(((size_t)t->vocab_mask + 1) * sizeof *t->vocab_ht);
    if (!t->vocab_ht) { rc = KVS_ENOMEM; goto fail; }
    memset(t->vocab_ht, 0xFF, ((size_t)t->vocab_mask + 1) * sizeof *t->vocab_ht);
    for (uint64_t i = 0; i < n; i++)
        if (!(model == MODEL_SPM && t->type[i] == TT_BYTE)) vocab_insert(t, (int32_t)i);
    if (model == MODEL_SPM) {
        if ((rc = spm_load(t, g))) goto fail;
        goto specials;
    }

    /* Bytes never seen in training may have no token (SmolLM2 lacks 21, e.g. 0x04 and
     * 0xF5..0xFF): such bytes are dropped from the input, as Hugging Face does without an
     * unknown token. */
    int n_bytes = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = vocab_lookup(t, &c, 1);
        n_bytes += t->byte_id[b] >= 0;
    }
    if (n_bytes < 128) {
        rc = kvs_error(KVS_EFORMAT, "the vocabulary has tokens for only %d of the 256 bytes: not "
                       "a byte-level BPE vocabulary", n_bytes);
        goto fail;
    }

    /* Merges: "left right" in the byte-level spelling, rank = position in the list. */
    uint64_t nm;
    rc = gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &nm);
    if (rc == KVS_ENOTFOUND) {
        rc = kvs_error(KVS_ENOTFOUND, "the GGUF has no tokenizer.ggml.merges: a gpt2 tokenizer "
                       "needs its BPE merges");
        goto fail;
    }
    if (rc || et != GGUF_VT_STRING || nm > (uint64_t)INT32_MAX / 4) {
        rc = kvs_error(KVS_EFORMAT, "tokenizer.ggml.merges must be a string array");
        goto fail;
    }
    t->pair_mask = table_mask_for(nm);
    t->pair_key = kvs_calloc((size_t)t->pair_mask + 1, sizeof *t->pair_key);
    t->pair_rank = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_rank);
    t->pair_id = kvs_alloc(((size_t)t->pair_mask + 1) * sizeof *t->pair_id);
    char *tmp = malloc(4 * t->max_piece + 4);
    if (!t->pair_key || !t->pair_rank || !t->pair_id || !tmp) {
        free(tmp);
        rc = kvs_error(KVS_ENOMEM, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < nm; i++) {
        if ((rc = gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &sl))) {
            free(tmp);
            goto fail;
        }
        const char *sp = memchr(s, ' ', sl);
        if (!sp || sp == s || sp + 1 == s + sl) continue;
        size_t la = (size_t)(sp - s), lb = sl - la - 1;
        if (la > 2 * t->max_piece || lb > 2 * t->max_piece) continue; /* cannot be tokens */
        bool ma, mb;
        size_t ra = bytelevel_decode(inv, s, la, tmp, &ma);
        size_t rb = ra + bytelevel_decode(inv, sp + 1, lb, tmp + ra, &mb);
        if (!ma || !mb || rb > t->max_piece) continue; /* no token can be the result */
        int32_t a = vocab_lookup(t, tmp, ra), b = vocab_lookup(t, tmp + ra, rb - ra);
        int32_t ab = vocab_lookup(t, tmp, rb);
        if (a < 0 || b < 0 || ab < 0) continue; /* a merge of unknown tokens is never used */
        pair_insert(t, a, b, (uint32_t)i, ab);
    }
    free(tmp);

specials:;
    /* Special tokens, matched whole in the text when parse_special is on: grouped by first
     * byte, longest first within a group (leftmost-longest matching). */
    int n_special = 0;
    for (uint64_t i = 0; i < n; i++)
        if (is_special_type(t->type[i]) && t->piece_off[i + 1] > t->piece_off[i]) {
            n_special++;
            t->n_user += t->type[i] == TT_USER;
        }
    int32_t *found = kvs_alloc((size_t)(n_special ? n_special : 1) * sizeof *found);
    t->special = kvs_alloc((size_t)(n_special ? n_special : 1) * sizeof *t->special);
    if (!found || !t->special) { kvs_free(found); rc = KVS_ENOMEM; goto fail; }
    n_special = 0;
    for (uint64_t i = 0; i < n; i++)
        if (is_special_type(t->type[i]) && t->piece_off[i + 1] > t->piece_off[i])
            found[n_special++] = (int32_t)i;
    int k = 0;
    for (int b = 0; b < 256; b++) {
        t->special_at[b] = k;
        int first = k;
        for (int f = 0; f < n_special; f++) {
            size_t l;
            const char *p = piece_ptr(t, found[f], &l);
            if ((uint8_t)p[0] != b) continue;
            int j = k++;
            while (j > first) { /* insertion by length, descending */
                size_t lj;
                piece_ptr(t, t->special[j - 1], &lj);
                if (lj >= l) break;
                t->special[j] = t->special[j - 1];
                j--;
            }
            t->special[j] = found[f];
        }
    }
    kvs_free(found);
    t->special_at[256] = k;

    if ((rc = read_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos)) ||
        (rc = read_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos)) ||
        (rc = read_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot)) ||
        (rc = read_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->eom)))
        goto fail;
    int flag = 0;
    rc = gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag);
    if (rc && rc != KVS_ENOTFOUND) goto fail;
    t->add_bos = rc == 0 && flag;
    t->im_start = vocab_lookup(t, "<|im_start|>", 12);
    t->im_end = vocab_lookup(t, "<|im_end|>", 10);
    t->endoftext = vocab_lookup(t, "<|endoftext|>", 13);
    t->eot_id = vocab_lookup(t, "<|eot_id|>", 10);
    t->end_of_text = vocab_lookup(t, "<|end_of_text|>", 15);
    rc = gguf_get_str(g, "tokenizer.chat_template", &s, &sl);
    if (rc && rc != KVS_ENOTFOUND) goto fail;
    t->chat = rc == 0 ? template_kind(s, sl, t->chat_head, sizeof t->chat_head)
                      : t->im_start >= 0 && t->im_end >= 0 ? CHAT_CHATML : CHAT_NONE;
    if (rc == 0 && t->chat == CHAT_CHATML) t->default_system = template_default_system(s, sl);
    rc = 0;
    *out = t;
    return 0;
fail:
    if (rc == KVS_ENOMEM) kvs_error(KVS_ENOMEM, "out of memory building the tokenizer");
    tok_destroy(t);
    return rc;
}

int tok_n_vocab(const tok_ctx *t) { return t->n_vocab; }
int32_t tok_bos(const tok_ctx *t) { return t->bos; }
int32_t tok_eos(const tok_ctx *t) { return t->eos; }
int tok_add_bos(const tok_ctx *t) { return t->add_bos; }

int tok_is_eog(const tok_ctx *t, int32_t id)
{
    if (id < 0) return 0;
    return id == t->eos || id == t->eot || id == t->eom || id == t->im_end ||
           id == t->endoftext || id == t->eot_id || id == t->end_of_text;
}

int32_t tok_find(const tok_ctx *t, const char *piece)
{
    if (!t || !piece) return -1;
    return vocab_lookup(t, piece, strlen(piece));
}

int tok_piece(const tok_ctx *t, int32_t id, const char **bytes, size_t *len)
{
    if (id < 0 || id >= t->n_vocab)
        return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary of %d tokens", id,
                         t->n_vocab);
    *bytes = piece_ptr(t, id, len);
    return 0;
}

/* ---- encoding ---------------------------------------------------------------------------- */

typedef struct {
    const tok_ctx *t;
    int32_t *ids;
    int cap;
    int64_t n;          /* ids produced so far (may exceed cap) */
    /* BPE scratch, grown to the longest word seen: one symbol per byte of the word. */
    size_t scap;
    int32_t *sym, *prv, *nxt;
    uint64_t *heap;     /* (rank << 32 | left position), min-heap; 3 entries per byte */
} encoder;

static void emit(encoder *e, int32_t id)
{
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (v <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

static int grow_scratch(encoder *e, size_t n)
{
    if (n <= e->scap) return 0;
    size_t cap = KVS_MAX(n, 2 * e->scap);
    kvs_free(e->sym); kvs_free(e->prv); kvs_free(e->nxt); kvs_free(e->heap);
    e->sym = kvs_alloc(cap * sizeof *e->sym);
    e->prv = kvs_alloc(cap * sizeof *e->prv);
    e->nxt = kvs_alloc(cap * sizeof *e->nxt);
    e->heap = kvs_alloc(3 * cap * sizeof *e->heap);
    e->scap = cap;
    if (!e->sym || !e->prv || !e->nxt || !e->heap) { e->scap = 0; return KVS_ENOMEM; }
    return 0;
}

static void push_pair(encoder *e, size_t *hn, int32_t left)
{
    int32_t right = e->nxt[left];
    uint32_t rank;
    int32_t id;
    if (right >= 0 && pair_lookup(e->t, e->sym[left], e->sym[right], &rank, &id))
        heap_push(e->heap, hn, ((uint64_t)rank << 32) | (uint32_t)left);
}

/* BPE over the m symbols in e->sym[0..m): apply the lowest-ranked merge present, leftmost
 * first, until none applies, and emit the result. Symbols form a linked list; the heap holds
 * candidate pairs and stale entries are skipped when popped. O(m log m). */
static void bpe_run(encoder *e, size_t m)
{
    const tok_ctx *t = e->t;
    if (m == 0) return;
    for (size_t i = 0; i < m; i++) {
        e->prv[i] = (int32_t)i - 1;
        e->nxt[i] = (int32_t)i + 1;
    }
    e->nxt[m - 1] = -1;
    size_t hn = 0;
    for (size_t i = 0; i + 1 < m; i++) push_pair(e, &hn, (int32_t)i);
    while (hn) {
        uint64_t top = heap_pop(e->heap, &hn);
        int32_t left = (int32_t)(uint32_t)top, right = e->nxt[left];
        uint32_t rank;
        int32_t id;
        if (e->sym[left] < 0 || right < 0) continue;
        if (!pair_lookup(t, e->sym[left], e->sym[right], &rank, &id) ||
            rank != (uint32_t)(top >> 32))
            continue; /* stale: one side has merged with something else since */
        e->sym[left] = id;
        e->sym[right] = -1;
        e->nxt[left] = e->nxt[right];
        if (e->nxt[left] >= 0) e->prv[e->nxt[left]] = left;
        if (e->prv[left] >= 0) push_pair(e, &hn, e->prv[left]);
        push_pair(e, &hn, left);
    }
    for (int32_t i = 0; i >= 0; i = e->nxt[i]) emit(e, e->sym[i]);
}

/* BPE of one pre-tokenized word of a byte-level vocabulary: one symbol per byte to start. */
static int bpe_word(encoder *e, const uint8_t *w, size_t n)
{
    const tok_ctx *t = e->t;
    if (n == 1) {
        if (t->byte_id[w[0]] >= 0) emit(e, t->byte_id[w[0]]);
        return 0;
    }
    if (grow_scratch(e, n)) return KVS_ENOMEM;
    size_t m = 0; /* symbols: the bytes that have a token (the others are dropped) */
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id >= 0) e->sym[m++] = id;
    }
    bpe_run(e, m);
    return 0;
}

/* SentencePiece (tokenizer.ggml.model = llama), as Hugging Face's LlamaTokenizer runs it: the
 * segment's spaces become "▁" (here the other way round: the vocabulary's "▁" are spaces in
 * piece_buf, so a "▁" typed in the text becomes a space), one "▁" is prepended when the segment
 * starts the text and does not start with one already (Metaspace, prepend_scheme "first"), then
 * BPE over characters: a character with no token becomes its <0xXX> byte tokens (byte
 * fallback), or <unk> when a byte token is missing (consecutive unknowns fuse into one). */
static int spm_segment(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    const tok_ctx *t = e->t;
    if (a >= b) return 0;
    size_t n = b - a;
    uint8_t *w = kvs_alloc(n + 1);
    if (!w) return KVS_ENOMEM;
    size_t m = 0;
    for (size_t i = a; i < b;) {
        if (i + 2 < b && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
            w[m++] = ' ';
            i += 3;
        } else {
            w[m++] = s[i++];
        }
    }
    if (a == 0 && t->add_space_prefix && w[0] != ' ') {
        memmove(w + 1, w, m);
        w[0] = ' ';
        m++;
    }
    int rc = grow_scratch(e, 4 * m);
    if (rc) { kvs_free(w); return rc; }
    size_t k = 0;
    int prev_unk = 0;
    for (size_t i = 0; i < m;) {
        size_t l;
        uint32_t cp;
        if (utf8_seq(w + i, m - i, &l, &cp) != U8_VALID) l = 1;
        int32_t id = vocab_lookup(t, (const char *)w + i, l);
        if (id >= 0) {
            e->sym[k++] = id;
            prev_unk = 0;
        } else {
            size_t j = 0;
            while (j < l && t->byte_id[w[i + j]] >= 0) j++;
            if (j == l) {
                for (j = 0; j < l; j++) e->sym[k++] = t->byte_id[w[i + j]];
                prev_unk = 0;
            } else if (t->unk >= 0 && !prev_unk) {
                e->sym[k++] = t->unk;
                prev_unk = 1;
            }
        }
        i += l;
    }
    kvs_free(w);
    bpe_run(e, k);
    return 0;
}

/* End of the GPT-2 regex match starting at byte i of s[.. end):
 *   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
 * Alternatives are tried in this order, as the regex engine does; none needs backtracking
 * except \s+(?!\S), which gives back the last whitespace character when a non-space follows. */
static size_t gpt2_match(const uint8_t *s, size_t i, size_t end)
{
    if (s[i] == '\'' && i + 1 < end) {
        uint8_t c1 = s[i + 1], c2 = i + 2 < end ? s[i + 2] : 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return i + 3;
    }
    size_t start = i;
    uchar u = uchar_at(s, i, end);
    if (s[i] == ' ' && i + 1 < end) { /* " ?" followed by a letter / number / other run */
        uchar v = uchar_at(s, i + 1, end);
        if (v.cls != CL_SPACE) { u = v; start = i + 1; }
    }
    if (u.cls != CL_SPACE) {
        size_t j = start + u.len;
        while (j < end) {
            uchar v = uchar_at(s, j, end);
            if (v.cls != u.cls) break;
            j += v.len;
        }
        return j;
    }
    size_t j = i, last = i;
    while (j < end) {
        uchar v = uchar_at(s, j, end);
        if (v.cls != CL_SPACE) break;
        last = j;
        j += v.len;
    }
    if (j == end) return end;  /* \s+(?!\S) up to the end */
    if (last > i) return last; /* \s+(?!\S): all but the last, which goes with the next word */
    return j;                  /* \s+: a single whitespace character before a non-space */
}

static int pretok_gpt2(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    while (a < b) {
        size_t j = gpt2_match(s, a, b);
        int rc = bpe_word(e, s + a, j - a);
        if (rc) return rc;
        a = j;
    }
    return 0;
}

/* smollm: every \p{N} character alone (HF Digits(individual_digits=true)), then the GPT-2 regex
 * on each stretch between them, which therefore ends where a digit starts. */
static int pretok_smollm(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    size_t frag = a;
    for (size_t i = a; i < b;) {
        uchar u = uchar_at(s, i, b);
        if (u.cls == CL_NUMBER) {
            int rc = pretok_gpt2(e, s, frag, i);
            if (!rc) rc = bpe_word(e, s + i, u.len);
            if (rc) return rc;
            frag = i + u.len;
        }
        i += u.len;
    }
    return pretok_gpt2(e, s, frag, b);
}

/* End of the match at byte i of s[.. end) of the regex that Qwen2 (max_digits 1) and Llama 3
 * (llama-bpe, max_digits 3) split with:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,max_digits} |
 *    ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * Alternatives in this order, as the regex engine tries them. The contractions ignore case; a
 * word takes one leading character that is not a newline, letter or number (a space, a tab, a
 * quote, a dot: " word", "\tword", ".com"); a whitespace run that holds newlines ends after
 * its last newline. */
static size_t llama3_match(const uint8_t *s, size_t i, size_t end, int max_digits)
{
    if (s[i] == '\'' && i + 1 < end) {
        uint8_t c1 = s[i + 1] | 0x20, c2 = i + 2 < end ? s[i + 2] | 0x20 : 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return i + 3;
    }
    uchar u = uchar_at(s, i, end);
    size_t j = i;
    if (u.cls != CL_LETTER && u.cls != CL_NUMBER && u.cp != '\r' && u.cp != '\n' &&
        i + u.len < end && uchar_at(s, i + u.len, end).cls == CL_LETTER)
        j = i + u.len; /* the one leading character of a word */
    if (j > i || u.cls == CL_LETTER) {
        while (j < end) {
            uchar v = uchar_at(s, j, end);
            if (v.cls != CL_LETTER) break;
            j += v.len;
        }
        return j;
    }
    if (u.cls == CL_NUMBER) {
        j = i + u.len;
        for (int k = 1; k < max_digits && j < end; k++) {
            uchar v = uchar_at(s, j, end);
            if (v.cls != CL_NUMBER) break;
            j += v.len;
        }
        return j;
    }
    uchar v = u;
    j = i;
    if (s[i] == ' ' && i + 1 < end) { v = uchar_at(s, i + 1, end); j = i + 1; }
    if (v.cls == CL_OTHER) { /* " ?[^\s\p{L}\p{N}]+[\r\n]*" */
        j += v.len;
        while (j < end) {
            uchar w = uchar_at(s, j, end);
            if (w.cls != CL_OTHER) break;
            j += w.len;
        }
        while (j < end && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    /* u is whitespace: the run [i, j), its last character at `last`, after its last newline nl */
    size_t last = i, nl = 0;
    j = i;
    while (j < end) {
        uchar w = uchar_at(s, j, end);
        if (w.cls != CL_SPACE) break;
        last = j;
        j += w.len;
        if (w.cp == '\r' || w.cp == '\n') nl = j;
    }
    if (nl) return nl;         /* \s*[\r\n]+ */
    if (j == end) return end;  /* \s+(?!\S) up to the end */
    if (last > i) return last; /* \s+(?!\S): all but the last, which goes with the next word */
    return j;                  /* \s+ */
}

/* BPE of one piece, or the piece's own token when the vocabulary has it (llama-bpe's
 * ignore_merges: Llama 3 and tiktoken look a whole piece up before merging). */
static int bpe_piece(encoder *e, const uint8_t *w, size_t n)
{
    if (e->t->ignore_merges && n > 1) {
        int32_t id = vocab_lookup(e->t, (const char *)w, n);
        if (id >= 0 && !is_special_type(e->t->type[id])) {
            emit(e, id);
            return 0;
        }
    }
    return bpe_word(e, w, n);
}

static int pretok_llama3(encoder *e, const uint8_t *s, size_t a, size_t b)
{
    int max_digits = e->t->pre == PRE_LLAMA3 ? 3 : 1;
    while (a < b) {
        size_t j = llama3_match(s, a, b, max_digits);
        int rc = bpe_piece(e, s + a, j - a);
        if (rc) return rc;
        a = j;
    }
    return 0;
}

/* The special token starting at s[i], longest first; -1 if none. Without parse_special only
 * user-defined tokens count (Hugging Face's non-special added tokens, which llama.cpp and HF
 * match whole in any text). */
static int32_t special_at(const tok_ctx *t, const uint8_t *s, size_t i, size_t len,
                          int parse_special, size_t *l)
{
    for (int k = t->special_at[s[i]]; k < t->special_at[s[i] + 1]; k++) {
        if (!parse_special && t->type[t->special[k]] != TT_USER) continue;
        const char *p = piece_ptr(t, t->special[k], l);
        if (*l <= len - i && memcmp(p, s + i, *l) == 0) return t->special[k];
    }
    return -1;
}

int tok_encode(const tok_ctx *t, const char *text, size_t len, int parse_special, int32_t *ids,
               int cap)
{
    if (!t || (!text && len) || cap < 0 || (cap > 0 && !ids))
        return kvs_error(KVS_EINVAL, "tok_encode: bad arguments");
    if (len > (size_t)INT_MAX)
        return kvs_error(KVS_ERANGE, "text of %zu bytes is too long to encode (limit %d)", len,
                         INT_MAX);
    encoder e = {.t = t, .ids = ids, .cap = cap};
    const uint8_t *s = (const uint8_t *)text;
    int (*pretok)(encoder *, const uint8_t *, size_t, size_t) =
        t->model == MODEL_SPM ? spm_segment
        : t->pre == PRE_SMOLLM ? pretok_smollm
        : t->pre == PRE_QWEN2 || t->pre == PRE_LLAMA3 ? pretok_llama3 : pretok_gpt2;
    int rc = 0;
    size_t seg = 0;
    if (parse_special || t->n_user) {
        for (size_t i = 0; i < len && !rc; i++) {
            size_t l;
            int32_t id = special_at(t, s, i, len, parse_special, &l);
            if (id < 0) continue;
            if (seg < i) rc = pretok(&e, s, seg, i);
            emit(&e, id);
            seg = i + l;
            i = seg - 1;
        }
    }
    if (!rc && seg < len) rc = pretok(&e, s, seg, len);
    kvs_free(e.sym); kvs_free(e.prv); kvs_free(e.nxt); kvs_free(e.heap);
    if (rc) return kvs_error(rc, "out of memory encoding %zu bytes of text", len);
    return (int)e.n;
}

/* ---- decoding ---------------------------------------------------------------------------- */

/* Counts everything, writes what fits; with strip set, drops one leading space of the text. */
typedef struct { char *out; size_t cap, n; int strip; } sink;

static void sink_put(sink *k, const void *p, size_t n)
{
    if (k->strip && n > 0) {
        k->strip = 0;
        if (*(const char *)p == ' ') { p = (const char *)p + 1; n--; }
    }
    if (k->n < k->cap) memcpy(k->out + k->n, p, KVS_MIN(n, k->cap - k->n));
    k->n += n;
}

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Write the complete characters of pending ++ piece to k (invalid subparts as U+FFFD) and leave
 * a trailing incomplete character in newp/newn. */
static void utf8_feed(const uint8_t *pend, int np, const uint8_t *p, size_t n, sink *k,
                      uint8_t *newp, int *newn)
{
    size_t pos = 0, l;
    uint32_t cp;
    *newn = 0;
    if (np > 0) { /* sequences that start in the pending bytes, in a small joint buffer */
        uint8_t joint[8];
        size_t nj = (size_t)np, extra = KVS_MIN(n, 4);
        memcpy(joint, pend, (size_t)np);
        memcpy(joint + np, p, extra);
        nj += extra;
        while (pos < (size_t)np) {
            int st = utf8_seq(joint + pos, nj - pos, &l, &cp);
            if (st == U8_INCOMPLETE) { /* only when joint holds all the input */
                memcpy(newp, joint + pos, l);
                *newn = (int)l;
                return;
            }
            if (st == U8_VALID) sink_put(k, joint + pos, l);
            else sink_put(k, REPLACEMENT, 3);
            pos += l;
        }
        pos -= (size_t)np; /* now an offset into p */
    }
    while (pos < n) {
        int st = utf8_seq(p + pos, n - pos, &l, &cp);
        if (st == U8_INCOMPLETE) {
            memcpy(newp, p + pos, l);
            *newn = (int)l;
            return;
        }
        size_t run = pos;
        if (st == U8_VALID) { /* copy a run of valid characters at once */
            pos += l;
            while (pos < n && utf8_seq(p + pos, n - pos, &l, &cp) == U8_VALID) pos += l;
            sink_put(k, p + run, pos - run);
        } else {
            sink_put(k, REPLACEMENT, 3);
            pos += l;
        }
    }
}

/* SentencePiece decoding, as Hugging Face's ByteFallback decoder does it: a run of byte tokens
 * (<0xE4><0xB8><0xAD>) becomes its bytes when the whole run is valid UTF-8, else one U+FFFD per
 * byte token of the run. The run is held back until a token that is not a byte ends it (or the
 * flush), since a bad byte late in the run replaces the whole run. When the run fills
 * SPM_RUN_MAX bytes, its complete characters go out and the rest stays (or, if it starts with
 * an invalid byte, all of it goes out as U+FFFD): only a run of more than SPM_RUN_MAX bytes
 * with a bad byte after the first SPM_RUN_MAX decodes otherwise than Hugging Face's. */
enum { SPM_RUN_MAX = 16 };

static int utf8_all_valid(const uint8_t *b, size_t n)
{
    size_t l;
    uint32_t cp;
    for (size_t i = 0; i < n; i += l)
        if (utf8_seq(b + i, n - i, &l, &cp) != U8_VALID) return 0;
    return 1;
}

static void spm_close_run(const uint8_t *run, int n, sink *k)
{
    if (n <= 0) return;
    if (utf8_all_valid(run, (size_t)n)) {
        sink_put(k, run, (size_t)n);
        return;
    }
    for (int i = 0; i < n; i++) sink_put(k, REPLACEMENT, 3);
}

static void spm_feed(const tok_ctx *t, int32_t id, uint8_t *run, int *n, sink *k)
{
    size_t l;
    const char *p = piece_ptr(t, id, &l);
    if (t->type[id] == TT_BYTE && l == 1) {
        if (*n == SPM_RUN_MAX) {
            size_t ok = 0, sl;
            uint32_t cp;
            while (ok < (size_t)*n && utf8_seq(run + ok, (size_t)*n - ok, &sl, &cp) == U8_VALID)
                ok += sl;
            if (ok == 0) ok = (size_t)*n; /* invalid from the start: all of it is U+FFFD */
            spm_close_run(run, (int)ok, k);
            memmove(run, run + ok, (size_t)*n - ok);
            *n -= (int)ok;
        }
        run[(*n)++] = (uint8_t)p[0];
        return;
    }
    spm_close_run(run, *n, k);
    *n = 0;
    sink_put(k, p, l);
}

void tok_stream_init(tok_stream *s)
{
    memset(s, 0, sizeof *s);
}

size_t tok_stream_cap(const tok_ctx *t)
{
    /* Each input byte gives at most 3 output bytes (U+FFFD); the input is the piece and what
     * was pending: <= 3 bytes of a character, or an SPM run of <= SPM_RUN_MAX byte tokens. */
    return 3 * (t->max_piece + SPM_RUN_MAX);
}

int tok_stream_push(const tok_ctx *t, tok_stream *s, int32_t id, char *out, size_t cap)
{
    const char *p = NULL;
    size_t n = 0;
    int rc = tok_piece(t, id, &p, &n);
    if (rc) return rc;
    if (s->n_pending < 0 || s->n_pending > (t->model == MODEL_SPM ? SPM_RUN_MAX : 3))
        return kvs_error(KVS_EINVAL, "tok_stream_push: stream not initialised");
    sink k = {out, cap, 0, t->strip_lead && !s->begun};
    uint8_t newp[sizeof s->pending];
    int newn;
    if (t->model == MODEL_SPM) {
        memcpy(newp, s->pending, (size_t)s->n_pending);
        newn = s->n_pending;
        spm_feed(t, id, newp, &newn, &k);
        s->spm = 1;
    } else {
        utf8_feed(s->pending, s->n_pending, (const uint8_t *)p, n, &k, newp, &newn);
    }
    if (k.n > cap)
        return kvs_error(KVS_ERANGE, "token %d decodes to %zu bytes; the buffer holds %zu "
                         "(tok_stream_cap() is always enough)", id, k.n, cap);
    memcpy(s->pending, newp, (size_t)newn);
    s->n_pending = newn;
    s->strip = t->strip_lead;
    if (!k.strip) s->begun = 1;
    return (int)k.n;
}

int tok_stream_flush(tok_stream *s, char *out, size_t cap)
{
    if (s->n_pending <= 0) { s->n_pending = 0; s->begun = 0; return 0; }
    if (s->spm) {
        sink k = {out, cap, 0, !s->begun && s->strip};
        spm_close_run(s->pending, s->n_pending, &k);
        if (k.n > cap)
            return kvs_error(KVS_ERANGE, "tok_stream_flush needs %zu bytes of output, got %zu",
                             k.n, cap);
        tok_stream_init(s);
        return (int)k.n;
    }
    if (cap < 3)
        return kvs_error(KVS_ERANGE, "tok_stream_flush needs 3 bytes of output, got %zu", cap);
    memcpy(out, REPLACEMENT, 3);
    s->n_pending = 0;
    s->begun = 0;
    return 3;
}

int tok_decode(const tok_ctx *t, const int32_t *ids, int n, char *out, size_t cap)
{
    if (!t || n < 0 || (n > 0 && !ids) || (cap > 0 && !out))
        return kvs_error(KVS_EINVAL, "tok_decode: bad arguments");
    sink k = {out, cap ? cap - 1 : 0, 0, t->strip_lead};
    uint8_t pend[SPM_RUN_MAX];
    int np = 0;
    if (t->model == MODEL_SPM) {
        for (int i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= t->n_vocab)
                return kvs_error(KVS_ERANGE, "token id %d is outside the vocabulary of %d tokens",
                                 ids[i], t->n_vocab);
            spm_feed(t, ids[i], pend, &np, &k);
        }
        spm_close_run(pend, np, &k);
        np = 0;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const char *p = NULL;
        size_t l = 0;
        int rc = tok_piece(t, ids[i], &p, &l);
        if (rc) return rc;
        uint8_t newp[8];
        int newn;
        utf8_feed(pend, np, (const uint8_t *)p, l, &k, newp, &newn);
        memcpy(pend, newp, (size_t)newn);
        np = newn;
    }
    if (np) sink_put(&k, REPLACEMENT, 3);
done:
    if (k.n > (size_t)INT_MAX) return kvs_error(KVS_ERANGE, "decoded text is too long");
    if (cap) out[KVS_MIN(k.n, cap - 1)] = 0;
    return (int)k.n;
}

/* ---- chat template ----------------------------------------------------------------------- */

/* Python's str.isspace() (what Jinja's trim strips): White_Space plus U+001C..U+001F. */
static int py_space(uint32_t c)
{
    return is_space_cp(c) || (c >= 0x1C && c <= 0x1F);
}

/* s with the leading and trailing Python whitespace cut off, into (*b, *n). */
static void py_trim(const char *s, const char **b, size_t *n)
{
    size_t len = strlen(s), i = 0, end = len, l;
    uint32_t cp;
    while (i < len && utf8_seq((const uint8_t *)s + i, len - i, &l, &cp) == U8_VALID &&
           py_space(cp))
        i += l;
    while (end > i) {
        size_t j = end - 1;
        while (j > i && ((uint8_t)s[j] & 0xC0) == 0x80) j--;
        if (utf8_seq((const uint8_t *)s + j, end - j, &l, &cp) != U8_VALID || j + l != end ||
            !py_space(cp))
            break;
        end = j;
    }
    *b = s + i;
    *n = end - i;
}

static void put_str(sink *k, const char *s) { sink_put(k, s, strlen(s)); }

int tok_chat_prompt(const tok_ctx *t, const char *system, const char *user, char *out,
                    size_t cap)
{
    if (!t || !user || (cap > 0 && !out))
        return kvs_error(KVS_EINVAL, "tok_chat_prompt: bad arguments");
    sink k = {out, cap ? cap - 1 : 0, 0, 0};
    switch (t->chat) {
    case CHAT_CHATML:
        if (t->im_start < 0 || t->im_end < 0)
            return kvs_error(KVS_EUNSUPPORTED, "the chat template is ChatML but the vocabulary "
                             "has no <|im_start|>/<|im_end|>");
        if (!system) system = t->default_system;
        if (system) {
            put_str(&k, "<|im_start|>system\n");
            put_str(&k, system);
            put_str(&k, "<|im_end|>\n");
        }
        put_str(&k, "<|im_start|>user\n");
        put_str(&k, user);
        put_str(&k, "<|im_end|>\n<|im_start|>assistant\n");
        break;
    case CHAT_LLAMA3: {
        /* bos_token + each message's header and trimmed content; the BOS text is left out when
         * the caller adds the BOS id (tok_add_bos), so the ids come out once */
        if (t->bos < 0)
            return kvs_error(KVS_EUNSUPPORTED, "the Llama 3 chat template starts with the BOS "
                             "token, and the file names none");
        if (!t->add_bos) {
            size_t bl;
            const char *bp = piece_ptr(t, t->bos, &bl);
            sink_put(&k, bp, bl);
        }
        const char *b;
        size_t n;
        if (system) {
            put_str(&k, "<|start_header_id|>system<|end_header_id|>\n\n");
            py_trim(system, &b, &n);
            sink_put(&k, b, n);
            put_str(&k, "<|eot_id|>");
        }
        put_str(&k, "<|start_header_id|>user<|end_header_id|>\n\n");
        py_trim(user, &b, &n);
        sink_put(&k, b, n);
        put_str(&k, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    }
    case CHAT_UNKNOWN:
        return kvs_error(KVS_EUNSUPPORTED, "the model's chat template (tokenizer.chat_template) "
                         "is not one kvsieve renders (ChatML, Llama 3); it begins \"%s\"",
                         t->chat_head);
    default:
        return kvs_error(KVS_EUNSUPPORTED, "the model has no chat template "
                         "(tokenizer.chat_template) and its vocabulary is not ChatML's");
    }
    if (k.n > (size_t)INT_MAX) return kvs_error(KVS_ERANGE, "chat prompt is too long");
    if (cap) out[KVS_MIN(k.n, cap - 1)] = 0;
    return (int)k.n;
}
