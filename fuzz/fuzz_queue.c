/*
 * Fuzz target: the queue's records and words (src/queue.c), as a buggy or
 * dying peer could leave them in shared memory.
 *
 * The input sets a queue's state, then is a program of calls:
 *
 *   u8   capacity (caps[b % 6]), maxsize (b >> 4: 0 none, else 1 << (b>>4 & 3))
 *   u64  put word, u64 get word (tail, head, counts, CLOSED)
 *   u8   hints: 0 consistent with the words, else the next two u64 are
 *        head_seen and tail_seen as they are
 *   u32  live (the serial of the stream in progress)
 *   u8   owner: 0 none, 1 this process (alive), else a dead one's identity
 *   u8   stash: 0 none, else u16 total, u16 got, u32 serial, u32 count_at
 *   the ring's bytes (cap of them, zeros past the input's end)
 *   then one op byte each, some with arguments:
 *     op % 8  0  mp_queue_get into a buffer of caps[op >> 5] bytes
 *             1  mp_queue_get_alloc
 *             2  qsize, empty, full
 *             3  mp_queue_put of u8 * 8 bytes, or (op & 0x80) a stream of
 *                (u8 + 1) * cap / 4 bytes
 *             4  mp_queue_close
 *             5  live = u32 (a producer gives up or starts a stream)
 *             6  the peer writes the ring: u16 offset, u8 byte
 *             7  the peer publishes: put word = u64
 *
 * Every call polls (timeout 0); then gets drain the queue (a bounded
 * number). The queue's header and ring are copied into a malloc'd block
 * of exactly their size, so AddressSanitizer sees any access past the
 * ring; its arena block stays, for the free and the stash.
 *
 * The peer also answers one wait: a get that cannot park a stream (no
 * arena memory for the total its FIRST record gives) finishes it past its
 * deadline while the producer lives (queue.c, get_stream). The producer is
 * this input, and it then gives its stream up, as a dying one would: the
 * seam's futex calls end such a sleep at once. Any other sleep is counted,
 * and many in one input are a hang. The arena is kept small (re-exec with
 * MPROC_ARENA_SIZE) so that a claimed total fails to park at once rather
 * than back gigabytes.
 */
#include "mproc.h"
#include "os/os.h"
#include "queue.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ARENA "64M"

static const size_t qcaps[6] = {64, 128, 256, 512, 1024, 4096};
static char sink[65536]; /* every receive's buffer ends where it ends */
static const size_t caps[8] = {0, 1, 8, 24, 64, 256, 4096, 65536};

struct in {
    const uint8_t *p;
    size_t n;
};

/* The next k bytes (little-endian), zeros past the end. */
static uint64_t num(struct in *in, size_t k)
{
    uint64_t v = 0;
    for (size_t i = 0; i < k && in->n; i++, in->p++, in->n--)
        v |= (uint64_t)in->p[0] << (8 * i);
    return v;
}

static void fail(const char *what, long r)
{
    fprintf(stderr, "fuzz_queue: %s returned %ld (%s)\n", what, r, mp_err_name((int)r));
    abort();
}

static long (*real_futex)(_Atomic uint32_t *, int, uint32_t, const struct timespec *, uint32_t);
static _Atomic uint32_t *live_now; /* the queue of this input: its live */
static unsigned sleeps;

static long sleep_ends(void)
{
    if (++sleeps > 1000)
        fail("sleeps in calls with timeout 0 (a hang)", (long)sleeps);
    if (live_now)
        atomic_store(live_now, 0); /* the producer gives its stream up */
    errno = EAGAIN;
    return -1;
}

static long fz_futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts,
                     uint32_t mask)
{
    if ((op & FUTEX_CMD_MASK) == FUTEX_WAIT_BITSET)
        return sleep_ends();
    return real_futex(addr, op, val, ts, mask);
}

static long fz_futex_waitv(void *waiters, unsigned n, const struct timespec *ts)
{
    (void)waiters, (void)n, (void)ts;
    return sleep_ends();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    if (!getenv("MPROC_ARENA_SIZE")) { /* read when the library loads: start again */
        setenv("MPROC_ARENA_SIZE", ARENA, 1);
        execv("/proc/self/exe", *argv);
        fail("execv", -errno);
    }
    real_futex = mp__sys.futex;
    mp__sys.futex = fz_futex;
    mp__sys.futex_waitv = fz_futex_waitv;
    return 0;
}

/* -ENOMEM is one too: memory is plenty here, so it means a get asked for
 * what a record only claimed (a build without AddressSanitizer, whose
 * malloc says NULL instead of failing, still sees it). */
static bool bad_get(long r)
{
    return r != MP_EMSGSIZE && r != MP_EEMPTY && r != MP_ECLOSED && r != -EBADMSG;
}

static long get(mp_queue *q, int alloc, size_t cap)
{
    if (!alloc) {
        char *buf = cap ? sink + sizeof sink - cap : NULL; /* its end is sink's: ASan sees an overrun */
        ssize_t r = mp_queue_get(q, buf, cap, 0);
        if (r > (ssize_t)cap || (r < 0 && bad_get(r)))
            fail("mp_queue_get", (long)r);
        return (long)r;
    }
    void *p = NULL;
    size_t len = 0;
    int r = mp_queue_get_alloc(q, &p, &len, 0);
    if (r == 0) {
        if (!p)
            fail("mp_queue_get_alloc (NULL buffer)", 0);
        if (len)
            ((volatile char *)p)[len - 1]; /* the whole length is ours */
        free(p);
        return (long)len;
    }
    if (bad_get(r))
        fail("mp_queue_get_alloc", r);
    return r;
}

static void put(mp_queue *q, size_t len)
{
    char *msg = malloc(len ? len : 1);
    if (!msg)
        return;
    memset(msg, 0x5a, len);
    int r = mp_queue_put(q, msg, len, 0);
    free(msg);
    if (r != 0 && r != MP_EFULL && r != MP_ECLOSED)
        fail("mp_queue_put", r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static size_t usage0;
    if (!usage0)
        usage0 = mp_shared_usage() + 1;
    struct in in = {data, size};
    uint8_t b = (uint8_t)num(&in, 1);
    size_t cap = qcaps[b % 6];
    mp_queue *orig, *q;
    if (mp_queue_new(&orig, &(mp_queue_opts){.capacity = cap,
                                             .maxsize = (b >> 4) ? (size_t)1 << (b >> 4 & 3) : 0}) != 0)
        return 0;
    struct mp__queue_raw r;
    mp__queue_raw(orig, &r);
    size_t head_size = (size_t)(r.ring - (char *)orig);
    if (!(q = aligned_alloc(64, head_size + cap))) {
        mp_queue_free(orig);
        return 0;
    }
    memcpy(q, orig, head_size);
    mp__queue_raw(q, &r);
    live_now = r.live;
    sleeps = 0;

    uint64_t pw = num(&in, 8), gw = num(&in, 8);
    atomic_store(r.pword, pw);
    atomic_store(r.gword, gw);
    if (num(&in, 1)) {
        *r.head_seen = num(&in, 8);
        *r.tail_seen = num(&in, 8);
    } else {
        *r.head_seen = gw & (((uint64_t)1 << 34) - 1);
        *r.tail_seen = pw & (((uint64_t)1 << 34) - 1);
    }
    atomic_store(r.live, (uint32_t)num(&in, 4));
    uint8_t o = (uint8_t)num(&in, 1);
    /* a dead process's identity: ours with another token, which nobody holds */
    atomic_store(r.owner, o == 0 ? 0 : o == 1 ? mp__olock_self() : mp__olock_self() + ((uint64_t)o << 40));
    if (num(&in, 1)) {
        uint64_t total = num(&in, 2), got = num(&in, 2);
        uint32_t serial = (uint32_t)num(&in, 4), count_at = (uint32_t)num(&in, 4);
        char *stash = calloc(1, total ? total : 1);
        if (stash)
            mp__queue_stash(q, total, got, serial, count_at, stash);
        free(stash);
    }
    size_t n = in.n < cap ? in.n : cap;
    memset(r.ring, 0, cap);
    memcpy(r.ring, in.p, n);
    in.p += n, in.n -= n;

    while (in.n) {
        uint8_t op = (uint8_t)num(&in, 1);
        switch (op % 8) {
        case 0:
            get(q, 0, caps[op >> 5]);
            break;
        case 1:
            get(q, 1, 0);
            break;
        case 2:
            (void)mp_queue_qsize(q);
            if (mp_queue_full(q) && mp_queue_empty(q))
                fail("full and empty at once", 0);
            break;
        case 3:
            put(q, op & 0x80 ? (num(&in, 1) + 1) * cap / 4 : num(&in, 1) * 8);
            break;
        case 4:
            if (mp_queue_close(q) != 0)
                fail("mp_queue_close", 0);
            break;
        case 5:
            atomic_store(r.live, (uint32_t)num(&in, 4));
            break;
        case 6: {
            size_t at = (size_t)num(&in, 2) & (cap - 1);
            r.ring[at] = (char)num(&in, 1);
            break;
        }
        case 7:
            atomic_store(r.pword, num(&in, 8));
            break;
        }
    }
    /* Drain: a get takes a record or fails; the ring holds at most cap / 8
     * records, and a put word the peer moved may ask for a few more. */
    for (size_t i = 0; i < 4 * cap; i++) {
        long g = get(q, (int)(i & 1), 65536);
        if (g == MP_EEMPTY || g == MP_ECLOSED || g == -EBADMSG)
            break;
    }
    live_now = NULL;
    mp_queue_free(q); /* its stash, and orig's block */
    free(q);
    if (mp_shared_usage() + 1 != usage0)
        fail("mp_shared_usage after free (a leak in the arena)", (long)mp_shared_usage());
    return 0;
}
