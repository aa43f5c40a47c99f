/*
 * The queue-kill rounds (qkill_rounds.h): producers, consumers, the killer
 * and the checker's board.
 */
#include "qkill_rounds.h"

#include "os/os.h" /* mp__check_ns */

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define MAX_PRODUCERS 1024
#define MAX_SEQ 4096 /* messages a producer puts at most */

struct msg_head {
    uint32_t producer, seq, len, sum; /* len: the whole message's bytes */
};

struct board { /* in the arena: what every process reports */
    _Atomic int32_t acked[MAX_PRODUCERS]; /* the last seq whose put returned 0; -1 none */
    _Atomic uint8_t seen[MAX_PRODUCERS][MAX_SEQ];
    _Atomic uint32_t torn, dup, ghost, bad_get;
    _Atomic int stop;
    _Atomic uint64_t delivered;
};

static mp_queue *q;
static struct board *bd;

static uint32_t pattern(uint32_t producer, uint32_t seq, size_t i)
{
    return (uint32_t)((producer * 2654435761u) ^ (seq * 40503u) ^ (uint32_t)(i * 2246822519u));
}

static size_t msg_len(uint32_t producer, uint32_t seq, bool streaming)
{
    uint32_t h = pattern(producer, seq, 7);
    return streaming ? 100000 + h % 200000 /* past the 64 KiB ring: streamed */
                     : sizeof(struct msg_head) + h % 2000;
}

static void fill(char *m, uint32_t producer, uint32_t seq, size_t len)
{
    struct msg_head h = {producer, seq, (uint32_t)len, 0};
    for (size_t i = sizeof h; i < len; i++)
        m[i] = (char)pattern(producer, seq, i);
    uint32_t sum = 0;
    for (size_t i = sizeof h; i < len; i++)
        sum = sum * 31 + (uint8_t)m[i];
    h.sum = sum;
    memcpy(m, &h, sizeof h);
}

static bool intact(const char *m, size_t len)
{
    struct msg_head h;
    if (len < sizeof h)
        return false;
    memcpy(&h, m, sizeof h);
    if (h.len != len || h.producer >= MAX_PRODUCERS || h.seq >= MAX_SEQ)
        return false;
    uint32_t sum = 0;
    for (size_t i = sizeof h; i < len; i++) {
        if ((char)pattern(h.producer, h.seq, i) != m[i])
            return false;
        sum = sum * 31 + (uint8_t)m[i];
    }
    return sum == h.sum;
}

static int producer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    bool streaming = id % 4 == 3;
    char *m = malloc(400000);
    for (uint32_t seq = 0; seq < MAX_SEQ && !atomic_load(&bd->stop); seq++) {
        size_t len = msg_len(id, seq, streaming);
        fill(m, id, seq, len);
        int r;
        while ((r = mp_queue_put(q, m, len, 0.5)) == MP_EFULL)
            if (atomic_load(&bd->stop))
                return 0;
        if (r == MP_ECLOSED)
            return 0;
        if (r != 0)
            return 10;
        atomic_store(&bd->acked[id], (int32_t)seq);
    }
    free(m);
    return 0;
}

static void record(const char *m, size_t len)
{
    if (!intact(m, len)) {
        atomic_fetch_add(&bd->torn, 1);
        return;
    }
    struct msg_head h;
    memcpy(&h, m, sizeof h);
    if (atomic_fetch_add(&bd->seen[h.producer][h.seq], 1) != 0)
        atomic_fetch_add(&bd->dup, 1);
    if ((int32_t)h.seq > atomic_load(&bd->acked[h.producer]) + 1)
        atomic_fetch_add(&bd->ghost, 1); /* the producer never got that far */
    atomic_fetch_add(&bd->delivered, 1);
}

static int consumer(void *arg)
{
    (void)arg;
    for (;;) {
        void *m;
        size_t len;
        int r = mp_queue_get_alloc(q, &m, &len, 0.2);
        if (r == MP_EEMPTY) {
            if (atomic_load(&bd->stop))
                return 0;
            continue;
        }
        if (r == MP_ECLOSED)
            return 0;
        if (r != 0) {
            atomic_fetch_add(&bd->bad_get, 1);
            return 11;
        }
        record(m, len);
        free(m);
    }
}

struct crew {
    mp_process *p;
    bool consumer;
};

static mp_process *spawn(bool is_consumer, uint32_t *next_id)
{
    mp_process *p;
    void *arg = (void *)(uintptr_t)(is_consumer ? 0 : (*next_id)++);
    ASSERT_OK(mp_process_new(&p, is_consumer ? consumer : producer, arg, NULL));
    ASSERT_OK(mp_process_start(p));
    return p;
}

/* rounds kills among 3 producers (one streaming in four) and 3 consumers. */
struct qk_result qk_kill_rounds(int rounds, unsigned seed)
{
    mp__check_ns = 20000000; /* children notice a dead holder in 20 ms, not 250 */
    ASSERT_OK(mp_queue_new(&q, &(mp_queue_opts){.capacity = 64 << 10}));
    ASSERT_TRUE((bd = mp_shared_calloc(1, sizeof *bd)) != NULL);
    for (int i = 0; i < MAX_PRODUCERS; i++)
        atomic_store(&bd->acked[i], -1);
    srand(seed);
    uint32_t next_id = 0;
    struct crew c[6];
    for (int i = 0; i < 6; i++)
        c[i] = (struct crew){spawn(i >= 3, &next_id), i >= 3};
    int consumer_kills = 0, producer_kills = 0;
    for (int r = 0; r < rounds && next_id < MAX_PRODUCERS - 6; r++) {
        struct timespec ts = {0, (long)(rand() % 3000) * 1000};
        nanosleep(&ts, NULL);
        int i = rand() % 6;
        mp_process_kill(c[i].p);
        ASSERT_OK(mp_process_join(c[i].p, 10 * t_scale()));
        int code = mp_process_exitcode(c[i].p);
        ASSERT_TRUE(code == -SIGKILL || code == 0); /* a producer may have finished */
        mp_process_free(c[i].p);
        if (c[i].consumer)
            consumer_kills++;
        else
            producer_kills++;
        c[i].p = spawn(c[i].consumer, &next_id);
    }
    /* stop: producers end their loop, consumers drain what is left */
    atomic_store(&bd->stop, 1);
    for (int i = 0; i < 6; i++)
        if (!c[i].consumer)
            t_join(c[i].p, 0);
    ASSERT_OK(mp_queue_close(q));
    for (int i = 0; i < 6; i++)
        if (c[i].consumer)
            t_join(c[i].p, 0);
    /* the checker drains whatever is left here */
    void *m;
    size_t len;
    int r;
    while ((r = mp_queue_get_alloc(q, &m, &len, 1)) == 0) {
        record(m, len);
        free(m);
    }
    ASSERT_ERR(r, MP_ECLOSED);
    ASSERT_EQ(mp_queue_qsize(q), 0);

    struct qk_result res = {.producer_kills = producer_kills, .consumer_kills = consumer_kills,
                            .producers = next_id};
    for (uint32_t id = 0; id < next_id; id++) {
        int32_t a = atomic_load(&bd->acked[id]);
        for (int32_t s = 0; s <= a; s++, res.acked++)
            res.missing += atomic_load(&bd->seen[id][s]) == 0;
    }
    res.delivered = atomic_load(&bd->delivered);
    res.torn = atomic_load(&bd->torn);
    res.dup = atomic_load(&bd->dup);
    res.ghost = atomic_load(&bd->ghost);
    res.bad_get = atomic_load(&bd->bad_get);
    printf("%d rounds: %d producers and %d consumers killed, %u producers; %llu puts "
           "returned 0, %llu delivered, %llu of those missing\n",
           rounds, producer_kills, consumer_kills, next_id, (unsigned long long)res.acked,
           (unsigned long long)res.delivered, (unsigned long long)res.missing);
    mp_queue_free(q);
    mp_shared_free(bd);
    return res;
}

bool qk_ok(const struct qk_result *r)
{
    return r->torn == 0 && r->dup == 0 && r->ghost == 0 && r->bad_get == 0 &&
           r->missing <= (uint64_t)r->consumer_kills && r->acked > 0;
}

void qk_check(const struct qk_result *r)
{
    ASSERT_EQ(r->torn, 0);
    ASSERT_EQ(r->dup, 0);
    ASSERT_EQ(r->ghost, 0);
    ASSERT_EQ(r->bad_get, 0);
    ASSERT_LE(r->missing, (uint64_t)r->consumer_kills);
    ASSERT_GT(r->acked, 0);
}

/* After the storm, a fresh queue-mate: the same queue, new processes. */
static int late_producer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        if (mp_queue_put(q, &i, sizeof i, 30) != 0)
            return 1;
    return 0;
}

static int late_consumer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        int v;
        if (mp_queue_get(q, &v, sizeof v, 30) != sizeof v || v != i)
            return 1;
    }
    return 0;
}

void qk_after_kills(void)
{
    mp__check_ns = 20000000;
    ASSERT_OK(mp_queue_new(&q, &(mp_queue_opts){.capacity = 4096}));
    ASSERT_TRUE((bd = mp_shared_calloc(1, sizeof *bd)) != NULL);
    for (int i = 0; i < MAX_PRODUCERS; i++)
        atomic_store(&bd->acked[i], -1);
    uint32_t id = 0;
    srand(7);
    for (int round = 0; round < 100; round++) {
        mp_process *p = spawn(round % 2, &id);
        struct timespec ts = {0, (long)(rand() % 2000) * 1000};
        nanosleep(&ts, NULL);
        mp_process_kill(p);
        ASSERT_OK(mp_process_join(p, 10 * t_scale()));
        mp_process_free(p);
    }
    /* drain what the storm left (waiting long enough to take the get side
     * over from a consumer killed holding it), then a fresh pair must work
     * end to end */
    void *m;
    size_t len;
    while (mp_queue_get_alloc(q, &m, &len, 1) == 0) {
        ASSERT_TRUE(intact(m, len));
        free(m);
    }
    mp_process *c = t_start(late_consumer, NULL, NULL);
    mp_process *p = t_start(late_producer, NULL, NULL);
    t_join(p, 0);
    t_join(c, 0);
    ASSERT_EQ(mp_queue_qsize(q), 0);
    mp_queue_free(q);
    mp_shared_free(bd);
}
