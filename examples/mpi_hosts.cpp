// A CPU-bound map spread over MPI ranks; prints which rank (host and pid) ran
// how many items, and what a task that crashes does: its item fails with
// worker_lost, naming the rank and host, and the rest go on.
//
//   $ mpiexec -np 3 ./mpi_hosts
//   40 items of ~20 ms in 0.43 s (serial: 0.80 s)
//   rank 1 on node-a (pid 4242, 1 workers): 20 items
//   rank 2 on node-a (pid 4243, 1 workers): 20 items
//   item 3: worker 4250 running item 3 was killed by signal 11 (SIGSEGV) ... (on rank 2, host node-a)
#include <procpool/mpi/pool.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <vector>

namespace {

struct ran {
  std::uint64_t value;
  long rank_pid;  // the serving rank: the worker's parent
};

[[gnu::noinline]] std::uint64_t spin(std::uint64_t n) {
  std::uint64_t x = 88172645463325252ull;
  for (std::uint64_t i = 0; i < n; ++i) x ^= x << 13, x ^= x >> 7, x ^= x << 17;
  asm volatile("" : "+r"(x));  // the loop runs even when the result is dropped
  return x;
}

ran work(std::uint64_t n) { return {spin(n), static_cast<long>(::getppid())}; }

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

/// A CPU-bound map over the serving ranks: which rank ran how many items.
void spread() {
  procpool::mpi::Pool pool(work);
  if (!pool.is_master()) return;  // this rank served the pool in the constructor
  // ~20 ms of work per item on this machine.
  std::uint64_t n = 1 << 20;
  for (;;) {
    const auto t = std::chrono::steady_clock::now();
    spin(n);
    if (const double d = seconds_since(t); d >= 0.005) {
      n = static_cast<std::uint64_t>(static_cast<double>(n) * 0.020 / d);
      break;
    }
    n *= 2;
  }
  auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < 40; ++i) spin(n);
  const double serial = seconds_since(t);
  t = std::chrono::steady_clock::now();
  const auto out = pool.map(std::vector<std::uint64_t>(40, n));
  std::printf("40 items of ~20 ms in %.2f s (serial: %.2f s)\n", seconds_since(t), serial);
  std::map<long, int> per;
  for (const auto& r : out) ++per[r.rank_pid];
  for (const auto& r : pool.ranks())
    std::printf("rank %d on %s (pid %d, %zu workers): %d items\n", r.rank, r.host.c_str(),
                static_cast<int>(r.pid), r.workers, per[r.pid]);
}

/// A pool whose item 3 crashes its worker: that item fails, the rest do not.
void crash() {
  procpool::mpi::Pool pool([](int x) {
    if (x == 3) ::raise(SIGSEGV);
    return x;
  });
  if (!pool.is_master()) return;
  for (const auto& o : pool.try_map(std::vector<int>{0, 1, 2, 3, 4, 5})) {
    if (o.ok()) continue;
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::worker_lost& e) {
      std::printf("item %zu: %s\n", e.index(), e.what());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  procpool::mpi::session mpi(argc, argv);
  // One pool at a time, on every rank in the same order: each is destroyed
  // (on rank 0: terminated, ending it on the serving ranks) when its function returns.
  spread();
  crash();
}
