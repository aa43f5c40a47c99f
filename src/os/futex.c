/* Futexes, shared across processes, with interruptible waits. */
#include "os.h"

#include "mproc.h"

#include <errno.h>
#include <linux/futex.h>
#include <time.h>
#include <unistd.h>

#define SLICE_NS 20000000LL /* without futex_waitv: check interrupts this often */

static atomic_int no_waitv; /* set once the kernel says ENOSYS */

static struct timespec *abs_ts(int64_t deadline, struct timespec *ts)
{
    if (deadline == MP__NEVER)
        return NULL;
    ts->tv_sec = deadline / 1000000000;
    ts->tv_nsec = deadline % 1000000000;
    return ts;
}

static int wait_sliced(_Atomic uint32_t *addr, uint32_t val, int64_t deadline)
{
    int64_t slice = mp__now_ns() + SLICE_NS;
    struct timespec ts;
    long r = mp__sys.futex(addr, FUTEX_WAIT_BITSET, val, abs_ts(deadline < slice ? deadline : slice, &ts),
                           FUTEX_BITSET_MATCH_ANY);
    return r < 0 && errno == ETIMEDOUT && deadline <= slice ? MP_ETIMEDOUT : 0;
}

int mp__futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t deadline, mp__waiter *w)
{
    if (!w) { /* not interruptible */
        struct timespec ts;
        long k = mp__sys.futex(addr, FUTEX_WAIT_BITSET, val, abs_ts(deadline, &ts), FUTEX_BITSET_MATCH_ANY);
        return k < 0 && errno == ETIMEDOUT ? MP_ETIMEDOUT : 0;
    }
    if (mp__wait_interrupted(w))
        return MP_EINTR;
    int r;
    if (!atomic_load_explicit(&no_waitv, memory_order_relaxed)) {
        /* Sleep on the object and on the interrupt generation at once: the
         * kernel checks both values after queueing on both, so an interrupt
         * between our check above and the sleep cannot be lost. */
        struct futex_waitv v[2] = {
            {.val = val, .uaddr = (uintptr_t)addr, .flags = FUTEX_32},
            {.val = w->gen, .uaddr = (uintptr_t)mp__intr_word(), .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG},
        };
        struct timespec ts;
        long k = mp__sys.futex_waitv(v, 2, abs_ts(deadline, &ts));
        if (k < 0 && errno == ENOSYS) {
            atomic_store(&no_waitv, 1);
            r = wait_sliced(addr, val, deadline);
        } else {
            r = k < 0 && errno == ETIMEDOUT ? MP_ETIMEDOUT : 0;
        }
    } else {
        r = wait_sliced(addr, val, deadline);
    }
    if (mp__wait_interrupted(w))
        return MP_EINTR;
    return r;
}

int mp__futex_wake(_Atomic uint32_t *addr, int n)
{
    long r = mp__sys.futex(addr, FUTEX_WAKE, (uint32_t)n, NULL, 0);
    return r < 0 ? -errno : (int)r;
}

void mp__futex_wake_private(_Atomic uint32_t *addr, int n)
{
    mp__sys.futex(addr, FUTEX_WAKE_PRIVATE, (uint32_t)n, NULL, 0);
}
