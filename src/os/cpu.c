/* CPU counts, read live. */
#include "os.h"

#include <stdatomic.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Counts the CPUs in a kernel CPU list such as "0-3,8,10-11\n". */
static int count_list(const char *s)
{
    int n = 0;
    while (*s >= '0' && *s <= '9') {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (*end == '-')
            b = strtol(end + 1, &end, 10);
        if (b >= a)
            n += (int)(b - a + 1);
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* The online list is re-read at every call, through a descriptor opened once:
 * a sysfs file regenerates its text on each read from offset 0, so the count
 * stays live while the open() and close() of every sysconf() call go. */
static atomic_int online_fd = -1;

int mp__cpu_online(void)
{
    int fd = atomic_load_explicit(&online_fd, memory_order_acquire);
    if (fd < 0) {
        fd = mp__sys.open("/sys/devices/system/cpu/online", O_RDONLY | O_CLOEXEC, 0);
        int none = -1;
        if (fd >= 0 && !atomic_compare_exchange_strong(&online_fd, &none, fd)) {
            mp__close(fd); /* another thread won */
            fd = none;
        }
    }
    char buf[256];
    ssize_t len = fd >= 0 ? pread(fd, buf, sizeof buf - 1, 0) : -1;
    int n = 0;
    if (len > 0) {
        buf[len] = '\0';
        n = count_list(buf);
    }
    if (n < 1) {
        long s = sysconf(_SC_NPROCESSORS_ONLN);
        n = s < 1 ? 1 : (int)s;
    }
    return n;
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
    int fd = mp__sys.open(path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    ssize_t n = mp__sys.read(fd, buf, cap - 1);
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
