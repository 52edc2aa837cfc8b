// The futures side of Pool: apply, get_for/get_until, successful(), done
// callbacks, wait() and as_completed(). Items sleep rather than burn CPU, so
// what is checked (order, who ran what, what was seen when) does not depend
// on the machine's load; the gaps between sleeps are wide.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/express.hpp"
#include "support/proc.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;
using namespace std::chrono_literals;

TEST_CASE("apply returns the value, and throws the task's error") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  CHECK(pool.apply(5) == 5);
  CHECK_THROWS_AS(pool.apply(-1), procpool::task_error);
  CHECK(pool.apply(7) == 7);  // the pool goes on
}

TEST_CASE("get_for throws timeout_error while the call runs, and the call goes on") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 1);
  auto r = pool.apply_async(300);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    (void)r.get_for(20ms);
    FAIL("get_for returned before the 300 ms call finished");
  } catch (const procpool::timeout_error& e) {
    CHECK(std::string(e.what()).find("20 ms") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 250ms);
  CHECK_THROWS_AS(r.get_until(std::chrono::system_clock::now() + 10ms), procpool::timeout_error);
  CHECK_FALSE(r.ready());
  CHECK(r.get_for(10s) == 300);  // the same call, still running, then done
  CHECK_THROWS_AS(r.get(), procpool::usage_error);
}

TEST_CASE("get_until with a past time point takes a finished result") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 1);
  auto r = pool.apply_async(0);
  r.wait();
  CHECK(r.get_until(std::chrono::steady_clock::now() - 1s) == 0);
}

TEST_CASE("successful() is an error before the result is there, then says how the call ended") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto slow = pool.apply_async(300);
  CHECK_THROWS_AS(slow.successful(), procpool::usage_error);
  slow.wait();
  CHECK(slow.successful());
  auto bad = pool.apply_async(-1);
  bad.wait();
  CHECK_FALSE(bad.successful());
  CHECK_THROWS_AS(bad.get(), procpool::task_error);
  CHECK_FALSE(bad.successful());  // still known after get()
  CHECK(slow.get() == 300);
  CHECK(slow.successful());
  auto m = pool.map_async(std::vector<int>{1, -2, 3});
  m.wait();
  CHECK_FALSE(m.successful());
}

TEST_CASE("a done callback runs when the call ends, with nobody waiting") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<int> value{0};
  std::atomic<bool> on_other_thread{false};
  const auto caller = std::this_thread::get_id();
  auto r = pool.apply_async(50);
  r.add_done_callback([&](const int& v) {
    on_other_thread = std::this_thread::get_id() != caller;
    value = v;
  });
  // No get(), wait() or other call on the pool: only the callback thread drives it.
  REQUIRE(eventually([&] { return value.load() == 50; }));
  CHECK(on_other_thread);
  CHECK(r.get() == 50);  // get() still hands out the value
}

TEST_CASE("the error callback gets the call's error, and the value callback is not called") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<int> values{0};
  std::mutex m;
  std::string error;
  std::atomic<bool> got_error{false};
  auto r = pool.apply_async(-1);
  r.add_done_callback([&](const int&) { ++values; },
                      [&](std::exception_ptr e) {
                        {
                          std::lock_guard lk(m);
                          error = what_of(e);
                        }
                        got_error = true;
                      });
  REQUIRE(eventually([&] { return got_error.load(); }));
  CHECK(values == 0);
  {
    std::lock_guard lk(m);
    CHECK(error.find("negative nap -1") != std::string::npos);
  }
  CHECK_THROWS_AS(r.get(), procpool::task_error);
}

TEST_CASE("a callback added to a finished result runs before add_done_callback returns") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto r = pool.apply_async(1);
  r.wait();
  std::thread::id ran_on;
  int seen = 0;
  r.add_done_callback([&](const int& v) {
    seen = v;
    ran_on = std::this_thread::get_id();
  });
  CHECK(seen == 1);
  CHECK(ran_on == std::this_thread::get_id());
  int second = 0;
  r.add_done_callback([&](const int& v) { second = v + 1; });
  CHECK(second == 2);
}

TEST_CASE("get() and wait() return only after the callbacks ran") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  for (int k = 0; k < 20; ++k) {
    std::atomic<bool> done{false};
    auto r = pool.apply_async(k % 3);
    r.add_done_callback([&](const int&) {
      std::this_thread::sleep_for(20ms);
      done = true;
    });
    if (k % 2) {
      CHECK(r.get() == k % 3);
    } else {
      r.wait();
      CHECK(r.ready());
    }
    CHECK(done);
  }
}

TEST_CASE("a callback that throws makes get() throw callback_error, with its exception nested") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto r = pool.apply_async(2);
  std::atomic<int> later{0};
  r.add_done_callback([](const int&) { throw std::logic_error("callback broke"); });
  r.add_done_callback([&](const int& v) { later = v; });  // still runs
  r.wait();
  CHECK(later == 2);
  CHECK(r.successful());  // the call itself succeeded
  try {
    (void)r.get();
    FAIL("get() returned although a callback threw");
  } catch (const procpool::callback_error& e) {
    CHECK_THROWS_WITH(std::rethrow_if_nested(e), "callback broke");
  }
  CHECK(pool.apply(3) == 3);  // the pool and its callback thread go on
  std::atomic<int> after{0};
  auto s = pool.apply_async(4);
  s.add_done_callback([&](const int& v) { after = v; });
  REQUIRE(eventually([&] { return after.load() == 4; }));
}

TEST_CASE("add_done_callback after get(), or on a moved-from result, is a usage_error") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  auto r = pool.apply_async(1);
  CHECK(r.get() == 1);
  CHECK_THROWS_AS(r.add_done_callback([](const int&) {}), procpool::usage_error);
  auto s = pool.apply_async(1);
  auto t = std::move(s);
  CHECK_THROWS_AS(s.add_done_callback([](const int&) {}), procpool::usage_error);
  CHECK_THROWS_AS(s.wait(), procpool::usage_error);
  CHECK(t.get() == 1);
}

TEST_CASE("callbacks of a map_async and of void calls") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<std::size_t> n{0};
  auto m = pool.map_async(std::vector<int>{3, 1, 2});
  m.add_done_callback([&](const std::vector<int>& v) { n = v.size() * 100 + v[0]; });
  procpool::Pool quiet([](int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }, 1);
  std::atomic<bool> void_done{false};
  auto v = quiet.apply_async(5);
  v.add_done_callback([&] { void_done = true; });
  REQUIRE(eventually([&] { return n.load() == 303 && void_done.load(); }));
  CHECK(m.get() == std::vector<int>{3, 1, 2});
  v.get();
}

TEST_CASE("a callback may submit more work to the same pool") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<int> chained{0};
  auto r = pool.apply_async(10);
  r.add_done_callback([&](const int& v) { chained = pool.apply(v + 1); });
  REQUIRE(eventually([&] { return chained.load() == 11; }));
  CHECK(r.get() == 10);
}

TEST_CASE("join() returns after the callbacks of the work it finished ran") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<int> ran{0};
  std::vector<procpool::async_result<int>> rs;
  for (int i = 0; i < 6; ++i) {
    rs.push_back(pool.apply_async(30));
    rs.back().add_done_callback([&](const int&) {
      std::this_thread::sleep_for(5ms);
      ++ran;
    });
  }
  pool.close();
  pool.join();
  CHECK(ran == 6);
}

TEST_CASE("terminate() runs the error callbacks of unfinished calls before it returns") {
  watchdog dog(30s);
  std::atomic<int> terminated{0};
  {
    procpool::Pool pool(nap, 1);
    std::vector<procpool::async_result<int>> rs;
    for (int i = 0; i < 3; ++i) {
      rs.push_back(pool.apply_async(5000));
      rs.back().add_done_callback([](const int&) {}, [&](std::exception_ptr e) {
        try {
          std::rethrow_exception(e);
        } catch (const procpool::pool_terminated&) {
          ++terminated;
        }
      });
    }
    std::this_thread::sleep_for(50ms);
    pool.terminate();
    CHECK(terminated == 3);
    for (auto& r : rs) CHECK_THROWS_AS(r.get(), procpool::pool_terminated);
  }
  CHECK(terminated == 3);
}

TEST_CASE("a Pool destroyed with callbacks pending leaves nothing running") {
  watchdog dog(30s);
  const std::size_t threads = dir_names("/proc/self/task").size();
  std::atomic<int> errors{0};
  std::optional<procpool::async_result<int>> kept;
  {
    procpool::Pool pool(nap, 2);
    kept.emplace(pool.apply_async(5000));
    kept->add_done_callback([](const int&) {}, [&](std::exception_ptr) { ++errors; });
  }
  CHECK(errors == 1);
  CHECK_THROWS_AS(kept->get(), procpool::pool_terminated);
  // No callback thread left. A joined thread may still be listed for a
  // moment: the kernel wakes its joiner before it removes the task.
  CHECK(eventually([&] { return dir_names("/proc/self/task").size() == threads; }));
  CHECK(child_pids().empty());
}

TEST_CASE("a callback on an express call") {
  watchdog dog(30s);
  if (!have_two_cpus()) return;
  procpool::Pool pool([](int x) { return x * 2; }, 2);
  auto r = express_call(pool, 21);
  if (!r) {
    WARN("no call took the express lane in 10 s");
    return;
  }
  std::atomic<int> seen{0};
  r->add_done_callback([&](const int& v) { seen = v; });
  REQUIRE(eventually([&] { return seen.load() == 42; }));
  CHECK(r->get() == 42);
}

TEST_CASE("wait(first_completed) returns when the first result is there") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::vector<procpool::async_result<int>> rs;
  rs.push_back(pool.apply_async(3000));
  rs.push_back(pool.apply_async(20));
  const auto t0 = std::chrono::steady_clock::now();
  const auto [done, not_done] = procpool::wait(rs, procpool::return_when::first_completed);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(done == std::vector<std::size_t>{1});
  CHECK(not_done == std::vector<std::size_t>{0});
  CHECK(rs[1].get() == 20);
  pool.terminate();
}

TEST_CASE("wait(first_exception) returns at the first failure, or when all are done") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 3);
  auto slow = pool.apply_async(3000);
  auto ok = pool.apply_async(10);
  auto bad = pool.map_async(std::vector<int>{100, -1});  // of another type: a vector
  const auto t0 = std::chrono::steady_clock::now();
  auto w = procpool::wait({slow, ok, bad}, procpool::return_when::first_exception);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(w.done == std::vector<std::size_t>{1, 2});
  CHECK(w.not_done == std::vector<std::size_t>{0});
  CHECK_FALSE(bad.successful());
  pool.terminate();

  procpool::Pool fine(nap, 2);
  std::vector<procpool::async_result<int>> rs;
  for (int ms : {30, 10, 20}) rs.push_back(fine.apply_async(ms));
  auto all = procpool::wait(rs, procpool::return_when::first_exception);
  CHECK(all.done.size() == 3);
  CHECK(all.not_done.empty());
}

TEST_CASE("wait_for gives up after its timeout and says what is not done") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::vector<procpool::async_result<int>> rs;
  rs.push_back(pool.apply_async(3000));
  rs.push_back(pool.apply_async(0));
  const auto w = procpool::wait_for(rs, 300ms);
  CHECK(w.done == std::vector<std::size_t>{1});
  CHECK(w.not_done == std::vector<std::size_t>{0});
  CHECK_FALSE(rs[0].ready());
  pool.terminate();
}

TEST_CASE("wait() over the results of two pools") {
  watchdog dog(30s);
  procpool::Pool a(nap, 1);
  procpool::Pool b([](int x) { return std::to_string(nap(x)); }, 1);
  auto ra = a.apply_async(200);
  auto rb = b.apply_async(20);
  auto first = procpool::wait({ra, rb}, procpool::return_when::first_completed);
  CHECK(first.done == std::vector<std::size_t>{1});
  auto all = procpool::wait({ra, rb});
  CHECK(all.done == std::vector<std::size_t>{0, 1});
  CHECK(ra.get() == 200);
  CHECK(rb.get() == "20");
}

TEST_CASE("as_completed yields the results in the order they finish") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 3);
  std::vector<procpool::async_result<int>> rs;
  for (int ms : {900, 50, 450}) rs.push_back(pool.apply_async(ms));
  std::vector<std::size_t> order;
  for (std::size_t i : procpool::as_completed(rs)) {
    order.push_back(i);
    CHECK(rs[i].ready());
  }
  CHECK(order == std::vector<std::size_t>{1, 2, 0});
  std::vector<procpool::async_result<int>> none;
  for (std::size_t i : procpool::as_completed(none)) FAIL("yielded " << i << " of nothing");
}

TEST_CASE("as_completed with a timeout throws timeout_error for what is late") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::vector<procpool::async_result<int>> rs;
  rs.push_back(pool.apply_async(0));
  rs.push_back(pool.apply_async(5000));
  std::vector<std::size_t> got;
  try {
    for (std::size_t i : procpool::as_completed(rs, 300ms)) got.push_back(i);
    FAIL("as_completed ended although a result was late");
  } catch (const procpool::timeout_error& e) {
    CHECK(std::string(e.what()).find("1 results") != std::string::npos);
  }
  CHECK(got == std::vector<std::size_t>{0});
  pool.terminate();
}

TEST_CASE("two threads terminating at once both return after the error callbacks ran") {
  watchdog dog(60s);
  for (int round = 0; round < 20; ++round) {
    std::atomic<int> errors{0};
    procpool::Pool pool(nap, 1);
    auto r = pool.apply_async(5000);
    r.add_done_callback([](const int&) {}, [&](std::exception_ptr) {
      std::this_thread::sleep_for(2ms);
      ++errors;
    });
    std::atomic<int> seen_after[2] = {-1, -1};
    std::thread a([&] {
      pool.terminate();
      seen_after[0] = errors.load();
    });
    std::thread b([&] {
      pool.terminate();
      seen_after[1] = errors.load();
    });
    a.join();
    b.join();
    CHECK(errors == 1);
    CHECK(seen_after[0] == 1);
    CHECK(seen_after[1] == 1);
  }
}

namespace {
/// Voluntary context switches of this whole process so far.
long voluntary_switches() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_nvcsw;
}
}  // namespace

TEST_CASE("an idle callback thread sleeps, before and after join()") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<bool> fired{false};
  auto r = pool.apply_async(1);
  r.add_done_callback([&](const int&) { fired = true; });
  REQUIRE(eventually([&] { return fired.load(); }));
  long before = voluntary_switches();
  std::this_thread::sleep_for(500ms);
  const long idle = voluntary_switches() - before;
  pool.close();
  pool.join();
  before = voluntary_switches();
  std::this_thread::sleep_for(500ms);
  const long joined = voluntary_switches() - before;
  INFO("wake-ups in 500 ms: idle " << idle << ", after join " << joined);
  CHECK(idle < 40);
  CHECK(joined < 40);
  CHECK(r.get() == 1);
}

TEST_CASE("inside its own callback, a result takes more callbacks and says it is not ready") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<int> second{0};
  std::atomic<int> ready_inside{-1};
  auto r = pool.apply_async(5);
  auto* self = &r;
  r.add_done_callback([&, self](const int& v) {
    self->add_done_callback([&](const int& w) { second = w + v; });  // runs after this one
    ready_inside = self->ready() ? 1 : 0;                            // a poll: never waits
  });
  CHECK(r.get() == 5);  // no callback_error: nothing threw
  CHECK(second == 10);
  CHECK(ready_inside == 0);
}

TEST_CASE("a timed wait ends at its deadline while the result's callbacks run elsewhere") {
  watchdog dog(30s);
  procpool::Pool pool(nap, 2);
  std::atomic<bool> started{false}, release{false};
  auto r = pool.apply_async(1);
  // The callback runs until the test lets it end: a timed wait that waited
  // for it would end only at the watchdog.
  r.add_done_callback([&](const int&) {
    started = true;
    while (!release) std::this_thread::sleep_for(1ms);
  });
  REQUIRE(eventually([&] { return started.load(); }));
  CHECK_FALSE(r.wait_for(50ms));
  CHECK_FALSE(r.ready());
  CHECK_THROWS_AS(r.get_for(50ms), procpool::timeout_error);
  release = true;
  CHECK(r.get() == 1);
}
