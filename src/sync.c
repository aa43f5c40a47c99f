/*
 * Synchronisation: Lock, RLock, Semaphore, Event, Condition, Barrier.
 *
 * Every object lives in the family arena and is used by its address from any
 * process of the family. Each blocking call follows one pattern:
 *
 *   1. NULL object or NaN timeout: MP_EINVAL; a pending mp_interrupt:
 *      MP_EINTR at once (mp__wait_begin);
 *   2. the uncontended path: atomics only, no system call;
 *   3. a spin bounded in time, and adapted to how soon answers come, where
 *      the answer usually comes from a peer running on another CPU (Event,
 *      Semaphore, Barrier; olock spins too), and none at all when the peer
 *      last ran on this CPU (os/spin.c);
 *   4. the timeout becomes one CLOCK_MONOTONIC deadline, and the call sleeps
 *      on a shared futex with mp__futex_wait, which also ends on
 *      mp_interrupt. An interrupt wins over everything else: the call
 *      returns MP_EINTR having taken nothing (a wake-up or a notification
 *      meant for it is passed on to the next waiter).
 *
 * Lost wake-ups: a sleeper announces itself (a waiter count, or the olock's
 * WAITERS bit) with a sequentially consistent read-modify-write before it
 * sleeps, and the futex re-checks the word in the kernel; a waker changes the
 * word with a read-modify-write before it reads the count. One of the two
 * always sees the other (the Dekker pattern, as in musl's sem_post), so no
 * wake is lost, and a wake with no sleeper makes no system call.
 *
 * Owners: Lock is an mp__olock (os/olock.c), whose waiters notice a dead
 * holder. RLock adds the owning thread: its tid (tids are unique across the
 * processes of the family, unlike pthread_self values) with the process's
 * token in the high half (see self_id).
 *
 * Condition: a FIFO queue of waiter nodes guarded by the condition's RLock.
 * Each waiter sleeps on its own node's futex word, so notify(n) wakes exactly
 * the n oldest waiters present when it runs and no one else (Python keeps a
 * deque of waiter locks for the same reason). Nodes are arena blocks owned by
 * the condition and reused; a waiter's stack is not shared memory.
 *
 * Barrier: Python's algorithm, with the "draining" phase replaced by a round
 * counter: the last party to arrive bumps the round, and a waiter is released
 * once the round differs from the one it joined, so the next round may fill
 * while the last one still wakes up. As in Python, wait returns the arrival
 * index: 0 for the first, parties-1 for the last, which runs the action
 * (outside the barrier's lock). Breaking (a timeout, an interrupt, abort, a
 * failed action, a dead party) and resetting follow Python: after a reset the
 * broken parties leave before a new round opens. An interrupted party returns
 * MP_EINTR and breaks the barrier, unless its round was released already.
 * Each party inside records its identity (os/olock.c) in its slot; sleepers
 * look for a dead party every mp__check_ns.
 */
#include "mproc.h"

#include "os/os.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

/* ---- common -------------------------------------------------------------- */

/* Enters a blocking call on obj. */
static int begin(const void *obj, double timeout, mp__waiter *w)
{
    if (!obj || isnan(timeout))
        return MP_EINVAL;
    return mp__wait_begin(w);
}

static int64_t deadline(double timeout)
{
    int64_t d;
    mp__deadline(timeout, &d); /* NaN was refused by begin */
    return d;
}

/* mp__futex_wait until dl, but waking at most mp__check_ns from now, to
 * look again: a wake may have gone to a waiter that died before it acted on
 * it. MP_ETIMEDOUT only once dl has passed. */
static int sleep_looking(_Atomic uint32_t *word, uint32_t val, int64_t dl, mp__waiter *w)
{
    int64_t look = mp__now_ns() + mp__check_ns;
    int r = mp__futex_wait(word, val, dl < look ? dl : look, w);
    return r == MP_ETIMEDOUT && dl > look ? 0 : r;
}

/* Takes an olock that is held only for short sections, or that must be
 * taken whatever happens (a condition's lock after the wait): a NULL waiter
 * makes the wait deaf to interrupts, which stay pending for the caller. */
static int relock(mp__olock *l)
{
    return mp__olock_acquire(l, MP__NEVER, NULL); /* 0 or MP_EOWNERDEAD: held */
}

/* This thread's identity for RLock: the process's token << 32 | tid. tids
 * are unique among the live processes of the family, and the token never
 * repeats (os/olock.c), so a thread of a later process that got a dead
 * owner's pid and tid back is not taken for the owner. Forgotten in the
 * child of a fork. */
static _Thread_local uint64_t self_tls;

static uint64_t self_id(void)
{
    uint64_t s = self_tls;
    if (__builtin_expect(s == 0, 0)) {
        uint64_t me = mp__olock_self();
        s = (me >> 32) << 32 | (uint32_t)gettid();
        if (me) /* unregistered: it cannot own a lock, nor be taken for an owner */
            self_tls = s;
    }
    return s;
}

static void atfork_child(void)
{
    if (self_tls) /* a write would cost the child a page copy */
        self_tls = 0; /* the forking thread is the child's only thread */
}

__attribute__((constructor)) static void sync_init(void) { pthread_atfork(NULL, NULL, atfork_child); }

/* ---- Lock ------------------------------------------------------------------ */

/* Shared layout. The olock is the whole state; anyone may release it. */
struct mp_lock {
    mp__olock ol; /* 0 free; else the holder's pid and token (os/olock.c) */
};
static_assert(sizeof(struct mp_lock) == 8, "mp_lock is shared: fixed layout");

int mp_lock_new(mp_lock **out)
{
    if (!out)
        return MP_EINVAL;
    *out = mp_shared_calloc(1, sizeof **out); /* zero: unlocked */
    return *out ? 0 : MP_ENOMEM;
}

int mp_lock_acquire(mp_lock *l, double timeout)
{
    mp__waiter w;
    int r = begin(l, timeout, &w);
    if (r)
        return r;
    if (mp__olock_try(&l->ol)) /* uncontended: no clock read for the deadline */
        return 0;
    r = mp__olock_acquire(&l->ol, deadline(timeout), &w); /* polls for timeout 0 */
    mp__wait_end(&w);
    return r;
}

int mp_lock_release(mp_lock *l) { return l ? mp__olock_release(&l->ol) : MP_EINVAL; }
bool mp_lock_locked(mp_lock *l) { return l && mp__olock_held(&l->ol); }
void mp_lock_free(mp_lock *l) { mp_shared_free(l); }

/* ---- RLock ----------------------------------------------------------------- */

/* Shared layout. Lock rules: ol is held while the lock is owned; owner and
 * count are written only by the thread holding ol (owner also just before it
 * releases ol); anyone may read owner, to compare it with its own identity,
 * which it can only find there if it wrote it itself. */
struct mp_rlock {
    mp__olock ol;
    _Atomic uint64_t owner; /* self_id() of the owning thread, 0 when free */
    uint32_t count;         /* recursion depth, >= 1 while owned */
    uint32_t pad;
};
static_assert(sizeof(struct mp_rlock) == 24, "mp_rlock is shared: fixed layout");

static bool owns(mp_rlock *l)
{
    return atomic_load_explicit(&l->owner, memory_order_relaxed) == self_id();
}

/* With ol just taken: become the owner. */
static void take(mp_rlock *l, uint32_t count)
{
    atomic_store_explicit(&l->owner, self_id(), memory_order_relaxed);
    l->count = count;
}

/* Gives ol up entirely; returns the recursion depth it had. */
static uint32_t give_up(mp_rlock *l)
{
    uint32_t n = l->count;
    l->count = 0;
    atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
    mp__olock_release(&l->ol); /* a release store: the fields above go first */
    return n;
}

int mp_rlock_new(mp_rlock **out)
{
    if (!out)
        return MP_EINVAL;
    *out = mp_shared_calloc(1, sizeof **out);
    return *out ? 0 : MP_ENOMEM;
}

int mp_rlock_acquire(mp_rlock *l, double timeout)
{
    mp__waiter w;
    int r = begin(l, timeout, &w);
    if (r)
        return r;
    if (owns(l)) {
        if (l->count == UINT32_MAX)
            return -EAGAIN; /* as a recursive pthread mutex */
        l->count++;
        return 0;
    }
    if (!mp__olock_try(&l->ol)) {
        r = mp__olock_acquire(&l->ol, deadline(timeout), &w);
        mp__wait_end(&w);
        if (r != 0 && r != MP_EOWNERDEAD)
            return r;
    }
    take(l, 1);
    return r;
}

int mp_rlock_release(mp_rlock *l)
{
    if (!l)
        return MP_EINVAL;
    if (!owns(l))
        return MP_EPERM;
    if (--l->count == 0)
        give_up(l);
    return 0;
}

bool mp_rlock_locked(mp_rlock *l) { return l && mp__olock_held(&l->ol); }
void mp_rlock_free(mp_rlock *l) { mp_shared_free(l); }

/* ---- Semaphore ------------------------------------------------------------- */

/* Shared layout. No lock: value changes by compare-and-swap only. */
struct mp_sem {
    _Atomic uint32_t value;   /* the count, <= INT_MAX; the futex word */
    _Atomic uint32_t waiters; /* threads about to sleep or asleep on value */
    uint32_t max;             /* 0: unbounded; else value <= max */
    uint32_t pad;
    mp__spinner spin;
};
static_assert(sizeof(struct mp_sem) == 32, "mp_sem is shared: fixed layout");

int mp_sem_new(mp_sem **out, unsigned value, unsigned max)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if (value > INT_MAX || max > INT_MAX || (max > 0 && value > max))
        return MP_EINVAL;
    mp_sem *s = mp_shared_calloc(1, sizeof *s);
    if (!s)
        return MP_ENOMEM;
    atomic_init(&s->value, value);
    s->max = max;
    *out = s;
    return 0;
}

static bool sem_try(mp_sem *s)
{
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    while (v > 0)
        if (atomic_compare_exchange_weak_explicit(&s->value, &v, v - 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return true;
    return false;
}

int mp_sem_acquire(mp_sem *s, double timeout)
{
    mp__waiter w;
    int r = begin(s, timeout, &w);
    if (r)
        return r;
    if (sem_try(s))
        return 0;
    if (timeout == 0)
        return MP_ETIMEDOUT;
    int64_t dl = deadline(timeout), t0;
    if (mp__spin(&s->spin, &s->value, 0, dl, &t0) && sem_try(s))
        return 0;
    for (;;) {
        atomic_fetch_add(&s->waiters, 1);
        r = sleep_looking(&s->value, 0, dl, &w); /* a release's wake may go to one that dies */
        atomic_fetch_sub(&s->waiters, 1);
        if (r == MP_EINTR)
            break;
        MP__HOOK("sem.woken");
        if (sem_try(s)) {
            mp__spin_learn(&s->spin, t0, true);
            return 0;
        }
        if (r == MP_ETIMEDOUT)
            break;
    }
    mp__spin_learn(&s->spin, t0, false);
    /* The wake that ended our sleep may have been meant for a taker: pass it on. */
    if (atomic_load(&s->value) > 0 && atomic_load(&s->waiters) > 0)
        mp__futex_wake(&s->value, 1);
    mp__wait_end(&w);
    return r;
}

int mp_sem_release(mp_sem *s)
{
    if (!s)
        return MP_EINVAL;
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        if (s->max ? v >= s->max : v >= INT_MAX)
            return s->max ? MP_EINVAL : -EOVERFLOW; /* Python: ValueError; sem_post: EOVERFLOW */
    } while (!atomic_compare_exchange_weak(&s->value, &v, v + 1));
    if (atomic_load(&s->waiters) > 0) {
        mp__spin_stamp(&s->spin);
        mp__futex_wake(&s->value, 1);
    } else {
        mp__spin_note(&s->spin);
    }
    return 0;
}

int mp_sem_value(const mp_sem *s)
{
    return s ? (int)atomic_load(&((mp_sem *)s)->value) : MP_EINVAL;
}

void mp_sem_free(mp_sem *s) { mp_shared_free(s); }

/* ---- Event ----------------------------------------------------------------- */

/* Shared layout. No lock. Bit 0 of word is the flag; set also adds 2, so a
 * waiter that saw the flag clear notices any set since, even one cleared
 * again before it looked (Python: wait returns True once set was called). */
struct mp_event {
    _Atomic uint32_t word;    /* the futex word: sets << 1 | flag */
    _Atomic uint32_t waiters; /* threads about to sleep or asleep on word */
    mp__spinner spin;
};
static_assert(sizeof(struct mp_event) == 24, "mp_event is shared: fixed layout");

int mp_event_new(mp_event **out)
{
    if (!out)
        return MP_EINVAL;
    *out = mp_shared_calloc(1, sizeof **out);
    return *out ? 0 : MP_ENOMEM;
}

int mp_event_set(mp_event *e)
{
    if (!e)
        return MP_EINVAL;
    uint32_t v = atomic_load_explicit(&e->word, memory_order_relaxed);
    do {
        if (v & 1)
            return 0; /* no sleeper can be waiting for a set flag */
    } while (!atomic_compare_exchange_weak(&e->word, &v, (v + 2) | 1));
    if (atomic_load(&e->waiters) > 0) {
        mp__spin_stamp(&e->spin);
        mp__futex_wake(&e->word, INT_MAX);
    } else {
        mp__spin_note(&e->spin); /* a spinning waiter is on another CPU: no harm */
    }
    return 0;
}

int mp_event_clear(mp_event *e)
{
    if (!e)
        return MP_EINVAL;
    atomic_fetch_and(&e->word, ~1u);
    return 0;
}

bool mp_event_is_set(mp_event *e)
{
    return e && (atomic_load_explicit(&e->word, memory_order_acquire) & 1);
}

int mp_event_wait(mp_event *e, double timeout)
{
    mp__waiter w;
    int r = begin(e, timeout, &w);
    if (r)
        return r;
    uint32_t v = atomic_load_explicit(&e->word, memory_order_acquire);
    if (v & 1)
        return 0;
    if (timeout == 0)
        return MP_ETIMEDOUT;
    int64_t dl = deadline(timeout), t0;
    if (mp__spin(&e->spin, &e->word, v, dl, &t0))
        return 0;
    for (;;) {
        atomic_fetch_add(&e->waiters, 1);
        r = mp__futex_wait(&e->word, v, dl, &w);
        atomic_fetch_sub(&e->waiters, 1);
        if (r == MP_EINTR)
            break;
        if (atomic_load_explicit(&e->word, memory_order_acquire) != v) {
            r = 0; /* set since we looked */
            break;
        }
        if (r == MP_ETIMEDOUT)
            break;
    }
    mp__spin_learn(&e->spin, t0, r == 0);
    mp__wait_end(&w);
    return r;
}

void mp_event_free(mp_event *e) { mp_shared_free(e); }

/* ---- Condition ------------------------------------------------------------- */

/* A waiter's node, in the arena. */
struct cnode {
    _Atomic uint32_t notified;        /* the futex word: 0 waiting, 1 notified */
    uint32_t pad;
    _Atomic uint64_t owner;           /* the waiter's process (mp__olock_self) */
    struct cnode *_Atomic next;       /* in the queue or among the spares */
    struct cnode *all;                /* every node of the condition, for mp_cond_free */
};
static_assert(sizeof(struct cnode) == 32, "cnode is shared: fixed layout");

/* Shared layout. Lock rules: *lock guards head, spares, all, and every
 * node's next and owner; a node's notified goes 0 -> 1 under *lock (notify)
 * and is read by its waiter with or without it. Arena pointers only.
 *
 * A process may die at any instant while it holds the lock, so every change
 * to the queue or the spares is one store (a link or an unlink) and the
 * queue has no tail pointer to fall out of step with it: a death between two
 * stores leaves both lists whole, at worst with a node on neither (it stays
 * on `all`, and is freed with the condition). A notify marks a waiter before
 * it unlinks and wakes it, and sleepers look at their word now and then, so
 * a notifier that dies midway still notifies. A waiter that died in its wait
 * is found by the notify that reaches it (its futex wake wakes no one, and
 * the kernel says its process has ended): its node is reclaimed and the
 * notification goes to the next waiter. */
struct mp_cond {
    mp_rlock *lock;            /* &own or the caller's RLock; fixed */
    struct cnode *_Atomic head; /* waiting, oldest first; the last one's next is NULL */
    struct cnode *_Atomic spares;
    struct cnode *all;
    mp_rlock own;
};
static_assert(sizeof(struct mp_cond) == 56, "mp_cond is shared: fixed layout");

#define LINK(field, v) atomic_store_explicit(&(field), (v), memory_order_release)
#define NEXT(k) atomic_load_explicit(&(k)->next, memory_order_relaxed)

int mp_cond_new(mp_cond **out, mp_rlock *lock)
{
    if (!out)
        return MP_EINVAL;
    mp_cond *c = mp_shared_calloc(1, sizeof *c);
    if (c)
        c->lock = lock ? lock : &c->own;
    *out = c;
    return c ? 0 : MP_ENOMEM;
}

int mp_cond_acquire(mp_cond *c, double timeout)
{
    return c ? mp_rlock_acquire(c->lock, timeout) : MP_EINVAL;
}

int mp_cond_release(mp_cond *c) { return c ? mp_rlock_release(c->lock) : MP_EINVAL; }

/* With the lock held: k goes to the spares. */
static void spare(mp_cond *c, struct cnode *k)
{
    LINK(k->next, atomic_load_explicit(&c->spares, memory_order_relaxed));
    LINK(c->spares, k);
}

/* With the lock held: wakes the n oldest live waiters. */
static void notify_locked(mp_cond *c, unsigned n)
{
    struct cnode *k;
    while (n > 0 && (k = atomic_load_explicit(&c->head, memory_order_relaxed))) {
        if (atomic_load_explicit(&k->notified, memory_order_relaxed)) {
            LINK(c->head, NEXT(k)); /* marked by a notifier that died: already notified */
            continue;
        }
        atomic_store_explicit(&k->notified, 1, memory_order_release);
        MP__HOOK("cond.notify.marked");
        LINK(c->head, NEXT(k));
        MP__HOOK("cond.notify.unlinked");
        /* No one woken: its waiter has not slept yet, or has ended. */
        if (mp__futex_wake(&k->notified, 1) == 0 &&
            mp__owner_state(atomic_load_explicit(&k->owner, memory_order_relaxed)) == MP__OWNER_DEAD) {
            spare(c, k); /* no one will use it: the notification goes on */
            continue;
        }
        n--;
    }
}

/* With the lock held: takes k out of the queue, if it is there. */
static void unlink_node(mp_cond *c, struct cnode *k)
{
    struct cnode *_Atomic *p = &c->head, *q;
    while ((q = atomic_load_explicit(p, memory_order_relaxed)) && q != k)
        p = &q->next;
    if (q)
        LINK(*p, NEXT(k));
}

/* With the lock held: a node for this waiter, last in the queue. */
static struct cnode *enqueue(mp_cond *c)
{
    struct cnode *k = atomic_load_explicit(&c->spares, memory_order_relaxed);
    if (k) {
        LINK(c->spares, NEXT(k));
    } else {
        if (!(k = mp_shared_calloc(1, sizeof *k)))
            return NULL;
        k->all = c->all;
        c->all = k;
    }
    atomic_store_explicit(&k->notified, 0, memory_order_relaxed);
    atomic_store_explicit(&k->owner, mp__olock_self(), memory_order_relaxed);
    LINK(k->next, NULL);
    struct cnode *_Atomic *p = &c->head, *q;
    while ((q = atomic_load_explicit(p, memory_order_relaxed)))
        p = &q->next;
    LINK(*p, k);
    return k;
}

int mp_cond_wait(mp_cond *c, double timeout)
{
    if (!c || isnan(timeout))
        return MP_EINVAL;
    mp_rlock *l = c->lock;
    if (!owns(l))
        return MP_EPERM;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r)
        return r;
    struct cnode *k = enqueue(c);
    if (!k) {
        mp__wait_end(&w);
        return MP_ENOMEM;
    }
    int64_t dl = deadline(timeout);
    uint32_t depth = give_up(l);
    MP__HOOK("cond.wait.sleep");
    while (r == 0 && !atomic_load_explicit(&k->notified, memory_order_acquire))
        r = sleep_looking(&k->notified, 0, dl, &w); /* a notifier may die before its wake */
    mp__wait_end(&w);

    bool intr = r == MP_EINTR;
    int got = relock(&l->ol);
    take(l, depth);
    bool notified = atomic_load_explicit(&k->notified, memory_order_relaxed);
    unlink_node(c, k); /* still there unless a notify took it out */
    spare(c, k);
    if (intr && notified)
        notify_locked(c, 1); /* we return MP_EINTR: hand our notification on */
    if (got == MP_EOWNERDEAD) {
        if (intr)
            mp__wait_keep_interrupt(&w); /* we report the dead owner instead */
        return got;
    }
    return intr ? MP_EINTR : notified ? 0 : MP_ETIMEDOUT;
}

int mp_cond_notify(mp_cond *c, unsigned n)
{
    if (!c)
        return MP_EINVAL;
    if (!owns(c->lock))
        return MP_EPERM;
    notify_locked(c, n);
    return 0;
}

int mp_cond_notify_all(mp_cond *c) { return mp_cond_notify(c, UINT_MAX); }

void mp_cond_free(mp_cond *c)
{
    if (!c)
        return;
    for (struct cnode *k = c->all, *next; k; k = next) {
        next = k->all;
        mp_shared_free(k);
    }
    mp_shared_free(c);
}

/* ---- Barrier --------------------------------------------------------------- */

enum {
    FILLING,   /* parties arrive */
    ACTION,    /* the round is full; its last party runs the action */
    BROKEN,    /* every wait fails until a reset */
    RESETTING, /* reset while parties were inside: they leave, then FILLING */
};

struct party {
    _Atomic int32_t pid;    /* 0: a free slot */
    _Atomic uint32_t token; /* with pid, its process's identity (os/olock.c) */
};
static_assert(sizeof(struct party) == 8, "party is shared: fixed layout");

/* Shared layout. Lock rules: lock guards every field but parties, action and
 * arg (fixed), and is held only for short sections, never across the action
 * or a sleep. Read without it: seq (sleepers wait on it), round (a waiter
 * whose round has passed is released), count and state (n_waiting, broken).
 * Inside a round, the party with index i holds slot[i], and count parties
 * are inside; while FILLING or ACTION they hold slots 0..count-1. */
struct mp_barrier {
    mp__olock lock;
    _Atomic uint32_t seq;      /* the futex word: bumped at every change sleepers wait for */
    _Atomic uint32_t sleepers; /* threads about to sleep or asleep on seq */
    _Atomic uint32_t round;    /* bumped when a round is released */
    _Atomic uint32_t count;    /* parties inside: arrived, not released, not gone */
    _Atomic uint32_t state;    /* FILLING, ACTION, BROKEN, RESETTING */
    uint32_t parties;
    mp_target action; /* a code address: the same in every process of the family */
    void *arg;
    mp__spinner spin;
    struct party slot[]; /* parties entries */
};
static_assert(sizeof(struct mp_barrier) == 64, "mp_barrier is shared: fixed layout");

static void bump(mp_barrier *b)
{
    atomic_fetch_add(&b->seq, 1);
    if (atomic_load(&b->sleepers) > 0) {
        mp__spin_stamp(&b->spin);
        mp__futex_wake(&b->seq, INT_MAX);
    } else {
        mp__spin_note(&b->spin);
    }
}

static void set_state(mp_barrier *b, uint32_t st)
{
    atomic_store(&b->state, st);
    bump(b);
}

/* A holder of lock died inside a section: trust only the slots, and break. */
static void repair(mp_barrier *b)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < b->parties; i++)
        n += atomic_load(&b->slot[i].pid) != 0;
    atomic_store(&b->count, n);
    set_state(b, BROKEN);
}

/* Takes lock. Its sections are short, so this is not interruptible; an
 * interrupt that comes meanwhile stays pending, for the caller's sleep or
 * its next call. */
static void bar_lock(mp_barrier *b)
{
    if (relock(&b->lock) == MP_EOWNERDEAD)
        repair(b);
}

static void bar_unlock(mp_barrier *b) { mp__olock_release(&b->lock); }

/* With lock held: the party in slot i is gone. The last to leave a reset
 * opens the barrier again. */
static void leave(mp_barrier *b, uint32_t i)
{
    atomic_store(&b->slot[i].pid, 0);
    atomic_store(&b->slot[i].token, 0);
    if (atomic_fetch_sub(&b->count, 1) == 1 && atomic_load(&b->state) == RESETTING)
        set_state(b, FILLING);
}

/* With lock held: looks at n slots from i on, cyclically, for a party whose
 * process has ended, and removes it: a round it was part of is broken; a
 * reset stops waiting for it. true if it found one. */
static bool reap_dead(mp_barrier *b, uint32_t i, uint32_t n)
{
    for (; n > 0; n--, i = (i + 1) % b->parties) {
        uint32_t pid = (uint32_t)atomic_load(&b->slot[i].pid);
        uint64_t id = (uint64_t)atomic_load(&b->slot[i].token) << 32 | pid;
        if (pid == 0 || mp__owner_state(id) != MP__OWNER_DEAD)
            continue;
        uint32_t st = atomic_load(&b->state);
        if (st == FILLING || st == ACTION)
            set_state(b, BROKEN);
        leave(b, i);
        return true;
    }
    return false;
}

/* With lock held: drops it, then waits until seq moves, until, or an
 * interrupt. Returns 0 or MP_EINTR, without the lock. */
static int bar_sleep(mp_barrier *b, mp__waiter *w, int64_t until)
{
    uint32_t s = atomic_load(&b->seq);
    bar_unlock(b);
    int64_t t0;
    if (mp__spin(&b->spin, &b->seq, s, until, &t0))
        return 0;
    atomic_fetch_add(&b->sleepers, 1);
    int r = mp__futex_wait(&b->seq, s, until, w);
    atomic_fetch_sub(&b->sleepers, 1);
    mp__spin_learn(&b->spin, t0, r == 0 && atomic_load(&b->seq) != s);
    return r == MP_EINTR ? r : 0;
}

/* With lock held: waits while the action or a reset is in progress. 0 once
 * the barrier is FILLING; MP_EBROKEN; or MP_ETIMEDOUT / MP_EINTR, having
 * broken it. Returns with lock held. */
static int await_open(mp_barrier *b, mp__waiter *w, int64_t dl, int64_t *check)
{
    for (;;) {
        uint32_t st = atomic_load(&b->state);
        if (st == FILLING)
            return 0;
        if (st == BROKEN)
            return MP_EBROKEN;
        int64_t now = mp__now_ns();
        int r = now >= dl ? MP_ETIMEDOUT : 0;
        if (!r && now >= *check) {
            *check = now + mp__check_ns;
            reap_dead(b, 0, b->parties);
            continue;
        }
        if (!r) {
            r = bar_sleep(b, w, dl < *check ? dl : *check);
            bar_lock(b);
        }
        if (r) {
            set_state(b, BROKEN);
            return r;
        }
    }
}

/* With lock held, as the last party of the round, in slot i. Unlocks. */
static int release(mp_barrier *b, uint32_t i)
{
    if (b->action) {
        atomic_store(&b->state, ACTION); /* no one sleeps for this: no bump */
        bar_unlock(b);
        int fail = b->action(b->arg);
        bar_lock(b);
        uint32_t st = atomic_load(&b->state);
        if (st != ACTION || fail) { /* broken, reset or failed meanwhile */
            if (st == ACTION)
                set_state(b, BROKEN);
            leave(b, i);
            bar_unlock(b);
            return MP_EBROKEN;
        }
    }
    for (uint32_t k = 0; k < b->parties; k++) {
        atomic_store(&b->slot[k].pid, 0);
        atomic_store(&b->slot[k].token, 0);
    }
    atomic_store(&b->count, 0);
    atomic_store(&b->state, FILLING);
    atomic_fetch_add(&b->round, 1);
    bump(b);
    bar_unlock(b);
    return (int)i;
}

/* With lock held, as the party in slot i: waits for the round's release.
 * Unlocks. */
static int await_release(mp_barrier *b, uint32_t i, mp__waiter *w, int64_t dl, int64_t check)
{
    uint32_t r0 = atomic_load(&b->round);
    int r = 0;
    for (;;) {
        if (atomic_load(&b->round) != r0) { /* released; an interrupt still wins */
            r = r == MP_EINTR ? r : (int)i;
            break;
        }
        uint32_t st = atomic_load(&b->state);
        if (st == BROKEN || st == RESETTING) {
            leave(b, i);
            r = r == MP_EINTR ? r : MP_EBROKEN;
            break;
        }
        int64_t now = mp__now_ns();
        if (!r && now >= dl)
            r = MP_ETIMEDOUT;
        if (r) { /* the others must not wait for us */
            set_state(b, BROKEN);
            leave(b, i);
            break;
        }
        if (now >= check) {
            /* Each sleeper watches the next party in the ring, so any death
             * is seen by a live party, at a cost that grows with parties. */
            check = now + mp__check_ns;
            uint32_t n = atomic_load(&b->count);
            if (n > 1 && reap_dead(b, (i + 1) % n, 1)) {
                leave(b, i);
                r = MP_EBROKEN;
                break;
            }
        }
        r = bar_sleep(b, w, dl < check ? dl : check);
        if (!r && atomic_load(&b->round) != r0)
            return (int)i; /* released: no need for the lock */
        bar_lock(b);
    }
    bar_unlock(b);
    return r;
}

int mp_barrier_wait(mp_barrier *b, double timeout)
{
    mp__waiter w;
    int r = begin(b, timeout, &w);
    if (r)
        return r;
    int64_t dl = deadline(timeout), check = mp__now_ns() + mp__check_ns;
    bar_lock(b);
    r = await_open(b, &w, dl, &check);
    if (r) {
        bar_unlock(b);
    } else {
        /* Arrive, leaving our pid and token for the death checks. */
        uint32_t i = atomic_fetch_add(&b->count, 1);
        uint64_t me = mp__olock_self();
        atomic_store(&b->slot[i].token, (uint32_t)(me >> 32));
        atomic_store(&b->slot[i].pid, (uint32_t)me);
        r = i + 1 == b->parties ? release(b, i) : await_release(b, i, &w, dl, check);
    }
    mp__wait_end(&w);
    return r;
}

int mp_barrier_new(mp_barrier **out, unsigned parties, mp_target action, void *arg)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if (parties == 0 || parties > INT_MAX)
        return MP_EINVAL;
    mp_barrier *b = mp_shared_alloc(sizeof *b + (size_t)parties * sizeof b->slot[0]);
    if (!b)
        return MP_ENOMEM;
    b->parties = parties;
    b->action = action;
    b->arg = arg;
    *out = b;
    return 0;
}

int mp_barrier_abort(mp_barrier *b)
{
    if (!b)
        return MP_EINVAL;
    bar_lock(b);
    set_state(b, BROKEN);
    bar_unlock(b);
    return 0;
}

int mp_barrier_reset(mp_barrier *b)
{
    if (!b)
        return MP_EINVAL;
    bar_lock(b);
    set_state(b, atomic_load(&b->count) > 0 ? RESETTING : FILLING);
    bar_unlock(b);
    return 0;
}

int mp_barrier_parties(const mp_barrier *b) { return b ? (int)b->parties : MP_EINVAL; }

int mp_barrier_n_waiting(const mp_barrier *b)
{
    if (!b)
        return MP_EINVAL;
    mp_barrier *m = (mp_barrier *)b;
    return atomic_load(&m->state) == FILLING ? (int)atomic_load(&m->count) : 0;
}

bool mp_barrier_broken(const mp_barrier *b)
{
    return b && atomic_load(&((mp_barrier *)b)->state) == BROKEN;
}

void mp_barrier_free(mp_barrier *b) { mp_shared_free(b); }
