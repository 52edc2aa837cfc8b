// pool_options::max_memory_per_child: a worker whose memory passes the limit
// after a chunk is replaced, and no item is lost or run twice; workers whose
// memory stays put are kept; a limit no worker can start under is an error,
// not endless forking. And a worker SIGKILLed from outside (as by the OOM
// killer) has its item named, with the memory it was last seen at.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/outcome.hpp"
#include "support/proc.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

namespace {

constexpr std::size_t mib = std::size_t{1} << 20;

/// Grows this process by @p bytes for good: allocated, touched, kept.
void grow(std::size_t bytes) {
  static std::vector<char*> kept;  // reachable: no leak report
  char* p = static_cast<char*>(std::malloc(bytes));
  if (!p) ::_exit(99);
  std::memset(p, 1, bytes);
  kept.push_back(p);
}

/// A limit a worker forked now starts well under: this process's RSS plus @p headroom.
std::size_t limit_above_now(std::size_t headroom) { return rss_bytes() + headroom; }

/// Drives @p pool (small maps) until @p pid is no longer one of its workers; true if so within 10 s.
template <class Pool>
bool until_gone(Pool& pool, pid_t pid) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < 10s) {
    const auto pids = pool.pids();
    if (std::count(pids.begin(), pids.end(), pid) == 0) return true;
    (void)pool.map(iota_vec(4));
    sleep_ms(1);
  }
  return false;
}

/// The MiB figure in "its memory (RSS) was 52 MiB at its last check"; -1 if none.
double reported_mib(const std::string& what) {
  std::smatch m;
  if (!std::regex_search(what, m, std::regex("its memory \\(RSS\\) was ([0-9.]+) (MiB|GiB) at its last check")))
    return -1;
  return std::stod(m[1]) * (m[2] == "GiB" ? 1024 : 1);
}

}  // namespace

TEST_CASE("a worker whose memory passes max_memory_per_child is replaced after that item",
          "[memory]") {
  watchdog wd(90s);
  constexpr int n = 60, big = 20;
  shared<std::array<std::atomic<int>, n>> runs;
  auto* r = runs.get();
  auto f = [r](int i) {
    if (i < n) (*r)[static_cast<std::size_t>(i)].fetch_add(1);  // the first call's items
    if (i == big) grow(64 * mib);
    sleep_ms(2);
    return static_cast<int>(::getpid());
  };
  // One worker: no other takes the chunk queued behind the big item. An imap
  // read slowly: the parent is not driving the pool when that item ends, so
  // the chunk behind it is the retiring worker's to decline.
  const std::size_t processes = GENERATE(1, 2);
  const bool slow_reader = GENERATE(false, true);
  INFO(processes << " workers, " << (slow_reader ? "imap read slowly" : "map"));
  procpool::Pool pool(f, procpool::pool_options{.processes = processes,
                                                .max_memory_per_child = limit_above_now(32 * mib)});
  const std::vector<pid_t> before = pool.pids();
  std::vector<int> pid_of;
  if (slow_reader) {
    for (int p : pool.imap(iota_vec(n), {.chunksize = 1})) {
      pid_of.push_back(p);
      sleep_ms(5);
    }
  } else {
    pid_of = pool.map(iota_vec(n), {.chunksize = 1});
  }
  REQUIRE(pid_of.size() == n);
  for (int i = 0; i < n; ++i) {
    INFO("item " << i);
    CHECK((*r)[static_cast<std::size_t>(i)].load() == 1);  // none lost, none run twice
  }
  const pid_t grown = pid_of[big];
  CHECK(std::count(before.begin(), before.end(), grown) == 1);
  // Items are handed out in order: the worker ran none after the one that grew it.
  for (int i = big + 1; i < n; ++i) {
    INFO("item " << i);
    CHECK(pid_of[static_cast<std::size_t>(i)] != grown);
  }
  REQUIRE(until_gone(pool, grown));
  CHECK(pool.pids().size() == processes);
  CHECK(reaped(grown));
  // The replacement runs items (and starts small: it is a fork of this process).
  const std::vector<int> again = pool.map(iota_vec(40, 100), {.chunksize = 1});
  const std::vector<pid_t> now = pool.pids();
  for (int p : again) CHECK(std::count(now.begin(), now.end(), p) == 1);
}

TEST_CASE("chunks queued to a worker that retires over max_memory_per_child run once elsewhere",
          "[memory]") {
  watchdog wd(90s);
  // Quick items: several chunks are queued to each worker when one grows it;
  // the parent takes back those it has not started. Through map, and through
  // imap read with pauses (its window refills as results are read).
  constexpr int n = 100'000, big = 30'000;
  shared<std::array<std::atomic<std::uint8_t>, n>> runs;
  auto* r = runs.get();
  auto f = [r](int i) {
    (*r)[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed);
    if (i == big) grow(64 * mib);
    return static_cast<int>(::getpid());
  };
  const bool slow_reader = GENERATE(false, true);
  INFO((slow_reader ? "imap read with pauses" : "map"));
  procpool::Pool pool(f, procpool::pool_options{.processes = 2,
                                                .max_memory_per_child = limit_above_now(32 * mib)});
  std::vector<int> pid_of;
  if (slow_reader) {
    for (int p : pool.imap(iota_vec(n))) {
      if (pid_of.size() % 256 == 0) sleep_ms(1);
      pid_of.push_back(p);
    }
  } else {
    pid_of = pool.map(iota_vec(n));
  }
  REQUIRE(pid_of.size() == n);
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += (*r)[static_cast<std::size_t>(i)].load() != 1;
  CHECK(wrong == 0);  // none lost, none run twice
  const pid_t grown = pid_of[big];
  REQUIRE(until_gone(pool, grown));
  CHECK(pool.pids().size() == 2);
}

TEST_CASE("workers whose memory stays under max_memory_per_child are never replaced", "[memory]") {
  watchdog wd(90s);
  auto f = [](int i) {
    if (i < 0) sleep_ms(1);  // long items: a check after each
    return 2 * i;
  };
  procpool::Pool pool(f, procpool::pool_options{.processes = 2,
                                                .max_memory_per_child = limit_above_now(64 * mib)});
  const std::vector<pid_t> before = pool.pids();
  for (int round = 0; round < 3; ++round) {
    const std::vector<int> r = pool.map(iota_vec(1'000'000));
    REQUIRE(r.size() == 1'000'000);
    CHECK(r[999'999] == 1'999'998);
  }
  const std::vector<int> slow = pool.map(iota_vec(300, -300), {.chunksize = 1});
  CHECK(slow[0] == -600);
  int sum = 0;
  for (int v : pool.imap(iota_vec(5000))) sum += v;
  CHECK(sum == 5000 * 4999);
  std::vector<decltype(pool.apply_async(0))> calls;
  for (int i = 0; i < 50; ++i) calls.push_back(pool.apply_async(i));
  for (int i = 0; i < 50; ++i) CHECK(calls[static_cast<std::size_t>(i)].get() == 2 * i);
  CHECK(pool.pids() == before);
}

TEST_CASE("a worker SIGKILLed from outside names its item, the OOM killer and its memory",
          "[memory][death]") {
  watchdog wd(60s);
  static constexpr int grows = 3, dies = 4;
  // Item 3 grows the worker and lasts past the time between two readings of
  // its memory; item 4, in the same worker, is killed as the OOM killer does.
  auto f = [](int i) {
    if (i == grows) {
      grow(48 * mib);
      sleep_ms(150);
    }
    if (i == dies) ::raise(SIGKILL);
    return i;
  };
  const auto check_lost = [](const std::vector<procpool::outcome<int>>& out) {
    check_only_failed<procpool::worker_lost>(
        out, dies, [](int i) { return i; },
        [](const procpool::worker_lost& e) {
          const std::string what = e.what();
          INFO(what);
          CHECK(e.index() == dies);
          CHECK(e.exitcode() == -SIGKILL);
          CHECK(contains(what, "while running item 4"));
          CHECK(contains(what, "killed by SIGKILL, not by the pool (the OOM killer?"));
          CHECK(reported_mib(what) >= 48);
        });
  };
  SECTION("without a memory limit") {
    procpool::Pool pool(f, 1);
    check_lost(pool.try_map(iota_vec(8), {.chunksize = 1}));
  }
  SECTION("with a limit it stays under") {
    procpool::Pool pool(f, procpool::pool_options{.processes = 1,
                                                  .max_memory_per_child = limit_above_now(512 * mib)});
    check_lost(pool.try_map(iota_vec(8), {.chunksize = 1}));
  }
}

TEST_CASE("a max_memory_per_child no worker can start under is a usage_error", "[memory][usage]") {
  watchdog wd(60s);
  auto f = [](int i) { return i; };
  SECTION("below this process's memory: at construction") {
    for (std::size_t limit : {std::size_t{1}, std::size_t{1} << 20, rss_bytes() / 2}) {
      INFO("limit " << limit);
      try {
        procpool::Pool pool(f, procpool::pool_options{.processes = 1, .max_memory_per_child = limit});
        FAIL("no usage_error");
      } catch (const procpool::usage_error& e) {
        INFO(e.what());
        CHECK(contains(e.what(), "max_memory_per_child"));
        CHECK(contains(e.what(), "is not above this process's memory"));
      }
    }
  }
  SECTION("an initializer that allocates past it: every call fails, and no worker is forked again") {
    shared<std::atomic<int>> inits;
    std::atomic<int>* count = inits.get();
    procpool::Pool pool(f, procpool::pool_options{.processes = 2,
                                                  .initializer = [count] {
                                                    count->fetch_add(1);
                                                    grow(64 * mib);
                                                  },
                                                  .max_memory_per_child = limit_above_now(32 * mib)});
    const auto t0 = Clock::now();
    std::optional<std::string> what;
    try {
      (void)pool.map(iota_vec(100));
    } catch (const procpool::usage_error& e) {
      what = e.what();
    }
    REQUIRE(what);
    INFO(*what);
    CHECK(contains(*what, "before it ran anything"));
    CHECK(contains(*what, "over max_memory_per_child"));
    CHECK(ms_since(t0) < 5000);
    CHECK_THROWS_AS(pool.map(iota_vec(3)), procpool::usage_error);
    CHECK(count->load() == 2);  // the two first workers; none replaced them
  }
}
