/*
 * Interrupts and interruptible waits.
 *
 * mp_interrupt() must be async-signal-safe and must reach every blocked call
 * of the process. It cannot take a lock, so the waits publish themselves in a
 * fixed table of slots: a wait claims a slot (an atomic flag), then reads the
 * interrupt generation, then sleeps on its fd plus the slot's eventfd. The
 * interrupter bumps the generation, then writes to the eventfd of every
 * claimed slot. Both sides use sequentially consistent atomics, so either the
 * waiter sees the new generation before it sleeps, or the interrupter sees
 * the claimed slot and wakes it (the Dekker pattern). A wait that finds no
 * free slot sleeps in slices of MP__SLICE_MS and checks the generation
 * between them, which still meets the 50 ms promise.
 *
 * Futex waits (futex.c) need no slot: they sleep on the object's word and on
 * the generation word at once (futex_waitv), and mp_interrupt wakes the
 * generation word.
 *
 * "Consumed": an interrupt wakes every wait that began before it; the first
 * call that begins after it, if none was waiting, returns MP_EINTR at once.
 * `seen` records the last generation that was delivered. It only moves
 * forward, and only by compare-and-swap: a call that begins takes a pending
 * interrupt by moving `seen` from the value it read to the generation it
 * read, so of several calls that begin at once exactly one wins it, and a
 * late store can never move `seen` back and re-arm an interrupt already used.
 */
#include "os.h"

#include "mproc.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MP__SLOTS 64
#define MP__SLICE_MS 20

struct slot {
    atomic_int busy;
    atomic_int efd; /* created on first use, kept; -1 before */
};

static atomic_uint gen;  /* bumped by every mp_interrupt */
static atomic_uint seen; /* the last generation delivered */
static struct slot slots[MP__SLOTS];

static void wake_slot(struct slot *s)
{
    int fd = atomic_load(&s->efd);
    if (fd >= 0) {
        uint64_t one = 1;
        ssize_t r = mp__sys.write(fd, &one, sizeof one);
        (void)r; /* EAGAIN: the counter is already non-zero, the wake is there */
    }
}

_Atomic uint32_t *mp__intr_word(void) { return (_Atomic uint32_t *)&gen; }

void mp_interrupt(void)
{
    int e = errno;
    atomic_fetch_add(&gen, 1);
    mp__futex_wake_private(mp__intr_word(), INT_MAX); /* the futex waits */
    for (int i = 0; i < MP__SLOTS; i++)
        if (atomic_load(&slots[i].busy))
            wake_slot(&slots[i]);
    errno = e;
}

static int claim_slot(void)
{
    for (int i = 0; i < MP__SLOTS; i++) {
        int expect = 0;
        if (atomic_load_explicit(&slots[i].busy, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong(&slots[i].busy, &expect, 1)) {
            if (atomic_load(&slots[i].efd) < 0) {
                int fd = mp__sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (fd < 0) {
                    atomic_store(&slots[i].busy, 0);
                    return -1;
                }
                atomic_store(&slots[i].efd, fd);
            }
            return i;
        }
    }
    return -1;
}

/* Marks generation g delivered, unless a later one already is. */
static void deliver(unsigned g)
{
    unsigned s = atomic_load(&seen);
    while ((int)(g - s) > 0 && !atomic_compare_exchange_weak(&seen, &s, g))
        ;
}

int mp__wait_begin(mp__waiter *w)
{
    w->slot = -1;
    w->claimed = false;
    w->taken = 0;
    unsigned s = atomic_load(&seen), g = atomic_load(&gen);
    while (g != s) {
        if (atomic_compare_exchange_weak(&seen, &s, g)) {
            w->gen = s;
            w->taken = g;
            return MP_EINTR; /* ours alone */
        }
        g = atomic_load(&gen); /* s has the new seen: look again */
    }
    w->gen = g;
    return 0;
}

void mp__wait_end(mp__waiter *w)
{
    if (w->slot < 0)
        return;
    /* A wake-up left in the eventfd is harmless: the next wait on this slot
     * finds it, reads it and goes on waiting (see mp__wait_fd). */
    atomic_store(&slots[w->slot].busy, 0);
    w->slot = -1;
}

void mp__wait_keep_interrupt(mp__waiter *w)
{
    /* Back to where it was, unless another call has moved it since. */
    unsigned t = w->taken;
    if (t != w->gen)
        atomic_compare_exchange_strong(&seen, &t, w->gen);
}

bool mp__wait_interrupted(mp__waiter *w)
{
    unsigned g = atomic_load(&gen);
    if (g == w->gen)
        return false;
    deliver(g);
    w->taken = g;
    return true;
}

int mp__wait_poll(mp__waiter *w, struct pollfd *pf, int n, int64_t deadline)
{
    if (!w->claimed) { /* claimed before the generation is read again: see top */
        w->claimed = true;
        w->slot = claim_slot();
    }
    pf[n] = (struct pollfd){
        .fd = w->slot >= 0 ? atomic_load(&slots[w->slot].efd) : -1, .events = POLLIN};
    for (;;) {
        if (mp__wait_interrupted(w))
            return MP_EINTR;
        int64_t now = deadline == MP__NEVER ? 0 : mp__now_ns();
        bool last = deadline != MP__NEVER && now >= deadline;
        int64_t left = deadline == MP__NEVER ? -1 : last ? 0 : deadline - now;
        struct timespec ts, *tsp = NULL;
        if (w->slot < 0 && (left < 0 || left > MP__SLICE_MS * 1000000LL))
            left = MP__SLICE_MS * 1000000LL;
        if (left >= 0) {
            ts.tv_sec = left / 1000000000;
            ts.tv_nsec = left % 1000000000;
            tsp = &ts;
        }
        /* the last look (a timeout of 0 still polls once) leaves the
         * interrupt's eventfd out: it must not pass for readiness */
        int r = mp__sys.ppoll(pf, (nfds_t)(last ? n : n + 1), tsp, NULL);
        if (r < 0 && errno != EINTR)
            return -errno;
        int ready = 0;
        for (int i = 0; r > 0 && i < n; i++) {
            if (pf[i].revents & POLLNVAL)
                return -EBADF;
            ready += pf[i].revents != 0;
        }
        if (ready)
            return ready;
        if (last)
            return MP_ETIMEDOUT;
        if (r > 0 && pf[n].revents) { /* an interrupt, or a stale wake: drop it */
            uint64_t c;
            ssize_t rr = mp__sys.read(pf[n].fd, &c, sizeof c);
            (void)rr;
        }
    }
}

int mp__wait_fd(mp__waiter *w, int fd, int64_t deadline)
{
    struct pollfd pf[2] = {{.fd = fd, .events = POLLIN}};
    int r = mp__wait_poll(w, pf, 1, deadline);
    return r > 0 ? 1 : r;
}

/* In the child of a fork, the slots' eventfds are the parent's objects. Drop
 * them (closing is async-signal-safe) and start with no pending interrupt. */
static void atfork_child(void)
{
    for (int i = 0; i < MP__SLOTS; i++) { /* writes only what was used: fewer page copies */
        int fd = atomic_load(&slots[i].efd);
        if (fd >= 0) {
            mp__close(fd);
            atomic_store(&slots[i].efd, -1);
        }
        if (atomic_load(&slots[i].busy))
            atomic_store(&slots[i].busy, 0);
    }
    if (atomic_load(&seen) != atomic_load(&gen))
        atomic_store(&seen, atomic_load(&gen));
}

__attribute__((constructor)) static void wait_init(void)
{
    for (int i = 0; i < MP__SLOTS; i++)
        atomic_store(&slots[i].efd, -1);
    pthread_atfork(NULL, NULL, atfork_child);
}
