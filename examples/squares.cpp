// Seed 001 "Q5": a pool of four workers squares [1, 2, 3, 4, 5].
//
//   $ ./squares
//   [1, 4, 9, 16, 25]
#include <procpool/procpool.hpp>

#include <cstdio>
#include <vector>

int worker_function(int x) { return x * x; }

int main() {
  // Create a pool with 4 worker processes.
  procpool::Pool pool(worker_function, 4);
  // Apply the worker function to a list of inputs.
  std::vector<int> results = pool.map(std::vector<int>{1, 2, 3, 4, 5});

  std::printf("[");
  for (std::size_t i = 0; i < results.size(); ++i) std::printf(i ? ", %d" : "%d", results[i]);
  std::printf("]\n");
}
