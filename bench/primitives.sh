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
"$python" - "$here/primitives.md" <<PY
import sys, datetime, os
rows = {}
for line in """$csv""".splitlines():
    if not line or line.startswith("#"):
        continue
    w, peer, v, unit = line.split(",")
    rows.setdefault(w, {})[peer] = float(v)
names = {
    "lock": "Lock acquire + release, ns",
    "value_locked_add": "Value += 1 under its lock, ns",
    "value_atomic_add": "Value += 1, atomic (lock-free), ns",
    "event_set_is_set": "Event set + is_set, ns",
    "pipe_rtt": "Pipe: round trip of an int to a forked echo, median, ns",
    "queue_ints/cold": "Queue: 1,000,000 ints, one process to another, fresh queue, s",
    "queue_ints/warm": "the same, best of 5, s",
    "queue_1mib/cold": "Queue: 1,000 items of 1 MiB, fresh queue, s",
    "queue_1mib/warm": "the same, best of 5, s",
}
peers = ["procpool", "std::mutex", "boost", "python"]
out = ["# Shared primitives next to their peers", "",
       f"One run, {os.cpu_count()} CPUs, {datetime.date.today()}: \`bash bench/primitives.sh\`. Lock, Value",
       "and Event: one process, uncontended, best of several runs of many operations. Queue: a",
       "forked producer, the parent consuming, from construction to join. Each ratio is the peer's",
       "figure over procpool's (above 1: procpool is faster).", "",
       "| workload | procpool | std::mutex | Boost.Interprocess | Python 3 multiprocessing | Python / procpool |",
       "|---|---:|---:|---:|---:|---:|"]
for w, name in names.items():
    r = rows.get(w, {})
    cells = [f"{r[p]:.3g}" if p in r else "" for p in peers]
    ratio = f"{r['python'] / r['procpool']:.1f}x" if "python" in r and "procpool" in r else ""
    out.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
q = rows.get("queue_1mib/warm", {})
if "procpool" in q and "memcpy" in q:
    mbps = 1000 * 1.048576 / q["procpool"]
    out += ["", f"1 MiB items through a Queue, warm: {mbps:,.0f} MB/s, "
            f"{100 * q['memcpy'] / q['procpool']:.0f}% of memcpy's bandwidth in one process "
            f"({1000 * 1.048576 / q['memcpy']:,.0f} MB/s)."]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
cat "$here/primitives.md"
