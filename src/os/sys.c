/* The system-call seam: see os.h. */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int sys_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }
static int sys_fcntl(int fd, int cmd, long arg) { return fcntl(fd, cmd, arg); }
static int sys_pidfd_open(pid_t pid, unsigned flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }

static const struct mp__sys real = {
    .fork = fork,
    .pipe2 = pipe2,
    .open = sys_open,
    .fcntl = sys_fcntl,
    .pidfd_open = sys_pidfd_open,
    .memfd_create = memfd_create,
    .ftruncate = ftruncate,
    .mmap = mmap,
    .fallocate = fallocate,
};

struct mp__sys mp__sys = real;

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
