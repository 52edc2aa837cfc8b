#!/usr/bin/env python3
"""procpool benchmarks, Python side: multiprocessing.Pool ("mp_pool") and
concurrent.futures.ProcessPoolExecutor ("ppe"), both with the fork start
method, on the same work as bench.cpp.

    python3 python_peers.py SECTION [--workers N]

SECTION is one of a, b, c, d (also does f), e. Sections a to d measure each
workload twice, by the same rule as bench.cpp:
  cold: what a new user runs: `with CTX.Pool(2) as p: p.map(f, xs)` (or the
        ProcessPoolExecutor's with block) with default options, timed from the
        pool's construction to the end of the with block; the median of a few
        samples, each in a child process forked for it;
  warm: one pool kept across calls; the best of N calls.
Output: CSV on stdout, one measurement a line: workload,peer,value,unit; lines
starting with '#' are information. Standard library only.
"""
import argparse
import collections
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import traceback

CTX = mp.get_context("fork")  # what Linux used by default up to Python 3.13
MiB = 1 << 20
WORKERS = 2


def emit(workload, peer, value, unit):
    print(f"{workload},{peer},{value:.6g},{unit}", flush=True)


def best_time(reps, fn, warm=True):
    """Shortest wall time of reps runs (after a warm-up run), as in bench.cpp."""
    if warm:
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def best_timed(reps, fn):
    """best_time of fn, and what fn returned on its last run."""
    out = [None]

    def run():
        out[0] = fn()

    return best_time(reps, run), out[0]


def percentile(v, p):
    v = sorted(v)
    k = min(max(math.ceil(p * len(v)), 1), len(v))
    return v[k - 1]


def check(ok, what):
    if not ok:
        sys.exit(f"python_peers: wrong result in {what}")


# Samples of a cold figure: more for the short workloads, which vary more.
COLD_SHORT, COLD_LONG = 5, 3


def cold_once(what, run, ok):
    """Wall time of one cold run, in a child forked for it, as in bench.cpp:
    run() builds its pool, makes one call and leaves the with block, all of it
    timed, and returns the call's result, which ok() checks untimed."""
    sys.stdout.flush()  # the child must not write this process's buffered output
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.close(rfd)
            t0 = time.perf_counter()
            r = run()
            t = time.perf_counter() - t0
            if ok(r):
                os.write(wfd, repr(t).encode())
                code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, st = os.waitpid(pid, 0)
    check(st == 0 and data, what + " (cold)")
    return float(data)


def cold_median(workload, peer, samples, run, ok):
    """Median of samples cold runs (see cold_once)."""
    return statistics.median(cold_once(f"{workload}/{peer}", run, ok) for _ in range(samples))


def note_cold(workload, samples):
    print(f"#cold_samples,{workload},{samples}")


def python_chunksize(n, workers):
    """multiprocessing.Pool.map's default: len / (4 * workers), rounded up."""
    return max(1, -(-n // (4 * workers)))


# Worker functions: module level, so that both pools can pickle them by name.
def square(x):
    return x * x


def length(b):
    return len(b)


def burn(iters):
    """The same dependent integer arithmetic as bench.cpp's burn()."""
    x = iters
    for _ in range(iters):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x


# ------------------------------------------------------------------ (a)
def section_a():
    n = 1_000_000
    xs = list(range(n))
    ok = lambda r: len(r) == n and r[12345] == 12345 * 12345 and r[-1] == (n - 1) ** 2
    cs = python_chunksize(n, WORKERS)  # ex.map's default of 1 would take minutes

    def pool_cold():
        with CTX.Pool(WORKERS) as p:
            return p.map(square, xs)

    def ppe_cold():
        with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
            return list(ex.map(square, xs, chunksize=cs))

    cold = "a.map_ints.cold"
    note_cold(cold, COLD_SHORT)
    for peer, run in (("mp_pool", pool_cold), ("ppe", ppe_cold)):
        emit(cold, peer, n / cold_median(cold, peer, COLD_SHORT, run, ok), "items/s")

    with CTX.Pool(WORKERS) as p:
        t, r = best_timed(10, lambda: p.map(square, xs))
        check(ok(r), "a/mp_pool")
        emit("a.map_ints", "mp_pool", n / t, "items/s")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
        t, r = best_timed(10, lambda: list(ex.map(square, xs, chunksize=cs)))
        check(ok(r), "a/ppe")
        emit("a.map_ints", "ppe", n / t, "items/s")


# ------------------------------------------------------------------ (b)
# The three ways a round trip is timed, as in bench.cpp: idle (back to back),
# sleep (1 ms after the previous one), busy (every 100 us while another
# thread keeps 4 tiny tasks in flight).
SLEEP_GAP, BUSY_GAP = 0.001, 0.0001


def measure_rtt(max_n, max_s, once, gap=0.0):
    for i in range(100):
        once(i)
    us = []
    start = time.perf_counter()
    for i in range(max_n):
        if gap:
            time.sleep(gap)
        t0 = time.perf_counter()
        once(i)
        t1 = time.perf_counter()
        us.append((t1 - t0) * 1e6)
        if t1 - start > max_s:
            break
    return statistics.median(us), percentile(us, 0.99), len(us)


def busy_rtt(max_n, max_s, submit, wait, once):
    """Another thread keeps 4 tiny tasks in flight while once() is timed."""
    stop = threading.Event()
    done = [0]

    def stream():
        q = collections.deque()
        i = 0
        while not stop.is_set():
            q.append(submit(i))
            i += 1
            if len(q) >= 4:
                wait(q.popleft())
                done[0] += 1
        while q:
            wait(q.popleft())

    th = threading.Thread(target=stream)
    th.start()
    time.sleep(0.05)
    t0, d0 = time.perf_counter(), done[0]
    res = measure_rtt(max_n, max_s, once, BUSY_GAP)
    rate = (done[0] - d0) / (time.perf_counter() - t0)
    stop.set()
    th.join()
    return res, rate


def emit_latency(mode, peer, res):
    med, p99, n = res
    emit(f"b.{mode}.median", peer, med, "us")
    emit(f"b.{mode}.p99", peer, p99, "us")
    print(f"#samples,b.{mode},{peer},{n}")


def section_b():
    n_idle, n_sleep, n_busy, max_s = 5000, 1000, 3000, 2.0

    def pool_cold():
        with CTX.Pool(WORKERS) as p:
            return p.apply_async(square, (7,)).get()

    def ppe_cold():
        with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
            return ex.submit(square, 7).result()

    cold = "b.cold"
    note_cold(cold, COLD_SHORT)
    for peer, run in (("mp_pool", pool_cold), ("ppe", ppe_cold)):
        emit(cold, peer, 1e3 * cold_median(cold, peer, COLD_SHORT, run, lambda y: y == 49), "ms")

    with CTX.Pool(WORKERS) as p:
        def once(x):
            check(p.apply_async(square, (x,)).get() == x * x, "b/mp_pool")

        emit_latency("idle", "mp_pool", measure_rtt(n_idle, max_s, once))
        emit_latency("sleep", "mp_pool", measure_rtt(n_sleep, max_s, once, SLEEP_GAP))
        res, rate = busy_rtt(n_busy, max_s, lambda x: p.apply_async(square, (x,)),
                             lambda r: r.get(), once)
        emit_latency("busy", "mp_pool", res)
        emit("b.busy.bg_rate", "mp_pool", rate, "tasks/s")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
        def once(x):
            check(ex.submit(square, x).result() == x * x, "b/ppe")

        emit_latency("idle", "ppe", measure_rtt(n_idle, max_s, once))
        emit_latency("sleep", "ppe", measure_rtt(n_sleep, max_s, once, SLEEP_GAP))
        res, rate = busy_rtt(n_busy, max_s, lambda x: ex.submit(square, x),
                             lambda f: f.result(), once)
        emit_latency("busy", "ppe", res)
        emit("b.busy.bg_rate", "ppe", rate, "tasks/s")


# ------------------------------------------------------------------ (c)
def section_c():
    count = 256
    total = count * MiB
    bufs = [bytes([i]) * MiB for i in range(count)]  # 256 distinct objects
    ok = lambda r: len(r) == count and r[0] == MiB and r[-1] == MiB
    cs = python_chunksize(count, WORKERS)

    def pool_cold():
        with CTX.Pool(WORKERS) as p:
            return p.map(length, bufs)

    def ppe_cold():
        with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
            return list(ex.map(length, bufs, chunksize=cs))

    # Cold before the 256 MiB buffer exists, as in bench.cpp.
    cold = "c.map_1MiB.cold"
    note_cold(cold, COLD_SHORT)
    for peer, run in (("mp_pool", pool_cold), ("ppe", ppe_cold)):
        emit(cold, peer, total / cold_median(cold, peer, COLD_SHORT, run, ok) / 1e6, "MB/s")

    big = b"\x01" * (256 * MiB)
    with CTX.Pool(WORKERS) as p:
        t, r = best_timed(5, lambda: p.map(length, bufs))
        check(ok(r), "c/mp_pool map")
        emit("c.map_1MiB", "mp_pool", total / t / 1e6, "MB/s")
        t, got = best_timed(3, lambda: p.apply_async(length, (big,)).get())
        check(got == len(big), "c/mp_pool apply")
        emit("c.apply_256MiB", "mp_pool", len(big) / t / 1e6, "MB/s")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
        t, r = best_timed(5, lambda: list(ex.map(length, bufs, chunksize=cs)))
        check(ok(r), "c/ppe map")
        emit("c.map_1MiB", "ppe", total / t / 1e6, "MB/s")
        t, got = best_timed(3, lambda: ex.submit(length, big).result())
        check(got == len(big), "c/ppe apply")
        emit("c.apply_256MiB", "ppe", len(big) / t / 1e6, "MB/s")


# ------------------------------------------------------------------ (d), (f)
def calibrate():
    """Iterations of burn() that take 20 ms in this interpreter."""
    iters, best = 20000, None
    for _ in range(5):
        t0 = time.perf_counter()
        burn(iters)
        t = (time.perf_counter() - t0) / iters
        best = t if best is None else min(best, t)
    return int(0.020 / best)


def tasks_equal(i20):
    return [i20] * 40


def tasks_skewed(i20):
    h = sum(1.0 / r for r in range(1, 41))
    return [int(i20 * 40.0 / (h * ((17 * p) % 40 + 1))) for p in range(40)]


def tasks_short(i20):
    return [i20 // 250] * 10000


def serial(tasks):
    """The serial loop, into a fresh list."""
    return [burn(t) for t in tasks]


# One map of the tasks on each peer's pool, default options (Pool.map's own
# chunksize; the executor is given the same rule).
def map_pool(p, tasks):
    return p.map(burn, tasks)


def map_ppe(ex, workers, tasks):
    return list(ex.map(burn, tasks, chunksize=python_chunksize(len(tasks), workers)))


def section_d():
    i20 = calibrate()
    print(f"#info,py_iters20,{i20}")
    print(f"#info,py_iters80us,{i20 // 250}")
    wls = [("d.equal", tasks_equal(i20)), ("d.skew", tasks_skewed(i20)),
           ("d.short", tasks_short(i20))]
    expect, s_warm = {}, {}
    # The serial loop's warm figure first: it gives the results the others are
    # checked against, and runs no pool.
    for key, tasks in wls:
        def run():
            expect[key] = serial(tasks)

        s_warm[key] = best_time(2, run, warm=False)
        emit(f"{key}.time", "py_serial", s_warm[key], "s")

    # Cold: a fresh pool with default options, one map, construct to the end of the with block.
    for key, tasks in wls:
        cold = f"{key}.cold"
        note_cold(cold, COLD_LONG)
        ok = lambda r, key=key: r == expect[key]
        s = cold_median(cold, "py_serial", COLD_LONG, lambda: serial(tasks), ok)
        emit(f"{cold}.time", "py_serial", s, "s")

        def pool_cold():
            with CTX.Pool(WORKERS) as p:
                return map_pool(p, tasks)

        def ppe_cold():
            with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
                return map_ppe(ex, WORKERS, tasks)

        for peer, run in (("mp_pool", pool_cold), ("ppe", ppe_cold)):
            t = cold_median(cold, peer, COLD_LONG, run, ok)
            emit(f"{cold}.time", peer, t, "s")
            emit(cold, peer, s / t, "x serial")

    # Warm: one pool, the best of reps maps.
    def run_pool(tasks, want, workers, reps):
        with CTX.Pool(workers) as p:
            p.map(square, range(workers))  # workers up

            def run():
                check(map_pool(p, tasks) == want, "d/mp_pool")

            return best_time(reps, run, warm=False)

    def run_ppe(tasks, want, workers, reps):
        with cf.ProcessPoolExecutor(workers, mp_context=CTX) as ex:
            list(ex.map(square, range(workers)))

            def run():
                check(map_ppe(ex, workers, tasks) == want, "d/ppe")

            return best_time(reps, run, warm=False)

    peers = [("mp_pool", run_pool), ("ppe", run_ppe)]
    for key, tasks in wls:
        for name, run in peers:
            t = run(tasks, expect[key], WORKERS, 2)
            emit(f"{key}.time", name, t, "s")
            emit(key, name, s_warm[key] / t, "x serial")
    # (f) scaling of the equal workload, 1 to 2 x cores workers, warm.
    eq = wls[0][1]
    for w in range(1, 2 * (mp.cpu_count() or 1) + 1):
        for name, run in peers:
            emit(f"f.w{w}", name, s_warm["d.equal"] / run(eq, expect["d.equal"], w, 1), "x serial")


# ------------------------------------------------------------------ (e)
def section_e():
    reps = 15

    def run(w, peer, body):
        body()
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            body()
            ms.append((time.perf_counter() - t0) * 1e3)
        emit(f"e.{w}", peer, statistics.median(ms), "ms")
        print(f"#p90,e.{w},{peer},{percentile(ms, 0.9):.4g}")

    def pool_ctor_dtor():
        with CTX.Pool(2):  # __exit__ terminates, like destroying a procpool::Pool
            pass

    def pool_map():
        p = CTX.Pool(2)
        check(p.map(square, [1, 2, 3, 4])[-1] == 16, "e/mp_pool")
        p.close()
        p.join()

    def ppe_ctor_dtor():
        # Creates no process yet: ProcessPoolExecutor forks on the first submit.
        with cf.ProcessPoolExecutor(2, mp_context=CTX):
            pass

    def ppe_map():
        with cf.ProcessPoolExecutor(2, mp_context=CTX) as ex:
            check(list(ex.map(square, [1, 2, 3, 4]))[-1] == 16, "e/ppe")

    run("ctor_dtor", "mp_pool", pool_ctor_dtor)
    run("ctor_map_close_join", "mp_pool", pool_map)
    run("ctor_dtor", "ppe", ppe_ctor_dtor)
    run("ctor_map_close_join", "ppe", ppe_map)


def main():
    global WORKERS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", choices=["info", "a", "b", "c", "d", "e"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    WORKERS = args.workers
    if args.section == "info":
        print(f"Python {sys.version.split()[0]} ({sys.executable}), start method fork")
        return
    globals()["section_" + args.section]()


if __name__ == "__main__":
    main()
