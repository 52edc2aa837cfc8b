#!/usr/bin/env bash
# Runs a subset of the tests under valgrind's memcheck (the workers are forks,
# so memcheck follows them without --trace-children). Needs a build tree:
#
#   BUILD_DIR=build scripts/valgrind.sh
#
# The subset: the cases of tests/test_process.cpp (selected by file name:
# Catch2's -#) and of test_codec, and the pool tests that cover
# each path (memcpy and cereal values, errors, imap, small queues, worker
# replacement) without heavy loads. The failure tests (test_worker_death,
# test_timeouts, ...) kill workers at will and time them; ASan and TSan cover
# them.
set -euo pipefail
pool_subset=(
  "pool: the seed example*" "pool: strings in*" "pool: a cereal-serialized struct*"
  "pool: nested containers*" "pool: an exception thrown by the task*" "pool: try_map returns*"
  "pool: imap yields results*" "pool: with queue_bytes 4096*" "pool: apply_async with one*"
  "pool: max_tasks_per_child replaces*" "pool: destroying the pool leaves no zombie"
)
build_dir=${BUILD_DIR:-build}
# No leak check: a forked child ends with _exit, so everything it held looks
# lost; LeakSanitizer (the ASan run) checks leaks in the parent.
vg=(valgrind -q --error-exitcode=99 --leak-check=no)

echo "== valgrind: test_process (tests/test_process.cpp)"
"${vg[@]}" "$build_dir/tests/test_process" -# "[#test_process]"

echo "== valgrind: test_codec"
"${vg[@]}" "$build_dir/tests/test_codec"

echo "== valgrind: test_pool (subset)"
# Catch2 v2 ORs the patterns of one comma-separated argument.
"${vg[@]}" "$build_dir/tests/test_pool" "$(IFS=,; echo "${pool_subset[*]}")"
