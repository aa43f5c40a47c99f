/* Processes: DESIGN section 4. */
#include "harness.h"

#include "os/os.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- targets ------------------------------------------------------------ */

static int ret_int(void *arg) { return *(int *)arg; }

/* Says "ready", then waits for an order and returns it as the exit code. */
static int wait_for_order(void *arg)
{
    (void)arg;
    t_send(&to_parent, getpid());
    return t_recv(&to_child, 30);
}

static int sleep_forever(void *arg)
{
    (void)arg;
    t_send(&to_parent, getpid());
    for (;;)
        pause();
    return 0;
}


/* ---- basics ------------------------------------------------------------- */

TEST(exitcode_of_target)
{
    int v = 7;
    mp_process *p = t_start(ret_int, &v, NULL);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 7);
    ASSERT_TRUE(!mp_process_is_alive(p));
    ASSERT_GT(mp_process_pid(p), 0);
    mp_process_free(p);
}

TEST(arg_is_copied_with_arg_size)
{
    int v = 3;
    mp_process *p;
    ASSERT_OK(mp_process_new(&p, ret_int, &v, &(mp_process_opts){.arg_size = sizeof v}));
    v = 99; /* the child must see the 3 copied at new */
    ASSERT_OK(mp_process_start(p));
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 3);
    mp_process_free(p);
}

TEST(killed_child_reports_minus_signal)
{
    chans_open();
    mp_process *p = t_start(sleep_forever, NULL, NULL);
    t_recv(&to_parent, 10);
    ASSERT_TRUE(mp_process_is_alive(p));
    ASSERT_EQ(mp_process_exitcode(p), MP_EXIT_NONE);
    ASSERT_OK(mp_process_kill(p));
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), -9);
    ASSERT_OK(mp_process_kill(p)); /* already ended: nothing to do */
    mp_process_free(p);

    p = t_start(sleep_forever, NULL, NULL);
    t_recv(&to_parent, 10);
    ASSERT_OK(mp_process_terminate(p));
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), -SIGTERM);
    ASSERT_OK(mp_process_terminate(p));
    mp_process_free(p);
    chans_close();
}

TEST(join_timeout_returns_on_time)
{
    chans_open();
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    double t0 = t_now();
    ASSERT_ERR(mp_process_join(p, 0.2), MP_ETIMEDOUT);
    double took = t_now() - t0;
    ASSERT_GE(took * 1000, 199);
    ASSERT_LT(took, 0.2 + 2.0 * t_scale()); /* generous: the machine is shared */
    ASSERT_ERR(mp_process_join(p, 0), MP_ETIMEDOUT);
    ASSERT_TRUE(mp_process_is_alive(p));
    t_send(&to_child, 5);
    ASSERT_OK(mp_process_join(p, MP_FOREVER));
    ASSERT_EQ(mp_process_exitcode(p), 5);
    ASSERT_OK(mp_process_join(p, 0)); /* joining again is fine */
    mp_process_free(p);
    chans_close();
}

TEST(sentinel_readable_at_exit)
{
    chans_open();
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    int fd = mp_process_sentinel(p);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    ASSERT_EQ(poll(&pf, 1, 0), 0);
    t_send(&to_child, 0);
    ASSERT_EQ(poll(&pf, 1, (int)(10000 * t_scale())), 1);
    ASSERT_TRUE(pf.revents & POLLIN);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(poll(&pf, 1, 0), 1); /* and stays readable after the reap */
    mp_process_free(p);
    chans_close();
}

/* ---- names, pids, nesting ----------------------------------------------- */

struct ids { pid_t parent; char name[64]; };

static int report_ids(void *arg)
{
    (void)arg;
    t_send(&to_parent, (int)mp_parent_pid());
    t_send(&to_parent, (int)getpid());
    const char *n = mp_current_name();
    t_send(&to_parent, (int)strlen(n));
    for (const char *c = n; *c; c++)
        t_send(&to_parent, *c);
    return 0;
}

static void recv_name(char *buf, size_t cap)
{
    int len = t_recv(&to_parent, 10);
    ASSERT_LT(len, (int)cap);
    for (int i = 0; i < len; i++)
        buf[i] = (char)t_recv(&to_parent, 10);
    buf[len] = '\0';
}

TEST(names_and_parent_pid)
{
    chans_open();
    ASSERT_STR_EQ(mp_current_name(), "MainProcess");
    ASSERT_EQ(mp_parent_pid(), getppid());
    mp_process *a, *b;
    ASSERT_OK(mp_process_new(&a, report_ids, NULL, NULL));
    ASSERT_OK(mp_process_new(&b, report_ids, NULL, &(mp_process_opts){.name = "worker"}));
    ASSERT_STR_EQ(mp_process_name(b), "worker");
    const char *an = mp_process_name(a);
    ASSERT_TRUE(strncmp(an, "Process-", 8) == 0);
    int na = atoi(an + 8);
    ASSERT_GT(na, 0);

    ASSERT_OK(mp_process_start(a));
    ASSERT_EQ(t_recv(&to_parent, 10), getpid());
    ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(a));
    char name[64];
    recv_name(name, sizeof name);
    ASSERT_STR_EQ(name, an);
    ASSERT_OK(mp_process_start(b));
    ASSERT_EQ(t_recv(&to_parent, 10), getpid());
    ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(b));
    recv_name(name, sizeof name);
    ASSERT_STR_EQ(name, "worker");
    ASSERT_OK(mp_process_join(a, 10));
    ASSERT_OK(mp_process_join(b, 10));
    mp_process_free(a);
    mp_process_free(b);

    mp_process *c;
    ASSERT_OK(mp_process_new(&c, report_ids, NULL, NULL));
    ASSERT_EQ(atoi(mp_process_name(c) + 8), na + 2); /* Process-N counts up */
    mp_process_free(c);
    chans_close();
}

/* A child starts a grandchild: its name nests ("Process-N:1"), its parent
 * pid is the child's, and the child collects its exit code. */
static int start_grandchild(void *arg)
{
    (void)arg;
    mp_process *g;
    if (mp_process_new(&g, report_ids, NULL, NULL) || mp_process_start(g))
        return 100;
    if (mp_process_join(g, 10) != 0)
        return 101;
    int code = mp_process_exitcode(g);
    mp_process_free(g);
    return code == 0 ? 42 : 102;
}

TEST(nested_processes)
{
    chans_open();
    mp_process *p = t_start(start_grandchild, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), mp_process_pid(p)); /* grandchild's parent */
    t_recv(&to_parent, 10);
    char name[64], want[80];
    recv_name(name, sizeof name);
    snprintf(want, sizeof want, "%s:1", mp_process_name(p));
    ASSERT_STR_EQ(name, want);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 42);
    mp_process_free(p);
    chans_close();
}

/* In the child, the parent's handles are not its children. */
static mp_process *sibling;

static int poke_sibling(void *arg)
{
    (void)arg;
    if (mp_process_join(sibling, 0) != MP_ESTATE)
        return 1;
    if (mp_process_is_alive(sibling))
        return 2;
    if (mp_process_kill(sibling) != MP_ESTATE)
        return 3;
    if (mp_process_sentinel(sibling) != MP_ESTATE)
        return 4;
    if (mp_active_children(NULL, 0) != 0)
        return 5;
    return 0;
}

TEST(handles_belong_to_their_parent)
{
    chans_open();
    sibling = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    mp_process *p = t_start(poke_sibling, NULL, NULL);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 0);
    ASSERT_TRUE(mp_process_is_alive(sibling));
    t_send(&to_child, 0);
    ASSERT_OK(mp_process_join(sibling, 10));
    mp_process_free(p);
    mp_process_free(sibling);
    chans_close();
}

/* ---- daemons and exit ----------------------------------------------------- */

static int daemon_starts_child(void *arg)
{
    (void)arg;
    int v = 0;
    mp_process *c;
    if (mp_process_new(&c, ret_int, &v, NULL))
        return 1;
    int r = mp_process_start(c);
    mp_process_free(c);
    return r == MP_ESTATE ? 0 : 2;
}

TEST(daemon_may_not_start_children)
{
    mp_process *p = t_start(daemon_starts_child, NULL, &(mp_process_opts){.daemon = true});
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 0);
    mp_process_free(p);
}

/* The middle process: starts a daemon and a non-daemon (each reports its
 * pid), then, when told, leaves by returning (arg 0) or by exit() (arg 1).
 * Either way mproc terminates the daemon and waits for the non-daemon. */
static t_chan to_middle;

static int middle(void *arg)
{
    mp_process *d, *n;
    if (mp_process_new(&d, sleep_forever, NULL, &(mp_process_opts){.daemon = true}) ||
        mp_process_new(&n, wait_for_order, NULL, NULL) || mp_process_start(d) ||
        mp_process_start(n))
        return 1;
    /* sleep_forever and wait_for_order each report their pid themselves */
    t_recv(&to_middle, 30);
    if (*(int *)arg)
        exit(7);
    return 7;
}

static void exit_semantics(int use_exit)
{
    chans_open();
    to_middle = t_chan_new();
    mp_process *m = t_start(middle, &use_exit, &(mp_process_opts){.arg_size = sizeof use_exit});
    pid_t a = t_recv(&to_parent, 10), b = t_recv(&to_parent, 10);
    t_send(&to_middle, 0);
    /* The daemon ends (SIGTERM) while the middle still waits for the other. */
    struct pollfd pf[2] = {{.fd = (int)syscall(SYS_pidfd_open, a, 0), .events = POLLIN},
                           {.fd = (int)syscall(SYS_pidfd_open, b, 0), .events = POLLIN}};
    ASSERT_GE(pf[0].fd, 0);
    ASSERT_GE(pf[1].fd, 0);
    ASSERT_EQ(poll(pf, 2, (int)(10000 * t_scale())), 1); /* exactly one ended */
    pid_t non_daemon = pf[0].revents ? b : a;
    close(pf[0].fd);
    close(pf[1].fd);
    ASSERT_TRUE(t_pid_alive(non_daemon));
    ASSERT_ERR(mp_process_join(m, 0.1), MP_ETIMEDOUT); /* still joining it */
    t_send(&to_child, 0);
    ASSERT_OK(mp_process_join(m, 10));
    ASSERT_EQ(mp_process_exitcode(m), 7);
    ASSERT_TRUE(t_wait_gone(non_daemon, 10));
    mp_process_free(m);
    t_chan_close(&to_middle);
    chans_close();
}

TEST(exit_terminates_daemons_joins_others_on_return) { exit_semantics(0); }
TEST(exit_terminates_daemons_joins_others_on_exit) { exit_semantics(1); }

/* ---- the family dies together ------------------------------------------- */

static void *thread_starts(void *arg)
{
    mp_process *p;
    if (mp_process_new(&p, sleep_forever, NULL, NULL) == 0 && mp_process_start(p) == 0)
        *(mp_process **)arg = p;
    return NULL;
}

/* Starts a daemon, a non-daemon, and one from a thread that then exits;
 * each reports its pid. Then waits to be killed. */
static int family_head(void *arg)
{
    (void)arg;
    mp_process *d, *n, *t = NULL;
    if (mp_process_new(&d, sleep_forever, NULL, &(mp_process_opts){.daemon = true}) ||
        mp_process_new(&n, sleep_forever, NULL, NULL) || mp_process_start(d) ||
        mp_process_start(n))
        return 1;
    pthread_t th;
    if (pthread_create(&th, NULL, thread_starts, &t) || pthread_join(th, NULL) || !t)
        return 2;
    t_send(&to_parent, 0); /* all three started */
    for (;;)
        pause();
    return 0;
}

TEST(sigkilled_parent_takes_its_children)
{
    chans_open();
    mp_process *h = t_start(family_head, NULL, NULL);
    /* Three pids and the head's 0, in whatever order they come. */
    pid_t kids[3];
    int nk = 0;
    for (int i = 0; i < 4; i++) {
        int v = t_recv(&to_parent, 10);
        if (v != 0) {
            ASSERT_LT(nk, 3);
            kids[nk++] = v;
        }
    }
    ASSERT_EQ(nk, 3);
    for (int i = 0; i < 3; i++)
        ASSERT_TRUE(t_pid_alive(kids[i]));
    ASSERT_OK(mp_process_kill(h));
    ASSERT_OK(mp_process_join(h, 10));
    /* Orphans are reparented to this test (a subreaper): they must end
     * within 2 s of their parent's death, and t_wait_gone reaps them. */
    for (int i = 0; i < 3; i++)
        ASSERT_TRUE(t_wait_gone(kids[i], 2.0));
    mp_process_free(h);
    chans_close();
}

TEST(child_of_exited_thread_keeps_running)
{
    chans_open();
    mp_process *p = NULL;
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, thread_starts, &p), 0);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    ASSERT_TRUE(p != NULL);
    pid_t pid = t_recv(&to_parent, 10);
    /* PR_SET_PDEATHSIG would have fired at the thread's exit. */
    ASSERT_TRUE(!t_wait_gone(pid, 0.3));
    ASSERT_TRUE(mp_process_is_alive(p));
    ASSERT_OK(mp_process_kill(p));
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), -SIGKILL);
    mp_process_free(p);
    chans_close();
}

/* ---- no zombies, no leaks ---------------------------------------------- */

TEST(many_processes_leave_no_zombie_and_no_fd)
{
    /* One start first: a wait slot's eventfd is made once and kept (each
     * child's lifeline pipe goes when it is reaped); after that the count
     * must not move. */
    int zero = 0;
    mp_process *w = t_start(ret_int, &zero, NULL);
    ASSERT_OK(mp_process_join(w, 10));
    mp_process_free(w);
    int before = t_count_fds();
    for (int i = 0; i < 200; i++) {
        int v = i & 0x7f;
        mp_process *p = t_start(ret_int, &v, NULL);
        ASSERT_OK(mp_process_join(p, 10));
        ASSERT_EQ(mp_process_exitcode(p), v);
        mp_process_free(p);
    }
    pid_t kids[4];
    ASSERT_EQ(t_children(kids, 4), 0);
    ASSERT_EQ(t_count_fds(), before);
}

TEST(freed_running_process_is_reaped)
{
    chans_open();
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    pid_t pid = t_recv(&to_parent, 10);
    mp_process_free(p); /* detached, still running */
    ASSERT_TRUE(t_pid_alive(pid));
    t_send(&to_child, 0);
    /* It must not stay a zombie: within a second it is no longer our child. */
    double end = t_now() + 2.0 * t_scale();
    pid_t kids[4];
    int n;
    while ((n = t_children(kids, 4)) > 0 && t_now() < end)
        poll(NULL, 0, 10);
    ASSERT_EQ(n, 0);
    chans_close();
}

/* Every fd opened since the case began, in the parent and in the child, is
 * close-on-exec (the ones this test inherited are not ours to judge). */
static bool inherited[1024];

static void note_inherited(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) < 1024)
            inherited[atoi(e->d_name)] = true;
    if (d)
        closedir(d);
}

static bool all_cloexec(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return false;
    bool ok = true;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == dirfd(d) || (fd < 1024 && inherited[fd]))
            continue;
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0 && !(fl & FD_CLOEXEC)) {
            fprintf(stderr, "fd %d is not close-on-exec\n", fd);
            ok = false;
        }
    }
    closedir(d);
    return ok;
}

static int check_cloexec(void *arg)
{
    (void)arg;
    return all_cloexec() ? 0 : 1;
}

TEST(every_fd_is_cloexec)
{
    note_inherited();
    chans_open();
    mp_process *held = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    mp_process *p = t_start(check_cloexec, NULL, NULL);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 0);
    ASSERT_TRUE(all_cloexec());
    t_send(&to_child, 0);
    ASSERT_OK(mp_process_join(held, 10));
    mp_process_free(held);
    mp_process_free(p);
    chans_close();
}

/* ---- stdio and atexit --------------------------------------------------- */

static int print_child(void *arg)
{
    (void)arg;
    printf("child\n"); /* buffered: the exit path must flush it */
    return 0;
}

TEST(stdio_flushed_before_fork_and_at_child_exit)
{
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
    int saved = dup(1);
    ASSERT_GE(saved, 0);
    fflush(stdout);
    dup2(fds[1], 1);
    setvbuf(stdout, NULL, _IOFBF, 4096);
    printf("parent\n"); /* sits in the buffer at fork time */
    mp_process *p = t_start(print_child, NULL, NULL);
    ASSERT_OK(mp_process_join(p, 10));
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(fds[1]);
    char buf[256] = {0};
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    ASSERT_GT(n, 0);
    close(fds[0]);
    ASSERT_STR_EQ(buf, "parent\nchild\n");
    mp_process_free(p);
}

static t_chan atexit_chan;
static void parent_atexit(void) { t_send(&atexit_chan, 1); }

static int plain_return(void *arg)
{
    (void)arg;
    return 0;
}

TEST(parent_atexit_handlers_do_not_run_in_child)
{
    atexit_chan = t_chan_new();
    atexit(parent_atexit);
    mp_process *p = t_start(plain_return, NULL, NULL);
    ASSERT_OK(mp_process_join(p, 10));
    int v;
    ASSERT_TRUE(!t_try_recv(&atexit_chan, 0.05, &v));
    mp_process_free(p);
}

/* ---- setup failures -------------------------------------------------- */

static int failing_fcntl(int fd, int cmd, long arg)
{
    if (cmd == F_SETSIG) {
        errno = ENOLCK;
        return -1;
    }
    return fcntl(fd, cmd, arg);
}

TEST(setup_failure_comes_back_from_start)
{
    int v = 0;
    mp_process *p;
    ASSERT_OK(mp_process_new(&p, ret_int, &v, NULL));
    mp__sys.fcntl = failing_fcntl; /* arming the child's lifeline fails */
    ASSERT_ERR(mp_process_start(p), -ENOLCK);
    mp__sys_reset();
    pid_t kids[4];
    ASSERT_EQ(t_children(kids, 4), 0); /* cut loose, it left and was reaped: it never ran */
    ASSERT_EQ(mp_process_pid(p), 0);
    ASSERT_ERR(mp_process_join(p, 0), MP_ESTATE);
    ASSERT_OK(mp_process_start(p)); /* it never started: it may start now */
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 0);
    mp_process_free(p);
}

static pid_t failing_fork(void)
{
    errno = EAGAIN;
    return -1;
}

static int failing_pidfd_open(pid_t pid, unsigned flags)
{
    (void)pid;
    (void)flags;
    errno = EMFILE;
    return -1;
}

static int failing_pipe2(int fds[2], int flags)
{
    (void)fds;
    (void)flags;
    errno = ENFILE;
    return -1;
}

TEST(fork_pidfd_and_pipe_failures_are_reported)
{
    int v = 0;
    mp_process *p;
    ASSERT_OK(mp_process_new(&p, ret_int, &v, NULL));
    int before = t_count_fds();
    mp__sys.pipe2 = failing_pipe2; /* the child's lifeline pipe */
    int r = mp_process_start(p);
    mp__sys_reset();
    ASSERT_ERR(r, -ENFILE);
    mp__sys.fork = failing_fork;
    ASSERT_ERR(mp_process_start(p), -EAGAIN);
    mp__sys_reset();
    mp__sys.pidfd_open = failing_pidfd_open;
    ASSERT_ERR(mp_process_start(p), -EMFILE);
    mp__sys_reset();
    pid_t kids[4];
    ASSERT_EQ(t_children(kids, 4), 0); /* the child it could not track is gone */
    ASSERT_OK(mp_process_start(p));
    ASSERT_OK(mp_process_join(p, 10));
    mp_process_free(p);
    ASSERT_LE(t_count_fds(), before + 1); /* a wait slot's eventfd, kept */
}

/* ---- bad input ------------------------------------------------------ */

TEST(bad_input)
{
    int v = 0;
    mp_process *p = (mp_process *)1;
    ASSERT_ERR(mp_process_new(NULL, ret_int, NULL, NULL), MP_EINVAL);
    ASSERT_ERR(mp_process_new(&p, NULL, NULL, NULL), MP_EINVAL);
    ASSERT_TRUE(p == NULL);
    ASSERT_ERR(mp_process_new(&p, ret_int, NULL, &(mp_process_opts){.arg_size = 4}), MP_EINVAL);
    ASSERT_ERR(mp_process_start(NULL), MP_EINVAL);
    ASSERT_ERR(mp_process_join(NULL, 1), MP_EINVAL);
    ASSERT_ERR(mp_process_terminate(NULL), MP_EINVAL);
    ASSERT_ERR(mp_process_kill(NULL), MP_EINVAL);
    ASSERT_ERR(mp_process_sentinel(NULL), MP_EINVAL);
    ASSERT_EQ(mp_process_exitcode(NULL), MP_EXIT_NONE);
    ASSERT_TRUE(!mp_process_is_alive(NULL));
    ASSERT_EQ(mp_process_pid(NULL), 0);
    ASSERT_TRUE(mp_process_name(NULL) == NULL);
    ASSERT_ERR(mp_active_children(NULL, 3), MP_EINVAL);
    mp_process_free(NULL);

    ASSERT_OK(mp_process_new(&p, ret_int, &v, NULL));
    ASSERT_ERR(mp_process_join(p, 1), MP_ESTATE); /* before start */
    ASSERT_ERR(mp_process_terminate(p), MP_ESTATE);
    ASSERT_ERR(mp_process_kill(p), MP_ESTATE);
    ASSERT_ERR(mp_process_sentinel(p), MP_ESTATE);
    ASSERT_EQ(mp_process_exitcode(p), MP_EXIT_NONE);
    ASSERT_EQ(mp_process_pid(p), 0);
    ASSERT_TRUE(!mp_process_is_alive(p));
    ASSERT_OK(mp_process_start(p));
    ASSERT_ERR(mp_process_start(p), MP_ESTATE); /* twice */
    ASSERT_ERR(mp_process_join(p, 0.0 / 0.0), MP_EINVAL);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_ERR(mp_process_start(p), MP_ESTATE); /* after the end too */
    mp_process_free(p);
    mp_process_free(NULL);
}

/* ---- interrupts ----------------------------------------------------------- */

static void *interrupt_later(void *arg)
{
    t_chan *go = arg;
    t_recv(go, 10);
    mp_interrupt();
    return NULL;
}

TEST(interrupt_wakes_a_blocked_join)
{
    chans_open();
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    t_chan go = t_chan_new();
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, interrupt_later, &go), 0);
    t_send(&go, 1);
    ASSERT_ERR(mp_process_join(p, MP_FOREVER), MP_EINTR);
    pthread_join(th, NULL);
    /* consumed: the next join times out normally */
    ASSERT_ERR(mp_process_join(p, 0.05), MP_ETIMEDOUT);
    /* pending: nobody blocked, the next blocking call gets it at once */
    mp_interrupt();
    double t0 = t_now();
    ASSERT_ERR(mp_process_join(p, 5), MP_EINTR);
    ASSERT_LT(t_now() - t0, 1.0 * t_scale());
    ASSERT_ERR(mp_process_join(p, 0), MP_ETIMEDOUT);
    t_send(&to_child, 0);
    ASSERT_OK(mp_process_join(p, 10));
    mp_process_free(p);
    t_chan_close(&go);
    chans_close();
}

static void on_usr1(int sig)
{
    (void)sig;
    mp_interrupt();
}

struct joiner { mp_process *p; int result; t_chan ready; };

static void *join_forever(void *arg)
{
    struct joiner *j = arg;
    t_send(&j->ready, 1);
    j->result = mp_process_join(j->p, MP_FOREVER);
    return NULL;
}

TEST(interrupt_from_signal_handler_wakes_every_waiter)
{
    chans_open();
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    mp_process *p = t_start(wait_for_order, NULL, NULL);
    t_recv(&to_parent, 10);
    enum { N = 3 };
    struct joiner j[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        j[i] = (struct joiner){.p = p, .result = 1, .ready = t_chan_new()};
        ASSERT_EQ(pthread_create(&th[i], NULL, join_forever, &j[i]), 0);
        t_recv(&j[i].ready, 10);
    }
    /* the threads said they are about to block; give them time to get there */
    ASSERT_ERR(mp_process_join(p, 0.1), MP_ETIMEDOUT);
    raise(SIGUSR1);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ASSERT_ERR(j[i].result, MP_EINTR);
        t_chan_close(&j[i].ready);
    }
    signal(SIGUSR1, SIG_DFL);
    t_send(&to_child, 0);
    ASSERT_OK(mp_process_join(p, 10));
    mp_process_free(p);
    chans_close();
}

/* ---- active children, threads, CPUs ---------------------------------- */

TEST(active_children)
{
    chans_open();
    ASSERT_EQ(mp_active_children(NULL, 0), 0);
    mp_process *p[3];
    for (int i = 0; i < 3; i++) {
        p[i] = t_start(wait_for_order, NULL, NULL);
        t_recv(&to_parent, 10);
    }
    mp_process *out[3] = {0};
    ASSERT_EQ(mp_active_children(out, 3), 3);
    for (int i = 0; i < 3; i++)
        ASSERT_TRUE(out[i] == p[0] || out[i] == p[1] || out[i] == p[2]);
    ASSERT_EQ(mp_active_children(out, 1), 3); /* fills one, counts all */
    ASSERT_OK(mp_process_kill(p[1]));
    int fd = mp_process_sentinel(p[1]);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    ASSERT_EQ(poll(&pf, 1, (int)(10000 * t_scale())), 1);
    ASSERT_EQ(mp_active_children(out, 3), 2); /* and it reaped p[1] */
    pid_t kids[8];
    ASSERT_EQ(t_children(kids, 8), 2);
    ASSERT_EQ(mp_process_exitcode(p[1]), -SIGKILL);
    for (int i = 0; i < 3; i++)
        if (i != 1)
            t_send(&to_child, 0);
    for (int i = 0; i < 3; i++) {
        ASSERT_OK(mp_process_join(p[i], 10));
        mp_process_free(p[i]);
    }
    ASSERT_EQ(mp_active_children(NULL, 0), 0);
    chans_close();
}

static void *start_join_many(void *arg)
{
    int *failures = arg;
    for (int i = 0; i < 20; i++) {
        int v = i;
        mp_process *p;
        if (mp_process_new(&p, ret_int, &v, &(mp_process_opts){.arg_size = sizeof v}) ||
            mp_process_start(p) || mp_process_join(p, 10) || mp_process_exitcode(p) != i)
            (*failures)++;
        mp_process_free(p);
    }
    return NULL;
}

TEST(threads_start_and_join_concurrently)
{
    enum { T = 4 };
    pthread_t th[T];
    int failures[T] = {0};
    for (int i = 0; i < T; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, start_join_many, &failures[i]), 0);
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(failures[i], 0);
    }
}

static int report_cpus(void *arg)
{
    (void)arg;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0)
        return 2;
    return mp_process_cpu_count();
}

TEST(cpu_counts)
{
    int n = mp_cpu_count();
    ASSERT_GE(n, 1);
    ASSERT_EQ(n, sysconf(_SC_NPROCESSORS_ONLN));
    cpu_set_t set;
    ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
    int usable = mp_process_cpu_count();
    ASSERT_GE(usable, 1);
    ASSERT_LE(usable, CPU_COUNT(&set));
    mp_process *p = t_start(report_cpus, NULL, NULL); /* read live: affinity of 1 */
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), 1);
    mp_process_free(p);
}

/* ---- a status lost to someone else's reaping ----------------------------- */

static int ret_3(void *arg)
{
    (void)arg;
    return 3;
}

TEST(join_returns_when_sigchld_is_ignored)
{
    /* The kernel reaps at once: waitid finds no child. Join must still
     * return (Python's hangs), and the process reads as ended. */
    signal(SIGCHLD, SIG_IGN);
    mp_process *p = t_start(ret_3, NULL, NULL);
    ASSERT_OK(mp_process_join(p, 10));
    ASSERT_EQ(mp_process_exitcode(p), MP_EXIT_UNKNOWN);
    ASSERT_TRUE(!mp_process_is_alive(p));
    mp_process_free(p);
    /* A freed running process under SIGCHLD ignored: once it ends, the
     * reaper must not spin on its pidfd. Our own CPU time over an idle
     * window tells (a spin burns all of it), whatever the machine's load. */
    chans_open();
    p = t_start(wait_for_order, NULL, NULL);
    pid_t pid = t_recv(&to_parent, 10);
    mp_process_free(p);
    t_send(&to_child, 0);
    ASSERT_TRUE(t_wait_gone(pid, 10));
    struct timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    poll(NULL, 0, 300);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    double cpu = (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) * 1e-9;
    ASSERT_LT(cpu * 1000, 150);
    ASSERT_EQ(mp_active_children(NULL, 0), 0);
    signal(SIGCHLD, SIG_DFL);
    chans_close();
}

/* ---- start never lies, a failed start never runs the target ------------- */

/* Counts the runs of the target, in the family's shared memory. */
static _Atomic int *runs;

static int count_run(void *arg)
{
    (void)arg;
    atomic_fetch_add(runs, 1);
    return 0;
}

static int run_count(void) { return atomic_load(runs); }

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Only widens a race window (a child released too early would run and be
 * reaped by the kernel meanwhile); nothing waits on it. */
static void slow_after_fork(const char *where)
{
    if (strcmp(where, "process.forked") == 0)
        sleep_ms(50);
}

static struct mp__sys real_sys; /* the real calls, for wrappers to forward to */

static int slow_pidfd_open(pid_t pid, unsigned flags)
{
    sleep_ms(50); /* the same window, right before the pidfd is opened */
    return real_sys.pidfd_open(pid, flags);
}

static void start_count_join(int want_runs)
{
    mp_process *p;
    ASSERT_OK(mp_process_new(&p, count_run, NULL, NULL));
    ASSERT_OK(mp_process_start(p)); /* never -ESRCH for a child that ran */
    ASSERT_OK(mp_process_join(p, 10));
    /* SIGCHLD ignored: the kernel reaped it, the status is lost. */
    ASSERT_EQ(mp_process_exitcode(p), MP_EXIT_UNKNOWN);
    ASSERT_TRUE(!mp_process_is_alive(p));
    ASSERT_EQ(run_count(), want_runs); /* ran, exactly once */
    mp_process_free(p);
}

TEST(start_with_sigchld_ignored_never_lies)
{
    mp__sys_reset();
    real_sys = mp__sys;
    runs = mp_shared_alloc(sizeof *runs);
    ASSERT_TRUE(runs != NULL);
    signal(SIGCHLD, SIG_IGN);
    int n = 0;
    /* (a) deterministic: the parent dawdles after the fork, then before the
     * pidfd_open; a child that could run meanwhile would be gone by then. */
    mp__hook = slow_after_fork;
    for (int i = 0; i < 10; i++)
        start_count_join(++n);
    mp__hook = NULL;
    mp__sys.pidfd_open = slow_pidfd_open;
    for (int i = 0; i < 10; i++)
        start_count_join(++n);
    mp__sys_reset();
    /* (b) statistical: many quick starts, no window widened. */
    for (int i = 0; i < 2000; i++)
        start_count_join(++n);
    ASSERT_EQ(run_count(), 2020);
    ASSERT_EQ(mp_active_children(NULL, 0), 0);
    signal(SIGCHLD, SIG_DFL);
    mp_shared_free((void *)runs);
}

/* Passes through, but dawdles once a child is armed (and so released): a
 * start that released a child it then gave up on would let it run. */
static int slow_setown_ex(int fd, int cmd, long arg)
{
    int r = real_sys.fcntl(fd, cmd, arg);
    if (cmd == F_SETOWN_EX && r == 0)
        sleep_ms(50);
    return r;
}

static int fail_setown_ex(int fd, int cmd, long arg)
{
    if (cmd == F_SETOWN_EX) {
        errno = EPERM;
        return -1;
    }
    return real_sys.fcntl(fd, cmd, arg);
}

TEST(failed_start_never_runs_the_target)
{
    mp__sys_reset();
    real_sys = mp__sys;
    runs = mp_shared_alloc(sizeof *runs);
    ASSERT_TRUE(runs != NULL);
    /* One start first: what is made once and kept (a wait slot) is made. */
    mp_process *p = t_start(count_run, NULL, NULL);
    t_join(p, 0);
    ASSERT_EQ(run_count(), 1);
    int before = t_count_fds();
    pid_t kids[4];
    ASSERT_OK(mp_process_new(&p, count_run, NULL, NULL));
    for (int i = 0; i < 5; i++) {
        /* The pidfd cannot be opened: the child is never released. */
        mp__sys.pidfd_open = failing_pidfd_open;
        mp__sys.fcntl = slow_setown_ex;
        int r = mp_process_start(p);
        mp__sys_reset();
        ASSERT_ERR(r, -EMFILE);
        ASSERT_EQ(t_children(kids, 4), 0); /* reaped before start returned */
        ASSERT_EQ(run_count(), 1);
        ASSERT_EQ(mp_process_pid(p), 0);
        ASSERT_ERR(mp_process_join(p, 0), MP_ESTATE);
        /* The lifeline cannot be armed: the same. */
        mp__sys.fcntl = fail_setown_ex;
        r = mp_process_start(p);
        mp__sys_reset();
        ASSERT_ERR(r, -EPERM);
        ASSERT_EQ(t_children(kids, 4), 0);
        ASSERT_EQ(run_count(), 1);
        ASSERT_EQ(mp_process_pid(p), 0);
        ASSERT_ERR(mp_process_join(p, 0), MP_ESTATE);
        ASSERT_EQ(t_count_fds(), before); /* no pipe end, no pidfd left */
    }
    /* It never started: it may start now, and runs once. */
    ASSERT_OK(mp_process_start(p));
    t_join(p, 0);
    ASSERT_EQ(run_count(), 2);
    ASSERT_EQ(t_count_fds(), before);
    mp_shared_free((void *)runs);
}

/* ---- the lifeline follows the process, needs no /proc, ends at exec ----- */

/* Waits until the thread tid of this process is fully gone: the kernel has
 * then done everything a thread's exit does (PR_SET_PDEATHSIG fires before
 * that; pthread_join may return earlier). */
static bool thread_gone(pid_t tid, double timeout)
{
    double end = t_now() + timeout * t_scale();
    while (syscall(SYS_tgkill, getpid(), tid, 0) == 0) {
        if (t_now() > end)
            return false;
        poll(NULL, 0, 1);
    }
    return errno == ESRCH;
}

/* Where a child says it runs its target (its pid): past its setup, so
 * whatever its setup arms (PR_SET_PDEATHSIG, say) is armed. */
static t_chan started;

struct thread_start { mp_target fn; mp_process *p; pid_t tid, pid; };

/* Starts s->fn and waits until it runs, then exits. */
static void *thread_starts_fn(void *arg)
{
    struct thread_start *s = arg;
    s->tid = (pid_t)syscall(SYS_gettid);
    mp_process *p;
    if (mp_process_new(&p, s->fn, NULL, NULL) == 0) {
        if (mp_process_start(p) == 0) {
            s->p = p;
            s->pid = t_recv(&started, 10);
        } else {
            mp_process_free(p);
        }
    }
    return NULL;
}

/* Says it runs, then returns the order it gets as its exit code. */
static int started_then_order(void *arg)
{
    (void)arg;
    t_send(&started, getpid());
    return t_recv(&to_child, 30);
}

static int exited_thread_without_proc(void)
{
    if (access("/proc/self/fd", F_OK) == 0)
        T_FAIL("/proc is still there");
    chans_open();
    started = t_chan_new();
    struct thread_start s = {.fn = started_then_order};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, thread_starts_fn, &s), 0);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    ASSERT_TRUE(s.p != NULL);
    ASSERT_EQ(s.pid, mp_process_pid(s.p));
    ASSERT_TRUE(thread_gone(s.tid, 10));
    /* Had anything followed the thread, the child would have its SIGKILL by
     * now, and could not return the order. */
    ASSERT_TRUE(mp_process_is_alive(s.p));
    t_send(&to_child, 7);
    t_join(s.p, 7);
    t_chan_close(&started);
    chans_close();
    return 0;
}

TEST(child_of_exited_thread_keeps_running_without_proc)
{
    ASSERT_EQ(t_in_ns(T_NS_NOPROC, exited_thread_without_proc), 0);
}

/* Says it runs; waits for an order, answers with its pid, waits to be
 * killed. */
static int echo_then_sleep(void *arg)
{
    (void)arg;
    t_send(&started, getpid());
    t_recv(&to_child, 30);
    t_send(&to_parent, getpid());
    for (;;)
        pause();
    return 0;
}

/* Starts one grandchild from its main thread and one from a thread that then
 * exits (each runs its target first); says 0 once that thread is gone; then
 * waits to be killed. */
static int head_without_proc(void *arg)
{
    (void)arg;
    mp_process *a;
    if (mp_process_new(&a, echo_then_sleep, NULL, NULL) || mp_process_start(a))
        return 1;
    t_recv(&started, 10);
    struct thread_start s = {.fn = echo_then_sleep};
    pthread_t th;
    if (pthread_create(&th, NULL, thread_starts_fn, &s) || pthread_join(th, NULL) || !s.p)
        return 2;
    if (!thread_gone(s.tid, 10))
        return 3;
    t_send(&to_parent, 0);
    for (;;)
        pause();
    return 0;
}

static int sigkilled_parent_without_proc(void)
{
    if (access("/proc/self/fd", F_OK) == 0)
        T_FAIL("/proc is still there");
    /* The orphans come to us, not to the case's process, so we reap them. */
    ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    chans_open();
    started = t_chan_new();
    mp_process *h = t_start(head_without_proc, NULL, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 0);
    /* Both grandchildren still run: each answers one order. */
    t_send(&to_child, 1);
    t_send(&to_child, 1);
    pid_t kids[2] = {t_recv(&to_parent, 10), t_recv(&to_parent, 10)};
    ASSERT_NE(kids[0], kids[1]);
    ASSERT_OK(mp_process_kill(h));
    t_join(h, -SIGKILL); /* reaped: its children are ours now */
    bool gone[2];
    for (int i = 0; i < 2; i++)
        gone[i] = t_wait_gone(kids[i], 5.0);
    for (int i = 0; i < 2; i++)
        if (!gone[i]) { /* our child now (a subreaper): safe to kill by pid */
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
    ASSERT_TRUE(gone[0]);
    ASSERT_TRUE(gone[1]);
    t_chan_close(&started);
    chans_close();
    return 0;
}

TEST(sigkilled_parent_takes_its_children_without_proc)
{
    ASSERT_EQ(t_in_ns(T_NS_NOPROC, sigkilled_parent_without_proc), 0);
}

static t_chan exec_go;

/* Starts a child (it reports its pid), then, when told, execs sleep. */
static int start_then_exec(void *arg)
{
    (void)arg;
    mp_process *c;
    if (mp_process_new(&c, sleep_forever, NULL, NULL) || mp_process_start(c))
        _exit(1);
    t_recv(&exec_go, 30);
    execl("/bin/sleep", "sleep", "600", (char *)NULL);
    _exit(2); /* the lifeline takes the child along */
}

TEST(exec_in_the_parent_ends_its_children)
{
    if (access("/bin/sleep", X_OK) != 0)
        t_skip("no /bin/sleep to exec");
    chans_open();
    exec_go = t_chan_new();
    mp_process *x = t_start(start_then_exec, NULL, NULL);
    pid_t c = t_recv(&to_parent, 10);
    ASSERT_TRUE(!t_wait_gone(c, 0)); /* running */
    t_send(&exec_go, 0);
    bool gone = t_wait_gone(c, 5.0);
    /* The parent lives on (it runs sleep now): the exec ended the child. */
    bool x_alive = mp_process_is_alive(x);
    ASSERT_OK(mp_process_kill(x));
    ASSERT_OK(mp_process_join(x, 10));
    int x_code = mp_process_exitcode(x);
    mp_process_free(x);
    /* sleep never reaped it; orphaned, it is ours (a subreaper) to reap. */
    int st = 0;
    if (!gone)
        kill(c, SIGKILL);
    ASSERT_EQ(waitpid(c, &st, 0), c);
    ASSERT_TRUE(gone);
    ASSERT_TRUE(x_alive);
    ASSERT_EQ(x_code, -SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    t_chan_close(&exec_go);
    chans_close();
}

/* ---- close-on-exec, with every descriptor the library makes ------------ */

TEST(every_fd_is_cloexec_with_the_reaper_running)
{
    note_inherited();
    chans_open();
    /* A joined process (its pidfd stays open until free) after a join that
     * waited (a wait slot), and a running process freed (the reaper thread
     * and its eventfd). */
    int zero = 0;
    mp_process *joined = t_start(ret_int, &zero, NULL);
    ASSERT_OK(mp_process_join(joined, 10));
    mp_process *running = t_start(wait_for_order, NULL, NULL);
    pid_t pid = t_recv(&to_parent, 10);
    ASSERT_ERR(mp_process_join(running, 0.05), MP_ETIMEDOUT);
    mp_process_free(running);
    mp_process *running2 = t_start(wait_for_order, NULL, NULL);
    pid_t pid2 = t_recv(&to_parent, 10);
    mp_process_free(running2); /* the reaper runs already: kicked by its eventfd */
    ASSERT_TRUE(all_cloexec());
    mp_process *p = t_start(check_cloexec, NULL, NULL);
    t_join(p, 0);
    ASSERT_TRUE(all_cloexec());
    t_send(&to_child, 0);
    t_send(&to_child, 0);
    ASSERT_TRUE(t_wait_gone(pid, 10));
    ASSERT_TRUE(t_wait_gone(pid2, 10));
    mp_process_free(joined);
    chans_close();
}
