/* Two processes print 0..4, one line a second; the parent waits for both.
 * The Python original (seed/process_print_numbers.py):
 *
 *     import multiprocessing
 *     import time
 *
 *     def print_numbers():
 *         for i in range(5):
 *             print(i)
 *             time.sleep(1)
 *
 *     if __name__ == "__main__":
 *         # Create two processes
 *         process1 = multiprocessing.Process(target=print_numbers)
 *         process2 = multiprocessing.Process(target=print_numbers)
 *         # Start the processes
 *         process1.start()
 *         process2.start()
 *         # Wait for processes to finish
 *         process1.join()
 *         process2.join()
 *         print("Both processes have finished.")
 *
 * The two children run at the same time, so their lines may interleave in
 * any order: 0 0 1 1 ... 4 4 is the usual one.
 */
#include <mproc.h>
#include <stdio.h>
#include <unistd.h>

static int print_numbers(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        printf("%d\n", i);
        fflush(stdout); /* show each line as it comes, even into a pipe */
        sleep(1);
    }
    return 0; /* the exit code */
}

int main(void)
{
    mp_process *p1, *p2;
    int err;
    /* Create two processes, then start them. */
    if ((err = mp_process_new(&p1, print_numbers, NULL, NULL)) < 0 ||
        (err = mp_process_new(&p2, print_numbers, NULL, NULL)) < 0 ||
        (err = mp_process_start(p1)) < 0 || (err = mp_process_start(p2)) < 0) {
        fprintf(stderr, "process_print_numbers: %s\n", mp_strerror(err));
        return 1;
    }
    /* Wait for them to finish: join returns once the child has ended. */
    if ((err = mp_process_join(p1, MP_FOREVER)) < 0 ||
        (err = mp_process_join(p2, MP_FOREVER)) < 0) {
        fprintf(stderr, "process_print_numbers: join: %s\n", mp_strerror(err));
        return 1;
    }
    if (mp_process_exitcode(p1) != 0 || mp_process_exitcode(p2) != 0) {
        fprintf(stderr, "process_print_numbers: a child failed\n");
        return 1;
    }
    puts("Both processes have finished.");
    mp_process_free(p1);
    mp_process_free(p2);
    return 0;
}
