#!/usr/bin/env bash
# Builds and runs the bundled examples, the seeds' demos (shared/seeds/README.md):
# worker, four_processes, four_processes --pids and squares; then wordcount
# over this repository's sources; then what processes share: shared_counter (a Value and
# its Lock), queue_pipeline (four processes joined by Queues), pipe_ping_pong (a Pipe to a
# child) and barrier_stages (a Barrier between two stages); and, when MPI is installed,
# mpi_squares and mpi_hosts under mpiexec -np 3.
#
#   scripts/examples.sh
#
# Environment: BUILD_DIR (default: build), BUILD_TYPE (default: Release), CXX,
# CMAKE_ARGS, JOBS (default: 2), PROCPOOL_SKIP_DEPS=1, as for scripts/test.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

build_dir=${BUILD_DIR:-build}
build_type=${BUILD_TYPE:-Release}
jobs=${JOBS:-2}
read -r -a cmake_args <<<"${CMAKE_ARGS:-}"
if [[ -n "${CXX:-}" ]]; then
  cmake_args+=("-DCMAKE_CXX_COMPILER=$CXX")
fi

"$root/scripts/install-deps.sh"

cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type" -DPROCPOOL_BUILD_EXAMPLES=ON \
  "${cmake_args[@]}" >/dev/null

targets=(worker four_processes)
# The Pool demos, as examples/CMakeLists.txt defines them. (Capture first: with
# pipefail, grep -q closing the pipe early would fail the whole pipeline.)
all_targets=$(cmake --build "$build_dir" --target help)
for t in squares wordcount shared_counter queue_pipeline pipe_ping_pong barrier_stages mpi_squares mpi_hosts; do
  if grep -qw "$t" <<<"$all_targets"; then
    targets+=("$t")
  fi
done
cmake --build "$build_dir" -j"$jobs" --target "${targets[@]}"

bin=$build_dir/examples
run() {
  local name=$1
  shift
  echo "\$ $name $*"
  "$bin/$name" "$@"
  echo
}
run worker
run four_processes
run four_processes --pids
run squares
run wordcount "$root/include" "$root/examples" "$root/README.md"
run shared_counter
run queue_pipeline
run pipe_ping_pong
run barrier_stages
# Over MPI ranks, when procpool::mpi was built (MPI found): 3 ranks on this machine.
if [[ -x "$bin/mpi_squares" ]]; then
  # Open MPI refuses to run as root (CI) unless told both.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  for name in mpi_squares mpi_hosts; do
    echo "\$ mpiexec --oversubscribe -np 3 $name"
    rc=0
    out=$(mpiexec --oversubscribe -np 3 "$bin/$name" 2>&1) || rc=$?
    echo "$out"
    [[ $rc -eq 0 ]] || exit "$rc"
    # A task that crashes is reported once, as worker_lost, not also by the
    # signal handler a serving rank's workers would inherit from Open MPI.
    if grep -q "Process received signal" <<<"$out"; then
      echo "error: $name: Open MPI's signal handler ran in a pool worker" >&2
      exit 1
    fi
    echo
  done
fi
