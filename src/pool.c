/*
 * Pools: multiprocessing.Pool, with the work handed out through the arena.
 *
 * The parts:
 *
 *   - A job is one call's work (a map, an apply, an imap), in one arena
 *     block: what to run, where inputs and outputs are, and the chunks. A
 *     chunk is a run of consecutive items with one word of state each (cw):
 *     FREE (with the offset of the first item still to run), CLAIMED by a
 *     worker's slot, or DONE.
 *   - The pool's shared header holds a ring of job pointers. The parent
 *     appends at tail; workers look at the jobs from head to tail and claim
 *     chunks themselves: a compare-and-swap on the job's next-chunk counter,
 *     then one on the chunk's word. Head moves past a job once all its
 *     chunks are claimed. Nothing in this takes a system call.
 *   - Each worker has a slot in the header: the job it looks at (a hazard
 *     pointer: the parent frees no job a slot names), the item it runs and,
 *     for items with a time limit, when that item must end.
 *   - A manager thread in the parent owns the worker processes: it sleeps in
 *     poll() on their pidfds, repairs after a death, starts replacements and
 *     kills items past their time.
 *
 * The truth about a job is its chunk words; everything else is a hint. When
 * a chunk is done its worker stores DONE, then adds the items it ran to
 * `committed`, and whoever makes committed reach n wakes the waiters. The
 * manager never touches committed: a worker may die between DONE and the
 * add, and nobody could tell whether the add happened. So committed can
 * only fall short, never overshoot; after a death the manager bumps
 * `deaths` and wakes every waiter, and a waiter that sees deaths move scans
 * the chunk words instead.
 *
 * Death of a worker (the kernel says so through its pidfd): every chunk the
 * dead slot had CLAIMED in its job is either done (its last item had run:
 * DONE), or its running item fails with MP_EWORKER (MP_ETIMEDOUT if the
 * manager killed it for its time) and the rest of the chunk goes back FREE
 * with its offset, for another worker. A worker that died between winning
 * a chunk number and claiming its word leaves the chunk FREE behind next;
 * the manager raises the job's redo hint, so workers scan for FREE chunks
 * again, and re-appends the job to the ring if head has passed it. Every
 * claim is a compare-and-swap from FREE, so each chunk runs once.
 *
 * Waiting: workers with nothing to claim spin (not against a peer on their
 * own CPU, see os/spin.c), then sleep on the header's work word; the parent
 * bumps it at each submission and wakes sleepers only if there are any.
 * Callers waiting for results spin, then sleep on the header's done word,
 * bumped when a job completes (and at each chunk of an imap); a waker wakes
 * only if a waiter asked (dwant), and clears the flag.
 *
 * Private inputs and outputs: a job keeps them in its own block. Inputs are
 * copied in chunk by chunk behind `limit` (the same fence that holds an
 * imap's workers inside its window), so workers start on the first chunk
 * while the parent copies the rest; outputs are copied out by the waiter as
 * chunks end. Job blocks are recycled rather than freed: small ones (an
 * apply costs less than an arena allocation and its page faults) and the
 * largest one (a map's staging keeps its pages).
 *
 * Lock rules: pool->mu guards the job lists (active, limbo, spare, big,
 * reappend), the ring's tail, state and the parent-private fields of jobs
 * (last_pos, next_j, prev_j); never held across a sleep. The manager alone
 * touches the process handles after mp_pool_new.
 */
#include "mproc.h"

#include "arena.h"
#include "os/os.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif
#include <signal.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 1024
#define RING 8192u                /* job positions in the ring */
#define GRACE_NS 100000000LL      /* terminate: SIGTERM, then this, then SIGKILL */
#define PROGRESS_NS 100000000LL   /* progress callbacks at most this often */
#define RESTART_BURST 8           /* replacements started at once, then */
#define RESTART_GAP_NS 20000000LL /* one per this long (no fork storm) */
#define IMAP_WINDOW_BYTES ((size_t)64 << 20)
#define NONE UINT64_MAX
#define TIMED_LOOK_NS 10000000LL  /* while jobs have a task_timeout: look this often */
#define SPARE_MAX 2048            /* job blocks this small are kept for reuse, */
#define SPARE_COUNT RING          /* this many at most (a ring full of applies: ~4 MiB) */
#define BIG_MIN ((size_t)1 << 20) /* and the largest block from this size */
#define BIG_WAIT_NS 200000LL      /* how long a new job waits for it to be let go of */

/* chunk words: state (2 bits), slot (16), offset of the first item left (46) */
enum { CW_FREE = 0, CW_CLAIMED = 1, CW_DONE = 2 };
#define CW(st, slot, off) ((uint64_t)(st) | (uint64_t)(slot) << 2 | (uint64_t)(off) << 18)
#define CW_STATE(w) ((unsigned)((w)&3))
#define CW_SLOT(w) ((unsigned)(((w) >> 2) & 0xffff))
#define CW_OFF(w) ((w) >> 18)

/* first_bad: index << 2 | kind, NONE when every item went well */
enum { BAD_TASK = 1, BAD_WORKER = 2, BAD_TIME = 3 };

struct job {
    /* written before the job is published, then only read */
    mp_task fn;
    void *ctx;
    const char *in;
    size_t in_size;
    char *out;
    size_t out_size;
    int *status;        /* per item (map: NULL if not asked), or a ring (imap) */
    uint64_t mask;      /* item i's out and status: at i & mask */
    uint64_t n, nchunks;
    uint64_t cs;        /* fixed chunk size, or 0: bounds[] */
    uint64_t *bounds;   /* guided chunks: nchunks + 1 */
    _Atomic uint64_t *cw;
    int64_t timeout_ns; /* per item; 0: none */
    bool imap;
    bool each;          /* signal every chunk's end (imap, or outputs copied as they come) */
    /* claims */
    alignas(64) _Atomic uint64_t next; /* next fresh chunk */
    _Atomic uint64_t limit;            /* items at or past it may not start (imap window) */
    _Atomic uint32_t redo;             /* hint: FREE chunks may lie behind next */
    _Atomic uint32_t wblocked;         /* a worker found only window-blocked chunks */
    _Atomic uint32_t cancel;           /* start no more items */
    _Atomic uint32_t closed;           /* the pool was terminated: it ends unfinished */
    _Atomic uint32_t repaired;         /* a death was settled in it: signal every chunk */
    /* results */
    alignas(64) _Atomic uint64_t committed; /* items done (a hint, see the top) */
    _Atomic uint64_t first_bad;
    /* the parent's own */
    alignas(64) uint64_t last_pos; /* ring position of its latest append */
    uint32_t deaths_seen;          /* sh->deaths when the truth was last scanned */
    uint64_t scan_from;            /* chunks below it are known DONE */
    size_t size;                   /* of its arena block */
    bool feed;                     /* inputs still to copy in, chunk by chunk, behind limit */
    bool complete;                 /* seen complete (sticky) */
    struct job *next_j, *prev_j;   /* active list (both), limbo list (next_j) */
};

struct slot {
    alignas(64) struct job *_Atomic job; /* hazard: the job this worker looks at */
    _Atomic uint64_t item;               /* the item it runs, or NONE */
    _Atomic int64_t deadline;            /* when that item must end; 0: no limit */
    _Atomic uint32_t state;              /* S_* */
    _Atomic uint32_t hunt, asleep;       /* counted in hunting, in sleepers (see hunt_on) */
    uint64_t killed_item;                /* manager: the item it killed for time, or NONE */
};
enum { S_STARTING, S_READY, S_INIT_FAILED, S_LEFT, S_RETIRED };

struct shared {
    alignas(64) _Atomic uint32_t work; /* bumped at each submission, window move, stop */
    _Atomic uint32_t sleepers;         /* workers asleep on work */
    _Atomic int32_t hunting;           /* workers awake and looking for a chunk */
    _Atomic uint32_t stop;             /* 1: leave when nothing is left (close); 2: now */
    mp__spinner wspin;
    alignas(64) _Atomic uint64_t head;
    _Atomic uint64_t tail;
    _Atomic uint64_t space_at; /* the parent waits for head to reach this; 0: nobody */
    _Atomic uint32_t space;    /* bumped when head reaches space_at */
    alignas(64) _Atomic uint32_t done; /* bumped at each job end, imap chunk, repair */
    _Atomic uint32_t dwant;            /* a waiter sleeps on done */
    _Atomic uint32_t deaths;           /* repairs made */
    mp__spinner rspin;
    alignas(64) _Atomic uint32_t nready; /* workers past their initializer (or failed in it) */
    struct job *_Atomic ring[RING];
    struct slot slots[];
};

enum { RUNNING, CLOSED, TERMINATED };

struct mp_pool {
    struct shared *sh;
    int nproc;
    mp_pool_opts opts;
    mp_process **procs; /* the manager's, after mp_pool_new */
    pthread_mutex_t mu;
    int state;          /* mu */
    struct job *active; /* submitted, still held by a caller; mu */
    struct job *limbo;  /* let go of, freed once no worker can reach them; mu */
    struct job *spare;  /* freed small blocks kept for the next jobs; mu */
    size_t nspare;
    struct job *big;    /* the last large block, kept: its pages are in place; mu */
    struct job **reappend; /* jobs with chunks to redo that head had passed: the
                              manager appends them again when the ring has room; mu */
    int nreappend, capreappend;
    /* the manager's working arrays, made with the pool so that it cannot
     * start without them: its poll set, which slot each entry watches,
     * and the slots whose replacement waits for its turn */
    struct pollfd *m_pf;
    unsigned *m_who;
    bool *m_due;
    pthread_t manager;
    bool manager_on;
    bool manager_joined; /* mu */
    int kick;            /* eventfd: wakes the manager */
    _Atomic uint32_t gone; /* every worker has left and the manager ended */
    _Atomic uint32_t terminate_req;
    _Atomic uint32_t broken; /* a replacement's initializer failed */
    _Atomic uint32_t timed;  /* jobs held with a task_timeout: the manager looks often */
    pid_t owner;
};

struct mp_async {
    mp_pool *pool;
    struct job *j;
    void *out;     /* the caller's, when it is not the job's own */
    int *status;   /* likewise */
    bool finished; /* copied out */
    uint64_t drained; /* chunks below it are copied out already */
    int result;
    void (*progress)(size_t, size_t, void *);
    void *progress_arg;
    int64_t progress_at;
};

struct mp_imap {
    mp_pool *pool;
    struct job *j;
    bool ordered;
    uint64_t window;  /* items */
    uint64_t base;    /* lowest chunk not wholly delivered */
    uint64_t cur;     /* chunk being delivered, or NONE */
    uint64_t at;      /* next item of cur */
    uint64_t taken;   /* items delivered */
    uint8_t *given;   /* unordered: chunks wholly delivered */
    bool final;       /* the final progress call was made */
    void (*progress)(size_t, size_t, void *);
    void *progress_arg;
    int64_t progress_at;
};

/* ---- chunks -------------------------------------------------------------- */

static inline uint64_t chunk_lo(const struct job *j, uint64_t c) { return j->cs ? c * j->cs : j->bounds[c]; }

static inline uint64_t chunk_hi(const struct job *j, uint64_t c)
{
    if (!j->cs)
        return j->bounds[c + 1];
    uint64_t hi = (c + 1) * j->cs;
    return hi < j->n ? hi : j->n;
}

static void note_bad(struct job *j, uint64_t i, unsigned kind)
{
    uint64_t v = i << 2 | kind, cur = atomic_load_explicit(&j->first_bad, memory_order_relaxed);
    while (v < cur && !atomic_compare_exchange_weak(&j->first_bad, &cur, v))
        ;
}

static int bad_code(uint64_t fb)
{
    if (fb == NONE)
        return 0;
    switch (fb & 3) {
    case BAD_WORKER: return MP_EWORKER;
    case BAD_TIME: return MP_ETIMEDOUT;
    default: return MP_ETASK;
    }
}

/* ---- the worker ------------------------------------------------------------ */

static void signal_done(struct shared *sh)
{
    atomic_fetch_add(&sh->done, 1);
    mp__spin_note(&sh->rspin);
    if (atomic_load(&sh->dwant) && atomic_exchange(&sh->dwant, 0)) {
        mp__spin_stamp(&sh->rspin);
        mp__futex_wake(&sh->done, INT32_MAX);
    }
}

enum { CLAIMED, EXHAUSTED, BLOCKED };

/* Claims a chunk of j for slot id: CLAIMED with *c and *from set, BLOCKED
 * (only chunks past the imap window are left), or EXHAUSTED. */
static int claim(struct job *j, unsigned id, uint64_t *c, uint64_t *from)
{
    if (atomic_load_explicit(&j->cancel, memory_order_relaxed) ||
        atomic_load_explicit(&j->closed, memory_order_relaxed))
        return EXHAUSTED;
    bool blocked = false;
    uint64_t k = atomic_load(&j->next);
    while (k < j->nchunks) {
        if (chunk_hi(j, k) > atomic_load(&j->limit)) {
            blocked = true;
            break;
        }
        if (!atomic_compare_exchange_weak(&j->next, &k, k + 1))
            continue;
        uint64_t want = CW(CW_FREE, 0, 0);
        if (atomic_compare_exchange_strong(&j->cw[k], &want, CW(CW_CLAIMED, id, 0))) {
            *c = k;
            *from = chunk_lo(j, k);
            return CLAIMED;
        }
        k = atomic_load(&j->next); /* a redo scan took it */
    }
    uint32_t redo = atomic_load(&j->redo);
    if (redo) {
        uint64_t end = atomic_load(&j->next);
        for (uint64_t x = 0; x < end && x < j->nchunks; x++) {
            uint64_t w = atomic_load_explicit(&j->cw[x], memory_order_relaxed);
            if (CW_STATE(w) != CW_FREE)
                continue;
            if (atomic_compare_exchange_strong(&j->cw[x], &w, CW(CW_CLAIMED, id, CW_OFF(w)))) {
                *c = x;
                *from = chunk_lo(j, x) + CW_OFF(w);
                return CLAIMED;
            }
        }
        atomic_compare_exchange_strong(&j->redo, &redo, 0); /* fails if raised meanwhile */
        if (atomic_load(&j->redo))
            return claim(j, id, c, from);
    }
    return blocked ? BLOCKED : EXHAUSTED;
}

/* Runs items [from, hi) of chunk c, then marks it done. */
static void run_chunk(struct shared *sh, struct slot *me, struct job *j, uint64_t c, uint64_t from)
{
    uint64_t hi = chunk_hi(j, c), i = from;
    /* the loop reads the job only through these (the atomic stores below
     * would otherwise make the compiler load them again at every item) */
    const mp_task fn = j->fn;
    void *const ctx = j->ctx;
    const char *const in = j->in;
    char *const out = j->out;
    const size_t isz = j->in_size, osz = j->out_size;
    const uint64_t mask = j->mask;
    int *const status = j->status;
    const int64_t tmo = j->timeout_ns;
    if (!tmo && !status && mask == NONE) { /* the common map: the least per item */
        uintptr_t ip = in ? (uintptr_t)(in + i * isz) : 0, op = out ? (uintptr_t)(out + i * osz) : 0;
        while (i < hi && !atomic_load_explicit(&j->cancel, memory_order_relaxed)) {
            uint64_t end = hi - i > 64 ? i + 64 : hi; /* cancel is looked at every 64 */
            for (; i < end; i++, ip += isz, op += osz) {
                atomic_store_explicit(&me->item, i, memory_order_relaxed); /* read after our death */
                if (__builtin_expect(fn((const void *)ip, (void *)op, ctx) != 0, 0))
                    note_bad(j, i, BAD_TASK);
            }
        }
    }
    for (; i < hi; i++) {
        if (i % 64 == 0 && atomic_load_explicit(&j->cancel, memory_order_relaxed))
            break;
        atomic_store_explicit(&me->item, i, memory_order_relaxed); /* read after our death */
        if (tmo)
            atomic_store_explicit(&me->deadline, mp__now_ns() + tmo, memory_order_relaxed);
        uint64_t slot = i & mask;
        int rc = fn(in ? in + i * isz : NULL, out ? out + slot * osz : NULL, ctx);
        if (status)
            status[slot] = rc;
        if (rc)
            note_bad(j, i, BAD_TASK);
    }
    if (j->timeout_ns)
        atomic_store_explicit(&me->deadline, 0, memory_order_relaxed);
    atomic_store_explicit(&j->cw[c], CW(CW_DONE, 0, 0), memory_order_release);
    uint64_t total = atomic_fetch_add(&j->committed, i - from) + (i - from);
    atomic_store_explicit(&me->item, NONE, memory_order_relaxed);
    if (total >= j->n || j->each || atomic_load_explicit(&j->repaired, memory_order_relaxed))
        signal_done(sh);
}

/* Publishes j as this slot's hazard and checks that it is still reachable
 * at ring position pos, so the parent cannot free it while we look. */
static bool hold(struct shared *sh, struct slot *me, uint64_t pos, struct job *j)
{
    atomic_store(&me->job, j);
    return atomic_load(&sh->head) <= pos && atomic_load(&sh->ring[pos % RING]) == j;
}

static void advance_head(struct shared *sh, uint64_t pos)
{
    if (!atomic_compare_exchange_strong(&sh->head, &pos, pos + 1))
        return;
    uint64_t at = atomic_load(&sh->space_at);
    if (at && pos + 1 >= at && atomic_exchange(&sh->space_at, 0)) {
        atomic_fetch_add(&sh->space, 1);
        mp__futex_wake(&sh->space, INT32_MAX);
    }
}

/* The counts of hunting and sleeping workers, kept so that a worker killed
 * at any instruction leaves them wrong only in the harmless direction: a
 * hunter too few (or a sleeper too many) costs a needless wake; a hunter too
 * many (or a sleeper too few) would lose one. The slot's flags say what the
 * manager takes back after a death: a flag is raised before its count goes
 * up and lowered after it goes down for hunters, and the other way round
 * for sleepers. */
static void hunt_on(struct shared *sh, struct slot *me)
{
    atomic_store(&me->hunt, 1);
    atomic_fetch_add(&sh->hunting, 1);
}

static void hunt_off(struct shared *sh, struct slot *me)
{
    atomic_fetch_sub(&sh->hunting, 1);
    atomic_store(&me->hunt, 0);
}

static void run_held(struct shared *sh, struct slot *me, struct job *j, uint64_t c, uint64_t from)
{
    hunt_off(sh, me);
    run_chunk(sh, me, j, c, from);
    hunt_on(sh, me);
}

/* Finds a chunk and runs it: true if it ran one. */
static bool work_once(struct shared *sh, struct slot *me, unsigned id)
{
    uint64_t tail = atomic_load(&sh->tail);
    for (uint64_t pos = atomic_load(&sh->head); pos < tail; pos++) {
        struct job *j = atomic_load(&sh->ring[pos % RING]);
        if (!j || !hold(sh, me, pos, j)) {
            atomic_store(&me->job, NULL);
            uint64_t h = atomic_load(&sh->head);
            if (h > pos)
                pos = h - 1; /* passed meanwhile: go on from head */
            continue;
        }
        uint64_t c, from;
        int r = claim(j, id, &c, &from);
        if (r == CLAIMED) {
            run_held(sh, me, j, c, from);
            return true;
        }
        if (r == EXHAUSTED && pos == atomic_load(&sh->head)) {
            advance_head(sh, pos);
            /* A repair may have freed a chunk of j just before we passed
             * it: it re-appends j only if it saw head past j, and we look
             * at redo only after moving head, so one of us sees the other. */
            if (atomic_load(&j->redo) && claim(j, id, &c, &from) == CLAIMED) {
                run_held(sh, me, j, c, from);
                return true;
            }
        }
        if (r == BLOCKED) {
            atomic_store(&j->wblocked, 1);
            if (claim(j, id, &c, &from) == CLAIMED) { /* the window moved meanwhile */
                run_held(sh, me, j, c, from);
                return true;
            }
        }
    }
    atomic_store(&me->job, NULL);
    return false;
}

struct worker_arg {
    mp_pool *pool;
    unsigned id;
};

static int worker_main(void *arg)
{
    const struct worker_arg *a = arg;
    mp_pool *p = a->pool;
    struct shared *sh = p->sh;
    struct slot *me = &sh->slots[a->id];
    signal(SIGINT, SIG_IGN); /* the terminal's Ctrl-C is the parent's to decide */
    if (p->opts.initializer && p->opts.initializer(p->opts.initarg) != 0) {
        atomic_store(&me->state, S_INIT_FAILED);
        atomic_fetch_add(&sh->nready, 1);
        mp__futex_wake(&sh->nready, INT32_MAX);
        return 1;
    }
    atomic_store(&me->state, S_READY);
    atomic_fetch_add(&sh->nready, 1);
    mp__futex_wake(&sh->nready, INT32_MAX);
    size_t tasks = 0, max = p->opts.maxtasksperchild;
    int leave = S_LEFT;
    hunt_on(sh, me);
    for (;;) {
        uint32_t seen = atomic_load(&sh->work);
        uint32_t stop = atomic_load(&sh->stop);
        if (stop == 2)
            break;
        if (work_once(sh, me, a->id)) {
            if (max && ++tasks >= max) {
                leave = S_RETIRED; /* to be replaced, closed pool or not */
                break;
            }
            continue;
        }
        if (stop == 1 && atomic_load(&sh->head) == atomic_load(&sh->tail))
            break;
        int64_t start;
        if (mp__spin(&sh->wspin, &sh->work, seen, MP__NEVER, &start))
            continue;
        hunt_off(sh, me);
        atomic_fetch_add(&sh->sleepers, 1);
        atomic_store(&me->asleep, 1);
        if (atomic_load(&sh->work) == seen)
            mp__futex_wait(&sh->work, seen, MP__NEVER, NULL);
        bool came = atomic_load(&sh->work) != seen;
        atomic_store(&me->asleep, 0);
        atomic_fetch_sub(&sh->sleepers, 1);
        hunt_on(sh, me);
        mp__spin_learn(&sh->wspin, start, came);
    }
    hunt_off(sh, me);
    atomic_store(&me->job, NULL);
    atomic_store(&me->state, (uint32_t)leave);
    return 0;
}

/* ---- jobs, on the parent's side ------------------------------------------ */

static bool in_arena(const void *ptr, size_t len)
{
    const char *b = mp__arena_base(), *c = ptr;
    return b && c >= b && len <= mp__arena_size() && (size_t)(c - b) <= mp__arena_size() - len;
}

static void kick(mp_pool *p)
{
    uint64_t one = 1;
    ssize_t r = mp__sys.write(p->kick, &one, sizeof one);
    (void)r;
}

/* New work: wakes up to `want` sleeping workers. */
static void wake_some(struct shared *sh, uint64_t want)
{
    atomic_fetch_add(&sh->work, 1);
    mp__spin_note(&sh->wspin);
    uint32_t sleeping = atomic_load(&sh->sleepers);
    if (sleeping) {
        mp__spin_stamp(&sh->wspin);
        mp__futex_wake(&sh->work, want < sleeping ? (int)want : INT32_MAX);
    }
}

static void wake_workers(struct shared *sh) { wake_some(sh, UINT64_MAX); }

/* A job was appended: wakes as many sleepers as it has chunks for, less
 * the workers awake and looking for work (they will find it): in a stream
 * of applies to busy workers, most submissions take no system call. A
 * worker stops hunting before it sleeps and then looks at work again, and
 * we bump work before we count the hunters, so none of them can miss it. */
static void wake_for(mp_pool *p, struct job *j)
{
    struct shared *sh = p->sh;
    atomic_fetch_add(&sh->work, 1);
    mp__spin_note(&sh->wspin);
    int32_t h = atomic_load(&sh->hunting); /* below 0 after some deaths: see hunt_on */
    uint64_t hunting = h > 0 ? (uint64_t)h : 0, n = (uint64_t)p->nproc;
    uint64_t queued = atomic_load(&sh->tail) - atomic_load(&sh->head);
    uint64_t need = j->nchunks < n ? j->nchunks : n; /* workers this job can use */
    need = queued > need ? (queued < n ? queued : n) : need;
    if (need <= hunting || !atomic_load(&sh->sleepers))
        return;
    uint64_t want = need - hunting;
    mp__spin_stamp(&sh->wspin);
    mp__futex_wake(&sh->work, (int)want);
}

static void wake_waiters(struct shared *sh)
{
    atomic_fetch_add(&sh->done, 1);
    atomic_store(&sh->dwant, 0);
    mp__futex_wake(&sh->done, INT32_MAX);
}

/* With mu held: keeps a freed job's block for the next job when it is
 * small (an arena allocation and its page faults cost more than the
 * work of an apply) or the largest yet (a map's staging: its pages stay
 * mapped for the next map of that size). */
static void recycle_locked(mp_pool *p, struct job *j, bool all)
{
    if (!all && j->size <= SPARE_MAX && p->nspare < SPARE_COUNT) {
        j->next_j = p->spare;
        p->spare = j;
        p->nspare++;
        return;
    }
    if (!all && j->size >= BIG_MIN && (!p->big || p->big->size <= j->size)) {
        struct job *old = p->big;
        p->big = j;
        j = old;
    }
    mp_shared_free(j);
}

/* With mu held: a kept block of at least size bytes, zeroed as far as
 * the job's header and chunk words (the rest is written before use). */
static char *reuse_locked(mp_pool *p, size_t size, size_t zero)
{
    struct job *j = NULL;
    if (size <= SPARE_MAX) {
        /* a few looks: a list full of smaller blocks must not cost a walk */
        int looks = 0;
        for (struct job **pp = &p->spare; *pp && looks < 8; pp = &(*pp)->next_j, looks++)
            if ((*pp)->size >= size) {
                j = *pp;
                *pp = j->next_j;
                p->nspare--;
                break;
            }
    } else if (p->big && p->big->size >= size && p->big->size / 2 <= size) {
        j = p->big;
        p->big = NULL;
    }
    if (!j)
        return NULL;
    size_t have = j->size;
    memset(j, 0, zero);
    j->size = have;
    return (char *)j;
}

/* With mu held: whether a let-go job's block would serve a job of size
 * bytes as `big` once the hazard on it goes (head has passed it). */
static bool big_in_limbo_locked(const mp_pool *p, size_t size)
{
    uint64_t head = atomic_load(&p->sh->head);
    for (const struct job *j = p->limbo; j; j = j->next_j)
        if (j->size >= size && j->size / 2 <= size && head > j->last_pos)
            return true;
    return false;
}

/* With mu held: frees the jobs let go of that no worker can reach. */
static void reclaim_locked(mp_pool *p, bool all)
{
    uint64_t head = atomic_load(&p->sh->head);
    for (struct job **pp = &p->limbo, *j; (j = *pp);) {
        bool held = false;
        if (!all) {
            held = head <= j->last_pos;
            for (int i = 0; i < p->nproc && !held; i++)
                held = atomic_load(&p->sh->slots[i].job) == j;
            for (int i = 0; i < p->nreappend && !held; i++)
                held = p->reappend[i] == j;
        }
        if (held) {
            pp = &j->next_j;
            continue;
        }
        *pp = j->next_j;
        recycle_locked(p, j, all);
    }
}

/* Lets go of j: it is cancelled if unfinished and freed once unreachable. */
static void job_release(mp_pool *p, struct job *j)
{
    atomic_store(&j->cancel, 1);
    if (j->imap) /* workers asleep on its window must see it gone (close) */
        wake_workers(p->sh);
    if (j->timeout_ns)
        atomic_fetch_sub(&p->timed, 1);
    pthread_mutex_lock(&p->mu);
    if (j->prev_j)
        j->prev_j->next_j = j->next_j;
    else
        p->active = j->next_j;
    if (j->next_j)
        j->next_j->prev_j = j->prev_j;
    j->next_j = p->limbo;
    p->limbo = j;
    reclaim_locked(p, p->gone);
    pthread_mutex_unlock(&p->mu);
}

struct shape {
    const void *in;
    size_t in_size;
    void *out;
    size_t out_size;
    size_t n;
    const mp_map_opts *o;
    bool imap;
};

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

/* Guided chunks: each about what is left over twice the workers, never
 * fewer than min items; the last ones small, so uneven items balance. */
static uint64_t guided(uint64_t n, int procs, bool feed, uint64_t *bounds)
{
    uint64_t min = n / ((uint64_t)procs * 256), max = (n + 8 * (uint64_t)procs - 1) / (8 * (uint64_t)procs);
    max = feed ? (max < 1024 ? 1024 : max) : n;
    min = min ? min : 1;
    uint64_t k = 0, at = 0;
    while (at < n) {
        /* when inputs are fed in, at most an eighth of a worker's share at
         * first: the copies then reach every worker early (see feed_input) */
        uint64_t left = n - at, size = (left + 2 * (uint64_t)procs - 1) / (2 * (uint64_t)procs);
        size = size > max ? max : size;
        size = size < min ? min : size;
        size = size > left ? left : size;
        if (bounds)
            bounds[k] = at;
        at += size;
        k++;
    }
    if (bounds)
        bounds[k] = n;
    return k;
}

static int check_shape(const mp_pool *p, mp_task fn, const struct shape *s)
{
    if (!p || !fn)
        return MP_EINVAL;
    if (s->n > 0 && ((s->in_size > 0) != (s->in != NULL) || (!s->imap && (s->out_size > 0) != (s->out != NULL))))
        return MP_EINVAL;
    if (s->n > (uint64_t)1 << 46 || (s->in_size && s->n > SIZE_MAX / s->in_size) ||
        (s->out_size && s->n > SIZE_MAX / s->out_size))
        return MP_EINVAL;
    if (s->o) {
        double t = s->o->task_timeout;
        if (isnan(t) || t < 0 || t > 1e9)
            return MP_EINVAL;
        if (s->o->chunksize > (uint64_t)1 << 46)
            return MP_EINVAL;
    }
    return 0;
}

/* Makes the job for a call; its copies of private inputs are made here. */
static int job_new(mp_pool *p, mp_task fn, const struct shape *s, struct job **out)
{
    const mp_map_opts *o = s->o;
    uint64_t n = s->n, cs = o ? o->chunksize : 0, nchunks, window = 0;
    if (s->imap) {
        if (!cs) {
            cs = n / ((uint64_t)p->nproc * 64);
            cs = cs < 1 ? 1 : cs > 1024 ? 1024 : cs;
        }
        uint64_t n1 = n ? n : 1, all = 1;
        cs = cs > n1 ? n1 : cs;
        while (all < n1)
            all *= 2; /* a window past n would only waste memory */
        uint64_t want = 4 * (uint64_t)p->nproc * cs, w = 256;
        while (w < want)
            w *= 2;
        w = w > all ? all : w;
        while (w / 2 >= 2 * cs && s->out_size && w * s->out_size > IMAP_WINDOW_BYTES)
            w /= 2;
        if (s->out_size && w > SIZE_MAX / 2 / s->out_size)
            return MP_ENOMEM;
        window = w;
    }
    bool copy_in = s->in_size && n && !in_arena(s->in, n * s->in_size);
    if (cs)
        nchunks = n ? (n + cs - 1) / cs : 0;
    else
        nchunks = guided(n, p->nproc, copy_in && !s->imap, NULL);
    if (nchunks > (uint64_t)1 << 40)
        return MP_ENOMEM;
    uint64_t nout = s->imap ? window : n;
    bool own_out = s->out_size && nout && (s->imap || !in_arena(s->out, n * s->out_size));
    bool own_status = s->imap ? true : o && o->status && !in_arena(o->status, n * sizeof(int));
    uint64_t nstatus = s->imap ? window : n;
    size_t size = round_up(sizeof(struct job), 64), at_cw = size;
    size += round_up(nchunks * 8, 64);
    size_t at_bounds = size;
    if (!cs)
        size += round_up((nchunks + 1) * 8, 64);
    size_t at_in = size;
    if (copy_in)
        size += round_up(n * s->in_size, 64);
    size_t at_out = size;
    if (own_out)
        size += round_up(nout * s->out_size, 64);
    size_t at_status = size;
    if (own_status)
        size += round_up(nstatus * sizeof(int), 64);
    pthread_mutex_lock(&p->mu);
    char *mem = reuse_locked(p, size, at_bounds);
    /* The last large job may still wait in limbo for a worker to let go of
     * it (its hazard: microseconds): worth a short wait against faulting in
     * new pages. Only for a block that would fit and that only a hazard
     * holds (head has passed it), and at most BIG_WAIT_NS. */
    int64_t until = 0;
    while (!mem && size >= BIG_MIN && big_in_limbo_locked(p, size)) {
        int64_t now = mp__now_ns();
        if (!until)
            until = now + BIG_WAIT_NS;
        else if (now >= until)
            break;
        pthread_mutex_unlock(&p->mu);
        sched_yield();
        pthread_mutex_lock(&p->mu);
        reclaim_locked(p, false);
        mem = reuse_locked(p, size, at_bounds);
    }
    pthread_mutex_unlock(&p->mu);
    if (!mem) {
        if (!(mem = mp_shared_alloc(size)))
            return MP_ENOMEM;
        ((struct job *)mem)->size = size;
    }
    struct job *j = (struct job *)mem;
    j->fn = fn;
    j->ctx = o ? o->ctx : NULL;
    j->in = copy_in ? mem + at_in : s->in;
    j->in_size = s->in_size;
    j->out = own_out ? mem + at_out : s->out_size ? s->out : NULL;
    j->out_size = s->out_size;
    j->status = own_status ? (int *)(mem + at_status) : o ? o->status : NULL;
    j->mask = s->imap ? window - 1 : NONE;
    j->n = n;
    j->nchunks = nchunks;
    j->cs = cs;
    j->cw = (_Atomic uint64_t *)(mem + at_cw);
    if (!cs) {
        j->bounds = (uint64_t *)(mem + at_bounds);
        guided(n, p->nproc, copy_in && !s->imap, j->bounds);
    }
    j->timeout_ns = o && o->task_timeout > 0 ? (int64_t)(o->task_timeout * 1e9) : 0;
    if (o && o->task_timeout > 0 && j->timeout_ns < 1)
        j->timeout_ns = 1;
    j->imap = s->imap;
    j->each = s->imap || (own_out && nchunks > 1);
    j->feed = copy_in && !s->imap && nchunks > 1;
    atomic_store(&j->limit, s->imap ? window : j->feed ? 0 : n);
    atomic_store(&j->first_bad, NONE);
    if (copy_in && !j->feed)
        memcpy((char *)j->in, s->in, n * s->in_size);
    *out = j;
    return 0;
}

/* Appends j to the ring, waiting for room. mu must not be held. */
static int publish(mp_pool *p, struct job *j, bool again)
{
    struct shared *sh = p->sh;
    mp__waiter w;
    bool waiting = false;
    int r = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        if (!again && p->state != RUNNING) {
            pthread_mutex_unlock(&p->mu);
            r = p->state == TERMINATED && atomic_load(&p->broken) ? MP_ECLOSED : MP_ESTATE;
            break;
        }
        uint64_t tail = atomic_load(&sh->tail), head = atomic_load(&sh->head);
        if (tail - head < RING) {
            atomic_store(&sh->ring[tail % RING], j);
            j->last_pos = tail;
            if (!again) {
                j->deaths_seen = atomic_load(&sh->deaths);
                j->next_j = p->active;
                j->prev_j = NULL;
                if (p->active)
                    p->active->prev_j = j;
                p->active = j;
            }
            atomic_store(&sh->tail, tail + 1);
            pthread_mutex_unlock(&p->mu);
            wake_for(p, j);
            if (!again && j->timeout_ns && atomic_fetch_add(&p->timed, 1) == 0)
                kick(p); /* a sleeping manager would not see its items' deadlines */
            break;
        }
        pthread_mutex_unlock(&p->mu);
        if (again)
            return MP_EFULL; /* the manager retries later */
        if (!waiting) {
            if ((r = mp__wait_begin(&w)) < 0)
                return r;
            waiting = true;
        }
        /* wait until the ring is half empty: one sleep per many jobs */
        uint32_t seen = atomic_load(&sh->space);
        atomic_store(&sh->space_at, head + RING / 2);
        if (atomic_load(&sh->head) >= head + RING / 2)
            continue;
        r = mp__futex_wait(&sh->space, seen, mp__now_ns() + mp__check_ns, &w);
        if (r == MP_EINTR)
            break;
        r = 0;
    }
    if (waiting)
        mp__wait_end(&w);
    return r;
}

/* Whether j is finished (every item done, or it ended with the pool). */
static bool job_finished(mp_pool *p, struct job *j)
{
    if (j->complete)
        return true;
    if (atomic_load(&j->committed) >= j->n) {
        j->complete = true;
        return true;
    }
    uint32_t d = atomic_load(&p->sh->deaths);
    if (d == j->deaths_seen && !atomic_load(&j->repaired))
        return false;
    j->deaths_seen = d; /* a repair: the hint may fall short; ask the chunks */
    for (; j->scan_from < j->nchunks; j->scan_from++)
        if (CW_STATE(atomic_load(&j->cw[j->scan_from])) != CW_DONE)
            return false;
    j->complete = true;
    return true;
}

static uint64_t done_items(struct job *j)
{
    uint64_t d = atomic_load(&j->committed);
    return d < j->n ? d : j->n;
}

/* The caller's progress callback, if due (or final). */
static void progress(void (*cb)(size_t, size_t, void *), void *arg, int64_t *at, uint64_t done,
                     uint64_t total, bool final)
{
    if (!cb || (!final && done >= total)) /* done == total: only the final call says it */
        return;
    int64_t now = final ? 0 : mp__now_ns();
    if (!final && *at && now - *at < PROGRESS_NS)
        return;
    *at = now ? now : 1;
    cb((size_t)done, (size_t)total, arg);
}

/* Sleeps until done moves from seen, the deadline, or an interrupt; spins
 * first while the wakers run on other CPUs. 0, MP_ETIMEDOUT, MP_EINTR. */
static int wait_done(struct shared *sh, uint32_t seen, int64_t dl, mp__waiter *w)
{
    int64_t start;
    if (mp__spin(&sh->rspin, &sh->done, seen, dl, &start))
        return 0;
    atomic_store(&sh->dwant, 1);
    int r = 0;
    if (atomic_load(&sh->done) == seen)
        r = mp__futex_wait(&sh->done, seen, dl, w);
    mp__spin_learn(&sh->rspin, start, atomic_load(&sh->done) != seen);
    return r == MP_EINTR ? r : 0;
}

/* memcpy for the large copies of private data: streaming stores skip
 * reading the destination's lines into the cache first, and leave the
 * cache to the workers. */
static void copy_large(void *dst, const void *src, size_t len)
{
#if defined(__x86_64__)
    if (len >= ((size_t)256 << 10)) {
        char *d = dst;
        const char *s = src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15;
        memcpy(d, s, head);
        d += head, s += head, len -= head;
        size_t body = len & ~(size_t)63;
        for (size_t i = 0; i < body; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
            _mm_stream_si128((__m128i *)(d + i), a);
            _mm_stream_si128((__m128i *)(d + i + 16), b);
            _mm_stream_si128((__m128i *)(d + i + 32), c);
            _mm_stream_si128((__m128i *)(d + i + 48), e);
        }
        _mm_sfence();
        memcpy(d + body, s + body, len - body);
        return;
    }
#endif
    memcpy(dst, src, len);
}

/* Copies the results of chunks [from, to) that the job kept in its own
 * memory to the caller's. */
static void copy_back(mp_async *a, uint64_t from, uint64_t to)
{
    struct job *j = a->j;
    if (from >= to)
        return;
    uint64_t lo = chunk_lo(j, from), hi = chunk_hi(j, to - 1);
    if (a->out && j->out && j->out != a->out)
        copy_large((char *)a->out + lo * j->out_size, j->out + lo * j->out_size, (hi - lo) * j->out_size);
    if (a->status && j->status && j->status != a->status)
        memcpy(a->status + lo, j->status + lo, (hi - lo) * sizeof(int));
}

/* While a map runs: copies out the finished chunks at the front. */
static void async_drain(mp_async *a)
{
    struct job *j = a->j;
    if (!j->each || j->imap)
        return;
    uint64_t c = a->drained;
    while (c < j->nchunks && CW_STATE(atomic_load_explicit(&j->cw[c], memory_order_acquire)) == CW_DONE)
        c++;
    copy_back(a, a->drained, c);
    a->drained = c;
}

/* Waits for a's job to finish, copying out finished chunks meanwhile:
 * 0, MP_ECLOSED, MP_ETIMEDOUT, MP_EINTR. */
static int job_wait(mp_async *a, int64_t dl)
{
    mp_pool *p = a->pool;
    struct job *j = a->j;
    void (*cb)(size_t, size_t, void *) = a->progress;
    void *cb_arg = a->progress_arg;
    int64_t *cb_at = &a->progress_at;
    struct shared *sh = p->sh;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    while (r == 0) {
        uint32_t seen = atomic_load(&sh->done);
        if (job_finished(p, j))
            break;
        if (atomic_load(&j->closed)) {
            r = MP_ECLOSED;
            break;
        }
        async_drain(a);
        progress(cb, cb_arg, cb_at, done_items(j), j->n, false);
        int64_t now = mp__now_ns();
        if (dl != MP__NEVER && now >= dl) {
            r = MP_ETIMEDOUT;
            break;
        }
        int64_t until = dl;
        if (cb && *cb_at + PROGRESS_NS < until)
            until = *cb_at + PROGRESS_NS;
        r = wait_done(sh, seen, until, &w);
    }
    mp__wait_end(&w);
    return r;
}

/* ---- the manager ------------------------------------------------------------ */

/* With mu held: notes that j must go back into the ring. Each job once;
 * without memory for the note, it waits for room right here (a full ring
 * empties as the live workers take jobs). */
static void add_reappend_locked(mp_pool *p, struct job *j)
{
    for (int i = 0; i < p->nreappend; i++)
        if (p->reappend[i] == j)
            return;
    if (p->nreappend == p->capreappend) {
        int cap = p->capreappend * 2;
        struct job **r = mp__sys.realloc(p->reappend, (size_t)cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&p->mu);
            while (publish(p, j, true) < 0)
                nanosleep(&(struct timespec){0, 1000000}, NULL); /* not usleep: gone from POSIX */
            pthread_mutex_lock(&p->mu);
            return;
        }
        p->reappend = r;
        p->capreappend = cap;
    }
    p->reappend[p->nreappend++] = j;
}

/* With mu held: whether j is a job of the pool (not a block that was
 * recycled or freed). */
static bool job_known_locked(const mp_pool *p, const struct job *j)
{
    for (struct job *k = p->active; k; k = k->next_j)
        if (k == j)
            return true;
    for (struct job *k = p->limbo; k; k = k->next_j)
        if (k == j)
            return true;
    for (int i = 0; i < p->nreappend; i++)
        if (p->reappend[i] == j)
            return true;
    return false;
}

/* After the worker in slot id died: settles the chunks it held. */
static void repair(mp_pool *p, unsigned id)
{
    struct shared *sh = p->sh;
    struct slot *s = &sh->slots[id];
    struct job *j = atomic_load(&s->job);
    uint64_t item = atomic_load(&s->item);
    /* killed for its time: that item failed, unless it ended just before
     * the kill and the worker had gone on to another, which is innocent */
    bool timed = s->killed_item != NONE && s->killed_item == item;
    bool innocent = s->killed_item != NONE && s->killed_item != item;
    if (atomic_load(&s->hunt))
        atomic_fetch_sub(&sh->hunting, 1);
    if (atomic_load(&s->asleep))
        atomic_fetch_sub(&sh->sleepers, 1);
    /* A worker dies with a hazard on a job it had not checked yet (hold)
     * only in a short window; that job may be gone: act on known ones. */
    pthread_mutex_lock(&p->mu);
    if (j && !job_known_locked(p, j))
        j = NULL;
    pthread_mutex_unlock(&p->mu);
    if (j) {
        atomic_store(&j->repaired, 1); /* before any chunk goes back FREE */
        bool redo = false;
        uint64_t next = atomic_load(&j->next);
        for (uint64_t c = 0; c < j->nchunks; c++) {
            uint64_t w = atomic_load(&j->cw[c]);
            if (CW_STATE(w) == CW_FREE && c < next && CW_OFF(w) == 0) {
                redo = true; /* a claim that may have died half-way */
                continue;
            }
            if (CW_STATE(w) != CW_CLAIMED || CW_SLOT(w) != id)
                continue;
            uint64_t lo = chunk_lo(j, c), hi = chunk_hi(j, c), from = lo + CW_OFF(w);
            if (innocent && item >= from && item < hi) {
                from = item; /* to run again elsewhere */
            } else if (item >= from && item < hi) { /* it died running this item */
                if (j->status)
                    j->status[item & j->mask] = timed ? MP_ETIMEDOUT : MP_EWORKER;
                note_bad(j, item, timed ? BAD_TIME : BAD_WORKER);
                from = item + 1;
            }
            if (from >= hi) {
                atomic_store(&j->cw[c], CW(CW_DONE, 0, 0));
            } else {
                atomic_store(&j->cw[c], CW(CW_FREE, 0, from - lo));
                redo = true;
            }
        }
        if (redo) {
            atomic_fetch_add(&j->redo, 1);
            pthread_mutex_lock(&p->mu);
            bool passed = atomic_load(&sh->head) > j->last_pos;
            if (passed) /* held (not freed) until it is back in the ring */
                add_reappend_locked(p, j);
            pthread_mutex_unlock(&p->mu);
        }
    }
    atomic_store(&s->job, NULL);
    atomic_store(&s->item, NONE);
    atomic_store(&s->deadline, 0);
    atomic_store(&s->hunt, 0);
    atomic_store(&s->asleep, 0);
    s->killed_item = NONE;
    atomic_fetch_add(&sh->deaths, 1);
    wake_waiters(sh);
    wake_workers(sh);
}

static int start_worker(mp_pool *p, unsigned id)
{
    struct slot *s = &p->sh->slots[id];
    atomic_store(&s->state, S_STARTING);
    atomic_store(&s->item, NONE);
    s->killed_item = NONE;
    char name[32];
    snprintf(name, sizeof name, "PoolWorker-%u", id + 1);
    struct worker_arg a = {p, id};
    mp_process *w;
    int r = mp_process_new(&w, worker_main, &a,
                           &(mp_process_opts){.name = name, .daemon = true, .arg_size = sizeof a});
    if (r == 0 && (r = mp_process_start(w)) < 0)
        mp_process_free(w);
    p->procs[id] = r == 0 ? w : NULL;
    return r;
}

/* Ends every job still waited on: their waiters get MP_ECLOSED. */
static void close_jobs(mp_pool *p)
{
    pthread_mutex_lock(&p->mu);
    for (struct job *j = p->active; j; j = j->next_j)
        atomic_store(&j->closed, 1);
    pthread_mutex_unlock(&p->mu);
    wake_waiters(p->sh);
}

/* Stops every worker within a bounded time: SIGTERM, grace, SIGKILL. */
static void kill_all(mp_pool *p)
{
    struct shared *sh = p->sh;
    atomic_store(&sh->stop, 2);
    wake_workers(sh);
    for (int i = 0; i < p->nproc; i++)
        if (p->procs[i])
            mp_process_terminate(p->procs[i]);
    int64_t grace = mp__now_ns() + GRACE_NS;
    for (int i = 0; i < p->nproc; i++) {
        if (!p->procs[i])
            continue;
        int64_t left = grace - mp__now_ns();
        if (mp_process_join(p->procs[i], left > 0 ? left / 1e9 : 0) != 0)
            mp_process_kill(p->procs[i]);
    }
    for (int i = 0; i < p->nproc; i++) {
        if (!p->procs[i])
            continue;
        while (mp_process_join(p->procs[i], MP_FOREVER) == MP_EINTR)
            ; /* SIGKILLed: it ends */
        mp_process_free(p->procs[i]);
        p->procs[i] = NULL;
    }
}

static void *manager_main(void *arg)
{
    mp_pool *p = arg;
    struct shared *sh = p->sh;
    int n = p->nproc;
    struct pollfd *pf = p->m_pf;
    unsigned *who = p->m_who;
    bool *due = p->m_due;
    int tokens = RESTART_BURST;
    int64_t token_at = mp__now_ns();
    for (;;) {
        if (atomic_load(&p->terminate_req))
            break;
        int64_t now = mp__now_ns(), wake_at = MP__NEVER;
        /* refill the restart budget, and start replacements that wait */
        while (tokens < RESTART_BURST && now - token_at >= RESTART_GAP_NS) {
            tokens++;
            token_at += RESTART_GAP_NS;
        }
        if (tokens == RESTART_BURST)
            token_at = now;
        pthread_mutex_lock(&p->mu);
        int nre = p->nreappend;
        pthread_mutex_unlock(&p->mu);
        while (nre > 0) { /* a death's chunks to redo, for jobs head had passed */
            pthread_mutex_lock(&p->mu);
            struct job *j = p->reappend[nre - 1];
            pthread_mutex_unlock(&p->mu);
            if (publish(p, j, true) < 0) {
                wake_at = now + RESTART_GAP_NS; /* the ring is full: try again soon */
                break;
            }
            pthread_mutex_lock(&p->mu);
            p->nreappend = --nre;
            pthread_mutex_unlock(&p->mu);
        }
        bool stopping = atomic_load(&sh->stop) != 0;
        for (int i = 0; i < n; i++) {
            if (!due[i])
                continue;
            if (stopping && atomic_load(&sh->head) == atomic_load(&sh->tail) && nre == 0) {
                due[i] = false; /* closed and nothing left: no replacement */
                continue;
            }
            if (tokens == 0) {
                wake_at = token_at + RESTART_GAP_NS;
                break;
            }
            tokens--;
            if (start_worker(p, (unsigned)i) == 0)
                due[i] = false;
            else
                wake_at = now + RESTART_GAP_NS; /* no memory or pids now: later */
        }
        int k = 0;
        bool any = false;
        for (int i = 0; i < n; i++) {
            if (!p->procs[i])
                continue;
            any = true;
            int64_t dl = atomic_load(&sh->slots[i].deadline);
            if (dl && dl <= now) { /* past its time: kill it with its item */
                uint64_t item = atomic_load(&sh->slots[i].item);
                if (atomic_load(&sh->slots[i].deadline) == dl) {
                    sh->slots[i].killed_item = item;
                    mp_process_kill(p->procs[i]);
                }
            } else if (dl && dl < wake_at) {
                wake_at = dl;
            }
            pf[k] = (struct pollfd){.fd = mp_process_sentinel(p->procs[i]), .events = POLLIN};
            who[k++] = (unsigned)i;
        }
        bool pending = false;
        for (int i = 0; i < n; i++)
            pending |= due[i];
        if (!any && !pending)
            break; /* every worker left (close) */
        pf[k] = (struct pollfd){.fd = p->kick, .events = POLLIN};
        int ms = -1;
        /* A worker that starts a timed item writes its deadline to its
         * slot without a system call; while such items may run, look. */
        if (atomic_load(&p->timed) && now + TIMED_LOOK_NS < wake_at)
            wake_at = now + TIMED_LOOK_NS;
        if (wake_at != MP__NEVER) {
            int64_t left = wake_at - mp__now_ns();
            ms = left <= 0 ? 0 : (int)(left / 1000000) + 1;
        }
        if (mp__sys.poll(pf, (nfds_t)k + 1, ms) < 0) {
            if (errno != EINTR) /* no memory for the poll now: not a busy loop */
                nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
            continue;
        }
        if (pf[k].revents) {
            uint64_t v;
            ssize_t rd = mp__sys.read(p->kick, &v, sizeof v);
            (void)rd;
        }
        for (int x = 0; x < k; x++) {
            if (!pf[x].revents)
                continue;
            unsigned i = who[x];
            if (mp_process_join(p->procs[i], 0) != 0)
                continue;
            int state = atomic_load(&sh->slots[i].state);
            int code = mp_process_exitcode(p->procs[i]);
            mp_process_free(p->procs[i]);
            p->procs[i] = NULL;
            if (state == S_INIT_FAILED) {
                atomic_store(&p->broken, 1); /* it would fail again and again */
                atomic_store(&p->terminate_req, 1);
                continue;
            }
            repair(p, i);
            if (state == S_LEFT && code == 0)
                continue; /* left because the pool closed */
            due[i] = true; /* crashed, or retired (maxtasksperchild) */
            if (state == S_RETIRED && code == 0 && tokens < RESTART_BURST)
                tokens++; /* not a crash: no wait */
        }
    }
    /* terminate (asked, or the pool broke) or every worker left */
    if (atomic_load(&p->terminate_req)) {
        pthread_mutex_lock(&p->mu);
        p->state = TERMINATED;
        pthread_mutex_unlock(&p->mu);
        close_jobs(p);
    }
    kill_all(p);
    close_jobs(p); /* closed pool: anything unfinished cannot finish now */
    atomic_store(&p->gone, 1);
    mp__futex_wake(&p->gone, INT32_MAX);
    return NULL;
}


/* ---- the API ------------------------------------------------------------ */

static pid_t self_pid; /* getpid() is a system call; forks reset this */
static void pool_atfork_child(void) { self_pid = getpid(); }
__attribute__((constructor)) static void pool_init(void)
{
    self_pid = getpid();
    pthread_atfork(NULL, NULL, pool_atfork_child);
}


static void pool_destroy(mp_pool *p)
{
    if (p->kick >= 0)
        mp__close(p->kick);
    pthread_mutex_lock(&p->mu);
    for (struct job *j = p->active, *nx; j; j = nx) {
        nx = j->next_j;
        mp_shared_free(j);
    }
    if (p->sh) /* NULL: its allocation failed in mp_pool_new */
        reclaim_locked(p, true);
    for (struct job *j = p->spare, *nx; j; j = nx) {
        nx = j->next_j;
        mp_shared_free(j);
    }
    mp_shared_free(p->big);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_destroy(&p->mu);
    mp_shared_free(p->sh);
    free(p->procs);
    free(p->reappend);
    free(p->m_pf);
    free(p->m_who);
    free(p->m_due);
    free(p);
}

int mp_pool_new(mp_pool **out, const mp_pool_opts *opts)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    mp_pool_opts o = opts ? *opts : (mp_pool_opts){0};
    if (o.processes < 0 || o.processes > MAX_PROCS)
        return MP_EINVAL;
    int n = o.processes ? o.processes : mp_process_cpu_count();
    if (n < 1)
        n = 1;
    if (n > MAX_PROCS)
        n = MAX_PROCS;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    if (r < 0)
        return r;
    mp_pool *p = mp__sys.calloc(1, sizeof *p);
    if (!p) {
        mp__wait_end(&w);
        return MP_ENOMEM;
    }
    p->nproc = n;
    p->opts = o;
    p->kick = -1;
    p->owner = self_pid;
    pthread_mutex_init(&p->mu, NULL);
    p->procs = mp__sys.calloc((size_t)n, sizeof *p->procs);
    p->reappend = mp__sys.calloc((size_t)n, sizeof *p->reappend);
    p->capreappend = n;
    p->m_pf = mp__sys.calloc((size_t)n + 1, sizeof *p->m_pf);
    p->m_who = mp__sys.calloc((size_t)n + 1, sizeof *p->m_who);
    p->m_due = mp__sys.calloc((size_t)n, sizeof *p->m_due);
    p->sh = mp_shared_alloc(sizeof(struct shared) + (size_t)n * sizeof(struct slot));
    p->kick = mp__sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r = !p->procs || !p->reappend || !p->m_pf || !p->m_who || !p->m_due || !p->sh ? MP_ENOMEM : p->kick < 0 ? -errno : 0;
    if (r == 0)
        for (int i = 0; i < n; i++)
            atomic_store(&p->sh->slots[i].item, NONE);
    int started = 0;
    for (; r == 0 && started < n; started++)
        r = start_worker(p, (unsigned)started);
    /* every worker through its initializer */
    while (r == 0) {
        uint32_t ready = atomic_load(&p->sh->nready);
        if ((int)ready >= n)
            break;
        /* a worker that dies in its initializer cannot say so: look */
        r = mp__futex_wait(&p->sh->nready, ready, mp__now_ns() + 20000000, &w);
        r = r == MP_ETIMEDOUT ? 0 : r;
        for (int i = 0; r == 0 && i < n; i++) /* a worker that died in it */
            if (atomic_load(&p->sh->slots[i].state) == S_STARTING &&
                !mp_process_is_alive(p->procs[i]))
                r = MP_ETASK;
    }
    for (int i = 0; r == 0 && i < n; i++)
        if (atomic_load(&p->sh->slots[i].state) != S_READY)
            r = MP_ETASK;
    if (r == 0) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old); /* the manager takes no signals */
        int e = mp__sys.pthread_create(&p->manager, NULL, manager_main, p);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        r = e ? -e : 0;
        p->manager_on = e == 0;
    }
    mp__wait_end(&w);
    if (r < 0) {
        if (p->procs && p->sh)
            kill_all(p);
        pool_destroy(p);
        return r == -EAGAIN ? MP_ENOMEM : r;
    }
    *out = p;
    return 0;
}

static bool pool_ok(const mp_pool *p) { return p && p->owner == self_pid; }

/* Copies private inputs in, chunk by chunk in the order workers claim
 * them, each made claimable (limit) as soon as it is there: the workers
 * start on the first chunk while the rest is copied. */
static void feed_input(mp_pool *p, struct job *j, const char *src)
{
    for (uint64_t c = 0; c < j->nchunks; c++) {
        uint64_t lo = chunk_lo(j, c), hi = chunk_hi(j, c);
        copy_large((char *)j->in + lo * j->in_size, src + lo * j->in_size, (hi - lo) * j->in_size);
        atomic_store(&j->limit, hi);
        if (atomic_load(&j->wblocked) && atomic_exchange(&j->wblocked, 0))
            wake_workers(p->sh);
    }
}

/* Submits: the job, or a code. */
static int submit(mp_pool *p, mp_task fn, const struct shape *s, struct job **jp)
{
    if (!pool_ok(p))
        return MP_EINVAL;
    int r = check_shape(p, fn, s);
    if (r < 0)
        return r;
    pthread_mutex_lock(&p->mu);
    int state = p->state;
    pthread_mutex_unlock(&p->mu);
    if (state != RUNNING)
        return MP_ESTATE;
    struct job *j;
    if ((r = job_new(p, fn, s, &j)) < 0)
        return r;
    if ((r = publish(p, j, false)) < 0) {
        mp_shared_free(j);
        return r;
    }
    if (j->feed)
        feed_input(p, j, s->in);
    *jp = j;
    return 0;
}

int mp_pool_map(mp_pool *pool, mp_task fn, const void *in, size_t in_size, void *out,
                size_t out_size, size_t n, const mp_map_opts *opts)
{
    mp_async *a;
    int r = mp_pool_map_async(&a, pool, fn, in, in_size, out, out_size, n, opts);
    if (r < 0)
        return r;
    r = mp_async_get(a, MP_FOREVER);
    mp_async_free(a);
    return r;
}

int mp_pool_apply(mp_pool *pool, mp_task fn, const void *in, size_t in_size, void *out,
                  size_t out_size)
{
    return mp_pool_map(pool, fn, in, in_size, out, out_size, 1, NULL);
}

int mp_pool_map_async(mp_async **res, mp_pool *pool, mp_task fn, const void *in, size_t in_size,
                      void *out, size_t out_size, size_t n, const mp_map_opts *opts)
{
    if (!res)
        return MP_EINVAL;
    *res = NULL;
    mp_async *a = mp__sys.calloc(1, sizeof *a);
    if (!a)
        return MP_ENOMEM;
    struct shape s = {in, in_size, out, out_size, n, opts, false};
    int r = submit(pool, fn, &s, &a->j);
    if (r < 0) {
        free(a);
        return r;
    }
    a->pool = pool;
    a->out = out;
    a->status = opts ? opts->status : NULL;
    if (opts) {
        a->progress = opts->progress;
        a->progress_arg = opts->progress_arg;
    }
    *res = a;
    return 0;
}

int mp_pool_apply_async(mp_async **res, mp_pool *pool, mp_task fn, const void *in, size_t in_size,
                        void *out, size_t out_size)
{
    return mp_pool_map_async(res, pool, fn, in, in_size, out, out_size, 1, NULL);
}

/* Finishes a ready result once: copies out, reports the final progress. */
static void async_finish(mp_async *a)
{
    if (a->finished)
        return;
    a->finished = true;
    copy_back(a, a->drained, a->j->nchunks);
    a->result = bad_code(atomic_load(&a->j->first_bad));
    progress(a->progress, a->progress_arg, &a->progress_at, a->j->n, a->j->n, true);
}

int mp_async_wait(mp_async *r, double timeout)
{
    int64_t dl;
    if (!r || mp__deadline(timeout, &dl) < 0)
        return MP_EINVAL;
    if (r->finished)
        return 0;
    int e = job_wait(r, dl);
    if (e == 0)
        async_finish(r);
    return e;
}

bool mp_async_ready(mp_async *r)
{
    if (!r)
        return false;
    if (!r->finished && job_finished(r->pool, r->j))
        async_finish(r);
    return r->finished;
}

int mp_async_get(mp_async *r, double timeout)
{
    int e = mp_async_wait(r, timeout);
    return e < 0 ? e : r->result;
}

int mp_async_wait_any(mp_async **rs, size_t n, double timeout)
{
    int64_t dl;
    if (!rs || n == 0 || n > 1024 || mp__deadline(timeout, &dl) < 0)
        return MP_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!rs[i])
            return MP_EINVAL;
    struct shared *sh = rs[0]->pool->sh;
    bool one_pool = true;
    for (size_t i = 1; i < n; i++)
        one_pool &= rs[i]->pool == rs[0]->pool;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    while (r == 0) {
        uint32_t seen = atomic_load(&sh->done);
        bool closed = false;
        for (size_t i = 0; i < n; i++) {
            if (mp_async_ready(rs[i])) {
                mp__wait_end(&w);
                return (int)i;
            }
            closed |= atomic_load(&rs[i]->j->closed) != 0;
        }
        if (closed) {
            r = MP_ECLOSED;
            break;
        }
        if (dl != MP__NEVER && mp__now_ns() >= dl) {
            r = MP_ETIMEDOUT;
            break;
        }
        /* results of several pools: look again every few ms */
        int64_t until = one_pool ? dl : mp__now_ns() + 5000000;
        r = wait_done(sh, seen, until < dl ? until : dl, &w);
    }
    mp__wait_end(&w);
    return r;
}

void mp_async_free(mp_async *r)
{
    if (!r)
        return;
    job_release(r->pool, r->j);
    free(r);
}

/* ---- imap ------------------------------------------------------------------ */

int mp_pool_imap(mp_imap **it, mp_pool *pool, mp_task fn, const void *in, size_t in_size,
                 size_t out_size, size_t n, const mp_map_opts *opts, bool ordered)
{
    if (!it)
        return MP_EINVAL;
    *it = NULL;
    mp_imap *m = mp__sys.calloc(1, sizeof *m);
    if (!m)
        return MP_ENOMEM;
    struct shape s = {in, in_size, NULL, out_size, n, opts, true};
    int r = submit(pool, fn, &s, &m->j);
    if (r == 0 && !ordered && !(m->given = mp__sys.calloc(m->j->nchunks ? m->j->nchunks : 1, 1))) {
        job_release(pool, m->j);
        r = MP_ENOMEM;
    }
    if (r < 0) {
        free(m);
        return r;
    }
    m->pool = pool;
    m->ordered = ordered;
    m->window = m->j->mask + 1;
    m->cur = NONE;
    if (opts) {
        m->progress = opts->progress;
        m->progress_arg = opts->progress_arg;
    }
    *it = m;
    return 0;
}

static bool chunk_done(struct job *j, uint64_t c)
{
    return CW_STATE(atomic_load_explicit(&j->cw[c], memory_order_acquire)) == CW_DONE;
}

/* The window moved: let workers run further ahead. */
static void imap_slide(mp_imap *m)
{
    struct job *j = m->j;
    uint64_t lo = m->base < j->nchunks ? chunk_lo(j, m->base) : j->n;
    atomic_store(&j->limit, lo + m->window);
    if (atomic_load(&j->wblocked) && atomic_exchange(&j->wblocked, 0))
        wake_workers(m->pool->sh);
}

/* Picks the chunk to deliver from next, if one is ready. */
static bool imap_pick(mp_imap *m)
{
    struct job *j = m->j;
    if (m->ordered) {
        if (m->base < j->nchunks && chunk_done(j, m->base)) {
            m->cur = m->base;
            m->at = chunk_lo(j, m->cur);
            return true;
        }
        return false;
    }
    uint64_t end = atomic_load(&j->next);
    for (uint64_t c = m->base; c < end && c < j->nchunks; c++)
        if (!m->given[c] && chunk_done(j, c)) {
            m->cur = c;
            m->at = chunk_lo(j, c);
            return true;
        }
    return false;
}

int mp_imap_next(mp_imap *it, void *out, size_t *index, double timeout)
{
    int64_t dl;
    if (!it || mp__deadline(timeout, &dl) < 0 || (!out && it->j->out_size))
        return MP_EINVAL;
    struct job *j = it->j;
    if (it->taken == j->n) {
        if (!it->final) { /* n == 0: no last item made the final call */
            it->final = true;
            progress(it->progress, it->progress_arg, &it->progress_at, j->n, j->n, true);
        }
        return MP_EDONE;
    }
    struct shared *sh = it->pool->sh;
    mp__waiter w;
    int r = 0;
    bool began = false;
    while (it->cur == NONE) {
        uint32_t seen = atomic_load(&sh->done);
        if (imap_pick(it))
            break;
        if (atomic_load(&j->closed)) {
            r = MP_ECLOSED;
            break;
        }
        /* after a repair, the chunk may have been settled without a signal */
        if (atomic_load(&sh->deaths) != j->deaths_seen) {
            j->deaths_seen = atomic_load(&sh->deaths);
            continue;
        }
        progress(it->progress, it->progress_arg, &it->progress_at, it->taken, j->n, false);
        if (dl != MP__NEVER && mp__now_ns() >= dl) {
            r = MP_ETIMEDOUT;
            break;
        }
        if (!began) {
            if ((r = mp__wait_begin(&w)) < 0)
                break;
            began = true;
        }
        int64_t until = dl;
        if (it->progress && it->progress_at + PROGRESS_NS < until)
            until = it->progress_at + PROGRESS_NS;
        if ((r = wait_done(sh, seen, until, &w)) < 0)
            break;
    }
    if (began)
        mp__wait_end(&w);
    if (r < 0) {
        if (index)
            *index = SIZE_MAX; /* no item: not to be taken for an item's error */
        return r;
    }
    uint64_t i = it->at++, slot = i & j->mask;
    if (out && j->out_size)
        memcpy(out, j->out + slot * j->out_size, j->out_size);
    int st = j->status[slot];
    if (index)
        *index = (size_t)i;
    it->taken++;
    if (it->at == chunk_hi(j, it->cur)) { /* this chunk is delivered */
        if (!it->ordered)
            it->given[it->cur] = 1;
        it->cur = NONE;
        if (it->ordered)
            it->base++;
        else
            while (it->base < j->nchunks && it->given[it->base])
                it->base++;
        imap_slide(it);
    }
    if (it->taken == j->n) {
        it->final = true;
        progress(it->progress, it->progress_arg, &it->progress_at, j->n, j->n, true);
    }
    if (st == 0)
        return 0;
    return st == MP_EWORKER || st == MP_ETIMEDOUT ? st : MP_ETASK;
}

void mp_imap_free(mp_imap *it)
{
    if (!it)
        return;
    job_release(it->pool, it->j);
    free(it->given);
    free(it);
}

/* ---- close, terminate, join, free -------------------------------------- */

int mp_pool_close(mp_pool *pool)
{
    if (!pool_ok(pool))
        return MP_EINVAL;
    pthread_mutex_lock(&pool->mu);
    if (pool->state == RUNNING)
        pool->state = CLOSED;
    pthread_mutex_unlock(&pool->mu);
    uint32_t zero = 0;
    atomic_compare_exchange_strong(&pool->sh->stop, &zero, 1);
    wake_workers(pool->sh);
    kick(pool);
    return 0;
}

/* Waits for the manager to end (it has, once gone is set) and joins it. */
static void join_manager(mp_pool *p)
{
    pthread_mutex_lock(&p->mu);
    bool join = p->manager_on && !p->manager_joined;
    p->manager_joined = true;
    pthread_mutex_unlock(&p->mu);
    if (join)
        pthread_join(p->manager, NULL);
}

int mp_pool_terminate(mp_pool *pool)
{
    if (!pool_ok(pool))
        return MP_EINVAL;
    pthread_mutex_lock(&pool->mu);
    pool->state = TERMINATED;
    pthread_mutex_unlock(&pool->mu);
    atomic_store(&pool->terminate_req, 1);
    kick(pool);
    while (!atomic_load(&pool->gone))
        mp__futex_wait(&pool->gone, 0, MP__NEVER, NULL);
    join_manager(pool);
    return 0;
}

int mp_pool_join(mp_pool *pool, double timeout)
{
    int64_t dl;
    if (!pool_ok(pool) || mp__deadline(timeout, &dl) < 0)
        return MP_EINVAL;
    pthread_mutex_lock(&pool->mu);
    int state = pool->state;
    pthread_mutex_unlock(&pool->mu);
    if (state == RUNNING)
        return MP_ESTATE;
    mp__waiter w;
    int r = mp__wait_begin(&w);
    while (r == 0 && !atomic_load(&pool->gone))
        r = mp__futex_wait(&pool->gone, 0, dl, &w);
    mp__wait_end(&w);
    if (r == 0)
        join_manager(pool);
    return r;
}

void mp_pool_free(mp_pool *pool)
{
    if (!pool)
        return;
    if (pool->owner != self_pid)
        return; /* a copy inherited by a child: not its to stop */
    mp_pool_terminate(pool);
    pool_destroy(pool);
}
