/*
 * The OS layer: everything mproc asks of Linux, in one contract.
 *
 * Nothing here knows a layer above it. Each file keeps its own process-local
 * state and resets it in the child of a fork through its own pthread_atfork
 * handler, so upper layers never clean up after this one.
 *
 * Internal names start with "mp__". Functions return 0 or a count on success
 * and a negative MP_E* / -errno code on failure, like the public API.
 */
#ifndef MPROC_OS_H
#define MPROC_OS_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- the system-call seam (sys.c) --------------------------------------
 * The calls whose failure is hard to provoke go through this table, so tests
 * can inject errors deterministically (SQLite's aSyscall idea). Entries follow
 * the libc convention (-1 and errno); the wrappers below turn that into
 * -errno. The table is ordinary process memory: an override made before a
 * fork is inherited by the child. */
struct mp__sys {
    pid_t (*fork)(void);
    int (*pipe2)(int fds[2], int flags);
    int (*open)(const char *path, int flags, mode_t mode);
    int (*fcntl)(int fd, int cmd, long arg); /* integer-argument commands */
    int (*pidfd_open)(pid_t pid, unsigned flags);
};
extern struct mp__sys mp__sys;
void mp__sys_reset(void); /* back to the real calls (tests) */

/* close() that keeps errno and ignores EINTR (never retried: the fd is gone). */
void mp__close(int fd);

/* ---- time (time.c) ----------------------------------------------------- */
#define MP__NEVER INT64_MAX /* a deadline that never comes */

int64_t mp__now_ns(void); /* CLOCK_MONOTONIC */
/* Turns a relative timeout in seconds into an absolute CLOCK_MONOTONIC
 * deadline in ns: MP__NEVER for negative, now for 0. MP_EINVAL for NaN. */
int mp__deadline(double timeout, int64_t *deadline);

/* ---- interrupts and interruptible waits (wait.c) ------------------------
 * mp_interrupt() bumps a process-local generation and wakes every wait in
 * progress. A wait claims a slot first, so the interrupter can find it. */
typedef struct mp__waiter {
    unsigned gen;  /* interrupt generation at entry */
    int slot;      /* index in the slot table, or -1 (then it polls in slices) */
} mp__waiter;

/* Enter a blocking call: MP_EINTR if an interrupt is pending (consuming it),
 * else 0 with w set up. Pair with mp__wait_end. */
int mp__wait_begin(mp__waiter *w);
void mp__wait_end(mp__waiter *w);
/* Waits until fd is readable, the deadline passes or an interrupt comes.
 * 1 readable, MP_ETIMEDOUT, MP_EINTR (consumed), -errno. */
int mp__wait_fd(mp__waiter *w, int fd, int64_t deadline);
/* true if an interrupt came since w began (and consumes it). */
bool mp__wait_interrupted(mp__waiter *w);

/* ---- pidfd (pidfd.c) ----------------------------------------------------- */
int mp__pidfd_open(pid_t pid);          /* close-on-exec pidfd, or -errno */
int mp__pidfd_signal(int pidfd, int sig); /* 0, or -errno (ESRCH once reaped) */
/* Reaps the process if it has ended. 1 with *status set (code, or -signal),
 * 0 if it still runs, -errno. */
int mp__pidfd_reap(int pidfd, int *status);

/* ---- fork protocol (fork.c) -----------------------------------------------
 * mp__fork flushes every stdio stream, blocks all signals across fork (so
 * no handler of the parent runs in the half-made child) and forks through
 * the seam. In both processes *mask receives the caller's mask, to restore
 * with mp__fork_restore once the caller's post-fork work is done. */
pid_t mp__fork(sigset_t *mask); /* pid, 0 in the child, -errno (mask restored) */
void mp__fork_restore(const sigset_t *mask);

/* ---- lifeline (lifeline.c) ---------------------------------------------
 * Children die with their parent process, however it dies. The parent keeps
 * the write end of one "family" pipe and no one else holds it. Before each
 * fork it opens a fresh file description of the read end; the child arms it
 * with F_SETOWN_EX(itself) + F_SETSIG(SIGKILL) + O_ASYNC. When the parent
 * process dies, the kernel closes its write end and sends SIGKILL to every
 * armed child, whichever thread forked them (PR_SET_PDEATHSIG follows the
 * thread). Where /proc is not mounted, the child falls back to
 * PR_SET_PDEATHSIG. The caller serialises mp__lifeline_prepare calls. */
int mp__lifeline_prepare(int *child_fd); /* parent, before fork; *child_fd may be -1 */
int mp__lifeline_arm(int child_fd, pid_t parent); /* child; 0 or -errno */

/* ---- CPUs (cpu.c) -------------------------------------------------------- */
int mp__cpu_online(void);
int mp__cpu_usable(void);

#endif /* MPROC_OS_H */
