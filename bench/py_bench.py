"""Python's figures for the mproc benchmarks (stdlib only).

    python3 bench/py_bench.py [--quick] [ROW_ID...]

The same rows and the same method as bench/bench.c: each operation is timed
in batches of about BATCH_MS (batch size calibrated once per row), and the
median time per operation over the repeats is printed in nanoseconds:

    REPEATS\t<n>
    PY\t<id>\t<ns>

Row ids that Python has no equivalent for are skipped, so run.py can pass
every id to both programs; bench.c is the one that rejects unknown ids.

Adding a row: write a function that does the operation n times, and add it
to ROWS under the same id as its row in bench/bench.c.
"""
import multiprocessing
import os
import statistics
import sys
import time

REPEATS, QUICK_REPEATS = 11, 3
BATCH_MS, QUICK_BATCH_MS = 30.0, 5.0  # target length of one batch

_fork = multiprocessing.get_context("fork")


def _return_zero():
    pass


def process_start_join(n):
    for _ in range(n):
        p = _fork.Process(target=_return_zero)
        p.start()
        p.join()


def cpu_count(n):
    for _ in range(n):
        os.cpu_count()


_LOCK = None


def lock_uncontended(n):
    global _LOCK
    if _LOCK is None:
        _LOCK = _fork.Lock()
    lock = _LOCK
    for _ in range(n):
        lock.acquire()
        lock.release()


def _increment(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value += 1


def _pong(e1, e2, n):
    for _ in range(n):
        e1.wait()
        e1.clear()
        e2.set()


_ALL_CPUS = sorted(os.sched_getaffinity(0))


def _place(where, side):
    """Pins this process as bench.c's place_side does: where is None (every
    CPU), "same" (both sides on the first CPU) or "cross" (side s on the
    s-th CPU). Every thread of it: a Queue's feeder thread keeps the
    affinity it was started with."""
    if where is None:
        cpus = _ALL_CPUS
    elif where == "same":
        cpus = _ALL_CPUS[:1]
    else:
        cpus = _ALL_CPUS[side:side + 1]
        if not cpus:
            raise OSError("fewer than 2 CPUs for a cross-CPU row")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that just ended
            pass


class _Shared:
    """What the helpers inherit (it cannot be sent through a pipe)."""

    def __init__(self):
        self.lock = _fork.Lock()
        self.counter = _fork.RawValue("l", 0)
        self.e1, self.e2 = _fork.Event(), _fork.Event()
        self.queue = _fork.Queue()
        self.pipe, self.peer = _fork.Pipe()  # duplex: main uses pipe, helper 0 peer


def _helper_main(conn, sh):
    while True:
        msg = conn.recv()
        if msg is None:
            return
        what, n, where, arg = msg
        _place(where, 0)
        if what == "inc":
            _increment(sh.lock, sh.counter, n)
        elif what == "pong":
            _pong(sh.e1, sh.e2, n)
        elif what == "put":  # arg: message size; 8 means ints
            q = sh.queue
            if arg == 8:
                for i in range(n):
                    q.put(i)
            else:
                m = bytes(arg)
                for _ in range(n):
                    q.put(m)
        elif what == "put_stop":  # n messages of arg bytes, then None
            q, m = sh.queue, bytes(arg)
            for _ in range(n):
                q.put(m)
            q.put(None)
        elif what == "get_stop":  # until None
            q = sh.queue
            while q.get() is not None:
                pass
        elif what == "echo":
            c = sh.peer
            for _ in range(n):
                c.send_bytes(c.recv_bytes())
        elif what == "send":  # n messages of arg bytes
            c, m = sh.peer, bytes(arg)
            for _ in range(n):
                c.send_bytes(m)
        conn.send(True)


N_HELPERS = 3
_HELPERS = None


def _helpers():
    """Helper processes, started once, that inherit the shared objects, so
    no batch pays for a process start. Returns (shared, command pipes)."""
    global _HELPERS
    if _HELPERS is None:
        sh = _Shared()
        conns = []
        for _ in range(N_HELPERS):
            a, b = _fork.Pipe()
            _fork.Process(target=_helper_main, args=(b, sh), daemon=True).start()
            conns.append(a)
        _HELPERS = (sh, conns)
    return _HELPERS


def _two_sides(what, n, where, arg, body):
    """Runs `what` in helper 0 as side 0 and body() here as side 1, both
    placed by where; returns when both are done."""
    _, conns = _helpers()
    _place(where, 1)
    try:
        conns[0].send((what, n, where, arg))
        body()
        conns[0].recv()
    finally:
        _place(None, 1)


def lock_contended_2proc(n):
    sh, conns = _helpers()
    conns[0].send(("inc", n // 2, None, None))
    _increment(sh.lock, sh.counter, n - n // 2)
    conns[0].recv()


def _event_pingpong(where):
    def row(n):
        sh, _ = _helpers()
        e1, e2 = sh.e1, sh.e2

        def serve():
            for _ in range(n):
                e1.set()
                e2.wait()
                e2.clear()
        _two_sides("pong", n, where, None, serve)
    return row


def _queue_1to1(size, where=None):
    """Helper 0 puts n messages of size bytes (ints for 8), here gets them."""
    def row(n):
        q = _helpers()[0].queue

        def get():
            for _ in range(n):
                q.get()
        _two_sides("put", n, where, size, get)
    return row


def queue_2to2_64b(n):
    """Helpers 0 and 1 put n // 2 and n - n // 2 messages, then None; helper
    2 and this process get until None."""
    sh, conns = _helpers()
    conns[0].send(("put_stop", n // 2, None, 64))
    conns[1].send(("put_stop", n - n // 2, None, 64))
    conns[2].send(("get_stop", 0, None, None))
    q = sh.queue
    while q.get() is not None:
        pass
    for c in conns:
        c.recv()


def _pipe_pingpong(where):
    """send_bytes + recv_bytes of 64 bytes here, helper 0 echoes."""
    def row(n):
        c = _helpers()[0].pipe
        m = bytes(64)

        def serve():
            for _ in range(n):
                c.send_bytes(m)
                c.recv_bytes()
        _two_sides("echo", n, where, None, serve)
    return row


def pipe_stream_1m(n):
    """Helper 0 send_bytes 1 MiB messages, here recv_bytes them."""
    c = _helpers()[0].pipe

    def recv():
        for _ in range(n):
            c.recv_bytes()
    _two_sides("send", n, None, 1 << 20, recv)


# id -> function doing the operation n times; ids as in bench/bench.c.
ROWS = {
    "process_start_join": process_start_join,
    "cpu_count": cpu_count,
    "lock_uncontended": lock_uncontended,
    "lock_contended_2proc": lock_contended_2proc,
    "event_pingpong": _event_pingpong(None),
    "event_pingpong_same_cpu": _event_pingpong("same"),
    "event_pingpong_cross_cpu": _event_pingpong("cross"),
    "queue_1to1_64b": _queue_1to1(64),
    "queue_1to1_64b_same_cpu": _queue_1to1(64, "same"),
    "queue_1to1_64b_cross_cpu": _queue_1to1(64, "cross"),
    "queue_1to1_8b": _queue_1to1(8),
    "queue_1to1_4k": _queue_1to1(4096),
    "queue_1to1_1m": _queue_1to1(1 << 20),
    "queue_2to2_64b": queue_2to2_64b,
    "pipe_pingpong_64b": _pipe_pingpong(None),
    "pipe_pingpong_64b_same_cpu": _pipe_pingpong("same"),
    "pipe_pingpong_64b_cross_cpu": _pipe_pingpong("cross"),
    "pipe_stream_1m": pipe_stream_1m,
}


def run_batch(fn, n):
    """Runs one batch of n operations; returns how long it took in ns."""
    t0 = time.perf_counter_ns()
    fn(n)
    return time.perf_counter_ns() - t0


def calibrate(fn, target_ns):
    """The batch size that takes about target_ns: doubling, then scaling,
    checked against a batch of the size found (see bench.c)."""
    n = 1
    while True:
        t = run_batch(fn, n)
        if t >= target_ns / 8:
            break
        n *= 2
    for _ in range(8):
        n = max(1, int(n * target_ns / max(t, 1)))
        t = run_batch(fn, n)
        if target_ns / 2 <= t <= target_ns * 2:
            break
    return n


def main(argv):
    quick = "--quick" in argv
    repeats = QUICK_REPEATS if quick else REPEATS
    target_ns = (QUICK_BATCH_MS if quick else BATCH_MS) * 1e6
    ids = [a for a in argv if not a.startswith("-")] or list(ROWS)

    print(f"REPEATS\t{repeats}", flush=True)
    for row_id in ids:
        fn = ROWS.get(row_id)
        if fn is None:
            continue  # no Python equivalent
        n = calibrate(fn, target_ns)
        per_op = [run_batch(fn, n) / n for _ in range(repeats)]
        print(f"PY\t{row_id}\t{statistics.median(per_op):.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
