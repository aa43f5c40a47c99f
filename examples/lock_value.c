/* Three processes add 5 each to a shared counter under a lock: it ends at 15.
 * Python's equivalent:
 *
 *     def add(counter, lock):
 *         for _ in range(5):
 *             with lock: counter.value += 1
 *     counter = Value('i', 0); lock = Lock()
 *     ps = [Process(target=add, args=(counter, lock)) for _ in range(3)]
 *     for p in ps: p.start()
 *     for p in ps: p.join()
 *     print(counter.value)
 *
 * The counter and the lock live in the family arena: the children get them
 * by pointer, and every process sees the same memory.
 */
#include <mproc.h>
#include <stdio.h>

struct shared {
    mp_value *counter;
    mp_lock *lock;
};

static int add(void *arg)
{
    struct shared *s = arg;
    for (int i = 0; i < 5; i++) {
        mp_lock_acquire(s->lock, MP_FOREVER);
        (*(int *)mp_value_ptr(s->counter))++;
        mp_lock_release(s->lock);
    }
    return 0;
}

int main(void)
{
    struct shared s;
    mp_process *p[3];
    int err = mp_value_new(&s.counter, sizeof(int), &(int){0});
    if (!err)
        err = mp_lock_new(&s.lock);
    for (int i = 0; i < 3 && !err; i++)
        if (!(err = mp_process_new(&p[i], add, &s, NULL)))
            err = mp_process_start(p[i]);
    if (err) {
        fprintf(stderr, "lock_value: %s\n", mp_strerror(err));
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        mp_process_join(p[i], MP_FOREVER);
        mp_process_free(p[i]);
    }
    printf("%d\n", *(int *)mp_value_ptr(s.counter));
    mp_lock_free(s.lock);
    mp_value_free(s.counter);
    return 0;
}
