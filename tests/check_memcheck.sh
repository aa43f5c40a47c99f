#!/usr/bin/env bash
# Valgrind memcheck on a representative subset of the suite: any invalid
# access, use of uninitialised memory, or definite leak fails the run.
#
#   tests/check_memcheck.sh [build-dir]      (make memcheck; default build-memcheck)
#
# Only cases that stay in one process: valgrind 3.19 (Debian 12) does not
# know pidfd_open (system call 434), so no process can be started under it,
# and with it no pool. Left out too: the *_on_time cases (they measure time,
# which valgrind stretches), and those that spin-wait on another thread
# (valgrind runs one thread at a time, so a spinner starves the others).
# Installs what it needs itself (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-memcheck}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

CASES='
error.every_code_has_a_message_and_a_name
error.codes_are_distinct
error.errno_mirrors
error.system_codes_and_unknown
error.version
arena.blocks_are_zeroed_and_aligned_also_when_reused
arena.calloc_overflow_and_size_zero_give_null
arena.usage_of_an_exited_thread_stays_counted_when_its_slot_is_reused
arena.reserve_halves_until_the_system_agrees
value.zeroed_without_init_and_bad_input
shm.exists_and_leading_slash
shm.fresh_names
shm.bad_input
conn.boundaries_kept
conn.zero_byte_message_is_not_eof
conn.emsgsize_leaves_the_message
conn.recv_lock_wait_honours_timeout
conn.eof_inside_a_message_drops_it
conn.header_in_parts_and_aborted_trailers
conn.send_to_closed_peer_is_eclosed_without_sigpipe
conn.simplex_directions
conn.interrupt_wakes_every_blocked_call
conn.interrupt_wakes_pipe_and_queue_waits_at_once
conn.interrupted_send_is_never_delivered
conn.poll_reports_data_and_eof
conn.fileno_and_cloexec
conn.bad_input_is_einval
conn.no_descriptor_leak
queue.zero_length_messages_are_messages
queue.streamed_put_that_times_out_leaves_nothing
queue.streamed_put_given_up_takes_its_room_back
queue.abandoned_stream_is_not_a_message_for_a_small_buffer
queue.interrupt_wakes_a_blocked_get_and_is_consumed
queue.interrupt_wakes_a_put_blocked_on_full
queue.interrupt_wakes_a_streamed_put_and_leaves_nothing
queue.interrupt_wakes_every_blocked_get
queue.pending_interrupt_fails_the_next_call_once
queue.close_empty_queue_answers_at_once
queue.close_with_messages_drains_then_eclosed
queue.joinable_counts_tasks
queue.qsize_empty_full_with_maxsize
queue.bad_input_is_einval
sync.bounded_semaphore_over_release
sync.condition_without_the_lock_is_eperm
sync.interrupt_wakes_lock_acquire
sync.interrupt_wakes_rlock_acquire
sync.interrupt_wakes_sem_acquire
sync.interrupt_wakes_event_wait
sync.interrupt_wakes_cond_wait
sync.interrupt_wakes_barrier_wait
sync.pending_interrupt_fails_the_next_call_at_once
sync.bad_input_is_einval
'

# ---- what it needs, installed if missing (Debian 12) ----------------------
need=()
for tool in cmake make gcc valgrind; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    pkgs=()
    for tool in "${need[@]}"; do
        case $tool in
        gcc) pkgs+=(gcc libc6-dev) ;;
        valgrind) pkgs+=(valgrind libc6-dbg) ;; # libc6-dbg: valgrind's own recommendation
        *) pkgs+=("$tool") ;;
        esac
    done
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi

# ---- build only the test programs the cases need --------------------------
names=$(printf '%s\n' "$CASES" | awk 'NF {print $1}')
concepts=$(printf '%s\n' "$names" | cut -d. -f1 | sort -u)
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DMPROC_BENCH=OFF >/dev/null
# shellcheck disable=SC2046
cmake --build "$BUILD" -j "$JOBS" --target $(printf 'test_%s ' $concepts)

for c in $concepts; do # a renamed case must not pass by not running
    known=$("$BUILD/tests/test_$c" --list)
    for n in $(printf '%s\n' "$names" | sed -n "s/^$c\.//p"); do
        grep -qx "$n" <<<"$known" || { echo "check_memcheck: no case $c.$n (renamed?)" >&2; exit 1; }
    done
done

# ---- run ----------------------------------------------------------------
# Valgrind runs 10 to 50 times slower: every time limit in a case stretches.
export MPROC_TEST_TIMEOUT_MULT=${MPROC_TEST_TIMEOUT_MULT:-10}
# A 64 MiB arena: the default reservation (up to 1 TiB) is more address
# space than valgrind gives; the arena would halve its way down to what it is
# given, at a cost on every run.
export MPROC_ARENA_SIZE=${MPROC_ARENA_SIZE:-64M}
logs="$BUILD/memcheck-logs"
rm -rf "$logs"
mkdir -p "$logs"
export BUILD logs
one() {
    local c=${1%%.*} n=${1#*.} rc=0
    timeout $((60 * MPROC_TEST_TIMEOUT_MULT)) \
        valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --trace-children=yes --num-callers=30 \
        "$BUILD/tests/test_$c" "$n" >"$logs/$1.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "ok   $1"
    else
        echo "FAIL $1 (exit $rc)"
        cat "$logs/$1.log"
    fi
    return "$rc"
}
export -f one
n=$(printf '%s\n' "$names" | wc -l)
if printf '%s\n' "$names" | xargs -P "$JOBS" -I{} bash -c 'one "$1"' _ {}; then
    echo "check_memcheck: $n cases, no error"
else
    echo "check_memcheck: failures above" >&2
    exit 1
fi
