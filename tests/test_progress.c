/* The progress bar (mp_progress_bar): drawn on a terminal, silent elsewhere.
 *
 * Each case runs a body in a child whose stderr is the slave of a fresh
 * pseudo-terminal, and reads the master meanwhile (so the child never
 * blocks on a full terminal). The body ends with a sentinel run, a final
 * line labelled "<end>": the parent reads until that line has come, then
 * checks what came before it. Every line a draw writes starts with '\r'. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define OUT_CAP (1 << 20)
static char out[OUT_CAP + 1];

static const char *const SENTINEL = "\r<end>  1/1  100%";

/* Reads fd into out until out ends with the sentinel's line (or, when
 * sentinel is false, until EOF), within 20 s (scaled). Returns the length. */
static size_t read_output(int fd, bool sentinel)
{
    size_t len = 0;
    double end = t_now() + 20 * t_scale();
    for (;;) {
        out[len] = '\0';
        if (sentinel && len > 0 && out[len - 1] == '\n') {
            char *last = strrchr(out, '\r');
            if (last && strncmp(last, SENTINEL, strlen(SENTINEL)) == 0)
                return len;
        }
        int ms = (int)((end - t_now()) * 1000);
        if (ms <= 0)
            T_FAIL("no end of output within %g s; got %zu bytes: \"%s\"", 20 * t_scale(), len, out);
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue; /* the deadline check above fails the case */
        if (len == OUT_CAP)
            T_FAIL("more than %d bytes of output", OUT_CAP);
        ssize_t n = read(fd, out + len, OUT_CAP - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* EOF (pipe), EIO (terminal with no slave left) */
            if (sentinel)
                T_FAIL("output ended before the sentinel: \"%s\"", out);
            return len;
        }
        len += (size_t)n;
    }
}

/* The exit status of the child pid: it has ended or is about to. */
static void reap(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            T_FAIL("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        T_FAIL("the child ended with status %#x", st);
}

/* Runs body in a child whose stderr is a pseudo-terminal's slave; returns
 * the length of what it drew (in out, the sentinel cut off) and sets
 * *elapsed to the seconds the body took, as the child measured them. */
static size_t on_terminal(void (*body)(void), double *elapsed)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        t_skip("no pseudo-terminal: %s", strerror(errno));
    char name[128];
    ASSERT_EQ(grantpt(master), 0);
    ASSERT_EQ(unlockpt(master), 0);
    ASSERT_EQ(ptsname_r(master, name, sizeof name), 0);
    int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    ASSERT_GE(slave, 0);
    struct termios tio; /* bytes as written: no "\n" to "\r\n" */
    ASSERT_EQ(tcgetattr(slave, &tio), 0);
    tio.c_oflag &= ~(tcflag_t)OPOST;
    ASSERT_EQ(tcsetattr(slave, TCSANOW, &tio), 0);

    t_chan rep = t_chan_new();
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (dup2(slave, STDERR_FILENO) < 0)
            _exit(3);
        double t0 = t_now();
        body();
        t_send(&rep, (int)((t_now() - t0) * 1e6));
        mp_progress_bar(1, 1, "<end>");
        _exit(0);
    }
    close(slave);
    close(rep.w);
    rep.w = -1;
    size_t len = read_output(master, true);
    *elapsed = t_recv(&rep, 20) * 1e-6;
    reap(pid);
    t_chan_close(&rep);
    close(master);
    len = (size_t)(strrchr(out, '\r') - out); /* the sentinel's line */
    out[len] = '\0';
    return len;
}

static size_t count(const char *s, char c)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

/* The line drawn i-th (0: the first), its leading '\r' included, in a
 * static buffer; "" if there are fewer. */
static const char *line(const char *s, size_t i)
{
    static char buf[512];
    for (const char *p = s; (p = strchr(p, '\r')) != NULL; p++)
        if (i-- == 0) {
            size_t n = strcspn(p + 1, "\r");
            n = n + 1 < sizeof buf ? n + 1 : sizeof buf - 1;
            memcpy(buf, p, n);
            buf[n] = '\0';
            return buf;
        }
    return "";
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

#define ASSERT_LINE(s, i, prefix)                                                  \
    do {                                                                           \
        if (!starts_with(line(s, i), prefix))                                      \
            T_FAIL("line %d should start with \"%s\"; the output: \"%s\"", (int)(i), \
                   prefix, s);                                                     \
    } while (0)

/* ---- cases ------------------------------------------------------------- */

static void tight_loop(void)
{
    for (size_t i = 0; i <= 1000; i++)
        mp_progress_bar(i, 1000, "squares");
}

TEST(terminal_line_redrawn_in_place_at_most_ten_times_a_second)
{
    double elapsed;
    size_t len = on_terminal(tight_loop, &elapsed);
    size_t draws = count(out, '\r');
    ASSERT_GE(draws, 2); /* the first call and the final line */
    /* The cap: one line at the start, then one per 100 ms, plus the final. */
    if ((double)draws > 10 * elapsed + 3)
        T_FAIL("%zu lines drawn for 1001 calls in %.3f s", draws, elapsed);
    ASSERT_EQ(count(out, '\n'), 1);
    ASSERT_TRUE(len > 0 && out[len - 1] == '\n');
    ASSERT_TRUE(out[0] == '\r');
    for (size_t i = 0; i < draws; i++) {
        ASSERT_LINE(out, i, "\rsquares  ");
        ASSERT_TRUE(ends_with(line(out, i), i + 1 < draws ? "\033[K" : "\033[K\n"));
    }
    ASSERT_LINE(out, draws - 1, "\rsquares  1000/1000  100%  ");
    ASSERT_TRUE(strstr(line(out, draws - 1), "/s  in ") != NULL);
}

static void first_and_last(void)
{
    mp_progress_bar(0, 1000, "x");
    mp_progress_bar(1000, 1000, "x");
}

TEST(first_call_draws_with_rate_and_eta_unknown)
{
    double elapsed;
    on_terminal(first_and_last, &elapsed);
    ASSERT_EQ(count(out, '\r'), 2);
    ASSERT_STR_EQ(line(out, 0), "\rx  0/1000  0%  --/s  ETA --:--\033[K");
    ASSERT_LINE(out, 1, "\rx  1000/1000  100%  ");
    ASSERT_TRUE(ends_with(line(out, 1), "\033[K\n"));
}

/* Waits for time itself to pass, past the redraw interval. */
static void let_pass(double secs)
{
    double end = t_now() + secs;
    while (t_now() < end)
        poll(NULL, 0, 10);
}

static void slow_steps(void)
{
    mp_progress_bar(0, 1000000000, "slow");
    let_pass(0.15);
    mp_progress_bar(100000000, 1000000000, "slow");
    mp_progress_bar(1000000000, 1000000000, "slow");
}

TEST(redrawn_after_a_tenth_of_a_second_with_rate_and_eta)
{
    double elapsed;
    on_terminal(slow_steps, &elapsed);
    ASSERT_EQ(count(out, '\r'), 3);
    ASSERT_LINE(out, 1, "\rslow  100000000/1000000000  10%  ");
    /* 1e8 items in 0.15 s or more (a few s on a crawling machine): M/s. */
    ASSERT_TRUE(strstr(line(out, 1), "M/s  ETA ") != NULL);
    ASSERT_TRUE(strstr(line(out, 1), "--") == NULL);
    ASSERT_LINE(out, 2, "\rslow  1000000000/1000000000  100%  ");
}

static void edge_totals(void)
{
    mp_progress_bar(0, 0, "empty");
    mp_progress_bar(0, 10, "over");
    mp_progress_bar(25, 10, "over");
    mp_progress_bar(SIZE_MAX, SIZE_MAX, "huge");
}

TEST(total_zero_and_done_past_total_end_a_run)
{
    double elapsed;
    on_terminal(edge_totals, &elapsed);
    ASSERT_EQ(count(out, '\r'), 4);
    ASSERT_EQ(count(out, '\n'), 3);
    ASSERT_STR_EQ(line(out, 0), "\rempty  0/0  100%  --/s  in 0:00\033[K\n");
    ASSERT_STR_EQ(line(out, 1), "\rover  0/10  0%  --/s  ETA --:--\033[K");
    ASSERT_LINE(out, 2, "\rover  10/10  100%  ");
    ASSERT_TRUE(ends_with(line(out, 2), "\033[K\n"));
    char want[96];
    snprintf(want, sizeof want, "\rhuge  %zu/%zu  100%%  --/s  in 0:00\033[K\n", SIZE_MAX, SIZE_MAX);
    ASSERT_STR_EQ(line(out, 3), want);
}

static void no_label(void)
{
    mp_progress_bar(0, 5, NULL);
    mp_progress_bar(5, 5, NULL);
}

TEST(null_label_draws_the_numbers_alone)
{
    double elapsed;
    on_terminal(no_label, &elapsed);
    ASSERT_EQ(count(out, '\r'), 2);
    ASSERT_STR_EQ(line(out, 0), "\r0/5  0%  --/s  ETA --:--\033[K");
    ASSERT_LINE(out, 1, "\r5/5  100%  ");
}

static void runs(void)
{
    mp_progress_bar(0, 100, "a");
    mp_progress_bar(100, 100, "a"); /* final: the next call starts a run */
    let_pass(0.15);
    mp_progress_bar(0, 100, "b");
    mp_progress_bar(5, 100, "b");
    let_pass(0.15);
    mp_progress_bar(3, 100, "c"); /* done went back */
    let_pass(0.15);
    mp_progress_bar(3, 200, "d"); /* total changed */
}

TEST(a_run_starts_after_a_final_line_when_done_goes_back_or_total_changes)
{
    double elapsed;
    on_terminal(runs, &elapsed);
    /* Drawn, since the last line is 0.15 s old, and with no rate yet: the
     * call began a run. The same run would have a rate by then. */
    ASSERT_TRUE(strstr(out, "\rb  0/100  0%  --/s  ETA --:--\033[K") != NULL);
    ASSERT_TRUE(strstr(out, "\rc  3/100  3%  --/s  ETA --:--\033[K") != NULL);
    ASSERT_TRUE(strstr(out, "\rd  3/200  1%  --/s  ETA --:--\033[K") != NULL);
    ASSERT_EQ(count(out, '\n'), 1);
}

TEST(silent_when_stderr_is_not_a_terminal)
{
    t_chan pipe_ = t_chan_new();
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (dup2(pipe_.w, STDERR_FILENO) < 0)
            _exit(3);
        errno = 0;
        tight_loop();
        edge_totals();
        no_label();
        _exit(errno == 0 ? 0 : 4); /* errno left alone, too */
    }
    close(pipe_.w);
    pipe_.w = -1;
    size_t len = read_output(pipe_.r, false);
    reap(pid);
    t_chan_close(&pipe_);
    if (len)
        T_FAIL("%zu bytes written to a pipe: \"%s\"", len, out);
}

#define THREADS 4

static void *hammer(void *arg)
{
    (void)arg;
    for (size_t i = 0; i <= 20000; i++)
        mp_progress_bar(i, 20000, "threads");
    return NULL;
}

static void from_threads(void)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, hammer, NULL) != 0)
            _exit(5);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
}

TEST(lines_from_threads_never_interleave)
{
    double elapsed;
    on_terminal(from_threads, &elapsed);
    size_t draws = count(out, '\r');
    ASSERT_GE(draws, 1);
    /* Runs begin at every turn of the threads; the cap holds all the same
     * (a final line per thread at most, beside it). */
    if ((double)draws > 10 * elapsed + 3 + THREADS)
        T_FAIL("%zu lines drawn in %.3f s", draws, elapsed);
    for (size_t i = 0; i < draws; i++) {
        const char *l = line(out, i);
        ASSERT_LINE(out, i, "\rthreads  ");
        ASSERT_TRUE(strstr(l, "\033[K") == l + strcspn(l, "\033")); /* one clear, */
        ASSERT_TRUE(ends_with(l, "\033[K") || ends_with(l, "\033[K\n")); /* at the end */
    }
}

static void fork_mid_run(void)
{
    mp_progress_bar(0, 100, "p");
    mp_progress_bar(10, 100, "p");
    pid_t pid = fork();
    if (pid < 0)
        _exit(6);
    if (pid == 0) {
        mp_progress_bar(20, 100, "p");
        _exit(0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            _exit(7);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        _exit(8);
}

TEST(fork_child_starts_a_fresh_run)
{
    double elapsed;
    on_terminal(fork_mid_run, &elapsed);
    /* Drawn at once, with no rate: not the parent's half run, redrawn too
     * soon or timed from the parent's start. */
    ASSERT_TRUE(strstr(out, "\rp  20/100  20%  --/s  ETA --:--\033[K") != NULL);
}
