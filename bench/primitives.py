"""Python's side of bench/primitives.cpp: the same operations, CSV lines."""
import multiprocessing as mp
import time

OPS = 200_000


def best_ns_per_op(fn):
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / OPS)
    return best


def produce(q, n, item):
    for _ in range(n):
        q.put(item if item is not None else 1)


def queue_run(n, item):
    t0 = time.perf_counter()
    q = mp.Queue()
    p = mp.Process(target=produce, args=(q, n, item))
    p.start()
    for _ in range(n):
        q.get()
    p.join()
    return time.perf_counter() - t0


def queue_figures(workload, n, item, reps):
    cold = queue_run(n, item)
    warm = min(queue_run(n, item) for _ in range(reps))
    print(f"{workload}/cold,python,{cold:.6g},s")
    print(f"{workload}/warm,python,{warm:.6g},s")


def echo(conn):
    while True:
        x = conn.recv()
        if x < 0:
            return
        conn.send(x + 1)


def pipe_rtt():
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(b,))
    p.start()
    t = []
    for i in range(20000):
        t0 = time.perf_counter_ns()
        a.send(i)
        a.recv()
        t.append(time.perf_counter_ns() - t0)
    a.send(-1)
    p.join()
    t.sort()
    return t[len(t) // 2]


def main():
    lock = mp.Lock()

    def lock_loop():
        for _ in range(OPS):
            lock.acquire()
            lock.release()

    print(f"lock,python,{best_ns_per_op(lock_loop):.2f},ns")
    v = mp.Value("l", 0)

    def value_loop():
        for _ in range(OPS):
            with v.get_lock():
                v.value += 1

    print(f"value_locked_add,python,{best_ns_per_op(value_loop):.2f},ns")
    e = mp.Event()

    def event_loop():
        for _ in range(OPS):
            e.set()
            e.is_set()

    print(f"event_set_is_set,python,{best_ns_per_op(event_loop):.2f},ns")
    print(f"pipe_rtt,python,{pipe_rtt():.2f},ns")
    queue_figures("queue_ints", 1_000_000, None, 2)
    queue_figures("queue_1mib", 1000, bytes(1 << 20), 2)


if __name__ == "__main__":
    main()
