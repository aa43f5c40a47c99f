/*
 * Owner identity: how a waiter tells that a lock's holder has ended. The
 * kernel is the judge (os/olock.c): no /proc, no pid number alone, no
 * descriptor needed, and a live holder is never taken for dead.
 */
#include "harness.h"

#include "arena.h"
#include "os/os.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

TEST(own_identity_is_registered_and_alive)
{
    uint64_t me = mp__olock_self();
    ASSERT_NE(me, 0);
    ASSERT_EQ((pid_t)(me & 0x3fffffff), getpid());
    ASSERT_NE(me >> 32, 0);
    ASSERT_EQ(mp__owner_state(me), MP__OWNER_ALIVE);
}

/* ---- a process that got a dead holder's pid back ------------------------ */

struct reuse {
    mp_lock *l;
    int r;
};
static struct reuse *R;

static int hold_and_stop(void *arg)
{
    (void)arg;
    mp_lock_acquire(R->l, MP_FOREVER);
    t_send(&to_parent, 1);
    pause();
    return 0;
}

static int acquire_lock(void *arg)
{
    (void)arg;
    R->r = mp_lock_acquire(R->l, 10 * t_scale());
    return 0;
}

/* In a pid namespace: the holder is killed holding the lock, then the next
 * process gets its pid back and asks for the lock. */
static int reuse_scenario(void)
{
    chans_open();
    R = mp_shared_calloc(1, sizeof *R);
    ASSERT_OK(mp_lock_new(&R->l));
    mp_process *a = t_start(hold_and_stop, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    pid_t dead = mp_process_pid(a);
    ASSERT_OK(mp_process_kill(a));
    t_join(a, -SIGKILL);
    t_set_last_pid(dead - 1);
    mp_process *b = t_start(acquire_lock, NULL, NULL);
    ASSERT_EQ(mp_process_pid(b), dead);
    t_join(b, 0);
    ASSERT_ERR(R->r, MP_EOWNERDEAD);
    chans_close();
    return 0;
}

TEST(holder_pid_reused_by_the_next_acquirer_is_still_dead)
{
    ASSERT_EQ(t_in_ns(T_NS_PID, reuse_scenario), 0);
}
