/* The fork protocol, the part that knows nothing of processes as objects. */
#include "os.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>

pid_t mp__fork(sigset_t *mask)
{
    sigset_t all;
    fflush(NULL); /* or the child would write the parent's buffered output again */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, mask);
    pid_t pid = mp__sys.fork();
    if (pid < 0) {
        int e = errno;
        pthread_sigmask(SIG_SETMASK, mask, NULL);
        return -e;
    }
    return pid;
}

void mp__fork_restore(const sigset_t *mask)
{
    pthread_sigmask(SIG_SETMASK, mask, NULL);
}
