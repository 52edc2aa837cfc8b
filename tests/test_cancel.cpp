// async_result::cancel(), cancelled(), running() and Pool::shutdown: a call
// not started is dropped, one running is stopped by replacing its worker,
// one finished keeps its outcome, and nothing else the pool runs suffers.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <csignal>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/express.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;
using namespace std::chrono_literals;

namespace {

/// Counts, in memory the workers share, how many calls of marked() began,
/// and how many of them with an even @p ms.
std::atomic<int>* g_began = nullptr;
std::atomic<int>* g_began_even = nullptr;

/// Counts itself as begun, then naps @p ms.
int marked(int ms) {
  if (g_began) g_began->fetch_add(1);
  if (g_began_even && ms % 2 == 0) g_began_even->fetch_add(1);
  return nap(ms);
}

/// A call that skips the express lane (a call with its own timeout does), so
/// that it goes through the queues.
template <class Pool>
auto queued_call(Pool& pool, int ms) {
  return pool.apply_async(procpool::call_options{.timeout = 60s}, ms);
}

bool alive(pid_t pid) { return ::kill(pid, 0) == 0; }

template <class R>
void check_cancelled(R& r) {
  CHECK(r.cancelled());
  CHECK_FALSE(r.running());
  CHECK(r.ready());
  CHECK_FALSE(r.successful());
  try {
    r.get();
    FAIL("get() returned after cancel()");
  } catch (const procpool::cancelled_error& e) {
    CHECK(contains(e.what(), "cancelled"));
  }
}

}  // namespace

TEST_CASE("cancel of a call that has not started: it never runs, and the rest go on") {
  watchdog dog(30s);
  shared<std::atomic<int>> began;
  g_began = began.get();
  procpool::Pool pool(marked, 1);
  auto busy = queued_call(pool, 300);
  REQUIRE(eventually([&] { return began->load() == 1; }));
  auto waiting = queued_call(pool, 0);
  auto after = queued_call(pool, 1);
  CHECK_FALSE(waiting.running());
  CHECK(waiting.cancel());
  CHECK(waiting.cancel());  // again: still cancelled, as in Python
  check_cancelled(waiting);
  CHECK(busy.get() == 300);
  CHECK(after.get() == 1);
  CHECK(began->load() == 2);  // busy and after, not the cancelled one
  CHECK(pool.stats().workers_replaced == 0);  // nothing running was stopped
  g_began = nullptr;
}

TEST_CASE("cancel of a running call stops it: its worker is killed and replaced") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto r = queued_call(pool, 20'000);
  REQUIRE(eventually([&] { return r.running(); }));
  const std::vector<pid_t> before = pool.pids();
  const auto t0 = Clock::now();
  CHECK(r.cancel());
  CHECK(ms_since(t0) < 5'000);  // not the 20 s the call would take
  check_cancelled(r);
  const std::vector<pid_t> after = pool.pids();
  REQUIRE(after.size() == 2);
  int gone = 0;
  for (pid_t p : before) gone += !alive(p);  // reaped: nothing is left running it
  CHECK(gone == 1);
  CHECK(pool.stats().workers_replaced == 1);
  CHECK(pool.apply(5) == 5);
  const std::vector<int> squares = pool.map(std::vector<int>{1, 2, 3});
  CHECK(squares == std::vector<int>{1, 2, 3});
}

TEST_CASE("cancel of a running express call stops it") {
  watchdog dog(30s);
  if (!have_two_cpus()) return;
  procpool::Pool pool(nap, 2);
  // Until a call takes the lane; one that does not is cancelled too.
  std::optional<procpool::async_result<int>> r;
  for (int i = 0; i < 1000 && !r; ++i) {
    pool.apply(0);  // the workers poll after an answer
    auto c = pool.apply_async(20'000);
    if (c.express())
      r.emplace(std::move(c));
    else
      CHECK(c.cancel());
  }
  if (!r) {
    WARN("no call took the express lane");
    return;
  }
  REQUIRE(eventually([&] { return r->running(); }));
  const std::uint64_t replaced = pool.stats().workers_replaced;  // by the loop's cancels too
  const auto t0 = Clock::now();
  CHECK(r->cancel());
  CHECK(ms_since(t0) < 5'000);
  check_cancelled(*r);
  CHECK(pool.stats().workers_replaced == replaced + 1);
  CHECK(pool.apply(6) == 6);
}

TEST_CASE("cancel of a finished call is false, and it keeps its result") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto r = pool.apply_async(1);
  r.wait();
  CHECK_FALSE(r.cancel());
  CHECK_FALSE(r.cancelled());
  CHECK(r.get() == 1);
  CHECK_FALSE(r.cancel());  // after get(): finished
  auto bad = queued_call(pool, -1);
  bad.wait();
  CHECK_FALSE(bad.cancel());
  CHECK_THROWS_AS(bad.get(), procpool::task_error);  // its own error, not cancelled_error
}

TEST_CASE("cancel of a map_async stops all of it, and spares the other calls") {
  watchdog dog(60s);
  shared<std::atomic<int>> began;  // the map's items: 300 ms each
  g_began_even = began.get();
  procpool::Pool pool(marked, 2);
  auto other = queued_call(pool, 401);
  procpool::map_options o;
  o.chunksize = 1;
  auto m = pool.map_async(std::vector<int>(20, 300), o);
  REQUIRE(eventually([&] { return m.running(); }));
  const auto t0 = Clock::now();
  CHECK(m.cancel());
  CHECK(ms_since(t0) < 5'000);
  check_cancelled(m);
  const int began_by_cancel = began->load();
  // The other call ran on the worker that was spared, or runs again elsewhere.
  CHECK(other.get() == 401);
  sleep_ms(400);
  CHECK(began->load() == began_by_cancel);  // nothing of the map began after cancel()
  const procpool::pool_stats s = pool.stats();
  CHECK(s.queued == 0);
  CHECK(s.running == 0);
  CHECK(s.done + s.failed == s.submitted);
  CHECK(pool.apply(2) == 2);
  g_began_even = nullptr;
}

TEST_CASE("a cancelled call's error callback has run when cancel returns") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 1);
  auto busy = queued_call(pool, 300);
  auto r = queued_call(pool, 0);
  std::atomic<int> values{0};
  std::string error;
  r.add_done_callback([&](int) { ++values; },
                      [&](std::exception_ptr e) { error = what_of(e); });
  CHECK(r.cancel());
  CHECK(contains(error, "cancelled"));
  CHECK(values == 0);
  CHECK(busy.get() == 300);
}

TEST_CASE("cancel racing with completion: each result is its value or cancelled_error") {
  watchdog dog(120s);
  procpool::Pool pool(nap, 2);
  int cancelled = 0, finished = 0;
  for (int i = 0; i < 300; ++i) {
    const int ms = i % 3;
    auto r = i % 2 ? pool.apply_async(ms) : queued_call(pool, ms);
    if (i % 5) std::this_thread::sleep_for(std::chrono::microseconds(i * 37 % 2000));
    if (r.cancel()) {
      ++cancelled;
      CHECK_THROWS_AS(r.get(), procpool::cancelled_error);
    } else {
      ++finished;
      CHECK(r.get() == ms);
    }
  }
  INFO("cancelled " << cancelled << ", finished " << finished);
  CHECK(cancelled + finished == 300);
  CHECK(cancelled > 0);  // both outcomes were met
  CHECK(finished > 0);
  CHECK(pool.apply(3) == 3);
  const procpool::pool_stats s = pool.stats();
  CHECK(s.queued == 0);
  CHECK(s.running == 0);
  CHECK(s.done + s.failed == s.submitted);
}

TEST_CASE("shutdown(cancel_futures) cancels what has not started, and what started finishes") {
  watchdog dog(30s);
  shared<std::atomic<int>> began;
  g_began = began.get();
  procpool::Pool pool(marked, 1);
  auto running = queued_call(pool, 300);
  REQUIRE(eventually([&] { return began->load() == 1; }));
  auto a = queued_call(pool, 0);
  auto b = pool.map_async(std::vector<int>{0, 0, 0});
  pool.shutdown(/*wait=*/true, /*cancel_futures=*/true);
  CHECK(running.get() == 300);
  check_cancelled(a);
  check_cancelled(b);
  CHECK(began->load() == 1);
  CHECK(pool.pids().empty());  // joined: the workers exited
  CHECK_THROWS_AS(pool.apply_async(1), procpool::usage_error);
  g_began = nullptr;
}

TEST_CASE("shutdown without cancel_futures finishes everything, and wait=false returns at once") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 1);
  auto a = queued_call(pool, 200);
  auto b = queued_call(pool, 0);
  const auto t0 = Clock::now();
  pool.shutdown(/*wait=*/false);
  CHECK(ms_since(t0) < 150);
  CHECK_FALSE(a.cancelled());
  CHECK(a.get() == 200);
  CHECK(b.get() == 0);
  pool.join();
}
