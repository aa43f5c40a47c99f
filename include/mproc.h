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
 *
 * Exec: the family is the program that made it. A process that calls exec()
 * ends its running children (they are killed, as at its death): the new
 * program cannot reach the family's shared memory, locks or handles, and
 * could not join or stop them. Join (or let go of) children before exec; to
 * run another program, exec in a child, whose own children end with it.
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
/* That makes, for grep: MP_EINVAL, MP_ENOMEM, MP_ETIMEDOUT, MP_EPERM,
 * MP_EOWNERDEAD, MP_EMSGSIZE, MP_EINTR, MP_EEMPTY, MP_EFULL, MP_ECLOSED,
 * MP_ESTATE, MP_EBROKEN, MP_ETASK, MP_EWORKER, MP_EDONE. */

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
/* exitcode of a process that ended but whose status is lost: the program
 * ignores SIGCHLD (the kernel then reaps at once) or reaped it itself with a
 * waitpid(-1, ...). Join still returns, where Python's would hang. */
#define MP_EXIT_UNKNOWN (INT_MIN + 1)

/* Creates a process handle; nothing runs until mp_process_start.
 * fn must not be NULL; arg is passed to fn as is, or, with opts->arg_size > 0,
 * a copy of its arg_size bytes is taken now (arg must then not be NULL).
 * Returns 0, MP_EINVAL, MP_ENOMEM. */
MP_API int mp_process_new(mp_process **out, mp_target fn, void *arg,
                          const mp_process_opts *opts);

/* Starts the process: flushes every stdio stream, forks, and returns once it
 * holds the child by a pidfd (a few microseconds); the child runs nothing
 * before that, so a child that ends at once is still reported by join, even
 * with SIGCHLD ignored. The child runs fn(arg), then terminates its own
 * daemon children and joins the others, flushes stdio and leaves with
 * _exit(fn's return value): no atexit handler of the parent runs in it. The
 * child dies with this process, however this process ends (even SIGKILL),
 * whichever thread started it, with or without /proc; and when this process
 * calls exec (see Exec above). A child that itself calls exec leaves the
 * family: it is no longer killed with this process. Returns 0; MP_ESTATE if already started, if
 * the handle belongs to another process, or if the caller is a daemon
 * process; a setup failure (-errno: -EMFILE, ...) or one of fork itself
 * (-EAGAIN, MP_ENOMEM): then fn never ran, and no process is left behind. */
MP_API int mp_process_start(mp_process *p);

/* Waits for the process to end and reaps it. Blocks up to timeout.
 * Returns 0 once it has ended; MP_ETIMEDOUT; MP_EINTR (mp_interrupt);
 * MP_ESTATE if not started or not this process's child; MP_EINVAL. */
MP_API int mp_process_join(mp_process *p, double timeout);

/* true from start until it has ended. Polls; never blocks. */
MP_API bool mp_process_is_alive(mp_process *p);

/* The exit code (0..255), -N if it was killed by signal N, MP_EXIT_NONE
 * while it runs or before it starts, MP_EXIT_UNKNOWN (see above). Polls (and
 * reaps); never blocks. */
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

/* ------------------------------------------------------------------------ */
/* Shared memory: the family arena                                          */
/* ------------------------------------------------------------------------ */

/* When the library loads, before any child exists, it reserves one large
 * shared region (a sparse memfd, MAP_SHARED | MAP_NORESERVE, as large as the
 * system allows, up to a terabyte; MPROC_ARENA_SIZE=bytes overrides; excluded
 * from core dumps). Every mproc object and every mp_shared_alloc block lives
 * there, at the same address in every process of the family (the loading
 * process and all processes it or its children start), even in processes
 * started before the block was allocated: pass such memory to them by
 * pointer. Pages cost memory only once touched; freed pages go back to the
 * system. When the last process of the family ends, the kernel frees it all,
 * even after SIGKILL: nothing is left in /dev/shm.
 *
 * C11 atomics (<stdatomic.h>) work on arena memory across processes as they
 * do across threads: lock-free atomics on shared pages are process-shared. */

/* A zeroed block of size bytes, 16-byte aligned; NULL when the arena is
 * exhausted (never SIGBUS) or size is 0. Thread- and process-safe. */
MP_API void *mp_shared_alloc(size_t size);

/* A zeroed array of n elements; NULL on overflow or exhaustion. */
MP_API void *mp_shared_calloc(size_t n, size_t size);

/* Frees a block; any process of the family may free any block. NULL: no-op.
 * A pointer that mp_shared_alloc did not return is ignored. */
MP_API void mp_shared_free(void *p);

/* Bytes handed out and not yet freed, family-wide (sizes as requested,
 * rounded up to the allocator's size class). */
MP_API size_t mp_shared_usage(void);

/* Named shared memory for unrelated processes (shared_memory.SharedMemory).
 * Names: 1..200 of [A-Za-z0-9._-]; an optional leading '/' is ignored.
 * Objects are created with mode 0600, O_CLOEXEC | O_NOFOLLOW. */
typedef struct mp_shm mp_shm;

/* Creates and maps a new object of size bytes (> 0), zeroed. name NULL: a
 * fresh unique name. -EEXIST if the name is taken; MP_EINVAL for a bad name
 * or size 0. */
MP_API int mp_shm_create(mp_shm **out, const char *name, size_t size);
/* Maps an existing object, its whole size. -ENOENT if there is none. */
MP_API int mp_shm_attach(mp_shm **out, const char *name);
MP_API void *mp_shm_ptr(const mp_shm *s);
MP_API size_t mp_shm_size(const mp_shm *s);
MP_API const char *mp_shm_name(const mp_shm *s); /* without the '/' */
/* Removes the name (the memory stays while mapped). -ENOENT if gone. */
MP_API int mp_shm_unlink(mp_shm *s);
/* Unmaps and frees the handle; the name stays until unlinked. NULL: no-op. */
MP_API void mp_shm_free(mp_shm *s);

/* ------------------------------------------------------------------------ */
/* Synchronisation (Lock, RLock, Semaphore, Event, Condition, Barrier)      */
/* ------------------------------------------------------------------------ */

/* Every primitive lives in the arena: create it in any process, pass the
 * pointer to any process of the family, free it once when no one uses it.
 * They sleep on shared futexes, after a short adaptive spin; the uncontended
 * paths make no system call. Blocking calls take a timeout (see Timeouts),
 * return MP_ETIMEDOUT when it expires and MP_EINTR on mp_interrupt(); an
 * interrupted call has taken nothing (no lock, no count, no notification).
 * A holder's death is noticed by a waiter that has slept about 0.25 s on the
 * object, so a zero-timeout poll never reports MP_EOWNERDEAD. The kernel
 * decides who has died: each process that takes a lock holds a record lock
 * that the kernel drops when the process ends, so death is seen without
 * /proc, in any pid namespace, at the descriptor limit, and a new process
 * that got a dead holder's pid back is not taken for it. A live holder is
 * never taken for dead: when the kernel cannot be asked, the waiter asks
 * again later. A waiter that dies in its wait takes no wake-up with it: a
 * Semaphore unit, a free Lock or a Condition notification goes to the next
 * live waiter (at the latest after about 0.25 s). Once this process cannot
 * register with the kernel (no memory for a record lock), acquiring a lock
 * returns MP_ENOMEM. */
typedef struct mp_lock mp_lock;
typedef struct mp_rlock mp_rlock;
typedef struct mp_sem mp_sem;
typedef struct mp_event mp_event;
typedef struct mp_cond mp_cond;
typedef struct mp_barrier mp_barrier;

/* Lock: not recursive (acquiring it again blocks until the timeout, as in
 * Python); any thread or process may release it. If its holder's process
 * dies, the next acquirer gets MP_EOWNERDEAD (within about a second) and
 * holds the lock: the data it guards may be half-updated. */
MP_API int mp_lock_new(mp_lock **out);
MP_API int mp_lock_acquire(mp_lock *l, double timeout); /* 0, MP_ETIMEDOUT, MP_EOWNERDEAD, MP_EINTR */
MP_API int mp_lock_release(mp_lock *l);                 /* MP_EPERM if it was not locked */
MP_API bool mp_lock_locked(mp_lock *l);
MP_API void mp_lock_free(mp_lock *l);

/* RLock: owned by a thread, recursive. Release by a thread that does not own
 * it: MP_EPERM. MP_EOWNERDEAD: held now, with count 1. Recursion past
 * UINT32_MAX levels: -EAGAIN. A thread that exits holding it leaves it held,
 * as in Python. */
MP_API int mp_rlock_new(mp_rlock **out);
MP_API int mp_rlock_acquire(mp_rlock *l, double timeout);
MP_API int mp_rlock_release(mp_rlock *l);
MP_API bool mp_rlock_locked(mp_rlock *l);
MP_API void mp_rlock_free(mp_rlock *l);

/* Semaphore (max 0) or BoundedSemaphore (max > 0, value <= max, else
 * MP_EINVAL): no owner. Release past max: MP_EINVAL; past INT_MAX: -EOVERFLOW. */
MP_API int mp_sem_new(mp_sem **out, unsigned value, unsigned max);
MP_API int mp_sem_acquire(mp_sem *s, double timeout);
MP_API int mp_sem_release(mp_sem *s);
MP_API int mp_sem_value(const mp_sem *s);
MP_API void mp_sem_free(mp_sem *s);

/* Event: a flag that processes wait for. */
MP_API int mp_event_new(mp_event **out);
MP_API int mp_event_set(mp_event *e);
MP_API int mp_event_clear(mp_event *e);
MP_API bool mp_event_is_set(mp_event *e);
MP_API int mp_event_wait(mp_event *e, double timeout); /* 0 once set, MP_ETIMEDOUT */
MP_API void mp_event_free(mp_event *e);

/* Condition over an RLock (lock NULL: its own, freed with the condition).
 * wait: the caller must hold the lock (else MP_EPERM); it is released fully
 * while waiting and re-acquired with the same recursion count before
 * returning, whatever the result: 0 when notified, MP_ETIMEDOUT, MP_EINTR,
 * MP_EOWNERDEAD (the lock's holder died meanwhile), MP_ENOMEM. So an
 * interrupted or timed-out wait returns once it has the lock back, which may
 * be later than 50 ms if another thread holds it (as in Python). notify(n)
 * wakes at most n of the threads waiting at that moment, oldest first,
 * passing over waiters whose process has died; notify and notify_all need
 * the lock too (else MP_EPERM). A notifier that dies midway through notify
 * leaves the condition whole (the next acquirer gets MP_EOWNERDEAD). */
MP_API int mp_cond_new(mp_cond **out, mp_rlock *lock);
MP_API int mp_cond_acquire(mp_cond *c, double timeout);
MP_API int mp_cond_release(mp_cond *c);
MP_API int mp_cond_wait(mp_cond *c, double timeout);
MP_API int mp_cond_notify(mp_cond *c, unsigned n);
MP_API int mp_cond_notify_all(mp_cond *c);
MP_API void mp_cond_free(mp_cond *c);

/* Barrier for parties (> 0) processes or threads. wait returns this party's
 * index in arrival order, 0..parties-1, as Python does; the last to arrive
 * (index parties-1) runs action(arg) once before anyone leaves, so action and
 * arg must be valid in every process (code and arena memory are). An action
 * that returns non-zero breaks the barrier. The party whose timeout runs out
 * gets MP_ETIMEDOUT and breaks it, the others MP_EBROKEN; so does a party that
 * dies while waiting. abort breaks it; reset wakes the waiting with
 * MP_EBROKEN and makes it usable again. */
MP_API int mp_barrier_new(mp_barrier **out, unsigned parties, mp_target action, void *arg);
MP_API int mp_barrier_wait(mp_barrier *b, double timeout);
MP_API int mp_barrier_abort(mp_barrier *b);
MP_API int mp_barrier_reset(mp_barrier *b);
MP_API int mp_barrier_parties(const mp_barrier *b);
MP_API int mp_barrier_n_waiting(const mp_barrier *b);
MP_API bool mp_barrier_broken(const mp_barrier *b);
MP_API void mp_barrier_free(mp_barrier *b);

/* ------------------------------------------------------------------------ */
/* Value and Array (multiprocessing.Value / Array)                          */
/* ------------------------------------------------------------------------ */

/* Shared bytes plus the RLock that guards them, in the arena. An Array is a
 * value of n * sizeof(elem) bytes. */
typedef struct mp_value mp_value;

/* size > 0 (else MP_EINVAL); init NULL: zeroed, else size bytes copied. */
MP_API int mp_value_new(mp_value **out, size_t size, const void *init);
MP_API void *mp_value_ptr(mp_value *v);    /* the bytes, unlocked; NULL for NULL */
MP_API size_t mp_value_size(const mp_value *v);
MP_API mp_rlock *mp_value_lock(mp_value *v); /* get_lock() */
MP_API int mp_value_get(mp_value *v, void *dst);       /* copy out under the lock */
MP_API int mp_value_set(mp_value *v, const void *src); /* copy in under the lock */
MP_API void mp_value_free(mp_value *v);

/* ------------------------------------------------------------------------ */
/* Pipes and connections (multiprocessing.Pipe / Connection)                */
/* ------------------------------------------------------------------------ */

/* A connection is one end of a socket pair, with a small handle private to
 * each process: create the pipe before starting the processes that use it,
 * which inherit both ends (a child usually frees the end it does not use).
 * mp_conn_free closes the caller's copy only; the peer sees the pipe closed
 * once every process holding the other end has closed it or ended.
 *
 * Messages keep their boundaries: each send is one message of any length
 * (0 bytes and hundreds of MiB included), received whole by one receive.
 * Several threads of one process may send on one end at once, and several
 * may receive: no message is ever interleaved with another (each end holds
 * a send lock and a receive lock, private to the process; two processes
 * sending on one inherited end at once are not serialised, as in Python).
 * A peer that closed: receive returns MP_ECLOSED once what it sent is
 * drained; send returns MP_ECLOSED, and no SIGPIPE is raised whatever the
 * program's SIGPIPE disposition. Both descriptors are close-on-exec.
 *
 * A send blocks while the peer does not read (the kernel buffers a few
 * hundred KiB); it returns MP_EINTR on mp_interrupt(), and a message cut
 * short that way is never delivered: the receiver discards it whole. A
 * receive that times out or is interrupted in the middle of a long message
 * keeps what it has read, and the next receive on that end goes on with it. */
typedef struct mp_conn mp_conn;

/* duplex: both ends send and receive. !duplex: a only receives, b only
 * sends (as Python's Pipe(duplex=False)); the wrong direction: MP_EPERM. */
MP_API int mp_pipe(mp_conn **a, mp_conn **b, bool duplex);
/* Sends len bytes as one message (buf may be NULL when len is 0). 0,
 * MP_ECLOSED, MP_EPERM, MP_EINTR, MP_EINVAL (NULL buf with len > 0; len past
 * 2^62). */
MP_API int mp_conn_send(mp_conn *c, const void *buf, size_t len);
/* Receives one message into buf: its length. MP_EMSGSIZE if cap is too
 * small: the message stays, whole, for the next receive; MP_ETIMEDOUT;
 * MP_ECLOSED (peer gone and nothing left); MP_EINTR. buf may be NULL when
 * cap is 0 (for a 0-byte message, or to learn nothing but MP_EMSGSIZE). */
MP_API ssize_t mp_conn_recv(mp_conn *c, void *buf, size_t cap, double timeout);
/* Receives one message into a new malloc'd buffer (free it; never NULL on
 * success, even for 0 bytes); *len its length. */
MP_API int mp_conn_recv_alloc(mp_conn *c, void **buf, size_t *len, double timeout);
/* 1 once something is there to read: a message or the start of one (the
 * receive then waits for its rest), or the peer's close; 0 if nothing
 * came within timeout; MP_EINTR; MP_EPERM on a send-only end. */
MP_API int mp_conn_poll(mp_conn *c, double timeout);
/* The descriptor, for poll/epoll or mp_wait; -1 for NULL. Do not read or
 * write it directly. */
MP_API int mp_conn_fileno(const mp_conn *c);
MP_API void mp_conn_free(mp_conn *c);

/* Waits until at least one of n descriptors is readable (data, or the peer
 * closed) or has ended (process sentinels, mp_process_sentinel); connection
 * fds (mp_conn_fileno) and sentinels mix freely. Returns how many are ready,
 * with ready[i] set for each (ready may be NULL); 0 on timeout; MP_EINTR;
 * MP_EINVAL for NULL fds with n > 0, a negative fd, or n past 1024; -EBADF
 * for a closed fd. */
MP_API int mp_wait(const int *fds, size_t n, bool *ready, double timeout);

/* ------------------------------------------------------------------------ */
/* Queues (multiprocessing.Queue / JoinableQueue)                           */
/* ------------------------------------------------------------------------ */

/* A queue lives in the arena: create it in any process and pass the pointer
 * to any process of the family, started before or after it was made. Many
 * producers and many consumers; messages of any length (0 bytes too) are
 * copied once into the queue's shared buffer and once out, with no
 * serialisation and no feeder thread: a put that returned 0 has its message
 * in the queue, so there is nothing to flush and no way to deadlock a join
 * by leaving data behind. Messages arrive whole and in order per producer. A
 * message larger than the buffer is streamed through it, a consumer copying
 * it out while the producer copies it in; it is delivered only whole, and a
 * put that fails midway (timeout, interrupt, close, death) leaves none of it.
 *
 * Crashes: a process killed at any instant inside put or get leaves the
 * queue usable by everyone else, each message wholly there or wholly absent,
 * never torn and never delivered twice; a message is lost only if the
 * consumer that was taking it dies after it was taken (the same as dying
 * just after get returned) or, for a message streamed because it is larger
 * than the buffer, if that consumer dies in the middle of it. A producer or
 * consumer that dies inside the queue delays the others by about 0.25 s.
 *
 * Blocking calls return MP_EINTR on mp_interrupt(), having taken or left
 * nothing. */
typedef struct mp_queue mp_queue;

typedef struct mp_queue_opts {
    size_t maxsize;  /* most messages held; 0: bounded by capacity alone */
    size_t capacity; /* bytes of shared buffer, rounded up to a power of two,
                        64 B .. 2 GiB; 0: 1 MiB */
    bool joinable;   /* task_done / join (JoinableQueue) */
} mp_queue_opts;

/* opts NULL: defaults. MP_EINVAL for a capacity outside its range;
 * MP_ENOMEM. A maxsize past what the capacity holds leaves bytes the
 * bound (each message takes 8 bytes of header plus its length rounded up
 * to 8). */
MP_API int mp_queue_new(mp_queue **out, const mp_queue_opts *opts);
/* Puts one message of len bytes (msg may be NULL when len is 0). 0,
 * MP_EFULL (no room within timeout: nothing of it is in the queue),
 * MP_ECLOSED, MP_EINTR, MP_EINVAL. */
MP_API int mp_queue_put(mp_queue *q, const void *msg, size_t len, double timeout);
/* Takes the oldest message into buf: its length. MP_EMSGSIZE if cap is too
 * small (the message stays, whole); MP_EEMPTY (none within timeout);
 * MP_ECLOSED (closed and drained: at once, whatever the timeout); MP_EINTR. */
MP_API ssize_t mp_queue_get(mp_queue *q, void *buf, size_t cap, double timeout);
/* Takes the oldest message into a new malloc'd buffer (free it; never NULL
 * on success); *len its length. */
MP_API int mp_queue_get_alloc(mp_queue *q, void **msg, size_t *len, double timeout);
/* Messages in the queue now (whole ones: a message still streaming in is
 * not counted). A snapshot, as in Python: it may change at once. */
MP_API size_t mp_queue_qsize(const mp_queue *q);
MP_API bool mp_queue_empty(const mp_queue *q);
MP_API bool mp_queue_full(const mp_queue *q); /* qsize == maxsize (maxsize > 0) */
/* Closes it for everyone: puts (and puts in progress) fail with
 * MP_ECLOSED, gets drain what is there and then return MP_ECLOSED at once.
 * Wakes every blocked put and get (a join goes on waiting for task_done,
 * as in Python). Closing twice is 0. */
MP_API int mp_queue_close(mp_queue *q);
/* JoinableQueue: each get's message is a task; task_done marks one done.
 * More task_done than puts: MP_EINVAL; a plain queue: MP_ESTATE. */
MP_API int mp_queue_task_done(mp_queue *q);
/* Waits until every message ever put has been marked done: 0,
 * MP_ETIMEDOUT, MP_EINTR; a plain queue: MP_ESTATE. */
MP_API int mp_queue_join(mp_queue *q, double timeout);
/* Frees it for everyone: call once, when no process uses it. */
MP_API void mp_queue_free(mp_queue *q);

/* Put or get one variable v by value: MP_PUT(q, i); MP_GET(q, i). */
#define MP_PUT(q, v) mp_queue_put((q), &(v), sizeof(v), MP_FOREVER)
#define MP_GET(q, v) mp_queue_get((q), &(v), sizeof(v), MP_FOREVER)

/* ------------------------------------------------------------------------ */
/* Pools (multiprocessing.Pool)                                             */
/* ------------------------------------------------------------------------ */

/* A pool of worker processes, used by the process that created it (from any
 * of its threads). Workers are daemon children started by fork when the
 * pool is made (and when one must be replaced): they see the code and the
 * memory that existed at that moment, and the arena (mp_shared_alloc,
 * queues, values...) at any time. So fn, ctx and what ctx points to must be
 * code, memory from before mp_pool_new, or arena memory. Inputs and outputs
 * need not: inputs outside the arena are copied into it once per call, and
 * outputs are written straight into out when out is arena memory, else into
 * an arena buffer copied to out once when the work is done.
 *
 * Work is handed out in chunks of consecutive items that idle workers claim
 * themselves, from shared memory: while workers are busy, neither handing
 * out a chunk nor collecting it takes a system call; idle workers sleep and
 * cost no CPU.
 *
 * Crashes: a worker that dies while running an item (a signal, exit(), the
 * OOM killer) fails that item alone with MP_EWORKER, also inside a chunk:
 * the rest of its chunk runs elsewhere. A replacement is started (at a
 * bounded rate, so that items which all crash make no fork storm) and the
 * work goes on. If no replacement can be started (no memory, descriptors
 * or processes left: RLIMIT_NOFILE, RLIMIT_NPROC), the pool tries again
 * every 20 ms, with the workers it has; with none left, the work waits (a
 * timed wait returns MP_ETIMEDOUT) and goes on once a start succeeds. A task
 * that runs past task_timeout is killed with its worker
 * (MP_ETIMEDOUT for that item). Workers ignore SIGINT (the terminal's
 * Ctrl-C goes to the parent, which decides) and die with the parent.
 *
 * Blocking calls return MP_EINTR on mp_interrupt(), and the pool stays
 * usable. mp_pool_map and mp_pool_apply then cancel their work: no new item
 * of it starts, and items already running end in the background (a result
 * of such an item may still be written to out when out is arena memory).
 * An interrupted mp_async_wait/get or mp_imap_next leaves the work running
 * for its handle: wait again, or free the handle to cancel it. */
typedef struct mp_pool mp_pool;
typedef struct mp_async mp_async;
typedef struct mp_imap mp_imap;

/* A task: reads *in, writes *out, returns 0, or non-zero when this item
 * failed (the value goes to status, and the call returns MP_ETASK). */
typedef int (*mp_task)(const void *in, void *out, void *ctx);

typedef struct mp_pool_opts {
    int processes;           /* 0: mp_process_cpu_count(); < 0: MP_EINVAL */
    mp_target initializer;   /* run once in each worker before its first task;
                                non-zero: the worker is not used (see mp_pool_new) */
    void *initarg;
    size_t maxtasksperchild; /* chunks a worker runs before it is replaced
                                (a chunk is one task, as in Python); 0: no limit */
} mp_pool_opts;

typedef struct mp_map_opts {
    size_t chunksize;      /* items per chunk; 0: chosen by the pool (guided:
                              large chunks first, small ones last, so uneven
                              items balance) */
    void *ctx;             /* third argument of every call */
    int *status;           /* n entries, or NULL: 0, the task's non-zero return,
                              MP_EWORKER or MP_ETIMEDOUT per item; for imap,
                              unused (mp_imap_next reports each) */
    double task_timeout;   /* > 0: an item running longer is killed with its
                              worker; 0: no limit; NaN, < 0: MP_EINVAL */
    void (*progress)(size_t done, size_t total, void *arg); /* or NULL */
    void *progress_arg;
} mp_map_opts;

/* Starts the workers and returns once every one has run its initializer.
 * MP_EINVAL for processes < 0 or past 1024; MP_ETASK if an initializer
 * returned non-zero (or its worker died in it); MP_ENOMEM; -errno. */
MP_API int mp_pool_new(mp_pool **out, const mp_pool_opts *opts);

/* Runs fn over n items: in + i * in_size to out + i * out_size, i in
 * [0, n). in may be NULL when in_size is 0, out when out_size is 0. Returns
 * once every item is done: 0, or the error of the first failed item by
 * index (MP_ETASK, MP_EWORKER, MP_ETIMEDOUT); out holds every successful
 * item's result (what a failed item's place holds is unspecified), status
 * (if given) every item's outcome. Starmap is map
 * over an array of structs. A side without data passes NULL and 0 (the task
 * gets NULL there). MP_EINVAL: NULL pool or fn, a pointer with size 0 or a
 * size with a NULL pointer (n > 0), n * size overflowing, bad opts (a NaN
 * or negative task_timeout); MP_ESTATE: the pool is closed or terminated;
 * MP_EINTR (the work is cancelled); MP_ECLOSED: terminated meanwhile;
 * MP_ENOMEM. */
MP_API int mp_pool_map(mp_pool *pool, mp_task fn, const void *in, size_t in_size,
                       void *out, size_t out_size, size_t n, const mp_map_opts *opts);
/* map with n == 1: the task's outcome (0, MP_ETASK, MP_EWORKER). */
MP_API int mp_pool_apply(mp_pool *pool, mp_task fn, const void *in, size_t in_size,
                         void *out, size_t out_size);

/* Submits the work and returns at once; *res follows it. out (and status)
 * must stay valid until the result is ready; out is filled by the time
 * mp_async_wait, mp_async_ready or mp_async_get first reports it ready.
 * Free each result with mp_async_free. */
MP_API int mp_pool_map_async(mp_async **res, mp_pool *pool, mp_task fn, const void *in,
                             size_t in_size, void *out, size_t out_size, size_t n,
                             const mp_map_opts *opts);
MP_API int mp_pool_apply_async(mp_async **res, mp_pool *pool, mp_task fn, const void *in,
                               size_t in_size, void *out, size_t out_size);
/* 0 once ready, MP_ETIMEDOUT, MP_EINTR, MP_ECLOSED (pool terminated). */
MP_API int mp_async_wait(mp_async *r, double timeout);
MP_API bool mp_async_ready(mp_async *r); /* never blocks */
/* Waits, then 0 or the first failed item's error, as mp_pool_map. */
MP_API int mp_async_get(mp_async *r, double timeout);
/* The index of a ready result among rs[0..n) (the lowest, if several):
 * as_completed. MP_ETIMEDOUT, MP_EINTR, MP_EINVAL (n 0 or past 1024, a
 * NULL entry). */
MP_API int mp_async_wait_any(mp_async **rs, size_t n, double timeout);
/* Frees the handle; work still running is cancelled (no new item starts). */
MP_API void mp_async_free(mp_async *r);

/* Lazy map: results come back one by one through mp_imap_next, in index
 * order (ordered) or as they complete. Memory stays bounded however slowly
 * they are taken: workers run at most a window of items ahead of the
 * consumer. */
MP_API int mp_pool_imap(mp_imap **it, mp_pool *pool, mp_task fn, const void *in,
                        size_t in_size, size_t out_size, size_t n,
                        const mp_map_opts *opts, bool ordered);
/* The next result into out (out_size bytes; out may be NULL when out_size
 * is 0) and its index into *index (may be NULL): 0, or that item's error
 * (MP_ETASK, MP_EWORKER, MP_ETIMEDOUT; iteration goes on); MP_EDONE after
 * the last; MP_ETIMEDOUT, MP_EINTR, MP_ECLOSED with nothing taken, and then
 * *index is SIZE_MAX (so an item that ran past task_timeout and a wait
 * that ran out of time tell themselves apart). */
MP_API int mp_imap_next(mp_imap *it, void *out, size_t *index, double timeout);
MP_API void mp_imap_free(mp_imap *it); /* cancels what was not taken */

/* No new work; workers leave once the work submitted is done. */
MP_API int mp_pool_close(mp_pool *pool);
/* Stops the workers now: SIGTERM, a short grace, then SIGKILL; returns once
 * all are gone (within about a second, whatever they do). Unfinished
 * results and iterators answer MP_ECLOSED. */
MP_API int mp_pool_terminate(mp_pool *pool);
/* Waits for the workers to leave after close or terminate: 0,
 * MP_ETIMEDOUT, MP_EINTR; MP_ESTATE if neither was called. */
MP_API int mp_pool_join(mp_pool *pool, double timeout);
/* Terminates what still runs, then frees the pool. Results and iterators
 * of the pool must be freed before it. */
MP_API void mp_pool_free(mp_pool *pool);

/* A ready progress callback: one line on stderr when stderr is a terminal
 * ("label  123/1000  12%  4.5k/s  ETA 0:03"), redrawn at most ten times a
 * second, and a final line, with its newline, at done == total. Silent when
 * stderr is not a terminal. arg: a label (const char *) or NULL. */
MP_API void mp_progress_bar(size_t done, size_t total, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_H */
