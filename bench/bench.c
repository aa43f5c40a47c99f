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
