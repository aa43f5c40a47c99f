/*
 * The owner lock: a process-shared mutex that a dead holder cannot wedge.
 *
 * The kernel's robust-futex list would clean up after a dead holder, but each
 * thread has one list head and the C library owns it (set_robust_list(2)).
 * So the lock word names its owner instead, and a waiter that has slept a
 * while asks the kernel whether the owner still lives:
 *
 *   bits  0..29  the owner's pid (pid_max is at most 2^22)   \  the futex:
 *   bit   31     WAITERS: someone may sleep on the word       /  low 32 bits
 *   bits 32..63  the owner's token: a serial number, family-wide
 *
 * Who lives: every process of the family that takes a lock first registers.
 * It draws a token from a counter in shared memory (never repeats until 2^32
 * processes later, and then only with the same pid too) and takes a POSIX
 * record lock on one byte of the family's file (the arena's memfd), at an
 * offset made of its pid and token. The kernel drops a process's record locks
 * when the process ends, however it ends (SIGKILL included), before it even
 * becomes a zombie, and never while any of its threads runs. A waiter asks
 * with F_GETLK whether that byte is still held: unheld means the owner has
 * ended. So life and death are the kernel's word, with no /proc, no pid
 * namespace to get wrong, no pid that can be reused under us (the token is
 * part of the byte), and no descriptor to open (a waiter at its descriptor
 * limit still sees). A check that fails says nothing, and the waiter asks
 * again later: a live holder is never declared dead.
 *
 * The one rule this needs: a process's record locks on a file go with any
 * close() of any descriptor of that file by that process. The library never
 * duplicates or closes the arena's descriptor; a program that closes
 * descriptors it does not own (closefrom without exec) has already lost its
 * arena in that process, and with it the claim to hold a lock.
 *
 * Uncontended acquire is one compare-and-swap, release one exchange: no
 * system call. A contended acquire spins briefly, then sleeps on the futex;
 * every mp__check_ns of sleep it checks the owner, and takes the lock over
 * with MP_EOWNERDEAD if it has ended. The same check wakes it if a release's
 * wake went to a waiter that died before it could take the lock.
 */
#include "os.h"

#include "mproc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#define WAITERS 0x80000000u
#define PID_MASK 0x3fffffffu
#define ID_MASK (~(uint64_t)WAITERS) /* a word without WAITERS: token << 32 | pid */
#define SPIN 100
#define LIVE_BASE ((off_t)1 << 62) /* liveness bytes: far past any data */

int64_t mp__check_ns = 250000000;

static int live_fd = -1;               /* the family's file: liveness bytes */
static _Atomic uint32_t *live_serial;  /* the family's token counter */
static _Atomic uint64_t self_word;     /* token << 32 | pid; 0: not registered */
static pthread_mutex_t enroll_mu = PTHREAD_MUTEX_INITIALIZER; /* one registration at a time */

void mp__olock_setup(int fd, _Atomic uint32_t *serial)
{
    live_fd = fd;
    live_serial = serial;
}

static off_t live_byte(uint64_t id)
{
    return LIVE_BASE | (off_t)((id & PID_MASK) << 32 | id >> 32);
}

static struct flock byte_lock(uint64_t id)
{
    return (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = live_byte(id), .l_len = 1};
}

/* Registers this process: 0, or -errno (then it holds no lock). */
static int enroll(void)
{
    if (live_fd < 0 || !live_serial)
        return -ENOLCK;
    uint32_t pid = (uint32_t)getpid();
    for (int tries = 0; tries < 4; tries++) {
        uint32_t token = atomic_fetch_add(live_serial, 1) + 1;
        if (token == 0)
            continue; /* 0 means "no token" */
        uint64_t id = (uint64_t)token << 32 | pid;
        struct flock fl = byte_lock(id);
        if (mp__sys.fcntl(live_fd, F_SETLK, (long)&fl) == 0) {
            atomic_store_explicit(&self_word, id, memory_order_relaxed);
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES)
            return -errno;
        /* Held by a live process: only after the counter wrapped. Draw again. */
    }
    return -ENOLCK;
}

static inline uint64_t self(void)
{
    uint64_t s = atomic_load_explicit(&self_word, memory_order_relaxed);
    if (__builtin_expect(s == 0, 0)) {
        pthread_mutex_lock(&enroll_mu);
        if (!(s = atomic_load_explicit(&self_word, memory_order_relaxed)) && enroll() == 0)
            s = atomic_load_explicit(&self_word, memory_order_relaxed);
        pthread_mutex_unlock(&enroll_mu);
    }
    return s;
}

uint64_t mp__olock_self(void) { return self(); }

int mp__owner_state(uint64_t id)
{
    id &= ID_MASK;
    if ((uint32_t)id == 0 || (id >> 32) == 0)
        return MP__OWNER_UNKNOWN; /* not an identity this library wrote */
    uint64_t me = self();
    if (id == me)
        return MP__OWNER_ALIVE; /* F_GETLK never reports our own locks */
    struct flock fl = byte_lock(id);
    if (live_fd < 0 || mp__sys.fcntl(live_fd, F_GETLK, (long)&fl) < 0)
        return MP__OWNER_UNKNOWN;
    return fl.l_type == F_UNLCK ? MP__OWNER_DEAD : MP__OWNER_ALIVE;
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
    uint64_t zero = 0, me = self();
    return me && atomic_compare_exchange_strong_explicit(&l->w, &zero, me, memory_order_acquire,
                                                         memory_order_relaxed);
}

/* Registration failed: an interruptible call reports it; the library's own
 * short sections (no waiter) retry, as the failure is a passing shortage. */
static int unregistered(int64_t deadline, const mp__waiter *w, uint64_t *me)
{
    while (!(*me = self())) {
        if (w)
            return MP_ENOMEM;
        if (deadline != MP__NEVER && mp__now_ns() >= deadline)
            return MP_ETIMEDOUT;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return 0;
}

int mp__olock_acquire(mp__olock *l, int64_t deadline, mp__waiter *w)
{
    uint64_t me = self(), cur = 0;
    if (__builtin_expect(!me, 0)) {
        int err = unregistered(deadline, w, &me);
        if (err)
            return err;
    }
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
    int64_t check = mp__now_ns() + mp__check_ns;
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
        MP__HOOK("olock.sleep");
        int r = mp__futex_wait(futex_word(l), (uint32_t)cur, deadline < check ? deadline : check, w);
        if (r == MP_EINTR) {
            leave(l);
            return r;
        }
        MP__HOOK("olock.woken");
        int64_t now = mp__now_ns();
        if (now >= check) {
            check = now + mp__check_ns;
            uint64_t seen = atomic_load(&l->w);
            /* The whole identity, never the pid alone: a process that got a
             * dead holder's pid back is not that holder. */
            if ((uint32_t)seen != 0 && (seen & ID_MASK) != me &&
                mp__owner_state(seen) == MP__OWNER_DEAD &&
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

/* The child of a fork holds no record lock: it registers anew on first use. */
static void atfork_child(void)
{
    if (atomic_load_explicit(&self_word, memory_order_relaxed)) /* no write, no page copy */
        atomic_store_explicit(&self_word, 0, memory_order_relaxed);
    enroll_mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
}

__attribute__((constructor)) static void olock_init(void) { pthread_atfork(NULL, NULL, atfork_child); }
