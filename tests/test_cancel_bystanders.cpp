// Cancelling a call hurts no other call: a call not started whose message is
// partly written into the task ring (an argument bigger than the ring's free
// space) is taken back without killing the worker, which runs another call.
#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;
using namespace std::chrono_literals;

namespace {
std::atomic<int>* g_runs = nullptr;  // runs of the short-argument (side-effecting) call

/// A short argument "ms": counts a run, naps ms. A long argument: returns its size.
int work(std::string s) {
  if (s.size() < 16) {
    if (g_runs) g_runs->fetch_add(1);
    return nap(std::stoi(s));
  }
  return static_cast<int>(s.size());
}
const std::string big(64 * 1024, 'x');  // bigger than a 4 KiB task ring: written in pieces
}  // namespace

TEST_CASE("cancel of a call partly written into the ring does not kill the worker running another") {
  watchdog dog(30s);
  shared<std::atomic<int>> runs;
  g_runs = runs.get();
  procpool::Pool pool(work, procpool::pool_options{.processes = 1, .queue_bytes = 4096});
  auto a = pool.apply_async(std::string("800"));  // runs
  auto b = pool.apply_async(big);                 // queued behind it, partly written
  REQUIRE(eventually([&] { return runs->load() == 1; }));
  CHECK_FALSE(b.running());
  CHECK(b.cancel());
  CHECK(a.get() == 800);
  CHECK(runs->load() == 1);
  CHECK(pool.stats().workers_replaced == 0);
  g_runs = nullptr;
}

TEST_CASE("shutdown(cancel_futures) lets what started finish, once") {
  watchdog dog(30s);
  shared<std::atomic<int>> runs;
  g_runs = runs.get();
  procpool::Pool pool(work, procpool::pool_options{.processes = 1, .queue_bytes = 4096});
  auto a = pool.apply_async(std::string("800"));
  auto b = pool.apply_async(big);
  REQUIRE(eventually([&] { return runs->load() == 1; }));
  pool.shutdown(true, true);
  CHECK(a.get() == 800);
  CHECK(b.cancelled());
  CHECK(runs->load() == 1);
  g_runs = nullptr;
}

TEST_CASE("cancelling calls queued to a worker in its initializer leaves the pool usable") {
  watchdog dog(60s);
  procpool::pool_options o{.processes = 1, .initializer = [] { sleep_ms(300); }, .queue_bytes = 4096};
  procpool::Pool pool(work, o);
  for (int i = 0; i < 3; ++i) {
    auto b = pool.apply_async(big);
    sleep_ms(20);
    CHECK(b.cancel());
  }
  CHECK(pool.stats().workers_replaced == 0);
  CHECK_NOTHROW(pool.apply(std::string("1")));
}

namespace {
int crash_or_size(std::string s) {
  if (s == "crash") {
    if (g_runs) g_runs->fetch_add(1);
    sleep_ms(100);
    ::raise(SIGKILL);
  }
  return static_cast<int>(s.size());
}
}  // namespace

TEST_CASE("a worker that died by itself before a cancel: its item is blamed and not run again") {
  watchdog dog(30s);
  shared<std::atomic<int>> runs;
  g_runs = runs.get();
  procpool::Pool pool(crash_or_size, procpool::pool_options{.processes = 1, .queue_bytes = 4096});
  auto x = pool.apply_async(std::string("crash"));
  auto b = pool.apply_async(big);
  sleep_ms(500);  // x's worker is dead; nobody drives, so nobody noticed
  CHECK(runs->load() == 1);
  CHECK(b.cancel());
  CHECK_THROWS_AS(x.get(), procpool::worker_lost);
  CHECK(runs->load() == 1);
  g_runs = nullptr;
}
