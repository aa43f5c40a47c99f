/*
 * The test harness: one executable per concept, one CTest test per case.
 *
 *   TEST(name) { ... }          defines a case; `test_x name` runs it alone
 *   ASSERT_*                    print both sides (and mp_strerror of codes),
 *                               then fail the case; never compiled away
 *
 * Each case runs as its own process, made a child subreaper, so that any
 * process it leaves behind (orphaned grandchildren included) ends up as its
 * child: after the case the harness fails it if any child remains, then kills
 * and reaps them. Multi-process cases hand-shake over pipes (t_chan) instead
 * of sleeping; every wait has a time limit scaled by t_scale().
 */
#ifndef MPROC_TEST_HARNESS_H
#define MPROC_TEST_HARNESS_H

#include "mproc.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>

typedef void (*t_fn)(void);
void t_register(const char *name, t_fn fn);

#define TEST(name)                                                         \
    static void test_##name(void);                                         \
    __attribute__((constructor)) static void t_reg_##name(void)            \
    {                                                                      \
        t_register(#name, test_##name);                                    \
    }                                                                      \
    static void test_##name(void)

__attribute__((noreturn, format(printf, 3, 4))) void t_fail(const char *file, int line,
                                                            const char *fmt, ...);

#define T_FAIL(...) t_fail(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT_TRUE(c)                                  \
    do {                                                \
        if (!(c))                                       \
            T_FAIL("expected true: %s", #c);            \
    } while (0)

#define T_CMP_(a, op, b)                                                       \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (!(a_ op b_))                                                       \
            T_FAIL("%s %s %s: %lld vs %lld", #a, #op, #b, a_, b_);             \
    } while (0)
#define ASSERT_EQ(a, b) T_CMP_(a, ==, b)
#define ASSERT_NE(a, b) T_CMP_(a, !=, b)
#define ASSERT_LT(a, b) T_CMP_(a, <, b)
#define ASSERT_LE(a, b) T_CMP_(a, <=, b)
#define ASSERT_GT(a, b) T_CMP_(a, >, b)
#define ASSERT_GE(a, b) T_CMP_(a, >=, b)

/* A call that returns an mproc code: must not be negative. */
#define ASSERT_OK(e)                                                           \
    do {                                                                       \
        long long r_ = (long long)(e);                                         \
        if (r_ < 0)                                                            \
            T_FAIL("%s failed: %lld %s (%s)", #e, r_, mp_err_name((int)r_),    \
                   mp_strerror((int)r_));                                      \
    } while (0)

/* A call that must return exactly this code. */
#define ASSERT_ERR(e, code)                                                    \
    do {                                                                       \
        long long r_ = (long long)(e), c_ = (long long)(code);                 \
        if (r_ != c_)                                                          \
            T_FAIL("%s: got %lld %s (%s), want %lld %s", #e, r_,               \
                   mp_err_name((int)r_), mp_strerror((int)r_), c_,             \
                   mp_err_name((int)c_));                                      \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                    \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                 \
            T_FAIL("%s == %s: \"%s\" vs \"%s\"", #a, #b, a_ ? a_ : "(null)",   \
                   b_ ? b_ : "(null)");                                        \
    } while (0)

/* MPROC_TEST_TIMEOUT_MULT (default 1): stretches every time limit. */
double t_scale(void);
double t_now(void); /* CLOCK_MONOTONIC seconds */

/* mp_process_new + mp_process_start, or fail the case. o may be NULL. */
mp_process *t_start(mp_target fn, void *arg, const mp_process_opts *o);
/* Joins p (60 s, scaled), checks its exit code, frees it; or fails the case. */
void t_join(mp_process *p, int code);

/* A one-way channel of ints between processes: a close-on-exec pipe. */
typedef struct t_chan { int r, w; } t_chan;
t_chan t_chan_new(void);
void t_chan_close(t_chan *c);
void t_send(t_chan *c, int v);
/* The pair most multi-process cases use: orders go down to children,
 * reports come up. Children inherit them; open and close them per case. */
extern t_chan to_child, to_parent;
void chans_open(void);
void chans_close(void);
/* Receives one int within timeout * t_scale() seconds, or fails the case. */
int t_recv(t_chan *c, double timeout);
/* Like t_recv, but returns false on timeout or EOF instead of failing. */
bool t_try_recv(t_chan *c, double timeout, int *v);

/* The state letter of a thread (a tid, or a pid for a process) from
 * /proc/<tid>/stat ('R', 'S', 'T', ...), '?' if it cannot be read. */
char t_proc_state(pid_t tid);
/* Hand-shake with a blocking call we cannot see into: waits until the
 * thread (or process) is in state `state` ('S': asleep in the kernel, its
 * spin over), or fails the case within 10 s (scaled). */
void t_await_state(pid_t tid, char state);

/* pthread_create, or fail the case. */
pthread_t t_thread(void *(*fn)(void *), void *arg);
/* Joins t within 20 s (scaled) and returns what it returned, or fails the
 * case: a thread stuck in a blocking call fails one case, not the suite. */
void *t_join_thread(pthread_t t);

/* Waits until pid (any process) has ended, at most timeout * t_scale()
 * seconds; reaps it if it is our child. false on timeout. */
bool t_wait_gone(pid_t pid, double timeout);
bool t_pid_alive(pid_t pid);

int t_count_fds(void);
/* The descriptors open after a first pool has come and gone: a process
 * keeps one descriptor for interruptible waits, made at first use, so
 * counts taken before and after a pool case compare alike. Fails the case
 * if the pool cannot be made. */
int t_count_fds_after_a_pool(void);

/* Ends the case as skipped (CTest: exit status 77), printing why. */
__attribute__((noreturn, format(printf, 1, 2))) void t_skip(const char *fmt, ...);

/* Runs fn in a child process inside fresh namespaces and returns its exit
 * status (or 128 + signal). T_NS_PID: a new pid namespace with its own /proc
 * (fn runs as its pid 1; t_set_last_pid then picks the next pid). T_NS_NOPROC:
 * an empty /proc. Without the right to make them (not root, and no user
 * namespaces), the case is skipped with the reason. The case's time limit
 * still applies. */
enum { T_NS_PID = 1, T_NS_NOPROC = 2 };
int t_in_ns(int flags, int (*fn)(void));
/* In a T_NS_PID namespace: the next process created gets pid + 1. */
void t_set_last_pid(pid_t pid);
/* This process's children (zombies included), up to cap; returns the count. */
int t_children(pid_t *out, int cap);
/* Waits up to timeout * t_scale() seconds until this process has no child
 * (zombies included), polling; returns how many are left, the first in
 * *first (if any). For handles reaped in the background after a free. */
int t_await_no_children(double timeout, pid_t *first);
/* The same, until at most at_most children are left (those a case keeps,
 * such as a pool's workers); returns how many there are. */
int t_await_children(int at_most, double timeout, pid_t *first);

#endif
