/*
 * The torture run (make torture, make torture-short): the library under
 * kills, stops, resource limits and volume, one scenario (a row) at a time,
 * then one table, printed and written to a report file.
 *
 * Each row runs in its own process (a plain fork of the driver, a child
 * subreaper like a harness case), so that a failed check (T_FAIL), a crash
 * or a hang ends that row alone: the driver kills a row past its time
 * limit. A row counts what it did and what went wrong into a shared page;
 * then the row's process checks what it left behind: processes (zombies
 * included), descriptors, arena bytes (mp_shared_usage, family-wide); the
 * driver looks for names new in /dev/shm and reaps any orphan (it is a
 * subreaper too). A row is ok when its own checks held and nothing was
 * left.
 *
 * Randomness comes from one seed, printed; each row derives its own from
 * it and its name, so `mproc_torture --seed S --row NAME` replays a row.
 * No timing is a pass/fail criterion: every wait has a generous deadline,
 * only so that a hang fails a row instead of the run.
 *
 *   mproc_torture [--short] [--seed N] [--row NAME[,NAME...]] [--report FILE] [--list]
 *
 * MPROC_TORTURE_SHORT=1 is --short: the same rows, smaller (CI).
 */
#include "harness.h"
#include "pkill_rounds.h"
#include "qkill_rounds.h"

#include "os/os.h" /* mp__check_ns */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- what a row reports --------------------------------------------------- */

struct res { /* in a shared page: the row's process writes, the driver reads */
    long events, ops, failures; /* kills/stops/...; messages/tasks/...; MP_E* reported */
    long lost, torn, dup;
    long left;        /* processes left (zombies included) */
    long fds;         /* descriptors more than before */
    long shm;         /* /dev/shm entries more than before */
    long long arena;  /* mp_shared_usage() after minus before */
    int bad;          /* one of the row's own checks failed */
    int skipped;
    char note[240];   /* why it failed, or was skipped; details */
};

static struct res *R;
static bool shortrun;
static char self_exe[4096];

#define SIZE(full, short_) (shortrun ? (short_) : (full))

__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...)
{
    size_t used = strlen(R->note);
    if (used && used < sizeof R->note - 3)
        used += (size_t)snprintf(R->note + used, sizeof R->note - used, "; ");
    if (used >= sizeof R->note - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(R->note + used, sizeof R->note - used, fmt, ap);
    va_end(ap);
}

/* A check that fails the row but lets it finish and report. */
#define CHECK(c, ...)                                                          \
    do {                                                                       \
        if (!(c)) {                                                            \
            if (!R->bad)                                                       \
                note(__VA_ARGS__);                                             \
            R->bad = 1;                                                        \
            fprintf(stderr, "torture: check failed: %s: ", #c);                \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

static void skip_row(const char *why)
{
    R->skipped = 1;
    snprintf(R->note, sizeof R->note, "%s", why);
}

static bool known_code(int code)
{
    return code < 0 && strcmp(mp_err_name(code), "unknown") != 0;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- row 1: SIGKILL of pool workers during maps --------------------------- */

static int slow_square(const void *in, void *out, void *ctx);

/* A live worker of ours (a child not yet a zombie), at random; 0 if none. */
static pid_t live_child(unsigned *seed)
{
    pid_t kids[16], live[16];
    int n = t_children(kids, 16), m = 0;
    for (int i = 0; i < n && i < 16; i++)
        if (t_proc_state(kids[i]) != 'Z')
            live[m++] = kids[i];
    return m ? live[rand_r(seed) % (unsigned)m] : 0;
}

/* imap, ordered and not, while workers are killed as results come in:
 * every index comes back once (in order when ordered), right or failed
 * with MP_EWORKER, at most one failure per kill. */
static void imap_kills(mp_pool *p, int rounds, unsigned *seed, long *kills, long *items,
                       long *failed)
{
    uint64_t *in = malloc(PK_MAX_N * 8);
    uint8_t *seen = malloc(PK_MAX_N);
    ASSERT_TRUE(in && seen);
    for (int r = 0; r < rounds && !R->bad; r++) {
        size_t n = 1 + rand_r(seed) % PK_MAX_N;
        bool ordered = r % 2;
        for (size_t i = 0; i < n; i++)
            in[i] = (uint64_t)rand_r(seed), seen[i] = 0;
        size_t kill_at[2] = {rand_r(seed) % n, rand_r(seed) % 3 ? SIZE_MAX : rand_r(seed) % n};
        mp_imap *it;
        ASSERT_OK(mp_pool_imap(&it, p, slow_square, in, 8, 8, n,
                               &(mp_map_opts){.chunksize = rand_r(seed) % 3 ? 0 : 1 + rand_r(seed) % 64},
                               ordered));
        size_t got = 0;
        long k = 0, f = 0;
        for (;;) {
            for (int x = 0; x < 2; x++)
                if (got == kill_at[x]) {
                    pid_t pid = live_child(seed);
                    k += pid > 0 && kill(pid, SIGKILL) == 0;
                }
            uint64_t out = 0;
            size_t idx = SIZE_MAX;
            int rc = mp_imap_next(it, &out, &idx, 60 * t_scale());
            if (rc == MP_EDONE)
                break;
            CHECK(idx < n, "imap round %d: next returned %s with index %zu (a hang?)", r,
                  mp_err_name(rc), idx);
            if (idx >= n)
                break;
            CHECK(!seen[idx], "imap round %d: index %zu came back twice", r, idx);
            CHECK(!ordered || idx == got, "imap round %d: index %zu came back as result %zu of "
                  "an ordered imap", r, idx, got);
            seen[idx] = 1;
            got++;
            if (rc == MP_EWORKER)
                f++;
            else
                CHECK(rc == 0 && out == in[idx] * in[idx], "imap round %d, item %zu: %s, result "
                      "%s", r, idx, mp_err_name(rc), out == in[idx] * in[idx] ? "right" : "wrong");
        }
        CHECK(R->bad || got == n, "imap round %d: %zu of %zu results", r, got, n);
        CHECK(f <= k, "imap round %d: %ld items failed for %ld kills", r, f, k);
        mp_imap_free(it);
        *kills += k;
        *items += (long)got;
        *failed += f;
    }
    free(in);
    free(seen);
}

static void row_pool_kill(unsigned seed)
{
    pk_board_new();
    mp_pool *p = pk_new_pool(3);
    struct pk_totals t = {0};
    double t0 = t_now();
    /* pk_one_round fails the row (T_FAIL) on any wrong, lost or twice-run
     * item, or on more failed items than kills */
    pk_torture(p, SIZE(7000, 800), seed, &t);
    struct pk_round calm = {.n = 1000, .cs = 0};
    struct pk_totals c = {0};
    unsigned s = seed;
    pk_one_round(p, &calm, &s, &c);
    CHECK(c.failed == 0, "%ld items failed with no kill", c.failed);
    pk_summary("pool kills", seed, &t, t_now() - t0);
    long ik = 0, ii = 0, ifl = 0;
    int irounds = SIZE(400, 50);
    imap_kills(p, irounds, &s, &ik, &ii, &ifl);
    mp_pool_free(p);
    pk_board_free();
    R->events = t.kills + ik;
    R->ops = t.items + c.items + ii;
    R->failures = t.failed + ifl;
    CHECK(t.failed <= t.kills, "%ld failed items for %ld kills", t.failed, t.kills);
    CHECK(t.kills > 0, "%s", "no kill landed");
    note("%ld map rounds (%ld double kills, %ld idle kills); %d imap rounds, %ld kills, %ld "
         "items failed", t.rounds, t.double_kills, t.idle_kills, irounds, ik, ifl);
}

/* ---- row 2: SIGKILL of queue producers and consumers ---------------------- */

static void row_queue_kill(unsigned seed)
{
    int sets = SIZE(40, 3);
    long cons = 0;
    for (int i = 0; i < sets; i++) {
        struct qk_result q = qk_kill_rounds(300, seed + (unsigned)i);
        R->events += q.producer_kills + q.consumer_kills;
        R->ops += (long)q.acked;
        R->lost += (long)q.missing;
        R->torn += q.torn;
        R->dup += q.dup;
        R->failures += q.bad_get;
        cons += q.consumer_kills;
        CHECK(qk_ok(&q), "set %d (seed %u): torn %u dup %u ghost %u bad_get %u missing %llu "
              "for %d consumer kills", i, seed + (unsigned)i, q.torn, q.dup, q.ghost, q.bad_get,
              (unsigned long long)q.missing, q.consumer_kills);
    }
    qk_after_kills();
    note("lost %ld <= %ld consumers killed; streaming producers included", R->lost, cons);
}

/* ---- row 3: SIGKILL of lock holders --------------------------------------- */

struct lk_board { /* in the arena */
    mp_lock *lock;
    mp_rlock *rlock;
    _Atomic int use_rlock;
    _Atomic int32_t holder; /* pid inside the critical section, 0 none */
    _Atomic long reports;   /* MP_EOWNERDEAD seen by anyone */
    _Atomic long torn;      /* invariant broken without MP_EOWNERDEAD */
    _Atomic long acquired;
    long a, b;              /* the guarded data: b == 7 * a, two stores apart */
};

static struct lk_board *lk;

static int lk_acquire(double timeout)
{
    return atomic_load(&lk->use_rlock) ? mp_rlock_acquire(lk->rlock, timeout)
                                       : mp_lock_acquire(lk->lock, timeout);
}

static void lk_release(void)
{
    if (atomic_load(&lk->use_rlock))
        mp_rlock_release(lk->rlock);
    else
        mp_lock_release(lk->lock);
}

/* Under the lock: check the invariant (repair after a dead holder), then
 * update it in two steps with the holder mark set around them. */
static void lk_critical(int rc, bool linger)
{
    atomic_fetch_add(&lk->acquired, 1);
    if (rc == MP_EOWNERDEAD) {
        atomic_fetch_add(&lk->reports, 1);
        lk->b = 7 * lk->a;
    } else if (lk->b != 7 * lk->a) {
        atomic_fetch_add(&lk->torn, 1);
        lk->b = 7 * lk->a;
    }
    atomic_store(&lk->holder, (int32_t)getpid());
    lk->a++;
    atomic_signal_fence(memory_order_seq_cst);
    for (volatile int i = 0; i < (linger ? 20000 : 200); i++)
        ;
    lk->b = 7 * lk->a;
    atomic_store(&lk->holder, 0);
}

static int lk_holder(void *arg)
{
    (void)arg;
    for (unsigned n = 0;; n++) {
        int rc = lk_acquire(30);
        if (rc != 0 && rc != MP_EOWNERDEAD)
            return 3;
        lk_critical(rc, n % 3 == 0);
        lk_release();
    }
}

/* A holder stopped (SIGSTOP) inside is alive: no one may take it for dead.
 * Our acquire must time out, and no MP_EOWNERDEAD may appear meanwhile.
 * 1 if a holder was caught inside. */
static int stop_a_holder(void)
{
    double end = t_now() + 5;
    pid_t pid;
    while (!(pid = atomic_load(&lk->holder)) && t_now() < end)
        ;
    if (!pid || kill(pid, SIGSTOP) != 0)
        return 0;
    int caught = 0;
    if (atomic_load(&lk->holder) == pid) { /* stopped inside */
        caught = 1;
        long reports = atomic_load(&lk->reports);
        int rc = lk_acquire(0.6);
        CHECK(rc == MP_ETIMEDOUT, "a stopped holder's lock: acquire returned %s, not "
              "MP_ETIMEDOUT", mp_err_name(rc));
        if (rc == 0 || rc == MP_EOWNERDEAD)
            lk_release();
        CHECK(atomic_load(&lk->reports) == reports, "%s",
              "a stopped holder was taken for dead (MP_EOWNERDEAD)");
    }
    kill(pid, SIGCONT);
    return caught;
}

static void row_lock_kill(unsigned seed)
{
    mp__check_ns = 20000000; /* a dead holder noticed in 20 ms, not 250 */
    ASSERT_TRUE((lk = mp_shared_calloc(1, sizeof *lk)) != NULL);
    ASSERT_OK(mp_lock_new(&lk->lock));
    ASSERT_OK(mp_rlock_new(&lk->rlock));
    int rounds = SIZE(5000, 600);
    long inside = 0, stopped = 0;
    mp_process *h[2];
    for (int i = 0; i < 2; i++)
        h[i] = t_start(lk_holder, NULL, NULL);
    for (int r = 0; r < rounds; r++) {
        if (r == rounds / 2) { /* second half on the RLock: stop both holders first */
            for (int i = 0; i < 2; i++) {
                mp_process_kill(h[i]);
                ASSERT_OK(mp_process_join(h[i], 10 * t_scale()));
                mp_process_free(h[i]);
            }
            int rc = lk_acquire(10 * t_scale()); /* settle the Lock's last owner */
            CHECK(rc == 0 || rc == MP_EOWNERDEAD, "acquire after the first half: %s",
                  mp_err_name(rc));
            if (rc == 0 || rc == MP_EOWNERDEAD)
                lk_critical(rc, false), lk_release();
            R->events += 2;
            atomic_store(&lk->use_rlock, 1);
            for (int i = 0; i < 2; i++)
                h[i] = t_start(lk_holder, NULL, NULL);
        }
        sleep_us(rand_r(&seed) % 3000);
        if (r % SIZE(100, 40) == SIZE(99, 39))
            stopped += stop_a_holder();
        int v = (int)(rand_r(&seed) % 2);
        pid_t pid = mp_process_pid(h[v]);
        mp_process_kill(h[v]);
        ASSERT_OK(mp_process_join(h[v], 10 * t_scale()));
        /* dead now: if the mark still names it, it died inside */
        inside += atomic_load(&lk->holder) == (int32_t)pid;
        R->events++;
        mp_process_free(h[v]);
        /* the next acquirer: us, racing the other holder */
        int rc = lk_acquire(10 * t_scale());
        CHECK(rc == 0 || rc == MP_EOWNERDEAD, "round %d: acquire after a kill: %s (a hang?)", r,
              mp_err_name(rc));
        if (rc != 0 && rc != MP_EOWNERDEAD)
            break;
        lk_critical(rc, false);
        lk_release();
        h[v] = t_start(lk_holder, NULL, NULL);
    }
    for (int i = 0; i < 2; i++) {
        mp_process_kill(h[i]);
        ASSERT_OK(mp_process_join(h[i], 10 * t_scale()));
        int code = mp_process_exitcode(h[i]);
        CHECK(code == -SIGKILL, "a holder exited with %d", code);
        mp_process_free(h[i]);
        R->events++;
    }
    int rc = lk_acquire(10 * t_scale());
    CHECK(rc == 0 || rc == MP_EOWNERDEAD, "last acquire: %s", mp_err_name(rc));
    if (rc == 0 || rc == MP_EOWNERDEAD)
        lk_critical(rc, false), lk_release();
    R->ops = atomic_load(&lk->acquired);
    R->failures = atomic_load(&lk->reports);
    R->torn = atomic_load(&lk->torn);
    CHECK(R->torn == 0, "%ld acquisitions found the data half-updated without MP_EOWNERDEAD",
          R->torn);
    CHECK(R->failures >= inside, "%ld holders killed inside, only %ld MP_EOWNERDEAD", inside,
          R->failures);
    CHECK(R->failures <= R->events, "%ld MP_EOWNERDEAD for %ld kills", R->failures, R->events);
    note("%ld holders killed inside the critical section, %ld stopped there 0.6 s and not "
         "taken for dead; Lock, then RLock", inside, stopped);
    mp_lock_free(lk->lock);
    mp_rlock_free(lk->rlock);
    mp_shared_free(lk);
}

/* ---- row 4: the family's root SIGKILLed ----------------------------------- */

/* The victim: a fresh program (exec'd), so that it is a family's root with
 * its own arena. Queue producers and a consumer, a child with a child of
 * its own, a daemon, and a pool, all busy until it is killed. */
static mp_queue *vq;

static int v_spin(void *arg)
{
    (void)arg;
    char m[256] = {0};
    for (;;) {
        mp_queue_put(vq, m, sizeof m, 0.1);
        void *x;
        size_t len;
        if (mp_queue_get_alloc(vq, &x, &len, 0.1) == 0)
            free(x);
    }
    return 0;
}

static int v_parent(void *arg)
{
    mp_process *g;
    if (mp_process_new(&g, v_spin, arg, NULL) == 0 && mp_process_start(g) == 0)
        return v_spin(arg);
    return 1;
}

static int v_square(const void *in, void *out, void *ctx)
{
    (void)ctx;
    uint64_t x = *(const uint64_t *)in;
    for (int i = 0; i < 100; i++)
        x = x * 6364136223846793005ull + 1;
    *(uint64_t *)out = x;
    return 0;
}

static int victim_main(int ready_fd)
{
    if (mp_queue_new(&vq, &(mp_queue_opts){.capacity = 4096}) < 0)
        return 1;
    mp_process *p;
    static const mp_target fns[] = {v_spin, v_spin, v_parent, v_spin};
    for (int i = 0; i < 4; i++)
        if (mp_process_new(&p, fns[i], NULL, &(mp_process_opts){.daemon = i == 3}) < 0 ||
            mp_process_start(p) < 0)
            return 1;
    mp_pool *pool;
    if (mp_pool_new(&pool, &(mp_pool_opts){.processes = 2}) < 0)
        return 1;
    if (write(ready_fd, "r", 1) != 1)
        return 1;
    close(ready_fd);
    static uint64_t in[1000], out[1000];
    for (;;)
        mp_pool_map(pool, v_square, in, 8, out, 8, 1000, NULL);
}

static long reaped; /* by reap_all */

/* Reaps what has ended; the number still alive (0 when none is left). */
static int reap_all(void)
{
    for (;;) {
        pid_t w = waitpid(-1, NULL, WNOHANG);
        if (w > 0) {
            reaped++;
            continue;
        }
        if (w < 0)
            return 0; /* ECHILD */
        pid_t kids[64];
        int n = t_children(kids, 64);
        return n > 0 ? n : 1;
    }
}

static void row_root_kill(unsigned seed)
{
    int rounds = SIZE(800, 100);
    for (int r = 0; r < rounds; r++) {
        int fds[2];
        ASSERT_TRUE(pipe2(fds, O_CLOEXEC) == 0);
        fflush(NULL);
        pid_t pid = fork();
        ASSERT_TRUE(pid >= 0);
        if (pid == 0) {
            setpgid(0, 0);
            int w = dup(fds[1]); /* without close-on-exec */
            char arg[16];
            snprintf(arg, sizeof arg, "%d", w);
            /* this very program, even if its file was replaced meanwhile */
            execl("/proc/self/exe", self_exe, "--victim", arg, (char *)NULL);
            execl(self_exe, self_exe, "--victim", arg, (char *)NULL);
            fprintf(stderr, "torture: exec %s: %s\n", self_exe, strerror(errno));
            _exit(127);
        }
        setpgid(pid, pid);
        close(fds[1]);
        bool early = rand_r(&seed) % 4 == 0; /* during the family's setup */
        if (!early) {
            char b;
            ssize_t n;
            double end = t_now() + 20 * t_scale();
            fcntl(fds[0], F_SETFL, O_NONBLOCK);
            while ((n = read(fds[0], &b, 1)) < 0 && errno == EAGAIN && t_now() < end)
                sleep_us(1000);
            CHECK(n == 1, "round %d: the victim never got ready", r);
            sleep_us(rand_r(&seed) % 100000);
        } else {
            sleep_us(rand_r(&seed) % 5000);
        }
        close(fds[0]);
        kill(pid, SIGKILL);
        int st;
        ASSERT_TRUE(waitpid(pid, &st, 0) == pid);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "round %d: the victim ended with %#x",
              r, st);
        R->events++;
        /* its descendants are reparented to us (a subreaper): all must end */
        reaped = 0;
        double end = t_now() + 2;
        int alive;
        while ((alive = reap_all()) > 0 && t_now() < end)
            sleep_us(2000);
        if (alive > 0) {
            R->left += alive;
            CHECK(false, "round %d: %d descendant(s) of the killed root alive 2 s later", r,
                  alive);
            kill(-pid, SIGKILL);
            while (waitpid(-1, NULL, 0) > 0)
                ;
        }
        R->ops += reaped;
    }
    note("%s", "family: 4 children (a daemon, one with a child), a pool of 2; one kill in 4 "
               "during its setup; orphans reaped by a subreaper, no /proc");
}

/* ---- row 5: SIGSTOP/SIGCONT of pool workers mid-task ---------------------- */

static int slow_square(const void *in, void *out, void *ctx)
{
    (void)ctx;
    uint64_t x = *(const uint64_t *)in, y = x;
    for (int i = 0; i < 20000; i++) { /* ~20 us of work the compiler must keep */
        y = y * 6364136223846793005ull + 1442695040888963407ull;
        __asm__ volatile("" : "+r"(y));
    }
    *(uint64_t *)out = x * x;
    return 0;
}

static void row_pool_stop(unsigned seed)
{
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &(mp_pool_opts){.processes = 3}));
    int rounds = SIZE(300, 40);
    size_t n = 2000;
    uint64_t *in = malloc(n * 8), *out = malloc(n * 8);
    int *status = malloc(n * sizeof(int));
    ASSERT_TRUE(in && out && status);
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n; i++)
            in[i] = i + (uint64_t)r * n, out[i] = 0, status[i] = 12345;
        mp_async *a;
        ASSERT_OK(mp_pool_map_async(&a, p, slow_square, in, 8, out, 8, n,
                                    &(mp_map_opts){.chunksize = (size_t)(r % 4 ? 0 : 1 + r % 50),
                                                   .status = status}));
        while (!mp_async_ready(a)) {
            pid_t kids[8];
            int m = t_children(kids, 8);
            if (m <= 0)
                break;
            int k = rand_r(&seed) % 4 == 0 && m > 1 ? 2 : 1; /* one, or two at once */
            pid_t s[2] = {kids[rand_r(&seed) % (unsigned)m], 0};
            if (k == 2)
                s[1] = kids[rand_r(&seed) % (unsigned)m];
            for (int j = 0; j < k; j++)
                if (kill(s[j], SIGSTOP) == 0)
                    R->events++;
            sleep_us(rand_r(&seed) % (rand_r(&seed) % 8 ? 3000 : 100000));
            for (int j = 0; j < k; j++)
                kill(s[j], SIGCONT);
            sleep_us(rand_r(&seed) % 2000);
        }
        int rc = mp_async_get(a, 60 * t_scale());
        CHECK(rc == 0, "round %d: the map returned %s", r, mp_err_name(rc));
        for (size_t i = 0; i < n; i++) {
            if (status[i] != 0)
                R->failures++;
            if (out[i] != in[i] * in[i])
                R->lost++;
        }
        mp_async_free(a);
        R->ops += (long)n;
        if (rc == MP_ETIMEDOUT)
            break;
    }
    CHECK(R->failures == 0 && R->lost == 0, "%ld items failed, %ld wrong", R->failures, R->lost);
    mp_pool_free(p);
    free(in);
    free(out);
    free(status);
}

/* ---- rows 7 and 8: a pool starved by a limit ------------------------------ */

/* A pool whose workers all die while a limit holds, so that none can be
 * replaced: its work waits (a wait with a timeout says so), and goes on
 * once the limit is raised. Every item is right or failed by a kill. */
static int starved; /* pools whose work waited for the limit to rise */

static void starved_pool(void (*lower)(void), void (*raise_)(void), unsigned *seed)
{
    mp_pool *pool;
    ASSERT_OK(mp_pool_new(&pool, &(mp_pool_opts){.processes = 2}));
    enum { N = 4000 };
    static uint64_t in[N], out[N];
    static int status[N];
    for (size_t i = 0; i < N; i++)
        in[i] = i * 3 + 1, out[i] = 0, status[i] = 12345;
    pid_t kids[8]; /* the workers, looked up while /proc can still be opened */
    int m = t_children(kids, 8), kills = 0;
    lower();
    mp_async *a;
    int rc = mp_pool_map_async(&a, pool, slow_square, in, 8, out, 8, N,
                               &(mp_map_opts){.chunksize = 1 + rand_r(seed) % 20,
                                              .status = status});
    R->ops++;
    if (rc < 0) {
        R->failures++;
        CHECK(known_code(rc), "map_async at the limit returned %d", rc);
        raise_();
        mp_pool_free(pool);
        return;
    }
    sleep_us(rand_r(seed) % 3000);
    for (int i = 0; i < m && i < 8; i++)
        kills += kill(kids[i], SIGKILL) == 0;
    int w = mp_async_wait(a, 0.2);
    CHECK(w == 0 || w == MP_ETIMEDOUT, "a wait on a starved pool: %s", mp_err_name(w));
    starved += w == MP_ETIMEDOUT;
    raise_();
    rc = mp_async_get(a, 60 * t_scale());
    CHECK(rc == 0 || rc == MP_EWORKER, "a starved pool's map, the limit raised: %s",
          mp_err_name(rc));
    int failed = 0;
    for (size_t i = 0; i < N; i++) {
        if (status[i] == MP_EWORKER)
            failed++;
        else
            CHECK(status[i] == 0 && out[i] == in[i] * in[i], "starved pool, item %zu: status %s, "
                  "result %s", i, mp_err_name(status[i]), out[i] == in[i] * in[i] ? "right" : "wrong");
    }
    CHECK(failed <= kills, "starved pool: %d items failed for %d kills", failed, kills);
    R->failures += failed;
    mp_async_free(a);
    mp_pool_free(pool);
}

/* ---- row 6: a task allocating without bound under RLIMIT_AS --------------- */

static long vm_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "re");
    long pages = -1;
    if (f) {
        if (fscanf(f, "%ld", &pages) != 1)
            pages = -1;
        fclose(f);
    }
    return pages < 0 ? -1 : pages * sysconf(_SC_PAGESIZE);
}

/* The worker's address space: what it has now plus 128 MiB; no core
 * dumps of its deaths. */
static int limit_as(void *arg)
{
    (void)arg;
    long vm = vm_bytes();
    if (vm < 0)
        return 1;
    struct rlimit rl = {(rlim_t)vm + (128u << 20), (rlim_t)vm + (128u << 20)}, core = {0, 0};
    return setrlimit(RLIMIT_AS, &rl) == 0 && setrlimit(RLIMIT_CORE, &core) == 0 ? 0 : 1;
}

/* Item values ending in 7 eat memory until malloc fails, then abort as an
 * xmalloc does: the worker dies of its memory limit inside the item. */
static int hog_or_square(const void *in, void *out, void *ctx)
{
    (void)ctx;
    uint64_t x = *(const uint64_t *)in;
    if (x % 10 == 7) {
        for (;;) {
            char *m = malloc(1 << 20);
            if (!m)
                abort();
            memset(m, 1, 1 << 20);
        }
    }
    *(uint64_t *)out = x * x;
    return 0;
}

static void row_pool_oom(unsigned seed)
{
    (void)seed;
    if (vm_bytes() < 0) {
        skip_row("skipped: /proc/self/statm unreadable");
        return;
    }
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &(mp_pool_opts){.processes = 2, .initializer = limit_as}));
    int rounds = SIZE(6, 2);
    size_t n = 200;
    uint64_t in[200], out[200];
    int status[200];
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n; i++)
            in[i] = i + (uint64_t)r * n, out[i] = 0, status[i] = 12345;
        int rc = mp_pool_map(p, hog_or_square, in, 8, out, 8, n,
                             &(mp_map_opts){.chunksize = r % 2 ? 1 : 8, .status = status});
        CHECK(rc == MP_EWORKER, "round %d: the map returned %s, not MP_EWORKER", r,
              mp_err_name(rc));
        for (size_t i = 0; i < n; i++) {
            if (in[i] % 10 == 7) {
                R->events++;
                if (status[i] == MP_EWORKER)
                    R->failures++;
                else
                    CHECK(false, "hog item %zu: status %s", i, mp_err_name(status[i]));
            } else if (status[i] != 0 || out[i] != in[i] * in[i]) {
                R->lost++;
                CHECK(false, "item %zu: status %s, result %s", i, mp_err_name(status[i]),
                      out[i] == in[i] * in[i] ? "right" : "wrong");
            }
        }
        R->ops += (long)n;
    }
    /* and the pool goes on */
    for (size_t i = 0; i < n; i++)
        in[i] = i * 10, out[i] = 0;
    CHECK(mp_pool_map(p, hog_or_square, in, 8, out, 8, n, NULL) == 0, "%s",
          "the pool failed after the hogs");
    R->ops += (long)n;
    mp_pool_free(p);
    note("RLIMIT_AS = worker's size + 128 MiB; a hog item is 1 in 10");
}

/* ---- row 7: descriptor exhaustion ----------------------------------------- */

static int ret7(void *arg)
{
    (void)arg;
    return 7;
}

static int sq(const void *in, void *out, void *ctx)
{
    (void)ctx;
    *(int *)out = *(const int *)in * *(const int *)in;
    return 0;
}

/* One attempt of each kind of creation; each either works end to end or
 * returns a code. Counts calls and failures; checks what did work. */
static void fd_ops(bool must_work)
{
    int rc;
#define FD_OP(what, expr)                                                        \
    do {                                                                       \
        R->ops++;                                                              \
        rc = (expr);                                                           \
        if (rc < 0) {                                                          \
            R->failures++;                                                     \
            CHECK(known_code(rc), "%s returned %d, not an MP_E*/-errno code", what, rc); \
            CHECK(!must_work, "%s failed with the limit raised: %s", what, mp_err_name(rc)); \
        }                                                                      \
    } while (0)

    mp_conn *a, *b;
    FD_OP("mp_pipe", mp_pipe(&a, &b, true));
    if (rc == 0) {
        char buf[8];
        int s = mp_conn_send(b, "hello", 5);
        ssize_t g = s == 0 ? mp_conn_recv(a, buf, sizeof buf, 10) : s;
        CHECK(s < 0 ? known_code(s) : g == 5, "a pipe made at the limit: send %d, recv %zd", s,
              g);
        mp_conn_free(a);
        mp_conn_free(b);
    }
    mp_queue *q;
    FD_OP("mp_queue_new", mp_queue_new(&q, &(mp_queue_opts){.capacity = 4096}));
    if (rc == 0) {
        int v = 42, w = 0;
        int s = mp_queue_put(q, &v, sizeof v, 10);
        ssize_t g = s == 0 ? mp_queue_get(q, &w, sizeof w, 10) : s;
        CHECK(s < 0 ? known_code(s) : g == 4 && w == 42, "a queue at the limit: put %d get %zd",
              s, g);
        mp_queue_free(q);
    }
    mp_process *p;
    FD_OP("mp_process_new", mp_process_new(&p, ret7, NULL, NULL));
    if (rc == 0) {
        FD_OP("mp_process_start", mp_process_start(p));
        if (rc == 0) {
            int j = mp_process_join(p, 30 * t_scale());
            CHECK(j == 0 && mp_process_exitcode(p) == 7, "a process started at the limit: "
                  "join %s, exit code %d", mp_err_name(j), mp_process_exitcode(p));
        }
        mp_process_free(p);
    }
    mp_pool *pool;
    FD_OP("mp_pool_new", mp_pool_new(&pool, &(mp_pool_opts){.processes = 2}));
    if (rc == 0) {
        int in[64], out[64];
        for (int i = 0; i < 64; i++)
            in[i] = i, out[i] = -1;
        int m = mp_pool_map(pool, sq, in, sizeof(int), out, sizeof(int), 64, NULL);
        bool right = true;
        for (int i = 0; i < 64 && m == 0; i++)
            right &= out[i] == i * i;
        CHECK(m == 0 ? right : known_code(m), "a pool made at the limit: map %s, results %s",
              mp_err_name(m), right ? "right" : "wrong");
        mp_pool_free(pool);
    }
    mp_shm *s;
    FD_OP("mp_shm_create", mp_shm_create(&s, NULL, 4096));
    if (rc == 0) {
        mp_shm_unlink(s);
        mp_shm_free(s);
    }
    mp_lock *l;
    FD_OP("mp_lock_new", mp_lock_new(&l));
    if (rc == 0) {
        FD_OP("mp_lock_acquire", mp_lock_acquire(l, 10));
        if (rc == 0)
            mp_lock_release(l);
        mp_lock_free(l);
    }
#undef FD_OP
}

static struct rlimit fd_old;
static int fd_low; /* the lowest free descriptor */

static void fd_lower(void)
{
    struct rlimit low = {(rlim_t)fd_low, fd_old.rlim_max};
    ASSERT_TRUE(setrlimit(RLIMIT_NOFILE, &low) == 0);
}

static void fd_raise(void)
{
    ASSERT_TRUE(setrlimit(RLIMIT_NOFILE, &fd_old) == 0);
}

static void row_fd_limit(unsigned seed)
{
    struct rlimit old;
    ASSERT_TRUE(getrlimit(RLIMIT_NOFILE, &old) == 0);
    fd_old = old;
    int base = t_count_fds();
    int top = 0; /* the lowest free descriptor: new ones take it first */
    while (fcntl(top, F_GETFD) >= 0)
        top++;
    int levels = 0, most = SIZE(24, 12);
    for (int reps = 0; reps < SIZE(20, 2); reps++)
        for (int extra = 0; extra <= most; extra++) {
            struct rlimit low = {(rlim_t)(top + extra), old.rlim_max};
            ASSERT_TRUE(setrlimit(RLIMIT_NOFILE, &low) == 0);
            fd_ops(false);
            ASSERT_TRUE(setrlimit(RLIMIT_NOFILE, &old) == 0);
            levels++;
            R->events++;
            pid_t first = 0;
            int left = t_await_no_children(5, &first);
            CHECK(left == 0, "limit %d: %d process(es) left, the first %d", top + extra, left,
                  (int)first);
            int fds = t_count_fds();
            CHECK(fds == base, "limit %d: %d descriptors, %d before", top + extra, fds, base);
            if (R->bad)
                return;
        }
    fd_low = top;
    for (int i = 0; i < SIZE(40, 5); i++) {
        starved_pool(fd_lower, fd_raise, &seed);
        R->events++;
        CHECK(t_await_no_children(5, NULL) == 0, "%s", "processes left after a starved pool");
        CHECK(t_count_fds() == base, "descriptors after a starved pool: %d, %d before",
              t_count_fds(), base);
        if (R->bad)
            return;
    }
    long failed = R->failures;
    fd_ops(true); /* with the limit raised: everything works again */
    CHECK(failed > 0, "%s", "no call ever hit the limit");
    note("RLIMIT_NOFILE at the lowest free fd +0..+%d; %d levels; %ld of %ld calls failed "
         "cleanly; %d pools lost their workers at the limit (%d then waited) and finished "
         "once it was raised", most, levels, failed, R->ops, SIZE(40, 5), starved);
}

/* ---- row 8: process-count exhaustion (RLIMIT_NPROC) ----------------------- */

static mp_event *np_go;

static int np_wait(void *arg)
{
    (void)arg;
    return mp_event_wait(np_go, 30) == 0 ? 0 : 1;
}

/* With the limit at lim: processes and a pool, each started or refused. */
static void np_level(rlim_t lim, rlim_t max, bool must_work)
{
    struct rlimit rl = {lim, max};
    ASSERT_TRUE(setrlimit(RLIMIT_NPROC, &rl) == 0);
    mp_process *p[6];
    bool started[6] = {0};
    ASSERT_OK(mp_event_clear(np_go));
    for (int i = 0; i < 6; i++) {
        R->ops++;
        ASSERT_OK(mp_process_new(&p[i], np_wait, NULL, NULL));
        int rc = mp_process_start(p[i]);
        started[i] = rc == 0;
        if (rc) {
            R->failures++;
            CHECK(known_code(rc), "mp_process_start returned %d", rc);
            CHECK(!must_work, "mp_process_start failed with the limit raised: %s",
                  mp_err_name(rc));
        }
    }
    mp_pool *pool;
    R->ops++;
    int rc = mp_pool_new(&pool, &(mp_pool_opts){.processes = 3});
    if (rc == 0) {
        int in[32], out[32];
        for (int i = 0; i < 32; i++)
            in[i] = i;
        int m = mp_pool_map(pool, sq, in, 4, out, 4, 32, NULL);
        CHECK(m == 0 || known_code(m), "map on a pool made at the limit: %d", m);
        for (int i = 0; i < 32 && m == 0; i++)
            CHECK(out[i] == i * i, "item %d wrong", i);
        mp_pool_free(pool);
    } else {
        R->failures++;
        CHECK(known_code(rc), "mp_pool_new returned %d", rc);
        CHECK(!must_work, "mp_pool_new failed with the limit raised: %s", mp_err_name(rc));
    }
    ASSERT_OK(mp_event_set(np_go));
    for (int i = 0; i < 6; i++) {
        if (started[i]) {
            int j = mp_process_join(p[i], 30 * t_scale());
            CHECK(j == 0 && mp_process_exitcode(p[i]) == 0, "join: %s, exit code %d",
                  mp_err_name(j), mp_process_exitcode(p[i]));
        }
        mp_process_free(p[i]);
    }
    rl.rlim_cur = max;
    ASSERT_TRUE(setrlimit(RLIMIT_NPROC, &rl) == 0);
    R->events++;
    pid_t first = 0;
    int left = t_await_no_children(5, &first);
    CHECK(left == 0, "limit %lu: %d process(es) left", (unsigned long)lim, left);
}

static rlim_t np_max;

static void np_lower(void)
{
    struct rlimit rl = {1, np_max};
    ASSERT_TRUE(setrlimit(RLIMIT_NPROC, &rl) == 0);
}

static void np_raise(void)
{
    struct rlimit rl = {np_max, np_max};
    ASSERT_TRUE(setrlimit(RLIMIT_NPROC, &rl) == 0);
}

static void row_nproc_limit(unsigned seed)
{
    ASSERT_OK(mp_event_new(&np_go));
    int fds[2];
    ASSERT_TRUE(pipe2(fds, O_CLOEXEC) == 0);
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        /* root (CAP_SYS_RESOURCE, CAP_SYS_ADMIN) ignores RLIMIT_NPROC: drop
         * to nobody first */
        if (geteuid() == 0 &&
            (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0))
            _exit(77);
        prctl(PR_SET_DUMPABLE, 1); /* /proc/self/fd readable again */
        struct rlimit old;
        ASSERT_TRUE(getrlimit(RLIMIT_NPROC, &old) == 0);
        int base = t_count_fds_after_a_pool(); /* a forked process makes its wait fd anew */
        for (int reps = 0; reps < SIZE(12, 2); reps++)
            for (rlim_t lim = 1; lim <= 12; lim++)
                np_level(lim, old.rlim_max, false);
        np_max = old.rlim_max;
        for (int i = 0; i < SIZE(40, 5); i++) {
            starved_pool(np_lower, np_raise, &seed);
            R->events++;
            CHECK(t_await_no_children(5, NULL) == 0, "%s", "processes left after a starved pool");
        }
        long failed = R->failures;
        np_level(old.rlim_max, old.rlim_max, true);
        CHECK(failed > 0, "%s", "no start ever hit the limit");
        CHECK(t_count_fds() == base, "descriptors: %d, %d before", t_count_fds(), base);
        note("as uid %d, RLIMIT_NPROC 1..12; %ld of %ld starts refused cleanly; %d pools lost "
             "their workers at the limit (%d then waited) and finished once it was raised",
             (int)getuid(), failed, R->ops, SIZE(40, 5), starved);
        _exit(0);
    }
    close(fds[1]);
    close(fds[0]);
    int st;
    ASSERT_TRUE(waitpid(pid, &st, 0) == pid);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
        skip_row("skipped: running as root and cannot drop to uid 65534");
    else
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the unprivileged child ended with %#x", st);
    mp_event_free(np_go);
}

/* ---- row 9: 10,000 processes ---------------------------------------------- */

static int ret_arg(void *arg)
{
    return (int)(*(int *)arg % 256);
}

static void row_processes(unsigned seed)
{
    int total = SIZE(10000, 2000), batch = 100;
    mp_process *p[100];
    for (int done = 0; done < total; done += batch) {
        for (int i = 0; i < batch; i++) {
            int v = done + i + (int)(seed % 7);
            ASSERT_OK(mp_process_new(&p[i], ret_arg, &v,
                                     &(mp_process_opts){.arg_size = sizeof v,
                                                        .daemon = i % 5 == 0}));
            ASSERT_OK(mp_process_start(p[i]));
        }
        for (int i = 0; i < batch; i++) {
            int v = done + i + (int)(seed % 7);
            int rc = mp_process_join(p[i], 60 * t_scale());
            CHECK(rc == 0, "join: %s", mp_err_name(rc));
            int code = mp_process_exitcode(p[i]);
            if (code != v % 256) {
                R->lost++;
                CHECK(false, "process %d exited with %d, want %d", done + i, code, v % 256);
            }
            mp_process_free(p[i]);
            R->ops++;
        }
        if (R->bad)
            return;
    }
    note("in batches of %d, one in five a daemon", batch);
}

/* ---- row 10: 1,000,000 pool tasks ----------------------------------------- */

static int affine(const void *in, void *out, void *ctx)
{
    uint64_t x = *(const uint64_t *)in;
    *(uint64_t *)out = x * 2654435761u + (uint64_t)(uintptr_t)ctx;
    return 0;
}

static void row_tasks(unsigned seed)
{
    long total = SIZE(1000000, 200000), applies = total / 5;
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &(mp_pool_opts){.processes = 2}));
    size_t cap = 50000;
    uint64_t *in = malloc(cap * 8), *out = malloc(cap * 8);
    ASSERT_TRUE(in && out);
    long maps = 0;
    /* maps of random sizes and chunk sizes, private and arena buffers */
    while (R->ops < total - applies) {
        size_t n = 1 + rand_r(&seed) % cap;
        if ((long)n > total - applies - R->ops)
            n = (size_t)(total - applies - R->ops);
        bool arena = rand_r(&seed) % 2;
        uint64_t *i_ = arena ? mp_shared_calloc(n, 8) : in, *o_ = arena ? mp_shared_calloc(n, 8) : out;
        ASSERT_TRUE(i_ && o_);
        for (size_t i = 0; i < n; i++)
            i_[i] = (uint64_t)rand_r(&seed), o_[i] = 0;
        uintptr_t ctx = rand_r(&seed);
        int rc = mp_pool_map(p, affine, i_, 8, o_, 8, n,
                             &(mp_map_opts){.chunksize = rand_r(&seed) % 3 ? 0 : 1 + rand_r(&seed) % 500,
                                            .ctx = (void *)ctx});
        CHECK(rc == 0, "map of %zu: %s", n, mp_err_name(rc));
        for (size_t i = 0; i < n; i++)
            if (o_[i] != i_[i] * 2654435761u + ctx)
                R->lost++;
        if (arena)
            mp_shared_free(i_), mp_shared_free(o_);
        R->ops += (long)n;
        maps++;
    }
    /* apply_async, 256 in flight */
    enum { FLIGHT = 256 };
    mp_async *a[FLIGHT];
    uint64_t ain[FLIGHT], aout[FLIGHT];
    for (long done = 0; done < applies; done += FLIGHT) {
        int k = (int)(applies - done < FLIGHT ? applies - done : FLIGHT);
        for (int i = 0; i < k; i++) {
            ain[i] = (uint64_t)(done + i);
            ASSERT_OK(mp_pool_apply_async(&a[i], p, affine, &ain[i], 8, &aout[i], 8));
        }
        for (int i = 0; i < k; i++) {
            int rc = mp_async_get(a[i], 60 * t_scale());
            CHECK(rc == 0, "apply_async: %s", mp_err_name(rc));
            if (aout[i] != ain[i] * 2654435761u)
                R->lost++;
            mp_async_free(a[i]);
        }
        R->ops += k;
        if (R->bad)
            break;
    }
    CHECK(R->lost == 0, "%ld results wrong", R->lost);
    mp_pool_free(p);
    free(in);
    free(out);
    note("%ld maps of 1..%zu items, then %ld apply_async, 2 workers", maps, cap, applies);
}

/* ---- row 11: 64 processes on one queue ------------------------------------ */

struct qm_board {
    mp_queue *q;
    uint32_t per; /* messages per producer */
    _Atomic long torn, bad;
    _Atomic uint8_t seen[]; /* producer * per + seq */
};

static struct qm_board *qm;

static size_t qm_len(uint32_t id, uint32_t seq)
{
    uint32_t h = (id * 2654435761u) ^ (seq * 40503u);
    return h % 97 == 0 ? 70000 + h % 5000 : 8 + h % 300; /* a few past the ring: streamed */
}

static int qm_producer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    static char m[80000];
    for (uint32_t s = 0; s < qm->per; s++) {
        size_t len = qm_len(id, s);
        memcpy(m, &id, 4);
        memcpy(m + 4, &s, 4);
        memset(m + 8, (int)(id ^ s) & 0xff, len - 8);
        if (mp_queue_put(qm->q, m, len, 60) != 0)
            return 1;
    }
    return 0;
}

static int qm_consumer(void *arg)
{
    (void)arg;
    for (;;) {
        void *m;
        size_t len;
        int r = mp_queue_get_alloc(qm->q, &m, &len, 60);
        if (r == MP_ECLOSED)
            return 0;
        if (r != 0)
            return 1;
        uint32_t id, s;
        memcpy(&id, m, 4);
        memcpy(&s, (char *)m + 4, 4);
        bool ok = len >= 8 && id < 32 && s < qm->per && len == qm_len(id, s);
        for (size_t i = 8; ok && i < len; i++)
            ok = ((unsigned char *)m)[i] == ((id ^ s) & 0xff);
        if (!ok)
            atomic_fetch_add(&qm->torn, 1);
        else
            atomic_fetch_add(&qm->seen[id * qm->per + s], 1);
        free(m);
    }
}

/* Joins and frees 32 processes that must end with 0 within timeout s. */
static void qm_join_all(mp_process **ps, const char *what, double timeout)
{
    for (int i = 0; i < 32; i++) {
        int rc = mp_process_join(ps[i], timeout * t_scale());
        CHECK(rc == 0 && mp_process_exitcode(ps[i]) == 0, "%s %d: join %s, exit %d", what, i,
              mp_err_name(rc), mp_process_exitcode(ps[i]));
        if (rc)
            mp_process_kill(ps[i]), mp_process_join(ps[i], 10);
        mp_process_free(ps[i]);
    }
}

static void row_queue_64(unsigned seed)
{
    (void)seed;
    uint32_t per = SIZE(30000, 3000);
    ASSERT_TRUE((qm = mp_shared_alloc(sizeof *qm + 32 * per)) != NULL);
    qm->per = per;
    ASSERT_OK(mp_queue_new(&qm->q, &(mp_queue_opts){.capacity = 64 << 10}));
    mp_process *prod[32], *cons[32];
    for (int i = 0; i < 32; i++) {
        cons[i] = t_start(qm_consumer, NULL, NULL);
        prod[i] = t_start(qm_producer, (void *)(uintptr_t)i, NULL);
    }
    qm_join_all(prod, "producer", 300);
    ASSERT_OK(mp_queue_close(qm->q));
    qm_join_all(cons, "consumer", 120);
    for (uint32_t i = 0; i < 32 * per; i++) {
        uint8_t v = atomic_load(&qm->seen[i]);
        R->lost += v == 0;
        R->dup += v > 1;
    }
    R->torn = atomic_load(&qm->torn);
    R->ops = 32L * per;
    R->events = 64;
    CHECK(R->lost == 0 && R->dup == 0 && R->torn == 0, "lost %ld, dup %ld, torn %ld", R->lost,
          R->dup, R->torn);
    CHECK(mp_queue_qsize(qm->q) == 0, "%zu messages left", mp_queue_qsize(qm->q));
    mp_queue_free(qm->q);
    mp_shared_free(qm);
    note("32 producers, 32 consumers, 64 KiB ring, 1 message in 97 streamed");
}

/* ---- row 12: SIGKILL of sleeping waiters --------------------------------- */

/* Waiters asleep on a Lock, a Semaphore or a Condition; some are killed in
 * their sleep; then one wake-up is given. A dead waiter must take none with
 * it: a live waiter gets it (the deadline only tells a hang). Then the rest
 * are woken, and every live waiter got exactly one. */
enum { WK_LOCK, WK_SEM, WK_COND, WK_KINDS };
enum { WK_WAITERS = 4 };

struct wk_board { /* in the arena */
    mp_lock *lock;
    mp_sem *sem;
    mp_cond *cond;
    _Atomic long got;     /* wake-ups taken */
    _Atomic int waiting;  /* in mp_cond_wait (counted under the condition's lock) */
    _Atomic long gen;     /* the condition's predicate */
};

static struct wk_board *wk;

static int wk_waiter(void *arg)
{
    int kind = (int)(intptr_t)arg;
    if (kind == WK_LOCK) {
        int rc = mp_lock_acquire(wk->lock, 120);
        if (rc != 0)
            return 1;
        atomic_fetch_add(&wk->got, 1);
        return mp_lock_release(wk->lock) == 0 ? 0 : 2;
    }
    if (kind == WK_SEM) {
        if (mp_sem_acquire(wk->sem, 120) != 0)
            return 1;
        atomic_fetch_add(&wk->got, 1);
        return 0;
    }
    if (mp_cond_acquire(wk->cond, 120) != 0)
        return 1;
    long gen = atomic_load(&wk->gen);
    atomic_fetch_add(&wk->waiting, 1);
    while (atomic_load(&wk->gen) == gen)
        if (mp_cond_wait(wk->cond, 120) != 0)
            return 3;
    atomic_fetch_add(&wk->got, 1);
    return mp_cond_release(wk->cond) == 0 ? 0 : 2;
}

/* One wake-up of the kind. */
static void wk_give(int kind, bool all)
{
    if (kind == WK_LOCK) {
        if (!all) /* once: the waiters pass it on among themselves */
            ASSERT_OK(mp_lock_release(wk->lock));
    } else if (kind == WK_SEM) {
        for (int i = 0; i < (all ? WK_WAITERS : 1); i++)
            ASSERT_OK(mp_sem_release(wk->sem));
    } else {
        ASSERT_OK(mp_cond_acquire(wk->cond, 30));
        atomic_fetch_add(&wk->gen, 1);
        ASSERT_OK(all ? mp_cond_notify_all(wk->cond) : mp_cond_notify(wk->cond, 1));
        ASSERT_OK(mp_cond_release(wk->cond));
    }
}

static void row_waiter_kill(unsigned seed)
{
    mp__check_ns = 20000000; /* dead waiters noticed in 20 ms, not 250 */
    ASSERT_TRUE((wk = mp_shared_calloc(1, sizeof *wk)) != NULL);
    ASSERT_OK(mp_lock_new(&wk->lock));
    ASSERT_OK(mp_sem_new(&wk->sem, 0, 0));
    ASSERT_OK(mp_cond_new(&wk->cond, NULL));
    int rounds = SIZE(3000, 300);
    for (int r = 0; r < rounds && !R->bad; r++) {
        int kind = r % WK_KINDS;
        atomic_store(&wk->got, 0);
        atomic_store(&wk->waiting, 0);
        if (kind == WK_LOCK)
            ASSERT_OK(mp_lock_acquire(wk->lock, 30));
        mp_process *w[WK_WAITERS];
        for (int i = 0; i < WK_WAITERS; i++)
            w[i] = t_start(wk_waiter, (void *)(intptr_t)kind, NULL);
        if (kind == WK_COND) { /* all in their wait once we get the lock with all counted */
            double end = t_now() + 30 * t_scale();
            while (atomic_load(&wk->waiting) < WK_WAITERS && t_now() < end)
                sleep_us(200);
            CHECK(atomic_load(&wk->waiting) == WK_WAITERS, "round %d: waiters never waited", r);
            ASSERT_OK(mp_cond_acquire(wk->cond, 30));
            ASSERT_OK(mp_cond_release(wk->cond));
        }
        for (int i = 0; i < WK_WAITERS; i++)
            t_await_state(mp_process_pid(w[i]), 'S');
        /* kill one or two of them in their sleep */
        int dead = 1 + (int)(rand_r(&seed) % 2);
        bool killed[WK_WAITERS] = {0};
        for (int d = 0; d < dead; d++) {
            int v;
            do
                v = (int)(rand_r(&seed) % WK_WAITERS);
            while (killed[v]);
            killed[v] = true;
            ASSERT_OK(mp_process_kill(w[v]));
            ASSERT_OK(mp_process_join(w[v], 10 * t_scale()));
            CHECK(mp_process_exitcode(w[v]) == -SIGKILL, "round %d: a waiter exited with %d", r,
                  mp_process_exitcode(w[v]));
            R->events++;
        }
        /* one wake-up: a live waiter must take it */
        wk_give(kind, false);
        double end = t_now() + 30 * t_scale();
        while (atomic_load(&wk->got) == 0 && t_now() < end)
            sleep_us(500);
        if (atomic_load(&wk->got) == 0) {
            R->lost++;
            CHECK(false, "round %d (%s): the wake-up went to a dead waiter: no live one woke "
                  "within %.0f s", r, kind == WK_LOCK ? "Lock" : kind == WK_SEM ? "Semaphore"
                  : "Condition", 30 * t_scale());
        }
        wk_give(kind, true); /* and the rest */
        int live = 0;
        for (int i = 0; i < WK_WAITERS; i++) {
            if (killed[i]) {
                mp_process_free(w[i]);
                continue;
            }
            live++;
            int rc = mp_process_join(w[i], 30 * t_scale());
            CHECK(rc == 0 && mp_process_exitcode(w[i]) == 0, "round %d: a waiter: join %s, "
                  "exit code %d", r, mp_err_name(rc), mp_process_exitcode(w[i]));
            if (rc)
                mp_process_kill(w[i]), mp_process_join(w[i], 10);
            mp_process_free(w[i]);
        }
        long got = atomic_load(&wk->got);
        R->ops += got;
        CHECK(got == live, "round %d: %ld wake-ups taken by %d live waiters", r, got, live);
        if (kind == WK_SEM) {
            int left = mp_sem_value(wk->sem); /* released 1 + WK_WAITERS, live took one each */
            CHECK(left == 1 + WK_WAITERS - live, "round %d: semaphore at %d, want %d", r, left,
                  1 + WK_WAITERS - live);
            while (mp_sem_acquire(wk->sem, 0) == 0)
                ;
        }
        if (kind == WK_LOCK) {
            int rc = mp_lock_acquire(wk->lock, 10 * t_scale()); /* free again */
            CHECK(rc == 0, "round %d: the lock after its waiters: %s", r, mp_err_name(rc));
            if (rc == 0 || rc == MP_EOWNERDEAD)
                mp_lock_release(wk->lock);
        }
    }
    note("%d waiters asleep on a Lock, a Semaphore or a Condition, 1 or 2 killed, then a "
         "wake-up: always taken by a live one", WK_WAITERS);
    mp_lock_free(wk->lock);
    mp_sem_free(wk->sem);
    mp_cond_free(wk->cond);
    mp_shared_free(wk);
}

/* ---- the driver ------------------------------------------------------------- */

struct row {
    const char *name, *what, *events, *ops;
    void (*fn)(unsigned seed);
    int limit; /* seconds (full run) before the row counts as hung */
};

static const struct row rows[] = {
    {"pool_kill", "SIGKILL pool workers during maps", "kills", "items", row_pool_kill, 400},
    {"queue_kill", "SIGKILL queue producers/consumers", "kills", "msgs", row_queue_kill, 400},
    {"lock_kill", "SIGKILL lock holders", "kills", "acquires", row_lock_kill, 300},
    {"root_kill", "SIGKILL the family's root", "kills", "orphans", row_root_kill, 300},
    {"pool_stop", "SIGSTOP/SIGCONT pool workers", "stops", "items", row_pool_stop, 300},
    {"pool_oom", "task over RLIMIT_AS", "deaths", "items", row_pool_oom, 200},
    {"fd_limit", "RLIMIT_NOFILE exhaustion", "levels", "calls", row_fd_limit, 300},
    {"nproc_limit", "RLIMIT_NPROC exhaustion", "levels", "starts", row_nproc_limit, 300},
    {"processes_10k", "10,000 processes", "-", "procs", row_processes, 300},
    {"tasks_1m", "1,000,000 pool tasks", "-", "tasks", row_tasks, 300},
    {"queue_64", "64 processes on one queue", "procs", "msgs", row_queue_64, 300},
    {"waiter_kill", "SIGKILL sleeping waiters", "kills", "wake-ups", row_waiter_kill, 300},
};
enum { NROWS = sizeof rows / sizeof rows[0] };

/* /dev/shm's names now: a NUL-separated list (malloc'd), or NULL. */
static char *dev_shm_names(void)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return NULL;
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    struct dirent *e;
    while (buf && (e = readdir(d))) {
        size_t n = strlen(e->d_name) + 1;
        if (e->d_name[0] == '.')
            continue;
        if (len + n + 1 > cap) {
            char *nb = realloc(buf, cap = 2 * cap + n);
            if (!nb)
                free(buf);
            buf = nb;
            if (!buf)
                break;
        }
        memcpy(buf + len, e->d_name, n);
        len += n;
    }
    if (buf)
        buf[len] = '\0';
    closedir(d);
    return buf;
}

/* Names in /dev/shm now that were not in before. */
static int new_dev_shm(const char *before)
{
    char *now = dev_shm_names();
    int n = 0;
    for (const char *x = now; x && *x; x += strlen(x) + 1) {
        bool old = false;
        for (const char *y = before; y && *y && !old; y += strlen(y) + 1)
            old = strcmp(x, y) == 0;
        if (!old) {
            n++;
            fprintf(stderr, "torture: new in /dev/shm: %s\n", x);
        }
    }
    free(now);
    return n;
}

static unsigned row_seed(unsigned seed, const char *name)
{
    unsigned h = seed;
    for (const char *c = name; *c; c++)
        h = h * 31 + (unsigned char)*c;
    return h;
}

/* In the row's process: warm up, run, then look at what is left. */
static void run_row(const struct row *rw, unsigned seed)
{
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int fds = t_count_fds_after_a_pool();
    size_t usage = mp_shared_usage();
    rw->fn(seed);
    pid_t first = 0;
    R->left += t_await_no_children(3, &first);
    if (first) {
        pid_t kids[64];
        int n = t_children(kids, 64);
        for (int i = 0; i < n && i < 64; i++)
            kill(kids[i], SIGKILL);
        while (waitpid(-1, NULL, 0) > 0)
            ;
    }
    R->fds = t_count_fds() - fds;
    R->arena = (long long)mp_shared_usage() - (long long)usage;
    fflush(NULL);
    _exit(0); /* no atexit: mproc would join children */
}

static char *human(char *buf, size_t cap, long v)
{
    if (v >= 10000000)
        snprintf(buf, cap, "%.1fM", (double)v / 1e6);
    else if (v >= 100000)
        snprintf(buf, cap, "%ldk", v / 1000);
    else
        snprintf(buf, cap, "%ld", v);
    return buf;
}

static void print_table(FILE *f, const struct res *rs, const double *secs, const bool *ran,
                        unsigned seed, double total)
{
    fprintf(f, "mproc torture (%s), seed %u, %.0f s\n\n", shortrun ? "short" : "full", seed,
            total);
    fprintf(f, "| row | scenario | events | operations | failures reported | lost/torn/dup "
               "| procs left | extra fds | /dev/shm | arena delta (B) | s | verdict |\n");
    fprintf(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (int i = 0; i < NROWS; i++) {
        if (!ran[i])
            continue;
        const struct res *r = &rs[i];
        char ev[64], op[64], a[24], b[24];
        if (strcmp(rows[i].events, "-") == 0)
            snprintf(ev, sizeof ev, "-");
        else
            snprintf(ev, sizeof ev, "%s %s", human(a, sizeof a, r->events), rows[i].events);
        snprintf(op, sizeof op, "%s %s", human(b, sizeof b, r->ops), rows[i].ops);
        bool ok = !r->bad && r->left == 0 && r->fds == 0 && r->shm == 0 && r->arena == 0;
        if (r->skipped)
            fprintf(f, "| %d %s | %s | - | - | - | - | - | - | - | - | %.1f | %s |\n", i + 1,
                    rows[i].name, rows[i].what, secs[i], r->note);
        else
            fprintf(f, "| %d %s | %s | %s | %s | %ld | %ld/%ld/%ld | %ld | %ld | %ld | %lld | %.1f "
                       "| %s%s%s |\n",
                    i + 1, rows[i].name, rows[i].what, ev, op, r->failures, r->lost, r->torn,
                    r->dup, r->left, r->fds, r->shm, r->arena, secs[i], ok ? "ok" : "FAIL",
                    ok ? "" : ": ", ok ? "" : r->note);
    }
    fprintf(f, "\nNotes:\n\n");
    for (int i = 0; i < NROWS; i++)
        if (ran[i] && !rs[i].skipped && !rs[i].bad && rs[i].note[0])
            fprintf(f, "- %s: %s\n", rows[i].name, rs[i].note);
}

static bool wanted(const char *list, const char *name)
{
    if (!list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const char *only = NULL, *report = NULL;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    const char *e = getenv("MPROC_TORTURE_SHORT");
    shortrun = e && *e && strcmp(e, "0") != 0;
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n > 0)
        self_exe[n] = '\0';
    else
        snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--victim") == 0 && i + 1 < argc)
            return victim_main(atoi(argv[i + 1]));
        else if (strcmp(argv[i], "--short") == 0)
            shortrun = true;
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = (unsigned)strtoul(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--row") == 0 && i + 1 < argc)
            only = argv[++i];
        else if (strcmp(argv[i], "--report") == 0 && i + 1 < argc)
            report = argv[++i];
        else if (strcmp(argv[i], "--list") == 0) {
            for (int k = 0; k < NROWS; k++)
                printf("%-14s %s\n", rows[k].name, rows[k].what);
            return 0;
        } else {
            fprintf(stderr, "usage: %s [--short] [--seed N] [--row NAME[,NAME...]] "
                            "[--report FILE] [--list]\n", argv[0]);
            return 2;
        }
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    struct res *rs = mmap(NULL, sizeof(struct res) * NROWS, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rs == MAP_FAILED)
        return 2;
    memset(rs, 0, sizeof(struct res) * NROWS);
    double secs[NROWS] = {0};
    bool ran[NROWS] = {0};
    printf("mproc torture: %s run, seed %u (replay a row: %s --seed %u --row NAME%s)\n",
           shortrun ? "short" : "full", seed, argv[0], seed, shortrun ? " --short" : "");
    fflush(stdout);
    double t0 = t_now();
    int failed = 0;
    for (int i = 0; i < NROWS; i++) {
        if (!wanted(only, rows[i].name))
            continue;
        ran[i] = true;
        R = &rs[i];
        unsigned rseed = row_seed(seed, rows[i].name);
        char *shm0 = dev_shm_names();
        double start = t_now(), limit = rows[i].limit * t_scale();
        printf("row %d %s: %s (row seed %u)...\n", i + 1, rows[i].name, rows[i].what, rseed);
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0)
            run_row(&rows[i], rseed);
        int st = 0;
        bool hung = false;
        for (;;) {
            pid_t w = waitpid(pid, &st, WNOHANG);
            if (w == pid)
                break;
            if (t_now() - start > limit) {
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                hung = true;
                break;
            }
            sleep_us(20000);
        }
        secs[i] = t_now() - start;
        /* its orphans came to us: give them the row's 2 s, then count */
        double end = t_now() + 2;
        int alive;
        while ((alive = reap_all()) > 0 && t_now() < end)
            sleep_us(10000);
        if (alive > 0) {
            R->left += alive;
            pid_t kids[64];
            int k = t_children(kids, 64);
            for (int j = 0; j < k && j < 64; j++)
                kill(kids[j], SIGKILL);
            while (waitpid(-1, NULL, 0) > 0)
                ;
        }
        R->shm = new_dev_shm(shm0);
        free(shm0);
        if (hung) {
            R->bad = 1;
            snprintf(R->note, sizeof R->note, "hung: killed after %.0f s", limit);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            R->bad = 1;
            char why[80];
            if (WIFSIGNALED(st))
                snprintf(why, sizeof why, "the row's process died of signal %d%s", WTERMSIG(st),
                         R->note[0] ? "; " : "");
            else
                snprintf(why, sizeof why, "a check failed (exit %d, see above)%s",
                         WEXITSTATUS(st), R->note[0] ? "; " : "");
            memmove(R->note + strlen(why), R->note,
                    strnlen(R->note, sizeof R->note - strlen(why) - 1) + 1);
            memcpy(R->note, why, strlen(why));
            R->note[sizeof R->note - 1] = '\0';
        }
        bool ok = R->skipped || (!R->bad && R->left == 0 && R->fds == 0 && R->shm == 0 &&
                                 R->arena == 0);
        failed += !ok;
        printf("row %d %s: %s, %.1f s%s%s\n", i + 1, rows[i].name,
               R->skipped ? "skipped" : ok ? "ok" : "FAIL", secs[i], R->note[0] ? ": " : "",
               R->note);
        fflush(stdout);
    }
    double total = t_now() - t0;
    printf("\n");
    print_table(stdout, rs, secs, ran, seed, total);
    if (report) {
        FILE *f = fopen(report, "w");
        if (f) {
            print_table(f, rs, secs, ran, seed, total);
            fclose(f);
            printf("\n(written to %s)\n", report);
        }
    }
    printf("\n%s: %d row(s) failed\n", failed ? "FAIL" : "ok", failed);
    return failed != 0;
}
