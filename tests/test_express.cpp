// apply_async's express lane when things go wrong: workers killed or timed
// out under an express call, results dropped unread, close() and terminate()
// with a call running, and a long express call beside queued work.
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/common.hpp"
#include "support/express.hpp"
#include "support/pipe.hpp"
#include "support/shared.hpp"
#include "support/watchdog.hpp"

using namespace procpool_test;

namespace {

/// A flag that calls of -1 wait on, and the pid of the worker that last began
/// one; in shared memory (hold_flag), so the workers see the test's stores.
struct hold_state {
  std::atomic<int> flag{1};
  alignas(64) std::atomic<int> pid{0};
};
using hold_flag = shared<hold_state>;

/// The task of the held tests: a call of -1 runs while the flag is set (at most 20 s).
struct held_task {
  hold_state* hold;
  int operator()(int i) const {
    if (i < 0) hold->pid.store(::getpid());
    for (int ms = 0; i < 0 && hold->flag.load() && ms < 20'000; ++ms) sleep_ms(1);
    return i;
  }
};

/// A call of -1 that took the express lane and is held; the calls that did not
/// take it are let go at once and waited for.
template <class Pool>
auto held_express_call(Pool& pool, hold_flag& hold)
    -> std::optional<decltype(pool.apply_async(0))> {
  for (int k = 0; k < 1000; ++k) {
    (void)pool.apply_async(0).get();  // the workers poll
    auto r = pool.apply_async(-1);
    if (r.express()) return r;
    hold->flag.store(0);
    r.wait();
    hold->flag.store(1);
  }
  return std::nullopt;
}

}  // namespace

// Callers on three threads while a worker is killed every 2 ms: each call
// gets its answer or worker_lost, the pool goes on, and close() + join()
// return. (A replacement's wake event is reset while another thread may post
// to it and notify it.)
TEST_CASE("express lane: calls from three threads while workers are killed and replaced",
          "[failure][express]") {
  watchdog wd(60s);
  if (!have_two_cpus()) return;
  procpool::Pool pool([](int x) { return x + 1; }, 2);
  std::atomic<bool> stop{false};
  std::atomic<long> answered{0}, lost{0}, wrong{0};
  // Several callers: a respawn runs in whichever one drives, while the others post.
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&] {
      for (int i = 0; !stop.load(); ++i) {
        try {
          if (pool.apply_async(i).get() == i + 1) ++answered;
          else ++wrong;
        } catch (const procpool::worker_lost&) {
          ++lost;  // the call ran in a worker killed under it
        }
      }
    });
  for (int k = 0; k < 200; ++k) {
    const auto pids = pool.pids();
    if (!pids.empty()) ::kill(pids[static_cast<std::size_t>(k) % pids.size()], SIGKILL);
    sleep_ms(2);
  }
  stop = true;
  for (auto& c : callers) c.join();
  INFO("answered " << answered << ", lost " << lost);
  CHECK(wrong == 0);
  CHECK(answered > 0);
  CHECK(pool.map(iota_vec(4)) == std::vector<int>{1, 2, 3, 4});
  // A worker killed between finishing a cell and saying so must not leave
  // join() waiting for a call that is over.
  pool.close();
  pool.join();
}

TEST_CASE("express lane: a worker that dies running the call fails it with worker_lost",
          "[failure][express]") {
  if (!have_two_cpus()) return;
  watchdog wd(110s);  // three calls of express_call_after, each up to 30 s
  auto f = [](int i) {
    if (i < 0) ::kill(::getpid(), SIGKILL);
    return i + 1;
  };
  procpool::Pool pool(f, 2);
  for (int k = 0; k < 3; ++k) {
    auto r = express_call_after(pool, [&] { (void)pool.apply_async(0).get(); }, -1);
    REQUIRE(r);
    try {
      (void)r->get();
      FAIL("no worker_lost");
    } catch (const procpool::task_timeout&) {
      FAIL("task_timeout without a timeout");
    } catch (const procpool::worker_lost& e) {
      CHECK(e.exitcode() == -SIGKILL);
      CHECK(e.index() == 0);
      CHECK(contains(e.what(), "killed by SIGKILL"));
    }
    CHECK(pool.apply_async(k).get() == k + 1);  // and it goes on
  }
  CHECK(pool.pids().size() == 2);
}

TEST_CASE("express lane: task_timeout kills a worker running the call", "[failure][express]") {
  if (!have_two_cpus()) return;
  watchdog wd(60s);
  hold_flag hold;
  procpool::Pool pool(held_task{hold.get()}, procpool::pool_options{.processes = 2, .task_timeout = 200ms});
  auto r = held_express_call(pool, hold);
  REQUIRE(r);
  const auto t0 = Clock::now();
  try {
    (void)r->get();
    FAIL("no task_timeout");
  } catch (const procpool::task_timeout& e) {
    CHECK(e.exitcode() == -SIGKILL);
    CHECK(contains(e.what(), "task_timeout"));
  }
  std::fprintf(stderr, "[timing] express call past task_timeout=200ms failed after %.1f ms\n",
               ms_since(t0));
  CHECK(pool.apply_async(5).get() == 5);
}

TEST_CASE("express lane: dropped results still run, free their cells, and join waits for them",
          "[failure][express]") {
  if (!have_two_cpus()) return;
  watchdog wd(60s);
  test_pipe ran_pipe;
  const int wfd = ran_pipe.write_fd();
  auto f = [wfd](int i) {
    sleep_ms(i % 3);
    (void)!::write(wfd, &i, sizeof i);  // under PIPE_BUF: whole
    return i;
  };
  // Read as the calls write: a full pipe would block them.
  std::multiset<int> ran;
  std::thread reader([&] {
    int v;
    while (::read(ran_pipe.read_fd(), &v, sizeof v) == static_cast<ssize_t>(sizeof v)) ran.insert(v);
  });
  std::set<int> submitted;
  {
    procpool::Pool pool(f, 2);
    int dropped = 0, k = 0;
    const auto until = Clock::now() + 60s;
    for (; dropped < 100 && Clock::now() < until; ++k) {
      auto r = pool.apply_async(k);
      submitted.insert(k);
      if (r.express())
        ++dropped;  // never read: destroyed here
      else
        r.wait();
    }
    std::fprintf(stderr, "[express] %d of %d calls took the lane\n", dropped, k);
    CHECK(dropped == 100);
    // All four cells of a worker were dropped many times over: still usable.
    auto last = express_call(pool, 3);
    REQUIRE(last);
    submitted.insert(3);
    pool.close();
    pool.join();  // waits for the dropped calls too
    CHECK(last->get() == 3);
  }
  ran_pipe.close_write();  // the workers' copies are closed: they have exited
  reader.join();
  for (int k : submitted) CHECK(ran.count(k) >= 1);
}

TEST_CASE("express lane: close() refuses new calls, terminate() fails the running one",
          "[failure][express]") {
  if (!have_two_cpus()) return;
  watchdog wd(60s);
  hold_flag hold;
  using pool_type = procpool::Pool<held_task>;
  {
    pool_type pool(held_task{hold.get()}, 2);
    auto r = held_express_call(pool, hold);
    REQUIRE(r);
    pool.close();
    CHECK_THROWS_AS(pool.apply_async(1), procpool::usage_error);
    CHECK_FALSE(r->ready());
    hold->flag.store(0);
    pool.join();  // waits for the call
    CHECK(r->ready());
    CHECK(r->get() == -1);
  }
  hold->flag.store(1);
  std::optional<decltype(std::declval<pool_type&>().apply_async(0))> r;
  {
    pool_type pool(held_task{hold.get()}, 2);
    r = held_express_call(pool, hold);
    REQUIRE(r);
  }  // destroyed: terminated, with the call still running
  CHECK_THROWS_AS(r->get(), procpool::pool_terminated);
}

TEST_CASE("express lane: a long express call keeps queued work off its worker",
          "[failure][express]") {
  if (!have_two_cpus()) return;
  watchdog wd(60s);
  hold_flag hold;
  procpool::Pool pool(held_task{hold.get()}, 2);
  // Held on the first worker: the one the queues fill first.
  std::optional<decltype(pool.apply_async(0))> r;
  for (int k = 0; k < 100 && !r; ++k) {
    hold->pid.store(0);
    auto c = held_express_call(pool, hold);
    REQUIRE(c);
    const auto until = Clock::now() + 5s;
    while (hold->pid.load() == 0 && Clock::now() < until) sleep_ms(1);
    if (hold->pid.load() == pool.pids().front()) {
      r = std::move(c);
    } else {
      hold->flag.store(0);
      CHECK(c->get() == -1);
      hold->flag.store(1);
    }
  }
  REQUIRE(r);
  sleep_ms(20);  // long enough that the first worker counts as busy
  auto m = pool.map_async(std::vector<int>{1, 2, 3, 4});
  // Queued behind the held call, it would wait the 20 s the call is held.
  CHECK(m.wait_for(10s));
  hold->flag.store(0);
  CHECK(r->get() == -1);
  CHECK(m.get() == std::vector<int>{1, 2, 3, 4});
}
