/* CPU counts, read live. */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int mp__cpu_online(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

static int affinity_count(void)
{
    for (size_t ncpu = 1024; ncpu <= (1u << 20); ncpu *= 2) {
        size_t sz = CPU_ALLOC_SIZE(ncpu);
        cpu_set_t *set = CPU_ALLOC(ncpu);
        if (!set)
            break;
        if (sched_getaffinity(0, sz, set) == 0) {
            int n = CPU_COUNT_S(sz, set);
            CPU_FREE(set);
            return n;
        }
        CPU_FREE(set);
        if (errno != EINVAL)
            break;
    }
    return mp__cpu_online();
}

static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, cap - 1);
    mp__close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

/* The tightest cgroup v2 cpu.max quota on this process's cgroup and its
 * ancestors, as a CPU count rounded up; 0 when there is none. */
static int cgroup_quota(void)
{
    char buf[4096];
    if (read_small("/proc/self/cgroup", buf, sizeof buf) < 0)
        return 0;
    char *line = strstr(buf, "0::");
    if (!line || (line != buf && line[-1] != '\n'))
        return 0;
    char *path = line + 3, *end = strchr(path, '\n');
    if (end)
        *end = '\0';
    char dir[4096 + 32];
    snprintf(dir, sizeof dir, "/sys/fs/cgroup%s", path);
    size_t root = strlen("/sys/fs/cgroup");
    int best = 0;
    for (;;) {
        char file[sizeof dir + 16], val[128];
        snprintf(file, sizeof file, "%s/cpu.max", dir);
        if (read_small(file, val, sizeof val) > 0 && strncmp(val, "max", 3) != 0) {
            char *rest;
            long long quota = strtoll(val, &rest, 10);
            long long period = strtoll(rest, NULL, 10);
            if (quota > 0 && period > 0) {
                int n = (int)((quota + period - 1) / period);
                if (best == 0 || n < best)
                    best = n;
            }
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < root)
            break;
        *slash = '\0';
        if (strlen(dir) < root)
            break;
    }
    return best;
}

int mp__cpu_usable(void)
{
    int n = affinity_count();
    int q = cgroup_quota();
    if (q > 0 && q < n)
        n = q;
    return n < 1 ? 1 : n;
}
