#!/usr/bin/env python3
"""Breaks one error path of the library per fault class, on purpose, in a
copy of the tree, and checks that the fault-injection case of that class
fails (or crashes, or hangs past its limit). A plant that no case notices is
a missing test. Run: make fault-plants (or tests/fault_plants.py SRC BUILD).

Each plant: (fault class, file, the code as it is, the code broken, the case
that must catch it)."""
import os
import shutil
import subprocess
import sys
import tempfile

PLANTS = [
    ("EINTR: a send cut by a signal is reported, not retried", "src/conn.c",
     "        if (errno == EINTR)\n            continue;\n        if (errno == EPIPE || errno == ECONNRESET)",
     "        if (errno == EPIPE || errno == ECONNRESET)",
     "eintr_pipe"),
    ("EAGAIN: a full socket is an error instead of a wait", "src/conn.c",
     "        if (errno != EAGAIN)\n            return -errno;\n        int r = wait_io(c->fd, POLLOUT",
     "        if (errno != EAGAIN || len < 100000)\n            return -errno;\n        int r = wait_io(c->fd, POLLOUT",
     "eagain_pipe"),
    ("ENOMEM: a handle's allocation is used unchecked", "src/conn.c",
     "    mp_conn *c = mp__sys.calloc(1, sizeof *c);\n    if (c) {",
     "    mp_conn *c = mp__sys.calloc(1, sizeof *c);\n    {",
     "enomem_pipe"),
    ("EMFILE: a start that fails after the fork keeps the child's lifeline", "src/process.c",
     "    mp__lifeline_drop(life.w); /* the child sees it cut, and leaves */\n    reap_abandoned",
     "    reap_abandoned",
     "emfile_process"),
    ("ENFILE: socketpair's error replaced by another code", "src/conn.c",
     "    if (mp__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)\n        return -errno;",
     "    if (mp__sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)\n        return MP_EINVAL;",
     "enfile_pipe_with_a_child"),
    ("ENOSPC: pages that could not be committed are not given back", "src/arena.c",
     "    if (commit_pages(s, n) < 0) {\n        drop_pages(s, n);\n        lock();\n        put_pages(s, n);\n        unlock();\n        return NULL;",
     "    if (commit_pages(s, n) < 0) {\n        return NULL;",
     "enospc_arena"),
    ("EPIPE: a gone peer is -EPIPE instead of MP_ECLOSED", "src/conn.c",
     "        if (errno == EPIPE || errno == ECONNRESET)\n            return MP_ECLOSED;",
     "        if (errno == ECONNRESET)\n            return MP_ECLOSED;",
     "epipe_pipe"),
    ("short transfer: a partial send taken for the whole frame", "src/conn.c",
     "            if ((*done += (uint64_t)m) == total)\n                return 0;",
     "            *done = total;\n            if (m >= 0)\n                return 0;",
     "short_pipe"),
]


def main():
    src = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    work = tempfile.mkdtemp(prefix="mproc-plants-")
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=src,
                               check=True, capture_output=True, text=True).stdout.split()
        for f in files:
            if os.path.isfile(os.path.join(src, f)):
                os.makedirs(os.path.join(work, os.path.dirname(f)), exist_ok=True)
                shutil.copy2(os.path.join(src, f), os.path.join(work, f))
        build = os.path.join(work, "build")
        subprocess.run(["cmake", "-S", work, "-B", build, "-DMPROC_BENCH=OFF",
                        "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], check=True, capture_output=True)
        missed = 0
        for what, path, old, new, case in PLANTS:
            f = os.path.join(work, path)
            text = open(f).read()
            if text.count(old) != 1:
                print(f"STALE  {what}: the code to break is no longer in {path}")
                missed += 1
                continue
            open(f, "w").write(text.replace(old, new))
            try:
                b = subprocess.run(["cmake", "--build", build, "-j2", "--target", "test_fault"],
                                   capture_output=True, text=True)
                if b.returncode:
                    print(f"STALE  {what}: the plant does not build\n{b.stdout[-800:]}")
                    missed += 1
                    continue
                r = subprocess.run(["timeout", "60", os.path.join(build, "tests", "test_fault"), case],
                                   capture_output=True, text=True)
                lines = (r.stdout + r.stderr).splitlines()
                why = next((l for l in lines if "FAIL" in l), None)
                if r.returncode == 0:
                    print(f"MISSED {what}: {case} passed")
                    missed += 1
                else:
                    how = why or ("hung" if r.returncode == 124 else f"exit status {r.returncode}")
                    print(f"caught {what}: {case}: {how.split('] ', 1)[-1]}")
            finally:
                open(f, "w").write(text)
        return 1 if missed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
