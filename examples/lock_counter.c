/* Three processes add 5 each to a shared counter under a lock, printing it
 * as they go: Counter: 1 .. Counter: 15, then Final Counter: 15.
 * The Python original (seed/lock_counter.py):
 *
 *     import multiprocessing
 *
 *     def increment(counter, lock):
 *         for _ in range(5):
 *             with lock:
 *                 counter.value += 1
 *                 print(f"Counter: {counter.value}")
 *
 *     if __name__ == "__main__":
 *         counter = multiprocessing.Value('i', 0)  # Shared counter
 *         lock = multiprocessing.Lock()
 *         processes = [multiprocessing.Process(target=increment, args=(counter, lock))
 *                      for _ in range(3)]
 *         for p in processes:
 *             p.start()
 *         for p in processes:
 *             p.join()
 *         print(f"Final Counter: {counter.value}")
 *
 * The counter and the lock live in the family arena: the children get them
 * by pointer, and every process sees the same memory. Each child prints
 * while it holds the lock, so the lines come out in counting order.
 */
#include <mproc.h>
#include <stdio.h>

#define NPROC 3

/* What each child gets: the two shared objects (Python's args). */
struct shared {
    mp_value *counter;
    mp_lock *lock;
};

static int increment(void *arg)
{
    struct shared *s = arg;
    for (int i = 0; i < 5; i++) {
        int err = mp_lock_acquire(s->lock, MP_FOREVER); /* with lock: */
        if (err < 0) {
            fprintf(stderr, "lock_counter: acquire: %s\n", mp_strerror(err));
            return 1;
        }
        int *value = mp_value_ptr(s->counter);
        *value += 1;
        printf("Counter: %d\n", *value);
        fflush(stdout); /* out before the lock is released, even into a pipe */
        mp_lock_release(s->lock);
    }
    return 0;
}

int main(void)
{
    struct shared s;
    mp_process *p[NPROC];
    int err;
    /* Shared counter, starting at 0, and the lock. */
    if ((err = mp_value_new(&s.counter, sizeof(int), &(int){0})) < 0 ||
        (err = mp_lock_new(&s.lock)) < 0) {
        fprintf(stderr, "lock_counter: %s\n", mp_strerror(err));
        return 1;
    }
    for (int i = 0; i < NPROC; i++) {
        if ((err = mp_process_new(&p[i], increment, &s, NULL)) < 0 ||
            (err = mp_process_start(p[i])) < 0) {
            fprintf(stderr, "lock_counter: %s\n", mp_strerror(err));
            return 1;
        }
    }
    int failed = 0;
    for (int i = 0; i < NPROC; i++) {
        if ((err = mp_process_join(p[i], MP_FOREVER)) < 0) {
            fprintf(stderr, "lock_counter: join: %s\n", mp_strerror(err));
            return 1;
        }
        failed |= mp_process_exitcode(p[i]) != 0;
        mp_process_free(p[i]);
    }
    if (failed) {
        fprintf(stderr, "lock_counter: a child failed\n");
        return 1;
    }
    printf("Final Counter: %d\n", *(int *)mp_value_ptr(s.counter));
    mp_lock_free(s.lock);
    mp_value_free(s.counter);
    return 0;
}
