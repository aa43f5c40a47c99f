"""Runs the mproc benchmarks, prints one table (mproc, Python, the floor) and
writes it up as a report.

    python3 bench/run.py BUILD_BENCH_DIR [--quick] [ROW_ID...]

(`make bench` runs it as `python3 bench/run.py build/bench`.) It runs
BUILD_BENCH_DIR/mproc_bench, then bench/py_bench.py with this interpreter,
one after the other so that they do not compete for the CPUs, passes both
the same arguments, and joins their rows by id.

What it writes:
  - stdout: the table, as text.
  - report.md: the machine, how to read the figures, the table in Markdown,
    and report.png, a bar chart of the two ratios per row (drawn by
    bench/plot.gp with gnuplot). A full run (every row, full repeats, as
    `make bench` does) writes them in bench/, where they are committed; a
    run with --quick or with ROW_IDs writes them in BUILD_BENCH_DIR instead,
    so that a smoke test never overwrites the committed report.
If gnuplot is missing it tries `apt-get install -y gnuplot-nox` (through
`sudo -n` when not root); if that fails the report is written without the
chart and stderr says so. The chart never makes the benchmark fail.

Adding a row: nothing to do here. Add it to bench/bench.c (and, if Python
has the same operation, to bench/py_bench.py); see the comments there.
"""
import datetime
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = ("figure", "mproc", "Python", "floor", "mproc/Python", "mproc/floor")
FLOOR_NOTE = "floor: the same work done with raw system calls, no library"


def run(cmd):
    """Runs cmd; returns (exit status, its stdout split into tab fields)."""
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        sys.exit(f"run.py: cannot run {cmd[0]}: {e.strerror}")
    return proc.returncode, [line.split("\t") for line in proc.stdout.splitlines()]


def warn(msg):
    print(f"run.py: {msg}", file=sys.stderr)


# ---- formatting ------------------------------------------------------------

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


def ratio(a, b):
    """a / b, or None where either is missing or b is 0."""
    return None if a is None or not b else a / b


def fmt_ratio(r):
    return "-" if r is None else f"{sig3(r)}x"


# ---- the figures -----------------------------------------------------------

def collect(bench_dir, args):
    """Runs both benchmarks. Returns (rows, repeats text, Python's exit status);
    each row is a dict: id, description, mproc, python, floor (ns; python may be
    None), vs_python, vs_floor (ratios, None where missing)."""
    rc, c_out = run([os.path.join(bench_dir, "mproc_bench"), *args])
    if rc != 0:
        sys.exit(f"run.py: mproc_bench failed (exit status {rc})")
    py_rc, py_out = run([sys.executable, os.path.join(HERE, "py_bench.py"), *args])
    if py_rc != 0:
        warn(f"py_bench.py failed (exit status {py_rc})")

    repeats = {f[1] for f in c_out if f[0] == "REPEATS"}
    py_repeats = {f[1] for f in py_out if f[0] == "REPEATS"}
    n = ", ".join(sorted(repeats)) or "?"
    if py_repeats and py_repeats != repeats:
        n += f" (Python: {', '.join(sorted(py_repeats))})"

    python = {f[1]: float(f[2]) for f in py_out if f[0] == "PY"}
    rows = []
    for f in c_out:
        if f[0] != "ROW":
            continue
        mproc_ns, floor_ns, py_ns = float(f[3]), float(f[4]), python.get(f[1])
        rows.append({"id": f[1], "description": f[2], "mproc": mproc_ns,
                     "python": py_ns, "floor": floor_ns,
                     "vs_python": ratio(mproc_ns, py_ns),
                     "vs_floor": ratio(mproc_ns, floor_ns)})
    return rows, n, py_rc


def table_cells(rows):
    """The table as lists of strings, header first."""
    cells = [HEADER]
    for r in rows:
        cells.append((r["id"], fmt_time(r["mproc"]), fmt_time(r["python"]),
                      fmt_time(r["floor"]), fmt_ratio(r["vs_python"]),
                      fmt_ratio(r["vs_floor"])))
    return cells


# ---- the text table ----------------------------------------------------------

def print_table(rows, repeats):
    print(f"Median time per operation over {repeats} repeats; lower is better. "
          "Ratio < 1 means mproc is faster.")
    print(f"Machine: {len(os.sched_getaffinity(0))} CPUs (nproc), "
          f"Linux {platform.release()}, Python {platform.python_version()}.")
    print()
    cells = table_cells(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    for c in cells:
        line = [c[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(c[1:], widths[1:])]
        print("  ".join(line).rstrip())
    print()
    for r in rows:
        print(f"{r['id']}: {r['description']}")
    print(FLOOR_NOTE)


# ---- the report --------------------------------------------------------------

def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def machine_lines():
    usable, online = len(os.sched_getaffinity(0)), os.cpu_count()
    cpus = f"{usable} CPUs" + (f" usable of {online} online" if online != usable else "")
    return [f"- CPU: {cpu_model() or 'unknown'}, {cpus}",
            f"- Kernel: Linux {platform.release()} ({platform.machine()})",
            f"- Python: {platform.python_version()}"]


def mode_line(args):
    quick = "--quick" in args
    ids = [a for a in args if a != "--quick"]
    if not args:
        return "Run: full (`make bench`), every row."
    what = "`--quick` (fewer, shorter batches: a smoke test, not a measurement)" \
        if quick else "full repeats"
    rows = f"rows {', '.join(f'`{i}`' for i in ids)}" if ids else "every row"
    return f"Run: {what}, {rows}."


def markdown_table(rows):
    cells = table_cells(rows)
    out = ["| " + " | ".join(cells[0]) + " |",
           "| --- |" + " ---: |" * (len(HEADER) - 1)]
    for c in cells[1:]:
        out.append(f"| `{c[0]}` | " + " | ".join(c[1:]) + " |")
    return out


def write_report(path, rows, repeats, args, chart):
    """Writes report.md at path; chart is the PNG's file name, or None."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# mproc benchmark report", "",
             f"Date: {now}. {mode_line(args)}", "",
             "Machine:", "", *machine_lines(), "",
             "## How to read it", "",
             f"Each figure is the median time of one operation over {repeats} "
             "repeats; lower is better.",
             "*mproc* is this library, *Python* is the same operation with "
             "Python's `multiprocessing` (`-` where Python has none), and the "
             "*floor* is the raw system calls doing the same work, with no library.",
             "A ratio below 1x means mproc is faster: mproc/Python is how much of "
             "Python's time mproc takes, mproc/floor how close mproc comes to the "
             "raw system calls.",
             "Regenerate with `make bench` (bench/run.py).", ""]
    if chart:
        lines += [f"![ratios]({chart})", ""]
    lines += ["## Figures", "", *markdown_table(rows), "", "What each row does:", ""]
    lines += [f"- `{r['id']}`: {r['description']}" for r in rows]
    lines += [f"- {FLOOR_NOTE}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ---- the chart -----------------------------------------------------------------

def apt_get(sudo, *args):
    """Runs sudo + apt-get args quietly; True on success, else says why on stderr."""
    cmd = [*sudo, "apt-get", *args]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        warn(f"{' '.join(cmd)}: {e}")
        return False
    if proc.returncode != 0:
        warn(f"{' '.join(cmd)} failed: " + " / ".join(proc.stdout.strip().splitlines()[-3:]))
    return proc.returncode == 0


def install_gnuplot():
    """Tries to install Debian's gnuplot-nox (updating the package lists only if
    the first try fails); True if gnuplot is then on PATH."""
    sudo = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            warn("gnuplot is missing, and installing it needs root or sudo")
            return False
        sudo = ["sudo", "-n"]
    warn("gnuplot is missing; installing gnuplot-nox with apt-get")
    install = ("install", "-y", "--no-install-recommends", "gnuplot-nox")
    if not apt_get(sudo, *install):
        if not (apt_get(sudo, "update") and apt_get(sudo, *install)):
            return False
    return shutil.which("gnuplot") is not None


def draw_chart(rows, png_path):
    """Draws the ratio chart with bench/plot.gp; True on success."""
    if not shutil.which("gnuplot") and not install_gnuplot():
        return False
    ratios = [x for r in rows for x in (r["vs_python"], r["vs_floor"]) if x]
    if not ratios:
        return False
    lo = 10 ** math.floor(math.log10(min(min(ratios), 1.0)) - 0.5)
    hi = 10 ** math.ceil(math.log10(max(max(ratios), 1.0)) + 0.5)
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as data:
        for i, r in enumerate(rows):
            y = len(rows) - i  # the first row at the top
            cols = [y, r["id"], r["vs_python"] or "NaN", r["vs_floor"] or "NaN",
                    fmt_ratio(r["vs_python"]), fmt_ratio(r["vs_floor"])]
            data.write("\t".join(map(str, cols)) + "\n")
    params = (f"datafile='{data.name}'; outfile='{png_path}'; nrows={len(rows)}; "
              f"xmin={lo}; xmax={hi}")
    try:
        proc = subprocess.run(["gnuplot", "-e", params, os.path.join(HERE, "plot.gp")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        warn(f"gnuplot: {e}")
        return False
    finally:
        os.unlink(data.name)
    if proc.returncode != 0:
        warn("gnuplot failed: " + " / ".join(proc.stdout.strip().splitlines()[-3:]))
        return False
    return True


def shown(path):
    """path relative to the current directory if it lies under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def report(bench_dir, args, rows, repeats):
    """Writes report.md and report.png: in bench/ for a full run, else in
    bench_dir. Never fails the benchmark."""
    out_dir = HERE if not args else bench_dir
    md, png = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.png")
    try:
        chart = draw_chart(rows, png)
    except Exception as e:  # the chart must never fail the benchmark
        warn(f"chart: {e}")
        chart = False
    if not chart:
        warn("the report has no chart (gnuplot unavailable or failed)")
        if os.path.exists(png):
            os.unlink(png)  # a stale chart would not match the figures
    try:
        write_report(md, rows, repeats, args, "report.png" if chart else None)
    except OSError as e:
        warn(f"cannot write {md}: {e.strerror}")
        return
    warn(f"wrote {shown(md)}" + (f" and {shown(png)}" if chart else ""))


def main(argv):
    if not argv:
        sys.exit("usage: run.py BUILD_BENCH_DIR [--quick] [ROW_ID...]")
    bench_dir, args = argv[0], argv[1:]
    rows, repeats, py_rc = collect(bench_dir, args)
    print_table(rows, repeats)
    report(bench_dir, args, rows, repeats)
    return 0 if py_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
