/*
 * Owner identity: how a waiter tells that a lock's holder has ended. The
 * kernel is the judge (os/olock.c): no /proc, no pid number alone, no
 * descriptor needed, and a live holder is never taken for dead.
 */
#include "harness.h"

#include "arena.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PID_BITS 0x3fffffffu
#define WAITERS_BIT 0x80000000u

/* ---- helpers -------------------------------------------------------------- */

/* The lock word: the first 8 bytes of an mp_lock (sync.c: one mp__olock). */
static _Atomic uint64_t *lock_word(mp_lock *l) { return (_Atomic uint64_t *)(void *)l; }

/* Waits (bounded) until pid has ended, without reaping it: on return it is a
 * zombie, our child still. */
static void await_zombie(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0)
        T_FAIL("pidfd_open %d: %s", (int)pid, strerror(errno));
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int r;
    while ((r = poll(&pf, 1, (int)(10 * t_scale() * 1000))) < 0 && errno == EINTR)
        ;
    close(fd);
    if (r != 1)
        T_FAIL("process %d did not end", (int)pid);
    siginfo_t si = {0};
    ASSERT_EQ(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT), 0);
    ASSERT_EQ(si.si_pid, pid); /* ended, not reaped */
}

/* The real system calls, for the injecting wrappers to pass on to. */
static struct mp__sys real_sys;
static _Atomic int getlk_calls, setlk_calls;

static int getlk_fails(int fd, int cmd, long arg)
{
    if (cmd == F_GETLK) {
        atomic_fetch_add(&getlk_calls, 1);
        errno = EIO;
        return -1;
    }
    return real_sys.fcntl(fd, cmd, arg);
}

static int setlk_fails(int fd, int cmd, long arg)
{
    if (cmd == F_SETLK) {
        atomic_fetch_add(&setlk_calls, 1);
        errno = ENOLCK;
        return -1;
    }
    return real_sys.fcntl(fd, cmd, arg);
}

/* State shared by the cases below (allocated per case, in the arena). */
struct sh {
    mp_lock *l;
    uint64_t id;          /* a child's identity (mp__olock_self) */
    unsigned rec_before;  /* mp__arena_recoveries around a child's allocation */
    unsigned rec_after;
    int allocated;        /* the child's allocation succeeded */
};
static struct sh *S;

static void shared_open(void)
{
    chans_open();
    ASSERT_TRUE((S = mp_shared_calloc(1, sizeof *S)) != NULL);
    ASSERT_OK(mp_lock_new(&S->l));
}

/* Takes S->l, reports 1, then holds it until told (any value), releases it,
 * reports 2 and returns. Killed instead, it dies holding it. */
static int hold_until_told(void *arg)
{
    (void)arg;
    ASSERT_OK(mp_lock_acquire(S->l, MP_FOREVER));
    t_send(&to_parent, 1);
    t_recv(&to_child, 60);
    ASSERT_OK(mp_lock_release(S->l));
    t_send(&to_parent, 2);
    return 0;
}

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

/* ---- the arena's own lock, a pid reused -------------------------------- */

static int arena_hold_and_stop(void *arg)
{
    (void)arg;
    mp__arena_lock_for_test(); /* no allocation from here on */
    t_send(&to_parent, 1);
    pause();
    return 0;
}

static int allocate_large(void *arg)
{
    (void)arg;
    S->rec_before = mp__arena_recoveries();
    void *p = mp_shared_alloc(100000); /* a fresh large block: takes the allocator's lock */
    S->rec_after = mp__arena_recoveries();
    S->allocated = p != NULL;
    mp_shared_free(p);
    return 0;
}

static int arena_reuse_scenario(void)
{
    shared_open();
    mp_process *a = t_start(arena_hold_and_stop, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    pid_t dead = mp_process_pid(a);
    ASSERT_EQ(mp__arena_lock_owner(), dead);
    ASSERT_OK(mp_process_kill(a));
    t_join(a, -SIGKILL);
    ASSERT_EQ(mp__arena_lock_owner(), dead); /* nobody has taken it over yet */
    t_set_last_pid(dead - 1);
    mp_process *b = t_start(allocate_large, NULL, NULL);
    ASSERT_EQ(mp_process_pid(b), dead);
    int r = mp_process_join(b, 10 * t_scale());
    if (r) { /* it waits for itself: end it, and fail */
        mp_process_kill(b);
        mp_process_join(b, 10 * t_scale());
        T_FAIL("the allocation in the process that got the dead holder's pid back never "
               "returned: join -> %s", mp_err_name(r));
    }
    ASSERT_EQ(mp_process_exitcode(b), 0);
    mp_process_free(b);
    ASSERT_TRUE(S->allocated);
    ASSERT_GT(S->rec_after, S->rec_before); /* it was that process that took the lock over */
    ASSERT_EQ(mp__arena_lock_owner(), 0);
    ASSERT_EQ(mp__arena_check(), 0);
    chans_close();
    return 0;
}

TEST(arena_holder_pid_reused_by_the_next_allocator_is_still_dead)
{
    ASSERT_EQ(t_in_ns(T_NS_PID, arena_reuse_scenario), 0);
}

/* ---- a pid reused at once by an unrelated, live process ---------------- */

static int take_and_return(void *arg)
{
    (void)arg;
    ASSERT_OK(mp_lock_acquire(S->l, MP_FOREVER));
    return 0; /* exits holding it */
}

static int unrelated_reuse_scenario(void)
{
    shared_open();
    mp_process *a = t_start(take_and_return, NULL, NULL);
    pid_t dead = mp_process_pid(a);
    t_join(a, 0);
    ASSERT_EQ(mp__olock_owner((mp__olock *)(void *)S->l), dead); /* died holding it */
    int pp[2];
    ASSERT_EQ(pipe2(pp, O_CLOEXEC), 0);
    t_set_last_pid(dead - 1);
    fflush(NULL);
    pid_t other = fork(); /* no mproc process: it never registers, it only lives */
    if (other == 0) {
        char c;
        while (read(pp[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    ASSERT_GT(other, 0);
    close(pp[0]);
    ASSERT_EQ(other, dead);
    ASSERT_TRUE(t_pid_alive(other));
    int r = mp_lock_acquire(S->l, 5 * t_scale());
    ASSERT_TRUE(t_pid_alive(other)); /* it lived all along */
    kill(other, SIGKILL);
    ASSERT_EQ(waitpid(other, NULL, 0), other);
    close(pp[1]);
    ASSERT_ERR(r, MP_EOWNERDEAD);
    ASSERT_OK(mp_lock_release(S->l));
    chans_close();
    return 0;
}

TEST(holder_pid_taken_by_a_live_unrelated_process_is_still_dead)
{
    ASSERT_EQ(t_in_ns(T_NS_PID, unrelated_reuse_scenario), 0);
}

/* ---- same pid, another token: the waiter itself got the pid back ------- */

/* Without namespaces: the word of a lock whose holder was killed is made to
 * carry the waiter's own pid with the dead holder's token, as if the waiter
 * were a later process that got the holder's pid back. */
TEST(holder_with_the_waiters_pid_and_another_token_is_dead)
{
    shared_open();
    uint64_t me = mp__olock_self();
    ASSERT_NE(me, 0);
    mp_process *a = t_start(hold_until_told, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    pid_t dead = mp_process_pid(a);
    ASSERT_OK(mp_process_kill(a));
    t_join(a, -SIGKILL);
    _Atomic uint64_t *w = lock_word(S->l);
    uint64_t seen = atomic_load(w);
    ASSERT_EQ((pid_t)(seen & PID_BITS), dead);
    uint64_t token = seen >> 32;
    ASSERT_NE(token, 0);
    ASSERT_NE(token, me >> 32);
    uint64_t forged = token << 32 | (seen & WAITERS_BIT) | (uint32_t)getpid();
    atomic_store(w, forged);
    ASSERT_EQ(mp__owner_state(forged), MP__OWNER_DEAD);
    ASSERT_ERR(mp_lock_acquire(S->l, 3 * t_scale()), MP_EOWNERDEAD);
    uint64_t now = atomic_load(w) & ~(uint64_t)WAITERS_BIT;
    ASSERT_EQ(now, me);
    ASSERT_OK(mp_lock_release(S->l));
    chans_close();
}

/* ---- no /proc, or the /proc of another pid namespace --------------------- */

static bool pick_pid_proc_lacks; /* make the holder's pid one the visible /proc lacks */

static void release_order_on_sleep(const char *where)
{
    static bool sent;
    if (!sent && strcmp(where, "olock.sleep") == 0) {
        sent = true;
        t_send(&to_child, 1); /* the waiter sleeps on the lock: now let go */
    }
}

static int live_holder_scenario(void)
{
    shared_open();
    if (pick_pid_proc_lacks) {
        char path[64];
        for (pid_t p = 1000; p < 30000; p++) {
            snprintf(path, sizeof path, "/proc/%d", (int)p);
            if (access(path, F_OK) != 0) {
                t_set_last_pid(p - 1);
                break;
            }
        }
    }
    mp_process *a = t_start(hold_until_told, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    if (pick_pid_proc_lacks) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)mp_process_pid(a));
        if (access(path, F_OK) == 0)
            printf("note: the visible /proc has a %s (another process's)\n", path);
    }
    /* A live holder: 6 checks or so, each must find it alive. */
    ASSERT_ERR(mp_lock_acquire(S->l, 1.5 * t_scale()), MP_ETIMEDOUT);
    ASSERT_TRUE(mp_lock_locked(S->l));
    /* It lets go while we sleep on the lock: we get it, plainly. */
    mp__hook = release_order_on_sleep;
    int r = mp_lock_acquire(S->l, 10 * t_scale());
    mp__hook = NULL;
    ASSERT_ERR(r, 0);
    ASSERT_EQ(t_recv(&to_parent, 10), 2);
    t_join(a, 0);
    ASSERT_OK(mp_lock_release(S->l));
    /* A holder killed holding it is recovered. */
    mp_process *b = t_start(hold_until_told, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    ASSERT_OK(mp_process_kill(b));
    t_join(b, -SIGKILL);
    ASSERT_ERR(mp_lock_acquire(S->l, 5 * t_scale()), MP_EOWNERDEAD);
    ASSERT_OK(mp_lock_release(S->l));
    chans_close();
    return 0;
}

TEST(live_holder_keeps_the_lock_without_proc)
{
    ASSERT_EQ(t_in_ns(T_NS_NOPROC, live_holder_scenario), 0);
}

/* fn runs as pid 1 of a fresh pid namespace that still sees the outer /proc
 * (none mounted for it): the pids it sees there are not its namespace's. */
static int in_pid_ns_with_foreign_proc(int (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        T_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        if (unshare(CLONE_NEWPID) < 0)
            _exit(77);
        pid_t init = fork();
        if (init == 0)
            _exit(fn());
        if (init < 0)
            _exit(77);
        int st;
        while (waitpid(init, &st, 0) < 0)
            if (errno != EINTR)
                _exit(126);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            T_FAIL("waitpid: %s", strerror(errno));
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code == 77)
        t_skip("cannot make a pid namespace (needs root)");
    return code;
}

TEST(live_holder_keeps_the_lock_with_another_namespaces_proc)
{
    pick_pid_proc_lacks = true;
    ASSERT_EQ(in_pid_ns_with_foreign_proc(live_holder_scenario), 0);
}

/* ---- a waiter at its descriptor limit -------------------------------------- */

TEST(waiter_at_its_descriptor_limit_sees_a_dead_holder)
{
    shared_open();
    mp_process *a = t_start(hold_until_told, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    ASSERT_OK(mp_process_kill(a));
    await_zombie(mp_process_pid(a)); /* dead, not reaped */
    struct rlimit old;
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct rlimit low = {64, old.rlim_max};
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    int fds[64], n = 0, fd;
    while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
        if (n < 64)
            fds[n++] = fd;
    int err = errno;
    int r = mp_lock_acquire(S->l, 3 * t_scale());
    int more = open("/dev/null", O_RDONLY | O_CLOEXEC); /* still at the limit */
    int err2 = errno;
    if (more >= 0)
        close(more);
    while (n > 0)
        close(fds[--n]);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    ASSERT_EQ(err, EMFILE);
    ASSERT_EQ(more, -1);
    ASSERT_EQ(err2, EMFILE);
    ASSERT_ERR(r, MP_EOWNERDEAD);
    ASSERT_OK(mp_lock_release(S->l));
    t_join(a, -SIGKILL);
    chans_close();
}

/* ---- a check that fails is not "dead" ------------------------------------ */

TEST(failed_liveness_check_never_declares_the_holder_dead)
{
    shared_open();
    ASSERT_NE(mp__olock_self(), 0);
    mp_process *a = t_start(hold_until_told, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    real_sys = mp__sys;
    mp__sys.fcntl = getlk_fails;
    /* A live holder, and the kernel cannot be asked. */
    ASSERT_ERR(mp_lock_acquire(S->l, 1.5 * t_scale()), MP_ETIMEDOUT);
    int asked = atomic_load(&getlk_calls);
    ASSERT_GT(asked, 0); /* it did ask */
    /* A dead holder, and the kernel still cannot be asked: not dead either. */
    ASSERT_OK(mp_process_kill(a));
    t_join(a, -SIGKILL);
    atomic_store(&getlk_calls, 0);
    ASSERT_ERR(mp_lock_acquire(S->l, 1.5 * t_scale()), MP_ETIMEDOUT);
    asked = atomic_load(&getlk_calls);
    ASSERT_GT(asked, 0);
    /* The kernel can be asked again: the dead holder is found dead. */
    mp__sys_reset();
    ASSERT_ERR(mp_lock_acquire(S->l, 5 * t_scale()), MP_EOWNERDEAD);
    ASSERT_OK(mp_lock_release(S->l));
    chans_close();
}

/* ---- registration ------------------------------------------------------------ */

/* A fresh child whose registration (its F_SETLK) fails from its first moment
 * (the parent's injection is inherited): it owns no lock. */
static int acquire_unregistered(void *arg)
{
    (void)arg;
    ASSERT_EQ(mp__olock_self(), 0);
    int tried = atomic_load(&setlk_calls);
    ASSERT_GT(tried, 0); /* it tried: it was not registered before */
    ASSERT_ERR(mp_lock_acquire(S->l, 2 * t_scale()), MP_ENOMEM);
    ASSERT_ERR(mp_lock_acquire(S->l, 0), MP_ENOMEM);
    ASSERT_TRUE(!mp_lock_locked(S->l));
    mp__sys_reset();
    ASSERT_OK(mp_lock_acquire(S->l, 5 * t_scale()));
    uint64_t me = mp__olock_self();
    ASSERT_NE(me, 0);
    uint64_t word = atomic_load(lock_word(S->l)) & ~(uint64_t)WAITERS_BIT;
    ASSERT_EQ(word, me);
    ASSERT_OK(mp_lock_release(S->l));
    return 0;
}

TEST(unregistered_process_cannot_take_a_lock)
{
    shared_open();
    ASSERT_NE(mp__olock_self(), 0); /* this process is registered already */
    real_sys = mp__sys;
    mp__sys.fcntl = setlk_fails;
    mp_process *p = t_start(acquire_unregistered, NULL, NULL);
    mp__sys_reset();
    t_join(p, 0);
    ASSERT_TRUE(!mp_lock_locked(S->l));
    chans_close();
}

static int report_identity(void *arg)
{
    (void)arg;
    S->id = mp__olock_self();
    t_send(&to_parent, 1);
    pause();
    return 0;
}

/* Another process's liveness byte: held while it lives, free once it has
 * ended (a zombie already), and after it is reaped. */
TEST(liveness_byte_of_another_process)
{
    shared_open();
    mp_process *a = t_start(report_identity, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1);
    uint64_t id = S->id;
    ASSERT_NE(id, 0);
    ASSERT_EQ((pid_t)(id & PID_BITS), mp_process_pid(a));
    ASSERT_NE(id, mp__olock_self());
    ASSERT_EQ(mp__owner_state(id), MP__OWNER_ALIVE);
    ASSERT_EQ(mp__owner_state(id | WAITERS_BIT), MP__OWNER_ALIVE);
    /* The same pid with another token is no one. */
    uint64_t other_token = id + ((uint64_t)1 << 32);
    ASSERT_EQ(mp__owner_state(other_token), MP__OWNER_DEAD);
    ASSERT_OK(mp_process_kill(a));
    await_zombie(mp_process_pid(a));
    ASSERT_EQ(mp__owner_state(id), MP__OWNER_DEAD);
    t_join(a, -SIGKILL);
    ASSERT_EQ(mp__owner_state(id), MP__OWNER_DEAD);
    chans_close();
}
