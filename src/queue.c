/*
 * Queues: many producers, many consumers, any processes of the family.
 *
 * A queue is one arena block: a header, then a byte ring of `cap` bytes (a
 * power of two). Messages are records in the ring, copied in once by the
 * producer and out once by the consumer, straight between the caller's
 * memory and the ring: no serialisation, no feeder thread, nothing to flush.
 *
 * Two owner locks (os/olock.c): producers take the put lock, consumers the
 * get lock, so a producer and a consumer never wait for each other's lock,
 * and either side's holder may die at any instant: the next taker gets
 * MP_EOWNERDEAD and goes on (see "Invariants": nothing needs repair but two
 * hints). Each side owns one word, the only thing it publishes:
 *
 *   put word  bits  0..33  tail: where the next record goes (a byte count mod 2^34)
 *             bit   34     CLOSED
 *             bits 35..63  messages ever put, whole ones only (mod 2^29)
 *   get word  bits  0..33  head: the oldest record not yet taken
 *             bits 35..63  messages ever taken (mod 2^29)
 *
 * A record is an 8-byte header {u32 len, u32 kind} and its payload, padded
 * to 8 bytes; it may wrap around the ring's end (the header never does).
 * A message whose record fits in the ring is one WHOLE record. A larger one
 * is streamed: a FIRST record (prefix: total length, stream serial), then
 * MORE records and a LAST one (prefix: the payload's offset in the message,
 * the serial), each published as soon as it is written, so a consumer copies
 * the message out while the producer copies it in. The producer holds the
 * put lock and the consumer the get lock for the whole message, so streams
 * never interleave with other records.
 *
 * Invariants (each holds at every instant, whoever dies where):
 *   I1. Bytes in [head, tail) are whole records: a producer writes a record
 *       past tail, then publishes it by moving tail (one compare-and-swap,
 *       which fails once CLOSED is set: a closed queue takes nothing more).
 *       A producer that dies before that leaves nothing visible.
 *   I2. A consumer copies a record out, then moves head past it (one
 *       store). One that dies before the store leaves the record for the
 *       next consumer: no loss, and no process got it twice (the dead one
 *       never returned it). One that dies after it lost that message, as
 *       if it had died just after get returned.
 *   I3. The counts move with the offsets, in the same word: a WHOLE or a
 *       LAST record counts one message when published and one when taken,
 *       so qsize = put count - get count is exact, and a stream counts only
 *       once complete.
 *   I4. A stream in progress is named by `live` (its serial) and `owner`
 *       (its producer's identity). It ends with its LAST record, or is
 *       abandoned: the producer timed out, was interrupted or saw CLOSED
 *       (it clears `live`), or died (the kernel says so: mp__owner_state).
 *       A consumer reading a stream discards it as soon as it sees it
 *       abandoned, or sees a record that does not continue it; records of
 *       an abandoned stream left in the ring (its producer lost the race
 *       with a consumer that died mid-stream) are skipped and counted like
 *       the whole message would have been. So a message is delivered only
 *       whole. A consumer that dies in the middle of a streamed message
 *       loses it (what it took cannot be put back in a ring smaller than
 *       the message); the rest of it is skipped.
 *   I5. A consumer whose get times out or is interrupted in the middle of
 *       a stream parks what it has in a stash (an arena block, `stash`),
 *       and the next get goes on from there. Copies into the stash are
 *       idempotent (each chunk carries its offset, the stash's `got` is
 *       stored before head moves), so a consumer that dies while filling
 *       the stash leaves it valid. A complete stash is the oldest message,
 *       counted in qsize: its LAST record is taken without counting, and
 *       delivering it counts it (in the get word, the commit point); the
 *       stash remembers the count it was made whole at, so one found
 *       after its delivery's commit is dropped, not delivered twice.
 *
 * Waiting: a consumer with nothing to take spins while the producer runs on
 * another CPU (os/spin.c), then sets `dwant` and sleeps on it; a producer
 * publishes, then (sequentially consistent) reads `dwant` and, if it is
 * set, clears it and wakes. Producers waiting for room do the same on
 * `swant`. Only each side's
 * lock holder sleeps there; the others sleep in the lock. Sleeps are
 * bounded by mp__check_ns, so a wake lost with a dying process costs a
 * quarter second, never a hang, and a dead streaming producer is noticed.
 */
#include "mproc.h"

#include "os/os.h"
#include "queue.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OFF_BITS 34
#define OFF_MASK (((uint64_t)1 << OFF_BITS) - 1)
#define CLOSED ((uint64_t)1 << OFF_BITS)
#define CNT_SHIFT 35
#define CNT_MASK (((uint32_t)1 << 29) - 1)

#define CAP_MIN ((size_t)64)
#define CAP_MAX ((size_t)1 << 31) /* records of 8 bytes at least: counts fit 29 bits */
#define CAP_DEFAULT ((size_t)1 << 20)

enum kind { WHOLE = 1, FIRST, MORE, LAST };
#define HDR 8u     /* record header */
#define PREFIX 16u /* stream records: u64 total or offset, u32 serial, u32 zero */
#define STREAM_STEP ((uint64_t)1 << 20) /* get_alloc's first buffer for a stream, at least */

struct rec {
    uint32_t len; /* payload bytes after the header (and the prefix) */
    uint32_t kind;
};

struct stash { /* a stream a consumer had to leave midway (I5) */
    uint64_t total;
    _Atomic uint64_t got; /* bytes of the message in data[], from 0 */
    uint32_t serial;
    uint32_t count_at;    /* whole: the get count before it is delivered */
    char data[];
};

struct mp_queue {
    /* set at creation, read-only after */
    void *base; /* the arena block (q is base rounded up to 64) */
    uint64_t cap, mask;
    uint64_t maxsize; /* 0: no limit but bytes */
    uint32_t joinable;
    uint32_t pad0;
    /* join: tasks done, mod 2^29, against the put count */
    _Atomic uint32_t done;
    _Atomic uint32_t jsleepers;

    /* Producers' lines: written by the put lock's holder. The lock and what
     * only producers read have a line of their own, away from the words
     * consumers poll, so a put's lock operations move no line between CPUs. */
    alignas(64) mp__olock plock;
    uint64_t head_seen;     /* a head seen lately (a hint; only grows) */
    _Atomic uint64_t owner; /* identity of the live stream's producer */
    uint64_t stream_at;     /* where the live stream's FIRST record went */
    uint32_t serial;        /* the last stream's serial */
    uint32_t pad1;
    mp__spinner gspin;      /* how producers spin for consumers (learnt by producers) */
    alignas(64) _Atomic uint64_t pword;
    _Atomic uint32_t live;  /* the serial of the stream in progress; 0: none */
    _Atomic uint32_t dwant; /* a consumer sleeps on it (it sets it, wakers clear it) */

    /* Consumers' lines: written by the get lock's holder. */
    alignas(64) mp__olock glock;
    uint64_t tail_seen;          /* a tail seen lately (a hint) */
    struct stash *_Atomic stash; /* I5 */
    mp__spinner pspin;           /* how consumers spin for producers (learnt by consumers) */
    alignas(64) _Atomic uint64_t gword;
    _Atomic uint32_t swant; /* a producer sleeps on it */

    alignas(64) char ring[];
};
static_assert(offsetof(struct mp_queue, plock) == 64, "mp_queue is shared: fixed layout");
static_assert(offsetof(struct mp_queue, pword) == 128, "mp_queue is shared: fixed layout");
static_assert(offsetof(struct mp_queue, glock) == 192, "mp_queue is shared: fixed layout");
static_assert(offsetof(struct mp_queue, gword) == 256, "mp_queue is shared: fixed layout");
static_assert(offsetof(struct mp_queue, ring) == 320, "mp_queue is shared: fixed layout");

/* ---- words and the ring ----------------------------------------------------- */

static inline uint64_t w_off(uint64_t w) { return w & OFF_MASK; }
static inline uint32_t w_cnt(uint64_t w) { return (uint32_t)(w >> CNT_SHIFT); }
static inline uint64_t w_make(uint64_t off, uint32_t cnt, uint64_t closed)
{
    return (off & OFF_MASK) | closed | (uint64_t)(cnt & CNT_MASK) << CNT_SHIFT;
}
static inline uint64_t used(uint64_t tail, uint64_t head) { return (tail - head) & OFF_MASK; }
/* Bytes free; none if the words say more is used than the ring holds (a
 * peer wrote them wrong): then nothing fits, rather than past the ring. */
static inline uint64_t room_left(const mp_queue *q, uint64_t tail, uint64_t head)
{
    uint64_t u = used(tail, head);
    return u > q->cap ? 0 : q->cap - u;
}

/* The half of a word that holds the low bits of its offset: spinners watch it. */
static inline _Atomic uint32_t *low_half(_Atomic uint64_t *w)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (_Atomic uint32_t *)w + 1;
#else
    return (_Atomic uint32_t *)w;
#endif
}

static inline uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static inline uint64_t rec_size(uint32_t kind, uint64_t len)
{
    return HDR + (kind == WHOLE ? 0 : PREFIX) + pad8(len);
}

static void ring_put(mp_queue *q, uint64_t off, const void *src, size_t n)
{
    if (n == 0)
        return; /* src may be NULL */
    size_t at = off & q->mask, first = q->cap - at < n ? q->cap - at : n;
    memcpy(q->ring + at, src, first);
    if (n > first)
        memcpy(q->ring, (const char *)src + first, n - first);
}

static void ring_get(const mp_queue *q, uint64_t off, void *dst, size_t n)
{
    if (n == 0)
        return; /* dst may be NULL */
    size_t at = off & q->mask, first = q->cap - at < n ? q->cap - at : n;
    memcpy(dst, q->ring + at, first);
    if (n > first)
        memcpy((char *)dst + first, q->ring, n - first);
}

/* ---- waiting ---------------------------------------------------------------- */

/* Sleeps on want (having set it) unless `ready` already holds, until dl or
 * mp__check_ns from now. 0 (look again), MP_ETIMEDOUT (dl passed),
 * MP_EINTR. The caller re-reads the words after: a sleep may end early. */
static int nap(_Atomic uint32_t *want, bool (*ready)(mp_queue *, void *), mp_queue *q, void *arg,
               int64_t dl, mp__waiter *w)
{
    atomic_store(want, 1);
    if (ready(q, arg))
        return 0; /* want stays set: at worst one wake for nobody */
    int64_t look = mp__now_ns() + mp__check_ns;
    int r = mp__futex_wait(want, 1, dl < look ? dl : look, w);
    return r == MP_ETIMEDOUT && dl > look ? 0 : r;
}

/* After publishing on one side: wakes the other side's sleeper, if one has
 * asked since the last wake. The publication and this load are sequentially
 * consistent, as are the sleeper's store of want and its look at the words,
 * so one of the two sees the other; and as the waker clears want, a burst of
 * publications costs one wake, not one each (on a shared CPU the sleeper
 * does not run before the waker's time slice ends). */
static void wake(_Atomic uint32_t *want, mp__spinner *sp)
{
    if (atomic_load(want) && atomic_exchange(want, 0)) {
        mp__spin_stamp(sp);
        mp__futex_wake(want, INT_MAX);
    }
}

/* A wait for the other side's word to move: the first step spins (while
 * the other side runs on another CPU: os/spin.c), the later ones nap. */
struct waiting {
    bool spun, slept;
    int64_t t0; /* when the spin began */
};

/* 0 (look again), MP_ETIMEDOUT (dl passed), MP_EINTR. */
static int wait_step(mp_queue *q, struct waiting *st, _Atomic uint64_t *word, mp__spinner *sp,
                     _Atomic uint32_t *want, bool (*ready)(mp_queue *, void *), void *arg,
                     int64_t dl, mp__waiter *w)
{
    if (dl != MP__NEVER && mp__now_ns() >= dl)
        return MP_ETIMEDOUT;
    if (!st->spun) {
        st->spun = true;
        uint32_t seen = atomic_load(low_half(word));
        if (mp__spin(sp, low_half(word), seen, dl, &st->t0))
            return 0;
    }
    st->slept = true;
    return nap(want, ready, q, arg, dl, w);
}

/* After what was waited for came: a wait that slept teaches the spinner. */
static void wait_done(const struct waiting *st, mp__spinner *sp)
{
    if (st->slept)
        mp__spin_learn(sp, st->t0, true);
}

static void wake_consumers(mp_queue *q) { wake(&q->dwant, &q->pspin); }
static void wake_producers(mp_queue *q) { wake(&q->swant, &q->gspin); }

/* ---- creation ------------------------------------------------------------- */

int mp_queue_new(mp_queue **out, const mp_queue_opts *opts)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    mp_queue_opts o = opts ? *opts : (mp_queue_opts){0};
    size_t cap = o.capacity ? o.capacity : CAP_DEFAULT;
    if (cap < CAP_MIN || cap > CAP_MAX)
        return MP_EINVAL;
    cap = (size_t)1 << (64 - __builtin_clzll(cap - 1)); /* up to a power of two */
    void *base = mp_shared_alloc(sizeof(mp_queue) + cap + 48);
    if (!base)
        return MP_ENOMEM;
    mp_queue *q = (mp_queue *)(((uintptr_t)base + 63) & ~(uintptr_t)63);
    q->base = base;
    q->cap = cap;
    q->mask = cap - 1;
    q->maxsize = o.maxsize;
    q->joinable = o.joinable;
    *out = q;
    return 0;
}

void mp_queue_free(mp_queue *q)
{
    if (!q)
        return;
    struct stash *s = atomic_load(&q->stash);
    mp_shared_free(s);
    mp_shared_free(q->base);
}

/* ---- put -------------------------------------------------------------------- */

struct room {
    uint64_t need;  /* bytes */
    bool message;   /* it will add a message: maxsize applies */
};

/* With the put lock: whether need bytes (and a message slot) are free now. */
static bool has_room(mp_queue *q, void *arg)
{
    const struct room *rm = arg;
    uint64_t p = atomic_load_explicit(&q->pword, memory_order_relaxed);
    if (p & CLOSED)
        return true; /* the caller sees it */
    uint64_t g = atomic_load_explicit(&q->gword, memory_order_acquire);
    q->head_seen = w_off(g);
    if (room_left(q, w_off(p), w_off(g)) < rm->need)
        return false;
    return !rm->message || !q->maxsize || ((w_cnt(p) - w_cnt(g)) & CNT_MASK) < q->maxsize;
}

/* With the put lock: waits for room. 0, MP_ECLOSED, MP_EFULL, MP_EINTR. */
static int await_room(mp_queue *q, uint64_t need, bool message, int64_t dl, mp__waiter *w)
{
    struct room rm = {need, message};
    uint64_t p = atomic_load_explicit(&q->pword, memory_order_relaxed);
    /* the fast path: the head we saw last leaves room */
    if (!(p & CLOSED) && room_left(q, w_off(p), q->head_seen) >= need &&
        (!message || !q->maxsize))
        return 0;
    struct waiting st = {0};
    while (!has_room(q, &rm)) {
        int r = wait_step(q, &st, &q->gword, &q->gspin, &q->swant, has_room, &rm, dl, w);
        if (r == MP_ETIMEDOUT)
            return MP_EFULL;
        if (r == MP_EINTR)
            return r;
    }
    wait_done(&st, &q->gspin);
    return (atomic_load(&q->pword) & CLOSED) ? MP_ECLOSED : 0;
}

/* With the put lock: publishes a record of size bytes written at tail.
 * false if the queue was closed meanwhile (then nothing is published). */
static bool publish(mp_queue *q, uint64_t size, bool message)
{
    uint64_t p = atomic_load_explicit(&q->pword, memory_order_relaxed);
    for (;;) {
        if (p & CLOSED)
            return false;
        uint64_t n = w_make(w_off(p) + size, w_cnt(p) + message, 0);
        if (atomic_compare_exchange_weak(&q->pword, &p, n))
            break;
    }
    wake_consumers(q); /* a wake notes our CPU: see mp__spin */
    return true;
}

static int put_whole(mp_queue *q, const void *msg, size_t len, int64_t dl, mp__waiter *w)
{
    uint64_t size = rec_size(WHOLE, len);
    int r = await_room(q, size, true, dl, w);
    if (r)
        return r;
    uint64_t tail = w_off(atomic_load_explicit(&q->pword, memory_order_relaxed));
    struct rec h = {(uint32_t)len, WHOLE};
    ring_put(q, tail, &h, HDR); /* a tail a peer wrote may be unaligned */
    ring_put(q, tail + HDR, msg, len);
    return publish(q, size, true) ? 0 : MP_ECLOSED;
}

/* Ends a stream without its LAST record (I4). */
/* With the put lock: ends the stream in progress without its LAST record
 * (I4). If no consumer is inside the queue, the stream's records still in
 * the ring are taken back (tail moves back to where they begin), so they
 * hold no room and no get ever meets them; otherwise that consumer skips
 * them. Either way nothing of the message is delivered. */
static void abandon(mp_queue *q)
{
    atomic_store(&q->live, 0);
    if (mp__olock_try(&q->glock)) {
        uint64_t p = atomic_load(&q->pword), tail = w_off(p);
        uint64_t head = w_off(atomic_load(&q->gword));
        /* [stream_at, tail) is the stream's; a consumer may have taken its start */
        uint64_t from = used(tail, head) < used(tail, q->stream_at) ? head : q->stream_at;
        while (!atomic_compare_exchange_weak(&q->pword, &p, (p & ~OFF_MASK) | from))
            ; /* only CLOSED can change meanwhile, and it is kept */
        q->tail_seen = from;
        mp__olock_release(&q->glock);
    }
    wake_consumers(q); /* one reading it must look */
}

static int put_stream(mp_queue *q, const char *msg, size_t len, int64_t dl, mp__waiter *w)
{
    uint32_t serial = ++q->serial ? q->serial : ++q->serial;
    atomic_store(&q->owner, mp__olock_self());
    q->stream_at = w_off(atomic_load_explicit(&q->pword, memory_order_relaxed));
    atomic_store(&q->live, serial);
    for (uint64_t at = 0, first = 1; at < len; first = 0) {
        /* wait for half the ring (or what is left), then fill what is free */
        uint64_t left = len - at, want = rec_size(MORE, left);
        want = want < q->cap / 2 ? want : q->cap / 2;
        int r = await_room(q, want, first, dl, w);
        if (r) {
            MP__HOOK("queue.stream.abandon");
            abandon(q);
            return r;
        }
        uint64_t tail = w_off(atomic_load_explicit(&q->pword, memory_order_relaxed));
        uint64_t room = room_left(q, tail, q->head_seen) - HDR - PREFIX;
        uint64_t n = left < room ? left : room & ~(uint64_t)7;
        uint32_t kind = first ? FIRST : at + n == len ? LAST : MORE;
        struct rec h = {(uint32_t)n, kind};
        uint64_t pre[2] = {first ? len : at, serial};
        ring_put(q, tail, &h, HDR); /* a tail a peer wrote may be unaligned */
        ring_put(q, tail + HDR, pre, PREFIX);
        ring_put(q, tail + HDR + PREFIX, msg + at, n);
        MP__HOOK("queue.stream.chunk");
        if (!publish(q, rec_size(kind, n), kind == LAST)) {
            abandon(q);
            return MP_ECLOSED;
        }
        at += n;
    }
    atomic_store(&q->live, 0);
    return 0;
}

int mp_queue_put(mp_queue *q, const void *msg, size_t len, double timeout)
{
    if (!q || (!msg && len) || isnan(timeout) || len > (size_t)1 << 62)
        return MP_EINVAL;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r)
        return r;
    if (atomic_load_explicit(&q->pword, memory_order_relaxed) & CLOSED)
        return MP_ECLOSED;
    int64_t dl;
    mp__deadline(timeout, &dl);
    r = mp__olock_acquire(&q->plock, dl, &w);
    if (r == MP_EOWNERDEAD) {
        /* A producer died holding it: a stream it left is abandoned (I4);
         * head_seen is a head it saw, so still a valid hint. */
        if (atomic_load(&q->live))
            abandon(q);
        r = 0;
    }
    if (r == 0) {
        MP__HOOK("queue.put.locked");
        if (rec_size(WHOLE, len) <= q->cap)
            r = put_whole(q, msg, len, dl, &w);
        else
            r = put_stream(q, msg, len, dl, &w);
        mp__olock_release(&q->plock);
    } else if (r == MP_ETIMEDOUT) {
        r = MP_EFULL;
    }
    mp__wait_end(&w);
    return r;
}

/* ---- get -------------------------------------------------------------------- */

/* Where a get puts the message: the caller's buffer, or one it allocates. */
struct sink {
    char *buf;
    size_t cap;
    bool alloc;
};

/* With the get lock: whether a record is there (or CLOSED), or, with a
 * stream's serial in arg, that stream was given up by its producer. */
static bool has_data(mp_queue *q, void *arg)
{
    uint64_t p = atomic_load_explicit(&q->pword, memory_order_acquire);
    q->tail_seen = w_off(p);
    return (p & CLOSED) || w_off(p) != w_off(atomic_load_explicit(&q->gword, memory_order_relaxed)) ||
           (arg && atomic_load(&q->live) != *(uint32_t *)arg);
}

/* With the get lock: the record at head, if there is one. 1 found, 0 none. */
static int peek(mp_queue *q, struct rec *h, uint64_t pre[2])
{
    uint64_t head = w_off(atomic_load_explicit(&q->gword, memory_order_relaxed));
    if (head == q->tail_seen) {
        has_data(q, NULL); /* looks at the put word again */
        if (head == q->tail_seen)
            return 0;
    }
    ring_get(q, head, h, HDR); /* a head a peer wrote may be unaligned */
    uint64_t avail = used(q->tail_seen, head);
    if (avail > q->cap || h->kind < WHOLE || h->kind > LAST || rec_size(h->kind, h->len) > avail)
        return -EBADMSG; /* not a record: the ring was overwritten */
    if (h->kind != WHOLE)
        ring_get(q, head + HDR, pre, PREFIX);
    return 1;
}

/* With the get lock: takes the record at head (size bytes), counting a
 * message if it ends one. */
static void take(mp_queue *q, uint64_t size, bool message)
{
    uint64_t g = atomic_load_explicit(&q->gword, memory_order_relaxed);
    atomic_store(&q->gword, w_make(w_off(g) + size, w_cnt(g) + message, 0));
    wake_producers(q);
}

/* With the get lock and nothing at head: whether the stream `serial` has
 * been abandoned (I4). */
static bool abandoned(mp_queue *q, uint32_t serial)
{
    if (atomic_load(&q->live) != serial)
        return true;
    if (atomic_load(&q->pword) & CLOSED)
        return true; /* its next publish fails */
    return mp__owner_state(atomic_load(&q->owner)) == MP__OWNER_DEAD;
}

/* With the get lock: waits until a record is at head, dl, or an interrupt;
 * serial != 0: a stream being read, which may be abandoned meanwhile.
 * 1 a record (or CLOSED) is there, 0 the stream was abandoned,
 * MP_ETIMEDOUT, MP_EINTR. */
static int await_data(mp_queue *q, uint32_t serial, int64_t dl, mp__waiter *w)
{
    struct waiting st = {0};
    while (!has_data(q, NULL)) {
        if (serial && abandoned(q, serial) && !has_data(q, NULL))
            return 0;
        int r = wait_step(q, &st, &q->pword, &q->pspin, &q->dwant, has_data,
                          serial ? &serial : NULL, dl, w);
        if (r < 0)
            return r;
    }
    wait_done(&st, &q->pspin);
    return 1;
}

/* With the get lock: drops the stash (its stream was given up, or it was
 * delivered already). */
static void drop_stash(mp_queue *q, struct stash *s)
{
    atomic_store(&q->stash, NULL);
    mp_shared_free(s);
}

/* Hands the finished stash to the sink: its length, or MP_EMSGSIZE /
 * -ENOMEM leaving it. The message is counted taken here (its LAST record
 * was not), in the get word as always: that is the commit point, and
 * count_at tells a consumer that finds the stash still there whether the
 * commit happened (a consumer died between it and dropping the stash). */
static ssize_t deliver_stash(mp_queue *q, struct stash *s, struct sink *k)
{
    if (!k->alloc && s->total > k->cap)
        return MP_EMSGSIZE;
    if (k->alloc && !(k->buf = mp__sys.malloc(s->total ? s->total : 1)))
        return -ENOMEM;
    uint64_t total = s->total;
    if (total) /* k->buf may be NULL (cap 0): only a stash a peer wrote is empty */
        memcpy(k->buf, s->data, total);
    MP__HOOK("queue.stash.delivering");
    take(q, 0, true);
    drop_stash(q, s);
    return (ssize_t)total;
}

/* With the get lock: goes on with the stashed stream s. Its length once
 * delivered, 0 if it was abandoned or delivered already (stash dropped), or
 * MP_ETIMEDOUT, MP_EINTR, MP_EMSGSIZE (it stays). Copies into the stash are
 * idempotent (I5): a chunk at head that the stash has already (its reader
 * died before taking it) is taken again, harmlessly. The LAST record is
 * taken without counting the message: the stash still holds it, and qsize
 * counts it until deliver_stash. */
static ssize_t resume_stash(mp_queue *q, struct stash *s, struct sink *k, int64_t dl, mp__waiter *w)
{
    struct rec h;
    uint64_t pre[2];
    for (;;) {
        uint64_t got = atomic_load(&s->got);
        int r = peek(q, &h, pre);
        if (r < 0)
            return r;
        if (r == 1 && (h.kind == MORE || h.kind == LAST) && pre[1] == s->serial &&
            pre[0] <= got && pre[0] + h.len <= s->total) {
            uint64_t head = w_off(atomic_load_explicit(&q->gword, memory_order_relaxed));
            ring_get(q, head + HDR + PREFIX, s->data + pre[0], h.len);
            if (h.kind == LAST)
                s->count_at = w_cnt(atomic_load_explicit(&q->gword, memory_order_relaxed));
            if (pre[0] + h.len > got)
                atomic_store(&s->got, pre[0] + h.len);
            MP__HOOK("queue.stash.copied");
            take(q, rec_size(h.kind, h.len), false);
            continue;
        }
        if (got == s->total)
            break; /* whole */
        if (r == 1)
            break; /* something else follows: given up */
        r = await_data(q, s->serial, dl, w);
        if (r < 0)
            return r;
        if (r == 0 || ((atomic_load(&q->pword) & CLOSED) && !peek(q, &h, pre)))
            break; /* given up */
    }
    /* total 0: not a stream (a peer wrote it), and its delivery would read
     * as "abandoned" */
    if (atomic_load(&s->got) < s->total || s->total == 0 ||
        w_cnt(atomic_load_explicit(&q->gword, memory_order_relaxed)) != s->count_at) {
        drop_stash(q, s);
        return 0;
    }
    return deliver_stash(q, s, k);
}

/* With the get lock, got bytes into stream `serial` of total bytes: waits
 * for its next record. 1 (in h and pre) if it continues the stream, 0 if the
 * stream was abandoned, MP_ETIMEDOUT, MP_EINTR, -EBADMSG. */
static int next_chunk(mp_queue *q, uint32_t serial, uint64_t got, uint64_t total, struct rec *h,
                      uint64_t pre[2], int64_t dl, mp__waiter *w)
{
    int r;
    while ((r = peek(q, h, pre)) == 0) {
        r = await_data(q, serial, dl, w);
        if (r == 1 && (atomic_load(&q->pword) & CLOSED) && !peek(q, h, pre))
            r = 0; /* closed: its producer cannot finish it */
        if (r <= 0)
            return r;
    }
    if (r < 0)
        return r;
    return (h->kind == MORE || h->kind == LAST) && pre[1] == serial && pre[0] == got &&
           (h->kind == LAST ? got + h->len == total : got + h->len <= total); /* LAST ends it */
}

/* Parks got bytes of stream `serial` for the next get (I5). false: no memory. */
static bool park(mp_queue *q, uint32_t serial, const char *data, uint64_t got, uint64_t total)
{
    struct stash *s = mp_shared_alloc(sizeof *s + total);
    if (!s)
        return false;
    s->total = total;
    s->serial = serial;
    memcpy(s->data, data, got);
    atomic_store(&s->got, got);
    atomic_store(&q->stash, s);
    return true;
}

/* With the get lock, a FIRST record at head: reads the stream into the sink.
 * Its length; 0 if it was abandoned (then nothing is delivered); MP_EMSGSIZE
 * (untouched); MP_ETIMEDOUT / MP_EINTR (what was read is parked, I5). */
static ssize_t get_stream(mp_queue *q, const struct rec *first, const uint64_t pre[2],
                          struct sink *k, int64_t dl, mp__waiter *w)
{
    uint64_t total = pre[0];
    uint32_t serial = (uint32_t)pre[1];
    /* no put writes these: a stream is a message too long for one WHOLE
     * record (so never empty: 0 would read as "abandoned"), serial 0 is "no
     * stream" */
    if (first->len > total || rec_size(WHOLE, total) <= q->cap || total > (uint64_t)1 << 62 ||
        serial == 0)
        return -EBADMSG;
    if (!k->alloc && total > k->cap)
        return MP_EMSGSIZE;
    /* alloc: the buffer grows as the chunks come, doubling, never to a
     * total the FIRST record merely claims */
    uint64_t room = 2 * q->cap > STREAM_STEP ? 2 * q->cap : STREAM_STEP;
    room = k->alloc && room < total ? room : total;
    char *dst = k->alloc ? mp__sys.malloc(room ? room : 1) : k->buf;
    if (!dst)
        return -ENOMEM;
    uint64_t got = 0, p2[2];
    struct rec h = *first;
    for (;;) {
        if (got + h.len > room) { /* alloc: next_chunk checked got + h.len <= total */
            room = 2 * room > got + h.len ? 2 * room : got + h.len;
            room = room < total ? room : total;
            char *p = mp__sys.realloc(dst, room);
            if (!p) { /* the message is lost: its rest is skipped (I4) */
                free(dst);
                return -ENOMEM;
            }
            dst = p;
        }
        uint64_t head = w_off(atomic_load_explicit(&q->gword, memory_order_relaxed));
        ring_get(q, head + HDR + PREFIX, dst + got, h.len);
        got += h.len;
        MP__HOOK("queue.stream.took");
        take(q, rec_size(h.kind, h.len), h.kind == LAST);
        if (h.kind == LAST) {
            if (k->alloc)
                k->buf = dst;
            return (ssize_t)total;
        }
        int r = next_chunk(q, serial, got, total, &h, p2, dl, w);
        if ((r == MP_ETIMEDOUT || r == MP_EINTR) && !park(q, serial, dst, got, total)) {
            /* no memory to park it: finish it past the deadline rather
             * than lose it; an interrupt waits for the next call */
            if (r == MP_EINTR)
                mp__wait_keep_interrupt(w);
            dl = MP__NEVER;
            w = NULL;
            r = next_chunk(q, serial, got, total, &h, p2, dl, w);
        }
        if (r == 1)
            continue;
        if (k->alloc)
            free(dst);
        return r < 0 ? r : 0;
    }
}

/* With the get lock, the FIRST record of stream `serial` at head: whether
 * the stream is all in the ring (1), was given up (0), or is still coming
 * (-1). Walks its records; only a get too small for the message asks, so
 * that a stream given up is skipped rather than refused forever. */
static int stream_fate(mp_queue *q, uint64_t head, uint32_t serial)
{
    for (;;) {
        has_data(q, NULL);
        uint64_t tail = q->tail_seen, at = head;
        if (used(tail, head) > q->cap)
            return 0; /* not records (peek says so too): no message to wait for */
        struct rec h;
        uint64_t pre[2];
        ring_get(q, at, &h, HDR);
        at += rec_size(h.kind, h.len);
        while (at != tail) {
            ring_get(q, at, &h, HDR);
            if (h.kind != MORE && h.kind != LAST)
                return 0; /* something else follows it */
            if (rec_size(h.kind, h.len) > used(tail, at))
                return 0; /* not a record: no message to wait for */
            ring_get(q, at + HDR, pre, PREFIX);
            if (pre[1] != serial)
                return 0;
            if (h.kind == LAST)
                return 1;
            at += rec_size(h.kind, h.len);
        }
        uint32_t live = atomic_load(&q->live);
        uint64_t p = atomic_load(&q->pword);
        if (w_off(p) != tail)
            continue; /* more came meanwhile: look at it too */
        return live == serial && !(p & CLOSED) &&
                       mp__owner_state(atomic_load(&q->owner)) != MP__OWNER_DEAD
                   ? -1
                   : 0;
    }
}

/* The body of every get, with the get lock held. */
static ssize_t get_locked(mp_queue *q, struct sink *k, int64_t dl, mp__waiter *w)
{
    for (;;) {
        struct stash *s = atomic_load(&q->stash);
        if (s) {
            ssize_t n = resume_stash(q, s, k, dl, w);
            if (n == 0 && !atomic_load(&q->stash))
                continue; /* it was abandoned */
            return n == MP_ETIMEDOUT ? MP_EEMPTY : n;
        }
        struct rec h;
        uint64_t pre[2];
        int r = peek(q, &h, pre);
        if (r < 0)
            return r;
        if (r == 0) {
            if (atomic_load(&q->pword) & CLOSED)
                return MP_ECLOSED;
            r = await_data(q, 0, dl, w);
            if (r < 0)
                return r == MP_ETIMEDOUT ? MP_EEMPTY : r;
            continue;
        }
        uint64_t head = w_off(atomic_load_explicit(&q->gword, memory_order_relaxed));
        switch (h.kind) {
        case WHOLE:
            if (!k->alloc && h.len > k->cap)
                return MP_EMSGSIZE;
            if (k->alloc && !(k->buf = mp__sys.malloc(h.len ? h.len : 1)))
                return -ENOMEM;
            ring_get(q, head + HDR, k->buf, h.len);
            MP__HOOK("queue.get.copied");
            take(q, rec_size(WHOLE, h.len), true);
            return h.len;
        case FIRST: {
            if (!k->alloc && pre[0] > k->cap && stream_fate(q, head, (uint32_t)pre[1]) == 0) {
                take(q, rec_size(FIRST, h.len), false); /* given up: skip it */
                continue;
            }
            ssize_t n = get_stream(q, &h, pre, k, dl, w);
            if (n == 0)
                continue; /* abandoned: nothing delivered, go on */
            return n == MP_ETIMEDOUT ? MP_EEMPTY : n;
        }
        default: /* the rest of a stream whose reader died: skip it (I4) */
            take(q, rec_size(h.kind, h.len), h.kind == LAST);
            continue;
        }
    }
}

static ssize_t get_common(mp_queue *q, struct sink *k, double timeout)
{
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r)
        return r;
    int64_t dl;
    mp__deadline(timeout, &dl);
    ssize_t n = mp__olock_acquire(&q->glock, dl, &w);
    if (n == 0 || n == MP_EOWNERDEAD) { /* a dead consumer leaves nothing to repair (I2, I5) */
        MP__HOOK("queue.get.locked");
        n = get_locked(q, k, dl, &w);
        mp__olock_release(&q->glock);
    } else if (n == MP_ETIMEDOUT) {
        n = MP_EEMPTY;
    }
    mp__wait_end(&w);
    return n;
}

ssize_t mp_queue_get(mp_queue *q, void *buf, size_t cap, double timeout)
{
    if (!q || (!buf && cap) || isnan(timeout))
        return MP_EINVAL;
    struct sink k = {buf, cap, false};
    return get_common(q, &k, timeout);
}

int mp_queue_get_alloc(mp_queue *q, void **msg, size_t *len, double timeout)
{
    if (!q || !msg || !len || isnan(timeout))
        return MP_EINVAL;
    struct sink k = {NULL, 0, true};
    ssize_t n = get_common(q, &k, timeout);
    if (n < 0)
        return (int)n;
    *msg = k.buf;
    *len = (size_t)n;
    return 0;
}

/* ---- for the fuzzer (queue.h) ---------------------------------------------- */

void mp__queue_raw(mp_queue *q, struct mp__queue_raw *r)
{
    *r = (struct mp__queue_raw){q->ring, q->cap, &q->pword, &q->gword, &q->live, &q->owner,
                                &q->head_seen, &q->tail_seen};
}

bool mp__queue_stash(mp_queue *q, uint64_t total, uint64_t got, uint32_t serial,
                     uint32_t count_at, const void *data)
{
    if (!park(q, serial, data, got < total ? got : total, total))
        return false;
    struct stash *s = atomic_load(&q->stash);
    atomic_store(&s->got, got);
    s->count_at = count_at;
    return true;
}

/* ---- state ------------------------------------------------------------------ */

size_t mp_queue_qsize(const mp_queue *q)
{
    if (!q)
        return 0;
    mp_queue *m = (mp_queue *)q;
    uint64_t g = atomic_load(&m->gword); /* first: its count never passes the put count */
    uint64_t p = atomic_load(&m->pword);
    return (w_cnt(p) - w_cnt(g)) & CNT_MASK;
}

bool mp_queue_empty(const mp_queue *q) { return mp_queue_qsize(q) == 0; }

bool mp_queue_full(const mp_queue *q)
{
    return q && q->maxsize && mp_queue_qsize(q) >= q->maxsize;
}

int mp_queue_close(mp_queue *q)
{
    if (!q)
        return MP_EINVAL;
    atomic_fetch_or(&q->pword, CLOSED);
    wake_consumers(q);
    wake_producers(q);
    return 0;
}

/* ---- JoinableQueue ---------------------------------------------------------- */

int mp_queue_task_done(mp_queue *q)
{
    if (!q)
        return MP_EINVAL;
    if (!q->joinable)
        return MP_ESTATE;
    uint32_t d = atomic_load(&q->done);
    do {
        if (d == w_cnt(atomic_load(&q->pword)))
            return MP_EINVAL; /* more than were put */
    } while (!atomic_compare_exchange_weak(&q->done, &d, (d + 1) & CNT_MASK));
    if (atomic_load(&q->jsleepers) > 0)
        mp__futex_wake(&q->done, INT_MAX);
    return 0;
}

static bool all_done(mp_queue *q, void *arg)
{
    (void)arg;
    return atomic_load(&q->done) == w_cnt(atomic_load(&q->pword));
}

int mp_queue_join(mp_queue *q, double timeout)
{
    if (!q || isnan(timeout))
        return MP_EINVAL;
    if (!q->joinable)
        return MP_ESTATE;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r)
        return r;
    int64_t dl;
    mp__deadline(timeout, &dl);
    while (!all_done(q, NULL)) {
        if (dl != MP__NEVER && mp__now_ns() >= dl) {
            r = MP_ETIMEDOUT;
            break;
        }
        /* sleeps on done itself: it moves with every task_done */
        atomic_fetch_add(&q->jsleepers, 1);
        uint32_t d = atomic_load(&q->done);
        if (!all_done(q, NULL)) {
            int64_t look = mp__now_ns() + mp__check_ns;
            r = mp__futex_wait(&q->done, d, dl < look ? dl : look, &w);
        }
        atomic_fetch_sub(&q->jsleepers, 1);
        if (r == MP_EINTR)
            break;
        r = 0;
    }
    mp__wait_end(&w);
    return r;
}
