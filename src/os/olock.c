/*
 * The owner lock: a process-shared mutex that a dead holder cannot wedge.
 *
 * The kernel's robust-futex list would clean up after a dead holder, but each
 * thread has one list head and the C library owns it (set_robust_list(2)).
 * So the lock word names its owner instead, and a waiter that has slept a
 * while checks whether the owner still lives:
 *
 *   bits  0..29  the owner's pid (pid_max is at most 2^22)   \  the futex:
 *   bit   31     WAITERS: someone may sleep on the word       /  low 32 bits
 *   bits 32..63  the owner's token: the low 32 bits of its start time
 *
 * The token tells a dead owner from a new process that got its pid back.
 * Uncontended acquire is one compare-and-swap, release one exchange: no
 * system call. A contended acquire spins briefly, then sleeps on the futex;
 * every CHECK_NS of sleep it checks the owner: a different start time in
 * /proc/<pid>/stat, or a pidfd that says the whole process has ended, means
 * the owner died, and the waiter takes the lock over with MP_EOWNERDEAD.
 */
#include "os.h"

#include "mproc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAITERS 0x80000000u
#define PID_MASK 0x3fffffffu
#define SPIN 100
#define CHECK_NS 250000000LL

static uint64_t self_word; /* token << 32 | pid; 0 until first use in this process */

/* Reads pid's state letter and start time from /proc. -errno on failure. */
static int proc_stat(pid_t pid, char *state, unsigned long long *start)
{
    char path[32], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    mp__close(fd);
    if (n <= 0)
        return n < 0 ? -e : -ESRCH;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the name may hold spaces and ')' */
    if (!p || p[1] != ' ')
        return -EINVAL;
    *state = p[2];
    /* After ") S": fields 4..22; the start time is field 22. */
    p += 2;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -EINVAL;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

static uint64_t compute_self(void)
{
    pid_t pid = getpid();
    char st;
    unsigned long long start = 0;
    uint32_t token = proc_stat(pid, &st, &start) == 0 ? (uint32_t)start : 0;
    return (uint64_t)token << 32 | (uint32_t)pid;
}

static inline uint64_t self(void)
{
    uint64_t s = atomic_load_explicit((_Atomic uint64_t *)&self_word, memory_order_relaxed);
    if (__builtin_expect(s == 0, 0)) {
        s = compute_self();
        atomic_store_explicit((_Atomic uint64_t *)&self_word, s, memory_order_relaxed);
    }
    return s;
}

uint64_t mp__olock_self(void) { return self(); }

bool mp__proc_dead(pid_t pid, uint32_t token)
{
    /* A start time that differs: the pid now names another process. */
    char st;
    unsigned long long start;
    int r = proc_stat(pid, &st, &start);
    if (r == -ENOENT || r == -ESRCH)
        return true;
    if (r == 0 && token != 0 && (uint32_t)start != token)
        return true;
    /* Not the state letter: a leader thread that has exited shows 'Z' while
     * other threads of its process still run (and may hold the lock). A
     * pidfd is readable only once the whole thread group has ended. */
    int fd = mp__pidfd_open(pid);
    if (fd == -ESRCH)
        return true;
    if (fd < 0)
        return false;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    bool dead = poll(&pf, 1, 0) == 1;
    mp__close(fd);
    return dead;
}

static _Atomic uint32_t *futex_word(mp__olock *l)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (_Atomic uint32_t *)&l->w + 1; /* the low half */
#else
    return (_Atomic uint32_t *)&l->w;
#endif
}

/* A waiter leaves without the lock (timeout, interrupt). A release may have
 * woken it, and no one else: pass that wake on if the lock is free, or make
 * sure the holder's release will wake the others. */
static void leave(mp__olock *l)
{
    uint64_t cur = atomic_load(&l->w);
    for (;;) {
        if ((uint32_t)cur == 0) {
            mp__futex_wake(futex_word(l), 1);
            return;
        }
        if ((cur & WAITERS) || atomic_compare_exchange_weak(&l->w, &cur, cur | WAITERS))
            return;
    }
}

bool mp__olock_try(mp__olock *l)
{
    uint64_t zero = 0;
    return atomic_compare_exchange_strong_explicit(&l->w, &zero, self(), memory_order_acquire,
                                                   memory_order_relaxed);
}

int mp__olock_acquire(mp__olock *l, int64_t deadline, mp__waiter *w)
{
    uint64_t me = self(), cur = 0;
    if (atomic_compare_exchange_strong_explicit(&l->w, &cur, me, memory_order_acquire,
                                                memory_order_relaxed))
        return 0;
    if (deadline != MP__NEVER && mp__now_ns() >= deadline)
        return MP_ETIMEDOUT; /* a poll: no spin, no futex, no wake owed */
    for (int i = 0; i < SPIN; i++) {
        mp__cpu_relax();
        cur = atomic_load_explicit(&l->w, memory_order_relaxed);
        if ((uint32_t)cur == 0 &&
            atomic_compare_exchange_weak_explicit(&l->w, &cur, me, memory_order_acquire,
                                                  memory_order_relaxed))
            return 0;
    }
    int64_t check = mp__now_ns() + CHECK_NS;
    for (;;) {
        cur = atomic_load_explicit(&l->w, memory_order_relaxed);
        if ((uint32_t)cur == 0) {
            /* Others may sleep here too: keep WAITERS so our release wakes one. */
            if (atomic_compare_exchange_weak_explicit(&l->w, &cur, me | WAITERS,
                                                      memory_order_acquire, memory_order_relaxed))
                return 0;
            continue;
        }
        if (!(cur & WAITERS) &&
            !atomic_compare_exchange_weak_explicit(&l->w, &cur, cur | WAITERS,
                                                   memory_order_relaxed, memory_order_relaxed))
            continue;
        cur |= WAITERS;
        int r = mp__futex_wait(futex_word(l), (uint32_t)cur, deadline < check ? deadline : check, w);
        if (r == MP_EINTR) {
            leave(l);
            return r;
        }
        int64_t now = mp__now_ns();
        if (now >= check) {
            check = now + CHECK_NS;
            uint64_t seen = atomic_load(&l->w);
            if ((uint32_t)seen != 0 && (uint32_t)seen != (uint32_t)(me | WAITERS) &&
                (seen & PID_MASK) != (me & PID_MASK) &&
                mp__proc_dead((pid_t)(seen & PID_MASK), (uint32_t)(seen >> 32)) &&
                atomic_compare_exchange_strong(&l->w, &seen, me | WAITERS))
                return MP_EOWNERDEAD;
        }
        if (deadline != MP__NEVER && now >= deadline) {
            if (mp__olock_try(l))
                return 0;
            leave(l);
            return MP_ETIMEDOUT;
        }
    }
}

int mp__olock_release(mp__olock *l)
{
    uint64_t old = atomic_exchange_explicit(&l->w, 0, memory_order_release);
    if ((uint32_t)old == 0)
        return MP_EPERM;
    if (old & WAITERS)
        mp__futex_wake(futex_word(l), 1);
    return 0;
}

static void atfork_child(void) { self_word = 0; }

__attribute__((constructor)) static void olock_init(void) { pthread_atfork(NULL, NULL, atfork_child); }
