#include "harness.h"

#include <dirent.h>
#include <string.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CASES 256

struct t_case { const char *name; t_fn fn; };
static struct t_case cases[MAX_CASES];
static int ncases;
static pid_t harness_pid;

void t_register(const char *name, t_fn fn)
{
    if (ncases < MAX_CASES)
        cases[ncases++] = (struct t_case){name, fn};
}

void t_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s[%d] FAIL %s:%d: ", getpid() == harness_pid ? "" : "child ", (int)getpid(),
            file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(NULL);
    _exit(1); /* no atexit: mproc would join children that may never end */
}

double t_scale(void)
{
    const char *s = getenv("MPROC_TEST_TIMEOUT_MULT");
    double m = s ? atof(s) : 1.0;
    return m >= 1.0 ? m : 1.0;
}

double t_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

mp_process *t_start(mp_target fn, void *arg, const mp_process_opts *o)
{
    mp_process *p;
    int r = mp_process_new(&p, fn, arg, o);
    if (r == 0 && (r = mp_process_start(p)) != 0)
        mp_process_free(p);
    if (r)
        T_FAIL("starting a process: %s (%s)", mp_err_name(r), mp_strerror(r));
    return p;
}

void t_join(mp_process *p, int code)
{
    int r = mp_process_join(p, 60 * t_scale());
    if (r)
        T_FAIL("joining %s: %s (%s)", mp_process_name(p), mp_err_name(r), mp_strerror(r));
    int got = mp_process_exitcode(p);
    if (got != code)
        T_FAIL("%s exited with %d, want %d", mp_process_name(p), got, code);
    mp_process_free(p);
}

t_chan t_chan_new(void)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        T_FAIL("pipe2: %s", strerror(errno));
    return (t_chan){fds[0], fds[1]};
}

void t_chan_close(t_chan *c)
{
    if (c->r >= 0)
        close(c->r);
    if (c->w >= 0)
        close(c->w);
    c->r = c->w = -1;
}

t_chan to_child = {-1, -1}, to_parent = {-1, -1};

void chans_open(void)
{
    to_child = t_chan_new();
    to_parent = t_chan_new();
}

void chans_close(void)
{
    t_chan_close(&to_child);
    t_chan_close(&to_parent);
}

void t_send(t_chan *c, int v)
{
    if (write(c->w, &v, sizeof v) != (ssize_t)sizeof v)
        T_FAIL("t_send: %s", strerror(errno));
}

bool t_try_recv(t_chan *c, double timeout, int *v)
{
    double end = t_now() + timeout * t_scale();
    for (;;) {
        int ms = (int)((end - t_now()) * 1000);
        struct pollfd pf = {.fd = c->r, .events = POLLIN};
        int r = poll(&pf, 1, ms > 0 ? ms : 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        ssize_t n = read(c->r, v, sizeof *v);
        if (n < 0 && errno == EINTR)
            continue;
        return n == (ssize_t)sizeof *v;
    }
}

int t_recv(t_chan *c, double timeout)
{
    int v;
    if (!t_try_recv(c, timeout, &v))
        T_FAIL("t_recv: nothing within %.1f s", timeout * t_scale());
    return v;
}

bool t_pid_alive(pid_t pid)
{
    return kill(pid, 0) == 0;
}

bool t_wait_gone(pid_t pid, double timeout)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0)
        return errno == ESRCH; /* already reaped and gone */
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int ms = (int)(timeout * t_scale() * 1000);
    int r;
    while ((r = poll(&pf, 1, ms)) < 0 && errno == EINTR)
        ;
    close(fd);
    if (r == 1)
        waitpid(pid, NULL, WNOHANG); /* ours if it was reparented to us */
    return r == 1;
}

int t_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        T_FAIL("opendir /proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

int t_children(pid_t *out, int cap)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "re");
        if (!f)
            continue;
        int pid;
        while (fscanf(f, "%d", &pid) == 1) {
            if (n < cap)
                out[n] = pid;
            n++;
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

void t_skip(const char *fmt, ...)
{
    va_list ap;
    printf("skip: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(NULL);
    _exit(77);
}

static bool write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
    close(fd);
    return ok;
}

/* unshare, as root or else in a user namespace of our own. */
static int enter(int flags)
{
    if (unshare(flags) == 0)
        return 0;
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(flags | CLONE_NEWUSER) < 0)
        return -errno;
    char map[64];
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "0 %d 1", (int)uid);
    if (!write_file("/proc/self/uid_map", map))
        return -EPERM;
    snprintf(map, sizeof map, "0 %d 1", (int)gid);
    if (!write_file("/proc/self/gid_map", map))
        return -EPERM;
    return 0;
}

static int wait_status(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return 126;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int t_in_ns(int flags, int (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        T_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        int err = enter(CLONE_NEWNS | (flags & T_NS_PID ? CLONE_NEWPID : 0));
        if (err)
            _exit(77);
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
            _exit(77);
        if (flags & T_NS_NOPROC && mount("none", "/proc", "tmpfs", 0, NULL) < 0)
            _exit(77);
        if (!(flags & T_NS_PID))
            _exit(fn());
        pid_t init = fork(); /* the namespace's pid 1 */
        if (init == 0) {
            if (mount("proc", "/proc", "proc", 0, NULL) < 0)
                _exit(77);
            _exit(fn());
        }
        _exit(init < 0 ? 77 : wait_status(init));
    }
    int code = wait_status(pid);
    if (code == 77)
        t_skip("cannot make the namespaces this case needs (needs root or user namespaces)");
    return code;
}

void t_set_last_pid(pid_t pid)
{
    char text[32];
    snprintf(text, sizeof text, "%d", (int)pid);
    if (!write_file("/proc/sys/kernel/ns_last_pid", text))
        T_FAIL("cannot write ns_last_pid: %s", strerror(errno));
}

static int run_case(t_fn fn, const char *name)
{
    harness_pid = getpid();
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    fn();
    pid_t left[64];
    int n = t_children(left, 64);
    if (n > 0) {
        fprintf(stderr, "FAIL %s: %d child process(es) left behind:", name, n);
        for (int i = 0; i < n && i < 64; i++) {
            fprintf(stderr, " %d", (int)left[i]);
            kill(left[i], SIGKILL);
        }
        fputc('\n', stderr);
        while (waitpid(-1, NULL, 0) > 0)
            ;
        fflush(NULL);
        _exit(1);
    }
    printf("ok %s\n", name);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < ncases; i++)
            puts(cases[i].name);
        return 0;
    }
    if (argc == 2) {
        for (int i = 0; i < ncases; i++)
            if (strcmp(cases[i].name, argv[1]) == 0)
                return run_case(cases[i].fn, cases[i].name);
        fprintf(stderr, "no case named %s\n", argv[1]);
        return 2;
    }
    /* No argument: every case, each in its own process with a time limit. */
    int failed = 0;
    for (int i = 0; i < ncases; i++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm((unsigned)(60 * t_scale()));
            _exit(run_case(cases[i].fn, cases[i].name));
        }
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("FAILED %s\n", cases[i].name);
            failed++;
        }
    }
    printf("%d passed, %d failed\n", ncases - failed, failed);
    return failed != 0;
}

pthread_t t_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int e = pthread_create(&t, NULL, fn, arg);
    if (e)
        T_FAIL("pthread_create: %s", strerror(e));
    return t;
}

void *t_join_thread(pthread_t t)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(20 * t_scale());
    void *ret;
    if (pthread_timedjoin_np(t, &ret, &ts) != 0)
        T_FAIL("a thread did not end within %g s", 20 * t_scale());
    return ret;
}

char t_proc_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

void t_await_state(pid_t tid, char state)
{
    double end = t_now() + 10 * t_scale();
    while (t_proc_state(tid) != state) {
        if (t_now() > end)
            T_FAIL("%d never reached state %c (it is %c)", (int)tid, state, t_proc_state(tid));
        sched_yield();
    }
}

int t_await_children(int at_most, double timeout, pid_t *first)
{
    double end = t_now() + timeout * t_scale();
    pid_t kids[64];
    int n;
    while ((n = t_children(kids, 64)) > at_most && t_now() < end)
        usleep(10000);
    if (n > 0 && first)
        *first = kids[0];
    return n;
}

int t_await_no_children(double timeout, pid_t *first) { return t_await_children(0, timeout, first); }

int t_count_fds_after_a_pool(void)
{
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &(mp_pool_opts){.processes = 1}));
    mp_pool_free(p);
    return t_count_fds();
}
