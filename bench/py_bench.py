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


def _helper_main(conn, lock, counter, e1, e2):
    while True:
        msg = conn.recv()
        if msg is None:
            return
        what, n = msg
        if what == "inc":
            _increment(lock, counter, n)
        else:
            _pong(e1, e2, n)
        conn.send(True)


_HELPER = None


def _helper():
    """A second process, started once, that inherits the shared objects (they
    cannot be sent through a pipe), so no batch pays for a process start."""
    global _HELPER
    if _HELPER is None:
        objs = (_fork.Lock(), _fork.RawValue("l", 0), _fork.Event(), _fork.Event())
        a, b = _fork.Pipe()
        _fork.Process(target=_helper_main, args=(b, *objs), daemon=True).start()
        _HELPER = (a, *objs)
    return _HELPER


def lock_contended_2proc(n):
    conn, lock, counter, _, _ = _helper()
    conn.send(("inc", n // 2))
    _increment(lock, counter, n - n // 2)
    conn.recv()


def event_pingpong(n):
    conn, _, _, e1, e2 = _helper()
    conn.send(("pong", n))
    for _ in range(n):
        e1.set()
        e2.wait()
        e2.clear()
    conn.recv()


# id -> function doing the operation n times; ids as in bench/bench.c.
ROWS = {
    "process_start_join": process_start_join,
    "cpu_count": cpu_count,
    "lock_uncontended": lock_uncontended,
    "lock_contended_2proc": lock_contended_2proc,
    "event_pingpong": event_pingpong,
}


def run_batch(fn, n):
    """Runs one batch of n operations; returns how long it took in ns."""
    t0 = time.perf_counter_ns()
    fn(n)
    return time.perf_counter_ns() - t0


def calibrate(fn, target_ns):
    """The batch size that takes about target_ns (see bench.c)."""
    n = 1
    while True:
        t = run_batch(fn, n)
        if t >= target_ns / 8:
            return max(1, int(n * target_ns / max(t, 1)))
        n *= 2


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
