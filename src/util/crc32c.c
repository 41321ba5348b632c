/*
 * CRC32C (Castagnoli: reflected polynomial 0x82F63B78, initial value ~0, final xor ~0), the checksum of iSCSI,
 * ext4 and Xen's migration v2 stream, which ferry's wire format puts on every record. Three implementations
 * compute the same function: folding with carry-less multiplication on 512-bit registers (VPCLMULQDQ, AVX-512)
 * for long buffers, the x86-64 crc32 instruction (SSE4.2), and a portable slicing-by-8 table. The choice is made
 * once, on the first call, from what the CPU reports; on builds for other architectures only the table exists.
 * This file computes checksums only: what a record covers and what a mismatch means is the stream layer's business.
 *
 * Every entry point takes and returns the finished (inverted) value, so that a checksum can be extended piece
 * by piece: ferry__crc32c(ferry__crc32c(0, a, n), b, m) == ferry__crc32c(0, a||b, n + m). Internally the raw
 * register (without the inversions) is used, because that is what both the instruction and the tables update.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
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
static bool fold_available;
/* The fastest path that may run (ferry__crc32c_limit); tests lower it to reach the slower paths. */
static FerryCrc32cImpl impl_limit;
/* ferry__crc32c_chunk: the stream's read buffer size, small enough to stay in a core's second-level cache while
 * it is copied out, large enough that the extra read calls cost nothing. On the machine of docs/memory.md 64 KiB,
 * 256 KiB and 1 MiB did not differ beyond the noise. */
#define CRC32C_CHUNK_DEFAULT (256u << 10)
static size_t chunk_size = CRC32C_CHUNK_DEFAULT;

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

/* The same, storing each loaded word at @d too: a copy checksummed on the way, so that the bytes are read once. */
__attribute__((target("sse4.2"))) static inline uint64_t hw_u64_copy(uint64_t reg, uint8_t *d, const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    memcpy(d, &w, sizeof(w));
    return _mm_crc32_u64(reg, w);
}

/* Consumes as many whole chunks of three @block-byte blocks as @*len holds, advancing @*pp and @*len (and, when
 * @dp is not NULL, copying them to *@dp, which advances too). */
__attribute__((target("sse4.2"))) static uint32_t hw_three_way(uint32_t reg, uint8_t **dp, const uint8_t **pp,
                                                               size_t *len, size_t block, const ShiftTable *shift)
{
    const uint8_t *p = *pp;
    uint8_t *d = dp ? *dp : NULL;
    while (*len >= 3 * block) {
        uint64_t c0 = reg, c1 = 0, c2 = 0;
        if (d) {
            for (size_t off = 0; off < block; off += 8) {
                c0 = hw_u64_copy(c0, d + off, p + off);
                c1 = hw_u64_copy(c1, d + block + off, p + block + off);
                c2 = hw_u64_copy(c2, d + 2 * block + off, p + 2 * block + off);
            }
            d += 3 * block;
        } else {
            for (size_t off = 0; off < block; off += 8) {
                c0 = hw_u64(c0, p + off);
                c1 = hw_u64(c1, p + block + off);
                c2 = hw_u64(c2, p + 2 * block + off);
            }
        }
        /* raw(r, A||B||C) = (raw(r, A) * x^8L ^ raw(0, B)) * x^8L ^ raw(0, C) */
        reg = shift_apply(shift, shift_apply(shift, (uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * block;
        *len -= 3 * block;
    }
    *pp = p;
    if (dp) {
        *dp = d;
    }
    return reg;
}

__attribute__((target("sse4.2"))) static uint32_t hw_update(uint32_t reg, const uint8_t *p, size_t len)
{
    /* Bring the pointer to an 8-byte boundary so that the wide loads never straddle a cache line. */
    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        reg = _mm_crc32_u8(reg, *p++);
        len--;
    }
    reg = hw_three_way(reg, NULL, &p, &len, HW_LONG_BLOCK, &shift_long);
    reg = hw_three_way(reg, NULL, &p, &len, HW_SHORT_BLOCK, &shift_short);
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
/* hw_update while copying to @d: the long and short three-way chunks copy as they checksum, the rest is copied
 * and then checksummed by hw_update (a few hundred bytes at most, still in cache). */
__attribute__((target("sse4.2"))) static uint32_t hw_copy_update(uint32_t reg, uint8_t *d, const uint8_t *p,
                                                                 size_t len)
{
    reg = hw_three_way(reg, &d, &p, &len, HW_LONG_BLOCK, &shift_long);
    reg = hw_three_way(reg, &d, &p, &len, HW_SHORT_BLOCK, &shift_short);
    memcpy(d, p, len);
    return len ? hw_update(reg, d, len) : reg;
}

/*
 * Folding with carry-less multiplication (VPCLMULQDQ on 512-bit registers, AVX-512), for long buffers. The crc32
 * instruction consumes 8 bytes a cycle at best; a carry-less multiply of four 128-bit lanes at once, one per
 * cycle, folds 64 bytes. The buffer is viewed as 128-bit blocks, each a polynomial A of degree < 128 in reflected
 * bit order (the low quadword holds the high coefficients A_hi, the high quadword A_lo). A block's contribution
 * is moved D bits further along the message, where it is added (xor) to the block found there, by
 *   A * x^D = A_hi * x^(64+D) + A_lo * x^D  ==  A_hi * (x^(63+D) mod P) * x + A_lo * (x^(D-1) mod P) * x  (mod P)
 * and a carry-less multiply of two reflected 64-bit values yields the reflected product times x, which is why the
 * constants carry one power of x less. Each constant is stored as the 32-bit reflected value of x^(n-32) mod P in
 * the low half of its quadword, which as a 64-bit reflected polynomial is that value times x^32: x^n again.
 * Four registers fold 256 bytes a step in four independent chains; then they are folded into one, its four lanes
 * into one, the remaining 16-byte blocks one by one, and the last 128-bit block and the tail of fewer than 16
 * bytes go through the crc32 instruction (raw(0, A || tail) is exactly what the folded blocks leave to compute).
 * The starting register is xored into the first four bytes, which is how a CRC's initial value enters.
 */
#define FOLD_MIN_LEN 512

typedef struct FoldConsts {
    uint64_t k[2]; /* [0] multiplies the low quadword (A_hi), [1] the high one (A_lo) */
} FoldConsts;

static FoldConsts fold_256b;   /* D = 256 bytes: the four-register step */
static FoldConsts fold_64b;    /* D = 64 bytes: one register onto the next */
static FoldConsts fold_lanes[4]; /* lane i of the last register onto lane 3: D = 48, 32, 16 bytes, none */
static FoldConsts fold_16b;    /* D = 16 bytes: the tail blocks */

/* x^n mod P in reflected order. */
static uint32_t xpow_mod_p(size_t n)
{
    uint32_t v = 1u << 31; /* x^0 */
    while (n--) {
        v = mul_x(v);
    }
    return v;
}

static FoldConsts fold_consts(size_t dbytes)
{
    size_t d = 8 * dbytes;
    return (FoldConsts){ { xpow_mod_p(d + 31), xpow_mod_p(d - 33) } };
}

static void fold_init(void)
{
    fold_256b = fold_consts(256);
    fold_64b = fold_consts(64);
    fold_lanes[0] = fold_consts(48);
    fold_lanes[1] = fold_consts(32);
    fold_lanes[2] = fold_consts(16);
    fold_lanes[3] = (FoldConsts){ { 0, 0 } };
    fold_16b = fold_consts(16);
}

#define FOLD_TARGET __attribute__((target("sse4.2,pclmul,avx2,avx512f,avx512vl,vpclmulqdq")))

FOLD_TARGET static inline __m512i fold512(__m512i x, __m512i k, __m512i next)
{
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11),
                                     next, 0x96 /* a ^ b ^ c */);
}

/* The 64 bytes at @p + @pos, stored at @d + @pos too when copying. @d is only offset when used: it is NULL when
 * not copying, and even a zero offset of a null pointer is undefined. */
FOLD_TARGET static inline __m512i fold_load(uint8_t *d, const uint8_t *p, size_t pos, bool copy)
{
    __m512i v = _mm512_loadu_si512((const void *)(p + pos));
    if (copy) {
        _mm512_storeu_si512((void *)(d + pos), v);
    }
    return v;
}

/* The raw register after @len >= FOLD_MIN_LEN bytes at @p; with @copy, each loaded block is also stored at @d
 * (and the checksum is of what was stored). Inlined into the two callers below so that @copy is a constant. */
FOLD_TARGET static inline __attribute__((always_inline)) uint32_t fold_body(uint32_t reg, uint8_t *d,
                                                                           const uint8_t *p, size_t len, bool copy)
{
    size_t pos = 0;
    __m512i x0 = fold_load(d, p, 0, copy), x1 = fold_load(d, p, 64, copy);
    __m512i x2 = fold_load(d, p, 128, copy), x3 = fold_load(d, p, 192, copy);
    x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)reg)));
    pos = 256;

    const __m512i k256 = _mm512_broadcast_i32x4(_mm_loadu_si128((const void *)fold_256b.k));
    while (len - pos >= 256) {
        x0 = fold512(x0, k256, fold_load(d, p, pos, copy));
        x1 = fold512(x1, k256, fold_load(d, p, pos + 64, copy));
        x2 = fold512(x2, k256, fold_load(d, p, pos + 128, copy));
        x3 = fold512(x3, k256, fold_load(d, p, pos + 192, copy));
        pos += 256;
    }

    const __m512i k64 = _mm512_broadcast_i32x4(_mm_loadu_si128((const void *)fold_64b.k));
    x1 = fold512(x0, k64, x1);
    x2 = fold512(x1, k64, x2);
    x3 = fold512(x2, k64, x3);
    while (len - pos >= 64) {
        x3 = fold512(x3, k64, fold_load(d, p, pos, copy));
        pos += 64;
    }

    /* Lanes 0..2 moved onto lane 3 (whose constants are zero, so it contributes nothing to t). */
    const __m512i kl = _mm512_loadu_si512((const void *)fold_lanes);
    __m512i t = _mm512_xor_si512(_mm512_clmulepi64_epi128(x3, kl, 0x00), _mm512_clmulepi64_epi128(x3, kl, 0x11));
    __m128i a = _mm_xor_si128(_mm_xor_si128(_mm512_extracti32x4_epi32(t, 0), _mm512_extracti32x4_epi32(t, 1)),
                              _mm_xor_si128(_mm512_extracti32x4_epi32(t, 2), _mm512_extracti32x4_epi32(x3, 3)));

    const __m128i k16 = _mm_loadu_si128((const void *)fold_16b.k);
    while (len - pos >= 16) {
        __m128i n = _mm_loadu_si128((const void *)(p + pos));
        if (copy) {
            _mm_storeu_si128((void *)(d + pos), n);
        }
        a = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(a, k16, 0x00), _mm_clmulepi64_si128(a, k16, 0x11)),
                          n);
        pos += 16;
    }

    uint64_t r64 = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(a));
    r64 = _mm_crc32_u64(r64, (uint64_t)_mm_extract_epi64(a, 1));
    reg = (uint32_t)r64;
    const uint8_t *tail = p + pos;
    if (copy) {
        memcpy(d + pos, p + pos, len - pos);
        tail = d + pos; /* the checksum is of the copy */
    }
    for (size_t i = 0; i < len - pos; i++) {
        reg = _mm_crc32_u8(reg, tail[i]);
    }
    return reg;
}

FOLD_TARGET static uint32_t fold_update(uint32_t reg, const uint8_t *p, size_t len)
{
    return fold_body(reg, NULL, p, len, false);
}

FOLD_TARGET static uint32_t fold_copy_update(uint32_t reg, uint8_t *d, const uint8_t *p, size_t len)
{
    return fold_body(reg, d, p, len, true);
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
    /* libgcc's checks of the AVX-512 features include the OS's consent to save the registers (XCR0). */
    fold_available = hw_available && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("avx512f") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq");
    if (fold_available) {
        fold_init();
    }
#endif
    /* FERRY_CRC32C=sw|hw|fold caps the paths of the whole process, so that the benchmark can compare them in real
     * migrations (bench/migrate-bench.py --cases crc). Anything else leaves every path allowed. */
    impl_limit = FERRY_CRC32C_FOLD;
    const char *env = getenv("FERRY_CRC32C");
    if (env && strcmp(env, "sw") == 0) {
        impl_limit = FERRY_CRC32C_SW;
    } else if (env && strcmp(env, "hw") == 0) {
        impl_limit = FERRY_CRC32C_HW;
    }
    const char *chunk = getenv("FERRY_CRC_CHUNK");
    if (chunk) {
        char *end;
        unsigned long long v = strtoull(chunk, &end, 10);
        if (*end == '\0' && v >= 4096 && v <= (64ull << 20)) {
            chunk_size = (size_t)v;
        }
    }
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

/* Whether the path @impl may run: the CPU has it and the limit allows it. */
static inline bool use(FerryCrc32cImpl impl)
{
    switch (impl) {
    case FERRY_CRC32C_FOLD:
        return fold_available && impl_limit >= FERRY_CRC32C_FOLD;
    case FERRY_CRC32C_HW:
        return hw_available && impl_limit >= FERRY_CRC32C_HW;
    case FERRY_CRC32C_SW:
        return true;
    }
    return false;
}

FerryCrc32cImpl ferry__crc32c_limit(FerryCrc32cImpl max)
{
    ensure_init();
    FerryCrc32cImpl prev = impl_limit;
    impl_limit = max;
    return prev;
}

bool ferry__crc32c_available(FerryCrc32cImpl impl)
{
    ensure_init();
    switch (impl) {
    case FERRY_CRC32C_FOLD:
        return fold_available;
    case FERRY_CRC32C_HW:
        return hw_available;
    case FERRY_CRC32C_SW:
        return true;
    }
    return false;
}

/* The raw register after @len bytes at @p, by the fastest path allowed; @len > 0. */
static uint32_t update(uint32_t reg, const uint8_t *p, size_t len)
{
#if CRC32C_HAVE_HW
    if (len >= FOLD_MIN_LEN && use(FERRY_CRC32C_FOLD)) {
        return fold_update(reg, p, len);
    }
    if (use(FERRY_CRC32C_HW)) {
        return hw_update(reg, p, len);
    }
#endif
    return sw_update(reg, p, len);
}

uint32_t ferry__crc32c(uint32_t crc, const void *buf, size_t len)
{
    if (len == 0) {
        return crc;
    }
    ensure_init();
    return ~update(~crc, buf, len);
}

uint32_t ferry__crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len)
{
    if (len == 0) {
        return crc;
    }
    ensure_init();
#if CRC32C_HAVE_HW
    if (len >= FOLD_MIN_LEN && use(FERRY_CRC32C_FOLD)) {
        return ~fold_copy_update(~crc, dst, src, len);
    }
    if (use(FERRY_CRC32C_HW)) {
        return ~hw_copy_update(~crc, dst, src, len);
    }
#endif
    memcpy(dst, src, len);
    return ~sw_update(~crc, dst, len);
}

size_t ferry__crc32c_chunk(void)
{
    ensure_init();
    return chunk_size;
}
