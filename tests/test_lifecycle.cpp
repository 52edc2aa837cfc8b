// A pool at its ends and across processes: terminate() after calls finished,
// move-assignment, close() and join() with unread imap ranges or a failed
// initializer, and a pool used from a process other than the one that built it.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <algorithm>
#include <atomic>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/child.hpp"
#include "support/common.hpp"
#include "support/proc.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

// terminate() and a broken pool abort every job still listed, and a job that
// has completed can still be (its last answer read while reaping a worker,
// after that round handed work out); it keeps its results.
TEST_CASE("a call that had finished keeps its result when the pool is terminated after",
          "[failure][lifetime]") {
  watchdog wd(60s);
  auto f = [](const std::string& s) { return s + "!"; };  // not express-eligible
  int failed = 0;
  for (int i = 0; i < 150; ++i) {
    procpool::Pool pool(f, 2);
    auto one = pool.apply_async(std::string("a"));
    auto all = pool.map_async(std::vector<std::string>{"b", "c"});
    one.wait();
    all.wait();
    pool.terminate();
    try {
      if (one.get() != "a!" || all.get() != std::vector<std::string>{"b!", "c!"}) ++failed;
    } catch (const procpool::pool_terminated&) {
      ++failed;
    }
  }
  CHECK(failed == 0);
}

int times_ten(int x) { return x * 10; }

// A pool works only in the process that built it. A Process child calling
// the parent's pool drove the parent's workers (the parent's next map got the
// child's answers), and a forked copy destroyed in a child (as exit() destroys
// a static pool) killed the parent's workers.
TEST_CASE("a pool used from another process: usage_error there, the builder's pool untouched",
          "[failure][fork]") {
  watchdog wd(30s);
  procpool::Pool<int (*)(int)> pool(times_ten, 2);
  const auto pids = pool.pids();
  procpool::Process child([&pool] {
    try {
      auto r = pool.map_async(std::vector<int>{7, 7, 7, 7, 7, 7, 7, 7});
      (void)r;
    } catch (const procpool::usage_error& e) {
      const std::string what = e.what();
      procpool::exit(what.find("belongs to process") != std::string::npos ? 42 : 2);
    }
    procpool::exit(1);  // no error: wrong
  });
  child.start();
  child.join();
  CHECK(child.exitcode() == 42);
  CHECK(pool.map(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}) ==
        std::vector<int>{10, 20, 30, 40, 50, 60, 70, 80});

  std::optional<procpool::Pool<int (*)(int)>> copy_holder;
  copy_holder.emplace(times_ten, 2);
  const auto copy_pids = copy_holder->pids();
  const pid_t forked = fork_child([&] {
    copy_holder.reset();  // the child's copy is destroyed
    return 0;
  });
  const auto status = wait_child(forked, 10s);
  if (!status) kill_and_reap(forked);
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  for (pid_t p : copy_pids) CHECK(::kill(p, 0) == 0);  // still running
  CHECK(copy_holder->pids() == copy_pids);
  CHECK(copy_holder->map(std::vector<int>{1, 2}) == std::vector<int>{10, 20});
  CHECK(pool.pids() == pids);
}

int slow_plus_one(int x) {
  sleep_ms(300);
  return x + 1;
}
int plus_two(int x) { return x + 2; }

// The defaulted move assignment dropped the old pool without terminating it:
// a pending result kept its engine running, and a replacement worker forked
// later called the freed function (ASan: heap-use-after-free in run_chunk).
TEST_CASE("move-assigning a Pool terminates the old pool, as destroying it does",
          "[failure][lifetime]") {
  watchdog wd(30s);
  procpool::Pool<int (*)(int)> pool(slow_plus_one, 2);
  auto pending = pool.apply_async(1);
  const auto old_pids = pool.pids();
  pool = procpool::Pool<int (*)(int)>(plus_two, 2);
  CHECK_THROWS_AS(pending.get(), procpool::pool_terminated);
  for (pid_t p : old_pids) CHECK(reaped(p));
  CHECK(pool.map(iota_vec(3)) == std::vector<int>{2, 3, 4});
}

// join() must not wait for an imap window that waits for its reader. As in
// Python, join() runs everything submitted and the results stay readable.
TEST_CASE("close() and join() return with imap ranges not fully read, and their results stay",
          "[failure][join]") {
  watchdog wd(30s);
  procpool::Pool pool([](int x) { return 2 * x; }, 2);
  const auto in = iota_vec(2000);
  auto ordered = pool.imap(in, {.chunksize = 1});  // a window of 64 items
  auto unordered = pool.imap_unordered(in, {.chunksize = 1});
  auto it = ordered.begin();
  for (int i = 0; i < 3; ++i, ++it) REQUIRE(*it == 2 * i);
  pool.close();
  pool.join();
  std::vector<int> rest;
  for (; it != ordered.end(); ++it) rest.push_back(*it);
  REQUIRE(rest.size() == in.size() - 3);
  for (std::size_t i = 0; i < rest.size(); ++i) REQUIRE(rest[i] == 2 * static_cast<int>(i + 3));
  std::vector<int> all;
  for (int v : unordered) all.push_back(v);
  std::sort(all.begin(), all.end());
  REQUIRE(all.size() == in.size());
  for (std::size_t i = 0; i < all.size(); ++i) REQUIRE(all[i] == 2 * static_cast<int>(i));
}

TEST_CASE("close() and join() finish on a pool whose initializer failed in one worker",
          "[failure][lifecycle]") {
  watchdog wd(30s);
  shared<std::atomic<int>> started;  // only the first worker to start throws
  procpool::Pool pool([](int x) { return x; },
                      procpool::pool_options{.processes = 2, .initializer = [first = started.get()] {
                                               if (first->fetch_add(1) == 0)
                                                 throw std::runtime_error("first worker only");
                                             }});
  // The parent learns of the failure when it reads that worker's message; a
  // call made before then may be served whole by the other worker.
  bool broke = false;
  for (int k = 0; k < 500 && !broke; ++k) {
    try {
      const auto v = pool.map(std::vector<int>{1, 2, 3});  // served by the other worker
      CHECK(v == std::vector<int>{1, 2, 3});
      sleep_ms(5);
    } catch (const procpool::initializer_error&) {
      broke = true;
    }
  }
  REQUIRE(broke);
  CHECK_THROWS_AS(pool.map(std::vector<int>{1, 2, 3}), procpool::initializer_error);
  pool.close();
  const auto t0 = Clock::now();
  pool.join();  // a stop frame goes to the live worker too
  CHECK(ms_since(t0) < 5000.0);
}
