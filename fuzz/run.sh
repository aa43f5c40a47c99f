#!/bin/sh
# Runs every fuzz target (libFuzzer, clang, AddressSanitizer + UBSan) for a
# while: one per parser of bytes that another process wrote.
#
#   fuzz/run.sh short   about 30 s a target (CI: make fuzz-short)
#   fuzz/run.sh long    5 min a target (the torture: make fuzz)
#
# FUZZ_SECONDS overrides the time per target, FUZZ_BUILD the build directory
# (build-fuzz), FUZZ_TARGETS the list (all: fuzz/fuzz_*.c). Each target
# starts from its seed corpus (fuzz/corpus/T) and the crash inputs kept in
# fuzz/regress/T, and keeps what it learns in FUZZ_BUILD/corpus/T, never in
# the tree. A failure leaves its input in FUZZ_BUILD/artifacts and fails the
# run; once fixed, copy the input to fuzz/regress/T/ so that the test suite
# replays it (test fuzz.T.replay).
#
# clang with libFuzzer is installed if missing, where apt-get can (Debian,
# as root): clang and libclang-rt-N-dev, which holds libFuzzer's runtime.
set -eu

mode=${1:-short}
case $mode in
short) secs=30 ;;
long) secs=300 ;;
*) echo "usage: $0 short|long" >&2; exit 2 ;;
esac
secs=${FUZZ_SECONDS:-$secs}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
case $build in /*) ;; *) build=$root/$build ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

have_libfuzzer() {
    command -v clang >/dev/null 2>&1 || return 1
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' >"$tmp/t.c"
    clang -fsanitize=fuzzer,address,undefined "$tmp/t.c" -o "$tmp/t" >/dev/null 2>&1
}

if ! have_libfuzzer; then
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        echo "fuzz: needs clang with libFuzzer (Debian: apt-get install clang libclang-rt-14-dev)" >&2
        exit 1
    fi
    echo "fuzz: installing clang and libFuzzer"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    command -v cmake >/dev/null 2>&1 || apt-get install -y -qq cmake make >/dev/null
    command -v clang >/dev/null 2>&1 || apt-get install -y -qq clang >/dev/null
    major=$(clang -dumpversion | cut -d. -f1)
    apt-get install -y -qq "libclang-rt-$major-dev" >/dev/null 2>&1 || true # older: in libclang-common
    have_libfuzzer || { echo "fuzz: clang cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DMPROC_FUZZ=ON -DMPROC_SANITIZE=ON -DMPROC_TESTS=OFF -DMPROC_EXAMPLES=OFF \
    -DMPROC_BENCH=OFF >/dev/null
if [ -z "${FUZZ_TARGETS:-}" ]; then
    for f in "$root"/fuzz/fuzz_*.c; do
        f=${f##*/fuzz_}
        FUZZ_TARGETS="${FUZZ_TARGETS:-} ${f%.c}"
    done
fi
targets=$FUZZ_TARGETS
set --
for t in $targets; do set -- "$@" "fuzz_$t"; done
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target "$@"
mkdir -p "$build/artifacts" "$build/logs"

# A huge malloc is a finding (the allocator would abort), not NULL.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export MPROC_ARENA_SIZE="${MPROC_ARENA_SIZE:-64M}" # a claimed length cannot back gigabytes

failed=
for t in $targets; do
    mkdir -p "$build/corpus/$t"
    log=$build/logs/$t.log
    echo "fuzz: $t for $secs s"
    if "$build/fuzz/fuzz_$t" -max_len=65536 -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
        "$build/corpus/$t" "$root/fuzz/corpus/$t" "$root/fuzz/regress/$t" >"$log" 2>&1; then
        done_line=$(grep -a 'DONE' "$log" | tail -n 1)
        runs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}')
        speed=$(grep -a 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
        cov=$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
        ft=$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
        echo "fuzz: $t ok: $runs runs, $speed exec/s, cov $cov, ft $ft"
    else
        failed="$failed $t"
        echo "fuzz: $t FAILED; the log's end ($log):" >&2
        grep -av '^"' "$log" | tail -n 40 >&2
        ls "$build/artifacts/$t-"* 2>/dev/null >&2 || true
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed (inputs in $build/artifacts; once fixed, copy each to fuzz/regress/<target>/)" >&2
    exit 1
fi
