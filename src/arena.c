/*
 * The family arena: mp_shared_alloc and friends.
 *
 * At load time we reserve one big sparse memfd mapping (os/memfd.c) before
 * any child exists, so every process of the family sees it at the same
 * address. The allocator lives inside it, for every process at once:
 *
 *   [ header | used bits | dirty bits | page tags | slab table | data pages ]
 *
 * Data pages are 4 KiB. The page allocator is a bitmap of used pages with
 * address-ordered first fit from a hint; coalescing is free in a bitmap.
 * Pages at or past `top` have never been used. A block of more than 32 KiB
 * is a run of pages, its first page tagged LARGE with the run's length.
 * Smaller blocks come from slabs: a run of 16..128 pages cut into blocks of
 * one size class (16-byte steps up to 128, then four classes per doubling),
 * every page tagged with the class, its offset in the slab and the slab's
 * descriptor. So a pointer finds its block from its page's tag alone, and a
 * pointer that is not a block (outside the arena, misaligned, inside a run,
 * past what the slab handed out) is recognised and ignored.
 *
 * Speed comes from per-thread caches: up to 64 blocks per class in process
 * memory, so alloc and free touch no line another thread writes, and the
 * lock is taken once per half-cache refill or spill. Usage is counted per
 * thread too, in a slot of the header only that thread writes, and summed
 * on demand. Caches go back at thread exit (key destructor), before a fork
 * (a child must never hand out a block the parent still holds), and at a
 * child's exit (mp__arena_flush_thread). A slab whose blocks have all come
 * back is returned to the page allocator, unless it is the class's last
 * slab with room (that keeps a free-alloc ping-pong off the system calls).
 *
 * Memory: a page is backed (fallocate) before first use, as under strict
 * overcommit a fault on an unbacked page is a SIGBUS: allocation fails
 * cleanly instead. Every freed run (a slab, a large block: 36 KiB and up)
 * is punched out and reads as zero afterwards; a run the system would not
 * punch is marked dirty and zeroed when reused. Blocks come back from the
 * cache dirty and are zeroed on reuse; never-used blocks are known to be zero.
 *
 * Finding a run scans the used-page bitmap from the lowest free page, but
 * gives up after MAX_HOLES holes too small for the request and takes pages
 * past the top instead (holes cost address space, not memory: they are
 * punched). Only an arena with no room past the top is scanned whole. So a
 * badly fragmented arena costs address space, never a long hold of the
 * family-wide lock.
 *
 * Death: one process-shared owner lock (os/olock.c) guards the shared state.
 * A process may die at any instant, holding it or not. Every change is
 * ordered so that a death leaves the primary state valid (used bits, tags,
 * slab descriptors and their free lists: at worst a block, a page run or a
 * slab is leaked, never handed out twice), and the derived state (partial
 * lists, descriptor free list, hint) is rebuilt by whoever inherits the lock
 * with MP_EOWNERDEAD (recover()). Counters only ever undercount what is
 * free, so a slab is never thought empty while a block of it is held.
 */
#include "arena.h"

#include "mproc.h"
#include "os/os.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE_SHIFT 12
#define PAGE ((uint64_t)1 << PAGE_SHIFT)
#define NCLASS 40
#define SMALL_MAX 32768
#define SLAB_MIN_PAGES 16     /* 64 KiB: every slab is worth punching */
#define MAX_HOLES 256         /* holes a run search looks at before the top */
#define CACHE_MAX 64
#define CACHE_BYTES (64 << 10)
#define NSLOTS 1024
#define META_GRAIN 32768      /* data pages whose metadata is backed at once */
#define NONE UINT64_MAX
#define DIRTY ((uintptr_t)1)  /* in a cache entry: the block must be zeroed */
#define MAGIC 0x616e657261706d31ull

/* Page tags: bits 0-1 the kind. LARGE: bits 2-63 the run's pages (first page
 * only). SLAB: bits 2-7 class, 8-23 page offset in the slab, 32-63 slab. */
enum { T_NONE, T_LARGE, T_SLAB };
#define TAG_KIND(t) ((unsigned)(t) & 3)
#define LARGE_TAG(n) ((uint64_t)(n) << 2 | T_LARGE)
#define LARGE_PAGES(t) ((t) >> 2)
#define SLAB_TAG(c, off, idx) ((uint64_t)(idx) << 32 | (uint64_t)(off) << 8 | (uint64_t)(c) << 2 | T_SLAB)
#define TAG_CLS(t) ((unsigned)((t) >> 2) & 63)
#define TAG_OFF(t) ((uint64_t)((t) >> 8) & 0xffff)
#define TAG_IDX(t) ((uint32_t)((t) >> 32))

enum { S_FREE, S_LIVE, S_DEAD };

/* One per thread that allocates: its share of mp_shared_usage. */
struct slot {
    _Atomic uint64_t owner; /* identity of the owning thread's process (mp__olock_self), 0: free. CAS */
    _Atomic int64_t bytes;  /* handed out minus freed by its owners; only the owner writes */
    char pad[48];
};
static_assert(sizeof(struct slot) == 64, "one slot per cache line");

/* A slab's descriptor. Lock rules: the lock guards every field. Without it,
 * mp_shared_free reads state, page and bump to validate a pointer: page
 * changes only while the slab is not LIVE, bump only grows while it is. */
struct slab {
    _Atomic uint32_t page;  /* its first data page */
    _Atomic uint32_t cap;   /* blocks */
    _Atomic uint32_t bump;  /* blocks carved so far; the rest were never used */
    _Atomic uint32_t head;  /* free blocks: index + 1, linked through their first word; 0 none */
    _Atomic uint32_t avail; /* blocks not held by anyone (free list + uncarved); never overcounts */
    _Atomic uint32_t next;  /* partial list, or the descriptor free list: index + 1 */
    _Atomic uint32_t prev;  /* partial list */
    _Atomic uint8_t state;  /* S_*: LIVE while its pages are a slab */
    _Atomic uint8_t cls;
    _Atomic uint8_t listed; /* on its class's partial list */
    uint8_t pad;
};
static_assert(sizeof(struct slab) == 32, "slab descriptor layout");

/* The arena's first bytes. Lock rules: `lock` guards everything below it
 * except `overflow` (atomic adds) and the slots (see struct slot). `top` is
 * written under the lock and read without it; it has a line of its own, as
 * every free reads it now and then. Primary state: top, meta_top, slab_top,
 * and the arrays past the header; derived (rebuilt by recover()): hint,
 * slab_free, partial[], and each live slab's avail count. */
struct hdr {
    uint64_t magic;
    uint64_t size;                    /* of the mapping */
    char pad0[48];
    _Atomic uint64_t top;             /* pages from here on were never used */
    char pad1[56];
    mp__olock lock;
    _Atomic uint64_t meta_top;        /* data pages whose metadata is backed; >= top */
    _Atomic uint64_t hint;            /* every page below it is used */
    _Atomic uint32_t slab_top;        /* descriptors ever used */
    _Atomic uint32_t slab_free;       /* unused descriptors: index + 1 */
    _Atomic uint32_t partial[NCLASS]; /* per class, slabs with blocks to hand out */
    _Atomic int64_t overflow;         /* usage of threads that got no slot */
    _Atomic uint32_t slot_top;        /* slots ever claimed */
    _Atomic uint32_t recoveries;      /* times recover() ran (tests) */
    _Atomic uint32_t serial;          /* the owner lock's token counter (os/olock.c) */
    char pad2[44];
    struct slot slots[NSLOTS];
};
static_assert(sizeof(struct hdr) == 384 + NSLOTS * 64, "header layout");

/* Process-local: set at load, before any fork, so the same in the family. */
static struct {
    mp__region r;
    struct hdr *h; /* NULL: no arena, every allocation fails */
    char *data;    /* page 0 */
    uint64_t npages;
    _Atomic uint64_t *used, *dirty, *tags;
    struct slab *slabs;
    size_t used_off, dirty_off, tags_off, slabs_off; /* in the mapping */
    size_t bitmap_len, tags_len, slabs_len;
    uint32_t slab_max;
    bool have_key;
    pthread_key_t key;
    _Atomic uint64_t top_seen; /* a lower bound of h->top */
} A;

/* Size classes, computed at load. */
static uint32_t csize[NCLASS], cpages[NCLASS], ccap[NCLASS], ccache[NCLASS];
static uint64_t cmul[NCLASS]; /* ceil(2^32 / size): exact division of multiples */

/* The thread cache: process memory, one per thread. */
struct bin {
    uint32_t n, cap;
    uintptr_t blk[CACHE_MAX]; /* block address | DIRTY */
};
struct tcache {
    struct slot *slot; /* NULL until the first count */
    int64_t bytes;     /* our copy of slot->bytes */
    bool noslot;       /* none was free: count in h->overflow */
    struct bin bin[NCLASS];
};
static __thread struct tcache *tc __attribute__((tls_model("initial-exec")));

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define ST(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)
#define PUB(x, v) atomic_store_explicit(&(x), (v), memory_order_release)
/* Stores before it become visible before stores after it: a death in
 * between leaves only the earlier ones. */
#define ORDER() atomic_thread_fence(memory_order_release)

static inline char *page_ptr(uint64_t pg) { return A.data + (pg << PAGE_SHIFT); }
static inline size_t page_off(uint64_t pg) { return (size_t)(A.data - A.r.base) + (pg << PAGE_SHIFT); }

static inline unsigned class_of(size_t size) /* 1 <= size <= SMALL_MAX */
{
    if (size <= 128)
        return (unsigned)((size + 15) >> 4) - 1;
    size_t s = size - 1;
    unsigned b = 63 - (unsigned)__builtin_clzll(s);
    return 8 + (b - 7) * 4 + (unsigned)((s >> (b - 2)) & 3);
}

static void classes_init(void)
{
    for (unsigned c = 0; c < NCLASS; c++) {
        uint32_t size = c < 8 ? 16 * (c + 1) : (5 + (c - 8) % 4) << (7 + (c - 8) / 4 - 2);
        uint32_t p0 = (8 * size + PAGE - 1) / PAGE, best = 0;
        if (p0 < SLAB_MIN_PAGES)
            p0 = SLAB_MIN_PAGES;
        for (uint32_t p = p0; p <= 2 * p0; p++) /* least waste, by fraction */
            if (!best || (uint64_t)(p * PAGE % size) * best < (uint64_t)(best * PAGE % size) * p)
                best = p;
        csize[c] = size;
        cpages[c] = best;
        ccap[c] = (uint32_t)(best * PAGE / size);
        cmul[c] = ((1ull << 32) + size - 1) / size;
        uint32_t n = CACHE_BYTES / size;
        ccache[c] = n > CACHE_MAX ? CACHE_MAX : n < 4 ? 4 : n;
    }
}

/* ---- the lock ------------------------------------------------------------- */

static void recover(void);

/* Not an interruptible call: a NULL waiter neither consumes a pending
 * mp_interrupt nor wakes for one; the critical sections are short. */
static void lock(void)
{
    if (mp__olock_acquire(&A.h->lock, MP__NEVER, NULL) == MP_EOWNERDEAD)
        recover();
}

static void unlock(void) { mp__olock_release(&A.h->lock); }

/* ---- pages ------------------------------------------------------------------ */

static void bits(_Atomic uint64_t *bm, uint64_t s, uint64_t n, bool on)
{
    while (n) {
        unsigned b = s & 63;
        uint64_t k = 64 - b < n ? 64 - b : n;
        uint64_t m = (k == 64 ? ~0ull : (1ull << k) - 1) << b;
        if (on)
            atomic_fetch_or_explicit(&bm[s >> 6], m, memory_order_relaxed);
        else
            atomic_fetch_and_explicit(&bm[s >> 6], ~m, memory_order_relaxed);
        s += k;
        n -= k;
    }
}

static inline bool bit(_Atomic uint64_t *bm, uint64_t pg) { return LD(bm[pg >> 6]) >> (pg & 63) & 1; }

/* Backs the metadata of pages below `need`. With the lock. */
static int meta_commit(uint64_t need)
{
    uint64_t have = LD(A.h->meta_top);
    if (need <= have)
        return 0;
    uint64_t to = (need + META_GRAIN - 1) / META_GRAIN * META_GRAIN;
    if (to > A.npages)
        to = A.npages;
    struct { size_t off, len, lo, hi; } part[] = {
        {A.used_off, A.bitmap_len, have / 64 * 8, (to + 63) / 64 * 8},
        {A.dirty_off, A.bitmap_len, have / 64 * 8, (to + 63) / 64 * 8},
        {A.tags_off, A.tags_len, have * 8, to * 8},
        {A.slabs_off, A.slabs_len, have / SLAB_MIN_PAGES * sizeof(struct slab),
         (to / SLAB_MIN_PAGES + 1) * sizeof(struct slab)},
    };
    for (size_t i = 0; i < sizeof part / sizeof part[0]; i++) {
        size_t lo = part[i].lo & ~(size_t)(PAGE - 1), hi = (part[i].hi + PAGE - 1) & ~(size_t)(PAGE - 1);
        if (hi > part[i].len)
            hi = part[i].len;
        if (lo < hi && mp__region_commit(&A.r, part[i].off + lo, hi - lo) < 0)
            return MP_ENOMEM;
    }
    ST(A.h->meta_top, to);
    return 0;
}

static uint32_t slab_cap(void) /* descriptors whose memory is backed */
{
    uint64_t n = LD(A.h->meta_top) / SLAB_MIN_PAGES + 1;
    return n < A.slab_max ? (uint32_t)n : A.slab_max;
}

/* First fit from the hint for a run of n pages, looking at max_holes holes
 * too small for it at most. Returns its first page or NONE; *first gets the
 * lowest free page seen, *tail where pages past the top start (the start of
 * a free run that reaches the top, or the top). With the lock. */
static uint64_t find_run(uint64_t n, unsigned max_holes, uint64_t *first, uint64_t *tail)
{
    uint64_t top = LD(A.h->top), pg = LD(A.h->hint);
    unsigned holes = 0;
    *first = NONE;
    *tail = top;
    while (pg < top) {
        uint64_t f = ~LD(A.used[pg >> 6]) >> (pg & 63); /* free pages from pg on */
        if (!f) {
            pg = (pg | 63) + 1;
            continue;
        }
        pg += (uint64_t)__builtin_ctzll(f);
        if (pg >= top)
            break;
        if (*first == NONE)
            *first = pg;
        uint64_t s = pg;
        while (pg < top && pg - s < n) {
            uint64_t u = LD(A.used[pg >> 6]) >> (pg & 63);
            if (u) {
                pg += (uint64_t)__builtin_ctzll(u);
                break;
            }
            pg = (pg | 63) + 1;
        }
        uint64_t e = pg < top ? pg : top;
        if (e - s >= n)
            return s;
        if (e == top) {
            *tail = s; /* a free run up to the top: extend it */
            break;
        }
        if (++holes >= max_holes)
            break;
    }
    return NONE;
}

/* Takes a run of n pages: first fit among the first MAX_HOLES holes, else
 * past the top, else (no room there) first fit among all. The first page, or
 * NONE. With the lock. */
static uint64_t take_pages(uint64_t n)
{
    uint64_t top = LD(A.h->top), first, tail;
    uint64_t start = find_run(n, MAX_HOLES, &first, &tail);
    if (start == NONE && (tail > A.npages || A.npages - tail < n))
        start = find_run(n, UINT_MAX, &first, &tail);
    if (start == NONE) {
        if (tail > A.npages || A.npages - tail < n)
            return NONE;
        start = tail;
        if (meta_commit(start + n) < 0)
            return NONE;
        ORDER();
        if (start + n > top)
            PUB(A.h->top, start + n);
    }
    bits(A.used, start, n, true);
    ST(A.h->hint, first == NONE || first == start ? start + n : first);
    return start;
}

/* Frees a run. With the lock. */
static void put_pages(uint64_t s, uint64_t n)
{
    bits(A.used, s, n, false);
    if (s < LD(A.h->hint))
        ST(A.h->hint, s);
}

static int commit_pages(uint64_t s, uint64_t n) { return mp__region_commit(&A.r, page_off(s), n * PAGE); }

/* Drops a run's contents: punched (zero) or, failing that, marked dirty. */
static void drop_pages(uint64_t s, uint64_t n)
{
    bool zero = mp__region_release(&A.r, page_off(s), n * PAGE) == 0;
    bits(A.dirty, s, n, !zero);
}

/* Zeroes the dirty pages of a run we hold. */
static void scrub(uint64_t s, uint64_t n)
{
    for (uint64_t pg = s, end = s + n; pg < end;) {
        uint64_t w = LD(A.dirty[pg >> 6]) >> (pg & 63);
        if (!w) {
            pg = (pg | 63) + 1;
            continue;
        }
        pg += (uint64_t)__builtin_ctzll(w);
        uint64_t a = pg;
        while (pg < end && bit(A.dirty, pg))
            pg++;
        if (a < end)
            memset(page_ptr(a), 0, (size_t)((pg < end ? pg : end) - a) * PAGE);
    }
    bits(A.dirty, s, n, false);
}

/* ---- usage slots -------------------------------------------------------------- */

static bool slot_attach(struct tcache *t)
{
    if (t->noslot)
        return false;
    struct hdr *h = A.h;
    uint64_t me = mp__olock_self();
    if (!me) { /* cannot vouch for itself: count in the overflow */
        t->noslot = true;
        return false;
    }
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < NSLOTS; i++) {
            uint64_t o = LD(h->slots[i].owner);
            /* Second pass: the slots of processes that died without
             * letting go (SIGKILL); their counts stay, they are exact. */
            if (pass == 0 ? o != 0 : o == 0 || o == me || mp__owner_state(o) != MP__OWNER_DEAD)
                continue;
            if (!atomic_compare_exchange_strong(&h->slots[i].owner, &o, me))
                continue;
            uint32_t top = LD(h->slot_top);
            while (top <= i && !atomic_compare_exchange_weak(&h->slot_top, &top, i + 1))
                ;
            t->slot = &h->slots[i];
            t->bytes = atomic_load(&t->slot->bytes);
            return true;
        }
    t->noslot = true;
    return false;
}

static void slot_detach(struct tcache *t)
{
    if (t->slot)
        atomic_store(&t->slot->owner, 0);
    t->slot = NULL;
    t->noslot = false;
}

static inline void count(struct tcache *t, int64_t d)
{
    if (t && (t->slot || slot_attach(t))) {
        t->bytes += d;
        ST(t->slot->bytes, t->bytes);
    } else {
        atomic_fetch_add_explicit(&A.h->overflow, d, memory_order_relaxed);
    }
}

/* ---- slabs (all with the lock) ---------------------------------------------- */

static void list_push(unsigned c, uint32_t idx)
{
    struct slab *d = &A.slabs[idx];
    uint32_t head = LD(A.h->partial[c]);
    ST(d->prev, 0);
    ST(d->next, head);
    if (head)
        ST(A.slabs[head - 1].prev, idx + 1);
    ST(A.h->partial[c], idx + 1);
    ST(d->listed, 1);
}

static void list_remove(unsigned c, uint32_t idx)
{
    struct slab *d = &A.slabs[idx];
    uint32_t p = LD(d->prev), n = LD(d->next);
    if (p)
        ST(A.slabs[p - 1].next, n);
    else
        ST(A.h->partial[c], n);
    if (n)
        ST(A.slabs[n - 1].prev, p);
    ST(d->listed, 0);
}

/* A new slab for class c: index + 1, or 0. */
static uint32_t slab_new(unsigned c)
{
    uint64_t n = cpages[c], s = take_pages(n);
    if (s == NONE)
        return 0;
    uint32_t idx, f = LD(A.h->slab_free);
    if (commit_pages(s, n) < 0 || (!f && LD(A.h->slab_top) >= slab_cap())) {
        drop_pages(s, n);
        put_pages(s, n);
        return 0;
    }
    scrub(s, n);
    if (f) {
        idx = f - 1;
        ST(A.h->slab_free, LD(A.slabs[idx].next));
    } else {
        idx = LD(A.h->slab_top);
        PUB(A.h->slab_top, idx + 1);
    }
    /* Still S_FREE: a death from here to LIVE leaks the pages only. */
    struct slab *d = &A.slabs[idx];
    ST(d->page, (uint32_t)s);
    ST(d->cls, (uint8_t)c);
    ST(d->cap, ccap[c]);
    ST(d->bump, 0);
    ST(d->head, 0);
    ST(d->avail, ccap[c]);
    for (uint64_t i = 0; i < n; i++)
        ST(A.tags[s + i], SLAB_TAG(c, i, idx));
    PUB(d->state, S_LIVE);
    list_push(c, idx);
    return idx + 1;
}

/* Gives a DEAD slab's pages back and makes its descriptor FREE. Idempotent:
 * recover() runs it again for a holder that died halfway. */
static void slab_finish(uint32_t idx)
{
    struct slab *d = &A.slabs[idx];
    uint64_t s = LD(d->page), n = cpages[LD(d->cls) % NCLASS];
    for (uint64_t i = 0; i < n; i++)
        ST(A.tags[s + i], 0);
    ORDER();
    drop_pages(s, n);
    put_pages(s, n);
    ORDER();
    PUB(d->state, S_FREE);
}

static void slab_release(unsigned c, uint32_t idx)
{
    list_remove(c, idx);
    PUB(A.slabs[idx].state, S_DEAD);
    ORDER();
    slab_finish(idx);
    ST(A.slabs[idx].next, LD(A.h->slab_free));
    ST(A.h->slab_free, idx + 1);
}

/* Hands up to `want` blocks of class c out into out[]. */
static unsigned refill(unsigned c, uintptr_t *out, unsigned want)
{
    unsigned got = 0;
    size_t size = csize[c];
    while (got < want) {
        uint32_t i = LD(A.h->partial[c]);
        if (!i && !(i = slab_new(c)))
            break;
        struct slab *d = &A.slabs[i - 1];
        char *start = page_ptr(LD(d->page));
        uint32_t cap = LD(d->cap), bump = LD(d->bump), head;
        while (got < want && (head = LD(d->head))) {
            char *b = start + (head - 1) * size;
            uint32_t next = *(uint32_t *)b;
            if (next > bump) /* a stray write into a freed block: drop the rest */
                next = 0;
            PUB(d->avail, LD(d->avail) ? LD(d->avail) - 1 : 0); /* it only undercounts */
            PUB(d->head, next);
            out[got++] = (uintptr_t)b | DIRTY;
        }
        while (got < want && bump < cap) {
            PUB(d->avail, LD(d->avail) ? LD(d->avail) - 1 : 0);
            PUB(d->bump, bump + 1);
            out[got++] = (uintptr_t)(start + bump++ * size);
        }
        if (!LD(d->head) && bump == cap)
            list_remove(c, i - 1);
    }
    return got;
}

/* Takes back one block that mp_shared_free validated. */
static void put_block(uintptr_t e)
{
    char *p = (char *)(e & ~(uintptr_t)15);
    uint64_t off = (uint64_t)(p - A.data), t = LD(A.tags[off >> PAGE_SHIFT]);
    if (TAG_KIND(t) != T_SLAB)
        return;
    uint32_t idx = TAG_IDX(t);
    struct slab *d = &A.slabs[idx];
    if (LD(d->state) != S_LIVE)
        return;
    unsigned c = TAG_CLS(t);
    uint32_t bi = (uint32_t)((off - (uint64_t)LD(d->page) * PAGE) / csize[c]);
    *(uint32_t *)p = LD(d->head);
    PUB(d->head, bi + 1);
    MP__HOOK("arena.block.linked");
    uint32_t avail = LD(d->avail) + 1;
    PUB(d->avail, avail);
    if (!LD(d->listed))
        list_push(c, idx);
    else if (avail == LD(d->cap) && (LD(d->prev) || LD(d->next)))
        slab_release(c, idx);
}

/* A LIVE slab's free blocks, counted: its free list (as refill walks it:
 * a link past bump ends it) and what lies past bump. A holder that died in
 * put_block between linking a block and counting it left avail one short. */
static uint32_t slab_free_blocks(const struct slab *d)
{
    unsigned c = LD(d->cls) % NCLASS;
    uint32_t cap = LD(d->cap), bump = LD(d->bump), k = 0;
    if (bump > cap)
        return 0;
    const char *start = page_ptr(LD(d->page));
    for (uint32_t b = LD(d->head); b && b <= bump && k < bump; k++)
        b = *(const uint32_t *)(start + (b - 1) * csize[c]);
    return k + (cap - bump);
}

/* After a holder died: finish what it left half done, rebuild what is derived. */
static void recover(void)
{
    uint32_t free = 0;
    ST(A.h->hint, 0);
    for (unsigned c = 0; c < NCLASS; c++)
        ST(A.h->partial[c], 0);
    for (uint32_t idx = LD(A.h->slab_top); idx-- > 0;) {
        struct slab *d = &A.slabs[idx];
        switch (LD(d->state)) {
        case S_DEAD:
            slab_finish(idx);
            /* fall through */
        case S_FREE:
            ST(d->next, free);
            free = idx + 1;
            break;
        case S_LIVE: /* its fields were all written before it became LIVE */
            ST(d->avail, slab_free_blocks(d));
            ST(d->listed, 0);
            if (LD(d->cls) < NCLASS && (LD(d->head) || LD(d->bump) < LD(d->cap)))
                list_push(LD(d->cls), idx);
            break;
        }
    }
    ST(A.h->slab_free, free);
    ST(A.h->recoveries, LD(A.h->recoveries) + 1);
}

/* ---- thread caches ------------------------------------------------------------ */

static struct tcache *tcache_get(void)
{
    struct tcache *t = tc;
    if (t || !A.h)
        return t;
    if (!(t = mp__sys.calloc(1, sizeof *t)))
        return NULL;
    for (unsigned c = 0; c < NCLASS; c++)
        t->bin[c].cap = ccache[c];
    if (A.have_key)
        pthread_setspecific(A.key, t);
    return tc = t;
}

static void flush(struct tcache *t)
{
    unsigned c = 0;
    while (c < NCLASS && !t->bin[c].n)
        c++;
    if (c == NCLASS)
        return; /* nothing cached: forks need not wait for the lock */
    lock();
    for (; c < NCLASS; c++) {
        struct bin *b = &t->bin[c];
        for (uint32_t i = 0; i < b->n; i++)
            put_block(b->blk[i]);
        b->n = 0;
    }
    unlock();
}

/* A full bin: the older half goes back. */
__attribute__((noinline)) static void spill(struct bin *b)
{
    uint32_t h = b->n / 2;
    lock();
    for (uint32_t i = 0; i < h; i++)
        put_block(b->blk[i]);
    unlock();
    memmove(b->blk, b->blk + h, (b->n - h) * sizeof b->blk[0]);
    b->n -= h;
}

void mp__arena_flush_thread(void)
{
    struct tcache *t = tc;
    if (!t)
        return;
    flush(t);
    slot_detach(t);
}

static void thread_exit(void *arg)
{
    struct tcache *t = arg;
    flush(t);
    slot_detach(t);
    tc = NULL;
    free(t);
}

static void atfork_prepare(void)
{
    if (tc)
        flush(tc);
}

/* Whatever is in the cache now the parent also holds; the slot is the
 * parent's thread's. */
static void atfork_child(void)
{
    struct tcache *t = tc;
    if (!t)
        return;
    for (unsigned c = 0; c < NCLASS; c++)
        if (t->bin[c].n) /* empty after the prepare's flush: no write, no page copies */
            t->bin[c].n = 0;
    if (t->slot || t->noslot) {
        t->slot = NULL;
        t->noslot = false;
    }
}

static void at_exit(void) { mp__arena_flush_thread(); }

/* ---- the API -------------------------------------------------------------------- */

__attribute__((noinline)) static void *large_alloc(size_t size)
{
    if (!A.h || size > A.npages * PAGE)
        return NULL;
    /* A process that cannot register with the owner lock (the kernel
     * refused its byte-range lock) cannot take the allocator's: no memory
     * for it, rather than a wait for a registration that may never come. */
    if (!mp__olock_self())
        return NULL;
    uint64_t n = (size + PAGE - 1) >> PAGE_SHIFT;
    lock();
    uint64_t s = take_pages(n);
    unlock();
    if (s == NONE)
        return NULL;
    /* Ours now, untagged: a death from here on leaks the run. */
    if (commit_pages(s, n) < 0) {
        drop_pages(s, n);
        lock();
        put_pages(s, n);
        unlock();
        return NULL;
    }
    scrub(s, n);
    PUB(A.tags[s], LARGE_TAG(n));
    count(tcache_get(), (int64_t)(n * PAGE));
    return page_ptr(s);
}

__attribute__((noinline)) static void large_free(uint64_t pg, uint64_t t)
{
    if (!atomic_compare_exchange_strong(&A.tags[pg], &t, 0))
        return; /* freed twice at once: one of them wins */
    uint64_t n = LARGE_PAGES(t);
    count(tcache_get(), -(int64_t)(n * PAGE));
    drop_pages(pg, n);
    lock();
    put_pages(pg, n);
    unlock();
}

__attribute__((noinline)) static void *small_alloc_slow(unsigned c)
{
    if (!A.h)
        return NULL;
    if (!mp__olock_self())
        return NULL; /* unregistered (see large_alloc) */
    struct tcache *t = tcache_get();
    /* cppcheck-suppress uninitvar ; refill only writes out[], and got says how much */
    uintptr_t one, *out = t ? t->bin[c].blk : &one;
    lock();
    unsigned got = refill(c, out, t ? (t->bin[c].cap + 1) / 2 : 1);
    unlock();
    if (!got)
        return NULL;
    uintptr_t e = out[--got];
    if (t)
        t->bin[c].n = got;
    void *p = (void *)(e & ~(uintptr_t)15);
    if (e & DIRTY)
        memset(p, 0, csize[c]);
    count(t, csize[c]);
    return p;
}

void *mp_shared_alloc(size_t size)
{
    if (size - 1 >= SMALL_MAX)
        /* cppcheck-suppress knownConditionTrueFalse ; size 0 comes here too: size - 1 wraps */
        return size ? large_alloc(size) : NULL;
    unsigned c = class_of(size);
    struct tcache *t = tc;
    struct bin *b;
    if (__builtin_expect(!t || !(b = &t->bin[c])->n, 0))
        return small_alloc_slow(c);
    uintptr_t e = b->blk[--b->n];
    void *p = (void *)(e & ~(uintptr_t)15);
    if (e & DIRTY)
        memset(p, 0, csize[c]);
    count(t, csize[c]);
    return p;
}

void *mp_shared_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    return mp_shared_alloc(n * size);
}

void mp_shared_free(void *ptr)
{
    uint64_t off = (uint64_t)((uintptr_t)ptr - (uintptr_t)A.data);
    if (off >= A.npages * PAGE || (off & 15)) /* NULL, or not ours */
        return;
    uint64_t pg = off >> PAGE_SHIFT;
    if (pg >= LD(A.top_seen)) {
        uint64_t top = atomic_load_explicit(&A.h->top, memory_order_acquire);
        ST(A.top_seen, top);
        if (pg >= top)
            return;
    }
    uint64_t t = atomic_load_explicit(&A.tags[pg], memory_order_acquire);
    if (TAG_KIND(t) == T_LARGE) {
        if (!(off & (PAGE - 1)))
            large_free(pg, t);
        return;
    }
    if (TAG_KIND(t) != T_SLAB)
        return;
    unsigned c = TAG_CLS(t);
    struct slab *d = &A.slabs[TAG_IDX(t)];
    uint64_t spage = pg - TAG_OFF(t), bo = off - spage * PAGE, bi = (bo * cmul[c]) >> 32;
    if (bi * csize[c] != bo || LD(d->state) != S_LIVE || LD(d->page) != spage || bi >= LD(d->bump))
        return; /* inside a block, or never handed out */
    struct tcache *t2 = tc;
    if (__builtin_expect(!t2, 0) && !(t2 = tcache_get())) {
        lock();
        put_block((uintptr_t)ptr);
        unlock();
        count(NULL, -(int64_t)csize[c]);
        return;
    }
    struct bin *b = &t2->bin[c];
    if (__builtin_expect(b->n == b->cap, 0))
        spill(b);
    b->blk[b->n++] = (uintptr_t)ptr | DIRTY;
    count(t2, -(int64_t)csize[c]);
}

size_t mp_shared_usage(void)
{
    if (!A.h)
        return 0;
    int64_t sum = atomic_load(&A.h->overflow);
    for (uint32_t i = 0, n = atomic_load(&A.h->slot_top); i < n; i++)
        sum += atomic_load(&A.h->slots[i].bytes);
    return sum > 0 ? (size_t)sum : 0;
}

/* ---- load ------------------------------------------------------------------------- */

static size_t round_page(size_t n) { return (n + PAGE - 1) & ~(size_t)(PAGE - 1); }

/* Places the header, metadata and data pages in a region of `size` bytes. */
static int layout(size_t size)
{
    uint64_t pages = size / PAGE; /* an upper bound on data pages */
    size_t hdr = round_page(sizeof(struct hdr));
    A.bitmap_len = round_page((pages + 63) / 64 * 8);
    A.tags_len = round_page(pages * 8);
    A.slab_max = (uint32_t)(pages / SLAB_MIN_PAGES + 1);
    A.slabs_len = round_page(A.slab_max * sizeof(struct slab));
    A.used_off = hdr;
    A.dirty_off = A.used_off + A.bitmap_len;
    A.tags_off = A.dirty_off + A.bitmap_len;
    A.slabs_off = A.tags_off + A.tags_len;
    size_t data = A.slabs_off + A.slabs_len;
    if (data + SLAB_MIN_PAGES * 8 * PAGE > size)
        return MP_ENOMEM;
    A.npages = (size - data) / PAGE;
    A.used = (_Atomic uint64_t *)(A.r.base + A.used_off);
    A.dirty = (_Atomic uint64_t *)(A.r.base + A.dirty_off);
    A.tags = (_Atomic uint64_t *)(A.r.base + A.tags_off);
    A.slabs = (struct slab *)(A.r.base + A.slabs_off);
    A.data = A.r.base + data;
    return mp__region_commit(&A.r, 0, hdr);
}

__attribute__((constructor(101))) static void arena_init(void)
{
    classes_init();
    A.have_key = pthread_key_create(&A.key, thread_exit) == 0;
    pthread_atfork(atfork_prepare, NULL, atfork_child);
    atexit(at_exit);
    if (mp__region_reserve(&A.r, mp__region_want(), MP__REGION_MIN) < 0)
        return;
    if (layout(A.r.size) < 0) {
        mp__region_unmap(&A.r);
        A.npages = 0;
        A.data = NULL;
        return;
    }
    struct hdr *h = (struct hdr *)A.r.base;
    h->magic = MAGIC;
    h->size = A.r.size;
    A.h = h;
    mp__olock_setup(A.r.fd, &h->serial); /* the memfd's byte locks say who lives */
}

/* ---- for tests -------------------------------------------------------------------- */

void *mp__arena_base(void) { return A.r.base; }
size_t mp__arena_size(void) { return A.r.size; }
int64_t mp__arena_backed(void) { return mp__region_backed(&A.r); }
unsigned mp__arena_recoveries(void) { return A.h ? atomic_load(&A.h->recoveries) : 0; }
pid_t mp__arena_lock_owner(void) { return A.h ? mp__olock_owner(&A.h->lock) : 0; }

void mp__arena_lock_for_test(void)
{
    if (A.h)
        lock();
}

void mp__arena_unlock_for_test(void)
{
    if (A.h)
        unlock();
}

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            return -__LINE__;                                                                      \
    } while (0)

static int check_slab(uint32_t idx, uint64_t top, uint32_t *listed)
{
    struct slab *d = &A.slabs[idx];
    unsigned c = LD(d->cls);
    CHECK(c < NCLASS);
    uint64_t s = LD(d->page), n = cpages[c];
    uint32_t cap = LD(d->cap), bump = LD(d->bump), avail = LD(d->avail), k = 0;
    CHECK(s + n <= top && cap == ccap[c] && bump <= cap && avail <= cap);
    for (uint64_t i = 0; i < n; i++)
        CHECK(bit(A.used, s + i) && LD(A.tags[s + i]) == SLAB_TAG(c, i, idx));
    for (uint32_t b = LD(d->head); b; b = *(uint32_t *)(page_ptr(s) + (b - 1) * csize[c])) {
        CHECK(b <= bump && ++k <= bump);
    }
    CHECK(avail <= k + cap - bump);
    bool room = LD(d->head) || bump < cap;
    CHECK(room == (LD(d->listed) == 1));
    *listed += room;
    return 0;
}

static int check_locked(void)
{
    struct hdr *h = A.h;
    uint64_t top = LD(h->top), hint = LD(h->hint);
    CHECK(top <= LD(h->meta_top) && LD(h->meta_top) <= A.npages);
    for (uint64_t pg = 0; pg < hint && pg < top; pg++)
        CHECK(bit(A.used, pg));
    uint32_t st = LD(h->slab_top), nfree = 0, listed = 0, seen = 0;
    CHECK(st <= slab_cap());
    for (uint32_t idx = 0; idx < st; idx++) {
        unsigned s = LD(A.slabs[idx].state);
        CHECK(s == S_FREE || s == S_LIVE);
        if (s == S_FREE) {
            nfree++;
            continue;
        }
        int r = check_slab(idx, top, &listed);
        if (r)
            return r;
    }
    for (unsigned c = 0; c < NCLASS; c++) {
        uint32_t prev = 0;
        for (uint32_t i = LD(h->partial[c]); i; prev = i, i = LD(A.slabs[i - 1].next)) {
            struct slab *d = &A.slabs[i - 1];
            CHECK(i <= st && ++seen <= st);
            CHECK(LD(d->state) == S_LIVE && LD(d->cls) == c && LD(d->prev) == prev);
        }
    }
    CHECK(seen == listed);
    uint32_t k = 0;
    for (uint32_t i = LD(h->slab_free); i; i = LD(A.slabs[i - 1].next)) {
        CHECK(i <= st && ++k <= nfree && LD(A.slabs[i - 1].state) == S_FREE);
    }
    CHECK(k == nfree);
    return 0;
}

uint64_t mp__arena_pages_used(void)
{
    if (!A.h)
        return 0;
    lock();
    uint64_t n = 0, top = LD(A.h->top);
    for (uint64_t w = 0; w < (top + 63) / 64; w++) {
        uint64_t m = top - w * 64 >= 64 ? ~0ull : (1ull << (top - w * 64)) - 1;
        n += (uint64_t)__builtin_popcountll(LD(A.used[w]) & m);
    }
    unlock();
    return n;
}

int mp__arena_check(void)
{
    if (!A.h)
        return 0;
    lock();
    int r = check_locked();
    unlock();
    return r;
}
