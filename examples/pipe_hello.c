/* A message crosses a pipe from one child process to another.
 * The Python original (seed/pipe_hello.py):
 *
 *     import multiprocessing
 *
 *     def sender(pipe):
 *         pipe.send("Hello from sender!")
 *
 *     def receiver(pipe):
 *         message = pipe.recv()
 *         print(f"Receiver received: {message}")
 *
 *     if __name__ == "__main__":
 *         pipe = multiprocessing.Pipe()
 *         process1 = multiprocessing.Process(target=sender, args=(pipe[0],))
 *         process2 = multiprocessing.Process(target=receiver, args=(pipe[1],))
 *         process1.start()
 *         process2.start()
 *         process1.join()
 *         process2.join()
 *
 * A pipe's two ends are file descriptors: each process has its own copy,
 * inherited when it starts, so the pipe is made before the processes. Each
 * child closes the end it does not use, and the parent closes both once the
 * children have them: then, if the sender died without sending, the
 * receiver would see the pipe closed (MP_ECLOSED) instead of waiting forever.
 */
#include <mproc.h>
#include <stdio.h>

/* Both ends, handed to each child (Python passes one; C children inherit
 * both, and free the other). */
struct ends {
    mp_conn *a; /* the sender's end (Python's pipe[0]) */
    mp_conn *b; /* the receiver's end (pipe[1]) */
};

static int sender(void *arg)
{
    struct ends *e = arg;
    mp_conn_free(e->b); /* not ours */
    const char msg[] = "Hello from sender!";
    int err = mp_conn_send(e->a, msg, sizeof msg); /* 19 bytes: the NUL too */
    mp_conn_free(e->a);
    if (err < 0) {
        fprintf(stderr, "pipe_hello: send: %s\n", mp_strerror(err));
        return 1;
    }
    return 0;
}

static int receiver(void *arg)
{
    struct ends *e = arg;
    mp_conn_free(e->a); /* not ours */
    char message[64];
    ssize_t n = mp_conn_recv(e->b, message, sizeof message, MP_FOREVER);
    mp_conn_free(e->b);
    if (n < 0) {
        fprintf(stderr, "pipe_hello: recv: %s\n", mp_strerror((int)n));
        return 1;
    }
    if (n == 0 || message[n - 1] != '\0') {
        fprintf(stderr, "pipe_hello: recv: not a string\n");
        return 1;
    }
    printf("Receiver received: %s\n", message);
    return 0;
}

int main(void)
{
    struct ends e;
    mp_process *process1, *process2;
    int err;
    if ((err = mp_pipe(&e.a, &e.b, true)) < 0 ||
        (err = mp_process_new(&process1, sender, &e, NULL)) < 0 ||
        (err = mp_process_new(&process2, receiver, &e, NULL)) < 0 ||
        (err = mp_process_start(process1)) < 0 ||
        (err = mp_process_start(process2)) < 0) {
        fprintf(stderr, "pipe_hello: %s\n", mp_strerror(err));
        return 1;
    }
    /* Both children have their copies now; the parent uses neither end. */
    mp_conn_free(e.a);
    mp_conn_free(e.b);

    if ((err = mp_process_join(process1, MP_FOREVER)) < 0 ||
        (err = mp_process_join(process2, MP_FOREVER)) < 0) {
        fprintf(stderr, "pipe_hello: join: %s\n", mp_strerror(err));
        return 1;
    }
    int failed = mp_process_exitcode(process1) != 0 || mp_process_exitcode(process2) != 0;
    mp_process_free(process1);
    mp_process_free(process2);
    if (failed) {
        fprintf(stderr, "pipe_hello: a child failed\n");
        return 1;
    }
    return 0;
}
