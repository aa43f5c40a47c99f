/* pidfds: a handle on a child that no pid recycling can fool. */
#include "os.h"

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int mp__pidfd_open(pid_t pid)
{
    int fd = mp__sys.pidfd_open(pid, 0); /* pidfds are always close-on-exec */
    return fd < 0 ? -errno : fd;
}

int mp__pidfd_signal(int pidfd, int sig)
{
    if (mp__sys.pidfd_send_signal(pidfd, sig) < 0)
        return -errno;
    return 0;
}

int mp__pidfd_reap(int pidfd, int *status)
{
    siginfo_t si;
    for (;;) {
        si.si_pid = 0;
        if (mp__sys.waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG) == 0)
            break;
        if (errno != EINTR)
            return -errno;
    }
    if (si.si_pid == 0)
        return 0;
    *status = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
    return 1;
}
