/*
 * The queue under fire: producers, consumers and streaming producers are
 * SIGKILLed at random instants, hundreds of times, while the others keep
 * working; then a checker drains the queue and proves what the design
 * promises (src/queue.c, I1..I5):
 *
 *   - nothing torn: every message delivered is whole (its checksum holds);
 *   - nothing twice: no message is delivered more than once;
 *   - nothing lost once put returned: every message whose put returned 0 is
 *     delivered, except at most one per consumer killed (the one it had
 *     taken, or was streaming out, when it died);
 *   - a message whose put was cut by the kill is delivered whole or not at
 *     all, and nothing a producer never started is ever seen;
 *   - the queue still works for processes started afterwards.
 */
#include "qkill_rounds.h"

#include <time.h>

TEST(random_kills_tear_lose_and_duplicate_nothing)
{
    struct qk_result r = qk_kill_rounds(300, 1);
    qk_check(&r);
}

TEST(random_kills_with_another_seed)
{
    struct qk_result r = qk_kill_rounds(300, (unsigned)time(NULL));
    qk_check(&r);
}

TEST(queue_works_for_new_processes_after_kills_inside_it)
{
    qk_after_kills();
}
