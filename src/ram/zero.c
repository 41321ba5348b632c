/*
 * Zero-page detection: is a buffer all zero bytes? Used on every page the source sends, so the common case (a
 * page-aligned 4 KiB page) must run at memory speed. Plain C plus GCC's generic vector extension (16-byte vectors,
 * SSE2 on the x86-64 baseline, NEON on arm64): GCC 12 at -O2 does not vectorize the scalar OR chain by itself, and
 * the vector form runs about twice as fast on cached data. No intrinsics, no assumptions about alignment or length
 * beyond what is checked here.
 */
#include <stdint.h>
#include <string.h>

#include "ram/ram.h"

/* A 16-byte vector that may alias any object, so that reading a byte buffer through it is defined behaviour. */
typedef uint64_t zero_vec __attribute__((vector_size(16), may_alias));

#define CHUNK 64
#define VECS_PER_CHUNK (CHUNK / sizeof(zero_vec))

static bool bytes_are_zero(const unsigned char *p, size_t len)
{
    unsigned char acc = 0;
    for (size_t i = 0; i < len; i++) {
        acc |= p[i];
    }
    return acc == 0;
}

bool ferry__buffer_is_zero(const void *p, size_t len)
{
    const unsigned char *b = p;

    if (len < CHUNK) {
        return bytes_are_zero(b, len);
    }

    /* Data pages usually differ from zero at their start or end: look there first, unaligned-safe via memcpy. */
    uint64_t head, tail;
    memcpy(&head, b, sizeof(head));
    memcpy(&tail, b + len - sizeof(tail), sizeof(tail));
    if (head | tail) {
        return false;
    }

    /* With len >= CHUNK there is at least one CHUNK-aligned address in [b, b + len], so first <= last. */
    const unsigned char *first = (const unsigned char *)(((uintptr_t)b + CHUNK - 1) & ~(uintptr_t)(CHUNK - 1));
    const unsigned char *last = (const unsigned char *)(((uintptr_t)(b + len)) & ~(uintptr_t)(CHUNK - 1));
    if (!bytes_are_zero(b, (size_t)(first - b)) || !bytes_are_zero(last, (size_t)(b + len - last))) {
        return false;
    }

    /* Four chunks (256 bytes) are ORed together between branches: one test per 256 bytes keeps the loop bound by
     * loads rather than by branches. */
    const zero_vec *v = (const zero_vec *)(const void *)first;
    const zero_vec *vend = (const zero_vec *)(const void *)last;
    while ((size_t)(vend - v) >= 4 * VECS_PER_CHUNK) {
        zero_vec acc = v[0];
        for (size_t i = 1; i < 4 * VECS_PER_CHUNK; i++) {
            acc |= v[i];
        }
        if (acc[0] | acc[1]) {
            return false;
        }
        v += 4 * VECS_PER_CHUNK;
    }
    zero_vec acc = {0, 0};
    for (; v < vend; v++) {
        acc |= *v;
    }
    return (acc[0] | acc[1]) == 0;
}
