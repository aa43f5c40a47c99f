/* A pool of 4 worker processes squares 1..5: [1, 4, 9, 16, 25].
 * The Python original (seed/pool_square.py):
 *
 *     import multiprocessing
 *
 *     def square(x):
 *         return x * x
 *
 *     if __name__ == "__main__":
 *         # Create a pool of 4 worker processes
 *         with multiprocessing.Pool(4) as pool:
 *             result = pool.map(square, [1, 2, 3, 4, 5])
 *         print(result)  # Output: [1, 4, 9, 16, 25]
 *
 * A task reads its item through in and writes its result through out; its
 * return value says whether the item succeeded. The pool copies the inputs
 * into shared memory once, the workers take them in chunks, and map returns
 * once every result is in result[]. Leaving Python's with-block terminates
 * the pool; mp_pool_free does the same.
 */
#include <mproc.h>
#include <stdio.h>

static int square(const void *in, void *out, void *ctx)
{
    (void)ctx; /* the map passes none */
    int x = *(const int *)in;
    *(int *)out = x * x;
    return 0; /* this item succeeded */
}

int main(void)
{
    int items[] = {1, 2, 3, 4, 5};
    enum { N = sizeof items / sizeof items[0] };
    int result[N];
    mp_pool *pool;
    int err;
    /* Create a pool of 4 worker processes. */
    if ((err = mp_pool_new(&pool, &(mp_pool_opts){ .processes = 4 })) < 0) {
        fprintf(stderr, "pool_square: %s\n", mp_strerror(err));
        return 1;
    }
    err = mp_pool_map(pool, square, items, sizeof items[0], result, sizeof result[0], N, NULL);
    mp_pool_free(pool); /* the end of the with-block */
    if (err < 0) {
        fprintf(stderr, "pool_square: map: %s\n", mp_strerror(err));
        return 1;
    }
    printf("[");
    for (int i = 0; i < N; i++)
        printf("%s%d", i ? ", " : "", result[i]);
    printf("]\n");
    return 0;
}
