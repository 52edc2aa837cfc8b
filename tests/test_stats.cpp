// Pool::stats(): the counts of items and workers, through every kind of call,
// failures, a worker's death and retirement. Items sleep where a test looks
// at work in progress, so what is seen does not depend on the machine's load.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <chrono>
#include <csignal>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/express.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;
using namespace std::chrono_literals;

namespace {

void check_settled(const procpool::pool_stats& s, std::uint64_t done, std::uint64_t failed) {
  CHECK(s.done == done);
  CHECK(s.failed == failed);
  CHECK(s.submitted == done + failed);
  CHECK(s.queued == 0);
  CHECK(s.running == 0);
}

}  // namespace

TEST_CASE("a fresh pool counts its workers and nothing else") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 3);
  const auto s = pool.stats();
  check_settled(s, 0, 0);
  CHECK(s.workers_started == 3);
  CHECK(s.workers_replaced == 0);
}

TEST_CASE("map, imap_unordered and apply_async count each item once, failures apart") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::vector<int> in(100, 0);
  in[10] = in[50] = in[99] = -1;
  auto o = pool.try_map(in);
  check_settled(pool.stats(), 97, 3);
  for (auto&& r : pool.imap_unordered(std::vector<int>(20, 0))) (void)r;
  check_settled(pool.stats(), 117, 3);
  std::vector<procpool::async_result<int>> rs;
  for (int i = 0; i < 5; ++i) rs.push_back(pool.apply_async(i == 2 ? -1 : 0));
  for (auto& r : rs) r.wait();
  check_settled(pool.stats(), 121, 4);
  CHECK(pool.stats().workers_replaced == 0);
}

TEST_CASE("express calls are counted like the others") {
  watchdog dog(30s);
  if (!have_two_cpus()) return;
  procpool::Pool pool([](int x) {
    if (x < 0) throw std::runtime_error("negative");
    return x;
  }, 2);
  const auto before = pool.stats();
  auto r = express_call(pool, 1);
  if (!r) {
    WARN("no call took the express lane in 10 s");
    return;
  }
  CHECK(r->get() == 1);
  auto bad = express_call(pool, -1);
  if (bad) CHECK_THROWS_AS(bad->get(), procpool::task_error);
  const auto s = pool.stats();
  CHECK(s.queued == 0);
  CHECK(s.running == 0);
  CHECK(s.submitted == s.done + s.failed);
  CHECK(s.done > before.done);
  // express_call waits for the calls that missed the lane: they failed too.
  if (bad) CHECK(s.failed > before.failed);
}

TEST_CASE("work in progress: running and queued") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto r = pool.map_async(std::vector<int>(6, 400), {.chunksize = 1});
  CHECK_FALSE(r.wait_for(150ms));  // drives the pool meanwhile
  const auto s = pool.stats();
  CHECK(s.running == 2);
  CHECK(s.done == 0);
  CHECK(s.submitted >= 2);
  CHECK(s.queued == s.submitted - 2);
  r.wait();
  check_settled(pool.stats(), 6, 0);
}

TEST_CASE("a worker's death counts its item as failed and its replacement as replaced") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto o = pool.try_map(std::vector<int>{0, 0, -9, 0, 0}, {.chunksize = 1});
  REQUIRE(o.size() == 5);
  CHECK_FALSE(o[2].ok());
  const auto s = pool.stats();
  check_settled(s, 4, 1);
  CHECK(s.workers_started == 3);
  CHECK(s.workers_replaced == 1);
}

TEST_CASE("retired workers count as replaced") {
  watchdog dog(30s);
  procpool::Pool pool(nap, procpool::pool_options{.processes = 1, .max_tasks_per_child = 1});
  (void)pool.map(std::vector<int>(3, 0));
  const auto s = pool.stats();
  check_settled(s, 3, 0);
  CHECK(s.workers_replaced >= 2);
  CHECK(s.workers_started == s.workers_replaced + 1);
}
