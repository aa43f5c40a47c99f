/* The queue's internal interface (the queue is in queue.c). */
#ifndef MPROC_QUEUE_H
#define MPROC_QUEUE_H

#include "mproc.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- for the fuzzer ------------------------------------------------------
 * What a queue's peers write in shared memory, so that fuzz/fuzz_queue.c can
 * play a buggy or dying one. The header before the ring has a fixed size
 * (ring - (char *)q); a copy of it with the ring after it is a queue too. */
struct mp__queue_raw {
    char *ring;
    uint64_t cap;
    _Atomic uint64_t *pword, *gword;
    _Atomic uint32_t *live;
    _Atomic uint64_t *owner;
    uint64_t *head_seen, *tail_seen; /* hints, shared like the rest */
};
void mp__queue_raw(mp_queue *q, struct mp__queue_raw *r);
/* Leaves a stash as a consumer stopped midway would (queue.c, I5): got of
 * total bytes of stream `serial`, data's first min(got, total) bytes, made
 * whole at get count count_at. false: no memory. */
bool mp__queue_stash(mp_queue *q, uint64_t total, uint64_t got, uint32_t serial,
                     uint32_t count_at, const void *data);

#endif /* MPROC_QUEUE_H */
