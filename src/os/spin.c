/*
 * Adaptive spinning, and never against the peer we wait for.
 *
 * A waiter may spin before it sleeps: a peer running on another CPU answers
 * in well under a microsecond, while a sleep and its wake-up cost tens of
 * microseconds. But a spin only pays while the peer runs elsewhere. A peer
 * that shares our CPU (pinned there, or more runnable processes than CPUs)
 * cannot run while we spin, so the answer always comes "just after" the spin
 * and the spin is pure delay: a same-CPU ping-pong spun its whole budget at
 * every round trip and cost 14 times a plain futex wait.
 *
 * So wakers leave their CPU in the spinner (sched_getcpu reads it from the
 * rseq area or the vDSO: a few ns), and a waiter whose last waker ran on its
 * own CPU does not spin at all: it sleeps at once, as a plain futex wait
 * does. Otherwise it spins for the learnt budget: a waker that wakes
 * sleepers stamps the time, so a waiter that slept learns how long it would
 * have had to spin. If that was within MP__SPIN_MAX_NS (about what sleeping
 * costs) and the waker ran on another CPU, the budget grows to cover it;
 * if not, or if nothing came, the spin was wasted and the budget halves,
 * down to MP__SPIN_MIN_NS. A waker on our own CPU teaches nothing (its delay
 * was ours). Races on these fields only blur the estimate.
 */
#include "os.h"

#include <sched.h>

#define MP__SPIN_MIN_NS 1000   /* spins shrink to this when they keep failing, */
#define MP__SPIN_INIT_NS 20000 /* start at this, */
#define MP__SPIN_MAX_NS 50000  /* and grow to at most this: what a sleep costs */

static inline int32_t cpu_tag(void)
{
    int c = sched_getcpu();
    return c >= 0 ? c + 1 : 0;
}

void mp__spin_note(mp__spinner *sp)
{
    int32_t c = cpu_tag();
    if (atomic_load_explicit(&sp->cpu, memory_order_relaxed) != c)
        atomic_store_explicit(&sp->cpu, c, memory_order_relaxed);
}

void mp__spin_stamp(mp__spinner *sp)
{
    mp__spin_note(sp);
    atomic_store_explicit(&sp->stamp, mp__now_ns(), memory_order_relaxed);
}

bool mp__spin(mp__spinner *sp, _Atomic uint32_t *word, uint32_t val, int64_t dl, int64_t *start)
{
    int32_t peer = atomic_load_explicit(&sp->cpu, memory_order_relaxed);
    if (peer != 0 && peer == cpu_tag()) {
        *start = 0; /* it would wait for us: sleep at once */
        return false;
    }
    /* a few polls first, before a clock read: the answer is often that near */
    for (int i = 0; i < 32; i++) {
        if (atomic_load_explicit(word, memory_order_acquire) != val) {
            *start = 0;
            return true;
        }
        mp__cpu_relax();
    }
    uint32_t budget = atomic_load_explicit(&sp->budget, memory_order_relaxed);
    int64_t end = (*start = mp__now_ns()) + (budget ? budget : MP__SPIN_INIT_NS);
    end = end < dl ? end : dl;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(word, memory_order_acquire) != val)
            return true;
        mp__cpu_relax();
        if (i % 16 == 0 && mp__now_ns() >= end) /* a clock read costs a pause */
            return false;
    }
}

void mp__spin_learn(mp__spinner *sp, int64_t start, bool came)
{
    if (start == 0)
        return; /* it did not spin */
    int64_t at = atomic_load_explicit(&sp->stamp, memory_order_relaxed);
    if (at < start) /* no stamp of this wake (yet): it came just now */
        at = mp__now_ns();
    int64_t need = (at - start) * 3 / 2;
    int32_t peer = atomic_load_explicit(&sp->cpu, memory_order_relaxed);
    bool elsewhere = peer == 0 || peer != cpu_tag();
    uint32_t was = atomic_load_explicit(&sp->budget, memory_order_relaxed);
    uint32_t b = was ? was : MP__SPIN_INIT_NS;
    if (came && elsewhere && need <= MP__SPIN_MAX_NS)
        b = need > b ? (uint32_t)need : b;
    else
        b = b / 2 > MP__SPIN_MIN_NS ? b / 2 : MP__SPIN_MIN_NS;
    if (b != was) /* the line is shared: write it only to change it */
        atomic_store_explicit(&sp->budget, b, memory_order_relaxed);
}
