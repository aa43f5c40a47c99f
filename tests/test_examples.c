/* Runs the classic programs of examples/ and checks what they print. */
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

TEST(print_numbers)
{
    char *out = run_example("print_numbers", 20);
    int seen[5] = {0}, lines = 0;
    const char *last = NULL;
    for (char *save, *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lines++;
        last = line;
        if (line[0] >= '0' && line[0] <= '4' && line[1] == '\0')
            seen[line[0] - '0']++;
        else
            ASSERT_STR_EQ(line, "Both processes have finished.");
    }
    for (int i = 0; i < 5; i++)
        ASSERT_EQ(seen[i], 2);
    ASSERT_EQ(lines, 11);
    ASSERT_STR_EQ(last, "Both processes have finished.");
    free(out);
}

TEST(lock_value)
{
    char *out = run_example("lock_value", 20);
    ASSERT_STR_EQ(out, "15\n");
    free(out);
}
