#!/usr/bin/env bash
# procpool::mpi::Pool against mpi4py.futures, in one run, 3 ranks on this
# machine (rank 0 hands out work, 2 ranks serve), and writes bench/mpi.md.
#
#   bash bench/mpi.sh
#
# mpi4py's map runs with its default chunksize (1), as a user runs it; at 173 µs
# an item here that is minutes for 1,000,000 items, so it maps
# PROCPOOL_BENCH_MPI4PY_ITEMS (default 100,000) and the table compares items
# per second. About a minute, plus the build.
#
# Environment: PROCPOOL_BENCH_BUILD (default <repo>/build-bench), PYTHON (default
# /usr/bin/python3, which Debian's python3-mpi4py is for).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${PROCPOOL_BENCH_BUILD:-$root/build-bench}
python=${PYTHON:-/usr/bin/python3}
py_items=${PROCPOOL_BENCH_MPI4PY_ITEMS:-100000}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
mpiexec=(mpiexec --oversubscribe -np 3)
if ! "$python" -c 'import mpi4py.futures' 2>/dev/null || ! command -v mpiexec >/dev/null; then
  [[ $(id -u) -eq 0 ]] || { echo "bench/mpi.sh: needs openmpi-bin, libopenmpi-dev, python3-mpi4py" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    openmpi-bin libopenmpi-dev python3-mpi4py >/dev/null
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_BENCHMARKS=ON \
  -DPROCPOOL_BUILD_TESTS=OFF -DPROCPOOL_BUILD_EXAMPLES=OFF -DPROCPOOL_MPI=ON >/dev/null
cmake --build "$build" --target procpool_mpi_bench -j "${JOBS:-2}" >/dev/null

out=$(mktemp)
"${mpiexec[@]}" "$build/bench/procpool_mpi_bench" >"$out"
"${mpiexec[@]}" "$python" -m mpi4py.futures "$here/mpi_peers.py" "$py_items" >>"$out"

"$python" - "$out" "$here/mpi.md" <<'PY'
import sys
v = {}
for line in open(sys.argv[1]):
    k, x = line.split()
    v[k] = float(x)
pp_rate = 1_000_000 / v["map_1m_cold"]
py_rate = v["mpi4py_map_items"] / v["mpi4py_map_cold"]
rows = [
    ("map over 1,000,000 small ints, the program's first pool (MPI starts in it)",
     f"{v['map_1m_first'] * 1e3:.1f} ms", "", "", ""),
    ("map over 1,000,000 small ints, fresh pool (cold)",
     f"{v['map_1m_cold'] * 1e3:.1f} ms ({pp_rate / 1e6:.2f} M items/s)",
     f"{py_rate / 1e3:.1f} k items/s ({int(v['mpi4py_map_items']):,} items in {v['mpi4py_map_cold']:.1f} s)",
     f"{pp_rate / py_rate:.0f}x", ">= 20x"),
    ("the same, warm pool, best of 5", f"{v['map_1m_warm'] * 1e3:.1f} ms", "", f"{(1_000_000 / v['map_1m_warm']) / py_rate:.0f}x", ""),
    ("one tiny task's round trip, median of 2,000",
     f"{v['round_trip_median'] * 1e6:.1f} µs", f"{v['mpi4py_round_trip_median'] * 1e6:.1f} µs",
     f"{v['mpi4py_round_trip_median'] / v['round_trip_median']:.1f}x", ">= 20x"),
    ("40 CPU-bound tasks of ~20 ms, fresh pool, 2 serving ranks",
     f"{v['cpu40_cold']:.3f} s", f"serial loop {v['cpu40_serial']:.3f} s",
     f"{v['cpu40_serial'] / v['cpu40_cold']:.2f}x serial", ">= 1.8x serial"),
]
with open(sys.argv[2], "w") as f:
    f.write("# procpool::mpi::Pool against mpi4py.futures\n\n")
    f.write("Written by `bash bench/mpi.sh`: one run, 3 ranks on this 2-core machine "
            "(`mpiexec --oversubscribe -np 3`), rank 0 hands out the work and 2 ranks serve; "
            "default options on both sides. procpool's pools are fresh for each workload "
            "(construction to destruction). mpi4py maps with its default chunksize of 1.\n\n")
    f.write("| workload | procpool::mpi | mpi4py.futures | ratio | target |\n|---|---:|---:|---:|---|\n")
    for r in rows:
        f.write("| " + " | ".join(r) + " |\n")
print(open(sys.argv[2]).read())
PY
rm -f "$out"
