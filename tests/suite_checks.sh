#!/bin/sh
# Suite-wide checks, run by CTest.
#   suite_checks.sh exports LIB     only the API (mp_*) leaves the shared library
#   suite_checks.sh dev-shm         nothing the suite made is left in /dev/shm
set -eu
case $1 in
exports)
    command -v nm >/dev/null 2>&1 || { echo "nm not installed: skipped"; exit 77; }
    syms=$(nm -D --defined-only "$2" | awk 'NF == 3 { print $3 }')
    bad=$(printf '%s\n' "$syms" | grep -v '^mp_' || true)
    [ -z "$bad" ] || { echo "exported but not API: $bad"; exit 1; }
    printf '%s\n' "$syms" | grep -qx mp_version_string || { echo "mp_version_string not exported"; exit 1; }
    echo "$(printf '%s\n' "$syms" | wc -l) symbols, all mp_*"
    ;;
dev-shm)
    left=$(ls /dev/shm 2>/dev/null | grep '^mproc' || true)
    [ -z "$left" ] || { echo "left in /dev/shm: $left"; exit 1; }
    echo "nothing left in /dev/shm"
    ;;
esac
