/*
 * store_forward.c - does a load take its data from an AVX-512 store still in flight when
 * the store, the load or both are masked? A dependent chain of store, load back, add, in
 * four variants; the time per round trip in TSC ticks. Where forwarding works, the round
 * trip is the store-to-load latency plus the add; where it does not, the load waits for the
 * store to reach the cache.
 * The reason csm_short.h keeps softmax's last partial vector of each short row in
 * csm_short_tails (benchmarks/RESULTS.md, "Short rows' tails").
 *
 *   gcc -O2 -mavx512f store_forward.c -o store_forward && ./store_forward
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <x86intrin.h>

static float buf[16] __attribute__((aligned(64)));

/* `rounds` round trips of v through buf: store (masked: the low 8 lanes), load (masked:
   zeroing), add; the compiler barrier keeps each store and load in memory */
#define ROUNDS(STORE, LOAD)                                                                                            \
    for (long i = 0; i < rounds; i++) {                                                                                \
        STORE;                                                                                                         \
        __asm__ volatile("" ::: "memory");                                                                             \
        v = _mm512_add_ps(LOAD, tiny);                                                                                 \
    }

int main(void)
{
    const long rounds = 50000000;
    const __mmask16 k = 0xff; /* half the lanes: a row of 8 floats */
    __m512 v = _mm512_set1_ps(1.0f);
    const __m512 tiny = _mm512_set1_ps(1e-9f);
    uint64_t t[5];
    t[0] = __rdtsc();
    ROUNDS(_mm512_storeu_ps(buf, v), _mm512_loadu_ps(buf));
    t[1] = __rdtsc();
    ROUNDS(_mm512_mask_storeu_ps(buf, k, v), _mm512_maskz_loadu_ps(k, buf));
    t[2] = __rdtsc();
    ROUNDS(_mm512_storeu_ps(buf, v), _mm512_maskz_loadu_ps(k, buf));
    t[3] = __rdtsc();
    ROUNDS(_mm512_mask_storeu_ps(buf, k, v), _mm512_loadu_ps(buf));
    t[4] = __rdtsc();
    static const char *const names[] = {"store, load", "masked store, masked load", "store, masked load",
                                        "masked store, load"};
    for (int m = 0; m < 4; m++)
        printf("%-26s %5.1f TSC ticks per round trip\n", names[m], (double)(t[m + 1] - t[m]) / rounds);
    float s[16];
    _mm512_storeu_ps(s, v);
    return s[0] == 12345.0f; /* (uses v) */
}
