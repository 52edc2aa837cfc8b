// A serving rank that stops answering (SIGSTOP) in the middle of a map
// (tests/mpi/rank_hang.sh runs this under mpiexec -np 3): rank 0 gives up on
// it after the silence limit, runs its unanswered items again on rank 1
// (retries = 1), and the job ends.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <procpool/mpi/pool.hpp>

int main(int argc, char** argv) {
  procpool::mpi::session s(argc, argv);
  {
    procpool::mpi::Pool pool(
        [](int x) {
          // Rank 2's worker stops its rank (its parent) at the 5th item it runs:
          // the pool is open and rank 2 holds work.
          static int ran = 0;
          const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
          if (rank && std::string(rank) == "2" && ++ran == 5) ::kill(::getppid(), SIGSTOP);
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          return x;
        },
        procpool::pool_options{.processes = 1, .retries = 1});
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
