/* Pipes and connections: DESIGN section 5. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

/* ---- helpers ------------------------------------------------------------ */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* A pattern of n bytes that depends on the seed and on every byte's place. */
static void fill(void *p, size_t n, uint64_t seed)
{
    unsigned char *b = p;
    uint64_t s = mix(seed);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = mix(s + i);
        memcpy(b + i, &v, 8);
    }
    uint64_t v = mix(s + i);
    memcpy(b + i, &v, n - i);
}

/* The offset of the first byte that differs from fill's pattern, or n. */
static size_t first_bad(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    uint64_t s = mix(seed);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = mix(s + i);
        if (memcmp(b + i, &v, 8) != 0)
            break;
    }
    uint64_t v = mix(s + i);
    const unsigned char *vb = (const unsigned char *)&v;
    for (size_t j = i; j < n; j++)
        if (b[j] != vb[j - i])
            return j;
    return n;
}

#define ASSERT_PATTERN(p, n, seed) ASSERT_EQ(first_bad((p), (n), (seed)), (n))

/* The call took at least timeout seconds, and not much more. */
static void assert_on_time(double t0, double timeout)
{
    double took = t_now() - t0;
    ASSERT_GE(took * 1e6 + 1, timeout * 1e6);
    ASSERT_LT(took * 1e3, (timeout + 2.0 * t_scale()) * 1e3); /* generous: the machine is shared */
}

static void new_pipe(mp_conn **a, mp_conn **b, bool duplex)
{
    ASSERT_OK(mp_pipe(a, b, duplex));
    ASSERT_TRUE(*a && *b);
}

/* A blocking call run by a thread. */
enum { J_RECV, J_RECV_ALLOC, J_SEND, J_POLL, J_WAIT, J_QGET, J_QPUT };

struct job {
    int kind;
    mp_conn *c;
    void *buf;
    size_t n;        /* J_RECV: cap; J_SEND: len; J_RECV_ALLOC: the length got */
    double timeout;
    int fd;          /* J_WAIT */
    mp_queue *q;     /* J_QGET, J_QPUT (buf, n as for J_RECV and J_SEND) */
    _Atomic pid_t tid;
    long result;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    atomic_store(&j->tid, gettid());
    switch (j->kind) {
    case J_RECV: j->result = mp_conn_recv(j->c, j->buf, j->n, j->timeout); break;
    case J_RECV_ALLOC: j->result = mp_conn_recv_alloc(j->c, &j->buf, &j->n, j->timeout); break;
    case J_SEND: j->result = mp_conn_send(j->c, j->buf, j->n); break;
    case J_POLL: j->result = mp_conn_poll(j->c, j->timeout); break;
    case J_QGET: j->result = mp_queue_get(j->q, j->buf, j->n, j->timeout); break;
    case J_QPUT: j->result = mp_queue_put(j->q, j->buf, j->n, j->timeout); break;
    default: j->result = mp_wait(&j->fd, 1, NULL, j->timeout); break;
    }
    return NULL;
}

/* Starts the job and waits until its thread sleeps in the kernel. */
static pthread_t start_blocked(struct job *j)
{
    atomic_store(&j->tid, 0);
    j->result = 1;
    pthread_t t = t_thread(run_job, j);
    double end = t_now() + 10 * t_scale();
    while (!atomic_load(&j->tid)) {
        if (t_now() > end)
            T_FAIL("the job's thread did not start");
        sched_yield();
    }
    t_await_state(atomic_load(&j->tid), 'S');
    return t;
}

/* Joins the thread of a job that must end on an interrupt, within 3 s
 * (scaled): with nothing else to end it, only the interrupt's wake can. */
static void join_interrupted(pthread_t t, struct job *j)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(3 * t_scale());
    if (pthread_timedjoin_np(t, NULL, &ts) != 0)
        T_FAIL("mp_interrupt did not wake the blocked call within %g s", 3 * t_scale());
    ASSERT_ERR(j->result, MP_EINTR);
}

/* ---- messages ----------------------------------------------------------- */

TEST(boundaries_kept)
{
    static const size_t sizes[] = {5, 0, 1, 1000, 40000, 3, 8, 17, 0, 4096};
    enum { N = sizeof sizes / sizeof sizes[0] };
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char *buf = malloc(65536);
    ASSERT_TRUE(buf);
    for (int i = 0; i < N; i++) { /* all sent before any receive */
        fill(buf, sizes[i], (uint64_t)i);
        ASSERT_OK(mp_conn_send(b, buf, sizes[i]));
    }
    for (int i = 0; i < N; i++) {
        memset(buf, 0xee, 65536);
        ASSERT_EQ(mp_conn_recv(a, buf, 65536, 5), (ssize_t)sizes[i]);
        ASSERT_PATTERN(buf, sizes[i], (uint64_t)i);
    }
    ASSERT_ERR(mp_conn_recv(a, buf, 65536, 0), MP_ETIMEDOUT);
    /* and the other way */
    ASSERT_OK(mp_conn_send(a, "ab", 2));
    ASSERT_OK(mp_conn_send(a, "cde", 3));
    ASSERT_EQ(mp_conn_recv(b, buf, 65536, 5), 2);
    ASSERT_EQ(mp_conn_recv(b, buf + 2, 65536, 5), 3);
    ASSERT_TRUE(memcmp(buf, "abcde", 5) == 0);
    free(buf);
    mp_conn_free(a);
    mp_conn_free(b);
}

TEST(zero_byte_message_is_not_eof)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char buf[16];
    ASSERT_OK(mp_conn_send(b, NULL, 0));
    ASSERT_EQ(mp_conn_poll(a, 0), 1);
    ASSERT_EQ(mp_conn_recv(a, NULL, 0, 5), 0);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0), MP_ETIMEDOUT); /* nothing, not EOF */
    ASSERT_OK(mp_conn_send(b, buf, 0));
    void *p = NULL;
    size_t len = 99;
    ASSERT_OK(mp_conn_recv_alloc(a, &p, &len, 5));
    ASSERT_TRUE(p != NULL);
    ASSERT_EQ(len, 0);
    free(p);
    ASSERT_OK(mp_conn_send(b, NULL, 0));
    ASSERT_EQ(mp_conn_recv(a, buf, sizeof buf, 5), 0);
    mp_conn_free(b);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 5), MP_ECLOSED);
    mp_conn_free(a);
}

/* ---- a 256 MiB message between processes -------------------------------- */

#define BIG (256 * MIB + 5) /* and an odd tail */

static struct {
    mp_conn *a, *b;
    char *buf;
} g;

static int send_big(void *arg)
{
    (void)arg;
    mp_conn_free(g.a);
    if (mp_conn_send(g.b, g.buf, BIG) != 0)
        return 1;
    if (mp_conn_send(g.b, "after", 5) != 0)
        return 2;
    return 0;
}

TEST(message_of_256_mib_crosses_intact)
{
    new_pipe(&g.a, &g.b, true);
    g.buf = malloc(BIG);
    ASSERT_TRUE(g.buf);
    fill(g.buf, BIG, 256);
    mp_process *p = t_start(send_big, NULL, NULL);
    free(g.buf); /* the child has its copy */
    mp_conn_free(g.b);
    void *got = NULL;
    size_t len = 0;
    ASSERT_OK(mp_conn_recv_alloc(g.a, &got, &len, 60 * t_scale()));
    ASSERT_EQ(len, BIG);
    ASSERT_PATTERN(got, len, 256);
    free(got);
    char small[8];
    ASSERT_EQ(mp_conn_recv(g.a, small, sizeof small, 10 * t_scale()), 5);
    ASSERT_TRUE(memcmp(small, "after", 5) == 0);
    t_join(p, 0);
    ASSERT_ERR(mp_conn_recv(g.a, small, sizeof small, 10 * t_scale()), MP_ECLOSED);
    mp_conn_free(g.a);
}

TEST(emsgsize_leaves_the_message)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char *buf = malloc(MIB);
    ASSERT_TRUE(buf);
    fill(buf, 1000, 1);
    ASSERT_OK(mp_conn_send(b, buf, 1000));
    memset(buf, 0, 1000);
    ASSERT_ERR(mp_conn_recv(a, buf, 999, 5), MP_EMSGSIZE);
    ASSERT_ERR(mp_conn_recv(a, NULL, 0, 5), MP_EMSGSIZE);
    ASSERT_ERR(mp_conn_recv(a, buf, 1, 0), MP_EMSGSIZE);
    ASSERT_EQ(mp_conn_recv(a, buf, MIB, 5), 1000);
    ASSERT_PATTERN(buf, 1000, 1);
    /* larger than the socket's buffer: only its start is there */
    char *big = malloc(MIB);
    ASSERT_TRUE(big);
    fill(big, MIB, 2);
    struct job s = {.kind = J_SEND, .c = b, .buf = big, .n = MIB};
    pthread_t t = start_blocked(&s);
    ASSERT_ERR(mp_conn_recv(a, buf, MIB - 1, 5), MP_EMSGSIZE);
    memset(buf, 0, MIB);
    ASSERT_EQ(mp_conn_recv(a, buf, MIB, 10 * t_scale()), (ssize_t)MIB);
    ASSERT_PATTERN(buf, MIB, 2);
    t_join_thread(t);
    ASSERT_OK(s.result);
    ASSERT_ERR(mp_conn_recv(a, buf, MIB, 0), MP_ETIMEDOUT);
    free(big);
    free(buf);
    mp_conn_free(a);
    mp_conn_free(b);
}

TEST(recv_timeout_on_time)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char buf[16];
    double t0 = t_now();
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0), MP_ETIMEDOUT); /* polls once */
    ASSERT_LT(t_now() - t0, 1.0 * t_scale());
    t0 = t_now();
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0.2), MP_ETIMEDOUT);
    assert_on_time(t0, 0.2);
    void *p;
    size_t len;
    t0 = t_now();
    ASSERT_ERR(mp_conn_recv_alloc(a, &p, &len, 0.1), MP_ETIMEDOUT);
    assert_on_time(t0, 0.1);
    t0 = t_now();
    ASSERT_EQ(mp_conn_poll(a, 0.1), 0);
    assert_on_time(t0, 0.1);
    /* a timeout of 0 still finds what is there */
    ASSERT_OK(mp_conn_send(b, "x", 1));
    ASSERT_EQ(mp_conn_recv(a, buf, sizeof buf, 0), 1);
    mp_conn_free(a);
    mp_conn_free(b);
}

/* A thread waiting for the receive lock (another thread holds it, waiting
 * for data) honours its own timeout. */
TEST(recv_lock_wait_honours_timeout)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char buf[16], tbuf[16];
    struct job j = {.kind = J_RECV, .c = a, .buf = tbuf, .n = sizeof tbuf, .timeout = MP_FOREVER};
    pthread_t t = start_blocked(&j);
    double t0 = t_now();
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0.2), MP_ETIMEDOUT);
    assert_on_time(t0, 0.2);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_conn_send(b, "hello", 5));
    t_join_thread(t);
    ASSERT_EQ(j.result, 5);
    ASSERT_TRUE(memcmp(tbuf, "hello", 5) == 0);
    mp_conn_free(a);
    mp_conn_free(b);
}

static int send_three(void *arg)
{
    (void)arg;
    mp_conn_free(g.a);
    for (int i = 0; i < 3; i++)
        if (mp_conn_send(g.b, &i, sizeof i) != 0)
            return 1;
    return 0; /* exiting closes b */
}

TEST(eof_after_drain)
{
    new_pipe(&g.a, &g.b, true);
    mp_process *p = t_start(send_three, NULL, NULL);
    mp_conn_free(g.b);
    t_join(p, 0);
    for (int i = 0; i < 3; i++) {
        int v = -1;
        ASSERT_EQ(mp_conn_recv(g.a, &v, sizeof v, 10), (ssize_t)sizeof v);
        ASSERT_EQ(v, i);
    }
    ASSERT_EQ(mp_conn_poll(g.a, 0), 1); /* EOF is readable */
    int v;
    ASSERT_ERR(mp_conn_recv(g.a, &v, sizeof v, 10), MP_ECLOSED);
    ASSERT_ERR(mp_conn_recv(g.a, &v, sizeof v, MP_FOREVER), MP_ECLOSED);
    void *q;
    size_t len;
    ASSERT_ERR(mp_conn_recv_alloc(g.a, &q, &len, 0), MP_ECLOSED);
    mp_conn_free(g.a);
}

/* The peer's end closed inside a message: the part is dropped. Written by
 * hand, with the wire format of src/conn.c (header, payload, trailer). */
TEST(eof_inside_a_message_drops_it)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char frame[8 + 1000];
    uint64_t len = 1000;
    memcpy(frame, &len, 8);
    memset(frame + 8, 'x', 1000);
    ASSERT_EQ(write(mp_conn_fileno(b), frame, sizeof frame), (ssize_t)sizeof frame); /* no trailer */
    char buf[2000];
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0.05), MP_ETIMEDOUT); /* keeps the part */
    ASSERT_EQ(mp_conn_poll(a, 0), 1);
    mp_conn_free(b);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 5), MP_ECLOSED);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 5), MP_ECLOSED);
    mp_conn_free(a);
}

/* A header that arrives in parts, and a frame whose trailer says aborted
 * (one finished after a cut inside the trailer itself: zeros, then ones). */
TEST(header_in_parts_and_aborted_trailers)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    int fd = mp_conn_fileno(b);
    uint64_t len = 3, ok = 0, ab = UINT64_MAX, cut = UINT64_MAX << 24;
    char buf[16];
    /* aborted frames, then a good one */
    ASSERT_EQ(write(fd, &len, 8), 8);
    ASSERT_EQ(write(fd, "bad", 3), 3);
    ASSERT_EQ(write(fd, &ab, 8), 8);
    ASSERT_EQ(write(fd, &len, 8), 8);
    ASSERT_EQ(write(fd, "bad", 3), 3);
    ASSERT_EQ(write(fd, &cut, 8), 8);
    /* the good one's header in two parts, with a receive in between */
    ASSERT_EQ(write(fd, &len, 3), 3);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0.05), MP_ETIMEDOUT);
    ASSERT_EQ(mp_conn_poll(a, 0), 1);
    ASSERT_EQ(write(fd, (char *)&len + 3, 5), 5);
    ASSERT_ERR(mp_conn_recv(a, buf, 2, 0.05), MP_EMSGSIZE);
    ASSERT_EQ(write(fd, "abc", 3), 3);
    ASSERT_EQ(write(fd, &ok, 8), 8);
    ASSERT_EQ(mp_conn_recv(a, buf, sizeof buf, 5), 3);
    ASSERT_TRUE(memcmp(buf, "abc", 3) == 0);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0), MP_ETIMEDOUT);
    mp_conn_free(a);
    mp_conn_free(b);
}

/* ---- closed peers and SIGPIPE ------------------------------------------- */

static _Atomic int sigpipes;
static void on_sigpipe(int sig)
{
    (void)sig;
    atomic_fetch_add(&sigpipes, 1);
}

static void send_to_closed_peer(void)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    mp_conn_free(a);
    ASSERT_ERR(mp_conn_send(b, "x", 1), MP_ECLOSED);
    ASSERT_ERR(mp_conn_send(b, NULL, 0), MP_ECLOSED);
    char *big = calloc(1, 4 * MIB);
    ASSERT_TRUE(big);
    ASSERT_ERR(mp_conn_send(b, big, 4 * MIB), MP_ECLOSED);
    mp_conn_free(b);
    /* the peer closes while a send is blocked */
    new_pipe(&a, &b, true);
    struct job s = {.kind = J_SEND, .c = b, .buf = big, .n = 4 * MIB};
    pthread_t t = start_blocked(&s);
    mp_conn_free(a);
    t_join_thread(t);
    ASSERT_ERR(s.result, MP_ECLOSED);
    mp_conn_free(b);
    free(big);
}

TEST(send_to_closed_peer_is_eclosed_without_sigpipe)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    ASSERT_EQ(pthread_sigmask(SIG_UNBLOCK, &set, NULL), 0);
    /* SIG_DFL: a SIGPIPE would kill the case */
    struct sigaction sa = {.sa_handler = SIG_DFL};
    ASSERT_EQ(sigaction(SIGPIPE, &sa, NULL), 0);
    send_to_closed_peer();
    /* a handler that counts */
    sa.sa_handler = on_sigpipe;
    ASSERT_EQ(sigaction(SIGPIPE, &sa, NULL), 0);
    send_to_closed_peer();
    ASSERT_EQ(atomic_load(&sigpipes), 0);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
}

TEST(simplex_directions)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, false);
    char buf[16];
    void *p;
    size_t len;
    ASSERT_ERR(mp_conn_send(a, "x", 1), MP_EPERM); /* a only receives */
    ASSERT_ERR(mp_conn_recv(b, buf, sizeof buf, 0), MP_EPERM); /* b only sends */
    ASSERT_ERR(mp_conn_recv_alloc(b, &p, &len, 0), MP_EPERM);
    ASSERT_ERR(mp_conn_poll(b, 0), MP_EPERM);
    ASSERT_OK(mp_conn_send(b, "hi", 2));
    ASSERT_EQ(mp_conn_recv(a, buf, sizeof buf, 5), 2);
    ASSERT_TRUE(memcmp(buf, "hi", 2) == 0);
    ASSERT_EQ(mp_conn_poll(a, 0), 0);
    mp_conn_free(b);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 5), MP_ECLOSED);
    mp_conn_free(a);
}

/* ---- many threads on one end -------------------------------------------- */

enum { SENDERS = 8, PER_SENDER = 24 };

/* Message i of sender t: a 12-byte head (t, i, size), then a pattern. */
static size_t msg_size(int t, int i)
{
    if (i % 4 == 0)
        return 12 + (size_t)i; /* small ones too */
    return 12 + (size_t)(mix((uint64_t)t * 1000 + (uint64_t)i) % (MIB - 12));
}

static uint64_t msg_seed(int t, int i) { return (uint64_t)t << 32 | (uint64_t)i; }

static void make_msg(char *buf, int t, int i, size_t size)
{
    int head[3] = {t, i, (int)size};
    memcpy(buf, head, 12);
    fill(buf + 12, size - 12, msg_seed(t, i));
}

static void *sender_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    char *buf = malloc(MIB);
    if (!buf)
        return (void *)1;
    for (int i = 0; i < PER_SENDER; i++) {
        size_t size = msg_size(t, i);
        make_msg(buf, t, i, size);
        if (mp_conn_send(g.b, buf, size) != 0) {
            free(buf);
            return (void *)1;
        }
    }
    free(buf);
    return NULL;
}

static int send_from_8_threads(void *arg)
{
    (void)arg;
    mp_conn_free(g.a);
    pthread_t t[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        if (pthread_create(&t[i], NULL, sender_thread, (void *)(intptr_t)i) != 0)
            return 2;
    int bad = 0;
    for (int i = 0; i < SENDERS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad |= r != NULL;
    }
    return bad;
}

TEST(eight_threads_send_concurrently)
{
    new_pipe(&g.a, &g.b, true);
    mp_process *p = t_start(send_from_8_threads, NULL, NULL);
    mp_conn_free(g.b);
    char *buf = malloc(MIB);
    ASSERT_TRUE(buf);
    int next[SENDERS] = {0};
    for (int n = 0; n < SENDERS * PER_SENDER; n++) {
        ssize_t len = mp_conn_recv(g.a, buf, MIB, 30 * t_scale());
        ASSERT_GE(len, 12);
        int head[3];
        memcpy(head, buf, 12);
        int t = head[0], i = head[1];
        ASSERT_TRUE(t >= 0 && t < SENDERS);
        ASSERT_EQ(i, next[t]); /* none missing: each sender's messages in order */
        next[t]++;
        ASSERT_EQ(head[2], (int)msg_size(t, i));
        ASSERT_EQ(len, head[2]);
        ASSERT_PATTERN(buf + 12, (size_t)len - 12, msg_seed(t, i));
    }
    t_join(p, 0);
    ASSERT_ERR(mp_conn_recv(g.a, buf, MIB, 10), MP_ECLOSED);
    free(buf);
    mp_conn_free(g.a);
}

enum { RECEIVERS = 8, TO_RECEIVE = 1500 };

static size_t rmsg_size(int id)
{
    if (id % 50 == 7)
        return 8 + 200 * 1024 + (size_t)id; /* larger than the socket's buffer */
    return 8 + (size_t)(mix((uint64_t)id) % 2000);
}

static int send_to_receivers(void *arg)
{
    (void)arg;
    mp_conn_free(g.a);
    char *buf = malloc(256 * 1024);
    if (!buf)
        return 2;
    for (int id = 0; id < TO_RECEIVE; id++) {
        size_t size = rmsg_size(id);
        int head[2] = {id, (int)size};
        memcpy(buf, head, 8);
        fill(buf + 8, size - 8, (uint64_t)id + 77);
        if (mp_conn_send(g.b, buf, size) != 0)
            return 1;
    }
    for (int i = 0; i < RECEIVERS; i++) { /* one stop message for each */
        int head[2] = {-1, 8};
        if (mp_conn_send(g.b, head, 8) != 0)
            return 1;
    }
    free(buf);
    return 0;
}

static _Atomic int seen[TO_RECEIVE];
static _Atomic int recv_bad;

static void *receiver_thread(void *arg)
{
    bool alloc = (intptr_t)arg % 2;
    char *buf = malloc(256 * 1024);
    for (;;) {
        void *p = buf;
        ssize_t len;
        if (alloc) {
            size_t n;
            int r = mp_conn_recv_alloc(g.a, &p, &n, 30 * t_scale());
            len = r < 0 ? r : (ssize_t)n;
        } else {
            len = mp_conn_recv(g.a, buf, 256 * 1024, 30 * t_scale());
        }
        if (len < 8) {
            atomic_store(&recv_bad, len < 0 ? (int)len : 1);
            break;
        }
        int head[2];
        memcpy(head, p, 8);
        if (head[0] == -1) {
            if (p != buf)
                free(p);
            break;
        }
        if (head[0] < 0 || head[0] >= TO_RECEIVE || head[1] != (int)len ||
            (size_t)len != rmsg_size(head[0]) ||
            first_bad((char *)p + 8, (size_t)len - 8, (uint64_t)head[0] + 77) != (size_t)len - 8)
            atomic_store(&recv_bad, 2);
        else
            atomic_fetch_add(&seen[head[0]], 1);
        if (p != buf)
            free(p);
    }
    free(buf);
    return NULL;
}

TEST(eight_threads_receive_each_message_once)
{
    new_pipe(&g.a, &g.b, true);
    pthread_t t[RECEIVERS];
    for (int i = 0; i < RECEIVERS; i++)
        t[i] = t_thread(receiver_thread, (void *)(intptr_t)i);
    mp_process *p = t_start(send_to_receivers, NULL, NULL);
    mp_conn_free(g.b);
    for (int i = 0; i < RECEIVERS; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(60 * t_scale());
        ASSERT_EQ(pthread_timedjoin_np(t[i], NULL, &ts), 0);
    }
    t_join(p, 0);
    ASSERT_ERR(atomic_load(&recv_bad), 0);
    for (int id = 0; id < TO_RECEIVE; id++)
        if (atomic_load(&seen[id]) != 1)
            T_FAIL("message %d received %d times", id, atomic_load(&seen[id]));
    char buf[8];
    ASSERT_ERR(mp_conn_recv(g.a, buf, sizeof buf, 10), MP_ECLOSED);
    mp_conn_free(g.a);
}

/* ---- mp_wait ------------------------------------------------------------ */

static int wait_for_order(void *arg)
{
    (void)arg;
    t_send(&to_parent, 1);
    return t_recv(&to_child, 30);
}

TEST(wait_on_two_pipes_and_a_sentinel)
{
    chans_open();
    mp_conn *a1, *b1, *a2, *b2;
    new_pipe(&a1, &b1, true);
    new_pipe(&a2, &b2, false);
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    int fds[3] = {mp_conn_fileno(a1), mp_conn_fileno(a2), mp_process_sentinel(p)};
    ASSERT_GE(fds[2], 0);
    bool ready[3] = {true, true, true};
    ASSERT_EQ(mp_wait(fds, 3, ready, 0), 0);
    ASSERT_TRUE(!ready[0] && !ready[1] && !ready[2]);
    double t0 = t_now();
    ASSERT_EQ(mp_wait(fds, 3, ready, 0.2), 0); /* a timeout is 0, not an error */
    assert_on_time(t0, 0.2);

    ASSERT_OK(mp_conn_send(b2, "x", 1));
    ASSERT_EQ(mp_wait(fds, 3, ready, MP_FOREVER), 1);
    ASSERT_TRUE(!ready[0] && ready[1] && !ready[2]);
    char buf[8];
    ASSERT_EQ(mp_conn_recv(a2, buf, sizeof buf, 0), 1);

    t_send(&to_child, 0); /* the child ends */
    ASSERT_EQ(mp_wait(fds, 3, ready, 30 * t_scale()), 1);
    ASSERT_TRUE(!ready[0] && !ready[1] && ready[2]);

    ASSERT_OK(mp_conn_send(b1, "y", 1));
    ASSERT_EQ(mp_wait(fds, 3, ready, 5), 2);
    ASSERT_TRUE(ready[0] && !ready[1] && ready[2]);
    ASSERT_EQ(mp_wait(fds, 3, NULL, 0), 2); /* ready may be NULL */
    ASSERT_EQ(mp_wait(fds, 1, ready, 0), 1);

    /* EOF is readable too */
    mp_conn_free(b2);
    ASSERT_EQ(mp_wait(fds + 1, 1, ready, 5), 1);
    ASSERT_TRUE(ready[0]);

    /* no descriptor: just waits */
    t0 = t_now();
    ASSERT_EQ(mp_wait(NULL, 0, NULL, 0.1), 0);
    assert_on_time(t0, 0.1);

    /* a closed descriptor */
    int dead = dup(fds[0]);
    ASSERT_GE(dead, 0);
    close(dead);
    int both[2] = {fds[0], dead};
    ASSERT_ERR(mp_wait(both, 2, ready, 0), -EBADF);

    /* more than fit on the stack */
    enum { MANY = 200 };
    int many[MANY];
    bool mready[MANY];
    mp_conn *c1, *c2;
    new_pipe(&c1, &c2, true);
    for (int i = 0; i < MANY; i++)
        many[i] = i == 150 ? fds[0] : mp_conn_fileno(c1);
    ASSERT_EQ(mp_wait(many, MANY, mready, 5), 1);
    for (int i = 0; i < MANY; i++)
        ASSERT_EQ(mready[i], i == 150);
    mp_conn_free(c1);
    mp_conn_free(c2);

    t_join(p, 0);
    mp_conn_free(a1);
    mp_conn_free(b1);
    mp_conn_free(a2);
    chans_close();
}

/* ---- mp_interrupt ------------------------------------------------------- */

TEST(interrupt_wakes_a_blocked_recv)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    char tbuf[16];
    struct job j = {.kind = J_RECV, .c = a, .buf = tbuf, .n = sizeof tbuf, .timeout = MP_FOREVER};
    pthread_t t = start_blocked(&j);
    mp_interrupt();
    join_interrupted(t, &j);
    /* consumed: the pipe works on */
    ASSERT_OK(mp_conn_send(b, "abc", 3));
    ASSERT_EQ(mp_conn_recv(a, tbuf, sizeof tbuf, 5), 3);
    /* pending: the next call returns MP_EINTR at once */
    mp_interrupt();
    double t0 = t_now();
    ASSERT_ERR(mp_conn_recv(a, tbuf, sizeof tbuf, 5), MP_EINTR);
    ASSERT_LT(t_now() - t0, 1.0 * t_scale());
    ASSERT_ERR(mp_conn_recv(a, tbuf, sizeof tbuf, 0), MP_ETIMEDOUT);
    mp_conn_free(a);
    mp_conn_free(b);
}

static void on_usr1(int sig)
{
    (void)sig;
    mp_interrupt();
}

TEST(interrupt_from_a_signal_handler_wakes_a_blocked_recv)
{
    struct sigaction sa = {.sa_handler = on_usr1};
    ASSERT_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    void *p = NULL;
    /* the handler runs on another thread: the wake goes through the eventfd */
    struct job j = {.kind = J_RECV_ALLOC, .c = a, .timeout = MP_FOREVER};
    pthread_t t = start_blocked(&j);
    raise(SIGUSR1);
    join_interrupted(t, &j);
    /* the handler runs on the blocked thread itself */
    char tbuf[16];
    j = (struct job){.kind = J_RECV, .c = a, .buf = tbuf, .n = sizeof tbuf, .timeout = MP_FOREVER};
    t = start_blocked(&j);
    pthread_kill(t, SIGUSR1);
    join_interrupted(t, &j);
    ASSERT_OK(mp_conn_send(b, "z", 1));
    size_t len;
    ASSERT_OK(mp_conn_recv_alloc(a, &p, &len, 5));
    ASSERT_EQ(len, 1);
    free(p);
    signal(SIGUSR1, SIG_DFL);
    mp_conn_free(a);
    mp_conn_free(b);
}

/* One interrupt wakes them all: receives on four pipes, a second receive
 * waiting for the first one's receive lock, a poll and a wait. */
TEST(interrupt_wakes_every_blocked_call)
{
    enum { PIPES = 4, JOBS = PIPES + 3 };
    mp_conn *a[PIPES], *b[PIPES];
    char bufs[JOBS][16];
    struct job j[JOBS];
    pthread_t t[JOBS];
    for (int i = 0; i < PIPES; i++) {
        new_pipe(&a[i], &b[i], true);
        j[i] = (struct job){.kind = i % 2 ? J_RECV_ALLOC : J_RECV, .c = a[i], .buf = bufs[i],
                            .n = sizeof bufs[i], .timeout = i == 1 ? 3600 : MP_FOREVER};
    }
    j[PIPES] = (struct job){.kind = J_RECV, .c = a[0], .buf = bufs[PIPES], .n = 16,
                            .timeout = MP_FOREVER}; /* waits for a[0]'s lock */
    j[PIPES + 1] = (struct job){.kind = J_POLL, .c = a[1], .timeout = MP_FOREVER};
    j[PIPES + 2] = (struct job){.kind = J_WAIT, .fd = mp_conn_fileno(a[2]), .timeout = MP_FOREVER};
    for (int i = 0; i < JOBS; i++)
        t[i] = start_blocked(&j[i]);
    mp_interrupt();
    for (int i = 0; i < JOBS; i++)
        join_interrupted(t[i], &j[i]);
    for (int i = 0; i < PIPES; i++) {
        ASSERT_OK(mp_conn_send(b[i], "q", 1));
        ASSERT_EQ(mp_conn_recv(a[i], bufs[i], 16, 5), 1);
        mp_conn_free(a[i]);
        mp_conn_free(b[i]);
    }
}

/* One mp_interrupt wakes every thread blocked in a pipe or a queue at once:
 * receives on two pipes, a get asleep on an empty queue, another asleep on
 * the same queue's get lock, and a put asleep on a full queue. Each took
 * nothing: the queue and the pipes still hold what they held. */
TEST(interrupt_wakes_pipe_and_queue_waits_at_once)
{
    enum { JOBS = 5 };
    mp_conn *a[2], *b[2];
    mp_queue *empty, *full;
    ASSERT_OK(mp_queue_new(&empty, NULL));
    ASSERT_OK(mp_queue_new(&full, &(mp_queue_opts){.maxsize = 1}));
    ASSERT_OK(mp_queue_put(full, "old", 3, 0));
    char bufs[JOBS][16];
    struct job j[JOBS];
    pthread_t t[JOBS];
    for (int i = 0; i < 2; i++) {
        new_pipe(&a[i], &b[i], true);
        j[i] = (struct job){.kind = J_RECV, .c = a[i], .buf = bufs[i], .n = 16, .timeout = MP_FOREVER};
    }
    j[2] = (struct job){.kind = J_QGET, .q = empty, .buf = bufs[2], .n = 16, .timeout = MP_FOREVER};
    j[3] = (struct job){.kind = J_QGET, .q = empty, .buf = bufs[3], .n = 16, .timeout = 3600};
    j[4] = (struct job){.kind = J_QPUT, .q = full, .buf = bufs[4], .n = 5, .timeout = MP_FOREVER};
    for (int i = 0; i < JOBS; i++)
        t[i] = start_blocked(&j[i]);
    mp_interrupt();
    for (int i = 0; i < JOBS; i++)
        join_interrupted(t[i], &j[i]);
    ASSERT_EQ(mp_queue_qsize(full), 1);
    ASSERT_EQ(mp_queue_get(full, bufs[0], 16, 0), 3); /* the old one, alone */
    ASSERT_ERR(mp_queue_get(full, bufs[0], 16, 0), MP_EEMPTY);
    ASSERT_OK(mp_queue_put(empty, "x", 1, 0)); /* both sides still work */
    ASSERT_EQ(mp_queue_get(empty, bufs[0], 16, 0), 1);
    for (int i = 0; i < 2; i++) {
        ASSERT_OK(mp_conn_send(b[i], "q", 1));
        ASSERT_EQ(mp_conn_recv(a[i], bufs[i], 16, 5), 1);
        mp_conn_free(a[i]);
        mp_conn_free(b[i]);
    }
    mp_queue_free(empty);
    mp_queue_free(full);
}

/* A send blocked because the peer does not read: mp_interrupt makes it
 * return MP_EINTR, and the receiver never sees that message. The next send
 * finishes the cut frame first (it blocks, and is interrupted too), and the
 * one after it is delivered intact. */
TEST(interrupted_send_is_never_delivered)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    size_t n = 4 * MIB;
    char *big = malloc(n), *buf = malloc(n);
    ASSERT_TRUE(big && buf);
    fill(big, n, 1);
    struct job s = {.kind = J_SEND, .c = b, .buf = big, .n = n};
    pthread_t t = start_blocked(&s); /* the socket's buffer is full */
    mp_interrupt();
    join_interrupted(t, &s);
    char second[3000], third[5000];
    fill(second, sizeof second, 2);
    fill(third, sizeof third, 3);
    s = (struct job){.kind = J_SEND, .c = b, .buf = second, .n = sizeof second};
    t = start_blocked(&s); /* blocked finishing the first frame */
    mp_interrupt();
    join_interrupted(t, &s);
    s = (struct job){.kind = J_SEND, .c = b, .buf = third, .n = sizeof third};
    t = t_thread(run_job, &s);
    memset(buf, 0, n);
    ASSERT_EQ(mp_conn_recv(a, buf, n, 30 * t_scale()), (ssize_t)sizeof third);
    ASSERT_PATTERN(buf, sizeof third, 3);
    t_join_thread(t);
    ASSERT_OK(s.result);
    ASSERT_ERR(mp_conn_recv(a, buf, n, 0), MP_ETIMEDOUT);
    /* interrupted before any byte went out: nothing of it, nothing owed */
    mp_interrupt();
    ASSERT_ERR(mp_conn_send(b, "abc", 3), MP_EINTR);
    ASSERT_ERR(mp_conn_recv(a, buf, n, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_conn_send(b, "def", 3));
    ASSERT_EQ(mp_conn_recv(a, buf, n, 5), 3);
    ASSERT_TRUE(memcmp(buf, "def", 3) == 0);
    ASSERT_ERR(mp_conn_recv(a, buf, n, 0), MP_ETIMEDOUT);
    free(big);
    free(buf);
    mp_conn_free(a);
    mp_conn_free(b);
}

/* ---- a receive stopped in the middle of a message ----------------------- */

#define MID (8 * MIB)

static int send_mid(void *arg)
{
    (void)arg;
    mp_conn_free(g.a);
    char *buf = malloc(MID);
    if (!buf)
        return 3;
    fill(buf, MID, 7);
    if (mp_conn_send(g.b, buf, MID) != 0)
        return 1;
    fill(buf, 100, 8);
    if (mp_conn_send(g.b, buf, 100) != 0)
        return 1;
    fill(buf, MID, 9);
    if (mp_conn_send(g.b, buf, MID) != 0)
        return 1;
    free(buf);
    return 0;
}

/* Waits until the child is blocked inside a send, then stops it there. */
static void stop_mid_send(mp_process *p)
{
    ASSERT_EQ(mp_conn_poll(g.a, 30 * t_scale()), 1);
    ASSERT_EQ(kill(mp_process_pid(p), SIGSTOP), 0);
    t_await_state(mp_process_pid(p), 'T');
}

TEST(recv_stopped_mid_message_keeps_it)
{
    new_pipe(&g.a, &g.b, true);
    mp_process *p = t_start(send_mid, NULL, NULL);
    mp_conn_free(g.b);
    pid_t pid = mp_process_pid(p);
    char *buf = malloc(MID);
    ASSERT_TRUE(buf);

    stop_mid_send(p);
    ASSERT_ERR(mp_conn_recv(g.a, buf, MID, 0.1), MP_ETIMEDOUT); /* took a part */
    ASSERT_EQ(mp_conn_poll(g.a, 0), 1);                          /* which is kept */
    ASSERT_ERR(mp_conn_recv(g.a, buf, 100, 0), MP_EMSGSIZE);     /* against its length */
    void *q;
    size_t len;
    ASSERT_ERR(mp_conn_recv_alloc(g.a, &q, &len, 0), MP_ETIMEDOUT); /* alloc, and back */
    struct job j = {.kind = J_RECV, .c = g.a, .buf = buf, .n = MID, .timeout = MP_FOREVER};
    pthread_t t = start_blocked(&j);
    mp_interrupt();
    join_interrupted(t, &j);
    ASSERT_EQ(kill(pid, SIGCONT), 0);
    memset(buf, 0, MID);
    ASSERT_EQ(mp_conn_recv(g.a, buf, MID, 30 * t_scale()), (ssize_t)MID);
    ASSERT_PATTERN(buf, MID, 7);
    ASSERT_EQ(mp_conn_recv(g.a, buf, MID, 30 * t_scale()), 100);
    ASSERT_PATTERN(buf, 100, 8);

    /* the same with recv_alloc, whose buffer is the stash */
    stop_mid_send(p);
    ASSERT_ERR(mp_conn_recv_alloc(g.a, &q, &len, 0.1), MP_ETIMEDOUT);
    j = (struct job){.kind = J_RECV_ALLOC, .c = g.a, .timeout = MP_FOREVER};
    t = start_blocked(&j);
    mp_interrupt();
    join_interrupted(t, &j);
    ASSERT_EQ(kill(pid, SIGCONT), 0);
    ASSERT_OK(mp_conn_recv_alloc(g.a, &q, &len, 30 * t_scale()));
    ASSERT_EQ(len, MID);
    ASSERT_PATTERN(q, MID, 9);
    free(q);

    t_join(p, 0);
    ASSERT_ERR(mp_conn_recv(g.a, buf, MID, 10), MP_ECLOSED);
    free(buf);
    mp_conn_free(g.a);
}

/* ---- poll, fileno, bad input, descriptors -------------------------------- */

TEST(poll_reports_data_and_eof)
{
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    ASSERT_EQ(mp_conn_poll(a, 0), 0);
    ASSERT_OK(mp_conn_send(b, "x", 1));
    ASSERT_EQ(mp_conn_poll(a, 0), 1);
    ASSERT_EQ(mp_conn_poll(a, MP_FOREVER), 1);
    char buf[4];
    ASSERT_EQ(mp_conn_recv(a, buf, sizeof buf, 0), 1);
    ASSERT_EQ(mp_conn_poll(a, 0), 0);
    mp_interrupt();
    ASSERT_ERR(mp_conn_poll(a, 5), MP_EINTR);
    ASSERT_EQ(mp_conn_poll(b, 0), 0);
    mp_conn_free(b);
    ASSERT_EQ(mp_conn_poll(a, 0), 1); /* EOF */
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0), MP_ECLOSED);
    ASSERT_EQ(mp_conn_poll(a, 0), 1);
    mp_conn_free(a);
}

TEST(fileno_and_cloexec)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        mp_conn *a, *b;
        new_pipe(&a, &b, duplex);
        int fa = mp_conn_fileno(a), fb = mp_conn_fileno(b);
        ASSERT_GE(fa, 0);
        ASSERT_GE(fb, 0);
        ASSERT_NE(fa, fb);
        ASSERT_TRUE(fcntl(fa, F_GETFD) & FD_CLOEXEC);
        ASSERT_TRUE(fcntl(fb, F_GETFD) & FD_CLOEXEC);
        ASSERT_TRUE(!(fcntl(fa, F_GETFL) & O_NONBLOCK)); /* the shared description is left alone */
        mp_conn_free(a);
        mp_conn_free(b);
    }
    ASSERT_EQ(mp_conn_fileno(NULL), -1);
}

static int exit_zero(void *arg)
{
    (void)arg;
    return 0;
}

/* Once pipes exist, every descriptor the library holds is close-on-exec:
 * the arena's memfd, the interrupt slots' eventfds, the lifelines' ends,
 * the sentinels (pidfds) and the sockets. Each kind is brought into being
 * here, then every descriptor of the process is looked at (the harness's own
 * channels are close-on-exec too; 0, 1 and 2 are not ours). */
static void fd_target(int fd, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
}

TEST(every_descriptor_the_library_holds_is_cloexec)
{
    /* what the process inherited from whoever ran it is not ours; the
     * arena's memfd (opened at load) is */
    bool inherited[1024] = {false};
    for (int fd = 3; fd < 1024; fd++) {
        char target[256];
        fd_target(fd, target, sizeof target);
        inherited[fd] = fcntl(fd, F_GETFD) >= 0 && strncmp(target, "/memfd:", 7) != 0;
    }
    mp_conn *a, *b;
    new_pipe(&a, &b, true);
    mp_queue *q;
    ASSERT_OK(mp_queue_new(&q, NULL));
    mp_process *p;
    ASSERT_OK(mp_process_new(&p, exit_zero, NULL, NULL));
    ASSERT_OK(mp_process_start(p)); /* a pidfd and a lifeline's write end */
    int fds[2] = {mp_conn_fileno(a), mp_process_sentinel(p)};
    ASSERT_OK(mp_wait(fds, 2, NULL, 0.001)); /* a wait slot's eventfd */
    ASSERT_ERR(mp_conn_recv(a, NULL, 0, 0.001), MP_ETIMEDOUT);
    int open_fds = 0;
    for (int fd = 3; fd < 1024; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0 || inherited[fd])
            continue;
        open_fds++;
        if (!(flags & FD_CLOEXEC)) {
            char target[256];
            fd_target(fd, target, sizeof target);
            T_FAIL("descriptor %d (%s) is not close-on-exec", fd, target);
        }
    }
    ASSERT_GE(open_fds, 4); /* memfd, two sockets, a pidfd at least */
    ASSERT_OK(mp_process_join(p, 10 * t_scale()));
    mp_process_free(p);
    mp_queue_free(q);
    mp_conn_free(a);
    mp_conn_free(b);
}

TEST(bad_input_is_einval)
{
    mp_conn *a, *b;
    ASSERT_ERR(mp_pipe(NULL, &b, true), MP_EINVAL);
    ASSERT_ERR(mp_pipe(&a, NULL, false), MP_EINVAL);
    new_pipe(&a, &b, true);
    char buf[4];
    void *p;
    size_t len;
    ASSERT_ERR(mp_conn_send(NULL, "x", 1), MP_EINVAL);
    ASSERT_ERR(mp_conn_send(a, NULL, 1), MP_EINVAL);
    ASSERT_ERR(mp_conn_send(a, buf, ((size_t)1 << 62) + 1), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv(NULL, buf, sizeof buf, 0), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv(a, NULL, 4, 0), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, NAN), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv_alloc(NULL, &p, &len, 0), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv_alloc(a, NULL, &len, 0), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv_alloc(a, &p, NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_conn_recv_alloc(a, &p, &len, NAN), MP_EINVAL);
    ASSERT_ERR(mp_conn_poll(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_conn_poll(a, NAN), MP_EINVAL);
    int fds[2] = {mp_conn_fileno(a), -1};
    ASSERT_ERR(mp_wait(NULL, 1, NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_wait(fds, 2, NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_wait(fds, 1, NULL, NAN), MP_EINVAL);
    ASSERT_ERR(mp_wait(fds, 1025, NULL, 0), MP_EINVAL);
    /* nothing was sent or taken by any of them */
    ASSERT_EQ(mp_conn_poll(a, 0), 0);
    ASSERT_EQ(mp_conn_poll(b, 0), 0);
    mp_conn_free(NULL); /* a no-op */
    mp_conn_free(a);
    mp_conn_free(b);
}

TEST(no_descriptor_leak)
{
    char buf[8];
    for (int round = 0; round < 2; round++) { /* the first makes the wait slot's eventfd */
        int before = t_count_fds();
        for (int i = 0; i < 200; i++) {
            mp_conn *a, *b;
            new_pipe(&a, &b, i % 2);
            ASSERT_OK(mp_conn_send(b, "x", 1));
            ASSERT_EQ(mp_conn_recv(a, buf, sizeof buf, 5), 1);
            ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, 0), MP_ETIMEDOUT);
            mp_conn_free(a);
            mp_conn_free(b);
        }
        if (round == 1)
            ASSERT_EQ(t_count_fds(), before);
    }
}

/* ---- a pipe inherited by a child: both ways -------------------------------- */

static int echo_reversed(void *arg)
{
    (void)arg;
    mp_conn_free(g.a);
    char *buf = malloc(MIB);
    if (!buf)
        return 3;
    for (;;) {
        ssize_t n = mp_conn_recv(g.b, buf, MIB, 30);
        if (n < 0)
            return 1;
        if (n == 0)
            break;
        for (ssize_t i = 0; i < n / 2; i++) {
            char c = buf[i];
            buf[i] = buf[n - 1 - i];
            buf[n - 1 - i] = c;
        }
        if (mp_conn_send(g.b, buf, (size_t)n) != 0)
            return 2;
    }
    free(buf);
    return 0;
}

TEST(duplex_round_trip_with_child)
{
    new_pipe(&g.a, &g.b, true);
    mp_process *p = t_start(echo_reversed, NULL, NULL);
    mp_conn_free(g.b);
    static const size_t sizes[] = {1, 19, 4096, 300000, MIB};
    char *out = malloc(MIB), *in = malloc(MIB);
    ASSERT_TRUE(out && in);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        fill(out, n, k);
        ASSERT_OK(mp_conn_send(g.a, out, n));
        ASSERT_EQ(mp_conn_recv(g.a, in, MIB, 30 * t_scale()), (ssize_t)n);
        for (size_t i = 0; i < n; i++)
            if (in[i] != out[n - 1 - i])
                T_FAIL("byte %zu of %zu came back wrong", i, n);
    }
    ASSERT_OK(mp_conn_send(g.a, NULL, 0)); /* the end */
    t_join(p, 0);
    ASSERT_ERR(mp_conn_recv(g.a, in, MIB, 10), MP_ECLOSED);
    free(out);
    free(in);
    mp_conn_free(g.a);
}
