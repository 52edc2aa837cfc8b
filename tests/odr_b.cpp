#include <procpool/procpool.hpp>

int odr_a();

int main() {
  return odr_a() == static_cast<int>(procpool::cpu_count()) &&
                 procpool::current_process().name() == "MainProcess"
             ? 0
             : 1;
}
