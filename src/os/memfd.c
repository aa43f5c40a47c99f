/*
 * The arena's memory: one sparse memfd, reserved big and backed piecewise.
 *
 * The reservation is address space only: the file is sparse (ftruncate) and
 * the mapping MAP_NORESERVE, so a terabyte costs nothing until pages are
 * backed. Where the system refuses that much (RLIMIT_AS, a small address
 * space) we halve until it agrees. Backing is explicit, with fallocate: a
 * memfd is charged page by page as pages appear, and under
 * vm.overcommit_memory=2 a page that cannot be charged at fault time is a
 * SIGBUS, while fallocate reports ENOMEM / ENOSPC and the allocator returns
 * NULL. Punching a hole gives pages back; they read as zero afterwards.
 */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define ENV_MIN ((size_t)4 << 20)
#define ENV_GRAIN ((size_t)64 << 10)

size_t mp__region_want(void)
{
    const char *s = getenv("MPROC_ARENA_SIZE");
    if (!s || *s < '0' || *s > '9')
        return MP__REGION_MAX;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    }
    if (errno || *end || v == 0)
        return MP__REGION_MAX;
    if (v > (MP__REGION_MAX >> shift))
        return MP__REGION_MAX;
    size_t n = (size_t)v << shift;
    if (n < ENV_MIN)
        n = ENV_MIN;
    return (n + ENV_GRAIN - 1) & ~(ENV_GRAIN - 1);
}

int mp__region_reserve(mp__region *r, size_t want, size_t floor)
{
    r->base = NULL;
    r->size = 0;
    r->fd = mp__sys.memfd_create("mproc-arena", MFD_CLOEXEC);
    if (r->fd < 0)
        return -errno;
    struct rlimit fl; /* past RLIMIT_FSIZE, ftruncate would raise SIGXFSZ */
    if (getrlimit(RLIMIT_FSIZE, &fl) == 0 && fl.rlim_cur != RLIM_INFINITY && fl.rlim_cur < want)
        want = (size_t)fl.rlim_cur & ~(ENV_GRAIN - 1);
    if (floor > want)
        floor = want;
    int err = -ENOMEM;
    for (size_t size = want; size >= floor && size > 0; size /= 2) {
        if (mp__sys.ftruncate(r->fd, (off_t)size) < 0) {
            err = -errno;
            continue;
        }
        void *p = mp__sys.mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                               r->fd, 0);
        if (p == MAP_FAILED) {
            err = -errno;
            continue;
        }
        (void)madvise(p, size, MADV_DONTDUMP); /* best effort: a core without it is still a core */
        r->base = p;
        r->size = size;
        return 0;
    }
    mp__close(r->fd);
    r->fd = -1;
    return err;
}

void mp__region_unmap(mp__region *r)
{
    if (r->base)
        munmap(r->base, r->size);
    mp__close(r->fd);
    r->base = NULL;
    r->size = 0;
    r->fd = -1;
}

static int falloc(const mp__region *r, int mode, size_t off, size_t len)
{
    if (r->fd < 0 || off > r->size || len > r->size - off)
        return -EINVAL;
    while (mp__sys.fallocate(r->fd, mode, (off_t)off, (off_t)len) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

int mp__region_commit(const mp__region *r, size_t off, size_t len)
{
    return falloc(r, 0, off, len);
}

int mp__region_release(const mp__region *r, size_t off, size_t len)
{
    return falloc(r, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
}

int64_t mp__region_backed(const mp__region *r)
{
    struct stat st;
    if (r->fd < 0)
        return -EBADF;
    if (mp__sys.fstat(r->fd, &st) < 0)
        return -errno;
    return (int64_t)st.st_blocks * 512;
}
