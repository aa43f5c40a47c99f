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
    /* One start first: the family pipe and a wait slot's eventfd are made
     * once and kept; after that the count must not move. */
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
    ASSERT_EQ(t_children(kids, 4), 0); /* killed and reaped: it never ran */
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
    mp__sys.pipe2 = failing_pipe2; /* the family pipe, made at the first start */
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
    ASSERT_LE(t_count_fds(), before + 3); /* the family pipe, a wait slot */
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
