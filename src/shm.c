/*
 * Named shared memory (multiprocessing.shared_memory.SharedMemory): POSIX
 * shm objects for processes outside the family. Inside the family the arena
 * is the better tool: nothing to name, nothing to leave behind.
 */
#include "mproc.h"

#include "os/os.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_MAX_LEN 200

struct mp_shm {
    void *ptr;
    size_t size;
    char name[NAME_MAX_LEN + 2]; /* "/" + name + NUL: shm_open's form */
};

/* Checks a user's name and stores it as "/name". */
static int set_name(mp_shm *s, const char *name)
{
    if (name[0] == '/')
        name++;
    size_t n = strlen(name);
    if (n == 0 || n > NAME_MAX_LEN || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return MP_EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return MP_EINVAL;
    }
    s->name[0] = '/';
    memcpy(s->name + 1, name, n + 1);
    return 0;
}

static int map(mp_shm *s, int fd, size_t size)
{
    void *p = mp__sys.mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return errno == ENOMEM ? MP_ENOMEM : -errno;
    s->ptr = p;
    s->size = size;
    return 0;
}

/* shm_open, retried if a signal cut it short (open(2) on a FIFO-free path
 * rarely is, but a handler without SA_RESTART can): -EINTR means
 * mp_interrupt to the user, never a signal. */
static int shm_open_retry(const char *name, int flags, mode_t mode)
{
    int fd;
    while ((fd = mp__sys.shm_open(name, flags, mode)) < 0 && errno == EINTR)
        ;
    return fd;
}

static int open_new(mp_shm *s, size_t size)
{
    int fd = shm_open_retry(s->name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int err = 0, r;
    while ((r = mp__sys.ftruncate(fd, (off_t)size)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        err = errno == ENOSPC || errno == EFBIG ? MP_ENOMEM : -errno;
    else
        err = map(s, fd, size);
    mp__close(fd);
    if (err)
        shm_unlink(s->name);
    return err;
}

int mp_shm_create(mp_shm **out, const char *name, size_t size)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if (size == 0 || size > (size_t)PTRDIFF_MAX)
        return MP_EINVAL;
    mp_shm *s = mp__sys.calloc(1, sizeof *s);
    if (!s)
        return MP_ENOMEM;
    int err;
    if (name) {
        err = set_name(s, name);
        if (!err)
            err = open_new(s, size);
    } else {
        /* A fresh name, as Python's "psm_" + random: retry on the rare clash. */
        do {
            uint64_t r;
            if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
                r = (uint64_t)mp__now_ns() ^ ((uint64_t)getpid() << 32);
            snprintf(s->name, sizeof s->name, "/mproc_%d_%016llx", (int)getpid(),
                     (unsigned long long)r);
            err = open_new(s, size);
        } while (err == -EEXIST);
    }
    if (err) {
        free(s);
        return err;
    }
    *out = s;
    return 0;
}

int mp_shm_attach(mp_shm **out, const char *name)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if (!name)
        return MP_EINVAL;
    mp_shm *s = mp__sys.calloc(1, sizeof *s);
    if (!s)
        return MP_ENOMEM;
    int err = set_name(s, name);
    int fd = err ? -1 : shm_open_retry(s->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
    if (!err && fd < 0)
        err = -errno;
    if (!err) {
        struct stat st;
        if (mp__sys.fstat(fd, &st) < 0)
            err = -errno;
        else if (st.st_size <= 0)
            err = MP_EINVAL; /* nothing to map: not one of ours */
        else
            err = map(s, fd, (size_t)st.st_size);
    }
    mp__close(fd);
    if (err) {
        free(s);
        return err;
    }
    *out = s;
    return 0;
}

void *mp_shm_ptr(const mp_shm *s) { return s ? s->ptr : NULL; }
size_t mp_shm_size(const mp_shm *s) { return s ? s->size : 0; }
const char *mp_shm_name(const mp_shm *s) { return s ? s->name + 1 : NULL; }

int mp_shm_unlink(mp_shm *s)
{
    if (!s)
        return MP_EINVAL;
    return shm_unlink(s->name) < 0 ? -errno : 0;
}

void mp_shm_free(mp_shm *s)
{
    if (!s)
        return;
    munmap(s->ptr, s->size);
    free(s);
}
