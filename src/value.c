/*
 * Value and Array (multiprocessing.Value / Array): shared bytes and the RLock
 * that guards them, both in the arena, so any process of the family can take
 * the pointer. An Array is a value of n * sizeof(elem) bytes.
 */
#include "mproc.h"

#include <stdalign.h>
#include <stdint.h>
#include <string.h>

/* Shared layout: lives in the arena. The bytes follow the header, 16-aligned. */
struct mp_value {
    mp_rlock *lock; /* guards data for mp_value_get/set; an arena pointer */
    size_t size;
    alignas(16) unsigned char data[];
};
_Static_assert(sizeof(struct mp_value) == 16, "mp_value header is 16 bytes");

int mp_value_new(mp_value **out, size_t size, const void *init)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if (size == 0 || size > SIZE_MAX - sizeof(mp_value))
        return MP_EINVAL;
    mp_value *v = mp_shared_alloc(sizeof *v + size); /* zeroed */
    if (!v)
        return MP_ENOMEM;
    int err = mp_rlock_new(&v->lock);
    if (err) {
        mp_shared_free(v);
        return err;
    }
    v->size = size;
    if (init)
        memcpy(v->data, init, size);
    *out = v;
    return 0;
}

void *mp_value_ptr(mp_value *v) { return v ? v->data : NULL; }
size_t mp_value_size(const mp_value *v) { return v ? v->size : 0; }
mp_rlock *mp_value_lock(mp_value *v) { return v ? v->lock : NULL; }

/* Copies under the lock. If the last holder died (MP_EOWNERDEAD) the copy is
 * still made, and the code tells the caller the bytes may be half-written. */
static int locked_copy(mp_value *v, void *dst, const void *src)
{
    if (!v || !dst || !src)
        return MP_EINVAL;
    int r = mp_rlock_acquire(v->lock, MP_FOREVER);
    if (r != 0 && r != MP_EOWNERDEAD)
        return r;
    memcpy(dst, src, v->size);
    mp_rlock_release(v->lock);
    return r;
}

int mp_value_get(mp_value *v, void *dst) { return locked_copy(v, dst, v ? v->data : NULL); }
int mp_value_set(mp_value *v, const void *src) { return locked_copy(v, v ? v->data : NULL, src); }

void mp_value_free(mp_value *v)
{
    if (!v)
        return;
    mp_rlock_free(v->lock);
    mp_shared_free(v);
}
