/* Queues: DESIGN section 6 (and the design of src/queue.c, I1..I5). */
#include "harness.h"

#include "arena.h"
#include "os/os.h" /* mp__hook, mp__check_ns */

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define TIMEOUT 0.2 /* the timed waits */
#define LONG 30.0   /* waits that only a bug makes long (scaled where it matters) */

/* Set in a copy of this binary that a case re-executes (see reexec). */
#define ROLE_ENV "MPROC_TEST_QUEUE_ROLE"

/* ---- helpers ------------------------------------------------------------ */

static mp_queue *g_q; /* the case's queue, made before its children start */

static mp_queue *new_queue(size_t maxsize, size_t capacity, bool joinable)
{
    mp_queue *q = NULL;
    ASSERT_OK(mp_queue_new(&q, &(mp_queue_opts){.maxsize = maxsize, .capacity = capacity,
                                                 .joinable = joinable}));
    ASSERT_TRUE(q != NULL);
    return q;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* A message's bytes: a pattern drawn from its seed, so any torn, shifted or
 * stale byte shows. */
static void fill(void *buf, size_t n, uint64_t seed)
{
    unsigned char *b = buf;
    seed = mix64(seed); /* near seeds: unrelated patterns, not shifted ones */
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = mix64(seed + i);
        memcpy(b + i, &w, 8);
    }
    if (i < n) {
        uint64_t w = mix64(seed + i);
        memcpy(b + i, &w, n - i);
    }
}

/* The offset of the first byte that is not the pattern, or n. */
static size_t pattern_end(const void *buf, size_t n, uint64_t seed)
{
    const unsigned char *b = buf;
    seed = mix64(seed);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = mix64(seed + i);
        size_t k = n - i < 8 ? n - i : 8;
        if (memcmp(b + i, &w, k) != 0) {
            for (size_t j = 0; j < k; j++)
                if (b[i + j] != ((unsigned char *)&w)[j])
                    return i + j;
        }
    }
    return n;
}

#define ASSERT_PATTERN(buf, n, seed)                                                      \
    do {                                                                                  \
        size_t n_ = (n), at_ = pattern_end((buf), n_, (seed));                            \
        if (at_ != n_)                                                                    \
            T_FAIL("message of %zu bytes (seed %llu) differs from its pattern at byte %zu", \
                   n_, (unsigned long long)(seed), at_);                                  \
    } while (0)

static char *pattern_new(size_t n, uint64_t seed)
{
    char *b = malloc(n ? n : 1);
    ASSERT_TRUE(b != NULL);
    fill(b, n, seed);
    return b;
}

/* Gets one message within timeout (scaled) and checks it is n bytes of seed. */
static void get_expect(mp_queue *q, size_t n, uint64_t seed, double timeout)
{
    char *b = malloc(n + 1);
    ASSERT_TRUE(b != NULL);
    ssize_t got = mp_queue_get(q, b, n + 1, timeout * t_scale());
    ASSERT_EQ(got, (ssize_t)n);
    ASSERT_PATTERN(b, n, seed);
    free(b);
}

static void put_pattern(mp_queue *q, size_t n, uint64_t seed, double timeout)
{
    char *b = pattern_new(n, seed);
    ASSERT_OK(mp_queue_put(q, b, n, timeout));
    free(b);
}

static void await_tid(_Atomic pid_t *tid)
{
    double end = t_now() + 10 * t_scale();
    while (!atomic_load(tid)) {
        if (t_now() > end)
            T_FAIL("the thread never started");
        sched_yield();
    }
}

/* The call took at least timeout seconds, and not much more. */
static void assert_on_time(double t0, double timeout)
{
    double took = t_now() - t0;
    ASSERT_GE(took * 1e6 + 1, timeout * 1e6);
    ASSERT_LT(took * 1e3, (timeout + 2.0 * t_scale()) * 1e3); /* generous: the machine is shared */
}

/* The call returned at once (no wait of its own): well within a second. */
static void assert_at_once(double t0)
{
    ASSERT_LT((t_now() - t0) * 1e3, 1000 * t_scale());
}

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

/* Children report results (codes, lengths) here; orders and hand-shakes go
 * over to_child / to_parent. */
static t_chan res = {-1, -1};

static void all_chans_open(void)
{
    chans_open();
    res = t_chan_new();
}

static void all_chans_close(void)
{
    chans_close();
    t_chan_close(&res);
}

/* ---- hooks (mp__hook), set in children only ------------------------------ */

enum { MSG_FIRST = 1001, MSG_HELD = 1002 };

static struct {
    const char *where; /* the point counted */
    int nth;           /* the hit that acts */
    int hits;
    bool kill;         /* SIGKILL at the nth hit; else report MSG_HELD and wait for an order */
    bool report_first; /* send MSG_FIRST at the first hit */
} hk;

static void on_hook(const char *where)
{
    if (strcmp(where, hk.where) != 0)
        return;
    hk.hits++;
    if (hk.hits == 1 && hk.report_first)
        t_send(&to_parent, MSG_FIRST);
    if (hk.hits != hk.nth)
        return;
    if (hk.kill)
        raise(SIGKILL);
    t_send(&to_parent, MSG_HELD);
    t_recv(&to_child, 60);
}

/* What a child does: one put or one get of a patterned message, with a hook. */
struct job {
    size_t len;
    uint64_t seed;
    double timeout;
    const char *hook; /* NULL: none */
    int nth;
    bool kill, report_first;
};

static void arm(const struct job *j)
{
    if (!j->hook)
        return;
    hk.where = j->hook;
    hk.nth = j->nth;
    hk.hits = 0;
    hk.kill = j->kill;
    hk.report_first = j->report_first;
    mp__hook = on_hook;
}

/* Puts the job's message; reports put's code on res. */
static int put_job(void *arg)
{
    const struct job *j = arg;
    char *b = pattern_new(j->len, j->seed);
    arm(j);
    int r = mp_queue_put(g_q, b, j->len, j->timeout);
    mp__hook = NULL;
    free(b);
    t_send(&res, r);
    return 0;
}

/* Gets one message (room for j->len bytes); reports get's result on res and,
 * for a message, checks it is the job's. */
static int get_job(void *arg)
{
    const struct job *j = arg;
    char *b = malloc(j->len ? j->len : 1);
    ASSERT_TRUE(b != NULL);
    arm(j);
    ssize_t n = mp_queue_get(g_q, b, j->len, j->timeout);
    mp__hook = NULL;
    t_send(&res, (int)n);
    if (n >= 0) {
        ASSERT_EQ(n, (ssize_t)j->len);
        ASSERT_PATTERN(b, j->len, j->seed);
    }
    free(b);
    return 0;
}

/* A get in a thread of this process. */
struct getter {
    mp_queue *q;
    char *buf;
    size_t cap;
    double timeout;
    _Atomic pid_t tid;
    ssize_t n;
};

static void *getter_main(void *arg)
{
    struct getter *g = arg;
    atomic_store(&g->tid, gettid());
    g->n = mp_queue_get(g->q, g->buf, g->cap, g->timeout);
    return NULL;
}

struct putter {
    mp_queue *q;
    const char *msg;
    size_t len;
    double timeout;
    _Atomic pid_t tid;
    int r;
};

static void *putter_main(void *arg)
{
    struct putter *p = arg;
    atomic_store(&p->tid, gettid());
    p->r = mp_queue_put(p->q, p->msg, p->len, p->timeout);
    return NULL;
}

/* ---- order, no loss, no duplicate --------------------------------------- */

struct fifo_msg {
    uint32_t producer, seq;
    unsigned char pad[14];
};

enum { FIFO_PRODUCERS = 3, FIFO_N = 20000 };

/* 8..21 bytes: records of 16, 24 and 32 bytes, so records end anywhere and
 * payloads wrap around the ring's end. */
static size_t fifo_len(uint32_t seq) { return 8 + seq % 14; }

static int fifo_producer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    for (uint32_t s = 0; s < FIFO_N; s++) {
        struct fifo_msg m = {id, s, {0}};
        memset(m.pad, (int)(s * 7 + id), sizeof m.pad);
        ASSERT_OK(mp_queue_put(g_q, &m, fifo_len(s), LONG));
    }
    return 0;
}

TEST(fifo_per_producer_3_processes)
{
    g_q = new_queue(0, 4 * KiB, false);
    mp_process *p[FIFO_PRODUCERS];
    for (int i = 0; i < FIFO_PRODUCERS; i++)
        p[i] = t_start(fifo_producer, (void *)(uintptr_t)i, NULL);
    uint32_t next[FIFO_PRODUCERS] = {0};
    for (int k = 0; k < FIFO_PRODUCERS * FIFO_N; k++) {
        struct fifo_msg m;
        memset(&m, 0xee, sizeof m);
        ssize_t n = mp_queue_get(g_q, &m, sizeof m, LONG);
        ASSERT_OK(n);
        ASSERT_LT(m.producer, FIFO_PRODUCERS);
        ASSERT_EQ(m.seq, next[m.producer]); /* in order, none skipped, none twice */
        ASSERT_EQ(n, (ssize_t)fifo_len(m.seq));
        for (size_t i = 0; i < (size_t)n - 8; i++)
            ASSERT_EQ(m.pad[i], (unsigned char)(m.seq * 7 + m.producer));
        next[m.producer]++;
    }
    for (int i = 0; i < FIFO_PRODUCERS; i++) {
        ASSERT_EQ(next[i], FIFO_N);
        t_join(p[i], 0);
    }
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EEMPTY);
    mp_queue_free(g_q);
}

/* 4 producers, 4 consumers: every message delivered exactly once. */
enum { MPMC_P = 4, MPMC_C = 4, MPMC_PER = 25000 };

struct mpmc_head {
    uint16_t producer, len;
    uint32_t seq;
};

static struct mpmc_tally { /* in the arena */
    _Atomic uint64_t seen[MPMC_P][(MPMC_PER + 63) / 64];
    _Atomic uint64_t count, sum, dup;
} *mt;

static size_t mpmc_len(uint32_t producer, uint32_t seq) { return 8 + (seq * 13 + producer * 5) % 57; }

static int mpmc_producer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    unsigned char b[64];
    for (uint32_t s = 0; s < MPMC_PER; s++) {
        size_t len = mpmc_len(id, s);
        struct mpmc_head h = {(uint16_t)id, (uint16_t)len, s};
        memcpy(b, &h, sizeof h);
        for (size_t i = sizeof h; i < len; i++)
            b[i] = (unsigned char)(s + i * 31 + id);
        ASSERT_OK(mp_queue_put(g_q, b, len, LONG));
    }
    return 0;
}

static int mpmc_consumer(void *arg)
{
    (void)arg;
    int64_t last[MPMC_P] = {-1, -1, -1, -1};
    unsigned char b[64];
    for (;;) {
        ssize_t n = mp_queue_get(g_q, b, sizeof b, LONG);
        if (n == MP_ECLOSED)
            return 0;
        ASSERT_OK(n);
        struct mpmc_head h;
        ASSERT_GE(n, (ssize_t)sizeof h);
        memcpy(&h, b, sizeof h);
        ASSERT_LT(h.producer, MPMC_P);
        ASSERT_LT(h.seq, MPMC_PER);
        ASSERT_EQ(n, (ssize_t)h.len);
        ASSERT_EQ(h.len, mpmc_len(h.producer, h.seq));
        for (size_t i = sizeof h; i < h.len; i++)
            ASSERT_EQ(b[i], (unsigned char)(h.seq + i * 31 + h.producer));
        ASSERT_GT((int64_t)h.seq, last[h.producer]); /* each consumer sees each producer in order */
        last[h.producer] = h.seq;
        uint64_t bit = (uint64_t)1 << (h.seq % 64);
        if (atomic_fetch_or(&mt->seen[h.producer][h.seq / 64], bit) & bit)
            atomic_fetch_add(&mt->dup, 1);
        atomic_fetch_add(&mt->count, 1);
        atomic_fetch_add(&mt->sum, (uint64_t)h.producer * MPMC_PER + h.seq);
    }
}

TEST(many_producers_many_consumers_no_loss_no_duplicate)
{
    g_q = new_queue(0, 64 * KiB, false);
    ASSERT_TRUE((mt = mp_shared_calloc(1, sizeof *mt)) != NULL);
    mp_process *c[MPMC_C], *p[MPMC_P];
    for (int i = 0; i < MPMC_C; i++)
        c[i] = t_start(mpmc_consumer, NULL, NULL);
    for (int i = 0; i < MPMC_P; i++)
        p[i] = t_start(mpmc_producer, (void *)(uintptr_t)i, NULL);
    uint64_t n = (uint64_t)MPMC_P * MPMC_PER;
    /* qsize, read while both sides run, never leaves what the ring can hold */
    double end = t_now() + 60 * t_scale();
    while (atomic_load(&mt->count) < n && t_now() < end) {
        ASSERT_LE(mp_queue_qsize(g_q), 64 * KiB / 16);
        sched_yield();
    }
    for (int i = 0; i < MPMC_P; i++)
        t_join(p[i], 0);
    ASSERT_OK(mp_queue_close(g_q));
    for (int i = 0; i < MPMC_C; i++)
        t_join(c[i], 0);
    ASSERT_EQ(atomic_load(&mt->dup), 0);
    ASSERT_EQ(atomic_load(&mt->count), n);
    ASSERT_EQ(atomic_load(&mt->sum), n * (n - 1) / 2);
    for (int i = 0; i < MPMC_P; i++)
        for (uint32_t s = 0; s < MPMC_PER; s++)
            if (!(atomic_load(&mt->seen[i][s / 64]) >> (s % 64) & 1))
                T_FAIL("message %u of producer %d never arrived", s, i);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, MP_FOREVER), MP_ECLOSED);
    mp_shared_free(mt);
    mp_queue_free(g_q);
}

/* qsize read while a producer and a consumer run in lockstep (maxsize 1:
 * the queue is empty or holds one) is a count, never a difference gone
 * below zero: it reads the get count before the put count. */
enum { LOCKSTEP_N = 150000 };

static _Atomic int *lockstep_done; /* in the arena */

static int lockstep_producer(void *arg)
{
    (void)arg;
    for (int i = 0; i < LOCKSTEP_N; i++)
        ASSERT_OK(mp_queue_put(g_q, &i, sizeof i, LONG));
    return 0;
}

static int lockstep_consumer(void *arg)
{
    (void)arg;
    for (int i = 0, v; i < LOCKSTEP_N; i++) {
        ASSERT_EQ(mp_queue_get(g_q, &v, sizeof v, LONG), sizeof v);
        ASSERT_EQ(v, i);
    }
    atomic_store(lockstep_done, 1);
    return 0;
}

TEST(qsize_is_never_below_zero_while_both_sides_run)
{
    g_q = new_queue(1, 0, false);
    ASSERT_TRUE((lockstep_done = mp_shared_calloc(1, sizeof *lockstep_done)) != NULL);
    mp_process *c = t_start(lockstep_consumer, NULL, NULL);
    mp_process *p = t_start(lockstep_producer, NULL, NULL);
    double end = t_now() + 60 * t_scale();
    while (!atomic_load(lockstep_done) && t_now() < end) {
        ASSERT_LE(mp_queue_qsize(g_q), LOCKSTEP_N);
    }
    t_join(p, 0);
    t_join(c, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    mp_shared_free(lockstep_done);
    mp_queue_free(g_q);
}

/* ---- sizes: small, whole, streamed, wrapping ---------------------------- */

/* Random sizes up to 1 MiB through a 64 KiB ring: most are streamed, and
 * records end anywhere, so headers land at the ring's last bytes and
 * payloads wrap. Each message: a head, then the pattern of its seed. */
enum { RS_CAP = 64 * 1024, RS_PER = 150, RS_MAXP = 2 };

struct rs_head {
    uint64_t len, seed;
    uint32_t producer, seq;
};

static struct rs_tally {
    _Atomic uint8_t seen[RS_MAXP][RS_PER];
    _Atomic uint64_t count, dup;
} *rt;

static size_t rs_size(uint32_t producer, uint32_t seq)
{
    uint64_t r = mix64((uint64_t)producer << 32 | seq);
    size_t min = sizeof(struct rs_head);
    switch (r % 8) {
    case 0:
    case 1: return min + (r >> 8) % 1000;            /* small */
    case 2: return min + (r >> 8) % RS_CAP;          /* up to a ring */
    case 3: {                                        /* around the largest whole record */
        static const size_t edge[] = {RS_CAP - 8, RS_CAP - 7, RS_CAP - 1, RS_CAP, RS_CAP + 1,
                                      RS_CAP - 24, RS_CAP / 2, 2 * RS_CAP};
        return edge[(r >> 8) % 8];
    }
    default: return min + (r >> 8) % (MiB - min + 1); /* streamed, up to 1 MiB */
    }
}

static uint64_t rs_seed(uint32_t producer, uint32_t seq) { return mix64(~((uint64_t)producer << 32 | seq)); }

static int rs_producer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    char *b = malloc(MiB);
    ASSERT_TRUE(b != NULL);
    for (uint32_t s = 0; s < RS_PER; s++) {
        size_t len = rs_size(id, s);
        struct rs_head h = {len, rs_seed(id, s), id, s};
        memcpy(b, &h, sizeof h);
        fill(b + sizeof h, len - sizeof h, h.seed);
        ASSERT_OK(mp_queue_put(g_q, b, len, LONG));
    }
    free(b);
    return 0;
}

static int rs_consumer(void *arg)
{
    (void)arg;
    int64_t last[RS_MAXP] = {-1, -1};
    char *b = malloc(MiB);
    ASSERT_TRUE(b != NULL);
    for (unsigned k = 0;; k++) {
        char *m = b;
        ssize_t n;
        if (k % 3 == 2) { /* every third through get_alloc */
            void *a = NULL;
            size_t len = 0;
            int r = mp_queue_get_alloc(g_q, &a, &len, LONG);
            if (r == MP_ECLOSED)
                break;
            ASSERT_OK(r);
            ASSERT_TRUE(a != NULL);
            m = a;
            n = (ssize_t)len;
        } else {
            n = mp_queue_get(g_q, b, MiB, LONG);
            if (n == MP_ECLOSED)
                break;
            ASSERT_OK(n);
        }
        struct rs_head h;
        ASSERT_GE(n, (ssize_t)sizeof h);
        memcpy(&h, m, sizeof h);
        ASSERT_LT(h.producer, RS_MAXP);
        ASSERT_LT(h.seq, RS_PER);
        ASSERT_EQ(h.len, (uint64_t)n);
        ASSERT_EQ(h.len, rs_size(h.producer, h.seq));
        ASSERT_EQ(h.seed, rs_seed(h.producer, h.seq));
        ASSERT_PATTERN(m + sizeof h, (size_t)n - sizeof h, h.seed);
        ASSERT_GT((int64_t)h.seq, last[h.producer]);
        last[h.producer] = h.seq;
        if (atomic_fetch_add(&rt->seen[h.producer][h.seq], 1) != 0)
            atomic_fetch_add(&rt->dup, 1);
        atomic_fetch_add(&rt->count, 1);
        if (m != b)
            free(m);
    }
    free(b);
    return 0;
}

static void random_sizes(int producers, int consumers)
{
    g_q = new_queue(0, RS_CAP, false);
    ASSERT_TRUE((rt = mp_shared_calloc(1, sizeof *rt)) != NULL);
    mp_process *c[RS_MAXP], *p[RS_MAXP];
    for (int i = 0; i < consumers; i++)
        c[i] = t_start(rs_consumer, NULL, NULL);
    for (int i = 0; i < producers; i++)
        p[i] = t_start(rs_producer, (void *)(uintptr_t)i, NULL);
    for (int i = 0; i < producers; i++)
        t_join(p[i], 0);
    ASSERT_OK(mp_queue_close(g_q));
    for (int i = 0; i < consumers; i++)
        t_join(c[i], 0);
    ASSERT_EQ(atomic_load(&rt->dup), 0);
    ASSERT_EQ(atomic_load(&rt->count), (uint64_t)producers * RS_PER);
    for (int i = 0; i < producers; i++)
        for (int s = 0; s < RS_PER; s++)
            ASSERT_EQ(atomic_load(&rt->seen[i][s]), 1);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    mp_shared_free(rt);
    mp_queue_free(g_q);
}

TEST(random_sizes_to_1mib_checksummed_1_producer_1_consumer) { random_sizes(1, 1); }
TEST(random_sizes_to_1mib_checksummed_2_producers_2_consumers) { random_sizes(2, 2); }

enum { HUGE = 64 << 20 };

static int put_two_huge(void *arg)
{
    (void)arg;
    char *b = pattern_new(HUGE, 64);
    ASSERT_OK(mp_queue_put(g_q, b, HUGE, LONG));
    fill(b, HUGE, 65);
    ASSERT_OK(mp_queue_put(g_q, b, HUGE, LONG));
    free(b);
    return 0;
}

TEST(message_of_64mib_streams_through_1mib)
{
    g_q = new_queue(0, MiB, false);
    mp_process *p = t_start(put_two_huge, NULL, NULL);
    char *b = malloc(HUGE);
    ASSERT_TRUE(b != NULL);
    ASSERT_EQ(mp_queue_get(g_q, b, HUGE, LONG), HUGE);
    ASSERT_PATTERN(b, HUGE, 64);
    free(b);
    void *m = NULL;
    size_t len = 0;
    ASSERT_OK(mp_queue_get_alloc(g_q, &m, &len, LONG));
    ASSERT_EQ(len, HUGE);
    ASSERT_PATTERN(m, HUGE, 65);
    free(m);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EEMPTY);
    mp_queue_free(g_q);
}

TEST(zero_length_messages_are_messages)
{
    mp_queue *q = new_queue(0, 256, false);
    ASSERT_OK(mp_queue_put(q, NULL, 0, 0));
    ASSERT_OK(mp_queue_put(q, "x", 1, 0));
    ASSERT_OK(mp_queue_put(q, "", 0, 0));
    ASSERT_EQ(mp_queue_qsize(q), 3);
    ASSERT_TRUE(!mp_queue_empty(q));
    ASSERT_EQ(mp_queue_get(q, NULL, 0, 0), 0);
    ASSERT_EQ(mp_queue_qsize(q), 2);
    ASSERT_ERR(mp_queue_get(q, NULL, 0, 0), MP_EMSGSIZE); /* "x" stays */
    ASSERT_EQ(mp_queue_qsize(q), 2);
    char b[4] = {0};
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    ASSERT_EQ(b[0], 'x');
    void *m = NULL;
    size_t len = 99;
    ASSERT_OK(mp_queue_get_alloc(q, &m, &len, 0));
    ASSERT_TRUE(m != NULL); /* never NULL on success */
    ASSERT_EQ(len, 0);
    free(m);
    ASSERT_TRUE(mp_queue_empty(q));
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, 0), MP_EEMPTY);
    /* Each takes a record's header of room: 256 bytes hold 32. */
    for (int i = 0; i < 32; i++)
        ASSERT_OK(mp_queue_put(q, NULL, 0, 0));
    ASSERT_ERR(mp_queue_put(q, NULL, 0, 0), MP_EFULL);
    ASSERT_EQ(mp_queue_qsize(q), 32);
    for (int i = 0; i < 32; i++)
        ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 0);
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, 0), MP_EEMPTY);
    /* and on a queue full by count */
    mp_queue *c = new_queue(1, 0, false);
    ASSERT_OK(mp_queue_put(c, NULL, 0, 0));
    ASSERT_ERR(mp_queue_put(c, NULL, 0, 0), MP_EFULL);
    ASSERT_TRUE(mp_queue_full(c));
    mp_queue_free(c);
    mp_queue_free(q);
}

/* The smallest ring, 64 bytes: every size from 0 to 300 goes through it,
 * whole records up to 56 bytes, streamed past that in chunks of 8 to 40. */
enum { TINY_MAX = 300 };

static int tiny_consumer(void *arg)
{
    (void)arg;
    char b[TINY_MAX];
    for (size_t n = 0; n <= TINY_MAX; n++) {
        ASSERT_EQ(mp_queue_get(g_q, b, sizeof b, LONG), (ssize_t)n);
        ASSERT_PATTERN(b, n, 1000 + n);
    }
    return 0;
}

TEST(smallest_ring_of_64_bytes_carries_any_message)
{
    g_q = new_queue(0, 64, false);
    mp_process *c = t_start(tiny_consumer, NULL, NULL);
    for (size_t n = 0; n <= TINY_MAX; n++)
        put_pattern(g_q, n, 1000 + n, LONG);
    t_join(c, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    mp_queue_free(g_q);
}

/* ---- timeouts ----------------------------------------------------------- */

TEST(get_on_empty_times_out_on_time_and_zero_polls)
{
    mp_queue *q = new_queue(0, 0, false);
    char b[8];
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, TIMEOUT), MP_EEMPTY);
    assert_on_time(t0, TIMEOUT);
    void *m = (void *)1;
    size_t len = 7;
    t0 = t_now();
    ASSERT_ERR(mp_queue_get_alloc(q, &m, &len, TIMEOUT), MP_EEMPTY);
    assert_on_time(t0, TIMEOUT);
    ASSERT_TRUE(m == (void *)1 && len == 7); /* untouched on failure */
    t0 = t_now();
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, 0), MP_EEMPTY);
    assert_at_once(t0);
    ASSERT_OK(mp_queue_put(q, "abc", 3, 0));
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 3); /* a poll takes what is there */
    mp_queue_free(q);
}

TEST(put_on_full_times_out_on_time)
{
    /* full by count */
    mp_queue *q = new_queue(2, 0, false);
    ASSERT_OK(mp_queue_put(q, "a", 1, 0));
    ASSERT_OK(mp_queue_put(q, "b", 1, 0));
    double t0 = t_now();
    ASSERT_ERR(mp_queue_put(q, "c", 1, 0), MP_EFULL);
    assert_at_once(t0);
    t0 = t_now();
    ASSERT_ERR(mp_queue_put(q, "c", 1, TIMEOUT), MP_EFULL);
    assert_on_time(t0, TIMEOUT);
    ASSERT_EQ(mp_queue_qsize(q), 2);
    char b[4];
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    ASSERT_EQ(b[0], 'a');
    ASSERT_OK(mp_queue_put(q, "d", 1, 0));
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    ASSERT_EQ(b[0], 'b');
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    ASSERT_EQ(b[0], 'd');
    mp_queue_free(q);

    /* full by bytes: 256 = a record of 208 + one of 48 */
    q = new_queue(0, 256, false);
    put_pattern(q, 200, 1, 0);
    char m[48];
    fill(m, sizeof m, 2);
    t0 = t_now();
    ASSERT_ERR(mp_queue_put(q, m, 41, 0), MP_EFULL); /* a record of 56 */
    assert_at_once(t0);
    t0 = t_now();
    ASSERT_ERR(mp_queue_put(q, m, 41, TIMEOUT), MP_EFULL);
    assert_on_time(t0, TIMEOUT);
    ASSERT_EQ(mp_queue_qsize(q), 1);
    ASSERT_OK(mp_queue_put(q, m, 40, 0)); /* exactly the rest */
    ASSERT_TRUE(!mp_queue_full(q));      /* no maxsize: never "full" */
    ASSERT_EQ(mp_queue_qsize(q), 2);
    get_expect(q, 200, 1, 0);
    get_expect(q, 40, 2, 0);
    mp_queue_free(q);
}

/* A streamed put that times out midway leaves nothing visible: a consumer
 * gets the messages put before and after it, and only those. */
TEST(streamed_put_that_times_out_leaves_nothing)
{
    mp_queue *q = new_queue(0, 4 * KiB, false);
    put_pattern(q, 100, 1, 0);
    char *big = pattern_new(64 * KiB, 2);
    double t0 = t_now();
    ASSERT_ERR(mp_queue_put(q, big, 64 * KiB, TIMEOUT), MP_EFULL); /* no one reads */
    assert_on_time(t0, TIMEOUT);
    ASSERT_ERR(mp_queue_put(q, big, 64 * KiB, 0), MP_EFULL);
    ASSERT_EQ(mp_queue_qsize(q), 1);
    /* A consumer with room for anything; the next put must wait for it to
     * get past what the failed puts left in the ring. */
    struct getter g = {.q = q, .buf = malloc(64 * KiB), .cap = 64 * KiB, .timeout = LONG};
    ASSERT_TRUE(g.buf != NULL);
    ASSERT_EQ(mp_queue_get(q, g.buf, g.cap, 0), 100);
    ASSERT_PATTERN(g.buf, 100, 1);
    pthread_t t = t_thread(getter_main, &g);
    put_pattern(q, 300, 3, LONG);
    t_join_thread(t);
    ASSERT_EQ(g.n, 300);
    ASSERT_PATTERN(g.buf, 300, 3);
    ASSERT_EQ(mp_queue_qsize(q), 0);
    ASSERT_ERR(mp_queue_get(q, g.buf, g.cap, 0), MP_EEMPTY);
    free(g.buf);
    free(big);
    mp_queue_free(q);
}

/* A streamed put that gives up while no consumer is inside the queue takes
 * its records back: they hold no room, so a small put right after it goes
 * in at once, with no get in between to skip them. */
TEST(streamed_put_given_up_takes_its_room_back)
{
    mp_queue *q = new_queue(0, 4 * KiB, false);
    put_pattern(q, 100, 1, 0);
    char *big = pattern_new(64 * KiB, 2);
    ASSERT_ERR(mp_queue_put(q, big, 64 * KiB, 0), MP_EFULL); /* filled the ring, then gave up */
    free(big);
    put_pattern(q, 3000, 3, 0); /* would not fit beside the failed put's pieces */
    ASSERT_EQ(mp_queue_qsize(q), 2);
    get_expect(q, 100, 1, 0);
    get_expect(q, 3000, 3, 0);
    ASSERT_ERR(mp_queue_get(q, NULL, 0, 0), MP_EEMPTY);
    mp_queue_free(q);
}

/* The same, for a consumer whose buffer fits the messages that exist but not
 * the abandoned one: what a failed put left is no message, so it cannot be
 * "too large" (MP_EMSGSIZE would wedge such a consumer for good). */
TEST(abandoned_stream_is_not_a_message_for_a_small_buffer)
{
    mp_queue *q = new_queue(0, 4 * KiB, false);
    put_pattern(q, 100, 1, 0);
    char *big = pattern_new(64 * KiB, 2);
    ASSERT_ERR(mp_queue_put(q, big, 64 * KiB, 0), MP_EFULL);
    free(big);
    char b[512];
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 100);
    ASSERT_EQ(mp_queue_qsize(q), 0);
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, 0), MP_EEMPTY);
    ASSERT_OK(mp_queue_put(q, "after", 5, 0));
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 5);
    ASSERT_TRUE(memcmp(b, "after", 5) == 0);
    /* and once closed, a drained queue says so at once */
    big = pattern_new(64 * KiB, 2);
    ASSERT_ERR(mp_queue_put(q, big, 64 * KiB, 0), MP_EFULL);
    free(big);
    ASSERT_OK(mp_queue_close(q));
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    mp_queue_free(q);
}

/* ---- the stash (I5) ----------------------------------------------------- */

enum { ST_CAP = 16 * 1024, ST_LEN = 256 * 1024 };

/* Starts a child that puts ST_LEN bytes of seed into g_q (a 16 KiB ring) and
 * is held at its 3rd chunk, before publishing it, until told (to_child);
 * returns once its first chunk is going in. The 3rd chunk comes only once a
 * consumer took the first two: when it is held, a reader is midway. */
static mp_process *start_held_streamer(struct job *j, uint64_t seed)
{
    *j = (struct job){.len = ST_LEN, .seed = seed, .timeout = LONG, .hook = "queue.stream.chunk",
                      .nth = 3, .report_first = true};
    mp_process *p = t_start(put_job, j, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_FIRST);
    return p;
}

/* Gets with a short timeout until the streamer is held: each get times out
 * midway (MP_EEMPTY), parking what it read; the next goes on from there. */
static void get_until_held(char *buf)
{
    int v;
    for (int i = 0; !t_try_recv(&to_parent, 0, &v); i++) {
        if (i > 200)
            T_FAIL("the streamer was never held at its 3rd chunk");
        ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0.05), MP_EEMPTY);
    }
    ASSERT_EQ(v, MSG_HELD);
}

TEST(get_that_times_out_midstream_goes_on_in_the_next_get)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j;
    mp_process *p = start_held_streamer(&j, 7);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf);
    /* held midway: not a message yet, and a get still times out on time */
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, TIMEOUT), MP_EEMPTY);
    assert_on_time(t0, TIMEOUT);
    memset(buf, 0, ST_LEN);
    t_send(&to_child, 1);
    /* A buffer too small: the rest is read, then the whole stays (EMSGSIZE). */
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN - 1, LONG), MP_EMSGSIZE);
    ASSERT_EQ(t_recv(&res, 10), 0); /* the put is complete */
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EMSGSIZE);
    ASSERT_EQ(mp_queue_get(g_q, buf, ST_LEN, LONG), ST_LEN);
    ASSERT_PATTERN(buf, ST_LEN, 7);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0), MP_EEMPTY);
    t_join(p, 0);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A message made whole in the stash (its last chunk read by a get whose
 * buffer was too small) is a message in the queue: qsize counts it and the
 * queue is not empty, as for the same message still in the ring. */
TEST(qsize_counts_a_whole_message_left_in_the_stash)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j;
    mp_process *p = start_held_streamer(&j, 6);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf);
    t_send(&to_child, 1);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN - 1, LONG), MP_EMSGSIZE);
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(p, 0);
    size_t qsize = mp_queue_qsize(g_q);
    bool empty = mp_queue_empty(g_q);
    ASSERT_EQ(mp_queue_get(g_q, buf, ST_LEN, 0), ST_LEN); /* it is there */
    ASSERT_PATTERN(buf, ST_LEN, 6);
    ASSERT_EQ(qsize, 1);
    ASSERT_TRUE(!empty);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A stream given up (its put timed out) while a get had parked part of it:
 * the stash is dropped, nothing of that message is delivered, and the next
 * message comes whole. */
TEST(stash_of_a_stream_given_up_is_dropped)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j = {.len = ST_LEN, .seed = 5, .timeout = 1.0 * t_scale(),
                    .hook = "queue.stream.chunk", .nth = 3, .report_first = true};
    mp_process *p = t_start(put_job, &j, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_FIRST);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0), MP_EEMPTY); /* two chunks parked */
    t_send(&to_child, 1); /* its 3rd chunk goes in, then no one reads: it times out */
    ASSERT_ERR(t_recv(&res, 10), MP_EFULL);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0), MP_EEMPTY);
    put_pattern(g_q, 500, 6, LONG);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    get_expect(g_q, 500, 6, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0), MP_EEMPTY);
    put_pattern(g_q, 600, 7, 0); /* and the ring is whole again */
    get_expect(g_q, 600, 7, 0);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* The stash, taken up by get_alloc in another process. */
static int get_alloc_job(void *arg)
{
    const struct job *j = arg;
    void *m = NULL;
    size_t len = 0;
    int r = mp_queue_get_alloc(g_q, &m, &len, j->timeout);
    t_send(&res, r);
    ASSERT_OK(r);
    ASSERT_EQ(len, j->len);
    ASSERT_PATTERN(m, len, j->seed);
    free(m);
    return 0;
}

TEST(stash_is_taken_up_by_another_process_with_get_alloc)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j;
    mp_process *p = start_held_streamer(&j, 8);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf);
    mp_process *c = t_start(get_alloc_job, &j, NULL);
    t_send(&to_child, 1);
    ASSERT_EQ(t_recv(&res, 10), 0); /* one of the two: the put's, the get's */
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(c, 0);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* ---- interrupts --------------------------------------------------------- */

static int64_t saved_check;

/* No periodic look for an hour: only a wake can end a sleep. */
static void no_periodic_look(void)
{
    saved_check = mp__check_ns;
    mp__check_ns = 3600 * INT64_C(1000000000);
}

static void periodic_look_back(void) { mp__check_ns = saved_check; }

TEST(interrupt_wakes_a_blocked_get_and_is_consumed)
{
    mp_queue *q = new_queue(0, 0, false);
    no_periodic_look();
    char b[16];
    struct getter g = {.q = q, .buf = b, .cap = sizeof b, .timeout = MP_FOREVER};
    pthread_t t = t_thread(getter_main, &g);
    await_tid(&g.tid);
    t_await_state(g.tid, 'S');
    mp_interrupt();
    t_join_thread(t);
    ASSERT_ERR(g.n, MP_EINTR);
    periodic_look_back();
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, 0), MP_EEMPTY); /* consumed */
    ASSERT_OK(mp_queue_put(q, "m", 1, 0));
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    mp_queue_free(q);
}

TEST(interrupt_wakes_a_put_blocked_on_full)
{
    mp_queue *q = new_queue(1, 0, false);
    ASSERT_OK(mp_queue_put(q, "a", 1, 0));
    no_periodic_look();
    struct putter pt = {.q = q, .msg = "b", .len = 1, .timeout = MP_FOREVER};
    pthread_t t = t_thread(putter_main, &pt);
    await_tid(&pt.tid);
    t_await_state(pt.tid, 'S');
    mp_interrupt();
    t_join_thread(t);
    ASSERT_ERR(pt.r, MP_EINTR);
    periodic_look_back();
    ASSERT_EQ(mp_queue_qsize(q), 1); /* it left nothing */
    char b[4];
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    ASSERT_EQ(b[0], 'a');
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, 0), MP_EEMPTY);
    mp_queue_free(q);
}

TEST(interrupt_wakes_a_streamed_put_and_leaves_nothing)
{
    mp_queue *q = new_queue(0, 4 * KiB, false);
    char *big = pattern_new(64 * KiB, 3);
    no_periodic_look();
    struct putter pt = {.q = q, .msg = big, .len = 64 * KiB, .timeout = MP_FOREVER};
    pthread_t t = t_thread(putter_main, &pt);
    await_tid(&pt.tid);
    t_await_state(pt.tid, 'S'); /* its first chunk is in, it waits for room */
    mp_interrupt();
    t_join_thread(t);
    ASSERT_ERR(pt.r, MP_EINTR);
    periodic_look_back();
    ASSERT_EQ(mp_queue_qsize(q), 0);
    char *b = malloc(64 * KiB);
    ASSERT_TRUE(b != NULL);
    ASSERT_ERR(mp_queue_get(q, b, 64 * KiB, 0), MP_EEMPTY);
    put_pattern(q, 100, 4, 0); /* and the queue goes on */
    ASSERT_EQ(mp_queue_qsize(q), 1);
    get_expect(q, 100, 4, 0);
    free(b);
    free(big);
    mp_queue_free(q);
}

enum { GETTERS = 4 };

TEST(interrupt_wakes_every_blocked_get)
{
    mp_queue *q = new_queue(0, 0, false);
    no_periodic_look();
    char b[GETTERS][8];
    struct getter g[GETTERS];
    pthread_t t[GETTERS];
    for (int i = 0; i < GETTERS; i++) {
        g[i] = (struct getter){.q = q, .buf = b[i], .cap = sizeof b[i], .timeout = MP_FOREVER};
        t[i] = t_thread(getter_main, &g[i]);
    }
    for (int i = 0; i < GETTERS; i++) { /* one in the queue's wait, the others in its lock */
        await_tid(&g[i].tid);
        t_await_state(g[i].tid, 'S');
    }
    mp_interrupt();
    for (int i = 0; i < GETTERS; i++) {
        t_join_thread(t[i]);
        ASSERT_ERR(g[i].n, MP_EINTR);
    }
    periodic_look_back();
    ASSERT_ERR(mp_queue_get(q, b[0], 8, 0), MP_EEMPTY);
    mp_queue_free(q);
}

TEST(pending_interrupt_fails_the_next_call_once)
{
    mp_queue *q = new_queue(0, 0, false);
    ASSERT_OK(mp_queue_put(q, "m", 1, 0));
    char b[4];
    mp_interrupt();
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, MP_FOREVER), MP_EINTR); /* even with a message */
    assert_at_once(t0);
    ASSERT_EQ(mp_queue_qsize(q), 1); /* it took nothing */
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, MP_FOREVER), 1);
    mp_interrupt();
    ASSERT_ERR(mp_queue_put(q, "n", 1, MP_FOREVER), MP_EINTR);
    ASSERT_EQ(mp_queue_qsize(q), 0); /* it put nothing */
    ASSERT_OK(mp_queue_put(q, "n", 1, MP_FOREVER));
    ASSERT_EQ(mp_queue_qsize(q), 1);
    mp_queue_free(q);
}

/* A get interrupted midway through a streamed message parks what it read
 * (I5): the next get returns the message whole. */
TEST(interrupted_get_midstream_goes_on_in_the_next_get)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    no_periodic_look();
    struct getter g = {.q = g_q, .buf = malloc(ST_LEN), .cap = ST_LEN, .timeout = MP_FOREVER};
    ASSERT_TRUE(g.buf != NULL);
    pthread_t t = t_thread(getter_main, &g);
    struct job j;
    mp_process *p = start_held_streamer(&j, 9);
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_HELD); /* the getter took two chunks */
    t_await_state(g.tid, 'S');
    mp_interrupt();
    t_join_thread(t);
    ASSERT_ERR(g.n, MP_EINTR);
    periodic_look_back();
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    t_send(&to_child, 1);
    memset(g.buf, 0, ST_LEN);
    ASSERT_EQ(mp_queue_get(g_q, g.buf, ST_LEN, LONG), ST_LEN);
    ASSERT_PATTERN(g.buf, ST_LEN, 9);
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(g.buf);
    mp_queue_free(g_q);
    all_chans_close();
}

static int put_forever_report(void *arg);

/* ---- wakes: with no periodic look, only the other side's wake ends a sleep */

static int get_two_report(void *arg)
{
    (void)arg;
    char *b = malloc(ST_LEN);
    ASSERT_TRUE(b != NULL);
    t_send(&to_parent, getpid());
    ssize_t n = mp_queue_get(g_q, b, ST_LEN, MP_FOREVER);
    t_send(&res, (int)n);
    ASSERT_EQ(n, 100);
    ASSERT_PATTERN(b, 100, 21);
    t_send(&to_parent, getpid());
    n = mp_queue_get(g_q, b, ST_LEN, MP_FOREVER); /* a streamed one */
    t_send(&res, (int)n);
    ASSERT_EQ(n, ST_LEN);
    ASSERT_PATTERN(b, ST_LEN, 22);
    free(b);
    return 0;
}

TEST(put_wakes_a_get_sleeping_in_another_process)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    no_periodic_look();
    mp_process *p = t_start(get_two_report, NULL, NULL);
    t_await_state(t_recv(&to_parent, 10), 'S');
    put_pattern(g_q, 100, 21, 0);
    ASSERT_EQ(t_recv(&res, 3), 100);
    t_await_state(t_recv(&to_parent, 10), 'S');
    put_pattern(g_q, ST_LEN, 22, 10 * t_scale()); /* each chunk wakes it, each take wakes us */
    ASSERT_EQ(t_recv(&res, 3), ST_LEN);
    t_join(p, 0);
    periodic_look_back();
    mp_queue_free(g_q);
    all_chans_close();
}

TEST(get_wakes_a_put_sleeping_in_another_process)
{
    all_chans_open();
    g_q = new_queue(1, 0, false);
    no_periodic_look();
    put_pattern(g_q, 10, 1, 0);
    mp_process *p = t_start(put_forever_report, (void *)(uintptr_t)20, NULL);
    t_await_state(t_recv(&to_parent, 10), 'S');
    get_expect(g_q, 10, 1, 0);
    ASSERT_EQ(t_recv(&res, 3), 0);
    get_expect(g_q, 20, 99, 0);
    t_join(p, 0);
    periodic_look_back();
    mp_queue_free(g_q);
    all_chans_close();
}

/* ---- close -------------------------------------------------------------- */

TEST(close_empty_queue_answers_at_once)
{
    mp_queue *q = new_queue(0, 0, false);
    ASSERT_OK(mp_queue_close(q));
    char b[4];
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    ASSERT_ERR(mp_queue_get(q, NULL, 0, 0), MP_ECLOSED);
    void *m;
    size_t len;
    ASSERT_ERR(mp_queue_get_alloc(q, &m, &len, MP_FOREVER), MP_ECLOSED);
    ASSERT_ERR(mp_queue_put(q, "a", 1, MP_FOREVER), MP_ECLOSED);
    ASSERT_ERR(mp_queue_put(q, NULL, 0, 0), MP_ECLOSED);
    assert_at_once(t0);
    ASSERT_OK(mp_queue_close(q)); /* twice: 0 */
    ASSERT_EQ(mp_queue_qsize(q), 0);
    ASSERT_TRUE(mp_queue_empty(q));
    mp_queue_free(q);
}

TEST(close_with_messages_drains_then_eclosed)
{
    mp_queue *q = new_queue(0, 0, false);
    put_pattern(q, 10, 1, 0);
    put_pattern(q, 0, 2, 0);
    ASSERT_OK(mp_queue_close(q));
    ASSERT_EQ(mp_queue_qsize(q), 2);
    ASSERT_ERR(mp_queue_put(q, "a", 1, 0), MP_ECLOSED);
    get_expect(q, 10, 1, 0);
    get_expect(q, 0, 2, 0);
    double t0 = t_now();
    char b[16];
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    assert_at_once(t0);
    ASSERT_EQ(mp_queue_qsize(q), 0);
    mp_queue_free(q);
}

static int get_forever_report(void *arg)
{
    (void)arg;
    t_send(&to_parent, getpid());
    char b[16];
    t_send(&res, (int)mp_queue_get(g_q, b, sizeof b, MP_FOREVER));
    return 0;
}

/* A get blocked in another process and one in a thread here (waiting for
 * the get lock the other holds) are both woken by close, with no periodic
 * look to fall back on. */
TEST(close_wakes_blocked_gets_in_other_processes_and_threads)
{
    all_chans_open();
    g_q = new_queue(0, 0, false);
    no_periodic_look();
    mp_process *p = t_start(get_forever_report, NULL, NULL);
    pid_t pid = t_recv(&to_parent, 10);
    t_await_state(pid, 'S');
    char b[8];
    struct getter g = {.q = g_q, .buf = b, .cap = sizeof b, .timeout = MP_FOREVER};
    pthread_t t = t_thread(getter_main, &g);
    await_tid(&g.tid);
    t_await_state(g.tid, 'S');
    ASSERT_OK(mp_queue_close(g_q));
    ASSERT_ERR(t_recv(&res, 3), MP_ECLOSED);
    t_join_thread(t);
    ASSERT_ERR(g.n, MP_ECLOSED);
    periodic_look_back();
    t_join(p, 0);
    mp_queue_free(g_q);
    all_chans_close();
}

static int put_forever_report(void *arg)
{
    size_t len = (size_t)(uintptr_t)arg;
    t_send(&to_parent, getpid());
    char *b = pattern_new(len, 99);
    t_send(&res, mp_queue_put(g_q, b, len, MP_FOREVER));
    free(b);
    return 0;
}

TEST(close_wakes_blocked_puts_and_their_messages_stay_out)
{
    all_chans_open();
    no_periodic_look();
    /* full by count, the put in a thread */
    mp_queue *q = new_queue(1, 0, false);
    ASSERT_OK(mp_queue_put(q, "a", 1, 0));
    struct putter pt = {.q = q, .msg = "b", .len = 1, .timeout = MP_FOREVER};
    pthread_t t = t_thread(putter_main, &pt);
    await_tid(&pt.tid);
    t_await_state(pt.tid, 'S');
    ASSERT_OK(mp_queue_close(q));
    t_join_thread(t);
    ASSERT_ERR(pt.r, MP_ECLOSED);
    ASSERT_EQ(mp_queue_qsize(q), 1);
    char b[4];
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
    ASSERT_EQ(b[0], 'a');
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    mp_queue_free(q);

    /* full by bytes, the put in another process */
    g_q = new_queue(0, 256, false);
    put_pattern(g_q, 200, 1, 0);
    mp_process *p = t_start(put_forever_report, (void *)(uintptr_t)200, NULL);
    t_await_state(t_recv(&to_parent, 10), 'S');
    ASSERT_OK(mp_queue_close(g_q));
    ASSERT_ERR(t_recv(&res, 3), MP_ECLOSED);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    get_expect(g_q, 200, 1, 0);
    ASSERT_ERR(mp_queue_get(g_q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    periodic_look_back();
    mp_queue_free(g_q);
    all_chans_close();
}

/* A streamed put with no reader (its first chunk is in the ring, it waits
 * for room) fails with MP_ECLOSED at close, and no part of it is delivered. */
TEST(close_during_streamed_put_delivers_no_part)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    no_periodic_look();
    put_pattern(g_q, 50, 1, 0);
    mp_process *p = t_start(put_forever_report, (void *)(uintptr_t)ST_LEN, NULL);
    t_await_state(t_recv(&to_parent, 10), 'S');
    ASSERT_OK(mp_queue_close(g_q));
    ASSERT_ERR(t_recv(&res, 3), MP_ECLOSED);
    t_join(p, 0);
    periodic_look_back();
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    get_expect(g_q, 50, 1, 0);
    char *b = malloc(ST_LEN);
    ASSERT_TRUE(b != NULL);
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(g_q, b, ST_LEN, MP_FOREVER), MP_ECLOSED);
    assert_at_once(t0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(b);
    mp_queue_free(g_q);
    all_chans_close();
}

/* The same while a consumer is midway through reading it: the consumer's
 * get answers MP_ECLOSED, not a part. */
TEST(close_during_streamed_put_being_read)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    no_periodic_look();
    struct getter g = {.q = g_q, .buf = malloc(ST_LEN), .cap = ST_LEN, .timeout = MP_FOREVER};
    ASSERT_TRUE(g.buf != NULL);
    pthread_t t = t_thread(getter_main, &g);
    struct job j;
    mp_process *p = start_held_streamer(&j, 10);
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_HELD); /* the getter is midway */
    ASSERT_OK(mp_queue_close(g_q));
    t_join_thread(t);
    ASSERT_ERR(g.n, MP_ECLOSED);
    t_send(&to_child, 1); /* its next chunk meets the close */
    ASSERT_ERR(t_recv(&res, 10), MP_ECLOSED);
    t_join(p, 0);
    periodic_look_back();
    ASSERT_ERR(mp_queue_get(g_q, g.buf, ST_LEN, MP_FOREVER), MP_ECLOSED);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(g.buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* Closed while a get had parked part of a stream (I5): the stream cannot be
 * finished, so the stash is dropped and a get answers MP_ECLOSED at once. */
TEST(close_with_a_stash_drops_it)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j;
    mp_process *p = start_held_streamer(&j, 23);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf); /* two chunks parked */
    ASSERT_OK(mp_queue_close(g_q));
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, MP_FOREVER), MP_ECLOSED);
    assert_at_once(t0);
    t_send(&to_child, 1);
    ASSERT_ERR(t_recv(&res, 10), MP_ECLOSED);
    t_join(p, 0);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, MP_FOREVER), MP_ECLOSED);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* ---- JoinableQueue ------------------------------------------------------ */

TEST(joinable_counts_tasks)
{
    mp_queue *q = new_queue(0, 0, true);
    double t0 = t_now();
    ASSERT_OK(mp_queue_join(q, 0));
    ASSERT_OK(mp_queue_join(q, MP_FOREVER)); /* nothing put: at once */
    assert_at_once(t0);
    for (int i = 0; i < 3; i++)
        ASSERT_OK(mp_queue_put(q, &i, sizeof i, 0));
    t0 = t_now();
    ASSERT_ERR(mp_queue_join(q, TIMEOUT), MP_ETIMEDOUT);
    assert_on_time(t0, TIMEOUT);
    int v;
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(mp_queue_get(q, &v, sizeof v, 0), sizeof v);
        ASSERT_EQ(v, i);
    }
    ASSERT_ERR(mp_queue_join(q, 0), MP_ETIMEDOUT); /* got is not done */
    ASSERT_OK(mp_queue_task_done(q));
    ASSERT_OK(mp_queue_task_done(q));
    ASSERT_ERR(mp_queue_join(q, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_queue_task_done(q));
    ASSERT_OK(mp_queue_join(q, 0));
    ASSERT_OK(mp_queue_join(q, MP_FOREVER));
    ASSERT_ERR(mp_queue_task_done(q), MP_EINVAL); /* a 4th */
    ASSERT_OK(mp_queue_join(q, 0));
    ASSERT_OK(mp_queue_put(q, &v, sizeof v, 0)); /* and it goes on counting */
    ASSERT_ERR(mp_queue_join(q, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_queue_task_done(q));
    ASSERT_OK(mp_queue_join(q, 0));
    mp_queue_free(q);

    mp_queue *plain = new_queue(0, 0, false);
    ASSERT_ERR(mp_queue_task_done(plain), MP_ESTATE);
    ASSERT_ERR(mp_queue_join(plain, 0), MP_ESTATE);
    ASSERT_ERR(mp_queue_join(plain, MP_FOREVER), MP_ESTATE);
    mp_queue_free(plain);
}

enum { JW = 3, JTASKS = 300 };

static _Atomic long *jsum; /* in the arena */

static int join_worker(void *arg)
{
    (void)arg;
    int v;
    ssize_t n;
    while ((n = mp_queue_get(g_q, &v, sizeof v, LONG)) == (ssize_t)sizeof v) {
        atomic_fetch_add(jsum, v); /* before task_done: join's return sees it */
        ASSERT_OK(mp_queue_task_done(g_q));
    }
    ASSERT_ERR(n, MP_ECLOSED);
    return 0;
}

TEST(join_waits_for_task_done_in_other_processes)
{
    g_q = new_queue(0, 0, true);
    ASSERT_TRUE((jsum = mp_shared_calloc(1, sizeof *jsum)) != NULL);
    mp_process *w[JW];
    for (int i = 0; i < JW; i++)
        w[i] = t_start(join_worker, NULL, NULL);
    long want = 0;
    for (int i = 1; i <= JTASKS; i++) {
        ASSERT_OK(mp_queue_put(g_q, &i, sizeof i, LONG));
        want += i;
    }
    ASSERT_OK(mp_queue_join(g_q, LONG * t_scale()));
    ASSERT_EQ(atomic_load(jsum), want);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_OK(mp_queue_close(g_q));
    for (int i = 0; i < JW; i++)
        t_join(w[i], 0);
    ASSERT_ERR(mp_queue_task_done(g_q), MP_EINVAL);
    mp_shared_free(jsum);
    mp_queue_free(g_q);
}

/* ---- MP_EMSGSIZE -------------------------------------------------------- */

TEST(msgsize_leaves_the_message_whole)
{
    all_chans_open();
    g_q = new_queue(0, 4 * KiB, false);
    /* a whole record */
    put_pattern(g_q, 100, 1, 0);
    char *b = malloc(64 * KiB);
    ASSERT_TRUE(b != NULL);
    ASSERT_ERR(mp_queue_get(g_q, b, 99, 0), MP_EMSGSIZE);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EMSGSIZE);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    ASSERT_EQ(mp_queue_get(g_q, b, 100, 0), 100);
    ASSERT_PATTERN(b, 100, 1);
    /* the largest whole record, and the smallest streamed message */
    put_pattern(g_q, 4 * KiB - 8, 2, 0);
    ASSERT_ERR(mp_queue_get(g_q, b, 4 * KiB - 9, 0), MP_EMSGSIZE);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    ASSERT_EQ(mp_queue_get(g_q, b, 4 * KiB - 8, 0), 4 * KiB - 8);
    ASSERT_PATTERN(b, 4 * KiB - 8, 2);
    /* a streamed message, its producer waiting for a reader: the failed
     * gets take none of it */
    struct job j = {.len = 64 * KiB, .seed = 3, .timeout = LONG};
    mp_process *p = t_start(put_job, &j, NULL);
    ASSERT_ERR(mp_queue_get(g_q, b, 64 * KiB - 1, LONG), MP_EMSGSIZE);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EMSGSIZE);
    ASSERT_EQ(mp_queue_qsize(g_q), 0); /* not in whole yet */
    ASSERT_EQ(mp_queue_get(g_q, b, 64 * KiB, LONG), 64 * KiB);
    ASSERT_PATTERN(b, 64 * KiB, 3);
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, b, 64 * KiB, 0), MP_EEMPTY);
    free(b);
    mp_queue_free(g_q);
    all_chans_close();
}

/* ---- counts ------------------------------------------------------------- */

TEST(qsize_empty_full_with_maxsize)
{
    mp_queue *q = new_queue(3, 0, false);
    char b[4];
    for (int round = 0; round < 2; round++) {
        ASSERT_EQ(mp_queue_qsize(q), 0);
        ASSERT_TRUE(mp_queue_empty(q));
        ASSERT_TRUE(!mp_queue_full(q));
        for (int i = 1; i <= 3; i++) {
            ASSERT_OK(mp_queue_put(q, "x", 1, 0));
            ASSERT_EQ(mp_queue_qsize(q), i);
            ASSERT_TRUE(!mp_queue_empty(q));
            ASSERT_EQ(mp_queue_full(q), i == 3);
        }
        ASSERT_ERR(mp_queue_put(q, "x", 1, 0), MP_EFULL);
        ASSERT_EQ(mp_queue_qsize(q), 3);
        for (int i = 2; i >= 0; i--) {
            ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 1);
            ASSERT_EQ(mp_queue_qsize(q), i);
            ASSERT_TRUE(!mp_queue_full(q));
            ASSERT_EQ(mp_queue_empty(q), i == 0);
        }
    }
    mp_queue_free(q);
    /* no maxsize: never full, even with no byte free */
    q = new_queue(0, 256, false);
    int n = 0;
    while (mp_queue_put(q, "12345678", 8, 0) == 0)
        n++;
    ASSERT_EQ(n, 16); /* records of 16 bytes */
    ASSERT_EQ(mp_queue_qsize(q), 16);
    ASSERT_TRUE(!mp_queue_full(q));
    mp_queue_free(q);
}

/* ---- the macros, and the DESIGN's program ------------------------------- */

struct point {
    int x;
    double y;
    char tag[5];
};

static int put_0_to_4(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++)
        ASSERT_OK(MP_PUT(g_q, i));
    return 0;
}

TEST(put_get_macros_and_the_design_program)
{
    mp_queue *q;
    ASSERT_OK(mp_queue_new(&q, NULL));
    int i = 42, j = 0;
    struct point pt = {7, 2.5, "abcd"}, pt2 = {0};
    ASSERT_OK(MP_PUT(q, i));
    ASSERT_OK(MP_PUT(q, pt));
    ASSERT_EQ(MP_GET(q, j), sizeof j);
    ASSERT_EQ(j, 42);
    ASSERT_EQ(MP_GET(q, pt2), sizeof pt2);
    ASSERT_TRUE(pt2.x == 7 && pt2.y == 2.5 && strcmp(pt2.tag, "abcd") == 0);
    char c;
    ASSERT_OK(MP_PUT(q, i));
    ASSERT_ERR(MP_GET(q, c), MP_EMSGSIZE); /* an int does not fit a char */
    ASSERT_EQ(MP_GET(q, j), sizeof j);
    mp_queue_free(q);

    /* a worker puts 0..4, the parent drains them */
    ASSERT_OK(mp_queue_new(&g_q, NULL));
    mp_process *p = t_start(put_0_to_4, NULL, NULL);
    t_join(p, 0);
    int v, n = 0;
    while (!mp_queue_empty(g_q)) {
        ASSERT_EQ(MP_GET(g_q, v), sizeof v);
        ASSERT_EQ(v, n);
        n++;
    }
    ASSERT_EQ(n, 5);
    mp_queue_free(g_q);
}

/* ---- made after the child started --------------------------------------- */

static int ping_pong(void *arg)
{
    (void)arg;
    mp_queue *q = recv_ptr(&to_child);
    char b[8];
    ssize_t n = mp_queue_get(q, b, sizeof b, LONG);
    t_send(&to_parent, (int)n);
    ASSERT_EQ(n, 4);
    ASSERT_TRUE(memcmp(b, "ping", 4) == 0);
    ASSERT_OK(mp_queue_put(q, "pong", 4, LONG));
    return 0;
}

TEST(queue_made_after_the_child_started)
{
    chans_open();
    mp_process *p = t_start(ping_pong, NULL, NULL);
    mp_queue *q = new_queue(0, 0, false);
    send_ptr(&to_child, q);
    ASSERT_OK(mp_queue_put(q, "ping", 4, 0));
    ASSERT_EQ(t_recv(&to_parent, 10), 4);
    char b[8];
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, LONG), 4);
    ASSERT_TRUE(memcmp(b, "pong", 4) == 0);
    t_join(p, 0);
    mp_queue_free(q);
    chans_close();
}

/* ---- bad input ---------------------------------------------------------- */

TEST(bad_input_is_einval)
{
    char b[8];
    void *m;
    size_t len;
    ASSERT_ERR(mp_queue_put(NULL, "a", 1, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_get(NULL, b, sizeof b, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_get_alloc(NULL, &m, &len, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_close(NULL), MP_EINVAL);
    ASSERT_ERR(mp_queue_task_done(NULL), MP_EINVAL);
    ASSERT_ERR(mp_queue_join(NULL, 0), MP_EINVAL);
    ASSERT_EQ(mp_queue_qsize(NULL), 0);
    ASSERT_TRUE(mp_queue_empty(NULL));
    ASSERT_TRUE(!mp_queue_full(NULL));
    mp_queue_free(NULL);

    mp_queue *q = (mp_queue *)1;
    ASSERT_ERR(mp_queue_new(NULL, NULL), MP_EINVAL);
    static const size_t bad_cap[] = {1, 63, ((size_t)2 << 30) + 1, (size_t)4 << 30, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad_cap / sizeof bad_cap[0]; i++) {
        q = (mp_queue *)1;
        ASSERT_ERR(mp_queue_new(&q, &(mp_queue_opts){.capacity = bad_cap[i]}), MP_EINVAL);
        ASSERT_TRUE(q == NULL);
    }

    q = new_queue(0, 256, true);
    ASSERT_OK(mp_queue_put(q, "abc", 3, 0));
    ASSERT_ERR(mp_queue_put(q, NULL, 1, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_put(q, "a", ((size_t)1 << 62) + 1, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_put(q, "a", SIZE_MAX, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_put(q, "a", 1, NAN), MP_EINVAL);
    ASSERT_ERR(mp_queue_get(q, NULL, 1, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_get(q, b, sizeof b, NAN), MP_EINVAL);
    ASSERT_ERR(mp_queue_get_alloc(q, NULL, &len, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_get_alloc(q, &m, NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_queue_get_alloc(q, &m, &len, NAN), MP_EINVAL);
    ASSERT_ERR(mp_queue_join(q, NAN), MP_EINVAL);
    ASSERT_EQ(mp_queue_qsize(q), 1); /* none of them took or left anything */
    ASSERT_EQ(mp_queue_get(q, b, sizeof b, 0), 3);
    ASSERT_TRUE(memcmp(b, "abc", 3) == 0);
    mp_queue_free(q);
}

/* ---- out of memory ------------------------------------------------------ */

/* Runs this binary again, case `name`, with ROLE_ENV=role, MPROC_ARENA_SIZE
 * (if size) and RLIMIT_AS (if as): its exit code, or -signal. */
struct reexec {
    const char *name, *role, *size;
    rlim_t as;
};

static int reexec_main(void *arg)
{
    struct reexec *r = arg;
    setenv(ROLE_ENV, r->role, 1);
    if (r->size)
        setenv("MPROC_ARENA_SIZE", r->size, 1);
    if (r->as && setrlimit(RLIMIT_AS, &(struct rlimit){r->as, r->as}) < 0)
        return 126;
    execl("/proc/self/exe", "test_queue", r->name, (char *)NULL);
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

/* A queue that cannot have its memory: MP_ENOMEM, and the process lives on. */
static void queue_past_the_arena(void)
{
    size_t arena = mp__arena_size();
    ASSERT_GT(arena, 0);
    mp_queue *q = (mp_queue *)1;
    size_t cap = (size_t)1 << 31;
    ASSERT_LT(arena, cap);
    ASSERT_ERR(mp_queue_new(&q, &(mp_queue_opts){.capacity = cap}), MP_ENOMEM);
    ASSERT_TRUE(q == NULL);
    cap = 1;
    while (cap < arena)
        cap <<= 1; /* the arena's size or more: no room with its metadata */
    q = (mp_queue *)1;
    ASSERT_ERR(mp_queue_new(&q, &(mp_queue_opts){.capacity = cap}), MP_ENOMEM);
    ASSERT_TRUE(q == NULL);
    q = new_queue(0, 0, false); /* and the process lives on */
    put_pattern(q, 1000, 6, 0);
    get_expect(q, 1000, 6, 0);
    mp_queue_free(q);
}

TEST(queue_past_a_small_arena_is_enomem)
{
    if (!role("arena")) {
        ASSERT_EQ(reexec((struct reexec){.name = "queue_past_a_small_arena_is_enomem", .role = "arena",
                                         .size = "32M"}),
                  0);
        return;
    }
    ASSERT_EQ(mp__arena_size(), 32 * MiB);
    queue_past_the_arena();
}

TEST(queue_under_a_small_address_space_is_enomem)
{
#if defined(__SANITIZE_ADDRESS__)
    puts("skipped: AddressSanitizer's shadow needs more address space than the limit");
    return;
#endif
    if (!role("rlimit")) {
        ASSERT_EQ(reexec((struct reexec){.name = "queue_under_a_small_address_space_is_enomem",
                                         .role = "rlimit", .as = 512 * MiB}),
                  0);
        return;
    }
    ASSERT_LT(mp__arena_size(), 512 * MiB);
    queue_past_the_arena();
}

/* A get that times out midway through a message it has no arena memory to
 * park (I5) finishes the message past its deadline rather than lose it. */
static struct {
    double t0, timeout;
    pid_t tid;
} np;

static void *release_after_deadline(void *arg)
{
    (void)arg;
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_HELD);
    /* the getter is midway; let its deadline pass while it waits */
    double end = t_now() + 10 * t_scale();
    while (t_now() < np.t0 + np.timeout + 0.1 || t_proc_state(np.tid) != 'S') {
        if (t_now() > end)
            T_FAIL("the getter never waited past its deadline");
        sched_yield();
    }
    t_send(&to_child, 1);
    return NULL;
}

TEST(get_that_cannot_park_finishes_the_message)
{
    if (!role("nopark")) {
        ASSERT_EQ(reexec((struct reexec){.name = "get_that_cannot_park_finishes_the_message",
                                         .role = "nopark", .size = "32M"}),
                  0);
        return;
    }
    all_chans_open();
    g_q = new_queue(0, MiB, false);
    enum { LEN = 40 << 20 }; /* more than the whole arena: no stash for it */
    struct job j = {.len = LEN, .seed = 11, .timeout = LONG, .hook = "queue.stream.chunk",
                    .nth = 3, .report_first = true};
    mp_process *p = t_start(put_job, &j, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_FIRST);
    char *b = malloc(LEN);
    ASSERT_TRUE(b != NULL);
    np.tid = gettid();
    np.timeout = 0.5;
    np.t0 = t_now();
    pthread_t t = t_thread(release_after_deadline, NULL);
    ASSERT_EQ(mp_queue_get(g_q, b, LEN, np.timeout), LEN);
    ASSERT_GE(t_now() - np.t0, np.timeout);
    ASSERT_PATTERN(b, LEN, 11);
    t_join_thread(t);
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    free(b);
    mp_queue_free(g_q);
    all_chans_close();
}

/* ---- deaths ------------------------------------------------------------- */

/* Puts (kill_at) and dies there. */
static int put_and_die(void *arg)
{
    const char *where = arg;
    hk.where = where;
    hk.nth = 1;
    hk.hits = 0;
    hk.kill = true;
    hk.report_first = false;
    mp__hook = on_hook;
    mp_queue_put(g_q, "torn?", 5, LONG);
    return 1; /* not reached */
}

/* A producer killed holding the put lock, before it wrote anything: the
 * next put goes in within about a second, nothing torn is seen. */
TEST(producer_killed_holding_the_put_lock)
{
    g_q = new_queue(0, 0, false);
    put_pattern(g_q, 30, 1, 0);
    mp_process *p = t_start(put_and_die, "queue.put.locked", NULL);
    t_join(p, -SIGKILL);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    double t0 = t_now();
    put_pattern(g_q, 40, 2, LONG);
    ASSERT_LT((t_now() - t0) * 1e3, 3000 * t_scale());
    ASSERT_EQ(mp_queue_qsize(g_q), 2);
    get_expect(g_q, 30, 1, 0);
    get_expect(g_q, 40, 2, 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EEMPTY);
    put_pattern(g_q, 50, 3, 0); /* and the lock is free again */
    get_expect(g_q, 50, 3, 0);
    mp_queue_free(g_q);
}

/* A consumer killed at `where` inside its get, before taking the message:
 * the message is still there, whole, for the next get. */
static void consumer_killed_at(const char *where)
{
    all_chans_open();
    g_q = new_queue(0, 0, false);
    put_pattern(g_q, 64, 1, 0);
    put_pattern(g_q, 65, 2, 0);
    struct job j = {.len = 64, .seed = 1, .timeout = LONG, .hook = where, .nth = 1, .kill = true};
    mp_process *p = t_start(get_job, &j, NULL);
    t_join(p, -SIGKILL);
    ASSERT_EQ(mp_queue_qsize(g_q), 2);
    double t0 = t_now();
    get_expect(g_q, 64, 1, LONG);
    ASSERT_LT((t_now() - t0) * 1e3, 3000 * t_scale());
    get_expect(g_q, 65, 2, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EEMPTY);
    mp_queue_free(g_q);
    all_chans_close();
}

TEST(consumer_killed_holding_the_get_lock) { consumer_killed_at("queue.get.locked"); }
TEST(consumer_killed_after_copying_loses_nothing) { consumer_killed_at("queue.get.copied"); }

/* A streaming producer killed before its 3rd chunk while a consumer reads
 * the message: the consumer does not deliver it, and gets the next message,
 * put by another producer, intact. */
TEST(streaming_producer_killed_midway)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct getter g = {.q = g_q, .buf = malloc(ST_LEN), .cap = ST_LEN, .timeout = LONG};
    ASSERT_TRUE(g.buf != NULL);
    pthread_t t = t_thread(getter_main, &g);
    struct job j = {.len = ST_LEN, .seed = 12, .timeout = LONG, .hook = "queue.stream.chunk",
                    .nth = 3, .kill = true};
    mp_process *p = t_start(put_job, &j, NULL);
    t_join(p, -SIGKILL);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    put_pattern(g_q, 1000, 13, LONG);
    t_join_thread(t);
    ASSERT_EQ(g.n, 1000);
    ASSERT_PATTERN(g.buf, 1000, 13);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, g.buf, ST_LEN, 0), MP_EEMPTY);
    free(g.buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* Gets one message into a buffer of ST_LEN bytes; reports its length, and
 * checks it is the job's (j->len bytes of j->seed). */
static int get_into_big_buffer(void *arg)
{
    const struct job *j = arg;
    char *b = malloc(ST_LEN);
    ASSERT_TRUE(b != NULL);
    t_send(&to_parent, getpid());
    ssize_t n = mp_queue_get(g_q, b, ST_LEN, j->timeout);
    t_send(&res, (int)n);
    ASSERT_EQ(n, (ssize_t)j->len);
    ASSERT_PATTERN(b, j->len, j->seed);
    free(b);
    return 0;
}

/* The same, with the next message in the ring before the reader looks
 * again (it is stopped meanwhile): a record that does not continue the
 * stream ends it, and is delivered itself. */
TEST(streaming_producer_killed_then_a_message_before_the_reader_looks)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job cj = {.len = 1000, .seed = 18, .timeout = LONG};
    mp_process *c = t_start(get_into_big_buffer, &cj, NULL);
    pid_t cpid = t_recv(&to_parent, 10);
    struct job pj;
    mp_process *p = start_held_streamer(&pj, 19);
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_HELD); /* the reader took two chunks */
    ASSERT_EQ(kill(cpid, SIGSTOP), 0);
    double end = t_now() + 10 * t_scale();
    while (t_proc_state(cpid) != 'T' && t_proc_state(cpid) != 't') {
        if (t_now() > end)
            T_FAIL("the reader never stopped");
        sched_yield();
    }
    ASSERT_OK(mp_process_kill(p)); /* dies at its 3rd chunk, holding the put lock */
    t_join(p, -SIGKILL);
    put_pattern(g_q, 1000, 18, LONG); /* there is room: the reader took what was in */
    ASSERT_EQ(kill(cpid, SIGCONT), 0);
    ASSERT_EQ(t_recv(&res, 10), 1000);
    t_join(c, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EEMPTY);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A streaming producer killed with its first chunk in the ring and no reader
 * yet: for a get too small for the message it is no message (not
 * MP_EMSGSIZE), and once closed the queue answers MP_ECLOSED. */
TEST(stream_of_a_killed_producer_is_not_a_message_for_a_small_buffer)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    mp_process *p = t_start(put_forever_report, (void *)(uintptr_t)ST_LEN, NULL);
    t_await_state(t_recv(&to_parent, 10), 'S'); /* its first chunk is in: it waits for room */
    ASSERT_OK(mp_process_kill(p));
    t_join(p, -SIGKILL);
    char b[2000];
    ASSERT_ERR(mp_queue_get(g_q, b, sizeof b, 0), MP_EEMPTY);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    put_pattern(g_q, 1500, 24, LONG);
    get_expect(g_q, 1500, 24, 0);
    mp_queue_free(g_q);

    g_q = new_queue(0, ST_CAP, false); /* the same, then closed */
    p = t_start(put_forever_report, (void *)(uintptr_t)ST_LEN, NULL);
    t_await_state(t_recv(&to_parent, 10), 'S');
    ASSERT_OK(mp_process_kill(p));
    t_join(p, -SIGKILL);
    ASSERT_OK(mp_queue_close(g_q));
    ASSERT_ERR(mp_queue_get(g_q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A streaming producer killed as it gives up (its put timed out after its
 * first chunk went in): the records it left are skipped by any get, whole
 * buffer or small, and the queue goes on. */
TEST(streaming_producer_killed_as_it_gives_up)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j = {.len = ST_LEN, .seed = 25, .timeout = 0, .hook = "queue.stream.abandon",
                    .nth = 1, .kill = true};
    mp_process *p = t_start(put_job, &j, NULL);
    t_join(p, -SIGKILL);
    char *b = malloc(ST_LEN);
    ASSERT_TRUE(b != NULL);
    ASSERT_ERR(mp_queue_get(g_q, b, 100, 0), MP_EEMPTY);
    ASSERT_ERR(mp_queue_get(g_q, b, ST_LEN, 0), MP_EEMPTY);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    put_pattern(g_q, 90, 26, LONG);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    get_expect(g_q, 90, 26, 0);
    ASSERT_ERR(mp_queue_get(g_q, b, ST_LEN, 0), MP_EEMPTY);
    free(b);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A consumer killed at the start of handing over a message made whole in
 * the stash: nothing was delivered, so the next get delivers it, once. */
TEST(consumer_killed_delivering_the_stash)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j;
    mp_process *p = start_held_streamer(&j, 27);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf);
    t_send(&to_child, 1);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN - 1, LONG), MP_EMSGSIZE); /* whole, in the stash */
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    struct job k = {.len = ST_LEN, .seed = 27, .timeout = LONG, .hook = "queue.stash.delivering",
                    .nth = 1, .kill = true};
    mp_process *c = t_start(get_job, &k, NULL);
    t_join(c, -SIGKILL);
    ASSERT_EQ(mp_queue_qsize(g_q), 1);
    memset(buf, 0, ST_LEN);
    ASSERT_EQ(mp_queue_get(g_q, buf, ST_LEN, LONG), ST_LEN);
    ASSERT_PATTERN(buf, ST_LEN, 27);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0), MP_EEMPTY);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}

/* Records of a stream given up stay in the ring when a consumer holds the
 * get lock as it is given up (here a dead one: it cannot be taken back).
 * For a get too small for the message they are no message: it skips them
 * rather than answer MP_EMSGSIZE for good. Also while the stream's producer,
 * alive, is about to give it up because the queue was closed. */
TEST(given_up_stream_left_in_the_ring_is_not_a_message_for_a_small_buffer)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job cj = {.len = 10, .seed = 1, .timeout = LONG, .hook = "queue.get.locked", .nth = 1,
                     .kill = true};
    mp_process *c = t_start(get_job, &cj, NULL);
    t_join(c, -SIGKILL); /* the get lock is held by the dead */
    char *big = pattern_new(ST_LEN, 28);
    ASSERT_ERR(mp_queue_put(g_q, big, ST_LEN, 0), MP_EFULL); /* its first chunk went in */
    free(big);
    char b[2000];
    ASSERT_ERR(mp_queue_get(g_q, b, sizeof b, 0.5 * t_scale()), MP_EEMPTY);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    put_pattern(g_q, 1999, 29, LONG);
    get_expect(g_q, 1999, 29, 0);

    /* closed while its producer waits for room: it is held as it gives up */
    struct job pj = {.len = ST_LEN, .seed = 30, .timeout = LONG, .hook = "queue.stream.abandon",
                     .nth = 1};
    mp_process *p = t_start(put_job, &pj, NULL);
    t_await_state(mp_process_pid(p), 'S'); /* its first chunk is in */
    ASSERT_OK(mp_queue_close(g_q));
    ASSERT_EQ(t_recv(&to_parent, 10), MSG_HELD);
    double t0 = t_now();
    ASSERT_ERR(mp_queue_get(g_q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    assert_at_once(t0);
    t_send(&to_child, 1);
    ASSERT_ERR(t_recv(&res, 10), MP_ECLOSED);
    t_join(p, 0);
    ASSERT_ERR(mp_queue_get(g_q, b, sizeof b, MP_FOREVER), MP_ECLOSED);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A consumer killed after taking two chunks of a streamed message: that
 * message is lost (documented), the rest of it is skipped, the next one is
 * delivered intact and the count comes back to 0. */
struct big_then_small {
    mp_queue *q;
    int r1, r2;
};

static void *put_big_then_small(void *arg)
{
    struct big_then_small *b = arg;
    char *m = pattern_new(ST_LEN, 15);
    b->r1 = mp_queue_put(b->q, m, ST_LEN, LONG);
    free(m);
    m = pattern_new(777, 16);
    b->r2 = mp_queue_put(b->q, m, 777, LONG);
    free(m);
    return NULL;
}

TEST(streaming_consumer_killed_midway_loses_only_that_message)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j = {.len = ST_LEN, .seed = 15, .timeout = LONG, .hook = "queue.stream.took",
                    .nth = 2, .kill = true};
    mp_process *c = t_start(get_job, &j, NULL);
    struct big_then_small bs = {g_q, 1, 1};
    pthread_t t = t_thread(put_big_then_small, &bs);
    t_join(c, -SIGKILL);
    get_expect(g_q, 777, 16, LONG);
    t_join_thread(t);
    ASSERT_OK(bs.r1);
    ASSERT_OK(bs.r2);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, NULL, 0, 0), MP_EEMPTY);
    mp_queue_free(g_q);
    all_chans_close();
}

/* A consumer killed while it fills the stash left by a get that timed out:
 * the stash stays valid (I5), and the next get delivers the message whole. */
TEST(consumer_killed_while_filling_the_stash)
{
    all_chans_open();
    g_q = new_queue(0, ST_CAP, false);
    struct job j;
    mp_process *p = start_held_streamer(&j, 17);
    char *buf = malloc(ST_LEN);
    ASSERT_TRUE(buf != NULL);
    get_until_held(buf); /* a stash with two chunks */
    struct job k = {.len = ST_LEN, .seed = 17, .timeout = LONG, .hook = "queue.stash.copied",
                    .nth = 1, .kill = true};
    mp_process *c = t_start(get_job, &k, NULL);
    t_send(&to_child, 1); /* the streamer goes on: the killer copies its 3rd chunk and dies */
    t_join(c, -SIGKILL);
    memset(buf, 0, ST_LEN);
    ASSERT_EQ(mp_queue_get(g_q, buf, ST_LEN, LONG), ST_LEN);
    ASSERT_PATTERN(buf, ST_LEN, 17);
    ASSERT_EQ(t_recv(&res, 10), 0);
    t_join(p, 0);
    ASSERT_EQ(mp_queue_qsize(g_q), 0);
    ASSERT_ERR(mp_queue_get(g_q, buf, ST_LEN, 0), MP_EEMPTY);
    free(buf);
    mp_queue_free(g_q);
    all_chans_close();
}
