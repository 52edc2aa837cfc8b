#!/usr/bin/env python3
"""procpool benchmarks, Python side: multiprocessing.Pool ("mp_pool") and
concurrent.futures.ProcessPoolExecutor ("ppe"), both with the fork start
method, on the same work as bench.cpp.

    python3 python_peers.py SECTION [--workers N]

SECTION is one of a, b, c, d (also does f), e. Output: CSV on stdout, one
measurement a line: workload,peer,value,unit; lines starting with '#' are
information. Standard library only.
"""
import argparse
import collections
import concurrent.futures as cf
import math
import multiprocessing as mp
import statistics
import sys
import threading
import time

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
    with CTX.Pool(WORKERS) as p:
        t, r = best_timed(10, lambda: p.map(square, xs))
        check(ok(r), "a/mp_pool")
        emit("a.map_ints", "mp_pool", n / t, "items/s")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
        cs = python_chunksize(n, WORKERS)  # ex.map's default of 1 would take minutes
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
    big = b"\x01" * (256 * MiB)
    ok = lambda r: len(r) == count and r[0] == MiB and r[-1] == MiB
    with CTX.Pool(WORKERS) as p:
        t, r = best_timed(5, lambda: p.map(length, bufs))
        check(ok(r), "c/mp_pool map")
        emit("c.map_1MiB", "mp_pool", total / t / 1e6, "MB/s")
        t, got = best_timed(3, lambda: p.apply_async(length, (big,)).get())
        check(got == len(big), "c/mp_pool apply")
        emit("c.apply_256MiB", "mp_pool", len(big) / t / 1e6, "MB/s")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=CTX) as ex:
        cs = python_chunksize(count, WORKERS)
        t, r = best_timed(5, lambda: list(ex.map(length, bufs, chunksize=cs)))
        check(ok(r), "c/ppe map")
        emit("c.map_1MiB", "ppe", total / t / 1e6, "MB/s")
        t, got = best_timed(3, lambda: ex.submit(length, big).result())
        check(got == len(big), "c/ppe apply")
        emit("c.apply_256MiB", "ppe", len(big) / t / 1e6, "MB/s")


# ------------------------------------------------------------------ (d), (f)
def calibrate():
    """Iterations of burn() that take 25 ms in this interpreter."""
    iters, best = 20000, None
    for _ in range(5):
        t0 = time.perf_counter()
        burn(iters)
        t = (time.perf_counter() - t0) / iters
        best = t if best is None else min(best, t)
    return int(0.025 / best)


def tasks_equal(i25):
    return [i25] * 40


def tasks_skewed(i25):
    h = sum(1.0 / r for r in range(1, 41))
    return [int(i25 * 40.0 / (h * ((17 * p) % 40 + 1))) for p in range(40)]


def section_d():
    i25 = calibrate()
    print(f"#info,py_iters25,{i25}")
    eq, sk = tasks_equal(i25), tasks_skewed(i25)
    res = {}

    def serial(name, tasks):
        res[name] = [burn(t) for t in tasks]

    s_eq = best_time(2, lambda: serial("eq", eq), warm=False)
    s_sk = best_time(2, lambda: serial("sk", sk), warm=False)
    eq_r, sk_r = res["eq"], res["sk"]
    emit("d.equal.time", "py_serial", s_eq, "s")
    emit("d.skew.time", "py_serial", s_sk, "s")

    def run_pool(tasks, expect, workers, reps):
        with CTX.Pool(workers) as p:
            p.map(square, range(workers))  # workers up

            def run():
                check(p.map(burn, tasks, chunksize=1) == expect, "d/mp_pool")

            return best_time(reps, run, warm=False)

    def run_ppe(tasks, expect, workers, reps):
        with cf.ProcessPoolExecutor(workers, mp_context=CTX) as ex:
            list(ex.map(square, range(workers)))

            def run():
                check(list(ex.map(burn, tasks, chunksize=1)) == expect, "d/ppe")

            return best_time(reps, run, warm=False)

    peers = [("mp_pool", run_pool), ("ppe", run_ppe)]
    for name, run in peers:
        t_eq = run(eq, eq_r, WORKERS, 2)
        t_sk = run(sk, sk_r, WORKERS, 2)
        emit("d.equal.time", name, t_eq, "s")
        emit("d.equal", name, s_eq / t_eq, "x serial")
        emit("d.skew.time", name, t_sk, "s")
        emit("d.skew", name, s_sk / t_sk, "x serial")
    for w in range(1, 2 * (mp.cpu_count() or 1) + 1):
        for name, run in peers:
            emit(f"f.w{w}", name, s_eq / run(eq, eq_r, w, 1), "x serial")


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
