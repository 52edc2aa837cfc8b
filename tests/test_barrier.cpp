// Tests of Barrier with real processes: parties meet, round after round; a
// party SIGKILLed while it waits breaks the barrier for the others; timeouts,
// abort and reset. Every wait is bounded; a child reports through its exit code.
#include <procpool/procpool.hpp>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/watchdog.hpp"

#include <chrono>
#include <csignal>
#include <set>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace procpool_test;
using namespace std::chrono_literals;

}  // namespace

TEST_CASE("Barrier: three processes meet 100 times, with distinct indices each time") {
  watchdog wd(60s);
  procpool::Barrier b(3);
  procpool::Array<int> index_sum(100);  // per round, the sum of the indices
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(fork_child([&] {
      for (std::size_t r = 0; r < 100; ++r)
        index_sum.atomic(r).fetch_add(static_cast<int>(b.wait(10s)));
      return 0;
    }));
  for (std::size_t r = 0; r < 100; ++r) index_sum.atomic(r).fetch_add(static_cast<int>(b.wait(10s)));
  for (pid_t k : kids) CHECK(exit_status(k) == 0);
  int wrong = 0;
  for (int x : index_sum) wrong += x != 0 + 1 + 2;
  CHECK(wrong == 0);
  CHECK_FALSE(b.broken());
  CHECK(b.n_waiting() == 0);
}

TEST_CASE("Barrier: a party killed while it waits breaks the barrier for the others") {
  watchdog wd(60s);
  procpool::Barrier b(3);
  procpool::Event waiting;
  const pid_t victim = fork_child([&] {
    waiting.set();
    b.wait();
    return 0;
  });
  REQUIRE(waiting.wait(10s));
  REQUIRE(eventually([&] { return b.n_waiting() == 1; }));
  const pid_t other = fork_child([&] {
    try {
      b.wait();
    } catch (const procpool::broken_barrier_error&) {
      return 7;
    }
    return 0;
  });
  REQUIRE(eventually([&] { return b.n_waiting() == 2; }));
  kill_and_reap(victim);
  CHECK(exit_status(other) == 7);
  CHECK(b.broken());
  CHECK_THROWS_AS(b.wait(), procpool::broken_barrier_error);
  b.reset();
  CHECK_FALSE(b.broken());
}

TEST_CASE("Barrier: a timeout breaks it, abort breaks it, reset mends it") {
  watchdog wd(60s);
  procpool::Barrier b(2);
  CHECK_THROWS_WITH(b.wait(20ms), Catch::Contains("timed out"));
  CHECK(b.broken());
  b.reset();
  const pid_t pid = fork_child([&] { return static_cast<int>(b.wait(10s)); });
  const std::size_t mine = b.wait(10s);
  const int theirs = exit_status(pid);
  CHECK(std::set<int>{static_cast<int>(mine), theirs} == std::set<int>{0, 1});
  b.abort();
  CHECK_THROWS_AS(b.wait(1s), procpool::broken_barrier_error);
  CHECK_THROWS_AS(procpool::Barrier(0), procpool::usage_error);
  procpool::Barrier one(1);
  CHECK(one.wait() == 0);
}
