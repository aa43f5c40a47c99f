/* Monotonic time and deadlines. */
#include "os.h"

#include "mproc.h"

#include <math.h>
#include <time.h>

int64_t mp__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int mp__deadline(double timeout, int64_t *deadline)
{
    if (isnan(timeout))
        return MP_EINVAL;
    if (timeout < 0 || timeout > 1e9) { /* past 30 years: forever */
        *deadline = MP__NEVER;
        return 0;
    }
    *deadline = mp__now_ns() + (int64_t)(timeout * 1e9);
    return 0;
}
