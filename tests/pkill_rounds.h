/*
 * The pool-kill rounds: a map runs over a pool while its workers are
 * SIGKILLed at chosen instants, then every item is checked (see
 * test_pkill.c for what is proved). Shared by test_pkill and the torture
 * run; a failed check ends the process through T_FAIL.
 */
#ifndef MPROC_TEST_PKILL_ROUNDS_H
#define MPROC_TEST_PKILL_ROUNDS_H

#include "harness.h"

#include <stdbool.h>
#include <stddef.h>

#define PK_MAX_N 5000 /* items in one round at most */

struct pk_totals {
    long rounds, items, kills, double_kills, idle_kills, missed, failed, unstarted_failed,
        mid_chunk;
};

struct pk_round {
    size_t n, cs;
    int park;   /* items that wait to be killed: 0, 1 or 2 */
    int random; /* random kills of running workers: 0, 1 or 2 */
    bool arena; /* in, out and status in the arena, else private */
    bool idle;  /* after the round, kill a worker that is idle */
    bool quick; /* items of next to no work */
};

/* The board every item records on, in the arena: make it before the
 * rounds, free it after. */
void pk_board_new(void);
void pk_board_free(void);
/* A pool of n workers, or fail. */
mp_pool *pk_new_pool(int n);
void pk_one_round(mp_pool *p, const struct pk_round *rd, unsigned *seed, struct pk_totals *t);
/* The r-th round of a random mix: sizes, chunk sizes, 0..2 kills. */
struct pk_round pk_random_round(unsigned *seed, int r);
/* rounds random rounds on p. */
void pk_torture(mp_pool *p, int rounds, unsigned seed, struct pk_totals *t);
/* One line on stderr. */
void pk_summary(const char *what, unsigned seed, const struct pk_totals *t, double secs);

#endif
