#include <procpool/procpool.hpp>
#include <catch2/catch.hpp>

TEST_CASE("a process returns exit code 0") {
  procpool::Process p([] {});
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
}
