/*
 * ferry-workload's page contents: the splitmix64 generator and the self-verifying pages of the random, zero and
 * half patterns. A written page carries its global index and a generation in a 16-byte header, and every other
 * byte derives from (seed, index, generation), so a page can be checked alone, without a copy of the expected
 * RAM. This file knows nothing about threads, blocks or the ab pattern (see workload.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "workload.h"

static const char *const pattern_names[] = {
    [WORKLOAD_PATTERN_AB] = "ab",
    [WORKLOAD_PATTERN_RANDOM] = "random",
    [WORKLOAD_PATTERN_ZERO] = "zero",
    [WORKLOAD_PATTERN_HALF] = "half",
};

bool workload_pattern_parse(const char *name, WorkloadPattern *pattern)
{
    for (size_t i = 0; i < sizeof(pattern_names) / sizeof(pattern_names[0]); i++) {
        if (strcmp(name, pattern_names[i]) == 0) {
            *pattern = (WorkloadPattern)i;
            return true;
        }
    }
    return false;
}

const char *workload_pattern_name(WorkloadPattern pattern)
{
    return pattern_names[pattern];
}

/* splitmix64 (Steele, Lea, Flood): every 64-bit state is valid, which keeps loaded worker states trivially
 * acceptable, and one step is a handful of multiplications, so generating a page costs less than copying it. */
uint64_t workload_rng_next(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

uint64_t workload_rng_derive(uint64_t a, uint64_t b, uint64_t c)
{
    /* Chaining through the mixer (rather than XOR-ing the inputs) keeps (a, b, c) and (a, c, b) apart. */
    uint64_t s = a;

    s = workload_rng_next(&s) ^ b;
    s = workload_rng_next(&s) ^ c;
    return workload_rng_next(&s);
}

void workload_page_write(uint8_t *page, size_t page_size, uint64_t seed, uint64_t index, uint64_t gen)
{
    uint64_t *words = (uint64_t *)(void *)page;
    uint64_t state = workload_rng_derive(seed, index, gen);

    words[0] = index;
    words[1] = gen;
    for (size_t i = WORKLOAD_PAGE_HEADER / 8; i < page_size / 8; i++) {
        words[i] = workload_rng_next(&state);
    }
}

uint64_t workload_page_generation(const uint8_t *page)
{
    return ((const uint64_t *)(const void *)page)[1];
}

bool workload_page_verify(const uint8_t *page, size_t page_size, const uint8_t *zero_page, uint64_t seed,
                          uint64_t index, uint64_t *gen, char *why, size_t why_len)
{
    const uint64_t *words = (const uint64_t *)(const void *)page;
    uint64_t state;

    *gen = 0;
    if (words[0] == 0 && words[1] == 0) {
        /* Page 0's header also holds index 0, but a written page never has generation 0. */
        if (memcmp(page, zero_page, page_size) == 0) {
            return true;
        }
        snprintf(why, why_len, "page %" PRIu64 ": header is zero but the page is not", index);
        return false;
    }
    if (words[0] != index) {
        snprintf(why, why_len, "page %" PRIu64 ": header says page %" PRIu64 " (generation %" PRIu64 ")", index,
                 words[0], words[1]);
        return false;
    }
    if (words[1] == 0) {
        snprintf(why, why_len, "page %" PRIu64 ": generation 0 in a non-zero page", index);
        return false;
    }
    state = workload_rng_derive(seed, index, words[1]);
    for (size_t i = WORKLOAD_PAGE_HEADER / 8; i < page_size / 8; i++) {
        uint64_t expected = workload_rng_next(&state);

        if (words[i] != expected) {
            snprintf(why, why_len,
                     "page %" PRIu64 " generation %" PRIu64 ": bytes at offset %zu are 0x%016" PRIx64
                     ", expected 0x%016" PRIx64,
                     index, words[1], i * 8, words[i], expected);
            return false;
        }
    }
    *gen = words[1];
    return true;
}
