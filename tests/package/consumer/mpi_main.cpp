// The consumer of the optional component: built through procpool::mpi
// (find_package(procpool COMPONENTS mpi) in find_package mode). Run under
// mpiexec -np 3, it squares three numbers on the serving ranks.
#include <procpool/mpi/pool.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  procpool::mpi::session mpi(argc, argv);
  procpool::mpi::Pool pool([](int x) { return x * x; });
  if (!pool.is_master()) return 0;
  const auto r = pool.map(std::vector<int>{1, 2, 3});
  std::printf("%d %d %d\n", r[0], r[1], r[2]);
  return r == std::vector<int>{1, 4, 9} ? 0 : 1;
}
