#!/usr/bin/env bash
# Measures the shared primitives next to their peers in one run and writes
# bench/primitives.md (the table) from bench/primitives.cpp and primitives.py.
#
#   bash bench/primitives.sh
#
# Environment: PROCPOOL_BENCH_BUILD (default: <repo>/build-bench), PYTHON (python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${PROCPOOL_BENCH_BUILD:-$root/build-bench}
python=${PYTHON:-python3}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$build" -j2 --target procpool_primitives >/dev/null
csv=$( "$build/bench/procpool_primitives"; "$python" "$here/primitives.py" )
{
  echo "# Shared primitives: cost per operation, uncontended"
  echo
  echo "One process, best of several runs of many operations, $(nproc) CPUs, $(date -u +%Y-%m-%d)."
  echo "Ratio: the peer's time over procpool's (above 1: procpool is faster)."
  echo
  echo "| operation | peer | ns per operation | peer / procpool |"
  echo "|---|---|---:|---:|"
  awk -F, '
    { t[$1 "," $2] = $3; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } peers[$1] = peers[$1] " " $2 }
    END {
      name["lock"] = "Lock acquire + release"
      name["value_locked_add"] = "Value += 1 under its lock"
      name["value_atomic_add"] = "Value += 1, atomic (lock-free)"
      name["event_set_is_set"] = "Event set + is_set"
      for (i = 1; i <= n; ++i) {
        w = order[i]; base = t[w ",procpool"]; split(peers[w], ps, " ")
        for (j in ps) { p = ps[j]
          printf "| %s | %s | %.1f | %s |\n", name[w], p, t[w "," p], (p == "procpool" ? "1" : sprintf("%.1fx", t[w "," p] / base)) }
      }
    }' <<<"$csv"
} > "$here/primitives.md"
cat "$here/primitives.md"
