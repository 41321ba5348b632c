/*
 * Bitmaps of unsigned long words (util/bitmap.h). The plain functions assume one owning thread; the _atomic ones
 * use GCC __atomic builtins so that setters on other threads (explicit dirty marks) never lose a bit while the
 * migration thread harvests. Bits past @nbits in the last word are kept zero by every function that writes whole
 * words, so that count and find never see them.
 */
#include <stdlib.h>
#include <string.h>

#include "util/bitmap.h"
#include "util/util.h"

#define BIT_WORD(bit) ((bit) / FERRY_BITS_PER_LONG)
#define BIT_MASK(bit) (1UL << ((bit) % FERRY_BITS_PER_LONG))

/* Mask of the valid bits of the last word of an @nbits bitmap. */
static unsigned long last_word_mask(size_t nbits)
{
    size_t rem = nbits % FERRY_BITS_PER_LONG;
    return rem ? (1UL << rem) - 1 : ~0UL;
}

unsigned long *ferry__bitmap_new(size_t nbits)
{
    return ferry__xcalloc(FERRY_BITMAP_LONGS(nbits) ? FERRY_BITMAP_LONGS(nbits) : 1, sizeof(unsigned long));
}

void ferry__bitmap_set(unsigned long *map, size_t bit)
{
    map[BIT_WORD(bit)] |= BIT_MASK(bit);
}

void ferry__bitmap_clear(unsigned long *map, size_t bit)
{
    map[BIT_WORD(bit)] &= ~BIT_MASK(bit);
}

bool ferry__bitmap_test(const unsigned long *map, size_t bit)
{
    return (map[BIT_WORD(bit)] & BIT_MASK(bit)) != 0;
}

/* Runs @body for every word @i touched by [start, start + count), with @mask holding the bits in
 * range. Shared by the plain and the atomic range setter. */
#define FOR_EACH_RANGE_WORD(start, count, i, mask, body)                                                     \
    do {                                                                                                     \
        size_t end_ = (start) + (count);                                                                     \
        size_t pos_ = (start);                                                                               \
        while (pos_ < end_) {                                                                                \
            size_t i = BIT_WORD(pos_);                                                                       \
            size_t off_ = pos_ % FERRY_BITS_PER_LONG;                                                        \
            size_t n_ = FERRY_MIN(FERRY_BITS_PER_LONG - off_, end_ - pos_);                                  \
            unsigned long mask = (n_ == FERRY_BITS_PER_LONG) ? ~0UL : (((1UL << n_) - 1) << off_);           \
            body;                                                                                            \
            pos_ += n_;                                                                                      \
        }                                                                                                    \
    } while (0)

void ferry__bitmap_set_range(unsigned long *map, size_t start, size_t count)
{
    FOR_EACH_RANGE_WORD(start, count, i, mask, map[i] |= mask);
}

void ferry__bitmap_set_range_atomic(unsigned long *map, size_t start, size_t count)
{
    FOR_EACH_RANGE_WORD(start, count, i, mask, __atomic_fetch_or(&map[i], mask, __ATOMIC_SEQ_CST));
}

void ferry__bitmap_zero(unsigned long *map, size_t nbits)
{
    memset(map, 0, FERRY_BITMAP_LONGS(nbits) * sizeof(unsigned long));
}

void ferry__bitmap_fill(unsigned long *map, size_t nbits)
{
    size_t words = FERRY_BITMAP_LONGS(nbits);
    if (!words) {
        return;
    }
    memset(map, 0xff, words * sizeof(unsigned long));
    map[words - 1] = last_word_mask(nbits);
}

size_t ferry__bitmap_count(const unsigned long *map, size_t nbits)
{
    size_t words = FERRY_BITMAP_LONGS(nbits);
    size_t n = 0;
    for (size_t i = 0; i < words; i++) {
        unsigned long w = map[i];
        if (i == words - 1) {
            w &= last_word_mask(nbits);
        }
        n += (size_t)__builtin_popcountl(w);
    }
    return n;
}

/* First bit at or after @start whose value, after XOR with @invert, is set; @nbits if none. */
static size_t find_next(const unsigned long *map, size_t nbits, size_t start, unsigned long invert)
{
    if (start >= nbits) {
        return nbits;
    }
    size_t i = BIT_WORD(start);
    unsigned long w = (map[i] ^ invert) & (~0UL << (start % FERRY_BITS_PER_LONG));
    size_t words = FERRY_BITMAP_LONGS(nbits);
    for (;;) {
        if (w) {
            size_t bit = i * FERRY_BITS_PER_LONG + (size_t)__builtin_ctzl(w);
            return bit < nbits ? bit : nbits;
        }
        if (++i >= words) {
            return nbits;
        }
        w = map[i] ^ invert;
    }
}

size_t ferry__bitmap_find_next(const unsigned long *map, size_t nbits, size_t start)
{
    return find_next(map, nbits, start, 0);
}

size_t ferry__bitmap_find_next_zero(const unsigned long *map, size_t nbits, size_t start)
{
    return find_next(map, nbits, start, ~0UL);
}

void ferry__bitmap_or(unsigned long *dst, const unsigned long *src, size_t nbits)
{
    size_t words = FERRY_BITMAP_LONGS(nbits);
    for (size_t i = 0; i < words; i++) {
        dst[i] |= src[i];
    }
}

void ferry__bitmap_move_atomic(unsigned long *dst, unsigned long *src, size_t nbits)
{
    size_t words = FERRY_BITMAP_LONGS(nbits);
    for (size_t i = 0; i < words; i++) {
        /* A relaxed load first skips the exchange (and its cache-line ownership) for words with nothing set. */
        if (__atomic_load_n(&src[i], __ATOMIC_RELAXED) == 0) {
            continue;
        }
        dst[i] |= __atomic_exchange_n(&src[i], 0UL, __ATOMIC_SEQ_CST);
    }
}

bool ferry__bitmap_test_atomic(const unsigned long *map, size_t bit)
{
    return (__atomic_load_n(&map[bit / FERRY_BITS_PER_LONG], __ATOMIC_ACQUIRE) >> (bit % FERRY_BITS_PER_LONG)) & 1;
}

bool ferry__bitmap_test_and_clear_atomic(unsigned long *map, size_t bit)
{
    unsigned long mask = 1UL << (bit % FERRY_BITS_PER_LONG);
    return (__atomic_fetch_and(&map[bit / FERRY_BITS_PER_LONG], ~mask, __ATOMIC_ACQ_REL) & mask) != 0;
}

bool ferry__bitmap_test_and_set_atomic(unsigned long *map, size_t bit)
{
    unsigned long mask = 1UL << (bit % FERRY_BITS_PER_LONG);
    return (__atomic_fetch_or(&map[bit / FERRY_BITS_PER_LONG], mask, __ATOMIC_ACQ_REL) & mask) != 0;
}

void ferry__bitmap_to_bytes(const unsigned long *map, size_t nbits, uint8_t *out)
{
    size_t nbytes = (nbits + 7) / 8;
    for (size_t i = 0; i < nbytes; i++) {
        out[i] = (uint8_t)(map[i / sizeof(unsigned long)] >> (8 * (i % sizeof(unsigned long))));
    }
    if (nbits % 8) {
        out[nbytes - 1] &= (uint8_t)((1u << (nbits % 8)) - 1);
    }
}

void ferry__bitmap_from_bytes(unsigned long *map, size_t nbits, const uint8_t *in)
{
    size_t nbytes = (nbits + 7) / 8;
    size_t words = FERRY_BITMAP_LONGS(nbits);
    for (size_t w = 0; w < words; w++) {
        unsigned long v = 0;
        size_t base = w * sizeof(unsigned long);
        for (size_t k = 0; k < sizeof(unsigned long) && base + k < nbytes; k++) {
            v |= (unsigned long)in[base + k] << (8 * k);
        }
        map[w] = v;
    }
    if (nbits % (8 * sizeof(unsigned long))) {
        map[words - 1] &= (1UL << (nbits % (8 * sizeof(unsigned long)))) - 1;
    }
}
