// A serving rank that stops answering (SIGSTOP) in the middle of a map
// (tests/mpi/rank_hang.sh runs this under mpiexec -np 3): rank 0 gives up on
// it after the silence limit, runs its unanswered items again on rank 1
// (retries = 1), and the job ends.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <procpool/mpi/pool.hpp>

int main(int argc, char** argv) {
  procpool::mpi::session s(argc, argv);
  if (s.rank() == 2) {
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      ::kill(::getpid(), SIGSTOP);
    }).detach();
  }
  {
    procpool::mpi::Pool pool(
        [](int x) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          return x;
        },
        procpool::pool_options{.retries = 1});
    if (!pool.is_master()) return 0;
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pool.try_map(std::vector<int>(200, 7), {.chunksize = 4});
    std::size_t ok = 0;
    for (const auto& o : r) ok += o.ok() && o.value() == 7;
    std::printf("rank 0: %zu of %zu items ok after %.1f s\n", ok, r.size(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::fflush(stdout);
  return 0;
}
