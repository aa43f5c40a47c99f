/*
 * mproc_bench: what mproc costs, next to the raw system calls ("the floor")
 * that do the same work. `make bench` runs it through bench/run.py, which
 * adds Python's figures (bench/py_bench.py) and prints one table.
 *
 *   mproc_bench [--quick] [ROW_ID...]
 *
 * For each row it times the mproc way and the floor way in batches,
 * interleaved (mproc, floor, mproc, floor, ...) so that drift in the machine
 * hits both alike, and prints the median time per operation over the
 * repeats, in nanoseconds:
 *
 *   REPEATS\t<n>
 *   ROW\t<id>\t<description>\t<mproc_ns>\t<floor_ns>
 *
 * Each side's batch size is calibrated once so that a batch takes about
 * BATCH_MS. --quick runs fewer repeats of shorter batches (a smoke test).
 *
 * Adding a row:
 *   1. Write two bench_fn functions that do the same operation n times, one
 *      with mproc and one with plain system calls; each returns 0, or a
 *      negative MP_E* / -errno code on failure.
 *   2. Add one line to ROWS below: {id, description, mproc_fn, floor_fn}.
 *   3. If Python has the same operation, add it to bench/py_bench.py under
 *      the same id; otherwise the table shows "-" for Python.
 */
#include <mproc.h>

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Does one operation n times. 0 on success, a negative code on failure. */
typedef int (*bench_fn)(long n);

/* Keeps the compiler from dropping results nobody reads. */
static volatile long sink;

/* ---- process_start_join ------------------------------------------------ */

static int return_zero(void *arg)
{
    (void)arg;
    return 0;
}

static int mproc_start_join(long n)
{
    for (long i = 0; i < n; i++) {
        mp_process *p;
        int err = mp_process_new(&p, return_zero, NULL, NULL);
        if (err == 0 && (err = mp_process_start(p)) == 0)
            err = mp_process_join(p, MP_FOREVER);
        mp_process_free(p);
        if (err < 0)
            return err;
    }
    return 0;
}

static int floor_fork_wait(long n)
{
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return -errno;
        if (pid == 0)
            _exit(0);
        int status;
        while (waitpid(pid, &status, 0) < 0)
            if (errno != EINTR)
                return -errno;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return MP_ESTATE;
    }
    return 0;
}

/* ---- cpu_count ---------------------------------------------------------- */

static int mproc_cpu_count(long n)
{
    for (long i = 0; i < n; i++)
        sink += mp_cpu_count();
    return 0;
}

static int floor_sysconf(long n)
{
    for (long i = 0; i < n; i++)
        sink += sysconf(_SC_NPROCESSORS_ONLN);
    return 0;
}

/* ---- two processes -------------------------------------------------------- */

/* A zeroed MAP_SHARED page for the floors, made once. */
static void *shared_page(void)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Where the two processes of a two-process row run: wherever the scheduler
 * puts them, both on one CPU (the peer it waits for needs the CPU it runs
 * on: a busy machine, or more processes than cores), or on two CPUs. */
enum place { ANY_CPU, SAME_CPU, CROSS_CPU };
static enum place b_place = ANY_CPU;

/* Pins the calling process for place p as side 0 or 1; ANY_CPU gives it
 * back every CPU. 0, or -errno (fewer than 2 CPUs for CROSS_CPU: -ENODEV). */
static int place_side(enum place p, int side)
{
    static cpu_set_t all;
    static int have_all;
    if (!have_all) {
        if (sched_getaffinity(0, sizeof all, &all) < 0)
            return -errno;
        have_all = 1;
    }
    cpu_set_t set = all;
    if (p != ANY_CPU) {
        int cpus[2] = {-1, -1}, k = 0;
        for (int c = 0; c < CPU_SETSIZE && k < 2; c++)
            if (CPU_ISSET(c, &all))
                cpus[k++] = c;
        int want = p == SAME_CPU ? cpus[0] : cpus[side];
        if (want < 0)
            return -ENODEV;
        CPU_ZERO(&set);
        CPU_SET(want, &set);
    }
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

/* Runs body(0, n / 2) in a forked child and body(1, n - n / 2) here, both
 * starting once the child runs (each placed by b_place), then reaps the
 * child. The child leaves with _exit: no atexit handler runs. */
static int in_two_processes(int (*body)(int side, long n), long n)
{
    static _Atomic int *gate;
    if (!gate && !(gate = shared_page()))
        return MP_ENOMEM;
    atomic_store(gate, 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int perr = place_side(b_place, 0);
        atomic_store(gate, 1);
        _exit(perr == 0 && body(0, n / 2) == 0 ? 0 : 1);
    }
    while (!atomic_load(gate))
        sched_yield();
    int err = place_side(b_place, 1), status;
    if (err == 0)
        err = body(1, n - n / 2);
    place_side(ANY_CPU, 1);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    if (err == 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
        err = MP_ESTATE;
    return err;
}

/* ---- locks ---------------------------------------------------------------- */

static mp_lock *b_lock;
static long *b_counter;            /* in the arena, a cache line of its own */
static pthread_mutex_t *b_robust;  /* the floor: robust, process-shared */
static long *b_robust_counter;     /* the next cache line of the mutex's page */

static int mproc_lock_init(void)
{
    if (b_lock)
        return 0;
    if (!(b_counter = mp_shared_alloc(64)))
        return MP_ENOMEM;
    return mp_lock_new(&b_lock);
}

static int robust_init(void)
{
    if (b_robust)
        return 0;
    pthread_mutex_t *m = shared_page();
    if (!m)
        return MP_ENOMEM;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int err = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    if (err)
        return -err;
    b_robust_counter = (long *)((char *)m + 64);
    b_robust = m;
    return 0;
}

static int mproc_lock_uncontended(long n)
{
    int err = mproc_lock_init();
    for (long i = 0; i < n && !err; i++)
        if ((err = mp_lock_acquire(b_lock, MP_FOREVER)) == 0)
            err = mp_lock_release(b_lock);
    return err;
}

static int floor_robust_uncontended(long n)
{
    int err = robust_init();
    for (long i = 0; i < n && !err; i++)
        if ((err = -pthread_mutex_lock(b_robust)) == 0)
            err = -pthread_mutex_unlock(b_robust);
    return err;
}

static int mproc_increments(int side, long n)
{
    (void)side;
    for (long i = 0; i < n; i++) {
        int err = mp_lock_acquire(b_lock, MP_FOREVER);
        if (err)
            return err;
        ++*(volatile long *)b_counter;
        mp_lock_release(b_lock);
    }
    return 0;
}

static int robust_increments(int side, long n)
{
    (void)side;
    for (long i = 0; i < n; i++) {
        int err = pthread_mutex_lock(b_robust);
        if (err)
            return -err;
        ++*(volatile long *)b_robust_counter;
        pthread_mutex_unlock(b_robust);
    }
    return 0;
}

static int mproc_lock_contended(long n)
{
    int err = mproc_lock_init();
    long before = *b_counter;
    if (!err)
        err = in_two_processes(mproc_increments, n);
    return err ? err : *b_counter == before + n ? 0 : MP_ESTATE;
}

static int floor_robust_contended(long n)
{
    int err = robust_init();
    long before = *b_robust_counter;
    if (!err)
        err = in_two_processes(robust_increments, n);
    return err ? err : *b_robust_counter == before + n ? 0 : MP_ESTATE;
}

/* ---- event_pingpong ------------------------------------------------------- */

static mp_event *b_ping, *b_pong;
static _Atomic uint32_t *b_words; /* the floor's two futex words, shared */

/* side 1 serves (set ping, wait pong), side 0 answers; n round trips each. */
static int mproc_pingpong_side(int side, long n)
{
    mp_event *in = side ? b_pong : b_ping, *out = side ? b_ping : b_pong;
    for (long i = 0; i < n; i++) {
        int err = side ? mp_event_set(out) : 0;
        if (!err)
            err = mp_event_wait(in, MP_FOREVER);
        if (!err)
            err = mp_event_clear(in);
        if (!err && !side)
            err = mp_event_set(out);
        if (err)
            return err;
    }
    return 0;
}

static int mproc_pingpong(long n)
{
    if (!b_ping && (mp_event_new(&b_ping) || mp_event_new(&b_pong)))
        return MP_ENOMEM;
    return in_two_processes(mproc_pingpong_side, 2 * n); /* n per side */
}

static int mproc_pingpong_same(long n)
{
    b_place = SAME_CPU;
    int err = mproc_pingpong(n);
    b_place = ANY_CPU;
    return err;
}

static int mproc_pingpong_cross(long n)
{
    b_place = CROSS_CPU;
    int err = mproc_pingpong(n);
    b_place = ANY_CPU;
    return err;
}

static void futex_post(_Atomic uint32_t *w)
{
    atomic_store(w, 1);
    syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void futex_take(_Atomic uint32_t *w)
{
    while (atomic_load(w) == 0)
        syscall(SYS_futex, w, FUTEX_WAIT, 0, NULL, NULL, 0);
    atomic_store(w, 0);
}

static int floor_pingpong_side(int side, long n)
{
    _Atomic uint32_t *in = &b_words[side], *out = &b_words[!side];
    for (long i = 0; i < n; i++) {
        if (side)
            futex_post(out);
        futex_take(in);
        if (!side)
            futex_post(out);
    }
    return 0;
}

static int floor_pingpong(long n)
{
    if (!b_words && !(b_words = shared_page()))
        return MP_ENOMEM;
    return in_two_processes(floor_pingpong_side, 2 * n);
}

static int floor_pingpong_same(long n)
{
    b_place = SAME_CPU;
    int err = floor_pingpong(n);
    b_place = ANY_CPU;
    return err;
}

static int floor_pingpong_cross(long n)
{
    b_place = CROSS_CPU;
    int err = floor_pingpong(n);
    b_place = ANY_CPU;
    return err;
}

/* ---- shared_alloc_free ---------------------------------------------------- */

static int mproc_alloc_free(long n)
{
    for (long i = 0; i < n; i++) {
        void *p = mp_shared_alloc(64);
        if (!p)
            return MP_ENOMEM;
        sink += (long)(uintptr_t)p & 1;
        mp_shared_free(p);
    }
    return 0;
}

static int floor_malloc_free(long n)
{
    for (long i = 0; i < n; i++) {
        void *p = malloc(64);
        if (!p)
            return MP_ENOMEM;
        sink += (long)(uintptr_t)p & 1;
        free(p);
    }
    return 0;
}

/* Both processes allocate at once: time per pair overall. Perfect scaling on
 * two cores halves the one-process figure. */
static int mproc_alloc_free_side(int side, long n)
{
    (void)side;
    return mproc_alloc_free(n);
}

static int floor_malloc_free_side(int side, long n)
{
    (void)side;
    return floor_malloc_free(n);
}

static int mproc_alloc_free_2proc(long n) { return in_two_processes(mproc_alloc_free_side, n); }
static int floor_malloc_free_2proc(long n) { return in_two_processes(floor_malloc_free_side, n); }

/* ---- the table ---------------------------------------------------------- */

struct row {
    const char *id;          /* what run.py and py_bench.py join on */
    const char *description; /* one line for people */
    bench_fn mproc_fn;       /* the mproc way */
    bench_fn floor_fn;       /* the same work with raw system calls */
};

static const struct row ROWS[] = {
    {"process_start_join", "new + start + join + free a process that returns 0",
     mproc_start_join, floor_fork_wait},
    {"cpu_count", "number of online CPUs", mproc_cpu_count, floor_sysconf},
    {"lock_uncontended", "lock + unlock, no contention (floor: robust pshared mutex)",
     mproc_lock_uncontended, floor_robust_uncontended},
    {"lock_contended_2proc", "one locked increment, 2 processes contending (floor: robust mutex)",
     mproc_lock_contended, floor_robust_contended},
    {"event_pingpong", "round trip between 2 processes over 2 events (floor: raw futexes)",
     mproc_pingpong, floor_pingpong},
    {"event_pingpong_same_cpu", "the same, both processes pinned to one CPU",
     mproc_pingpong_same, floor_pingpong_same},
    {"event_pingpong_cross_cpu", "the same, the processes pinned to two CPUs",
     mproc_pingpong_cross, floor_pingpong_cross},
    {"shared_alloc_free", "mp_shared_alloc(64) + mp_shared_free (floor: malloc + free)",
     mproc_alloc_free, floor_malloc_free},
    {"shared_alloc_free_2proc", "the same, 2 processes at once: time per pair overall",
     mproc_alloc_free_2proc, floor_malloc_free_2proc},
};
#define NROWS (sizeof ROWS / sizeof ROWS[0])

/* ---- timing ------------------------------------------------------------- */

enum { REPEATS = 11, QUICK_REPEATS = 3 };
_Static_assert(QUICK_REPEATS <= REPEATS, "bench_row sizes its arrays by REPEATS");
#define BATCH_MS 30.0      /* target length of one batch */
#define QUICK_BATCH_MS 5.0 /* the same with --quick */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Runs one batch of n operations and returns how long it took in ns; on
 * failure says which row failed and exits. */
static double run_batch(const struct row *r, bench_fn fn, long n)
{
    double t0 = now_ns();
    int err = fn(n);
    double t = now_ns() - t0;
    if (err < 0) {
        fprintf(stderr, "mproc_bench: %s (%s): %s\n", r->id,
                fn == r->mproc_fn ? "mproc" : "floor", mp_strerror(err));
        exit(1);
    }
    return t;
}

/* The batch size that takes about target_ns: double n until a batch takes
 * an eighth of the target, then scale up. Also warms up caches and code. */
static long calibrate(const struct row *r, bench_fn fn, double target_ns)
{
    for (long n = 1;; n *= 2) {
        double t = run_batch(r, fn, n);
        if (t >= target_ns / 8 || n >= (1L << 40)) {
            double scaled = (double)n * target_ns / (t > 0 ? t : 1);
            return scaled < 1 ? 1 : (long)scaled;
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v in place and returns its median. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void bench_row(const struct row *r, int repeats, double batch_ms)
{
    long n_mproc = calibrate(r, r->mproc_fn, batch_ms * 1e6);
    long n_floor = calibrate(r, r->floor_fn, batch_ms * 1e6);
    double t_mproc[REPEATS], t_floor[REPEATS];
    for (int i = 0; i < repeats; i++) {
        t_mproc[i] = run_batch(r, r->mproc_fn, n_mproc) / (double)n_mproc;
        t_floor[i] = run_batch(r, r->floor_fn, n_floor) / (double)n_floor;
    }
    printf("ROW\t%s\t%s\t%.1f\t%.1f\n", r->id, r->description,
           median(t_mproc, repeats), median(t_floor, repeats));
    fflush(stdout);
}

static const struct row *find_row(const char *id)
{
    for (size_t i = 0; i < NROWS; i++)
        if (strcmp(ROWS[i].id, id) == 0)
            return &ROWS[i];
    return NULL;
}

int main(int argc, char **argv)
{
    int repeats = REPEATS, nids = 0;
    double batch_ms = BATCH_MS;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            repeats = QUICK_REPEATS;
            batch_ms = QUICK_BATCH_MS;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: %s [--quick] [ROW_ID...]\nrows:", argv[0]);
            for (size_t k = 0; k < NROWS; k++)
                fprintf(stderr, " %s", ROWS[k].id);
            fputc('\n', stderr);
            return 2;
        } else if (!find_row(argv[i])) {
            fprintf(stderr, "mproc_bench: no row '%s'\n", argv[i]);
            return 2;
        } else {
            nids++;
        }
    }

    printf("REPEATS\t%d\n", repeats);
    if (nids == 0)
        for (size_t k = 0; k < NROWS; k++)
            bench_row(&ROWS[k], repeats, batch_ms);
    else
        for (int i = 1; i < argc; i++)
            if (argv[i][0] != '-')
                bench_row(find_row(argv[i]), repeats, batch_ms);
    return 0;
}
