/* Value and Array: DESIGN section 3. */
#include "harness.h"

#include <stdint.h>

struct inc { mp_value *v; int n; };

/* Adds n to the int value through its own lock. */
static int add_locked(void *arg)
{
    struct inc *a = arg;
    mp_rlock *l = mp_value_lock(a->v);
    for (int i = 0; i < a->n; i++) {
        if (mp_rlock_acquire(l, 10) != 0)
            return 1;
        (*(int *)mp_value_ptr(a->v))++;
        mp_rlock_release(l);
    }
    return 0;
}

TEST(value_counter_across_processes)
{
    mp_value *v;
    ASSERT_OK(mp_value_new(&v, sizeof(int), &(int){5}));
    ASSERT_EQ(*(int *)mp_value_ptr(v), 5);
    struct inc a = {v, 2000};
    mp_process *p[4];
    for (int i = 0; i < 4; i++) {
        ASSERT_OK(mp_process_new(&p[i], add_locked, &a, NULL));
        ASSERT_OK(mp_process_start(p[i]));
    }
    for (int i = 0; i < 4; i++) {
        ASSERT_OK(mp_process_join(p[i], 30));
        ASSERT_EQ(mp_process_exitcode(p[i]), 0);
        mp_process_free(p[i]);
    }
    int got;
    ASSERT_OK(mp_value_get(v, &got));
    ASSERT_EQ(got, 5 + 4 * 2000);
    mp_value_free(v);
}

static int fill_array(void *arg)
{
    mp_value *arr = arg;
    double *d = mp_value_ptr(arr);
    for (size_t i = 0; i < mp_value_size(arr) / sizeof *d; i++)
        d[i] = -d[i];
    return 0;
}

TEST(array_is_a_value_of_n_elements)
{
    double init[100];
    for (int i = 0; i < 100; i++)
        init[i] = i * 0.5;
    mp_value *arr;
    ASSERT_OK(mp_value_new(&arr, sizeof init, init));
    ASSERT_EQ(mp_value_size(arr), sizeof init);
    ASSERT_EQ((uintptr_t)mp_value_ptr(arr) % 16, 0);
    mp_process *p;
    ASSERT_OK(mp_process_new(&p, fill_array, arr, NULL));
    ASSERT_OK(mp_process_start(p));
    ASSERT_OK(mp_process_join(p, 10));
    double out[100];
    ASSERT_OK(mp_value_get(arr, out));
    for (int i = 0; i < 100; i++)
        ASSERT_TRUE(out[i] == -i * 0.5);
    ASSERT_OK(mp_value_set(arr, init));
    ASSERT_TRUE(((double *)mp_value_ptr(arr))[99] == 49.5);
    mp_process_free(p);
    mp_value_free(arr);
}

TEST(zeroed_without_init_and_bad_input)
{
    mp_value *v = (mp_value *)1;
    ASSERT_ERR(mp_value_new(&v, 0, NULL), MP_EINVAL);
    ASSERT_TRUE(v == NULL);
    ASSERT_ERR(mp_value_new(NULL, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_value_new(&v, SIZE_MAX, NULL), MP_EINVAL);
    ASSERT_OK(mp_value_new(&v, 64, NULL));
    unsigned char z[64], zero[64] = {0};
    ASSERT_OK(mp_value_get(v, z));
    ASSERT_TRUE(memcmp(z, zero, 64) == 0);
    ASSERT_ERR(mp_value_get(v, NULL), MP_EINVAL);
    ASSERT_ERR(mp_value_set(v, NULL), MP_EINVAL);
    ASSERT_ERR(mp_value_get(NULL, z), MP_EINVAL);
    ASSERT_TRUE(mp_value_ptr(NULL) == NULL);
    ASSERT_TRUE(mp_value_lock(NULL) == NULL);
    ASSERT_EQ(mp_value_size(NULL), 0);
    mp_value_free(NULL);
    /* the lock is an RLock: recursive */
    ASSERT_OK(mp_rlock_acquire(mp_value_lock(v), 1));
    ASSERT_OK(mp_value_set(v, zero));
    ASSERT_OK(mp_rlock_release(mp_value_lock(v)));
    mp_value_free(v);
}
