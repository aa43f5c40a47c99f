/*
 * The pool-kill rounds (pkill_rounds.h): the killer, the items' records and
 * the checker.
 */
#include "pkill_rounds.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    struct rec recs[PK_MAX_N];
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

void pk_one_round(mp_pool *p, const struct pk_round *rd, unsigned *seed, struct pk_totals *t)
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

void pk_summary(const char *what, unsigned seed, const struct pk_totals *t, double secs)
{
    fprintf(stderr,
            "%s (seed %u): %ld rounds, %ld items, %ld kills (%ld double, %ld idle, %ld rounds "
            "where the map ended first), %ld items failed (%ld before their task began, %ld "
            "mid-chunk), %.1f s\n",
            what, seed, t->rounds, t->items, t->kills, t->double_kills, t->idle_kills, t->missed,
            t->failed, t->unstarted_failed, t->mid_chunk, secs);
}

mp_pool *pk_new_pool(int n)
{
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &(mp_pool_opts){.processes = n}));
    return p;
}

struct pk_round pk_random_round(unsigned *seed, int r)
{
    static const size_t sizes[] = {1, 2, 3, 10, 100, 1000, 5000};
    static const size_t chunks[] = {0, 1, 7, 64};
    struct pk_round rd = {0};
    unsigned x = (unsigned)rand_r(seed);
    rd.n = x % 4 ? sizes[(unsigned)rand_r(seed) % 7] : 1 + (unsigned)rand_r(seed) % PK_MAX_N;
    rd.cs = chunks[r % 4];
    rd.arena = (r / 4) % 2;
    unsigned k = (unsigned)rand_r(seed) % 10;
    rd.random = k == 0 ? 0 : k <= 6 ? 1 : 2;
    rd.idle = (unsigned)rand_r(seed) % 8 == 0;
    return rd;
}

/* Random rounds on a pool of 3; each item checked. */
void pk_torture(mp_pool *p, int rounds, unsigned seed, struct pk_totals *t)
{
    unsigned s = seed;
    for (int r = 0; r < rounds; r++) {
        struct pk_round rd = pk_random_round(&s, r);
        pk_one_round(p, &rd, &s, t);
    }
}

void pk_board_new(void)
{
    bd = mp_shared_calloc(1, sizeof *bd);
    ASSERT_TRUE(bd != NULL);
}

void pk_board_free(void)
{
    mp_shared_free(bd);
    bd = NULL;
}
