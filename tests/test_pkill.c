/*
 * The pool under fire: workers are SIGKILLed at random instants, hundreds of
 * times, while maps run over them (mid-item, mid-chunk, between items, idle,
 * two at once); then a checker proves what src/pool.c promises:
 *
 *   - a worker that dies while running an item fails that item alone, with
 *     MP_EWORKER in its status: at most one failed item per kill, and the
 *     item's recorded runner (if it started at all) is a worker we killed;
 *   - inside a chunk, the rest of the chunk runs elsewhere: the items after
 *     the failed one are done by another worker;
 *   - every other item ran exactly once and its result is correct;
 *   - the call returns MP_EWORKER exactly when some item failed;
 *   - nothing hangs (every wait has a limit), replacements keep the pool
 *     working, and at mp_pool_free no process, descriptor or arena byte is
 *     left behind.
 *
 * Every item records in the arena, under its index, which process ran it
 * and whether it started and finished. The killer (the test's thread)
 * chooses its moment by the number of items started, never by sleeping,
 * and kills only pids it saw running items in this round: workers are our
 * children and die only by our hand, so such a pid is a live worker. Some
 * items "park" (wait forever) so that a kill lands inside a known item of
 * a known chunk.
 *
 * MPROC_PKILL_VERBOSE=1 prints a line per round; on a hang the case prints
 * the workers' states and the items started but not finished.
 */
#include "harness.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_N 5000
#define MAX_KILLS 8

struct item {
    uint64_t idx, seed;
};

enum { R_NONE = 0, R_STARTED = 1, R_FINISHED = 2 };

struct rec {
    _Atomic int32_t pid;   /* who ran it (0: nobody) */
    _Atomic int32_t state; /* R_* */
    _Atomic int32_t runs;  /* times it started */
    int32_t pad;
};

struct board { /* in the arena */
    _Atomic uint32_t base;     /* this round's checksum work */
    _Atomic uint64_t started;  /* items started this round */
    _Atomic int64_t park[2];   /* items that wait forever (to be killed in); -1 none */
    _Atomic int32_t parked[2]; /* the pid waiting in park[k], once it waits */
    struct rec recs[MAX_N];
};

static struct board *bd;

/* base iterations and up to twice more: a few microseconds (base 1000),
 * or next to nothing (base 1: a worker spends its time in the pool) */
static uint64_t checksum(uint64_t seed, unsigned base)
{
    uint64_t x = seed;
    unsigned iters = base + (unsigned)(seed % (2 * base));
    for (unsigned k = 0; k < iters; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        x ^= x >> 29;
    }
    return x;
}

static int work(const void *in, void *out, void *ctx)
{
    const struct item *it = in;
    struct board *b = ctx;
    struct rec *r = &b->recs[it->idx];
    static int32_t me; /* each worker's own pid (the parent never runs tasks) */
    if (!me)
        me = (int32_t)getpid();
    atomic_store(&r->pid, me); /* first: an item with a pid has started */
    atomic_fetch_add(&r->runs, 1);
    atomic_store(&r->state, R_STARTED);
    atomic_fetch_add(&b->started, 1);
    for (int k = 0; k < 2; k++)
        if ((int64_t)it->idx == atomic_load(&b->park[k])) {
            atomic_store(&b->parked[k], me);
            for (;;)
                pause(); /* until the test kills us here */
        }
    *(uint64_t *)out = checksum(it->seed, atomic_load(&b->base));
    atomic_store(&r->state, R_FINISHED);
    return 0;
}

/* ---- one round ----------------------------------------------------------- */

struct totals {
    long rounds, items, kills, double_kills, idle_kills, missed, failed, unstarted_failed,
        mid_chunk;
};

struct round {
    size_t n, cs;
    int park;   /* items that wait to be killed: 0, 1 or 2 */
    int random; /* random kills of running workers: 0, 1 or 2 */
    bool arena; /* in, out and status in the arena, else private */
    bool idle;  /* after the round, kill a worker that is idle */
    bool quick; /* items of next to no work */
};

struct killed {
    pid_t pid[MAX_KILLS];
    int n;
};

static bool was_killed(const struct killed *k, pid_t pid)
{
    for (int i = 0; i < k->n; i++)
        if (k->pid[i] == pid)
            return true;
    return false;
}

static void kill_one(struct killed *k, pid_t pid)
{
    ASSERT_TRUE(pid > 0 && pid != getpid());
    ASSERT_TRUE(!was_killed(k, pid));
    ASSERT_LT(k->n, MAX_KILLS);
    if (kill(pid, SIGKILL) != 0)
        T_FAIL("kill(%d, SIGKILL): a worker we saw running is gone", (int)pid);
    k->pid[k->n++] = pid;
}

/* Distinct pids running an item now (started, not finished), not killed,
 * in random order; a parked item's worker is the parking code's to kill. */
static int running_pids(size_t n, const struct killed *k, pid_t *out, int cap, unsigned *seed)
{
    int m = 0;
    for (size_t i = 0; i < n && m < cap; i++) {
        if (atomic_load(&bd->recs[i].state) != R_STARTED ||
            (int64_t)i == atomic_load(&bd->park[0]) || (int64_t)i == atomic_load(&bd->park[1]))
            continue;
        pid_t pid = atomic_load(&bd->recs[i].pid);
        bool dup = was_killed(k, pid);
        for (int x = 0; x < m && !dup; x++)
            dup = out[x] == pid;
        if (!dup && pid > 0)
            out[m++] = pid;
    }
    for (int i = m - 1; i > 0; i--) {
        int j = (int)((unsigned)rand_r(seed) % (unsigned)(i + 1));
        pid_t x = out[i];
        out[i] = out[j];
        out[j] = x;
    }
    return m;
}

/* On a hang: what the workers and the items look like, for the report. */
static void dump(size_t n, const struct killed *k)
{
    pid_t kids[16];
    int m = t_children(kids, 16);
    fprintf(stderr, "  children (%d):", m);
    for (int i = 0; i < m && i < 16; i++)
        fprintf(stderr, " %d(%c)", (int)kids[i], t_proc_state(kids[i]));
    fprintf(stderr, "\n  killed this round:");
    for (int i = 0; i < k->n; i++)
        fprintf(stderr, " %d", (int)k->pid[i]);
    fprintf(stderr, "\n  items started, not finished:");
    int shown = 0;
    size_t never = 0, first_never = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        int st = atomic_load(&bd->recs[i].state);
        if (st == R_STARTED && shown++ < 20)
            fprintf(stderr, " %zu(pid %d)", i, (int)atomic_load(&bd->recs[i].pid));
        if (st == R_NONE && never++ == 0)
            first_never = i;
    }
    fprintf(stderr, "\n  items never started: %zu, the first %zu\n", never, first_never);
}

/* A pause in the killer's wait loops: a spin, not a yield (on a busy
 * machine a yield gives the moment away: the map would often end meanwhile).
 * Every such loop also has a time limit. */
static void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#endif
}

static void one_round(mp_pool *p, const struct round *rd, unsigned *seed, struct totals *t)
{
    size_t n = rd->n;
    struct item *in = rd->arena ? mp_shared_calloc(n, sizeof *in) : calloc(n, sizeof *in);
    uint64_t *out = rd->arena ? mp_shared_calloc(n, 8) : calloc(n, 8);
    int *status = rd->arena ? mp_shared_calloc(n, sizeof(int)) : calloc(n, sizeof(int));
    ASSERT_TRUE(in && out && status);
    for (size_t i = 0; i < n; i++) {
        in[i] = (struct item){i, ((uint64_t)rand_r(seed) << 31) ^ (uint64_t)rand_r(seed)};
        out[i] = 0xdeadbeefdeadbeefull;
        status[i] = 12345; /* never an outcome: an item nobody settled */
    }
    memset(bd->recs, 0, n * sizeof bd->recs[0]);
    unsigned base = rd->quick ? 1 : 1000;
    atomic_store(&bd->base, base);
    atomic_store(&bd->started, 0);
    /* parked items: mid-chunk (never a chunk's last), in different chunks */
    int64_t park[2] = {-1, -1};
    for (int k = 0; k < rd->park; k++) {
        ASSERT_TRUE(rd->cs > 1 && n >= 2 * rd->cs); /* two chunks with room */
        while (park[k] < 0) {
            size_t v = (size_t)rand_r(seed) % n, hi = (v / rd->cs + 1) * rd->cs;
            if (v + 1 >= (hi < n ? hi : n))
                continue;
            if (k == 1 && v / rd->cs == (size_t)park[0] / rd->cs)
                continue;
            park[k] = (int64_t)v;
        }
    }
    for (int k = 0; k < 2; k++) {
        atomic_store(&bd->park[k], park[k]);
        atomic_store(&bd->parked[k], 0);
    }
    mp_async *a;
    ASSERT_OK(mp_pool_map_async(&a, p, work, in, sizeof *in, out, 8, n,
                                &(mp_map_opts){.chunksize = rd->cs, .ctx = bd, .status = status}));
    struct killed k = {.n = 0};
    double end = t_now() + 60 * t_scale();

    /* parked items: their workers wait there; kill them together (first:
     * the rest of their chunks cannot start before) */
    if (rd->park) {
        for (int i = 0; i < rd->park; i++)
            while (!atomic_load(&bd->parked[i])) {
                if (t_now() > end && (dump(n, &k), 1))
                    T_FAIL("round n %zu cs %zu: item %lld was never reached (%llu started)", n,
                           rd->cs, (long long)park[i],
                           (unsigned long long)atomic_load(&bd->started));
                relax();
            }
        for (int i = 0; i < rd->park; i++)
            kill_one(&k, atomic_load(&bd->parked[i]));
        t->double_kills += rd->park == 2;
    }
    /* random kills: at a random count of items started, the workers
     * running an item then (two at once when asked) */
    if (rd->random) {
        uint64_t at = (uint64_t)rand_r(seed) % n;
        while (atomic_load(&bd->started) < at && !mp_async_ready(a)) {
            if (t_now() > end && (dump(n, &k), 1))
                T_FAIL("round n %zu cs %zu: stuck at %llu of %zu items started", n, rd->cs,
                       (unsigned long long)atomic_load(&bd->started), n);
            relax();
        }
        /* workers may be between items: look until enough run one (or,
         * after a while, one does: the others may be dead or starting) */
        pid_t run[8];
        int m = 0, want = rd->random;
        for (unsigned looks = 0; !mp_async_ready(a); looks++) {
            m = running_pids(n, &k, run, 8, seed);
            if (m >= want || (m > 0 && looks > 20000))
                break;
            if (t_now() > end && (dump(n, &k), 1))
                T_FAIL("round n %zu cs %zu: no item runs, %llu of %zu started", n, rd->cs,
                       (unsigned long long)atomic_load(&bd->started), n);
            relax();
        }
        for (int i = 0; i < m && want > 0; i++, want--)
            kill_one(&k, run[i]); /* two: back to back, at once */
        if (want == rd->random)
            t->missed++;
        if (rd->random == 2 && want == 0)
            t->double_kills++;
    }

    int rc = mp_async_get(a, 60 * t_scale());
    if (rc == MP_ETIMEDOUT && (dump(n, &k), 1))
        T_FAIL("round n %zu cs %zu: the map hangs after %d kill(s); %llu items started", n,
               rd->cs, k.n, (unsigned long long)atomic_load(&bd->started));

    /* the checker */
    int fails_of[MAX_KILLS] = {0};
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        struct rec *r = &bd->recs[i];
        pid_t pid = atomic_load(&r->pid);
        int runs = atomic_load(&r->runs), state = atomic_load(&r->state);
        bool right = out[i] == checksum(in[i].seed, base);
        if (status[i] == 0) {
            if (runs != 1 || state != R_FINISHED || pid <= 0 || !right)
                T_FAIL("round n %zu cs %zu kills %d: item %zu has status 0 but ran %d time(s), "
                       "state %d, pid %d, result %s",
                       n, rd->cs, k.n, i, runs, state, (int)pid,
                       right ? "right" : "wrong");
            continue;
        }
        if (status[i] != MP_EWORKER)
            T_FAIL("round n %zu cs %zu kills %d: item %zu has status %d (%s); ran %d time(s), "
                   "state %d, pid %d",
                   n, rd->cs, k.n, i, status[i],
                   status[i] == 12345 ? "never settled: lost" : mp_err_name(status[i]), runs,
                   state, (int)pid);
        failed++;
        if (runs > 1)
            T_FAIL("item %zu failed but ran %d times", i, runs);
        if (pid == 0) {
            t->unstarted_failed++; /* its worker died between taking it and starting it */
        } else {
            int x = 0;
            while (x < k.n && k.pid[x] != pid)
                x++;
            if (x == k.n)
                T_FAIL("round n %zu cs %zu: item %zu failed with MP_EWORKER, but its worker "
                       "%d was not killed",
                       n, rd->cs, i, (int)pid);
            if (++fails_of[x] > 1)
                T_FAIL("round n %zu cs %zu: worker %d killed once failed %d items (the last: %zu)",
                       n, rd->cs, (int)pid, fails_of[x], i);
        }
        /* the rest of its chunk ran elsewhere */
        if (rd->cs > 1 && pid != 0) {
            size_t hi = (i / rd->cs + 1) * rd->cs;
            hi = hi < n ? hi : n;
            if (i + 1 < hi)
                t->mid_chunk++;
            for (size_t j = i + 1; j < hi; j++)
                if (atomic_load(&bd->recs[j].pid) == pid)
                    T_FAIL("round n %zu cs %zu: item %zu ran in worker %d after it died at "
                           "item %zu of the same chunk",
                           n, rd->cs, j, (int)pid, i);
        }
    }
    if (failed > k.n)
        T_FAIL("round n %zu cs %zu: %d items failed for %d kill(s)", n, rd->cs, failed, k.n);
    ASSERT_ERR(rc, failed ? MP_EWORKER : 0);
    for (int i = 0; i < rd->park; i++) { /* a parked item surely died in its item */
        ASSERT_EQ(status[park[i]], MP_EWORKER);
        ASSERT_EQ(atomic_load(&bd->recs[park[i]].pid), atomic_load(&bd->parked[i]));
    }
    mp_async_free(a);

    /* a worker that ran items this round, killed while idle */
    if (rd->idle) {
        pid_t seen[8];
        int m = 0;
        for (size_t i = 0; i < n && m < 8; i++) {
            pid_t pid = atomic_load(&bd->recs[i].pid);
            bool dup = pid <= 0 || was_killed(&k, pid);
            for (int x = 0; x < m && !dup; x++)
                dup = seen[x] == pid;
            if (!dup)
                seen[m++] = pid;
        }
        if (m) {
            kill_one(&k, seen[(unsigned)rand_r(seed) % (unsigned)m]);
            t->idle_kills++;
        }
    }

    if (getenv("MPROC_PKILL_VERBOSE"))
        fprintf(stderr, "round %ld: n %zu cs %zu park %d random %d arena %d idle %d: %d kill(s), "
                "%d failed, rc %d\n", t->rounds, n, rd->cs, rd->park, rd->random, rd->arena,
                rd->idle, k.n, failed, rc);
    t->rounds++;
    t->items += (long)n;
    t->kills += k.n;
    t->failed += failed;
    if (rd->arena) {
        mp_shared_free(in);
        mp_shared_free(out);
        mp_shared_free(status);
    } else {
        free(in);
        free(out);
        free(status);
    }
}

static void summary(const char *what, unsigned seed, const struct totals *t, double secs)
{
    fprintf(stderr,
            "%s (seed %u): %ld rounds, %ld items, %ld kills (%ld double, %ld idle, %ld rounds "
            "where the map ended first), %ld items failed (%ld before their task began, %ld "
            "mid-chunk), %.1f s\n",
            what, seed, t->rounds, t->items, t->kills, t->double_kills, t->idle_kills, t->missed,
            t->failed, t->unstarted_failed, t->mid_chunk, secs);
}

static mp_pool *new_pool(int n)
{
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &(mp_pool_opts){.processes = n}));
    return p;
}

static struct round random_round(unsigned *seed, int r)
{
    static const size_t sizes[] = {1, 2, 3, 10, 100, 1000, 5000};
    static const size_t chunks[] = {0, 1, 7, 64};
    struct round rd = {0};
    unsigned x = (unsigned)rand_r(seed);
    rd.n = x % 4 ? sizes[(unsigned)rand_r(seed) % 7] : 1 + (unsigned)rand_r(seed) % MAX_N;
    rd.cs = chunks[r % 4];
    rd.arena = (r / 4) % 2;
    unsigned k = (unsigned)rand_r(seed) % 10;
    rd.random = k == 0 ? 0 : k <= 6 ? 1 : 2;
    rd.idle = (unsigned)rand_r(seed) % 8 == 0;
    return rd;
}

/* Random rounds on a pool of 3; each item checked. */
static void torture(mp_pool *p, int rounds, unsigned seed, struct totals *t)
{
    unsigned s = seed;
    for (int r = 0; r < rounds; r++) {
        struct round rd = random_round(&s, r);
        one_round(p, &rd, &s, t);
    }
}

static void board_new(void)
{
    bd = mp_shared_calloc(1, sizeof *bd);
    ASSERT_TRUE(bd != NULL);
}

/* ---- cases ------------------------------------------------------------------ */

TEST(random_worker_kills_during_maps)
{
    board_new();
    mp_pool *p = new_pool(3);
    struct totals t = {0};
    unsigned seed = 1;
    double t0 = t_now();
    torture(p, 200, seed, &t);
    /* and the pool still works after it all */
    struct round calm = {.n = 1000, .cs = 0};
    struct totals c = {0};
    one_round(p, &calm, &seed, &c);
    ASSERT_EQ(c.failed, 0);
    summary("random kills during maps", 1, &t, t_now() - t0);
    ASSERT_GT(t.kills, 0);
    ASSERT_GT(t.failed, 0);
    mp_pool_free(p);
    mp_shared_free(bd);
}

TEST(kills_inside_chunks_rerun_the_rest_elsewhere)
{
    board_new();
    mp_pool *p = new_pool(3);
    struct totals t = {0};
    unsigned seed = 2;
    double t0 = t_now();
    static const size_t chunks[] = {100, 37, 256};
    for (int r = 0; r < 80; r++) {
        struct round rd = {
            .n = 1000 + (unsigned)rand_r(&seed) % (MAX_N - 999),
            .cs = chunks[r % 3],
            .park = 1 + r % 2,      /* one, or two killed at once */
            .random = r % 4 == 3,   /* and a worker running some item */
            .arena = (r / 3) % 2,
        };
        one_round(p, &rd, &seed, &t);
    }
    summary("kills inside chunks", 2, &t, t_now() - t0);
    ASSERT_GE(t.mid_chunk, 80 + 40); /* every parked item is mid-chunk */
    mp_pool_free(p);
    mp_shared_free(bd);
}

TEST(pool_is_clean_after_the_torture)
{
    board_new();
    int fds = t_count_fds_after_a_pool();
    size_t usage = mp_shared_usage();
    mp_pool *p = new_pool(3);
    struct totals t = {0};
    unsigned seed = 3;
    double t0 = t_now();
    torture(p, 60, seed, &t);
    for (int r = 0; r < 10; r++) {
        struct round rd = {.n = 2000, .cs = 50, .park = 2, .arena = r % 2};
        one_round(p, &rd, &seed, &t);
    }
    /* a last kill of an idle worker, then free at once: the manager may be
     * between the death and the replacement */
    struct round last = {.n = 100, .cs = 1, .idle = true};
    one_round(p, &last, &seed, &t);
    summary("before the free", 3, &t, t_now() - t0);
    mp_pool_free(p);
    pid_t first = 0;
    int n = t_await_no_children(2, &first);
    if (n)
        T_FAIL("%d process(es) left after mp_pool_free, the first %d", n, (int)first);
    ASSERT_EQ(t_count_fds(), fds);
    ASSERT_EQ(mp_shared_usage(), usage);
    mp_shared_free(bd);
}

/* Waits until the pool has nproc live workers and all of them sleep
 * (killed ones may linger as zombies until the manager reaps them). */
static void await_all_asleep(int nproc)
{
    double end = t_now() + 10 * t_scale();
    for (;;) {
        pid_t kids[16];
        int m = t_children(kids, 16), live = 0, asleep = 0;
        for (int i = 0; i < m && i < 16; i++) {
            char st = t_proc_state(kids[i]);
            live += st != 'Z' && st != 'X' && st != '?';
            asleep += st == 'S';
        }
        if (live == nproc && asleep == nproc)
            return;
        if (t_now() > end)
            T_FAIL("the pool did not settle: %d children, %d live, %d asleep", m, live, asleep);
        usleep(1000);
    }
}

/* Workers killed between items (a map of many one-item chunks) and while
 * idle (just after a map, looking for more work or asleep), over and over;
 * after each, once every worker (the replacement too) sleeps, a map of one
 * item: it must wake a worker and run. */
TEST(kills_between_items_and_while_idle_leave_the_pool_working)
{
    board_new();
    mp_pool *p = new_pool(2);
    struct totals t = {0};
    unsigned seed = 4;
    double t0 = t_now();
    for (int r = 0; r < 300; r++) {
        struct round rd = {.n = r % 2 ? 1 : 2000, .cs = 1, .random = r % 2 == 0,
                           .idle = r % 4 == 1, .arena = r % 3 == 0, .quick = r % 2 == 0};
        one_round(p, &rd, &seed, &t);
        await_all_asleep(2);
    }
    summary("kills between items and while idle", 4, &t, t_now() - t0);
    ASSERT_EQ(t.idle_kills, 75);
    mp_pool_free(p);
    mp_shared_free(bd);
}
