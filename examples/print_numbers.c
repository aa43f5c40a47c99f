/* Two processes print 0..4, one line a second; the parent waits for both.
 * Python's equivalent:
 *
 *     def print_numbers():
 *         for i in range(5): print(i); time.sleep(1)
 *     p1 = Process(target=print_numbers); p2 = Process(target=print_numbers)
 *     p1.start(); p2.start(); p1.join(); p2.join()
 *     print("Both processes have finished.")
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
    if ((err = mp_process_new(&p1, print_numbers, NULL, NULL)) < 0 ||
        (err = mp_process_new(&p2, print_numbers, NULL, NULL)) < 0 ||
        (err = mp_process_start(p1)) < 0 || (err = mp_process_start(p2)) < 0) {
        fprintf(stderr, "print_numbers: %s\n", mp_strerror(err));
        return 1;
    }
    mp_process_join(p1, MP_FOREVER);
    mp_process_join(p2, MP_FOREVER);
    puts("Both processes have finished.");
    mp_process_free(p1);
    mp_process_free(p2);
    return 0;
}
