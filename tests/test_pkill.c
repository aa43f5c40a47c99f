/*
 * The pool under fire: workers are SIGKILLed at random instants, hundreds of
 * times, while maps run over them (mid-item, mid-chunk, between items, idle,
 * two at once); then a checker proves what src/pool.c promises:
 *
 *   - a worker that dies while running an item fails that item alone, with
 *     MP_EWORKER in its status: at most one failed item per kill, and the
 *     item's recorded runner (if it started at all) is a worker we killed;
 *   - inside a chunk, the rest of the chunk runs elsewhere: the items after
 *     the failed one are done by another worker;
 *   - every other item ran exactly once and its result is correct;
 *   - the call returns MP_EWORKER exactly when some item failed;
 *   - nothing hangs (every wait has a limit), replacements keep the pool
 *     working, and at mp_pool_free no process, descriptor or arena byte is
 *     left behind.
 *
 * Every item records in the arena, under its index, which process ran it
 * and whether it started and finished. The killer (the test's thread)
 * chooses its moment by the number of items started, never by sleeping,
 * and kills only pids it saw running items in this round: workers are our
 * children and die only by our hand, so such a pid is a live worker. Some
 * items "park" (wait forever) so that a kill lands inside a known item of
 * a known chunk.
 *
 * MPROC_PKILL_VERBOSE=1 prints a line per round; on a hang the case prints
 * the workers' states and the items started but not finished.
 */
#include "pkill_rounds.h"

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
/* ---- cases ------------------------------------------------------------------ */

TEST(random_worker_kills_during_maps)
{
    pk_board_new();
    mp_pool *p = pk_new_pool(3);
    struct pk_totals t = {0};
    unsigned seed = 1;
    double t0 = t_now();
    pk_torture(p, 200, seed, &t);
    /* and the pool still works after it all */
    struct pk_round calm = {.n = 1000, .cs = 0};
    struct pk_totals c = {0};
    pk_one_round(p, &calm, &seed, &c);
    ASSERT_EQ(c.failed, 0);
    pk_summary("random kills during maps", 1, &t, t_now() - t0);
    ASSERT_GT(t.kills, 0);
    ASSERT_GT(t.failed, 0);
    mp_pool_free(p);
    pk_board_free();
}

TEST(kills_inside_chunks_rerun_the_rest_elsewhere)
{
    pk_board_new();
    mp_pool *p = pk_new_pool(3);
    struct pk_totals t = {0};
    unsigned seed = 2;
    double t0 = t_now();
    static const size_t chunks[] = {100, 37, 256};
    for (int r = 0; r < 80; r++) {
        struct pk_round rd = {
            .n = 1000 + (unsigned)rand_r(&seed) % (PK_MAX_N - 999),
            .cs = chunks[r % 3],
            .park = 1 + r % 2,      /* one, or two killed at once */
            .random = r % 4 == 3,   /* and a worker running some item */
            .arena = (r / 3) % 2,
        };
        pk_one_round(p, &rd, &seed, &t);
    }
    pk_summary("kills inside chunks", 2, &t, t_now() - t0);
    ASSERT_GE(t.mid_chunk, 80 + 40); /* every parked item is mid-chunk */
    mp_pool_free(p);
    pk_board_free();
}

TEST(pool_is_clean_after_the_torture)
{
    pk_board_new();
    int fds = t_count_fds_after_a_pool();
    size_t usage = mp_shared_usage();
    mp_pool *p = pk_new_pool(3);
    struct pk_totals t = {0};
    unsigned seed = 3;
    double t0 = t_now();
    pk_torture(p, 60, seed, &t);
    for (int r = 0; r < 10; r++) {
        struct pk_round rd = {.n = 2000, .cs = 50, .park = 2, .arena = r % 2};
        pk_one_round(p, &rd, &seed, &t);
    }
    /* a last kill of an idle worker, then free at once: the manager may be
     * between the death and the replacement */
    struct pk_round last = {.n = 100, .cs = 1, .idle = true};
    pk_one_round(p, &last, &seed, &t);
    pk_summary("before the free", 3, &t, t_now() - t0);
    mp_pool_free(p);
    pid_t first = 0;
    int n = t_await_no_children(2, &first);
    if (n)
        T_FAIL("%d process(es) left after mp_pool_free, the first %d", n, (int)first);
    ASSERT_EQ(t_count_fds(), fds);
    ASSERT_EQ(mp_shared_usage(), usage);
    pk_board_free();
}

/* Waits until the pool has nproc live workers and all of them sleep
 * (killed ones may linger as zombies until the manager reaps them). */
static void pk_await_all_asleep(int nproc)
{
    double end = t_now() + 10 * t_scale();
    for (;;) {
        pid_t kids[16];
        int m = t_children(kids, 16), live = 0, asleep = 0;
        for (int i = 0; i < m && i < 16; i++) {
            char st = t_proc_state(kids[i]);
            live += st != 'Z' && st != 'X' && st != '?';
            asleep += st == 'S';
        }
        if (live == nproc && asleep == nproc)
            return;
        if (t_now() > end)
            T_FAIL("the pool did not settle: %d children, %d live, %d asleep", m, live, asleep);
        usleep(1000);
    }
}

/* Workers killed between items (a map of many one-item chunks) and while
 * idle (just after a map, looking for more work or asleep), over and over;
 * after each, once every worker (the replacement too) sleeps, a map of one
 * item: it must wake a worker and run. */
TEST(kills_between_items_and_while_idle_leave_the_pool_working)
{
    pk_board_new();
    mp_pool *p = pk_new_pool(2);
    struct pk_totals t = {0};
    unsigned seed = 4;
    double t0 = t_now();
    for (int r = 0; r < 300; r++) {
        struct pk_round rd = {.n = r % 2 ? 1 : 2000, .cs = 1, .random = r % 2 == 0,
                           .idle = r % 4 == 1, .arena = r % 3 == 0, .quick = r % 2 == 0};
        pk_one_round(p, &rd, &seed, &t);
        pk_await_all_asleep(2);
    }
    pk_summary("kills between items and while idle", 4, &t, t_now() - t0);
    ASSERT_EQ(t.idle_kills, 75);
    mp_pool_free(p);
    pk_board_free();
}
