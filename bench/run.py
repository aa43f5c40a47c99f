"""Runs the mproc benchmarks and prints one table: mproc, Python, the floor.

    python3 bench/run.py BUILD_BENCH_DIR [--quick] [ROW_ID...]

(`make bench` runs it as `python3 bench/run.py build/bench`.) It runs
BUILD_BENCH_DIR/mproc_bench, then bench/py_bench.py with this interpreter,
one after the other so that they do not compete for the CPUs, passes both
the same arguments, and joins their rows by id.

Adding a row: nothing to do here. Add it to bench/bench.c (and, if Python
has the same operation, to bench/py_bench.py); see the comments there.
"""
import math
import os
import platform
import subprocess
import sys


def run(cmd):
    """Runs cmd; returns (exit status, its stdout split into tab fields)."""
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        sys.exit(f"run.py: cannot run {cmd[0]}: {e.strerror}")
    return proc.returncode, [line.split("\t") for line in proc.stdout.splitlines()]


def sig3(v):
    """v with 3 significant digits, trailing zeros kept: '183', '1.80'."""
    v = float(f"{v:.3g}")  # round first, so 999.7 becomes 1000
    decimals = max(0, 2 - math.floor(math.log10(abs(v)))) if v else 2
    return f"{v:.{decimals}f}"


def fmt_time(ns):
    """ns in the largest unit that keeps it >= 1: '183 us', '1.80 ms'."""
    if ns is None:
        return "-"
    for scale, unit in ((1e9, "s"), (1e6, "ms"), (1e3, "us"), (1, "ns")):
        if float(f"{ns / scale:.3g}") >= 1 or scale == 1:
            return f"{sig3(ns / scale)} {unit}"


def fmt_ratio(a, b):
    return "-" if a is None or not b else f"{sig3(a / b)}x"


def main(argv):
    if not argv:
        sys.exit("usage: run.py BUILD_BENCH_DIR [--quick] [ROW_ID...]")
    bench_dir, args = argv[0], argv[1:]
    here = os.path.dirname(os.path.abspath(__file__))

    rc, c_out = run([os.path.join(bench_dir, "mproc_bench"), *args])
    if rc != 0:
        sys.exit(f"run.py: mproc_bench failed (exit status {rc})")
    py_rc, py_out = run([sys.executable, os.path.join(here, "py_bench.py"), *args])
    if py_rc != 0:
        print(f"run.py: py_bench.py failed (exit status {py_rc})", file=sys.stderr)

    repeats = {f[1] for f in c_out if f[0] == "REPEATS"}
    py_repeats = {f[1] for f in py_out if f[0] == "REPEATS"}
    rows = [(f[1], f[2], float(f[3]), float(f[4])) for f in c_out if f[0] == "ROW"]
    python = {f[1]: float(f[2]) for f in py_out if f[0] == "PY"}

    n = ", ".join(sorted(repeats)) or "?"
    if py_repeats and py_repeats != repeats:
        n += f" (Python: {', '.join(sorted(py_repeats))})"
    print(f"Median time per operation over {n} repeats; lower is better. "
          "Ratio < 1 means mproc is faster.")
    print(f"Machine: {len(os.sched_getaffinity(0))} CPUs (nproc), "
          f"Linux {platform.release()}, Python {platform.python_version()}.")
    print()

    table = [("figure", "mproc", "Python", "floor", "mproc/Python", "mproc/floor")]
    for row_id, _, mproc_ns, floor_ns in rows:
        py_ns = python.get(row_id)
        table.append((row_id, fmt_time(mproc_ns), fmt_time(py_ns), fmt_time(floor_ns),
                      fmt_ratio(mproc_ns, py_ns), fmt_ratio(mproc_ns, floor_ns)))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        print("  ".join(cells).rstrip())

    print()
    for row_id, description, _, _ in rows:
        print(f"{row_id}: {description}")
    print("floor: the same work done with raw system calls, no library")
    return 0 if py_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
