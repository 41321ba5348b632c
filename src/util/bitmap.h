/*
 * Bitmaps of unsigned long words, one bit per page. The plain functions are for bitmaps owned by one thread; the
 * _atomic ones may race with other setters (explicit dirty marks from any thread). Not a general container.
 */
#ifndef FERRY_BITMAP_H
#define FERRY_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FERRY_BITS_PER_LONG (sizeof(unsigned long) * 8)
#define FERRY_BITMAP_LONGS(nbits) (((nbits) + FERRY_BITS_PER_LONG - 1) / FERRY_BITS_PER_LONG)

unsigned long *ferry__bitmap_new(size_t nbits);   /* zeroed; free with free() */
void ferry__bitmap_set(unsigned long *map, size_t bit);
void ferry__bitmap_clear(unsigned long *map, size_t bit);
bool ferry__bitmap_test(const unsigned long *map, size_t bit);
void ferry__bitmap_set_range(unsigned long *map, size_t start, size_t count);
void ferry__bitmap_zero(unsigned long *map, size_t nbits);
void ferry__bitmap_fill(unsigned long *map, size_t nbits);
size_t ferry__bitmap_count(const unsigned long *map, size_t nbits);
/* First set bit at or after @start, or @nbits if none. */
size_t ferry__bitmap_find_next(const unsigned long *map, size_t nbits, size_t start);
/* First clear bit at or after @start, or @nbits if none. */
size_t ferry__bitmap_find_next_zero(const unsigned long *map, size_t nbits, size_t start);
/* dst |= src */
void ferry__bitmap_or(unsigned long *dst, const unsigned long *src, size_t nbits);

void ferry__bitmap_set_range_atomic(unsigned long *map, size_t start, size_t count);
/* dst |= src, and src cleared, word by word with atomic exchange on src. */
/* Atomic single-bit operations, for bitmaps that two threads change (postcopy's pages still needed): test with
 * acquire order; test-and-clear / test-and-set say whether the bit was set before. */
bool ferry__bitmap_test_atomic(const unsigned long *map, size_t bit);
bool ferry__bitmap_test_and_clear_atomic(unsigned long *map, size_t bit);
bool ferry__bitmap_test_and_set_atomic(unsigned long *map, size_t bit);
void ferry__bitmap_move_atomic(unsigned long *dst, unsigned long *src, size_t nbits);
/* The bitmaps of files and the wire: bit i in bit i % 8 of byte i / 8 (least significant first), ceil(nbits / 8)
 * bytes. These convert whole words at a time, whatever the host's byte order. */
void ferry__bitmap_to_bytes(const unsigned long *map, size_t nbits, uint8_t *out);
void ferry__bitmap_from_bytes(unsigned long *map, size_t nbits, const uint8_t *in);

#endif
