/* Value and Array: DESIGN section 3. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

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

/* ---- get and set copy under the value's lock ------------------------------- */

enum { VSIZE = 4096 }; /* many bytes: a copy of them takes a while */

static bool all_bytes(const unsigned char *b, size_t n, unsigned char want)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != want)
            return false;
    return true;
}

struct holder { mp_value *v; unsigned char before, after; };

/* Takes the value's lock and holds it until told; then checks that no one
 * wrote the bytes meanwhile (still `before`), writes `after`, lets go. */
static int hold_value_lock(void *arg)
{
    struct holder *h = arg;
    mp_rlock *l = mp_value_lock(h->v);
    if (mp_rlock_acquire(l, 10) != 0)
        return 1;
    t_send(&to_parent, 1);
    t_recv(&to_child, 30);
    unsigned char *d = mp_value_ptr(h->v);
    bool untouched = all_bytes(d, mp_value_size(h->v), h->before);
    memset(d, h->after, mp_value_size(h->v));
    if (mp_rlock_release(l) != 0)
        return 3;
    return untouched ? 0 : 2;
}

struct copier { mp_value *v; unsigned char *buf; bool set; t_chan done; };

/* One mp_value_get or mp_value_set; says its result on `done`. */
static void *copy_once(void *arg)
{
    struct copier *c = arg;
    int r = c->set ? mp_value_set(c->v, c->buf) : mp_value_get(c->v, c->buf);
    t_send(&c->done, r);
    return NULL;
}

/* Another process holds the value's lock; a get (or set) in a thread of this
 * one must wait for it: not return while it is held, and copy only after
 * the holder's own write (which it makes just before letting go). */
static void copy_waits_for_the_holder(bool set)
{
    static unsigned char init[VSIZE], buf[VSIZE], out[VSIZE];
    memset(init, 0x11, VSIZE);
    mp_value *v;
    ASSERT_OK(mp_value_new(&v, VSIZE, init));
    chans_open();
    struct holder h = {v, 0x11, 0x42};
    mp_process *p = t_start(hold_value_lock, &h, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1); /* it holds the lock */

    memset(buf, set ? 0x17 : 0, VSIZE);
    struct copier c = {v, buf, set, t_chan_new()};
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, NULL, copy_once, &c), 0);
    int r;
    if (t_try_recv(&c.done, 0.05, &r)) /* a negative check: any wait will do */
        T_FAIL("mp_value_%s returned %d while another process held the value's lock",
               set ? "set" : "get", r);
    t_send(&to_child, 0); /* check the bytes, write 0x42, let go */
    ASSERT_EQ(t_recv(&c.done, 10), 0);
    ASSERT_EQ(pthread_join(t, NULL), 0);
    t_join(p, 0); /* 2: the set wrote while the holder held the lock */

    ASSERT_OK(mp_value_get(v, out));
    if (set) {
        ASSERT_TRUE(all_bytes(out, VSIZE, 0x17)); /* written after the holder's 0x42 */
    } else {
        ASSERT_TRUE(all_bytes(buf, VSIZE, 0x42)); /* read after the holder's write */
        ASSERT_TRUE(all_bytes(out, VSIZE, 0x42));
    }
    t_chan_close(&c.done);
    chans_close();
    mp_value_free(v);
}

TEST(value_get_waits_while_another_process_holds_the_lock)
{
    copy_waits_for_the_holder(false);
}

TEST(value_set_waits_while_another_process_holds_the_lock)
{
    copy_waits_for_the_holder(true);
}

enum { TEAR_READS = 20000, TEAR_WRITES_MAX = 1000000 };

struct writer { mp_value *v; _Atomic int *stop; };

/* Sets the value again and again, every byte the round's number, until told
 * to stop (or TEAR_WRITES_MAX rounds). */
static int set_rounds(void *arg)
{
    struct writer *w = arg;
    static unsigned char b[VSIZE];
    for (int i = 1; i <= TEAR_WRITES_MAX && !atomic_load(w->stop); i++) {
        memset(b, (unsigned char)i, VSIZE);
        if (mp_value_set(w->v, b) != 0)
            return 1;
        if (i == 1)
            t_send(&to_parent, 1);
    }
    return 0;
}

TEST(value_get_never_sees_a_half_written_set)
{
    mp_value *v;
    ASSERT_OK(mp_value_new(&v, VSIZE, NULL));
    _Atomic int *stop = mp_shared_alloc(sizeof *stop);
    ASSERT_TRUE(stop != NULL);
    chans_open();
    struct writer w = {v, stop};
    mp_process *p = t_start(set_rounds, &w, NULL);
    ASSERT_EQ(t_recv(&to_parent, 10), 1); /* it is writing */
    static unsigned char b[VSIZE];
    int changes = 0;
    unsigned char last = 0;
    for (int n = 0; n < TEAR_READS; n++) {
        ASSERT_OK(mp_value_get(v, b));
        for (size_t i = 1; i < VSIZE; i++)
            if (b[i] != b[0])
                T_FAIL("read %d: a torn value: byte 0 is %d, byte %zu is %d", n, b[0], i, b[i]);
        changes += b[0] != last;
        last = b[0];
    }
    atomic_store(stop, 1);
    t_join(p, 0);
    printf("%d reads saw %d changes\n", TEAR_READS, changes);
    chans_close();
    mp_shared_free((void *)stop);
    mp_value_free(v);
}
