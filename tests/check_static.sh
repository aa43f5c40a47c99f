#!/usr/bin/env bash
# Static analysis: cppcheck and the clang static analyzer. Any finding fails.
#
#   tests/check_static.sh      (make lint)
#
#   src/           cppcheck: warning, style, performance, portability, with
#                  its POSIX knowledge; clang --analyze, default checkers
#   tests/ fuzz/   cppcheck: warnings and errors only (style is the tests' own)
#
# A false positive is suppressed where it is, with its reason: in src/ by an
# inline "cppcheck-suppress id ; why" comment, in tests/ by an entry in
# tests/cppcheck-tests.xml. Installs what it needs itself (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

need=()
for tool in cppcheck clang; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" libc6-dev
fi

status=0
fmt='{file}:{line}: {severity}: {id}: {message}'

echo "== cppcheck src/"
cppcheck -j "$JOBS" --quiet --error-exitcode=1 --inline-suppr --template="$fmt" \
    --std=c11 -D_GNU_SOURCE -Iinclude -Isrc --library=posix \
    --enable=warning,style,performance,portability src || status=1

# Without --library=posix: two of its checks are wrong in the tests. It
# prefers readdir_r, which glibc deprecates (readdir is safe on a stream no
# other thread uses), and it wants mmap's fd >= 0 even with MAP_ANONYMOUS,
# where -1 is the portable value.
echo "== cppcheck tests/ fuzz/"
cppcheck -j "$JOBS" --quiet --error-exitcode=1 --inline-suppr --template="$fmt" \
    --suppress-xml=tests/cppcheck-tests.xml \
    --std=c11 -D_GNU_SOURCE -Iinclude -Isrc -Itests \
    --enable=warning,performance,portability tests fuzz || status=1

echo "== clang --analyze src/"
# -analyzer-werror: a finding is an error, so the exit status says it.
ls src/*.c src/os/*.c | xargs -P "$JOBS" -n 1 \
    clang --analyze -Xclang -analyzer-werror -Xanalyzer -analyzer-output=text \
    -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -o /dev/null || status=1

[ "$status" -eq 0 ] && echo "check_static: no finding"
exit "$status"
