// What pools leave behind: fds, /dev/shm names, children and memory after
// many pools; workers that retire (join(), max_tasks_per_child) without being
// lost or reaped twice; message buffers reused from map to map.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/alloc_cap.hpp"
#include "support/common.hpp"
#include "support/proc.hpp"
#include "support/sanitizers.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

namespace {

// Forking under AddressSanitizer is slow (its shadow mappings are copied), so
// the fork-heavy loops run fewer rounds there.
constexpr int stress_pools = under_asan ? 40 : 200;
constexpr std::size_t stress_workers = under_asan ? 4 : 8;

}  // namespace

TEST_CASE("1000 pools leave no fds, shm, children or memory behind", "[failure][leaks]") {
  watchdog wd(100s);
  auto f = [](int x) { return x + 1; };
  {  // warm up lazily allocated state (iostreams, the allocator, ...)
    procpool::Pool pool(f, 2);
    (void)pool.map(std::vector<int>{1, 2, 3});
  }
  const std::size_t fds0 = open_fds(), rss0 = rss_bytes();
  const auto shm0 = shm_names();
  const std::set<pid_t> kids0 = child_pids();
  const int n = 1000;
  const auto t0 = Clock::now();
  int wrong = 0;
  for (int k = 0; k < n; ++k) {
    procpool::Pool pool(f, 2);  // the destructor terminates it
    const auto out = pool.map(std::vector<int>{k, k + 1, k + 2});
    wrong += out != std::vector<int>{k + 1, k + 2, k + 3};
  }
  const double elapsed = ms_since(t0);
  const std::size_t fds1 = open_fds(), rss1 = rss_bytes();
  const auto shm1 = shm_names();
  const std::set<pid_t> kids1 = child_pids();
  std::fprintf(stderr, "[timing] %d pools of 2 workers created, mapped, destroyed: %.0f ms (%.2f ms each); fds %zu->%zu, /dev/shm %zu->%zu, children %zu->%zu, RSS %.1f->%.1f MiB\n",
               n, elapsed, elapsed / n, fds0, fds1, shm0.size(), shm1.size(), kids0.size(), kids1.size(),
               static_cast<double>(rss0) / (1 << 20), static_cast<double>(rss1) / (1 << 20));
  CHECK(wrong == 0);
  CHECK(fds1 == fds0);
  CHECK(new_names(shm0, shm1) == 0);
  CHECK(kids1 == kids0);
  // AddressSanitizer keeps freed memory in quarantine (256 MiB by default), so
  // RSS grows under it without a leak; LeakSanitizer checks leaks at exit there.
  CHECK(rss1 < rss0 + (std::size_t{under_asan ? 64 : 4} << 20));
}

// The next three tests guard one race: a worker that leaves (stop -> "bye" ->
// _exit, after join() or max_tasks_per_child) can be reaped by check_workers()'
// waitpid(WNOHANG) before its "bye" frame is read; reading it must not reap the
// pid again (that threw ECHILD out of map()/join() and left the dead pid in
// the slot, to be SIGKILLed later after possible reuse).

TEST_CASE("pools ended with close() and join() leave nothing behind", "[failure][leaks]") {
  watchdog wd(100s);
  auto f = [](int x) { return x + 1; };
  const std::size_t fds0 = open_fds();
  const std::set<pid_t> kids0 = child_pids();
  // Pools joined after a map, and pools joined at once (workers perhaps still starting).
  struct kind {
    int pools;
    std::size_t workers;
    bool map_first;
  };
  for (const kind k : {kind{300, 2, true}, kind{stress_pools, stress_workers, false}}) {
    int failures = 0;
    std::string first;
    const auto t0 = Clock::now();
    for (int round = 0; round < k.pools; ++round) {
      procpool::Pool pool(f, k.workers);
      try {
        if (k.map_first && pool.map(std::vector<int>{round, round + 1}) != std::vector<int>{round + 1, round + 2})
          throw std::runtime_error("wrong values");
        pool.close();
        pool.join();
        if (!pool.pids().empty()) throw std::runtime_error("live pids after join()");
      } catch (const std::exception& e) {
        if (!failures++) first = "round " + std::to_string(round) + ": " + type_and_what(e);
      }
    }
    std::fprintf(stderr, "[timing] %d pools of %zu workers%s closed and joined: %.0f ms; %d of them failed%s%s\n",
                 k.pools, k.workers, k.map_first ? ", mapped first," : "", ms_since(t0), failures,
                 failures ? ", first: " : "", first.c_str());
    INFO(k.pools << " pools of " << k.workers << " workers" << (k.map_first ? ", mapped first" : ""));
    INFO(first);
    CHECK(failures == 0);
  }
  CHECK(open_fds() == fds0);
  CHECK(child_pids() == kids0);
}

TEST_CASE("max_tasks_per_child = 1 loses nothing", "[failure][leaks]") {
  watchdog wd(60s);
  auto f = [](int x) { return std::make_pair(x, static_cast<int>(::getpid())); };
  struct kind {
    std::size_t workers;
    int items;
    int pools;
  };
  for (const kind k : {kind{2, 200, 1}, kind{4, 200, 1}, kind{2, 100, stress_pools / 20}}) {
    for (int round = 0; round < k.pools; ++round) {
      INFO(k.workers << " workers, " << k.items << " items, pool " << round);
      procpool::Pool pool(f, procpool::pool_options{.processes = k.workers, .max_tasks_per_child = 1});
      const auto t0 = Clock::now();
      std::vector<std::pair<int, int>> out;
      std::string error;
      try {
        auto r = pool.map_async(iota_vec(k.items));
        REQUIRE(r.wait_for(30s));
        out = r.get();
      } catch (const std::exception& e) {
        error = type_and_what(e);
      }
      const double elapsed = ms_since(t0);
      INFO(error);
      CHECK(error.empty());
      REQUIRE(out.size() == static_cast<std::size_t>(k.items));
      std::set<int> pids;
      for (int i = 0; i < k.items; ++i) {
        CHECK(out[static_cast<std::size_t>(i)].first == i);
        pids.insert(out[static_cast<std::size_t>(i)].second);
      }
      // One worker per item (pid_max is small: a pid may recur).
      CHECK(pids.size() >= static_cast<std::size_t>(k.items - 5));
      std::fprintf(stderr, "[timing] max_tasks_per_child=1, %zu workers, %d items: %.0f ms\n", k.workers,
                   k.items, elapsed);
      CHECK(pool.map(std::vector<int>{7}).at(0).first == 7);
      pool.close();
      pool.join();
    }
  }
  CHECK(child_pids().empty());
}

TEST_CASE("a retiring worker reaped before its bye is read does not break the pool",
          "[failure][leaks][stress]") {
  watchdog wd(90s);
  auto f = [](int x) { return x ^ 0x5a5a; };
  const auto t0 = Clock::now();
  int rounds = 0;
  std::string failure;
  std::optional<procpool::Pool<decltype(f)>> broken;
  while (ms_since(t0) < 5000.0 && failure.empty()) {
    procpool::Pool pool(f, procpool::pool_options{.processes = 4, .max_tasks_per_child = 1});
    try {
      const auto out = pool.map(iota_vec(300), {.chunksize = 1});
      for (int i = 0; i < 300; ++i)
        if (out[i] != (i ^ 0x5a5a)) failure = "wrong value at " + std::to_string(i);
    } catch (const std::exception& e) {
      failure = type_and_what(e);
      broken.emplace(std::move(pool));
      break;
    }
    ++rounds;
  }
  std::fprintf(stderr, "[timing] retiring-worker stress: %d clean rounds of 300 one-item workers in %.0f ms%s%s\n",
               rounds, ms_since(t0), failure.empty() ? "" : "; then: ", failure.c_str());
  INFO(failure);
  CHECK(failure.empty());
  if (broken) {
    // What the caller is left with: does the pool recover?
    std::string again;
    try {
      (void)broken->map(std::vector<int>{1, 2, 3});
    } catch (const std::exception& e) {
      again = e.what();
    }
    INFO("the next map: " << (again.empty() ? "ok" : again));
    CHECK(again.empty());
    for (pid_t p : broken->pids()) {
      INFO("pids() lists " << p);
      CHECK(!ended(p));
    }
  }
}

// Counted by this binary's operator new (support/alloc_cap.hpp), so not under TSan.
#ifndef PROCPOOL_TEST_TSAN
TEST_CASE("maps of big items reuse the parent's message buffers", "[memory]") {
  watchdog wd(60s);
  // Each 1 MiB item is a chunk of its own. Without reuse, each chunk's message
  // is a new 2 MiB allocation, which glibc may hand back to the kernel when
  // freed and fault in again.
  std::vector<std::vector<char>> bufs(48);
  std::vector<std::uint64_t> want;
  for (std::size_t i = 0; i < bufs.size(); ++i) {
    bufs[i].assign((std::size_t{1} << 20) + i, static_cast<char>(i));
    want.push_back(bufs[i].size() + static_cast<unsigned char>(bufs[i].back()));
  }
  procpool::Pool pool(
      [](const std::vector<char>& b) {
        return static_cast<std::uint64_t>(b.size() + static_cast<unsigned char>(b.back()));
      },
      2);
  REQUIRE(pool.map(bufs) == want);  // the buffers the next maps reuse
  const std::size_t before = procpool_test::big_allocations.load();
  for (int k = 0; k < 3; ++k) REQUIRE(pool.map(bufs) == want);
  // 144 (one per chunk) without the reuse; 0 here, unless a loaded machine
  // kept fewer chunks in flight during the first map than during a later one
  // (then at most the 4 the pool keeps, and one being filled).
  CHECK(procpool_test::big_allocations.load() - before <= 5);
}
#endif

// RSS, which the sanitizers' allocators (their quarantine) keep high after a free.
#if !defined(PROCPOOL_TEST_ASAN) && !defined(PROCPOOL_TEST_TSAN)
namespace {
/// Checks that worker @p w's RSS comes back within 32 MiB of @p before. Polled:
/// the worker gives its buffers back just after it sends the answer that
/// map() returns with.
void worker_gives_back(pid_t w, long long before) {
  long long grew = 0;
  const bool given_back = eventually([&] {
    grew = static_cast<long long>(rss_bytes(w)) - before;
    return grew < (32ll << 20);
  });
  INFO("the worker's RSS grew by " << grew / 1024 << " KiB");
  CHECK(given_back);
}
}  // namespace

TEST_CASE("a huge argument is not kept by the worker after the next, small one", "[memory]") {
  watchdog wd(60s);
  // The huge one is copied out of the task ring; the small one is read where
  // it lies, and leaves the copy's buffer unused.
  procpool::Pool pool([](const std::string& s) { return s.size(); }, 1);
  CHECK(pool.map(std::vector<std::string>{"x"}).at(0) == 1);
  const pid_t w = pool.pids().at(0);
  const long long worker_before = static_cast<long long>(rss_bytes(w));
  CHECK(pool.map(std::vector<std::string>{std::string(100u << 20, 'a')}).at(0) == (100u << 20));
  CHECK(pool.map(std::vector<std::string>{"x"}).at(0) == 1);
  worker_gives_back(w, worker_before);
}

TEST_CASE("a huge result or error is not kept after the call, in the parent or the worker",
          "[memory]") {
  watchdog wd(60s);
  // mb > 0: a result of mb MiB; mb < 0: an error message of -mb MiB.
  procpool::Pool pool(
      [](int mb) -> std::string {
        if (mb < 0) throw std::runtime_error(std::string(std::size_t(-mb) << 20, 'e'));
        return std::string(std::size_t(mb) << 20, 'x');
      },
      1);
  pool.map(std::vector<int>{0});
  const std::size_t parent_before = rss_bytes();
  for (int k = 0; k < 2; ++k) CHECK(pool.map(std::vector<int>{100}).at(0).size() == (100u << 20));
  for (int k = 0; k < 5; ++k) pool.map(std::vector<int>{0, 0, 0});
  const auto parent_grew = static_cast<long long>(rss_bytes()) - static_cast<long long>(parent_before);
  INFO("the parent's RSS grew by " << parent_grew / 1024 << " KiB");
  CHECK(parent_grew < (32ll << 20));

  const pid_t w = pool.pids().at(0);
  const auto worker_before = static_cast<long long>(rss_bytes(w));
  const auto failed = pool.try_map(std::vector<int>{-100});
  CHECK_FALSE(failed.at(0).ok());
  pool.map(std::vector<int>{0});
  // Which of its two answer buffers a message uses depends on the room in the
  // result ring then; what the other holds must go too.
  worker_gives_back(w, worker_before);
}
#endif
