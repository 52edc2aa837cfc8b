// apply_async's express lane: the same answers and errors as the queues, and
// what happens when things go wrong: workers killed or timed out under an
// express call, results dropped unread, close() and terminate() with a call
// running, and a long express call beside queued work.
//
// A call takes the lane only when a worker polls on another CPU, which another
// test busy on the machine's CPUs can prevent for seconds on end: ctest runs
// these tests alone (RUN_SERIAL).
//
// Every test is bounded by ctest's TIMEOUT and by a watchdog.

#include <procpool/procpool.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
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
/// take it are let go at once and waited for, and their pid cleared.
template <class Pool>
auto held_express_call(Pool& pool, hold_flag& hold)
    -> std::optional<decltype(pool.apply_async(0))> {
  for (int k = 0; k < 1000; ++k) {
    (void)pool.apply_async(0).get();  // the workers poll
    auto r = pool.apply_async(-1);
    if (r.express()) return r;
    hold->flag.store(0);
    r.wait();
    hold->pid.store(0);  // pid is then the held call's worker
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
  watchdog wd(60s);
  // Held, then killed from here: the calls that miss the lane kill nobody, so
  // the tries do not fork a replacement each.
  hold_flag hold;
  procpool::Pool pool(held_task{hold.get()}, 2);
  for (int k = 0; k < 3; ++k) {
    hold->pid.store(0);
    auto r = held_express_call(pool, hold);
    REQUIRE(r);
    const auto until = Clock::now() + 10s;
    while (hold->pid.load() == 0 && Clock::now() < until) sleep_ms(1);
    REQUIRE(hold->pid.load() != 0);
    REQUIRE(::kill(hold->pid.load(), SIGKILL) == 0);
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
    CHECK(pool.apply_async(k).get() == k);  // and it goes on
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


namespace {

/// One callable with overloads for each shape of express call.
struct express_fn {
  int operator()(int x) const {
    if (x == -1) throw std::invalid_argument("odd one out");
    if (x == -2) throw std::runtime_error(std::string(5000, 'x'));
    return x * x;
  }
  double operator()(int a, double b) const { return a * b; }
  bool operator()(bool b) const { return !b; }
  void operator()(char) const {}
  std::string operator()(std::string s) const { return s + "!"; }
};

}  // namespace

TEST_CASE("pool: apply_async's express lane gives the same answers and errors", "[pool][express]") {
  if (!have_two_cpus()) return;
  procpool::Pool pool(express_fn{}, 2);

  auto r = express_call(pool, 7);
  REQUIRE(r);
  CHECK(r->get() == 49);
  CHECK_FALSE(r->express());
  CHECK_THROWS_AS(r->get(), procpool::usage_error);

  auto two = express_call(pool, 3, 0.5);
  REQUIRE(two);
  CHECK(two->get() == 1.5);
  auto b = express_call(pool, true);
  REQUIRE(b);
  CHECK(b->get() == false);
  auto v = express_call(pool, 'c');
  REQUIRE(v);
  v->get();

  auto w = express_call(pool, 5);
  REQUIRE(w);
  CHECK(w->wait_for(10s));
  CHECK(w->ready());
  CHECK(w->get() == 25);

  auto e = express_call(pool, -1);
  REQUIRE(e);
  try {
    (void)e->get();
    FAIL("no task_error");
  } catch (const procpool::task_error& x) {
    CHECK(x.index() == 0);
    CHECK(x.type_name() == "std::invalid_argument");
    CHECK(x.message() == "odd one out");
  }
  // A message too long for the cell is cut, and says so.
  auto big = express_call(pool, -2);
  REQUIRE(big);
  try {
    (void)big->get();
    FAIL("no task_error");
  } catch (const procpool::task_error& x) {
    CHECK(x.type_name() == "std::runtime_error");
    CHECK_THAT(x.message(), Catch::Matchers::StartsWith("xxxxxxxx"));
    CHECK_THAT(x.message(), Catch::Matchers::EndsWith("..."));
    CHECK(x.message().size() < 1024);
  }
  CHECK(pool.apply_async(6).get() == 36);  // and the pool goes on

  // Values of no fixed size never take the lane, nor does a pool that counts
  // items per worker (max_tasks_per_child) or reruns them (retries).
  procpool::Pool counted(express_fn{}, procpool::pool_options{.processes = 2, .max_tasks_per_child = 100000});
  procpool::Pool retried(express_fn{}, procpool::pool_options{.processes = 2, .retries = 1});
  for (int i = 0; i < 300; ++i) {
    auto s = pool.apply_async(std::string("a"));
    CHECK_FALSE(s.express());
    CHECK(s.get() == "a!");
    auto c = counted.apply_async(i);
    CHECK_FALSE(c.express());
    CHECK(c.get() == i * i);
    auto t = retried.apply_async(i);
    CHECK_FALSE(t.express());
    CHECK(t.get() == i * i);
  }
}

TEST_CASE("pool: express and queued calls from several threads all get their own answers",
          "[pool][express]") {
  procpool::Pool pool(express_fn{}, 2);
  std::atomic<int> wrong{0}, express{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3000; ++i) {
        const int x = t * 10000 + i;
        auto r = pool.apply_async(x);
        express += r.express();
        if (r.get() != x * x) ++wrong;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
  std::fprintf(stderr, "[express] %d of 9000 calls took the express lane\n", express.load());
}
