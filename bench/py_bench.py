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


# ---- pools ------------------------------------------------------------------
# Pools are made on first use and kept for the whole run (as bench.c does);
# multiprocessing terminates them at exit. The map rows take n as the number
# of items (several map calls for a larger n), so their figures are per item.

SQ_ITEMS = 10**7   # the most items of one map call in the square rows
CPU_ITEMS = 200    # the most items of one map call in the 1 ms rows
BULK_MAX = 100000  # the most apply_async results outstanding at once

_POOLS = {}


def _pool(procs, where=None):
    """A Pool(procs) made once; where="same": made with this process pinned
    to one CPU, so that its workers (and its threads) inherit that CPU."""
    key = (procs, where)
    if key not in _POOLS:
        if where:
            _place(where, 1)
        try:
            _POOLS[key] = _fork.Pool(procs)
        finally:
            if where:
                _place(None, 1)
    return _POOLS[key]


def _square(x):
    return x * x


def pool_map_square(n):
    """Pool(2).map(x * x) over range(k), k up to SQ_ITEMS a call. chunksize
    k // 8 (which is also Pool's default for 2 workers) was the best of k // 2,
    k // 8, k // 32, 10**4 and 10**3 measured at k = 10**5 and 10**6 (113 and
    135 ns an item; k // 32 and 10**4 within 10%, 10**3 40% slower). Python
    has no arena: the private row is the same."""
    pool = _pool(2)
    while n > 0:
        k = min(n, SQ_ITEMS)
        out = pool.map(_square, range(k), chunksize=max(1, k // 8))
        if len(out) != k or out[-1] != (k - 1) ** 2 or out[k // 2] != (k // 2) ** 2:
            raise RuntimeError("pool_map_square: wrong results")
        n -= k


_LCG_MASK = (1 << 64) - 1
_BUSY = None  # (steps of about 1 ms of pure Python, the result for x = 1)


def _busy(x, iters):
    """The pure-Python twin of bench.c's busy(): an LCG, iters steps."""
    for _ in range(iters):
        x = (x * 6364136223846793005 + 1442695040888963407) & _LCG_MASK
    return x


def _busy_item(iters):
    return _busy(1, iters)


def _busy_init():
    """How many _busy steps take 1 ms here (the fastest of 5 runs, scaled,
    three rounds), measured once, as bench.c does for its C loop."""
    global _BUSY
    if _BUSY is None:
        iters = 1 << 10
        for _ in range(3):
            best = 1e18
            for _ in range(5):
                t0 = time.perf_counter_ns()
                _busy(1, iters)
                best = min(best, time.perf_counter_ns() - t0)
            iters = max(1, int(iters * 1e6 / max(best, 1)))
        _BUSY = (iters, _busy(1, iters))
    return _BUSY


def _map_cpu(procs):
    """Pool(procs).map of items of about 1 ms of pure-Python CPU, k up to
    CPU_ITEMS a call, chunksize 1 (the best for items this long): Python's
    pool overhead at the same item time as bench.c's (its own 1 ms)."""
    def row(n):
        iters, expect = _busy_init()
        pool = _pool(procs)
        while n > 0:
            k = min(n, CPU_ITEMS)
            out = pool.map(_busy_item, [iters] * k, chunksize=1)
            if out != [expect] * k:
                raise RuntimeError("pool_map_cpu: wrong results")
            n -= k
    return row


def _apply_rtt(where):
    """pool.apply(x * x, (i,)) round trips, Pool(2); where="same": a pool
    made pinned to one CPU and this process pinned there for the batch."""
    def row(n):
        pool = _pool(2, where)
        if where:
            _place(where, 1)
        try:
            for i in range(n):
                if pool.apply(_square, (i,)) != i * i:
                    raise RuntimeError("pool_apply_rtt: wrong result")
        finally:
            if where:
                _place(None, 1)
    return row


def pool_apply_async_bulk(n):
    """apply_async(x * x) up to BULK_MAX at a time, then .get() each, Pool(2)."""
    pool = _pool(2)
    done = 0
    while done < n:
        k = min(n - done, BULK_MAX)
        rs = [pool.apply_async(_square, (i,)) for i in range(done, done + k)]
        for i, r in enumerate(rs, done):
            if r.get() != i * i:
                raise RuntimeError("pool_apply_async_bulk: wrong result")
        done += k


def pool_new_free_2(n):
    """Pool(2), then terminate() + join() (as mp_pool_free terminates; close()
    + join() measured the same, 8.8 ms here)."""
    for _ in range(n):
        p = _fork.Pool(2)
        p.terminate()
        p.join()


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
    "pool_map_square_10m": pool_map_square,
    "pool_map_square_10m_private": pool_map_square,
    "pool_map_cpu_1ms": _map_cpu(len(os.sched_getaffinity(0))),
    "pool_map_cpu_1ms_oversub4x": _map_cpu(4 * len(os.sched_getaffinity(0))),
    "pool_apply_rtt": _apply_rtt(None),
    "pool_apply_rtt_same_cpu": _apply_rtt("same"),
    "pool_apply_async_bulk": pool_apply_async_bulk,
    "pool_new_free_2": pool_new_free_2,
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
