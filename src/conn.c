/*
 * Pipes and connections: multiprocessing.Pipe / Connection, and
 * multiprocessing.connection.wait.
 *
 * A pipe is an AF_UNIX SOCK_STREAM socket pair, both ends close-on-exec. A
 * simplex pipe is a socket pair too: the handles say which end may do what
 * (a receives, b sends; the other direction is MP_EPERM). The descriptors
 * stay blocking: their file description is shared with the user (fileno) and
 * with every child that inherits them, so its flags are not ours to change.
 * Every send and receive passes MSG_DONTWAIT instead, and waits with
 * mp__wait_poll, which also ends on mp_interrupt; every send passes
 * MSG_NOSIGNAL, so a closed peer is MP_ECLOSED and never SIGPIPE, whatever
 * the program's disposition.
 *
 * Wire format, per message:
 *
 *   header   8 bytes   the payload's length (uint64, host order; <= 2^62)
 *   payload  length bytes
 *   trailer  8 bytes   0: complete; anything else: aborted (drop it)
 *
 * The trailer lets a send that mp_interrupt cut short take its message back
 * without tearing the stream: it returns MP_EINTR and leaves a debt in the
 * handle (the frame's length and how many of its bytes went out); the next
 * send on that handle first writes the rest of the frame (the header's
 * missing bytes, zeros for the payload) with an aborted trailer of all ones,
 * then its own message. All ones, so that a trailer cut short after some of
 * its zero bytes still reads as aborted once finished. A send interrupted
 * before any byte went out leaves no debt. A receiver drops an aborted
 * message and goes on with the next one, so a message cut short is never
 * delivered.
 *
 * Receive peeks at the header (MSG_PEEK): a message too large for the
 * caller's buffer is MP_EMSGSIZE and stays where it is. Otherwise one
 * recvmsg takes header, payload (straight into the caller's buffer) and
 * trailer; the common case for a small message is peek (EAGAIN), one wait,
 * peek, recvmsg: no clock read when the timeout is MP_FOREVER, no malloc
 * (recv_alloc's own buffer aside). A message that is not all there yet is
 * read as it comes. If the receive times out or is interrupted in the middle
 * of it, what it read is kept in the handle (the "stash": the length, the
 * bytes taken, and the payload so far in a malloc'd buffer; recv_alloc's
 * buffer becomes the stash itself) and the next receive goes on with it;
 * MP_EMSGSIZE against a stash's length leaves the stash. If the stash cannot
 * be allocated, the receive returns MP_ENOMEM and that message is lost: the
 * rest of it is read and dropped, so the stream stays in step. recv_alloc's
 * buffer holds the whole message at once only up to ALLOC_STEP; past that it
 * grows as the payload comes, doubling, so a header that claims more than
 * the peer sends (up to 2^62) costs at most twice what came. A header that
 * arrives in parts (a peer that is not one sender in step with us) is
 * consumed as it comes, since waiting for readability would spin.
 *
 * EOF: at a message boundary, MP_ECLOSED (again at every receive); in the
 * middle of a message, the part is dropped and MP_ECLOSED.
 *
 * Invariants:
 *   - The send lock guards the debt and serialises this process's sends on
 *     the end, so frames never interleave; the receive lock guards the
 *     receive state and serialises this process's receives. Both are tiny
 *     process-private futex locks (0 free, 1 held, 2 held with waiters)
 *     whose waits take the call's deadline (send: none) and end on
 *     mp_interrupt. Sends and receives do not exclude each other.
 *   - Between calls the stream read position is at a message boundary, or
 *     the receive state says exactly where it is inside one (phase R_HEAD:
 *     hdr_got header bytes taken; R_BODY: got bytes of payload and trailer
 *     taken, the first min(got, len) payload bytes in data unless lost).
 *   - Between calls the stream write position is at a frame boundary, or
 *     the debt says where it is inside one.
 *   - Handles are process-private: a child of a fork gets a copy of the
 *     state as it was. Use one end from one process at a time (or for
 *     sending only, accepting that sends from two processes may
 *     interleave), as with Python's Connection; fork while no thread is
 *     inside a call on an end the child will use.
 */
#include "mproc.h"

#include "os/os.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_LEN ((uint64_t)1 << 62) /* the longest message */
#define ALLOC_STEP ((uint64_t)1 << 20) /* recv_alloc's first buffer at most */
#define ABORTED UINT64_MAX          /* the trailer a sender writes for a message cut short */
#define CHUNK ((uint64_t)1 << 30)   /* at most this much payload per system call */
#define ZEROS 64                    /* at most this many zero-filled iovecs per call */
#define WAIT_FDS_ON_STACK 64
#define WAIT_FDS_MAX 1024

enum { R_IDLE, R_HEAD, R_BODY };

struct mp_conn {
    int fd;
    bool readable, writable;
    _Atomic uint32_t slock; /* send lock: 0 free, 1 held, 2 held and contended */
    _Atomic uint32_t rlock; /* receive lock: the same */
    /* send side: under slock */
    uint64_t debt_len;      /* payload length of the frame cut short */
    uint64_t debt_pos;      /* bytes of that frame written; 0: no debt */
    /* receive side: under rlock (phase is also read by mp_conn_poll) */
    _Atomic int phase;      /* R_*: where the read position is */
    bool lost;              /* R_BODY: the payload so far could not be kept: drop it */
    size_t hdr_got;         /* R_HEAD: header bytes taken */
    unsigned char hdr[8];   /* R_HEAD: those bytes */
    uint64_t len;           /* R_BODY: payload length */
    uint64_t got;           /* R_BODY: bytes of payload and trailer taken */
    unsigned char trl[8];   /* R_BODY: the trailer's bytes taken */
    char *data;             /* R_BODY: the payload taken (malloc'd), or NULL */
    uint64_t room;          /* R_BODY: bytes data has room for */
    uint32_t spin_ns;       /* under rlock: how long a receive yields before it sleeps */
};

static const char zeros[4096];

/* ---- the locks --------------------------------------------------------- */

/* A waiter that leaves on timeout or interrupt may have taken the wake meant
 * for another: it passes one on. A wake too many only makes a waiter look
 * again. */
static int lock_slow(_Atomic uint32_t *l, int64_t dl, mp__waiter *w)
{
    uint32_t c = atomic_exchange(l, 2);
    while (c != 0) {
        int r = mp__futex_wait(l, 2, dl, w);
        if (r == MP_ETIMEDOUT || r == MP_EINTR) {
            mp__futex_wake(l, 1);
            return r;
        }
        c = atomic_exchange(l, 2);
    }
    return 0;
}

static inline int lock(_Atomic uint32_t *l, int64_t dl, mp__waiter *w)
{
    uint32_t free_ = 0;
    if (atomic_compare_exchange_strong(l, &free_, 1))
        return 0;
    return lock_slow(l, dl, w);
}

static inline void unlock(_Atomic uint32_t *l)
{
    if (atomic_exchange(l, 0) == 2)
        mp__futex_wake(l, 1);
}

/* ---- common ------------------------------------------------------------ */

/* Before a receive sleeps, it yields its CPU for a while, looking for data
 * between yields: a peer on another CPU usually answers within a few
 * microseconds, far sooner than a sleep and a wake-up, and a peer waiting
 * for this very CPU gets it at once (a yield, unlike a spin, does not burn
 * the CPU the peer needs). How long is learnt per end: an answer that came
 * keeps the budget at twice what it took (up to SPIN_MAX_NS); a yield-spin
 * that saw nothing halves it, down to SPIN_MIN_NS, so an end whose peer
 * answers slowly soon goes straight to sleep. */
#define SPIN_MIN_NS 2000
#define SPIN_INIT_NS 20000
#define SPIN_MAX_NS 50000

/* true if something came on fd (data, EOF or an error: the caller looks). */
static bool yield_for_data(mp_conn *c, int64_t dl)
{
    int64_t start = mp__now_ns();
    if (dl <= start)
        return false; /* a poll does not wait */
    uint32_t budget = c->spin_ns ? c->spin_ns : SPIN_INIT_NS;
    int64_t end = start + budget < dl ? start + budget : dl, now;
    do {
        sched_yield();
        char b;
        ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        now = mp__now_ns();
        if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
            uint64_t want = (uint64_t)(now - start) * 2;
            want = want < SPIN_MAX_NS ? want : SPIN_MAX_NS;
            /* cppcheck-suppress knownConditionTrueFalse ; want can pass budget */
            c->spin_ns = want > budget ? (uint32_t)want : budget;
            return true;
        }
    } while (now < end);
    c->spin_ns = budget / 2 > SPIN_MIN_NS ? budget / 2 : SPIN_MIN_NS;
    return false;
}

/* Waits for events on fd: 0 ready (or hung up, or in error: the next call
 * says which), MP_ETIMEDOUT, MP_EINTR, -errno. */
static int wait_io(int fd, short events, int64_t dl, mp__waiter *w)
{
    struct pollfd pf[2] = {{.fd = fd, .events = events}};
    int r = mp__wait_poll(w, pf, 1, dl);
    return r > 0 ? 0 : r;
}

static mp_conn *conn_new(int fd, bool readable, bool writable)
{
    mp_conn *c = mp__sys.calloc(1, sizeof *c);
    if (c) {
        c->fd = fd;
        c->readable = readable;
        c->writable = writable;
    }
    return c;
}

int mp_pipe(mp_conn **a, mp_conn **b, bool duplex)
{
    if (!a || !b)
        return MP_EINVAL;
    *a = *b = NULL;
    int fds[2];
    if (mp__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
        return -errno;
    mp_conn *x = conn_new(fds[0], true, duplex), *y = conn_new(fds[1], duplex, true);
    if (!x || !y) {
        free(x);
        free(y);
        mp__close(fds[0]);
        mp__close(fds[1]);
        return MP_ENOMEM;
    }
    *a = x;
    *b = y;
    return 0;
}

int mp_conn_fileno(const mp_conn *c) { return c ? c->fd : -1; }

void mp_conn_free(mp_conn *c)
{
    if (!c)
        return;
    mp__close(c->fd);
    free(c->data);
    free(c);
}

/* ---- send -------------------------------------------------------------- */

/* The iovecs for the frame (hdr, len bytes of payload or of zeros when
 * payload is NULL, trl) from byte done on; iov has room for ZEROS + 2. */
static int frame_iov(struct iovec *iov, const uint64_t *hdr, const char *payload, uint64_t len,
                     const uint64_t *trl, uint64_t done)
{
    int k = 0;
    if (done < 8)
        iov[k++] = (struct iovec){(char *)hdr + done, 8 - done};
    uint64_t p = done > 8 ? done - 8 : 0; /* payload bytes written */
    if (p < len) {
        uint64_t left = len - p;
        if (payload) {
            uint64_t n = left < CHUNK ? left : CHUNK;
            iov[k++] = (struct iovec){(char *)payload + p, n};
            left -= n;
        } else {
            for (int i = 0; i < ZEROS && left; i++) {
                uint64_t n = left < sizeof zeros ? left : sizeof zeros;
                iov[k++] = (struct iovec){(char *)zeros, n};
                left -= n;
            }
        }
        if (left)
            return k; /* the trailer in a later call */
    }
    uint64_t t = done > 8 + len ? done - 8 - len : 0;
    iov[k++] = (struct iovec){(char *)trl + t, 8 - t};
    return k;
}

/* Writes the frame of a len-byte payload (NULL: zeros) with trailer trl,
 * from byte *done on, advancing *done. 0 once written; MP_ECLOSED; MP_EINTR;
 * -errno. */
static int write_frame(mp_conn *c, const char *payload, uint64_t len, uint64_t trl, uint64_t *done,
                       mp__waiter *w)
{
    uint64_t hdr = len, total = len + 16;
    for (;;) {
        struct iovec iov[ZEROS + 2];
        struct msghdr mh = {.msg_iov = iov};
        mh.msg_iovlen = (size_t)frame_iov(iov, &hdr, payload, len, &trl, *done);
        ssize_t m = mp__sys.sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (m >= 0) {
            if ((*done += (uint64_t)m) == total)
                return 0;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EPIPE || errno == ECONNRESET)
            return MP_ECLOSED;
        if (errno != EAGAIN)
            return -errno;
        int r = wait_io(c->fd, POLLOUT, MP__NEVER, w);
        if (r)
            return r;
    }
}

int mp_conn_send(mp_conn *c, const void *buf, size_t len)
{
    if (!c || (!buf && len) || (uint64_t)len > MAX_LEN)
        return MP_EINVAL;
    if (!c->writable)
        return MP_EPERM;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r)
        return r;
    r = lock(&c->slock, MP__NEVER, &w);
    if (r == 0) {
        if (c->debt_pos) { /* finish the frame an interrupt cut short, as aborted */
            r = write_frame(c, NULL, c->debt_len, ABORTED, &c->debt_pos, &w);
            if (r == 0 || r == MP_ECLOSED)
                c->debt_pos = 0;
        }
        if (r == 0) {
            uint64_t done = 0;
            r = write_frame(c, buf, len, 0, &done, &w);
            if (r && r != MP_ECLOSED && done > 0) {
                c->debt_len = len;
                c->debt_pos = done;
            }
        }
        unlock(&c->slock);
    }
    mp__wait_end(&w);
    return r;
}

/* ---- receive ----------------------------------------------------------- */

static void set_phase(mp_conn *c, int ph) { atomic_store_explicit(&c->phase, ph, memory_order_relaxed); }

/* Back at a message boundary; the caller has dealt with data. */
static void reset(mp_conn *c)
{
    c->data = NULL;
    c->lost = false;
    c->hdr_got = 0;
    set_phase(c, R_IDLE);
}

/* Reads the rest of the message in R_BODY: payload into dst (NULL: lost,
 * read and drop), which has room for room bytes of it, trailer into c->trl.
 * 0 once whole; 1 when dst is full first; MP_ECLOSED at EOF; MP_ETIMEDOUT;
 * MP_EINTR; -errno. */
static int read_body(mp_conn *c, char *dst, uint64_t room, int64_t dl, mp__waiter *w)
{
    char scratch[4096];
    for (;;) {
        uint64_t len = c->len, got = c->got;
        if (got == len + 8)
            return 0;
        if (dst && got < len && got == room)
            return 1;
        struct iovec iov[2];
        int k = 0;
        bool all = true; /* the payload's iovec reaches its end */
        if (got < len) {
            uint64_t left = len - got, n = left < CHUNK ? left : CHUNK;
            if (dst) {
                n = n < room - got ? n : room - got;
                iov[k++] = (struct iovec){dst + got, n};
            } else {
                n = left < sizeof scratch ? left : sizeof scratch;
                /* cppcheck-suppress legacyUninitvar ; scratch is where recvmsg writes */
                iov[k++] = (struct iovec){scratch, n};
            }
            all = n == left;
        }
        if (all) {
            uint64_t t = got > len ? got - len : 0;
            iov[k++] = (struct iovec){c->trl + t, 8 - t};
        }
        ssize_t m = mp__sys.recvmsg(c->fd, &(struct msghdr){.msg_iov = iov, .msg_iovlen = (size_t)k},
                            MSG_DONTWAIT);
        if (m > 0) {
            c->got += (uint64_t)m;
            continue;
        }
        if (m == 0)
            return MP_ECLOSED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int r = wait_io(c->fd, POLLIN, dl, w);
        if (r)
            return r;
    }
}

/* Takes up to n (< 8) header bytes that are there, into c->hdr. */
static int take_head(mp_conn *c, size_t n)
{
    ssize_t m = recv(c->fd, c->hdr + c->hdr_got, n, MSG_DONTWAIT);
    if (m > 0) {
        c->hdr_got += (size_t)m;
        set_phase(c, R_HEAD);
        if (c->hdr_got == 8) {
            memcpy(&c->len, c->hdr, 8);
            c->got = 0;
            c->data = NULL;
            c->lost = false;
            set_phase(c, R_BODY);
        }
        return 0;
    }
    if (m == 0)
        return MP_ECLOSED;
    return errno == EINTR || errno == EAGAIN ? 0 : -errno;
}

/* One receive, under the receive lock. ubuf/cap: the caller's buffer; out
 * non-NULL: recv_alloc, *out gets a malloc'd buffer. The length, or a code. */
static ssize_t receive_locked(mp_conn *c, char *ubuf, size_t cap, char **out, int64_t dl,
                              mp__waiter *w)
{
    for (;;) {
        char *dst;     /* where this call puts the payload; alloc: c->data too */
        uint64_t room; /* payload bytes dst has room for */
        int ph = atomic_load_explicit(&c->phase, memory_order_relaxed);
        if (ph == R_IDLE) {
            uint64_t len;
            ssize_t n = recv(c->fd, &len, 8, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN)
                    return -errno;
                if (yield_for_data(c, dl))
                    continue;
                int r = wait_io(c->fd, POLLIN, dl, w);
                if (r)
                    return r;
                continue;
            }
            if (n == 0)
                return MP_ECLOSED;
            if (n < 8) { /* a header in parts: take what is there */
                int r = take_head(c, (size_t)n);
                if (r)
                    return r;
                continue;
            }
            if (len > MAX_LEN)
                return -EPROTO; /* not a stream of our frames */
            if (!out && len > cap)
                return MP_EMSGSIZE;
            dst = ubuf;
            room = out && len > ALLOC_STEP ? ALLOC_STEP : len;
            /* cppcheck-suppress redundantAssignment ; without out, dst stays ubuf */
            if (out && !(dst = mp__sys.malloc(room ? room : 1)))
                return MP_ENOMEM;
            uint64_t hdr, trl;
            struct iovec iov[3] = {{&hdr, 8}, {dst, room}, {&trl, room == len ? 8 : 0}};
            ssize_t m = mp__sys.recvmsg(c->fd, &(struct msghdr){.msg_iov = iov, .msg_iovlen = 3},
                                MSG_DONTWAIT);
            if (m == (ssize_t)(len + 16)) { /* the common case: it was all there */
                if (trl != 0) {
                    if (out)
                        free(dst);
                    continue; /* aborted: on to the next */
                }
                if (out)
                    *out = dst;
                return (ssize_t)len;
            }
            if (m < 8) { /* someone else read the stream: only if shared across processes */
                if (out)
                    free(dst);
                if (m < 0 && errno != EINTR && errno != EAGAIN)
                    return -errno;
                if (m > 0) {
                    memcpy(c->hdr, &hdr, (size_t)m);
                    c->hdr_got = (size_t)m;
                    set_phase(c, R_HEAD);
                }
                continue;
            }
            /* part of it: read the rest as it comes */
            c->len = len;
            c->got = (uint64_t)m - 8;
            if (c->got > len)
                memcpy(c->trl, &trl, c->got - len);
            c->lost = false;
            c->data = out ? dst : NULL;
            c->room = room;
            set_phase(c, R_BODY);
        } else if (ph == R_HEAD) {
            int r = take_head(c, 8 - c->hdr_got);
            if (r == MP_ECLOSED)
                reset(c); /* EOF inside a message: drop its part */
            if (r)
                return r;
            if (atomic_load_explicit(&c->phase, memory_order_relaxed) == R_HEAD) {
                if ((r = wait_io(c->fd, POLLIN, dl, w)))
                    return r;
            }
            continue;
        } else { /* R_BODY: go on with the stash */
            uint64_t have = c->got < c->len ? c->got : c->len;
            room = c->len;
            if (c->len > MAX_LEN)
                return -EPROTO; /* a header in parts is checked here */
            if (c->lost) {
                dst = NULL;
            } else if (!out) {
                if (c->len > cap)
                    return MP_EMSGSIZE;
                dst = ubuf;
                if (have)
                    memcpy(dst, c->data, have);
            } else {
                /* twice what came (never less than before: have only grows) */
                room = have < ALLOC_STEP / 2 ? ALLOC_STEP : have * 2;
                room = room < c->len ? room : c->len;
                if (c->data && room <= c->room) {
                    room = c->room; /* it has room enough already */
                } else {
                    if (!(dst = mp__sys.realloc(c->data, room ? room : 1)))
                        return MP_ENOMEM;
                    c->data = dst;
                    c->room = room;
                }
                dst = c->data;
            }
        }

        int r = read_body(c, dst, room, dl, w);
        if (r == 1)
            continue; /* recv_alloc's buffer is full: grow it */
        if (r == 0) {
            bool whole = !c->lost && memcmp(c->trl, &(uint64_t){0}, 8) == 0;
            uint64_t len = c->len;
            if (out && whole) {
                *out = c->data;
                reset(c);
                return (ssize_t)len;
            }
            free(c->data);
            reset(c);
            if (whole)
                return (ssize_t)len;
            continue; /* aborted, or lost: on to the next */
        }
        if (r == MP_ECLOSED) { /* EOF inside a message: drop its part */
            free(c->data);
            reset(c);
            return r;
        }
        /* Stopped in the middle: keep what was read for the next receive
         * (alloc: c->data is dst already). */
        uint64_t have = c->got < c->len ? c->got : c->len;
        if (!out && dst && have) {
            char *p = mp__sys.realloc(c->data, have);
            if (!p) {
                free(c->data);
                c->data = NULL;
                c->lost = true;
                if (r == MP_EINTR)
                    mp__wait_keep_interrupt(w); /* for the next call: this one says ENOMEM */
                return MP_ENOMEM;
            }
            memcpy(p, dst, have);
            c->data = p;
            c->room = have;
        }
        return r;
    }
}

static ssize_t receive(mp_conn *c, char *ubuf, size_t cap, char **out, double timeout)
{
    if (!c->readable)
        return MP_EPERM;
    mp__waiter w;
    ssize_t r = mp__wait_begin(&w);
    if (r)
        return r;
    int64_t dl;
    mp__deadline(timeout, &dl); /* NaN was refused by the caller */
    r = lock(&c->rlock, dl, &w);
    if (r == 0) {
        r = receive_locked(c, ubuf, cap, out, dl, &w);
        unlock(&c->rlock);
    }
    mp__wait_end(&w);
    return r;
}

ssize_t mp_conn_recv(mp_conn *c, void *buf, size_t cap, double timeout)
{
    if (!c || (!buf && cap) || isnan(timeout))
        return MP_EINVAL;
    return receive(c, buf, cap, NULL, timeout);
}

int mp_conn_recv_alloc(mp_conn *c, void **buf, size_t *len, double timeout)
{
    if (!c || !buf || !len || isnan(timeout))
        return MP_EINVAL;
    char *p = NULL; /* set when r >= 0; NULL for clang --analyze, which cannot see that */
    ssize_t r = receive(c, NULL, 0, &p, timeout);
    if (r < 0)
        return (int)r;
    *buf = p;
    *len = (size_t)r;
    return 0;
}

int mp_conn_poll(mp_conn *c, double timeout)
{
    if (!c || isnan(timeout))
        return MP_EINVAL;
    if (!c->readable)
        return MP_EPERM;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r)
        return r;
    if (atomic_load_explicit(&c->phase, memory_order_relaxed) != R_IDLE) {
        r = 1; /* part of a message is here */
    } else {
        int64_t dl;
        mp__deadline(timeout, &dl);
        r = wait_io(c->fd, POLLIN, dl, &w);
        r = r == 0 ? 1 : r == MP_ETIMEDOUT ? 0 : r;
    }
    mp__wait_end(&w);
    return r;
}

/* ---- wait -------------------------------------------------------------- */

int mp_wait(const int *fds, size_t n, bool *ready, double timeout)
{
    if ((!fds && n) || n > WAIT_FDS_MAX || isnan(timeout))
        return MP_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (fds[i] < 0)
            return MP_EINVAL;
    if (ready)
        memset(ready, 0, n * sizeof *ready);
    struct pollfd stack[WAIT_FDS_ON_STACK + 1], *pf = stack;
    if (n > WAIT_FDS_ON_STACK && !(pf = mp__sys.malloc((n + 1) * sizeof *pf)))
        return MP_ENOMEM;
    for (size_t i = 0; i < n; i++)
        pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r == 0) {
        int64_t dl;
        mp__deadline(timeout, &dl);
        r = mp__wait_poll(&w, pf, (int)n, dl);
        if (r == MP_ETIMEDOUT)
            r = 0;
        for (size_t i = 0; r > 0 && ready && i < n; i++)
            ready[i] = pf[i].revents != 0;
        mp__wait_end(&w);
    }
    if (pf != stack)
        free(pf);
    return r;
}
