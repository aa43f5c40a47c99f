/* The lifeline: children die with their parent process. See os.h. */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

/* This process's family pipe, made on first use: [0] read, [1] write. pipe2
 * fills it in place, so the child of a plain fork in another thread finds
 * the descriptors to close (see atfork_child). */
static int fam[2] = {-1, -1};
#define fam_r fam[0]
#define fam_w fam[1]

int mp__lifeline_prepare(int *child_fd)
{
    *child_fd = -1;
    if (fam_w < 0 && mp__sys.pipe2(fam, O_CLOEXEC) < 0) {
        fam_r = fam_w = -1;
        return -errno;
    }
    /* A description of the child's own: F_SETOWN is per description. */
    char path[40];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fam_r);
    int fd = mp__sys.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd >= 0) {
        *child_fd = fd;
        return 0;
    }
    if (errno == ENOENT || errno == EACCES) /* no /proc: the child uses PDEATHSIG */
        return 0;
    return -errno;
}

int mp__lifeline_bind(int fd, pid_t child)
{
    if (fd < 0)
        return 0; /* the child uses PR_SET_PDEATHSIG */
    /* Owner last: a child that sees itself as the owner is fully armed. */
    struct f_owner_ex own = {.type = F_OWNER_PID, .pid = child};
    if (mp__sys.fcntl(fd, F_SETSIG, SIGKILL) < 0 ||
        mp__sys.fcntl(fd, F_SETFL, O_RDONLY | O_NONBLOCK | O_ASYNC) < 0 ||
        mp__sys.fcntl(fd, F_SETOWN_EX, (long)&own) < 0)
        return -errno;
    return 0;
}

static bool parent_gone(int fd)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    return poll(&pf, 1, 0) == 1 && (pf.revents & POLLHUP);
}

void mp__lifeline_await(int fd, pid_t parent)
{
    if (fd < 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) /* the parent died before that */
            _exit(128 + SIGKILL);
        return;
    }
    pid_t me = getpid();
    for (int spins = 0;; spins++) {
        struct f_owner_ex own = {0};
        if (fcntl(fd, F_GETOWN_EX, &own) == 0 && own.pid == me)
            break;
        if (parent_gone(fd)) /* died before arming us: no signal will come */
            _exit(128 + SIGKILL);
        if (spins < 100)
            sched_yield(); /* the parent arms us within microseconds */
        else
            poll(NULL, 0, 1);
    }
    /* Armed: from here the parent's death kills us. */
}

/* A child (of mp__fork or of a plain fork) must not hold its parent's write
 * end, or the parent's children would outlive the parent. */
static void atfork_child(void)
{
    mp__close(fam_r);
    mp__close(fam_w);
    fam_r = fam_w = -1;
}

__attribute__((constructor)) static void lifeline_init(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}
