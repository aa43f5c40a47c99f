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
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
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

/* ---- n processes ---------------------------------------------------------- */

#define MAX_PROCS 8

/* Runs body(i, n) for i = 0..k-1 (k <= MAX_PROCS), wherever the scheduler
 * puts them: 0..k-2 in forked children, k-1 here once every child runs.
 * Each body gets the whole n and takes its share. Reaps the children; the
 * first failure wins, a child's code coming back through shared memory. A
 * body that fails must unblock the others (close its queue, shut its
 * socket down), or the reaping waits for them. */
static int in_processes(int (*body)(int i, long n), int k, long n)
{
    static struct {
        _Atomic int ready;
        _Atomic int err[MAX_PROCS];
    } *g;
    if (k < 1 || k > MAX_PROCS)
        return MP_EINVAL;
    if (!g && !(g = shared_page()))
        return MP_ENOMEM;
    atomic_store(&g->ready, 0);
    fflush(NULL);
    pid_t pid[MAX_PROCS];
    int err = 0, started = 0;
    for (; started < k - 1; started++) {
        atomic_store(&g->err[started], 0);
        pid_t p = fork();
        if (p < 0) {
            err = -errno;
            break;
        }
        if (p == 0) {
            atomic_fetch_add(&g->ready, 1);
            int e = body(started, n);
            atomic_store(&g->err[started], e);
            _exit(e == 0 ? 0 : 1);
        }
        pid[started] = p;
    }
    if (err) { /* the children started may wait for the missing ones */
        for (int i = 0; i < started; i++)
            kill(pid[i], SIGKILL);
    } else {
        while (atomic_load(&g->ready) < k - 1)
            sched_yield();
        err = body(k - 1, n);
    }
    for (int i = 0; i < started; i++) {
        int status;
        while (waitpid(pid[i], &status, 0) < 0)
            if (errno != EINTR)
                return -errno;
        if (err == 0 && (err = atomic_load(&g->err[i])) == 0 &&
            (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
            err = MP_ESTATE;
    }
    return err;
}

/* ---- messages ------------------------------------------------------------- */

#define MSG_MAX ((size_t)1 << 20) /* the largest message of a row: 1 MiB */

/* A source and a destination buffer of MSG_MAX bytes for the rows with one
 * sender and one receiver, made once, MAP_SHARED so that no batch pays
 * copy-on-write faults after its fork. */
static char *b_src, *b_dst;

static int msg_buffers(void)
{
    if (b_src)
        return 0;
    char *p = mmap(NULL, 2 * MSG_MAX, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    memset(p, 0x5a, 2 * MSG_MAX);
    b_dst = p + MSG_MAX;
    b_src = p;
    return 0;
}

/* Marks a message of size bytes (>= 8) as number v: its first and its last
 * 8 bytes, so that a message cut short or torn does not pass stamped. */
static inline void stamp(char *m, size_t size, int64_t v)
{
    memcpy(m, &v, 8);
    memcpy(m + size - 8, &v, 8);
}

static inline int64_t stamp_of(const char *m, size_t size)
{
    int64_t a, b;
    memcpy(&a, m, 8);
    memcpy(&b, m + size - 8, 8);
    return a == b ? a : INT64_MIN;
}

/* ---- queues: mproc -------------------------------------------------------- */

static mp_queue *b_queue; /* a default queue (1 MiB buffer), made once, shared by the queue rows */
static size_t b_msg;      /* the message size of the 1 -> 1 row being run */
static _Atomic long *b_taken; /* 2 -> 2 rows: messages the consumers took (stop marks aside) */

static int queue_init(void)
{
    int err = msg_buffers();
    if (!err && !b_taken && !(b_taken = shared_page()))
        err = MP_ENOMEM;
    if (!err && !b_queue)
        err = mp_queue_new(&b_queue, NULL);
    return err;
}

/* side 0 puts n messages of b_msg bytes, side 1 gets them and checks their
 * order. A side that fails closes the queue, so the other fails too. */
static int mproc_queue_side(int side, long n)
{
    size_t size = b_msg;
    int err = 0;
    for (long i = 0; i < n && !err; i++) {
        if (side == 0) {
            stamp(b_src, size, i);
            err = mp_queue_put(b_queue, b_src, size, MP_FOREVER);
        } else {
            ssize_t r = mp_queue_get(b_queue, b_dst, size, MP_FOREVER);
            err = r < 0 ? (int)r : (size_t)r != size || stamp_of(b_dst, size) != i ? MP_ESTATE : 0;
        }
    }
    if (err)
        mp_queue_close(b_queue);
    return err;
}

/* The same for an int64 by value, with MP_PUT / MP_GET. */
static int mproc_queue8_side(int side, long n)
{
    int err = 0;
    for (int64_t i = 0; i < n && !err; i++) {
        if (side == 0) {
            err = MP_PUT(b_queue, i);
        } else {
            int64_t v;
            ssize_t r = MP_GET(b_queue, v);
            err = r < 0 ? (int)r : r != sizeof v || v != i ? MP_ESTATE : 0;
        }
    }
    if (err)
        mp_queue_close(b_queue);
    return err;
}

static int mproc_queue_1to1(size_t size, enum place p, long n)
{
    int err = queue_init();
    if (err)
        return err;
    b_msg = size;
    b_place = p;
    err = in_two_processes(size == 8 ? mproc_queue8_side : mproc_queue_side, 2 * n);
    b_place = ANY_CPU;
    return err;
}

static int mproc_queue_64(long n) { return mproc_queue_1to1(64, ANY_CPU, n); }
static int mproc_queue_64_same(long n) { return mproc_queue_1to1(64, SAME_CPU, n); }
static int mproc_queue_64_cross(long n) { return mproc_queue_1to1(64, CROSS_CPU, n); }
static int mproc_queue_8(long n) { return mproc_queue_1to1(8, ANY_CPU, n); }
static int mproc_queue_4k(long n) { return mproc_queue_1to1(4096, ANY_CPU, n); }
static int mproc_queue_1m(long n) { return mproc_queue_1to1(MSG_MAX, ANY_CPU, n); }

/* 2 -> 2: processes 0 and 1 put n / 2 and n - n / 2 messages of 64 bytes,
 * then a stop mark (stamp -1); processes 2 and 3 get until a stop mark, so
 * each consumer takes exactly one and every message is taken. */
static int mproc_queue22_side(int i, long n)
{
    char m[64];
    int err = 0;
    if (i < 2) {
        long count = i == 0 ? n / 2 : n - n / 2;
        for (long k = 0; k <= count && !err; k++) {
            stamp(m, sizeof m, k < count ? k : -1);
            err = mp_queue_put(b_queue, m, sizeof m, MP_FOREVER);
        }
    } else {
        long got = 0;
        for (;;) {
            ssize_t r = mp_queue_get(b_queue, m, sizeof m, MP_FOREVER);
            if (r != sizeof m || stamp_of(m, sizeof m) < -1) {
                err = r < 0 ? (int)r : MP_ESTATE;
                break;
            }
            if (stamp_of(m, sizeof m) == -1)
                break;
            got++;
        }
        atomic_fetch_add(b_taken, got);
    }
    if (err)
        mp_queue_close(b_queue);
    return err;
}

static int mproc_queue_2to2(long n)
{
    int err = queue_init();
    if (err)
        return err;
    atomic_store(b_taken, 0);
    err = in_processes(mproc_queue22_side, 4, n);
    return err ? err : atomic_load(b_taken) == n ? 0 : MP_ESTATE;
}

/* ---- queues: the floor ---------------------------------------------------- */

/* A minimal single-producer single-consumer ring of fixed-size slots in a
 * MAP_SHARED mapping: the producer copies a message into slot tail and
 * publishes it by moving tail, the consumer copies slot head out and frees
 * it by moving head. A side that must wait spins RING_SPIN pauses (a peer
 * on another CPU answers within them), then sleeps on the futex of the word
 * it waits for, having raised its flag; the other side wakes it after a move
 * if the flag is up (the move and the flag's load are sequentially
 * consistent, as are the flag's store and the sleeper's last look). For the
 * 2 -> 2 row each side takes a robust process-shared mutex around its
 * operation (the classic two-lock queue). */
#ifndef RING_SPIN
#define RING_SPIN 16 /* pauses (about 35 ns each on the reference machine), */
#endif
#ifndef RING_YIELDS
#define RING_YIELDS 1024 /* then sched_yields (the peer may need our CPU), then sleep */
#endif
#define RING_BYTES (4 * MSG_MAX)

struct ring {
    _Alignas(64) _Atomic uint32_t tail; /* slots ever filled (mod 2^32); the consumer sleeps on it */
    _Atomic uint32_t cwait;             /* the consumer may be asleep */
    _Alignas(64) _Atomic uint32_t head; /* slots ever emptied; the producer sleeps on it */
    _Atomic uint32_t pwait;             /* the producer may be asleep */
    _Alignas(64) uint32_t nslots;       /* a power of two */
    _Atomic uint32_t aborted;           /* a side failed: everyone stops */
    pthread_mutex_t pmu, cmu;           /* 2 -> 2: the producers' and the consumers' lock */
    _Alignas(64) char slots[];
};

static struct ring *b_ring; /* made once; emptied and sized before each batch */

static void futex_wake_all(_Atomic uint32_t *w)
{
    syscall(SYS_futex, w, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static int init_robust(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int err = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -err;
}

/* Empties the ring and gives it slots of size bytes: as many as fit in
 * bytes (a power of two of them). */
static int ring_reset(size_t size, size_t bytes)
{
    int err = msg_buffers();
    if (err)
        return err;
    if (!b_ring) {
        void *p = mmap(NULL, sizeof(struct ring) + RING_BYTES, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -errno;
        struct ring *r = p;
        if ((err = init_robust(&r->pmu)) || (err = init_robust(&r->cmu)))
            return err;
        b_ring = r;
    }
    b_ring->tail = b_ring->head = b_ring->cwait = b_ring->pwait = b_ring->aborted = 0;
    b_ring->nslots = (uint32_t)(bytes / size);
    return 0;
}

/* Makes every side stop: the waits see aborted. */
static void ring_abort(struct ring *r)
{
    atomic_store(&r->aborted, 1);
    futex_wake_all(&r->tail);
    futex_wake_all(&r->head);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Waits until *w moves from v. 0, or MP_ESTATE once aborted. */
static int ring_wait(struct ring *r, _Atomic uint32_t *w, uint32_t v, _Atomic uint32_t *flag)
{
    for (int i = 0; i < RING_SPIN + RING_YIELDS; i++) {
        if (atomic_load_explicit(w, memory_order_acquire) != v)
            return 0;
        if (i < RING_SPIN)
            cpu_relax();
        else
            sched_yield();
    }
    atomic_store(flag, 1);
    while (atomic_load(w) == v) {
        if (atomic_load(&r->aborted))
            return MP_ESTATE;
        syscall(SYS_futex, w, FUTEX_WAIT, v, NULL, NULL, 0);
    }
    atomic_store_explicit(flag, 0, memory_order_relaxed);
    return 0;
}

/* Each side keeps the other's index as it last read it (*seen), and reads
 * the shared one again only when that says full (put) or empty (get). A
 * stale value is safe: the other's index only grows, and in the 2 -> 2 row
 * a consumer's seen tail may fall behind head (hence the signed test). */
static inline __attribute__((always_inline)) int ring_put(struct ring *r, uint32_t *seen,
                                                          const void *m, size_t size)
{
    uint32_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    while (t - *seen >= r->nslots) {
        uint32_t h = atomic_load_explicit(&r->head, memory_order_acquire);
        if (t - h < r->nslots) {
            *seen = h;
            break;
        }
        int err = ring_wait(r, &r->head, h, &r->pwait);
        if (err)
            return err;
    }
    memcpy(r->slots + (size_t)(t & (r->nslots - 1)) * size, m, size);
    atomic_store(&r->tail, t + 1);
    if (atomic_load(&r->cwait))
        syscall(SYS_futex, &r->tail, FUTEX_WAKE, 1, NULL, NULL, 0);
    return 0;
}

static inline __attribute__((always_inline)) int ring_get(struct ring *r, uint32_t *seen,
                                                          void *m, size_t size)
{
    uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    while ((int32_t)(*seen - h) <= 0) {
        uint32_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (t != h) {
            *seen = t;
            break;
        }
        int err = ring_wait(r, &r->tail, t, &r->cwait);
        if (err)
            return err;
    }
    memcpy(m, r->slots + (size_t)(h & (r->nslots - 1)) * size, size);
    atomic_store(&r->head, h + 1);
    if (atomic_load(&r->pwait))
        syscall(SYS_futex, &r->head, FUTEX_WAKE, 1, NULL, NULL, 0);
    return 0;
}

/* The floor of mproc_queue_side, for a message size known here. */
static inline __attribute__((always_inline)) int floor_queue_body(int side, long n, size_t size)
{
    struct ring *r = b_ring;
    uint32_t seen = 0; /* the other side's index, as last read */
    int err = 0;
    for (long i = 0; i < n && !err; i++) {
        if (side == 0) {
            stamp(b_src, size, i);
            err = ring_put(r, &seen, b_src, size);
        } else if ((err = ring_get(r, &seen, b_dst, size)) == 0 && stamp_of(b_dst, size) != i) {
            err = MP_ESTATE;
        }
    }
    if (err)
        ring_abort(r);
    return err;
}

static int floor_queue8_side(int side, long n)
{
    struct ring *r = b_ring;
    uint32_t seen = 0; /* the other side's index, as last read */
    int err = 0;
    for (int64_t i = 0; i < n && !err; i++) {
        int64_t v;
        if (side == 0)
            err = ring_put(r, &seen, &i, sizeof i);
        else if ((err = ring_get(r, &seen, &v, sizeof v)) == 0 && v != i)
            err = MP_ESTATE;
    }
    if (err)
        ring_abort(r);
    return err;
}

static int floor_queue64_side(int side, long n) { return floor_queue_body(side, n, 64); }
static int floor_queue4k_side(int side, long n) { return floor_queue_body(side, n, 4096); }
static int floor_queue1m_side(int side, long n) { return floor_queue_body(side, n, MSG_MAX); }

/* Slots of size bytes in a 1 MiB ring (mproc's default buffer), or 4 slots
 * for 1 MiB messages. */
static int floor_queue_1to1(size_t size, int (*side)(int, long), enum place p, long n)
{
    int err = ring_reset(size, size == MSG_MAX ? 4 * MSG_MAX : MSG_MAX);
    if (err)
        return err;
    b_place = p;
    err = in_two_processes(side, 2 * n);
    b_place = ANY_CPU;
    return err;
}

static int floor_queue_64(long n) { return floor_queue_1to1(64, floor_queue64_side, ANY_CPU, n); }
static int floor_queue_64_same(long n) { return floor_queue_1to1(64, floor_queue64_side, SAME_CPU, n); }
static int floor_queue_64_cross(long n) { return floor_queue_1to1(64, floor_queue64_side, CROSS_CPU, n); }
static int floor_queue_8(long n) { return floor_queue_1to1(8, floor_queue8_side, ANY_CPU, n); }
static int floor_queue_4k(long n) { return floor_queue_1to1(4096, floor_queue4k_side, ANY_CPU, n); }
static int floor_queue_1m(long n) { return floor_queue_1to1(MSG_MAX, floor_queue1m_side, ANY_CPU, n); }

/* pthread_mutex_lock on a robust mutex: a dead holder's lock is taken and
 * made consistent (no one dies here; this only keeps the floor honest). */
static int robust_lock(pthread_mutex_t *m)
{
    int e = pthread_mutex_lock(m);
    if (e == EOWNERDEAD)
        e = pthread_mutex_consistent(m);
    return -e;
}

/* The floor of mproc_queue22_side. */
static int floor_queue22_side(int i, long n)
{
    struct ring *r = b_ring;
    uint32_t seen = 0; /* the other side's index, as last read */
    char m[64];
    int err = 0;
    if (i < 2) {
        long count = i == 0 ? n / 2 : n - n / 2;
        for (long k = 0; k <= count && !err; k++) {
            stamp(m, sizeof m, k < count ? k : -1);
            if ((err = robust_lock(&r->pmu)) == 0) {
                err = ring_put(r, &seen, m, sizeof m);
                pthread_mutex_unlock(&r->pmu);
            }
        }
    } else {
        long got = 0;
        for (;;) {
            if ((err = robust_lock(&r->cmu)) == 0) {
                err = ring_get(r, &seen, m, sizeof m);
                pthread_mutex_unlock(&r->cmu);
            }
            if (!err && stamp_of(m, sizeof m) < -1)
                err = MP_ESTATE;
            if (err || stamp_of(m, sizeof m) == -1)
                break;
            got++;
        }
        atomic_fetch_add(b_taken, got);
    }
    if (err)
        ring_abort(r);
    return err;
}

static int floor_queue_2to2(long n)
{
    int err = queue_init();
    if (!err)
        err = ring_reset(64, MSG_MAX);
    if (err)
        return err;
    atomic_store(b_taken, 0);
    err = in_processes(floor_queue22_side, 4, n);
    return err ? err : atomic_load(b_taken) == n ? 0 : MP_ESTATE;
}

/* ---- pipes ---------------------------------------------------------------- */

static mp_conn *b_conn[2]; /* a duplex mp_pipe, made once: side s uses b_conn[s] */
static int b_sock[2] = {-1, -1}; /* the floor: a socketpair, made once; side s uses b_sock[s] */

static int pipe_init(void)
{
    int err = msg_buffers();
    if (!err && !b_conn[0])
        err = mp_pipe(&b_conn[0], &b_conn[1], true);
    return err;
}

static int sock_init(void)
{
    int err = msg_buffers();
    if (!err && b_sock[0] < 0 && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b_sock) < 0)
        err = -errno;
    return err;
}

/* Stops the peer of a side that failed: both directions of the pair end. */
static void sock_break(int fd) { shutdown(fd, SHUT_RDWR); }

/* side 1 sends a 64-byte message and waits for the answer, side 0 answers
 * with the message it got; n round trips each. */
static int mproc_pipe_pp_side(int side, long n)
{
    mp_conn *c = b_conn[side];
    char m[64];
    int err = 0;
    for (long i = 0; i < n && !err; i++) {
        if (side == 1) {
            stamp(m, sizeof m, i);
            if ((err = mp_conn_send(c, m, sizeof m)) != 0)
                break;
        }
        ssize_t r = mp_conn_recv(c, m, sizeof m, MP_FOREVER);
        err = r < 0 ? (int)r : r != sizeof m || stamp_of(m, sizeof m) != i ? MP_ESTATE : 0;
        if (!err && side == 0)
            err = mp_conn_send(c, m, sizeof m);
    }
    if (err)
        sock_break(mp_conn_fileno(c));
    return err;
}

static int send_all(int fd, const void *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t m = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (m < 0 && errno != EINTR)
            return -errno;
        done += m > 0 ? (size_t)m : 0;
    }
    return 0;
}

static int recv_all(int fd, void *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t m = recv(fd, (char *)buf + done, len - done, MSG_WAITALL);
        if (m == 0)
            return MP_ECLOSED;
        if (m < 0 && errno != EINTR)
            return -errno;
        done += m > 0 ? (size_t)m : 0;
    }
    return 0;
}

static int floor_pipe_pp_side(int side, long n)
{
    int fd = b_sock[side];
    char m[64];
    int err = 0;
    for (long i = 0; i < n && !err; i++) {
        if (side == 1) {
            stamp(m, sizeof m, i);
            if ((err = send_all(fd, m, sizeof m)) != 0)
                break;
        }
        if ((err = recv_all(fd, m, sizeof m)) == 0 && stamp_of(m, sizeof m) != i)
            err = MP_ESTATE;
        if (!err && side == 0)
            err = send_all(fd, m, sizeof m);
    }
    if (err)
        sock_break(fd);
    return err;
}

static int mproc_pipe_pp_at(enum place p, long n)
{
    int err = pipe_init();
    if (err)
        return err;
    b_place = p;
    err = in_two_processes(mproc_pipe_pp_side, 2 * n);
    b_place = ANY_CPU;
    return err;
}

static int floor_pipe_pp_at(enum place p, long n)
{
    int err = sock_init();
    if (err)
        return err;
    b_place = p;
    err = in_two_processes(floor_pipe_pp_side, 2 * n);
    b_place = ANY_CPU;
    return err;
}

static int mproc_pipe_pp(long n) { return mproc_pipe_pp_at(ANY_CPU, n); }
static int mproc_pipe_pp_same(long n) { return mproc_pipe_pp_at(SAME_CPU, n); }
static int mproc_pipe_pp_cross(long n) { return mproc_pipe_pp_at(CROSS_CPU, n); }
static int floor_pipe_pp(long n) { return floor_pipe_pp_at(ANY_CPU, n); }
static int floor_pipe_pp_same(long n) { return floor_pipe_pp_at(SAME_CPU, n); }
static int floor_pipe_pp_cross(long n) { return floor_pipe_pp_at(CROSS_CPU, n); }

/* side 0 sends n messages of 1 MiB, side 1 receives them and checks their
 * order. */
static int mproc_pipe_stream_side(int side, long n)
{
    mp_conn *c = b_conn[side];
    int err = 0;
    for (long i = 0; i < n && !err; i++) {
        if (side == 0) {
            stamp(b_src, MSG_MAX, i);
            err = mp_conn_send(c, b_src, MSG_MAX);
        } else {
            ssize_t r = mp_conn_recv(c, b_dst, MSG_MAX, MP_FOREVER);
            err = r < 0 ? (int)r : (size_t)r != MSG_MAX || stamp_of(b_dst, MSG_MAX) != i ? MP_ESTATE : 0;
        }
    }
    if (err)
        sock_break(mp_conn_fileno(c));
    return err;
}

/* The floor: an 8-byte length, then the payload, in one sendmsg where the
 * socket takes it; the receiver reads the length, then the payload. */
static int floor_pipe_stream_side(int side, long n)
{
    int fd = b_sock[side], err = 0;
    for (long i = 0; i < n && !err; i++) {
        uint64_t len = MSG_MAX;
        if (side == 0) {
            stamp(b_src, MSG_MAX, i);
            struct iovec iov[2] = {{&len, sizeof len}, {b_src, MSG_MAX}};
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
            while (mh.msg_iovlen && !err) {
                ssize_t m = sendmsg(fd, &mh, MSG_NOSIGNAL);
                if (m < 0) {
                    err = errno == EINTR ? 0 : -errno;
                    continue;
                }
                for (size_t k = (size_t)m; k;) { /* past what went out */
                    size_t step = k < mh.msg_iov->iov_len ? k : mh.msg_iov->iov_len;
                    mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + step;
                    mh.msg_iov->iov_len -= step;
                    k -= step;
                    if (mh.msg_iov->iov_len == 0) {
                        mh.msg_iov++;
                        mh.msg_iovlen--;
                    }
                }
            }
        } else if ((err = recv_all(fd, &len, sizeof len)) == 0) {
            if (len != MSG_MAX)
                err = MP_ESTATE;
            else if ((err = recv_all(fd, b_dst, MSG_MAX)) == 0 && stamp_of(b_dst, MSG_MAX) != i)
                err = MP_ESTATE;
        }
    }
    if (err)
        sock_break(fd);
    return err;
}

static int mproc_pipe_stream(long n)
{
    int err = pipe_init();
    return err ? err : in_two_processes(mproc_pipe_stream_side, 2 * n);
}

static int floor_pipe_stream(long n)
{
    int err = sock_init();
    return err ? err : in_two_processes(floor_pipe_stream_side, 2 * n);
}

/* ---- pools ---------------------------------------------------------------- */

/* The pool rows time mp_pool_* next to a hand-written pool, "the team":
 * processes forked once and kept (as a pool's workers are) that sleep on a
 * futex until a job is posted, claim its items in chunks through an atomic
 * index in a MAP_SHARED page, and report the end of the job through an
 * atomic count that the caller sleeps on (the last worker through wakes
 * it). So every call pays one dispatch and one completion on both sides;
 * the team has no per-item function call (its loops are inline), no copies
 * and no crash handling. Pools and teams are made on first use, kept for the
 * whole run (idle, they sleep) and freed at exit. Every call checks its
 * results, so a broken pool fails its row instead of printing a figure.
 *
 * The map rows take n as the number of items (up to SQ_ITEMS or CPU_ITEMS a
 * call, more calls for a larger n), so their figures are per item. */

#define SQ_ITEMS 10000000L /* the most items of one map call in the square rows */
#define SQ_CHUNK 65536     /* items a team worker claims at once there */
#define CPU_ITEMS 200      /* the most items of one map call in the 1 ms rows */
#define SKEW_ITEMS 1000    /* the skewed row: items of ~10 us, */
#define SKEW_SLOW 900      /* then from this one on, 100 times slower (~1 ms) */
#define BULK_MAX 100000    /* the most apply_async results outstanding at once */
#define TEAM_MAX 64        /* the most processes of a team */
#define POOL_MAX 1024      /* the most workers of a pool (mp_pool_new's limit) */

static double now_ns(void);

/* The task of the square rows: *out = x * x (in[i] = i, so out[i] = i * i). */
static int square_task(const void *in, void *out, void *ctx)
{
    (void)ctx;
    int64_t x = *(const int64_t *)in;
    *(int64_t *)out = x * x;
    return 0;
}

/* About 1 ms of CPU for iters steps (see busy_init): an LCG, whose every
 * step needs the last; the empty asm keeps the compiler from folding or
 * dropping the loop. */
static uint64_t busy(uint64_t x, uint64_t iters)
{
    for (uint64_t i = 0; i < iters; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static uint64_t *b_iters;               /* in the arena: busy() steps of about 1 ms here */
static int64_t b_cpu_expect[CPU_ITEMS]; /* busy(i, *b_iters): what item i must give */

/* The task of the 1 ms rows: ctx points to the step count (arena memory, so
 * that workers started before it was measured see it too). */
static int cpu_task(const void *in, void *out, void *ctx)
{
    *(int64_t *)out = (int64_t)busy((uint64_t)*(const int64_t *)in, *(const uint64_t *)ctx);
    return 0;
}

/* Measures once how many busy() steps take 1 ms on this machine (the
 * fastest of 5 runs, scaled, three rounds), and the items' results. */
static int busy_init(void)
{
    if (b_iters)
        return 0;
    uint64_t *it = mp_shared_alloc(sizeof *it);
    if (!it)
        return MP_ENOMEM;
    uint64_t iters = 1 << 16;
    for (int round = 0; round < 3; round++) {
        double best = 1e18;
        for (int r = 0; r < 5; r++) {
            double t0 = now_ns();
            sink += (long)busy((uint64_t)r, iters);
            double t = now_ns() - t0;
            best = t < best ? t : best;
        }
        double scaled = (double)iters * 1e6 / (best > 1 ? best : 1);
        iters = scaled < 1 ? 1 : (uint64_t)scaled;
    }
    *it = iters;
    for (int i = 0; i < CPU_ITEMS; i++)
        b_cpu_expect[i] = (int64_t)busy((uint64_t)i, iters);
    b_iters = it;
    return 0;
}

/* The items of the map rows, in[i] = i, and room for their results:
 * SQ_ITEMS int64s each, made once. */
static int64_t *b_sq_in, *b_sq_out; /* in the arena (mp_shared_calloc) */
static int64_t *b_pv_in, *b_pv_out; /* private: the pool copies them */
static int64_t *b_fl_in, *b_fl_out; /* the team's: MAP_SHARED, made before it forks */

static void iota(int64_t *p)
{
    for (long i = 0; i < SQ_ITEMS; i++)
        p[i] = i;
}

static int sq_arena_init(void)
{
    if (b_sq_in)
        return 0;
    int64_t *in = mp_shared_calloc(SQ_ITEMS, sizeof *in);
    int64_t *out = mp_shared_calloc(SQ_ITEMS, sizeof *out);
    if (!in || !out) {
        mp_shared_free(in);
        mp_shared_free(out);
        return MP_ENOMEM;
    }
    iota(in);
    b_sq_out = out;
    b_sq_in = in;
    return 0;
}

/* Two SQ_ITEMS arrays of int64 in one mapping: in = 0, 1, 2..., out = 0.
 *
 * Private (MAP_PRIVATE, as a large malloc gets), marked MADV_DONTFORK: its
 * 160 MB would otherwise make every later fork of the run (the pool and
 * floor rows that fork) copy their page tables, and then cost this process
 * a fault per page at its next write. The pool must not touch it from its
 * workers anyway: it copies such inputs and outputs in the caller. Shared
 * (MAP_SHARED): the floor's, seen by its forked team. */
static int sq_mapped_init(int64_t **in, int64_t **out, int share)
{
    if (*in)
        return 0;
    size_t bytes = SQ_ITEMS * sizeof(int64_t);
    char *p = mmap(NULL, 2 * bytes, PROT_READ | PROT_WRITE, share | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    if (share == MAP_PRIVATE)
        madvise(p, 2 * bytes, MADV_DONTFORK);
    iota((int64_t *)p);
    memset(p + bytes, 0, bytes);
    *out = (int64_t *)(p + bytes);
    *in = (int64_t *)p;
    return 0;
}

static int sq_private_init(void) { return sq_mapped_init(&b_pv_in, &b_pv_out, MAP_PRIVATE); }
static int sq_floor_init(void) { return sq_mapped_init(&b_fl_in, &b_fl_out, MAP_SHARED); }

/* Checking a k-item square call: before it, a few outputs (first, last,
 * evenly spread, and one that moves from call to call) are set to -1, and
 * after it they must hold i * i. */
#define NSAMPLES 9

static void square_mark(int64_t *out, long k, long idx[NSAMPLES])
{
    static unsigned long turn;
    for (int j = 0; j < NSAMPLES - 1; j++)
        idx[j] = (k - 1) * j / (NSAMPLES - 2);
    idx[NSAMPLES - 1] = (long)((turn++ * 2654435761u) % (unsigned long)k);
    for (int j = 0; j < NSAMPLES; j++)
        out[idx[j]] = -1;
}

static int square_check(const int64_t *out, const long idx[NSAMPLES])
{
    for (int j = 0; j < NSAMPLES; j++)
        if (out[idx[j]] != (int64_t)idx[j] * idx[j])
            return MP_ESTATE;
    return 0;
}

/* ---- pools: the team (the floor) ----------------------------------------- */

struct team_ctl {
    _Alignas(64) _Atomic uint32_t gen;  /* jobs posted so far; idle workers sleep on it */
    int cpu;                            /* the job: busy() items (1), squares (0), skewed (2) */
    long split[TEAM_MAX + 1];           /* skewed: process j runs [split[j], split[j + 1]) */
    const int64_t *in;                  /* items [0, n), in chunks of chunk */
    int64_t *out;
    long n, chunk;
    uint64_t iters;                     /* busy() steps per item */
    _Alignas(64) _Atomic long next;     /* the next chunk to claim */
    _Alignas(64) _Atomic uint32_t done; /* workers through with the job; the caller sleeps on it */
};
_Static_assert(sizeof(struct team_ctl) <= 4096, "a team's control fits in a shared_page");

struct team {
    struct team_ctl *c; /* NULL until started */
    int k;              /* processes */
    pid_t pid[TEAM_MAX];
};

static struct team b_team2;    /* 2 processes: the square, rtt-less and bulk rows */
static struct team b_team_cpu; /* one process per CPU: the 1 ms rows */

/* The floor runs the same task as the pool, through a pointer, as any pool
 * of user functions must: the rows then measure what the pool adds to the
 * work. (Written inline, the compiler vectorises x * x to about 0.4 ns an
 * item on 2 CPUs here: what no per-item function call can reach.) */
static int (*volatile floor_task)(const void *, void *, void *) = square_task;

static void square_items(const int64_t *restrict in, int64_t *restrict out, long first, long end)
{
    int (*fn)(const void *, void *, void *) = floor_task;
    for (long i = first; i < end; i++)
        fn(&in[i], &out[i], NULL);
}

/* A team process: waits for a job, claims chunks until none is left,
 * counts itself done (waking the caller if it is the last), again. */
static uint64_t skew_iters(long i, uint64_t heavy) { return i >= SKEW_SLOW ? heavy : heavy / 100; }

static void team_worker(struct team_ctl *c, int k, int me)
{
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        while ((g = atomic_load(&c->gen)) == seen)
            syscall(SYS_futex, &c->gen, FUTEX_WAIT, seen, NULL, NULL, 0);
        seen = g;
        const int64_t *in = c->in;
        int64_t *out = c->out;
        long n = c->n, chunk = c->chunk;
        if (c->cpu == 2) /* a static split: no claims at all */
            for (long i = c->split[me]; i < c->split[me + 1]; i++)
                out[i] = (int64_t)busy((uint64_t)in[i], skew_iters(i, c->iters));
        for (long i; c->cpu != 2 && (i = atomic_fetch_add(&c->next, 1) * chunk) < n;) {
            long end = n - i < chunk ? n : i + chunk;
            if (c->cpu)
                for (; i < end; i++)
                    out[i] = (int64_t)busy((uint64_t)in[i], c->iters);
            else
                square_items(in, out, i, end);
        }
        if (atomic_fetch_add(&c->done, 1) + 1 == (uint32_t)k)
            syscall(SYS_futex, &c->done, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
}

/* Kills the team's processes (by pid) and reaps them. */
static void team_stop(struct team *t)
{
    for (int i = 0; i < t->k; i++) {
        kill(t->pid[i], SIGKILL);
        while (waitpid(t->pid[i], NULL, 0) < 0 && errno == EINTR)
            ;
    }
    t->k = 0;
    if (t->c)
        munmap(t->c, 4096);
    t->c = NULL;
}

static mp_pool *b_pool2;     /* 2 workers: the square, rtt and bulk rows */
static mp_pool *b_pool_cpu;  /* one worker per CPU: pool_map_cpu_1ms */
static mp_pool *b_pool_over; /* four workers per CPU: pool_map_cpu_1ms_oversub4x */
static mp_pool *b_pool_same; /* 2 workers pinned to one CPU: pool_apply_rtt_same_cpu */
static pid_t b_main_pid;     /* the bench process: the one that cleans up at exit */

static void pool_rows_atexit(void)
{
    if (getpid() != b_main_pid)
        return;
    mp_pool **pools[] = {&b_pool2, &b_pool_cpu, &b_pool_over, &b_pool_same};
    for (size_t i = 0; i < sizeof pools / sizeof pools[0]; i++) {
        mp_pool_free(*pools[i]);
        *pools[i] = NULL;
    }
    team_stop(&b_team2);
    team_stop(&b_team_cpu);
}

static void cleanup_at_exit(void)
{
    if (!b_main_pid) {
        b_main_pid = getpid();
        atexit(pool_rows_atexit);
    }
}

/* Forks the k processes of t once; they die with this process. */
static int team_start(struct team *t, int k)
{
    if (t->c)
        return 0;
    if (k < 1 || k > TEAM_MAX)
        return MP_EINVAL;
    struct team_ctl *c = shared_page();
    if (!c)
        return MP_ENOMEM;
    pid_t parent = getpid();
    fflush(NULL);
    for (t->k = 0; t->k < k; t->k++) {
        pid_t p = fork();
        if (p < 0) {
            int err = -errno;
            t->c = c;
            team_stop(t);
            return err;
        }
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            team_worker(c, k, t->k);
            _exit(0);
        }
        t->pid[t->k] = p;
    }
    t->c = c;
    cleanup_at_exit();
    return 0;
}

/* Whether a process of the team has ended (it never should). */
static int team_lost(struct team *t)
{
    for (int i = 0; i < t->k; i++) {
        pid_t r = waitpid(t->pid[i], NULL, WNOHANG);
        if (r == t->pid[i] || (r < 0 && errno == ECHILD))
            return 1;
    }
    return 0;
}

/* One job: items [0, n) of in to out, claimed chunk at a time; returns
 * once every process of the team is through with it. */
static int team_run(struct team *t, int cpu, const int64_t *in, int64_t *out, long n, long chunk,
                    uint64_t iters)
{
    struct team_ctl *c = t->c;
    c->cpu = cpu;
    c->in = in;
    c->out = out;
    c->n = n;
    c->chunk = chunk;
    c->iters = iters;
    atomic_store(&c->next, 0);
    atomic_store(&c->done, 0);
    atomic_fetch_add(&c->gen, 1);
    syscall(SYS_futex, &c->gen, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    const struct timespec second = {1, 0}; /* how often a long wait checks the team lives */
    uint32_t d;
    while ((d = atomic_load(&c->done)) < (uint32_t)t->k)
        if (syscall(SYS_futex, &c->done, FUTEX_WAIT, d, &second, NULL, 0) < 0 && errno == ETIMEDOUT &&
            team_lost(t))
            return MP_ESTATE;
    return 0;
}

/* ---- pools: the rows ------------------------------------------------------ */

/* Makes *slot a pool of procs workers, once. SAME_CPU: its workers (and any
 * thread it starts here) inherit one CPU from this thread, pinned while the
 * pool is made. */
static int pool_init(mp_pool **slot, int procs, enum place p)
{
    if (*slot)
        return 0;
    int err = p == ANY_CPU ? 0 : place_side(p, 1);
    mp_pool_opts o = {.processes = procs};
    if (!err)
        err = mp_pool_new(slot, &o);
    if (p != ANY_CPU)
        place_side(ANY_CPU, 1);
    if (err) {
        *slot = NULL;
        return err;
    }
    cleanup_at_exit();
    return 0;
}

/* Workers of the 1 ms rows: one per CPU this process may use (2 here). */
static int cpu_procs(void)
{
    int k = mp_process_cpu_count();
    return k > TEAM_MAX ? TEAM_MAX : k;
}

/* pool_map_square_10m(_private): mp_pool_map of square_task over n items
 * (x * x of int64s), up to SQ_ITEMS a call, pool of 2, chunksize 0 (the
 * pool's choice); in and out in the arena or in private memory, which the
 * pool copies in and out each call. */
static int map_square(int64_t *in, int64_t *out, long n)
{
    int err = pool_init(&b_pool2, 2, ANY_CPU);
    mp_map_opts o = {.chunksize = 0};
    for (long done = 0; done < n && !err;) {
        long k = n - done < SQ_ITEMS ? n - done : SQ_ITEMS, idx[NSAMPLES];
        square_mark(out, k, idx);
        err = mp_pool_map(b_pool2, square_task, in, sizeof *in, out, sizeof *out, (size_t)k, &o);
        if (!err)
            err = square_check(out, idx);
        done += k;
    }
    return err;
}

static int mproc_map_square(long n)
{
    int err = sq_arena_init();
    return err ? err : map_square(b_sq_in, b_sq_out, n);
}

static int mproc_map_square_private(long n)
{
    int err = sq_private_init();
    return err ? err : map_square(b_pv_in, b_pv_out, n);
}

/* The team of 2 squaring n items in its MAP_SHARED arrays, chunk items a
 * claim, one job per call of up to SQ_ITEMS; results checked. */
static int floor_team_square(long n, long chunk)
{
    int err = sq_floor_init();
    if (!err)
        err = team_start(&b_team2, 2);
    for (long done = 0; done < n && !err;) {
        long k = n - done < SQ_ITEMS ? n - done : SQ_ITEMS, idx[NSAMPLES];
        square_mark(b_fl_out, k, idx);
        err = team_run(&b_team2, 0, b_fl_in, b_fl_out, k, chunk, 0);
        if (!err)
            err = square_check(b_fl_out, idx);
        done += k;
    }
    return err;
}

/* Its floor (for both rows): SQ_CHUNK items a claim. */
static int floor_map_square(long n) { return floor_team_square(n, SQ_CHUNK); }

/* pool_map_cpu_1ms(_oversub4x): mp_pool_map of cpu_task (about 1 ms of
 * CPU an item) over n items, up to CPU_ITEMS a call (a 30 ms batch on 2
 * CPUs is about 60 items: one call), chunksize 0; every result is checked.
 * Per item, so 1 ms / the figure is the speedup over one process (2 at
 * best here). */
static int map_cpu(mp_pool **slot, int procs, long n)
{
    int err = busy_init();
    if (!err)
        err = sq_arena_init();
    if (!err)
        err = pool_init(slot, procs, ANY_CPU);
    mp_map_opts o = {.chunksize = 0, .ctx = b_iters};
    for (long done = 0; done < n && !err;) {
        long k = n - done < CPU_ITEMS ? n - done : CPU_ITEMS;
        for (long i = 0; i < k; i++)
            b_sq_out[i] = ~b_cpu_expect[i];
        err = mp_pool_map(*slot, cpu_task, b_sq_in, sizeof *b_sq_in, b_sq_out, sizeof *b_sq_out,
                          (size_t)k, &o);
        for (long i = 0; i < k && !err; i++)
            if (b_sq_out[i] != b_cpu_expect[i])
                err = MP_ESTATE;
        done += k;
    }
    return err;
}

static int mproc_map_cpu(long n) { return map_cpu(&b_pool_cpu, cpu_procs(), n); }

/* Four workers per CPU (8 on 2 CPUs) on the same items: next to
 * pool_map_cpu_1ms, what oversubscription costs. */
static int mproc_map_cpu_over(long n)
{
    int procs = 4 * mp_process_cpu_count();
    return map_cpu(&b_pool_over, procs > POOL_MAX ? POOL_MAX : procs, n);
}

/* The floor of both: the team of one process per CPU, one item a claim. */
static int floor_map_cpu(long n)
{
    int err = busy_init();
    if (!err)
        err = sq_floor_init();
    if (!err)
        err = team_start(&b_team_cpu, cpu_procs());
    for (long done = 0; done < n && !err;) {
        long k = n - done < CPU_ITEMS ? n - done : CPU_ITEMS;
        for (long i = 0; i < k; i++)
            b_fl_out[i] = ~b_cpu_expect[i];
        err = team_run(&b_team_cpu, 1, b_fl_in, b_fl_out, k, 1, *b_iters);
        for (long i = 0; i < k && !err; i++)
            if (b_fl_out[i] != b_cpu_expect[i])
                err = MP_ESTATE;
        done += k;
    }
    return err;
}

/* pool_map_skewed: a map whose last items are 100 times slower than the
 * first (900 items of ~10 us, then 100 of ~1 ms), one worker per CPU,
 * chunksize 0: time per map of the 1000 items. The floor is the best static
 * split there is: one contiguous range per process, cut where the known
 * costs balance, no claims at all. The pool knows nothing of the costs. */
static int skew_task(const void *in, void *out, void *ctx)
{
    long i = (long)*(const int64_t *)in;
    *(int64_t *)out = (int64_t)busy((uint64_t)i, skew_iters(i, *(const uint64_t *)ctx));
    return 0;
}

static int skew_check(const int64_t *out)
{
    for (long i = 0; i < SKEW_ITEMS; i += 97)
        if (out[i] != (int64_t)busy((uint64_t)i, skew_iters(i, *b_iters)))
            return MP_ESTATE;
    return 0;
}

static int mproc_map_skewed(long n)
{
    int err = busy_init();
    if (!err)
        err = sq_arena_init();
    if (!err)
        err = pool_init(&b_pool_cpu, cpu_procs(), ANY_CPU);
    for (long r = 0; r < n && !err; r++) {
        err = mp_pool_map(b_pool_cpu, skew_task, b_sq_in, sizeof *b_sq_in, b_sq_out,
                          sizeof *b_sq_out, SKEW_ITEMS, &(mp_map_opts){.ctx = b_iters});
        if (!err)
            err = skew_check(b_sq_out);
    }
    return err;
}

static int floor_map_skewed(long n)
{
    int err = busy_init();
    if (!err)
        err = sq_floor_init();
    if (!err)
        err = team_start(&b_team_cpu, cpu_procs());
    if (err)
        return err;
    struct team_ctl *c = b_team_cpu.c;
    int k = b_team_cpu.k;
    double total = SKEW_SLOW + 100.0 * (SKEW_ITEMS - SKEW_SLOW), acc = 0;
    c->split[0] = 0;
    for (long i = 0, j = 1; i < SKEW_ITEMS; i++) { /* cut at each k-th of the cost */
        acc += i >= SKEW_SLOW ? 100 : 1;
        while (j < k && acc >= total * (double)j / k)
            c->split[j++] = i + 1;
    }
    c->split[k] = SKEW_ITEMS;
    for (long r = 0; r < n && !err; r++) {
        err = team_run(&b_team_cpu, 2, b_fl_in, b_fl_out, SKEW_ITEMS, 1, *b_iters);
        if (!err)
            err = skew_check(b_fl_out);
    }
    return err;
}

/* pool_apply_rtt(_same_cpu): one mp_pool_apply of square_task on an int64
 * on the stack (private: copied in and out), pool of 2: submit, wait for
 * the result. SAME_CPU: a pool made pinned to one CPU, and the caller
 * pinned there too during the batch. */
static int apply_rtt(mp_pool *pool, enum place p, long n)
{
    int err = p == ANY_CPU ? 0 : place_side(p, 1);
    for (long i = 0; i < n && !err; i++) {
        int64_t x = i, y = -1;
        err = mp_pool_apply(pool, square_task, &x, sizeof x, &y, sizeof y);
        if (!err && y != x * x)
            err = MP_ESTATE;
    }
    if (p != ANY_CPU)
        place_side(ANY_CPU, 1);
    return err;
}

static int mproc_apply_rtt(long n)
{
    int err = pool_init(&b_pool2, 2, ANY_CPU);
    return err ? err : apply_rtt(b_pool2, ANY_CPU, n);
}

static int mproc_apply_rtt_same(long n)
{
    int err = pool_init(&b_pool_same, 2, SAME_CPU);
    return err ? err : apply_rtt(b_pool_same, SAME_CPU, n);
}

/* Their floor: the request and the answer through shared memory, each
 * announced on a raw futex as in event_pingpong's floor (futex_post and
 * futex_take): side 1 writes x and posts req, side 0 takes it, writes x * x
 * and posts resp. One helper (in_two_processes: forked per batch, placed by
 * b_place); a failed check still runs the loop out, so the helper ends. */
static struct rtt {
    _Atomic uint32_t req, resp;
    int64_t x, y;
} *b_rtt;

static int floor_rtt_side(int side, long n)
{
    struct rtt *r = b_rtt;
    int err = 0;
    for (long i = 0; i < n; i++) {
        if (side == 1) {
            r->x = i;
            futex_post(&r->req);
            futex_take(&r->resp);
            if (r->y != (int64_t)i * i)
                err = MP_ESTATE;
        } else {
            futex_take(&r->req);
            r->y = r->x * r->x;
            futex_post(&r->resp);
        }
    }
    return err;
}

static int floor_rtt_at(enum place p, long n)
{
    if (!b_rtt && !(b_rtt = shared_page()))
        return MP_ENOMEM;
    b_place = p;
    int err = in_two_processes(floor_rtt_side, 2 * n); /* n per side */
    b_place = ANY_CPU;
    return err;
}

static int floor_rtt(long n) { return floor_rtt_at(ANY_CPU, n); }
static int floor_rtt_same(long n) { return floor_rtt_at(SAME_CPU, n); }

/* pool_apply_async_bulk: n mp_pool_apply_async of square_task (up to
 * BULK_MAX outstanding: submit them all, then mp_async_get and
 * mp_async_free each in order), int64s in private arrays, pool of 2. Per
 * apply: 1e9 / the figure is applies per second. */
static mp_async **b_handles;
static int64_t *b_bulk_in, *b_bulk_out;

static int mproc_apply_bulk(long n)
{
    int err = pool_init(&b_pool2, 2, ANY_CPU);
    if (!err && !b_handles) {
        b_bulk_in = malloc(BULK_MAX * sizeof *b_bulk_in);
        b_bulk_out = malloc(BULK_MAX * sizeof *b_bulk_out);
        b_handles = malloc(BULK_MAX * sizeof *b_handles);
        if (!b_bulk_in || !b_bulk_out || !b_handles) {
            free(b_bulk_in);
            free(b_bulk_out);
            free(b_handles);
            b_handles = NULL;
            return MP_ENOMEM;
        }
    }
    for (long done = 0; done < n && !err;) {
        long k = n - done < BULK_MAX ? n - done : BULK_MAX, sub = 0;
        for (; sub < k; sub++) {
            b_bulk_in[sub] = done + sub;
            b_bulk_out[sub] = -1;
            err = mp_pool_apply_async(&b_handles[sub], b_pool2, square_task, &b_bulk_in[sub],
                                      sizeof *b_bulk_in, &b_bulk_out[sub], sizeof *b_bulk_out);
            if (err)
                break;
        }
        for (long i = 0; i < sub; i++) {
            if (!err) {
                err = mp_async_get(b_handles[i], MP_FOREVER);
                if (!err && b_bulk_out[i] != b_bulk_in[i] * b_bulk_in[i])
                    err = MP_ESTATE;
            }
            mp_async_free(b_handles[i]); /* after a failure: cancels the rest */
        }
        done += k;
    }
    return err;
}

/* Its floor: the same items through the team of 2, one item a claim (each
 * item dispatched on its own through the atomic index, as separate applies
 * would be), one job per call of up to SQ_ITEMS. */
static int floor_apply_bulk(long n) { return floor_team_square(n, 1); }

/* pool_new_free_2: mp_pool_new with 2 workers, then mp_pool_free; each
 * worker's initializer counts itself in the arena, and the count must have
 * grown by 2 when mp_pool_new returns. */
static _Atomic long *b_starts; /* in the arena */

static int count_start(void *arg)
{
    atomic_fetch_add((_Atomic long *)arg, 1);
    return 0;
}

static int mproc_pool_new_free(long n)
{
    if (!b_starts && !(b_starts = mp_shared_alloc(64)))
        return MP_ENOMEM;
    mp_pool_opts o = {.processes = 2, .initializer = count_start, .initarg = (void *)b_starts};
    for (long i = 0; i < n; i++) {
        long before = atomic_load(b_starts);
        mp_pool *p;
        int err = mp_pool_new(&p, &o);
        if (err)
            return err;
        long started = atomic_load(b_starts) - before;
        mp_pool_free(p);
        if (started != 2)
            return MP_ESTATE;
    }
    return 0;
}

/* Its floor: fork 2 children that _exit(0), then waitpid both. */
static int floor_fork2_wait2(long n)
{
    for (long i = 0; i < n; i++) {
        pid_t pid[2];
        int err = 0, started = 0;
        for (; started < 2; started++) {
            if ((pid[started] = fork()) < 0) {
                err = -errno;
                break;
            }
            if (pid[started] == 0)
                _exit(0);
        }
        for (int k = 0; k < started; k++) {
            int status;
            while (waitpid(pid[k], &status, 0) < 0)
                if (errno != EINTR)
                    return -errno;
            if (!err && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
                err = MP_ESTATE;
        }
        if (err)
            return err;
    }
    return 0;
}

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
    {"pool_new_free_2", "mp_pool_new with 2 workers + mp_pool_free, run early, before the map rows' 500 MB of buffers make every fork dearer (floor: fork 2 + waitpid 2)",
     mproc_pool_new_free, floor_fork2_wait2},
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
    {"queue_1to1_64b", "64 B message, 1 producer -> 1 consumer process (floor: SPSC ring in shared memory)",
     mproc_queue_64, floor_queue_64},
    {"queue_1to1_64b_same_cpu", "the same, both processes pinned to one CPU",
     mproc_queue_64_same, floor_queue_64_same},
    {"queue_1to1_64b_cross_cpu", "the same, the processes pinned to two CPUs",
     mproc_queue_64_cross, floor_queue_64_cross},
    {"queue_1to1_8b", "int64 by MP_PUT / MP_GET, 1 -> 1 (floor: the ring, 8 B slots)",
     mproc_queue_8, floor_queue_8},
    {"queue_1to1_4k", "4 KiB message, 1 -> 1 (floor: the ring, 4 KiB slots)",
     mproc_queue_4k, floor_queue_4k},
    {"queue_1to1_1m", "1 MiB message, 1 -> 1: time per message (floor: the ring, four 1 MiB slots)",
     mproc_queue_1m, floor_queue_1m},
    {"queue_2to2_64b", "64 B message, 2 producers -> 2 consumers: time per message (floor: the ring, a robust mutex per side)",
     mproc_queue_2to2, floor_queue_2to2},
    {"pipe_pingpong_64b", "round trip of 64 B over a duplex mp_pipe (floor: blocking send/recv on a socketpair)",
     mproc_pipe_pp, floor_pipe_pp},
    {"pipe_pingpong_64b_same_cpu", "the same, both processes pinned to one CPU",
     mproc_pipe_pp_same, floor_pipe_pp_same},
    {"pipe_pingpong_64b_cross_cpu", "the same, the processes pinned to two CPUs",
     mproc_pipe_pp_cross, floor_pipe_pp_cross},
    {"pipe_stream_1m", "1 MiB message over a pipe, 1 sender -> 1 receiver: time per message (floor: socketpair, length header)",
     mproc_pipe_stream, floor_pipe_stream},
    {"pool_map_square_10m", "mp_pool_map of x*x over int64s in the arena, pool of 2, chunksize 0: time per item, up to 10^7 a call (floor: 2 kept processes, futex dispatch, 64k-item chunks by an atomic index)",
     mproc_map_square, floor_map_square},
    {"pool_map_square_10m_private", "the same, inputs and outputs in private memory, copied by the pool (floor: the same shared-memory one)",
     mproc_map_square_private, floor_map_square},
    {"pool_map_cpu_1ms", "mp_pool_map of ~1 ms CPU items, one worker per CPU: time per item, up to 200 a call (floor: as many kept processes, one item per atomic claim)",
     mproc_map_cpu, floor_map_cpu},
    {"pool_map_cpu_1ms_oversub4x", "the same with 4 workers per CPU (floor: one process per CPU, as above)",
     mproc_map_cpu_over, floor_map_cpu},
    {"pool_map_skewed", "mp_pool_map, chunksize 0, of 900 items of ~10 us then 100 of ~1 ms, one worker per CPU: time per map (floor: the best static split, one range per process cut where the known costs balance)",
     mproc_map_skewed, floor_map_skewed},
    {"pool_apply_rtt", "mp_pool_apply of x*x on one int64, pool of 2: round trip (floor: request and answer over raw futexes to a helper)",
     mproc_apply_rtt, floor_rtt},
    {"pool_apply_rtt_same_cpu", "the same, pool, caller and floor pinned to one CPU",
     mproc_apply_rtt_same, floor_rtt_same},
    {"pool_apply_async_bulk", "mp_pool_apply_async of x*x, up to 10^5 submitted then got and freed: time per apply (floor: 2 kept processes, one item per atomic claim)",
     mproc_apply_bulk, floor_apply_bulk},
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
 * an eighth of the target, then scale up. A batch slowed by a one-off cost
 * (a first call, a hiccup of the machine) makes that estimate too small,
 * and a row that starts processes in every batch would then measure little
 * but the starts: so the size found is tried, and scaled again while a
 * batch takes under half or over twice the target. Also warms up caches
 * and code. */
static long calibrate(const struct row *r, bench_fn fn, double target_ns)
{
    long n = 1;
    double t;
    for (;; n *= 2) {
        t = run_batch(r, fn, n);
        if (t >= target_ns / 8 || n >= (1L << 40))
            break;
    }
    for (int round = 0; round < 8; round++) {
        double scaled = (double)n * target_ns / (t > 0 ? t : 1);
        n = scaled < 1 ? 1 : scaled > (double)(1L << 40) ? 1L << 40 : (long)scaled;
        t = run_batch(r, fn, n);
        if (t >= target_ns / 2 && t <= target_ns * 2)
            break;
    }
    return n;
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
    printf("ROW\t%s\t%s\t%.4g\t%.4g\n", r->id, r->description,
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
