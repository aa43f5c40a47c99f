/* A worker process puts 0..4 on a queue; the parent waits for it, then
 * takes them off and prints them.
 * The Python original (seed/queue_worker.py):
 *
 *     import multiprocessing
 *
 *     def worker(queue):
 *         for i in range(5):
 *             queue.put(i)
 *
 *     if __name__ == "__main__":
 *         queue = multiprocessing.Queue()
 *         process = multiprocessing.Process(target=worker, args=(queue,))
 *         process.start()
 *         process.join()
 *         while not queue.empty():
 *             print(queue.get())
 *
 * The queue lives in the family arena: the child gets it by pointer. A put
 * that returned has its message in the queue, so joining the worker before
 * draining it is safe (in Python it is only because the items are small).
 */
#include <mproc.h>
#include <stdio.h>

static int worker(void *arg)
{
    mp_queue *queue = arg;
    for (int i = 0; i < 5; i++) {
        int err = MP_PUT(queue, i); /* copies the int's bytes into the queue */
        if (err < 0) {
            fprintf(stderr, "queue_worker: put: %s\n", mp_strerror(err));
            return 1;
        }
    }
    return 0;
}

int main(void)
{
    mp_queue *queue;
    mp_process *process;
    int err;
    if ((err = mp_queue_new(&queue, NULL)) < 0 ||
        (err = mp_process_new(&process, worker, queue, NULL)) < 0 ||
        (err = mp_process_start(process)) < 0 ||
        (err = mp_process_join(process, MP_FOREVER)) < 0) {
        fprintf(stderr, "queue_worker: %s\n", mp_strerror(err));
        return 1;
    }
    if (mp_process_exitcode(process) != 0) {
        fprintf(stderr, "queue_worker: the worker failed\n");
        return 1;
    }
    mp_process_free(process);

    while (!mp_queue_empty(queue)) {
        int v;
        ssize_t n = MP_GET(queue, v); /* the message's length, or an error */
        if (n < 0) {
            fprintf(stderr, "queue_worker: get: %s\n", mp_strerror((int)n));
            return 1;
        }
        printf("%d\n", v);
    }
    mp_queue_free(queue);
    return 0;
}
