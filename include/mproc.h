/*
 * mproc: Python's multiprocessing for C on Linux.
 *
 * One header, one library (libmproc, shared and static). Conventions:
 *
 *   - Every int function returns 0 (or a non-negative count) on success and a
 *     negative MP_E* code on failure; ssize_t functions the same way. System
 *     failures come back as -errno. No function prints, aborts or exits on
 *     bad input.
 *   - Timeouts are double seconds: MP_FOREVER (any negative value) blocks,
 *     0 polls once, t > 0 waits at most t seconds on CLOCK_MONOTONIC. A NaN
 *     timeout is MP_EINVAL. Interrupted system calls are retried with the
 *     time that remains.
 *   - Every call may be made from several threads of one process.
 *   - Every mp_X_free(NULL) is a no-op.
 *   - Every file descriptor the library opens is close-on-exec.
 *
 * Fork: mproc starts processes with fork(). The child runs a copy of the
 * parent's memory with one thread, the one that called mp_process_start.
 * Locks other threads held at that instant stay held in the child, which is
 * why a program should start its processes (and pools) before it starts
 * threads of its own or runtimes such as OpenMP or a threaded BLAS.
 */
#ifndef MPROC_H
#define MPROC_H

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MP_API __attribute__((visibility("default")))

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define MP_VERSION_MAJOR 0
#define MP_VERSION_MINOR 1
#define MP_VERSION_PATCH 0
#define MP_VERSION_HEX \
    ((MP_VERSION_MAJOR << 16) | (MP_VERSION_MINOR << 8) | MP_VERSION_PATCH)
#define MP_VERSION_STRING "0.1.0"

/* The version of the library linked at run time, "MAJOR.MINOR.PATCH".
 * Static storage; never NULL. */
MP_API const char *mp_version_string(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* The one list of mproc's error codes: XX(name, value, message). It makes the
 * constants below, mp_strerror and mp_err_name. Codes that mirror an errno
 * value are that value negated; mproc's own codes sit below -10000, far from
 * any errno. Python's exception for each code is in brackets. */
#define MP_ERRNO_MAP(XX)                                                       \
    XX(EINVAL, -EINVAL, "invalid argument [ValueError]")                       \
    XX(ENOMEM, -ENOMEM, "out of memory or shared memory [MemoryError]")        \
    XX(ETIMEDOUT, -ETIMEDOUT, "timed out")                                     \
    XX(EPERM, -EPERM, "operation not permitted for the caller")                \
    XX(EOWNERDEAD, -EOWNERDEAD, "acquired, but the previous holder died")      \
    XX(EMSGSIZE, -EMSGSIZE, "buffer too small for the message [BufferTooShort]") \
    XX(EINTR, -EINTR, "interrupted by mp_interrupt() [KeyboardInterrupt]")     \
    XX(EEMPTY, -10001, "nothing to get in time [queue.Empty]")                 \
    XX(EFULL, -10002, "no room to put in time [queue.Full]")                   \
    XX(ECLOSED, -10003, "closed, or the peer is gone [EOFError]")              \
    XX(ESTATE, -10004, "not allowed in the object's current state")           \
    XX(EBROKEN, -10005, "the barrier is broken [BrokenBarrierError]")          \
    XX(ETASK, -10006, "a pool task returned non-zero")                         \
    XX(EWORKER, -10007, "a pool worker died while running the task")           \
    XX(EDONE, -10008, "no more results [StopIteration]")

typedef enum mp_errno {
#define MP_ERRNO_ENUM_(name, value, msg) MP_##name = (value),
    MP_ERRNO_MAP(MP_ERRNO_ENUM_)
#undef MP_ERRNO_ENUM_
} mp_errno;

/* A description of any code: an MP_E* code, a negated errno value, or 0
 * ("success"). An unknown code gets "unknown error". Static storage; never
 * NULL; thread-safe. */
MP_API const char *mp_strerror(int code);

/* The symbolic name of a code: "MP_ETIMEDOUT", "ENOENT" for -ENOENT, "0" for
 * 0, "unknown" for anything else. Static storage; never NULL. */
MP_API const char *mp_err_name(int code);

/* ------------------------------------------------------------------------ */
/* Timeouts                                                                 */
/* ------------------------------------------------------------------------ */

#define MP_FOREVER (-1.0) /* block until done; any negative value does */

/* mp_interrupt: async-signal-safe. Every mproc call blocked in this process
 * at that moment returns MP_EINTR within 50 ms; if none is blocked, the next
 * call that takes a timeout returns MP_EINTR at once. Either way the
 * interrupt is then consumed. Call it from a SIGINT handler to stop a long
 * wait the way KeyboardInterrupt does in Python. Not inherited by children
 * started afterwards. */
MP_API void mp_interrupt(void);

/* ------------------------------------------------------------------------ */
/* Processes (multiprocessing.Process)                                      */
/* ------------------------------------------------------------------------ */

/* A process's body. It runs in the child; its return value is the exit code
 * (the kernel keeps its low 8 bits, so return 0..255). */
typedef int (*mp_target)(void *arg);

typedef struct mp_process mp_process;

typedef struct mp_process_opts {
    const char *name; /* copied; NULL: "Process-N" ("Process-1:N" in a child) */
    bool daemon;      /* terminated when the parent exits; may not start children */
    size_t arg_size;  /* > 0: arg's bytes are copied at mp_process_new */
} mp_process_opts;

#define MP_EXIT_NONE INT_MIN /* exitcode of a process that has not ended */

/* Creates a process handle; nothing runs until mp_process_start.
 * fn must not be NULL; arg is passed to fn as is, or, with opts->arg_size > 0,
 * a copy of its arg_size bytes is taken now (arg must then not be NULL).
 * Returns 0, MP_EINVAL, MP_ENOMEM. */
MP_API int mp_process_new(mp_process **out, mp_target fn, void *arg,
                          const mp_process_opts *opts);

/* Starts the process: flushes every stdio stream, forks, and returns once the
 * child has set itself up (a few microseconds). The child runs fn(arg), then
 * terminates its own daemon children and joins the others, flushes stdio and
 * leaves with _exit(fn's return value): no atexit handler of the parent runs
 * in it. The child dies with this process, however this process ends (even
 * SIGKILL), and whichever thread started it. Returns 0; MP_ESTATE if already
 * started, if the handle belongs to another process, or if the caller is a
 * daemon process; a setup failure in the child (-errno) or of fork itself
 * (-EAGAIN, MP_ENOMEM): then no process is left behind. */
MP_API int mp_process_start(mp_process *p);

/* Waits for the process to end and reaps it. Blocks up to timeout.
 * Returns 0 once it has ended; MP_ETIMEDOUT; MP_EINTR (mp_interrupt);
 * MP_ESTATE if not started or not this process's child; MP_EINVAL. */
MP_API int mp_process_join(mp_process *p, double timeout);

/* true from start until it has ended. Polls; never blocks. */
MP_API bool mp_process_is_alive(mp_process *p);

/* The exit code (0..255), -N if it was killed by signal N, or MP_EXIT_NONE
 * while it runs or before it starts. Polls (and reaps); never blocks. */
MP_API int mp_process_exitcode(mp_process *p);

/* Its pid once started, else 0. */
MP_API pid_t mp_process_pid(const mp_process *p);

/* Its name; never NULL for a valid handle (NULL for NULL). */
MP_API const char *mp_process_name(const mp_process *p);

/* A pidfd that becomes readable once the process has ended (poll, select,
 * epoll, mp_wait). Owned by the handle: do not close it. MP_ESTATE before
 * start, MP_EINVAL for NULL. */
MP_API int mp_process_sentinel(const mp_process *p);

/* Send SIGTERM / SIGKILL through the pidfd (never a recycled pid). 0, also
 * once the process has ended; MP_ESTATE before start. */
MP_API int mp_process_terminate(mp_process *p);
MP_API int mp_process_kill(mp_process *p);

/* Frees the handle. A child still running is detached, not killed: it keeps
 * running and is reaped within a second of its end (never a zombie), and it
 * is still joined or terminated (daemon) at this process's normal exit. */
MP_API void mp_process_free(mp_process *p);

/* "MainProcess" in a process not started by mproc, else the child's name.
 * Static or process-lifetime storage; never NULL. */
MP_API const char *mp_current_name(void);

/* The pid of the process that started this one with mproc; in a process not
 * started by mproc, getppid(). */
MP_API pid_t mp_parent_pid(void);

/* Reaps the children that have ended, then returns how many of this
 * process's started, unfreed children are alive, and stores up to cap of
 * their handles in out (out may be NULL when cap is 0). MP_EINVAL for a NULL
 * out with cap > 0. */
MP_API int mp_active_children(mp_process **out, size_t cap);

/* Online CPUs in the system, read live (os.cpu_count()). At least 1. */
MP_API int mp_cpu_count(void);

/* CPUs this process may use, read live: its affinity mask, lowered by a
 * cgroup v2 cpu.max quota (rounded up) on its cgroup or any ancestor.
 * At least 1. (os.process_cpu_count(), plus the quota.) */
MP_API int mp_process_cpu_count(void);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_H */
