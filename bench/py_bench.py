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


# id -> function doing the operation n times; ids as in bench/bench.c.
ROWS = {
    "process_start_join": process_start_join,
    "cpu_count": cpu_count,
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
