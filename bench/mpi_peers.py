"""mpi4py.futures on mpi.cpp's workloads, under
mpiexec -n 3 python3 -m mpi4py.futures mpi_peers.py N: rank 0 submits, the
other two ranks serve (MPIPoolExecutor's own workers). Default options, as a
user runs it; prints one "name seconds" line per figure."""
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def square(x):
    return x * x


def tiny(x):
    return x + 1


def main():
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    with MPIPoolExecutor() as ex:
        r = list(ex.map(square, range(n)))
    took = time.perf_counter() - t0
    assert r[-1] == (n - 1) ** 2
    print(f"mpi4py_map_cold {took:.9f}")
    print(f"mpi4py_map_items {n}")
    with MPIPoolExecutor() as ex:
        ex.submit(tiny, 0).result()  # the workers are up
        rt = []
        for k in range(2000):
            t = time.perf_counter()
            ex.submit(tiny, k).result()
            rt.append(time.perf_counter() - t)
    rt.sort()
    print(f"mpi4py_round_trip_median {rt[len(rt) // 2]:.9f}")


if __name__ == "__main__":
    main()
