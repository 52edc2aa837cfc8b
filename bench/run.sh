#!/usr/bin/env bash
# Runs procpool's benchmarks side by side with its peers, in one run, on the
# same work, and writes bench/results.md (+ bench/results.csv, the raw numbers)
# and bench/results.png.
#
#   bash bench/run.sh
#
# Peers: Python's multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor
# (python_peers.py), a std::thread pool baseline (thread_pool.hpp) and a
# boost::interprocess::message_queue process pool (mq_pool.hpp), both in
# procpool_bench (bench.cpp), which also runs the serial loop; the C++ peers
# call the same work functions (work.cpp). Each workload is measured cold (a
# fresh pool with default options, one call, construction to destruction:
# what a new user runs) and warm (one pool, best of several calls). About
# 4 minutes on 2 cores, plus the build.
#
# Environment:
#   PROCPOOL_BENCH_BUILD   build directory (default: <repo>/build-bench)
#   PYTHON                 the Python to compare with (default: python3)
#   PROCPOOL_BENCH_QUIET   seconds to wait for other processes to leave the CPUs
#                          before starting (default 120; 0: do not wait)
#   PROCPOOL_SKIP_DEPS=1   never apt-get
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${PROCPOOL_BENCH_BUILD:-$root/build-bench}
python=${PYTHON:-python3}
quiet_wait=${PROCPOOL_BENCH_QUIET:-120}
t_start=$(date +%s)
say() { printf '[bench %3ds] %s\n' $(( $(date +%s) - t_start )) "$*" >&2; }

# ------------------------------------------------------------------ 1. dependencies
declare -A need=(
  [cmake]=cmake [g++]=g++ [gnuplot]=gnuplot-nox [$python]=python3
)
missing=()
for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
for hdr in boost/interprocess/ipc/message_queue.hpp:libboost-dev cereal/cereal.hpp:libcereal-dev; do
  [[ -e /usr/include/${hdr%%:*} ]] || missing+=("${hdr##*:}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 && "${PROCPOOL_SKIP_DEPS:-0}" != 1 ]] && command -v apt-get >/dev/null; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bench/run.sh: missing ${missing[*]}; install them (apt-get) or run as root" >&2
    exit 1
  fi
fi
command -v "$python" >/dev/null || python=python3

# ------------------------------------------------------------------ 2. build
say "building procpool_bench in $build"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_BENCHMARKS=ON \
  -DPROCPOOL_BUILD_TESTS=OFF -DPROCPOOL_BUILD_EXAMPLES=OFF >"$build/bench-cmake.log" 2>&1 ||
  { cat "$build/bench-cmake.log" >&2; exit 1; }
cmake --build "$build" -j2 --target procpool_bench >"$build/bench-build.log" 2>&1 ||
  { cat "$build/bench-build.log" >&2; exit 1; }
bench="$build/bench/procpool_bench"

# ------------------------------------------------------------------ 3. helpers
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
csv="$work/results.csv"
: >"$csv"
ncpu=$(nproc)

# Busy CPU ticks of the whole machine, and of this script's finished children.
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
# `times` must run in this shell, not in a $(...) subshell, to see our children.
child_ticks() {  # sets CT
  times >"$work/times"
  CT=$(awk -v hz="$(getconf CLK_TCK)" 'NR==2{
    n=split($0,a," "); s=0
    for(i=1;i<=n;i++){ m=a[i]; sub(/m.*/,"",m); t=a[i]; sub(/^[0-9]+m/,"",t); sub(/s$/,"",t); s+=m*60+t }
    printf "%d\n", s*hz }' "$work/times")
}
# Percent of the machine busy over @1 seconds (everything, us included).
busy_pct() {
  local a b; a=$(machine_ticks); sleep "$1"; b=$(machine_ticks)
  echo $(( (b - a) * 100 / ($(getconf CLK_TCK) * ncpu) ))
}

# Wait (bounded) for a quiet machine: numbers taken next to a compiler are noise.
if ((quiet_wait > 0)); then
  waited=0
  while (( $(busy_pct 1) > 10 && waited < quiet_wait )); do
    ((waited == 0)) && say "other processes are using the CPUs; waiting up to ${quiet_wait}s"
    waited=$((waited + 1))
  done
fi

other_total=0; elapsed_total=0
declare -A other_pct; order=()
budget=${PROCPOOL_BENCH_BUDGET:-180}  # seconds after which no section is retried
# run_section NAME CMD...: runs CMD (which prints CSV) and appends its output to
# the results. CPU time used by processes outside this run is measured during
# the section; above 15% of the machine the section is run again (at most
# twice, and only while the run is within its time budget) and the least
# disturbed attempt is kept.
run_section() {
  local name=$1; shift
  local best_other=101 attempt m0 c0 t0 m1 c1 t1 el other pct
  for attempt in 1 2 3; do
    m0=$(machine_ticks); child_ticks; c0=$CT; t0=$(date +%s%N)
    if ! timeout 300 "$@" >"$work/out" 2>"$work/err"; then
      cat "$work/err" >&2
      echo "bench/run.sh: section $name failed: $*" >&2
      exit 1
    fi
    m1=$(machine_ticks); child_ticks; c1=$CT; t1=$(date +%s%N)
    el=$(( (t1 - t0) / 10000000 ))  # in 1/100 s
    other=$(( (m1 - m0) - (c1 - c0) )); ((other < 0)) && other=0
    pct=$(( el > 0 ? other * 100 / (el * ncpu) : 0 ))
    if ((pct < best_other)); then
      best_other=$pct; cp "$work/out" "$work/best"; best_el=$el; best_ticks=$other
    fi
    ((best_other <= 15)) && break
    (( $(date +%s) - t_start > budget )) && break
    ((attempt < 3)) && say "  $name: ${pct}% of the CPUs used by other processes; running it again"
  done
  cat "$work/best" >>"$csv"
  other_total=$((other_total + best_ticks)); elapsed_total=$((elapsed_total + best_el))
  other_pct[$name]=$best_other; order+=("$name")
}

# ------------------------------------------------------------------ 4. run
iters20=$("$bench" calibrate)
say "calibrated: 20 ms = $iters20 iterations of burn()"
for s in e a b c d; do
  say "section ($s): procpool, std::thread pool, Boost message_queue pool"
  run_section "$s/C++" "$bench" "$s" --workers 2 --iters20 "$iters20"
  say "section ($s): Python multiprocessing.Pool, ProcessPoolExecutor"
  run_section "$s/Python" "$python" "$here/python_peers.py" "$s" --workers 2
done
# message_queue pools remove their queues; should a run have crashed, remove
# the queues of benchmark processes that no longer exist.
leftover=0
for q in /dev/shm/procpool_bench_mq_*; do
  [[ -e $q ]] || continue
  pid=${q#/dev/shm/procpool_bench_mq_}; pid=${pid%%_*}
  if kill -0 "$pid" 2>/dev/null; then continue; fi
  rm -f "$q"; leftover=$((leftover + 1))
done

# ------------------------------------------------------------------ 5. report
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
boost=$(awk '/define BOOST_LIB_VERSION/{gsub(/"/,"",$3); sub(/_/,".",$3); print $3}' \
  /usr/include/boost/version.hpp 2>/dev/null || echo "?")
others=""
for k in "${order[@]}"; do others+="$k ${other_pct[$k]}%, "; done
{
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $cpu_model ($(lscpu 2>/dev/null | awk -F: '/Hypervisor vendor/{gsub(/ /,"",$2); print "virtualized, " $2}')) |"
  echo "| Cores | $ncpu online ($(lscpu 2>/dev/null | awk -F: '/Thread\(s\) per core/{gsub(/ /,"",$2); print $2}') thread(s) per core) |"
  echo "| Memory | $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
  echo "| Kernel | $(uname -sr) |"
  echo "| C++ compiler | $(g++ --version | head -1), -O3 (CMake Release), -std=c++20 |"
  echo "| CMake, Boost | $(cmake --version | head -1 | awk '{print $3}'), Boost $boost |"
  echo "| Python | $("$python" "$here/python_peers.py" info) |"
  rev=$(git -C "$root" log -1 --format='%h %s' 2>/dev/null || echo "unknown")
  dirty=$(git -C "$root" status --porcelain -- include 2>/dev/null | head -1)
  echo "| procpool | commit ${rev//|/\\|}${dirty:+ (with uncommitted changes in include/)} |"
  echo "| Date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo "| Other load | This machine is shared. Share of the 2 CPUs used by processes outside this run, per section: ${others%, }$( ((other_total * 100 / (elapsed_total * ncpu + 1) > 10)) && echo '. **Noisy run: the numbers are pessimistic.**') |"
  echo "| Run time | $(( $(date +%s) - t_start )) s for the whole script, build included |"
} >"$work/machine.txt"

mkdir -p "$work/plot"
cp "$csv" "$here/results.csv"
"$python" "$here/report.py" "$csv" "$work/machine.txt" "$here/results.md" "$work/plot"
gnuplot -e "dir='$work/plot'; out='$here/results.png'; stamp='$cpu_model, $ncpu cores, $(date -u +%Y-%m-%d)'" \
  "$here/plot.gp"

((leftover == 0)) || echo "bench/run.sh: warning: removed $leftover message queues left in /dev/shm" >&2
say "wrote $here/results.md, results.csv and results.png"
cat "$here/results.md" | sed -n '/^## Targets/,/^## How/p' | head -n -1 >&2
