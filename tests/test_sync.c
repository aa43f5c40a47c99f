/* Synchronisation: DESIGN section 7. */
#include "harness.h"

#include "os/os.h" /* mp__hook, mp__check_ns */

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT 0.2 /* the timed waits */

/* ---- helpers ------------------------------------------------------------ */

/* What a thread returned, as an int. */
static int join_int(pthread_t t) { return (int)(intptr_t)t_join_thread(t); }

/* The call took at least timeout seconds, and not much more. */
static void assert_on_time(double t0, double timeout)
{
    double took = t_now() - t0;
    ASSERT_GE(took * 1e6 + 1, timeout * 1e6);
    ASSERT_LT(took * 1e3, (timeout + 2.0 * t_scale()) * 1e3); /* generous: the machine is shared */
}

/* Polls n_waiting until it reaches n (a hand-shake, not a sleep). */
static void await_n_waiting(mp_barrier *b, int n)
{
    double end = t_now() + 10 * t_scale();
    while (mp_barrier_n_waiting(b) != n) {
        if (t_now() > end)
            T_FAIL("n_waiting stayed %d, want %d", mp_barrier_n_waiting(b), n);
        sched_yield();
    }
}

static t_chan woke; /* children's reports: "ready" on to_parent, and "woken" */

static void waiter_chans_open(void)
{
    chans_open();
    woke = t_chan_new();
}

static void waiter_chans_close(void)
{
    chans_close();
    t_chan_close(&woke);
}

/* Joins p (60 s, scaled), frees it, and returns its exit code. */
static int join_code(mp_process *p)
{
    ASSERT_OK(mp_process_join(p, 60 * t_scale()));
    int code = mp_process_exitcode(p);
    mp_process_free(p);
    return code;
}

/* t_recv, failing the case with what did not come. */
static int recv_what(t_chan *c, double timeout, const char *what)
{
    int v;
    if (!t_try_recv(c, timeout, &v))
        T_FAIL("%s: nothing within %g s", what, timeout * t_scale());
    return v;
}

/* ---- hooks (mp__hook), set in children only ------------------------------ */

static const char *g_kill_at; /* the hook point where a child dies */

/* Kills this process at g_kill_at. */
static void kill_here(const char *where)
{
    if (strcmp(where, g_kill_at) == 0)
        raise(SIGKILL);
}

/* Kill the first waiter that reaches g_kill_at once the parent has armed it
 * (just before its release: a periodic look before that kills no one). */
static struct kill_first {
    _Atomic int armed;
    _Atomic int killed; /* 0 -> 1 by the one that dies */
} *g_kf;

static void kill_first_woken(const char *where)
{
    int zero = 0;
    if (strcmp(where, g_kill_at) == 0 && atomic_load(&g_kf->armed) &&
        atomic_compare_exchange_strong(&g_kf->killed, &zero, 1))
        raise(SIGKILL);
}

/* ---- exact sums under contention ---------------------------------------- */

enum { K_LOCK, K_RLOCK, K_SEM, K_BSEM, K_COND };
enum { WORKERS = 8, ROUNDS = 10000 };

static struct {
    int kind;
    mp_lock *lock;
    mp_rlock *rlock;
    mp_sem *sem;
    mp_cond *cond;
    int *counter; /* in the arena */
} cnt;

static int count_acquire(void)
{
    switch (cnt.kind) {
    case K_LOCK: return mp_lock_acquire(cnt.lock, MP_FOREVER);
    case K_RLOCK: { /* twice: recursion under contention */
        int r = mp_rlock_acquire(cnt.rlock, MP_FOREVER);
        return r ? r : mp_rlock_acquire(cnt.rlock, MP_FOREVER);
    }
    case K_SEM:
    case K_BSEM: return mp_sem_acquire(cnt.sem, MP_FOREVER);
    default: return mp_cond_acquire(cnt.cond, MP_FOREVER);
    }
}

static int count_release(void)
{
    switch (cnt.kind) {
    case K_LOCK: return mp_lock_release(cnt.lock);
    case K_RLOCK: {
        int r = mp_rlock_release(cnt.rlock);
        return r ? r : mp_rlock_release(cnt.rlock);
    }
    case K_SEM:
    case K_BSEM: return mp_sem_release(cnt.sem);
    default: return mp_cond_release(cnt.cond);
    }
}

static int count_worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        if (count_acquire() != 0)
            return 10;
        int v = *cnt.counter; /* a torn read-modify-write if exclusion fails */
        *(volatile int *)cnt.counter = v + 1;
        if (count_release() != 0)
            return 11;
    }
    return 0;
}

static void count_exactly(int kind)
{
    cnt.kind = kind;
    ASSERT_TRUE((cnt.counter = mp_shared_calloc(1, sizeof(int))) != NULL);
    switch (kind) {
    case K_LOCK: ASSERT_OK(mp_lock_new(&cnt.lock)); break;
    case K_RLOCK: ASSERT_OK(mp_rlock_new(&cnt.rlock)); break;
    case K_SEM: ASSERT_OK(mp_sem_new(&cnt.sem, 1, 0)); break;
    case K_BSEM: ASSERT_OK(mp_sem_new(&cnt.sem, 1, 1)); break;
    default: ASSERT_OK(mp_cond_new(&cnt.cond, NULL)); break;
    }
    mp_process *p[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        p[i] = t_start(count_worker, NULL, NULL);
    for (int i = 0; i < WORKERS; i++)
        t_join(p[i], 0);
    ASSERT_EQ(*cnt.counter, WORKERS * ROUNDS);
    switch (kind) {
    case K_LOCK: ASSERT_TRUE(!mp_lock_locked(cnt.lock)); break;
    case K_RLOCK: ASSERT_TRUE(!mp_rlock_locked(cnt.rlock)); break;
    case K_SEM:
    case K_BSEM: ASSERT_EQ(mp_sem_value(cnt.sem), 1); break;
    default: break;
    }
    mp_lock_free(cnt.lock);
    mp_rlock_free(cnt.rlock);
    mp_sem_free(cnt.sem);
    mp_cond_free(cnt.cond);
    mp_shared_free(cnt.counter);
}

TEST(lock_exact_sum_8_processes) { count_exactly(K_LOCK); }
TEST(rlock_exact_sum_8_processes) { count_exactly(K_RLOCK); }
TEST(semaphore_exact_sum_8_processes) { count_exactly(K_SEM); }
TEST(bounded_semaphore_exact_sum_8_processes) { count_exactly(K_BSEM); }
TEST(condition_lock_exact_sum_8_processes) { count_exactly(K_COND); }

/* ---- Lock ---------------------------------------------------------------- */

static mp_lock *g_lock;

static int release_g_lock(void *arg)
{
    (void)arg;
    return mp_lock_release(g_lock) == 0 ? 0 : 1;
}

TEST(lock_basics_and_release_by_another_process)
{
    ASSERT_OK(mp_lock_new(&g_lock));
    ASSERT_TRUE(!mp_lock_locked(g_lock));
    ASSERT_ERR(mp_lock_release(g_lock), MP_EPERM);
    ASSERT_OK(mp_lock_acquire(g_lock, MP_FOREVER));
    ASSERT_TRUE(mp_lock_locked(g_lock));
    ASSERT_ERR(mp_lock_acquire(g_lock, 0), MP_ETIMEDOUT); /* not recursive */
    t_join(t_start(release_g_lock, NULL, NULL), 0);            /* anyone may release */
    ASSERT_TRUE(!mp_lock_locked(g_lock));
    ASSERT_OK(mp_lock_acquire(g_lock, 0));
    ASSERT_OK(mp_lock_release(g_lock));
    ASSERT_ERR(mp_lock_release(g_lock), MP_EPERM);
    mp_lock_free(g_lock);
}

TEST(lock_timeout_on_time)
{
    mp_lock *l;
    ASSERT_OK(mp_lock_new(&l));
    ASSERT_OK(mp_lock_acquire(l, MP_FOREVER));
    double t0 = t_now();
    ASSERT_ERR(mp_lock_acquire(l, TIMEOUT), MP_ETIMEDOUT); /* its holder too blocks */
    assert_on_time(t0, TIMEOUT);
    ASSERT_OK(mp_lock_release(l));
    mp_lock_free(l);
}

/* Takes the lock, says so, and waits to be killed. */
static int hold_and_hang(void *arg)
{
    (void)arg;
    t_send(&to_parent, mp_lock_acquire(g_lock, MP_FOREVER));
    for (;;)
        pause();
    return 0;
}

TEST(lock_holder_killed_next_gets_ownerdead)
{
    waiter_chans_open();
    ASSERT_OK(mp_lock_new(&g_lock));
    mp_process *p = t_start(hold_and_hang, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    ASSERT_TRUE(mp_lock_locked(g_lock));
    ASSERT_ERR(mp_lock_acquire(g_lock, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_process_kill(p));
    t_join(p, -SIGKILL);
    double t0 = t_now();
    ASSERT_ERR(mp_lock_acquire(g_lock, 10), MP_EOWNERDEAD);
    double took = t_now() - t0;
    ASSERT_LT(took * 1e3, 1000 * t_scale()); /* the promise: within about a second */
    ASSERT_TRUE(mp_lock_locked(g_lock));       /* held by us now */
    ASSERT_ERR(mp_lock_acquire(g_lock, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_lock_release(g_lock));
    ASSERT_OK(mp_lock_acquire(g_lock, 0)); /* and it works as before */
    ASSERT_OK(mp_lock_release(g_lock));
    mp_lock_free(g_lock);
    g_lock = NULL;
    waiter_chans_close();
}

/* Sleeps on g_lock; the first of them woken once armed dies there. */
static int lock_waiter_first_woken_dies(void *arg)
{
    (void)arg;
    g_kill_at = "olock.woken";
    mp__hook = kill_first_woken;
    t_send(&to_parent, getpid()); /* about to wait */
    int r = mp_lock_acquire(g_lock, 30 * t_scale());
    mp__hook = NULL;
    t_send(&woke, r);
    if (r == 0 || r == MP_EOWNERDEAD)
        mp_lock_release(g_lock);
    return 0;
}

/* A release's wake goes to one sleeper; if that one dies before it takes the
 * lock, the other must still get it: it looks again every mp__check_ns. */
TEST(lock_waiter_killed_after_its_wake_other_gets_it)
{
    waiter_chans_open();
    ASSERT_TRUE((g_kf = mp_shared_calloc(1, sizeof *g_kf)) != NULL);
    ASSERT_OK(mp_lock_new(&g_lock));
    ASSERT_OK(mp_lock_acquire(g_lock, 0));
    mp_process *p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = t_start(lock_waiter_first_woken_dies, NULL, NULL);
        ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(p[i]));
    }
    for (int i = 0; i < 2; i++)
        t_await_state(mp_process_pid(p[i]), 'S');
    atomic_store(&g_kf->armed, 1);
    ASSERT_OK(mp_lock_release(g_lock));
    /* Without the look the survivor would sleep until its 30 s timeout. The
     * lock was free when its taker died: 0, not MP_EOWNERDEAD. */
    ASSERT_ERR(recv_what(&woke, 10, "the other waiter getting the lock"), 0);
    int a = join_code(p[0]), b = join_code(p[1]);
    ASSERT_TRUE((a == 0 && b == -SIGKILL) || (a == -SIGKILL && b == 0));
    ASSERT_EQ(atomic_load(&g_kf->killed), 1);
    ASSERT_TRUE(!mp_lock_locked(g_lock)); /* released by the survivor */
    ASSERT_OK(mp_lock_acquire(g_lock, 0));
    ASSERT_OK(mp_lock_release(g_lock));
    mp_lock_free(g_lock);
    g_lock = NULL;
    mp_shared_free(g_kf);
    waiter_chans_close();
}

/* A process whose main thread has exited while another thread holds the
 * lock is alive (its leader shows as a zombie in /proc): its lock must not
 * be taken over. */
static void *hold_for_parent(void *arg)
{
    (void)arg;
    t_send(&to_parent, mp_lock_acquire(g_lock, MP_FOREVER));
    t_recv(&to_child, 60); /* then release and end the process */
    mp_lock_release(g_lock);
    _exit(0); /* the process ends here; no atexit (nor leak check) of the parent's */
}

static int leader_exits(void *arg)
{
    (void)arg;
    pthread_t t;
    if (pthread_create(&t, NULL, hold_for_parent, NULL))
        return 1;
    pthread_exit(NULL);
}

static bool leader_is_zombie(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'Z';
}

TEST(holder_whose_main_thread_exited_is_not_dead)
{
    chans_open();
    ASSERT_OK(mp_lock_new(&g_lock));
    mp_process *p = t_start(leader_exits, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    double end = t_now() + 10 * t_scale();
    while (!leader_is_zombie(mp_process_pid(p)) && t_now() < end)
        poll(NULL, 0, 5);
    ASSERT_TRUE(leader_is_zombie(mp_process_pid(p)));
    /* Long enough for two owner checks: the holder lives, so no takeover. */
    ASSERT_ERR(mp_lock_acquire(g_lock, 0.6), MP_ETIMEDOUT);
    t_send(&to_child, 0);
    ASSERT_OK(mp_lock_acquire(g_lock, 10)); /* released for real */
    ASSERT_OK(mp_lock_release(g_lock));
    t_join(p, 0);
    mp_lock_free(g_lock);
    g_lock = NULL;
    chans_close();
}

/* ---- RLock --------------------------------------------------------------- */

static mp_rlock *g_rlock;

static void *rlock_other_thread(void *arg)
{
    (void)arg;
    int bad = 0;
    bad |= mp_rlock_release(g_rlock) != MP_EPERM;          /* not the owner */
    bad |= mp_rlock_acquire(g_rlock, 0) != MP_ETIMEDOUT;   /* owned by another thread */
    return (void *)(intptr_t)bad;
}

static int rlock_other_process(void *arg)
{
    (void)arg;
    if (mp_rlock_release(g_rlock) != MP_EPERM)
        return 1;
    if (mp_rlock_acquire(g_rlock, 0) != MP_ETIMEDOUT)
        return 2;
    return 0;
}

TEST(rlock_recursion_and_eperm)
{
    ASSERT_OK(mp_rlock_new(&g_rlock));
    ASSERT_ERR(mp_rlock_release(g_rlock), MP_EPERM); /* unlocked */
    for (int i = 0; i < 3; i++)
        ASSERT_OK(mp_rlock_acquire(g_rlock, 0));
    ASSERT_TRUE(mp_rlock_locked(g_rlock));
    ASSERT_EQ(join_int(t_thread(rlock_other_thread, NULL)), 0);
    t_join(t_start(rlock_other_process, NULL, NULL), 0);
    for (int i = 0; i < 3; i++) {
        ASSERT_TRUE(mp_rlock_locked(g_rlock));
        ASSERT_OK(mp_rlock_release(g_rlock));
    }
    ASSERT_TRUE(!mp_rlock_locked(g_rlock));
    ASSERT_ERR(mp_rlock_release(g_rlock), MP_EPERM);
    mp_rlock_free(g_rlock);
}

static void *rlock_hold_in_thread(void *arg)
{
    t_chan *c = arg;
    int r = mp_rlock_acquire(g_rlock, MP_FOREVER);
    t_send(&c[0], r);
    t_recv(&c[1], 10);
    return (void *)(intptr_t)mp_rlock_release(g_rlock);
}

TEST(rlock_timeout_on_time)
{
    ASSERT_OK(mp_rlock_new(&g_rlock));
    t_chan c[2] = {t_chan_new(), t_chan_new()};
    pthread_t t = t_thread(rlock_hold_in_thread, c);
    ASSERT_EQ(t_recv(&c[0], 10), 0);
    double t0 = t_now();
    ASSERT_ERR(mp_rlock_acquire(g_rlock, TIMEOUT), MP_ETIMEDOUT);
    assert_on_time(t0, TIMEOUT);
    t_send(&c[1], 0);
    ASSERT_EQ(join_int(t), 0);
    t_chan_close(&c[0]);
    t_chan_close(&c[1]);
    mp_rlock_free(g_rlock);
}

static int rlock_hold_and_hang(void *arg)
{
    (void)arg;
    int r = mp_rlock_acquire(g_rlock, MP_FOREVER);
    if (r == 0)
        r = mp_rlock_acquire(g_rlock, MP_FOREVER); /* depth 2 when it dies */
    t_send(&to_parent, r);
    for (;;)
        pause();
    return 0;
}

TEST(rlock_holder_killed_next_gets_ownerdead)
{
    waiter_chans_open();
    ASSERT_OK(mp_rlock_new(&g_rlock));
    mp_process *p = t_start(rlock_hold_and_hang, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    ASSERT_ERR(mp_rlock_release(g_rlock), MP_EPERM);
    ASSERT_OK(mp_process_kill(p));
    t_join(p, -SIGKILL);
    double t0 = t_now();
    ASSERT_ERR(mp_rlock_acquire(g_rlock, 10), MP_EOWNERDEAD);
    ASSERT_LT((t_now() - t0) * 1e3, 1000 * t_scale());
    ASSERT_OK(mp_rlock_acquire(g_rlock, 0)); /* ours now, recursive */
    ASSERT_OK(mp_rlock_release(g_rlock));
    ASSERT_OK(mp_rlock_release(g_rlock)); /* count was 1 */
    ASSERT_TRUE(!mp_rlock_locked(g_rlock));
    ASSERT_ERR(mp_rlock_release(g_rlock), MP_EPERM);
    ASSERT_OK(mp_rlock_acquire(g_rlock, 0));
    ASSERT_OK(mp_rlock_release(g_rlock));
    mp_rlock_free(g_rlock);
    waiter_chans_close();
}

/* ---- Semaphore ----------------------------------------------------------- */

TEST(bounded_semaphore_over_release)
{
    mp_sem *s;
    ASSERT_OK(mp_sem_new(&s, 1, 1));
    ASSERT_ERR(mp_sem_release(s), MP_EINVAL);
    ASSERT_EQ(mp_sem_value(s), 1);
    ASSERT_OK(mp_sem_acquire(s, 0));
    ASSERT_EQ(mp_sem_value(s), 0);
    ASSERT_ERR(mp_sem_acquire(s, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_sem_release(s));
    ASSERT_ERR(mp_sem_release(s), MP_EINVAL);
    mp_sem_free(s);

    ASSERT_OK(mp_sem_new(&s, 0, 2));
    ASSERT_OK(mp_sem_release(s));
    ASSERT_OK(mp_sem_release(s));
    ASSERT_ERR(mp_sem_release(s), MP_EINVAL);
    ASSERT_EQ(mp_sem_value(s), 2);
    mp_sem_free(s);

    ASSERT_OK(mp_sem_new(&s, 5, 0)); /* plain: no bound */
    for (int i = 0; i < 10; i++)
        ASSERT_OK(mp_sem_release(s));
    ASSERT_EQ(mp_sem_value(s), 15);
    mp_sem_free(s);
}

TEST(semaphore_timeout_on_time)
{
    mp_sem *s;
    ASSERT_OK(mp_sem_new(&s, 0, 0));
    double t0 = t_now();
    ASSERT_ERR(mp_sem_acquire(s, TIMEOUT), MP_ETIMEDOUT);
    assert_on_time(t0, TIMEOUT);
    mp_sem_free(s);
}

static mp_sem *g_sem;

static int sem_taker(void *arg)
{
    (void)arg;
    t_send(&to_parent, 0); /* about to wait */
    if (mp_sem_acquire(g_sem, 30) != 0)
        return 1;
    t_send(&to_parent, getpid());
    return 0;
}

TEST(semaphore_several_waiters)
{
    enum { N = 4 };
    waiter_chans_open();
    ASSERT_OK(mp_sem_new(&g_sem, 0, 0));
    mp_process *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = t_start(sem_taker, NULL, NULL);
        ASSERT_EQ(t_recv(&to_parent, 10), 0);
        t_await_state(mp_process_pid(p[i]), 'S');
    }
    ASSERT_OK(mp_sem_release(g_sem));
    ASSERT_OK(mp_sem_release(g_sem));
    int a = t_recv(&to_parent, 10), b = t_recv(&to_parent, 10), v;
    ASSERT_NE(a, b);
    ASSERT_TRUE(!t_try_recv(&to_parent, 0.1, &v)); /* two counts, two takers */
    ASSERT_EQ(mp_sem_value(g_sem), 0);
    ASSERT_OK(mp_sem_release(g_sem));
    ASSERT_OK(mp_sem_release(g_sem));
    t_recv(&to_parent, 10);
    t_recv(&to_parent, 10);
    for (int i = 0; i < N; i++)
        t_join(p[i], 0);
    ASSERT_EQ(mp_sem_value(g_sem), 0);
    mp_sem_free(g_sem);
    waiter_chans_close();
}

/* Sleeps on g_sem; the first of them woken once armed dies there. */
static int sem_waiter_first_woken_dies(void *arg)
{
    (void)arg;
    g_kill_at = "sem.woken";
    mp__hook = kill_first_woken;
    t_send(&to_parent, getpid()); /* about to wait */
    int r = mp_sem_acquire(g_sem, 30 * t_scale());
    mp__hook = NULL;
    t_send(&woke, r);
    return 0;
}

/* A release's wake goes to one sleeper; if that one dies before it takes the
 * unit, the other must still take it: it looks again every mp__check_ns. */
TEST(semaphore_waiter_killed_after_its_wake_other_takes_it)
{
    waiter_chans_open();
    ASSERT_TRUE((g_kf = mp_shared_calloc(1, sizeof *g_kf)) != NULL);
    ASSERT_OK(mp_sem_new(&g_sem, 0, 0));
    mp_process *p[2];
    for (int i = 0; i < 2; i++) {
        p[i] = t_start(sem_waiter_first_woken_dies, NULL, NULL);
        ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(p[i]));
    }
    for (int i = 0; i < 2; i++)
        t_await_state(mp_process_pid(p[i]), 'S');
    atomic_store(&g_kf->armed, 1);
    ASSERT_OK(mp_sem_release(g_sem));
    /* Without the look the survivor would sleep until its 30 s timeout. */
    ASSERT_ERR(recv_what(&woke, 10, "the other waiter taking the unit"), 0);
    int a = join_code(p[0]), b = join_code(p[1]);
    ASSERT_TRUE((a == 0 && b == -SIGKILL) || (a == -SIGKILL && b == 0));
    ASSERT_EQ(atomic_load(&g_kf->killed), 1);
    ASSERT_EQ(mp_sem_value(g_sem), 0); /* one release, one taker */
    mp_sem_free(g_sem);
    mp_shared_free(g_kf);
    waiter_chans_close();
}

/* ---- Event --------------------------------------------------------------- */

static mp_event *g_e1, *g_e2;

/* Waits for e1, clears it, sets e2: the other half of a ping-pong. */
static int event_echo(void *arg)
{
    int rounds = *(int *)arg;
    t_send(&to_parent, 0); /* about to wait */
    for (int i = 0; i < rounds; i++) {
        if (mp_event_wait(g_e1, 30) != 0)
            return 1;
        if (!mp_event_is_set(g_e1))
            return 2;
        mp_event_clear(g_e1);
        mp_event_set(g_e2);
    }
    return 0;
}

TEST(event_set_clear_wait_across_processes)
{
    waiter_chans_open();
    ASSERT_OK(mp_event_new(&g_e1));
    ASSERT_OK(mp_event_new(&g_e2));
    ASSERT_TRUE(!mp_event_is_set(g_e1));
    ASSERT_ERR(mp_event_wait(g_e1, 0), MP_ETIMEDOUT);

    /* The peer asleep in the kernel, then woken. */
    int one = 1;
    mp_process *p = t_start(event_echo, &one, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    t_await_state(mp_process_pid(p), 'S');
    ASSERT_OK(mp_event_set(g_e1));
    ASSERT_OK(mp_event_wait(g_e2, 10));
    t_join(p, 0);
    ASSERT_TRUE(!mp_event_is_set(g_e1)); /* cleared by the child */
    ASSERT_TRUE(mp_event_is_set(g_e2));
    ASSERT_OK(mp_event_wait(g_e2, 0)); /* a set event answers at once, again and again */
    ASSERT_OK(mp_event_set(g_e2));     /* setting a set one is fine */
    ASSERT_OK(mp_event_clear(g_e2));
    ASSERT_OK(mp_event_clear(g_e2));
    ASSERT_TRUE(!mp_event_is_set(g_e2));

    /* Many round trips: spinning and sleeping peers alike. */
    int rounds = 2000;
    p = t_start(event_echo, &rounds, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    for (int i = 0; i < rounds; i++) {
        ASSERT_OK(mp_event_set(g_e1));
        ASSERT_OK(mp_event_wait(g_e2, 30));
        ASSERT_OK(mp_event_clear(g_e2));
    }
    t_join(p, 0);
    mp_event_free(g_e1);
    mp_event_free(g_e2);
    waiter_chans_close();
}

static int event_waiter(void *arg)
{
    (void)arg;
    t_send(&to_parent, 0); /* about to wait */
    return mp_event_wait(g_e1, 30) == 0 ? 0 : 1;
}

TEST(event_set_wakes_every_waiter)
{
    waiter_chans_open();
    ASSERT_OK(mp_event_new(&g_e1));
    mp_process *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = t_start(event_waiter, NULL, NULL);
        ASSERT_EQ(t_recv(&to_parent, 10), 0);
        t_await_state(mp_process_pid(p[i]), 'S');
    }
    ASSERT_OK(mp_event_set(g_e1));
    ASSERT_OK(mp_event_clear(g_e1)); /* at once: they saw it set all the same */
    for (int i = 0; i < 3; i++)
        t_join(p[i], 0);
    mp_event_free(g_e1);
    waiter_chans_close();
}

TEST(event_timeout_on_time)
{
    mp_event *e;
    ASSERT_OK(mp_event_new(&e));
    double t0 = t_now();
    ASSERT_ERR(mp_event_wait(e, TIMEOUT), MP_ETIMEDOUT);
    assert_on_time(t0, TIMEOUT);
    mp_event_free(e);
}

/* ---- Condition ----------------------------------------------------------- */

static mp_cond *g_cond;
static int *g_woken; /* in the arena: how many waiters returned */

/* Holds the lock, says it is about to wait, waits, counts itself. */
static int cond_waiter(void *arg)
{
    (void)arg;
    if (mp_cond_acquire(g_cond, 30) != 0)
        return 1;
    t_send(&to_parent, getpid());
    int r = mp_cond_wait(g_cond, 30);
    if (r == 0)
        ++*g_woken;
    t_send(&woke, getpid());
    mp_cond_release(g_cond);
    if (r)
        fprintf(stderr, "cond_wait: %s\n", mp_err_name(r));
    return r == 0 ? 0 : 2;
}

/* Starts a waiter and returns once it waits: it said so while holding the
 * lock, so when we get the lock it has let it go inside wait. */
static mp_process *start_cond_waiter(void)
{
    mp_process *p = t_start(cond_waiter, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(p));
    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_release(g_cond));
    return p;
}

TEST(condition_notify_one_wakes_exactly_one)
{
    enum { N = 4 };
    waiter_chans_open();
    ASSERT_OK(mp_cond_new(&g_cond, NULL));
    ASSERT_TRUE((g_woken = mp_shared_calloc(1, sizeof(int))) != NULL);
    mp_process *p[N];
    for (int i = 0; i < N; i++)
        p[i] = start_cond_waiter();
    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_notify(g_cond, 1));
    ASSERT_OK(mp_cond_release(g_cond));
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(p[0])); /* the oldest */
    int v;
    ASSERT_TRUE(!t_try_recv(&woke, 0.2, &v));
    ASSERT_EQ(*g_woken, 1);

    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_notify(g_cond, 2));
    ASSERT_OK(mp_cond_release(g_cond));
    int x = t_recv(&woke, 10), y = t_recv(&woke, 10); /* the next two, in any order */
    ASSERT_EQ(x + y, mp_process_pid(p[1]) + mp_process_pid(p[2]));
    ASSERT_TRUE(x == mp_process_pid(p[1]) || x == mp_process_pid(p[2]));
    ASSERT_TRUE(!t_try_recv(&woke, 0.2, &v));
    ASSERT_EQ(*g_woken, 3);

    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_notify_all(g_cond));
    ASSERT_OK(mp_cond_release(g_cond));
    for (int i = 0; i < N; i++)
        t_join(p[i], 0);
    ASSERT_EQ(*g_woken, N);
    mp_cond_free(g_cond);
    waiter_chans_close();
}

TEST(condition_notify_all_wakes_all)
{
    enum { N = 5 };
    waiter_chans_open();
    ASSERT_OK(mp_cond_new(&g_cond, NULL));
    ASSERT_TRUE((g_woken = mp_shared_calloc(1, sizeof(int))) != NULL);
    mp_process *p[N];
    for (int i = 0; i < N; i++)
        p[i] = start_cond_waiter();
    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_notify_all(g_cond));
    ASSERT_OK(mp_cond_notify_all(g_cond)); /* no one left: nothing happens */
    ASSERT_OK(mp_cond_release(g_cond));
    for (int i = 0; i < N; i++)
        t_join(p[i], 0);
    ASSERT_EQ(*g_woken, N);
    mp_cond_free(g_cond);
    waiter_chans_close();
}

TEST(condition_notify_skips_later_waiters)
{
    waiter_chans_open();
    ASSERT_OK(mp_cond_new(&g_cond, NULL));
    ASSERT_TRUE((g_woken = mp_shared_calloc(1, sizeof(int))) != NULL);
    mp_process *a = start_cond_waiter();
    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_notify(g_cond, 1));
    ASSERT_OK(mp_cond_release(g_cond));
    /* b comes after the notify: it must not take a's wake-up. */
    mp_process *b = start_cond_waiter();
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(a));
    t_join(a, 0);
    int v;
    ASSERT_TRUE(!t_try_recv(&woke, 0.2, &v));
    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(mp_cond_notify(g_cond, 5)); /* more than wait: fine */
    ASSERT_OK(mp_cond_release(g_cond));
    t_join(b, 0);
    ASSERT_EQ(*g_woken, 2);
    mp_cond_free(g_cond);
    waiter_chans_close();
}

TEST(condition_timed_out_waiter_takes_no_notify)
{
    waiter_chans_open();
    ASSERT_OK(mp_cond_new(&g_cond, NULL));
    ASSERT_TRUE((g_woken = mp_shared_calloc(1, sizeof(int))) != NULL);
    ASSERT_OK(mp_cond_acquire(g_cond, 0));
    /* b queues up behind us while we wait, since our wait lets the lock go. */
    mp_process *b = t_start(cond_waiter, NULL, NULL);
    ASSERT_ERR(mp_cond_wait(g_cond, 1.0 * t_scale()), MP_ETIMEDOUT);
    int v;
    ASSERT_TRUE(t_try_recv(&to_parent, 0, &v)); /* b waits (it said so with the lock) */
    ASSERT_EQ(v, mp_process_pid(b));
    ASSERT_OK(mp_cond_notify(g_cond, 1)); /* ours left the queue: this one is b's */
    ASSERT_OK(mp_cond_release(g_cond));
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(b));
    t_join(b, 0);
    mp_cond_free(g_cond);
    waiter_chans_close();
}

TEST(condition_wait_timeout_on_time_and_relocked)
{
    mp_cond *c;
    ASSERT_OK(mp_cond_new(&c, NULL));
    ASSERT_OK(mp_cond_acquire(c, 0));
    double t0 = t_now();
    ASSERT_ERR(mp_cond_wait(c, TIMEOUT), MP_ETIMEDOUT);
    assert_on_time(t0, TIMEOUT);
    ASSERT_ERR(mp_cond_wait(c, 0), MP_ETIMEDOUT);
    ASSERT_OK(mp_cond_release(c)); /* held again after the wait */
    ASSERT_ERR(mp_cond_release(c), MP_EPERM);
    mp_cond_free(c);
}

TEST(condition_without_the_lock_is_eperm)
{
    mp_cond *c;
    ASSERT_OK(mp_cond_new(&c, NULL));
    ASSERT_ERR(mp_cond_wait(c, 0), MP_EPERM);
    ASSERT_ERR(mp_cond_notify(c, 1), MP_EPERM);
    ASSERT_ERR(mp_cond_notify_all(c), MP_EPERM);
    ASSERT_ERR(mp_cond_release(c), MP_EPERM);
    mp_cond_free(c);
}

static mp_rlock *g_user_lock;

/* Needs the lock fully released by the waiting parent to get it at all. */
static int take_and_notify(void *arg)
{
    (void)arg;
    if (mp_rlock_acquire(g_user_lock, 30) != 0)
        return 1;
    t_send(&to_parent, 0);
    int r = mp_cond_notify(g_cond, 1);
    mp_rlock_release(g_user_lock);
    return r == 0 ? 0 : 2;
}

TEST(condition_wait_keeps_the_recursion_count)
{
    waiter_chans_open();
    ASSERT_OK(mp_rlock_new(&g_user_lock));
    ASSERT_OK(mp_cond_new(&g_cond, g_user_lock)); /* over the caller's RLock */
    for (int i = 0; i < 3; i++)
        ASSERT_OK(mp_cond_acquire(g_cond, 0));
    mp_process *p = t_start(take_and_notify, NULL, NULL);
    ASSERT_OK(mp_cond_wait(g_cond, 30));
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    t_join(p, 0);
    for (int i = 0; i < 3; i++)
        ASSERT_OK(mp_rlock_release(g_user_lock));
    ASSERT_ERR(mp_rlock_release(g_user_lock), MP_EPERM);
    ASSERT_TRUE(!mp_rlock_locked(g_user_lock));
    mp_cond_free(g_cond);
    ASSERT_OK(mp_rlock_acquire(g_user_lock, 0)); /* the caller's lock outlives it */
    ASSERT_OK(mp_rlock_release(g_user_lock));
    mp_rlock_free(g_user_lock);
    waiter_chans_close();
}

/* Dead waiters and notifiers. A waiter below says, from the hook, when it
 * has queued and let the lock go; and reports its pid on woke if its wait
 * returned 0, else the code. */
static void report_queued(const char *where)
{
    if (strcmp(where, "cond.wait.sleep") == 0)
        t_send(&to_parent, getpid());
}

static int cond_queued_waiter(void *arg)
{
    (void)arg;
    if (mp_cond_acquire(g_cond, 30) != 0)
        return 1;
    mp__hook = report_queued;
    int r = mp_cond_wait(g_cond, 30 * t_scale());
    mp__hook = NULL;
    t_send(&woke, r == 0 ? getpid() : r);
    mp_cond_release(g_cond);
    return 0;
}

/* Starts a waiter and returns once it is in the queue, the lock let go. */
static mp_process *start_queued_waiter(void)
{
    mp_process *p = t_start(cond_queued_waiter, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(p));
    return p;
}

static void notify_n(unsigned n)
{
    ASSERT_OK(mp_cond_acquire(g_cond, 10));
    ASSERT_OK(n == UINT_MAX ? mp_cond_notify_all(g_cond) : mp_cond_notify(g_cond, n));
    ASSERT_OK(mp_cond_release(g_cond));
}

/* Waiters queue in the order of `who`: D one killed in its wait, L a live
 * one. notify(n) (UINT_MAX: notify_all) must wake the n oldest live ones
 * (the dead ones' places go to the next), and no other. */
static void cond_dead_waiters(const char *who, unsigned n)
{
    enum { MAX = 8 };
    waiter_chans_open();
    ASSERT_OK(mp_cond_new(&g_cond, NULL));
    mp_process *live[MAX];
    unsigned nlive = 0;
    for (const char *c = who; *c; c++) {
        mp_process *p = start_queued_waiter();
        if (*c == 'L') {
            ASSERT_LT(nlive, MAX);
            live[nlive++] = p;
            continue;
        }
        ASSERT_OK(mp_process_kill(p));
        t_join(p, -SIGKILL);
    }
    notify_n(n);
    unsigned want = n < nlive ? n : nlive;
    bool got[MAX] = {false};
    for (unsigned k = 0; k < want; k++) {
        /* without a wake: the waiters' 30 s timeout */
        int v = recv_what(&woke, 10, "a live waiter woken by the notify");
        unsigned i = 0;
        while (i < want && v != mp_process_pid(live[i]))
            i++;
        if (i == want || got[i])
            T_FAIL("woke %d (%s): not one of the %u oldest live waiters, or twice", v,
                   v < 0 ? mp_err_name(v) : "a pid", want);
        got[i] = true;
    }
    int v;
    ASSERT_TRUE(!t_try_recv(&woke, 0.2, &v)); /* no one else */
    if (want < nlive) {
        notify_n(UINT_MAX); /* the rest are still there, and still live */
        for (unsigned k = want; k < nlive; k++) {
            v = t_recv(&woke, 10);
            ASSERT_GT(v, 0);
        }
    }
    for (unsigned i = 0; i < nlive; i++)
        t_join(live[i], 0);

    /* The queue works on: one more waiter, one more notify. */
    mp_process *p = start_queued_waiter();
    notify_n(1);
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(p));
    t_join(p, 0);
    mp_cond_free(g_cond);
    waiter_chans_close();
}

TEST(condition_dead_waiter_notify_one_goes_to_live) { cond_dead_waiters("DLL", 1); }
TEST(condition_dead_waiters_notify_two_go_to_live) { cond_dead_waiters("DLDLL", 2); }
TEST(condition_dead_waiters_notify_all_wakes_live) { cond_dead_waiters("DLDL", UINT_MAX); }

/* The waiter of the notifier cases: says when it has queued; then, once its
 * wait is over and it finds the lock held (by the dead notifier) as it
 * takes it back, says so and waits until the parent has taken the lock
 * over, so that the takeover (MP_EOWNERDEAD) is the parent's, not its own. */
static int relock_phase;

static void report_queued_then_relock(const char *where)
{
    if (strcmp(where, "cond.wait.sleep") == 0) {
        relock_phase = 1;
        t_send(&to_parent, getpid());
    } else if (relock_phase == 1 && strcmp(where, "olock.sleep") == 0) {
        relock_phase = 2;
        t_send(&to_parent, 1);
        t_recv(&to_child, 30);
    }
}

static int cond_waiter_relock_handshake(void *arg)
{
    (void)arg;
    if (mp_cond_acquire(g_cond, 30) != 0)
        return 1;
    mp__hook = report_queued_then_relock;
    int r = mp_cond_wait(g_cond, 30 * t_scale());
    mp__hook = NULL;
    t_send(&woke, r == 0 ? getpid() : r);
    mp_cond_release(g_cond);
    return 0;
}

/* Takes the lock and notifies one; dies at g_kill_at inside the notify. */
static int notify_and_die(void *arg)
{
    (void)arg;
    if (mp_cond_acquire(g_cond, 30) != 0)
        return 1;
    mp__hook = kill_here;
    mp_cond_notify(g_cond, 1);
    return 2;
}

/* A notifier that dies midway (g_kill_at) has still notified: its waiter
 * returns 0 (it looks at its word every mp__check_ns: the wake may never
 * have come), the lock goes on with MP_EOWNERDEAD, and the queue is whole. */
static void cond_notifier_killed(const char *where)
{
    waiter_chans_open();
    ASSERT_OK(mp_cond_new(&g_cond, NULL));
    g_kill_at = where;
    mp_process *w = t_start(cond_waiter_relock_handshake, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(w)); /* queued, the lock free */
    t_join(t_start(notify_and_die, NULL, NULL), -SIGKILL);
    /* Its wait is over (30 s if it were not notified): it takes the lock back. */
    ASSERT_EQ(recv_what(&to_parent, 10, "the waiter seeing the dead notifier's notification"), 1);
    ASSERT_ERR(mp_cond_acquire(g_cond, 10), MP_EOWNERDEAD); /* the notifier held it */
    t_send(&to_child, 0);
    ASSERT_OK(mp_cond_release(g_cond));
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(w)); /* its wait returned 0 */
    t_join(w, 0);

    /* No waiter lost, the queue consistent: two new waiters, woken one by
     * one, oldest first. */
    mp_process *a = start_queued_waiter(), *b = start_queued_waiter();
    notify_n(1);
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(a));
    int v;
    ASSERT_TRUE(!t_try_recv(&woke, 0.2, &v));
    notify_n(1);
    ASSERT_EQ(t_recv(&woke, 10), mp_process_pid(b));
    t_join(a, 0);
    t_join(b, 0);
    notify_n(1); /* an empty queue */
    mp_cond_free(g_cond);
    waiter_chans_close();
}

TEST(condition_notifier_killed_after_marking) { cond_notifier_killed("cond.notify.marked"); }
TEST(condition_notifier_killed_after_unlinking) { cond_notifier_killed("cond.notify.unlinked"); }

/* ---- Barrier ------------------------------------------------------------- */

enum { PARTIES = 4, BROUNDS = 10 };

static mp_barrier *g_bar;
static struct shared_bar {
    int actions;      /* action calls */
    pid_t action_pid; /* who ran the last one */
} *g_sb;

static int count_action(void *arg)
{
    (void)arg;
    g_sb->actions++;
    g_sb->action_pid = getpid();
    return 0;
}

static int barrier_party(void *arg)
{
    (void)arg;
    for (int r = 0; r < BROUNDS; r++) {
        int i = mp_barrier_wait(g_bar, 30);
        if (i < 0 || i >= PARTIES)
            return 1;
        if (g_sb->actions < r + 1) /* the action ran before anyone was released */
            return 2;
        if ((i == PARTIES - 1) != (g_sb->action_pid == getpid() && g_sb->actions == r + 1))
            return 3; /* the last to arrive ran it */
        t_send(&to_parent, r * 16 + i);
    }
    return 0;
}

TEST(barrier_indices_and_action_every_round)
{
    waiter_chans_open();
    ASSERT_TRUE((g_sb = mp_shared_calloc(1, sizeof *g_sb)) != NULL);
    ASSERT_OK(mp_barrier_new(&g_bar, PARTIES, count_action, NULL));
    ASSERT_EQ(mp_barrier_parties(g_bar), PARTIES);
    ASSERT_EQ(mp_barrier_n_waiting(g_bar), 0);
    mp_process *p[PARTIES];
    for (int i = 0; i < PARTIES; i++)
        p[i] = t_start(barrier_party, NULL, NULL);
    int seen[BROUNDS] = {0};
    for (int k = 0; k < PARTIES * BROUNDS; k++) {
        int v = t_recv(&to_parent, 30);
        int r = v / 16, i = v % 16;
        ASSERT_TRUE(r >= 0 && r < BROUNDS && i < PARTIES);
        ASSERT_TRUE(!(seen[r] & 1 << i)); /* each index once per round */
        seen[r] |= 1 << i;
    }
    for (int r = 0; r < BROUNDS; r++)
        ASSERT_EQ(seen[r], (1 << PARTIES) - 1);
    for (int i = 0; i < PARTIES; i++)
        t_join(p[i], 0);
    ASSERT_EQ(g_sb->actions, BROUNDS);
    ASSERT_TRUE(!mp_barrier_broken(g_bar));
    mp_barrier_free(g_bar);
    waiter_chans_close();
}

static int fail_action(void *arg)
{
    (void)arg;
    return 1;
}

static int barrier_expect(void *arg)
{
    int want = *(int *)arg;
    return mp_barrier_wait(g_bar, 30) == want ? 0 : 1;
}

TEST(barrier_failed_action_breaks_it)
{
    ASSERT_OK(mp_barrier_new(&g_bar, 2, fail_action, NULL));
    int broken = MP_EBROKEN;
    mp_process *p = t_start(barrier_expect, &broken, NULL);
    ASSERT_ERR(mp_barrier_wait(g_bar, 30), MP_EBROKEN);
    t_join(p, 0);
    ASSERT_TRUE(mp_barrier_broken(g_bar));
    ASSERT_ERR(mp_barrier_wait(g_bar, 0), MP_EBROKEN);
    mp_barrier_free(g_bar);
}

TEST(barrier_timeout_breaks_it)
{
    ASSERT_OK(mp_barrier_new(&g_bar, 3, NULL, NULL));
    int broken = MP_EBROKEN;
    mp_process *p = t_start(barrier_expect, &broken, NULL);
    await_n_waiting(g_bar, 1);
    double t0 = t_now();
    ASSERT_ERR(mp_barrier_wait(g_bar, TIMEOUT), MP_ETIMEDOUT);
    assert_on_time(t0, TIMEOUT);
    t_join(p, 0); /* the other party: MP_EBROKEN */
    ASSERT_TRUE(mp_barrier_broken(g_bar));
    ASSERT_EQ(mp_barrier_n_waiting(g_bar), 0);
    mp_barrier_free(g_bar);
}

TEST(barrier_abort_and_reset)
{
    ASSERT_OK(mp_barrier_new(&g_bar, 2, NULL, NULL));
    int broken = MP_EBROKEN, zero = 0;
    mp_process *p = t_start(barrier_expect, &broken, NULL);
    await_n_waiting(g_bar, 1);
    ASSERT_OK(mp_barrier_abort(g_bar));
    t_join(p, 0);
    ASSERT_TRUE(mp_barrier_broken(g_bar));
    ASSERT_ERR(mp_barrier_wait(g_bar, 10), MP_EBROKEN);
    ASSERT_OK(mp_barrier_reset(g_bar));
    ASSERT_TRUE(!mp_barrier_broken(g_bar));

    /* Usable again; and a reset wakes a waiting party with MP_EBROKEN. */
    p = t_start(barrier_expect, &broken, NULL);
    await_n_waiting(g_bar, 1);
    ASSERT_OK(mp_barrier_reset(g_bar));
    t_join(p, 0);
    ASSERT_TRUE(!mp_barrier_broken(g_bar));
    p = t_start(barrier_expect, &zero, NULL); /* first to arrive: index 0 */
    await_n_waiting(g_bar, 1);
    ASSERT_EQ(mp_barrier_wait(g_bar, 10), 1);
    t_join(p, 0);
    mp_barrier_free(g_bar);
}

static int barrier_hang(void *arg)
{
    (void)arg;
    mp_barrier_wait(g_bar, MP_FOREVER);
    return 1;
}

TEST(barrier_party_killed_breaks_it)
{
    ASSERT_OK(mp_barrier_new(&g_bar, 3, NULL, NULL));
    int broken = MP_EBROKEN;
    mp_process *victim = t_start(barrier_hang, NULL, NULL);
    await_n_waiting(g_bar, 1);
    mp_process *other = t_start(barrier_expect, &broken, NULL);
    await_n_waiting(g_bar, 2);
    ASSERT_OK(mp_process_kill(victim));
    double t0 = t_now();
    ASSERT_OK(mp_process_join(other, 10 * t_scale()));
    ASSERT_LT((t_now() - t0) * 1e3, 2000 * t_scale());
    ASSERT_EQ(mp_process_exitcode(other), 0);
    mp_process_free(other);
    t_join(victim, -SIGKILL);
    ASSERT_TRUE(mp_barrier_broken(g_bar));
    ASSERT_OK(mp_barrier_reset(g_bar));
    ASSERT_EQ(mp_barrier_n_waiting(g_bar), 0);
    mp_barrier_free(g_bar);
}

/* ---- mp_interrupt -------------------------------------------------------- */

enum { W_LOCK, W_RLOCK, W_SEM, W_EVENT, W_COND, W_BARRIER };

static struct {
    mp_lock *lock;
    mp_rlock *rlock;
    mp_sem *sem;
    mp_event *event;
    mp_cond *cond;
    mp_barrier *barrier;
    _Atomic pid_t tid;
} iw;

static void *blocked_call(void *arg)
{
    int kind = (int)(intptr_t)arg, r;
    iw.tid = gettid();
    switch (kind) {
    case W_LOCK: r = mp_lock_acquire(iw.lock, MP_FOREVER); break;
    case W_RLOCK: r = mp_rlock_acquire(iw.rlock, MP_FOREVER); break;
    case W_SEM: r = mp_sem_acquire(iw.sem, MP_FOREVER); break;
    case W_EVENT: r = mp_event_wait(iw.event, MP_FOREVER); break;
    case W_COND:
        r = mp_cond_acquire(iw.cond, 0);
        if (r == 0) {
            r = mp_cond_wait(iw.cond, MP_FOREVER);
            if (mp_cond_release(iw.cond) != 0) /* re-acquired even so */
                r = 1;
        }
        break;
    default: r = mp_barrier_wait(iw.barrier, MP_FOREVER); break;
    }
    return (void *)(intptr_t)r;
}

static void interrupt_wakes(int kind)
{
    ASSERT_OK(mp_lock_new(&iw.lock));
    ASSERT_OK(mp_rlock_new(&iw.rlock));
    ASSERT_OK(mp_sem_new(&iw.sem, 0, 0));
    ASSERT_OK(mp_event_new(&iw.event));
    ASSERT_OK(mp_cond_new(&iw.cond, NULL));
    ASSERT_OK(mp_barrier_new(&iw.barrier, 2, NULL, NULL));
    ASSERT_OK(mp_lock_acquire(iw.lock, 0));
    ASSERT_OK(mp_rlock_acquire(iw.rlock, 0));
    iw.tid = 0;
    /* No periodic look (dead owners, lost wakes, dead barrier parties) for an
     * hour: the only thing that can end the sleep is the interrupt's wake. */
    int64_t check = mp__check_ns;
    mp__check_ns = 3600 * INT64_C(1000000000);
    pthread_t t = t_thread(blocked_call, (void *)(intptr_t)kind);
    double end = t_now() + 10 * t_scale();
    while (!iw.tid && t_now() < end)
        sched_yield();
    t_await_state(iw.tid, 'S');
    double t0 = t_now();
    mp_interrupt();
    /* The promise is 50 ms; without the wake it would be an hour. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(3 * t_scale());
    void *ret;
    if (pthread_timedjoin_np(t, &ret, &ts) != 0)
        T_FAIL("mp_interrupt did not wake the blocked call within %g s", 3 * t_scale());
    ASSERT_ERR((int)(intptr_t)ret, MP_EINTR);
    ASSERT_LT((t_now() - t0) * 1e3, 3000 * t_scale());
    mp__check_ns = check;
    /* Consumed: the next call is not interrupted. */
    ASSERT_OK(mp_sem_release(iw.sem));
    ASSERT_OK(mp_sem_acquire(iw.sem, 0));
    if (kind == W_BARRIER)
        ASSERT_TRUE(mp_barrier_broken(iw.barrier)); /* the others must not wait for it */
    ASSERT_OK(mp_lock_release(iw.lock));
    ASSERT_OK(mp_rlock_release(iw.rlock));
    mp_lock_free(iw.lock);
    mp_rlock_free(iw.rlock);
    mp_sem_free(iw.sem);
    mp_event_free(iw.event);
    mp_cond_free(iw.cond);
    mp_barrier_free(iw.barrier);
}

TEST(interrupt_wakes_lock_acquire) { interrupt_wakes(W_LOCK); }
TEST(interrupt_wakes_rlock_acquire) { interrupt_wakes(W_RLOCK); }
TEST(interrupt_wakes_sem_acquire) { interrupt_wakes(W_SEM); }
TEST(interrupt_wakes_event_wait) { interrupt_wakes(W_EVENT); }
TEST(interrupt_wakes_cond_wait) { interrupt_wakes(W_COND); }
TEST(interrupt_wakes_barrier_wait) { interrupt_wakes(W_BARRIER); }

TEST(pending_interrupt_fails_the_next_call_at_once)
{
    mp_lock *l;
    ASSERT_OK(mp_lock_new(&l));
    mp_interrupt();
    ASSERT_ERR(mp_lock_acquire(l, MP_FOREVER), MP_EINTR); /* even a free lock */
    ASSERT_OK(mp_lock_acquire(l, MP_FOREVER));
    ASSERT_OK(mp_lock_release(l));
    mp_lock_free(l);
}

/* One interrupt while no call blocks is consumed by exactly one call, however
 * many begin at once: two threads poll a semaphore, the main thread
 * interrupts N times, each time waiting for the MP_EINTR, then for one more
 * call of each poller (so a duplicate from a call begun meanwhile would be
 * counted) before it counts. */
static struct {
    mp_sem *sem;
    _Atomic long eintr;
    _Atomic long calls[2];
    _Atomic int stop;
    _Atomic int bad; /* a code other than MP_EINTR or MP_ETIMEDOUT */
} ic;

static void *intr_poller(void *arg)
{
    int i = (int)(intptr_t)arg;
    while (!atomic_load(&ic.stop)) {
        int r = mp_sem_acquire(ic.sem, 0);
        if (r == MP_EINTR)
            atomic_fetch_add(&ic.eintr, 1);
        else if (r != MP_ETIMEDOUT)
            atomic_store(&ic.bad, r ? r : 1);
        atomic_fetch_add(&ic.calls[i], 1);
    }
    return NULL;
}

static void intr_await(bool (*done)(long), long arg, double end)
{
    while (!done(arg)) {
        if (atomic_load(&ic.bad))
            T_FAIL("a poller got %d (%s)", atomic_load(&ic.bad), mp_err_name(atomic_load(&ic.bad)));
        if (t_now() > end)
            T_FAIL("pollers stuck: eintr %ld, calls %ld %ld", atomic_load(&ic.eintr),
                   atomic_load(&ic.calls[0]), atomic_load(&ic.calls[1]));
        /* Off the CPUs: both pollers run at once, as a duplicate needs. */
        nanosleep(&(struct timespec){0, 10000}, NULL);
    }
}

static long ic_c0, ic_c1;
static bool eintr_past(long n) { return atomic_load(&ic.eintr) > n; }
static bool both_called(long unused)
{
    (void)unused;
    return atomic_load(&ic.calls[0]) > ic_c0 && atomic_load(&ic.calls[1]) > ic_c1;
}

TEST(interrupt_consumed_exactly_once_by_concurrent_calls)
{
    enum { N = 5000 }; /* a duplicate came within 2000 in 20 runs out of 20 */
    ASSERT_OK(mp_sem_new(&ic.sem, 0, 0));
    pthread_t t[2] = {t_thread(intr_poller, (void *)0), t_thread(intr_poller, (void *)1)};
    double end = t_now() + 40 * t_scale();
    for (long i = 0; i < N; i++) {
        mp_interrupt();
        intr_await(eintr_past, i, end);
        ic_c0 = atomic_load(&ic.calls[0]);
        ic_c1 = atomic_load(&ic.calls[1]);
        intr_await(both_called, 0, end);
        long eintr = atomic_load(&ic.eintr);
        ASSERT_EQ(eintr, i + 1); /* not twice */
    }
    atomic_store(&ic.stop, 1);
    ASSERT_EQ(join_int(t[0]), 0);
    ASSERT_EQ(join_int(t[1]), 0);
    long eintr = atomic_load(&ic.eintr);
    int bad = atomic_load(&ic.bad);
    ASSERT_EQ(eintr, N);
    ASSERT_EQ(bad, 0);
    ASSERT_ERR(mp_sem_acquire(ic.sem, 0), MP_ETIMEDOUT); /* none left pending */
    mp_sem_free(ic.sem);
}

/* ---- bad input ---------------------------------------------------------- */

TEST(bad_input_is_einval)
{
    ASSERT_ERR(mp_lock_new(NULL), MP_EINVAL);
    ASSERT_ERR(mp_rlock_new(NULL), MP_EINVAL);
    ASSERT_ERR(mp_sem_new(NULL, 0, 0), MP_EINVAL);
    ASSERT_ERR(mp_event_new(NULL), MP_EINVAL);
    ASSERT_ERR(mp_cond_new(NULL, NULL), MP_EINVAL);
    ASSERT_ERR(mp_barrier_new(NULL, 1, NULL, NULL), MP_EINVAL);

    ASSERT_ERR(mp_lock_acquire(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_lock_release(NULL), MP_EINVAL);
    ASSERT_TRUE(!mp_lock_locked(NULL));
    ASSERT_ERR(mp_rlock_acquire(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_rlock_release(NULL), MP_EINVAL);
    ASSERT_TRUE(!mp_rlock_locked(NULL));
    ASSERT_ERR(mp_sem_acquire(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_sem_release(NULL), MP_EINVAL);
    ASSERT_ERR(mp_sem_value(NULL), MP_EINVAL);
    ASSERT_ERR(mp_event_set(NULL), MP_EINVAL);
    ASSERT_ERR(mp_event_clear(NULL), MP_EINVAL);
    ASSERT_TRUE(!mp_event_is_set(NULL));
    ASSERT_ERR(mp_event_wait(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_cond_acquire(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_cond_release(NULL), MP_EINVAL);
    ASSERT_ERR(mp_cond_wait(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_cond_notify(NULL, 1), MP_EINVAL);
    ASSERT_ERR(mp_cond_notify_all(NULL), MP_EINVAL);
    ASSERT_ERR(mp_barrier_wait(NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_barrier_abort(NULL), MP_EINVAL);
    ASSERT_ERR(mp_barrier_reset(NULL), MP_EINVAL);
    ASSERT_ERR(mp_barrier_parties(NULL), MP_EINVAL);
    ASSERT_ERR(mp_barrier_n_waiting(NULL), MP_EINVAL);
    ASSERT_TRUE(!mp_barrier_broken(NULL));
    mp_lock_free(NULL);
    mp_rlock_free(NULL);
    mp_sem_free(NULL);
    mp_event_free(NULL);
    mp_cond_free(NULL);
    mp_barrier_free(NULL);

    mp_sem *s;
    ASSERT_ERR(mp_sem_new(&s, 2, 1), MP_EINVAL); /* value past max */
    ASSERT_ERR(mp_sem_new(&s, (unsigned)INT_MAX + 1, 0), MP_EINVAL);
    mp_barrier *b;
    ASSERT_ERR(mp_barrier_new(&b, 0, NULL, NULL), MP_EINVAL);

    /* NaN timeouts, on objects that would otherwise answer at once. */
    mp_lock *l;
    mp_rlock *rl;
    mp_event *e;
    mp_cond *c;
    ASSERT_OK(mp_lock_new(&l));
    ASSERT_OK(mp_rlock_new(&rl));
    ASSERT_OK(mp_sem_new(&s, 1, 0));
    ASSERT_OK(mp_event_new(&e));
    ASSERT_OK(mp_cond_new(&c, NULL));
    ASSERT_OK(mp_barrier_new(&b, 1, NULL, NULL));
    ASSERT_OK(mp_event_set(e));
    ASSERT_ERR(mp_lock_acquire(l, NAN), MP_EINVAL);
    ASSERT_ERR(mp_rlock_acquire(rl, NAN), MP_EINVAL);
    ASSERT_ERR(mp_sem_acquire(s, NAN), MP_EINVAL);
    ASSERT_ERR(mp_event_wait(e, NAN), MP_EINVAL);
    ASSERT_ERR(mp_cond_acquire(c, NAN), MP_EINVAL);
    ASSERT_OK(mp_cond_acquire(c, 0));
    ASSERT_ERR(mp_cond_wait(c, NAN), MP_EINVAL);
    ASSERT_OK(mp_cond_release(c));
    ASSERT_ERR(mp_barrier_wait(b, NAN), MP_EINVAL);
    ASSERT_TRUE(!mp_lock_locked(l));
    ASSERT_EQ(mp_sem_value(s), 1);
    ASSERT_EQ(mp_barrier_wait(b, 0), 0); /* a party of one passes at once */
    mp_lock_free(l);
    mp_rlock_free(rl);
    mp_sem_free(s);
    mp_event_free(e);
    mp_cond_free(c);
    mp_barrier_free(b);
}
