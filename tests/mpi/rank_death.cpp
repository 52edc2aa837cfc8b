// A serving rank SIGKILLed in the middle of a map (tests/mpi/rank_death.sh
// runs this under mpiexec -np 3): the job must end, rank 0 included, in
// bounded time, with no process of it left behind.
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
      ::kill(::getpid(), SIGKILL);
    }).detach();
  }
  procpool::mpi::Pool pool([](int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return x;
  });
  if (!pool.is_master()) return 0;
  // 1,000 items of 50 ms on 2 ranks: 25 s, long after rank 2 is gone.
  const auto r = pool.map(std::vector<int>(1000, 1));
  std::printf("rank 0 finished a map that lost a rank (%zu items): wrong\n", r.size());
  return 0;
}
