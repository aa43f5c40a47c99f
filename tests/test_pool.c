/* Pools: map, apply, async, imap; crashes, hangs and timeouts of workers;
 * teardown; bad input. */
#include "harness.h"
#include "os/os.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static mp_pool *new_pool(int n, const mp_pool_opts *o)
{
    mp_pool_opts d = o ? *o : (mp_pool_opts){0};
    d.processes = n;
    mp_pool *p;
    ASSERT_OK(mp_pool_new(&p, &d));
    return p;
}

/* Frees the pool and checks that it left no child and no descriptor. */
static void free_pool_clean(mp_pool *p, int fds_before)
{
    mp_pool_free(p);
    ASSERT_EQ(t_await_no_children(2, NULL), 0);
    ASSERT_EQ(t_count_fds(), fds_before);
}

static int square(const void *in, void *out, void *ctx)
{
    (void)ctx;
    int64_t x = *(const int64_t *)in;
    *(int64_t *)out = x * x;
    return 0;
}

/* ---- map: results and order ------------------------------------------ */

static void map_check(mp_pool *p, size_t n, size_t chunk, bool shared)
{
    int64_t *in = shared ? mp_shared_calloc(n + 1, 8) : calloc(n + 1, 8);
    int64_t *out = shared ? mp_shared_calloc(n + 1, 8) : calloc(n + 1, 8);
    ASSERT_TRUE(in && out);
    for (size_t i = 0; i < n; i++) {
        in[i] = (int64_t)i - 7;
        out[i] = -1;
    }
    out[n] = 12345; /* past the end: untouched */
    ASSERT_OK(mp_pool_map(p, square, n ? in : NULL, n ? 8 : 0, n ? out : NULL, n ? 8 : 0, n,
                          &(mp_map_opts){.chunksize = chunk}));
    for (size_t i = 0; i < n; i++)
        if (out[i] != in[i] * in[i])
            T_FAIL("n %zu chunk %zu: out[%zu] = %lld", n, chunk, i, (long long)out[i]);
    ASSERT_EQ(out[n], 12345);
    if (shared) {
        mp_shared_free(in);
        mp_shared_free(out);
    } else {
        free(in);
        free(out);
    }
}

TEST(map_results_in_order_for_every_size_and_chunksize)
{
    mp_pool *p = new_pool(3, NULL);
    size_t ns[] = {0, 1, 5, 100000};
    for (size_t a = 0; a < 4; a++) {
        size_t cs[] = {0, 1, 7, ns[a] + 10};
        for (size_t b = 0; b < 4; b++) {
            map_check(p, ns[a], cs[b], false);
            map_check(p, ns[a], cs[b], true);
        }
    }
    mp_pool_free(p);
}

TEST(classic_square_with_4_workers)
{
    mp_pool *p = new_pool(4, NULL);
    int64_t in[] = {1, 2, 3, 4, 5}, out[5];
    ASSERT_OK(mp_pool_map(p, square, in, sizeof in[0], out, sizeof out[0], 5, NULL));
    int64_t want[] = {1, 4, 9, 16, 25};
    ASSERT_EQ(memcmp(out, want, sizeof want), 0);
    mp_pool_free(p);
}

struct pair { int32_t a, b; };
struct sums { int64_t sum; int32_t prod; int32_t worker; };

static int starfn(const void *in, void *out, void *ctx)
{
    const struct pair *x = in;
    struct sums *o = out;
    o->sum = (int64_t)x->a + x->b + *(int *)ctx;
    o->prod = x->a * x->b;
    o->worker = (int32_t)getpid();
    return 0;
}

TEST(starmap_structs_in_and_out_with_ctx)
{
    static int bonus = 1000; /* exists before the pool: the workers see it */
    mp_pool *p = new_pool(2, NULL);
    enum { N = 1000 };
    struct pair in[N];
    struct sums out[N];
    for (int i = 0; i < N; i++)
        in[i] = (struct pair){i, 2 * i};
    ASSERT_OK(mp_pool_map(p, starfn, in, sizeof in[0], out, sizeof out[0], N,
                          &(mp_map_opts){.ctx = &bonus, .chunksize = 13}));
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(out[i].sum, 3 * i + 1000);
        ASSERT_EQ(out[i].prod, 2 * i * i);
        ASSERT_NE(out[i].worker, getpid());
    }
    mp_pool_free(p);
}

TEST(apply_runs_one_item_in_a_worker)
{
    mp_pool *p = new_pool(2, NULL);
    int64_t x = 12, y = 0;
    ASSERT_OK(mp_pool_apply(p, square, &x, sizeof x, &y, sizeof y));
    ASSERT_EQ(y, 144);
    mp_pool_free(p);
}

static int no_data(const void *in, void *out, void *ctx)
{
    (void)in;
    (void)out;
    atomic_fetch_add((_Atomic int *)ctx, 1);
    return 0;
}

TEST(map_without_inputs_or_outputs)
{
    mp_pool *p = new_pool(2, NULL);
    _Atomic int *count = mp_shared_alloc(sizeof *count);
    ASSERT_OK(mp_pool_map(p, no_data, NULL, 0, NULL, 0, 500, &(mp_map_opts){.ctx = (void *)count}));
    ASSERT_EQ(atomic_load(count), 500);
    mp_shared_free((void *)count);
    mp_pool_free(p);
}

/* ---- tasks that wait for the test ------------------------------------ */

struct gate {
    mp_event *go;
    _Atomic int started;
    _Atomic int ran;
};

static struct gate *gate_new(void)
{
    struct gate *g = mp_shared_alloc(sizeof *g);
    ASSERT_TRUE(g != NULL);
    ASSERT_OK(mp_event_new(&g->go));
    return g;
}

static void gate_free(struct gate *g)
{
    mp_event_free(g->go);
    mp_shared_free(g);
}

/* Waits at the gate when its input is negative; returns the input. */
static int gated(const void *in, void *out, void *ctx)
{
    struct gate *g = ctx;
    int x = *(const int *)in;
    if (x < 0) {
        atomic_fetch_add(&g->started, 1);
        if (mp_event_wait(g->go, 60) != 0)
            return 99;
        x = -x;
    }
    atomic_fetch_add(&g->ran, 1);
    *(int *)out = x;
    return 0;
}

static void await_started(struct gate *g, int n)
{
    double end = t_now() + 10 * t_scale();
    while (atomic_load(&g->started) < n) {
        if (t_now() > end)
            T_FAIL("tasks did not start");
        usleep(1000);
    }
}

TEST(async_ready_wait_get_with_timeouts)
{
    mp_pool *p = new_pool(2, NULL);
    struct gate *g = gate_new();
    int in = -5, out = 0;
    mp_async *a;
    int64_t sx = 6, sy = 0;
    ASSERT_OK(mp_pool_apply_async(&a, p, square, &sx, sizeof sx, &sy, sizeof sy));
    ASSERT_OK(mp_async_get(a, 30));
    ASSERT_EQ(sy, 36);
    mp_async_free(a);
    ASSERT_ERR(mp_pool_map_async(&a, p, gated, &in, sizeof in, &out, sizeof out, 1,
                                 &(mp_map_opts){.ctx = g, .task_timeout = NAN}),
               MP_EINVAL);
    ASSERT_TRUE(a == NULL);
    ASSERT_OK(mp_pool_map_async(&a, p, gated, &in, sizeof in, &out, sizeof out, 1,
                                &(mp_map_opts){.ctx = g}));
    await_started(g, 1);
    ASSERT_TRUE(!mp_async_ready(a));
    ASSERT_ERR(mp_async_wait(a, 0), MP_ETIMEDOUT);
    ASSERT_ERR(mp_async_wait(a, 0.05), MP_ETIMEDOUT);
    ASSERT_ERR(mp_async_get(a, 0.01), MP_ETIMEDOUT);
    ASSERT_ERR(mp_async_wait(a, NAN), MP_EINVAL);
    ASSERT_OK(mp_event_set(g->go));
    ASSERT_OK(mp_async_get(a, 30));
    ASSERT_EQ(out, 5);
    ASSERT_TRUE(mp_async_ready(a));
    ASSERT_OK(mp_async_wait(a, 0));
    mp_async_free(a);
    gate_free(g);
    mp_pool_free(p);
}

TEST(wait_any_gives_the_ready_one)
{
    mp_pool *p = new_pool(2, NULL);
    struct gate *g = gate_new();
    int in[2] = {-1, 7}, out[2] = {0, 0};
    mp_async *a[2];
    mp_map_opts o = {.ctx = g};
    ASSERT_OK(mp_pool_map_async(&a[0], p, gated, &in[0], sizeof(int), &out[0], sizeof(int), 1, &o));
    await_started(g, 1);
    ASSERT_OK(mp_pool_map_async(&a[1], p, gated, &in[1], sizeof(int), &out[1], sizeof(int), 1, &o));
    ASSERT_EQ(mp_async_wait_any(a, 2, 30), 1);
    ASSERT_EQ(out[1], 7);
    ASSERT_ERR(mp_async_wait_any(a, 1, 0.02), MP_ETIMEDOUT);
    ASSERT_ERR(mp_async_wait_any(a, 0, 0), MP_EINVAL);
    ASSERT_OK(mp_event_set(g->go));
    ASSERT_EQ(mp_async_wait_any(a, 1, 30), 0);
    ASSERT_EQ(out[0], 1);
    mp_async_free(a[0]);
    mp_async_free(a[1]);
    gate_free(g);
    mp_pool_free(p);
}

TEST(many_async_applies_in_bulk)
{
    mp_pool *p = new_pool(2, NULL);
    enum { N = 20000 };
    mp_async **a = calloc(N, sizeof *a);
    int64_t *in = calloc(N, 8), *out = calloc(N, 8);
    for (int i = 0; i < N; i++) {
        in[i] = i;
        ASSERT_OK(mp_pool_apply_async(&a[i], p, square, &in[i], 8, &out[i], 8));
    }
    for (int i = 0; i < N; i++) {
        ASSERT_OK(mp_async_get(a[i], 60));
        ASSERT_EQ(out[i], (int64_t)i * i);
        mp_async_free(a[i]);
    }
    free(a);
    free(in);
    free(out);
    mp_pool_free(p);
}

/* ---- imap ---------------------------------------------------------------- */

static void imap_check(bool ordered, size_t chunk)
{
    mp_pool *p = new_pool(3, NULL);
    enum { N = 5000 };
    int64_t *in = malloc(N * 8);
    for (int i = 0; i < N; i++)
        in[i] = i;
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, square, in, 8, 8, N, &(mp_map_opts){.chunksize = chunk}, ordered));
    char *seen = calloc(N, 1);
    for (size_t k = 0; k < N; k++) {
        int64_t v;
        size_t idx;
        ASSERT_OK(mp_imap_next(it, &v, &idx, 30));
        ASSERT_LT(idx, (size_t)N);
        if (ordered)
            ASSERT_EQ(idx, k);
        ASSERT_EQ(seen[idx], 0);
        seen[idx] = 1;
        ASSERT_EQ(v, (int64_t)idx * (int64_t)idx);
    }
    int64_t v;
    ASSERT_ERR(mp_imap_next(it, &v, NULL, 1), MP_EDONE);
    ASSERT_ERR(mp_imap_next(it, &v, NULL, 1), MP_EDONE);
    mp_imap_free(it);
    free(seen);
    free(in);
    mp_pool_free(p);
}

TEST(imap_ordered_gives_every_index_in_order) { imap_check(true, 0); imap_check(true, 3); }
TEST(imap_unordered_gives_every_index_once) { imap_check(false, 0); imap_check(false, 3); }

static int count_started(const void *in, void *out, void *ctx)
{
    atomic_fetch_add((_Atomic long *)ctx, 1);
    *(int64_t *)out = *(const int64_t *)in;
    return 0;
}

TEST(imap_slow_consumer_holds_back_dispatch)
{
    mp_pool *p = new_pool(2, NULL);
    enum { N = 100000 };
    int64_t *in = mp_shared_calloc(N, 8);
    for (int i = 0; i < N; i++)
        in[i] = i;
    _Atomic long *started = mp_shared_alloc(sizeof *started);
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, count_started, in, 8, 8, N,
                           &(mp_map_opts){.ctx = (void *)started}, true));
    long most_ahead = 0;
    for (long k = 0; k < N; k++) {
        int64_t v;
        ASSERT_OK(mp_imap_next(it, &v, NULL, 30));
        ASSERT_EQ(v, k);
        if (k % 1000 == 0)
            usleep(2000); /* slow: workers would finish everything meanwhile */
        long ahead = atomic_load(started) - k;
        most_ahead = ahead > most_ahead ? ahead : most_ahead;
    }
    /* the window holds at most a few thousand items, not the 100,000 */
    ASSERT_LE(most_ahead, 20000);
    mp_imap_free(it);
    mp_shared_free((void *)started);
    mp_shared_free(in);
    mp_pool_free(p);
}

TEST(imap_free_before_the_end_cancels_the_rest)
{
    mp_pool *p = new_pool(2, NULL);
    enum { N = 100000 };
    int64_t *in = calloc(N, 8);
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, square, in, 8, 8, N, NULL, false));
    int64_t v;
    ASSERT_OK(mp_imap_next(it, &v, NULL, 30));
    mp_imap_free(it);
    int64_t x = 3, y;
    ASSERT_OK(mp_pool_apply(p, square, &x, 8, &y, 8));
    ASSERT_EQ(y, 9);
    free(in);
    mp_pool_free(p);
}

/* ---- initializer, maxtasksperchild ---------------------------------------- */

static _Atomic int *init_count;
static int initializer(void *arg)
{
    atomic_fetch_add(init_count, 1);
    return arg ? 1 : 0;
}

static int who(const void *in, void *out, void *ctx)
{
    (void)in;
    (void)ctx;
    *(pid_t *)out = getpid();
    return 0;
}

TEST(initializer_runs_once_per_worker)
{
    init_count = mp_shared_alloc(sizeof *init_count);
    mp_pool *p = new_pool(3, &(mp_pool_opts){.initializer = initializer});
    ASSERT_EQ(atomic_load(init_count), 3);
    pid_t out[300];
    ASSERT_OK(mp_pool_map(p, who, NULL, 0, out, sizeof out[0], 300, &(mp_map_opts){.chunksize = 1}));
    ASSERT_EQ(atomic_load(init_count), 3);
    mp_pool_free(p);
    mp_shared_free((void *)init_count);
}

TEST(initializer_failing_fails_pool_new)
{
    init_count = mp_shared_alloc(sizeof *init_count);
    int fds = t_count_fds_after_a_pool();
    mp_pool *p = (mp_pool *)1;
    ASSERT_ERR(mp_pool_new(&p, &(mp_pool_opts){.processes = 2, .initializer = initializer,
                                                 .initarg = (void *)1}),
               MP_ETASK);
    ASSERT_TRUE(p == NULL);
    ASSERT_EQ(t_count_fds(), fds);
    mp_shared_free((void *)init_count);
}

TEST(maxtasksperchild_gives_new_workers)
{
    mp_pool *p = new_pool(1, &(mp_pool_opts){.maxtasksperchild = 1});
    pid_t out[6];
    ASSERT_OK(mp_pool_map(p, who, NULL, 0, out, sizeof out[0], 6, &(mp_map_opts){.chunksize = 1}));
    for (int i = 0; i < 6; i++)
        for (int k = 0; k < i; k++)
            ASSERT_NE(out[i], out[k]);
    mp_pool_free(p);
}

/* ---- failures ------------------------------------------------------------ */

static int fail_odd(const void *in, void *out, void *ctx)
{
    (void)ctx;
    int x = *(const int *)in;
    *(int *)out = x;
    return x % 2 ? 40 + x : 0;
}

TEST(task_returning_nonzero_gives_etask_and_status)
{
    mp_pool *p = new_pool(2, NULL);
    int in[10], out[10], status[10];
    for (int i = 0; i < 10; i++)
        in[i] = i;
    ASSERT_ERR(mp_pool_map(p, fail_odd, in, sizeof(int), out, sizeof(int), 10,
                           &(mp_map_opts){.status = status, .chunksize = 3}),
               MP_ETASK);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(out[i], i);
        ASSERT_EQ(status[i], i % 2 ? 40 + i : 0);
    }
    memset(out, 0, sizeof out); /* without status: the first failure is still reported */
    ASSERT_ERR(mp_pool_map(p, fail_odd, in, sizeof(int), out, sizeof(int), 10,
                           &(mp_map_opts){.chunksize = 3}),
               MP_ETASK);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(out[i], i);
    int even[3] = {0, 2, 4};
    ASSERT_OK(mp_pool_map(p, fail_odd, even, sizeof(int), out, sizeof(int), 3, NULL));
    int one = 3, o;
    ASSERT_ERR(mp_pool_apply(p, fail_odd, &one, sizeof one, &o, sizeof o), MP_ETASK);
    mp_pool_free(p);
}

enum { CRASH_SEGV = 1, CRASH_ABORT, CRASH_KILL, CRASH_EXIT, CRASH_HANG };

static volatile int *volatile bad_address; /* NULL */

/* Item 7 crashes the way ctx says; the others square. */
static int crashy(const void *in, void *out, void *ctx)
{
    int x = *(const int *)in, how = *(const int *)ctx;
    if (x == 7 || how < 0) {
        switch (how < 0 ? -how : how) {
        case CRASH_SEGV: *bad_address = 1; break;
        case CRASH_ABORT: abort();
        case CRASH_KILL: raise(SIGKILL); break;
        case CRASH_EXIT: exit(3);
        case CRASH_HANG: for (;;) pause();
        }
    }
    *(int *)out = x * x;
    return 0;
}

static void crash_case(int how)
{
    int fds = t_count_fds_after_a_pool();
    mp_pool *p = new_pool(2, NULL);
    enum { N = 20 };
    int in[N], out[N], status[N];
    for (int i = 0; i < N; i++) {
        in[i] = i;
        out[i] = -1;
    }
    int expect = how == CRASH_HANG ? MP_ETIMEDOUT : MP_EWORKER;
    mp_map_opts o = {.ctx = &how, .status = status, .chunksize = 5,
                     .task_timeout = how == CRASH_HANG ? 0.3 : 0};
    ASSERT_ERR(mp_pool_map(p, crashy, in, sizeof(int), out, sizeof(int), N, &o), expect);
    for (int i = 0; i < N; i++) {
        if (i == 7) {
            ASSERT_EQ(status[i], expect);
            continue;
        }
        ASSERT_EQ(status[i], 0);
        ASSERT_EQ(out[i], i * i);
    }
    /* usable for another map */
    int zero = 0;
    o.ctx = &zero;
    ASSERT_OK(mp_pool_map(p, crashy, in, sizeof(int), out, sizeof(int), N, &o));
    free_pool_clean(p, fds);
}

TEST(segfault_fails_its_item_only) { crash_case(CRASH_SEGV); }
TEST(abort_fails_its_item_only) { crash_case(CRASH_ABORT); }
TEST(sigkill_fails_its_item_only) { crash_case(CRASH_KILL); }
TEST(exit_3_fails_its_item_only) { crash_case(CRASH_EXIT); }
TEST(hang_past_task_timeout_fails_its_item_only) { crash_case(CRASH_HANG); }

TEST(every_item_crashing_still_ends_with_every_item_reported)
{
    static int how = -CRASH_ABORT; /* before the pool: the workers see it */
    mp_pool *p = new_pool(2, NULL);
    enum { N = 30 };
    int in[N], out[N], status[N];
    for (int i = 0; i < N; i++)
        in[i] = i;
    ASSERT_ERR(mp_pool_map(p, crashy, in, sizeof(int), out, sizeof(int), N,
                           &(mp_map_opts){.ctx = &how, .status = status}),
               MP_EWORKER);
    for (int i = 0; i < N; i++)
        ASSERT_EQ(status[i], MP_EWORKER);
    int64_t x = 4, y = 0;
    ASSERT_OK(mp_pool_apply(p, square, &x, 8, &y, 8));
    ASSERT_EQ(y, 16);
    mp_pool_free(p);
}

static int spin_forever(const void *in, void *out, void *ctx)
{
    (void)in;
    (void)out;
    (void)ctx;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL); /* SIGTERM cannot stop it */
    for (volatile unsigned long i = 0;; i++)
        ;
    return 0;
}

TEST(terminate_while_busy_is_prompt_and_ends_the_results)
{
    int fds = t_count_fds_after_a_pool();
    mp_pool *p = new_pool(2, NULL);
    mp_async *a;
    ASSERT_OK(mp_pool_map_async(&a, p, spin_forever, NULL, 0, NULL, 0, 4, NULL));
    ASSERT_ERR(mp_async_wait(a, 0.1), MP_ETIMEDOUT);
    double t0 = t_now();
    ASSERT_OK(mp_pool_terminate(p));
    ASSERT_LT(t_now() - t0, 2.0 * t_scale());
    ASSERT_ERR(mp_async_wait(a, 5), MP_ECLOSED);
    ASSERT_ERR(mp_async_get(a, 5), MP_ECLOSED);
    ASSERT_ERR(mp_pool_map(p, square, NULL, 0, NULL, 0, 0, NULL), MP_ESTATE);
    ASSERT_OK(mp_pool_join(p, 5));
    mp_async_free(a);
    free_pool_clean(p, fds);
}

TEST(free_of_a_busy_pool_is_bounded)
{
    int fds = t_count_fds_after_a_pool();
    mp_pool *p = new_pool(3, NULL);
    mp_async *a;
    ASSERT_OK(mp_pool_map_async(&a, p, spin_forever, NULL, 0, NULL, 0, 6, NULL));
    mp_async_free(a);
    double t0 = t_now();
    free_pool_clean(p, fds);
    ASSERT_LT(t_now() - t0, 3.0 * t_scale());
}

/* The pool's owner is SIGKILLed during a map: no worker survives it. */
static pid_t *worker_pids; /* MAP_SHARED: seen by the owner's workers */

static int record_and_spin(const void *in, void *out, void *ctx)
{
    (void)out;
    (void)ctx;
    worker_pids[*(const int *)in] = getpid();
    for (;;)
        pause();
    return 0;
}

static int owner_main(void *arg)
{
    (void)arg;
    mp_pool *p;
    if (mp_pool_new(&p, &(mp_pool_opts){.processes = 3}) != 0)
        return 1;
    int in[3] = {0, 1, 2};
    mp_pool_map(p, record_and_spin, in, sizeof(int), NULL, 0, 3, &(mp_map_opts){.chunksize = 1});
    return 2;
}

TEST(parent_killed_during_map_takes_its_workers)
{
    worker_pids = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_TRUE(worker_pids != MAP_FAILED);
    mp_process *owner = t_start(owner_main, NULL, NULL);
    double end = t_now() + 20 * t_scale();
    while (!worker_pids[0] || !worker_pids[1] || !worker_pids[2]) {
        if (t_now() > end)
            T_FAIL("the workers did not start");
        usleep(1000);
    }
    ASSERT_OK(mp_process_kill(owner));
    t_join(owner, -SIGKILL);
    for (int i = 0; i < 3; i++)
        if (!t_wait_gone(worker_pids[i], 2.0))
            T_FAIL("worker %d outlived its pool's owner", (int)worker_pids[i]);
    munmap(worker_pids, 4096);
}

static void *make_pool_thread(void *arg)
{
    *(mp_pool **)arg = new_pool(2, NULL);
    return NULL;
}

TEST(pool_made_in_a_thread_that_ended_still_works)
{
    mp_pool *p = NULL;
    t_join_thread(t_thread(make_pool_thread, &p));
    map_check(p, 1000, 0, false);
    int *how = mp_shared_alloc(sizeof *how); /* made after the pool: in the arena */
    *how = CRASH_KILL;
    int in[10], out[10], status[10]; /* a replacement, forked by the pool */
    for (int i = 0; i < 10; i++)
        in[i] = i;
    ASSERT_ERR(mp_pool_map(p, crashy, in, sizeof(int), out, sizeof(int), 10,
                           &(mp_map_opts){.ctx = how, .status = status}),
               MP_EWORKER);
    ASSERT_EQ(status[7], MP_EWORKER);
    map_check(p, 1000, 1, true);
    mp_shared_free(how);
    mp_shared_free(how);
    mp_pool_free(p);
}

/* ---- interrupts ------------------------------------------------------------ */

struct interrupter {
    struct gate *g;
    int n;
};

static void *interrupt_when_started(void *arg)
{
    struct interrupter *x = arg;
    await_started(x->g, x->n);
    mp_interrupt();
    return NULL;
}

TEST(interrupt_during_map_returns_eintr_and_leaves_the_pool_usable)
{
    mp_pool *p = new_pool(2, NULL);
    struct gate *g = gate_new();
    int in[4] = {-1, -2, 3, 4}, out[4];
    struct interrupter x = {g, 2};
    pthread_t t = t_thread(interrupt_when_started, &x);
    ASSERT_ERR(mp_pool_map(p, gated, in, sizeof(int), out, sizeof(int), 4,
                           &(mp_map_opts){.ctx = g, .chunksize = 1}),
               MP_EINTR);
    t_join_thread(t);
    ASSERT_OK(mp_event_set(g->go));
    int64_t v = 9, w;
    ASSERT_OK(mp_pool_apply(p, square, &v, 8, &w, 8));
    ASSERT_EQ(w, 81);
    gate_free(g);
    mp_pool_free(p);
}

TEST(interrupt_during_imap_and_async_waits)
{
    mp_pool *p = new_pool(2, NULL);
    struct gate *g = gate_new();
    int in[2] = {-1, 2}, out[2];
    mp_async *a;
    ASSERT_OK(mp_pool_map_async(&a, p, gated, in, sizeof(int), out, sizeof(int), 1,
                                &(mp_map_opts){.ctx = g}));
    struct interrupter x = {g, 1};
    pthread_t t = t_thread(interrupt_when_started, &x);
    ASSERT_ERR(mp_async_wait(a, 30), MP_EINTR);
    t_join_thread(t);
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, gated, in, sizeof(int), sizeof(int), 1,
                           &(mp_map_opts){.ctx = g}, true));
    x.n = 2;
    t = t_thread(interrupt_when_started, &x);
    int v;
    size_t idx = 0;
    ASSERT_ERR(mp_imap_next(it, &v, &idx, 30), MP_EINTR);
    ASSERT_EQ(idx, SIZE_MAX);
    t_join_thread(t);
    ASSERT_ERR(mp_imap_next(it, &v, &idx, 0.01), MP_ETIMEDOUT);
    ASSERT_EQ(idx, SIZE_MAX);
    ASSERT_OK(mp_event_set(g->go));
    ASSERT_OK(mp_imap_next(it, &v, NULL, 30));
    ASSERT_EQ(v, 1);
    ASSERT_OK(mp_async_get(a, 30));
    ASSERT_EQ(out[0], 1);
    mp_imap_free(it);
    mp_async_free(a);
    gate_free(g);
    mp_pool_free(p);
}

/* ---- close, join, bad input ------------------------------------------------ */

TEST(close_then_join_waits_for_the_work)
{
    int fds = t_count_fds_after_a_pool();
    mp_pool *p = new_pool(2, NULL);
    ASSERT_ERR(mp_pool_join(p, 0), MP_ESTATE);
    enum { N = 10000 };
    int64_t *in = calloc(N, 8), *out = calloc(N, 8);
    for (int i = 0; i < N; i++)
        in[i] = i;
    mp_async *a;
    ASSERT_OK(mp_pool_map_async(&a, p, square, in, 8, out, 8, N, &(mp_map_opts){.chunksize = 10}));
    ASSERT_OK(mp_pool_close(p));
    ASSERT_ERR(mp_pool_map(p, square, in, 8, out, 8, 1, NULL), MP_ESTATE);
    ASSERT_OK(mp_pool_join(p, 30));
    ASSERT_OK(mp_async_get(a, 0));
    for (int i = 0; i < N; i++)
        ASSERT_EQ(out[i], (int64_t)i * i);
    mp_async_free(a);
    free(in);
    free(out);
    free_pool_clean(p, fds);
}

TEST(bad_input_gets_a_code)
{
    mp_pool *p;
    ASSERT_ERR(mp_pool_new(NULL, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_new(&p, &(mp_pool_opts){.processes = -1}), MP_EINVAL);
    ASSERT_ERR(mp_pool_new(&p, &(mp_pool_opts){.processes = 100000}), MP_EINVAL);
    p = new_pool(1, NULL);
    int64_t in[4] = {0}, out[4];
    ASSERT_ERR(mp_pool_map(p, NULL, in, 8, out, 8, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, NULL, 8, out, 8, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, in, 0, out, 8, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, in, 8, NULL, 8, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, in, 8, out, 0, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, in, SIZE_MAX / 2, out, 8, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(NULL, square, in, 8, out, 8, 4, NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, in, 8, out, 8, 4, &(mp_map_opts){.task_timeout = NAN}),
               MP_EINVAL);
    ASSERT_ERR(mp_pool_map(p, square, in, 8, out, 8, 4, &(mp_map_opts){.task_timeout = -1}),
               MP_EINVAL);
    ASSERT_ERR(mp_pool_apply(p, NULL, in, 8, out, 8), MP_EINVAL);
    mp_async *a;
    ASSERT_ERR(mp_pool_apply_async(NULL, p, square, in, 8, out, 8), MP_EINVAL);
    ASSERT_ERR(mp_pool_apply_async(&a, p, NULL, in, 8, out, 8), MP_EINVAL);
    mp_imap *it;
    ASSERT_ERR(mp_pool_imap(&it, p, NULL, in, 8, 8, 4, NULL, true), MP_EINVAL);
    ASSERT_ERR(mp_pool_imap(NULL, p, square, in, 8, 8, 4, NULL, true), MP_EINVAL);
    ASSERT_OK(mp_pool_imap(&it, p, square, in, 8, 8, 4, NULL, true));
    ASSERT_ERR(mp_imap_next(it, NULL, NULL, 1), MP_EINVAL); /* out_size 8 needs out */
    ASSERT_ERR(mp_imap_next(it, out, NULL, NAN), MP_EINVAL);
    mp_imap_free(it);
    ASSERT_ERR(mp_async_wait(NULL, 0), MP_EINVAL);
    ASSERT_TRUE(!mp_async_ready(NULL));
    ASSERT_ERR(mp_imap_next(NULL, out, NULL, 0), MP_EINVAL);
    ASSERT_ERR(mp_pool_join(p, NAN), MP_EINVAL);
    ASSERT_ERR(mp_pool_close(NULL), MP_EINVAL);
    ASSERT_ERR(mp_pool_terminate(NULL), MP_EINVAL);
    mp_async_free(NULL);
    mp_imap_free(NULL);
    mp_pool_free(NULL);
    ASSERT_OK(mp_pool_close(p));
    ASSERT_ERR(mp_pool_map(p, square, in, 8, out, 8, 4, NULL), MP_ESTATE);
    ASSERT_ERR(mp_pool_apply_async(&a, p, square, in, 8, out, 8), MP_ESTATE);
    ASSERT_ERR(mp_pool_imap(&it, p, square, in, 8, 8, 4, NULL, true), MP_ESTATE);
    ASSERT_OK(mp_pool_join(p, 10));
    mp_pool_free(p);
}

/* ---- progress, oversubscription, replacements ------------------------------- */

struct seen_progress {
    size_t calls, last, total, finals;
    bool backwards;
};

static void note_progress(size_t done, size_t total, void *arg)
{
    struct seen_progress *s = arg;
    s->calls++;
    s->backwards |= done < s->last;
    s->last = done;
    s->total = total;
    s->finals += done == total;
}

TEST(progress_is_called_in_the_caller_and_ends_at_total)
{
    mp_pool *p = new_pool(2, NULL);
    enum { N = 50000 };
    int64_t *in = calloc(N, 8), *out = calloc(N, 8);
    struct seen_progress s = {0};
    ASSERT_OK(mp_pool_map(p, square, in, 8, out, 8, N,
                          &(mp_map_opts){.progress = note_progress, .progress_arg = &s}));
    ASSERT_GE(s.calls, 1);
    ASSERT_EQ(s.last, (size_t)N);
    ASSERT_EQ(s.total, (size_t)N);
    ASSERT_EQ(s.finals, 1);
    ASSERT_TRUE(!s.backwards);
    free(in);
    free(out);
    mp_pool_free(p);
}

TEST(more_workers_than_cores_give_the_same_results)
{
    mp_pool *p = new_pool(8, NULL);
    map_check(p, 100000, 0, false);
    map_check(p, 1000, 1, true);
    mp_pool_free(p);
}

TEST(a_worker_killed_while_idle_is_replaced)
{
    mp_pool *p = new_pool(2, NULL);
    pid_t out[50];
    ASSERT_OK(mp_pool_map(p, who, NULL, 0, out, sizeof out[0], 50, &(mp_map_opts){.chunksize = 1}));
    ASSERT_EQ(kill(out[0], SIGKILL), 0);
    ASSERT_TRUE(t_wait_gone(out[0], 5));
    for (int round = 0; round < 3; round++) {
        ASSERT_OK(mp_pool_map(p, who, NULL, 0, out, sizeof out[0], 50, &(mp_map_opts){.chunksize = 1}));
        for (int i = 0; i < 50; i++)
            ASSERT_TRUE(out[i] > 0);
    }
    mp_pool_free(p);
}

/* An item that starts its hang well after the map began (the manager had
 * gone back to sleep by then) is still killed at its time. */
static int late_hang(const void *in, void *out, void *ctx)
{
    (void)ctx;
    int x = *(const int *)in;
    if (x == 2)
        usleep(50000);
    if (x == 3)
        for (;;)
            pause();
    *(int *)out = x;
    return 0;
}

TEST(a_hang_that_starts_late_is_still_timed)
{
    mp_pool *p = new_pool(2, NULL);
    for (int round = 0; round < 5; round++) {
        int in[4] = {0, 1, 2, 3}, out[4], st[4];
        ASSERT_ERR(mp_pool_map(p, late_hang, in, sizeof(int), out, sizeof(int), 4,
                               &(mp_map_opts){.chunksize = 1, .status = st, .task_timeout = 0.25}),
                   MP_ETIMEDOUT);
        ASSERT_EQ(st[0], 0);
        ASSERT_EQ(st[1], 0);
        ASSERT_EQ(st[2], 0);
        ASSERT_EQ(st[3], MP_ETIMEDOUT);
    }
    mp_pool_free(p);
}

/* Item 17 (in the last chunk, 15..19) dies only once the other worker has
 * run out of chunks, passed the job in the ring and gone to sleep: the
 * rest of its chunk (18, 19) must come back into the ring for the
 * replacement or the sleeper to find. */
struct late_death {
    _Atomic int finished;
    _Atomic pid_t pid[20];
};

static int die_last(const void *in, void *out, void *ctx)
{
    struct late_death *d = ctx;
    int x = *(const int *)in;
    atomic_store(&d->pid[x], getpid());
    if (x == 17) {
        while (atomic_load(&d->finished) < 17)
            usleep(1000);
        pid_t other = 0;
        for (int i = 0; i < 15 && !other; i++)
            if (atomic_load(&d->pid[i]) != getpid())
                other = atomic_load(&d->pid[i]);
        if (other)
            t_await_state(other, 'S'); /* through with the job, asleep */
        raise(SIGKILL);
    }
    *(int *)out = x * x;
    atomic_fetch_add(&d->finished, 1);
    return 0;
}

TEST(a_death_in_the_last_chunk_after_the_job_was_passed)
{
    mp_pool *p = new_pool(2, NULL);
    struct late_death *d = mp_shared_alloc(sizeof *d);
    int in[20], out[20], status[20];
    for (int i = 0; i < 20; i++)
        in[i] = i;
    ASSERT_ERR(mp_pool_map(p, die_last, in, sizeof(int), out, sizeof(int), 20,
                           &(mp_map_opts){.ctx = d, .status = status, .chunksize = 5}),
               MP_EWORKER);
    for (int i = 0; i < 20; i++) {
        ASSERT_EQ(status[i], i == 17 ? MP_EWORKER : 0);
        if (i != 17)
            ASSERT_EQ(out[i], i * i);
    }
    mp_shared_free(d);
    mp_pool_free(p);
}

TEST(close_with_maxtasksperchild_still_finishes_the_work)
{
    mp_pool *p = new_pool(2, &(mp_pool_opts){.maxtasksperchild = 1});
    pid_t out[10];
    mp_async *a;
    ASSERT_OK(mp_pool_map_async(&a, p, who, NULL, 0, out, sizeof out[0], 10,
                                &(mp_map_opts){.chunksize = 1}));
    ASSERT_OK(mp_pool_close(p));
    ASSERT_OK(mp_async_get(a, 30));
    for (int i = 0; i < 10; i++)
        ASSERT_GT(out[i], 0);
    ASSERT_OK(mp_pool_join(p, 30));
    mp_async_free(a);
    mp_pool_free(p);
}

TEST(join_after_close_ends_once_a_blocked_imap_is_freed)
{
    mp_pool *p = new_pool(2, NULL);
    enum { N = 100000 };
    int64_t *in = calloc(N, 8);
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, square, in, 8, 8, N, NULL, true));
    int64_t v;
    ASSERT_OK(mp_imap_next(it, &v, NULL, 30)); /* the window fills, workers wait on it */
    ASSERT_OK(mp_pool_close(p));
    ASSERT_ERR(mp_pool_join(p, 0.05), MP_ETIMEDOUT); /* the iterator still holds work */
    mp_imap_free(it);
    ASSERT_OK(mp_pool_join(p, 30));
    free(in);
    mp_pool_free(p);
}

TEST(imap_window_never_outgrows_n)
{
    mp_pool *p = new_pool(2, NULL);
    size_t before = mp_shared_usage();
    int64_t in[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, square, in, 8, 8, 10, &(mp_map_opts){.chunksize = (size_t)1 << 30},
                           false));
    ASSERT_LT(mp_shared_usage() - before, (size_t)1 << 20);
    size_t seen = 0;
    for (int k = 0; k < 10; k++) {
        int64_t v;
        size_t idx;
        ASSERT_OK(mp_imap_next(it, &v, &idx, 30));
        ASSERT_EQ(v, (int64_t)(idx * idx));
        seen |= (size_t)1 << idx;
    }
    ASSERT_EQ(seen, (size_t)0x3ff);
    mp_imap_free(it);
    mp_pool_free(p);
}

/* Workers killed at random moments of a stream of applies (hunting,
 * spinning, asleep, running): afterwards an apply still gets a worker. */
struct streamer {
    mp_pool *p;
    _Atomic int stop;
    _Atomic pid_t last; /* a worker seen running an apply */
    int failures;
};

static int note_pid(const void *in, void *out, void *ctx)
{
    (void)in;
    (void)ctx;
    *(pid_t *)out = getpid();
    return 0;
}

static void *stream_applies(void *arg)
{
    struct streamer *s = arg;
    while (!atomic_load(&s->stop)) {
        pid_t who_ran = 0;
        int r = mp_pool_apply(s->p, note_pid, NULL, 0, &who_ran, sizeof who_ran);
        if (r == 0)
            atomic_store(&s->last, who_ran);
        else if (r != MP_EWORKER)
            s->failures++;
    }
    return NULL;
}

TEST(workers_killed_in_any_state_leave_applies_served)
{
    mp_pool *p = new_pool(3, NULL);
    struct streamer s = {.p = p};
    pthread_t t = t_thread(stream_applies, &s);
    unsigned seed = 12345;
    for (int k = 0; k < 40; k++) {
        pid_t victim;
        double end = t_now() + 10 * t_scale();
        while (!(victim = atomic_exchange(&s.last, 0)))
            if (t_now() > end)
                T_FAIL("no apply was served after %d kills", k);
        usleep(rand_r(&seed) % 2000); /* any state: not a hand-shake, a spread */
        kill(victim, SIGKILL);
    }
    atomic_store(&s.stop, 1);
    t_join_thread(t);
    ASSERT_EQ(s.failures, 0);
    for (int i = 0; i < 20; i++) { /* every worker asleep between these */
        mp_async *a;
        pid_t w = 0;
        ASSERT_OK(mp_pool_apply_async(&a, p, note_pid, NULL, 0, &w, sizeof w));
        ASSERT_OK(mp_async_get(a, 10));
        mp_async_free(a);
        ASSERT_GT(w, 0);
        usleep(2000);
    }
    mp_pool_free(p);
}

/* fork failing (the process limit): pool creation reports it and leaves
 * nothing behind; a replacement that cannot be forked is tried again
 * later, and the work goes on meanwhile with the workers left. */
static _Atomic int forks_to_pass, forks_to_fail; /* pass these, then fail those */
static pid_t failing_fork(void)
{
    if (atomic_fetch_sub(&forks_to_pass, 1) > 0)
        return fork();
    if (atomic_fetch_sub(&forks_to_fail, 1) > 0) {
        errno = EAGAIN;
        return -1;
    }
    return fork();
}

TEST(fork_failing_at_creation_leaves_nothing)
{
    int fds = t_count_fds_after_a_pool();
    atomic_store(&forks_to_pass, 1); /* the second worker's fork fails */
    atomic_store(&forks_to_fail, 1);
    mp__sys.fork = failing_fork;
    mp_pool *p = (mp_pool *)1;
    int r = mp_pool_new(&p, &(mp_pool_opts){.processes = 3});
    mp__sys_reset();
    ASSERT_LT(r, 0);
    ASSERT_TRUE(p == NULL);
    atomic_store(&forks_to_fail, 0);
    ASSERT_EQ(t_await_no_children(2, NULL), 0);
    ASSERT_EQ(t_count_fds(), fds);
}

TEST(a_replacement_that_cannot_be_forked_is_tried_again)
{
    static int how = CRASH_KILL; /* before the pool: the workers see it */
    /* The table is set before the pool's manager thread exists and reset
     * after it ended: no thread reads it while it changes. */
    atomic_store(&forks_to_pass, 2);
    atomic_store(&forks_to_fail, 5);
    mp__sys.fork = failing_fork;
    mp_pool *p = new_pool(2, NULL);
    int in[20], out[20], status[20];
    for (int i = 0; i < 20; i++)
        in[i] = i;
    ASSERT_ERR(mp_pool_map(p, crashy, in, sizeof(int), out, sizeof(int), 20,
                           &(mp_map_opts){.ctx = &how, .status = status, .chunksize = 5}),
               MP_EWORKER);
    for (int i = 0; i < 20; i++) {
        ASSERT_EQ(status[i], i == 7 ? MP_EWORKER : 0);
        if (i != 7)
            ASSERT_EQ(out[i], i * i);
    }
    /* the failures are used up, then a replacement starts: two workers again */
    double end = t_now() + 20 * t_scale();
    pid_t seen[2] = {0, 0};
    while (!seen[1]) {
        if (t_now() > end)
            T_FAIL("no replacement after the forks failed (%d left to fail)", atomic_load(&forks_to_fail));
        struct gate *g = gate_new();
        int gin[2] = {-1, -2}, gout[2];
        mp_async *a;
        ASSERT_OK(mp_pool_map_async(&a, p, gated, gin, sizeof(int), gout, sizeof(int), 2,
                                    &(mp_map_opts){.ctx = g, .chunksize = 1}));
        /* both items at once only with two workers */
        double wait_end = t_now() + 0.2 * t_scale();
        while (atomic_load(&g->started) < 2 && t_now() < wait_end)
            usleep(1000);
        if (atomic_load(&g->started) == 2)
            seen[1] = 1;
        ASSERT_OK(mp_event_set(g->go));
        ASSERT_OK(mp_async_get(a, 30));
        mp_async_free(a);
        gate_free(g);
    }
    ASSERT_LE(atomic_load(&forks_to_fail), 0);
    mp_pool_free(p);
    mp__sys_reset();
}

TEST(imap_progress_ends_once_and_a_pending_interrupt_sets_no_index)
{
    mp_pool *p = new_pool(2, NULL);
    int64_t in[100];
    for (int i = 0; i < 100; i++)
        in[i] = i;
    struct seen_progress s = {0};
    mp_imap *it;
    ASSERT_OK(mp_pool_imap(&it, p, square, in, 8, 8, 100,
                           &(mp_map_opts){.progress = note_progress, .progress_arg = &s}, false));
    int64_t v;
    size_t idx = 7;
    mp_interrupt(); /* pending before the call waits: nothing taken */
    int r = mp_imap_next(it, &v, &idx, 30);
    if (r == MP_EINTR)
        ASSERT_EQ(idx, SIZE_MAX);
    else
        ASSERT_OK(r); /* a result was there already: no wait, the interrupt stays */
    while ((r = mp_imap_next(it, &v, &idx, 30)) != MP_EDONE) {
        if (r == MP_EINTR)
            continue;
        ASSERT_OK(r);
    }
    ASSERT_ERR(mp_imap_next(it, &v, &idx, 30), MP_EDONE);
    ASSERT_EQ(s.finals, 1);
    ASSERT_EQ(s.last, 100);
    mp_imap_free(it);
    struct seen_progress z = {0}; /* n == 0: one final call too */
    ASSERT_OK(mp_pool_imap(&it, p, square, NULL, 0, 0, 0,
                           &(mp_map_opts){.progress = note_progress, .progress_arg = &z}, true));
    ASSERT_ERR(mp_imap_next(it, NULL, NULL, 1), MP_EDONE);
    ASSERT_ERR(mp_imap_next(it, NULL, NULL, 1), MP_EDONE);
    ASSERT_EQ(z.finals, 1);
    mp_imap_free(it);
    mp_pool_free(p);
}
