"""Compiles and runs every complete C program of a Markdown document.

    python3 doc_programs.py DOC.md CC INCLUDE_DIR LIBMPROC_A WORK_DIR

A complete program is a ```c block that defines main. Each is built the way
the guide tells a reader to (-std=c11, the static library, -pthread) with
warnings as errors, and must exit 0 within its time limit, so no example in
the documents rots. Exits 1 naming the programs that failed.

A program that waits for Ctrl-C is marked by the comment
`<!-- doc-test: sigint -->` on the line before its block: it gets SIGINT once
it has installed a handler for it (SigCgt in /proc/PID/status).
"""
import os
import re
import subprocess
import signal
import sys
import time

LIMIT_S = 60


def catches_sigint(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1
    except OSError:
        pass
    return False


def run_program(exe, work, sigint):
    """(exit status or None on timeout, output)"""
    proc = subprocess.Popen([exe], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if sigint:
        end = time.monotonic() + LIMIT_S
        while proc.poll() is None and not catches_sigint(proc.pid) and time.monotonic() < end:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, ""


def main(doc, cc, include, lib, work):
    text = open(doc, encoding="utf-8").read()
    os.makedirs(work, exist_ok=True)
    failed, n = [], 0
    for m in re.finditer(r"```c\n(.*?)```", text, re.S):
        src = m.group(1)
        if not re.search(r"\bint main\s*\(", src):
            continue
        n += 1
        line = text.count("\n", 0, m.start()) + 1
        name = f"{os.path.basename(doc)}:{line}"
        c_file = os.path.join(work, f"prog{n}.c")
        exe = os.path.join(work, f"prog{n}")
        with open(c_file, "w", encoding="utf-8") as f:
            f.write(src)
        build = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", include,
                                c_file, lib, "-pthread", "-lm", "-o", exe],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if build.returncode != 0:
            failed.append(name)
            print(f"FAIL {name}: does not compile\n{build.stdout}")
            continue
        before = text[:m.start()].rstrip().splitlines()
        sigint = bool(before) and before[-1].strip() == "<!-- doc-test: sigint -->"
        code, out = run_program(exe, work, sigint)
        if code != 0:
            failed.append(name)
            why = f"still running after {LIMIT_S} s" if code is None else f"exit status {code}"
            print(f"FAIL {name}: {why}\n{out}")
        else:
            print(f"ok {name}")
    print(f"{n - len(failed)} of {n} programs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
