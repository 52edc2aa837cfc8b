// task_timeout: a worker whose item runs longer is killed and the item fails
// with task_timeout; the limit is per item, and saturates rather than wraps.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/outcome.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

TEST_CASE("task_timeout kills a worker whose item runs too long", "[failure][timeout]") {
  watchdog wd(30s);
  constexpr int slow = 3;
  auto f = [](int i) {
    if (i == slow) sleep_ms(10'000);
    return i + 1000;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = 200ms});
  const auto before = pool.pids();
  const auto t0 = Clock::now();
  auto out = pool.try_map(iota_vec(20));
  const double elapsed = ms_since(t0);
  REQUIRE(out.size() == 20);
  check_only_failed<procpool::task_timeout>(
      out, slow, [](int i) { return i + 1000; },
      [&](const procpool::task_timeout& e) {
        CHECK(e.index() == slow);
        CHECK(e.pid() != 0);
        CHECK(e.exitcode() == -SIGKILL);
        CHECK(contains(e.what(), "task_timeout"));
        CHECK(contains(e.what(), "item 3"));
      });
  std::fprintf(stderr, "[timing] try_map with one 10 s item under task_timeout=200ms: %.1f ms\n", elapsed);
  CHECK(elapsed < 2000.0);

  // map throws the same error, as a task_timeout (and so a worker_lost).
  const auto t1 = Clock::now();
  CHECK_THROWS_AS(pool.map(iota_vec(8)), procpool::task_timeout);
  CHECK(ms_since(t1) < 2000.0);

  // The pool is usable afterwards, with replaced workers.
  CHECK(pool.map(std::vector<int>{10, 20}) == std::vector<int>{1010, 1020});
  CHECK(pool.pids().size() == 2);
  CHECK(pool.pids() != before);
}

// The limit is kept in nanoseconds: converted unchecked, 18,446,744,073,710 ms
// (~584.5 years, just past 2^64 ns) became 0.45 ms and every item timed out.
TEST_CASE("task_timeout: a huge limit means none, a negative one is a usage_error",
          "[failure][timeout]") {
  watchdog wd(30s);
  auto f = [](int i) {
    sleep_ms(10);
    return i;
  };
  const auto in = iota_vec(10);
  for (const auto limit :
       {std::chrono::milliseconds::max(), std::chrono::milliseconds(18'446'744'073'710)}) {
    INFO("task_timeout = " << limit.count() << " ms");
    procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = limit});
    CHECK(pool.map(in) == in);
  }
  try {
    procpool::Pool pool(f, procpool::pool_options{.processes = 1, .task_timeout = -5ms});
    FAIL("no usage_error");
  } catch (const procpool::usage_error& e) {
    CHECK(contains(e.what(), "task_timeout is negative (-5 ms)"));
  }
}

TEST_CASE("task_timeout is per item, not per chunk", "[failure][timeout]") {
  watchdog wd(30s);
  // 10 items of 60 ms in one chunk: 600 ms per chunk, but each item is well
  // within the 300 ms limit, so nothing may time out.
  auto f = [](int i) {
    sleep_ms(60);
    return i;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = 300ms});
  auto out = pool.try_map(iota_vec(20), {.chunksize = 10});
  for (int i = 0; i < 20; ++i) {
    INFO("item " << i);
    REQUIRE(out[i].ok());
    CHECK(out[i].value() == i);
  }
}

TEST_CASE("task_timeout bounds the initializer too: one that hangs is an initializer_error",
          "[failure][timeout][initializer]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x; },
                      procpool::pool_options{.processes = 2,
                                             .initializer = [] { sleep_ms(60'000); },
                                             .task_timeout = 300ms});
  const auto t0 = Clock::now();
  std::string what = "(no error)";
  try {
    pool.map(iota_vec(4));
  } catch (const procpool::initializer_error& e) {
    what = e.what();
  } catch (const std::exception& e) {
    what = type_and_what(e);
  }
  INFO("the error: " << what);
  CHECK(contains(what, "the initializer ran past task_timeout (300 ms)"));
  CHECK(ms_since(t0) < 10'000.0);
  // Every later call says the same, at once.
  CHECK_THROWS_AS(pool.apply_async(1).get(), procpool::initializer_error);
  CHECK_THROWS_AS(pool.map(iota_vec(2)), procpool::initializer_error);
}

TEST_CASE("task_timeout: an initializer that returns within it is no error",
          "[failure][timeout][initializer]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x + 1; },
                      procpool::pool_options{.processes = 2,
                                             .initializer = [] { sleep_ms(100); },
                                             .task_timeout = 2000ms});
  CHECK(pool.map(iota_vec(6)) == std::vector<int>{1, 2, 3, 4, 5, 6});
}

TEST_CASE("a call's own timeout: map_options::timeout in a pool without task_timeout",
          "[failure][timeout]") {
  watchdog wd(30s);
  auto f = [](int ms) {
    sleep_ms(ms);
    return ms;
  };
  procpool::Pool pool(f, 2);
  const auto t0 = Clock::now();
  const std::vector<int> in{0, 5000, 10, 0};
  auto out = pool.try_map(in, {.chunksize = 1, .timeout = 200ms});
  const double elapsed = ms_since(t0);
  REQUIRE(out.size() == 4);
  check_only_failed<procpool::task_timeout>(
      out, 1, [&](int i) { return in[static_cast<std::size_t>(i)]; },
      [&](const procpool::task_timeout& e) {
        CHECK(e.index() == 1);
        CHECK(contains(e.what(), "its call's timeout (200 ms)"));
      });
  CHECK(elapsed < 3000.0);
  // Without a timeout of its own, the next call's long item is not killed.
  CHECK(pool.map(std::vector<int>{400}) == std::vector<int>{400});
}

TEST_CASE("a call's own timeout overrides task_timeout, longer or shorter", "[failure][timeout]") {
  watchdog wd(30s);
  auto f = [](int ms) {
    sleep_ms(ms);
    return ms;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2, .task_timeout = 150ms});
  // Longer: 600 ms items under the call's 5 s.
  CHECK(pool.apply_async(procpool::call_options{.timeout = 5s}, 600).get() == 600);
  CHECK(pool.map(std::vector<int>{600, 0}, {.timeout = 5s}) == std::vector<int>{600, 0});
  CHECK(pool.apply(procpool::call_options{.timeout = 5s}, 300) == 300);
  // The pool's own limit still holds for the others.
  CHECK_THROWS_AS(pool.apply(600), procpool::task_timeout);
  // Shorter: a 50 ms limit in a pool of 150 ms.
  try {
    (void)pool.apply_async(procpool::call_options{.timeout = 50ms}, 2000).get();
    FAIL("a 2 s call outlived its 50 ms timeout");
  } catch (const procpool::task_timeout& e) {
    CHECK(contains(e.what(), "its call's timeout (50 ms)"));
  }
}

TEST_CASE("two calls at once, one with a timeout: only its item is killed", "[failure][timeout]") {
  watchdog wd(30s);
  auto f = [](int ms) {
    sleep_ms(ms);
    return ms;
  };
  procpool::Pool pool(f, 2);
  auto untimed = pool.apply_async(1200);
  auto timed = pool.apply_async(procpool::call_options{.timeout = 100ms}, 3000);
  CHECK_THROWS_AS(timed.get(), procpool::task_timeout);
  CHECK(untimed.get() == 1200);
}

TEST_CASE("a negative timeout of a call is a usage_error", "[failure][timeout]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return x; }, 1);
  CHECK_THROWS_AS(pool.map(std::vector<int>{1}, {.timeout = -1ms}), procpool::usage_error);
  CHECK_THROWS_AS(pool.apply_async(procpool::call_options{.timeout = -5ms}, 1), procpool::usage_error);
  CHECK(pool.apply(1) == 1);
}
