/* The family arena: DESIGN section 3. */
#include "harness.h"

#include "arena.h"
#include "os/os.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* Set in a copy of this binary that a case re-executes (see reexec). */
#define ROLE_ENV "MPROC_TEST_ARENA_ROLE"



/* Pointers cross a t_chan as two ints. */
static void send_ptr(t_chan *c, const void *p)
{
    uint64_t v = (uintptr_t)p;
    t_send(c, (int)(uint32_t)(v >> 32));
    t_send(c, (int)(uint32_t)v);
}

static void *recv_ptr(t_chan *c)
{
    uint64_t hi = (uint32_t)t_recv(c, 10), lo = (uint32_t)t_recv(c, 10);
    return (void *)(uintptr_t)(hi << 32 | lo);
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

static unsigned rnd(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Mostly small, some medium, now and then a page run. At least 8. */
static size_t pick_size(unsigned *s)
{
    unsigned r = rnd(s) % 100;
    if (r < 70)
        return 8 + rnd(s) % 249;
    if (r < 98)
        return 257 + rnd(s) % (32 * KiB - 256);
    return 32 * KiB + 1 + rnd(s) % (224 * KiB);
}

/* Runs this binary again, case `name`, with ROLE_ENV=role, MPROC_ARENA_SIZE
 * (if size), RLIMIT_AS (if as) and RLIMIT_FSIZE (if fsize): its exit code,
 * or -signal. */
struct reexec { const char *name, *role, *size; rlim_t as, fsize; };

static int reexec_main(void *arg)
{
    struct reexec *r = arg;
    setenv(ROLE_ENV, r->role, 1);
    if (r->size)
        setenv("MPROC_ARENA_SIZE", r->size, 1);
    if (r->as && setrlimit(RLIMIT_AS, &(struct rlimit){r->as, r->as}) < 0)
        return 126;
    if (r->fsize && setrlimit(RLIMIT_FSIZE, &(struct rlimit){r->fsize, r->fsize}) < 0)
        return 126;
    execl("/proc/self/exe", "test_arena", r->name, (char *)NULL);
    return 127;
}

static int reexec(struct reexec r)
{
    mp_process *p = t_start(reexec_main, &r, NULL);
    ASSERT_OK(mp_process_join(p, 60 * t_scale()));
    int code = mp_process_exitcode(p);
    mp_process_free(p);
    return code;
}

static bool role(const char *r)
{
    const char *e = getenv(ROLE_ENV);
    return e && strcmp(e, r) == 0;
}

/* For a case that needs an arena nothing else has used (the harness may run
 * every case in children of one process): true in a fresh copy of this
 * binary, where the case goes on; elsewhere it runs that copy and checks it
 * passed. Call as fresh(__func__). */
static bool fresh(const char *func)
{
    if (role("fresh"))
        return true;
    ASSERT_EQ(reexec((struct reexec){.name = func + strlen("test_"), .role = "fresh"}), 0);
    return false;
}

/* ---- the arena promise ------------------------------------------------------ */

static int read_by_pointer(void *arg)
{
    (void)arg;
    t_send(&to_parent, 1);
    int *p = recv_ptr(&to_child);
    if (p[0] != 42 || p[1023] != 43)
        return 1;
    p[1] = 7;
    return 0;
}

TEST(block_allocated_later_is_seen_by_running_process)
{
    chans_open();
    mp_process *p = t_start(read_by_pointer, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1); /* it runs: now allocate */
    int *b = mp_shared_alloc(1024 * sizeof(int));
    ASSERT_TRUE(b != NULL);
    b[0] = 42;
    b[1023] = 43;
    send_ptr(&to_child, b);
    t_join(p, 0);
    ASSERT_EQ(b[1], 7);
    mp_shared_free(b);
    chans_close();
}

/* ---- blocks ---------------------------------------------------------------- */

TEST(blocks_are_zeroed_and_aligned_also_when_reused)
{
    static const size_t sizes[] = {1, 7, 8, 15, 16, 17, 31, 48, 100, 128, 129, 200, 256, 257,
                                   500, 1000, 1024, 1500, 2048, 3000, 4096, 5000, 8192, 10000,
                                   16384, 20000, 32767, 32768, 32769, 40000, 65536, 100000,
                                   MiB, 3 * MiB + 5};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = mp_shared_alloc(n);
        ASSERT_TRUE(p != NULL);
        ASSERT_EQ((uintptr_t)p % 16, 0);
        ASSERT_TRUE(all_zero(p, n));
        memset(p, 0xa5, n);
        mp_shared_free(p);
        unsigned char *q = mp_shared_alloc(n);
        ASSERT_TRUE(q != NULL);
        if (n <= 32 * KiB)
            ASSERT_TRUE(q == p); /* the same block, dirty: it must have been zeroed */
        ASSERT_TRUE(all_zero(q, n));
        memset(q, 0x5a, n);
        mp_shared_free(q);
    }
    /* Through the shared free lists too: more than a thread cache holds. */
    enum { N = 1000 };
    static unsigned char *b[N];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            ASSERT_TRUE((b[i] = mp_shared_alloc(64)) != NULL);
            ASSERT_TRUE(all_zero(b[i], 64));
            memset(b[i], 0xff, 64);
        }
        for (int i = 0; i < N; i++)
            mp_shared_free(b[i]);
    }
    ASSERT_EQ(mp__arena_check(), 0);
}

TEST(calloc_overflow_and_size_zero_give_null)
{
    size_t u = mp_shared_usage();
    ASSERT_TRUE(mp_shared_alloc(0) == NULL);
    ASSERT_TRUE(mp_shared_calloc(0, 8) == NULL);
    ASSERT_TRUE(mp_shared_calloc(8, 0) == NULL);
    ASSERT_TRUE(mp_shared_calloc(SIZE_MAX / 2, 3) == NULL);
    ASSERT_TRUE(mp_shared_calloc((size_t)1 << 33, (size_t)1 << 33) == NULL);
    ASSERT_TRUE(mp_shared_alloc(SIZE_MAX) == NULL);
    ASSERT_TRUE(mp_shared_alloc(SIZE_MAX - 4095) == NULL);
    ASSERT_TRUE(mp_shared_alloc(mp__arena_size() + 1) == NULL);
    ASSERT_EQ(mp_shared_usage(), u);
    uint64_t *a = mp_shared_calloc(4, sizeof *a);
    ASSERT_TRUE(a != NULL);
    ASSERT_TRUE(all_zero(a, 4 * sizeof *a));
    ASSERT_EQ(mp_shared_usage(), u + 32);
    mp_shared_free(a);
    ASSERT_EQ(mp_shared_usage(), u);
}

TEST(free_of_null_and_foreign_pointers_is_harmless)
{
    if (!fresh(__func__))
        return;
    mp_shared_free(NULL);
    int local;
    mp_shared_free(&local);
    void *heap = malloc(64);
    mp_shared_free(heap);
    free(heap);
    mp_shared_free((void *)(uintptr_t)16);
    mp_shared_free(mp__arena_base());                            /* the header */
    mp_shared_free((char *)mp__arena_base() + mp__arena_size() - 4096); /* never used */

    size_t u0 = mp_shared_usage();
    unsigned char *small = mp_shared_alloc(64), *large = mp_shared_alloc(100 * KiB);
    ASSERT_TRUE(small && large);
    memset(small, 1, 64);
    memset(large, 2, 100 * KiB);
    size_t u1 = mp_shared_usage();
    mp_shared_free(small + 1);          /* misaligned */
    mp_shared_free(small + 16);         /* inside the block */
    mp_shared_free(small + 64 * 40);    /* a block of its slab never handed out */
    mp_shared_free(large + 16);
    mp_shared_free(large + 4096);       /* inside the run */
    mp_shared_free(large + 100 * KiB);  /* just past it */
    ASSERT_EQ(mp_shared_usage(), u1);
    /* Nothing was taken back: the next blocks are new ones. */
    unsigned char *s2 = mp_shared_alloc(64);
    ASSERT_TRUE(s2 != small && all_zero(s2, 64));
    ASSERT_EQ(small[0], 1);
    ASSERT_EQ(large[4096], 2);
    mp_shared_free(s2);
    mp_shared_free(small);
    mp_shared_free(large);
    ASSERT_EQ(mp_shared_usage(), u0);
    ASSERT_EQ(mp__arena_check(), 0);
}

/* ---- usage --------------------------------------------------------------------- */

static int hold_1000(void *arg)
{
    (void)arg;
    void *p = mp_shared_alloc(1000);
    t_send(&to_parent, p != NULL);
    t_recv(&to_child, 30);
    mp_shared_free(p);
    t_send(&to_parent, 2);
    return 0;
}

TEST(usage_counts_exactly)
{
    static const struct { size_t ask, counted; } c[] = {
        {1, 16}, {16, 16}, {17, 32}, {128, 128}, {129, 160}, {1000, 1024}, {1025, 1280},
        {32768, 32768}, {32769, 36864}, {100000, 102400}, {MiB, MiB},
    };
    enum { N = sizeof c / sizeof c[0] };
    void *p[N];
    size_t u = mp_shared_usage(), want = u;
    for (int i = 0; i < N; i++) {
        ASSERT_TRUE((p[i] = mp_shared_alloc(c[i].ask)) != NULL);
        want += c[i].counted;
        ASSERT_EQ(mp_shared_usage(), want);
    }
    for (int i = 0; i < N; i++) {
        mp_shared_free(p[i]);
        want -= c[i].counted;
        ASSERT_EQ(mp_shared_usage(), want);
    }
    ASSERT_EQ(mp_shared_usage(), u);

    /* Family-wide: another process's blocks count too. */
    chans_open();
    mp_process *k = t_start(hold_1000, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    ASSERT_EQ(mp_shared_usage(), u + 1024);
    t_send(&to_child, 0);
    ASSERT_EQ(t_recv(&to_parent, 10), 2);
    ASSERT_EQ(mp_shared_usage(), u);
    t_join(k, 0);
    ASSERT_EQ(mp_shared_usage(), u);
    chans_close();
}

/* Usage slots: a thread that allocates counts in a slot of the header; a slot
 * let go (its thread exited, its process died) is taken by a later thread,
 * and what the earlier owner left counted (blocks it never freed) stays. */

enum { HELD_N = 10, HELD_BYTES = HELD_N * 1024 + 102400 };
enum { NSLOTS = 1024 };         /* arena.c's usage slots */
enum { CROWD = NSLOTS + 8 };    /* more threads than slots */
static void *g_held[HELD_N + 1];

/* Allocates HELD_BYTES in blocks of 1000 (1024 counted) and 100000
 * (102400 counted) and leaves them held. */
static void hold_blocks(void)
{
    for (int i = 0; i < HELD_N; i++)
        g_held[i] = mp_shared_alloc(1000);
    g_held[HELD_N] = mp_shared_alloc(100000);
}

static void *hold_blocks_and_exit(void *arg)
{
    (void)arg;
    hold_blocks();
    return NULL;
}

/* Threads that each hold a 100-byte block (112 counted), all at once, until
 * let go: every one of them has a slot (or counts in the overflow) then. */
struct crowd { pthread_barrier_t in, out; };

static void *hold_112_until_let_go(void *arg)
{
    struct crowd *c = arg;
    void *p = mp_shared_alloc(100);
    if (!p)
        T_FAIL("alloc(100) failed");
    pthread_barrier_wait(&c->in);
    pthread_barrier_wait(&c->out);
    mp_shared_free(p);
    return NULL;
}

/* Starts n such threads and returns once each holds its block. */
static pthread_t *crowd_start(struct crowd *c, int n)
{
    pthread_t *t = calloc((size_t)n, sizeof *t);
    pthread_attr_t a;
    if (!t || pthread_attr_init(&a) || pthread_attr_setstacksize(&a, 256 * KiB))
        T_FAIL("thread attributes");
    if (pthread_barrier_init(&c->in, NULL, (unsigned)n + 1) ||
        pthread_barrier_init(&c->out, NULL, (unsigned)n + 1))
        T_FAIL("pthread_barrier_init");
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], &a, hold_112_until_let_go, c))
            T_FAIL("pthread_create %d of %d", i, n);
    pthread_attr_destroy(&a);
    pthread_barrier_wait(&c->in);
    return t;
}

/* Lets them free their blocks and exit; joins them. */
static void crowd_end(struct crowd *c, pthread_t *t, int n)
{
    pthread_barrier_wait(&c->out);
    for (int i = 0; i < n; i++)
        if (pthread_join(t[i], NULL))
            T_FAIL("pthread_join");
    pthread_barrier_destroy(&c->in);
    pthread_barrier_destroy(&c->out);
    free(t);
}

TEST(usage_of_an_exited_thread_stays_counted_when_its_slot_is_reused)
{
    size_t u0 = mp_shared_usage();
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, NULL, hold_blocks_and_exit, NULL), 0);
    ASSERT_EQ(pthread_join(t, NULL), 0);
    for (int i = 0; i <= HELD_N; i++)
        ASSERT_TRUE(g_held[i] != NULL);
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES); /* its slot is free now; the bytes count */

    /* It took the lowest free slot, and none below it has been let go since:
     * the first of these threads to count takes that slot again. */
    enum { R = 4 };
    struct crowd c;
    pthread_t *ts = crowd_start(&c, R);
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES + R * 112);
    crowd_end(&c, ts, R);
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES);

    /* One after another too: each takes the same lowest free slot. */
    for (int k = 0; k < 3; k++) {
        ts = crowd_start(&c, 1);
        ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES + 112);
        crowd_end(&c, ts, 1);
        ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES);
    }

    for (int i = 0; i <= HELD_N; i++) /* anyone may free them */
        mp_shared_free(g_held[i]);
    ASSERT_EQ(mp_shared_usage(), u0);
    ASSERT_EQ(mp__arena_check(), 0);
}

static int hold_blocks_until_killed(void *arg)
{
    (void)arg;
    hold_blocks();
    for (int i = 0; i <= HELD_N; i++)
        send_ptr(&to_parent, g_held[i]);
    for (;;)
        pause();
    return 0;
}

/* More threads than there are slots, all holding a block at once: they take
 * every free slot, then the slots of dead processes, then the overflow. */
static int crowd_of_more_than_nslots(void *arg)
{
    (void)arg;
    struct crowd c;
    pthread_t *ts = crowd_start(&c, CROWD);
    t_send(&to_parent, 1);
    t_recv(&to_child, 30);
    crowd_end(&c, ts, CROWD);
    return 0;
}

TEST(usage_of_a_killed_process_stays_counted_when_its_slot_is_reused)
{
    if (!fresh(__func__)) /* no dead slot but the one this case makes */
        return;
    chans_open();
    size_t u0 = mp_shared_usage();
    mp_process *k = t_start(hold_blocks_until_killed, NULL, NULL);
    void *held[HELD_N + 1];
    for (int i = 0; i <= HELD_N; i++)
        ASSERT_TRUE((held[i] = recv_ptr(&to_parent)) != NULL);
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES);
    ASSERT_OK(mp_process_kill(k));
    t_join(k, -9); /* its slot is still claimed, by a dead process */
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES);

    /* A later process takes the dead one's slot: its CROWD threads take
     * every free slot, and one of those left over takes the dead process's
     * (the rest count in the overflow). The dead one's bytes stay counted. */
    mp_process *r = t_start(crowd_of_more_than_nslots, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 30), 1);
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES + CROWD * 112);
    t_send(&to_child, 0);
    t_join(r, 0);
    ASSERT_EQ(mp_shared_usage(), u0 + HELD_BYTES); /* until someone frees them */

    for (int i = 0; i <= HELD_N; i++)
        mp_shared_free(held[i]);
    ASSERT_EQ(mp_shared_usage(), u0);
    ASSERT_EQ(mp__arena_check(), 0);
    chans_close();
}

/* ---- stress ----------------------------------------------------------------------- */

enum { STRESS_SLOTS = 4096, STRESS_OPS = 100000 };
static _Atomic(uintptr_t) *g_slots; /* shared: any thread of any process frees any block */

/* A block says its own size and where it is, so anyone can check it. */
static void fill(unsigned char *p, size_t n)
{
    memcpy(p, &n, sizeof n);
    for (size_t i = sizeof n; i < n; i++)
        p[i] = (unsigned char)(i * 7 + n * 131 + ((uintptr_t)p >> 4));
}

static void check_and_free(unsigned char *p)
{
    size_t n;
    memcpy(&n, p, sizeof n);
    ASSERT_TRUE(n >= 8 && n <= 256 * KiB + 8);
    for (size_t i = sizeof n; i < n; i++)
        if (p[i] != (unsigned char)(i * 7 + n * 131 + ((uintptr_t)p >> 4)))
            T_FAIL("block %p of %zu bytes: byte %zu overwritten", (void *)p, n, i);
    mp_shared_free(p);
}

static void *stress_thread(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + (unsigned)getpid();
    for (int op = 0; op < STRESS_OPS; op++) {
        unsigned k = rnd(&seed) % STRESS_SLOTS;
        uintptr_t old = atomic_exchange(&g_slots[k], 0);
        if (old) {
            check_and_free((unsigned char *)old);
            continue;
        }
        size_t n = pick_size(&seed);
        unsigned char *p = mp_shared_alloc(n);
        if (!p)
            T_FAIL("alloc(%zu) failed", n);
        if ((uintptr_t)p % 16 || !all_zero(p, n))
            T_FAIL("alloc(%zu): %p not aligned or not zeroed", n, (void *)p);
        fill(p, n);
        if ((old = atomic_exchange(&g_slots[k], (uintptr_t)p)))
            check_and_free((unsigned char *)old);
    }
    return NULL;
}

static int stress_process(void *arg)
{
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, stress_thread, (void *)((uintptr_t)arg * 2 + i)))
            return 3;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    return 0;
}

TEST(stress_two_processes_two_threads)
{
    size_t u0 = mp_shared_usage();
    ASSERT_TRUE((g_slots = mp_shared_calloc(STRESS_SLOTS, sizeof *g_slots)) != NULL);
    size_t u1 = mp_shared_usage();
    mp_process *p[2];
    for (uintptr_t i = 0; i < 2; i++)
        p[i] = t_start(stress_process, (void *)(i + 1), NULL);
    for (int i = 0; i < 2; i++)
        t_join(p[i], 0);
    for (int k = 0; k < STRESS_SLOTS; k++) {
        uintptr_t b = atomic_exchange(&g_slots[k], 0);
        if (b)
            check_and_free((unsigned char *)b);
    }
    ASSERT_EQ(mp_shared_usage(), u1);
    mp_shared_free((void *)g_slots);
    ASSERT_EQ(mp_shared_usage(), u0);
    ASSERT_EQ(mp__arena_check(), 0);
}

/* ---- caches go back ------------------------------------------------------------------ */

enum { CACHED = 64 }; /* what a thread caches of a 48-byte class */
static void *g_blocks[CACHED];

static void *alloc_free_48(void *arg)
{
    (void)arg;
    for (int i = 0; i < CACHED; i++)
        g_blocks[i] = mp_shared_alloc(48);
    for (int i = 0; i < CACHED; i++)
        mp_shared_free(g_blocks[i]);
    return NULL;
}

static int child_alloc_free_96(void *arg)
{
    (void)arg;
    for (int i = 0; i < CACHED; i++)
        send_ptr(&to_parent, g_blocks[i] = mp_shared_alloc(96));
    for (int i = 0; i < CACHED; i++)
        mp_shared_free(g_blocks[i]);
    return 0; /* its cache goes back on the way out */
}

static bool in(void *p, void *const *set, int n)
{
    for (int i = 0; i < n; i++)
        if (set[i] == p)
            return true;
    return false;
}

TEST(caches_go_back_at_thread_and_process_exit)
{
    if (!fresh(__func__))
        return;
    /* The thread's freed blocks sit in its cache until it exits; then they
     * are the ones this thread gets (LIFO free lists), not new ones. */
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, NULL, alloc_free_48, NULL), 0);
    ASSERT_EQ(pthread_join(t, NULL), 0);
    void *mine[CACHED];
    for (int i = 0; i < CACHED; i++) {
        ASSERT_TRUE((mine[i] = mp_shared_alloc(48)) != NULL);
        ASSERT_TRUE(in(mine[i], g_blocks, CACHED));
    }
    for (int i = 0; i < CACHED; i++)
        mp_shared_free(mine[i]);

    chans_open();
    mp_process *p = t_start(child_alloc_free_96, NULL, NULL);
    void *theirs[CACHED];
    for (int i = 0; i < CACHED; i++)
        theirs[i] = recv_ptr(&to_parent);
    t_join(p, 0);
    for (int i = 0; i < CACHED; i++) {
        ASSERT_TRUE((mine[i] = mp_shared_alloc(96)) != NULL);
        ASSERT_TRUE(in(mine[i], theirs, CACHED));
    }
    for (int i = 0; i < CACHED; i++)
        mp_shared_free(mine[i]);
    chans_close();
    ASSERT_EQ(mp__arena_check(), 0);
}

static int child_takes_blocks(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2 * CACHED; i++) {
        unsigned *b = mp_shared_alloc(48);
        b[0] = (unsigned)getpid();
        send_ptr(&to_parent, b);
    }
    t_recv(&to_child, 30); /* keep them while the parent looks */
    return 0;
}

TEST(fork_never_hands_a_block_out_twice)
{
    /* The parent's cache is full of 48-byte blocks when it forks. */
    void *b[CACHED];
    for (int i = 0; i < CACHED; i++)
        ASSERT_TRUE((b[i] = mp_shared_alloc(48)) != NULL);
    for (int i = 0; i < CACHED; i++)
        mp_shared_free(b[i]);
    chans_open();
    mp_process *p = t_start(child_takes_blocks, NULL, NULL);
    void *theirs[2 * CACHED];
    for (int i = 0; i < 2 * CACHED; i++)
        theirs[i] = recv_ptr(&to_parent);
    for (int i = 0; i < 2 * CACHED; i++) {
        unsigned *m = mp_shared_alloc(48);
        ASSERT_TRUE(m != NULL && !in(m, theirs, 2 * CACHED));
        *m = 1;
    }
    for (int i = 0; i < 2 * CACHED; i++)
        ASSERT_EQ(*(unsigned *)theirs[i], mp_process_pid(p));
    t_send(&to_child, 0);
    t_join(p, 0);
    chans_close();
}

/* ---- memory goes back ------------------------------------------------------------------- */

TEST(large_frees_give_memory_back)
{
    if (!fresh(__func__)) /* memory other cases left backed would be reused */
        return;
    void *w = mp_shared_alloc(MiB); /* metadata backed, first pages used */
    mp_shared_free(w);
    int64_t b0 = mp__arena_backed();
    ASSERT_GE(b0, 0);

    char *p = mp_shared_alloc(64 * MiB);
    ASSERT_TRUE(p != NULL);
    ASSERT_GE(mp__arena_backed(), b0 + (int64_t)(64 * MiB)); /* backed before use */
    memset(p, 1, 64 * MiB);
    mp_shared_free(p);
    ASSERT_LE(mp__arena_backed(), b0 + (int64_t)MiB);

    /* Large blocks just past the small sizes go back too. */
    enum { M = 1000 };
    static void *m[M];
    for (int i = 0; i < M; i++) {
        ASSERT_TRUE((m[i] = mp_shared_alloc(40 << 10)) != NULL);
        memset(m[i], 2, 40 << 10);
    }
    ASSERT_GE(mp__arena_backed(), b0 + (int64_t)M * (40 << 10));
    for (int i = 0; i < M; i++)
        mp_shared_free(m[i]);
    ASSERT_LE(mp__arena_backed(), b0 + (int64_t)MiB);

    /* Small blocks: their slabs go back once every block has. */
    enum { N = 20000 };
    static void *s[N];
    for (int i = 0; i < N; i++) {
        ASSERT_TRUE((s[i] = mp_shared_alloc(1000)) != NULL);
        memset(s[i], 3, 1000);
    }
    ASSERT_GE(mp__arena_backed(), b0 + (int64_t)(N * 1000));
    for (int i = 0; i < N; i++)
        mp_shared_free(s[i]);
    mp__arena_flush_thread();
    ASSERT_LE(mp__arena_backed(), b0 + (int64_t)MiB);
    ASSERT_EQ(mp__arena_check(), 0);
}

/* ---- the system says no ---------------------------------------------------------------- */

/* Allocates blocks of `size` until NULL, touching every byte. How many. */
static size_t fill_up(void **out, size_t cap, size_t size)
{
    size_t n = 0;
    while (n < cap) {
        unsigned char *p = mp_shared_alloc(size);
        if (!p)
            return n;
        memset(p, 0x77, size);
        out[n++] = p;
    }
    T_FAIL("%zu blocks of %zu bytes and no NULL in a 32 MiB arena", n, size);
}

TEST(exhaustion_returns_null_never_sigbus)
{
    if (!role("exhaust")) {
        ASSERT_EQ(reexec((struct reexec){.name = "exhaustion_returns_null_never_sigbus",
                                         .role = "exhaust", .size = "32M"}), 0);
        return;
    }
    ASSERT_EQ(mp__arena_size(), 32 * MiB);
    enum { CAP = 40000 };
    static void *b[CAP];
    size_t n = 0, bytes = 0, u0 = mp_shared_usage();
    static const size_t sizes[] = {MiB, 64 * KiB, 4096, 1000, 48};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t k = fill_up(b + n, CAP - n, sizes[i]);
        n += k;
        bytes += k * sizes[i];
    }
    ASSERT_GE(bytes, 28 * MiB); /* most of it was usable */
    ASSERT_LE(mp_shared_usage() - u0, 32 * MiB);
    ASSERT_TRUE(mp_shared_alloc(33 * MiB) == NULL);
    for (size_t i = 0; i < n; i++)
        mp_shared_free(b[i]);
    mp__arena_flush_thread();
    ASSERT_EQ(mp_shared_usage(), u0);
    ASSERT_EQ(mp__arena_check(), 0);
    /* And it all comes back. */
    void *big = mp_shared_alloc(16 * MiB);
    ASSERT_TRUE(big != NULL);
    memset(big, 1, 16 * MiB);
    mp_shared_free(big);
}

static int fail_commit(int fd, int mode, off_t off, off_t len)
{
    if (mode == 0) {
        errno = ENOSPC; /* what strict overcommit says */
        return -1;
    }
    return fallocate(fd, mode, off, len);
}

TEST(commit_failure_returns_null)
{
    if (!fresh(__func__))
        return;
    void *w = mp_shared_alloc(MiB); /* metadata backed */
    mp_shared_free(w);
    size_t u = mp_shared_usage();
    mp__sys.fallocate = fail_commit;
    ASSERT_TRUE(mp_shared_alloc(2 * MiB) == NULL);
    ASSERT_TRUE(mp_shared_alloc(5000) == NULL); /* a class with no slab yet */
    ASSERT_EQ(mp_shared_usage(), u);
    mp__sys_reset();
    char *p = mp_shared_alloc(2 * MiB), *q = mp_shared_alloc(5000);
    ASSERT_TRUE(p && q && all_zero(p, 2 * MiB) && all_zero(q, 5000));
    mp_shared_free(p);
    mp_shared_free(q);
    ASSERT_EQ(mp__arena_check(), 0);
}

static size_t g_mmap_limit;

static void *limited_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (len > g_mmap_limit) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    return mmap(addr, len, prot, flags, fd, off);
}

TEST(reserve_halves_until_the_system_agrees)
{
    int fds = t_count_fds();
    mp__sys.mmap = limited_mmap;
    g_mmap_limit = 100 * MiB;
    mp__region r;
    ASSERT_OK(mp__region_reserve(&r, MP__REGION_MAX, MP__REGION_MIN));
    ASSERT_EQ(r.size, 64 * MiB);
    ASSERT_TRUE(fcntl(r.fd, F_GETFD) & FD_CLOEXEC);
    ASSERT_EQ(mp__region_backed(&r), 0);
    ASSERT_OK(mp__region_commit(&r, 32 * MiB, 8192));
    ASSERT_EQ(mp__region_backed(&r), 8192);
    memset(r.base + 32 * MiB, 9, 8192);
    ASSERT_OK(mp__region_release(&r, 32 * MiB, 8192));
    ASSERT_EQ(mp__region_backed(&r), 0);
    ASSERT_TRUE(all_zero(r.base + 32 * MiB, 4096)); /* reads as zero, backs nothing */
    mp__region_unmap(&r);

    g_mmap_limit = 8 * MiB; /* below the floor */
    ASSERT_ERR(mp__region_reserve(&r, MP__REGION_MAX, MP__REGION_MIN), -ENOMEM);
    ASSERT_TRUE(r.base == NULL && r.fd == -1);
    mp__sys_reset();
    ASSERT_EQ(t_count_fds(), fds);

    static const struct { const char *env; size_t want; } e[] = {
        {"32M", 32 * MiB}, {"1g", 1 << 30}, {"5000", 4 * MiB}, {"100000000", 100000000 / (64 * KiB) * (64 * KiB) + 64 * KiB},
        {"2T", MP__REGION_MAX}, {"junk", MP__REGION_MAX}, {"12Q", MP__REGION_MAX}, {"", MP__REGION_MAX},
    };
    for (size_t i = 0; i < sizeof e / sizeof e[0]; i++) {
        setenv("MPROC_ARENA_SIZE", e[i].env, 1);
        ASSERT_EQ(mp__region_want(), e[i].want);
    }
    unsetenv("MPROC_ARENA_SIZE");
    ASSERT_EQ(mp__region_want(), MP__REGION_MAX);
}

TEST(small_address_space_shrinks_the_arena)
{
#if defined(__SANITIZE_ADDRESS__)
    puts("skipped: AddressSanitizer's shadow needs more address space than the limit");
    return;
#endif
    if (!role("rlimit")) {
        ASSERT_EQ(reexec((struct reexec){.name = "small_address_space_shrinks_the_arena",
                                         .role = "rlimit", .as = 512 * MiB}), 0);
        return;
    }
    size_t size = mp__arena_size();
    ASSERT_GE(size, MP__REGION_MIN);
    ASSERT_LT(size, 512 * MiB);
    size_t u = mp_shared_usage();
    char *big = mp_shared_alloc(size / 4);
    ASSERT_TRUE(big != NULL);
    memset(big, 1, size / 4);
    static void *s[1000];
    for (int i = 0; i < 1000; i++) {
        ASSERT_TRUE((s[i] = mp_shared_alloc(100)) != NULL);
        memset(s[i], 2, 100);
    }
    for (int i = 0; i < 1000; i++)
        mp_shared_free(s[i]);
    mp_shared_free(big);
    ASSERT_EQ(mp_shared_usage(), u);
    ASSERT_EQ(mp__arena_check(), 0);
}

TEST(file_size_limit_caps_the_arena)
{
    if (!role("fsize")) { /* else ftruncate would die of SIGXFSZ at load */
        ASSERT_EQ(reexec((struct reexec){.name = "file_size_limit_caps_the_arena",
                                         .role = "fsize", .fsize = 64 * MiB}), 0);
        return;
    }
    ASSERT_EQ(mp__arena_size(), 64 * MiB);
    void *p = mp_shared_alloc(32 * MiB), *q = mp_shared_alloc(100);
    ASSERT_TRUE(p && q);
    memset(p, 1, 32 * MiB);
    mp_shared_free(p);
    mp_shared_free(q);
}

/* ---- death ------------------------------------------------------------------------------- */

static int hold_the_lock(void *arg)
{
    (void)arg;
    mp__arena_lock_for_test();
    t_send(&to_parent, 1);
    for (;;)
        pause();
    return 0;
}

static int alloc_when_told(void *arg)
{
    (void)arg;
    t_recv(&to_child, 30);
    t_send(&to_parent, 2);
    void *big = mp_shared_alloc(MiB), *small = mp_shared_alloc(100); /* both need the lock */
    t_send(&to_parent, big && small ? 3 : 4);
    mp_shared_free(big);
    mp_shared_free(small);
    return 0;
}

TEST(killed_lock_holder_does_not_wedge_the_others)
{
    chans_open();
    mp_process *waiter = t_start(alloc_when_told, NULL, NULL); /* forks need the lock: start it first */
    mp_process *holder = t_start(hold_the_lock, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    t_send(&to_child, 0);
    ASSERT_EQ(t_recv(&to_parent, 10), 2); /* it is allocating, or about to */
    ASSERT_OK(mp_process_kill(holder));
    t_join(holder, -9);
    double t0 = t_now();
    ASSERT_EQ(t_recv(&to_parent, 10), 3);
    ASSERT_LT(t_now() - t0, 2.0 * t_scale());
    t_join(waiter, 0);
    ASSERT_EQ(mp__arena_recoveries(), 1);
    void *p = mp_shared_alloc(MiB);
    ASSERT_TRUE(p != NULL);
    mp_shared_free(p);
    ASSERT_EQ(mp__arena_check(), 0);
    chans_close();
}

/* Allocates and frees in bursts forever, mostly sizes whose caches are
 * small and page runs: much of its time is spent under the lock, making and
 * unmaking slabs and runs. */
static int churn(void *arg)
{
    (void)arg;
    unsigned seed = (unsigned)getpid() * 2654435761u;
    static void *b[256];
    for (bool said = false;; said = true) {
        unsigned n = 1 + rnd(&seed) % 256;
        for (unsigned i = 0; i < n; i++) {
            unsigned r = rnd(&seed) % 10;
            size_t size = r < 3 ? 8 + rnd(&seed) % 1000 : r < 8 ? 4 * KiB + rnd(&seed) % (28 * KiB)
                                                             : 32 * KiB + rnd(&seed) % (96 * KiB);
            if ((b[i] = mp_shared_alloc(size)))
                memset(b[i], 0x5a, size < 64 ? size : 64);
        }
        for (unsigned i = 0; i < n; i++)
            mp_shared_free(b[i]);
        if (!said)
            t_send(&to_parent, 1);
    }
    return 0;
}

/* Kills p, aiming at an instant when it holds the allocator's lock (within
 * a few microseconds of seeing it there), else wherever it is. */
static void kill_inside(mp_process *p)
{
    double end = t_now() + 2.0;
    while (mp__arena_lock_owner() != mp_process_pid(p) && t_now() < end)
        ;
    ASSERT_OK(mp_process_kill(p));
    t_join(p, -9);
}

TEST(killed_at_any_instant_leaves_the_arena_valid)
{
    enum { ROUNDS = 10 };
    chans_open();
    for (int round = 0; round < ROUNDS; round++) {
        mp_process *a = t_start(churn, NULL, NULL), *b = t_start(churn, NULL, NULL);
        ASSERT_EQ(t_recv(&to_parent, 10), 1);
        ASSERT_EQ(t_recv(&to_parent, 10), 1);
        kill_inside(a); /* b goes on, and may inherit a's lock */
        ASSERT_EQ(mp__arena_check(), 0);
        kill_inside(b);
        ASSERT_EQ(mp__arena_check(), 0);
    }
    printf("%u of %d kills took the allocator's lock with them\n", mp__arena_recoveries(),
           2 * ROUNDS);
    size_t u = mp_shared_usage();
    void *p = mp_shared_alloc(MiB), *q = mp_shared_alloc(100);
    ASSERT_TRUE(p && q);
    ASSERT_EQ(mp_shared_usage(), u + MiB + 112);
    mp_shared_free(p);
    mp_shared_free(q);
    ASSERT_EQ(mp_shared_usage(), u);
    chans_close();
}

/* A holder killed in free between linking a block into its slab's free
 * list and counting it left the slab's count one short. The next holder
 * recounts it, so taking every block of the slab afterwards never drives the
 * count below zero (it wrapped, and the slab looked all free while its
 * blocks were held). */
static void die_when_linked(const char *where)
{
    if (strcmp(where, "arena.block.linked") == 0)
        raise(SIGKILL);
}

static int free_until_linked(void *arg)
{
    void **blocks = arg;
    mp__hook = die_when_linked;
    for (int i = 0; i < 512; i++) /* past the thread cache: the lock is taken */
        mp_shared_free(blocks[i]);
    return 1; /* never: the first block linked kills it */
}

TEST(killed_between_linking_and_counting_a_free_block)
{
    enum { N = 512 };
    void **blocks = mp_shared_calloc(N, sizeof *blocks);
    ASSERT_TRUE(blocks != NULL);
    for (int i = 0; i < N; i++)
        ASSERT_TRUE((blocks[i] = mp_shared_alloc(48)) != NULL);
    mp_process *p = t_start(free_until_linked, blocks, NULL);
    t_join(p, -9);
    ASSERT_EQ(mp__arena_check(), 0); /* takes the lock over: recover() */
    ASSERT_GE(mp__arena_recoveries(), 1);
    void **more = malloc(4 * N * sizeof *more);
    ASSERT_TRUE(more != NULL);
    for (int i = 0; i < 4 * N; i++) /* every block of the class, and more slabs */
        ASSERT_TRUE((more[i] = mp_shared_alloc(48)) != NULL);
    ASSERT_EQ(mp__arena_check(), 0);
    for (int i = 0; i < 4 * N; i++)
        mp_shared_free(more[i]);
    free(more);
    ASSERT_EQ(mp__arena_check(), 0);
}

/* ---- the rest of the promise --------------------------------------------------------------- */

static int wait_for_order(void *arg)
{
    (void)arg;
    t_send(&to_parent, 1);
    return t_recv(&to_child, 30);
}

TEST(allocation_does_not_swallow_an_interrupt)
{
    chans_open();
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    mp_interrupt();
    void *big = mp_shared_alloc(MiB), *small = mp_shared_alloc(200); /* both take the lock */
    ASSERT_TRUE(big && small);
    mp_shared_free(big);
    mp_shared_free(small);
    ASSERT_ERR(mp_process_join(p, 10), MP_EINTR); /* still pending for the next blocking call */
    t_send(&to_child, 0);
    t_join(p, 0);
    chans_close();
}

/* The arena's line of /proc/<pid>/maps must be the memfd; no map of /dev/shm. */
static int check_maps(const char *who)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%s/maps", who);
    FILE *f = fopen(path, "re");
    if (!f)
        return 1;
    char want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)(uintptr_t)mp__arena_base());
    int found = 0, shm = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, want, strlen(want)) == 0 && strstr(line, "/memfd:mproc-arena"))
            found++;
        if (strstr(line, "/dev/shm/"))
            shm++;
    }
    fclose(f);
    return found == 1 && shm == 0 ? 0 : 2;
}

static int child_maps(void *arg)
{
    (void)arg;
    void *p = mp_shared_alloc(MiB);
    int r = p ? check_maps("self") : 3;
    mp_shared_free(p);
    return r;
}

TEST(nothing_appears_in_dev_shm)
{
    void *p = mp_shared_alloc(MiB), *q = mp_shared_alloc(64);
    ASSERT_TRUE(p && q);
    ASSERT_EQ(check_maps("self"), 0);
    t_join(t_start(child_maps, NULL, NULL), 0);
    DIR *d = opendir("/dev/shm");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strstr(e->d_name, "arena"))
                T_FAIL("/dev/shm/%s", e->d_name);
        closedir(d);
    }
    mp_shared_free(p);
    mp_shared_free(q);
}
