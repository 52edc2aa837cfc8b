// procpool::mpi::Pool against mpi4py.futures (mpi_peers.py), run by mpi.sh
// under mpiexec -np 3: rank 0 hands out the work, ranks 1 and 2 serve. Rank 0
// prints one "name seconds" line per figure. The work functions are work.cpp's,
// out of line, so the serial loop and the pools run the same machine code.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <procpool/mpi/pool.hpp>

#include "work.hpp"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void report(const char* name, double v) { std::printf("%s %.9f\n", name, v); }

std::int64_t sq(int x) { return bench::square(x); }
int tiny(int x) { return bench::tiny(x); }
std::uint64_t burn(std::uint64_t n) { return bench::burn(n); }

}  // namespace

int main(int argc, char** argv) {
  procpool::mpi::session s(argc, argv);
  const bool master = s.is_master();
  const int n = 1'000'000;
  std::vector<int> ints(n);
  for (int i = 0; i < n; ++i) ints[static_cast<std::size_t>(i)] = i;
  std::int64_t check = 0;

  // 1. map over 1,000,000 ints: the program's first pool (MPI starts in it),
  // then a fresh pool (construction to destruction), then warm best of 5.
  for (const char* name : {"map_1m_first", "map_1m_cold"}) {
    const double t0 = now_s();
    {
      procpool::mpi::Pool pool(sq);
      if (master) check += pool.map(ints).back();
    }
    if (master) report(name, now_s() - t0);
  }
  {
    procpool::mpi::Pool pool(sq);
    if (master) {
      double best = 1e9;
      for (int k = 0; k < 5; ++k) {
        const double t = now_s();
        check += pool.map(ints).back();
        best = std::min(best, now_s() - t);
      }
      report("map_1m_warm", best);
    }
  }
  // 2. one tiny task's round trip: median of 2,000, on a fresh pool.
  {
    procpool::mpi::Pool pool(tiny);
    if (master) {
      std::vector<double> rt;
      for (int k = 0; k < 2000; ++k) {
        const double t = now_s();
        check += pool.apply(k);
        rt.push_back(now_s() - t);
      }
      std::sort(rt.begin(), rt.end());
      report("round_trip_median", rt[rt.size() / 2]);
    }
  }
  // 3. 40 CPU-bound tasks of ~20 ms: serial on rank 0, then a fresh pool (cold).
  std::uint64_t iters = 0;
  if (master) {
    // Calibrate ~20 ms of burn on this machine.
    iters = 1'000'000;
    for (;;) {
      const double t = now_s();
      check += static_cast<std::int64_t>(burn(iters));
      const double d = now_s() - t;
      if (d > 0.005) {
        iters = static_cast<std::uint64_t>(static_cast<double>(iters) * 0.020 / d);
        break;
      }
      iters *= 4;
    }
    const double t = now_s();
    for (int k = 0; k < 40; ++k) check += static_cast<std::int64_t>(burn(iters));
    report("cpu40_serial", now_s() - t);
  }
  {
    const double t0 = now_s();
    {
      procpool::mpi::Pool pool(burn);
      if (master) {
        const auto r = pool.map(std::vector<std::uint64_t>(40, iters));
        check += static_cast<std::int64_t>(r.back());
      }
    }
    if (master) report("cpu40_cold", now_s() - t0);
  }
  if (master) std::fprintf(stderr, "check %lld\n", static_cast<long long>(check));
  return 0;
}
