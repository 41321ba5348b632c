/*
 * CRC32C (Castagnoli: reflected polynomial 0x82F63B78, initial value ~0, final xor ~0), the checksum of iSCSI,
 * ext4 and Xen's migration v2 stream, which ferry's wire format puts on every record. Two implementations compute
 * the same function: the x86-64 crc32 instruction (SSE4.2) and a portable slicing-by-8 table. The choice is made
 * once, on the first call, from what the CPU reports; on builds for other architectures only the table exists.
 * This file computes checksums only: what a record covers and what a mismatch means is the stream layer's business.
 *
 * All three entry points take and return the finished (inverted) value, so that a checksum can be extended piece
 * by piece: ferry__crc32c(ferry__crc32c(0, a, n), b, m) == ferry__crc32c(0, a||b, n + m). Internally the raw
 * register (without the inversions) is used, because that is what both the instruction and the tables update.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define CRC32C_HAVE_HW 1
#else
#define CRC32C_HAVE_HW 0
#endif

#include "util/util.h"

/* The polynomial in reflected bit order: bit 31 is the coefficient of x^0, bit 0 that of x^31. */
#define CRC32C_POLY 0x82F63B78u

/* sw_table[0] is the classic byte-at-a-time table; sw_table[k][b] is the register contribution of byte b followed
 * by k zero bytes, which is what lets slicing-by-8 fold eight input bytes with eight independent lookups. */
static uint32_t sw_table[8][256];

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static bool hw_available;

/* Loads 8 bytes as a little-endian integer without assuming alignment (memcpy is a single load on x86). */
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* One bit of the register shifted through the polynomial: multiplication by x modulo P in reflected order. */
static inline uint32_t mul_x(uint32_t v)
{
    return (v >> 1) ^ ((v & 1) ? CRC32C_POLY : 0);
}

static void sw_init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t r = b;
        for (int i = 0; i < 8; i++) {
            r = mul_x(r);
        }
        sw_table[0][b] = r;
    }
    for (int k = 1; k < 8; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t prev = sw_table[k - 1][b];
            sw_table[k][b] = (prev >> 8) ^ sw_table[0][prev & 0xff];
        }
    }
}

static uint32_t sw_update(uint32_t reg, const uint8_t *p, size_t len)
{
    while (len >= 8) {
        uint64_t w = load_le64(p) ^ reg;
        reg = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^ sw_table[5][(w >> 16) & 0xff] ^
              sw_table[4][(w >> 24) & 0xff] ^ sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
              sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) {
        reg = (reg >> 8) ^ sw_table[0][(reg ^ *p++) & 0xff];
    }
    return reg;
}

#if CRC32C_HAVE_HW
/*
 * The crc32 instruction has a latency of three cycles and a throughput of one per cycle, so one dependent chain
 * uses a third of the unit. Long buffers are therefore cut into chunks of three equal blocks whose checksums run
 * as three independent chains in one loop; the results are joined with the linearity of the CRC:
 *   raw(r, A||B) = raw(r, A) * x^(8|B|) ^ raw(0, B)   (mod P)
 * The multiplication by the fixed x^(8|B|) is linear in its 32-bit operand, so a table of four 256-entry slices
 * (one per byte of the operand) makes it eight lookups. Two block sizes are used: the long one keeps the joining
 * cost negligible on the page runs that make up most of a stream, the short one still helps records of a few
 * hundred bytes. Anything shorter than three short blocks takes the plain loop.
 */
#define HW_LONG_BLOCK 4096
#define HW_SHORT_BLOCK 256

typedef struct ShiftTable {
    uint32_t slice[4][256];
} ShiftTable;

static ShiftTable shift_long;
static ShiftTable shift_short;

/* a * b modulo P, both in reflected order: for each coefficient of @a, from x^0 (bit 31) upwards, add the matching
 * power-of-x multiple of @b. */
static uint32_t mul_mod_p(uint32_t a, uint32_t b)
{
    uint32_t product = 0;
    for (int bit = 31; bit >= 0; bit--) {
        if (a & (1u << bit)) {
            product ^= b;
        }
        b = mul_x(b);
    }
    return product;
}

/* Fills @t so that shift_apply(t, v) == v * x^(8 * @nbytes) mod P. */
static void shift_init(ShiftTable *t, size_t nbytes)
{
    uint32_t x_pow = 1u << 31; /* x^0 */
    for (size_t i = 0; i < 8 * nbytes; i++) {
        x_pow = mul_x(x_pow);
    }
    for (int k = 0; k < 4; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            t->slice[k][b] = mul_mod_p(b << (8 * k), x_pow);
        }
    }
}

static inline uint32_t shift_apply(const ShiftTable *t, uint32_t v)
{
    return t->slice[0][v & 0xff] ^ t->slice[1][(v >> 8) & 0xff] ^ t->slice[2][(v >> 16) & 0xff] ^
           t->slice[3][v >> 24];
}

__attribute__((target("sse4.2"))) static inline uint64_t hw_u64(uint64_t reg, const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    return _mm_crc32_u64(reg, w);
}

/* Consumes as many whole chunks of three @block-byte blocks as @*len holds, advancing @*pp and @*len. */
__attribute__((target("sse4.2"))) static uint32_t hw_three_way(uint32_t reg, const uint8_t **pp, size_t *len,
                                                               size_t block, const ShiftTable *shift)
{
    const uint8_t *p = *pp;
    while (*len >= 3 * block) {
        uint64_t c0 = reg, c1 = 0, c2 = 0;
        for (size_t off = 0; off < block; off += 8) {
            c0 = hw_u64(c0, p + off);
            c1 = hw_u64(c1, p + block + off);
            c2 = hw_u64(c2, p + 2 * block + off);
        }
        /* raw(r, A||B||C) = (raw(r, A) * x^8L ^ raw(0, B)) * x^8L ^ raw(0, C) */
        reg = shift_apply(shift, shift_apply(shift, (uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * block;
        *len -= 3 * block;
    }
    *pp = p;
    return reg;
}

__attribute__((target("sse4.2"))) static uint32_t hw_update(uint32_t reg, const uint8_t *p, size_t len)
{
    /* Bring the pointer to an 8-byte boundary so that the wide loads never straddle a cache line. */
    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        reg = _mm_crc32_u8(reg, *p++);
        len--;
    }
    reg = hw_three_way(reg, &p, &len, HW_LONG_BLOCK, &shift_long);
    reg = hw_three_way(reg, &p, &len, HW_SHORT_BLOCK, &shift_short);
    uint64_t r64 = reg;
    while (len >= 8) {
        r64 = hw_u64(r64, p);
        p += 8;
        len -= 8;
    }
    reg = (uint32_t)r64;
    while (len--) {
        reg = _mm_crc32_u8(reg, *p++);
    }
    return reg;
}
#endif /* CRC32C_HAVE_HW */

static void crc32c_init(void)
{
    sw_init();
#if CRC32C_HAVE_HW
    __builtin_cpu_init();
    hw_available = __builtin_cpu_supports("sse4.2");
    if (hw_available) {
        shift_init(&shift_long, HW_LONG_BLOCK);
        shift_init(&shift_short, HW_SHORT_BLOCK);
    }
#endif
}

static inline void ensure_init(void)
{
    pthread_once(&init_once, crc32c_init);
}

uint32_t ferry__crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    if (len == 0) {
        return crc;
    }
    ensure_init();
    return ~sw_update(~crc, buf, len);
}

bool ferry__crc32c_hw_available(void)
{
    ensure_init();
    return hw_available;
}

uint32_t ferry__crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    if (len == 0) {
        return crc;
    }
    ensure_init();
#if CRC32C_HAVE_HW
    if (hw_available) {
        return ~hw_update(~crc, buf, len);
    }
#endif
    /* Executing the instruction on a CPU without it would fault: compute the same value with the table. */
    return ~sw_update(~crc, buf, len);
}

uint32_t ferry__crc32c(uint32_t crc, const void *buf, size_t len)
{
    /* ferry__crc32c_hw already falls back to the table when the instruction is missing. */
    return ferry__crc32c_hw(crc, buf, len);
}
