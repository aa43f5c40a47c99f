/* The system-call seam: see os.h. */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

static int sys_waitid(idtype_t type, id_t id, siginfo_t *si, int options)
{
    return waitid(type, id, si, options);
}
static int sys_pidfd_open(pid_t pid, unsigned flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
static int sys_pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
static int sys_eventfd(unsigned initval, int flags) { return eventfd(initval, flags); }
static int sys_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }
static int sys_fcntl(int fd, int cmd, long arg) { return fcntl(fd, cmd, arg); }
static long sys_futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts, uint32_t mask)
{
    return syscall(SYS_futex, addr, op, val, ts, NULL, mask);
}
static long sys_futex_waitv(void *waiters, unsigned n, const struct timespec *ts)
{
    return syscall(SYS_futex_waitv, waiters, n, 0, ts, CLOCK_MONOTONIC);
}

struct mp__sys mp__sys = {
    .fork = fork,
    .waitid = sys_waitid,
    .pidfd_open = sys_pidfd_open,
    .pidfd_send_signal = sys_pidfd_send_signal,
    .pthread_create = pthread_create,
    .pipe2 = pipe2,
    .socketpair = socketpair,
    .eventfd = sys_eventfd,
    .open = sys_open,
    .shm_open = shm_open,
    .fcntl = sys_fcntl,
    .fstat = fstat,
    .malloc = malloc,
    .calloc = calloc,
    .realloc = realloc,
    .memfd_create = memfd_create,
    .ftruncate = ftruncate,
    .mmap = mmap,
    .fallocate = fallocate,
    .read = read,
    .write = write,
    .sendmsg = sendmsg,
    .recvmsg = recvmsg,
    .poll = poll,
    .ppoll = ppoll,
    .futex = sys_futex,
    .futex_waitv = sys_futex_waitv,
};

/* The table as built, for mp__sys_reset. Copied before main: ISO C (and
 * clang) takes no object as another's static initializer. */
static struct mp__sys real;
__attribute__((constructor(101))) static void sys_init(void) { real = mp__sys; }

void (*mp__hook)(const char *where);

void mp__sys_reset(void) { mp__sys = real; }

void mp__close(int fd)
{
    if (fd < 0)
        return;
    int e = errno;
    if (close(fd) < 0 && errno != e) /* Linux frees the descriptor even on EINTR: never retry */
        errno = e; /* only if it changed: a write to errno after a fork costs a page copy */
}
