/*
 * Processes: multiprocessing.Process on fork.
 *
 * Start forks with every signal blocked, then does the child's setup from
 * the parent side. The child waits, before anything else, until it sees its
 * lifeline armed (os/lifeline.c); until then it cannot run its target nor
 * end by itself. In that time the parent opens the child's pidfd, so it holds
 * the child from before the child can end: a child reaped behind our back
 * (SIGCHLD ignored, another thread's waitpid(-1)) is still ours to report on,
 * and no pid is ever signalled, only pidfds. Then the parent arms the
 * lifeline, which releases the child. If a step fails, the parent closes the
 * lifeline's write end instead: the child exits by itself without running
 * the target, start reaps it and returns the error. So no setup failure shows
 * up as a mysterious exit code, a failed start never ran the target, and the
 * child has no step that can fail. No round trip to the child is needed (a
 * pipe handshake would cost the parent a sleep and a cross-CPU wake-up).
 *
 * Every handle this process started stays in `g.handles` until it is freed,
 * so that at a fork the child can close the pidfds it inherited, and at exit
 * this process can terminate its daemons and join the rest. A handle freed
 * while its child runs is "detached": the reaper thread (started on demand,
 * gone when it has nothing to watch) reaps and frees it when the child ends.
 *
 * Lock rules: g.mu guards g.handles, g.counter, and the state, exitcode and
 * detached fields of every handle; it is never held across a blocking call.
 * g.start_mu serialises the fork section, so the descriptors one start
 * creates for its child never leak into a sibling being forked at the same
 * time. Order: start_mu, then mu.
 */
#include "mproc.h"

#include "arena.h"
#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { P_NEW, P_STARTING, P_STARTED };

#define DAEMON_GRACE_S 1.0 /* SIGTERM, then this long, then SIGKILL */
#define REAPER_LOOK_MS 50   /* the reaper without its eventfd looks this often */

struct mp_process {
    mp_target fn;
    void *arg;        /* what fn gets: the caller's pointer or arg_copy */
    void *arg_copy;   /* owned, when opts->arg_size > 0 */
    char *name;       /* owned */
    char *ident;      /* owned: "3", or "1:3" in the child of Process-1 */
    bool daemon;
    int state;        /* P_*; mu */
    bool detached;    /* freed while running: the reaper owns it; mu */
    pid_t pid;
    pid_t owner;      /* the process that started it */
    int pidfd;        /* -1 before start, and in the child of a fork */
    int life_w;       /* the lifeline's write end until reaped, else -1; mu */
    int exitcode;     /* MP_EXIT_NONE until reaped; mu */
    mp_process *prev, *next; /* g.handles, once started */
};

static struct {
    pthread_mutex_t mu;
    pthread_mutex_t start_mu;
    mp_process *handles; /* started here and not freed (detached included) */
    unsigned counter;    /* processes created here, for "Process-N" */
    /* this process */
    pid_t self;
    pid_t parent;        /* 0 unless started by mproc */
    const char *name;    /* NULL: "MainProcess" */
    const char *ident;   /* "" in the main process */
    bool daemon;
    /* the reaper of detached children */
    bool reaper_on;
    int reaper_efd;
} g = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .start_mu = PTHREAD_MUTEX_INITIALIZER,
    .ident = "",
    .reaper_efd = -1,
};

static _Thread_local bool starting; /* this thread holds g.start_mu */

static void lock(void) { pthread_mutex_lock(&g.mu); }
static void unlock(void) { pthread_mutex_unlock(&g.mu); }

static bool mine(const mp_process *p) { return p->state == P_STARTED && p->owner == g.self; }

static void link_handle(mp_process *p)
{
    p->prev = NULL;
    p->next = g.handles;
    if (g.handles)
        g.handles->prev = p;
    g.handles = p;
}

static void unlink_handle(mp_process *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (g.handles == p)
        g.handles = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void destroy(mp_process *p)
{
    mp__lifeline_drop(p->life_w);
    mp__close(p->pidfd);
    free(p->arg_copy);
    free(p->name);
    free(p->ident);
    free(p);
}

/* Reaps p if it has ended. Returns true once p has ended. With mu held. */
static bool reap_locked(mp_process *p)
{
    if (p->exitcode != MP_EXIT_NONE)
        return true;
    int status, r = mp__pidfd_reap(p->pidfd, &status);
    if (r == 0)
        return false;
    /* ECHILD: someone else reaped it (SIGCHLD ignored, a waitpid(-1)). The
     * status is lost, but it has ended: never report it as running. */
    p->exitcode = r == 1 ? status : MP_EXIT_UNKNOWN;
    mp__lifeline_drop(p->life_w); /* ended: nothing left to take down */
    p->life_w = -1;
    return true;
}

/* ---- the reaper of detached children ---------------------------------- */

static void *reaper_main(void *unused)
{
    (void)unused;
    struct pollfd *fds = NULL;
    size_t cap = 0;
    for (;;) {
        size_t n = 0;
        bool unwatched = false; /* no room to watch them all: look again soon */
        lock();
        for (mp_process *p = g.handles, *next; p; p = next) {
            next = p->next;
            if (!p->detached)
                continue;
            if (reap_locked(p)) {
                unlink_handle(p);
                destroy(p);
                continue;
            }
            if (n + 1 >= cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct pollfd *nf = mp__sys.realloc(fds, ncap * sizeof *nf);
                if (!nf) {
                    unwatched = true;
                    continue;
                }
                fds = nf;
                cap = ncap;
            }
            fds[n++] = (struct pollfd){.fd = p->pidfd, .events = POLLIN};
        }
        if (n == 0 && !unwatched) {
            g.reaper_on = false;
            unlock();
            free(fds);
            return NULL;
        }
        int efd = g.reaper_efd;
        unlock();
        /* Only this thread frees detached handles, so their pidfds stay open
         * while it sleeps. New ones arrive through the eventfd; without one
         * (none could be made), or with some it has no room to watch, it
         * looks for them every REAPER_LOOK_MS. A poll that fails (no memory
         * now) waits as long before it retries. */
        int r = -1;
        if (fds) {
            fds[n] = (struct pollfd){.fd = efd, .events = POLLIN};
            r = mp__sys.poll(fds, n + 1, efd < 0 || unwatched ? REAPER_LOOK_MS : -1);
        }
        if (r > 0 && fds[n].revents) {
            uint64_t v;
            ssize_t rd = mp__sys.read(efd, &v, sizeof v);
            (void)rd;
        } else if (r < 0 && (!fds || errno != EINTR)) {
            nanosleep(&(struct timespec){.tv_nsec = REAPER_LOOK_MS * 1000000L}, NULL);
        }
    }
}

/* With mu held: reaps the detached children that have ended, when no reaper
 * thread watches them (it could not start). The reaper is the only one to
 * free detached handles while it runs: it sleeps on their pidfds. */
static void reap_detached_locked(void)
{
    if (g.reaper_on)
        return;
    for (mp_process *p = g.handles, *next; p; p = next) {
        next = p->next;
        if (p->detached && reap_locked(p)) {
            unlink_handle(p);
            destroy(p);
        }
    }
}

/* With mu held: make sure the reaper watches the detached handles. */
static void reaper_kick(void)
{
    if (g.reaper_efd < 0) /* -1: the reaper then looks now and then instead */
        g.reaper_efd = mp__sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g.reaper_on) {
        if (g.reaper_efd < 0)
            return;
        uint64_t one = 1;
        ssize_t r = mp__sys.write(g.reaper_efd, &one, sizeof one);
        (void)r;
        return;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the reaper takes no signals */
    pthread_t t;
    if (mp__sys.pthread_create(&t, &attr, reaper_main, NULL) == 0)
        g.reaper_on = true;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}

/* ---- exit: terminate the daemons, join the rest ----------------------- */

/* Python's atexit behaviour, run at this process's normal exit and when a
 * child's target returns. Waits on duplicates of the pidfds, so it never
 * touches a handle another thread may free meanwhile. */
static void finish_children(void)
{
    struct child { int fd; bool daemon; } *kids = NULL;
    size_t n = 0, cap = 0;
    lock();
    for (mp_process *p = g.handles; p; p = p->next) {
        if (!mine(p) || reap_locked(p))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct child *nk = mp__sys.realloc(kids, ncap * sizeof *nk);
            if (!nk)
                break;
            kids = nk;
            cap = ncap;
        }
        int fd = mp__sys.fcntl(p->pidfd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
            continue;
        kids[n++] = (struct child){fd, p->daemon};
        if (p->daemon)
            mp__pidfd_signal(fd, SIGTERM);
    }
    unlock();
    if (n == 0) { /* the usual child: nothing to wait for, and no clock to read */
        free(kids);
        return;
    }
    int64_t grace = mp__now_ns() + (int64_t)(DAEMON_GRACE_S * 1e9);
    for (size_t i = 0; i < n; i++) {
        struct pollfd pf = {.fd = kids[i].fd, .events = POLLIN};
        if (kids[i].daemon) {
            int64_t left = grace - mp__now_ns();
            int ms = left > 0 ? (int)(left / 1000000) + 1 : 0;
            while (mp__sys.poll(&pf, 1, ms) < 0 && errno == EINTR)
                ;
            if (!pf.revents)
                mp__pidfd_signal(kids[i].fd, SIGKILL);
        }
        while (mp__sys.poll(&pf, 1, -1) < 0 && errno == EINTR)
            ;
        mp__close(kids[i].fd);
    }
    free(kids);
    lock();
    for (mp_process *p = g.handles; p; p = p->next)
        if (mine(p))
            reap_locked(p);
    unlock();
}

/* ---- fork hygiene ------------------------------------------------------ */

static void atfork_prepare(void) { lock(); }
static void atfork_parent(void) { unlock(); }

/* In any child (ours or a plain fork): the handles are the parent's. Close
 * their pidfds and forget them; the memory stays for whoever holds it. */
static void atfork_child(void)
{
    for (mp_process *p = g.handles; p; p = p->next) {
        mp__close(p->pidfd);
        p->pidfd = -1;
        p->life_w = -1; /* closed by the lifeline's own fork handler */
    }
    g.handles = NULL;
    g.self = getpid();
    g.reaper_on = false;
    mp__close(g.reaper_efd);
    g.reaper_efd = -1;
    unlock(); /* taken in atfork_prepare by this thread; re-initialising it locked is UB */
    if (starting) { /* our own start: the forking thread, now the only one, holds it */
        starting = false;
        pthread_mutex_unlock(&g.start_mu);
    } else { /* another thread may have held it */
        g.start_mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    }
}

__attribute__((constructor)) static void process_init(void)
{
    g.self = getpid();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    atexit(finish_children);
}

/* ---- the API ------------------------------------------------------------ */

int mp_process_new(mp_process **out, mp_target fn, void *arg, const mp_process_opts *opts)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    mp_process_opts o = opts ? *opts : (mp_process_opts){0};
    if (!fn || (o.arg_size > 0 && !arg))
        return MP_EINVAL;
    mp_process *p = mp__sys.calloc(1, sizeof *p);
    if (!p)
        return MP_ENOMEM;
    p->fn = fn;
    p->arg = arg;
    p->daemon = o.daemon;
    p->pidfd = -1;
    p->life_w = -1;
    p->exitcode = MP_EXIT_NONE;
    lock();
    unsigned n = ++g.counter;
    unlock();
    if (asprintf(&p->ident, "%s%s%u", g.ident, g.ident[0] ? ":" : "", n) < 0) {
        p->ident = NULL;
        goto nomem;
    }
    if (o.name)
        p->name = strdup(o.name);
    else if (asprintf(&p->name, "Process-%s", p->ident) < 0)
        p->name = NULL;
    if (!p->name)
        goto nomem;
    if (o.arg_size > 0) {
        if (!(p->arg_copy = mp__sys.malloc(o.arg_size)))
            goto nomem;
        memcpy(p->arg_copy, arg, o.arg_size);
        p->arg = p->arg_copy;
    }
    *out = p;
    return 0;
nomem:
    destroy(p);
    return MP_ENOMEM;
}

/* _exit by a pointer bound at load: a call through the PLT would be bound
 * lazily, and afresh in every child (the parent never calls it), costing
 * each start a symbol lookup and its page faults. */
static void (*volatile leave_now)(int) = _exit; /* volatile: not folded into a direct call */

/* The child's side of start. Never returns. */
__attribute__((noreturn)) static void child_main(mp_process *p, int life_fd, pid_t parent,
                                                 const sigset_t *mask)
{
    g.name = p->name;
    g.ident = p->ident;
    g.daemon = p->daemon;
    g.parent = parent;
    g.counter = 0;
    mp__lifeline_await(life_fd); /* released once the parent holds us */
    mp__fork_restore(mask);
    int code = p->fn(p->arg);
    finish_children();
    mp__arena_flush_thread();
    fflush(NULL);
    leave_now(code);
    __builtin_unreachable();
}

/* Waits for a child that start gave up on: its lifeline is cut before it
 * was armed, so it exits by itself, having run nothing. A blocking waitid,
 * not a poll: it cannot fail for want of memory and leave a zombie. The
 * pid is still our unreaped child (so no other process can have it),
 * unless someone else reaped it: then ECHILD, and nothing is left. */
static void reap_abandoned(pid_t pid, int pidfd)
{
    siginfo_t si;
    while (mp__sys.waitid(P_PID, (id_t)pid, &si, WEXITED) < 0 && errno == EINTR)
        ;
    mp__close(pidfd);
}

/* Forks p's child and hands it over to p. 0, or a negative code: then no
 * child is left, and none ran the target. With start_mu held. */
static int start_locked(mp_process *p)
{
    mp__lifeline life;
    int err = mp__lifeline_new(&life);
    if (err)
        return err;
    pid_t parent = g.self;
    sigset_t mask;
    pid_t pid = mp__fork(&mask);
    if (pid == 0)
        child_main(p, life.r, parent, &mask);
    if (pid < 0) {
        mp__close(life.r);
        mp__lifeline_drop(life.w);
        return pid == -ENOMEM ? MP_ENOMEM : pid;
    }
    mp__fork_restore(&mask);
    MP__HOOK("process.forked");
    /* The pidfd is opened and linked in one section under mu: a plain fork
     * in another thread waits for mu (atfork_prepare), so its child finds
     * the pidfd in the list and closes it. */
    lock();
    int fd = mp__pidfd_open(pid);
    if (fd >= 0) {
        p->pid = pid;
        p->pidfd = fd;
        p->life_w = life.w;
        p->owner = g.self;
        link_handle(p);
    }
    unlock();
    err = fd < 0 ? fd : mp__lifeline_bind(&life, pid);
    if (!err) {
        lock();
        p->state = P_STARTED;
        unlock();
        return 0;
    }
    mp__close(life.r);
    if (fd >= 0) {
        lock();
        unlink_handle(p);
        p->pidfd = p->life_w = -1;
        unlock();
    }
    mp__lifeline_drop(life.w); /* the child sees it cut, and leaves */
    reap_abandoned(pid, fd);
    return err;
}

int mp_process_start(mp_process *p)
{
    if (!p)
        return MP_EINVAL;
    lock();
    if (p->state != P_NEW || g.daemon) {
        unlock();
        return MP_ESTATE;
    }
    p->state = P_STARTING;
    unlock();

    pthread_mutex_lock(&g.start_mu);
    starting = true;
    int err = start_locked(p);
    starting = false;
    pthread_mutex_unlock(&g.start_mu);

    lock();
    if (err)
        p->state = P_NEW;
    reap_detached_locked();
    unlock();
    return err;
}

int mp_process_join(mp_process *p, double timeout)
{
    int64_t deadline;
    if (!p || mp__deadline(timeout, &deadline) < 0)
        return MP_EINVAL;
    lock();
    bool ok = mine(p);
    bool done = ok && p->exitcode != MP_EXIT_NONE;
    unlock();
    if (!ok)
        return MP_ESTATE;
    if (done)
        return 0;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    while (r == 0) {
        /* The pidfd turns readable once the child has ended, reaped or not:
         * wait first, then reap, so a running child costs no extra call. */
        r = mp__wait_fd(&w, p->pidfd, deadline);
        if (r < 0)
            break;
        lock();
        done = reap_locked(p);
        unlock();
        if (done) {
            r = 0;
            break;
        }
        r = r == 1 && deadline != MP__NEVER && mp__now_ns() >= deadline ? MP_ETIMEDOUT : 0;
    }
    mp__wait_end(&w);
    return r;
}

int mp_process_exitcode(mp_process *p)
{
    if (!p)
        return MP_EXIT_NONE;
    lock();
    if (mine(p))
        reap_locked(p);
    int code = p->exitcode;
    unlock();
    return code;
}

bool mp_process_is_alive(mp_process *p)
{
    if (!p)
        return false;
    lock();
    bool alive = mine(p) && !reap_locked(p);
    unlock();
    return alive;
}

pid_t mp_process_pid(const mp_process *p) { return p && p->state == P_STARTED ? p->pid : 0; }

const char *mp_process_name(const mp_process *p) { return p ? p->name : NULL; }

int mp_process_sentinel(const mp_process *p)
{
    if (!p)
        return MP_EINVAL;
    return p->state == P_STARTED && p->pidfd >= 0 ? p->pidfd : MP_ESTATE;
}

static int send_signal(mp_process *p, int sig)
{
    if (!p)
        return MP_EINVAL;
    int r = 0;
    lock();
    if (!mine(p))
        r = MP_ESTATE;
    else if (p->exitcode == MP_EXIT_NONE) {
        r = mp__pidfd_signal(p->pidfd, sig);
        if (r == -ESRCH)
            r = 0; /* it has just ended */
    }
    unlock();
    return r;
}

int mp_process_terminate(mp_process *p) { return send_signal(p, SIGTERM); }
int mp_process_kill(mp_process *p) { return send_signal(p, SIGKILL); }

void mp_process_free(mp_process *p)
{
    if (!p)
        return;
    lock();
    if (p->state == P_STARTED && p->pidfd >= 0) {
        if (!reap_locked(p)) {
            p->detached = true;
            reaper_kick();
            unlock();
            return;
        }
        unlink_handle(p);
    }
    unlock();
    destroy(p);
}

int mp_active_children(mp_process **out, size_t cap)
{
    if (!out && cap > 0)
        return MP_EINVAL;
    int n = 0;
    lock();
    reap_detached_locked();
    for (mp_process *p = g.handles; p; p = p->next) {
        if (p->detached || !mine(p) || reap_locked(p))
            continue;
        if ((size_t)n < cap)
            out[n] = p;
        n++;
    }
    unlock();
    return n;
}

const char *mp_current_name(void) { return g.name ? g.name : "MainProcess"; }

pid_t mp_parent_pid(void) { return g.parent ? g.parent : getppid(); }

int mp_cpu_count(void) { return mp__cpu_online(); }

int mp_process_cpu_count(void) { return mp__cpu_usable(); }
