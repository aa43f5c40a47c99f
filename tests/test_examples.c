/* Runs the classic programs of examples/ and checks what they print against
 * what their Python originals print (examples/expected/NAME.out). */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs EXAMPLES_DIR/name, returns its whole stdout (malloc'd); fails the
 * case unless it exits 0 within timeout seconds. */
static char *run_example(const char *name, double timeout)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", EXAMPLES_DIR, name);
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        execl(path, name, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0, cap = 4096;
    char *out = malloc(cap);
    double end = t_now() + timeout * t_scale();
    for (;;) {
        int ms = (int)((end - t_now()) * 1000);
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        if (ms <= 0 || poll(&pf, 1, ms) == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            T_FAIL("%s did not finish within %.0f s", name, timeout * t_scale());
        }
        if (len + 1024 > cap)
            out = realloc(out, cap *= 2);
        ssize_t n = read(fds[0], out + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    close(fds[0]);
    int st;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
    return out;
}

/* EXPECTED_DIR/name.out, whole (malloc'd); fails the case if unreadable. */
static char *expected(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.out", EXPECTED_DIR, name);
    FILE *f = fopen(path, "r");
    if (!f)
        T_FAIL("cannot open %s", path);
    size_t len = 0, cap = 4096;
    char *text = malloc(cap);
    size_t n;
    while ((n = fread(text + len, 1, cap - len - 1, f)) > 0)
        if ((len += n) + 1 == cap)
            text = realloc(text, cap *= 2);
    fclose(f);
    text[len] = '\0';
    return text;
}

/* Splits text into its lines (in place); returns how many, at most cap. */
static int split_lines(char *text, char **lines, int cap)
{
    int n = 0;
    for (char *save, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (n == cap)
            T_FAIL("more than %d lines", cap);
        lines[n++] = l;
    }
    return n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The program prints exactly what its Python original prints. */
static void check_exact(const char *name, double timeout)
{
    char *out = run_example(name, timeout), *want = expected(name);
    ASSERT_STR_EQ(out, want);
    free(out);
    free(want);
}

/* Two children print 0..4 each, at the same time: their lines may
 * interleave in any order, so the output is checked as a multiset of the
 * expected lines, and the parent's line must come last. */
TEST(process_print_numbers)
{
    char *out = run_example("process_print_numbers", 20), *want = expected("process_print_numbers");
    ASSERT_GT(strlen(out), 0);
    ASSERT_EQ(out[strlen(out) - 1], '\n');
    char *got_l[64], *want_l[64];
    int ngot = split_lines(out, got_l, 64), nwant = split_lines(want, want_l, 64);
    ASSERT_EQ(ngot, nwant);
    ASSERT_GT(nwant, 0);
    ASSERT_STR_EQ(got_l[ngot - 1], want_l[nwant - 1]);
    qsort(got_l, (size_t)ngot, sizeof got_l[0], cmp_str);
    qsort(want_l, (size_t)nwant, sizeof want_l[0], cmp_str);
    for (int i = 0; i < ngot; i++)
        ASSERT_STR_EQ(got_l[i], want_l[i]);
    free(out);
    free(want);
}

TEST(lock_counter)
{
    check_exact("lock_counter", 20);
}

TEST(queue_worker)
{
    check_exact("queue_worker", 20);
}

TEST(pipe_hello)
{
    check_exact("pipe_hello", 20);
}

TEST(pool_square)
{
    check_exact("pool_square", 20);
}

/* Its count alone goes to stdout; the time taken, and the progress bar
 * (drawn only when stderr is a terminal), go to stderr. */
TEST(count_primes)
{
    check_exact("count_primes", 20);
}
