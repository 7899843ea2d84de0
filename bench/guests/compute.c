/* compute.c — the memory-bound guest of the capacity benchmark
 * (bench/capacity.py): the same work compiled for each memory layout shows
 * what explicit bounds checks cost when a worker's pool is too large for
 * wasmtime's 4 GiB reservations.
 *
 * A WASI reactor with one action, work(seed): fill, sort, write, hash and
 * move 64 KiB of linear memory — loads and stores of every width, the
 * shape of a JSON handler's inner loops. It imports nothing from rusm. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WORDS 16384
#define TEXT_BYTES 65536
#define MOVED_BYTES 60000

static uint32_t words[WORDS];
static char text[TEXT_BYTES];

static int ascending(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

__attribute__((export_name("work"))) uint32_t work(uint32_t seed) {
    uint32_t hash = 2166136261u;
    for (int i = 0; i < WORDS; i++) {
        seed = seed * 1103515245u + 12345u;
        words[i] = seed >> 8;
    }
    qsort(words, WORDS, sizeof words[0], ascending);
    for (int i = 0; i < TEXT_BYTES; i++) {
        text[i] = (char)('a' + (words[i & (WORDS - 1)] + (uint32_t)i) % 26);
    }
    for (int i = 0; i < TEXT_BYTES; i++) {
        hash = (hash ^ (unsigned char)text[i]) * 16777619u;
    }
    memmove(text + 1, text, MOVED_BYTES);
    return hash ^ words[100] ^ (uint32_t)strnlen(text, TEXT_BYTES);
}
