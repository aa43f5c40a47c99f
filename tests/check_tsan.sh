#!/usr/bin/env bash
# ThreadSanitizer on the cases where threads of one process share mproc's
# objects. Fails on any report, in any process of any case.
#
#   tests/check_tsan.sh [build-dir]      (make tsan; default build-tsan)
#
# TSan sees one process: it cannot see an order made through shared memory by
# another process, and it checks nothing in the child of a multi-threaded
# fork. So the cases are those whose threads meet in one process; a child
# they start may take part, as long as no order between two threads of the
# process goes through it. Installs what it needs itself (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-tsan}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# case                                                   why TSan's verdict means something there
CASES='
conn.eight_threads_send_concurrently                     eight threads share one send end and its lock
conn.eight_threads_receive_each_message_once             eight threads share one receive end, its lock and stash
conn.recv_lock_wait_honours_timeout                      a thread waits on the receive lock another thread holds
conn.emsgsize_leaves_the_message                         a thread sends while the main thread receives into too small a buffer
conn.interrupt_wakes_a_blocked_recv                      mp_interrupt from one thread wakes another in recv
conn.interrupt_from_a_signal_handler_wakes_a_blocked_recv  the same, from a signal handler
conn.interrupt_wakes_every_blocked_call                  one interrupt, several threads blocked in sends and receives
conn.interrupt_wakes_pipe_and_queue_waits_at_once        threads blocked on pipes and queues, one interrupt
conn.interrupted_send_is_never_delivered                 a send cut short by an interrupt while another thread receives
process.threads_start_and_join_concurrently              starts and joins from several threads: handle list, counter, start lock
process.child_of_exited_thread_keeps_running             a start from a thread that then ends
process.interrupt_wakes_a_blocked_join                   mp_interrupt from one thread wakes a join in another
process.interrupt_from_signal_handler_wakes_every_waiter  the same from a signal handler, several joining threads
process.freed_running_process_is_reaped                  the reaper thread frees a handle the main thread let go
process.every_fd_is_cloexec_with_the_reaper_running      starts while the reaper thread runs
process.sigkilled_parent_takes_its_children              a child starts processes from threads: the locks of the fork handlers
process.many_processes_leave_no_zombie_and_no_fd         the reaper thread against a stream of starts and frees
process.exit_terminates_daemons_joins_others_on_exit     exit-time joins while the reaper thread runs
pool.classic_square_with_4_workers                       the manager thread and the caller share the pool
pool.many_async_applies_in_bulk                          async results filled by the manager, waited on by the caller
pool.async_ready_wait_get_with_timeouts                  the same with timed waits
pool.imap_ordered_gives_every_index_in_order             the imap window, shared by the manager and the caller
pool.imap_unordered_gives_every_index_once               the same, unordered
pool.imap_free_before_the_end_cancels_the_rest           the caller frees an imap the manager still feeds
pool.interrupt_during_map_returns_eintr_and_leaves_the_pool_usable  interrupt from a thread during map
pool.interrupt_during_imap_and_async_waits               interrupt from a thread during imap and async waits
pool.pool_made_in_a_thread_that_ended_still_works        a pool outlives the thread that made it
pool.terminate_while_busy_is_prompt_and_ends_the_results  terminate while the manager dispatches
pool.free_of_a_busy_pool_is_bounded                      free while the manager dispatches
pool.close_then_join_waits_for_the_work                  close and join against the manager
pool.maxtasksperchild_gives_new_workers                  the manager replaces retiring workers during a map
pool.close_with_maxtasksperchild_still_finishes_the_work  the same after close
pool.hang_past_task_timeout_fails_its_item_only          the task timer of the manager kills a worker during a map
pool.imap_slow_consumer_holds_back_dispatch              the manager waits for the caller to consume
pool.imap_window_never_outgrows_n                        the imap window under a slow caller
pool.more_workers_than_cores_give_the_same_results       more workers than cores for the manager to feed
pool.a_worker_killed_while_idle_is_replaced              the manager replaces a worker while the caller waits
pool.workers_killed_in_any_state_leave_applies_served    applies from several threads while workers die
pool.join_after_close_ends_once_a_blocked_imap_is_freed  join in one thread, imap freed in another
pool.progress_is_called_in_the_caller_and_ends_at_total  progress calls made for the manager, in the caller
sync.rlock_recursion_and_eperm                           an rlock is owned per thread: another thread gets EPERM
sync.rlock_timeout_on_time                               a thread holds an rlock, the main thread times out on it
sync.interrupt_wakes_lock_acquire                        a thread blocked in each primitive, interrupted from the main thread
sync.interrupt_wakes_rlock_acquire                       (same)
sync.interrupt_wakes_sem_acquire                         (same)
sync.interrupt_wakes_event_wait                          (same)
sync.interrupt_wakes_cond_wait                           (same)
sync.interrupt_wakes_barrier_wait                        (same)
sync.interrupt_consumed_exactly_once_by_concurrent_calls  two threads race for one interrupt
queue.interrupt_wakes_a_blocked_get_and_is_consumed      a thread blocked in get, interrupted from the main thread
queue.interrupt_wakes_a_put_blocked_on_full              a thread blocked in put on a full queue
queue.interrupt_wakes_a_streamed_put_and_leaves_nothing  a thread in a streamed put, interrupted
queue.interrupt_wakes_every_blocked_get                  several threads blocked in get, one interrupt
queue.streamed_put_that_times_out_leaves_nothing         a streamed put in one thread, gets in another
arena.usage_of_an_exited_thread_stays_counted_when_its_slot_is_reused  a crowd of threads allocate, exit and reuse cache slots
arena.caches_go_back_at_thread_and_process_exit          a thread cache flushed at thread exit
progress.lines_from_threads_never_interleave             several threads draw one progress line
'
# Left out on purpose:
#   queue.streaming_consumer_killed_midway_loses_only_that_message, and any
#   case where a killed process's lock is taken over: the order between the
#   two threads goes through the dead process (a false data race).
#   pool.a_replacement_that_cannot_be_forked_is_tried_again: the test puts
#   the system-call table back (mp__sys_reset) while the manager thread may
#   read it (a race in the test's use of the seam, not in the library).
#   *_without_proc cases: the same code as their twins with /proc, where a
#   report can be symbolised.
#   cases that crash a worker on purpose (segfault_fails_its_item_only, ...):
#   TSan reports the SEGV itself.
#   arena/queue cases under a small RLIMIT_AS: TSan needs its shadow memory.

# ---- what it needs, installed if missing (Debian 12) ----------------------
need=()
for tool in cmake make gcc; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@"
}
if [ ${#need[@]} -gt 0 ]; then
    pkgs=()
    for tool in "${need[@]}"; do
        case $tool in
        gcc) pkgs+=(gcc libc6-dev) ;;
        *) pkgs+=("$tool") ;;
        esac
    done
    apt_install "${pkgs[@]}"
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
tsan_links() { echo 'int main(void){return 0;}' | gcc -fsanitize=thread -x c - -o "$probe/a" 2>/dev/null; }
if ! tsan_links; then # the runtime comes with libgcc-N-dev (libtsan2 on Debian 12)
    apt_install "libgcc-$(gcc -dumpversion | cut -d. -f1)-dev"
    tsan_links
fi

# ---- build only the test programs the cases need --------------------------
names=$(printf '%s\n' "$CASES" | awk 'NF {print $1}')
concepts=$(printf '%s\n' "$names" | cut -d. -f1 | sort -u)
# TSan runs 5 to 15 times slower: every case's time limit is stretched.
export MPROC_TEST_TIMEOUT_MULT=${MPROC_TEST_TIMEOUT_MULT:-10}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DMPROC_TSAN=ON -DMPROC_BENCH=OFF >/dev/null
# shellcheck disable=SC2046
cmake --build "$BUILD" -j "$JOBS" --target $(printf 'test_%s ' $concepts)

# ---- run ----------------------------------------------------------------
logs="$PWD/$BUILD/tsan-logs"
rm -rf "$logs"
mkdir -p "$logs"
# A report ends the process with 66, and is also written to a file, so one in
# a child whose exit code no test looks at still fails the run.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$logs/tsan ${TSAN_OPTIONS:-}"
# Some kernels randomise mmap more than this TSan's memory layout allows
# ("unexpected memory mapping"): then run without address randomisation.
run=()
first=$(printf '%s\n' "$concepts" | head -n1)
if ! "$BUILD/tests/test_$first" --list >/dev/null 2>&1; then
    run=(setarch "$(uname -m)" -R)
    rm -f "$logs"/tsan.*
fi

re="^($(printf '%s\n' "$names" | sed 's/\./\\./' | paste -sd '|'))\$"
listed=$(cd "$BUILD" && ctest -N -R "$re" | sed -n 's/^ *Test *#[0-9]*: //p' | sort)
missing=$(comm -23 <(printf '%s\n' "$names" | sort) <(printf '%s\n' "$listed"))
if [ -n "$missing" ]; then
    echo "check_tsan: cases not in the suite (renamed?):" $missing >&2
    exit 1
fi

status=0
(cd "$BUILD" && "${run[@]}" ctest --output-on-failure -j "$JOBS" -R "$re") || status=$?
if compgen -G "$logs/tsan.*" >/dev/null; then
    echo "check_tsan: ThreadSanitizer reports:" >&2
    cat "$logs"/tsan.* >&2
    status=1
fi
[ "$status" -eq 0 ] && echo "check_tsan: $(printf '%s\n' "$names" | wc -l) cases, no report"
exit "$status"
