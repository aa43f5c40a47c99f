/* Counts the primes below N (default 50,000,000; or argv[1]) with a pool:
 *
 *     $ ./count_primes
 *     primes below 50000000: 3001134
 *
 * The time taken goes to stderr, and so does the progress bar when stderr is
 * a terminal. In Python it would be:
 *
 *     def count_block(block):
 *         lo, hi = block
 *         ...sieve [lo, hi) with the small primes...
 *
 *     with Pool() as pool:
 *         counts = pool.map(count_block, blocks)
 *     print(f"primes below {n}: {sum(counts)}")
 *
 * The range [0, N) is cut into 1000 blocks, and each task counts the primes
 * of its block with a segmented sieve of Eratosthenes: it crosses out the
 * multiples of the odd primes up to sqrt(N), one cache-sized segment at a
 * time. Those small primes are computed once, before the pool is made:
 * workers are forked from this process, so they find them in their own copy
 * of its memory, through ctx, at no cost. (Memory changed after
 * mp_pool_new would not reach them; the arena would.)
 */
#define _POSIX_C_SOURCE 200809L
#include <mproc.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_N 50000000ULL
#define MAX_N 1000000000000ULL /* 10^12: the small primes stay below 10^6 */
#define BLOCKS 1000
#define SEGMENT 32768 /* odd numbers sieved at a time: 32 KiB of flags */

/* One task's input: count the primes in [lo, hi). */
struct block {
    uint64_t lo, hi;
};

/* Every task's ctx: the odd primes up to sqrt(N), in order. */
struct small_primes {
    const uint32_t *p;
    size_t n;
};

static int count_block(const void *in, void *out, void *ctx)
{
    const struct block *b = in;
    const struct small_primes *sp = ctx;
    unsigned char composite[SEGMENT]; /* one flag per odd number */
    uint64_t count = b->lo <= 2 && 2 < b->hi; /* the one even prime */
    uint64_t first = b->lo <= 3 ? 3 : b->lo | 1; /* odd, and 1 is no prime */
    for (uint64_t s = first; s < b->hi; s += 2 * (uint64_t)SEGMENT) {
        uint64_t e = b->hi - s > 2 * (uint64_t)SEGMENT ? s + 2 * (uint64_t)SEGMENT : b->hi;
        size_t len = (size_t)(e - s + 1) / 2; /* the odd numbers s, s+2, .. < e */
        memset(composite, 0, len);
        for (size_t k = 0; k < sp->n; k++) {
            uint64_t p = sp->p[k];
            uint64_t m = p * p; /* smaller multiples have a smaller factor */
            if (m >= e)
                break;
            if (m < s)
                m = (s + p - 1) / p * p;
            if (m % 2 == 0)
                m += p; /* odd multiples only */
            for (; m < e; m += 2 * p)
                composite[(m - s) / 2] = 1;
        }
        for (size_t j = 0; j < len; j++)
            count += !composite[j];
    }
    *(uint64_t *)out = count;
    return 0;
}

/* The odd primes up to sqrt(n), by a plain sieve; NULL when out of memory. */
static uint32_t *odd_primes_to_sqrt(uint64_t n, size_t *count)
{
    uint64_t r = 0;
    while ((r + 1) * (r + 1) <= n)
        r++;
    unsigned char *composite = calloc(r + 1, 1);
    uint32_t *p = malloc((r / 2 + 1) * sizeof *p);
    if (!composite || !p) {
        free(composite);
        free(p);
        return NULL;
    }
    *count = 0;
    for (uint64_t i = 3; i <= r; i += 2) {
        if (composite[i])
            continue;
        p[(*count)++] = (uint32_t)i;
        for (uint64_t m = i * i; m <= r; m += 2 * i)
            composite[m] = 1;
    }
    free(composite);
    return p;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    uint64_t n = DEFAULT_N;
    if (argc > 1) {
        char *end;
        unsigned long long v = strtoull(argv[1], &end, 10);
        if (argc > 2 || *argv[1] == '-' || *end != '\0' || end == argv[1] || v > MAX_N) {
            fprintf(stderr, "usage: count_primes [N]   (N up to %llu)\n", MAX_N);
            return 2;
        }
        n = v;
    }
    double t0 = now();

    /* Before the pool: the workers will see these, read-only. */
    struct small_primes sp;
    uint32_t *small = odd_primes_to_sqrt(n, &sp.n);
    struct block *blocks = malloc(BLOCKS * sizeof *blocks);
    uint64_t *counts = malloc(BLOCKS * sizeof *counts);
    if (!small || !blocks || !counts) {
        fprintf(stderr, "count_primes: out of memory\n");
        return 1;
    }
    sp.p = small;
    for (int i = 0; i < BLOCKS; i++)
        blocks[i] = (struct block){ n * i / BLOCKS, n * (i + 1) / BLOCKS };

    mp_pool *pool;
    int workers = mp_process_cpu_count();
    int err = mp_pool_new(&pool, &(mp_pool_opts){ .processes = workers });
    if (err < 0) {
        fprintf(stderr, "count_primes: %s\n", mp_strerror(err));
        return 1;
    }
    /* blocks and counts are ordinary memory: the pool copies the blocks in
     * once and the counts back once. */
    err = mp_pool_map(pool, count_block, blocks, sizeof *blocks, counts, sizeof *counts, BLOCKS,
                      &(mp_map_opts){ .ctx = &sp,
                                      .progress = mp_progress_bar,
                                      .progress_arg = "primes" });
    mp_pool_free(pool);
    if (err < 0) {
        fprintf(stderr, "count_primes: map: %s\n", mp_strerror(err));
        return 1;
    }

    uint64_t total = 0;
    for (int i = 0; i < BLOCKS; i++)
        total += counts[i];
    printf("primes below %" PRIu64 ": %" PRIu64 "\n", n, total);
    fflush(stdout); /* before the time, even into a pipe */
    fprintf(stderr, "%.2f s, %d workers, %d blocks\n", now() - t0, workers, BLOCKS);
    free(counts);
    free(blocks);
    free(small);
    return 0;
}
