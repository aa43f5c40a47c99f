/* The lifeline: children die with their parent process. See os.h. */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

/* The write ends this process holds for its children. A child of any fork
 * (ours or a plain one, from any thread) closes them all at once, so that no
 * one but the parent ever holds a child's write end. mu is held across fork
 * (atfork), so a write end is either in the list when a fork happens, or
 * does not exist yet. */
static struct {
    pthread_mutex_t mu;
    int *fd;
    size_t n, cap;
} held = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* With held.mu: lists fd. */
static int hold(int fd)
{
    if (held.n == held.cap) {
        size_t cap = held.cap ? held.cap * 2 : 16;
        int *nf = mp__sys.realloc(held.fd, cap * sizeof *nf);
        if (!nf)
            return -ENOMEM;
        held.fd = nf;
        held.cap = cap;
    }
    held.fd[held.n++] = fd;
    return 0;
}

int mp__lifeline_new(mp__lifeline *l)
{
    int fds[2], err = 0;
    l->r = l->w = -1;
    /* mu from before the pipe exists until its write end is listed: a fork
     * in another thread either comes first or finds it in the list. */
    pthread_mutex_lock(&held.mu);
    if (mp__sys.pipe2(fds, O_CLOEXEC) < 0) {
        err = -errno;
        goto out;
    }
    /* Armed but for its owner: with no owner, no signal can fire yet. */
    if (mp__sys.fcntl(fds[0], F_SETSIG, SIGKILL) < 0 ||
        mp__sys.fcntl(fds[0], F_SETFL, O_RDONLY | O_NONBLOCK | O_ASYNC) < 0)
        err = -errno;
    else
        err = hold(fds[1]);
    if (err) {
        mp__close(fds[0]);
        mp__close(fds[1]);
        goto out;
    }
    l->r = fds[0];
    l->w = fds[1];
out:
    pthread_mutex_unlock(&held.mu);
    return err;
}

int mp__lifeline_bind(mp__lifeline *l, pid_t child)
{
    /* The owner is the last step: a child that sees itself as the owner is
     * fully armed, and may run. */
    struct f_owner_ex own = {.type = F_OWNER_PID, .pid = child};
    int r = mp__sys.fcntl(l->r, F_SETOWN_EX, (long)&own) < 0 ? -errno : 0;
    mp__close(l->r);
    l->r = -1;
    return r;
}

void mp__lifeline_drop(int w)
{
    if (w < 0)
        return;
    pthread_mutex_lock(&held.mu);
    for (size_t i = 0; i < held.n; i++)
        if (held.fd[i] == w) {
            held.fd[i] = held.fd[--held.n];
            break;
        }
    mp__close(w); /* under mu: no fork copies it half-forgotten */
    pthread_mutex_unlock(&held.mu);
}

static bool parent_gone(int fd)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    return mp__sys.poll(&pf, 1, 0) == 1 && (pf.revents & POLLHUP);
}

void mp__lifeline_await(int fd)
{
    pid_t me = getpid();
    for (int spins = 0;; spins++) {
        struct f_owner_ex own = {0};
        if (mp__sys.fcntl(fd, F_GETOWN_EX, (long)&own) == 0 && own.pid == me)
            break;
        /* The write end closed before we were armed: the parent died, or
         * gave up on this start. Either way the target must not run. */
        if (parent_gone(fd))
            _exit(128 + SIGKILL);
        if (spins < 100)
            sched_yield(); /* the parent arms us within microseconds */
        else
            mp__sys.poll(NULL, 0, 1);
    }
    /* Armed: from here the parent's death kills us. */
}

static void atfork_prepare(void) { pthread_mutex_lock(&held.mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&held.mu); }

/* In any child: the write ends are the parent's, for the parent's children. */
static void atfork_child(void)
{
    for (size_t i = 0; i < held.n; i++)
        mp__close(held.fd[i]);
    held.n = 0;
    pthread_mutex_unlock(&held.mu); /* taken in atfork_prepare; re-initialising it locked is UB */
}

/* Registered early, so that its prepare handler runs after those of the
 * layers above (the reverse order): a caller that holds process.c's lock may
 * drop a write end (mu) after it, never the other way round. */
__attribute__((constructor(102))) static void lifeline_init(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}
