/*
 * Zero-page detection: is a buffer all zero bytes? The source asks it of every page it sends (a zero page costs
 * one bit in the stream) and the destination of every page announced as zero (a page that already reads as zero
 * is not written, so it stays unpopulated), so the common case, a page-aligned 4 KiB page, must run at memory
 * speed. Four paths give the same answer: AVX-512 (64-byte vectors), AVX2 (32 bytes), SSE2 (16 bytes, the x86-64
 * baseline) and plain C over 64-bit words. The fastest one the CPU has is chosen once, on the first call, as
 * util/crc32c.c does; on builds for other architectures only the C path exists. This file answers the question
 * only: what a zero page costs in the stream, and what to do with one, is the migration layer's business.
 *
 * Every path has the same shape. A buffer of at least one vector (W bytes) is first checked at its head and its
 * tail, one unaligned vector each: a page of data almost always has a nonzero byte in its first few words (or, for
 * a stack page that grows down, in its last ones), so such a page is answered after two loads, as QEMU's
 * buffer_is_zero does. Those two vectors also cover the unaligned ends, so the rest is the W-aligned middle, ORed
 * together 256 bytes at a time with one test per 256 bytes: the loop is then bound by loads, not by branches, and
 * a 4 KiB page is exactly 16 steps. There is no software prefetch: within a page the hardware prefetcher already
 * streams, and prefetching ahead lost 5-30% on 1 GiB scans here (bench/zero-bench.c). No load reaches outside
 * [p, p + len), not even within a page where it could not fault: buffers shorter than W go to narrower loads (on
 * AVX-512 to one masked load, which does not access the bytes masked out), and the sanitizers see every plain load.
 *
 * FERRY_ZERO_IMPL=c|sse2|avx2|avx512 in the environment caps the paths of the whole process (read on the first
 * call), so that benchmarks can compare them in real migrations; any other value leaves every path allowed.
 * ferry__zero_limit does the same at run time, for tests and bench/zero-bench.c.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define ZERO_HAVE_X86 1
#else
#define ZERO_HAVE_X86 0
#endif

#include "ram/ram.h"

/* Bytes ORed together between two tests in the main loop of every path. */
#define ZERO_BLOCK 256

typedef bool (*ZeroFn)(const unsigned char *p, size_t len);

/* First address at or after @p that is a multiple of @w (a power of two), as an offset from @p so that the result
 * keeps pointing into the buffer. */
static inline const unsigned char *align_up(const unsigned char *p, size_t w)
{
    return p + ((w - ((uintptr_t)p & (w - 1))) & (w - 1));
}

static inline const unsigned char *align_down(const unsigned char *p, size_t w)
{
    return p - ((uintptr_t)p & (w - 1));
}

/* A possibly unaligned 64-bit load; memcpy is one instruction where the CPU allows it, and defined everywhere. */
static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Buffers of fewer than 16 bytes, with two overlapping words where there are enough bytes for them. Shared by
 * every path for what is too short for its vectors. */
static inline bool small_is_zero(const unsigned char *p, size_t len)
{
    if (len >= 8) {
        return (load64(p) | load64(p + len - 8)) == 0;
    }
    if (len >= 4) {
        uint32_t a, b;
        memcpy(&a, p, sizeof(a));
        memcpy(&b, p + len - 4, sizeof(b));
        return (a | b) == 0;
    }
    unsigned char acc = 0;
    for (size_t i = 0; i < len; i++) {
        acc |= p[i];
    }
    return acc == 0;
}

/* The portable path. Four accumulators so that the ORs do not form one dependent chain: the loads, two a cycle on
 * current cores, stay the limit. */
static bool zero_c(const unsigned char *p, size_t len)
{
    if (len < 16) {
        return small_is_zero(p, len);
    }
    if (load64(p) | load64(p + len - 8)) {
        return false;
    }
    const unsigned char *a = align_up(p, 8), *e = align_down(p + len, 8);
    while ((size_t)(e - a) >= ZERO_BLOCK) {
        uint64_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
        for (size_t i = 0; i < ZERO_BLOCK; i += 32) {
            acc0 |= load64(a + i);
            acc1 |= load64(a + i + 8);
            acc2 |= load64(a + i + 16);
            acc3 |= load64(a + i + 24);
        }
        if (acc0 | acc1 | acc2 | acc3) {
            return false;
        }
        a += ZERO_BLOCK;
    }
    uint64_t acc = 0;
    for (; a < e; a += 8) {
        acc |= load64(a);
    }
    return acc == 0;
}

#if ZERO_HAVE_X86
/* SSE2 is part of x86-64 itself, so this path needs no target attribute. SSE2 has no vector test instruction:
 * compare with zero and collect the byte masks. */
static inline bool sse2_zero(__m128i v)
{
    return _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) == 0xffff;
}

static inline __attribute__((always_inline)) bool sse2_is_zero(const unsigned char *p, size_t len)
{
    if (len < 16) {
        return small_is_zero(p, len);
    }
    __m128i ends = _mm_or_si128(_mm_loadu_si128((const __m128i *)(const void *)p),
                                _mm_loadu_si128((const __m128i *)(const void *)(p + len - 16)));
    if (!sse2_zero(ends)) {
        return false;
    }
    const __m128i *a = (const __m128i *)(const void *)align_up(p, 16);
    const __m128i *e = (const __m128i *)(const void *)align_down(p + len, 16);
    while ((size_t)(e - a) >= ZERO_BLOCK / 16) {
        __m128i x0 = _mm_or_si128(_mm_load_si128(a + 0), _mm_load_si128(a + 1));
        __m128i x1 = _mm_or_si128(_mm_load_si128(a + 2), _mm_load_si128(a + 3));
        for (size_t i = 4; i < ZERO_BLOCK / 16; i += 4) {
            x0 = _mm_or_si128(x0, _mm_or_si128(_mm_load_si128(a + i), _mm_load_si128(a + i + 1)));
            x1 = _mm_or_si128(x1, _mm_or_si128(_mm_load_si128(a + i + 2), _mm_load_si128(a + i + 3)));
        }
        if (!sse2_zero(_mm_or_si128(x0, x1))) {
            return false;
        }
        a += ZERO_BLOCK / 16;
    }
    __m128i acc = _mm_setzero_si128();
    for (; a < e; a++) {
        acc = _mm_or_si128(acc, _mm_load_si128(a));
    }
    return sse2_zero(acc);
}

static bool zero_sse2(const unsigned char *p, size_t len)
{
    return sse2_is_zero(p, len);
}

#define AVX2_TARGET __attribute__((target("avx2")))

AVX2_TARGET static inline bool avx2_zero(__m256i v)
{
    return _mm256_testz_si256(v, v);
}

AVX2_TARGET static bool zero_avx2(const unsigned char *p, size_t len)
{
    if (len < 32) {
        /* Inlined here, so that its 16-byte loads are VEX-encoded like the rest of this function. */
        return sse2_is_zero(p, len);
    }
    __m256i ends = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(const void *)p),
                                   _mm256_loadu_si256((const __m256i *)(const void *)(p + len - 32)));
    if (!avx2_zero(ends)) {
        return false;
    }
    const __m256i *a = (const __m256i *)(const void *)align_up(p, 32);
    const __m256i *e = (const __m256i *)(const void *)align_down(p + len, 32);
    while ((size_t)(e - a) >= ZERO_BLOCK / 32) {
        __m256i x0 = _mm256_or_si256(_mm256_load_si256(a + 0), _mm256_load_si256(a + 1));
        __m256i x1 = _mm256_or_si256(_mm256_load_si256(a + 2), _mm256_load_si256(a + 3));
        x0 = _mm256_or_si256(x0, _mm256_or_si256(_mm256_load_si256(a + 4), _mm256_load_si256(a + 5)));
        x1 = _mm256_or_si256(x1, _mm256_or_si256(_mm256_load_si256(a + 6), _mm256_load_si256(a + 7)));
        if (!avx2_zero(_mm256_or_si256(x0, x1))) {
            return false;
        }
        a += ZERO_BLOCK / 32;
    }
    __m256i acc = _mm256_setzero_si256();
    for (; a < e; a++) {
        acc = _mm256_or_si256(acc, _mm256_load_si256(a));
    }
    return avx2_zero(acc);
}

/* AVX-512BW for the byte-granular masked load of short buffers; the rest is AVX-512F. */
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw")))

AVX512_TARGET static inline bool avx512_zero(__m512i v)
{
    return _mm512_test_epi64_mask(v, v) == 0;
}

/* a | b | c in one instruction (truth table 0xfe: every input combination but all-zero gives 1). Fewer ALU
 * operations per load leave the vector ports free for the test. */
AVX512_TARGET static inline __m512i or3(__m512i a, __m512i b, __m512i c)
{
    return _mm512_ternarylogic_epi64(a, b, c, 0xfe);
}

AVX512_TARGET static bool zero_avx512(const unsigned char *p, size_t len)
{
    if (len < 64) {
        /* One masked load of exactly the @len bytes: masked-out bytes are not accessed and cannot fault. */
        if (len == 0) {
            return true;
        }
        __mmask64 m = ~(__mmask64)0 >> (64 - len);
        return avx512_zero(_mm512_maskz_loadu_epi8(m, p));
    }
    __m512i ends = _mm512_or_si512(_mm512_loadu_si512((const void *)p),
                                   _mm512_loadu_si512((const void *)(p + len - 64)));
    if (!avx512_zero(ends)) {
        return false;
    }
    const __m512i *a = (const __m512i *)(const void *)align_up(p, 64);
    const __m512i *e = (const __m512i *)(const void *)align_down(p + len, 64);
    while ((size_t)(e - a) >= ZERO_BLOCK / 64) {
        __m512i x = or3(_mm512_load_si512(a + 0), _mm512_load_si512(a + 1), _mm512_load_si512(a + 2));
        if (!avx512_zero(_mm512_or_si512(x, _mm512_load_si512(a + 3)))) {
            return false;
        }
        a += ZERO_BLOCK / 64;
    }
    __m512i acc = _mm512_setzero_si512();
    for (; a < e; a++) {
        acc = _mm512_or_si512(acc, _mm512_load_si512(a));
    }
    return avx512_zero(acc);
}
#endif /* ZERO_HAVE_X86 */

static const ZeroFn impl_fns[] = {
    [FERRY_ZERO_C] = zero_c,
#if ZERO_HAVE_X86
    [FERRY_ZERO_SSE2] = zero_sse2,
    [FERRY_ZERO_AVX2] = zero_avx2,
    [FERRY_ZERO_AVX512] = zero_avx512,
#endif
};

static bool zero_resolve(const unsigned char *p, size_t len);

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static bool available[FERRY_ZERO_AVX512 + 1];
/* The fastest path that may run (FERRY_ZERO_IMPL, ferry__zero_limit). */
static FerryZeroImpl impl_limit;
/*
 * The path every call takes. It starts as zero_resolve, which initialises and then calls the real one, so that
 * the per-page call is one indirect call with no pthread_once check. Atomic (relaxed: every value it ever holds is
 * a correct path) so that a limit set while other threads run is a defined race with a harmless outcome.
 */
static _Atomic(ZeroFn) chosen = zero_resolve;

/* The fastest available path within the limit; the C path is always available. */
static void choose(void)
{
    int i = (int)impl_limit;
    while (i > (int)FERRY_ZERO_C && !available[i]) {
        i--;
    }
    atomic_store_explicit(&chosen, impl_fns[i], memory_order_relaxed);
}

static void zero_init(void)
{
    available[FERRY_ZERO_C] = true;
#if ZERO_HAVE_X86
    __builtin_cpu_init();
    available[FERRY_ZERO_SSE2] = __builtin_cpu_supports("sse2");
    /* libgcc's checks of AVX2 and AVX-512 include the OS's consent to save the wider registers (XCR0). */
    available[FERRY_ZERO_AVX2] = __builtin_cpu_supports("avx2");
    available[FERRY_ZERO_AVX512] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif
    impl_limit = FERRY_ZERO_AVX512;
    const char *env = getenv("FERRY_ZERO_IMPL");
    if (env && strcmp(env, "c") == 0) {
        impl_limit = FERRY_ZERO_C;
    } else if (env && strcmp(env, "sse2") == 0) {
        impl_limit = FERRY_ZERO_SSE2;
    } else if (env && strcmp(env, "avx2") == 0) {
        impl_limit = FERRY_ZERO_AVX2;
    }
    choose();
}

static inline void ensure_init(void)
{
    pthread_once(&init_once, zero_init);
}

static bool zero_resolve(const unsigned char *p, size_t len)
{
    ensure_init();
    return atomic_load_explicit(&chosen, memory_order_relaxed)(p, len);
}

bool ferry__buffer_is_zero(const void *p, size_t len)
{
    return atomic_load_explicit(&chosen, memory_order_relaxed)(p, len);
}

bool ferry__zero_available(FerryZeroImpl impl)
{
    ensure_init();
    return (unsigned)impl <= FERRY_ZERO_AVX512 && available[impl];
}

FerryZeroImpl ferry__zero_limit(FerryZeroImpl max)
{
    ensure_init();
    FerryZeroImpl prev = impl_limit;
    impl_limit = (unsigned)max > FERRY_ZERO_AVX512 ? FERRY_ZERO_AVX512 : max;
    choose();
    return prev;
}
