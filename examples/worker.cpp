// Seed 000 "# 03": start one process, wait for it, then finish.
//
//   $ ./worker
//   Worker process executing.
//   Main process completed.
#include <procpool/procpool.hpp>

#include <cstdio>

/// Function to be executed by the process.
void worker() { std::puts("Worker process executing."); }

int main() {
  procpool::Process process(worker);
  process.start();
  process.join();
  std::puts("Main process completed.");
}
