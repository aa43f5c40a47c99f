/*
 * Fuzz target: the pipe's wire format (src/conn.c), as read from a peer
 * that writes anything at all.
 *
 * The input is a program of steps for the peer and the receiver, one byte
 * each, some followed by arguments:
 *
 *   op % 8  0     the peer writes the next 1 + u8 bytes as they are
 *           1     the peer writes (1 + u8) * 4 KiB of the next byte, or what
 *                 of it the socket takes (so messages past recv_alloc's
 *                 first buffer fit in a small input)
 *           2     the peer writes a frame: u16 length, that many payload
 *                 bytes, a trailer byte (0: complete, 1: all ones, else
 *                 that byte eight times)
 *           3     mp_conn_recv into a buffer of caps[op >> 5] bytes
 *           4     mp_conn_recv_alloc
 *           5     mp_conn_poll
 *           6     the peer goes away (so EOF may fall inside a message)
 *           7     the peer writes a header: the next 8 bytes, any length
 *
 * Every receive polls (timeout 0). At the end the peer goes away and the
 * receiver drains until MP_ECLOSED, which must then stay. Each result is
 * checked against what the API promises: a bad byte from a peer is an
 * error code or a dropped message, never a crash, a hang or a leak.
 */
#include "mproc.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char sink[65536]; /* every receive's buffer ends where it ends */
static char bulk[256 * 4096];
static const size_t caps[8] = {0, 1, 7, 8, 16, 64, 4096, 65536};

struct in {
    const uint8_t *p;
    size_t n;
};

static size_t take(struct in *in, size_t want)
{
    return want < in->n ? want : in->n;
}

static void fail(const char *what, long r)
{
    fprintf(stderr, "fuzz_conn: %s returned %ld (%s)\n", what, r, mp_err_name((int)r));
    abort();
}

/* The peer's bytes go straight to its socket: it is not one of our ends. */
static void peer_write(int fd, const void *p, size_t n)
{
    if (fd >= 0 && n)
        (void)send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL); /* a full buffer drops the rest */
}

/* MP_ENOMEM is one too: memory is plenty here, so it means a receive asked
 * for what the peer only claimed (and a build without AddressSanitizer,
 * whose malloc says NULL instead of failing, still sees it). */
static bool bad_code(long r)
{
    return r != MP_EMSGSIZE && r != MP_ETIMEDOUT && r != MP_ECLOSED && r != -EPROTO;
}

/* One receive of kind k (0 recv, 1 recv_alloc); the result. */
static long receive(mp_conn *c, int k, size_t cap)
{
    if (k == 0) {
        char *buf = cap ? sink + sizeof sink - cap : NULL; /* its end is sink's: ASan sees an overrun */
        ssize_t r = mp_conn_recv(c, buf, cap, 0);
        if (r > (ssize_t)cap || (r < 0 && bad_code(r)))
            fail("mp_conn_recv", (long)r);
        return (long)r;
    }
    void *p = NULL;
    size_t len = 0;
    int r = mp_conn_recv_alloc(c, &p, &len, 0);
    if (r == 0) {
        if (!p)
            fail("mp_conn_recv_alloc (NULL buffer)", 0);
        if (len)
            ((volatile char *)p)[len - 1]; /* the whole length is ours */
        free(p);
        return (long)len;
    }
    if (bad_code(r))
        fail("mp_conn_recv_alloc", r);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_conn *a, *b;
    if (mp_pipe(&a, &b, true) != 0)
        return 0;
    int fd = mp_conn_fileno(b);
    struct in in = {data, size};
    while (in.n) {
        uint8_t op = *in.p++;
        in.n--;
        switch (op % 8) {
        case 0: {
            size_t n = in.n ? take(&in, 1 + (size_t)in.p[0]) : 0;
            if (n) {
                in.p++, in.n--;
                n = take(&in, n);
                peer_write(fd, in.p, n);
                in.p += n, in.n -= n;
            }
            break;
        }
        case 1: {
            if (in.n < 2)
                break;
            size_t n = (1 + (size_t)in.p[0]) * 4096;
            memset(bulk, in.p[1], n);
            in.p += 2, in.n -= 2;
            peer_write(fd, bulk, n);
            break;
        }
        case 2: {
            if (in.n < 2)
                break;
            uint64_t len = (uint64_t)in.p[0] | (uint64_t)in.p[1] << 8;
            in.p += 2, in.n -= 2;
            len = take(&in, (size_t)len);
            uint8_t t = 0;
            peer_write(fd, &len, 8);
            peer_write(fd, in.p, (size_t)len);
            in.p += len, in.n -= len;
            if (in.n)
                t = *in.p++, in.n--;
            uint64_t trl = t == 0 ? 0 : t == 1 ? UINT64_MAX : 0x0101010101010101ull * t;
            peer_write(fd, &trl, 8);
            break;
        }
        case 3:
            receive(a, 0, caps[op >> 5]);
            break;
        case 4:
            receive(a, 1, 0);
            break;
        case 5: {
            int r = mp_conn_poll(a, 0);
            if (r != 0 && r != 1)
                fail("mp_conn_poll", r);
            break;
        }
        case 6:
            mp_conn_free(b);
            b = NULL;
            fd = -1;
            break;
        case 7: {
            size_t n = take(&in, 8);
            peer_write(fd, in.p, n);
            in.p += n, in.n -= n;
            break;
        }
        }
    }
    mp_conn_free(b);
    /* Drained: every receive takes bytes, drops a message or ends. What is
     * left is at most the socket's buffer (about 200 KiB): fewer messages,
     * 16 bytes at least, than this bound. */
    long r = 0;
    for (int i = 0; i < 40000; i++) {
        r = receive(a, i & 1, 65536);
        if (r == MP_ECLOSED || r == -EPROTO)
            break;
        if (r == MP_ETIMEDOUT)
            fail("drain after the peer left", r);
    }
    if (r == MP_ECLOSED && (receive(a, 0, 65536) != MP_ECLOSED || mp_conn_poll(a, 0) != 1))
        fail("receive after MP_ECLOSED", r);
    mp_conn_free(a);
    return 0;
}
