#!/bin/sh
# Installs the build into a scratch prefix, then builds and runs a small
# consumer program against it, through pkg-config or find_package(mproc).
# usage: install_test.sh pkgconfig|cmake BUILD_DIR SCRATCH_DIR CC
set -eu
kind=$1 build=$2 scratch=$3 cc=$4
rm -rf "$scratch"
mkdir -p "$scratch/src"
prefix=$scratch/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null

cat >"$scratch/src/consumer.c" <<'C'
#include <mproc.h>
#include <stdio.h>
static int work(void *arg) { return *(int *)arg + 1; }
int main(void) {
    mp_process *p; int x = 41;
    if (mp_process_new(&p, work, &x, NULL) || mp_process_start(p)) return 1;
    if (mp_process_join(p, 10.0)) return 1;
    printf("mproc %s exitcode %d\n", mp_version_string(), mp_process_exitcode(p));
    mp_process_free(p);
    return 0;
}
C

libdir=$(find "$prefix" -name 'libmproc.so*' -print | head -n 1 | xargs dirname)
case $kind in
pkgconfig)
    command -v pkg-config >/dev/null 2>&1 || { echo "pkg-config not installed: skipped"; exit 77; }
    export PKG_CONFIG_PATH="$libdir/pkgconfig"
    "$cc" -o "$scratch/consumer" "$scratch/src/consumer.c" $(pkg-config --cflags --libs mproc)
    ;;
cmake)
    cat >"$scratch/src/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.16)
project(consumer C)
find_package(mproc 0.1 REQUIRED)
add_executable(consumer consumer.c)
target_link_libraries(consumer PRIVATE mproc::mproc)
CM
    cmake -S "$scratch/src" -B "$scratch/build" -DCMAKE_C_COMPILER="$cc" \
        -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
    cmake --build "$scratch/build" >/dev/null
    cp "$scratch/build/consumer" "$scratch/consumer"
    ;;
esac
out=$(LD_LIBRARY_PATH="$libdir" "$scratch/consumer")
echo "$out"
[ "$out" = "mproc 0.1.0 exitcode 42" ]
