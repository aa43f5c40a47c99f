/*
 * The OS layer: everything mproc asks of Linux, in one contract.
 *
 * Nothing here knows a layer above it. Each file keeps its own process-local
 * state and resets it in the child of a fork through its own pthread_atfork
 * handler, so upper layers never clean up after this one.
 *
 * Internal names start with "mp__". Functions return 0 or a count on success
 * and a negative MP_E* / -errno code on failure, like the public API.
 */
#ifndef MPROC_OS_H
#define MPROC_OS_H

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/wait.h>

/* ---- the system-call seam (sys.c) --------------------------------------
 * Every call whose failure the library must survive goes through this
 * table, so tests can inject any error at any call site deterministically
 * (SQLite's aSyscall idea): allocation, descriptor creation, I/O, waits,
 * process control. Entries follow the libc convention (-1 and errno; NULL
 * and errno for the allocators; pthread_create returns the error number);
 * the wrappers of this layer turn that into -errno. The table is ordinary
 * process memory: an override made before a fork is inherited by the
 * child. Calls that cannot fail in a way that matters (close, munmap,
 * getpid, clock_gettime, sigprocmask) stay direct. */
struct stat;
struct msghdr;
struct timespec;
struct mp__sys {
    /* processes and threads */
    pid_t (*fork)(void);
    int (*waitid)(idtype_t type, id_t id, siginfo_t *si, int options);
    int (*pidfd_open)(pid_t pid, unsigned flags);
    int (*pidfd_send_signal)(int pidfd, int sig);
    int (*pthread_create)(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);
    /* descriptors */
    int (*pipe2)(int fds[2], int flags);
    int (*socketpair)(int domain, int type, int protocol, int fds[2]);
    int (*eventfd)(unsigned initval, int flags);
    int (*open)(const char *path, int flags, mode_t mode);
    int (*shm_open)(const char *name, int flags, mode_t mode);
    int (*fcntl)(int fd, int cmd, long arg); /* a pointer argument passes as a long */
    int (*fstat)(int fd, struct stat *st);
    /* memory */
    void *(*malloc)(size_t n);
    void *(*calloc)(size_t n, size_t size);
    void *(*realloc)(void *p, size_t n);
    int (*memfd_create)(const char *name, unsigned flags);
    int (*ftruncate)(int fd, off_t len);
    void *(*mmap)(void *addr, size_t len, int prot, int flags, int fd, off_t off);
    int (*fallocate)(int fd, int mode, off_t off, off_t len);
    /* I/O and waits */
    ssize_t (*read)(int fd, void *buf, size_t n);
    ssize_t (*write)(int fd, const void *buf, size_t n);
    ssize_t (*sendmsg)(int fd, const struct msghdr *m, int flags);
    ssize_t (*recvmsg)(int fd, struct msghdr *m, int flags);
    int (*poll)(struct pollfd *pf, nfds_t n, int ms);
    int (*ppoll)(struct pollfd *pf, nfds_t n, const struct timespec *ts, const sigset_t *mask);
    /* futex(2) with FUTEX_WAIT_BITSET or FUTEX_WAKE(_PRIVATE): the one
     * multiplexed call, its unused arguments left out */
    long (*futex)(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts, uint32_t mask);
    long (*futex_waitv)(void *waiters, unsigned n, const struct timespec *ts); /* CLOCK_MONOTONIC */
};
extern struct mp__sys mp__sys;
void mp__sys_reset(void); /* back to the real calls (tests) */

/* Test hooks: a test sets mp__hook, and the library calls it with the name of
 * the point it has reached (MP__HOOK in the code), so that a test can kill a
 * process at an exact step of a protocol. NULL (always, outside tests): one
 * load and a branch, only on slow paths. */
extern void (*mp__hook)(const char *where);
#define MP__HOOK(where)                                                        \
    do {                                                                       \
        if (__builtin_expect(mp__hook != NULL, 0))                             \
            mp__hook(where);                                                   \
    } while (0)

/* close() that keeps errno and ignores EINTR (never retried: the fd is gone). */
void mp__close(int fd);

/* ---- time (time.c) ----------------------------------------------------- */
#define MP__NEVER INT64_MAX /* a deadline that never comes */

int64_t mp__now_ns(void); /* CLOCK_MONOTONIC */
/* Turns a relative timeout in seconds into an absolute CLOCK_MONOTONIC
 * deadline in ns: MP__NEVER for negative, now for 0. MP_EINVAL for NaN. */
int mp__deadline(double timeout, int64_t *deadline);

/* ---- interrupts and interruptible waits (wait.c) ------------------------
 * mp_interrupt() bumps a process-local generation and wakes every wait in
 * progress. A wait claims a slot first, so the interrupter can find it. */
typedef struct mp__waiter {
    unsigned gen;  /* interrupt generation at entry */
    unsigned taken; /* the generation it marked delivered, if it did */
    int slot;      /* index in the slot table, or -1 (then it polls in slices) */
    bool claimed;  /* a slot was looked for (mp__wait_fd) */
} mp__waiter;

/* Enter a blocking call: MP_EINTR if an interrupt is pending (consuming it),
 * else 0 with w set up. Pair with mp__wait_end. */
int mp__wait_begin(mp__waiter *w);
void mp__wait_end(mp__waiter *w);
/* Waits until fd is readable, the deadline passes or an interrupt comes.
 * 1 readable, MP_ETIMEDOUT, MP_EINTR (consumed), -errno. */
int mp__wait_fd(mp__waiter *w, int fd, int64_t deadline);
/* Waits until one of pf[0..n) has an event it asks for (or an error or
 * hang-up), the deadline passes or an interrupt comes: how many are ready
 * (revents set), MP_ETIMEDOUT, MP_EINTR (consumed), -EBADF for a closed fd,
 * -errno. pf must have room for n + 1 entries: the last is the wait's own.
 * A deadline already past still polls once. */
int mp__wait_poll(mp__waiter *w, struct pollfd *pf, int n, int64_t deadline);
/* true if an interrupt came since w began (and consumes it). */
bool mp__wait_interrupted(mp__waiter *w);
/* After a wait that consumed an interrupt, leaves it pending instead, for
 * the next blocking call (when the call reports something else). */
void mp__wait_keep_interrupt(mp__waiter *w);
/* The process-local interrupt generation, as a futex word. */
_Atomic uint32_t *mp__intr_word(void);

/* ---- futexes (futex.c) ---------------------------------------------------
 * Shared futexes: the words live in memory shared across the family. */
/* Sleeps while *addr == val, until woken, the deadline, or an interrupt.
 * 0 (woken, value changed, or spurious: recheck), MP_ETIMEDOUT, MP_EINTR.
 * w must come from mp__wait_begin; NULL makes the wait deaf to interrupts
 * (for the library's own short critical sections, such as the allocator's). */
int mp__futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t deadline, mp__waiter *w);
int mp__futex_wake(_Atomic uint32_t *addr, int n); /* how many it woke, or -errno */
void mp__futex_wake_private(_Atomic uint32_t *addr, int n); /* async-signal-safe */
static inline void mp__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* ---- adaptive spinning (spin.c) -----------------------------------------
 * Shared, 16 bytes, zero = fresh. A waiter spins before it sleeps only while
 * the peer it waits for runs on another CPU; see spin.c. */
typedef struct mp__spinner {
    _Atomic uint32_t budget; /* ns; 0: the initial budget */
    _Atomic int32_t cpu;     /* 1 + the CPU its last waker ran on; 0: not known */
    _Atomic int64_t stamp;   /* CLOCK_MONOTONIC ns when a waker last woke sleepers */
} mp__spinner;
/* A waker that changed the word: notes its CPU. */
void mp__spin_note(mp__spinner *sp);
/* A waker about to wake sleepers: notes its CPU and the time. */
void mp__spin_stamp(mp__spinner *sp);
/* Polls *word until it differs from val, for the learnt budget or until dl;
 * not at all if the last waker ran on this CPU. *start: when the spin began
 * (0: it did not). true if the word changed. */
bool mp__spin(mp__spinner *sp, _Atomic uint32_t *word, uint32_t val, int64_t dl, int64_t *start);
/* After the sleep that followed mp__spin; came: what it waited for came. */
void mp__spin_learn(mp__spinner *sp, int64_t start, bool came);

/* ---- the owner lock (olock.c) ----------------------------------------------
 * A process-shared mutex that survives its holder's death; every lock of the
 * library (and the arena's allocator) is one. 8 bytes, zero = unlocked, so
 * zeroed shared memory is a ready lock. Any thread of any process of the
 * family may release it. See olock.c for the word's layout and for how the
 * kernel tells who lives. */
typedef struct mp__olock { _Atomic uint64_t w; } mp__olock;

/* Gives the owner lock the family's file (whose byte-range locks say which
 * processes live) and a zeroed counter in shared memory for the tokens. The
 * arena calls it at load, before any fork; until then no process can own a
 * lock. */
void mp__olock_setup(int fd, _Atomic uint32_t *serial);

/* 0 acquired; MP_EOWNERDEAD acquired, and the previous holder's process died
 * holding it (noticed within ~mp__check_ns of sleeping on it); MP_ETIMEDOUT;
 * MP_EINTR; MP_ENOMEM if this process could not register (w non-NULL; the
 * library's own sections, w NULL, retry instead). w: from mp__wait_begin, or
 * NULL for a wait that no interrupt ends. */
int mp__olock_acquire(mp__olock *l, int64_t deadline, mp__waiter *w);
bool mp__olock_try(mp__olock *l); /* never blocks */
int mp__olock_release(mp__olock *l); /* 0, or MP_EPERM if it was not locked */
static inline bool mp__olock_held(const mp__olock *l)
{
    return (uint32_t)atomic_load_explicit(&((mp__olock *)l)->w, memory_order_relaxed) != 0;
}
/* The pid of the process holding it, 0 if free. */
static inline pid_t mp__olock_owner(const mp__olock *l)
{
    return (pid_t)((uint32_t)atomic_load_explicit(&((mp__olock *)l)->w, memory_order_relaxed) & 0x3fffffffu);
}
/* This process's identity: token << 32 | pid, registered with the kernel on
 * first use; 0 if it could not register. Never repeats in the family. */
uint64_t mp__olock_self(void);
/* Whether the process with this identity (a lock word; WAITERS is ignored)
 * still lives, in the kernel's word. UNKNOWN when the kernel could not be
 * asked: ask again later, never take it for dead. */
enum { MP__OWNER_ALIVE, MP__OWNER_DEAD, MP__OWNER_UNKNOWN };
int mp__owner_state(uint64_t id);
/* How often sleepers look for a dead owner or a lost wake-up (ns; tests may
 * stretch it to prove that a wake-up needs no such look). */
extern int64_t mp__check_ns;

/* ---- pidfd (pidfd.c) ----------------------------------------------------- */
int mp__pidfd_open(pid_t pid);          /* close-on-exec pidfd, or -errno */
int mp__pidfd_signal(int pidfd, int sig); /* 0, or -errno (ESRCH once reaped) */
/* Reaps the process if it has ended. 1 with *status set (code, or -signal),
 * 0 if it still runs, -errno. */
int mp__pidfd_reap(int pidfd, int *status);

/* ---- fork protocol (fork.c) -----------------------------------------------
 * mp__fork flushes every stdio stream, blocks all signals across fork (so
 * no handler of the parent runs in the half-made child) and forks through
 * the seam. In both processes *mask receives the caller's mask, to restore
 * with mp__fork_restore once the caller's post-fork work is done. */
pid_t mp__fork(sigset_t *mask); /* pid, 0 in the child, -errno (mask restored) */
void mp__fork_restore(const sigset_t *mask);

/* ---- lifeline (lifeline.c) ---------------------------------------------
 * Children die with their parent process, however it dies, whichever thread
 * started them. Each child gets a pipe of its own: the parent holds the only
 * write end (every fork's child closes the write ends it inherited), and the
 * child the read end, armed so that the kernel sends the child SIGKILL when
 * the write end closes: F_SETSIG(SIGKILL) and O_ASYNC before the fork, the
 * owner (F_SETOWN_EX, the child) after it, last. A process's descriptors
 * close when its last thread ends, however it ends, so this follows the
 * process, not a thread (PR_SET_PDEATHSIG follows the thread that forked),
 * and needs no /proc. The write end is close-on-exec, so a parent's exec
 * also ends its children: the program that made the family is gone.
 *
 * The child waits until it sees itself armed, which is also how the parent
 * releases it once it holds the child's pidfd; if the write end closes
 * first (the parent died, or gave up on the start) it exits without running
 * anything. So the parent can always back out of a start without a signal:
 * it closes the write end. */
typedef struct mp__lifeline {
    int r; /* the child's end; closed in the parent by mp__lifeline_bind */
    int w; /* the parent's end: mp__lifeline_drop once the child is reaped */
} mp__lifeline;
int mp__lifeline_new(mp__lifeline *l);             /* parent, before fork; 0 or -errno */
int mp__lifeline_bind(mp__lifeline *l, pid_t child); /* parent, after fork: arms and releases */
void mp__lifeline_drop(int w);                     /* parent: closes a write end (no-op for -1) */
void mp__lifeline_await(int r);                    /* child: returns once armed, or _exits */

/* ---- CPUs (cpu.c) -------------------------------------------------------- */
int mp__cpu_online(void);
int mp__cpu_usable(void);

/* ---- the arena's memory (memfd.c) ------------------------------------------
 * One sparse memfd ("mproc-arena", close-on-exec), mapped MAP_SHARED |
 * MAP_NORESERVE before any child exists, so every process of the family sees
 * it at the same address. Nothing is named in /dev/shm: the kernel frees it
 * with the last process that maps it. Pages are committed with fallocate
 * before anyone touches them (a fault on an unbacked shmem page is SIGBUS
 * under strict overcommit; fallocate says ENOMEM/ENOSPC instead) and given
 * back by punching holes, after which they read as zero. */
#define MP__REGION_MAX ((size_t)1 << 40) /* 1 TiB of address space */
#define MP__REGION_MIN ((size_t)16 << 20) /* the floor of the halving */

typedef struct mp__region {
    char *base; /* NULL when nothing is reserved */
    size_t size;
    int fd;     /* -1 when nothing is reserved */
} mp__region;

/* MPROC_ARENA_SIZE (bytes, optional K/M/G/T suffix, clamped to 4 MiB..1 TiB,
 * rounded up to 64 KiB) if set and valid, else MP__REGION_MAX. */
size_t mp__region_want(void);
/* Reserves want bytes, halving while the system refuses (RLIMIT_AS, no
 * address space) down to min(floor, want); excluded from core dumps.
 * 0, or -errno with r->base NULL and r->fd -1. */
int mp__region_reserve(mp__region *r, size_t want, size_t floor);
void mp__region_unmap(mp__region *r); /* unmaps and closes (tests) */
/* Backs [off, off+len) with memory: 0, or -errno (ENOMEM, ENOSPC: none to
 * be had; then part of the range may be backed). Retries EINTR. */
int mp__region_commit(const mp__region *r, size_t off, size_t len);
/* Gives [off, off+len) back; it reads as zero afterwards. 0 or -errno. */
int mp__region_release(const mp__region *r, size_t off, size_t len);
/* Bytes of memory backing the region now (st_blocks), or -errno. */
int64_t mp__region_backed(const mp__region *r);

#endif /* MPROC_OS_H */
