// Three processes work in two stages with a Barrier between them: no process
// starts stage 2 before all have finished stage 1.
//
//   $ ./barrier_stages
//   process 1: stage 1 done      (the three stage 1 lines in any order)
//   ...
//   process 2: stage 2 done      (then the three stage 2 lines)
//   ...
#include <procpool/procpool.hpp>

#include <cstdio>
#include <vector>

#include <unistd.h>

int main() {
  procpool::Barrier between(3);
  auto work = [&](int me) {
    ::usleep(static_cast<useconds_t>(10000 * me));  // stage 1 takes longer for some
    std::printf("process %d: stage 1 done\n", me);
    std::fflush(stdout);
    between.wait();
    std::printf("process %d: stage 2 done\n", me);
  };
  std::vector<procpool::Process<decltype(work), int>> ps;
  for (int i = 1; i <= 3; ++i) ps.emplace_back(work, i);
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();
  for (auto& p : ps)
    if (p.exitcode() != 0) return 1;
  return 0;
}
