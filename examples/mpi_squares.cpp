// Seed 001 "Q5" over MPI ranks: rank 0 squares [1, 2, 3, 4, 5] on the other ranks.
//
//   $ mpiexec -np 3 ./mpi_squares
//   [1, 4, 9, 16, 25]
#include <procpool/mpi/pool.hpp>

#include <cstdio>
#include <vector>

int worker_function(int x) { return x * x; }

int main(int argc, char** argv) {
  // First thing, on every rank: this process's place among the ranks.
  procpool::mpi::session mpi(argc, argv);
  // Every rank builds the pool; ranks 1.. serve it here until rank 0 is done with it.
  procpool::mpi::Pool pool(worker_function);
  if (!pool.is_master()) return 0;

  std::vector<int> results = pool.map(std::vector<int>{1, 2, 3, 4, 5});
  std::printf("[");
  for (std::size_t i = 0; i < results.size(); ++i) std::printf(i ? ", %d" : "%d", results[i]);
  std::printf("]\n");
}
