/*
 * The queue-kill rounds: producers (one in four streaming messages larger
 * than the ring), consumers and a killer on one queue (see test_qkill.c for
 * what is proved). Shared by test_qkill and the torture run.
 */
#ifndef MPROC_TEST_QKILL_ROUNDS_H
#define MPROC_TEST_QKILL_ROUNDS_H

#include "harness.h"

#include <stdbool.h>
#include <stdint.h>

struct qk_result {
    int producer_kills, consumer_kills;
    uint32_t producers;      /* producers started in all */
    uint64_t acked;          /* puts that returned 0 */
    uint64_t delivered;      /* messages taken, whole */
    uint64_t missing;        /* acked but never delivered */
    uint32_t torn, dup, ghost, bad_get;
};

/* rounds kills among 3 producers and 3 consumers on a 64 KiB queue, then
 * the drain; what was seen. The queue and the board are freed. */
struct qk_result qk_kill_rounds(int rounds, unsigned seed);
/* Nothing torn, twice or invented, at most one loss per consumer killed. */
bool qk_ok(const struct qk_result *r);
void qk_check(const struct qk_result *r); /* the same, or fail the case */
/* Kills inside a small queue, then a fresh producer and consumer must work. */
void qk_after_kills(void);

#endif
