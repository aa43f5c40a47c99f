/*
 * Fault injection: every system call the library makes goes through the
 * seam (os/os.h, mp__sys), and here every entry of the seam is replaced by
 * one that can fail. A case takes one public workload (a scenario) and one
 * fault class, and sweeps: it runs the scenario with the fault injected at
 * the 1st call of that class, then the 2nd, and so on until a run makes
 * fewer calls than that, so that every call site the scenario reaches gets
 * the fault once. A second sweep injects it at the Nth call and every call
 * after (the resource stays exhausted), for the classes where that can
 * happen. After each run the case proves:
 *
 *   - the scenario returned 0 or a clear code for that fault (listed per
 *     class in `allowed`); EINTR and short transfers must be invisible;
 *   - whatever it reported as done was done right (the scenario checks its
 *     data on success);
 *   - nothing leaked: no child left, the same descriptors, the arena's
 *     usage back to where it was;
 *   - the objects that live across runs (a queue, a pool) still work: the
 *     scenario then runs again without a fault and must succeed.
 *
 * The plan (what to inject, where) lives in a shared page, so the
 * processes a scenario starts (workers, children) take part: a sweep counts
 * the calls of the whole family, in whatever order they come. Most of the
 * classes only fire in the test's own process (only = its pid), where a
 * failure has someone to report it to; EINTR and short transfers fire in
 * every process, since each must retry them on its own.
 */
#include "arena.h"
#include "harness.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the injector ------------------------------------------------------- */

enum fclass { F_EINTR, F_EAGAIN, F_ENOMEM, F_EMFILE, F_ENFILE, F_ENOSPC, F_EPIPE, F_SHORT, F_N };
static const char *const class_name[F_N] = {"EINTR",  "EAGAIN", "ENOMEM", "EMFILE",
                                            "ENFILE", "ENOSPC", "EPIPE",  "short transfer"};
static const int class_errno[F_N] = {EINTR, EAGAIN, ENOMEM, EMFILE, ENFILE, ENOSPC, EPIPE, 0};
#define C(f) (1u << (f))
#define FD_MAKING (C(F_EMFILE) | C(F_ENFILE))

/* The seam's entries, for the report of where faults fired. */
enum site {
    S_FORK, S_WAITID, S_PIDFD_OPEN, S_PTHREAD_CREATE, S_PIPE2, S_SOCKETPAIR, S_EVENTFD,
    S_OPEN, S_SHM_OPEN, S_FCNTL, S_FSTAT, S_MALLOC, S_CALLOC, S_REALLOC, S_MEMFD,
    S_FTRUNCATE, S_MMAP, S_FALLOCATE, S_READ, S_WRITE, S_SENDMSG, S_RECVMSG, S_POLL,
    S_PPOLL, S_FUTEX, S_FUTEX_WAITV, S_N
};
static const char *const site_name[S_N] = {
    "fork", "waitid", "pidfd_open", "pthread_create", "pipe2", "socketpair", "eventfd",
    "open", "shm_open", "fcntl", "fstat", "malloc", "calloc", "realloc", "memfd_create",
    "ftruncate", "mmap", "fallocate", "read", "write", "sendmsg", "recvmsg", "poll",
    "ppoll", "futex", "futex_waitv"};

struct plan {
    _Atomic int armed;
    int cls;
    bool persistent; /* every call from the nth on, not the nth alone */
    pid_t only;      /* 0: every process */
    long nth;
    _Atomic long count; /* eligible calls seen while armed */
    _Atomic long fired;
    _Atomic uint64_t sites; /* bit per site that fired */
};
static struct plan *plan; /* a shared page: children forked before arming see it */
static struct mp__sys real;

/* Whether this call fails: the errno to give it, -1 for a short transfer,
 * 0 to let it through. classes: what this call could really be told by
 * the kernel (its man page). A lasting fault (every call from the nth on)
 * only hits the classes that can last: EAGAIN from a socket that poll has
 * just called ready, for one, cannot go on for ever. */
#define LASTING (C(F_ENOMEM) | C(F_EMFILE) | C(F_ENFILE) | C(F_ENOSPC) | C(F_EPIPE))
static int inject_as(enum site s, unsigned classes, unsigned lasting)
{
    if (plan && plan->persistent)
        classes &= lasting;
    if (!plan || !atomic_load_explicit(&plan->armed, memory_order_acquire))
        return 0;
    if (!(classes & C(plan->cls)) || (plan->only && getpid() != plan->only))
        return 0;
    long k = atomic_fetch_add(&plan->count, 1) + 1;
    if (k < plan->nth || (!plan->persistent && k != plan->nth))
        return 0;
    atomic_fetch_add(&plan->fired, 1);
    atomic_fetch_or(&plan->sites, (uint64_t)1 << s);
    return plan->cls == F_SHORT ? -1 : class_errno[plan->cls];
}

static int inject(enum site s, unsigned classes) { return inject_as(s, classes, LASTING); }

#define FAIL_WITH(e, bad)                                                      \
    do {                                                                       \
        errno = (e);                                                           \
        return (bad);                                                          \
    } while (0)

/* A call that, when injected, fails with its class's errno (returning bad)
 * and otherwise goes through: f_NAME(PARAMS) calls real.NAME(ARGS). classes:
 * what the kernel could really tell it (its man page). */
#define FAULTY(ret, name, site, classes, bad, params, args)                    \
    static ret f_##name params                                                 \
    {                                                                          \
        int e = inject(site, classes);                                         \
        if (e)                                                                 \
            FAIL_WITH(e, bad);                                                 \
        return real.name args;                                                 \
    }

FAULTY(int, waitid, S_WAITID, C(F_EINTR), -1, (idtype_t t, id_t id, siginfo_t *si, int o), (t, id, si, o))
FAULTY(int, pidfd_open, S_PIDFD_OPEN, FD_MAKING | C(F_ENOMEM), -1, (pid_t pid, unsigned flags), (pid, flags))
FAULTY(int, pipe2, S_PIPE2, FD_MAKING, -1, (int fds[2], int flags), (fds, flags))
FAULTY(int, socketpair, S_SOCKETPAIR, FD_MAKING | C(F_ENOMEM), -1, (int d, int t, int p, int fds[2]), (d, t, p, fds))
FAULTY(int, eventfd, S_EVENTFD, FD_MAKING | C(F_ENOMEM), -1, (unsigned v, int flags), (v, flags))
FAULTY(int, open, S_OPEN, FD_MAKING | C(F_ENOMEM) | C(F_EINTR), -1, (const char *path, int flags, mode_t mode), (path, flags, mode))
FAULTY(int, fstat, S_FSTAT, C(F_ENOMEM), -1, (int fd, struct stat *st), (fd, st))
FAULTY(void *, malloc, S_MALLOC, C(F_ENOMEM), NULL, (size_t n), (n))
FAULTY(void *, calloc, S_CALLOC, C(F_ENOMEM), NULL, (size_t n, size_t size), (n, size))
FAULTY(void *, realloc, S_REALLOC, C(F_ENOMEM), NULL, (void *p, size_t n), (p, n))
FAULTY(int, memfd_create, S_MEMFD, FD_MAKING | C(F_ENOMEM), -1, (const char *name, unsigned flags), (name, flags))
FAULTY(int, ftruncate, S_FTRUNCATE, C(F_EINTR), -1, (int fd, off_t len), (fd, len))
FAULTY(void *, mmap, S_MMAP, C(F_ENOMEM) | C(F_EAGAIN) | C(F_ENFILE), MAP_FAILED, (void *a, size_t len, int prot, int flags, int fd, off_t off), (a, len, prot, flags, fd, off))
FAULTY(int, fallocate, S_FALLOCATE, C(F_EINTR) | C(F_ENOSPC) | C(F_ENOMEM), -1, (int fd, int mode, off_t off, off_t len), (fd, mode, off, len))
FAULTY(ssize_t, read, S_READ, C(F_EINTR) | C(F_EAGAIN), -1, (int fd, void *buf, size_t n), (fd, buf, n))
FAULTY(ssize_t, write, S_WRITE, C(F_EINTR) | C(F_EAGAIN) | C(F_ENOSPC) | C(F_EPIPE), -1, (int fd, const void *buf, size_t n), (fd, buf, n))
FAULTY(long, futex_waitv, S_FUTEX_WAITV, C(F_EINTR) | C(F_EAGAIN), -1, (void *w, unsigned n, const struct timespec *ts), (w, n, ts))
/* read and write meet eventfds and /sys files above: 8-byte counters and
 * tiny files are never cut short, so no short transfer for them. */

static pid_t f_fork(void)
{
    int e = inject_as(S_FORK, C(F_EAGAIN) | C(F_ENOMEM), LASTING | C(F_EAGAIN)); /* RLIMIT_NPROC */
    if (e)
        FAIL_WITH(e, -1);
    return real.fork();
}
static int f_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    int e = inject_as(S_PTHREAD_CREATE, C(F_EAGAIN), C(F_EAGAIN));
    if (e)
        return e; /* pthread_create's convention */
    return real.pthread_create(t, a, fn, arg);
}
static int f_shm_open(const char *name, int flags, mode_t mode)
{
    int e = inject(S_SHM_OPEN, FD_MAKING | C(F_ENOMEM) | C(F_EINTR) | (flags & O_CREAT ? C(F_ENOSPC) : 0));
    if (e)
        FAIL_WITH(e, -1);
    return real.shm_open(name, flags, mode);
}
static int f_fcntl(int fd, int cmd, long arg)
{
    unsigned cl = 0;
    if (cmd == F_DUPFD_CLOEXEC || cmd == F_DUPFD)
        cl = FD_MAKING;
    else if (cmd == F_SETLKW || cmd == F_OFD_SETLKW)
        cl = C(F_EINTR);
    int e = cl ? inject(S_FCNTL, cl) : 0;
    if (e)
        FAIL_WITH(e, -1);
    return real.fcntl(fd, cmd, arg);
}

/* A short transfer: the same call over the first half of its bytes (at
 * least one), as a socket buffer with less room or data would give. */
static size_t shorten(const struct msghdr *m, struct iovec *iov, struct msghdr *out)
{
    size_t total = 0;
    for (size_t i = 0; i < m->msg_iovlen; i++)
        total += m->msg_iov[i].iov_len;
    size_t want = total > 1 ? total / 2 : total, k = 0;
    *out = *m;
    for (size_t i = 0; i < m->msg_iovlen && i < 8 && want > 0; i++) {
        iov[k] = m->msg_iov[i];
        if (iov[k].iov_len > want)
            iov[k].iov_len = want;
        want -= iov[k].iov_len;
        k++;
    }
    out->msg_iov = iov;
    out->msg_iovlen = k;
    return total;
}

static ssize_t f_sendmsg(int fd, const struct msghdr *m, int flags)
{
    int e = inject(S_SENDMSG, C(F_EINTR) | C(F_EAGAIN) | C(F_ENOMEM) | C(F_EPIPE) | C(F_SHORT));
    if (e > 0)
        FAIL_WITH(e, -1);
    if (e < 0) {
        struct iovec iov[8];
        struct msghdr s;
        shorten(m, iov, &s);
        return real.sendmsg(fd, &s, flags);
    }
    return real.sendmsg(fd, m, flags);
}
static ssize_t f_recvmsg(int fd, struct msghdr *m, int flags)
{
    int e = inject(S_RECVMSG, C(F_EINTR) | C(F_EAGAIN) | C(F_ENOMEM) | C(F_SHORT));
    if (e > 0)
        FAIL_WITH(e, -1);
    if (e < 0) {
        struct iovec iov[8];
        struct msghdr s;
        shorten(m, iov, &s);
        ssize_t r = real.recvmsg(fd, &s, flags);
        m->msg_flags = s.msg_flags;
        return r;
    }
    return real.recvmsg(fd, m, flags);
}
/* poll's ENOMEM is one-shot: the kernel allocates only for sets larger
 * than its stack table (a few dozen descriptors), and a system out of
 * that little memory for good cannot be waited out by anyone. */
#define SHORT_LIVED_POLL (LASTING & ~C(F_ENOMEM))
static int f_poll(struct pollfd *pf, nfds_t n, int ms)
{
    int e = inject_as(S_POLL, C(F_EINTR) | C(F_ENOMEM), SHORT_LIVED_POLL);
    if (e)
        FAIL_WITH(e, -1);
    return real.poll(pf, n, ms);
}
static int f_ppoll(struct pollfd *pf, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
    int e = inject_as(S_PPOLL, C(F_EINTR) | C(F_ENOMEM), SHORT_LIVED_POLL);
    if (e)
        FAIL_WITH(e, -1);
    return real.ppoll(pf, n, ts, mask);
}
static long f_futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts, uint32_t mask)
{
    bool waits = (op & FUTEX_CMD_MASK) == FUTEX_WAIT_BITSET || (op & FUTEX_CMD_MASK) == FUTEX_WAIT;
    int e = waits ? inject(S_FUTEX, C(F_EINTR) | C(F_EAGAIN)) : 0;
    if (e)
        FAIL_WITH(e, -1);
    return real.futex(addr, op, val, ts, mask);
}

static void injector_install(void)
{
    if (!plan) {
        plan = mmap(NULL, sizeof *plan, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        ASSERT_TRUE(plan != MAP_FAILED);
        memset(plan, 0, sizeof *plan);
    }
    real = mp__sys;
    mp__sys = (struct mp__sys){
        .fork = f_fork, .waitid = f_waitid, .pidfd_open = f_pidfd_open,
        .pidfd_send_signal = real.pidfd_send_signal, .pthread_create = f_pthread_create,
        .pipe2 = f_pipe2, .socketpair = f_socketpair, .eventfd = f_eventfd, .open = f_open,
        .shm_open = f_shm_open, .fcntl = f_fcntl, .fstat = f_fstat, .malloc = f_malloc,
        .calloc = f_calloc, .realloc = f_realloc, .memfd_create = f_memfd_create,
        .ftruncate = f_ftruncate, .mmap = f_mmap, .fallocate = f_fallocate, .read = f_read,
        .write = f_write, .sendmsg = f_sendmsg, .recvmsg = f_recvmsg, .poll = f_poll,
        .ppoll = f_ppoll, .futex = f_futex, .futex_waitv = f_futex_waitv,
    };
}

static void arm(int cls, long nth, bool persistent)
{
    plan->cls = cls;
    plan->nth = nth;
    plan->persistent = persistent;
    plan->only = cls == F_EINTR || cls == F_SHORT ? 0 : getpid();
    atomic_store(&plan->count, 0);
    atomic_store(&plan->fired, 0);
    atomic_store_explicit(&plan->armed, 1, memory_order_release);
}

static long disarm(void)
{
    atomic_store(&plan->armed, 0);
    return atomic_load(&plan->count);
}

/* ---- scenarios ---------------------------------------------------------------
 * Each runs one public workload, returns 0 or the first error code it met,
 * and always frees what it made. On success it has checked its data: a
 * fault may make an operation fail, never make it lie. */

static const double T = 10; /* generous: a wait that times out is a lost wake-up */

#define TRY(e)                                                                 \
    do {                                                                       \
        int r_ = (int)(e);                                                     \
        if (r_ < 0) {                                                          \
            rc = r_;                                                           \
            goto out;                                                          \
        }                                                                      \
    } while (0)

static void fill(char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)(seed * 31 + i * 7 + (i >> 9));
}

static bool filled(const char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (char)(seed * 31 + i * 7 + (i >> 9)))
            return false;
    return true;
}

/* Pipes in one process: small, large (in the socket's buffer) and empty
 * messages, recv and recv_alloc, poll and mp_wait. */
static int sc_pipe(void)
{
    int rc = 0;
    mp_conn *a = NULL, *b = NULL;
    static char big[48 << 10], got[48 << 10];
    void *m = NULL;
    size_t len;
    fill(big, sizeof big, 3);
    TRY(mp_pipe(&a, &b, true));
    TRY(mp_conn_send(a, "hello", 5));
    TRY(mp_conn_send(a, big, sizeof big));
    TRY(mp_conn_send(a, "", 0));
    TRY(mp_conn_send(b, "back", 4));
    int fds[2] = {mp_conn_fileno(a), mp_conn_fileno(b)};
    bool ready[2];
    int n = mp_wait(fds, 2, ready, T);
    TRY(n);
    ASSERT_TRUE(n >= 1);
    TRY(mp_conn_poll(b, T));
    ssize_t k;
    TRY(k = mp_conn_recv(b, got, sizeof got, T));
    ASSERT_TRUE(k == 5 && memcmp(got, "hello", 5) == 0);
    TRY(mp_conn_recv_alloc(b, &m, &len, T));
    ASSERT_TRUE(len == sizeof big && filled(m, len, 3));
    TRY(k = mp_conn_recv(b, got, sizeof got, T));
    ASSERT_EQ(k, 0);
    TRY(k = mp_conn_recv(a, got, sizeof got, T));
    ASSERT_TRUE(k == 4 && memcmp(got, "back", 4) == 0);
out:
    free(m);
    mp_conn_free(a);
    mp_conn_free(b);
    return rc;
}

/* A child echoes what it receives, larger than the socket's buffer, so both
 * sides wait for each other. */
static mp_conn *echo_end, *parent_end;
static int echo_main(void *arg)
{
    (void)arg;
    mp_conn_free(parent_end); /* or it would never see the parent's close */
    for (;;) {
        void *m;
        size_t len;
        int r = mp_conn_recv_alloc(echo_end, &m, &len, T);
        if (r == MP_ECLOSED)
            return 0;
        if (r < 0)
            return 1;
        r = mp_conn_send(echo_end, m, len);
        free(m);
        if (r < 0)
            return 2;
    }
}

static int sc_pipe_child(void)
{
    int rc = 0;
    mp_conn *a = NULL;
    mp_process *p = NULL;
    static char big[600 << 10];
    parent_end = NULL;
    void *m = NULL;
    size_t len;
    fill(big, sizeof big, 5);
    TRY(mp_pipe(&a, &echo_end, true));
    parent_end = a;
    TRY(mp_process_new(&p, echo_main, NULL, NULL));
    int r = mp_process_start(p);
    mp_conn_free(echo_end);
    echo_end = NULL;
    TRY(r);
    for (unsigned i = 0; i < 3; i++) {
        size_t n = i == 1 ? sizeof big : 100 + i;
        TRY(mp_conn_send(a, big, n));
        TRY(mp_conn_recv_alloc(a, &m, &len, T));
        ASSERT_TRUE(len == n && filled(m, len, 5));
        free(m);
        m = NULL;
    }
out:
    free(m);
    mp_conn_free(echo_end);
    echo_end = NULL;
    mp_conn_free(a); /* the child sees EOF and ends */
    if (p && mp_process_pid(p) > 0) {
        int j = mp_process_join(p, T);
        if (j < 0 && rc == 0)
            rc = j;
        else if (rc == 0 && mp_process_exitcode(p) != 0)
            T_FAIL("the echo child ended with %d", mp_process_exitcode(p));
    }
    mp_process_free(p);
    return rc;
}

/* A queue that lives across runs, and a fresh one; a child consumes
 * messages larger than the ring (streams) while this process puts them. */
static mp_queue *kept_q;
static mp_queue *child_q;
static int consumer_main(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < 3; i++) {
        void *m;
        size_t len;
        int r = mp_queue_get_alloc(child_q, &m, &len, T);
        if (r < 0)
            return 1;
        bool ok = len == 10000u + i && filled(m, len, i);
        free(m);
        if (!ok)
            return 3;
    }
    return 0;
}

static int sc_queue(void)
{
    int rc = 0;
    mp_queue *q = NULL;
    mp_process *p = NULL;
    char buf[64];
    static char msg[12000];
    TRY(mp_queue_new(&q, &(mp_queue_opts){.capacity = 4096}));
    for (unsigned i = 0; i < 3; i++) { /* the kept queue: in and out */
        TRY(mp_queue_put(kept_q, "abcdef", 6, T));
        ssize_t k;
        TRY(k = mp_queue_get(kept_q, buf, sizeof buf, T));
        ASSERT_TRUE(k == 6 && memcmp(buf, "abcdef", 6) == 0);
    }
    child_q = q;
    TRY(mp_process_new(&p, consumer_main, NULL, NULL));
    TRY(mp_process_start(p));
    for (unsigned i = 0; i < 3; i++) {
        fill(msg, 10000 + i, i);
        TRY(mp_queue_put(q, msg, 10000 + i, T));
    }
    TRY(mp_process_join(p, T));
    if (mp_process_exitcode(p) != 0)
        T_FAIL("the consumer ended with %d", mp_process_exitcode(p));
    ASSERT_TRUE(mp_queue_empty(q));
out:
    if (p && mp_process_pid(p) > 0 && mp_process_exitcode(p) == MP_EXIT_NONE) {
        mp_queue_close(q); /* a consumer waiting for more sees the end */
        if (mp_process_join(p, T) < 0) {
            mp_process_kill(p);
            mp_process_join(p, T);
        }
    }
    mp_process_free(p);
    mp_queue_free(q);
    return rc;
}

/* Processes: three children, each ending with its own code. */
static int child_code(void *arg) { return (int)(intptr_t)arg; }

static int sc_process(void)
{
    int rc = 0;
    mp_process *p[3] = {0};
    for (int i = 0; i < 3; i++) {
        TRY(mp_process_new(&p[i], child_code, (void *)(intptr_t)(7 + i), NULL));
        TRY(mp_process_start(p[i]));
    }
    for (int i = 0; i < 3; i++) {
        TRY(mp_process_join(p[i], T));
        ASSERT_EQ(mp_process_exitcode(p[i]), 7 + i);
    }
out:
    for (int i = 0; i < 3; i++) {
        if (p[i] && mp_process_pid(p[i]) > 0)
            mp_process_join(p[i], T);
        mp_process_free(p[i]);
    }
    return rc;
}

/* Pools: a pool that lives across runs, and a fresh one made and freed. */
static mp_pool *kept_pool;
static int square(const void *in, void *out, void *ctx)
{
    (void)ctx;
    int64_t x = *(const int64_t *)in;
    *(int64_t *)out = x * x;
    return 0;
}

#define MAPN 20000
static int sc_pool(void)
{
    int rc = 0;
    mp_pool *p = NULL;
    mp_async *a = NULL;
    mp_imap *it = NULL;
    static int64_t in[MAPN], out[MAPN];
    for (int i = 0; i < MAPN; i++)
        in[i] = i - 100, out[i] = -1;
    TRY(mp_pool_map(kept_pool, square, in, 8, out, 8, MAPN, NULL));
    for (int i = 0; i < MAPN; i++)
        ASSERT_EQ(out[i], in[i] * in[i]);
    int64_t x = 12, y = 0;
    TRY(mp_pool_apply(kept_pool, square, &x, 8, &y, 8));
    ASSERT_EQ(y, 144);
    TRY(mp_pool_apply_async(&a, kept_pool, square, &x, 8, &y, 8));
    TRY(mp_async_get(a, T));
    TRY(mp_pool_imap(&it, kept_pool, square, in, 8, 8, 100, &(mp_map_opts){.chunksize = 7}, true));
    for (int i = 0; i < 100; i++) {
        size_t idx;
        TRY(mp_imap_next(it, &y, &idx, T));
        ASSERT_EQ((int64_t)idx, i);
        ASSERT_EQ(y, in[i] * in[i]);
    }
    TRY(mp_pool_new(&p, &(mp_pool_opts){.processes = 2}));
    TRY(mp_pool_map(p, square, in, 8, out, 8, 1000, NULL));
    for (int i = 0; i < 1000; i++)
        ASSERT_EQ(out[i], in[i] * in[i]);
    TRY(mp_pool_close(p));
    TRY(mp_pool_join(p, T));
out:
    mp_imap_free(it);
    mp_async_free(a);
    mp_pool_free(p);
    return rc;
}

/* Synchronisation, contended by a child: a lock passed back and forth, a
 * semaphore, an event, a condition and a barrier, and a value. */
struct syncset {
    mp_lock *lock;
    mp_sem *sem;
    mp_event *ev;
    mp_rlock *rl;
    mp_cond *cond;
    mp_barrier *bar;
    mp_value *val;
    int *turn; /* in the arena, under cond's lock */
};
static struct syncset ss;

static int sync_child(void *arg)
{
    (void)arg;
    if (mp_barrier_wait(ss.bar, T) < 0)
        return 1;
    for (int i = 0; i < 20; i++) {
        if (mp_lock_acquire(ss.lock, T) != 0)
            return 2;
        mp_lock_release(ss.lock);
    }
    if (mp_sem_release(ss.sem) < 0 || mp_event_set(ss.ev) < 0)
        return 3;
    if (mp_cond_acquire(ss.cond, T) != 0)
        return 4;
    *ss.turn = 1;
    mp_cond_notify_all(ss.cond);
    while (*ss.turn != 2)
        if (mp_cond_wait(ss.cond, T) < 0)
            return 5;
    mp_cond_release(ss.cond);
    int64_t v = 42;
    return mp_value_set(ss.val, &v) < 0 ? 6 : 0;
}

static int sc_sync(void)
{
    int rc = 0;
    mp_process *p = NULL;
    memset(&ss, 0, sizeof ss);
    TRY(mp_lock_new(&ss.lock));
    TRY(mp_sem_new(&ss.sem, 0, 0));
    TRY(mp_event_new(&ss.ev));
    TRY(mp_rlock_new(&ss.rl));
    TRY(mp_cond_new(&ss.cond, ss.rl));
    TRY(mp_barrier_new(&ss.bar, 2, NULL, NULL));
    int64_t zero = 0;
    TRY(mp_value_new(&ss.val, 8, &zero));
    if (!(ss.turn = mp_shared_calloc(1, sizeof *ss.turn))) {
        rc = MP_ENOMEM;
        goto out;
    }
    TRY(mp_process_new(&p, sync_child, NULL, NULL));
    TRY(mp_process_start(p));
    TRY(mp_barrier_wait(ss.bar, T));
    for (int i = 0; i < 20; i++) {
        TRY(mp_lock_acquire(ss.lock, T));
        mp_lock_release(ss.lock);
    }
    TRY(mp_sem_acquire(ss.sem, T));
    TRY(mp_event_wait(ss.ev, T));
    TRY(mp_cond_acquire(ss.cond, T));
    while (*ss.turn != 1) {
        int r = mp_cond_wait(ss.cond, T);
        if (r < 0) {
            mp_cond_release(ss.cond);
            TRY(r);
        }
    }
    *ss.turn = 2;
    mp_cond_notify_all(ss.cond);
    mp_cond_release(ss.cond);
    TRY(mp_process_join(p, T));
    if (mp_process_exitcode(p) != 0)
        T_FAIL("the sync child ended with %d", mp_process_exitcode(p));
    int64_t v;
    TRY(mp_value_get(ss.val, &v));
    ASSERT_EQ(v, 42);
out:
    if (p && mp_process_pid(p) > 0 && mp_process_exitcode(p) == MP_EXIT_NONE) {
        mp_barrier_abort(ss.bar);
        mp_process_kill(p);
        mp_process_join(p, T);
    }
    mp_process_free(p);
    mp_shared_free(ss.turn);
    mp_value_free(ss.val);
    mp_barrier_free(ss.bar);
    mp_cond_free(ss.cond);
    mp_rlock_free(ss.rl);
    mp_event_free(ss.ev);
    mp_sem_free(ss.sem);
    mp_lock_free(ss.lock);
    return rc;
}

/* Named shared memory: create, attach, write through one and read through
 * the other, unlink. */
static int sc_shm(void)
{
    int rc = 0;
    mp_shm *a = NULL, *b = NULL;
    char name[64];
    snprintf(name, sizeof name, "mproc-fault-%d", (int)getpid());
    TRY(mp_shm_create(&a, name, 100000));
    TRY(mp_shm_attach(&b, name));
    ASSERT_EQ(mp_shm_size(b), 100000);
    fill(mp_shm_ptr(a), 100000, 9);
    ASSERT_TRUE(filled(mp_shm_ptr(b), 100000, 9));
out:
    if (a)
        mp_shm_unlink(a);
    mp_shm_free(b);
    mp_shm_free(a);
    return rc;
}

/* The arena: blocks small and large (new pages to commit). */
static int sc_arena(void)
{
    int rc = 0;
    char *p[4] = {0};
    const size_t size[4] = {100, 70000, 3 << 20, 40 << 20};
    for (int i = 0; i < 4; i++) {
        if (!(p[i] = mp_shared_alloc(size[i]))) {
            rc = MP_ENOMEM;
            goto out;
        }
        fill(p[i], size[i], (unsigned)i);
    }
    for (int i = 0; i < 4; i++)
        ASSERT_TRUE(filled(p[i], size[i], (unsigned)i));
out:
    for (int i = 0; i < 4; i++)
        mp_shared_free(p[i]);
    return rc;
}

/* ---- the sweep ---------------------------------------------------------- */

/* The codes a run may end with when this class is injected where it
 * fired (sites): the fault itself, as the library maps it. EINTR and short
 * transfers: none. */
static bool allowed(int cls, int rc, uint64_t sites)
{
    if (rc == 0)
        return true;
    switch (cls) {
    case F_EAGAIN: /* "no process or thread now" from fork, pthread_create or
                      mmap; from a socket or a futex it means "wait", never
                      an error */
        if (!(sites & ((1u << S_FORK) | (1u << S_PTHREAD_CREATE) | (1u << S_MMAP))))
            return false;
        return rc == -EAGAIN || rc == MP_ENOMEM;
    case F_ENOMEM:
        return rc == MP_ENOMEM || rc == -EAGAIN; /* fork may say either */
    case F_EMFILE:
        return rc == -EMFILE;
    case F_ENFILE:
        return rc == -ENFILE;
    case F_ENOSPC: /* the arena's memory is memory */
        return rc == MP_ENOMEM || rc == -ENOSPC;
    case F_EPIPE: /* the peer is gone */
        return rc == MP_ECLOSED;
    default:
        return false;
    }
}

struct scenario {
    const char *name;
    int (*run)(void);
    bool caches; /* uses the kept pool, which keeps job blocks for reuse:
                    the arena's usage is compared once it is freed */
};

static int fds0, kids0;
static size_t usage0, usage_start;
static uint64_t pages0; /* slabs stay once made: compared between runs only */
static const struct scenario *current;

/* Children left beyond the kept pool's workers, once a freed handle's
 * background reaping has had its time. */
static int extra_children(void) { return t_await_children(kids0, 10, NULL) - kids0; }

static void settled(const char *what, long nth)
{
    int kids = extra_children();
    if (kids) {
        char cmd[80];
        snprintf(cmd, sizeof cmd, "ps -o pid,stat,wchan:20,args --ppid %d >&2", (int)getpid());
        if (system(cmd) != 0)
            fprintf(stderr, "(no ps)\n");
        T_FAIL("%s, fault at call %ld: %d children left", what, nth, kids);
    }
    int fds = t_count_fds();
    if (fds != fds0 && system("ls -l /proc/$PPID/fd >&2") != 0)
        fprintf(stderr, "(no ls)\n");
    if (fds != fds0)
        T_FAIL("%s, fault at call %ld: %d descriptors, %d before", what, nth, fds, fds0);
    size_t u = mp_shared_usage();
    if (!current->caches && u != usage0)
        T_FAIL("%s, fault at call %ld: arena usage %zu, %zu before", what, nth, u, usage0);
    uint64_t pg = mp__arena_pages_used();
    if (!current->caches && pg != pages0)
        T_FAIL("%s, fault at call %ld: %llu arena pages taken, %llu before", what, nth,
               (unsigned long long)pg, (unsigned long long)pages0);
}

static int sweep_one(const struct scenario *sc, int cls, bool persistent)
{
    int swept = 0, failed = 0;
    uint64_t sites = 0;
    char what[96];
    snprintf(what, sizeof what, "%s, %s%s", sc->name, class_name[cls], persistent ? " from then on" : "");
    /* Calls from a first run set how far to sweep; past 64, a stride that
     * grows, to keep each case within seconds (the calls of a busy family
     * vary a little between runs: the sweep stops at the first run that
     * made fewer). */
    for (long nth = 1;; nth += nth < 64 ? 1 : nth / 16) {
        arm(cls, nth, persistent);
        int rc = sc->run();
        long calls = disarm();
        long fired = atomic_load(&plan->fired);
        uint64_t here = atomic_load(&plan->sites);
        sites |= here;
        atomic_store(&plan->sites, 0);
        if (!allowed(cls, rc, here))
            T_FAIL("%s, fault at call %ld (%ld fired): returned %s", what, nth, fired, mp_err_name(rc));
        failed += rc != 0;
        settled(what, nth);
        int again = sc->run();
        if (again != 0)
            T_FAIL("%s, fault at call %ld: the next run without a fault returned %s", what, nth,
                   mp_err_name(again));
        settled(what, nth);
        if (!fired || calls < nth)
            break;
        swept++;
    }
    if (persistent && !sites)
        return 0; /* no call here can fail for good in this class */
    printf("%-44s %4d call sites swept, %4d runs reported the fault; at:", what, swept, failed);
    for (int s = 0; s < S_N; s++)
        if (sites & ((uint64_t)1 << s))
            printf(" %s", site_name[s]);
    printf("\n");
    return swept;
}

static void sweep(const struct scenario *sc, int cls)
{
    injector_install();
    current = sc;
    usage_start = mp_shared_usage();
    if (!kept_pool)
        ASSERT_OK(mp_pool_new(&kept_pool, &(mp_pool_opts){.processes = 2}));
    if (!kept_q)
        ASSERT_OK(mp_queue_new(&kept_q, &(mp_queue_opts){.capacity = 4096}));
    /* Warm up: what a process makes once and keeps is made now (the
     * descriptor interruptible waits use, the reaper's eventfd, which a
     * handle freed before its child ended brings). */
    mp_process *w;
    ASSERT_OK(mp_process_new(&w, child_code, (void *)(intptr_t)0, NULL));
    ASSERT_OK(mp_process_start(w));
    mp_process_free(w);
    ASSERT_OK(sc->run());
    ASSERT_OK(sc->run());
    kids0 = 2; /* the kept pool's workers */
    ASSERT_EQ(extra_children(), 0);
    fds0 = t_count_fds();
    usage0 = mp_shared_usage();
    pages0 = mp__arena_pages_used();
    int swept = sweep_one(sc, cls, false);
    if (swept == 0)
        T_FAIL("%s: no call of class %s was reached", sc->name, class_name[cls]);
    if (cls != F_EINTR && cls != F_SHORT && cls != F_EPIPE)
        sweep_one(sc, cls, true);
    mp_pool_free(kept_pool);
    mp_queue_free(kept_q);
    kept_pool = NULL;
    kept_q = NULL;
    mp__sys = real; /* once the pool's manager, which reads the table, has ended */
    ASSERT_EQ(mp_shared_usage(), usage_start);
}

static const struct scenario pipe_ = {"pipe", sc_pipe, false}, pipe_child = {"pipe with a child", sc_pipe_child, false},
                             queue = {"queue", sc_queue, false}, process = {"process", sc_process, false},
                             pool = {"pool", sc_pool, true}, sync_ = {"sync", sc_sync, false},
                             shm = {"shm", sc_shm, false}, arena = {"arena", sc_arena, false};

TEST(eintr_pipe) { sweep(&pipe_, F_EINTR); }
TEST(eintr_pipe_with_a_child) { sweep(&pipe_child, F_EINTR); }
TEST(eintr_queue) { sweep(&queue, F_EINTR); }
TEST(eintr_process) { sweep(&process, F_EINTR); }
TEST(eintr_pool) { sweep(&pool, F_EINTR); }
TEST(eintr_sync) { sweep(&sync_, F_EINTR); }
TEST(eintr_shm) { sweep(&shm, F_EINTR); }
TEST(eintr_arena) { sweep(&arena, F_EINTR); }

TEST(eagain_pipe) { sweep(&pipe_, F_EAGAIN); }
TEST(eagain_pipe_with_a_child) { sweep(&pipe_child, F_EAGAIN); }
TEST(eagain_queue) { sweep(&queue, F_EAGAIN); }
TEST(eagain_process) { sweep(&process, F_EAGAIN); }
TEST(eagain_pool) { sweep(&pool, F_EAGAIN); }

TEST(enomem_pipe) { sweep(&pipe_, F_ENOMEM); }
TEST(enomem_pipe_with_a_child) { sweep(&pipe_child, F_ENOMEM); }
TEST(enomem_queue) { sweep(&queue, F_ENOMEM); }
TEST(enomem_process) { sweep(&process, F_ENOMEM); }
TEST(enomem_pool) { sweep(&pool, F_ENOMEM); }
TEST(enomem_sync) { sweep(&sync_, F_ENOMEM); }
TEST(enomem_shm) { sweep(&shm, F_ENOMEM); }
TEST(enomem_arena) { sweep(&arena, F_ENOMEM); }

TEST(emfile_pipe) { sweep(&pipe_, F_EMFILE); }
TEST(emfile_queue) { sweep(&queue, F_EMFILE); }
TEST(emfile_process) { sweep(&process, F_EMFILE); }
TEST(emfile_pool) { sweep(&pool, F_EMFILE); }
TEST(emfile_shm) { sweep(&shm, F_EMFILE); }
TEST(enfile_pipe_with_a_child) { sweep(&pipe_child, F_ENFILE); }
TEST(enfile_pool) { sweep(&pool, F_ENFILE); }
TEST(enfile_shm) { sweep(&shm, F_ENFILE); }

TEST(enospc_arena) { sweep(&arena, F_ENOSPC); }
TEST(enospc_pool) { sweep(&pool, F_ENOSPC); }
TEST(enospc_shm) { sweep(&shm, F_ENOSPC); }

TEST(epipe_pipe) { sweep(&pipe_, F_EPIPE); }
TEST(epipe_pipe_with_a_child) { sweep(&pipe_child, F_EPIPE); }

TEST(short_pipe) { sweep(&pipe_, F_SHORT); }
TEST(short_pipe_with_a_child) { sweep(&pipe_child, F_SHORT); }

/* ---- a process that cannot register with the owner lock ------------------
 * Every lock of the library names its holder by an identity the kernel
 * vouches for (a byte-range lock on the family's file, os/olock.c). A
 * process whose lock the kernel refuses for good (ENOLCK) has none: each
 * call that needs one must say MP_ENOMEM (or NULL), never wait for it. */
static int refuse_setlk(int fd, int cmd, long arg)
{
    if (cmd == F_SETLK || cmd == F_SETLKW || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW) {
        errno = ENOLCK;
        return -1;
    }
    return real.fcntl(fd, cmd, arg);
}

static mp_lock *reg_lock;
static mp_queue *reg_q;

static int unregistered_child(void *arg)
{
    (void)arg;
    real = mp__sys;
    mp__sys.fcntl = refuse_setlk; /* this process's own table */
    if (mp_shared_alloc(1 << 20) != NULL)
        return 1;
    if (mp_lock_acquire(reg_lock, 5) != MP_ENOMEM)
        return 2;
    if (mp_queue_put(reg_q, "x", 1, 5) != MP_ENOMEM)
        return 3;
    char c;
    if (mp_queue_get(reg_q, &c, 1, 5) != MP_ENOMEM)
        return 4;
    return 0;
}

TEST(a_process_the_kernel_will_not_register_gets_enomem)
{
    ASSERT_OK(mp_lock_new(&reg_lock));
    ASSERT_OK(mp_queue_new(&reg_q, NULL));
    mp_process *p = t_start(unregistered_child, NULL, NULL);
    t_join(p, 0);
    ASSERT_OK(mp_lock_acquire(reg_lock, 5)); /* nothing held on its behalf */
    ASSERT_OK(mp_lock_release(reg_lock));
    ASSERT_OK(mp_queue_put(reg_q, "y", 1, 5));
    mp_queue_free(reg_q);
    mp_lock_free(reg_lock);
}
