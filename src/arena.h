/* The family arena's internal interface (the allocator is in arena.c). */
#ifndef MPROC_ARENA_H
#define MPROC_ARENA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Gives the calling thread's cached blocks back to the arena and lets go of
 * its usage slot. Call it where a thread or process ends without running
 * thread-exit destructors (a child's _exit); allocating afterwards is fine. */
void mp__arena_flush_thread(void);

/* ---- for tests ---------------------------------------------------------- */
void *mp__arena_base(void);     /* the mapping, NULL if there is none */
size_t mp__arena_size(void);    /* its size in bytes, 0 if none */
int64_t mp__arena_backed(void); /* bytes of memory behind it now (the memfd's st_blocks) */
unsigned mp__arena_recoveries(void); /* how often a dead holder's lock was taken over */
pid_t mp__arena_lock_owner(void);    /* the process holding the allocator's lock, or 0 */
/* Takes the allocator's lock, as an allocation would, and returns holding it;
 * the caller must neither allocate nor fork until it lets go. */
void mp__arena_lock_for_test(void);
void mp__arena_unlock_for_test(void);
/* Walks every shared structure under the lock (running the recovery first
 * if a holder died): 0 if all is consistent, else minus the line of
 * arena.c whose check failed. */
int mp__arena_check(void);
/* Pages taken from the arena now (slabs, large blocks, runs in transit):
 * back to the same figure once the same objects are freed, so a run of
 * pages lost on an error path shows (tests). */
uint64_t mp__arena_pages_used(void);

#endif /* MPROC_ARENA_H */
